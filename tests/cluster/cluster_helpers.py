"""Shared pieces of the cluster tests: the job environment, the tiny training run they all make,
and the comparison of its final weights."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The tiny digits run of the cluster tests, with a checkpoint every step: a test that interrupts
# it after the first commit still has 7 steps to go, which even a fast machine does not finish
# before the interruption lands.
STEPS = 8
TRAIN_OVERRIDES = [f"max_steps={STEPS}", "monitor.sample_every=0", "engine.activation_checkpointing=none",
                   "checkpoint.every_steps=1", "checkpoint.keep_last=10"]
TRAIN_CONFIG = str(REPO / "configs" / "train" / "tiny_digits.yaml")


def job_env(**extra: str) -> dict:
    """The environment of the processes the cluster runs: this checkout first on the path, one
    thread per process, this interpreter's tools first on PATH (as a cluster image would have)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def final_weights(run_dir: Path, step: int = STEPS) -> dict:
    """The model and EMA tensors of a run's checkpoint at ``step``."""
    from safetensors.torch import load_file

    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    return {name: load_file(ckpt / name) for name in ("consolidated.safetensors", "ema.safetensors")}


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}:{key} differs"
