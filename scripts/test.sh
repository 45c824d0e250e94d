#!/usr/bin/env bash
# Set up everything and run the whole test suite (CPU only, about 15 minutes on 2 cores plus
# about 2 of set-up, the figure README.md states).
#
#   bash scripts/test.sh                          # every test
#   bash scripts/test.sh tests/quickstart -x      # any argument is passed to pytest
#   LAMAMBA_SKIP_SETUP=1 bash scripts/test.sh ... # the environment is already set up
#
# A run that collects no tests fails (pytest's exit status 5): CI must not pass having run nothing.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAMAMBA_VENV:-$ROOT/.venv}"
if [ -z "${LAMAMBA_SKIP_SETUP:-}" ]; then
    bash "$ROOT/scripts/setup.sh" || exit 1
fi
cd "$ROOT"
# Offline hubs, no Ray usage reporting, threads sized for small machines (tests/conftest.py sets
# the same; here they also reach subprocesses started before it is imported).
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test: pytest collected no tests: failing (check the paths and -k/-m filters given)" >&2
fi
exit "$rc"
