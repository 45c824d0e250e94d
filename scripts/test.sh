#!/usr/bin/env bash
# Set everything up and run the whole test suite (CPU only, about 20-30 minutes on 2 cores).
#
#   bash scripts/test.sh                     # every test
#   bash scripts/test.sh tests/quickstart -x # any argument is passed to pytest
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAMAMBA_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh" || exit 1
cd "$ROOT"
# Offline hubs, no Ray usage reporting, threads sized for small machines (tests/conftest.py sets
# the same; here they also reach subprocesses started before it is imported).
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    # pytest's "no tests collected": nothing failed, but say so plainly.
    echo "test: pytest collected no tests"
    exit 0
fi
exit "$rc"
