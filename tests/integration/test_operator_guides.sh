#!/usr/bin/env bash
# The operator guides, executed: every block marked `<!-- run: NAME -->` in
# docs/operator-guide-aggregator.md and docs/operator-guide-node.md runs here as the
# consortium operator and three hospital IT engineers would type it (tests/integration/guide.sh
# moves the guides' paths under one folder per site and points them at loopback and the tiny
# test model; nothing else of a command is changed). In order: install, config, keys, model
# import and check-data, the privacy plan, enrollment, seeding the federation, the daemons,
# status/nodes, versions, weights and the report, a node stopped (SIGTERM) and restarted
# mid-round, rollback and export on the RUNNING aggregator, and a second aggregator on the
# same state folder. A block that fails, or a marked block this test never runs, fails it.
#
# Test-only settings (short deadlines, heartbeats, metrics on free ports, one thread, short
# notes) are added to the guides' configs with conf_set below; they change timing, never what
# a command does.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/guide.sh"
it_setup guides
IT_POLL=0.3

GUIDE_PORT=$(free_port)
GUIDE_MODEL=$PWD/tests/ref/fixtures/tiny_bert
guide_extract docs/operator-guide-aggregator.md "$T/blocks" || die "aggregator guide markers"
guide_extract docs/operator-guide-node.md "$T/blocks" || die "node guide markers"

# conf_set FILE SECTION KEY VALUE: sets KEY in [SECTION] ("" = top level), adding it when absent
conf_set() {
  python3 - "$@" <<'PY'
import re, sys
path, section, key, value = sys.argv[1:5]
lines = open(path).read().split("\n")
cur, done, last_in = "", False, None
for i, line in enumerate(lines):
    m = re.match(r"\s*\[(.+)\]\s*$", line)
    if m:
        cur = m.group(1)
        continue
    if cur == section:
        last_in = i
        if re.match(r"\s*" + re.escape(key) + r"\s*=", line):
            lines[i] = f"{key} = {value}"
            done = True
if not done:
    if section == "":
        lines.insert(0, f"{key} = {value}")
    elif last_in is not None:
        lines.insert(last_in + 1, f"{key} = {value}")
    else:
        lines += [f"[{section}]", f"{key} = {value}"]
open(path, "w").write("\n".join(lines))
PY
}

A=$T/consortium
AC=$A/etc/medfl/aggregator.conf
SITE_ID[$A]=hospital-a
# what a Debian machine already has
mkdir -p "$A/usr/local/bin"
HOSP=(hospital-a hospital-b hospital-c)
site() { echo "$T/$1"; }
nconf() { echo "$(site "$1")/etc/medfl/node.conf"; }

"$NODE" synth --sites 3 --records-per-site 120 --seed 7 -o "$T/synth" >"$T/synth.out" 2>&1 ||
  die "synth: $(tail -3 "$T/synth.out")"

# ---- the consortium operator: install, config, keys
step() { # step SITE BLOCK DESCRIPTION: a guide block that must succeed
  if guide_run "$1" "$2"; then pass "$3"; else fail "$3 (block $2)" "$1/$2.out"; it_summary; fi
}
step "$A" agg-install "aggregator guide: install"
step "$A" agg-config "aggregator guide: configuration"
conf_set "$AC" net heartbeat_interval_ms 200
conf_set "$AC" net heartbeat_timeout_ms 3000
conf_set "$AC" registry poll_ms 200
for k in keys_deadline_ms shares_deadline_ms unmask_deadline_ms; do conf_set "$AC" federation $k 5000; done
conf_set "$AC" federation train_deadline_ms 120000
conf_set "$AC" federation eval_deadline_ms 5000
conf_set "$AC" federation select_wait_ms 300
conf_set "$AC" federation local_steps 2
# every phase stays open 1.5 s, so the test can stop a node in the middle of one
conf_set "$AC" federation debug_phase_hold_ms 1500
conf_set "$AC" metrics listen 0
step "$A" agg-keygen "aggregator guide: keygen"

