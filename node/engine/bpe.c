/* Byte-level BPE identical to Hugging Face `tokenizers` (see bpe.h for the pipeline).
 *
 * Each pre-tokenizer's split regex is a hand-written scanner: at position i it returns the
 * end of the match Oniguruma's leftmost-first alternation would find there, the
 * alternatives tried in the regex's order. Every code point is a letter, number, space or
 * "other", and each pattern has an alternative for each, so matches tile the text. The merge
 * loop is HF's word.rs: a heap of (rank, position) over a linked list of symbols, which also
 * decides HF's tie-breaks (leftmost first; an expired entry is recognised by its result id
 * only). */
#include "node/engine/bpe.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/tokenizer.h"
#include "node/engine/bpe_unicode.h"

enum { PRE_GPT2 = 1, PRE_SMOLLM, PRE_LLAMA3, PRE_QWEN2 };
enum { ADDED_SPECIAL = 1, ADDED_PLAIN = 2 };

typedef struct {
    const char *text; /* points into spell[] */
    size_t len;
    int32_t id;
    bool special;
} added_t;

typedef struct {
    int32_t a, b, rank, id; /* a < 0: empty slot */
} merge_slot_t;

struct bpe_t {
    size_t n;
    char **spell;     /* spelling looked up by bpe_token_id (HF's vocab key) */
    char **raw;       /* bytes each id decodes to */
    uint32_t *raw_len;
    uint8_t *added_kind;
    int32_t *slots;   /* open-addressing string -> id, -1 empty */
    size_t slot_mask;
    merge_slot_t *mslots;
    size_t mslot_mask;
    added_t *added;
    size_t n_added;
    bool added_first[256];
    int32_t byte_id[256];
    uint32_t b2u[256];
    int pre;
    bool ignore_merges;
    bpe_special_t sp;
};

/* ---- Unicode ------------------------------------------------------------------------- */

static unsigned s_class(uint32_t cp)
{
    unsigned lo = 0, hi = bu_range_count;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (cp < bu_ranges[mid][0]) hi = mid;
        else if (cp > bu_ranges[mid][1]) lo = mid + 1;
        else return bu_ranges[mid][2];
    }
    return 0;
}

/* Decodes one code point of valid UTF-8 (checked before), returns its length. */
static size_t s_utf8(const unsigned char *s, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    if (s[0] < 0xE0) {
        *cp = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
        return 2;
    }
    if (s[0] < 0xF0) {
        *cp = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
        return 3;
    }
    *cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
          (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    return 4;
}

static size_t s_put_utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6)); /* byte-level code points are all < 0x800 */
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 to
 * U+0100.. in byte order. */
static void s_bytes_to_unicode(uint32_t b2u[256])
{
    uint32_t next = 256;
    for (unsigned b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        b2u[b] = printable ? b : next++;
    }
}

/* ---- Hash tables ---------------------------------------------------------------------- */

static uint64_t s_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static int32_t s_lookup(const bpe_t *self, const char *s, size_t len)
{
    for (size_t i = s_hash(s, len) & self->slot_mask;; i = (i + 1) & self->slot_mask) {
        int32_t id = self->slots[i];
        if (id < 0) return -1;
        if (strncmp(self->spell[id], s, len) == 0 && self->spell[id][len] == '\0') return id;
    }
}

/* Later duplicates win, as in the Python dict HF builds the vocabulary from. */
static void s_insert(bpe_t *self, int32_t id)
{
    const char *s = self->spell[id];
    size_t len = strlen(s);
    for (size_t i = s_hash(s, len) & self->slot_mask;; i = (i + 1) & self->slot_mask) {
        int32_t old = self->slots[i];
        if (old < 0 || strcmp(self->spell[old], s) == 0) {
            self->slots[i] = id;
            return;
        }
    }
}

static size_t s_pair_slot(size_t mask, int32_t a, int32_t b)
{
    uint64_t h = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 17) & mask;
}

static const merge_slot_t *s_merge(const bpe_t *self, int32_t a, int32_t b)
{
    for (size_t i = s_pair_slot(self->mslot_mask, a, b);; i = (i + 1) & self->mslot_mask) {
        const merge_slot_t *m = &self->mslots[i];
        if (m->a < 0) return NULL;
        if (m->a == a && m->b == b) return m;
    }
}

