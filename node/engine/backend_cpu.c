/* CPU backend: OpenBLAS cblas_sgemm for every matrix product, plain C loops for the row-wise
 * kernels, split over a few pthreads when a tensor is large enough to pay for them.
 * WHY: the encoder's time is in sgemm (OpenBLAS threads it); the rest (LayerNorm, GELU with
 * erf, masked softmax) is memory-bound but still a tenth of a step on two cores, so it is
 * parallelised too, with threads started per call (tens of microseconds, against kernels of
 * milliseconds) instead of a pool that would sit beside OpenBLAS' own.
 * One CPU backend is driven by one thread at a time: OpenBLAS' thread count is process-wide
 * and sgemm_batched lowers it to 1 while it spreads small products over its own threads. */
#include "node/engine/backend.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"

#define S_MAX_THREADS 64
/* Below this many floats touched a kernel runs on the calling thread only. */
#define S_PAR_MIN 65536

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- parallel for over rows ---- */

typedef void (*s_range_fn)(void *ctx, size_t begin, size_t end);

typedef struct {
    s_range_fn fn;
    void *ctx;
    size_t begin, end;
} s_job_t;

static void *s_job_run(void *arg)
{
    s_job_t *j = arg;
    j->fn(j->ctx, j->begin, j->end);
    return NULL;
}

/* Runs fn over [0, n) in contiguous chunks, one per thread; work = floats touched in all. */
static void s_parallel(backend_t *b, size_t n, size_t work, s_range_fn fn, void *ctx)
{
    int nt = b->threads;
    if (nt > S_MAX_THREADS)
        nt = S_MAX_THREADS;
    if (nt <= 1 || work < S_PAR_MIN || n < 2) {
        fn(ctx, 0, n);
        return;
    }
    if ((size_t)nt > n)
        nt = (int)n;
    s_job_t jobs[S_MAX_THREADS];
    pthread_t tids[S_MAX_THREADS];
    bool started[S_MAX_THREADS] = {false};
    size_t chunk = (n + (size_t)nt - 1) / (size_t)nt;
    for (int i = 0; i < nt; i++) {
        jobs[i].fn = fn;
        jobs[i].ctx = ctx;
        jobs[i].begin = (size_t)i * chunk < n ? (size_t)i * chunk : n;
        jobs[i].end = jobs[i].begin + chunk < n ? jobs[i].begin + chunk : n;
    }
    for (int i = 1; i < nt; i++)
        started[i] = pthread_create(&tids[i], NULL, s_job_run, &jobs[i]) == 0;
    fn(ctx, jobs[0].begin, jobs[0].end);
    for (int i = 1; i < nt; i++) {
        if (started[i])
            pthread_join(tids[i], NULL);
        else /* could not start a thread: do its share here */
            fn(ctx, jobs[i].begin, jobs[i].end);
    }
}

/* ---- 4-wide vector math (GCC/Clang vector extensions, SSE2 baseline) ----
 * WHY: erff/expf from libm are scalar calls and GELU (erf) plus softmax (exp) were a third
 * of a training step. These versions are branch-free so the compiler emits SIMD without
 * -ffast-math: exp by range reduction (x = n ln2 + r) and a degree-6 polynomial (relative
 * error < 3e-7 on the clamped range), erf by Abramowitz-Stegun 7.1.26 (absolute error
 * < 1.5e-7), whose exp(-z^2) factor is also the Gaussian density GELU's derivative needs. */

typedef float s_v4f __attribute__((vector_size(16)));
typedef int32_t s_v4i __attribute__((vector_size(16)));

static inline s_v4f s_v4(float a)
{
    return (s_v4f){a, a, a, a};
}

static inline s_v4f s_vsel(s_v4i m, s_v4f a, s_v4f b)
{
    return (s_v4f)(((s_v4i)a & m) | ((s_v4i)b & ~m));
}

