#!/usr/bin/env bash
# The secure channel end to end, as an operator would drive it, on loopback with a port
# chosen at run time and everything in a temporary folder:
#   keygen on both sides (0600 secrets; a loose secret file is refused), enroll node A,
#   start aggregator and node A -> A listed as connected by `nodes` and `status`;
#   node B with an unenrolled key is refused and the aggregator logs B's key id, and gets
#   in by itself once enrolled;
#   `revoke A` cuts A off without restarting the aggregator (A exits 3, listed revoked);
#   re-enroll A, SIGKILL the aggregator, restart it on the same endpoint -> A reconnects by
#   itself; bad configs (unknown key, wrong type, out of range) fail naming file:line:key;
#   SIGTERM stops the aggregator cleanly.
# Malformed messages from an enrolled peer are covered in-process by
# tests/unit/test_aggregator.c (raw CURVE socket) and by wire's decoder tests.
# Prints PASS/FAIL lines; exit 0 when all pass.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"

# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_channel
node_state() { # node_state NODE -> "STATE CONNECTED" from the nodes table
  "$AGG" nodes -c "$AC" | awk -v n="$1" '$1 == n { print $3, $4 }'
}
node_is() { [ "$(node_state "$1")" = "$2" ]; }

PORT=$(free_port)
EP="tcp://127.0.0.1:$PORT"
mkdir -p "$T/agg" "$T/a" "$T/b"
AC="$T/agg/aggregator.conf"
cat >"$AC" <<EOF
name = itest-aggregator
key_dir = keys
state_dir = state
[net]
bind = $EP
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 1500
[registry]
poll_ms = 200
[log]
level = debug
[metrics]
listen = 0
EOF
for n in a b; do
  cat >"$T/$n/node.conf" <<EOF
node_id = hospital-$n
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = $EP
public_key_file = ../agg/keys/curve.pub
[net]
heartbeat_interval_ms = 200
heartbeat_misses = 5
[data]
records = records.jsonl
[metrics]
listen = 0
EOF
done
printf '{"text": "a"}\n{"text": "b"}\n\n{"text": "c"}\n' >"$T/a/records.jsonl"

# ---- keys -----------------------------------------------------------------------------
"$AGG" keygen -c "$AC" >"$T/agg/keygen.out" 2>&1 &&
  "$NODE" keygen -c "$T/a/node.conf" >"$T/a/keygen.out" 2>&1 &&
  "$NODE" keygen -d "$T/b/keys" >"$T/b/keygen.out" 2>&1
rc=$?
modes=$(stat -c '%a' "$T/agg/keys/curve.key" "$T/agg/keys/identity.key" "$T/a/keys/curve.key" \
  "$T/b/keys/identity.key" 2>/dev/null | sort -u | tr '\n' ' ')
if [ $rc -eq 0 ] && [ "$modes" = "600 " ]; then pass "keygen writes key pairs with 0600 secrets"
else fail "keygen (rc $rc, secret modes '$modes')" "$T/agg/keygen.out" "$T/a/keygen.out"; fi
if "$NODE" keygen -c "$T/a/node.conf" >"$T/a/keygen2.out" 2>&1; then
  fail "second keygen must not replace enrolled keys" "$T/a/keygen2.out"
else pass "second keygen refuses to replace existing keys"; fi

A_PUB=$(field curve_public <"$T/a/keygen.out")
A_ID=$(field identity_public <"$T/a/keygen.out")
A_KID=$(field key_id <"$T/a/keygen.out")
B_KID=$(field key_id <"$T/b/keygen.out")

chmod 640 "$T/b/keys/curve.key"
"$NODE" run -c "$T/b/node.conf" >"$T/b/loose.out" 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "$T/b/keys/curve.key" "$T/b/loose.out" && grep -q "0640" "$T/b/loose.out"
then pass "secret key file with mode 0640 refused, naming file and mode"
else fail "loose secret key mode not refused (rc $rc)" "$T/b/loose.out"; fi
chmod 600 "$T/b/keys/curve.key"

# ---- enroll, start, connect -------------------------------------------------------------
if "$AGG" enroll hospital-a "$A_PUB" --identity "$A_ID" -c "$AC" >"$T/enroll.out" 2>&1 &&
  grep -q "$A_KID" "$T/enroll.out"; then pass "enroll hospital-a"
else fail "enroll hospital-a" "$T/enroll.out"; fi
if "$AGG" enroll 'bad id!' "$A_PUB" -c "$AC" >"$T/enroll-bad.out" 2>&1; then
  fail "enroll accepted an invalid node id" "$T/enroll-bad.out"
