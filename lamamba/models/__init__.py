"""The LaMamba-Diff model family: ``ModelConfig`` (presets and ablation switches) and ``build_model``."""

from lamamba.models.config import PRESETS, ModelConfig
from lamamba.models.lamamba_diff import LaMambaDiff, build_model

__all__ = ["PRESETS", "LaMambaDiff", "ModelConfig", "build_model"]