/* ---- Construction --------------------------------------------------------------------- */

static int s_pre_kind(const char *pre)
{
    static const struct {
        const char *name;
        int kind;
    } names[] = {
        {"gpt-2", PRE_GPT2},      {"gpt2", PRE_GPT2},        {"default", PRE_GPT2},
        {"smollm", PRE_SMOLLM},   {"starcoder", PRE_SMOLLM}, {"llama-bpe", PRE_LLAMA3},
        {"llama3", PRE_LLAMA3},   {"llama-v3", PRE_LLAMA3},  {"qwen2", PRE_QWEN2},
        {"deepseek-r1-qwen", PRE_QWEN2},
    };
    for (size_t i = 0; pre && i < sizeof names / sizeof names[0]; i++)
        if (strcmp(pre, names[i].name) == 0) return names[i].kind;
    return 0;
}

/* Spelling (HF's vocabulary key) and decoded bytes of one token: a token written in the byte
 * alphabet decodes through the inverse map; any other is taken as its own UTF-8 and
 * respelled in the alphabet, as transformers does for GGUF vocabularies. */
static int s_add_token(bpe_t *self, size_t id, const char *tok, const int16_t *u2b)
{
    size_t len = strlen(tok);
    if (utf8_first_invalid(tok, len) != len)
        return medfl_error_set(MEDFL_EFORMAT, "tokenizer: token %zu is not valid UTF-8", id);
    char *raw = malloc(len + 1), *spell = NULL;
    if (!raw) return medfl_error_set(MEDFL_ENOMEM, "tokenizer: out of memory");
    size_t n = 0;
    bool alphabet = true;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        i += s_utf8((const unsigned char *)tok + i, &cp);
        if (cp >= 324 || u2b[cp] < 0) {
            alphabet = false;
            break;
        }
        raw[n++] = (char)u2b[cp];
    }
    if (alphabet) {
        spell = strdup(tok);
    } else {
        memcpy(raw, tok, len);
        n = len;
        spell = malloc(2 * len + 1);
        size_t k = 0;
        for (size_t i = 0; spell && i < len; i++)
            k += s_put_utf8(self->b2u[(unsigned char)tok[i]], spell + k);
        if (spell) spell[k] = '\0';
    }
    raw[n] = '\0';
    if (!spell) {
        free(raw);
        return medfl_error_set(MEDFL_ENOMEM, "tokenizer: out of memory");
    }
    self->raw[id] = raw;
    self->raw_len[id] = (uint32_t)n;
    self->spell[id] = spell;
    return alphabet ? 1 : 0;
}

static int s_add_merge(bpe_t *self, size_t rank, const char *merge)
{
    const char *sp = strchr(merge, ' ');
    if (!sp || sp == merge || !sp[1] || strchr(sp + 1, ' '))
        return medfl_error_set(MEDFL_EFORMAT,
                               "tokenizer: merge %zu is not two tokens separated by one space",
                               rank);
    size_t la = (size_t)(sp - merge), lb = strlen(sp + 1);
    int32_t a = s_lookup(self, merge, la), b = s_lookup(self, sp + 1, lb);
    char *joined = malloc(la + lb + 1);
    if (!joined) return medfl_error_set(MEDFL_ENOMEM, "tokenizer: out of memory");
    memcpy(joined, merge, la);
    memcpy(joined + la, sp + 1, lb + 1);
    int32_t id = s_lookup(self, joined, la + lb);
    free(joined);
    if (a < 0 || b < 0 || id < 0)
        return medfl_error_set(MEDFL_EFORMAT, "tokenizer: merge %zu names a token that is not "
                               "in the vocabulary (or its result is not)", rank);
    for (size_t i = s_pair_slot(self->mslot_mask, a, b);; i = (i + 1) & self->mslot_mask) {
        merge_slot_t *m = &self->mslots[i];
        if (m->a < 0 || (m->a == a && m->b == b)) { /* a later duplicate wins, as in HF */
            *m = (merge_slot_t){a, b, (int32_t)rank, id};
            return 0;
        }
    }
}

static int s_cmp_added(const void *x, const void *y)
{
    const added_t *a = x, *b = y;
    return (unsigned char)a->text[0] - (unsigned char)b->text[0];
}

static size_t s_pow2_above(size_t n)
{
    size_t m = 16;
    while (m < 2 * n) m *= 2;
    return m;
}

