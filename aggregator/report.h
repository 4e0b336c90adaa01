/* `medfl-aggregator report -o report.html`: one self-contained HTML page (inline CSS and
 * SVG, no script, no external resource, so it can be mailed to a consortium board or opened
 * on an air-gapped workstation) with the federation's history, all by round: global
 * validation accuracy and macro-F1 (with the version each round produced, and a branch
 * abandoned by a rollback drawn apart from the line the head descends from), the latest
 * scores next to their baseline, ε spent per hospital, contribution weights, participation
 * and dropouts, and bytes on the wire per round on a log scale. Everything comes from the
 * aggregator's history database (aggregator/contrib_db) and the manifests of its version
 * store, read-only, so the report can be made while the daemon runs. */
#ifndef MEDFL_REPORT_H
#define MEDFL_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct report_t report_t;

/* A chart: points (x, series, y) added in any order; rendered as lines, or as grouped bars.
 * Each series gets its own colour, dash pattern and marker shape, drawn so that series with
 * equal values stay visible (the first drawn is the widest) and named as equal in the
 * legend. A chart whose x label is "round" shows under each round the version it produced
 * (report_note_round) and shades the rounds whose version a rollback abandoned. */
typedef struct report_chart_t report_chart_t;

typedef enum {
    REPORT_Y_LINEAR = 0,
    REPORT_Y_LOG_BYTES, /* log scale, values in bytes, ticks as B / kB / MB / GB */
} report_y_scale_t;

/* Series options (report_add_series). */
#define REPORT_SERIES_CONNECT 1u /* a missing x does not break the line: it is a lineage
                                    (versions descending from each other), not a gap */

report_t *report_new(const char *title);
void report_destroy(report_t **self_p);

report_chart_t *report_add_chart(report_t *self, const char *id, const char *title,
                                 const char *x_label, const char *y_label, bool bars);
void report_chart_set_y_scale(report_chart_t *chart, report_y_scale_t scale);
/* Declares a series before its points (series are otherwise created by their first point).
 * branch_of: NULL, or an existing series whose colour this one shares, drawn dotted with
 * hollow markers (an abandoned branch of that series). */
int report_add_series(report_chart_t *chart, const char *name, unsigned flags,
                      const char *branch_of);
int report_add_point(report_chart_t *chart, double x, const char *series, double y);
/* A line of the summary table at the top ("Rounds completed", "7"). */
int report_add_fact(report_t *self, const char *name, const char *value);
/* A row of the quality table: a metric's baseline and latest value, where each was measured
 * ("round 1, v2"), and the change. */
int report_add_change(report_t *self, const char *metric, double baseline, const char *baseline_at,
                      double latest, const char *latest_at);
/* Round `round` produced `version`; abandoned: a rollback left that version off the line
 * the head descends from. */
int report_note_round(report_t *self, uint64_t round, uint64_t version, bool abandoned);

/* Fills the standard charts from <state_dir>/contrib.db and the manifests of
 * <state_dir>/versions (round, parent and head of each version; a missing version store
 * leaves the scores plotted by version number, said on the page). */
int report_load_state(report_t *self, const char *state_dir) __attribute__((warn_unused_result));

int report_render(const report_t *self, FILE *out);
/* Renders into path atomically (temp file, fsync, rename). */
int report_write(const report_t *self, const char *path) __attribute__((warn_unused_result));

int cmd_report(int argc, char **argv);

#endif
