/* BERT-family encoder with LoRA and a classification head: parameter layout, forward,
 * backward (batch and per-example), AdamW. See model.h for the API and docs/model.md for
 * the architecture, layout and numerics.
 *
 * WHY it is written this way:
 * - llm.c style: one buffer per parameter set cut by a sizes table; activations in one arena
 *   allocated once per (batch, seq) shape; layer_forward and layer_backward side by side with
 *   shapes in comments, so the two can be checked against each other by eye.
 * - Query, key and value weights are stored next to each other ([3C, C]) and so are their
 *   biases, which turns the three projections into one sgemm over [N, 3C]; attention then
 *   reads head h of example b in place (row stride 3C) instead of permuting copies.
 * - Only activations the backward cannot cheaply rebuild are kept: LayerNorm outputs are
 *   recomputed from the saved normalised input (xhat * w + b) when a LoRA needs them.
 * - Base weights are frozen: no weight gradients for them, and the lowest layer does not
 *   propagate a gradient into the embeddings.
 * Notation: B batch, T sequence, N = B*T rows, C hidden, NH heads, D = C/NH, F ffn, r rank,
 * K labels, s = alpha/r the LoRA scaling. */
#include "node/engine/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/family.h"

enum { T_Q = 0, T_K, T_V, T_AO, T_FI, T_FO }; /* target order of family_bert() */

typedef struct {
    float *wqkv, *bqkv; /* [3C, C] (query, key, value rows), [3C] */
    float *wao, *bao;   /* [C, C], [C] attention.output.dense */
    float *ln1w, *ln1b; /* [C] attention.output.LayerNorm */
    float *wfi, *bfi;   /* [F, C], [F] intermediate.dense */
    float *wfo, *bfo;   /* [C, F], [C] output.dense */
    float *ln2w, *ln2b; /* [C] output.LayerNorm */
} s_layer_w;

typedef struct {
    bool on;
    int in, out;          /* Linear in/out features */
    size_t off_a, off_b;  /* offsets in the trainable buffer: A [r, in], B [out, r] */
} s_lora;

typedef struct {
    float *qkv;     /* [N, 3C] projections (bias and LoRA included) */
    float *u[MODEL_N_TARGETS]; /* [N, r] x @ A^T of each LoRA target */
    float *probs;   /* [B, NH, T, T] attention probabilities */
    float *ctx;     /* [N, C] heads concatenated, input of attention.output.dense */
    float *xhat1;   /* [N, C] normalised input of attention.output.LayerNorm */
    float *rstd1;   /* [N] */
    float *dgelu;   /* [N, F] gelu'(intermediate.dense output), saved by the forward */
    float *g;       /* [N, F] gelu output, kept only when output.dense has an adapter */
    float *xhat2;   /* [N, C] normalised input of output.LayerNorm */
    float *rstd2;   /* [N] */
} s_layer_act;

struct model {
    model_config_t cfg;
    backend_t *be;
    float scaling; /* alpha / r */

    /* base weights */
    model_tensor_t *base_t;
    size_t n_base_t, base_numel;
    float *base;
    float *wte, *wpe, *wtt, *lnew, *lneb;
    s_layer_w *lw;

    /* trainable: per layer per target LoRA, then the head */
    model_tensor_t *tr_t;
    size_t n_tr_t, tr_numel;
    s_lora *lora; /* [L * MODEL_N_TARGETS] */
    size_t off_head_w, off_head_b;
    float *params, *grads, *adam_m, *adam_v;

    /* activation arena for the current (B, T) */
    float *arena;
    size_t arena_cap; /* floats */
    int B, T;
    s_layer_act *act;
    float *emb_xhat, *emb_rstd; /* [N, C], [N] */
    float *pooled, *logits, *dlogits, *dpooled, *loss; /* [B,C] [B,K] [B,K] [B,C] [1] */
    float *ones;                                       /* [max(B,1)] of 1.0 */
    int32_t *ids, *types, *mask, *labels;
    /* scratch */
    float *xa, *xb, *h1, *xin, *dctx; /* [N, C] */
    float *g;                        /* [N, F] */
    float *dqkv;                     /* [N, 3C] */
    float *dS;                       /* [B, NH, T, T] */
    float *dU;                       /* [MODEL_N_TARGETS, N, r] */
    bool have_forward, have_labels;

    float *pe_buf;
    int pe_cap;
};

/* ------------------------------------------------------------------ config */

void model_config_default(model_config_t *cfg)
{
    *cfg = (model_config_t){
        .vocab_size = 30522, .hidden = 768, .layers = 12, .heads = 12, .ffn = 3072,
        .max_position = 512, .type_vocab = 2, .layer_norm_eps = 1e-12f, .num_labels = 2,
        .pooling = POOL_MEAN, .lora_r = 8, .lora_alpha = 16.0f,
        .lora_targets = LORA_QUERY | LORA_VALUE,
    };
}

int model_config_check(const model_config_t *c)
{
#define S_POS(f)                                                                             \
    if (c->f < 1)                                                                            \
        return medfl_error_set(MEDFL_EINVAL, "model config: field '" #f "' must be >= 1 (got %d)", \
                               (int)c->f);
    S_POS(vocab_size) S_POS(hidden) S_POS(layers) S_POS(heads) S_POS(ffn) S_POS(max_position)
    S_POS(type_vocab) S_POS(num_labels) S_POS(lora_r)
#undef S_POS
    if (c->hidden % c->heads != 0)
        return medfl_error_set(MEDFL_EINVAL,
                               "model config: hidden %d is not a multiple of heads %d",
                               c->hidden, c->heads);
    if (!(c->layer_norm_eps > 0.0f) || !isfinite(c->layer_norm_eps))
        return medfl_error_set(MEDFL_EINVAL, "model config: field 'layer_norm_eps' must be > 0");
    if (!(c->lora_alpha > 0.0f) || !isfinite(c->lora_alpha))
        return medfl_error_set(MEDFL_EINVAL, "model config: field 'lora_alpha' must be > 0");
    if (c->lora_targets & ~(unsigned)LORA_ALL)
        return medfl_error_set(MEDFL_EINVAL, "model config: field 'lora_targets' 0x%x invalid",
                               c->lora_targets);
    if (c->pooling != POOL_MEAN && c->pooling != POOL_CLS)
        return medfl_error_set(MEDFL_EINVAL, "model config: field 'pooling' invalid");
    return 0;
}

int model_lora_targets_parse(const char *list, unsigned *out)
{
    return family_targets_parse(family_bert(), list, out);
}

/* ------------------------------------------------------------------ adamw schedule */

void adamw_config_default(adamw_config_t *cfg)
{
    *cfg = (adamw_config_t){.lr = 2e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                            .weight_decay = 0.01f, .warmup_steps = 0, .total_steps = 0};
}

