/* Backend parity: the CUDA backend against the CPU backend (the reference), entry by entry on
 * random inputs (every sgemm transpose combination and batch layout, each encoder kernel,
 * AdamW, the DP clipping helpers), then on the tiny model: logits, loss, every LoRA and head
 * gradient, per-example gradients, and the parameters after 20 AdamW steps, all within
 * 1e-3 relative. Also device selection (cpu / auto / cuda / unknown names), which runs on
 * every machine.
 * WHY: CPU and GPU hospitals of one federation must compute the same update; the model is
 * only tested on the CPU backend (test_model.c), so every GPU kernel is held to the CPU's
 * numbers here. Without a GPU (or in a build without CUDA) the GPU tests are skipped with
 * the printed reason "no CUDA GPU: parity test skipped", never passed vacuously. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/engine/backend.h"
#include "common/error.h"
#include "node/engine/model.h"
#ifdef MEDFL_HAVE_CUDA
#include "node/engine/backend_cuda.h"
#endif

#define KERNEL_TOL 1e-4 /* one kernel: only summation order and libm differ */
#define MODEL_TOL 1e-3  /* the bound for the whole model */

/* ------------------------------------------------------------ helpers */

static uint64_t s_rng = 0x9E3779B97F4A7C15ull;
static float s_uniform(float lo, float hi)
{
    s_rng ^= s_rng << 13, s_rng ^= s_rng >> 7, s_rng ^= s_rng << 17;
    return lo + (hi - lo) * (float)((double)(s_rng >> 11) / 9007199254740992.0);
}

/* max |a - ref| / max(max |ref|, 1e-6); NaN anywhere counts as infinite error */
static double s_rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (isnan(d))
            return INFINITY;
        if (d > md)
            md = d;
        if (fabs(ref[i]) > mr)
            mr = fabs(ref[i]);
    }
    return md / (mr > 1e-6 ? mr : 1e-6);
}

/* The GPU backend, or NULL after printing why the test is skipped. */
static backend_t *s_gpu_or_reason(void)
{
    backend_t *g = backend_new("cuda", 0);
    if (g == NULL)
        printf("no CUDA GPU: parity test skipped (%s)\n", medfl_error_message());
    return g;
}

/* skip() jumps out of the test: called before anything is allocated */
#define NEED_GPU(g)                                                                          \
    backend_t *g = s_gpu_or_reason();                                                        \
    if (g == NULL)                                                                           \
    skip()

/* One tensor on both backends: c is the CPU backend's (host) pointer, g the device copy. */
typedef struct {
    float *c, *g;
    size_t n;
} s_buf_t;

typedef struct {
    int32_t *c, *g;
    size_t n;
} s_ibuf_t;

typedef struct {
    backend_t *cpu, *gpu;
} s_pair_t;

static s_buf_t s_buf(s_pair_t *p, size_t n, float lo, float hi)
{
    s_buf_t b = {p->cpu->alloc(p->cpu, n * sizeof(float)),
                 p->gpu->alloc(p->gpu, n * sizeof(float)), n};
    assert_non_null(b.c);
    assert_non_null(b.g);
    for (size_t i = 0; i < n; i++)
        b.c[i] = s_uniform(lo, hi);
    p->gpu->upload(p->gpu, b.g, b.c, n * sizeof(float));
    return b;
}

static s_ibuf_t s_ibuf(s_pair_t *p, const int32_t *v, size_t n)
{
    s_ibuf_t b = {p->cpu->alloc(p->cpu, n * sizeof(int32_t)),
                  p->gpu->alloc(p->gpu, n * sizeof(int32_t)), n};
    assert_non_null(b.c);
    assert_non_null(b.g);
    memcpy(b.c, v, n * sizeof(int32_t));
    p->gpu->upload(p->gpu, b.g, v, n * sizeof(int32_t));
    return b;
}

static void s_free(s_pair_t *p, void *c, void *g)
{
    p->cpu->free(p->cpu, c);
    p->gpu->free(p->gpu, g);
}
#define S_FREE(p, b) s_free((p), (b).c, (b).g)

