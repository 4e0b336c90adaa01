#!/usr/bin/env bash
# medfl-aggregator version tools end to end on a real store: seed from the PEFT-written
# fixture adapter (init-version), re-seed twice (each a child of the head), list and verify
# the chain, roll back and check the next version's parent, refuse a tampered manifest and
# a tampered tensor file, refuse a loosely-permissioned key, and export a version that
# Hugging Face PEFT loads with the same tensors and the same logits as the seeding adapter
# (tests/ref/check_peft_version_export.py; that part is skipped when torch/peft are absent).
# Then the labels and pooling of a genesis written by `medfl-node init-adapter` through
# init-version into the export (label_config.json with id2label in order, README.md naming
# base model, labels, task and pooling; malformed label configs refused), and the ACCURACY /
# MACRO_F1 columns of `versions` from a journal fixture, read while a writer holds it.
set -u
AGG="$MEDFL_BIN/medfl-aggregator"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_versions

cp -r tests/ref/fixtures/versions_key "$T/keys"
chmod 600 "$T/keys/identity.key"
st="$T/state"
A=(--state "$st" --key-dir "$T/keys")

out=$("$AGG" init-version --from tests/ref/fixtures/tiny_peft "${A[@]}" --base-model tiny-bert 2>/dev/null) \
  || die "init-version exited $?"
[ "$(echo "$out" | field version)" = 1 ] && [ "$(echo "$out" | field parent)" = 0 ] || die "seed: $out"
[ "$(echo "$out" | field tensors)" = 14 ] || die "seed tensors: $out"
"$AGG" init-version --from tests/ref/fixtures/tiny_peft "${A[@]}" >/dev/null 2>&1 \
  && die "re-seeding a non-empty store without --force succeeded"
for i in 2 3; do
  out=$("$AGG" init-version --from tests/ref/fixtures/tiny_peft/adapter_model.safetensors --lora-alpha 8 \
        "${A[@]}" --force 2>/dev/null) || die "seed $i exited $?"
  [ "$(echo "$out" | field parent)" = $((i - 1)) ] || die "seed $i parent: $out"
done

out=$("$AGG" versions "${A[@]}") || die "versions exited $?"
[ "$(echo "$out" | field versions)" = 3 ] && [ "$(echo "$out" | field verified)" = 3 ] \
  && [ "$(echo "$out" | field head)" = 3 ] || die "versions: $out"
echo "$out" | grep -q '^\*3 ' || die "head not marked: $out"

out=$("$AGG" rollback 1 "${A[@]}") || die "rollback exited $?"
[ "$(echo "$out" | field head)" = 1 ] && [ "$(echo "$out" | field latest)" = 3 ] || die "rollback: $out"
"$AGG" versions --state "$st" | grep -q '^\*1 ' || die "head after rollback"
out=$("$AGG" init-version --from tests/ref/fixtures/tiny_peft "${A[@]}" --force --base-model tiny-bert 2>/dev/null) \
  || die "seed after rollback"
[ "$(echo "$out" | field version)" = 4 ] && [ "$(echo "$out" | field parent)" = 1 ] || die "after rollback: $out"
out=$("$AGG" versions "${A[@]}") || die "versions after rollback: $?"
[ "$(echo "$out" | field verified)" = 4 ] || die "history not kept: $out"
echo "$out" | awk '$1 == "*4" && $2 == 1 { ok = 1 } END { exit !ok }' || die "v4 row: $out"

# Usage and operator errors.
"$AGG" rollback 9 --state "$st" >/dev/null 2>&1 && die "rollback to a missing version succeeded"
"$AGG" rollback --state "$st" >/dev/null 2>&1 && die "rollback without VERSION succeeded"
"$AGG" export 4 --state "$st" >/dev/null 2>&1 && die "export without --peft succeeded"
"$AGG" versions --state "$st" --bogus >/dev/null 2>&1 && die "unknown option accepted"
chmod 644 "$T/keys/identity.key"
err=$("$AGG" init-version --from tests/ref/fixtures/tiny_peft "${A[@]}" --force 2>&1) && die "loose key accepted"
echo "$err" | grep -q "chmod 600" || die "loose key message: $err"
chmod 600 "$T/keys/identity.key"

