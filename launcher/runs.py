"""Runs: the id and directory fixed at submission, and what is recorded in it.

A run is named by its job, its config file and the hash of its identity (the settings that make
the run what it is, :mod:`lamamba.run_identity`), so submitting the same command twice names the
same run and the job resumes in the same directory instead of starting over, also after a change
of what may change as a run continues (max_steps, cadences, workers) or of its credentials.
Everything the launcher knows about a run lives under ``<run_dir>/launch/``::

    launch/config.yaml     the resolved config, as validated at submission, without credentials
    launch/config_hash     its hash
    launch/run.json        the record: job, backend, run dir, and the backend's handle
    launch/<artifact>      what was submitted (job.sbatch, ray_job.json, rayjob.yaml, command.sh)
    launch/outcome.json    written by the job's entrypoint when it ends (state, return code)
    launch/FINISHED        marker: the job completed successfully
    logs/                  logs of the launcher side (per node and per rank where the backend has them)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamamba import storage
from lamamba.run_identity import identity_hash
from launcher.errors import LaunchError

# The states every backend reports (the Ray job client's names).
PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED, UNKNOWN = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED", "UNKNOWN")
ACTIVE_STATES = (PENDING, RUNNING)

DEFAULT_RUNS_ROOT = "runs"
RUNS_ROOT_ENV = "LAMAMBA_RUNS_ROOT"


def default_runs_root() -> str:
    return os.environ.get(RUNS_ROOT_ENV, DEFAULT_RUNS_ROOT)


def _slug(text: str, max_len: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].strip("-") or "run"


def make_run_id(job: str, config_path: str | None, cfg: Any) -> str:
    """``<job>-<config file stem>-<8 hex of the config hash>``, e.g. ``train-s-256-3f2a9c1d``.

    The hash is :func:`lamamba.run_identity.identity_hash`: it leaves out ``run_dir``, credentials
    and storage options, and the keys a run may change as it continues. The id is a DNS-1123 label
    of at most 42 characters (lowercase, digits, '-'), short enough for the names KubeRay derives
    from a RayJob's.
    """
    return f"{run_id_prefix(job, config_path)}{identity_hash(cfg)[:8]}"


def run_id_prefix(job: str, config_path: str | None) -> str:
    """``<job>-<config file stem>-``: what the derived ids of one config file share."""
    stem = Path(config_path).stem if config_path else "defaults"
    return f"{job}-{_slug(stem, 24)}-"


def validate_run_id(run_id: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", run_id):
        raise ValueError(f"run id {run_id!r} must be lowercase letters, digits and '-' (at most 63)")
    return run_id


def resolve_run_dir(runs_root: str, run_id: str) -> str:
    """The run directory: a URL under a remote root, an absolute path under a local one."""
    run_dir = storage.join(runs_root, run_id)
    return run_dir if not storage.is_local(run_dir) else os.path.abspath(run_dir.removeprefix("file://"))


@dataclass(frozen=True)
class RunPaths:
    """The files of one run directory (local path or URL)."""

    run_dir: str

    def launch(self, name: str) -> str:
        return storage.join(self.run_dir, "launch", name)

    @property
    def config(self) -> str:
        return self.launch("config.yaml")

    @property
    def config_hash(self) -> str:
        return self.launch("config_hash")

    @property
    def record(self) -> str:
        return self.launch("run.json")

    @property
    def outcome(self) -> str:
        return self.launch("outcome.json")

    @property
    def finished(self) -> str:
        return self.launch("FINISHED")

    @property
    def logs(self) -> str:
        return storage.join(self.run_dir, "logs")


@dataclass
class RunRecord:
    """What the launcher recorded when it submitted a run (``launch/run.json``)."""

    run_id: str
    job: str
    backend: str
    run_dir: str
    config_hash: str
    nodes: int
    gpus_per_node: int
    submissions: int = 1
    submitted_at: str = ""
    handle: dict[str, Any] = field(default_factory=dict)  # pid / SLURM job id / Ray submission id

    def save(self) -> None:
        data = json.dumps(dataclasses.asdict(self), indent=2).encode()
        storage.write_bytes(RunPaths(self.run_dir).record, data)

    @classmethod
    def load(cls, run_dir: str) -> "RunRecord":
        return cls(**json.loads(storage.read_bytes(RunPaths(run_dir).record)))


class RunNotFound(LaunchError):
    """No run record under the given id or directory."""


def find_run(run_id_or_dir: str, runs_root: str | None = None) -> RunRecord:
    """The record of a run named by its id (under ``runs_root``) or by its run directory."""
    candidates = [resolve_run_dir(runs_root or default_runs_root(), run_id_or_dir), run_id_or_dir]
    for run_dir in candidates:
        if storage.exists(RunPaths(run_dir).record):
            return RunRecord.load(run_dir)
    raise RunNotFound(f"no run {run_id_or_dir!r} under {runs_root or default_runs_root()} "
                      f"(looked for {RunPaths(candidates[0]).record})")


def list_runs(runs_root: str | None = None) -> list[RunRecord]:
    """Every run recorded under ``runs_root``, oldest submission first."""
    root = runs_root or default_runs_root()
    records = []
    for name in storage.listdir(root):
        run_dir = resolve_run_dir(root, name)
        if storage.exists(RunPaths(run_dir).record):
            records.append(RunRecord.load(run_dir))
    return sorted(records, key=lambda r: r.submitted_at)


def write_outcome(run_dir: str, state: str, returncode: int, attempts: int) -> None:
    """Record how the job ended; a success also drops the FINISHED marker (checked by requeue traps)."""
    paths = RunPaths(run_dir)
    outcome = {"state": state, "returncode": returncode, "attempts": attempts,
               "ended_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_bytes(paths.outcome, json.dumps(outcome).encode())
    if state == SUCCEEDED:
        storage.write_bytes(paths.finished, b"")


def read_outcome(run_dir: str) -> dict[str, Any] | None:
    paths = RunPaths(run_dir)
    if not storage.exists(paths.outcome):
        return None
    return json.loads(storage.read_bytes(paths.outcome))


def clear_outcome(run_dir: str) -> None:
    """Forget the previous submission's ending before a new one starts in the same run dir."""
    paths = RunPaths(run_dir)
    for url in (paths.outcome, paths.finished):
        if storage.exists(url):
            storage.remove(url)
