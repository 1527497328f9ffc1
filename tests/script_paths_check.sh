#!/usr/bin/env bash
# The repository's scripts run what the build makes: every "<build dir>/<folder>/<file>" path
# they name (the demo's binary, bench/run's, the fleet tools') must exist in a finished build.
# A layout change that moves a binary without them would otherwise break the newcomer's
# scripts/demo silently (it did once: cli/ moved the binary and the demo kept agent/omniedge).
# Usage: script_paths_check.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
src=$1
build=$2
missing=0
checked=0
for script in scripts/demo scripts/test bench/run tools/fleet/fleet tools/fleet/broker-kills; do
  [ -f "$src/$script" ] || continue
  # $build/cli/omniedge, $BUILD_DIR/cli/omniedge, ${BUILD}/bench/bench_sub, "build", "cli/omniedge"
  while IFS= read -r path; do
    checked=$((checked + 1))
    if [ ! -x "$build/$path" ]; then
      echo "$script names <build>/$path, which the build does not make ($build/$path)"
      missing=1
    fi
  done < <(grep -oE '(\$\{?[A-Za-z_]*(build|BUILD)[A-Za-z_]*\}?"?/|build, ")(cli|agent|bench)/[A-Za-z0-9_]+' \
             "$src/$script" | sed -E 's/^.*(cli|agent|bench)\//\1\//' | sort -u)
done
[ "$checked" -gt 0 ] || { echo "no build paths found in the scripts: the pattern is out of date"; exit 1; }
[ "$missing" = 0 ] || exit 1
echo "every build path the scripts name exists ($checked checked)"
