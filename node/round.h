/* The node's side of a federated round, driven from node/node.c's loop:
 *
 *   RoundStart -> base version held and verified? (else Decline BASE_MISMATCH)
 *              -> DP parameters inside this node's privacy policy? (else Decline
 *                 PRIVACY_POLICY, recorded in the ledger, no training)
 *              -> privacy ledger admits the round? (else Decline PRIVACY_BUDGET, no training)
 *   plain:  train -> compress (error feedback) -> Update
 *   secure: AdvertiseKeys -> (KeysBroadcast) ShareKeys -> (SharesDelivery) train ->
 *           encode -> MaskedInput -> (UnmaskRequest) UnmaskResponse
 *   VersionAnnounce -> verify signature + chain, install, evaluate -> EvalReport
 *
 * WHY training sits between SharesDelivery and MaskedInput: keys and shares are cheap and
 * need all nodes at once, training is long and independent; a node that dies while training
 * is then a dropout the secure aggregation recovers from (its shares are already out).
 *
 * The trainer is a pair of function pointers (round_trainer_t) so the same participation
 * code runs with the model trainer (node/train) and with the synthetic least-squares
 * trainer below (tests, and a runtime check without a model). State that must survive a
 * kill: installed versions (the version store), the compression residual
 * (state_dir/residual.bin, rewritten after every encode), the privacy ledger (written before
 * training), and whatever the trainer checkpoints itself. */
#ifndef MEDFL_NODE_ROUND_H
#define MEDFL_NODE_ROUND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/metrics.h"
#include "common/version_store.h"
#include "common/wire.h"
#include "node/ledger.h"

typedef struct {
    uint64_t round_id;
    /* From RoundStart.hyperparams; 0 = the round did not send it and the trainer falls back
     * to the node's own setting (train.lr, train.batch_size, train.max_seq_len). */
    double lr;
    uint32_t local_steps;
    uint32_t batch_size;
    uint32_t max_seq_len;
    bool dp;
    double noise_multiplier, clip_norm, sample_rate, delta;
    /* Long training calls tick(tick_ctx) now and then: it keeps the session's heartbeats. */
    void (*tick)(void *tick_ctx);
    void *tick_ctx;
    /* Optional: training checks it between steps and gives up (-1, MEDFL_ESTATE) when it
     * returns true, so SIGTERM does not wait for a long round (the update is then not sent). */
    bool (*should_stop)(void);
} round_hparams_t;

typedef struct {
    void *ctx;
    /* delta[n] = local - global after local training that starts from global[n]. */
    /* *n_examples is the node's weight in the round (the model trainer: its training split). */
    int (*train)(void *ctx, const float *global, size_t n, const round_hparams_t *hp, float *delta,
                 uint64_t *n_examples);
    /* Optional: examples the last train() call actually processed (the sum of its batch
     * sizes, Poisson draws included), for the throughput metrics; NULL = *n_examples is
     * that count. */
    uint64_t (*examples_processed)(void *ctx);
    /* Validation metrics of the trainable vector x[n]. */
    int (*evaluate)(void *ctx, const float *x, size_t n, double *loss, double *accuracy,
                    double *macro_f1, uint64_t *n_eval);
    /* Optional: refuses (-1, error set) a version whose tensor table (names, sizes, order)
     * is not this trainer's layout, before anything is trained on it. */
    int (*check_layout)(void *ctx, const vs_manifest_t *m);
    /* May be NULL. 0 and *scale when the round's update is linear in the clipped gradient
     * sum (delta = -scale · Σ clipped): then the node may add its DP noise in the ring as a
     * share (docs/privacy.md §10); -1 with the reason otherwise. */
    int (*linear_step)(void *ctx, const round_hparams_t *hp, double *scale);
} round_trainer_t;

