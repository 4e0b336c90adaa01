/* Privacy ledger in SQLite (see ledger.h for why). Schema:
 *
 *   meta(key PRIMARY KEY, value)       schema = 1, delta = "%a" of δ, created = unix time
 *   rounds(seq, round_id, ts, status, q, sigma, steps, delta, epsilon, budget, reason)
 *
 * rounds is append-only: triggers abort any UPDATE or DELETE, so a bug or a hand-run
 * statement cannot quietly erase spent privacy. Every decision is one BEGIN IMMEDIATE
 * transaction that re-reads the history it composes, so two writers (a daemon and a stray
 * second instance) cannot both admit a round against the same remaining budget. */
#include "node/ledger.h"

#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/dp.h"
#include "common/error.h"
#include "common/log.h"

#define LEDGER_SCHEMA 1

struct ledger_t {
    sqlite3 *db;
    char *path;
    double budget;
    double delta;
};

static const char *const s_schema =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS rounds("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  round_id INTEGER NOT NULL,"
    "  ts INTEGER NOT NULL,"
    "  status TEXT NOT NULL CHECK(status IN ('admitted','declined')),"
    "  q REAL NOT NULL CHECK(q >= 0 AND q <= 1),"
    "  sigma REAL NOT NULL CHECK(sigma >= 0),"
    "  steps INTEGER NOT NULL CHECK(steps >= 0),"
    "  delta REAL NOT NULL,"
    "  epsilon REAL NOT NULL,"
    "  budget REAL NOT NULL,"
    "  reason TEXT NOT NULL DEFAULT '');"
    "CREATE TRIGGER IF NOT EXISTS rounds_append_only_u BEFORE UPDATE ON rounds"
    "  BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;"
    "CREATE TRIGGER IF NOT EXISTS rounds_append_only_d BEFORE DELETE ON rounds"
    "  BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only'); END;";

static int s_db_error(ledger_t *self, const char *what)
{
    return medfl_error_set(MEDFL_EDB, "%s: %s: %s", self->path, what, sqlite3_errmsg(self->db));
}

static int s_exec(ledger_t *self, const char *sql, const char *what)
{
    char *err = NULL;
    if (sqlite3_exec(self->db, sql, NULL, NULL, &err) != SQLITE_OK) {
        int code = sqlite3_errcode(self->db);
        medfl_error_set(MEDFL_EDB, "%s: %s: %s%s", self->path, what, err ? err : "?",
                        code == SQLITE_NOTADB ? " (the file is not a privacy ledger)" : "");
        sqlite3_free(err);
        return -1;
    }
    return 0;
}

/* Reads meta.key into buf; 1 found, 0 absent, -1 error. */
static int s_meta_get(ledger_t *self, const char *key, char *buf, size_t size)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(self->db, "SELECT value FROM meta WHERE key = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return s_db_error(self, "reading meta");
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st), found = 0;
    if (rc == SQLITE_ROW) {
        snprintf(buf, size, "%s", (const char *)sqlite3_column_text(st, 0));
        found = 1;
    } else if (rc != SQLITE_DONE) {
        found = s_db_error(self, "reading meta");
    }
    sqlite3_finalize(st);
    return found;
}

static int s_meta_put(ledger_t *self, const char *key, const char *value)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(self->db, "INSERT INTO meta(key, value) VALUES(?, ?)", -1, &st,
                           NULL) != SQLITE_OK)
        return s_db_error(self, "writing meta");
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : s_db_error(self, "writing meta");
    sqlite3_finalize(st);
    return rc;
}

