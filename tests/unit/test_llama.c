/* Llama decoder tests: the C decoder + LoRA against transformers + PEFT (logits, loss and
 * every LoRA gradient, tied and untied head, rope_theta 1e4 and 1e5; fixture from
 * tests/ref/make_llama_ref.py), RoPE scalings against transformers' inverse frequencies,
 * central finite differences over every trainable parameter of a tiny GQA model with Qwen2
 * biases, per-example gradients (weighted sum = batch gradient, each = that example alone),
 * the recompute_mlp mode, AdamW training, and bad input.
 * WHY: the decoder is the numerical core of LLM fine-tuning; an error here silently trains
 * the wrong thing, so each gradient tensor is compared and the largest error printed. */
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
#include "common/safetensors.h"
#include "node/engine/llama.h"

#define FIXDIR "tests/ref/fixtures/tiny_llama/"
#define REL_TOL 1e-4

/* ------------------------------------------------------------ helpers */

/* max |a - ref| / max(max |ref|, 1e-6) */
static double s_rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - ref[i]));
        mr = fmax(mr, fabs((double)ref[i]));
    }
    return md / fmax(mr, 1e-6);
}

static double s_dot_f(const float *a, const float *b, size_t n)
{
    double acc = 0.0;
    for (size_t i = 0; i < n; i++)
        acc += (double)a[i] * b[i];
    return acc;
}

static float *s_read(const safetensors_t *st, const char *name, size_t *n)
{
    const st_tensor_t *t = safetensors_find(st, name);
    if (t == NULL)
        fail_msg("fixture: tensor '%s' missing", name);
    size_t numel = 1;
    for (int i = 0; i < t->ndim; i++)
        numel *= (size_t)t->shape[i];
    float *buf = calloc(numel + 1, sizeof(float));
    assert_non_null(buf);
    assert_int_equal(safetensors_read_f32(st, t, buf), 0);
    if (n)
        *n = numel;
    return buf;
}

static double s_meta(const safetensors_t *st, const char *key)
{
    const char *v = safetensors_metadata(st, key);
    if (v == NULL)
        fail_msg("fixture: metadata '%s' missing", key);
    return atof(v);
}

static int32_t *s_read_i32(const safetensors_t *st, const char *name, size_t n_expect)
{
    size_t n = 0;
    float *f = s_read(st, name, &n);
    assert_int_equal(n, n_expect);
    int32_t *o = calloc(n, sizeof(int32_t));
    assert_non_null(o);
    for (size_t i = 0; i < n; i++)
        o[i] = (int32_t)f[i];
    free(f);
    return o;
}

/* ------------------------------------------------------------ reference */

typedef struct {
    safetensors_t *model, *ref;
    llama_config_t cfg;
    int B, T;
    int32_t *ids, *mask, *labels;
} s_fixture;

static void s_fixture_open(s_fixture *f, const char *variant)
{
    char path[256];
    memset(f, 0, sizeof *f);
    f->model = safetensors_open(FIXDIR "model.safetensors");
    if (f->model == NULL)
        fail_msg("fixture: %s", medfl_error_message());
    snprintf(path, sizeof path, FIXDIR "ref_%s.safetensors", variant);
    f->ref = safetensors_open(path);
    if (f->ref == NULL)
        fail_msg("fixture: %s", medfl_error_message());
    llama_config_t *c = &f->cfg;
    llama_config_default(c);
    c->vocab = (int)s_meta(f->model, "vocab_size");
    c->hidden = (int)s_meta(f->model, "hidden_size");
    c->ffn = (int)s_meta(f->model, "intermediate_size");
    c->n_layers = (int)s_meta(f->model, "num_hidden_layers");
    c->n_heads = (int)s_meta(f->model, "num_attention_heads");
    c->n_kv_heads = (int)s_meta(f->model, "num_key_value_heads");
    c->head_dim = (int)s_meta(f->model, "head_dim");
    c->max_seq = (int)s_meta(f->model, "max_position_embeddings");
    c->rms_eps = (float)s_meta(f->model, "rms_norm_eps");
    c->lora_r = (int)s_meta(f->model, "r");
    c->lora_alpha = (float)s_meta(f->model, "alpha");
    c->lora_targets = LLAMA_LORA_ALL;
    c->rope_theta = (float)s_meta(f->ref, "rope_theta");
    c->tie_embeddings = s_meta(f->ref, "tie_embeddings") != 0.0;
    f->B = (int)s_meta(f->model, "B");
    f->T = (int)s_meta(f->model, "T");
    size_t N = (size_t)f->B * f->T;
    f->ids = s_read_i32(f->model, "input_ids", N);
    f->mask = s_read_i32(f->model, "attention_mask", N);
    f->labels = s_read_i32(f->model, "labels", N);
}

static void s_fixture_close(s_fixture *f)
{
    safetensors_destroy(&f->model);
    safetensors_destroy(&f->ref);
    free(f->ids);
    free(f->mask);
    free(f->labels);
}

