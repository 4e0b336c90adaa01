#!/usr/bin/env bash
# Runs every cmocka unit test binary given on the command line from the repository root,
# so tests find their fixtures under tests/. Prints each binary's cmocka summary and a
# total; exits non-zero when any test failed. Skipped tests (no GPU, no optional model or
# data) print their reason and are counted as skipped by cmocka.
set -u
fail=0; failed=()
for t in "$@"; do
  echo "=== $(basename "$t")"
  if ! "$t"; then fail=1; failed+=("$(basename "$t")"); fi
done
if [ $fail -ne 0 ]; then
  echo "unit tests FAILED: ${failed[*]}"
  exit 1
fi
echo "unit tests: all $# binaries passed"
