/* Secure aggregation (Bonawitz et al., CCS 2017) with the SecAgg+ sparse neighbour graph
 * (Bell et al., CCS 2020): the client and server state machines, independent of transport.
 *
 * Why a transport-independent library: the same code runs in-process in tests and
 * benchmarks and behind ZeroMQ in the daemons; the transport only moves the byte buffers
 * produced here (secagg_msg.h) and calls close_*() when a phase's deadline passes.
 *
 * Driving a round (server S, clients C_u, u = 0..n-1 roster indices):
 *   S: p = params (secagg_params_init); send secagg_params_encode(p) to every node.
 *   C: c = secagg_client_new(p, u, identity_sk, identity_pks)
 *   0 C: secagg_client_advertise -> AdvertiseKeys     S: secagg_server_add_keys (each)
 *     S: secagg_server_close_keys (deadline or all in); for each u in U1:
 *        secagg_server_keys_broadcast(u) -> KeysBroadcast
 *   1 C: secagg_client_handle_keys(KeysBroadcast) -> ShareKeys   S: secagg_server_add_shares
 *     S: secagg_server_close_shares; for u in U2: secagg_server_shares_delivery(u)
 *   2 C: secagg_client_handle_shares(SharesDelivery); secagg_client_masked_input(x) ->
 *        MaskedInput                                            S: secagg_server_add_masked
 *     S: secagg_server_close_masked; secagg_server_survivors -> ConsistencyCheck (U3) to U3
 *   3 C: secagg_client_sign_survivors(ConsistencyCheck) -> ConsistencySignature
 *                                                               S: secagg_server_add_signature
 *     S: secagg_server_close_signatures; for u in U4 (signers):
 *        secagg_server_unmask_request(u) -> UnmaskRequest (U3, dropped, u's holders' signatures)
 *   4 C: secagg_client_handle_unmask(UnmaskRequest) -> UnmaskResponse
 *                                                               S: secagg_server_add_unmask
 *     S: secagg_server_finish(sum) once all of U4 answered or at the deadline.
 * Any close_*() / finish() with fewer than t participants (or, in SecAgg+, fewer than t
 * shares for a node that must be unmasked) aborts the round: nothing more is revealed.
 * Every function returns 0 / -1 with medfl_error_set(); a client that returns -1 has
 * aborted and wiped its secrets. docs/secure-aggregation.md has the design and threat model. */
#ifndef MEDFL_SECAGG_H
#define MEDFL_SECAGG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/secagg_msg.h"

#define SECAGG_WUR __attribute__((warn_unused_result))

/* ---- parameters and the neighbour graph ---------------------------------------------- */

/* SecAgg+ default degree: the smallest even k >= 2 * ceil(log2 n), or n - 1 (complete graph)
 * when that is not smaller. Default threshold: a strict majority of the k + 1 holders,
 * floor((k + 1) / 2) + 1, which is also the least threshold any party accepts. */
uint32_t secagg_default_neighbours(uint32_t n);
uint32_t secagg_default_threshold(uint32_t k);
/* 0 when t is a strict majority of the k + 1 holders of a node's shares (t in
 * secagg_default_threshold(k)..k+1), else -1 (MEDFL_EPERM) saying why a smaller t lets an
 * active aggregator unmask one node. */
int secagg_threshold_check(uint32_t k, uint32_t t) SECAGG_WUR;

/* Fills p with a fresh random graph seed; k = 0 picks secagg_default_neighbours(n), t = 0
 * secagg_default_threshold(k). Validates. */
int secagg_params_init(secagg_params_t *p, uint64_t round_id, uint32_t n, uint32_t k, uint32_t t,
                       uint64_t m);
/* n in 2..SECAGG_MAX_NODES, k = n - 1 or even in 2..n-2, t a strict majority of k + 1
 * (secagg_threshold_check), 1 <= m <= max. */
int secagg_params_validate(const secagg_params_t *p) SECAGG_WUR;

/* Harary graph H(k, n) on a ring whose order is a random permutation derived from the graph
 * seed (Bell et al. 2020, sec. 3): node at ring position i is adjacent to positions i +- 1..k/2.
 * k = n - 1 is the complete graph. Deterministic from the params, so every party agrees. */
typedef struct secagg_graph_t secagg_graph_t;
secagg_graph_t *secagg_graph_new(const secagg_params_t *p);
void secagg_graph_destroy(secagg_graph_t **self_p);
bool secagg_graph_adjacent(const secagg_graph_t *g, uint32_t u, uint32_t v);
/* Writes the sorted neighbours of u (not u itself) to out (room for k) and returns k.
 * Computed on demand so a complete graph of n nodes costs O(n) memory, not O(n^2). */
uint32_t secagg_graph_neighbours(const secagg_graph_t *g, uint32_t u, uint32_t *out);

/* ---- fixed-point ring Z_2^32 ---------------------------------------------------------- */

/* A node sends round(clip(x) * w * scale) mod 2^32; the sum of n such values is decoded as a
 * two's-complement int32. No wrap-around is possible when
 *     n * (clip * max_weight * scale + 1/2) <= 2^31 - 1,
 * which secagg_fixed_check enforces (the 1/2 is the rounding of each term). */
