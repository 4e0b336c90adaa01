/* SQLite history of contribution weighting (see contrib_db.h). Kept apart from the node
 * registry so that the weighting can be tested and replayed without the daemon, and so
 * `report` can read a whole federation's weighting history from one small file. */
#include "aggregator/contrib_db.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/agg_config.h"
#include "common/cli.h"

#include "common/error.h"
#include "common/log.h"

struct contrib_db_t {
    sqlite3 *db;
    char *path;
};

static int s_fail(contrib_db_t *self, const char *what)
{
    return medfl_error_set(MEDFL_EDB, "%s: %s: %s", self->path, what, sqlite3_errmsg(self->db));
}

static const char s_schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS reports(node TEXT NOT NULL, version INTEGER NOT NULL,"
    " loss REAL NOT NULL, accuracy REAL NOT NULL, macro_f1 REAL NOT NULL, n INTEGER NOT NULL,"
    " created INTEGER NOT NULL, PRIMARY KEY(node, version));"
    "CREATE TABLE IF NOT EXISTS participation(round INTEGER NOT NULL, node TEXT NOT NULL,"
    " completed INTEGER NOT NULL, created INTEGER NOT NULL, PRIMARY KEY(round, node));"
    "CREATE TABLE IF NOT EXISTS reliability(node TEXT PRIMARY KEY, value REAL NOT NULL,"
    " selected INTEGER NOT NULL, completed INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS weights(round INTEGER NOT NULL, node TEXT NOT NULL,"
    " weight REAL NOT NULL, n_samples REAL NOT NULL, size REAL NOT NULL, z REAL NOT NULL,"
    " quality REAL NOT NULL, reliability REAL NOT NULL, loo REAL NOT NULL, raw REAL NOT NULL,"
    " created INTEGER NOT NULL, PRIMARY KEY(round, node));"
    /* Per round and node: bytes on the wire and the privacy loss the node reported. */
    "CREATE TABLE IF NOT EXISTS round_stats(round INTEGER NOT NULL, node TEXT NOT NULL,"
    " bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL, epsilon REAL,"
    " created INTEGER NOT NULL, PRIMARY KEY(round, node));";

contrib_db_t *contrib_db_open(const char *path)
{
    contrib_db_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = strdup(path))) {
        free(self);
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    char *err = NULL;
    if (sqlite3_open_v2(path, &self->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        s_fail(self, "cannot open");
        contrib_db_destroy(&self);
        return NULL;
    }
    sqlite3_busy_timeout(self->db, 5000);
    if (sqlite3_exec(self->db, s_schema, NULL, NULL, &err) != SQLITE_OK) {
        medfl_error_set(MEDFL_EDB, "%s: schema: %s", path, err ? err : "?");
        sqlite3_free(err);
        contrib_db_destroy(&self);
        return NULL;
    }
    return self;
}

contrib_db_t *contrib_db_open_readonly(const char *path)
{
    contrib_db_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = strdup(path))) {
        free(self);
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    if (access(path, R_OK) != 0) {
        medfl_error_set(MEDFL_ENOTFOUND, "%s: no contribution history yet (no round has been weighed)", path);
        contrib_db_destroy(&self);
        return NULL;
    }
    if (sqlite3_open_v2(path, &self->db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        s_fail(self, "cannot open");
        contrib_db_destroy(&self);
        return NULL;
    }
    sqlite3_busy_timeout(self->db, 5000);
    return self;
}

void contrib_db_destroy(contrib_db_t **self_p)
{
    if (!self_p || !*self_p) return;
    sqlite3_close((*self_p)->db);
    free((*self_p)->path);
    free(*self_p);
    *self_p = NULL;
}

void contrib_db_path(const char *state_dir, char *out, size_t size)
{
    snprintf(out, size, "%s/contrib.db", state_dir);
}

int contrib_db_record_report(contrib_db_t *db, const char *node, uint64_t version, double loss,
                             double accuracy, double macro_f1, int64_t n)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->db,
                           "INSERT OR REPLACE INTO reports(node, version, loss, accuracy, macro_f1, n, created)"
                           " VALUES(?, ?, ?, ?, ?, ?, ?)", -1, &st, NULL) != SQLITE_OK)
        return s_fail(db, "record report");
    sqlite3_bind_text(st, 1, node, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)version);
    sqlite3_bind_double(st, 3, loss);
    sqlite3_bind_double(st, 4, accuracy);
    sqlite3_bind_double(st, 5, macro_f1);
    sqlite3_bind_int64(st, 6, n);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)time(NULL));
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : s_fail(db, "record report");
    sqlite3_finalize(st);
    return rc;
}

