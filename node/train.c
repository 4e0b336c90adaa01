/* The node's trainer (see train.h): base model + tokenizer from base.h5, tokenized records
 * with deterministic splits, AdamW with warm-up and linear decay, optional DP-SGD, evaluation
 * (loss, accuracy, macro-F1) and adapter checkpoints.
 *
 * WHY these choices:
 * - Records are tokenized once at load into [N, max_seq_len] arrays; each batch is copied
 *   into [B, T_b] with T_b the longest record of the batch, so short notes do not pay for
 *   max_seq_len of padding (padding is masked out of attention and mean pooling, so the
 *   result does not depend on T_b beyond float rounding).
 * - Without DP, epoch e visits the training split in a permutation drawn from (seed, e):
 *   the data stream is a pure function of the step counter, so a checkpoint only needs the
 *   step to continue identically.
 * - With DP, batches are Poisson samples at rate q from the CSPRNG (the accountant assumes
 *   exactly this sampler), processed in physical chunks of at most min(2 * batch_size, 64) so a
 *   large draw cannot exhaust memory; the clipped per-example gradients are summed across
 *   chunks, noise is added once, and the sum is divided by the EXPECTED batch size q * N,
 *   never by the realised one (which would leak the batch size). An empty draw still takes
 *   a step with noise only. */
#include "node/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/adapter_file.h"
#include "node/engine/backend.h"
#include "node/engine/base_file.h"
#include "common/dp.h"
#include "common/error.h"
#include "common/log.h"
#include "node/engine/family.h"
#include "node/engine/model.h"
#include "node/engine/tokenizer.h"

typedef struct {
    train_config_t cfg;
} s_cfg_holder_t;

static const cfg_option_t s_train_table[] = {
    TRAIN_CFG_OPTIONS(s_cfg_holder_t, cfg),
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

void train_config_defaults(train_config_t *cfg)
{
    s_cfg_holder_t h;
    memset(&h, 0, sizeof h);
    cfg_set_defaults(s_train_table, &h);
    *cfg = h.cfg;
}

static const char *const s_split_names[TRAIN_SPLIT_COUNT] = {"train", "valid", "test", "all"};

int train_split_parse(const char *name, int *out)
{
    for (int i = 0; i < TRAIN_SPLIT_COUNT; i++)
        if (name && strcmp(name, s_split_names[i]) == 0) {
            *out = i;
            return 0;
        }
    return medfl_error_set(MEDFL_EINVAL, "split '%s': expected train, valid, test or all",
                           name ? name : "(null)");
}

const char *train_split_name(int split)
{
    return split >= 0 && split < TRAIN_SPLIT_COUNT ? s_split_names[split] : "?";
}

struct trainer_t {
    train_config_t cfg;
    backend_t *be;
    model_t *m;
    tokenizer_t *tok;
    char base_hash[BASE_HASH_HEX];
    char base_name[256]; /* the base's Hugging Face id, "" when base.h5 records none */
    char **labels;
    size_t n_labels;
    size_t P;               /* trainable floats */
    int T;                  /* max_seq_len */
    /* tokenized records: ids/mask [n_ex, T], lens[n_ex], y[n_ex] */
    size_t n_ex;
    int32_t *ids, *mask, *y, *lens;
    size_t n_trunc;
    size_t *split[TRAIN_SPLIT_COUNT];
    size_t split_n[TRAIN_SPLIT_COUNT];
    /* batch staging [cap_b, T] */
    int32_t *b_ids, *b_mask, *b_y;
    size_t cap_b;
    float *logits;          /* [cap_b, K] */
    float *host_grad;       /* [P] */
    float *host_pe;         /* [chunk, P] when the backend is not host memory */
    uint32_t *sample_idx;   /* [n_train] Poisson draw */
    size_t *order;          /* [n_train] current epoch's permutation */
    long order_epoch;
    adamw_config_t opt;
    long step;              /* AdamW steps done */
    long data_step;         /* position in the data stream */
    bool dp;
    double q, sigma, clip;
    dp_rng_t *rng;
    bool progress;
    char progress_label[64];
    /* head only (model.lora.targets = none): the encoder is frozen whole, so each record's
     * pooled output is computed once and kept; a step is then only the head's [K, C+1]
     * product, which makes DP-SGD's many noisy steps affordable on a CPU. */
    bool head_only;
    size_t hidden;          /* C */
    float *feat;            /* [n_ex, C] pooled outputs, valid where feat_ok */
    uint8_t *feat_ok;       /* [n_ex] */
    float *feat_tmp;        /* [chunk, C] */
    float *head_rows;       /* [chunk, P] per-example head gradients */
    float *head_params;     /* [P] host copy of W [K, C] then b [K] */
    double *head_logits;    /* [K] one example's logits (labels can number 10^5: not a VLA) */
    bool (*stop)(void);     /* asked between steps; true = give up (SIGTERM) */
    void (*tick)(void *);   /* called between steps and encoder batches: heartbeats */
    void *tick_ctx;
};

/* ------------------------------------------------------------------ setup */

static size_t s_chunk(const trainer_t *t);

static void s_free_labels(trainer_t *t)
{
    for (size_t i = 0; i < t->n_labels; i++) free(t->labels[i]);
    free(t->labels);
    t->labels = NULL;
    t->n_labels = 0;
}

static int s_load_tensor(void *ctx, const named_tensor_t *nt)
{
    return model_base_set(ctx, nt->name, nt->data, named_tensor_numel(nt));
}

trainer_t *trainer_new(const train_config_t *cfg, const char *device, const char *const *labels,
                       size_t n_labels)
{
    if (n_labels < 2) {
        medfl_error_set(MEDFL_ECONFIG, "label set: %zu labels; a classifier needs at least 2 "
                        "(set data.labels or model.labels_top_k)", n_labels);
        return NULL;
    }
    trainer_t *t = calloc(1, sizeof *t);
    if (!t) {
        medfl_error_set(MEDFL_ENOMEM, "trainer: out of memory");
        return NULL;
    }
    t->cfg = *cfg;
    t->order_epoch = -1;
    t->labels = calloc(n_labels, sizeof *t->labels);
    if (!t->labels) goto oom;
    for (size_t i = 0; i < n_labels; i++) {
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0) {
                medfl_error_set(MEDFL_ECONFIG, "label set: label '%s' appears twice", labels[i]);
                goto fail;
            }
        if (!(t->labels[i] = strdup(labels[i]))) goto oom;
        t->n_labels = i + 1;
    }
    base_file_t *bf = base_file_open(cfg->base);
    if (!bf) {
        medfl_error_prefix("model.base: ");
        goto fail;
    }
    const base_config_t *bc = base_file_config(bf);
    snprintf(t->base_hash, sizeof t->base_hash, "%s", base_file_hash(bf));
    snprintf(t->base_name, sizeof t->base_name, "%s", base_file_model_name(bf));
    model_config_t mc;
    model_config_default(&mc);
    mc.vocab_size = (int)bc->vocab_size;
    mc.hidden = (int)bc->hidden_size;
    mc.layers = (int)bc->num_hidden_layers;
    mc.heads = (int)bc->num_attention_heads;
    mc.ffn = (int)bc->intermediate_size;
    mc.max_position = (int)bc->max_position_embeddings;
    mc.type_vocab = (int)bc->type_vocab_size;
    mc.layer_norm_eps = (float)bc->layer_norm_eps;
    mc.num_labels = (int)n_labels;
    mc.pooling = strcmp(cfg->pooling, "cls") == 0 ? POOL_CLS : POOL_MEAN;
    mc.lora_r = (int)cfg->lora_r;
    mc.lora_alpha = (float)cfg->lora_alpha;
    if (model_lora_targets_parse(cfg->lora_targets, &mc.lora_targets) != 0) {
        medfl_error_prefix("model.lora.targets: ");
        base_file_destroy(&bf);
        goto fail;
    }
    if (cfg->max_seq_len > mc.max_position) {
        medfl_error_set(MEDFL_ECONFIG, "train.max_seq_len %lld exceeds the base model's "
                        "max_position_embeddings %d", (long long)cfg->max_seq_len,
                        mc.max_position);
        base_file_destroy(&bf);
        goto fail;
    }
    t->T = (int)cfg->max_seq_len;
    if (model_config_check(&mc) != 0 || !(t->be = backend_new(device ? device : "auto",
                                                              (int)cfg->threads))) {
        base_file_destroy(&bf);
        goto fail;
    }
    t->m = model_new(&mc, t->be);
    if (!t->m || base_file_foreach_tensor(bf, s_load_tensor, t->m) != 0 ||
        !(t->tok = base_file_tokenizer(bf))) {
        base_file_destroy(&bf);
        goto fail;
    }
    base_file_destroy(&bf);
    model_init_trainable(t->m, (uint64_t)cfg->seed);
    t->P = model_trainable_numel(t->m);
    if (!(t->host_grad = malloc(t->P * sizeof(float)))) goto oom;
    t->head_only = mc.lora_targets == 0;
    t->hidden = (size_t)mc.hidden;
    if (t->head_only) {
        size_t chunk = s_chunk(t);
        if (!(t->feat_tmp = malloc(chunk * t->hidden * sizeof(float))) ||
            !(t->head_rows = malloc(chunk * t->P * sizeof(float))) ||
            !(t->head_params = malloc(t->P * sizeof(float))) ||
            !(t->head_logits = malloc(n_labels * sizeof(double))))
            goto oom;
    }
    if (!(t->rng = dp_rng_new())) goto fail;
    adamw_config_default(&t->opt);
    t->opt.lr = (float)cfg->lr;
    t->opt.head_lr = (float)cfg->head_lr;
    t->opt.sgd = strcmp(cfg->optimizer, "sgd") == 0;
    t->opt.weight_decay = (float)cfg->weight_decay;
    t->clip = cfg->clip_norm;
    LOG_INFO(TRAIN, "base model %s: %d layers, hidden %d, %zu trainable parameters, %zu labels, "
             "device %s", cfg->base, mc.layers, mc.hidden, t->P, n_labels, t->be->name);
    return t;
oom:
    medfl_error_set(MEDFL_ENOMEM, "trainer: out of memory");
fail:
    trainer_destroy(&t);
    return NULL;
}

