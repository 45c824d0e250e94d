"""benchmarks/gpu_acceptance.sh in its CPU form (``--cpu --quick``), so the GPU acceptance run
cannot rot between the times a GPU is at hand: the `cuda` tests, the training sweep and the
sampling benchmark all run, and the JSON and markdown report are written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_acceptance_cpu_quick_form(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_acceptance.sh"), "--cpu", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "acceptance.json").read_text())
    assert report["tests"]["ran"] and report["tests"]["failures"] == 0 and report["tests"]["tests"] >= 5
    trained = [r for r in report["training"] if not r.get("failed")]
    assert {(r["ckpt"], r["precision"]) for r in trained} == {("none", "bf16-autocast"), ("all", "bf16-autocast"),
                                                               ("none", "bf16")}
    assert all(r["images_per_s"] > 0 for r in trained)
    assert report["sampling"]["steps"] == 250 and report["sampling"]["images_per_s"] > 0
    assert "## Training" in (tmp_path / "acceptance.md").read_text()
    triton_rows = json.loads((tmp_path / "triton_scan.json").read_text())["rows"]
    assert triton_rows and all(r["fused_ms"] > 0 and r["vs_torch_rel_err"] < 2e-2 for r in triton_rows)
