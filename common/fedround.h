/* What the aggregator's round machine (aggregator/rounds.c) and the node's round
 * participation (node/round.c) must compute identically, in one place: the fixed-point
 * parameters of uncompressed secure rounds, the compression settings and the round seed
 * derived from a RoundStart, and the translation between the protobuf round messages
 * (proto/medfl.proto, node ids) and the byte messages of common/secagg_msg (roster indices).
 *
 * WHY translate instead of carrying secagg's bytes opaquely: the wire layer validates every
 * typed field (key sizes, id syntax, list bounds) before a daemon sees it, and the roster
 * index <-> node id mapping is part of the round, not of the secagg library; the secagg
 * decoders then check the re-encoded bytes strictly once more. */
#ifndef MEDFL_FEDROUND_H
#define MEDFL_FEDROUND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/compress.h"
#include "common/secagg.h"
#include "proto/medfl.pb-c.h"

#define FED_WUR __attribute__((warn_unused_result))

/* How an update travels in a round (from RoundStart.compression and secagg.enabled). */
typedef enum {
    FED_DENSE = 0,  /* plain: float32; secure: secagg fixed point (secagg_encode) */
    FED_TOPK,       /* plain only: compress PLAIN payload */
    FED_LEVELS,     /* compress SECAGG levels (quantize, randk), packed ring elements */
} fed_encoding_t;

/* Fixed point of an uncompressed secure round of n nodes with weights <= 1 and coordinates
 * clipped to clip: the largest power-of-two scale that secagg_fixed_check accepts. */
int fed_fixed_params(uint32_t n, double clip, secagg_fixed_t *fx) FED_WUR;

/* 32-byte compression round seed from the 64-bit RoundStart seed (BLAKE2b, domain
 * separated), so aggregator and nodes pick the same random-k coordinates. */
void fed_compress_seed(uint64_t seed, uint8_t out[COMPRESS_SEED_BYTES]);

/* Encoding and compress settings of a round from its Compression message (NULL = none).
 * numel: coordinates of the update. Refuses TOPK with secure aggregation. */
int fed_compression(const Medfl__Compression *c, bool secure, uint32_t numel,
                    fed_encoding_t *enc, compress_config_t *cc) FED_WUR;

/* Index of node_id in the roster, or -1. */
/* Distributed DP noise inside the ring (docs/privacy.md §10). Headroom, in weighted-update
 * units, that one node's noise may use each side: 12 times the std a node would add alone
 * (σ C (lr / q) ρ_max), so clamping the noise there changes it with probability < 1e-32 per
 * coordinate. 0 when the round does not share noise. The aggregator and every node compute
 * it from the same round-start fields, so they size the ring alike. */
double fed_dp_headroom(const Medfl__DpParams *dp, double lr, bool secure);
/* Sizes the levels ring (cc->noise_levels) for that headroom and turns error feedback off
 * (a residual would carry noise-free data into later rounds, outside the per-round
 * accounting). No-op at 0. */
int fed_dp_ring(double headroom, compress_config_t *cc) FED_WUR;
/* fed_fixed_params for the dense ring with that headroom: the data keep their clip, the
 * scale leaves room for the noise. headroom 0 = fed_fixed_params. */
int fed_fixed_params_dp(uint32_t n, double clip, double headroom, secagg_fixed_t *fx) FED_WUR;
/* Dense fixed-point ring: adds discrete Gaussian noise of std `std` (update units), clamped
 * to ±headroom, to this node's m encoded coordinates. */
struct dp_rng_t;
int fed_fixed_add_noise(const secagg_fixed_t *fx, struct dp_rng_t *rng, double std,
                        double headroom, uint32_t *ring, size_t m) FED_WUR;

int fed_roster_index(char *const *roster, size_t n, const char *node_id);

/* ---- protobuf <-> secagg_msg. Functions named *_to_proto fill a protobuf message whose
 * allocated parts are released with fed_proto_free(); *_from_proto allocate the secagg
 * byte message in *out (free with secagg_buf_free). ---- */