# ---- each hospital: install, config, keys, model, records, privacy plan
for h in "${HOSP[@]}"; do
  S=$(site "$h"); SITE_ID[$S]=$h; mkdir -p "$S/usr/local/bin"
  step "$S" node-install "$h: node guide: install"
  step "$S" node-config "$h: node guide: configuration"
  conf_set "$(nconf "$h")" net heartbeat_interval_ms 200
  conf_set "$(nconf "$h")" train max_seq_len 48
  conf_set "$(nconf "$h")" train threads 1
  conf_set "$(nconf "$h")" metrics listen 0
  # the consortium operator's two public keys, as the node guide says to save them
  install -m 0644 "$A/etc/medfl/aggregator/keys/curve.pub" "$S/etc/medfl/aggregator.pub"
  install -m 0644 "$A/etc/medfl/aggregator/keys/identity.pub" "$S/etc/medfl/aggregator-identity.pub"
  mkdir -p "$S/srv/medfl"
  k=$(( $(printf '%d' "'${h#hospital-}") - 96 )) # hospital-a, -b, -c: synthetic site 1, 2, 3
  cp "$T/synth/site-$k/train.jsonl" "$S/srv/medfl/notes.jsonl"
  step "$S" node-keygen "$h: node guide: keygen"
  step "$S" node-model-data "$h: node guide: import-model and check-data"
  step "$S" node-privacy "$h: node guide: privacy plan before the first round"
  # the hospital sends its two public keys to the operator
  mkdir -p "$A/etc/medfl/aggregator/nodes/$h"
  cp "$S/etc/medfl/node/keys/curve.pub" "$S/etc/medfl/node/keys/identity.pub" "$A/etc/medfl/aggregator/nodes/$h/"
done
if grep -q "labels = $(cat "$T/synth/labels.txt")\$" "$(nconf hospital-a)"; then
  pass "the guide's label list is the synthetic records' (the example is real)"
else
  fail "the node guide's data.labels differs from medfl-node synth's labels" "$T/synth/labels.txt"
fi

# ---- enrollment and the first version
for h in "${HOSP[@]}"; do
  SITE_ID[$A]=$h
  step "$A" agg-enroll "aggregator guide: enroll $h"
done
step "$(site hospital-a)" node-init-adapter "node guide: init-adapter (genesis)"
mkdir -p "$A/srv/medfl"
cp -r "$(site hospital-a)/var/lib/medfl/node/genesis" "$A/srv/medfl/genesis"
step "$A" agg-init-version "aggregator guide: init-version"

# ---- the daemons
status_field() { "$AGG" status -c "$AC" 2>/dev/null | field "$1"; }
completed_at_least() { [ "$(status_field rounds_completed)" -ge "$1" ] 2>/dev/null; }
guide_bg "$A" agg-run "$A/agg.log" agg
for h in "${HOSP[@]}"; do guide_bg "$(site "$h")" node-run "$(site "$h")/node.log" "$h"; done
if wait_until 180 completed_at_least 2; then
  pass "aggregator and three nodes started as the guides say complete 2 secure DP rounds"
else
  fail "rounds_completed '$(status_field rounds_completed)'" "$A/agg.log" "$(site hospital-a)/node.log"
  it_summary
fi
if guide_run "$A" agg-check && grep -q "^connected: 3" "$A/agg-check.out" &&
   [ "$(grep -c "hospital-" "$A/agg-check.out")" -ge 3 ]; then
  pass "status and nodes on the running aggregator (3 connected)"
else
  fail "status/nodes" "$A/agg-check.out"
fi
if guide_run "$A" agg-versions && grep -q "^\*" "$A/agg-versions.out"; then
  pass "versions lists and verifies the chain of the running aggregator"
else
  fail "versions" "$A/agg-versions.out"
fi

