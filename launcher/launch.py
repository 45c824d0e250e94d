"""Submitting a run and following it: what ``lamamba submit`` and ``lamamba logs --follow`` do.

Submission validates the job's config, fixes the run id and run dir, saves the resolved config
and its hash under ``<run_dir>/launch/``, renders the backend's artifact, submits it and records
the handle. Submitting a run that already exists continues it in the same run dir (the job
resumes); submitting one that is still pending or running is refused.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, TextIO

import yaml

from lamamba import storage
from lamamba.config import config_hash, to_dict
from launcher import runs
from launcher.backends import Backend, Submission, get_backend
from launcher.errors import LaunchError
from launcher.jobs import get_job, load_job_config


@dataclasses.dataclass(frozen=True)
class Submitted:
    record: runs.RunRecord | None  # None for a dry run
    artifact: str


def submit_run(job: str, config_path: str | None, overrides: list[str], backend_name: str, *,
               nodes: int = 1, gpus_per_node: int = 1, max_restarts: int = 0, python: str = sys.executable,
               runs_root: str | None = None, run_id: str | None = None, options: dict[str, Any] | None = None,
               dry_run: bool = False) -> Submitted:
    """Validate, fix the run dir, render and (unless ``dry_run``) submit one run."""
    spec = get_job(job)
    if nodes < 1 or gpus_per_node < (1 if spec.distributed else 0) or max_restarts < 0:
        raise LaunchError(f"need --nodes >= 1, --gpus-per-node >= {1 if spec.distributed else 0} and "
                          f"--max-restarts >= 0 (got {nodes}, {gpus_per_node}, {max_restarts})")
    backend = get_backend(backend_name)
    cfg = load_job_config(job, config_path, overrides)
    try:
        run_id = runs.validate_run_id(run_id) if run_id else runs.make_run_id(job, config_path, cfg)
    except ValueError as err:
        raise LaunchError(str(err)) from None
    run_dir = runs.resolve_run_dir(runs_root or runs.default_runs_root(), run_id)
    cfg = dataclasses.replace(cfg, run_dir=run_dir)
    paths = runs.RunPaths(run_dir)

    previous = runs.RunRecord.load(run_dir) if storage.exists(paths.record) else None
    if previous is not None and previous.job != job:
        raise LaunchError(f"run dir {run_dir} belongs to a {previous.job} run; choose another --run-id")
    sub = Submission(job=job, run_id=run_id, run_dir=run_dir, nodes=nodes, gpus_per_node=gpus_per_node,
                     max_restarts=max_restarts, python=python,
                     submissions=(previous.submissions + 1) if previous else 1, options=dict(options or {}))
    artifact = backend.render(sub)
    if dry_run:
        return Submitted(None, artifact)
    if previous is not None:
        state = get_backend(previous.backend).status(previous)
        if state in runs.ACTIVE_STATES:
            raise LaunchError(f"run {run_id} is already {state.lower()} on {previous.backend}; "
                              f"`lamamba cancel {run_id}` first, or wait for it")
        runs.clear_outcome(run_dir)

    storage.write_bytes(paths.config, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    storage.write_bytes(paths.config_hash, (config_hash(cfg) + "\n").encode())
    artifact_path = paths.launch(backend.artifact)
    storage.write_bytes(artifact_path, artifact.encode())
    storage.makedirs(paths.logs)
    handle = backend.submit(sub, artifact_path)
    record = runs.RunRecord(run_id=run_id, job=job, backend=backend.name, run_dir=run_dir,
                            config_hash=config_hash(cfg), nodes=nodes, gpus_per_node=gpus_per_node,
                            submissions=sub.submissions, handle=handle,
                            submitted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record.save()
    return Submitted(record, artifact)


def follow(record: runs.RunRecord, rank: int | None = None, out: TextIO | None = None,
           poll_s: float = 1.0, backend: Backend | None = None) -> str:
    """Print the run's log (to ``out``, default stdout) as it grows until the run ends; returns the final state."""
    backend = backend or get_backend(record.backend)
    out = out or sys.stdout
    shown = 0
    while True:
        state = backend.status(record)  # read before the log, so the last read sees the end
        text = backend.logs(record, rank)
        out.write(text[shown:])
        out.flush()
        shown = len(text)
        if state not in runs.ACTIVE_STATES:
            return state
        time.sleep(poll_s)
