#!/usr/bin/env bash
# `medfl-node check-data` end to end on the de-identification corpus: output format
# (`record N: RULE[,RULE...]`, `records: N`, `flagged_records: K`), exit codes per policy
# (3 = flagged under refuse), -c node.conf with other sections present, redaction output,
# schema errors (every bad record listed, never a field value), labels scanned like text,
# gzip'd records, config typos refused with file:line and key by every command reading
# node.conf, synthetic CSV records — and no planted PHI string in stdout or stderr.
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_check_data
node="${MEDFL_BIN:?}/medfl-node"
corpus=tests/data/deid

# Lines must name records and rules only.
check_format() {
  local out=$1 n=$2
  grep -Ev '^record [0-9]+: [A-Z_89]+(,[A-Z_89]+)*(; label: [A-Z_89]+(,[A-Z_89]+)*)?$|^record [0-9]+: label: [A-Z_89]+(,[A-Z_89]+)*$|^records: [0-9]+$|^flagged_records: [0-9]+$|^skipped_records: [0-9]+$' "$out" \
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
node_id = hospital-a
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
[ "$(stat -c %a "$T/redacted.jsonl")" = 600 ] || die "redacted records not written 0600"
ls "$T"/redacted.jsonl.tmp.* >/dev/null 2>&1 && die "temporary file left next to the redacted records"
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
grep -q "lab.jsonl:2: record 2: field 'label': unknown label" "$T/lab.out" || die "unknown label message"
grep -q oncology "$T/lab.out" && die "unknown label message echoes the field value"
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

# 7. every bad record is reported (not only the first), never with a field value; exit 1
cat >"$T/bad3.jsonl" <<'EOF'
{"text": "ok", "label": "cardiology"}
{"text": "a", "label": "Jane Roe"}
{"text": 42, "label": "cardiology"}
{"text": "ok", "label": "cardiology"}
{"text": "Seen by Dr. Smith, MRN 7654321", "label": "cardiology"
EOF
"$node" check-data --records "$T/bad3.jsonl" --labels cardiology >"$T/bad3.out" 2>"$T/bad3.err"; rc=$?
[ $rc -eq 1 ] || die "3 bad records: exit $rc"
for l in "bad3.jsonl:2: record 2: field 'label': unknown label" \
         "bad3.jsonl:3: record 3: field 'text': expected a string" \
         "bad3.jsonl:5: record 5: invalid JSON" "bad3.jsonl: 3 bad records"; do
  grep -qF "$l" "$T/bad3.err" || die "bad records: '$l' not reported: $(cat "$T/bad3.err")"
done
grep -E 'Jane|Roe|Smith|7654321' "$T/bad3.out" "$T/bad3.err" && die "bad-record report echoes a field value"
# bounded: 150 bad records list the first 100 and count the rest
for i in $(seq 150); do echo '{"text": 1, "label": "cardiology"}'; done >"$T/bad150.jsonl"
"$node" check-data --records "$T/bad150.jsonl" --labels cardiology >/dev/null 2>"$T/bad150.err"; rc=$?
[ $rc -eq 1 ] || die "150 bad records: exit $rc"
[ "$(grep -c "expected a string" "$T/bad150.err")" -eq 100 ] || die "not exactly 100 bad records listed"
grep -q "and 50 more bad records" "$T/bad150.err" || die "bad records beyond 100 not counted"
grep -q "150 bad records" "$T/bad150.err" || die "total of bad records not given"

# 8. labels are scanned like text: a name in the label column is flagged (refuse: exit 3;
#    redact cannot rewrite a class name: exit 1), never echoed
printf '{"text": "stable, no complaints", "label": "Dr. Smith"}\n{"text": "ok", "label": "cardiology"}\n' >"$T/labphi.jsonl"
"$node" check-data --records "$T/labphi.jsonl" >"$T/labphi.out" 2>"$T/labphi.err"; rc=$?
[ $rc -eq 3 ] || die "PHI in a label: exit $rc, expected 3"
grep -qx 'record 1: label: NAME' "$T/labphi.out" || die "label PHI not reported: $(cat "$T/labphi.out")"
check_format "$T/labphi.out" 2
"$node" check-data --records "$T/labphi.jsonl" --policy redact >"$T/labphi2.out" 2>"$T/labphi2.err"; rc=$?
[ $rc -eq 1 ] || die "PHI in a label under redact: exit $rc, expected 1"
grep -q "labels cannot be redacted" "$T/labphi2.err" || die "label redact refusal not explained"
grep -q Smith "$T/labphi.out" "$T/labphi.err" "$T/labphi2.out" "$T/labphi2.err" && die "label PHI echoed"

# 9. gzip'd records are read (JSONL and CSV) and give the same report as the plain file
gzip -c "$corpus/phi.jsonl" >"$T/phi.jsonl.gz"
"$node" check-data --records "$T/phi.jsonl.gz" >"$T/gz.out" 2>"$T/gz.err"; rc=$?
[ $rc -eq 3 ] || die "gzip'd JSONL: exit $rc ($(cat "$T/gz.err"))"
cmp -s "$T/gz.out" "$T/phi.out" || die "gzip'd JSONL reported differently from the plain file"
gzip -c "$T/synth/site-2/train.csv" >"$T/train.csv.gz"
"$node" check-data --records "$T/train.csv.gz" >"$T/gzcsv.out" 2>&1; rc=$?
[ $rc -eq 0 ] || die "gzip'd CSV: exit $rc: $(tail -3 "$T/gzcsv.out")"
grep -q "^records: [1-9]" "$T/gzcsv.out" || die "gzip'd CSV: no records"
"$node" check-data --records "$T/synth/site-2/train.csv" >"$T/plaincsv.out" 2>&1
cmp -s "$T/gzcsv.out" "$T/plaincsv.out" || die "gzip'd CSV reported differently from the plain file"
head -c 300 "$T/phi.jsonl.gz" >"$T/cut.jsonl.gz"
"$node" check-data --records "$T/cut.jsonl.gz" >"$T/cut.out" 2>&1; rc=$?
[ $rc -eq 1 ] || die "truncated gzip: exit $rc"
grep -q "cut.jsonl.gz: read error" "$T/cut.out" || die "truncated gzip not reported as a read error"

# 10. a typo in node.conf is refused with FILE:LINE and the key by every command reading
#     it (check-data, train-local, eval, privacy), not only by `run`
typo() { # $1 = sed script making the typo, $2 = expected message, $3 = its line
  sed "$1" "$T/conf/node.conf" >"$T/conf/typo.conf"
  for cmd in "check-data -c $T/conf/typo.conf" "train-local -c $T/conf/typo.conf" \
             "eval -c $T/conf/typo.conf --adapter $T/none.h5" "privacy -c $T/conf/typo.conf"; do
    # shellcheck disable=SC2086
    "$node" $cmd >"$T/typo.out" 2>&1; rc=$?
    [ $rc -ne 0 ] || die "$cmd accepted a config with $2"
    grep -qF "typo.conf:$3: $2" "$T/typo.out" || die "$cmd: '$2' at line $3 not named: $(cat "$T/typo.out")"
  done
}
typo 's/^records = /record = /' "unknown key 'data.record'" 6
typo 's/^label_field = label$/label = label/' "unknown key 'data.label'" 8
typo 's/^\[deid\]$/[model]\nlora.target = q\n[deid]/' "unknown key 'model.lora.target'" 11
typo 's/^\[train\]$/[trian]/' "unknown section '[trian]'" 3

echo "PASS $name"
