"""Shared pieces of the cluster tests: the job environment, the tiny training run they all make,
the lamamba CLI run on a cluster host, bounded waits, and the comparison of final weights."""

import os
import subprocess
import sys
import time
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


class Cli:
    """`python -m launcher.cli ...` run on a host of ``network`` with ``env``; ``submit`` adds the
    backend's flags (``backend_args``) and this runs root."""

    def __init__(self, network, env: dict, runs_root: Path, backend_args: list[str]):
        self.network, self.env, self.runs_root, self.backend_args = network, env, runs_root, backend_args

    def __call__(self, *args: str, host: int = 0, check: bool = True) -> str:
        cmd = self.network.hosts[host].command([sys.executable, "-m", "launcher.cli", *args])
        proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120)
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def submit(self, *args: str, job: str = "train", config: str = TRAIN_CONFIG) -> str:
        """Submit a run; returns its run id."""
        out = self("submit", job, config, *args, *self.backend_args, "--runs-root", str(self.runs_root))
        return out.split()[1]

    def state(self, run_id: str) -> str:
        return self("status", run_id, "--runs-root", str(self.runs_root)).split()[3]

    def logs(self, run_id: str) -> str:
        return self("logs", run_id, "--runs-root", str(self.runs_root))

    def wait_state(self, run_id: str, states: tuple[str, ...], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while (state := self.state(run_id)) not in states:
            assert time.monotonic() < deadline, f"{run_id} still {state}:\n{self.logs(run_id)[-4000:]}"
            time.sleep(1.0)
        return state


def wait_for(predicate, what: str, timeout_s: float, poll_s: float = 0.2):
    """``predicate()``'s first true value, polled until ``timeout_s`` (then the test fails)."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)
    return value


def committed(run_dir: Path) -> list[int]:
    """The steps of a run's committed checkpoints."""
    return sorted(int(p.parent.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*/COMMITTED"))
