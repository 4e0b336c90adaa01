/* Distributed DP noise under secure aggregation (docs/privacy.md §10): the discrete Gaussian
 * sampler, the share plan, and the noise that three nodes add inside both rings (the
 * compressed b-bit levels and the dense 32-bit fixed point) measured on the decoded sum:
 * the sum must carry the whole sigma, each node only its share, and the data must come
 * through unbiased. Statistical checks use seeded streams and generous bounds (several
 * standard errors), so they fail only when the noise is wrong, not by chance. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/compress.h"
#include "common/dp.h"
#include "common/error.h"
#include "common/fedround.h"
#include "common/secagg.h"

static void s_moments(dp_rng_t *rng, double sigma, int n, double *mean, double *var,
                      double *skew_like)
{
    double s1 = 0, s2 = 0, pos = 0, neg = 0;
    for (int i = 0; i < n; i++) {
        double z = (double)dp_rng_discrete_gaussian(rng, sigma);
        s1 += z;
        s2 += z * z;
        pos += z > 0, neg += z < 0;
    }
    *mean = s1 / n;
    *var = s2 / n - *mean * *mean;
    *skew_like = (pos - neg) / n;
}

static void test_discrete_gaussian(void **state)
{
    (void)state;
    dp_rng_t *rng = dp_rng_new_seeded(11);
    assert_non_null(rng);
    assert_int_equal(dp_rng_discrete_gaussian(rng, 0), 0);
    assert_int_equal(dp_rng_discrete_gaussian(rng, -1), 0);
    /* Variance of the discrete Gaussian: for σ ≥ 1 it is σ² to within 1e-8 relative; at
     * σ = 0.5 it is Σ z² e^{-2 z²} / Σ e^{-2 z²}, computed here. */
    double num = 0, den = 0;
    for (int z = -20; z <= 20; z++) {
        double w = exp(-(double)z * z / (2 * 0.25));
        num += (double)z * z * w;
        den += w;
    }
    const double sigmas[] = {0.5, 3.0, 40.0, 2.5e6};
    for (size_t k = 0; k < sizeof sigmas / sizeof *sigmas; k++) {
        double sg = sigmas[k], want = sg == 0.5 ? num / den : sg * sg;
        const int n = 200000;
        double mean, var, sk;
        s_moments(rng, sg, n, &mean, &var, &sk);
        printf("discrete Gaussian sigma %g: mean %.4g, var %.6g (want %.6g), (pos-neg)/n %.4f\n",
               sg, mean, var, want, sk);
        /* se(mean) = σ/√n, se(var) ≈ var·√(2/n) = 0.3 % */
        assert_true(fabs(mean) < 5 * sqrt(want / n));
        assert_true(fabs(var / want - 1) < 0.02);
        assert_true(fabs(sk) < 0.02);
    }
    dp_rng_destroy(&rng);
}

static void test_share_plan(void **state)
{
    (void)state;
    dp_shared_noise_t in = {.sigma = 1.1, .clip = 1.0, .lr_over_q = 50.0,
                            .record_weight_max = 0.5 / 800, .honest = 3,
                            .sensitivity = 1.0 * 0.5 * 10.0 / (0.2 * 800), .rounding = 0};
    double std, eff;
    assert_int_equal(dp_shared_noise_plan(&in, &std, &eff), 0);
    double full = 1.1 * 1.0 * 50.0 * 0.5 / 800;
    assert_true(fabs(dp_shared_noise_full_std(&in) - full) < 1e-15);
    assert_true(fabs(std - full / sqrt(3)) < 1e-12);
    /* Sensitivity at ρ_max and no rounding: exactly σ. */
    assert_true(fabs(eff - 1.1) < 1e-12);
    /* A node with fewer weight per record than ρ_max is better protected... */
    in.sensitivity /= 2;
    assert_int_equal(dp_shared_noise_plan(&in, &std, &eff), 0);
    assert_true(fabs(eff - 2.2) < 1e-12);
    /* ...and rounding is charged: it adds to the sensitivity. */
    in.rounding = in.sensitivity;
    assert_int_equal(dp_shared_noise_plan(&in, &std, &eff), 0);
    assert_true(fabs(eff - 1.1) < 1e-12);
    /* One honest node: it adds all of σ. */
    in.honest = 1;
    assert_int_equal(dp_shared_noise_plan(&in, &std, &eff), 0);
    assert_true(fabs(std - full) < 1e-15);
    in.honest = 0;
    assert_int_equal(dp_shared_noise_plan(&in, &std, &eff), -1);
    assert_non_null(strstr(medfl_error_message(), "honest"));
    in.honest = 3;
    in.record_weight_max = 0;
    assert_int_equal(dp_shared_noise_plan(&in, &std, &eff), -1);
    in.record_weight_max = NAN;
    assert_int_equal(dp_shared_noise_plan(&in, &std, &eff), -1);
}

