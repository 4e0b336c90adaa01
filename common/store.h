/* The aggregator's persistent registry in SQLite: which nodes are enrolled (node id, CURVE
 * public key, optional Ed25519 identity), which are revoked, and the connection state the
 * running daemon reports (connected, last seen, capabilities), plus a small key/value table
 * for daemon facts (instance id, bound endpoint, pid).
 *
 * Why SQLite: the operator's tools (`enroll`, `revoke`, `nodes`, `status`) are separate
 * processes from the daemon; SQLite in WAL mode lets them read and write the same file
 * concurrently with transactions, and `PRAGMA data_version` tells the daemon cheaply when
 * another process committed, so enrollment changes apply without a restart. */
#ifndef MEDFL_STORE_H
#define MEDFL_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_NODE_ID_MAX 63 /* as WIRE_NODE_ID_MAX */
#define STORE_KEY_BYTES 32

typedef struct store_t store_t;

typedef struct {
    char node_id[STORE_NODE_ID_MAX + 1];
    uint8_t curve_public[STORE_KEY_BYTES];
    bool has_identity;                  /* identity key given at enrollment or pinned */
    uint8_t identity_public[STORE_KEY_BYTES];
    int64_t enrolled_at;                /* unix seconds */
    int64_t revoked_at;                 /* unix seconds; 0 while active */
    bool connected;
    int64_t last_seen;                  /* unix seconds; 0 = never */
    char device[129];                   /* capabilities from the last hello */
    int64_t n_records;
    char software[65];
} store_node_t;

/* Opens (creating when missing) the registry at path: WAL, a busy timeout so that tools
 * and the daemon wait for each other instead of failing, foreign keys on. */
store_t *store_open(const char *path);
void store_destroy(store_t **self_p);

/* Node ids are [A-Za-z0-9._-]{1,63} and not starting with '.' or '-': they appear in
 * logs, file names and command lines. Returns 0, or -1 with a message naming the id. */
int store_node_id_check(const char *node_id) __attribute__((warn_unused_result));

/* Enrolls node_id with its CURVE key (and identity key, may be NULL). Re-enrolling a
 * revoked node reactivates it with the new keys; an active node is only replaced when
 * replace is true. A key already enrolled under another node id is refused. */
int store_enroll(store_t *self, const char *node_id, const uint8_t curve_public[STORE_KEY_BYTES],
                 const uint8_t *identity_public, bool replace)
    __attribute__((warn_unused_result));
/* Marks node_id revoked (and disconnected). ENOTFOUND for an unknown id, ESTATE when
 * already revoked. */
int store_revoke(store_t *self, const char *node_id) __attribute__((warn_unused_result));

int store_node_get(store_t *self, const char *node_id, store_node_t *out);
/* Finds the node (active or revoked) enrolled with this CURVE key. */
int store_node_by_key(store_t *self, const uint8_t curve_public[STORE_KEY_BYTES], store_node_t *out);
/* All nodes ordered by id; *out is malloc'ed (free() it), NULL when count is 0. */
int store_node_list(store_t *self, store_node_t **out, size_t *count);

/* Records a hello: connected, last seen now, capabilities. */
int store_node_hello(store_t *self, const char *node_id, int64_t now, const char *device,
                     int64_t n_records, const char *software);
/* Records liveness (heartbeat). */
int store_node_seen(store_t *self, const char *node_id, int64_t now);
int store_node_set_connected(store_t *self, const char *node_id, bool connected);
/* Pins the identity key learned from a node's first hello when enrollment gave none. */
int store_node_pin_identity(store_t *self, const char *node_id,
                            const uint8_t identity_public[STORE_KEY_BYTES]);
/* Marks every node disconnected (daemon start: the previous run's sessions are gone). */
int store_disconnect_all(store_t *self);
/* Number of nodes currently marked connected. */
int store_connected_count(store_t *self, int64_t *out);

/* Changes whenever another connection committed since the last call on this handle. */
int store_data_version(store_t *self, int64_t *out);

/* Daemon facts shared with the `status` tool. */
int store_meta_set(store_t *self, const char *key, const char *value);
/* ENOTFOUND when the key was never set. */
int store_meta_get(store_t *self, const char *key, char *out, size_t size);

#endif
