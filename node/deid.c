/* De-identification gate: hand-written PHI matchers (one function per rule, each anchored
 * on context that clinical numbers and eponyms do not have), span merging, redaction, the
 * gate over a records set and the `medfl-node check-data` command.
 *
 * Why context instead of bare patterns: a note like "Na 138, WBC 12.3, BP 140/90, 500 mg
 * since 2015, Crohn's disease" is full of numbers and capitalised words that are not PHI,
 * while "MRN: 1234567", "Dr. Smith", "92-year-old", "Springfield, IL 62704" carry their
 * identifying role in the words around them. Each matcher therefore looks for such an
 * anchor (a title, a label, a keyword, a street suffix, a state, a separator shape that
 * lab values never take) and only then for the identifier itself. What this cannot catch
 * (bare names without any context, free-text places) is written down in docs/deid.md.
 *
 * The matchers run on a normalised copy of the text (Unicode spaces, line breaks, dashes,
 * quotes, fullwidth forms and zero-width characters folded to ASCII; see "normalisation"
 * below), with a map back to the original bytes, so that a no-break space or an en dash
 * cannot hide an identifier and redaction still replaces the original bytes.
 *
 * Nothing here logs or prints matched text: reports name records and rules only. */
#include "node/deid.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/atomic_file.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "node/commands.h"
#include "node/node_config.h"

static const char *s_rule_names[DEID_RULE_COUNT] = {
    "NAME", "DATE", "PHONE", "FAX", "EMAIL", "SSN", "MRN", "ACCOUNT", "URL", "IP",
    "ADDRESS", "ZIP", "AGE_OVER_89",
};

const char *deid_rule_name(deid_rule_t rule)
{
    return (unsigned)rule < DEID_RULE_COUNT ? s_rule_names[rule] : NULL;
}

int deid_rule_parse(const char *name, deid_rule_t *out)
{
    for (int r = 0; r < DEID_RULE_COUNT; r++)
        if (strcmp(name, s_rule_names[r]) == 0) { *out = (deid_rule_t)r; return 0; }
    return medfl_error_set(MEDFL_EINVAL, "unknown de-identification rule '%s'", name);
}

const char *deid_policy_name(deid_policy_t policy)
{
    switch (policy) {
    case DEID_POLICY_REFUSE: return "refuse";
    case DEID_POLICY_REDACT: return "redact";
    case DEID_POLICY_OFF: return "off";
    }
    return "?";
}

int deid_policy_parse(const char *name, deid_policy_t *out)
{
    if (strcmp(name, "refuse") == 0) *out = DEID_POLICY_REFUSE;
    else if (strcmp(name, "redact") == 0) *out = DEID_POLICY_REDACT;
    else if (strcmp(name, "off") == 0) *out = DEID_POLICY_OFF;
    else return medfl_error_set(MEDFL_EINVAL, "unknown de-identification policy '%s' "
                                "(refuse, redact or off)", name);
    return 0;
}

/* ---------------------------------------------------------------- character helpers */

