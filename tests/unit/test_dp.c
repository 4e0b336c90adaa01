/* common/dp: the RDP accountant against published values (Opacus, TF-Privacy) and an
 * Opacus-generated fixture, the inverse (noise multiplier) round trip, clipping bounds,
 * Gaussian noise statistics from a seeded stream (fixed seed: deterministic, never flaky),
 * Poisson sampling, and bad-argument failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dp.h"
#include "common/error.h"

static void s_assert_rel(double got, double want, double rel, const char *what)
{
    double err = fabs(got - want) / fmax(fabs(want), 1e-300);
    if (!(err <= rel)) fail_msg("%s: got %.17g want %.17g (rel err %.3g > %.3g)", what, got, want, err, rel);
}

/* Opacus' test value (tests/accountants_test.py / privacy_analysis test in Opacus, quoted
 * in issue 4): q = 0.04, σ = 1.5, 2250 steps, δ = 1e-5 → ε = 7.32911117143. */
static void test_opacus_published_case(void **state)
{
    (void)state;
    dp_accountant_t *acc = dp_accountant_new(NULL, 0);
    assert_non_null(acc);
    assert_int_equal(dp_accountant_add(acc, 0.04, 1.5, 2250), 0);
    double eps, order;
    assert_int_equal(dp_accountant_epsilon(acc, 1e-5, DP_CONV_IMPROVED, &eps, &order), 0);
    s_assert_rel(eps, 7.32911117143, 1e-6, "opacus eps");
    assert_true(order == 3.9); /* Opacus reports the same optimal order (fixture) */
    /* Composition: 2250 steps as 1000 + 1250 give the same curve. */
    dp_accountant_t *split = dp_accountant_new(NULL, 0);
    assert_int_equal(dp_accountant_add(split, 0.04, 1.5, 1000), 0);
    assert_int_equal(dp_accountant_add(split, 0.04, 1.5, 1250), 0);
    double eps2, order2;
    assert_int_equal(dp_accountant_epsilon(split, 1e-5, DP_CONV_IMPROVED, &eps2, &order2), 0);
    s_assert_rel(eps2, eps, 1e-12, "split composition");
    assert_int_equal(dp_accountant_entries(split), 2);
    assert_int_equal(dp_accountant_steps(split), 2250);
    /* epsilon_if on 1000 steps of history = full history. */
    dp_accountant_t *part = dp_accountant_new(NULL, 0);
    assert_int_equal(dp_accountant_add(part, 0.04, 1.5, 1000), 0);
    assert_int_equal(dp_accountant_epsilon_if(part, 0.04, 1.5, 1250, 1e-5, DP_CONV_IMPROVED,
                                              &eps2, &order2), 0);
    s_assert_rel(eps2, eps, 1e-12, "epsilon_if");
    assert_int_equal(dp_accountant_entries(part), 1); /* not added */
    dp_accountant_destroy(&acc);
    dp_accountant_destroy(&acc); /* safe twice */
    dp_accountant_destroy(&split);
    dp_accountant_destroy(&part);
}

/* TF-Privacy's MNIST DP-SGD tutorial (tutorials/mnist_dpsgd_tutorial.py, README table):
 * batch 256 of 60000, δ = 1e-5, classic conversion of the pre-2020 get_privacy_spent:
 * σ = 1.1 for 60 epochs → ε = 3.01; σ = 0.7 for 45 epochs → ε = 7.10. Steps as
 * compute_dp_sgd_privacy: int(epochs · n / batch). */
static void test_tf_privacy_mnist_tutorial(void **state)
{
    (void)state;
    const double q = 256.0 / 60000.0;
    struct { double sigma; int epochs; double eps; } cases[] = {{1.1, 60, 3.01}, {0.7, 45, 7.10}};
    for (int i = 0; i < 2; i++) {
        dp_accountant_t *acc = dp_accountant_new(NULL, 0);
        int64_t steps = (int64_t)(cases[i].epochs * 60000 / 256);
        assert_int_equal(dp_accountant_add(acc, q, cases[i].sigma, steps), 0);
        double eps, order;
        assert_int_equal(dp_accountant_epsilon(acc, 1e-5, DP_CONV_CLASSIC, &eps, &order), 0);
        if (fabs(eps - cases[i].eps) > 0.01) fail_msg("sigma %g: eps %.4f want %.2f", cases[i].sigma, eps, cases[i].eps);
        dp_accountant_destroy(&acc);
    }
}