static void s_free_records(trainer_t *t)
{
    free(t->ids); free(t->mask); free(t->y); free(t->lens);
    t->ids = t->mask = t->y = t->lens = NULL;
    for (int s = 0; s < TRAIN_SPLIT_COUNT; s++) {
        free(t->split[s]);
        t->split[s] = NULL;
        t->split_n[s] = 0;
    }
    free(t->sample_idx); free(t->order);
    t->sample_idx = NULL;
    t->order = NULL;
    t->order_epoch = -1;
    t->n_ex = 0;
    t->n_trunc = 0;
    free(t->feat); free(t->feat_ok);
    t->feat = NULL;
    t->feat_ok = NULL;
}

void trainer_destroy(trainer_t **self_p)
{
    if (!self_p || !*self_p) return;
    trainer_t *t = *self_p;
    s_free_records(t);
    free(t->b_ids); free(t->b_mask); free(t->b_y); free(t->logits);
    free(t->host_grad); free(t->host_pe);
    free(t->feat_tmp); free(t->head_rows); free(t->head_params); free(t->head_logits);
    model_destroy(&t->m);
    backend_destroy(&t->be);
    tokenizer_destroy(&t->tok);
    dp_rng_destroy(&t->rng);
    s_free_labels(t);
    free(t);
    *self_p = NULL;
}

/* ------------------------------------------------------------------ records */

