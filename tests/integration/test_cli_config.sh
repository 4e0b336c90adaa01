#!/usr/bin/env bash
# What the operator guides promise of the command line:
#   - every subcommand of both programs takes --help (exit 0) and -c FILE (never refused as
#     an unknown option); the version tools read state_dir and key_dir from it;
#   - example-config -c FILE prints FILE's meaning, which loads back to the same output;
#   - import-model --hf takes a package root (an unpacked wheel) holding the model folder
#     below, refuses none or several with the list, -c writes model.base, --name is
#     recorded in base.h5;
#   - privacy -c before the first round shows the plan over an empty ledger, creating nothing.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
AGG="$MEDFL_BIN/medfl-aggregator"
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_cli_config
FIX=tests/ref/fixtures/tiny_bert

mkdir -p "$T/agg" "$T/n"
AC="$T/agg/aggregator.conf"
NC="$T/n/node.conf"
printf 'key_dir = keys\nstate_dir = state\n[net]\nbind = tcp://127.0.0.1:*\n[metrics]\nlisten = 0\n' >"$AC"
cat >"$NC" <<EOT
node_id = hospital-a
key_dir = keys
state_dir = state
[aggregator]
endpoint = tcp://127.0.0.1:1
public_key_file = ../agg/keys/curve.pub
[model]
base = base.h5
[privacy]
enabled = true
noise_multiplier = 1.1
sample_rate = 0.05
epsilon_budget = 8
EOT

# ---- --help and -c on every subcommand ------------------------------------------------------
for prog in "$NODE" "$AGG"; do
  cmds=$("$prog" --help | awk '/^Commands:/ { on = 1; next } on && NF { print $1 }')
  conf=$NC; [ "$prog" = "$AGG" ] && conf=$AC
  for c in $cmds; do
    p=$(basename "$prog")
    if "$prog" "$c" --help >"$T/help.out" 2>&1 && grep -q -- "-c " "$T/help.out"; then :
    else fail "$p $c --help: not exit 0 or -c not documented" "$T/help.out"; continue; fi
    [ "$c" = run ] && continue # runs a daemon; its -c is exercised by every daemon test
    timeout 20 "$prog" "$c" -c "$conf" >"$T/c.out" 2>&1 </dev/null
    if grep -qiE "unknown option '-c'|unexpected argument '-c'|reads no aggregator config|unexpected argument '$conf'" "$T/c.out"
    then fail "$p $c refuses -c" "$T/c.out"
    else pass "$p $c takes --help and -c"; fi
  done
done

# ---- version tools read state_dir and key_dir from -c ---------------------------------------
[ -s "$T/agg/keys/identity.key" ] || die "keygen -c did not write key_dir of the config"
if "$AGG" init-version -c "$AC" --from tests/ref/fixtures/tiny_peft >"$T/init.out" 2>&1 &&
  [ -d "$T/agg/state/versions" ] && "$AGG" versions -c "$AC" >"$T/versions.out" 2>&1 &&
  grep -q "^verified: 1" "$T/versions.out"
then pass "init-version and versions -c: state_dir and key_dir from the config (verified)"
else fail "version tools with -c" "$T/init.out" "$T/versions.out"; fi
if "$AGG" export 1 -c "$AC" --peft "$T/peft" >"$T/export.out" 2>&1 && grep -q verified "$T/export.out"
then pass "export -c verifies with the config's key_dir"
else fail "export -c" "$T/export.out"; fi
"$AGG" rollback 1 -c "$AC" >"$T/rb.out" 2>&1 && grep -q "^head: 1" "$T/rb.out" &&
  pass "rollback -c" || fail "rollback -c" "$T/rb.out"
"$AGG" weights -c "$AC" >"$T/w.out" 2>&1; grep -q "agg/state" "$T/w.out" || grep -q "^rows:" "$T/w.out" &&
  pass "weights -c reads the config's state_dir" || fail "weights -c" "$T/w.out"

