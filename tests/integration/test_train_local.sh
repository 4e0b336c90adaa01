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
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_train_local
node="${MEDFL_BIN:?}/medfl-node"
val() { sed -n "s/^$1: //p" "$2" | tail -n 1; }

"$node" import-model --hf tests/ref/fixtures/tiny_bert -o "$T/base.h5" >/dev/null 2>"$T/import.err" \
  || die "import-model: $(cat "$T/import.err")"
"$node" synth --sites 1 --records-per-site 200 --seed 5 --alpha 50 -o "$T/synth" >/dev/null 2>&1 \
  || die "synth failed"
labels=$(cat "$T/synth/labels.txt")
cat >"$T/node.conf" <<CONF
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
lora.targets = query,value
[train]
optimizer = adamw
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
"$node" train-local -c "$T/node.conf" --device cpu -o "$T/adapter.h5" >"$T/train.out" 2>"$T/train.err" \
  || die "train-local: $(tail -3 "$T/train.err")"
for k in records_train records_valid records_test labels epoch train_loss valid_loss \
         valid_accuracy valid_macro_f1 valid_n adapter valid_majority_macro_f1; do
  grep -q "^$k: " "$T/train.out" || die "train-local printed no '$k:' line"
done
[ "$(grep -c '^epoch: ' "$T/train.out")" -eq 2 ] || die "expected 2 epoch lines"
[ -s "$T/adapter.h5" ] || die "no adapter written"
grep -q "step" "$T/train.err" || die "no progress lines on stderr"
l1=$(grep '^train_loss: ' "$T/train.out" | head -1 | cut -d' ' -f2)
l2=$(val train_loss "$T/train.out")
awk -v a="$l1" -v b="$l2" 'BEGIN { exit !(b < a) }' || die "train loss did not fall ($l1 -> $l2)"

# 2. eval on the validation split equals the last epoch's figures
"$node" eval -c "$T/node.conf" --adapter "$T/adapter.h5" --device cpu >"$T/eval.out" 2>"$T/eval.err" \
  || die "eval: $(tail -3 "$T/eval.err")"
for k in loss accuracy macro_f1 n; do
  a=$(val "$k" "$T/eval.out"); b=$(val "valid_$k" "$T/train.out")
  [ -n "$a" ] && [ "$a" = "$b" ] || die "eval $k '$a' differs from last epoch's valid_$k '$b'"
done
# ... on the test split and on a whole other file
"$node" eval -c "$T/node.conf" --adapter "$T/adapter.h5" --split test >"$T/test.out" 2>/dev/null \
  || die "eval --split test"
[ "$(val n "$T/test.out")" = "$(val records_test "$T/train.out")" ] || die "test split size differs"
"$node" eval -c "$T/node.conf" --adapter "$T/adapter.h5" --records "$T/synth/site-1/test.jsonl" \
  >"$T/file.out" 2>/dev/null || die "eval --records"
[ "$(val n "$T/file.out")" = "$(grep -c . "$T/synth/site-1/test.jsonl")" ] || die "eval --records n"

# ... --checkpoint: a run stopped after epoch 1 and restarted ends where an uninterrupted
# run ends (same eval figures)
"$node" train-local -c "$T/node.conf" --max-steps 13 --checkpoint "$T/ck.h5" -o "$T/part.h5" \
  >"$T/part.out" 2>/dev/null || die "train-local --checkpoint (part 1)"
"$node" train-local -c "$T/node.conf" --checkpoint "$T/ck.h5" -o "$T/resumed.h5" \
  >"$T/resumed.out" 2>"$T/resumed.err" || die "train-local --checkpoint (resume)"
grep -q "resumed from" "$T/resumed.err" || die "no 'resumed from' log line"
[ "$(grep -c '^epoch: ' "$T/resumed.out")" -eq 1 ] || die "resumed run should train 1 epoch"
for k in loss accuracy macro_f1; do
  a=$(val "valid_$k" "$T/resumed.out"); b=$(val "valid_$k" "$T/train.out")
  [ "$a" = "$b" ] || die "resumed run valid_$k '$a' differs from the uninterrupted '$b'"
