/* The aggregator daemon: one aggregator_t owns the CURVE ROUTER (common/wire), the node
 * registry (common/store) and the table of live node sessions, and runs the event loop of
 * `medfl-aggregator run`. Sessions start with Hello -> Welcome, stay alive with
 * heartbeats and end on timeout, revocation or shutdown; the registry reflects them so
 * that `medfl-aggregator nodes` / `status` (other processes) can show them. Rounds are
 * added to this loop by the federation issue. */
#ifndef MEDFL_AGGREGATOR_H
#define MEDFL_AGGREGATOR_H

#include <stddef.h>
#include <stdint.h>

#include "aggregator/agg_config.h"

typedef struct aggregator_t aggregator_t;

/* Room for the headers of compressed payloads above the 4 bytes per parameter of a dense one. */
#define AGG_BULK_HEADROOM ((size_t)64 << 10)

/* Largest bulk frame (wire_options_t.max_bulk, hence ZMQ_MAXMSGSIZE) a node may send for a
 * model of numel parameters: net.max_update_mib when set, else 4 numel + AGG_BULK_HEADROOM
 * (a dense F32 update or U32 masked input; compressed payloads are smaller). */
size_t aggregator_bulk_max(const agg_config_t *cfg, uint64_t numel);

/* Loads keys, opens the registry, binds the ROUTER, loads the allowlist and records the
 * bound endpoint (state_dir/endpoint and the registry) for tools and nodes. */
aggregator_t *aggregator_new(const agg_config_t *cfg, const char *config_path);
void aggregator_destroy(aggregator_t **self_p);

/* Runs until SIGTERM/SIGINT (service_stop_requested). On SIGHUP re-reads config_path and
 * applies the reloadable options; a file that does not load, or changes of options that
 * need a restart, are logged and leave the running configuration as it is. Returns 0 on
 * a clean stop. */
int aggregator_run(aggregator_t *self);

/* One iteration of the loop: housekeeping when due (timeouts, registry poll), then waits
 * up to timeout_ms for one message and handles it. Returns wire_server_recv's result
 * (1 handled, 0 nothing, -1 rejected). Lets tests drive the daemon without threads. */
int aggregator_step(aggregator_t *self, int timeout_ms);

/* Applies the reloadable options of fresh (already loaded); logs the others that differ. */
void aggregator_reload(aggregator_t *self, const agg_config_t *fresh);

/* Number of nodes with a live session (said Hello, not timed out or revoked). */
size_t aggregator_session_count(const aggregator_t *self);

/* The round state machine (aggregator/rounds.h), for status and tests. */
struct rounds_t *aggregator_rounds(aggregator_t *self);

/* The endpoint actually bound. */
const char *aggregator_endpoint(const aggregator_t *self);

#endif
