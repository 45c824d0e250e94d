"""Exponential moving averages of the fp32 master weights, correct under every ZeRO stage.

Under bf16 the module's own parameters are bf16 copies, and under ZeRO they are sharded, so the EMA
reads the full fp32 master value of each parameter through DeepSpeed's ``safe_get_full_fp32_param``
(a collective: every rank calls it for every parameter, in the same order). Only the main rank keeps
the averages, in float32, on its device: ``ema = decay * ema + (1 - decay) * weights``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def full_fp32_parameters(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full fp32 value) for every trainable parameter; collective under DeepSpeed."""
    from deepspeed.utils import safe_get_full_fp32_param

    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        value = safe_get_full_fp32_param(param)
        yield name, (param.detach().float() if value is None else value.detach().float())


class EMA:
    """One float32 average of the weights per decay; the first decay is the main one.

    ``EMA(module, (0.9999,), keep=world.is_main)``; call :meth:`update` on every rank after each
    applied optimizer step.
    """

    def __init__(self, module: torch.nn.Module, decays: tuple[float, ...], keep: bool):
        self.module = module
        self.decays = tuple(decays)
        self.keep = keep
        self.averages: dict[float, dict[str, torch.Tensor]] = {}
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Start every average at the current weights."""
        weights = {name: value.clone() for name, value in full_fp32_parameters(self.module)}
        self.averages = {d: {n: w.clone() for n, w in weights.items()} for d in self.decays} if self.keep else {}

    @torch.no_grad()
    def update(self) -> None:
        for name, value in full_fp32_parameters(self.module):
            if self.keep:
                for decay in self.decays:
                    self.averages[decay][name].lerp_(value, 1.0 - decay)

    def state_dict(self, decay: float | None = None) -> dict[str, torch.Tensor]:
        """The average for ``decay`` (default: the main one) as a CPU state dict."""
        decay = self.decays[0] if decay is None else decay
        return {n: t.detach().cpu() for n, t in self.averages[decay].items()}

    @torch.no_grad()
    def load_state_dict(self, decay: float, state: dict[str, torch.Tensor]) -> None:
        if not self.keep:
            return
        average = self.averages[decay]
        missing = sorted(set(average) - set(state))
        if missing:
            raise KeyError(f"EMA checkpoint for decay {decay} lacks parameters, e.g. {missing[:3]}")
        for name, tensor in average.items():
            tensor.copy_(state[name].to(tensor.device, torch.float32))
