/* Model engine tests: the C encoder + LoRA + head against PyTorch/PEFT (logits, loss, every
 * LoRA and head gradient, pooled embeddings; fixture from tests/ref/make_model_ref.py), a
 * central finite-difference check of every trainable parameter of a tiny model with all six
 * LoRA targets, per-example gradients (sum = batch gradient, and each = the gradient of that
 * example alone), AdamW and its schedule, and bad input.
 * WHY: the model is the numerical core of every node; an error here silently trains the
 * wrong thing, so each gradient tensor is compared and the largest error printed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/engine/backend.h"
#include "common/error.h"
#include "node/engine/model.h"

#define FIXTURE "tests/ref/fixtures/model_tiny.h5"
#define REL_TOL 1e-4

/* ------------------------------------------------------------ tiny HDF5 reader (test only) */

static long s_attr_long(hid_t obj, const char *name)
{
    long v = 0;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    assert_true(a >= 0);
    assert_true(H5Aread(a, H5T_NATIVE_LONG, &v) >= 0);
    H5Aclose(a);
    return v;
}

static double s_attr_double(hid_t obj, const char *name)
{
    double v = 0;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    assert_true(a >= 0);
    assert_true(H5Aread(a, H5T_NATIVE_DOUBLE, &v) >= 0);
    H5Aclose(a);
    return v;
}

/* Reads a whole dataset converted to mem_type; returns malloc'd data, *n elements. */
static void *s_read(hid_t f, const char *path, hid_t mem_type, size_t elem, size_t *n)
{
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0)
        fail_msg("fixture: dataset '%s' missing", path);
    hid_t sp = H5Dget_space(d);
    hssize_t cnt = H5Sget_simple_extent_npoints(sp);
    assert_true(cnt >= 0);
    void *buf = calloc((size_t)cnt + 1, elem);
    assert_non_null(buf);
    assert_true(H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Sclose(sp);
    H5Dclose(d);
    if (n)
        *n = (size_t)cnt;
    return buf;
}

/* A flat tensor set: names joined by '\n', numel per tensor, concatenated values. */
typedef struct {
    char **names;
    size_t count;
    int64_t *numel;
    float *values;
    size_t total;
} s_set_t;

static void s_set_read(hid_t f, const char *group, const char *values_key, s_set_t *s)
{
    char path[128];
    size_t nbytes = 0, nn = 0;
    snprintf(path, sizeof path, "%s/names", group);
    char *joined = s_read(f, path, H5T_NATIVE_UCHAR, 1, &nbytes);
    joined[nbytes] = '\0';
    snprintf(path, sizeof path, "%s/numel", group);
    s->numel = s_read(f, path, H5T_NATIVE_INT64, sizeof(int64_t), &nn);
    snprintf(path, sizeof path, "%s/%s", group, values_key);
    s->values = s_read(f, path, H5T_NATIVE_FLOAT, sizeof(float), &s->total);
    s->names = calloc(nn, sizeof(char *));
    assert_non_null(s->names);
    s->count = 0;
    char *save = NULL;
    for (char *tok = strtok_r(joined, "\n", &save); tok; tok = strtok_r(NULL, "\n", &save)) {
        assert_true(s->count < nn);
        s->names[s->count] = strdup(tok);
        s->count++;
    }
    assert_int_equal(s->count, nn);
    size_t sum = 0;
    for (size_t i = 0; i < nn; i++)
        sum += (size_t)s->numel[i];
    assert_int_equal(sum, s->total);
    free(joined);
}

static void s_set_free(s_set_t *s)
{
    for (size_t i = 0; i < s->count; i++)
        free(s->names[i]);
    free(s->names);
    free(s->numel);
    free(s->values);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------ comparisons */

/* relative error of a tensor: max |a - ref| / max(max |ref|, 1e-6) */
static double s_rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= md)) /* NaN counts as error */
            md = isnan(d) ? INFINITY : d;
        if (fabs(ref[i]) > mr)
            mr = fabs(ref[i]);
    }
    return md / (mr > 1e-6 ? mr : 1e-6);
}

/* ------------------------------------------------------------ reference test */

typedef struct {
    model_config_t cfg;
    int B, T;
    int32_t *ids, *types, *mask, *labels;
} s_ref_t;