/* Bytes >= 0x80 count as letters: UTF-8 names (José, Müller) must not split into words. */
static int s_alpha(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80; }
static int s_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int s_alnum(unsigned char c) { return s_alpha(c) || s_digit(c); }
static int s_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static int s_lower(unsigned char c) { return (c >= 'a' && c <= 'z'); }
static int s_hex(unsigned char c) { return s_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
/* After normalisation every space is ' ' and every line break '\n'; a line break
 * separates words like a space ("Dr.\nSmith" wrapped by an editor). */
static int s_space(unsigned char c) { return c == ' ' || c == '\n'; }
static unsigned char s_lc(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c; }

typedef struct {
    const unsigned char *t;
    size_t len;
    deid_span_t *v;
    size_t n, cap;
    int oom;
} s_scan_t;

static unsigned char s_at(const s_scan_t *s, size_t i) { return i < s->len ? s->t[i] : 0; }
static int s_wstart(const s_scan_t *s, size_t i) { return i == 0 || !s_alnum(s->t[i - 1]); }
static int s_wend(const s_scan_t *s, size_t j) { return j >= s->len || !s_alnum(s->t[j]); }

static void s_add(s_scan_t *s, deid_rule_t rule, size_t a, size_t b)
{
    if (b <= a || s->oom) return;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        deid_span_t *v = realloc(s->v, cap * sizeof *v);
        if (!v) { s->oom = 1; return; }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (deid_span_t){rule, a, b};
}

/* Case-insensitive match of lit at i; returns its length or 0. */
static size_t s_lit(const s_scan_t *s, size_t i, const char *lit)
{
    size_t k = 0;
    for (; lit[k]; k++)
        if (i + k >= s->len || s_lc(s->t[i + k]) != s_lc((unsigned char)lit[k])) return 0;
    return k;
}

/* Keyword at a word start, not followed by more word characters when it ends in one. */
static size_t s_kw(const s_scan_t *s, size_t i, const char *kw)
{
    if (!s_wstart(s, i)) return 0;
    size_t k = s_lit(s, i, kw);
    if (!k) return 0;
    if (s_alnum((unsigned char)kw[k - 1]) && !s_wend(s, i + k)) return 0;
    return k;
}

/* First matching keyword of a NULL-terminated list (lists put longer phrases first). */
static size_t s_kw_any(const s_scan_t *s, size_t i, const char *const *list)
{
    for (const char *const *k = list; *k; k++) {
        size_t n = s_kw(s, i, *k);
        if (n) return n;
    }
    return 0;
}

static size_t s_skip_ws(const s_scan_t *s, size_t i)
{
    while (i < s->len && s_space(s->t[i])) i++;
    return i;
}

static size_t s_ndigits(const s_scan_t *s, size_t i)
{
    size_t k = 0;
    while (i + k < s->len && s_digit(s->t[i + k])) k++;
    return k;
}

static long s_num(const s_scan_t *s, size_t i, size_t n)
{
    long v = 0;
    for (size_t k = 0; k < n && k < 9; k++) v = v * 10 + (s->t[i + k] - '0');
    return v;
}

/* True when a number starting at i stands alone on its left (not 1.5, 3/4, x-12, A12). */
static int s_num_left_ok(const s_scan_t *s, size_t i)
{
    if (i == 0) return 1;
    unsigned char c = s->t[i - 1];
    return !s_alnum(c) && c != '.' && c != '/' && c != '-' && c != ',' && c != ':';
}

/* True when a number ends at j without continuing (no 1.5, 12-3, 3/4, 12,000 after it). */
static int s_num_right_ok(const s_scan_t *s, size_t j)
{
    if (j >= s->len) return 1;
    unsigned char c = s->t[j];
    if (s_alnum(c)) return 0;
    if ((c == '.' || c == '/' || c == '-' || c == ',' || c == ':') && s_digit(s_at(s, j + 1)))
        return 0;
    return 1;
}

/* True when one of words starts a word within the window bytes before pos, on the same
 * line (a phone word on the previous line of a list belongs to another entry). */
static int s_context_before(const s_scan_t *s, size_t pos, size_t window,
                            const char *const *words)
{
    size_t a = pos > window ? pos - window : 0;
    for (size_t i = pos; i > a; i--)
        if (s->t[i - 1] == '\n') { a = i; break; }
    for (size_t i = a; i < pos; i++)
        for (const char *const *w = words; *w; w++) {
            size_t n = s_lit(s, i, *w);
            if (n && i + n <= pos && s_wstart(s, i)) return 1;
        }
    return 0;
}

/* ---------------------------------------------------------------- EMAIL, URL */

static int s_local_char(unsigned char c) { return s_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'; }

static void s_rule_email(s_scan_t *s)
{
    for (size_t i = 1; i + 1 < s->len; i++) {
        if (s->t[i] != '@') continue;
        size_t a = i;
        while (a > 0 && s_local_char(s->t[a - 1])) a--;
        while (a < i && !s_alnum(s->t[a])) a++;
        if (a == i) continue;
        size_t b = i + 1;
        while (b < s->len && (s_alnum(s->t[b]) || s->t[b] == '.' || s->t[b] == '-')) b++;
        while (b > i + 1 && (s->t[b - 1] == '.' || s->t[b - 1] == '-')) b--;
        /* The domain needs a dot and an alphabetic top-level label of 2+ letters. */
        size_t dot = b;
        while (dot > i + 1 && s->t[dot - 1] != '.') dot--;
        if (dot <= i + 2 || b - dot < 2) continue;
        int alpha = 1;
        for (size_t k = dot; k < b; k++) if (!s_alpha(s->t[k])) alpha = 0;
        if (!alpha) continue;
        s_add(s, DEID_EMAIL, a, b);
        i = b;
    }
}

static int s_url_char(unsigned char c)
{
    return c > ' ' && c != '<' && c != '>' && c != '"' && c != '\'' && c != '`' && c != 0x7F;
}

static size_t s_url_tail(const s_scan_t *s, size_t b)
{
    while (b < s->len && s_url_char(s->t[b])) b++;
    while (b > 0 && strchr(".,;:!?)]}", s->t[b - 1])) b--;
    return b;
}

static const char *const s_tlds[] = {"com", "org", "net", "edu", "gov", "mil", "info", "biz",
                                     "io", "health", "care", NULL};

static void s_rule_url(s_scan_t *s)
{
    static const char *const schemes[] = {"https://", "http://", "ftp://", "sftp://", "www.", NULL};
    for (size_t i = 0; i < s->len; i++) {
        if (!s_wstart(s, i) || !s_alnum(s->t[i])) continue;
        size_t k = 0;
        for (const char *const *sc = schemes; *sc && !k; sc++) k = s_lit(s, i, *sc);
        if (k) {
            size_t b = s_url_tail(s, i + k);
            if (b > i + k) { s_add(s, DEID_URL, i, b); i = b; }
            continue;
        }
        /* Bare host names: label(.label)+ ending in a known top-level domain, not part of
         * an e-mail address (the EMAIL rule owns those). */
        if (i > 0 && (s->t[i - 1] == '@' || s->t[i - 1] == '.')) continue;
        size_t b = i;
        while (b < s->len && (s_alnum(s->t[b]) || s->t[b] == '.' || s->t[b] == '-')) b++;
        while (b > i && (s->t[b - 1] == '.' || s->t[b - 1] == '-')) b--;
        if (b < s->len && s->t[b] == '@') { i = b; continue; }
        size_t dot = b;
        while (dot > i && s->t[dot - 1] != '.') dot--;
        if (dot <= i + 1) { i = b; continue; }
        int tld = 0;
        for (const char *const *t = s_tlds; *t; t++)
            if (b - dot == strlen(*t) && s_lit(s, dot, *t)) tld = 1;
        /* Every label non-empty (no "a..com"). */
        for (size_t k = i; k + 1 < b; k++) if (s->t[k] == '.' && s->t[k + 1] == '.') tld = 0;
        if (tld) {
            size_t e = b;
            if (e < s->len && s->t[e] == '/') e = s_url_tail(s, e);
            s_add(s, DEID_URL, i, e);
            i = e;
        } else {
            i = b;
        }
    }
}

/* ---------------------------------------------------------------- IP */

static void s_rule_ip(s_scan_t *s)
{
    for (size_t i = 0; i < s->len; i++) {
        if (!s_digit(s->t[i]) || (i > 0 && (s_alnum(s->t[i - 1]) || s->t[i - 1] == '.'))) continue;
        size_t p = i;
        int ok = 1;
        for (int g = 0; g < 4 && ok; g++) {
            size_t n = s_ndigits(s, p);
            if (n < 1 || n > 3 || s_num(s, p, n) > 255) ok = 0;
            p += n;
            if (ok && g < 3) {
                if (s_at(s, p) != '.') ok = 0;
                else p++;
            }
        }
        if (ok && s_num_right_ok(s, p) && !(s_at(s, p) == '.' && s_digit(s_at(s, p + 1)))) {
            s_add(s, DEID_IP, i, p);
            i = p;
        }
    }
    /* IPv6: hex groups and colons. Clock times (10:30:45) and ratios are groups too, so
     * require "::", eight groups, or a hex letter in four or more groups. */
    for (size_t i = 0; i < s->len; i++) {
        if (!(s_hex(s->t[i]) || (s->t[i] == ':' && s_at(s, i + 1) == ':'))) continue;
        if (i > 0 && (s_alnum(s->t[i - 1]) || s->t[i - 1] == ':' || s->t[i - 1] == '.')) continue;
        size_t p = i;
        int groups = 0, dcolon = 0, letters = 0, ok = 1;
        while (p < s->len && ok) {
            size_t g = 0;
            while (g < 5 && p + g < s->len && s_hex(s->t[p + g])) {
                if (!s_digit(s->t[p + g])) letters = 1;
                g++;
            }
            if (g > 4) { ok = 0; break; }
            if (g > 0) { groups++; p += g; }
            if (s_at(s, p) == ':' && s_at(s, p + 1) == ':') {
                if (dcolon) { ok = 0; break; }
                dcolon = 1;
                p += 2;
                continue;
            }
            if (s_at(s, p) == ':' && s_hex(s_at(s, p + 1)) && g > 0) { p++; continue; }
            break;
        }
        if (!ok || (p < s->len && (s_alnum(s->t[p]) || s->t[p] == ':'))) continue;
        if (groups > 8) continue;
        int hit = (dcolon && groups >= 1 && (groups >= 2 || letters || s_at(s, i) == ':')) ||
                  groups == 8 || (letters && groups >= 4);
        /* "::" alone after a word (MTSamples' "HISTORY::") is not an address. */
        if (hit && dcolon && groups == 1 && !letters && s_at(s, i) != ':') hit = 0;
        if (hit) { s_add(s, DEID_IP, i, p); i = p; }
    }
}

/* ---------------------------------------------------------------- SSN, PHONE, FAX */

static void s_rule_ssn(s_scan_t *s)
{
    for (size_t i = 0; i + 11 <= s->len; i++) {
        if (!s_digit(s->t[i]) || !s_num_left_ok(s, i)) continue;
        if (s_ndigits(s, i) == 3 && s->t[i + 3] == '-' && s_ndigits(s, i + 4) == 2 &&
            s->t[i + 6] == '-' && s_ndigits(s, i + 7) == 4 && s_num_right_ok(s, i + 11)) {
            s_add(s, DEID_SSN, i, i + 11);
            i += 10;
        }
    }
    static const char *const kws[] = {"social security number", "social security no",
                                      "social security #", "social security", "SSN", "SS#",
                                      "SS #", NULL};
    for (size_t i = 0; i < s->len; i++) {
        size_t k = s_kw_any(s, i, kws);
        if (!k) continue;
        size_t p = i + k;
        while (p < s->len && (s_space(s->t[p]) || s->t[p] == ':' || s->t[p] == '#' || s->t[p] == '=')) p++;
        if (s_lit(s, p, "is ")) p = s_skip_ws(s, p + 3);
        size_t a = p;
        int digits = 0;
        while (p < s->len && (s_digit(s->t[p]) || ((s->t[p] == '-' || s->t[p] == ' ') &&
                                                   s_digit(s_at(s, p + 1)) && digits))) {
            if (s_digit(s->t[p])) digits++;
            p++;
        }
        if (digits == 9 && s_num_right_ok(s, p)) s_add(s, DEID_SSN, a, p);
    }
}

static const char *const s_phone_ctx[] = {"phone", "tel", "telephone", "call", "cell", "mobile",
                                          "pager", "beeper", "contact", "fax", "ph", "number",
                                          "reach", "hotline", "landline", "home", "work", NULL};

static size_t s_phone_ext(const s_scan_t *s, size_t p)
{
    size_t q = s_skip_ws(s, p);
    size_t k = s_lit(s, q, "ext.");
    if (!k) k = s_lit(s, q, "ext");
    if (!k) k = s_lit(s, q, "x");
    if (!k) return p;
    q = s_skip_ws(s, q + k);
    size_t n = s_ndigits(s, q);
    if (n >= 1 && n <= 6 && s_num_right_ok(s, q + n)) return q + n;
    return p;
}

static void s_rule_phone(s_scan_t *s)
{
    static const char *const fax_ctx[] = {"fax", "facsimile", NULL};
    for (size_t i = 0; i < s->len; i++) {
        unsigned char c = s->t[i];
        if (!(s_digit(c) || c == '(' || c == '+')) continue;
        if (i > 0 && (s_alnum(s->t[i - 1]) || strchr("-./", s->t[i - 1]))) continue;
        size_t p = i, start = i;
        int cc = 0;
        /* Country code: "+1 ", "+1-", "1-", "1 (" */
        if (c == '+') {
            if (s_at(s, p + 1) != '1') continue;
            p += 2;
            cc = 1;
            if (s_at(s, p) == '-' || s_at(s, p) == ' ' || s_at(s, p) == '.') p++;
        } else if (c == '1' && (s_at(s, p + 1) == '-' || s_at(s, p + 1) == '.' ||
                                (s_at(s, p + 1) == ' ' && s_at(s, p + 2) == '(')) &&
                   s_ndigits(s, p + 2 + (s_at(s, p + 2) == '(')) == 3) {
            p += 2;
            cc = 1;
        }
        int plain_sep = 0, ok = 0, need_ctx = 0;
        size_t end = 0;
        if (s_at(s, p) == '(' && s_ndigits(s, p + 1) == 3 && s_at(s, p + 4) == ')') {
            p += 5;
            if (s_at(s, p) == ' ' || s_at(s, p) == '-') p++;
            if (s_ndigits(s, p) == 3 && (s_at(s, p + 3) == '-' || s_at(s, p + 3) == '.' ||
                                         s_at(s, p + 3) == ' ') &&
                s_ndigits(s, p + 4) == 4) { end = p + 8; ok = 1; }
        } else if (s_ndigits(s, p) == 3 && strchr("-. ", s_at(s, p + 3)) && s_at(s, p + 3)) {
            plain_sep = s_at(s, p + 3);
            size_t q = p + 4;
            if (s_ndigits(s, q) == 3 && s_at(s, q + 3) == plain_sep && s_ndigits(s, q + 4) == 4) {
                end = q + 8;
                ok = 1;
                /* "120 130 1400" could be a list of values: spaces need a phone word. */
                if (plain_sep == ' ' && !cc) need_ctx = 1;
            } else if (!cc && s_ndigits(s, q) == 4 && plain_sep == '-' && s_num_right_ok(s, q + 4)) {
                /* 7-digit local number: only next to a phone word. */
                end = q + 4;
                ok = 1;
                need_ctx = 1;
            }
        } else if (s_ndigits(s, p) == 10 && !cc) {
            end = p + 10;
            ok = 1;
            need_ctx = 1;
        }
        if (!ok || !s_num_right_ok(s, end)) continue;
        if (need_ctx && !s_context_before(s, start, 40, s_phone_ctx)) continue;
        end = s_phone_ext(s, end);
        deid_rule_t rule = s_context_before(s, start, 30, fax_ctx) ? DEID_FAX : DEID_PHONE;
        s_add(s, rule, start, end);
        i = end;
    }
}

/* ---------------------------------------------------------------- DATE */

static const char *const s_months[] = {
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "sept", "jan", "feb", "mar", "apr", "jun", "jul",
    "aug", "sep", "oct", "nov", "dec", NULL};

/* A month name at i: capitalised ("March", "MARCH", "Mar."), so "may" and "march" as words
 * do not count. Returns its length including an abbreviation's period. */
static size_t s_month(const s_scan_t *s, size_t i)
{
    if (!s_wstart(s, i) || !s_upper(s_at(s, i))) return 0;
    for (const char *const *m = s_months; *m; m++) {
        size_t k = s_kw(s, i, *m);
        if (!k) continue;
        /* Mixed case must be "March"; all caps "MARCH" is fine too. */
        int caps = 1;
        for (size_t j = 1; j < k; j++) if (s_lower(s->t[i + j])) caps = 0;
        int title = 1;
        for (size_t j = 1; j < k; j++) if (s_upper(s->t[i + j])) title = 0;
        if (!caps && !title) continue;
        if (s_at(s, i + k) == '.' && m - s_months >= 12) k++; /* "Mar." but not "May." */
        return k;
    }
    return 0;
}

/* A day number 1..31 at i with optional ordinal suffix; returns its length or 0. */
static size_t s_day(const s_scan_t *s, size_t i)
{
    size_t n = s_ndigits(s, i);
    if (n < 1 || n > 2) return 0;
    long d = s_num(s, i, n);
    if (d < 1 || d > 31) return 0;
    size_t k = n;
    static const char *const suf[] = {"st", "nd", "rd", "th", NULL};
    for (const char *const *x = suf; *x; x++)
        if (s_lit(s, i + n, *x)) { k = n + 2; break; }
    if (!s_wend(s, i + k)) return 0;
    /* "February 6,2007": a comma glued to the year still ends the day. */
    if (k == n && !s_num_right_ok(s, i + k) &&
        !(s_at(s, i + k) == ',' && s_ndigits(s, i + k + 1) == 4))
        return 0;
    return k;
}

/* A year 1800..2099 (4 digits) or 'yy at i; returns length or 0. */
static size_t s_year(const s_scan_t *s, size_t i)
{
    if (s_at(s, i) == '\'' && s_ndigits(s, i + 1) == 2 && s_num_right_ok(s, i + 3)) return 3;
    if (s_ndigits(s, i) != 4 || !s_num_right_ok(s, i + 4)) return 0;
    long y = s_num(s, i, 4);
    return (y >= 1800 && y <= 2099) ? 4 : 0;
}

static int s_valid_md(long a, long b)
{
    return (a >= 1 && a <= 12 && b >= 1 && b <= 31) || (b >= 1 && b <= 12 && a >= 1 && a <= 31);
}

static const char *const s_date_ctx[] = {"on", "dated", "date", "dob", "d.o.b", "since", "until",
                                         "till", "admitted", "admission", "discharged",
                                         "discharge", "seen", "visit", "born", "dos",
                                         "surgery", "deceased", "died", NULL};
/* Words that precede fractions as often as dates: only m/yy after them ("in 12/07"). */
static const char *const s_date_ctx_weak[] = {"in", "by", "before", "after", "through", NULL};

static void s_rule_date_numeric(s_scan_t *s)
{
    for (size_t i = 0; i < s->len; i++) {
        if (!s_digit(s->t[i])) continue;
        /* Letters or a comma may touch a full date ("discharged1/19/93", ",9/8/95,"). */
        if (i > 0 && (s_digit(s->t[i - 1]) || strchr("./-:", s->t[i - 1]))) continue;
        size_t n1 = s_ndigits(s, i);
        unsigned char sep = s_at(s, i + n1);
        if (sep != '/' && sep != '-' && sep != '.') continue;
        size_t p2 = i + n1 + 1, n2 = s_ndigits(s, p2);
        if (n1 <= 2 && n2 == 4 && sep == '/') {
            /* month/year "03/2008" */
            long m = s_num(s, i, n1), y = s_num(s, p2, 4);
            if (m >= 1 && m <= 12 && y >= 1900 && y <= 2099 && s_num_right_ok(s, p2 + 4)) {
                s_add(s, DEID_DATE, i, p2 + 4);
                i = p2 + 4;
            }
            continue;
        }
        if (n2 < 1 || n2 > 2) continue;
        if (n1 == 4) {
            /* yyyy-mm-dd */
            long y = s_num(s, i, 4), m = s_num(s, p2, n2);
            size_t p3 = p2 + n2 + 1, n3 = s_ndigits(s, p3);
            if (s_at(s, p2 + n2) != sep || n3 < 1 || n3 > 2) continue;
            long d = s_num(s, p3, n3);
            if (y >= 1800 && y <= 2099 && m >= 1 && m <= 12 && d >= 1 && d <= 31 &&
                s_num_right_ok(s, p3 + n3)) {
                s_add(s, DEID_DATE, i, p3 + n3);
                i = p3 + n3;
            }
            continue;
        }
        if (n1 > 2) continue;
        long a = s_num(s, i, n1), b = s_num(s, p2, n2);
        size_t e2 = p2 + n2;
        if (s_at(s, e2) == sep && s_digit(s_at(s, e2 + 1))) {
            if (!s_valid_md(a, b)) continue;
            size_t n3 = s_ndigits(s, e2 + 1);
            int ok = 0;
            if (n3 == 4) {
                long y = s_num(s, e2 + 1, 4);
                ok = y >= 1800 && y <= 2099;
            } else if (n3 == 2) {
                ok = sep != '.'; /* 1.5.10 reads as a version or a list, not a date */
            }
            if (ok && s_num_right_ok(s, e2 + 1 + n3)) {
                s_add(s, DEID_DATE, i, e2 + 1 + n3);
                i = e2 + 1 + n3;
            }
            continue;
        }
        /* m/d or m/yy without more: only after a date word ("seen on 3/14", "transplant in
         * 12/07"), and not a dose ("on 1/2 tab"), a fraction, blood pressure or score,
         * which lack such a word, nor a pain score ("pain in 8/10"). */
        if (sep != '/' || !s_num_right_ok(s, e2)) continue;
        if (!(a >= 1 && a <= 12 && b >= 0 && (b <= 31 || n2 == 2)) || !s_num_left_ok(s, i))
            continue;
        static const char *const scale_ctx[] = {"pain", "score", "scale", "rated", "rates",
                                                "severity", "intensity", "strength", NULL};
        if (b == 10 && s_context_before(s, i, 40, scale_ctx)) continue;
        size_t w = i;
        while (w > 0 && s_space(s->t[w - 1])) w--;
        size_t ws = w;
        while (ws > 0 && (s_alpha(s->t[ws - 1]) || s->t[ws - 1] == '.')) ws--;
        if (ws == w) continue;
        int ctx = 0, weak = 0;
        for (const char *const *c = s_date_ctx; *c && !ctx; c++)
            if (strlen(*c) == w - ws && s_lit(s, ws, *c)) ctx = 1;
        for (const char *const *c = s_date_ctx_weak; *c && !ctx; c++)
            if (strlen(*c) == w - ws && s_lit(s, ws, *c)) ctx = weak = 1;
        if (!ctx) continue;
        /* After the weak words ("in 1/2 NS", "in 1/5 lymph nodes") only m/yy counts. */
        if (weak && n2 != 2) continue;
        size_t q = s_skip_ws(s, e2);
        static const char *const dose[] = {
            "tab", "tabs", "tablet", "tablets", "cap", "caps", "capsule", "pill", "pills", "mg",
            "mcg", "g", "kg", "ml", "l", "liter", "liters", "lpm", "dose", "doses", "strength",
            "normal", "saline", "of", "teaspoon", "tsp", "tablespoon", "tbsp", "inch", "inches",
            "cup", "cups", "cm", "mm", "unit", "units", "hour", "hours", "hr", "hrs", "day",
            "days", "mile", "miles", "block", "blocks", "puff", "puffs", "ounce", "oz", "vial",
            "strength", "power", "the", "and", "or", NULL};
        if (s_kw_any(s, q, dose)) continue;
        s_add(s, DEID_DATE, i, e2);
        i = e2;
    }
}

static void s_rule_date_words(s_scan_t *s)
{
    for (size_t i = 0; i < s->len; i++) {
        size_t mk = s_month(s, i);
        if (!mk) continue;
        size_t start = i, end = 0;
        /* Before the month: "14 March", "14th of March", "the 3rd of May". */
        size_t b = i;
        while (b > 0 && s_space(s->t[b - 1])) b--;
        if (b >= 2 && s_lit(s, b - 2, "of") && s_wstart(s, b - 2)) {
            b -= 2;
            while (b > 0 && s_space(s->t[b - 1])) b--;
        }
        if (b < i) {
            size_t d = b;
            while (d > 0 && s_alnum(s->t[d - 1])) d--;
            if (d < b && s_digit(s->t[d]) && s_num_left_ok(s, d) && s_day(s, d) == b - d) {
                start = d;
                end = i + mk;
                size_t t = d;
                while (t > 0 && s_space(s->t[t - 1])) t--;
                if (t >= 3 && s_lit(s, t - 3, "the") && s_wstart(s, t - 3)) start = t - 3;
            }
        }
        size_t p = s_skip_ws(s, i + mk);
        if (s_at(s, p) == ',') p = s_skip_ws(s, p + 1);
        if (!end) {
            /* After the month: "March 14", "March 14th, 2021", "March 2021". */
            size_t dk = s_day(s, p);
            size_t yk = s_year(s, p);
            if (yk == 4) {
                end = p + 4;
            } else if (dk) {
                end = p + dk;
            } else if (s_lit(s, p, "the ")) {
                size_t q = s_skip_ws(s, p + 4);
                size_t dk2 = s_day(s, q);
                if (dk2) end = q + dk2;
            }
        }
        if (!end) continue;
        /* Trailing year: ", 2021" / " 2021" / " '21". */
        size_t q = s_skip_ws(s, end);
        if (s_at(s, q) == ',') q = s_skip_ws(s, q + 1);
        size_t yk = s_year(s, q);
        if (yk && q > end) end = q + yk;
        s_add(s, DEID_DATE, start, end);
        i = end;
    }
}

/* ---------------------------------------------------------------- AGE_OVER_89 */

static void s_rule_age(s_scan_t *s)
{
    static const char *const after_direct[] = {"y/o", "y.o.", "y.o", "yo", "yr-old", "yrs-old",
                                               NULL};
    static const char *const year_words[] = {"years", "year", "yrs", "yr", "y", NULL};
    static const char *const age_ctx[] = {"aged", "age", "ages", NULL};
    static const char *const tens_words[] = {"ninety", "one hundred", "hundred", NULL};
    for (size_t i = 0; i < s->len; i++) {
        if (s_kw(s, i, "nonagenarian") || s_kw(s, i, "centenarian") ||
            s_kw(s, i, "supercentenarian")) {
            size_t k = s_kw(s, i, "nonagenarian") ? 12 : s_kw(s, i, "centenarian") ? 11 : 16;
            s_add(s, DEID_AGE_OVER_89, i, i + k);
            i += k;
            continue;
        }
        size_t num_a = 0, num_b = 0;
        if (s_digit(s->t[i]) && s_num_left_ok(s, i)) {
            size_t n = s_ndigits(s, i);
            long v = s_num(s, i, n);
            unsigned char nx = s_at(s, i + n);
            if (n >= 2 && n <= 3 && v >= 90 && v <= 130 &&
                (s_num_right_ok(s, i + n) || nx == 'y' || nx == 'Y')) { num_a = i; num_b = i + n; }
        } else {
            size_t k = s_kw_any(s, i, tens_words);
            if (k) {
                size_t e = i + k;
                /* "ninety-two", "ninety two" */
                static const char *const ones[] = {"one", "two", "three", "four", "five", "six",
                                                   "seven", "eight", "nine", NULL};
                size_t q = e;
                if (s_at(s, q) == '-' || s_at(s, q) == ' ') {
                    size_t ok = s_kw_any(s, q + 1, ones);
                    if (ok) e = q + 1 + ok;
                }
                num_a = i;
                num_b = e;
            }
        }
        if (num_b) {
            size_t p = num_b;
            int hit = 0;
            size_t q = p;
            if (s_at(s, q) == '-' || s_at(s, q) == ' ') q++;
            size_t k = 0;
            for (const char *const *w = after_direct; *w && !k; w++) {
                k = s_lit(s, q, *w);
                if (k && !s_wend(s, q + k) && (*w)[strlen(*w) - 1] != '.') k = 0;
            }
            if (k) hit = 1;
            else {
                size_t yk = 0;
                for (const char *const *w = year_words; *w && !yk; w++) {
                    yk = s_lit(s, q, *w);
                    if (yk && !s_wend(s, q + yk)) yk = 0;
                }
                if (yk) {
                    size_t r = q + yk;
                    if (s_at(s, r) == '-' || s_at(s, r) == ' ') {
                        if (s_lit(s, r + 1, "old") && s_wend(s, r + 4)) hit = 1;
                        else if (s_lit(s, r + 1, "of age")) hit = 1;
                    }
                }
            }
            if (!hit && s_digit(s->t[num_a])) {
                /* "age 95", "aged 90", "age: 92", "at the age of 93" */
                size_t w = num_a;
                while (w > 0 && (s_space(s->t[w - 1]) || s->t[w - 1] == ':' || s->t[w - 1] == '=')) w--;
                if (w >= 3 && s_lit(s, w - 2, "of")) {
                    size_t w2 = w - 2;
                    while (w2 > 0 && s_space(s->t[w2 - 1])) w2--;
                    if (w2 >= 3 && s_lit(s, w2 - 3, "age") && s_wstart(s, w2 - 3)) hit = 1;
                }
                for (const char *const *c = age_ctx; *c && !hit; c++) {
                    size_t L = strlen(*c);
                    if (w >= L && s_lit(s, w - L, *c) && s_wstart(s, w - L) && w - L < num_a) hit = 1;
                }
            }
            if (hit) {
                s_add(s, DEID_AGE_OVER_89, num_a, num_b);
                i = num_b;
            }
        }
    }
}

/* ---------------------------------------------------------------- MRN, ACCOUNT */

typedef struct {
    const char *kw;
    int strong; /* the keyword alone marks an identifier; weak ones need ':'/'#' or 6+ digits */
} s_idkw_t;

static const s_idkw_t s_mrn_kws[] = {
    {"medical record number", 1}, {"medical record no", 1}, {"medical record #", 1},
    {"medical rec #", 1}, {"med rec #", 1}, {"med rec no", 1}, {"med rec", 0},
    {"medical record", 0}, {"record number", 1}, {"record no", 1}, {"record #", 1},
    {"MRN", 1}, {"MR#", 1}, {"MR #", 1}, {"MR no", 1}, {"MR number", 1}, {"MRUN", 1},
    {"chart number", 1}, {"chart no", 1}, {"chart #", 1}, {"patient id", 1},
    {"patient identifier", 1}, {"patient number", 1}, {"pt id", 1}, {"hospital number", 1},
    {"hospital no", 1}, {"hospital #", 1}, {"unit number", 1}, {"unit no", 1},
    {"case number", 1}, {"case #", 1}, {"EMPI", 1}, {"UR number", 1}, {"URN", 1},
    {NULL, 0}};

static const s_idkw_t s_account_kws[] = {
    {"account number", 1}, {"account no", 1}, {"account #", 1}, {"acct number", 1},
    {"acct no", 1}, {"acct #", 1}, {"acct.", 0}, {"acct", 0}, {"acc #", 1}, {"acc no", 1},
    {"account", 0}, {"billing number", 1}, {"billing #", 1}, {"billing account", 1},
    {"bill #", 1}, {"invoice #", 1}, {"invoice number", 1}, {"encounter number", 1},
    {"encounter #", 1}, {"encounter id", 1}, {"visit number", 0}, {"visit #", 0},
    {"FIN", 0}, {"CSN", 1}, {"HAR", 0}, {"policy number", 1}, {"policy no", 1}, {"policy #", 1},
    {"member id", 1}, {"member number", 1}, {"member #", 1}, {"subscriber id", 1},
    {"subscriber number", 1}, {"insurance id", 1}, {"insurance number", 1},
    {"group number", 1}, {"group #", 1}, {"claim number", 1}, {"claim #", 1},
    {"health plan id", 1}, {"beneficiary number", 1}, {"medicare number", 1},
    {"medicaid number", 1}, {"medicaid id", 1}, {"medicare id", 1}, {"license number", 1},
    {"license no", 1}, {"license #", 1}, {"licence number", 1}, {"driver's license", 1},
    {"certificate number", 1}, {"certificate #", 1}, {"DEA number", 1}, {"DEA #", 1},
    {"DEA", 0}, {"NPI", 0}, {"serial number", 1}, {"serial no", 1}, {"serial #", 1},
    {"device id", 1}, {"plate number", 1}, {"license plate", 1}, {"VIN", 0},
    {NULL, 0}};

/* An identifier token after a keyword: letters, digits, '-', '/', with enough digits. */
static size_t s_id_token(const s_scan_t *s, size_t p, size_t *digits)
{
    size_t b = p;
    *digits = 0;
    while (b < s->len && (s_alnum(s->t[b]) || ((s->t[b] == '-' || s->t[b] == '/') &&
                                               s_alnum(s_at(s, b + 1))))) {
        if (s_digit(s->t[b])) (*digits)++;
        b++;
    }
    return b;
}

static void s_rule_ids(s_scan_t *s, const s_idkw_t *kws, deid_rule_t rule)
{
    for (size_t i = 0; i < s->len; i++) {
        if (!s_wstart(s, i) || !s_alpha(s->t[i])) continue;
        size_t k = 0;
        int strong = 0;
        for (const s_idkw_t *kw = kws; kw->kw && !k; kw++) {
            if (s_lc(s->t[i]) != s_lc((unsigned char)kw->kw[0])) continue;
            /* All-caps acronyms (MRN, DEA, NPI, FIN) must be written in capitals. */
            int acronym = 1;
            for (const char *c = kw->kw; *c; c++) if (s_lower((unsigned char)*c)) acronym = 0;
            size_t m = s_kw(s, i, kw->kw);
            if (!m && s_lit(s, i, kw->kw) && s_digit(s_at(s, i + strlen(kw->kw))) && acronym)
                m = strlen(kw->kw); /* "MRN1234567" */
            if (m && acronym) {
                for (size_t j = 0; j < m; j++)
                    if (s_lower(s->t[i + j])) m = 0;
            }
            if (m) { k = m; strong = kw->strong; }
        }
        if (!k) continue;
        size_t p = i + k;
        int marker = 0;
        for (;;) {
            size_t q = p;
            while (q < s->len && (s_space(s->t[q]) || s->t[q] == ':' || s->t[q] == '#' ||
                                  s->t[q] == '=' || s->t[q] == '.')) {
                if (s->t[q] == ':' || s->t[q] == '#' || s->t[q] == '=') marker = 1;
                q++;
            }
            size_t w = 0;
            if ((w = s_kw(s, q, "number")) || (w = s_kw(s, q, "no")) || (w = s_kw(s, q, "is")) ||
                (w = s_kw(s, q, "id"))) {
                marker = 1;
                p = q + w;
                continue;
            }
            p = q;
            break;
        }
        if (p - (i + k) > 24) continue;
        size_t digits;
        size_t b = s_id_token(s, p, &digits);
        if (b == p || digits < 4) continue;
        if (!strong && !marker && digits < 6) continue;
        s_add(s, rule, p, b);
        i = b;
    }
}

/* ---------------------------------------------------------------- ADDRESS, ZIP */

static const char *const s_street_suffixes[] = {
    "Street", "St.", "St", "Avenue", "Ave.", "Ave", "Av.", "Road", "Rd.", "Rd", "Boulevard",
    "Blvd.", "Blvd", "Lane", "Ln.", "Ln", "Drive", "Dr.", "Dr", "Court", "Ct.", "Ct", "Way",
    "Place", "Pl.", "Pl", "Terrace", "Ter.", "Circle", "Cir.", "Highway", "Hwy.", "Hwy",
    "Parkway", "Pkwy.", "Pkwy", "Square", "Sq.", "Trail", "Trl.", "Plaza", "Alley", "Row",
    "Crescent", "Pike", "Turnpike", "Expressway", "Freeway", NULL};

/* Dotted forms first: "N." must not match as "N" and stop at the period. */
static const char *const s_directions[] = {"N.", "S.", "E.", "W.", "N", "S", "E", "W", "NE",
                                           "NW", "SE", "SW", "North", "South", "East", "West",
                                           NULL};

/* Capitalised word at i ("Main", "O'Neil", "MLK"); returns its length or 0. */
static size_t s_capword(const s_scan_t *s, size_t i)
{
    if (!s_upper(s_at(s, i)) || !s_wstart(s, i)) return 0;
    size_t k = 1;
    while (i + k < s->len && (s_alpha(s->t[i + k]) ||
                              ((s->t[i + k] == '\'' || s->t[i + k] == '-') && s_alpha(s_at(s, i + k + 1)))))
        k++;
    return k;
}

/* Exact-case match of a word from list at i, ending at a word end (or its own '.'). */
static size_t s_exact_any(const s_scan_t *s, size_t i, const char *const *list)
{
    for (const char *const *w = list; *w; w++) {
        size_t L = strlen(*w);
        if (i + L <= s->len && memcmp(s->t + i, *w, L) == 0 &&
            ((*w)[L - 1] == '.' || s_wend(s, i + L)))
            return L;
    }
    return 0;
}

/* A street suffix at p: as listed ("Street", "St."), or in capitals ("STREET", "ST.") or
 * lower case ("street", "ave.") when it is a whole word of 4+ letters or a dotted
 * abbreviation -- "st", "dr", "way" and "row" are lower-case words, and "ST" (segment),
 * "CT" (scan), "DR" capitals in clinical text. */
static size_t s_street_suffix(const s_scan_t *s, size_t p)
{
    for (const char *const *w = s_street_suffixes; *w; w++) {
        size_t L = strlen(*w);
        if (!s_lit(s, p, *w) || !((*w)[L - 1] == '.' || s_wend(s, p + L))) continue;
        int exact = memcmp(s->t + p, *w, L) == 0, caps = 1, lower = 1;
        for (size_t j = 0; j < L; j++) {
            if (s_lower(s->t[p + j])) caps = 0;
            if (s_upper(s->t[p + j])) lower = 0;
        }
        if (exact || ((caps || lower) && (L >= 4 || (*w)[L - 1] == '.'))) return L;
    }
    return 0;
}

static int s_not_name_ex(const s_scan_t *s, size_t i, size_t k, int general_only);

/* A lower-case word that can be part of a street name ("elm" in "42 elm street"): not a
 * function word, unit or count noun, so "2 blocks down the road" and "took 2 pills on the
 * street" stay clean. Returns its length or 0. */
static size_t s_street_lowword(const s_scan_t *s, size_t p)
{
    static const char *const stop[] = {
        "the", "a", "an", "of", "on", "in", "at", "to", "by", "for", "from", "with", "and",
        "or", "down", "up", "across", "along", "near", "off", "over", "past", "per", "into",
        "onto", "around", "behind", "outside", "inside", "is", "was", "are", "were", "be",
        "his", "her", "their", "our", "my", "your", "this", "that", "same", "old", "new",
        "block", "blocks", "mile", "miles", "feet", "foot", "ft", "yards", "yard", "meters",
        "km", "times", "time", "days", "day", "weeks", "week", "months", "month", "years",
        "year", "hours", "hour", "minutes", "min", "mg", "ml", "mcg", "mm", "cm", "kg", "lb",
        "lbs", "cc", "meq", "mmol", "mmhg", "ms", "sec", "units", "unit", "tabs",
        "tablets", "tablet", "pills", "pill", "caps", "capsules", "doses", "dose", "steps",
        "flights", "stairs", "floors", "floor", "houses", "doors", "cars", "people",
        "patients", "children", "kids", "dogs", "cats", "cigarettes", "packs", "drinks",
        "beers", "glasses", "cups", "cans", "episodes", "falls", "lanes", "way", "ways", NULL};
    if (!s_wstart(s, p) || !s_lower(s_at(s, p))) return 0;
    size_t k = 0;
    while (p + k < s->len && (s_lower(s->t[p + k]) || s->t[p + k] >= 0x80)) k++;
    if (k < 2 || !s_wend(s, p + k)) return 0;
    for (const char *const *w = stop; *w; w++)
        if (strlen(*w) == k && memcmp(s->t + p, *w, k) == 0) return 0;
    if (s_not_name_ex(s, p, k, 1)) return 0;
    return k;
}

static void s_rule_street(s_scan_t *s)
{
    for (size_t i = 0; i < s->len; i++) {
        if (!s_digit(s->t[i]) || !s_wstart(s, i) || !s_num_left_ok(s, i)) continue;
        size_t n = s_ndigits(s, i);
        if (n > 6) { i += n; continue; }
        size_t p = i + n;
        if (s_upper(s_at(s, p)) && !s_alnum(s_at(s, p + 1))) p++; /* "12B Elm St" */
        if (s_at(s, p) == '-' && s_ndigits(s, p + 1)) p += 1 + s_ndigits(s, p + 1); /* 12-14 */
        if (!s_space(s_at(s, p))) continue;
        p = s_skip_ws(s, p);
        size_t words = 0, end = 0;
        while (words < 5) {
            if (words > 0) {
                size_t sk = s_street_suffix(s, p);
                if (sk) { end = p + sk; break; }
            }
            size_t d = s_exact_any(s, p, s_directions);
            size_t k = d ? d : s_capword(s, p);
            if (!k && words < 3) k = s_street_lowword(s, p);
            if (!k) {
                /* Numbered streets: "5th Avenue", "42nd Street" */
                size_t nd = s_ndigits(s, p);
                if (nd && nd <= 3 && (s_lit(s, p + nd, "st") || s_lit(s, p + nd, "nd") ||
                                      s_lit(s, p + nd, "rd") || s_lit(s, p + nd, "th")) &&
                    s_wend(s, p + nd + 2))
                    k = nd + 2;
            }
            if (!k) break;
            words++;
            p += k;
            if (!s_space(s_at(s, p))) break;
            p = s_skip_ws(s, p);
        }
        if (!end) continue;
        s_add(s, DEID_ADDRESS, i, end);
        i = end;
    }
    /* Unit designators and post office boxes. */
    static const char *const units[] = {"Apartment", "Apt.", "Apt", "Suite", "Ste.", "Ste",
                                        "Bldg.", "Bldg", "Room #", "Unit #", NULL};
    static const char *const boxes[] = {"P.O. Box", "PO Box", "P O Box", "Post Office Box",
                                        "P.O.Box", NULL};
    for (size_t i = 0; i < s->len; i++) {
        if (!s_wstart(s, i)) continue;
        size_t k = s_exact_any(s, i, units);
        int box = 0;
        if (!k) {
            for (const char *const *b = boxes; *b && !k; b++) k = s_lit(s, i, *b);
            box = k > 0;
        }
        if (!k) continue;
        if (!box) {
            /* "Operating Suite #3" is a room, not an address. */
            size_t w = i;
            while (w > 0 && s_space(s->t[w - 1])) w--;
            size_t ws = w;
            while (ws > 0 && s_alpha(s->t[ws - 1])) ws--;
            if (w > ws && (s_lit(s, ws, "operating") || s_lit(s, ws, "operative") ||
                           s_lit(s, ws, "procedure") || s_lit(s, ws, "endoscopy") ||
                           s_lit(s, ws, "surgical") || s_lit(s, ws, "recovery")))
                continue;
        }
        size_t p = s_skip_ws(s, i + k);
        if (s_at(s, p) == '#') p = s_skip_ws(s, p + 1);
        size_t digits;
        size_t b = s_id_token(s, p, &digits);
        if (b == p || digits == 0 || b - p > 8) continue;
        s_add(s, DEID_ADDRESS, i, b);
        i = b;
    }
}

static const char *const s_states[] = {
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN",
    "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH",
    "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT",
    "VT", "VA", "WA", "WV", "WI", "WY", "PR", "Alabama", "Alaska", "Arizona", "Arkansas",
    "California", "Colorado", "Connecticut", "Delaware", "Florida", "Georgia", "Hawaii",
    "Idaho", "Illinois", "Indiana", "Iowa", "Kansas", "Kentucky", "Louisiana", "Maine",
    "Maryland", "Massachusetts", "Michigan", "Minnesota", "Mississippi", "Missouri", "Montana",
    "Nebraska", "Nevada", "New Hampshire", "New Jersey", "New Mexico", "New York",
    "North Carolina", "North Dakota", "Ohio", "Oklahoma", "Oregon", "Pennsylvania",
    "Rhode Island", "South Carolina", "South Dakota", "Tennessee", "Texas", "Utah", "Vermont",
    "Virginia", "Washington", "West Virginia", "Wisconsin", "Wyoming", NULL};

/* 5 or 5+4 digit ZIP at p; returns its length or 0. */
static size_t s_zip_digits(const s_scan_t *s, size_t p)
{
    if (s_ndigits(s, p) != 5) return 0;
    if (s_at(s, p + 5) == '-' && s_ndigits(s, p + 6) == 4 && s_num_right_ok(s, p + 10)) return 10;
    return s_num_right_ok(s, p + 5) ? 5 : 0;
}

/* A state written in lower case ("boston ma 02115", "austin, texas 78701"); the prepositions
 * and words that are also state codes ("in", "or", "me", "oh", "hi", "ok", "id") are not
 * taken in lower case. Returns its length or 0. */
static size_t s_state_lower(const s_scan_t *s, size_t i)
{
    static const char *const words[] = {"in", "or", "me", "oh", "hi", "ok", "id", NULL};
    for (const char *const *w = s_states; *w; w++) {
        size_t L = strlen(*w);
        if (!s_lit(s, i, *w) || !s_wend(s, i + L)) continue;
        int lower = 1;
        for (size_t j = 0; j < L; j++) if (s_upper(s->t[i + j])) lower = 0;
        if (!lower) continue;
        for (const char *const *x = words; *x; x++) if (strlen(*x) == L && s_lit(s, i, *x)) return 0;
        return L;
    }
    return 0;
}

static void s_rule_zip(s_scan_t *s)
{
    for (size_t i = 0; i < s->len; i++) {
        if (!s_wstart(s, i) || !s_alpha(s->t[i])) continue;
        size_t k = s_upper(s->t[i]) ? s_exact_any(s, i, s_states) : 0;
        int lower = 0;
        if (!k && s_lower(s->t[i])) lower = (k = s_state_lower(s, i)) > 0;
        if (!k) continue;
        size_t p = i + k;
        if (!s_space(s_at(s, p))) continue;
        p = s_skip_ws(s, p);
        size_t z = s_zip_digits(s, p);
        if (!z || !s_num_left_ok(s, p)) continue;
        /* The state must follow a place: "Springfield, IL" or "Springfield IL". */
        size_t b = i;
        while (b > 0 && s_space(s->t[b - 1])) b--;
        int comma = b > 0 && s->t[b - 1] == ',';
        if (comma) { b--; while (b > 0 && s_space(s->t[b - 1])) b--; }
        size_t c = b;
        while (c > 0 && (s_alpha(s->t[c - 1]) || s->t[c - 1] == '.' || s->t[c - 1] == '\'')) c--;
        if (lower) {
            /* In lower case the place needs the comma of an address: "boston, ma 02115" or
             * "42 elm street, boston ma 02115" -- not "heparin in 10000 units". */
            size_t d = c;
            while (d > 0 && s_space(s->t[d - 1])) d--;
            if (c == b || !(comma || (d > 0 && s->t[d - 1] == ','))) continue;
            s_add(s, DEID_ADDRESS, c, i + k);
            s_add(s, DEID_ZIP, p, p + z);
            i = p + z;
            continue;
        }
        /* Up to two more capitalised words of the city ("Salt Lake City"). */
        size_t city = c;
        int capital = c < b && s_upper(s->t[c]);
        for (int extra = 0; extra < 2 && capital; extra++) {
            size_t d = city;
            while (d > 0 && s_space(s->t[d - 1])) d--;
            if (d == city || d == 0) break;
            size_t e = d;
            while (e > 0 && s_alpha(s->t[e - 1])) e--;
            if (e < d && s_upper(s->t[e])) city = e;
            else break;
        }
        if (!capital && !comma) continue;
        if (capital) s_add(s, DEID_ADDRESS, city, i + k);
        s_add(s, DEID_ZIP, p, p + z);
        i = p + z;
    }
    static const char *const kws[] = {"zip code", "zipcode", "zip", "postal code", "postcode",
                                      NULL};
    for (size_t i = 0; i < s->len; i++) {
        size_t k = s_kw_any(s, i, kws);
        if (!k) continue;
        size_t p = i + k;
        while (p < s->len && (s_space(s->t[p]) || s->t[p] == ':' || s->t[p] == '#')) p++;
        if (s_kw(s, p, "is")) p = s_skip_ws(s, p + 2);
        size_t z = s_zip_digits(s, p);
        if (z) { s_add(s, DEID_ZIP, p, p + z); i = p + z; }
    }
}

/* "lives in Springfield", "resides in Lake Forest": a place smaller than a state. */
static void s_rule_residence(s_scan_t *s)
{
    static const char *const verbs[] = {"lives", "lived", "living", "resides", "resided",
                                        "residing", "reside", "native", "grew up", NULL};
    static const char *const not_places[] = {"A", "An", "The", "Assisted", "Nursing", "Group",
                                             "Skilled", "Long", "Home", "Independent", "Senior",
                                             "Supportive", "Memory", "Section", "Room", "Bed",
                                             "ICU", "Rehab", "Rehabilitation", "Hospice",
                                             "Residential", "Foster", "Shelter", "Her", "His",
                                             "Their", "Our", "This", "That", "Care", NULL};
    for (size_t i = 0; i < s->len; i++) {
        size_t k = s_kw_any(s, i, verbs);
        if (!k) continue;
        size_t p = s_skip_ws(s, i + k);
        size_t prep = s_kw(s, p, "in");
        if (!prep) prep = s_kw(s, p, "of");
        if (!prep) continue;
        p = s_skip_ws(s, p + prep);
        size_t end = 0, words = 0;
        while (words < 3) {
            size_t w = s_capword(s, p);
            if (!w || w < 2 || !s_lower(s_at(s, p + 1))) break; /* "LIVING IN HOUSEHOLD" */
            if (s_exact_any(s, p, not_places)) break;
            if (s_exact_any(s, p, s_states) && words == 0) break; /* a state is allowed */
            end = p + w;
            words++;
            size_t q = p + w;
            if (!s_space(s_at(s, q)) || !s_upper(s_at(s, q + 1))) break;
            p = q + 1;
        }
        if (end) { s_add(s, DEID_ADDRESS, s_skip_ws(s, s_skip_ws(s, i + k) + prep), end); i = end; }
    }
}

/* ---------------------------------------------------------------- NAME */

/* Capitalised words that follow a name context without being names: sentence words,
 * section headers, medical terms and eponyms. Compared case-insensitively. */
static const char *const s_not_names[] = {
    /* function words and frequent sentence starts */
    "a", "an", "the", "and", "or", "but", "if", "of", "in", "on", "at", "to", "for", "with",
    "without", "from", "by", "as", "is", "was", "were", "are", "be", "been", "has", "had",
    "have", "he", "she", "they", "it", "his", "her", "their", "this", "that", "these", "those",
    "who", "which", "what", "when", "where", "how", "why", "not", "no", "yes", "none", "also",
    "then", "now", "today", "yesterday", "tomorrow", "will", "would", "should", "can", "could",
    "may", "might", "must", "did", "does", "do", "i", "we", "you", "me", "my", "our", "your",
    "there", "here", "all", "any", "some", "each", "other", "another", "same", "new", "old",
    "first", "last", "next", "previous", "prior", "current", "recent", "see", "per", "please",
    "unknown", "n/a", "na", "not", "denies", "reports", "states", "presents", "presented",
    "complains", "notes", "noted", "admits", "underwent", "returns", "returned", "came", "comes",
    "seen", "evaluated", "examined", "referred", "transferred", "discharged", "admitted",
    "history", "hx", "information", "info", "education", "instructions", "instruction",
    "identification", "name", "names", "id", "number", "care", "safety", "portal", "plan",
    "controlled", "analgesia", "assessment", "summary", "note", "notes", "visit", "office",
    "appointment", "orders", "order", "consult", "consultation", "report", "results",
    "status", "complaint", "complaints", "problem", "problems", "list", "medications",
    "medication", "meds", "allergies", "allergy", "vitals", "vital", "signs", "exam",
    "examination", "review", "systems", "ros", "physical", "impression", "diagnosis",
    "diagnoses", "procedure", "procedures", "findings", "labs", "lab", "laboratory",
    "imaging", "radiology", "pathology", "follow", "followup", "follow-up", "return",
    "disposition", "signature", "signed", "attending", "resident", "fellow", "nurse", "staff",
    "physician", "doctor", "surgeon", "provider", "team", "service", "department", "unit",
    "clinic", "hospital", "center", "centre", "medical", "health", "emergency", "room",
    "general", "internal", "medicine", "family", "primary", "on-call", "call", "covering",
    "male", "female", "man", "woman", "boy", "girl", "child", "infant", "baby", "adult",
    "patient", "pt", "patients", "mother", "father", "husband", "wife", "son", "daughter",
    "brother", "sister", "spouse", "partner", "friend", "caregiver", "guardian", "himself",
    "herself", "themselves", "both", "sitting", "lying", "standing", "alert", "awake",
    "oriented", "stable", "unstable", "well", "ill", "acute", "chronic", "mild", "moderate",
    "severe", "normal", "abnormal", "positive", "negative", "left", "right", "bilateral",
    "upper", "lower", "anterior", "posterior", "medial", "lateral", "proximal", "distal",
    "total", "partial", "diet", "activity", "code", "full", "dnr", "dni", "consent",
    "informed", "anesthesia", "general", "local", "spinal", "regional", "mac", "sedation",
    "preoperative", "postoperative", "operative", "pre-op", "post-op", "indication",
    "indications", "technique", "description", "specimen", "specimens", "drains", "drain",
    "complications", "ebl", "estimated", "blood", "loss", "fluids", "urine", "output",
    "intake", "tolerated", "condition", "good", "fair", "poor", "critical", "guarded",
    "subjective", "objective", "chief", "present", "illness", "past", "social", "surgical",
    "obstetric", "gynecologic", "developmental", "immunizations", "hpi", "pmh", "psh",
    "fh", "sh", "a/p", "assessment/plan", "heent", "neck", "chest", "lungs", "heart",
    "cardiovascular", "abdomen", "extremities", "neuro", "neurologic", "neurological",
    "skin", "psych", "psychiatric", "musculoskeletal", "genitourinary", "gu", "gi",
    "respiratory", "constitutional", "eyes", "ears", "nose", "throat", "mouth",
    "lymphatic", "hematologic", "endocrine", "mg", "ml", "iv", "po", "prn", "bid", "tid",
    "qid", "daily", "weekly", "monthly", "once", "twice", "mr", "mrs", "ms", "dr",
    "active", "demographics", "profile", "preferences", "goals", "position", "identity",
    "living", "deceased", "alive", "died", "passed", "healthy", "cardiology", "pulmonology",
    "gastroenterology", "neurology", "orthopedics", "orthopaedics", "endocrinology",
    "nephrology", "dermatology", "oncology", "hematology", "urology", "surgery", "pediatrics",
    "obstetrics", "gynecology", "psychiatry", "rheumatology", "ophthalmology", "otolaryngology",
    "ent", "anesthesiology", "podiatry", "infectious", "diseases", "disease", "associates",
    "group", "practice", "services", "hospitalist", "hospitalists", "intensivist",
    "intensivists", "cancer", "type",
    "medicare", "medicaid", "english", "spanish", "caucasian", "african", "american",
    "hispanic", "asian", "latino", "christian", "muslim", "jewish", "catholic", "er", "ed",
    "icu", "or", "pacu", "ccu", "nicu", "picu", "ct", "mri", "ekg", "ecg", "echo", "cxr",
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "january", "february", "march", "april", "june", "july", "august", "september",
    "october", "november", "december", "ok", "okay", "thank", "thanks", "sincerely",
    /* eponyms and capitalised medical words */
    "crohn", "crohn's", "parkinson", "parkinson's", "hodgkin", "hodgkin's", "non-hodgkin",
    "apgar", "glasgow", "babinski", "foley", "alzheimer", "alzheimer's", "addison",
    "addison's", "cushing", "cushing's", "graves", "graves'", "hashimoto", "hashimoto's",
    "bell", "bell's", "raynaud", "raynaud's", "kawasaki", "guillain", "guillain-barre",
    "barre", "huntington", "huntington's", "down", "tourette", "wilson", "wilson's",
    "marfan", "sjogren", "sjogren's", "meniere", "meniere's", "wernicke", "korsakoff",
    "reiter", "kaposi", "kaposi's", "ewing", "ewing's", "wilms", "burkitt", "barrett",
    "barrett's", "paget", "paget's", "bowen", "dupuytren", "osgood", "schlatter", "baker",
    "baker's", "colles", "colles'", "bennett", "achilles", "murphy", "murphy's", "mcburney",
    "mcburney's", "homans", "homans'", "kernig", "brudzinski", "romberg", "trendelenburg",
    "allen", "tinel", "tinel's", "phalen", "phalen's", "lachman", "mcmurray", "hoffmann",
    "weber", "rinne", "snellen", "gram", "papanicolaou", "pap", "swan-ganz", "hickman",
    "whipple", "nissen", "roux-en-y", "hartmann", "billroth", "heimlich", "valsalva",
    "doppler", "holter", "epley", "dix-hallpike", "lyme", "ebola", "zika", "epstein-barr",
    "kussmaul", "cheyne-stokes", "virchow", "horner", "horner's", "bouchard", "heberden",
    "charcot", "charcot-marie-tooth", "tay-sachs", "gaucher", "fabry", "pompe", "turner",
    "klinefelter", "noonan", "prader-willi", "angelman", "rett", "asperger", "asperger's",
    "creutzfeldt-jakob", "lou", "gehrig", "gehrig's", "stevens-johnson", "henoch-schonlein",
    "wegener", "takayasu", "behcet", "still's", "felty", "sezary", "waldenstrom", "zollinger",
    "ellison", "mallory-weiss", "boerhaave", "zenker", "schatzki", "meckel", "hirschsprung",
    "wolff-parkinson-white", "brugada", "mobitz", "wenckebach", "kearns-sayre", "ludwig",
    "bartholin", "skene", "fallopian", "eustachian", "hunter", "hurler", "tensilon", "tylenol",
    "coumadin", "lasix", "lipitor", "zoloft", "prozac", "norco", "percocet", "vicodin",
    "ativan", "xanax", "keflex", "cipro", "bactrim", "zithromax", "flagyl", "synthroid",
    "advil", "motrin", "aleve", "aspirin", "heparin", "lovenox", "eliquis", "xarelto",
    "plavix", "glucophage", "lantus", "humalog", "novolog", "ventolin", "albuterol",
    NULL};

/* general_only: compare with the general words only, not the eponyms and drug names that
 * follow "crohn" in the list. A name's later tokens and signature names use it, because
 * eponyms are common surnames too ("Dr. John Murphy", "Ann Wilson, MD"). */
static int s_not_name_ex(const s_scan_t *s, size_t i, size_t k, int general_only)
{
    /* Compare without a possessive 's so that "Crohn's" matches "crohn". */
    size_t kk = k;
    if (kk > 2 && (s->t[i + kk - 1] == 's' || s->t[i + kk - 1] == 'S') && s->t[i + kk - 2] == '\'')
        kk -= 2;
    for (const char *const *w = s_not_names; *w; w++) {
        if (general_only && strcmp(*w, "crohn") == 0) break;
        size_t L = strlen(*w);
        if ((L == k || L == kk) && s_lit(s, i, *w)) return 1;
    }
    return 0;
}


/* A name token at i: "Smith", "O'Brien", "McDonald", "Smith-Jones", "José", an initial
 * "J." or (when caps_ok) an all-capitals "SMITH". Returns its length or 0. */
static size_t s_name_token(const s_scan_t *s, size_t i, int caps_ok)
{
    if (!s_wstart(s, i) || !s_upper(s_at(s, i))) return 0;
    if (!s_alpha(s_at(s, i + 1)) && s_at(s, i + 1) == '.') return 2; /* initial */
    size_t k = 1;
    int lower = 0;
    while (i + k < s->len) {
        unsigned char c = s->t[i + k];
        if (s_alpha(c)) { if (s_lower(c) || c >= 0x80) lower = 1; k++; continue; }
        if ((c == '\'' || c == '-') && s_alpha(s_at(s, i + k + 1))) { k++; continue; }
        break;
    }
    if (k < 2 || s_digit(s_at(s, i + k))) return 0;
    if (!lower && !caps_ok) return 0;
    return k;
}

/* Lower-case surname particles ("van der Berg", "de la Cruz", "bin Said") at i, with the
 * space after them; returns that length or 0. A particle only counts when a name token
 * follows it (the caller checks). */
static size_t s_particle(const s_scan_t *s, size_t i)
{
    static const char *const particles[] = {"van", "von", "der", "den", "de", "del", "della",
                                            "di", "da", "du", "dos", "das", "la", "le", "ten",
                                            "ter", "bin", "ibn", "al", "el", "st.", NULL};
    if (!s_wstart(s, i) || !s_lower(s_at(s, i))) return 0;
    for (const char *const *w = particles; *w; w++) {
        size_t L = strlen(*w);
        if (i + L < s->len && memcmp(s->t + i, *w, L) == 0 && s_space(s->t[i + L]))
            return L + 1;
    }
    return 0;
}

/* Skips particles at p when a name token follows them; returns where the token starts. */
static size_t s_skip_particles(const s_scan_t *s, size_t p, int caps_ok)
{
    size_t q = p;
    for (int n = 0; n < 3; n++) {
        size_t k = s_particle(s, q);
        if (!k) break;
        q += k;
    }
    return q != p && s_name_token(s, q, caps_ok) ? q : p;
}

/* A sequence of 1-4 name tokens separated by single spaces (or a line break), surname
 * particles between or before them included. check_first: 1 = the first token must not be
 * a known non-name word or eponym, 2 = not a general word (eponyms are surnames after a
 * title: "Doctor Wilson"), 0 = no check. A later general word ends the sequence. Returns
 * the end or 0. */
static size_t s_name_seq(const s_scan_t *s, size_t p, int caps_ok, int check_first, int *ntok)
{
    size_t end = 0;
    int tokens = 0, full = 0;
    while (tokens < 4) {
        p = s_skip_particles(s, p, caps_ok);
        size_t k = s_name_token(s, p, caps_ok);
        if (!k) break;
        int initial = k == 2 && s->t[p + 1] == '.';
        if (!initial && tokens == 0 && check_first && s_not_name_ex(s, p, k, check_first == 2))
            break;
        if (!initial && tokens > 0 && s_not_name_ex(s, p, k, 1)) break;
        tokens++;
        if (!initial) full = 1;
        end = p + k;
        size_t q = end;
        if (!s_space(s_at(s, q))) break;
        if (!s_upper(s_at(s, q + 1)) && s_skip_particles(s, q + 1, caps_ok) == q + 1) break;
        p = q + 1;
    }
    if (ntok) *ntok = tokens;
    if (!full) return 0;
    /* A trailing possessive "'s" stays out of the span. */
    if (end >= 2 && s->t[end - 2] == '\'' && (s->t[end - 1] == 's')) end -= 2;
    return end;
}

static void s_rule_name(s_scan_t *s)
{
    /* Titles: exact case so that "MS" (multiple sclerosis) and "dr" inside words do not
     * count; the next word must look like a name ("Dr. visit" does not). */
    static const char *const titles[] = {"Dr.", "Dr", "DR.", "DR", "Doctor", "doctor", "Mr.",
                                         "Mr", "MR.", "MR", "Mrs.", "Mrs", "MRS.", "MRS", "Ms.",
                                         "Ms", "Miss", "MISS",
                                         "Mx.", "Prof.", "Professor", "Sr.", "Sister", "Nurse",
                                         "Rev.", "Father", NULL};
    /* Case-insensitive forms: dotted abbreviations and whole words only, so that "MS"
     * (multiple sclerosis) and "dr" or "mr" inside abbreviations never count; not "ms."
     * either, which ends "46 ms." (milliseconds) before a sentence. */
    static const char *const titles_any_case[] = {"doctor", "professor", "mrs.", "mr.", "dr.",
                                                  "mx.", "prof.", NULL};
    static const char *const after_title_not[] = {"Visit", "Visits", "Office", "Appointment",
                                                  "Note", "Notes", "Orders", "Order", "Appt",
                                                  "Consult", NULL};
    static const char *const patient_kw[] = {"patient", "pt.", "pt", NULL};
    static const char *const named_kw[] = {"named", "name is", "called", "by the name of",
                                           "known as", "goes by", NULL};
    static const char *const labels[] = {
        "patient name", "pt name", "name of patient", "full name", "first name", "last name",
        "name", "patient", "signed by", "signed", "signature", "electronically signed by",
        "dictated by", "transcribed by", "reviewed by", "authenticated by", "confirmed by",
        "performed by", "referred by", "seen by", "attending physician", "attending",
        "referring physician", "referring provider", "referring", "primary care physician",
        "physician", "provider", "pcp", "surgeon", "assistant", "assistant surgeon",
        "anesthesiologist", "resident", "fellow", "contact", "emergency contact",
        "next of kin", "guardian", "interpreter", "witness", "author", "dictator",
        "cosigner", "cosigned by", "nurse", NULL};
    static const char *const relations[] = {"husband", "wife", "son", "daughter", "mother",
                                            "father", "brother", "sister", "spouse", "partner",
                                            "boyfriend", "girlfriend", "fiance", "fiancee",
                                            "friend", "caregiver", "niece", "nephew", "grandson",
                                            "granddaughter", "aunt", "uncle", "cousin",
                                            "neighbor", "roommate", NULL};
    static const char *const closings[] = {"sincerely", "regards", "best regards",
                                           "kind regards", "respectfully", "thank you", NULL};
    static const char *const credentials[] = {"M.D.", "MD", "D.O.", "DO", "RN", "R.N.", "NP",
                                              "PA-C", "PA", "PhD", "Ph.D.", "MBBS", "FACS",
                                              "FACP", "FACC", "DPM", "DDS", "DMD", "PharmD",
                                              "LPN", "CNM", "CRNA", "MSN", "APRN", "LCSW", NULL};
    static const char *const not_name_before_label[] = {"drug", "medication", "med", "brand",
                                                        "generic", "product", "test", "study",
                                                        "procedure", "device", "file", "user",
                                                        "trade", "chemical", "disease", "model",
                                                        "program", "company", "facility",
                                                        "hospital", "clinic", "practice", NULL};
    for (size_t i = 0; i < s->len; i++) {
        if (!s_wstart(s, i) || !s_alpha(s->t[i])) continue;
        size_t k;
        /* 1. Titles, also in other cases ("dr. Smith", "DR SMITH", "MRS. JONES"): a
         * lower-case title is checked strictly below. */
        if ((k = s_exact_any(s, i, titles)) || (k = s_kw_any(s, i, titles_any_case))) {
            size_t p = i + k;
            if (s_space(s_at(s, p))) {
                p = s_skip_ws(s, p);
                if (!s_exact_any(s, p, after_title_not)) {
                    /* Lower-case titles ("doctor") and clinical ones ("Nurse", "Sister",
                     * "Father") need a name that is not a known word. */
                    int strict = !s_upper(s->t[i]) || s_lit(s, i, "Nurse") || s_lit(s, i, "Sister") ||
                                 s_lit(s, i, "Father") || s_lit(s, i, "Doctor");
                    size_t e = s_name_seq(s, p, 1, strict ? 2 : 0, NULL);
                    if (e) { s_add(s, DEID_NAME, p, e); i = e; continue; }
                }
            }
        }
        /* 2. "patient Jane Roe", "pt. named X" */
        if ((k = s_kw_any(s, i, patient_kw))) {
            size_t p = s_skip_ws(s, i + k);
            if (s_at(s, p) == ',') p = s_skip_ws(s, p + 1);
            size_t nk = s_kw_any(s, p, named_kw);
            int named = nk > 0;
            if (named) {
                p = s_skip_ws(s, p + nk);
                if (s_at(s, p) == ':') p = s_skip_ws(s, p + 1);
            }
            if (s_at(s, p) == ':' && !named) {
                p = s_skip_ws(s, p + 1);
                named = 1;
            }
            int ntok = 0;
            size_t e = s_name_seq(s, p, named, 1, &ntok);
            /* "Patient Education", "Patient Active Problem List" are headings: without
             * "named" or a colon, one capitalised word is a name only when a verb or a
             * comma follows it ("patient Jane was seen", "patient Roe, 45"). */
            if (e && !named && ntok == 1) {
                static const char *const followers[] = {
                    "is", "was", "has", "had", "presents", "presented", "reports", "reported",
                    "states", "stated", "who", "denies", "denied", "returns", "returned",
                    "arrived", "comes", "came", "complains", "underwent", "lives", "will",
                    "and", "is a", NULL};
                size_t q = e;
                int ok = s_at(s, q) == ',' || s_at(s, q) == '\'';
                if (!ok && s_space(s_at(s, q))) ok = s_kw_any(s, s_skip_ws(s, q), followers) > 0;
                if (!ok) e = 0;
            }
            if (e) { s_add(s, DEID_NAME, p, e); i = e; continue; }
        }
        /* 3. Labels: "Name: X", "Signed: X", "Surgeon: X" (colon required) and
         * "electronically signed by X" (no colon needed after "by"). */
        if ((k = s_kw_any(s, i, labels))) {
            size_t p = s_skip_ws(s, i + k);
            int by = k >= 2 && s_lit(s, i + k - 2, "by");
            int colon = s_at(s, p) == ':';
            if (colon) p++;
            if (colon || by) {
                /* "Drug Name:" names a drug, not a person. */
                size_t w = i;
                while (w > 0 && s_space(s->t[w - 1])) w--;
                size_t ws = w;
                while (ws > 0 && s_alpha(s->t[ws - 1])) ws--;
                int skip = 0;
                for (const char *const *x = not_name_before_label; *x && !skip; x++)
                    if (strlen(*x) == w - ws && s_lit(s, ws, *x)) skip = 1;
                /* The name may sit on the next line of a form ("Name:\n  Jane Roe"). */
                while (p < s->len && (s_space(s->t[p]) || s->t[p] == '\n' || s->t[p] == '\r' ||
                                      s->t[p] == ','))
                    p++;
                size_t tk = s_exact_any(s, p, titles);
                if (tk) p = s_skip_ws(s, p + tk);
                int ntok = 0;
                size_t e = skip ? 0 : s_name_seq(s, p, 1, 2, &ntok);
                /* "ANESTHESIOLOGIST:, Monitored anesthesia care": one capitalised word that
                 * a lower-case word follows starts a sentence, it is not a name. */
                if (e && ntok == 1 && s_space(s_at(s, e)) && s_lower(s_at(s, s_skip_ws(s, e))))
                    e = 0;
                /* Forms write "Name: Roe, Jane": the given name after the comma too. */
                if (e && s_at(s, e) == ',') {
                    size_t q = s_skip_ws(s, e + 1);
                    if (!s_exact_any(s, q, credentials)) {
                        size_t e2 = s_name_seq(s, q, 0, 1, NULL);
                        if (e2) e = e2;
                    }
                }
                if (e) { s_add(s, DEID_NAME, p, e); i = e; continue; }
            }
        }
        /* 4. Relations: "her husband John", "daughter, Mary Smith" */
        if ((k = s_kw_any(s, i, relations))) {
            size_t p = s_skip_ws(s, i + k);
            if (s_at(s, p) == ',') p = s_skip_ws(s, p + 1);
            size_t nk = s_kw_any(s, p, named_kw);
            if (nk) p = s_skip_ws(s, p + nk);
            size_t e = s_name_seq(s, p, 0, 1, NULL);
            if (e) { s_add(s, DEID_NAME, p, e); i = e; continue; }
        }
        /* 5. Closings: "Sincerely,\nJane Roe" */
        if ((k = s_kw_any(s, i, closings))) {
            size_t p = i + k;
            if (s_at(s, p) == ',') p++;
            while (p < s->len && (s_space(s->t[p]) || s->t[p] == '\n' || s->t[p] == '\r')) p++;
            size_t tk = s_exact_any(s, p, titles);
            if (tk) p = s_skip_ws(s, p + tk);
            size_t e = s_name_seq(s, p, 1, 2, NULL);
            if (e) { s_add(s, DEID_NAME, p, e); i = e; continue; }
        }
    }
    /* 6. Signatures: "Jane A. Roe, MD", "John Smith MD": walk back from the credential
     * over title-case name tokens and initials. */
    for (size_t i = 1; i < s->len; i++) {
        if (!s_wstart(s, i) || !s_upper(s->t[i])) continue;
        if (!s_exact_any(s, i, credentials)) continue;
        size_t b = i;
        while (b > 0 && s_space(s->t[b - 1])) b--;
        if (b == i) continue; /* "MD" glued to a word */
        int comma = b > 0 && s->t[b - 1] == ',';
        if (comma) b--;
        size_t start = b, e = b;
        int tokens = 0, full = 0;
        while (tokens < 4 && e > 0) {
            size_t a = e;
            while (a > 0 && (s_alpha(s->t[a - 1]) || s->t[a - 1] == '\'' ||
                             s->t[a - 1] == '-' || s->t[a - 1] == '.'))
                a--;
            if (a == e) break;
            size_t k = s_name_token(s, a, 0);
            if (k == 0 || k != e - a) break;
            int initial = k == 2 && s->t[a + 1] == '.';
            if (!initial && s_not_name_ex(s, a, k, 1)) break;
            tokens++;
            if (!initial) full++;
            start = a;
            if (a < 2 || s->t[a - 1] != ' ' || !(s_alpha(s->t[a - 2]) || s->t[a - 2] == '.')) break;
            e = a - 1;
        }
        /* Without a comma ("John Smith MD") demand two tokens. */
        if (!full || (!comma && tokens < 2)) continue;
        size_t end = b;
        if (end >= 2 && s->t[end - 2] == '\'' && s->t[end - 1] == 's') end -= 2;
        if (end > start) s_add(s, DEID_NAME, start, end);
    }
}

/* ---------------------------------------------------------------- normalisation */

/* The matchers read ASCII punctuation, spaces and digits. Real notes (and exports from
 * word processors, PDFs and EHR viewers) write the same things with other code points: a
 * no-break or thin space in "Dr. Smith", an en dash or non-breaking hyphen in
 * "555-123-4567", a line break between title and name, fullwidth digits, a zero-width space
 * inside a word, a curly apostrophe in "O'Brien". Each of these alone used to hide PHI from
 * every rule. So the text is first rewritten into a normal form -- each such character
 * becomes its ASCII counterpart or disappears -- and the rules run on that, while a map
 * from every normalised byte back to the original bytes it came from lets spans (and so
 * redaction) cover exactly the right original bytes. Only what changes matching is folded
 * (the NFKC cases that matter: fullwidth and mathematical letters and digits, ligatures);
 * other non-ASCII characters (José, Müller) pass through unchanged. */
typedef struct {
    unsigned char *t; /* normalised text */
    size_t len;
    uint32_t *from;   /* from[i], to[i]: original bytes of the character byte i came from */
    uint32_t *to;
} s_norm_t;

/* One UTF-8 character at i: its code point and length; an invalid byte decodes to itself
 * with bit 31 set, so it passes through. */
static size_t s_utf8_next(const unsigned char *t, size_t len, size_t i, uint32_t *cp)
{
    unsigned c = t[i];
    size_t need = c < 0x80 ? 0 : (c >= 0xC2 && c <= 0xDF) ? 1 : (c >= 0xE0 && c <= 0xEF) ? 2
                : (c >= 0xF0 && c <= 0xF4) ? 3 : 4;
    if (need == 0) { *cp = c; return 1; }
    if (need == 4 || len - i <= need) { *cp = c | 0x80000000u; return 1; }
    uint32_t v = c & (0x3Fu >> need);
    for (size_t k = 1; k <= need; k++) {
        if ((t[i + k] & 0xC0) != 0x80) { *cp = c | 0x80000000u; return 1; }
        v = (v << 6) | (t[i + k] & 0x3F);
    }
    *cp = v;
    return need + 1;
}

/* What code point cp becomes: writes up to 3 ASCII bytes into out and returns their count,
 * 0 to drop it, or -1 to keep its original bytes. */
static int s_fold(uint32_t cp, char *out)
{
    if (cp == '\t') { out[0] = ' '; return 1; }
    if (cp == '\r' || cp == 0x0B || cp == 0x0C || cp == 0x85 || cp == 0x2028 || cp == 0x2029) {
        out[0] = '\n';
        return 1;
    }
    if (cp < 0x80) return -1;
    /* Space separators (Zs): no-break, en/em/thin/hair/narrow/figure spaces, ideographic. */
    if (cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x202F ||
        cp == 0x205F || cp == 0x3000) {
        out[0] = ' ';
        return 1;
    }
    /* Invisible: zero-width space/joiners, word joiner, BOM, soft hyphen, bidi controls. */
    if ((cp >= 0x200B && cp <= 0x200F) || (cp >= 0x202A && cp <= 0x202E) ||
        (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0xFEFF ||
        cp == 0xAD || cp == 0x180E || cp == 0x034F)
        return 0;
    /* Hyphens and dashes, minus signs. */
    if ((cp >= 0x2010 && cp <= 0x2015) || cp == 0x2212 || cp == 0xFE58 || cp == 0xFE63 ||
        cp == 0x2043) {
        out[0] = '-';
        return 1;
    }
    if (cp == 0x2018 || cp == 0x2019 || cp == 0x201B || cp == 0x2032 || cp == 0x02BC ||
        cp == 0x02B9 || cp == 0x00B4 || cp == 0x0060) {
        out[0] = '\'';
        return 1;
    }
    if (cp == 0x201C || cp == 0x201D || cp == 0x201F || cp == 0x2033) { out[0] = '"'; return 1; }
    if (cp == 0x2024 || cp == 0xFE52) { out[0] = '.'; return 1; }
    if (cp == 0x2044 || cp == 0x2215) { out[0] = '/'; return 1; }
    if (cp == 0xFE6B) { out[0] = '@'; return 1; }
    /* Fullwidth ASCII (NFKC). */
    if (cp >= 0xFF01 && cp <= 0xFF5E) { out[0] = (char)(cp - 0xFEE0); return 1; }
    /* Mathematical alphanumerics (bold, italic, script, ... A-Z a-z and digits; NFKC). */
    if (cp >= 0x1D400 && cp <= 0x1D6A3) {
        uint32_t k = (cp - 0x1D400) % 52;
        out[0] = (char)(k < 26 ? 'A' + k : 'a' + (k - 26));
        return 1;
    }
    if (cp >= 0x1D7CE && cp <= 0x1D7FF) { out[0] = (char)('0' + (cp - 0x1D7CE) % 10); return 1; }
    /* Latin ligatures ff fi fl ffi ffl st (NFKC). */
    static const char *const lig[] = {"ff", "fi", "fl", "ffi", "ffl", "st", "st"};
    if (cp >= 0xFB00 && cp <= 0xFB06) {
        size_t n = strlen(lig[cp - 0xFB00]);
        memcpy(out, lig[cp - 0xFB00], n);
        return (int)n;
    }
    return -1;
}

static void s_norm_free(s_norm_t *n)
{
    free(n->t);
    free(n->from);
    free(n->to);
    memset(n, 0, sizeof *n);
}

/* The normal form never grows: each character becomes at most as many bytes as it had
 * ("\r\n" becomes one "\n"). */
static int s_normalise(const char *text, size_t len, s_norm_t *n)
{
    memset(n, 0, sizeof *n);
    if (len >= UINT32_MAX)
        return medfl_error_set(MEDFL_EINVAL, "de-identification scan: text of %zu bytes is too "
                               "long", len);
    n->t = malloc(len + 1);
    n->from = malloc((len + 1) * sizeof *n->from);
    n->to = malloc((len + 1) * sizeof *n->to);
    if (!n->t || !n->from || !n->to) {
        s_norm_free(n);
        return medfl_error_set(MEDFL_ENOMEM, "de-identification scan: out of memory");
    }
    const unsigned char *t = (const unsigned char *)text;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = s_utf8_next(t, len, i, &cp);
        if (cp == '\r' && i + 1 < len && t[i + 1] == '\n') k = 2;
        char buf[4];
        int m = (cp & 0x80000000u) ? -1 : s_fold(cp, buf);
        if (m < 0) {
            memcpy(n->t + o, t + i, k);
            m = (int)k;
        } else {
            memcpy(n->t + o, buf, (size_t)m);
        }
        for (int j = 0; j < m; j++) {
            n->from[o + (size_t)j] = (uint32_t)i;
            n->to[o + (size_t)j] = (uint32_t)(i + k);
        }
        o += (size_t)m;
        i += k;
    }
    n->t[o] = '\0';
    n->len = o;
    return 0;
}

/* ---------------------------------------------------------------- scan, redact */

static int s_cmp_span(const void *a, const void *b)
{
    const deid_span_t *x = a, *y = b;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    if (x->end != y->end) return x->end > y->end ? -1 : 1;
    return (int)x->rule - (int)y->rule;
}

int deid_scan(const char *text, size_t len, deid_span_t **spans_out, size_t *n_out)
{
    *spans_out = NULL;
    *n_out = 0;
    s_norm_t norm;
    if (s_normalise(text, len, &norm) != 0) return -1;
    s_scan_t s = {norm.t, norm.len, NULL, 0, 0, 0};
    s_rule_email(&s);
    s_rule_url(&s);
    s_rule_ip(&s);
    s_rule_ssn(&s);
    s_rule_phone(&s);
    s_rule_date_numeric(&s);
    s_rule_date_words(&s);
    s_rule_age(&s);
    s_rule_ids(&s, s_mrn_kws, DEID_MRN);
    s_rule_ids(&s, s_account_kws, DEID_ACCOUNT);
    s_rule_street(&s);
    s_rule_zip(&s);
    s_rule_residence(&s);
    s_rule_name(&s);
    if (s.oom) {
        free(s.v);
        s_norm_free(&norm);
        return medfl_error_set(MEDFL_ENOMEM, "de-identification scan: out of memory");
    }
    /* Back to original bytes: a span starts where its first character started and ends
     * where its last character ended. */
    for (size_t i = 0; i < s.n; i++) {
        s.v[i].end = norm.to[s.v[i].end - 1];
        s.v[i].start = norm.from[s.v[i].start];
    }
    s_norm_free(&norm);
    if (s.n) qsort(s.v, s.n, sizeof *s.v, s_cmp_span);
    /* Two matchers may find the same span (SSN pattern and "SSN:" keyword): keep one. */
    size_t m = 0;
    for (size_t i = 0; i < s.n; i++)
        if (!m || s.v[i].start != s.v[m - 1].start || s.v[i].end != s.v[m - 1].end ||
            s.v[i].rule != s.v[m - 1].rule)
            s.v[m++] = s.v[i];
    s.n = m;
    *spans_out = s.v;
    *n_out = s.n;
    return 0;
}

uint32_t deid_scan_mask(const char *text, size_t len)
{
    deid_span_t *v;
    size_t n;
    if (deid_scan(text, len, &v, &n) != 0) return 1u << DEID_RULE_COUNT; /* not clean */
    uint32_t mask = 0;
    for (size_t i = 0; i < n; i++) mask |= 1u << v[i].rule;
    free(v);
    return mask;
}

int deid_redact(char **text, size_t *len)
{
    deid_span_t *v;
    size_t n;
    if (deid_scan(*text, *len, &v, &n) != 0) return -1;
    if (n == 0) return 0;
    /* Merge overlapping spans; the widest one names the marker. */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && v[i].start < v[m - 1].end) {
            size_t wa = v[m - 1].end - v[m - 1].start, wb = v[i].end - v[i].start;
            if (wb > wa) v[m - 1].rule = v[i].rule;
            if (v[i].end > v[m - 1].end) v[m - 1].end = v[i].end;
        } else {
            v[m++] = v[i];
        }
    }
    size_t out_len = *len;
    for (size_t i = 0; i < m; i++)
        out_len = out_len - (v[i].end - v[i].start) + strlen(deid_rule_name(v[i].rule)) + 2;
    char *out = malloc(out_len + 1);
    if (!out) {
        free(v);
        return medfl_error_set(MEDFL_ENOMEM, "redaction: out of memory");
    }
    size_t o = 0, from = 0;
    for (size_t i = 0; i < m; i++) {
        memcpy(out + o, *text + from, v[i].start - from);
        o += v[i].start - from;
        o += (size_t)sprintf(out + o, "[%s]", deid_rule_name(v[i].rule));
        from = v[i].end;
    }
    memcpy(out + o, *text + from, *len - from);
    o += *len - from;
    out[o] = '\0';
    free(*text);
    *text = out;
    *len = o;
    free(v);
    return (int)m;
}

