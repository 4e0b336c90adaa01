/* CUDA backend: cuBLAS for every matrix product (plain, strided-batched, and the two-level
 * batches of attention), small CUDA kernels for the row-wise and elementwise parts of the
 * encoder (embeddings, LayerNorm forward/backward with warp reductions, GELU with erf,
 * masked softmax, pooling, cross-entropy), AdamW, and the DP-SGD clipping helpers
 * (per-example row norms accumulated in double, weighted row sums).
 *
 * WHY: hospitals with a GPU train on it; the model (node/engine/model.c) is written once against
 * the backend table, so this file implements exactly the CPU backend's semantics
 * (backend_cpu.c is the reference, including the same accumulation types: double for
 * LayerNorm statistics, cross-entropy and row norms) so that CPU and GPU nodes compute the
 * same update within 1e-3 and exchange the same messages. TF32 is off by default for that
 * reason (MEDFL_CUDA_TF32=1 turns it on).
 *
 * Execution model: one CUDA stream per backend, one cuBLAS handle bound to it; every kernel
 * and copy is queued on that stream, download synchronises it. Table entries return void, so
 * the first CUDA or cuBLAS failure is recorded here (call and status name) and later entries
 * become no-ops; backend_status() (the status entry) reports it as a MEDFL_EDEVICE error.
 * Nothing here exits or aborts.
 *
 * Layout: row-major like PyTorch (backend.h). cuBLAS is column-major, so a row-major
 * C[M,N] = op(A) op(B) is computed as the column-major C^T[N,M] = op(B)^T op(A)^T: operands
 * swapped, M and N swapped, the same leading dimensions and transpose flags. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "node/engine/backend.h"
#include "node/engine/backend_cuda.h"
#include "common/error.h"
}

#define S_THREADS 256          /* threads per block of every kernel */
#define S_ROWS_PER_BLOCK (S_THREADS / 32) /* warp-per-row kernels */
#ifndef S_MAX_BLOCKS /* the host emulator lowers it to exercise the grid-stride loops */
#define S_MAX_BLOCKS (1u << 20) /* grid-stride loops cover the rest */
#endif

typedef struct {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    bool tf32;
    int failed;          /* first error recorded: later entries do nothing */
    char msg[320];       /* that error, re-raised by status */
    void *scratch;       /* small device buffer: clipping weights, row-norm accumulators */
    size_t scratch_cap;
    char name[320];
    cudaDeviceProp prop;
} s_cuda_t;

static s_cuda_t *s_impl(backend_t *b)
{
    return (s_cuda_t *)b->impl;
}

/* ------------------------------------------------------------------ errors */

static void s_fail(backend_t *b, const char *call, const char *status, const char *detail)
{
    s_cuda_t *c = s_impl(b);
    if (c->failed)
        return;
    c->failed = 1;
    snprintf(c->msg, sizeof c->msg, "cuda backend: %s failed: %s (%s)", call, status, detail);
    medfl_error_set(MEDFL_EDEVICE, "%s", c->msg);
}

static void s_check_cuda(backend_t *b, cudaError_t e, const char *call)
{
    if (e != cudaSuccess)
        s_fail(b, call, cudaGetErrorName(e), cudaGetErrorString(e));
}

static void s_check_blas(backend_t *b, cublasStatus_t st, const char *call)
{
    if (st != CUBLAS_STATUS_SUCCESS)
        s_fail(b, call, cublasGetStatusName(st), cublasGetStatusString(st));
}

#define S_CU(b, call) s_check_cuda((b), (call), #call)
#define S_CB(b, call) s_check_blas((b), (call), #call)
/* After a kernel launch: bad launch configurations are reported here, faults at the next
 * synchronisation. */
#define S_LAUNCHED(b, name) s_check_cuda((b), cudaGetLastError(), name)
#define S_GUARD(b)                                                                           \
    do {                                                                                     \
        if (s_impl(b)->failed)                                                               \
            return;                                                                          \
    } while (0)

/* ------------------------------------------------------------------ profiling */

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Kernels are asynchronous: with profiling on, each entry waits for its own work so that
 * the time lands in the right class (profiling slows the step down; it is for --profile). */
#define S_T0 double s_t0 = b->profile ? s_now() : 0.0
#define S_T1(field)                                                                          \
    do {                                                                                     \
        if (b->profile) {                                                                    \
            S_CU(b, cudaStreamSynchronize(s_impl(b)->stream));                               \
            b->prof.field += s_now() - s_t0;                                                 \
        }                                                                                    \
    } while (0)

static unsigned s_blocks(size_t n, unsigned per_block)
{
    size_t g = (n + per_block - 1) / per_block;
    if (g > S_MAX_BLOCKS)
        g = S_MAX_BLOCKS;
    return g == 0 ? 1u : (unsigned)g;
}

/* ------------------------------------------------------------------ device helpers */

