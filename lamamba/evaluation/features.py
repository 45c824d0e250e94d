"""Feature extractors: uint8 images -> the three feature sets the metrics need.

An extractor is any object with a ``name`` (recorded in protocol cards) and
``__call__(images) -> dict`` mapping a (B, H, W, C) uint8 array to float32 arrays
``{"pool": (B, Dp), "spatial": (B, Ds), "logits": (B, K)}`` (FID + precision/recall, sFID, IS).
The default is the TF-FID Inception-v3; the quickstart plugs a small digit classifier in through
``ExtractorConfig.kind = "package.module:factory"`` (``factory(cfg) -> extractor``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Protocol

import numpy as np
import torch

from lamamba import storage
from lamamba.evaluation.config import ExtractorConfig

FEATURE_KEYS = ("pool", "spatial", "logits")


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class InceptionExtractor:
    """The TF-FID Inception-v3 (``lamamba.evaluation.inception``) as a feature extractor."""

    def __init__(self, cfg: ExtractorConfig):
        from lamamba.evaluation.inception import load_inception

        self.device = resolve_device(cfg.device)
        self.batch_size = cfg.batch_size
        self.model = load_inception(cfg.weights, self.device)
        self.name = f"pt_inception-2015-12-05 ({os.path.basename(cfg.weights)}, sha256 {storage.sha256(cfg.weights)[:16]})"

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = _check_images(images)
        if images.shape[-1] == 1:  # grayscale: the network expects RGB
            images = np.repeat(images, 3, axis=-1)
        out = {key: [] for key in FEATURE_KEYS}
        with _full_fp32():
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
                feats = self.model(batch.to(self.device).permute(0, 3, 1, 2))
                for key in FEATURE_KEYS:
                    out[key].append(feats[key].float().cpu().numpy())
        return {key: np.concatenate(v) for key, v in out.items()}


@contextlib.contextmanager
def _full_fp32():
    """Disable TF32 on GPUs while extracting: the reference statistics were computed in full fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _check_images(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images of shape (B, H, W, 3 or 1), got {images.dtype} {images.shape}")
    return images


def build_extractor(cfg: ExtractorConfig) -> FeatureExtractor:
    """The extractor named by ``cfg.kind``."""
    if cfg.kind == "inception":
        return InceptionExtractor(cfg)
    if ":" not in cfg.kind:
        raise ValueError(f"extractor.kind must be 'inception' or 'package.module:factory', got {cfg.kind!r}")
    module_name, attr = cfg.kind.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"extractor.kind {cfg.kind!r} cannot be imported: {err}") from None
    return factory(cfg)
