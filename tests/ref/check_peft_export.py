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
"""Checks that `medfl-aggregator export VERSION --peft DIR` writes an adapter Hugging Face PEFT
loads as medfl meant it, using PEFT's own loader rather than our reader:
  - PeftModel.from_pretrained(BertForSequenceClassification(tiny config), DIR) succeeds;
  - every tensor of the version's HDF5 file (/tensors/<medfl name>) equals the parameter
    PEFT placed in the model (LoRA A/B of the right layer and module, classifier weights in
    modules_to_save), exactly;
  - the model has no LoRA parameter the version does not define (nothing left at init);
  - with --same-as ADAPTER_DIR (the adapter the version was seeded from), both adapters give
    identical logits on a fixed batch.
Usage: check_peft_export.py EXPORT_DIR VERSION_H5 [--same-as DIR] [--base-config DIR]
Exits 0 on success, 1 on a mismatch, 77 when torch/transformers/peft/h5py are absent."""
import sys


def main():
    try:
        import h5py
        import numpy as np
        import torch
        from peft import PeftModel
        from transformers import BertConfig, BertForSequenceClassification
    except Exception as e:  # pragma: no cover - depends on the machine
        print("SKIP check_peft_export: %s" % e)
        return 77
    args = sys.argv[1:]
    same_as, base_cfg = None, "tests/ref/fixtures/tiny_bert"
    if "--same-as" in args:
        i = args.index("--same-as"); same_as = args[i + 1]; del args[i:i + 2]
    if "--base-config" in args:
        i = args.index("--base-config"); base_cfg = args[i + 1]; del args[i:i + 2]
    export_dir, h5_path = args

    with h5py.File(h5_path, "r") as f:
        tensors = {k: np.array(v) for k, v in f["tensors"].items()}
    num_labels = tensors["classifier.weight"].shape[0]
    cfg = BertConfig.from_pretrained(base_cfg)
    cfg.num_labels = num_labels

    def load(adapter_dir):
        torch.manual_seed(0)
        base = BertForSequenceClassification(cfg).eval()
        return PeftModel.from_pretrained(base, adapter_dir).eval()

    model = load(export_dir)
    params = dict(model.named_parameters())
    bad = 0
    for name, value in tensors.items():
        if name.startswith("classifier."):
            pname = "base_model.model.classifier.modules_to_save.default." + name[len("classifier."):]
        else:
            rest = name[len("base_model.model.encoder."):]
            pname = "base_model.model.bert.encoder." + rest.replace(".weight", ".default.weight")
        if pname not in params:
            print("FAIL: %s -> %s not in the PEFT model" % (name, pname)); bad += 1; continue
        got = params[pname].detach().cpu().numpy()
        if got.shape != value.shape or not np.array_equal(got, value):
            print("FAIL: %s differs from PEFT's %s" % (name, pname)); bad += 1
    lora = [n for n in params if ".lora_" in n]
    expected = sum(1 for n in tensors if ".lora_" in n)
    if len(lora) != expected:
        print("FAIL: PEFT model has %d LoRA parameters, the version %d" % (len(lora), expected)); bad += 1
    if same_as:
        ref = load(same_as)
        ids = torch.tensor([[2, 10, 20, 30, 40, 3], [2, 50, 60, 3, 0, 0]])
        mask = (ids != 0).long()
        with torch.no_grad():
            a = model(input_ids=ids, attention_mask=mask).logits
            b = ref(input_ids=ids, attention_mask=mask).logits
        if not torch.equal(a, b):
            print("FAIL: logits differ from the seeding adapter's: %s vs %s" % (a.tolist(), b.tolist())); bad += 1
    if bad:
        return 1
    print("check_peft_export: %d tensors match, %d LoRA parameters, logits %s" %
          (len(tensors), len(lora), "match" if same_as else "not compared"))
    return 0


if __name__ == "__main__":
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sys.exit(max(check(sys.argv[1], d) for d in sys.argv[2:]))
    sys.exit(main())
