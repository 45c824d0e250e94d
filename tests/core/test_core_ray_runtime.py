"""The local Ray that encode / sample / the quickstart start: no token-authentication warning for a
new user (Ray 2.60 prints one when RAY_AUTH_MODE is unset), nothing written to their home, and an
explicit RAY_AUTH_MODE is left alone."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os, ray
from lamamba.ray_runtime import ray_session
with ray_session(num_cpus=1):
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    print("inside:", os.environ.get("RAY_AUTH_MODE"))
print("after:", os.environ.get("RAY_AUTH_MODE"))
"""


def test_a_fresh_machine_sees_no_token_authentication_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "inside: disabled" in result.stdout and "after: None" in result.stdout  # restored afterwards
    assert "token authentication" not in output.lower(), output
    assert not (tmp_path / ".ray" / "auth_token").exists()  # no token file left in a new user's home
