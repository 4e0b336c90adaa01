#!/usr/bin/env bash
# The running daemons as an operator meets them (issue #17), with real processes over CURVE
# and the synthetic trainer (round.trainer = synthetic), secure aggregation on:
#   A. state-folder lock: a second aggregator on the same state_dir (another port) and a
#      second node on the same node.conf are refused with exit status 4 naming the holder's
#      pid; the first aggregator's `status` (running, pid, endpoint) is unchanged.
#   B. slow training steps: every synthetic step takes 2 s while the aggregator marks a node
#      silent for 1.5 s disconnected; the nodes' heartbeat thread keeps them connected
#      through whole rounds (no "marked disconnected", no "before its hello").
#   C. a node restarted mid-round (SIGTERM during the input phase, started again): the
#      aggregator drops it from the round at its new hello, the round completes without it
#      long before the 60 s train deadline, and it contributes to the next round.
#   D. `rollback V` on the running aggregator: logged at INFO, the next version's parent is V
#      (a round in progress when the head moved is aborted rather than committed on the old
#      head, which would silently undo the rollback).
#   E. an aggregator without any version: `status` says why it idles; `init-version` while it
#      runs is picked up and a round completes, without a restart.
# Prints PASS/FAIL lines; exit 0 when all pass.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup daemonops
IT_POLL=0.3
status() { "$AGG" status -c "$1" 2>/dev/null; }
sfield() { status "$1" | field "$2"; }
completed_at_least() { [ "$(sfield "$1" rounds_completed)" -ge "$2" ] 2>/dev/null; }
log_has() { grep -q -- "$2" "$1"; }

# fed DIR GENESIS_DIM: aggregator + 3 synthetic nodes (2 s per step, 2 steps a round)
fed() {
  local d=$1 dim=$2 port
  port=$(free_port)
  mkdir -p "$d/agg"
  cat >"$d/agg/aggregator.conf" <<EOF
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$port
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 1500
[registry]
poll_ms = 200
[federation]
rounds = 0
min_nodes = 2
max_nodes = 3
quorum = 0.5
threshold = 0
secure_aggregation = on
select_wait_ms = 1500
keys_deadline_ms = 20000
shares_deadline_ms = 20000
train_deadline_ms = 60000
unmask_deadline_ms = 20000
eval_deadline_ms = 3000
retry_ms = 500
genesis_zero_dim = $dim
local_steps = 2
lr = 0.05
[privacy]
dp = off
[compression]
scheme = none
EOF
  "$AGG" keygen -c "$d/agg/aggregator.conf" >"$d/agg/keygen.out" 2>&1 || return 1
  for i in 1 2 3; do
    mkdir -p "$d/n$i"
    cat >"$d/n$i/node.conf" <<EOF
node_id = hospital-$i
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = tcp://127.0.0.1:$port
public_key_file = ../agg/keys/curve.pub
identity_key = $d/agg/keys/identity.pub
[net]
heartbeat_interval_ms = 200
heartbeat_misses = 5
[round]
trainer = synthetic
synthetic_records = 100
synthetic_step_ms = 2000
[privacy]
epsilon_budget = 100
delta = 1e-5
# the aggregator runs without DP (this test is not about privacy): the node allows it
require_dp = false
EOF
    keygen_enroll "$d/n$i" "hospital-$i" "$d/agg/aggregator.conf" "$d/agg/enroll.out" || return 1
  done
}

F="$T/f"
fed "$F" 16 || { fail "setup" "$F/agg/keygen.out" "$F/agg/enroll.out"; exit 1; }
AC="$F/agg/aggregator.conf"
start agg "$F/agg/agg.log" "$AGG" run -c "$AC"
for i in 1 2 3; do start n$i "$F/n$i/node.log" "$NODE" run -c "$F/n$i/node.conf"; done
running() { [ "$(sfield "$1" running)" = yes ]; }
wait_until 20 running "$AC" || fail "aggregator not running" "$F/agg/agg.log"

# ---- A: the state-folder lock ------------------------------------------------------------
before=$(status "$AC" | grep -E '^(running|pid|endpoint):')
sed "s|^bind = .*|bind = tcp://127.0.0.1:$(free_port)|" "$AC" >"$F/agg/second.conf"
timeout 20 "$AGG" run -c "$F/agg/second.conf" >"$T/second-agg.out" 2>&1
rc=$?
after=$(status "$AC" | grep -E '^(running|pid|endpoint):')
if [ $rc = 4 ] && grep -q "in use by another running daemon (pid ${PIDS[agg]}" "$T/second-agg.out" &&
  [ "$before" = "$after" ] && echo "$after" | grep -q "pid: ${PIDS[agg]}" && alive agg; then
  pass "A: a second aggregator on the same state folder is refused (exit 4, names pid ${PIDS[agg]}); status unchanged"
else
  fail "A: second aggregator exit $rc; status before/after: $before / $after" "$T/second-agg.out"
