/* Records for fine-tuning a decoder LLM, and the metrics of its evaluation.
 *
 * Two JSONL record shapes, one object per line:
 *   {"prompt": "...", "response": "..."}                      one user turn, one answer
 *   {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}
 *                                       the conversation ends with the assistant's answer
 * Either may carry a multiple-choice question: "options": ["...", ...] and "answer": index
 * (then "response" may be left out: it is options[answer]).
 *
 * WHY a reader of its own and not node/data.c's: those records are (text, label) pairs of a
 * classifier; these are conversations. The conventions are the same: every error names the
 * file, the line and the field, never a value (a value may be patient data); no record is
 * dropped silently; text must be valid UTF-8 without NUL; the de-identification gate scans
 * every text the model will see (prompt, response, options) as it scans a classifier's text.
 *
 * Tokenization uses the model's chat format (node/engine/bpe_chat.h): the prompt tokens get
 * the label LLAMA_IGNORE (-100, not learned), the response's tokens and its end-of-turn
 * token are the labels, as Hugging Face's labels convention (llama.h) wants them. */
#ifndef MEDFL_NODE_LLM_DATA_H
#define MEDFL_NODE_LLM_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/deid.h"
#include "node/engine/bpe_chat.h"
#include "node/engine/bpe_gguf.h"

typedef struct {
    size_t n_msgs;   /* >= 2; msgs[n_msgs - 1] is the assistant's response */
    char **role;     /* "system", "user", "assistant" */
    char **content;
    size_t n_options; /* 0: not a multiple-choice record */
    char **options;
    int answer;       /* index into options, -1 without options */
    size_t line;      /* 1-based line of the file */
} llm_record_t;

typedef struct llm_records llm_records_t;

/* Reads a JSONL file of the shapes above. max_text_bytes bounds each text (0 = 1 MiB). NULL
 * with a medfl error "FILE:LINE: field 'F' ..." on the first bad record (a missing response,
 * messages without an assistant turn or ending after it with another turn, content that is
 * not a string, an unknown role, an answer outside the options, invalid UTF-8) or an empty
 * file. */
llm_records_t *llm_records_load(const char *path, size_t max_text_bytes);
/* The same from memory; name stands for the file in messages (tests, fuzzing). */
llm_records_t *llm_records_load_buffer(const char *name, const char *buf, size_t len,
                                       size_t max_text_bytes);
void llm_records_destroy(llm_records_t **self_p);
size_t llm_records_count(const llm_records_t *self);
const llm_record_t *llm_records_get(const llm_records_t *self, size_t i);

/* The de-identification gate over every text of every record. OFF: nothing is scanned.
 * REFUSE: flagged records are counted (and listed as "FILE:LINE: RULE,RULE" lines on out
 * when not NULL), nothing changes. REDACT: flagged spans are replaced as deid_redact does. */
int llm_records_deid(llm_records_t *self, deid_policy_t policy, FILE *out, size_t *flagged);

/* Deterministic train / validation split by seed (valid_frac of the records, at least one
 * when valid_frac > 0 and there are two or more records). Index lists in file order,
 * malloc'd; free both. */
int llm_records_split(const llm_records_t *self, uint64_t seed, double valid_frac,
                      size_t **train, size_t *n_train, size_t **valid, size_t *n_valid);

/* The chat format of a model: its tokenizer.chat_template when it has one (ChatML or
 * Llama-3), else ChatML when the vocabulary has <|im_start|> and <|im_end|> (a GGUF
 * converted without its template). -1 naming `path` otherwise. */
int llm_chat_format(const bpe_gguf_t *g, const bpe_t *tok, const char *path, bpe_chat_t *chat);

/* One training example: the record's conversation in the chat format, cut after the
 * response's end-of-turn token; labels[t] = ids[t] over the response span, LLAMA_IGNORE
 * elsewhere. More than max_len tokens: cut to max_len, *truncated set. Both arrays
 * malloc'd (*n entries). */
int llm_encode_example(const bpe_t *tok, const bpe_chat_t *chat, const llm_record_t *r,
                       const char *response, size_t max_len, int32_t **ids, int32_t **labels,
                       size_t *n, bool *truncated);
/* The prompt alone, ending with the assistant's header (what generation continues). */
int llm_encode_prompt(const bpe_t *tok, const bpe_chat_t *chat, const llm_record_t *r,
                      bpe_ids_t *ids);

/* ROUGE-L F1 (beta = 1) of a candidate against a reference: the longest common subsequence
 * of their tokens, tokens being the runs of non-whitespace bytes after ASCII lowercasing.
 * 1 when both have no tokens, 0 when one has none. */
double llm_rouge_l(const char *candidate, const char *reference);
/* Exact match under the same tokenization: same token sequence (case and whitespace runs
 * ignored, nothing else). */
bool llm_exact_match(const char *candidate, const char *reference);

#endif