/* First use: schema + meta in one transaction. Later: schema version and δ must match. */
static int s_init(ledger_t *self)
{
    if (s_exec(self, "BEGIN IMMEDIATE", "starting transaction") != 0) return -1;
    char buf[128];
    int have = s_meta_get(self, "schema", buf, sizeof buf);
    if (have < 0) {
        /* no meta table yet: a fresh database file */
        medfl_error_clear();
        have = 0;
    }
    int rc = 0;
    if (!have) {
        /* A database with other tables and no meta is someone else's file. */
        sqlite3_stmt *st;
        int n_tables = 0;
        if (sqlite3_prepare_v2(self->db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL) ==
                SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            n_tables = sqlite3_column_int(st, 0);
        else
            rc = s_db_error(self, "reading schema");
        sqlite3_finalize(st);
        if (rc == 0 && n_tables > 0)
            rc = medfl_error_set(MEDFL_EFORMAT,
                                 "%s: an SQLite database but not a privacy ledger (no 'schema' "
                                 "entry in table meta)", self->path);
        if (rc == 0) rc = s_exec(self, s_schema, "creating tables");
        char v[64];
        snprintf(v, sizeof v, "%d", LEDGER_SCHEMA);
        if (rc == 0) rc = s_meta_put(self, "schema", v);
        snprintf(v, sizeof v, "%a", self->delta);
        if (rc == 0) rc = s_meta_put(self, "delta", v);
        snprintf(v, sizeof v, "%lld", (long long)time(NULL));
        if (rc == 0) rc = s_meta_put(self, "created", v);
        if (rc == 0) LOG_INFO(PRIVACY, "created privacy ledger %s (delta %g)", self->path, self->delta);
    } else {
        if (strtol(buf, NULL, 10) != LEDGER_SCHEMA)
            rc = medfl_error_set(MEDFL_EUNSUPPORTED, "%s: ledger schema '%s', this medfl reads %d",
                                 self->path, buf, LEDGER_SCHEMA);
        if (rc == 0 && s_meta_get(self, "delta", buf, sizeof buf) != 1)
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: ledger has no stored delta", self->path);
        if (rc == 0) {
            char *end;
            double stored = strtod(buf, &end);
            if (end == buf || *end || !(stored > 0 && stored < 1))
                rc = medfl_error_set(MEDFL_EFORMAT, "%s: stored delta '%s' is malformed",
                                     self->path, buf);
            else if (stored != self->delta)
                rc = medfl_error_set(
                    MEDFL_ECONFIG,
                    "%s: this ledger was started with delta = %g, the configuration says "
                    "privacy.delta = %g. Every epsilon in it, and the budget it enforces, is "
                    "stated at delta = %g; accepting another delta would silently re-price the "
                    "rounds already trained. Set privacy.delta = %g again, or, if the privacy "
                    "officer decides to restate the guarantee, start a new ledger file knowing "
                    "that the rounds recorded here still count towards the patients' real loss",
                    self->path, stored, self->delta, stored, stored);
        }
    }
    if (rc != 0) {
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    return s_exec(self, "COMMIT", "committing");
}

ledger_t *ledger_open(const char *path, double epsilon_budget, double delta,
                      ledger_mode_t mode)
{
    if (!(epsilon_budget > 0) || isinf(epsilon_budget)) {
        medfl_error_set(MEDFL_EINVAL, "%s: epsilon budget %g: must be finite and > 0", path,
                        epsilon_budget);
        return NULL;
    }
    if (!(delta > 0 && delta < 1)) {
        medfl_error_set(MEDFL_EINVAL, "%s: delta %g: must be in (0, 1)", path, delta);
        return NULL;
    }
    struct stat sb;
    if (mode == LEDGER_OPEN_EXISTING && stat(path, &sb) != 0) {
        medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO,
                        "%s: privacy ledger not found: %s (the node creates it before its first "
                        "round)", path, strerror(errno));
        return NULL;
    }
    ledger_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = strdup(path))) {
        free(self);
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    self->budget = epsilon_budget;
    self->delta = delta;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX |
                (mode == LEDGER_CREATE ? SQLITE_OPEN_CREATE : 0);
    if (sqlite3_open_v2(path, &self->db, flags, NULL) != SQLITE_OK) {
        medfl_error_set(MEDFL_EDB, "%s: cannot open privacy ledger: %s", path,
                        self->db ? sqlite3_errmsg(self->db) : "out of memory");
        ledger_destroy(&self);
        return NULL;
    }
    sqlite3_busy_timeout(self->db, 5000);
    /* WAL: readers (the CLI) never block the daemon; FULL: a decision that returned is on
     * disk before training starts. */
    if (s_exec(self, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", "opening") != 0 ||
        s_init(self) != 0) {
        ledger_destroy(&self);
        return NULL;
    }
    return self;
}

void ledger_destroy(ledger_t **self_p)
{
    if (!self_p || !*self_p) return;
    ledger_t *self = *self_p;
    if (self->db) sqlite3_close(self->db);
    free(self->path);
    free(self);
    *self_p = NULL;
}

double ledger_budget(const ledger_t *self) { return self->budget; }
double ledger_delta(const ledger_t *self) { return self->delta; }
const char *ledger_path(const ledger_t *self) { return self->path; }

/* Accountant over the admitted rows. RDP is linear in steps, so rows with equal (q, σ)
 * are summed in SQL and each distinct pair costs one series evaluation. */
static dp_accountant_t *s_history(ledger_t *self)
{
    dp_accountant_t *acc = dp_accountant_new(NULL, 0);
    if (!acc) return NULL;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT q, sigma, SUM(steps) FROM rounds WHERE status = 'admitted' "
                           "GROUP BY q, sigma", -1, &st, NULL) != SQLITE_OK) {
        s_db_error(self, "reading rounds");
        dp_accountant_destroy(&acc);
        return NULL;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        double q = sqlite3_column_double(st, 0), sigma = sqlite3_column_double(st, 1);
        int64_t steps = sqlite3_column_int64(st, 2);
        if (dp_accountant_add(acc, q, sigma, steps) != 0) {
            medfl_error_prefix("%s: stored round: ", self->path);
            rc = -1;
            break;
        }
    }
    if (rc != SQLITE_DONE) {
        if (rc != -1) s_db_error(self, "reading rounds");
        dp_accountant_destroy(&acc);
    }
    sqlite3_finalize(st);
    return acc;
}