/* TF-Privacy privacy/analysis/rdp_accountant_test.py:
 * testComputeRdpScalar: compute_rdp(0.1, 2, 10, 5) = 0.07737 (places=5);
 * testComputeRdpSequence: compute_rdp(0.01, 2.5, 50, [1.5, 2.5, 5, 50, 100, inf]) =
 *   [6.5007e-04, 1.0854e-03, 2.1808e-03, 2.3846e-02, 1.6742e+02, inf] (rtol 1e-4);
 * testGetPrivacySpentCheckTargetDelta: orders 2..32, compute_rdp(0.01, 4, 10000) → classic
 *   ε = 1.258575 (places=5) at order 20. */
static void test_tf_privacy_suite(void **state)
{
    (void)state;
    double r;
    assert_int_equal(dp_compute_rdp(0.1, 2.0, 10, (double[]){5.0}, 1, &r), 0);
    assert_true(fabs(r - 0.07737) < 5e-6);

    const double orders[6] = {1.5, 2.5, 5, 50, 100, INFINITY};
    const double want[5] = {6.5007e-04, 1.0854e-03, 2.1808e-03, 2.3846e-02, 1.6742e+02};
    double got[6];
    assert_int_equal(dp_compute_rdp(0.01, 2.5, 50, orders, 6, got), 0);
    for (int i = 0; i < 5; i++) s_assert_rel(got[i], want[i], 1e-4, "rdp sequence");
    assert_true(isinf(got[5]));

    double o2[31], r2[31], eps, order;
    for (int i = 0; i < 31; i++) o2[i] = 2 + i;
    assert_int_equal(dp_compute_rdp(0.01, 4.0, 10000, o2, 31, r2), 0);
    assert_int_equal(dp_rdp_to_epsilon(o2, r2, 31, 1e-5, DP_CONV_CLASSIC, &eps, &order), 0);
    assert_true(fabs(eps - 1.258575) < 5e-6);
    assert_true(order == 20.0);
}

/* Every case of tests/ref/fixtures/dp_ref.txt (Opacus 1.6 compute_rdp, get_privacy_spent,
 * get_noise_multiplier; see tests/ref/make_dp_ref.py). */
static void test_opacus_fixture(void **state)
{
    (void)state;
    FILE *f = fopen("tests/ref/fixtures/dp_ref.txt", "r");
    if (!f) fail_msg("tests/ref/fixtures/dp_ref.txt missing (run from the repository root)");
    char line[512];
    int n_rdp = 0, n_eps = 0, n_sigma = 0;
    while (fgets(line, sizeof line, f)) {
        double q, s, a, v, d, e, o, t;
        long long steps;
        char conv[16];
        if (line[0] == '#') continue;
        if (sscanf(line, "rdp %lf %lf %lld %lf %lf", &q, &s, &steps, &a, &v) == 5) {
            double got;
            assert_int_equal(dp_compute_rdp(q, s, steps, &a, 1, &got), 0);
            if (isinf(v)) assert_true(isinf(got));
            /* Where RDP is tiny (q ≤ 1e-3) Opacus' log(1 - q) loses digits to cancellation
             * and ours (log1p) is the closer one: see the α = 2 closed form below. */
            else s_assert_rel(got, v, v < 1e-6 ? 1e-5 : 1e-7, line);
            n_rdp++;
        } else if (sscanf(line, "eps %lf %lf %lld %lf %15s %lf %lf", &q, &s, &steps, &d, conv, &e, &o) == 7) {
            dp_conversion_t c;
            assert_int_equal(dp_conversion_parse(conv, &c), 0);
            dp_accountant_t *acc = dp_accountant_new(NULL, 0);
            assert_int_equal(dp_accountant_add(acc, q, s, steps), 0);
            double ge, go;
            assert_int_equal(dp_accountant_epsilon(acc, d, c, &ge, &go), 0);
            s_assert_rel(ge, e, 1e-9, line);
            assert_true(go == o);
            dp_accountant_destroy(&acc);
            n_eps++;
        } else if (sscanf(line, "sigma %lf %lf %lld %lf %lf", &t, &q, &steps, &d, &v) == 5) {
            double got;
            assert_int_equal(dp_noise_multiplier(NULL, t, q, steps, d, DP_CONV_IMPROVED, 0.01, &got), 0);
            s_assert_rel(got, v, 1e-12, line);
            n_sigma++;
        } else {
            fail_msg("dp_ref.txt: unreadable line '%s'", line);
        }
    }
    fclose(f);
    assert_true(n_rdp >= 100 && n_eps >= 18 && n_sigma >= 4);
}