# Tampering: a copy of the store with an edited manifest, another with a changed tensor file.
cp -r "$st" "$T/t1"
sed -i 's/"round":\t0/"round":\t5/' "$T/t1/versions/v000002.json"
err=$("$AGG" versions --state "$T/t1" --key-dir "$T/keys" 2>&1) && die "tampered manifest listed as verified"
echo "$err" | grep -q "v000002: metadata altered" || die "tampered manifest message: $err"
"$AGG" export 3 --peft "$T/x" --state "$T/t1" --key-dir "$T/keys" >/dev/null 2>&1 \
  && die "export of a version whose chain is tampered succeeded"
# A changed value in a tensor file (needs h5py to edit the HDF5 dataset in place).
cp -r "$st" "$T/t2"
if python3 - "$T/t2/versions/v000004.h5" <<'PY' 2>/dev/null
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    d = f["tensors/classifier.bias"]; v = d[()]; v[0] += 1.0; d[...] = v
PY
then
  err=$("$AGG" versions --state "$T/t2" --key-dir "$T/keys" 2>&1) && die "tampered tensors listed as verified"
  echo "$err" | grep -q "v000004: tensors altered" || die "tampered tensor message: $err"
else
  echo "note $name: tensor tampering part skipped (no h5py); test_versions.c covers it"
fi

# Export and the PEFT reference check.
out=$("$AGG" export 4 --peft "$T/peft" "${A[@]}") || die "export exited $?"
echo "$out" | grep -q "verified" || die "export: $out"
[ -s "$T/peft/adapter_model.safetensors" ] && [ -s "$T/peft/adapter_config.json" ] || die "export files"
grep -q '"peft_type":.*"LORA"' "$T/peft/adapter_config.json" || die "adapter_config: no LORA"
grep -q '"base_model_name_or_path":.*"tiny-bert"' "$T/peft/adapter_config.json" || die "base model attr lost"
if command -v python3 >/dev/null; then
  python3 tests/ref/check_peft_version_export.py "$T/peft" "$st/versions/v000004.h5" \
    --same-as tests/ref/fixtures/tiny_peft 2>/dev/null | tail -1 > "$T/py.out"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) cat "$T/py.out";;
    77) echo "note $name: PEFT check skipped: $(cat "$T/py.out")";;
    *) die "PEFT reference check: $(cat "$T/py.out")";;
  esac
else
  echo "note $name: PEFT check skipped: no python3"
fi
# ---- Labels and pooling: the genesis of `medfl-node init-adapter` (data.labels, model.pooling)
# -> init-version -> export names them (label_config.json for transformers, README.md).
NODE="$MEDFL_BIN/medfl-node"
"$NODE" import-model --hf tests/ref/fixtures/tiny_bert -o "$T/base.h5" >"$T/import.out" 2>&1 ||
  die "import-model: $(tail -3 "$T/import.out")"
node_conf() { # DIR POOLING
  mkdir -p "$1"
  cat >"$1/node.conf" <<EOF
node_id = hospital-1
key_dir = keys
state_dir = state
[aggregator]
endpoint = tcp://127.0.0.1:1
public_key_file = curve.pub
identity_key = $(cat "$T/keys/identity.pub")
[data]
records = train.jsonl
labels = Cardiology, Neuro logy,Pédiatrie,"onc"ology
[model]
base = ../base.h5
lora.r = 4
pooling = $2
[train]
max_seq_len = 48
EOF
}
want_labels='["Cardiology", "Neuro logy", "Pédiatrie", "\"onc\"ology"]'
id2label() { # FILE: the labels in id order, as transformers' PretrainedConfig reads them
  python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); n = c["num_labels"]
