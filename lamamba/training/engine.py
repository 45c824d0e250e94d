"""The DeepSpeed engine: ZeRO config, AdamW parameter groups, the learning-rate schedule.

The JSON files in ``lamamba/training/ds_configs/`` hold what is specific to a ZeRO stage (bucket sizes, overlap);
everything that follows from the run's config (batch sizes, precision, clipping) is filled in here,
so a config change can never disagree with the DeepSpeed JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lamamba.config import ConfigError
from lamamba.training.config import TrainConfig

# Shipped inside the package (package data), so an installed wheel finds them too.
DS_CONFIG_DIR = Path(__file__).resolve().parent / "ds_configs"


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is cut: per rank, then into micro-batches accumulated on each rank."""

    global_batch: int
    per_rank: int
    micro_batch: int
    accumulation: int


def plan_batches(global_batch: int, world_size: int, micro_batch: int = 0) -> BatchPlan:
    """Split ``global_batch`` over ``world_size`` ranks, then into micro-batches of at most
    ``micro_batch`` (0 = the whole per-rank share), so one config serves any number of ranks."""
    if global_batch % world_size:
        raise ConfigError(f"global_batch={global_batch} is not divisible by the world size {world_size}")
    per_rank = global_batch // world_size
    micro = min(micro_batch or per_rank, per_rank)
    if per_rank % micro:
        raise ConfigError(f"engine.micro_batch={micro_batch} does not divide the per-rank batch "
                          f"{per_rank} (global_batch {global_batch} / {world_size} ranks)")
    return BatchPlan(global_batch, per_rank, micro, per_rank // micro)


def deepspeed_config(cfg: TrainConfig, plan: BatchPlan) -> dict[str, Any]:
    """The DeepSpeed config dict: the stage's JSON with the run's batch, precision and clipping."""
    path = Path(cfg.engine.ds_config) if cfg.engine.ds_config else DS_CONFIG_DIR / f"zero{cfg.engine.zero_stage}.json"
    if not path.is_file():
        raise ConfigError(f"engine.ds_config: DeepSpeed config not found: {path}")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"engine.ds_config: {path} is not valid JSON ({err})") from None
    ds["train_batch_size"] = plan.global_batch
    ds["train_micro_batch_size_per_gpu"] = plan.micro_batch
    ds["gradient_accumulation_steps"] = plan.accumulation
    ds["gradient_clipping"] = cfg.optim.grad_clip
    ds.setdefault("zero_optimization", {})["stage"] = cfg.engine.zero_stage
    bf16 = cfg.engine.precision == "bf16"
    ds.setdefault("bf16", {})["enabled"] = bf16
    if cfg.engine.precision == "bf16-autocast":  # fp32 parameters, torch.autocast(bf16) in forward
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    ds["bf16"].setdefault("check_grad_overflow", True)
    ds.pop("fp16", None)
    ds.pop("optimizer", None)  # the optimizer is passed as an object (see build_optimizer)
    ds.pop("scheduler", None)
    if not bf16:
        ds.pop("data_types", None)
    return ds


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """torch AdamW over two groups: decayed weights, and the SSM's A_log / D without decay.

    A torch optimizer object, not DeepSpeed's "AdamW" config entry, so that no fused kernel is
    compiled and the same code runs on CPU and GPU.
    """
    no_decay = set(model.no_weight_decay())
    decay_params, plain_params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain_params if name in no_decay or name.split(".")[-1] in no_decay else decay_params).append(param)
    groups = [{"params": decay_params, "weight_decay": cfg.optim.weight_decay},
              {"params": plain_params, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps)


class WarmupConstant:
    """lr multiplier: linear from 1/warmup to 1 over ``warmup`` steps, then constant."""

    def __init__(self, warmup: int):
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup <= 0 else min(1.0, (step + 1) / self.warmup)


def build_engine(model: torch.nn.Module, cfg: TrainConfig, plan: BatchPlan):
    """Wrap ``model`` in a DeepSpeed engine (ZeRO 1/2/3, bf16 with fp32 master weights)."""
    import deepspeed

    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupConstant(cfg.optim.warmup_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, plan))
    return engine
