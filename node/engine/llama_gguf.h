/* Llama-family decoders from GGUF files (llama.cpp's format): metadata -> llama_config_t,
 * llama.cpp tensor names -> Hugging Face names, q/k rows un-permuted, the base kept quantized
 * and borrowed from the mapped file (llama_new_quant) or de-quantized to fp32 (llama_new).
 *
 * WHY borrowed: a 4-bit base is ~0.6 bytes per weight in the page cache, shared by every
 * process reading the file; only attn_q / attn_k are copied (their rows are reordered, a whole
 * row at a time, so blocks stay intact). Everything is checked before the model is returned:
 * general.architecture ("llama"), the required llama.* keys, every tensor's presence, shape
 * and type; errors name the file, key or tensor, never a value of the file's data. */
#ifndef MEDFL_LLAMA_GGUF_H
#define MEDFL_LLAMA_GGUF_H

#include <stdbool.h>

#include "node/engine/gguf.h"
#include "node/engine/llama.h"

typedef struct {
    int lora_r;             /* 0: llama_config_default's (8) */
    float lora_alpha;       /* 0: 2 r */
    unsigned lora_targets;  /* 0: q and v */
    bool dequantize;        /* true: an fp32 base (llama_new), same weights de-quantized */
} llama_gguf_opts_t;

/* Sizes from the metadata into cfg (LoRA fields untouched). -1 naming the file and the key
 * for an architecture other than llama, a missing or mistyped key, inconsistent sizes, or a
 * RoPE scaling the decoder does not have. */
int llama_gguf_config(const gguf_t *f, llama_config_t *cfg);

/* Checks every tensor the config needs: present, shape, type supported; no tensor the
 * decoder would ignore (e.g. rope_freqs). */
int llama_gguf_check_tensors(const gguf_t *f, const llama_config_t *cfg);

/* Opens, validates and loads path. opts may be NULL (defaults). */
llama_t *llama_from_gguf(const char *path, const llama_gguf_opts_t *opts, backend_t *be);

#endif
