/* Llama-family decoder with LoRA: parameter layout, forward, fused lm_head cross-entropy,
 * backward (batch and per-example), AdamW. See llama.h for the API and docs/model.md
 * ("Llama decoder") for the architecture, what is stored per layer and the numerics.
 *
 * WHY it is written this way:
 * - llm.c style, like common/model.c: one buffer per parameter set cut by a sizes table; an
 *   activation arena allocated once per (B, T); s_layer_forward and s_layer_backward side by
 *   side with shapes in comments.
 * - Every frozen base product goes through s_base_mm / s_base_mm_t / s_base_rows, which take a
 *   weight reference (s_weight: ggml type, rows, cols, data). F32 is one sgemm; a quantized
 *   matrix (GGUF blocks, usually borrowed from the mmap'd file: llama_new_quant +
 *   llama_base_set_quant) goes through quant_matmul (Y = X W^T) / quant_matmul_t (dX = dY W),
 *   which de-quantize a panel of rows at a time; an embedding lookup de-quantizes one row.
 *   Nothing else knows how the base is stored.
 * - Memory: the attention probabilities [B, H, T, T] are NOT stored per layer; the forward
 *   keeps each row's log-sum-exp [B, H, T] and the backward rebuilds P = exp(s S - lse) with
 *   one batched product (flash-attention style), so stored attention state is O(T), not
 *   O(T^2), per head. RMSNorm outputs are rebuilt from the stored residual and rstd. The
 *   lm_head never materialises [N, V] logits: it runs in slices of rows, and in training only
 *   over rows that predict a label (response tokens), fused with the cross-entropy and its
 *   gradient.
 * - The base is frozen: no base weight gradients; activation gradients flow through the
 *   frozen products to lower layers' adapters, and the lowest layer skips d(input).
 * Notation: B batch, T sequence, N = B*T rows, C hidden, H heads, KV key/value heads,
 * G = H/KV heads per KV head, D head_dim, QD = H*D, KD = KV*D, F ffn, V vocab, r rank,
 * s = alpha/r the LoRA scaling. */
#include "node/engine/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "node/engine/family.h"
#include "node/engine/quant.h"

enum { T_Q = 0, T_K, T_V, T_O, T_GATE, T_UP, T_DOWN }; /* target order of family_llama() */

/* Rows of the lm_head computed at once: a slice of logits is at most this many floats
 * (64 MB), whatever the vocabulary. Not smaller: a quantized head de-quantizes the whole
 * [V, C] table once per slice, and at 8 MB (42 rows of SmolLM2's 49,152) that was 35% of a
 * training step (docs/benchmarks.md, "Decoder training"). */
#define S_HEAD_SLICE_FLOATS (16u << 20)

/* A frozen base matrix [rows = out, cols = in] and how it is stored: a ggml type id
 * (QUANT_F32 or a block type of node/engine/quant.h) and row-major data of that type. NULL
 * data: not set yet (a quantized base before its loader ran). */
typedef struct {
    uint32_t type;
    int rows, cols;
    const void *data;
    void *owned; /* data copied by llama_base_set_quant (row order given), freed with m */
} s_weight;

typedef struct {
    s_weight wq, wk, wv, wo, wg, wu, wd;
    const float *bq, *bk, *bv;           /* [QD], [KD], [KD] (Qwen2), else NULL */
    const float *attn_norm, *ffn_norm;   /* [C] input_layernorm, post_attention_layernorm */
} s_layer_w;

typedef struct {
    bool on;
    int in, out;         /* Linear in/out features */
    size_t off_a, off_b; /* offsets in the trainable buffer: A [r, in], B [out, r] */
} s_lora;

/* What the forward keeps per layer for the backward (everything else is scratch). */
typedef struct {
    float *x;      /* [N, C] layer input (residual stream) */
    float *rstd1;  /* [N] 1/rms of x */
    float *q;      /* [N, QD] queries after RoPE */
    float *k, *v;  /* [N, KD] keys after RoPE, values */
    float *lse;    /* [B, H, T] log-sum-exp of each attention row (+inf: row has no key) */
    float *ctx;    /* [N, QD] attention output, only when o_proj has an adapter */
    float *h;      /* [N, C] x + attention block output */
    float *rstd2;  /* [N] 1/rms of h */
    float *g, *u;  /* [N, F] gate and up outputs (NULL with recompute_mlp) */
    float *lu[LLAMA_N_TARGETS]; /* [N, r] x A^T of each adapter */
} s_layer_act;

struct llama {
    llama_config_t cfg;
    backend_t *be;
    float scaling;
    int D, QD, KD, G;

    /* base weights */
    model_tensor_t *base_t;
    size_t n_base_t, base_numel;
    float *base;
    s_weight embed, lm_head;
    const float *norm_f;
    s_layer_w *lw;
    bool ref_base;       /* llama_new_quant: matrices are references, not in `base` */
    float *mm_tmp;       /* scratch of a quantized product with beta = 1 */
    size_t mm_tmp_cap;
    bool mm_failed;      /* a quantized product ran out of memory (sticky until checked) */
    void *keep;          /* llama_keep: an object the borrowed weights live in */
    void (*keep_release)(void *);

    /* trainable */
    model_tensor_t *tr_t;
    size_t n_tr_t, tr_numel;
    s_lora *lora; /* [L * LLAMA_N_TARGETS] */
    float *params, *grads, *adam_m, *adam_v;
    float *inv_freq; /* [D/2] */

    /* arena for the current (B, T) */
    float *arena;
    size_t arena_cap, stored_floats;
    int B, T;
    s_layer_act *act;
    float *xf, *rstdf;  /* [N, C] final residual, [N] */
    float *dxf;         /* [N, C] d(loss)/d(final residual), left by forward_train */
    float *cos_t, *sin_t; /* [T, D/2] */
    /* scratch */
    float *xn;          /* [N, C] an RMSNorm output */
    float *d, *dxn;     /* [N, C] running gradient, gradient of an RMSNorm output */
    float *ctx, *dctx;  /* [N, QD] */
    float *dq;          /* [N, QD] */
    float *dk, *dv;     /* [N, KD] */
    float *S, *dS;      /* [B, H, T, T] one layer's scores / probabilities and their grads */
    float *act_f, *dg, *du; /* [N, F] silu(g)*u, d(gate out), d(up out) */
    float *gs, *us;     /* [N, F] gate/up when not stored (recompute_mlp) */
    float *dU;          /* [LLAMA_N_TARGETS, N, r] */
    float *hx, *hl, *hd; /* head slice: [R, C] rows, [R, V] logits, [R, C] their gradient */
    int head_rows;      /* R */

    /* batch bookkeeping (host) */
    int *len;           /* [B] real tokens of each sequence (right padding) */
    int32_t *tgt;       /* [N] token row (b, t) predicts, or LLAMA_IGNORE */
    int *n_lab;         /* [B] labelled rows per example */
    int *rows;          /* [N] rows the head visits */
    int n_lab_total;
    bool have_train;
    float *pe;          /* per-example output during llama_backward_per_example, else NULL */

    /* DP book-keeping (llama_per_example_norms -> llama_clipped_sum) */
    llama_norm_method_t norm_method;
    bool bk;            /* the running backward fills the book */
    bool have_book;     /* the book belongs to the last forward and is not consumed */
    float *book;        /* per adapter: materialised per-example gradients, or g, B^T g, x */
    size_t book_cap;
    size_t *book_off;   /* [L * LLAMA_N_TARGETS] each active adapter's entry in book */
    unsigned char *gram; /* [L * LLAMA_N_TARGETS] 1: entry is Gram factors */
    int n_gram;
    double *sqn;        /* [B] squared per-example norms being summed */
    float *gt;          /* [2, T, T] Gram scratch */
    size_t gt_cap;

    /* be->profile: wall seconds in frozen base products of the layers, and in the head */
    double prof_base, prof_head;
};

/* ------------------------------------------------------------------ config */

void llama_config_default(llama_config_t *c)
{
    *c = (llama_config_t){
        .n_layers = 30, .hidden = 576, .n_heads = 9, .n_kv_heads = 3, .head_dim = 64,
        .ffn = 1536, .vocab = 49152, .max_seq = 8192, .rope_theta = 100000.0f,
        .rope_type = LLAMA_ROPE_DEFAULT, .rope_factor = 1.0f, .rms_eps = 1e-5f,
        .tie_embeddings = true, .qkv_bias = false, .lora_r = 8, .lora_alpha = 16.0f,
        .lora_targets = LLAMA_LORA_Q | LLAMA_LORA_V,
    };
}

static bool s_pos_finite(float v) { return v > 0.0f && isfinite(v); }

int llama_config_check(const llama_config_t *c)
{
    if (c == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama config: NULL");
#define S_POS(f)                                                                             \
    if (c->f < 1)                                                                            \
        return medfl_error_set(MEDFL_EINVAL, "llama config: field '" #f "' must be >= 1 (got %d)", \
                               (int)c->f);
    S_POS(n_layers) S_POS(hidden) S_POS(n_heads) S_POS(n_kv_heads) S_POS(ffn) S_POS(vocab)
    S_POS(max_seq) S_POS(lora_r)
#undef S_POS
    if (c->head_dim < 0 || (c->head_dim == 0 && c->hidden % c->n_heads != 0))
        return medfl_error_set(MEDFL_EINVAL,
                               "llama config: field 'head_dim' must be > 0 or hidden %d a "
                               "multiple of n_heads %d", c->hidden, c->n_heads);
    int D = c->head_dim ? c->head_dim : c->hidden / c->n_heads;
    if (D % 2 != 0)
        return medfl_error_set(MEDFL_EINVAL, "llama config: field 'head_dim' %d must be even (RoPE)",
                               D);
    if (c->n_heads % c->n_kv_heads != 0)
        return medfl_error_set(MEDFL_EINVAL,
                               "llama config: field 'n_kv_heads' %d must divide n_heads %d",
                               c->n_kv_heads, c->n_heads);
    /* products index rows with int: keep every [rows, cols] matrix and [T, T] inside it */
    if ((long long)c->vocab * c->hidden > 2147483647LL ||
        (long long)c->ffn * c->hidden > 2147483647LL ||
        (long long)c->n_heads * D * c->hidden > 2147483647LL ||
        (long long)c->max_seq * c->max_seq > 2147483647LL)
        return medfl_error_set(MEDFL_EINVAL, "llama config: sizes too large for this engine");
    if (!s_pos_finite(c->rope_theta))
        return medfl_error_set(MEDFL_EINVAL, "llama config: field 'rope_theta' must be > 0");
    if (!s_pos_finite(c->rms_eps))
        return medfl_error_set(MEDFL_EINVAL, "llama config: field 'rms_eps' must be > 0");
    if (!s_pos_finite(c->lora_alpha))
        return medfl_error_set(MEDFL_EINVAL, "llama config: field 'lora_alpha' must be > 0");
    if (c->lora_targets == 0 || (c->lora_targets & ~(unsigned)LLAMA_LORA_ALL))
        return medfl_error_set(MEDFL_EINVAL, "llama config: field 'lora_targets' 0x%x invalid",
                               c->lora_targets);
    switch (c->rope_type) {
    case LLAMA_ROPE_DEFAULT:
        break;
    case LLAMA_ROPE_LINEAR:
        if (!s_pos_finite(c->rope_factor))
            return medfl_error_set(MEDFL_EINVAL, "llama config: field 'rope_factor' must be > 0");
        break;
    case LLAMA_ROPE_LLAMA3:
        if (!s_pos_finite(c->rope_factor) || !s_pos_finite(c->rope_low_freq_factor) ||
            !s_pos_finite(c->rope_high_freq_factor) ||
            !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
            c->rope_original_max_pos < 1)
            return medfl_error_set(MEDFL_EINVAL,
                                   "llama config: llama3 rope scaling needs rope_factor > 0, "
                                   "0 < rope_low_freq_factor < rope_high_freq_factor and "
                                   "rope_original_max_pos >= 1");
        break;
    default:
        return medfl_error_set(MEDFL_EINVAL, "llama config: field 'rope_type' %d unknown",
                               (int)c->rope_type);
    }
    return 0;
}

int llama_lora_targets_parse(const char *list, unsigned *out)
{
    return family_targets_parse(family_llama(), list, out);
}

/* ------------------------------------------------------------------ sizes tables */

static int s_add_tensor(model_tensor_t **tab, size_t *n, size_t *cap, size_t *numel,
                        const char *name, int d0, int d1, bool in_buffer)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        model_tensor_t *t = realloc(*tab, nc * sizeof *t);
        if (t == NULL)
            return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for tensor table");
        *tab = t;
        *cap = nc;
    }
    char *nm = strdup(name);
    if (nm == NULL)
        return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for tensor names");
    model_tensor_t *t = &(*tab)[(*n)++];
    t->name = nm;
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1 > 0 ? d1 : 0;
    t->numel = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    t->offset = *numel; /* packed: the flat trainable vector is exactly the parameters */
    if (in_buffer)
        *numel += t->numel;
    return 0;
}

