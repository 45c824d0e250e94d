"""Classifier-free guidance (Ho & Salimans) around any class-conditional eps model.

The conditional and null-label halves run in one batch; guided eps = eps_null + s * (eps_cond -
eps_null). DiT guides only the first 3 of the 4 latent channels (set ``guided_channels=3`` to
reproduce its numbers); the LaMamba-Diff release guides all of them (the default). Channels past
the eps block (the learned-variance v) are taken from the conditional half.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def guided_forward(
    model_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    y: torch.Tensor,
    *,
    scale: float,
    null_label: int,
    eps_channels: int,
    guided_channels: int | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """Guided model output.

    x: (B, C, H, W), t: (B,), y: (B,) -> (B, C_out, H, W), where the first ``eps_channels`` of
    C_out predict eps. ``scale == 1`` is the conditional model alone (no null half is run).
    """
    if scale == 1.0:
        return model_fn(x, t, y, **model_kwargs)
    k = eps_channels if guided_channels is None else guided_channels
    if not 0 < k <= eps_channels:
        raise ValueError(f"guided_channels must be in 1..{eps_channels}, got {k}")
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]),
                   **model_kwargs)
    if out.shape[1] < eps_channels:
        raise ValueError(f"model output has {out.shape[1]} channels, fewer than eps_channels={eps_channels}")
    cond, null = out.chunk(2)
    guided = null[:, :k] + scale * (cond[:, :k] - null[:, :k])
    return torch.cat([guided, cond[:, k:]], dim=1)
