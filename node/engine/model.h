/* BERT-family encoder (BERT, MiniLM, ClinicalBERT, PubMedBERT) with LoRA adapters and a
 * classification head: forward, backward (LoRA + head gradients only, activation gradients
 * through the frozen base), per-example gradients for DP-SGD, and AdamW.
 *
 * WHY this shape (llm.c style): each parameter set is ONE contiguous buffer cut by a sizes
 * table -- base weights (frozen), trainable parameters (LoRA A/B of every target of every
 * layer, then the head), their gradients, AdamW m and v -- so the flat trainable vector is
 * what the node serialises, clips, masks and sums, and the optimizer is one loop. Every
 * tensor has its Hugging Face / PEFT name so that importers and exporters work by name.
 * All arithmetic goes through a backend_t (node/engine/backend.h), so the cuBLAS backend runs the
 * same code.
 *
 * Typical use:
 *   model_config_t cfg; model_config_default(&cfg);  (then set sizes from config.json)
 *   backend_t *be = backend_new("cpu", 2);
 *   model_t *m = model_new(&cfg, be);
 *   model_base_set(m, "encoder.layer.0.attention.self.query.weight", data, n);  (each tensor)
 *   model_init_trainable(m, seed);
 *   model_batch_t in = {ids, type_ids, mask, labels, B, T};
 *   model_zero_grad(m); model_forward(m, &in, &loss); model_backward(m);
 *   model_adamw_step(m, &opt, step);
 */
#ifndef MEDFL_MODEL_H
#define MEDFL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/engine/backend.h"

/* LoRA targets, as a bitmask. */
enum {
    LORA_QUERY = 1 << 0,
    LORA_KEY = 1 << 1,
    LORA_VALUE = 1 << 2,
    LORA_ATTN_OUT = 1 << 3, /* attention.output.dense */
    LORA_FFN_IN = 1 << 4,   /* intermediate.dense */
    LORA_FFN_OUT = 1 << 5,  /* output.dense */
    LORA_ALL = 0x3f,
};
#define MODEL_N_TARGETS 6

typedef enum { POOL_MEAN = 0, POOL_CLS = 1 } model_pooling_t;

typedef struct {
    int vocab_size;       /* V */
    int hidden;           /* C */
    int layers;           /* L */
    int heads;            /* NH; C % NH == 0 */
    int ffn;              /* F (intermediate_size) */
    int max_position;     /* P (max_position_embeddings) */
    int type_vocab;       /* token types (type_vocab_size) */
    float layer_norm_eps; /* 1e-12 for BERT */
    int num_labels;       /* K, >= 1 (a head is always present) */
    model_pooling_t pooling;
    int lora_r;           /* rank r >= 1 */
    float lora_alpha;     /* scaling = alpha / r */
    unsigned lora_targets;/* LORA_* bitmask; 0 = head only ("none") */
} model_config_t;

/* BERT-base sizes, LoRA r = 8, alpha = 16 on query + value, 2 labels, mean pooling. */
void model_config_default(model_config_t *cfg);
/* Checks ranges; returns -1 with a medfl error naming the field. */
int model_config_check(const model_config_t *cfg);
/* Parses "query,value" / "all" (names query key value attn_out ffn_in ffn_out, or the
 * PEFT module names attention.output.dense intermediate.dense output.dense), or "none":
 * no LoRA, only the classification head trains on the frozen encoder's pooled output
 * (a linear probe: what DP-SGD on a few hundred records per site can afford). */
int model_lora_targets_parse(const char *list, unsigned *out);

typedef struct model model_t;

/* One tensor of a parameter set: its name (Hugging Face BertModel name for base weights,
 * PEFT name for LoRA, "classifier.weight|bias" for the head), shape, and where it lives
 * inside the set (offset in floats from the start of the buffer). */
typedef struct {
    const char *name;
    int ndim;
    int shape[2];
    size_t offset;
    size_t numel;
} model_tensor_t;

/* Batch input. Arrays are host memory, row-major [B, T]. type_ids may be NULL (all 0);
 * labels may be NULL for forward-only use (no loss). mask[b,t] is 1 for real tokens, 0 for
 * padding. */
typedef struct {
    const int32_t *ids;
    const int32_t *type_ids;
    const int32_t *mask;
    const int32_t *labels;
    int B, T;
} model_batch_t;

typedef struct {
    float lr;           /* peak learning rate of the LoRA parameters */
    float head_lr;      /* peak learning rate of the classification head; 0 = lr. Under DP
                         * the noise random-walks every LoRA coordinate and so perturbs the
                         * pretrained features, while noise on the head only blurs the
                         * classifier: a small lr with a large head_lr keeps the features. */
    float beta1, beta2, eps;
    float weight_decay; /* decoupled (AdamW), applied to every trainable parameter */
    long warmup_steps;  /* linear 0 -> lr over these steps */
    long total_steps;   /* then linear lr -> 0 at total_steps; 0 = constant after warm-up */
    bool sgd;           /* plain SGD, p -= lr g (no moments, no decay), for model_optimizer_step */
} adamw_config_t;

void adamw_config_default(adamw_config_t *cfg); /* lr 2e-4, 0.9, 0.999, 1e-8, wd 0.01 */
/* Learning rate used at 1-based step: warm-up then linear decay. */
float adamw_lr_at(const adamw_config_t *cfg, long step);

