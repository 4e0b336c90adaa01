#!/usr/bin/env bash
# Distributed DP noise end to end (docs/privacy.md section 10), on the tiny BERT fixture and
# `medfl-node synth` records for 3 hospitals: the aggregator offers distributed noise with
# secure aggregation (threshold 3 of 3) and 16-bit quantization; hospitals 1 and 2 accept it
# (privacy.distributed_noise = true) and hospital 3 does not. Head-only plain SGD with one
# local step, so the update is linear in the clipped gradients. Checks: 3 rounds complete
# and the chain verifies; hospitals 1 and 2 add sigma / sqrt(3) in the ring and their
# ledgers charge exactly the accounted sigma they log (recomputed with the what-if
# calculator); hospital 3 adds all of sigma and says why; a second federation at 6 bits,
# where rounding would dominate a record's effect, makes the willing nodes refuse to share.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup distnoise
IT_POLL=0.3
status_field() { "$AGG" status -c "$1" 2>/dev/null | field "$2"; }
completed() { [ "$(status_field "$1" rounds_completed)" -ge "$2" ] 2>/dev/null; }

"$NODE" import-model --hf tests/ref/fixtures/tiny_bert -o "$T/base.h5" >"$T/import.out" 2>&1 ||
  { fail "import-model" "$T/import.out"; exit 1; }
"$NODE" synth --sites 3 --records-per-site 120 --seed 7 -o "$T/synth" >"$T/synth.out" 2>&1 ||
  { fail "synth" "$T/synth.out"; exit 1; }
labels=$(cat "$T/synth/labels.txt")

# federation DIR BITS ROUNDS: writes the configs, enrolls, seeds the genesis, runs ROUNDS
# rounds, stops the daemons. Returns 1 when the rounds did not complete.
federation() {
  local D="$1" bits="$2" rounds="$3" port
  port=$(free_port)
  mkdir -p "$D/agg"
  cat >"$D/agg/aggregator.conf" <<EOF
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$port
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 3000
[registry]
poll_ms = 200
[federation]
rounds = $rounds
min_nodes = 3
max_nodes = 3
select_wait_ms = 500
train_deadline_ms = 120000
eval_deadline_ms = 30000
threshold = 1.0
local_steps = 1
lr = 0.5
batch_size = 8
[privacy]
dp = on
distributed = on
noise_multiplier = 1.0
clip_norm = 1.0
sample_rate = 0.2
delta = 1e-5
[compression]
scheme = quantize
bits = $bits
clip = 0.5
EOF
  "$AGG" keygen -c "$D/agg/aggregator.conf" >"$D/agg/keygen.out" 2>&1 || return 1
  for i in 1 2 3; do
    mkdir -p "$D/n$i"
    cat >"$D/n$i/node.conf" <<EOF
node_id = hospital-$i
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = tcp://127.0.0.1:$port
public_key_file = ../agg/keys/curve.pub
identity_key = $D/agg/keys/identity.pub
[net]
heartbeat_interval_ms = 200
heartbeat_misses = 10
[round]
trainer = model
[data]
records = $T/synth/site-$i/train.jsonl
labels = $labels
[deid]
policy = redact
[model]
base = $T/base.h5
lora.targets = none
[train]
optimizer = sgd
warmup_fraction = 0
max_seq_len = 48
valid_fraction = 0.2
threads = 1
seed = 3
[privacy]
epsilon_budget = 50
delta = 1e-5
distributed_noise = $([ "$i" = 3 ] && echo false || echo true)
EOF
    keygen_enroll "$D/n$i" "hospital-$i" "$D/agg/aggregator.conf" "$D/agg/enroll.out" || return 1
  done
  "$NODE" init-adapter -c "$D/n1/node.conf" -o "$D/genesis" >"$D/init.out" 2>&1 &&
    "$AGG" init-version --from "$D/genesis" --key-dir "$D/agg/keys" --state "$D/agg/state" \
      >"$D/initv.out" 2>&1 || return 1
  start agg "$D/agg/agg.log" "$AGG" run -c "$D/agg/aggregator.conf"
  for i in 1 2 3; do start "n$i" "$D/n$i/node.log" "$NODE" run -c "$D/n$i/node.conf"; done
  wait_until 180 completed "$D/agg/aggregator.conf" "$rounds"
  local rc=$?
  local p
  for p in agg n1 n2 n3; do kill "${PIDS[$p]}" 2>/dev/null; reap "$p"; done
  return $rc
}

F="$T/f16"
if federation "$F" 16 3; then
  pass "3 secure rounds with distributed noise (16-bit levels) completed"
else
  fail "federation at 16 bits" "$F/agg/agg.log" "$F/n1/node.log"; it_summary; exit 1
fi
"$AGG" versions --state "$F/agg/state" --key-dir "$F/agg/keys" >"$F/versions.out" 2>&1
if [ "$(field verified <"$F/versions.out")" = 4 ]; then
  pass "the chain of 4 versions verifies"
else
  fail "version chain" "$F/versions.out"
fi
if [ "$(grep -c "distributed noise offered" "$F/agg/agg.log")" -ge 3 ]; then
  pass "the aggregator offered distributed noise every round"
else
  fail "no offer logged" "$F/agg/agg.log"
fi
ok=1
for i in 1 2; do
  n=$(grep -c "distributed noise: this node adds std .* split over 3 honest contributors" "$F/n$i/node.log")
  [ "$n" -ge 3 ] || ok=0
  # every round at the same accounted sigma: the ledger must charge exactly that
  sig=$(grep -o "accounted sigma [0-9.]*" "$F/n$i/node.log" | tail -1 | awk '{print $3}')
  want=$("$NODE" privacy --sample-rate 0.2 --steps 3 --delta 1e-5 --noise-multiplier "$sig" | field epsilon)
  got=$("$NODE" privacy -c "$F/n$i/node.conf" | field spent)
  python3 -c "import sys; w, g = float('$want'), float('$got'); sys.exit(0 if abs(w - g) <= 2e-3 * w else 1)" || ok=0
  echo "hospital-$i: accounted sigma $sig, epsilon $got (what-if at that sigma: $want)"
done
if [ $ok = 1 ]; then
  pass "hospitals 1 and 2 shared the noise and their ledgers charged the accounted sigma"
else
  fail "shares or ledger" "$F/n1/node.log" "$F/n2/node.log"
fi
got3=$("$NODE" privacy -c "$F/n3/node.conf" | field spent)
want3=$("$NODE" privacy --sample-rate 0.2 --steps 3 --delta 1e-5 --noise-multiplier 1.0 | field epsilon)
if grep -q "adds all of sigma itself: privacy.distributed_noise is off" "$F/n3/node.log" &&
  ! grep -q "this node adds std" "$F/n3/node.log" &&
  python3 -c "import sys; sys.exit(0 if abs($want3 - $got3) <= 1e-6 * $want3 else 1)"; then
  pass "hospital 3 (distributed_noise off) added all of sigma and was charged for sigma 1.0 ($got3)"
else
  fail "hospital 3 should add all of sigma" "$F/n3/node.log"
fi

F="$T/f6"
if federation "$F" 6 1 &&
  grep -q "adds all of sigma itself: the encoding's rounding .* raise compression.bits" "$F/n1/node.log" &&
  ! grep -q "this node adds std" "$F/n1/node.log"; then
  pass "at 6 bits the willing nodes refuse to share (rounding would dominate) and the round completes"
else
  fail "6-bit federation" "$F/agg/agg.log" "$F/n1/node.log"
fi
it_summary