__device__ __forceinline__ double s_warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float s_warp_sum_f(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float s_warp_max_f(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Global thread index and grid stride as size_t (tensors may exceed 2^31 elements). */
__device__ __forceinline__ size_t s_gid(void)
{
    return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ size_t s_gstride(void)
{
    return (size_t)gridDim.x * blockDim.x;
}

/* Warp-per-row kernels: first row of this warp and the stride over rows (the grid is capped
 * at S_MAX_BLOCKS); blockDim.x is a multiple of 32, so every lane of a warp walks the same
 * rows and whole warps leave the loop together (full-mask shuffles stay convergent). */
__device__ __forceinline__ size_t s_warp_row(void)
{
    return ((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
}

__device__ __forceinline__ size_t s_warp_stride(void)
{
    return (size_t)gridDim.x * blockDim.x / 32;
}

/* ------------------------------------------------------------------ memory */

static void *s_alloc(backend_t *b, size_t bytes)
{
    s_cuda_t *c = s_impl(b);
    if (c->failed) {
        medfl_error_set(MEDFL_EDEVICE, "%s", c->msg);
        return NULL;
    }
    size_t rounded = (bytes + 63) / 64 * 64; /* cudaMalloc aligns to 256 bytes */
    if (rounded == 0)
        rounded = 64;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, rounded);
    if (e != cudaSuccess) {
        /* out of device memory is the caller's error to report (model: ENOMEM with the
         * size), not a broken backend: clear the runtime's last error */
        (void)cudaGetLastError();
        medfl_error_set(MEDFL_ENOMEM, "cuda backend: cudaMalloc of %zu bytes failed: %s",
                        rounded, cudaGetErrorString(e));
        return NULL;
    }
    S_CU(b, cudaMemsetAsync(p, 0, rounded, c->stream));
    return p;
}

static void s_free(backend_t *b, void *p)
{
    if (p == NULL)
        return;
    /* queued kernels may still use p: wait for the stream (cudaFree's own implicit
     * synchronisation is not documented for non-blocking streams) */
    if (!s_impl(b)->failed)
        S_CU(b, cudaStreamSynchronize(s_impl(b)->stream));
    cudaError_t e = cudaFree(p);
    s_check_cuda(b, e, "cudaFree");
}

static void s_upload(backend_t *b, void *dst, const void *src, size_t bytes)
{
    S_GUARD(b);
    if (bytes == 0)
        return;
    /* from pageable host memory the call returns once src has been staged, so the caller
     * may reuse or free src at once (what the CPU backend's memcpy allows) */
    S_CU(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s_impl(b)->stream));
}

static void s_download(backend_t *b, void *dst, const void *src, size_t bytes)
{
    if (bytes == 0)
        return;
    s_cuda_t *c = s_impl(b);
    if (!c->failed) {
        S_CU(b, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
        S_CU(b, cudaStreamSynchronize(c->stream));
    }
    if (c->failed) /* never hand back uninitialised host memory */
        memset(dst, 0, bytes);
}

static void s_memset0(backend_t *b, void *dst, size_t bytes)
{
    S_GUARD(b);
    if (bytes)
        S_CU(b, cudaMemsetAsync(dst, 0, bytes, s_impl(b)->stream));
}

static void s_sync(backend_t *b)
{
    S_GUARD(b);
    S_CU(b, cudaStreamSynchronize(s_impl(b)->stream));
}

static int s_status(backend_t *b)
{
    s_cuda_t *c = s_impl(b);
    if (!c->failed) {
        S_CU(b, cudaStreamSynchronize(c->stream));
        if (!c->failed)
            S_CU(b, cudaGetLastError());
    }
    if (c->failed)
        return medfl_error_set(MEDFL_EDEVICE, "%s", c->msg);
    return 0;
}

/* Device scratch of at least bytes, grown on demand (after the queued users are done). */
static void *s_scratch(backend_t *b, size_t bytes)
{
    s_cuda_t *c = s_impl(b);
    if (c->scratch_cap >= bytes)
        return c->scratch;
    if (c->scratch) {
        S_CU(b, cudaStreamSynchronize(c->stream));
        s_check_cuda(b, cudaFree(c->scratch), "cudaFree(scratch)");
        c->scratch = NULL;
        c->scratch_cap = 0;
    }
    size_t want = bytes < 4096 ? 4096 : bytes;
    S_CU(b, cudaMalloc(&c->scratch, want));
    if (c->failed) {
        c->scratch = NULL;
        return NULL;
    }
    c->scratch_cap = want;
    return c->scratch;
}

/* ------------------------------------------------------------------ gemm */

static cublasOperation_t s_op(bool t)
{
    return t ? CUBLAS_OP_T : CUBLAS_OP_N;
}

/* Row-major C[M,N] = alpha op(A) op(B) + beta C as column-major C^T = op(B)^T op(A)^T. */
static void s_gemm1(backend_t *b, bool ta, bool tb, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc)
{
    S_CB(b, cublasSgemm(s_impl(b)->blas, s_op(tb), s_op(ta), N, M, K, &alpha, B, ldb, A, lda,
                        &beta, C, ldc));
}

/* count products of one shape, operands sA/sB/sC floats apart. A zero output stride with
 * count > 1 means the products accumulate into one C in order (the CPU backend's loop), which
 * a concurrent batched call would race on: those run one by one. */
static void s_gemm_strided(backend_t *b, bool ta, bool tb, int M, int N, int K, float alpha,
                           const float *A, int lda, long long sA, const float *B, int ldb,
                           long long sB, float beta, float *C, int ldc, long long sC, int count)
{
    if (count <= 0)
        return;
    if (count == 1 || sC == 0) {
        for (int i = 0; i < count && !s_impl(b)->failed; i++)
            s_gemm1(b, ta, tb, M, N, K, alpha, A + i * sA, lda, B + i * sB, ldb, beta,
                    C + i * sC, ldc);
        return;
    }
    S_CB(b, cublasSgemmStridedBatched(s_impl(b)->blas, s_op(tb), s_op(ta), N, M, K, &alpha, B,
                                      ldb, sB, A, lda, sA, &beta, C, ldc, sC, count));
}

static void s_sgemm(backend_t *b, bool ta, bool tb, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc)
{
    S_GUARD(b);
    if (M <= 0 || N <= 0)
        return;
    S_T0;
    s_gemm1(b, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    S_T1(gemm);
}

/* Two-level batch (backend.h): product (o, i) at base + o*s_outer + i*s_inner. When the two
 * levels are one arithmetic progression (s_outer == n_inner * s_inner for A, B and C) it is a
 * single strided batch; otherwise the larger level is the cuBLAS batch and the smaller one a
 * host loop (attention: batch = heads or examples, whichever is larger). */
static void s_sgemm_batched(backend_t *b, bool ta, bool tb, int M, int N, int K, float alpha,
                            const float *A, int lda, long sao, long sai, const float *B, int ldb,
                            long sbo, long sbi, float beta, float *C, int ldc, long sco,
                            long sci, int n_outer, int n_inner)
{
    S_GUARD(b);
    if (M <= 0 || N <= 0 || n_outer <= 0 || n_inner <= 0)
        return;
    S_T0;
    if (n_inner == 1) {
        s_gemm_strided(b, ta, tb, M, N, K, alpha, A, lda, sao, B, ldb, sbo, beta, C, ldc, sco,
                       n_outer);
    } else if (n_outer == 1) {
        s_gemm_strided(b, ta, tb, M, N, K, alpha, A, lda, sai, B, ldb, sbi, beta, C, ldc, sci,
                       n_inner);
    } else if (sao == (long)n_inner * sai && sbo == (long)n_inner * sbi &&
               sco == (long)n_inner * sci && sci != 0) {
        s_gemm_strided(b, ta, tb, M, N, K, alpha, A, lda, sai, B, ldb, sbi, beta, C, ldc, sci,
                       n_outer * n_inner);
    } else if (n_inner >= n_outer) {
        for (int o = 0; o < n_outer && !s_impl(b)->failed; o++)
            s_gemm_strided(b, ta, tb, M, N, K, alpha, A + o * sao, lda, sai, B + o * sbo, ldb,
                           sbi, beta, C + o * sco, ldc, sci, n_inner);
    } else {
        for (int i = 0; i < n_inner && !s_impl(b)->failed; i++)
            s_gemm_strided(b, ta, tb, M, N, K, alpha, A + i * sai, lda, sao, B + i * sbi, ldb,
                           sbo, beta, C + i * sci, ldc, sco, n_outer);
    }
    S_T1(gemm); /* gemm_batched is the batched share of gemm (backend.h) */
    if (b->profile)
        b->prof.gemm_batched += s_now() - s_t0;
}

/* ------------------------------------------------------------------ embeddings */

/* out[r, j] = wte[ids[r], j] + wpe[r % T, j] + wtt[types[r] or 0, j]; one thread per float */
__global__ void k_embed(float *out, const int32_t *ids, const int32_t *types, const float *wte,
                        const float *wpe, const float *wtt, size_t total, int T, int C)
{
    for (size_t i = s_gid(); i < total; i += s_gstride()) {
        size_t r = i / (size_t)C;
        int j = (int)(i % (size_t)C);
        int t = (int)(r % (size_t)T);
        int ty = types ? types[r] : 0;
        out[i] = wte[(size_t)ids[r] * C + j] + wpe[(size_t)t * C + j] + wtt[(size_t)ty * C + j];
    }
}

static void s_embed(backend_t *b, float *out, const int32_t *ids, const int32_t *types,
                    const float *wte, const float *wpe, const float *wtt, int B, int T, int C)
{
    S_GUARD(b);
    size_t total = (size_t)B * T * C;
    if (total == 0)
        return;
    S_T0;
    k_embed<<<s_blocks(total, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(
        out, ids, types, wte, wpe, wtt, total, T, C);
    S_LAUNCHED(b, "k_embed");
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ layernorm */

/* One warp per row of x[N, C]: mean and variance in double (two passes, as the CPU), then
 * xhat in place, rstd[row], and y = xhat * w + bias when y is given. */
__global__ void k_ln_fwd(float *x, float *rstd, float *y, const float *w, const float *bias,
                         int N, int C, float eps)
{
    int lane = threadIdx.x & 31;
    for (size_t row = s_warp_row(); row < (size_t)N; row += s_warp_stride()) {
        float *xr = x + row * C;
        double s = 0.0;
        for (int j = lane; j < C; j += 32)
            s += xr[j];
        s = s_warp_sum_d(s);
        float mean = (float)(s / C);
        double v = 0.0;
        for (int j = lane; j < C; j += 32) {
            float d = xr[j] - mean;
            v += (double)d * d;
        }
        v = s_warp_sum_d(v);
        float rs = 1.0f / sqrtf((float)(v / C) + eps);
        if (lane == 0)
            rstd[row] = rs;
        float *yr = y ? y + row * C : NULL;
        for (int j = lane; j < C; j += 32) {
            float h = (xr[j] - mean) * rs;
            xr[j] = h;
            if (yr)
                yr[j] = h * w[j] + bias[j];
        }
    }
}

static void s_layernorm_fwd(backend_t *b, float *x, float *rstd, float *y, const float *w,
                            const float *bias, int N, int C, float eps)
{
    S_GUARD(b);
    if (N <= 0 || C <= 0)
        return;
    S_T0;
    k_ln_fwd<<<s_blocks((size_t)N, S_ROWS_PER_BLOCK), S_THREADS, 0, s_impl(b)->stream>>>(
        x, rstd, y, w, bias, N, C, eps);
    S_LAUNCHED(b, "k_ln_fwd");
    S_T1(elementwise);
}

__global__ void k_ln_affine(float *y, const float *xhat, const float *w, const float *bias,
                            size_t total, int C)
{
    for (size_t i = s_gid(); i < total; i += s_gstride()) {
        int j = (int)(i % (size_t)C);
        y[i] = xhat[i] * w[j] + bias[j];
    }
}

static void s_layernorm_affine(backend_t *b, float *y, const float *xhat, const float *w,
                               const float *bias, int N, int C)
{
    S_GUARD(b);
    size_t total = (size_t)N * C;
    if (total == 0)
        return;
    S_T0;
    k_ln_affine<<<s_blocks(total, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(y, xhat, w,
                                                                                   bias, total, C);
    S_LAUNCHED(b, "k_ln_affine");
    S_T1(elementwise);
}

/* One warp per row: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, the means
 * in double. dx may alias dy: each lane rewrites only the columns it read, after the warp's
 * reduction (which every lane must reach) has consumed all of the row. */
__global__ void k_ln_bwd(float *dx, const float *dy, const float *xhat, const float *rstd,
                         const float *w, int N, int C)
{
    int lane = threadIdx.x & 31;
    for (size_t row = s_warp_row(); row < (size_t)N; row += s_warp_stride()) {
        const float *dyr = dy + row * C, *h = xhat + row * C;
        double sg = 0.0, sgh = 0.0;
        for (int j = lane; j < C; j += 32) {
            float g = dyr[j] * w[j];
            sg += g;
            sgh += (double)g * h[j];
        }
        sg = s_warp_sum_d(sg);
        sgh = s_warp_sum_d(sgh);
        float mg = (float)(sg / C), mgh = (float)(sgh / C), rs = rstd[row];
        float *dxr = dx + row * C;
        for (int j = lane; j < C; j += 32)
            dxr[j] = rs * (dyr[j] * w[j] - mg - h[j] * mgh);
    }
}

static void s_layernorm_bwd(backend_t *b, float *dx, const float *dy, const float *xhat,
                            const float *rstd, const float *w, int N, int C)
{
    S_GUARD(b);
    if (N <= 0 || C <= 0)
        return;
    S_T0;
    k_ln_bwd<<<s_blocks((size_t)N, S_ROWS_PER_BLOCK), S_THREADS, 0, s_impl(b)->stream>>>(
        dx, dy, xhat, rstd, w, N, C);
    S_LAUNCHED(b, "k_ln_bwd");
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ adds, bias */

__global__ void k_add_bias(float *y, int ldy, const float *bias, size_t total, int C)
{
    for (size_t i = s_gid(); i < total; i += s_gstride()) {
        size_t n = i / (size_t)C;
        int j = (int)(i % (size_t)C);
        y[n * (size_t)ldy + j] += bias[j];
    }
}

static void s_add_bias(backend_t *b, float *y, int ldy, const float *bias, int N, int C)
{
    S_GUARD(b);
    size_t total = (size_t)N * C;
    if (total == 0)
        return;
    S_T0;
    k_add_bias<<<s_blocks(total, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(y, ldy, bias,
                                                                                  total, C);
    S_LAUNCHED(b, "k_add_bias");
    S_T1(elementwise);
}

__global__ void k_add(float *y, const float *x, size_t n)
{
    for (size_t i = s_gid(); i < n; i += s_gstride())
        y[i] += x[i];
}

static void s_add(backend_t *b, float *y, const float *x, size_t n)
{
    S_GUARD(b);
    if (n == 0)
        return;
    S_T0;
    k_add<<<s_blocks(n, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(y, x, n);
    S_LAUNCHED(b, "k_add");
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ gelu (erf form) */

/* out = x Phi(x); deriv (when given) = gelu'(x) = Phi(x) + x phi(x), kept by the forward so
 * that the backward is one multiply. out may alias in: each thread reads x before writing. */
__global__ void k_gelu_fwd(float *out, float *deriv, const float *in, size_t n)
{
    for (size_t i = s_gid(); i < n; i += s_gstride()) {
        float x = in[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        if (deriv)
            deriv[i] = cdf + x * 0.39894228040143268f * expf(-0.5f * x * x);
        out[i] = x * cdf;
    }
}

static void s_gelu_fwd(backend_t *b, float *out, float *deriv, const float *in, size_t n)
{
    S_GUARD(b);
    if (n == 0)
        return;
    S_T0;
    k_gelu_fwd<<<s_blocks(n, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(out, deriv, in, n);
    S_LAUNCHED(b, "k_gelu_fwd");
    S_T1(elementwise);
}

__global__ void k_mul(float *y, const float *x, size_t n)
{
    for (size_t i = s_gid(); i < n; i += s_gstride())
        y[i] *= x[i];
}

static void s_mul(backend_t *b, float *y, const float *x, size_t n)
{
    S_GUARD(b);
    if (n == 0)
        return;
    S_T0;
    k_mul<<<s_blocks(n, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(y, x, n);
    S_LAUNCHED(b, "k_mul");
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ masked softmax */

/* One warp per row r of S[B, H, T, T] (rows = B*H*T), example r / (H*T): softmax of
 * scale * s over keys with mask != 0, masked keys exactly 0, an all-masked row all 0. The max
 * is taken on unscaled scores (scale > 0: same arg max), as on the CPU. */
__global__ void k_softmax_fwd(float *S, const int32_t *mask, size_t rows, int H, int T,
                              float scale)
{
    int lane = threadIdx.x & 31;
    for (size_t r = s_warp_row(); r < rows; r += s_warp_stride()) {
        const int32_t *m = mask + (r / ((size_t)H * T)) * T;
        float *s = S + r * T;
        float mx = -INFINITY;
        for (int k = lane; k < T; k += 32)
            if (m[k] && s[k] > mx)
                mx = s[k];
        mx = s_warp_max_f(mx);
        if (mx == -INFINITY) { /* uniform across the warp: every lane takes this branch */
            for (int k = lane; k < T; k += 32)
                s[k] = 0.0f;
            continue;
        }
        float sum = 0.0f;
        for (int k = lane; k < T; k += 32) {
            float e = m[k] ? expf((s[k] - mx) * scale) : 0.0f;
            s[k] = e;
            sum += e;
        }
        sum = s_warp_sum_f(sum);
        float inv = 1.0f / sum;
        for (int k = lane; k < T; k += 32)
            s[k] *= inv;
    }
}

static void s_softmax_masked_fwd(backend_t *b, float *S, const int32_t *mask, int B, int H,
                                 int T, float scale)
{
    S_GUARD(b);
    size_t rows = (size_t)B * H * T;
    if (rows == 0)
        return;
    S_T0;
    k_softmax_fwd<<<s_blocks(rows, S_ROWS_PER_BLOCK), S_THREADS, 0, s_impl(b)->stream>>>(
        S, mask, rows, H, T, scale);
    S_LAUNCHED(b, "k_softmax_fwd");
    S_T1(elementwise);
}

/* One warp per row: dS = scale * P * (dP - sum(dP * P)), in place over dP. */
__global__ void k_softmax_bwd(float *dP, const float *P, size_t rows, int T, float scale)
{
    int lane = threadIdx.x & 31;
    for (size_t r = s_warp_row(); r < rows; r += s_warp_stride()) {
        float *d = dP + r * T;
        const float *p = P + r * T;
        float dot = 0.0f;
        for (int k = lane; k < T; k += 32)
            dot += d[k] * p[k];
        dot = s_warp_sum_f(dot);
        for (int k = lane; k < T; k += 32)
            d[k] = scale * p[k] * (d[k] - dot);
    }
}

static void s_softmax_bwd(backend_t *b, float *dP, const float *P, size_t rows, int T,
                          float scale)
{
    S_GUARD(b);
    if (rows == 0 || T <= 0)
        return;
    S_T0;
    k_softmax_bwd<<<s_blocks(rows, S_ROWS_PER_BLOCK), S_THREADS, 0, s_impl(b)->stream>>>(
        dP, P, rows, T, scale);
    S_LAUNCHED(b, "k_softmax_bwd");
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ pooling */

/* grid.y walks examples, threads of grid.x columns; each thread sums its column over the
 * example's unpadded tokens in token order (the CPU's order), or copies row 0 (cls). */
__global__ void k_pool_fwd(float *pooled, const float *h, const int32_t *mask, int B, int T,
                           int C, int cls)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= C)
        return;
    for (int e = blockIdx.y; e < B; e += gridDim.y) {
        const float *he = h + (size_t)e * T * C;
        if (cls) {
            pooled[(size_t)e * C + j] = he[j];
            continue;
        }
        float acc = 0.0f;
        int cnt = 0;
        for (int t = 0; t < T; t++) {
            if (!mask[(size_t)e * T + t])
                continue;
            cnt++;
            acc += he[(size_t)t * C + j];
        }
        pooled[(size_t)e * C + j] = acc * (1.0f / (float)(cnt > 0 ? cnt : 1));
    }
}

static unsigned s_grid_y(int B)
{
    return (unsigned)(B < 65535 ? B : 65535);
}

static void s_pool_fwd(backend_t *b, float *pooled, const float *h, const int32_t *mask, int B,
                       int T, int C, bool cls)
{
    S_GUARD(b);
    if (B <= 0 || C <= 0)
        return;
    S_T0;
    dim3 grid((unsigned)((C + S_THREADS - 1) / S_THREADS), s_grid_y(B));
    k_pool_fwd<<<grid, S_THREADS, 0, s_impl(b)->stream>>>(pooled, h, mask, B, T, C, cls ? 1 : 0);
    S_LAUNCHED(b, "k_pool_fwd");
    S_T1(elementwise);
}

/* Overwrites dh[B, T, C]: grid.y walks examples; each block counts its example's tokens once
 * (shared atomic), then writes a grid-stride share of the example's T*C floats. The loop
 * bounds are uniform over the block, so the barriers are reached by every thread. */
__global__ void k_pool_bwd(float *dh, const float *dpooled, const int32_t *mask, int B, int T,
                           int C, int cls)
{
    __shared__ int cnt;
    size_t per = (size_t)T * C;
    for (int e = blockIdx.y; e < B; e += gridDim.y) {
        const int32_t *me = mask + (size_t)e * T;
        if (threadIdx.x == 0)
            cnt = 0;
        __syncthreads();
        if (!cls) {
            int mine = 0;
            for (int t = threadIdx.x; t < T; t += blockDim.x)
                mine += me[t] != 0;
            if (mine)
                atomicAdd(&cnt, mine);
        }
        __syncthreads();
        float inv = 1.0f / (float)(cnt > 0 ? cnt : 1);
        const float *d = dpooled + (size_t)e * C;
        float *o = dh + (size_t)e * per;
        for (size_t i = s_gid(); i < per; i += s_gstride()) {
            int t = (int)(i / (size_t)C), j = (int)(i % (size_t)C);
            float v;
            if (cls)
                v = t == 0 ? d[j] : 0.0f;
            else
                v = me[t] ? d[j] * inv : 0.0f;
            o[i] = v;
        }
        __syncthreads(); /* cnt is reset for the next example only after all have read it */
    }
}

static void s_pool_bwd(backend_t *b, float *dh, const float *dpooled, const int32_t *mask,
                       int B, int T, int C, bool cls)
{
    S_GUARD(b);
    size_t per = (size_t)T * C;
    if (B <= 0 || per == 0)
        return;
    S_T0;
    unsigned gx = s_blocks(per, S_THREADS);
    if (gx > 1024)
        gx = 1024;
    dim3 grid(gx, s_grid_y(B));
    k_pool_bwd<<<grid, S_THREADS, 0, s_impl(b)->stream>>>(dh, dpooled, mask, B, T, C,
                                                           cls ? 1 : 0);
    S_LAUNCHED(b, "k_pool_bwd");
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ loss */

/* One block: thread e handles examples e, e + blockDim, ... in double (as the CPU), then a
 * shared-memory tree sum of the per-thread losses; blockDim must be S_THREADS (power of 2). */
__global__ void k_xent(float *loss_out, float *dlogits, const float *logits,
                       const int32_t *labels, int B, int K, float dscale)
{
    __shared__ double part[S_THREADS];
    double tot = 0.0;
    for (int e = threadIdx.x; e < B; e += blockDim.x) {
        const float *z = logits + (size_t)e * K;
        float mx = z[0];
        for (int k = 1; k < K; k++)
            mx = z[k] > mx ? z[k] : mx;
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += exp((double)z[k] - mx);
        double lse = mx + log(sum);
        int lab = labels[e];
        tot += lse - z[lab];
        if (dlogits)
            for (int k = 0; k < K; k++)
                dlogits[(size_t)e * K + k] =
                    (float)((exp((double)z[k] - lse) - (k == lab ? 1.0 : 0.0)) * dscale);
    }
    part[threadIdx.x] = tot;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        loss_out[0] = (float)(part[0] / B);
}

static void s_xent(backend_t *b, float *loss_out, float *dlogits, const float *logits,
                   const int32_t *labels, int B, int K, float dscale)
{
    S_GUARD(b);
    if (B <= 0 || K <= 0)
        return;
    S_T0;
    k_xent<<<1, S_THREADS, 0, s_impl(b)->stream>>>(loss_out, dlogits, logits, labels, B, K,
                                                   dscale);
    S_LAUNCHED(b, "k_xent");
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ row reductions */

/* out[j] = scale * sum_r rows[r, j], summed in row order in float (the CPU's order); one
 * thread per column keeps the reads of each row coalesced. */
__global__ void k_rows_sum(float *out, const float *rows, int n_rows, size_t n, float scale)
{
    for (size_t j = s_gid(); j < n; j += s_gstride()) {
        float acc = 0.0f;
        for (int r = 0; r < n_rows; r++)
            acc += rows[(size_t)r * n + j];
        out[j] = acc * scale;
    }
}

static void s_rows_sum(backend_t *b, float *out, const float *rows, int n_rows, size_t n,
                       float scale)
{
    S_GUARD(b);
    if (n == 0)
        return;
    S_T0;
    k_rows_sum<<<s_blocks(n, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(out, rows,
                                                                              n_rows < 0 ? 0 : n_rows,
                                                                              n, scale);
    S_LAUNCHED(b, "k_rows_sum");
    S_T1(elementwise);
}

__global__ void k_rows_wsum(float *out, const float *rows, const float *w, int n_rows, size_t n)
{
    for (size_t j = s_gid(); j < n; j += s_gstride()) {
        float acc = 0.0f;
        for (int r = 0; r < n_rows; r++)
            acc += w[r] * rows[(size_t)r * n + j];
        out[j] = acc;
    }
}

static void s_rows_weighted_sum(backend_t *b, float *out, const float *rows,
                                const float *weights_host, int n_rows, size_t n)
{
    S_GUARD(b);
    if (n == 0)
        return;
    S_T0;
    float *w = NULL;
    if (n_rows > 0) {
        w = (float *)s_scratch(b, (size_t)n_rows * sizeof(float));
        if (w == NULL)
            return;
        S_CU(b, cudaMemcpyAsync(w, weights_host, (size_t)n_rows * sizeof(float),
                                cudaMemcpyHostToDevice, s_impl(b)->stream));
    }
    k_rows_wsum<<<s_blocks(n, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(
        out, rows, w, n_rows < 0 ? 0 : n_rows, n);
    S_LAUNCHED(b, "k_rows_wsum");
    S_T1(elementwise);
}

/* Sum of squares of each row, in double: grid.y walks rows, each block reduces a grid-stride
 * share of its row (warp shuffles, then one value per warp in shared memory) and adds it to
 * acc[row] with a double atomicAdd (sm_60+). */
__global__ void k_row_sumsq(double *acc, const float *rows, int n_rows, size_t n)
{
    __shared__ double warp_part[S_THREADS / 32];
    int lane = threadIdx.x & 31, wid = threadIdx.x / 32;
    for (int r = blockIdx.y; r < n_rows; r += gridDim.y) {
        const float *x = rows + (size_t)r * n;
        double s = 0.0;
        for (size_t j = s_gid(); j < n; j += s_gstride())
            s += (double)x[j] * x[j];
        s = s_warp_sum_d(s);
        if (lane == 0)
            warp_part[wid] = s;
        __syncthreads();
        if (threadIdx.x == 0) {
            double t = 0.0;
            for (int i = 0; i < (int)(blockDim.x / 32); i++)
                t += warp_part[i];
            atomicAdd(&acc[r], t);
        }
        __syncthreads(); /* warp_part is rewritten for the next row */
    }
}

static void s_row_norms(backend_t *b, float *norms_host, const float *rows, int n_rows,
                        size_t n)
{
    if (n_rows <= 0)
        return;
    s_cuda_t *c = s_impl(b);
    double *acc = c->failed ? NULL : (double *)s_scratch(b, (size_t)n_rows * sizeof(double));
    if (acc == NULL) { /* failed backend: NaN norms make any use of them visible */
        for (int r = 0; r < n_rows; r++)
            norms_host[r] = NAN;
        return;
    }
    S_T0;
    S_CU(b, cudaMemsetAsync(acc, 0, (size_t)n_rows * sizeof(double), c->stream));
    if (n > 0) {
        unsigned gx = s_blocks(n, S_THREADS);
        if (gx > 256)
            gx = 256;
        dim3 grid(gx, s_grid_y(n_rows));
        k_row_sumsq<<<grid, S_THREADS, 0, c->stream>>>(acc, rows, n_rows, n);
        S_LAUNCHED(b, "k_row_sumsq");
    }
    double small[64];
    double *host = n_rows <= 64 ? small : (double *)malloc((size_t)n_rows * sizeof(double));
    if (host == NULL) {
        medfl_error_set(MEDFL_ENOMEM, "cuda backend: row_norms: out of memory");
        s_fail(b, "row_norms", "host allocation", "out of memory");
        for (int r = 0; r < n_rows; r++)
            norms_host[r] = NAN;
        return;
    }
    s_download(b, host, acc, (size_t)n_rows * sizeof(double));
    for (int r = 0; r < n_rows; r++)
        norms_host[r] = c->failed ? NAN : (float)sqrt(host[r]);
    if (host != small)
        free(host);
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ optimizer */

/* AdamW with bias corrections bc1 = 1 - beta1^t, bc2 = 1 - beta2^t computed on the host with
 * the CPU's powf, decoupled weight decay on p. */
__global__ void k_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr,
                        float beta1, float beta2, float eps, float wd, float bc1, float bc2)
{
    for (size_t i = s_gid(); i < n; i += s_gstride()) {
        float gi = g[i];
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mh = mi / bc1, vh = vi / bc2;
        p[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * p[i]);
    }
}

static void s_adamw(backend_t *b, float *p, const float *g, float *m, float *v, size_t n,
                    float lr, float beta1, float beta2, float eps, float wd, long step)
{
    S_GUARD(b);
    if (n == 0)
        return;
    S_T0;
    float bc1 = 1.0f - powf(beta1, (float)step);
    float bc2 = 1.0f - powf(beta2, (float)step);
    k_adamw<<<s_blocks(n, S_THREADS), S_THREADS, 0, s_impl(b)->stream>>>(
        p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2);
    S_LAUNCHED(b, "k_adamw");
    S_T1(elementwise);
}

/* ------------------------------------------------------------------ lifecycle */

static void s_destroy(backend_t *b)
{
    s_cuda_t *c = s_impl(b);
    if (c) {
        if (c->stream)
            cudaStreamSynchronize(c->stream); /* errors are moot now */
        if (c->scratch)
            cudaFree(c->scratch);
        if (c->blas)
            cublasDestroy(c->blas);
        if (c->stream)
            cudaStreamDestroy(c->stream);
        free(c);
    }
    free(b);
}

/* cuBLAS math mode from c->tf32, and the backend's name, which says whether TF32 is on */
static void s_set_math(backend_t *b)
{
    s_cuda_t *c = s_impl(b);
    S_CB(b, cublasSetMathMode(c->blas, c->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    snprintf(c->name, sizeof c->name, "cuda (%s, sm_%d%d, cuBLAS%s)", c->prop.name,
             c->prop.major, c->prop.minor, c->tf32 ? ", TF32" : "");
    b->name = c->name;
}

extern "C" int backend_cuda_set_tf32(backend_t *b, bool on)
{
    if (b == NULL || b->kind != BACKEND_CUDA)
        return medfl_error_set(MEDFL_EINVAL, "TF32: not a CUDA backend");
    s_impl(b)->tf32 = on;
    s_set_math(b);
    return backend_status(b);
}

extern "C" int backend_cuda_device_count(char *why, size_t why_size)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why && why_size)
            snprintf(why, why_size, "%s%s", cudaGetErrorString(e),
                     e == cudaErrorInsufficientDriver
                         ? " (no NVIDIA driver loaded, or one older than this CUDA runtime)"
                         : "");
        (void)cudaGetLastError(); /* not sticky: leave no trace for later calls */
        return 0;
    }
    if (n <= 0 && why && why_size)
        snprintf(why, why_size, "no CUDA device is visible");
    return n > 0 ? n : 0;
}

extern "C" backend_t *backend_cuda_new(int threads)
{
    (void)threads;
    char why[200] = "";
    if (backend_cuda_device_count(why, sizeof why) == 0) {
        medfl_error_set(MEDFL_EDEVICE, "device = cuda but no CUDA GPU is available: %s", why);
        return NULL;
    }
    backend_t *b = (backend_t *)calloc(1, sizeof *b);
    s_cuda_t *c = (s_cuda_t *)calloc(1, sizeof *c);
    if (b == NULL || c == NULL) {
        free(b);
        free(c);
        medfl_error_set(MEDFL_ENOMEM, "backend cuda: out of memory");
        return NULL;
    }
    b->impl = c;
    b->kind = BACKEND_CUDA;
    const char *tf = getenv("MEDFL_CUDA_TF32");
    c->tf32 = tf && strcmp(tf, "1") == 0;

    S_CU(b, cudaGetDevice(&c->device));
    if (!c->failed)
        S_CU(b, cudaGetDeviceProperties(&c->prop, c->device));
    if (!c->failed)
        S_CU(b, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    if (!c->failed)
        S_CB(b, cublasCreate(&c->blas));
    if (!c->failed)
        S_CB(b, cublasSetStream(c->blas, c->stream));
    if (!c->failed)
        s_set_math(b);
    if (c->failed) {
        char msg[sizeof c->msg];
        snprintf(msg, sizeof msg, "%s", c->msg);
        s_destroy(b);
        (void)cudaGetLastError();
        medfl_error_set(MEDFL_EDEVICE, "device = cuda: cannot start the GPU backend: %s", msg);
        return NULL;
    }
    b->threads = 1; /* host threads: the CPU only queues work */
    b->alloc = s_alloc;
    b->free = s_free;
    b->upload = s_upload;
    b->download = s_download;
    b->memset0 = s_memset0;
    b->synchronize = s_sync;
    b->sgemm = s_sgemm;
    b->sgemm_batched = s_sgemm_batched;
    b->embed = s_embed;
    b->layernorm_fwd = s_layernorm_fwd;
    b->layernorm_affine = s_layernorm_affine;
    b->layernorm_bwd = s_layernorm_bwd;
    b->add_bias = s_add_bias;
    b->add = s_add;
    b->gelu_fwd = s_gelu_fwd;
    b->mul = s_mul;
    b->softmax_masked_fwd = s_softmax_masked_fwd;
    b->softmax_bwd = s_softmax_bwd;
    b->pool_fwd = s_pool_fwd;
    b->pool_bwd = s_pool_bwd;
    b->xent = s_xent;
    b->rows_sum = s_rows_sum;
    b->adamw = s_adamw;
    b->row_norms = s_row_norms;
    b->rows_weighted_sum = s_rows_weighted_sum;
    b->status = s_status;
    b->destroy = s_destroy;
    return b;
}
