#!/usr/bin/env bash
# The unit must verify cleanly (systemd-analyze verify exits 0 even on typos: fail on any
# output) and keep its exposure at or below 1.5 (quality.md S1).
set -euo pipefail
unit_src=$1
binary=$2
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not installed: skipped"; exit 0; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s|/usr/bin/omniedge|$binary|" "$unit_src" >"$dir/omniedge.service"
out=$(systemd-analyze verify "$dir/omniedge.service" 2>&1 || true)
if [ -n "$out" ]; then
  echo "systemd-analyze verify complained:"; echo "$out"; exit 1
fi
exposure=$(systemd-analyze security --offline=yes "$dir/omniedge.service" 2>/dev/null |
  sed -n 's/.*Overall exposure level for omniedge.service: \([0-9.]*\).*/\1/p')
echo "exposure $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 1.5) }'
