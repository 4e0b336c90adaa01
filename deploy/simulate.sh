#!/usr/bin/env bash
# Runs a simulated medfl consortium in containers on this machine and reports how it went.
#
#   deploy/simulate.sh [--hospitals N] [--rounds R] [--fault] [--timeout S] [--no-build]
#
# Builds the image (deploy/build-images.sh; --no-build uses $MEDFL_IMAGE as it is), brings
# up deploy/docker-compose.yml (or, for N != 3, the file deploy/gen-compose.sh writes for N
# hospitals), waits until the aggregator lists all N hospitals as connected, then waits
# for R completed federation rounds, and prints a summary whose last line is
# `rounds_completed: R`.
#
# --fault: one hospital (the last) is stopped mid-run (after the first round, or right after
# connecting when R = 0) and the aggregator is restarted; the run must still finish: the
# other hospitals reconnect to the new aggregator instance and the rounds go on without
# the stopped one.
#
# Rounds are read from the `rounds_completed: K` line of `medfl-aggregator status`. With
# R > 0 and no such line (a build without the round runtime), the run fails saying so.
#
# Engine: `docker compose` where a Docker engine answers, else podman-compose (installed
# with podman and runc when missing and root; see deploy/container-env.sh). Exit status 77
# when neither can run here. Everything the run created (containers, network, volumes) is
# removed on exit, also on failure or Ctrl-C; KEEP=1 leaves it for inspection.
#
# Environment: MEDFL_BASE_MODEL (folder mounted at /model; default deploy/model),
# MEDFL_RECORDS_HOSPITAL_K (a folder of real records for hospital K), MEDFL_RECORDS_PER_SITE,
# MEDFL_SEED, MEDFL_HEARTBEAT_MS, MEDFL_LOG_LEVEL, MEDFL_IMAGE: see docs/simulation.md.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/container-env.sh
. "$REPO/deploy/container-env.sh"

N=3 R=1 FAULT=0 TIMEOUT=180 BUILD=1
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --hospitals) N=${2:-}; shift 2 ;;
    --rounds) R=${2:-}; shift 2 ;;
    --fault) FAULT=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --timeout) TIMEOUT=${2:-}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "simulate: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$N" =~ ^[1-9][0-9]{0,2}$ ]] || { echo "simulate: --hospitals wants 1..999, got '$N'" >&2; exit 2; }
[[ "$R" =~ ^[0-9]+$ ]] || { echo "simulate: --rounds wants a number, got '$R'" >&2; exit 2; }
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || { echo "simulate: --timeout wants seconds, got '$TIMEOUT'" >&2; exit 2; }
if [ "$FAULT" = 1 ] && [ "$N" -lt 2 ]; then
  echo "simulate: --fault stops one hospital and needs at least 2" >&2; exit 2
fi

# Progress and failures go to stderr; stdout carries only the summary, so that its last
# line is `rounds_completed: R` for whoever pipes it.
# fd 3 is the original stderr: a trap may run inside a function whose output is redirected
# (a polled check), and its messages must still reach the user.
exec 3>&2
say() { echo "simulate: $*" >&3; }
T0=$SECONDS
elapsed() { echo "$((SECONDS - T0)) s"; }

rc=0
medfl_engine_setup "$REPO" || rc=$?
if [ $rc -ne 0 ]; then
  say "no container engine can run here (exit 77)"
  exit "$rc"
fi
say "engine: $ENGINE (${COMPOSE[*]})"

export MEDFL_IMAGE=${MEDFL_IMAGE:-localhost/medfl:sim}
if [ $BUILD = 1 ]; then
  "$REPO/deploy/build-images.sh" || { say "FAIL: building the image failed"; exit 1; }
elif ! $ENGINE image inspect "$MEDFL_IMAGE" >/dev/null 2>&1; then
  say "FAIL: --no-build, and there is no image $MEDFL_IMAGE"; exit 1
fi

