/* The in-process federation harness (see fedlib.h). Moved here from test_rounds.c so the
 * attack suite drives the same federation the round tests check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "aggregator/aggregator.h"
#include "common/error.h"
#include "common/service.h"
#include "tests/unit/fedlib.h"
#include "tests/unit/testlib.h"

/* delta_u[i] = 0.001 (u + 1) (i + 1): distinct per node, inside every clip used below. */
static int s_train(void *ctx, const float *global, size_t n, const round_hparams_t *hp,
                   float *delta, uint64_t *n_examples)
{
    (void)hp;
    fed_trainer_t *t = ctx;
    if (t->fail_train) return medfl_error_set(MEDFL_EDEVICE, "test trainer told to fail");
    if (n == FED_DIM && t->calls < 4) memcpy(t->starts[t->calls], global, sizeof t->starts[0]);
    t->calls++;
    for (size_t i = 0; i < n; i++) delta[i] = 0.001f * (float)(t->index + 1) * (float)(i + 1);
    *n_examples = 10;
    return 0;
}

static int s_eval(void *ctx, const float *x, size_t n, double *loss, double *acc, double *f1,
                  uint64_t *n_eval)
{
    (void)ctx;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    *loss = s;
    *acc = 0.5;
    *f1 = 0.5;
    *n_eval = 4;
    return 0;
}

/* As if delta = -(lr / (q N)) sum clip(g) over N = 100 records (every node's n_records):
 * the sensitivity the noise share is sized for. */
static int s_linear(void *ctx, const round_hparams_t *hp, double *scale)
{
    (void)ctx;
    *scale = hp->lr / (hp->sample_rate * 100.0);
    return 0;
}

/* The node's round state over its existing connection (a restarted node process reads
 * the same state folder). */
void fed_node_round(fed_t *f, size_t i)
{
    char sdir[800];
    snprintf(sdir, sizeof sdir, "%s/%s", f->dir, f->ids[i]);
    round_trainer_t tr = {.ctx = &f->tt[i], .train = s_train, .evaluate = s_eval,
                          .linear_step = f->tt[i].linear ? s_linear : NULL};
    node_round_opts_t o = {.node_id = f->ids[i], .state_dir = sdir, .identity_sk = f->sk[i],
                             .identity_pk = f->pk[i], .agg_sign_pk = f->agg_pk,
                             .ledger = f->ledger[i], .policy = &f->policy[i],
                             .distributed_noise = f->tt[i].linear};
    f->node[i] = node_round_new(&o, &tr, f->client[i]);
    assert_non_null(f->node[i]);
}

void fed_node_policy(fed_t *f, size_t i, const node_round_policy_t *p)
{
    f->policy[i] = *p;
    node_round_destroy(&f->node[i]);
    fed_node_round(f, i);
}

void fed_node_start(fed_t *f, size_t i, double budget)
{
    wire_options_t opts;
    wire_options_default(&opts);
    f->client[i] = wire_client_new(wire_server_endpoint(f->server), NULL, NULL, NULL, f->ids[i],
                                   &opts);
    assert_non_null(f->client[i]);
    char path[800], sdir[800];
    snprintf(sdir, sizeof sdir, "%s/%s", f->dir, f->ids[i]);
    assert_int_equal(service_mkdir_p(sdir, 0700), 0);
    snprintf(path, sizeof path, "%s/ledger.db", sdir);
    if (!f->ledger[i]) f->ledger[i] = ledger_open(path, budget, 1e-5, LEDGER_CREATE);
    assert_non_null(f->ledger[i]);
    f->tt[i].index = (int)i;
    if (!f->rogue[i]) fed_node_round(f, i);
    /* The server learns a plain-mode client's route from its first message. */
    Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
    assert_int_equal(wire_client_send(f->client[i], MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, &hb.base,
                                      NULL, 0, NULL, NULL), 0);
    f->dead[i] = false;
}

