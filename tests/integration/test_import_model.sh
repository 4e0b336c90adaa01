#!/usr/bin/env bash
# medfl-node import-model as a program: imports the tiny BERT fixture (exit 0), refuses a
# missing folder and an unsupported architecture (exit 1, message naming file and field),
# usage errors (exit 2), and, when python3 with h5py and safetensors is present, checks that
# h5py reads the base file: format attributes, config, vocabulary and weights equal to the
# checkpoint's.
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup import_model
node="$MEDFL_BIN/medfl-node"

"$node" import-model --hf tests/ref/fixtures/tiny_bert -o "$T/base.h5" >/dev/null 2>&1 \
  || die "import of tests/ref/fixtures/tiny_bert failed"
[ -s "$T/base.h5" ] || die "no output file"

"$node" import-model --hf "$T/nowhere" -o "$T/x.h5" 2>"$T/err"; rc=$?
[ $rc -eq 1 ] || die "missing folder: exit $rc, expected 1"
grep -q "nowhere/config.json" "$T/err" || die "missing folder: message: $(cat "$T/err")"

mkdir "$T/roberta"
cp tests/ref/fixtures/tiny_bert/* "$T/roberta/"
sed -i 's/"model_type": "bert"/"model_type": "roberta"/' "$T/roberta/config.json"
"$node" import-model --hf "$T/roberta" -o "$T/x.h5" 2>"$T/err"; rc=$?
[ $rc -eq 1 ] || die "roberta: exit $rc, expected 1"
grep -q "config.json: field 'model_type'" "$T/err" || die "roberta: message: $(cat "$T/err")"
[ ! -e "$T/x.h5" ] || die "output written despite the error"

"$node" import-model >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] || die "no arguments: exit $rc, expected 2"

if python3 -c 'import h5py, numpy, safetensors' >/dev/null 2>&1; then
  python3 - "$T/base.h5" <<'PY' || die "h5py check"
import sys, h5py, numpy as np
from safetensors.numpy import load_file
f = h5py.File(sys.argv[1], "r")
assert f.attrs["format"] == "medfl-base-model" and f.attrs["format_version"] == 1
assert len(f.attrs["weights_hash"]) == 64
cfg = f["config"].attrs
assert cfg["model_type"] == "bert" and cfg["hidden_size"] == 32 and cfg["do_lower_case"] == 0
vocab = [v.decode() for v in f["vocab"][()]]
assert vocab == open("tests/ref/fixtures/tiny_bert/vocab.txt").read().split("\n")[:-1]
st = load_file("tests/ref/fixtures/tiny_bert/model.safetensors")
names = list(f["weights"].keys())
assert len(names) == 37, len(names)
for n in names:
    assert np.array_equal(f["weights"][n][()], st[n]), n
PY
else
  echo "note $name: python3 with h5py/safetensors absent, h5py read check skipped"
fi
echo "PASS $name"