int trainer_set_records(trainer_t *t, const records_t *set, bool whole)
{
    s_free_records(t);
    size_t n = records_count(set);
    if (n == 0) return medfl_error_set(MEDFL_EINVAL, "records: no records to train or evaluate on");
    if (records_n_labels(set) != t->n_labels)
        return medfl_error_set(MEDFL_ECONFIG, "records: %zu labels but the model has %zu",
                               records_n_labels(set), t->n_labels);
    for (size_t k = 0; k < t->n_labels; k++)
        if (strcmp(records_label_name(set, (int)k), t->labels[k]) != 0)
            /* Neither name is shown: the records' label set may come from the data. */
            return medfl_error_set(MEDFL_ECONFIG, "records: label %zu differs from the model's "
                                   "label %zu (the label sets must list the same names in the "
                                   "same order; compare data.labels with the model's)", k, k);
    size_t T = (size_t)t->T;
    t->ids = malloc(n * T * sizeof(int32_t));
    t->mask = malloc(n * T * sizeof(int32_t));
    t->y = malloc(n * sizeof(int32_t));
    t->lens = malloc(n * sizeof(int32_t));
    if (!t->ids || !t->mask || !t->y || !t->lens) {
        s_free_records(t);
        return medfl_error_set(MEDFL_ENOMEM, "records: out of memory for %zu x %zu tokens", n, T);
    }
    for (size_t i = 0; i < n; i++) {
        const record_t *r = records_get(set, i);
        if (r->label < 0 || (size_t)r->label >= t->n_labels) {
            s_free_records(t);
            return medfl_error_set(MEDFL_EFORMAT, "record %zu (line %zu): field 'label': no label",
                                   r->record_no, r->line);
        }
        size_t pieces = 0;
        int len = tokenizer_encode(t->tok, r->text, r->text_len, T, t->ids + i * T,
                                   t->mask + i * T, NULL, &pieces);
        if (len < 0) {
            s_free_records(t);
            return medfl_error_prefix("record %zu (line %zu): field 'text': ", r->record_no, r->line);
        }
        if (pieces + 2 > T) t->n_trunc++;
        t->lens[i] = len;
        t->y[i] = r->label;
    }
    t->n_ex = n;
    if (t->head_only && (!(t->feat = malloc(n * t->hidden * sizeof(float))) ||
                         !(t->feat_ok = calloc(n, 1)))) {
        s_free_records(t);
        return medfl_error_set(MEDFL_ENOMEM, "records: out of memory for %zu pooled outputs", n);
    }
    if (whole) {
        if (!(t->split[TRAIN_SPLIT_ALL] = malloc(n * sizeof(size_t)))) {
            s_free_records(t);
            return medfl_error_set(MEDFL_ENOMEM, "records: out of memory");
        }
        for (size_t i = 0; i < n; i++) t->split[TRAIN_SPLIT_ALL][i] = i;
        t->split_n[TRAIN_SPLIT_ALL] = n;
    } else {
        records_split_t sp;
        if (records_split(set, (uint64_t)t->cfg.seed, t->cfg.valid_fraction, t->cfg.test_fraction,
                          &sp) != 0) {
            s_free_records(t);
            return -1;
        }
        for (int s = 0; s < 3; s++) {
            t->split[s] = sp.idx[s];
            t->split_n[s] = sp.n[s];
            sp.idx[s] = NULL;
        }
        records_split_free(&sp);
        if (!(t->split[TRAIN_SPLIT_ALL] = malloc(n * sizeof(size_t)))) {
            s_free_records(t);
            return medfl_error_set(MEDFL_ENOMEM, "records: out of memory");
        }
        for (size_t i = 0; i < n; i++) t->split[TRAIN_SPLIT_ALL][i] = i;
        t->split_n[TRAIN_SPLIT_ALL] = n;
    }
    size_t ntr = t->split_n[TRAIN_SPLIT_TRAIN];
    t->sample_idx = malloc((ntr ? ntr : 1) * sizeof(uint32_t));
    t->order = malloc((ntr ? ntr : 1) * sizeof(size_t));
    if (!t->sample_idx || !t->order) {
        s_free_records(t);
        return medfl_error_set(MEDFL_ENOMEM, "records: out of memory");
    }
    if (t->n_trunc)
        LOG_INFO(DATA, "%zu of %zu records longer than %d tokens were truncated", t->n_trunc, n,
                 t->T);
    return 0;
}

size_t trainer_split_size(const trainer_t *t, int split)
{
    return split >= 0 && split < TRAIN_SPLIT_COUNT ? t->split_n[split] : 0;
}
size_t trainer_truncated(const trainer_t *t) { return t->n_trunc; }
size_t trainer_n_labels(const trainer_t *t) { return t->n_labels; }
const char *trainer_label(const trainer_t *t, size_t i)
{
    return i < t->n_labels ? t->labels[i] : NULL;
}
const struct model *trainer_model(const trainer_t *t)
{
    return t->m;
}

size_t trainer_n_params(const trainer_t *t) { return t->P; }
int trainer_get_params(const trainer_t *t, float *out, size_t n)
{
    return model_trainable_get(t->m, out, n);
}
int trainer_set_params(trainer_t *t, const float *in, size_t n)
{
    return model_trainable_set(t->m, in, n);
}
long trainer_step(const trainer_t *t) { return t->step; }
long trainer_data_step(const trainer_t *t) { return t->data_step; }
void trainer_set_data_step(trainer_t *t, long data_step) { t->data_step = data_step; }

/* ------------------------------------------------------------------ DP settings */

int trainer_set_dp(trainer_t *t, bool on, double q, double sigma, double clip)
{
    if (on && (!(q > 0 && q <= 1) || !(sigma >= 0) || isinf(sigma) || !(clip > 0) || isinf(clip)))
        return medfl_error_set(MEDFL_EINVAL, "DP-SGD: need 0 < q <= 1 (got %g), sigma >= 0 (got "
                               "%g), clip > 0 (got %g)", q, sigma, clip);
    t->dp = on;
    t->q = q;
    t->sigma = sigma;
    t->clip = clip;
    return 0;
}

int trainer_use_seeded_rng(trainer_t *t, uint64_t seed)
{
    dp_rng_t *r = dp_rng_new_seeded(seed);
    if (!r) return -1;
    dp_rng_destroy(&t->rng);
    t->rng = r;
    return 0;
}

bool trainer_rng_is_seeded(const trainer_t *t) { return dp_rng_is_seeded(t->rng); }

int trainer_dp_plan(const trainer_t *t, int64_t steps, double *q, double *sigma)
{
    size_t ntr = t->split_n[TRAIN_SPLIT_TRAIN];
    if (ntr == 0) return medfl_error_set(MEDFL_ESTATE, "DP plan: no training records loaded");
    double qq = t->cfg.sample_rate > 0 ? t->cfg.sample_rate
                                       : fmin(1.0, (double)t->cfg.batch_size / (double)ntr);
    *q = qq;
    if (t->cfg.noise_multiplier > 0) {
        *sigma = t->cfg.noise_multiplier;
        return 0;
    }
    if (!(t->cfg.target_epsilon > 0))
        return medfl_error_set(MEDFL_ECONFIG, "privacy: set privacy.noise_multiplier or a "
                               "privacy.target_epsilon > 0");
    if (dp_noise_multiplier(NULL, t->cfg.target_epsilon, qq, steps, t->cfg.delta,
                            DP_CONV_IMPROVED, 0.01, sigma) != 0)
        return medfl_error_prefix("privacy: target epsilon %g over %lld steps at q = %g: ",
                                  t->cfg.target_epsilon, (long long)steps, qq);
    return 0;
}