/* A model with every base tensor and every LoRA tensor from the fixture (each must exist). */
static llama_t *s_fixture_model(s_fixture *f, backend_t *be, bool recompute)
{
    f->cfg.recompute_mlp = recompute;
    llama_t *m = llama_new(&f->cfg, be);
    assert_non_null(m);
    for (size_t i = 0; i < llama_base_count(m); i++) {
        const model_tensor_t *t = llama_base_tensor(m, i);
        const safetensors_t *src = safetensors_find(f->model, t->name) ? f->model : f->ref;
        size_t n = 0;
        float *v = s_read(src, t->name, &n);
        assert_int_equal(llama_base_set(m, t->name, v, n), 0);
        free(v);
    }
    size_t ntr = llama_trainable_numel(m);
    float *p = calloc(ntr, sizeof(float));
    assert_non_null(p);
    for (size_t i = 0; i < llama_trainable_count(m); i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        size_t n = 0;
        float *v = s_read(f->model, t->name, &n);
        assert_int_equal(n, t->numel);
        memcpy(p + t->offset, v, n * sizeof(float));
        free(v);
    }
    assert_int_equal(llama_trainable_set(m, p, ntr), 0);
    free(p);
    return m;
}

static void s_reference(const char *variant, bool recompute)
{
    s_fixture f;
    s_fixture_open(&f, variant);
    backend_t *be = backend_cpu_new(2);
    assert_non_null(be);
    llama_t *m = s_fixture_model(&f, be, recompute);
    size_t N = (size_t)f.B * f.T, V = (size_t)f.cfg.vocab;
    llama_batch_t in = {f.ids, f.mask, f.labels, f.B, f.T};

    /* logits and loss (evaluation forward) */
    float *logits = calloc(N * V, sizeof(float)), loss = 0.0f;
    assert_int_equal(llama_forward(m, &in, &loss, logits), 0);
    size_t n_ref = 0;
    float *ref_logits = s_read(f.ref, "logits", &n_ref);
    assert_int_equal(n_ref, N * V);
    double e_logits = s_rel_err(logits, ref_logits, N * V);
    double ref_loss = s_meta(f.ref, "loss");
    double e_loss = fabs(loss - ref_loss) / fabs(ref_loss);
    printf("%s%s: logits rel err %.2e, loss %.8f vs %.8f (rel %.2e)\n", variant,
           recompute ? " (recompute_mlp)" : "", e_logits, (double)loss, ref_loss, e_loss);
    assert_true(e_logits < REL_TOL);
    assert_true(e_loss < 1e-5);

    /* training forward gives the same loss; gradients of every LoRA tensor */
    float loss_train = 0.0f;
    assert_int_equal(llama_forward_train(m, &in, &loss_train), 0);
    assert_true(fabs(loss_train - loss) <= 1e-6 * fabs(loss));
    llama_zero_grad(m);
    assert_int_equal(llama_backward(m), 0);
    size_t ntr = llama_trainable_numel(m);
    float *g = calloc(ntr, sizeof(float));
    assert_int_equal(llama_grad_get(m, g, ntr), 0);
    double worst = 0.0;
    for (size_t i = 0; i < llama_trainable_count(m); i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        char name[256];
        snprintf(name, sizeof name, "grad.%s", t->name);
        size_t n = 0;
        float *rg = s_read(f.ref, name, &n);
        assert_int_equal(n, t->numel);
        double e = s_rel_err(g + t->offset, rg, n), mx = 0.0;
        for (size_t j = 0; j < n; j++)
            mx = fmax(mx, fabs(rg[j]));
        assert_true(mx > 0.0); /* non-zero B: every gradient is exercised */
        if (!(e < REL_TOL))
            printf("  %s: rel err %.2e\n", t->name, e);
        worst = fmax(worst, e);
        assert_true(e < REL_TOL);
        free(rg);
    }
    printf("%s%s: %zu LoRA gradient tensors, worst rel err %.2e\n", variant,
           recompute ? " (recompute_mlp)" : "", llama_trainable_count(m), worst);
    assert_int_equal(llama_trainable_count(m), 2 * 7 * (size_t)f.cfg.n_layers);
    free(g);
    free(ref_logits);
    free(logits);
    llama_destroy(&m);
    backend_destroy(&be);
    s_fixture_close(&f);
}

static void test_reference_tied(void **state)
{
    (void)state;
    s_reference("tied", false);
}

static void test_reference_untied(void **state)
{
    (void)state;
    s_reference("untied", false);
}

static void test_reference_recompute_mlp(void **state)
{
    (void)state;
    s_reference("untied", true);
}

