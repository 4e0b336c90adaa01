#!/usr/bin/env bash
# `medfl-node train-local` and `eval` end to end: import the tiny BERT fixture
# (tests/ref/fixtures/tiny_bert), write synthetic records (`medfl-node synth`), train two
# epochs with one node.conf, check the per-epoch lines and the adapter, check that `eval`
# reproduces the last epoch's validation figures exactly and evaluates a whole file with
# --records; DP-SGD prints the planned sigma and an epsilon within the target; the
# de-identification gate stops training under policy refuse (exit 3); config errors
# (no label set, out-of-range value, missing base model, unknown label) fail with messages
# naming the key or file.
set -u
name=test_train_local
node="${MEDFL_BIN:?}/medfl-node"
tmp=$(mktemp -d /tmp/medfl-train-local-XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
fail() { echo "FAIL $name: $*"; exit 1; }
val() { sed -n "s/^$1: //p" "$2" | tail -n 1; }

"$node" import-model --hf tests/ref/fixtures/tiny_bert -o "$tmp/base.h5" >/dev/null 2>"$tmp/import.err" \
  || fail "import-model: $(cat "$tmp/import.err")"
"$node" synth --sites 1 --records-per-site 200 --seed 5 --alpha 50 -o "$tmp/synth" >/dev/null 2>&1 \
  || fail "synth failed"
labels=$(cat "$tmp/synth/labels.txt")
cat >"$tmp/node.conf" <<CONF
# other sections of the daemon's config are ignored by train-local / eval
node_id = hospital-a
[aggregator]
endpoint = tcp://127.0.0.1:1
[data]
records = synth/site-1/train.jsonl
labels = $labels
[deid]
policy = refuse
[model]
base = base.h5
lora.r = 4
[train]
epochs = 2
batch_size = 8
lr = 3e-3
max_seq_len = 48
valid_fraction = 0.2
test_fraction = 0.1
threads = 1
seed = 3
CONF

# 1. train-local: per-epoch lines, adapter written
"$node" train-local -c "$tmp/node.conf" --device cpu -o "$tmp/adapter.h5" >"$tmp/train.out" 2>"$tmp/train.err" \
  || fail "train-local: $(tail -3 "$tmp/train.err")"
for k in records_train records_valid records_test labels epoch train_loss valid_loss \
         valid_accuracy valid_macro_f1 valid_n adapter valid_majority_macro_f1; do
  grep -q "^$k: " "$tmp/train.out" || fail "train-local printed no '$k:' line"
done
[ "$(grep -c '^epoch: ' "$tmp/train.out")" -eq 2 ] || fail "expected 2 epoch lines"
[ -s "$tmp/adapter.h5" ] || fail "no adapter written"
grep -q "step" "$tmp/train.err" || fail "no progress lines on stderr"
l1=$(grep '^train_loss: ' "$tmp/train.out" | head -1 | cut -d' ' -f2)
l2=$(val train_loss "$tmp/train.out")
awk -v a="$l1" -v b="$l2" 'BEGIN { exit !(b < a) }' || fail "train loss did not fall ($l1 -> $l2)"

# 2. eval on the validation split equals the last epoch's figures
"$node" eval -c "$tmp/node.conf" --adapter "$tmp/adapter.h5" --device cpu >"$tmp/eval.out" 2>"$tmp/eval.err" \
  || fail "eval: $(tail -3 "$tmp/eval.err")"
for k in loss accuracy macro_f1 n; do
  a=$(val "$k" "$tmp/eval.out"); b=$(val "valid_$k" "$tmp/train.out")
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "eval $k '$a' differs from last epoch's valid_$k '$b'"
done
# ... on the test split and on a whole other file
"$node" eval -c "$tmp/node.conf" --adapter "$tmp/adapter.h5" --split test >"$tmp/test.out" 2>/dev/null \
  || fail "eval --split test"
[ "$(val n "$tmp/test.out")" = "$(val records_test "$tmp/train.out")" ] || fail "test split size differs"
"$node" eval -c "$tmp/node.conf" --adapter "$tmp/adapter.h5" --records "$tmp/synth/site-1/test.jsonl" \
  >"$tmp/file.out" 2>/dev/null || fail "eval --records"
[ "$(val n "$tmp/file.out")" = "$(grep -c . "$tmp/synth/site-1/test.jsonl")" ] || fail "eval --records n"

# ... --checkpoint: a run stopped after epoch 1 and restarted ends where an uninterrupted
# run ends (same eval figures)
"$node" train-local -c "$tmp/node.conf" --max-steps 13 --checkpoint "$tmp/ck.h5" -o "$tmp/part.h5" \
  >"$tmp/part.out" 2>/dev/null || fail "train-local --checkpoint (part 1)"
"$node" train-local -c "$tmp/node.conf" --checkpoint "$tmp/ck.h5" -o "$tmp/resumed.h5" \
  >"$tmp/resumed.out" 2>"$tmp/resumed.err" || fail "train-local --checkpoint (resume)"
grep -q "resumed from" "$tmp/resumed.err" || fail "no 'resumed from' log line"
[ "$(grep -c '^epoch: ' "$tmp/resumed.out")" -eq 1 ] || fail "resumed run should train 1 epoch"
for k in loss accuracy macro_f1; do
  a=$(val "valid_$k" "$tmp/resumed.out"); b=$(val "valid_$k" "$tmp/train.out")
  [ "$a" = "$b" ] || fail "resumed run valid_$k '$a' differs from the uninterrupted '$b'"
done

# ... model.labels_top_k: the 3 most frequent labels, other records skipped; eval re-reads
# the file the same way (its labels come from the adapter)
sed 's/^labels = .*/# no data.labels/; s/^lora.r = 4$/lora.r = 4\nlabels_top_k = 3/' "$tmp/node.conf" >"$tmp/topk.conf"
"$node" train-local -c "$tmp/topk.conf" --epochs 1 -o "$tmp/topk.h5" >"$tmp/topk.out" 2>"$tmp/topk.err" \
  || fail "train-local labels_top_k: $(tail -2 "$tmp/topk.err")"
[ "$(val labels "$tmp/topk.out")" = 3 ] || fail "labels_top_k = 3 gave $(val labels "$tmp/topk.out") labels"
grep -q "skipped" "$tmp/topk.err" || fail "skipped records not reported"
"$node" eval -c "$tmp/topk.conf" --adapter "$tmp/topk.h5" >"$tmp/topk.eval" 2>/dev/null || fail "eval labels_top_k"
[ "$(val macro_f1 "$tmp/topk.eval")" = "$(val valid_macro_f1 "$tmp/topk.out")" ] || fail "eval differs (labels_top_k)"
sed 's/^lora.r = 4$/lora.r = 4\nlabels_top_k = 3/' "$tmp/node.conf" >"$tmp/both.conf"
bad_both=$("$node" train-local -c "$tmp/both.conf" 2>&1 >/dev/null) && fail "data.labels + labels_top_k accepted"
echo "$bad_both" | grep -q "only one" || fail "data.labels + labels_top_k: $bad_both"

# 3. DP-SGD: sigma from the accountant's inverse, epsilon within the target
sed 's/^threads = 1$/threads = 1\n[privacy]\nenabled = true\ntarget_epsilon = 5\ndelta = 1e-5\nclip_norm = 1.0/' \
  "$tmp/node.conf" >"$tmp/dp.conf"
"$node" train-local -c "$tmp/dp.conf" --device cpu -o "$tmp/dp.h5" >"$tmp/dp.out" 2>"$tmp/dp.err" \
  || fail "train-local DP: $(tail -3 "$tmp/dp.err")"
eps=$(val dp_epsilon "$tmp/dp.out"); sigma=$(val dp_noise_multiplier "$tmp/dp.out")
[ -n "$eps" ] && [ -n "$sigma" ] || fail "DP run printed no dp_epsilon / dp_noise_multiplier"
awk -v e="$eps" 'BEGIN { exit !(e <= 5.0 && e > 4.0) }' || fail "epsilon $eps not just below the target 5"
q=$(val dp_sample_rate "$tmp/dp.out"); steps=$(val dp_steps "$tmp/dp.out")
e2=$("$node" privacy --sample-rate "$q" --noise-multiplier "$sigma" --steps "$steps" --delta 1e-5 | sed -n 's/^epsilon: //p')
awk -v a="$eps" -v b="$e2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-3) }' \
  || fail "train-local epsilon $eps differs from medfl-node privacy's $e2"

# 4. the de-identification gate refuses flagged records (exit 3), redact trains
python3 - "$tmp" <<'PY' || exit 1
import json, sys
t = sys.argv[1]
rows = [json.loads(l) for l in open(f"{t}/synth/site-1/train.jsonl")]
rows[4]["text"] = "Mr. John Smith, MRN: 44812345, seen 03/14/2021. " + rows[4]["text"]
with open(f"{t}/phi.jsonl", "w") as f:
    for r in rows: f.write(json.dumps(r) + "\n")
PY
"$node" train-local -c "$tmp/node.conf" --records "$tmp/phi.jsonl" -o "$tmp/phi.h5" >/dev/null 2>"$tmp/phi.err"; rc=$?
[ $rc -eq 3 ] || fail "PHI under policy refuse: exit $rc, expected 3"
grep -q "PHI" "$tmp/phi.err" || fail "no PHI message: $(cat "$tmp/phi.err")"
grep -q "John Smith" "$tmp/phi.err" && fail "the PHI itself was printed"
[ -e "$tmp/phi.h5" ] && fail "an adapter was written despite the refusal"

# 5. config and data errors
bad() { # $1 = expected text, rest = command
  local want=$1; shift
  "$@" >/dev/null 2>"$tmp/bad.err" && fail "'$*' succeeded"
  grep -q -- "$want" "$tmp/bad.err" || fail "'$*': message lacks '$want': $(cat "$tmp/bad.err")"
}
grep -v '^labels = ' "$tmp/node.conf" >"$tmp/nolabels.conf"
bad "data.labels" "$node" train-local -c "$tmp/nolabels.conf"
sed 's/^epochs = 2$/epochs = 0/' "$tmp/node.conf" >"$tmp/epochs.conf"
bad "train.epochs" "$node" train-local -c "$tmp/epochs.conf"
sed 's/^base = base.h5$/base = nothere.h5/' "$tmp/node.conf" >"$tmp/nobase.conf"
bad "nothere.h5" "$node" train-local -c "$tmp/nobase.conf"
sed 's/^labels = .*/labels = cardiology,oncology/' "$tmp/node.conf" >"$tmp/labels.conf"
bad "label" "$node" train-local -c "$tmp/labels.conf"
bad "adapter" "$node" eval -c "$tmp/node.conf"
bad "missing.h5" "$node" eval -c "$tmp/node.conf" --adapter "$tmp/missing.h5"
echo "PASS $name"