static int s_check_plan(ledger_t *self, double q, double sigma, int64_t steps)
{
    if (!(q >= 0 && q <= 1) || !(sigma >= 0) || isinf(sigma) || steps < 0)
        return medfl_error_set(MEDFL_EINVAL,
                               "%s: planned round q=%g sigma=%g steps=%lld: q must be in "
                               "[0, 1], sigma finite >= 0, steps >= 0",
                               self->path, q, sigma, (long long)steps);
    return 0;
}

static int s_eps_after(ledger_t *self, double q, double sigma, int64_t steps, double *eps)
{
    dp_accountant_t *acc = s_history(self);
    if (!acc) return -1;
    double order;
    int rc = dp_accountant_epsilon_if(acc, q, sigma, steps, self->delta, DP_CONV_IMPROVED, eps,
                                      &order);
    dp_accountant_destroy(&acc);
    return rc;
}

int ledger_would_exceed(ledger_t *self, double q, double sigma, int64_t steps,
                        bool *exceeds, double *eps_after)
{
    if (s_check_plan(self, q, sigma, steps) != 0) return -1;
    double eps;
    if (s_eps_after(self, q, sigma, steps, &eps) != 0) return -1;
    *exceeds = !(eps <= self->budget);
    if (eps_after) *eps_after = eps;
    return 0;
}

static int s_insert(ledger_t *self, int64_t round_id, ledger_status_t status, double q,
                    double sigma, int64_t steps, double eps, const char *reason)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(self->db,
                           "INSERT INTO rounds(round_id, ts, status, q, sigma, steps, delta, "
                           "epsilon, budget, reason) VALUES(?,?,?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        return s_db_error(self, "appending round");
    sqlite3_bind_int64(st, 1, round_id);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)time(NULL));
    sqlite3_bind_text(st, 3, status == LEDGER_ADMITTED ? "admitted" : "declined", -1,
                      SQLITE_STATIC);
    sqlite3_bind_double(st, 4, q);
    sqlite3_bind_double(st, 5, sigma);
    sqlite3_bind_int64(st, 6, steps);
    sqlite3_bind_double(st, 7, self->delta);
    /* SQLite stores +inf as a REAL; NaN would become NULL and break NOT NULL. */
    sqlite3_bind_double(st, 8, isnan(eps) ? INFINITY : eps);
    sqlite3_bind_double(st, 9, self->budget);
    sqlite3_bind_text(st, 10, reason ? reason : "", -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : s_db_error(self, "appending round");
    sqlite3_finalize(st);
    return rc;
}