long trainer_steps_per_epoch(const trainer_t *t)
{
    size_t ntr = t->split_n[TRAIN_SPLIT_TRAIN];
    if (ntr == 0) return 0;
    if (t->dp) return (long)fmax(1.0, floor(1.0 / t->q + 0.5));
    size_t B = (size_t)t->cfg.batch_size;
    return (long)((ntr + B - 1) / B);
}

void trainer_set_schedule(trainer_t *t, long warmup_steps, long total_steps)
{
    t->opt.warmup_steps = warmup_steps;
    t->opt.total_steps = total_steps;
}

int trainer_set_lr(trainer_t *t, double lr)
{
    /* Up to 100: DP-SGD steps on a linear head with clipped gradients (norm <= C) take
     * rates of 10-50 (docs/privacy.md §7a); beyond that it is a typo. */
    if (!(lr > 0) || !isfinite(lr) || lr > 100)
        return medfl_error_set(MEDFL_EINVAL, "learning rate %g outside (0, 100]", lr);
    t->opt.lr = (float)lr;
    return 0;
}

double trainer_lr(const trainer_t *t) { return t->opt.lr; }

/* The staging buffers grow on demand (s_reserve), so only the value changes here. */
int trainer_set_batch_size(trainer_t *t, long batch_size)
{
    if (batch_size < 1 || batch_size > 4096)
        return medfl_error_set(MEDFL_EINVAL, "batch size %ld outside [1, 4096]", batch_size);
    t->cfg.batch_size = batch_size;
    return 0;
}

long trainer_batch_size(const trainer_t *t) { return (long)t->cfg.batch_size; }

void trainer_set_progress(trainer_t *t, bool on, const char *label)
{
    t->progress = on;
    snprintf(t->progress_label, sizeof t->progress_label, "%s", label ? label : "");
}

/* ------------------------------------------------------------------ batches */

/* Examples per forward pass outside plain training steps (DP chunks, evaluation): twice the
 * batch, capped so that a large expected DP batch does not size the activation arena by it
 * (MiniLM at 128 tokens needs ~19 MB of activations per example). */
static size_t s_chunk(const trainer_t *t)
{
    size_t c = (size_t)t->cfg.batch_size * 2;
    return c > 64 ? 64 : c;
}

static int s_reserve(trainer_t *t, size_t B)
{
    if (B <= t->cap_b) return 0;
    size_t T = (size_t)t->T;
    int32_t *a = realloc(t->b_ids, B * T * sizeof(int32_t));
    if (a) t->b_ids = a;
    int32_t *b = realloc(t->b_mask, B * T * sizeof(int32_t));
    if (b) t->b_mask = b;
    int32_t *c = realloc(t->b_y, B * sizeof(int32_t));
    if (c) t->b_y = c;
    float *d = realloc(t->logits, B * t->n_labels * sizeof(float));
    if (d) t->logits = d;
    if (!a || !b || !c || !d) return medfl_error_set(MEDFL_ENOMEM, "trainer: out of memory");
    if (t->be->kind != BACKEND_CPU) {
        float *e = realloc(t->host_pe, B * t->P * sizeof(float));
        if (!e) return medfl_error_set(MEDFL_ENOMEM, "trainer: out of memory");
        t->host_pe = e;
    }
    t->cap_b = B;
    return 0;
}

/* Copies examples ex[0..n) into the staging arrays as [n, T_b]. */
static int s_stage(trainer_t *t, const size_t *ex, size_t n, model_batch_t *in)
{
    if (s_reserve(t, n) != 0) return -1;
    int Tb = 2;
    for (size_t i = 0; i < n; i++)
        if (t->lens[ex[i]] > Tb) Tb = t->lens[ex[i]];
    size_t T = (size_t)t->T;
    for (size_t i = 0; i < n; i++) {
        memcpy(t->b_ids + i * (size_t)Tb, t->ids + ex[i] * T, (size_t)Tb * sizeof(int32_t));
        memcpy(t->b_mask + i * (size_t)Tb, t->mask + ex[i] * T, (size_t)Tb * sizeof(int32_t));
        t->b_y[i] = t->y[ex[i]];
    }
    in->ids = t->b_ids;
    in->type_ids = NULL;
    in->mask = t->b_mask;
    in->labels = t->b_y;
    in->B = (int)n;
    in->T = Tb;
    return 0;
}

/* ---- head only ---- */

/* Pooled outputs of examples ex[0..n) (n <= s_chunk) into out [n, C], from the cache where
 * present; the missing ones go through the frozen encoder together, once per record. */
static int s_features(trainer_t *t, const size_t *ex, size_t n, float *out)
{
    size_t C = t->hidden, miss[64], m = 0;
    for (size_t i = 0; i < n; i++)
        if (!t->feat_ok[ex[i]]) {
            bool dup = false;
            for (size_t j = 0; j < m; j++) dup |= miss[j] == ex[i];
            if (!dup) miss[m++] = ex[i];
        }
    if (m > 0) {
        model_batch_t in;
        if (s_stage(t, miss, m, &in) != 0 || model_embed(t->m, &in, t->feat_tmp) != 0) return -1;
        if (t->tick) t->tick(t->tick_ctx); /* the first pass over a large split takes a while */
        for (size_t j = 0; j < m; j++) {
            memcpy(t->feat + miss[j] * C, t->feat_tmp + j * C, C * sizeof(float));
            t->feat_ok[miss[j]] = 1;
        }
    }
    for (size_t i = 0; i < n; i++) memcpy(out + i * C, t->feat + ex[i] * C, C * sizeof(float));
    return 0;
}

/* Head forward and per-example backward over cached pooled outputs, for ex[0..n)
 * (n <= s_chunk):
 *   logits_e [K] = W [K, C] @ h_e [C] + b;  loss_e = logsumexp(logits_e) - logits_e[y_e]
 *   rows[e] = d loss_e / d(W, b) = ((p_e - onehot(y_e)) ⊗ h_e, p_e - onehot(y_e))
 * exactly the head part of model_backward_per_example. rows and logits may be NULL. */
