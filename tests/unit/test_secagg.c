/* Secure aggregation (common/secagg, secagg_msg, shamir): in-process protocol runs with the
 * complete graph (n = 3, 10, 50) and SecAgg+ (n = 50, k = 10) under dropouts at every phase,
 * exact sums, aborts below threshold, thresholds below a strict majority refused, the signed
 * survivor set (consistency check), the refusal to reveal both shares of a node, fresh
 * masks per round, signature and ciphertext tampering, a node sent another round context
 * (its keys refused by the server and its neighbours), a masked vector decoded by the
 * caller straight into the server's sum, fixed-point bounds, Shamir, the neighbour graph and
 * the strict message parsers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"
#include "common/secagg.h"
#include "common/shamir.h"

#define M 1000

/* drop phase of a node: it stops before the given step (BEFORE_UNMASK: before signing the
 * survivor set; BEFORE_REVEAL: signs it, then never answers the unmask request) */
enum { KEEP = 0, BEFORE_ADVERTISE, BEFORE_SHARE, BEFORE_MASKED, BEFORE_UNMASK, BEFORE_REVEAL };

typedef struct {
    uint32_t n, k, t;
    uint64_t round_id;
    const uint8_t *drop;       /* n entries, or NULL */
    const uint32_t *inputs;    /* n * M, or NULL for random */
    const uint8_t *graph_seed; /* fixed seed or NULL */
    uint8_t *captured;         /* if set: node 0's masked values (M * 4 bytes) */
    /* results */
    int aborted_at;            /* 0 = finished; 1..5 = close_keys/shares/masked/signatures/finish
                                * failed */
    uint32_t sum[M];
    uint32_t expect[M];
} run_t;

static uint8_t *s_id_pk, *s_id_sk;
static uint32_t s_ids;

static void s_identities(uint32_t n)
{
    if (s_ids >= n) return;
    free(s_id_pk);
    free(s_id_sk);
    s_id_pk = malloc((size_t)n * crypto_sign_PUBLICKEYBYTES);
    s_id_sk = malloc((size_t)n * crypto_sign_SECRETKEYBYTES);
    for (uint32_t u = 0; u < n; u++)
        crypto_sign_keypair(s_id_pk + 32 * u, s_id_sk + 64 * u);
    s_ids = n;
}

static void s_check_disjoint(const secagg_server_t *s, uint32_t n)
{
    for (uint32_t u = 0; u < n; u++) {
        uint32_t nb, nsk;
        secagg_server_revealed(s, u, &nb, &nsk);
        assert_false(nb > 0 && nsk > 0);
    }
}

/* The consistency check: the server's survivor set, signed by every survivor not in skip
 * (n flags, or NULL); returns secagg_server_close_signatures' result. */
static int s_sign_all(secagg_server_t *srv, secagg_client_t **cl, const uint8_t *skip)
{
    uint8_t *sv, *b;
    size_t sv_len, l;
    assert_int_equal(secagg_server_survivors(srv, &sv, &sv_len), 0);
    secagg_survivors_t set;
    assert_int_equal(secagg_survivors_decode(sv, sv_len, &set), 0);
    for (uint32_t i = 0; i < set.count; i++) {
        uint32_t u = set.nodes[i];
        if (skip && skip[u]) continue;
        assert_int_equal(secagg_client_sign_survivors(cl[u], sv, sv_len, &b, &l), 0);
        assert_int_equal(secagg_client_state(cl[u]), SECAGG_C_SIGNED);
        assert_int_equal(secagg_server_add_signature(srv, b, l), 0);
        free(b);
    }
    secagg_survivors_clear(&set);
    free(sv);
    return secagg_server_close_signatures(srv);
}

/* Node u answers its own unmask request into the server. */
static void s_answer(secagg_server_t *srv, secagg_client_t *c, uint32_t u)
{
    uint8_t *rq, *b;
    size_t rq_len, l;
    assert_int_equal(secagg_server_unmask_request(srv, u, &rq, &rq_len), 0);
    assert_int_equal(secagg_client_handle_unmask(c, rq, rq_len, &b, &l), 0);
    assert_int_equal(secagg_client_state(c), SECAGG_C_DONE);
    assert_int_equal(secagg_server_add_unmask(srv, b, l), 0);
    secagg_buf_free(b, l);
    free(rq);
}

/* Runs one round in-process; the server output must equal the plain sum of U3's inputs. */
static void s_run(run_t *r)
{
    uint32_t n = r->n;
    s_identities(n);
    secagg_params_t p;
    assert_int_equal(secagg_params_init(&p, r->round_id, n, r->k, r->t, M), 0);
    if (r->graph_seed) memcpy(p.graph_seed, r->graph_seed, 32);
    randombytes_buf(p.context, sizeof p.context); /* as the daemons set it: every party alike */
    secagg_server_t *srv = secagg_server_new(&p, s_id_pk, 2);
    assert_non_null(srv);
    secagg_client_t **cl = calloc(n, sizeof *cl);
    uint32_t *in = malloc((size_t)n * M * sizeof *in);
    uint8_t *drop = calloc(n, 1);
    if (r->drop) memcpy(drop, r->drop, n);
    if (r->inputs) memcpy(in, r->inputs, (size_t)n * M * 4);
    else randombytes_buf(in, (size_t)n * M * 4);
    for (uint32_t u = 0; u < n; u++) {
        cl[u] = secagg_client_new(&p, u, s_id_sk + 64 * u, s_id_pk);
        assert_non_null(cl[u]);
    }
    uint8_t *buf, *buf2;
    size_t len, len2;
    r->aborted_at = 0;
    for (uint32_t i = 0; i < M; i++) r->sum[i] = 0xA5A5A5A5u; /* sentinel: must survive aborts */
    /* round 0 */
    for (uint32_t u = 0; u < n; u++) {
        if (drop[u] == BEFORE_ADVERTISE) continue;
        assert_int_equal(secagg_client_advertise(cl[u], &buf, &len), 0);
        assert_int_equal(secagg_server_add_keys(srv, buf, len), 0);
        free(buf);
    }
    if (secagg_server_close_keys(srv) < 0) {
        r->aborted_at = 1;
        goto out;
    }
    /* round 1 */
    for (uint32_t u = 0; u < n; u++) {
        if (drop[u] == BEFORE_ADVERTISE) continue;
        assert_int_equal(secagg_server_keys_broadcast(srv, u, &buf, &len), 0);
        if (drop[u] != BEFORE_SHARE) {
            assert_int_equal(secagg_client_handle_keys(cl[u], buf, len, &buf2, &len2), 0);
            assert_int_equal(secagg_server_add_shares(srv, buf2, len2), 0);
            free(buf2);
        }
        free(buf);
    }
    if (secagg_server_close_shares(srv) < 0) {
        r->aborted_at = 2;
        goto out;
    }
    /* round 2 */
    for (uint32_t u = 0; u < n; u++) {
        if (drop[u] == BEFORE_ADVERTISE || drop[u] == BEFORE_SHARE) continue;
        assert_int_equal(secagg_server_shares_delivery(srv, u, &buf, &len), 0);
        assert_int_equal(secagg_client_handle_shares(cl[u], buf, len), 0);
        free(buf);
        if (drop[u] == BEFORE_MASKED) continue;
        assert_int_equal(secagg_client_masked_input(cl[u], in + (size_t)u * M, &buf, &len), 0);
        assert_int_equal(len, secagg_masked_size(M));
        if (u == 0 && r->captured) memcpy(r->captured, buf + len - 4 * M, 4 * M);
        assert_int_equal(secagg_server_add_masked(srv, buf, len), 0);
        free(buf);
    }
    if (secagg_server_close_masked(srv) < 0) {
        r->aborted_at = 3;
        assert_int_equal(secagg_server_survivors(srv, &buf, &len), -1);
        goto out;
    }
    memset(r->expect, 0, sizeof r->expect);
    for (uint32_t u = 0; u < n; u++)
        if (!drop[u] || drop[u] >= BEFORE_UNMASK)
            for (uint32_t i = 0; i < M; i++) r->expect[i] += in[(size_t)u * M + i];
    /* round 3: the consistency check */
    uint8_t *unsigned_ = calloc(n, 1);
    for (uint32_t u = 0; u < n; u++) unsigned_[u] = drop[u] == BEFORE_UNMASK;
    int signed_rc = s_sign_all(srv, cl, unsigned_);
    free(unsigned_);
    if (signed_rc < 0) {
        r->aborted_at = 4;
        assert_int_equal(secagg_server_unmask_request(srv, 0, &buf, &len), -1);
        goto out;
    }
    /* round 4 */
    for (uint32_t u = 0; u < n; u++)
        if (!drop[u]) s_answer(srv, cl[u], u);
    s_check_disjoint(srv, n);
    if (secagg_server_finish(srv, r->sum) < 0) {
        r->aborted_at = 5;
        goto out;
    }
    assert_int_equal(secagg_server_state(srv), SECAGG_S_DONE);
    assert_memory_equal(r->sum, r->expect, sizeof r->sum);
out:
    if (r->aborted_at) {
        assert_int_equal(secagg_server_state(srv), SECAGG_S_ABORTED);
        for (uint32_t i = 0; i < M; i++) assert_int_equal(r->sum[i], 0xA5A5A5A5u);
        assert_int_equal(secagg_server_finish(srv, r->sum), -1);
    }
    for (uint32_t u = 0; u < n; u++) secagg_client_destroy(&cl[u]);
    secagg_server_destroy(&srv);
    free(cl);
    free(in);
    free(drop);
}

