/* Decoder adapter export tests (node/engine/llama_export): the tiny Llama of
 * tests/ref/fixtures/tiny_llama with LoRA set to known random values, exported as a PEFT folder
 * and as a llama.cpp LoRA GGUF, for all seven targets and for q,v only.
 *   - In C: the PEFT safetensors holds exactly the model's LoRA tensors (names, shapes,
 *     values), adapter_config.json says CAUSAL_LM / r / lora_alpha / target_modules; the GGUF
 *     re-read with node/engine/gguf has the adapter keys, llama.cpp's names, F32, shapes in
 *     ggml order, lora_a = A, lora_b = B with q/k rows permuted per head (checked row by row).
 *   - With python3 + torch + peft + gguf (tests/ref/check_peft_llama_export.py; skipped
 *     otherwise): transformers + PEFT load the export and give medfl's logits (llama_forward)
 *     within 1e-4; the gguf package reads the adapter with the expected names, shapes, alpha.
 *   - Hostile: a rank mismatch, a target the config does not adapt, a missing B, duplicates,
 *     foreign names, layers past the model, NaN, a folder with foreign files (refused, left
 *     untouched; a previous export is replaced), an unwritable GGUF path.
 * WHY: an export that loads but means something else (transposed A/B, wrong alpha, q/k rows
 * in the other RoPE convention) serves a silently different model; only comparing logits in
 * the serving tool catches that. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "node/engine/backend.h"
#include "common/error.h"
#include "common/safetensors.h"
#include "node/engine/gguf.h"
#include "node/engine/llama.h"
#include "node/engine/llama_export.h"
#include "tests/unit/testlib.h"

#define FIXDIR "tests/ref/fixtures/tiny_llama/"

static const char *s_dir;
static backend_t *s_be;

/* ------------------------------------------------------------ fixture */

static double s_meta(const safetensors_t *st, const char *key)
{
    const char *v = safetensors_metadata(st, key);
    if (v == NULL) fail_msg("fixture: metadata '%s' missing", key);
    return atof(v);
}

static float *s_read(const safetensors_t *st, const char *name, size_t *n)
{
    const st_tensor_t *t = safetensors_find(st, name);
    if (t == NULL) fail_msg("fixture: tensor '%s' missing", name);
    size_t numel = 1;
    for (int i = 0; i < t->ndim; i++) numel *= (size_t)t->shape[i];
    float *buf = calloc(numel + 1, sizeof(float));
    assert_non_null(buf);
    assert_int_equal(safetensors_read_f32(st, t, buf), 0);
    *n = numel;
    return buf;
}

typedef struct {
    llama_t *m;
    int B, T;
    int32_t ids[64], mask[64];
} s_model_t;

/* The fixture's "tied" model with the given targets and LoRA A/B drawn uniform in
 * [-0.25, 0.25) from a fixed seed (B non-zero, so the adapter changes the logits). */
static void s_model(s_model_t *sm, unsigned targets)
{
    safetensors_t *st = safetensors_open(FIXDIR "model.safetensors");
    safetensors_t *ref = safetensors_open(FIXDIR "ref_tied.safetensors");
    if (!st || !ref) fail_msg("fixture: %s", medfl_error_message());
    llama_config_t c;
    llama_config_default(&c);
    c.vocab = (int)s_meta(st, "vocab_size");
    c.hidden = (int)s_meta(st, "hidden_size");
    c.ffn = (int)s_meta(st, "intermediate_size");
    c.n_layers = (int)s_meta(st, "num_hidden_layers");
    c.n_heads = (int)s_meta(st, "num_attention_heads");
    c.n_kv_heads = (int)s_meta(st, "num_key_value_heads");
    c.head_dim = (int)s_meta(st, "head_dim");
    c.max_seq = (int)s_meta(st, "max_position_embeddings");
    c.rms_eps = (float)s_meta(st, "rms_norm_eps");
    c.lora_r = (int)s_meta(st, "r");
    c.lora_alpha = (float)s_meta(st, "alpha");
    c.rope_theta = (float)s_meta(ref, "rope_theta");
    c.tie_embeddings = s_meta(ref, "tie_embeddings") != 0.0;
    assert_true(c.tie_embeddings);
    c.lora_targets = targets;
    sm->m = llama_new(&c, s_be);
    assert_non_null(sm->m);
    for (size_t i = 0; i < llama_base_count(sm->m); i++) {
        const model_tensor_t *t = llama_base_tensor(sm->m, i);
        size_t n;
        float *v = s_read(st, t->name, &n);
        assert_int_equal(llama_base_set(sm->m, t->name, v, n), 0);
        free(v);
    }
    sm->B = (int)s_meta(st, "B");
    sm->T = (int)s_meta(st, "T");
    assert_true(sm->B * sm->T <= 64);
    size_t n;
    float *ids = s_read(st, "input_ids", &n), *mask = s_read(st, "attention_mask", &n);
    for (size_t i = 0; i < n; i++) {
        sm->ids[i] = (int32_t)ids[i];
        sm->mask[i] = (int32_t)mask[i];
    }
    free(ids);
    free(mask);
    size_t np = llama_trainable_numel(sm->m);
    float *p = malloc(np * sizeof(float));
    assert_non_null(p);
    uint64_t rng = 0x5eed + targets;
    for (size_t i = 0; i < np; i++)
        p[i] = (float)((double)(testlib_rng(&rng) >> 11) / 9007199254740992.0 - 0.5) * 0.5f;
    assert_int_equal(llama_trainable_set(sm->m, p, np), 0);
    free(p);
    safetensors_destroy(&st);
    safetensors_destroy(&ref);
}

