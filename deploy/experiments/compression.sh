#!/usr/bin/env bash
# Accuracy cost of update compression (issue 6): the same 3-hospital federation as `make demo`
# run once per compression setting, each reporting the federated model's macro-F1 on the
# pooled test set and the bytes the nodes sent over the whole run:
#   secure aggregation on:  none | quantize b = 6 (8-bit ring elements for 3 nodes) |
#                           random-k 25 % with b = 8
#   secure aggregation off: none | top-k 4.4 % with 4-bit values (Rice-coded index gaps);
#                           off:topk:B sets the bits per value (2..8), TOPK_FRAC the k
# Every setting trains with error feedback (docs/compression.md). DP is off by default so
# that the differences are the compression's and not DP noise (DP-SGD's run-to-run spread at
# the demo's epsilon is about 2 points of macro-F1, docs/benchmarks.md).
#
# Data: synthetic notes (default), or with DATA=mtsamples the 10 most frequent MTSamples
# specialties split over 3 hospitals with label skew (needs ../shared/data/mtsamples, never
# committed; exits 77 without it).
# Usage: deploy/experiments/compression.sh [synth|mtsamples]
# Env: ROUNDS (60), LOCAL_STEPS (5), LR (1e-2, AdamW), TARGETS (none), DP (off), SEQ (48 synthetic,
#      128 MTSamples), SETTINGS (all five: "on:none on:quantize:6 on:randk:8 off:none off:topk"),
#      SEED (1: the hospitals' training seed: head init, validation split, minibatch order;
#      for paired comparisons over several seeds, the records and pooled test set stay fixed),
#      TOPK_FRAC (0.044: k of plain top-k as a fraction of the parameters), ALPHA (0.5: label
#      skew of the synthetic sites).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
data="${1:-synth}"
export DEMO_ROUNDS="${ROUNDS:-60}" DEMO_LOCAL_STEPS="${LOCAL_STEPS:-5}" DEMO_LR="${LR:-1e-2}"
export DEMO_TARGETS="${TARGETS:-none}" DEMO_DP="${DP:-off}" DEMO_BASELINES=off DEMO_SEED="${SEED:-1}"
# The synthetic sites' label skew of every figure in docs/benchmarks.md "Compression"
# (the demo itself moved to 1.0 later).
export DEMO_ALPHA="${ALPHA:-0.5}"
settings="${SETTINGS:-on:none on:quantize:6 on:randk:8 off:none off:topk}"
if [ "$data" = mtsamples ]; then
  csv="${MTSAMPLES_CSV:-$root/../shared/data/mtsamples/mtsamples.csv.gz}"
  [ -f "$csv" ] || csv=/work/shared/data/mtsamples/mtsamples.csv.gz
  [ -f "$csv" ] || { echo "skip: mtsamples.csv.gz not found (../shared/data/mtsamples)"; exit 77; }
  sites="$(mktemp -d /tmp/medfl-comp-mts-XXXXXX)"
  trap 'rm -rf "$sites"' EXIT
  python3 "$root/tests/ref/mtsamples_prep.py" "$csv" "$sites/all.jsonl" --top 10 >"$sites/labels.list"
  # Three hospitals with label skew (Dirichlet 0.5 per label, seeded), 15 % pooled test.
  python3 - "$sites" <<'PY'
import json, random, sys, os
d = sys.argv[1]
rows = [json.loads(l) for l in open(f"{d}/all.jsonl")]
labels = sorted({r["label"] for r in rows})
rng = random.Random(42)
share = {}
for lab in labels:
    g = [rng.gammavariate(0.5, 1) for _ in range(3)]
    share[lab] = [x / sum(g) for x in g]
rng.shuffle(rows)
cut = int(0.15 * len(rows))
with open(f"{d}/pooled-test.jsonl", "w") as f:
    for r in rows[:cut]: f.write(json.dumps(r) + "\n")
out = [open(f"{d}/site-{i}/train.jsonl", "w") for i in (1, 2, 3) if os.makedirs(f"{d}/site-{i}", exist_ok=True) is None]
for r in rows[cut:]:
    out[rng.choices(range(3), weights=share[r["label"]])[0]].write(json.dumps(r) + "\n")
open(f"{d}/labels.txt", "w").write(",".join(labels))
PY
  export DEMO_SITES="$sites" DEMO_SEQ="${SEQ:-128}"
else
  # 150 test notes per site (450 pooled), as in the figures of docs/benchmarks.md
  export DEMO_SEQ="${SEQ:-48}" DEMO_TEST_PER_SITE="${TEST_PER_SITE:-150}"
fi
echo "# compression experiment: data $data, $DEMO_ROUNDS rounds x $DEMO_LOCAL_STEPS local steps, lr $DEMO_LR, LoRA targets $DEMO_TARGETS, DP $DEMO_DP, seed $DEMO_SEED"
printf '%-22s %10s %10s %16s\n' setting accuracy macro_f1 bytes_sent
for s in $settings; do
  IFS=: read -r secure scheme bits <<<"$s"
  kf=0.25
  [ "$scheme" = topk ] && kf="${TOPK_FRAC:-0.044}"
  vb=4
  [ "$scheme" = topk ] && vb="${bits:-4}"
  out="$(DEMO_SECURE="$secure" DEMO_COMPRESSION="$scheme" DEMO_BITS="${bits:-8}" DEMO_VALUE_BITS="$vb" DEMO_K_FRAC="$kf" \
    bash "$root/deploy/demo.sh" 2>&1)" || { echo "$out" | tail -5 >&2; exit 1; }
  f1="$(echo "$out" | awk '$1 == "federated_macro_f1:" { print $2 }')"
  acc="$(echo "$out" | awk '$1 == "federated_accuracy:" { print $2 }')"
  up="$(echo "$out" | awk '$1 == "bytes_sent_by_nodes:" { print $2 }')"
  printf '%-22s %10s %10s %16s\n' "secure=$secure:$scheme${bits:+:$bits}" "$acc" "$f1" "$up"
done
