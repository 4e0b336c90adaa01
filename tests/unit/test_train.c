/* The trainer (node/train.h) on a tiny random BERT written to a base file here, with a small
 * vocabulary and an easy synthetic task (the label is carried by which of three word groups
 * a note draws its keywords from, among shared filler words):
 * - training lowers the loss and beats chance clearly on the validation split;
 * - checkpoint (adapter + AdamW state) -> restore in a fresh trainer -> the continuation is
 *   bit-identical to the uninterrupted run;
 * - DP-SGD: noise makes two privatized gradients of the same batch differ, with a spread
 *   that matches sigma * C / divisor; with sigma = 0 and a huge C the privatized gradient
 *   equals the plain mean gradient (per-example path sanity); Poisson steps report
 *   accountant steps and an (almost surely) empty batch still moves the parameters;
 * - a federated round returns delta = local - global and evaluate_vector leaves the
 *   trainer's parameters alone;
 * - errors: unknown label, missing base file, max_seq_len beyond the model, duplicate or
 *   too few labels, bad LoRA targets, an adapter with another label set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/engine/base_file.h"
#include "common/error.h"
#include "common/log.h"
#include "node/data.h"
#include "node/train.h"
#include "tests/unit/testlib.h"

static const char *s_dir; /* testlib_setup's folder */
static char s_base[600];

static const char *const s_groups[3][4] = {
    {"cough", "wheeze", "sputum", "dyspnea"},
    {"fracture", "cast", "knee", "splint"},
    {"rash", "itch", "lesion", "eczema"},
};
static const char *const s_filler[] = {"patient", "reports", "history", "today", "follow",
                                       "stable", "denies", "fever", "plan", "review"};
static const char *const s_labels[3] = {"pulm", "ortho", "derm"};

/* The base model: a tiny random BERT whose vocabulary holds the task's words. */
static int s_write_base(const char *path)
{
    const char *words[12 + 10];
    size_t n = 0;
    for (int g = 0; g < 3; g++)
        for (int w = 0; w < 4; w++) words[n++] = s_groups[g][w];
    for (size_t i = 0; i < 10; i++) words[n++] = s_filler[i];
    return testlib_write_tiny_bert(path, words, n, "test_train");
}

static int s_setup(void **state)
{
    (void)state;
    if (!(s_dir = testlib_setup("train", false, LOG_LEVEL_WARN))) return -1;
    snprintf(s_base, sizeof s_base, "%s/base.h5", s_dir);
    if (s_write_base(s_base) != 0) {
        fprintf(stderr, "base: %s\n", medfl_error_message());
        return -1;
    }
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    return testlib_teardown();
}

/* n JSONL records of the task, labels cycling; bad_label puts an unknown label on record 5. */
static char *s_jsonl(size_t n, uint64_t seed, bool bad_label, size_t *len)
{
    size_t cap = n * 200 + 64, off = 0;
    char *buf = malloc(cap);
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++) {
        int lab = (int)(i % 3);
        off += (size_t)snprintf(buf + off, cap - off, "{\"text\": \"");
        for (int w = 0; w < 8; w++) {
            const char *word = (testlib_rng(&st) % 3 == 0) ? s_groups[lab][testlib_rng(&st) % 4]
                                                      : s_filler[testlib_rng(&st) % 10];
            off += (size_t)snprintf(buf + off, cap - off, "%s%s", w ? " " : "", word);
        }
        off += (size_t)snprintf(buf + off, cap - off, " %s.\", \"label\": \"%s\"}\n",
                                s_groups[lab][testlib_rng(&st) % 4],
                                bad_label && i == 5 ? "neuro" : s_labels[lab]);
    }
    *len = off;
    return buf;
}

static train_config_t s_cfg(void)
{
    train_config_t c;
    train_config_defaults(&c);
    snprintf(c.base, sizeof c.base, "%s", s_base);
    c.lora_r = 4; /* LoRA with AdamW: the defaults train the head only with SGD */
    snprintf(c.lora_targets, sizeof c.lora_targets, "query,value");
    snprintf(c.optimizer, sizeof c.optimizer, "adamw");
    c.max_seq_len = 16;
    c.batch_size = 8;
    c.lr = 5e-3;
    c.threads = 1;
    c.valid_fraction = 0.2;
    c.seed = 7;
    return c;
}