/* Downloads the GPU copy and compares it with the CPU result. */
static void s_cmp(s_pair_t *p, const s_buf_t *b, const char *what, double tol)
{
    float *h = malloc(b->n * sizeof(float));
    assert_non_null(h);
    p->gpu->download(p->gpu, h, b->g, b->n * sizeof(float));
    assert_int_equal(backend_status(p->gpu), 0);
    double err = s_rel_err(h, b->c, b->n);
    printf("  %-34s rel err %.3g\n", what, err);
    free(h);
    if (!(err < tol))
        fail_msg("%s: differs from the CPU backend by %.3g (tolerance %.1g)", what, err, tol);
}

/* Runs the statement once per backend with D(x) naming x's pointer on that backend. */
#define BOTH(p, stmt)                                                                        \
    for (int side_ = 0; side_ < 2; side_++) {                                                \
        backend_t *be = side_ ? (p)->gpu : (p)->cpu;                                         \
        stmt;                                                                                \
    }
#define D(x) (side_ ? (x).g : (x).c)

/* ------------------------------------------------------------ device selection */

static void test_device_selection(void **state)
{
    (void)state;
    backend_t *b = backend_new("cpu", 1);
    assert_non_null(b);
    assert_int_equal(b->kind, BACKEND_CPU);
    assert_int_equal(backend_status(b), 0); /* the CPU backend has no asynchronous errors */
    backend_destroy(&b);
    backend_destroy(&b); /* safe twice */
    assert_int_equal(backend_status(NULL), 0);

    assert_null(backend_new("gpu0", 1));
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_non_null(strstr(medfl_error_message(), "expected auto, cpu or cuda"));

    int gpus = 0;
#ifdef MEDFL_HAVE_CUDA
    b = backend_new("cpu", 1);
    assert_non_null(b);
    assert_int_equal(backend_cuda_set_tf32(b, true), -1); /* TF32 is a CUDA-only switch */
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    backend_destroy(&b);
    char why[256] = "";
    gpus = backend_cuda_device_count(why, sizeof why);
    printf("CUDA devices: %d%s%s\n", gpus, gpus ? "" : ": ", gpus ? "" : why);
#endif
    b = backend_new("auto", 1);
    assert_non_null(b);
    assert_int_equal(b->kind, gpus > 0 ? BACKEND_CUDA : BACKEND_CPU);
    backend_destroy(&b);
    b = backend_new("auto", 1); /* the CPU fallback is logged once only (seen in the log) */
    assert_non_null(b);
    backend_destroy(&b);

    b = backend_new("cuda", 1);
    if (gpus > 0) {
        assert_non_null(b);
        assert_int_equal(b->kind, BACKEND_CUDA);
        printf("cuda backend: %s\n", b->name);
#ifdef MEDFL_HAVE_CUDA
        assert_int_equal(backend_cuda_set_tf32(b, true), 0);
        assert_non_null(strstr(b->name, "TF32"));
        assert_int_equal(backend_cuda_set_tf32(b, false), 0);
        assert_null(strstr(b->name, "TF32"));
#endif
        backend_destroy(&b);
    } else {
        /* explicit cuda without a GPU is an error naming the cause, never a silent CPU */
        assert_null(b);
        assert_int_equal(medfl_error_code(), MEDFL_EDEVICE);
        assert_non_null(strstr(medfl_error_message(), "device = cuda but"));
        printf("device = cuda refused: %s\n", medfl_error_message());
    }
}

/* ------------------------------------------------------------ matrix products */

