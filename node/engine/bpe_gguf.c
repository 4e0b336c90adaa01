/* Tokenizer metadata from a GGUF file (see bpe_gguf.h; to be replaced by node/engine/gguf).
 *
 * GGUF v2/v3 layout: magic "GGUF", u32 version, u64 tensor count, u64 key/value count, then
 * per key: string key (u64 length + bytes), u32 value type, value. Arrays are u32 element
 * type + u64 count + elements. Little-endian throughout. Only the keys below are kept; every
 * other value is skipped by its type. */
#include "node/engine/bpe_gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"

enum {
    T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64,
    T_COUNT
};
static const uint8_t s_size[T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

typedef struct {
    FILE *f;
    const char *path;
    uint64_t size, pos;
} rd_t;

static int s_truncated(const rd_t *r)
{
    return medfl_error_set(MEDFL_EFORMAT, "%s: truncated at byte offset %llu (GGUF metadata)",
                           r->path, (unsigned long long)r->pos);
}

static int s_read(rd_t *r, void *buf, uint64_t n)
{
    if (n > r->size - r->pos) return s_truncated(r);
    if (n && fread(buf, 1, (size_t)n, r->f) != n)
        return medfl_error_set(MEDFL_EIO, "%s: read error at byte offset %llu", r->path,
                               (unsigned long long)r->pos);
    r->pos += n;
    return 0;
}

static int s_skip(rd_t *r, uint64_t n)
{
    if (n > r->size - r->pos) return s_truncated(r);
    if (fseeko(r->f, (off_t)n, SEEK_CUR) != 0)
        return medfl_error_set(MEDFL_EIO, "%s: seek error", r->path);
    r->pos += n;
    return 0;
}

static int s_u32(rd_t *r, uint32_t *v) { return s_read(r, v, 4); }
static int s_u64(rd_t *r, uint64_t *v) { return s_read(r, v, 8); }

/* A GGUF string as a NUL-terminated copy; an embedded NUL is an error (C strings). */
static int s_string(rd_t *r, const char *key, char **out)
{
    uint64_t len;
    if (s_u64(r, &len) < 0) return -1;
    if (len > r->size - r->pos)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%.64s': string of %llu bytes runs "
                               "past the end of the file", r->path, key,
                               (unsigned long long)len);
    char *s = malloc((size_t)len + 1);
    if (!s) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", r->path);
    if (s_read(r, s, len) < 0) {
        free(s);
        return -1;
    }
    s[len] = '\0';
    if (strlen(s) != len) {
        free(s);
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%.64s': string holds a NUL byte",
                               r->path, key);
    }
    *out = s;
    return 0;
}

static int s_skip_value(rd_t *r, uint32_t type, int depth)
{
    if (type >= T_COUNT)
        return medfl_error_set(MEDFL_EFORMAT, "%s: unknown GGUF value type %u at byte offset "
                               "%llu", r->path, type, (unsigned long long)r->pos);
    if (s_size[type]) return s_skip(r, s_size[type]);
    uint64_t n;
    if (type == T_STR) return s_u64(r, &n) < 0 ? -1 : s_skip(r, n);
    uint32_t et;
    if (depth > 4) return medfl_error_set(MEDFL_EFORMAT, "%s: arrays nested too deep", r->path);
    if (s_u32(r, &et) < 0 || s_u64(r, &n) < 0) return -1;
    if (et < T_COUNT && s_size[et]) {
        if (n > (r->size - r->pos) / s_size[et]) return s_truncated(r);
        return s_skip(r, n * s_size[et]);
    }
    if (n > (r->size - r->pos) / 8) return s_truncated(r); /* >= 8 bytes each */
    for (uint64_t i = 0; i < n; i++)
        if (s_skip_value(r, et, depth + 1) < 0) return -1;
    return 0;
}

static int s_string_array(rd_t *r, const char *key, uint32_t type, char ***out, size_t *count)
{
    uint32_t et;
    uint64_t n;
    if (type != T_ARR || s_u32(r, &et) < 0 || et != T_STR)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' is not an array of strings",
                               r->path, key);
    if (s_u64(r, &n) < 0) return -1;
    if (*out || n > (r->size - r->pos) / 8)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' repeated or its %llu strings do "
                               "not fit in the file", r->path, key, (unsigned long long)n);
    char **v = calloc(n ? (size_t)n : 1, sizeof *v);
    if (!v) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", r->path);
    *out = v;
    for (uint64_t i = 0; i < n; i++) {
        if (s_string(r, key, &v[i]) < 0) return -1;
        *count = (size_t)i + 1;
    }
    return 0;
}

static int s_int_value(rd_t *r, const char *key, uint32_t type, int64_t *v)
{
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
    } x = {0};
    if (type >= T_COUNT || !s_size[type] || type == T_F32 || type == T_F64)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' is not an integer", r->path, key);
    if (s_read(r, &x, s_size[type]) < 0) return -1;
    switch (type) {
    case T_U8: case T_BOOL: *v = x.u8; break;
    case T_I8: *v = x.i8; break;
    case T_U16: *v = x.u16; break;
    case T_I16: *v = x.i16; break;
    case T_U32: *v = x.u32; break;
    case T_I32: *v = x.i32; break;
    case T_U64: *v = x.u64 > INT64_MAX ? -1 : (int64_t)x.u64; break;
    default: *v = x.i64; break;
    }
    return 0;
}