/* ---------------------------------------------------------------- the gate */

static void s_print_rules(FILE *out, uint32_t mask)
{
    int first = 1;
    for (int r = 0; r < DEID_RULE_COUNT; r++) {
        if (!(mask & (1u << r))) continue;
        fprintf(out, "%s%s", first ? "" : ",", s_rule_names[r]);
        first = 0;
    }
}

/* Label names are shared by many records: scan each once. A label is a category name,
 * but a misconfigured column can put names or note text there, and a label reaches the
 * model (and the consortium's class list) just like text. */
static int s_label_masks(const records_t *set, uint32_t **masks_out)
{
    size_t n = records_n_labels(set);
    *masks_out = NULL;
    if (n == 0) return 0;
    uint32_t *m = calloc(n, sizeof *m);
    if (!m) return medfl_error_set(MEDFL_ENOMEM, "de-identification scan: out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *name = records_label_name(set, (int)i);
        m[i] = deid_scan_mask(name, strlen(name));
        if (m[i] >> DEID_RULE_COUNT) {
            free(m);
            return medfl_error_set(MEDFL_ENOMEM, "de-identification scan: out of memory");
        }
    }
    *masks_out = m;
    return 0;
}

int deid_gate_records(records_t *set, deid_policy_t policy, FILE *out, size_t *flagged_out,
                      uint32_t *rules_seen_out)
{
    size_t flagged = 0, label_flagged = 0;
    uint32_t seen = 0, label_seen = 0;
    uint32_t *lmask = NULL;
    if (policy != DEID_POLICY_OFF && s_label_masks(set, &lmask) != 0) return -1;
    for (size_t i = 0; policy != DEID_POLICY_OFF && i < records_count(set); i++) {
        record_t *r = records_at(set, i);
        uint32_t mask = deid_scan_mask(r->text, r->text_len);
        uint32_t lm = lmask && r->label >= 0 ? lmask[r->label] : 0;
        if (!mask && !lm) continue;
        if (mask >> DEID_RULE_COUNT) {
            free(lmask);
            return medfl_error_set(MEDFL_ENOMEM, "record %zu: de-identification scan: out "
                                   "of memory", r->record_no);
        }
        flagged++;
        seen |= mask | lm;
        if (lm) { label_flagged++; label_seen |= lm; }
        if (out) {
            fprintf(out, "record %zu: ", r->record_no);
            s_print_rules(out, mask);
            if (lm) {
                fprintf(out, "%slabel: ", mask ? "; " : "");
                s_print_rules(out, lm);
            }
            fputc('\n', out);
        }
        if (mask && policy == DEID_POLICY_REDACT && deid_redact(&r->text, &r->text_len) < 0) {
            free(lmask);
            return -1;
        }
    }
    free(lmask);
    if (flagged_out) *flagged_out = flagged;
    if (rules_seen_out) *rules_seen_out = seen;
    /* A label is a class name: redacting it would merge or rename classes. */
    if (label_flagged && policy == DEID_POLICY_REDACT) {
        char rules[128] = "";
        for (int k = 0, o = 0; k < DEID_RULE_COUNT; k++)
            if (label_seen & (1u << k))
                o += snprintf(rules + o, sizeof rules - (size_t)o, "%s%s", o ? "," : "",
                              s_rule_names[k]);
        return medfl_error_set(MEDFL_EFORMAT, "%zu records have a label that looks like PHI "
                               "(%s); labels cannot be redacted: fix the label column",
                               label_flagged, rules);
    }
    return 0;
}

