/* Records ingestion for medfl-node: JSONL ({"text": ..., "label": ...}) and CSV (RFC 4180)
 * readers that turn a hospital's export into a records_t set of (text, label index, record
 * number, source line). Input comes from hospital IT exports we do not control, so every
 * check is strict and every error names the file, the line (or byte offset) and the field:
 * a record that cannot be read is an error, never silently dropped. The one exception is
 * opt-in (skip_unknown_labels) for experiments on a subset of labels, and it is counted.
 *
 * The label set is given by the caller (the node config); when it is not, labels are
 * collected in order of first appearance (check-data, label statistics). Splits into
 * train / validation / test are deterministic by seed and stratified by label, so every
 * node of a consortium can reproduce its split from its config alone. */
#ifndef MEDFL_NODE_DATA_H
#define MEDFL_NODE_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { DATA_FORMAT_JSONL = 0, DATA_FORMAT_CSV } data_format_t;

/* Default byte guard per record text; the tokenizer truncates tokens, this bounds memory. */
#define DATA_DEFAULT_MAX_TEXT_BYTES (1u << 20)
/* Bad records listed one by one when the caller collects them (records_opts_t.bad_out). */
#define DATA_DEFAULT_BAD_MAX 100

typedef struct {
    char *text;        /* NUL-terminated, valid UTF-8 */
    size_t text_len;   /* bytes, without the NUL */
    int label;         /* index into the set's labels; -1 when the set is unlabelled */
    size_t record_no;  /* 1-based position among the file's records (header excluded) */
    size_t line;       /* 1-based line of the file where the record starts */
} record_t;

typedef struct {
    data_format_t format;
    const char *text_field;      /* JSON key or CSV column; NULL = "text" */
    const char *label_field;     /* NULL = "label"; "" = records carry no label */
    const char *const *labels;   /* label names, index = class id; NULL = collect from data */
    size_t n_labels;
    bool skip_unknown_labels;    /* drop (and count) records whose label is not in labels */
    bool skip_empty_text;        /* drop (and count) records whose text is empty */
    size_t max_text_bytes;       /* 0 = DATA_DEFAULT_MAX_TEXT_BYTES */
    /* NULL: the first bad record stops the read. Else each bad record's error (file, line,
     * record, field; never a value) is written to bad_out as "error: ..." -- the first
     * bad_max (0 = DATA_DEFAULT_BAD_MAX) of them, then a count -- the read goes on, and it
     * fails at the end naming how many were bad (check-data: every problem in one run). */
    FILE *bad_out;
    size_t bad_max;
} records_opts_t;

typedef struct records_t records_t;

/* Fills opts with the defaults (JSONL, "text", "label", collect labels, 1 MiB). */
void records_opts_init(records_opts_t *opts);
/* "jsonl" | "csv" (also guesses from a file name ending in .csv / .jsonl / .json). */
int data_format_parse(const char *name, data_format_t *out);
int data_format_guess(const char *path, data_format_t *out);

records_t *records_new(void);
void records_destroy(records_t **self_p);

/* Reads a whole file. On error returns -1, the set stays empty, and medfl_error_message()
 * names file, line/record and field. An empty file (no records) is an error. */
int records_load_file(records_t *self, const char *path, const records_opts_t *opts)
    __attribute__((warn_unused_result));
/* Same from memory; name is used in error messages (fuzzing, tests, synth). */
int records_load_buffer(records_t *self, const char *name, const char *buf, size_t len,
                        const records_opts_t *opts) __attribute__((warn_unused_result));

size_t records_count(const records_t *self);
const record_t *records_get(const records_t *self, size_t i);
/* Mutable access for the de-identification gate's redaction. */
record_t *records_at(records_t *self, size_t i);
/* Replaces record i's text (takes ownership of text, which must be NUL-terminated). */
void records_replace_text(records_t *self, size_t i, char *text, size_t len);
size_t records_n_labels(const records_t *self);
const char *records_label_name(const records_t *self, int label);
/* Records dropped because of skip_unknown_labels / skip_empty_text. */
size_t records_skipped(const records_t *self);
size_t records_skipped_empty(const records_t *self);
/* Count of records per label: counts must hold records_n_labels() entries. */
void records_label_counts(const records_t *self, size_t *counts);

/* Deterministic split by seed, stratified by label (each label's records are shuffled with
 * the seed and cut test / valid / train). Index lists are in file order. */
typedef struct {
    size_t *idx[3];  /* DATA_SPLIT_TRAIN, _VALID, _TEST */
    size_t n[3];
} records_split_t;
enum { DATA_SPLIT_TRAIN = 0, DATA_SPLIT_VALID = 1, DATA_SPLIT_TEST = 2 };

int records_split(const records_t *self, uint64_t seed, double valid_frac, double test_frac,
                  records_split_t *out) __attribute__((warn_unused_result));
void records_split_free(records_split_t *split);

/* The k most frequent labels of a file (ties by name), e.g. "10 most frequent specialties".
 * *labels_out is a malloc'd array of malloc'd names; free with data_labels_free. */
int data_top_labels(const char *path, const records_opts_t *opts, size_t k,
                    char ***labels_out, size_t *n_out) __attribute__((warn_unused_result));
void data_labels_free(char **labels, size_t n);
/* Splits "a,b,c" (spaces around names trimmed) into a label list; empty names are errors. */
int data_labels_parse(const char *list, char ***labels_out, size_t *n_out)
    __attribute__((warn_unused_result));

/* Deterministic PRNG (splitmix64) shared by splits and synth: same seed, same sequence on
 * every platform, which is what reproducible splits and synthetic corpora need. */
uint64_t data_rng_next(uint64_t *state);
/* Uniform in [0, n) without modulo bias worth caring about for n < 2^32. */
uint32_t data_rng_below(uint64_t *state, uint32_t n);
double data_rng_uniform(uint64_t *state);

/* Returns the byte offset of the first invalid UTF-8 sequence (overlongs, surrogates and
 * code points above U+10FFFF included), or len when the buffer is valid. */
size_t data_utf8_check(const char *s, size_t len);

#endif
