#!/usr/bin/env bash
# `medfl-node tokenize --model BASE`: every one-line string of tests/ref/fixtures/bpe/
# tiny_ref.jsonl (Hugging Face's ids, tests/ref/make_bpe_ref.py) piped through the command
# on tests/ref/fixtures/bpe/tiny.gguf gives HF's ids line for line, with the file's own
# pre-tokenizer and with --pre gpt-2 --no-parse-special; invalid UTF-8 is an error naming
# the line and byte offset (exit 1); usage errors exit 2; a file that is not GGUF is refused.
set -u
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_tokenize
FIX="$(cd "$(dirname "$0")/../ref/fixtures/bpe" && pwd)"
command -v python3 >/dev/null || skip "python3 is needed to read the JSON fixture"

python3 - "$FIX/tiny_ref.jsonl" "$T" <<'PY' || die "cannot prepare the inputs"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if b"\n" not in bytes.fromhex(r["hex"])]
with open(sys.argv[2] + "/in.txt", "wb") as f:
    for r in rows:
        f.write(bytes.fromhex(r["hex"]) + b"\n")
for name, ids in (("want_smollm", lambda r: r["ids"]["smollm"]),
                  ("want_raw", lambda r: r["ids_nospecial"])):
    with open(sys.argv[2] + "/" + name + ".txt", "w") as f:
        for r in rows:
            f.write(" ".join(map(str, ids(r))) + "\n")
PY
n=$(wc -l < "$T/in.txt")
[ "$n" -ge 150 ] || die "only $n one-line strings in the fixture"

"$NODE" tokenize --model "$FIX/tiny.gguf" < "$T/in.txt" > "$T/got.txt" 2> "$T/err.txt" \
  || fail "tokenize exited $?" "$T/err.txt"
if cmp -s "$T/got.txt" "$T/want_smollm.txt"; then pass "$n lines identical to HF (smollm)"
else diff "$T/want_smollm.txt" "$T/got.txt" | head -5; fail "ids differ from HF (smollm)"; fi

"$NODE" tokenize --model "$FIX/tiny.gguf" --pre gpt-2 --no-parse-special < "$T/in.txt" \
  > "$T/got_raw.txt" 2> "$T/err.txt" || fail "tokenize --no-parse-special exited $?" "$T/err.txt"
if cmp -s "$T/got_raw.txt" "$T/want_raw.txt"; then pass "gpt-2, specials as text: identical"
else diff "$T/want_raw.txt" "$T/got_raw.txt" | head -5; fail "ids differ from HF (gpt-2, specials as text)"; fi

printf 'fine\nab\xffc\n' | "$NODE" tokenize --model "$FIX/tiny.gguf" > "$T/out.txt" 2> "$T/err.txt"
rc=$?
[ "$rc" -eq 1 ] && grep -q "line 2: .*byte offset 2" "$T/err.txt" && [ "$(wc -l < "$T/out.txt")" -eq 1 ] \
  && pass "invalid UTF-8: exit 1 naming line 2, byte offset 2" || fail "invalid UTF-8: rc $rc" "$T/err.txt"

"$NODE" tokenize < /dev/null > /dev/null 2> "$T/err.txt"
[ $? -eq 2 ] && grep -q -- "--model" "$T/err.txt" && pass "no --model: usage error" || fail "no --model" "$T/err.txt"
"$NODE" tokenize --model "$FIX/tiny.gguf" --bogus < /dev/null > /dev/null 2>&1
[ $? -eq 2 ] && pass "unknown option: exit 2" || fail "unknown option"
"$NODE" tokenize --model "$FIX/tiny_ref.jsonl" < /dev/null > /dev/null 2> "$T/err.txt"
[ $? -eq 1 ] && grep -q "not a GGUF model file" "$T/err.txt" && pass "not GGUF: refused" || fail "not GGUF" "$T/err.txt"
"$NODE" tokenize --help | grep -q "usage: medfl-node tokenize" && pass "--help" || fail "--help"
it_summary
