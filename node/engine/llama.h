/* Llama-family decoder (Llama 2/3, SmolLM2, Qwen2 shapes) with LoRA adapters, frozen base:
 * forward, causal-LM loss over response tokens, backward of the LoRA parameters only,
 * per-example LoRA gradients for DP-SGD, AdamW.
 *
 * WHY this shape: the same llm.c style as the BERT encoder (node/engine/model.h) -- each parameter
 * set is ONE contiguous buffer cut by a sizes table (the flat trainable vector is what the
 * node serialises, clips, masks and sums), forward and backward side by side with shapes in
 * comments, names from Hugging Face (base) and PEFT (LoRA) so importers and exporters work by
 * name. Every frozen base product goes through one helper (llama.c: s_base_mm / s_base_mm_t)
 * so that a quantized base (GGUF Q8_0/Q4_0/Q4_1 blocks) only changes that helper.
 *
 * Layout conventions (see docs/model.md, "Llama decoder"):
 * - Linear weights are [out, in] row-major as in PyTorch; q/k projections in Hugging Face's
 *   layout, RoPE in HF's rotate_half convention. GGUF files (llama.cpp) store q_proj/k_proj
 *   rows permuted for the interleaved convention: an importer must undo that permutation.
 * - The loss is Hugging Face's labels convention: labels[b, t] is the token that position
 *   t - 1 must predict, LLAMA_IGNORE (-100) where nothing is predicted (prompt, padding);
 *   loss = mean over all labelled positions of the batch (not a mean of per-sequence means).
 * - Padding is on the right: mask[b, :] is 1...1 0...0 (positions are 0..T-1 as in HF).
 *
 * Typical use:
 *   llama_config_t c; llama_config_default(&c);  (then sizes from the checkpoint)
 *   llama_t *m = llama_new(&c, backend_cpu_new(2));
 *   llama_base_set(m, "model.layers.0.self_attn.q_proj.weight", data, n);  (each tensor)
 *   llama_init_trainable(m, seed);
 *   llama_batch_t in = {ids, mask, labels, B, T};
 *   llama_zero_grad(m); llama_forward_train(m, &in, &loss); llama_backward(m);
 *   llama_adamw_step(m, &opt, step);
 * The compute kernels specific to the decoder (RMSNorm, RoPE, causal softmax, SwiGLU) are
 * host loops in llama.c for now: llama_new refuses a non-CPU backend until the cuBLAS
 * backend has them (issue #19 item 8). */
#ifndef MEDFL_LLAMA_H
#define MEDFL_LLAMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/engine/backend.h"
#include "node/engine/model.h" /* adamw_config_t, model_tensor_t */

/* LoRA targets, as a bitmask (PEFT module names q_proj ... down_proj). */
enum {
    LLAMA_LORA_Q = 1 << 0,
    LLAMA_LORA_K = 1 << 1,
    LLAMA_LORA_V = 1 << 2,
    LLAMA_LORA_O = 1 << 3,
    LLAMA_LORA_GATE = 1 << 4,
    LLAMA_LORA_UP = 1 << 5,
    LLAMA_LORA_DOWN = 1 << 6,
    LLAMA_LORA_ALL = 0x7f,
};
#define LLAMA_N_TARGETS 7
#define LLAMA_IGNORE (-100) /* label of a position that is not predicted (HF's ignore_index) */

/* RoPE frequency scaling, as transformers' rope_scaling.rope_type. */
typedef enum {
    LLAMA_ROPE_DEFAULT = 0, /* inv_freq[i] = theta^(-2i/D) */
    LLAMA_ROPE_LINEAR = 1,  /* inv_freq / factor */
    LLAMA_ROPE_LLAMA3 = 2,  /* Llama 3.1 band-wise scaling (factor, low/high_freq_factor,
                             * original_max_position_embeddings) */
} llama_rope_type_t;

typedef struct {
    int n_layers;        /* L */
    int hidden;          /* C */
    int n_heads;         /* H */
    int n_kv_heads;      /* KV; H % KV == 0 (grouped-query attention) */
    int head_dim;        /* D; 0 = hidden / n_heads */
    int ffn;             /* F (intermediate_size) */
    int vocab;           /* V */
    int max_seq;         /* longest T accepted (max_position_embeddings) */
    float rope_theta;    /* base */
    llama_rope_type_t rope_type;
    float rope_factor;             /* linear, llama3 */
    float rope_low_freq_factor;    /* llama3 */
    float rope_high_freq_factor;   /* llama3 */
    int rope_original_max_pos;     /* llama3 */
    float rms_eps;
    bool tie_embeddings; /* lm_head = embed_tokens */
    bool qkv_bias;       /* Qwen2: q/k/v projections have biases */
    int lora_r;          /* rank r >= 1 */
    float lora_alpha;    /* scaling = alpha / r */
    unsigned lora_targets; /* LLAMA_LORA_* bitmask, non-zero */
    /* When true the SwiGLU inputs (gate and up outputs, 2 x [N, F] per layer, the largest
     * stored activations) are not kept: the backward recomputes them from the stored
     * residual (two more base products per layer). Less memory, ~20% more time. */
    bool recompute_mlp;
} llama_config_t;

