/* Records for decoder fine-tuning (prompt/response and chat messages), their tokenization with
 * the prompt masked, and ROUGE-L / exact match. See llm_data.h. */
#include "node/llm_data.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/data.h"
#include "node/engine/llama.h"

#define S_DEFAULT_MAX (1u << 20)

struct llm_records {
    llm_record_t *v;
    size_t n, cap;
    char *name;
};

static void s_record_free(llm_record_t *r)
{
    for (size_t i = 0; i < r->n_msgs; i++) {
        free(r->role[i]);
        free(r->content[i]);
    }
    for (size_t i = 0; i < r->n_options; i++)
        free(r->options[i]);
    free(r->role);
    free(r->content);
    free(r->options);
    memset(r, 0, sizeof *r);
}

void llm_records_destroy(llm_records_t **self_p)
{
    if (!self_p || !*self_p) return;
    llm_records_t *s = *self_p;
    for (size_t i = 0; i < s->n; i++)
        s_record_free(&s->v[i]);
    free(s->v);
    free(s->name);
    free(s);
    *self_p = NULL;
}

size_t llm_records_count(const llm_records_t *self) { return self->n; }
const llm_record_t *llm_records_get(const llm_records_t *self, size_t i)
{
    return i < self->n ? &self->v[i] : NULL;
}

/* A text field: a JSON string of valid UTF-8, no NUL, at most max bytes. field names it in
 * errors ("response", "messages[2].content"). */
static int s_text(const char *name, size_t line, const char *field, const cJSON *j, size_t max,
                  char **out)
{
    if (j == NULL)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field '%s' is missing", name, line, field);
    if (!cJSON_IsString(j) || j->valuestring == NULL)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field '%s' is not a string", name, line,
                               field);
    size_t len = strlen(j->valuestring);
    if (len > max)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field '%s' is %zu bytes, more than %zu",
                               name, line, field, len, max);
    size_t bad = data_utf8_check(j->valuestring, len);
    if (bad != len)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field '%s': invalid UTF-8 at byte %zu",
                               name, line, field, bad);
    if (!(*out = strdup(j->valuestring)))
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    return 0;
}

static int s_alloc_msgs(llm_record_t *r, size_t n)
{
    r->role = calloc(n, sizeof *r->role);
    r->content = calloc(n, sizeof *r->content);
    if (!r->role || !r->content) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    return 0;
}

static int s_messages(const char *name, size_t line, const cJSON *msgs, size_t max,
                      llm_record_t *r)
{
    if (!cJSON_IsArray(msgs))
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'messages' is not a list", name,
                               line);
    size_t n = (size_t)cJSON_GetArraySize(msgs), last_asst = n;
    if (n == 0)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'messages' is empty", name, line);
    if (s_alloc_msgs(r, n) != 0) return -1;
    const cJSON *m;
    size_t i = 0;
    cJSON_ArrayForEach(m, msgs)
    {
        char f[64];
        if (!cJSON_IsObject(m))
            return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'messages[%zu]' is not an object",
                                   name, line, i);
        snprintf(f, sizeof f, "messages[%zu].role", i);
        if (s_text(name, line, f, cJSON_GetObjectItemCaseSensitive(m, "role"), 64, &r->role[i]) != 0)
            return -1;
        r->n_msgs = i + 1;
        if (strcmp(r->role[i], "system") && strcmp(r->role[i], "user") &&
            strcmp(r->role[i], "assistant"))
            return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field '%s' is not system, user or "
                                   "assistant", name, line, f);
        snprintf(f, sizeof f, "messages[%zu].content", i);
        if (s_text(name, line, f, cJSON_GetObjectItemCaseSensitive(m, "content"), max,
                   &r->content[i]) != 0)
            return -1;
        if (strcmp(r->role[i], "assistant") == 0) last_asst = i;
        i++;
    }
    if (last_asst == n)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'messages' has no assistant turn "
                               "(the response to learn)", name, line);
    if (last_asst != n - 1)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'messages' goes on after the last "
                               "assistant turn (the response must end the conversation)", name,
                               line);
    if (last_asst == 0)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'messages' has no prompt before the "
                               "assistant turn", name, line);
    return 0;
}

