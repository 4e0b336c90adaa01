#!/usr/bin/env bash
# The Prometheus endpoints of the running daemons (issue 8, "Metrics"): an aggregator and 3
# nodes (synthetic trainer, secure aggregation, DP-SGD, random-k) run 2 rounds on loopback
# with `[metrics] listen = 0` (a free port on 127.0.0.1; hospital-3 has `listen = off`).
# Both kinds of endpoint are scraped with curl and checked with `promtool check metrics`,
# and their values are compared with what the daemons' own tools report:
#   aggregator: rounds_completed_total = `status` rounds_completed, connected_nodes = 3,
#               node_weight{node=...} for each node (summing to 1, as logged), bytes > 0,
#               last round duration > 0, model_version = head version;
#   node:       privacy_epsilon_spent > 0 and = `medfl-node privacy` spent, the budget,
#               rounds joined / completed, bytes > 0, training examples/s > 0.
# Also: the endpoint binds 127.0.0.1 (never 0.0.0.0) unless told otherwise, `off` serves
# nothing, and a bad metrics.listen value is refused with file:line and key.
# Skips (77) without curl or promtool. Prints PASS/FAIL lines; exit 0 when all pass.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
name=metrics_daemons
for tool in curl promtool python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    skip "$tool not installed (apt-get install curl prometheus)"
  fi
done

it_setup metrics_daemons
IT_PREFIX="$name: "
status_field() { "$AGG" status -c "$1" 2>/dev/null | field "$2"; }
completed_at_least() { [ "$(status_field "$1" rounds_completed)" -ge "$2" ] 2>/dev/null; }
# metric FILE NAME [LABELS]: the value of one sample of a scrape
metric() { awk -v k="$2${3:-}" '$1 == k { print $2 }' "$1"; }
# num_is EXPR: awk's verdict on a numeric expression, e.g. num_is "3 == 3"
num_is() { awk "BEGIN { exit !($1) }"; }
# listening_on PORT: the listening sockets' local addresses for PORT from /proc/net/tcp
listening_on() {
  python3 - "$1" <<'EOF'
import socket, struct, sys
port = int(sys.argv[1])
for line in open("/proc/net/tcp").readlines()[1:]:
    f = line.split()
    addr, p = f[1].split(":")
    if f[3] == "0A" and int(p, 16) == port:
        print(socket.inet_ntoa(struct.pack("<I", int(addr, 16))))
EOF
}

D="$T/fed"
mkdir -p "$D/agg"
cat >"$D/agg/aggregator.conf" <<EOF
name = itest-metrics
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$(free_port)
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 1500
[registry]
poll_ms = 200
[federation]
rounds = 2
min_nodes = 3
max_nodes = 3
quorum = 0.5
secure_aggregation = on
select_wait_ms = 500
keys_deadline_ms = 3000
shares_deadline_ms = 3000
train_deadline_ms = 8000
unmask_deadline_ms = 2000
eval_deadline_ms = 3000
retry_ms = 500
genesis_zero_dim = 32
weighting = contribution
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
  listen=0
  [ "$i" = 3 ] && listen=off
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
synthetic_records = $((100 * i + 100))
synthetic_step_ms = 20
[privacy]
epsilon_budget = 100
delta = 1e-5
[metrics]
listen = $listen
EOF
  keygen_enroll "$D/n$i" "hospital-$i" "$D/agg/aggregator.conf" "$D/agg/enroll.out" ||
    { fail "keygen/enroll" "$D/n$i/keygen.out" "$D/agg/enroll.out"; exit 1; }
done
AC="$D/agg/aggregator.conf"
start agg "$D/agg/agg.log" "$AGG" run -c "$AC"
for i in 1 2 3; do start "n$i" "$D/n$i/node.log" "$NODE" run -c "$D/n$i/node.conf"; done

if wait_until 90 completed_at_least "$AC" 2; then
  pass "federation completed 2 rounds"
else
  fail "federation did not complete 2 rounds" "$D/agg/agg.log" "$D/n1/node.log"
fi
# The nodes install the round-2 version before they report their evaluation, which is what
# closes the round: their counters are final by now; the EVAL reports of slower nodes are
# not needed below.