static inline s_v4f s_vload(const float *p)
{
    s_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void s_vstore(float *p, s_v4f v)
{
    memcpy(p, &v, sizeof v);
}

static inline s_v4f s_vexp(s_v4f x)
{
    x = s_vsel(x < s_v4(-87.0f), s_v4(-87.0f), x);
    x = s_vsel(x > s_v4(88.0f), s_v4(88.0f), x);
    s_v4f n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    s_v4f r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    s_v4f p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666667f +
                                      r * (0.0083333333f + r * 0.0013888889f)))));
    s_v4i e = (__builtin_convertvector(n, s_v4i) + 127) << 23;
    return p * (s_v4f)e;
}

/* cdf = Phi(x) = 0.5 (1 + erf(x / sqrt 2)), pdf = phi(x) */
static inline void s_vgauss(s_v4f x, s_v4f *cdf, s_v4f *pdf)
{
    s_v4f z = x * 0.70710678118654752f;
    s_v4i neg = z < s_v4(0.0f);
    s_v4f az = s_vsel(neg, -z, z);
    s_v4f e = s_vexp(-az * az); /* = exp(-x^2 / 2) */
    s_v4f t = 1.0f / (1.0f + 0.3275911f * az);
    s_v4f poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                      t * (-1.453152027f + t * 1.061405429f))));
    s_v4f erf_abs = 1.0f - poly * e;
    *cdf = 0.5f * (1.0f + s_vsel(neg, -erf_abs, erf_abs));
    *pdf = 0.39894228040143268f * e;
}

#define S_T0 double s_t0 = b->profile ? s_now() : 0.0
#define S_T1(field)                                                                          \
    do {                                                                                     \
        if (b->profile)                                                                      \
            b->prof.field += s_now() - s_t0;                                                 \
    } while (0)

/* ---- memory ---- */

static void *s_alloc(backend_t *b, size_t bytes)
{
    (void)b;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0)
        rounded = 64;
    void *p = aligned_alloc(64, rounded);
    if (p)
        memset(p, 0, rounded);
    return p;
}

static void s_free(backend_t *b, void *p)
{
    (void)b;
    free(p);
}

static void s_copy(backend_t *b, void *dst, const void *src, size_t bytes)
{
    (void)b;
    if (bytes)
        memmove(dst, src, bytes);
}

static void s_memset0(backend_t *b, void *dst, size_t bytes)
{
    (void)b;
    if (bytes)
        memset(dst, 0, bytes);
}

static void s_sync(backend_t *b)
{
    (void)b;
}

/* ---- gemm ---- */

static void s_sgemm(backend_t *b, bool ta, bool tb, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc)
{
    S_T0;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    S_T1(gemm);
}

typedef struct {
    bool ta, tb;
    int M, N, K, lda, ldb, ldc, n_inner;
    float alpha, beta;
    const float *A, *B;
    float *C;
    long sao, sai, sbo, sbi, sco, sci;
} s_batch_ctx;

static void s_batch_range(void *vc, size_t i0, size_t i1)
{
    s_batch_ctx *c = vc;
    for (size_t idx = i0; idx < i1; idx++) {
        long o = (long)(idx / (size_t)c->n_inner), i = (long)(idx % (size_t)c->n_inner);
        cblas_sgemm(CblasRowMajor, c->ta ? CblasTrans : CblasNoTrans,
                    c->tb ? CblasTrans : CblasNoTrans, c->M, c->N, c->K, c->alpha,
                    c->A + o * c->sao + i * c->sai, c->lda, c->B + o * c->sbo + i * c->sbi,
                    c->ldb, c->beta, c->C + o * c->sco + i * c->sci, c->ldc);
    }
}

/* Attention's products are many small ones (T x T x D per head, ~0.5 MFLOP): OpenBLAS
 * splits each over its threads and synchronises per product, which made them a quarter of
 * the sgemm time for a twentieth of the FLOPs. Small products are instead distributed over
 * threads whole, each run single-threaded (OpenBLAS runs a call on the calling thread when
 * its thread count is 1; the count is restored after). */
