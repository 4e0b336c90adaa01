/* The node's base model file: one HDF5 file written by `medfl-node import-model` from a
 * Hugging Face BERT folder, and the only thing the node loads its frozen encoder from.
 *
 * Layout (format_version 1), all readable by h5py:
 *   /                 attrs format = "medfl-base-model", format_version = 1,
 *                     weights_hash (hex BLAKE2b-256 of names, shapes and float32 data in the
 *                     canonical tensor order; adapters record it to refuse a wrong base),
 *                     source (where it was imported from), model_name (the model's
 *                     Hugging Face id, e.g. "sentence-transformers/all-MiniLM-L6-v2", that
 *                     PEFT exports name as base_model_name_or_path; "" when unknown)
 *   /config           attrs model_type, hidden_act, hidden_size, num_hidden_layers,
 *                     num_attention_heads, intermediate_size, vocab_size,
 *                     max_position_embeddings, type_vocab_size, pad_token_id (int64),
 *                     layer_norm_eps (float64), do_lower_case (int64 0/1)
 *   /vocab            vocabulary, variable-length UTF-8 strings, id = index
 *   /weights/<name>   float32 datasets named exactly as Hugging Face's BertModel names them
 *                     ("embeddings.word_embeddings.weight",
 *                     "encoder.layer.0.attention.self.query.weight", ...), Linear weights
 *                     [out, in] row-major as in PyTorch. */
#ifndef MEDFL_BASE_FILE_H
#define MEDFL_BASE_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/named_tensor.h"
#include "node/engine/tokenizer.h"

#define BASE_FILE_FORMAT "medfl-base-model"
#define BASE_FILE_VERSION 1
#define BASE_HASH_HEX 65 /* 64 hex digits + NUL */

typedef struct {
    char model_type[16];
    char hidden_act[16];
    int64_t hidden_size;
    int64_t num_hidden_layers;
    int64_t num_attention_heads;
    int64_t intermediate_size;
    int64_t vocab_size;
    int64_t max_position_embeddings;
    int64_t type_vocab_size;
    int64_t pad_token_id;
    double layer_norm_eps;
    bool do_lower_case;
} base_config_t;

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[2];
} base_tensor_spec_t;

/* Checks ranges and consistency (hidden_size divisible by heads, ...); origin names the
 * source in messages. */
int base_config_validate(const base_config_t *cfg, const char *origin);
/* Every tensor a BERT encoder of this config needs, in canonical order (embeddings, then
 * each layer). *specs is malloc'ed. */
int base_tensor_specs(const base_config_t *cfg, base_tensor_spec_t **specs, size_t *count);

/* Writes a base file: `tensors` must be exactly the specs' set (any order) with matching
 * shapes. Temp file + fsync + rename. */
int base_file_write(const char *path, const base_config_t *cfg, const char *const *vocab,
                    size_t n_vocab, const named_tensor_t *tensors, size_t n_tensors,
                    const char *source, const char *model_name);

typedef struct base_file_t base_file_t;

/* Opens and checks format, version, config and vocabulary size. */
base_file_t *base_file_open(const char *path);
void base_file_destroy(base_file_t **self_p);
const base_config_t *base_file_config(const base_file_t *self);
const char *base_file_hash(const base_file_t *self);
/* The model_name attribute ("" when the file has none). */
const char *base_file_model_name(const base_file_t *self);
/* Convenience: just the config of a file. */
int base_file_read_config(const char *path, base_config_t *cfg);
/* Reads one weight by HF name into dst, checking the shape. */
int base_file_read_tensor(base_file_t *self, const char *name, float *dst, int ndim,
                          const int64_t *shape);
/* Calls fn for every required tensor in canonical order; the tensor's data is valid only
 * during the call. Stops at the first non-zero return (which is returned). */
int base_file_foreach_tensor(base_file_t *self,
                             int (*fn)(void *ctx, const named_tensor_t *tensor), void *ctx);
/* Recomputes the weights hash and compares it with the stored one. */
int base_file_verify(base_file_t *self);
/* The tokenizer of the stored vocabulary and do_lower_case. */
tokenizer_t *base_file_tokenizer(base_file_t *self);

#endif
