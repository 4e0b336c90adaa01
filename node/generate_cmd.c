/* `medfl-node generate --model BASE [--adapter PEFT] --prompt TEXT [--chat]
 * [--max-new-tokens N] [--temperature T --top-p P --seed S]`: prints only the continuation of
 * the prompt (then a newline), greedy by default, one token at a time through the decoder's
 * KV cache (llama_decode), streaming each token's bytes as it is chosen.
 *
 * BASE is the decoder's base: the GGUF file import-model --gguf wrote (base.gguf; a base.h5
 * path is mapped to the base.gguf beside it). PEFT is a PEFT LoRA adapter of that model: a
 * folder with adapter_config.json (r, lora_alpha, target_modules) and
 * adapter_model.safetensors, whose tensors must be exactly the adapter those settings make.
 * Generation stops at the tokenizer's end-of-sequence token (and, with --chat, at the end of
 * the assistant's turn), after N tokens, or at the model's context length. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "node/engine/backend.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/safetensors.h"
#include "node/commands.h"
#include "node/engine/bpe_chat.h"
#include "node/engine/bpe_gguf.h"
#include "node/engine/llama_gguf.h"
#include "node/import_gguf.h"
#include "node/llm_data.h"
#include "node/llm_train.h"

#define PROG "medfl-node generate"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: medfl-node generate (--model BASE | -c node.conf) [--adapter DIR] --prompt TEXT\n"
            "                           [--chat] [--max-new-tokens N] [--temperature T --top-p P\n"
            "                           --seed S] [--threads N]\n"
            "\n"
            "Prints only the continuation of TEXT (then a newline). Greedy unless a\n"
            "temperature > 0 is given (then nucleus sampling, reproducible for a seed).\n"
            "\n"
            "  --model BASE          the decoder base: a GGUF file (import-model --gguf);\n"
            "                        base.h5 means the base.gguf beside it\n"
            "  -c FILE               node config: the model is its model.base\n"
            "  --adapter DIR         a PEFT LoRA adapter (adapter_config.json and\n"
            "                        adapter_model.safetensors)\n"
            "  --chat                TEXT is a user message, formatted with the model's chat\n"
            "                        template (ChatML, Llama-3) and the assistant's header\n"
            "  --max-new-tokens N    at most N tokens (default 64)\n"
            "  --temperature T       0 (default) is greedy\n"
            "  --top-p P             nucleus mass kept when sampling (default 1)\n"
            "  --seed S              sampling seed (default 0)\n"
            "  --threads N           compute threads (default 2)\n");
}

static int s_bad(const char *what, const char *arg)
{
    fprintf(stderr, PROG ": %s%s\n(" PROG " --help for usage)\n", what, arg ? arg : "");
    return 2;
}

/* ---- sampling */

static uint64_t s_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

typedef struct {
    float p;
    int id;
} s_cand;

static int s_cand_desc(const void *a, const void *b)
{
    float x = ((const s_cand *)a)->p, y = ((const s_cand *)b)->p;
    return x < y ? 1 : x > y ? -1 : ((const s_cand *)a)->id - ((const s_cand *)b)->id;
}

/* Greedy for temperature 0, else a draw from the top-p nucleus of softmax(logits / T). */
static int s_pick(const float *lg, int V, float temp, float top_p, uint64_t *rng, s_cand *c)
{
    int best = 0;
    for (int v = 1; v < V; v++)
        if (lg[v] > lg[best])
            best = v;
    if (temp <= 0.0f)
        return best;
    double sum = 0.0;
    for (int v = 0; v < V; v++) {
        c[v] = (s_cand){expf((lg[v] - lg[best]) / temp), v};
        sum += c[v].p;
    }
    qsort(c, (size_t)V, sizeof *c, s_cand_desc);
    double keep = 0.0;
    int k = 0;
    while (k < V && (k == 0 || keep < top_p * sum))
        keep += c[k++].p;
    double u = (double)(s_next(rng) >> 11) / 9007199254740992.0 * keep, acc = 0.0;
    for (int i = 0; i < k; i++)
        if ((acc += c[i].p) > u)
            return c[i].id;
    return c[k - 1].id;
}

/* ---- the command */

typedef struct {
    const char *model, *adapter, *prompt;
    bool chat;
    long max_new, seed, threads;
    double temp, top_p;
} s_args;

