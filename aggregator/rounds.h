/* The aggregator's round state machine, driven from the daemon's event loop (no threads):
 *
 *   IDLE -> (min_nodes connected with privacy budget left, select_wait) -> RoundStart to
 *           the selected nodes (a node that declined for budget is left out until it says
 *           Hello again or the config is reloaded; with too few left the daemon idles and
 *           `status` says why)
 *   secure:  KEYS (AdvertiseKeys) -> KeysBroadcast -> SHARES (ShareKeys) -> SharesDelivery
 *            -> INPUT (local training + MaskedInput) -> ConsistencyCheck -> CONSISTENCY
 *            (ConsistencySignature over the survivor set) -> UnmaskRequest with the signatures
 *            -> UNMASK (UnmaskResponse) -> weighted sum
 *   plain:   INPUT (Update) -> weighted sum
 *   -> server step (FedAvg/FedAdam, aggregator/strategy) -> signed version v + 1
 *   -> VersionAnnounce -> EVAL (EvalReports until all in or the deadline) -> IDLE
 *
 * WHY one module outside aggregator.c: the session layer (hello, heartbeats, revocation)
 * and the rounds change for different reasons; this module sees the daemon only through
 * rounds_peer_t lists and the wire server, so tests drive it in-process over a plain-mode
 * wire server with real node state machines (node/round.c).
 *
 * Every phase has a deadline checked at each rounds_tick; a phase closes early once every
 * expected node answered. Stragglers are dropped per phase (secure aggregation recovers
 * dropouts as long as t holders remain). Every transition is journaled in SQLite (table
 * `rounds` of the registry database) in one transaction. Secure-aggregation state lives in
 * memory only, so a restarted aggregator cannot continue a round: it journals the round it
 * was in as aborted (or completed, when its version was already committed) and starts a new
 * round with a higher id; nodes drop a round when a newer RoundStart arrives. Committed
 * versions are never touched: the version store (common/version_store) is written before
 * the journal says "completed". docs/protocol.md, "Rounds". */
#ifndef MEDFL_ROUNDS_H
#define MEDFL_ROUNDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "aggregator/agg_config.h"
#include "common/metrics.h"
#include "common/version_store.h"
#include "common/wire.h"

typedef enum {
    ROUNDS_IDLE = 0, /* waiting for min_nodes / the pause after a round */
    ROUNDS_KEYS,     /* secure: collecting AdvertiseKeys */
    ROUNDS_SHARES,   /* secure: collecting ShareKeys */
    ROUNDS_INPUT,    /* collecting MaskedInput (secure) or Update (plain) */
    ROUNDS_CONSISTENCY, /* secure: collecting signatures over the survivor set */
    ROUNDS_UNMASK,   /* secure: collecting UnmaskResponse */
    ROUNDS_EVAL,     /* version announced, collecting EvalReports */
    ROUNDS_DONE,     /* federation.rounds reached */
} rounds_phase_t;

const char *rounds_phase_name(rounds_phase_t p);

/* A connected, enrolled node as the daemon knows it. */
typedef struct {
    const char *node_id;
    const uint8_t *identity_pk; /* 32 bytes Ed25519, pinned at enrollment / first hello */
    uint64_t n_records;         /* announced in Hello */
} rounds_peer_t;

typedef struct rounds_t rounds_t;

/* cfg must outlive the object (the daemon's config, so SIGHUP changes apply from the next
 * round). db_path: the registry database that holds the journal (the contribution history,
 * contrib.db, is kept next to it). versions_dir: the signed
 * version store (created when missing). sign_sk / sign_pk: the aggregator's Ed25519 identity
 * (versions are signed with it). Recovers the journal: a round left open by a crash is closed
 * as aborted, or as completed when its version is in the store. */
rounds_t *rounds_new(const agg_config_t *cfg, wire_server_t *server, const char *db_path,
                     const char *versions_dir, const uint8_t sign_sk[64],
                     const uint8_t sign_pk[32]);
void rounds_destroy(rounds_t **self_p);

/* Deadlines, phase changes and round starts; peers = the live sessions right now. Call it
 * at every loop iteration. now_ms: monotonic milliseconds (service_now_ms). */
void rounds_tick(rounds_t *self, const rounds_peer_t *peers, size_t n_peers, int64_t now_ms);

/* A node (re)said Hello with the latest version it holds: versions it lacks are sent to it
 * before it is asked to train on them. A node that declined for privacy budget is selected
 * again (it may have restarted with a raised budget). */
void rounds_on_hello(rounds_t *self, const char *node_id, uint64_t model_version);

/* The configuration was reloaded (SIGHUP): nodes that declined for privacy budget are
 * selected again (the DP settings of the next round may differ). */
void rounds_on_reload(rounds_t *self);

/* Handles a round message (RoundStart answers, secagg phases, Update, EvalReport, Decline).
 * Returns 1 when the type belongs to rounds (handled, refused with an Error, or logged),
 * 0 for types this module does not handle. */
int rounds_on_message(rounds_t *self, wire_msg_t *msg, int64_t now_ms);

/* Call after rounds_on_message for every EvalReport: one the round accepted is stored in the
 * contribution history (contrib.db next to the journal: its loss weighs the node's next
 * rounds, its epsilon goes into `report`); one it refused is ignored. */
void rounds_record_eval(rounds_t *self, const wire_msg_t *msg);

rounds_phase_t rounds_phase(const rounds_t *self);
uint64_t rounds_current(const rounds_t *self); /* round in progress, 0 when none */
uint64_t rounds_completed(const rounds_t *self);
uint64_t rounds_head_version(const rounds_t *self);
/* The global vector of the head version (numel floats), NULL before the first. */
const float *rounds_global(const rounds_t *self, size_t *numel);

/* Reports round events into m (may be NULL): rounds started / completed / aborted (the
 * completed counter starts from the journal, so it always equals `status`'s
 * rounds_completed), per-node weights of each round, last round duration, head version. */
void rounds_set_metrics(rounds_t *self, metrics_t *m);

/* SIGTERM drain: a round in EVAL (its version is committed) is closed as completed; a round
 * in any earlier phase is journaled as aborted with why, and its nodes are told so at once
 * (their secure-aggregation state cannot survive this process). The journal is then closed
 * for the round, so a restart recovers nothing and starts a new round. */
void rounds_stop(rounds_t *self, int64_t now_ms, const char *why);

/* `medfl-aggregator status` lines from the journal (a reader process; the daemon may be
 * running): rounds_completed, rounds_aborted, current round and phase, last round. */
int rounds_print_status(const char *db_path, FILE *out);

#endif
