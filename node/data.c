/* Records readers (JSONL with cJSON, CSV by a hand-written RFC 4180 state machine), label
 * sets, stratified deterministic splits. Everything parses from one memory buffer so that
 * the fuzz target exercises exactly the code the node runs on files. Errors name file,
 * line, record and field: a data steward must be able to fix the export from the message
 * alone, and a record is never dropped without being counted (see data.h). */
#include "node/data.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/error.h"
#include "common/log.h"

struct records_t {
    record_t *recs;
    size_t n, cap;
    char **labels;      /* owned copies of the label names */
    size_t n_labels, labels_cap;
    size_t skipped;     /* unknown labels dropped on request */
    size_t skipped_empty; /* empty texts dropped on request */
};

/* ---------------------------------------------------------------- helpers */

uint64_t data_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint32_t data_rng_below(uint64_t *state, uint32_t n)
{
    if (n == 0) return 0;
    return (uint32_t)(((data_rng_next(state) >> 32) * (uint64_t)n) >> 32);
}

double data_rng_uniform(uint64_t *state)
{
    return (double)(data_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

size_t data_utf8_check(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; }
        else return i;
        if (len - i <= need) return i;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        /* Overlong 3/4-byte forms, UTF-16 surrogates and code points past U+10FFFF. */
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return i;
        i += need + 1;
    }
    return len;
}

void records_opts_init(records_opts_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->format = DATA_FORMAT_JSONL;
    opts->text_field = "text";
    opts->label_field = "label";
    opts->max_text_bytes = DATA_DEFAULT_MAX_TEXT_BYTES;
}

int data_format_parse(const char *name, data_format_t *out)
{
    if (strcmp(name, "jsonl") == 0 || strcmp(name, "json") == 0) *out = DATA_FORMAT_JSONL;
    else if (strcmp(name, "csv") == 0) *out = DATA_FORMAT_CSV;
    else return medfl_error_set(MEDFL_EINVAL, "unknown records format '%s' (jsonl or csv)", name);
    return 0;
}

static bool s_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

int data_format_guess(const char *path, data_format_t *out)
{
    /* "train.jsonl.gz": the format is the name's before the compression suffix. */
    size_t n = strlen(path);
    if (s_ends_with(path, ".gz") && n > 3) {
        char base[4096];
        snprintf(base, sizeof base, "%.*s", (int)(n - 3 < sizeof base - 1 ? n - 3 : sizeof base - 1), path);
        if (data_format_guess(base, out) == 0) return 0;
        return medfl_error_set(MEDFL_EINVAL, "%s: cannot tell the records format from the "
                               "file name; give it (jsonl or csv)", path);
    }
    if (s_ends_with(path, ".csv") || s_ends_with(path, ".csv.txt")) *out = DATA_FORMAT_CSV;
    else if (s_ends_with(path, ".jsonl") || s_ends_with(path, ".json") ||
             s_ends_with(path, ".ndjson")) *out = DATA_FORMAT_JSONL;
    else
        return medfl_error_set(MEDFL_EINVAL, "%s: cannot tell the records format from the "
                               "file name; give it (jsonl or csv)", path);
    return 0;
}

/* ---------------------------------------------------------------- the set */

records_t *records_new(void)
{
    return calloc(1, sizeof(records_t));
}

static void s_clear(records_t *self)
{
    for (size_t i = 0; i < self->n; i++) free(self->recs[i].text);
    for (size_t i = 0; i < self->n_labels; i++) free(self->labels[i]);
    free(self->recs);
    free(self->labels);
    memset(self, 0, sizeof *self);
}

void records_destroy(records_t **self_p)
{
    if (!self_p || !*self_p) return;
    s_clear(*self_p);
    free(*self_p);
    *self_p = NULL;
}

size_t records_count(const records_t *self) { return self->n; }
const record_t *records_get(const records_t *self, size_t i) { return i < self->n ? &self->recs[i] : NULL; }
record_t *records_at(records_t *self, size_t i) { return i < self->n ? &self->recs[i] : NULL; }
size_t records_n_labels(const records_t *self) { return self->n_labels; }
size_t records_skipped(const records_t *self) { return self->skipped; }
size_t records_skipped_empty(const records_t *self) { return self->skipped_empty; }

