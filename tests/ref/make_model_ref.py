#!/usr/bin/env python3
"""Reference fixture for tests/unit/test_model.c: a tiny random Hugging Face BertModel with
PEFT LoRA adapters and a classification head on mean pooling, its logits, loss and the
gradient of every LoRA and head parameter.

WHY: the C model must compute exactly what PyTorch + PEFT compute. The model is built in
float32 (so every weight is exactly representable in the C float buffers) and then evaluated
in float64, so the reference is free of float32 rounding and the C test measures only its
own error.

Two variants share one base model: "qv" (LoRA on query + value, the default) and "all" (all
six targets: query, key, value, attention.output.dense, intermediate.dense, output.dense).
PEFT initialises lora_B to zero, which would make every lora_A gradient zero and untestable;
here lora_B is set to N(0, 0.1) values AFTER PEFT's initialisation (documented in the fixture
attribute 'note').

Layout (HDF5, read by the test with the HDF5 C API). Each tensor set is stored flat to keep
the file small (one dataset per tensor costs ~1 KB of HDF5 headers each):
  config attrs: vocab, hidden, layers, heads, ffn, max_position, type_vocab, layer_norm_eps,
                num_labels, r, alpha, B, T
  input_ids, token_type_ids, attention_mask [B, T] int32; labels [B] int32
  base/names  uint8: tensor names joined by '\n' (Hugging Face BertModel names)
  base/numel  int64 [n];  base/values float32 (concatenated)
  <variant>/names, <variant>/numel: trainable tensors (PEFT names, then classifier.*)
  <variant>/params, <variant>/grads float32 (concatenated, same order)
  <variant>/logits [B, K], <variant>/pooled [B, hidden] float32, <variant>/loss scalar float64

Run: python3 tests/ref/make_model_ref.py  (writes tests/ref/fixtures/model_tiny.h5)
"""
import os
import re

import h5py
import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel

SEED = 1234
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "model_tiny.h5")

CFG = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
           layer_norm_eps=1e-12, hidden_act="gelu", hidden_dropout_prob=0.0,
           attention_probs_dropout_prob=0.0)
NUM_LABELS = 3
R, ALPHA = 8, 16
B, T = 3, 12

ALL_TARGETS = r".*\.(attention\.self\.(query|key|value)|attention\.output\.dense|" \
              r"intermediate\.dense|layer\.\d+\.output\.dense)"


def pack(f, group, names, arrays, key="values"):
    g = f.require_group(group)
    g.create_dataset("names", data=np.frombuffer("\n".join(names).encode(), dtype=np.uint8))
    g.create_dataset("numel", data=np.array([a.size for a in arrays], dtype=np.int64))
    g.create_dataset(key, data=np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32))
    return g


def main():
    torch.manual_seed(SEED)
    config = BertConfig(**CFG)
    config._attn_implementation = "eager"
    base = BertModel(config, add_pooling_layer=False)
    # BERT's own init (std 0.02) makes LayerNorm/biases trivial: randomise them too so the
    # test exercises every parameter of the base.
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}

    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, CFG["vocab_size"], (B, T), generator=g, dtype=torch.int64)
    lens = [T, 7, 3]
    mask = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(lens):
        mask[b, :n] = 1
    ids[mask == 0] = 0  # [PAD]
    types = torch.zeros(B, T, dtype=torch.int64)
    types[0, 6:] = 1
    types[1, 4:7] = 1
    labels = torch.tensor([2, 0, 1], dtype=torch.int64)

    with h5py.File(OUT, "w") as f:
        f.attrs["note"] = ("tiny random BertModel + PEFT LoRA; lora_B set to N(0, 0.1) after "
                           "PEFT init so lora_A gradients are non-zero; evaluated in float64")
        for k, v in dict(vocab=CFG["vocab_size"], hidden=CFG["hidden_size"],
                         layers=CFG["num_hidden_layers"], heads=CFG["num_attention_heads"],
                         ffn=CFG["intermediate_size"], max_position=CFG["max_position_embeddings"],
                         type_vocab=CFG["type_vocab_size"], num_labels=NUM_LABELS, r=R, B=B,
                         T=T).items():
            f.attrs[k] = np.int64(v)
        f.attrs["layer_norm_eps"] = np.float64(CFG["layer_norm_eps"])
        f.attrs["alpha"] = np.float64(ALPHA)
        f.create_dataset("input_ids", data=ids.numpy().astype(np.int32))
        f.create_dataset("token_type_ids", data=types.numpy().astype(np.int32))
        f.create_dataset("attention_mask", data=mask.numpy().astype(np.int32))
        f.create_dataset("labels", data=labels.numpy().astype(np.int32))
        names = list(base_state.keys())
        pack(f, "base", names, [base_state[n].numpy() for n in names])

        for variant, targets in (("qv", ["query", "value"]), ("all", ALL_TARGETS)):
            torch.manual_seed(SEED + 2)
            model = BertModel(config, add_pooling_layer=False)
            model.load_state_dict(base_state)
            lcfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0,
                              bias="none")
            model = get_peft_model(model, lcfg)
            head = torch.nn.Linear(CFG["hidden_size"], NUM_LABELS)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(0.1 * torch.randn_like(p))
            model = model.double()
            head = head.double()
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            h = out.last_hidden_state
            m = mask.unsqueeze(-1).double()
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            logits = head(pooled)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            loss.backward()

            tnames, params, grads = [], [], []
            for name, p in model.named_parameters():
                if not p.requires_grad:
                    continue
                tnames.append(name.replace(".default", ""))
                params.append(p.detach().float().numpy())
                grads.append(p.grad.detach().numpy())
            for name, p in (("classifier.weight", head.weight), ("classifier.bias", head.bias)):
                tnames.append(name)
                params.append(p.detach().float().numpy())
                grads.append(p.grad.detach().numpy())
            grp = pack(f, variant, tnames, params, key="params")
            grp.create_dataset("grads", data=np.concatenate([x.reshape(-1) for x in grads])
                               .astype(np.float32))
            grp.create_dataset("logits", data=logits.detach().numpy().astype(np.float32))
            grp.create_dataset("pooled", data=pooled.detach().numpy().astype(np.float32))
            grp.attrs["loss"] = np.float64(loss.item())
            grp.attrs["targets"] = "query,value" if variant == "qv" else "all"
            print(f"{variant}: {len(tnames)} trainable tensors, loss {loss.item():.8f}")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