# ---- example-config -c ------------------------------------------------------------------------
for pair in "$NODE:$NC" "$AGG:$AC"; do
  prog=${pair%%:*} conf=${pair#*:}
  if "$prog" example-config -c "$conf" >"$T/ex.conf" 2>"$T/ex.err" &&
    grep -q "^state_dir = \"$T/.*/state\"" "$T/ex.conf" &&
    "$prog" example-config -c "$T/ex.conf" | tail -n +3 | diff -q - <(tail -n +3 "$T/ex.conf") >/dev/null
  then pass "$(basename "$prog") example-config -c: full meaning, loads back unchanged"
  else fail "$(basename "$prog") example-config -c" "$T/ex.conf" "$T/ex.err"; fi
done
printf 'state_dir = x\nbogus = 1\n' >"$T/bad.conf"
"$AGG" example-config -c "$T/bad.conf" >"$T/bad.out" 2>&1 && fail "example-config -c accepted a bad config" ||
  { grep -q "bad.conf:2: unknown key 'bogus'" "$T/bad.out" && pass "example-config -c checks the file (FILE:LINE)" ||
    fail "example-config -c error" "$T/bad.out"; }

# ---- import-model from a package root ---------------------------------------------------------
PKG="$T/pkg"
mkdir -p "$PKG/tiny_bert_pkg-0.1.0.dist-info" "$PKG/tiny_bert_pkg/model/1_Pooling"
cp "$FIX"/* "$PKG/tiny_bert_pkg/model/"
echo '{}' >"$PKG/tiny_bert_pkg/model/1_Pooling/config.json"
echo 'Name: tiny-bert-pkg' >"$PKG/tiny_bert_pkg-0.1.0.dist-info/METADATA"
if "$NODE" import-model --hf "$PKG" -c "$NC" --name org/tiny-bert >"$T/imp.out" 2>&1 &&
  [ -s "$T/n/base.h5" ] && grep -q "imported $PKG/tiny_bert_pkg/model -> $T/n/base.h5" "$T/imp.out"
then pass "import-model --hf PACKAGE_ROOT -c: finds the model folder, writes model.base"
else fail "import-model from a package root" "$T/imp.out"; fi
if strings "$T/n/base.h5" | grep -q "org/tiny-bert"; then pass "import-model --name recorded in base.h5"
else fail "--name not found in base.h5"; fi
mkdir -p "$T/empty/sub"
"$NODE" import-model --hf "$T/empty" -o "$T/x.h5" >"$T/none.out" 2>&1 &&
  fail "import-model accepted a folder without a model" ||
  { grep -q "no model folder in it or below it" "$T/none.out" && grep -q "config.json, model.safetensors" "$T/none.out" &&
    pass "import-model: no model folder below -> says what it looked for" || fail "no-model message" "$T/none.out"; }
mkdir -p "$T/two/a" "$T/two/b"; cp "$FIX"/* "$T/two/a/"; cp "$FIX"/* "$T/two/b/"
"$NODE" import-model --hf "$T/two" -o "$T/x.h5" >"$T/two.out" 2>&1 &&
  fail "import-model accepted two model folders" ||
  { grep -q "2 model folders below it" "$T/two.out" && grep -q "$T/two/a" "$T/two.out" && grep -q "$T/two/b" "$T/two.out" &&
    pass "import-model: several model folders -> refused with the list" || fail "two-model message" "$T/two.out"; }
[ ! -e "$T/x.h5" ] || fail "output written despite the refusal"

# ---- privacy -c before the first round --------------------------------------------------------
if "$NODE" privacy -c "$NC" >"$T/priv.out" 2>&1 && grep -q "^spent: 0.000000" "$T/priv.out" &&
  grep -q "not created yet" "$T/priv.out" && grep -q "^plan_epsilon_per_round: " "$T/priv.out" &&
  [ "$(field plan_rounds_affordable <"$T/priv.out")" -ge 1 ] && [ ! -e "$T/n/state/privacy_ledger.db" ]
then pass "privacy -c before the first round: plan over an empty ledger, nothing created"
else fail "privacy -c before the first round" "$T/priv.out"; fi
e20=$(field plan_epsilon_per_round <"$T/priv.out")
e5=$("$NODE" privacy -c "$NC" --round-steps 5 2>/dev/null | field plan_epsilon_per_round)
awk -v a="$e5" -v b="$e20" 'BEGIN { exit !(a > 0 && a < b) }' &&
  pass "fewer steps per round plan less epsilon ($e5 < $e20)" || fail "round-steps: $e5 vs $e20"
it_summary