/* Base tensors in Hugging Face order per layer. Views are cut by name afterwards
 * (s_cut_base), so the order here is only the layout of the buffer. */
static int s_build_base_table(llama_t *m)
{
    const llama_config_t *c = &m->cfg;
    size_t cap = 0;
    char nm[160];
    int C = c->hidden, F = c->ffn;
#define ADD(d0, d1)                                                                          \
    if (s_add_tensor(&m->base_t, &m->n_base_t, &cap, &m->base_numel, nm, d0, d1,            \
                     !(m->ref_base && d1 > 0)) != 0)                                         \
        return -1;
#define ADDL(fmt, d0, d1)                                                                    \
    snprintf(nm, sizeof nm, "model.layers.%d." fmt, l);                                      \
    ADD(d0, d1)
    snprintf(nm, sizeof nm, "model.embed_tokens.weight");
    ADD(c->vocab, C);
    for (int l = 0; l < c->n_layers; l++) {
        ADDL("input_layernorm.weight", C, 0);
        ADDL("self_attn.q_proj.weight", m->QD, C);
        ADDL("self_attn.k_proj.weight", m->KD, C);
        ADDL("self_attn.v_proj.weight", m->KD, C);
        if (c->qkv_bias) {
            ADDL("self_attn.q_proj.bias", m->QD, 0);
            ADDL("self_attn.k_proj.bias", m->KD, 0);
            ADDL("self_attn.v_proj.bias", m->KD, 0);
        }
        ADDL("self_attn.o_proj.weight", C, m->QD);
        ADDL("post_attention_layernorm.weight", C, 0);
        ADDL("mlp.gate_proj.weight", F, C);
        ADDL("mlp.up_proj.weight", F, C);
        ADDL("mlp.down_proj.weight", C, F);
    }
    snprintf(nm, sizeof nm, "model.norm.weight");
    ADD(C, 0);
    if (!c->tie_embeddings) {
        snprintf(nm, sizeof nm, "lm_head.weight");
        ADD(c->vocab, C);
    }
#undef ADDL
#undef ADD
    return 0;
}

static int s_build_trainable_table(llama_t *m)
{
    const llama_config_t *c = &m->cfg;
    size_t cap = 0;
    char nm[200];
    int C = c->hidden, F = c->ffn, r = c->lora_r;
    const int in[LLAMA_N_TARGETS] = {C, C, C, m->QD, C, C, F};
    const int out[LLAMA_N_TARGETS] = {m->QD, m->KD, m->KD, C, F, F, C};
    m->lora = calloc((size_t)c->n_layers * LLAMA_N_TARGETS, sizeof *m->lora);
    if (m->lora == NULL)
        return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory");
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < LLAMA_N_TARGETS; t++) {
            s_lora *lo = &m->lora[l * LLAMA_N_TARGETS + t];
            if (!(c->lora_targets & (1u << t)))
                continue;
            *lo = (s_lora){.on = true, .in = in[t], .out = out[t]};
            if (family_lora_name(family_llama(), l, t, 'A', nm, sizeof nm) != 0 ||
                s_add_tensor(&m->tr_t, &m->n_tr_t, &cap, &m->tr_numel, nm, r, lo->in, true) != 0)
                return -1;
            lo->off_a = m->tr_t[m->n_tr_t - 1].offset;
            if (family_lora_name(family_llama(), l, t, 'B', nm, sizeof nm) != 0 ||
                s_add_tensor(&m->tr_t, &m->n_tr_t, &cap, &m->tr_numel, nm, lo->out, r, true) != 0)
                return -1;
            lo->off_b = m->tr_t[m->n_tr_t - 1].offset;
        }
    return 0;
}

static const model_tensor_t *s_find(const model_tensor_t *tab, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(tab[i].name, name) == 0)
            return &tab[i];
    return NULL;
}

static float *s_base_named(llama_t *m, const char *name)
{
    const model_tensor_t *t = s_find(m->base_t, m->n_base_t, name);
    return t ? m->base + t->offset : NULL; /* never NULL: names come from the table */
}

/* A matrix's reference: into `base` (F32), or unset until llama_base_set_quant (ref_base). */
static s_weight s_w_f32(llama_t *m, const char *name)
{
    const model_tensor_t *t = s_find(m->base_t, m->n_base_t, name);
    return (s_weight){QUANT_F32, t->shape[0], t->shape[1],
                      m->ref_base ? NULL : m->base + t->offset, NULL};
}

/* The reference slot of a base matrix by name; NULL for vectors (norms, biases). */
static s_weight *s_weight_slot(llama_t *m, const char *name)
{
    if (strcmp(name, "model.embed_tokens.weight") == 0)
        return &m->embed;
    if (strcmp(name, "lm_head.weight") == 0)
        return m->cfg.tie_embeddings ? NULL : &m->lm_head;
    int l, end = 0;
    char suffix[64];
    if (sscanf(name, "model.layers.%d.%63s%n", &l, suffix, &end) != 2 || name[end] != '\0' ||
        l < 0 || l >= m->cfg.n_layers)
        return NULL;
    s_layer_w *w = &m->lw[l];
    static const char *names[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                  "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                  "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                  "mlp.down_proj.weight"};
    s_weight *slots[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->wg, &w->wu, &w->wd};
    for (int i = 0; i < 7; i++)
        if (strcmp(suffix, names[i]) == 0)
            return slots[i];
    return NULL;
}

static void s_cut_base(llama_t *m)
{
    char nm[160];
    m->embed = s_w_f32(m, "model.embed_tokens.weight");
    m->lm_head = m->cfg.tie_embeddings ? m->embed : s_w_f32(m, "lm_head.weight");
    m->norm_f = s_base_named(m, "model.norm.weight");
    for (int l = 0; l < m->cfg.n_layers; l++) {
        s_layer_w *w = &m->lw[l];
#define W(field, suffix)                                                                     \
    snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix);                                \
    w->field = s_w_f32(m, nm);
#define P(field, suffix)                                                                     \
    snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix);                                \
    w->field = s_base_named(m, nm);
        W(wq, "self_attn.q_proj.weight") W(wk, "self_attn.k_proj.weight")
        W(wv, "self_attn.v_proj.weight") W(wo, "self_attn.o_proj.weight")
        W(wg, "mlp.gate_proj.weight") W(wu, "mlp.up_proj.weight")
        W(wd, "mlp.down_proj.weight")
        P(attn_norm, "input_layernorm.weight") P(ffn_norm, "post_attention_layernorm.weight")
        if (m->cfg.qkv_bias) {
            P(bq, "self_attn.q_proj.bias") P(bk, "self_attn.k_proj.bias")
            P(bv, "self_attn.v_proj.bias")
        }
#undef W
#undef P
    }
}

/* RoPE inverse frequencies exactly as transformers computes them (float32 arithmetic,
 * ROPE_INIT_FUNCTIONS default / linear / llama3), so positions rotate by the same angles. */
static void s_rope_init(llama_t *m)
{
    const llama_config_t *c = &m->cfg;
    int half = m->D / 2;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)m->D;
        float inv = 1.0f / powf(c->rope_theta, e);
        if (c->rope_type == LLAMA_ROPE_LINEAR) {
            inv /= c->rope_factor;
        } else if (c->rope_type == LLAMA_ROPE_LLAMA3) {
            float old = (float)c->rope_original_max_pos, lo = c->rope_low_freq_factor,
                  hi = c->rope_high_freq_factor, f = c->rope_factor;
            float low_wavelen = old / lo, high_wavelen = old / hi;
            float wavelen = 2.0f * (float)M_PI / inv;
            float scaled = wavelen > low_wavelen ? inv / f : inv;
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                float smooth = (old / wavelen - lo) / (hi - lo);
                scaled = (1.0f - smooth) * scaled / f + smooth * scaled;
            }
            inv = scaled;
        }
        m->inv_freq[i] = inv;
    }
}

/* ------------------------------------------------------------------ lifecycle */

