#!/usr/bin/env bash
# `medfl-node train-local` under SIGTERM: the run stops after the current optimizer step
# (mid-epoch), saves adapter + AdamW state to --checkpoint, prints `stopped_at_step: N` and
# exits 0; resumed from that checkpoint to step N + 7 it ends exactly where an uninterrupted
# run to step N + 7 ends (same evaluation figures, printed to 6 decimals). Without
# --checkpoint the stop is a failure that says nothing was saved. Tiny BERT fixture
# (tests/ref/fixtures/tiny_bert), synthetic records.
set -u
name=test_train_local_sigterm
node="${MEDFL_BIN:?}/medfl-node"
tmp=$(mktemp -d /tmp/medfl-train-sigterm-XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
fail() { echo "FAIL $name: $*"; exit 1; }
val() { sed -n "s/^$1: //p" "$2" | tail -n 1; }
wait_for() { # wait_for SECONDS COMMAND...
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -ge $end ] && return 1; sleep 0.1; done
}

"$node" import-model --hf tests/ref/fixtures/tiny_bert -o "$tmp/base.h5" >/dev/null 2>"$tmp/import.err" \
  || fail "import-model: $(cat "$tmp/import.err")"
"$node" synth --sites 1 --records-per-site 200 --seed 5 --alpha 50 -o "$tmp/synth" >/dev/null 2>&1 \
  || fail "synth failed"
labels=$(cat "$tmp/synth/labels.txt")
cat >"$tmp/node.conf" <<CONF
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
"$node" train-local -c "$tmp/node.conf" --device cpu --checkpoint "$tmp/ck.h5" -o "$tmp/never.h5" \
  >"$tmp/run1.out" 2>"$tmp/run1.err" &
pid=$!; pids+=($pid)
wait_for 120 grep -q '^epoch: 1$' "$tmp/run1.out" || fail "no first epoch: $(tail -3 "$tmp/run1.err")"
sleep 0.3
kill -TERM $pid
wait $pid; rc=$?
n=$(val stopped_at_step "$tmp/run1.out")
[ $rc -eq 0 ] || fail "train-local exited $rc after SIGTERM: $(tail -3 "$tmp/run1.err")"
[ -n "$n" ] && [ "$n" -gt 0 ] || fail "no stopped_at_step line"
[ "$(val checkpoint "$tmp/run1.out")" = "$tmp/ck.h5" ] && [ -s "$tmp/ck.h5" ] || fail "no checkpoint written"
[ ! -e "$tmp/never.h5" ] || fail "an adapter was written although the run was stopped"
grep -q "stopped by a signal at step $n" "$tmp/run1.err" || fail "stop not logged"
echo "PASS $name: SIGTERM -> stopped at step $n, checkpoint written, exit 0"

# 2. resumed to N + 7 = uninterrupted to N + 7
to=$((n + 7))
"$node" train-local -c "$tmp/node.conf" --device cpu --checkpoint "$tmp/ck.h5" --max-steps $to \
  -o "$tmp/resumed.h5" >"$tmp/resumed.out" 2>"$tmp/resumed.err" || fail "resume: $(tail -3 "$tmp/resumed.err")"
grep -q "resumed from $tmp/ck.h5 at step $n of" "$tmp/resumed.err" || fail "resume did not start at step $n"
"$node" train-local -c "$tmp/node.conf" --device cpu --max-steps $to -o "$tmp/straight.h5" \
  >"$tmp/straight.out" 2>"$tmp/straight.err" || fail "uninterrupted run: $(tail -3 "$tmp/straight.err")"
for h in resumed straight; do
  "$node" eval -c "$tmp/node.conf" --adapter "$tmp/$h.h5" --device cpu >"$tmp/$h.eval" 2>/dev/null || fail "eval $h"
done
for k in loss accuracy macro_f1 n; do
  a=$(val "$k" "$tmp/resumed.eval"); b=$(val "$k" "$tmp/straight.eval")
  [ -n "$a" ] && [ "$a" = "$b" ] || fail "resumed $k '$a' differs from uninterrupted '$b'"
done
echo "PASS $name: resumed from step $n to $to = uninterrupted run to $to (valid loss $(val loss "$tmp/resumed.eval"))"

# 3. without --checkpoint a stop loses the run and says so
"$node" train-local -c "$tmp/node.conf" --device cpu -o "$tmp/lost.h5" >"$tmp/run3.out" 2>"$tmp/run3.err" &
pid=$!; pids+=($pid)
wait_for 120 grep -q 'step' "$tmp/run3.err" || fail "run 3 never started"
kill -TERM $pid
wait $pid; rc=$?
[ $rc -ne 0 ] && grep -q "stopped by a signal at step [0-9]*; nothing saved" "$tmp/run3.err" ||
  fail "stop without --checkpoint: exit $rc, $(tail -2 "$tmp/run3.err")"
echo "PASS $name: without --checkpoint the stop fails and says nothing was saved"
