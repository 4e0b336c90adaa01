#!/usr/bin/env python3
"""Reference fixture for tests/unit/test_llama.c: a tiny random LlamaForCausalLM (2 layers,
hidden 64, 4 heads, 2 KV heads, head_dim 16, ffn 128, vocab 100) with PEFT LoRA (r 4, alpha
8) on all seven targets, its logits, causal-LM loss over response tokens and the gradient of
every LoRA parameter -- in two configurations sharing the base weights and the adapter:
  "tied":   tied embeddings, rope_theta 1e4
  "untied": a separate lm_head, rope_theta 1e5
plus the RoPE inverse frequencies transformers computes for the linear and llama3 scalings.

WHY: the C decoder must compute exactly what transformers + PEFT compute. Weights are
rounded to float16 (so the F16 fixture holds them exactly and the C float buffers too), then
the model is evaluated in float64 so the reference is free of float32 rounding and the C test
measures only its own error. Two spots of transformers compute in float32 whatever the model
dtype: LlamaRMSNorm (upcast) and the loss (ForCausalLMLoss upcasts the logits). Here the
RMSNorm is patched to the same formula in the input dtype, and the loss whose gradient is
taken is the same cross-entropy in float64 (shift by one, ignore_index -100, mean over the
labelled positions of the whole batch); HF's own loss (model(labels=...)) is computed too and
must agree (to float32 precision), which pins the labels convention.

PEFT initialises lora_B to zero, which would make every lora_A gradient zero and untestable;
lora_B is set to N(0, 0.1) AFTER PEFT's initialisation.

Batch: B = 2, T = 12; sequence 0 has 12 real tokens, the first 5 a prompt; sequence 1 has 8
real tokens then 4 padding, the first 3 a prompt. labels = ids on response tokens, -100 on
prompt and padding (HF convention: position t predicts labels[t + 1]).

Files (tests/ref/fixtures/tiny_llama/, each < 200 KB):
  model.safetensors   base weights (HF names, F16), LoRA A/B (PEFT names without
                      ".default", F16), input_ids / attention_mask / labels [B, T] as F32
                      (small integers, exact), rope.linear.inv_freq / rope.llama3.inv_freq
                      [8] F32; metadata: sizes, r, alpha, B, T and the rope scaling settings
  ref_tied.safetensors, ref_untied.safetensors
                      logits [B, T, V] F32, loss [1] F32, grad.<PEFT name> F32 per LoRA
                      tensor, (untied) lm_head.weight F16; metadata: rope_theta, tie,
                      loss (repr of the float64), hf_loss

Run from the repository root: python3 tests/ref/make_llama_ref.py
"""
import os

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama import modeling_llama

SEED = 4321
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tiny_llama")
SIZES = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=64, rms_norm_eps=1e-5, hidden_act="silu",
             attention_bias=False, mlp_bias=False, attention_dropout=0.0)
VARIANTS = {"tied": dict(tie_word_embeddings=True, rope_theta=1e4),
            "untied": dict(tie_word_embeddings=False, rope_theta=1e5)}
R, ALPHA = 4, 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B, T = 2, 12
LENS, PROMPTS = [12, 8], [5, 3]
LINEAR = dict(rope_type="linear", factor=4.0)
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=16)


