"""The SLURM backend: an sbatch script from cluster/slurm/job.sbatch.j2, watched with squeue/sacct.

The script runs one srun task per node; each task is :mod:`launcher.entrypoint` with the SLURM
rendezvous (torchrun for training). ``--signal=B:USR1@120 --requeue`` and a trap requeue the job
before its time limit unless the run has finished; the requeued job resumes in the same run dir.
"""

from __future__ import annotations

import os
import shlex
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


def default_cpus(gpus_per_node: int) -> int:
    """CPUs a node asks for unless told: 8 per GPU (data loading, checkpoint writing), at least 8."""
    return 8 * max(1, gpus_per_node)


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
            gpus_per_node=sub.gpus_per_node, distributed=JOBS[sub.job].distributed,
            cpus_per_task=opts.get("cpus_per_task") or default_cpus(sub.gpus_per_node), partition=opts.get("partition") or "",
            account=opts.get("account") or "", time=opts.get("time") or "",
            extra_sbatch=opts.get("sbatch_args") or [], setup=opts.get("setup") or [],
            workdir=shlex.quote(opts.get("workdir") or os.getcwd()),
            pythonpath=shlex.quote(opts.get("pythonpath") or PROJECT_ROOT), command=command)

    def submit(self, sub: Submission, artifact_path: str) -> dict[str, Any]:
        out = run_tool(["sbatch", "--parsable", artifact_path], "SLURM").strip()
        job_id = out.split(";")[0]  # "12345" or "12345;cluster"
        if not job_id.isdigit():
            raise LaunchError(f"sbatch printed {out!r}, not a job id")
        return {"job_id": job_id}

    def status(self, record: runs.RunRecord) -> str:
        job_id = record.handle["job_id"]
        queued = run_tool(["squeue", "--noheader", "--jobs", job_id, "--format=%T"], "SLURM").strip()
        if queued:
            return slurm_state(queued.splitlines()[0])
        # Gone from the queue: the accounting database has the final state (first line = the job).
        done = run_tool(["sacct", "--noheader", "--allocations", "--parsable2", "--jobs", job_id,
                         "--format=State"], "SLURM").strip()
        return slurm_state(done.splitlines()[0]) if done else runs.UNKNOWN

    def logs(self, record: runs.RunRecord, rank: int | None = None) -> str:
        if rank is not None:
            return rank_log(record, rank)
        return read_text(f"{record.run_dir}/logs/slurm-{record.handle['job_id']}.out")

    def cancel(self, record: runs.RunRecord) -> None:
        run_tool(["scancel", record.handle["job_id"]], "SLURM")
