/* GGUF reader; see gguf.h. One pass over the header with a bounds-checked cursor validates
 * and indexes everything (keys, string-array element offsets, tensor infos), then sorted
 * indexes serve lookups by name. Nothing is read outside the buffer and no count is trusted
 * before it is bounded by the bytes that remain, so a hostile file costs at most a few times
 * its own size in memory and ends in one precise error. */
#include "node/engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "node/engine/quant.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader assumes a little-endian host (GGUF files are little-endian)"
#endif

#define MAX_KEY_LEN 65535u    /* the spec's limit on keys */
#define MAX_NAME_LEN 64u      /* ... and on tensor names */
#define MAX_NESTING 8         /* arrays of arrays: deeper is refused, not recursed into */

typedef struct {
    char *key;
    uint32_t type;
    size_t pos;         /* value's offset in the file */
    char *str;          /* string value: NUL-terminated copy */
    size_t str_len;
    uint32_t elem_type; /* arrays */
    uint64_t count;
    size_t data_pos;    /* first element */
    size_t *str_pos;    /* arrays of strings: offset of each element's length field */
} kv_t;

struct gguf_t {
    char *origin;
    const uint8_t *buf;
    size_t len;
    uint32_t version;
    size_t alignment;
    kv_t *kv;
    size_t n_kv;
    size_t *kv_sorted;       /* indexes of kv by key */
    gguf_tensor_t *tensors;
    size_t n_tensors;
    size_t *tensors_sorted;  /* indexes of tensors by name */
    void *map;
    size_t map_len;
};

/* The parsing cursor. */
typedef struct {
    const uint8_t *buf;
    size_t len, pos;
    const char *origin;
} cur_t;

static const char *const s_vtype_names[] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};

const char *gguf_vtype_name(uint32_t type)
{
    return type < sizeof s_vtype_names / sizeof s_vtype_names[0] ? s_vtype_names[type]
                                                                 : "unknown type";
}

