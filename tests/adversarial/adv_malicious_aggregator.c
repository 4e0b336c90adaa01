/* Attack suite: an active (malicious) aggregator against secure aggregation, issue #16 item 3
 * (filed against 77573c0). There the daemon's threshold ceil(0.5 (k + 1)) was exactly half
 * the holders for 4 nodes, nodes accepted any t in 1..k+1, and nothing made the aggregator
 * commit to one survivor set: with n = 4, t = 2 it told nodes 0-1 "node 0 survived" and
 * nodes 2-3 "node 0 dropped", got two shares of b_0 and two of s_sk_0, and recovered x_0.
 *
 * Each test plays that aggregator (the federation harness's intercept rewrites what real
 * nodes receive from a real aggregator, or the test drives secagg clients directly as the
 * server) and asserts the refusal and the line the operator sees:
 *   - t = 2 of 4 holders: every node declines the round before training;
 *   - split survivor views with a legal t: the survivor set a node signed differs from the
 *     one its unmask request names, or the signatures are withheld / forged: no share;
 *   - a second unmask request in a round (asking for the other share of a peer): refused;
 *   - federation.threshold at or below one half: refused when the config is loaded;
 *   - a RoundStart of a round the node already took part in, replayed (then again after the
 *     node restarts): declined before the ledger sees it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "aggregator/agg_config.h"
#include "common/error.h"
#include "common/secagg.h"
#include "common/service.h"
#include "node/ledger.h"
#include "tests/unit/fedlib.h"
#include "tests/unit/testlib.h"

static const char *s_root;

static void s_wait_log(fed_t *f, const char *needle, int64_t max_ms)
{
    int64_t end = service_now_ms() + max_ms;
    while (!testlib_log_has(needle) && service_now_ms() < end) fed_step(f);
    if (!testlib_log_has(needle)) fail_msg("log never showed '%s'", needle);
}

/* ---- the exact attack: t = 2 of 4 ------------------------------------------------------ */

static void s_half_threshold(fed_t *f, size_t i, wire_msg_t *msg, bool *deliver, void *ctx)
{
    (void)f, (void)i, (void)deliver, (void)ctx;
    if (msg->type == MEDFL__MSG_TYPE__MSG_ROUND_START && msg->body.round_start->secagg)
        msg->body.round_start->secagg->threshold = 2;
}

static void test_half_threshold_refused(void **state)
{
    (void)state;
    testlib_log_reset();
    fed_t f;
    fed_init(&f, s_root, 4, true, "none");
    f.intercept = s_half_threshold;
    s_wait_log(&f, "round 1 aborted", 20000);
    assert_true(testlib_log_has("declining round 1: secure aggregation refused: secagg params: "
                                "threshold t = 2 of the k + 1 = 4 holders of each node's shares "
                                "is not a strict majority (needs 3..4)"));
    for (size_t i = 0; i < 4; i++) assert_int_equal(node_round_contributed(f.node[i]), 0);
    assert_false(testlib_log_has("round 1: masked input from node"));
    assert_int_equal(rounds_completed(f.rounds), 0);
    fed_free(&f);
}

/* ---- split survivor views with a legal threshold (t = 3 of 4) ------------------------- */

typedef struct {
    int mode;           /* see the tests below */
    int second_sent;
} split_t;

enum { SPLIT_VIEWS = 1, WITHHELD_AND_FORGED, SECOND_REQUEST };

/* An UnmaskRequest for node i as the attacker wants it: node 0 moved from the survivors to
 * the dropped nodes (so i would reveal its share of s_sk_0), the signatures as forwarded. */
static void s_move_h0(const Medfl__UnmaskRequest *in, Medfl__UnmaskRequest *out, char **surv,
                      char **drop)
{
    *out = *in;
    size_t ns = 0, nd = 0;
    for (size_t j = 0; j < in->n_survivors; j++)
        if (strcmp(in->survivors[j], "h0") == 0) drop[nd++] = in->survivors[j];
        else surv[ns++] = in->survivors[j];
    for (size_t j = 0; j < in->n_dropped; j++) drop[nd++] = in->dropped[j];
    out->survivors = surv, out->n_survivors = ns;
    out->dropped = drop, out->n_dropped = nd;
}

