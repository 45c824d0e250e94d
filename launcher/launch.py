"""Submitting a run and following it: what ``lamamba submit`` and ``lamamba logs --follow`` do.

Submission validates the job's config, fixes the run id and run dir, saves the resolved config
(without credentials) and its hash under ``<run_dir>/launch/``, renders the backend's artifact,
submits it and records the handle. Submitting a run that already exists continues it in the same
run dir (the job resumes); submitting one that is still pending or running is refused. Changing
what makes a run what it is (:mod:`lamamba.run_identity`) is refused unless a new run is asked
for: the same config file with another model, data, batch, seed or optimiser is not silently a
second run beside the first.

Credentials in the config (``storage_options`` keys, secrets) never reach a file: the job's
processes get them through their environment (:data:`lamamba.config.SECRETS_ENV`), which the
local and SLURM backends pass on; Ray and KubeRay jobs take them from the cluster's environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from typing import Any, TextIO

import yaml

from lamamba import storage
from lamamba.config import SECRETS_ENV, config_hash, secret_values, to_dict, without_secrets
from lamamba.run_identity import identity_changes
from launcher import runs
from launcher.backends import Backend, Submission, get_backend
from launcher.errors import LaunchError
from launcher.jobs import get_job, load_job_config


@dataclasses.dataclass(frozen=True)
class Submitted:
    record: runs.RunRecord | None  # None for a dry run
    artifact: str


def submit_run(job: str, config_path: str | None, overrides: list[str], backend_name: str, *,
               nodes: int = 1, gpus_per_node: int = 1, gpus: bool = True, max_restarts: int = 0,
               python: str = sys.executable,
               runs_root: str | None = None, run_id: str | None = None, options: dict[str, Any] | None = None,
               dry_run: bool = False, new_run: bool = False) -> Submitted:
    """Validate, fix the run dir, render and (unless ``dry_run``) submit one run.

    ``new_run``: the settings that make the run differ from the latest run of the same config
    file, and a new run beside it is what is wanted (else that is refused, naming the keys).
    """
    spec = get_job(job)
    if nodes < 1 or gpus_per_node < (1 if spec.distributed else 0) or max_restarts < 0:
        raise LaunchError(f"need --nodes >= 1, --gpus-per-node >= {1 if spec.distributed else 0} and "
                          f"--max-restarts >= 0 (got {nodes}, {gpus_per_node}, {max_restarts})")
    backend = get_backend(backend_name)
    cfg = load_job_config(job, config_path, overrides)
    root = runs_root or runs.default_runs_root()
    try:
        run_id = runs.validate_run_id(run_id) if run_id else runs.make_run_id(job, config_path, cfg)
    except ValueError as err:
        raise LaunchError(str(err)) from None
    run_dir = runs.resolve_run_dir(root, run_id)
    cfg = dataclasses.replace(cfg, run_dir=run_dir)
    saved = without_secrets(to_dict(cfg))
    secrets = secret_values(to_dict(cfg))
    if secrets and backend.name not in ("local", "slurm"):
        raise LaunchError(f"credentials in the config ({', '.join(sorted(secrets))}) are not sent to a "
                          f"{backend.name} cluster: set them in its environment (AWS_* variables; --secret on "
                          f"kuberay) and leave them out of the config")
    paths = runs.RunPaths(run_dir)

    previous = runs.RunRecord.load(run_dir) if storage.exists(paths.record) else None
    if previous is not None and previous.job != job:
        raise LaunchError(f"run dir {run_dir} belongs to a {previous.job} run; choose another --run-id")
    if previous is not None:
        _check_continues(run_id, run_dir, saved, type(cfg), new_run)
    elif not new_run:
        _check_no_sibling(job, config_path, root, run_id, saved, type(cfg))
    sub = Submission(job=job, run_id=run_id, run_dir=run_dir, nodes=nodes, gpus_per_node=gpus_per_node,
                     gpus=gpus, max_restarts=max_restarts, python=python,
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

    digest = config_hash(cfg)  # of the redacted config
    storage.write_bytes(paths.config, yaml.safe_dump(saved, sort_keys=False).encode())
    storage.write_bytes(paths.config_hash, (digest + "\n").encode())
    artifact_path = paths.launch(backend.artifact)
    storage.write_bytes(artifact_path, artifact.encode())
    storage.makedirs(paths.logs)
    with _secrets_in_environment(type(cfg).__name__, secrets):
        handle = backend.submit(sub, artifact_path)
    record = runs.RunRecord(run_id=run_id, job=job, backend=backend.name, run_dir=run_dir,
                            config_hash=digest, nodes=nodes, gpus_per_node=gpus_per_node,
                            submissions=sub.submissions, handle=handle,
                            submitted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record.save()
    return Submitted(record, artifact)


def _saved_config(run_dir: str) -> dict[str, Any]:
    url = runs.RunPaths(run_dir).config
    return yaml.safe_load(storage.read_bytes(url)) or {} if storage.exists(url) else {}


def _check_continues(run_id: str, run_dir: str, saved: dict[str, Any], cfg_class: type, new_run: bool) -> None:
    """Submitting an existing run again continues it: only with the same identity."""
    differ, _ = identity_changes(_saved_config(run_dir), saved, cfg_class)
    if differ:
        raise LaunchError(f"run {run_id} was submitted with other {', '.join(differ)}; these change the run, "
                          f"so it cannot continue in {run_dir}: restore them, or choose another --run-id")
    if new_run:
        raise LaunchError(f"run {run_id} already exists with these settings and would continue; for a "
                          f"separate run give it another --run-id")


def _check_no_sibling(job: str, config_path: str | None, root: str, run_id: str, saved: dict[str, Any],
                      cfg_class: type) -> None:
    """A new derived id: refused when the same config file already made a run with other identity
    keys (the user changed what makes the run, perhaps meaning to continue it)."""
    prefix = runs.run_id_prefix(job, config_path)
    if not run_id.startswith(prefix):
        return
    siblings = [r for r in runs.list_runs(root)
                if r.job == job and re.fullmatch(re.escape(prefix) + "[0-9a-f]{8}", r.run_id)]
    if not siblings:
        return
    latest = siblings[-1]
    differ, _ = identity_changes(_saved_config(latest.run_dir), saved, cfg_class)
    if differ:
        raise LaunchError(f"{latest.run_id} was made from this config with other {', '.join(differ)}; these "
                          f"change the run, so it cannot continue: restore them to continue it, or pass "
                          f"--new-run to start {run_id} beside it")


@contextlib.contextmanager
def _secrets_in_environment(cfg_class_name: str, secrets: dict[str, Any]):
    """While a backend submits: the job's credentials in its environment, never in a file."""
    if not secrets:
        yield
        return
    before = os.environ.get(SECRETS_ENV)
    os.environ[SECRETS_ENV] = json.dumps({cfg_class_name: secrets})
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SECRETS_ENV, None)
        else:
            os.environ[SECRETS_ENV] = before


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
