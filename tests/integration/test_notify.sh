#!/usr/bin/env bash
# Both daemons speak systemd's notification protocol as their Type=notify units expect:
# READY=1 once serving; RELOADING=1 then READY=1 around SIGHUP, also when the new config is
# broken (the old one keeps running); STOPPING=1 on SIGTERM, then a clean exit. A python
# listener plays systemd's part on a socket named by NOTIFY_SOCKET.
set -u
name=notify
: "${MEDFL_BIN:?}"
AGG="$MEDFL_BIN/medfl-aggregator"; NODE="$MEDFL_BIN/medfl-node"
T=$(mktemp -d /tmp/medfl-itest-notify-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
failures=0
pass() { echo "PASS $name: $1"; }
fail() { echo "FAIL $name: $1"; failures=$((failures + 1)); shift; for f in "$@"; do tail -n 20 "$f" | sed 's/^/    /'; done; }
wait_for() { # wait_for FILE TEXT SECONDS
  local end=$((SECONDS + $3))
  until grep -qxF "$2" "$1" 2>/dev/null; do [ $SECONDS -ge $end ] && return 1; sleep 0.1; done
}
listen() { # listen SOCKET OUTFILE: one line per datagram, newlines inside shown as '|'
  python3 -u -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode().replace("\n", "|"), flush=True)' "$1" >"$2" 2>&1 &
  pids+=($!)
}

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$T/agg" "$T/a"
cat >"$T/agg/aggregator.conf" <<EOF
name = notify-aggregator
key_dir = keys
state_dir = state
[net]
bind = tcp://127.0.0.1:$PORT
[metrics]
listen = 0
EOF
cat >"$T/a/node.conf" <<EOF
node_id = hospital-a
key_dir = keys
state_dir = state
device = cpu
[aggregator]
endpoint = tcp://127.0.0.1:$PORT
public_key_file = ../agg/keys/curve.pub
[metrics]
listen = 0
EOF
"$AGG" keygen -c "$T/agg/aggregator.conf" >/dev/null 2>&1 && "$NODE" keygen -c "$T/a/node.conf" >/dev/null 2>&1 ||
  { echo "FAIL $name: keygen"; exit 1; }

for role in agg a; do
  if [ $role = agg ]; then conf="$T/agg/aggregator.conf"; bin=$AGG; else conf="$T/a/node.conf"; bin=$NODE; fi
  sock="$T/$role.sock"; out="$T/$role.notify"; log="$T/$role.log"
  listen "$sock" "$out"
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
  NOTIFY_SOCKET="$sock" "$bin" run -c "$conf" >"$log" 2>&1 &
  pid=$!; pids+=($pid)
  if wait_for "$out" "READY=1|STATUS=serving" 10; then pass "$role sends READY=1"
  else fail "$role never sent READY=1" "$out" "$log"; fi
  cp "$conf" "$conf.good"
  echo "bogus_key = 1" >>"$conf"
  kill -HUP $pid
  wait_for "$out" "RELOADING=1" 5
  sleep 0.5
  if grep -qxF "RELOADING=1" "$out" && [ "$(tail -n 1 "$out")" = "READY=1" ]; then
    pass "$role: SIGHUP with a broken config -> RELOADING=1, READY=1"
  else fail "$role: reload notifications" "$out"; fi
  if kill -0 $pid 2>/dev/null && grep -q "bogus_key" "$log"; then
    pass "$role keeps running on the old config and names the bad key"
  else fail "$role after a bad reload" "$log"; fi
  cp "$conf.good" "$conf"
  kill -TERM $pid
  wait $pid; rc=$?
  if [ $rc -eq 0 ] && wait_for "$out" "STOPPING=1" 2; then pass "$role: SIGTERM -> STOPPING=1, exit 0"
  else fail "$role: SIGTERM (exit $rc)" "$out" "$log"; fi
done
[ $failures -eq 0 ]
