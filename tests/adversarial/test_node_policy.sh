#!/usr/bin/env bash
# Attack (issue #16 item 2) against the real daemons: the consortium's aggregator config says
# `privacy.dp = off`. Before the fix every node trained and sent raw, un-noised updates with
# nothing in its ledger; now each node checks the round against its own privacy policy
# (privacy.require_dp, on by default) and declines it.
#   A. 2 nodes (synthetic trainer, plain rounds), default policy: both decline the round;
#      the aggregator logs "declined round R: privacy policy: ..." for each, completes no
#      round, does not ask them again with the same settings (status and log say why it
#      idles), and each ledger (`medfl-node privacy -c`) holds declines only: nothing
#      admitted, epsilon spent 0.
#   B. hospital-2's privacy officer sets privacy.require_dp = false and restarts it, and the
#      consortium operator reloads the aggregator (SIGHUP: everyone is asked again): it now
#      contributes (hospital-1 still declines), the round completes, and its ledger lists the
#      round as `no-dp` with epsilon inf (spent: inf).
# Prints PASS/FAIL lines; exit 0 when all pass.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"

# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/../integration/lib.sh"
it_setup test_node_policy
log_has() { grep -q -- "$2" "$1"; }
completed() { "$AGG" status -c "$T/agg/aggregator.conf" 2>/dev/null | field rounds_completed; }
completed_is() { [ "$(completed)" = "$1" ]; }

mkdir -p "$T/agg"
AC="$T/agg/aggregator.conf"
cat >"$AC" <<EOF
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$(free_port)
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 1500
[registry]
poll_ms = 200
[federation]
rounds = 1
min_nodes = 2
max_nodes = 2
quorum = 0.5
secure_aggregation = off
select_wait_ms = 500
train_deadline_ms = 5000
eval_deadline_ms = 1500
retry_ms = 500
genesis_zero_dim = 16
weighting = uniform
lr = 0.05
local_steps = 5
batch_size = 16
[privacy]
dp = off
[compression]
scheme = none
EOF
"$AGG" keygen -c "$AC" >"$T/agg/keygen.out" 2>&1 || die "aggregator keygen: $(cat "$T/agg/keygen.out")"
ep=$(awk '$1 == "bind" { print $3 }' "$AC")
for i in 1 2; do
  mkdir -p "$T/n$i"
  cat >"$T/n$i/node.conf" <<EOF
node_id = hospital-$i
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = $ep
public_key_file = ../agg/keys/curve.pub
identity_key = $T/agg/keys/identity.pub
[net]
heartbeat_interval_ms = 200
heartbeat_misses = 5
[round]
trainer = synthetic
synthetic_records = 100
[privacy]
epsilon_budget = 0.001
delta = 1e-5
EOF
  keygen_enroll "$T/n$i" "hospital-$i" "$AC" "$T/agg/enroll.out" || die "enroll hospital-$i: $(cat "$T/agg/enroll.out")"
done
start agg "$T/agg/agg.log" "$AGG" run -c "$AC"
for i in 1 2; do start "n$i" "$T/n$i/node.log" "$NODE" run -c "$T/n$i/node.conf"; done

# ---- A: every node declines the DP-off rounds ------------------------------------------------
both_declined() {
  log_has "$T/agg/agg.log" "node hospital-1 declined round 1: privacy policy: the round asks for no DP-SGD" &&
    log_has "$T/agg/agg.log" "node hospital-2 declined round 1: privacy policy: the round asks for no DP-SGD"
}
if wait_until 40 both_declined; then
  pass "A: both nodes decline the DP-off round; the aggregator logs the privacy-policy reason"
else
  fail "A: no privacy-policy declines logged by the aggregator" "$T/agg/agg.log" "$T/n1/node.log"
fi
idles() { "$AGG" status -c "$AC" 2>/dev/null | grep -q "^phase: idle (2 of 2 connected nodes decline this federation's privacy settings"; }
sleep 2 # retry_ms is 0.5 s: a retrying aggregator would have asked again by now
if wait_until 20 idles && [ "$(grep -c "node hospital-1 declined round" "$T/agg/agg.log")" = 1 ]; then
  pass "A: the aggregator does not ask again with the same settings; status says why it idles"
else
  fail "A: declining nodes asked again, or no idle reason" "$T/agg/agg.log"
fi
if [ "$(completed)" = 0 ] && ! log_has "$T/agg/agg.log" "update from node hospital-" &&
   ! log_has "$T/n1/node.log" "update sent" && ! log_has "$T/n2/node.log" "update sent"; then
  pass "A: no update sent, no round completed"
else
  fail "A: a DP-off round got updates (rounds_completed: $(completed))" "$T/agg/agg.log" "$T/n1/node.log"
fi
for i in 1 2; do
  "$NODE" privacy -c "$T/n$i/node.conf" >"$T/n$i/privacy.out" 2>&1
  if [ "$(field rounds_admitted <"$T/n$i/privacy.out")" = 0 ] &&
     [ "$(field spent <"$T/n$i/privacy.out")" = 0.000000 ] &&
     [ "$(field rounds_declined <"$T/n$i/privacy.out")" -ge 1 ] 2>/dev/null &&
     grep -q "declined .*reason: privacy policy: the round asks for no DP-SGD" "$T/n$i/privacy.out"; then
    pass "A: hospital-$i's ledger holds the declines only (nothing admitted, epsilon 0)"
  else
    fail "A: hospital-$i's ledger" "$T/n$i/privacy.out"
  fi
done

# ---- B: a node whose policy allows non-DP rounds; its ledger says so ---------------------------
stop9 n2
echo "require_dp = false" >>"$T/n2/node.conf" # the last section is [privacy]
start n2 "$T/n2/node.log" "$NODE" run -c "$T/n2/node.conf"
hello_again() { [ "$(grep -c "node hospital-2 (key [0-9a-f]*) connected" "$T/agg/agg.log")" -ge 2 ]; }
wait_until 20 hello_again
kill -HUP "${PIDS[agg]}" # the operator: ask every node again
if wait_until 40 completed_is 1; then
  pass "B: with privacy.require_dp = false hospital-2 contributes; the round completes"
else
  fail "B: no round completed with hospital-2 allowing non-DP rounds" "$T/agg/agg.log" "$T/n2/node.log"
fi
"$NODE" privacy -c "$T/n2/node.conf" >"$T/n2/privacy.out" 2>&1
if grep -q "no-dp .*epsilon=inf .*reason: no DP: the round asks for no DP-SGD and this node's privacy.require_dp is off" "$T/n2/privacy.out" &&
   [ "$(field spent <"$T/n2/privacy.out")" = inf ] &&
   log_has "$T/n2/node.log" "contributed WITHOUT differential privacy"; then
  pass "B: hospital-2's ledger lists the round as no-dp, epsilon inf (spent: inf)"
else
  fail "B: hospital-2's ledger does not show the no-DP round" "$T/n2/privacy.out" "$T/n2/node.log"
fi
"$NODE" privacy -c "$T/n1/node.conf" >"$T/n1/privacy.out" 2>&1
if [ "$(field rounds_admitted <"$T/n1/privacy.out")" = 0 ]; then
  pass "B: hospital-1 (default policy) still contributed nothing"
else
  fail "B: hospital-1 contributed" "$T/n1/privacy.out"
fi
it_summary
