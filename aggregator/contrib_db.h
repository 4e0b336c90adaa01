/* History of contribution weighting in SQLite (state_dir/contrib.db): the metrics each node
 * reported for each version it evaluated, whether each selected node completed each round
 * (reliability), and each round's weights with every component of the formula. The
 * aggregator writes it; `status` and `report` read it (WAL, so readers are separate
 * processes and never block the daemon).
 *
 * Tables (all keyed so a replayed write after a crash is an idempotent upsert):
 *   reports(node, version, loss, accuracy, macro_f1, n, created)     PK (node, version)
 *   participation(round, node, completed, created)                   PK (round, node)
 *   reliability(node, value, selected, completed)                    PK node
 *   weights(round, node, weight, n_samples, size, z, quality, reliability, loo, raw, created)
 *                                                                    PK (round, node)
 *   round_stats(round, node, bytes_up, bytes_down, epsilon, created) PK (round, node) */
#ifndef MEDFL_CONTRIB_DB_H
#define MEDFL_CONTRIB_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aggregator/strategy.h"

typedef struct contrib_db_t contrib_db_t;

contrib_db_t *contrib_db_open(const char *path);
/* For readers (`weights`, `status`, `report`): refuses a missing file instead of creating it. */
contrib_db_t *contrib_db_open_readonly(const char *path);
void contrib_db_destroy(contrib_db_t **self_p);
/* "<state_dir>/contrib.db" */
void contrib_db_path(const char *state_dir, char *out, size_t size);

/* A node's evaluation of a version on its validation split. */
int contrib_db_record_report(contrib_db_t *db, const char *node, uint64_t version, double loss,
                             double accuracy, double macro_f1, int64_t n);
/* Mean reported loss over the node's `recent` latest versions; *has = false when none. */
int contrib_db_recent_loss(contrib_db_t *db, const char *node, int recent, double *mean, bool *has);

/* Records whether a node selected for `round` completed it, updating its reliability EMA
 * (once per (round, node): a replay does not count twice). */
int contrib_db_record_participation(contrib_db_t *db, uint64_t round, const char *node,
                                    bool completed, double alpha);
/* Reliability of a node: 1 for a node never selected yet. */
int contrib_db_reliability(contrib_db_t *db, const char *node, double *value);

/* Computes the weights of the nodes selected for `round` from the stored history
 * (recent reports, reliability) and the given sample counts and optional leave-one-out
 * factors (NULL = all 1), logs one LOG_INFO(AGG) line per node, stores them, and returns
 * them in out[n]. */
int contrib_db_compute_round(contrib_db_t *db, const contrib_params_t *p, uint64_t round,
                             const char *const *nodes, const double *n_samples, const double *loo,
                             size_t n, int recent, contrib_output_t *out)
    __attribute__((warn_unused_result));

typedef struct {
    uint64_t round;
    const char *node;
    double n_samples;
    contrib_output_t c;
    int64_t created;
} contrib_row_t;

/* Calls fn for every stored weight row (of one node, or all when node is NULL), ordered by
 * round then node. A non-zero return from fn stops the walk and is returned. */
int contrib_db_history(contrib_db_t *db, const char *node,
                       int (*fn)(void *ctx, const contrib_row_t *row), void *ctx);

/* Adds a round's bytes on the wire for a node (accumulating over the round's messages) and
 * the privacy loss it reported (NAN = not reported; a later report replaces it). */
int contrib_db_record_round_stats(contrib_db_t *db, uint64_t round, const char *node,
                                  uint64_t bytes_up, uint64_t bytes_down, double epsilon);

typedef struct {
    uint64_t round;
    const char *node;
    uint64_t bytes_up, bytes_down;
    double epsilon; /* NAN when the node reported none */
} contrib_round_stats_t;

/* Walks of the stored history, ordered by round (version) then node, for `report`. A
 * non-zero return from fn stops the walk and is returned. */
int contrib_db_foreach_round_stats(contrib_db_t *db,
                                   int (*fn)(void *ctx, const contrib_round_stats_t *row), void *ctx);
int contrib_db_foreach_participation(contrib_db_t *db,
                                     int (*fn)(void *ctx, uint64_t round, const char *node,
                                               bool completed), void *ctx);
int contrib_db_foreach_report(contrib_db_t *db,
                              int (*fn)(void *ctx, const char *node, uint64_t version, double loss,
                                        double accuracy, double macro_f1, int64_t n), void *ctx);

/* medfl-aggregator weights [--state DIR] [--node ID]: the stored weights per round and node
 * with every component of the formula (docs/contribution-weighting.md). */
int cmd_weights(int argc, char **argv);

#endif