/* Inverse round trip: σ found for a target gives ε ≤ target and within the tolerance. */
static void test_noise_multiplier_round_trip(void **state)
{
    (void)state;
    const double targets[] = {0.5, 1.0, 3.0, 8.0};
    for (int i = 0; i < 4; i++) {
        double sigma, eps, order;
        assert_int_equal(dp_noise_multiplier(NULL, targets[i], 0.02, 3000, 1e-5,
                                             DP_CONV_IMPROVED, 1e-4, &sigma), 0);
        dp_accountant_t *acc = dp_accountant_new(NULL, 0);
        assert_int_equal(dp_accountant_add(acc, 0.02, sigma, 3000), 0);
        assert_int_equal(dp_accountant_epsilon(acc, 1e-5, DP_CONV_IMPROVED, &eps, &order), 0);
        assert_true(eps <= targets[i]);
        assert_true(targets[i] - eps <= 1e-4);
        /* With a history the planned round gets more noise for the same total target. */
        double sigma2;
        assert_int_equal(dp_noise_multiplier(acc, targets[i] * 2, 0.02, 3000, 1e-5,
                                             DP_CONV_IMPROVED, 1e-4, &sigma2), 0);
        assert_int_equal(dp_accountant_epsilon_if(acc, 0.02, sigma2, 3000, 1e-5,
                                                  DP_CONV_IMPROVED, &eps, &order), 0);
        assert_true(eps <= targets[i] * 2 && targets[i] * 2 - eps <= 1e-4);
        dp_accountant_destroy(&acc);
    }
    /* Unreachable: the history alone already exceeds the target. */
    dp_accountant_t *acc = dp_accountant_new(NULL, 0);
    assert_int_equal(dp_accountant_add(acc, 0.5, 0.5, 1000), 0);
    double sigma;
    assert_int_equal(dp_noise_multiplier(acc, 1.0, 0.01, 10, 1e-5, DP_CONV_IMPROVED, 0, &sigma), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EBUDGET);
    assert_non_null(strstr(medfl_error_message(), "out of reach"));
    dp_accountant_destroy(&acc);
}