static int s_head_pass(trainer_t *t, const size_t *ex, size_t n, float *rows, float *logits,
                       double *loss_sum)
{
    size_t C = t->hidden, K = t->n_labels, P = t->P;
    if (s_features(t, ex, n, t->feat_tmp) != 0) return -1;
    if (model_trainable_get(t->m, t->head_params, P) != 0) return -1;
    const float *W = t->head_params, *bias = t->head_params + K * C;
    double *p = t->head_logits;
    for (size_t e = 0; e < n; e++) {
        const float *h = t->feat_tmp + e * C;
        double mx = -INFINITY, z = 0;
        for (size_t k = 0; k < K; k++) {
            double a = bias[k];
            for (size_t c = 0; c < C; c++) a += (double)W[k * C + c] * h[c];
            p[k] = a;
            if (logits) logits[e * K + k] = (float)a;
            if (a > mx) mx = a;
        }
        for (size_t k = 0; k < K; k++) z += exp(p[k] - mx);
        int32_t y = t->y[ex[e]];
        *loss_sum += mx + log(z) - p[y];
        if (!rows) continue;
        float *r = rows + e * P;
        for (size_t k = 0; k < K; k++) {
            float d = (float)(exp(p[k] - mx) / z - (k == (size_t)y));
            for (size_t c = 0; c < C; c++) r[k * C + c] = d * h[c];
            r[K * C + k] = d;
        }
    }
    return 0;
}

/* Mean head gradient of ex[0..n) into the model's gradient buffer. */
static int s_head_gradient(trainer_t *t, const size_t *ex, size_t n, double *loss_sum)
{
    size_t chunk = s_chunk(t);
    memset(t->host_grad, 0, t->P * sizeof(float));
    for (size_t off = 0; off < n; off += chunk) {
        size_t b = n - off < chunk ? n - off : chunk;
        if (s_head_pass(t, ex + off, b, t->head_rows, NULL, loss_sum) != 0) return -1;
        for (size_t e = 0; e < b; e++)
            for (size_t j = 0; j < t->P; j++) t->host_grad[j] += t->head_rows[e * t->P + j];
    }
    for (size_t j = 0; j < t->P; j++) t->host_grad[j] /= (float)n;
    t->be->upload(t->be, model_grads(t->m), t->host_grad, t->P * sizeof(float));
    return 0;
}

/* Mean gradient of ex[0..n) (n >= 1) into the model's gradient buffer, by the head-only
 * cache or by the model's own forward and backward; *loss = the batch's mean loss. */
static int s_plain_gradient(trainer_t *t, const size_t *ex, size_t n, float *loss)
{
    model_zero_grad(t->m);
    if (t->head_only) {
        double ls = 0;
        int rc = s_head_gradient(t, ex, n, &ls);
        *loss = (float)(ls / (double)n);
        return rc;
    }
    model_batch_t in;
    if (s_stage(t, ex, n, &in) != 0 || model_forward(t->m, &in, loss, NULL) != 0) return -1;
    return model_backward(t->m);
}

/* Clipped per-example gradients of examples ex[0..n) summed into acc (double, P). */
static int s_dp_chunk(trainer_t *t, const size_t *ex, size_t n, double *acc, double *loss_sum,
                      dp_clip_stats_t *st)
{
    model_batch_t in;
    float loss = 0;
    float *rows;
    if (t->head_only) {
        double ls = 0;
        if (s_head_pass(t, ex, n, t->head_rows, NULL, &ls) != 0) return -1;
        rows = t->head_rows;
        loss = n ? (float)(ls / (double)n) : 0.0f;
    } else {
        if (s_stage(t, ex, n, &in) != 0 || model_forward(t->m, &in, &loss, NULL) != 0) return -1;
        float *pe = model_per_example_buffer(t->m, (int)n);
        if (!pe || model_backward_per_example(t->m, pe) != 0) return -1;
        rows = pe;
        if (t->be->kind != BACKEND_CPU) {
            t->be->download(t->be, t->host_pe, pe, n * t->P * sizeof(float));
            rows = t->host_pe;
        }
    }
    dp_clip_stats_t cs;
    if (dp_clip_rows(rows, n, t->P, t->clip, &cs) != 0) return -1;
    for (size_t b = 0; b < n; b++) {
        const float *r = rows + b * t->P;
        for (size_t j = 0; j < t->P; j++) acc[j] += r[j];
    }
    st->mean_norm = (st->mean_norm * (double)st->rows + cs.mean_norm * (double)cs.rows) /
                    (double)(st->rows + cs.rows ? st->rows + cs.rows : 1);
    st->rows += cs.rows;
    st->clipped += cs.clipped;
    if (cs.max_norm > st->max_norm) st->max_norm = cs.max_norm;
    *loss_sum += (double)loss * (double)n;
    return 0;
}

/* The DP-SGD gradient of the batch ex[0..n) into t->host_grad: clipped sum + noise,
 * divided by divisor. */
static int s_dp_gradient(trainer_t *t, const size_t *ex, size_t n, double divisor,
                         double *loss_sum, dp_clip_stats_t *st)
{
    double *acc = calloc(t->P, sizeof(double));
    if (!acc) return medfl_error_set(MEDFL_ENOMEM, "trainer: out of memory");
    size_t chunk = s_chunk(t);
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += chunk)
        rc = s_dp_chunk(t, ex + off, n - off < chunk ? n - off : chunk, acc, loss_sum, st);
    if (rc == 0) {
        for (size_t j = 0; j < t->P; j++) t->host_grad[j] = (float)acc[j];
        /* dp_privatize in pieces: the chunks were clipped (dp_clip_rows) and summed above,
         * so the noise N(0, σ²C²) with its grid snapping is added once to the whole sum. */
        rc = dp_add_noise(t->rng, t->host_grad, t->P, t->sigma * t->clip);
        if (rc == 0) {
            float inv = (float)(1.0 / divisor);
            for (size_t j = 0; j < t->P; j++) t->host_grad[j] *= inv;
        }
    }
    free(acc);
    return rc;
}

int trainer_batch_gradient(trainer_t *t, const size_t *idx, size_t n, bool privatize,
                           double divisor, float *grad)
{
    size_t ntr = t->split_n[TRAIN_SPLIT_TRAIN];
    size_t *ex = malloc((n ? n : 1) * sizeof *ex);
    if (!ex) return medfl_error_set(MEDFL_ENOMEM, "trainer: out of memory");
    for (size_t i = 0; i < n; i++) {
        if (idx[i] >= ntr) {
            free(ex);
            return medfl_error_set(MEDFL_EINVAL, "batch: index %zu outside the training split "
                                   "(%zu records)", idx[i], ntr);
        }
        ex[i] = t->split[TRAIN_SPLIT_TRAIN][idx[i]];
    }
    int rc;
    if (privatize) {
        double ls = 0;
        dp_clip_stats_t st = {0};
        rc = s_dp_gradient(t, ex, n, divisor, &ls, &st);
        if (rc == 0) memcpy(grad, t->host_grad, t->P * sizeof(float));
    } else {
        float loss;
        rc = n == 0 ? medfl_error_set(MEDFL_EINVAL, "batch: empty") : s_plain_gradient(t, ex, n, &loss);
        if (rc == 0) rc = model_grad_get(t->m, grad, t->P);
    }
    free(ex);
    return rc;
}

