/* The in-process federation harness shared by the round tests and the attack suite:
 * aggregator/rounds.c on a plain-mode wire server (tcp on loopback) and up to FED_MAX_NODES
 * node/round.c participants on plain-mode wire clients, all driven by one loop (fed_step),
 * with a deterministic test trainer whose deltas are known, so every committed version can
 * be checked against the exact weighted mean of the survivors' deltas. Adversaries plug in
 * through three hooks: `intercept` rewrites what the aggregator sends a node (a malicious
 * aggregator); a rogue node runs no node_round at all: the test sees what the aggregator
 * sends it and answers with crafted messages on its own enrolled connection (a malicious
 * node); `from_node` rewrites what an honest node_round sent before the aggregator sees it
 * (a malicious node that follows the protocol but lies in one field or value). Uses cmocka
 * asserts: for tests only. */
#ifndef MEDFL_FEDLIB_H
#define MEDFL_FEDLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aggregator/agg_config.h"
#include "aggregator/rounds.h"
#include "common/wire.h"
#include "node/ledger.h"
#include "node/round.h"

#define FED_MAX_NODES 6
#define FED_DIM 8

/* The deterministic test trainer: node u's delta is 0.001 (u + 1) (i + 1) for coordinate i
 * (distinct per node, inside every clip the tests use), 10 examples; fail_train makes it
 * fail like a broken device. */
typedef struct {
    int index;
    bool fail_train;
    bool linear; /* claims a linear step (round_trainer_t.linear_step): the node may share
                    distributed noise; its deltas stay the fixed ones above */
    int calls;
    float starts[4][FED_DIM]; /* the vector each of the first 4 local trainings started from */
} fed_trainer_t;

typedef struct fed_s fed_t;
/* A malicious aggregator's hand: called with every message the aggregator sent node i,
 * before that node sees it; it may rewrite the message (drop it by setting *deliver false). */
typedef void (*fed_intercept_fn)(fed_t *f, size_t i, wire_msg_t *msg, bool *deliver, void *ctx);
/* A malicious node's ear: a rogue node (rogue[i]) runs no node_round; every message the
 * aggregator sends it goes here instead, and the test answers through f->client[i]. */
typedef void (*fed_rogue_fn)(fed_t *f, size_t i, const wire_msg_t *msg, void *ctx);
/* A malicious node's hand on its own traffic: called with every message the aggregator
 * received from node i (msg->bulk may be rewritten in place through zmq_msg_data of
 * msg->_bulk_msg), before the round sees it. */
typedef void (*fed_from_node_fn)(fed_t *f, size_t i, wire_msg_t *msg, void *ctx);

struct fed_s {
    char dir[700];
    agg_config_t cfg;
    wire_server_t *server;
    rounds_t *rounds;
    uint8_t agg_sk[64], agg_pk[32];
    size_t n;
    char ids[FED_MAX_NODES][16];
    uint8_t sk[FED_MAX_NODES][64], pk[FED_MAX_NODES][32];
    fed_trainer_t tt[FED_MAX_NODES];
    wire_client_t *client[FED_MAX_NODES];
    node_round_t *node[FED_MAX_NODES];
    ledger_t *ledger[FED_MAX_NODES];
    bool dead[FED_MAX_NODES];
    rounds_peer_t peers[FED_MAX_NODES];
    /* drop node `drop` when the aggregator enters phase `drop_at` (IDLE = never) */
    int drop;
    rounds_phase_t drop_at;
    uint64_t drop_round;
    /* a dishonest aggregator: node `tamper` (-1 = none) receives its RoundStarts with
     * dp.record_weight_max multiplied by tamper_rwm */
    int tamper;
    double tamper_rwm;
    /* node `bad_eval` (-1 = none) reports every evaluation loss 1.0 higher than measured, as
     * a hospital with mislabelled validation data would */
    int bad_eval;
    fed_intercept_fn intercept; /* NULL: deliver everything as sent */
    void *intercept_ctx;
    fed_from_node_fn from_node; /* NULL: the aggregator gets what the nodes sent */
    void *from_node_ctx;
    /* Node i's privacy policy (privacy.require_dp ...): fed_init gives every node one that
     * takes any round (DP not required, no floor or ceiling), as the round tests assume;
     * fed_node_policy gives one its own. */
    node_round_policy_t policy[FED_MAX_NODES];
    bool rogue[FED_MAX_NODES];  /* set before fed_init's nodes start: see fed_init_rogue */
    fed_rogue_fn on_rogue;
    void *rogue_ctx;
};

#define FED_ALL_TINY 1000 /* fed_init_budget's tiny: every node's budget is tiny */

/* A federation of n nodes h0..h(n-1) under root (testlib_setup's folder), each in its own
 * case folder; secure or plain rounds with the given compression scheme; node `tiny` (or
 * every node with FED_ALL_TINY, or none with -1) gets an epsilon budget of 0.001. Test
 * settings (3 rounds, TESTLIB_PHASE_MS deadlines, uniform weighting, DP off) are in f->cfg
 * and may be changed before the first fed_step. */
void fed_init_budget(fed_t *f, const char *root, size_t n, bool secure, const char *scheme, int tiny);
void fed_init(fed_t *f, const char *root, size_t n, bool secure, const char *scheme);
/* Like fed_init, with the nodes whose bit is set in rogue_mask run by the test (see
 * fed_rogue_fn); on_rogue/ctx may be NULL (the rogue only listens when the test asks). */
void fed_init_rogue(fed_t *f, const char *root, size_t n, bool secure, const char *scheme,
                    unsigned rogue_mask, fed_rogue_fn on_rogue, void *ctx);
void fed_free(fed_t *f);
/* (Re)creates node i's round state over its existing connection (a restarted node process
 * reads the same state folder). */
void fed_node_round(fed_t *f, size_t i);
void fed_node_start(fed_t *f, size_t i, double budget);
/* Gives node i this privacy policy (its round state is recreated: call before its rounds). */
void fed_node_policy(fed_t *f, size_t i, const node_round_policy_t *p);
void fed_agg_start(fed_t *f);
/* One loop iteration: deadlines, up to 8 server messages, every live client's messages. */
void fed_step(fed_t *f);
/* Steps until the aggregator completed `completed` rounds or max_ms passed; asserts it did. */
void fed_run_until_completed(fed_t *f, uint64_t completed, int64_t max_ms);
/* Asserts the head vector equals expected within tol. */
void fed_check_head(fed_t *f, const double *expected, double tol);
/* The mean of the test trainer's deltas over the node set (bit u = node u), equal weights. */
void fed_mean_delta(unsigned set, double *out);

#endif