/* SmolLM2-135M sizes, LoRA r = 8, alpha = 16 on q and v. */
void llama_config_default(llama_config_t *cfg);
/* Checks ranges; -1 with a medfl error naming the field. */
int llama_config_check(const llama_config_t *cfg);
/* Parses "q_proj,v_proj" / "q,v" / "all" into LLAMA_LORA_* bits. */
int llama_lora_targets_parse(const char *list, unsigned *out);

typedef struct llama llama_t;

/* Batch input, host arrays [B, T] row-major. mask may be NULL (no padding). labels may be NULL
 * (no loss); otherwise labels[b, t] in [0, V) or LLAMA_IGNORE, and a labelled position must
 * not be padding. */
typedef struct {
    const int32_t *ids;
    const int32_t *mask;
    const int32_t *labels;
    int B, T;
} llama_batch_t;

/* Creates the model on a CPU backend (borrowed; must outlive the model). Base weights are zero
 * until set; trainable parameters zero until llama_init_trainable. */
llama_t *llama_new(const llama_config_t *cfg, backend_t *be);
void llama_destroy(llama_t **self_p);
/* The same with a quantized, borrowed base: only the vectors (norms, biases) live in the
 * model's buffer (llama_base_set); every matrix is a reference set with llama_base_set_quant
 * (GGUF blocks, typically inside a mapped file kept alive with llama_keep). A forward before
 * every matrix is set is an error naming the first missing one. */
llama_t *llama_new_quant(const llama_config_t *cfg, backend_t *be);
/* Hands the model an object its borrowed weights live in (the mapped GGUF file): release(obj)
 * runs when the model is destroyed (or another object is kept). */
void llama_keep(llama_t *m, void *obj, void (*release)(void *));
/* true for a model made by llama_new_quant. */
bool llama_base_quantized(const llama_t *m);
const llama_config_t *llama_config(const llama_t *m);

/* ---- base weights (frozen), Hugging Face LlamaForCausalLM / Qwen2ForCausalLM names ---- */
size_t llama_base_count(const llama_t *m);
const model_tensor_t *llama_base_tensor(const llama_t *m, size_t i);
const model_tensor_t *llama_base_find(const llama_t *m, const char *name);
size_t llama_base_numel(const llama_t *m);
/* Copies n floats into / out of the named tensor; -1 (ENOTFOUND / EINVAL) on unknown name or
 * size. A non-finite value is refused (EINVAL naming the tensor, not the value). */
int llama_base_set(llama_t *m, const char *name, const float *data, size_t n);
int llama_base_get(const llama_t *m, const char *name, float *out, size_t n);
/* A matrix of a llama_new_quant model as rows of a ggml type (node/engine/quant.h: F32, F16,
 * BF16, Q8_0, Q4_0, Q4_1), [rows = out, cols = in] row-major, n_bytes exactly. row_order NULL:
 * data is borrowed (must outlive the model: llama_keep); else the rows are copied, row r of
 * the model's matrix being row row_order[r] of data (the GGUF q/k un-permutation). -1 naming
 * the tensor for an unknown name, a vector, an unsupported type, rows that are not whole
 * blocks, or a size mismatch. llama_base_get de-quantizes such a matrix. */
int llama_base_set_quant(llama_t *m, const char *name, uint32_t type, const void *data,
                         size_t n_bytes, const int32_t *row_order);
/* Matrices N(0, std) (a quantized base's matrices are left alone), norm weights 1 + N(0, 0.1), biases N(0, std): tests and benchmarks. */
void llama_base_init_random(llama_t *m, uint64_t seed, float std);

/* ---- trainable parameters (LoRA A/B per layer per target, PEFT names) ---- */
size_t llama_trainable_count(const llama_t *m);
const model_tensor_t *llama_trainable_tensor(const llama_t *m, size_t i);
const model_tensor_t *llama_trainable_find(const llama_t *m, const char *name);
size_t llama_trainable_numel(const llama_t *m);
/* PEFT initialisation: A Kaiming-uniform (bound 1/sqrt(in)), B = 0. Resets AdamW state. */
void llama_init_trainable(llama_t *m, uint64_t seed);
int llama_trainable_set(llama_t *m, const float *src, size_t n);
int llama_trainable_get(const llama_t *m, float *dst, size_t n);
int llama_grad_get(const llama_t *m, float *dst, size_t n);

/* ---- compute ---- */
/* Forward only (evaluation). With labels, *loss (may be NULL) gets the mean cross-entropy
 * over labelled positions; logits_out (host, [B, T, V]) may be NULL -- it is filled in
 * slices, the model never holds all logits. -1 on bad input (message names row, position). */
int llama_forward(llama_t *m, const llama_batch_t *in, float *loss, float *logits_out);
/* Training forward: needs labels. The lm_head and cross-entropy run fused in slices of rows
 * (only rows that predict a label), leaving d(hidden) for llama_backward instead of [N, V]
 * logits. */