def rmsnorm_same_dtype(self, hidden_states):
    """LlamaRMSNorm.forward without the float32 upcast (the same formula in float64)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def f16_exact(p):
    with torch.no_grad():
        p.copy_(p.half().to(p.dtype))


def make_config(variant, rope=None):
    v = VARIANTS[variant]
    params = dict(rope_theta=v["rope_theta"], rope_type="default")
    if rope:
        params.update(rope)
    cfg = LlamaConfig(**SIZES, tie_word_embeddings=v["tie_word_embeddings"],
                      rope_parameters=params)
    cfg._attn_implementation = "eager"
    return cfg


def main():
    os.makedirs(OUT, exist_ok=True)
    modeling_llama.LlamaRMSNorm.forward = rmsnorm_same_dtype
    torch.manual_seed(SEED)

    # base weights: matrices N(0, 0.1), norms 1 + N(0, 0.1), all float16-exact
    base = LlamaForCausalLM(make_config("untied"))
    with torch.no_grad():
        for name, p in base.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn_like(p))
            f16_exact(p)
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    shared = {k: v for k, v in state.items() if k != "lm_head.weight"}

    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(1, SIZES["vocab_size"], (B, T), generator=g, dtype=torch.int64)
    mask = torch.zeros(B, T, dtype=torch.int64)
    labels = torch.full((B, T), -100, dtype=torch.int64)
    for b in range(B):
        mask[b, :LENS[b]] = 1
        ids[b, LENS[b]:] = 0  # padding token
        labels[b, PROMPTS[b]:LENS[b]] = ids[b, PROMPTS[b]:LENS[b]]

    model_tensors = {k: v.numpy().astype(np.float16) for k, v in shared.items()}
    lora = None
    for variant in VARIANTS:
        torch.manual_seed(SEED + 2)
        model = LlamaForCausalLM(make_config(variant))
        sd = dict(shared)
        if variant == "untied":
            sd["lm_head.weight"] = state["lm_head.weight"]
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
        model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS,
                                                 lora_dropout=0.0, bias="none",
                                                 task_type="CAUSAL_LM"))
        with torch.no_grad():
            named = dict(model.named_parameters())
            if lora is None:  # the first variant draws the adapter, the second reuses it
                for name, p in named.items():
                    if "lora_B" in name:
                        p.copy_(0.1 * torch.randn_like(p))
                    if "lora_" in name:
                        f16_exact(p)
                lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
            else:
                for n, p in lora.items():
                    named[n].copy_(p)
        model = model.double()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        logits = out.logits
        V = SIZES["vocab_size"]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        hf_loss = out.loss.item()
        assert abs(hf_loss - loss.item()) < 1e-5 * abs(loss.item()), (hf_loss, loss.item())
        loss.backward()

        ref = {"logits": logits.detach().numpy().astype(np.float32),
               "loss": np.array([loss.item()], dtype=np.float32)}
        n_lora = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            clean = name.replace(".default", "")
            ref["grad." + clean] = p.grad.detach().numpy().astype(np.float32)
            if variant == "tied":
                model_tensors[clean] = p.detach().numpy().astype(np.float16)
            n_lora += 1
        assert n_lora == 2 * len(TARGETS) * SIZES["num_hidden_layers"], n_lora
        if variant == "untied":
            ref["lm_head.weight"] = state["lm_head.weight"].numpy().astype(np.float16)
        v = VARIANTS[variant]
        meta = {"rope_theta": repr(v["rope_theta"]),
                "tie_embeddings": "1" if v["tie_word_embeddings"] else "0",
                "loss": repr(loss.item()), "hf_loss": repr(hf_loss)}
        path = os.path.join(OUT, f"ref_{variant}.safetensors")
        save_file(ref, path, metadata=meta)
        print(f"{variant}: {n_lora} LoRA tensors, loss {loss.item():.10f} (HF {hf_loss:.10f}),"
              f" {os.path.getsize(path)} bytes")

    # RoPE scalings: transformers' own inverse frequencies for the untied theta
    for key, rope in (("linear", LINEAR), ("llama3", LLAMA3)):
        inv, scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](make_config("untied", rope), "cpu")
        assert scale == 1.0
        model_tensors[f"rope.{key}.inv_freq"] = inv.float().numpy()

    for k, arr in (("input_ids", ids), ("attention_mask", mask), ("labels", labels)):
        model_tensors[k] = arr.numpy().astype(np.float32)
    meta = {k: str(v) for k, v in SIZES.items() if isinstance(v, (int, float))
            and not isinstance(v, bool)}
    meta.update(r=str(R), alpha=str(ALPHA), B=str(B), T=str(T),
                linear_factor=str(LINEAR["factor"]), llama3_factor=str(LLAMA3["factor"]),
                llama3_low=str(LLAMA3["low_freq_factor"]),
                llama3_high=str(LLAMA3["high_freq_factor"]),
                llama3_original_max=str(LLAMA3["original_max_position_embeddings"]))
    path = os.path.join(OUT, "model.safetensors")
    save_file(model_tensors, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