export MEDFL_BASE_MODEL=${MEDFL_BASE_MODEL:-$REPO/deploy/model}
MEDFL_BASE_MODEL=$(cd "$MEDFL_BASE_MODEL" 2>/dev/null && pwd) ||
  { say "FAIL: MEDFL_BASE_MODEL '$MEDFL_BASE_MODEL' is not a folder"; exit 1; }
# R rounds, each needing every hospital, or all but the one the fault scenario stops.
export MEDFL_ROUNDS=$R
MEDFL_MIN_NODES=$N
[ "$FAULT" = 1 ] && MEDFL_MIN_NODES=$((N - 1))
export MEDFL_MIN_NODES

# A unique project name: runs beside each other (CI, a developer) never share anything.
PROJECT=medfl-sim-$$-$RANDOM
WORK=$REPO/build-container/sim/$PROJECT
mkdir -p "$WORK"
if [ "$N" = 3 ]; then
  FILE=$REPO/deploy/docker-compose.yml
else
  FILE=$WORK/docker-compose.yml
  "$REPO/deploy/gen-compose.sh" "$N" -o "$FILE"
fi
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$FILE" "$@"; }

# Containers of this project, by service (the labels both engines set).
cid() {
  $ENGINE ps -a -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" | head -n 1
}
project_containers() { $ENGINE ps -a -q --filter "label=com.docker.compose.project=$PROJECT"; }

show_logs() {
  local c name
  for c in $(project_containers); do
    name=$($ENGINE inspect --format '{{.Name}}' "$c" 2>/dev/null)
    echo "--- logs of ${name#/} (last 20 lines)"
    $ENGINE logs --tail 20 "$c" 2>&1 | sed 's/^/    /'
  done >&3
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [ -n "$INTERRUPTED" ] && say "interrupted by $INTERRUPTED"
  if [ "${KEEP:-0}" = 1 ]; then
    say "KEEP=1: leaving project $PROJECT (remove with: ${COMPOSE[*]} -p $PROJECT -f $FILE down -v)"
    exit "$status"
  fi
  say "tearing down $PROJECT"
  compose down -v -t 5 >"$WORK/down.log" 2>&1
  # What compose left (podman-compose 1.0 keeps the network; an interrupted `up` may leave
  # containers it had not yet recorded): remove by project label, then by name.
  local c v n
  for c in $(project_containers); do $ENGINE rm -f "$c" >/dev/null 2>&1; done
  for v in $($ENGINE volume ls -q 2>/dev/null | grep "^${PROJECT}_"); do
    $ENGINE volume rm -f "$v" >/dev/null 2>&1
  done
  for n in $($ENGINE network ls --format '{{.Name}}' 2>/dev/null | grep "^${PROJECT}_"); do
    $ENGINE network rm -f "$n" >/dev/null 2>&1
  done
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
INTERRUPTED=
trap 'INTERRUPTED=SIGINT; exit 130' INT
trap 'INTERRUPTED=SIGTERM; exit 143' TERM

fail() {
  say "FAIL: $*"
  show_logs
  exit 1
}

# wait_until SECONDS COMMAND...: polls every second.
wait_until() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && return 1
    sleep 1
  done
}

agg() { # runs a tool in the aggregator container, as its user, with its config
  local c
  c=$(cid aggregator)
  [ -n "$c" ] || return 1
  $ENGINE exec "$c" medfl-aggregator "$@"
}
connected_nodes() { agg nodes 2>/dev/null | awk 'NR > 1 && $3 == "enrolled" && $4 == "yes" { print $1 }'; }
n_connected() { connected_nodes | wc -l; }
all_connected() { # all_connected HOSPITAL... : each listed connected
  local now h
  now=$(connected_nodes)
  for h in "$@"; do grep -qx "$h" <<<"$now" || return 1; done
}
status_field() { agg status 2>/dev/null | awk -v k="$1:" '$1 == k { print $2 }'; }
rounds_at_least() { local k; k=$(status_field rounds_completed); [ -n "$k" ] && [ "$k" -ge "$1" ]; }
instance_is_not() { local i; i=$(status_field instance); [ -n "$i" ] && [ "$i" != "$1" ]; }

HOSPITALS=()
for ((k = 1; k <= N; k++)); do HOSPITALS+=("hospital-$k"); done

