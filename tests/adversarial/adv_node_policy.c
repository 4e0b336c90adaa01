/* Attack (issue #16 item 2): the aggregator decided whether a hospital used DP. node/round.c
 * took dp.enabled, sigma, q and C from the RoundStart alone, so an aggregator config with
 * `privacy.dp = off` (or a malicious aggregator rewriting one node's RoundStart) got raw,
 * un-noised updates from nodes whose budget was 0.001, with nothing in their ledgers.
 *
 * Now every node checks the round against its own policy (privacy.require_dp,
 * min_noise_multiplier on the accounted sigma, max_sample_rate, max_clip_norm, delta at most
 * privacy.delta) before it trains: outside it, the node declines with PRIVACY_POLICY and the
 * reason, the aggregator logs that reason, the ledger records the decline, nothing is
 * trained. A DP-off round is taken only by a node whose policy allows it, and its ledger
 * then holds a no-DP row (epsilon infinite) that also ends its DP budget.
 *
 * In-process federation (tests/unit/fedlib.h): real aggregator rounds_t, real node_round. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "aggregator/rounds.h"
#include "common/service.h"
#include "node/ledger.h"
#include "node/round.h"
#include "tests/unit/fedlib.h"
#include "tests/unit/testlib.h"

static const char *s_root;

/* Steps until every line in want[] was logged or max_ms passed, then a little more (so a
 * contribution that should not come would have had time to). */
static void s_run_until_logged(fed_t *f, const char *const *want, size_t n, int64_t max_ms)
{
    int64_t end = service_now_ms() + max_ms;
    for (;;) {
        size_t seen = 0;
        for (size_t i = 0; i < n; i++) seen += testlib_log_has(want[i]);
        if (seen == n || service_now_ms() >= end) break;
        fed_step(f);
    }
    for (int k = 0; k < 50; k++) fed_step(f);
    for (size_t i = 0; i < n; i++)
        if (!testlib_log_has(want[i])) fail_msg("not logged: %s", want[i]);
}

static void s_ledger_counts(fed_t *f, size_t i, int64_t *admitted, int64_t *declined)
{
    assert_int_equal(ledger_count(f->ledger[i], admitted, declined), 0);
}

/* Every node keeps the safe default: DP required, sigma >= 0.5. */
static void s_default_policies(fed_t *f)
{
    node_round_policy_t p;
    node_round_policy_default(&p);
    for (size_t i = 0; i < f->n; i++) fed_node_policy(f, i, &p);
}

/* (a) The consortium's aggregator runs with DP off: every node declines, nothing trains,
 * no version is committed, no ledger holds a contribution. */
static void s_dp_off_aggregator(bool secure)
{
    fed_t f;
    testlib_log_reset();
    fed_init_budget(&f, s_root, 3, secure, "none", FED_ALL_TINY);
    s_default_policies(&f);
    f.cfg.dp_enabled = false;
    f.cfg.fed_rounds = 1;
    const char *want[] = {
        "node h0 declined round 1: privacy policy: the round asks for no DP-SGD",
        "node h1 declined round 1: privacy policy: the round asks for no DP-SGD",
        "node h2 declined round 1: privacy policy: the round asks for no DP-SGD",
    };
    s_run_until_logged(&f, want, 3, 10000);
    assert_true(testlib_log_has("this node's privacy.require_dp is on"));
    assert_false(testlib_log_has("privacy policy: privacy policy")); /* named once */
    assert_int_equal(rounds_completed(f.rounds), 0);
    assert_int_equal(rounds_head_version(f.rounds), 1); /* the genesis only */
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(node_round_contributed(f.node[i]), 0);
        assert_true(node_round_declined(f.node[i]) >= 1);
        assert_int_equal(f.tt[i].calls, 0); /* nothing trained */
        int64_t admitted = -1, declined = -1;
        s_ledger_counts(&f, i, &admitted, &declined);
        assert_int_equal(admitted, 0);
        assert_true(declined >= 1); /* the attempt is in the audit */
        double spent = -1;
        assert_int_equal(ledger_spent(f.ledger[i], &spent, NULL), 0);
        assert_true(spent == 0.0);
    }
    fed_free(&f);
}