/* Creates the model on a backend (borrowed; must outlive the model). Base weights are zero
 * until set; trainable parameters are zero until model_init_trainable. */
model_t *model_new(const model_config_t *cfg, backend_t *be);
void model_destroy(model_t **self_p);
const model_config_t *model_config(const model_t *m);
backend_t *model_backend(const model_t *m);

/* ---- base weights (frozen) ---- */
size_t model_base_count(const model_t *m);          /* number of tensors */
const model_tensor_t *model_base_tensor(const model_t *m, size_t i);
const model_tensor_t *model_base_find(const model_t *m, const char *name);
size_t model_base_numel(const model_t *m);          /* floats in the buffer */
/* Host pointer of the whole base buffer when the backend's memory is host memory (CPU),
 * else NULL: fill by name with model_base_set, which works on every backend. */
float *model_base_host(model_t *m);
/* Copies n floats into the named tensor; -1 (ENOTFOUND / EINVAL) on unknown name or size. */
int model_base_set(model_t *m, const char *name, const float *data, size_t n);
int model_base_get(const model_t *m, const char *name, float *out, size_t n);
/* Calls fn for every base tensor with its host pointer (NULL on a device backend). Stops
 * and returns the first non-zero return of fn. */
typedef int (*model_tensor_fn)(void *ctx, const model_tensor_t *t, float *host_ptr);
int model_base_foreach(model_t *m, model_tensor_fn fn, void *ctx);
/* Fills every base tensor with N(0, std) (LayerNorm weights 1, biases 0): benchmarks and
 * tests that need a random encoder. */
void model_base_init_random(model_t *m, uint64_t seed, float std);

/* ---- trainable parameters (LoRA + head) ---- */
size_t model_trainable_count(const model_t *m);     /* number of tensors */
const model_tensor_t *model_trainable_tensor(const model_t *m, size_t i);
const model_tensor_t *model_trainable_find(const model_t *m, const char *name);
size_t model_trainable_numel(const model_t *m);     /* n_trainable floats */
/* PEFT initialisation: A Kaiming-uniform (bound 1/sqrt(in)), B = 0; head like nn.Linear
 * (uniform +-1/sqrt(hidden)). Resets AdamW state. */
void model_init_trainable(model_t *m, uint64_t seed);
/* Copy the flat trainable vector (n_trainable floats, layout of the sizes table) in/out. */
int model_trainable_set(model_t *m, const float *src, size_t n);
int model_trainable_get(const model_t *m, float *dst, size_t n);
int model_grad_get(const model_t *m, float *dst, size_t n);
/* Device pointers to the flat trainable/grad/m/v buffers (host memory on the CPU). */
float *model_params(model_t *m);
float *model_grads(model_t *m);

/* ---- compute ---- */
/* Forward pass, keeping activations for backward. When in->labels is set, writes the mean
 * cross-entropy into *loss (may be NULL). logits_out (host, [B, K]) may be NULL.
 * Returns -1 on bad input (token id out of range, T > max_position, label out of range). */
int model_forward(model_t *m, const model_batch_t *in, float *loss, float *logits_out);
/* Zeroes the gradient buffer. */
void model_zero_grad(model_t *m);
/* Backward of the mean loss of the last forward: ACCUMULATES d(loss)/d(trainable) into the
 * gradient buffer. Requires labels in the last forward. */
int model_backward(model_t *m);
/* Backward that writes, for each example e of the last forward, d(loss_e)/d(trainable)
 * (the gradient of that example's own loss, not divided by B) into
 * per_example[e * n_trainable ...] (device memory of B * n_trainable floats, e.g. from
 * model_per_example_buffer). The frozen base is traversed once for the whole batch; only the
 * LoRA and head weight-gradient products are done per example. The gradient buffer is not
 * touched: batch gradient = sum_e per_example[e] / B. */
int model_backward_per_example(model_t *m, float *per_example);
/* Device buffer of B * n_trainable floats owned by the model, resized as needed. */
float *model_per_example_buffer(model_t *m, int B);
/* Pooled encoder output [B, C] (mean or CLS, no head) of a forward-only pass into host
 * out: sentence embeddings. */
int model_embed(model_t *m, const model_batch_t *in, float *out);

/* AdamW step on the trainable buffer with the scheduled learning rate of 1-based step. */
void model_adamw_step(model_t *m, const adamw_config_t *cfg, long step);
/* The step cfg asks for: AdamW, or with cfg->sgd plain SGD on the same schedule (and
 * head_lr). Plain SGD is what federated DP wants: with one local step per round, FedAvg of
 * SGD updates IS centralized SGD on the union of the sites' batches, so the federation
 * loses nothing to client drift; AdamW's per-coordinate normalisation does not average. */
int model_optimizer_step(model_t *m, const adamw_config_t *cfg, long step);
/* AdamW first and second moments (n_trainable floats each, layout of the sizes table) out
 * of / into the model: checkpoints, so that a restarted trainer continues bit for bit. */
int model_adamw_state_get(const model_t *m, float *m_out, float *v_out, size_t n);
int model_adamw_state_set(model_t *m, const float *m_in, const float *v_in, size_t n);
/* Clears AdamW m and v. */
void model_adamw_reset(model_t *m);

/* Bytes held by the activation arena (for reports). */
size_t model_arena_bytes(const model_t *m);

#endif