void fed_agg_start(fed_t *f)
{
    char db[800], vdir[800];
    snprintf(db, sizeof db, "%s/journal.db", f->dir);
    snprintf(vdir, sizeof vdir, "%s/versions", f->dir);
    f->rounds = rounds_new(&f->cfg, f->server, db, vdir, f->agg_sk, f->agg_pk);
    assert_non_null(f->rounds);
}

static int s_case;

static void s_init(fed_t *f, const char *root, size_t n, bool secure, const char *scheme, int tiny,
                   unsigned rogue_mask, fed_rogue_fn on_rogue, void *ctx)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s/case%d", root, ++s_case);
    f->on_rogue = on_rogue;
    f->rogue_ctx = ctx;
    for (size_t i = 0; i < n && i < FED_MAX_NODES; i++) f->rogue[i] = (rogue_mask >> i) & 1;
    assert_int_equal(service_mkdir_p(f->dir, 0700), 0);
    assert_int_equal(cfg_set_defaults(agg_config_table, &f->cfg), 0);
    f->cfg.fed_rounds = 3;
    f->cfg.fed_min_nodes = (int64_t)n;
    f->cfg.fed_max_nodes = 10;
    f->cfg.fed_secure = secure;
    f->cfg.fed_select_wait_ms = 0;
    f->cfg.fed_keys_ms = f->cfg.fed_shares_ms = f->cfg.fed_unmask_ms = TESTLIB_PHASE_MS;
    f->cfg.fed_train_ms = TESTLIB_PHASE_MS;
    f->cfg.fed_eval_ms = TESTLIB_PHASE_MS;
    f->cfg.fed_retry_ms = 0;
    f->cfg.fed_genesis_dim = FED_DIM;
    f->cfg.dp_enabled = false;
    snprintf(f->cfg.fed_weighting, sizeof f->cfg.fed_weighting, "uniform");
    snprintf(f->cfg.comp_scheme, sizeof f->cfg.comp_scheme, "%s", scheme);
    f->cfg.comp_clip = 0.05;
    f->cfg.comp_bits = 12;
    crypto_sign_keypair(f->agg_pk, f->agg_sk);
    wire_options_t opts;
    wire_options_default(&opts);
    /* the frame limit the daemon derives at start for its genesis (net.max_update_mib = 0) */
    opts.max_bulk = aggregator_bulk_max(&f->cfg, FED_DIM);
    f->server = wire_server_new("tcp://127.0.0.1:*", NULL, NULL, &opts);
    assert_non_null(f->server);
    fed_agg_start(f);
    f->n = n;
    f->drop = -1;
    f->tamper = -1;
    f->bad_eval = -1;
    for (size_t i = 0; i < n; i++) {
        snprintf(f->ids[i], sizeof f->ids[i], "h%zu", i);
        crypto_sign_keypair(f->pk[i], f->sk[i]);
        f->peers[i].node_id = f->ids[i];
        f->peers[i].identity_pk = f->pk[i];
        f->peers[i].n_records = 100;
        f->policy[i] = (node_round_policy_t){.require_dp = false, .max_sample_rate = 1.0};
        fed_node_start(f, i, (int)i == tiny || tiny == FED_ALL_TINY ? 0.001 : 100.0);
    }
}

void fed_init_budget(fed_t *f, const char *root, size_t n, bool secure, const char *scheme, int tiny)
{
    s_init(f, root, n, secure, scheme, tiny, 0, NULL, NULL);
}

void fed_init(fed_t *f, const char *root, size_t n, bool secure, const char *scheme)
{
    s_init(f, root, n, secure, scheme, -1, 0, NULL, NULL);
}

void fed_init_rogue(fed_t *f, const char *root, size_t n, bool secure, const char *scheme,
                    unsigned rogue_mask, fed_rogue_fn on_rogue, void *ctx)
{
    s_init(f, root, n, secure, scheme, -1, rogue_mask, on_rogue, ctx);
}

void fed_free(fed_t *f)
{
    for (size_t i = 0; i < f->n; i++) {
        node_round_destroy(&f->node[i]);
        wire_client_destroy(&f->client[i]);
        ledger_destroy(&f->ledger[i]);
    }
    rounds_destroy(&f->rounds);
    wire_server_destroy(&f->server);
}

