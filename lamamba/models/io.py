"""Model weights on disk or object storage: safetensors with the ModelConfig in the metadata.

One file format for training checkpoints' EMA and for exported models, so one ``load_model`` opens
both. The header's ``__metadata__`` holds ``lamamba.model_config`` (the resolved ModelConfig as
JSON) plus any caller metadata (strings; other values are stored as JSON).
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from lamamba import storage
from lamamba.config import ConfigError, from_dict, to_dict
from lamamba.models.config import ModelConfig
from lamamba.models.build import build_model

CONFIG_KEY = "lamamba.model_config"


def save_model_weights(path_or_url: str, state_dict: dict[str, torch.Tensor], cfg: ModelConfig,
                       metadata: dict[str, Any] | None = None,
                       storage_options: dict[str, Any] | None = None) -> None:
    """Write ``state_dict`` (contiguous CPU copies) as one safetensors object, atomically."""
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta[CONFIG_KEY] = json.dumps(to_dict(cfg), sort_keys=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    storage.write_bytes(path_or_url, save_safetensors(tensors, metadata=meta), storage_options)


def read_model_file(path_or_url: str, storage_options: dict[str, Any] | None = None
                    ) -> tuple[dict[str, torch.Tensor], ModelConfig, dict[str, str]]:
    """(state_dict, cfg, metadata) of a file written by :func:`save_model_weights`."""
    data = storage.read_bytes(path_or_url, storage_options)
    header_len = int.from_bytes(data[:8], "little")
    try:
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path_or_url}: not a safetensors file") from None
    if CONFIG_KEY not in meta:
        raise ConfigError(f"{path_or_url}: no {CONFIG_KEY} in the safetensors metadata "
                          "(not written by lamamba.models.io.save_model_weights)")
    cfg = from_dict(ModelConfig, json.loads(meta.pop(CONFIG_KEY)))
    return load_safetensors(data), cfg, meta


def load_model(path_or_url: str, device: str | torch.device = "cpu",
               storage_options: dict[str, Any] | None = None) -> tuple[nn.Module, ModelConfig, dict[str, str]]:
    """Build the model a weights file describes and load it: (model in eval mode, cfg, metadata)."""
    state_dict, cfg, meta = read_model_file(path_or_url, storage_options)
    model = build_model(cfg)
    model.load_state_dict(state_dict)
    return model.to(device).eval(), cfg, meta