/* RoPE inverse frequencies of the linear and llama3 scalings equal transformers'. */
static void test_rope_scaling(void **state)
{
    (void)state;
    s_fixture f;
    s_fixture_open(&f, "untied");
    backend_t *be = backend_cpu_new(1);
    const char *keys[2] = {"rope.linear.inv_freq", "rope.llama3.inv_freq"};
    for (int k = 0; k < 2; k++) {
        llama_config_t c = f.cfg;
        if (k == 0) {
            c.rope_type = LLAMA_ROPE_LINEAR;
            c.rope_factor = (float)s_meta(f.model, "linear_factor");
        } else {
            c.rope_type = LLAMA_ROPE_LLAMA3;
            c.rope_factor = (float)s_meta(f.model, "llama3_factor");
            c.rope_low_freq_factor = (float)s_meta(f.model, "llama3_low");
            c.rope_high_freq_factor = (float)s_meta(f.model, "llama3_high");
            c.rope_original_max_pos = (int)s_meta(f.model, "llama3_original_max");
        }
        llama_t *m = llama_new(&c, be);
        assert_non_null(m);
        size_t n = 0;
        float *ref = s_read(f.model, keys[k], &n);
        float got[64];
        assert_int_equal(n, (size_t)c.head_dim / 2);
        assert_int_equal(llama_rope_inv_freq(m, got, (int)n), 0);
        double e = s_rel_err(got, ref, n);
        printf("%s: rel err %.2e\n", keys[k], e);
        assert_true(e < 1e-6);
        /* the llama3 bands really change something (else the check proves nothing) */
        llama_config_t plain = f.cfg;
        llama_t *p = llama_new(&plain, be);
        float base[64];
        assert_int_equal(llama_rope_inv_freq(p, base, (int)n), 0);
        assert_true(s_rel_err(base, ref, n) > 1e-3);
        free(ref);
        llama_destroy(&p);
        llama_destroy(&m);
    }
    backend_destroy(&be);
    s_fixture_close(&f);
}

/* ------------------------------------------------------------ finite differences */

static uint64_t s_lcg = 88172645463325252ull;
static float s_randn(void)
{
    double u1, u2;
    s_lcg ^= s_lcg << 13, s_lcg ^= s_lcg >> 7, s_lcg ^= s_lcg << 17;
    u1 = ((double)(s_lcg >> 11) + 0.5) / 9007199254740992.0;
    s_lcg ^= s_lcg << 13, s_lcg ^= s_lcg >> 7, s_lcg ^= s_lcg << 17;
    u2 = ((double)(s_lcg >> 11) + 0.5) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* A tiny GQA decoder (3 heads sharing 1 KV head, head_dim 4, odd sizes), Qwen2 biases,
 * untied head, all seven targets, random base and LoRA with B != 0. */
static llama_t *s_tiny(backend_t *be, bool recompute, float **p_out)
{
    llama_config_t c;
    llama_config_default(&c);
    c.n_layers = 2;
    c.hidden = 10;
    c.n_heads = 3;
    c.n_kv_heads = 1;
    c.head_dim = 4;
    c.ffn = 14;
    c.vocab = 13;
    c.max_seq = 16;
    c.rope_theta = 100.0f; /* large angles already at t = 1..5 */
    c.tie_embeddings = false;
    c.qkv_bias = true;
    c.lora_r = 2;
    c.lora_alpha = 3.0f;
    c.lora_targets = LLAMA_LORA_ALL;
    c.recompute_mlp = recompute;
    llama_t *m = llama_new(&c, be);
    assert_non_null(m);
    s_lcg = 88172645463325252ull; /* same parameters in every test that uses it */
    llama_base_init_random(m, 7, 0.5f);
    llama_init_trainable(m, 3);
    size_t n = llama_trainable_numel(m);
    float *p = calloc(n, sizeof(float));
    assert_int_equal(llama_trainable_get(m, p, n), 0);
    for (size_t i = 0; i < llama_trainable_count(m); i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        if (strstr(t->name, "lora_B"))
            for (size_t j = 0; j < t->numel; j++)
                p[t->offset + j] = 0.3f * s_randn();
    }
    assert_int_equal(llama_trainable_set(m, p, n), 0);
    *p_out = p;
    return m;
}

enum { FD_B = 3, FD_T = 6 };
/* example 0: full, prompt 2; example 1: 4 real tokens, prompt 1; example 2: prompt only
 * (no labelled position: contributes nothing, per-example row zero) */
static const int32_t s_ids[FD_B * FD_T] = {1, 5, 9, 3, 12, 7, 2, 11, 4, 8, 0, 0,
                                           6, 3, 10, 0, 0, 0};
static const int32_t s_mask[FD_B * FD_T] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0,
                                            1, 1, 1, 0, 0, 0};
static const int32_t s_labels[FD_B * FD_T] = {-100, -100, 9, 3, 12, 7, -100, 11, 4, 8,
                                              -100, -100, -100, -100, -100, -100, -100, -100};

