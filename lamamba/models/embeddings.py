"""Conditioning and position: timestep and label embedders, the 2-D sin-cos positional embedding, and
the inverse of the patch embedding."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, cond_dim): 256 sinusoidal frequencies of the raw timestep, then an MLP."""

    def __init__(self, cond_dim: int, frequency_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def sinusoidal(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, frequency_dim) as [cos, sin]."""
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoidal(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """y (B,) -> (B, cond_dim); row ``num_classes`` is the null label of classifier-free guidance.

    ``drop_mask`` (B,) bool forces the null label (the trainer draws it from keyed generators);
    without one, training drops each label with probability ``dropout_prob``.
    """

    def __init__(self, num_classes: int, cond_dim: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.table = nn.Embedding(num_classes + 1, cond_dim)

    def forward(self, y: torch.Tensor, drop_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes == 0:  # unconditional: the single (null) row
            y = torch.zeros_like(y)
        elif drop_mask is None and self.training and self.dropout_prob > 0:
            drop_mask = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
        if drop_mask is not None:
            y = torch.where(drop_mask.to(y.device, torch.bool), torch.full_like(y, self.num_classes), y)
        return self.table(y)


def sincos_pos_embed_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """(height, width, dim) fixed 2-D sin-cos embedding: half the channels encode the column,
    half the row, each as [sin, cos] over dim / 4 frequencies (MAE / DiT)."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def one_axis(positions: torch.Tensor) -> torch.Tensor:
        args = positions[:, None].double() * omega[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    emb = torch.cat([one_axis(cols.flatten()), one_axis(rows.flatten())], dim=1)
    return emb.view(height, width, dim).float()


def resize_pos_embed(pos_embed: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation of a (1, H, W, C) positional embedding to (1, size, size, C), for
    warm-starting a checkpoint at another resolution (as in ViT fine-tuning)."""
    height, width = (size, size) if isinstance(size, int) else size
    if pos_embed.shape[1:3] == (height, width):
        return pos_embed
    grid = pos_embed.permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def check_latent_input(x: torch.Tensor, channels: int, size: int) -> None:
    """Refuse a network input that is not (B, channels, size, size), naming both shapes."""
    if x.shape[1:] != (channels, size, size):
        raise ValueError(f"expected input (B, {channels}, {size}, {size}), got {tuple(x.shape)}")


def unpatchify(x: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """(B, h, w, p*p*C) per-patch outputs -> the (B, C, h*p, w*p) map (DiT's unpatchify)."""
    b, h, w, _ = x.shape
    x = x.view(b, h, w, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h * patch, w * patch)