else pass "enroll refuses an invalid node id"; fi

start agg "$T/agg.log" "$AGG" run -c "$AC"
if wait_until 10 test -s "$T/agg/state/endpoint" && [ "$(cat "$T/agg/state/endpoint")" = "$EP" ]
then pass "aggregator bound $EP and wrote state/endpoint"
else fail "aggregator did not start on $EP" "$T/agg.log"; fi

start a "$T/a.log" "$NODE" run -c "$T/a/node.conf"
if wait_until 15 node_is hospital-a "enrolled yes"; then pass "node A connected and listed by nodes"
else fail "node A not listed as connected" "$T/agg.log" "$T/a.log"; fi
"$AGG" nodes -c "$AC" >"$T/nodes1.out" 2>&1
if awk '$1 == "hospital-a" && $2 == "'"$A_KID"'" && $(NF-1) == "cpu" && $NF == "3"' "$T/nodes1.out" |
  grep -q .; then pass "nodes shows A's key id, device cpu and 3 records"
else fail "nodes table content" "$T/nodes1.out"; fi
"$AGG" status -c "$AC" >"$T/status1.out" 2>&1
if grep -qx "running: yes" "$T/status1.out" && grep -qx "connected: 1" "$T/status1.out" &&
  grep -qx "endpoint: $EP" "$T/status1.out"; then pass "status: running, endpoint, 1 connected"
else fail "status output" "$T/status1.out"; fi

# ---- unenrolled node ---------------------------------------------------------------------
start b "$T/b.log" "$NODE" run -c "$T/b/node.conf"
if wait_until 10 grep -q "key $B_KID is not enrolled" "$T/agg.log"; then
  pass "unenrolled node B refused; aggregator logs its key id $B_KID"
else fail "node B's refusal not logged with key id $B_KID" "$T/agg.log" "$T/b.log"; fi
if wait_until 5 grep -q "refused this node's key" "$T/b.log" && ! node_is hospital-b "enrolled yes"
then pass "node B told it was refused and never listed"
else fail "node B state" "$T/b.log"; fi
B_PUB=$(field curve_public <"$T/b/keygen.out")
"$AGG" enroll hospital-b "$B_PUB" -c "$AC" >"$T/enroll-b.out" 2>&1
if wait_until 15 node_is hospital-b "enrolled yes" && alive b; then
  pass "node B admitted once enrolled, without restarting either side"
else fail "node B not admitted after enrollment" "$T/agg.log" "$T/b.log"; fi
kill -TERM "${PIDS[b]}" 2>/dev/null; reap b

# ---- revoke without restart --------------------------------------------------------------
agg_pid=${PIDS[agg]}
"$AGG" revoke hospital-a -c "$AC" >"$T/revoke.out" 2>&1
if wait_until 10 gone a; then
  reap a; rc=$?
  if [ $rc -eq 3 ]; then pass "revoked node A cut off and exited with status 3"
  else fail "node A exit status $rc after revoke (want 3)" "$T/a.log"; fi
else fail "node A still running after revoke" "$T/agg.log" "$T/a.log"; fi
if node_is hospital-a "revoked no" && alive agg && [ "${PIDS[agg]}" = "$agg_pid" ]; then
  pass "A listed revoked and disconnected; aggregator kept running"
else fail "state after revoke: '$(node_state hospital-a)'" "$T/agg.log"; fi
start a-revoked "$T/a-revoked.log" "$NODE" run -c "$T/a/node.conf"
if wait_until 10 grep -q "key $A_KID is not enrolled" "$T/agg.log"; then
  pass "revoked key refused on a new connection"
else fail "revoked key admitted again" "$T/agg.log" "$T/a-revoked.log"; fi
kill -TERM "${PIDS[a-revoked]}" 2>/dev/null; reap a-revoked

# ---- re-enroll, SIGKILL + restart the aggregator -------------------------------------------
"$AGG" enroll hospital-a "$A_PUB" -c "$AC" >"$T/reenroll.out" 2>&1 ||
  fail "re-enroll hospital-a" "$T/reenroll.out"
start a "$T/a2.log" "$NODE" run -c "$T/a/node.conf"
if wait_until 15 node_is hospital-a "enrolled yes"; then pass "re-enrolled node A connected again"
else fail "re-enrolled node A not connected" "$T/agg.log" "$T/a2.log"; fi
stop9 agg
"$AGG" status -c "$AC" >"$T/status2.out" 2>&1
rc=$?
if [ $rc -eq 3 ] && grep -qx "running: no" "$T/status2.out"; then
  pass "status reports the killed aggregator as not running"