/* ---------------------------------------------------------------- config */

int data_config_to_opts(const data_config_t *cfg, const char *records_path,
                        records_opts_t *opts, char ***labels_out, size_t *n_labels_out)
{
    records_opts_init(opts);
    *labels_out = NULL;
    *n_labels_out = 0;
    const char *path = records_path ? records_path : cfg->records;
    if (strcmp(cfg->format, "auto") == 0 || !cfg->format[0]) {
        if (data_format_guess(path, &opts->format) != 0) return -1;
    } else if (data_format_parse(cfg->format, &opts->format) != 0) {
        return -1;
    }
    if (cfg->text_field[0]) opts->text_field = cfg->text_field;
    opts->label_field = cfg->label_field;
    opts->skip_unknown_labels = cfg->skip_unknown_labels;
    opts->skip_empty_text = cfg->skip_empty_text;
    opts->max_text_bytes = cfg->max_text_bytes > 0 ? (size_t)cfg->max_text_bytes
                                                   : DATA_DEFAULT_MAX_TEXT_BYTES;
    if (cfg->labels[0]) {
        if (data_labels_parse(cfg->labels, labels_out, n_labels_out) != 0) return -1;
        opts->labels = (const char *const *)*labels_out;
        opts->n_labels = *n_labels_out;
    } else if (cfg->top_labels > 0) {
        if (data_top_labels(path, opts, (size_t)cfg->top_labels, labels_out, n_labels_out) != 0)
            return -1;
        opts->labels = (const char *const *)*labels_out;
        opts->n_labels = *n_labels_out;
        LOG_INFO(DATA, "%s: label set = the %zu most frequent labels (data.top_labels)", path,
                 *n_labels_out);
    } else if (cfg->skip_unknown_labels) {
        return medfl_error_set(MEDFL_ECONFIG, "data.skip_unknown_labels needs data.labels or "
                               "data.top_labels");
    }
    return 0;
}

