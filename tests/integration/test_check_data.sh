#!/usr/bin/env bash
# `medfl-node check-data` end to end on the de-identification corpus: output format
# (`record N: RULE[,RULE...]`, `records: N`, `flagged_records: K`), exit codes per policy
# (3 = flagged under refuse), -c node.conf with other sections present, redaction output,
# schema errors, synthetic CSV records — and no planted PHI string in stdout or stderr.
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_check_data
node="${MEDFL_BIN:?}/medfl-node"
corpus=tests/data/deid

# Lines must name records and rules only.
check_format() {
  local out=$1 n=$2
  grep -Ev '^record [0-9]+: [A-Z_89]+(,[A-Z_89]+)*$|^records: [0-9]+$|^flagged_records: [0-9]+$|^skipped_records: [0-9]+$' "$out" \
    && die "unexpected output line(s) in $out"
  tail -n 2 "$out" | head -n 1 | grep -qx "records: $n" || die "no 'records: $n' line"
  tail -n 1 "$out" | grep -Eq '^flagged_records: [0-9]+$' || die "no flagged_records line last"
}
no_phi() {
  if grep -F -f "$corpus/needles.txt" "$@"; then die "planted PHI appears in $*"; fi
}

# 1. planted PHI under the default policy (refuse): exit 3, nearly every record flagged
"$node" check-data --records "$corpus/phi.jsonl" >"$T/phi.out" 2>"$T/phi.err"; rc=$?
[ $rc -eq 3 ] || die "refuse with PHI: exit $rc, expected 3 ($(cat "$T/phi.err"))"
n=$(grep -c . "$corpus/phi.jsonl")
check_format "$T/phi.out" "$n"
k=$(sed -n 's/^flagged_records: //p' "$T/phi.out")
[ "$k" -ge $((n * 98 / 100)) ] || die "only $k of $n PHI records flagged"
[ "$(grep -c '^record ' "$T/phi.out")" -eq "$k" ] || die "record lines != flagged_records"
for rule in NAME DATE PHONE FAX EMAIL SSN MRN ACCOUNT URL IP ADDRESS ZIP AGE_OVER_89; do
  grep -Eq "^record [0-9]+: (.*,)?$rule(,|$)" "$T/phi.out" || die "rule $rule never reported"
done
no_phi "$T/phi.out" "$T/phi.err"

# 2. clean clinical records: exit 0, at most 2% flagged
"$node" check-data --records "$corpus/clean.jsonl" >"$T/clean.out" 2>"$T/clean.err"; rc=$?
[ $rc -eq 0 ] || die "clean records: exit $rc"
n=$(grep -c . "$corpus/clean.jsonl")
check_format "$T/clean.out" "$n"
k=$(sed -n 's/^flagged_records: //p' "$T/clean.out")
[ "$k" -le $((n * 2 / 100)) ] || die "$k of $n clean records flagged"

# 3. -c node.conf (relative records path, other sections ignored here), policy redact
mkdir -p "$T/conf/data"
cp "$corpus/phi.jsonl" "$T/conf/data/records.jsonl"
cat >"$T/conf/node.conf" <<'EOF'
# node config: check-data reads [data] and [deid] only
name = hospital-a
[train]
epochs = 3
[data]
records = data/records.jsonl
text_field = text
label_field = label
labels = "cardiology,neurology,gastroenterology,pulmonology"
[deid]
policy = redact
EOF
"$node" check-data -c "$T/conf/node.conf" --redacted-out "$T/redacted.jsonl" \
  >"$T/redact.out" 2>"$T/redact.err"; rc=$?
[ $rc -eq 0 ] || die "redact: exit $rc ($(cat "$T/redact.err"))"
check_format "$T/redact.out" "$(grep -c . "$corpus/phi.jsonl")"
no_phi "$T/redact.out" "$T/redact.err" "$T/redacted.jsonl"
"$node" check-data --records "$T/redacted.jsonl" >"$T/re.out" 2>&1; rc=$?
[ $rc -eq 0 ] || die "redacted records still flagged (exit $rc)"
grep -qx 'flagged_records: 0' "$T/re.out" || die "redacted records still flagged"
# the command line overrides the config
"$node" check-data -c "$T/conf/node.conf" --policy refuse >/dev/null 2>&1; rc=$?
[ $rc -eq 3 ] || die "--policy refuse over a redact config: exit $rc"

# 4. policy off: nothing scanned, exit 0
"$node" check-data --records "$corpus/phi.jsonl" --policy off >"$T/off.out" 2>&1; rc=$?
[ $rc -eq 0 ] || die "policy off: exit $rc"
grep -qx 'flagged_records: 0' "$T/off.out" || die "policy off flagged records"
no_phi "$T/off.out"

# 5. schema errors: exit 1 with file and line named; unknown label with and without skip
printf '{"text": "ok", "label": "cardiology"}\n{"text": "trunc\n' >"$T/bad.jsonl"
"$node" check-data --records "$T/bad.jsonl" >"$T/bad.out" 2>&1; rc=$?
[ $rc -eq 1 ] || die "truncated JSON: exit $rc"
grep -q "bad.jsonl:2: record 2: invalid JSON" "$T/bad.out" || die "error does not name line 2"
printf '{"text": "ok", "label": "cardiology"}\n{"text": "x", "label": "oncology"}\n' >"$T/lab.jsonl"
"$node" check-data --records "$T/lab.jsonl" --labels cardiology >"$T/lab.out" 2>&1; rc=$?
[ $rc -eq 1 ] || die "unknown label: exit $rc"
grep -q "lab.jsonl:2: record 2: field 'label': unknown label 'oncology'" "$T/lab.out" || die "unknown label message"
"$node" check-data --records "$T/lab.jsonl" --labels cardiology --skip-unknown-labels >"$T/lab2.out" 2>/dev/null; rc=$?
[ $rc -eq 0 ] || die "skip unknown labels: exit $rc"
grep -qx 'skipped_records: 1' "$T/lab2.out" || die "skipped records not counted"
"$node" check-data >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] || die "no records given: exit $rc"

# 6. synthetic CSV records pass the gate
"$node" synth --sites 2 --records-per-site 60 --seed 9 --format csv -o "$T/synth" >/dev/null 2>&1 \
  || die "synth --format csv"
"$node" check-data --records "$T/synth/site-2/train.csv" >"$T/synth.out" 2>&1; rc=$?
[ $rc -eq 0 ] || die "synthetic CSV records flagged or unreadable (exit $rc): $(tail -3 "$T/synth.out")"

echo "PASS $name"