static void s_sgemm(backend_t *gpu)
{
    s_pair_t p = {backend_cpu_new(1), gpu};
    assert_non_null(p.cpu);
    const int M = 13, N = 17, K = 9, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            /* stored shapes: A [M,K] or [K,M], B [K,N] or [N,K], with padded row strides */
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            s_buf_t A = s_buf(&p, (size_t)(ta ? K : M) * lda, -1, 1);
            s_buf_t B = s_buf(&p, (size_t)(tb ? N : K) * ldb, -1, 1);
            s_buf_t C = s_buf(&p, (size_t)M * ldc, -1, 1);
            BOTH(&p, be->sgemm(be, ta, tb, M, N, K, 0.7f, D(A), lda, D(B), ldb, 0.5f, D(C), ldc));
            char what[64];
            snprintf(what, sizeof what, "sgemm ta=%d tb=%d", ta, tb);
            s_cmp(&p, &C, what, KERNEL_TOL);
            S_FREE(&p, A), S_FREE(&p, B), S_FREE(&p, C);
        }
    /* the head's bias gradient shape: N = 1, ldb = ldc = 1 */
    s_buf_t d = s_buf(&p, 8 * 3, -1, 1), ones = s_buf(&p, 8, 1, 1), gb = s_buf(&p, 3, -1, 1);
    BOTH(&p, be->sgemm(be, true, false, 3, 1, 8, 1.0f, D(d), 3, D(ones), 1, 1.0f, D(gb), 1));
    s_cmp(&p, &gb, "sgemm N=1 (bias gradient)", KERNEL_TOL);
    S_FREE(&p, d), S_FREE(&p, ones), S_FREE(&p, gb);
    backend_destroy(&p.cpu);
}

static void s_sgemm_batched(backend_t *gpu)
{
    s_pair_t p = {backend_cpu_new(1), gpu};
    assert_non_null(p.cpu);
    /* attention: B=3 examples, NH=4 heads of D=5 read in place from qkv [B*T, 3C] rows,
     * scores [B, NH, T, T]: the two levels are not one progression */
    int B = 3, NH = 4, T = 7, Dh = 5, C = NH * Dh;
    long TT = (long)T * T;
    s_buf_t qkv = s_buf(&p, (size_t)B * T * 3 * C, -1, 1);
    s_buf_t S = s_buf(&p, (size_t)B * NH * TT, -1, 1);
    s_buf_t ctx = s_buf(&p, (size_t)B * T * C, -1, 1);
    BOTH(&p, be->sgemm_batched(be, false, true, T, T, Dh, 1.0f, D(qkv), 3 * C, (long)T * 3 * C,
                               Dh, D(qkv) + C, 3 * C, (long)T * 3 * C, Dh, 0.0f, D(S), T,
                               NH * TT, TT, B, NH));
    s_cmp(&p, &S, "batched scores Q K^T (B x heads)", KERNEL_TOL);
    BOTH(&p, be->sgemm_batched(be, false, false, T, Dh, T, 1.0f, D(S), T, NH * TT, TT,
                               D(qkv) + 2 * C, 3 * C, (long)T * 3 * C, Dh, 0.0f, D(ctx), C,
                               (long)T * C, Dh, B, NH));
    s_cmp(&p, &ctx, "batched ctx P V (interleaved C)", KERNEL_TOL);
    /* more examples than heads: the loop runs over heads instead */
    BOTH(&p, be->sgemm_batched(be, true, false, T, Dh, T, 0.5f, D(S), T, NH * TT, TT, D(ctx), C,
                               (long)T * C, Dh, 1.0f, D(qkv) + 2 * C, 3 * C, (long)T * 3 * C,
                               Dh, B, 2));
    s_cmp(&p, &qkv, "batched P^T dctx, beta=1, outer>inner", KERNEL_TOL);
    /* one progression (outer = inner * n_inner): a single strided batch */
    BOTH(&p, be->sgemm_batched(be, false, false, T, T, T, 1.0f, D(S), T, 2 * TT, TT, D(S), T, 0,
                               0, 0.0f, D(S) + 6 * TT, T, 2 * TT, TT, 3, 2));
    s_cmp(&p, &S, "batched collapsible, broadcast B", KERNEL_TOL);
    /* per-example weight gradients: n_inner = 1, C stride = n_trainable */
    s_buf_t pe = s_buf(&p, (size_t)B * 200, -1, 1);
    BOTH(&p, be->sgemm_batched(be, true, false, Dh, 4, T, 3.0f, D(ctx), C, (long)T * C, 0,
                               D(qkv), 3 * C, (long)T * 3 * C, 0, 0.0f, D(pe) + 17, 4, 200, 0, B,
                               1));
    s_cmp(&p, &pe, "batched per-example (n_inner=1)", KERNEL_TOL);
    /* zero output stride: the products accumulate into one C, in order */
    s_buf_t acc = s_buf(&p, (size_t)T * Dh, -1, 1);
    BOTH(&p, be->sgemm_batched(be, true, false, T, Dh, T, 1.0f, D(S), T, TT, 0, D(ctx), C,
                               (long)T * C, 0, 1.0f, D(acc), Dh, 0, 0, B, 1));
    s_cmp(&p, &acc, "batched C stride 0 (accumulate)", KERNEL_TOL);
    S_FREE(&p, qkv), S_FREE(&p, S), S_FREE(&p, ctx), S_FREE(&p, pe), S_FREE(&p, acc);
    backend_destroy(&p.cpu);
}

