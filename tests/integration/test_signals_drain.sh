#!/usr/bin/env bash
# SIGTERM drains both daemons mid-round (issue 8, "Signals"), with a python listener playing
# systemd's part on NOTIFY_SOCKET. A federation of 3 nodes (synthetic trainer, secure
# aggregation, DP-SGD, random-k compression, so every node keeps an error-feedback residual
# and a privacy ledger); hospital-1 trains slowly (150 ms a step, 20 steps a round).
#   Node: SIGTERM while hospital-1 trains a round -> it stops training within a step (well
#     before the round's training would end), sends no update, writes its checkpoint
#     (residual), sends STOPPING=1 and exits 0. The residual on disk is the one of its last
#     update sent, byte for byte; the ledger keeps the interrupted round's admission (the
#     spend is never forgotten). Restarted, it restores the residual, reports the same
#     epsilon spent, and contributes to a later round.
#   Aggregator: SIGTERM while a round is in its input phase -> the round is journaled as
#     aborted with the reason "aggregator stopped", its nodes are told, STOPPING=1, exit 0;
#     `status` shows no open round. Restarted, it has nothing to recover (no "restarted
#     during phase" repair) and completes the next round.
# Prints PASS/FAIL lines; exit 0 when all pass.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup signals_drain
IT_PREFIX="$name: "
IT_POLL=0.1
status_field() { "$AGG" status -c "$1" 2>/dev/null | field "$2"; }
completed_at_least() { [ "$(status_field "$1" rounds_completed)" -ge "$2" ] 2>/dev/null; }
log_has() { grep -q -- "$2" "$1"; }
now() { date +%s.%N; }
listen() { # listen SOCKET OUTFILE: one line per datagram, newlines inside shown as '|'
  python3 -u -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode().replace("\n", "|"), flush=True)' "$1" >"$2" 2>&1 &
  PIDS[listen-$(basename "$1")]=$!
  for _ in $(seq 50); do [ -S "$1" ] && return 0; sleep 0.1; done
  return 1
}

D="$T/fed"
mkdir -p "$D/agg"
cat >"$D/agg/aggregator.conf" <<EOF
name = itest-drain
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$(free_port)
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 1500
[registry]
poll_ms = 200
[federation]
rounds = 0
min_nodes = 3
max_nodes = 3
quorum = 0.5
secure_aggregation = on
select_wait_ms = 300
keys_deadline_ms = 3000
shares_deadline_ms = 3000
train_deadline_ms = 6000
unmask_deadline_ms = 2000
eval_deadline_ms = 1500
retry_ms = 500
genesis_zero_dim = 32
weighting = uniform
lr = 0.05
local_steps = 20
batch_size = 16
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
[metrics]
listen = 0
EOF
"$AGG" keygen -c "$D/agg/aggregator.conf" >"$D/agg/keygen.out" 2>&1 || { fail "aggregator keygen" "$D/agg/keygen.out"; exit 1; }
EP=$(awk '$1 == "bind" { print $3 }' "$D/agg/aggregator.conf")
for i in 1 2 3; do
  mkdir -p "$D/n$i"
  step=20
  [ "$i" = 1 ] && step=150
  cat >"$D/n$i/node.conf" <<EOF
node_id = hospital-$i
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = $EP
public_key_file = ../agg/keys/curve.pub
identity_key = $D/agg/keys/identity.pub
[net]
heartbeat_interval_ms = 200
heartbeat_misses = 5
[round]
trainer = synthetic
synthetic_records = 200
synthetic_step_ms = $step
[privacy]
epsilon_budget = 100
delta = 1e-5
[metrics]
listen = 0
EOF
  keygen_enroll "$D/n$i" "hospital-$i" "$D/agg/aggregator.conf" "$D/agg/enroll.out" ||
    { fail "keygen/enroll" "$D/n$i/keygen.out" "$D/agg/enroll.out"; exit 1; }
done
AC="$D/agg/aggregator.conf"
N1="$D/n1"
listen "$T/agg.sock" "$T/agg.notify" || { fail "notify listener"; exit 1; }
listen "$T/n1.sock" "$T/n1.notify" || { fail "notify listener"; exit 1; }
NOTIFY_SOCKET="$T/agg.sock" start agg "$D/agg/agg.log" "$AGG" run -c "$AC"
NOTIFY_SOCKET="$T/n1.sock" start n1 "$N1/node.log" "$NODE" run -c "$N1/node.conf"
for i in 2 3; do start "n$i" "$D/n$i/node.log" "$NODE" run -c "$D/n$i/node.conf"; done

