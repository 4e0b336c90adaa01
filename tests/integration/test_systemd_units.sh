#!/usr/bin/env bash
# The shipped systemd units verify cleanly with `systemd-analyze verify` (against the
# binaries under test) and carry the hardening the operator guides promise.
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup systemd_units
command -v systemd-analyze >/dev/null || skip "systemd-analyze not installed"
for role in node aggregator; do
  unit=deploy/systemd/medfl-$role.service
  sed "s|/usr/local/bin/medfl-$role|$MEDFL_BIN/medfl-$role|" "$unit" > "$T/medfl-$role.service"
  for d in Type=notify NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes \
           ReadWritePaths=/var/lib/medfl-$role "CapabilityBoundingSet=" UMask=0077 \
           "ExecReload=/bin/kill -HUP" User=medfl; do
    grep -q "^$d" "$unit" || die "$unit lacks $d"
  done
done
out=$(cd "$T" && systemd-analyze verify ./medfl-node.service ./medfl-aggregator.service 2>&1)
[ -z "$out" ] || die "systemd-analyze verify complained: $out"
# The check can fail: a misspelt directive must be reported.
sed 's/^NoNewPrivileges=yes/NoNewPrivilege=yes/' "$T/medfl-node.service" > "$T/broken.service"
out=$(cd "$T" && systemd-analyze verify ./broken.service 2>&1)
[ -n "$out" ] || die "systemd-analyze verify did not notice a misspelt directive"
echo "PASS $name"
