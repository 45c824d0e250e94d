"""ADM's centre crop, the one crop of every image pipeline (docs/protocols.md, *Images to latents*).

The training data (``data_pipeline.preprocess``) and references built from real images
(``lamamba.evaluation.reference``) both call :func:`adm_center_crop`, so FID is measured against
images cropped exactly as the model's training images were.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CROP_METHOD = "adm_center_crop"  # recorded in manifests and reference files


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop of a PIL image to ``size`` x ``size``; returns uint8 (size, size[, C]).

    Halve with a box filter while the short side is at least twice the target (cheap and
    alias-free), then resize bicubically so the short side equals the target, then cut the centre.
    Images smaller than the target are upsampled by the bicubic step. The image's mode is kept
    (convert to "RGB" first for three channels).
    """
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]
