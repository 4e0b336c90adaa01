/* Exporting a Llama-family decoder's LoRA adapter as a Hugging Face PEFT folder and as a
 * llama.cpp LoRA adapter GGUF. See llama_export.h for the formats and why q/k rows are
 * permuted in the GGUF. The checks run once (s_collect) and both writers work from the
 * table it fills, so the two formats cannot disagree about what an adapter holds. */
#include "node/engine/llama_export.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/safetensors.h"

#define S_PREFIX "base_model.model.model.layers."
#define S_GGUF_ALIGN 32u
#define S_GGUF_F32 0u /* ggml type id */

/* The seven targets in LLAMA_LORA_* bit order (bit i = 1 << i). */
static const struct {
    const char *peft;  /* PEFT / HF module name */
    const char *block; /* its parent in a decoder layer */
    const char *gguf;  /* llama.cpp's tensor name */
} S_TARGETS[LLAMA_N_TARGETS] = {
    {"q_proj", "self_attn", "attn_q"},   {"k_proj", "self_attn", "attn_k"},
    {"v_proj", "self_attn", "attn_v"},   {"o_proj", "self_attn", "attn_output"},
    {"gate_proj", "mlp", "ffn_gate"},    {"up_proj", "mlp", "ffn_up"},
    {"down_proj", "mlp", "ffn_down"},
};

/* What s_collect found: the A and B tensor of each (layer, target), NULL where the target is
 * not adapted. */
typedef struct {
    const llama_config_t *cfg;
    const named_tensor_t **ab; /* [(layer * LLAMA_N_TARGETS + target) * 2 + (B ? 1 : 0)] */
    size_t n_tensors;
} s_set_t;

/* ---------------------------------------------------------------- names and shapes */

/* Splits a PEFT LoRA name into layer, target index and 'A' / 'B'; false for other names. */
static bool s_parse(const char *name, int *layer, int *target, char *which)
{
    if (strncmp(name, S_PREFIX, strlen(S_PREFIX)) != 0) return false;
    const char *p = name + strlen(S_PREFIX);
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9')) return false;
    long l = 0;
    while (*p >= '0' && *p <= '9') {
        l = l * 10 + (*p++ - '0');
        if (l > 1000000) return false;
    }
    if (*p++ != '.') return false;
    for (int t = 0; t < LLAMA_N_TARGETS; t++) {
        char tail[96];
        for (int ab = 0; ab < 2; ab++) {
            snprintf(tail, sizeof tail, "%s.%s.lora_%c.weight", S_TARGETS[t].block,
                     S_TARGETS[t].peft, ab ? 'B' : 'A');
            if (strcmp(p, tail) == 0) {
                *layer = (int)l;
                *target = t;
                *which = ab ? 'B' : 'A';
                return true;
            }
        }
    }
    return false;
}

int llama_export_gguf_name(const char *peft_name, char *out, size_t size)
{
    int layer, t;
    char which;
    if (!peft_name || !s_parse(peft_name, &layer, &t, &which))
        return medfl_error_set(MEDFL_EINVAL, "tensor '%s' is not a LoRA tensor of a decoder layer",
                               peft_name ? peft_name : "(null)");
    int w = snprintf(out, size, "blk.%d.%s.weight.lora_%c", layer, S_TARGETS[t].gguf,
                     which == 'A' ? 'a' : 'b');
    if (w < 0 || (size_t)w >= size)
        return medfl_error_set(MEDFL_EINVAL, "tensor '%s': GGUF name too long", peft_name);
    return 0;
}

static int s_head_dim(const llama_config_t *c)
{
    return c->head_dim > 0 ? c->head_dim : c->hidden / c->n_heads;
}

/* in and out features of a target's Linear layer, as llama.c lays them out. */
static void s_dims(const llama_config_t *c, int t, long *in, long *out)
{
    const long C = c->hidden, F = c->ffn, D = s_head_dim(c);
    const long q = (long)c->n_heads * D, kv = (long)c->n_kv_heads * D;
    static const char kind[LLAMA_N_TARGETS] = {'q', 'k', 'k', 'o', 'f', 'f', 'd'};
    switch (kind[t]) {
    case 'q': *in = C; *out = q; break;
    case 'k': *in = C; *out = kv; break;
    case 'o': *in = q; *out = C; break;
    case 'f': *in = C; *out = F; break;
    default: *in = F; *out = C; break;
    }
}

