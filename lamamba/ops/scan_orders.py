"""The four scan orders of SS2D over an H x W grid, and the cross-scan / cross-merge they define.

An order is a permutation of the raster (row * W + col) indices: ``order[i]`` is the cell visited
at step i. Two families:

* ``"continuous"`` (LaMamba-Diff): 1. a row snake from the top-left (row 0 left to right, row 1
  right to left, ...); 2. the reverse of 1; 3. a column snake from the bottom-left (column 0
  bottom to top, column 1 top to bottom, ...); 4. the reverse of 3. Consecutive cells are always
  4-neighbours, for any H and W.
* ``"raster"`` (VMamba's SS2D): row-major, column-major, and the reverses of both.

The index tensors are built once per (H, W, kind, device) and cached.
"""

from __future__ import annotations

import functools

import torch

SCAN_KINDS = ("continuous", "raster")


def _row_snake(h: int, w: int) -> torch.Tensor:
    grid = torch.arange(h * w).view(h, w)
    grid[1::2] = grid[1::2].flip(1)
    return grid.flatten()


def _column_snake_from_bottom(h: int, w: int) -> torch.Tensor:
    cols = torch.arange(h * w).view(h, w).flip(0).t().clone()  # column c, bottom to top
    cols[1::2] = cols[1::2].flip(1)
    return cols.flatten()


@functools.lru_cache(maxsize=64)
def scan_orders(height: int, width: int, kind: str = "continuous",
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(orders, inverse), both (4, H*W) int64 on ``device``: ``orders[k, i]`` is the raster index
    visited at step i of direction k, ``inverse[k, j]`` the step at which direction k visits j."""
    if kind not in SCAN_KINDS:
        raise ValueError(f"unknown scan kind {kind!r}; choose one of {SCAN_KINDS}")
    if height < 1 or width < 1:
        raise ValueError(f"scan grid must be at least 1 x 1, got {height} x {width}")
    if kind == "continuous":
        first, second = _row_snake(height, width), _column_snake_from_bottom(height, width)
        orders = torch.stack([first, first.flip(0), second, second.flip(0)])
    else:
        first = torch.arange(height * width)
        second = first.view(height, width).t().flatten()
        orders = torch.stack([first, second, first.flip(0), second.flip(0)])
    inverse = torch.argsort(orders, dim=1)
    return orders.to(device), inverse.to(device)


def cross_scan(x: torch.Tensor, kind: str = "continuous") -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): the four sequences, each in its own visiting order."""
    batch, channels, height, width = x.shape
    orders, _ = scan_orders(height, width, kind, x.device)
    xs = x.flatten(2).index_select(2, orders.flatten())  # (B, C, 4 * L)
    return xs.view(batch, channels, 4, height * width).transpose(1, 2)


def cross_merge(ys: torch.Tensor, height: int, width: int, kind: str = "continuous") -> torch.Tensor:
    """(B, 4, C, H*W) in visiting order -> (B, C, H*W) in raster order, the sum of the four."""
    batch, k, channels, length = ys.shape
    _, inverse = scan_orders(height, width, kind, ys.device)
    index = inverse.view(1, k, 1, length).expand(batch, k, channels, length)
    return ys.gather(3, index).sum(1)
