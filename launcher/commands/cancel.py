"""Stop a submitted run.

Local runs get SIGTERM (every process of the run is in one process group; training writes a
checkpoint and exits on it), then SIGKILL after 30 s; SLURM runs are scancel'ed; Ray jobs are
stopped through the job server; KubeRay RayJobs are deleted. The run is then reported as
STOPPED. Its run dir stays: submitting the same command again continues it.

Example:
  lamamba cancel train-tiny-3f2a9c1d
"""

from __future__ import annotations

import argparse

HELP = "stop a submitted run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="run id or run dir")
    parser.add_argument("--runs-root", default=None, help="where run dirs are (default: $LAMAMBA_RUNS_ROOT or ./runs)")


def run(args: argparse.Namespace) -> int:
    from launcher import runs
    from launcher.backends import get_backend

    record = runs.find_run(args.run_id, args.runs_root)
    backend = get_backend(record.backend)
    state = backend.status(record)
    if state not in runs.ACTIVE_STATES:
        print(f"{record.run_id} is not running ({state}); nothing to cancel")
        return 0
    backend.cancel(record)
    print(f"cancelled {record.run_id} ({record.backend})")
    return 0