const char *records_label_name(const records_t *self, int label)
{
    if (label < 0 || (size_t)label >= self->n_labels) return NULL;
    return self->labels[label];
}

void records_replace_text(records_t *self, size_t i, char *text, size_t len)
{
    if (i >= self->n) { free(text); return; }
    free(self->recs[i].text);
    self->recs[i].text = text;
    self->recs[i].text_len = len;
}

void records_label_counts(const records_t *self, size_t *counts)
{
    memset(counts, 0, self->n_labels * sizeof *counts);
    for (size_t i = 0; i < self->n; i++)
        if (self->recs[i].label >= 0) counts[self->recs[i].label]++;
}

static int s_add_label(records_t *self, const char *name)
{
    if (self->n_labels == self->labels_cap) {
        size_t cap = self->labels_cap ? self->labels_cap * 2 : 16;
        char **l = realloc(self->labels, cap * sizeof *l);
        if (!l) return medfl_error_set(MEDFL_ENOMEM, "out of memory for labels");
        self->labels = l;
        self->labels_cap = cap;
    }
    if (!(self->labels[self->n_labels] = strdup(name)))
        return medfl_error_set(MEDFL_ENOMEM, "out of memory for labels");
    self->n_labels++;
    return 0;
}

/* Context of one load: where we are, for error messages. */
typedef struct {
    records_t *set;
    const records_opts_t *opts;
    const char *name;
    bool collect;  /* label set collected from the data */
    bool labelled;
    size_t n_bad;  /* records refused so far (opts->bad_out: reading goes on) */
} s_load_t;

/* A record was refused (its error is set). Without opts->bad_out this stops the read (-1);
 * with it, the error is listed (the first bad_max ones), counted, and reading goes on (0)
 * so that a data steward sees every bad record in one run. */
static int s_bad_record(s_load_t *ld)
{
    if (!ld->opts->bad_out) return -1;
    size_t max = ld->opts->bad_max ? ld->opts->bad_max : DATA_DEFAULT_BAD_MAX;
    if (++ld->n_bad <= max) fprintf(ld->opts->bad_out, "error: %s\n", medfl_error_message());
    return 0;
}

/* Adds one record; text is copied. label_name NULL means the field was absent. */
static int s_add_record(s_load_t *ld, size_t record_no, size_t line, const char *text,
                        size_t text_len, const char *label_name)
{
    const records_opts_t *o = ld->opts;
    const char *tf = o->text_field;
    size_t max = o->max_text_bytes ? o->max_text_bytes : DATA_DEFAULT_MAX_TEXT_BYTES;
    if (text_len == 0 && o->skip_empty_text) {
        ld->set->skipped_empty++;
        return 0;
    }
    if (text_len == 0)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s' is empty",
                               ld->name, line, record_no, tf);
    if (text_len > max)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s' is %zu bytes, "
                               "above the limit of %zu bytes (max_text_bytes)",
                               ld->name, line, record_no, tf, text_len, max);
    if (memchr(text, '\0', text_len))
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s' contains a NUL "
                               "character", ld->name, line, record_no, tf);
    size_t bad = data_utf8_check(text, text_len);
    if (bad != text_len)
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s': invalid UTF-8 "
                               "at byte %zu of the text", ld->name, line, record_no, tf, bad);
    int label = -1;
    if (ld->labelled) {
        const char *lf = o->label_field;
        if (!label_name)
            return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s' is missing",
                                   ld->name, line, record_no, lf);
        if (!label_name[0])
            return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s' is empty",
                                   ld->name, line, record_no, lf);
        for (size_t i = 0; i < ld->set->n_labels; i++)
            if (strcmp(ld->set->labels[i], label_name) == 0) { label = (int)i; break; }
        if (label < 0) {
            if (ld->collect) {
                if (ld->set->n_labels >= 100000)
                    return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s': more "
                                           "than 100000 distinct labels", ld->name, line,
                                           record_no, lf);
                if (s_add_label(ld->set, label_name) != 0) return -1;
                label = (int)ld->set->n_labels - 1;
            } else if (o->skip_unknown_labels) {
                ld->set->skipped++;
                return 0;
            } else {
                /* The value is never shown: a label column may hold a name or, when
                 * misconfigured, note text; a scan cannot prove it is harmless. Its size
                 * and position are enough to find it in the file. */
                return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s': unknown "
                                       "label (%zu bytes, value not shown; not in the "
                                       "configured label set)", ld->name, line, record_no, lf,
                                       strlen(label_name));
            }
        }
    }
    records_t *s = ld->set;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        record_t *r = realloc(s->recs, cap * sizeof *r);
        if (!r) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", ld->name);
        s->recs = r;
        s->cap = cap;
    }
    char *copy = malloc(text_len + 1);
    if (!copy) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", ld->name);
    memcpy(copy, text, text_len);
    copy[text_len] = '\0';
    s->recs[s->n++] = (record_t){copy, text_len, label, record_no, line};
    return 0;
}

