#!/usr/bin/env bash
# Federated fine-tuning of the real model trainer end to end, on the tiny BERT fixture
# (tests/ref/fixtures/tiny_bert) and `medfl-node synth` records for 3 hospitals:
# import-model, init-adapter -> init-version (the federation's first signed version), then
# an aggregator and 3 nodes (round.trainer = model) on loopback over CURVE run 3 rounds
# with secure aggregation, DP-SGD and random-k compression. Checks: rounds_completed: 3,
# the aggregator's chain verifies, every node holds and verifies the same head, each node's
# privacy ledger recorded the rounds, evaluation reports arrived, the head version
# differs from the genesis (the federation trained something), the head's export names the
# consortium's labels and pooling (carried from the genesis through every round's version),
# `versions` shows its accuracy, and each node trained with the round's lr and DP sampling
# rate (RoundStart), not its own train.lr.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# a short name: `versions --key-dir` takes a 64-character key path for a hex key
it_setup fedmodel
IT_POLL=0.3
status_field() { "$AGG" status -c "$AC" 2>/dev/null | field "$1"; }
completed_at_least() { [ "$(status_field rounds_completed)" -ge "$1" ] 2>/dev/null; }
running_or_done() { # stop waiting early when the aggregator or every node died
  completed_at_least "$1" && return 0
  kill -0 "${PIDS[agg]}" 2>/dev/null || return 0
  kill -0 "${PIDS[n1]}" 2>/dev/null || kill -0 "${PIDS[n2]}" 2>/dev/null || kill -0 "${PIDS[n3]}" 2>/dev/null || return 0
  return 1
}
head_hash() { "$AGG" versions --state "$1" --key-dir "$T/agg/keys" 2>/dev/null | awk '$1 ~ /^\*/ { print $1, $5 }'; }

"$NODE" import-model --hf tests/ref/fixtures/tiny_bert -o "$T/base.h5" >"$T/import.out" 2>&1 ||
  { fail "import-model" "$T/import.out"; exit 1; }
"$NODE" synth --sites 3 --records-per-site 120 --seed 7 -o "$T/synth" >"$T/synth.out" 2>&1 ||
  { fail "synth" "$T/synth.out"; exit 1; }
labels=$(cat "$T/synth/labels.txt")
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$T/agg"
AC="$T/agg/aggregator.conf"
cat >"$AC" <<EOF
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$PORT
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 3000
[registry]
poll_ms = 200
[federation]
rounds = 3
min_nodes = 3
max_nodes = 3
select_wait_ms = 500
keys_deadline_ms = 5000
shares_deadline_ms = 5000
train_deadline_ms = 120000
unmask_deadline_ms = 5000
eval_deadline_ms = 30000
weighting = contribution
local_steps = 4
# the nodes train with the round's lr and batch size (their train.* is only a fallback)
lr = 3e-3
batch_size = 8
[privacy]
dp = on
noise_multiplier = 1.0
clip_norm = 1.0
sample_rate = 0.1
delta = 1e-5
[compression]
scheme = randk
bits = 8
k_frac = 0.5
clip = 0.5
EOF
"$AGG" keygen -c "$AC" >"$T/agg/keygen.out" 2>&1 || { fail "keygen" "$T/agg/keygen.out"; exit 1; }
for i in 1 2 3; do
  mkdir -p "$T/n$i"
  cat >"$T/n$i/node.conf" <<EOF
node_id = hospital-$i
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = tcp://127.0.0.1:$PORT
public_key_file = ../agg/keys/curve.pub
identity_key = $T/agg/keys/identity.pub
[net]
heartbeat_interval_ms = 200
heartbeat_misses = 10
[round]
trainer = model
[data]
records = ../synth/site-$i/train.jsonl
labels = $labels
[deid]
policy = redact
[model]
base = ../base.h5
lora.r = 4
lora.targets = query,value
[train]
optimizer = adamw
batch_size = 8
lr = 3e-3
max_seq_len = 48
valid_fraction = 0.2
threads = 1
seed = 3
[privacy]
epsilon_budget = 50
delta = 1e-5
EOF
  keygen_enroll "$T/n$i" "hospital-$i" "$AC" "$T/agg/enroll.out" ||
    { fail "keys/enroll" "$T/n$i/keygen.out" "$T/agg/enroll.out"; exit 1; }
