/* Exporting a Llama-family decoder's LoRA adapter for serving outside medfl:
 *   - a Hugging Face PEFT folder (adapter_model.safetensors + adapter_config.json, task_type
 *     CAUSAL_LM), loaded with PeftModel.from_pretrained(AutoModelForCausalLM(base), dir);
 *   - a llama.cpp LoRA adapter GGUF (general.type = "adapter", adapter.type = "lora",
 *     adapter.lora.alpha), used as `llama-cli -m base.gguf --lora adapter.gguf`.
 *
 * WHY a module of its own: a hospital that fine-tuned a medical decoder wants to serve it
 * with the tools it already runs, so the two formats must mean exactly what medfl computed:
 *   PEFT   tensors keep medfl's names (llama.h's trainable names ARE PEFT's:
 *          base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight [r, in],
 *          ...lora_B.weight [out, r]; mlp.gate_proj/up_proj/down_proj likewise);
 *          target_modules lists the adapted module names ("q_proj", "v_proj"), which PEFT
 *          suffix-matches to exactly those Linear layers of a Llama.
 *   GGUF   llama.cpp's names blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,
 *          ffn_down}.weight.lora_a / .lora_b, F32, ggml order (ne[0] is the row: lora_a
 *          ne = {in, r}, lora_b ne = {r, out}); llama.cpp scales by alpha / r with r read
 *          from lora_a. llama.cpp's converter stores the q_proj and k_proj rows of a Llama
 *          base permuted (RoPE's rotate_half halves interleaved, per head: GGUF row
 *          h*D + 2i + s is HF row h*D + s*D/2 + i); convert_lora_to_gguf.py applies the same
 *          row permutation to lora_B of q and k (lora_A is untouched), since B's rows are the
 *          output rows of the delta B @ A. So does this writer, with the heads of q
 *          (n_heads) and of k (n_kv_heads). A config with q/k/v biases is Qwen2-shaped:
 *          architecture "qwen2", whose GGUF keeps HF's row order (NEOX RoPE), so no
 *          permutation there.
 *
 * The tensor-list entry points take the LoRA tensors under PEFT names (as a decoder adapter
 * file or a federation version will hold them) and check them against the config first:
 * every name a LoRA tensor of a layer and target of the config, A [r, in] and B [out, r]
 * with the config's rank (a rank mismatch is refused), no duplicates, every (layer, target)
 * complete, values finite. Errors name the tensor, never a value.
 *
 * Folder rule of the PEFT export: DIR is created when missing; an existing DIR must be empty
 * or hold only a previous export (adapter_config.json, adapter_model.safetensors and
 * temporary files an interrupted export left), which is replaced. Anything else in it is
 * refused, so an export never mixes with, or overwrites, unrelated files. Each file is
 * written crash-safe (common/atomic_file). */
#ifndef MEDFL_LLAMA_EXPORT_H
#define MEDFL_LLAMA_EXPORT_H

#include <stddef.h>

#include "common/named_tensor.h"
#include "node/engine/llama.h"

/* PEFT folder from the model's current LoRA parameters. base_model_name: PEFT's
 * base_model_name_or_path (a hub id or a local folder); NULL writes null. */
int llama_export_peft(const llama_t *m, const char *dir, const char *base_model_name)
    __attribute__((warn_unused_result));
/* llama.cpp LoRA adapter GGUF from the model's current LoRA parameters. */
int llama_export_gguf_lora(const llama_t *m, const char *path) __attribute__((warn_unused_result));

/* The same from a list of LoRA tensors under PEFT names, checked against cfg (its sizes,
 * lora_r, lora_alpha, lora_targets) first. The data pointers are only read. */
int llama_export_peft_tensors(const llama_config_t *cfg, const named_tensor_t *tensors, size_t n,
                              const char *dir, const char *base_model_name)
    __attribute__((warn_unused_result));
int llama_export_gguf_lora_tensors(const llama_config_t *cfg, const named_tensor_t *tensors,
                                   size_t n, const char *path) __attribute__((warn_unused_result));

/* llama.cpp name of a PEFT LoRA name:
 *   base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight -> blk.3.attn_q.weight.lora_a
 * -1 (EINVAL) for other names. */
int llama_export_gguf_name(const char *peft_name, char *out, size_t size);

#endif
