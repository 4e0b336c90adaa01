/* Compute backend interface: every kernel the model needs (sgemm and its batched form, plus
 * the few elementwise and row-wise kernels of a BERT encoder, LoRA and AdamW), behind one
 * table of function pointers.
 *
 * WHY: the model (node/engine/model.c) is written once against this table; the CPU backend
 * (backend_cpu.c, OpenBLAS) and the later cuBLAS backend implement the same table, so the
 * model's forward/backward never call BLAS or loops over tensors directly. All float
 * pointers handed to the kernels are "device" pointers obtained from backend->alloc (on the
 * CPU they are ordinary host memory); host data goes in and out only through upload and
 * download, which are memcpy on the CPU.
 *
 * Matrices are row-major, like PyTorch: sgemm computes
 *   C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C
 * with lda/ldb/ldc the row strides of A, B, C as stored (before op). A cuBLAS (column-major)
 * implementation computes the transpose product C^T = op(B)^T op(A)^T. */
#ifndef MEDFL_BACKEND_H
#define MEDFL_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct backend backend_t;

typedef enum { BACKEND_CPU = 0, BACKEND_CUDA = 1 } backend_kind_t;

/* Per-phase time accounting (seconds) for profiles: backends add the time spent in each
 * class of kernel, callers read it after a step. */
typedef struct {
    double gemm;        /* sgemm and batched sgemm */
    double gemm_batched;/* of which batched sgemm (attention's per-head products) */
    double elementwise; /* layernorm, gelu, softmax, adds, pooling, embeddings, optimizer */
} backend_profile_t;

struct backend {
    backend_kind_t kind;
    const char *name; /* "cpu (OpenBLAS, 2 threads)" */
    int threads;
    bool profile;           /* when true, kernels add their wall time to prof */
    backend_profile_t prof;
    void *impl;             /* backend private state */

    /* --- memory --- */
    void *(*alloc)(backend_t *b, size_t bytes); /* zeroed, 64-byte aligned; NULL on failure */
    void (*free)(backend_t *b, void *p);
    void (*upload)(backend_t *b, void *dst_dev, const void *src_host, size_t bytes);
    void (*download)(backend_t *b, void *dst_host, const void *src_dev, size_t bytes);
    void (*memset0)(backend_t *b, void *dst_dev, size_t bytes);
    void (*synchronize)(backend_t *b);

    /* --- matrix products --- */
    void (*sgemm)(backend_t *b, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta, float *C,
                  int ldc);
    /* A batch of n_outer * n_inner products of equal shape; product (o, i) uses
     *   A + o*sa_outer + i*sa_inner, B + o*sb_outer + i*sb_inner, C + o*sc_outer + i*sc_inner.
     * Two strides let attention address head h of example b inside [B*T, 3*hidden] rows
     * without permuting Q, K, V into [B, heads, T, d] copies. */
    void (*sgemm_batched)(backend_t *b, bool trans_a, bool trans_b, int M, int N, int K,
                          float alpha, const float *A, int lda, long sa_outer, long sa_inner,
                          const float *B, int ldb, long sb_outer, long sb_inner, float beta,
                          float *C, int ldc, long sc_outer, long sc_inner, int n_outer,
                          int n_inner);

