#!/usr/bin/env bash
# Copy crds/*.yaml (the single source of truth for the API schema) into the Helm chart's crds/ directory,
# byte for byte, and drop chart copies whose source is gone. `--check` changes nothing and exits 1 when
# the chart is out of date (tests/test_crds.py asserts the same).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$here/crds
dst=$here/charts/hoststorage/crds
check=0
if [ "${1:-}" = "--check" ]; then check=1; elif [ $# -gt 0 ]; then
  echo "usage: $0 [--check]" >&2; exit 2
fi
mkdir -p "$dst"
stale=0
shopt -s nullglob
for f in "$src"/*.yaml; do
  name=$(basename "$f")
  if ! cmp -s "$f" "$dst/$name"; then
    stale=1
    if [ $check -eq 1 ]; then echo "out of date: charts/hoststorage/crds/$name"; else cp "$f" "$dst/$name"; echo "synced $name"; fi
  fi
done
for f in "$dst"/*.yaml; do
  name=$(basename "$f")
  if [ ! -e "$src/$name" ]; then
    stale=1
    if [ $check -eq 1 ]; then echo "no source for charts/hoststorage/crds/$name"; else rm -f "$f"; echo "removed $name"; fi
  fi
done
if [ $check -eq 1 ] && [ $stale -eq 1 ]; then
  echo "run scripts/sync_chart_crds.sh" >&2; exit 1
fi
