# shellcheck shell=bash
# Shell helpers shared by the integration tests; sourced, never run as a test (the runner,
# tests/run-integration.sh, runs test_*.sh only). One copy, so that a fix to how daemons are
# started, waited for and cleaned up reaches every test at once.
#
#   . "$(dirname "$0")/lib.sh"
#   it_setup NAME          name=NAME, T = fresh temporary folder; on exit every process
#                          started with `start` is SIGKILLed and T removed (KEEP_TMP=1 keeps
#                          it and prints its path); SIGINT/SIGTERM exit 130 through the same
#                          cleanup
#   pass TEXT / fail TEXT [LOG...]   counted checks: fail prints the last IT_TAIL (25) lines
#                          of each LOG and counts; it_summary prints the tally and exits;
#                          IT_PREFIX (empty unless set) goes before TEXT, for tests whose
#                          lines read "PASS NAME: TEXT"
#   die TEXT               fatal check: prints "FAIL NAME: TEXT" and exits 1
#   skip TEXT              prints "SKIP NAME: TEXT" and exits 77 (the runner's skip status)
#   wait_until SECONDS COMMAND...    polls COMMAND every IT_POLL (0.2) s, false after SECONDS
#   start NAME LOG COMMAND...        runs COMMAND in the background, output appended to LOG,
#                          pid in PIDS[NAME]; alive NAME / gone NAME; reap NAME waits for it
#                          and returns its exit status; stop9 NAME kills it with SIGKILL
#   free_port              a TCP port free on 127.0.0.1 now
#   field KEY              value of the "KEY: value" line on stdin
#   keygen_enroll DIR ID AGG_CONF LOG   `$NODE keygen` for DIR/node.conf (output in
#                          DIR/keygen.out), then `$AGG enroll ID` with its CURVE and identity
#                          public keys, output appended to LOG; false when either fails
# Bash only (associative arrays).

declare -A PIDS=()
failures=0
name=${name:-$(basename "$0" .sh)}

it_cleanup() {
  local n
  for n in "${!PIDS[@]}"; do kill -9 "${PIDS[$n]}" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${T:-}" ] || return 0
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}

it_setup() {
  name=$1
  T=$(mktemp -d "/tmp/medfl-it-$name-XXXXXX") || { echo "FAIL $name: mktemp"; exit 1; }
  trap it_cleanup EXIT
  trap 'exit 130' INT TERM
}

pass() { echo "PASS ${IT_PREFIX:-}$1"; }
fail() {
  echo "FAIL ${IT_PREFIX:-}$1"
  failures=$((failures + 1))
  shift
  local f
  for f in "$@"; do
    echo "--- $f"
    if [ -f "$f" ]; then tail -n "${IT_TAIL:-25}" "$f" | sed 's/^/    /'; else echo "    (missing)"; fi
  done
  return 0
}
it_summary() {
  if [ "$failures" -eq 0 ]; then echo "$name: all checks passed"; exit 0; fi
  echo "$name: $failures check(s) failed"
  exit 1
}
die() { echo "FAIL $name: $*"; exit 1; }
skip() { echo "SKIP $name: $*"; exit 77; }

wait_until() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && return 1
    sleep "${IT_POLL:-0.2}"
  done
}

start() {
  local n=$1 log=$2; shift 2
  "$@" >>"$log" 2>&1 &
  PIDS[$n]=$!
}
alive() { [ -n "${PIDS[$1]:-}" ] && kill -0 "${PIDS[$1]}" 2>/dev/null; }
gone() { ! alive "$1"; }
reap() { # an unknown NAME (never started, or reaped already) returns 127
  local rc=0
  [ -n "${PIDS[$1]:-}" ] || return 127
  wait "${PIDS[$1]}" 2>/dev/null || rc=$?
  unset "PIDS[$1]"
  return $rc
}
stop9() {
  [ -n "${PIDS[$1]:-}" ] || return 0
  kill -9 "${PIDS[$1]}" 2>/dev/null
  reap "$1"
  return 0
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
field() { awk -v k="$1:" '$1 == k { print $2 }'; }
keygen_enroll() {
  local dir=$1 id=$2 ac=$3 log=$4
  "$NODE" keygen -c "$dir/node.conf" >"$dir/keygen.out" 2>&1 || return 1
  "$AGG" enroll "$id" "$(field curve_public <"$dir/keygen.out")" \
    --identity "$(field identity_public <"$dir/keygen.out")" -c "$ac" >>"$log" 2>&1
}