/* ------------------------------------------------------------ encoder kernels */

static void s_encoder_kernels(backend_t *gpu)
{
    s_pair_t p = {backend_cpu_new(1), gpu};
    assert_non_null(p.cpu);
    int B = 3, T = 37, C = 70, V = 11, P = 40, H = 2; /* C, T not multiples of 32 */
    int N = B * T;
    int32_t *ids = malloc(sizeof(int32_t) * N), *types = malloc(sizeof(int32_t) * N);
    int32_t *mask = malloc(sizeof(int32_t) * N);
    assert_non_null(ids);
    assert_non_null(types);
    assert_non_null(mask);
    for (int i = 0; i < N; i++) {
        ids[i] = (i * 7 + 3) % V;
        types[i] = (i / 5) % 2;
        int e = i / T, t = i % T;
        mask[i] = e == 2 ? 0 : t < T - 4 * e; /* example 2: all padding */
    }
    s_ibuf_t dids = s_ibuf(&p, ids, N), dtypes = s_ibuf(&p, types, N), dmask = s_ibuf(&p, mask, N);
    s_buf_t wte = s_buf(&p, (size_t)V * C, -1, 1), wpe = s_buf(&p, (size_t)P * C, -1, 1);
    s_buf_t wtt = s_buf(&p, (size_t)2 * C, -1, 1), x = s_buf(&p, (size_t)N * C, -1, 1);
    BOTH(&p, be->embed(be, D(x), D(dids), D(dtypes), D(wte), D(wpe), D(wtt), B, T, C));
    s_cmp(&p, &x, "embed (token types)", KERNEL_TOL);
    s_buf_t x0 = s_buf(&p, (size_t)N * C, -1, 1);
    BOTH(&p, be->embed(be, D(x0), D(dids), NULL, D(wte), D(wpe), D(wtt), B, T, C));
    s_cmp(&p, &x0, "embed (no token types)", KERNEL_TOL);

    s_buf_t w = s_buf(&p, (size_t)C, 0.5f, 1.5f), bias = s_buf(&p, (size_t)C, -0.5f, 0.5f);
    s_buf_t rstd = s_buf(&p, (size_t)N, 0, 1), y = s_buf(&p, (size_t)N * C, -1, 1);
    BOTH(&p, be->add(be, D(x), D(x0), (size_t)N * C)); /* shift rows off zero mean */
    s_cmp(&p, &x, "add", KERNEL_TOL);
    BOTH(&p, be->layernorm_fwd(be, D(x), D(rstd), D(y), D(w), D(bias), N, C, 1e-12f));
    s_cmp(&p, &x, "layernorm_fwd xhat", KERNEL_TOL);
    s_cmp(&p, &rstd, "layernorm_fwd rstd", KERNEL_TOL);
    s_cmp(&p, &y, "layernorm_fwd y", KERNEL_TOL);
    BOTH(&p, be->layernorm_fwd(be, D(x0), D(rstd), NULL, D(w), D(bias), N, C, 1e-5f));
    s_cmp(&p, &x0, "layernorm_fwd without y", KERNEL_TOL);
    BOTH(&p, be->layernorm_affine(be, D(y), D(x0), D(w), D(bias), N, C));
    s_cmp(&p, &y, "layernorm_affine", KERNEL_TOL);
    s_buf_t dy = s_buf(&p, (size_t)N * C, -1, 1);
    BOTH(&p, be->layernorm_bwd(be, D(dy), D(dy), D(x0), D(rstd), D(w), N, C)); /* dx = dy */
    s_cmp(&p, &dy, "layernorm_bwd (in place)", KERNEL_TOL);

    /* bias on a column slice of wider rows (qkv thirds), then GELU */
    s_buf_t wide = s_buf(&p, (size_t)N * 3 * C, -3, 3);
    BOTH(&p, be->add_bias(be, D(wide) + C, 3 * C, D(bias), N, C));
    s_cmp(&p, &wide, "add_bias (ldy > C)", KERNEL_TOL);
    s_buf_t g = s_buf(&p, (size_t)N * 3 * C, -1, 1), dg = s_buf(&p, (size_t)N * 3 * C, -1, 1);
    BOTH(&p, be->gelu_fwd(be, D(g), D(dg), D(wide), (size_t)N * 3 * C));
    s_cmp(&p, &g, "gelu_fwd", KERNEL_TOL);
    s_cmp(&p, &dg, "gelu_fwd derivative", KERNEL_TOL);
    BOTH(&p, be->mul(be, D(g), D(dg), (size_t)N * 3 * C)); /* the backward's product */
    s_cmp(&p, &g, "mul", KERNEL_TOL);
    BOTH(&p, be->gelu_fwd(be, D(wide), NULL, D(wide), (size_t)N * 3 * C));
    s_cmp(&p, &wide, "gelu_fwd (in place, no derivative)", KERNEL_TOL);

    /* attention rows: one example with no key at all must give zeros */
    size_t rows = (size_t)B * H * T;
    s_buf_t S = s_buf(&p, rows * T, -4, 4), dP = s_buf(&p, rows * T, -1, 1);
    BOTH(&p, be->softmax_masked_fwd(be, D(S), D(dmask), B, H, T, 0.35f));
    s_cmp(&p, &S, "softmax_masked_fwd", KERNEL_TOL);
    BOTH(&p, be->softmax_bwd(be, D(dP), D(S), rows, T, 0.35f));
    s_cmp(&p, &dP, "softmax_bwd", KERNEL_TOL);

    s_buf_t pooled = s_buf(&p, (size_t)B * C, -1, 1), dh = s_buf(&p, (size_t)N * C, -1, 1);
    for (int cls = 0; cls < 2; cls++) {
        BOTH(&p, be->pool_fwd(be, D(pooled), D(y), D(dmask), B, T, C, cls));
        s_cmp(&p, &pooled, cls ? "pool_fwd cls" : "pool_fwd mean", KERNEL_TOL);
        BOTH(&p, be->pool_bwd(be, D(dh), D(pooled), D(dmask), B, T, C, cls));
        s_cmp(&p, &dh, cls ? "pool_bwd cls" : "pool_bwd mean", KERNEL_TOL);
    }

    int K = 5;
    int32_t labels[3] = {4, 0, 2};
    s_ibuf_t dlab = s_ibuf(&p, labels, 3);
    s_buf_t logits = s_buf(&p, (size_t)B * K, -6, 6), dlogits = s_buf(&p, (size_t)B * K, 0, 0);
    s_buf_t loss = s_buf(&p, 1, 0, 0);
    BOTH(&p, be->xent(be, D(loss), D(dlogits), D(logits), D(dlab), B, K, 1.0f / B));
    s_cmp(&p, &loss, "xent loss", KERNEL_TOL);
    s_cmp(&p, &dlogits, "xent dlogits", KERNEL_TOL);
    BOTH(&p, be->xent(be, D(loss), NULL, D(logits), D(dlab), B, K, 1.0f));
    s_cmp(&p, &loss, "xent loss without dlogits", KERNEL_TOL);

    /* memset0 and round trips */
    BOTH(&p, be->memset0(be, D(pooled), (size_t)B * C * sizeof(float)));
    s_cmp(&p, &pooled, "memset0", 0.5); /* both exactly 0: error 0 */

    S_FREE(&p, dids), S_FREE(&p, dtypes), S_FREE(&p, dmask), S_FREE(&p, wte), S_FREE(&p, wpe);
    S_FREE(&p, wtt), S_FREE(&p, x), S_FREE(&p, x0), S_FREE(&p, w), S_FREE(&p, bias);
    S_FREE(&p, rstd), S_FREE(&p, y), S_FREE(&p, dy), S_FREE(&p, wide), S_FREE(&p, g);
    S_FREE(&p, dg);
    S_FREE(&p, S), S_FREE(&p, dP), S_FREE(&p, pooled), S_FREE(&p, dh), S_FREE(&p, dlab);
    S_FREE(&p, logits), S_FREE(&p, dlogits), S_FREE(&p, loss);
    free(ids), free(types), free(mask);
    assert_int_equal(backend_status(p.gpu), 0);
    backend_destroy(&p.cpu);
}