static llama_t *s_new(const llama_config_t *cfg, backend_t *be, bool ref_base)
{
    if (cfg == NULL || be == NULL) {
        medfl_error_set(MEDFL_EINVAL, "llama_new: config and backend are required");
        return NULL;
    }
    if (llama_config_check(cfg) != 0)
        return NULL;
    if (be->kind != BACKEND_CPU) {
        medfl_error_set(MEDFL_EUNSUPPORTED,
                        "llama: backend '%s' lacks the decoder kernels (RMSNorm, RoPE, causal "
                        "softmax, SwiGLU); use the cpu backend", be->name ? be->name : "?");
        return NULL;
    }
    llama_t *m = calloc(1, sizeof *m);
    if (m == NULL) {
        medfl_error_set(MEDFL_ENOMEM, "llama: out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    m->be = be;
    m->ref_base = ref_base;
    m->scaling = cfg->lora_alpha / (float)cfg->lora_r;
    m->D = cfg->head_dim ? cfg->head_dim : cfg->hidden / cfg->n_heads;
    m->QD = cfg->n_heads * m->D;
    m->KD = cfg->n_kv_heads * m->D;
    m->G = cfg->n_heads / cfg->n_kv_heads;
    m->lw = calloc((size_t)cfg->n_layers, sizeof *m->lw);
    m->act = calloc((size_t)cfg->n_layers, sizeof *m->act);
    m->inv_freq = calloc((size_t)m->D / 2, sizeof(float));
    if (!m->lw || !m->act || !m->inv_freq || s_build_base_table(m) != 0 ||
        s_build_trainable_table(m) != 0)
        goto fail;
    m->base = be->alloc(be, (m->base_numel ? m->base_numel : 1) * sizeof(float));
    m->params = be->alloc(be, m->tr_numel * sizeof(float));
    m->grads = be->alloc(be, m->tr_numel * sizeof(float));
    m->adam_m = be->alloc(be, m->tr_numel * sizeof(float));
    m->adam_v = be->alloc(be, m->tr_numel * sizeof(float));
    if (!m->base || !m->params || !m->grads || !m->adam_m || !m->adam_v) {
        medfl_error_set(MEDFL_ENOMEM, "llama: cannot allocate %zu base + 4 x %zu trainable floats",
                        m->base_numel, m->tr_numel);
        goto fail;
    }
    s_cut_base(m);
    s_rope_init(m);
    return m;
fail:
    llama_destroy(&m);
    return NULL;
}

llama_t *llama_new(const llama_config_t *cfg, backend_t *be)
{
    return s_new(cfg, be, false);
}

llama_t *llama_new_quant(const llama_config_t *cfg, backend_t *be)
{
    return s_new(cfg, be, true);
}

void llama_keep(llama_t *m, void *obj, void (*release)(void *))
{
    if (m->keep_release)
        m->keep_release(m->keep);
    m->keep = obj;
    m->keep_release = release;
}

bool llama_base_quantized(const llama_t *m) { return m->ref_base; }

static void s_free_batch(llama_t *m)
{
    free(m->len);
    free(m->tgt);
    free(m->n_lab);
    free(m->rows);
    m->len = m->n_lab = m->rows = NULL;
    m->tgt = NULL;
}

void llama_destroy(llama_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    llama_t *m = *self_p;
    *self_p = NULL;
    backend_t *be = m->be;
    be->free(be, m->base);
    be->free(be, m->params);
    be->free(be, m->grads);
    be->free(be, m->adam_m);
    be->free(be, m->adam_v);
    be->free(be, m->arena);
    for (size_t i = 0; i < m->n_base_t; i++)
        free((char *)m->base_t[i].name);
    for (size_t i = 0; i < m->n_tr_t; i++)
        free((char *)m->tr_t[i].name);
    free(m->base_t);
    free(m->tr_t);
    free(m->lora);
    free(m->embed.owned);
    if (!m->cfg.tie_embeddings)
        free(m->lm_head.owned);
    for (int l = 0; m->lw && l < m->cfg.n_layers; l++) {
        s_layer_w *w = &m->lw[l];
        s_weight *ws[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->wg, &w->wu, &w->wd};
        for (int i = 0; i < 7; i++)
            free(ws[i]->owned);
    }
    free(m->lw);
    free(m->act);
    free(m->inv_freq);
    free(m->mm_tmp);
    free(m->book);
    free(m->book_off);
    free(m->gram);
    free(m->sqn);
    free(m->gt);
    if (m->keep_release)
        m->keep_release(m->keep);
    s_free_batch(m);
    free(m);
}

const llama_config_t *llama_config(const llama_t *m) { return &m->cfg; }

/* ------------------------------------------------------------------ base access */

size_t llama_base_count(const llama_t *m) { return m->n_base_t; }
size_t llama_base_numel(const llama_t *m) { return m->base_numel; }

const model_tensor_t *llama_base_tensor(const llama_t *m, size_t i)
{
    return i < m->n_base_t ? &m->base_t[i] : NULL;
}

const model_tensor_t *llama_base_find(const llama_t *m, const char *name)
{
    return name ? s_find(m->base_t, m->n_base_t, name) : NULL;
}

static const model_tensor_t *s_base_checked(const llama_t *m, const char *name, size_t n)
{
    const model_tensor_t *t = llama_base_find(m, name);
    if (t == NULL) {
        medfl_error_set(MEDFL_ENOTFOUND, "llama: no base tensor named '%.120s'",
                        name ? name : "(null)");
        return NULL;
    }
    if (n != t->numel) {
        medfl_error_set(MEDFL_EINVAL, "llama: tensor '%s' has %zu elements, got %zu", t->name,
                        t->numel, n);
        return NULL;
    }
    return t;
}

int llama_base_set(llama_t *m, const char *name, const float *data, size_t n)
{
    const model_tensor_t *t = s_base_checked(m, name, n);
    if (t == NULL)
        return -1;
    if (m->ref_base && t->ndim == 2)
        return medfl_error_set(MEDFL_EINVAL, "llama: tensor '%s' of a quantized base is set "
                               "with llama_base_set_quant", t->name);
    if (data == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama: tensor '%s': no data", t->name);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(data[i]))
            return medfl_error_set(MEDFL_EINVAL, "llama: tensor '%s' element %zu is not finite",
                                   t->name, i);
    m->be->upload(m->be, m->base + t->offset, data, n * sizeof(float));
    return 0;
}

int llama_base_set_quant(llama_t *m, const char *name, uint32_t type, const void *data,
                         size_t n_bytes, const int32_t *row_order)
{
    const model_tensor_t *t = llama_base_find(m, name);
    if (t == NULL)
        return medfl_error_set(MEDFL_ENOTFOUND, "llama: no base tensor named '%.120s'",
                               name ? name : "(null)");
    s_weight *w = m->ref_base ? s_weight_slot(m, t->name) : NULL;
    if (w == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama: tensor '%s' is not a matrix of a quantized "
                               "base (llama_new_quant)", t->name);
    if (!quant_supported(type))
        return medfl_error_set(MEDFL_EUNSUPPORTED, "llama: tensor '%s': type %s is not "
                               "supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1)", t->name,
                               quant_type_name(type));
    size_t rb = quant_row_bytes(type, (size_t)w->cols);
    if (rb == 0)
        return medfl_error_set(MEDFL_EINVAL, "llama: tensor '%s': rows of %d values are not "
                               "whole %s blocks", t->name, w->cols, quant_type_name(type));
    if (data == NULL || n_bytes != rb * (size_t)w->rows)
        return medfl_error_set(MEDFL_EINVAL, "llama: tensor '%s' needs %zu bytes of %s, got %zu",
                               t->name, rb * (size_t)w->rows, quant_type_name(type), n_bytes);
    void *own = NULL;
    if (row_order) {
        if (!(own = malloc(n_bytes)))
            return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for tensor '%s'",
                                   t->name);
        for (int r = 0; r < w->rows; r++) {
            if (row_order[r] < 0 || row_order[r] >= w->rows) {
                free(own);
                return medfl_error_set(MEDFL_EINVAL, "llama: tensor '%s': row order entry %d "
                                       "out of range", t->name, r);
            }
            memcpy((char *)own + (size_t)r * rb, (const char *)data + (size_t)row_order[r] * rb,
                   rb);
        }
    }
    free(w->owned);
    w->type = type;
    w->owned = own;
    w->data = own ? own : data;
    if (w == &m->embed && m->cfg.tie_embeddings)
        m->lm_head = (s_weight){w->type, w->rows, w->cols, w->data, NULL};
    return 0;
}

/* Every matrix of a quantized base set (checked before a forward). */
static int s_base_ready(const llama_t *m)
{
    if (!m->ref_base)
        return 0;
    for (size_t i = 0; i < m->n_base_t; i++) {
        const model_tensor_t *t = &m->base_t[i];
        const s_weight *w = t->ndim == 2 ? s_weight_slot((llama_t *)m, t->name) : NULL;
        if (w && w->data == NULL)
            return medfl_error_set(MEDFL_ESTATE, "llama: base tensor '%s' was never set",
                                   t->name);
    }
    return 0;
}

int llama_base_get(const llama_t *m, const char *name, float *out, size_t n)
{
    const model_tensor_t *t = s_base_checked(m, name, n);
    if (t == NULL)
        return -1;
    const s_weight *w = m->ref_base && t->ndim == 2 ? s_weight_slot((llama_t *)m, t->name) : NULL;
    if (w) {
        if (w->data == NULL)
            return medfl_error_set(MEDFL_ESTATE, "llama: base tensor '%s' was never set",
                                   t->name);
        size_t rb = quant_row_bytes(w->type, (size_t)w->cols);
        for (int r = 0; r < w->rows; r++)
            if (quant_dequantize_row(w->type, (const char *)w->data + (size_t)r * rb,
                                     out + (size_t)r * w->cols, (size_t)w->cols) != 0)
                return -1;
        return 0;
    }
    m->be->download(m->be, out, m->base + t->offset, n * sizeof(float));
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

static double s_randn(uint64_t *s)
{
    double u1 = s_rand_unit(s), u2 = s_rand_unit(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void llama_base_init_random(llama_t *m, uint64_t seed, float std)
{
    uint64_t st = seed;
    for (size_t i = 0; i < m->n_base_t; i++) {
        const model_tensor_t *t = &m->base_t[i];
        if (m->ref_base && t->ndim == 2)
            continue; /* references: set by a loader */
        float *p = m->base + t->offset; /* CPU backend: host memory */
        bool norm = strstr(t->name, "norm.weight") != NULL;
        for (size_t j = 0; j < t->numel; j++)
            p[j] = norm ? (float)(1.0 + 0.1 * s_randn(&st)) : (float)(std * s_randn(&st));
    }
}

/* ------------------------------------------------------------------ trainable access */

size_t llama_trainable_count(const llama_t *m) { return m->n_tr_t; }
size_t llama_trainable_numel(const llama_t *m) { return m->tr_numel; }

const model_tensor_t *llama_trainable_tensor(const llama_t *m, size_t i)
{
    return i < m->n_tr_t ? &m->tr_t[i] : NULL;
}

const model_tensor_t *llama_trainable_find(const llama_t *m, const char *name)
{
    return name ? s_find(m->tr_t, m->n_tr_t, name) : NULL;
}

void llama_init_trainable(llama_t *m, uint64_t seed)
{
    uint64_t st = seed ^ 0x5DEECE66Dull;
    m->be->memset0(m->be, m->params, m->tr_numel * sizeof(float));
    for (size_t i = 0; i < m->n_tr_t; i++) {
        const model_tensor_t *t = &m->tr_t[i];
        if (!strstr(t->name, "lora_A"))
            continue; /* B = 0: the adapted model starts equal to the base */
        double bound = 1.0 / sqrt((double)t->shape[1]); /* kaiming_uniform_(a=sqrt(5)) */
        for (size_t j = 0; j < t->numel; j++)
            m->params[t->offset + j] = (float)((2.0 * s_rand_unit(&st) - 1.0) * bound);
    }
    llama_adamw_reset(m);
}

static int s_vec_check(const llama_t *m, const char *what, size_t n)
{
    if (n != m->tr_numel)
        return medfl_error_set(MEDFL_EINVAL, "llama: %s vector has %zu floats, got %zu", what,
                               m->tr_numel, n);
    return 0;
}

int llama_trainable_set(llama_t *m, const float *src, size_t n)
{
    if (s_vec_check(m, "trainable", n) != 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(src[i]))
            return medfl_error_set(MEDFL_EINVAL, "llama: trainable element %zu is not finite", i);
    m->be->upload(m->be, m->params, src, n * sizeof(float));
    return 0;
}

int llama_trainable_get(const llama_t *m, float *dst, size_t n)
{
    if (s_vec_check(m, "trainable", n) != 0)
        return -1;
    m->be->download(m->be, dst, m->params, n * sizeof(float));
    return 0;
}

int llama_grad_get(const llama_t *m, float *dst, size_t n)
{
    if (s_vec_check(m, "gradient", n) != 0)
        return -1;
    m->be->download(m->be, dst, m->grads, n * sizeof(float));
    return 0;
}

/* ------------------------------------------------------------------ arena */

static size_t s_r16(size_t n) { return (n + 15) / 16 * 16; }

/* Cuts (or, with base == NULL, measures) the arena for batch B, sequence T. The per-layer
 * stored part comes first so that llama_stored_bytes can report it. */
static size_t s_cut_arena(llama_t *m, float *base, int B, int T)
{
    const llama_config_t *c = &m->cfg;
    size_t N = (size_t)B * T, C = c->hidden, F = c->ffn, r = c->lora_r, H = c->n_heads;
    size_t QD = m->QD, KD = m->KD, att = (size_t)B * H * T * T, off = 0;
#define TAKE(ptr, n)                                                                         \
    do {                                                                                     \
        if (base)                                                                            \
            ptr = base + off;                                                                \
        off += s_r16(n);                                                                     \
    } while (0)
    for (int l = 0; l < c->n_layers; l++) {
        s_layer_act *a = &m->act[l];
        const s_lora *lo = &m->lora[l * LLAMA_N_TARGETS];
        TAKE(a->x, N * C);
        TAKE(a->rstd1, N);
        TAKE(a->q, N * QD);
        TAKE(a->k, N * KD);
        TAKE(a->v, N * KD);
        TAKE(a->lse, (size_t)B * H * T);
        a->ctx = NULL;
        if (lo[T_O].on)
            TAKE(a->ctx, N * QD);
        TAKE(a->h, N * C);
        TAKE(a->rstd2, N);
        a->g = a->u = NULL;
        if (!c->recompute_mlp) {
            TAKE(a->g, N * F);
            TAKE(a->u, N * F);
        }
        for (int t = 0; t < LLAMA_N_TARGETS; t++) {
            a->lu[t] = NULL;
            if (lo[t].on)
                TAKE(a->lu[t], N * r);
        }
    }
    TAKE(m->xf, N * C);
    TAKE(m->rstdf, N);
    TAKE(m->dxf, N * C);
    if (base)
        m->stored_floats = off;
    TAKE(m->cos_t, (size_t)T * (m->D / 2));
    TAKE(m->sin_t, (size_t)T * (m->D / 2));
    TAKE(m->xn, N * C);
    TAKE(m->d, N * C);
    TAKE(m->dxn, N * C);
    TAKE(m->ctx, N * QD);
    TAKE(m->dctx, N * QD);
    TAKE(m->dq, N * QD);
    TAKE(m->dk, N * KD);
    TAKE(m->dv, N * KD);
    TAKE(m->S, att);
    TAKE(m->dS, att);
    TAKE(m->act_f, N * F);
    TAKE(m->dg, N * F);
    TAKE(m->du, N * F);
    m->gs = m->us = NULL;
    if (c->recompute_mlp) {
        TAKE(m->gs, N * F);
        TAKE(m->us, N * F);
    }
    TAKE(m->dU, (size_t)LLAMA_N_TARGETS * N * r);
    size_t R = S_HEAD_SLICE_FLOATS / (size_t)c->vocab;
    R = R < 1 ? 1 : R > N ? N : R;
    if (base)
        m->head_rows = (int)R;
    TAKE(m->hx, R * C);
    TAKE(m->hl, R * (size_t)c->vocab);
    TAKE(m->hd, R * C);
#undef TAKE
    return off;
}

/* cos/sin[t, i] = cos/sin(t * inv_freq[i]) with the product in float32 as transformers
 * computes it (inv_freq @ position_ids in float32), the angle's cosine then rounded. */
static void s_rope_tables(llama_t *m, int T)
{
    int half = m->D / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float ang = m->inv_freq[i] * (float)t;
            m->cos_t[(size_t)t * half + i] = (float)cos((double)ang);
            m->sin_t[(size_t)t * half + i] = (float)sin((double)ang);
        }
}

static int s_arena_for(llama_t *m, int B, int T)
{
    if (m->arena && m->B == B && m->T == T)
        return 0;
    size_t need = s_cut_arena(m, NULL, B, T);
    if (need > m->arena_cap) {
        m->be->free(m->be, m->arena);
        m->arena = m->be->alloc(m->be, need * sizeof(float));
        m->arena_cap = m->arena ? need : 0;
        if (m->arena == NULL) {
            m->B = m->T = 0;
            return medfl_error_set(MEDFL_ENOMEM,
                                   "llama: cannot allocate %.1f MB of activations (B=%d, T=%d)",
                                   need * 4.0 / 1e6, B, T);
        }
    }
    s_cut_arena(m, m->arena, B, T);
    s_rope_tables(m, T);
    s_free_batch(m);
    size_t N = (size_t)B * T;
    m->len = calloc((size_t)B, sizeof(int));
    m->n_lab = calloc((size_t)B, sizeof(int));
    m->tgt = calloc(N, sizeof(int32_t));
    m->rows = calloc(N, sizeof(int));
    if (!m->len || !m->n_lab || !m->tgt || !m->rows) {
        m->B = m->T = 0;
        return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for batch bookkeeping");
    }
    m->B = B;
    m->T = T;
    return 0;
}

size_t llama_arena_bytes(const llama_t *m) { return m->arena_cap * sizeof(float); }

int llama_rope_inv_freq(const llama_t *m, float *out, int n)
{
    if (out == NULL || n != m->D / 2)
        return medfl_error_set(MEDFL_EINVAL, "llama: RoPE has %d frequencies, got %d", m->D / 2,
                               n);
    memcpy(out, m->inv_freq, (size_t)n * sizeof(float));
    return 0;
}
size_t llama_stored_bytes(const llama_t *m) { return m->stored_floats * sizeof(float); }

/* ------------------------------------------------------------------ frozen base products */

/* Scratch for a quantized product with beta = 1 (quant_matmul overwrites its output). */
static float *s_mm_tmp(llama_t *m, size_t n)
{
    if (n > m->mm_tmp_cap) {
        float *t = realloc(m->mm_tmp, n * sizeof(float));
        if (t == NULL)
            return NULL;
        m->mm_tmp = t;
        m->mm_tmp_cap = n;
    }
    return m->mm_tmp;
}

/* Y[n, w.rows] = X[n, w.cols] @ W^T + beta * Y (beta 0 or 1). THE place every frozen base
 * product goes through: F32 is one sgemm; a quantized weight de-quantizes panel by panel in
 * quant_matmul (into a scratch added to Y for beta = 1). An allocation failure inside sets
 * mm_failed, which the public entry points turn into -1. */
static void s_base_mm_raw(llama_t *m, const s_weight *w, const float *X, int n, float *Y,
                          float beta)
{
    if (w->type == QUANT_F32) {
        m->be->sgemm(m->be, false, true, n, w->rows, w->cols, 1.0f, X, w->cols, w->data,
                     w->cols, beta, Y, w->rows);
        return;
    }
    size_t ny = (size_t)n * w->rows;
    float *out = beta != 0.0f ? s_mm_tmp(m, ny) : Y;
    if (out == NULL ||
        quant_matmul(w->type, w->data, (size_t)w->rows, (size_t)w->cols, X, (size_t)n, out) != 0) {
        m->mm_failed = true;
        return;
    }
    if (out != Y)
        for (size_t i = 0; i < ny; i++)
            Y[i] += out[i];
}

/* dX[n, w.cols] = dY[n, w.rows] @ W + beta * dX: the input gradient of s_base_mm. */
static void s_base_mm_t_raw(llama_t *m, const s_weight *w, const float *dY, int n, float *dX,
                            float beta)
{
    if (w->type == QUANT_F32) {
        m->be->sgemm(m->be, false, false, n, w->cols, w->rows, 1.0f, dY, w->rows, w->data,
                     w->cols, beta, dX, w->cols);
        return;
    }
    size_t nx = (size_t)n * w->cols;
    float *out = beta != 0.0f ? s_mm_tmp(m, nx) : dX;
    if (out == NULL || quant_matmul_t(w->type, w->data, (size_t)w->rows, (size_t)w->cols, dY,
                                      (size_t)n, out) != 0) {
        m->mm_failed = true;
        return;
    }
    if (out != dX)
        for (size_t i = 0; i < nx; i++)
            dX[i] += out[i];
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The two above, timed into prof_base when profiling (the head is timed as a whole). */
static void s_base_mm(llama_t *m, const s_weight *w, const float *X, int n, float *Y, float beta)
{
    double t0 = m->be->profile ? s_now() : 0.0;
    s_base_mm_raw(m, w, X, n, Y, beta);
    if (m->be->profile && w != &m->lm_head)
        m->prof_base += s_now() - t0;
}

static void s_base_mm_t(llama_t *m, const s_weight *w, const float *dY, int n, float *dX,
                        float beta)
{
    double t0 = m->be->profile ? s_now() : 0.0;
    s_base_mm_t_raw(m, w, dY, n, dX, beta);
    if (m->be->profile && w != &m->lm_head)
        m->prof_base += s_now() - t0;
}

/* out[i, :] = W[ids[i], :] (the embedding lookup; ids validated): a quantized table
 * de-quantizes just the rows looked up. */
static void s_base_rows(const s_weight *w, const int32_t *ids, int n, float *out)
{
    size_t rb = quant_row_bytes(w->type, (size_t)w->cols);
    for (int i = 0; i < n; i++) {
        const char *src = (const char *)w->data + (size_t)ids[i] * rb;
        float *dst = out + (size_t)i * w->cols;
        if (w->type == QUANT_F32)
            memcpy(dst, src, rb);
        else
            quant_dequantize_row(w->type, src, dst, (size_t)w->cols); /* type checked at set */
    }
}

/* -1 with an error when a quantized product failed since the last call. */
static int s_mm_check(llama_t *m)
{
    if (!m->mm_failed)
        return 0;
    m->mm_failed = false;
    return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory in a quantized base product");
}

/* ------------------------------------------------------------------ decoder kernels (host) */

/* out = w * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps), per row of C (HF LlamaRMSNorm). */
static void s_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int C,
                          float eps)
{
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C;
        float *o = out + (size_t)i * C;
        double ss = 0.0;
        for (int j = 0; j < C; j++)
            ss += (double)xr[j] * xr[j];
        float rs = (float)(1.0 / sqrt(ss / C + (double)eps));
        rstd[i] = rs;
        for (int j = 0; j < C; j++)
            o[j] = w[j] * (xr[j] * rs);
    }
}

/* The same output rebuilt from the stored input and rstd (no reduction). */
static void s_rmsnorm_rebuild(float *out, const float *rstd, const float *x, const float *w,
                              int N, int C)
{
    for (int i = 0; i < N; i++)
        for (int j = 0; j < C; j++)
            out[(size_t)i * C + j] = w[j] * (x[(size_t)i * C + j] * rstd[i]);
}

/* dx += rstd * (g - xn * mean(g * xn)), g = dy * w, xn = x * rstd. */
static void s_rmsnorm_bwd(float *dx, const float *dy, const float *x, const float *rstd,
                          const float *w, int N, int C)
{
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C, *dr = dy + (size_t)i * C;
        float *o = dx + (size_t)i * C, rs = rstd[i];
        double dot = 0.0;
        for (int j = 0; j < C; j++)
            dot += (double)dr[j] * w[j] * xr[j] * rs;
        float mean = (float)(dot / C);
        for (int j = 0; j < C; j++)
            o[j] += rs * (dr[j] * w[j] - xr[j] * rs * mean);
    }
}

/* RoPE in place on rows [N, nh * D] (row t of each sequence at position t), HF rotate_half:
 * for i < D/2, (x_i, x_{i+D/2}) rotated by the angle t * inv_freq[i]. inverse rotates back:
 * the backward of a rotation is its transpose. */
static void s_rope(llama_t *m, float *X, int nh, bool inverse)
{
    int B = m->B, T = m->T, D = m->D, half = D / 2, ld = nh * D;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *cs = m->cos_t + (size_t)t * half, *sn = m->sin_t + (size_t)t * half;
            float *row = X + ((size_t)b * T + t) * ld;
            for (int h = 0; h < nh; h++) {
                float *x = row + (size_t)h * D;
                for (int i = 0; i < half; i++) {
                    float a = x[i], bb = x[i + half], c = cs[i], s = inverse ? -sn[i] : sn[i];
                    x[i] = a * c - bb * s;
                    x[i + half] = bb * c + a * s;
                }
            }
        }
}

/* Keys row t of sequence b may attend to: causal and not padding. */
static int s_keys(const llama_t *m, int b, int t)
{
    return t + 1 < m->len[b] ? t + 1 : m->len[b];
}

/* Rows of S[B, H, T, T] in place: P = softmax(scale * S) over the row's keys (others 0),
 * lse = log-sum-exp of the scaled row (+inf when it has no key: an all-padding sequence). */
static void s_softmax_causal_fwd(llama_t *m, float *S, float *lse, float scale)
{
    int B = m->B, H = m->cfg.n_heads, T = m->T;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                size_t row = ((size_t)b * H + h) * T + t;
                float *p = S + row * T;
                int nk = s_keys(m, b, t);
                if (nk == 0) {
                    memset(p, 0, (size_t)T * sizeof(float));
                    lse[row] = INFINITY;
                    continue;
                }
                float mx = -INFINITY;
                for (int k = 0; k < nk; k++)
                    mx = fmaxf(mx, scale * p[k]);
                double sum = 0.0;
                for (int k = 0; k < nk; k++) {
                    p[k] = expf(scale * p[k] - mx);
                    sum += p[k];
                }
                float inv = (float)(1.0 / sum);
                for (int k = 0; k < nk; k++)
                    p[k] *= inv;
                memset(p + nk, 0, (size_t)(T - nk) * sizeof(float));
                lse[row] = mx + (float)log(sum);
            }
}