int llama_forward_train(llama_t *m, const llama_batch_t *in, float *loss);
void llama_zero_grad(llama_t *m);
/* ACCUMULATES d(loss)/d(LoRA) of the last llama_forward_train into the gradient buffer. */
int llama_backward(llama_t *m);
/* DP-SGD hook: writes, for each example e of the last llama_forward_train, the gradient of
 * that example's own loss (mean over ITS labelled positions; a zero row when it has none)
 * into per_example[e * n_trainable ...] (host memory, B * n_trainable floats). The frozen
 * base is traversed once for the batch; only the LoRA weight-gradient products are done per
 * example. The gradient buffer is not touched. The batch gradient is
 * sum_e (n_e / n) per_example[e], n_e the labelled positions of e, n their sum. */
int llama_backward_per_example(llama_t *m, float *per_example);
/* Labelled positions of example e in the last forward with labels (n_e above). */
int llama_labelled_count(const llama_t *m, int e);

/* ---- DP-SGD without per-example gradients of the whole model (book-keeping) ----
 * llama_per_example_norms runs the backward ONCE for the batch (the frozen base traversed
 * once, as llama_backward) and writes norms_out[e] = || gradient of example e's own mean loss ||
 * (the L2 norm of llama_backward_per_example's row e; 0 for an example without a labelled
 * position) over all LoRA parameters. Per adapter it keeps what forms the clipped sum
 * afterwards without another pass (Bu et al., "book-keeping"): adapter (l, t) with input x_t,
 * output gradient g_t and u_t = A x_t over example e's T rows has
 *     dB_e = s k_e sum_t g_t u_t^T [out, r],   dA_e = k_e sum_t (s B^T g_t) x_t^T [r, in]
 * (k_e = n / n_e) and its squared norm is taken either by MATERIALISING those two small
 * matrices (cost ~ 2 T r (out + in) per example; kept for the sum) or by the GRAM ("ghost")
 * identity ||sum_t a_t b_t^T||^2 = sum_{t,t'} (a_t.a_t')(b_t.b_t') (cost ~ T^2 (out + in + 2r);
 * g, B^T g and x kept), whichever costs less per adapter unless forced.
 * llama_clipped_sum then ACCUMULATES sum_e scales[e] g_e into the gradient buffer (scales
 * e.g. from dp_clip_scales: min(1, C / norm_e)); it consumes the book (a second call, or one
 * after another forward, is an ESTATE error). */
typedef enum {
    LLAMA_NORMS_AUTO = 0,        /* per adapter, the cheaper one by the flop counts above */
    LLAMA_NORMS_MATERIALISE = 1, /* every adapter materialised */
    LLAMA_NORMS_GRAM = 2,        /* every adapter by Gram matrices */
} llama_norm_method_t;
void llama_set_norm_method(llama_t *m, llama_norm_method_t method);
int llama_per_example_norms(llama_t *m, float *norms_out);
int llama_clipped_sum(llama_t *m, const float *scales);
/* Adapters the last llama_per_example_norms took by Gram matrices (of the active ones), and
 * the bytes its book holds (for reports). */
int llama_norms_gram_count(const llama_t *m);
size_t llama_dp_book_bytes(const llama_t *m);
/* The gradient buffer itself (host, llama_trainable_numel floats): the DP noise goes there. */
float *llama_grads(llama_t *m);
/* With the backend's profile flag on: wall seconds spent in the frozen base products of the
 * layers (de-quantizing included) and in the lm_head + cross-entropy, since the last reset. */
void llama_profile_get(const llama_t *m, double *base_s, double *head_s);
void llama_profile_reset(llama_t *m);

/* AdamW on the trainable buffer, scheduled learning rate of 1-based step (head_lr unused). */
void llama_adamw_step(llama_t *m, const adamw_config_t *cfg, long step);
void llama_adamw_reset(llama_t *m);

/* The RoPE inverse frequencies in use (n = head_dim / 2 floats), for checks against the
 * checkpoint's tooling; -1 when n differs. */
int llama_rope_inv_freq(const llama_t *m, float *out, int n);

/* ---- inference with a KV cache (generation) ---- */
typedef struct llama_kv llama_kv_t;
/* A cache for one sequence of up to capacity (<= max_seq) positions. */
llama_kv_t *llama_kv_new(const llama_t *m, int capacity);
void llama_kv_destroy(llama_kv_t **kv_p);
int llama_kv_len(const llama_kv_t *kv);
void llama_kv_reset(llama_kv_t *kv);
/* Appends n tokens (the prompt at once, then one at a time) at positions llama_kv_len(kv)...,
 * caching their keys and values, and writes the next-token logits of the LAST one (V floats)
 * to logits. Base plus the current LoRA parameters; the training arena is not used. -1 for a
 * full cache or an id outside the vocabulary (the cache is unchanged then). */
int llama_decode(llama_t *m, llama_kv_t *kv, const int32_t *ids, int n, float *logits);

/* Bytes of the activation arena and of the per-layer stored part of it (for reports). */
size_t llama_arena_bytes(const llama_t *m);
size_t llama_stored_bytes(const llama_t *m);

#endif