/* ------------------------------------------------------------ optimizer and clipping */

static void s_optimizer_and_clipping(backend_t *gpu)
{
    s_pair_t p = {backend_cpu_new(1), gpu};
    assert_non_null(p.cpu);
    size_t n = 100003; /* more than one grid's worth of blocks per row for row_norms */
    int rows = 5;
    s_buf_t pr = s_buf(&p, n, -1, 1), gr = s_buf(&p, n, -0.1f, 0.1f);
    s_buf_t m = s_buf(&p, n, 0, 0), v = s_buf(&p, n, 0, 0);
    for (long step = 1; step <= 5; step++)
        BOTH(&p, be->adamw(be, D(pr), D(gr), D(m), D(v), n, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f,
                           step));
    s_cmp(&p, &pr, "adamw params (5 steps)", KERNEL_TOL);
    s_cmp(&p, &m, "adamw m", KERNEL_TOL);
    s_cmp(&p, &v, "adamw v", KERNEL_TOL);

    s_buf_t pe = s_buf(&p, n * rows, -1, 1), out = s_buf(&p, n, 0, 0);
    BOTH(&p, be->rows_sum(be, D(out), D(pe), rows, n, 0.2f));
    s_cmp(&p, &out, "rows_sum", KERNEL_TOL);
    float norms_c[5], norms_g[5], wts[5] = {1.0f, 0.25f, 0.0f, 0.5f, 0.125f};
    p.cpu->row_norms(p.cpu, norms_c, pe.c, rows, n);
    p.gpu->row_norms(p.gpu, norms_g, pe.g, rows, n);
    assert_int_equal(backend_status(p.gpu), 0);
    double err = s_rel_err(norms_g, norms_c, (size_t)rows);
    printf("  %-34s rel err %.3g\n", "row_norms", err);
    assert_true(err < 1e-6); /* both accumulate in double */
    BOTH(&p, be->rows_weighted_sum(be, D(out), D(pe), wts, rows, n));
    s_cmp(&p, &out, "rows_weighted_sum", KERNEL_TOL);
    S_FREE(&p, pr), S_FREE(&p, gr), S_FREE(&p, m), S_FREE(&p, v), S_FREE(&p, pe);
    S_FREE(&p, out);
    backend_destroy(&p.cpu);
}

