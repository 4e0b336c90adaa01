/* medfl-bench dp: cost of the DP-SGD mechanism (per-example clipping, sum, Gaussian noise
 * from the ChaCha20 CSPRNG) on a MiniLM-sized trainable vector: 6 layers × 2 LoRA targets ×
 * rank 8 on hidden 384 (6·2·8·(384+384) = 73,728 parameters) plus a classification head
 * (384·classes + classes), at batch 16. The baseline measured in the same run is the plain
 * (non-private) reduction of the same per-example rows into one gradient, so the ratio says
 * what DP adds to the reduction step. The full figure the issue asks for, dp_step_overhead
 * = (forward + model_backward_per_example + dp_privatize + AdamW) / (forward +
 * model_backward + AdamW), is measured on the MiniLM-sized configuration of `medfl-bench
 * train` (6 layers, hidden 384, 12 heads, ffn 1536, vocab 30522, batch 16, seq 128, r = 8
 * on query + value, random weights) with the two kinds of step interleaved (order
 * alternating) in the same process; the figure is the ratio of the best step times. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/dp.h"
#include "common/error.h"
#include "node/engine/model.h"
#include "tests/bench/bench.h"

static int s_usage(FILE *out, int rc)
{
    fprintf(out, "Usage: medfl-bench dp [--batch B] [--classes K] [--iters N] [--sigma S] "
                 "[--clip C] [--seeded] [--step-iters N] [--threads T]\n"
                 "  Times clip + sum + noise of a [B, P] per-example gradient buffer, P = 73728\n"
                 "  (MiniLM LoRA r=8, 2 targets, 6 layers) + 384*K + K (head); defaults B=16,\n"
                 "  K=40, N=50, S=1.0, C=1.0; --seeded uses a test-seeded noise stream.\n"
                 "  Then dp_step_overhead: N DP-SGD and N plain training steps of the MiniLM-sized\n"
                 "  model (batch 16, seq 128, r=8 query+value), interleaved; default N=3, 0 skips;\n"
                 "  T OpenBLAS threads (default 2).\n");
    return rc;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* dp_step_overhead on the MiniLM-sized model: plain and DP-SGD steps alternate (one warm-up
 * each first) and the medians are compared. The DP step is what node/train.c does: forward,
 * per-example backward, dp_privatize (clip + sum + noise), division by the expected batch
 * size q·N, upload as the gradient, AdamW. */
