#!/usr/bin/env bash
# Both daemons speak systemd's notification protocol as their Type=notify units expect:
# READY=1 once serving; RELOADING=1 then READY=1 around SIGHUP, also when the new config is
# broken (the old one keeps running); STOPPING=1 on SIGTERM, then a clean exit. A python
# listener plays systemd's part on a socket named by NOTIFY_SOCKET.
set -u
: "${MEDFL_BIN:?}"
AGG="$MEDFL_BIN/medfl-aggregator"; NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_notify
has_line() { grep -qxF "$2" "$1" 2>/dev/null; } # has_line FILE TEXT
listen() { # listen NAME SOCKET OUTFILE: one line per datagram, newlines inside shown as '|'
  start "$1" "$3" python3 -u -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode().replace("\n", "|"), flush=True)' "$2"
}

PORT=$(free_port)
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
  die "keygen"

for role in agg a; do
  if [ $role = agg ]; then conf="$T/agg/aggregator.conf"; bin=$AGG; else conf="$T/a/node.conf"; bin=$NODE; fi
  sock="$T/$role.sock"; out="$T/$role.notify"; log="$T/$role.log"
  listen "listen-$role" "$sock" "$out"
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
  start $role "$log" env NOTIFY_SOCKET="$sock" "$bin" run -c "$conf"
  pid=${PIDS[$role]}
  if wait_until 10 has_line "$out" "READY=1|STATUS=serving"; then pass "$role sends READY=1"
  else fail "$role never sent READY=1" "$out" "$log"; fi
  cp "$conf" "$conf.good"
  echo "bogus_key = 1" >>"$conf"
  kill -HUP $pid
  wait_until 5 has_line "$out" "RELOADING=1"
  sleep 0.5
  if grep -qxF "RELOADING=1" "$out" && [ "$(tail -n 1 "$out")" = "READY=1" ]; then
    pass "$role: SIGHUP with a broken config -> RELOADING=1, READY=1"
  else fail "$role: reload notifications" "$out"; fi
  if kill -0 $pid 2>/dev/null && grep -q "bogus_key" "$log"; then
    pass "$role keeps running on the old config and names the bad key"
  else fail "$role after a bad reload" "$log"; fi
  cp "$conf.good" "$conf"
  kill -TERM $pid
  reap $role; rc=$?
  if [ $rc -eq 0 ] && wait_until 2 has_line "$out" "STOPPING=1"; then pass "$role: SIGTERM -> STOPPING=1, exit 0"
  else fail "$role: SIGTERM (exit $rc)" "$out" "$log"; fi
done
it_summary
