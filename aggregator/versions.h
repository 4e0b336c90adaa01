/* The aggregator's version tools: listing the signed version chain, rollback, seeding the
 * federation from a locally trained adapter, and export to Hugging Face PEFT. The store
 * itself (format, hashing, signing, verification) is common/version_store, shared with the
 * nodes; this module adds what only the consortium operator does.
 *
 * Where things are: versions live in <state_dir>/versions; the contribution history in
 * <state_dir>/contrib.db; the aggregator's Ed25519 identity in <key_dir>/identity.key
 * (128 hex digits, mode 0600) and identity.pub (64 hex digits), as common/keys writes them. */
#ifndef MEDFL_AGG_VERSIONS_H
#define MEDFL_AGG_VERSIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aggregator/strategy.h"
#include "common/version_store.h"

/* "<state_dir>/versions" */
void versions_dir(const char *state_dir, char *out, size_t size);

/* Reads an Ed25519 key written as hex (identity.pub: 32 bytes; identity.key: 64 bytes, which
 * must not be readable by group or others). The value may also be given directly as hex. */
int versions_read_hex_key(const char *path_or_hex, uint8_t *out, size_t n, bool secret)
    __attribute__((warn_unused_result));

typedef struct {
    const char *prefix;      /* the encoder's attribute in the model; NULL = "bert" */
    double lora_alpha;       /* <= 0: the manifest's "lora_alpha" attribute */
    const char *base_model;  /* NULL: the "base_model" attribute (may be absent) */
    const char *pooling;     /* "mean" | "cls"; NULL: the "pooling" attribute (may be absent) */
    bool include_head;       /* export classifier.* as a module to save */
    bool verified;           /* said in the README: the chain was verified before export */
} versions_export_opts_t;

/* Writes a version's tensors into dir (created when missing) for
 * AutoModelForSequenceClassification: adapter_model.safetensors + adapter_config.json through
 * the common PEFT writer (common/adapter_file, task SEQ_CLS), label_config.json (the
 * "labels" attribute as id2label/label2id, and the pooling) and README.md (base model,
 * labels, task, pooling, and how to predict as medfl does). */
int versions_export_peft(const vs_manifest_t *m, const float *flat, const char *dir,
                         const versions_export_opts_t *opts) __attribute__((warn_unused_result));

/* Reads a PEFT adapter (a folder with adapter_model.safetensors and adapter_config.json, or
 * a .safetensors file) into a manifest (tensor table in the model's layout order, attributes
 * lora_r, lora_alpha, target_modules, base_model; labels and pooling from a label_config.json
 * beside adapter_config.json, as `medfl-node init-adapter` writes it) and a flat vector. */
int versions_read_peft(const char *path, const char *prefix, vs_manifest_t **m_out, float **flat_out)
    __attribute__((warn_unused_result));

/* One round's server step, end to end: loads and verifies the head version, continues the
 * server optimizer from the head's saved state (fresh when none), applies
 * x <- step(x, S, W) (aggregator/strategy), and commits the result as a new signed version
 * (parent = head) carrying the head's tensor table and attributes plus this round's id,
 * participants with their weights, and aggregated metrics. The optimizer state is saved as
 * opt_v<new>.bin BEFORE the version is committed, so a crash in between leaves at worst an
 * unused state file that the next attempt overwrites. weighted_sum holds numel floats in
 * the head's table layout. sk: the aggregator's 64-byte Ed25519 secret key. */
int versions_next(vs_store_t *s, const uint8_t sk[VS_SK_BYTES], const strategy_params_t *p,
                  const float *weighted_sum, size_t numel, double weight_total, uint64_t round,
                  const vs_participant_t *participants, size_t n_participants,
                  const vs_metric_t *metrics, size_t n_metrics, uint64_t *version_out)
    __attribute__((warn_unused_result));

int cmd_versions(int argc, char **argv);
int cmd_rollback(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_init_version(int argc, char **argv);

#endif