/* Byte size of a fixed-size value type, 0 for string, array and unknown. */
static size_t s_vsize(uint32_t type)
{
    switch (type) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Smallest encoding of a value of a type (bounds element counts before any allocation). */
static size_t s_vmin(uint32_t type)
{
    return type == GGUF_STRING ? 8 : type == GGUF_ARRAY ? 12 : s_vsize(type);
}

/* ------------------------------------------------------------------ cursor */

static int s_need(cur_t *c, size_t n, const char *what)
{
    if (c->len - c->pos >= n) return 0;
    return medfl_error_set(MEDFL_EFORMAT, "%s: truncated at byte %zu reading %s (%zu bytes "
                           "needed, %zu left)", c->origin, c->pos, what, n, c->len - c->pos);
}

static int s_u32(cur_t *c, uint32_t *out, const char *what)
{
    if (s_need(c, 4, what) < 0) return -1;
    memcpy(out, c->buf + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int s_u64(cur_t *c, uint64_t *out, const char *what)
{
    if (s_need(c, 8, what) < 0) return -1;
    memcpy(out, c->buf + c->pos, 8);
    c->pos += 8;
    return 0;
}

/* A string: its bytes stay in the buffer; *s points at them. max_len 0 = no limit other
 * than the bytes left. */
static int s_str(cur_t *c, const uint8_t **s, size_t *len, uint64_t max_len, const char *what)
{
    uint64_t n;
    char buf[160];
    snprintf(buf, sizeof buf, "the length of %s", what);
    if (s_u64(c, &n, buf) < 0) return -1;
    if (max_len && n > max_len)
        return medfl_error_set(MEDFL_EFORMAT, "%s: %s at byte %zu is %llu bytes long (at most "
                               "%llu allowed)", c->origin, what, c->pos - 8,
                               (unsigned long long)n, (unsigned long long)max_len);
    if (n > c->len - c->pos)
        return medfl_error_set(MEDFL_EFORMAT, "%s: truncated at byte %zu reading %s (%llu "
                               "bytes announced, %zu left)", c->origin, c->pos, what,
                               (unsigned long long)n, c->len - c->pos);
    *s = c->buf + c->pos;
    *len = (size_t)n;
    c->pos += (size_t)n;
    return 0;
}

/* ------------------------------------------------------------------ metadata values */

/* Validates and skips one value of `type` at the cursor. `key` names it in messages. */
static int s_skip_value(cur_t *c, uint32_t type, const char *key, int depth);

static int s_skip_array(cur_t *c, const char *key, int depth, uint32_t *elem_type_out,
                        uint64_t *count_out)
{
    uint32_t et;
    uint64_t n;
    char what[200];
    snprintf(what, sizeof what, "the element type of array '%s'", key);
    if (s_u32(c, &et, what) < 0) return -1;
    if (et > GGUF_FLOAT64)
        return medfl_error_set(MEDFL_EFORMAT, "%s: array '%s' at byte %zu has unknown element "
                               "type %u", c->origin, key, c->pos - 4, et);
    if (et == GGUF_ARRAY && depth + 1 >= MAX_NESTING)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: array '%s' nests arrays more than %d "
                               "deep", c->origin, key, MAX_NESTING);
    snprintf(what, sizeof what, "the length of array '%s'", key);
    if (s_u64(c, &n, what) < 0) return -1;
    if (n > (c->len - c->pos) / s_vmin(et))
        return medfl_error_set(MEDFL_EFORMAT, "%s: array '%s' at byte %zu announces %llu "
                               "elements of type %s, more than the %zu bytes left can hold",
                               c->origin, key, c->pos - 8, (unsigned long long)n,
                               gguf_vtype_name(et), c->len - c->pos);
    if (elem_type_out) *elem_type_out = et;
    if (count_out) *count_out = n;
    size_t size = s_vsize(et);
    if (et == GGUF_BOOL) {
        for (uint64_t i = 0; i < n; i++)
            if (c->buf[c->pos + i] > 1)
                return medfl_error_set(MEDFL_EFORMAT, "%s: bool of key '%s' at byte %zu is "
                                       "neither 0 nor 1", c->origin, key, c->pos + (size_t)i);
        c->pos += (size_t)n;
        return 0;
    }
    if (size) { /* fixed-size numbers: any bytes are valid */
        c->pos += (size_t)n * size;
        return 0;
    }
    if (et == GGUF_STRING) { /* vocabularies: ~10^5 strings, checked without formatting */
        for (uint64_t i = 0; i < n; i++) {
            uint64_t sl;
            if (c->len - c->pos < 8)
                return medfl_error_set(MEDFL_EFORMAT, "%s: truncated at byte %zu reading the "
                                       "length of string %llu of array '%s'", c->origin, c->pos,
                                       (unsigned long long)i, key);
            memcpy(&sl, c->buf + c->pos, 8);
            if (sl > c->len - c->pos - 8)
                return medfl_error_set(MEDFL_EFORMAT, "%s: truncated at byte %zu reading string "
                                       "%llu of array '%s' (%llu bytes announced, %zu left)",
                                       c->origin, c->pos + 8, (unsigned long long)i, key,
                                       (unsigned long long)sl, c->len - c->pos - 8);
            c->pos += 8 + (size_t)sl;
        }
        return 0;
    }
    for (uint64_t i = 0; i < n; i++)
        if (s_skip_value(c, et, key, depth + 1) < 0) return -1;
    return 0;
}

static int s_skip_value(cur_t *c, uint32_t type, const char *key, int depth)
{
    char what[200];
    if (type == GGUF_STRING) {
        const uint8_t *s;
        size_t len;
        snprintf(what, sizeof what, "a string of key '%s'", key);
        return s_str(c, &s, &len, 0, what);
    }
    if (type == GGUF_ARRAY) return s_skip_array(c, key, depth, NULL, NULL);
    size_t size = s_vsize(type);
    if (!size)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' at byte %zu has unknown value type "
                               "%u", c->origin, key, c->pos, type);
    snprintf(what, sizeof what, "the %s value of key '%s'", gguf_vtype_name(type), key);
    if (s_need(c, size, what) < 0) return -1;
    if (type == GGUF_BOOL && c->buf[c->pos] > 1)
        return medfl_error_set(MEDFL_EFORMAT, "%s: bool of key '%s' at byte %zu is neither 0 "
                               "nor 1", c->origin, key, c->pos);
    c->pos += size;
    return 0;
}

/* Keys are printable ASCII (the spec says ASCII; printable keeps messages clean). */
static bool s_printable_ascii(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e) return false;
    return true;
}