static int s_step_overhead(long iters, int threads, bool seeded, double sigma, double clip)
{
    const int B = 16, T = 128;
    model_config_t cfg;
    model_config_default(&cfg);
    cfg.vocab_size = 30522;
    cfg.hidden = 384;
    cfg.layers = 6;
    cfg.heads = 12;
    cfg.ffn = 1536;
    cfg.max_position = 512;
    cfg.num_labels = 10;
    cfg.lora_targets = LORA_QUERY | LORA_VALUE;
    backend_t *be = backend_new("cpu", threads);
    model_t *m = be ? model_new(&cfg, be) : NULL;
    size_t N = (size_t)B * T, P = m ? model_trainable_numel(m) : 0;
    int32_t *ids = malloc(N * sizeof *ids), *mask = malloc(N * sizeof *mask);
    int32_t labels[16];
    float *sum = malloc((P ? P : 1) * sizeof(float));
    double *tp = calloc((size_t)iters, sizeof(double)), *td = calloc((size_t)iters, sizeof(double));
    double *ratio = calloc((size_t)iters, sizeof(double)); /* per adjacent (plain, DP) pair */
    double ph[2][4] = {{0}}; /* [plain|dp][forward, backward, privatize, adamw], summed */
    dp_rng_t *rng = seeded ? dp_rng_new_seeded(3) : dp_rng_new();
    int rc = -1;
    if (!m || !ids || !mask || !sum || !tp || !td || !ratio || !rng) {
        if (m) medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    model_base_init_random(m, 42, 0.02f);
    model_init_trainable(m, 1);
    uint64_t st = 12345;
    for (size_t i = 0; i < N; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((st >> 33) % (uint64_t)cfg.vocab_size);
        mask[i] = 1;
    }
    for (int e = 0; e < B; e++) labels[e] = e % cfg.num_labels;
    model_batch_t in = {ids, NULL, mask, labels, B, T};
    adamw_config_t oc;
    adamw_config_default(&oc);
    const double qN = (double)B; /* expected batch size */
    long step = 0;
    /* Each iteration runs one plain and one DP-SGD step; their order alternates so that
     * neither kind always runs on the caches and threads the other one warmed. */
    for (long it = -1; it < iters; it++) {
        double p[2][4] = {{0}}, tot[2] = {0};
        for (int half = 0; half < 2; half++) {
            int dp_kind = (int)((it + 2 + half) % 2); /* it even: DP first */
            float loss;
            double t0 = bench_now();
            if (!dp_kind) {
                model_zero_grad(m);
                if (model_forward(m, &in, &loss, NULL) != 0) goto done;
                double ta = bench_now();
                if (model_backward(m) != 0) goto done;
                double tb = bench_now();
                model_adamw_step(m, &oc, ++step);
                be->synchronize(be);
                double t1 = bench_now();
                p[0][0] = ta - t0; p[0][1] = tb - ta; p[0][3] = t1 - tb;
                tot[0] = t1 - t0;
            } else {
                float *pe = model_per_example_buffer(m, B);
                if (!pe || model_forward(m, &in, &loss, NULL) != 0) goto done;
                double ta = bench_now();
                if (model_backward_per_example(m, pe) != 0) goto done;
                double tb = bench_now();
                if (dp_privatize(pe, (size_t)B, P, clip, sigma, rng, sum, NULL) != 0) goto done;
                for (size_t j = 0; j < P; j++) sum[j] = (float)(sum[j] / qN);
                be->upload(be, model_grads(m), sum, P * sizeof(float));
                double tc = bench_now();
                model_adamw_step(m, &oc, ++step);
                be->synchronize(be);
                double t1 = bench_now();
                p[1][0] = ta - t0; p[1][1] = tb - ta; p[1][2] = tc - tb; p[1][3] = t1 - tc;
                tot[1] = t1 - t0;
            }
        }
        if (it >= 0) {
            tp[it] = tot[0];
            td[it] = tot[1];
            ratio[it] = td[it] / tp[it];
            for (int k = 0; k < 4; k++) {
                ph[0][k] += p[0][k] / (double)iters;
                ph[1][k] += p[1][k] / (double)iters;
            }
        }
    }
    qsort(tp, (size_t)iters, sizeof(double), s_cmp_double);
    qsort(td, (size_t)iters, sizeof(double), s_cmp_double);
    qsort(ratio, (size_t)iters, sizeof(double), s_cmp_double);
    double plain = tp[iters / 2], dp = td[iters / 2];
    printf("dp_step_config: MiniLM-sized, batch %d, seq %d, r=8 query+value, %zu params, "
           "%d threads\n", B, T, P, threads);
    printf("dp_plain_step_s: %.4f s\n", plain);
    printf("dp_sgd_step_s: %.4f s\n", dp);
    printf("dp_plain_phases_s: forward %.4f backward %.4f adamw %.4f (means)\n", ph[0][0],
           ph[0][1], ph[0][3]);
    printf("dp_sgd_phases_s: forward %.4f backward_per_example %.4f privatize %.4f adamw %.4f "
           "(means)\n", ph[1][0], ph[1][1], ph[1][2], ph[1][3]);
    /* On a shared machine other processes only ever ADD time, so the best step of each kind
     * is the least disturbed estimate of its cost: dp_step_overhead is the ratio of the best
     * times. The medians and the median of the adjacent-pair ratios are printed beside it to
     * show the spread. */
    printf("dp_plain_step_best_s: %.4f s\n", tp[0]);
    printf("dp_sgd_step_best_s: %.4f s\n", td[0]);
    printf("dp_step_overhead_of_medians: %.3f x\n", plain > 0 ? dp / plain : 0.0);
    printf("dp_step_overhead_paired_median: %.3f x (pairs from %.3f to %.3f)\n",
           ratio[iters / 2], ratio[0], ratio[iters - 1]);
    printf("dp_step_overhead: %.3f x\n", tp[0] > 0 ? td[0] / tp[0] : 0.0);
    rc = 0;
done:
    if (rc != 0) fprintf(stderr, "medfl-bench dp: %s\n", medfl_error_message());
    dp_rng_destroy(&rng);
    free(ids); free(mask); free(sum); free(tp); free(td); free(ratio);
    model_destroy(&m);
    backend_destroy(&be);
    return rc;
}

int bench_dp(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) return s_usage(stdout, 0);
    long batch = 16, classes = 40, iters = 50, step_iters = 3, threads = 2;
    double sigma = 1.0, clip = 1.0;
    int seeded = 0;
    static const struct option opts[] = {
        {"batch", required_argument, NULL, 'b'}, {"classes", required_argument, NULL, 'k'},
        {"iters", required_argument, NULL, 'n'}, {"sigma", required_argument, NULL, 's'},
        {"clip", required_argument, NULL, 'c'},  {"seeded", no_argument, NULL, 'S'},
        {"step-iters", required_argument, NULL, 'i'}, {"threads", required_argument, NULL, 't'},
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
        case 'i': step_iters = strtol(optarg, &end, 10); break;
        case 't': threads = strtol(optarg, &end, 10); break;
        default:
            fprintf(stderr, "medfl-bench dp: unknown option '%s'\n", argv[optind - 1]);
            return s_usage(stderr, 2);
        }
        if (!end || *end || batch < 1 || batch > 4096 || classes < 1 || classes > 100000 ||
            iters < 1 || iters > 100000 || !(sigma >= 0) || !(clip > 0) || step_iters < 0 ||
            step_iters > 1000 || threads < 1 || threads > 256) {
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
    fflush(stdout);
    rc = step_iters > 0 && s_step_overhead(step_iters, (int)threads, seeded, sigma, clip) != 0;
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