static void test_dp_off_aggregator_plain(void **state)
{
    (void)state;
    s_dp_off_aggregator(false);
}

static void test_dp_off_aggregator_secure(void **state)
{
    (void)state;
    s_dp_off_aggregator(true);
}

typedef struct {
    int64_t round_id;
    char reason[LEDGER_REASON_MAX];
    double q, sigma;
    bool declined;
} last_row_t;

static int s_last_row(const ledger_entry_t *e, void *arg)
{
    last_row_t *r = arg;
    r->round_id = e->round_id;
    snprintf(r->reason, sizeof r->reason, "%s", e->reason);
    r->q = e->q, r->sigma = e->sigma;
    r->declined = e->status == LEDGER_DECLINED;
    return 0;
}

/* (b) DP on, but sigma below h0's floor, q above h1's ceiling, C above h2's ceiling: each
 * declines with its own reason; h3 (default policy) contributes alone. */
static void test_round_outside_policy(void **state)
{
    (void)state;
    fed_t f;
    testlib_log_reset();
    fed_init(&f, s_root, 4, false, "none");
    s_default_policies(&f);
    node_round_policy_t p;
    node_round_policy_default(&p);
    p.min_noise_multiplier = 2.0;
    fed_node_policy(&f, 0, &p);
    node_round_policy_default(&p);
    p.max_sample_rate = 0.01;
    fed_node_policy(&f, 1, &p);
    node_round_policy_default(&p);
    p.max_clip_norm = 0.5;
    fed_node_policy(&f, 2, &p);
    f.cfg.dp_enabled = true;
    f.cfg.dp_noise = 1.0;
    f.cfg.dp_sample_rate = 0.02;
    f.cfg.dp_clip = 1.0;
    f.cfg.fed_quorum = 0.25;
    f.cfg.fed_rounds = 1;
    fed_run_until_completed(&f, 1, 20000);
    assert_true(testlib_log_has("node h0 declined round 1: privacy policy: the round's noise "
                                "multiplier 1 (accounted sigma 1) is below this node's "
                                "privacy.min_noise_multiplier 2"));
    assert_true(testlib_log_has("node h1 declined round 1: privacy policy: the round's sample "
                                "rate 0.02 is not in (0, 0.01] (privacy.max_sample_rate)"));
    assert_true(testlib_log_has("node h2 declined round 1: privacy policy: the round's clip norm "
                                "1 is not in (0, 0.5] (privacy.max_clip_norm)"));
    assert_false(testlib_log_has("node h3 declined"));
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(node_round_contributed(f.node[i]), 0);
        assert_int_equal(f.tt[i].calls, 0);
        int64_t admitted = -1, declined = -1;
        s_ledger_counts(&f, i, &admitted, &declined);
        assert_int_equal(admitted, 0);
        assert_int_equal(declined, 1);
    }
    /* the decline row holds the round's parameters and the reason */
    last_row_t row = {0};
    assert_int_equal(ledger_foreach(f.ledger[0], s_last_row, &row), 0);
    assert_true(row.declined);
    assert_int_equal(row.round_id, 1);
    assert_true(row.q == 0.02 && row.sigma == 1.0);
    assert_non_null(strstr(row.reason, "privacy.min_noise_multiplier 2"));
    assert_int_equal(node_round_contributed(f.node[3]), 1);
    int64_t admitted = -1, declined = -1;
    s_ledger_counts(&f, 3, &admitted, &declined);
    assert_int_equal(admitted, 1);
    assert_int_equal(declined, 0);
    double want[FED_DIM];
    fed_mean_delta(0x8, want);
    fed_check_head(&f, want, 1e-6);
    fed_free(&f);
}

/* (c) A malicious aggregator runs DP rounds for the consortium but rewrites what single
 * nodes receive: h0's RoundStart says DP off, h1's a weaker delta, h2's a sample rate that is
 * not a number. Each declines for its policy; h3, sent the honest round, contributes alone. */