# ---- endpoint files, bind address --------------------------------------------------------
for who in agg n1 n2; do
  f="$D/$who/state/metrics_endpoint"
  if wait_until 10 test -s "$f" && grep -qE '^http://127\.0\.0\.1:[1-9][0-9]*/metrics$' "$f"; then
    url=$(cat "$f")
    port=${url#http://127.0.0.1:}; port=${port%/metrics}
    addrs=$(listening_on "$port" | sort -u | tr '\n' ' ')
    log=$D/$who/node.log; [ $who = agg ] && log=$D/agg/agg.log
    if [ "$addrs" = "127.0.0.1 " ] && grep -q "metrics served at http://127.0.0.1:$port/metrics" "$log"; then
      pass "$who: port 0 -> $url, bound to 127.0.0.1 only (not 0.0.0.0), logged"
    else
      fail "$who: port $port listens on '$addrs'" "$log"
    fi
  else
    fail "$who: no metrics_endpoint file with a loopback URL" "$f"
  fi
done
if [ ! -e "$D/n3/state/metrics_endpoint" ] && grep -q "metrics endpoint off" "$D/n3/node.log"; then
  pass "n3: listen = off serves nothing and writes no endpoint file"
else
  fail "n3: listen = off" "$D/n3/node.log"
fi

# ---- scrape + promtool ---------------------------------------------------------------------
scrape() { # scrape WHO OUT
  curl -sSf --max-time 5 -o "$2" -D "$2.headers" "$(cat "$D/$1/state/metrics_endpoint")"
}
for who in agg n1 n2; do
  if scrape "$who" "$T/$who.prom" 2>"$T/$who.curl" && grep -qi '^content-type: text/plain; version=0.0.4' "$T/$who.prom.headers" &&
    promtool check metrics <"$T/$who.prom" >"$T/$who.promtool" 2>&1; then
    pass "$who: /metrics scraped ($(grep -vc '^#' "$T/$who.prom") samples) and passes promtool check metrics"
  else
    fail "$who: scrape or promtool check" "$T/$who.curl" "$T/$who.promtool" "$T/$who.prom"
  fi
done
if curl -s -o /dev/null -w '%{http_code}' "$(sed 's|/metrics$|/other|' "$D/agg/state/metrics_endpoint")" | grep -qx 404; then
  pass "agg: a path other than /metrics is 404"
else
  fail "agg: other path not 404"
fi

# ---- aggregator values against status --------------------------------------------------------
P="$T/agg.prom"
st_completed=$(status_field "$AC" rounds_completed)
m_completed=$(metric "$P" medfl_aggregator_rounds_completed_total)
if [ -n "$m_completed" ] && num_is "$m_completed == $st_completed" && num_is "$st_completed >= 2"; then
  pass "agg: rounds_completed_total $m_completed = status rounds_completed $st_completed"
else
  fail "agg: rounds_completed_total '$m_completed' vs status '$st_completed'" "$P"
fi
m_started=$(metric "$P" medfl_aggregator_rounds_started_total)
m_aborted=$(metric "$P" medfl_aggregator_rounds_aborted_total)
if num_is "${m_started:-0} == ${m_completed:-0} + ${m_aborted:-0}"; then
  pass "agg: rounds_started_total $m_started = completed + aborted ($m_aborted)"
else
  fail "agg: started '$m_started' completed '$m_completed' aborted '$m_aborted'" "$P"
fi
m_conn=$(metric "$P" medfl_aggregator_connected_nodes)
if [ "$m_conn" = 3 ]; then pass "agg: connected_nodes 3"; else fail "agg: connected_nodes '$m_conn'" "$P"; fi
wsum=0
wok=1
for i in 1 2 3; do
  w=$(metric "$P" medfl_aggregator_node_weight "{node=\"hospital-$i\"}")
  if [ -z "$w" ] || ! num_is "$w > 0 && $w < 1"; then wok=0; fi
  wsum=$(awk "BEGIN { print $wsum + ${w:-0} }")
done
if [ $wok = 1 ] && num_is "$wsum > 0.999 && $wsum < 1.001"; then
  pass "agg: node_weight for each of the 3 nodes (sum $wsum)"
else
  fail "agg: per-node weights (sum $wsum)" "$P"
fi
# each weight is the one the round used: the aggregator logs it per node when a round ends
wlog=1
for i in 1 2 3; do
  w=$(metric "$P" medfl_aggregator_node_weight "{node=\"hospital-$i\"}")
  lw=$(grep -o "round $st_completed: node hospital-$i: .* weight [0-9.]*" "$D/agg/agg.log" | tail -n 1 | awk '{ print $NF }')
  [ -n "$w" ] && [ -n "$lw" ] && num_is "($w - $lw) < 0.00006 && ($lw - $w) < 0.00006" || wlog=0
done
if [ $wlog = 1 ]; then pass "agg: node_weight = the weights logged for round $st_completed"
else fail "agg: node_weight differs from the round's logged weights" "$P" "$D/agg/agg.log"; fi
bs=$(metric "$P" medfl_aggregator_bytes_sent_total)
br=$(metric "$P" medfl_aggregator_bytes_received_total)
dur=$(metric "$P" medfl_aggregator_last_round_duration_seconds)
if [ -n "$bs" ] && [ -n "$br" ] && num_is "$bs > 0 && $br > 0" && [ -n "$dur" ] && num_is "$dur > 0 && $dur < 90"; then
  pass "agg: bytes sent $bs / received $br, last round $dur s"
else
  fail "agg: bytes '$bs' '$br' duration '$dur'" "$P"
fi
head_v=$("$AGG" versions --state "$D/agg/state" --key-dir "$D/agg/keys" 2>/dev/null | field head)
mv=$(metric "$P" medfl_aggregator_model_version)
if [ -n "$mv" ] && [ -n "$head_v" ] && num_is "$mv == $head_v"; then
  pass "agg: model_version $mv = head version"
else
  fail "agg: model_version '$mv' vs head '$head_v'" "$P"
fi

# ---- node values against the ledger --------------------------------------------------------
for i in 1 2; do
  N="$T/n$i.prom"
  "$NODE" privacy -c "$D/n$i/node.conf" >"$T/n$i.privacy" 2>&1
  spent=$(field spent <"$T/n$i.privacy")
  m_spent=$(metric "$N" medfl_node_privacy_epsilon_spent)
  m_budget=$(metric "$N" medfl_node_privacy_epsilon_budget)
  if [ -n "$m_spent" ] && [ -n "$spent" ] && num_is "$m_spent > 0" &&
    num_is "($m_spent - $spent) < 1e-5 && ($spent - $m_spent) < 1e-5" && [ "$m_budget" = 100 ]; then
    pass "n$i: privacy_epsilon_spent $m_spent = \`medfl-node privacy\` spent $spent (budget $m_budget)"
  else
    fail "n$i: epsilon spent '$m_spent' vs ledger '$spent', budget '$m_budget'" "$N" "$T/n$i.privacy"
  fi
  joined=$(metric "$N" medfl_node_rounds_joined_total)
  done_=$(metric "$N" medfl_node_rounds_completed_total)
  admitted=$(field rounds_admitted <"$T/n$i.privacy")
  if [ -n "$joined" ] && [ -n "$done_" ] && num_is "$done_ == $st_completed && $joined >= $done_ && $joined == $admitted"; then
    pass "n$i: rounds joined $joined (= ledger admissions), completed $done_ (= aggregator's)"
  else
    fail "n$i: rounds joined '$joined' completed '$done_' (ledger admitted '$admitted', aggregator $st_completed)" "$N" "$D/n$i/node.log"
  fi
  nbs=$(metric "$N" medfl_node_bytes_sent_total)
  nbr=$(metric "$N" medfl_node_bytes_received_total)
  eps_rate=$(metric "$N" medfl_node_training_examples_per_second)
  ndur=$(metric "$N" medfl_node_last_round_duration_seconds)
  conn=$(metric "$N" medfl_node_connected)
  if [ -n "$nbs" ] && [ -n "$nbr" ] && num_is "$nbs > 0 && $nbr > 0" && [ -n "$eps_rate" ] &&
    num_is "$eps_rate > 0" && [ -n "$ndur" ] && num_is "$ndur > 0" && [ "$conn" = 1 ]; then
    pass "n$i: bytes sent $nbs / received $nbr, $eps_rate examples/s, last round $ndur s, connected"
  else
    fail "n$i: bytes '$nbs' '$nbr' examples/s '$eps_rate' duration '$ndur' connected '$conn'" "$N"
  fi
done
# The node's counters move with real traffic: heartbeats alone raise bytes_sent.
before=$(metric "$T/n1.prom" medfl_node_bytes_sent_total)
sleep 1
scrape n1 "$T/n1b.prom"
after=$(metric "$T/n1b.prom" medfl_node_bytes_sent_total)
if [ -n "$after" ] && num_is "$after > $before"; then
  pass "n1: bytes_sent_total grows with heartbeats ($before -> $after)"
else
  fail "n1: bytes_sent_total '$before' -> '$after'" "$T/n1b.prom"
fi

# ---- configuration errors ------------------------------------------------------------------
sed 's/^listen = 0$/listen = 127.0.0.1:99999/' "$D/n1/node.conf" >"$D/n1/bad.conf"
line=$(grep -n '^listen = 127.0.0.1:99999$' "$D/n1/bad.conf" | cut -d: -f1)
"$NODE" run -c "$D/n1/bad.conf" >"$T/bad-node.out" 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "bad.conf:$line: key 'metrics.listen': '127.0.0.1:99999'" "$T/bad-node.out"; then
  pass "node: bad listen value refused with file:line ($(grep -o "bad.conf:$line: .*" "$T/bad-node.out" | head -n 1))"
else
  fail "node: bad listen value (exit $rc)" "$T/bad-node.out"
fi
sed 's/^listen = 0$/listen = localhost:9750/' "$AC" >"$D/agg/bad.conf"
line=$(grep -n '^listen = localhost:9750$' "$D/agg/bad.conf" | cut -d: -f1)
"$AGG" run -c "$D/agg/bad.conf" >"$T/bad-agg.out" 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "bad.conf:$line: key 'metrics.listen': 'localhost:9750'" "$T/bad-agg.out"; then
  pass "aggregator: bad listen value refused with file:line ($(grep -o "bad.conf:$line: .*" "$T/bad-agg.out" | head -n 1))"
else
  fail "aggregator: bad listen value (exit $rc)" "$T/bad-agg.out"
fi
# The shipped default is loopback.
if "$NODE" example-config | grep -qx 'listen = 127.0.0.1:9751' &&
  "$AGG" example-config | grep -qx 'listen = 127.0.0.1:9750'; then
  pass "defaults: listen = 127.0.0.1:9751 (node), 127.0.0.1:9750 (aggregator)"
else
  fail "default listen values"
fi

it_summary
