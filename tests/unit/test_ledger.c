/* node/ledger: budget enforcement across a simulated restart, δ mismatch refusal, missing,
 * corrupt and foreign database files, append-only guarantee, history iteration and the
 * noise-for-remaining-budget helper. Each test works in its own temporary folder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dp.h"
#include "common/error.h"
#include "common/log.h"
#include "node/ledger.h"

static char s_dir[] = "/tmp/medfl-test-ledger-XXXXXX";
static char s_path[700];

static const char *s_file(const char *name)
{
    snprintf(s_path, sizeof s_path, "%s/%s", s_dir, name);
    return s_path;
}

static int s_setup(void **state)
{
    (void)state;
    log_configure(fopen("/dev/null", "w"), LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char cmd[800];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ε after k rounds of (q, σ, steps), from the accountant directly. */
static double s_eps_after(int k, double q, double sigma, int64_t steps)
{
    dp_accountant_t *acc = dp_accountant_new(NULL, 0);
    assert_non_null(acc);
    for (int i = 0; i < k; i++) assert_int_equal(dp_accountant_add(acc, q, sigma, steps), 0);
    double eps, order;
    assert_int_equal(dp_accountant_epsilon(acc, 1e-5, DP_CONV_IMPROVED, &eps, &order), 0);
    dp_accountant_destroy(&acc);
    return eps;
}

typedef struct {
    int n, admitted, declined;
    double last_eps;
    bool increasing;
    char last_reason[LEDGER_REASON_MAX];
} walk_t;

static int s_walk(const ledger_entry_t *e, void *arg)
{
    walk_t *w = arg;
    w->n++;
    assert_int_equal(e->seq, w->n);
    assert_true(e->delta == 1e-5);
    assert_true(e->timestamp > 1600000000);
    if (e->status == LEDGER_ADMITTED) {
        w->admitted++;
        if (!(e->epsilon > w->last_eps)) w->increasing = false;
        w->last_eps = e->epsilon;
        assert_string_equal(e->reason, "");
    } else {
        w->declined++;
        snprintf(w->last_reason, sizeof w->last_reason, "%s", e->reason);
    }
    return 0;
}