static void s_rewrite(fed_t *f, size_t i, wire_msg_t *msg, bool *deliver, void *ctx)
{
    (void)f, (void)deliver, (void)ctx;
    if (msg->type != MEDFL__MSG_TYPE__MSG_ROUND_START || !msg->body.round_start->dp) return;
    Medfl__DpParams *dp = msg->body.round_start->dp;
    if (i == 0) dp->enabled = false;
    if (i == 1) dp->delta = 1e-3;
    if (i == 2) dp->sample_rate = NAN;
}

static void test_malicious_aggregator_rewrites(void **state)
{
    (void)state;
    fed_t f;
    testlib_log_reset();
    fed_init(&f, s_root, 4, false, "none");
    s_default_policies(&f);
    f.intercept = s_rewrite;
    f.cfg.dp_enabled = true;
    f.cfg.fed_quorum = 0.25;
    f.cfg.fed_rounds = 1;
    fed_run_until_completed(&f, 1, 20000);
    assert_true(testlib_log_has("node h0 declined round 1: privacy policy: the round asks for "
                                "no DP-SGD"));
    assert_true(testlib_log_has("node h1 declined round 1: privacy policy: the round states "
                                "delta 0.001, above this node's privacy.delta 1e-05"));
    assert_true(testlib_log_has("node h2 declined round 1: privacy policy: the round's sample "
                                "rate nan is not in (0, 1]"));
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(node_round_contributed(f.node[i]), 0);
        assert_int_equal(f.tt[i].calls, 0);
        int64_t admitted = -1, declined = -1;
        s_ledger_counts(&f, i, &admitted, &declined);
        assert_int_equal(admitted, 0);
        assert_int_equal(declined, 1);
    }
    /* a value that is not a number is not stored as one: the reason names it */
    last_row_t row = {0};
    assert_int_equal(ledger_foreach(f.ledger[2], s_last_row, &row), 0);
    assert_true(row.declined && row.q == 1.0 && row.sigma == 0.0);
    assert_non_null(strstr(row.reason, "sample rate nan"));
    assert_int_equal(node_round_contributed(f.node[3]), 1);
    double want[FED_DIM];
    fed_mean_delta(0x8, want);
    fed_check_head(&f, want, 1e-6);
    fed_free(&f);
}

typedef struct {
    int rows, no_dp;
    double last_eps;
    char reason[LEDGER_REASON_MAX];
} no_dp_walk_t;

static int s_no_dp_walk(const ledger_entry_t *e, void *arg)
{
    no_dp_walk_t *w = arg;
    w->rows++;
    w->no_dp += e->no_dp;
    w->last_eps = e->epsilon;
    if (e->no_dp) snprintf(w->reason, sizeof w->reason, "%s", e->reason);
    return 0;
}

/* (d) A hospital whose officer set privacy.require_dp = false takes the DP-off round (h1,
 * default policy, declines it); its ledger holds the round as a no-DP row with epsilon
 * infinite, and from then on its (epsilon, delta) budget is spent: the next round, with DP
 * on, it declines for budget while h1 contributes. */
