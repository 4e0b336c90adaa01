/* The tokenizer part of a GGUF model file's metadata (tokens, token types, merges, pre,
 * special ids, chat template): a minimal, strict reader of the GGUF key/value section.
 *
 * TEMPORARY: node/engine/gguf (the full GGUF reader, written in parallel for issue #19) will
 * own GGUF parsing; once it lands this file becomes a few lines over it. Until then
 * `medfl-node tokenize` and test_bpe use this one. Hostile files are errors naming the byte
 * offset and key, never a crash: every length is checked against the file's size before
 * anything is allocated. */
#ifndef MEDFL_BPE_GGUF_H
#define MEDFL_BPE_GGUF_H

#include "node/engine/bpe.h"

typedef struct {
    char **tokens;
    size_t n_tokens;
    int32_t *token_types; /* NULL when the file has none */
    size_t n_token_types;
    char **merges;
    size_t n_merges;
    char *model;          /* tokenizer.ggml.model, "gpt2" for byte-level BPE */
    char *pre;            /* tokenizer.ggml.pre */
    char *chat_template;  /* tokenizer.chat_template, or NULL */
    bpe_special_t specials;
} bpe_gguf_t;

/* Reads the tokenizer metadata of a GGUF (version 2 or 3) file. */
int bpe_gguf_read(const char *path, bpe_gguf_t *out);
void bpe_gguf_clear(bpe_gguf_t *g);

/* The byte-level BPE tokenizer the metadata describes (model "gpt2"); `pre` overrides
 * tokenizer.ggml.pre when not NULL. */
bpe_t *bpe_gguf_tokenizer(const bpe_gguf_t *g, const char *pre);

#endif
