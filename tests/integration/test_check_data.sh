#!/usr/bin/env bash
# `medfl-node check-data` end to end on the de-identification corpus: output format
# (`record N: RULE[,RULE...]`, `records: N`, `flagged_records: K`), exit codes per policy
# (3 = flagged under refuse), -c node.conf with other sections present, redaction output,
# schema errors, synthetic CSV records — and no planted PHI string in stdout or stderr.
set -u
name=test_check_data
node="${MEDFL_BIN:?}/medfl-node"
corpus=tests/data/deid
tmp=$(mktemp -d /tmp/medfl-check-data-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL $name: $*"; exit 1; }

# Lines must name records and rules only.
check_format() {
  local out=$1 n=$2
  grep -Ev '^record [0-9]+: [A-Z_89]+(,[A-Z_89]+)*$|^records: [0-9]+$|^flagged_records: [0-9]+$|^skipped_records: [0-9]+$' "$out" \
    && fail "unexpected output line(s) in $out"
  tail -n 2 "$out" | head -n 1 | grep -qx "records: $n" || fail "no 'records: $n' line"
  tail -n 1 "$out" | grep -Eq '^flagged_records: [0-9]+$' || fail "no flagged_records line last"
}
no_phi() {
  if grep -F -f "$corpus/needles.txt" "$@"; then fail "planted PHI appears in $*"; fi
}

# 1. planted PHI under the default policy (refuse): exit 3, nearly every record flagged
"$node" check-data --records "$corpus/phi.jsonl" >"$tmp/phi.out" 2>"$tmp/phi.err"; rc=$?
[ $rc -eq 3 ] || fail "refuse with PHI: exit $rc, expected 3 ($(cat "$tmp/phi.err"))"
n=$(grep -c . "$corpus/phi.jsonl")
check_format "$tmp/phi.out" "$n"
k=$(sed -n 's/^flagged_records: //p' "$tmp/phi.out")
[ "$k" -ge $((n * 98 / 100)) ] || fail "only $k of $n PHI records flagged"
[ "$(grep -c '^record ' "$tmp/phi.out")" -eq "$k" ] || fail "record lines != flagged_records"
for rule in NAME DATE PHONE FAX EMAIL SSN MRN ACCOUNT URL IP ADDRESS ZIP AGE_OVER_89; do
  grep -Eq "^record [0-9]+: (.*,)?$rule(,|$)" "$tmp/phi.out" || fail "rule $rule never reported"
done
no_phi "$tmp/phi.out" "$tmp/phi.err"

# 2. clean clinical records: exit 0, at most 2% flagged
"$node" check-data --records "$corpus/clean.jsonl" >"$tmp/clean.out" 2>"$tmp/clean.err"; rc=$?
[ $rc -eq 0 ] || fail "clean records: exit $rc"
n=$(grep -c . "$corpus/clean.jsonl")
check_format "$tmp/clean.out" "$n"
k=$(sed -n 's/^flagged_records: //p' "$tmp/clean.out")
[ "$k" -le $((n * 2 / 100)) ] || fail "$k of $n clean records flagged"

# 3. -c node.conf (relative records path, other sections ignored here), policy redact
mkdir -p "$tmp/conf/data"
cp "$corpus/phi.jsonl" "$tmp/conf/data/records.jsonl"
cat >"$tmp/conf/node.conf" <<'EOF'
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
"$node" check-data -c "$tmp/conf/node.conf" --redacted-out "$tmp/redacted.jsonl" \
  >"$tmp/redact.out" 2>"$tmp/redact.err"; rc=$?
[ $rc -eq 0 ] || fail "redact: exit $rc ($(cat "$tmp/redact.err"))"
check_format "$tmp/redact.out" "$(grep -c . "$corpus/phi.jsonl")"
no_phi "$tmp/redact.out" "$tmp/redact.err" "$tmp/redacted.jsonl"
"$node" check-data --records "$tmp/redacted.jsonl" >"$tmp/re.out" 2>&1; rc=$?
[ $rc -eq 0 ] || fail "redacted records still flagged (exit $rc)"
grep -qx 'flagged_records: 0' "$tmp/re.out" || fail "redacted records still flagged"
# the command line overrides the config
"$node" check-data -c "$tmp/conf/node.conf" --policy refuse >/dev/null 2>&1; rc=$?
[ $rc -eq 3 ] || fail "--policy refuse over a redact config: exit $rc"

# 4. policy off: nothing scanned, exit 0
"$node" check-data --records "$corpus/phi.jsonl" --policy off >"$tmp/off.out" 2>&1; rc=$?
[ $rc -eq 0 ] || fail "policy off: exit $rc"
grep -qx 'flagged_records: 0' "$tmp/off.out" || fail "policy off flagged records"
no_phi "$tmp/off.out"

# 5. schema errors: exit 1 with file and line named; unknown label with and without skip
printf '{"text": "ok", "label": "cardiology"}\n{"text": "trunc\n' >"$tmp/bad.jsonl"
"$node" check-data --records "$tmp/bad.jsonl" >"$tmp/bad.out" 2>&1; rc=$?
[ $rc -eq 1 ] || fail "truncated JSON: exit $rc"
grep -q "bad.jsonl:2: record 2: invalid JSON" "$tmp/bad.out" || fail "error does not name line 2"
printf '{"text": "ok", "label": "cardiology"}\n{"text": "x", "label": "oncology"}\n' >"$tmp/lab.jsonl"
"$node" check-data --records "$tmp/lab.jsonl" --labels cardiology >"$tmp/lab.out" 2>&1; rc=$?
[ $rc -eq 1 ] || fail "unknown label: exit $rc"
grep -q "lab.jsonl:2: record 2: field 'label': unknown label 'oncology'" "$tmp/lab.out" || fail "unknown label message"
"$node" check-data --records "$tmp/lab.jsonl" --labels cardiology --skip-unknown-labels >"$tmp/lab2.out" 2>/dev/null; rc=$?
[ $rc -eq 0 ] || fail "skip unknown labels: exit $rc"
grep -qx 'skipped_records: 1' "$tmp/lab2.out" || fail "skipped records not counted"
"$node" check-data >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] || fail "no records given: exit $rc"

# 6. synthetic CSV records pass the gate
"$node" synth --sites 2 --records-per-site 60 --seed 9 --format csv -o "$tmp/synth" >/dev/null 2>&1 \
  || fail "synth --format csv"
"$node" check-data --records "$tmp/synth/site-2/train.csv" >"$tmp/synth.out" 2>&1; rc=$?
[ $rc -eq 0 ] || fail "synthetic CSV records flagged or unreadable (exit $rc): $(tail -3 "$tmp/synth.out")"

echo "PASS $name"
