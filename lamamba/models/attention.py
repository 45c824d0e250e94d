"""Swin window attention (W-MSA / SW-MSA) with a relative position bias, channels-last.

A map no larger than the window is attended as one window, unshifted; global attention is the same
module with the window set to the whole map.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MASKED = -100.0  # Swin's additive mask between regions that the cyclic shift made neighbours


def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """(wh*ww, wh*ww) index into the ((2wh-1) * (2ww-1)) relative position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def resize_relative_position_bias(table: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of a ((2w-1)^2, heads) bias table of square windows to ``size`` rows."""
    old_side, new_side = math.isqrt(table.shape[0]), math.isqrt(size)
    if old_side ** 2 != table.shape[0] or new_side ** 2 != size:
        raise ValueError(f"cannot resize a relative position bias table of {table.shape[0]} rows to {size}: "
                         "only square windows are supported")
    grid = table.t().reshape(1, -1, old_side, old_side).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(-1, size).t().to(table.dtype).contiguous()


def shifted_window_mask(height: int, width: int, wh: int, ww: int, shift: int) -> torch.Tensor:
    """(num_windows, wh*ww, wh*ww) additive mask of SW-MSA: 0 within a region, -100 across the
    9 regions that the cyclic roll by ``shift`` brings into one window."""
    regions = torch.zeros(height, width)
    label = 0
    for rows in (slice(0, -wh), slice(-wh, -shift), slice(-shift, None)):
        for cols in (slice(0, -ww), slice(-ww, -shift), slice(-shift, None)):
            regions[rows, cols] = label
            label += 1
    windows = window_partition(regions[None, :, :, None], wh, ww).squeeze(-1)  # (nW, N)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(MASKED), torch.tensor(0.0))


def window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * num_windows, wh*ww, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(windows: torch.Tensor, wh: int, ww: int, h: int, w: int) -> torch.Tensor:
    """(B * num_windows, wh*ww, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (optionally shifted) windows of a (B, H, W, C) map.

    ``window`` None means global attention (one window over the whole map). The relative position
    index and the shift mask are non-persistent buffers: they follow from the resolution and are
    rebuilt, never loaded from a checkpoint.
    """

    def __init__(self, dim: int, num_heads: int, resolution: tuple[int, int], window: int | None = 8,
                 shift: bool = False):
        super().__init__()
        height, width = resolution
        wh = height if window is None else min(window, height)
        ww = width if window is None else min(window, width)
        if height % wh or width % ww:
            raise ValueError(f"a {height} x {width} map cannot be tiled by {wh} x {ww} windows")
        self.resolution = (height, width)
        self.window = (wh, ww)
        # No shift where one window covers the map (Swin).
        self.shift = wh // 2 if shift and (wh < height or ww < width) else 0
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)
        mask = shifted_window_mask(height, width, wh, ww, self.shift) if self.shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        b, h, w, c = x.shape
        if (h, w) != self.resolution:
            raise ValueError(f"attention built for a {self.resolution} map, got {(h, w)}; rebuild the model "
                             "for the new input_size")
        wh, ww = self.window
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, wh, ww)  # (B*nW, N, C)
        n, heads = wh * ww, self.num_heads
        qkv = self.qkv(windows).view(-1, n, 3, heads, self.head_dim)
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]
        bias = bias.view(n, n, heads).permute(2, 0, 1)  # (heads, N, N)
        if self.attn_mask is None:  # one bias for every window: broadcast over B*nW
            qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B*nW, heads, N, hd)
        else:
            # The mask differs per window but not per image: windows join the heads, (B, nW*heads),
            # so a (1, nW*heads, N, N) mask broadcasts over the batch instead of being copied B times.
            num_windows = self.attn_mask.shape[0]
            qkv = qkv.view(b, num_windows, n, 3, heads, self.head_dim).permute(3, 0, 1, 4, 2, 5)
            qkv = qkv.reshape(3, b, num_windows * heads, n, self.head_dim)
            bias = (bias[None] + self.attn_mask[:, None]).reshape(1, num_windows * heads, n, n)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias.to(qkv.dtype))
        out = out.reshape(-1, heads, n, self.head_dim)  # (B*nW, heads, N, hd)
        out = self.proj(out.transpose(1, 2).reshape(-1, n, c))
        x = window_reverse(out, wh, ww, h, w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return x

    def extra_flops(self, x: torch.Tensor) -> int:
        """Multiply-adds of q @ k^T and attn @ v (the Linears are counted on their own)."""
        b, h, w, c = x.shape
        n = self.window[0] * self.window[1]
        return 2 * b * (h * w // n) * n * n * c