static void test_headroom(void **state)
{
    (void)state;
    Medfl__DpParams dp = MEDFL__DP_PARAMS__INIT;
    dp.enabled = true;
    dp.noise_multiplier = 2;
    dp.clip_norm = 0.5;
    dp.sample_rate = 0.25;
    dp.record_weight_max = 0.001;
    assert_true(fed_dp_headroom(&dp, 1.0, true) == 0); /* not offered */
    dp.distributed = true;
    double h = fed_dp_headroom(&dp, 1.0, true);
    assert_true(fabs(h - 12 * 2 * 0.5 * 4 * 0.001) < 1e-15);
    assert_true(fed_dp_headroom(&dp, 1.0, false) == 0); /* plain rounds never */
    dp.enabled = false;
    assert_true(fed_dp_headroom(&dp, 1.0, true) == 0);

    compress_config_t cc;
    compress_config_default(&cc, COMPRESS_SECAGG);
    cc.clip = 0.5f;
    cc.bits = 16;
    cc.max_nodes = 3;
    assert_int_equal(fed_dp_ring(h, &cc), 0);
    assert_false(cc.error_feedback);
    double step = 1.0 / 65535.0;
    assert_int_equal(cc.noise_levels, (uint32_t)ceil(h / step));
    assert_true(compress_ring_width_noise(16, 3, cc.noise_levels) >= compress_ring_width(16, 3));
    assert_int_equal(compress_ring_width_noise(16, 3, 0), compress_ring_width(16, 3));
    assert_int_equal(compress_ring_width_noise(16, 3, 40000), 19); /* 3·(65535 + 80000) */
    assert_int_equal(compress_ring_width_noise(16, 3, 0x7FFFFFFF), 0); /* cannot fit */
    /* A headroom the 32-bit ring cannot hold is a configuration error naming the fix. */
    compress_config_default(&cc, COMPRESS_SECAGG);
    cc.clip = 1e-6f;
    cc.bits = 16;
    cc.max_nodes = 3;
    assert_int_equal(fed_dp_ring(1e3, &cc), -1);
    assert_non_null(strstr(medfl_error_message(), "compression.clip"));
    /* The dense ring keeps the data's clip and lowers the scale to make room. */
    secagg_fixed_t fx, fx0;
    assert_int_equal(fed_fixed_params(3, 0.5, &fx0), 0);
    assert_int_equal(fed_fixed_params_dp(3, 0.5, 0.6, &fx), 0);
    assert_true(fx.clip == 0.5 && fx.scale < fx0.scale);
    assert_int_equal(secagg_fixed_check(&fx, 3), 0);
    assert_int_equal(fed_fixed_params_dp(3, 0.5, 0, &fx), 0); /* = fed_fixed_params */
    assert_true(fx.scale == fx0.scale);
}

/* Three nodes, each adding its share (h = 3), in the b-bit levels ring: the decoded sum's
 * noise has the whole std, and its mean is the sum of the updates. */
