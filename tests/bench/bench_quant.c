/* medfl-bench quant: the de-quantizing matmul (node/engine/quant.h) against plain sgemm on
 * the same matrix already expanded to fp32, at SmolLM2-135M's MLP shape (a [1536 x 576]
 * gate/up weight, 256 tokens; --out/--in/--tokens change it). Both directions are timed:
 * quant_matmul (forward, Y = X W^T) and quant_matmul_t (backward, dX = dY W), each against
 * the sgemm it replaces, best of N repetitions after a warm-up, in the same process and with
 * the same OpenBLAS thread count. What the quantized base buys is memory: the weight bytes
 * are printed too, with the scratch the panels use. */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/quant.h"
#include "tests/bench/bench.h"

static int s_usage(FILE *out, int rc)
{
    fprintf(out, "Usage: medfl-bench quant [--out O] [--in In] [--tokens T] [--reps N] "
                 "[--threads K]\n"
                 "  Times quant_matmul / quant_matmul_t on a [O x In] weight (default 1536 x 576,\n"
                 "  SmolLM2's gate/up) for T tokens (default 256) in Q4_1 and Q8_0 against\n"
                 "  sgemm on the de-quantized fp32 weight; best of N (default 20) after a\n"
                 "  warm-up, K OpenBLAS threads (default 2).\n");
    return rc;
}

typedef int (*mm_fn)(uint32_t, const void *, size_t, size_t, const float *, size_t, float *);

/* Best seconds of one call of the baseline (F32 = sgemm on the de-quantized weight Wd) and
 * of the quantized call, interleaved so that both see the same machine load. */
static int s_best_pair(mm_fn fn, uint32_t type, const void *Wq, const float *Wd, size_t O,
                       size_t In, const float *in, size_t T, float *out, int reps, double *base,
                       double *quant)
{
    *base = *quant = INFINITY;
    for (int r = 0; r <= reps; r++) { /* r == 0: warm-up */
        double t0 = bench_now();
        if (fn(QUANT_F32, Wd, O, In, in, T, out) < 0) return -1;
        double t1 = bench_now();
        if (fn(type, Wq, O, In, in, T, out) < 0) return -1;
        double t2 = bench_now();
        if (r > 0 && t1 - t0 < *base) *base = t1 - t0;
        if (r > 0 && t2 - t1 < *quant) *quant = t2 - t1;
    }
    return 0;
}

int bench_quant(int argc, char **argv)
{
    long O = 1536, In = 576, T = 256, reps = 20, threads = 2;
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'}, {"in", required_argument, NULL, 'i'},
        {"tokens", required_argument, NULL, 't'}, {"reps", required_argument, NULL, 'r'},
        {"threads", required_argument, NULL, 'k'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': O = atol(optarg); break;
        case 'i': In = atol(optarg); break;
        case 't': T = atol(optarg); break;
        case 'r': reps = atol(optarg); break;
        case 'k': threads = atol(optarg); break;
        case 'h': return s_usage(stdout, 0);
        default: return s_usage(stderr, 2);
        }
    }
    if (O < 1 || In < 32 || In % 32 || T < 1 || reps < 1 || threads < 1 || O * In > (1L << 28)) {
        fprintf(stderr, "medfl-bench quant: need O >= 1, In a multiple of 32, T, N, K >= 1\n");
        return 2;
    }
    openblas_set_num_threads((int)threads);
    const size_t n_w = (size_t)O * In;
    float *W = malloc(n_w * 4), *Wd = malloc(n_w * 4), *X = malloc((size_t)T * In * 4),
          *Y = malloc((size_t)T * O * 4), *dY = malloc((size_t)T * O * 4),
          *dX = malloc((size_t)T * In * 4);
    uint8_t *Wq = malloc(n_w * 4);
    if (!W || !Wd || !X || !Y || !dY || !dX || !Wq) {
        fprintf(stderr, "medfl-bench quant: out of memory\n");
        return 1;
    }
    uint64_t st = 1;
    for (size_t k = 0; k < n_w; k++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        W[k] = ((float)(st >> 40) / 16777216.0f - 0.5f) * 0.1f;
    }
    for (size_t k = 0; k < (size_t)T * In; k++) X[k] = (float)((k * 7919) % 1000) / 1000.0f - 0.5f;
    for (size_t k = 0; k < (size_t)T * O; k++) dY[k] = (float)((k * 104729) % 1000) / 1000.0f - 0.5f;
    const double flops = 2.0 * (double)T * (double)O * (double)In;
    printf("quant_shape: %ld x %ld weight, %ld tokens, %ld threads\n", O, In, T, threads);
    printf("quant_matmul_scratch_bytes: %zu bytes\n", quant_matmul_scratch_bytes((size_t)In));
    printf("weight_bytes_f32: %zu bytes\n", n_w * 4);
    const uint32_t types[] = {QUANT_Q4_1, QUANT_Q8_0};
    const char *names[] = {"q4_1", "q8_0"};
    int rc = 0;
    for (size_t t = 0; t < 2 && rc == 0; t++) {
        const size_t rb = quant_row_bytes(types[t], (size_t)In);
        for (long o = 0; o < O; o++) {
            quant_quantize_row(types[t], W + o * In, Wq + o * rb, (size_t)In);
            quant_dequantize_row(types[t], Wq + o * rb, Wd + o * In, (size_t)In);
        }
        /* the baselines: sgemm on the de-quantized weight, both directions (the F32 type is
         * sgemm in place, no panels) */
        double s_fw, q_fw, s_bw, q_bw;
        if (s_best_pair(quant_matmul, types[t], Wq, Wd, (size_t)O, (size_t)In, X, (size_t)T, Y,
                        (int)reps, &s_fw, &q_fw) < 0 ||
            s_best_pair(quant_matmul_t, types[t], Wq, Wd, (size_t)O, (size_t)In, dY, (size_t)T,
                        dX, (int)reps, &s_bw, &q_bw) < 0) {
            fprintf(stderr, "medfl-bench quant: %s\n", medfl_error_message());
            rc = 1;
            break;
        }
        printf("weight_bytes_%s: %zu bytes\n", names[t], rb * (size_t)O);
        printf("sgemm_%s_dequantized_gflops: %.2f GFLOP/s\n", names[t], flops / s_fw * 1e-9);
        printf("quant_matmul_%s_gflops: %.2f GFLOP/s\n", names[t], flops / q_fw * 1e-9);
        printf("quant_matmul_%s_vs_sgemm: %.3f x\n", names[t], s_fw / q_fw);
        printf("sgemm_t_%s_dequantized_gflops: %.2f GFLOP/s\n", names[t], flops / s_bw * 1e-9);
        printf("quant_matmul_t_%s_gflops: %.2f GFLOP/s\n", names[t], flops / q_bw * 1e-9);
        printf("quant_matmul_t_%s_vs_sgemm: %.3f x\n", names[t], s_bw / q_bw);
    }
    free(W);
    free(Wd);
    free(X);
    free(Y);
    free(dY);
    free(dX);
    free(Wq);
    return rc;
}
