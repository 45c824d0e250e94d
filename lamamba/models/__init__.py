"""The model family: LaMamba-Diff and the DiT baselines, one ``ModelConfig`` (presets and ablation
switches) and one ``build_model``."""

from lamamba.models.build import build_model
from lamamba.models.config import DIT_PRESETS, PRESETS, ModelConfig
from lamamba.models.dit import DiT
from lamamba.models.lamamba_diff import LaMambaDiff

__all__ = ["DIT_PRESETS", "PRESETS", "DiT", "LaMambaDiff", "ModelConfig", "build_model"]