/* The hospital's own rules for a round's DP parameters (privacy.* in node.conf), checked
 * against every RoundStart before anything is trained: WHY the node decides and not the
 * aggregator is that the aggregator is who the rules protect against (a consortium config,
 * or a compromised aggregator, that turns DP off would otherwise get raw updates). */
typedef struct {
    bool require_dp;             /* privacy.require_dp: decline rounds without DP-SGD */
    double min_noise_multiplier; /* privacy.min_noise_multiplier: floor on the ACCOUNTED sigma
                                    (with distributed noise: what the ledger charges) */
    double max_sample_rate;      /* privacy.max_sample_rate: ceiling on q */
    double max_clip_norm;        /* privacy.max_clip_norm: ceiling on C; 0 = none */
} node_round_policy_t;

/* The policy of a node.conf without privacy.* policy keys (the safe default): DP required,
 * sigma >= 0.5, any q, any C. */
void node_round_policy_default(node_round_policy_t *p);

typedef struct {
    const char *node_id;
    const char *state_dir;        /* versions/ and residual.bin live here */
    const uint8_t *identity_sk;   /* 64 bytes: signs this node's secagg keys */
    const uint8_t *identity_pk;   /* 32 bytes */
    const uint8_t *agg_sign_pk;   /* 32 bytes: the aggregator's Ed25519 key, verifies versions */
    ledger_t *ledger;             /* may be NULL: every round is then declined */
    const node_round_policy_t *policy; /* copied; NULL = node_round_policy_default */
    bool distributed_noise;       /* privacy.distributed_noise */
    uint32_t distributed_colluders;
} node_round_opts_t;

typedef struct node_round_t node_round_t;

/* client: the node's connection (messages are sent on it). Copies what it needs of opts
 * except the ledger and the client, which must outlive it. */
node_round_t *node_round_new(const node_round_opts_t *opts, const round_trainer_t *trainer,
                             wire_client_t *client);
void node_round_destroy(node_round_t **self_p);

/* Handles a round message; returns 1 when consumed, 0 when the type is not about rounds
 * (the daemon handles it). Failures are logged and end this node's part in the round. */
int node_round_on_message(node_round_t *self, const wire_msg_t *msg);

/* Reports rounds joined / completed / declined, epsilon spent, training throughput, last
 * round duration and installed version into m (NULL = metrics off), which must outlive it. */
void node_round_set_metrics(node_round_t *self, metrics_t *m);

/* Shutdown checkpoint (SIGTERM): leaves the round in progress (its update is never sent,
 * so the residual stays that of the last update sent) and rewrites the error-feedback
 * residual atomically. The ledger needs nothing: every decision is committed before
 * training. 0 / -1. */
int node_round_checkpoint(node_round_t *self);

/* Latest version installed (announced in Hello). */
uint64_t node_round_model_version(const node_round_t *self);
/* Round in progress on this node (0 = none). */
uint64_t node_round_current(const node_round_t *self);
/* Counters for tests: rounds this node sent an update / masked input for, and declined. */
uint64_t node_round_contributed(const node_round_t *self);
uint64_t node_round_declined(const node_round_t *self);

/* ---- synthetic trainer: least squares on data generated from the node id ----
 * y = x . w*_u with x uniform in [-1, 1]^d, w*_u = w* + skew_u (a per-node shift, so sites
 * are non-IID), n_records training rows and n_records / 4 validation rows. Plain SGD with
 * batch_size rows per step, or DP-SGD (Poisson sampling at sample_rate, clipping, noise from
 * common/dp) when the round asks for it. step_ms slows every step down (fault tests). The
 * dimension d is that of the global vector, fixed at the first call. */
typedef struct synth_trainer_t synth_trainer_t;
synth_trainer_t *synth_trainer_new(const char *node_id, uint32_t n_records, uint32_t step_ms);
void synth_trainer_destroy(synth_trainer_t **self_p);
/* Fills t with this trainer's callbacks. */
void synth_trainer_bind(synth_trainer_t *s, round_trainer_t *t);

#endif