float adamw_lr_at(const adamw_config_t *c, long step)
{
    if (step < 1)
        step = 1;
    if (c->warmup_steps > 0 && step <= c->warmup_steps)
        return c->lr * (float)step / (float)c->warmup_steps;
    if (c->total_steps > c->warmup_steps) {
        double f = (double)(c->total_steps - step) / (double)(c->total_steps - c->warmup_steps);
        return (float)(c->lr * (f > 0.0 ? f : 0.0));
    }
    return c->lr;
}

/* ------------------------------------------------------------------ sizes tables */

static int s_add_tensor(model_tensor_t **tab, size_t *n, size_t *cap, size_t *numel,
                        const char *name, int d0, int d1)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        model_tensor_t *t = realloc(*tab, nc * sizeof *t);
        if (t == NULL)
            return medfl_error_set(MEDFL_ENOMEM, "model: out of memory for tensor table");
        *tab = t;
        *cap = nc;
    }
    char *nm = strdup(name);
    if (nm == NULL)
        return medfl_error_set(MEDFL_ENOMEM, "model: out of memory for tensor names");
    model_tensor_t *t = &(*tab)[(*n)++];
    t->name = nm;
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1 > 0 ? d1 : 0;
    t->numel = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    t->offset = *numel;
    /* packed without padding: the flat trainable vector is exactly the parameters (what is
     * clipped, noised and summed), and q/k/v stay contiguous for any hidden size */
    *numel += t->numel;
    return 0;
}

static int s_build_base_table(model_t *m)
{
    const model_config_t *c = &m->cfg;
    size_t cap = 0;
    char nm[160];
    int C = c->hidden, F = c->ffn;
#define ADD(name, d0, d1)                                                                    \
    if (s_add_tensor(&m->base_t, &m->n_base_t, &cap, &m->base_numel, name, d0, d1) != 0)     \
        return -1;
    ADD("embeddings.word_embeddings.weight", c->vocab_size, C);
    ADD("embeddings.position_embeddings.weight", c->max_position, C);
    ADD("embeddings.token_type_embeddings.weight", c->type_vocab, C);
    ADD("embeddings.LayerNorm.weight", C, 0);
    ADD("embeddings.LayerNorm.bias", C, 0);
    static const char *qkv[3] = {"query", "key", "value"};
    for (int l = 0; l < c->layers; l++) {
        /* order matters: q, k, v weights contiguous, then q, k, v biases contiguous */
        for (int i = 0; i < 3; i++) {
            snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.%s.weight", l, qkv[i]);
            ADD(nm, C, C);
        }
        for (int i = 0; i < 3; i++) {
            snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.%s.bias", l, qkv[i]);
            ADD(nm, C, 0);
        }
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.dense.weight", l);
        ADD(nm, C, C);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.dense.bias", l);
        ADD(nm, C, 0);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.LayerNorm.weight", l);
        ADD(nm, C, 0);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.LayerNorm.bias", l);
        ADD(nm, C, 0);
        snprintf(nm, sizeof nm, "encoder.layer.%d.intermediate.dense.weight", l);
        ADD(nm, F, C);
        snprintf(nm, sizeof nm, "encoder.layer.%d.intermediate.dense.bias", l);
        ADD(nm, F, 0);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.dense.weight", l);
        ADD(nm, C, F);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.dense.bias", l);
        ADD(nm, C, 0);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.LayerNorm.weight", l);
        ADD(nm, C, 0);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.LayerNorm.bias", l);
        ADD(nm, C, 0);
    }
#undef ADD
    return 0;
}

static int s_build_trainable_table(model_t *m)
{
    const model_config_t *c = &m->cfg;
    size_t cap = 0;
    char nm[200];
    int C = c->hidden, F = c->ffn, r = c->lora_r;
    m->lora = calloc((size_t)c->layers * MODEL_N_TARGETS, sizeof *m->lora);
    if (m->lora == NULL)
        return medfl_error_set(MEDFL_ENOMEM, "model: out of memory");
    for (int l = 0; l < c->layers; l++) {
        for (int t = 0; t < MODEL_N_TARGETS; t++) {
            s_lora *lo = &m->lora[l * MODEL_N_TARGETS + t];
            if (!(c->lora_targets & (1u << t)))
                continue;
            lo->on = true;
            lo->in = t == T_FO ? F : C;
            lo->out = t == T_FI ? F : C;
            if (family_lora_name(family_bert(), l, t, 'A', nm, sizeof nm) != 0 ||
                s_add_tensor(&m->tr_t, &m->n_tr_t, &cap, &m->tr_numel, nm, r, lo->in) != 0)
                return -1;
            lo->off_a = m->tr_t[m->n_tr_t - 1].offset;
            if (family_lora_name(family_bert(), l, t, 'B', nm, sizeof nm) != 0 ||
                s_add_tensor(&m->tr_t, &m->n_tr_t, &cap, &m->tr_numel, nm, lo->out, r) != 0)
                return -1;
            lo->off_b = m->tr_t[m->n_tr_t - 1].offset;
        }
    }
    if (s_add_tensor(&m->tr_t, &m->n_tr_t, &cap, &m->tr_numel, "classifier.weight",
                     c->num_labels, C) != 0)
        return -1;
    m->off_head_w = m->tr_t[m->n_tr_t - 1].offset;
    if (s_add_tensor(&m->tr_t, &m->n_tr_t, &cap, &m->tr_numel, "classifier.bias",
                     c->num_labels, 0) != 0)
        return -1;
    m->off_head_b = m->tr_t[m->n_tr_t - 1].offset;
    return 0;
}

static float *s_base_ptr(model_t *m, size_t idx)
{
    return m->base + m->base_t[idx].offset;
}

/* Points the per-layer weight views into the base buffer (order of s_build_base_table). */
static void s_cut_base(model_t *m)
{
    m->wte = s_base_ptr(m, 0);
    m->wpe = s_base_ptr(m, 1);
    m->wtt = s_base_ptr(m, 2);
    m->lnew = s_base_ptr(m, 3);
    m->lneb = s_base_ptr(m, 4);
    for (int l = 0; l < m->cfg.layers; l++) {
        size_t i = 5 + (size_t)l * 16;
        s_layer_w *w = &m->lw[l];
        w->wqkv = s_base_ptr(m, i + 0);
        w->bqkv = s_base_ptr(m, i + 3);
        w->wao = s_base_ptr(m, i + 6);
        w->bao = s_base_ptr(m, i + 7);
        w->ln1w = s_base_ptr(m, i + 8);
        w->ln1b = s_base_ptr(m, i + 9);
        w->wfi = s_base_ptr(m, i + 10);
        w->bfi = s_base_ptr(m, i + 11);
        w->wfo = s_base_ptr(m, i + 12);
        w->bfo = s_base_ptr(m, i + 13);
        w->ln2w = s_base_ptr(m, i + 14);
        w->ln2b = s_base_ptr(m, i + 15);
    }
}