static int s_options(const char *name, size_t line, const cJSON *o, const cJSON *ans,
                     size_t max, llm_record_t *r)
{
    r->answer = -1;
    if (o == NULL && ans == NULL) return 0;
    if (!cJSON_IsArray(o) || cJSON_GetArraySize(o) < 2)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'options' is %s", name, line,
                               o ? "not a list of two or more strings" : "missing (with 'answer')");
    size_t n = (size_t)cJSON_GetArraySize(o);
    if (!(r->options = calloc(n, sizeof *r->options)))
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, o)
    {
        char f[48];
        snprintf(f, sizeof f, "options[%zu]", r->n_options);
        if (s_text(name, line, f, e, max, &r->options[r->n_options]) != 0) return -1;
        r->n_options++;
    }
    if (!cJSON_IsNumber(ans) || ans->valuedouble != (double)(int)ans->valuedouble ||
        ans->valuedouble < 0 || ans->valuedouble >= (double)n)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'answer' is %s", name, line,
                               ans ? "not an index into 'options'" : "missing (with 'options')");
    r->answer = (int)ans->valuedouble;
    return 0;
}

static int s_record(const char *name, size_t line, const char *text, size_t len, size_t max,
                    llm_record_t *r)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (j == NULL)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: invalid JSON", name, line);
    int rc = 0;
    r->line = line;
    for (const char *p = end; rc == 0 && p < text + len; p++)
        if (!isspace((unsigned char)*p))
            rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: unexpected data after the JSON object",
                                 name, line);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages"),
                *prompt = cJSON_GetObjectItemCaseSensitive(j, "prompt"),
                *resp = cJSON_GetObjectItemCaseSensitive(j, "response"),
                *opts = cJSON_GetObjectItemCaseSensitive(j, "options");
    if (rc == 0 && !cJSON_IsObject(j))
        rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: expected a JSON object", name, line);
    if (rc == 0)
        rc = s_options(name, line, opts, cJSON_GetObjectItemCaseSensitive(j, "answer"), max, r);
    if (rc == 0 && msgs && (prompt || resp))
        rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'messages' with 'prompt' or "
                             "'response': give one form", name, line);
    else if (rc == 0 && msgs)
        rc = s_messages(name, line, msgs, max, r);
    else if (rc == 0 && !prompt)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field 'prompt' is missing (or give "
                             "'messages')", name, line);
    else if (rc == 0) {
        rc = s_alloc_msgs(r, 2);
        if (rc == 0) {
            r->n_msgs = 2;
            if (!(r->role[0] = strdup("user")) || !(r->role[1] = strdup("assistant")))
                rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
        }
        if (rc == 0) rc = s_text(name, line, "prompt", prompt, max, &r->content[0]);
        if (rc == 0 && resp == NULL && r->n_options)
            rc = (r->content[1] = strdup(r->options[r->answer])) ? 0
                 : medfl_error_set(MEDFL_ENOMEM, "out of memory");
        else if (rc == 0)
            rc = s_text(name, line, "response", resp, max, &r->content[1]);
    }
    cJSON_Delete(j);
    return rc;
}

llm_records_t *llm_records_load_buffer(const char *name, const char *buf, size_t len,
                                       size_t max_text_bytes)
{
    llm_records_t *s = calloc(1, sizeof *s);
    if (!s || !(s->name = strdup(name))) {
        free(s);
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    size_t max = max_text_bytes ? max_text_bytes : S_DEFAULT_MAX, line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (buf + pos)) : len - pos;
        const char *t = buf + pos;
        pos += n + (nl ? 1 : 0);
        line++;
        size_t k = 0;
        while (k < n && isspace((unsigned char)t[k])) k++;
        if (k == n) continue; /* blank line */
        if (memchr(t, '\0', n)) {
            medfl_error_set(MEDFL_EFORMAT, "%s:%zu: a NUL byte in the line", name, line);
            goto fail;
        }
        if (s->n == s->cap) {
            size_t cap = s->cap ? 2 * s->cap : 64;
            llm_record_t *v = realloc(s->v, cap * sizeof *v);
            if (!v) {
                medfl_error_set(MEDFL_ENOMEM, "out of memory");
                goto fail;
            }
            s->v = v;
            s->cap = cap;
        }
        memset(&s->v[s->n], 0, sizeof s->v[0]);
        s->n++;
        if (s_record(name, line, t, n, max, &s->v[s->n - 1]) != 0) goto fail;
    }
    if (s->n == 0) {
        medfl_error_set(MEDFL_EFORMAT, "%s: no records", name);
        goto fail;
    }
    return s;
fail:
    llm_records_destroy(&s);
    return NULL;
}

