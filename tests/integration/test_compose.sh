#!/usr/bin/env bash
# The container simulation (deploy/simulate.sh) end to end, in the modes the current build
# supports: the connect phase (--rounds 0) with a generated compose file for 4 hospitals,
# the fault scenario on the committed 3-hospital file (one hospital stopped, the aggregator
# restarted, the others reconnect), the clear failure when rounds are asked of a build
# whose `medfl-aggregator status` has no rounds_completed line (or, once it has one, one
# real round), and teardown after SIGTERM. Every run must leave no container, volume or
# network behind.
#
# Static checks first (deploy/docker-compose.yml is what `deploy/gen-compose.sh 3` writes;
# bad arguments are refused), then exit 77 (skip) when no container engine can run here:
# no Docker engine, and podman cannot be installed or used (not root).
# The image is built from its own non-sanitized, CPU-only binaries (build-container/), not
# from MEDFL_BIN, so the sanitizer pass of the suite skips it rather than repeat it.
set -u
cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD

# shellcheck source=tests/integration/lib.sh
. tests/integration/lib.sh
it_setup test_compose
IT_TAIL=40

# ---- static ----------------------------------------------------------------------------------
if deploy/gen-compose.sh 3 | cmp -s - deploy/docker-compose.yml; then
  pass "deploy/docker-compose.yml is what gen-compose.sh 3 writes"
else fail "deploy/docker-compose.yml differs from gen-compose.sh 3: regenerate it"; fi
deploy/gen-compose.sh 5 >"$T/c5.yml"
if [ "$(grep -c '^  hospital-[0-9]*:$' "$T/c5.yml")" = 5 ] &&
  [ "$(grep -c '^  hospital-[0-9]*-keys:$' "$T/c5.yml")" = 5 ] &&
  grep -q 'MEDFL_HOSPITALS: "hospital-1 hospital-2 hospital-3 hospital-4 hospital-5"' "$T/c5.yml"
then pass "gen-compose.sh 5: 5 hospital services, each with its own volumes, all enrolled by init"
else fail "gen-compose.sh 5 output" "$T/c5.yml"; fi
if deploy/gen-compose.sh 0 >"$T/g0.out" 2>&1 || deploy/simulate.sh --hospitals x >"$T/s.out" 2>&1 ||
  deploy/simulate.sh --fault --hospitals 1 >"$T/s1.out" 2>&1; then
  fail "bad arguments accepted"
else pass "bad hospital counts refused by gen-compose.sh and simulate.sh"; fi

if [ $failures -ne 0 ]; then echo "test_compose: $failures check(s) failed"; exit 1; fi

case "${MEDFL_BIN:-}" in
  *build-san*)
    skip "the simulation image uses its own non-sanitized build; it runs in the plain suite" ;;
esac
# shellcheck source=deploy/container-env.sh
. deploy/container-env.sh
rc=0
medfl_engine_setup "$REPO" >"$T/engine.out" 2>&1 || rc=$?
if [ $rc -ne 0 ]; then
  skip "no container engine: $(tr '\n' ' ' <"$T/engine.out")"
fi
echo "test_compose: engine $ENGINE"

project_of() { sed -n 's/^simulate: project \([^:]*\):.*/\1/p' "$1" | head -n 1; }
left_behind() { # left_behind PROJECT -> prints what still exists
  $ENGINE ps -a -q --filter "label=com.docker.compose.project=$1"
  $ENGINE volume ls -q | grep "^$1_"
  $ENGINE network ls --format '{{.Name}}' | grep "^$1_"
}
progress() { # the run's timed milestones, for reading CI logs
  grep -E "^simulate: (init done|all [0-9]+ hospitals connected|fault: [0-9]+ hospitals)" "$1" |
    sed 's/^/    /'
  return 0
}
check_clean() { # check_clean LOG WHAT
  local p
  p=$(project_of "$1")
  if [ -n "$p" ] && [ -z "$(left_behind "$p")" ]; then pass "$2: nothing left of $p"
  else fail "$2: left behind of '$p': $(left_behind "$p" | tr '\n' ' ')" "$1"; fi
}

