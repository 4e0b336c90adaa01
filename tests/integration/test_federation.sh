#!/usr/bin/env bash
# Federated rounds end to end over CURVE on loopback, with real processes and the node's
# synthetic least-squares trainer (round.trainer = synthetic; the version store starts from
# a zero vector, federation.genesis_zero_dim):
#   A. 3 nodes, 4 rounds, secure aggregation + DP-SGD + random-k compression: status says
#      rounds_completed: 4, every node holds the same head version, and the aggregator's and
#      each node's chain verifies with the aggregator's key (`versions --key-dir`).
#   B. kill -9 the aggregator once in every phase of a secure round (keys, shares, input,
#      unmask, right after a version is written, eval; federation.debug_phase_hold_ms keeps
#      each phase open long enough to aim at): after each restart the round is journaled
#      (aborted before its version exists, completed after), the chain verifies and keeps
#      every earlier version, and the federation finishes with all nodes on one head.
#   C. 5 nodes, secure aggregation without compression (exact fixed point): one node is
#      SIGKILLed while training (before its masked input), another right after sending its
#      masked input; the round completes with the survivors and the unmasked sum's checksum
#      equals the sum of the 4 masked-input nodes' own input checksums (mod 2^32). Both
#      killed nodes restart with their state and contribute to a later round.
#   D. privacy budget: of 2 nodes (plain mode), hospital-1's epsilon_budget allows 2 rounds of
#      its DP setting (q 0.1, sigma 1, 20 steps a round: epsilon 5.39 after 2, 6.33 after 3):
#      it trains rounds 1 and 2, declines round 3 with the reason logged by the aggregator
#      (the round goes on with hospital-2); then, min_nodes being 2, no further round starts
#      (status: "phase: idle (1 of 2 connected nodes out of privacy budget ...)") instead of
#      endless retries. Killed with SIGKILL and restarted, it is asked again and still
#      declines; its ledger lists exactly 2 admitted rounds. hospital-3 (with budget)
#      connecting resumes the rounds without hospital-1; a SIGHUP reload asks hospital-1
#      again; with only hospital-1 left, status says "phase: idle (all nodes out of privacy
#      budget)".
# Prints PASS/FAIL lines; exit 0 when all pass.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"

# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_federation
status_field() { "$AGG" status -c "$1" 2>/dev/null | field "$2"; }
completed_at_least() { [ "$(status_field "$1" rounds_completed)" -ge "$2" ] 2>/dev/null; }
phase_is() { [ "$(status_field "$1" phase)" = "$2" ]; }
log_has() { grep -q -- "$2" "$1"; }

# federation DIR N SECURE SCHEME ROUNDS STEP_MS MIN_NODES: folders, configs, keys, enrollment
federation() {
  local d=$1 n=$2 secure=$3 scheme=$4 rounds=$5 step_ms=$6 min_nodes=$7
  mkdir -p "$d/agg"
  cat >"$d/agg/aggregator.conf" <<EOF
name = itest-federation
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$(free_port)
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 1500
[registry]
poll_ms = 200
[federation]
rounds = $rounds
min_nodes = $min_nodes
max_nodes = $n
quorum = 0.5
secure_aggregation = $secure
threshold = 0
select_wait_ms = 1500
keys_deadline_ms = 3000
shares_deadline_ms = 3000
train_deadline_ms = 8000
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
scheme = $scheme
bits = 8
k_frac = 0.5
clip = 0.5
[log]
level = info
EOF
  "$AGG" keygen -c "$d/agg/aggregator.conf" >"$d/agg/keygen.out" 2>&1 || return 1
  local ep
  ep=$(awk '$1 == "bind" { print $3 }' "$d/agg/aggregator.conf")
  for i in $(seq 1 "$n"); do
    mkdir -p "$d/n$i"
    cat >"$d/n$i/node.conf" <<EOF
node_id = hospital-$i
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = $ep
public_key_file = ../agg/keys/curve.pub
identity_key = $d/agg/keys/identity.pub
[net]
heartbeat_interval_ms = 200
heartbeat_misses = 5
[round]
trainer = synthetic
synthetic_records = 200
synthetic_step_ms = $step_ms
[privacy]
epsilon_budget = 100
delta = 1e-5
EOF
    keygen_enroll "$d/n$i" "hospital-$i" "$d/agg/aggregator.conf" "$d/agg/enroll.out" || return 1
  done
}
start_agg() { start "$1-agg" "$2/agg/agg.log" "$AGG" run -c "$2/agg/aggregator.conf"; }
start_node() { start "$1-n$3" "$2/n$3/node.log" "$NODE" run -c "$2/n$3/node.conf"; }
head_hash() { # head_hash STATE_DIR: hash prefix of the head version, verified with the key
  "$AGG" versions --state "$1" --key-dir "$2" 2>/dev/null | awk '$1 ~ /^\*/ { print $1, $5 }'
}

