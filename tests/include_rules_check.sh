#!/usr/bin/env bash
# The folders' include rules (docs/architecture.md): drivers/ and sync/ see only agent/api/;
# nothing in agent/ sees the technician's side in cli/. Fails naming every line that breaks one.
set -euo pipefail
cd "$1"
bad=0
check() {  # check <folder> <regex of project includes it must not use> <rule>
  local hits
  if hits=$(grep -rnE "^#include \"($2)" --include='*.h' --include='*.cpp' "$1" 2>/dev/null); then
    echo "$3:"
    echo "$hits"
    bad=1
  fi
}
check drivers 'agent/[^a]|agent/a[^p]|cli/|sync/' "drivers/ may include only agent/api/ and drivers/"
check sync 'agent/[^a]|agent/a[^p]|cli/|drivers/' "sync/ may include only agent/api/ and sync/"
check agent 'cli/' "agent/ never includes the technician's side (cli/)"
check agent/api 'agent/[^a]|agent/a[^p]|drivers/|sync/' "agent/api/ includes only itself"
[ "$bad" = 0 ] && echo "include rules hold: drivers/ and sync/ see only agent/api/, agent/ never sees cli/"
exit "$bad"
