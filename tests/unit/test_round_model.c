/* The model trainer behind a federated round (node/round_model.c) takes the round's
 * hyperparameters from RoundStart and falls back to the node's [train] settings only for
 * values the round does not send (0). Checked where it matters, at the optimizer: on a tiny
 * random BERT written here, with the whole training split in one batch and one local step,
 * AdamW's first update is lr * g / (|g| + eps) + lr * wd * w, i.e. exactly proportional to
 * the learning rate. So:
 * - a round sending lr 2L gives twice the delta of a round sending L (the node's train.lr
 *   is a third value, 7L, that must NOT be used);
 * - a round sending lr 0 (absent) gives the delta of the node's train.lr;
 * - the log line names the source of lr and batch size;
 * - a round's batch size reaches the data stream (batch 1 gives another update than the
 *   full batch) and an out-of-range one is refused;
 * - examples_processed (the node's training_examples_total metric) is the sum of the batches
 *   the steps went through, the last batch of an epoch included, while the update's weight
 *   stays the training split; under DP the log gives the expected Poisson batch q x N.
 * LoRA with AdamW is set explicitly: the node's defaults train the head only with SGD. */
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
#include "common/config.h"
#include "common/error.h"
#include "common/log.h"
#include "node/node_config.h"
#include "node/round.h"
#include "node/round_model.h"
#include "node/train.h"
#include "tests/unit/testlib.h"

static const char *s_dir; /* testlib_setup's folder */
static char s_conf[700];

static const char *const s_groups[3][4] = {
    {"cough", "wheeze", "sputum", "dyspnea"},
    {"fracture", "sprain", "cast", "knee"},
    {"rash", "eczema", "itch", "lesion"}};
static const char *const s_filler[] = {"patient", "reports", "history", "today", "follow",
                                       "seen", "noted", "mild", "since", "visit"};
static const char *const s_labels[3] = {"pulm", "ortho", "derm"};

#define NODE_LR 7e-3 /* train.lr: the fallback */
#define ROUND_LR 1e-3

/* The base model: a tiny random BERT whose vocabulary holds the task's words. */
static int s_write_base(const char *path)
{
    const char *words[12 + 10];
    size_t n = 0;
    for (int g = 0; g < 3; g++)
        for (int w = 0; w < 4; w++) words[n++] = s_groups[g][w];
    for (size_t i = 0; i < 10; i++) words[n++] = s_filler[i];
    return testlib_write_tiny_bert(path, words, n, "test_round_model");
}

