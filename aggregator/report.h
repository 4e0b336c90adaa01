/* `medfl-aggregator report -o report.html`: one self-contained HTML page (inline CSS and
 * SVG, no script, no external resource, so it can be mailed to a consortium board or opened
 * on an air-gapped workstation) with the federation's history: global validation accuracy
 * and macro-F1 per version, ε spent per hospital, contribution weights, participation and
 * dropouts, and bytes on the wire per round. Everything comes from the aggregator's history
 * database (aggregator/contrib_db), read-only, so the report can be made while the daemon
 * runs. */
#ifndef MEDFL_REPORT_H
#define MEDFL_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct report_t report_t;

/* A chart: points (x, series, y) added in any order; rendered as lines, or as grouped bars. */
typedef struct report_chart_t report_chart_t;

report_t *report_new(const char *title);
void report_destroy(report_t **self_p);

report_chart_t *report_add_chart(report_t *self, const char *id, const char *title,
                                 const char *x_label, const char *y_label, bool bars);
int report_add_point(report_chart_t *chart, double x, const char *series, double y);
/* A line of the summary table at the top ("Rounds completed", "7"). */
int report_add_fact(report_t *self, const char *name, const char *value);

/* Fills the standard charts from <state_dir>/contrib.db. */
int report_load_state(report_t *self, const char *state_dir) __attribute__((warn_unused_result));

int report_render(const report_t *self, FILE *out);
/* Renders into path atomically (temp file, fsync, rename). */
int report_write(const report_t *self, const char *path) __attribute__((warn_unused_result));

int cmd_report(int argc, char **argv);

#endif
