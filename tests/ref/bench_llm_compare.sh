#!/usr/bin/env bash
# Decoder training, medfl vs PyTorch + PEFT on the same machine: runs
# `medfl-bench train-llm` and tests/ref/bench_torch_llm.py alternately (A B A B ..., ROUNDS
# rounds, default 2) with the same threads, batch 4 x 256, LoRA r 8 on q_proj,v_proj, and
# prints each figure's median and the ratios the targets are stated in:
#   tokens/s ratio (target >= 1.5), peak RSS ratio (target <= 0.35), dp_step_overhead (<= 1.10).
# Usage: tests/ref/bench_llm_compare.sh [--random] [--threads N] [--steps N]
#   env ROUNDS=N, MEDFL_BIN=bin.  The model: as medfl-bench train-llm finds it (the real
#   SmolLM2 Q4_1 GGUF via $MEDFL_SMOLLM2_GGUF or deploy/fetch-model.sh's cache) else random.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${MEDFL_BIN:-bin}
ROUNDS=${ROUNDS:-2}
C_ARGS=() PY_ARGS=()
while [ $# -gt 0 ]; do
  case $1 in
    --random) C_ARGS+=(--random); PY_ARGS+=(--random) ;;
    --threads|--steps) C_ARGS+=("$1" "$2"); PY_ARGS+=("$1" "$2"); shift ;;
    *) echo "usage: $0 [--random] [--threads N] [--steps N]" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "${MEDFL_SMOLLM2_GGUF:-}" ] && P=$(deploy/fetch-model.sh smollm2 --find-only 2>/dev/null); then
  export MEDFL_SMOLLM2_GGUF=$P
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for i in $(seq "$ROUNDS"); do
  "$BIN/medfl-bench" train-llm "${C_ARGS[@]}" | tee -a "$OUT/c"
  python3 tests/ref/bench_torch_llm.py "${PY_ARGS[@]}" 2>/dev/null | tee -a "$OUT/py"
done
python3 - "$OUT/c" "$OUT/py" <<'PY'
import statistics, sys
def figs(path):
    d = {}
    for line in open(path):
        name, _, rest = line.partition(": ")
        try:
            v = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        d.setdefault(name, []).append(v)
    return {k: statistics.median(v) for k, v in d.items()}
c, t = figs(sys.argv[1]), figs(sys.argv[2])
print("=== medians")
for k in ("llm_train_tokens_per_s", "llm_train_peak_rss_mb", "dp_step_overhead"):
    print(f"{k}: {c[k]:.3f}")
for k in ("torch_llm_train_tokens_per_s", "torch_llm_train_peak_rss_mb",
          "torch_llm_train_window_peak_rss_mb"):
    if k in t:
        print(f"{k}: {t[k]:.3f}")
tok = c["llm_train_tokens_per_s"] / t["torch_llm_train_tokens_per_s"]
rss = c["llm_train_peak_rss_mb"] / t["torch_llm_train_peak_rss_mb"]
print(f"llm_tokens_per_s_ratio: {tok:.2f} x (target >= 1.5: {'met' if tok >= 1.5 else 'NOT met'})")
print(f"llm_peak_rss_ratio: {rss:.2f} x (target <= 0.35: {'met' if rss <= 0.35 else 'NOT met'})")
if "torch_llm_train_window_peak_rss_mb" in t:
    print(f"llm_peak_rss_ratio_training_window: "
          f"{c['llm_train_peak_rss_mb'] / t['torch_llm_train_window_peak_rss_mb']:.2f} x")
d = c["dp_step_overhead"]
print(f"dp_step_overhead: {d:.3f} x (target <= 1.10: {'met' if d <= 1.10 else 'NOT met'})")
PY