/* ---------------------------------------------------------------- checks */

static int s_check_one(const llama_config_t *c, const named_tensor_t *x, int layer, int t,
                       char which, const char *origin)
{
    long in, out;
    s_dims(c, t, &in, &out);
    if (layer >= c->n_layers)
        return medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' names layer %d, the model has %d",
                               origin, x->name, layer, c->n_layers);
    if (!(c->lora_targets & (1u << t)))
        return medfl_error_set(MEDFL_EINVAL,
                               "%s: tensor '%s' adapts %s, which is not among the adapter's targets",
                               origin, x->name, S_TARGETS[t].peft);
    long rank = x->ndim == 2 ? (long)(which == 'A' ? x->shape[0] : x->shape[1]) : -1;
    long other = x->ndim == 2 ? (long)(which == 'A' ? x->shape[1] : x->shape[0]) : -1;
    char got[64];
    named_tensor_shape_str(x->ndim, x->shape, got, sizeof got);
    if (x->ndim == 2 && rank != c->lora_r && other == (which == 'A' ? in : out))
        return medfl_error_set(MEDFL_EINVAL,
                               "%s: tensor '%s' has rank %ld (shape %s), the adapter's rank is %d",
                               origin, x->name, rank, got, c->lora_r);
    if (x->ndim != 2 || rank != c->lora_r || other != (which == 'A' ? in : out))
        return medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' has shape %s, expected [%ld, %ld]",
                               origin, x->name, got, which == 'A' ? (long)c->lora_r : out,
                               which == 'A' ? in : (long)c->lora_r);
    if (!x->data)
        return medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' has no data", origin, x->name);
    size_t n = named_tensor_numel(x);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x->data[i]))
            return medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' holds a non-finite value at %zu",
                                   origin, x->name, i);
    return 0;
}

/* Validates the list against the config and indexes it into s (s->ab owned). */
static int s_collect(const llama_config_t *c, const named_tensor_t *tensors, size_t n,
                     const char *origin, s_set_t *s)
{
    memset(s, 0, sizeof *s);
    if (llama_config_check(c) < 0) return -1;
    size_t slots = (size_t)c->n_layers * LLAMA_N_TARGETS * 2;
    s->cfg = c;
    s->ab = calloc(slots, sizeof *s->ab);
    if (!s->ab) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", origin);
    for (size_t i = 0; i < n; i++) {
        const named_tensor_t *x = &tensors[i];
        int layer, t;
        char which;
        if (!x->name || !s_parse(x->name, &layer, &t, &which)) {
            medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' is not a LoRA tensor of a decoder "
                            "layer (PEFT name base_model.model.model.layers.N.<block>.<module>."
                            "lora_A|lora_B.weight)", origin, x->name ? x->name : "(null)");
            goto fail;
        }
        if (s_check_one(c, x, layer, t, which, origin) < 0) goto fail;
        size_t k = ((size_t)layer * LLAMA_N_TARGETS + (size_t)t) * 2 + (which == 'B');
        if (s->ab[k]) {
            medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' appears twice", origin, x->name);
            goto fail;
        }
        s->ab[k] = x;
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < LLAMA_N_TARGETS; t++) {
            if (!(c->lora_targets & (1u << t))) continue;
            for (int ab = 0; ab < 2; ab++)
                if (!s->ab[((size_t)l * LLAMA_N_TARGETS + (size_t)t) * 2 + (size_t)ab]) {
                    medfl_error_set(MEDFL_EINVAL, "%s: lora_%c of layer %d %s is missing (every "
                                    "layer of every target needs A and B)", origin,
                                    ab ? 'B' : 'A', l, S_TARGETS[t].peft);
                    goto fail;
                }
        }
    s->n_tensors = n;
    return 0;
