"""The SLURM backend: an sbatch script from cluster/slurm/job.sbatch.j2, watched with squeue/sacct.

The script runs one srun task per node; each task is :mod:`launcher.entrypoint` with the SLURM
rendezvous (torchrun for training). ``--signal=B:USR1@120 --requeue``: the batch script passes
USR1 on to every process of the job step (the training ranks commit a checkpoint and exit), then
requeues the job unless the run has finished; the requeued job resumes in the same run dir.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from typing import Any

from launcher import runs
from launcher.backends import Submission, cluster_file, read_text, render_template, run_tool
from launcher.backends.local import PROJECT_ROOT, rank_log
from launcher.errors import LaunchError
from launcher.jobs import JOBS

# sacct / squeue states -> the launcher's states (anything unlisted is FAILED).
_STATES = {
    "PENDING": runs.PENDING, "CONFIGURING": runs.PENDING, "REQUEUED": runs.PENDING, "REQUEUE_HOLD": runs.PENDING,
    "REQUEUE_FED": runs.PENDING, "RESV_DEL_HOLD": runs.PENDING, "SUSPENDED": runs.PENDING,
    "RUNNING": runs.RUNNING, "COMPLETING": runs.RUNNING, "STAGE_OUT": runs.RUNNING, "SIGNALING": runs.RUNNING,
    "RESIZING": runs.RUNNING,
    "COMPLETED": runs.SUCCEEDED,
    "CANCELLED": runs.STOPPED,
}


def slurm_state(state: str) -> str:
    """Map a SLURM state ("CANCELLED by 1000", "RUNNING", ...) to the launcher's."""
    word = state.strip().split()[0].rstrip("+") if state.strip() else ""
    return _STATES.get(word, runs.FAILED) if word else runs.UNKNOWN


# USR1 comes this long before the time limit; the ranks get SAVE_WINDOW_S of it to commit a
# checkpoint and exit before the requeue, whose SIGTERM leaves them KillWait (30 s by default).
SIGNAL_LEAD_S = 120
SAVE_WINDOW_S = 90


def default_cpus(gpus_per_node: int) -> int:
    """CPUs a node asks for unless told: 8 per GPU (data loading, checkpoint writing), at least 8."""
    return 8 * max(1, gpus_per_node)


def _query(cmd: list[str]) -> str:
    """A SLURM query's stdout, '' when it fails (a purged job id, no accounting database)."""
    if shutil.which(cmd[0]) is None:
        raise LaunchError(f"{cmd[0]} not found on PATH: is this a SLURM login node?")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


class SlurmBackend:
    name = "slurm"
    artifact = "job.sbatch"

    def render(self, sub: Submission) -> str:
        if not JOBS[sub.job].distributed and sub.nodes != 1:
            raise LaunchError(f"{sub.job} runs on one SLURM node (it fans out with Ray): use --nodes 1, "
                              f"or --backend ray for a multi-node Ray cluster")
        opts = sub.options
        args = sub.entrypoint_args("slurm")
        command = " \\\n    ".join([shlex.join([sub.python, *args[:3]]), *map(shlex.quote, args[3:])])
        return render_template(
            opts.get("template") or cluster_file("slurm", "job.sbatch.j2"),
            run_id=sub.run_id, job=sub.job, run_dir=shlex.quote(sub.run_dir), nodes=sub.nodes,
            gpus_per_node=sub.gpus_per_node, gpus=sub.gpus, distributed=JOBS[sub.job].distributed,
            cpus_per_task=opts.get("cpus_per_task") or default_cpus(sub.gpus_per_node), partition=opts.get("partition") or "",
            account=opts.get("account") or "", time=opts.get("time") or "",
            extra_sbatch=opts.get("sbatch_args") or [], setup=opts.get("setup") or [],
            workdir=shlex.quote(opts.get("workdir") or os.getcwd()),
            pythonpath=shlex.quote(opts.get("pythonpath") or PROJECT_ROOT), command=command,
            signal_lead_s=SIGNAL_LEAD_S, save_window_s=SAVE_WINDOW_S, doctor=shlex.join(sub.doctor_command()),
            # several nodes restart as one job step (one node's entrypoint restarts itself)
            step_restarts=sub.max_restarts if sub.nodes > 1 else 0)

    def submit(self, sub: Submission, artifact_path: str) -> dict[str, Any]:
        out = run_tool(["sbatch", "--parsable", artifact_path], "SLURM").strip()
        job_id = out.split(";")[0]  # "12345" or "12345;cluster"
        if not job_id.isdigit():
            raise LaunchError(f"sbatch printed {out!r}, not a job id")
        return {"job_id": job_id}

    def status(self, record: runs.RunRecord) -> str:
        job_id = record.handle["job_id"]
        # --states=all: also a job that ended less than MinJobAge ago; an id already purged is an error.
        queued = _query(["squeue", "--noheader", "--states=all", "--jobs", job_id, "--format=%T"])
        if queued:
            return slurm_state(queued.splitlines()[0])
        # The accounting database has the final state (first line = the job), where there is one.
        done = _query(["sacct", "--noheader", "--allocations", "--parsable2", "--jobs", job_id, "--format=State"])
        if done:
            return slurm_state(done.splitlines()[0])
        outcome = runs.read_outcome(record.run_dir)  # what the job itself recorded
        return outcome["state"] if outcome else runs.UNKNOWN

    def logs(self, record: runs.RunRecord, rank: int | None = None) -> str:
        if rank is not None:
            return rank_log(record, rank)
        return read_text(f"{record.run_dir}/logs/slurm-{record.handle['job_id']}.out")

    def cancel(self, record: runs.RunRecord) -> None:
        run_tool(["scancel", record.handle["job_id"]], "SLURM")