/* The model's LoRA tensors as a named list over one copied buffer (*buf). */
static named_tensor_t *s_list(const llama_t *m, float **buf, size_t *n)
{
    *n = llama_trainable_count(m);
    named_tensor_t *l = calloc(*n, sizeof *l);
    *buf = malloc(llama_trainable_numel(m) * sizeof(float));
    assert_true(l && *buf);
    assert_int_equal(llama_trainable_get(m, *buf, llama_trainable_numel(m)), 0);
    for (size_t i = 0; i < *n; i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        l[i].name = (char *)t->name;
        l[i].ndim = 2;
        l[i].shape[0] = t->shape[0];
        l[i].shape[1] = t->shape[1];
        l[i].data = *buf + t->offset;
    }
    return l;
}

/* ------------------------------------------------------------ C-side re-reading */

static void s_check_peft(const llama_t *m, const char *dir, const char *const *targets, int n_t)
{
    char path[512];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    safetensors_t *st = safetensors_open(path);
    if (!st) fail_msg("%s", medfl_error_message());
    assert_int_equal(safetensors_count(st), llama_trainable_count(m));
    float *p = malloc(llama_trainable_numel(m) * sizeof(float));
    assert_int_equal(llama_trainable_get(m, p, llama_trainable_numel(m)), 0);
    for (size_t i = 0; i < llama_trainable_count(m); i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        const st_tensor_t *s = safetensors_find(st, t->name);
        if (!s) fail_msg("%s missing from the export", t->name);
        assert_string_equal(s->dtype, "F32");
        assert_int_equal(s->shape[0], t->shape[0]);
        assert_int_equal(s->shape[1], t->shape[1]);
        size_t n;
        float *v = s_read(st, t->name, &n);
        assert_memory_equal(v, p + t->offset, n * sizeof(float));
        free(v);
    }
    assert_string_equal(safetensors_metadata(st, "format"), "pt");
    free(p);
    safetensors_destroy(&st);

    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char text[8192];
    size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = 0;
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "peft_type")->valuestring, "LORA");
    assert_string_equal(cJSON_GetObjectItem(j, "task_type")->valuestring, "CAUSAL_LM");
    assert_string_equal(cJSON_GetObjectItem(j, "base_model_name_or_path")->valuestring, "tiny-llama");
    assert_string_equal(cJSON_GetObjectItem(j, "bias")->valuestring, "none");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "fan_in_fan_out")));
    assert_true(cJSON_GetObjectItem(j, "lora_dropout")->valuedouble == 0.0);
    assert_int_equal(cJSON_GetObjectItem(j, "r")->valueint, llama_config(m)->lora_r);
    assert_true(cJSON_GetObjectItem(j, "lora_alpha")->valuedouble == llama_config(m)->lora_alpha);
    cJSON *tm = cJSON_GetObjectItem(j, "target_modules");
    assert_int_equal(cJSON_GetArraySize(tm), n_t);
    for (int i = 0; i < n_t; i++)
        assert_string_equal(cJSON_GetArrayItem(tm, i)->valuestring, targets[i]);
    cJSON_Delete(j);
}