static int s_setup(void **state)
{
    (void)state;
    if (!(s_dir = testlib_setup("round-model", true, LOG_LEVEL_INFO))) return -1;
    char path[700];
    snprintf(path, sizeof path, "%s/base.h5", s_dir);
    if (s_write_base(path) != 0) {
        fprintf(stderr, "base: %s\n", medfl_error_message());
        return -1;
    }
    /* 30 notes, 24 in the training split: one batch of train.batch_size 64 holds them all */
    snprintf(path, sizeof path, "%s/notes.jsonl", s_dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    uint64_t st = 11;
    for (int i = 0; i < 30; i++) {
        int lab = i % 3;
        fprintf(f, "{\"text\": \"");
        for (int w = 0; w < 8; w++)
            fprintf(f, "%s%s", w ? " " : "",
                    testlib_rng(&st) % 3 == 0 ? s_groups[lab][testlib_rng(&st) % 4] : s_filler[testlib_rng(&st) % 10]);
        fprintf(f, ".\", \"label\": \"%s\"}\n", s_labels[lab]);
    }
    fclose(f);
    snprintf(s_conf, sizeof s_conf, "%s/node.conf", s_dir);
    f = fopen(s_conf, "w");
    if (!f) return -1;
    fprintf(f, "node_id = hospital-1\n[aggregator]\nendpoint = tcp://127.0.0.1:1\n"
               "[data]\nrecords = notes.jsonl\nlabels = pulm,ortho,derm\n"
               "[model]\nbase = base.h5\nlora.r = 4\nlora.targets = query,value\n"
               "[train]\noptimizer = adamw\nlr = %g\nbatch_size = 64\nmax_seq_len = 16\nthreads = 1\n"
               "valid_fraction = 0.2\nseed = 7\nwarmup_fraction = 0\n", NODE_LR);
    fclose(f);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    return testlib_teardown();
}

typedef struct {
    model_trainer_t *m;
    round_trainer_t tr;
    size_t n;
    float *global;
} fixture_t;

static void s_open(fixture_t *fx)
{
    node_config_t cfg;
    assert_int_equal(cfg_set_defaults(node_config_table, &cfg), 0);
    if (cfg_load_subset(node_config_table, node_config_table, &cfg, s_conf) != 0)
        fail_msg("config: %s", medfl_error_message());
    fx->m = model_trainer_new(&cfg);
    if (!fx->m) fail_msg("model trainer: %s", medfl_error_message());
    assert_int_equal(model_trainer_records(fx->m), 24);
    memset(&fx->tr, 0xA5, sizeof fx->tr); /* the daemon binds into stack memory */
    model_trainer_bind(fx->m, &fx->tr);
    assert_non_null(fx->tr.examples_processed);
    /* a version whose size is not the model's is refused before training */
    float one = 0;
    uint64_t ne = 0;
    round_hparams_t hp = {0};
    hp.round_id = 1;
    hp.local_steps = 1;
    assert_int_not_equal(fx->tr.train(fx->tr.ctx, &one, 1, &hp, &one, &ne), 0);
    fx->n = model_trainer_numel(fx->m);
    assert_true(fx->n > 100);
    fx->global = calloc(fx->n, sizeof *fx->global);
    assert_non_null(fx->global);
    uint64_t st = 5; /* a non-zero global so that every LoRA factor has a gradient */
    for (size_t i = 0; i < fx->n; i++)
        fx->global[i] = (float)(((double)(testlib_rng(&st) >> 11) / 9007199254740992.0 - 0.5) * 0.1);
}

static void s_close(fixture_t *fx)
{
    model_trainer_destroy(&fx->m);
    model_trainer_destroy(&fx->m); /* twice: safe */
    free(fx->global);
}

static float *s_round(fixture_t *fx, uint64_t round_id, double lr, uint32_t batch)
{
    float *delta = calloc(fx->n, sizeof *delta);
    assert_non_null(delta);
    round_hparams_t hp = {0};
    hp.round_id = round_id;
    hp.lr = lr;
    hp.batch_size = batch;
    hp.local_steps = 1;
    uint64_t ne = 0;
    if (fx->tr.train(fx->tr.ctx, fx->global, fx->n, &hp, delta, &ne) != 0)
        fail_msg("round %llu: %s", (unsigned long long)round_id, medfl_error_message());
    assert_int_equal(ne, 24);
    return delta;
}

static double s_norm(const float *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

/* max_i |a_i - k b_i| relative to max |a_i| */
static double s_rel_diff(const float *a, const float *b, double k, size_t n)
{
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - k * (double)b[i]));
        m = fmax(m, fabs((double)a[i]));
    }
    return m > 0 ? d / m : INFINITY;
}

static void test_round_lr_reaches_optimizer(void **state)
{
    (void)state;
    fixture_t fx;
    s_open(&fx);
    float *d1 = s_round(&fx, 1, ROUND_LR, 0);
    assert_true(testlib_log_has("round 1: lr 0.001 (from the round), batch size 64 (node train.batch_size"));
    float *d2 = s_round(&fx, 2, 2 * ROUND_LR, 0);
    assert_true(testlib_log_has("round 2: lr 0.002 (from the round)"));
    float *d0 = s_round(&fx, 3, 0, 0); /* the round sent no lr: train.lr = 7 L */
    assert_true(testlib_log_has("round 3: lr 0.007 (node train.lr: the round sent none)"));
    assert_true(s_norm(d1, fx.n) > 0);
    /* AdamW's first step is linear in lr: 2L gives 2 x the delta of L, 7L gives 7 x */
    assert_true(s_rel_diff(d2, d1, 2.0, fx.n) < 1e-3);
    assert_true(s_rel_diff(d0, d1, NODE_LR / ROUND_LR, fx.n) < 1e-3);
    /* and the node's own rate was not used when the round sent one */
    assert_true(s_rel_diff(d1, d0, 1.0, fx.n) > 0.5);
    free(d0);
    free(d1);
    free(d2);
    s_close(&fx);
}