/* Tensor names: no control bytes (they appear in messages); UTF-8 beyond ASCII allowed. */
static bool s_clean_name(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] == 0x7f) return false;
    return true;
}

static char *s_strndup(const uint8_t *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* Records the string elements' offsets of an array of strings already validated. */
static int s_index_strings(gguf_t *self, kv_t *kv)
{
    kv->str_pos = malloc((kv->count ? kv->count : 1) * sizeof *kv->str_pos);
    if (!kv->str_pos) return medfl_error_set(MEDFL_ENOMEM, "%s: array '%s'", self->origin, kv->key);
    size_t pos = kv->data_pos;
    for (uint64_t i = 0; i < kv->count; i++) {
        uint64_t n;
        memcpy(&n, self->buf + pos, 8);
        kv->str_pos[i] = pos;
        pos += 8 + (size_t)n;
    }
    return 0;
}

static int s_parse_kv(gguf_t *self, cur_t *c, size_t i)
{
    kv_t *kv = &self->kv[i];
    char what[80];
    const uint8_t *key;
    size_t key_len;
    snprintf(what, sizeof what, "the key of metadata entry %zu", i);
    size_t key_at = c->pos;
    if (s_str(c, &key, &key_len, MAX_KEY_LEN, what) < 0) return -1;
    if (key_len == 0 || !s_printable_ascii(key, key_len))
        return medfl_error_set(MEDFL_EFORMAT, "%s: the key of metadata entry %zu at byte %zu is "
                               "%s", c->origin, i, key_at,
                               key_len ? "not printable ASCII" : "empty");
    if (!(kv->key = s_strndup(key, key_len)))
        return medfl_error_set(MEDFL_ENOMEM, "%s: metadata key", c->origin);
    snprintf(what, sizeof what, "the value type of key '%.40s'", kv->key);
    if (s_u32(c, &kv->type, what) < 0) return -1;
    if (kv->type > GGUF_FLOAT64)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key '%s' at byte %zu has unknown value type "
                               "%u", c->origin, kv->key, c->pos - 4, kv->type);
    kv->pos = c->pos;
    if (kv->type == GGUF_ARRAY) {
        if (s_skip_array(c, kv->key, 0, &kv->elem_type, &kv->count) < 0) return -1;
        kv->data_pos = kv->pos + 12;
        if (kv->elem_type == GGUF_STRING) return s_index_strings(self, kv);
        return 0;
    }
    if (s_skip_value(c, kv->type, kv->key, 0) < 0) return -1;
    if (kv->type == GGUF_STRING) {
        uint64_t n;
        memcpy(&n, self->buf + kv->pos, 8);
        kv->str_len = (size_t)n;
        if (!(kv->str = s_strndup(self->buf + kv->pos + 8, kv->str_len)))
            return medfl_error_set(MEDFL_ENOMEM, "%s: value of '%s'", c->origin, kv->key);
    }
    return 0;
}

/* ------------------------------------------------------------------ sorted indexes */

/* qsort_r comparators; the context is the reader. */
static int s_cmp_kv(const void *a, const void *b, void *ctx)
{
    const gguf_t *self = ctx;
    return strcmp(self->kv[*(const size_t *)a].key, self->kv[*(const size_t *)b].key);
}

static int s_cmp_tensor_name(const void *a, const void *b, void *ctx)
{
    const gguf_t *self = ctx;
    return strcmp(self->tensors[*(const size_t *)a].name, self->tensors[*(const size_t *)b].name);
}

static int s_cmp_tensor_offset(const void *a, const void *b, void *ctx)
{
    const gguf_t *self = ctx;
    const gguf_tensor_t *x = &self->tensors[*(const size_t *)a],
                        *y = &self->tensors[*(const size_t *)b];
    return (x->offset > y->offset) - (x->offset < y->offset);
}

static size_t *s_sorted(gguf_t *self, size_t n, int (*cmp)(const void *, const void *, void *))
{
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx) return NULL;
    for (size_t i = 0; i < n; i++) idx[i] = i;
    qsort_r(idx, n, sizeof *idx, cmp, self);
    return idx;
}

/* ------------------------------------------------------------------ tensors */

