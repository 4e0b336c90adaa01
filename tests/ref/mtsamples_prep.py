#!/usr/bin/env python3
"""Converts MTSamples (../shared/data/mtsamples/mtsamples.csv.gz, never committed) into the
node's JSONL records for the training experiments of docs/benchmarks.md: transcription ->
text, medical_specialty -> label, only the K most frequent specialties (ties by name), and
records without a transcription dropped. The held-out split is NOT made here: the trainer
cuts train / validation / test by seed from this one file (train.seed, train.valid_fraction,
train.test_fraction), so the C side alone decides what is held out.

Prints the label list (most frequent first) on stdout so a script can put it in node.conf.

usage: mtsamples_prep.py CSV_GZ OUT_JSONL [--top K] [--max-records N --seed S]
  --max-records subsamples (stratified-free, uniformly by seed) to keep runs short."""
import argparse
import collections
import csv
import gzip
import json
import random
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv_gz")
    ap.add_argument("out_jsonl")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--max-records", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    csv.field_size_limit(1 << 24)
    with gzip.open(a.csv_gz, "rt", encoding="utf-8", newline="") as f:
        rows = [(r["transcription"].strip(), r["medical_specialty"].strip())
                for r in csv.DictReader(f)]
    rows = [(t, l) for t, l in rows if t and l]
    counts = collections.Counter(l for _, l in rows)
    top = [l for l, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[: a.top]]
    keep = set(top)
    rows = [(t, l) for t, l in rows if l in keep]
    if a.max_records and len(rows) > a.max_records:
        random.Random(a.seed).shuffle(rows)
        rows = rows[: a.max_records]
    with open(a.out_jsonl, "w", encoding="utf-8") as out:
        for t, l in rows:
            out.write(json.dumps({"text": t, "label": l}, ensure_ascii=False) + "\n")
    print(",".join(top))
    print(f"records: {len(rows)}", file=sys.stderr)


if __name__ == "__main__":
    main()