# ---- A + B: 3 nodes, secure + DP + compression, aggregator killed in every phase --------
A="$T/a"
if ! federation "$A" 3 on randk 4 50 3; then fail "setup of federation A" "$A/agg/keygen.out"; exit 1; fi
AC="$A/agg/aggregator.conf"
# Test-only knob: every phase stays open (and journaled) >= 1 s, and the daemon waits 1 s
# between writing a version and journaling it, so each kill below lands in its phase.
sed -i 's/^\[federation\]$/[federation]\ndebug_phase_hold_ms = 1000/' "$AC"
start_agg a "$A"
for i in 1 2 3; do start_node a "$A" "$i"; done

if wait_until 60 completed_at_least "$AC" 1; then
  pass "A: first secure round (DP, random-k) completed"
else
  fail "A: no round completed" "$A/agg/agg.log" "$A/n1/node.log"
fi
# B: kill -9 the aggregator once in each phase of a secure round: keys, shares, input
# (training + masked input), unmask, the instant after a version is written but before the
# journal names it ("commit"), and eval (version announced). After each restart the
# interrupted round must be closed in the journal (aborted before its version exists,
# completed after), the chain must verify, and no version listed before the kill may be
# missing or changed afterwards.
chain() { # the verified chain as "version parent hash" lines; fails when it does not verify
  "$AGG" versions --state "$A/agg/state" --key-dir "$A/agg/keys" 2>&1 |
    awk 'NR > 1 && $1 ~ /^\*?[0-9]+$/ { sub(/^\*/, "", $1); print $1, $2, $5 } $1 == "verified:" { ok = 1 } END { exit !ok }'
}
last_round=0
killed_round=
kill_in_phase() { # PHASE: one status call gives round and phase, the kill follows at once
  local st r
  st=$("$AGG" status -c "$AC" 2>/dev/null)
  r=$(field round <<<"$st")
  [ "$(field phase <<<"$st")" = "$1" ] && [ "$r" -gt "$last_round" ] 2>/dev/null || return 1
  # unmask: only before this round's version is written (the commit case comes next)
  if [ "$1" = unmask ] && grep -q "round $r: version [0-9]* written" "$A/agg/agg.log"; then return 1; fi
  # input: while every node still trains, so their masked inputs reach the restarted daemon
  if [ "$1" = input ] && grep -q "round $r: masked input sent" "$A"/n*/node.log; then return 1; fi
  killed_round=$r
  stop9 a-agg
}
held_commits=0
kill_after_write() { # the daemon logged a version written, journal update held: kill
  local n r
  n=$(grep -c "written, journal update held" "$A/agg/agg.log")
  [ "$n" -gt "$held_commits" ] || return 1
  r=$(grep "written, journal update held" "$A/agg/agg.log" | tail -n 1 | sed -n 's/.*round \([0-9]*\): version.*/\1/p')
  [ "$r" -gt "$last_round" ] 2>/dev/null || { held_commits=$n; return 1; }
  killed_round=$r
  stop9 a-agg
}
b_ok=1
for phase in keys shares input unmask commit eval; do
  chain >"$A/chain.before" || { b_ok=0; fail "B: chain does not verify before the $phase kill" "$A/chain.before"; }
  held_commits=$(grep -c "written, journal update held" "$A/agg/agg.log")
  if [ $phase = commit ]; then wait_until 40 kill_after_write; else wait_until 40 kill_in_phase $phase; fi
  if [ $? -ne 0 ]; then
    b_ok=0
    fail "B: never saw a round after $last_round in phase $phase" "$A/agg/agg.log"
    break
  fi
  last_round=$killed_round
  [ $phase = input ] && input_round=$killed_round
  # Before its version exists a round is aborted (secure-aggregation state lived in memory);
  # once written it is completed. The unmask kill can race the write by a few ms: the log
  # tells which happened.
  want=aborted
  { [ $phase = commit ] || [ $phase = eval ] ||
    grep -q "round $killed_round: version [0-9]* written" "$A/agg/agg.log"; } && want=completed
  start_agg a "$A"
  if wait_until 20 log_has "$A/agg/agg.log" "round $killed_round: aggregator restarted during phase [a-z]*\( after version [0-9]* was committed\)\?: journaled as $want"; then
    :
  else
    b_ok=0
    fail "B: restart after the $phase kill did not journal round $killed_round as $want" "$A/agg/agg.log"
    continue
  fi
  chain >"$A/chain.after"
  if [ $? -ne 0 ] ||
     [ "$(head -n "$(wc -l <"$A/chain.before")" "$A/chain.after")" != "$(cat "$A/chain.before")" ]; then
    b_ok=0
    fail "B: versions lost or changed across the $phase kill" "$A/chain.before" "$A/chain.after"
  fi
