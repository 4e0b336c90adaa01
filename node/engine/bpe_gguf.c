/* Tokenizer metadata from a GGUF file (see bpe_gguf.h), read through node/engine/gguf: the
 * reader there has validated every length and offset before anything here runs, so this file
 * only picks keys, checks their types and copies the strings into C strings. */
#include "node/engine/bpe_gguf.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* A NUL-terminated copy of a GGUF string of len bytes; an embedded NUL is an error (the
 * tokenizer works on C strings). */
static int s_cstr(const gguf_t *f, const char *key, uint64_t i, const char *s, size_t len,
                  char **out)
{
    if (memchr(s, 0, len) != NULL)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' element %llu holds a NUL byte",
                               gguf_origin(f), key, (unsigned long long)i);
    char *c = malloc(len + 1);
    if (c == NULL)
        return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", gguf_origin(f));
    memcpy(c, s, len);
    c[len] = '\0';
    *out = c;
    return 0;
}

/* An optional string key: absent leaves *out NULL. */
static int s_opt_str(const gguf_t *f, const char *key, char **out)
{
    const char *s;
    size_t len;
    if (gguf_find_key(f, key) < 0) return 0;
    if (gguf_get_str(f, key, &s, &len) < 0) return -1;
    return s_cstr(f, key, 0, s, len, out);
}

static int s_str_array(const gguf_t *f, const char *key, bool required, char ***out,
                       size_t *count)
{
    gguf_vtype_t et;
    uint64_t n;
    if (!required && gguf_find_key(f, key) < 0) return 0;
    if (gguf_get_arr(f, key, &et, &n) < 0) return -1;
    if (et != GGUF_STRING)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' is an array of %s, expected "
                               "strings", gguf_origin(f), key, gguf_vtype_name(et));
    char **v = calloc(n ? (size_t)n : 1, sizeof *v);
    if (v == NULL) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", gguf_origin(f));
    *out = v;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (gguf_get_arr_str(f, key, i, &s, &len) < 0 || s_cstr(f, key, i, s, len, &v[i]) < 0)
            return -1;
        *count = (size_t)i + 1;
    }
    return 0;
}

/* tokenizer.ggml.token_type: int32 (llama.cpp writes these) or uint32. */
static int s_token_types(const gguf_t *f, bpe_gguf_t *g)
{
    const char *key = "tokenizer.ggml.token_type";
    gguf_vtype_t et;
    uint64_t n;
    if (gguf_find_key(f, key) < 0) return 0;
    if (gguf_get_arr(f, key, &et, &n) < 0) return -1;
    if (et != GGUF_INT32 && et != GGUF_UINT32)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' is not an array of 32-bit integers",
                               gguf_origin(f), key);
    if (!(g->token_types = malloc(n ? (size_t)n * 4 : 4)))
        return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", gguf_origin(f));
    g->n_token_types = (size_t)n;
    return gguf_get_arr_data(f, key, et, g->token_types, n);
}

static int s_id(const gguf_t *f, const char *key, int32_t *id)
{
    if (gguf_find_key(f, key) < 0) return 0;
    uint32_t v;
    if (gguf_get_u32(f, key, &v) < 0) return -1;
    if (v > INT32_MAX)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' is out of range", gguf_origin(f),
                               key);
    *id = (int32_t)v;
    return 0;
}

static int s_flag(const gguf_t *f, const char *key, bool *flag)
{
    if (gguf_find_key(f, key) < 0) return 0;
    return gguf_get_bool(f, key, flag);
}

int bpe_gguf_from(const gguf_t *f, bpe_gguf_t *g)
{
    *g = (bpe_gguf_t){0};
    g->specials = (bpe_special_t){-1, -1, false, false};
    int rc = s_opt_str(f, "tokenizer.ggml.model", &g->model) < 0 ||
                     s_opt_str(f, "tokenizer.ggml.pre", &g->pre) < 0 ||
                     s_opt_str(f, "tokenizer.chat_template", &g->chat_template) < 0 ||
                     s_str_array(f, "tokenizer.ggml.tokens", true, &g->tokens,
                                 &g->n_tokens) < 0 ||
                     s_str_array(f, "tokenizer.ggml.merges", false, &g->merges,
                                 &g->n_merges) < 0 ||
                     s_token_types(f, g) < 0 ||
                     s_id(f, "tokenizer.ggml.bos_token_id", &g->specials.bos_id) < 0 ||
                     s_id(f, "tokenizer.ggml.eos_token_id", &g->specials.eos_id) < 0 ||
                     s_flag(f, "tokenizer.ggml.add_bos_token", &g->specials.add_bos) < 0 ||
                     s_flag(f, "tokenizer.ggml.add_eos_token", &g->specials.add_eos) < 0
                 ? -1
                 : 0;
    if (rc == 0 && g->token_types && g->n_token_types != g->n_tokens)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: %zu token types for %zu tokens",
                             gguf_origin(f), g->n_token_types, g->n_tokens);
    if (rc < 0) bpe_gguf_clear(g);
    return rc;
}

int bpe_gguf_read(const char *path, bpe_gguf_t *g)
{
    *g = (bpe_gguf_t){0};
    gguf_t *f = gguf_open(path);
    if (f == NULL) return -1;
    int rc = bpe_gguf_from(f, g);
    gguf_destroy(&f);
    return rc;
}

void bpe_gguf_clear(bpe_gguf_t *g)
{
    for (size_t i = 0; g->tokens && i < g->n_tokens; i++) free(g->tokens[i]);
    for (size_t i = 0; g->merges && i < g->n_merges; i++) free(g->merges[i]);
    free(g->tokens);
    free(g->merges);
    free(g->token_types);
    free(g->model);
    free(g->pre);
    free(g->chat_template);
    *g = (bpe_gguf_t){0};
}

bpe_t *bpe_gguf_tokenizer(const bpe_gguf_t *g, const char *pre)
{
    if (!g->model || strcmp(g->model, "gpt2") != 0) {
        medfl_error_set(MEDFL_EUNSUPPORTED, "tokenizer model '%.32s' is not supported (only "
                        "byte-level BPE, \"gpt2\")", g->model ? g->model : "(none)");
        return NULL;
    }
    if (!g->merges || g->n_merges == 0) {
        medfl_error_set(MEDFL_EFORMAT, "tokenizer without merges (tokenizer.ggml.merges)");
        return NULL;
    }
    return bpe_new((const char *const *)g->tokens, g->n_tokens, g->token_types,
                   (const char *const *)g->merges, g->n_merges, pre ? pre : g->pre,
                   &g->specials);
}