done

# ... model.labels_top_k: the 3 most frequent labels, other records skipped; eval re-reads
# the file the same way (its labels come from the adapter)
sed 's/^labels = .*/# no data.labels/; s/^lora.r = 4$/lora.r = 4\nlabels_top_k = 3/' "$T/node.conf" >"$T/topk.conf"
"$node" train-local -c "$T/topk.conf" --epochs 1 -o "$T/topk.h5" >"$T/topk.out" 2>"$T/topk.err" \
  || die "train-local labels_top_k: $(tail -2 "$T/topk.err")"
[ "$(val labels "$T/topk.out")" = 3 ] || die "labels_top_k = 3 gave $(val labels "$T/topk.out") labels"
grep -q "skipped" "$T/topk.err" || die "skipped records not reported"
"$node" eval -c "$T/topk.conf" --adapter "$T/topk.h5" >"$T/topk.eval" 2>/dev/null || die "eval labels_top_k"
[ "$(val macro_f1 "$T/topk.eval")" = "$(val valid_macro_f1 "$T/topk.out")" ] || die "eval differs (labels_top_k)"
# ... several --adapter: each evaluated in turn on the same records, figures equal to
# one eval per adapter (LoRA, and head-only adapters sharing one encoder pass); a second
# adapter with another label set is refused
block() { awk -v a="adapter: $2" -v k="$1:" '$0 == a { on = 1; next } /^adapter: / { on = 0 } on && $1 == k { print $2 }' "$3"; }
"$node" eval -c "$T/node.conf" --adapter "$T/part.h5" >"$T/part.eval" 2>/dev/null || die "eval part.h5"
"$node" eval -c "$T/node.conf" --adapter "$T/adapter.h5" --adapter "$T/part.h5" >"$T/multi.eval" \
  2>/dev/null || die "eval with two adapters"
for k in loss accuracy macro_f1 n; do
  [ "$(block "$k" "$T/adapter.h5" "$T/multi.eval")" = "$(val "$k" "$T/eval.out")" ] &&
    [ "$(block "$k" "$T/part.h5" "$T/multi.eval")" = "$(val "$k" "$T/part.eval")" ] ||
    die "two-adapter eval $k differs from single evals"
done
sed 's/^lora.targets = query,value$/lora.targets = none/' "$T/node.conf" >"$T/head.conf"
for s in 1 2; do
  "$node" train-local -c "$T/head.conf" --epochs "$s" -o "$T/head$s.h5" >/dev/null 2>&1 || die "head-only train-local"
  "$node" eval -c "$T/head.conf" --adapter "$T/head$s.h5" >"$T/head$s.eval" 2>/dev/null || die "head-only eval"
done
"$node" eval -c "$T/head.conf" --adapter "$T/head1.h5" --adapter "$T/head2.h5" >"$T/heads.eval" 2>/dev/null ||
  die "eval with two head-only adapters"
for s in 1 2; do
  [ "$(block macro_f1 "$T/head$s.h5" "$T/heads.eval")" = "$(val macro_f1 "$T/head$s.eval")" ] &&
    [ "$(block loss "$T/head$s.h5" "$T/heads.eval")" = "$(val loss "$T/head$s.eval")" ] ||
    die "two head-only adapters: figures of head$s.h5 differ from its own eval"
done
bad_labels=$("$node" eval -c "$T/node.conf" --adapter "$T/adapter.h5" --adapter "$T/topk.h5" 2>&1 >/dev/null) &&
  die "adapters with different label sets accepted"
echo "$bad_labels" | grep -q "label set differs" || die "label-set mismatch: $bad_labels"
sed 's/^lora.r = 4$/lora.r = 4\nlabels_top_k = 3/' "$T/node.conf" >"$T/both.conf"
bad_both=$("$node" train-local -c "$T/both.conf" 2>&1 >/dev/null) && die "data.labels + labels_top_k accepted"
echo "$bad_both" | grep -q "only one" || die "data.labels + labels_top_k: $bad_both"

