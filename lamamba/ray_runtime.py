"""Starting or joining Ray for the jobs that fan out over it (encode, sample)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

# Set by Ray's job supervisor in the environment of a Ray job's driver process.
RAY_JOB_DRIVER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    """Whether this process is the driver of a Ray job (submitted with `lamamba submit --backend ray`)."""
    return RAY_JOB_DRIVER_ENV in os.environ


@contextlib.contextmanager
def ray_session(address: str = "", num_cpus: int = 0) -> Iterator[None]:
    """Use Ray inside the block, shutting down on exit only what this call started.

    Joins ``address``, or the cluster of the Ray job this process drives; otherwise starts a local
    Ray with ``num_cpus`` (0 = all cores) whose workers import this checkout, installed or not.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if address or in_ray_job():
        ray.init(address=address or None)
    else:
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=num_cpus or None, runtime_env={"env_vars": {"PYTHONPATH": path}},
                 include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()