static double s_central(llama_t *m, const llama_batch_t *in, float *p, size_t n, size_t k,
                        float h)
{
    float orig = p[k], lp = 0, lm = 0;
    p[k] = orig + h;
    assert_int_equal(llama_trainable_set(m, p, n), 0);
    assert_int_equal(llama_forward(m, in, &lp, NULL), 0);
    p[k] = orig - h;
    assert_int_equal(llama_trainable_set(m, p, n), 0);
    assert_int_equal(llama_forward(m, in, &lm, NULL), 0);
    p[k] = orig;
    return ((double)lp - lm) / (2.0 * h);
}

/* Central differences over EVERY trainable parameter. The forward is float32, so the step
 * cannot be small: h = 2e-2 and 1e-2 combined by Richardson extrapolation cancel the O(h^2)
 * truncation error, leaving O(h^4) + rounding. */
static void s_fd_check(bool recompute)
{
    backend_t *be = backend_cpu_new(1);
    float *p = NULL;
    llama_t *m = s_tiny(be, recompute, &p);
    size_t n = llama_trainable_numel(m);
    float *g = calloc(n, sizeof(float));
    llama_batch_t in = {s_ids, s_mask, s_labels, FD_B, FD_T};
    float loss0;
    assert_int_equal(llama_forward_train(m, &in, &loss0), 0);
    llama_zero_grad(m);
    assert_int_equal(llama_backward(m), 0);
    assert_int_equal(llama_grad_get(m, g, n), 0);

    const float eps = 2e-2f;
    double num = 0.0, den = 0.0;
    size_t checked = 0, bad = 0;
    for (size_t i = 0; i < llama_trainable_count(m); i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        double tworst = 0.0;
        for (size_t j = 0; j < t->numel; j++) {
            size_t k = t->offset + j;
            double fd = s_central(m, &in, p, n, k, eps);
            double fd_half = s_central(m, &in, p, n, k, eps / 2);
            fd = (4.0 * fd_half - fd) / 3.0;
            double d = fabs(fd - g[k]);
            num += d * d;
            den += (double)g[k] * g[k];
            tworst = fmax(tworst, d);
            if (!(d <= 1e-4 + 1e-2 * fabs(g[k]))) {
                printf("fd: %s[%zu]: finite difference %.6g, analytic %.6g\n", t->name, j, fd,
                       (double)g[k]);
                bad++;
            }
            checked++;
        }
        printf("fd %-60s max |fd - grad| %.2e\n", t->name, tworst);
    }
    double rel = sqrt(num / fmax(den, 1e-30));
    printf("fd%s: %zu parameters, %zu outside tolerance, relative L2 error %.3g (loss %.4f)\n",
           recompute ? " (recompute_mlp)" : "", checked, bad, rel, (double)loss0);
    assert_int_equal(checked, n); /* every trainable parameter was perturbed */
    assert_int_equal(llama_trainable_count(m), 2 * 2 * 7);
    assert_true(den > 0.0);
    assert_int_equal(bad, 0);
    assert_true(rel < 1e-3);
    free(p);
    free(g);
    llama_destroy(&m);
    backend_destroy(&be);
}

static void test_finite_differences(void **state)
{
    (void)state;
    s_fd_check(false);
}

static void test_finite_differences_recompute(void **state)
{
    (void)state;
    s_fd_check(true);
}

/* ------------------------------------------------------------ per-example gradients */

static void test_per_example(void **state)
{
    (void)state;
    backend_t *be = backend_cpu_new(2);
    float *p = NULL;
    llama_t *m = s_tiny(be, false, &p);
    size_t n = llama_trainable_numel(m);
    llama_batch_t in = {s_ids, s_mask, s_labels, FD_B, FD_T};
    float loss;
    assert_int_equal(llama_forward_train(m, &in, &loss), 0);
    llama_zero_grad(m);
    assert_int_equal(llama_backward(m), 0);
    float *g = calloc(n, sizeof(float)), *pe = calloc((size_t)FD_B * n, sizeof(float));
    float *sum = calloc(n, sizeof(float)), *alone = calloc(n, sizeof(float));
    assert_int_equal(llama_grad_get(m, g, n), 0);
    assert_int_equal(llama_backward_per_example(m, pe), 0);
    int n_e[FD_B], total = 0;
    for (int e = 0; e < FD_B; e++) {
        n_e[e] = llama_labelled_count(m, e);
        total += n_e[e];
    }
    assert_int_equal(n_e[0], 4);
    assert_int_equal(n_e[1], 3);
    assert_int_equal(n_e[2], 0);
    for (int e = 0; e < FD_B; e++)
        for (size_t j = 0; j < n; j++)
            sum[j] += (float)n_e[e] / (float)total * pe[(size_t)e * n + j];
    double e_sum = s_rel_err(sum, g, n);
    printf("per-example: weighted sum vs batch gradient rel err %.2e\n", e_sum);
    assert_true(e_sum < 1e-5);
    /* each row = the gradient of that example alone (a batch of one); the last is zero */
    for (int e = 0; e < FD_B; e++) {
        llama_batch_t one = {s_ids + e * FD_T, s_mask + e * FD_T, s_labels + e * FD_T, 1, FD_T};
        if (n_e[e] == 0) {
            assert_int_equal(llama_forward_train(m, &one, NULL), -1); /* no labelled position */
            for (size_t j = 0; j < n; j++)
                assert_true(pe[(size_t)e * n + j] == 0.0f);
            continue;
        }
        assert_int_equal(llama_forward_train(m, &one, NULL), 0);
        llama_zero_grad(m);
        assert_int_equal(llama_backward(m), 0);
        assert_int_equal(llama_grad_get(m, alone, n), 0);
        double err = s_rel_err(pe + (size_t)e * n, alone, n);
        printf("per-example: example %d vs alone rel err %.2e\n", e, err);
        assert_true(err < 1e-5);
    }
    free(p);
    free(g);
    free(pe);
    free(sum);
    free(alone);
    llama_destroy(&m);
    backend_destroy(&be);
}

