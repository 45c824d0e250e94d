"""What the interpreter cannot show: the kernels compile for real GPU architectures, and ptxas keeps
their tiles in registers (no local-memory spills). Compiled ahead of time, no GPU needed, in a
subprocess (this directory's tests run with TRITON_INTERPRET=1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~40 s on the loaded 2-core machine, mostly the subprocess's imports
def test_kernels_compile_without_spills(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests/ops/triton_compile_worker.py"), "bf16", "90", "80"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    usage = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {(u["arch"], u["kernel"], u["shape"]) for u in usage} == {
        (a, k, s) for a in (90, 80) for k in ("_scan_fwd_kernel", "_scan_bwd_kernel") for s in ("S", "S-132", "XL")}
    for u in usage:  # H100 / H200 (sm_90) and A100 (sm_80)
        assert u["LOCAL"] == 0 and u["REG"] <= 255, u