/* The probabilities again from recomputed scores and the stored lse. */
static void s_softmax_causal_rebuild(llama_t *m, float *S, const float *lse, float scale)
{
    int B = m->B, H = m->cfg.n_heads, T = m->T;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                size_t row = ((size_t)b * H + h) * T + t;
                float *p = S + row * T;
                int nk = isinf(lse[row]) ? 0 : s_keys(m, b, t);
                for (int k = 0; k < nk; k++)
                    p[k] = expf(scale * p[k] - lse[row]);
                memset(p + nk, 0, (size_t)(T - nk) * sizeof(float));
            }
}

/* In place dP -> dS = scale * P * (dP - rowsum(dP * P)). */
static void s_softmax_bwd(float *dP, const float *P, size_t rows, int T, float scale)
{
    for (size_t r = 0; r < rows; r++) {
        float *d = dP + r * T;
        const float *p = P + r * T;
        double dot = 0.0;
        for (int k = 0; k < T; k++)
            dot += (double)d[k] * p[k];
        float fd = (float)dot;
        for (int k = 0; k < T; k++)
            d[k] = scale * p[k] * (d[k] - fd);
    }
}

/* act = silu(g) * u */
static void s_swiglu_fwd(float *act, const float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        act[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* dact (in dg) -> dg = dact * u * silu'(g), du = dact * silu(g). */
static void s_swiglu_bwd(float *dg, float *du, const float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float sg = 1.0f / (1.0f + expf(-g[i])), da = dg[i];
        du[i] = da * g[i] * sg;
        dg[i] = da * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
    }
}

static void s_add_bias(float *y, const float *bias, int N, int C)
{
    for (int i = 0; i < N; i++)
        for (int j = 0; j < C; j++)
            y[(size_t)i * C + j] += bias[j];
}

/* ------------------------------------------------------------------ LoRA linear */

/* y[N, out] += s * (x @ A^T) @ B^T, x [N, in]; keeps u = x @ A^T [N, r] for backward. */
static void s_lora_fwd(llama_t *m, const s_lora *lo, const float *x, float *u, float *y, int N)
{
    backend_t *be = m->be;
    int r = m->cfg.lora_r;
    const float *A = m->params + lo->off_a, *Bm = m->params + lo->off_b;
    be->sgemm(be, false, true, N, r, lo->in, 1.0f, x, lo->in, A, lo->in, 0.0f, u, r);
    be->sgemm(be, false, true, N, lo->out, r, m->scaling, u, r, Bm, r, 1.0f, y, lo->out);
}

/* ---- DP book-keeping: per-example squared norms now, the clipped sum later ---- */

/* Per-example gradient scale k_e = n / n_e (0 without a labelled position: g_e = 0). */
static float s_k(const llama_t *m, int e)
{
    return m->n_lab[e] ? (float)m->n_lab_total / (float)m->n_lab[e] : 0.0f;
}

/* Floats of adapter lo's book entry: B per-example [out, r] + [r, in] gradients when
 * materialised; g [N, out], B^T g [N, r] and x [N, in] when by Gram matrices. */
static size_t s_book_floats(const llama_t *m, const s_lora *lo, bool gram)
{
    size_t r = (size_t)m->cfg.lora_r, N = (size_t)m->B * m->T;
    return gram ? N * (lo->out + r + lo->in) : (size_t)m->B * r * (lo->out + lo->in);
}

/* Chooses each active adapter's method for the current (B, T) and sizes the book. Flops per
 * example: materialising 2 T r (out + in); Gram T^2 (out + in + 2 r) (T^2 per dimension per
 * Gram matrix, ignoring symmetry in both). */
static int s_book_plan(llama_t *m)
{
    size_t na = (size_t)m->cfg.n_layers * LLAMA_N_TARGETS, total = 0, T = (size_t)m->T;
    size_t r = (size_t)m->cfg.lora_r;
    if (m->book_off == NULL) {
        m->book_off = calloc(na, sizeof *m->book_off);
        m->gram = calloc(na, 1);
        if (m->book_off == NULL || m->gram == NULL)
            return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for the DP book");
    }
    m->n_gram = 0;
    for (size_t i = 0; i < na; i++) {
        const s_lora *lo = &m->lora[i];
        if (!lo->on)
            continue;
        double mat = 2.0 * T * r * (lo->out + lo->in), gr = (double)T * T * (lo->out + lo->in + 2 * r);
        bool g = m->norm_method == LLAMA_NORMS_GRAM ||
                 (m->norm_method == LLAMA_NORMS_AUTO && gr < mat);
        m->gram[i] = g;
        m->n_gram += g;
        m->book_off[i] = total;
        total += s_r16(s_book_floats(m, lo, g));
    }
    double *sqn = realloc(m->sqn, (size_t)m->B * sizeof *sqn);
    if (sqn == NULL)
        return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for the DP book");
    m->sqn = sqn;
    memset(sqn, 0, (size_t)m->B * sizeof *sqn);
    size_t gt = m->n_gram ? 2 * T * T : 0;
    if (gt > m->gt_cap) {
        float *t = realloc(m->gt, gt * sizeof(float));
        if (t == NULL)
            return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for the DP Gram scratch");
        m->gt = t;
        m->gt_cap = gt;
    }
    if (total > m->book_cap) {
        float *b = realloc(m->book, total * sizeof(float));
        if (b == NULL)
            return medfl_error_set(MEDFL_ENOMEM,
                                   "llama: out of memory for the DP book (%zu MB)",
                                   total * sizeof(float) >> 20);
        m->book = b;
        m->book_cap = total;
    }
    return 0;
}

/* sum_ij X[i, j] Y[i, j] over n floats, in double. */
static double s_dot(const float *x, const float *y, size_t n)
{
    double acc = 0.0;
    for (size_t i = 0; i < n; i++)
        acc += (double)x[i] * y[i];
    return acc;
}

/* G [T, T] = Y Y^T for Y = the T rows (of width w) of example e in Z [N, w]. */
static void s_gram(llama_t *m, const float *Z, int w, int e, float *G)
{
    int T = m->T;
    const float *Y = Z + (size_t)e * T * w;
    m->be->sgemm(m->be, false, true, T, T, w, 1.0f, Y, w, Y, w, 0.0f, G, T);
}

/* Book mode of s_lora_bwd_weights: adds adapter lo's share of every ||g_e||^2 to sqn and
 * keeps what llama_clipped_sum needs. */
static void s_book_adapter(llama_t *m, const s_lora *lo, const float *x, const float *u,
                           const float *dy, const float *dU)
{
    backend_t *be = m->be;
    size_t i = (size_t)(lo - m->lora), T = (size_t)m->T, N = (size_t)m->B * T;
    int r = m->cfg.lora_r;
    float *bk = m->book + m->book_off[i];
    if (m->gram[i]) {
        /* ||dB_e||^2 = (s k)^2 <G(g), G(u)>,  ||dA_e||^2 = k^2 <G(B^T g s), G(x)> */
        float *G1 = m->gt, *G2 = m->gt + T * T;
        for (int e = 0; e < m->B; e++) {
            double k = s_k(m, e);
            if (k == 0.0)
                continue;
            s_gram(m, dy, lo->out, e, G1);
            s_gram(m, u, r, e, G2);
            double nb = s_dot(G1, G2, T * T) * m->scaling * m->scaling;
            s_gram(m, dU, r, e, G1);
            s_gram(m, x, lo->in, e, G2);
            m->sqn[e] += k * k * (nb + s_dot(G1, G2, T * T));
        }
        memcpy(bk, dy, N * lo->out * sizeof(float));
        memcpy(bk + N * lo->out, dU, N * r * sizeof(float));
        memcpy(bk + N * (lo->out + r), x, N * lo->in * sizeof(float));
        return;
    }
    /* materialised: example e's dB [out, r] then dA [r, in] at bk + e * r (out + in) */
    size_t per = (size_t)r * (lo->out + lo->in);
    for (int e = 0; e < m->B; e++) {
        float k = s_k(m, e), *gb = bk + e * per, *ga = gb + (size_t)lo->out * r;
        size_t r0 = (size_t)e * T;
        be->sgemm(be, true, false, lo->out, r, (int)T, m->scaling * k, dy + r0 * lo->out,
                  lo->out, u + r0 * r, r, 0.0f, gb, r);
        be->sgemm(be, true, false, r, lo->in, (int)T, k, dU + r0 * r, r, x + r0 * lo->in,
                  lo->in, 0.0f, ga, lo->in);
        m->sqn[e] += s_dot(gb, gb, per);
    }
}

/* Weight part of the adapter's backward, given dy [N, out], the saved u [N, r], the input
 * x [N, in]:  dU = s * dy @ B [N, r] (kept for s_lora_bwd_input);
 *   batch:        dB += s * dy^T @ u [out, r],   dA += dU^T @ x [r, in]
 *   per example:  the same over example e's T rows, times n / n_e (the gradient of e's own
 *                 mean loss, as dy is that of the batch mean), into m->pe row e. */
static void s_lora_bwd_weights(llama_t *m, const s_lora *lo, const float *x, const float *u,
                               const float *dy, float *dU, int N)
{
    backend_t *be = m->be;
    int r = m->cfg.lora_r;
    const float *Bm = m->params + lo->off_b;
    be->sgemm(be, false, false, N, r, lo->out, m->scaling, dy, lo->out, Bm, r, 0.0f, dU, r);
    if (m->bk) {
        s_book_adapter(m, lo, x, u, dy, dU);
        return;
    }
    if (m->pe == NULL) {
        be->sgemm(be, true, false, lo->out, r, N, m->scaling, dy, lo->out, u, r, 1.0f,
                  m->grads + lo->off_b, r);
        be->sgemm(be, true, false, r, lo->in, N, 1.0f, dU, r, x, lo->in, 1.0f,
                  m->grads + lo->off_a, lo->in);
        return;
    }
    int T = m->T;
    for (int e = 0; e < m->B; e++) {
        if (m->n_lab[e] == 0)
            continue; /* stays zero */
        float k = (float)m->n_lab_total / (float)m->n_lab[e];
        size_t r0 = (size_t)e * T;
        float *pe = m->pe + (size_t)e * m->tr_numel;
        be->sgemm(be, true, false, lo->out, r, T, m->scaling * k, dy + r0 * lo->out, lo->out,
                  u + r0 * r, r, 0.0f, pe + lo->off_b, r);
        be->sgemm(be, true, false, r, lo->in, T, k, dU + r0 * r, r, x + r0 * lo->in, lo->in,
                  0.0f, pe + lo->off_a, lo->in);
    }
}

/* Input part: dx[N, in] += dU @ A. */
static void s_lora_bwd_input(llama_t *m, const s_lora *lo, const float *dU, float *dx, int N)
{
    int r = m->cfg.lora_r;
    m->be->sgemm(m->be, false, false, N, lo->in, r, 1.0f, dU, r, m->params + lo->off_a, lo->in,
                 1.0f, dx, lo->in);
}

/* y [N, out] = x W^T (+ bias) (+ adapter of target t of layer l). */
static void s_proj(llama_t *m, int l, int t, const s_weight *w, const float *bias,
                   const float *x, float *y, float beta)
{
    int N = m->B * m->T;
    const s_lora *lo = &m->lora[l * LLAMA_N_TARGETS + t];
    s_base_mm(m, w, x, N, y, beta);
    if (bias)
        s_add_bias(y, bias, N, w->rows);
    if (lo->on)
        s_lora_fwd(m, lo, x, m->act[l].lu[t], y, N);
}

/* ------------------------------------------------------------------ attention */

/* S[b, h] [T, T] = Q_bh [T, D] @ K_{b, h/G}^T for every (b, h): per group member g one batched
 * product over (b, kv head), reading heads in place from the [N, QD] and [N, KD] rows. */
static void s_scores(llama_t *m, const float *q, const float *k, float *S)
{
    int B = m->B, T = m->T, D = m->D, H = m->cfg.n_heads, KV = m->cfg.n_kv_heads, G = m->G;
    long TT = (long)T * T;
    for (int g = 0; g < G; g++)
        m->be->sgemm_batched(m->be, false, true, T, T, D, 1.0f, q + g * D, m->QD,
                             (long)T * m->QD, (long)G * D, k, m->KD, (long)T * m->KD, D, 0.0f,
                             S + g * TT, T, H * TT, G * TT, B, KV);
}

/* out[b, :, h] [T, D] (row stride ldo, head stride D) = P_bh [T, T] @ M_{b, h/G} [T, D] where
 * M has rows [N, KD]: ctx = P V in the forward, dQ = dS K in the backward. */
static void s_probs_times_kv(llama_t *m, const float *P, const float *M, float *out)
{
    int B = m->B, T = m->T, D = m->D, H = m->cfg.n_heads, KV = m->cfg.n_kv_heads, G = m->G;
    long TT = (long)T * T;
    for (int g = 0; g < G; g++)
        m->be->sgemm_batched(m->be, false, false, T, D, T, 1.0f, P + g * TT, T, H * TT, G * TT,
                             M, m->KD, (long)T * m->KD, D, 0.0f, out + g * D, m->QD,
                             (long)T * m->QD, (long)G * D, B, KV);
}

/* out_{b, kv} [T, D] = sum over the G heads h of kv: P_bh^T [T, T] @ M_bh [T, D], M with rows
 * [N, QD]: dV = P^T dctx and dK = dS^T Q in the backward (GQA sums the group's heads). */
static void s_probs_t_times_q(llama_t *m, const float *P, const float *M, float *out)
{
    int B = m->B, T = m->T, D = m->D, H = m->cfg.n_heads, KV = m->cfg.n_kv_heads, G = m->G;
    long TT = (long)T * T;
    for (int g = 0; g < G; g++)
        m->be->sgemm_batched(m->be, true, false, T, D, T, 1.0f, P + g * TT, T, H * TT, G * TT,
                             M + g * D, m->QD, (long)T * m->QD, (long)G * D, g ? 1.0f : 0.0f,
                             out, m->KD, (long)T * m->KD, D, B, KV);
}

/* ------------------------------------------------------------------ layer forward/backward */

/* gate and up outputs [N, F] of layer l from xn = RMSNorm(h) (also the adapters' u). */
static void s_mlp_in(llama_t *m, int l, const float *xn, float *g, float *u)
{
    const s_layer_w *w = &m->lw[l];
    s_proj(m, l, T_GATE, &w->wg, NULL, xn, g, 0.0f);
    s_proj(m, l, T_UP, &w->wu, NULL, xn, u, 0.0f);
}

/* One decoder layer, pre-norm (HF LlamaDecoderLayer):
 *   h   = x + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))), n1 = RMSNorm(x)
 *   out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                n2 = RMSNorm(h)
 * x [N, C] (stored in act[l].x) -> out [N, C]; every projection is frozen Linear + optional
 * LoRA. */
static void s_layer_forward(llama_t *m, int l, float *out)
{
    const llama_config_t *c = &m->cfg;
    const s_layer_w *w = &m->lw[l];
    s_layer_act *a = &m->act[l];
    const s_lora *lo = &m->lora[l * LLAMA_N_TARGETS];
    int N = m->B * m->T, C = c->hidden, F = c->ffn;

    /* n1 [N, C] = RMSNorm(x); q [N, QD], k, v [N, KD] (+bias, +LoRA); RoPE on q and k */
    s_rmsnorm_fwd(m->xn, a->rstd1, a->x, w->attn_norm, N, C, c->rms_eps);
    s_proj(m, l, T_Q, &w->wq, w->bq, m->xn, a->q, 0.0f);
    s_proj(m, l, T_K, &w->wk, w->bk, m->xn, a->k, 0.0f);
    s_proj(m, l, T_V, &w->wv, w->bv, m->xn, a->v, 0.0f);
    s_rope(m, a->q, c->n_heads, false);
    s_rope(m, a->k, c->n_kv_heads, false);

    /* P [B, H, T, T] = causal softmax(Q K^T / sqrt(D)) (keeps lse); ctx [N, QD] = P V */
    float *ctx = lo[T_O].on ? a->ctx : m->ctx;
    s_scores(m, a->q, a->k, m->S);
    s_softmax_causal_fwd(m, m->S, a->lse, 1.0f / sqrtf((float)m->D));
    s_probs_times_kv(m, m->S, a->v, ctx);

    /* h [N, C] = x + ctx Wo^T (+LoRA) */
    memcpy(a->h, a->x, (size_t)N * C * sizeof(float));
    s_proj(m, l, T_O, &w->wo, NULL, ctx, a->h, 1.0f);

    /* n2 = RMSNorm(h); g, u [N, F]; act = silu(g) * u; out = h + act Wd^T (+LoRA) */
    s_rmsnorm_fwd(m->xn, a->rstd2, a->h, w->ffn_norm, N, C, c->rms_eps);
    float *g = a->g ? a->g : m->gs, *u = a->u ? a->u : m->us;
    s_mlp_in(m, l, m->xn, g, u);
    s_swiglu_fwd(m->act_f, g, u, (size_t)N * F);
    memcpy(out, a->h, (size_t)N * C * sizeof(float));
    s_proj(m, l, T_DOWN, &w->wd, NULL, m->act_f, out, 1.0f);
}

/* Backward of s_layer_forward. m->d [N, C] holds d(out) on entry and d(x) on return when
 * need_dx (the lowest layer has nothing trainable below it and skips that part). Adapter
 * weight gradients go to the gradient buffer, or per example to m->pe. */
static void s_layer_backward(llama_t *m, int l, bool need_dx)
{
    const llama_config_t *c = &m->cfg;
    const s_layer_w *w = &m->lw[l];
    s_layer_act *a = &m->act[l];
    const s_lora *lo = &m->lora[l * LLAMA_N_TARGETS];
    int N = m->B * m->T, C = c->hidden, F = c->ffn;
    size_t NR = (size_t)N * c->lora_r;
    float *d = m->d;
    bool qkv_on = lo[T_Q].on || lo[T_K].on || lo[T_V].on;
    bool attn_bwd = need_dx || qkv_on;             /* gradient needed inside attention */
    bool need_dh = attn_bwd || lo[T_O].on;         /* d(h) beyond the residual */
    bool mlp_bwd = need_dh || lo[T_GATE].on || lo[T_UP].on;

    /* ---- MLP: out = h + down(act), act = silu(g) * u ---- */
    float *g = a->g, *u = a->u;
    if (g == NULL && (mlp_bwd || lo[T_DOWN].on)) { /* recompute_mlp: rebuild n2, g, u */
        s_rmsnorm_rebuild(m->xn, a->rstd2, a->h, w->ffn_norm, N, C);
        g = m->gs;
        u = m->us;
        s_mlp_in(m, l, m->xn, g, u);
    }
    if (lo[T_DOWN].on) {
        s_swiglu_fwd(m->act_f, g, u, (size_t)N * F);
        s_lora_bwd_weights(m, &lo[T_DOWN], m->act_f, a->lu[T_DOWN], d, m->dU + T_DOWN * NR, N);
    }
    if (mlp_bwd) {
        /* dact [N, F] = d [N, C] @ Wd [C, F] (+LoRA input part), into dg */
        s_base_mm_t(m, &w->wd, d, N, m->dg, 0.0f);
        if (lo[T_DOWN].on)
            s_lora_bwd_input(m, &lo[T_DOWN], m->dU + T_DOWN * NR, m->dg, N);
        s_swiglu_bwd(m->dg, m->du, g, u, (size_t)N * F);
        if (lo[T_GATE].on || lo[T_UP].on)
            s_rmsnorm_rebuild(m->xn, a->rstd2, a->h, w->ffn_norm, N, C);
        if (lo[T_GATE].on)
            s_lora_bwd_weights(m, &lo[T_GATE], m->xn, a->lu[T_GATE], m->dg,
                               m->dU + T_GATE * NR, N);
        if (lo[T_UP].on)
            s_lora_bwd_weights(m, &lo[T_UP], m->xn, a->lu[T_UP], m->du, m->dU + T_UP * NR, N);
    }
    if (!need_dh)
        return;
    /* dn2 [N, C] = dg Wg + du Wu (+LoRA input parts); d <- d(h) = d + RMSNorm2 backward */
    s_base_mm_t(m, &w->wg, m->dg, N, m->dxn, 0.0f);
    s_base_mm_t(m, &w->wu, m->du, N, m->dxn, 1.0f);
    if (lo[T_GATE].on)
        s_lora_bwd_input(m, &lo[T_GATE], m->dU + T_GATE * NR, m->dxn, N);
    if (lo[T_UP].on)
        s_lora_bwd_input(m, &lo[T_UP], m->dU + T_UP * NR, m->dxn, N);
    s_rmsnorm_bwd(d, m->dxn, a->h, a->rstd2, w->ffn_norm, N, C);

    /* ---- attention: h = x + o(ctx) ---- */
    if (lo[T_O].on)
        s_lora_bwd_weights(m, &lo[T_O], a->ctx, a->lu[T_O], d, m->dU + T_O * NR, N);
    if (!attn_bwd)
        return;
    /* dctx [N, QD] = d(h) @ Wo (+LoRA input part) */
    s_base_mm_t(m, &w->wo, d, N, m->dctx, 0.0f);
    if (lo[T_O].on)
        s_lora_bwd_input(m, &lo[T_O], m->dU + T_O * NR, m->dctx, N);

    /* P rebuilt: S = Q K^T, P = exp(S / sqrt(D) - lse) on the row's keys
     * dP [B, H, T, T] = dctx_bh @ V^T         dV [N, KD] = sum_group P^T dctx
     * dS = softmax backward (scale folded)    dQ [N, QD] = dS K,  dK [N, KD] = sum_group dS^T Q */
    float scale = 1.0f / sqrtf((float)m->D);
    bool need_q = need_dx || lo[T_Q].on, need_k = need_dx || lo[T_K].on,
         need_v = need_dx || lo[T_V].on;
    s_scores(m, a->q, a->k, m->S);
    s_softmax_causal_rebuild(m, m->S, a->lse, scale);
    s_scores(m, m->dctx, a->v, m->dS); /* same head mapping: dctx has Q's layout */
    if (need_v)
        s_probs_t_times_q(m, m->S, m->dctx, m->dv);
    s_softmax_bwd(m->dS, m->S, (size_t)m->B * c->n_heads * m->T, m->T, scale);
    if (need_q) {
        s_probs_times_kv(m, m->dS, a->k, m->dq);
        s_rope(m, m->dq, c->n_heads, true);
    }
    if (need_k) {
        s_probs_t_times_q(m, m->dS, a->q, m->dk);
        s_rope(m, m->dk, c->n_kv_heads, true);
    }

    /* adapters on q, k, v: input n1 rebuilt from x and rstd1 */
    if (qkv_on)
        s_rmsnorm_rebuild(m->xn, a->rstd1, a->x, w->attn_norm, N, C);
    float *dqkv[3] = {m->dq, m->dk, m->dv};
    for (int t = T_Q; t <= T_V; t++)
        if (lo[t].on)
            s_lora_bwd_weights(m, &lo[t], m->xn, a->lu[t], dqkv[t], m->dU + t * NR, N);
    if (!need_dx)
        return;
    /* dn1 [N, C] = dq Wq + dk Wk + dv Wv (+LoRA input parts); d <- d(x) = d + RMSNorm1 bwd */
    s_base_mm_t(m, &w->wq, m->dq, N, m->dxn, 0.0f);
    s_base_mm_t(m, &w->wk, m->dk, N, m->dxn, 1.0f);
    s_base_mm_t(m, &w->wv, m->dv, N, m->dxn, 1.0f);
    for (int t = T_Q; t <= T_V; t++)
        if (lo[t].on)
            s_lora_bwd_input(m, &lo[t], m->dU + t * NR, m->dxn, N);
    s_rmsnorm_bwd(d, m->dxn, a->x, a->rstd1, w->attn_norm, N, C);
}

/* ------------------------------------------------------------------ model forward/backward */

/* Validates the batch and fills len / tgt / n_lab. Messages name row and position, never a
 * token id's value beyond the range it broke (ids are not PHI but labels carry text). */
static int s_check_batch(llama_t *m, const llama_batch_t *in, bool need_labels)
{
    const llama_config_t *c = &m->cfg;
    if (in == NULL || in->ids == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama: batch needs ids");
    if (in->B < 1 || in->T < 1)
        return medfl_error_set(MEDFL_EINVAL, "llama: batch shape B=%d T=%d", in->B, in->T);
    if (in->T > c->max_seq)
        return medfl_error_set(MEDFL_EINVAL, "llama: sequence length %d exceeds max_seq %d",
                               in->T, c->max_seq);
    if (need_labels && in->labels == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama: training batch needs labels");
    if ((long long)in->B * in->T > 2147483647LL / (c->ffn > c->hidden ? c->ffn : c->hidden))
        return medfl_error_set(MEDFL_EINVAL, "llama: batch %d x %d too large", in->B, in->T);
    if (s_arena_for(m, in->B, in->T) != 0)
        return -1;
    int B = in->B, T = in->T;
    m->n_lab_total = 0;
    for (int b = 0; b < B; b++) {
        int len = T;
        m->n_lab[b] = 0;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (in->ids[i] < 0 || in->ids[i] >= c->vocab)
                return medfl_error_set(MEDFL_EINVAL,
                                       "llama: batch row %d position %d: token id outside "
                                       "vocabulary of %d", b, t, c->vocab);
            int mk = in->mask ? in->mask[i] : 1;
            if (mk != 0 && mk != 1)
                return medfl_error_set(MEDFL_EINVAL,
                                       "llama: batch row %d position %d: mask is not 0 or 1", b,
                                       t);
            if (mk == 0 && len == T)
                len = t;
            else if (mk == 1 && len < T)
                return medfl_error_set(MEDFL_EINVAL,
                                       "llama: batch row %d position %d: a real token after "
                                       "padding (padding must be on the right)", b, t);
            if (in->labels) {
                int32_t lb = in->labels[i];
                if (lb != LLAMA_IGNORE && (lb < 0 || lb >= c->vocab))
                    return medfl_error_set(MEDFL_EINVAL,
                                           "llama: batch row %d position %d: label outside "
                                           "vocabulary of %d and not %d", b, t, c->vocab,
                                           LLAMA_IGNORE);
                if (lb != LLAMA_IGNORE && mk == 0 && t > 0)
                    return medfl_error_set(MEDFL_EINVAL,
                                           "llama: batch row %d position %d: label on a "
                                           "padding token", b, t);
            }
        }
        m->len[b] = len;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            /* HF shift: position t predicts labels[t + 1]; position 0's label is never used */
            int32_t tg = in->labels && t + 1 < T ? in->labels[i + 1] : LLAMA_IGNORE;
            m->tgt[i] = tg;
            if (tg != LLAMA_IGNORE)
                m->n_lab[b]++;
        }
        m->n_lab_total += m->n_lab[b];
    }
    if (in->labels && m->n_lab_total == 0)
        return medfl_error_set(MEDFL_EINVAL,
                               "llama: batch has no labelled position (every label is %d): "
                               "the mean loss is undefined", LLAMA_IGNORE);
    return 0;
}

/* Embeddings and every layer; leaves the final residual in xf and RMSNorm(xf) in xn. */
static void s_decode(llama_t *m, const llama_batch_t *in)
{
    const llama_config_t *c = &m->cfg;
    int N = m->B * m->T;
    s_base_rows(&m->embed, in->ids, N, m->act[0].x);
    for (int l = 0; l < c->n_layers; l++)
        s_layer_forward(m, l, l + 1 < c->n_layers ? m->act[l + 1].x : m->xf);
    s_rmsnorm_fwd(m->xn, m->rstdf, m->xf, m->norm_f, N, c->hidden, c->rms_eps);
}

/* lm_head over the listed rows of xn in slices of R: logits = xn W^T; with targets, the
 * cross-entropy sum (double) and, when grad, d(xn) rows = (softmax - onehot) / n @ W written
 * to dxn (rows not listed stay 0). logits_out (host [N, V]) gets every listed row. */
static double s_head(llama_t *m, const int *rows, int n_rows, bool grad, float *logits_out)
{
    const llama_config_t *c = &m->cfg;
    int C = c->hidden, V = c->vocab, R = m->head_rows;
    double total = 0.0, inv_n = m->n_lab_total ? 1.0 / m->n_lab_total : 0.0;
    for (int r0 = 0; r0 < n_rows; r0 += R) {
        int nr = n_rows - r0 < R ? n_rows - r0 : R;
        for (int i = 0; i < nr; i++)
            memcpy(m->hx + (size_t)i * C, m->xn + (size_t)rows[r0 + i] * C,
                   (size_t)C * sizeof(float));
        s_base_mm(m, &m->lm_head, m->hx, nr, m->hl, 0.0f);
        for (int i = 0; i < nr; i++) {
            float *lg = m->hl + (size_t)i * V;
            int row = rows[r0 + i];
            if (logits_out)
                memcpy(logits_out + (size_t)row * V, lg, (size_t)V * sizeof(float));
            int32_t tg = m->tgt[row];
            if (tg == LLAMA_IGNORE) {
                if (grad)
                    memset(lg, 0, (size_t)V * sizeof(float));
                continue;
            }
            /* one pass of expf: the exponentials are the softmax numerators the gradient
             * needs, kept in place when grad */
            float mx = -INFINITY, target = lg[tg];
            for (int k = 0; k < V; k++)
                mx = fmaxf(mx, lg[k]);
            double sum = 0.0;
            for (int k = 0; k < V; k++) {
                float e = expf(lg[k] - mx);
                sum += e;
                if (grad)
                    lg[k] = e;
            }
            total += mx + log(sum) - target;
            if (grad) {
                float sc = (float)(inv_n / sum);
                for (int k = 0; k < V; k++)
                    lg[k] *= sc;
                lg[tg] -= (float)inv_n;
            }
        }
        if (grad) {
            s_base_mm_t(m, &m->lm_head, m->hl, nr, m->hd, 0.0f);
            for (int i = 0; i < nr; i++)
                memcpy(m->dxn + (size_t)rows[r0 + i] * C, m->hd + (size_t)i * C,
                       (size_t)C * sizeof(float));
        }
    }
    return total;
}

static int s_forward(llama_t *m, const llama_batch_t *in, float *loss, float *logits_out,
                     bool train)
{
    m->have_train = false;
    m->have_book = false;
    if (s_base_ready(m) != 0 || s_check_batch(m, in, train) != 0)
        return -1;
    s_decode(m, in);
    int N = m->B * m->T, n_rows = 0;
    for (int i = 0; i < N; i++)
        if (logits_out || m->tgt[i] != LLAMA_IGNORE)
            m->rows[n_rows++] = i;
    if (train)
        memset(m->dxn, 0, (size_t)N * m->cfg.hidden * sizeof(float));
    double t0 = m->be->profile ? s_now() : 0.0;
    double total = s_head(m, m->rows, n_rows, train, logits_out);
    if (m->be->profile)
        m->prof_head += s_now() - t0;
    if (loss && in->labels)
        *loss = (float)(total / m->n_lab_total);
    if (train) {
        /* d(final residual) = RMSNorm_f backward of d(xn) */
        memset(m->dxf, 0, (size_t)N * m->cfg.hidden * sizeof(float));
        s_rmsnorm_bwd(m->dxf, m->dxn, m->xf, m->rstdf, m->norm_f, N, m->cfg.hidden);
        m->have_train = true;
    }
    if (s_mm_check(m) != 0) {
        m->have_train = false;
        return -1;
    }
    return 0;
}

int llama_forward(llama_t *m, const llama_batch_t *in, float *loss, float *logits_out)
{
    return s_forward(m, in, loss, logits_out, false);
}

int llama_forward_train(llama_t *m, const llama_batch_t *in, float *loss)
{
    return s_forward(m, in, loss, NULL, true);
}

void llama_zero_grad(llama_t *m)
{
    m->be->memset0(m->be, m->grads, m->tr_numel * sizeof(float));
}

/* Lowest layer with an adapter: layers below it need no gradient at all. Every layer has
 * the same targets today, so this is 0; kept explicit for the need_dx rule. */
static int s_lowest_trainable_layer(const llama_t *m)
{
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < LLAMA_N_TARGETS; t++)
            if (m->lora[l * LLAMA_N_TARGETS + t].on)
                return l;
    return m->cfg.n_layers;
}

