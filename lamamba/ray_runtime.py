"""Starting or joining Ray for the jobs that fan out over it (encode, sample)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

# Set by Ray's job supervisor in the environment of a Ray job's driver process.
RAY_JOB_DRIVER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Ray's documented switch for token authentication ("token" or "disabled"). Unset, Ray 2.60's
# ray.init() turns token auth on for a new local cluster, writes ~/.ray/auth_token and warns about
# it (telling the user to set this variable); set, Ray follows it without a word.
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
# What a local Ray started here uses unless the environment says otherwise: the cluster lives for
# one job, on this machine, and is shut down with it (set RAY_AUTH_MODE=token to have Ray's tokens).
LOCAL_AUTH_MODE = "disabled"


def in_ray_job() -> bool:
    """Whether this process is the driver of a Ray job (submitted with `lamamba submit --backend ray`)."""
    return RAY_JOB_DRIVER_ENV in os.environ


@contextlib.contextmanager
def ray_session(address: str = "", num_cpus: int = 0) -> Iterator[None]:
    """Use Ray inside the block, shutting down on exit only what this call started.

    Joins ``address``, or the cluster of the Ray job this process drives; otherwise starts a local
    Ray with ``num_cpus`` (0 = all cores) whose workers import this checkout, installed or not,
    with ``RAY_AUTH_MODE`` = ``LOCAL_AUTH_MODE`` unless the environment sets it (so a new user
    sees no token-authentication warning; the variable is restored afterwards).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    with contextlib.ExitStack() as local_settings:
        if address or in_ray_job():
            ray.init(address=address or None)
        else:
            root = str(Path(__file__).resolve().parents[1])
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            local_settings.enter_context(_env_default(RAY_AUTH_MODE_ENV, LOCAL_AUTH_MODE))
            ray.init(num_cpus=num_cpus or None, runtime_env={"env_vars": {"PYTHONPATH": path}},
                     include_dashboard=False)
        try:
            yield
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _env_default(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment inside the block, unless it is already set."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