llm_records_t *llm_records_load(const char *path, size_t max_text_bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        medfl_error_set(MEDFL_ENOTFOUND, "%s: cannot open", path);
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 65536) {
            char *b = realloc(buf, cap = cap ? 2 * cap : 1 << 20);
            if (!b) {
                free(buf);
                fclose(f);
                medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
                return NULL;
            }
            buf = b;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    llm_records_t *s = NULL;
    if (err)
        medfl_error_set(MEDFL_EIO, "%s: read error", path);
    else
        s = llm_records_load_buffer(path, buf, len, max_text_bytes);
    free(buf);
    return s;
}

/* ---- de-identification gate */

static int s_gate_text(char **text, deid_policy_t policy, uint32_t *mask)
{
    size_t len = strlen(*text);
    uint32_t m = deid_scan_mask(*text, len);
    *mask |= m;
    if (m && policy == DEID_POLICY_REDACT && deid_redact(text, &len) < 0)
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    return 0;
}

int llm_records_deid(llm_records_t *self, deid_policy_t policy, FILE *out, size_t *flagged)
{
    *flagged = 0;
    if (policy == DEID_POLICY_OFF) return 0;
    for (size_t i = 0; i < self->n; i++) {
        llm_record_t *r = &self->v[i];
        uint32_t mask = 0;
        for (size_t k = 0; k < r->n_msgs; k++)
            if (s_gate_text(&r->content[k], policy, &mask) != 0) return -1;
        for (size_t k = 0; k < r->n_options; k++)
            if (s_gate_text(&r->options[k], policy, &mask) != 0) return -1;
        if (!mask) continue;
        (*flagged)++;
        if (out) {
            fprintf(out, "%s:%zu: possible PHI:", self->name, r->line);
            for (int b = 0, first = 1; b < 32; b++)
                if ((mask >> b) & 1u && deid_rule_name((deid_rule_t)b)) {
                    fprintf(out, "%s%s", first ? " " : ",", deid_rule_name((deid_rule_t)b));
                    first = 0;
                }
            fputc('\n', out);
        }
    }
    return 0;
}

/* ---- split */

int llm_records_split(const llm_records_t *self, uint64_t seed, double valid_frac,
                      size_t **train, size_t *n_train, size_t **valid, size_t *n_valid)
{
    size_t n = self->n, nv = (size_t)(valid_frac * (double)n + 0.5);
    if (valid_frac > 0 && nv == 0 && n >= 2) nv = 1;
    if (nv >= n) nv = n > 0 ? n - 1 : 0;
    size_t *perm = malloc((n ? n : 1) * sizeof *perm);
    bool *is_valid = calloc(n ? n : 1, sizeof *is_valid);
    *train = malloc((n - nv ? n - nv : 1) * sizeof **train);
    *valid = malloc((nv ? nv : 1) * sizeof **valid);
    if (!perm || !is_valid || !*train || !*valid) {
        free(perm);
        free(is_valid);
        free(*train);
        free(*valid);
        *train = *valid = NULL;
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    }
    uint64_t st = seed ^ 0x6c6c6d73706c6974ull; /* "llmsplit": not the shuffle's stream */
    for (size_t i = 0; i < n; i++) perm[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = data_rng_below(&st, (uint32_t)i), t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    for (size_t i = 0; i < nv; i++) is_valid[perm[i]] = true;
    *n_train = *n_valid = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_valid[i]) (*valid)[(*n_valid)++] = i;
        else (*train)[(*n_train)++] = i;
    }
    free(perm);
    free(is_valid);
    return 0;
}

/* ---- tokenization */

int llm_chat_format(const bpe_gguf_t *g, const bpe_t *tok, const char *path, bpe_chat_t *chat)
{
    memset(chat, 0, sizeof *chat);
    if (g->chat_template) {
        if (bpe_chat_detect(g->chat_template, chat) == 0) return 0;
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: tokenizer.chat_template is neither ChatML "
                               "nor Llama-3", path);
    }
    if (bpe_token_id(tok, "<|im_start|>") >= 0 && bpe_token_id(tok, "<|im_end|>") >= 0) {
        chat->format = BPE_CHAT_CHATML;
        return 0;
    }
    return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: no chat template and no ChatML tokens: "
                           "cannot format records", path);
}

static int s_msgs(const llm_record_t *r, size_t n, const char *response, bpe_msg_t **out)
{
    bpe_msg_t *m = malloc(n * sizeof *m);
    if (!m) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        m[i] = (bpe_msg_t){r->role[i], r->content[i]};
    if (response && n == r->n_msgs) m[n - 1].content = response;
    *out = m;
    return 0;
}