static void test_non_dp_round_allowed_and_recorded(void **state)
{
    (void)state;
    fed_t f;
    testlib_log_reset();
    fed_init(&f, s_root, 2, false, "none");
    s_default_policies(&f);
    node_round_policy_t p;
    node_round_policy_default(&p);
    p.require_dp = false;
    fed_node_policy(&f, 0, &p);
    f.cfg.dp_enabled = false;
    f.cfg.fed_rounds = 1;
    fed_run_until_completed(&f, 1, 20000);
    assert_true(testlib_log_has("node h1 declined round 1: privacy policy"));
    assert_true(testlib_log_has("round 1 contributed WITHOUT differential privacy"));
    assert_int_equal(node_round_contributed(f.node[0]), 1);
    assert_int_equal(node_round_contributed(f.node[1]), 0);
    double want[FED_DIM];
    fed_mean_delta(0x1, want);
    fed_check_head(&f, want, 1e-6);
    no_dp_walk_t w = {0};
    assert_int_equal(ledger_foreach(f.ledger[0], s_no_dp_walk, &w), 0);
    assert_int_equal(w.rows, 1);
    assert_int_equal(w.no_dp, 1);
    assert_true(isinf(w.last_eps));
    assert_non_null(strstr(w.reason, "privacy.require_dp is off"));
    double spent = 0;
    assert_int_equal(ledger_spent(f.ledger[0], &spent, NULL), 0);
    assert_true(isinf(spent));

    /* round 2 with DP on: h0's guarantee is gone, its ledger declines; h1 contributes */
    f.cfg.dp_enabled = true;
    f.cfg.fed_rounds = 2;
    rounds_on_reload(f.rounds); /* as the daemon does on SIGHUP: h1 declined for its policy and
                                 * is not selected again until the settings change */
    fed_run_until_completed(&f, 2, 20000);
    assert_true(testlib_log_has("node h0 declined round 2: privacy budget"));
    assert_int_equal(node_round_contributed(f.node[0]), 1);
    assert_int_equal(node_round_contributed(f.node[1]), 1);
    double d1[FED_DIM];
    fed_mean_delta(0x2, d1);
    for (size_t i = 0; i < FED_DIM; i++) want[i] += d1[i];
    fed_check_head(&f, want, 1e-6);
    memset(&w, 0, sizeof w);
    assert_int_equal(ledger_foreach(f.ledger[0], s_no_dp_walk, &w), 0);
    assert_int_equal(w.rows, 2);
    assert_int_equal(w.no_dp, 1);
    fed_free(&f);
}

typedef struct {
    double sigma;
    int rows;
} sigma_row_t;

static int s_sigma_row(const ledger_entry_t *e, void *arg)
{
    sigma_row_t *r = arg;
    r->sigma = e->sigma;
    r->rows += e->status == LEDGER_ADMITTED;
    return 0;
}

/* The floor is on the sigma the ledger charges. Under distributed noise (secure round,
 * privacy.distributed on at the aggregator, linear trainers) a node adding only its share is
 * charged the accounted sigma, a little below the round's 1.0. h0's floor is 1.0: it must not
 * share (that would spend more than its policy allows per round) but add all of sigma itself
 * and be charged 1.0; h1 and h2 (floor 0.5) share. */
static void test_floor_on_accounted_sigma(void **state)
{
    (void)state;
    fed_t f;
    testlib_log_reset();
    fed_init(&f, s_root, 3, true, "none");
    node_round_policy_t p;
    node_round_policy_default(&p);
    for (size_t i = 0; i < 3; i++) {
        f.tt[i].linear = true;
        fed_node_policy(&f, i, &p);
    }
    p.min_noise_multiplier = 1.0;
    fed_node_policy(&f, 0, &p);
    f.cfg.dp_enabled = true;
    f.cfg.dp_distributed = true;
    f.cfg.dp_noise = 1.0;
    f.cfg.fed_threshold = 1.0;
    f.cfg.fed_rounds = 1;
    fed_run_until_completed(&f, 1, 20000);
    assert_true(testlib_log_has("round 1 offers distributed noise; this node adds all of sigma "
                                "itself: its accounted sigma 0.9999"));
    assert_true(testlib_log_has("would be below this node's privacy.min_noise_multiplier 1"));
    sigma_row_t r[3] = {{0}};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(node_round_contributed(f.node[i]), 1);
        assert_int_equal(ledger_foreach(f.ledger[i], s_sigma_row, &r[i]), 0);
        assert_int_equal(r[i].rows, 1);
    }
    assert_true(r[0].sigma == 1.0);
    for (size_t i = 1; i < 3; i++) assert_true(r[i].sigma >= 0.8 && r[i].sigma < 1.0);
    fed_free(&f);
}

static int s_setup(void **state)
{
    (void)state;
    return (s_root = testlib_setup("adv_node_policy", true, LOG_LEVEL_DEBUG)) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    return testlib_teardown();
}

int main(int argc, char **argv)
{
    if (argc > 1) cmocka_set_test_filter(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dp_off_aggregator_plain),
        cmocka_unit_test(test_dp_off_aggregator_secure),
        cmocka_unit_test(test_round_outside_policy),
        cmocka_unit_test(test_malicious_aggregator_rewrites),
        cmocka_unit_test(test_non_dp_round_allowed_and_recorded),
        cmocka_unit_test(test_floor_on_accounted_sigma),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
