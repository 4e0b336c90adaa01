/* GGUF -> llama_t; see llama_gguf.h. Tensor names (llama.cpp's LLM_TENSOR_NAMES for
 * LLM_ARCH_LLAMA) map one to one onto Hugging Face's; GGUF shapes are reversed (ne[0] is the
 * row length). */
#include "node/engine/llama_gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/quant.h"

/* llama.cpp name (printf pattern over the layer) -> Hugging Face name, and which weights
 * are matrices [out, in] (ne = {in, out}). */
typedef struct {
    const char *gguf, *hf;
} s_name_map;

static const s_name_map s_layer_names[] = {
    {"blk.%d.attn_norm.weight", "model.layers.%d.input_layernorm.weight"},
    {"blk.%d.attn_q.weight", "model.layers.%d.self_attn.q_proj.weight"},
    {"blk.%d.attn_k.weight", "model.layers.%d.self_attn.k_proj.weight"},
    {"blk.%d.attn_v.weight", "model.layers.%d.self_attn.v_proj.weight"},
    {"blk.%d.attn_output.weight", "model.layers.%d.self_attn.o_proj.weight"},
    {"blk.%d.ffn_norm.weight", "model.layers.%d.post_attention_layernorm.weight"},
    {"blk.%d.ffn_gate.weight", "model.layers.%d.mlp.gate_proj.weight"},
    {"blk.%d.ffn_up.weight", "model.layers.%d.mlp.up_proj.weight"},
    {"blk.%d.ffn_down.weight", "model.layers.%d.mlp.down_proj.weight"},
};
#define S_N_LAYER_NAMES (sizeof s_layer_names / sizeof s_layer_names[0])

static int s_u32_key(const gguf_t *f, const char *key, int lo, int *out)
{
    uint32_t v;
    if (gguf_get_u32(f, key, &v) != 0)
        return -1;
    if (v < (uint32_t)lo || v > (1u << 24))
        return medfl_error_set(MEDFL_EFORMAT, "%s: metadata key '%s' is out of range (%d..%u)",
                               gguf_origin(f), key, lo, 1u << 24);
    *out = (int)v;
    return 0;
}

static int s_opt_f32(const gguf_t *f, const char *key, float *out)
{
    if (gguf_find_key(f, key) < 0)
        return 0;
    double v;
    if (gguf_get_f64(f, key, &v) != 0)
        return -1;
    if (!(v > 0.0) || !isfinite(v))
        return medfl_error_set(MEDFL_EFORMAT, "%s: metadata key '%s' must be positive and "
                               "finite", gguf_origin(f), key);
    *out = (float)v;
    return 0;
}

static int s_rope_scaling(const gguf_t *f, llama_config_t *c)
{
    const char *type;
    if (gguf_find_key(f, "llama.rope.scaling.type") < 0)
        return 0;
    if (gguf_get_str(f, "llama.rope.scaling.type", &type, NULL) != 0)
        return -1;
    if (strcmp(type, "none") == 0)
        return 0;
    if (strcmp(type, "linear") != 0)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: RoPE scaling '%.32s' is not supported "
                               "(none, linear)", gguf_origin(f), type);
    c->rope_type = LLAMA_ROPE_LINEAR;
    c->rope_factor = 1.0f;
    if (gguf_get_f32(f, "llama.rope.scaling.factor", &c->rope_factor) != 0)
        return -1;
    if (!(c->rope_factor > 0.0f) || !isfinite(c->rope_factor))
        return medfl_error_set(MEDFL_EFORMAT, "%s: llama.rope.scaling.factor must be positive",
                               gguf_origin(f));
    return 0;
}

