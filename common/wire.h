/* wire: the medfl transport. The aggregator binds a ZeroMQ ROUTER socket as CURVE server;
 * each node connects a DEALER socket as CURVE client holding the aggregator's public key.
 * A ZAP handler thread admits only enrolled client keys (an allowlist the daemon replaces
 * atomically at any time, so enrolment and revocation need no restart) and stamps every
 * admitted connection with User-Id = node_id, which is what the server reports as a
 * message's sender: identity comes from the key, never from what the peer claims.
 *
 * A message is frame 1, a packed medfl.Envelope (size-checked before any decoding, with a
 * per-type limit on the body), plus an optional frame 2 of raw bulk bytes (update tensors,
 * masked vectors, model weights). Bulk frames are sent zero-copy (zmq_msg_init_data with
 * the caller's free function) and handed to the receiver in place inside the zmq_msg, so
 * 100 MB+ updates are never copied by this layer. Everything that arrives from the network
 * goes through wire_decode(), a pure function (bytes in, typed message or error out) that
 * the libFuzzer target tests/fuzz/fuzz_envelope.c exercises.
 *
 * Threads: a wire_server_t / wire_client_t is used by one thread at a time (ZeroMQ sockets
 * are not thread-safe); only wire_server_set_allowlist() may be called from any thread.
 * Protocol description: docs/protocol.md. */
#ifndef MEDFL_WIRE_H
#define MEDFL_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "proto/medfl.pb-c.h"

#define WIRE_PROTOCOL_VERSION 1u
#define WIRE_KEY_LEN 32        /* CURVE (X25519) public / secret key length */
#define WIRE_NODE_ID_MAX 63    /* node ids: 1..63 chars of [A-Za-z0-9._-] */
#define WIRE_INSTANCE_ID_LEN 16
#define WIRE_KEY_ID_LEN 16     /* hex chars of wire_key_id() (8 bytes) */
#define WIRE_SERVER_SENDER "aggregator" /* Envelope.sender of server messages */

/* Largest Envelope frame accepted, checked before parsing; the largest per-type body limit
 * is 2 MiB (wire_body_limit), the rest is headroom for the envelope fields. */
#define WIRE_ENVELOPE_MAX ((size_t)4 << 20)
/* Messages queued per peer on the server (ZMQ_SNDHWM). Server sends never block: a peer
 * whose queue is full does not read and is dropped (wire_server_send). Bounds what a node
 * that stops reading costs: at most this many messages (the largest a version). */
#define WIRE_SERVER_SNDHWM 64
/* Default largest bulk frame (wire_options_t.max_bulk); also ZMQ_MAXMSGSIZE, so libzmq
 * drops a peer announcing a bigger frame before allocating it. */
#define WIRE_BULK_MAX_DEFAULT ((size_t)2 << 30)

typedef void(wire_free_fn)(void *data, void *hint); /* same shape as zmq_free_fn */

/* Transport options; pass NULL for the defaults shown. */
typedef struct {
    int heartbeat_ivl_ms;     /* 1000: ZMQ_HEARTBEAT_IVL and application Heartbeat period */
    int heartbeat_timeout_ms; /* 5000: ZMQ_HEARTBEAT_TIMEOUT / TTL: peer considered gone */
    int reconnect_ivl_ms;     /* 100: ZMQ_RECONNECT_IVL (client) */
    int reconnect_ivl_max_ms; /* 2000: ZMQ_RECONNECT_IVL_MAX (client, exponential backoff) */
    int send_timeout_ms;      /* 10000: ZMQ_SNDTIMEO of the client; a send blocked longer
                               * fails (ETIMEOUT). The server never blocks (WIRE_SERVER_SNDHWM) */
    size_t max_bulk;          /* WIRE_BULK_MAX_DEFAULT: largest bulk frame accepted */
    /* Client: after a failed handshake (wrong server key, key not enrolled) the client
     * redials itself, first after reconnect_ivl_max_ms, doubling per further failure up
     * to this (60000), each delay jittered by +-20%; one log line per attempt. */
    int handshake_retry_max_ms;
    /* Client: where the server key came from, named in the wrong-key error ("" = not
     * named), e.g. "aggregator.public_key_file (/etc/medfl/node/aggregator.pub)". */
    char server_key_origin[320];
} wire_options_t;

void wire_options_default(wire_options_t *opts);

/* ---- pure decoding (no sockets) ------------------------------------------------------- */

/* A decoded Envelope and its typed body. `body` points to the member matching `type`
 * (e.g. body.hello for MEDFL__MSG_TYPE__MSG_HELLO); body.any is the generic view. */