static int s_backward(llama_t *m, float *pe)
{
    if (!m->have_train)
        return medfl_error_set(MEDFL_ESTATE, "llama: backward needs llama_forward_train first");
    int N = m->B * m->T, low = s_lowest_trainable_layer(m);
    memcpy(m->d, m->dxf, (size_t)N * m->cfg.hidden * sizeof(float));
    m->pe = pe;
    for (int l = m->cfg.n_layers - 1; l >= low; l--)
        s_layer_backward(m, l, l > low);
    m->pe = NULL;
    return s_mm_check(m);
}

int llama_backward(llama_t *m)
{
    return s_backward(m, NULL);
}

int llama_backward_per_example(llama_t *m, float *per_example)
{
    if (per_example == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama: per-example buffer is NULL");
    if (!m->have_train)
        return medfl_error_set(MEDFL_ESTATE, "llama: backward needs llama_forward_train first");
    memset(per_example, 0, (size_t)m->B * m->tr_numel * sizeof(float));
    return s_backward(m, per_example);
}

int llama_labelled_count(const llama_t *m, int e)
{
    if (m->n_lab == NULL || e < 0 || e >= m->B)
        return medfl_error_set(MEDFL_EINVAL, "llama: no example %d in the last batch", e);
    return m->n_lab[e];
}

/* ------------------------------------------------------------------ DP-SGD (book-keeping) */

void llama_set_norm_method(llama_t *m, llama_norm_method_t method) { m->norm_method = method; }

int llama_per_example_norms(llama_t *m, float *norms_out)
{
    if (norms_out == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama: norms buffer is NULL");
    if (!m->have_train)
        return medfl_error_set(MEDFL_ESTATE, "llama: per-example norms need llama_forward_train first");
    m->have_book = false;
    if (s_book_plan(m) != 0)
        return -1;
    m->bk = true;
    int rc = s_backward(m, NULL);
    m->bk = false;
    if (rc != 0)
        return -1;
    for (int e = 0; e < m->B; e++)
        norms_out[e] = (float)sqrt(m->sqn[e]);
    m->have_book = true;
    return 0;
}

/* grads += sum_e scales[e] g_e of one adapter from its book entry. */
static void s_clipped_adapter(llama_t *m, size_t i, const float *scales)
{
    backend_t *be = m->be;
    const s_lora *lo = &m->lora[i];
    int r = m->cfg.lora_r, T = m->T, N = m->B * T;
    float *bk = m->book + m->book_off[i];
    float *gB = m->grads + lo->off_b, *gA = m->grads + lo->off_a;
    if (!m->gram[i]) {
        size_t nb = (size_t)lo->out * r, per = (size_t)r * (lo->out + lo->in);
        for (int e = 0; e < m->B; e++) {
            float w = scales[e];
            const float *gb = bk + e * per, *ga = gb + nb;
            if (w == 0.0f || m->n_lab[e] == 0)
                continue;
            for (size_t j = 0; j < nb; j++)
                gB[j] += w * gb[j];
            for (size_t j = 0; j < per - nb; j++)
                gA[j] += w * ga[j];
        }
        return;
    }
    /* rows of e in g and B^T g scaled by scales[e] k_e, then the batch products */
    float *dy = bk, *dU = bk + (size_t)N * lo->out, *x = dU + (size_t)N * r;
    for (int e = 0; e < m->B; e++) {
        float w = scales[e] * s_k(m, e);
        size_t r0 = (size_t)e * T;
        for (size_t j = r0 * lo->out; j < (r0 + T) * lo->out; j++)
            dy[j] *= w;
        for (size_t j = r0 * r; j < (r0 + T) * r; j++)
            dU[j] *= w;
    }
    const float *u = m->act[i / LLAMA_N_TARGETS].lu[i % LLAMA_N_TARGETS];
    be->sgemm(be, true, false, lo->out, r, N, m->scaling, dy, lo->out, u, r, 1.0f, gB, r);
    be->sgemm(be, true, false, r, lo->in, N, 1.0f, dU, r, x, lo->in, 1.0f, gA, lo->in);
}

int llama_clipped_sum(llama_t *m, const float *scales)
{
    if (scales == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama: clipping scales are NULL");
    if (!m->have_book)
        return medfl_error_set(MEDFL_ESTATE,
                               "llama: clipped sum needs llama_per_example_norms on the last "
                               "forward (and is formed once per batch)");
    for (int e = 0; e < m->B; e++)
        if (!isfinite(scales[e]) || scales[e] < 0.0f)
            return medfl_error_set(MEDFL_EINVAL,
                                   "llama: clipping scale of example %d is negative or not finite", e);
    for (size_t i = 0; i < (size_t)m->cfg.n_layers * LLAMA_N_TARGETS; i++)
        if (m->lora[i].on)
            s_clipped_adapter(m, i, scales);
    m->have_book = false;
    return 0;
}

int llama_norms_gram_count(const llama_t *m) { return m->n_gram; }

size_t llama_dp_book_bytes(const llama_t *m)
{
    return (m->book_cap + m->gt_cap) * sizeof(float) + (size_t)m->B * sizeof(double);
}

float *llama_grads(llama_t *m) { return m->grads; }

void llama_profile_get(const llama_t *m, double *base_s, double *head_s)
{
    *base_s = m->prof_base;
    *head_s = m->prof_head;
}

void llama_profile_reset(llama_t *m) { m->prof_base = m->prof_head = 0.0; }

/* ------------------------------------------------------------------ optimizer */

void llama_adamw_step(llama_t *m, const adamw_config_t *cfg, long step)
{
    long s = step < 1 ? 1 : step;
    m->be->adamw(m->be, m->params, m->grads, m->adam_m, m->adam_v, m->tr_numel,
                 adamw_lr_at(cfg, s), cfg->beta1, cfg->beta2, cfg->eps, cfg->weight_decay, s);
}

void llama_adamw_reset(llama_t *m)
{
    m->be->memset0(m->be, m->adam_m, m->tr_numel * sizeof(float));
    m->be->memset0(m->be, m->adam_v, m->tr_numel * sizeof(float));
}

/* ------------------------------------------------------------------ inference (KV cache) */

/* Generation: one sequence, tokens appended to a cache of every layer's keys (after RoPE)
 * and values, so each new token costs one pass over the weights and a dot product with the
 * cached keys instead of a forward over the whole prefix. No training arena, no stored
 * activations: a few rows of scratch sized for the tokens of the current call. */
struct llama_kv {
    int cap, len, L, KD;
    float *k, *v;                 /* [L, cap, KD] */
    size_t n_scratch;             /* tokens the scratch below holds */
    float *x, *xn, *rstd, *q, *ctx, *tmp, *g, *u, *lu, *att;
};

llama_kv_t *llama_kv_new(const llama_t *m, int capacity)
{
    if (capacity < 1 || capacity > m->cfg.max_seq) {
        medfl_error_set(MEDFL_EINVAL, "llama: KV cache of %d positions (1..%d)", capacity,
                        m->cfg.max_seq);
        return NULL;
    }
    llama_kv_t *kv = calloc(1, sizeof *kv);
    size_t n = (size_t)m->cfg.n_layers * capacity * m->KD;
    if (kv == NULL || !(kv->k = calloc(n, sizeof(float))) || !(kv->v = calloc(n, sizeof(float)))) {
        llama_kv_destroy(&kv);
        medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for a KV cache of %d positions",
                        capacity);
        return NULL;
    }
    kv->cap = capacity;
    kv->L = m->cfg.n_layers;
    kv->KD = m->KD;
    return kv;
}

static void s_kv_free_scratch(llama_kv_t *kv)
{
    float **p[] = {&kv->x, &kv->xn, &kv->rstd, &kv->q, &kv->ctx, &kv->tmp, &kv->g, &kv->u,
                   &kv->lu, &kv->att};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        free(*p[i]);
        *p[i] = NULL;
    }
    kv->n_scratch = 0;
}

void llama_kv_destroy(llama_kv_t **kv_p)
{
    if (kv_p == NULL || *kv_p == NULL)
        return;
    llama_kv_t *kv = *kv_p;
    *kv_p = NULL;
    s_kv_free_scratch(kv);
    free(kv->k);
    free(kv->v);
    free(kv);
}

int llama_kv_len(const llama_kv_t *kv) { return kv->len; }
void llama_kv_reset(llama_kv_t *kv) { kv->len = 0; }

static int s_kv_scratch(const llama_t *m, llama_kv_t *kv, size_t n)
{
    if (n <= kv->n_scratch)
        return 0;
    s_kv_free_scratch(kv);
    size_t C = m->cfg.hidden, F = m->cfg.ffn, QD = m->QD;
    size_t wide = C > QD ? C : QD;
    kv->x = malloc(n * C * sizeof(float));
    kv->xn = malloc(n * C * sizeof(float));
    kv->rstd = malloc(n * sizeof(float));
    kv->q = malloc(n * QD * sizeof(float));
    kv->ctx = malloc(n * QD * sizeof(float));
    kv->tmp = malloc(n * wide * sizeof(float));
    kv->g = malloc(n * F * sizeof(float));
    kv->u = malloc(n * F * sizeof(float));
    kv->lu = malloc(n * (size_t)m->cfg.lora_r * sizeof(float));
    kv->att = malloc((size_t)kv->cap * sizeof(float));
    if (!kv->x || !kv->xn || !kv->rstd || !kv->q || !kv->ctx || !kv->tmp || !kv->g || !kv->u ||
        !kv->lu || !kv->att) {
        s_kv_free_scratch(kv);
        return medfl_error_set(MEDFL_ENOMEM, "llama: out of memory for %zu decoding rows", n);
    }
    kv->n_scratch = n;
    return 0;
}

/* RoPE of rows [n, nh * D] at positions p0 .. p0 + n - 1 (the angles s_rope_tables uses). */
static void s_rope_at(const llama_t *m, float *X, int nh, int n, int p0)
{
    int D = m->D, half = D / 2;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < half; k++) {
            float ang = m->inv_freq[k] * (float)(p0 + i);
            float c = (float)cos((double)ang), sn = (float)sin((double)ang);
            for (int h = 0; h < nh; h++) {
                float *x = X + (size_t)i * nh * D + (size_t)h * D;
                float a = x[k], b = x[k + half];
                x[k] = a * c - b * sn;
                x[k + half] = b * c + a * sn;
            }
        }
}

