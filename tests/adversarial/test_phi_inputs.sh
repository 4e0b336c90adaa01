#!/usr/bin/env bash
# The de-identification gate against PHI written the way real text writes it (issue #16 items
# 8-9), through the real `medfl-node check-data` as a hospital runs it: every one of the 194
# Unicode/format variants in tests/data/deid/unicode_variants.jsonl (NBSP and thin spaces,
# en dashes and U+2011 in phone numbers and SSNs, line breaks inside names, lower-case
# addresses, surname particles, fullwidth digits, ...) is flagged with its rule (recall 1.0)
# and nothing of the PHI reaches the output; the clinical negatives pass; a record whose
# LABEL holds a name is refused without echoing it; `--policy redact` writes no byte of the
# PHI, with mode 0600.
set -u
: "${MEDFL_BIN:?MEDFL_BIN must name the folder with the medfl binaries}"
NODE="$MEDFL_BIN/medfl-node"
. "$(dirname "$0")/../integration/lib.sh"
it_setup phi_inputs
V=tests/data/deid/unicode_variants.jsonl
N=tests/data/deid/unicode_negatives.jsonl
n=$(wc -l <"$V")

# each variant as a record of its own, labelled so check-data accepts the schema
python3 - "$V" "$T/variants.jsonl" "$T/needles.txt" <<'PY'
import json, sys
src, out, needles = sys.argv[1:4]
with open(out, "w") as f, open(needles, "w") as g:
    for line in open(src):
        r = json.loads(line)
        f.write(json.dumps({"text": r["text"], "label": "note"}) + "\n")
        for t in r["tokens"]:
            if len(t) >= 4:
                g.write(t + "\n")
PY
"$NODE" check-data --records "$T/variants.jsonl" >"$T/variants.out" 2>&1; rc=$?
flagged=$(field flagged_records <"$T/variants.out")
if [ $rc = 3 ] && [ "$flagged" = "$n" ]; then
  pass "check-data flags all $n Unicode/format variants of the PHI kinds (recall 1.0, exit 3)"
else
  fail "check-data flagged ${flagged:-?} of $n variants (exit $rc)" "$T/variants.out"
fi
python3 - "$V" "$T/variants.out" <<'PY' >"$T/rules.out" 2>&1
import json, re, sys
want = [json.loads(l)["rule"] for l in open(sys.argv[1])]
got = {}
for line in open(sys.argv[2]):
    m = re.match(r"record (\d+): (\S+)", line)
    if m:
        got[int(m.group(1))] = m.group(2).split(",")
bad = [i + 1 for i, r in enumerate(want) if r not in got.get(i + 1, [])]
print("wrong rule for records:", bad[:20]) if bad else print("ok")
sys.exit(1 if bad else 0)
PY
if [ $? = 0 ]; then pass "every variant is flagged with its own rule"; else fail "rules" "$T/rules.out"; fi
if grep -qFf "$T/needles.txt" "$T/variants.out"; then
  fail "check-data's output repeats PHI from the records" "$T/variants.out"
else
  pass "nothing of the PHI appears in check-data's output"
fi

python3 - "$N" "$T/negatives.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        f.write(json.dumps({"text": json.loads(line)["text"], "label": "note"}) + "\n")
PY
"$NODE" check-data --records "$T/negatives.jsonl" >"$T/neg.out" 2>&1; rc=$?
if [ $rc = 0 ] && [ "$(field flagged_records <"$T/neg.out")" = 0 ]; then
  pass "the clinical negatives (BP 120/80, 5-10 mg, T2N0M0, ... in the same characters) pass"
else
  fail "negatives flagged (exit $rc)" "$T/neg.out"
fi

# a label carrying a patient's name: refused, never echoed
printf '{"text": "chest pain, troponin negative", "label": "Jane Roe"}\n' >"$T/label.jsonl"
"$NODE" check-data --records "$T/label.jsonl" --labels "cardiology,neurology" >"$T/label.out" 2>&1; rc=$?
if [ $rc != 0 ] && ! grep -q "Jane\|Roe" "$T/label.out"; then
  pass "an unknown label holding a name is refused (exit $rc) without echoing it"
else
  fail "label value echoed or accepted (exit $rc)" "$T/label.out"
fi
printf '{"text": "chest pain, troponin negative", "label": "Dr. Roe 555-123-4567"}\n' >"$T/label2.jsonl"
"$NODE" check-data --records "$T/label2.jsonl" >"$T/label2.out" 2>&1; rc=$?
if [ $rc = 3 ] && grep -q "label" "$T/label2.out" && ! grep -q "Roe\|555" "$T/label2.out"; then
  pass "the gate scans labels: a name and phone number as a label are flagged (exit 3), not shown"
else
  fail "label not scanned or echoed (exit $rc)" "$T/label2.out"
fi

# redaction: no byte of the PHI left, written 0600 by the atomic writer
"$NODE" check-data --records "$T/variants.jsonl" --policy redact --redacted-out "$T/redacted.jsonl" \
  >"$T/redact.out" 2>&1; rc=$?
mode=$(stat -c %a "$T/redacted.jsonl" 2>/dev/null)
if [ $rc = 0 ] && [ "$mode" = 600 ] && [ "$(wc -l <"$T/redacted.jsonl")" = "$n" ] &&
   ! grep -qFf "$T/needles.txt" "$T/redacted.jsonl"; then
  pass "--policy redact leaves none of the PHI in the $n redacted records (mode 600)"
else
  fail "redaction (exit $rc, mode ${mode:-none})" "$T/redact.out"
fi
it_summary
