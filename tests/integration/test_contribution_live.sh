#!/usr/bin/env bash
# Contribution weighting in a live federation (docs/contribution-weighting.md): an
# aggregator and 3 nodes training the tiny BERT fixture (round.trainer = model) on
# `medfl-node synth` records, secure aggregation on, federation.weighting = contribution.
# The three hospitals hold equally many records drawn from one skewed label mix (one synth
# site split three ways); hospital-3's labels are shuffled: a permutation of the label names
# applied to every record (a broken code mapping), so the shared model fits it badly and its
# own validation reports an outlying loss. Checks after 6 rounds: `weights` lists every round
# and node; in the last round hospital-3 has the LOWEST weight with quality < 1 while the
# others keep quality 1; every node had reliability 1 (all completed); `report -o` writes the
# HTML report from the live history; the epsilon each node reported and the bytes it sent
# are in contrib.db; and the nodes' RoundStart weight equals the stored weight.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup contriblive
IT_POLL=0.3
ROUNDS=6
status_field() { "$AGG" status -c "$AC" 2>/dev/null | field "$1"; }
completed_at_least() { [ "$(status_field rounds_completed)" -ge "$1" ] 2>/dev/null; }
running_or_done() {
  completed_at_least "$1" && return 0
  alive agg || return 0
  alive n1 || alive n2 || alive n3 || return 0
  return 1
}

"$NODE" import-model --hf tests/ref/fixtures/tiny_bert -o "$T/base.h5" >"$T/import.out" 2>&1 ||
  { fail "import-model" "$T/import.out"; exit 1; }
"$NODE" synth --sites 1 --records-per-site 510 --alpha 0.3 --seed 11 -o "$T/synth" >"$T/synth.out" 2>&1 ||
  { fail "synth" "$T/synth.out"; exit 1; }
labels=$(cat "$T/synth/labels.txt")
# One site's records split three ways (equal sizes, one label mix); hospital-3's label names
# permuted (each label replaced by the next one in labels.txt).
python3 - "$T/synth" "$labels" <<'EOF' || die "splitting the records"
import json, sys
d, labels = sys.argv[1], sys.argv[2].split(",")
rows = [json.loads(l) for l in open(f"{d}/site-1/train.jsonl")]
n = len(rows) // 3
shift = {a: labels[(i + 1) % len(labels)] for i, a in enumerate(labels)}
for h in (1, 2, 3):
    with open(f"{d}/hospital-{h}.jsonl", "w") as f:
        for r in rows[(h - 1) * n:h * n]:
            if h == 3:
                r["label"] = shift[r["label"]]
            f.write(json.dumps(r) + "\n")
EOF
PORT=$(free_port)
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
rounds = $ROUNDS
min_nodes = 3
max_nodes = 3
select_wait_ms = 300
keys_deadline_ms = 5000
shares_deadline_ms = 5000
train_deadline_ms = 120000
unmask_deadline_ms = 5000
eval_deadline_ms = 30000
weighting = contribution
secure_aggregation = on
local_steps = 15
lr = 0.01
batch_size = 16
[privacy]
dp = off
[compression]
scheme = none
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
records = ../synth/hospital-$i.jsonl
labels = $labels
[deid]
policy = redact
[model]
base = ../base.h5
lora.r = 4
[train]
batch_size = 16
lr = 0.01
max_seq_len = 48
valid_fraction = 0.25
threads = 1
seed = 3
[privacy]
epsilon_budget = 50
delta = 1e-5
# the aggregator runs without DP (this test is not about privacy): the node allows it
require_dp = false
EOF
  keygen_enroll "$T/n$i" "hospital-$i" "$AC" "$T/agg/enroll.out" ||
    { fail "keys/enroll" "$T/n$i/keygen.out" "$T/agg/enroll.out"; exit 1; }
done
"$NODE" init-adapter -c "$T/n1/node.conf" -o "$T/genesis" >"$T/init.out" 2>&1 &&
  "$AGG" init-version --from "$T/genesis" --key-dir "$T/agg/keys" --state "$T/agg/state" >"$T/initv.out" 2>&1 ||
  { fail "init-adapter / init-version" "$T/init.out" "$T/initv.out"; exit 1; }

start agg "$T/agg/agg.log" "$AGG" run -c "$AC"
for i in 1 2 3; do start n$i "$T/n$i/node.log" "$NODE" run -c "$T/n$i/node.conf"; done
wait_until 400 running_or_done $ROUNDS
if completed_at_least $ROUNDS; then
  pass "$ROUNDS secure rounds with contribution weighting completed"
else
  fail "rounds_completed $(status_field rounds_completed)" "$T/agg/agg.log" "$T/n3/node.log"
fi
# last round's evaluations are in before the weights are read
wait_until 30 grep -q "round $ROUNDS completed" "$T/agg/agg.log"