static void test_round_batch_size(void **state)
{
    (void)state;
    fixture_t fx;
    s_open(&fx);
    float *full = s_round(&fx, 1, ROUND_LR, 64);
    assert_true(testlib_log_has("round 1: lr 0.001 (from the round), batch size 64 (from the round)"));
    float *full2 = s_round(&fx, 2, ROUND_LR, 0); /* fallback 64: the same single batch */
    assert_true(s_rel_diff(full2, full, 1.0, fx.n) < 1e-3);
    float *one = s_round(&fx, 3, ROUND_LR, 1); /* one example: another gradient */
    assert_true(testlib_log_has("round 3: lr 0.001 (from the round), batch size 1 (from the round)"));
    assert_true(s_rel_diff(one, full, 1.0, fx.n) > 0.1);
    free(full);
    free(full2);
    free(one);
    /* a batch size the trainer cannot take is refused, not clamped */
    float *delta = calloc(fx.n, sizeof *delta);
    round_hparams_t hp = {0};
    hp.round_id = 4;
    hp.lr = ROUND_LR;
    hp.batch_size = 100000;
    hp.local_steps = 1;
    uint64_t ne = 0;
    assert_int_not_equal(fx.tr.train(fx.tr.ctx, fx.global, fx.n, &hp, delta, &ne), 0);
    assert_non_null(strstr(medfl_error_message(), "batch size 100000 outside"));
    free(delta);
    s_close(&fx);
}

/* One round of `steps` local steps; returns examples_processed, checks the weight. */
static uint64_t s_processed_after(fixture_t *fx, uint64_t round_id, uint32_t batch,
                                  uint32_t steps, bool dp)
{
    float *delta = calloc(fx->n, sizeof *delta);
    assert_non_null(delta);
    round_hparams_t hp = {0};
    hp.round_id = round_id;
    hp.lr = ROUND_LR;
    hp.batch_size = batch;
    hp.local_steps = steps;
    hp.dp = dp;
    hp.noise_multiplier = 1.0;
    hp.clip_norm = 1.0;
    hp.sample_rate = 0.5;
    uint64_t ne = 0;
    if (fx->tr.train(fx->tr.ctx, fx->global, fx->n, &hp, delta, &ne) != 0)
        fail_msg("round %llu: %s", (unsigned long long)round_id, medfl_error_message());
    assert_int_equal(ne, 24); /* the weight: the training split, whatever was processed */
    free(delta);
    assert_non_null(fx->tr.examples_processed);
    return fx->tr.examples_processed(fx->tr.ctx);
}

static void test_round_examples_processed(void **state)
{
    (void)state;
    /* the synthetic trainer has no examples_processed (n_examples is its count): binding
     * into garbage leaves it and every other optional callback absent, not garbage */
    synth_trainer_t *syn = synth_trainer_new("hospital-1", 10, 0);
    assert_non_null(syn);
    round_trainer_t st;
    memset(&st, 0xA5, sizeof st);
    synth_trainer_bind(syn, &st);
    assert_null(st.examples_processed);
    assert_null(st.linear_step);
    assert_null(st.check_layout);
    synth_trainer_destroy(&syn);
    fixture_t fx;
    s_open(&fx);
    /* 24 training records in batches of 10: an epoch is 10, 10, 4 */
    assert_int_equal(s_processed_after(&fx, 1, 10, 2, false), 20);
    /* the data stream goes on: the epoch's last batch (4), then the next epoch's first (10) */
    assert_int_equal(s_processed_after(&fx, 2, 10, 2, false), 14);
    assert_int_equal(s_processed_after(&fx, 3, 1, 3, false), 3);
    /* DP-SGD: Poisson draws at q 0.5 of 24, 12 expected a step; the log says so */
    uint64_t dp = s_processed_after(&fx, 4, 10, 8, true);
    assert_true(testlib_log_has("round 4: lr 0.001 (from the round), DP-SGD Poisson batches at "
                                "q 0.5 (from the round): expected batch 12.0 = q x 24 training "
                                "records, 8 local steps"));
    assert_false(testlib_log_has("round 4: lr 0.001 (from the round), batch size"));
    /* 8 draws of Binomial(24, 0.5): mean 96, sd 5.7; 60..132 fails once in 10^9 */
    assert_true(dp >= 60 && dp <= 132);
    char line[80];
    snprintf(line, sizeof line, "round 4: 8 steps (%llu examples)", (unsigned long long)dp);
    assert_true(testlib_log_has(line));
    s_close(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_lr_reaches_optimizer),
        cmocka_unit_test(test_round_batch_size),
        cmocka_unit_test(test_round_examples_processed),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
