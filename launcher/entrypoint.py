"""The process every backend starts for a run: ``python -m launcher.entrypoint JOB --run-dir DIR``.

It reads the config the launcher saved in ``<run_dir>/launch/config.yaml`` (fetched to a local
file when the run dir is remote), starts the job with ``run_dir`` set, and records the outcome in
``<run_dir>/launch/outcome.json`` (plus the ``FINISHED`` marker on success). Training runs one
process per GPU under torchrun, its rendezvous chosen by ``--rendezvous``:

- ``standalone``: all ranks on this machine (the local backend);
- ``slurm``: this process is one node task of an sbatch job; node rank, master host and port
  come from the SLURM environment (:mod:`launcher.slurm_env`);
- ``ray``: this process is a Ray job's driver; one torchrun per node is placed on the cluster
  (:mod:`launcher.ray_torchrun`).

A failed attempt is started again, up to ``--max-restarts`` times; the jobs resume by
themselves (training from its newest committed checkpoint, encode and sample by skipping
finished shards), so a restart loses at most the work since the last checkpoint. SIGTERM (a
cancel) stops the job and is recorded as STOPPED, without a restart; a job still running
``--stop-grace`` seconds after the signal is killed, so a cancel never leaves a process behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from lamamba import storage
from launcher import runs
from launcher.jobs import JOBS, job_command
from launcher.ray_torchrun import ray_torchrun_command
from launcher.slurm_env import SlurmEnvError, rendezvous_from_env
from launcher.torchrun import torchrun_prefix


def rank_log_dir(run_dir: str, node_rank: int) -> str:
    """Where torchrun writes the per-rank logs of one node ('' when the run dir is remote)."""
    return storage.join(run_dir, "logs", "ranks", f"node{node_rank}") if storage.is_local(run_dir) else ""


def local_config(run_dir: str) -> str:
    """A local path to the run's saved config (a temp copy when the run dir is a URL)."""
    url = runs.RunPaths(run_dir).config
    if storage.is_local(url):
        return url
    fd, path = tempfile.mkstemp(prefix="lamamba-config-", suffix=".yaml")
    with os.fdopen(fd, "wb") as f:
        f.write(storage.read_bytes(url))
    return path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        found.append(todo.pop(0))
        todo.extend(children.get(found[-1], []))
    return found


