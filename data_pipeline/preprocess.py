"""ADM's image preprocessing (docs/protocols.md, *Images to latents*): centre crop (the one in
``lamamba.center_crop``, shared with the FID reference builder), [-1, 1], horizontal flip."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lamamba.center_crop import adm_center_crop


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