bpe_t *bpe_new(const char *const *tokens, size_t n_tokens, const int32_t *token_types,
               const char *const *merges, size_t n_merges, const char *pre,
               const bpe_special_t *specials)
{
    if (!tokens || n_tokens == 0 || n_tokens > INT32_MAX / 2) {
        medfl_error_set(MEDFL_EFORMAT, "tokenizer: empty or oversized vocabulary");
        return NULL;
    }
    if (!merges || n_merges == 0 || n_merges > INT32_MAX / 2) {
        medfl_error_set(MEDFL_EFORMAT, "tokenizer: a byte-level BPE vocabulary needs merges "
                                       "(tokenizer.ggml.merges is empty or missing)");
        return NULL;
    }
    int kind = s_pre_kind(pre);
    if (!kind) {
        medfl_error_set(MEDFL_EUNSUPPORTED, "tokenizer: pre-tokenizer '%.40s' is not supported "
                        "(gpt-2, smollm, llama-bpe, qwen2)", pre ? pre : "(none)");
        return NULL;
    }
    bpe_t *self = calloc(1, sizeof *self);
    if (!self) goto oom;
    self->n = n_tokens;
    self->pre = kind;
    self->ignore_merges = kind == PRE_LLAMA3; /* Llama-3's tokenizer.json, and llama.cpp */
    self->sp = specials ? *specials : (bpe_special_t){-1, -1, false, false};
    s_bytes_to_unicode(self->b2u);
    int16_t u2b[324];
    memset(u2b, 0xff, sizeof u2b);
    for (int b = 0; b < 256; b++) u2b[self->b2u[b]] = (int16_t)b;

    self->spell = calloc(n_tokens, sizeof *self->spell);
    self->raw = calloc(n_tokens, sizeof *self->raw);
    self->raw_len = calloc(n_tokens, sizeof *self->raw_len);
    self->added_kind = calloc(n_tokens, 1);
    self->slot_mask = s_pow2_above(n_tokens) - 1;
    self->slots = malloc((self->slot_mask + 1) * sizeof *self->slots);
    self->mslot_mask = s_pow2_above(n_merges) - 1;
    self->mslots = malloc((self->mslot_mask + 1) * sizeof *self->mslots);
    self->added = calloc(n_tokens, sizeof *self->added);
    if (!self->spell || !self->raw || !self->raw_len || !self->added_kind || !self->slots ||
        !self->mslots || !self->added)
        goto oom;
    memset(self->slots, 0xff, (self->slot_mask + 1) * sizeof *self->slots);
    for (size_t i = 0; i <= self->mslot_mask; i++) self->mslots[i].a = -1;

    for (size_t i = 0; i < n_tokens; i++) {
        if (!tokens[i] || !tokens[i][0]) {
            medfl_error_set(MEDFL_EFORMAT, "tokenizer: token %zu is empty", i);
            goto fail;
        }
        int alphabet = s_add_token(self, i, tokens[i], u2b);
        if (alphabet < 0) goto fail;
        s_insert(self, (int32_t)i);
        /* As transformers does for GGUF: CONTROL tokens spelled in the byte alphabet are
         * special added tokens, USER_DEFINED ones plain added tokens; both are cut out of the
         * text whole before pre-tokenization. */
        int32_t type = token_types ? token_types[i] : BPE_TYPE_NORMAL;
        if (alphabet && (type == BPE_TYPE_CONTROL || type == BPE_TYPE_USER_DEFINED)) {
            self->added_kind[i] = type == BPE_TYPE_CONTROL ? ADDED_SPECIAL : ADDED_PLAIN;
            self->added[self->n_added++] = (added_t){self->spell[i], strlen(self->spell[i]),
                                                     (int32_t)i, type == BPE_TYPE_CONTROL};
            self->added_first[(unsigned char)self->spell[i][0]] = true;
        }
    }
    qsort(self->added, self->n_added, sizeof *self->added, s_cmp_added);
    for (int b = 0; b < 256; b++) {
        char s[3];
        size_t k = s_put_utf8(self->b2u[b], s);
        /* printable ASCII must be there; other bytes may lack a token (bpe_ids_t.dropped) */
        if ((self->byte_id[b] = s_lookup(self, s, k)) < 0 && b >= 0x20 && b < 0x7f) {
            medfl_error_set(MEDFL_EFORMAT, "tokenizer: byte 0x%02X has no token: not a "
                                           "byte-level BPE vocabulary", b);
            goto fail;
        }
    }
    for (size_t r = 0; r < n_merges; r++) {
        if (!merges[r]) {
            medfl_error_set(MEDFL_EFORMAT, "tokenizer: merge %zu is missing", r);
            goto fail;
        }
        if (s_add_merge(self, r, merges[r]) < 0) goto fail;
    }
    int32_t sp_ids[2] = {self->sp.bos_id, self->sp.eos_id};
    for (int k = 0; k < 2; k++)
        if (sp_ids[k] < -1 || sp_ids[k] >= (int32_t)n_tokens) {
            medfl_error_set(MEDFL_EFORMAT, "tokenizer: %s token id %d is outside the "
                            "vocabulary", k ? "EOS" : "BOS", sp_ids[k]);
            goto fail;
        }
    return self;
oom:
    medfl_error_set(MEDFL_ENOMEM, "tokenizer: out of memory");
fail:
    bpe_destroy(&self);
    return NULL;
}

