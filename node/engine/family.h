/* Model families: one table per architecture (BERT encoder, Llama decoder) that owns its
 * names and layout -- the LoRA target modules under every name they go by (medfl config,
 * Hugging Face / PEFT module path, PEFT target_modules entry, llama.cpp GGUF tensor), the
 * prefixes that make whole tensor names of them, and how a "model.lora.targets" list parses --
 * plus the family's compute entry points (forward with the task loss, backward, per-example
 * gradients for DP-SGD's norms) behind one signature.
 *
 * WHY: a second family must be a new table, not edits in every file that spells
 * "attention.self.query". Code that needs a tensor or target name asks the family
 * (family_lora_name, family_target_find, family_targets_parse); code that drives training
 * may go through ops without knowing which family it holds.
 *
 * Target bit t of a family's mask is targets[t] (the LORA_* / LLAMA_LORA_* enums follow the
 * table's order; family.c checks it at compile time).
 *
 * Typical use:
 *   const model_family_t *f = family_find("bert");
 *   unsigned mask; family_targets_parse(f, "query,value", &mask);
 *   char nm[FAMILY_NAME_MAX]; family_lora_name(f, 3, 0, 'A', nm, sizeof nm);
 *     -> "base_model.model.encoder.layer.3.attention.self.query.lora_A.weight" */
#ifndef MEDFL_FAMILY_H
#define MEDFL_FAMILY_H

#include <stdbool.h>
#include <stddef.h>

#define FAMILY_MAX_TARGETS 8
#define FAMILY_NAME_MAX 200 /* longest tensor name a family makes, NUL included */

/* One LoRA target module under each of its names. */
typedef struct {
    const char *config; /* medfl's short name in model.lora.targets: "query", "q" */
    const char *module; /* path inside a layer (HF and PEFT): "attention.self.query" */
    const char *peft;   /* PEFT target_modules entry (last path component): "query", "q_proj" */
    const char *gguf;   /* llama.cpp tensor inside blk.N: "attn_q"; NULL where none exists */
} family_target_t;

/* A family's compute, type-erased: model is the family's own handle (model_t, llama_t) and
 * batch its batch struct (model_batch_t, llama_batch_t). NULL where the family has no such
 * entry yet. All return 0 or -1 with a medfl error. */
typedef struct {
    /* forward with the task loss (BERT: classification cross-entropy; Llama: causal-LM
     * cross-entropy over labelled tokens), keeping what backward needs */
    int (*forward_loss)(void *model, const void *batch, float *loss);
    int (*backward)(void *model);
    /* per-example gradients of the last forward (DP-SGD clips their norms): example e's
     * gradient into per_example[e * n_trainable ...], the gradient buffer untouched */
    int (*per_example_grads)(void *model, float *per_example);
} family_ops_t;

typedef struct {
    const char *name;        /* "bert", "llama" */
    const char *hf_arch;     /* Hugging Face architecture it imports: "BertModel" */
    const char *layer_path;  /* HF name prefix of layer l is "<layer_path>.<l>." */
    const char *peft_prefix; /* prefix of a PEFT LoRA tensor name: "base_model.model." */
    const char *gguf_block;  /* GGUF name prefix of layer l, "<gguf_block>.<l>."; NULL: none */
    bool head_only_allowed;  /* "none" is a valid target list (only a task head trains) */
    unsigned default_targets;
    int n_targets;
    family_target_t targets[FAMILY_MAX_TARGETS];
    family_ops_t ops;
} model_family_t;

const model_family_t *family_bert(void);
const model_family_t *family_llama(void);
/* By name ("bert", "llama"); NULL with a medfl error naming the known families. */
const model_family_t *family_find(const char *name);

/* Bits of every target of the family. */
unsigned family_targets_all(const model_family_t *f);
/* Target index whose config, peft or module name is `name`; -1 (no error set) if none. */
int family_target_find(const model_family_t *f, const char *name);
/* Parses "query,value" (config, PEFT or module names, comma/space separated), "all", or,
 * where head_only_allowed, "none" alone (mask 0). -1 with a medfl error naming the unknown
 * entry (cut to 40 bytes) and the accepted names. */
int family_targets_parse(const model_family_t *f, const char *list, unsigned *out);
/* Config names of the bits of mask, in target order, into names (room for n_targets);
 * returns how many. */
size_t family_targets_names(const model_family_t *f, unsigned mask, const char *names[]);
/* PEFT name of layer l's target t, which = 'A' or 'B':
 * "<peft_prefix><layer_path>.<l>.<module>.lora_A.weight". -1 on a bad index or short buffer. */
int family_lora_name(const model_family_t *f, int l, int t, char which, char *out, size_t size);
/* HF base tensor of layer l's target t: "<layer_path>.<l>.<module>.<suffix>" (suffix
 * "weight" or "bias"), and its GGUF name "<gguf_block>.<l>.<gguf>.<suffix>" (-1 where the
 * family or target has no GGUF name). */
int family_base_name(const model_family_t *f, int l, int t, const char *suffix, char *out,
                     size_t size);
int family_gguf_name(const model_family_t *f, int l, int t, const char *suffix, char *out,
                     size_t size);

#endif