fi
timeout 20 "$NODE" run -c "$F/n1/node.conf" >"$T/second-node.out" 2>&1
rc=$?
if [ $rc = 4 ] && grep -q "pid ${PIDS[n1]}" "$T/second-node.out" && alive n1; then
  pass "A: a second node on the same state folder is refused (exit 4, names pid ${PIDS[n1]})"
else
  fail "A: second node exit $rc" "$T/second-node.out"
fi

# ---- B: 2 s steps against a 1.5 s silence limit --------------------------------------------
if wait_until 90 completed_at_least "$AC" 2; then
  pass "B: 2 rounds of 2 s training steps completed"
else
  fail "B: rounds_completed $(sfield "$AC" rounds_completed)" "$F/agg/agg.log" "$F/n1/node.log"
fi
if ! log_has "$F/agg/agg.log" "marked disconnected" && ! log_has "$F/agg/agg.log" "before its hello" &&
  [ "$(grep -c "allowlist loaded" "$F/agg/agg.log")" = 1 ]; then
  pass "B: nodes stayed connected through long steps; the allowlist was logged once"
else
  fail "B: false disconnects or allowlist noise" "$F/agg/agg.log"
fi

# ---- C: a node restarted mid-round ---------------------------------------------------------
# at the start of a fresh input phase: the nodes train for 4 s from there
round=$(($(sfield "$AC" rounds_completed) + 2))
wait_until 60 log_has "$F/agg/agg.log" "round $round: phase input" || fail "C: no input phase seen" "$F/agg/agg.log"
kill -TERM "${PIDS[n3]}"
reap n3
t0=$SECONDS
start n3 "$F/n3/node.log" "$NODE" run -c "$F/n3/node.conf"
if wait_until 30 log_has "$F/agg/agg.log" "round $round completed"; then
  took=$((SECONDS - t0))
  if log_has "$F/agg/agg.log" "round $round: node hospital-3 said hello again during phase input" &&
    [ $took -lt 20 ]; then
    pass "C: round $round completed ${took}s after hospital-3 restarted (train deadline 60 s)"
  else
    fail "C: round $round took ${took}s or no drop logged" "$F/agg/agg.log"
  fi
else
  fail "C: round $round did not complete" "$F/agg/agg.log" "$F/n3/node.log"
fi
next=$((round + 1))
if wait_until 60 log_has "$F/agg/agg.log" "round $next: masked input from node hospital-3"; then
  pass "C: the restarted node contributes to round $next"
else
  fail "C: hospital-3 not in round $next" "$F/agg/agg.log" "$F/n3/node.log"
fi

# ---- D: rollback on the running aggregator -------------------------------------------------
wait_until 60 completed_at_least "$AC" $((next))
"$AGG" rollback 2 --state "$F/agg/state" >"$T/rollback.out" 2>&1 || fail "D: rollback" "$T/rollback.out"
latest=$(field latest <"$T/rollback.out")
if wait_until 60 log_has "$F/agg/agg.log" "head moved to v2 by rollback (latest v$latest kept): next round starts from v2" &&
  wait_until 60 test -f "$F/agg/state/versions/v$(printf %06d $((latest + 1))).json" &&
  python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["parent"] != 2)' \
    "$F/agg/state/versions/v$(printf %06d $((latest + 1))).json"; then
  pass "D: after rollback 2 the running aggregator started from v2; v$((latest + 1)) has parent v2"
else
  fail "D: rollback not followed" "$F/agg/agg.log" "$T/rollback.out"
fi
kill -TERM "${PIDS[agg]}" "${PIDS[n1]}" "${PIDS[n2]}" "${PIDS[n3]}"
for p in agg n1 n2 n3; do reap $p; done

# ---- E: no version yet, then init-version while running ------------------------------------
E="$T/e"
fed "$E" 0 || { fail "setup E" "$E/agg/keygen.out"; exit 1; }
EC="$E/agg/aggregator.conf"
sed -i 's/^synthetic_step_ms = .*/synthetic_step_ms = 0/' "$E"/n*/node.conf
start eagg "$E/agg/agg.log" "$AGG" run -c "$EC"
for i in 1 2 3; do start e$i "$E/n$i/node.log" "$NODE" run -c "$E/n$i/node.conf"; done
idle_why() { sfield "$EC" phase >/dev/null; status "$EC" | grep -q '^phase: idle (head version: no model version yet'; }
if wait_until 30 idle_why; then
  pass "E: status says why: $(status "$EC" | grep '^phase:')"
else
  fail "E: status without the reason: $(status "$EC" | grep '^phase:')" "$E/agg/agg.log"
fi
"$AGG" init-version --from tests/ref/fixtures/tiny_peft --state "$E/agg/state" --key-dir "$E/agg/keys" >"$T/initv.out" 2>&1 ||
  fail "E: init-version" "$T/initv.out"
if wait_until 60 completed_at_least "$EC" 1 && log_has "$E/agg/agg.log" "head moved to v1"; then
  pass "E: init-version on the running aggregator was picked up; a round completed"
else
  fail "E: no round after init-version" "$E/agg/agg.log"
fi
it_summary