static int s_generate(const s_args *a, const char *gguf_path)
{
    llama_gguf_opts_t o = {0};
    if (a->adapter && llm_adapter_config(a->adapter, &o) != 0)
        return cli_fail(PROG);
    backend_t *be = backend_cpu_new((int)a->threads);
    llama_t *m = be ? llama_from_gguf(gguf_path, &o, be) : NULL;
    bpe_gguf_t g = {0};
    bpe_t *tok = NULL;
    bpe_chat_t chat = {0};
    bpe_ids_t ids = {0};
    llama_kv_t *kv = NULL;
    float *lg = NULL;
    s_cand *cand = NULL;
    int rc = 1;
    if (m == NULL || (a->adapter && llm_adapter_load(m, a->adapter) != 0) ||
        bpe_gguf_read(gguf_path, &g) != 0 || !(tok = bpe_gguf_tokenizer(&g, NULL)))
        goto done;
    if (a->chat) {
        bpe_msg_t msg = {"user", a->prompt};
        if (llm_chat_format(&g, tok, gguf_path, &chat) != 0)
            goto done;
        if (bpe_chat_encode(tok, &chat, &msg, 1, true, &ids, NULL, NULL) != 0)
            goto done;
    } else if (bpe_encode(tok, a->prompt, strlen(a->prompt), BPE_PARSE_SPECIAL, &ids) != 0) {
        medfl_error_prefix("--prompt: ");
        goto done;
    }
    const llama_config_t *c = llama_config(m);
    if (ids.n == 0 || ids.n >= (size_t)c->max_seq) {
        medfl_error_set(MEDFL_EINVAL, "--prompt: %zu tokens (1..%d)", ids.n, c->max_seq - 1);
        goto done;
    }
    long cap = (long)ids.n + a->max_new;
    kv = llama_kv_new(m, (int)(cap < c->max_seq ? cap : c->max_seq));
    lg = malloc((size_t)c->vocab * sizeof(float));
    cand = malloc((size_t)c->vocab * sizeof *cand);
    if (!kv || !lg || !cand || llama_decode(m, kv, ids.v, (int)ids.n, lg) != 0) {
        if (kv && (!lg || !cand))
            medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    int32_t eos = bpe_specials(tok)->eos_id, im_end = bpe_token_id(tok, "<|im_end|>"),
            eot = bpe_token_id(tok, "<|eot_id|>");
    uint64_t rng = (uint64_t)a->seed;
    for (long i = 0; i < a->max_new; i++) {
        int32_t id = s_pick(lg, c->vocab, (float)a->temp, (float)a->top_p, &rng, cand);
        if (id == eos || (a->chat && (id == im_end || id == eot)))
            break;
        size_t len;
        const char *bytes = bpe_token_bytes(tok, id, &len);
        if (fwrite(bytes, 1, len, stdout) != len || fflush(stdout) != 0) {
            medfl_error_set(MEDFL_EIO, "cannot write to standard output");
            goto done;
        }
        if (llama_kv_len(kv) >= c->max_seq || i + 1 == a->max_new)
            break;
        if (llama_decode(m, kv, &id, 1, lg) != 0)
            goto done;
    }
    rc = putchar('\n') == EOF || fflush(stdout) != 0 ? 1 : 0;
done:
    if (rc != 0 && medfl_error_code() != MEDFL_OK)
        rc = cli_fail(PROG);
    free(lg);
    free(cand);
    llama_kv_destroy(&kv);
    bpe_ids_free(&ids);
    bpe_chat_clear(&chat);
    bpe_destroy(&tok);
    bpe_gguf_clear(&g);
    llama_destroy(&m);
    backend_destroy(&be);
    return rc;
}

static int s_num(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, PROG ": %s expects a number in [%g, %g]\n", opt, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage(stdout);
        return 0;
    }
    enum { O_MODEL = 1000, O_ADAPTER, O_PROMPT, O_CHAT, O_MAXNEW, O_TEMP, O_TOPP, O_SEED, O_THR };
    static const struct option opts[] = {
        {"model", required_argument, NULL, O_MODEL},
        {"config", required_argument, NULL, 'c'},
        {"adapter", required_argument, NULL, O_ADAPTER},
        {"prompt", required_argument, NULL, O_PROMPT},
        {"chat", no_argument, NULL, O_CHAT},
        {"max-new-tokens", required_argument, NULL, O_MAXNEW},
        {"temperature", required_argument, NULL, O_TEMP},
        {"top-p", required_argument, NULL, O_TOPP},
        {"seed", required_argument, NULL, O_SEED},
        {"threads", required_argument, NULL, O_THR},
        {NULL, 0, NULL, 0},
    };
    s_args a = {.max_new = 64, .threads = 2, .top_p = 1.0};
    double x;
    int c;
    const char *config = NULL;
    optind = 1;
    opterr = 0;
    medfl_error_clear();
    while ((c = getopt_long(argc, argv, ":c:", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: a.model = optarg; break;
        case 'c': config = optarg; break;
        case O_ADAPTER: a.adapter = optarg; break;
        case O_PROMPT: a.prompt = optarg; break;
        case O_CHAT: a.chat = true; break;
        case O_MAXNEW:
            if (s_num("--max-new-tokens", optarg, 1, 1 << 20, &x) != 0) return 2;
            a.max_new = (long)x;
            break;
        case O_TEMP:
            if (s_num("--temperature", optarg, 0, 100, &a.temp) != 0) return 2;
            break;
        case O_TOPP:
            if (s_num("--top-p", optarg, 1e-6, 1, &a.top_p) != 0) return 2;
            break;
        case O_SEED:
            if (s_num("--seed", optarg, 0, 9007199254740992.0, &x) != 0) return 2;
            a.seed = (long)x;
            break;
        case O_THR:
            if (s_num("--threads", optarg, 1, 256, &x) != 0) return 2;
            a.threads = (long)x;
            break;
        case ':': return s_bad("option needs a value: ", argv[optind - 1]);
        default: return s_bad("unknown option: ", argv[optind - 1]);
        }
    }
    if (optind < argc) return s_bad("unexpected argument: ", argv[optind]);
    if (!a.model && !config) return s_bad("--model BASE or -c node.conf is required", NULL);
    if (!a.prompt) return s_bad("--prompt TEXT is required", NULL);
    char path[4096];
    if (import_gguf_resolve_base(a.model, config, path, sizeof path) != 0) return cli_fail(PROG);
    return s_generate(&a, path);
}
