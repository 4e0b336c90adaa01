/* aggregator/strategy + contrib_db: FedAvg exact on small vectors from the weighted sum;
 * FedAdam against values computed independently with numpy (Reddi et al. 2021, Alg. 2);
 * optimizer state save/load, damage and mismatch refusal; the weighting formula's
 * properties (normalised, bounded, monotone in n, capped, unreliable and outlier nodes
 * down-weighted, order-independent, deterministic); leave-one-out scoring with a synthetic
 * evaluator; the SQLite history (reliability EMA, replay safety, per-round rows). */
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

#include "aggregator/contrib_db.h"
#include "aggregator/strategy.h"
#include "common/error.h"
#include "common/log.h"

static char s_dir[] = "/tmp/medfl-test-strategy-XXXXXX";

static int s_setup(void **state)
{
    (void)state;
    log_configure(fopen("/dev/null", "w"), LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_fedavg_exact(void **state)
{
    (void)state;
    strategy_params_t p;
    strategy_params_default(&p, STRATEGY_FEDAVG);
    strategy_t *s = strategy_new(&p, 3);
    assert_non_null(s);
    /* Two nodes, w = 1 and 3; deltas (4, 0, -4) and (0, 8, 4): S = (4, 24, 8), W = 4,
     * mean delta (1, 6, 2). Every value is exact in binary floating point. */
    float x[3] = {1, 2, 3};
    const float d1[3] = {4, 0, -4}, d2[3] = {0, 8, 4};
    float sum[3];
    for (int i = 0; i < 3; i++) sum[i] = 1 * d1[i] + 3 * d2[i];
    assert_int_equal(strategy_step(s, x, sum, 4.0), 0);
    assert_true(x[0] == 2.0f && x[1] == 8.0f && x[2] == 5.0f);
    /* Server learning rate 0.5 halves the step. */
    strategy_destroy(&s);
    p.lr = 0.5;
    s = strategy_new(&p, 3);
    assert_int_equal(strategy_step(s, x, sum, 4.0), 0);
    assert_true(x[0] == 2.5f && x[1] == 11.0f && x[2] == 6.0f);
    /* Refusals leave x unchanged. */
    sum[1] = NAN;
    assert_int_equal(strategy_step(s, x, sum, 4.0), -1);
    assert_int_equal(strategy_step(s, x, sum, 0.0), -1);
    assert_true(x[1] == 11.0f);
    assert_int_equal(strategy_steps(s), 1);
    strategy_destroy(&s);
    strategy_destroy(&s);
    p.lr = 0;
    assert_null(strategy_new(&p, 3));
}

static void test_fedadam_reference(void **state)
{
    (void)state;
    strategy_params_t p;
    strategy_params_default(&p, STRATEGY_FEDADAM);
    p.lr = 0.1;
    strategy_t *s = strategy_new(&p, 3);
    float x[3] = {0.5f, -1.0f, 2.0f};
    const float s1[3] = {0.3f, -0.6f, 0.0f}, s2[3] = {0.1f, 0.2f, -0.4f};
    /* numpy: g = S/W; m = .9 m + .1 g; v = .99 v + .01 g^2; x += .1 m / (sqrt(v) + 1e-3) */
    const double ref1[3] = {0.5952380952, -1.0975609756, 2.0000000000};
    const double ref2[3] = {0.7021239391, -1.1594118844, 1.9047619048};
    assert_int_equal(strategy_step(s, x, s1, 1.5), 0);
    for (int i = 0; i < 3; i++) assert_true(fabs(x[i] - ref1[i]) < 2e-6);
    assert_int_equal(strategy_step(s, x, s2, 2.0), 0);
    for (int i = 0; i < 3; i++) assert_true(fabs(x[i] - ref2[i]) < 2e-6);
    assert_true(fabs(strategy_m(s)[0] - 0.023) < 1e-7);
    assert_true(fabs(strategy_v(s)[1] - 0.001684) < 1e-8);

    /* State survives save/load; a third step from the loaded state equals the original's. */
    char path[128];
    snprintf(path, sizeof path, "%s/opt.bin", s_dir);
    assert_int_equal(strategy_save(s, path), 0);
    strategy_t *t = strategy_load(path, &p, 3);
    assert_non_null(t);
    assert_int_equal(strategy_steps(t), 2);
    float xa[3], xb[3];
    memcpy(xa, x, sizeof x);
    memcpy(xb, x, sizeof x);
    assert_int_equal(strategy_step(s, xa, s1, 1.0), 0);
    assert_int_equal(strategy_step(t, xb, s1, 1.0), 0);
    assert_memory_equal(xa, xb, sizeof xa);
    strategy_destroy(&t);

    /* Wrong size, wrong kind, damaged file, missing file. */
    assert_null(strategy_load(path, &p, 4));
    strategy_params_t q;
    strategy_params_default(&q, STRATEGY_FEDAVG);
    assert_null(strategy_load(path, &q, 3));
    FILE *f = fopen(path, "r+b");
    fseek(f, 40, SEEK_SET);
    fputc(0x55, f);
    fclose(f);
    assert_null(strategy_load(path, &p, 3));
    assert_non_null(strstr(medfl_error_message(), "checksum"));
    assert_null(strategy_load("/nonexistent/opt.bin", &p, 3));
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    char sp[256];
    strategy_state_path("/s/versions", 7, sp, sizeof sp);
    assert_string_equal(sp, "/s/versions/opt_v000007.bin");
    strategy_destroy(&s);
}

static double s_sum(const contrib_output_t *o, size_t n)
{
    double t = 0;
    for (size_t i = 0; i < n; i++) t += o[i].weight;
    return t;
}

static void s_inputs(contrib_input_t *in, size_t n)
{
    static const char *names[] = {"a", "b", "c", "d", "e", "f"};
    for (size_t i = 0; i < n; i++) {
        memset(&in[i], 0, sizeof in[i]);
        in[i].node = names[i];
        in[i].n_samples = 1000;
        in[i].has_quality = true;
        in[i].quality = 0.50 + 0.01 * (double)i;
        in[i].reliability = 1;
        in[i].loo = 1;
    }
}

static void test_weights_properties(void **state)
{
    (void)state;
    contrib_params_t p;
    contrib_params_default(&p);
    contrib_input_t in[5];
    contrib_output_t out[5], out2[5];
    s_inputs(in, 5);
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    assert_true(fabs(s_sum(out, 5) - 1) < 1e-12);
    for (int i = 0; i < 5; i++) assert_true(fabs(out[i].weight - 0.2) < 1e-9); /* equal inputs */

    /* Monotone in n, damped (4x the records is 2x the raw weight), bounded. */
    double prev = 0;
    for (double n = 100; n <= 1e6; n *= 4) {
        in[0].n_samples = n;
        assert_int_equal(contrib_weights(&p, in, 5, out), 0);
        assert_true(out[0].weight >= prev - 1e-12);
        prev = out[0].weight;
        assert_true(fabs(s_sum(out, 5) - 1) < 1e-12);
        for (int i = 0; i < 5; i++)
            assert_true(out[i].weight >= p.floor_frac / 5 - 1e-12 && out[i].weight <= p.cap + 1e-12);
    }
    /* One enormous hospital is capped at 50 %. */
    in[0].n_samples = 1e9;
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    assert_true(fabs(out[0].weight - 0.5) < 1e-9);
    /* A node without data still gets the floor. */
    in[0].n_samples = 0;
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    assert_true(fabs(out[0].weight - p.floor_frac / 5) < 1e-9);
    in[0].n_samples = 1000;

    /* Unreliable node down-weighted. */
    in[1].reliability = contrib_reliability_update(contrib_reliability_update(1, false, 0.3), false, 0.3);
    assert_true(fabs(in[1].reliability - 0.49) < 1e-12);
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    assert_true(out[1].weight < out[0].weight * 0.6 && out[1].weight > 0);
    in[1].reliability = 1;

    /* Outlier reported quality down-weighted; normal spread is not. */
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    for (int i = 0; i < 5; i++) assert_true(out[i].quality == 1.0);
    in[3].quality = 2.5;
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    assert_true(out[3].z > p.z0);
    assert_true(out[3].quality < 0.01);
    assert_true(fabs(out[3].weight - p.floor_frac / 5) < 1e-9);
    assert_true(out[0].quality == 1.0);
    /* No quality reported: neutral. */
    in[3].has_quality = false;
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    assert_true(out[3].quality == 1.0 && out[3].z == 0);
    in[3].has_quality = true;
    in[3].quality = 2.5;

    /* Deterministic and independent of the order of the nodes. */
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    assert_int_equal(contrib_weights(&p, in, 5, out2), 0);
    assert_memory_equal(out, out2, sizeof out);
    contrib_input_t rev[5];
    for (int i = 0; i < 5; i++) rev[i] = in[4 - i];
    assert_int_equal(contrib_weights(&p, rev, 5, out2), 0);
    for (int i = 0; i < 5; i++) assert_true(fabs(out[i].weight - out2[4 - i].weight) < 1e-12);

    /* Bad inputs and parameters. */
    in[2].reliability = 1.5;
    assert_int_equal(contrib_weights(&p, in, 5, out), -1);
    in[2].reliability = 1;
    in[2].n_samples = -1;
    assert_int_equal(contrib_weights(&p, in, 5, out), -1);
    in[2].n_samples = 10;
    p.floor_frac = 0;
    assert_int_equal(contrib_weights(&p, in, 5, out), -1);
    contrib_params_default(&p);
    assert_int_equal(contrib_weights(&p, in, 0, out), -1);
    /* A single node takes everything. */
    assert_int_equal(contrib_weights(&p, in, 1, out), 0);
    assert_true(out[0].weight == 1.0);
}

static void test_robust_z(void **state)
{
    (void)state;
    const double x[5] = {1, 2, 3, 4, 100};
    double z[5];
    contrib_robust_z(x, 5, 0, z);
    /* median 3, MAD 1 -> scale 1.4826 */
    assert_true(fabs(z[0] + 2 / 1.4826) < 1e-12);
    assert_true(fabs(z[4] - 97 / 1.4826) < 1e-9);
    const double same[3] = {5, 5, 5};
    contrib_robust_z(same, 3, 0, z);
    assert_true(z[0] == 0 && z[1] == 0 && z[2] == 0);
    contrib_robust_z(x, 5, 10, z); /* floor on the scale */
    assert_true(fabs(z[4] - 9.7) < 1e-12);
}

/* Synthetic validation set: loss = squared distance to a target vector. */
typedef struct {
    const float *target;
    int calls;
} s_eval_ctx;

static int s_eval(void *ctx, const float *x, size_t n, double *loss, double *accuracy)
{
    s_eval_ctx *c = ctx;
    double l = 0;
    for (size_t i = 0; i < n; i++) l += ((double)x[i] - c->target[i]) * ((double)x[i] - c->target[i]);
    *loss = l;
    *accuracy = 1 / (1 + l);
    c->calls++;
    return 0;
}

static int s_eval_fail(void *ctx, const float *x, size_t n, double *loss, double *accuracy)
{
    (void)ctx, (void)x, (void)n, (void)loss, (void)accuracy;
    return medfl_error_set(MEDFL_EIO, "evaluator failed");
}

static void test_leave_one_out(void **state)
{
    (void)state;
    const float x0[4] = {0, 0, 0, 0}, target[4] = {1, 1, 1, 1};
    /* Four nodes move towards the target, one (index 2) away from it. */
    const float g0[4] = {1.0f, 0.9f, 1.1f, 1.0f}, g1[4] = {0.9f, 1.0f, 1.0f, 1.1f},
                bad[4] = {-3, -3, -3, -3}, g3[4] = {1.1f, 1.0f, 0.9f, 1.0f}, g4[4] = {1, 1, 1, 0.9f};
    const float *deltas[5] = {g0, g1, bad, g3, g4};
    const double w[5] = {1, 1, 1, 1, 1};
    double scores[5], loo[5];
    s_eval_ctx ctx = {target, 0};
    assert_int_equal(contrib_leave_one_out(x0, deltas, w, 5, 4, s_eval, &ctx, 2.0, scores, loo), 0);
    assert_int_equal(ctx.calls, 6);
    assert_true(scores[2] < 0);
    for (int u = 0; u < 5; u++)
        if (u != 2) assert_true(scores[u] > 0 && loo[u] == 1.0);
    assert_true(loo[2] < 0.01 && loo[2] > 0);

    /* The factor feeds the weights: the harmful node drops to the floor. */
    contrib_params_t p;
    contrib_params_default(&p);
    contrib_input_t in[5];
    contrib_output_t out[5];
    s_inputs(in, 5);
    for (int u = 0; u < 5; u++) in[u].loo = loo[u];
    assert_int_equal(contrib_weights(&p, in, 5, out), 0);
    assert_true(fabs(out[2].weight - p.floor_frac / 5) < 1e-9);

    assert_int_equal(contrib_leave_one_out(x0, deltas, w, 1, 4, s_eval, &ctx, 2.0, scores, loo), -1);
    assert_int_equal(contrib_leave_one_out(x0, deltas, w, 5, 4, s_eval_fail, NULL, 2.0, scores, loo), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EIO);
}

static int s_collect(void *ctx, const contrib_row_t *row)
{
    int *count = ctx;
    assert_true(row->round >= 1 && row->c.weight > 0 && row->c.weight <= 1);
    (*count)++;
    return 0;
}

static void test_history_db(void **state)
{
    (void)state;
    char path[128];
    contrib_db_path(s_dir, path, sizeof path);
    contrib_db_t *db = contrib_db_open(path);
    assert_non_null(db);
    const char *nodes[3] = {"a", "b", "c"};
    const double n[3] = {400, 400, 400};
    contrib_params_t p;
    contrib_params_default(&p);
    contrib_output_t out[3];

    /* Round 1: no history, equal weights. */
    assert_int_equal(contrib_db_compute_round(db, &p, 1, nodes, n, NULL, 3, 3, out), 0);
    for (int i = 0; i < 3; i++) assert_true(fabs(out[i].weight - 1.0 / 3) < 1e-9);
    /* b drops out of rounds 1 and 2; replaying round 1's record does not count twice. */
    for (uint64_t r = 1; r <= 2; r++)
        for (int i = 0; i < 3; i++)
            assert_int_equal(contrib_db_record_participation(db, r, nodes[i], i != 1, p.ema_alpha), 0);
    assert_int_equal(contrib_db_record_participation(db, 1, "b", false, p.ema_alpha), 0);
    double rel;
    assert_int_equal(contrib_db_reliability(db, "b", &rel), 0);
    assert_true(fabs(rel - 0.49) < 1e-12);
    assert_int_equal(contrib_db_reliability(db, "new", &rel), 0);
    assert_true(rel == 1.0);
    /* Reports: c's loss on the global versions is far from the others'. */
    for (uint64_t v = 1; v <= 2; v++) {
        assert_int_equal(contrib_db_record_report(db, "a", v, 0.50, 0.8, 0.7, 100), 0);
        assert_int_equal(contrib_db_record_report(db, "b", v, 0.52, 0.8, 0.7, 100), 0);
        assert_int_equal(contrib_db_record_report(db, "c", v, 3.00, 0.3, 0.2, 100), 0);
    }
    double mean;
    bool has;
    assert_int_equal(contrib_db_recent_loss(db, "c", 3, &mean, &has), 0);
    assert_true(has && fabs(mean - 3.0) < 1e-12);
    assert_int_equal(contrib_db_recent_loss(db, "zz", 3, &mean, &has), 0);
    assert_false(has);
    assert_int_equal(contrib_db_compute_round(db, &p, 3, nodes, n, NULL, 3, 3, out), 0);
    assert_true(out[0].weight > out[1].weight);
    assert_true(out[1].weight > out[2].weight);
    assert_true(fabs(out[0].weight + out[1].weight + out[2].weight - 1) < 1e-12);
    int count = 0;
    assert_int_equal(contrib_db_history(db, NULL, s_collect, &count), 0);
    assert_int_equal(count, 6);
    count = 0;
    assert_int_equal(contrib_db_history(db, "c", s_collect, &count), 0);
    assert_int_equal(count, 2);
    assert_int_equal(contrib_db_record_participation(db, 4, "a", true, 0), -1);
    contrib_db_destroy(&db);
    contrib_db_destroy(&db);
    /* Reopened: history is there. */
    db = contrib_db_open(path);
    count = 0;
    assert_int_equal(contrib_db_history(db, NULL, s_collect, &count), 0);
    assert_int_equal(count, 6);
    contrib_db_destroy(&db);
    /* The reader command over the same file; a missing history is an error, not created. */
    char *argv1[] = {"weights", "--state", s_dir, "--node", "c", NULL};
    assert_int_equal(cmd_weights(5, argv1), 0);
    char *argv2[] = {"weights", "--state", "/nonexistent", NULL};
    assert_int_equal(cmd_weights(3, argv2), 1);
    assert_int_equal(access("/nonexistent/contrib.db", F_OK), -1);
    char *argv3[] = {"weights", "--bogus", NULL};
    assert_int_equal(cmd_weights(2, argv3), 1);
    assert_null(contrib_db_open("/nonexistent/dir/contrib.db"));
    assert_int_equal(medfl_error_code(), MEDFL_EDB);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fedavg_exact),
        cmocka_unit_test(test_fedadam_reference),
        cmocka_unit_test(test_weights_properties),
        cmocka_unit_test(test_robust_z),
        cmocka_unit_test(test_leave_one_out),
        cmocka_unit_test(test_history_db),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
