#!/usr/bin/env python3
"""Builds the fixtures of the version tools' tests:
  tests/ref/fixtures/tiny_peft/  a LoRA adapter saved by Hugging Face PEFT itself
      (save_pretrained: adapter_model.safetensors + adapter_config.json) for a
      BertForSequenceClassification built from tests/ref/fixtures/tiny_bert/config.json,
      with LoRA on query, value and intermediate.dense (r=4, alpha=8), the classifier as a
      module to save, and every LoRA B non-zero so a dropped or misplaced tensor shows.
  tests/ref/fixtures/versions_key/  a TEST-ONLY Ed25519 key pair in medfl's key-file form
      (identity.key: 128 hex digits of seed||public, identity.pub: 64 hex digits).
`medfl-aggregator init-version --from tests/ref/fixtures/tiny_peft` seeds a store from it, so
the import path is checked against PEFT's own writer, and check_peft_version_export.py checks the
export path against PEFT's own loader.
Run from the repository root: python3 tests/ref/make_tiny_adapter.py"""
import os

import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

OUT = "tests/ref/fixtures/tiny_peft"
KEYS = "tests/ref/fixtures/versions_key"
torch.manual_seed(7)
cfg = BertConfig.from_pretrained("tests/ref/fixtures/tiny_bert")
cfg.num_labels = 3
base = BertForSequenceClassification(cfg)
lcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"],
                  lora_dropout=0.0, task_type="SEQ_CLS")
model = get_peft_model(base, lcfg)
with torch.no_grad():
    for n, p in model.named_parameters():
        if "lora_" in n or "modules_to_save" in n:
            p.copy_(torch.randn_like(p) * 0.1)
os.makedirs(OUT, exist_ok=True)
model.save_pretrained(OUT)

os.makedirs(KEYS, exist_ok=True)
sk = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
seed = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                        serialization.NoEncryption())
pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
with open(os.path.join(KEYS, "identity.key"), "w") as f:
    f.write((seed + pk).hex() + "\n")
with open(os.path.join(KEYS, "identity.pub"), "w") as f:
    f.write(pk.hex() + "\n")
print("wrote", OUT, KEYS)
