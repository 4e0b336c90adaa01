/* `medfl-node import-model --gguf FILE`: a decoder LLM's base is the GGUF file itself, copied
 * next to the node's base.h5 after complete validation (docs/architecture.md, "Differences
 * from the design sketch"): architecture llama, every llama.* key the decoder needs, every
 * tensor present with the metadata's shape and a block type the decoder computes with
 * (F32 F16 BF16 Q8_0 Q4_0 Q4_1), and a byte-level BPE tokenizer that builds. The copy is what
 * is validated (temp file, checked, then renamed), so what a node loads is exactly what was
 * checked; its SHA-256 is reported so sites can compare bases. */
#ifndef MEDFL_NODE_IMPORT_GGUF_H
#define MEDFL_NODE_IMPORT_GGUF_H

#include <stddef.h>

/* The GGUF path a base output path maps to: OUT itself when it ends in ".gguf", else OUT with
 * its extension (".h5") replaced by ".gguf" (base.h5 -> base.gguf). -1 when it does not fit. */
int import_gguf_target(const char *out, char *target, size_t size);

/* The decoder base a command works on: `model` when given (--model), else the config's
 * model.base (-c FILE; model may then be NULL); a base.h5 path means the base.gguf that
 * import-model --gguf wrote beside it, when that exists. -1 (error set) when neither is
 * given or the config does not load. */
int import_gguf_resolve_base(const char *model, const char *config, char *out, size_t size);

/* Checks a GGUF decoder file completely (what the loader and the tokenizer will need). */
int import_gguf_check(const char *path);

/* Copies src to target (atomic), validating the copy before it replaces anything; sha256_hex
 * (65 bytes) receives the file's SHA-256. */
int import_gguf(const char *src, const char *target, char sha256_hex[65]);

#endif
