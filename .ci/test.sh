#!/usr/bin/env bash
# Quick-start command 2: install msmri with its test extras into .venv and run the
# whole test suite (the same command CI runs through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
export PATH="$PWD/.venv/bin:$PATH"
echo "== import contract (import-linter)"
lint-imports
echo "== lint (ruff)"
ruff check .
echo "== tests (pytest)"
exec python -m pytest -n 2 --dist loadfile --durations=15 "$@"
