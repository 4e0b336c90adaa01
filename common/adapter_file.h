/* Adapter files: what a node trains and the federation moves and versions — the LoRA
 * tensors and the classification head, optionally the AdamW state, and the metadata needed
 * to use them (rank, alpha, targets, labels, pooling, which base model they belong to).
 * The functions take and return (name, shape, float*) lists so they do not depend on the
 * model's internal layout.
 *
 * HDF5 layout (format_version 1, readable by h5py):
 *   /                  attrs format = "medfl-adapter", format_version = 1, r (int64),
 *                      lora_alpha (float64), pooling ("mean" | "cls"), base_model_hash
 *                      (hex, "" when unknown), base_model_name
 *   /targets           LoRA target names (strings, as configured: "query", "value", ...)
 *   /labels            class labels in head order (strings)
 *   /tensors/<name>    float32, PEFT names: "base_model.model.encoder.layer.0.attention.self.
 *                      query.lora_A.weight" [r, in], "...lora_B.weight" [out, r],
 *                      "classifier.weight" [K, hidden], "classifier.bias" [K]
 *   /optimizer         optional: attr step (int64); /optimizer/m/<name>, /optimizer/v/<name>
 *                      with the shapes of /tensors/<name>
 *
 * PEFT export (adapter_export_peft) writes a folder PeftModel.from_pretrained(BertModel, dir)
 * loads: adapter_model.safetensors (the LoRA tensors under their PEFT names) and
 * adapter_config.json (peft_type LORA, task_type FEATURE_EXTRACTION, r, lora_alpha,
 * target_modules, base_model_name_or_path). The head is not a module of BertModel, so it goes
 * beside them: medfl_head.safetensors ("classifier.weight", "classifier.bias") and
 * medfl_head.json (labels, pooling, base_model_hash). */
#ifndef MEDFL_ADAPTER_FILE_H
#define MEDFL_ADAPTER_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/named_tensor.h"

#define ADAPTER_FILE_FORMAT "medfl-adapter"
#define ADAPTER_FILE_VERSION 1

typedef struct {
    int64_t r;
    double alpha;
    char pooling[8];            /* "mean" or "cls" */
    char base_hash[80];         /* hex weights hash of the base model file, "" if unknown */
    char base_model_name[512];  /* PEFT's base_model_name_or_path */
    char **targets;
    size_t n_targets;
    char **labels;
    size_t n_labels;
    named_tensor_t *tensors;    /* LoRA + head */
    size_t n_tensors;
    bool has_optimizer;
    int64_t step;
    named_tensor_t *m, *v;      /* n_tensors each, same names and shapes as tensors */
} adapter_t;

/* Checks the metadata and every tensor's shape against r and the head against the labels. */
int adapter_validate(const adapter_t *a, const char *origin);
/* Writes (temp file + fsync + rename). Pointers in a are only read. */
int adapter_write(const char *path, const adapter_t *a);
/* Reads into *a (everything owned; release with adapter_free). */
int adapter_read(const char *path, adapter_t *a);
void adapter_free(adapter_t *a);
/* Finds a tensor by name in a->tensors, NULL when absent. */
const named_tensor_t *adapter_find(const adapter_t *a, const char *name);
/* Writes the PEFT folder (created if missing). */
int adapter_export_peft(const adapter_t *a, const char *dir);

#endif