static int s_token_types(rd_t *r, bpe_gguf_t *g, uint32_t type)
{
    uint32_t et;
    uint64_t n;
    if (type != T_ARR || s_u32(r, &et) < 0 || (et != T_I32 && et != T_U32))
        return medfl_error_set(MEDFL_EFORMAT, "%s: key 'tokenizer.ggml.token_type' is not an "
                               "array of 32-bit integers", r->path);
    if (s_u64(r, &n) < 0) return -1;
    if (g->token_types || n > (r->size - r->pos) / 4)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key 'tokenizer.ggml.token_type' repeated "
                               "or longer than the file", r->path);
    if (!(g->token_types = malloc(n ? (size_t)n * 4 : 4)))
        return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", r->path);
    g->n_token_types = (size_t)n;
    return s_read(r, g->token_types, n * 4);
}

static int s_id(rd_t *r, const char *key, uint32_t type, int32_t *id)
{
    int64_t v;
    if (s_int_value(r, key, type, &v) < 0) return -1;
    if (v < 0 || v > INT32_MAX)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' is out of range", r->path, key);
    *id = (int32_t)v;
    return 0;
}

static int s_flag(rd_t *r, const char *key, uint32_t type, bool *flag)
{
    int64_t v;
    if (s_int_value(r, key, type, &v) < 0) return -1;
    *flag = v != 0;
    return 0;
}

static int s_kv(rd_t *r, bpe_gguf_t *g)
{
    char *key = NULL;
    uint32_t type;
    if (s_string(r, "(key)", &key) < 0) return -1;
    int rc = s_u32(r, &type);
    char **str = !strcmp(key, "tokenizer.ggml.model") ? &g->model
                 : !strcmp(key, "tokenizer.ggml.pre") ? &g->pre
                 : !strcmp(key, "tokenizer.chat_template") ? &g->chat_template : NULL;
    if (rc < 0) {
    } else if (str) {
        rc = type != T_STR || *str
                 ? medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' is not a string or repeated",
                                   r->path, key)
                 : s_string(r, key, str);
    } else if (!strcmp(key, "tokenizer.ggml.tokens")) {
        rc = s_string_array(r, key, type, &g->tokens, &g->n_tokens);
    } else if (!strcmp(key, "tokenizer.ggml.merges")) {
        rc = s_string_array(r, key, type, &g->merges, &g->n_merges);
    } else if (!strcmp(key, "tokenizer.ggml.token_type")) {
        rc = s_token_types(r, g, type);
    } else if (!strcmp(key, "tokenizer.ggml.bos_token_id")) {
        rc = s_id(r, key, type, &g->specials.bos_id);
    } else if (!strcmp(key, "tokenizer.ggml.eos_token_id")) {
        rc = s_id(r, key, type, &g->specials.eos_id);
    } else if (!strcmp(key, "tokenizer.ggml.add_bos_token")) {
        rc = s_flag(r, key, type, &g->specials.add_bos);
    } else if (!strcmp(key, "tokenizer.ggml.add_eos_token")) {
        rc = s_flag(r, key, type, &g->specials.add_eos);
    } else {
        rc = s_skip_value(r, type, 0);
    }
    free(key);
    return rc;
}

int bpe_gguf_read(const char *path, bpe_gguf_t *g)
{
    *g = (bpe_gguf_t){0};
    g->specials = (bpe_special_t){-1, -1, false, false};
    rd_t r = {fopen(path, "rb"), path, 0, 0};
    struct stat st;
    if (!r.f)
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: cannot open the model file", path);
    if (fstat(fileno(r.f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(r.f);
        return medfl_error_set(MEDFL_EIO, "%s: not a regular file", path);
    }
    r.size = (uint64_t)st.st_size;
    char magic[4];
    uint32_t version;
    uint64_t n_tensors, n_kv;
    int rc = s_read(&r, magic, 4) < 0 || s_u32(&r, &version) < 0 ||
                     s_u64(&r, &n_tensors) < 0 || s_u64(&r, &n_kv) < 0 ? -1 : 0;
    if (rc == 0 && memcmp(magic, "GGUF", 4) != 0)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: not a GGUF file (bad magic)", path);
    else if (rc == 0 && version != 2 && version != 3)
        rc = medfl_error_set(MEDFL_EUNSUPPORTED, "%s: GGUF version %u is not supported (2, 3)",
                             path, version);
    for (uint64_t i = 0; rc == 0 && i < n_kv; i++)
        if (s_kv(&r, g) < 0) rc = medfl_error_prefix("key/value %llu: ", (unsigned long long)i);
    fclose(r.f);
    if (rc == 0 && g->token_types && g->n_token_types != g->n_tokens)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: %zu token types for %zu tokens", path,
                             g->n_token_types, g->n_tokens);
    if (rc == 0 && !g->tokens)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: no tokenizer.ggml.tokens", path);
    if (rc < 0) bpe_gguf_clear(g);
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
