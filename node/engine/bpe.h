/* Byte-level BPE tokenizer identical to Hugging Face `tokenizers` for the decoder LLMs medfl
 * fine-tunes (GPT-2, SmolLM2, Llama-3, Qwen2 vocabularies), plus their chat formats.
 *
 * Built from plain arrays as a GGUF file stores them (tokenizer.ggml.tokens, .token_type,
 * .merges, .pre), so it does not depend on any model-file reader. Encoding is, like HF:
 *   added tokens (GGUF token types CONTROL = special, USER_DEFINED = plain added token) are
 *   cut out of the text first, leftmost-longest; each remaining segment is split by the
 *   pre-tokenizer named by `pre` (hand-written scanners over code points, classes probed
 *   from HF: node/engine/bpe_unicode.c); each piece's UTF-8 bytes become byte tokens
 *   (GPT-2 bytes_to_unicode) merged by rank, lowest first, leftmost on ties.
 * There is no UNK: a byte without a token is left out and counted (bpe_ids_t). Input must
 * be valid UTF-8:
 * invalid bytes are an error naming their offset, never silently replaced (a Python string,
 * HF's input, cannot hold them either). Decoding maps tokens back to the exact bytes. */
#ifndef MEDFL_BPE_H
#define MEDFL_BPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bpe_t bpe_t;

/* Special token ids from the model file (-1: none) and whether encode adds them. */
typedef struct {
    int32_t bos_id;
    int32_t eos_id;
    bool add_bos; /* tokenizer.ggml.add_bos_token: prepend bos_id with BPE_ADD_SPECIAL */
    bool add_eos;
} bpe_special_t;

/* GGUF tokenizer.ggml.token_type values this tokenizer acts on. */
enum { BPE_TYPE_NORMAL = 1, BPE_TYPE_CONTROL = 3, BPE_TYPE_USER_DEFINED = 4 };

/* Encode flags. BPE_PARSE_SPECIAL: special tokens written in the text become their ids (HF's
 * default); without it they are ordinary text, which is what untrusted record text needs.
 * BPE_ADD_SPECIAL: add BOS/EOS as bpe_special_t says. */
enum { BPE_ADD_SPECIAL = 1, BPE_PARSE_SPECIAL = 2 };

/* A growable id list; encode functions append to it. Zero-initialise, free with
 * bpe_ids_free. `dropped` counts the input bytes that had no token and were left out, as
 * HF's BPE without an unknown token leaves them out (SmolLM2's vocabulary lacks 21 bytes:
 * the control characters 0x04 0x06 0x13 0x14 0x16 0x1D, the lead bytes 0xF1 0xF2 and bytes
 * that never occur in UTF-8); callers report the count so that the loss is not silent. */
typedef struct {
    int32_t *v;
    size_t n, cap;
    size_t dropped;
} bpe_ids_t;

void bpe_ids_free(bpe_ids_t *ids);

/* `pre` is GGUF's tokenizer.ggml.pre: "gpt-2" (and "default", "gpt2"), "smollm" (and
 * "starcoder": Digits(individual) then GPT-2), "llama-bpe" (and "llama3", "llama-v3"),
 * "qwen2" (and "deepseek-r1-qwen"). token_types may be NULL (no added tokens); specials may
 * be NULL (none). Errors: empty vocabulary or merges, a merge that is not "a b" of two
 * vocabulary tokens whose concatenation is a token, a byte without a token, unknown `pre`. */
bpe_t *bpe_new(const char *const *tokens, size_t n_tokens, const int32_t *token_types,
               const char *const *merges, size_t n_merges, const char *pre,
               const bpe_special_t *specials);
void bpe_destroy(bpe_t **self_p);

size_t bpe_vocab_size(const bpe_t *self);
/* Id of a token by its vocabulary spelling ("<|im_start|>", "Ġthe"), or -1. */
int32_t bpe_token_id(const bpe_t *self, const char *token);
/* The vocabulary spelling of id, or NULL when out of range. */
const char *bpe_token(const bpe_t *self, int32_t id);
/* The bytes id decodes to (its text for added tokens); *len set; NULL when out of range. */
const char *bpe_token_bytes(const bpe_t *self, int32_t id, size_t *len);
bool bpe_is_special(const bpe_t *self, int32_t id);
const bpe_special_t *bpe_specials(const bpe_t *self);

/* Appends the ids of text[0..len) to ids. -1 on invalid UTF-8 (the message names the byte
 * offset, not the text) or out of memory; ids then holds what it held before. */
int bpe_encode(const bpe_t *self, const char *text, size_t len, int flags, bpe_ids_t *ids);

/* The bytes ids decode to (special tokens as their text), malloc'd and NUL-terminated, *len
 * without the NUL. Raw bytes: a cut inside a UTF-8 sequence stays cut (HF's decode replaces
 * it by U+FFFD; streaming callers want the bytes). NULL on an id out of range. */
char *bpe_decode(const bpe_t *self, const int32_t *ids, size_t n, size_t *len);

#endif
