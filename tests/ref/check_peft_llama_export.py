#!/usr/bin/env python3
"""Checks decoder adapters exported by medfl (node/engine/llama_export.c) with the tools that
will serve them: usage: check_peft_llama_export.py FIXTURE_DIR CASE_DIR...
FIXTURE_DIR is tests/ref/fixtures/tiny_llama (the base weights and sizes; the "tied" variant,
as test_llama_export.c builds it). Each CASE_DIR holds what test_llama_export.c wrote:
  peft/                       llama_export_peft's folder
  adapter.gguf                llama_export_gguf_lora's file
  medfl_logits.safetensors    logits [B, T, V] medfl computed (llama_forward) for input_ids /
                              attention_mask [B, T] (F32, small integers)
For each case:
  1. the base is saved as a Hugging Face folder (config.json + model.safetensors) and loaded
     with AutoModelForCausalLM; PeftModel.from_pretrained loads the export: task_type
     CAUSAL_LM, every exported tensor loaded as it is in the file, no LoRA module of the PEFT
     model left without an exported tensor (so target_modules named exactly the exported
     modules), and its logits on the real positions equal medfl's within 1e-4 relative (and
     differ from the base's, so the check can fail);
  2. the GGUF adapter read with the gguf package: general.type adapter, adapter.type lora,
     general.architecture llama, adapter.lora.alpha = the PEFT lora_alpha, one lora_a and one
     lora_b per exported PEFT tensor under llama.cpp's names, F32, shapes in ggml order
     (lora_a {in, r}, lora_b {r, out}), lora_a = PEFT's A and lora_b = PEFT's B, with the rows
     of q_proj / k_proj permuted as llama.cpp's converter permutes the base (per head, the
     two rotate_half halves interleaved).
Exit status 0 on success, 1 on a mismatch, 77 when torch/peft/transformers/gguf are absent."""
import json
import os
import re
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")

try:
    import numpy as np
    import torch
    from gguf import GGUFReader
    from peft import PeftModel
    from safetensors import safe_open
    from safetensors.torch import load_file
    import transformers
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
except ImportError as e:  # optional dependencies: skip
    print("skip: %s" % e)
    sys.exit(77)

TOL = 1e-4
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
LORA_RE = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
failures = []


def fail(msg):
    print("FAIL: " + msg)
    failures.append(msg)