/* ---------------------------------------------------------------- JSONL */

static const char *s_json_type(const cJSON *v)
{
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsNumber(v)) return "number";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsObject(v)) return "object";
    return "invalid";
}

static bool s_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

static int s_load_jsonl(s_load_t *ld, const char *buf, size_t len)
{
    const records_opts_t *o = ld->opts;
    size_t pos = 0, line = 0, record_no = 0;
    while (pos < len) {
        line++;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        const char *ln = buf + pos;
        size_t ll = end - pos;
        pos = nl ? end + 1 : len;
        if (s_blank(ln, ll)) continue;
        record_no++;
        const char *parse_end = NULL;
        cJSON *obj = cJSON_ParseWithLengthOpts(ln, ll, &parse_end, 0);
        if (!obj) {
            size_t col = parse_end && parse_end >= ln ? (size_t)(parse_end - ln) + 1 : 1;
            medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: invalid JSON near column %zu "
                            "(truncated or malformed line)", ld->name, line, record_no, col);
            if (s_bad_record(ld) != 0) return -1;
            continue;
        }
        int rc = 0;
        size_t used = parse_end ? (size_t)(parse_end - ln) : ll;
        if (used < ll && !s_blank(ln + used, ll - used)) {
            rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: unexpected data after the "
                                 "JSON object at column %zu (one record per line)",
                                 ld->name, line, record_no, used + 1);
        } else if (!cJSON_IsObject(obj)) {
            rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: expected a JSON object, "
                                 "got %s", ld->name, line, record_no, s_json_type(obj));
        } else {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, o->text_field);
            const cJSON *l = ld->labelled ? cJSON_GetObjectItemCaseSensitive(obj, o->label_field)
                                          : NULL;
            if (!t)
                rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s' is missing",
                                     ld->name, line, record_no, o->text_field);
            else if (!cJSON_IsString(t) || !t->valuestring)
                rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s': expected a "
                                     "string, got %s", ld->name, line, record_no, o->text_field,
                                     s_json_type(t));
            else if (l && (!cJSON_IsString(l) || !l->valuestring))
                rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: field '%s': expected a "
                                     "string, got %s", ld->name, line, record_no, o->label_field,
                                     s_json_type(l));
            else
                rc = s_add_record(ld, record_no, line, t->valuestring, strlen(t->valuestring),
                                  l ? l->valuestring : NULL);
        }
        cJSON_Delete(obj);
        if (rc != 0 && s_bad_record(ld) != 0) return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- CSV (RFC 4180) */

/* One parsed row: unescaped field bytes, each NUL-terminated, in one growing buffer. */
typedef struct {
    char *data;
    size_t len, cap;
    size_t *off, *flen;
    size_t n, ocap;
} s_row_t;

static int s_row_put(s_row_t *r, char c)
{
    if (r->len == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 256;
        char *d = realloc(r->data, cap);
        if (!d) return medfl_error_set(MEDFL_ENOMEM, "out of memory reading CSV");
        r->data = d;
        r->cap = cap;
    }
    r->data[r->len++] = c;
    return 0;
}