/* One loop iteration: deadlines, one server message, every live client's messages. */
void fed_step(fed_t *f)
{
    rounds_peer_t live[FED_MAX_NODES];
    size_t n_live = 0;
    for (size_t i = 0; i < f->n; i++)
        if (!f->dead[i] && wire_server_has_peer(f->server, f->ids[i])) live[n_live++] = f->peers[i];
    rounds_tick(f->rounds, live, n_live, service_now_ms());
    if (f->drop >= 0 && !f->dead[f->drop] && rounds_phase(f->rounds) == f->drop_at &&
        rounds_current(f->rounds) == f->drop_round)
        f->dead[f->drop] = true;
    for (int k = 0; k < 8; k++) {
        wire_msg_t msg;
        memset(&msg, 0, sizeof msg);
        int rc = wire_server_recv(f->server, &msg, k == 0 ? 2 : 0);
        if (rc == 1 && f->from_node)
            for (size_t i = 0; i < f->n; i++)
                if (strcmp(msg.node_id, f->ids[i]) == 0)
                    f->from_node(f, i, &msg, f->from_node_ctx);
        if (rc == 1 && msg.type == MEDFL__MSG_TYPE__MSG_EVAL_REPORT && f->bad_eval >= 0 &&
            strcmp(msg.node_id, f->ids[f->bad_eval]) == 0)
            msg.body.eval_report->loss += 1.0;
        if (rc == 1 && rounds_on_message(f->rounds, &msg, service_now_ms()) == 1)
            rounds_record_eval(f->rounds, &msg); /* as the daemon does */
        wire_msg_close(&msg);
        if (rc != 1) break;
    }
    for (size_t i = 0; i < f->n; i++) {
        if (f->dead[i]) continue;
        for (;;) {
            wire_msg_t msg;
            memset(&msg, 0, sizeof msg);
            int rc = wire_client_recv(f->client[i], &msg, 0);
            bool deliver = rc == 1;
            if (rc == 1 && (int)i == f->tamper && msg.type == MEDFL__MSG_TYPE__MSG_ROUND_START &&
                msg.body.round_start->dp)
                msg.body.round_start->dp->record_weight_max *= f->tamper_rwm;
            if (rc == 1 && f->intercept) f->intercept(f, i, &msg, &deliver, f->intercept_ctx);
            if (deliver && f->rogue[i]) {
                if (f->on_rogue) f->on_rogue(f, i, &msg, f->rogue_ctx);
            } else if (deliver) {
                (void)node_round_on_message(f->node[i], &msg);
            }
            wire_msg_close(&msg);
            if (rc != 1) break;
        }
    }
}

void fed_run_until_completed(fed_t *f, uint64_t completed, int64_t max_ms)
{
    int64_t end = service_now_ms() + max_ms;
    while (rounds_completed(f->rounds) < completed && service_now_ms() < end) fed_step(f);
    assert_int_equal(rounds_completed(f->rounds), completed);
}

/* Head vector must be base + the weighted mean of the contributors' deltas, per round. */
void fed_check_head(fed_t *f, const double *expected, double tol)
{
    size_t numel = 0;
    const float *g = rounds_global(f->rounds, &numel);
    assert_non_null(g);
    assert_int_equal(numel, FED_DIM);
    for (size_t i = 0; i < FED_DIM; i++) {
        if (fabs(g[i] - expected[i]) > tol)
            fail_msg("coordinate %zu: %.6f, expected %.6f", i, (double)g[i], expected[i]);
    }
}

/* mean over the contributor set (bit u set) of delta_u, equal weights */
void fed_mean_delta(unsigned set, double *out)
{
    int c = 0;
    for (int u = 0; u < FED_MAX_NODES; u++) c += (set >> u) & 1;
    for (size_t i = 0; i < FED_DIM; i++) {
        double s = 0;
        for (int u = 0; u < FED_MAX_NODES; u++)
            if ((set >> u) & 1) s += 0.001 * (u + 1) * (double)(i + 1);
        out[i] = s / c;
    }
}

