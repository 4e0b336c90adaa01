/* SIGTERM drain and metrics hooks of the round state machines, in-process: aggregator/rounds.c
 * on a plain-mode wire server and three node/round.c participants on plain-mode clients,
 * driven by one loop (the same arrangement as test_rounds.c, reduced to what these cases
 * need). Covers: rounds_stop in the eval phase (the committed version makes the round
 * completed), in the secure shares phase (journaled aborted with the reason, nodes told at
 * once, a new aggregator object recovers nothing), and when idle (no-op); the metrics both
 * sides report (rounds, per-node weights, durations, epsilon, throughput) against the state
 * machines' own counters; a trainer interrupted by should_stop (no update, a dropout); and
 * node_round_checkpoint rewriting the error-feedback residual unchanged. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "aggregator/agg_config.h"
#include "aggregator/rounds.h"
#include "common/error.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/service.h"
#include "common/wire.h"
#include "node/ledger.h"
#include "node/round.h"
#include "tests/unit/testlib.h"

#define N_NODES 3
#define DIM 8

static const char *s_root; /* testlib_setup's folder */
static int s_case;

typedef struct {
    int index;
    bool honour_stop; /* SIGTERM arrives in the first step; asks hp->should_stop like the
                         real trainers */
    uint64_t processed; /* examples the last call went through: 3 a step */
} test_trainer_t;

/* delta_u[i] = 0.001 (u + 1) (i + 1); weight 4 examples a step, 3 of them processed (the
 * model trainer's weight is its training split, what it processes the sum of its batches). */
static int s_train(void *ctx, const float *global, size_t n, const round_hparams_t *hp,
                   float *delta, uint64_t *n_examples)
{
    (void)global;
    test_trainer_t *t = ctx;
    if (t->honour_stop) {
        assert_non_null(hp->should_stop);
        assert_int_equal(raise(SIGTERM), 0); /* handled by common/service: sets the flag */
        if (hp->should_stop())
            return medfl_error_set(MEDFL_ESTATE, "training interrupted after 1 of %u steps",
                                   hp->local_steps);
    }
    usleep(2000); /* a measurable training time for examples/s */
    for (size_t i = 0; i < n; i++) delta[i] = 0.001f * (float)(t->index + 1) * (float)(i + 1);
    *n_examples = 4ull * hp->local_steps;
    t->processed = 3ull * hp->local_steps;
    return 0;
}

static uint64_t s_processed(void *ctx)
{
    return ((const test_trainer_t *)ctx)->processed;
}

static int s_eval(void *ctx, const float *x, size_t n, double *loss, double *acc, double *f1,
                  uint64_t *n_eval)
{
    (void)ctx;
    (void)x;
    (void)n;
    *loss = 1, *acc = 0.5, *f1 = 0.5, *n_eval = 4;
    return 0;
}

typedef struct {
    char dir[700];
    agg_config_t cfg;
    wire_server_t *server;
    rounds_t *rounds;
    metrics_t *agg_m, *node_m[N_NODES];
    uint8_t agg_sk[64], agg_pk[32];
    char ids[N_NODES][16];
    uint8_t sk[N_NODES][64], pk[N_NODES][32];
    test_trainer_t tt[N_NODES];
    wire_client_t *client[N_NODES];
    node_round_t *node[N_NODES];
    ledger_t *ledger[N_NODES];
    rounds_peer_t peers[N_NODES];
    bool hold_evals; /* drop EvalReports so the eval phase waits for its deadline */
} fed_t;

static metrics_t *s_registry(const char *prefix, const char *const *names, size_t n,
                             const char *labelled)
{
    metrics_t *m = metrics_new(prefix);
    assert_non_null(m);
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(names[i]);
        bool counter = l > 6 && strcmp(names[i] + l - 6, "_total") == 0;
        bool lab = labelled && strcmp(names[i], labelled) == 0;
        assert_int_equal(metrics_declare(m, names[i], counter ? METRIC_COUNTER : METRIC_GAUGE,
                                         "test", lab ? "node" : NULL), 0);
    }
    return m;
}

