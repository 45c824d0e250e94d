"""scripts/test.sh (and so CI, which runs it) fails when pytest collects no tests."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_test_script(*pytest_args):
    # --noconftest: the tests run here need no fixtures, and skipping the torch import keeps it quick
    env = {**os.environ, "LAMAMBA_SKIP_SETUP": "1", "LAMAMBA_VENV": str(Path(sys.executable).parent.parent),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "scripts" / "test.sh"), *pytest_args, "-q", "-p", "no:cacheprovider",
                           "--noconftest"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_no_tests_collected_fails():
    result = run_test_script("tests/docs/test_docs_references.py", "-k", "no_test_has_this_name")
    assert result.returncode == 5, result.stdout + result.stderr
    assert "collected no tests" in result.stderr


def test_ci_exits_with_the_test_script_status():
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1].startswith("exec bash scripts/test.sh")  # exec: CI's status is test.sh's