static hid_t s_open_fixture(void)
{
    hid_t f = H5Fopen(FIXTURE, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        fail_msg("cannot open %s (run from the repository root; regenerate with "
                 "tests/ref/make_model_ref.py)",
                 FIXTURE);
    return f;
}

static void s_ref_load(hid_t f, s_ref_t *r, unsigned targets)
{
    hid_t root = H5Gopen2(f, "/", H5P_DEFAULT);
    model_config_default(&r->cfg);
    r->cfg.vocab_size = (int)s_attr_long(root, "vocab");
    r->cfg.hidden = (int)s_attr_long(root, "hidden");
    r->cfg.layers = (int)s_attr_long(root, "layers");
    r->cfg.heads = (int)s_attr_long(root, "heads");
    r->cfg.ffn = (int)s_attr_long(root, "ffn");
    r->cfg.max_position = (int)s_attr_long(root, "max_position");
    r->cfg.type_vocab = (int)s_attr_long(root, "type_vocab");
    r->cfg.num_labels = (int)s_attr_long(root, "num_labels");
    r->cfg.lora_r = (int)s_attr_long(root, "r");
    r->cfg.lora_alpha = (float)s_attr_double(root, "alpha");
    r->cfg.layer_norm_eps = (float)s_attr_double(root, "layer_norm_eps");
    r->cfg.lora_targets = targets;
    r->B = (int)s_attr_long(root, "B");
    r->T = (int)s_attr_long(root, "T");
    H5Gclose(root);
    r->ids = s_read(f, "input_ids", H5T_NATIVE_INT32, 4, NULL);
    r->types = s_read(f, "token_type_ids", H5T_NATIVE_INT32, 4, NULL);
    r->mask = s_read(f, "attention_mask", H5T_NATIVE_INT32, 4, NULL);
    r->labels = s_read(f, "labels", H5T_NATIVE_INT32, 4, NULL);
}

static void s_ref_free(s_ref_t *r)
{
    free(r->ids);
    free(r->types);
    free(r->mask);
    free(r->labels);
}

/* Builds the fixture's model for a variant: base weights by name, trainables by name. */
static model_t *s_ref_model(hid_t f, const char *variant, s_ref_t *r, backend_t *be,
                            s_set_t *tr)
{
    unsigned targets = strcmp(variant, "all") == 0 ? LORA_ALL : (LORA_QUERY | LORA_VALUE);
    s_ref_load(f, r, targets);
    model_t *m = model_new(&r->cfg, be);
    assert_non_null(m);
    s_set_t base;
    s_set_read(f, "base", "values", &base);
    assert_int_equal(base.count, model_base_count(m));
    size_t off = 0;
    for (size_t i = 0; i < base.count; i++) {
        if (model_base_set(m, base.names[i], base.values + off, (size_t)base.numel[i]) != 0)
            fail_msg("base tensor '%s': %s", base.names[i], medfl_error_message());
        off += (size_t)base.numel[i];
    }
    s_set_free(&base);

    s_set_read(f, variant, "params", tr);
    assert_int_equal(tr->count, model_trainable_count(m));
    float *flat = calloc(model_trainable_numel(m), sizeof(float));
    assert_non_null(flat);
    off = 0;
    for (size_t i = 0; i < tr->count; i++) {
        const model_tensor_t *t = model_trainable_find(m, tr->names[i]);
        if (t == NULL)
            fail_msg("fixture trainable '%s' has no C counterpart", tr->names[i]);
        assert_int_equal(t->numel, (size_t)tr->numel[i]);
        memcpy(flat + t->offset, tr->values + off, t->numel * sizeof(float));
        off += t->numel;
    }
    assert_int_equal(model_trainable_set(m, flat, model_trainable_numel(m)), 0);
    free(flat);
    return m;
}

static void s_check_variant(const char *variant)
{
    hid_t f = s_open_fixture();
    backend_t *be = backend_cpu_new(1);
    assert_non_null(be);
    s_ref_t r;
    s_set_t tr;
    model_t *m = s_ref_model(f, variant, &r, be, &tr);
    int K = r.cfg.num_labels, C = r.cfg.hidden;

    model_batch_t in = {r.ids, r.types, r.mask, r.labels, r.B, r.T};
    float loss = 0.0f;
    float *logits = calloc((size_t)r.B * K, sizeof(float));
    float *pooled = calloc((size_t)r.B * C, sizeof(float));
    assert_int_equal(model_forward(m, &in, &loss, logits), 0);
    model_zero_grad(m);
    assert_int_equal(model_backward(m), 0);

    char path[64];
    snprintf(path, sizeof path, "%s/logits", variant);
    float *ref_logits = s_read(f, path, H5T_NATIVE_FLOAT, 4, NULL);
    snprintf(path, sizeof path, "%s/pooled", variant);
    float *ref_pooled = s_read(f, path, H5T_NATIVE_FLOAT, 4, NULL);
    hid_t g = H5Gopen2(f, variant, H5P_DEFAULT);
    double ref_loss = s_attr_double(g, "loss");
    H5Gclose(g);
    snprintf(path, sizeof path, "%s/grads", variant);
    float *ref_grads = s_read(f, path, H5T_NATIVE_FLOAT, 4, NULL);

    int bad = 0;
    double e = s_rel_err(logits, ref_logits, (size_t)r.B * K);
    printf("[%s] logits: rel err %.3g\n", variant, e);
    bad += !(e <= REL_TOL);
    e = fabs(loss - ref_loss) / fmax(fabs(ref_loss), 1e-6);
    printf("[%s] loss %.8f (ref %.8f): rel err %.3g\n", variant, loss, ref_loss, e);
    bad += !(e <= REL_TOL);
    /* the embedding-only path gives the same pooled vectors */
    assert_int_equal(model_embed(m, &in, pooled), 0);
    e = s_rel_err(pooled, ref_pooled, (size_t)r.B * C);
    printf("[%s] pooled (model_embed): rel err %.3g\n", variant, e);
    bad += !(e <= REL_TOL);

    float *grads = calloc(model_trainable_numel(m), sizeof(float));
    assert_int_equal(model_grad_get(m, grads, model_trainable_numel(m)), 0);
    size_t off = 0;
    double worst = 0.0;
    for (size_t i = 0; i < tr.count; i++) {
        const model_tensor_t *t = model_trainable_find(m, tr.names[i]);
        e = s_rel_err(grads + t->offset, ref_grads + off, t->numel);
        double mx = 0;
        for (size_t j = 0; j < t->numel; j++)
            mx = fmax(mx, fabs(ref_grads[off + j]));
        printf("[%s] grad %-70s rel err %.3g (max|ref| %.3g)%s\n", variant, tr.names[i], e, mx,
               e <= REL_TOL ? "" : "   <-- FAIL");
        if (!(mx > 0.0))
            fail_msg("reference gradient of %s is all zero: the test would be vacuous",
                     tr.names[i]);
        bad += !(e <= REL_TOL);
        worst = fmax(worst, e);
        off += t->numel;
    }
    printf("[%s] largest gradient rel err %.3g over %zu tensors\n", variant, worst, tr.count);
    if (bad)
        fail_msg("[%s] %d quantities differ from PyTorch by more than %g relative", variant, bad,
                 REL_TOL);

    free(grads);
    free(ref_grads);
    free(ref_logits);
    free(ref_pooled);
    free(logits);
    free(pooled);
    s_set_free(&tr);
    s_ref_free(&r);
    model_destroy(&m);
    model_destroy(&m);
    backend_destroy(&be);
    backend_destroy(&be);
    H5Fclose(f);
}

static void test_reference_query_value(void **state)
{
    (void)state;
    s_check_variant("qv");
}

static void test_reference_all_targets(void **state)
{
    (void)state;
    s_check_variant("all");
}

/* ------------------------------------------------------------ per-example gradients */

static void test_per_example(void **state)
{
    (void)state;
    hid_t f = s_open_fixture();
    backend_t *be = backend_cpu_new(2);
    s_ref_t r;
    s_set_t tr;
    model_t *m = s_ref_model(f, "all", &r, be, &tr);
    size_t n = model_trainable_numel(m);
    model_batch_t in = {r.ids, r.types, r.mask, r.labels, r.B, r.T};
    float loss;
    assert_int_equal(model_forward(m, &in, &loss, NULL), 0);
    model_zero_grad(m);
    assert_int_equal(model_backward(m), 0);
    float *batch = calloc(n, sizeof(float));
    assert_int_equal(model_grad_get(m, batch, n), 0);
    float *pe = model_per_example_buffer(m, r.B);
    assert_non_null(pe);
    assert_int_equal(model_backward_per_example(m, pe), 0);
    float *pe_host = calloc(n * r.B, sizeof(float));
    be->download(be, pe_host, pe, n * r.B * sizeof(float));

    /* sum_e per_example[e] / B == batch gradient of the mean loss */
    float *sum = calloc(n, sizeof(float));
    for (int e = 0; e < r.B; e++)
        for (size_t j = 0; j < n; j++)
            sum[j] += pe_host[e * n + j] / (float)r.B;
    double err = s_rel_err(sum, batch, n);
    printf("per-example: sum/B vs batch gradient rel err %.3g\n", err);
    assert_true(err < 1e-5);

    /* clipping helpers: norms of the rows, weighted sum with weights 1/B == batch mean */
    float norms[8], w[8];
    be->row_norms(be, norms, pe, r.B, n);
    for (int e = 0; e < r.B; e++) {
        double s2 = 0.0;
        for (size_t j = 0; j < n; j++)
            s2 += (double)pe_host[e * n + j] * pe_host[e * n + j];
        assert_float_equal(norms[e], sqrt(s2), 1e-5 * sqrt(s2));
        w[e] = 1.0f / (float)r.B;
    }
    float *wsum = calloc(n, sizeof(float));
    be->rows_weighted_sum(be, wsum, pe, w, r.B, n);
    assert_true(s_rel_err(wsum, sum, n) < 1e-6);
    free(wsum);

    /* each per-example row == gradient of a batch holding only that example */
    for (int e = 0; e < r.B; e++) {
        model_batch_t one = {r.ids + e * r.T, r.types + e * r.T, r.mask + e * r.T,
                             r.labels + e, 1, r.T};
        assert_int_equal(model_forward(m, &one, &loss, NULL), 0);
        model_zero_grad(m);
        assert_int_equal(model_backward(m), 0);
        assert_int_equal(model_grad_get(m, batch, n), 0);
        err = s_rel_err(pe_host + e * n, batch, n);
        printf("per-example: example %d vs its own batch-of-1 gradient rel err %.3g\n", e, err);
        assert_true(err < 1e-5);
    }
    /* backward without a forward (shape change reset) is refused */
    assert_int_equal(model_forward(m, &(model_batch_t){r.ids, NULL, r.mask, NULL, r.B, r.T},
                                   NULL, NULL),
                     0);
    assert_int_equal(model_backward_per_example(m, pe), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    assert_int_equal(model_backward_per_example(m, NULL), -1);

    free(sum);
    free(pe_host);
    free(batch);
    s_set_free(&tr);
    s_ref_free(&r);
    model_destroy(&m);
    backend_destroy(&be);
    H5Fclose(f);
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

/* (loss(p + h e_k) - loss(p - h e_k)) / 2h, in float32, restoring p[k] */
static double s_central(model_t *m, const model_batch_t *in, float *p, size_t n, size_t k,
                        float h)
{
    float orig = p[k], lp = 0, lm = 0;
    p[k] = orig + h;
    assert_int_equal(model_trainable_set(m, p, n), 0);
    assert_int_equal(model_forward(m, in, &lp, NULL), 0);
    p[k] = orig - h;
    assert_int_equal(model_trainable_set(m, p, n), 0);
    assert_int_equal(model_forward(m, in, &lm, NULL), 0);
    p[k] = orig;
    return ((double)lp - lm) / (2.0 * h);
}

/* Central differences over every trainable parameter of a tiny model with all six LoRA
 * targets. The forward is float32, so the step cannot be small (loss rounding ~1e-7 / h):
 * h = 2e-2 and 1e-2 combined by Richardson extrapolation remove the O(h^2) truncation
 * error, leaving O(h^4) + rounding ~2e-5. Each parameter must agree within an absolute +
 * relative bound, and the whole vector within a relative L2 error. */
static void s_fd_check(model_pooling_t pooling)
{
    model_config_t cfg;
    model_config_default(&cfg);
    cfg.vocab_size = 20;
    cfg.hidden = 12; /* odd sizes on purpose: packed layout, vector-kernel tails */
    cfg.layers = 2;
    cfg.heads = 2;
    cfg.ffn = 22;
    cfg.max_position = 16;
    cfg.num_labels = 3;
    cfg.lora_r = 4;
    cfg.lora_alpha = 8.0f;
    cfg.lora_targets = LORA_ALL;
    cfg.layer_norm_eps = 1e-5f;
    cfg.pooling = pooling;
    backend_t *be = backend_cpu_new(1);
    model_t *m = model_new(&cfg, be);
    assert_non_null(m);
    model_base_init_random(m, 7, 0.5f);
    model_init_trainable(m, 3);
    size_t n = model_trainable_numel(m);
    float *p = calloc(n, sizeof(float)), *g = calloc(n, sizeof(float));
    assert_int_equal(model_trainable_get(m, p, n), 0);
    for (size_t i = 0; i < model_trainable_count(m); i++) { /* B != 0 so A gets gradient */
        const model_tensor_t *t = model_trainable_tensor(m, i);
        if (strstr(t->name, "lora_B"))
            for (size_t j = 0; j < t->numel; j++)
                p[t->offset + j] = 0.3f * s_randn();
    }
    assert_int_equal(model_trainable_set(m, p, n), 0);

    enum { B = 2, T = 5 };
    int32_t ids[B * T] = {1, 5, 9, 3, 0, 2, 19, 4, 0, 0};
    int32_t mask[B * T] = {1, 1, 1, 1, 0, 1, 1, 1, 0, 0};
    int32_t types[B * T] = {0, 0, 1, 1, 0, 0, 1, 0, 0, 0};
    int32_t labels[B] = {2, 1};
    model_batch_t in = {ids, types, mask, labels, B, T};
    float loss0;
    assert_int_equal(model_forward(m, &in, &loss0, NULL), 0);
    model_zero_grad(m);
    assert_int_equal(model_backward(m), 0);
    assert_int_equal(model_grad_get(m, g, n), 0);

    const float eps = 2e-2f;
    double num = 0.0, den = 0.0, worst = 0.0;
    size_t checked = 0, bad = 0;
    for (size_t i = 0; i < model_trainable_count(m); i++) {
        const model_tensor_t *t = model_trainable_tensor(m, i);
        double tworst = 0.0;
        for (size_t j = 0; j < t->numel; j++) {
            size_t k = t->offset + j;
            double fd = s_central(m, &in, p, n, k, eps);
            double fd_half = s_central(m, &in, p, n, k, eps / 2);
            fd = (4.0 * fd_half - fd) / 3.0; /* Richardson: cancels the O(eps^2) term */
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
        worst = fmax(worst, tworst);
        printf("fd[%s] %-62s max |fd - grad| %.2e\n", pooling == POOL_CLS ? "cls" : "mean",
               t->name, tworst);
    }
    model_trainable_set(m, p, n);
    double rel = sqrt(num / fmax(den, 1e-30));
    printf("fd[%s]: %zu parameters, %zu outside tolerance, relative L2 error %.3g\n",
           pooling == POOL_CLS ? "cls" : "mean", checked, bad, rel);
    size_t tensors_numel = 0;
    for (size_t i = 0; i < model_trainable_count(m); i++)
        tensors_numel += model_trainable_tensor(m, i)->numel;
    assert_int_equal(checked, tensors_numel); /* every trainable parameter was perturbed */
    assert_true(den > 0.0);
    assert_int_equal(bad, 0);
    assert_true(rel < 1e-3);
    free(p);
    free(g);
    model_destroy(&m);
    backend_destroy(&be);
}

static void test_finite_differences_mean(void **state)
{
    (void)state;
    s_fd_check(POOL_MEAN);
}

static void test_finite_differences_cls(void **state)
{
    (void)state;
    s_fd_check(POOL_CLS);
}

/* ------------------------------------------------------------ threads */

/* The threaded paths (row kernels split over pthreads above 64k floats, attention products
 * spread over threads) give what one thread gives: a model large enough to take them. */
static void s_run_threads(int threads, float *logits, float *grads, float *pe, size_t n)
{
    model_config_t cfg;
    model_config_default(&cfg);
    cfg.vocab_size = 50;
    cfg.hidden = 64;
    cfg.layers = 2;
    cfg.heads = 4;
    cfg.ffn = 256;
    cfg.max_position = 64;
    cfg.num_labels = 3;
    cfg.lora_targets = LORA_ALL;
    backend_t *be = backend_cpu_new(threads);
    model_t *m = model_new(&cfg, be);
    assert_non_null(m);
    model_base_init_random(m, 5, 0.3f);
    model_init_trainable(m, 9);
    assert_int_equal(model_trainable_numel(m), n);
    float *p = calloc(n, sizeof(float));
    model_trainable_get(m, p, n);
    for (size_t i = 0; i < n; i++) /* non-zero lora_B everywhere */
        p[i] += 0.01f * (float)((int)((i * 37) % 11) - 5);
    model_trainable_set(m, p, n);
    enum { B = 4, T = 64 };
    static int32_t ids[B * T], mask[B * T], labels[B] = {0, 1, 2, 1};
    for (int i = 0; i < B * T; i++) {
        ids[i] = (i * 13 + 7) % 50;
        mask[i] = (i % T) < T - 9 * (i / T); /* 64, 55, 46, 37 real tokens */
    }
    model_batch_t in = {ids, NULL, mask, labels, B, T};
    float loss;
    assert_int_equal(model_forward(m, &in, &loss, logits), 0);
    model_zero_grad(m);
    assert_int_equal(model_backward(m), 0);
    assert_int_equal(model_grad_get(m, grads, n), 0);
    float *dev = model_per_example_buffer(m, B);
    assert_int_equal(model_backward_per_example(m, dev), 0);
    be->download(be, pe, dev, (size_t)B * n * sizeof(float));
    free(p);
    model_destroy(&m);
    backend_destroy(&be);
}

static void test_threads_agree(void **state)
{
    (void)state;
    /* n_trainable for the config above: 2 layers x (4 x (8*64 + 64*8) + 2 x (8*64 + 256*8))
     * + head 3*64 + 3 */
    size_t n = 2 * (4 * 1024 + 2 * (512 + 2048)) + 195;
    float l1[12], l2[12];
    float *g1 = calloc(n, sizeof(float)), *g2 = calloc(n, sizeof(float));
    float *p1 = calloc(4 * n, sizeof(float)), *p2 = calloc(4 * n, sizeof(float));
    s_run_threads(1, l1, g1, p1, n);
    s_run_threads(2, l2, g2, p2, n);
    double el = s_rel_err(l2, l1, 12), eg = s_rel_err(g2, g1, n), ep = s_rel_err(p2, p1, 4 * n);
    printf("threads 2 vs 1: logits %.3g, gradients %.3g, per-example %.3g\n", el, eg, ep);
    assert_true(el < 1e-5);
    assert_true(eg < 1e-4);
    assert_true(ep < 1e-4);
    double gmax = 0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(g1[i]));
    assert_true(gmax > 0.0);
    free(g1);
    free(g2);
    free(p1);
    free(p2);
}

/* ------------------------------------------------------------ optimizer */

static void test_adamw(void **state)
{
    (void)state;
    adamw_config_t oc;
    adamw_config_default(&oc);
    oc.lr = 1e-3f;
    oc.warmup_steps = 10;
    oc.total_steps = 110;
    assert_float_equal(adamw_lr_at(&oc, 1), 1e-4f, 1e-9f);
    assert_float_equal(adamw_lr_at(&oc, 10), 1e-3f, 1e-9f);
    assert_float_equal(adamw_lr_at(&oc, 60), 5e-4f, 1e-9f);
    assert_float_equal(adamw_lr_at(&oc, 110), 0.0f, 1e-9f);
    assert_float_equal(adamw_lr_at(&oc, 500), 0.0f, 1e-9f);
    oc.total_steps = 0;
    assert_float_equal(adamw_lr_at(&oc, 500), 1e-3f, 1e-9f);

    /* one step against the formula: m = 0.1 g, v = 0.001 g^2, bias-corrected -> g/|g| */
    backend_t *be = backend_cpu_new(1);
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, -0.25f, 0.0f}, mm[3] = {0}, vv[3] = {0};
    be->adamw(be, p, g, mm, vv, 3, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
    assert_float_equal(p[0], 1.0f - 0.1f * (1.0f + 0.01f * 1.0f), 1e-5f);
    assert_float_equal(p[1], -2.0f - 0.1f * (-1.0f + 0.01f * -2.0f), 1e-5f);
    assert_float_equal(p[2], 0.5f - 0.1f * 0.01f * 0.5f, 1e-6f);
    backend_destroy(&be);
}

/* A few AdamW steps on a fixed batch reduce the loss (end-to-end: forward, backward, step). */
static void test_training_reduces_loss(void **state)
{
    (void)state;
    model_config_t cfg;
    model_config_default(&cfg);
    cfg.vocab_size = 30;
    cfg.hidden = 32;
    cfg.layers = 2;
    cfg.heads = 4;
    cfg.ffn = 64;
    cfg.max_position = 16;
    cfg.num_labels = 2;
    backend_t *be = backend_cpu_new(2);
    model_t *m = model_new(&cfg, be);
    model_base_init_random(m, 11, 0.2f);
    model_init_trainable(m, 5);
    int32_t ids[4 * 6], mask[4 * 6], labels[4] = {0, 1, 0, 1};
    for (int i = 0; i < 24; i++) {
        ids[i] = (i * 7 + 3) % 30;
        mask[i] = (i % 6) < 5 - (i / 6) % 2;
    }
    model_batch_t in = {ids, NULL, mask, labels, 4, 6};
    adamw_config_t oc;
    adamw_config_default(&oc);
    oc.lr = 1e-2f;
    oc.warmup_steps = 2;
    oc.total_steps = 30;
    float first = 0, loss = 0;
    for (long s = 1; s <= 30; s++) {
        assert_int_equal(model_forward(m, &in, &loss, NULL), 0);
        if (s == 1)
            first = loss;
        model_zero_grad(m);
        assert_int_equal(model_backward(m), 0);
        model_adamw_step(m, &oc, s);
    }
    printf("training: loss %.4f -> %.4f after 30 steps\n", first, loss);
    assert_true(loss < 0.5f * first);
    model_destroy(&m);
    backend_destroy(&be);
}

/* ------------------------------------------------------------ bad input */

static void test_bad_input(void **state)
{
    (void)state;
    model_config_t cfg;
    model_config_default(&cfg);
    cfg.vocab_size = 10;
    cfg.hidden = 16;
    cfg.layers = 1;
    cfg.heads = 2;
    cfg.ffn = 16;
    cfg.max_position = 4;
    backend_t *be = backend_cpu_new(1);

    model_config_t badc = cfg;
    badc.heads = 3;
    assert_null(model_new(&badc, be));
    assert_non_null(strstr(medfl_error_message(), "multiple of heads"));
    badc = cfg;
    badc.lora_targets = 0; /* head only ("none") is a valid model */
    assert_int_equal(model_config_check(&badc), 0);


    badc = cfg;
    badc.lora_r = 0;
    assert_int_equal(model_config_check(&badc), -1);
    assert_non_null(strstr(medfl_error_message(), "lora_r"));
    badc = cfg;
    badc.layer_norm_eps = 0.0f;
    assert_null(model_new(&badc, be));
    assert_non_null(strstr(medfl_error_message(), "layer_norm_eps"));
    badc = cfg;
    badc.lora_targets = 0x40;
    assert_int_equal(model_config_check(&badc), -1);
    badc = cfg;
    badc.hidden = 24, badc.heads = 2; /* not a multiple of 16: fine */
    model_t *odd = model_new(&badc, be);
    assert_non_null(odd);
    model_destroy(&odd);

    unsigned t = 0;
    assert_int_equal(model_lora_targets_parse("query, value", &t), 0);
    assert_int_equal(t, LORA_QUERY | LORA_VALUE);
    assert_int_equal(model_lora_targets_parse("all", &t), 0);
    assert_int_equal(t, LORA_ALL);
    assert_int_equal(model_lora_targets_parse("intermediate.dense,output.dense", &t), 0);
    assert_int_equal(t, LORA_FFN_IN | LORA_FFN_OUT);
    assert_int_equal(model_lora_targets_parse("query,bogus", &t), -1);
    assert_non_null(strstr(medfl_error_message(), "bogus"));
    assert_int_equal(model_lora_targets_parse("", &t), -1);

    model_t *m = model_new(&cfg, be);
    assert_non_null(m);
    float w[16] = {0};
    assert_int_equal(model_base_set(m, "encoder.layer.9.output.dense.weight", w, 16), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_int_equal(model_base_set(m, "embeddings.LayerNorm.weight", w, 15), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_int_equal(model_base_set(m, "embeddings.LayerNorm.weight", w, 16), 0);
    assert_int_equal(model_trainable_set(m, w, 3), -1);
    assert_int_equal(model_backward(m), -1); /* no forward yet */
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);

    int32_t ids[4] = {1, 2, 3, 0}, mask[4] = {1, 1, 1, 0}, lab[1] = {1};
    model_batch_t in = {ids, NULL, mask, lab, 1, 4};
    float loss;
    assert_int_equal(model_forward(m, &in, &loss, NULL), 0);
    ids[2] = 10; /* out of vocabulary */
    assert_int_equal(model_forward(m, &in, &loss, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "token id 10"));
    ids[2] = -1;
    assert_int_equal(model_forward(m, &in, &loss, NULL), -1);
    ids[2] = 3;
    lab[0] = 2; /* 2 labels */
    assert_int_equal(model_forward(m, &in, &loss, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "label 2"));
    lab[0] = 0;
    mask[0] = 5;
    assert_int_equal(model_forward(m, &in, &loss, NULL), -1);
    mask[0] = 1;
    int32_t types[4] = {0, 2, 0, 0};
    in.type_ids = types;
    assert_int_equal(model_forward(m, &in, &loss, NULL), -1);
    in.type_ids = NULL;
    int32_t ids5[5] = {1, 2, 3, 4, 5}, mask5[5] = {1, 1, 1, 1, 1};
    model_batch_t longer = {ids5, NULL, mask5, lab, 1, 5}; /* T > max_position */
    assert_int_equal(model_forward(m, &longer, &loss, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "max_position"));
    assert_int_equal(model_backward(m), -1); /* failed forward invalidates backward */
    model_batch_t empty = {ids, NULL, mask, lab, 0, 4};
    assert_int_equal(model_forward(m, &empty, &loss, NULL), -1);
    assert_int_equal(model_forward(m, NULL, &loss, NULL), -1);

    /* an all-padding example is legal: zero pooled vector, finite loss and gradients */
    int32_t zmask[4] = {0, 0, 0, 0};
    model_init_trainable(m, 1);
    model_batch_t pad = {ids, NULL, zmask, lab, 1, 4};
    assert_int_equal(model_forward(m, &pad, &loss, NULL), 0);
    assert_true(isfinite(loss));
    model_zero_grad(m);
    assert_int_equal(model_backward(m), 0);

    assert_null(backend_new("tpu", 1));
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    backend_t *b2 = backend_new("cpu", 1);
    assert_non_null(b2);
    backend_destroy(&b2);
    model_destroy(&m);
    backend_destroy(&be);
}

typedef struct {
    size_t count, numel;
    const char *stop_at;
} s_walk_t;

static int s_walk(void *ctx, const model_tensor_t *t, float *host)
{
    s_walk_t *w = ctx;
    if (host == NULL)
        return -1;
    w->count++;
    w->numel += t->numel;
    host[0] = (float)w->count; /* loaders write through the host pointer */
    if (w->stop_at && strcmp(t->name, w->stop_at) == 0)
        return 7;
    return 0;
}

/* Names follow Hugging Face / PEFT, sizes tables are contiguous and complete. */
static void test_layout(void **state)
{
    (void)state;
    model_config_t cfg;
    model_config_default(&cfg); /* BERT-base sizes */
    cfg.vocab_size = 100;
    backend_t *be = backend_cpu_new(1);
    model_t *m = model_new(&cfg, be);
    assert_non_null(m);
    assert_int_equal(model_base_count(m), 5 + 12 * 16);
    const model_tensor_t *t = model_base_find(m, "encoder.layer.11.intermediate.dense.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 3072);
    assert_int_equal(t->shape[1], 768);
    assert_non_null(model_base_find(m, "encoder.layer.3.attention.output.LayerNorm.bias"));
    assert_null(model_base_find(m, "pooler.dense.weight"));
    /* q+v, r = 8: 12 layers x 2 targets x (8*768 + 768*8) + head 2*768 + 2 */
    assert_int_equal(model_trainable_count(m), 12 * 2 * 2 + 2);
    size_t want = 12 * 2 * (8 * 768 * 2) + 2 * 768 + 2;
    assert_int_equal(model_trainable_numel(m), want); /* packed, no padding */
    t = model_trainable_find(m, "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 8);
    assert_int_equal(t->shape[1], 768);
    assert_non_null(model_trainable_find(m, "classifier.weight"));
    size_t seen = 0;
    for (size_t i = 0; i < model_base_count(m); i++) {
        const model_tensor_t *bt = model_base_tensor(m, i);
        assert_true(bt->offset >= seen);
        seen = bt->offset + bt->numel;
    }
    assert_true(seen <= model_base_numel(m));

    /* iteration for loaders: every tensor once, host pointers writable, early stop */
    s_walk_t w = {0, 0, NULL};
    assert_int_equal(model_base_foreach(m, s_walk, &w), 0);
    assert_int_equal(w.count, model_base_count(m));
    size_t total = 0;
    for (size_t i = 0; i < model_base_count(m); i++)
        total += model_base_tensor(m, i)->numel;
    assert_int_equal(w.numel, total);
    float got[768];
    assert_int_equal(model_base_get(m, "embeddings.LayerNorm.bias", got, 768), 0);
    assert_float_equal(got[0], 5.0f, 0.0f); /* fifth tensor */
    assert_int_equal(model_base_get(m, "embeddings.LayerNorm.bias", got, 767), -1);
    assert_int_equal(model_base_get(m, "nope", got, 768), -1);
    w = (s_walk_t){0, 0, "encoder.layer.0.attention.self.key.weight"};
    assert_int_equal(model_base_foreach(m, s_walk, &w), 7);
    assert_int_equal(w.count, 7);
    assert_null(model_base_tensor(m, model_base_count(m)));
    assert_null(model_trainable_tensor(m, model_trainable_count(m)));
    model_destroy(&m);
    backend_destroy(&be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_query_value),
        cmocka_unit_test(test_reference_all_targets),
        cmocka_unit_test(test_per_example),
        cmocka_unit_test(test_finite_differences_mean),
        cmocka_unit_test(test_finite_differences_cls),
        cmocka_unit_test(test_threads_agree),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_training_reduces_loss),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
