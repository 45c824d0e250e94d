"""The device policy seen from `lamamba train`: a job that expects GPUs and finds CUDA unusable
stops at once with the reason; a CPU fallback is said in the log and recorded in device.json."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _train(tmp_path, manifest, *overrides, extra_env=None):
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           **(extra_env or {})}
    cmd = [sys.executable, "-m", "launcher.cli", "train", str(REPO / "configs/train/tiny_digits.yaml"),
           f"run_dir={tmp_path / 'run'}", f"data.manifest={manifest}", "max_steps=1", "monitor.sample_every=0",
           *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_train_on_a_gpu_node_without_cuda_stops_at_once(tmp_path, digits_manifest):
    """Before: CUDA unavailable meant CPU + gloo whatever the job expected."""
    proc = _train(tmp_path, digits_manifest, extra_env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lamamba train: CUDA_VISIBLE_DEVICES=0,1 gives this process GPUs, but CUDA is unavailable")
    assert "CPU-only build" in last
    assert not (tmp_path / "run" / "checkpoints").exists()
    proc = _train(tmp_path, digits_manifest, "engine.device=cuda")
    assert proc.returncode == 1 and "device='cuda' was asked for" in proc.stderr


def test_cpu_fallback_is_said_and_recorded(tmp_path, digits_manifest):
    proc = _train(tmp_path, digits_manifest)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING training on cpu: no GPU: torch" in proc.stderr
    record = json.loads((tmp_path / "run" / "device.json").read_text())
    assert record["device"] == "cpu" and record["fallback"] is True and record["world_size"] == 1
    assert json.loads((tmp_path / "run" / "scan_backend.json").read_text())["backend"] == "torch"