typedef union {
    ProtobufCMessage *any;
    Medfl__Hello *hello;
    Medfl__Welcome *welcome;
    Medfl__Heartbeat *heartbeat;
    Medfl__Error *error;
    Medfl__RoundStart *round_start;
    Medfl__AdvertiseKeys *advertise_keys;
    Medfl__KeysBroadcast *keys_broadcast;
    Medfl__ShareKeys *share_keys;
    Medfl__SharesDelivery *shares_delivery;
    Medfl__MaskedInputHeader *masked_input;
    Medfl__UnmaskRequest *unmask_request;
    Medfl__UnmaskResponse *unmask_response;
    Medfl__Update *update;
    Medfl__VersionAnnounce *version_announce;
    Medfl__EvalReport *eval_report;
    Medfl__Decline *decline;
    Medfl__ConsistencyCheck *consistency_check;
    Medfl__ConsistencySignature *consistency_signature;
} wire_body_t;

typedef struct {
    uint32_t protocol_version;
    Medfl__MsgType type;
    uint64_t round_id;
    char sender[WIRE_NODE_ID_MAX + 1]; /* as claimed in the envelope */
    wire_body_t body;                  /* owned; freed by wire_decoded_clear */
} wire_decoded_t;

/* Decodes one Envelope frame: checks its size against WIRE_ENVELOPE_MAX before unpacking,
 * then protocol version, known type, sender syntax, body size against the type's limit,
 * unpacks the body with the type's descriptor and checks field sizes (keys 32 bytes,
 * repeated fields bounded, node ids well-formed). Fills *out on success (release with
 * wire_decoded_clear); on failure returns -1 with MEDFL_EPROTO (MEDFL_EUNSUPPORTED for a
 * wrong protocol version) and *out cleared. Never crashes on any input. */
int wire_decode(const void *data, size_t size, wire_decoded_t *out)
    __attribute__((warn_unused_result));
void wire_decoded_clear(wire_decoded_t *d);

/* Checks the bulk frame rule for a type: only MASKED_INPUT, UPDATE and VERSION_ANNOUNCE
 * may carry one (UPDATE / MASKED_INPUT must), of at most max_bulk bytes, and when the
 * header states n_elements and dtype the length must match. 0 / -1 (MEDFL_EPROTO). */
int wire_check_bulk(const wire_decoded_t *d, bool has_bulk, size_t bulk_len, size_t max_bulk)
    __attribute__((warn_unused_result));

/* Encodes an Envelope frame into a malloc'd buffer (*out, *out_len); body may be NULL only
 * for types whose body is empty-able (all fields default). Checks the same limits as
 * wire_decode so a peer never receives what it must refuse. 0 / -1. */
int wire_encode(Medfl__MsgType type, uint64_t round_id, const char *sender,
                const ProtobufCMessage *body, uint8_t **out, size_t *out_len);

/* Largest body accepted for a type (0 for an unknown type). */
size_t wire_body_limit(Medfl__MsgType type);
/* "HELLO", "ROUND_START", ... or "?" */
const char *wire_type_name(Medfl__MsgType type);
/* True when id is 1..WIRE_NODE_ID_MAX chars of [A-Za-z0-9._-]. */
bool wire_node_id_valid(const char *id);

/* Key id for logs: hex of the first 8 bytes of BLAKE2b-256(public_key). Public keys are
 * not secret, but logging a short id keeps lines readable and matches `medfl-aggregator
 * nodes`. out must hold WIRE_KEY_ID_LEN + 1 chars. */
void wire_key_id(const uint8_t public_key[WIRE_KEY_LEN], char out[WIRE_KEY_ID_LEN + 1]);

/* ---- round context ---------------------------------------------------------------------- */

#define WIRE_ROUND_CONTEXT_BYTES 32

/* The round context: BLAKE2b-256 over the label "medfl-round-context-v1" and the RoundStart
 * packed with protobuf-c after zeroing its two per-node fields, weight and deadline_ms.
 * Why: the aggregator sends every participant its own copy of the round start, so nothing
 * in the message alone stops it from giving one node, say, a smaller dp.record_weight_max
 * or another threshold. Each node folds this digest into the signature of its secure-
 * aggregation keys (secagg_params_t.context); a node that got a different round start signs
 * a different context, and its neighbours (and the aggregator's own check) refuse its keys.
 * Every honest participant computes the same digest: protobuf-c packs equal values to equal
 * bytes (fields in number order, nested messages likewise, proto3 defaults omitted), and
 * unpacking then packing again gives back the same bytes (fields this version does not
 * know are kept as unknown fields and packed after the known ones, where a newer peer with
 * higher-numbered fields put them too). The aggregator hashes the struct it sends, a node
 * the struct it decoded. 0, or -1 with MEDFL_EINVAL (NULL, not a RoundStart), MEDFL_ECRYPTO
 * (libsodium unusable) or MEDFL_ENOMEM. */
