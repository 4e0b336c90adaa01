/* Glue between the model engine (node/engine/model.h) and the files: the model's config from a
 * base model file, its frozen weights from that file, and the trainable LoRA + head tensors
 * saved to / loaded from adapter files by name. Kept apart from model.c and adapter_file.c so
 * that neither depends on the other; everything goes through their public APIs. */
#ifndef MEDFL_MODEL_IO_H
#define MEDFL_MODEL_IO_H

#include <stddef.h>

#include "common/adapter_file.h"
#include "node/engine/base_file.h"
#include "node/engine/model.h"

/* Copies the encoder sizes of a base file's config into cfg (other fields kept). */
void model_config_from_base(model_config_t *cfg, const base_config_t *base);
/* Loads every base tensor of the file into the model (shapes checked by name). */
int model_load_base(model_t *m, base_file_t *bf);
/* "query,value,..." names of a LORA_* bitmask (as model_lora_targets_parse reads them). */
size_t model_targets_names(unsigned targets, const char *names[MODEL_N_TARGETS]);

/* Saves the model's trainable tensors with metadata (labels in head order, the base file's
 * weights hash and a name for PEFT's base_model_name_or_path). No optimizer state. */
int model_save_adapter(const model_t *m, const char *path, const char *const *labels,
                       size_t n_labels, const char *base_hash, const char *base_name);
/* Loads an adapter into the model: r, alpha, targets, pooling and label count must match the
 * model's config, base_hash (when both are non-empty) the base file's, and every trainable
 * tensor must be present with its shape. */
int model_load_adapter(model_t *m, const char *path, const char *base_hash);

#endif