done
# the masked inputs of the round killed in its input phase arrive at the new process: stale
if [ -n "${input_round:-}" ] &&
   wait_until 20 log_has "$A/agg/agg.log" "MASKED_INPUT from node hospital-[0-9] for round $input_round rejected: round $input_round is not in progress"; then
  pass "B: masked inputs for the killed round $input_round reached the restarted aggregator and were rejected as stale"
else
  fail "B: no stale masked input of round ${input_round:-?} rejected" "$A/agg/agg.log"
fi
if [ $b_ok = 1 ]; then
  pass "B: aggregator SIGKILLed in phases keys, shares, input, unmask, after a version write, and eval; each restart journaled the round (4 aborted, 2 completed) and kept the chain"
fi
if wait_until 90 completed_at_least "$AC" 4; then
  pass "A: federation finished 4 rounds (rounds_completed: 4)"
else
  fail "A: rounds_completed $(status_field "$AC" rounds_completed) after restart" "$A/agg/agg.log" "$A/n2/node.log"
fi
if [ "$(status_field "$AC" rounds_aborted)" = 4 ]; then
  pass "A: status counts the 4 rounds interrupted before their version as aborted"
else
  fail "A: rounds_aborted $(status_field "$AC" rounds_aborted), expected 4" "$A/agg/agg.log"
fi
"$AGG" versions --state "$A/agg/state" --key-dir "$A/agg/keys" >"$A/versions.out" 2>&1
rc=$?
n_versions=$(field versions <"$A/versions.out")
if [ $rc -eq 0 ] && [ "$(field verified <"$A/versions.out")" = "$n_versions" ] &&
  [ "${n_versions:-0}" -eq 5 ]; then
  pass "A: aggregator chain of $n_versions versions verifies; none lost across the kills"
else
  fail "A: chain does not verify or lost versions" "$A/versions.out"
fi
want=$(head_hash "$A/agg/state" "$A/agg/keys")
same=1
for i in 1 2 3; do
  wait_until 10 test "$(head_hash "$A/n$i/state" "$A/agg/keys")" = "$want" || same=0
done
if [ $same = 1 ] && [ -n "$want" ]; then
  pass "A: every node holds and verifies the same head version ($want)"
else
  fail "A: nodes differ from the aggregator's head '$want'" "$A/n1/node.log"
fi
if grep -q "masked input sent" "$A/n1/node.log" && grep -q "admitted by the privacy ledger" "$A/n1/node.log" &&
  "$NODE" privacy -c "$A/n1/node.conf" >"$A/privacy.out" 2>&1 &&
  [ "$(field rounds_admitted <"$A/privacy.out")" -ge 4 ]; then
  pass "A: nodes sent masked inputs and their ledgers recorded the DP rounds"
else
  fail "A: masked inputs / ledger entries missing" "$A/n1/node.log" "$A/privacy.out"