static void test_special_cases_and_errors(void **state)
{
    (void)state;
    double r, eps, order;
    assert_int_equal(dp_rdp_step(0.0, 1.0, 2.5, &r), 0);
    assert_true(r == 0.0);
    assert_int_equal(dp_rdp_step(0.1, 0.0, 2.5, &r), 0);
    assert_true(isinf(r));
    assert_int_equal(dp_rdp_step(1.0, 2.0, 3.0, &r), 0);
    assert_true(r == 3.0 / 8.0); /* α / (2σ²): the unsampled Gaussian mechanism */
    /* Closed form at α = 2: A_2 = 1 + q²(e^{1/σ²} − 1), exact where the series cancels. */
    assert_int_equal(dp_rdp_step(1e-5, 1.0, 2.0, &r), 0);
    s_assert_rel(r, log1p(1e-10 * expm1(1.0)), 1e-9, "alpha 2 closed form");
    assert_int_equal(dp_rdp_step(0.3, 0.8, 2.0, &r), 0);
    s_assert_rel(r, log1p(0.09 * expm1(1.0 / 0.64)), 1e-12, "alpha 2 closed form");
    assert_int_equal(dp_rdp_step(1.0, 2.0, 3.0, &r), 0);
    /* Subsampling amplifies: RDP(q < 1) < RDP(q = 1). */
    double r_sub;
    assert_int_equal(dp_rdp_step(0.1, 2.0, 3.0, &r_sub), 0);
    assert_true(r_sub < r);

    assert_int_equal(dp_rdp_step(1.5, 1.0, 2.0, &r), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_non_null(strstr(medfl_error_message(), "q=1.5"));
    assert_int_equal(dp_rdp_step(0.1, -1.0, 2.0, &r), -1);
    assert_int_equal(dp_rdp_step(0.1, NAN, 2.0, &r), -1);
    assert_int_equal(dp_rdp_step(0.1, 1.0, 1.0, &r), -1);
    assert_int_equal(dp_compute_rdp(0.1, 1.0, -3, (double[]){2.0}, 1, &r), -1);

    /* σ = 0: every order infinite → ε = inf, order NaN (Opacus returns inf, nan). */
    dp_accountant_t *acc = dp_accountant_new(NULL, 0);
    assert_int_equal(dp_accountant_add(acc, 0.1, 0.0, 10), 0);
    assert_int_equal(dp_accountant_epsilon(acc, 1e-5, DP_CONV_IMPROVED, &eps, &order), 0);
    assert_true(isinf(eps) && isnan(order));
    assert_int_equal(dp_accountant_epsilon(acc, 0.0, DP_CONV_IMPROVED, &eps, &order), -1);
    assert_non_null(strstr(medfl_error_message(), "delta"));
    assert_int_equal(dp_accountant_epsilon(acc, 1.0, DP_CONV_IMPROVED, &eps, &order), -1);
    assert_int_equal(dp_accountant_add(acc, 2.0, 1.0, 10), -1);
    assert_int_equal(dp_accountant_entries(acc), 1); /* failed add changed nothing */
    dp_accountant_destroy(&acc);

    /* Nothing spent → ε = 0 exactly (the conversion alone would give ≈ 0.1 at order 63). */
    acc = dp_accountant_new(NULL, 0);
    assert_int_equal(dp_accountant_epsilon(acc, 1e-5, DP_CONV_IMPROVED, &eps, &order), 0);
    assert_true(eps == 0.0);
    dp_accountant_destroy(&acc);

    assert_null(dp_accountant_new((double[]){2.0, 0.5}, 2));
    assert_non_null(strstr(medfl_error_message(), "order 0.5"));
    dp_conversion_t c;
    assert_int_equal(dp_conversion_parse("clasic", &c), -1);
    assert_non_null(strstr(medfl_error_message(), "clasic"));

    size_t n;
    const double *o = dp_default_orders(&n);
    assert_int_equal(n, 151);
    assert_true(o[0] == 1.1 && o[9] == 2.0 && o[98] == 10.9 && o[99] == 12.0 && o[150] == 63.0);
}

/* Deterministic pseudo-gradients: mixed scales so some rows are clipped, some not. */
static void s_fill_grads(float *g, size_t B, size_t P, dp_rng_t *rng)
{
    for (size_t b = 0; b < B; b++) {
        double scale = (b % 3 == 0) ? 1e-3 : (b % 3 == 1 ? 0.005 : 3.0);
        for (size_t j = 0; j < P; j++) g[b * P + j] = (float)(scale * dp_rng_gaussian(rng));
    }
}

static void test_clipping(void **state)
{
    (void)state;
    const size_t B = 12, P = 5000;
    const double C = 1.0;
    float *g = malloc(B * P * sizeof(float)), *orig = malloc(B * P * sizeof(float));
    float *sum = malloc(P * sizeof(float));
    dp_rng_t *rng = dp_rng_new_seeded(7);
    s_fill_grads(g, B, P, rng);
    memcpy(orig, g, B * P * sizeof(float));
    dp_clip_stats_t st;
    assert_int_equal(dp_clip_rows(g, B, P, C, &st), 0);
    assert_int_equal(st.rows, B);
    size_t clipped = 0;
    for (size_t b = 0; b < B; b++) {
        double n0 = 0, n1 = 0;
        for (size_t j = 0; j < P; j++) {
            n0 += (double)orig[b * P + j] * orig[b * P + j];
            n1 += (double)g[b * P + j] * g[b * P + j];
        }
        n0 = sqrt(n0);
        n1 = sqrt(n1);
        assert_true(n1 <= C); /* strictly by construction, not just within tolerance */
        if (n0 <= C) {
            assert_memory_equal(g + b * P, orig + b * P, P * sizeof(float));
        } else {
            clipped++;
            assert_true(n1 >= C * (1 - 1e-6)); /* clipped to C, not far below */
            /* direction kept */
            for (size_t j = 0; j < P; j += 997)
                assert_true(fabs(g[b * P + j] - orig[b * P + j] * (C / n0)) <= 1e-6 * fabs(orig[b * P + j]) + 1e-12);
        }
    }
    assert_int_equal(clipped, st.clipped);
    assert_true(clipped == 4 && st.max_norm > C);
    /* Sum equals the column sum of the clipped rows. */
    assert_int_equal(dp_sum_rows(g, B, P, sum), 0);
    for (size_t j = 0; j < P; j += 101) {
        double s = 0;
        for (size_t b = 0; b < B; b++) s += g[b * P + j];
        assert_true(fabs(sum[j] - s) <= 1e-6 * (fabs(s) + 1e-6));
    }
    /* A tiny C clips everything to exactly ≤ C too. */
    assert_int_equal(dp_clip_rows(orig, B, P, 1e-4, &st), 0);
    assert_int_equal(st.clipped, B);
    for (size_t b = 0; b < B; b++) {
        double n1 = 0;
        for (size_t j = 0; j < P; j++) n1 += (double)orig[b * P + j] * orig[b * P + j];
        assert_true(sqrt(n1) <= 1e-4);
    }
    /* Scales from (float) norms computed elsewhere: the scaled rows' true norms ≤ C, the
     * small rows get exactly 1, and s^T G equals the clipped sum. */
    {
        float norms[12], scales[12];
        s_fill_grads(orig, B, P, rng);
        for (size_t b = 0; b < B; b++) {
            double n0 = 0;
            for (size_t j = 0; j < P; j++) n0 += (double)orig[b * P + j] * orig[b * P + j];
            /* a norm that is off by a relative 5e-5, as a float reduction could be */
            norms[b] = (float)(sqrt(n0) * (b % 2 ? 1 - 5e-5 : 1 + 5e-5));
        }
        dp_clip_stats_t st2;
        assert_int_equal(dp_clip_scales(norms, B, 1.0, 1e-4, scales, &st2), 0);
        assert_int_equal(st2.clipped, 4);
        for (size_t b = 0; b < B; b++) {
            double n1 = 0;
            for (size_t j = 0; j < P; j++) {
                double x = (double)(scales[b] * orig[b * P + j]);
                n1 += x * x;
            }
            assert_true(sqrt(n1) <= 1.0);
            if (b % 3 != 2) assert_true(scales[b] == 1.0f);
            else assert_true(sqrt(n1) >= 1.0 - 3e-4);
        }
        assert_int_equal(dp_clip_scales(norms, B, 1e6, 1e-4, scales, &st2), 0);
        assert_int_equal(st2.clipped, 0);
        for (size_t b = 0; b < B; b++) assert_true(scales[b] == 1.0f);
        norms[2] = NAN;
        assert_int_equal(dp_clip_scales(norms, B, 1.0, 1e-4, scales, NULL), -1);
        norms[2] = -1;
        assert_int_equal(dp_clip_scales(norms, B, 1.0, 1e-4, scales, NULL), -1);
        assert_int_equal(dp_clip_scales(norms, B, 1.0, 0.7, scales, NULL), -1);
    }
    /* Errors: non-finite gradient, bad C. */
    g[3 * P + 17] = NAN;
    assert_int_equal(dp_clip_rows(g, B, P, C, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "gradient 3"));
    g[3 * P + 17] = INFINITY;
    assert_int_equal(dp_clip_rows(g, B, P, C, NULL), -1);
    assert_int_equal(dp_clip_rows(g, B, P, 0.0, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "C=0"));
    dp_rng_destroy(&rng);
    free(g);
    free(orig);
    free(sum);
}

/* Noise statistics on 400k coordinates from a fixed seed. The bounds are 6 standard errors
 * wide: with a fixed seed the outcome is deterministic, and a correct sampler would fail
 * them for a new seed with probability < 1e-8. */
static void test_noise_statistics(void **state)
{
    (void)state;
    const size_t P = 400000;
    const double sigma = 1.3, C = 0.7, std = sigma * C;
    float *v = calloc(P, sizeof(float));
    dp_rng_t *rng = dp_rng_new_seeded(20261121);
    assert_true(dp_rng_is_seeded(rng));
    assert_int_equal(dp_add_noise(rng, v, P, std), 0);
    double s1 = 0, s2 = 0, s4 = 0;
    size_t within1 = 0;
    double grid = dp_noise_grid(std);
    for (size_t j = 0; j < P; j++) {
        double x = v[j];
        s1 += x;
        s2 += x * x;
        s4 += x * x * x * x;
        if (fabs(x) <= std) within1++;
        assert_true(x / grid == nearbyint(x / grid)); /* snapped to the grid */
    }
    double mean = s1 / P, var = s2 / P - mean * mean, sd = sqrt(var);
    double n = (double)P;
    assert_true(fabs(mean) < 6 * std / sqrt(n));
    assert_true(fabs(sd - std) < 6 * std / sqrt(2 * n));
    /* Gaussian shape: kurtosis 3 (se √(24/n)) and 68.27% within one σ (se √(p(1-p)/n)). */
    double kurt = (s4 / P) / (var * var);
    assert_true(fabs(kurt - 3.0) < 6 * sqrt(24.0 / n));
    double p1 = (double)within1 / n;
    assert_true(fabs(p1 - 0.682689492) < 6 * sqrt(0.6827 * 0.3173 / n));
    /* Noise is added to the sum, not replacing it. */
    float w[4] = {100, -100, 0, 5};
    assert_int_equal(dp_add_noise(rng, w, 4, 1e-3), 0);
    assert_true(fabs(w[0] - 100) < 0.02 && fabs(w[1] + 100) < 0.02 && fabs(w[3] - 5) < 0.02);
    assert_int_equal(dp_add_noise(rng, w, 4, -1.0), -1);
    /* draw + apply == add_noise from the same stream position. */
    dp_rng_t *r1 = dp_rng_new_seeded(5), *r2 = dp_rng_new_seeded(5);
    float a[1001], b[1001];
    double noise[1001];
    for (int j = 0; j < 1001; j++) a[j] = b[j] = (float)(j * 0.01 - 5);
    assert_int_equal(dp_add_noise(r1, a, 1001, 0.37), 0);
    assert_int_equal(dp_noise_draw(r2, noise, 1001, 0.37), 0);
    assert_int_equal(dp_noise_apply(b, noise, 1001, 0.37), 0);
    assert_memory_equal(a, b, sizeof a);
    assert_int_equal(dp_noise_draw(r2, noise, 1001, NAN), -1);
    assert_int_equal(dp_noise_apply(b, noise, 1001, INFINITY), -1);
    dp_rng_destroy(&r1);
    dp_rng_destroy(&r2);
    dp_rng_destroy(&rng);
    free(v);
}

static void test_rng_streams(void **state)
{
    (void)state;
    dp_rng_t *a = dp_rng_new_seeded(1), *b = dp_rng_new_seeded(1), *c = dp_rng_new_seeded(2);
    dp_rng_t *s1 = dp_rng_new(), *s2 = dp_rng_new();
    assert_false(dp_rng_is_seeded(s1));
    int same_ab = 0, same_ac = 0, same_s = 0;
    for (int i = 0; i < 2000; i++) { /* crosses buffer refills */
        uint64_t x = dp_rng_u64(a);
        same_ab += x == dp_rng_u64(b);
        same_ac += x == dp_rng_u64(c);
        same_s += dp_rng_u64(s1) == dp_rng_u64(s2);
    }
    assert_int_equal(same_ab, 2000);
    assert_int_equal(same_ac, 0);
    assert_int_equal(same_s, 0);
    /* uniform_pos stays in (0, 1) and has mean 1/2. */
    double m = 0, lo = 1;
    for (int i = 0; i < 100000; i++) {
        double u = dp_rng_uniform_pos(a);
        assert_true(u > 0.0 && u < 1.0);
        m += u;
        lo = fmin(lo, u);
    }
    m /= 100000;
    assert_true(fabs(m - 0.5) < 6 * sqrt(1.0 / 12 / 100000));
    dp_rng_destroy(&a);
    dp_rng_destroy(&b);
    dp_rng_destroy(&c);
    dp_rng_destroy(&s1);
    dp_rng_destroy(&s2);
    dp_rng_destroy(&s2);
}

static void test_poisson_and_privatize(void **state)
{
    (void)state;
    dp_rng_t *rng = dp_rng_new_seeded(99);
    const size_t N = 100000;
    uint32_t *idx = malloc(N * sizeof(uint32_t));
    size_t k;
    assert_int_equal(dp_poisson_sample(rng, N, 0.01, idx, &k), 0);
    /* Binomial(N, q): mean 1000, sd ≈ 31.5 */
    assert_true(fabs((double)k - 1000.0) < 6 * sqrt(N * 0.01 * 0.99));
    for (size_t i = 1; i < k; i++) assert_true(idx[i] > idx[i - 1]);
    assert_int_equal(dp_poisson_sample(rng, N, 0.0, idx, &k), 0);
    assert_int_equal(k, 0);
    assert_int_equal(dp_poisson_sample(rng, N, 1.0, idx, &k), 0);
    assert_int_equal(k, N);
    assert_int_equal(dp_poisson_sample(rng, N, -0.1, idx, &k), -1);
    free(idx);

    /* privatize = clip + sum + noise; σ = 0 gives the exact clipped sum. */
    const size_t B = 6, P = 300;
    float *g = malloc(B * P * sizeof(float)), *g2 = malloc(B * P * sizeof(float));
    float *out = malloc(P * sizeof(float)), *ref = malloc(P * sizeof(float));
    s_fill_grads(g, B, P, rng);
    memcpy(g2, g, B * P * sizeof(float));
    assert_int_equal(dp_privatize(g, B, P, 0.5, 0.0, rng, out, NULL), 0);
    assert_int_equal(dp_clip_rows(g2, B, P, 0.5, NULL), 0);
    assert_int_equal(dp_sum_rows(g2, B, P, ref), 0);
    assert_memory_equal(out, ref, P * sizeof(float));
    /* Empty Poisson batch: output is pure noise of std σC. */
    assert_int_equal(dp_privatize(NULL, 0, P, 0.5, 2.0, rng, out, NULL), 0);
    double s2 = 0;
    for (size_t j = 0; j < P; j++) s2 += (double)out[j] * out[j];
    assert_true(fabs(sqrt(s2 / P) - 1.0) < 6 * 1.0 / sqrt(2.0 * P));
    assert_int_equal(dp_privatize(g, B, P, 0.5, -1.0, rng, out, NULL), -1);
    free(g);
    free(g2);
    free(out);
    free(ref);
    dp_rng_destroy(&rng);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opacus_published_case),
        cmocka_unit_test(test_tf_privacy_mnist_tutorial),
        cmocka_unit_test(test_tf_privacy_suite),
        cmocka_unit_test(test_opacus_fixture),
        cmocka_unit_test(test_noise_multiplier_round_trip),
        cmocka_unit_test(test_special_cases_and_errors),
        cmocka_unit_test(test_clipping),
        cmocka_unit_test(test_noise_statistics),
        cmocka_unit_test(test_rng_streams),
        cmocka_unit_test(test_poisson_and_privatize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
