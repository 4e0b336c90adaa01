/* ChatML and Llama-3 conversations as token ids (see bpe_chat.h).
 *
 * HF renders the template to text and tokenizes it with special tokens parsed, so the text
 * between two special tokens is one pre-tokenizer segment. Here the special tokens are pushed
 * by id and each stretch between them is encoded as one segment with specials NOT parsed:
 * the same ids for any content without special-token text, and no injected turns for
 * content with it. */
#include "node/engine/bpe_chat.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* Unescapes a Jinja string literal's text (\n, \t, \\, \', \") up to `end`. */
static char *s_unescape(const char *s, const char *end)
{
    char *out = malloc((size_t)(end - s) + 1), *o = out;
    if (!out) return NULL;
    while (s < end) {
        if (*s == '\\' && s + 1 < end) {
            char c = s[1];
            *o++ = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
            s += 2;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    return out;
}

/* A literal "<|im_start|>system\n" + text + "<|im_end|>" in the template (the newline real or
 * escaped) whose text holds no quote, i.e. is not built from message fields. */
static int s_default_system(const char *tmpl, char **out)
{
    static const char head[] = "<|im_start|>system";
    for (const char *p = strstr(tmpl, head); p; p = strstr(p + 1, head)) {
        const char *s = p + sizeof head - 1;
        if (*s == '\n') s++;
        else if (s[0] == '\\' && s[1] == 'n') s += 2;
        else continue;
        const char *end = strstr(s, "<|im_end|>");
        if (!end || end == s || memchr(s, '\'', (size_t)(end - s)) ||
            memchr(s, '"', (size_t)(end - s)))
            continue;
        if (!(*out = s_unescape(s, end)))
            return medfl_error_set(MEDFL_ENOMEM, "chat template: out of memory");
        return 0;
    }
    return 0;
}

int bpe_chat_detect(const char *chat_template, bpe_chat_t *chat)
{
    *chat = (bpe_chat_t){0};
    if (!chat_template)
        return medfl_error_set(MEDFL_ENOTFOUND, "chat template: the model has none "
                               "(tokenizer.chat_template)");
    if (strstr(chat_template, "<|im_start|>")) {
        chat->format = BPE_CHAT_CHATML;
        return s_default_system(chat_template, &chat->default_system);
    }
    if (strstr(chat_template, "<|start_header_id|>")) {
        chat->format = BPE_CHAT_LLAMA3;
        return 0;
    }
    return medfl_error_set(MEDFL_EUNSUPPORTED, "chat template: neither ChatML (<|im_start|>) "
                           "nor Llama-3 (<|start_header_id|>)");
}

void bpe_chat_clear(bpe_chat_t *chat)
{
    free(chat->default_system);
    *chat = (bpe_chat_t){0};
}

typedef struct {
    const bpe_t *bpe;
    bpe_ids_t *ids;
} out_t;

static int s_push(out_t *o, int32_t id)
{
    if (o->ids->n == o->ids->cap) {
        size_t cap = o->ids->cap ? 2 * o->ids->cap : 64;
        int32_t *v = realloc(o->ids->v, cap * sizeof *v);
        if (!v) return medfl_error_set(MEDFL_ENOMEM, "chat format: out of memory");
        o->ids->v = v;
        o->ids->cap = cap;
    }
    o->ids->v[o->ids->n++] = id;
    return 0;
}

static int s_special(out_t *o, const char *name)
{
    int32_t id = bpe_token_id(o->bpe, name);
    if (id < 0)
        return medfl_error_set(MEDFL_EFORMAT, "chat format: the vocabulary has no %s token",
                               name);
    return s_push(o, id);
}

/* Encodes a + b as one segment (specials not parsed). When begin is not NULL it receives the
 * index of the first token lying wholly inside b. */
static int s_text(out_t *o, const char *a, size_t la, const char *b, size_t lb, size_t *begin)
{
    char *t = malloc(la + lb + 1);
    if (!t) return medfl_error_set(MEDFL_ENOMEM, "chat format: out of memory");
    memcpy(t, a, la);
    memcpy(t + la, b, lb);
    size_t n0 = o->ids->n;
    int rc = bpe_encode(o->bpe, t, la + lb, 0, o->ids);
    free(t);
    if (rc < 0) return -1;
    if (begin) {
        size_t at = 0, i = n0, len;
        while (i < o->ids->n && at < la) {
            bpe_token_bytes(o->bpe, o->ids->v[i++], &len);
            at += len;
        }
        *begin = i;
    }
    return 0;
}

/* Jinja's trim (Python str.strip): white space at both ends. */
static void s_trim(const char **s, size_t *len)
{
    static const char *const ws[] = {" ", "\t", "\n", "\v", "\f", "\r", "\x1c", "\x1d",
                                     "\x1e", "\x1f", "\xc2\x85", "\xc2\xa0", "\xe1\x9a\x80",
                                     "\xe2\x80\x80", "\xe2\x80\x81", "\xe2\x80\x82",
                                     "\xe2\x80\x83", "\xe2\x80\x84", "\xe2\x80\x85",
                                     "\xe2\x80\x86", "\xe2\x80\x87", "\xe2\x80\x88",
                                     "\xe2\x80\x89", "\xe2\x80\x8a", "\xe2\x80\xa8",
                                     "\xe2\x80\xa9", "\xe2\x80\xaf", "\xe2\x81\x9f",
                                     "\xe3\x80\x80"};
    for (bool again = true; again;) {
        again = false;
        for (size_t k = 0; k < sizeof ws / sizeof ws[0]; k++) {
            size_t l = strlen(ws[k]);
            if (*len >= l && memcmp(*s, ws[k], l) == 0) {
                *s += l;
                *len -= l;
                again = true;
            }
            if (*len >= l && memcmp(*s + *len - l, ws[k], l) == 0) {
                *len -= l;
                again = true;
            }
        }
    }
}

/* One ChatML turn: <|im_start|>role\ncontent<|im_end|>\n */
static int s_chatml_turn(out_t *o, const char *role, const char *content, size_t *begin,
                         size_t *end)
{
    char head[64];
    size_t lr = strlen(role);
    if (lr > sizeof head - 2)
        return medfl_error_set(MEDFL_EINVAL, "chat format: role name longer than 60 bytes");
    memcpy(head, role, lr);
    head[lr] = '\n';
    if (s_special(o, "<|im_start|>") < 0 ||
        s_text(o, head, lr + 1, content, strlen(content), begin) < 0 ||
        s_special(o, "<|im_end|>") < 0)
        return -1;
    if (end) *end = o->ids->n;
    return s_text(o, "\n", 1, "", 0, NULL);
}

/* One Llama-3 turn: <|start_header_id|>role<|end_header_id|>\n\ncontent|trim<|eot_id|> */
static int s_llama3_turn(out_t *o, const char *role, const char *content, size_t *begin,
                         size_t *end)
{
    size_t lc = strlen(content);
    s_trim(&content, &lc);
    if (s_special(o, "<|start_header_id|>") < 0 || s_text(o, role, strlen(role), "", 0, NULL) < 0 ||
        s_special(o, "<|end_header_id|>") < 0 || s_text(o, "\n\n", 2, content, lc, begin) < 0 ||
        s_special(o, "<|eot_id|>") < 0)
        return -1;
    if (end) *end = o->ids->n;
    return 0;
}

static int s_generation_prompt(out_t *o, bpe_chat_format_t format)
{
    if (format == BPE_CHAT_CHATML)
        return s_special(o, "<|im_start|>") < 0 ? -1 : s_text(o, "assistant\n", 10, "", 0, NULL);
    if (s_special(o, "<|start_header_id|>") < 0 || s_text(o, "assistant", 9, "", 0, NULL) < 0 ||
        s_special(o, "<|end_header_id|>") < 0)
        return -1;
    return s_text(o, "\n\n", 2, "", 0, NULL);
}

int bpe_chat_encode(const bpe_t *self, const bpe_chat_t *chat, const bpe_msg_t *msgs,
                    size_t n_msgs, bool add_generation_prompt, bpe_ids_t *ids,
                    size_t *response_begin, size_t *response_end)
{
    out_t o = {self, ids};
    size_t n0 = ids->n, begin = SIZE_MAX, end = SIZE_MAX;
    for (size_t i = 0; i < n_msgs; i++)
        if (!msgs[i].role || !msgs[i].content || !msgs[i].role[0])
            return medfl_error_set(MEDFL_EINVAL, "chat format: message %zu has no role or "
                                   "content", i);
    int rc = 0;
    if (chat->format == BPE_CHAT_LLAMA3) {
        int32_t bos = bpe_specials(self)->bos_id;
        rc = bos >= 0 ? s_push(&o, bos) : s_special(&o, "<|begin_of_text|>");
    } else if (chat->default_system && n_msgs > 0 && strcmp(msgs[0].role, "system") != 0) {
        rc = s_chatml_turn(&o, "system", chat->default_system, NULL, NULL);
    }
    for (size_t i = 0; rc == 0 && i < n_msgs; i++) {
        bool last = i + 1 == n_msgs && !add_generation_prompt &&
                    strcmp(msgs[i].role, "assistant") == 0;
        size_t *b = last ? &begin : NULL, *e = last ? &end : NULL;
        rc = chat->format == BPE_CHAT_LLAMA3
                 ? s_llama3_turn(&o, msgs[i].role, msgs[i].content, b, e)
                 : s_chatml_turn(&o, msgs[i].role, msgs[i].content, b, e);
    }
    if (rc == 0 && add_generation_prompt) rc = s_generation_prompt(&o, chat->format);
    if (rc < 0) {
        ids->n = n0;
        return -1;
    }
    if (response_begin) *response_begin = begin == SIZE_MAX ? ids->n : begin;
    if (response_end) *response_end = end == SIZE_MAX ? ids->n : end;
    return 0;
}