static void s_check_gguf(const llama_t *m, const char *path)
{
    const llama_config_t *c = llama_config(m);
    gguf_t *g = gguf_open(path);
    if (!g) fail_msg("%s", medfl_error_message());
    const char *s;
    assert_int_equal(gguf_get_str(g, "general.type", &s, NULL), 0);
    assert_string_equal(s, "adapter");
    assert_int_equal(gguf_get_str(g, "adapter.type", &s, NULL), 0);
    assert_string_equal(s, "lora");
    assert_int_equal(gguf_get_str(g, "general.architecture", &s, NULL), 0);
    assert_string_equal(s, c->qkv_bias ? "qwen2" : "llama");
    float alpha;
    assert_int_equal(gguf_get_f32(g, "adapter.lora.alpha", &alpha), 0);
    assert_true(alpha == c->lora_alpha);
    assert_int_equal(gguf_alignment(g), 32);
    assert_int_equal(gguf_tensor_count(g), llama_trainable_count(m));
    float *p = malloc(llama_trainable_numel(m) * sizeof(float));
    assert_int_equal(llama_trainable_get(m, p, llama_trainable_numel(m)), 0);
    const int D = c->head_dim, r = c->lora_r;
    int n_permuted = 0;
    for (size_t i = 0; i < llama_trainable_count(m); i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        char name[128];
        assert_int_equal(llama_export_gguf_name(t->name, name, sizeof name), 0);
        const gguf_tensor_t *x = gguf_find_tensor(g, name);
        if (!x) fail_msg("%s (for %s) missing from the GGUF", name, t->name);
        assert_int_equal(x->type, 0); /* F32 */
        assert_int_equal(x->n_dims, 2);
        assert_int_equal(x->ne[0], t->shape[1]); /* ggml order: the row first */
        assert_int_equal(x->ne[1], t->shape[0]);
        const float *got = x->data, *want = p + t->offset;
        bool qk_b = strstr(name, "lora_b") && (strstr(name, "attn_q.") || strstr(name, "attn_k."));
        if (!qk_b || c->qkv_bias) {
            assert_memory_equal(got, want, t->numel * sizeof(float));
            continue;
        }
        /* GGUF row h*D + 2i + s holds HF row h*D + s*D/2 + i */
        int heads = t->shape[0] / D;
        assert_int_equal(heads, strstr(name, "attn_q.") ? c->n_heads : c->n_kv_heads);
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < D / 2; i++)
                for (int sft = 0; sft < 2; sft++)
                    assert_memory_equal(got + (size_t)(h * D + 2 * i + sft) * r,
                                        want + (size_t)(h * D + sft * D / 2 + i) * r,
                                        (size_t)r * sizeof(float));
        assert_memory_not_equal(got, want, t->numel * sizeof(float));
        n_permuted++;
    }
    /* q and k B of every layer permuted for a Llama; none for Qwen2 */
    int per_layer = !!(c->lora_targets & LLAMA_LORA_Q) + !!(c->lora_targets & LLAMA_LORA_K);
    int want_permuted = c->qkv_bias ? 0 : c->n_layers * per_layer;
    assert_int_equal(n_permuted, want_permuted);
    free(p);
    gguf_destroy(&g);
}

/* ------------------------------------------------------------ export cases */

/* Exports model + logits into DIR/NAME (peft/, adapter.gguf, medfl_logits.safetensors),
 * checks them in C, and returns the case folder in out. */