/* The permutation of the training split for epoch e: a function of (seed, e) only. */
static void s_epoch_order(trainer_t *t, long e)
{
    if (t->order_epoch == e) return;
    size_t n = t->split_n[TRAIN_SPLIT_TRAIN];
    memcpy(t->order, t->split[TRAIN_SPLIT_TRAIN], n * sizeof(size_t));
    uint64_t st = (uint64_t)t->cfg.seed * 0x9E3779B97F4A7C15ull ^ ((uint64_t)e + 0x7A1Bull);
    for (size_t i = n; i > 1; i--) {
        size_t j = data_rng_below(&st, (uint32_t)i);
        size_t x = t->order[i - 1];
        t->order[i - 1] = t->order[j];
        t->order[j] = x;
    }
    t->order_epoch = e;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void train_progress_print(const char *label, long done, long total, double loss, double rate,
                          bool final)
{
    if (isatty(STDERR_FILENO)) {
        int width = 24, fill = total > 0 ? (int)((double)done / (double)total * width) : width;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
        bar[width] = '\0';
        fprintf(stderr, "\r%s [%s] step %ld/%ld  loss %.4f  %.1f ex/s ", label, bar, done, total,
                loss, rate);
        if (final) fputc('\n', stderr);
        fflush(stderr);
    } else {
        long every = total >= 10 ? total / 10 : 1;
        if (final || done % every == 0)
            LOG_INFO(TRAIN, "%s step %ld/%ld loss %.4f %.1f ex/s", label, done, total, loss, rate);
    }
}

static void s_progress(trainer_t *t, long done, long total, double loss, size_t ex, double secs,
                       bool final)
{
    if (!t->progress) return;
    train_progress_print(t->progress_label, done, total, loss, secs > 0 ? (double)ex / secs : 0,
                         final);
}

int trainer_train_steps(trainer_t *t, long n_steps, train_stats_t *stats)
{
    train_stats_t s;
    memset(&s, 0, sizeof s);
    size_t ntr = t->split_n[TRAIN_SPLIT_TRAIN];
    s.examples_total = ntr;
    s.dp = t->dp;
    s.q = t->dp ? t->q : 0;
    s.sigma = t->dp ? t->sigma : 0;
    s.clip = t->dp ? t->clip : 0;
    if (ntr == 0)
        return medfl_error_set(MEDFL_ESTATE, "train: the training split is empty (%zu records "
                               "loaded)", t->n_ex);
    if (t->dp && dp_rng_is_seeded(t->rng))
        LOG_WARN(PRIVACY, "DP-SGD noise drawn from a SEEDED stream: for tests only, no privacy");
    size_t B = (size_t)t->cfg.batch_size;
    size_t *ex = malloc((t->dp ? ntr : B) * sizeof *ex);
    if (!ex) return medfl_error_set(MEDFL_ENOMEM, "trainer: out of memory");
    double t0 = s_now(), loss_sum = 0;
    size_t loss_n = 0;
    dp_clip_stats_t cst = {0};
    int rc = 0;
    long spe = trainer_steps_per_epoch(t);
    for (long k = 0; k < n_steps && rc == 0; k++) {
        size_t n = 0;
        if (t->dp) {
            rc = dp_poisson_sample(t->rng, ntr, t->q, t->sample_idx, &n);
            for (size_t i = 0; i < n && rc == 0; i++)
                ex[i] = t->split[TRAIN_SPLIT_TRAIN][t->sample_idx[i]];
            if (rc == 0) rc = s_dp_gradient(t, ex, n, t->q * (double)ntr, &loss_sum, &cst);
            if (rc == 0) {
                t->be->upload(t->be, model_grads(t->m), t->host_grad, t->P * sizeof(float));
                loss_n += n;
            }
        } else {
            long e = t->data_step / spe, pos = t->data_step % spe;
            s_epoch_order(t, e);
            size_t start = (size_t)pos * B;
            n = ntr - start < B ? ntr - start : B;
            memcpy(ex, t->order + start, n * sizeof *ex);
            float loss = 0;
            rc = s_plain_gradient(t, ex, n, &loss);
            loss_sum += (double)loss * (double)n;
            loss_n += n;
        }
        if (rc != 0) break;
        t->step++;
        t->data_step++;
        if (model_optimizer_step(t->m, &t->opt, t->step) != 0) {
            rc = -1;
            break;
        }
        s.steps++;
        s.examples += n;
        s_progress(t, k + 1, n_steps, loss_n ? loss_sum / (double)loss_n : 0, s.examples,
                   s_now() - t0, k + 1 == n_steps);
        if (t->tick) t->tick(t->tick_ctx);
        if (k + 1 < n_steps && t->stop && t->stop()) {
            rc = medfl_error_set(MEDFL_ESTATE, "training interrupted after %ld of %ld steps: "
                                 "stop requested", k + 1, n_steps);
            break;
        }
    }
    free(ex);
    s.seconds = s_now() - t0;
    s.mean_loss = loss_n ? loss_sum / (double)loss_n : 0;
    if (t->dp) {
        s.dp_steps = s.steps;
        s.clipped = cst.clipped;
        s.mean_grad_norm = cst.mean_norm;
    }
    if (stats) *stats = s;
    return rc;
}

void trainer_set_stop(trainer_t *t, bool (*stop)(void)) { t->stop = stop; }

void trainer_set_tick(trainer_t *t, void (*tick)(void *ctx), void *ctx)
{
    t->tick = tick;
    t->tick_ctx = ctx;
}

int trainer_linear_step(const trainer_t *t, long local_steps, double *scale)
{
    size_t ntr = t->split_n[TRAIN_SPLIT_TRAIN];
    if (!t->dp || ntr == 0)
        return medfl_error_set(MEDFL_ESTATE, "needs DP-SGD on and training records");
    if (!t->opt.sgd)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "needs train.optimizer = sgd (AdamW's step is "
                               "not linear in the gradient)");
    if (local_steps != 1)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "needs one local step per round (the round "
                               "asks for %ld): later steps would see this node's noise only",
                               local_steps);
    /* The schedule trainer_round sets for one step. */
    adamw_config_t c = t->opt;
    c.warmup_steps = (long)floor(t->cfg.warmup_fraction * 1.0);
    c.total_steps = 0;
    double lr = adamw_lr_at(&c, 1);
    if (c.head_lr > 0 && c.head_lr != c.lr) {
        if (model_config(t->m)->lora_targets != 0)
            return medfl_error_set(MEDFL_EUNSUPPORTED, "needs one learning rate for every "
                                   "coordinate (train.head_lr %g differs from lr %g and LoRA "
                                   "is trained)", (double)c.head_lr, (double)c.lr);
        lr = c.lr > 0 ? lr * (c.head_lr / c.lr) : c.head_lr; /* head only: all head */
    }
    *scale = lr / (t->q * (double)ntr);
    return 0;
}