def base_folder(fixture, out):
    """The fixture's base as a transformers folder; returns (path, config)."""
    path = os.path.join(fixture, "model.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    with safe_open(os.path.join(fixture, "ref_tied.safetensors"), "pt") as f:
        rmeta = f.metadata()
    cfg = LlamaConfig(
        vocab_size=int(meta["vocab_size"]), hidden_size=int(meta["hidden_size"]),
        intermediate_size=int(meta["intermediate_size"]),
        num_hidden_layers=int(meta["num_hidden_layers"]),
        num_attention_heads=int(meta["num_attention_heads"]),
        num_key_value_heads=int(meta["num_key_value_heads"]), head_dim=int(meta["head_dim"]),
        max_position_embeddings=int(meta["max_position_embeddings"]),
        rms_norm_eps=float(meta["rms_norm_eps"]), hidden_act="silu", attention_bias=False,
        mlp_bias=False, tie_word_embeddings=float(rmeta["tie_embeddings"]) != 0.0,
        rope_parameters=dict(rope_theta=float(rmeta["rope_theta"]), rope_type="default"))
    model = LlamaForCausalLM(cfg)
    base = {k: v for k, v in tensors.items() if k in model.state_dict()}
    missing, unexpected = model.load_state_dict(base, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied
    if missing or unexpected:
        raise SystemExit("fixture does not fit LlamaForCausalLM: %s %s" % (missing, unexpected))
    model.save_pretrained(out)
    return out, cfg


def permute_rows(b, heads):
    """llama.cpp's q/k row order for a [rows, r] matrix (its converter's rule, per head)."""
    rows = b.shape[0]
    return b.reshape(heads, 2, rows // heads // 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def check_peft(base_dir, case):
    export = os.path.join(case, "peft")
    cfg = json.load(open(os.path.join(export, "adapter_config.json")))
    if cfg.get("task_type") != "CAUSAL_LM" or cfg.get("peft_type") != "LORA":
        fail("%s: task_type/peft_type are not CAUSAL_LM/LORA" % export)
    tensors = load_file(os.path.join(export, "adapter_model.safetensors"))
    modules = set()
    for name in tensors:
        m = LORA_RE.match(name)
        if not m:
            fail("%s: exported tensor %s is not a decoder LoRA name" % (export, name))
            continue
        modules.add(m.group(3))
    if modules != set(cfg["target_modules"]):
        fail("%s: target_modules %s, tensors adapt %s" % (export, cfg["target_modules"], sorted(modules)))

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    peft = PeftModel.from_pretrained(model, export).eval()
    state = peft.state_dict()
    for name, t in tensors.items():
        key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        if key not in state:
            fail("%s: exported %s not loaded by PEFT" % (export, name))
        elif not torch.equal(state[key].float(), t.float()):
            fail("%s: %s loaded with other values" % (export, name))
    for key in state:
        if ".lora_" in key:
            plain = key.replace(".default", "")
            if plain not in tensors:
                fail("%s: PEFT created %s, which the export does not hold" % (export, key))

    ref = load_file(os.path.join(case, "medfl_logits.safetensors"))
    ids = ref["input_ids"].long()
    mask = ref["attention_mask"].long()
    with torch.no_grad():
        logits = peft(input_ids=ids, attention_mask=mask).logits
        with peft.disable_adapter():
            plain = peft(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    want = ref["logits"][real]
    scale = want.abs().max().item()
    err = (logits[real] - want).abs().max().item() / scale
    base_err = (plain[real] - want).abs().max().item() / scale
    print("%s: PEFT logits vs medfl: max rel err %.2e (base without adapter: %.2e)"
          % (os.path.basename(case), err, base_err))
    if not err <= TOL:
        fail("%s: PEFT logits differ from medfl's by %.3e relative (> %g)" % (case, err, TOL))
    if not base_err > 100 * TOL:
        fail("%s: the adapter hardly changes the logits (%.3e): the check is not meaningful" % (case, base_err))
    return cfg, tensors


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def check_gguf(case, cfg, tensors, hf):
    path = os.path.join(case, "adapter.gguf")
    r = GGUFReader(path)
    for key, want in (("general.type", "adapter"), ("adapter.type", "lora"),
                      ("general.architecture", "llama")):
        if field(r, key) != want:
            fail("%s: %s is %r, expected %r" % (path, key, field(r, key), want))
    alpha = field(r, "adapter.lora.alpha")
    if alpha is None or abs(alpha - cfg["lora_alpha"]) > 1e-6:
        fail("%s: adapter.lora.alpha %r, PEFT lora_alpha %r" % (path, alpha, cfg["lora_alpha"]))
    got = {t.name: t for t in r.tensors}
    if len(got) != len(tensors):
        fail("%s: %d tensors, the PEFT export has %d" % (path, len(got), len(tensors)))
    for name, t in tensors.items():
        layer, _, mod, ab = LORA_RE.match(name).groups()
        gname = "blk.%s.%s.weight.lora_%s" % (layer, GGUF_NAMES[mod], ab.lower())
        g = got.get(gname)
        if g is None:
            fail("%s: no tensor %s (for %s)" % (path, gname, name))
            continue
        if g.tensor_type.name != "F32":
            fail("%s: %s is %s, expected F32" % (path, gname, g.tensor_type.name))
        rows, cols = t.shape
        if list(int(x) for x in g.shape) != [cols, rows]:
            fail("%s: %s has ne %s, expected [%d, %d]" % (path, gname, list(g.shape), cols, rows))
            continue
        want = t.numpy().astype(np.float32)
        if ab == "B" and mod in ("q_proj", "k_proj"):
            heads = hf.num_attention_heads if mod == "q_proj" else hf.num_key_value_heads
            want = permute_rows(want, heads)
        data = np.asarray(g.data, dtype=np.float32).reshape(rows, cols)
        if not np.array_equal(data, want):
            fail("%s: %s values differ from the PEFT tensor%s" % (
                path, gname, " (q/k rows permuted)" if mod in ("q_proj", "k_proj") and ab == "B" else ""))
    print("%s: GGUF adapter: %d tensors, alpha %g, names/shapes/values as llama.cpp's converter"
          % (os.path.basename(case), len(got), alpha if alpha is not None else float("nan")))


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    fixture = sys.argv[1]
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, hf = base_folder(fixture, os.path.join(tmp, "base"))
        for case in sys.argv[2:]:
            cfg, tensors = check_peft(base_dir, case)
            check_gguf(case, cfg, tensors, hf)
    if failures:
        return 1
    print("OK: %d case(s)" % (len(sys.argv) - 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
