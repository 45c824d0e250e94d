"""The local Ray that encode / sample / the quickstart start: no token-authentication warning for a
new user (Ray 2.60 prints one when RAY_AUTH_MODE is unset), nothing written to their home, and an
explicit RAY_AUTH_MODE is left alone."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os, ray
from lamamba.ray_runtime import ray_session
with ray_session(num_cpus=1):
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    print("inside:", os.environ.get("RAY_AUTH_MODE"))
print("after:", os.environ.get("RAY_AUTH_MODE"))
"""


def test_the_local_start_makes_rays_auth_decision_silently(monkeypatch, caplog):
    """Ray's own decision (the function ray.init() calls for a new local cluster, Ray 2.60), run
    where ray_session calls ray.init: no token auth, no warning. It fails if Ray changes it."""
    import ray
    from ray._private.authentication import authentication_token_setup as auth

    from lamamba.ray_runtime import ray_session

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    seen = {}

    def init(**kwargs):
        seen["mode"] = os.environ.get("RAY_AUTH_MODE")
        seen["token_auth"] = auth.enable_token_auth_by_default()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with caplog.at_level(logging.WARNING):
        with ray_session(num_cpus=1):
            pass
    assert seen == {"mode": "disabled", "token_auth": False}
    assert "token authentication" not in caplog.text.lower()
    assert "RAY_AUTH_MODE" not in os.environ  # restored
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice is the user's
    with ray_session(num_cpus=1):
        pass
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


@pytest.mark.slow
def test_a_fresh_machine_sees_no_token_authentication_warning(tmp_path):
    """End to end: a real local Ray in a process whose environment has no RAY_AUTH_MODE and a new
    home (~60 s on the loaded 2-core machine: Ray's start-up)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "inside: disabled" in result.stdout and "after: None" in result.stdout  # restored afterwards
    assert "token authentication" not in output.lower(), output
    assert not (tmp_path / ".ray" / "auth_token").exists()  # no token file left in a new user's home
