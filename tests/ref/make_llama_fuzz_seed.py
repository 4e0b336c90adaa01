#!/usr/bin/env python3
"""Seed for tests/fuzz/fuzz_llama_gguf.c: the smallest complete Llama GGUF the loader accepts
(1 layer, hidden 32, 2 heads, 1 KV head, ffn 32, a byte-level vocabulary of the 256 byte
tokens and 4 merges, matrices Q8_0 / Q4_1 / Q4_0 / F16, norms F32), about 20 KB, so the fuzzer
mutates a file that gets through every check into the tokenizer and the model build.

Run from the repository root: python3 tests/ref/make_llama_fuzz_seed.py
"""
import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFWriter, quants

OUT = "tests/fuzz/corpus/llama_gguf/seed.gguf"
L, C, H, KV, F = 1, 32, 2, 1, 32
D = C // H


def byte_tokens():
    """GPT-2's bytes_to_unicode: every byte a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def main():
    rng = np.random.default_rng(7)
    tokens = byte_tokens() + ["ĠĠ", "in", "th", "Ġt", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ Ġ", "i n", "t h", "Ġ t"]
    types = [1] * (len(tokens) - 2) + [3, 3]
    V = len(tokens)
    w = GGUFWriter(OUT, "llama")
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(C)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(1e4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(V - 2)
    w.add_eos_token_id(V - 1)

    def mat(name, rows, cols, qtype):
        x = (0.1 * rng.standard_normal((rows, cols))).astype(np.float32)
        if qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, quants.quantize(x, qtype), raw_dtype=qtype)

    def norm(name):
        w.add_tensor(name, np.ones(C, dtype=np.float32))

    mat("token_embd.weight", V, C, Q.Q8_0)
    for i in range(L):
        norm(f"blk.{i}.attn_norm.weight")
        mat(f"blk.{i}.attn_q.weight", C, C, Q.Q4_1)
        mat(f"blk.{i}.attn_k.weight", KV * D, C, Q.Q8_0)
        mat(f"blk.{i}.attn_v.weight", KV * D, C, Q.Q4_0)
        mat(f"blk.{i}.attn_output.weight", C, C, Q.F16)
        norm(f"blk.{i}.ffn_norm.weight")
        mat(f"blk.{i}.ffn_gate.weight", F, C, Q.Q4_1)
        mat(f"blk.{i}.ffn_up.weight", F, C, Q.Q8_0)
        mat(f"blk.{i}.ffn_down.weight", C, F, Q.Q4_0)
    norm("output_norm.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
