#!/usr/bin/env bash
# The shipped systemd units carry the hardening the operator guides promise and agree with
# the configs and guides they go with (grep assertions, always run):
#   - the writable state folder (StateDirectory=, ReadWritePaths=) is the example config's
#     state_dir, since ProtectSystem=strict makes every other path read-only;
#   - the node does not restart after exit status 3 (revoked) or 4 (state folder locked by a
#     running node), the aggregator not after 4: RestartPreventExitStatus;
#   - Documentation= names a file the guide's "Install as a service" step installs, and
#     that step installs this unit;
# and, when systemd-analyze exists, they verify cleanly (against the binaries under test).
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup systemd_units
for role in node aggregator; do
  unit=deploy/systemd/medfl-$role.service
  guide=docs/operator-guide-$role.md
  sed "s|/usr/local/bin/medfl-$role|$MEDFL_BIN/medfl-$role|" "$unit" > "$T/medfl-$role.service"
  for d in Type=notify NoNewPrivileges=yes ProtectSystem=strict PrivateTmp=yes \
           "CapabilityBoundingSet=" UMask=0077 "ExecReload=/bin/kill -HUP" User=medfl; do
    grep -q "^$d" "$unit" || die "$unit lacks $d"
  done
  state=$(awk '$1 == "state_dir" { print $3 }' configs/$role.example.conf)
  [ -n "$state" ] || die "configs/$role.example.conf has no state_dir"
  grep -qx "StateDirectory=${state#/var/lib/}" "$unit" ||
    die "$unit: StateDirectory= is not ${state#/var/lib/} (state_dir of configs/$role.example.conf)"
  grep -qx "ReadWritePaths=$state" "$unit" || die "$unit: ReadWritePaths= is not $state"
  grep -q "ExecStart=/usr/local/bin/medfl-$role run -c /etc/medfl/$role.conf" "$unit" ||
    die "$unit: ExecStart does not run -c /etc/medfl/$role.conf"
  doc=$(sed -n 's|^Documentation=file:||p' "$unit")
  [ -n "$doc" ] || die "$unit has no Documentation=file:"
  grep -q "^## Install as a service" "$guide" || die "$guide has no 'Install as a service' section"
  grep -q "$(basename "$doc")  *$(dirname "$doc")\|$(dirname "$doc")" "$guide" ||
    die "$guide does not install the documentation $doc that the unit names"
  grep -q "deploy/systemd/medfl-$role.service" "$guide" || die "$guide does not install $unit"
done
grep -qx "RestartPreventExitStatus=3 4" deploy/systemd/medfl-node.service ||
  die "medfl-node.service restarts a revoked node or one locked out of its state folder (no RestartPreventExitStatus=3 4)"
grep -qx "RestartPreventExitStatus=4" deploy/systemd/medfl-aggregator.service ||
  die "medfl-aggregator.service retries against a daemon that holds its state folder (no RestartPreventExitStatus=4)"
grep -q "RestartPreventExitStatus=3" docs/operator-guide-node.md ||
  die "the node guide does not explain RestartPreventExitStatus=3"
if ! command -v systemd-analyze >/dev/null; then
  echo "PASS $name (grep checks; systemd-analyze not installed, verify skipped)"
  exit 0
fi
out=$(cd "$T" && systemd-analyze verify ./medfl-node.service ./medfl-aggregator.service 2>&1)
[ -z "$out" ] || die "systemd-analyze verify complained: $out"
# The check can fail: a misspelt directive must be reported.
sed 's/^NoNewPrivileges=yes/NoNewPrivilege=yes/' "$T/medfl-node.service" > "$T/broken.service"
out=$(cd "$T" && systemd-analyze verify ./broken.service 2>&1)
[ -n "$out" ] || die "systemd-analyze verify did not notice a misspelt directive"
echo "PASS $name"