"$AGG" weights --state "$T/agg/state" >"$T/weights.out" 2>&1
rows() { awk '$1 ~ /^[0-9]+$/' "$T/weights.out"; }
if [ $? -eq 0 ] && [ "$(rows | wc -l)" -eq $((3 * ROUNDS)) ]; then
  pass "weights lists $ROUNDS rounds x 3 nodes"
else
  fail "weights" "$T/weights.out"
fi
last=$(rows | awk -v r=$ROUNDS '$1 == r')
lowest=$(echo "$last" | sort -k3,3g | head -1 | awk '{ print $2 }')
q3=$(echo "$last" | awk '$2 == "hospital-3" { print $7 }')
q1=$(echo "$last" | awk '$2 == "hospital-1" { print $7 }')
if [ "$lowest" = hospital-3 ] && awk -v a="$q3" -v b="$q1" 'BEGIN { exit !(a < 1 && b == 1) }'; then
  pass "round $ROUNDS: hospital-3 (shuffled labels) has the lowest weight (quality $q3; hospital-1 $q1)"
else
  fail "round $ROUNDS: lowest weight '$lowest', quality hospital-3 '$q3' hospital-1 '$q1'" "$T/weights.out" "$T/agg/agg.log"
fi
# the first round has no reports yet: equal records and reliability give equal weights
first=$(rows | awk '$1 == 1 { print $3 }' | sort -u | wc -l)
rel=$(rows | awk '$8 != "1.000"' | wc -l)
if [ "$first" = 1 ] && [ "$rel" = 0 ]; then
  pass "round 1 weighs the nodes equally; reliability stays 1 for nodes that complete every round"
else
  fail "round 1 weights not equal ($first values) or reliability moved ($rel rows)" "$T/weights.out"
fi
# the weight the aggregator logged for hospital-3 is the one it sent (RoundStart)
w3=$(echo "$last" | awk '$2 == "hospital-3" { print $3 }')
if grep -q "round $ROUNDS weight hospital-3: w=$w3" "$T/agg/agg.log"; then
  pass "the stored weight is the round's weight (logged when the round started: $w3)"
else
  fail "round $ROUNDS weight of hospital-3 ($w3) not in the log" "$T/agg/agg.log"
fi
python3 - "$T/agg/state/contrib.db" $ROUNDS >"$T/stats.out" 2>&1 <<'EOF'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
r = int(sys.argv[2])
rows = db.execute("SELECT node, bytes_up, bytes_down, epsilon FROM round_stats WHERE round = ?", (r,)).fetchall()
reps = db.execute("SELECT COUNT(DISTINCT node) FROM reports").fetchone()[0]
print(rows, reps)
assert len(rows) == 3 and all(b > 0 and d > 0 for _, b, d, _ in rows), "bytes per node"
assert all(e is not None and e == 0 for *_, e in rows), "epsilon (DP off: 0) reported"
assert reps == 3, "reports of every node"
EOF
if [ $? -eq 0 ]; then
  pass "contrib.db holds bytes, epsilon and evaluation reports per round and node"
else
  fail "contrib.db round stats" "$T/stats.out"
fi
if "$AGG" report -c "$AC" -o "$T/report.html" >"$T/report.out" 2>&1 && grep -q "hospital-3" "$T/report.html"; then
  pass "report -o writes the HTML report from the live history"
else
  fail "report" "$T/report.out"
fi
# the report of this live federation, as a browser shows it: headless Chromium at 1280 px;
# each hospital's colour (the report's first three palette entries) drawn, the charts as wide
# as the page, the bytes chart on a log axis
if command -v chromium >/dev/null 2>&1; then
  HOME=$T timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1280,4200 --screenshot="$T/report.png" "file://$T/report.html" >/dev/null 2>&1
  python3 tests/ref/png_colors.py --runs "$T/report.png" 0072B2 E69F00 009E73 444444 >"$T/colors.txt" 2>&1
  read -r _ n1 _ _ n2 _ _ n3 _ _ _ axis <<<"$(tr '\n' ' ' <"$T/colors.txt")"
  bytes=$(awk '/<section id="bytes">/,/<\/section>/' "$T/report.html")
  if [ "${n1:-0}" -gt 200 ] && [ "${n2:-0}" -gt 200 ] && [ "${n3:-0}" -gt 200 ] &&
     [ "${axis:-0}" -gt 1000 ] && grep -q "log" <<<"$bytes" && grep -q ">[0-9.]* kB<" <<<"$bytes"; then
    pass "the live report in Chromium: three hospitals in three colours ($n1/$n2/$n3 px), charts ${axis} px wide of 1280, bytes on a log axis in kB"
  else
    fail "live report rendering: colours $n1/$n2/$n3 px, axis ${axis:-?} px" "$T/colors.txt"
  fi
  [ -n "${KEEP_REPORT_PNG:-}" ] && cp "$T/report.png" "$KEEP_REPORT_PNG"
else
  echo "SKIP live report rendering: chromium not installed (deploy/install-deps.sh adds it)"
fi
it_summary
