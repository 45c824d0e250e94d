"""ADM's image preprocessing (docs/protocols.md, *Images to latents*): centre crop (the one in
``lamamba.center_crop``, shared with the FID reference builder), [-1, 1], horizontal flip."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lamamba.center_crop import adm_center_crop

# Integer modes wider than 8 bits (16-bit PNG and TIFF grayscale; PIL's 32-bit "I" that some
# decoders use for them): PIL's convert() to L or RGB clips their samples at 255 instead of scaling.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "La", "RGBa", "RGBX")


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit samples: 8-bit modes as they are, 16-bit integer ones scaled by
    255 / 65535 (rounded) to "L". Modes without a known range (float "F", values of an "I" image
    outside 0..65535) raise ValueError, so the encoder skips and lists the image rather than guess."""
    if image.mode in EIGHT_BIT_MODES:
        return image
    if image.mode not in SIXTEEN_BIT_MODES:
        raise ValueError(f"image mode {image.mode!r} has no known range to scale to 8 bits")
    arr = np.asarray(image)
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high > 65535:
        raise ValueError(f"{image.mode} image with values in [{low}, {high}]: not 16-bit samples")
    return Image.fromarray(np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8), mode="L")


def to_model_input(image: Image.Image, size: int, channels: int) -> torch.Tensor:
    """A PIL image -> float32 (channels, size, size) in [-1, 1] (RGB for 3 channels, L for 1);
    high-bit-depth images are scaled to 8 bits first (:func:`to_8bit`)."""
    if channels not in (1, 3):
        raise ValueError(f"images can be read as 1 (grayscale) or 3 (RGB) channels, not {channels}")
    image = to_8bit(image).convert("RGB" if channels == 3 else "L")
    arr = adm_center_crop(image, size).astype(np.float32) / 127.5 - 1.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def hflip(images: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of (..., H, W) images."""
    return images.flip(-1)