static void s_agg_start(fed_t *f)
{
    char db[800], vdir[800];
    snprintf(db, sizeof db, "%s/journal.db", f->dir);
    snprintf(vdir, sizeof vdir, "%s/versions", f->dir);
    f->rounds = rounds_new(&f->cfg, f->server, db, vdir, f->agg_sk, f->agg_pk);
    assert_non_null(f->rounds);
    rounds_set_metrics(f->rounds, f->agg_m);
}

static void s_fed_init(fed_t *f, bool secure, const char *scheme)
{
    static const char *agg_names[] = {"rounds_started_total", "rounds_completed_total",
                                      "rounds_aborted_total", "node_weight",
                                      "last_round_duration_seconds", "model_version"};
    static const char *node_names[] = {"rounds_joined_total", "rounds_completed_total",
                                       "rounds_declined_total", "privacy_epsilon_spent",
                                       "last_round_duration_seconds", "training_examples_total",
                                       "training_examples_per_second", "model_version"};
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s/case%d", s_root, ++s_case);
    assert_int_equal(service_mkdir_p(f->dir, 0700), 0);
    assert_int_equal(cfg_set_defaults(agg_config_table, &f->cfg), 0);
    f->cfg.fed_rounds = 3;
    f->cfg.fed_min_nodes = N_NODES;
    f->cfg.fed_max_nodes = 10;
    f->cfg.fed_secure = secure;
    f->cfg.fed_select_wait_ms = 0;
    f->cfg.fed_keys_ms = f->cfg.fed_shares_ms = f->cfg.fed_unmask_ms = TESTLIB_PHASE_MS;
    f->cfg.fed_train_ms = TESTLIB_PHASE_MS;
    f->cfg.fed_eval_ms = TESTLIB_PHASE_MS;
    f->cfg.fed_retry_ms = 0;
    f->cfg.fed_genesis_dim = DIM;
    f->cfg.dp_enabled = true;
    f->cfg.dp_sample_rate = 0.1;
    f->cfg.dp_noise = 1.0;
    f->cfg.fed_local_steps = 5;
    snprintf(f->cfg.fed_weighting, sizeof f->cfg.fed_weighting, "contribution");
    snprintf(f->cfg.comp_scheme, sizeof f->cfg.comp_scheme, "%s", scheme);
    f->cfg.comp_clip = 0.05;
    f->cfg.comp_bits = 12;
    f->cfg.comp_k_frac = 0.5;
    crypto_sign_keypair(f->agg_pk, f->agg_sk);
    wire_options_t opts;
    wire_options_default(&opts);
    f->server = wire_server_new("tcp://127.0.0.1:*", NULL, NULL, &opts);
    assert_non_null(f->server);
    f->agg_m = s_registry("medfl_aggregator", agg_names, 6, "node_weight");
    s_agg_start(f);
    for (size_t i = 0; i < N_NODES; i++) {
        snprintf(f->ids[i], sizeof f->ids[i], "h%zu", i);
        crypto_sign_keypair(f->pk[i], f->sk[i]);
        f->peers[i].node_id = f->ids[i];
        f->peers[i].identity_pk = f->pk[i];
        f->peers[i].n_records = 100 * (i + 1); /* contribution weights differ */
        f->client[i] = wire_client_new(wire_server_endpoint(f->server), NULL, NULL, NULL,
                                       f->ids[i], &opts);
        assert_non_null(f->client[i]);
        char path[800], sdir[800];
        snprintf(sdir, sizeof sdir, "%s/%s", f->dir, f->ids[i]);
        assert_int_equal(service_mkdir_p(sdir, 0700), 0);
        snprintf(path, sizeof path, "%s/ledger.db", sdir);
        f->ledger[i] = ledger_open(path, 100.0, 1e-5, LEDGER_CREATE);
        assert_non_null(f->ledger[i]);
        f->tt[i].index = (int)i;
        /* node 0 has no examples_processed: its metric counts the weight n_examples */
        round_trainer_t tr = {.ctx = &f->tt[i], .train = s_train, .evaluate = s_eval,
                              .examples_processed = i ? s_processed : NULL};
        node_round_opts_t o = {.node_id = f->ids[i], .state_dir = sdir, .identity_sk = f->sk[i],
                                 .identity_pk = f->pk[i], .agg_sign_pk = f->agg_pk,
                                 .ledger = f->ledger[i]};
        f->node[i] = node_round_new(&o, &tr, f->client[i]);
        assert_non_null(f->node[i]);
        f->node_m[i] = s_registry("medfl_node", node_names, 8, NULL);
        node_round_set_metrics(f->node[i], f->node_m[i]);
        Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
        assert_int_equal(wire_client_send(f->client[i], MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0,
                                          &hb.base, NULL, 0, NULL, NULL), 0);
    }
}