# ---- up --------------------------------------------------------------------------------
say "project $PROJECT: aggregator + $N hospitals, $R round(s)$([ "$FAULT" = 1 ] && echo ', fault scenario')"
say "base model folder: $MEDFL_BASE_MODEL"
compose up -d >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "compose up failed"; }

c=$(cid init)
[ -n "$c" ] || fail "no init container"
wait_until "$TIMEOUT" bash -c "[ \"\$($ENGINE inspect --format '{{.State.Status}}' $c)\" = exited ]" ||
  fail "init did not finish within $TIMEOUT s"
code=$($ENGINE inspect --format '{{.State.ExitCode}}' "$c")
[ "$code" = 0 ] || fail "init exited with status $code"
say "init done: keys made, $N hospitals enrolled ($(elapsed))"
$ENGINE logs "$c" 2>&1 | grep -q "synth is not available" &&
  say "note: medfl-node synth is not in this build: hospitals have empty records files"

wait_until "$TIMEOUT" all_connected "${HOSPITALS[@]}" ||
  fail "not all hospitals connected within $TIMEOUT s (connected: $(connected_nodes | tr '\n' ' '))"
say "all $N hospitals connected ($(elapsed))"

have_rounds=0
[ -n "$(status_field rounds_completed)" ] && have_rounds=1
if [ "$R" -gt 0 ] && [ $have_rounds = 0 ]; then
  fail "rounds are not implemented in this build: \`medfl-aggregator status\` prints no 'rounds_completed:' line, so $R round(s) cannot be waited for (--rounds 0 runs the connect phase only)"
fi

# ---- fault -------------------------------------------------------------------------------
STOPPED=
if [ "$FAULT" = 1 ]; then
  if [ "$R" -gt 0 ]; then
    wait_until "$TIMEOUT" rounds_at_least 1 || fail "no round completed within $TIMEOUT s"
    say "round 1 completed ($(elapsed)): injecting the fault"
  fi
  STOPPED=${HOSPITALS[$((N - 1))]}
  before=$(status_field instance)
  $ENGINE stop -t 5 "$(cid "$STOPPED")" >/dev/null || fail "cannot stop $STOPPED"
  say "fault: stopped $STOPPED"
  $ENGINE restart -t 5 "$(cid aggregator)" >/dev/null || fail "cannot restart the aggregator"
  wait_until "$TIMEOUT" instance_is_not "$before" || fail "the aggregator did not come back"
  say "fault: aggregator restarted (instance $before -> $(status_field instance))"
  remaining=("${HOSPITALS[@]:0:$((N - 1))}")
  wait_until "$TIMEOUT" all_connected "${remaining[@]}" ||
    fail "hospitals did not reconnect to the restarted aggregator within $TIMEOUT s (connected: $(connected_nodes | tr '\n' ' '))"
  grep -qx "$STOPPED" <<<"$(connected_nodes)" && fail "$STOPPED is stopped but listed connected"
  say "fault: ${#remaining[@]} hospitals reconnected to the new instance, $STOPPED stays away ($(elapsed))"
fi

# ---- rounds --------------------------------------------------------------------------------
if [ "$R" -gt 0 ]; then
  wait_until "$((TIMEOUT + 60 * R))" rounds_at_least "$R" ||
    fail "only $(status_field rounds_completed) of $R round(s) completed in time"
fi
done_rounds=0
[ $have_rounds = 1 ] && done_rounds=$(status_field rounds_completed)

# ---- summary -------------------------------------------------------------------------------
echo
echo "== medfl simulation summary ($ENGINE, project $PROJECT)"
agg status | sed 's/^/  /'
agg nodes | sed 's/^/  /'
echo "hospitals: $N"
echo "connected_at_end: $(n_connected)"
[ "$FAULT" = 1 ] && echo "fault: stopped $STOPPED, restarted the aggregator"
echo "elapsed: $(elapsed)"
[ $have_rounds = 0 ] && echo "note: this build has no round runtime: connect phase only"
echo "rounds_completed: $done_rounds"
exit 0