/* ------------------------------------------------------------ tiny model */

static model_t *s_tiny(backend_t *be, model_pooling_t pool, unsigned targets, const float *tr,
                       size_t *n_tr)
{
    model_config_t cfg;
    model_config_default(&cfg);
    cfg.vocab_size = 30;
    cfg.hidden = 32;
    cfg.layers = 2;
    cfg.heads = 4;
    cfg.ffn = 64;
    cfg.max_position = 16;
    cfg.type_vocab = 2;
    cfg.num_labels = 3;
    cfg.pooling = pool;
    cfg.lora_r = 4;
    cfg.lora_alpha = 8;
    cfg.lora_targets = targets;
    model_t *m = model_new(&cfg, be);
    assert_non_null(m);
    model_base_init_random(m, 11, 0.2f);
    *n_tr = model_trainable_numel(m);
    if (tr)
        assert_int_equal(model_trainable_set(m, tr, *n_tr), 0);
    return m;
}

/* Compares a flat trainable-layout vector tensor by tensor (each within tol relative to that
 * tensor's own scale); returns the largest error. */
static double s_cmp_tensors(const model_t *m, const float *gpu, const float *cpu,
                            const char *what, double tol)
{
    double worst = 0.0;
    for (size_t i = 0; i < model_trainable_count(m); i++) {
        const model_tensor_t *t = model_trainable_tensor(m, i);
        double err = s_rel_err(gpu + t->offset, cpu + t->offset, t->numel);
        if (err > worst)
            worst = err;
        if (!(err < tol))
            fail_msg("%s %s: differs from the CPU backend by %.3g (tolerance %.1g)", what, t->name, err,
                     tol);
    }
    printf("  %-34s worst tensor rel err %.3g\n", what, worst);
    return worst;
}

