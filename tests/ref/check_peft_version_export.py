#!/usr/bin/env python3
"""Checks that `medfl-aggregator export VERSION --peft DIR` writes an adapter Hugging Face PEFT
loads as medfl meant it, using PEFT's own loader rather than our reader:
  - PeftModel.from_pretrained(BertForSequenceClassification(tiny config), DIR) succeeds;
  - every tensor of the version's HDF5 file (/tensors/<medfl name>) equals the parameter
    PEFT placed in the model (LoRA A/B of the right layer and module, classifier weights in
    modules_to_save), exactly;
  - the model has no LoRA parameter the version does not define (nothing left at init);
  - with --same-as ADAPTER_DIR (the adapter the version was seeded from), both adapters give
    identical logits on a fixed batch;
  - when the export has label_config.json (labels and pooling recorded in the version), the
    labels applied as its README says (id2label with int ids) name the model's classes in
    order, and the README's recipe (encoder output of the PEFT model, pooled as
    medfl_pooling says, then the PEFT classifier) equals pooling + the version's own
    classifier tensors; the README names the pooling.
Usage: check_peft_version_export.py EXPORT_DIR VERSION_H5 [--same-as DIR] [--base-config DIR]
Exits 0 on success, 1 on a mismatch, 77 when torch/transformers/peft/h5py are absent."""
import json
import os
import sys


def main():
    try:
        import h5py
        import numpy as np
        import torch
        from peft import PeftModel
        from transformers import BertConfig, BertForSequenceClassification
    except Exception as e:  # pragma: no cover - depends on the machine
        print("SKIP check_peft_version_export: %s" % e)
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
    label_path = os.path.join(export_dir, "label_config.json")
    lc = json.load(open(label_path)) if os.path.exists(label_path) else {}
    if "id2label" in lc:
        # as README.md says: JSON keys are strings, transformers' id2label wants ints
        id2label = {int(i): name for i, name in lc["id2label"].items()}
        cfg = BertConfig.from_pretrained(base_cfg, num_labels=len(id2label), id2label=id2label,
                                         label2id=lc["label2id"])
    else:
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
    if "id2label" in lc:
        names = [lc["id2label"][str(i)] for i in range(len(lc["id2label"]))]
        if cfg.num_labels != num_labels or [cfg.id2label[i] for i in range(num_labels)] != names \
                or any(cfg.label2id[n] != i for i, n in enumerate(names)):
            print("FAIL: label_config.json applied gives id2label %s for a %d-row classifier"
                  % (cfg.id2label, num_labels)); bad += 1
    pooling = lc.get("medfl_pooling")
    if pooling:
        readme = open(os.path.join(export_dir, "README.md")).read()
        if "**%s**" % pooling not in readme:
            print("FAIL: README.md does not name the pooling %s" % pooling); bad += 1
        ids = torch.tensor([[2, 10, 20, 30, 40, 3], [2, 50, 60, 3, 0, 0]])
        mask = (ids != 0).long()
        with torch.no_grad():  # the README's recipe
            hidden = model.base_model.model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            got = model.base_model.model.classifier(pooled)
            want = pooled @ torch.from_numpy(tensors["classifier.weight"]).T \
                + torch.from_numpy(tensors["classifier.bias"])
        if not torch.allclose(got, want, atol=1e-6):
            print("FAIL: the README recipe's logits %s differ from %s pooling + the version's "
                  "classifier %s" % (got.tolist(), pooling, want.tolist())); bad += 1
    if bad:
        return 1
    print("check_peft_version_export: %d tensors match, %d LoRA parameters, logits %s" %
          (len(tensors), len(lora), "match" if same_as else "not compared"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