/* y [n, out] = x W^T (+ bias) (+ adapter t of layer l, using the trained parameters). */
static void s_proj_inf(llama_t *m, llama_kv_t *kv, int l, int t, const s_weight *w,
                       const float *bias, const float *x, float *y, int n)
{
    const s_lora *lo = &m->lora[l * LLAMA_N_TARGETS + t];
    s_base_mm(m, w, x, n, y, 0.0f);
    if (bias)
        s_add_bias(y, bias, n, w->rows);
    if (lo->on)
        s_lora_fwd(m, lo, x, kv->lu, y, n);
}

/* Causal attention of n new rows (positions p0..) over the cache rows 0 .. p0 + i. */
static void s_attend_cached(const llama_t *m, llama_kv_t *kv, int l, int n, int p0)
{
    int H = m->cfg.n_heads, D = m->D, KD = m->KD, QD = m->QD;
    const float *K = kv->k + (size_t)l * kv->cap * KD, *Vc = kv->v + (size_t)l * kv->cap * KD;
    float scale = 1.0f / sqrtf((float)D), *p = kv->att;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            const float *q = kv->q + (size_t)i * QD + (size_t)h * D;
            size_t ko = (size_t)(h / m->G) * D;
            int nk = p0 + i + 1;
            float mx = -INFINITY;
            for (int j = 0; j < nk; j++) {
                const float *k = K + (size_t)j * KD + ko;
                float dot = 0.0f;
                for (int d = 0; d < D; d++)
                    dot += q[d] * k[d];
                p[j] = scale * dot;
                mx = fmaxf(mx, p[j]);
            }
            double sum = 0.0;
            for (int j = 0; j < nk; j++) {
                p[j] = expf(p[j] - mx);
                sum += p[j];
            }
            float inv = (float)(1.0 / sum), *o = kv->ctx + (size_t)i * QD + (size_t)h * D;
            memset(o, 0, (size_t)D * sizeof(float));
            for (int j = 0; j < nk; j++) {
                const float *v = Vc + (size_t)j * KD + ko;
                float pj = p[j] * inv;
                for (int d = 0; d < D; d++)
                    o[d] += pj * v[d];
            }
        }
}