static int s_row_field_begin(s_row_t *r)
{
    if (r->n == r->ocap) {
        size_t cap = r->ocap ? r->ocap * 2 : 16;
        size_t *o = realloc(r->off, cap * sizeof *o);
        if (!o) return medfl_error_set(MEDFL_ENOMEM, "out of memory reading CSV");
        r->off = o;
        size_t *l = realloc(r->flen, cap * sizeof *l);
        if (!l) return medfl_error_set(MEDFL_ENOMEM, "out of memory reading CSV");
        r->flen = l;
        r->ocap = cap;
    }
    r->off[r->n] = r->len;
    r->n++;
    return 0;
}

static int s_row_field_end(s_row_t *r)
{
    r->flen[r->n - 1] = r->len - r->off[r->n - 1];
    return s_row_put(r, '\0');
}

static const char *s_row_field(const s_row_t *r, size_t i) { return r->data + r->off[i]; }

/* Reads the row starting at *pos into r. Returns 1 for a row, 0 at end of input, -1 on a
 * quoting error. *line counts newlines (also those inside quoted fields); *row_line gets
 * the line the row starts on. Blank lines between rows are skipped. */
static int s_csv_row(const char *name, const char *buf, size_t len, size_t *pos, size_t *line,
                     size_t *row_line, s_row_t *r)
{
    size_t p = *pos;
    r->len = r->n = 0;
    /* Skip blank lines: an empty line is not a one-field record in any export we accept. */
    for (;;) {
        if (p >= len) { *pos = p; return 0; }
        if (buf[p] == '\n') { p++; (*line)++; continue; }
        if (buf[p] == '\r' && p + 1 < len && buf[p + 1] == '\n') { p += 2; (*line)++; continue; }
        break;
    }
    *row_line = *line;
    for (;;) {
        if (s_row_field_begin(r) != 0) return -1;
        if (p < len && buf[p] == '"') {
            size_t qline = *line;
            p++;
            for (;;) {
                if (p >= len)
                    return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field %zu: quoted field "
                                           "never closed (missing '\"')", name, qline, r->n);
                char c = buf[p];
                if (c == '"') {
                    if (p + 1 < len && buf[p + 1] == '"') {
                        if (s_row_put(r, '"') != 0) return -1;
                        p += 2;
                        continue;
                    }
                    p++;
                    break;
                }
                if (c == '\n') (*line)++;
                if (s_row_put(r, c) != 0) return -1;
                p++;
            }
            if (p < len && buf[p] != ',' && buf[p] != '\n' &&
                !(buf[p] == '\r' && p + 1 < len && buf[p + 1] == '\n'))
                return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field %zu: unexpected character "
                                       "after a closing quote (a quote inside a quoted field "
                                       "must be doubled)", name, *line, r->n);
        } else {
            while (p < len && buf[p] != ',' && buf[p] != '\n' &&
                   !(buf[p] == '\r' && p + 1 < len && buf[p + 1] == '\n')) {
                if (buf[p] == '"')
                    return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: field %zu: quote inside an "
                                           "unquoted field (quote the whole field and double "
                                           "the quote)", name, *line, r->n);
                if (s_row_put(r, buf[p]) != 0) return -1;
                p++;
            }
        }
        if (s_row_field_end(r) != 0) return -1;
        if (p >= len) break;
        if (buf[p] == ',') { p++; continue; }
        if (buf[p] == '\r') p++;
        p++; /* '\n' */
        (*line)++;
        break;
    }
    *pos = p;
    return 1;
}

