#!/usr/bin/env python3
"""Checks a head-only PEFT export (adapter_peft_write with no LoRA tensors, SEQ_CLS) with
Hugging Face PEFT itself:
  1. PeftModel.from_pretrained(BertForSequenceClassification(BASE), EXPORT_DIR) loads it;
  2. its LoRA is the zero, no-op one medfl writes because PEFT refuses a LoRA config that adapts
     nothing: exactly one module (layer 0's query), A and B all zero;
  3. its logits on a fixed batch equal those of the base model with the exported classifier
     weights copied in by hand: the export is exactly "base encoder + this head".
usage: check_peft_head_export.py BASE_MODEL_DIR EXPORT_DIR
Exit status 0 on success, 1 on a mismatch, 77 when torch/peft are not installed."""
import copy
import sys
import warnings

warnings.filterwarnings("ignore")

try:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging
except ImportError as e:  # optional dependency: skip
    print("skip: %s" % e)
    sys.exit(77)


def main():
    base_dir, export = sys.argv[1], sys.argv[2]
    hf_logging.set_verbosity_error()
    tensors = load_file(export + "/adapter_model.safetensors")
    w = tensors["base_model.model.classifier.weight"]
    b = tensors["base_model.model.classifier.bias"]
    torch.manual_seed(0)
    base = BertForSequenceClassification.from_pretrained(base_dir, num_labels=w.shape[0]).eval()
    ref = copy.deepcopy(base)
    with torch.no_grad():
        ref.classifier.weight.copy_(w)
        ref.classifier.bias.copy_(b)
    peft = PeftModel.from_pretrained(base, export).eval()
    bad = 0
    lora = {n: p for n, p in peft.named_parameters() if ".lora_" in n}
    if len(lora) != 2 or any("layer.0.attention.self.query" not in n for n in lora):
        print("FAIL: expected one zero LoRA module on layer 0's query, got %s" % sorted(lora))
        bad += 1
    for n, p in lora.items():
        if torch.count_nonzero(p).item() != 0:
            print("FAIL: the no-op LoRA tensor %s is not zero" % n)
            bad += 1
    ids = torch.randint(5, base.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        got = peft(input_ids=ids, attention_mask=mask).logits
        want = ref(input_ids=ids, attention_mask=mask).logits
    err = (got - want).abs().max().item()
    if err > 1e-6:
        print("FAIL: logits differ from base + exported head by %.3g" % err)
        bad += 1
    print("check_peft_head_export: %s (%d labels, max logit difference %.2g)"
          % ("ok" if not bad else "FAILED", w.shape[0], err))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
