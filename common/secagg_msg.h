/* Secure-aggregation protocol messages (Bonawitz et al. 2017 / SecAgg+ Bell et al. 2020) as C
 * structs, with a compact byte encoding and strict parsers. The transport (wire.c, protobuf
 * Envelope) carries each encoded message as one opaque `bytes body` (MaskedInput can travel as
 * the bulk frame): the aggregator relays what it cannot read anyway (encrypted shares), and
 * one audited parser per message is easier to fuzz than two layers of schema.
 *
 * Encoding: 4-byte header 'S' 'A' version type, then round_id (u64), then the fields below,
 * all integers little-endian, no padding. Parsers demand the exact length, counts within
 * SECAGG_MAX_NODES, node lists strictly increasing (so duplicates are impossible), share
 * limbs inside the field and reveal kinds in {0,1}; anything else is MEDFL_EPROTO. */
#ifndef MEDFL_SECAGG_MSG_H
#define MEDFL_SECAGG_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "common/shamir.h"

#define SECAGG_WIRE_VERSION 1
#define SECAGG_MAX_NODES 4096u
#define SECAGG_MAX_PARAMS (1u << 28) /* 2^28 ring elements = 1 GiB masked vector */
#define SECAGG_PK_BYTES 32
#define SECAGG_SIG_BYTES 64
/* Encrypted share pair: XChaCha20-Poly1305 nonce || ciphertext of (b share, s_sk share) || tag */
#define SECAGG_SHARE_PT_BYTES (2 * SHAMIR_SHARE_BYTES)
#define SECAGG_CT_BYTES (24 + SECAGG_SHARE_PT_BYTES + 16)
#define SECAGG_HDR_BYTES 12 /* magic, version, type, round_id */
#define SECAGG_CONTEXT_BYTES 32 /* secagg_params_t.context */

typedef enum {
    SECAGG_MSG_ADVERTISE_KEYS = 1, /* client -> server, round 0 */
    SECAGG_MSG_KEYS_BROADCAST = 2, /* server -> client, round 1 input */
    SECAGG_MSG_SHARE_KEYS = 3,     /* client -> server, round 1 */
    SECAGG_MSG_SHARES_DELIVERY = 4,/* server -> client, round 2 input */
    SECAGG_MSG_MASKED_INPUT = 5,   /* client -> server, round 2 */
    SECAGG_MSG_UNMASK_REQUEST = 6, /* server -> client, round 3 input */
    SECAGG_MSG_UNMASK_RESPONSE = 7,/* client -> server, round 3 */
    SECAGG_MSG_PARAMS = 8,         /* server -> client, round announcement */
    SECAGG_MSG_SURVIVORS = 9,      /* server -> client, consistency check input (U3) */
    SECAGG_MSG_SURVIVORS_SIG = 10, /* client -> server, its signature over U3 */
} secagg_msg_type_t;

/* Public round parameters, fixed by the aggregator when it opens a round. Node ids are
 * indices 0..n-1 into the round's roster (sorted enrolled node names, mapped by the caller). */
typedef struct {
    uint64_t round_id;
    uint32_t n;  /* roster size */
    uint32_t k;  /* neighbours per node: n - 1 = complete graph (Bonawitz), else even (SecAgg+) */
    uint32_t t;  /* threshold: shares needed out of the k + 1 holders of a node's secrets */
    uint64_t m;  /* length of the masked vector (ring elements) */
    uint8_t graph_seed[32]; /* public randomness for the SecAgg+ neighbour graph */
    /* Digest of everything else the round binds (the daemons use wire_round_context of the
     * RoundStart); every AdvertiseKeys signature covers it, so keys signed under another
     * context do not verify. Each party computes it from the round start it holds: it is
     * deliberately NOT part of secagg_params_encode, since a context the aggregator sends
     * would prove nothing. All zero = no context (tests, benchmarks). */
    uint8_t context[SECAGG_CONTEXT_BYTES];
} secagg_params_t;

/* One node's signed ephemeral public keys (AdvertiseKeys, and each KeysBroadcast entry). */
typedef struct {
    uint32_t node;
    uint8_t c_pk[SECAGG_PK_BYTES]; /* X25519, encrypts shares sent to this node */
    uint8_t s_pk[SECAGG_PK_BYTES]; /* X25519, pairwise mask agreement */
    uint8_t sig[SECAGG_SIG_BYTES]; /* Ed25519 by the node's identity over round, context,
                                    * node, c_pk, s_pk */
} secagg_keys_t;

typedef struct {
    uint64_t round_id;
    secagg_keys_t keys;
} secagg_advertise_t;

typedef struct {
    uint64_t round_id;
    uint32_t count;
    secagg_keys_t *entries; /* strictly increasing node */
} secagg_broadcast_t;

typedef struct {
    uint32_t peer; /* recipient in ShareKeys, sender in SharesDelivery */
    uint8_t ct[SECAGG_CT_BYTES];
} secagg_cipher_t;

/* ShareKeys (owner = sender) and SharesDelivery (owner = recipient) share one layout. */
typedef struct {
    uint64_t round_id;
    uint32_t owner;
    uint32_t count;
    secagg_cipher_t *entries; /* strictly increasing peer */
} secagg_shares_t;

typedef struct {
    uint64_t round_id;
    uint32_t sender;
    uint64_t m;
    const uint8_t *values_le; /* m little-endian uint32, borrowed from the decoded buffer */
} secagg_masked_t;

