/* BERT WordPiece tokenizer, token for token identical to Hugging Face's BertTokenizer (the
 * `tokenizers` BertNormalizer + BertPreTokenizer + WordPiece pipeline that transformers >= 5
 * and sentence-transformers use) with default settings, uncased or cased. The node tokenizes
 * clinical records with it, so a model fine-tuned here sees exactly the ids it saw in
 * pre-training and an exported adapter behaves the same under PEFT.
 *
 * Pipeline: the special tokens present in the vocabulary ([PAD] [UNK] [CLS] [SEP] [MASK]) are
 * matched literally in the raw text first (as HF does); each remaining segment is cleaned
 * (control/format/unassigned characters, NUL and U+FFFD dropped, whitespace -> ' '), CJK
 * ideographs are split off, and when uncased accents are stripped (NFD, drop Mn) and the text
 * lower-cased; it is split on whitespace and punctuation; each word is WordPiece-encoded by
 * greedy longest match with "##" continuations, a word longer than 100 characters or with no
 * match becoming [UNK].
 *
 * Input must be valid UTF-8: invalid bytes (overlong forms, surrogates, truncated sequences,
 * > U+10FFFF) are an MEDFL_EFORMAT error naming the byte offset, never silently replaced, so
 * that a mis-encoded record file is noticed instead of training on mojibake. */
#ifndef MEDFL_TOKENIZER_H
#define MEDFL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tokenizer_t tokenizer_t;

#define TOKENIZER_MAX_WORD_CHARS 100

/* Loads vocab.txt (one token per line, id = line number; a trailing "\r" is dropped; when a
 * token repeats the later line wins, as in HF). Requires [UNK], [CLS], [SEP] and [PAD].
 * NULL on error (medfl_error_message() names the file and line). */
tokenizer_t *tokenizer_new(const char *vocab_path, bool lowercase);
/* Same from an in-memory list (the vocabulary stored in the base model's HDF5 file). */
tokenizer_t *tokenizer_new_from_list(const char *const *tokens, size_t count, bool lowercase);
void tokenizer_destroy(tokenizer_t **self_p);

size_t tokenizer_vocab_size(const tokenizer_t *self);
bool tokenizer_lowercase(const tokenizer_t *self);
/* Id of a token, or -1 when absent. */
int32_t tokenizer_token_id(const tokenizer_t *self, const char *token);
/* Token text of an id, or NULL when out of range. */
const char *tokenizer_token(const tokenizer_t *self, int32_t id);
int32_t tokenizer_cls_id(const tokenizer_t *self);
int32_t tokenizer_sep_id(const tokenizer_t *self);
int32_t tokenizer_pad_id(const tokenizer_t *self);
int32_t tokenizer_unk_id(const tokenizer_t *self);

/* Word-piece ids of `text` (len bytes) without [CLS]/[SEP]: *ids_out is malloc'ed (free
 * it; may be NULL when *count_out is 0). Returns 0, or -1 on invalid UTF-8 / no memory. */
int tokenizer_tokenize(const tokenizer_t *self, const char *text, size_t len, int32_t **ids_out,
                       size_t *count_out);

/* Model input of one sequence in max_len slots (max_len >= 2): [CLS] pieces [SEP], the
 * pieces truncated to max_len - 2, then [PAD]. attention_mask is 1 on real tokens and 0 on
 * padding, token_type_ids all 0; either may be NULL. *n_pieces (may be NULL) receives the
 * number of pieces before truncation, so callers can count truncated records. Returns the
 * number of real tokens (<= max_len), or -1. */
int tokenizer_encode(const tokenizer_t *self, const char *text, size_t len, size_t max_len,
                     int32_t *input_ids, int32_t *attention_mask, int32_t *token_type_ids,
                     size_t *n_pieces);

/* Strict UTF-8 decoding helper: position of the first invalid byte, or len when valid. */
size_t utf8_first_invalid(const char *text, size_t len);

#endif