int llm_encode_example(const bpe_t *tok, const bpe_chat_t *chat, const llm_record_t *r,
                       const char *response, size_t max_len, int32_t **ids_out,
                       int32_t **labels_out, size_t *n_out, bool *truncated)
{
    bpe_msg_t *m;
    if (s_msgs(r, r->n_msgs, response, &m) != 0) return -1;
    bpe_ids_t ids = {0};
    size_t rb, re;
    int rc = bpe_chat_encode(tok, chat, m, r->n_msgs, false, &ids, &rb, &re);
    free(m);
    if (rc != 0) {
        bpe_ids_free(&ids);
        return -1;
    }
    size_t n = re; /* nothing after the end-of-turn token is learned */
    *truncated = n > max_len;
    if (n > max_len) n = max_len;
    int32_t *lab = malloc((n ? n : 1) * sizeof *lab);
    if (!lab) {
        bpe_ids_free(&ids);
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    }
    for (size_t t = 0; t < n; t++)
        lab[t] = t >= rb && t < re ? ids.v[t] : LLAMA_IGNORE;
    *ids_out = ids.v; /* owned by the caller now */
    *labels_out = lab;
    *n_out = n;
    return 0;
}

int llm_encode_prompt(const bpe_t *tok, const bpe_chat_t *chat, const llm_record_t *r,
                      bpe_ids_t *ids)
{
    bpe_msg_t *m;
    if (s_msgs(r, r->n_msgs - 1, NULL, &m) != 0) return -1;
    int rc = bpe_chat_encode(tok, chat, m, r->n_msgs - 1, true, ids, NULL, NULL);
    free(m);
    return rc;
}

/* ---- metrics */

typedef struct {
    const char *p;
    size_t len;
} s_tok;

/* Whitespace-separated tokens of s (pointers into s); compared case-insensitively (ASCII). */
static size_t s_tokens(const char *s, s_tok **out)
{
    size_t n = 0, cap = 0;
    s_tok *v = NULL;
    for (const char *p = s; *p;) {
        while (*p && isspace((unsigned char)*p)) p++;
        if (!*p) break;
        const char *b = p;
        while (*p && !isspace((unsigned char)*p)) p++;
        if (n == cap) {
            s_tok *w = realloc(v, (cap = cap ? 2 * cap : 16) * sizeof *v);
            if (!w) {
                free(v);
                *out = NULL;
                return (size_t)-1;
            }
            v = w;
        }
        v[n++] = (s_tok){b, (size_t)(p - b)};
    }
    *out = v;
    return n;
}

static bool s_tok_eq(s_tok a, s_tok b)
{
    if (a.len != b.len) return false;
    for (size_t i = 0; i < a.len; i++)
        if (tolower((unsigned char)a.p[i]) != tolower((unsigned char)b.p[i])) return false;
    return true;
}

double llm_rouge_l(const char *candidate, const char *reference)
{
    s_tok *c, *r;
    size_t nc = s_tokens(candidate, &c), nr = s_tokens(reference, &r);
    double f = 0.0;
    size_t *row = NULL;
    if (nc == (size_t)-1 || nr == (size_t)-1) goto done; /* out of memory: scored 0 */
    if (nc == 0 || nr == 0) {
        f = nc == nr ? 1.0 : 0.0;
        goto done;
    }
    /* LCS by dynamic programming over one row of the reference (O(nc * nr) time). */
    if (!(row = calloc(nr + 1, sizeof *row))) goto done;
    for (size_t i = 1; i <= nc; i++) {
        size_t diag = 0;
        for (size_t j = 1; j <= nr; j++) {
            size_t up = row[j];
            row[j] = s_tok_eq(c[i - 1], r[j - 1]) ? diag + 1 : (up > row[j - 1] ? up : row[j - 1]);
            diag = up;
        }
    }
    double lcs = (double)row[nr], p = lcs / (double)nc, rec = lcs / (double)nr;
    f = lcs > 0 ? 2.0 * p * rec / (p + rec) : 0.0;
done:
    free(row);
    free(c);
    free(r);
    return f;
}

bool llm_exact_match(const char *candidate, const char *reference)
{
    s_tok *c, *r;
    size_t nc = s_tokens(candidate, &c), nr = s_tokens(reference, &r);
    bool eq = nc != (size_t)-1 && nc == nr;
    for (size_t i = 0; eq && i < nc; i++)
        eq = s_tok_eq(c[i], r[i]);
    free(c);
    free(r);
    return eq;
}