# 3. DP-SGD: sigma from the accountant's inverse, epsilon within the target
# ([privacy] goes at the end: inserted mid-[train], it swallowed `seed = 3` as privacy.seed,
# which went unnoticed until train-local refused unknown keys)
{ cat "$T/node.conf"; printf '[privacy]\nenabled = true\ntarget_epsilon = 5\ndelta = 1e-5\nclip_norm = 1.0\n'; } \
  >"$T/dp.conf"
"$node" train-local -c "$T/dp.conf" --device cpu -o "$T/dp.h5" >"$T/dp.out" 2>"$T/dp.err" \
  || die "train-local DP: $(tail -3 "$T/dp.err")"
eps=$(val dp_epsilon "$T/dp.out"); sigma=$(val dp_noise_multiplier "$T/dp.out")
[ -n "$eps" ] && [ -n "$sigma" ] || die "DP run printed no dp_epsilon / dp_noise_multiplier"
awk -v e="$eps" 'BEGIN { exit !(e <= 5.0 && e > 4.0) }' || die "epsilon $eps not just below the target 5"
q=$(val dp_sample_rate "$T/dp.out"); steps=$(val dp_steps "$T/dp.out")
e2=$("$node" privacy --sample-rate "$q" --noise-multiplier "$sigma" --steps "$steps" --delta 1e-5 | sed -n 's/^epsilon: //p')
awk -v a="$eps" -v b="$e2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-3) }' \
  || die "train-local epsilon $eps differs from medfl-node privacy's $e2"

# 4. the de-identification gate refuses flagged records (exit 3), redact trains
python3 - "$T" <<'PY' || exit 1
import json, sys
t = sys.argv[1]
rows = [json.loads(l) for l in open(f"{t}/synth/site-1/train.jsonl")]
rows[4]["text"] = "Mr. John Smith, MRN: 44812345, seen 03/14/2021. " + rows[4]["text"]
with open(f"{t}/phi.jsonl", "w") as f:
    for r in rows: f.write(json.dumps(r) + "\n")
PY
"$node" train-local -c "$T/node.conf" --records "$T/phi.jsonl" -o "$T/phi.h5" >/dev/null 2>"$T/phi.err"; rc=$?
[ $rc -eq 3 ] || die "PHI under policy refuse: exit $rc, expected 3"
grep -q "PHI" "$T/phi.err" || die "no PHI message: $(cat "$T/phi.err")"
grep -q "John Smith" "$T/phi.err" && die "the PHI itself was printed"
[ -e "$T/phi.h5" ] && die "an adapter was written despite the refusal"

# 5. config and data errors
bad() { # $1 = expected text, rest = command
  local want=$1; shift
  "$@" >/dev/null 2>"$T/bad.err" && die "'$*' succeeded"
  grep -q -- "$want" "$T/bad.err" || die "'$*': message lacks '$want': $(cat "$T/bad.err")"
}
grep -v '^labels = ' "$T/node.conf" >"$T/nolabels.conf"
bad "data.labels" "$node" train-local -c "$T/nolabels.conf"
sed 's/^epochs = 2$/epochs = 0/' "$T/node.conf" >"$T/epochs.conf"
bad "train.epochs" "$node" train-local -c "$T/epochs.conf"
sed 's/^base = base.h5$/base = nothere.h5/' "$T/node.conf" >"$T/nobase.conf"
bad "nothere.h5" "$node" train-local -c "$T/nobase.conf"
sed 's/^labels = .*/labels = cardiology,oncology/' "$T/node.conf" >"$T/labels.conf"
bad "label" "$node" train-local -c "$T/labels.conf"
bad "adapter" "$node" eval -c "$T/node.conf"
bad "missing.h5" "$node" eval -c "$T/node.conf" --adapter "$T/missing.h5"
echo "PASS $name"