/* Spreads `per` dropouts over each of the four phases, starting at node `first`. */
static void s_spread(uint8_t *drop, uint32_t n, uint32_t first, uint32_t stride, uint32_t per)
{
    memset(drop, 0, n);
    uint32_t u = first;
    for (int ph = BEFORE_ADVERTISE; ph <= BEFORE_UNMASK; ph++)
        for (uint32_t i = 0; i < per; i++, u = (u + stride) % n) drop[u] = (uint8_t)ph;
}

static void test_n3_every_phase(void **state)
{
    (void)state;
    static run_t r;
    memset(&r, 0, sizeof r);
    r.n = 3, r.k = 2, r.t = 2, r.round_id = 1;
    s_run(&r);
    assert_int_equal(r.aborted_at, 0);
    /* n - t = 1 dropout at each phase in turn */
    for (uint8_t ph = BEFORE_ADVERTISE; ph <= BEFORE_REVEAL; ph++) {
        for (uint32_t who = 0; who < 3; who++) {
            uint8_t drop[3] = {0};
            drop[who] = ph;
            r.drop = drop;
            r.round_id++;
            s_run(&r);
            assert_int_equal(r.aborted_at, 0);
        }
    }
}

static void test_n10_dropouts_up_to_n_minus_t(void **state)
{
    (void)state;
    static run_t r;
    uint8_t drop[10];
    memset(&r, 0, sizeof r);
    r.n = 10, r.k = 9, r.t = 6, r.round_id = 100, r.drop = drop;
    s_spread(drop, 10, 1, 3, 1); /* 4 = n - t dropouts, one per phase */
    s_run(&r);
    assert_int_equal(r.aborted_at, 0);
    /* all n - t dropouts at a single phase */
    for (uint8_t ph = BEFORE_ADVERTISE; ph <= BEFORE_UNMASK; ph++) {
        memset(drop, 0, sizeof drop);
        for (uint32_t u = 2; u < 6; u++) drop[u] = ph;
        r.round_id++;
        s_run(&r);
        assert_int_equal(r.aborted_at, 0);
    }
}

static void test_n10_below_threshold_aborts(void **state)
{
    (void)state;
    static run_t r;
    uint8_t drop[10];
    memset(&r, 0, sizeof r);
    r.n = 10, r.k = 9, r.t = 6, r.round_id = 200, r.drop = drop;
    /* 5 > n - t dropouts at each phase: the abort comes at the next close */
    for (uint8_t ph = BEFORE_ADVERTISE; ph <= BEFORE_UNMASK; ph++) {
        memset(drop, 0, sizeof drop);
        for (uint32_t u = 0; u < 5; u++) drop[2 * u] = ph;
        r.round_id++;
        s_run(&r);
        assert_int_equal(r.aborted_at, ph);
        assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    }
    /* mixed: 3 never mask, 2 sign but never answer -> 5 answers < t at the end */
    memset(drop, 0, sizeof drop);
    drop[0] = drop[1] = drop[2] = BEFORE_MASKED;
    drop[3] = drop[4] = BEFORE_REVEAL;
    r.round_id++;
    s_run(&r);
    assert_int_equal(r.aborted_at, 5);
}

static void test_n50_complete(void **state)
{
    (void)state;
    static run_t r;
    uint8_t drop[50];
    memset(&r, 0, sizeof r);
    r.n = 50, r.k = 49, r.t = 26, r.round_id = 300, r.drop = drop;
    s_spread(drop, 50, 3, 7, 6); /* 24 = n - t dropouts, 6 per phase */
    s_run(&r);
    assert_int_equal(r.aborted_at, 0);
}

static void test_n50_secagg_plus(void **state)
{
    (void)state;
    static run_t r;
    uint8_t drop[50], seed[32];
    memset(seed, 7, sizeof seed);
    memset(&r, 0, sizeof r);
    r.n = 50, r.k = 10, r.t = 6, r.round_id = 400, r.drop = drop, r.graph_seed = seed;
    s_spread(drop, 50, 0, 13, 2); /* 8 dropouts, 2 per phase, spread over the ring */
    s_run(&r);
    assert_int_equal(r.aborted_at, 0);
    /* a whole neighbourhood gone: unmasking cannot finish, so nothing is revealed */
    secagg_params_t p;
    assert_int_equal(secagg_params_init(&p, 401, 50, 10, 6, M), 0);
    memcpy(p.graph_seed, seed, 32);
    secagg_graph_t *g = secagg_graph_new(&p);
    uint32_t nb[10];
    assert_int_equal(secagg_graph_neighbours(g, 5, nb), 10);
    memset(drop, 0, sizeof drop);
    for (int i = 0; i < 6; i++) drop[nb[i]] = BEFORE_MASKED;
    r.round_id = 401;
    s_run(&r);
    assert_int_equal(r.aborted_at, 3);
    secagg_graph_destroy(&g);
    secagg_graph_destroy(&g);
}

static void test_masks_fresh_every_round(void **state)
{
    (void)state;
    static run_t r;
    static uint32_t inputs[5 * M];
    static uint8_t a[4 * M], b[4 * M];
    for (size_t i = 0; i < 5 * M; i++) inputs[i] = (uint32_t)i;
    memset(&r, 0, sizeof r);
    r.n = 5, r.k = 4, r.t = 3, r.inputs = inputs;
    r.round_id = 500, r.captured = a;
    s_run(&r);
    assert_int_equal(r.aborted_at, 0);
    r.round_id = 501, r.captured = b;
    s_run(&r);
    assert_int_equal(r.aborted_at, 0);
    assert_memory_not_equal(a, b, sizeof a);
    /* the masked vector is not the input */
    assert_memory_not_equal(a, inputs, sizeof a);
    /* same round id again (e.g. a restarted round): still fresh keys, fresh masks */
    r.round_id = 501, r.captured = a;
    s_run(&r);
    assert_memory_not_equal(a, b, sizeof a);
}

/* ---- a round driven step by step, for tampering and refusal tests ---- */

typedef struct {
    secagg_params_t p;
    secagg_server_t *srv;
    secagg_client_t *cl[6];
    uint32_t n;
} fix_t;

static void s_fix_open(fix_t *f, uint32_t n, uint64_t round_id)
{
    s_identities(8);
    f->n = n;
    assert_int_equal(secagg_params_init(&f->p, round_id, n, n - 1, 3, 64), 0);
    randombytes_buf(f->p.context, sizeof f->p.context);
    f->srv = secagg_server_new(&f->p, s_id_pk, 1);
    assert_non_null(f->srv);
    for (uint32_t u = 0; u < n; u++) f->cl[u] = secagg_client_new(&f->p, u, s_id_sk + 64 * u, s_id_pk);
}

static void s_fix_close(fix_t *f)
{
    for (uint32_t u = 0; u < f->n; u++) secagg_client_destroy(&f->cl[u]);
    secagg_server_destroy(&f->srv);
}

static void s_fix_keys(fix_t *f)
{
    uint8_t *b;
    size_t l;
    for (uint32_t u = 0; u < f->n; u++) {
        assert_int_equal(secagg_client_advertise(f->cl[u], &b, &l), 0);
        assert_int_equal(secagg_server_add_keys(f->srv, b, l), 0);
        free(b);
    }
    assert_int_equal(secagg_server_close_keys(f->srv), 0);
}

