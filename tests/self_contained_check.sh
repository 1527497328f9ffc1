#!/usr/bin/env bash
# The repository stands alone: nothing in it may read the shared folder beside the checkout
# (a fresh clone has nothing beside it). Fails naming every file and line that does.
set -euo pipefail
cd "$1"
# The folder's name is put together here, so that this file does not name it itself.
dir="sha""red"
pattern="\\.\\./${dir}|/${dir}/fixtures|/${dir}/spec"
if hits=$(git ls-files -co --exclude-standard -z 2>/dev/null |
          xargs -0 grep -nIE "$pattern" -- 2>/dev/null); then
  echo "these lines refer to the shared folder beside the checkout:"
  echo "$hits"
  exit 1
fi
echo "self-contained: no file refers to the folder beside the checkout"
