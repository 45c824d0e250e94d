"""The local backend: the run's entrypoint as a detached process on this machine.

The process (and everything it starts: torchrun and its ranks, a local Ray) runs in its own
session, so cancel can stop the whole group; its output is appended to ``<run_dir>/logs/local.log``.
The record holds the pid and the process start time (from /proc: Linux), so a recycled pid is
never mistaken for the run.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lamamba import storage
from launcher import runs
from launcher.backends import Submission, read_text
from launcher.errors import LaunchError

# The project root, so `python -m launcher.entrypoint` imports even where lamamba is not installed.
PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
STOP_GRACE_S = 30.0  # SIGTERM first (training checkpoints on it), SIGKILL after this


def _proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(handle: dict[str, Any]) -> bool:
    start_time = _proc_start_time(handle["pid"])
    return start_time is not None and start_time == handle["start_time"]


class LocalBackend:
    name = "local"
    artifact = "command.sh"

    def _command(self, sub: Submission) -> list[str]:
        return [sub.python, *sub.entrypoint_args("standalone")]

    def render(self, sub: Submission) -> str:
        if not storage.is_local(sub.run_dir):
            raise LaunchError(f"the local backend needs a local run dir, got {sub.run_dir}")
        if sub.nodes != 1:
            raise LaunchError("the local backend runs on one node: use --nodes 1 (or --backend slurm/ray)")
        return (f"#!/bin/sh\n# lamamba run {sub.run_id}: {sub.job} on this machine\n"
                f"cd {shlex.quote(os.getcwd())}\n"
                f"export PYTHONPATH={shlex.quote(PROJECT_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                f"exec {shlex.join(self._command(sub))}\n")

    def submit(self, sub: Submission, artifact_path: str) -> dict[str, Any]:
        log_path = storage.join(sub.run_dir, "logs", "local.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        with open(log_path, "ab") as log:
            log.write(f"[lamamba] submission {sub.submissions} of run {sub.run_id} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log.flush()
            proc = subprocess.Popen(["/bin/sh", artifact_path], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        start_time = None
        for _ in range(100):  # /proc is populated as soon as the fork returns; this is a safety net
            start_time = _proc_start_time(proc.pid)
            if start_time is not None:
                break
            time.sleep(0.01)
        return {"pid": proc.pid, "start_time": start_time, "log": log_path}

    def status(self, record: runs.RunRecord) -> str:
        outcome = runs.read_outcome(record.run_dir)
        if outcome is not None:
            return outcome["state"]
        if _alive(record.handle):
            return runs.RUNNING
        return runs.FAILED  # ended without recording an outcome (killed)

    def logs(self, record: runs.RunRecord, rank: int | None = None) -> str:
        if rank is None:
            return read_text(record.handle["log"])
        return rank_log(record, rank)

    def cancel(self, record: runs.RunRecord) -> None:
        handle = record.handle
        if not _alive(handle):
            return
        pgid = handle["pid"]  # the session leader: its group holds every process of the run
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while _alive(handle) and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            os.killpg(pgid, signal.SIGKILL)  # stragglers (ranks that ignored SIGTERM)
        except ProcessLookupError:
            pass
        if runs.read_outcome(record.run_dir) is None:
            runs.write_outcome(record.run_dir, runs.STOPPED, -signal.SIGTERM, 0)


def rank_log(record: runs.RunRecord, rank: int) -> str:
    """One training rank's output from torchrun's per-rank files (newest attempt), local run dirs."""
    if rank < 0 or rank >= record.nodes * record.gpus_per_node:
        raise LaunchError(f"rank {rank} is outside [0, {record.nodes * record.gpus_per_node}) for run {record.run_id}")
    node, local_rank = divmod(rank, record.gpus_per_node)
    node_dir = Path(runs.RunPaths(record.run_dir).logs) / "ranks" / f"node{node}"
    files = sorted(node_dir.glob(f"*/attempt_*/{local_rank}/stdout.log"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise LaunchError(f"no log of rank {rank} under {node_dir} (only training writes per-rank logs)")
    stderr = files[-1].with_name("stderr.log")
    return files[-1].read_text(errors="replace") + (stderr.read_text(errors="replace") if stderr.exists() else "")
