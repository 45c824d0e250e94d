"""ADM's image preprocessing (docs/protocols.md, *Images to latents*): centre crop, [-1, 1], horizontal flip."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CROP_METHOD = "adm_center_crop"


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop of a PIL image to ``size`` x ``size``; returns uint8 (size, size[, C]).

    Halve with a box filter while the short side is at least twice the target (cheap and
    alias-free), then resize bicubically so the short side equals the target, then cut the centre.
    Images smaller than the target are upsampled by the bicubic step.
    """
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def to_model_input(image: Image.Image, size: int, channels: int) -> torch.Tensor:
    """A PIL image -> float32 (channels, size, size) in [-1, 1] (RGB for 3 channels, L for 1)."""
    if channels not in (1, 3):
        raise ValueError(f"images can be read as 1 (grayscale) or 3 (RGB) channels, not {channels}")
    image = image.convert("RGB" if channels == 3 else "L")
    arr = adm_center_crop(image, size).astype(np.float32) / 127.5 - 1.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def hflip(images: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of (..., H, W) images."""
    return images.flip(-1)