static void s_fed_free(fed_t *f)
{
    for (size_t i = 0; i < N_NODES; i++) {
        node_round_destroy(&f->node[i]);
        wire_client_destroy(&f->client[i]);
        ledger_destroy(&f->ledger[i]);
        metrics_destroy(&f->node_m[i]);
    }
    rounds_destroy(&f->rounds);
    metrics_destroy(&f->agg_m);
    wire_server_destroy(&f->server);
}

static void s_step(fed_t *f)
{
    rounds_peer_t live[N_NODES];
    size_t n_live = 0;
    for (size_t i = 0; i < N_NODES; i++)
        if (wire_server_has_peer(f->server, f->ids[i])) live[n_live++] = f->peers[i];
    rounds_tick(f->rounds, live, n_live, service_now_ms());
    for (int k = 0; k < 8; k++) {
        wire_msg_t msg;
        memset(&msg, 0, sizeof msg);
        int rc = wire_server_recv(f->server, &msg, k == 0 ? 2 : 0);
        if (rc == 1 && !(f->hold_evals && msg.type == MEDFL__MSG_TYPE__MSG_EVAL_REPORT))
            (void)rounds_on_message(f->rounds, &msg, service_now_ms());
        wire_msg_close(&msg);
        if (rc != 1) break;
    }
    for (size_t i = 0; i < N_NODES; i++) {
        for (;;) {
            wire_msg_t msg;
            memset(&msg, 0, sizeof msg);
            int rc = wire_client_recv(f->client[i], &msg, 0);
            if (rc == 1) (void)node_round_on_message(f->node[i], &msg);
            wire_msg_close(&msg);
            if (rc != 1) break;
        }
    }
}

static void s_run_until(fed_t *f, uint64_t round, rounds_phase_t phase, int64_t max_ms)
{
    int64_t end = service_now_ms() + max_ms;
    while (!(rounds_current(f->rounds) == round && rounds_phase(f->rounds) == phase) &&
           service_now_ms() < end)
        s_step(f);
    assert_int_equal(rounds_current(f->rounds), round);
    assert_int_equal(rounds_phase(f->rounds), phase);
}

static double s_get(metrics_t *m, const char *name, const char *label)
{
    double v = -1;
    if (metrics_get(m, name, label, &v) != 0) fail_msg("metric %s not set", name);
    return v;
}

static void s_status(fed_t *f, char *out, size_t size)
{
    char db[800];
    snprintf(db, sizeof db, "%s/journal.db", f->dir);
    memset(out, 0, size);
    FILE *mem = fmemopen(out, size - 1, "w");
    assert_int_equal(rounds_print_status(db, mem), 0);
    fclose(mem);
}