static void s_fix_shares(fix_t *f)
{
    uint8_t *b, *b2;
    size_t l, l2;
    for (uint32_t u = 0; u < f->n; u++) {
        assert_int_equal(secagg_server_keys_broadcast(f->srv, u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_keys(f->cl[u], b, l, &b2, &l2), 0);
        assert_int_equal(secagg_server_add_shares(f->srv, b2, l2), 0);
        free(b);
        free(b2);
    }
    assert_int_equal(secagg_server_close_shares(f->srv), 0);
}

static void s_fix_masked(fix_t *f)
{
    uint8_t *b;
    size_t l;
    uint32_t x[64] = {0};
    for (uint32_t u = 0; u < f->n; u++) {
        assert_int_equal(secagg_server_shares_delivery(f->srv, u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_shares(f->cl[u], b, l), 0);
        free(b);
        assert_int_equal(secagg_client_masked_input(f->cl[u], x, &b, &l), 0);
        assert_int_equal(secagg_server_add_masked(f->srv, b, l), 0);
        free(b);
    }
}

static void s_expect_key_rejection(const secagg_broadcast_t *bc, fix_t *f)
{
    uint8_t *b, *b2 = NULL;
    size_t l, l2;
    assert_int_equal(secagg_broadcast_encode(bc, &b, &l), 0);
    assert_int_equal(secagg_client_handle_keys(f->cl[0], b, l, &b2, &l2), -1);
    assert_null(b2);
    assert_int_equal(secagg_client_state(f->cl[0]), SECAGG_C_ABORTED);
    free(b);
}

static void test_unsigned_or_wrongly_signed_keys_rejected(void **state)
{
    (void)state;
    for (int variant = 0; variant < 6; variant++) {
        fix_t f;
        s_fix_open(&f, 4, 600 + variant);
        s_fix_keys(&f);
        uint8_t *b;
        size_t l;
        assert_int_equal(secagg_server_keys_broadcast(f.srv, 0, &b, &l), 0);
        secagg_broadcast_t bc;
        assert_int_equal(secagg_broadcast_decode(b, l, &bc), 0);
        free(b);
        assert_int_equal(bc.count, 3);
        secagg_keys_t *e = &bc.entries[1];
        if (variant == 0) memset(e->sig, 0, sizeof e->sig);          /* unsigned */
        if (variant == 1) e->s_pk[5] ^= 1;                          /* key swapped in transit */
        /* 2: the right message signed by another node; 4: the right node's key over the
         * right message (the test's copy of the layout, checked by variant 5); 5: the
         * previous version's message (no round context) signed by the right node */
        if (variant == 2 || variant == 4 || variant == 5) {
            uint8_t msg[256];
            const char *label = variant == 5 ? "medfl-secagg-keys-v1" : "medfl-secagg-keys-v2";
            size_t o = strlen(label);
            memcpy(msg, label, o);
            for (int i = 0; i < 8; i++) msg[o + i] = (uint8_t)(bc.round_id >> (8 * i));
            o += 8;
            if (variant != 5) {
                memcpy(msg + o, f.p.context, 32);
                o += 32;
            }
            for (int i = 0; i < 4; i++) msg[o + i] = (uint8_t)(e->node >> (8 * i));
            memcpy(msg + o + 4, e->c_pk, 32);
            memcpy(msg + o + 36, e->s_pk, 32);
            crypto_sign_detached(e->sig, NULL, msg, o + 68,
                                 s_id_sk + 64 * (variant == 2 ? 3 : e->node));
        }
        if (variant == 3) bc.round_id++;                             /* replay into another round */
        if (variant == 4) {
            /* control: the re-signed entry is accepted, so variants 2 and 5 fail for the
             * signer and the missing context alone */
            uint8_t *b2 = NULL;
            size_t l2;
            assert_int_equal(secagg_broadcast_encode(&bc, &b, &l), 0);
            assert_int_equal(secagg_client_handle_keys(f.cl[0], b, l, &b2, &l2), 0);
            free(b);
            free(b2);
            secagg_broadcast_clear(&bc);
            s_fix_close(&f);
            continue;
        }
        s_expect_key_rejection(&bc, &f);
        if (variant != 3) {
            assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
            char want[160];
            snprintf(want, sizeof want, "keys of node %u: signature does not verify against its "
                     "enrolled identity key and this round's parameters", e->node);
            assert_non_null(strstr(medfl_error_message(), want));
        }
        /* the server rejects the same forged AdvertiseKeys too */
        secagg_advertise_t a = {.round_id = f.p.round_id, .keys = *e};
        a.keys.node = 1;
        secagg_server_t *s2 = secagg_server_new(&f.p, s_id_pk, 1);
        assert_int_equal(secagg_advertise_encode(&a, &b, &l), 0);
        if (variant != 3) assert_int_equal(secagg_server_add_keys(s2, b, l), -1);
        free(b);
        secagg_server_destroy(&s2);
        secagg_broadcast_clear(&bc);
        s_fix_close(&f);
    }
}

/* Every other node's keys as one broadcast for `to`, as a relay that checks nothing would
 * send it (complete graph). */
static void s_relay(const secagg_keys_t *keys, uint32_t n, uint32_t to, uint64_t round_id,
                    uint8_t **b, size_t *l)
{
    secagg_keys_t e[8];
    uint32_t c = 0;
    for (uint32_t u = 0; u < n; u++)
        if (u != to) e[c++] = keys[u];
    secagg_broadcast_t bc = {.round_id = round_id, .count = c, .entries = e};
    assert_int_equal(secagg_broadcast_encode(&bc, b, l), 0);
}

/* Node 2 was sent another round start (its context differs in one bit): the aggregator's
 * own check drops its keys; were they relayed anyway, its neighbours refuse them, and it
 * refuses theirs. The round completes without its input. */
static void test_round_context_mismatch_refused(void **state)
{
    (void)state;
    enum { N = 4, ODD = 2, MX = 64 };
    const uint64_t rid = 700;
    s_identities(8);
    secagg_params_t p, q;
    assert_int_equal(secagg_params_init(&p, rid, N, N - 1, 3, MX), 0);
    randombytes_buf(p.context, sizeof p.context);
    q = p;
    q.context[7] ^= 0x40;
    secagg_server_t *srv = secagg_server_new(&p, s_id_pk, 1);
    assert_non_null(srv);
    secagg_client_t *cl[N];
    secagg_keys_t keys[N];
    uint8_t *b, *b2;
    size_t l, l2;
    for (uint32_t u = 0; u < N; u++) {
        cl[u] = secagg_client_new(u == ODD ? &q : &p, u, s_id_sk + 64 * u, s_id_pk);
        assert_non_null(cl[u]);
        assert_int_equal(secagg_client_advertise(cl[u], &b, &l), 0);
        secagg_advertise_t a;
        assert_int_equal(secagg_advertise_decode(b, l, &a), 0);
        keys[u] = a.keys;
        int rc = secagg_server_add_keys(srv, b, l);
        free(b);
        if (u != ODD) {
            assert_int_equal(rc, 0);
            continue;
        }
        assert_int_equal(rc, -1);
        assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
        assert_non_null(strstr(medfl_error_message(), "secagg round 700: keys of node 2: "
                               "signature does not verify"));
        assert_non_null(strstr(medfl_error_message(), "it was sent another round start than "
                               "this party"));
    }

    /* a relay that forwards node 2's keys: an honest neighbour refuses them (a fresh client
     * of node 0, the real one stays in the round below) */
    secagg_client_t *c0 = secagg_client_new(&p, 0, s_id_sk, s_id_pk);
    assert_non_null(c0);
    assert_int_equal(secagg_client_advertise(c0, &b, &l), 0);
    free(b);
    s_relay(keys, N, 0, rid, &b, &l);
    b2 = NULL;
    assert_int_equal(secagg_client_handle_keys(c0, b, l, &b2, &l2), -1);
    assert_null(b2);
    assert_int_equal(secagg_client_state(c0), SECAGG_C_ABORTED);
    assert_non_null(strstr(medfl_error_message(), "keys of node 2: signature does not verify"));
    free(b);
    secagg_client_destroy(&c0);
    /* and node 2 refuses the honest nodes' keys: it checks them against its own context */
    s_relay(keys, N, ODD, rid, &b, &l);
    assert_int_equal(secagg_client_handle_keys(cl[ODD], b, l, &b2, &l2), -1);
    assert_null(b2);
    assert_non_null(strstr(medfl_error_message(), "keys of node 0: signature does not verify"));
    free(b);

    /* the honest aggregator's round goes on with nodes 0, 1, 3 only */
    assert_int_equal(secagg_server_close_keys(srv), 0);
    uint32_t cnt = 0;
    const uint32_t *u1 = secagg_server_set(srv, 1, &cnt);
    assert_int_equal(cnt, 3);
    assert_true(u1[0] == 0 && u1[1] == 1 && u1[2] == 3);
    for (uint32_t i = 0; i < cnt; i++) {
        uint32_t u = u1[i];
        assert_int_equal(secagg_server_keys_broadcast(srv, u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_keys(cl[u], b, l, &b2, &l2), 0);
        assert_int_equal(secagg_server_add_shares(srv, b2, l2), 0);
        free(b);
        free(b2);
    }
    assert_int_equal(secagg_server_close_shares(srv), 0);
    uint32_t x[N][MX], want[MX] = {0};
    for (uint32_t i = 0; i < cnt; i++) {
        uint32_t u = u1[i];
        for (uint32_t j = 0; j < MX; j++) {
            x[u][j] = (u + 1) * 1000u + j;
            want[j] += x[u][j];
        }
        assert_int_equal(secagg_server_shares_delivery(srv, u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_shares(cl[u], b, l), 0);
        free(b);
        assert_int_equal(secagg_client_masked_input(cl[u], x[u], &b, &l), 0);
        assert_int_equal(secagg_server_add_masked(srv, b, l), 0);
        free(b);
    }
    assert_int_equal(secagg_server_close_masked(srv), 0);
    assert_int_equal(s_sign_all(srv, cl, NULL), 0);
    for (uint32_t i = 0; i < cnt; i++) s_answer(srv, cl[u1[i]], u1[i]);
    uint32_t sum[MX];
    assert_int_equal(secagg_server_finish(srv, sum), 0);
    assert_memory_equal(sum, want, sizeof sum);
    for (uint32_t u = 0; u < N; u++) secagg_client_destroy(&cl[u]);
    secagg_server_destroy(&srv);
}

static void test_tampered_ciphertext_rejected(void **state)
{
    (void)state;
    for (int variant = 0; variant < 3; variant++) {
        fix_t f;
        s_fix_open(&f, 4, 700 + variant);
        s_fix_keys(&f);
        s_fix_shares(&f);
        uint8_t *b;
        size_t l;
        assert_int_equal(secagg_server_shares_delivery(f.srv, 0, &b, &l), 0);
        secagg_shares_t d;
        assert_int_equal(secagg_shares_decode(SECAGG_MSG_SHARES_DELIVERY, b, l, &d), 0);
        free(b);
        assert_int_equal(d.count, 3);
        if (variant == 0) d.entries[1].ct[40] ^= 0x10;   /* body */
        if (variant == 1) d.entries[1].ct[3] ^= 0x01;    /* nonce */
        if (variant == 2) {                              /* swap two senders' ciphertexts */
            uint8_t tmp[SECAGG_CT_BYTES];
            memcpy(tmp, d.entries[1].ct, sizeof tmp);
            memcpy(d.entries[1].ct, d.entries[2].ct, sizeof tmp);
            memcpy(d.entries[2].ct, tmp, sizeof tmp);
        }
        assert_int_equal(secagg_shares_encode(SECAGG_MSG_SHARES_DELIVERY, &d, &b, &l), 0);
        assert_int_equal(secagg_client_handle_shares(f.cl[0], b, l), -1);
        assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
        assert_int_equal(secagg_client_state(f.cl[0]), SECAGG_C_ABORTED);
        free(b);
        secagg_shares_clear(&d);
        s_fix_close(&f);
    }
}

/* Node who's unmask request with the given survivors / dropped, carrying the signatures the
 * server would forward to it (none when bare); one signature flipped when forge. */
static int s_request(fix_t *f, uint32_t who, const uint32_t *surv, uint32_t ns,
                     const uint32_t *drop, uint32_t nd, bool bare, bool forge)
{
    uint8_t *b, *out = NULL;
    size_t l, ol = 0;
    secagg_unmask_req_t rq;
    assert_int_equal(secagg_server_unmask_request(f->srv, who, &b, &l), 0);
    assert_int_equal(secagg_unmask_req_decode(b, l, &rq), 0);
    free(b);
    free(rq.survivors);
    free(rq.dropped);
    rq.survivors = (uint32_t *)surv, rq.n_survivors = ns;
    rq.dropped = (uint32_t *)drop, rq.n_dropped = nd;
    if (bare) rq.n_sigs = 0;
    if (forge) rq.sigs[rq.n_sigs - 1].sig[7] ^= 0x20;
    assert_int_equal(secagg_unmask_req_encode(&rq, &b, &l), 0);
    free(rq.sigs);
    int rc = secagg_client_handle_unmask(f->cl[who], b, l, &out, &ol);
    free(b);
    if (rc == 0) {
        secagg_unmask_resp_t rs;
        assert_int_equal(secagg_unmask_resp_decode(out, ol, &rs), 0);
        /* an answer never holds two kinds for one node (entries are strictly increasing) */
        for (uint32_t i = 1; i < rs.count; i++) assert_true(rs.entries[i].node > rs.entries[i - 1].node);
        secagg_unmask_resp_clear(&rs);
        secagg_buf_free(out, ol);
    } else {
        assert_null(out);
    }
    return rc;
}

static void s_expect_refusal(int rc, medfl_err_t code, const char *text)
{
    assert_int_equal(rc, -1);
    assert_int_equal(medfl_error_code(), code);
    if (!strstr(medfl_error_message(), text)) fail_msg("'%s' lacks '%s'", medfl_error_message(), text);
}

static void test_honest_node_refuses_double_reveal(void **state)
{
    (void)state;
    fix_t f;
    s_fix_open(&f, 5, 800);
    s_fix_keys(&f);
    s_fix_shares(&f);
    s_fix_masked(&f);
    assert_int_equal(secagg_server_close_masked(f.srv), 0);
    assert_int_equal(s_sign_all(f.srv, f.cl, NULL), 0); /* every node signed U3 = {0..4} */
    const uint32_t all[] = {0, 1, 2, 3, 4};
    /* node 2 both survivor and dropped */
    const uint32_t both_d[] = {2};
    s_expect_refusal(s_request(&f, 0, all, 5, both_d, 1, false, false), MEDFL_EPERM,
                     "both as survivor and as dropped");
    assert_int_equal(secagg_client_state(f.cl[0]), SECAGG_C_ABORTED);
    /* survivors other than the set it signed (the requester "dropped") */
    const uint32_t s1[] = {0, 2, 3, 4}, d1[] = {1};
    s_expect_refusal(s_request(&f, 1, s1, 4, d1, 1, false, false), MEDFL_EPERM,
                     "not the one this node signed");
    /* no signatures forwarded, then a forged one */
    s_expect_refusal(s_request(&f, 2, all, 5, NULL, 0, true, false), MEDFL_EPERM,
                     "0 valid signatures");
    s_expect_refusal(s_request(&f, 4, all, 5, NULL, 0, false, true), MEDFL_ECRYPTO,
                     "does not verify");
    assert_int_equal(secagg_client_revealed(f.cl[4], 0), -1);
    /* a valid request is answered once; a second (asking for node 0's mask key) is refused
     * and what was revealed stays recorded */
    assert_int_equal(s_request(&f, 3, all, 5, NULL, 0, false, false), 0);
    assert_int_equal(secagg_client_revealed(f.cl[3], 0), SECAGG_REVEAL_B);
    const uint32_t s4[] = {1, 2, 3, 4}, d4[] = {0};
    s_expect_refusal(s_request(&f, 3, s4, 4, d4, 1, false, false), MEDFL_EPERM,
                     "second UnmaskRequest");
    assert_int_equal(secagg_client_revealed(f.cl[3], 0), SECAGG_REVEAL_B);
    assert_int_equal(secagg_client_state(f.cl[3]), SECAGG_C_DONE);
    s_fix_close(&f);

    /* the server rejects an answer holding a share it did not ask for */
    s_fix_open(&f, 4, 801);
    s_fix_keys(&f);
    s_fix_shares(&f);
    s_fix_masked(&f);
    assert_int_equal(secagg_server_close_masked(f.srv), 0);
    assert_int_equal(s_sign_all(f.srv, f.cl, NULL), 0);
    secagg_unmask_resp_t rs = {.round_id = 801, .sender = 0, .count = 1};
    secagg_reveal_t e = {.node = 1, .kind = SECAGG_REVEAL_SK};
    rs.entries = &e;
    uint8_t *b;
    size_t l;
    assert_int_equal(secagg_unmask_resp_encode(&rs, &b, &l), 0);
    assert_int_equal(secagg_server_add_unmask(f.srv, b, l), -1);
    free(b);
    uint32_t nb, nsk;
    secagg_server_revealed(f.srv, 1, &nb, &nsk);
    assert_int_equal(nb + nsk, 0);
    s_fix_close(&f);
}

/* secagg_add_fn over big-endian values: a masked vector in an encoding other than the
 * MaskedInput message's, decoded straight into the sum. */
typedef struct {
    const uint8_t *be;
    int calls;
    bool fail;
} be_ctx_t;

static int s_add_be(void *ctx, uint32_t *sum, uint64_t m)
{
    be_ctx_t *c = ctx;
    c->calls++;
    if (c->fail) return medfl_error_set(MEDFL_EPROTO, "test decoder told to fail");
    for (uint64_t i = 0; i < m; i++)
        sum[i] += (uint32_t)c->be[4 * i] << 24 | (uint32_t)c->be[4 * i + 1] << 16 |
                  (uint32_t)c->be[4 * i + 2] << 8 | (uint32_t)c->be[4 * i + 3];
    return 0;
}

/* The aggregator's one-pass path: a masked vector decoded by the caller into the server's sum
 * gives the exact sum; the MaskedInput checks (round, roster, duplicate, length) come before
 * the decoder runs, and a decoder that fails leaves the node out of U3, free to send again. */
static void test_masked_values_decoded_into_sum(void **state)
{
    (void)state;
    fix_t f;
    s_fix_open(&f, 4, 950);
    s_fix_keys(&f);
    s_fix_shares(&f);
    uint32_t x[4][64], expect[64] = {0}, sum[64];
    uint8_t be[64 * 4];
    for (uint32_t u = 0; u < 4; u++)
        for (uint32_t i = 0; i < 64; i++) {
            x[u][i] = 0x01000000u * u + 977u * i + 3u;
            expect[i] += x[u][i];
        }
    for (uint32_t u = 0; u < 4; u++) {
        uint8_t *b;
        size_t l;
        assert_int_equal(secagg_server_shares_delivery(f.srv, u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_shares(f.cl[u], b, l), 0);
        free(b);
        assert_int_equal(secagg_client_masked_input(f.cl[u], x[u], &b, &l), 0);
        if (u == 3) { /* the message path, for comparison */
            assert_int_equal(secagg_server_add_masked(f.srv, b, l), 0);
            free(b);
            continue;
        }
        secagg_masked_t mi;
        assert_int_equal(secagg_masked_decode(b, l, &mi), 0);
        for (uint32_t i = 0; i < 64; i++) {
            uint32_t v;
            memcpy(&v, mi.values_le + 4 * i, 4);
            be[4 * i] = (uint8_t)(v >> 24), be[4 * i + 1] = (uint8_t)(v >> 16);
            be[4 * i + 2] = (uint8_t)(v >> 8), be[4 * i + 3] = (uint8_t)v;
        }
        free(b);
        be_ctx_t c = {.be = be, .fail = true};
        assert_int_equal(secagg_server_add_masked_values(f.srv, 950, u, 64, s_add_be, &c), -1);
        assert_int_equal(c.calls, 1);
        c.fail = false;
        /* refused before decoding: other round, outside the roster, wrong length */
        assert_int_equal(secagg_server_add_masked_values(f.srv, 951, u, 64, s_add_be, &c), -1);
        assert_int_equal(secagg_server_add_masked_values(f.srv, 950, 7, 64, s_add_be, &c), -1);
        assert_int_equal(secagg_server_add_masked_values(f.srv, 950, u, 63, s_add_be, &c), -1);
        assert_int_equal(medfl_error_code(), MEDFL_EPROTO);
        assert_int_equal(c.calls, 1);
        assert_int_equal(secagg_server_add_masked_values(f.srv, 950, u, 64, s_add_be, &c), 0);
        assert_int_equal(c.calls, 2);
        /* a second input from the same node never reaches the decoder */
        assert_int_equal(secagg_server_add_masked_values(f.srv, 950, u, 64, s_add_be, &c), -1);
        assert_non_null(strstr(medfl_error_message(), "duplicate"));
        assert_int_equal(c.calls, 2);
    }
    assert_int_equal(secagg_server_close_masked(f.srv), 0);
    uint32_t n3 = 0;
    secagg_server_set(f.srv, 3, &n3);
    assert_int_equal(n3, 4);
    assert_int_equal(s_sign_all(f.srv, f.cl, NULL), 0);
    for (uint32_t u = 0; u < 4; u++) s_answer(f.srv, f.cl[u], u);
    assert_int_equal(secagg_server_finish(f.srv, sum), 0);
    assert_memory_equal(sum, expect, sizeof sum);
    s_fix_close(&f);
}

/* The consistency check itself: one survivor set per round, listing the signer; the server
 * takes only signatures over the set it sent; too few signers abort before any reveal. */
static void test_survivor_set_signed_once(void **state)
{
    (void)state;
    fix_t f;
    s_fix_open(&f, 5, 820);
    s_fix_keys(&f);
    s_fix_shares(&f);
    s_fix_masked(&f);
    assert_int_equal(secagg_server_close_masked(f.srv), 0);
    uint8_t *b, *o;
    size_t l, ol;
    /* a set without the signer, a set of fewer than t of its neighbourhood */
    const uint32_t no0[] = {1, 2, 3, 4}, two[] = {0, 1};
    secagg_survivors_t sv = {.round_id = 820, .count = 4, .nodes = (uint32_t *)no0};
    assert_int_equal(secagg_survivors_encode(&sv, &b, &l), 0);
    s_expect_refusal(secagg_client_sign_survivors(f.cl[0], b, l, &o, &ol), MEDFL_EPERM,
                     "does not list this node");
    free(b);
    sv = (secagg_survivors_t){.round_id = 820, .count = 2, .nodes = (uint32_t *)two};
    assert_int_equal(secagg_survivors_encode(&sv, &b, &l), 0);
    s_expect_refusal(secagg_client_sign_survivors(f.cl[1], b, l, &o, &ol), MEDFL_EPERM,
                     "threshold 3");
    free(b);
    /* node 2 signs the set {1,2,3,4}: the server, which sent {0..4}, refuses it */
    sv = (secagg_survivors_t){.round_id = 820, .count = 4, .nodes = (uint32_t *)no0};
    assert_int_equal(secagg_survivors_encode(&sv, &b, &l), 0);
    assert_int_equal(secagg_client_sign_survivors(f.cl[2], b, l, &o, &ol), 0);
    free(b);
    s_expect_refusal(secagg_server_add_signature(f.srv, o, ol), MEDFL_ECRYPTO,
                     "does not verify over the survivor set");
    free(o);
    /* node 3 signs the real set once, and refuses a second set */
    assert_int_equal(secagg_server_survivors(f.srv, &b, &l), 0);
    assert_int_equal(secagg_client_sign_survivors(f.cl[3], b, l, &o, &ol), 0);
    assert_int_equal(secagg_server_add_signature(f.srv, o, ol), 0);
    assert_int_equal(secagg_server_add_signature(f.srv, o, ol), -1); /* duplicate */
    free(o);
    s_expect_refusal(secagg_client_sign_survivors(f.cl[3], b, l, &o, &ol), MEDFL_EPERM,
                     "second survivor set");
    assert_int_equal(secagg_client_state(f.cl[3]), SECAGG_C_ABORTED);
    assert_int_equal(secagg_client_sign_survivors(f.cl[4], b, l, &o, &ol), 0);
    assert_int_equal(secagg_server_add_signature(f.srv, o, ol), 0);
    free(o);
    free(b);
    /* 2 signers < t = 3: abort, nothing to unmask */
    s_expect_refusal(secagg_server_close_signatures(f.srv), MEDFL_ESTATE, "signed the survivor set");
    assert_int_equal(secagg_server_state(f.srv), SECAGG_S_ABORTED);
    assert_int_equal(secagg_server_unmask_request(f.srv, 4, &b, &l), -1);
    s_fix_close(&f);
}

static void test_protocol_order_enforced(void **state)
{
    (void)state;
    fix_t f;
    s_fix_open(&f, 3, 900);
    uint8_t *b = NULL;
    size_t l;
    uint32_t x[64] = {0};
    assert_int_equal(secagg_client_masked_input(f.cl[0], x, &b, &l), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    assert_int_equal(secagg_server_close_shares(f.srv), -1);
    s_fix_keys(&f);
    /* duplicate keys and keys after close */
    assert_int_equal(secagg_client_advertise(f.cl[0], &b, &l), -1);
    /* no survivor set nor unmask request before the masked inputs are closed */
    assert_int_equal(secagg_server_survivors(f.srv, &b, &l), -1);
    assert_int_equal(secagg_server_unmask_request(f.srv, 0, &b, &l), -1);
    /* wrong round in a KeysBroadcast */
    secagg_broadcast_t bc = {.round_id = 901, .count = 0};
    assert_int_equal(secagg_broadcast_encode(&bc, &b, &l), 0);
    uint8_t *o = NULL;
    size_t ol;
    assert_int_equal(secagg_client_handle_keys(f.cl[1], b, l, &o, &ol), -1);
    free(b);
    s_fix_close(&f);
}

/* A wrong share of a dropped node's mask key is caught (range check or the advertised public
 * key) and aborts the round; duplicate or out-of-phase masked inputs are refused. */
static void test_corrupted_reveal_aborts(void **state)
{
    (void)state;
    fix_t f;
    s_fix_open(&f, 5, 1100);
    s_fix_keys(&f);
    s_fix_shares(&f);
    uint8_t *b, *rq;
    size_t l, rq_len;
    uint32_t x[64] = {0};
    for (uint32_t u = 0; u < 5; u++) {
        assert_int_equal(secagg_server_shares_delivery(f.srv, u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_shares(f.cl[u], b, l), 0);
        free(b);
        if (u == 4) continue; /* node 4 drops before its masked input */
        assert_int_equal(secagg_client_masked_input(f.cl[u], x, &b, &l), 0);
        assert_int_equal(secagg_server_add_masked(f.srv, b, l), 0);
        assert_int_equal(secagg_server_add_masked(f.srv, b, l), -1); /* duplicate */
        free(b);
    }
    assert_int_equal(secagg_server_close_masked(f.srv), 0);
    assert_int_equal(secagg_client_masked_input(f.cl[4], x, &b, &l), 0);
    assert_int_equal(secagg_server_add_masked(f.srv, b, l), -1); /* too late */
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    free(b);
    assert_int_equal(s_sign_all(f.srv, f.cl, NULL), 0);
    for (uint32_t u = 0; u < 4; u++) {
        assert_int_equal(secagg_server_unmask_request(f.srv, u, &rq, &rq_len), 0);
        assert_int_equal(secagg_client_handle_unmask(f.cl[u], rq, rq_len, &b, &l), 0);
        free(rq);
        if (u == 0) {
            secagg_unmask_resp_t rs;
            assert_int_equal(secagg_unmask_resp_decode(b, l, &rs), 0);
            int hit = 0;
            for (uint32_t i = 0; i < rs.count; i++)
                if (rs.entries[i].node == 4) {
                    assert_int_equal(rs.entries[i].kind, SECAGG_REVEAL_SK);
                    /* limb 3 (key bytes 12..15): a change in limb 0 could hit only the
                     * three low bits X25519 clamps away and leave an equivalent key */
                    rs.entries[i].share.y[3] = (rs.entries[i].share.y[3] + 12345) % SHAMIR_P;
                    hit = 1;
                }
            assert_true(hit);
            secagg_buf_free(b, l);
            assert_int_equal(secagg_unmask_resp_encode(&rs, &b, &l), 0);
            secagg_unmask_resp_clear(&rs);
        }
        assert_int_equal(secagg_server_add_unmask(f.srv, b, l), 0);
        secagg_buf_free(b, l);
    }
    uint32_t sum[64];
    assert_int_equal(secagg_server_finish(f.srv, sum), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
    assert_int_equal(secagg_server_state(f.srv), SECAGG_S_ABORTED);
    s_fix_close(&f);
}

/* Vectors longer than the PRG block, split across 3 server threads at block-aligned
 * boundaries, with an odd tail: the multi-threaded expansion path gives the exact sum. */
static void test_long_vector_threads(void **state)
{
    (void)state;
    const uint64_t m = 3 * 4096 * 3 + 37;
    const uint32_t n = 4;
    s_identities(n);
    secagg_params_t p;
    assert_int_equal(secagg_params_init(&p, 1200, n, 3, 3, m), 0);
    secagg_server_t *srv = secagg_server_new(&p, s_id_pk, 3);
    secagg_client_t *cl[4];
    uint32_t *x = malloc(m * 4), *want = calloc(m, 4), *sum = malloc(m * 4);
    uint8_t *b, *b2;
    size_t l, l2;
    for (uint32_t u = 0; u < n; u++) {
        cl[u] = secagg_client_new(&p, u, s_id_sk + 64 * u, s_id_pk);
        assert_int_equal(secagg_client_advertise(cl[u], &b, &l), 0);
        assert_int_equal(secagg_server_add_keys(srv, b, l), 0);
        free(b);
    }
    assert_int_equal(secagg_server_close_keys(srv), 0);
    for (uint32_t u = 0; u < n; u++) {
        assert_int_equal(secagg_server_keys_broadcast(srv, u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_keys(cl[u], b, l, &b2, &l2), 0);
        assert_int_equal(secagg_server_add_shares(srv, b2, l2), 0);
        free(b);
        free(b2);
    }
    assert_int_equal(secagg_server_close_shares(srv), 0);
    for (uint32_t u = 0; u < n; u++) {
        assert_int_equal(secagg_server_shares_delivery(srv, u, &b, &l), 0);
        assert_int_equal(secagg_client_handle_shares(cl[u], b, l), 0);
        free(b);
        if (u == 2) continue; /* dropped: its pairwise masks are re-expanded by the server */
        randombytes_buf(x, m * 4);
        for (uint64_t i = 0; i < m; i++) want[i] += x[i];
        assert_int_equal(secagg_client_masked_input(cl[u], x, &b, &l), 0);
        assert_int_equal(secagg_server_add_masked(srv, b, l), 0);
        free(b);
    }
    assert_int_equal(secagg_server_close_masked(srv), 0);
    assert_int_equal(s_sign_all(srv, cl, NULL), 0);
    for (uint32_t u = 0; u < n; u++)
        if (u != 2) s_answer(srv, cl[u], u);
    assert_int_equal(secagg_server_finish(srv, sum), 0);
    assert_memory_equal(sum, want, m * 4);
    for (uint32_t u = 0; u < n; u++) secagg_client_destroy(&cl[u]);
    secagg_server_destroy(&srv);
    free(x);
    free(want);
    free(sum);
}

/* ---- fixed point ---- */

static void test_fixed_point(void **state)
{
    (void)state;
    secagg_fixed_t fx = {.scale = 65536, .clip = 1.0, .max_weight = 4.0};
    assert_int_equal(secagg_fixed_check(&fx, 100), 0);
    /* 8192 * (1 * 4 * 65536 + 0.5) > 2^31 - 1 */
    assert_int_equal(secagg_fixed_check(&fx, 8192), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_int_equal(secagg_fixed_check(&fx, 8191), 0);
    secagg_fixed_t bad = {.scale = 0, .clip = 1, .max_weight = 1};
    assert_int_equal(secagg_fixed_check(&bad, 1), -1);

    float x[M], y[M];
    uint32_t e[M];
    for (int i = 0; i < M; i++) x[i] = (float)sin(i * 0.37) * 1.5f; /* some beyond the clip */
    assert_int_equal(secagg_encode(&fx, x, M, 1.0, e), 0);
    assert_int_equal(secagg_decode(&fx, e, M, 1.0, y), 0);
    for (int i = 0; i < M; i++) {
        float c = x[i] > 1 ? 1 : x[i] < -1 ? -1 : x[i];
        assert_true(fabsf(y[i] - c) <= 1.0f / 65536);
    }
    assert_int_equal(secagg_encode(&fx, x, M, 4.5, e), -1); /* weight above max */
    assert_int_equal(secagg_encode(&fx, x, M, -1, e), -1);
    x[17] = NAN;
    assert_int_equal(secagg_encode(&fx, x, M, 1.0, e), -1);

    /* weighted average survives masking: encode with weights, aggregate, divide */
    uint32_t n = 4;
    static uint32_t in[4 * M];
    static float xs[4][M];
    double w[4] = {1.0, 2.5, 0.5, 4.0}, wsum = 0;
    for (uint32_t u = 0; u < n; u++) {
        for (int i = 0; i < M; i++) xs[u][i] = (float)cos(i * 0.1 + u) * 0.8f;
        assert_int_equal(secagg_encode(&fx, xs[u], M, w[u], in + u * M), 0);
        wsum += w[u];
    }
    static run_t r;
    memset(&r, 0, sizeof r);
    r.n = n, r.k = 3, r.t = 3, r.round_id = 1000, r.inputs = in;
    s_run(&r);
    assert_int_equal(r.aborted_at, 0);
    assert_int_equal(secagg_decode(&fx, r.sum, M, wsum, y), 0);
    for (int i = 0; i < M; i++) {
        double want = 0;
        for (uint32_t u = 0; u < n; u++) want += w[u] * xs[u][i];
        want /= wsum;
        assert_true(fabs(y[i] - want) <= 1.0 / 65536);
    }
    /* negative sums decode as negative */
    uint32_t neg = (uint32_t)-65536;
    assert_int_equal(secagg_decode(&fx, &neg, 1, 1.0, y), 0);
    assert_true(y[0] == -1.0f);
}

/* ---- Shamir ---- */

static void test_shamir(void **state)
{
    (void)state;
    uint8_t secret[32], got[32];
    randombytes_buf(secret, sizeof secret);
    uint64_t xs[20];
    shamir_share_t sh[20];
    for (int i = 0; i < 20; i++) xs[i] = (uint64_t)(3 * i + 1);
    assert_int_equal(shamir_split(secret, 7, xs, 20, sh), 0);
    /* any 7: take the last 7, then every third one */
    assert_int_equal(shamir_combine(xs + 13, sh + 13, 7, got), 0);
    assert_memory_equal(got, secret, 32);
    uint64_t px[7];
    shamir_share_t ps[7];
    for (int i = 0; i < 7; i++) px[i] = xs[i * 3], ps[i] = sh[i * 3];
    assert_int_equal(shamir_combine(px, ps, 7, got), 0);
    assert_memory_equal(got, secret, 32);
    /* all 20 work too */
    assert_int_equal(shamir_combine(xs, sh, 20, got), 0);
    assert_memory_equal(got, secret, 32);
    /* 6 do not give the secret */
    int r6 = shamir_combine(xs, sh, 6, got);
    assert_true(r6 != 0 || memcmp(got, secret, 32) != 0);
    /* a corrupted share is caught by the range check (or at least does not give the secret) */
    ps[2].y[3] = (ps[2].y[3] + 1) % SHAMIR_P;
    int rc = shamir_combine(px, ps, 7, got);
    assert_true(rc != 0 || memcmp(got, secret, 32) != 0);
    /* argument checks */
    assert_int_equal(shamir_split(secret, 0, xs, 20, sh), -1);
    assert_int_equal(shamir_split(secret, 21, xs, 20, sh), -1);
    xs[4] = xs[3];
    assert_int_equal(shamir_split(secret, 3, xs, 20, sh), -1);
    xs[4] = 0;
    assert_int_equal(shamir_split(secret, 3, xs, 20, sh), -1);
    /* field arithmetic */
    assert_int_equal(shamir_mul(shamir_inv(12345), 12345), 1);
    assert_int_equal(shamir_mul(SHAMIR_P - 1, SHAMIR_P - 1), 1);
    /* t > 64 uses the heap path */
    uint64_t bx[100];
    shamir_share_t bs[100];
    for (int i = 0; i < 100; i++) bx[i] = (uint64_t)i + 1;
    assert_int_equal(shamir_split(secret, 70, bx, 100, bs), 0);
    assert_int_equal(shamir_combine(bx + 30, bs + 30, 70, got), 0);
    assert_memory_equal(got, secret, 32);
}

/* ---- graph ---- */

static void test_graph(void **state)
{
    (void)state;
    secagg_params_t p;
    assert_int_equal(secagg_params_init(&p, 1, 50, 10, 6, 10), 0);
    secagg_graph_t *g = secagg_graph_new(&p), *g2 = secagg_graph_new(&p);
    uint32_t nb[49], nb2[49];
    for (uint32_t u = 0; u < 50; u++) {
        assert_int_equal(secagg_graph_neighbours(g, u, nb), 10);
        assert_int_equal(secagg_graph_neighbours(g2, u, nb2), 10);
        assert_memory_equal(nb, nb2, 10 * sizeof *nb); /* deterministic */
        uint32_t deg = 0;
        for (uint32_t v = 0; v < 50; v++) {
            assert_int_equal(secagg_graph_adjacent(g, u, v), secagg_graph_adjacent(g, v, u));
            deg += secagg_graph_adjacent(g, u, v);
        }
        assert_int_equal(deg, 10);
        for (int i = 0; i < 10; i++) {
            assert_true(secagg_graph_adjacent(g, u, nb[i]));
            if (i) assert_true(nb[i] > nb[i - 1]);
        }
    }
    secagg_graph_destroy(&g2);
    p.graph_seed[0] ^= 1;
    g2 = secagg_graph_new(&p);
    int differ = 0;
    for (uint32_t u = 0; u < 50 && !differ; u++) {
        secagg_graph_neighbours(g, u, nb);
        secagg_graph_neighbours(g2, u, nb2);
        differ = memcmp(nb, nb2, 10 * sizeof *nb) != 0;
    }
    assert_true(differ);
    secagg_graph_destroy(&g);
    secagg_graph_destroy(&g2);
    /* complete graph */
    assert_int_equal(secagg_params_init(&p, 1, 50, 49, 26, 10), 0);
    g = secagg_graph_new(&p);
    assert_int_equal(secagg_graph_neighbours(g, 7, nb), 49);
    assert_false(secagg_graph_adjacent(g, 7, 7));
    secagg_graph_destroy(&g);
    /* parameter validation and defaults */
    assert_int_equal(secagg_params_init(&p, 1, 50, 9, 5, 10), -1);  /* odd k < n - 1 */
    assert_int_equal(secagg_params_init(&p, 1, 50, 10, 12, 10), -1); /* t > k + 1 */
    assert_int_equal(secagg_params_init(&p, 1, 1, 0, 0, 10), -1);
    /* t must be a strict majority of the k + 1 holders (issue #16: t = 2 of 4 let an active
     * aggregator collect both secrets of one node from two halves) */
    assert_int_equal(secagg_params_init(&p, 1, 4, 3, 2, 10), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EPERM);
    assert_non_null(strstr(medfl_error_message(), "not a strict majority"));
    assert_int_equal(secagg_params_init(&p, 1, 4, 3, 3, 10), 0);
    assert_int_equal(secagg_params_init(&p, 1, 6, 5, 3, 10), -1);
    assert_int_equal(secagg_params_init(&p, 1, 6, 5, 4, 10), 0);
    assert_int_equal(secagg_params_init(&p, 1, 50, 10, 5, 10), -1); /* 5 of 11 */
    assert_int_equal(secagg_params_init(&p, 1, 2, 1, 1, 10), -1);
    assert_int_equal(secagg_params_init(&p, 1, 2, 1, 2, 10), 0);
    assert_int_equal(secagg_params_init(&p, 1, 4, 3, 0, 10), 0); /* 0 = the default */
    assert_int_equal(p.t, 3);
    assert_int_equal(secagg_default_threshold(1), 2);
    assert_int_equal(secagg_default_threshold(2), 2);
    assert_int_equal(secagg_default_threshold(3), 3);
    assert_int_equal(secagg_default_threshold(5), 4);
    assert_int_equal(secagg_default_neighbours(500), 18);
    assert_int_equal(secagg_default_neighbours(100), 14);
    assert_int_equal(secagg_default_neighbours(5), 4);
    assert_int_equal(secagg_default_threshold(18), 10);
}

/* ---- message codecs ---- */

/* Every strict prefix and a one-byte extension of a valid encoding must be rejected. */
static void s_strict(const uint8_t *b, size_t l, int (*dec)(const uint8_t *, size_t))
{
    assert_int_equal(dec(b, l), 0);
    uint8_t *ext = malloc(l + 1);
    memcpy(ext, b, l);
    ext[l] = 0;
    assert_int_equal(dec(ext, l + 1), -1);
    for (size_t cut = 0; cut < l; cut++) assert_int_equal(dec(ext, cut), -1);
    ext[2] ^= 0x7f; /* version */
    assert_int_equal(dec(ext, l), -1);
    free(ext);
}

static int s_dec_params(const uint8_t *b, size_t l)
{
    secagg_params_t p;
    return secagg_params_decode(b, l, &p);
}
static int s_dec_bc(const uint8_t *b, size_t l)
{
    secagg_broadcast_t m;
    int rc = secagg_broadcast_decode(b, l, &m);
    secagg_broadcast_clear(&m);
    return rc;
}
static int s_dec_sk(const uint8_t *b, size_t l)
{
    secagg_shares_t m;
    int rc = secagg_shares_decode(SECAGG_MSG_SHARE_KEYS, b, l, &m);
    secagg_shares_clear(&m);
    return rc;
}
static int s_dec_masked(const uint8_t *b, size_t l)
{
    secagg_masked_t m;
    return secagg_masked_decode(b, l, &m);
}
static int s_dec_req(const uint8_t *b, size_t l)
{
    secagg_unmask_req_t m;
    int rc = secagg_unmask_req_decode(b, l, &m);
    secagg_unmask_req_clear(&m);
    return rc;
}
static int s_dec_sv(const uint8_t *b, size_t l)
{
    secagg_survivors_t m;
    int rc = secagg_survivors_decode(b, l, &m);
    secagg_survivors_clear(&m);
    return rc;
}
static int s_dec_sig(const uint8_t *b, size_t l)
{
    secagg_survivor_sig_t m;
    return secagg_survivor_sig_decode(b, l, &m);
}
static int s_dec_resp(const uint8_t *b, size_t l)
{
    secagg_unmask_resp_t m;
    int rc = secagg_unmask_resp_decode(b, l, &m);
    secagg_unmask_resp_clear(&m);
    return rc;
}

static void test_codecs_strict(void **state)
{
    (void)state;
    uint8_t *b;
    size_t l;
    secagg_params_t p, q;
    assert_int_equal(secagg_params_init(&p, 77, 20, 8, 5, 1234), 0);
    assert_int_equal(secagg_params_encode(&p, &b, &l), 0);
    s_strict(b, l, s_dec_params);
    assert_int_equal(secagg_params_decode(b, l, &q), 0);
    assert_memory_equal(&p, &q, sizeof p);
    secagg_broadcast_t bcq;
    assert_int_equal(secagg_broadcast_decode(b, l, &bcq), -1); /* wrong type */
    free(b);

    secagg_keys_t ks[3] = {{.node = 1}, {.node = 4}, {.node = 9}};
    ks[1].c_pk[0] = 0x42;
    secagg_broadcast_t bc = {.round_id = 5, .count = 3, .entries = ks};
    assert_int_equal(secagg_broadcast_encode(&bc, &b, &l), 0);
    s_strict(b, l, s_dec_bc);
    assert_int_equal(secagg_broadcast_decode(b, l, &bcq), 0);
    assert_int_equal(bcq.count, 3);
    assert_memory_equal(&bcq.entries[1], &ks[1], sizeof ks[1]);
    secagg_broadcast_clear(&bcq);
    free(b);
    ks[2].node = 4; /* not increasing */
    assert_int_equal(secagg_broadcast_encode(&bc, &b, &l), 0);
    assert_int_equal(s_dec_bc(b, l), -1);
    free(b);

    secagg_cipher_t cs[2] = {{.peer = 2}, {.peer = 3}};
    secagg_shares_t sh = {.round_id = 5, .owner = 1, .count = 2, .entries = cs};
    assert_int_equal(secagg_shares_encode(SECAGG_MSG_SHARE_KEYS, &sh, &b, &l), 0);
    s_strict(b, l, s_dec_sk);
    secagg_shares_t shq;
    assert_int_equal(secagg_shares_decode(SECAGG_MSG_SHARES_DELIVERY, b, l, &shq), -1);
    free(b);
    cs[0].peer = 1; /* share addressed to its own sender */
    assert_int_equal(secagg_shares_encode(SECAGG_MSG_SHARE_KEYS, &sh, &b, &l), 0);
    assert_int_equal(s_dec_sk(b, l), -1);
    free(b);

    l = secagg_masked_size(10);
    b = calloc(1, l);
    secagg_masked_write_header(b, 5, 3, 10);
    s_strict(b, l, s_dec_masked);
    secagg_masked_write_header(b, 5, 3, 11); /* count disagrees with length */
    assert_int_equal(s_dec_masked(b, l), -1);
    secagg_masked_write_header(b, 5, 3, (uint64_t)1 << 40); /* absurd count */
    assert_int_equal(s_dec_masked(b, l), -1);
    free(b);

    uint32_t sv[3] = {0, 2, 5}, dr[1] = {3};
    secagg_survivors_t set = {.round_id = 5, .count = 3, .nodes = sv}, setq;
    assert_int_equal(secagg_survivors_encode(&set, &b, &l), 0);
    s_strict(b, l, s_dec_sv);
    assert_int_equal(secagg_survivors_decode(b, l, &setq), 0);
    assert_int_equal(setq.count, 3);
    assert_memory_equal(setq.nodes, sv, sizeof sv);
    secagg_survivors_clear(&setq);
    free(b);
    secagg_survivor_sig_t sg = {.round_id = 5, .s.node = 2}, sgq;
    sg.s.sig[63] = 0x99;
    assert_int_equal(secagg_survivor_sig_encode(&sg, &b, &l), 0);
    s_strict(b, l, s_dec_sig);
    assert_int_equal(secagg_survivor_sig_decode(b, l, &sgq), 0);
    assert_memory_equal(&sgq, &sg, sizeof sg);
    free(b);
    sg.s.node = SECAGG_MAX_NODES; /* not a node id */
    assert_int_equal(secagg_survivor_sig_encode(&sg, &b, &l), 0);
    assert_int_equal(s_dec_sig(b, l), -1);
    free(b);
    secagg_set_sig_t sigs[2] = {{.node = 0}, {.node = 5}};
    sigs[1].sig[0] = 0x77;
    secagg_unmask_req_t rq = {.round_id = 5, .n_survivors = 3, .survivors = sv, .n_dropped = 1,
                              .dropped = dr, .n_sigs = 2, .sigs = sigs}, rqq;
    assert_int_equal(secagg_unmask_req_encode(&rq, &b, &l), 0);
    s_strict(b, l, s_dec_req);
    assert_int_equal(secagg_unmask_req_decode(b, l, &rqq), 0);
    assert_int_equal(rqq.n_sigs, 2);
    assert_memory_equal(rqq.sigs, sigs, sizeof sigs);
    secagg_unmask_req_clear(&rqq);
    free(b);
    sigs[1].node = 0; /* signatures not increasing */
    assert_int_equal(secagg_unmask_req_encode(&rq, &b, &l), 0);
    assert_int_equal(s_dec_req(b, l), -1);
    free(b);
    sigs[1].node = 5;
    sv[2] = 2;
    assert_int_equal(secagg_unmask_req_encode(&rq, &b, &l), 0);
    assert_int_equal(s_dec_req(b, l), -1);
    free(b);
    assert_int_equal(secagg_survivors_encode(&set, &b, &l), 0); /* survivors not increasing */
    assert_int_equal(s_dec_sv(b, l), -1);
    free(b);

    secagg_reveal_t rv[2] = {{.node = 1, .kind = 0}, {.node = 2, .kind = 1}};
    rv[1].share.y[7] = SHAMIR_P - 1;
    secagg_unmask_resp_t rs = {.round_id = 5, .sender = 1, .count = 2, .entries = rv};
    assert_int_equal(secagg_unmask_resp_encode(&rs, &b, &l), 0);
    s_strict(b, l, s_dec_resp);
    free(b);
    rv[1].share.y[7] = SHAMIR_P; /* outside the field */
    assert_int_equal(secagg_unmask_resp_encode(&rs, &b, &l), 0);
    assert_int_equal(s_dec_resp(b, l), -1);
    free(b);
    rv[1].share.y[7] = 0;
    rv[1].kind = 2;
    assert_int_equal(secagg_unmask_resp_encode(&rs, &b, &l), 0);
    assert_int_equal(s_dec_resp(b, l), -1);
    free(b);

    /* header problems */
    uint8_t junk[SECAGG_HDR_BYTES] = {'S', 'A', SECAGG_WIRE_VERSION, 99};
    secagg_msg_type_t ty;
    uint64_t rid;
    assert_int_equal(secagg_msg_peek(junk, sizeof junk, &ty, &rid), -1);
    junk[3] = SECAGG_MSG_MASKED_INPUT;
    assert_int_equal(secagg_msg_peek(junk, sizeof junk, &ty, &rid), 0);
    assert_int_equal(ty, SECAGG_MSG_MASKED_INPUT);
    junk[0] = 'X';
    assert_int_equal(secagg_msg_peek(junk, sizeof junk, &ty, &rid), -1);
    assert_int_equal(secagg_msg_peek(NULL, 0, &ty, &rid), -1);
}

static int s_teardown(void **state)
{
    (void)state;
    free(s_id_pk);
    free(s_id_sk);
    s_id_pk = s_id_sk = NULL;
    s_ids = 0;
    return 0;
}

int main(void)
{
    if (sodium_init() < 0) return 1;
    log_configure(NULL, LOG_LEVEL_ERROR, LOG_FORMAT_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shamir),
        cmocka_unit_test(test_graph),
        cmocka_unit_test(test_codecs_strict),
        cmocka_unit_test(test_fixed_point),
        cmocka_unit_test(test_n3_every_phase),
        cmocka_unit_test(test_n10_dropouts_up_to_n_minus_t),
        cmocka_unit_test(test_n10_below_threshold_aborts),
        cmocka_unit_test(test_n50_complete),
        cmocka_unit_test(test_n50_secagg_plus),
        cmocka_unit_test(test_masks_fresh_every_round),
        cmocka_unit_test(test_unsigned_or_wrongly_signed_keys_rejected),
        cmocka_unit_test(test_round_context_mismatch_refused),
        cmocka_unit_test(test_tampered_ciphertext_rejected),
        cmocka_unit_test(test_honest_node_refuses_double_reveal),
        cmocka_unit_test(test_survivor_set_signed_once),
        cmocka_unit_test(test_protocol_order_enforced),
        cmocka_unit_test(test_masked_values_decoded_into_sum),
        cmocka_unit_test(test_corrupted_reveal_aborts),
        cmocka_unit_test(test_long_vector_threads),
    };
    return cmocka_run_group_tests(tests, NULL, s_teardown);
}