fail:
    free(s->ab);
    s->ab = NULL;
    return -1;
}

/* The model's LoRA parameters as a named list pointing into one copied buffer (*buf). */
static named_tensor_t *s_model_list(const llama_t *m, float **buf, size_t *n)
{
    *n = llama_trainable_count(m);
    size_t numel = llama_trainable_numel(m);
    named_tensor_t *list = calloc(*n ? *n : 1, sizeof *list);
    *buf = malloc((numel ? numel : 1) * sizeof(float));
    if (!list || !*buf || llama_trainable_get(m, *buf, numel) < 0) {
        free(list);
        free(*buf);
        *buf = NULL;
        if (!list) medfl_error_set(MEDFL_ENOMEM, "LoRA export: out of memory");
        return NULL;
    }
    for (size_t i = 0; i < *n; i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        list[i].name = (char *)t->name;
        list[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) list[i].shape[d] = t->shape[d];
        list[i].data = *buf + t->offset;
    }
    return list;
}

/* ---------------------------------------------------------------- PEFT */

/* Whether a folder entry belongs to a previous export (or is one's interrupted temp file). */
static bool s_export_entry(const char *name)
{
    static const char *const own[] = {"adapter_config.json", "adapter_model.safetensors"};
    for (size_t i = 0; i < 2; i++) {
        size_t len = strlen(own[i]);
        if (strcmp(name, own[i]) == 0 ||
            (strncmp(name, own[i], len) == 0 && strncmp(name + len, ".tmp.", 5) == 0))
            return true;
    }
    return false;
}

/* Creates dir, or accepts it when empty or holding only a previous export. */
static int s_prepare_dir(const char *dir)
{
    if (mkdir(dir, 0755) == 0) return 0;
    if (errno != EEXIST)
        return medfl_error_set(MEDFL_EIO, "%s: cannot create folder: %s", dir, strerror(errno));
    DIR *d = opendir(dir);
    if (!d) return medfl_error_set(MEDFL_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (!s_export_entry(e->d_name))
            rc = medfl_error_set(MEDFL_EPERM, "%s: folder holds '%s', which is not part of a PEFT "
                                 "export; refusing to write there (use a new or empty folder)",
                                 dir, e->d_name);
    }
    closedir(d);
    return rc;
}

static int s_cmp_name(const void *a, const void *b)
{
    return strcmp(((const named_tensor_t *)a)->name, ((const named_tensor_t *)b)->name);
}