static int s_parse_tensor_info(gguf_t *self, cur_t *c, size_t i)
{
    gguf_tensor_t *t = &self->tensors[i];
    char what[160];
    const uint8_t *name;
    size_t name_len;
    snprintf(what, sizeof what, "the name of tensor %zu", i);
    size_t at = c->pos;
    if (s_str(c, &name, &name_len, MAX_NAME_LEN, what) < 0) return -1;
    if (!s_clean_name(name, name_len))
        return medfl_error_set(MEDFL_EFORMAT, "%s: the name of tensor %zu at byte %zu contains "
                               "control bytes", c->origin, i, at);
    if (!(t->name = s_strndup(name, name_len)))
        return medfl_error_set(MEDFL_ENOMEM, "%s: tensor name", c->origin);
    uint32_t n_dims;
    snprintf(what, sizeof what, "the dimension count of tensor '%s'", t->name);
    if (s_u32(c, &n_dims, what) < 0) return -1;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' has %u dimensions (1 to %d "
                               "allowed)", c->origin, t->name, n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    uint64_t n_el = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < n_dims; d++) {
        snprintf(what, sizeof what, "dimension %u of tensor '%s'", d, t->name);
        if (s_u64(c, &t->ne[d], what) < 0) return -1;
        if (t->ne[d] > (uint64_t)INT64_MAX) overflow = true;
    }
    /* rows (ne[1..3]) and the whole product must fit int64 (ggml's element counts) */
    uint64_t rows = 1;
    for (int d = 1; d < GGUF_MAX_DIMS && !overflow; d++) {
        if (t->ne[d] && rows > (uint64_t)INT64_MAX / t->ne[d]) overflow = true;
        rows *= t->ne[d];
    }
    if (!overflow && t->ne[0] && rows > (uint64_t)INT64_MAX / t->ne[0]) overflow = true;
    if (overflow)
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': the dimensions overflow a 64-bit "
                               "element count", c->origin, t->name);
    n_el = rows * t->ne[0];
    t->n_elements = n_el;
    snprintf(what, sizeof what, "the type of tensor '%s'", t->name);
    if (s_u32(c, &t->type, what) < 0) return -1;
    size_t block, type_size;
    const char *type_name;
    if (!quant_type_info(t->type, &block, &type_size, &type_name))
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: unknown tensor type %u in tensor '%s'",
                               c->origin, t->type, t->name);
    if (t->ne[0] % block)
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': row length %llu is not a "
                               "multiple of the %s block size %zu", c->origin, t->name,
                               (unsigned long long)t->ne[0], type_name, block);
    uint64_t row_bytes = t->ne[0] / block * type_size; /* < 2^63 / 32 * 292: no overflow */
    if (rows && row_bytes > (uint64_t)SIZE_MAX / rows)
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': its byte size overflows",
                               c->origin, t->name);
    t->n_bytes = (size_t)(row_bytes * rows);
    snprintf(what, sizeof what, "the data offset of tensor '%s'", t->name);
    return s_u64(c, &t->offset, what);
}

/* Places every tensor's data: aligned, inside the file, no two overlapping. */
static int s_place_tensors(gguf_t *self, size_t data_start)
{
    const char *o = self->origin;
    for (size_t i = 0; i < self->n_tensors; i++) {
        gguf_tensor_t *t = &self->tensors[i];
        uint64_t rel = t->offset;
        if (rel % self->alignment)
            return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': data offset %llu is not a "
                                   "multiple of the alignment %zu", o, t->name,
                                   (unsigned long long)rel, self->alignment);
        if (data_start > self->len || rel > self->len - data_start ||
            t->n_bytes > self->len - data_start - rel)
            return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': data offset %llu + %zu bytes "
                                   "from the data section at byte %zu is past the end of the "
                                   "file (%zu bytes)", o, t->name, (unsigned long long)rel,
                                   t->n_bytes, data_start, self->len);
        t->offset = data_start + rel;
        t->data = self->buf + t->offset;
    }
    size_t *by_offset = s_sorted(self, self->n_tensors, s_cmp_tensor_offset);
    if (!by_offset) return medfl_error_set(MEDFL_ENOMEM, "%s: tensor index", o);
    int rc = 0;
    for (size_t i = 1; i < self->n_tensors && rc == 0; i++) {
        const gguf_tensor_t *a = &self->tensors[by_offset[i - 1]],
                            *b = &self->tensors[by_offset[i]];
        if (a->offset + a->n_bytes > b->offset)
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: the data of tensors '%s' and '%s' overlap",
                                 o, a->name, b->name);
    }
    free(by_offset);
    return rc;
}

