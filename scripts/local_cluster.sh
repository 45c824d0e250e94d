#!/usr/bin/env bash
# A local SLURM + Ray cluster on network-namespace hosts, until Ctrl-C (see cluster/local/).
# Usage (as root): scripts/local_cluster.sh [--hosts N] [--no-slurm] [--no-ray]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m cluster.local "$@"
