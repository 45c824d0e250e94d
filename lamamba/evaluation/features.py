"""Feature extractors: uint8 images -> the three feature sets the metrics need.

An extractor is any object with a ``name`` (recorded in protocol cards) and
``__call__(images) -> dict`` mapping a (B, H, W, C) uint8 array to float32 arrays
``{"pool": (B, Dp), "spatial": (B, Ds), "logits": (B, K)}`` (FID + precision/recall, sFID, IS).
The default is the TF-FID Inception-v3; the quickstart plugs a small digit classifier in through
``ExtractorConfig.kind = "package.module:factory"`` (``factory(cfg) -> extractor``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from typing import Protocol

import numpy as np
import torch

from lamamba import storage
from lamamba.devices import bind_device, select_device, tf32_mode
from lamamba.evaluation.config import ExtractorConfig

FEATURE_KEYS = ("pool", "spatial", "logits")


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


log = logging.getLogger("lamamba.evaluation")


def resolve_device(device: str) -> torch.device:
    """This process's device for ``device`` (auto, cuda, cuda:N, cpu), made current: under
    torchrun GPU LOCAL_RANK (a Ray worker sees only its own GPUs); see :mod:`lamamba.devices`."""
    choice = select_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    bind_device(choice.device)
    _say_once(choice.fallback, f"computing on {choice.device}: {choice.reason}")
    return choice.device


@functools.lru_cache(maxsize=8)
def _say_once(warn: bool, line: str) -> None:
    (log.warning if warn else log.info)(line)


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
        # TF32 off: the reference statistics were computed in full fp32.
        with tf32_mode(False):
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + self.batch_size]))
                feats = self.model(batch.to(self.device).permute(0, 3, 1, 2))
                for key in FEATURE_KEYS:
                    out[key].append(feats[key].float().cpu().numpy())
        return {key: np.concatenate(v) for key, v in out.items()}


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