/* ------------------------------------------------------------------ whole file */

static int s_header(gguf_t *self, cur_t *c, uint64_t *n_tensors, uint64_t *n_kv)
{
    const char *o = self->origin;
    if (s_need(c, 4, "the magic") < 0) return -1;
    if (memcmp(c->buf, "GGUF", 4) != 0)
        return medfl_error_set(MEDFL_EFORMAT, "%s: wrong magic (the file does not start with "
                               "\"GGUF\": not a GGUF model file)", o);
    c->pos = 4;
    if (s_u32(c, &self->version, "the version") < 0) return -1;
    if (self->version == 0x02000000u || self->version == 0x03000000u)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: big-endian GGUF files are not "
                               "supported (convert it on a little-endian machine)", o);
    if (self->version == 1)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: GGUF version 1 (32-bit counts, 2023) is "
                               "not supported; versions 2 and 3 are (re-convert the model)", o);
    if (self->version != 2 && self->version != 3)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: unsupported GGUF version %u (2 and 3 "
                               "are supported)", o, self->version);
    if (s_u64(c, n_tensors, "the tensor count") < 0 || s_u64(c, n_kv, "the metadata count") < 0)
        return -1;
    /* a key-value pair takes at least 13 bytes, a tensor info at least 32 */
    if (*n_kv > (c->len - c->pos) / 13)
        return medfl_error_set(MEDFL_EFORMAT, "%s: the metadata count %llu is more than the "
                               "%zu bytes after the header can hold", o,
                               (unsigned long long)*n_kv, c->len - c->pos);
    if (*n_tensors > (c->len - c->pos) / 32)
        return medfl_error_set(MEDFL_EFORMAT, "%s: the tensor count %llu is more than the %zu "
                               "bytes after the header can hold", o,
                               (unsigned long long)*n_tensors, c->len - c->pos);
    return 0;
}

static int s_alignment(gguf_t *self)
{
    self->alignment = GGUF_DEFAULT_ALIGNMENT;
    long i = gguf_find_key(self, "general.alignment");
    if (i < 0) return 0;
    const kv_t *kv = &self->kv[i];
    if (kv->type != GGUF_UINT32)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key 'general.alignment' is a %s, expected "
                               "uint32", self->origin, gguf_vtype_name(kv->type));
    uint32_t a;
    memcpy(&a, self->buf + kv->pos, 4);
    if (a == 0 || (a & (a - 1)))
        return medfl_error_set(MEDFL_EFORMAT, "%s: key 'general.alignment' is not a power of "
                               "two", self->origin);
    self->alignment = a;
    return 0;
}

static int s_parse(gguf_t *self)
{
    cur_t c = {self->buf, self->len, 0, self->origin};
    uint64_t n_tensors, n_kv;
    if (s_header(self, &c, &n_tensors, &n_kv) < 0) return -1;
    self->kv = calloc(n_kv ? n_kv : 1, sizeof *self->kv);
    self->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *self->tensors);
    if (!self->kv || !self->tensors) return medfl_error_set(MEDFL_ENOMEM, "%s: header", self->origin);
    for (size_t i = 0; i < n_kv; i++) {
        self->n_kv = i + 1; /* destroy frees what was set so far */
        if (s_parse_kv(self, &c, i) < 0) return -1;
    }
    if (!(self->kv_sorted = s_sorted(self, self->n_kv, s_cmp_kv)))
        return medfl_error_set(MEDFL_ENOMEM, "%s: key index", self->origin);
    for (size_t i = 1; i < self->n_kv; i++)
        if (strcmp(self->kv[self->kv_sorted[i - 1]].key, self->kv[self->kv_sorted[i]].key) == 0)
            return medfl_error_set(MEDFL_EFORMAT, "%s: duplicate metadata key '%s'",
                                   self->origin, self->kv[self->kv_sorted[i]].key);
    if (s_alignment(self) < 0) return -1;
    for (size_t i = 0; i < n_tensors; i++) {
        self->n_tensors = i + 1;
        if (s_parse_tensor_info(self, &c, i) < 0) return -1;
    }
    if (!(self->tensors_sorted = s_sorted(self, self->n_tensors, s_cmp_tensor_name)))
        return medfl_error_set(MEDFL_ENOMEM, "%s: tensor index", self->origin);
    for (size_t i = 1; i < self->n_tensors; i++)
        if (strcmp(self->tensors[self->tensors_sorted[i - 1]].name,
                   self->tensors[self->tensors_sorted[i]].name) == 0)
            return medfl_error_set(MEDFL_EFORMAT, "%s: duplicate tensor name '%s'", self->origin,
                                   self->tensors[self->tensors_sorted[i]].name);
    /* the data section starts at the next multiple of the alignment */
    size_t data_start = c.pos + (self->alignment - c.pos % self->alignment) % self->alignment;
    if (data_start < c.pos) data_start = SIZE_MAX; /* wrapped: certainly past the end */
    return s_place_tensors(self, data_start);
}