else fail "status after SIGKILL (rc $rc)" "$T/status2.out"; fi
inst1=$(grep -m1 "(instance " "$T/agg.log" | sed 's/.*instance \([0-9a-f]*\).*/\1/')
start agg "$T/agg2.log" "$AGG" run -c "$AC"
if wait_until 20 grep -q "node hospital-a (key $A_KID) connected" "$T/agg2.log" &&
  wait_until 5 node_is hospital-a "enrolled yes" && alive a; then
  pass "node A reconnected by itself to the restarted aggregator"
else fail "node A did not reconnect after the aggregator restart" "$T/agg2.log" "$T/a2.log"; fi
inst2=$(grep -m1 "(instance " "$T/agg2.log" | sed 's/.*instance \([0-9a-f]*\).*/\1/')
if [ -n "$inst1" ] && [ "$inst1" != "$inst2" ] && grep -q "instance $inst2" "$T/a2.log"; then
  pass "node A welcomed by the new instance $inst2"
else fail "instance ids '$inst1' / '$inst2'" "$T/a2.log"; fi

# ---- SIGHUP reload ------------------------------------------------------------------------
sed -i 's/^level = debug/level = info/; s/^heartbeat_timeout_ms = 1500/heartbeat_timeout_ms = 1600/' "$AC"
kill -HUP "${PIDS[agg]}"
if wait_until 10 grep -q "option log.level changed" "$T/agg2.log" &&
  grep -q "not applied: net.heartbeat_timeout_ms" "$T/agg2.log"; then
  pass "SIGHUP applies log.level and reports net.heartbeat_timeout_ms as needing a restart"
else fail "SIGHUP reload" "$T/agg2.log"; fi
cp "$AC" "$T/agg/good.conf"
echo "bogus = 1" >>"$AC"
kill -HUP "${PIDS[agg]}"
if wait_until 10 grep -q "configuration not reloaded.*bogus" "$T/agg2.log" && alive agg; then
  pass "SIGHUP with a broken config keeps the running configuration"
else fail "SIGHUP with a broken config" "$T/agg2.log"; fi
cp "$T/agg/good.conf" "$AC"

# ---- bad configurations --------------------------------------------------------------------
bad_config() { # bad_config PROGRAM NAME LINE KEY TEXT
  local prog=$1 name=$2 line=$3 key=$4 text=$5
  local f="$T/bad-$name.conf"
  printf '%b' "$text" >"$f"
  "$prog" run -c "$f" >"$T/bad-$name.out" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] && grep -q "$f:$line: .*'$key'" "$T/bad-$name.out"; then
    pass "bad config ($name) fails with $f:$line and key $key"
  else fail "bad config ($name): rc $rc" "$T/bad-$name.out"; fi
}
bad_config "$AGG" agg-unknown 3 net.bnd "name = x\n[net]\nbnd = tcp://127.0.0.1:1\n"
bad_config "$AGG" agg-type 2 net.heartbeat_interval_ms "[net]\nheartbeat_interval_ms = fast\n"
bad_config "$AGG" agg-range 3 net.heartbeat_timeout_ms "[net]\n\nheartbeat_timeout_ms = 10\n"
bad_config "$NODE" node-unknown 2 colour "node_id = x\ncolour = blue\n"
bad_config "$NODE" node-type 4 net.heartbeat_misses "node_id = x\n[net]\n# c\nheartbeat_misses = 2.5\n"
bad_config "$NODE" node-range 1 net.heartbeat_misses "net.heartbeat_misses = 1\n"
bad_config "$NODE" node-enum 1 device "device = tpu\n"

# ---- clean stop ----------------------------------------------------------------------------
kill -TERM "${PIDS[agg]}"
if wait_until 10 gone agg; then
  reap agg; rc=$?
  "$AGG" status -c "$AC" >"$T/status3.out" 2>&1
  if [ $rc -eq 0 ] && grep -qx "running: no" "$T/status3.out" && grep -qx "connected: 0" "$T/status3.out"
  then pass "SIGTERM stops the aggregator cleanly (exit 0)"
  else fail "clean stop (rc $rc)" "$T/agg2.log" "$T/status3.out"; fi
else fail "aggregator ignored SIGTERM" "$T/agg2.log"; fi
kill -TERM "${PIDS[a]}" 2>/dev/null
if wait_until 10 gone a; then
  reap a; rc=$?
  if [ $rc -eq 0 ]; then pass "SIGTERM stops node A cleanly (exit 0)"
  else fail "node A exit status $rc on SIGTERM" "$T/a2.log"; fi
else fail "node A ignored SIGTERM" "$T/a2.log"; fi

it_summary