def _ignore_preemption_signal() -> None:
    """In the child before exec: SIGUSR1 ignored (kept across exec), so torchrun and other
    processes that do not handle it survive it; the trainer installs its own handler."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class Supervisor:
    """Runs the job command and starts it again after a failure.

    SIGTERM/SIGINT (a cancel) are passed to the job as SIGTERM; it is killed when it outlives
    them by ``stop_grace_s``. SIGUSR1 (a preemption notice: SLURM's signal before the time limit)
    is passed to every process of the job, so the training ranks under torchrun get it directly,
    commit a checkpoint and exit 0; the scheduler decides how long that may take.
    """

    def __init__(self, max_restarts: int, stop_grace_s: float = 60.0):
        self.max_restarts = max_restarts
        self.stop_grace_s = stop_grace_s
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.kill_at = float("inf")

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = True
        if signum == signal.SIGUSR1:
            print("[lamamba] SIGUSR1 (preemption): passing it to the job's processes", flush=True)
            if self.child is not None:
                for pid in [self.child.pid, *descendants(self.child.pid)]:
                    try:
                        os.kill(pid, signal.SIGUSR1)
                    except ProcessLookupError:
                        pass
            return
        self.kill_at = min(self.kill_at, time.monotonic() + self.stop_grace_s)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def _wait(self) -> int:
        """The child's exit code; killed when it outlives a stop signal by the grace period
        (a job blocked in a system call, e.g. connecting to a Ray head that is gone)."""
        while True:
            try:
                return self.child.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if time.monotonic() > self.kill_at:
                    print(f"[lamamba] the job is still running {self.stop_grace_s:.0f} s after the stop "
                          f"signal; killing it", flush=True)
                    self.child.kill()

    def run(self, cmd: list[str]) -> tuple[str, int, int]:
        """Run attempts until one succeeds, a stop is asked, or restarts run out.

        Returns (state, exit code of the last attempt, attempts).
        """
        previous = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
        try:
            return self._attempts(cmd)
        finally:  # a caller in the same process (a test, an embedding tool) gets its handlers back
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _attempts(self, cmd: list[str]) -> tuple[str, int, int]:
        attempt, rc = 0, 1
        while attempt <= self.max_restarts and not self.stopping:
            attempt += 1
            if attempt > 1:
                print(f"[lamamba] attempt {attempt - 1} failed with exit code {rc}; restart "
                      f"{attempt - 1}/{self.max_restarts}, resuming from the last complete checkpoint",
                      flush=True)
            print(f"[lamamba] starting: {subprocess.list2cmdline(cmd)}", flush=True)
            self.child = subprocess.Popen(cmd, preexec_fn=_ignore_preemption_signal)
            if self.stopping:  # the signal came while the child was being started
                self.child.send_signal(signal.SIGTERM)
            rc = self._wait()
            if self.stopping:  # cancelled or preempted: a job that checkpointed and exited 0 has not finished
                return runs.STOPPED, rc, attempt
            if rc == 0:
                return runs.SUCCEEDED, 0, attempt
        return runs.FAILED, rc, attempt


def job_process_command(args: argparse.Namespace, config: str) -> tuple[list[str], int, int]:
    """The command this entrypoint supervises, this node's rank, and how often the entrypoint
    itself restarts it (a multi-node SLURM job restarts as a new job step, on every node at once)."""
    job = job_command(args.job, config, args.run_dir, python=args.python)
    module_args = job[1:]  # "-m launcher.cli JOB CONFIG run_dir=..."
    if not JOBS[args.job].distributed:
        return job, 0, args.max_restarts
    if args.rendezvous == "standalone":
        log_dir = rank_log_dir(args.run_dir, 0)
        return torchrun_prefix(args.python, 1, args.nproc_per_node, log_dir=log_dir) + module_args, 0, args.max_restarts
    if args.rendezvous == "slurm":
        rdzv = rendezvous_from_env(os.environ)
        prefix = torchrun_prefix(args.python, rdzv.nnodes, args.nproc_per_node, rdzv.node_rank, rdzv.master_addr,
                                 rdzv.master_port, rank_log_dir(args.run_dir, rdzv.node_rank), rdzv_id=rdzv.rdzv_id)
        # Several nodes restart together: the batch script starts the whole job step again (fresh
        # processes and a fresh rendezvous on every node), so neither torchrun nor this entrypoint
        # restarts on its own; one node restarts here.
        return prefix + module_args, rdzv.node_rank, 0 if rdzv.nnodes > 1 else args.max_restarts
    gpus_per_node = 0 if args.cpu else args.nproc_per_node
    return (ray_torchrun_command(args.python, args.nnodes, args.nproc_per_node, gpus_per_node, module_args), 0,
            args.max_restarts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launcher.entrypoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", choices=sorted(JOBS))
    p.add_argument("--run-dir", required=True)
    p.add_argument("--rendezvous", choices=("standalone", "slurm", "ray"), default="standalone")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--max-restarts", type=int, default=0)
    p.add_argument("--python", default=sys.executable, help="interpreter of the job processes")
    p.add_argument("--cpu", action="store_true", help="CPU ranks: reserve no GPUs for them (Ray placement)")
    p.add_argument("--stop-grace", type=float, default=60.0,
                   help="seconds a job may take to checkpoint and exit after SIGTERM before it is killed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cmd, node_rank, restarts = job_process_command(args, local_config(args.run_dir))
    except SlurmEnvError as err:
        print(f"[lamamba] cannot join the SLURM job: {err}", file=sys.stderr, flush=True)
        return 2
    if node_rank == 0:  # a requeued or restarted job starts without the last attempt's ending
        runs.clear_outcome(args.run_dir)
    state, rc, attempts = Supervisor(restarts, args.stop_grace).run(cmd)
    print(f"[lamamba] {args.job} {state.lower()} (exit code {rc}, {attempts} attempt(s))", flush=True)
    if node_rank == 0:  # last: whoever sees the outcome also sees the whole log
        runs.write_outcome(args.run_dir, state, rc, attempts)
    return rc


if __name__ == "__main__":
    sys.exit(main())
