/* The tokenizer part of a GGUF model file's metadata (tokens, token types, merges, pre,
 * special ids, chat template), read through node/engine/gguf (which validates the whole file
 * first: hostile files are errors naming the byte offset and key, never a crash), copied into
 * the C strings bpe_new takes. */
#ifndef MEDFL_BPE_GGUF_H
#define MEDFL_BPE_GGUF_H

#include "node/engine/bpe.h"
#include "node/engine/gguf.h"

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
/* The same from a file already open (the model loader's). */
int bpe_gguf_from(const gguf_t *f, bpe_gguf_t *out);
void bpe_gguf_clear(bpe_gguf_t *g);

/* The byte-level BPE tokenizer the metadata describes (model "gpt2"); `pre` overrides
 * tokenizer.ggml.pre when not NULL. */
bpe_t *bpe_gguf_tokenizer(const bpe_gguf_t *g, const char *pre);

#endif
