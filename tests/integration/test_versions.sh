#!/usr/bin/env bash
# medfl-aggregator version tools end to end on a real store: seed from the PEFT-written
# fixture adapter (init-version), re-seed twice (each a child of the head), list and verify
# the chain, roll back and check the next version's parent, refuse a tampered manifest and
# a tampered tensor file, refuse a loosely-permissioned key, and export a version that
# Hugging Face PEFT loads with the same tensors and the same logits as the seeding adapter
# (tests/ref/check_peft_version_export.py; that part is skipped when torch/peft are absent).
set -u
AGG="$MEDFL_BIN/medfl-aggregator"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_versions

cp -r tests/ref/fixtures/versions_key "$T/keys"
chmod 600 "$T/keys/identity.key"
st="$T/state"
A=(--state "$st" --key-dir "$T/keys")

out=$("$AGG" init-version --from tests/ref/fixtures/tiny_peft "${A[@]}" --base-model tiny-bert 2>/dev/null) \
  || die "init-version exited $?"
[ "$(echo "$out" | field version)" = 1 ] && [ "$(echo "$out" | field parent)" = 0 ] || die "seed: $out"
[ "$(echo "$out" | field tensors)" = 14 ] || die "seed tensors: $out"
"$AGG" init-version --from tests/ref/fixtures/tiny_peft "${A[@]}" >/dev/null 2>&1 \
  && die "re-seeding a non-empty store without --force succeeded"
for i in 2 3; do
  out=$("$AGG" init-version --from tests/ref/fixtures/tiny_peft/adapter_model.safetensors --lora-alpha 8 \
        "${A[@]}" --force 2>/dev/null) || die "seed $i exited $?"
  [ "$(echo "$out" | field parent)" = $((i - 1)) ] || die "seed $i parent: $out"
done

out=$("$AGG" versions "${A[@]}") || die "versions exited $?"
[ "$(echo "$out" | field versions)" = 3 ] && [ "$(echo "$out" | field verified)" = 3 ] \
  && [ "$(echo "$out" | field head)" = 3 ] || die "versions: $out"
echo "$out" | grep -q '^\*3 ' || die "head not marked: $out"

out=$("$AGG" rollback 1 "${A[@]}") || die "rollback exited $?"
[ "$(echo "$out" | field head)" = 1 ] && [ "$(echo "$out" | field latest)" = 3 ] || die "rollback: $out"
"$AGG" versions --state "$st" | grep -q '^\*1 ' || die "head after rollback"
out=$("$AGG" init-version --from tests/ref/fixtures/tiny_peft "${A[@]}" --force --base-model tiny-bert 2>/dev/null) \
  || die "seed after rollback"
[ "$(echo "$out" | field version)" = 4 ] && [ "$(echo "$out" | field parent)" = 1 ] || die "after rollback: $out"
out=$("$AGG" versions "${A[@]}") || die "versions after rollback: $?"
[ "$(echo "$out" | field verified)" = 4 ] || die "history not kept: $out"
echo "$out" | awk '$1 == "*4" && $2 == 1 { ok = 1 } END { exit !ok }' || die "v4 row: $out"

# Usage and operator errors.
"$AGG" rollback 9 --state "$st" >/dev/null 2>&1 && die "rollback to a missing version succeeded"
"$AGG" rollback --state "$st" >/dev/null 2>&1 && die "rollback without VERSION succeeded"
"$AGG" export 4 --state "$st" >/dev/null 2>&1 && die "export without --peft succeeded"
"$AGG" versions --state "$st" --bogus >/dev/null 2>&1 && die "unknown option accepted"
chmod 644 "$T/keys/identity.key"
err=$("$AGG" init-version --from tests/ref/fixtures/tiny_peft "${A[@]}" --force 2>&1) && die "loose key accepted"
echo "$err" | grep -q "chmod 600" || die "loose key message: $err"
chmod 600 "$T/keys/identity.key"

# Tampering: a copy of the store with an edited manifest, another with a changed tensor file.
cp -r "$st" "$T/t1"
sed -i 's/"round":\t0/"round":\t5/' "$T/t1/versions/v000002.json"
err=$("$AGG" versions --state "$T/t1" --key-dir "$T/keys" 2>&1) && die "tampered manifest listed as verified"
echo "$err" | grep -q "v000002: metadata altered" || die "tampered manifest message: $err"
"$AGG" export 3 --peft "$T/x" --state "$T/t1" --key-dir "$T/keys" >/dev/null 2>&1 \
  && die "export of a version whose chain is tampered succeeded"
# A changed value in a tensor file (needs h5py to edit the HDF5 dataset in place).
cp -r "$st" "$T/t2"
if python3 - "$T/t2/versions/v000004.h5" <<'PY' 2>/dev/null
import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    d = f["tensors/classifier.bias"]; v = d[()]; v[0] += 1.0; d[...] = v
PY
then
  err=$("$AGG" versions --state "$T/t2" --key-dir "$T/keys" 2>&1) && die "tampered tensors listed as verified"
  echo "$err" | grep -q "v000004: tensors altered" || die "tampered tensor message: $err"
else
  echo "note $name: tensor tampering part skipped (no h5py); test_versions.c covers it"
fi

# Export and the PEFT reference check.
out=$("$AGG" export 4 --peft "$T/peft" "${A[@]}") || die "export exited $?"
echo "$out" | grep -q "verified" || die "export: $out"
[ -s "$T/peft/adapter_model.safetensors" ] && [ -s "$T/peft/adapter_config.json" ] || die "export files"
grep -q '"peft_type":.*"LORA"' "$T/peft/adapter_config.json" || die "adapter_config: no LORA"
grep -q '"base_model_name_or_path":.*"tiny-bert"' "$T/peft/adapter_config.json" || die "base model attr lost"
if command -v python3 >/dev/null; then
  python3 tests/ref/check_peft_version_export.py "$T/peft" "$st/versions/v000004.h5" \
    --same-as tests/ref/fixtures/tiny_peft 2>/dev/null | tail -1 > "$T/py.out"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) cat "$T/py.out";;
    77) echo "note $name: PEFT check skipped: $(cat "$T/py.out")";;
    *) die "PEFT reference check: $(cat "$T/py.out")";;
  esac
else
  echo "note $name: PEFT check skipped: no python3"
fi
echo "PASS $name"