int contrib_db_recent_loss(contrib_db_t *db, const char *node, int recent, double *mean, bool *has)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->db,
                           "SELECT avg(loss), count(*) FROM (SELECT loss FROM reports WHERE node = ?"
                           " ORDER BY version DESC LIMIT ?)", -1, &st, NULL) != SQLITE_OK)
        return s_fail(db, "recent reports");
    sqlite3_bind_text(st, 1, node, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, recent);
    int rc = -1;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *has = sqlite3_column_int64(st, 1) > 0;
        *mean = *has ? sqlite3_column_double(st, 0) : 0;
        rc = 0;
    } else {
        s_fail(db, "recent reports");
    }
    sqlite3_finalize(st);
    return rc;
}

int contrib_db_reliability(contrib_db_t *db, const char *node, double *value)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->db, "SELECT value FROM reliability WHERE node = ?", -1, &st, NULL) != SQLITE_OK)
        return s_fail(db, "reliability");
    sqlite3_bind_text(st, 1, node, -1, SQLITE_STATIC);
    int r = sqlite3_step(st), rc = 0;
    if (r == SQLITE_ROW) *value = sqlite3_column_double(st, 0);
    else if (r == SQLITE_DONE) *value = 1.0;
    else rc = s_fail(db, "reliability");
    sqlite3_finalize(st);
    return rc;
}

int contrib_db_record_participation(contrib_db_t *db, uint64_t round, const char *node,
                                    bool completed, double alpha)
{
    if (!(alpha > 0 && alpha <= 1))
        return medfl_error_set(MEDFL_EINVAL, "reliability smoothing %g outside (0, 1]", alpha);
    if (sqlite3_exec(db->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return s_fail(db, "begin");
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db->db,
                           "INSERT OR IGNORE INTO participation(round, node, completed, created) VALUES(?, ?, ?, ?)",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)round);
    sqlite3_bind_text(st, 2, node, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, completed ? 1 : 0);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)time(NULL));
    if (sqlite3_step(st) != SQLITE_DONE) goto fail;
    bool fresh = sqlite3_changes(db->db) > 0;
    sqlite3_finalize(st);
    st = NULL;
    if (fresh) {
        double r = 1.0;
        if (contrib_db_reliability(db, node, &r) < 0) goto fail_set;
        r = contrib_reliability_update(r, completed, alpha);
        if (sqlite3_prepare_v2(db->db,
                               "INSERT INTO reliability(node, value, selected, completed) VALUES(?1, ?2, 1, ?3)"
                               " ON CONFLICT(node) DO UPDATE SET value = ?2, selected = selected + 1,"
                               " completed = completed + ?3", -1, &st, NULL) != SQLITE_OK)
            goto fail;
        sqlite3_bind_text(st, 1, node, -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 2, r);
        sqlite3_bind_int(st, 3, completed ? 1 : 0);
        if (sqlite3_step(st) != SQLITE_DONE) goto fail;
        sqlite3_finalize(st);
        st = NULL;
    }
    if (sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) goto fail;
    return 0;
fail:
    s_fail(db, "record participation");