int wire_round_context(const Medfl__RoundStart *rs, uint8_t out[WIRE_ROUND_CONTEXT_BYTES])
    __attribute__((warn_unused_result));

/* ---- received messages ---------------------------------------------------------------- */

typedef struct {
    /* Server: the node_id of the sending connection (ZAP User-Id under CURVE; the envelope
     * sender in plain mode). Client: WIRE_SERVER_SENDER. */
    char node_id[WIRE_NODE_ID_MAX + 1];
    Medfl__MsgType type;
    uint64_t round_id;
    wire_body_t body;
    /* Bulk bytes in place inside the received zmq_msg (no copy), NULL / 0 when absent.
     * Valid until wire_msg_close. Frames above 8 KiB are individually malloc'd by libzmq,
     * hence 8-byte aligned in practice; check alignment before casting to float *. */
    const uint8_t *bulk;
    size_t bulk_len;
    /* private */
    wire_decoded_t _dec;
    zmq_msg_t _bulk_msg;
    bool _has_bulk;
} wire_msg_t;

/* Releases a received message (safe on a zeroed or already closed one). */
void wire_msg_close(wire_msg_t *msg);

/* Moves the bulk frame out of msg into a standalone object, so a daemon can keep many
 * updates alive without copying them; msg->bulk becomes NULL. NULL when msg has none. */
typedef struct wire_bulk_t wire_bulk_t;
wire_bulk_t *wire_msg_take_bulk(wire_msg_t *msg);
const uint8_t *wire_bulk_data(const wire_bulk_t *b);
size_t wire_bulk_size(const wire_bulk_t *b);
void wire_bulk_destroy(wire_bulk_t **self_p);

/* ---- server (aggregator) -------------------------------------------------------------- */

typedef struct wire_server_t wire_server_t;

typedef struct {
    char node_id[WIRE_NODE_ID_MAX + 1];
    uint8_t public_key[WIRE_KEY_LEN]; /* the node's CURVE public key */
} wire_allow_entry_t;

/* Binds a ROUTER on endpoint (e.g. "tcp://0.0.0.0:7750" or "tcp://127.0.0.1:*"). With
 * secret_key / public_key (32 bytes each) it is a CURVE server and starts the ZAP handler
 * (empty allowlist: nobody admitted until wire_server_set_allowlist). With both NULL it
 * runs in plain mode (no encryption, no authentication, sender taken from the envelope):
 * for benchmarks and tests only. NULL on error. */
wire_server_t *wire_server_new(const char *endpoint, const uint8_t *secret_key,
                               const uint8_t *public_key, const wire_options_t *opts);
void wire_server_destroy(wire_server_t **self_p);

/* The endpoint actually bound (with the port chosen when binding to "*"). */
const char *wire_server_endpoint(const wire_server_t *self);
/* Random per process start; put it in Welcome so nodes notice an aggregator restart. */
const uint8_t *wire_server_instance_id(const wire_server_t *self);

/* Replaces the allowlist atomically (copied; any thread). Node ids must be valid and
 * unique, keys unique. New connections are checked against it at once; messages from
 * connected nodes no longer on it are dropped and answered with Error REVOKED. 0 / -1. */
int wire_server_set_allowlist(wire_server_t *self, const wire_allow_entry_t *entries, size_t n)
    __attribute__((warn_unused_result));

/* Waits up to timeout_ms (-1 = forever) for one message. Returns 1 with *msg filled
 * (release with wire_msg_close), 0 on timeout or signal interruption, -1 when a message
 * was rejected (malformed, wrong version, extra frames, sender not enrolled any more:
 * logged with the reason, the sender answered with an Error where possible, medfl error
 * set, msg->node_id names the offender when known) or on a socket error. The server keeps
 * running after -1: call again. Application Heartbeats are answered automatically and
 * also delivered (so the caller can track liveness). */
int wire_server_recv(wire_server_t *self, wire_msg_t *msg, int timeout_ms)
    __attribute__((warn_unused_result));

/* Sends one message to a node that has sent at least one message on its current
 * connection. bulk: NULL / 0 for none. With free_fn, ownership of bulk passes to the wire
 * layer on every outcome (free_fn(bulk, hint) runs once libzmq is done, zero copy); with
 * free_fn NULL the bulk is copied. Never blocks. -1 with MEDFL_ENOTFOUND when the node is not
 * connected or was dropped, MEDFL_ETIMEOUT when its queue is full: the node does not read what
 * it is sent, so it is dropped (logged once; wire_server_has_peer turns false, nothing more is
 * queued for it) until it reconnects with a new connection. */