static double s_spent_in_tx(ledger_t *self, int *rc)
{
    double eps = NAN, order;
    dp_accountant_t *acc = s_history(self);
    *rc = acc ? dp_accountant_epsilon(acc, self->delta, DP_CONV_IMPROVED, &eps, &order) : -1;
    dp_accountant_destroy(&acc);
    return eps;
}

int ledger_admit_round(ledger_t *self, int64_t round_id, double q, double sigma, int64_t steps,
                       double *eps_after, char *reason, size_t reason_size)
{
    if (s_check_plan(self, q, sigma, steps) != 0) return -1;
    if (s_exec(self, "BEGIN IMMEDIATE", "starting transaction") != 0) return -1;
    int rc;
    double before = s_spent_in_tx(self, &rc), after = NAN;
    if (rc == 0) rc = s_eps_after(self, q, sigma, steps, &after);
    int admitted = 0;
    char why[LEDGER_REASON_MAX] = "";
    if (rc == 0) {
        admitted = after <= self->budget;
        if (!admitted && isinf(before))
            snprintf(why, sizeof why,
                     "privacy budget: this node contributed rounds without DP (rows of epsilon "
                     "inf in its ledger): no (epsilon, delta) bound holds any more, so round "
                     "%lld (q=%g, sigma=%g, %lld steps) is declined without training",
                     (long long)round_id, q, sigma, (long long)steps);
        else if (!admitted)
            snprintf(why, sizeof why,
                     "privacy budget: round %lld (q=%g, sigma=%g, %lld steps) would raise "
                     "epsilon from %.4f to %.4f at delta=%g, above this node's budget %.4f; "
                     "declined without training",
                     (long long)round_id, q, sigma, (long long)steps, before, after,
                     self->delta, self->budget);
        rc = s_insert(self, round_id, admitted ? LEDGER_ADMITTED : LEDGER_DECLINED, q, sigma,
                      steps, after, why);
    }
    if (rc == 0) rc = s_exec(self, "COMMIT", "committing round");
    if (rc != 0) {
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    if (admitted)
        LOG_INFO(PRIVACY, "round %lld admitted: epsilon %.4f -> %.4f of budget %.4f (delta %g)",
                 (long long)round_id, before, after, self->budget, self->delta);
    else
        LOG_WARN(PRIVACY, "%s", why);
    if (eps_after) *eps_after = after;
    if (reason && reason_size) snprintf(reason, reason_size, "%s", why);
    return admitted;
}

int ledger_record_declined(ledger_t *self, int64_t round_id, double q, double sigma,
                           int64_t steps, const char *reason)
{
    if (s_check_plan(self, q, sigma, steps) != 0) return -1;
    if (!reason || !*reason)
        return medfl_error_set(MEDFL_EINVAL, "%s: a declined round needs a reason", self->path);
    if (s_exec(self, "BEGIN IMMEDIATE", "starting transaction") != 0) return -1;
    double after = NAN;
    int rc = s_eps_after(self, q, sigma, steps, &after);
    if (rc == 0) rc = s_insert(self, round_id, LEDGER_DECLINED, q, sigma, steps, after, reason);
    if (rc == 0) rc = s_exec(self, "COMMIT", "committing round");
    if (rc != 0) {
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    LOG_WARN(PRIVACY, "round %lld declined: %s", (long long)round_id, reason);
    return 0;
}

int ledger_record_no_dp(ledger_t *self, int64_t round_id, int64_t steps, const char *reason)
{
    if (steps < 0)
        return medfl_error_set(MEDFL_EINVAL, "%s: planned round steps=%lld: must be >= 0",
                               self->path, (long long)steps);
    if (!reason || !*reason)
        return medfl_error_set(MEDFL_EINVAL, "%s: a round without DP needs a reason", self->path);
    /* q = 1, σ = 0: the accountant prices the row at infinite RDP (no noise, no privacy),
     * so the composition over the history says what it is. */
    if (s_exec(self, "BEGIN IMMEDIATE", "starting transaction") != 0) return -1;
    int rc = s_insert(self, round_id, LEDGER_ADMITTED, 1.0, 0.0, steps, INFINITY, reason);
    if (rc == 0) rc = s_exec(self, "COMMIT", "committing round");
    if (rc != 0) {
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    LOG_WARN(PRIVACY, "round %lld contributed WITHOUT differential privacy (epsilon infinite): %s",
             (long long)round_id, reason);
    return 0;
}

int ledger_spent(ledger_t *self, double *eps, double *opt_order)
{
    dp_accountant_t *acc = s_history(self);
    if (!acc) return -1;
    double order;
    int rc = dp_accountant_epsilon(acc, self->delta, DP_CONV_IMPROVED, eps, &order);
    if (opt_order) *opt_order = order;
    dp_accountant_destroy(&acc);
    return rc;
}

int ledger_remaining(ledger_t *self, double *remaining)
{
    double eps;
    if (ledger_spent(self, &eps, NULL) != 0) return -1;
    *remaining = eps >= self->budget ? 0.0 : self->budget - eps;
    return 0;
}

int ledger_count(ledger_t *self, int64_t *admitted, int64_t *declined)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT COALESCE(SUM(status = 'admitted'), 0), "
                           "COALESCE(SUM(status = 'declined'), 0) FROM rounds", -1, &st,
                           NULL) != SQLITE_OK)
        return s_db_error(self, "counting rounds");
    int rc = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        if (admitted) *admitted = sqlite3_column_int64(st, 0);
        if (declined) *declined = sqlite3_column_int64(st, 1);
    } else {
        rc = s_db_error(self, "counting rounds");
    }
    sqlite3_finalize(st);
    return rc;
}

