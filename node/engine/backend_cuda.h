/* CUDA backend (node/engine/backend_cuda.cu): cuBLAS for every matrix product, small CUDA kernels
 * for the rest of the backend table (node/engine/backend.h).
 * WHY a separate header: the .cu is compiled by nvcc only when the CUDA toolkit is found
 * (Makefile, MEDFL_HAVE_CUDA); the C side (backend.c, tests) declares what it calls from it
 * here, with C linkage, and never includes a CUDA header itself. Nothing here exists in a
 * build without CUDA (make USE_CUDA=0): callers guard with #ifdef MEDFL_HAVE_CUDA. */
#ifndef MEDFL_BACKEND_CUDA_H
#define MEDFL_BACKEND_CUDA_H

#include <stdbool.h>
#include <stddef.h>

#include "node/engine/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of CUDA devices visible to this process (0 when none); on 0, why[] (may be NULL)
 * holds the CUDA runtime's reason ("no CUDA-capable device is detected", a driver/runtime
 * mismatch, ...). Never fails otherwise. */
int backend_cuda_device_count(char *why, size_t why_size);

/* Backend on the current CUDA device (device 0 unless CUDA_VISIBLE_DEVICES says otherwise).
 * threads is unused (kept for backend_new's signature). TF32 tensor-core sgemm is off unless
 * the environment sets MEDFL_CUDA_TF32=1 (or backend_cuda_set_tf32 is called).
 * NULL with a MEDFL_EDEVICE error when no GPU can be used. */
backend_t *backend_cuda_new(int threads);

/* Switches cuBLAS between full FP32 (default: parity with the CPU within 1e-3) and TF32
 * tensor-core math (faster on Ampere and later, ~1e-3 relative error per product).
 * Returns -1 with a medfl error on a non-CUDA backend or a cuBLAS failure. */
int backend_cuda_set_tf32(backend_t *b, bool on);

#ifdef __cplusplus
}
#endif

#endif