static void s_layer_decode(llama_t *m, llama_kv_t *kv, int l, int n, int p0)
{
    const llama_config_t *c = &m->cfg;
    const s_layer_w *w = &m->lw[l];
    int C = c->hidden, F = c->ffn, KD = m->KD;
    float *kc = kv->k + ((size_t)l * kv->cap + p0) * KD;
    float *vc = kv->v + ((size_t)l * kv->cap + p0) * KD;
    s_rmsnorm_fwd(kv->xn, kv->rstd, kv->x, w->attn_norm, n, C, c->rms_eps);
    s_proj_inf(m, kv, l, T_Q, &w->wq, w->bq, kv->xn, kv->q, n);
    s_proj_inf(m, kv, l, T_K, &w->wk, w->bk, kv->xn, kc, n);
    s_proj_inf(m, kv, l, T_V, &w->wv, w->bv, kv->xn, vc, n);
    s_rope_at(m, kv->q, c->n_heads, n, p0);
    s_rope_at(m, kc, c->n_kv_heads, n, p0);
    s_attend_cached(m, kv, l, n, p0);
    s_proj_inf(m, kv, l, T_O, &w->wo, NULL, kv->ctx, kv->tmp, n);
    for (size_t i = 0; i < (size_t)n * C; i++)
        kv->x[i] += kv->tmp[i];
    s_rmsnorm_fwd(kv->xn, kv->rstd, kv->x, w->ffn_norm, n, C, c->rms_eps);
    s_proj_inf(m, kv, l, T_GATE, &w->wg, NULL, kv->xn, kv->g, n);
    s_proj_inf(m, kv, l, T_UP, &w->wu, NULL, kv->xn, kv->u, n);
    s_swiglu_fwd(kv->g, kv->g, kv->u, (size_t)n * F);
    s_proj_inf(m, kv, l, T_DOWN, &w->wd, NULL, kv->g, kv->tmp, n);
    for (size_t i = 0; i < (size_t)n * C; i++)
        kv->x[i] += kv->tmp[i];
}