typedef struct {
    double scale;      /* ring units per unit of (weighted) update, e.g. 2^16 */
    double clip;       /* every coordinate is clipped to [-clip, clip] before weighting */
    double max_weight; /* largest public weight w_u any node may use */
} secagg_fixed_t;

int secagg_fixed_check(const secagg_fixed_t *fx, uint32_t n) SECAGG_WUR;
/* out[i] = round(clamp(x[i], -clip, clip) * weight * scale) mod 2^32; refuses weight outside
 * [0, max_weight] or a non-finite x (NaN would otherwise encode silently as 0). */
int secagg_encode(const secagg_fixed_t *fx, const float *x, size_t m, double weight,
                  uint32_t *out) SECAGG_WUR;
/* avg[i] = int32(sum[i]) / scale / weight_sum: the weighted average of the survivors. */
int secagg_decode(const secagg_fixed_t *fx, const uint32_t *sum, size_t m, double weight_sum,
                  float *avg) SECAGG_WUR;

/* acc[i] += sign * PRG(seed)[i] for i in [0, m): ChaCha20 (IETF, zero nonce) keystream of the
 * 32-byte seed read as little-endian uint32, generated in cache-sized blocks straight into
 * the accumulator. sign is +1 or -1. Exposed for the benchmark baseline. */
void secagg_prg_accumulate(uint32_t *acc, uint64_t m, const uint8_t seed[32], int sign);

/* ---- client ------------------------------------------------------------------------ */

typedef enum {
    SECAGG_C_INIT = 0,    /* next: advertise */
    SECAGG_C_ADVERTISED,  /* next: handle_keys */
    SECAGG_C_SHARED,      /* next: handle_shares */
    SECAGG_C_READY,       /* next: masked_input */
    SECAGG_C_MASKED,      /* next: sign_survivors */
    SECAGG_C_SIGNED,      /* next: handle_unmask */
    SECAGG_C_DONE,        /* revealed; a second UnmaskRequest is refused */
    SECAGG_C_ABORTED,
} secagg_client_state_t;

typedef struct secagg_client_t secagg_client_t;

/* identity_sk: this node's Ed25519 secret key (libsodium 64-byte form), copied and wiped on
 * destroy; identity_pks: n * 32 bytes, the enrolled Ed25519 public keys by roster index. */
secagg_client_t *secagg_client_new(const secagg_params_t *p, uint32_t self,
                                   const uint8_t *identity_sk, const uint8_t *identity_pks);
void secagg_client_destroy(secagg_client_t **self_p);
secagg_client_state_t secagg_client_state(const secagg_client_t *c);

/* Round 0: fresh c and s X25519 key pairs, signed over (round, p->context, node, keys). */
int secagg_client_advertise(secagg_client_t *c, uint8_t **out, size_t *out_len) SECAGG_WUR;
/* Round 1: verifies every neighbour's signature against its identity key and this client's
 * round context (a neighbour that was sent other round parameters fails here), draws b_u, splits
 * b_u and s_sk_u t-of-(|U1 neighbours| + 1) and encrypts each neighbour's pair -> ShareKeys. */
int secagg_client_handle_keys(secagg_client_t *c, const uint8_t *in, size_t in_len,
                              uint8_t **out, size_t *out_len) SECAGG_WUR;
/* Round 2 input: decrypts and stores the neighbours' share pairs (any failure aborts). */
int secagg_client_handle_shares(secagg_client_t *c, const uint8_t *in, size_t in_len) SECAGG_WUR;
/* Round 2: y = x + PRG(b_u) + sum_{v in U2 neighbours} (u < v ? +1 : -1) PRG(s_uv). x has m
 * ring elements. Wipes s_sk_u, c_sk_u and b_u afterwards. */
int secagg_client_masked_input(secagg_client_t *c, const uint32_t *x, uint8_t **out,
                               size_t *out_len) SECAGG_WUR;
/* Round 3 (ConsistencyCheck, Bonawitz et al. 2017 round 3): signs the survivor set U3 with the
 * identity key over (round, context, U3) -> ConsistencySignature, and remembers U3. Refuses
 * (aborts, wipes) a set that does not list this node or holds fewer than t of its
 * neighbourhood, and any second survivor set in the round. Wipes the identity key. */
int secagg_client_sign_survivors(secagg_client_t *c, const uint8_t *in, size_t in_len,
                                 uint8_t **out, size_t *out_len) SECAGG_WUR;
/* Round 4: before revealing anything, refuses (aborts, wipes) unless the request's survivors
 * are exactly the U3 this node signed and it carries >= t valid signatures over that U3 from
 * distinct surviving holders (self and neighbours), with no signature that fails. Then
 * refuses if a node is both survivor and dropped, if this node is not a survivor, if a listed
 * neighbour never shared keys with us. Otherwise reveals b shares of surviving holders-set
 * members and s_sk shares of dropped neighbours, records what it revealed, wipes all. A
 * second request in the round is refused (-1, MEDFL_EPERM) and reveals nothing. */