static records_t *s_records(size_t n, uint64_t seed)
{
    size_t len;
    char *buf = s_jsonl(n, seed, false, &len);
    records_opts_t o;
    records_opts_init(&o);
    o.labels = s_labels;
    o.n_labels = 3;
    records_t *set = records_new();
    assert_non_null(set);
    if (records_load_buffer(set, "synthetic.jsonl", buf, len, &o) != 0)
        fail_msg("records: %s", medfl_error_message());
    free(buf);
    return set;
}

static trainer_t *s_trainer(const train_config_t *c, size_t n_records)
{
    trainer_t *t = trainer_new(c, "cpu", s_labels, 3);
    if (!t) fail_msg("trainer_new: %s", medfl_error_message());
    records_t *set = s_records(n_records, 11);
    if (trainer_set_records(t, set, false) != 0) fail_msg("records: %s", medfl_error_message());
    records_destroy(&set);
    return t;
}

static void test_learns_easy_task(void **state)
{
    (void)state;
    train_config_t c = s_cfg();
    trainer_t *t = s_trainer(&c, 240);
    assert_int_equal(trainer_split_size(t, TRAIN_SPLIT_TRAIN) + trainer_split_size(t, TRAIN_SPLIT_VALID), 240);
    long spe = trainer_steps_per_epoch(t);
    trainer_set_schedule(t, spe / 2, spe * 6);
    train_eval_t before, after;
    assert_int_equal(trainer_evaluate(t, TRAIN_SPLIT_VALID, &before), 0);
    train_stats_t first, last;
    for (int e = 0; e < 6; e++) {
        train_stats_t st;
        assert_int_equal(trainer_train_steps(t, spe, &st), 0);
        assert_int_equal(st.steps, spe);
        assert_false(st.dp);
        if (e == 0) first = st;
        last = st;
    }
    assert_int_equal(trainer_evaluate(t, TRAIN_SPLIT_VALID, &after), 0);
    printf("loss %.4f -> %.4f (valid %.4f -> %.4f), accuracy %.3f -> %.3f, macro-F1 %.3f\n",
           first.mean_loss, last.mean_loss, before.loss, after.loss, before.accuracy,
           after.accuracy, after.macro_f1);
    assert_true(last.mean_loss < 0.7 * first.mean_loss);
    assert_true(after.loss < before.loss);
    assert_true(after.accuracy > 0.75); /* chance is 1/3 */
    assert_true(after.macro_f1 > 0.7);
    assert_int_equal(after.n, trainer_split_size(t, TRAIN_SPLIT_VALID));
    train_eval_t base;
    assert_int_equal(trainer_majority_baseline(t, TRAIN_SPLIT_VALID, &base), 0);
    assert_true(base.accuracy < 0.5 && after.macro_f1 > base.macro_f1 + 0.3);
    trainer_destroy(&t);
    trainer_destroy(&t); /* safe twice */
}

static void test_checkpoint_continues_identically(void **state)
{
    (void)state;
    train_config_t c = s_cfg();
    trainer_t *a = s_trainer(&c, 120);
    long spe = trainer_steps_per_epoch(a);
    trainer_set_schedule(a, 2, spe * 3);
    assert_int_equal(trainer_train_steps(a, spe + 2, NULL), 0); /* mid-epoch */
    char ck[700];
    snprintf(ck, sizeof ck, "%s/ckpt.h5", s_dir);
    assert_int_equal(trainer_save(a, ck, true), 0);
    assert_int_equal(trainer_train_steps(a, spe, NULL), 0);

    trainer_t *b = s_trainer(&c, 120);
    trainer_set_schedule(b, 2, spe * 3);
    assert_int_equal(trainer_load(b, ck), 0);
    assert_int_equal(trainer_step(b), spe + 2);
    assert_int_equal(trainer_train_steps(b, spe, NULL), 0);
    size_t P = trainer_n_params(a);
    float *pa = malloc(P * sizeof(float)), *pb = malloc(P * sizeof(float));
    assert_int_equal(trainer_get_params(a, pa, P), 0);
    assert_int_equal(trainer_get_params(b, pb, P), 0);
    size_t diff = 0;
    for (size_t j = 0; j < P; j++) diff += pa[j] != pb[j];
    if (diff) fail_msg("%zu of %zu parameters differ after restore + continuation", diff, P);

    /* Without optimizer state the restore is NOT the same run: the test can fail. */
    trainer_t *d = s_trainer(&c, 120);
    trainer_set_schedule(d, 2, spe * 3);
    char ad[700];
    snprintf(ad, sizeof ad, "%s/adapter-only.h5", s_dir);
    assert_int_equal(trainer_save(b, ad, false), 0);
    assert_int_equal(trainer_load(d, ad), 0);
    assert_int_equal(trainer_step(d), 0);
    assert_int_equal(trainer_get_params(d, pa, P), 0);
    for (size_t j = 0; j < P; j++) assert_true(pa[j] == pb[j]); /* weights restored */
    free(pa); free(pb);
    trainer_destroy(&a); trainer_destroy(&b); trainer_destroy(&d);
}