/* Stop while collecting evaluations: the version is committed, so the round completed. */
static void test_stop_in_eval_completes(void **state)
{
    (void)state;
    fed_t f;
    s_fed_init(&f, false, "none");
    f.hold_evals = true;
    s_run_until(&f, 1, ROUNDS_EVAL, 10000);
    assert_int_equal(rounds_completed(f.rounds), 0);
    rounds_stop(f.rounds, service_now_ms(), "test stop");
    assert_int_equal(rounds_completed(f.rounds), 1);
    assert_int_equal(rounds_current(f.rounds), 0);
    assert_true(testlib_log_has("round 1: test stop while collecting evaluations: version 2 is committed"));
    char out[2048];
    s_status(&f, out, sizeof out);
    assert_non_null(strstr(out, "rounds_completed: 1\n"));
    assert_non_null(strstr(out, "round: none\n"));
    /* the aggregator's metrics equal its own counters */
    assert_true(s_get(f.agg_m, "rounds_completed_total", NULL) == 1);
    assert_true(s_get(f.agg_m, "rounds_started_total", NULL) == 1);
    assert_true(s_get(f.agg_m, "model_version", NULL) == 2);
    assert_true(s_get(f.agg_m, "last_round_duration_seconds", NULL) > 0);
    double sum = 0, w0 = s_get(f.agg_m, "node_weight", "h0"), w2 = s_get(f.agg_m, "node_weight", "h2");
    for (size_t i = 0; i < N_NODES; i++) sum += s_get(f.agg_m, "node_weight", f.ids[i]);
    assert_true(fabs(sum - 1) < 1e-9);
    assert_true(w2 > w0); /* 300 records outweigh 100 */
    /* a new aggregator object finds nothing open */
    rounds_destroy(&f.rounds);
    s_agg_start(&f);
    assert_false(testlib_log_has("round 1: aggregator restarted"));
    assert_int_equal(rounds_completed(f.rounds), 1);
    assert_true(s_get(f.agg_m, "rounds_completed_total", NULL) == 2); /* +1 from the journal */
    /* the nodes' metrics: joined and completed the round, DP spend = their ledgers'. The
     * version announce may still be queued for a node on a loaded machine: deliver first. */
    int64_t until = service_now_ms() + 5000;
    bool all_have = false;
    while (!all_have && service_now_ms() < until) {
        all_have = true;
        for (size_t i = 0; i < N_NODES; i++) {
            wire_msg_t msg;
            memset(&msg, 0, sizeof msg);
            int rc = wire_client_recv(f.client[i], &msg, 10);
            if (rc == 1) (void)node_round_on_message(f.node[i], &msg);
            wire_msg_close(&msg);
            double v = 0;
            all_have = all_have && metrics_get(f.node_m[i], "model_version", NULL, &v) == 0 && v == 2;
        }
    }
    for (size_t i = 0; i < N_NODES; i++) {
        double spent = 0;
        assert_int_equal(ledger_spent(f.ledger[i], &spent, NULL), 0);
        assert_true(spent > 0);
        assert_true(fabs(s_get(f.node_m[i], "privacy_epsilon_spent", NULL) - spent) < 1e-9);
        assert_true(s_get(f.node_m[i], "rounds_joined_total", NULL) == 1);
        assert_true(s_get(f.node_m[i], "rounds_completed_total", NULL) == 1);
        assert_true(s_get(f.node_m[i], "model_version", NULL) == 2);
        /* 5 local steps: 3 examples processed a step, not the weight (4 a step) */
        assert_true(s_get(f.node_m[i], "training_examples_total", NULL) == (i ? 15 : 20));
        assert_true(s_get(f.node_m[i], "training_examples_per_second", NULL) > 0);
        assert_true(s_get(f.node_m[i], "last_round_duration_seconds", NULL) > 0);
    }
    s_fed_free(&f);
}

