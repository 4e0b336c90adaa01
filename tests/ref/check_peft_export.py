#!/usr/bin/env python3
"""Checks a PEFT folder exported by medfl (adapter_export_peft) with Hugging Face PEFT itself:
usage: check_peft_export.py BASE_MODEL_DIR EXPORT_DIR...
  1. PeftModel.from_pretrained(BertModel(BASE), EXPORT_DIR) loads it without missing or
     unexpected LoRA keys, and every loaded lora_A/lora_B equals the exported tensor;
  2. the PEFT model's hidden states equal those of the base model with the LoRA deltas merged
     by hand (W + alpha/r * B @ A), so r, lora_alpha, target_modules and the A/B orientation
     mean to PEFT what they mean to medfl;
  3. medfl_head.safetensors / medfl_head.json are consistent with each other.
Exit status 0 on success, 1 on a mismatch, 77 when torch/peft are not installed.
test_adapter.c runs it when python3 with peft is available."""
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")

try:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import BertModel
except ImportError as e:  # optional dependency: skip
    print("skip: %s" % e)
    sys.exit(77)


def check(base, export):
    cfg = json.load(open(os.path.join(export, "adapter_config.json")))
    tensors = load_file(os.path.join(export, "adapter_model.safetensors"))
    model = BertModel.from_pretrained(base).eval()
    ref = BertModel.from_pretrained(base).eval()
    peft = PeftModel.from_pretrained(model, export).eval()
    state = peft.state_dict()
    for name, t in tensors.items():
        key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        if key not in state:
            print("FAIL: exported %s not loaded by PEFT (no %s)" % (name, key))
            return 1
        if not torch.equal(state[key], t):
            print("FAIL: %s differs after loading" % name)
            return 1
    n_lora_modules = sum(1 for k in state if ".lora_A.default.weight" in k)
    if 2 * n_lora_modules != len(tensors):
        print("FAIL: PEFT created %d LoRA modules, export has %d tensors"
              % (n_lora_modules, len(tensors)))
        return 1
    scale = cfg["lora_alpha"] / cfg["r"]
    with torch.no_grad():
        params = dict(ref.named_parameters())
        for name, a in tensors.items():
            if not name.endswith(".lora_A.weight"):
                continue
            module = name[len("base_model.model."):-len(".lora_A.weight")]
            b = tensors[name.replace("lora_A", "lora_B")]
            params[module + ".weight"].add_(scale * (b @ a))
        ids = torch.tensor([[2, 10, 20, 30, 40, 3, 0, 0], [2, 50, 60, 3, 0, 0, 0, 0]])
        mask = (ids != 0).long()
        got = peft(input_ids=ids, attention_mask=mask).last_hidden_state
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        err = (got - want).abs().max().item()
    if err > 1e-5:
        print("FAIL: PEFT output differs from the hand-merged model by %g" % err)
        return 1
    head_path = os.path.join(export, "medfl_head.safetensors")
    if os.path.exists(head_path):
        head = load_file(head_path)
        meta = json.load(open(os.path.join(export, "medfl_head.json")))
        if head["classifier.weight"].shape[0] != len(meta["labels"]):
            print("FAIL: head rows != labels")
            return 1
    print("ok: %s: %d LoRA tensors loaded by PEFT, max output difference %.3g" % (export, len(tensors), err))
    return 0


if __name__ == "__main__":
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sys.exit(max(check(sys.argv[1], d) for d in sys.argv[2:]))