gguf_t *gguf_parse(const uint8_t *buf, size_t len, const char *origin)
{
    gguf_t *self = calloc(1, sizeof *self);
    if (!self || !(self->origin = strdup(origin ? origin : "gguf"))) {
        free(self);
        medfl_error_set(MEDFL_ENOMEM, "gguf_parse");
        return NULL;
    }
    self->buf = buf;
    self->len = len;
    if (s_parse(self) < 0) {
        gguf_destroy(&self);
        return NULL;
    }
    return self;
}

gguf_t *gguf_open(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s",
                        path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        medfl_error_set(MEDFL_EIO, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            medfl_error_set(MEDFL_EIO, "%s: cannot map: %s", path, strerror(errno));
            close(fd);
            return NULL;
        }
    }
    close(fd);
    gguf_t *self = gguf_parse(len ? map : (const uint8_t *)"", len, path);
    if (!self) {
        if (map) munmap(map, len);
        return NULL;
    }
    self->map = map;
    self->map_len = len;
    return self;
}

void gguf_destroy(gguf_t **self_p)
{
    if (!self_p || !*self_p) return;
    gguf_t *self = *self_p;
    for (size_t i = 0; self->kv && i < self->n_kv; i++) {
        free(self->kv[i].key);
        free(self->kv[i].str);
        free(self->kv[i].str_pos);
    }
    free(self->kv);
    free(self->kv_sorted);
    for (size_t i = 0; self->tensors && i < self->n_tensors; i++)
        free((char *)self->tensors[i].name);
    free(self->tensors);
    free(self->tensors_sorted);
    if (self->map) munmap(self->map, self->map_len);
    free(self->origin);
    free(self);
    *self_p = NULL;
}

/* ------------------------------------------------------------------ accessors */

uint32_t gguf_version(const gguf_t *self) { return self->version; }
size_t gguf_alignment(const gguf_t *self) { return self->alignment; }
const char *gguf_origin(const gguf_t *self) { return self->origin; }
size_t gguf_kv_count(const gguf_t *self) { return self->n_kv; }
const char *gguf_kv_key(const gguf_t *self, size_t i) { return i < self->n_kv ? self->kv[i].key : NULL; }

gguf_vtype_t gguf_kv_type(const gguf_t *self, size_t i)
{
    return i < self->n_kv ? (gguf_vtype_t)self->kv[i].type : GGUF_UINT8;
}

long gguf_find_key(const gguf_t *self, const char *key)
{
    size_t lo = 0, hi = self->kv_sorted ? self->n_kv : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, self->kv[self->kv_sorted[mid]].key);
        if (c == 0) return (long)self->kv_sorted[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return -1;
}

/* The entry of a key, or NULL with an error naming the key and what was expected. */
static const kv_t *s_kv(const gguf_t *self, const char *key, const char *expected)
{
    long i = gguf_find_key(self, key);
    if (i < 0) {
        medfl_error_set(MEDFL_ENOTFOUND, "%s: metadata key '%s' (%s) is missing", self->origin,
                        key, expected);
        return NULL;
    }
    return &self->kv[i];
}

static int s_wrong_type(const gguf_t *self, const kv_t *kv, const char *expected)
{
    return medfl_error_set(MEDFL_EFORMAT, "%s: metadata key '%s' is a %s, expected %s",
                           self->origin, kv->key, gguf_vtype_name(kv->type), expected);
}

