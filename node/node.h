/* The node daemon: one node_t owns the node's keys, its DEALER connection to the
 * aggregator (common/wire) and the session state of `medfl-node run`. It says Hello with
 * its identity key and capabilities after every (re)connection, waits for Welcome, keeps
 * the session alive with heartbeats, notices an aggregator restart (new connection, new
 * instance id, silence, or an Error STATE) and says Hello again by itself, and stops with
 * NODE_EXIT_REVOKED when the aggregator revokes it. Training rounds are added to this
 * loop by the federation issue. */
#ifndef MEDFL_NODE_H
#define MEDFL_NODE_H

#include <stdint.h>

#include "node/node_config.h"

#define MEDFL_SOFTWARE_VERSION "medfl 0.1.0"

/* Exit status of `medfl-node run` when the aggregator revoked this node: distinct from
 * configuration/start errors (1) so that a service manager does not restart it in a loop
 * (systemd: RestartPreventExitStatus=3). */
#define NODE_EXIT_REVOKED 3

typedef struct node_t node_t;

/* Loads keys and the aggregator's public key, counts the local records, resolves the
 * device and connects (asynchronously: libzmq retries until the aggregator is there). */
node_t *node_new(const node_config_t *cfg, const char *config_path);
void node_destroy(node_t **self_p);

/* Runs until SIGTERM/SIGINT (returns 0) or revocation (returns NODE_EXIT_REVOKED). SIGHUP
 * re-reads config_path and applies its reloadable options (log level and format). */
int node_run(node_t *self);

/* Counts the records of a JSON-lines file (non-blank lines) or a CSV file (records after
 * the header; quoted fields may span lines). Missing file: -1 with MEDFL_ENOTFOUND. */
int node_count_records(const char *path, const char *format, uint64_t *out)
    __attribute__((warn_unused_result));

/* The aggregator's Ed25519 identity key from `aggregator.identity_key`: 64 hex digits, or the
 * path of a file holding them (its identity.pub). */
int node_load_agg_identity(const char *value, uint8_t out[32]) __attribute__((warn_unused_result));

#endif