int ledger_noise_for_remaining(ledger_t *self, double q, int64_t steps, double *sigma)
{
    dp_accountant_t *acc = s_history(self);
    if (!acc) return -1;
    int rc = dp_noise_multiplier(acc, self->budget, q, steps, self->delta, DP_CONV_IMPROVED,
                                 0.01, sigma);
    dp_accountant_destroy(&acc);
    if (rc != 0) medfl_error_prefix("%s: ", self->path);
    return rc;
}

int ledger_foreach(ledger_t *self, int (*fn)(const ledger_entry_t *entry, void *arg),
                   void *arg)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT seq, round_id, ts, status, q, sigma, steps, delta, epsilon, "
                           "budget, reason FROM rounds ORDER BY seq", -1, &st, NULL) != SQLITE_OK)
        return s_db_error(self, "reading rounds");
    int rc, out = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        ledger_entry_t e = {0};
        e.seq = sqlite3_column_int64(st, 0);
        e.round_id = sqlite3_column_int64(st, 1);
        e.timestamp = sqlite3_column_int64(st, 2);
        const char *status = (const char *)sqlite3_column_text(st, 3);
        e.status = status && strcmp(status, "declined") == 0 ? LEDGER_DECLINED : LEDGER_ADMITTED;
        e.q = sqlite3_column_double(st, 4);
        e.sigma = sqlite3_column_double(st, 5);
        e.steps = sqlite3_column_int64(st, 6);
        e.delta = sqlite3_column_double(st, 7);
        e.epsilon = sqlite3_column_double(st, 8);
        e.budget = sqlite3_column_double(st, 9);
        const char *why = (const char *)sqlite3_column_text(st, 10);
        snprintf(e.reason, sizeof e.reason, "%s", why ? why : "");
        /* Only ledger_record_no_dp writes an admitted row at σ = 0 with infinite ε. */
        e.no_dp = e.status == LEDGER_ADMITTED && e.sigma == 0 && isinf(e.epsilon);
        if ((out = fn(&e, arg)) != 0) break;
    }
    if (out == 0 && rc != SQLITE_DONE) out = s_db_error(self, "reading rounds");
    sqlite3_finalize(st);
    return out;
}
