/* Synthetic de-identified clinical notes for demos and tests (`medfl-node synth`). Real
 * records cannot ship with the project, yet the federation must be shown on data where
 * federated training beats each hospital alone. So the generator builds notes labelled with
 * a specialty whose signal lies in combinations of symptoms, findings, tests and drugs with
 * shared vocabulary, negated mentions and other specialties' terms as distractors (no single
 * keyword gives the label away), and makes the sites non-IID: each site has a skewed label
 * mix (Dirichlet, from the seed) and its own writing style (sections, abbreviations,
 * verbosity). Same seed, same bytes. Notes contain no PHI: no names, dates, places or
 * identifiers, ages below 90 — and the tests run them through the de-identification gate. */
#ifndef MEDFL_NODE_SYNTH_H
#define MEDFL_NODE_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "node/data.h"

#define SYNTH_N_STYLES 5

typedef struct {
    int sites;              /* K >= 1 */
    int records_per_site;   /* N >= 10 */
    int test_per_site;      /* test notes per site; 0 = 15 % of N (then train/valid/test is
                             * 70/15/15 of N; otherwise train/valid stay 70/15 % of N) */
    uint64_t seed;
    double alpha;           /* Dirichlet concentration of the label skew (small = skewed) */
    data_format_t format;   /* JSONL (default) or CSV (text,label) */
} synth_opts_t;

void synth_opts_init(synth_opts_t *opts);

/* The label names, in class-id order. */
const char *const *synth_labels(size_t *n_out);

/* One note of the given label in the given style (0..SYNTH_N_STYLES-1), drawn from rng.
 * Returns a malloc'd NUL-terminated string or NULL (out of memory). */
char *synth_note(uint64_t *rng, int label, int style, size_t *len_out);

/* Label distribution of site (0-based) under opts: probs gets n_labels entries. */
void synth_site_label_probs(const synth_opts_t *opts, int site, double *probs);

/* Writes DIR/site-K/{train,valid,test}.EXT (70/15/15), DIR/pooled-test.EXT (all sites'
 * test sets, the common yardstick) and DIR/labels.txt (comma-separated label set). */
int synth_write(const synth_opts_t *opts, const char *dir) __attribute__((warn_unused_result));

#endif