/* An integer value widened to int64 / uint64: *neg says whether it is below zero. */
static int s_int(const gguf_t *self, const char *key, const char *expected, uint64_t *mag,
                 bool *neg)
{
    const kv_t *kv = s_kv(self, key, expected);
    if (!kv) return -1;
    const uint8_t *p = self->buf + kv->pos;
    int64_t s = 0;
    uint64_t u = 0;
    bool is_signed = false;
    switch (kv->type) {
    case GGUF_UINT8: u = p[0]; break;
    case GGUF_UINT16: { uint16_t v; memcpy(&v, p, 2); u = v; break; }
    case GGUF_UINT32: { uint32_t v; memcpy(&v, p, 4); u = v; break; }
    case GGUF_UINT64: memcpy(&u, p, 8); break;
    case GGUF_INT8: s = (int8_t)p[0]; is_signed = true; break;
    case GGUF_INT16: { int16_t v; memcpy(&v, p, 2); s = v; is_signed = true; break; }
    case GGUF_INT32: { int32_t v; memcpy(&v, p, 4); s = v; is_signed = true; break; }
    case GGUF_INT64: memcpy(&s, p, 8); is_signed = true; break;
    default: return s_wrong_type(self, kv, expected);
    }
    *neg = is_signed && s < 0;
    *mag = !is_signed ? u : s < 0 ? (uint64_t)(-(s + 1)) + 1 : (uint64_t)s;
    return 0;
}

static int s_out_of_range(const gguf_t *self, const char *key, const char *expected)
{
    return medfl_error_set(MEDFL_EFORMAT, "%s: metadata key '%s' is out of range for %s",
                           self->origin, key, expected);
}

int gguf_get_u64(const gguf_t *self, const char *key, uint64_t *out)
{
    uint64_t m;
    bool neg;
    if (s_int(self, key, "uint64", &m, &neg) < 0) return -1;
    if (neg) return s_out_of_range(self, key, "uint64");
    *out = m;
    return 0;
}

int gguf_get_u32(const gguf_t *self, const char *key, uint32_t *out)
{
    uint64_t m;
    bool neg;
    if (s_int(self, key, "uint32", &m, &neg) < 0) return -1;
    if (neg || m > UINT32_MAX) return s_out_of_range(self, key, "uint32");
    *out = (uint32_t)m;
    return 0;
}

int gguf_get_i64(const gguf_t *self, const char *key, int64_t *out)
{
    uint64_t m;
    bool neg;
    if (s_int(self, key, "int64", &m, &neg) < 0) return -1;
    if (neg ? m > (uint64_t)INT64_MAX + 1 : m > (uint64_t)INT64_MAX)
        return s_out_of_range(self, key, "int64");
    *out = neg ? (m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m) : (int64_t)m;
    return 0;
}

int gguf_get_i32(const gguf_t *self, const char *key, int32_t *out)
{
    uint64_t m;
    bool neg;
    if (s_int(self, key, "int32", &m, &neg) < 0) return -1;
    if (neg ? m > (uint64_t)INT32_MAX + 1 : m > (uint64_t)INT32_MAX)
        return s_out_of_range(self, key, "int32");
    *out = neg ? (int32_t)(-(int64_t)m) : (int32_t)m;
    return 0;
}

int gguf_get_f32(const gguf_t *self, const char *key, float *out)
{
    const kv_t *kv = s_kv(self, key, "float32");
    if (!kv) return -1;
    if (kv->type != GGUF_FLOAT32) return s_wrong_type(self, kv, "float32");
    memcpy(out, self->buf + kv->pos, 4);
    return 0;
}

int gguf_get_f64(const gguf_t *self, const char *key, double *out)
{
    const kv_t *kv = s_kv(self, key, "float64 or float32");
    if (!kv) return -1;
    if (kv->type == GGUF_FLOAT32) {
        float f;
        memcpy(&f, self->buf + kv->pos, 4);
        *out = f;
        return 0;
    }
    if (kv->type != GGUF_FLOAT64) return s_wrong_type(self, kv, "float64 or float32");
    memcpy(out, self->buf + kv->pos, 8);
    return 0;
}