int llama_gguf_config(const gguf_t *f, llama_config_t *c)
{
    const char *arch;
    size_t arch_len;
    if (gguf_get_str(f, "general.architecture", &arch, &arch_len) != 0)
        return -1;
    if (strcmp(arch, "llama") != 0)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: architecture '%.32s' is not supported "
                               "(llama)", gguf_origin(f), arch);
    int kv = 0, rope_dim = 0;
    if (s_u32_key(f, "llama.block_count", 1, &c->n_layers) != 0 ||
        s_u32_key(f, "llama.embedding_length", 1, &c->hidden) != 0 ||
        s_u32_key(f, "llama.feed_forward_length", 1, &c->ffn) != 0 ||
        s_u32_key(f, "llama.attention.head_count", 1, &c->n_heads) != 0 ||
        s_u32_key(f, "llama.context_length", 1, &c->max_seq) != 0)
        return -1;
    if (gguf_find_key(f, "llama.attention.head_count_kv") >= 0) {
        if (s_u32_key(f, "llama.attention.head_count_kv", 1, &kv) != 0)
            return -1;
    } else {
        kv = c->n_heads; /* llama.cpp's default: no GQA */
    }
    c->n_kv_heads = kv;
    c->head_dim = c->hidden / c->n_heads;
    if (gguf_find_key(f, "llama.attention.key_length") >= 0 &&
        s_u32_key(f, "llama.attention.key_length", 2, &c->head_dim) != 0)
        return -1;
    if (gguf_find_key(f, "llama.rope.dimension_count") >= 0) {
        if (s_u32_key(f, "llama.rope.dimension_count", 2, &rope_dim) != 0)
            return -1;
        if (rope_dim != c->head_dim)
            return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: llama.rope.dimension_count differs "
                                   "from the head size (partial RoPE is not supported)",
                                   gguf_origin(f));
    }
    c->rms_eps = 1e-5f;
    if (gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &c->rms_eps) != 0)
        return -1;
    if (!(c->rms_eps > 0.0f) || !isfinite(c->rms_eps))
        return medfl_error_set(MEDFL_EFORMAT, "%s: llama.attention.layer_norm_rms_epsilon must "
                               "be positive", gguf_origin(f));
    c->rope_theta = 10000.0f; /* llama.cpp's default */
    c->rope_type = LLAMA_ROPE_DEFAULT;
    if (s_opt_f32(f, "llama.rope.freq_base", &c->rope_theta) != 0 || s_rope_scaling(f, c) != 0)
        return -1;
    gguf_vtype_t et;
    uint64_t n_tok;
    if (gguf_get_arr(f, "tokenizer.ggml.tokens", &et, &n_tok) != 0)
        return -1;
    if (n_tok < 1 || n_tok > (1u << 24))
        return medfl_error_set(MEDFL_EFORMAT, "%s: tokenizer.ggml.tokens has %llu entries",
                               gguf_origin(f), (unsigned long long)n_tok);
    c->vocab = (int)n_tok;
    if (gguf_find_key(f, "llama.vocab_size") >= 0) {
        int vs;
        if (s_u32_key(f, "llama.vocab_size", 1, &vs) != 0)
            return -1;
        if (vs != c->vocab)
            return medfl_error_set(MEDFL_EFORMAT, "%s: llama.vocab_size (%d) differs from the "
                                   "%d tokens of tokenizer.ggml.tokens", gguf_origin(f), vs,
                                   c->vocab);
    }
    c->tie_embeddings = gguf_find_tensor(f, "output.weight") == NULL;
    c->qkv_bias = false;
    return 0;
}

/* The tensor `name` with ne = {d0, d1} (d1 = 0: a vector) and a type the decoder computes
 * with. */