/* check-data reads only its own keys from node.conf and skips the daemon's others; keys
 * and sections unknown to the node's whole table (typos) are refused with file and line. */
typedef struct {
    data_config_t data;
} s_check_config_t;

static const cfg_option_t s_check_options[] = {
    DEID_CFG_OPTIONS(s_check_config_t, data),
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

static void s_check_usage(FILE *out)
{
    fprintf(out,
            "Usage: medfl-node check-data [-c node.conf | --records FILE] [options]\n\n"
            "Reads the records (schema checks) and runs the de-identification gate.\n"
            "Prints `record N: RULE[,RULE...]` per flagged record (never the text), then\n"
            "`records: N` and `flagged_records: K`. Exit status: 0 clean (or policy redact/off),\n"
            "3 when records are flagged under policy refuse, 1 on a records or config error.\n\n"
            "  -c FILE                 node config: [data] records, format, text_field,\n"
            "                          label_field, labels, skip_unknown_labels,\n"
            "                          skip_empty_text, max_text_bytes, top_labels;\n"
            "                          [deid] policy\n"
            "  --records FILE          records file (overrides data.records)\n"
            "  --format jsonl|csv      default: from the file name\n"
            "  --text-field F          default: text\n"
            "  --label-field F         default: label (\"\" = unlabelled records)\n"
            "  --labels A,B,C          label set (default: as found in the data)\n"
            "  --top-labels K          label set = the K most frequent labels of the file\n"
            "  --skip-unknown-labels   drop and count records whose label is not in the set\n"
            "  --skip-empty-text       drop and count records with an empty text\n"
            "  --max-text-bytes N      default: 1048576\n"
            "  --policy refuse|redact|off   default: refuse\n"
            "  --redacted-out FILE     with --policy redact: write the redacted records as JSONL\n");
}

/* Redacted clinical text is still clinical text: written 0600 through the atomic writer,
 * so a crash never leaves half a file and nobody else on the host can read it. */
static int s_write_redacted(const records_t *set, const char *path)
{
    atomic_file_t *f = atomic_file_new(path, 0600);
    if (!f) return -1;
    int rc = 0;
    for (size_t i = 0; i < records_count(set) && rc == 0; i++) {
        const record_t *r = records_get(set, i);
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddStringToObject(o, "text", r->text) ||
            (r->label >= 0 && !cJSON_AddStringToObject(o, "label", records_label_name(set, r->label)))) {
            cJSON_Delete(o);
            rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
            break;
        }
        char *js = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!js) { rc = medfl_error_set(MEDFL_ENOMEM, "out of memory"); break; }
        size_t n = strlen(js);
        js[n] = '\n'; /* replaces the NUL: written by length */
        rc = atomic_file_write(f, js, n + 1);
        free(js);
    }
    if (rc == 0) return atomic_file_commit(&f);
    atomic_file_destroy(&f);
    return rc;
}