void bpe_destroy(bpe_t **self_p)
{
    if (!self_p || !*self_p) return;
    bpe_t *self = *self_p;
    for (size_t i = 0; i < self->n; i++) {
        if (self->spell) free(self->spell[i]);
        if (self->raw) free(self->raw[i]);
    }
    free(self->spell);
    free(self->raw);
    free(self->raw_len);
    free(self->added_kind);
    free(self->slots);
    free(self->mslots);
    free(self->added);
    free(self);
    *self_p = NULL;
}

size_t bpe_vocab_size(const bpe_t *self) { return self->n; }

int32_t bpe_token_id(const bpe_t *self, const char *token)
{
    return token ? s_lookup(self, token, strlen(token)) : -1;
}

const char *bpe_token(const bpe_t *self, int32_t id)
{
    return id >= 0 && (size_t)id < self->n ? self->spell[id] : NULL;
}

const char *bpe_token_bytes(const bpe_t *self, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= self->n) return NULL;
    *len = self->raw_len[id];
    return self->raw[id];
}

bool bpe_is_special(const bpe_t *self, int32_t id)
{
    return id >= 0 && (size_t)id < self->n && self->added_kind[id] == ADDED_SPECIAL;
}

const bpe_special_t *bpe_specials(const bpe_t *self) { return &self->sp; }

/* ---- Id lists and the encode workspace ---------------------------------------------- */

void bpe_ids_free(bpe_ids_t *ids)
{
    free(ids->v);
    *ids = (bpe_ids_t){0};
}