static int s_load_csv(s_load_t *ld, const char *buf, size_t len)
{
    const records_opts_t *o = ld->opts;
    s_row_t row = {0};
    size_t pos = 0, line = 1, row_line = 0;
    int rc = s_csv_row(ld->name, buf, len, &pos, &line, &row_line, &row);
    if (rc <= 0) {
        free(row.data); free(row.off); free(row.flen);
        if (rc == 0)
            return medfl_error_set(MEDFL_EFORMAT, "%s: empty file (no header row, no records)",
                                   ld->name);
        return -1;
    }
    size_t n_cols = row.n, text_col = SIZE_MAX, label_col = SIZE_MAX;
    for (size_t i = 0; i < row.n; i++) {
        const char *h = s_row_field(&row, i);
        if (text_col == SIZE_MAX && strcmp(h, o->text_field) == 0) text_col = i;
        if (ld->labelled && label_col == SIZE_MAX && strcmp(h, o->label_field) == 0) label_col = i;
    }
    rc = 0;
    if (text_col == SIZE_MAX)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: header has no column '%s' (text field)",
                             ld->name, row_line, o->text_field);
    else if (ld->labelled && label_col == SIZE_MAX)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: header has no column '%s' (label field)",
                             ld->name, row_line, o->label_field);
    size_t record_no = 0;
    while (rc == 0) {
        int got = s_csv_row(ld->name, buf, len, &pos, &line, &row_line, &row);
        if (got < 0) { rc = -1; break; }
        if (got == 0) break;
        record_no++;
        if (row.n != n_cols)
            rc = medfl_error_set(MEDFL_EFORMAT, "%s:%zu: record %zu: expected %zu fields as in "
                                 "the header, found %zu", ld->name, row_line, record_no, n_cols,
                                 row.n);
        else
            rc = s_add_record(ld, record_no, row_line, s_row_field(&row, text_col),
                              row.flen[text_col],
                              ld->labelled ? s_row_field(&row, label_col) : NULL);
        if (rc != 0 && s_bad_record(ld) == 0) rc = 0;
    }
    free(row.data); free(row.off); free(row.flen);
    return rc;
}

/* ---------------------------------------------------------------- loading */

int records_load_buffer(records_t *self, const char *name, const char *buf, size_t len,
                        const records_opts_t *opts_in)
{
    records_opts_t opts;
    if (opts_in) opts = *opts_in;
    else records_opts_init(&opts);
    if (!opts.text_field || !opts.text_field[0]) opts.text_field = "text";
    if (!opts.label_field) opts.label_field = "label";
    s_clear(self);
    s_load_t ld = {self, &opts, name ? name : "<buffer>", opts.labels == NULL,
                   opts.label_field[0] != '\0', 0};
    if (opts.labels) {
        for (size_t i = 0; i < opts.n_labels; i++) {
            for (size_t j = 0; j < i; j++)
                if (strcmp(opts.labels[i], opts.labels[j]) == 0)
                    return medfl_error_set(MEDFL_EINVAL, "label set: '%s' listed twice",
                                           opts.labels[i]);
            if (s_add_label(self, opts.labels[i]) != 0) { s_clear(self); return -1; }
        }
    }
    /* A UTF-8 byte order mark (Excel exports) is accepted and ignored. */
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) { buf += 3; len -= 3; }
    size_t bad = data_utf8_check(buf, len);
    const char *nul = memchr(buf, '\0', bad);
    if (nul) bad = (size_t)(nul - buf);
    if (bad != len) {
        size_t line = 1, col = 1;
        for (size_t i = 0; i < bad; i++) {
            if (buf[i] == '\n') { line++; col = 1; } else col++;
        }
        s_clear(self);
        return medfl_error_set(MEDFL_EFORMAT, "%s:%zu: %s at byte offset %zu (column %zu)",
                               ld.name, line, nul ? "NUL byte" : "invalid UTF-8", bad, col);
    }
    int rc = opts.format == DATA_FORMAT_CSV ? s_load_csv(&ld, buf, len)
                                            : s_load_jsonl(&ld, buf, len);
    if (rc == 0 && ld.n_bad) {
        size_t max = opts.bad_max ? opts.bad_max : DATA_DEFAULT_BAD_MAX;
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: %zu bad record%s (%s listed above)", ld.name,
                             ld.n_bad, ld.n_bad == 1 ? "" : "s",
                             ld.n_bad <= max ? "all" : "the first ones");
        if (ld.n_bad > max)
            fprintf(opts.bad_out, "error: ... and %zu more bad records not listed\n",
                    ld.n_bad - max);
    }
    if (rc == 0 && self->n == 0 && self->skipped == 0 && self->skipped_empty == 0)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: no records", ld.name);
    if (rc == 0 && self->n == 0)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: no records left: %zu had labels outside the "
                             "configured set, %zu had empty texts", ld.name, self->skipped,
                             self->skipped_empty);
    if (rc != 0) {
        s_clear(self);
        return -1;
    }
    if (self->skipped)
        LOG_INFO(DATA, "%s: skipped %zu records whose label is not in the configured set "
                 "(skip_unknown_labels); kept %zu", ld.name, self->skipped, self->n);
    if (self->skipped_empty)
        LOG_INFO(DATA, "%s: skipped %zu records with an empty text (skip_empty_text); kept %zu",
                 ld.name, self->skipped_empty, self->n);
    return 0;
}