fail_set:
    sqlite3_finalize(st);
    sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int contrib_db_compute_round(contrib_db_t *db, const contrib_params_t *p, uint64_t round,
                             const char *const *nodes, const double *n_samples, const double *loo,
                             size_t n, int recent, contrib_output_t *out)
{
    if (n == 0) return medfl_error_set(MEDFL_EINVAL, "round %llu: no nodes to weigh", (unsigned long long)round);
    contrib_input_t *in = calloc(n, sizeof *in);
    if (!in) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    int rc = -1;
    sqlite3_stmt *st = NULL;
    for (size_t i = 0; i < n; i++) {
        in[i].node = nodes[i];
        in[i].n_samples = n_samples[i];
        in[i].loo = loo ? loo[i] : 1.0;
        if (contrib_db_recent_loss(db, nodes[i], recent, &in[i].quality, &in[i].has_quality) < 0 ||
            contrib_db_reliability(db, nodes[i], &in[i].reliability) < 0)
            goto done;
    }
    if (contrib_weights(p, in, n, out) < 0) goto done;
    if (sqlite3_exec(db->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        s_fail(db, "begin");
        goto done;
    }
    if (sqlite3_prepare_v2(db->db,
                           "INSERT OR REPLACE INTO weights(round, node, weight, n_samples, size, z, quality,"
                           " reliability, loo, raw, created) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           -1, &st, NULL) != SQLITE_OK) {
        s_fail(db, "store weights");
        sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const contrib_output_t *o = &out[i];
        LOG_INFO(AGG, "round %llu weight %s: w=%.4f (n=%.0f size=%.2f z=%.2f quality=%.3f "
                      "reliability=%.3f loo=%.3f)",
                 (unsigned long long)round, nodes[i], o->weight, n_samples[i], o->size, o->z,
                 o->quality, o->reliability, o->loo);
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, (sqlite3_int64)round);
        sqlite3_bind_text(st, 2, nodes[i], -1, SQLITE_STATIC);
        sqlite3_bind_double(st, 3, o->weight);
        sqlite3_bind_double(st, 4, n_samples[i]);
        sqlite3_bind_double(st, 5, o->size);
        sqlite3_bind_double(st, 6, o->z);
        sqlite3_bind_double(st, 7, o->quality);
        sqlite3_bind_double(st, 8, o->reliability);
        sqlite3_bind_double(st, 9, o->loo);
        sqlite3_bind_double(st, 10, o->raw);
        sqlite3_bind_int64(st, 11, (sqlite3_int64)time(NULL));
        if (sqlite3_step(st) != SQLITE_DONE) {
            s_fail(db, "store weights");
            sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
            goto done;
        }
    }
    if (sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        s_fail(db, "commit weights");
        sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
        goto done;
    }
    rc = 0;
done:
    sqlite3_finalize(st);
    free(in);
    return rc;
}

int contrib_db_history(contrib_db_t *db, const char *node,
                       int (*fn)(void *ctx, const contrib_row_t *row), void *ctx)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->db,
                           "SELECT round, node, weight, n_samples, size, z, quality, reliability, loo, raw,"
                           " created FROM weights WHERE ?1 IS NULL OR node = ?1 ORDER BY round, node",
                           -1, &st, NULL) != SQLITE_OK)
        return s_fail(db, "history");
    if (node) sqlite3_bind_text(st, 1, node, -1, SQLITE_STATIC);
    int r, rc = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        contrib_row_t row;
        memset(&row, 0, sizeof row);
        row.round = (uint64_t)sqlite3_column_int64(st, 0);
        row.node = (const char *)sqlite3_column_text(st, 1);
        row.c.weight = sqlite3_column_double(st, 2);
        row.n_samples = sqlite3_column_double(st, 3);
        row.c.size = sqlite3_column_double(st, 4);
        row.c.z = sqlite3_column_double(st, 5);
        row.c.quality = sqlite3_column_double(st, 6);
        row.c.reliability = sqlite3_column_double(st, 7);
        row.c.loo = sqlite3_column_double(st, 8);
        row.c.raw = sqlite3_column_double(st, 9);
        row.created = sqlite3_column_int64(st, 10);
        if ((rc = fn(ctx, &row)) != 0) break;
    }
    if (rc == 0 && r != SQLITE_DONE) rc = s_fail(db, "history");
    sqlite3_finalize(st);
    return rc;
}

static int s_print_row(void *ctx, const contrib_row_t *row)
{
    size_t *count = ctx;
    printf("%-6llu %-20s %-8.4f %-9.0f %-8.2f %-7.2f %-8.3f %-11.3f %-6.3f\n",
           (unsigned long long)row->round, row->node, row->c.weight, row->n_samples, row->c.size,
           row->c.z, row->c.quality, row->c.reliability, row->c.loo);
    (*count)++;
    return 0;
}

int cmd_weights(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: medfl-aggregator weights [-c CONFIG | --state DIR] [--node ID]\n\n"
               "Prints each round's contribution weight of each node with its components:\n"
               "sample count, size = sqrt(n), robust z of the reported validation loss, quality\n"
               "factor, reliability and leave-one-out factor (docs/contribution-weighting.md).\n"
               "  -c CONFIG     aggregator config: its state_dir\n"
               "  --state DIR   aggregator state_dir (default /var/lib/medfl/aggregator)\n"
               "  --node ID     only this node's history\n");
        return 0;
    }
    const char *state = NULL, *node = NULL, *config = NULL;
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "--state") == 0 || strcmp(argv[i], "--node") == 0) && i + 1 < argc) {
            if (argv[i][2] == 's') state = argv[++i];
            else node = argv[++i];
        } else if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            config = argv[++i];
        } else {
            medfl_error_set(MEDFL_EINVAL, "unexpected argument '%s'", argv[i]);
            return cli_fail("medfl-aggregator weights");
        }
    }
    agg_config_t cfg;
    if (config && !state) {
        if (agg_config_load(&cfg, config) != 0) return cli_fail("medfl-aggregator weights");
        state = cfg.state_dir;
    }
    if (!state) state = "/var/lib/medfl/aggregator";
    char path[4096];
    contrib_db_path(state, path, sizeof path);
    contrib_db_t *db = contrib_db_open_readonly(path);
    if (!db) return cli_fail("medfl-aggregator weights");
    printf("%-6s %-20s %-8s %-9s %-8s %-7s %-8s %-11s %-6s\n", "ROUND", "NODE", "WEIGHT", "N", "SIZE",
           "Z", "QUALITY", "RELIABILITY", "LOO");
    size_t count = 0;
    int rc = contrib_db_history(db, node, s_print_row, &count) < 0 ? cli_fail("medfl-aggregator weights") : 0;
    if (rc == 0) printf("rows: %zu\n", count);
    contrib_db_destroy(&db);
    return rc;
}