/* ConsistencyCheck (Bonawitz et al. round 3): the survivor set U3 the server will unmask,
 * which every survivor signs before anyone reveals a share. */
typedef struct {
    uint64_t round_id;
    uint32_t count;
    uint32_t *nodes; /* strictly increasing */
} secagg_survivors_t;

/* A node's Ed25519 signature (identity key) over the round, its context and U3: sent alone
 * as ConsistencySignature (node = sender), forwarded inside UnmaskRequest. */
typedef struct {
    uint32_t node;
    uint8_t sig[SECAGG_SIG_BYTES];
} secagg_set_sig_t;

typedef struct {
    uint64_t round_id;
    secagg_set_sig_t s;
} secagg_survivor_sig_t;

typedef struct {
    uint64_t round_id;
    uint32_t n_survivors; /* U3: sent a masked input; reveal shares of their self-mask seed */
    uint32_t *survivors;
    uint32_t n_dropped;   /* U2 \ U3: shared keys but no masked input; reveal s_sk shares */
    uint32_t *dropped;
    uint32_t n_sigs;      /* the recipient's neighbourhood's signatures over U3 */
    secagg_set_sig_t *sigs; /* strictly increasing node */
} secagg_unmask_req_t;

typedef enum { SECAGG_REVEAL_B = 0, SECAGG_REVEAL_SK = 1 } secagg_reveal_kind_t;

typedef struct {
    uint32_t node;
    uint8_t kind; /* secagg_reveal_kind_t */
    shamir_share_t share;
} secagg_reveal_t;

typedef struct {
    uint64_t round_id;
    uint32_t sender;
    uint32_t count;
    secagg_reveal_t *entries; /* strictly increasing node */
} secagg_unmask_resp_t;

/* Type of an encoded message (header checked), or -1. */
int secagg_msg_peek(const uint8_t *buf, size_t len, secagg_msg_type_t *type, uint64_t *round_id)
    __attribute__((warn_unused_result));

/* Encoders allocate *out (free() it; UnmaskResponse buffers hold shares: wipe with
 * sodium_memzero before free, or use secagg_buf_free). Decoders fill the struct; *_clear
 * frees (and wipes) what a decoder allocated and is safe on a zeroed struct. */
int secagg_params_encode(const secagg_params_t *p, uint8_t **out, size_t *len);
int secagg_params_decode(const uint8_t *buf, size_t len, secagg_params_t *p)
    __attribute__((warn_unused_result));

int secagg_advertise_encode(const secagg_advertise_t *m, uint8_t **out, size_t *len);
int secagg_advertise_decode(const uint8_t *buf, size_t len, secagg_advertise_t *m)
    __attribute__((warn_unused_result));

int secagg_broadcast_encode(const secagg_broadcast_t *m, uint8_t **out, size_t *len);
int secagg_broadcast_decode(const uint8_t *buf, size_t len, secagg_broadcast_t *m)
    __attribute__((warn_unused_result));
void secagg_broadcast_clear(secagg_broadcast_t *m);

/* type is SECAGG_MSG_SHARE_KEYS or SECAGG_MSG_SHARES_DELIVERY */
int secagg_shares_encode(secagg_msg_type_t type, const secagg_shares_t *m, uint8_t **out,
                         size_t *len);
int secagg_shares_decode(secagg_msg_type_t type, const uint8_t *buf, size_t len,
                         secagg_shares_t *m) __attribute__((warn_unused_result));
void secagg_shares_clear(secagg_shares_t *m);

/* Writes the header of a MaskedInput into a buffer of secagg_masked_size(m) bytes; the
 * caller (the client) writes the m values after it, avoiding a copy of large vectors. */
size_t secagg_masked_size(uint64_t m);
void secagg_masked_write_header(uint8_t *buf, uint64_t round_id, uint32_t sender, uint64_t m);
int secagg_masked_decode(const uint8_t *buf, size_t len, secagg_masked_t *m)
    __attribute__((warn_unused_result));

int secagg_survivors_encode(const secagg_survivors_t *m, uint8_t **out, size_t *len);
int secagg_survivors_decode(const uint8_t *buf, size_t len, secagg_survivors_t *m)
    __attribute__((warn_unused_result));
void secagg_survivors_clear(secagg_survivors_t *m);

int secagg_survivor_sig_encode(const secagg_survivor_sig_t *m, uint8_t **out, size_t *len);
int secagg_survivor_sig_decode(const uint8_t *buf, size_t len, secagg_survivor_sig_t *m)
    __attribute__((warn_unused_result));

int secagg_unmask_req_encode(const secagg_unmask_req_t *m, uint8_t **out, size_t *len);
int secagg_unmask_req_decode(const uint8_t *buf, size_t len, secagg_unmask_req_t *m)
    __attribute__((warn_unused_result));
void secagg_unmask_req_clear(secagg_unmask_req_t *m);

int secagg_unmask_resp_encode(const secagg_unmask_resp_t *m, uint8_t **out, size_t *len);
int secagg_unmask_resp_decode(const uint8_t *buf, size_t len, secagg_unmask_resp_t *m)
    __attribute__((warn_unused_result));
void secagg_unmask_resp_clear(secagg_unmask_resp_t *m);

/* Wipes and frees an encoded buffer; NULL-safe. */
void secagg_buf_free(uint8_t *buf, size_t len);

#endif