/* The q/k/v weights (and biases) must be exactly contiguous for the fused [3C, C] product;
 * the tables are packed, so this holds by construction and is checked once here. */
static bool s_qkv_contiguous(const model_t *m)
{
    for (int l = 0; l < m->cfg.layers; l++) {
        size_t i = 5 + (size_t)l * 16;
        for (int k = 1; k < 3; k++) {
            if (m->base_t[i + k].offset != m->base_t[i].offset + (size_t)k * m->base_t[i].numel)
                return false;
            if (m->base_t[i + 3 + k].offset !=
                m->base_t[i + 3].offset + (size_t)k * m->base_t[i + 3].numel)
                return false;
        }
    }
    return true;
}

/* ------------------------------------------------------------------ lifecycle */

model_t *model_new(const model_config_t *cfg, backend_t *be)
{
    if (cfg == NULL || be == NULL) {
        medfl_error_set(MEDFL_EINVAL, "model_new: config and backend are required");
        return NULL;
    }
    if (model_config_check(cfg) != 0)
        return NULL;
    model_t *m = calloc(1, sizeof *m);
    if (m == NULL) {
        medfl_error_set(MEDFL_ENOMEM, "model: out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    m->be = be;
    m->scaling = cfg->lora_alpha / (float)cfg->lora_r;
    m->lw = calloc((size_t)cfg->layers, sizeof *m->lw);
    if (m->lw == NULL || s_build_base_table(m) != 0 || s_build_trainable_table(m) != 0)
        goto fail;
    if (!s_qkv_contiguous(m)) {
        medfl_error_set(MEDFL_EUNSUPPORTED, "model: query/key/value weights not contiguous");
        goto fail;
    }
    m->base = be->alloc(be, m->base_numel * sizeof(float));
    m->params = be->alloc(be, m->tr_numel * sizeof(float));
    m->grads = be->alloc(be, m->tr_numel * sizeof(float));
    m->adam_m = be->alloc(be, m->tr_numel * sizeof(float));
    m->adam_v = be->alloc(be, m->tr_numel * sizeof(float));
    if (!m->base || !m->params || !m->grads || !m->adam_m || !m->adam_v) {
        medfl_error_set(MEDFL_ENOMEM, "model: cannot allocate %zu base + 4 x %zu trainable floats",
                        m->base_numel, m->tr_numel);
        goto fail;
    }
    s_cut_base(m);
    return m;
fail:
    model_destroy(&m);
    return NULL;
}

void model_destroy(model_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    model_t *m = *self_p;
    *self_p = NULL;
    backend_t *be = m->be;
    be->free(be, m->base);
    be->free(be, m->params);
    be->free(be, m->grads);
    be->free(be, m->adam_m);
    be->free(be, m->adam_v);
    be->free(be, m->arena);
    be->free(be, m->pe_buf);
    for (size_t i = 0; i < m->n_base_t; i++)
        free((char *)m->base_t[i].name);
    for (size_t i = 0; i < m->n_tr_t; i++)
        free((char *)m->tr_t[i].name);
    free(m->base_t);
    free(m->tr_t);
    free(m->lora);
    free(m->lw);
    free(m->act);
    free(m);
}

const model_config_t *model_config(const model_t *m) { return &m->cfg; }
backend_t *model_backend(const model_t *m) { return m->be; }

/* ------------------------------------------------------------------ base access */

size_t model_base_count(const model_t *m) { return m->n_base_t; }
size_t model_base_numel(const model_t *m) { return m->base_numel; }

const model_tensor_t *model_base_tensor(const model_t *m, size_t i)
{
    return i < m->n_base_t ? &m->base_t[i] : NULL;
}

static const model_tensor_t *s_find(const model_tensor_t *tab, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(tab[i].name, name) == 0)
            return &tab[i];
    return NULL;
}

const model_tensor_t *model_base_find(const model_t *m, const char *name)
{
    return name ? s_find(m->base_t, m->n_base_t, name) : NULL;
}

float *model_base_host(model_t *m)
{
    return m->be->kind == BACKEND_CPU ? m->base : NULL;
}

int model_base_set(model_t *m, const char *name, const float *data, size_t n)
{
    const model_tensor_t *t = model_base_find(m, name);
    if (t == NULL)
        return medfl_error_set(MEDFL_ENOTFOUND, "model: no base tensor named '%s'",
                               name ? name : "(null)");
    if (n != t->numel)
        return medfl_error_set(MEDFL_EINVAL, "model: tensor '%s' has %zu elements, got %zu",
                               name, t->numel, n);
    m->be->upload(m->be, m->base + t->offset, data, n * sizeof(float));
    return 0;
}

int model_base_get(const model_t *m, const char *name, float *out, size_t n)
{
    const model_tensor_t *t = model_base_find(m, name);
    if (t == NULL)
        return medfl_error_set(MEDFL_ENOTFOUND, "model: no base tensor named '%s'",
                               name ? name : "(null)");
    if (n != t->numel)
        return medfl_error_set(MEDFL_EINVAL, "model: tensor '%s' has %zu elements, got %zu",
                               name, t->numel, n);
    m->be->download(m->be, out, m->base + t->offset, n * sizeof(float));
    return 0;
}

int model_base_foreach(model_t *m, model_tensor_fn fn, void *ctx)
{
    float *host = model_base_host(m);
    for (size_t i = 0; i < m->n_base_t; i++) {
        int rc = fn(ctx, &m->base_t[i], host ? host + m->base_t[i].offset : NULL);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* splitmix64: small, seedable, reproducible across platforms */
static uint64_t s_rand_u64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double s_rand_unit(uint64_t *s) /* (0, 1) */
{
    return ((double)(s_rand_u64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

void model_base_init_random(model_t *m, uint64_t seed, float std)
{
    float *host = malloc(m->base_numel * sizeof(float));
    if (host == NULL)
        return;
    uint64_t st = seed;
    for (size_t i = 0; i < m->n_base_t; i++) {
        const model_tensor_t *t = &m->base_t[i];
        float *p = host + t->offset;
        bool ln = strstr(t->name, "LayerNorm") != NULL;
        bool bias = strstr(t->name, ".bias") != NULL;
        for (size_t j = 0; j < t->numel; j++) {
            if (ln && !bias)
                p[j] = 1.0f;
            else if (bias)
                p[j] = 0.0f;
            else {
                double u1 = s_rand_unit(&st), u2 = s_rand_unit(&st);
                p[j] = (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
            }
        }
    }
    m->be->upload(m->be, m->base, host, m->base_numel * sizeof(float));
    free(host);
}

/* ------------------------------------------------------------------ trainable access */

size_t model_trainable_count(const model_t *m) { return m->n_tr_t; }
size_t model_trainable_numel(const model_t *m) { return m->tr_numel; }
float *model_params(model_t *m) { return m->params; }
float *model_grads(model_t *m) { return m->grads; }

const model_tensor_t *model_trainable_tensor(const model_t *m, size_t i)
{
    return i < m->n_tr_t ? &m->tr_t[i] : NULL;
}

const model_tensor_t *model_trainable_find(const model_t *m, const char *name)
{
    return name ? s_find(m->tr_t, m->n_tr_t, name) : NULL;
}

void model_init_trainable(model_t *m, uint64_t seed)
{
    float *host = calloc(m->tr_numel, sizeof(float));
    if (host == NULL)
        return;
    uint64_t st = seed ^ 0x5DEECE66Dull;
    for (size_t i = 0; i < m->n_tr_t; i++) {
        const model_tensor_t *t = &m->tr_t[i];
        float *p = host + t->offset;
        double bound;
        if (strstr(t->name, "lora_B"))
            continue; /* B = 0: the adapted model starts equal to the base */
        if (strstr(t->name, "lora_A"))
            bound = 1.0 / sqrt((double)t->shape[1]); /* kaiming_uniform_(a=sqrt(5)) */
        else
            bound = 1.0 / sqrt((double)m->cfg.hidden); /* nn.Linear default */
        for (size_t j = 0; j < t->numel; j++)
            p[j] = (float)((2.0 * s_rand_unit(&st) - 1.0) * bound);
    }
    m->be->upload(m->be, m->params, host, m->tr_numel * sizeof(float));
    free(host);
    model_adamw_reset(m);
}

int model_trainable_set(model_t *m, const float *src, size_t n)
{
    if (n != m->tr_numel)
        return medfl_error_set(MEDFL_EINVAL, "model: trainable vector has %zu floats, got %zu",
                               m->tr_numel, n);
    m->be->upload(m->be, m->params, src, n * sizeof(float));
    return 0;
}

int model_trainable_get(const model_t *m, float *dst, size_t n)
{
    if (n != m->tr_numel)
        return medfl_error_set(MEDFL_EINVAL, "model: trainable vector has %zu floats, got %zu",
                               m->tr_numel, n);
    m->be->download(m->be, dst, m->params, n * sizeof(float));
    return 0;
}

int model_grad_get(const model_t *m, float *dst, size_t n)
{
    if (n != m->tr_numel)
        return medfl_error_set(MEDFL_EINVAL, "model: gradient vector has %zu floats, got %zu",
                               m->tr_numel, n);
    m->be->download(m->be, dst, m->grads, n * sizeof(float));
    return 0;
}

/* ------------------------------------------------------------------ arena */

static size_t s_r16(size_t n) { return (n + 15) / 16 * 16; }

/* Cuts (or, with base == NULL, measures) the arena for batch B, sequence T. */
static size_t s_cut_arena(model_t *m, float *base, int B, int T)
{
    const model_config_t *c = &m->cfg;
    size_t N = (size_t)B * T, C = c->hidden, F = c->ffn, r = c->lora_r, NH = c->heads;
    size_t att = (size_t)B * NH * T * T, off = 0;
#define TAKE(ptr, n)                                                                         \
    do {                                                                                     \
        if (base)                                                                            \
            ptr = base + off;                                                                \
        off += s_r16(n);                                                                     \
    } while (0)
    for (int l = 0; l < c->layers; l++) {
        s_layer_act *a = &m->act[l];
        TAKE(a->qkv, N * 3 * C);
        for (int t = 0; t < MODEL_N_TARGETS; t++) {
            a->u[t] = NULL;
            if (m->lora[l * MODEL_N_TARGETS + t].on)
                TAKE(a->u[t], N * r);
        }
        TAKE(a->probs, att);
        TAKE(a->ctx, N * C);
        TAKE(a->xhat1, N * C);
        TAKE(a->rstd1, N);
        TAKE(a->dgelu, N * F);
        a->g = NULL;
        if (m->lora[l * MODEL_N_TARGETS + T_FO].on)
            TAKE(a->g, N * F);
        TAKE(a->xhat2, N * C);
        TAKE(a->rstd2, N);
    }
    TAKE(m->emb_xhat, N * C);
    TAKE(m->emb_rstd, N);
    TAKE(m->pooled, (size_t)B * C);
    TAKE(m->dpooled, (size_t)B * C);
    TAKE(m->logits, (size_t)B * c->num_labels);
    TAKE(m->dlogits, (size_t)B * c->num_labels);
    TAKE(m->loss, 1);
    TAKE(m->ones, (size_t)B);
    float *ip = NULL;
    TAKE(ip, N);
    m->ids = (int32_t *)ip;
    TAKE(ip, N);
    m->types = (int32_t *)ip;
    TAKE(ip, N);
    m->mask = (int32_t *)ip;
    TAKE(ip, (size_t)B);
    m->labels = (int32_t *)ip;
    TAKE(m->xa, N * C);
    TAKE(m->xb, N * C);
    TAKE(m->h1, N * C);
    TAKE(m->xin, N * C);
    TAKE(m->dctx, N * C);
    TAKE(m->g, N * F);
    TAKE(m->dqkv, N * 3 * C);
    TAKE(m->dS, att);
    TAKE(m->dU, (size_t)MODEL_N_TARGETS * N * r);
#undef TAKE
    return off;
}

static int s_arena_for(model_t *m, int B, int T)
{
    if (m->act == NULL) {
        m->act = calloc((size_t)m->cfg.layers, sizeof *m->act);
        if (m->act == NULL)
            return medfl_error_set(MEDFL_ENOMEM, "model: out of memory");
    }
    if (m->arena && m->B == B && m->T == T)
        return 0;
    size_t need = s_cut_arena(m, NULL, B, T);
    if (need > m->arena_cap) {
        m->be->free(m->be, m->arena);
        m->arena = m->be->alloc(m->be, need * sizeof(float));
        m->arena_cap = m->arena ? need : 0;
        if (m->arena == NULL)
            return medfl_error_set(MEDFL_ENOMEM,
                                   "model: cannot allocate %.1f MB of activations (B=%d, T=%d)",
                                   need * 4.0 / 1e6, B, T);
    }
    s_cut_arena(m, m->arena, B, T);
    m->B = B;
    m->T = T;
    /* ones[] feeds bias gradients as sgemm products; the value survives reshaping because
     * it is rewritten here */
    float *h = malloc((size_t)B * sizeof(float));
    if (h == NULL)
        return medfl_error_set(MEDFL_ENOMEM, "model: out of memory");
    for (int i = 0; i < B; i++)
        h[i] = 1.0f;
    m->be->upload(m->be, m->ones, h, (size_t)B * sizeof(float));
    free(h);
    return 0;
}

size_t model_arena_bytes(const model_t *m) { return m->arena_cap * sizeof(float); }

/* ------------------------------------------------------------------ LoRA linear */

/* forward of the adapter on one Linear: y[N, out] (row stride ldy) += s * (x @ A^T) @ B^T,
 * x [N, in] (row stride ldx), A [r, in], B [out, r]; keeps u = x @ A^T [N, r] for backward. */
static void s_lora_fwd(model_t *m, const s_lora *lo, const float *x, int ldx, float *u, float *y,
                       int ldy, int N)
{
    backend_t *be = m->be;
    int r = m->cfg.lora_r;
    const float *A = m->params + lo->off_a, *Bm = m->params + lo->off_b;
    be->sgemm(be, false, true, N, r, lo->in, 1.0f, x, ldx, A, lo->in, 0.0f, u, r);
    be->sgemm(be, false, true, N, lo->out, r, m->scaling, u, r, Bm, r, 1.0f, y, ldy);
}

/* backward of the adapter, weight part: given dy [N, out] (stride ldy), the saved u [N, r]
 * and the input x [N, in] (stride ldx):
 *   dU = s * dy @ B                      [N, r]  (kept for s_lora_bwd_input)
 *   batch:        dB += s * dy^T @ u     [out, r]
 *                 dA += dU^T @ x         [r, in]
 *   per example:  the same products restricted to the T rows of each example, written to
 *                 pe[e * n_trainable + offset] scaled by pe_scale (= B, see backward). */
static void s_lora_bwd_weights(model_t *m, const s_lora *lo, const float *x, int ldx,
                               const float *u, const float *dy, int ldy, float *dU, int N,
                               float *pe, float pe_scale)
{
    backend_t *be = m->be;
    int r = m->cfg.lora_r;
    const float *Bm = m->params + lo->off_b;
    be->sgemm(be, false, false, N, r, lo->out, m->scaling, dy, ldy, Bm, r, 0.0f, dU, r);
    if (pe == NULL) {
        be->sgemm(be, true, false, lo->out, r, N, m->scaling, dy, ldy, u, r, 1.0f,
                  m->grads + lo->off_b, r);
        be->sgemm(be, true, false, r, lo->in, N, 1.0f, dU, r, x, ldx, 1.0f,
                  m->grads + lo->off_a, lo->in);
    } else {
        int T = m->T, B = m->B;
        long ntr = (long)m->tr_numel;
        be->sgemm_batched(be, true, false, lo->out, r, T, m->scaling * pe_scale, dy, ldy,
                          (long)T * ldy, 0, u, r, (long)T * r, 0, 0.0f, pe + lo->off_b, r, ntr,
                          0, B, 1);
        be->sgemm_batched(be, true, false, r, lo->in, T, pe_scale, dU, r, (long)T * r, 0, x,
                          ldx, (long)T * ldx, 0, 0.0f, pe + lo->off_a, lo->in, ntr, 0, B, 1);
    }
}

/* backward of the adapter, input part: dx[N, in] (stride ldx) += dU @ A. */
static void s_lora_bwd_input(model_t *m, const s_lora *lo, const float *dU, float *dx, int ldx,
                             int N)
{
    backend_t *be = m->be;
    int r = m->cfg.lora_r;
    be->sgemm(be, false, false, N, lo->in, r, 1.0f, dU, r, m->params + lo->off_a, lo->in, 1.0f,
              dx, ldx);
}

/* ------------------------------------------------------------------ layer forward/backward */

/* One encoder layer, post-LN:
 *   h1  = LN1(x + AO(attention(Q(x), K(x), V(x))))
 *   out = LN2(h1 + FO(gelu(FI(h1))))
 * x [N, C] -> out [N, C]; each of Q K V AO FI FO is Linear + optional LoRA. */
static void s_layer_forward(model_t *m, int l, const float *x, float *out)
{
    backend_t *be = m->be;
    const model_config_t *c = &m->cfg;
    const s_layer_w *w = &m->lw[l];
    s_layer_act *a = &m->act[l];
    const s_lora *lo = &m->lora[l * MODEL_N_TARGETS];
    int B = m->B, T = m->T, N = B * T, C = c->hidden, F = c->ffn, NH = c->heads, D = C / NH;
    long TT = (long)T * T;

    /* qkv[N, 3C] = x[N, C] @ Wqkv[3C, C]^T + bqkv, + LoRA on each targeted third */
    be->sgemm(be, false, true, N, 3 * C, C, 1.0f, x, C, w->wqkv, C, 0.0f, a->qkv, 3 * C);
    be->add_bias(be, a->qkv, 3 * C, w->bqkv, N, 3 * C);
    for (int t = T_Q; t <= T_V; t++)
        if (lo[t].on)
            s_lora_fwd(m, &lo[t], x, C, a->u[t], a->qkv + t * C, 3 * C, N);

    /* scores[b, h] [T, T] = Q_bh [T, D] @ K_bh^T, read in place from qkv rows */
    be->sgemm_batched(be, false, true, T, T, D, 1.0f, a->qkv, 3 * C, (long)T * 3 * C, D,
                      a->qkv + C, 3 * C, (long)T * 3 * C, D, 0.0f, a->probs, T, NH * TT, TT, B,
                      NH);
    /* probs = softmax(scores / sqrt(D)) over unpadded keys */
    be->softmax_masked_fwd(be, a->probs, m->mask, B, NH, T, 1.0f / sqrtf((float)D));
    /* ctx[b, :, h*D:(h+1)*D] [T, D] = probs[b, h] [T, T] @ V_bh [T, D] */
    be->sgemm_batched(be, false, false, T, D, T, 1.0f, a->probs, T, NH * TT, TT,
                      a->qkv + 2 * C, 3 * C, (long)T * 3 * C, D, 0.0f, a->ctx, C, (long)T * C,
                      D, B, NH);

    /* xhat1 <- ctx @ Wao^T + bao (+ LoRA) + x, then LayerNorm: xhat1, rstd1, h1 [N, C] */
    be->sgemm(be, false, true, N, C, C, 1.0f, a->ctx, C, w->wao, C, 0.0f, a->xhat1, C);
    be->add_bias(be, a->xhat1, C, w->bao, N, C);
    if (lo[T_AO].on)
        s_lora_fwd(m, &lo[T_AO], a->ctx, C, a->u[T_AO], a->xhat1, C, N);
    be->add(be, a->xhat1, x, (size_t)N * C);
    be->layernorm_fwd(be, a->xhat1, a->rstd1, m->h1, w->ln1w, w->ln1b, N, C,
                      c->layer_norm_eps);

    /* g[N, F] = gelu(h1 @ Wfi^T + bfi (+ LoRA)), in place; dgelu = gelu' for backward.
     * g itself is kept only when output.dense's adapter needs it as input. */
    float *g = lo[T_FO].on ? a->g : m->g;
    be->sgemm(be, false, true, N, F, C, 1.0f, m->h1, C, w->wfi, C, 0.0f, g, F);
    be->add_bias(be, g, F, w->bfi, N, F);
    if (lo[T_FI].on)
        s_lora_fwd(m, &lo[T_FI], m->h1, C, a->u[T_FI], g, F, N);
    be->gelu_fwd(be, g, a->dgelu, g, (size_t)N * F);

    /* xhat2 <- g @ Wfo^T + bfo (+ LoRA) + h1, then LayerNorm: xhat2, rstd2, out [N, C] */
    be->sgemm(be, false, true, N, C, F, 1.0f, g, F, w->wfo, F, 0.0f, a->xhat2, C);
    be->add_bias(be, a->xhat2, C, w->bfo, N, C);
    if (lo[T_FO].on)
        s_lora_fwd(m, &lo[T_FO], g, F, a->u[T_FO], a->xhat2, C, N);
    be->add(be, a->xhat2, m->h1, (size_t)N * C);
    be->layernorm_fwd(be, a->xhat2, a->rstd2, out, w->ln2w, w->ln2b, N, C, c->layer_norm_eps);
}

/* Backward of s_layer_forward. d [N, C] holds d(out) on entry and d(x) on return (when
 * need_dx; the lowest layer has nothing trainable below it and skips that part). LoRA
 * weight gradients go to the gradient buffer, or per example to pe. */
static void s_layer_backward(model_t *m, int l, float *d, bool need_dx, float *pe,
                             float pe_scale)
{
    backend_t *be = m->be;
    const model_config_t *c = &m->cfg;
    const s_layer_w *w = &m->lw[l];
    s_layer_act *a = &m->act[l];
    const s_lora *lo = &m->lora[l * MODEL_N_TARGETS];
    int B = m->B, T = m->T, N = B * T, C = c->hidden, F = c->ffn, NH = c->heads, D = C / NH;
    long TT = (long)T * T;
    size_t NR = (size_t)N * c->lora_r;

    /* d <- d(xhat2 input) = LN2 backward of d(out)   [N, C]; it is d(h1) (residual) and
     * d(ffn out) at once */
    be->layernorm_bwd(be, d, d, a->xhat2, a->rstd2, w->ln2w, N, C);

    /* LoRA on output.dense: its input g was kept by the forward */
    if (lo[T_FO].on)
        s_lora_bwd_weights(m, &lo[T_FO], a->g, F, a->u[T_FO], d, C, m->dU + T_FO * NR, N, pe,
                           pe_scale);
    /* dg [N, F] = d [N, C] @ Wfo [C, F] (+ LoRA input part); then d(pre-GELU) = dg * gelu' */
    be->sgemm(be, false, false, N, F, C, 1.0f, d, C, w->wfo, F, 0.0f, m->g, F);
    if (lo[T_FO].on)
        s_lora_bwd_input(m, &lo[T_FO], m->dU + T_FO * NR, m->g, F, N);
    be->mul(be, m->g, a->dgelu, (size_t)N * F);

    /* LoRA on intermediate.dense: input h1 rebuilt from xhat1 */
    if (lo[T_FI].on) {
        be->layernorm_affine(be, m->h1, a->xhat1, w->ln1w, w->ln1b, N, C);
        s_lora_bwd_weights(m, &lo[T_FI], m->h1, C, a->u[T_FI], m->g, F, m->dU + T_FI * NR, N,
                           pe, pe_scale);
    }
    /* d(h1) [N, C] = d (residual) + d(pre-GELU) [N, F] @ Wfi [F, C] (+ LoRA input part) */
    be->sgemm(be, false, false, N, C, F, 1.0f, m->g, F, w->wfi, C, 1.0f, d, C);
    if (lo[T_FI].on)
        s_lora_bwd_input(m, &lo[T_FI], m->dU + T_FI * NR, d, C, N);

    /* d <- d(xhat1 input) = LN1 backward: d(x) residual part and d(attention out) */
    be->layernorm_bwd(be, d, d, a->xhat1, a->rstd1, w->ln1w, N, C);

    /* LoRA on attention.output.dense (input ctx); dctx [N, C] = d @ Wao [C, C] */
    if (lo[T_AO].on)
        s_lora_bwd_weights(m, &lo[T_AO], a->ctx, C, a->u[T_AO], d, C, m->dU + T_AO * NR, N, pe,
                           pe_scale);
    be->sgemm(be, false, false, N, C, C, 1.0f, d, C, w->wao, C, 0.0f, m->dctx, C);
    if (lo[T_AO].on)
        s_lora_bwd_input(m, &lo[T_AO], m->dU + T_AO * NR, m->dctx, C, N);

    /* attention backward, per (b, h), in place in dqkv [N, 3C]:
     *   dP [T, T] = dctx_bh [T, D] @ V_bh^T      dV_bh [T, D] = P^T @ dctx_bh
     *   dS = softmax backward (scale folded)      dQ_bh = dS @ K_bh,  dK_bh = dS^T @ Q_bh */
    bool need_q = need_dx || lo[T_Q].on, need_k = need_dx || lo[T_K].on,
         need_v = need_dx || lo[T_V].on;
    be->sgemm_batched(be, false, true, T, T, D, 1.0f, m->dctx, C, (long)T * C, D,
                      a->qkv + 2 * C, 3 * C, (long)T * 3 * C, D, 0.0f, m->dS, T, NH * TT, TT, B,
                      NH);
    if (need_v)
        be->sgemm_batched(be, true, false, T, D, T, 1.0f, a->probs, T, NH * TT, TT, m->dctx, C,
                          (long)T * C, D, 0.0f, m->dqkv + 2 * C, 3 * C, (long)T * 3 * C, D, B,
                          NH);
    be->softmax_bwd(be, m->dS, a->probs, (size_t)B * NH * T, T, 1.0f / sqrtf((float)D));
    if (need_q)
        be->sgemm_batched(be, false, false, T, D, T, 1.0f, m->dS, T, NH * TT, TT, a->qkv + C,
                          3 * C, (long)T * 3 * C, D, 0.0f, m->dqkv, 3 * C, (long)T * 3 * C, D,
                          B, NH);
    if (need_k)
        be->sgemm_batched(be, true, false, T, D, T, 1.0f, m->dS, T, NH * TT, TT, a->qkv, 3 * C,
                          (long)T * 3 * C, D, 0.0f, m->dqkv + C, 3 * C, (long)T * 3 * C, D, B,
                          NH);

    /* LoRA on query/key/value: input x = previous layer's output (or the embeddings),
     * rebuilt from its saved xhat */
    if (lo[T_Q].on || lo[T_K].on || lo[T_V].on) {
        if (l == 0)
            be->layernorm_affine(be, m->xin, m->emb_xhat, m->lnew, m->lneb, N, C);
        else
            be->layernorm_affine(be, m->xin, m->act[l - 1].xhat2, m->lw[l - 1].ln2w,
                                 m->lw[l - 1].ln2b, N, C);
        for (int t = T_Q; t <= T_V; t++)
            if (lo[t].on)
                s_lora_bwd_weights(m, &lo[t], m->xin, C, a->u[t], m->dqkv + t * C, 3 * C,
                                   m->dU + t * NR, N, pe, pe_scale);
    }
    if (!need_dx)
        return;
    /* d(x) [N, C] = d (residual) + dqkv [N, 3C] @ Wqkv [3C, C] (+ LoRA input parts) */
    be->sgemm(be, false, false, N, C, 3 * C, 1.0f, m->dqkv, 3 * C, w->wqkv, C, 1.0f, d, C);
    for (int t = T_Q; t <= T_V; t++)
        if (lo[t].on)
            s_lora_bwd_input(m, &lo[t], m->dU + t * NR, d, C, N);
}

/* ------------------------------------------------------------------ model forward/backward */

static int s_check_batch(const model_t *m, const model_batch_t *in)
{
    const model_config_t *c = &m->cfg;
    if (in == NULL || in->ids == NULL || in->mask == NULL)
        return medfl_error_set(MEDFL_EINVAL, "model: batch needs ids and mask");
    if (in->B < 1 || in->T < 1)
        return medfl_error_set(MEDFL_EINVAL, "model: batch shape B=%d T=%d", in->B, in->T);
    if (in->T > c->max_position)
        return medfl_error_set(MEDFL_EINVAL,
                               "model: sequence length %d exceeds max_position %d", in->T,
                               c->max_position);
    size_t N = (size_t)in->B * in->T;
    for (size_t i = 0; i < N; i++) {
        if (in->ids[i] < 0 || in->ids[i] >= c->vocab_size)
            return medfl_error_set(MEDFL_EINVAL,
                                   "model: batch row %zu position %zu: token id %d outside "
                                   "vocabulary of %d",
                                   i / in->T, i % in->T, (int)in->ids[i], c->vocab_size);
        if (in->type_ids && (in->type_ids[i] < 0 || in->type_ids[i] >= c->type_vocab))
            return medfl_error_set(MEDFL_EINVAL,
                                   "model: batch row %zu position %zu: token type %d outside "
                                   "0..%d",
                                   i / in->T, i % in->T, (int)in->type_ids[i], c->type_vocab - 1);
        if (in->mask[i] != 0 && in->mask[i] != 1)
            return medfl_error_set(MEDFL_EINVAL,
                                   "model: batch row %zu position %zu: mask %d is not 0 or 1",
                                   i / in->T, i % in->T, (int)in->mask[i]);
    }
    if (in->labels)
        for (int e = 0; e < in->B; e++)
            if (in->labels[e] < 0 || in->labels[e] >= c->num_labels)
                return medfl_error_set(MEDFL_EINVAL,
                                       "model: batch row %d: label %d outside 0..%d", e,
                                       (int)in->labels[e], c->num_labels - 1);
    return 0;
}

/* Encoder + pooling; leaves pooled [B, C] in the arena. */
static int s_encode(model_t *m, const model_batch_t *in)
{
    if (s_check_batch(m, in) != 0 || s_arena_for(m, in->B, in->T) != 0)
        return -1;
    backend_t *be = m->be;
    const model_config_t *c = &m->cfg;
    int B = in->B, T = in->T, N = B * T, C = c->hidden;
    be->upload(be, m->ids, in->ids, (size_t)N * sizeof(int32_t));
    be->upload(be, m->mask, in->mask, (size_t)N * sizeof(int32_t));
    if (in->type_ids)
        be->upload(be, m->types, in->type_ids, (size_t)N * sizeof(int32_t));
    /* emb [N, C] = wte[ids] + wpe[t] + wtt[type]; LayerNorm -> xa */
    be->embed(be, m->emb_xhat, m->ids, in->type_ids ? m->types : NULL, m->wte, m->wpe, m->wtt,
              B, T, C);
    be->layernorm_fwd(be, m->emb_xhat, m->emb_rstd, m->xa, m->lnew, m->lneb, N, C,
                      c->layer_norm_eps);
    float *x = m->xa, *y = m->xb;
    for (int l = 0; l < c->layers; l++) {
        s_layer_forward(m, l, x, y);
        float *tmp = x;
        x = y;
        y = tmp;
    }
    /* pooled [B, C] = mean over unpadded tokens (or the [CLS] row) of the last layer */
    be->pool_fwd(be, m->pooled, x, m->mask, B, T, C, c->pooling == POOL_CLS);
    return 0;
}

int model_forward(model_t *m, const model_batch_t *in, float *loss, float *logits_out)
{
    m->have_forward = false;
    if (s_encode(m, in) != 0)
        return -1;
    backend_t *be = m->be;
    const model_config_t *c = &m->cfg;
    int B = in->B, K = c->num_labels, C = c->hidden;
    /* logits [B, K] = pooled [B, C] @ W [K, C]^T + b */
    be->sgemm(be, false, true, B, K, C, 1.0f, m->pooled, C, m->params + m->off_head_w, C, 0.0f,
              m->logits, K);
    be->add_bias(be, m->logits, K, m->params + m->off_head_b, B, K);
    m->have_labels = in->labels != NULL;
    if (in->labels) {
        be->upload(be, m->labels, in->labels, (size_t)B * sizeof(int32_t));
        /* dlogits = (softmax - onehot) / B: gradient of the batch-mean loss */
        be->xent(be, m->loss, m->dlogits, m->logits, m->labels, B, K, 1.0f / (float)B);
        if (loss)
            be->download(be, loss, m->loss, sizeof(float));
    }
    if (logits_out)
        be->download(be, logits_out, m->logits, (size_t)B * K * sizeof(float));
    m->have_forward = true;
    return 0;
}

int model_embed(model_t *m, const model_batch_t *in, float *out)
{
    m->have_forward = false;
    if (s_encode(m, in) != 0)
        return -1;
    m->be->download(m->be, out, m->pooled, (size_t)in->B * m->cfg.hidden * sizeof(float));
    return 0;
}

void model_zero_grad(model_t *m)
{
    m->be->memset0(m->be, m->grads, m->tr_numel * sizeof(float));
}

/* Shared by both backward modes: pe == NULL accumulates the batch gradient into m->grads;
 * otherwise per-example gradients go to pe. The activation gradients are those of the batch
 * mean loss (dlogits / B); per-example products are scaled by B to give d(loss_e). */
static int s_backward(model_t *m, float *pe)
{
    if (!m->have_forward || !m->have_labels)
        return medfl_error_set(MEDFL_ESTATE, "model: backward needs a forward with labels");
    backend_t *be = m->be;
    const model_config_t *c = &m->cfg;
    int B = m->B, T = m->T, C = c->hidden, K = c->num_labels;
    float pe_scale = (float)B;
    long ntr = (long)m->tr_numel;
    float *gW = m->grads + m->off_head_w, *gb = m->grads + m->off_head_b;

    if (pe == NULL) {
        /* head: dW [K, C] += dlogits^T [K, B] @ pooled [B, C]; db [K] += dlogits^T @ ones */
        be->sgemm(be, true, false, K, C, B, 1.0f, m->dlogits, K, m->pooled, C, 1.0f, gW, C);
        be->sgemm(be, true, false, K, 1, B, 1.0f, m->dlogits, K, m->ones, 1, 1.0f, gb, 1);
    } else {
        /* per example e: dW_e = B * dlogits_e^T [K, 1] @ pooled_e [1, C]; db_e = B * dlogits_e */
        be->sgemm_batched(be, true, false, K, C, 1, pe_scale, m->dlogits, K, K, 0, m->pooled, C,
                          C, 0, 0.0f, pe + m->off_head_w, C, ntr, 0, B, 1);
        be->sgemm_batched(be, true, false, K, 1, 1, pe_scale, m->dlogits, K, K, 0, m->ones, 1,
                          0, 0, 0.0f, pe + m->off_head_b, 1, ntr, 0, B, 1);
    }
    /* dpooled [B, C] = dlogits [B, K] @ W [K, C]; spread back over tokens into xa [N, C] */
    if (c->lora_targets == 0) /* head only: nothing below the head is trainable */
        return 0;
    be->sgemm(be, false, false, B, C, K, 1.0f, m->dlogits, K, m->params + m->off_head_w, C, 0.0f,
              m->dpooled, C);
    be->pool_bwd(be, m->xa, m->dpooled, m->mask, B, T, C, c->pooling == POOL_CLS);
    for (int l = c->layers - 1; l >= 0; l--)
        s_layer_backward(m, l, m->xa, l > 0, pe, pe_scale);
    return 0;
}

int model_backward(model_t *m)
{
    return s_backward(m, NULL);
}

float *model_per_example_buffer(model_t *m, int B)
{
    if (B > m->pe_cap) {
        m->be->free(m->be, m->pe_buf);
        m->pe_buf = m->be->alloc(m->be, (size_t)B * m->tr_numel * sizeof(float));
        m->pe_cap = m->pe_buf ? B : 0;
        if (m->pe_buf == NULL)
            medfl_error_set(MEDFL_ENOMEM, "model: cannot allocate per-example gradients");
    }
    return m->pe_buf;
}

int model_backward_per_example(model_t *m, float *per_example)
{
    if (per_example == NULL)
        return medfl_error_set(MEDFL_EINVAL, "model: per-example buffer is NULL");
    return s_backward(m, per_example);
}

/* ------------------------------------------------------------------ optimizer */

/* The head's learning rate at the step whose LoRA rate is lr: head_lr follows the same
 * schedule; 0 = lr. The head (classifier.weight, classifier.bias) is the tail of the flat
 * vector, from off_head_w. */
static float s_head_lr(const adamw_config_t *cfg, float lr)
{
    if (cfg->head_lr <= 0.0f) return lr;
    return cfg->lr > 0.0f ? lr * (cfg->head_lr / cfg->lr) : cfg->head_lr;
}

void model_adamw_step(model_t *m, const adamw_config_t *cfg, long step)
{
    float lr = adamw_lr_at(cfg, step), head_lr = s_head_lr(cfg, lr);
    long s = step < 1 ? 1 : step;
    size_t lora = head_lr == lr ? m->tr_numel : m->off_head_w;
    if (lora > 0)
        m->be->adamw(m->be, m->params, m->grads, m->adam_m, m->adam_v, lora, lr, cfg->beta1,
                     cfg->beta2, cfg->eps, cfg->weight_decay, s);
    if (lora < m->tr_numel)
        m->be->adamw(m->be, m->params + lora, m->grads + lora, m->adam_m + lora,
                     m->adam_v + lora, m->tr_numel - lora, head_lr, cfg->beta1, cfg->beta2,
                     cfg->eps, cfg->weight_decay, s);
}

int model_optimizer_step(model_t *m, const adamw_config_t *cfg, long step)
{
    if (!cfg->sgd) {
        model_adamw_step(m, cfg, step);
        return 0;
    }
    size_t n = m->tr_numel;
    float lr = adamw_lr_at(cfg, step), head_lr = s_head_lr(cfg, lr);
    /* On the host: the trainable vector is small (LoRA + head) and no backend kernel is
     * needed. The CPU backend's buffers are host memory and are updated in place; other
     * backends copy there and back, noise beside a step's forward and backward. */
    bool host = m->be->kind == BACKEND_CPU;
    float *p = host ? m->params : malloc(n * sizeof(float));
    float *g = host ? m->grads : malloc(n * sizeof(float));
    if (!p || !g) {
        if (!host) { free(p); free(g); }
        return medfl_error_set(MEDFL_ENOMEM, "model: out of memory for the SGD step");
    }
    if (!host) {
        m->be->download(m->be, p, m->params, n * sizeof(float));
        m->be->download(m->be, g, m->grads, n * sizeof(float));
    }
    for (size_t j = 0; j < n; j++) p[j] -= (j < m->off_head_w ? lr : head_lr) * g[j];
    if (!host) {
        m->be->upload(m->be, m->params, p, n * sizeof(float));
        free(p);
        free(g);
    }
    return 0;
}

int model_adamw_state_get(const model_t *m, float *m_out, float *v_out, size_t n)
{
    if (n != m->tr_numel)
        return medfl_error_set(MEDFL_EINVAL, "model: optimizer state has %zu floats, got %zu",
                               m->tr_numel, n);
    m->be->download(m->be, m_out, m->adam_m, n * sizeof(float));
    m->be->download(m->be, v_out, m->adam_v, n * sizeof(float));
    return 0;
}

int model_adamw_state_set(model_t *m, const float *m_in, const float *v_in, size_t n)
{
    if (n != m->tr_numel)
        return medfl_error_set(MEDFL_EINVAL, "model: optimizer state has %zu floats, got %zu",
                               m->tr_numel, n);
    m->be->upload(m->be, m->adam_m, m_in, n * sizeof(float));
    m->be->upload(m->be, m->adam_v, v_in, n * sizeof(float));
    return 0;
}

void model_adamw_reset(model_t *m)
{
    m->be->memset0(m->be, m->adam_m, m->tr_numel * sizeof(float));
    m->be->memset0(m->be, m->adam_v, m->tr_numel * sizeof(float));
}