/* ------------------------------------------------------------ DP-SGD book-keeping */

/* Per-example norms and the clipped sum from one backward (llama_per_example_norms +
 * llama_clipped_sum) against llama_backward_per_example's rows, by each norm method: the
 * norms within 1e-5 relative, sum_e min(1, C/||g_e||) g_e within 1e-5 relative, with C
 * between the two non-zero norms so that one example is clipped and one is not. */
static void s_dp_check(llama_norm_method_t method, bool recompute)
{
    backend_t *be = backend_cpu_new(2);
    float *p = NULL;
    llama_t *m = s_tiny(be, recompute, &p);
    size_t n = llama_trainable_numel(m);
    llama_batch_t in = {s_ids, s_mask, s_labels, FD_B, FD_T};
    float *pe = calloc((size_t)FD_B * n, sizeof(float)), *ref = calloc(n, sizeof(float));
    float *got = calloc(n, sizeof(float));
    assert_int_equal(llama_forward_train(m, &in, NULL), 0);
    assert_int_equal(llama_backward_per_example(m, pe), 0);
    double ref_norm[FD_B];
    for (int e = 0; e < FD_B; e++)
        ref_norm[e] = sqrt(s_dot_f(pe + (size_t)e * n, pe + (size_t)e * n, n));
    assert_true(ref_norm[0] > 0 && ref_norm[1] > 0 && ref_norm[0] != ref_norm[1]);
    assert_true(ref_norm[2] == 0.0);

    /* a clipped sum before any norms: a state error, not stale data */
    float scales[FD_B] = {1, 1, 1}, norms[FD_B];
    assert_int_equal(llama_clipped_sum(m, scales), -1);
    llama_set_norm_method(m, method);
    assert_int_equal(llama_per_example_norms(m, norms), 0);
    int n_on = 0;
    for (size_t i = 0; i < llama_trainable_count(m); i++)
        n_on += strstr(llama_trainable_tensor(m, i)->name, "lora_A") != NULL;
    if (method == LLAMA_NORMS_GRAM)
        assert_int_equal(llama_norms_gram_count(m), n_on);
    else /* MATERIALISE, and AUTO at this T and r (see test_dp_norms_auto_choice) */
        assert_int_equal(llama_norms_gram_count(m), 0);
    for (int e = 0; e < FD_B; e++) {
        double err = ref_norm[e] ? fabs(norms[e] - ref_norm[e]) / ref_norm[e] : norms[e];
        printf("dp method %d: norm %d %.6g vs %.6g rel err %.2e\n", (int)method, e, norms[e],
               ref_norm[e], err);
        assert_true(err < 1e-5);
    }
    double C = sqrt(ref_norm[0] * ref_norm[1]); /* clips exactly the larger one */
    for (int e = 0; e < FD_B; e++) {
        scales[e] = norms[e] > C ? (float)(C / norms[e]) : 1.0f;
        double w = ref_norm[e] > C ? C / ref_norm[e] : 1.0;
        for (size_t j = 0; j < n; j++)
            ref[j] += (float)(w * pe[(size_t)e * n + j]);
    }
    assert_true((scales[0] < 1.0f) != (scales[1] < 1.0f));
    llama_zero_grad(m);
    assert_int_equal(llama_clipped_sum(m, scales), 0);
    assert_int_equal(llama_grad_get(m, got, n), 0);
    double err = s_rel_err(got, ref, n);
    printf("dp method %d: clipped sum rel err %.2e\n", (int)method, err);
    assert_true(err < 1e-5);
    /* the book is consumed; bad scales are refused with the example named */
    assert_int_equal(llama_clipped_sum(m, scales), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    assert_int_equal(llama_per_example_norms(m, norms), 0);
    scales[1] = NAN;
    assert_int_equal(llama_clipped_sum(m, scales), -1);
    assert_non_null(strstr(medfl_error_message(), "example 1"));
    assert_int_equal(llama_per_example_norms(m, NULL), -1);
    /* a new forward invalidates the book */
    assert_int_equal(llama_per_example_norms(m, norms), 0);
    assert_int_equal(llama_forward(m, &in, NULL, NULL), 0);
    scales[1] = 1.0f;
    assert_int_equal(llama_clipped_sum(m, scales), -1);
    free(p);
    free(pe);
    free(ref);
    free(got);
    llama_destroy(&m);
    backend_destroy(&be);
}

static void test_dp_norms_materialise(void **state)
{
    (void)state;
    s_dp_check(LLAMA_NORMS_MATERIALISE, false);
}

static void test_dp_norms_gram(void **state)
{
    (void)state;
    s_dp_check(LLAMA_NORMS_GRAM, false);
}

static void test_dp_norms_auto_recompute(void **state)
{
    (void)state;
    s_dp_check(LLAMA_NORMS_AUTO, true);
}

/* AUTO picks per adapter: at T = 6, r = 2 the Gram side (36 (out + in + 4)) wins over
 * materialising (24 (out + in)) for none; with r = 8 and T = 2 it wins for every adapter. */
static void test_dp_norms_auto_choice(void **state)
{
    (void)state;
    backend_t *be = backend_cpu_new(1);
    float *p = NULL;
    llama_t *m = s_tiny(be, false, &p);
    llama_batch_t in = {s_ids, s_mask, s_labels, FD_B, FD_T};
    float norms[FD_B];
    assert_int_equal(llama_forward_train(m, &in, NULL), 0);
    assert_int_equal(llama_per_example_norms(m, norms), 0);
    assert_int_equal(llama_norms_gram_count(m), 0);
    free(p);
    llama_destroy(&m);

    llama_config_t c;
    llama_config_default(&c);
    c.n_layers = 1, c.hidden = 16, c.n_heads = 2, c.n_kv_heads = 2, c.ffn = 24, c.vocab = 13;
    c.max_seq = 8, c.lora_r = 8, c.lora_targets = LLAMA_LORA_Q | LLAMA_LORA_V;
    m = llama_new(&c, be);
    assert_non_null(m);
    llama_base_init_random(m, 1, 0.3f);
    llama_init_trainable(m, 2);
    int32_t ids[4] = {1, 2, 3, 4}, lab[4] = {-100, 2, -100, 4};
    llama_batch_t b2 = {ids, NULL, lab, 2, 2};
    float nn[2];
    assert_int_equal(llama_forward_train(m, &b2, NULL), 0);
    assert_int_equal(llama_per_example_norms(m, nn), 0);
    assert_int_equal(llama_norms_gram_count(m), 2);
    assert_true(nn[0] > 0 && nn[1] > 0);
    llama_destroy(&m);
    backend_destroy(&be);
}

/* ------------------------------------------------------------ training */

/* A few AdamW steps on a fixed batch reduce the loss (forward_train, backward, step), and
 * evaluation forwards do not disturb training state. */
static void test_training_reduces_loss(void **state)
{
    (void)state;
    backend_t *be = backend_cpu_new(2);
    float *p = NULL;
    llama_t *m = s_tiny(be, false, &p);
    llama_init_trainable(m, 11); /* PEFT init: B = 0, the adapted model equals the base */
    llama_batch_t in = {s_ids, s_mask, s_labels, FD_B, FD_T};
    adamw_config_t oc;
    adamw_config_default(&oc);
    oc.lr = 2e-2f;
    float first = 0, loss = 0, eval = 0;
    for (long s = 1; s <= 30; s++) {
        assert_int_equal(llama_forward_train(m, &in, &loss), 0);
        if (s == 1) {
            first = loss;
            assert_int_equal(llama_forward(m, &in, &eval, NULL), 0);
            assert_true(eval == loss);
            /* backward needs the training forward: the evaluation one cleared it */
            assert_int_equal(llama_backward(m), -1);
            assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
            assert_int_equal(llama_forward_train(m, &in, &loss), 0);
        }
        llama_zero_grad(m);
        assert_int_equal(llama_backward(m), 0);
        llama_adamw_step(m, &oc, s);
    }
    printf("training: loss %.4f -> %.4f after 30 steps\n", (double)first, (double)loss);
    assert_true(loss < 0.8f * first);
    free(p);
    llama_destroy(&m);
    backend_destroy(&be);
}

/* ------------------------------------------------------------ layout */

static void test_layout(void **state)
{
    (void)state;
    backend_t *be = backend_cpu_new(1);
    llama_config_t c;
    llama_config_default(&c); /* SmolLM2-135M: 30 layers, 576, 9/3 heads, 1536, 49152 */
    c.n_layers = 2;           /* sizes per layer as the real model, fewer layers */
    c.lora_targets = LLAMA_LORA_Q | LLAMA_LORA_V;
    llama_t *m = llama_new(&c, be);
    assert_non_null(m);
    const model_tensor_t *t = llama_base_find(m, "model.layers.1.self_attn.k_proj.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 192);
    assert_int_equal(t->shape[1], 576);
    assert_null(llama_base_find(m, "lm_head.weight")); /* tied */
    assert_null(llama_base_find(m, "model.layers.0.self_attn.q_proj.bias"));
    size_t per_layer = 2 * 576 + 576 * 576 * 2 + 192 * 576 * 2 + 3 * 1536 * 576;
    assert_int_equal(llama_base_numel(m), 49152 * 576 + 2 * per_layer + 576);
    /* LoRA: q A [8, 576], B [576, 8]; v A [8, 576], B [192, 8]; packed, PEFT names */
    assert_int_equal(llama_trainable_count(m), 8);
    assert_int_equal(llama_trainable_numel(m), 2 * (8 * 576 + 576 * 8 + 8 * 576 + 192 * 8));
    t = llama_trainable_tensor(m, 3);
    assert_string_equal(t->name, "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight");
    assert_int_equal(t->shape[0], 192);
    assert_int_equal(t->offset, 8 * 576 + 576 * 8 + 8 * 576);
    /* PEFT init: A uniform within 1/sqrt(in), not all zero; B exactly zero */
    llama_init_trainable(m, 5);
    size_t n = llama_trainable_numel(m);
    float *p = calloc(n, sizeof(float));
    assert_int_equal(llama_trainable_get(m, p, n), 0);
    for (size_t i = 0; i < llama_trainable_count(m); i++) {
        t = llama_trainable_tensor(m, i);
        double mx = 0.0;
        for (size_t j = 0; j < t->numel; j++)
            mx = fmax(mx, fabs(p[t->offset + j]));
        if (strstr(t->name, "lora_B"))
            assert_true(mx == 0.0);
        else
            assert_true(mx > 0.5 / sqrt(576.0) && mx <= 1.0 / sqrt(576.0));
    }
    free(p);
    llama_destroy(&m);

    /* Qwen2 shape: biases and an untied head appear in the table */
    c.qkv_bias = true;
    c.tie_embeddings = false;
    m = llama_new(&c, be);
    assert_non_null(m);
    assert_non_null(llama_base_find(m, "model.layers.0.self_attn.v_proj.bias"));
    assert_non_null(llama_base_find(m, "lm_head.weight"));
    llama_destroy(&m);

    unsigned mask = 0;
    assert_int_equal(llama_lora_targets_parse("q_proj, v_proj", &mask), 0);
    assert_int_equal(mask, LLAMA_LORA_Q | LLAMA_LORA_V);
    assert_int_equal(llama_lora_targets_parse("gate,up,down,o,k", &mask), 0);
    assert_int_equal(mask, LLAMA_LORA_ALL & ~(unsigned)(LLAMA_LORA_Q | LLAMA_LORA_V));
    assert_int_equal(llama_lora_targets_parse("all", &mask), 0);
    assert_int_equal(mask, LLAMA_LORA_ALL);
    assert_int_equal(llama_lora_targets_parse("query", &mask), -1);
    assert_non_null(strstr(medfl_error_message(), "'query'"));
    assert_int_equal(llama_lora_targets_parse(" , ", &mask), -1);
    backend_destroy(&be);
}

/* ------------------------------------------------------------ bad input */

static void s_expect_batch_error(llama_t *m, const llama_batch_t *in, const char *needle)
{
    float loss;
    assert_int_equal(llama_forward_train(m, in, &loss), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    if (strstr(medfl_error_message(), needle) == NULL)
        fail_msg("expected '%s' in: %s", needle, medfl_error_message());
}

static void test_bad_input(void **state)
{
    (void)state;
    backend_t *be = backend_cpu_new(1);
    llama_config_t c;
    llama_config_default(&c);
    c.n_layers = 1;
    c.hidden = 8;
    c.n_heads = 2;
    c.n_kv_heads = 2;
    c.head_dim = 0;
    c.ffn = 8;
    c.vocab = 10;
    c.max_seq = 4;
    llama_config_t bad = c;
    bad.n_kv_heads = 3;
    assert_null(llama_new(&bad, be));
    assert_non_null(strstr(medfl_error_message(), "n_kv_heads"));
    bad = c;
    bad.head_dim = 3;
    assert_null(llama_new(&bad, be));
    assert_non_null(strstr(medfl_error_message(), "head_dim"));
    bad = c;
    bad.rope_theta = NAN;
    assert_null(llama_new(&bad, be));
    assert_non_null(strstr(medfl_error_message(), "rope_theta"));
    bad = c;
    bad.rope_type = LLAMA_ROPE_LLAMA3;
    bad.rope_factor = 8.0f; /* low/high/original missing */
    assert_null(llama_new(&bad, be));
    assert_non_null(strstr(medfl_error_message(), "llama3"));
    bad = c;
    bad.lora_targets = 0x80;
    assert_null(llama_new(&bad, be));
    assert_non_null(strstr(medfl_error_message(), "lora_targets"));
    bad = c;
    bad.vocab = 1 << 30;
    assert_null(llama_new(&bad, be));

    llama_t *m = llama_new(&c, be);
    assert_non_null(m);
    llama_base_init_random(m, 1, 0.1f);
    llama_init_trainable(m, 1);

    /* base tensors: unknown name, wrong size, non-finite value (the message names the
     * tensor and the element index, never the value) */
    float w[64] = {0};
    assert_int_equal(llama_base_set(m, "model.layers.7.mlp.up_proj.weight", w, 64), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_int_equal(llama_base_set(m, "model.norm.weight", w, 7), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    w[3] = NAN;
    assert_int_equal(llama_base_set(m, "model.norm.weight", w, 8), -1);
    assert_non_null(strstr(medfl_error_message(), "element 3"));
    size_t ntr = llama_trainable_numel(m);
    float *p = calloc(ntr, sizeof(float));
    assert_int_equal(llama_trainable_set(m, p, ntr - 1), -1);
    p[1] = INFINITY;
    assert_int_equal(llama_trainable_set(m, p, ntr), -1);
    free(p);

    assert_int_equal(llama_backward(m), -1); /* nothing to go back through */
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);

    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int32_t mask[8] = {1, 1, 1, 1, 1, 1, 0, 0};
    int32_t labels[8] = {-100, 2, 3, 4, -100, 6, -100, -100};
    llama_batch_t ok = {ids, mask, labels, 2, 4};
    float loss;
    assert_int_equal(llama_forward_train(m, &ok, &loss), 0);
    assert_true(isfinite(loss));

    llama_batch_t in = ok;
    in.labels = NULL;
    s_expect_batch_error(m, &in, "needs labels");
    in = ok;
    in.T = 5;
    in.B = 1;
    s_expect_batch_error(m, &in, "max_seq");
    in = ok;
    in.B = 0;
    s_expect_batch_error(m, &in, "shape");
    ids[5] = 10;
    s_expect_batch_error(m, &ok, "row 1 position 1: token id outside vocabulary");
    ids[5] = -1;
    s_expect_batch_error(m, &ok, "token id outside");
    ids[5] = 6;
    mask[2] = 2;
    s_expect_batch_error(m, &ok, "row 0 position 2: mask is not 0 or 1");
    mask[2] = 0; /* 1 1 0 1: a real token after padding */
    labels[2] = -100;
    s_expect_batch_error(m, &ok, "row 0 position 3: a real token after padding");
    mask[2] = 1;
    labels[2] = 3;
    labels[3] = 10;
    s_expect_batch_error(m, &ok, "row 0 position 3: label outside");
    labels[3] = 4;
    labels[7] = 8;
    s_expect_batch_error(m, &ok, "row 1 position 3: label on a padding token");
    labels[7] = -100;
    int32_t none[8] = {-100, -100, -100, -100, -100, -100, -100, -100};
    in = ok;
    in.labels = none;
    s_expect_batch_error(m, &in, "no labelled position");
    /* only position 0 labelled: HF never predicts it either */
    none[0] = 3;
    s_expect_batch_error(m, &in, "no labelled position");

    /* the evaluation forward takes no labels, and an all-padding sequence is legal there */
    int32_t empty_mask[8] = {1, 1, 1, 1, 0, 0, 0, 0};
    in = (llama_batch_t){ids, empty_mask, NULL, 2, 4};
    float *logits = calloc(8 * 10, sizeof(float));
    assert_int_equal(llama_forward(m, &in, NULL, logits), 0);
    for (int i = 0; i < 80; i++)
        assert_true(isfinite(logits[i]));
    free(logits);
    /* after failures the model still works */
    assert_int_equal(llama_forward_train(m, &ok, &loss), 0);
    assert_int_equal(llama_backward(m), 0);
    llama_destroy(&m);
    llama_destroy(&m); /* safe twice */
    backend_destroy(&be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_tied),
        cmocka_unit_test(test_reference_untied),
        cmocka_unit_test(test_reference_recompute_mlp),
        cmocka_unit_test(test_rope_scaling),
        cmocka_unit_test(test_finite_differences),
        cmocka_unit_test(test_finite_differences_recompute),
        cmocka_unit_test(test_per_example),
        cmocka_unit_test(test_dp_norms_materialise),
        cmocka_unit_test(test_dp_norms_gram),
        cmocka_unit_test(test_dp_norms_auto_recompute),
        cmocka_unit_test(test_dp_norms_auto_choice),
        cmocka_unit_test(test_training_reduces_loss),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
