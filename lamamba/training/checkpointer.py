"""Checkpoints with a commit protocol: every rank writes, then rank 0 writes ``COMMITTED`` last.

Layout of one checkpoint, ``<dir>/step_XXXXXXXX/`` (a local path or an s3:// URL)::

    deepspeed/                  model and optimizer, sharded as DeepSpeed writes them
    consolidated.safetensors    full fp32 weights and Adam moments ("param/", "exp_avg/",
                                "exp_avg_sq/" + name): resume on a different number of ranks
    ema.safetensors             the main EMA (fp32), loadable by lamamba.models.io.load_model
    ema_<decay>.safetensors     any further EMA decays
    rng/rank_XXXXX.json         each rank's torch / numpy / python RNG states
    trainer_state.json          step, samples consumed, skipped steps, lr schedule, world size,
                                global batch, config hash, data manifest id
    config.yaml                 the resolved training config
    COMMITTED                   written last, by rank 0, after every rank's files: the size and
                                sha256 of each of them

A directory without ``COMMITTED`` is partial (a crash or kill during the save, a failed upload): it
is reported and ignored. Resume verifies the newest commit's files and falls back to the previous
commit if they do not match. DeepSpeed's own ``latest`` file is never written nor read, since it
appears before the other ranks have finished. Remote checkpoints are written to this run's private
staging directory by each rank, uploaded in parallel with retries, and downloaded once per node to
resume. One writer per directory: rank 0 holds its lease (:mod:`lamamba.training.lease`). No file
of a checkpoint can run code when loaded (JSON, safetensors, :mod:`lamamba.training.safe_load`).
"""

from __future__ import annotations

import base64
import glob
import itertools
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
from lamamba.config import ConfigError
from lamamba.training import safe_load
from lamamba.training.distributed import World, all_gather_object, barrier, broadcast_object
from lamamba.training.lease import Lease, LeaseHeldError
from lamamba.training.master_weights import MOMENTS, MasterLayout

MARKER = "COMMITTED"
DAMAGED = "DAMAGED"
UPLOAD_ATTEMPTS = 4  # per periodic save (backoff 1, 2, 4 s); a final save retries until the budget
RETRY_BACKOFF_S = 1.0
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


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, committed or trusted; the message says why and what to do."""


def _encode_bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _rng_state() -> dict[str, Any]:
    """This process's torch / numpy / python (/ CUDA) RNG states as JSON-able values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": _encode_bytes(torch.get_rng_state()), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = _encode_bytes(torch.cuda.get_rng_state())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_decode_bytes(state["torch"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_decode_bytes(state["cuda"]))


def _read_json(path: str) -> Any:
    """A JSON file of a checkpoint; a damaged one is an error naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON ({err})") from None


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A safetensors file of a checkpoint (a format that holds only tensors); a damaged or
    foreign one is an error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as err:
        raise CheckpointError(f"checkpoint file {path} is not a valid safetensors file ({err})") from None


def _records(root: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {"size", "sha256"}} of files under a local ``root``."""
    return {name: {"size": os.path.getsize(os.path.join(root, name)),
                   "sha256": storage.sha256(os.path.join(root, name))} for name in names}


def _local_files(root: str) -> list[str]:
    """Every file under ``root``, as sorted '/'-separated relative names."""
    names = []
    for dirpath, _, files in os.walk(root):
        names += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/") for f in files]
    return sorted(names)


