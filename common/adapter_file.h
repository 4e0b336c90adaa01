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
 * PEFT export: the one writer of Hugging Face PEFT folders (adapter_peft_write), used for
 * adapter files (adapter_export_peft) and for the aggregator's versions (`export VERSION
 * --peft DIR`). It writes adapter_model.safetensors (the tensors under the names PEFT saves)
 * and adapter_config.json (peft_type LORA, r, lora_alpha, target_modules,
 * base_model_name_or_path, ...), for one of two Hugging Face models:
 *   FEATURE_EXTRACTION  PeftModel.from_pretrained(BertModel, dir): the encoder's LoRA only.
 *                       adapter_export_peft puts our head (pooling + linear, not a module of
 *                       BertModel) beside them: medfl_head.safetensors ("classifier.weight",
 *                       "classifier.bias") and medfl_head.json (labels, pooling, hash).
 *   SEQ_CLS             PeftModel.from_pretrained(AutoModelForSequenceClassification, dir):
 *                       the encoder under its attribute (prefix "bert"), the classifier as a
 *                       module to save.
 * target_modules is the list of module suffixes ("attention.self.query", ...) when that is
 * exact, else (LoRA on some layers only, or "output.dense" without "attention.output.dense",
 * whose suffix PEFT would also match) a regular expression naming each adapted module, which
 * PEFT full-matches. */
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
/* Which Hugging Face model a PEFT export is loaded into (see the top of this file). */
typedef enum {
    ADAPTER_PEFT_FEATURE_EXTRACTION,
    ADAPTER_PEFT_SEQ_CLS,
} adapter_peft_task_t;

typedef struct {
    adapter_peft_task_t task;
    const char *prefix;      /* SEQ_CLS: the encoder's attribute in the model; NULL = "bert" */
    bool include_head;       /* SEQ_CLS: export classifier.* (modules_to_save ["classifier"]) */
    double lora_alpha;
    const char *base_model;  /* base_model_name_or_path; NULL writes null */
} adapter_peft_opts_t;

/* PEFT name of a medfl tensor name for an encoder under `prefix` ("" or NULL: BertModel):
 *   base_model.model.encoder.X  -> base_model.model.<prefix>.encoder.X
 *   classifier.Y                -> base_model.model.classifier.Y
 * and back. -1 (EINVAL) for names outside these forms. */
int adapter_peft_name(const char *name, const char *prefix, char *out, size_t size);
int adapter_medfl_name(const char *peft_name, const char *prefix, char *out, size_t size);

/* Splits a medfl LoRA name "base_model.model.encoder.layer.3.attention.self.query.lora_A.weight"
 * into layer 3, module "attention.self.query", which 'A'; false for other names. */
bool adapter_lora_parts(const char *name, int *layer, char *module, size_t size, char *which);

/* Writes adapter_model.safetensors + adapter_config.json (dir created if missing) from
 * tensors under medfl names: LoRA tensors of encoder layers (one rank), and classifier.*
 * (exported only for SEQ_CLS with include_head; skipped otherwise). The data pointers are
 * only read. */
int adapter_peft_write(const char *dir, const named_tensor_t *tensors, size_t n,
                       const adapter_peft_opts_t *opts) __attribute__((warn_unused_result));

/* FEATURE_EXTRACTION export of an adapter, with medfl_head.* beside when it has a head. */
int adapter_export_peft(const adapter_t *a, const char *dir);

/* ---- label config (label_config.json beside a SEQ_CLS PEFT folder) ----
 * The class names and pooling of a classifier, in the keys a Hugging Face config.json uses,
 * so a user can pass them to AutoModelForSequenceClassification.from_pretrained (ids as
 * ints: JSON keys are strings) and medfl can read them back:
 *   {"id2label": {"0": "A", ...}, "label2id": {"A": 0, ...}, "num_labels": K,
 *    "problem_type": "single_label_classification", "medfl_pooling": "mean" | "cls" | null}
 * Written by `medfl-node init-adapter` (the genesis adapter) and `medfl-aggregator export`,
 * read by `medfl-aggregator init-version`. id2label/label2id/num_labels are left out when
 * the labels are unknown (n_labels 0); medfl_pooling is null when the pooling is. */
#define ADAPTER_LABEL_CONFIG "label_config.json"
#define ADAPTER_MAX_LABEL 256      /* bytes of one label name */
#define ADAPTER_MAX_LABELS 100000

/* Checks a label list: 1..ADAPTER_MAX_LABELS names (or none), each non-empty, at most
 * ADAPTER_MAX_LABEL bytes, without control characters, all different. Errors name the
 * position, never the label (origin prefixes them). */
int adapter_labels_check(char *const *labels, size_t n, const char *origin);
/* Writes dir/label_config.json (crash-safe). pooling: "mean", "cls", or NULL/"" (unknown). */
int adapter_label_config_write(const char *dir, char *const *labels, size_t n_labels,
                               const char *pooling) __attribute__((warn_unused_result));
/* Reads a label config (or any config.json with id2label): ids must be exactly 0..K-1,
 * label2id (when present) its inverse, num_labels (when present) K, medfl_pooling (when
 * present and not null) mean or cls; other keys are ignored. Labels in id order into
 * *labels (release with adapter_labels_free), pooling "" when absent. MEDFL_ENOTFOUND
 * when the file does not exist, MEDFL_EFORMAT naming the file and key otherwise. */
int adapter_label_config_read(const char *path, char ***labels, size_t *n_labels,
                              char pooling[8]) __attribute__((warn_unused_result));
/* The same from text in memory; `origin` names it in errors. */
int adapter_label_config_parse(const char *text, size_t len, const char *origin, char ***labels,
                               size_t *n_labels, char pooling[8]) __attribute__((warn_unused_result));
void adapter_labels_free(char ***labels, size_t n);

#endif