int wire_server_send(wire_server_t *self, const char *node_id, Medfl__MsgType type,
                     uint64_t round_id, const ProtobufCMessage *body, const void *bulk,
                     size_t bulk_len, wire_free_fn *free_fn, void *hint);

/* Sends the same message to several nodes sharing one bulk buffer (reference counted,
 * no copy per node). Same ownership rule as wire_server_send. Returns the number of
 * nodes it was sent to (failures logged), or -1 if it could not be encoded. */
int wire_server_send_many(wire_server_t *self, const char *const *node_ids, size_t n_nodes,
                          Medfl__MsgType type, uint64_t round_id, const ProtobufCMessage *body,
                          const void *bulk, size_t bulk_len, wire_free_fn *free_fn, void *hint);

/* Sends Error{code, text} to a node (best effort, 0 / -1). */
int wire_server_send_error(wire_server_t *self, const char *node_id, uint64_t round_id,
                           Medfl__ErrorCode code, const char *text);

/* True when node_id has a known connection (it sent something since connecting) that was
 * not dropped for not reading its messages. */
bool wire_server_has_peer(const wire_server_t *self, const char *node_id);

/* Counters for status output and tests. */
typedef struct {
    uint64_t zap_admitted;  /* ZAP requests accepted */
    uint64_t zap_refused;   /* ZAP requests refused (unknown key) */
    uint64_t rejected;      /* messages rejected by decoding / framing checks */
    uint64_t revoked_drops; /* messages dropped because the sender was revoked */
    uint64_t slow_drops;    /* peers dropped because their send queue was full */
    uint64_t received;      /* messages delivered */
    uint64_t bytes_sent;    /* envelope + bulk bytes handed to libzmq (before CURVE) */
    uint64_t bytes_received;/* envelope + bulk bytes of every message received */
} wire_server_stats_t;
void wire_server_stats(wire_server_t *self, wire_server_stats_t *out);

/* ---- client (node) -------------------------------------------------------------------- */

typedef struct wire_client_t wire_client_t;

/* Connects a DEALER to endpoint. With server_public_key, client_public_key and
 * client_secret_key (32 bytes each) it is a CURVE client; all NULL = plain mode (tests,
 * benchmarks). node_id is written as Envelope.sender. libzmq reconnects by itself
 * (reconnect_ivl_ms with backoff); connection state is watched through a socket monitor
 * (wire_client_connections / wire_client_auth_refused). NULL on error. */
wire_client_t *wire_client_new(const char *endpoint, const uint8_t *server_public_key,
                               const uint8_t *client_public_key,
                               const uint8_t *client_secret_key, const char *node_id,
                               const wire_options_t *opts);
void wire_client_destroy(wire_client_t **self_p);

/* Same ownership rule for bulk as wire_server_send. Messages sent while disconnected are
 * queued by libzmq and delivered after reconnection. 0 / -1. */
int wire_client_send(wire_client_t *self, Medfl__MsgType type, uint64_t round_id,
                     const ProtobufCMessage *body, const void *bulk, size_t bulk_len,
                     wire_free_fn *free_fn, void *hint);

/* Waits up to timeout_ms (-1 = forever) for one message from the aggregator; while
 * waiting it sends an application Heartbeat every heartbeat_ivl_ms. Heartbeats from the
 * server are consumed here (they only refresh wire_client_ms_since_rx). Returns 1 / 0 / -1
 * like wire_server_recv. An Error REVOKED is delivered like any message: the daemon stops. */
int wire_client_recv(wire_client_t *self, wire_msg_t *msg, int timeout_ms)
    __attribute__((warn_unused_result));

/* Sends an application Heartbeat now if one is due (call it from long loops that do not
 * sit in wire_client_recv). 0 / -1. */
int wire_client_tick(wire_client_t *self);

/* Number of successful handshakes so far (processes pending monitor events). When it
 * changes the connection is new (first connect, or reconnect after the aggregator
 * restarted or the network dropped): the node re-sends Hello. */
uint64_t wire_client_connections(wire_client_t *self);
/* True when the server is connected right now (last monitor event). */
bool wire_client_connected(wire_client_t *self);
/* True when the latest handshake was refused by the server's ZAP handler (key not
 * enrolled or revoked); libzmq keeps retrying, the daemon decides whether to stop. */
bool wire_client_auth_refused(wire_client_t *self);
/* Milliseconds since the last message (any type) from the server; -1 if none yet. */
int64_t wire_client_ms_since_rx(const wire_client_t *self);
/* Envelope + bulk bytes sent to / received from the server since this client was created
 * (heartbeats included; CURVE framing not), for the node's metrics. */
void wire_client_traffic(const wire_client_t *self, uint64_t *sent, uint64_t *received);

#endif