/* Files are read through zlib's gzread, which reads gzip-compressed files (exports are
 * often shipped as notes.jsonl.gz) and passes plain files through unchanged, so both go
 * through the same path whatever their name. */
int records_load_file(records_t *self, const char *path, const records_opts_t *opts)
{
    gzFile f = gzopen(path, "rb");
    if (!f) {
        int e = errno;
        s_clear(self);
        return medfl_error_set(e == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO,
                               "%s: cannot open: %s", path, e ? strerror(e) : "out of memory");
    }
    gzbuffer(f, 1 << 17);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int err = 0;
    for (;;) {
        if (cap - len < 65536) {
            size_t ncap = cap ? cap * 2 : 1 << 20;
            char *b = realloc(buf, ncap);
            if (!b) {
                free(buf);
                gzclose(f);
                return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
            }
            buf = b;
            cap = ncap;
        }
        size_t want = cap - len > (1u << 30) ? (1u << 30) : cap - len;
        int got = gzread(f, buf + len, (unsigned)want);
        if (got < 0) { err = 1; break; }
        if (got == 0) break;
        len += (size_t)got;
    }
    int zerr = 0;
    const char *zmsg = err ? gzerror(f, &zerr) : NULL;
    /* gzread reports a truncated gzip stream only as end of file; gzclose_r then fails. */
    char detail[200] = "";
    if (zmsg) snprintf(detail, sizeof detail, "%s", zmsg);
    if (gzclose(f) != Z_OK && !err) {
        err = 1;
        snprintf(detail, sizeof detail, "compressed data truncated or corrupt");
    }
    if (err) {
        free(buf);
        s_clear(self);
        return medfl_error_set(MEDFL_EIO, "%s: read error (%s)", path,
                               zerr == Z_ERRNO ? strerror(errno) : detail);
    }
    int rc = records_load_buffer(self, path, buf, len, opts);
    free(buf);
    return rc;
}

/* ---------------------------------------------------------------- splits */

static int s_cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

int records_split(const records_t *self, uint64_t seed, double valid_frac, double test_frac,
                  records_split_t *out)
{
    memset(out, 0, sizeof *out);
    if (!(valid_frac >= 0 && test_frac >= 0 && valid_frac + test_frac < 1))
        return medfl_error_set(MEDFL_EINVAL, "split: valid (%g) and test (%g) fractions must be "
                               ">= 0 with a sum below 1", valid_frac, test_frac);
    size_t n = self->n;
    for (int s = 0; s < 3; s++) {
        out->idx[s] = malloc((n ? n : 1) * sizeof(size_t));
        if (!out->idx[s]) {
            records_split_free(out);
            return medfl_error_set(MEDFL_ENOMEM, "split: out of memory");
        }
    }
    size_t *bucket = malloc((n ? n : 1) * sizeof *bucket);
    if (!bucket) {
        records_split_free(out);
        return medfl_error_set(MEDFL_ENOMEM, "split: out of memory");
    }
    uint64_t rng = seed ^ 0x6D65646666C2D5EBull;
    /* Strata: each label, then the unlabelled records (label -1) as one more stratum. */
    for (long lab = -1; lab < (long)self->n_labels; lab++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (self->recs[i].label == lab) bucket[m++] = i;
        for (size_t i = m; i > 1; i--) {
            size_t j = data_rng_below(&rng, (uint32_t)i);
            size_t t = bucket[i - 1]; bucket[i - 1] = bucket[j]; bucket[j] = t;
        }
        size_t n_test = (size_t)(m * test_frac + 0.5), n_valid = (size_t)(m * valid_frac + 0.5);
        if (n_test + n_valid > m) n_valid = m - n_test;
        for (size_t i = 0; i < m; i++) {
            int s = i < n_test ? DATA_SPLIT_TEST
                  : i < n_test + n_valid ? DATA_SPLIT_VALID : DATA_SPLIT_TRAIN;
            out->idx[s][out->n[s]++] = bucket[i];
        }
    }
    free(bucket);
    for (int s = 0; s < 3; s++) qsort(out->idx[s], out->n[s], sizeof(size_t), s_cmp_size);
    return 0;
}