static void s_model_parity(backend_t *gpu, model_pooling_t pool, unsigned targets)
{
    backend_t *cpu = backend_cpu_new(1);
    assert_non_null(cpu);
    size_t n = 0;
    model_t *mc = s_tiny(cpu, pool, targets, NULL, &n);
    /* trainable parameters with non-zero LoRA B, so every gradient is non-trivial */
    float *tr = malloc(n * sizeof(float));
    assert_non_null(tr);
    for (size_t i = 0; i < n; i++)
        tr[i] = s_uniform(-0.3f, 0.3f);
    assert_int_equal(model_trainable_set(mc, tr, n), 0);
    size_t n2 = 0;
    model_t *mg = s_tiny(gpu, pool, targets, tr, &n2);
    assert_int_equal(n, n2);

    enum { B = 4, T = 7, K = 3 };
    int32_t ids[B * T], types[B * T], mask[B * T], labels[B] = {0, 2, 1, 2};
    for (int i = 0; i < B * T; i++) {
        ids[i] = (i * 11 + 5) % 30;
        types[i] = (i % T) >= 4;
        mask[i] = (i % T) < T - (i / T); /* 0 .. 3 padded tokens */
    }
    model_batch_t in = {ids, types, mask, labels, B, T};
    float loss_c = 0, loss_g = 0, lc[B * K], lg[B * K];
    assert_int_equal(model_forward(mc, &in, &loss_c, lc), 0);
    assert_int_equal(model_forward(mg, &in, &loss_g, lg), 0);
    assert_int_equal(backend_status(gpu), 0);
    double err = s_rel_err(lg, lc, B * K);
    printf("  %-34s rel err %.3g\n", "logits", err);
    assert_true(err < MODEL_TOL);
    err = fabs((double)loss_g - loss_c) / fabs((double)loss_c);
    printf("  %-34s rel err %.3g (%.6f vs %.6f)\n", "loss", err, loss_g, loss_c);
    assert_true(err < MODEL_TOL);

    float *gc = malloc(n * sizeof(float)), *gg = malloc(n * sizeof(float));
    assert_non_null(gc);
    assert_non_null(gg);
    model_zero_grad(mc);
    model_zero_grad(mg);
    assert_int_equal(model_backward(mc), 0);
    assert_int_equal(model_backward(mg), 0);
    assert_int_equal(model_grad_get(mc, gc, n), 0);
    assert_int_equal(model_grad_get(mg, gg, n), 0);
    assert_int_equal(backend_status(gpu), 0);
    s_cmp_tensors(mc, gg, gc, "gradient", MODEL_TOL);

    /* per-example gradients, then the clipping helpers on them */
    float *pc = model_per_example_buffer(mc, B), *pg = model_per_example_buffer(mg, B);
    assert_non_null(pc);
    assert_non_null(pg);
    assert_int_equal(model_backward_per_example(mc, pc), 0);
    assert_int_equal(model_backward_per_example(mg, pg), 0);
    float *pg_host = malloc((size_t)B * n * sizeof(float));
    assert_non_null(pg_host);
    gpu->download(gpu, pg_host, pg, (size_t)B * n * sizeof(float));
    assert_int_equal(backend_status(gpu), 0);
    for (int e = 0; e < B; e++) {
        char what[48];
        snprintf(what, sizeof what, "per-example gradient %d", e);
        s_cmp_tensors(mc, pg_host + (size_t)e * n, pc + (size_t)e * n, what, MODEL_TOL);
    }
    float nc[B], ng[B];
    cpu->row_norms(cpu, nc, pc, B, n);
    gpu->row_norms(gpu, ng, pg, B, n);
    err = s_rel_err(ng, nc, B);
    printf("  %-34s rel err %.3g\n", "per-example norms", err);
    assert_true(err < MODEL_TOL);

    /* 20 AdamW steps from the same start: the trajectories stay together */
    adamw_config_t oc;
    adamw_config_default(&oc);
    oc.lr = 1e-2f;
    oc.warmup_steps = 2;
    oc.total_steps = 20;
    float first = loss_c;
    for (long s = 1; s <= 20; s++) {
        assert_int_equal(model_forward(mc, &in, &loss_c, NULL), 0);
        assert_int_equal(model_forward(mg, &in, &loss_g, NULL), 0);
        model_zero_grad(mc);
        model_zero_grad(mg);
        assert_int_equal(model_backward(mc), 0);
        assert_int_equal(model_backward(mg), 0);
        model_adamw_step(mc, &oc, s);
        model_adamw_step(mg, &oc, s);
    }
    assert_int_equal(backend_status(gpu), 0);
    printf("  training: CPU loss %.4f -> %.4f, %s %.4f\n", first, loss_c, gpu->name, loss_g);
    assert_true(loss_c < first); /* the comparison is between two runs that learn */
    assert_true(fabs((double)loss_g - loss_c) < MODEL_TOL * fabs((double)loss_c));
    assert_int_equal(model_trainable_get(mc, gc, n), 0);
    assert_int_equal(model_trainable_get(mg, gg, n), 0);
    s_cmp_tensors(mc, gg, gc, "parameters after 20 AdamW steps", MODEL_TOL);

    free(tr), free(gc), free(gg), free(pg_host);
    model_destroy(&mc);
    model_destroy(&mg);
    backend_destroy(&cpu);
}