# ---- a hospital's node stopped and restarted in the middle of a round
phase_is() { [ "$(status_field phase)" = "$1" ]; }
wait_until 60 phase_is input || fail "no round reached the input phase" "$A/agg.log"
r=$(status_field round)
done_before=$(status_field rounds_completed)
kill -TERM "${PIDS[hospital-b]}"
reap hospital-b; rc=$?
[ $rc = 0 ] && pass "SIGTERM stops a node mid-round with status 0" || fail "node exit status $rc" "$(site hospital-b)/node.log"
guide_bg "$(site hospital-b)" node-run "$(site hospital-b)/node.log" hospital-b
t0=$SECONDS
if wait_until 30 completed_at_least $((done_before + 1)); then
  pass "round $r completed without the restarted node in $((SECONDS - t0)) s (train deadline 120 s)"
else
  fail "round $r stalled after hospital-b restarted" "$A/agg.log"
fi
rejoined() { grep -q "hospital-b" <<<"$("$AGG" status -c "$AC" 2>/dev/null | grep '^participants:')" && [ "$(status_field round)" -gt "$r" ]; }
if wait_until 60 rejoined; then
  pass "the restarted node takes part in the next round"
else
  fail "hospital-b not in a round after round $r" "$A/agg.log" "$(site hospital-b)/node.log"
fi

# ---- weights and the report on the running federation
completed_at_least 3 || wait_until 90 completed_at_least 3
if guide_run "$A" agg-weights-report && [ -s "$A/var/lib/medfl/aggregator/report.html" ] &&
   [ "$(grep -c "hospital-" "$A/agg-weights-report.out")" -ge 3 ]; then
  pass "weights and report on the running aggregator"
else
  fail "weights/report" "$A/agg-weights-report.out"
fi

# ---- rollback on the running aggregator: the next version's parent is the rolled-back one
head_now() { "$AGG" versions -c "$AC" 2>/dev/null | awk '$1 ~ /^\*/ { sub(/^\*/, "", $1); print $1 }'; }
if guide_run "$A" agg-rollback; then
  pass "rollback 2 on the running aggregator"
else
  fail "rollback" "$A/agg-rollback.out"
fi
new_head() { h=$(head_now); [ -n "$h" ] && [ "$h" -gt 2 ]; }
if wait_until 120 new_head; then
  "$AGG" versions -c "$AC" >"$A/versions-after.out" 2>&1
  parent=$(awk -v v="$(head_now)" '{ x = $1; sub(/^\*/, "", x) } x == v { print $2 }' "$A/versions-after.out")
  if [ "$parent" = 2 ]; then
    pass "the running aggregator's next version (v$(head_now)) has the rolled-back v2 as parent"
  else
    fail "next version's parent is '$parent', not 2" "$A/versions-after.out" "$A/agg.log"
  fi
else
  fail "no version after the rollback" "$A/agg.log"
fi
if guide_run "$A" agg-export && [ -s "$A/srv/medfl/export-v3/adapter_config.json" ] &&
   [ -s "$A/srv/medfl/export-v3/adapter_model.safetensors" ]; then
  pass "export of a version as a PEFT adapter"
else
  fail "export" "$A/agg-export.out"
fi

# ---- a second aggregator on the same state folder is refused; the first runs on
# (another port: the lock, not the bind, must be what refuses it)
pid_before=$(status_field pid)
sed "s#127.0.0.1:$GUIDE_PORT#127.0.0.1:$(free_port)#" "$AC" >"$A/second.conf"
start agg2 "$A/agg2.log" "$A/usr/local/bin/medfl-aggregator" run -c "$A/second.conf"
if wait_until 20 gone agg2; then
  reap agg2; rc=$?
  if [ $rc != 0 ] && grep -qi "lock\|already" "$A/agg2.log" && alive agg &&
     [ "$(status_field pid)" = "$pid_before" ] && [ "$(status_field running)" = yes ]; then
    pass "a second aggregator on the locked state folder is refused (status $rc); status still shows the first"
  else
    fail "second aggregator: status $rc, status pid $(status_field pid) (was $pid_before)" "$A/agg2.log"
  fi
else
  fail "a second aggregator runs on the same state folder" "$A/agg2.log"
fi

unrun=$(guide_unrun | tr '\n' ' ')
if [ -z "$unrun" ]; then
  pass "every marked block of both guides ran"
else
  fail "marked blocks never run: $unrun"
fi
it_summary
