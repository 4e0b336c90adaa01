#!/usr/bin/env bash
# `medfl-node train-local` under SIGTERM: the run stops after the current optimizer step
# (mid-epoch), saves adapter + AdamW state to --checkpoint, prints `stopped_at_step: N` and
# exits 0; resumed from that checkpoint to step N + 7 it ends exactly where an uninterrupted
# run to step N + 7 ends (same evaluation figures, printed to 6 decimals). Without
# --checkpoint the stop is a failure that says nothing was saved. Tiny BERT fixture
# (tests/ref/fixtures/tiny_bert), synthetic records.
set -u
node="${MEDFL_BIN:?}/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_train_local_sigterm
IT_PREFIX="$name: "
IT_POLL=0.1
val() { sed -n "s/^$1: //p" "$2" | tail -n 1; }

"$node" import-model --hf tests/ref/fixtures/tiny_bert -o "$T/base.h5" >/dev/null 2>"$T/import.err" \
  || die "import-model: $(cat "$T/import.err")"
"$node" synth --sites 1 --records-per-site 200 --seed 5 --alpha 50 -o "$T/synth" >/dev/null 2>&1 \
  || die "synth failed"
labels=$(cat "$T/synth/labels.txt")
cat >"$T/node.conf" <<CONF
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
epochs = 40
batch_size = 8
lr = 3e-3
max_seq_len = 48
valid_fraction = 0.2
test_fraction = 0.1
threads = 1
seed = 3
CONF

# 1. SIGTERM during epoch 2 (the first epoch line is out): checkpoint, exit 0
"$node" train-local -c "$T/node.conf" --device cpu --checkpoint "$T/ck.h5" -o "$T/never.h5" \
  >"$T/run1.out" 2>"$T/run1.err" &
PIDS[run]=$!
wait_until 120 grep -q '^epoch: 1$' "$T/run1.out" || die "no first epoch: $(tail -3 "$T/run1.err")"
sleep 0.3
kill -TERM "${PIDS[run]}"
reap run; rc=$?
n=$(val stopped_at_step "$T/run1.out")
[ $rc -eq 0 ] || die "train-local exited $rc after SIGTERM: $(tail -3 "$T/run1.err")"
[ -n "$n" ] && [ "$n" -gt 0 ] || die "no stopped_at_step line"
[ "$(val checkpoint "$T/run1.out")" = "$T/ck.h5" ] && [ -s "$T/ck.h5" ] || die "no checkpoint written"
[ ! -e "$T/never.h5" ] || die "an adapter was written although the run was stopped"
grep -q "stopped by a signal at step $n" "$T/run1.err" || die "stop not logged"
pass "SIGTERM -> stopped at step $n, checkpoint written, exit 0"

# 2. resumed to N + 7 = uninterrupted to N + 7
to=$((n + 7))
"$node" train-local -c "$T/node.conf" --device cpu --checkpoint "$T/ck.h5" --max-steps $to \
  -o "$T/resumed.h5" >"$T/resumed.out" 2>"$T/resumed.err" || die "resume: $(tail -3 "$T/resumed.err")"
grep -q "resumed from $T/ck.h5 at step $n of" "$T/resumed.err" || die "resume did not start at step $n"
"$node" train-local -c "$T/node.conf" --device cpu --max-steps $to -o "$T/straight.h5" \
  >"$T/straight.out" 2>"$T/straight.err" || die "uninterrupted run: $(tail -3 "$T/straight.err")"
for h in resumed straight; do
  "$node" eval -c "$T/node.conf" --adapter "$T/$h.h5" --device cpu >"$T/$h.eval" 2>/dev/null || die "eval $h"
done
for k in loss accuracy macro_f1 n; do
  a=$(val "$k" "$T/resumed.eval"); b=$(val "$k" "$T/straight.eval")
  [ -n "$a" ] && [ "$a" = "$b" ] || die "resumed $k '$a' differs from uninterrupted '$b'"
done
pass "resumed from step $n to $to = uninterrupted run to $to (valid loss $(val loss "$T/resumed.eval"))"

# 3. without --checkpoint a stop loses the run and says so
"$node" train-local -c "$T/node.conf" --device cpu -o "$T/lost.h5" >"$T/run3.out" 2>"$T/run3.err" &
PIDS[run]=$!
wait_until 120 grep -q 'step' "$T/run3.err" || die "run 3 never started"
kill -TERM "${PIDS[run]}"
reap run; rc=$?
[ $rc -ne 0 ] && grep -q "stopped by a signal at step [0-9]*; nothing saved" "$T/run3.err" ||
  die "stop without --checkpoint: exit $rc, $(tail -2 "$T/run3.err")"
pass "without --checkpoint the stop fails and says nothing was saved"
it_summary