static int s_push(bpe_ids_t *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return medfl_error_set(MEDFL_ENOMEM, "tokenizer: out of memory");
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

typedef struct {
    int32_t id, prev, next;
    bool gone;
} sym_t;

typedef struct {
    int32_t rank, pos, id;
} heap_t;

typedef struct {
    uint32_t *cp;   /* code points of the segment */
    uint8_t *cl;    /* their BU_* classes */
    size_t *off;    /* byte offset of each code point, off[n] = end */
    size_t cap;
    sym_t *sym;
    heap_t *heap;
    char *spelled;  /* a piece in the byte alphabet (ignore_merges lookup) */
    size_t sym_cap;
} work_t;

static void s_work_free(work_t *w)
{
    free(w->cp);
    free(w->cl);
    free(w->off);
    free(w->sym);
    free(w->heap);
    free(w->spelled);
}

static int s_grow(void **p, size_t n, size_t size)
{
    void *q = realloc(*p, n * size);
    if (!q) return medfl_error_set(MEDFL_ENOMEM, "tokenizer: out of memory");
    *p = q;
    return 0;
}

/* ---- Pre-tokenizer scanners ---------------------------------------------------------- */

#define IS(k, c) ((w->cl[k] & (c)) != 0)
#define OTHER(k) ((w->cl[k] & (BU_L | BU_N | BU_S)) == 0)
#define CRLF(k) (w->cp[k] == '\r' || w->cp[k] == '\n')

static size_t s_run(const work_t *w, size_t i, size_t end, unsigned cls)
{
    while (i < end && IS(i, cls)) i++;
    return i;
}

static size_t s_run_other(const work_t *w, size_t i, size_t end)
{
    while (i < end && OTHER(i)) i++;
    return i;
}

static size_t s_run_crlf(const work_t *w, size_t i, size_t end)
{
    while (i < end && CRLF(i)) i++;
    return i;
}

/* Does code point cp match the contraction letter x (ASCII lower case), case-insensitively
 * when fold is set, as Oniguruma's (?i) does (s also matches U+017F, probed)? */
static bool s_letter(uint32_t cp, char x, bool fold)
{
    if (cp == (uint32_t)x) return true;
    if (!fold) return false;
    if (cp < 0x80) return cp + 32 == (uint32_t)x;
    for (size_t r = 0; bu_folds[r][0]; r++)
        if (bu_folds[r][0] == (uint32_t)x)
            for (size_t k = 1; bu_folds[r][k]; k++)
                if (bu_folds[r][k] == cp) return true;
    return false;
}

/* 's|'t|'re|'ve|'m|'ll|'d at i (an apostrophe): end of the match, or 0. */
static size_t s_contraction(const work_t *w, size_t i, size_t end, bool fold)
{
    if (i + 1 >= end) return 0;
    uint32_t c = w->cp[i + 1];
    if (s_letter(c, 's', fold) || s_letter(c, 't', fold) || s_letter(c, 'm', fold) ||
        s_letter(c, 'd', fold))
        return i + 2;
    if (i + 2 >= end) return 0;
    uint32_t d = w->cp[i + 2];
    if ((s_letter(c, 'r', fold) || s_letter(c, 'v', fold)) && s_letter(d, 'e', fold))
        return i + 3;
    if (s_letter(c, 'l', fold) && s_letter(d, 'l', fold)) return i + 3;
    return 0;
}

/* \s+(?!\S)|\s+ at a white-space code point: the run, less its last code point when a
 * non-space follows and the run is longer than one. */
static size_t s_spaces(const work_t *w, size_t i, size_t end)
{
    size_t j = s_run(w, i, end, BU_S);
    return j < end && j - i >= 2 ? j - 1 : j;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t s_scan_gpt2(const work_t *w, size_t i, size_t end)
{
    if (w->cp[i] == '\'') {
        size_t j = s_contraction(w, i, end, false);
        if (j) return j;
    }
    bool space = w->cp[i] == ' ' && i + 1 < end;
    if (space && IS(i + 1, BU_L)) return s_run(w, i + 1, end, BU_L);
    if (IS(i, BU_L)) return s_run(w, i, end, BU_L);
    if (space && IS(i + 1, BU_N)) return s_run(w, i + 1, end, BU_N);
    if (IS(i, BU_N)) return s_run(w, i, end, BU_N);
    if (space && OTHER(i + 1)) return s_run_other(w, i + 1, end);
    if (OTHER(i)) return s_run_other(w, i, end);
    return s_spaces(w, i, end);
}

/* Llama-3 (digits = 3) and Qwen2 (digits = 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
 * |\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t s_scan_llama3(const work_t *w, size_t i, size_t end, size_t digits)
{
    if (w->cp[i] == '\'') {
        size_t j = s_contraction(w, i, end, true);
        if (j) return j;
    }
    if (IS(i, BU_L)) return s_run(w, i, end, BU_L);
    if (i + 1 < end && !CRLF(i) && !IS(i, BU_N) && IS(i + 1, BU_L))
        return s_run(w, i + 1, end, BU_L);
    if (IS(i, BU_N)) {
        size_t j = s_run(w, i, end, BU_N);
        return j - i > digits ? i + digits : j;
    }
    if (w->cp[i] == ' ' && i + 1 < end && OTHER(i + 1))
        return s_run_crlf(w, s_run_other(w, i + 1, end), end);
    if (OTHER(i)) return s_run_crlf(w, s_run_other(w, i, end), end);
    /* \s*[\r\n]+: up to the last line break of the white-space run */
    size_t j = s_run(w, i, end, BU_S), last = j;
    for (size_t k = i; k < j; k++)
        if (CRLF(k)) last = k;
    if (last < j) return last + 1;
    return s_spaces(w, i, end);
}

static size_t s_scan(const bpe_t *self, const work_t *w, size_t i, size_t end)
{
    switch (self->pre) {
    case PRE_LLAMA3: return s_scan_llama3(w, i, end, 3);
    case PRE_QWEN2: return s_scan_llama3(w, i, end, 1);
    default: return s_scan_gpt2(w, i, end);
    }
}

/* ---- Merges ---------------------------------------------------------------------------- */

static bool s_heap_less(heap_t a, heap_t b)
{
    return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos;
}

static void s_heap_push(heap_t *h, size_t *n, heap_t x)
{
    size_t i = (*n)++;
    while (i > 0 && s_heap_less(x, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

static heap_t s_heap_pop(heap_t *h, size_t *n)
{
    heap_t top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && s_heap_less(h[c + 1], h[c])) c++;
        if (!s_heap_less(h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = x;
    return top;
}

static void s_try_pair(const bpe_t *self, const sym_t *sym, int32_t pos, heap_t *heap,
                       size_t *nh)
{
    const merge_slot_t *m = s_merge(self, sym[pos].id, sym[sym[pos].next].id);
    if (m) s_heap_push(heap, nh, (heap_t){m->rank, pos, m->id});
}

/* BPE of one pre-token (bytes s[0..len)), appended to ids. */
static int s_bpe_piece(const bpe_t *self, work_t *w, const unsigned char *s, size_t len,
                       bpe_ids_t *ids)
{
    if (len > w->sym_cap) {
        size_t cap = len < 256 ? 256 : len;
        if (s_grow((void **)&w->sym, cap, sizeof *w->sym) < 0 ||
            s_grow((void **)&w->heap, 2 * cap, sizeof *w->heap) < 0 ||
            s_grow((void **)&w->spelled, 2 * cap + 1, 1) < 0)
            return -1;
        w->sym_cap = cap;
    }
    if (self->ignore_merges && len > 1) {
        size_t k = 0;
        for (size_t i = 0; i < len; i++) k += s_put_utf8(self->b2u[s[i]], w->spelled + k);
        int32_t id = s_lookup(self, w->spelled, k);
        if (id >= 0) return s_push(ids, id);
    }
    /* A byte without a token is left out, and its neighbours become adjacent, as in HF's
     * BPE without an unknown token (SmolLM2 has no token for 21 bytes, 0x04 among them). */
    sym_t *sym = w->sym;
    size_t ns = 0;
    for (size_t i = 0; i < len; i++) {
        if (self->byte_id[s[i]] < 0) {
            ids->dropped++;
            continue;
        }
        sym[ns] = (sym_t){self->byte_id[s[i]], (int32_t)ns - 1, -1, false};
        if (ns) sym[ns - 1].next = (int32_t)ns;
        ns++;
    }
    if (!ns) return 0;
    size_t nh = 0; /* at most ns - 1 pairs live at once plus expired ones: < 2 ns */
    for (size_t i = 0; i + 1 < ns; i++) s_try_pair(self, sym, (int32_t)i, w->heap, &nh);
    while (nh) {
        heap_t top = s_heap_pop(w->heap, &nh);
        sym_t *cur = &sym[top.pos];
        if (cur->gone || cur->next < 0) continue;
        const merge_slot_t *m = s_merge(self, cur->id, sym[cur->next].id);
        if (!m || m->id != top.id) continue; /* expired */
        sym_t *right = &sym[cur->next];
        cur->id = top.id;
        right->gone = true;
        cur->next = right->next;
        if (cur->next >= 0) sym[cur->next].prev = top.pos;
        if (cur->prev >= 0) s_try_pair(self, sym, cur->prev, w->heap, &nh);
        if (cur->next >= 0) s_try_pair(self, sym, top.pos, w->heap, &nh);
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if (s_push(ids, sym[i].id) < 0) return -1;
    return 0;
}

/* ---- Encoding -------------------------------------------------------------------------- */

/* Pre-tokenizes and merges one segment between added tokens. */
static int s_segment(const bpe_t *self, work_t *w, const char *text, size_t len, bpe_ids_t *ids)
{
    if (len + 1 > w->cap) {
        size_t cap = len + 1 < 1024 ? 1024 : len + 1;
        if (s_grow((void **)&w->cp, cap, sizeof *w->cp) < 0 ||
            s_grow((void **)&w->cl, cap, 1) < 0 ||
            s_grow((void **)&w->off, cap, sizeof *w->off) < 0)
            return -1;
        w->cap = cap;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        w->off[n] = i;
        i += s_utf8((const unsigned char *)text + i, &w->cp[n]);
        w->cl[n] = (uint8_t)s_class(w->cp[n]);
    }
    w->off[n] = len;
    /* SmolLM2 (StarCoder) first isolates every digit (HF's Digits(individual_digits)), then
     * runs GPT-2's regex on each stretch between them. */
    for (size_t i = 0; i < n;) {
        size_t end = n;
        if (self->pre == PRE_SMOLLM) {
            if (IS(i, BU_D)) {
                end = i + 1;
            } else {
                end = i;
                while (end < n && !IS(end, BU_D)) end++;
            }
        }
        while (i < end) {
            size_t j = (self->pre == PRE_SMOLLM && end == i + 1) ? end : s_scan(self, w, i, end);
            if (j <= i) j = i + 1; /* cannot happen: every class has an alternative */
            if (s_bpe_piece(self, w, (const unsigned char *)text + w->off[i],
                            w->off[j] - w->off[i], ids) < 0)
                return -1;
            i = j;
        }
    }
    return 0;
}

/* The longest added token starting at text[i], or NULL. */
static const added_t *s_added_at(const bpe_t *self, const char *text, size_t len, size_t i)
{
    const added_t *best = NULL;
    unsigned char c = (unsigned char)text[i];
    size_t lo = 0, hi = self->n_added;
    while (lo < hi) { /* first entry starting with c */
        size_t mid = (lo + hi) / 2;
        if ((unsigned char)self->added[mid].text[0] < c) lo = mid + 1;
        else hi = mid;
    }
    for (size_t k = lo; k < self->n_added && (unsigned char)self->added[k].text[0] == c; k++) {
        const added_t *a = &self->added[k];
        if (a->len <= len - i && memcmp(text + i, a->text, a->len) == 0 &&
            (!best || a->len > best->len))
            best = a;
    }
    return best;
}

static int s_encode(const bpe_t *self, work_t *w, const char *text, size_t len, int flags,
                    bpe_ids_t *ids)
{
    size_t seg = 0;
    for (size_t i = 0; i < len;) {
        const added_t *a = self->added_first[(unsigned char)text[i]]
                               ? s_added_at(self, text, len, i) : NULL;
        if (!a) {
            i++;
            continue;
        }
        /* HF finds the leftmost-longest added token first and only then drops a special one
         * when specials are not parsed: its text stays in the segment. */
        if (a->special && !(flags & BPE_PARSE_SPECIAL)) {
            i += a->len;
            continue;
        }
        if (s_segment(self, w, text + seg, i - seg, ids) < 0 || s_push(ids, a->id) < 0)
            return -1;
        i += a->len;
        seg = i;
    }
    return s_segment(self, w, text + seg, len - seg, ids);
}

int bpe_encode(const bpe_t *self, const char *text, size_t len, int flags, bpe_ids_t *ids)
{
    size_t bad = utf8_first_invalid(text, len);
    if (bad != len)
        return medfl_error_set(MEDFL_EINVAL, "tokenizer: invalid UTF-8 at byte offset %zu",
                               bad);
    size_t n0 = ids->n, d0 = ids->dropped;
    work_t w = {0};
    int rc = 0;
    if ((flags & BPE_ADD_SPECIAL) && self->sp.add_bos && self->sp.bos_id >= 0)
        rc = s_push(ids, self->sp.bos_id);
    if (rc == 0) rc = s_encode(self, &w, text, len, flags, ids);
    if (rc == 0 && (flags & BPE_ADD_SPECIAL) && self->sp.add_eos && self->sp.eos_id >= 0)
        rc = s_push(ids, self->sp.eos_id);
    s_work_free(&w);
    if (rc < 0) {
        ids->n = n0;
        ids->dropped = d0;
    }
    return rc;
}

char *bpe_decode(const bpe_t *self, const int32_t *ids, size_t n, size_t *len)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= self->n) {
            medfl_error_set(MEDFL_EINVAL, "tokenizer: id %d at position %zu is outside the "
                            "vocabulary of %zu", ids[i], i, self->n);
            return NULL;
        }
        total += self->raw_len[ids[i]];
    }
    char *out = malloc(total + 1);
    if (!out) {
        medfl_error_set(MEDFL_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(out + k, self->raw[ids[i]], self->raw_len[ids[i]]);
        k += self->raw_len[ids[i]];
    }
    out[k] = '\0';
    if (len) *len = k;
    return out;
}