# ---- connect phase, generated file for 4 hospitals -------------------------------------------
t0=$SECONDS
deploy/simulate.sh --hospitals 4 --rounds 0 >"$T/connect.out" 2>"$T/connect.log"
rc=$?
if [ $rc -eq 0 ] && grep -q "^simulate: all 4 hospitals connected" "$T/connect.log" &&
  [ "$(tail -n 1 "$T/connect.out")" = "rounds_completed: 0" ] &&
  grep -q "^connected_at_end: 4$" "$T/connect.out" &&
  [ "$(grep -cE '^  hospital-[1-4] +[0-9a-f]{16} +enrolled +yes ' "$T/connect.out")" = 4 ]; then
  pass "4 hospitals (generated compose file) connected, summary ends with rounds_completed: 0 ($((SECONDS - t0)) s)"
else fail "connect phase with 4 hospitals (rc $rc)" "$T/connect.log" "$T/connect.out"; fi
progress "$T/connect.log"
check_clean "$T/connect.log" "connect phase"

# ---- fault scenario, committed 3-hospital file -----------------------------------------------
t0=$SECONDS
deploy/simulate.sh --rounds 0 --fault >"$T/fault.out" 2>"$T/fault.log"
rc=$?
if [ $rc -eq 0 ] && grep -q "^simulate: fault: stopped hospital-3" "$T/fault.log" &&
  grep -qE "^simulate: fault: aggregator restarted \(instance [0-9a-f]+ -> [0-9a-f]+\)" "$T/fault.log" &&
  grep -q "^simulate: fault: 2 hospitals reconnected to the new instance" "$T/fault.log" &&
  grep -qE '^  hospital-3 +[0-9a-f]{16} +enrolled +no ' "$T/fault.out" &&
  [ "$(grep -cE '^  hospital-[12] +[0-9a-f]{16} +enrolled +yes ' "$T/fault.out")" = 2 ] &&
  [ "$(tail -n 1 "$T/fault.out")" = "rounds_completed: 0" ]; then
  pass "fault: hospital-3 stopped, aggregator restarted, hospitals 1-2 reconnected ($((SECONDS - t0)) s)"
else fail "fault scenario (rc $rc)" "$T/fault.log" "$T/fault.out"; fi
progress "$T/fault.log"
check_clean "$T/fault.log" "fault scenario"

# ---- rounds: refused clearly without the round runtime, else one real round --------------------
t0=$SECONDS
deploy/simulate.sh --rounds 1 >"$T/rounds.out" 2>"$T/rounds.log"
rc=$?
if grep -q "FAIL: rounds are not implemented in this build" "$T/rounds.log"; then
  if [ $rc -ne 0 ] && ! [ -s "$T/rounds.out" ]; then
    pass "--rounds 1 without a round runtime fails saying so, no summary ($((SECONDS - t0)) s)"
  else fail "--rounds 1 without a round runtime must fail (rc $rc)" "$T/rounds.log"; fi
elif [ $rc -eq 0 ] && [ "$(tail -n 1 "$T/rounds.out")" = "rounds_completed: 1" ]; then
  pass "one federation round completed ($((SECONDS - t0)) s)"
else fail "--rounds 1 (rc $rc)" "$T/rounds.log" "$T/rounds.out"; fi
check_clean "$T/rounds.log" "rounds run"

# ---- SIGTERM in the middle still tears everything down -----------------------------------------
deploy/simulate.sh --rounds 0 >"$T/term.out" 2>"$T/term.log" &
pid=$!
end=$((SECONDS + 120))
until grep -q "^simulate: init done" "$T/term.log" || [ $SECONDS -ge $end ]; do sleep 0.5; done
kill -TERM $pid
wait $pid
rc=$?
if [ $rc -ne 0 ] && grep -q "^simulate: interrupted by SIGTERM" "$T/term.log" &&
  grep -q "^simulate: tearing down" "$T/term.log"; then
  pass "SIGTERM mid-run: simulate.sh stops (rc $rc) and tears down"
else fail "SIGTERM mid-run (rc $rc)" "$T/term.log"; fi
check_clean "$T/term.log" "after SIGTERM"

it_summary
