/* medfl-bench train: LoRA fine-tuning throughput and peak memory of the C model engine on a
 * MiniLM-sized encoder (random weights), the figure compared with PyTorch + PEFT by
 * tests/ref/bench_torch_train.py.
 * WHY: the node trains on hospital CPUs; examples/s and resident memory decide whether a
 * site can take part, so both are measured the same way as the PyTorch reference:
 * whole training steps (forward, backward, AdamW) after warm-up steps, peak RSS from
 * getrusage. --profile splits the step time by phase and by kernel class. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "node/engine/backend.h"
#include "common/cli.h"
#include "common/error.h"
#include "node/engine/model.h"
#include "tests/bench/bench.h"

static void s_usage(void)
{
    printf("usage: medfl-bench train [--threads N] [--batch B] [--seq T] [--steps N]\n"
           "                         [--warmup N] [--device cpu|cuda|auto] [--targets LIST]\n"
           "                         [--per-example] [--profile]\n"
           "  MiniLM-sized encoder (6 layers, hidden 384, 12 heads, ffn 1536, vocab 30522),\n"
           "  random weights, LoRA r=8 alpha=16 (default targets query,value), AdamW.\n"
           "  --per-example  backward with per-example gradients (DP-SGD) + their mean\n"
           "  prints train_examples_per_s and train_peak_rss_mb (and phase times with --profile)\n");
}

static double s_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static int s_int_arg(const char *name, const char *v, int lo, int hi, int *out)
{
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (v == NULL || *v == '\0' || *end != '\0' || x < lo || x > hi)
        return medfl_error_set(MEDFL_EINVAL, "option %s: expected an integer in %d..%d, got '%s'",
                               name, lo, hi, v ? v : "(missing)");
    *out = (int)x;
    return 0;
}

int bench_train(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage();
        return 0;
    }
    int threads = 2, B = 16, T = 128, steps = 10, warmup = 2;
    bool profile = false, per_example = false;
    const char *device = "cpu", *targets = "query,value";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (strcmp(a, "--threads") == 0)
            rc = s_int_arg(a, v, 1, 256, &threads), i++;
        else if (strcmp(a, "--batch") == 0)
            rc = s_int_arg(a, v, 1, 4096, &B), i++;
        else if (strcmp(a, "--seq") == 0)
            rc = s_int_arg(a, v, 1, 512, &T), i++;
        else if (strcmp(a, "--steps") == 0)
            rc = s_int_arg(a, v, 1, 100000, &steps), i++;
        else if (strcmp(a, "--warmup") == 0)
            rc = s_int_arg(a, v, 0, 100000, &warmup), i++;
        else if (strcmp(a, "--device") == 0 && v)
            device = v, i++;
        else if (strcmp(a, "--targets") == 0 && v)
            targets = v, i++;
        else if (strcmp(a, "--profile") == 0)
            profile = true;
        else if (strcmp(a, "--per-example") == 0)
            per_example = true;
        else
            rc = medfl_error_set(MEDFL_EINVAL, "unknown option '%s' (see --help)", a);
        if (rc != 0)
            return cli_fail("medfl-bench train");
    }

    model_config_t cfg;
    model_config_default(&cfg);
    cfg.vocab_size = 30522;
    cfg.hidden = 384;
    cfg.layers = 6;
    cfg.heads = 12;
    cfg.ffn = 1536;
    cfg.max_position = 512;
    cfg.num_labels = 2;
    if (model_lora_targets_parse(targets, &cfg.lora_targets) != 0)
        return cli_fail("medfl-bench train");
    backend_t *be = backend_new(device, threads);
    if (be == NULL)
        return cli_fail("medfl-bench train");
    model_t *m = model_new(&cfg, be);
    if (m == NULL) {
        backend_destroy(&be);
        return cli_fail("medfl-bench train");
    }
    model_base_init_random(m, 42, 0.02f);
    model_init_trainable(m, 1);

    size_t N = (size_t)B * T;
    int32_t *ids = malloc(N * sizeof *ids), *mask = malloc(N * sizeof *mask);
    int32_t *labels = malloc((size_t)B * sizeof *labels);
    if (!ids || !mask || !labels) {
        free(ids), free(mask), free(labels);
        model_destroy(&m);
        backend_destroy(&be);
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return cli_fail("medfl-bench train");
    }
    uint64_t st = 12345;
    for (size_t i = 0; i < N; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((st >> 33) % (uint64_t)cfg.vocab_size);
        mask[i] = 1;
    }
    for (int e = 0; e < B; e++)
        labels[e] = e % cfg.num_labels;
    model_batch_t in = {ids, NULL, mask, labels, B, T};
    adamw_config_t oc;
    adamw_config_default(&oc);
    oc.warmup_steps = 2;
    oc.total_steps = warmup + steps + 1;
    float *pe = per_example ? model_per_example_buffer(m, B) : NULL;

    double t_fwd = 0, t_bwd = 0, t_opt = 0, t_start = 0, loss_sum = 0, cpu_start = 0;
    int rc = 0;
    for (int s = 1; s <= warmup + steps && rc == 0; s++) {
        if (s == warmup + 1) {
            be->synchronize(be);
            t_start = bench_now();
            cpu_start = s_cpu_seconds();
            be->profile = profile;
            memset(&be->prof, 0, sizeof be->prof);
            t_fwd = t_bwd = t_opt = 0;
        }
        float loss = 0;
        double t0 = bench_now();
        rc = model_forward(m, &in, &loss, NULL);
        be->synchronize(be);
        double t1 = bench_now();
        if (rc == 0) {
            if (per_example) {
                rc = model_backward_per_example(m, pe);
                if (rc == 0) /* DP-SGD would clip and add noise here */
                    be->rows_sum(be, model_grads(m), pe, B, model_trainable_numel(m),
                                 1.0f / (float)B);
            } else {
                model_zero_grad(m);
                rc = model_backward(m);
            }
        }
        be->synchronize(be);
        double t2 = bench_now();
        model_adamw_step(m, &oc, s);
        be->synchronize(be);
        double t3 = bench_now();
        t_fwd += t1 - t0, t_bwd += t2 - t1, t_opt += t3 - t2;
        if (s > warmup)
            loss_sum += loss;
    }
    double elapsed = bench_now() - t_start;
    double cpu_used = s_cpu_seconds() - cpu_start;
    if (rc == 0 && backend_status(be) != 0) /* a GPU kernel or cuBLAS call failed */
        rc = -1;
    if (rc != 0) {
        free(ids), free(mask), free(labels);
        model_destroy(&m);
        backend_destroy(&be);
        return cli_fail("medfl-bench train");
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("train_device: %s, %d threads\n", be->name, be->threads);
    printf("train_config: batch %d seq %d steps %d targets %s%s\n", B, T, steps, targets,
           per_example ? " per-example" : "");
    printf("train_examples_per_s: %.2f ex/s\n", (double)B * steps / elapsed);
    printf("train_step_s: %.4f s\n", elapsed / steps);
    printf("train_peak_rss_mb: %.1f MB\n", ru.ru_maxrss / 1024.0);
    /* CPU seconds (user + system, all threads) per example: less sensitive than wall time
     * to other processes on a shared machine, though it counts BLAS threads' spin-waits */
    printf("train_cpu_s_per_example: %.4f s\n", cpu_used / ((double)B * steps));
    printf("train_activation_arena_mb: %.1f MB\n", model_arena_bytes(m) / 1048576.0);
    printf("train_mean_loss: %.4f\n", loss_sum / steps);
    if (profile) {
        printf("train_time_forward_s: %.4f s/step\n", t_fwd / steps);
        printf("train_time_backward_s: %.4f s/step\n", t_bwd / steps);
        printf("train_time_optimizer_s: %.5f s/step\n", t_opt / steps);
        printf("train_time_sgemm_s: %.4f s/step\n", be->prof.gemm / steps);
        printf("train_time_sgemm_attention_s: %.4f s/step\n", be->prof.gemm_batched / steps);
        printf("train_time_elementwise_s: %.4f s/step\n", be->prof.elementwise / steps);
    }
    free(ids), free(mask), free(labels);
    model_destroy(&m);
    backend_destroy(&be);
    return 0;
}