static void s_split(fed_t *f, size_t i, wire_msg_t *msg, bool *deliver, void *ctx)
{
    split_t *x = ctx;
    if (msg->type != MEDFL__MSG_TYPE__MSG_UNMASK_REQUEST) return;
    const Medfl__UnmaskRequest *orig = msg->body.unmask_request;
    Medfl__UnmaskRequest split_view;
    char *surv[FED_MAX_NODES], *drop[FED_MAX_NODES];
    Medfl__SurvivorSignature forged, *sigs[FED_MAX_NODES];
    uint8_t bad[64];
    wire_msg_t copy = *msg;
    copy.body.unmask_request = &split_view;
    if (x->mode == SPLIT_VIEWS && i >= 2) {
        /* nodes 2 and 3 are told "node 0 dropped", nodes 0 and 1 "node 0 survived" */
        s_move_h0(orig, &split_view, surv, drop);
    } else if (x->mode == WITHHELD_AND_FORGED && (i == 1 || i == 2)) {
        split_view = *orig;
        assert_int_equal(orig->n_signatures, 4);
        if (i == 1) {
            split_view.n_signatures = 2; /* t - 1: only the nodes that saw this view */
        } else {
            for (size_t j = 0; j < orig->n_signatures; j++) sigs[j] = orig->signatures[j];
            forged = *orig->signatures[0];
            memcpy(bad, forged.signature.data, sizeof bad);
            bad[10] ^= 0x01;
            forged.signature.data = bad;
            sigs[0] = &forged;
            split_view.signatures = sigs;
        }
    } else if (x->mode == SECOND_REQUEST && i == 1) {
        /* the honest request first, then the other kind of share of node 0 */
        (void)node_round_on_message(f->node[i], msg);
        s_move_h0(orig, &split_view, surv, drop);
        x->second_sent++;
    } else {
        return;
    }
    (void)node_round_on_message(f->node[i], &copy);
    *deliver = false;
}

static void test_split_survivor_views_refused(void **state)
{
    (void)state;
    testlib_log_reset();
    fed_t f;
    split_t x = {.mode = SPLIT_VIEWS};
    fed_init(&f, s_root, 4, true, "none");
    f.intercept = s_split;
    f.intercept_ctx = &x;
    s_wait_log(&f, "round 1 aborted", 20000);
    /* the daemon's default threshold is a strict majority: 3 of the 4 holders */
    assert_true(testlib_log_has("round 1: secure aggregation n 4, neighbours 3, threshold 3"));
    /* the nodes shown "node 0 dropped" had signed the set with node 0: no share leaves them */
    assert_true(testlib_log_has("refusing UnmaskRequest: its survivor set (3 nodes) is not the "
                                "one this node signed (4 nodes)"));
    assert_true(testlib_log_has("round 1: unmask request refused, no share revealed"));
    /* two b_0 shares of three needed: the aggregator cannot unmask, the round aborts */
    assert_true(testlib_log_has("2 of 3 shares of node 0's self-mask seed arrived"));
    assert_int_equal(rounds_completed(f.rounds), 0);
    assert_int_equal(rounds_head_version(f.rounds), 1); /* genesis only */
    fed_free(&f);
}

static void test_withheld_or_forged_signatures_refused(void **state)
{
    (void)state;
    testlib_log_reset();
    fed_t f;
    split_t x = {.mode = WITHHELD_AND_FORGED};
    fed_init(&f, s_root, 4, true, "none");
    f.intercept = s_split;
    f.intercept_ctx = &x;
    s_wait_log(&f, "round 1 aborted", 20000);
    assert_true(testlib_log_has("refusing UnmaskRequest: 2 valid signatures over the survivor "
                                "set from this node's neighbourhood, threshold 3"));
    assert_true(testlib_log_has("signature does not verify over the survivor set this node "
                                "signed"));
    assert_true(testlib_log_has("of 3 shares of node"));
    assert_int_equal(rounds_completed(f.rounds), 0);
    fed_free(&f);
}