static const gguf_tensor_t *s_tensor(const gguf_t *f, const char *name, int d0, int d1)
{
    const gguf_tensor_t *t = gguf_get_tensor(f, name);
    if (t == NULL)
        return NULL;
    int nd = d1 ? 2 : 1;
    bool ok = t->n_dims == nd && t->ne[0] == (uint64_t)d0 && (d1 == 0 || t->ne[1] == (uint64_t)d1);
    if (!ok) {
        medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' has shape [%llu, %llu] (GGUF order), "
                        "expected [%d, %d] from the metadata", gguf_origin(f), name,
                        (unsigned long long)t->ne[0],
                        (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1), d0, d1 ? d1 : 1);
        return NULL;
    }
    if (!quant_supported(t->type)) {
        medfl_error_set(MEDFL_EUNSUPPORTED, "%s: tensor '%s' is of type %s, not supported (F32, "
                        "F16, BF16, Q8_0, Q4_0, Q4_1)", gguf_origin(f), name,
                        quant_type_name(t->type));
        return NULL;
    }
    if (nd == 2 && quant_row_bytes(t->type, (size_t)d0) == 0) {
        medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': rows of %d values are not whole %s "
                        "blocks", gguf_origin(f), name, d0, quant_type_name(t->type));
        return NULL;
    }
    return t;
}

/* Walks every (GGUF tensor, HF name, ne0, ne1) the config needs. */
typedef int (*s_visit_fn)(void *ctx, const gguf_t *f, const gguf_tensor_t *t, const char *hf,
                          int kv_heads_for_perm);

static int s_each_tensor(const gguf_t *f, const llama_config_t *c, s_visit_fn fn, void *ctx)
{
    int C = c->hidden, F = c->ffn, D = c->head_dim, QD = c->n_heads * D, KD = c->n_kv_heads * D;
    size_t n_expected = 2 + (c->tie_embeddings ? 0 : 1);
    const gguf_tensor_t *t;
    if (!(t = s_tensor(f, "token_embd.weight", C, c->vocab)) ||
        fn(ctx, f, t, "model.embed_tokens.weight", 0) != 0)
        return -1;
    if (!(t = s_tensor(f, "output_norm.weight", C, 0)) || fn(ctx, f, t, "model.norm.weight", 0))
        return -1;
    if (!c->tie_embeddings &&
        (!(t = s_tensor(f, "output.weight", C, c->vocab)) || fn(ctx, f, t, "lm_head.weight", 0)))
        return -1;
    const int d0[S_N_LAYER_NAMES] = {C, C, C, C, QD, C, C, C, F};
    const int d1[S_N_LAYER_NAMES] = {0, QD, KD, KD, C, 0, F, F, C};
    const int perm[S_N_LAYER_NAMES] = {0, c->n_heads, c->n_kv_heads, 0, 0, 0, 0, 0, 0};
    char gn[96], hn[128];
    for (int l = 0; l < c->n_layers; l++)
        for (size_t i = 0; i < S_N_LAYER_NAMES; i++) {
            snprintf(gn, sizeof gn, s_layer_names[i].gguf, l);
            snprintf(hn, sizeof hn, s_layer_names[i].hf, l);
            if (!(t = s_tensor(f, gn, d0[i], d1[i])) || fn(ctx, f, t, hn, perm[i]) != 0)
                return -1;
            n_expected++;
        }
    if (gguf_tensor_count(f) != n_expected) {
        /* name the first tensor the decoder would silently ignore */
        for (size_t i = 0; i < gguf_tensor_count(f); i++) {
            const char *nm = gguf_tensor_at(f, i)->name;
            int l;
            char rest[64];
            bool known = !strcmp(nm, "token_embd.weight") || !strcmp(nm, "output_norm.weight") ||
                         !strcmp(nm, "output.weight");
            if (!known && sscanf(nm, "blk.%d.%63s", &l, rest) == 2 && l >= 0 && l < c->n_layers)
                for (size_t k = 0; k < S_N_LAYER_NAMES; k++)
                    if (!strcmp(rest, s_layer_names[k].gguf + 7)) /* after "blk.%d." */
                        known = true;
            if (!known)
                return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: tensor '%s' is not part of the "
                                       "llama decoder (unsupported variant)", gguf_origin(f), nm);
        }
    }
    return 0;
}

static int s_check_one(void *ctx, const gguf_t *f, const gguf_tensor_t *t, const char *hf,
                       int perm)
{
    (void)ctx, (void)f, (void)t, (void)hf, (void)perm;
    return 0;
}

