/* medfl-bench dp: cost of the DP-SGD mechanism (per-example clipping, sum, Gaussian noise
 * from the ChaCha20 CSPRNG) on a MiniLM-sized trainable vector: 6 layers × 2 LoRA targets ×
 * rank 8 on hidden 384 (6·2·8·(384+384) = 73,728 parameters) plus a classification head
 * (384·classes + classes), at batch 16. The baseline measured in the same run is the plain
 * (non-private) reduction of the same per-example rows into one gradient, so the ratio says
 * what DP adds to the reduction step. The full figure the issue asks for, dp_step_overhead
 * = DP-SGD step time / plain step time, needs the model engine's per-example backward and
 * is measured by `medfl-bench train` once that is merged (see docs/privacy.md). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/dp.h"
#include "common/error.h"
#include "tests/bench/bench.h"

static int s_usage(FILE *out, int rc)
{
    fprintf(out, "Usage: medfl-bench dp [--batch B] [--classes K] [--iters N] [--sigma S] "
                 "[--clip C] [--seeded]\n"
                 "  Times clip + sum + noise of a [B, P] per-example gradient buffer, P = 73728\n"
                 "  (MiniLM LoRA r=8, 2 targets, 6 layers) + 384*K + K (head); defaults B=16,\n"
                 "  K=40, N=50, S=1.0, C=1.0; --seeded uses a test-seeded noise stream.\n");
    return rc;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_dp(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) return s_usage(stdout, 0);
    long batch = 16, classes = 40, iters = 50;
    double sigma = 1.0, clip = 1.0;
    int seeded = 0;
    static const struct option opts[] = {
        {"batch", required_argument, NULL, 'b'}, {"classes", required_argument, NULL, 'k'},
        {"iters", required_argument, NULL, 'n'}, {"sigma", required_argument, NULL, 's'},
        {"clip", required_argument, NULL, 'c'},  {"seeded", no_argument, NULL, 'S'},
        {NULL, 0, NULL, 0},
    };
    optind = 1;
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'b': batch = strtol(optarg, &end, 10); break;
        case 'k': classes = strtol(optarg, &end, 10); break;
        case 'n': iters = strtol(optarg, &end, 10); break;
        case 's': sigma = strtod(optarg, &end); break;
        case 'c': clip = strtod(optarg, &end); break;
        case 'S': seeded = 1; continue;
        default:
            fprintf(stderr, "medfl-bench dp: unknown option '%s'\n", argv[optind - 1]);
            return s_usage(stderr, 2);
        }
        if (!end || *end || batch < 1 || batch > 4096 || classes < 1 || classes > 100000 ||
            iters < 1 || iters > 100000 || !(sigma >= 0) || !(clip > 0)) {
            const char *name = "?";
            for (const struct option *op = opts; op->name; op++)
                if (op->val == o) name = op->name;
            fprintf(stderr, "medfl-bench dp: bad value '%s' for --%s\n", optarg, name);
            return s_usage(stderr, 2);
        }
    }
    const size_t lora = 6 * 2 * 8 * (384 + 384);
    const size_t P = lora + 384 * (size_t)classes + (size_t)classes;
    const size_t B = (size_t)batch;
    float *pristine = malloc(B * P * sizeof(float)), *g = malloc(B * P * sizeof(float));
    float *out = malloc(P * sizeof(float));
    double *t_plain = malloc((size_t)iters * sizeof(double));
    double *t_dp = malloc((size_t)iters * sizeof(double));
    double *t_draw = malloc((size_t)iters * sizeof(double));
    double *t_apply = malloc((size_t)iters * sizeof(double));
    double *noise = malloc(P * sizeof(double));
    dp_rng_t *data_rng = dp_rng_new_seeded(1);
    dp_rng_t *rng = seeded ? dp_rng_new_seeded(2) : dp_rng_new();
    int rc = 1;
    if (!pristine || !g || !out || !t_plain || !t_dp || !t_draw || !t_apply || !noise || !data_rng || !rng) {
        fprintf(stderr, "medfl-bench dp: out of memory\n");
        goto done;
    }
    /* Gradients of mixed magnitude: half the rows above C, half below. */
    for (size_t b = 0; b < B; b++) {
        double scale = (b % 2 ? 3.0 : 0.3) * clip / sqrt((double)P);
        for (size_t j = 0; j < P; j++) pristine[b * P + j] = (float)(scale * dp_rng_gaussian(data_rng));
    }
    dp_clip_stats_t st = {0};
    for (long it = 0; it < iters; it++) {
        memcpy(g, pristine, B * P * sizeof(float));
        double t0 = bench_now();
        if (dp_sum_rows(g, B, P, out) != 0) goto fail;
        double t1 = bench_now();
        memcpy(g, pristine, B * P * sizeof(float));
        double t2 = bench_now();
        if (dp_privatize(g, B, P, clip, sigma, rng, out, &st) != 0) goto fail;
        double t3 = bench_now();
        /* Split form: noise drawn ahead (can overlap the backward), then clip+sum+apply. */
        memcpy(g, pristine, B * P * sizeof(float));
        double t4 = bench_now();
        if (dp_noise_draw(rng, noise, P, sigma * clip) != 0) goto fail;
        double t5 = bench_now();
        if (dp_clip_rows(g, B, P, clip, NULL) != 0 || dp_sum_rows(g, B, P, out) != 0 ||
            dp_noise_apply(out, noise, P, sigma * clip) != 0)
            goto fail;
        double t6 = bench_now();
        t_plain[it] = t1 - t0;
        t_dp[it] = t3 - t2;
        t_draw[it] = t5 - t4;
        t_apply[it] = t6 - t5;
    }
    qsort(t_plain, (size_t)iters, sizeof(double), s_cmp_double);
    qsort(t_dp, (size_t)iters, sizeof(double), s_cmp_double);
    qsort(t_draw, (size_t)iters, sizeof(double), s_cmp_double);
    qsort(t_apply, (size_t)iters, sizeof(double), s_cmp_double);
    double plain_ms = t_plain[iters / 2] * 1e3, dp_ms = t_dp[iters / 2] * 1e3;
    printf("dp_params: %zu params\n", P);
    printf("dp_batch: %zu examples\n", B);
    printf("dp_clip_noise_ms: %.3f ms\n", dp_ms);
    printf("dp_plain_sum_ms: %.3f ms\n", plain_ms);
    printf("dp_clip_noise_vs_plain_sum: %.2f x\n", plain_ms > 0 ? dp_ms / plain_ms : 0.0);
    printf("dp_noise_draw_ms: %.3f ms\n", t_draw[iters / 2] * 1e3);
    printf("dp_clip_sum_apply_ms: %.3f ms\n", t_apply[iters / 2] * 1e3);
    printf("dp_rows_clipped: %zu of %zu\n", st.clipped, st.rows);
    printf("dp_noise_source: %s\n", seeded ? "chacha20-seeded(test)" : "chacha20-randombytes");
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "medfl-bench dp: %s\n", medfl_error_message());
done:
    dp_rng_destroy(&rng);
    dp_rng_destroy(&data_rng);
    free(pristine);
    free(g);
    free(out);
    free(t_plain);
    free(t_dp);
    free(t_draw);
    free(t_apply);
    free(noise);
    return rc;
}