static void s_sgemm_batched(backend_t *b, bool ta, bool tb, int M, int N, int K, float alpha,
                            const float *A, int lda, long sao, long sai, const float *B, int ldb,
                            long sbo, long sbi, float beta, float *C, int ldc, long sco,
                            long sci, int n_outer, int n_inner)
{
    S_T0;
    s_batch_ctx c = {ta, tb, M, N, K, lda, ldb, ldc, n_inner, alpha, beta, A, B, C,
                     sao, sai, sbo, sbi, sco, sci};
    size_t count = (size_t)n_outer * (size_t)n_inner;
    double flops = 2.0 * M * N * K;
    if (b->threads > 1 && count >= (size_t)b->threads && flops < 8.0e6) {
        openblas_set_num_threads(1);
        s_parallel(b, count, (size_t)-1, s_batch_range, &c);
        openblas_set_num_threads(b->threads);
    } else {
        s_batch_range(&c, 0, count);
    }
    S_T1(gemm);
    S_T1(gemm_batched);
}

/* ---- embeddings ---- */

typedef struct {
    float *out;
    const int32_t *ids, *types;
    const float *wte, *wpe, *wtt;
    int T, C;
} s_embed_ctx;

static void s_embed_rows(void *vc, size_t r0, size_t r1)
{
    s_embed_ctx *c = vc;
    for (size_t r = r0; r < r1; r++) {
        int t = (int)(r % (size_t)c->T);
        const float *we = c->wte + (size_t)c->ids[r] * c->C;
        const float *pe = c->wpe + (size_t)t * c->C;
        const float *te = c->wtt + (size_t)(c->types ? c->types[r] : 0) * c->C;
        float *o = c->out + r * c->C;
        for (int j = 0; j < c->C; j++)
            o[j] = we[j] + pe[j] + te[j];
    }
}

static void s_embed(backend_t *b, float *out, const int32_t *ids, const int32_t *types,
                    const float *wte, const float *wpe, const float *wtt, int B, int T, int C)
{
    S_T0;
    s_embed_ctx c = {out, ids, types, wte, wpe, wtt, T, C};
    s_parallel(b, (size_t)B * T, (size_t)B * T * C, s_embed_rows, &c);
    S_T1(elementwise);
}

/* ---- layernorm ---- */

typedef struct {
    float *x, *rstd, *y;
    const float *xhat, *dy, *w, *bias;
    float *dx;
    const float *crstd;
    int C;
    float eps;
} s_ln_ctx;

static inline float s_hsum(s_v4f v)
{
    return (v[0] + v[1]) + (v[2] + v[3]);
}

static void s_ln_fwd_rows(void *vc, size_t r0, size_t r1)
{
    s_ln_ctx *c = vc;
    int C = c->C;
    for (size_t r = r0; r < r1; r++) {
        float *x = c->x + r * C;
        /* two-pass mean / variance with 4 partial sums each: rows are a few hundred long */
        s_v4f vs = s_v4(0.0f);
        int j = 0;
        for (; j + 4 <= C; j += 4)
            vs += s_vload(x + j);
        float sum = s_hsum(vs);
        for (; j < C; j++)
            sum += x[j];
        float mean = sum / (float)C;
        s_v4f vv = s_v4(0.0f);
        for (j = 0; j + 4 <= C; j += 4) {
            s_v4f d = s_vload(x + j) - mean;
            vv += d * d;
        }
        float var = s_hsum(vv);
        for (; j < C; j++)
            var += (x[j] - mean) * (x[j] - mean);
        float rs = 1.0f / sqrtf(var / (float)C + c->eps);
        c->rstd[r] = rs;
        float *y = c->y ? c->y + r * C : NULL;
        for (j = 0; j + 4 <= C; j += 4) {
            s_v4f h = (s_vload(x + j) - mean) * rs;
            s_vstore(x + j, h);
            if (y)
                s_vstore(y + j, h * s_vload(c->w + j) + s_vload(c->bias + j));
        }
        for (; j < C; j++) {
            float h = (x[j] - mean) * rs;
            x[j] = h;
            if (y)
                y[j] = h * c->w[j] + c->bias[j];
        }
    }
}

