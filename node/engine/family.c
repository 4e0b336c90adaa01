/* The model-family tables (see family.h): the one place that spells a family's target
 * modules and tensor-name prefixes, and the glue from the type-erased ops to each model. */
#include "node/engine/family.h"

#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/llama.h"
#include "node/engine/model.h"

/* ------------------------------------------------------------------ BERT encoder */

static int s_bert_forward(void *m, const void *batch, float *loss)
{
    return model_forward(m, batch, loss, NULL);
}
static int s_bert_backward(void *m) { return model_backward(m); }
static int s_bert_per_example(void *m, float *out) { return model_backward_per_example(m, out); }

/* BertModel as Hugging Face names it; the LORA_* bits of model.h follow this order. */
static const model_family_t s_bert = {
    .name = "bert",
    .hf_arch = "BertModel",
    .layer_path = "encoder.layer",
    .peft_prefix = "base_model.model.",
    .gguf_block = NULL,
    .head_only_allowed = true,
    .default_targets = LORA_QUERY | LORA_VALUE,
    .n_targets = 6,
    .targets = {{"query", "attention.self.query", "query", NULL},
                {"key", "attention.self.key", "key", NULL},
                {"value", "attention.self.value", "value", NULL},
                {"attn_out", "attention.output.dense", "attention.output.dense", NULL},
                {"ffn_in", "intermediate.dense", "intermediate.dense", NULL},
                {"ffn_out", "output.dense", "output.dense", NULL}},
    .ops = {s_bert_forward, s_bert_backward, s_bert_per_example},
};
_Static_assert(LORA_QUERY == 1 << 0 && LORA_ATTN_OUT == 1 << 3 && LORA_FFN_OUT == 1 << 5 &&
                   LORA_ALL == (1 << 6) - 1 && MODEL_N_TARGETS == 6,
               "model.h's LORA_* bits follow s_bert.targets");

/* ------------------------------------------------------------------ Llama decoder */

static int s_llama_forward(void *m, const void *batch, float *loss)
{
    return llama_forward_train(m, batch, loss);
}
static int s_llama_backward(void *m) { return llama_backward(m); }
static int s_llama_per_example(void *m, float *out) { return llama_backward_per_example(m, out); }

/* LlamaForCausalLM (and Qwen2ForCausalLM: same names), GGUF names as llama.cpp writes them;
 * the LLAMA_LORA_* bits of llama.h follow this order. */
static const model_family_t s_llama = {
    .name = "llama",
    .hf_arch = "LlamaForCausalLM",
    .layer_path = "model.layers",
    .peft_prefix = "base_model.model.",
    .gguf_block = "blk",
    .head_only_allowed = false,
    .default_targets = LLAMA_LORA_Q | LLAMA_LORA_V,
    .n_targets = 7,
    .targets = {{"q", "self_attn.q_proj", "q_proj", "attn_q"},
                {"k", "self_attn.k_proj", "k_proj", "attn_k"},
                {"v", "self_attn.v_proj", "v_proj", "attn_v"},
                {"o", "self_attn.o_proj", "o_proj", "attn_output"},
                {"gate", "mlp.gate_proj", "gate_proj", "ffn_gate"},
                {"up", "mlp.up_proj", "up_proj", "ffn_up"},
                {"down", "mlp.down_proj", "down_proj", "ffn_down"}},
    .ops = {s_llama_forward, s_llama_backward, s_llama_per_example},
};
_Static_assert(LLAMA_LORA_Q == 1 << 0 && LLAMA_LORA_O == 1 << 3 && LLAMA_LORA_DOWN == 1 << 6 &&
                   LLAMA_LORA_ALL == (1 << 7) - 1 && LLAMA_N_TARGETS == 7,
               "llama.h's LLAMA_LORA_* bits follow s_llama.targets");

/* ------------------------------------------------------------------ lookups */

const model_family_t *family_bert(void) { return &s_bert; }
const model_family_t *family_llama(void) { return &s_llama; }

const model_family_t *family_find(const char *name)
{
    static const model_family_t *const all[] = {&s_bert, &s_llama};
    for (size_t i = 0; name && i < sizeof all / sizeof all[0]; i++)
        if (strcmp(name, all[i]->name) == 0) return all[i];
    medfl_error_set(MEDFL_EINVAL, "model family '%.40s' unknown (expected bert or llama)",
                    name ? name : "(null)");
    return NULL;
}

