/* `medfl-node train-local` and `medfl-node eval` when model.base is a decoder LLM (a GGUF
 * file, or the base.gguf that import-model --gguf wrote beside base.h5): LoRA fine-tuning
 * on prompt/response or chat records (node/llm_data.h) with AdamW, validation loss and
 * perplexity each epoch, the adapter written as a PEFT folder (what `generate --adapter`
 * reads); evaluation by loss, perplexity, exact match and ROUGE-L of the greedy answer, and
 * multiple-choice accuracy by option log-likelihood. docs/llm.md, "Fine-tuning a decoder".
 *
 * WHY beside the classifier's trainer (node/train.c) and not inside it: the two share the
 * configuration ([data], [model], [train], [privacy] of node.conf), the progress bar and the
 * command lines, not their data (labels vs conversations) nor their model. */
#ifndef MEDFL_NODE_LLM_TRAIN_H
#define MEDFL_NODE_LLM_TRAIN_H

#include <stdbool.h>
#include <stddef.h>

#include "node/deid.h"
#include "node/engine/llama_gguf.h"
#include "node/train.h"

typedef struct {
    const train_config_t *train;
    const data_config_t *data;   /* records (path), max_text_bytes, deid.policy */
    const char *device;
    const char *out;             /* train-local: adapter folder (NULL: "adapter") */
    const char *adapter;         /* eval: PEFT folder, NULL: the base alone */
    const char *split;           /* eval: train|valid|all, NULL: valid */
    bool whole;                  /* eval: --records FILE given: every record */
} llm_cmd_t;

/* true when base (model.base) names a decoder: a .gguf file, or a base.h5 path with the
 * base.gguf import-model --gguf writes beside it; gguf receives the GGUF's path. */
bool llm_base_is_decoder(const char *base, char *gguf, size_t size);

/* The commands; they return the process exit status (0, 1, 3 when the de-identification
 * gate refuses), the error printed. */
int llm_train_local(const llm_cmd_t *a);
int llm_eval(const llm_cmd_t *a);

/* A PEFT adapter folder: r, lora_alpha and target_modules of its adapter_config.json into o,
 * then (after the model is built with them) its tensors into m's LoRA parameters -- exactly
 * the tensors those settings make, finite. */
int llm_adapter_config(const char *dir, llama_gguf_opts_t *o);
int llm_adapter_load(llama_t *m, const char *dir);

#endif
