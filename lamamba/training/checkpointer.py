"""Checkpoints with a commit protocol: every rank writes, then rank 0 writes ``COMMITTED`` last.

Layout of one checkpoint, ``<dir>/step_XXXXXXXX/`` (a local path or an s3:// URL)::

    deepspeed/                  model and optimizer, sharded as DeepSpeed writes them
    consolidated.safetensors    full fp32 weights and Adam moments ("param/", "exp_avg/",
                                "exp_avg_sq/" + name): resume on a different number of ranks
    ema.safetensors             the main EMA (fp32), loadable by lamamba.models.io.load_model
    ema_<decay>.safetensors     any further EMA decays
    rng/rank_XXXXX.pt           each rank's torch / numpy / python RNG states
    trainer_state.json          step, samples consumed, skipped steps, lr schedule, world size,
                                global batch, config hash, data manifest id
    config.yaml                 the resolved training config
    COMMITTED                   written last, by rank 0, after a barrier behind every rank's files

A directory without ``COMMITTED`` is partial (a crash or kill during the save): it is reported and
ignored. DeepSpeed's own ``latest`` file is never written nor read, since it appears before the
other ranks have finished. Remote checkpoints are written to a local staging directory by each
rank, uploaded file by file, and downloaded once per node to resume.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lamamba import storage
from lamamba.training.distributed import World, barrier, broadcast_object

MARKER = "COMMITTED"
DS_TAG = "deepspeed"
STATE_FILE = "trainer_state.json"
CONSOLIDATED_FILE = "consolidated.safetensors"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def ema_file_name(decay: float, main: bool) -> str:
    return "ema.safetensors" if main else f"ema_{decay:g}.safetensors"


@dataclass
class Scan:
    """The checkpoints found under a directory: committed ones and partial ones (by step)."""

    complete: list[int]
    partial: list[int]

    @property
    def latest(self) -> int | None:
        return self.complete[-1] if self.complete else None


def scan_checkpoints(url: str, storage_options: dict[str, Any] | None = None) -> Scan:
    """The committed and the partial checkpoints under ``url``."""
    complete, partial = [], []
    for name in storage.listdir(url, storage_options):
        match = _STEP_DIR.match(name)
        if not match:
            continue
        step = int(match.group(1))
        has_marker = storage.exists(storage.join(url, name, MARKER), storage_options)
        (complete if has_marker else partial).append(step)
    return Scan(sorted(complete), sorted(partial))


def resolve_checkpoint(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """A committed checkpoint directory from a checkpoint, checkpoints or run directory URL
    (the newest committed one for the latter two); raises FileNotFoundError naming ``url``."""
    if _STEP_DIR.match(url.rstrip("/").rsplit("/", 1)[-1]):
        if not storage.exists(url, storage_options):
            raise FileNotFoundError(f"no checkpoint at {url}")
        if not storage.exists(storage.join(url, MARKER), storage_options):
            raise FileNotFoundError(f"{url} has no {MARKER} marker: the checkpoint is partial")
        return url
    for root in (url, storage.join(url, "checkpoints")):
        latest = scan_checkpoints(root, storage_options).latest
        if latest is not None:
            return storage.join(root, step_dir_name(latest))
    raise FileNotFoundError(f"no committed checkpoint in {url} (nor in {storage.join(url, 'checkpoints')})")


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _inner_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's ZeRO / bf16 wrapper."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def _optimizer_step_count(engine) -> float:
    for state in _inner_optimizer(engine).state.values():
        if "step" in state:
            return float(state["step"])
    return 0.0


def _set_optimizer_step_count(engine, count: float) -> None:
    for state in _inner_optimizer(engine).state.values():
        if "step" in state:
            if torch.is_tensor(state["step"]):
                state["step"].fill_(count)
            else:
                state["step"] = count


_MOMENTS = ("exp_avg", "exp_avg_sq")
# ZeRO-3, ZeRO-1/2, and the bf16 optimizer DeepSpeed uses for ZeRO-1 with fp32 accumulation.
_FP32_SHARDS = ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition")


def _link_optimizer_state(engine) -> None:
    """Make every parameter's fp32 shard see its Adam moments.

    torch's AdamW creates its state at the first step, so a fresh engine has none; DeepSpeed 0.19's
    ZeRO-1/2 optimizers moreover link the shards to the state once, after the first parameter
    group's first step, leaving later groups (here: A_log / D without weight decay) unlinked.
    Create AdamW's state where it is missing (zero moments, as AdamW would) and link again.
    """
    wrapper, inner = engine.optimizer, _inner_optimizer(engine)
    # The flat fp32 shards AdamW steps (and keys its state by) in each kind of DeepSpeed optimizer.
    shards = next((getattr(wrapper, name) for name in _FP32_SHARDS if hasattr(wrapper, name)),
                  [p for group in inner.param_groups for p in group["params"]])
    for flat in shards:
        if not inner.state.get(flat):
            inner.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                 "exp_avg_sq": torch.zeros_like(flat)}
    if hasattr(wrapper, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2 (ZeRO-3 looks states up)
        wrapper._hp_optimizer_states_linked = False
        wrapper._lazy_init_hp_params_optimizer_state()


def save_consolidated(engine, path: str, keep: bool) -> None:
    """Gather full fp32 weights and Adam moments (collective) and, where ``keep``, write them."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    from safetensors.torch import save_file

    _link_optimizer_state(engine)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        values = {"param": safe_get_full_fp32_param(param)}
        values.update({key: safe_get_full_optimizer_state(param, key) for key in _MOMENTS})
        if keep:
            for key, value in values.items():
                if value is None:
                    raise RuntimeError(f"DeepSpeed returned no full {key} for parameter {name}")
                tensors[f"{key}/{name}"] = value.detach().float().cpu().contiguous()
    if keep:
        save_file(tensors, path, metadata={"optimizer_step": repr(_optimizer_step_count(engine))})