done
if "$NODE" init-adapter -c "$T/n1/node.conf" -o "$T/genesis" >"$T/init.out" 2>&1 &&
  "$AGG" init-version --from "$T/genesis" --key-dir "$T/agg/keys" --state "$T/agg/state" >"$T/initv.out" 2>&1; then
  pass "init-adapter + init-version seed the federation ($(field parameters <"$T/init.out") parameters)"
else
  fail "init-adapter / init-version" "$T/init.out" "$T/initv.out"; exit 1
fi
genesis=$(head_hash "$T/agg/state")

"$AGG" run -c "$AC" >>"$T/agg/agg.log" 2>&1 &
PIDS[agg]=$!
for i in 1 2 3; do
  "$NODE" run -c "$T/n$i/node.conf" >>"$T/n$i/node.log" 2>&1 &
  PIDS[n$i]=$!
done
wait_until 240 running_or_done 3
if completed_at_least 3; then
  pass "3 secure rounds with DP-SGD and random-k on the tiny model completed"
else
  fail "rounds_completed $(status_field rounds_completed)" "$T/agg/agg.log" "$T/n1/node.log"
fi
"$AGG" versions --state "$T/agg/state" --key-dir "$T/agg/keys" >"$T/versions.out" 2>&1
if [ $? -eq 0 ] && [ "$(field versions <"$T/versions.out")" = 4 ] && [ "$(field verified <"$T/versions.out")" = 4 ]; then
  pass "the chain of 4 versions verifies"
else
  fail "version chain" "$T/versions.out"
fi
want=$(head_hash "$T/agg/state")
same=1
for i in 1 2 3; do
  wait_until 20 test "$(head_hash "$T/n$i/state")" = "$want" || same=0
done
if [ $same = 1 ] && [ -n "$want" ] && [ "$want" != "$genesis" ]; then
  pass "every node holds and verifies the same head ($want), which differs from the genesis"
else
  fail "heads differ or nothing trained (head '$want', genesis '$genesis')" "$T/n2/node.log"
fi
ok=1
for i in 1 2 3; do
  "$NODE" privacy -c "$T/n$i/node.conf" >"$T/n$i/privacy.out" 2>&1 &&
    [ "$(field rounds_admitted <"$T/n$i/privacy.out")" -ge 3 ] || ok=0
done
if [ $ok = 1 ] && grep -q "evaluated version 4" "$T/agg/agg.log"; then
  pass "ledgers recorded every round; nodes evaluated the last version"
else
  fail "ledger or evaluation missing" "$T/n1/privacy.out" "$T/agg/agg.log"
fi
# the consortium's labels (data.labels, recorded at init-adapter -> init-version) and pooling are
# carried by every round's version into the export of the head, with the nodes' evaluation
"$AGG" export 4 --peft "$T/export" --state "$T/agg/state" --key-dir "$T/agg/keys" >"$T/export.out" 2>&1
got=$(python3 -c 'import json, sys; c = json.load(open(sys.argv[1]))
print(",".join(c["id2label"][str(i)] for i in range(c["num_labels"])), c["medfl_pooling"])' \
  "$T/export/label_config.json" 2>&1)
head_acc() { "$AGG" versions --state "$T/agg/state" 2>/dev/null | awk '$1 == "*4" { print $7 }'; }
wait_until 30 eval '[[ "$(head_acc)" =~ ^[01]\.[0-9]{4}$ ]]'  # the nodes' reports of v4 may still arrive
acc=$(head_acc)
if [ "$got" = "$labels mean" ] && grep -q '^- \*\*Pooling\*\* .*\*\*mean\*\*' "$T/export/README.md" &&
   [[ "$acc" =~ ^[01]\.[0-9]{4}$ ]]; then
  pass "the head's export names the consortium's labels in order and mean pooling; versions shows its accuracy $acc"
else
  fail "labels/pooling not carried to the export ($got) or no accuracy ('$acc')" "$T/export.out" "$T/agg/agg.log"
fi
# the round's hyperparameters (lr 3e-3, DP sampling rate 0.1 from [federation] and [privacy])
# drove every node's trainer; under DP the batch is the Poisson draw, q x the training records
ok=1
for i in 1 2 3; do
  [ "$(grep -c "round [0-9]*: lr 0.003 (from the round), DP-SGD Poisson batches at q 0.1 (from the round): expected batch [0-9.]* = q x [0-9]* training records, 4 local steps" "$T/n$i/node.log")" -ge 3 ] || ok=0
done
if [ $ok = 1 ]; then
  pass "every node trained each round with the round's lr and DP sampling rate (logged)"
else
  fail "nodes did not use the round's hyperparameters" "$T/n1/node.log"
fi
it_summary