static void test_dp_gradient(void **state)
{
    (void)state;
    train_config_t c = s_cfg();
    trainer_t *t = s_trainer(&c, 120);
    size_t P = trainer_n_params(t);
    size_t idx[8] = {0, 3, 5, 9, 12, 20, 31, 40};
    float *plain = malloc(P * sizeof(float)), *g1 = malloc(P * sizeof(float)),
          *g2 = malloc(P * sizeof(float));
    assert_int_equal(trainer_batch_gradient(t, idx, 8, false, 8, plain), 0);
    /* sigma = 0, huge C: clipped sum / n is the mean gradient. */
    assert_false(trainer_rng_is_seeded(t));
    assert_int_equal(trainer_use_seeded_rng(t, 5), 0);
    assert_true(trainer_rng_is_seeded(t));
    assert_int_equal(trainer_set_dp(t, true, 0.1, 0.0, 1e9), 0);
    assert_int_equal(trainer_batch_gradient(t, idx, 8, true, 8, g1), 0);
    double maxrel = 0, scale = 0;
    for (size_t j = 0; j < P; j++) scale = fmax(scale, fabs(plain[j]));
    for (size_t j = 0; j < P; j++) maxrel = fmax(maxrel, fabs(g1[j] - plain[j]) / scale);
    printf("sigma 0, C 1e9: max |dp - plain| / max|plain| = %.3g\n", maxrel);
    assert_true(scale > 0 && maxrel < 1e-4);
    /* Noise: two privatized gradients of the same batch differ, by about sigma*C/divisor. */
    double sigma = 2.0, C = 0.5, div = 8;
    assert_int_equal(trainer_set_dp(t, true, 0.1, sigma, C), 0);
    assert_int_equal(trainer_batch_gradient(t, idx, 8, true, div, g1), 0);
    assert_int_equal(trainer_batch_gradient(t, idx, 8, true, div, g2), 0);
    double ss = 0;
    size_t same = 0;
    for (size_t j = 0; j < P; j++) {
        double d = (double)g1[j] - g2[j];
        ss += d * d;
        same += g1[j] == g2[j];
    }
    double sd = sqrt(ss / (double)P / 2.0), want = sigma * C / div;
    printf("noise sd %.5f (expected %.5f), %zu of %zu equal\n", sd, want, same, P);
    assert_true(same < P / 100);
    assert_true(fabs(sd - want) < 0.1 * want);
    /* Clipping: with a tiny C and no noise every example contributes at most C. */
    assert_int_equal(trainer_set_dp(t, true, 0.1, 0.0, 1e-3), 0);
    assert_int_equal(trainer_batch_gradient(t, idx, 8, true, 1.0, g1), 0);
    double norm = 0;
    for (size_t j = 0; j < P; j++) norm += (double)g1[j] * g1[j];
    assert_true(sqrt(norm) <= 8 * 1e-3 * (1 + 1e-5));
    assert_true(sqrt(norm) > 1e-4);
    /* Bad settings */
    assert_int_equal(trainer_set_dp(t, true, 0.0, 1.0, 1.0), -1);
    assert_int_equal(trainer_set_dp(t, true, 0.1, -1.0, 1.0), -1);
    assert_int_equal(trainer_set_dp(t, true, 0.1, 1.0, 0.0), -1);
    assert_int_equal(trainer_batch_gradient(t, (size_t[]){100000}, 1, false, 1, g1), -1);
    free(plain); free(g1); free(g2);
    trainer_destroy(&t);
}