static void s_layernorm_fwd(backend_t *b, float *x, float *rstd, float *y, const float *w,
                            const float *bias, int N, int C, float eps)
{
    S_T0;
    s_ln_ctx c = {.x = x, .rstd = rstd, .y = y, .w = w, .bias = bias, .C = C, .eps = eps};
    s_parallel(b, (size_t)N, (size_t)N * C * 2, s_ln_fwd_rows, &c);
    S_T1(elementwise);
}

static void s_ln_affine_rows(void *vc, size_t r0, size_t r1)
{
    s_ln_ctx *c = vc;
    int C = c->C;
    for (size_t r = r0; r < r1; r++) {
        const float *h = c->xhat + r * C;
        float *y = c->y + r * C;
        for (int j = 0; j < C; j++)
            y[j] = h[j] * c->w[j] + c->bias[j];
    }
}

static void s_layernorm_affine(backend_t *b, float *y, const float *xhat, const float *w,
                               const float *bias, int N, int C)
{
    S_T0;
    s_ln_ctx c = {.y = y, .xhat = xhat, .w = w, .bias = bias, .C = C};
    s_parallel(b, (size_t)N, (size_t)N * C * 2, s_ln_affine_rows, &c);
    S_T1(elementwise);
}

static void s_ln_bwd_rows(void *vc, size_t r0, size_t r1)
{
    s_ln_ctx *c = vc;
    int C = c->C;
    for (size_t r = r0; r < r1; r++) {
        const float *dy = c->dy + r * C;
        const float *h = c->xhat + r * C;
        float *dx = c->dx + r * C;
        s_v4f vg = s_v4(0.0f), vgh = s_v4(0.0f);
        int j = 0;
        for (; j + 4 <= C; j += 4) {
            s_v4f g = s_vload(dy + j) * s_vload(c->w + j);
            vg += g;
            vgh += g * s_vload(h + j);
        }
        float sg = s_hsum(vg), sgh = s_hsum(vgh);
        for (; j < C; j++) {
            float g = dy[j] * c->w[j];
            sg += g;
            sgh += g * h[j];
        }
        float mg = sg / (float)C, mgh = sgh / (float)C, rs = c->crstd[r];
        /* dx may alias dy: each element is read before it is written */
        for (j = 0; j + 4 <= C; j += 4)
            s_vstore(dx + j, rs * (s_vload(dy + j) * s_vload(c->w + j) - mg -
                                   s_vload(h + j) * mgh));
        for (; j < C; j++)
            dx[j] = rs * (dy[j] * c->w[j] - mg - h[j] * mgh);
    }
}

static void s_layernorm_bwd(backend_t *b, float *dx, const float *dy, const float *xhat,
                            const float *rstd, const float *w, int N, int C)
{
    S_T0;
    s_ln_ctx c = {.dx = dx, .dy = dy, .xhat = xhat, .crstd = rstd, .w = w, .C = C};
    s_parallel(b, (size_t)N, (size_t)N * C * 3, s_ln_bwd_rows, &c);
    S_T1(elementwise);
}

/* ---- adds, bias ---- */

typedef struct {
    float *y;
    const float *x;
    int ld, C;
} s_add_ctx;

static void s_add_bias_rows(void *vc, size_t r0, size_t r1)
{
    s_add_ctx *c = vc;
    for (size_t r = r0; r < r1; r++) {
        float *y = c->y + r * c->ld;
        for (int j = 0; j < c->C; j++)
            y[j] += c->x[j];
    }
}