@torch.no_grad()
def load_consolidated(engine, path: str) -> None:
    """Set the fp32 master weights, Adam moments and the module's (bf16) copies from ``path``."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from safetensors import safe_open

    _link_optimizer_state(engine)
    with safe_open(path, framework="pt") as f:
        step_count = float(f.metadata()["optimizer_step"])
        for name, param in engine.module.named_parameters():
            value = f.get_tensor(f"param/{name}").to(param.device)
            safe_set_full_fp32_param(param, value)
            for key in _MOMENTS:
                safe_set_full_optimizer_state(param, f.get_tensor(f"{key}/{name}").to(param.device), key)
            # The module's own (bf16, maybe sharded) copy is what the next forward pass reads.
            if hasattr(param, "ds_id"):  # a ZeRO-3 shard
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    param.data.copy_(value.to(param.dtype))
            else:
                param.data.copy_(value.to(param.dtype))
    _set_optimizer_step_count(engine, step_count)


class Checkpointer:
    """Save, find, load and prune checkpoints under ``url`` (every rank calls save and load)."""

    def __init__(self, url: str, world: World, keep_last: int = 3, staging_dir: str = "",
                 storage_options: dict[str, Any] | None = None, consolidated: bool = True,
                 log: Callable[[str], None] = print):
        self.url = url
        self.world = world
        self.keep_last = keep_last
        self.consolidated = consolidated
        self.options = storage_options or {}
        self.log = log
        self.remote = not storage.is_local(url)
        self.staging = staging_dir or os.path.join(tempfile.gettempdir(), "lamamba-ckpt-staging")

    # ---- finding -------------------------------------------------------------------------------
    def scan(self) -> Scan:
        return scan_checkpoints(self.url, self.options)

    def find_resume_step(self) -> int | None:
        """The newest committed checkpoint's step (the same answer on every rank); partial ones
        are reported by rank 0."""
        scan = broadcast_object(self.scan() if self.world.is_main else None)
        if self.world.is_main:
            for step in scan.partial:
                self.log(f"ignoring partial checkpoint {storage.join(self.url, step_dir_name(step))}: "
                         f"no {MARKER} marker (the save was interrupted)")
        return scan.latest

    # ---- saving --------------------------------------------------------------------------------
    def _local_dir(self, step: int, per_rank: bool) -> str:
        if not self.remote:
            return storage.join(self.url, step_dir_name(step))
        who = f"rank_{self.world.rank:05d}" if per_rank else f"node_{self.world.rank - self.world.local_rank:05d}"
        return os.path.join(self.staging, who, step_dir_name(step))

    def save(self, step: int, engine, ema, trainer_state: dict[str, Any], config_yaml: str,
             model_cfg: Any) -> str:
        """Write checkpoint ``step`` from every rank, then commit it; returns its URL."""
        from lamamba.models.io import save_model_weights

        url = storage.join(self.url, step_dir_name(step))
        local = self._local_dir(step, per_rank=True)
        if self.world.is_main and storage.exists(url, self.options):
            storage.remove(url, recursive=True, storage_options=self.options)  # an interrupted earlier save
        if self.remote and os.path.isdir(local):
            shutil.rmtree(local)
        barrier()
        os.makedirs(os.path.join(local, DS_TAG), exist_ok=True)
        engine.save_checkpoint(local, tag=DS_TAG, save_latest=False)
        if self.consolidated:
            save_consolidated(engine, os.path.join(local, CONSOLIDATED_FILE), keep=self.world.is_main)
        os.makedirs(os.path.join(local, "rng"), exist_ok=True)
        torch.save(_rng_state(), os.path.join(local, "rng", f"rank_{self.world.rank:05d}.pt"))
        averages = [ema.state_dict(decay) for decay in ema.decays]  # collective
        if self.world.is_main:
            for i, (decay, average) in enumerate(zip(ema.decays, averages)):
                save_model_weights(os.path.join(local, ema_file_name(decay, i == 0)), average,
                                   model_cfg, metadata={"ema_decay": f"{decay:g}", "step": str(step)})
            with open(os.path.join(local, STATE_FILE), "w") as f:
                json.dump(trainer_state, f, indent=1, sort_keys=True)
            with open(os.path.join(local, "config.yaml"), "w") as f:
                f.write(config_yaml)
        if self.remote:
            self._upload(local, url)
            shutil.rmtree(local, ignore_errors=True)
        barrier()  # every rank's files are in place
        if self.world.is_main:
            marker = {"step": step, "world_size": self.world.world_size, "time": time.time()}
            storage.write_bytes(storage.join(url, MARKER), json.dumps(marker).encode(), self.options)
            self._prune()
        return url

    def _upload(self, local: str, url: str) -> None:
        fs, root = storage.filesystem(url, self.options)
        for dirpath, _, files in os.walk(local):
            for name in files:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, local).replace(os.sep, "/")
                fs.put_file(path, f"{root.rstrip('/')}/{rel}")

    def _prune(self) -> None:
        """Keep the newest ``keep_last`` committed checkpoints; drop older ones and stale partials."""
        scan = self.scan()
        doomed = scan.complete[:-self.keep_last] + [s for s in scan.partial if scan.latest and s < scan.latest]
        for step in doomed:
            storage.remove(storage.join(self.url, step_dir_name(step)), recursive=True, storage_options=self.options)

    # ---- loading -------------------------------------------------------------------------------
    def read_state(self, step: int) -> dict[str, Any]:
        """The trainer state (step, samples consumed, ...) of checkpoint ``step``."""
        url = storage.join(self.url, step_dir_name(step), STATE_FILE)
        return json.loads(storage.read_bytes(url, self.options))

    def _fetch(self, step: int) -> str:
        """A local directory holding checkpoint ``step`` (downloaded once per node if remote)."""
        if not self.remote:
            return storage.join(self.url, step_dir_name(step))
        local = self._local_dir(step, per_rank=False)
        if self.world.local_rank == 0:
            if os.path.isdir(local):
                shutil.rmtree(local)
            fs, root = storage.filesystem(storage.join(self.url, step_dir_name(step)), self.options)
            root = root.rstrip("/")
            for path in fs.find(root):
                dest = os.path.join(local, os.path.relpath(path, root))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                fs.get_file(path, dest)
        barrier()
        return local

    def load(self, step: int, engine, ema) -> dict[str, Any]:
        """Restore engine, EMA and RNG from checkpoint ``step``; returns the trainer state."""
        from safetensors.torch import load_file

        local = self._fetch(step)
        with open(os.path.join(local, STATE_FILE)) as f:
            state = json.load(f)
        if state["world_size"] == self.world.world_size:
            engine.load_checkpoint(local, tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True)
            _set_rng_state(torch.load(os.path.join(local, "rng", f"rank_{self.world.rank:05d}.pt"), weights_only=False))
        else:
            path = os.path.join(local, CONSOLIDATED_FILE)
            if not os.path.isfile(path):
                raise RuntimeError(
                    f"checkpoint {step_dir_name(step)} was written by {state['world_size']} ranks without "
                    f"{CONSOLIDATED_FILE}; resume it with {state['world_size']} ranks")
            load_consolidated(engine, path)
            engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
            engine.global_steps = state["step"]
            engine.global_samples = state["samples_consumed"]
        for i, decay in enumerate(ema.decays):  # every rank takes its shares of the full averages
            path = os.path.join(local, ema_file_name(decay, i == 0))
            if not os.path.isfile(path):
                raise RuntimeError(f"checkpoint {step_dir_name(step)} has no EMA for decay {decay:g} ({path})")
            ema.load_state_dict(decay, load_file(path))
        if self.remote:
            barrier()
            if self.world.local_rank == 0:
                shutil.rmtree(local, ignore_errors=True)
        return state
