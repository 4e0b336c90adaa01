#!/usr/bin/env python3
"""PyTorch + PEFT baseline for `medfl-bench train`: the same MiniLM-sized encoder (6 layers,
hidden 384, 12 heads, ffn 1536, vocab 30522, random weights), LoRA r=8 alpha=16 on
query+value, a classification head on mean pooling, AdamW, batch 16 x 128 tokens, the same
thread count. Prints the same lines as the C bench so the two can be compared:
  train_examples_per_s: X ex/s
  train_peak_rss_mb: Y MB
WHY: the C engine's target is stated relative to this (>= 1.5x the examples/s at <= half
the peak RSS), measured on the same machine back to back. Dropout is 0 in both (the C
engine has none), so both do the same arithmetic.

Usage: python3 tests/ref/bench_torch_train.py [--threads 2] [--batch 16] [--seq 128]
                                              [--steps 10] [--warmup 2]
"""
import argparse
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--attn", default="sdpa", help="eager or sdpa attention")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                     num_attention_heads=12, intermediate_size=1536,
                     max_position_embeddings=512, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = args.attn
    model = BertModel(cfg, add_pooling_layer=False)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["query", "value"]))
    head = torch.nn.Linear(384, 2)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)
    total = args.warmup + args.steps + 1
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 2, max(0.0, (total - s - 1) / max(1, total - 2))))

    ids = torch.randint(0, 30522, (args.batch, args.seq))
    mask = torch.ones(args.batch, args.seq, dtype=torch.long)
    labels = torch.arange(args.batch) % 2

    def step():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (out * m).sum(1) / m.sum(1).clamp(min=1e-9)
        loss = torch.nn.functional.cross_entropy(head(pooled), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"train_device: torch {torch.__version__} cpu, {torch.get_num_threads()} threads, "
          f"attention {args.attn}")
    print(f"train_examples_per_s: {args.batch * args.steps / dt:.2f} ex/s")
    print(f"train_step_s: {dt / args.steps:.4f} s")
    print(f"train_peak_rss_mb: {rss:.1f} MB")
    print(f"train_cpu_s_per_example: {cpu / (args.batch * args.steps):.4f} s")


if __name__ == "__main__":
    main()
