#!/usr/bin/env bash
# Set up a virtual environment with lamamba and its pinned dependencies.
#
#   bash scripts/setup.sh            # creates .venv/ at the repository root if missing, installs
#   LAMAMBA_VENV=/path bash ...      # another location for the environment
#   PYTHON=python3.12 bash ...       # the interpreter that creates it (3.10 or newer)
#
# The install is `pip install -e ".[dev,triton]"` (triton for the kernel tests, which run in its CPU
# interpreter): every dependency is pinned in pyproject.toml, torch included, and one pip command
# resolves them together, so a CPU machine keeps the CPU wheel. It is skipped when pyproject.toml
# has not changed since the last successful install and no top-level package was added (a stamp
# file in the environment records their hash), so the other scripts can call this one every time
# at no cost.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LAMAMBA_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.lamamba-install-stamp"

if [ ! -x "$VENV/bin/python" ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "setup: '$PYTHON' not found; install Python 3.10+ or set PYTHON=/path/to/python3" >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "setup: $("$PYTHON" --version 2>&1) is too old; lamamba needs Python 3.10+ (set PYTHON=...)" >&2
        exit 1
    fi
    echo "setup: creating the virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# An editable install maps the top-level packages that exist when it runs, so a new package
# (or a changed pyproject.toml, or a moved checkout) means installing again.
WANT="$( (cat "$ROOT/pyproject.toml"; echo "$ROOT"; cd "$ROOT" && ls -d -- */__init__.py) | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
        && "$VENV/bin/python" -c 'import lamamba, launcher' >/dev/null 2>&1; then
    echo "setup: $VENV is up to date"
    exit 0
fi

echo "setup: installing lamamba and its pinned dependencies into $VENV (first time: a few minutes)"
"$VENV/bin/python" -m pip install --disable-pip-version-check -e "$ROOT[dev,triton]"
echo "$WANT" > "$STAMP"
echo "setup: done ($("$VENV/bin/python" --version), $VENV)"