def read_commit(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``COMMITTED`` record of checkpoint ``url`` (step, world size, time and, since
    checksums were added, ``files``: {name: {"size", "sha256"}})."""
    path = storage.join(url, MARKER)
    try:
        return json.loads(storage.read_bytes(path, storage_options))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None


def verify_files(url: str, files: dict[str, dict[str, Any]], storage_options: dict[str, Any] | None = None
                 ) -> list[str]:
    """The problems of ``files`` (names and records from a commit) under checkpoint ``url``:
    missing, of another size, or with another sha256; [] when all match. Reads every byte."""
    problems = []
    for name, record in files.items():
        try:
            path = storage.safe_join(url, name, what="file name in the commit record")
        except storage.UnsafePathError as err:
            problems.append(str(err))
            continue
        fs, inner = storage.filesystem(path, storage_options)
        try:
            size = fs.size(inner)
        except FileNotFoundError:
            problems.append(f"{name} is missing")
            continue
        if size != record["size"]:
            problems.append(f"{name} has {size} bytes, the commit recorded {record['size']}")
        elif storage.sha256(path, storage_options) != record["sha256"]:
            problems.append(f"{name} does not match its recorded sha256")
    return problems


@torch.no_grad()
def load_consolidated(engine, layout: MasterLayout, path: str) -> None:
    """Set the fp32 master weights, Adam moments and the module's (bf16) copies from ``path``."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from safetensors import SafetensorError, safe_open

    layout.link_optimizer_state()
    try:
        opened = safe_open(path, framework="pt")
    except SafetensorError as err:
        raise CheckpointError(f"checkpoint file {path} is not a valid safetensors file ({err})") from None
    with opened as f:
        step_count = float(f.metadata()["optimizer_step"])
        for name, param in engine.module.named_parameters():
            value = f.get_tensor(f"param/{name}").to(param.device)
            safe_set_full_fp32_param(param, value)
            for key in MOMENTS:
                safe_set_full_optimizer_state(param, f.get_tensor(f"{key}/{name}").to(param.device), key)
            # The module's own (bf16, maybe sharded) copy is what the next forward pass reads.
            if hasattr(param, "ds_id"):  # a ZeRO-3 shard
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    param.data.copy_(value.to(param.dtype))
            else:
                param.data.copy_(value.to(param.dtype))
    layout.set_step_count(step_count)


class Checkpointer:
    """Save, find, verify, load and prune checkpoints under ``url`` (every rank calls every method).

    ``acquire`` takes the directory's writer lease (and so checks it is writable) before anything
    else; ``close`` releases it and removes this run's staging directory.
    """

    def __init__(self, url: str, world: World, keep_last: int = 3, staging_dir: str = "",
                 storage_options: dict[str, Any] | None = None, consolidated: bool = True,
                 log: Callable[[str], None] = print, warn: Callable[[str], None] | None = None,
                 upload_budget_s: float = 900.0, lease_ttl_s: float = 120.0):
        self.url = url
        self.world = world
        self.keep_last = keep_last
        self.consolidated = consolidated
        self.options = storage_options or {}
        self.log = log
        self.warn = warn or log
        self.remote = not storage.is_local(url)
        self.staging_base = staging_dir
        self.staging: str | None = None
        self.upload_budget_s = upload_budget_s
        self.lease = Lease(url, self.options, lease_ttl_s, log=self.warn) if world.is_main else None
        self.outage_since: float | None = None  # when the current run of failed saves began
        self.last_committed: str | None = None  # URL of the newest commit this run made or resumed from

    # ---- the writer's lease and the staging directory -----------------------------------------
    def acquire(self) -> None:
        """Take the writer lease (rank 0) and make this run's private staging directory; raises
        the same error on every rank if another writer holds the directory or it is not writable."""
        problem = None
        if self.lease is not None:
            try:
                self.lease.acquire()
            except LeaseHeldError as err:
                problem = ("lease", str(err))
            except PermissionError as err:
                problem = ("config", f"checkpoint.dir: {err}")
            except Exception as err:  # the store is unreachable: the run cannot checkpoint
                problem = ("error", f"could not take the lease {self.lease.path}: {type(err).__name__}: {err}")
        problem = broadcast_object(problem)
        if problem is None and self.remote:
            problem = self._make_staging()
        if problem is not None:
            self.close()
            kind, message = problem
            raise {"lease": LeaseHeldError, "config": ConfigError}.get(kind, CheckpointError)(message)

    def _make_staging(self) -> tuple[str, str] | None:
        """One private directory per node (mode 0700, a random name) under checkpoint.staging_dir
        or the system's temp dir; no other run can guess, reuse or delete it."""
        made, problem = None, None
        if self.world.local_rank == 0:
            try:
                if self.staging_base:
                    os.makedirs(self.staging_base, exist_ok=True)
                made = tempfile.mkdtemp(prefix="lamamba-ckpt-", dir=self.staging_base or None)
            except OSError as err:
                problem = ("config", f"checkpoint.staging_dir: cannot create a staging directory under "
                                     f"{self.staging_base or tempfile.gettempdir()}: {err.strerror}")
        gathered = all_gather_object((made, problem))
        problems = [p for _, p in gathered if p]
        if problems:
            if made:
                shutil.rmtree(made, ignore_errors=True)
            return problems[0]
        self.staging = gathered[self.world.rank - self.world.local_rank][0]  # this node's
        return None

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
        if self.staging and self.world.local_rank == 0:
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None

    def _check_lease(self) -> None:
        problem = None
        if self.lease is not None:
            try:
                self.lease.check()
            except LeaseHeldError as err:
                problem = str(err)
        problem = broadcast_object(problem)
        if problem:
            raise LeaseHeldError(problem)

    # ---- finding ---------------------------------------------------------------------------------
    def scan(self) -> Scan:
        return scan_checkpoints(self.url, self.options)

    def find_resume_step(self) -> int | None:
        """The newest committed checkpoint whose files match their commit record (the same
        answer on every rank). Partial checkpoints are reported; a damaged one is reported,
        renamed from ``COMMITTED`` to ``DAMAGED`` (so it is never resumed nor counted as
        committed again) and the previous one is tried."""
        scan = broadcast_object(self.scan() if self.world.is_main else None)
        if self.world.is_main:
            for step in scan.partial:
                self.log(f"ignoring partial checkpoint {storage.join(self.url, step_dir_name(step))}: "
                         f"no {MARKER} marker (the save was interrupted)")
        for step in reversed(scan.complete):
            url = storage.join(self.url, step_dir_name(step))
            commit = broadcast_object(read_commit(url, self.options) if self.world.is_main else None)
            files = commit.get("files")
            if files is None:
                if self.world.is_main:
                    self.warn(f"checkpoint {url} has no file checksums (written by an older lamamba): not verified")
                self.last_committed = url
                return step
            names = sorted(files)[self.world.rank::self.world.world_size]  # every rank reads a share
            problems = [p for ps in all_gather_object(verify_files(url, {n: files[n] for n in names}, self.options))
                        for p in ps]
            if not problems:
                self.last_committed = url
                return step
            if self.world.is_main:
                self.warn(f"checkpoint {url} is damaged ({'; '.join(problems)}): not resuming from it, "
                          f"marking it {DAMAGED} and trying the previous one")
                storage.write_bytes(storage.join(url, DAMAGED), json.dumps(
                    {**commit, "problems": problems, "found": time.time()}).encode(), self.options)
                storage.remove(storage.join(url, MARKER), storage_options=self.options)
            barrier()
        return None

    # ---- saving ----------------------------------------------------------------------------------
    def save(self, step: int, engine, ema, trainer_state: dict[str, Any], config_yaml: str,
             model_cfg: Any, final: bool = False) -> str | None:
        """Write checkpoint ``step`` from every rank and commit it; returns its URL, or None if an
        upload failed (nothing is committed; training goes on and the next save tries again).
        Raises :class:`CheckpointError` once uploads have failed for ``upload_budget_s`` (at
        once for a ``final`` save that used up the budget retrying)."""
        from lamamba.models.io import save_model_weights

        self._check_lease()
        url = storage.join(self.url, step_dir_name(step))
        committed, error = False, None
        if self.world.is_main:
            def clear() -> None:
                nonlocal committed
                committed = storage.exists(storage.join(url, MARKER), self.options)
                if not committed and storage.exists(url, self.options):
                    storage.remove(url, recursive=True, storage_options=self.options)  # an interrupted earlier save
            error = self._retrying(clear, f"clearing {url}", final)
        committed, error = broadcast_object((committed, error))
        if committed:
            raise CheckpointError(f"refusing to overwrite the committed checkpoint {url}: committed checkpoints "
                                  "are only removed by the keep_last policy")
        if error:
            return self._failed(url, error, final)
        local = os.path.join(self.staging, f"rank_{self.world.rank:05d}", step_dir_name(step)) if self.remote else url
        if self.remote and os.path.isdir(local):
            shutil.rmtree(local)  # this run's own staging, left by a failed save
        barrier()
        os.makedirs(os.path.join(local, DS_TAG), exist_ok=True)
        engine.save_checkpoint(local, tag=DS_TAG, save_latest=False)
        if self.world.is_main or self.remote:
            for script in glob.glob(os.path.join(local, "*.py")):  # DeepSpeed's zero_to_fp32 copies: no code
                os.remove(script)
        if self.consolidated:
            self._save_consolidated(ema.layout, os.path.join(local, CONSOLIDATED_FILE))
        os.makedirs(os.path.join(local, "rng"), exist_ok=True)
        with open(os.path.join(local, "rng", f"rank_{self.world.rank:05d}.json"), "w") as f:
            json.dump(_rng_state(), f)
        averages = [ema.state_dict(decay) for decay in ema.decays]  # collective; full on rank 0 only
        if self.world.is_main:
            for i, (decay, average) in enumerate(zip(ema.decays, averages)):
                save_model_weights(os.path.join(local, ema_file_name(decay, i == 0)), average,
                                   model_cfg, metadata={"ema_decay": f"{decay:g}", "step": str(step)})
            with open(os.path.join(local, STATE_FILE), "w") as f:
                json.dump(trainer_state, f, indent=1, sort_keys=True)
            with open(os.path.join(local, "config.yaml"), "w") as f:
                f.write(config_yaml)
        if self.remote:  # each rank hashes and uploads its own files
            names = _local_files(local)
            records = _records(local, names)
            error = self._upload(local, url, names, final)
        else:  # one shared directory: every rank hashes a share of its files
            barrier()
            names = broadcast_object(_local_files(local) if self.world.is_main else None)
            records = _records(local, names[self.world.rank::self.world.world_size])
            error = None
        gathered = all_gather_object((records, error))
        errors = [e for _, e in gathered if e]
        if not errors and self.world.is_main:
            files = {name: rec for recs, _ in gathered for name, rec in recs.items()}
            marker = {"step": step, "world_size": self.world.world_size, "time": time.time(), "files": files}
            error = self._retrying(lambda: storage.write_bytes(storage.join(url, MARKER), json.dumps(
                marker, indent=0, sort_keys=True).encode(), self.options), f"writing {MARKER}", final)
            errors = [error] if error else []
        errors = broadcast_object(errors)
        if self.remote:
            shutil.rmtree(local, ignore_errors=True)
        if errors:
            return self._failed(url, errors[0], final)
        self.outage_since = None
        self.last_committed = url
        if self.world.is_main:
            try:
                self._prune()
            except Exception as err:  # the checkpoint is committed; the next commit prunes again
                self.warn(f"could not prune old checkpoints in {self.url}: {type(err).__name__}: {err}")
        return url

    def _save_consolidated(self, layout: MasterLayout, path: str) -> None:
        """Gather full fp32 weights and Adam moments onto rank 0 (one gather per group, kind and
        chunk: no collective per parameter) and write them there."""
        from safetensors.torch import save_file

        layout.link_optimizer_state()
        tensors: dict[str, torch.Tensor] = {}
        for key in ("param", *MOMENTS):
            shares = layout.shares() if key == "param" else layout.moment_shares(key)
            tensors.update({f"{key}/{name}": t for name, t in layout.gather(shares).items()})
        if self.world.is_main:
            save_file(tensors, path, metadata={"optimizer_step": repr(layout.step_count())})

    def _retrying(self, action: Callable[[], Any], what: str, final: bool) -> str | None:
        """Run ``action`` with exponential backoff; None when it succeeded, else the last error.
        A periodic save tries UPLOAD_ATTEMPTS times; a final one retries until the outage
        budget (counted from the first failed save of this outage) is spent."""
        deadline = (self.outage_since or time.time()) + self.upload_budget_s
        for attempt in itertools.count(1):
            try:
                action()
                return None
            except Exception as err:  # network and S3 errors come in many types (botocore, aiohttp, OSError)
                error = f"{what}: {type(err).__name__}: {err}"
                self.outage_since = self.outage_since or time.time()
            wait = min(RETRY_BACKOFF_S * 2 ** (attempt - 1), 30.0, deadline - time.time())
            if wait <= 0 or (not final and attempt >= UPLOAD_ATTEMPTS):
                return error
            self.warn(f"{error}; retry {attempt} in {wait:.1f} s")
            time.sleep(wait)

    def _upload(self, local: str, url: str, names: list[str], final: bool) -> str | None:
        """Upload ``names`` from ``local`` to ``url`` in parallel (one fsspec put of the folder)."""
        fs, root = storage.filesystem(url, self.options)
        lpaths = [os.path.join(local, *name.split("/")) for name in names]
        rpaths = [f"{root.rstrip('/')}/{name}" for name in names]
        return self._retrying(lambda: fs.put(lpaths, rpaths), f"uploading {len(names)} files to {url}", final)

    def _failed(self, url: str, error: str, final: bool) -> None:
        """A save that did not commit: go on while the outage budget lasts, else stop. Rank 0's
        clock decides for every rank."""
        self.outage_since = self.outage_since or time.time()
        spent = broadcast_object(time.time() - self.outage_since)
        if final or spent >= self.upload_budget_s:
            raise CheckpointError(f"checkpoint {url} not committed: {error}; checkpoint uploads have failed for "
                                  f"{spent:.0f} s (checkpoint.upload_budget_s={self.upload_budget_s:g}); the "
                                  f"newest committed checkpoint is {self.last_committed or 'none'}")
        if self.world.is_main:
            self.warn(f"checkpoint {url} not committed: {error}; training goes on and the next save retries "
                      f"(failing for {spent:.0f} s of checkpoint.upload_budget_s={self.upload_budget_s:g}; "
                      f"newest committed: {self.last_committed or 'none'})")

    def _prune(self) -> None:
        """Keep the newest ``keep_last`` committed checkpoints; drop older ones and stale partials."""
        scan = self.scan()
        doomed = scan.complete[:-self.keep_last] + [s for s in scan.partial if scan.latest and s < scan.latest]
        for step in doomed:
            storage.remove(storage.join(self.url, step_dir_name(step)), recursive=True, storage_options=self.options)

    # ---- loading ---------------------------------------------------------------------------------
    def read_state(self, step: int) -> dict[str, Any]:
        """The trainer state (step, samples consumed, config, ...) of checkpoint ``step``."""
        url = storage.join(self.url, step_dir_name(step), STATE_FILE)
        try:
            return json.loads(storage.read_bytes(url, self.options))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"checkpoint file {url} is not valid JSON ({err})") from None

    def _fetch(self, step: int) -> str:
        """A local directory holding checkpoint ``step`` (downloaded once per node if remote,
        in parallel, only the files its commit lists, each kept inside the staging folder)."""
        url = storage.join(self.url, step_dir_name(step))
        if not self.remote:
            return url
        local = os.path.join(self.staging, "download", step_dir_name(step))
        if self.world.local_rank == 0:
            shutil.rmtree(local, ignore_errors=True)
            fs, root = storage.filesystem(url, self.options)
            root = root.rstrip("/")
            names = sorted(read_commit(url, self.options).get("files") or
                           [key[len(root) + 1:] for key in fs.find(root) if key.startswith(root + "/")])
            lpaths = [storage.safe_join(local, name, what=f"object key under {url}") for name in names]
            for path in lpaths:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            fs.get([f"{root}/{name}" for name in names], lpaths)
        barrier()
        return local

    def load(self, step: int, engine, ema) -> dict[str, Any]:
        """Restore engine, EMA and RNG from checkpoint ``step``; returns the trainer state. No file
        can run code: JSON, safetensors, and DeepSpeed's .pt files through the allow-listed loader."""
        local = self._fetch(step)
        state = _read_json(os.path.join(local, STATE_FILE))
        if state["world_size"] == self.world.world_size:
            safe_load.install(engine)
            engine.load_checkpoint(local, tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True)
            rng = os.path.join(local, "rng", f"rank_{self.world.rank:05d}.json")
            if not os.path.isfile(rng) and os.path.isfile(rng[:-len(".json")] + ".pt"):
                raise CheckpointError(f"checkpoint {step_dir_name(step)} keeps its RNG states as pickles (rng/*.pt, "
                                      "written by an older lamamba), which are not loaded since a pickle can run "
                                      "code; resume it with another number of ranks (consolidated weights) or "
                                      "start a new run")
            _set_rng_state(_read_json(rng))
        else:
            path = os.path.join(local, CONSOLIDATED_FILE)
            if not os.path.isfile(path):
                raise CheckpointError(
                    f"checkpoint {step_dir_name(step)} was written by {state['world_size']} ranks without "
                    f"{CONSOLIDATED_FILE}; resume it with {state['world_size']} ranks")
            load_consolidated(engine, ema.layout, path)
            engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
            engine.global_steps = state["step"]
            engine.global_samples = state["samples_consumed"]
        for i, decay in enumerate(ema.decays):  # every rank takes its shares of the full averages
            path = os.path.join(local, ema_file_name(decay, i == 0))
            if not os.path.isfile(path):
                raise CheckpointError(f"checkpoint {step_dir_name(step)} has no EMA for decay {decay:g} ({path})")
            ema.load_state_dict(decay, _load_safetensors(path))
        if self.remote:
            barrier()
            if self.world.local_rank == 0:
                shutil.rmtree(local, ignore_errors=True)
        return state
