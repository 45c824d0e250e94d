"""Show the state of a run submitted with `lamamba submit`, or of every run under the runs root.

A run is named by its run id (looked up under --runs-root, default $LAMAMBA_RUNS_ROOT or ./runs)
or by its run directory. The state is asked from the backend that runs it (the process record
for local runs, squeue/sacct for SLURM, the Ray job server, kubectl for KubeRay) and is one of
PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED (cancelled) or UNKNOWN.

Examples:
  lamamba status                      # every run under ./runs
  lamamba status train-tiny-3f2a9c1d
  lamamba status train-tiny-3f2a9c1d --json
"""

from __future__ import annotations

import argparse
import json

HELP = "show the state of a submitted run (or of all runs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", nargs="?", metavar="RUN_ID", help="run id or run dir (default: all runs)")
    parser.add_argument("--runs-root", default=None, help="where run dirs are (default: $LAMAMBA_RUNS_ROOT or ./runs)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from launcher import runs
    from launcher.backends import get_backend
    from launcher.errors import LaunchError

    records = [runs.find_run(args.run_id, args.runs_root)] if args.run_id else runs.list_runs(args.runs_root)
    if not records:
        print(f"no runs under {args.runs_root or runs.default_runs_root()}")
        return 0
    for record in records:
        try:
            state = get_backend(record.backend).status(record)
        except LaunchError as err:  # one unreachable cluster must not hide the other runs
            if args.run_id:
                raise
            state = f"{runs.UNKNOWN} ({err})"
        outcome = runs.read_outcome(record.run_dir) or {}
        if args.json:
            print(json.dumps({**dataclasses.asdict(record), "state": state, "outcome": outcome}))
        else:
            detail = f"  exit {outcome['returncode']}, {outcome['attempts']} attempt(s)" if outcome else ""
            print(f"{record.run_id:<40} {record.job:<9} {record.backend:<8} {state:<10} {record.run_dir}{detail}")
    return 0
