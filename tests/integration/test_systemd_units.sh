#!/usr/bin/env bash
# The shipped systemd units verify cleanly with `systemd-analyze verify` (against the
# binaries under test) and carry the hardening the operator guides promise.
set -u
name=systemd_units
command -v systemd-analyze >/dev/null || { echo "SKIP $name: systemd-analyze not installed"; exit 77; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL $name: $*"; exit 1; }
for role in node aggregator; do
  unit=deploy/systemd/medfl-$role.service
  sed "s|/usr/local/bin/medfl-$role|$MEDFL_BIN/medfl-$role|" "$unit" > "$tmp/medfl-$role.service"
  for d in Type=notify NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes \
           ReadWritePaths=/var/lib/medfl-$role "CapabilityBoundingSet=" UMask=0077 \
           "ExecReload=/bin/kill -HUP" User=medfl; do
    grep -q "^$d" "$unit" || fail "$unit lacks $d"
  done
done
out=$(cd "$tmp" && systemd-analyze verify ./medfl-node.service ./medfl-aggregator.service 2>&1)
[ -z "$out" ] || fail "systemd-analyze verify complained: $out"
# The check can fail: a misspelt directive must be reported.
sed 's/^NoNewPrivileges=yes/NoNewPrivilege=yes/' "$tmp/medfl-node.service" > "$tmp/broken.service"
out=$(cd "$tmp" && systemd-analyze verify ./broken.service 2>&1)
[ -n "$out" ] || fail "systemd-analyze verify did not notice a misspelt directive"
echo "PASS $name"