int gguf_get_bool(const gguf_t *self, const char *key, bool *out)
{
    const kv_t *kv = s_kv(self, key, "bool");
    if (!kv) return -1;
    if (kv->type != GGUF_BOOL) return s_wrong_type(self, kv, "bool");
    *out = self->buf[kv->pos] != 0;
    return 0;
}

int gguf_get_str(const gguf_t *self, const char *key, const char **out, size_t *len)
{
    const kv_t *kv = s_kv(self, key, "string");
    if (!kv) return -1;
    if (kv->type != GGUF_STRING) return s_wrong_type(self, kv, "string");
    *out = kv->str;
    if (len) *len = kv->str_len;
    return 0;
}

int gguf_get_arr(const gguf_t *self, const char *key, gguf_vtype_t *elem_type, uint64_t *count)
{
    const kv_t *kv = s_kv(self, key, "array");
    if (!kv) return -1;
    if (kv->type != GGUF_ARRAY) return s_wrong_type(self, kv, "array");
    if (elem_type) *elem_type = (gguf_vtype_t)kv->elem_type;
    if (count) *count = kv->count;
    return 0;
}

/* The array entry of a key whose elements are of elem_type. */
static const kv_t *s_arr(const gguf_t *self, const char *key, uint32_t elem_type)
{
    char expected[48];
    snprintf(expected, sizeof expected, "array of %s", gguf_vtype_name(elem_type));
    const kv_t *kv = s_kv(self, key, expected);
    if (!kv) return NULL;
    if (kv->type != GGUF_ARRAY) {
        s_wrong_type(self, kv, expected);
        return NULL;
    }
    if (kv->elem_type != elem_type) {
        medfl_error_set(MEDFL_EFORMAT, "%s: metadata key '%s' is an array of %s, expected %s",
                        self->origin, key, gguf_vtype_name(kv->elem_type), expected);
        return NULL;
    }
    return kv;
}

int gguf_get_arr_data(const gguf_t *self, const char *key, gguf_vtype_t elem_type, void *dst,
                      uint64_t n)
{
    size_t size = s_vsize(elem_type);
    if (!size)
        return medfl_error_set(MEDFL_EINVAL, "%s: key '%s': gguf_get_arr_data copies numbers "
                               "and bools, not %s", self->origin, key, gguf_vtype_name(elem_type));
    const kv_t *kv = s_arr(self, key, elem_type);
    if (!kv) return -1;
    if (kv->count != n)
        return medfl_error_set(MEDFL_EFORMAT, "%s: metadata key '%s' has %llu elements, "
                               "expected %llu", self->origin, key,
                               (unsigned long long)kv->count, (unsigned long long)n);
    memcpy(dst, self->buf + kv->data_pos, (size_t)n * size);
    return 0;
}

int gguf_get_arr_str(const gguf_t *self, const char *key, uint64_t i, const char **s,
                     size_t *len)
{
    const kv_t *kv = s_arr(self, key, GGUF_STRING);
    if (!kv) return -1;
    if (i >= kv->count)
        return medfl_error_set(MEDFL_EINVAL, "%s: metadata key '%s': element %llu of %llu "
                               "requested", self->origin, key, (unsigned long long)i,
                               (unsigned long long)kv->count);
    uint64_t n;
    memcpy(&n, self->buf + kv->str_pos[i], 8);
    *s = (const char *)self->buf + kv->str_pos[i] + 8;
    *len = (size_t)n;
    return 0;
}

size_t gguf_tensor_count(const gguf_t *self) { return self->n_tensors; }

const gguf_tensor_t *gguf_tensor_at(const gguf_t *self, size_t i)
{
    return i < self->n_tensors ? &self->tensors[i] : NULL;
}

const gguf_tensor_t *gguf_find_tensor(const gguf_t *self, const char *name)
{
    size_t lo = 0, hi = self->tensors_sorted ? self->n_tensors : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const gguf_tensor_t *t = &self->tensors[self->tensors_sorted[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

const gguf_tensor_t *gguf_get_tensor(const gguf_t *self, const char *name)
{
    const gguf_tensor_t *t = gguf_find_tensor(self, name);
    if (!t) medfl_error_set(MEDFL_ENOTFOUND, "%s: tensor '%s' not found", self->origin, name);
    return t;
}