fi
if grep -q "B sent to the aggregator" "$A/agg/agg.log" && "$AGG" status -c "$AC" | grep -q "^last_eval: "; then
  pass "A: bytes per node and round logged; evaluation reports in status"
else
  fail "A: traffic log or evaluation reports missing" "$A/agg/agg.log"
fi
for p in a-agg a-n1 a-n2 a-n3; do stop9 "$p"; done

# ---- C: 5 nodes, one killed before and one after its masked input ------------------------
C="$T/c"
if ! federation "$C" 5 on none 3 100 3; then fail "setup of federation C" "$C/agg/keygen.out"; exit 1; fi
CC="$C/agg/aggregator.conf"
start_agg c "$C"
for i in 1 2 3 4 5; do start_node c "$C" "$i"; done
# node 4 dies while training round 1; node 5 right after its masked input of round 1
if wait_until 60 log_has "$C/n4/node.log" "round 1: training"; then stop9 c-n4; fi
if wait_until 60 log_has "$C/n5/node.log" "round 1: masked input sent"; then stop9 c-n5; fi
if wait_until 60 log_has "$C/agg/agg.log" "round 1: unmasked sum checksum"; then
  line=$(grep "round 1: unmasked sum checksum" "$C/agg/agg.log")
  got=$(echo "$line" | sed -n 's/.*checksum \([0-9]*\) over.*/\1/p')
  survivors=$(echo "$line" | sed -n 's/.*\[\(.*\)\].*/\1/p')
  want=0
  for id in ${survivors//,/ }; do
    i=${id#hospital-}
    c=$(grep "round 1: masked input sent" "$C/n$i/node.log" | sed -n 's/.*input checksum \([0-9]*\)).*/\1/p')
    want=$(( (want + c) % 4294967296 ))
  done
  if [ "$survivors" = "hospital-1,hospital-2,hospital-3,hospital-5" ] && [ "$got" = "$want" ]; then
    pass "C: round 1 unmasked the exact sum of the 4 masked inputs (checksum $got; node 4 killed before, node 5 after masking)"
  else
    fail "C: survivors '$survivors', checksum $got, expected $want" "$C/agg/agg.log"
  fi
else
  fail "C: round 1 did not unmask" "$C/agg/agg.log" "$C/n1/node.log"
fi
if wait_until 30 completed_at_least "$CC" 1 && grep -q "round 1: version 2 committed from 4 updates" "$C/agg/agg.log"
then pass "C: round 1 committed version 2 from the 4 masked inputs"
else fail "C: round 1 did not commit" "$C/agg/agg.log"; fi
# the killed nodes restart with their state and take part again
start_node c "$C" 4
start_node c "$C" 5
if wait_until 120 completed_at_least "$CC" 3; then
  pass "C: federation finished 3 rounds"
else
  fail "C: rounds_completed $(status_field "$CC" rounds_completed)" "$C/agg/agg.log"
fi
rejoined=1
for i in 4 5; do
  grep -E "round [2-9][0-9]*: masked input sent" "$C/n$i/node.log" >/dev/null || rejoined=0
done
if [ $rejoined = 1 ]; then pass "C: both killed nodes rejoined and contributed to a later round"
else fail "C: killed nodes did not contribute after restart" "$C/n4/node.log" "$C/n5/node.log"; fi
if "$AGG" versions --state "$C/agg/state" --key-dir "$C/agg/keys" >"$C/versions.out" 2>&1; then
  pass "C: version chain verifies"
else
  fail "C: version chain" "$C/versions.out"
fi


# ---- D: the privacy budget holds across a SIGKILL and restart; no endless retries --------
D=$T/d
# 3 enrolled, hospital-3 starts later (the node with budget that lets rounds resume)
federation "$D" 3 off none 0 0 2 || fail "D: setup"
sed -i 's/^epsilon_budget = 100$/epsilon_budget = 6.0/' "$D/n1/node.conf"
DC="$D/agg/aggregator.conf"
# 2 of max 3 nodes connected: do not wait long to start; training takes milliseconds here
sed -i -e 's/^select_wait_ms = .*/select_wait_ms = 200/' -e 's/^train_deadline_ms = .*/train_deadline_ms = 2000/' "$DC"
start_agg d "$D"
start_node d "$D" 1
start_node d "$D" 2
if wait_until 60 completed_at_least "$DC" 2 &&
   wait_until 30 log_has "$D/agg/agg.log" "node hospital-1 declined round .*budget"; then
  pass "D: 2 rounds trained, then the aggregator logs the node's privacy-budget decline"
else
  fail "D: no budget decline after 2 rounds (completed $(status_field "$DC" rounds_completed))" \
    "$D/agg/agg.log" "$D/n1/node.log"
fi
idle_budget() { "$AGG" status -c "$DC" 2>/dev/null | grep -q "^phase: idle ($1"; }
started() { grep -c " started from version " "$D/agg/agg.log"; }
# min_nodes 2 and only hospital-2 has budget left: the aggregator idles and says why
if wait_until 30 idle_budget "1 of 2 connected nodes out of privacy budget"; then
  n0=$(started)
  sleep 2 # 4 x retry_ms
  if [ "$(started)" = "$n0" ] && idle_budget "1 of 2 connected nodes out of privacy budget"; then
    pass "D: with too few nodes with budget no round starts; status: $("$AGG" status -c "$DC" | grep '^phase:')"
  else
    fail "D: rounds kept starting while idle for budget ($n0 -> $(started))" "$D/agg/agg.log"
  fi
else
  fail "D: status does not show the budget idle" "$D/agg/agg.log"
fi
stop9 d-n1
before=$(grep -c "node hospital-1 declined round" "$D/agg/agg.log")
start_node d "$D" 1
if wait_until 60 eval '[ "$(grep -c "node hospital-1 declined round" "$D/agg/agg.log")" -gt "$before" ]'; then
  pass "D: after SIGKILL and restart the node is asked again and still declines"
else
  fail "D: restarted node did not decline (completed $(status_field "$DC" rounds_completed))" \
    "$D/agg/agg.log" "$D/n1/node.log"
fi
"$NODE" privacy -c "$D/n1/node.conf" >"$D/privacy.out" 2>&1
if [ "$(grep -c " admitted " "$D/privacy.out")" = 2 ] && grep -q " declined " "$D/privacy.out" &&
   awk '$1 == "spent:" { exit !($2 > 5.38 && $2 < 5.40) }' "$D/privacy.out"; then
  pass "D: ledger: 2 admitted rounds, declines recorded, spent epsilon 5.39"
else
  fail "D: ledger contents" "$D/privacy.out"
fi
# a node with budget connects: rounds resume with hospital-2 and hospital-3
wait_until 30 idle_budget "1 of 2 connected" || true
done_before=$(status_field "$DC" rounds_completed)
start_node d "$D" 3
if wait_until 40 completed_at_least "$DC" $((done_before + 1)) &&
   log_has "$D/agg/agg.log" "rounds resume: enough connected nodes have privacy budget" &&
   grep -q "participants \[hospital-2,hospital-3\]" "$D/agg/agg.log"; then
  pass "D: a node with budget connected and rounds resumed without the exhausted node"
else
  fail "D: rounds did not resume when hospital-3 connected" "$D/agg/agg.log"
fi
# a configuration reload asks the exhausted node again
before=$(grep -c "node hospital-1 declined round" "$D/agg/agg.log")
kill -HUP "${PIDS[d-agg]}"
if wait_until 30 log_has "$D/agg/agg.log" "configuration reloaded: 1 node(s) out of privacy budget or declining for their privacy policy will be asked again" &&
   wait_until 30 eval '[ "$(grep -c "node hospital-1 declined round" "$D/agg/agg.log")" -gt "$before" ]'; then
  pass "D: after a configuration reload the exhausted node is asked again (and declines)"
else
  fail "D: reload did not ask hospital-1 again" "$D/agg/agg.log"
fi
# only the exhausted node left connected
stop9 d-n2
stop9 d-n3
if wait_until 30 idle_budget "all nodes out of privacy budget)"; then
  pass "D: status: phase: idle (all nodes out of privacy budget)"
else
  fail "D: status after the nodes with budget left: $("$AGG" status -c "$DC" | grep '^phase:')" "$D/agg/agg.log"
fi

it_summary
