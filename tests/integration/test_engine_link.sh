#!/usr/bin/env bash
# The aggregator is model-agnostic: bin/medfl-aggregator links neither OpenBLAS nor cuBLAS/cudart
# (ldd) and carries none of the engine (node/engine: backends, models, tokenizers; nm), while
# medfl-node and medfl-bench, which train, do link OpenBLAS (and cuBLAS + cudart in a CUDA
# build) -- the positive control that this test reads ldd correctly.
# WHY: the consortium's server needs no BLAS or GPU runtime; a Makefile change that puts the
# engine's libraries (or an engine object) back on the aggregator's link line would make every
# aggregator host install them again, unnoticed.
set -u
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
it_setup test_engine_link
command -v ldd >/dev/null 2>&1 || skip "ldd not found"
command -v nm >/dev/null 2>&1 || skip "nm not found"

agg="$MEDFL_BIN/medfl-aggregator"
[ -x "$agg" ] || die "$agg not built"
libs=$(ldd "$agg") || die "ldd medfl-aggregator failed"
echo "$libs" | grep -q 'not found' && die "medfl-aggregator has unresolved libraries: $libs"
for lib in libopenblas libblas libcublas libcudart; do
  echo "$libs" | grep -q "$lib" && die "medfl-aggregator is linked with $lib: $(echo "$libs" | grep "$lib")"
done
syms=$(nm "$agg") || die "nm medfl-aggregator failed (stripped?)"
for sym in backend_new backend_cpu_new backend_cuda_new model_new tokenizer_new llama_new; do
  echo "$syms" | grep -q " [TtUu] $sym\$" && die "medfl-aggregator carries the engine's $sym"
done
echo "$syms" | grep -q ' U cblas_' && die "medfl-aggregator calls BLAS: $(echo "$syms" | grep ' U cblas_' | head -3)"

# positive control: the programs that train link the engine's libraries
cuda=0
make --no-print-directory -s cuda-info 2>/dev/null | grep -q 'building the cuBLAS backend' && cuda=1
for prog in medfl-node medfl-bench; do
  libs=$(ldd "$MEDFL_BIN/$prog") || die "ldd $prog failed"
  echo "$libs" | grep -q 'libopenblas' || die "$prog is not linked with OpenBLAS: $libs"
  if [ "$cuda" -eq 1 ]; then
    echo "$libs" | grep -q 'libcublas\.so' || die "$prog is not linked with libcublas in a CUDA build"
  fi
  nm "$MEDFL_BIN/$prog" | grep -q ' T backend_new$' || die "$prog lacks the engine (backend_new)"
done
echo "PASS $name (aggregator: no BLAS, no CUDA, no engine symbols; node/bench: OpenBLAS$([ "$cuda" -eq 1 ] && echo ' + cuBLAS'))"