int llama_gguf_check_tensors(const gguf_t *f, const llama_config_t *cfg)
{
    return s_each_tensor(f, cfg, s_check_one, NULL);
}

/* HF row r of a q/k matrix with nh heads of size D comes from GGUF row order[r]: llama.cpp
 * stores each head's rows interleaved (pairs (2i, 2i+1)), HF as halves (i, i + D/2). */
static int32_t *s_unpermute_order(int nh, int D)
{
    int32_t *o = malloc((size_t)nh * D * sizeof *o);
    if (o == NULL)
        return NULL;
    int half = D / 2;
    for (int h = 0; h < nh; h++)
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < half; i++)
                o[h * D + j * half + i] = h * D + 2 * i + j;
    return o;
}

typedef struct {
    llama_t *m;
    bool dequantize;
    int D;
} s_load_ctx;

static int s_load_one(void *vctx, const gguf_t *f, const gguf_tensor_t *t, const char *hf,
                      int perm_heads)
{
    s_load_ctx *ctx = vctx;
    size_t cols = (size_t)t->ne[0], rows = (size_t)gguf_tensor_rows(t);
    int32_t *order = perm_heads ? s_unpermute_order(perm_heads, ctx->D) : NULL;
    if (perm_heads && order == NULL)
        return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", gguf_origin(f));
    int rc = 0;
    if (t->n_dims == 2 && !ctx->dequantize) {
        rc = llama_base_set_quant(ctx->m, hf, t->type, t->data, t->n_bytes, order);
    } else {
        float *buf = malloc(rows * cols * sizeof(float));
        size_t rb = quant_row_bytes(t->type, cols);
        if (buf == NULL)
            rc = medfl_error_set(MEDFL_ENOMEM, "%s: out of memory for tensor '%s'",
                                 gguf_origin(f), t->name);
        for (size_t r = 0; rc == 0 && r < rows; r++) {
            size_t src = order ? (size_t)order[r] : r;
            rc = quant_dequantize_row(t->type, (const char *)t->data + src * rb, buf + r * cols,
                                      cols);
        }
        if (rc == 0)
            rc = llama_base_set(ctx->m, hf, buf, rows * cols);
        free(buf);
    }
    free(order);
    if (rc != 0)
        medfl_error_prefix("%s: tensor '%s': ", gguf_origin(f), t->name);
    return rc;
}

static void s_release_gguf(void *p)
{
    gguf_t *f = p;
    gguf_destroy(&f);
}

llama_t *llama_from_gguf(const char *path, const llama_gguf_opts_t *opts, backend_t *be)
{
    gguf_t *f = gguf_open(path);
    if (f == NULL)
        return NULL;
    llama_config_t c;
    llama_config_default(&c);
    llama_gguf_opts_t o = opts ? *opts : (llama_gguf_opts_t){0};
    if (o.lora_r > 0) {
        c.lora_r = o.lora_r;
        c.lora_alpha = 2.0f * (float)o.lora_r;
    }
    if (o.lora_alpha > 0.0f)
        c.lora_alpha = o.lora_alpha;
    if (o.lora_targets)
        c.lora_targets = o.lora_targets;
    llama_t *m = NULL;
    if (llama_gguf_config(f, &c) != 0 || llama_config_check(&c) != 0 ||
        llama_gguf_check_tensors(f, &c) != 0)
        goto fail;
    m = o.dequantize ? llama_new(&c, be) : llama_new_quant(&c, be);
    if (m == NULL)
        goto fail;
    s_load_ctx ctx = {m, o.dequantize, c.head_dim};
    if (s_each_tensor(f, &c, s_load_one, &ctx) != 0)
        goto fail;
    if (o.dequantize)
        gguf_destroy(&f);
    else
        llama_keep(m, f, s_release_gguf); /* the borrowed blocks live in the mapping */
    return m;
fail:
    llama_destroy(&m);
    gguf_destroy(&f);
    return NULL;
}