int cmd_check_data(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_check_usage(stdout);
        return 0;
    }
    s_check_config_t cfg;
    if (cfg_set_defaults(s_check_options, &cfg) != 0) return cli_fail("medfl-node");
    const char *conf = NULL, *records = NULL, *format = NULL, *text_field = NULL,
               *label_field = NULL, *labels = NULL, *policy = NULL, *max_bytes = NULL,
               *redacted_out = NULL, *top_labels = NULL;
    bool skip_unknown = false, skip_empty = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) slot = &conf;
        else if (strcmp(a, "--records") == 0) slot = &records;
        else if (strcmp(a, "--format") == 0) slot = &format;
        else if (strcmp(a, "--text-field") == 0) slot = &text_field;
        else if (strcmp(a, "--label-field") == 0) slot = &label_field;
        else if (strcmp(a, "--labels") == 0) slot = &labels;
        else if (strcmp(a, "--policy") == 0) slot = &policy;
        else if (strcmp(a, "--max-text-bytes") == 0) slot = &max_bytes;
        else if (strcmp(a, "--redacted-out") == 0) slot = &redacted_out;
        else if (strcmp(a, "--top-labels") == 0) slot = &top_labels;
        else if (strcmp(a, "--skip-unknown-labels") == 0) { skip_unknown = true; continue; }
        else if (strcmp(a, "--skip-empty-text") == 0) { skip_empty = true; continue; }
        else {
            fprintf(stderr, "medfl-node check-data: unknown option '%s'\n", a);
            s_check_usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "medfl-node check-data: option '%s' needs a value\n", a);
            return 2;
        }
        *slot = argv[++i];
    }
    if (conf && cfg_load_subset(s_check_options, node_config_table, &cfg, conf) != 0)
        return cli_fail("medfl-node");
    if (!records && !cfg.data.records[0]) {
        fprintf(stderr, "medfl-node check-data: give -c node.conf (with data.records) or "
                        "--records FILE\n");
        return 2;
    }
    const char *origin = "command line";
    if ((records && cfg_set(s_check_options, &cfg, "data.records", records, origin) != 0) ||
        (format && cfg_set(s_check_options, &cfg, "data.format", format, origin) != 0) ||
        (text_field && cfg_set(s_check_options, &cfg, "data.text_field", text_field, origin) != 0) ||
        (label_field && cfg_set(s_check_options, &cfg, "data.label_field", label_field, origin) != 0) ||
        (labels && cfg_set(s_check_options, &cfg, "data.labels", labels, origin) != 0) ||
        (policy && cfg_set(s_check_options, &cfg, "deid.policy", policy, origin) != 0) ||
        (max_bytes && cfg_set(s_check_options, &cfg, "data.max_text_bytes", max_bytes, origin) != 0) ||
        (top_labels && cfg_set(s_check_options, &cfg, "data.top_labels", top_labels, origin) != 0))
        return cli_fail("medfl-node");
    if (skip_unknown) cfg.data.skip_unknown_labels = true;
    if (skip_empty) cfg.data.skip_empty_text = true;
    deid_policy_t pol;
    if (deid_policy_parse(cfg.data.policy, &pol) != 0) return cli_fail("medfl-node");
    if (redacted_out && pol != DEID_POLICY_REDACT) {
        fprintf(stderr, "medfl-node check-data: --redacted-out needs --policy redact\n");
        return 2;
    }
    records_opts_t opts;
    char **label_list = NULL;
    size_t n_labels = 0;
    if (data_config_to_opts(&cfg.data, NULL, &opts, &label_list, &n_labels) != 0)
        return cli_fail("medfl-node");
    /* Every bad record is listed (the first DATA_DEFAULT_BAD_MAX, then a count) so that one
     * run tells the data steward all that is wrong with the export. */
    opts.bad_out = stderr;
    records_t *set = records_new();
    int status = 0;
    if (!set) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        status = cli_fail("medfl-node");
    } else if (records_load_file(set, cfg.data.records, &opts) != 0) {
        status = cli_fail("medfl-node");
    } else {
        size_t flagged = 0;
        uint32_t seen = 0;
        if (deid_gate_records(set, pol, stdout, &flagged, &seen) != 0) {
            status = cli_fail("medfl-node");
        } else {
            printf("records: %zu\n", records_count(set));
            if (records_skipped(set) || records_skipped_empty(set))
                printf("skipped_records: %zu\n", records_skipped(set) + records_skipped_empty(set));
            printf("flagged_records: %zu\n", flagged);
            fflush(stdout);
            if (pol == DEID_POLICY_OFF)
                LOG_WARN(DATA, "de-identification gate is off: records were not scanned");
            else if (flagged && pol == DEID_POLICY_REFUSE) {
                LOG_ERROR(DATA, "%zu of %zu records carry possible PHI (policy refuse): the "
                          "node will not train on this file", flagged, records_count(set));
                status = 3;
            } else if (flagged) {
                LOG_WARN(DATA, "%zu of %zu records redacted (policy redact)", flagged,
                         records_count(set));
            }
            if (status == 0 && redacted_out && s_write_redacted(set, redacted_out) != 0)
                status = cli_fail("medfl-node");
        }
    }
    records_destroy(&set);
    data_labels_free(label_list, n_labels);
    return status;
}