/* AdvertiseKeys: the client's secagg bytes -> proto; the proto -> secagg bytes (server side,
 * sender = roster index of the connection's node). */
int fed_advertise_to_proto(const uint8_t *buf, size_t len, Medfl__AdvertiseKeys *out) FED_WUR;
int fed_advertise_from_proto(const Medfl__AdvertiseKeys *in, uint64_t round_id, uint32_t sender,
                             uint8_t **out, size_t *out_len) FED_WUR;

int fed_broadcast_to_proto(const uint8_t *buf, size_t len, char *const *roster, size_t n,
                           Medfl__KeysBroadcast *out) FED_WUR;
int fed_broadcast_from_proto(const Medfl__KeysBroadcast *in, uint64_t round_id,
                             char *const *roster, size_t n, uint8_t **out, size_t *out_len) FED_WUR;

/* ShareKeys (to_node set) and SharesDelivery (from_node set). */
int fed_shares_to_proto(secagg_msg_type_t type, const uint8_t *buf, size_t len,
                        char *const *roster, size_t n, Medfl__EncryptedShare ***shares,
                        size_t *n_shares) FED_WUR;
int fed_shares_from_proto(secagg_msg_type_t type, Medfl__EncryptedShare *const *shares,
                          size_t n_shares, uint64_t round_id, uint32_t owner,
                          char *const *roster, size_t n, uint8_t **out, size_t *out_len) FED_WUR;

/* ConsistencyCheck (the survivor set) and ConsistencySignature (the sender's signature). */
int fed_survivors_to_proto(const uint8_t *buf, size_t len, char *const *roster, size_t n,
                           Medfl__ConsistencyCheck *out) FED_WUR;
int fed_survivors_from_proto(const Medfl__ConsistencyCheck *in, uint64_t round_id,
                             char *const *roster, size_t n, uint8_t **out, size_t *out_len) FED_WUR;
int fed_survivor_sig_to_proto(const uint8_t *buf, size_t len, Medfl__ConsistencySignature *out)
    FED_WUR;
int fed_survivor_sig_from_proto(const Medfl__ConsistencySignature *in, uint64_t round_id,
                                uint32_t sender, uint8_t **out, size_t *out_len) FED_WUR;

int fed_unmask_req_to_proto(const uint8_t *buf, size_t len, char *const *roster, size_t n,
                            Medfl__UnmaskRequest *out) FED_WUR;
int fed_unmask_req_from_proto(const Medfl__UnmaskRequest *in, uint64_t round_id,
                              char *const *roster, size_t n, uint8_t **out, size_t *out_len) FED_WUR;

int fed_unmask_resp_to_proto(const uint8_t *buf, size_t len, char *const *roster, size_t n,
                             Medfl__UnmaskResponse *out) FED_WUR;
int fed_unmask_resp_from_proto(const Medfl__UnmaskResponse *in, uint64_t round_id,
                               uint32_t sender, char *const *roster, size_t n, uint8_t **out,
                               size_t *out_len) FED_WUR;

/* Releases what the *_to_proto functions allocated inside a message (not the message). */
void fed_proto_free_broadcast(Medfl__KeysBroadcast *m);
void fed_proto_free_shares(Medfl__EncryptedShare **shares, size_t n);
void fed_proto_free_survivors(Medfl__ConsistencyCheck *m);
void fed_proto_free_survivor_sig(Medfl__ConsistencySignature *m);
void fed_proto_free_unmask_req(Medfl__UnmaskRequest *m);
void fed_proto_free_unmask_resp(Medfl__UnmaskResponse *m); /* wipes the shares */

/* Extracts the m values of a client's MaskedInput bytes into ring (room for m). The
 * aggregator needs no converse: it decodes a node's payload straight into the secagg
 * server's sum (secagg_server_add_masked_values). */
int fed_masked_values(const uint8_t *buf, size_t len, uint64_t m, uint32_t *ring) FED_WUR;

/* Sum mod 2^32 of a vector, logged by both sides so a test can check the secure sum. */
uint32_t fed_checksum(const uint32_t *v, size_t m);

#endif
