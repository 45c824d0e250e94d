#!/usr/bin/env bash
# Set everything up and run the quickstart: the whole pipeline (encode -> train -> sample ->
# evaluate) on scikit-learn's handwritten digits, on the CPU, in about ten minutes.
#
#   bash scripts/quickstart.sh                    # outputs under runs/quickstart/
#   bash scripts/quickstart.sh --out runs/qs2      # any argument is passed to `lamamba quickstart`
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAMAMBA_VENV:-$ROOT/.venv}"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$VENV/bin/lamamba" quickstart "$@"