static void s_add_bias(backend_t *b, float *y, int ldy, const float *bias, int N, int C)
{
    S_T0;
    s_add_ctx c = {y, bias, ldy, C};
    s_parallel(b, (size_t)N, (size_t)N * C, s_add_bias_rows, &c);
    S_T1(elementwise);
}

static void s_add_range(void *vc, size_t i0, size_t i1)
{
    s_add_ctx *c = vc;
    for (size_t i = i0; i < i1; i++)
        c->y[i] += c->x[i];
}

static void s_add(backend_t *b, float *y, const float *x, size_t n)
{
    S_T0;
    s_add_ctx c = {y, x, 0, 0};
    s_parallel(b, n, n * 2, s_add_range, &c);
    S_T1(elementwise);
}

/* ---- gelu (erf form, as BERT's "gelu") ---- */

typedef struct {
    float *out, *deriv;
    const float *in;
} s_gelu_ctx;

static void s_gelu_fwd_range(void *vc, size_t i0, size_t i1)
{
    s_gelu_ctx *c = vc;
    size_t i = i0;
    for (; i + 4 <= i1; i += 4) {
        s_v4f x = s_vload(c->in + i), cdf, pdf;
        s_vgauss(x, &cdf, &pdf);
        if (c->deriv)
            s_vstore(c->deriv + i, cdf + x * pdf);
        s_vstore(c->out + i, x * cdf);
    }
    for (; i < i1; i++) {
        float x = c->in[i];
        float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        if (c->deriv)
            c->deriv[i] = cdf + x * 0.39894228040143268f * expf(-0.5f * x * x);
        c->out[i] = x * cdf;
    }
}

static void s_gelu_fwd(backend_t *b, float *out, float *deriv, const float *in, size_t n)
{
    S_T0;
    s_gelu_ctx c = {out, deriv, in};
    s_parallel(b, n, n * 8, s_gelu_fwd_range, &c);
    S_T1(elementwise);
}

static void s_mul_range(void *vc, size_t i0, size_t i1)
{
    s_gelu_ctx *c = vc;
    for (size_t i = i0; i < i1; i++)
        c->out[i] *= c->in[i];
}

static void s_mul(backend_t *b, float *y, const float *x, size_t n)
{
    S_T0;
    s_gelu_ctx c = {y, NULL, x};
    s_parallel(b, n, n * 2, s_mul_range, &c);
    S_T1(elementwise);
}

/* ---- masked softmax over attention rows ---- */

typedef struct {
    float *S;
    const float *P;
    const int32_t *mask;
    int H, T;
    float scale;
} s_sm_ctx;