static void test_budget_k_rounds_then_decline_survives_restart(void **state)
{
    (void)state;
    const double q = 0.01, sigma = 1.0;
    const int64_t steps = 200;
    const int k = 3;
    double e3 = s_eps_after(k, q, sigma, steps), e4 = s_eps_after(k + 1, q, sigma, steps);
    double budget = (e3 + e4) / 2;
    const char *path = s_file("budget.db");

    ledger_t *l = ledger_open(path, budget, 1e-5, LEDGER_CREATE);
    assert_non_null(l);
    double spent, order, eps_after;
    assert_int_equal(ledger_spent(l, &spent, &order), 0);
    assert_true(spent == 0.0);
    char reason[LEDGER_REASON_MAX];
    for (int r = 1; r <= k; r++) {
        bool exceeds;
        assert_int_equal(ledger_would_exceed(l, q, sigma, steps, &exceeds, &eps_after), 0);
        assert_false(exceeds);
        assert_int_equal(ledger_admit_round(l, r, q, sigma, steps, &eps_after, reason, sizeof reason), 1);
        assert_true(fabs(eps_after - s_eps_after(r, q, sigma, steps)) < 1e-12);
        assert_string_equal(reason, "");
    }
    bool exceeds;
    assert_int_equal(ledger_would_exceed(l, q, sigma, steps, &exceeds, &eps_after), 0);
    assert_true(exceeds);
    assert_true(fabs(eps_after - e4) < 1e-12);
    assert_int_equal(ledger_admit_round(l, k + 1, q, sigma, steps, &eps_after, reason, sizeof reason), 0);
    assert_non_null(strstr(reason, "privacy budget"));
    assert_non_null(strstr(reason, "round 4"));
    assert_non_null(strstr(reason, "declined"));
    int64_t adm, dec;
    assert_int_equal(ledger_count(l, &adm, &dec), 0);
    assert_int_equal(adm, k);
    assert_int_equal(dec, 1);
    assert_int_equal(ledger_spent(l, &spent, &order), 0);
    assert_true(fabs(spent - e3) < 1e-12);
    double rem;
    assert_int_equal(ledger_remaining(l, &rem), 0);
    assert_true(fabs(rem - (budget - e3)) < 1e-12);
    ledger_destroy(&l);
    ledger_destroy(&l);

    /* Restart: a new process opens the same file and still declines. */
    l = ledger_open(path, budget, 1e-5, LEDGER_OPEN_EXISTING);
    assert_non_null(l);
    assert_int_equal(ledger_spent(l, &spent, &order), 0);
    assert_true(fabs(spent - e3) < 1e-12);
    assert_int_equal(ledger_admit_round(l, k + 2, q, sigma, steps, &eps_after, reason, sizeof reason), 0);
    assert_non_null(strstr(reason, "round 5"));
    /* A smaller round can still fit: only what would pass the budget is declined. */
    assert_int_equal(ledger_admit_round(l, k + 3, q, sigma, 1, &eps_after, NULL, 0), 1);
    assert_true(eps_after <= budget);
    walk_t w = {.increasing = true};
    assert_int_equal(ledger_foreach(l, s_walk, &w), 0);
    assert_int_equal(w.n, k + 3);
    assert_int_equal(w.admitted, k + 1);
    assert_int_equal(w.declined, 2);
    assert_true(w.increasing);
    assert_non_null(strstr(w.last_reason, "round 5"));
    ledger_destroy(&l);

    /* Raising the budget is a policy decision the ledger accepts. */
    l = ledger_open(path, budget * 3, 1e-5, LEDGER_OPEN_EXISTING);
    assert_non_null(l);
    assert_int_equal(ledger_admit_round(l, 9, q, sigma, steps, NULL, NULL, 0), 1);
    ledger_destroy(&l);
}

static void test_noise_for_remaining(void **state)
{
    (void)state;
    const char *path = s_file("noise.db");
    ledger_t *l = ledger_open(path, 4.0, 1e-5, LEDGER_CREATE);
    assert_non_null(l);
    assert_int_equal(ledger_admit_round(l, 1, 0.02, 1.2, 500, NULL, NULL, 0), 1);
    double sigma, eps_after, spent;
    assert_int_equal(ledger_noise_for_remaining(l, 0.02, 500, &sigma), 0);
    assert_int_equal(ledger_spent(l, &spent, NULL), 0);
    bool exceeds;
    assert_int_equal(ledger_would_exceed(l, 0.02, sigma, 500, &exceeds, &eps_after), 0);
    assert_false(exceeds);
    assert_true(eps_after > 4.0 - 0.011);
    /* Slightly less noise than that no longer fits. */
    assert_int_equal(ledger_would_exceed(l, 0.02, sigma * 0.9, 500, &exceeds, &eps_after), 0);
    assert_true(exceeds);
    ledger_destroy(&l);
}

static void test_delta_mismatch_refused(void **state)
{
    (void)state;
    const char *path = s_file("delta.db");
    ledger_t *l = ledger_open(path, 5.0, 1e-5, LEDGER_CREATE);
    assert_non_null(l);
    assert_int_equal(ledger_admit_round(l, 1, 0.01, 1.0, 10, NULL, NULL, 0), 1);
    ledger_destroy(&l);
    assert_null(ledger_open(path, 5.0, 1e-6, LEDGER_OPEN_EXISTING));
    assert_int_equal(medfl_error_code(), MEDFL_ECONFIG);
    const char *msg = medfl_error_message();
    assert_non_null(strstr(msg, "delta = 1e-05"));
    assert_non_null(strstr(msg, "privacy.delta = 1e-06"));
    assert_non_null(strstr(msg, "delta.db"));
    /* Still readable with the right δ, and nothing was lost. */
    l = ledger_open(path, 5.0, 1e-5, LEDGER_OPEN_EXISTING);
    assert_non_null(l);
    int64_t adm;
    assert_int_equal(ledger_count(l, &adm, NULL), 0);
    assert_int_equal(adm, 1);
    ledger_destroy(&l);
}