static void test_second_unmask_request_refused(void **state)
{
    (void)state;
    testlib_log_reset();
    fed_t f;
    split_t x = {.mode = SECOND_REQUEST};
    fed_init(&f, s_root, 4, true, "none");
    f.cfg.fed_rounds = 1;
    f.intercept = s_split;
    f.intercept_ctx = &x;
    fed_run_until_completed(&f, 1, 20000);
    assert_int_equal(x.second_sent, 1);
    assert_true(testlib_log_has("round 1: second unmask request refused: this node already "
                                "answered the round's unmask request"));
    /* the first (honest) answer counted: the round unmasked the exact mean */
    double want[FED_DIM];
    fed_mean_delta(0xF, want);
    fed_check_head(&f, want, 1e-3);
    fed_free(&f);
}

/* ---- the same attacks with the test as the server, straight on secagg clients ---------- */

enum { N = 4, MX = 16 };

static void test_direct_split_views_reveal_nothing(void **state)
{
    (void)state;
    uint8_t pk[N * 32], sk[N * 64];
    for (int u = 0; u < N; u++) crypto_sign_keypair(pk + 32 * u, sk + 64 * u);
    secagg_params_t p;
    /* t = 2 of 4: the exact parameters of the attack are refused by every party */
    assert_int_equal(secagg_params_init(&p, 31, N, N - 1, 2, MX), -1);
    p.t = 2;
    assert_null(secagg_client_new(&p, 0, sk, pk));
    assert_non_null(strstr(medfl_error_message(), "not a strict majority"));
    assert_null(secagg_server_new(&p, pk, 1));

    /* t = 3: honest phases up to the masked inputs, then split survivor views */
    assert_int_equal(secagg_params_init(&p, 31, N, N - 1, 3, MX), 0);
    randombytes_buf(p.context, sizeof p.context);
    secagg_server_t *srv = secagg_server_new(&p, pk, 1);
    secagg_client_t *cl[N];
    uint8_t *b, *b2;
    size_t l, l2;
    for (int u = 0; u < N; u++) {
        cl[u] = secagg_client_new(&p, (uint32_t)u, sk + 64 * u, pk);
        assert_int_equal(secagg_client_advertise(cl[u], &b, &l), 0);
        assert_int_equal(secagg_server_add_keys(srv, b, l), 0);
        free(b);
    }
    assert_int_equal(secagg_server_close_keys(srv), 0);
    for (int u = 0; u < N; u++) {
        assert_int_equal(secagg_server_keys_broadcast(srv, (uint32_t)u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_keys(cl[u], b, l, &b2, &l2), 0);
        assert_int_equal(secagg_server_add_shares(srv, b2, l2), 0);
        free(b), free(b2);
    }
    assert_int_equal(secagg_server_close_shares(srv), 0);
    uint32_t x[MX];
    for (int u = 0; u < N; u++) {
        assert_int_equal(secagg_server_shares_delivery(srv, (uint32_t)u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_shares(cl[u], b, l), 0);
        free(b);
        for (int i = 0; i < MX; i++) x[i] = (uint32_t)(1000 * u + i);
        assert_int_equal(secagg_client_masked_input(cl[u], x, &b, &l), 0);
        free(b);
    }
    /* nodes 0, 1 see U3 = {0,1,2,3}; nodes 2, 3 see U3' = {1,2,3} */
    uint32_t all[] = {0, 1, 2, 3}, no0[] = {1, 2, 3}, d0[] = {0};
    secagg_set_sig_t sig[N];
    for (int u = 0; u < N; u++) {
        secagg_survivors_t sv = {.round_id = 31, .count = u < 2 ? 4 : 3,
                                 .nodes = u < 2 ? all : no0};
        assert_int_equal(secagg_survivors_encode(&sv, &b, &l), 0);
        assert_int_equal(secagg_client_sign_survivors(cl[u], b, l, &b2, &l2), 0);
        secagg_survivor_sig_t sg;
        assert_int_equal(secagg_survivor_sig_decode(b2, l2, &sg), 0);
        sig[u] = sg.s;
        free(b), free(b2);
    }
    /* both ways to forward signatures: all four (nodes 0, 2), or only the two over the
     * recipient's own view (nodes 1, 3); each request names the view its recipient saw */
    for (int u = 0; u < N; u++) {
        bool forward_all = u % 2 == 0;
        secagg_set_sig_t fw[N];
        uint32_t nf = 0;
        for (int v = 0; v < N; v++)
            if (forward_all || (v < 2) == (u < 2)) fw[nf++] = sig[v];
        secagg_unmask_req_t rq = {.round_id = 31, .n_survivors = u < 2 ? 4 : 3,
                                  .survivors = u < 2 ? all : no0, .n_dropped = u < 2 ? 0 : 1,
                                  .dropped = d0, .n_sigs = nf, .sigs = fw};
        assert_int_equal(secagg_unmask_req_encode(&rq, &b, &l), 0);
        b2 = NULL;
        assert_int_equal(secagg_client_handle_unmask(cl[u], b, l, &b2, &l2), -1);
        assert_null(b2);
        free(b);
        /* node 0 finds the view-U3' signatures invalid over U3; node 2 finds node 0 (whom
         * its view calls dropped) among the signers */
        const char *want = u == 0   ? "signature does not verify over the survivor set"
                           : u == 2 ? "node 0, not a surviving member of this node's neighbourhood"
                                    : "2 valid signatures over the survivor set";
        if (!strstr(medfl_error_message(), want))
            fail_msg("node %d: '%s' lacks '%s'", u, medfl_error_message(), want);
        /* the refusal aborted the client: it revealed nothing and holds nothing */
        assert_int_equal(secagg_client_state(cl[u]), SECAGG_C_ABORTED);
        for (uint32_t v = 0; v < N; v++) assert_int_equal(secagg_client_revealed(cl[u], v), -1);
    }
    for (int u = 0; u < N; u++) secagg_client_destroy(&cl[u]);
    secagg_server_destroy(&srv);
}

/* ---- a replayed RoundStart ------------------------------------------------------------ */

/* Keeps node 0's RoundStart of round 1 (packed); when round 2's arrives, replays the old one
 * first, restarts node 0 (a new process on the same state folder) and replays it again. */
typedef struct {
    uint8_t *packed;
    size_t len;
    int replayed;
    double spent_before, spent_after;
} replay_t;

static void s_replay_once(fed_t *f, replay_t *r)
{
    wire_msg_t old;
    memset(&old, 0, sizeof old);
    old.type = MEDFL__MSG_TYPE__MSG_ROUND_START;
    old.round_id = 1;
    snprintf(old.node_id, sizeof old.node_id, "%s", WIRE_SERVER_SENDER);
    old.body.round_start = medfl__round_start__unpack(NULL, r->len, r->packed);
    assert_non_null(old.body.round_start);
    (void)node_round_on_message(f->node[0], &old);
    medfl__round_start__free_unpacked(old.body.round_start, NULL);
    r->replayed++;
}

static void s_replay(fed_t *f, size_t i, wire_msg_t *msg, bool *deliver, void *ctx)
{
    (void)deliver;
    replay_t *r = ctx;
    if (i != 0 || msg->type != MEDFL__MSG_TYPE__MSG_ROUND_START) return;
    if (msg->round_id == 1 && !r->packed) {
        r->len = protobuf_c_message_get_packed_size(&msg->body.round_start->base);
        r->packed = malloc(r->len);
        assert_non_null(r->packed);
        protobuf_c_message_pack(&msg->body.round_start->base, r->packed);
    } else if (msg->round_id == 2 && r->packed && !r->replayed) {
        assert_int_equal(ledger_spent(f->ledger[0], &r->spent_before, NULL), 0);
        s_replay_once(f, r);
        node_round_destroy(&f->node[0]);
        fed_node_round(f, 0);
        s_replay_once(f, r);
        assert_int_equal(ledger_spent(f->ledger[0], &r->spent_after, NULL), 0);
    }
}

static void test_replayed_round_start_refused(void **state)
{
    (void)state;
    testlib_log_reset();
    fed_t f;
    replay_t r = {0};
    fed_init(&f, s_root, 3, false, "none");
    f.cfg.fed_rounds = 2;
    /* DP rounds, so taking a round costs epsilon in the node's ledger */
    f.cfg.dp_enabled = true;
    f.cfg.dp_noise = 1.0;
    f.cfg.dp_clip = 1.0;
    f.cfg.dp_sample_rate = 0.01;
    f.intercept = s_replay;
    f.intercept_ctx = &r;
    fed_run_until_completed(&f, 2, 30000);
    assert_int_equal(r.replayed, 2);
    assert_true(r.spent_before > 0);
    /* neither replay (before and after the restart) cost anything */
    assert_true(r.spent_after == r.spent_before);
    assert_true(testlib_log_has("declining round 1: round 1 is not after round 1, the last this "
                                "node took part in ("));
    assert_true(testlib_log_has("a replayed round start, nothing trained or charged"));
    int64_t admitted = 0, declined = 0;
    assert_int_equal(ledger_count(f.ledger[0], &admitted, &declined), 0);
    assert_int_equal(admitted, 2); /* rounds 1 and 2, once each */
    /* the restarted node took round 2 as usual: every node contributed to version 3 */
    assert_true(testlib_log_has("round 2: version 3 committed from 3 updates"));
    free(r.packed);
    fed_free(&f);
}

/* A last_round file that is not a round id stops the node from starting, naming the file. */
static void test_last_round_file_corrupt(void **state)
{
    (void)state;
    fed_t f;
    fed_init(&f, s_root, 2, false, "none");
    char path[800];
    snprintf(path, sizeof path, "%s/h0/last_round", f.dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("12x\n", fp);
    fclose(fp);
    node_round_destroy(&f.node[0]);
    round_trainer_t tr = {0};
    char sdir[800];
    snprintf(sdir, sizeof sdir, "%s/h0", f.dir);
    node_round_opts_t o = {.node_id = "h0", .state_dir = sdir, .identity_sk = f.sk[0],
                           .identity_pk = f.pk[0], .agg_sign_pk = f.agg_pk,
                           .ledger = f.ledger[0]};
    assert_null(node_round_new(&o, &tr, f.client[0]));
    assert_non_null(strstr(medfl_error_message(), "/h0/last_round: not a round id"));
    assert_null(strstr(medfl_error_message(), "12x"));
    fed_free(&f);
}

/* ---- the operator's configuration ------------------------------------------------------- */

static int s_load_threshold(const char *value, agg_config_t *cfg)
{
    char path[800];
    snprintf(path, sizeof path, "%s/agg-threshold.conf", s_root);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fprintf(fp, "[federation]\n%s%s%s", value ? "threshold = " : "", value ? value : "",
            value ? "\n" : "");
    fclose(fp);
    return agg_config_load(cfg, path);
}

static void test_threshold_config(void **state)
{
    (void)state;
    agg_config_t cfg;
    assert_int_equal(s_load_threshold(NULL, &cfg), 0);
    assert_true(cfg.fed_threshold == 0); /* the default: a strict majority */
    assert_int_equal(s_load_threshold("0.5", &cfg), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ECONFIG);
    assert_non_null(strstr(medfl_error_message(), "key 'federation.threshold': 0.5 is not a "
                                                  "strict majority"));
    assert_int_equal(s_load_threshold("0.2", &cfg), -1);
    assert_int_equal(s_load_threshold("0.51", &cfg), 0);
    assert_int_equal(s_load_threshold("1.0", &cfg), 0);
}

static int s_setup(void **state)
{
    (void)state;
    return (s_root = testlib_setup("adv_malicious_aggregator", true, LOG_LEVEL_DEBUG)) ? 0 : -1;
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
        cmocka_unit_test(test_half_threshold_refused),
        cmocka_unit_test(test_split_survivor_views_refused),
        cmocka_unit_test(test_withheld_or_forged_signatures_refused),
        cmocka_unit_test(test_second_unmask_request_refused),
        cmocka_unit_test(test_direct_split_views_reveal_nothing),
        cmocka_unit_test(test_threshold_config),
        cmocka_unit_test(test_replayed_round_start_refused),
        cmocka_unit_test(test_last_round_file_corrupt),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