static void s_softmax_rows(void *vc, size_t r0, size_t r1)
{
    s_sm_ctx *c = vc;
    int T = c->T;
    for (size_t r = r0; r < r1; r++) {
        size_t bidx = r / ((size_t)c->H * T);
        const int32_t *m = c->mask + bidx * T;
        float *s = c->S + r * T;
        float mx = -INFINITY;
        int k = 0;
        s_v4f vmx = s_v4(-INFINITY);
        for (; k + 4 <= T; k += 4) {
            s_v4i mk;
            memcpy(&mk, m + k, sizeof mk);
            s_v4f v = s_vsel(mk != 0, s_vload(s + k), s_v4(-INFINITY));
            vmx = s_vsel(v > vmx, v, vmx);
        }
        for (int j = 0; j < 4; j++)
            mx = vmx[j] > mx ? vmx[j] : mx;
        for (; k < T; k++)
            if (m[k] && s[k] > mx)
                mx = s[k];
        if (mx == -INFINITY) { /* no key at all: an all-padding example; output zeros */
            memset(s, 0, sizeof(float) * T);
            continue;
        }
        float sum = 0.0f;
        k = 0;
        s_v4f vsum = s_v4(0.0f);
        for (; k + 4 <= T; k += 4) {
            s_v4i mk;
            memcpy(&mk, m + k, sizeof mk);
            s_v4f e = s_vexp((s_vload(s + k) - mx) * c->scale);
            e = s_vsel(mk != 0, e, s_v4(0.0f)); /* padded keys: exactly 0 */
            s_vstore(s + k, e);
            vsum += e;
        }
        sum = vsum[0] + vsum[1] + vsum[2] + vsum[3];
        for (; k < T; k++) {
            float e = m[k] ? expf((s[k] - mx) * c->scale) : 0.0f;
            s[k] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
        for (k = 0; k + 4 <= T; k += 4)
            s_vstore(s + k, s_vload(s + k) * inv);
        for (; k < T; k++)
            s[k] *= inv;
    }
}

static void s_softmax_masked_fwd(backend_t *b, float *S, const int32_t *mask, int B, int H,
                                 int T, float scale)
{
    S_T0;
    /* max taken on unscaled scores: scale > 0 so the arg max is the same */
    s_sm_ctx c = {.S = S, .mask = mask, .H = H, .T = T, .scale = scale};
    size_t rows = (size_t)B * H * T;
    s_parallel(b, rows, rows * T * 3, s_softmax_rows, &c);
    S_T1(elementwise);
}

static void s_softmax_bwd_rows(void *vc, size_t r0, size_t r1)
{
    s_sm_ctx *c = vc;
    int T = c->T;
    for (size_t r = r0; r < r1; r++) {
        float *d = c->S + r * T;
        const float *p = c->P + r * T;
        s_v4f vdot = s_v4(0.0f);
        int k = 0;
        for (; k + 4 <= T; k += 4)
            vdot += s_vload(d + k) * s_vload(p + k);
        float dot = vdot[0] + vdot[1] + vdot[2] + vdot[3];
        for (; k < T; k++)
            dot += d[k] * p[k];
        for (k = 0; k + 4 <= T; k += 4)
            s_vstore(d + k, c->scale * s_vload(p + k) * (s_vload(d + k) - dot));
        for (; k < T; k++)
            d[k] = c->scale * p[k] * (d[k] - dot);
    }
}

static void s_softmax_bwd(backend_t *b, float *dP, const float *P, size_t rows, int T,
                          float scale)
{
    S_T0;
    s_sm_ctx c = {.S = dP, .P = P, .T = T, .scale = scale};
    s_parallel(b, rows, rows * T * 3, s_softmax_bwd_rows, &c);
    S_T1(elementwise);
}

/* ---- pooling ---- */

static void s_pool_fwd(backend_t *b, float *pooled, const float *h, const int32_t *mask, int B,
                       int T, int C, bool cls)
{
    S_T0;
    for (int e = 0; e < B; e++) {
        float *o = pooled + (size_t)e * C;
        if (cls) {
            memcpy(o, h + (size_t)e * T * C, sizeof(float) * C);
            continue;
        }
        memset(o, 0, sizeof(float) * C);
        int cnt = 0;
        for (int t = 0; t < T; t++) {
            if (!mask[e * T + t])
                continue;
            cnt++;
            const float *x = h + ((size_t)e * T + t) * C;
            for (int j = 0; j < C; j++)
                o[j] += x[j];
        }
        float inv = 1.0f / (float)(cnt > 0 ? cnt : 1);
        for (int j = 0; j < C; j++)
            o[j] *= inv;
    }
    S_T1(elementwise);
}

static void s_pool_bwd(backend_t *b, float *dh, const float *dpooled, const int32_t *mask,
                       int B, int T, int C, bool cls)
{
    S_T0;
    memset(dh, 0, sizeof(float) * (size_t)B * T * C);
    for (int e = 0; e < B; e++) {
        const float *d = dpooled + (size_t)e * C;
        if (cls) {
            memcpy(dh + (size_t)e * T * C, d, sizeof(float) * C);
            continue;
        }
        int cnt = 0;
        for (int t = 0; t < T; t++)
            cnt += mask[e * T + t] != 0;
        float inv = 1.0f / (float)(cnt > 0 ? cnt : 1);
        for (int t = 0; t < T; t++) {
            if (!mask[e * T + t])
                continue;
            float *x = dh + ((size_t)e * T + t) * C;
            for (int j = 0; j < C; j++)
                x[j] = d[j] * inv;
        }
    }
    S_T1(elementwise);
}

/* ---- loss ---- */

static void s_xent(backend_t *b, float *loss_out, float *dlogits, const float *logits,
                   const int32_t *labels, int B, int K, float dscale)
{
    S_T0;
    double total = 0.0;
    for (int e = 0; e < B; e++) {
        const float *z = logits + (size_t)e * K;
        float mx = z[0];
        for (int k = 1; k < K; k++)
            mx = z[k] > mx ? z[k] : mx;
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += exp((double)z[k] - mx);
        double lse = mx + log(sum);
        total += lse - z[labels[e]];
        if (dlogits)
            for (int k = 0; k < K; k++)
                dlogits[(size_t)e * K + k] =
                    (float)((exp((double)z[k] - lse) - (k == labels[e] ? 1.0 : 0.0)) * dscale);
    }
    *loss_out = (float)(total / B);
    S_T1(elementwise);
}

static void s_rows_sum(backend_t *b, float *out, const float *rows, int n_rows, size_t n,
                       float scale)
{
    S_T0;
    for (size_t j = 0; j < n; j++)
        out[j] = 0.0f;
    for (int r = 0; r < n_rows; r++) {
        const float *x = rows + (size_t)r * n;
        for (size_t j = 0; j < n; j++)
            out[j] += x[j];
    }
    for (size_t j = 0; j < n; j++)
        out[j] *= scale;
    S_T1(elementwise);
}

static void s_adamw(backend_t *b, float *p, const float *g, float *m, float *v, size_t n,
                    float lr, float beta1, float beta2, float eps, float wd, long step)
{
    S_T0;
    float bc1 = 1.0f - powf(beta1, (float)step);
    float bc2 = 1.0f - powf(beta2, (float)step);
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
        v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        float mh = m[i] / bc1, vh = v[i] / bc2;
        p[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * p[i]);
    }
    S_T1(elementwise);
}