int trainer_round(trainer_t *t, const float *global, size_t n, long local_steps, float *delta,
                  train_stats_t *stats)
{
    if (local_steps < 1) return medfl_error_set(MEDFL_EINVAL, "round: local_steps must be >= 1");
    if (trainer_set_params(t, global, n) != 0) return -1;
    model_adamw_reset(t->m);
    t->step = 0;
    trainer_set_schedule(t, (long)floor(t->cfg.warmup_fraction * (double)local_steps), 0);
    if (trainer_train_steps(t, local_steps, stats) != 0) return -1;
    if (trainer_get_params(t, delta, n) != 0) return -1;
    for (size_t j = 0; j < n; j++) delta[j] -= global[j];
    return 0;
}

/* ------------------------------------------------------------------ evaluation */

static void s_metrics(const int32_t *truth, const int32_t *pred, size_t n, size_t K,
                      train_eval_t *out)
{
    size_t *tp = calloc(K, sizeof *tp), *fp = calloc(K, sizeof *fp), *fn = calloc(K, sizeof *fn);
    size_t correct = 0;
    if (tp && fp && fn) {
        for (size_t i = 0; i < n; i++) {
            if (truth[i] == pred[i]) {
                correct++;
                tp[truth[i]]++;
            } else {
                fp[pred[i]]++;
                fn[truth[i]]++;
            }
        }
        double f1 = 0;
        size_t present = 0;
        for (size_t k = 0; k < K; k++) {
            if (tp[k] + fp[k] + fn[k] == 0) continue; /* absent from truth and predictions */
            present++;
            f1 += 2.0 * (double)tp[k] / (double)(2 * tp[k] + fp[k] + fn[k]);
        }
        out->macro_f1 = present ? f1 / (double)present : 0;
    }
    out->accuracy = n ? (double)correct / (double)n : 0;
    out->n = n;
    free(tp); free(fp); free(fn);
}

int trainer_evaluate(trainer_t *t, int split, train_eval_t *out)
{
    memset(out, 0, sizeof *out);
    if (split < 0 || split >= TRAIN_SPLIT_COUNT || !t->split[split])
        return medfl_error_set(MEDFL_ESTATE, "evaluate: split '%s' is not loaded",
                               train_split_name(split));
    size_t n = t->split_n[split], K = t->n_labels;
    if (n == 0)
        return medfl_error_set(MEDFL_ESTATE, "evaluate: split '%s' is empty (raise "
                               "train.%s_fraction)", train_split_name(split),
                               split == TRAIN_SPLIT_TEST ? "test" : "valid");
    int32_t *truth = malloc(n * sizeof(int32_t)), *pred = malloc(n * sizeof(int32_t));
    if (!truth || !pred) {
        free(truth); free(pred);
        return medfl_error_set(MEDFL_ENOMEM, "evaluate: out of memory");
    }
    size_t chunk = s_chunk(t);
    double loss_sum = 0;
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += chunk) {
        size_t b = n - off < chunk ? n - off : chunk;
        model_batch_t in;
        float loss = 0;
        if (t->head_only) {
            double ls = 0;
            rc = s_reserve(t, b);
            if (rc == 0) rc = s_head_pass(t, t->split[split] + off, b, NULL, t->logits, &ls);
            loss = (float)(ls / (double)b);
        } else {
            rc = s_stage(t, t->split[split] + off, b, &in);
            if (rc == 0) rc = model_forward(t->m, &in, &loss, t->logits);
        }
        if (rc != 0) break;
        loss_sum += (double)loss * (double)b;
        for (size_t i = 0; i < b; i++) {
            const float *l = t->logits + i * K;
            size_t best = 0;
            for (size_t k = 1; k < K; k++)
                if (l[k] > l[best]) best = k;
            pred[off + i] = (int32_t)best;
            truth[off + i] = t->y[t->split[split][off + i]];
        }
    }
    if (rc == 0) {
        s_metrics(truth, pred, n, K, out);
        out->loss = loss_sum / (double)n;
    }
    free(truth); free(pred);
    return rc;
}

int trainer_evaluate_vector(trainer_t *t, const float *vec, size_t n, int split, train_eval_t *out)
{
    float *save = malloc(t->P * sizeof(float));
    if (!save) return medfl_error_set(MEDFL_ENOMEM, "evaluate: out of memory");
    int rc = trainer_get_params(t, save, t->P);
    if (rc == 0) rc = trainer_set_params(t, vec, n);
    if (rc == 0) {
        rc = trainer_evaluate(t, split, out);
        if (trainer_set_params(t, save, t->P) != 0) rc = -1;
    }
    free(save);
    return rc;
}

int trainer_majority_baseline(const trainer_t *t, int split, train_eval_t *out)
{
    memset(out, 0, sizeof *out);
    int from = t->split_n[TRAIN_SPLIT_TRAIN] ? TRAIN_SPLIT_TRAIN : split;
    size_t n = t->split_n[split], K = t->n_labels;
    if (!t->split[split] || n == 0 || t->split_n[from] == 0)
        return medfl_error_set(MEDFL_ESTATE, "baseline: split '%s' is empty",
                               train_split_name(split));
    size_t *cnt = calloc(K, sizeof *cnt);
    int32_t *truth = malloc(n * sizeof(int32_t)), *pred = malloc(n * sizeof(int32_t));
    if (!cnt || !truth || !pred) {
        free(cnt); free(truth); free(pred);
        return medfl_error_set(MEDFL_ENOMEM, "baseline: out of memory");
    }
    for (size_t i = 0; i < t->split_n[from]; i++) cnt[t->y[t->split[from][i]]]++;
    size_t best = 0;
    for (size_t k = 1; k < K; k++)
        if (cnt[k] > cnt[best]) best = k;
    for (size_t i = 0; i < n; i++) {
        truth[i] = t->y[t->split[split][i]];
        pred[i] = (int32_t)best;
    }
    s_metrics(truth, pred, n, K, out);
    free(cnt); free(truth); free(pred);
    return 0;
}