static void test_missing_corrupt_foreign(void **state)
{
    (void)state;
    assert_null(ledger_open(s_file("absent.db"), 1.0, 1e-5, LEDGER_OPEN_EXISTING));
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_non_null(strstr(medfl_error_message(), "absent.db"));
    assert_int_equal(access(s_file("absent.db"), F_OK), -1); /* not created */

    const char *corrupt = s_file("corrupt.db");
    FILE *f = fopen(corrupt, "w");
    assert_non_null(f);
    for (int i = 0; i < 200; i++) fputs("this is not an sqlite database\n", f);
    fclose(f);
    assert_null(ledger_open(corrupt, 1.0, 1e-5, LEDGER_OPEN_EXISTING));
    assert_int_equal(medfl_error_code(), MEDFL_EDB);
    assert_non_null(strstr(medfl_error_message(), "corrupt.db"));
    assert_null(ledger_open(corrupt, 1.0, 1e-5, LEDGER_CREATE)); /* never overwritten */

    const char *foreign = s_file("foreign.db");
    sqlite3 *db;
    assert_int_equal(sqlite3_open(foreign, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE patients(id INTEGER)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_null(ledger_open(foreign, 1.0, 1e-5, LEDGER_CREATE));
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    assert_non_null(strstr(medfl_error_message(), "not a privacy ledger"));

    /* A truncated ledger (first page kept, rest cut) is an error, not an empty history. */
    const char *good = s_file("trunc.db");
    ledger_t *l = ledger_open(good, 3.0, 1e-5, LEDGER_CREATE);
    assert_non_null(l);
    for (int r = 0; r < 50; r++) assert_true(ledger_admit_round(l, r, 0.001, 2.0, 10, NULL, NULL, 0) == 1);
    ledger_destroy(&l);
    /* Merge the WAL into the main file so the truncation hits real content. */
    assert_int_equal(sqlite3_open(good, &db), SQLITE_OK);
    assert_int_equal(sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(truncate(good, 1500), 0);
    l = ledger_open(good, 3.0, 1e-5, LEDGER_OPEN_EXISTING);
    if (l) {
        double spent;
        assert_int_equal(ledger_spent(l, &spent, NULL), -1);
        ledger_destroy(&l);
    }
    assert_int_equal(medfl_error_code(), MEDFL_EDB);

    /* Bad arguments. */
    assert_null(ledger_open(s_file("x.db"), 0.0, 1e-5, LEDGER_CREATE));
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_null(ledger_open(s_file("x.db"), 1.0, 1.0, LEDGER_CREATE));
    assert_non_null(strstr(medfl_error_message(), "delta"));
}

static void test_append_only_and_bad_plans(void **state)
{
    (void)state;
    const char *path = s_file("append.db");
    ledger_t *l = ledger_open(path, 4.0, 1e-5, LEDGER_CREATE);
    assert_non_null(l);
    assert_int_equal(ledger_admit_round(l, 1, 0.01, 1.0, 100, NULL, NULL, 0), 1);
    assert_int_equal(ledger_record_declined(l, 2, 0.01, 1.0, 100, "fewer than 10 records"), 0);
    assert_int_equal(ledger_record_declined(l, 3, 0.01, 1.0, 100, ""), -1);
    assert_int_equal(ledger_admit_round(l, 4, 1.5, 1.0, 100, NULL, NULL, 0), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_int_equal(ledger_admit_round(l, 4, 0.1, -1.0, 100, NULL, NULL, 0), -1);
    assert_int_equal(ledger_admit_round(l, 4, 0.1, 1.0, -1, NULL, NULL, 0), -1);
    /* No noise: infinite ε is declined, never admitted. */
    char reason[LEDGER_REASON_MAX];
    assert_int_equal(ledger_admit_round(l, 5, 0.1, 0.0, 10, NULL, reason, sizeof reason), 0);
    assert_non_null(strstr(reason, "inf"));
    ledger_destroy(&l);

    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_not_equal(sqlite3_exec(db, "DELETE FROM rounds", NULL, NULL, NULL), SQLITE_OK);
    assert_non_null(strstr(sqlite3_errmsg(db), "append-only"));
    assert_int_not_equal(sqlite3_exec(db, "UPDATE rounds SET steps = 0", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    l = ledger_open(path, 4.0, 1e-5, LEDGER_OPEN_EXISTING);
    int64_t adm, dec;
    assert_int_equal(ledger_count(l, &adm, &dec), 0);
    assert_int_equal(adm, 1);
    assert_int_equal(dec, 2);
    walk_t w = {.increasing = true};
    assert_int_equal(ledger_foreach(l, s_walk, &w), 0);
    assert_int_equal(strncmp(w.last_reason, "privacy budget", 14), 0);
    ledger_destroy(&l);
}

typedef struct {
    int rows, no_dp;
    double eps, sigma, q;
    char reason[LEDGER_REASON_MAX];
} no_dp_t;

static int s_no_dp(const ledger_entry_t *e, void *arg)
{
    no_dp_t *w = arg;
    w->rows++;
    if (!e->no_dp) return 0;
    w->no_dp++;
    w->eps = e->epsilon, w->sigma = e->sigma, w->q = e->q;
    snprintf(w->reason, sizeof w->reason, "%s", e->reason);
    return 0;
}

/* A round contributed without DP (the node's policy allows it): an admitted row at q = 1,
 * sigma = 0 with epsilon infinite, which the composition then shows (spent = inf, remaining
 * 0, every later DP round declined); it survives a reopen. */
static void test_no_dp_round_recorded(void **state)
{
    (void)state;
    const char *path = s_file("nodp.db");
    ledger_t *l = ledger_open(path, 4.0, 1e-5, LEDGER_CREATE);
    assert_non_null(l);
    assert_int_equal(ledger_admit_round(l, 1, 0.01, 1.0, 100, NULL, NULL, 0), 1);
    double spent = 0;
    assert_int_equal(ledger_spent(l, &spent, NULL), 0);
    assert_true(spent > 0 && isfinite(spent));
    assert_int_equal(ledger_record_no_dp(l, 2, 3, ""), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_int_equal(ledger_record_no_dp(l, 2, -1, "no DP"), -1);
    assert_int_equal(ledger_record_no_dp(l, 2, 3, "no DP: policy allows it"), 0);
    ledger_destroy(&l);

    l = ledger_open(path, 4.0, 1e-5, LEDGER_OPEN_EXISTING);
    assert_non_null(l);
    assert_int_equal(ledger_spent(l, &spent, NULL), 0);
    assert_true(isinf(spent));
    double remaining = 1;
    assert_int_equal(ledger_remaining(l, &remaining), 0);
    assert_true(remaining == 0.0);
    char reason[LEDGER_REASON_MAX];
    assert_int_equal(ledger_admit_round(l, 3, 0.01, 1.0, 1, NULL, reason, sizeof reason), 0);
    assert_non_null(strstr(reason, "contributed rounds without DP"));
    no_dp_t w = {0};
    assert_int_equal(ledger_foreach(l, s_no_dp, &w), 0);
    assert_int_equal(w.rows, 3);
    assert_int_equal(w.no_dp, 1);
    assert_true(isinf(w.eps) && w.sigma == 0.0 && w.q == 1.0);
    assert_string_equal(w.reason, "no DP: policy allows it");
    int64_t adm, dec;
    assert_int_equal(ledger_count(l, &adm, &dec), 0);
    assert_int_equal(adm, 2);
    assert_int_equal(dec, 1);
    ledger_destroy(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_k_rounds_then_decline_survives_restart),
        cmocka_unit_test(test_noise_for_remaining),
        cmocka_unit_test(test_delta_mismatch_refused),
        cmocka_unit_test(test_missing_corrupt_foreign),
        cmocka_unit_test(test_append_only_and_bad_plans),
        cmocka_unit_test(test_no_dp_round_recorded),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
