#!/usr/bin/env python3
"""Builds tests/ref/fixtures/tiny_bert/: a tiny random Hugging Face BertModel saved with
save_pretrained (config.json, model.safetensors), a ~200-token vocab.txt, tokenizer_config.json
(cased, to check that do_lower_case is carried over), and expected.json with every tensor's
shape, sum and first values computed by PyTorch, so test_import.c checks the imported HDF5
file against PyTorch's view of the checkpoint, not against our own reader.
Run from the repository root: python3 tests/ref/make_tiny_bert.py"""
import json
import os
import string

import torch
from transformers import BertConfig, BertModel

OUT = "tests/ref/fixtures/tiny_bert"
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)

vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
vocab += list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
vocab += ["##" + c for c in string.ascii_lowercase]
words = ["the", "patient", "pain", "chest", "fever", "denies", "with", "and", "of", "mg",
         "blood", "pressure", "heart", "rate", "history", "##s", "##ed", "##ing", "##ly",
         "Patient", "Chest", "BP", "HR", "##ia", "##itis", "cardi", "##ac", "pulmon", "##ary"]
vocab += [w for w in words if w not in vocab]
vocab += ["[unused%d]" % i for i in range(200 - len(vocab))]
with open(os.path.join(OUT, "vocab.txt"), "w") as f:
    f.write("\n".join(vocab) + "\n")
with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
    json.dump({"do_lower_case": False, "tokenizer_class": "BertTokenizer"}, f)

cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                 type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu")
model = BertModel(cfg, add_pooling_layer=True)
with torch.no_grad():  # LayerNorm parameters away from 1/0 so mix-ups show
    for n, p in model.named_parameters():
        if "LayerNorm" in n:
            p.add_(torch.randn_like(p) * 0.1)
model.save_pretrained(OUT, safe_serialization=True)

expected = {}
for n, p in model.state_dict().items():
    if n.startswith("pooler.") or n.endswith("position_ids") or n.endswith("token_type_ids"):
        continue
    flat = p.detach().double().flatten()
    expected[n] = {"shape": list(p.shape), "sum": float(flat.sum()),
                   "first": [float(x) for x in flat[:4]]}
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(expected, f, indent=0)
print("tensors:", len(expected), "files:", sorted(os.listdir(OUT)))
