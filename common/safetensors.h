/* safetensors files (Hugging Face's weight format): a strict reader for importing pretrained
 * models and a float32 writer for the PEFT adapter export.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
 * then the data buffer that offsets index. The reader trusts nothing: header length against
 * the file size, JSON shape, every dtype, shape x dtype size == byte length, offsets inside the
 * buffer, and the buffer covered exactly once (no overlaps, no holes — as the reference
 * implementation requires). F32, F16 and BF16 convert to float32; other dtypes are listed but
 * reading them is an MEDFL_EUNSUPPORTED error naming the tensor. */
#ifndef MEDFL_SAFETENSORS_H
#define MEDFL_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/named_tensor.h"

#define ST_MAX_HEADER (100u * 1024 * 1024) /* the reference implementation's limit */

typedef struct {
    char *name;
    char dtype[12];   /* "F32", "BF16", "I64", ... */
    size_t dtype_size;
    int ndim;
    int64_t shape[NT_MAX_DIMS];
    size_t begin, end; /* byte range inside the data buffer */
} st_tensor_t;

typedef struct safetensors_t safetensors_t;

/* Maps and validates a file. NULL on error (message names the file and the field). */
safetensors_t *safetensors_open(const char *path);
/* Validates a whole file image held in memory (not copied: buf must outlive the object).
 * `origin` names it in messages. This is the fuzzed entry point. */
safetensors_t *safetensors_parse(const uint8_t *buf, size_t len, const char *origin);
void safetensors_destroy(safetensors_t **self_p);

size_t safetensors_count(const safetensors_t *self);
/* Tensors in header order. */
const st_tensor_t *safetensors_at(const safetensors_t *self, size_t i);
/* NULL when absent (no error recorded: callers decide whether that is fatal). */
const st_tensor_t *safetensors_find(const safetensors_t *self, const char *name);
/* Value of a "__metadata__" key, or NULL. */
const char *safetensors_metadata(const safetensors_t *self, const char *key);

/* Converts a tensor to float32 into dst (numel floats). Errors name file and tensor. */
int safetensors_read_f32(const safetensors_t *self, const st_tensor_t *t, float *dst);

/* Writes tensors as F32 with optional metadata (n_meta key/value pairs, e.g. format=pt),
 * through a temporary file, fsync and rename. Duplicate names are an error. */
int safetensors_write_f32(const char *path, const named_tensor_t *tensors, size_t count,
                          const char *const *meta_kv, size_t n_meta);

#endif
