#!/usr/bin/env bash
# `medfl-node privacy`: the what-if calculator against published values (Opacus' test case
# q=0.04 σ=1.5 2250 steps δ=1e-5 → ε=7.32911117143; TF-Privacy's MNIST tutorial, classic
# conversion → 3.01), the inverse (target ε → σ, and that σ spends at most the target),
# usage errors (exit 2), and the ledger mode on a ledger created with --init, with rows
# appended as the node would (Python's sqlite3) and a δ mismatch refused.
set -u
NODE="$MEDFL_BIN/medfl-node"
name=test_privacy_cli
fail() { echo "FAIL $name: $*"; exit 1; }
tmp=$(mktemp -d /tmp/medfl-privacy-cli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

field() { awk -v k="$1:" '$1 == k { print $2 }'; }
# within LABEL GOT WANT REL: |got - want| <= rel * |want|
within() {
  awk -v g="$2" -v w="$3" -v r="$4" 'BEGIN { d = g - w; if (d < 0) d = -d; a = w < 0 ? -w : w; exit !(d <= r * a) }' \
    || fail "$1: got '$2', want $3 (relative tolerance $4)"
}

out=$("$NODE" privacy --sample-rate 0.04 --noise-multiplier 1.5 --steps 2250 --delta 1e-5) || fail "what-if exited $?"
within "opacus epsilon" "$(echo "$out" | field epsilon)" 7.32911117143 1e-6
[ "$(echo "$out" | field optimal_order)" = "3.9" ] || fail "optimal order: $out"

out=$("$NODE" privacy --sample-rate 0.0042666666666666667 --noise-multiplier 1.1 --steps 14062 \
      --delta 1e-5 --conversion classic) || fail "classic exited $?"
within "tf-privacy mnist 60 epochs" "$(echo "$out" | field epsilon)" 3.01 0.0034

out=$("$NODE" privacy --sample-rate 0.04 --target-epsilon 7.32911117143 --steps 2250 --delta 1e-5) \
  || fail "inverse exited $?"
sigma=$(echo "$out" | field noise_multiplier)
within "inverse sigma" "$sigma" 1.5 0.01
out2=$("$NODE" privacy --sample-rate 0.04 --noise-multiplier "$sigma" --steps 2250 --delta 1e-5)
eps2=$(echo "$out2" | field epsilon)
awk -v e="$eps2" 'BEGIN { exit !(e <= 7.32911117143 && e >= 7.32911117143 - 0.01) }' \
  || fail "sigma $sigma spends $eps2, want within 0.01 below the target"

for args in "--sample-rate 0.04 --steps 2250 --delta 1e-5" \
            "--sample-rate 1.5 --noise-multiplier 1 --steps 10 --delta 1e-5" \
            "--sample-rate 0.1 --noise-multiplier 1 --steps 10" \
            "--sample-rate 0.1 --noise-multiplier 1 --target-epsilon 2 --steps 10 --delta 1e-5" \
            "--sample-rate 0.1 --noise-multiplier 1 --steps ten --delta 1e-5" \
            "--conversion fancy" "--frobnicate" "--ledger $tmp/x.db"; do
  # shellcheck disable=SC2086
  "$NODE" privacy $args >/dev/null 2>"$tmp/err"; rc=$?
  [ $rc -eq 2 ] || fail "'$args' exited $rc, want 2"
  [ -s "$tmp/err" ] || fail "'$args': no message on stderr"
done

# Ledger mode.
"$NODE" privacy --ledger "$tmp/none.db" --budget 3 --delta 1e-5 >/dev/null 2>"$tmp/err" && fail "missing ledger accepted"
grep -q "not found" "$tmp/err" || fail "missing ledger message: $(cat "$tmp/err")"
"$NODE" privacy --ledger "$tmp/l.db" --budget 3 --delta 1e-5 --init >"$tmp/out" 2>"$tmp/err" || fail "--init exited $?"
[ "$(field spent <"$tmp/out")" = "0.000000" ] || fail "empty ledger: $(cat "$tmp/out")"
if command -v python3 >/dev/null && python3 -c 'import sqlite3' 2>/dev/null; then
  python3 - "$tmp/l.db" <<'PY' || fail "could not append rows"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
for r in (1, 2):
    db.execute("INSERT INTO rounds(round_id, ts, status, q, sigma, steps, delta, epsilon, budget, reason)"
               " VALUES(?, ?, 'admitted', 0.04, 1.5, 1125, 1e-5, 0, 3, '')", (r, int(time.time())))
db.execute("INSERT INTO rounds(round_id, ts, status, q, sigma, steps, delta, epsilon, budget, reason)"
           " VALUES(3, ?, 'declined', 0.04, 1.5, 1125, 1e-5, 9.9, 3, 'privacy budget: test')", (int(time.time()),))
db.commit()
PY
  # The spent epsilon is recomputed from (q, sigma, steps): two rounds of 1125 steps = the Opacus case.
  "$NODE" privacy --ledger "$tmp/l.db" --budget 8 --delta 1e-5 --sample-rate 0.04 --steps 1000 \
      --noise-multiplier 1.5 >"$tmp/out" || fail "ledger mode exited $?"
  within "ledger spent" "$(field spent <"$tmp/out")" 7.32911117143 1e-6
  within "ledger remaining" "$(field remaining <"$tmp/out")" 0.67088882857 1e-5
  [ "$(field rounds_admitted <"$tmp/out")" = 2 ] || fail "admitted count: $(cat "$tmp/out")"
  [ "$(field rounds_declined <"$tmp/out")" = 1 ] || fail "declined count"
  grep -q "round 3 .*declined.*reason: privacy budget: test" "$tmp/out" || fail "history: $(cat "$tmp/out")"
  grep -q "^planned_round: exceeds budget" "$tmp/out" || fail "plan check: $(cat "$tmp/out")"
  # Through a node config (only the privacy keys are read; relative state_dir).
  mkdir -p "$tmp/conf/state"; cp "$tmp/l.db" "$tmp/conf/state/privacy_ledger.db"
  printf 'node_id = "hospital-a"\nstate_dir = state\n[privacy]\nepsilon_budget = 10 # total\ndelta = 1e-5\n' >"$tmp/conf/node.conf"
  "$NODE" privacy -c "$tmp/conf/node.conf" >"$tmp/out" || fail "-c exited $?: $(cat "$tmp/out")"
  within "conf remaining" "$(field remaining <"$tmp/out")" 2.67088882857 1e-5
  printf 'state_dir = state\n[privacy]\nepsilon_budget = 10\ndelta = 1e-6\n' >"$tmp/conf/bad.conf"
  "$NODE" privacy -c "$tmp/conf/bad.conf" >/dev/null 2>"$tmp/err" && fail "delta mismatch accepted"
  grep -q "started with delta = 1e-05" "$tmp/err" || fail "delta mismatch message: $(cat "$tmp/err")"
  # Without the keys the daemon's defaults apply (epsilon 10, delta 1e-5), here too.
  printf 'state_dir = state\n' >"$tmp/conf/defaults.conf"
  "$NODE" privacy -c "$tmp/conf/defaults.conf" >"$tmp/out" 2>"$tmp/err" || fail "defaults: $(cat "$tmp/err")"
  within "default budget remaining" "$(field remaining <"$tmp/out")" 2.67088882857 1e-5
  printf 'state_dir = state\n[privacy]\nepsilon_budget = -3\ndelta = 1e-5\n' >"$tmp/conf/neg.conf"
  "$NODE" privacy -c "$tmp/conf/neg.conf" >/dev/null 2>"$tmp/err" && fail "negative budget accepted"
  grep -q "neg.conf:3: key 'privacy.epsilon_budget'" "$tmp/err" || fail "bad value message: $(cat "$tmp/err")"
else
  echo "note: python3 sqlite3 not available, ledger history part not run"
fi
echo "PASS $name"
exit 0
