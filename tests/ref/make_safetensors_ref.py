#!/usr/bin/env python3
"""Writes tests/ref/fixtures/dtypes.safetensors with the reference `safetensors` package: one
tensor per dtype the importer meets (F32, F16, BF16, and I64 which must be refused), plus
dtypes.json with the float32 values torch converts them to, so test_safetensors.c checks the
C half/bfloat16 conversion (subnormals, infinities, signed zero) against PyTorch's.
Run from the repository root: python3 tests/ref/make_safetensors_ref.py"""
import json
import math

import torch
from safetensors.torch import save_file

vals = [0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, 3.0e-6, float("inf"), -float("inf"),
        0.333251953125, 1e-3]
t = {
    "f32": torch.tensor([[1.5, -2.25, 3.0e-39], [1e30, -0.0, 7.0]], dtype=torch.float32),
    "f16": torch.tensor(vals, dtype=torch.float16),
    "bf16": torch.tensor(vals + [1e30, -3.0e38], dtype=torch.bfloat16),
    "i64": torch.tensor([1, 2, 3], dtype=torch.int64),
    "empty": torch.zeros((0, 4), dtype=torch.float32),
}
save_file(t, "tests/ref/fixtures/dtypes.safetensors", metadata={"format": "pt"})


def enc(x):
    return "inf" if x == math.inf else "-inf" if x == -math.inf else repr(x)


ref = {k: {"shape": list(v.shape), "values": [enc(float(x)) for x in v.float().flatten()]}
       for k, v in t.items() if k != "i64"}
with open("tests/ref/fixtures/dtypes.json", "w") as f:
    json.dump(ref, f, indent=0)
