"""``build_model``: the network a :class:`ModelConfig` names, LaMamba-Diff or DiT."""

from __future__ import annotations

import torch.nn as nn

from lamamba.models.config import ModelConfig
from lamamba.models.dit import DiT
from lamamba.models.lamamba_diff import LaMambaDiff


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network of ``cfg`` (chosen by its preset), freshly initialised. Both backbones take
    ``(x (B, C_in, R, R), t (B,), y (B,), drop_mask=None)`` and return (B, C_out, R, R)."""
    return DiT(cfg) if cfg.backbone == "dit" else LaMambaDiff(cfg)