assert sorted(c["id2label"]) == sorted(str(i) for i in range(n)), c
assert all(c["label2id"][c["id2label"][str(i)]] == i for i in range(n)), c
print(json.dumps([c["id2label"][str(i)] for i in range(n)], ensure_ascii=False))' "$1"
}
node_conf "$T/n1" mean
out=$("$NODE" init-adapter -c "$T/n1/node.conf" -o "$T/genesis" 2>"$T/init.err") || die "init-adapter: $(cat "$T/init.err")"
[ "$(echo "$out" | field labels)" = 4 ] && [ "$(echo "$out" | field pooling)" = mean ] || die "init-adapter: $out"
[ "$(id2label "$T/genesis/label_config.json")" = "$want_labels" ] || die "genesis labels: $(cat "$T/genesis/label_config.json")"
ls="$T/lstate"
L=(--state "$ls" --key-dir "$T/keys")
"$AGG" init-version --from "$T/genesis" "${L[@]}" --base-model tiny-bert >"$T/initv.out" 2>&1 || die "init-version: $(cat "$T/initv.out")"
python3 - "$ls/versions/v000001.json" "$want_labels" <<'PY' || die "attributes: $(grep -A8 '"attrs"' "$ls/versions/v000001.json")"
import json, sys
a = json.load(open(sys.argv[1]))["attrs"]
assert json.loads(a["labels"]) == json.loads(sys.argv[2]) and a["pooling"] == "mean", a
PY
out=$("$AGG" export 1 --peft "$T/lpeft" "${L[@]}") || die "export with labels exited $?"
[ "$(echo "$out" | field pooling)" = mean ] || die "export output: $out"
[ "$(id2label "$T/lpeft/label_config.json")" = "$want_labels" ] || die "export labels: $(cat "$T/lpeft/label_config.json")"
grep -q '"medfl_pooling":.*"mean"' "$T/lpeft/label_config.json" || die "export: no medfl_pooling"
grep -q '^- \*\*Pooling\*\* .*: \*\*mean\*\*: .*attention mask' "$T/lpeft/README.md" || die "README pooling: $(cat "$T/lpeft/README.md")"
grep -q '^- \*\*Labels\*\* .*: 0 `Cardiology`, 1 `Neuro logy`, 2 `Pédiatrie`, 3 `"onc"ology`$' "$T/lpeft/README.md" ||
  die "README labels: $(grep Labels "$T/lpeft/README.md")"
grep -q '^- \*\*Base model\*\*: `tiny-bert`' "$T/lpeft/README.md" && grep -q 'into 4 classes' "$T/lpeft/README.md" ||
  die "README base/task: $(head -12 "$T/lpeft/README.md")"
grep -q 'pooled = (hidden \* mask).sum(1)' "$T/lpeft/README.md" && ! grep -q 'pooled = hidden\[:, 0\]' "$T/lpeft/README.md" ||
  die "README recipe does not pool as the version did"
python3 - "$T/lpeft/README.md" <<'PY' || die "README recipe is not valid Python"
import ast, re, sys
ast.parse(re.search(r"```python\n(.*?)```", open(sys.argv[1]).read(), re.S).group(1))
PY
python3 tests/ref/check_peft_version_export.py "$T/lpeft" "$ls/versions/v000001.h5" \
  --same-as "$T/genesis" 2>/dev/null | tail -1 > "$T/py2.out"
rc=${PIPESTATUS[0]}
case $rc in
  0) cat "$T/py2.out";;
  77) echo "note $name: PEFT check of the labelled export skipped: $(cat "$T/py2.out")";;
  *) die "PEFT reference check (labels): $(cat "$T/py2.out")";;
esac
# model.pooling = cls travels the same way
node_conf "$T/n2" cls
"$NODE" init-adapter -c "$T/n2/node.conf" -o "$T/genesis-cls" >/dev/null 2>&1 || die "init-adapter (cls)"
"$AGG" init-version --from "$T/genesis-cls" "${L[@]}" --force >/dev/null 2>&1 || die "init-version (cls)"
"$AGG" export 2 --peft "$T/lpeft-cls" "${L[@]}" >/dev/null || die "export (cls)"
grep -q '"medfl_pooling":.*"cls"' "$T/lpeft-cls/label_config.json" &&
  grep -q '^- \*\*Pooling\*\* .*: \*\*cls\*\*: .*without BERT.s pooler' "$T/lpeft-cls/README.md" &&
  grep -q '^    pooled = hidden\[:, 0\]' "$T/lpeft-cls/README.md" || die "cls pooling not exported: $(cat "$T/lpeft-cls/README.md")"