/* ------------------------------------------------------------------ checkpoints */

int trainer_save(trainer_t *t, const char *path, bool with_optimizer)
{
    const model_config_t *mc = model_config(t->m);
    size_t nt = model_trainable_count(t->m);
    adapter_t a;
    memset(&a, 0, sizeof a);
    a.r = mc->lora_r;
    a.alpha = mc->lora_alpha;
    snprintf(a.pooling, sizeof a.pooling, "%s", mc->pooling == POOL_CLS ? "cls" : "mean");
    snprintf(a.base_hash, sizeof a.base_hash, "%s", t->base_hash);
    /* PEFT's base_model_name_or_path: the Hugging Face id import-model recorded, else (a
     * base imported before it did) the local path. */
    snprintf(a.base_model_name, sizeof a.base_model_name, "%s",
             t->base_name[0] ? t->base_name : t->cfg.base);
    const char *targets[FAMILY_MAX_TARGETS];
    a.n_targets = family_targets_names(family_bert(), mc->lora_targets, targets);
    a.targets = (char **)targets;
    a.labels = t->labels;
    a.n_labels = t->n_labels;
    float *p = malloc(t->P * sizeof(float) * 3);
    named_tensor_t *ts = calloc(nt * 3, sizeof *ts);
    if (!p || !ts) {
        free(p); free(ts);
        return medfl_error_set(MEDFL_ENOMEM, "save: out of memory");
    }
    int rc = trainer_get_params(t, p, t->P);
    if (rc == 0 && with_optimizer) rc = model_adamw_state_get(t->m, p + t->P, p + 2 * t->P, t->P);
    for (size_t i = 0; i < nt && rc == 0; i++) {
        const model_tensor_t *mt = model_trainable_tensor(t->m, i);
        for (int s = 0; s < 3; s++) {
            named_tensor_t *x = &ts[s * nt + i];
            x->name = (char *)mt->name;
            x->ndim = mt->ndim;
            for (int d = 0; d < mt->ndim; d++) x->shape[d] = mt->shape[d];
            x->data = p + (size_t)s * t->P + mt->offset;
        }
    }
    a.tensors = ts;
    a.n_tensors = nt;
    if (with_optimizer) {
        a.has_optimizer = true;
        a.step = t->step;
        a.m = ts + nt;
        a.v = ts + 2 * nt;
    }
    if (rc == 0) rc = adapter_write(path, &a);
    free(p); free(ts);
    return rc;
}

int trainer_load(trainer_t *t, const char *path)
{
    adapter_t a;
    if (adapter_read(path, &a) != 0) return -1;
    const model_config_t *mc = model_config(t->m);
    int rc = 0;
    unsigned targets = 0;
    for (size_t i = 0; i < a.n_targets; i++) {
        int k = family_target_find(family_bert(), a.targets[i]);
        if (k >= 0) targets |= 1u << k; /* an unknown name then mismatches model.lora below */
    }
    if (a.base_hash[0] && strcmp(a.base_hash, t->base_hash) != 0)
        rc = medfl_error_set(MEDFL_ECONFIG, "%s: adapter belongs to base model %.16s…, "
                             "model.base is %.16s…", path, a.base_hash, t->base_hash);
    else if (a.r != mc->lora_r || fabs(a.alpha - mc->lora_alpha) > 1e-6 ||
             targets != mc->lora_targets)
        rc = medfl_error_set(MEDFL_ECONFIG, "%s: adapter has r = %lld, alpha = %g and other "
                             "targets than model.lora (r = %d, alpha = %g)", path,
                             (long long)a.r, a.alpha, mc->lora_r, mc->lora_alpha);
    else if (strcmp(a.pooling, mc->pooling == POOL_CLS ? "cls" : "mean") != 0)
        rc = medfl_error_set(MEDFL_ECONFIG, "%s: adapter pooling '%s' differs from model.pooling",
                             path, a.pooling);
    else if (a.n_labels != t->n_labels)
        rc = medfl_error_set(MEDFL_ECONFIG, "%s: adapter has %zu labels, the config %zu", path,
                             a.n_labels, t->n_labels);
    for (size_t k = 0; rc == 0 && k < a.n_labels; k++)
        if (strcmp(a.labels[k], t->labels[k]) != 0)
            rc = medfl_error_set(MEDFL_ECONFIG, "%s: adapter label %zu is '%s', the config's '%s'",
                                 path, k, a.labels[k], t->labels[k]);
    float *p = rc == 0 ? malloc(t->P * sizeof(float) * 3) : NULL;
    if (rc == 0 && !p) rc = medfl_error_set(MEDFL_ENOMEM, "load: out of memory");
    size_t nt = model_trainable_count(t->m);
    for (size_t i = 0; rc == 0 && i < nt; i++) {
        const model_tensor_t *mt = model_trainable_tensor(t->m, i);
        const named_tensor_t *x = adapter_find(&a, mt->name);
        if (!x || named_tensor_numel(x) != mt->numel) {
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' missing or of the wrong size",
                                 path, mt->name);
            break;
        }
        size_t ix = (size_t)(x - a.tensors);
        memcpy(p + mt->offset, x->data, mt->numel * sizeof(float));
        if (a.has_optimizer) {
            memcpy(p + t->P + mt->offset, a.m[ix].data, mt->numel * sizeof(float));
            memcpy(p + 2 * t->P + mt->offset, a.v[ix].data, mt->numel * sizeof(float));
        }
    }
    if (rc == 0 && a.n_tensors != nt)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: %zu tensors, the model has %zu", path,
                             a.n_tensors, nt);
    if (rc == 0) rc = trainer_set_params(t, p, t->P);
    if (rc == 0) {
        if (a.has_optimizer) {
            rc = model_adamw_state_set(t->m, p + t->P, p + 2 * t->P, t->P);
            t->step = (long)a.step;
            t->data_step = (long)a.step;
        } else {
            model_adamw_reset(t->m);
            t->step = 0;
        }
    }
    free(p);
    adapter_free(&a);
    return rc;
}