int llama_decode(llama_t *m, llama_kv_t *kv, const int32_t *ids, int n, float *logits)
{
    const llama_config_t *c = &m->cfg;
    if (ids == NULL || n < 1 || logits == NULL)
        return medfl_error_set(MEDFL_EINVAL, "llama_decode: needs ids (n >= 1) and logits");
    if (kv->L != c->n_layers || kv->KD != m->KD)
        return medfl_error_set(MEDFL_EINVAL, "llama_decode: KV cache of another model");
    if (n > kv->cap - kv->len)
        return medfl_error_set(MEDFL_EINVAL, "llama_decode: %d more tokens exceed the KV "
                               "cache (%d of %d positions used)", n, kv->len, kv->cap);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab)
            return medfl_error_set(MEDFL_EINVAL, "llama_decode: token %d: id outside "
                                   "vocabulary of %d", i, c->vocab);
    if (s_base_ready(m) != 0 || s_kv_scratch(m, kv, (size_t)n) != 0)
        return -1;
    int p0 = kv->len, C = c->hidden;
    s_base_rows(&m->embed, ids, n, kv->x);
    for (int l = 0; l < c->n_layers; l++)
        s_layer_decode(m, kv, l, n, p0);
    /* only the last row's logits: RMSNorm_f then the lm_head */
    const float *last = kv->x + (size_t)(n - 1) * C;
    s_rmsnorm_fwd(kv->xn, kv->rstd, last, m->norm_f, 1, C, c->rms_eps);
    s_base_mm(m, &m->lm_head, kv->xn, 1, logits, 0.0f);
    if (s_mm_check(m) != 0)
        return -1;
    kv->len += n;
    return 0;
}
