#!/usr/bin/env bash
# Runs test_backend_parity with node/engine/backend_cuda.cu compiled for the host emulator
# (tests/cuda-emu/emu.h) instead of a GPU: every "GPU" case then runs the backend's own
# kernels and cuBLAS calls, unchanged except for the launch syntax, against the CPU backend.
# WHY: see emu.h; this is how the CUDA backend is reviewed where no GPU exists.
# Usage: bash tests/cuda-emu/run.sh [--asan]   (from the repository root; needs g++ >= 10)
#   MEDFL_EMU_SRC=file.cu runs a modified copy instead (e.g. to check that a planted bug is
#   caught). MEDFL_EMU_MAX_BLOCKS=N caps every grid at N blocks, so that the kernels'
#   grid-stride loops (which real sizes reach only beyond millions of rows) are exercised.
# Exit status: the test's (0 = every case passed).
set -eu
san=""
[ "${1:-}" = "--asan" ] && san="-fsanitize=address,undefined -fno-omit-frame-pointer"
tmp=$(mktemp -d /tmp/medfl-cuda-emu-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# the only change to the source: kernel<<<cfg>>>(args) -> EMU_LAUNCH(kernel, cfg)(args)
sed -E 's/([A-Za-z_][A-Za-z_0-9]*)<<<(.*)>>>\(/EMU_LAUNCH(\1, \2)(/' \
  "${MEDFL_EMU_SRC:-node/engine/backend_cuda.cu}" > "$tmp/backend_cuda_emu.cc"
if grep -q '<<<' "$tmp/backend_cuda_emu.cc"; then
  echo "cuda-emu: a kernel launch was not rewritten:"; grep -n '<<<' "$tmp/backend_cuda_emu.cc"; exit 1
fi
defs=""
[ -n "${MEDFL_EMU_MAX_BLOCKS:-}" ] && defs="-DS_MAX_BLOCKS=${MEDFL_EMU_MAX_BLOCKS}u"
g++ -std=c++20 -O1 -g $san $defs -I. -Itests/cuda-emu/include -c "$tmp/backend_cuda_emu.cc" \
  -o "$tmp/backend_cuda_emu.o"
pkgs="openblas hdf5-serial"
cc -std=c11 -O1 -g $san -D_GNU_SOURCE -DMEDFL_HAVE_CUDA=1 -pthread -I. $(pkg-config --cflags $pkgs) \
  -o "$tmp/test_backend_parity_emu" tests/unit/test_backend_parity.c node/engine/backend.c \
  node/engine/backend_cpu.c node/engine/model.c node/engine/family.c node/engine/llama.c node/engine/quant.c \
  common/error.c common/log.c "$tmp/backend_cuda_emu.o" \
  $(pkg-config --libs $pkgs) -lcmocka -lstdc++ -lm
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_stack_use_after_return=0} "$tmp/test_backend_parity_emu"