static void s_row_norms(backend_t *b, float *norms, const float *rows, int n_rows, size_t n)
{
    S_T0;
    for (int r = 0; r < n_rows; r++) {
        const float *x = rows + (size_t)r * n;
        double s = 0.0;
        for (size_t j = 0; j < n; j++)
            s += (double)x[j] * x[j];
        norms[r] = (float)sqrt(s);
    }
    S_T1(elementwise);
}

static void s_rows_weighted_sum(backend_t *b, float *out, const float *rows,
                                const float *weights, int n_rows, size_t n)
{
    S_T0;
    memset(out, 0, n * sizeof(float));
    for (int r = 0; r < n_rows; r++) {
        const float *x = rows + (size_t)r * n;
        float w = weights[r];
        for (size_t j = 0; j < n; j++)
            out[j] += w * x[j];
    }
    S_T1(elementwise);
}

static void s_destroy(backend_t *b)
{
    free(b);
}

backend_t *backend_cpu_new(int threads)
{
    backend_t *b = calloc(1, sizeof *b);
    if (b == NULL) {
        medfl_error_set(MEDFL_ENOMEM, "backend cpu: out of memory");
        return NULL;
    }
    if (threads > 0)
        openblas_set_num_threads(threads);
    b->kind = BACKEND_CPU;
    b->threads = openblas_get_num_threads();
    if (b->threads < 1)
        b->threads = 1;
    b->name = "cpu (OpenBLAS)";
    b->alloc = s_alloc;
    b->free = s_free;
    b->upload = s_copy;
    b->download = s_copy;
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
    b->destroy = s_destroy;
    return b;
}
