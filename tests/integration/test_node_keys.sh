#!/usr/bin/env bash
# A node misconfigured on its aggregator key, as an operator meets it:
#   - the aggregator's key does not match (another aggregator's curve.pub): the node retries
#     with exponential backoff, logging ONE error per attempt that says the key does not
#     match and names the config option: at most 3 such lines in the first ~5 s (libzmq
#     alone redials several times a second), and the delays grow;
#   - a key pasted into aggregator.public_key_file, a short or garbled key: refused at
#     start naming FILE:LINE and the key, saying what is wrong, never echoing the text;
#   - an invalid node_id names FILE:LINE.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_node_keys

PORT=$(free_port)
EP="tcp://127.0.0.1:$PORT"
mkdir -p "$T/agg" "$T/n" "$T/other"
AC="$T/agg/aggregator.conf"
printf 'key_dir = keys\nstate_dir = state\n[net]\nbind = %s\n[metrics]\nlisten = 0\n' "$EP" >"$AC"
node_conf() { # node_conf FILE KEYLINE [NODE_ID]
  printf 'node_id = %s\nkey_dir = keys\nstate_dir = state\ndevice = cpu\n[aggregator]\nendpoint = %s\n%s\n[metrics]\nlisten = 0\n' \
    "${3:-hospital-a}" "$EP" "$2" >"$1"
}
node_conf "$T/n/node.conf" "public_key_file = ../other/keys/curve.pub"
"$AGG" keygen -c "$AC" >/dev/null 2>&1 || die "aggregator keygen"
"$AGG" keygen -d "$T/other/keys" >/dev/null 2>&1 || die "second keygen"
keygen_enroll "$T/n" hospital-a "$AC" "$T/enroll.log" || die "node keygen/enroll"
# The keys pasted below: a Z85 key may start with '/', and pasted into a file option it is
# then an absolute path of 40 characters that the loader reads as the key itself (by design:
# an existing file wins, then the text form), so draw keys that do not.
for i in 1 2 3 4 5 6 7 8; do
  "$AGG" keygen -d "$T/paste$i" >/dev/null 2>&1 || die "keygen for pasting"
  [ "$(head -c1 "$T/paste$i/curve.pub")" != / ] && [ "$(head -c1 "$T/paste$i/curve.key")" != / ] && break
done

start agg "$T/agg.log" "$AGG" run -c "$AC"
wait_until 10 test -s "$T/agg/state/endpoint" || die "aggregator did not start"
start node "$T/node.log" "$NODE" run -c "$T/n/node.conf"
sleep 5.5
alive node || fail "node exited on a wrong aggregator key (it should keep retrying)" "$T/node.log"
n=$(grep -c "CURVE handshake with .* refused: the aggregator's key does not match aggregator.public_key_file" "$T/node.log")
if [ "$n" -ge 1 ] && [ "$n" -le 3 ]; then pass "wrong aggregator key: $n error line(s) in 5.5 s, naming the option"
else fail "wrong aggregator key: $n handshake error lines in 5.5 s (want 1..3)" "$T/node.log"; fi
delays=$(grep -o "retrying in [0-9.]* s" "$T/node.log" | awk '{print $3}' | tr '\n' ' ')
if echo "$delays" | awk '{ ok = NF >= 2; for (i = 2; i <= NF; i++) if ($i <= $(i-1)) ok = 0; exit !ok }'
then pass "retry delays grow: $delays"
else fail "retry delays do not grow: '$delays'" "$T/node.log"; fi
stop9 node

# ---- malformed keys, refused at start ------------------------------------------------------
KEY=$(cat "$T/paste$i/curve.pub")
SECRET=$(cat "$T/paste$i/curve.key")
check_refused() { # check_refused WHAT KEYLINE PATTERN SECRET_TEXT
  node_conf "$T/n/bad.conf" "$2"
  local rc=0
  # a node that (wrongly) accepts the config would run forever: bounded
  timeout 20 "$NODE" run -c "$T/n/bad.conf" >"$T/bad.out" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] && grep -q "bad.conf:7: key 'aggregator.public_key" "$T/bad.out" &&
    grep -q -- "$3" "$T/bad.out" && ! grep -qF -- "$4" "$T/bad.out"; then
    pass "$1: refused at FILE:LINE, saying what is wrong, key text not shown"
  else fail "$1 (rc $rc)" "$T/bad.out"; fi
}
check_refused "key pasted into public_key_file" "public_key_file = $KEY" \
  "looks like a key given where a file path belongs" "$KEY"
check_refused "secret key pasted into public_key_file" "public_key_file = $SECRET" \
  "not shown" "$SECRET"
# Z85 has '/': a pasted key must not be read as folders and echoed (fixed text, so the
# case is always covered, not only when the random keys above happen to hold a '/').
SLASHED='Ab3/Cd4.Ef5-Gh6:Ij7+Kl8=Mn9^Op0!Qr1*St2?'
check_refused "key with '/' pasted into public_key_file" "public_key_file = $SLASHED" \
  "not shown" "Cd4.Ef5"
check_refused "short key with '/'" "public_key = ${SLASHED:0:33}" "wrong length" "Cd4.Ef5"
check_refused "short key" "public_key = ${KEY:0:31}" "wrong length" "${KEY:0:31}"
check_refused "missing file" "public_key_file = short" "short: no such file (expected the path of a curve.pub" "\$nothing"
check_refused "folder as key file" "public_key_file = ." "not a regular file" "\$nothing"

node_conf "$T/n/bad.conf" "public_key_file = ../other/keys/curve.pub" "bad id!"
if ! "$NODE" run -c "$T/n/bad.conf" >"$T/id.out" 2>&1 && grep -q "bad.conf:1: key 'node_id'" "$T/id.out"
then pass "invalid node_id names FILE:LINE"
else fail "invalid node_id without FILE:LINE" "$T/id.out"; fi
it_summary