/* Stop in the secure shares phase: aborted with the reason, nodes told, nothing to recover. */
static void test_stop_in_shares_aborts(void **state)
{
    (void)state;
    fed_t f;
    s_fed_init(&f, true, "none");
    s_run_until(&f, 1, ROUNDS_SHARES, 10000);
    rounds_stop(f.rounds, service_now_ms(), "test stop");
    assert_int_equal(rounds_current(f.rounds), 0);
    assert_int_equal(rounds_completed(f.rounds), 0);
    assert_true(testlib_log_has("round 1 aborted in phase shares: test stop during phase shares"));
    assert_true(s_get(f.agg_m, "rounds_aborted_total", NULL) == 1);
    char out[2048];
    s_status(&f, out, sizeof out);
    assert_non_null(strstr(out, "rounds_aborted: 1\n"));
    assert_non_null(strstr(out, "last_round: 1 aborted (base 1, version 0: test stop during phase shares)"));
    /* the nodes drop the round as soon as the Error arrives */
    int64_t end = service_now_ms() + 3000;
    bool all_left = false;
    while (!all_left && service_now_ms() < end) {
        for (size_t i = 0; i < N_NODES; i++) {
            for (;;) {
                wire_msg_t msg;
                memset(&msg, 0, sizeof msg);
                int rc = wire_client_recv(f.client[i], &msg, 0);
                if (rc == 1) (void)node_round_on_message(f.node[i], &msg);
                wire_msg_close(&msg);
                if (rc != 1) break;
            }
        }
        all_left = true;
        for (size_t i = 0; i < N_NODES; i++) all_left = all_left && !node_round_current(f.node[i]);
    }
    assert_true(all_left);
    assert_true(testlib_log_has("round 1 ended by the aggregator: round 1 aborted: test stop"));
    rounds_destroy(&f.rounds);
    s_agg_start(&f);
    assert_false(testlib_log_has("aggregator restarted during phase"));
    /* idle: stop is a no-op */
    rounds_stop(f.rounds, service_now_ms(), "test stop");
    assert_true(s_get(f.agg_m, "rounds_aborted_total", NULL) == 1);
    /* and the next round has a higher id and completes */
    s_run_until(&f, 2, ROUNDS_EVAL, 10000);
    s_fed_free(&f);
}

/* A trainer that sees should_stop gives up: no update, the round goes on without the node;
 * the node's checkpoint rewrites its residual unchanged. */
static void test_interrupted_training_and_checkpoint(void **state)
{
    (void)state;
    fed_t f;
    s_fed_init(&f, false, "topk");
    f.cfg.fed_rounds = 2;
    int64_t end = service_now_ms() + 10000;
    while (rounds_completed(f.rounds) < 1 && service_now_ms() < end) s_step(&f);
    assert_int_equal(rounds_completed(f.rounds), 1);
    char res[800];
    snprintf(res, sizeof res, "%s/h1/residual.bin", f.dir);
    FILE *r = fopen(res, "rb");
    assert_non_null(r);
    static char before[4096], after[4096];
    size_t nb = fread(before, 1, sizeof before, r);
    fclose(r);
    assert_true(nb > 16);
    /* round 2: h1's trainer is interrupted by SIGTERM (the daemon's handler) */
    assert_int_equal(service_signals_install(), 0);
    f.tt[1].honour_stop = true;
    end = service_now_ms() + 10000;
    while (rounds_completed(f.rounds) < 2 && service_now_ms() < end) s_step(&f);
    assert_int_equal(rounds_completed(f.rounds), 2);
    assert_true(testlib_log_has("round 2: no update sent: training interrupted after 1 of 5 steps"));
    assert_int_equal(node_round_contributed(f.node[1]), 1);
    assert_int_equal(node_round_contributed(f.node[0]), 2);
    assert_true(s_get(f.node_m[1], "rounds_completed_total", NULL) == 1); /* not round 2 */
    assert_true(s_get(f.node_m[1], "rounds_joined_total", NULL) == 2);
    assert_int_equal(unlink(res), 0);
    assert_int_equal(node_round_checkpoint(f.node[1]), 0);
    r = fopen(res, "rb");
    assert_non_null(r);
    size_t na = fread(after, 1, sizeof after, r);
    fclose(r);
    assert_int_equal(na, nb);
    assert_memory_equal(before, after, nb);
    assert_true(testlib_log_has("checkpoint: compression residual of 8 values written"));
    assert_int_equal(service_signals_install(), 0); /* clears the stop flag */
    s_fed_free(&f);
}

static int s_setup(void **state)
{
    (void)state;
    return (s_root = testlib_setup("drain", true, LOG_LEVEL_DEBUG)) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    return testlib_teardown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_in_eval_completes),
        cmocka_unit_test(test_stop_in_shares_aborts),
        cmocka_unit_test(test_interrupted_training_and_checkpoint),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