static void test_levels_ring_sum(void **state)
{
    (void)state;
    enum { N = 3, K = 4000 };
    const double full = 0.004; /* σ C (lr / q) ρ_max */
    compress_config_t cc;
    compress_config_default(&cc, COMPRESS_SECAGG);
    cc.clip = 0.25f;
    cc.bits = 16;
    cc.max_nodes = N;
    cc.k_frac = 1.0;
    assert_int_equal(fed_dp_ring(12 * full, &cc), 0);
    uint8_t seed[COMPRESS_SEED_BYTES] = {7};
    compress_round_t *cr = compress_round_new(&cc, K, seed);
    assert_non_null(cr);
    assert_int_equal(compress_round_k(cr), K);
    float *upd = malloc(K * sizeof(float)), *dense = malloc(K * sizeof(float));
    uint32_t *lv = malloc(K * sizeof(uint32_t)), *sum = calloc(K, sizeof(uint32_t));
    double *want = calloc(K, sizeof(double));
    dp_rng_t *rng = dp_rng_new_seeded(3);
    const unsigned w = compress_round_width(cr);
    const uint32_t mask = w == 32 ? 0xFFFFFFFFu : ((1u << w) - 1);
    const double node_std = full / sqrt(N), step = compress_round_step(cr);
    double one_node_var = 0;
    for (int v = 0; v < N; v++) {
        compress_t *c = compress_new(&cc, K, NULL);
        assert_non_null(c);
        for (int j = 0; j < K; j++) {
            upd[j] = (float)(0.1 * sin(0.37 * j + v));
            want[j] += 0.5 * upd[j]; /* weight 0.5 */
        }
        assert_int_equal(compress_secagg_encode(c, cr, upd, 0.5f, lv), 0);
        uint32_t *clean = malloc(K * sizeof(uint32_t));
        memcpy(clean, lv, K * sizeof(uint32_t));
        assert_int_equal(compress_secagg_add_noise(cr, rng, node_std / step, lv), 0);
        for (int j = 0; j < K; j++) {
            double z = ((double)lv[j] - cc.noise_levels - clean[j]) * step;
            if (v == 0) one_node_var += z * z / K;
            assert_true(lv[j] <= (1u << 16) - 1 + 2 * cc.noise_levels);
            sum[j] = (sum[j] + lv[j]) & mask;
        }
        free(clean);
        compress_destroy(&c);
    }
    assert_int_equal(compress_secagg_decode_sum(cr, sum, N, dense), 0);
    double err_mean = 0, err_var = 0;
    for (int j = 0; j < K; j++) err_mean += (dense[j] - want[j]) / K;
    for (int j = 0; j < K; j++) err_var += pow(dense[j] - want[j] - err_mean, 2) / K;
    /* The levels' own stochastic rounding adds at most N·step²/4 of variance: negligible. */
    printf("levels ring: one node's noise std %.5g (want %.5g), sum's %.5g (want %.5g), "
           "mean error %.3g\n", sqrt(one_node_var), node_std, sqrt(err_var), full, err_mean);
    assert_true(fabs(sqrt(one_node_var) / node_std - 1) < 0.05);
    assert_true(fabs(sqrt(err_var) / full - 1) < 0.05);
    assert_true(fabs(err_mean) < 5 * full / sqrt(K));
    /* Levels out of range and a round without headroom are refused. */
    lv[5] = 1u << 16;
    assert_int_equal(compress_secagg_add_noise(cr, rng, 1.0, lv), -1);
    compress_round_destroy(&cr);
    cc.noise_levels = 0;
    cr = compress_round_new(&cc, K, seed);
    memset(lv, 0, K * sizeof(uint32_t));
    assert_int_equal(compress_secagg_add_noise(cr, rng, 1.0, lv), -1);
    assert_non_null(strstr(medfl_error_message(), "headroom"));
    compress_round_destroy(&cr);
    dp_rng_destroy(&rng);
    free(upd); free(dense); free(lv); free(sum); free(want);
}

/* The same in the dense fixed-point ring, and the clamp at the headroom. */
static void test_fixed_ring_sum(void **state)
{
    (void)state;
    enum { N = 3, M = 4000 };
    const double full = 0.01, headroom = 12 * full, node_std = full / sqrt(N);
    secagg_fixed_t fx;
    assert_int_equal(fed_fixed_params_dp(N, 0.5, headroom, &fx), 0);
    float *x = malloc(M * sizeof(float)), *avg = malloc(M * sizeof(float));
    uint32_t *enc = malloc(M * sizeof(uint32_t)), *sum = calloc(M, sizeof(uint32_t));
    double *want = calloc(M, sizeof(double));
    dp_rng_t *rng = dp_rng_new_seeded(9);
    for (int v = 0; v < N; v++) {
        for (int j = 0; j < M; j++) {
            x[j] = (float)(0.4 * cos(0.11 * j * (v + 1)));
            want[j] += 0.3 * x[j];
        }
        assert_int_equal(secagg_encode(&fx, x, M, 0.3, enc), 0);
        assert_int_equal(fed_fixed_add_noise(&fx, rng, node_std, headroom, enc, M), 0);
        for (int j = 0; j < M; j++) sum[j] += enc[j];
    }
    assert_int_equal(secagg_decode(&fx, sum, M, 1.0, avg), 0);
    double m = 0, var = 0;
    for (int j = 0; j < M; j++) m += (avg[j] - want[j]) / M;
    for (int j = 0; j < M; j++) var += pow(avg[j] - want[j] - m, 2) / M;
    printf("fixed ring: sum's noise std %.5g (want %.5g), mean error %.3g\n", sqrt(var), full, m);
    assert_true(fabs(sqrt(var) / full - 1) < 0.05);
    assert_true(fabs(m) < 5 * full / sqrt(M));
    /* Noise far beyond the headroom is clamped there: no coordinate wraps. */
    memset(x, 0, M * sizeof(float));
    x[0] = 0.5f;
    assert_int_equal(secagg_encode(&fx, x, M, 1.0, enc), 0);
    assert_int_equal(fed_fixed_add_noise(&fx, rng, 1e3, headroom, enc, M), 0);
    assert_int_equal(secagg_decode(&fx, enc, M, 1.0, avg), 0);
    for (int j = 0; j < M; j++) assert_true(fabs(avg[j] - (j == 0 ? 0.5 : 0.0)) <= headroom + 1e-6);
    assert_int_equal(fed_fixed_add_noise(&fx, rng, 1.0, 0, enc, M), -1);
    dp_rng_destroy(&rng);
    free(x); free(avg); free(enc); free(sum); free(want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_discrete_gaussian),
        cmocka_unit_test(test_share_plan),
        cmocka_unit_test(test_headroom),
        cmocka_unit_test(test_levels_ring_sum),
        cmocka_unit_test(test_fixed_ring_sum),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
