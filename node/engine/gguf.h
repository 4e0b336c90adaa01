/* GGUF model files (ggml / llama.cpp's format, versions 2 and 3, little-endian): a strict,
 * zero-copy reader. The file is mapped read-only and validated completely before anything is
 * exposed, because import-model turns whatever a user downloaded into the node's base model:
 * every count is bounded by the bytes left, every string length checked, tensor types known,
 * n_dims 1..4, element and byte counts free of overflow, tensor data aligned, inside the file
 * and not overlapping. Errors (MEDFL_EFORMAT, MEDFL_EUNSUPPORTED) name the file, the field,
 * key or tensor, and the byte offset, never a value.
 *
 * Layout: "GGUF", u32 version, u64 tensor_count, u64 kv_count, kv_count x (string key, u32
 * value type, value), tensor_count x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
 * u64 offset), padding to general.alignment (u32, default 32), data. Strings are u64 length +
 * bytes (no NUL). Arrays are u32 element type + u64 count + elements (any type, nested too).
 *
 * Shapes are GGUF's: ne[0] is the contiguous dimension (a row), so a Linear weight
 * [out, in] has ne = {in, out}. */
#ifndef MEDFL_GGUF_H
#define MEDFL_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* Metadata value types (the spec's gguf_metadata_value_type). */
typedef enum {
    GGUF_UINT8 = 0,
    GGUF_INT8 = 1,
    GGUF_UINT16 = 2,
    GGUF_INT16 = 3,
    GGUF_UINT32 = 4,
    GGUF_INT32 = 5,
    GGUF_FLOAT32 = 6,
    GGUF_BOOL = 7,
    GGUF_STRING = 8,
    GGUF_ARRAY = 9,
    GGUF_UINT64 = 10,
    GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12,
} gguf_vtype_t;

typedef struct {
    const char *name;  /* NUL-terminated copy */
    uint32_t type;     /* ggml type id (node/engine/quant.h) */
    int n_dims;        /* 1..4 */
    uint64_t ne[GGUF_MAX_DIMS]; /* unused dimensions are 1 */
    uint64_t n_elements;
    size_t n_bytes;
    uint64_t offset;   /* from the start of the file */
    const void *data;  /* n_bytes inside the mapping; aligned to the file's alignment */
} gguf_tensor_t;

typedef struct gguf_t gguf_t;

/* Maps and validates a file. NULL on error (message names the file and what is wrong). */
gguf_t *gguf_open(const char *path);
/* Validates a file image in memory (not copied: buf must outlive the object); `origin` names
 * it in messages. The fuzzed entry point. */
gguf_t *gguf_parse(const uint8_t *buf, size_t len, const char *origin);
void gguf_destroy(gguf_t **self_p);

uint32_t gguf_version(const gguf_t *self);
size_t gguf_alignment(const gguf_t *self);
const char *gguf_origin(const gguf_t *self);

/* ---- metadata. Keys are NUL-terminated; i indexes file order. */
size_t gguf_kv_count(const gguf_t *self);
const char *gguf_kv_key(const gguf_t *self, size_t i);
gguf_vtype_t gguf_kv_type(const gguf_t *self, size_t i);
/* Index of a key, -1 when absent (no error recorded). */
long gguf_find_key(const gguf_t *self, const char *key);
/* Name of a value type ("uint32", "array"...). */
const char *gguf_vtype_name(uint32_t type);

/* Typed getters: 0, or -1 with an error naming the file and key and saying what was expected
 * (MEDFL_ENOTFOUND when absent, MEDFL_EFORMAT when of another type or out of range).
 * Integer getters accept any integer type whose value fits the requested one; gguf_get_f64
 * accepts float32 too; the others want their exact type. */
int gguf_get_u32(const gguf_t *self, const char *key, uint32_t *out);
int gguf_get_i32(const gguf_t *self, const char *key, int32_t *out);
int gguf_get_u64(const gguf_t *self, const char *key, uint64_t *out);
int gguf_get_i64(const gguf_t *self, const char *key, int64_t *out);
int gguf_get_f32(const gguf_t *self, const char *key, float *out);
int gguf_get_f64(const gguf_t *self, const char *key, double *out);
int gguf_get_bool(const gguf_t *self, const char *key, bool *out);
/* A string value, NUL-terminated, owned by the reader; *len (may be NULL) is its byte length
 * (GGUF strings may contain NUL bytes: use len when that matters). */
int gguf_get_str(const gguf_t *self, const char *key, const char **out, size_t *len);

/* Arrays: element type and count. */
int gguf_get_arr(const gguf_t *self, const char *key, gguf_vtype_t *elem_type, uint64_t *count);
/* Copies the n elements of a numeric or bool array of element type `elem_type` into dst
 * (n * element size bytes); an array of another type or count is an error naming both. */
int gguf_get_arr_data(const gguf_t *self, const char *key, gguf_vtype_t elem_type, void *dst,
                      uint64_t n);
/* Element i of an array of strings: pointer into the mapped file (NOT NUL-terminated) and
 * length. O(1). */
int gguf_get_arr_str(const gguf_t *self, const char *key, uint64_t i, const char **s,
                     size_t *len);

/* ---- tensors, in file order */
size_t gguf_tensor_count(const gguf_t *self);
const gguf_tensor_t *gguf_tensor_at(const gguf_t *self, size_t i);
/* NULL when absent (no error recorded: callers decide whether that is fatal). */
const gguf_tensor_t *gguf_find_tensor(const gguf_t *self, const char *name);
/* The same, with an error "FILE: tensor 'NAME' not found" when absent. */
const gguf_tensor_t *gguf_get_tensor(const gguf_t *self, const char *name);
/* Row length (ne[0]) and number of rows (ne[1] * ne[2] * ne[3]). */
static inline uint64_t gguf_tensor_rows(const gguf_tensor_t *t)
{
    return t->n_elements / (t->ne[0] ? t->ne[0] : 1);
}

#endif