# ---- node: SIGTERM while training ------------------------------------------------------------
# hospital-1 first contributes once (so it holds a residual), then is stopped while it
# trains its next round.
training_round() { # the round hospital-1 trains now, if it trains one after its first update
  local r
  log_has "$N1/node.log" "masked input sent" || return 1
  r=$(grep -o "round [0-9]*: training" "$N1/node.log" | tail -n 1 | awk '{ print $2 }' | tr -d :)
  [ -n "$r" ] && [ "$r" -gt "$(grep -o "round [0-9]*: masked input sent" "$N1/node.log" | tail -n 1 | awk '{ print $2 }' | tr -d :)" ] || return 1
  echo "$r"
}
if wait_until 60 training_round; then
  R=$(training_round)
  sha_before=$(sha256sum "$N1/state/residual.bin" | cut -d' ' -f1)
  t0=$(now)
  kill -TERM "${PIDS[n1]}"
  wait "${PIDS[n1]}"
  rc=$?
  t1=$(now)
  unset "PIDS[n1]"
  elapsed=$(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }")
  "$NODE" privacy -c "$N1/node.conf" >"$T/privacy.stop" 2>&1
  # 20 steps of 150 ms = 3 s of training; stopping within 1.5 s means it did not finish
  if [ $rc -eq 0 ] && awk "BEGIN { exit !($elapsed < 1.5) }" &&
    grep -q "round $R: no update sent: training interrupted after [0-9]* of 20 steps" "$N1/node.log" &&
    ! grep -q "round $R: masked input sent" "$N1/node.log"; then
    pass "node: SIGTERM in round $R's training -> stopped after $(grep -o "interrupted after [0-9]* of 20" "$N1/node.log" | tail -n 1 | awk '{print $3}') of 20 steps, exit 0 in $elapsed s, no update sent"
  else
    fail "node: SIGTERM while training (exit $rc after $elapsed s)" "$N1/node.log"
  fi
  if wait_until 2 grep -qxF "STOPPING=1" "$T/n1.notify" &&
    grep -q "checkpoint: compression residual of [0-9]* values written" "$N1/node.log" &&
    [ "$(sha256sum "$N1/state/residual.bin" | cut -d' ' -f1)" = "$sha_before" ] &&
    [ ! -e "$N1/state/residual.bin.tmp" ]; then
    pass "node: STOPPING=1; checkpoint keeps the residual of its last update sent (sha256 ${sha_before:0:12})"
  else
    fail "node: STOPPING=1 / residual checkpoint" "$T/n1.notify" "$N1/node.log"
  fi
  admitted_r=$(grep -c "^  round $R  .*admitted" "$T/privacy.stop")
  spent_stop=$(field spent <"$T/privacy.stop")
  if [ "$admitted_r" = 1 ] && [ -n "$spent_stop" ] && awk "BEGIN { exit !($spent_stop > 0) }"; then
    pass "node: the ledger keeps round $R's admission (spent $spent_stop)"
  else
    fail "node: ledger after the stop (round $R admitted '$admitted_r')" "$T/privacy.stop"
  fi
  # restart: same state
  start n1 "$N1/node.log" "$NODE" run -c "$N1/node.conf"
  "$NODE" privacy -c "$N1/node.conf" >"$T/privacy.restart" 2>&1
  if wait_until 10 log_has "$N1/node.log" "compression residual of [0-9]* values restored" &&
    [ "$(field spent <"$T/privacy.restart")" = "$spent_stop" ]; then
    pass "node: restarted with its residual restored and the same epsilon spent ($spent_stop)"
  else
    fail "node: restart state" "$N1/node.log" "$T/privacy.restart"
  fi
  later_update() {
    grep -o "round [0-9]*: masked input sent" "$N1/node.log" | awk -v r="$R" '$2 + 0 > r { f = 1 } END { exit !f }'
  }
  if wait_until 60 later_update; then
    pass "node: after the restart it contributes to a later round ($(grep -o "round [0-9]*: masked input sent" "$N1/node.log" | tail -n 1 | cut -d: -f1))"
  else
    fail "node: no contribution after the restart" "$N1/node.log" "$D/agg/agg.log"
  fi
else
  fail "node: hospital-1 never trained a second round" "$N1/node.log" "$D/agg/agg.log"
fi

# ---- aggregator: SIGTERM in the input phase ----------------------------------------------------
in_input() { # one status call: an open round in phase input
  local st
  st=$("$AGG" status -c "$AC" 2>/dev/null)
  [ "$(field phase <<<"$st")" = input ] && stopped_round=$(field round <<<"$st") &&
    [ -n "$stopped_round" ] && kill -TERM "${PIDS[agg]}"
}
stopped_round=
if wait_until 60 in_input; then
  wait "${PIDS[agg]}"
  rc=$?
  unset "PIDS[agg]"
  "$AGG" status -c "$AC" >"$T/status.stop" 2>&1
  if [ $rc -eq 0 ] && wait_until 2 grep -qxF "STOPPING=1" "$T/agg.notify" &&
    grep -q "round $stopped_round aborted in phase input: aggregator stopped (SIGTERM/SIGINT) during phase input" "$D/agg/agg.log"; then
    pass "aggregator: SIGTERM in round $stopped_round's input phase -> journaled aborted, STOPPING=1, exit 0"
  else
    fail "aggregator: SIGTERM in the input phase (exit $rc)" "$T/agg.notify" "$D/agg/agg.log"
  fi
  if grep -qx "round: none" "$T/status.stop" && grep -qx "phase: idle" "$T/status.stop" &&
    grep -q "^last_round: $stopped_round aborted .*aggregator stopped" "$T/status.stop"; then
    pass "aggregator: status after the stop: no open round; $(grep '^last_round:' "$T/status.stop")"
  else
    fail "aggregator: status after the stop" "$T/status.stop"
  fi
  told=0
  for i in 2 3; do
    wait_until 3 log_has "$D/n$i/node.log" "round $stopped_round ended by the aggregator" && told=$((told + 1))
  done
  if [ $told = 2 ]; then pass "aggregator: its nodes were told the round ended"
  else fail "aggregator: $told of 2 nodes told that round $stopped_round ended" "$D/n2/node.log"; fi
  before=$(status_field "$AC" rounds_completed)
  start agg "$D/agg/agg.log" "$AGG" run -c "$AC"
  if wait_until 60 completed_at_least "$AC" $((before + 1)) &&
    ! grep -q "aggregator restarted during phase" "$D/agg/agg.log" &&
    grep -q "round $((stopped_round + 1)) started" "$D/agg/agg.log"; then
    pass "aggregator: restarted with a clean journal (nothing to recover); round $((stopped_round + 1)) started and rounds_completed $before -> $(status_field "$AC" rounds_completed)"
  else
    fail "aggregator: restart after the drain" "$D/agg/agg.log"
  fi
else
  fail "aggregator: never saw a round in its input phase" "$D/agg/agg.log"
fi

it_summary
