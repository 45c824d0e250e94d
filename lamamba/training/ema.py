"""Exponential moving averages of the fp32 master weights, correct under every ZeRO stage.

Under bf16 the module's own parameters are bf16 copies and under ZeRO the fp32 master weights are
partitioned, so each rank averages only its own flat fp32 shares (see
:mod:`lamamba.training.master_weights`): ``ema = decay * ema + (1 - decay) * weights`` element by
element, one ``lerp_`` per group and decay and no communication per step. The full averages are
gathered onto rank 0 (in chunks, see :meth:`MasterLayout.gather`) only when asked for:
checkpoints and sample grids.
"""

from __future__ import annotations

import torch

from lamamba.training.master_weights import MasterLayout


class EMA:
    """One float32 average of the weights per decay; the first decay is the main one.

    ``EMA(engine, (0.9999, 0.99))``; call :meth:`update` on every rank after each applied
    optimizer step, and :meth:`state_dict` on every rank (it is a collective).
    """

    def __init__(self, engine, decays: tuple[float, ...]):
        self.layout = MasterLayout(engine)
        self.decays = tuple(decays)
        self.shares: dict[float, list[torch.Tensor]] = {}
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Start every average at the current weights."""
        masters = self.layout.shares()
        self.shares = {d: [m.detach().float().clone() for m in masters] for d in self.decays}

    @torch.no_grad()
    def update(self) -> None:
        masters = self.layout.shares()
        for decay in self.decays:
            for average, master in zip(self.shares[decay], masters):
                average.lerp_(master, 1.0 - decay)

    def state_dict(self, decay: float | None = None) -> dict[str, torch.Tensor]:
        """The full average for ``decay`` (default: the main one) as a CPU float32 state dict
        {name: tensor of the parameter's shape} on rank 0, ``{}`` on the other ranks; a
        collective (every rank calls it). Only rank 0 ever holds the full model, once, in host
        memory; the accelerators hold their shares plus one gather chunk."""
        decay = self.decays[0] if decay is None else decay
        return self.layout.gather(self.shares[decay])

    @torch.no_grad()
    def load_state_dict(self, decay: float, state: dict[str, torch.Tensor]) -> None:
        """Set the average for ``decay`` from a full state dict (any number of ranks wrote it)."""
        try:
            shares = self.layout.scatter(state)
        except (KeyError, ValueError) as err:
            raise KeyError(f"EMA checkpoint for decay {decay:g}: {err}") from None
        for average, share in zip(self.shares[decay], shares):
            average.copy_(share)