static void s_case(const char *name, unsigned targets, const char *const *tnames, int n_t,
                   char *out, size_t size)
{
    s_model_t sm;
    s_model(&sm, targets);
    snprintf(out, size, "%s/%s", s_dir, name);
    assert_int_equal(mkdir(out, 0755), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/peft", out);
    if (llama_export_peft(sm.m, path, "tiny-llama") < 0) fail_msg("%s", medfl_error_message());
    /* a second export replaces the first (the folder holds only a previous export) */
    if (llama_export_peft(sm.m, path, "tiny-llama") < 0) fail_msg("%s", medfl_error_message());
    s_check_peft(sm.m, path, tnames, n_t);
    snprintf(path, sizeof path, "%s/adapter.gguf", out);
    if (llama_export_gguf_lora(sm.m, path) < 0) fail_msg("%s", medfl_error_message());
    s_check_gguf(sm.m, path);

    const int B = sm.B, T = sm.T, V = llama_config(sm.m)->vocab;
    float *logits = malloc((size_t)B * T * V * sizeof(float)), ids[64], mask[64];
    assert_non_null(logits);
    llama_batch_t in = {sm.ids, sm.mask, NULL, B, T};
    assert_int_equal(llama_forward(sm.m, &in, NULL, logits), 0);
    for (int i = 0; i < B * T; i++) {
        ids[i] = (float)sm.ids[i];
        mask[i] = (float)sm.mask[i];
    }
    named_tensor_t nt[3] = {
        {(char *)"logits", 3, {B, T, V}, logits},
        {(char *)"input_ids", 2, {B, T}, ids},
        {(char *)"attention_mask", 2, {B, T}, mask},
    };
    snprintf(path, sizeof path, "%s/medfl_logits.safetensors", out);
    assert_int_equal(safetensors_write_f32(path, nt, 3, NULL, 0), 0);
    free(logits);
    llama_destroy(&sm.m);
}

static void test_export_and_load(void **state)
{
    (void)state;
    static const char *const all[] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                      "gate_proj", "up_proj", "down_proj"};
    static const char *const qv[] = {"q_proj", "v_proj"};
    char c_all[300], c_qv[300];
    s_case("all", LLAMA_LORA_ALL, all, 7, c_all, sizeof c_all);
    s_case("qv", LLAMA_LORA_Q | LLAMA_LORA_V, qv, 2, c_qv, sizeof c_qv);

    /* q,v only: nothing of the other targets in either file */
    char path[512];
    snprintf(path, sizeof path, "%s/adapter.gguf", c_qv);
    gguf_t *g = gguf_open(path);
    assert_non_null(g);
    for (size_t i = 0; i < gguf_tensor_count(g); i++) {
        const char *n = gguf_tensor_at(g, i)->name;
        assert_true(strstr(n, ".attn_q.") || strstr(n, ".attn_v."));
    }
    gguf_destroy(&g);

    if (system("python3 -c 'import peft, torch, transformers, gguf' >/dev/null 2>&1") != 0) {
        print_message("SKIP: PEFT/gguf load check (python3 with peft, torch, transformers, gguf absent)\n");
        return;
    }
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "python3 tests/ref/check_peft_llama_export.py " FIXDIR " %s %s",
             c_all, c_qv);
    int rc = system(cmd);
    assert_true(WIFEXITED(rc));
    if (WEXITSTATUS(rc) == 77) {
        print_message("SKIP: check_peft_llama_export.py skipped\n");
        return;
    }
    assert_int_equal(WEXITSTATUS(rc), 0);
}