static void test_dp_steps_and_round(void **state)
{
    (void)state;
    train_config_t c = s_cfg();
    c.dp = true;
    c.target_epsilon = 8;
    trainer_t *t = s_trainer(&c, 120);
    assert_int_equal(trainer_use_seeded_rng(t, 9), 0);
    double q, sigma;
    assert_int_equal(trainer_dp_plan(t, 30, &q, &sigma), 0);
    assert_true(fabs(q - 8.0 / (double)trainer_split_size(t, TRAIN_SPLIT_TRAIN)) < 1e-12);
    assert_true(sigma > 0.3 && sigma < 5);
    assert_int_equal(trainer_set_dp(t, true, q, sigma, 1.0), 0);
    size_t P = trainer_n_params(t);
    float *g = malloc(P * sizeof(float)), *delta = malloc(P * sizeof(float)),
          *after = malloc(P * sizeof(float));
    assert_int_equal(trainer_get_params(t, g, P), 0);
    train_stats_t st;
    assert_int_equal(trainer_round(t, g, P, 6, delta, &st), 0);
    assert_true(st.dp);
    assert_int_equal(st.steps, 6);
    assert_int_equal(st.dp_steps, 6);
    assert_int_equal(st.examples_total, trainer_split_size(t, TRAIN_SPLIT_TRAIN));
    assert_int_equal(trainer_get_params(t, after, P), 0);
    double dn = 0;
    for (size_t j = 0; j < P; j++) {
        assert_true(fabsf(after[j] - g[j] - delta[j]) <= 1e-6f * (1 + fabsf(after[j])));
        dn += fabs(delta[j]);
    }
    assert_true(dn > 0);
    /* evaluate_vector: the given vector is evaluated, own parameters untouched. */
    train_eval_t e1, e2;
    assert_int_equal(trainer_evaluate_vector(t, g, P, TRAIN_SPLIT_VALID, &e1), 0);
    float *now = malloc(P * sizeof(float));
    assert_int_equal(trainer_get_params(t, now, P), 0);
    assert_memory_equal(now, after, P * sizeof(float));
    assert_int_equal(trainer_set_params(t, g, P), 0);
    assert_int_equal(trainer_evaluate(t, TRAIN_SPLIT_VALID, &e2), 0);
    assert_true(e1.loss == e2.loss && e1.n == e2.n);
    /* An (almost surely) empty Poisson batch still steps with noise only. */
    assert_int_equal(trainer_set_dp(t, true, 1e-9, 1.0, 1.0), 0);
    assert_int_equal(trainer_train_steps(t, 1, &st), 0);
    assert_int_equal(st.examples, 0);
    assert_int_equal(st.dp_steps, 1);
    assert_int_equal(trainer_get_params(t, now, P), 0);
    size_t changed = 0;
    for (size_t j = 0; j < P; j++) changed += now[j] != g[j];
    assert_true(changed > P / 2);
    assert_int_equal(trainer_round(t, g, P, 0, delta, &st), -1);
    free(g); free(delta); free(after); free(now);
    trainer_destroy(&t);
}

/* trainer_set_stop: the SIGTERM hook of the node daemon ends a round after the current step. */
static int s_stop_calls;
static bool s_stop_after_two(void) { return ++s_stop_calls >= 2; }