int secagg_client_handle_unmask(secagg_client_t *c, const uint8_t *in, size_t in_len,
                                uint8_t **out, size_t *out_len) SECAGG_WUR;
/* The kind (secagg_reveal_kind_t) of node's share this client revealed, -1 for none. */
int secagg_client_revealed(const secagg_client_t *c, uint32_t node);

/* ---- server ------------------------------------------------------------------------ */

typedef enum {
    SECAGG_S_KEYS = 0,   /* collecting AdvertiseKeys */
    SECAGG_S_SHARES,     /* collecting ShareKeys */
    SECAGG_S_MASKED,     /* collecting MaskedInput */
    SECAGG_S_CONSISTENCY,/* collecting ConsistencySignature over U3 */
    SECAGG_S_UNMASK,     /* collecting UnmaskResponse */
    SECAGG_S_DONE,
    SECAGG_S_ABORTED,
} secagg_server_state_t;

typedef struct secagg_server_t secagg_server_t;

/* identity_pks: n * 32 bytes (AdvertiseKeys signatures are checked here too, against p->context
 * as well, so a bad key or a node sent another round start is dropped early; clients check
 * again). threads: workers for unmasking (>= 1). */
secagg_server_t *secagg_server_new(const secagg_params_t *p, const uint8_t *identity_pks,
                                   int threads);
void secagg_server_destroy(secagg_server_t **self_p);
secagg_server_state_t secagg_server_state(const secagg_server_t *s);

int secagg_server_add_keys(secagg_server_t *s, const uint8_t *in, size_t len) SECAGG_WUR;
int secagg_server_close_keys(secagg_server_t *s) SECAGG_WUR;
int secagg_server_keys_broadcast(secagg_server_t *s, uint32_t recipient, uint8_t **out,
                                 size_t *out_len) SECAGG_WUR;
int secagg_server_add_shares(secagg_server_t *s, const uint8_t *in, size_t len) SECAGG_WUR;
int secagg_server_close_shares(secagg_server_t *s) SECAGG_WUR;
int secagg_server_shares_delivery(secagg_server_t *s, uint32_t recipient, uint8_t **out,
                                  size_t *out_len) SECAGG_WUR;
/* Adds the masked vector into the running sum at once (no per-node copy is kept). */
int secagg_server_add_masked(secagg_server_t *s, const uint8_t *in, size_t len) SECAGG_WUR;
/* The same for a masked vector that arrives in another encoding (the aggregator's wire
 * payload): after the checks of a MaskedInput (phase, round, sender in U2 and not yet in U3,
 * m values), add(ctx, sum, m) decodes it straight into the running sum, one pass and no
 * copy. add must either add all m values mod 2^32 and return 0, or return -1 (error set)
 * without having changed sum; the sender then does not count as having sent its input. */
typedef int (*secagg_add_fn)(void *ctx, uint32_t *sum, uint64_t m);
int secagg_server_add_masked_values(secagg_server_t *s, uint64_t round_id, uint32_t sender,
                                    uint64_t m, secagg_add_fn add, void *ctx) SECAGG_WUR;
/* sum[i] += values_le[i] mod 2^32 for m little-endian u32 values. */
void secagg_add_le(uint32_t *sum, const uint8_t *values_le, uint64_t m);
int secagg_server_close_masked(secagg_server_t *s) SECAGG_WUR;
/* The ConsistencyCheck (U3), the same for every survivor. */
int secagg_server_survivors(secagg_server_t *s, uint8_t **out, size_t *out_len) SECAGG_WUR;
/* Verifies a survivor's signature over the U3 this server sent before storing it. */
int secagg_server_add_signature(secagg_server_t *s, const uint8_t *in, size_t len) SECAGG_WUR;
/* Aborts unless every node to unmask has >= t signers among its holders. */
int secagg_server_close_signatures(secagg_server_t *s) SECAGG_WUR;
/* recipient's UnmaskRequest: U3, the dropped nodes, and the signatures of its holders. */
int secagg_server_unmask_request(secagg_server_t *s, uint32_t recipient, uint8_t **out,
                                 size_t *out_len) SECAGG_WUR;
int secagg_server_add_unmask(secagg_server_t *s, const uint8_t *in, size_t len) SECAGG_WUR;
/* Reconstructs, removes the masks, writes the m-element sum of the survivors' inputs. */
int secagg_server_finish(secagg_server_t *s, uint32_t *sum) SECAGG_WUR;

/* Participants of a phase (1 = U1 advertised, 2 = U2 shared, 3 = U3 masked, 4 = U4 signed
 * the survivor set, 5 = U5 answered the unmask request), sorted; NULL for another phase. */
const uint32_t *secagg_server_set(const secagg_server_t *s, int phase, uint32_t *count);
/* How many shares of node's self-mask seed (b) and mask key (sk) the server has received:
 * the protocol guarantees that at most one of them is non-zero. */
void secagg_server_revealed(const secagg_server_t *s, uint32_t node, uint32_t *n_b,
                            uint32_t *n_sk);

#endif
