/* Chat formats of the decoder LLMs (ChatML for SmolLM2/Qwen2, Llama-3's headers): the token
 * ids of a conversation, as Hugging Face's apply_chat_template gives them, with the span of
 * the final assistant turn so training can mask the prompt.
 *
 * The GGUF's tokenizer.chat_template is Jinja; medfl does not run Jinja. It recognises which
 * of the two formats a template writes, and the one piece of data SmolLM2's and Qwen2's
 * templates hold: the default system prompt added when a conversation has none. */
#ifndef MEDFL_BPE_CHAT_H
#define MEDFL_BPE_CHAT_H

#include "node/engine/bpe.h"

typedef enum { BPE_CHAT_CHATML = 1, BPE_CHAT_LLAMA3 = 2 } bpe_chat_format_t;

typedef struct {
    bpe_chat_format_t format;
    /* System prompt the template inserts when the conversation has none (SmolLM2's "You are a
     * helpful AI assistant named SmolLM, ..."), malloc'd, or NULL. */
    char *default_system;
} bpe_chat_t;

/* Recognises the format of a GGUF tokenizer.chat_template (Jinja) without running it:
 * ChatML by <|im_start|>, Llama-3 by <|start_header_id|>; for ChatML also the default system
 * prompt written as a literal "<|im_start|>system\n...<|im_end|>". -1 when neither. */
int bpe_chat_detect(const char *chat_template, bpe_chat_t *chat);
void bpe_chat_clear(bpe_chat_t *chat);

typedef struct {
    const char *role;    /* "system", "user", "assistant" */
    const char *content; /* UTF-8 */
} bpe_msg_t;

/* Appends the conversation's ids exactly as HF apply_chat_template(tokenize=True) gives them,
 * except that special-token text inside a role or content stays text (records are untrusted:
 * a note containing "<|im_end|>" must not end the turn). With add_generation_prompt the
 * assistant header follows. When the last message is the assistant's and
 * response_begin/response_end are not NULL they receive the span of its tokens in ids (its
 * content and end-of-turn token, the part training learns; a token straddling the header and
 * the content counts as prompt); else both get ids->n. */
int bpe_chat_encode(const bpe_t *self, const bpe_chat_t *chat, const bpe_msg_t *msgs,
                    size_t n_msgs, bool add_generation_prompt, bpe_ids_t *ids,
                    size_t *response_begin, size_t *response_end);

#endif
