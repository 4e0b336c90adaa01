/* De-identification gate: scans record texts for residual PHI in the spirit of HIPAA Safe
 * Harbor before a node trains on them. Training data end up (in a diluted, DP-noised way)
 * in shared model weights, so a hospital must be able to show that nothing it feeds the
 * model still carries names, dates, numbers or places; this gate is the last automatic
 * check, not a replacement for the hospital's own de-identification.
 *
 * Rules are hand-written matchers with context (titles, "patient X", "MRN:", street
 * suffixes, state + ZIP, "year-old") rather than bare number patterns, because clinical
 * text is full of numbers (doses, lab values, blood pressures, years) and eponyms
 * (Crohn, Parkinson, Hodgkin) that must not be flagged. Each rule has a stable name used in
 * reports and redaction markers. Reports never contain the matched text. Matching runs on
 * a Unicode-normalised copy (spaces, dashes, fullwidth forms, zero-width characters), spans
 * are given in the original text's bytes. */
#ifndef MEDFL_NODE_DEID_H
#define MEDFL_NODE_DEID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/config.h"
#include "node/data.h"

typedef enum {
    DEID_NAME = 0,
    DEID_DATE,
    DEID_PHONE,
    DEID_FAX,
    DEID_EMAIL,
    DEID_SSN,
    DEID_MRN,
    DEID_ACCOUNT,
    DEID_URL,
    DEID_IP,
    DEID_ADDRESS,
    DEID_ZIP,
    DEID_AGE_OVER_89,
    DEID_RULE_COUNT
} deid_rule_t;

typedef enum { DEID_POLICY_REFUSE = 0, DEID_POLICY_REDACT, DEID_POLICY_OFF } deid_policy_t;

typedef struct {
    deid_rule_t rule;
    size_t start, end; /* byte span [start, end) in the scanned text */
} deid_span_t;

/* Stable rule name ("NAME", "AGE_OVER_89", ...) or NULL. */
const char *deid_rule_name(deid_rule_t rule);
int deid_rule_parse(const char *name, deid_rule_t *out);
const char *deid_policy_name(deid_policy_t policy);
int deid_policy_parse(const char *name, deid_policy_t *out);

/* Scans text. *spans_out (malloc'd, free() it; NULL when none) gets every match sorted by
 * start; spans of different rules may overlap. Returns 0 or -1 (out of memory). */
int deid_scan(const char *text, size_t len, deid_span_t **spans_out, size_t *n_out)
    __attribute__((warn_unused_result));
/* Bit (1u << rule) set for each rule that fires; 0 = clean. */
uint32_t deid_scan_mask(const char *text, size_t len);

/* Replaces every flagged span with "[RULE]" (overlapping spans merged; the widest span's
 * rule names the marker). *text must be malloc'd and NUL-terminated; it is reallocated.
 * Returns the number of replaced spans, or -1 (out of memory; *text unchanged). */
int deid_redact(char **text, size_t *len);

/* Runs the gate over a set: every text and every label name. Writes `record N:
 * RULE[,RULE...]` per flagged record to out (when not NULL; a flagged label adds
 * `label: RULE...`), and *flagged_out. Under REDACT, flagged texts are redacted in place;
 * a flagged label cannot be (it is a class name), so REDACT then fails with -1 after the
 * report. Under OFF nothing is scanned. Otherwise returns 0 (the caller decides what
 * refuse means). */
int deid_gate_records(records_t *set, deid_policy_t policy, FILE *out, size_t *flagged_out,
                      uint32_t *rules_seen_out) __attribute__((warn_unused_result));

/* The records/de-identification options of node.conf, as a table fragment the node's full
 * option table can include: DEID_CFG_OPTIONS(node_config_t, data) expands to entries whose
 * offsets point into the data_config_t member named data. */
typedef struct {
    char records[CFG_STR_MAX];       /* data.records: path of the JSONL/CSV file */
    char format[CFG_STR_MAX];        /* data.format: auto|jsonl|csv */
    char text_field[CFG_STR_MAX];    /* data.text_field */
    char label_field[CFG_STR_MAX];   /* data.label_field */
    char labels[CFG_STR_MAX];        /* data.labels: comma-separated label set ("" = from data) */
    bool skip_unknown_labels;/* data.skip_unknown_labels */
    bool skip_empty_text;    /* data.skip_empty_text */
    int64_t max_text_bytes;  /* data.max_text_bytes */
    int64_t top_labels;      /* data.top_labels: K most frequent labels when labels is "" */
    char policy[CFG_STR_MAX];        /* deid.policy: refuse|redact|off */
} data_config_t;

#define DEID_CFG_OPTIONS(T, m)                                                                \
    {"data.records", CFG_PATH, offsetof(T, m.records), 0, 0, "", false, NULL,                 \
     "records file (JSONL or CSV) the node trains on (empty = none yet)"},                   \
    {"data.format", CFG_ENUM, offsetof(T, m.format), 0, 0, "auto", false, "auto|jsonl|csv",   \
     "records format; auto = from the file name (.jsonl/.csv)"},                              \
    {"data.text_field", CFG_STRING, offsetof(T, m.text_field), 0, 0, "text", false, NULL,     \
     "JSON key or CSV column holding the note text"},                                         \
    {"data.label_field", CFG_STRING, offsetof(T, m.label_field), 0, 0, "label", false, NULL,  \
     "JSON key or CSV column holding the label"},                                             \
    {"data.labels", CFG_STRING, offsetof(T, m.labels), 0, 0, "", false, NULL,                 \
     "comma-separated label set, index = class id; empty = labels as found in the data"},     \
    {"data.skip_unknown_labels", CFG_BOOL, offsetof(T, m.skip_unknown_labels), 0, 0, "false", \
     false, NULL, "drop (and count) records whose label is not in data.labels"},              \
    {"data.skip_empty_text", CFG_BOOL, offsetof(T, m.skip_empty_text), 0, 0, "false", false,  \
     NULL, "drop (and count) records with an empty text instead of failing"},                 \
    {"data.max_text_bytes", CFG_INT, offsetof(T, m.max_text_bytes), 1, 1 << 30, "1048576",    \
     false, NULL, "largest note text accepted, in bytes"},                                    \
    {"data.top_labels", CFG_INT, offsetof(T, m.top_labels), 0, 100000, "0", false, NULL,      \
     "with data.labels empty: use the K most frequent labels of the file (local experiments; " \
     "a federation must list data.labels so that class ids agree); 0 = off"},                 \
    {"deid.policy", CFG_ENUM, offsetof(T, m.policy), 0, 0, "refuse", true,                    \
     "refuse|redact|off", "PHI gate: refuse to train, redact spans, or off"}

/* Fills opts from a loaded data_config_t (labels parsed into *labels_out, free with
 * data_labels_free). records_path overrides cfg->records; with data.top_labels the file is
 * read once to count labels. */
int data_config_to_opts(const data_config_t *cfg, const char *records_path,
                        records_opts_t *opts, char ***labels_out, size_t *n_labels_out)
    __attribute__((warn_unused_result));

#endif
