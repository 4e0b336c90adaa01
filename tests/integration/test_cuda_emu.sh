#!/usr/bin/env bash
# The CUDA backend's source, run on the host emulator (tests/cuda-emu) through
# test_backend_parity: every GPU parity case (kernels, cuBLAS operand mapping, two-level
# batches, the tiny model's gradients and 20 AdamW steps) must pass, on any machine.
# WHY: where no GPU exists (this project's CI) this is what keeps the kernels' index math,
# warp reductions and cuBLAS arguments checked on every change. Skips (77) without g++.
set -u
name=test_cuda_emu
command -v g++ >/dev/null 2>&1 || { echo "SKIP $name: g++ not found"; exit 77; }
# twice: real launch sizes, then every grid capped at 3 blocks (grid-stride loops)
total=0
for cap in "" 3; do
  out=$(MEDFL_EMU_MAX_BLOCKS=$cap bash tests/cuda-emu/run.sh 2>&1); rc=$?
  if [ $rc -ne 0 ]; then
    echo "$out" | tail -40
    echo "FAIL $name: test_backend_parity on the emulator (grid cap '${cap:-none}') exited $rc"
    exit 1
  fi
  # the GPU cases must have run, not been skipped
  echo "$out" | grep -q 'SKIPPED' && { echo "$out" | tail -20; echo "FAIL $name: cases skipped"; exit 1; }
  n=$(echo "$out" | grep -c '^\[       OK \]')
  [ "$n" -eq 8 ] || { echo "$out" | tail -20; echo "FAIL $name: $n of 8 cases passed"; exit 1; }
  total=$((total + $(echo "$out" | grep -c 'rel err')))
done
echo "PASS $name ($total comparisons, with and without a 3-block grid cap)"
