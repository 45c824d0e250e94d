"""Print the log of a submitted run; --follow keeps printing until the run ends.

The log is the job's combined output: <run dir>/logs/local.log for local runs, the sbatch
output for SLURM (lines prefixed with the node's task number), the Ray job's driver log for
Ray and KubeRay. Training also keeps every rank's output apart (local and SLURM run dirs):
--rank R prints rank R's, from the newest attempt.

Examples:
  lamamba logs train-tiny-3f2a9c1d --follow
  lamamba logs train-xl-256-9b1e0c44 --rank 13
"""

from __future__ import annotations

import argparse
import sys

HELP = "print (or follow) the log of a submitted run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="run id or run dir")
    parser.add_argument("--rank", type=int, default=None, help="one training rank's log (local and SLURM runs)")
    parser.add_argument("--follow", "-f", action="store_true",
                        help="keep printing until the run ends; exit 0 only if it succeeded")
    parser.add_argument("--runs-root", default=None, help="where run dirs are (default: $LAMAMBA_RUNS_ROOT or ./runs)")


def run(args: argparse.Namespace) -> int:
    from launcher import launch, runs
    from launcher.backends import get_backend

    record = runs.find_run(args.run_id, args.runs_root)
    if not args.follow:
        sys.stdout.write(get_backend(record.backend).logs(record, args.rank))
        return 0
    state = launch.follow(record, args.rank)
    print(f"{record.run_id}: {state}")
    return 0 if state == runs.SUCCEEDED else 1
