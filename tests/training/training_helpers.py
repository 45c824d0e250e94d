"""Launching real multi-rank training runs (torchrun + DeepSpeed on gloo) for the training tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
CONFIG = REPO / "configs" / "train" / "tiny_digits.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run_dir: Path, manifest: str, nproc: int, *overrides: str) -> subprocess.Popen:
    """Start `torchrun ... -m launcher.cli train tiny_digits.yaml` (nproc > 1) or the plain
    `python -m launcher.cli train ...` (nproc = 1), writing its output to run_dir/launch.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "LAMAMBA_DATA_CACHE": str(run_dir.parent / "latent-cache")}
    if nproc > 1:
        cmd = [str(TORCHRUN), f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    else:
        cmd = [sys.executable]
    cmd += ["-m", "launcher.cli", "train", str(CONFIG), f"run_dir={run_dir}", f"data.manifest={manifest}", *overrides]
    log = open(run_dir / "launch.log", "a")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def output(run_dir: Path) -> str:
    return (run_dir / "launch.log").read_text()


def wait(proc: subprocess.Popen, run_dir: Path, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"run did not finish in {timeout}s:\n{output(run_dir)[-3000:]}") from None


def run(run_dir: Path, manifest: str, nproc: int, *overrides: str) -> None:
    """Launch and wait; the run must exit 0."""
    rc = wait(launch(run_dir, manifest, nproc, *overrides), run_dir)
    assert rc == 0, output(run_dir)[-3000:]


def wait_for(predicate, proc: subprocess.Popen, run_dir: Path, timeout: float = 240, what: str = "") -> None:
    """Poll until ``predicate()`` holds; fail early if the run exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {what}:\n{output(run_dir)[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{output(run_dir)[-3000:]}")
        time.sleep(0.05)


def rank_pids(proc: subprocess.Popen) -> dict[int, int]:
    """The worker processes torchrun started, by their RANK."""
    pids = {}
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for item in env:
            if item.startswith(b"RANK="):
                pids[int(item[5:])] = pid
    return pids


def metrics(run_dir: Path) -> list[dict]:
    """Every metrics.jsonl record, in order (a resumed run appends to the same file)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in metrics(run_dir)}


def committed(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    return sorted(int(p.name[5:]) for p in ckpts.glob("step_*") if (p / "COMMITTED").exists()) if ckpts.exists() else []
