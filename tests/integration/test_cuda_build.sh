#!/usr/bin/env bash
# The CUDA backend is built and linked whenever the toolkit is found: make announces it, the
# nvcc rule compiles backend_cuda.cu from scratch (into a temporary build folder, all
# architectures, warnings as errors), the programs under test carry libcublas and libcudart
# (ldd) and the backend's entry point, and device selection behaves on this machine: with no
# GPU, `--device auto` trains on the CPU and says so once, `--device cuda` exits non-zero
# naming the cause; with a GPU, `--device cuda` trains on it.
# WHY: a build that silently drops the GPU backend (nvcc missing from a CI image, the linker
# discarding cuBLAS) would leave GPU hospitals on the CPU without anyone noticing.
# Skips (77) when nvcc is absent or the build was made with USE_CUDA=0.
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_cuda_build

nvcc=$(command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
[ -n "$nvcc" ] || skip "nvcc not found (CUDA toolkit absent): CPU-only build"
# (a parent make's flags, e.g. USE_CUDA=0, reach this make through MAKEFLAGS)
info=$(make --no-print-directory -s cuda-info 2>/dev/null | grep '^medfl:') \
  || die "make cuda-info printed no 'medfl:' line"
case "$info" in
  *"building the cuBLAS backend"*) ;;
  *"USE_CUDA=0"*) skip "built with USE_CUDA=0 ($info)" ;;
  *) die "nvcc at $nvcc but make says: $info" ;;
esac


# the nvcc rule from a clean folder
out=$(make --no-print-directory BUILD="$T/build" "$T/build/node/engine/backend_cuda.cu.o" 2>&1) \
  || die "nvcc rule failed: $out"
nm "$T/build/node/engine/backend_cuda.cu.o" | grep -q ' T backend_cuda_new$' \
  || die "backend_cuda.cu.o does not export backend_cuda_new with C linkage"
# the embedded fat binary names its targets (cuobjdump is not in every toolkit install)
for sm in sm_75 sm_80 sm_90 compute_90; do
  grep -aq "$sm" "$T/build/node/engine/backend_cuda.cu.o" || die "no $sm code in backend_cuda.cu.o"
done

# the programs under test
for prog in medfl-node medfl-bench; do
  libs=$(ldd "$MEDFL_BIN/$prog") || die "ldd $prog failed"
  echo "$libs" | grep -q 'libcublas\.so' || die "$prog is not linked with libcublas: $libs"
  echo "$libs" | grep -q 'libcudart\.so' || die "$prog is not linked with libcudart: $libs"
  echo "$libs" | grep -q 'not found' && die "$prog has unresolved libraries: $libs"
done
nm "$MEDFL_BIN/medfl-bench" | grep -q ' T backend_cuda_new$' || die "medfl-bench lacks the CUDA backend"

# device selection on this machine
gpus=0
command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
small=(--steps 1 --warmup 0 --batch 2 --seq 8)
if [ "$gpus" -eq 0 ]; then
  "$MEDFL_BIN/medfl-bench" train --device auto "${small[@]}" >"$T/auto.out" 2>"$T/auto.err" \
    || die "--device auto without a GPU failed: $(cat "$T/auto.err")"
  grep -q '^train_device: cpu' "$T/auto.out" || die "--device auto: $(cat "$T/auto.out")"
  n=$(grep -c 'no GPU found: training on the CPU' "$T/auto.err")
  [ "$n" -eq 1 ] || die "--device auto logged the CPU fallback $n times: $(cat "$T/auto.err")"
  if "$MEDFL_BIN/medfl-bench" train --device cuda "${small[@]}" >"$T/cuda.out" 2>"$T/cuda.err"; then
    die "--device cuda without a GPU succeeded: $(cat "$T/cuda.out")"
  fi
  grep -q 'device = cuda but no CUDA GPU is available' "$T/cuda.err" \
    || die "--device cuda without a GPU: unclear message: $(cat "$T/cuda.err")"
  grep -q '^train_' "$T/cuda.out" && die "--device cuda without a GPU printed results"
else
  "$MEDFL_BIN/medfl-bench" train --device cuda "${small[@]}" >"$T/cuda.out" 2>"$T/cuda.err" \
    || die "--device cuda with $gpus GPU(s) failed: $(cat "$T/cuda.err")"
  grep -q '^train_device: cuda' "$T/cuda.out" || die "--device cuda: $(cat "$T/cuda.out")"
fi
"$MEDFL_BIN/medfl-bench" train --device tpu "${small[@]}" >/dev/null 2>"$T/bad.err" \
  && die "--device tpu accepted"
grep -q "expected auto, cpu or cuda" "$T/bad.err" || die "--device tpu: $(cat "$T/bad.err")"
echo "PASS $name ($gpus GPU(s); $(echo "$info" | sed 's/^medfl: //'))"