int contrib_db_record_round_stats(contrib_db_t *db, uint64_t round, const char *node,
                                  uint64_t bytes_up, uint64_t bytes_down, double epsilon)
{
    sqlite3_stmt *st;
    /* Bytes accumulate over a round's messages; epsilon keeps the latest reported value. */
    if (sqlite3_prepare_v2(db->db,
                           "INSERT INTO round_stats(round, node, bytes_up, bytes_down, epsilon, created)"
                           " VALUES(?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(round, node) DO UPDATE SET"
                           " bytes_up = bytes_up + ?3, bytes_down = bytes_down + ?4,"
                           " epsilon = COALESCE(?5, epsilon)", -1, &st, NULL) != SQLITE_OK)
        return s_fail(db, "record round stats");
    sqlite3_bind_int64(st, 1, (sqlite3_int64)round);
    sqlite3_bind_text(st, 2, node, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)bytes_up);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)bytes_down);
    if (isnan(epsilon)) sqlite3_bind_null(st, 5);
    else sqlite3_bind_double(st, 5, epsilon);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)time(NULL));
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : s_fail(db, "record round stats");
    sqlite3_finalize(st);
    return rc;
}

int contrib_db_foreach_round_stats(contrib_db_t *db,
                                   int (*fn)(void *ctx, const contrib_round_stats_t *row), void *ctx)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->db,
                           "SELECT round, node, bytes_up, bytes_down, epsilon FROM round_stats"
                           " ORDER BY round, node", -1, &st, NULL) != SQLITE_OK)
        return s_fail(db, "round stats");
    int r, rc = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        contrib_round_stats_t row;
        row.round = (uint64_t)sqlite3_column_int64(st, 0);
        row.node = (const char *)sqlite3_column_text(st, 1);
        row.bytes_up = (uint64_t)sqlite3_column_int64(st, 2);
        row.bytes_down = (uint64_t)sqlite3_column_int64(st, 3);
        row.epsilon = sqlite3_column_type(st, 4) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 4);
        if ((rc = fn(ctx, &row)) != 0) break;
    }
    if (rc == 0 && r != SQLITE_DONE) rc = s_fail(db, "round stats");
    sqlite3_finalize(st);
    return rc;
}

int contrib_db_foreach_participation(contrib_db_t *db,
                                     int (*fn)(void *ctx, uint64_t round, const char *node,
                                               bool completed), void *ctx)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->db, "SELECT round, node, completed FROM participation ORDER BY round, node",
                           -1, &st, NULL) != SQLITE_OK)
        return s_fail(db, "participation");
    int r, rc = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        rc = fn(ctx, (uint64_t)sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
                sqlite3_column_int(st, 2) != 0);
        if (rc != 0) break;
    }
    if (rc == 0 && r != SQLITE_DONE) rc = s_fail(db, "participation");
    sqlite3_finalize(st);
    return rc;
}

int contrib_db_foreach_report(contrib_db_t *db,
                              int (*fn)(void *ctx, const char *node, uint64_t version, double loss,
                                        double accuracy, double macro_f1, int64_t n), void *ctx)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->db, "SELECT node, version, loss, accuracy, macro_f1, n FROM reports"
                           " ORDER BY version, node", -1, &st, NULL) != SQLITE_OK)
        return s_fail(db, "reports");
    int r, rc = 0;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        rc = fn(ctx, (const char *)sqlite3_column_text(st, 0), (uint64_t)sqlite3_column_int64(st, 1),
                sqlite3_column_double(st, 2), sqlite3_column_double(st, 3), sqlite3_column_double(st, 4),
                sqlite3_column_int64(st, 5));
        if (rc != 0) break;
    }
    if (rc == 0 && r != SQLITE_DONE) rc = s_fail(db, "reports");
    sqlite3_finalize(st);
    return rc;
}