/* adapter_config.json, keys as PEFT's LoraConfig.save_pretrained writes them (sorted). */
static char *s_peft_config(const llama_config_t *c, const char *base)
{
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddItemToObject(j, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(j, "auto_mapping");
    if (base) cJSON_AddStringToObject(j, "base_model_name_or_path", base);
    else cJSON_AddNullToObject(j, "base_model_name_or_path");
    cJSON_AddStringToObject(j, "bias", "none");
    cJSON_AddFalseToObject(j, "fan_in_fan_out");
    cJSON_AddTrueToObject(j, "inference_mode");
    cJSON_AddTrueToObject(j, "init_lora_weights");
    cJSON_AddNullToObject(j, "layers_pattern");
    cJSON_AddNullToObject(j, "layers_to_transform");
    cJSON_AddNumberToObject(j, "lora_alpha", c->lora_alpha);
    cJSON_AddNumberToObject(j, "lora_dropout", 0.0);
    cJSON_AddNullToObject(j, "modules_to_save");
    cJSON_AddStringToObject(j, "peft_type", "LORA");
    cJSON_AddNumberToObject(j, "r", c->lora_r);
    cJSON_AddItemToObject(j, "rank_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(j, "revision");
    cJSON *tm = cJSON_AddArrayToObject(j, "target_modules");
    for (int t = 0; tm && t < LLAMA_N_TARGETS; t++)
        if (c->lora_targets & (1u << t))
            cJSON_AddItemToArray(tm, cJSON_CreateString(S_TARGETS[t].peft));
    cJSON_AddStringToObject(j, "task_type", "CAUSAL_LM");
    cJSON_AddFalseToObject(j, "use_dora");
    cJSON_AddFalseToObject(j, "use_rslora");
    char *text = tm ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    return text;
}

int llama_export_peft_tensors(const llama_config_t *cfg, const named_tensor_t *tensors, size_t n,
                              const char *dir, const char *base_model_name)
{
    s_set_t s;
    if (s_collect(cfg, tensors, n, dir, &s) < 0) return -1;
    free(s.ab); /* the checks are what was needed; PEFT keeps medfl's names */
    named_tensor_t *sorted = malloc((n ? n : 1) * sizeof *sorted);
    char *json = s_peft_config(cfg, base_model_name);
    int rc = -1;
    if (!sorted || !json) {
        medfl_error_set(MEDFL_ENOMEM, "%s: PEFT export: out of memory", dir);
        goto done;
    }
    char path[4200];
    if (strlen(dir) > sizeof path - 64) {
        medfl_error_set(MEDFL_EINVAL, "PEFT export: folder path longer than %zu bytes", sizeof path - 64);
        goto done;
    }
    if (s_prepare_dir(dir) < 0) goto done;
    /* Sorted by name, as PEFT's own save_file writes the header. */
    memcpy(sorted, tensors, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, s_cmp_name);
    const char *meta[] = {"format", "pt"};
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (safetensors_write_f32(path, sorted, n, meta, 1) < 0) goto done;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    rc = atomic_file_replace(path, json, strlen(json), 0644);
done:
    free(sorted);
    free(json);
    return rc;
}

int llama_export_peft(const llama_t *m, const char *dir, const char *base_model_name)
{
    float *buf = NULL;
    size_t n = 0;
    named_tensor_t *list = s_model_list(m, &buf, &n);
    if (!list) return -1;
    int rc = llama_export_peft_tensors(llama_config(m), list, n, dir, base_model_name);
    free(list);
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- GGUF */

/* A growing byte buffer for the GGUF header. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
    bool oom;
} s_buf_t;

static void s_put(s_buf_t *b, const void *data, size_t n)
{
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

/* Integers little-endian, whatever the host. */
static void s_u32(s_buf_t *b, uint32_t v)
{
    uint8_t x[4];
    for (int i = 0; i < 4; i++) x[i] = (uint8_t)(v >> (8 * i));
    s_put(b, x, 4);
}

static void s_u64(s_buf_t *b, uint64_t v)
{
    uint8_t x[8];
    for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v >> (8 * i));
    s_put(b, x, 8);
}

static void s_str(s_buf_t *b, const char *s)
{
    s_u64(b, strlen(s));
    s_put(b, s, strlen(s));
}

static void s_kv_str(s_buf_t *b, const char *key, const char *v)
{
    s_str(b, key);
    s_u32(b, 8); /* GGUF string */
    s_str(b, v);
}

static void s_f32(s_buf_t *b, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    s_u32(b, u);
}

/* Is this (target) a q or k projection whose B rows llama.cpp's Llama layout permutes? Then
 * the number of heads those rows hold, else 0. */
static int s_permute_heads(const llama_config_t *c, int t)
{
    if (c->qkv_bias) return 0; /* Qwen2: NEOX RoPE, rows as in HF */
    return t == 0 ? c->n_heads : t == 1 ? c->n_kv_heads : 0;
}

/* B [out, r] with rows in llama.cpp's order: GGUF row h*D + 2i + s = HF row h*D + s*D/2 + i. */
static void s_permute_rows(const float *src, float *dst, int heads, int D, int r)
{
    for (int h = 0; h < heads; h++)
        for (int j = 0; j < D; j++) {
            int from = h * D + (j % 2) * (D / 2) + j / 2;
            memcpy(dst + ((size_t)h * D + (size_t)j) * (size_t)r, src + (size_t)from * (size_t)r,
                   (size_t)r * sizeof(float));
        }
}

static size_t s_pad(size_t n)
{
    return (n + S_GGUF_ALIGN - 1) / S_GGUF_ALIGN * S_GGUF_ALIGN;
}

/* Header: magic, version 3, counts, metadata, tensor infos, padding to the alignment. */
static void s_gguf_header(s_buf_t *b, const s_set_t *s)
{
    const llama_config_t *c = s->cfg;
    s_put(b, "GGUF", 4);
    s_u32(b, 3);
    s_u64(b, s->n_tensors);
    s_u64(b, 4);
    s_kv_str(b, "general.architecture", c->qkv_bias ? "qwen2" : "llama");
    s_kv_str(b, "general.type", "adapter");
    s_kv_str(b, "adapter.type", "lora");
    s_str(b, "adapter.lora.alpha");
    s_u32(b, 6); /* GGUF float32 */
    s_f32(b, c->lora_alpha);
    uint64_t offset = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < LLAMA_N_TARGETS; t++)
            for (int ab = 0; ab < 2; ab++) {
                const named_tensor_t *x = s->ab[((size_t)l * LLAMA_N_TARGETS + (size_t)t) * 2 + (size_t)ab];
                if (!x) continue;
                char name[128];
                snprintf(name, sizeof name, "blk.%d.%s.weight.lora_%c", l, S_TARGETS[t].gguf,
                         ab ? 'b' : 'a');
                s_str(b, name);
                s_u32(b, 2);
                s_u64(b, (uint64_t)x->shape[1]); /* ne[0]: the row */
                s_u64(b, (uint64_t)x->shape[0]);
                s_u32(b, S_GGUF_F32);
                s_u64(b, offset);
                offset += s_pad(named_tensor_numel(x) * sizeof(float));
            }
    static const uint8_t zeros[S_GGUF_ALIGN];
    s_put(b, zeros, s_pad(b->len) - b->len);
}

/* Tensor data, in the header's order, each padded to the alignment. */
static int s_gguf_data(atomic_file_t *f, const s_set_t *s, const char *path)
{
    const llama_config_t *c = s->cfg;
    static const uint8_t zeros[S_GGUF_ALIGN];
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < LLAMA_N_TARGETS; t++)
            for (int ab = 0; ab < 2; ab++) {
                const named_tensor_t *x = s->ab[((size_t)l * LLAMA_N_TARGETS + (size_t)t) * 2 + (size_t)ab];
                if (!x) continue;
                size_t bytes = named_tensor_numel(x) * sizeof(float);
                const float *data = x->data;
                float *perm = NULL;
                int heads = ab ? s_permute_heads(c, t) : 0;
                if (heads) {
                    if (!(perm = malloc(bytes)))
                        return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
                    s_permute_rows(x->data, perm, heads, s_head_dim(c), c->lora_r);
                    data = perm;
                }
                int rc = atomic_file_write(f, data, bytes);
                free(perm);
                if (rc < 0 || atomic_file_write(f, zeros, s_pad(bytes) - bytes) < 0) return -1;
            }
    return 0;
}

int llama_export_gguf_lora_tensors(const llama_config_t *cfg, const named_tensor_t *tensors,
                                   size_t n, const char *path)
{
    s_set_t s;
    if (s_collect(cfg, tensors, n, path, &s) < 0) return -1;
    s_buf_t head = {0};
    s_gguf_header(&head, &s);
    int rc = -1;
    atomic_file_t *f = NULL;
    if (head.oom) {
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    if (!(f = atomic_file_new(path, 0644))) goto done;
    if (atomic_file_write(f, head.p, head.len) < 0 || s_gguf_data(f, &s, path) < 0) goto done;
    rc = atomic_file_commit(&f);
done:
    atomic_file_destroy(&f);
    free(head.p);
    free(s.ab);
    return rc;
}

int llama_export_gguf_lora(const llama_t *m, const char *path)
{
    float *buf = NULL;
    size_t n = 0;
    named_tensor_t *list = s_model_list(m, &buf, &n);
    if (!list) return -1;
    int rc = llama_export_gguf_lora_tensors(llama_config(m), list, n, path);
    free(list);
    free(buf);
    return rc;
}