unsigned family_targets_all(const model_family_t *f) { return (1u << f->n_targets) - 1; }

static int s_find_n(const model_family_t *f, const char *p, size_t len)
{
    for (int t = 0; t < f->n_targets; t++) {
        const family_target_t *x = &f->targets[t];
        const char *names[3] = {x->config, x->peft, x->module};
        for (int k = 0; k < 3; k++)
            if (strlen(names[k]) == len && strncmp(p, names[k], len) == 0) return t;
    }
    return -1;
}

int family_target_find(const model_family_t *f, const char *name)
{
    return name ? s_find_n(f, name, strlen(name)) : -1;
}

/* "query, key, value, ..., all" (the config names), for error messages. */
static void s_expected(const model_family_t *f, char *out, size_t size)
{
    size_t n = 0;
    out[0] = '\0';
    for (int t = 0; t < f->n_targets && n < size; t++)
        n += (size_t)snprintf(out + n, size - n, "%s, ", f->targets[t].config);
    if (n < size)
        snprintf(out + n, size - n, "all%s", f->head_only_allowed ? ", or none alone" : "");
}

int family_targets_parse(const model_family_t *f, const char *list, unsigned *out)
{
    char expected[256];
    unsigned mask = 0;
    if (list == NULL || out == NULL)
        return medfl_error_set(MEDFL_EINVAL, "lora targets: empty list");
    if (f->head_only_allowed && strcmp(list, "none") == 0) { /* only the task head trains */
        *out = 0;
        return 0;
    }
    for (const char *p = list; *p;) {
        p += strspn(p, ", ");
        if (!*p) break;
        size_t len = strcspn(p, ", ");
        int t = s_find_n(f, p, len);
        if (t >= 0) {
            mask |= 1u << t;
        } else if (len == 3 && strncmp(p, "all", 3) == 0) {
            mask |= family_targets_all(f);
        } else {
            s_expected(f, expected, sizeof expected);
            return medfl_error_set(MEDFL_EINVAL,
                                   "lora targets: unknown %s target '%.*s' (expected %s)",
                                   f->name, (int)(len > 40 ? 40 : len), p, expected);
        }
        p += len;
    }
    if (mask == 0) return medfl_error_set(MEDFL_EINVAL, "lora targets: empty list");
    *out = mask;
    return 0;
}

size_t family_targets_names(const model_family_t *f, unsigned mask, const char *names[])
{
    size_t n = 0;
    for (int t = 0; t < f->n_targets; t++)
        if (mask & (1u << t)) names[n++] = f->targets[t].config;
    return n;
}

static int s_fits(int n, size_t size, const char *what)
{
    if (n < 0 || (size_t)n >= size)
        return medfl_error_set(MEDFL_EINVAL, "%s name longer than %zu bytes", what, size);
    return 0;
}

static int s_check_index(const model_family_t *f, int l, int t)
{
    if (l < 0 || t < 0 || t >= f->n_targets)
        return medfl_error_set(MEDFL_EINVAL, "%s: layer %d, target %d out of range", f->name, l,
                               t);
    return 0;
}

int family_lora_name(const model_family_t *f, int l, int t, char which, char *out, size_t size)
{
    if (s_check_index(f, l, t) != 0) return -1;
    if (which != 'A' && which != 'B')
        return medfl_error_set(MEDFL_EINVAL, "LoRA matrix '%c' is neither A nor B", which);
    int n = snprintf(out, size, "%s%s.%d.%s.lora_%c.weight", f->peft_prefix, f->layer_path, l,
                     f->targets[t].module, which);
    return s_fits(n, size, "LoRA tensor");
}

int family_base_name(const model_family_t *f, int l, int t, const char *suffix, char *out,
                     size_t size)
{
    if (s_check_index(f, l, t) != 0) return -1;
    int n = snprintf(out, size, "%s.%d.%s.%s", f->layer_path, l, f->targets[t].module, suffix);
    return s_fits(n, size, "base tensor");
}

int family_gguf_name(const model_family_t *f, int l, int t, const char *suffix, char *out,
                     size_t size)
{
    if (s_check_index(f, l, t) != 0) return -1;
    if (f->gguf_block == NULL || f->targets[t].gguf == NULL)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s target '%s' has no GGUF name", f->name,
                               f->targets[t].config);
    int n = snprintf(out, size, "%s.%d.%s.%s", f->gguf_block, l, f->targets[t].gguf, suffix);
    return s_fits(n, size, "GGUF tensor");
}