void records_split_free(records_split_t *split)
{
    if (!split) return;
    for (int s = 0; s < 3; s++) {
        free(split->idx[s]);
        split->idx[s] = NULL;
        split->n[s] = 0;
    }
}

/* ---------------------------------------------------------------- label sets */

void data_labels_free(char **labels, size_t n)
{
    if (!labels) return;
    for (size_t i = 0; i < n; i++) free(labels[i]);
    free(labels);
}

typedef struct {
    const char *name;
    size_t count;
} s_label_count_t;

static int s_cmp_count(const void *a, const void *b)
{
    const s_label_count_t *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return strcmp(x->name, y->name);
}

int data_top_labels(const char *path, const records_opts_t *opts_in, size_t k,
                    char ***labels_out, size_t *n_out)
{
    *labels_out = NULL;
    *n_out = 0;
    records_opts_t opts;
    if (opts_in) opts = *opts_in;
    else records_opts_init(&opts);
    opts.labels = NULL;
    opts.n_labels = 0;
    opts.skip_unknown_labels = false;
    if (opts.label_field && !opts.label_field[0])
        return medfl_error_set(MEDFL_EINVAL, "%s: most frequent labels need a label field", path);
    records_t *set = records_new();
    if (!set) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    if (records_load_file(set, path, &opts) != 0) {
        records_destroy(&set);
        return -1;
    }
    size_t nl = set->n_labels;
    s_label_count_t *lc = calloc(nl, sizeof *lc);
    size_t *counts = calloc(nl, sizeof *counts);
    size_t take = k < nl ? k : nl;
    char **names = calloc(take ? take : 1, sizeof *names);
    int rc = 0;
    if (!lc || !counts || !names) {
        rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
    } else {
        records_label_counts(set, counts);
        for (size_t i = 0; i < nl; i++) lc[i] = (s_label_count_t){set->labels[i], counts[i]};
        qsort(lc, nl, sizeof *lc, s_cmp_count);
        for (size_t i = 0; i < take && rc == 0; i++)
            if (!(names[i] = strdup(lc[i].name))) rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
    }
    if (rc == 0) {
        *labels_out = names;
        *n_out = take;
    } else {
        data_labels_free(names, take);
    }
    free(lc);
    free(counts);
    records_destroy(&set);
    return rc;
}

int data_labels_parse(const char *list, char ***labels_out, size_t *n_out)
{
    *labels_out = NULL;
    *n_out = 0;
    size_t cap = 1;
    for (const char *p = list; *p; p++) if (*p == ',') cap++;
    char **names = calloc(cap, sizeof *names);
    if (!names) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    size_t n = 0;
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *e = comma ? comma : p + strlen(p);
        const char *b = p;
        while (b < e && (*b == ' ' || *b == '\t')) b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if (e == b) {
            data_labels_free(names, n);
            return medfl_error_set(MEDFL_EINVAL, "label list '%s': empty label name at "
                                   "position %zu", list, n + 1);
        }
        for (size_t j = 0; j < n; j++) {
            if (strlen(names[j]) == (size_t)(e - b) && memcmp(names[j], b, (size_t)(e - b)) == 0) {
                data_labels_free(names, n);
                return medfl_error_set(MEDFL_EINVAL, "label list: '%.*s' listed twice",
                                       (int)(e - b), b);
            }
        }
        if (!(names[n] = strndup(b, (size_t)(e - b)))) {
            data_labels_free(names, n);
            return medfl_error_set(MEDFL_ENOMEM, "out of memory");
        }
        n++;
        if (!comma) break;
        p = comma + 1;
    }
    *labels_out = names;
    *n_out = n;
    return 0;
}
