#!/usr/bin/env bash
# Runs every tests/integration/test_*.sh (or $TESTS_DIR/test_*.sh) with MEDFL_BIN pointing at the binaries under test
# (other .sh files there, such as lib.sh, are sourced helpers, not tests).
# Each script prints "PASS name" / "SKIP name: reason" and exits 0 (pass), 77 (skip) or
# anything else (fail).
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with medfl-node and medfl-aggregator}"
export MEDFL_BIN
pass=0; skip=0; fail=0; failed=()
for t in "${TESTS_DIR:-tests/integration}"/test_*.sh; do
  [ -e "$t" ] || continue
  echo "=== $(basename "$t")"
  bash "$t"; rc=$?
  case $rc in
    0) pass=$((pass+1));;
    77) skip=$((skip+1));;
    *) fail=$((fail+1)); failed+=("$(basename "$t")");;
  esac
done
echo "integration tests: $pass passed, $skip skipped, $fail failed ${failed[*]:-}"
[ $fail -eq 0 ]