    /* --- encoder kernels --- */
    /* out[b*T+t, :] = wte[ids] + wpe[t] + wtt[type_ids or 0]; ids already validated. */
    void (*embed)(backend_t *b, float *out, const int32_t *ids, const int32_t *type_ids,
                  const float *wte, const float *wpe, const float *wtt, int B, int T, int C);
    /* In place over x[N, C]: xhat = (x - mean) * rstd (written to x), rstd[N];
     * y[N,C] = xhat * w + bias when y != NULL. */
    void (*layernorm_fwd)(backend_t *b, float *x_to_xhat, float *rstd, float *y,
                          const float *w, const float *bias, int N, int C, float eps);
    /* y = xhat * w + bias (recomputes a LayerNorm output from its saved xhat). */
    void (*layernorm_affine)(backend_t *b, float *y, const float *xhat, const float *w,
                             const float *bias, int N, int C);
    /* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w; dx may alias dy. */
    void (*layernorm_bwd)(backend_t *b, float *dx, const float *dy, const float *xhat,
                          const float *rstd, const float *w, int N, int C);
    /* y[n, j] += bias[j] for rows of length C stored ldy apart. */
    void (*add_bias)(backend_t *b, float *y, int ldy, const float *bias, int N, int C);
    /* y[i] += x[i] */
    void (*add)(backend_t *b, float *y, const float *x, size_t n);
    /* out = gelu(in) with erf, as BERT; out may alias in. When deriv != NULL it also gets
     * gelu'(in), so the backward is one multiply instead of a second erf and exp. */
    void (*gelu_fwd)(backend_t *b, float *out, float *deriv, const float *in, size_t n);
    /* y[i] *= x[i] */
    void (*mul)(backend_t *b, float *y, const float *x, size_t n);
    /* Rows of S[B, H, T, T] in place: softmax over keys with key_mask[b, k] == 0 excluded
     * (probability exactly 0), after multiplying by scale. */
    void (*softmax_masked_fwd)(backend_t *b, float *S, const int32_t *key_mask, int B, int H,
                               int T, float scale);
    /* In place dP -> dS: dS = scale * P * (dP - rowsum(dP * P)), rows of length T. */
    void (*softmax_bwd)(backend_t *b, float *dP, const float *P, size_t rows, int T,
                        float scale);
    /* pooled[b] = sum_t mask*h[b,t] / max(1, sum_t mask) (mean) or h[b, 0] (cls). */
    void (*pool_fwd)(backend_t *b, float *pooled, const float *h, const int32_t *mask, int B,
                     int T, int C, bool cls);
    /* dh[b,t] = dpooled[b] * mask / count (mean) or into t = 0 only (cls); overwrites dh. */
    void (*pool_bwd)(backend_t *b, float *dh, const float *dpooled, const int32_t *mask, int B,
                     int T, int C, bool cls);
    /* Softmax cross-entropy, mean over the batch: loss_out[0] (device) = mean loss,
     * dlogits[B, K] = (softmax - onehot) * dscale. Labels validated by the caller. */
    void (*xent)(backend_t *b, float *loss_out, float *dlogits, const float *logits,
                 const int32_t *labels, int B, int K, float dscale);
    /* grad[j] = sum_e rows[e, j] * scale over n_rows rows of length n. */
    void (*rows_sum)(backend_t *b, float *out, const float *rows, int n_rows, size_t n,
                     float scale);
    /* One AdamW step (decoupled weight decay, bias-corrected) over n parameters. */
    void (*adamw)(backend_t *b, float *p, const float *g, float *m, float *v, size_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay,
                  long step);
    /* DP-SGD clipping helpers over per-example gradient rows [n_rows, n] (device memory);
     * norms_host and weights_host are small HOST arrays of n_rows floats.
     * row_norms: L2 norm of each row (accumulated in double).
     * rows_weighted_sum: out[j] = sum_e weights[e] * rows[e, j] (e.g. clip factors
     * min(1, C / norm_e), then noise is added to out by the caller). */
    void (*row_norms)(backend_t *b, float *norms_host, const float *rows, int n_rows,
                      size_t n);
    void (*rows_weighted_sum)(backend_t *b, float *out, const float *rows,
                              const float *weights_host, int n_rows, size_t n);

    /* Asynchronous backends (CUDA) cannot report a kernel's failure from a void entry: they
     * record the first error and skip later work. status waits for queued work and returns
     * 0, or -1 with that error as the medfl error (code and message). NULL (the CPU backend,
     * which cannot fail after allocation) means always 0; call it through backend_status. */
    int (*status)(backend_t *b);

    void (*destroy)(backend_t *b);
};

/* CPU backend on OpenBLAS; threads <= 0 keeps OpenBLAS' default. */
backend_t *backend_cpu_new(int threads);

/* Backend by name: "cpu", "cuda", "auto" (cuda when built and a GPU is present, else cpu,
 * logged once). Returns NULL with a medfl error when the device cannot be used. */
backend_t *backend_new(const char *device, int threads);

/* 0 when every queued operation so far succeeded, else -1 with the backend's first error
 * (see the status entry). Synchronises an asynchronous backend. Safe with NULL (returns 0). */
int backend_status(backend_t *b);

/* Frees the backend; safe with NULL and twice. */
void backend_destroy(backend_t **self_p);

#endif
