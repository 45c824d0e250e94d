"""What the quickstart leaves for a person to look at: the sample grid, the metrics, TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

_AGREE = (40, 170, 60)  # frame of a sample the digit classifier reads as its conditioning class
_DISAGREE = (210, 40, 40)


def sample_grid(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, num_classes: int,
                per_class: int = 10, cell: int = 40) -> Image.Image:
    """One row per class, the first ``per_class`` samples of that class, upscaled to ``cell`` px.

    images: uint8 (N, H, W, 1) or (N, H, W, 3); labels, predicted: (N,). Each sample is framed in
    green when the digit classifier agrees with its conditioning class and in red when not.
    """
    border, gap = max(1, cell // 20), max(2, cell // 10)
    grid = Image.new("RGB", (gap + per_class * (cell + gap), gap + num_classes * (cell + gap)), "white")
    for row in range(num_classes):
        for col, i in enumerate(np.flatnonzero(labels == row)[:per_class]):
            pixels = images[i] if images.shape[-1] == 3 else np.repeat(images[i], 3, axis=-1)
            tile = Image.fromarray(pixels).resize((cell - 2 * border,) * 2, Image.NEAREST)
            framed = Image.new("RGB", (cell, cell), _AGREE if predicted[i] == row else _DISAGREE)
            framed.paste(tile, (border, border))
            grid.paste(framed, (gap + col * (cell + gap), gap + row * (cell + gap)))
    return grid


def write_metrics(path: Path, metrics: dict) -> None:
    """The metrics JSON, sorted keys; non-finite numbers become null so any JSON reader takes it."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")


def write_tensorboard(logdir: Path, metrics: dict, grid: Image.Image, step: int) -> None:
    """The final metrics as scalars and the grid as an image, under ``logdir``, at ``step``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(logdir)) as writer:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(f"quickstart/{key}", value, step)
        writer.add_image("quickstart/samples", np.asarray(grid), step, dataformats="HWC")