/* Qwen2 shape (q/k/v biases): architecture qwen2, B rows of q/k as in HF (NEOX RoPE). */
static void test_gguf_qwen2(void **state)
{
    (void)state;
    llama_config_t c;
    llama_config_default(&c);
    c.n_layers = 1;
    c.hidden = 32;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.ffn = 48;
    c.vocab = 40;
    c.max_seq = 16;
    c.lora_r = 2;
    c.qkv_bias = true;
    c.lora_targets = LLAMA_LORA_Q | LLAMA_LORA_K;
    llama_t *m = llama_new(&c, s_be);
    assert_non_null(m);
    float *buf;
    size_t n;
    named_tensor_t *l = s_list(m, &buf, &n);
    for (size_t i = 0; i < llama_trainable_numel(m); i++) buf[i] = (float)i * 0.01f;
    assert_int_equal(llama_trainable_set(m, buf, llama_trainable_numel(m)), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/qwen2.gguf", s_dir);
    assert_int_equal(llama_export_gguf_lora(m, path), 0);
    s_check_gguf(m, path);
    free(l);
    free(buf);
    llama_destroy(&m);
}

/* ------------------------------------------------------------ hostile input */

static void s_refused(const llama_config_t *c, const named_tensor_t *l, size_t n,
                      const char *needle)
{
    char dir[512], gg[512];
    snprintf(dir, sizeof dir, "%s/refused", s_dir);
    snprintf(gg, sizeof gg, "%s/refused.gguf", s_dir);
    assert_int_equal(llama_export_peft_tensors(c, l, n, dir, NULL), -1);
    if (!strstr(medfl_error_message(), needle))
        fail_msg("error '%s' lacks '%s'", medfl_error_message(), needle);
    assert_int_equal(llama_export_gguf_lora_tensors(c, l, n, gg), -1);
    if (!strstr(medfl_error_message(), needle))
        fail_msg("error '%s' lacks '%s'", medfl_error_message(), needle);
    assert_int_equal(access(dir, F_OK), -1); /* refused before anything was written */
    assert_int_equal(access(gg, F_OK), -1);
}

static void test_hostile(void **state)
{
    (void)state;
    s_model_t sm;
    s_model(&sm, LLAMA_LORA_Q | LLAMA_LORA_V);
    const llama_config_t *c = llama_config(sm.m);
    float *buf;
    size_t n;
    named_tensor_t *l = s_list(sm.m, &buf, &n);
    named_tensor_t *w = calloc(n + 1, sizeof *w);
    assert_non_null(w);

    /* the list itself is fine */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/ok", s_dir);
    assert_int_equal(llama_export_peft_tensors(c, l, n, dir, NULL), 0);

    /* rank mismatch: lora_A of layer 0 q_proj [2, 64] where the adapter's rank is 4 */
    memcpy(w, l, n * sizeof *w);
    assert_non_null(strstr(w[0].name, "layers.0.self_attn.q_proj.lora_A"));
    w[0].shape[0] = 2;
    s_refused(c, w, n, "has rank 2 (shape [2, 64]), the adapter's rank is 4");
    memcpy(w, l, n * sizeof *w);
    w[1].shape[1] = 2; /* lora_B [64, 2] */
    s_refused(c, w, n, "has rank 2");
    /* an A of the wrong input width */
    memcpy(w, l, n * sizeof *w);
    w[0].shape[1] = 32;
    s_refused(c, w, n, "expected [4, 64]");

    /* a target the adapter does not adapt (k_proj; the config has q, v) */
    memcpy(w, l, n * sizeof *w);
    w[n] = w[2];
    w[n].name = (char *)"base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
    w[n].shape[0] = 4;
    w[n].shape[1] = 64;
    s_refused(c, w, n + 1, "adapts k_proj, which is not among the adapter's targets");
    /* a layer past the model */
    w[n].name = (char *)"base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight";
    s_refused(c, w, n + 1, "names layer 7, the model has 2");
    /* a duplicate */
    w[n] = w[0];
    s_refused(c, w, n + 1, "appears twice");
    /* foreign names */
    const char *bad[] = {"lm_head.weight", "base_model.model.model.layers.01.self_attn.q_proj.lora_A.weight",
                         "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight",
                         "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
                         "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        w[n].name = (char *)bad[i];
        s_refused(c, w, n + 1, "is not a LoRA tensor of a decoder layer");
    }
    /* a missing lora_B (the last tensor: layer 1 v_proj B) */
    assert_non_null(strstr(l[n - 1].name, "layers.1.self_attn.v_proj.lora_B"));
    s_refused(c, l, n - 1, "lora_B of layer 1 v_proj is missing");
    /* a non-finite value: named by tensor and index, never the value */
    float keep = buf[3];
    buf[3] = NAN;
    s_refused(c, l, n, "holds a non-finite value at 3");
    assert_null(strstr(medfl_error_message(), "nan"));
    buf[3] = keep;

    /* a folder holding something else is refused and left as it was */
    snprintf(dir, sizeof dir, "%s/notes", s_dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    char path[600];
    snprintf(path, sizeof path, "%s/patients.csv", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("keep me\n", f);
    fclose(f);
    assert_int_equal(llama_export_peft(sm.m, dir, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EPERM);
    assert_non_null(strstr(medfl_error_message(), "not part of a PEFT export"));
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    assert_int_equal(access(path, F_OK), -1);
    /* a path that is a file, and a GGUF into a missing folder */
    snprintf(path, sizeof path, "%s/patients.csv", dir);
    assert_int_equal(llama_export_peft(sm.m, path, NULL), -1);
    snprintf(path, sizeof path, "%s/no/such/adapter.gguf", s_dir);
    assert_int_equal(llama_export_gguf_lora(sm.m, path), -1);
    assert_int_equal(access(path, F_OK), -1);
    /* a folder path too long to hold the file names is refused, not truncated */
    char *longdir = malloc(5000);
    assert_non_null(longdir);
    memset(longdir, 'a', 4999);
    longdir[4999] = 0;
    assert_int_equal(llama_export_peft(sm.m, longdir, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "folder path longer than"));
    free(longdir);
    /* a GGUF name for something that is not LoRA */
    char name[64];
    assert_int_equal(llama_export_gguf_name("model.layers.0.self_attn.q_proj.weight", name, sizeof name), -1);
    assert_int_equal(llama_export_gguf_name(
        "base_model.model.model.layers.12.mlp.down_proj.lora_B.weight", name, sizeof name), 0);
    assert_string_equal(name, "blk.12.ffn_down.weight.lora_b");

    free(w);
    free(l);
    free(buf);
    llama_destroy(&sm.m);
}

static int s_setup(void **state)
{
    (void)state;
    s_dir = testlib_setup("llama-export", false, LOG_LEVEL_WARN);
    s_be = backend_cpu_new(1);
    return s_dir && s_be ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    backend_destroy(&s_be);
    return testlib_teardown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_export_and_load),
        cmocka_unit_test(test_gguf_qwen2),
        cmocka_unit_test(test_hostile),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
