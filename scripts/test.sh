#!/usr/bin/env bash
# The whole test suite, with every quality gate, on a fresh Debian 12 machine as root.
# Set-up first (idempotent), then ruff, mypy --strict, the import-linter layer contract, then pytest
# (warnings are errors). Extra arguments go to pytest, e.g. `scripts/test.sh -k mounts`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/setup.sh"
venv=${HOSTSTORAGE_VENV:-$here/.venv}
export PATH="$venv/bin:$PATH"
cd "$here"
echo "== ruff"; ruff check .
echo "== mypy --strict"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"; exec pytest "$@"
