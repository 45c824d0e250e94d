"""The LaMamba block: SS2D, window attention and an MLP, each behind an AdaLN-Zero modulation."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lamamba.models.attention import WindowAttention
from lamamba.models.ss2d import SS2D


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: (B, H, W, C); shift, scale: (B, C)."""
    return x * (1 + scale[:, None, None]) + shift[:, None, None]


class Mlp(nn.Module):
    """Linear(dim -> hidden), GELU (exact; DiT's "tanh" approximation on request), Linear(hidden -> dim)."""

    def __init__(self, dim: int, hidden: int, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class LaMambaBlock(nn.Module):
    """x + gate * branch(LN(x) * (1 + scale) + shift) for the branches SS2D, attention (unless
    ``attention == "none"``) and MLP; (shift, scale, gate) per branch come from c.

    ``project_cond``: c (cond_dim) is first projected to the block width (wherever the widths
    differ, and in every decoder block). The modulation's Linear is zero-initialised by the model,
    so a fresh block is the identity.
    """

    def __init__(self, dim: int, cond_dim: int, *, resolution: tuple[int, int], num_heads: int,
                 attention: str = "window", window_size: int = 8, shift: bool = False, d_state: int = 16,
                 ssm_ratio: float = 2.0, mlp_ratio: float = 4.0, scan: str = "continuous",
                 scan_backend: str = "auto", project_cond: bool = False):
        super().__init__()
        self.cond_proj = nn.Linear(cond_dim, dim) if project_cond or cond_dim != dim else None
        self.norm1 = nn.LayerNorm(dim)
        self.ss2d = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan=scan, backend=scan_backend)
        if attention == "none":
            self.norm2 = self.attn = None
        else:
            self.norm2 = nn.LayerNorm(dim)
            window = None if attention == "global" else window_size
            self.attn = WindowAttention(dim, num_heads, resolution, window,
                                        shift=shift and attention == "window")
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.num_branches = 3 if self.attn is not None else 2
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * self.num_branches * dim))
        self.checkpoint = False  # set by LaMambaDiff.set_activation_checkpointing

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C), c: (B, cond_dim) -> (B, H, W, C)."""
        if self.cond_proj is not None:
            c = self.cond_proj(c)
        mods = self.adaLN_modulation(c).chunk(3 * self.num_branches, dim=-1)
        branches = [(self.norm1, self.ss2d)]
        if self.attn is not None:
            branches.append((self.norm2, self.attn))
        branches.append((self.norm3, self.mlp))
        for i, (norm, branch) in enumerate(branches):
            shift, scale, gate = mods[3 * i: 3 * i + 3]
            x = x + gate[:, None, None] * branch(modulate(norm(x), shift, scale))
        return x