static void test_stop_interrupts_round(void **state)
{
    (void)state;
    train_config_t c = s_cfg();
    trainer_t *t = s_trainer(&c, 60);
    size_t P = trainer_n_params(t);
    float *g = malloc(P * sizeof(float)), *delta = malloc(P * sizeof(float));
    assert_int_equal(trainer_get_params(t, g, P), 0);
    train_stats_t st;
    s_stop_calls = 0;
    trainer_set_stop(t, s_stop_after_two);
    assert_int_equal(trainer_round(t, g, P, 6, delta, &st), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    assert_non_null(strstr(medfl_error_message(), "interrupted after 2 of 6 steps"));
    assert_int_equal(st.steps, 2);
    trainer_set_stop(t, NULL);
    assert_int_equal(trainer_round(t, g, P, 3, delta, &st), 0);
    assert_int_equal(st.steps, 3);
    free(g);
    free(delta);
    trainer_destroy(&t);
}

static void s_expect(bool failed, const char *needle)
{
    assert_true(failed);
    if (!strstr(medfl_error_message(), needle))
        fail_msg("error '%s' lacks '%s'", medfl_error_message(), needle);
}

/* Head only (model.lora.targets = none): the cached pooled outputs and the host head pass
 * must give what the model's own forward/backward gives. At initialisation LoRA's B is 0, so
 * a LoRA trainer computes the same function, and its gradient's head part (the tail of the
 * flat vector) is the reference; finite differences of the head-only trainer's own loss are
 * the second check. Then DP (sigma 0, huge C) equals the plain mean, and one SGD step over
 * the whole split (q = 1) moves the parameters by exactly -lr * gradient. */
static void s_count_tick(void *ctx) { ++*(int *)ctx; }

static void test_head_only(void **state)
{
    (void)state;
    train_config_t c = s_cfg();
    trainer_t *a = s_trainer(&c, 60);
    snprintf(c.lora_targets, sizeof c.lora_targets, "none");
    trainer_t *h = s_trainer(&c, 60);
    size_t PA = trainer_n_params(a), P = trainer_n_params(h);
    assert_int_equal(P, 3 * (32 + 1));
    assert_true(PA > P);
    float *pa = malloc(PA * sizeof(float)), *ga = malloc(PA * sizeof(float));
    float *p = malloc(P * sizeof(float)), *g = malloc(P * sizeof(float)), *g2 = malloc(P * sizeof(float));
    assert_int_equal(trainer_get_params(a, pa, PA), 0);
    assert_int_equal(trainer_set_params(h, pa + (PA - P), P), 0);
    size_t idx[6] = {0, 2, 4, 7, 11, 19};
    assert_int_equal(trainer_batch_gradient(a, idx, 6, false, 6, ga), 0);
    assert_int_equal(trainer_batch_gradient(h, idx, 6, false, 6, g), 0);
    double scale = 0, maxdiff = 0;
    for (size_t j = 0; j < P; j++) {
        scale = fmax(scale, fabs(ga[PA - P + j]));
        maxdiff = fmax(maxdiff, fabs(g[j] - ga[PA - P + j]));
    }
    printf("head only vs LoRA model head gradient: max diff %.3g of max %.3g\n", maxdiff, scale);
    assert_true(scale > 0 && maxdiff < 1e-4 * scale);
    train_eval_t ea, eh;
    assert_int_equal(trainer_evaluate(a, TRAIN_SPLIT_VALID, &ea), 0);
    assert_int_equal(trainer_evaluate(h, TRAIN_SPLIT_VALID, &eh), 0);
    assert_true(fabs(ea.loss - eh.loss) < 1e-5 && ea.accuracy == eh.accuracy);

    /* Finite differences over the whole training split (mean loss = evaluate's loss). */
    size_t ntr = trainer_split_size(h, TRAIN_SPLIT_TRAIN);
    size_t *all = malloc(ntr * sizeof *all);
    for (size_t i = 0; i < ntr; i++) all[i] = i;
    assert_int_equal(trainer_batch_gradient(h, all, ntr, false, (double)ntr, g), 0);
    assert_int_equal(trainer_get_params(h, p, P), 0);
    size_t probe[5] = {0, 17, 40, 65, P - 1};
    for (int k = 0; k < 5; k++) {
        size_t j = probe[k];
        const float eps = 1e-2f, keep = p[j];
        train_eval_t up, dn;
        p[j] = keep + eps;
        assert_int_equal(trainer_evaluate_vector(h, p, P, TRAIN_SPLIT_TRAIN, &up), 0);
        p[j] = keep - eps;
        assert_int_equal(trainer_evaluate_vector(h, p, P, TRAIN_SPLIT_TRAIN, &dn), 0);
        p[j] = keep;
        double fd = (up.loss - dn.loss) / (2.0 * eps);
        printf("param %zu: analytic %.6f, finite difference %.6f\n", j, g[j], fd);
        assert_true(fabs(fd - g[j]) < 1e-3 + 1e-2 * fabs(fd));
    }
    /* DP path, sigma 0 and a huge C: the clipped mean is the mean. */
    assert_int_equal(trainer_use_seeded_rng(h, 3), 0);
    assert_int_equal(trainer_set_dp(h, true, 1.0, 0.0, 1e9), 0);
    assert_int_equal(trainer_batch_gradient(h, all, ntr, true, (double)ntr, g2), 0);
    for (size_t j = 0; j < P; j++) assert_true(fabs(g2[j] - g[j]) < 1e-5 * (scale + fabs(g[j])));
    /* One SGD step with q = 1 (every record sampled) over the split: p - lr g. */
    trainer_destroy(&h);
    snprintf(c.optimizer, sizeof c.optimizer, "sgd");
    c.lr = 0.5;
    c.warmup_fraction = 0;
    h = s_trainer(&c, 60);
    assert_int_equal(trainer_set_params(h, p, P), 0);
    assert_int_equal(trainer_use_seeded_rng(h, 3), 0);
    assert_int_equal(trainer_set_dp(h, true, 1.0, 0.0, 1e9), 0);
    trainer_set_schedule(h, 0, 0);
    int ticks = 0;
    trainer_set_tick(h, s_count_tick, &ticks);
    assert_int_equal(trainer_train_steps(h, 1, NULL), 0);
    assert_true(ticks >= 2); /* the encoder pass that fills the cache, then the step */
    assert_int_equal(trainer_get_params(h, g2, P), 0);
    for (size_t j = 0; j < P; j++)
        if (fabsf(g2[j] - (p[j] - 0.5f * g[j])) > 1e-5f * (1.0f + fabsf(p[j])))
            fail_msg("param %zu: %g after the SGD step, expected %g", j, g2[j], p[j] - 0.5f * g[j]);
    free(all); free(pa); free(ga); free(p); free(g); free(g2);
    trainer_destroy(&a); trainer_destroy(&h);
}

/* trainer_linear_step: the round's delta is exactly -scale times the clipped gradient sum
 * (what distributed noise relies on), and every setting that breaks linearity is refused. */
static void test_linear_step(void **state)
{
    (void)state;
    train_config_t c = s_cfg();
    snprintf(c.lora_targets, sizeof c.lora_targets, "none");
    snprintf(c.optimizer, sizeof c.optimizer, "sgd");
    c.lr = 0.5;
    c.head_lr = 2.0; /* head only: every coordinate is head, so one rate (2.0) applies */
    c.warmup_fraction = 0;
    trainer_t *h = s_trainer(&c, 60);
    size_t P = trainer_n_params(h), ntr = trainer_split_size(h, TRAIN_SPLIT_TRAIN);
    double scale = 0;
    s_expect(trainer_linear_step(h, 1, &scale) != 0, "DP-SGD on");
    assert_int_equal(trainer_use_seeded_rng(h, 5), 0);
    const double C = 0.05; /* small: most rows are clipped, so clipping is exercised */
    assert_int_equal(trainer_set_dp(h, true, 1.0, 0.0, C), 0);
    assert_int_equal(trainer_linear_step(h, 1, &scale), 0);
    assert_true(fabs(scale - 2.0 / (1.0 * (double)ntr)) < 1e-12);
    s_expect(trainer_linear_step(h, 2, &scale) != 0, "one local step");

    float *p = malloc(P * sizeof(float)), *sum = malloc(P * sizeof(float));
    float *delta = malloc(P * sizeof(float));
    size_t *all = malloc(ntr * sizeof *all);
    for (size_t i = 0; i < ntr; i++) all[i] = i;
    assert_int_equal(trainer_get_params(h, p, P), 0);
    assert_int_equal(trainer_batch_gradient(h, all, ntr, true, 1.0, sum), 0); /* clipped sum */
    assert_int_equal(trainer_linear_step(h, 1, &scale), 0);
    assert_int_equal(trainer_round(h, p, P, 1, delta, NULL), 0);
    double worst = 0, mag = 0;
    for (size_t j = 0; j < P; j++) {
        worst = fmax(worst, fabs(delta[j] + scale * sum[j]));
        mag = fmax(mag, fabs(scale * sum[j]));
    }
    printf("linear step: max |delta + scale * clipped sum| %.3g of max %.3g\n", worst, mag);
    assert_true(mag > 0 && worst < 1e-5 * mag);
    /* The norm of one record's effect is at most scale * C: clipping is what bounds it. */
    float *one = malloc(P * sizeof(float));
    assert_int_equal(trainer_batch_gradient(h, all, 1, true, 1.0, one), 0);
    double nrm = 0;
    for (size_t j = 0; j < P; j++) nrm += (double)one[j] * one[j];
    assert_true(sqrt(nrm) <= C * (1 + 1e-6));
    trainer_destroy(&h);

    /* AdamW is not linear in the gradient; LoRA with its own head rate has two rates. */
    snprintf(c.optimizer, sizeof c.optimizer, "adamw");
    h = s_trainer(&c, 60);
    assert_int_equal(trainer_set_dp(h, true, 0.5, 0.0, C), 0);
    s_expect(trainer_linear_step(h, 1, &scale) != 0, "optimizer = sgd");
    trainer_destroy(&h);
    snprintf(c.optimizer, sizeof c.optimizer, "sgd");
    snprintf(c.lora_targets, sizeof c.lora_targets, "query,value");
    h = s_trainer(&c, 60);
    assert_int_equal(trainer_set_dp(h, true, 0.5, 0.0, C), 0);
    s_expect(trainer_linear_step(h, 1, &scale) != 0, "one learning rate");
    trainer_destroy(&h);
    c.head_lr = 0;
    h = s_trainer(&c, 60);
    assert_int_equal(trainer_set_dp(h, true, 0.5, 0.0, C), 0);
    assert_int_equal(trainer_linear_step(h, 1, &scale), 0);
    assert_true(fabs(scale - 0.5 / (0.5 * (double)trainer_split_size(h, TRAIN_SPLIT_TRAIN))) <
                1e-12);
    trainer_destroy(&h);
    free(p); free(sum); free(delta); free(all); free(one);
}

static void test_errors(void **state)
{
    (void)state;
    /* unknown label: the records reader names line and field */
    size_t len;
    char *buf = s_jsonl(20, 3, true, &len);
    records_opts_t o;
    records_opts_init(&o);
    o.labels = s_labels;
    o.n_labels = 3;
    records_t *set = records_new();
    /* the record and field are named; the label's value (it may be PHI) is not */
    s_expect(records_load_buffer(set, "bad.jsonl", buf, len, &o) != 0, "unknown label");
    s_expect(true, "bad.jsonl:6");
    assert_null(strstr(medfl_error_message(), "neuro"));
    records_destroy(&set);
    free(buf);

    train_config_t c = s_cfg();
    snprintf(c.base, sizeof c.base, "%s/missing.h5", s_dir);
    s_expect(trainer_new(&c, "cpu", s_labels, 3) == NULL, "missing.h5");
    c = s_cfg();
    c.max_seq_len = 65;
    s_expect(trainer_new(&c, "cpu", s_labels, 3) == NULL, "max_seq_len");
    c = s_cfg();
    snprintf(c.lora_targets, sizeof c.lora_targets, "query,bogus");
    s_expect(trainer_new(&c, "cpu", s_labels, 3) == NULL, "model.lora.targets");
    c = s_cfg();
    const char *dup[] = {"a", "b", "a"};
    s_expect(trainer_new(&c, "cpu", dup, 3) == NULL, "appears twice");
    s_expect(trainer_new(&c, "cpu", dup, 1) == NULL, "at least 2");
    c.dp = true;
    c.noise_multiplier = 0;
    c.target_epsilon = 0;
    trainer_t *t = trainer_new(&c, "cpu", s_labels, 3);
    assert_non_null(t);
    train_eval_t ev;
    s_expect(trainer_evaluate(t, TRAIN_SPLIT_VALID, &ev) != 0, "not loaded");
    s_expect(trainer_train_steps(t, 1, NULL) != 0, "training split is empty");
    double q, sigma;
    s_expect(trainer_dp_plan(t, 10, &q, &sigma) != 0, "no training records");
    records_t *rs = s_records(30, 4);
    assert_int_equal(trainer_set_records(t, rs, false), 0);
    s_expect(trainer_dp_plan(t, 10, &q, &sigma) != 0, "target_epsilon");
    /* an adapter with another label set is refused */
    const char *other[] = {"pulm", "ortho", "cardio"};
    trainer_t *u = trainer_new(&c, "cpu", other, 3);
    assert_non_null(u);
    char ad[700];
    snprintf(ad, sizeof ad, "%s/other.h5", s_dir);
    assert_int_equal(trainer_save(u, ad, false), 0);
    s_expect(trainer_load(t, ad) != 0, "cardio");
    const char *four[] = {"pulm", "ortho", "derm", "cardio"};
    trainer_t *w = trainer_new(&c, "cpu", four, 4);
    assert_non_null(w);
    s_expect(trainer_set_records(w, rs, false) != 0, "3 labels but the model has 4");
    int split;
    s_expect(train_split_parse("validation", &split) != 0, "validation");
    records_destroy(&rs);
    trainer_destroy(&t); trainer_destroy(&u); trainer_destroy(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_learns_easy_task),
        cmocka_unit_test(test_checkpoint_continues_identically),
        cmocka_unit_test(test_dp_gradient),
        cmocka_unit_test(test_dp_steps_and_round),
        cmocka_unit_test(test_stop_interrupts_round),
        cmocka_unit_test(test_head_only),
        cmocka_unit_test(test_linear_step),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
