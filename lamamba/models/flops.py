"""Parameters and FLOPs of a LaMamba-Diff or DiT network in the paper's convention (fvcore's).

One multiply-add is one FLOP for Linear, conv, matmul and einsum; a LayerNorm costs 5 per element
with affine parameters and 4 without; a selective scan over (batch B, channels D, length L, state
N) costs 9 BLDN + BDL; element-wise ops, softmax, activations, embedding lookups, rolls and gathers
are free. Counted for batch 1 with the timestep and label inputs, by running the model on the meta
device (no memory, no arithmetic) with hooks on the modules that do the counted work.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lamamba.models.config import ModelConfig
from lamamba.models.build import build_model


def _module_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    x = inputs[0]
    if isinstance(module, nn.Linear):
        return x.numel() * module.out_features
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.LayerNorm):
        return x.numel() * (5 if module.elementwise_affine else 4)
    if hasattr(module, "extra_flops"):  # SS2D (einsums + scan), WindowAttention and DiT attention (matmuls)
        return module.extra_flops(x)
    return 0


def count_flops(cfg: ModelConfig) -> dict[str, float]:
    """{"params": parameter count, "gflops": FLOPs / 1e9 of one forward at batch 1} for ``cfg``
    (the resolution is ``cfg.input_size``, in latent pixels)."""
    with torch.device("meta"):
        model = build_model(cfg).eval()
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += _module_flops(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            x = torch.zeros(1, cfg.in_channels, cfg.input_size, cfg.input_size, device="meta")
            t = torch.zeros(1, dtype=torch.long, device="meta")
            model(x, t, t.clone())
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "gflops": total / 1e9}