# A label config that does not fit the adapter, or is malformed, is refused by init-version,
# naming the file and never a label; nothing is written.
cp -r "$T/genesis" "$T/g-bad"
python3 - "$T/g-bad/label_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); del c["id2label"]["3"]; del c["label2id"]['"onc"ology']; c["num_labels"] = 3
json.dump(c, open(sys.argv[1], "w"))
PY
err=$("$AGG" init-version --from "$T/g-bad" "${L[@]}" --force 2>&1) && die "3 labels for a 4-row classifier accepted"
echo "$err" | grep -q "g-bad/label_config.json: 3 labels, but the classifier has 4 rows" || die "label count message: $err"
printf '{"id2label": {"0": "Cardiology", "1": "Cardiology", "2": "a", "3": "b"}}' >"$T/g-bad/label_config.json"
err=$("$AGG" init-version --from "$T/g-bad" "${L[@]}" --force 2>&1) && die "duplicate labels accepted"
echo "$err" | grep -q "label_config.json: key 'id2label': labels 0 and 1 are the same name" || die "duplicate message: $err"
echo "$err" | grep -q Cardiology && die "a label's value in an error message: $err"
printf '{"id2label": ' >"$T/g-bad/label_config.json"
"$AGG" init-version --from "$T/g-bad" "${L[@]}" --force >/dev/null 2>&1 && die "truncated label config accepted"
[ "$("$AGG" versions --state "$ls" | field versions)" = 2 ] || die "a refused seed wrote a version"
"$AGG" export 2 --peft "$T/x2" --state "$ls" --pooling max >/dev/null 2>&1 && die "--pooling max accepted"

# ---- versions shows the nodes' evaluation of each version (round_evals of registry.db, mean
# weighted by n), '-' where none, and reads it while a writer holds the journal.
out=$("$AGG" versions "${L[@]}") || die "versions without a journal exited $?"
echo "$out" | head -1 | grep -q 'CREATED *ACCURACY MACRO_F1 METRICS$' || die "versions header: $out"
echo "$out" | awk '$1 ~ /^\*?[12]$/ && ($7 != "-" || $8 != "-") { bad = 1 } END { exit bad }' || die "accuracy without reports: $out"
python3 - "$ls/registry.db" <<'PY' || die "journal fixture"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1]); db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE round_evals (round_id INTEGER NOT NULL, version INTEGER NOT NULL,"
           " node_id TEXT NOT NULL, loss REAL, accuracy REAL, macro_f1 REAL, n INTEGER,"
           " received_at INTEGER, PRIMARY KEY (round_id, node_id))")
db.executemany("INSERT INTO round_evals VALUES (?, ?, ?, 0.5, ?, ?, ?, 0)", [
    (1, 1, "hospital-1", 0.80, 0.70, 30),   # v1: accuracy (0.8*30 + 0.4*10) / 40 = 0.7
    (1, 1, "hospital-2", 0.40, None, 10),   #     macro-F1 over the report that has one: 0.7
    (2, 2, "hospital-1", 0.99, 0.99, 0)])   # v2: a report on no records does not count
db.commit()
PY
row() { "$AGG" versions "${L[@]}" 2>&1 | awk -v v="$1" '{ x = $1; sub(/^\*/, "", x) } x == v { print $7, $8 }'; }
[ "$(row 1)" = "0.7000 0.7000" ] && [ "$(row 2)" = "- -" ] || die "accuracy column: $("$AGG" versions "${L[@]}" 2>&1)"
cat >"$T/writer.py" <<'PY'
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO round_evals VALUES (3, 2, 'hospital-1', 0.5, 0.5, 0.25, 20, 0)")
open(sys.argv[2] + "/locked", "w").close()
while not os.path.exists(sys.argv[2] + "/release"): time.sleep(0.05)
db.execute("COMMIT")
PY
start writer "$T/writer.log" python3 "$T/writer.py" "$ls/registry.db" "$T"
wait_until 10 test -e "$T/locked" || die "journal writer did not start: $(cat "$T/writer.log")"
SECONDS=0
[ "$(row 2)" = "- -" ] && [ "$SECONDS" -le 3 ] || die "versions blocked by, or read the uncommitted, writer ($SECONDS s): $(row 2)"
touch "$T/release"
reap writer || die "journal writer: $(cat "$T/writer.log")"
[ "$(row 2)" = "0.5000 0.2500" ] || die "committed report not shown: $(row 2)"
echo "PASS $name"