/* The GPU tests: each takes the backend to hold against the CPU backend. */
typedef void (*s_case_fn)(backend_t *other);

static void s_model_mean_all(backend_t *other)
{
    s_model_parity(other, POOL_MEAN, LORA_ALL);
}

static void s_model_cls_query_value(backend_t *other)
{
    s_model_parity(other, POOL_CLS, LORA_QUERY | LORA_VALUE);
}

static void s_run_on_gpu(s_case_fn fn)
{
    NEED_GPU(gpu);
    fn(gpu);
    backend_destroy(&gpu);
}

static void test_sgemm(void **state) { (void)state; s_run_on_gpu(s_sgemm); }
static void test_sgemm_batched(void **state) { (void)state; s_run_on_gpu(s_sgemm_batched); }
static void test_encoder_kernels(void **state) { (void)state; s_run_on_gpu(s_encoder_kernels); }
static void test_optimizer_and_clipping(void **state)
{
    (void)state;
    s_run_on_gpu(s_optimizer_and_clipping);
}
static void test_model_parity_mean_all(void **state) { (void)state; s_run_on_gpu(s_model_mean_all); }
static void test_model_parity_cls_query_value(void **state)
{
    (void)state;
    s_run_on_gpu(s_model_cls_query_value);
}

/* Every case above with a 2-thread CPU backend in the GPU's place: runs on every machine, so
 * the cases' shapes and strides are exercised (under ASan in CI) where no GPU can check them,
 * and the CPU backend's results do not depend on its thread count. */
static void test_cases_cpu_threads(void **state)
{
    (void)state;
    s_case_fn cases[] = {s_sgemm, s_sgemm_batched, s_encoder_kernels, s_optimizer_and_clipping,
                         s_model_mean_all, s_model_cls_query_value};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        backend_t *other = backend_cpu_new(2);
        assert_non_null(other);
        cases[i](other);
        backend_destroy(&other);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_selection),
        cmocka_unit_test(test_cases_cpu_threads),
        cmocka_unit_test(test_sgemm),
        cmocka_unit_test(test_sgemm_batched),
        cmocka_unit_test(test_encoder_kernels),
        cmocka_unit_test(test_optimizer_and_clipping),
        cmocka_unit_test(test_model_parity_mean_all),
        cmocka_unit_test(test_model_parity_cls_query_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
