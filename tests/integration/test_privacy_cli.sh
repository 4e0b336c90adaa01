#!/usr/bin/env bash
# `medfl-node privacy`: the what-if calculator against published values (Opacus' test case
# q=0.04 σ=1.5 2250 steps δ=1e-5 → ε=7.32911117143; TF-Privacy's MNIST tutorial, classic
# conversion → 3.01), the inverse (target ε → σ, and that σ spends at most the target),
# usage errors (exit 2), and the ledger mode on a ledger created with --init, with rows
# appended as the node would (Python's sqlite3) and a δ mismatch refused.
set -u
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_privacy_cli

# within LABEL GOT WANT REL: |got - want| <= rel * |want|
within() {
  awk -v g="$2" -v w="$3" -v r="$4" 'BEGIN { d = g - w; if (d < 0) d = -d; a = w < 0 ? -w : w; exit !(d <= r * a) }' \
    || die "$1: got '$2', want $3 (relative tolerance $4)"
}

out=$("$NODE" privacy --sample-rate 0.04 --noise-multiplier 1.5 --steps 2250 --delta 1e-5) || die "what-if exited $?"
within "opacus epsilon" "$(echo "$out" | field epsilon)" 7.32911117143 1e-6
[ "$(echo "$out" | field optimal_order)" = "3.9" ] || die "optimal order: $out"

out=$("$NODE" privacy --sample-rate 0.0042666666666666667 --noise-multiplier 1.1 --steps 14062 \
      --delta 1e-5 --conversion classic) || die "classic exited $?"
within "tf-privacy mnist 60 epochs" "$(echo "$out" | field epsilon)" 3.01 0.0034

out=$("$NODE" privacy --sample-rate 0.04 --target-epsilon 7.32911117143 --steps 2250 --delta 1e-5) \
  || die "inverse exited $?"
sigma=$(echo "$out" | field noise_multiplier)
within "inverse sigma" "$sigma" 1.5 0.01
out2=$("$NODE" privacy --sample-rate 0.04 --noise-multiplier "$sigma" --steps 2250 --delta 1e-5)
eps2=$(echo "$out2" | field epsilon)
awk -v e="$eps2" 'BEGIN { exit !(e <= 7.32911117143 && e >= 7.32911117143 - 0.01) }' \
  || die "sigma $sigma spends $eps2, want within 0.01 below the target"

for args in "--sample-rate 0.04 --steps 2250 --delta 1e-5" \
            "--sample-rate 1.5 --noise-multiplier 1 --steps 10 --delta 1e-5" \
            "--sample-rate 0.1 --noise-multiplier 1 --steps 10" \
            "--sample-rate 0.1 --noise-multiplier 1 --target-epsilon 2 --steps 10 --delta 1e-5" \
            "--sample-rate 0.1 --noise-multiplier 1 --steps ten --delta 1e-5" \
            "--conversion fancy" "--frobnicate" "--ledger $T/x.db"; do
  # shellcheck disable=SC2086
  "$NODE" privacy $args >/dev/null 2>"$T/err"; rc=$?
  [ $rc -eq 2 ] || die "'$args' exited $rc, want 2"
  [ -s "$T/err" ] || die "'$args': no message on stderr"
done

# Ledger mode.
"$NODE" privacy --ledger "$T/none.db" --budget 3 --delta 1e-5 >/dev/null 2>"$T/err" && die "missing ledger accepted"
grep -q "not found" "$T/err" || die "missing ledger message: $(cat "$T/err")"
"$NODE" privacy --ledger "$T/l.db" --budget 3 --delta 1e-5 --init >"$T/out" 2>"$T/err" || die "--init exited $?"
[ "$(field spent <"$T/out")" = "0.000000" ] || die "empty ledger: $(cat "$T/out")"
if command -v python3 >/dev/null && python3 -c 'import sqlite3' 2>/dev/null; then
  python3 - "$T/l.db" <<'PY' || die "could not append rows"
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
  "$NODE" privacy --ledger "$T/l.db" --budget 8 --delta 1e-5 --sample-rate 0.04 --steps 1000 \
      --noise-multiplier 1.5 >"$T/out" || die "ledger mode exited $?"
  within "ledger spent" "$(field spent <"$T/out")" 7.32911117143 1e-6
  within "ledger remaining" "$(field remaining <"$T/out")" 0.67088882857 1e-5
  [ "$(field rounds_admitted <"$T/out")" = 2 ] || die "admitted count: $(cat "$T/out")"
  [ "$(field rounds_declined <"$T/out")" = 1 ] || die "declined count"
  grep -q "round 3 .*declined.*reason: privacy budget: test" "$T/out" || die "history: $(cat "$T/out")"
  grep -q "^planned_round: exceeds budget" "$T/out" || die "plan check: $(cat "$T/out")"
  # Through a node config (only the privacy keys are read; relative state_dir).
  mkdir -p "$T/conf/state"; cp "$T/l.db" "$T/conf/state/privacy_ledger.db"
  printf 'node_id = "hospital-a"\nstate_dir = state\n[privacy]\nepsilon_budget = 10 # total\ndelta = 1e-5\n' >"$T/conf/node.conf"
  "$NODE" privacy -c "$T/conf/node.conf" >"$T/out" || die "-c exited $?: $(cat "$T/out")"
  within "conf remaining" "$(field remaining <"$T/out")" 2.67088882857 1e-5
  printf 'state_dir = state\n[privacy]\nepsilon_budget = 10\ndelta = 1e-6\n' >"$T/conf/bad.conf"
  "$NODE" privacy -c "$T/conf/bad.conf" >/dev/null 2>"$T/err" && die "delta mismatch accepted"
  grep -q "started with delta = 1e-05" "$T/err" || die "delta mismatch message: $(cat "$T/err")"
  # Without the keys the daemon's defaults apply (epsilon 10, delta 1e-5), here too.
  printf 'state_dir = state\n' >"$T/conf/defaults.conf"
  "$NODE" privacy -c "$T/conf/defaults.conf" >"$T/out" 2>"$T/err" || die "defaults: $(cat "$T/err")"
  within "default budget remaining" "$(field remaining <"$T/out")" 2.67088882857 1e-5
  printf 'state_dir = state\n[privacy]\nepsilon_budget = -3\ndelta = 1e-5\n' >"$T/conf/neg.conf"
  "$NODE" privacy -c "$T/conf/neg.conf" >/dev/null 2>"$T/err" && die "negative budget accepted"
  grep -q "neg.conf:3: key 'privacy.epsilon_budget'" "$T/err" || die "bad value message: $(cat "$T/err")"
else
  echo "note: python3 sqlite3 not available, ledger history part not run"
fi
echo "PASS $name"
exit 0
