/* Update compression for the node -> aggregator link, in two schemes, because hospital links
 * are slow and metered and the flat LoRA+head update is the only thing that moves:
 *
 *  - PLAIN (secure aggregation off): top-k sparsification by magnitude (O(n) quickselect),
 *    the k values quantized to b-bit signed integers (b = 2..8) with one float scale per
 *    chunk, the index gaps Golomb-Rice coded with the parameter that minimises the size, in
 *    a self-describing payload (version 2) that a strict decoder checks field by field (it
 *    is network input). Version 1 payloads (int8 values, LEB128 varint gaps, section
 *    headers) are still decoded, so a node not yet upgraded keeps working.
 *  - SECAGG (secure aggregation on, every node must send the same coordinates): each sent
 *    coordinate is stochastically (unbiasedly) rounded to one of 2^b levels over a clipping
 *    range [-R, R] shared for the round; the levels are small unsigned integers that the
 *    secure-aggregation ring sums without overflow for up to max_nodes nodes. Optional
 *    random-k picks the same k coordinates on every node from a seed shared for the round.
 *    Only the low `width` bits of each masked ring element travel: masking commutes with the
 *    reduction Z_2^32 -> Z_2^width, so the aggregator's sum mod 2^width is exact.
 *
 * Both schemes keep error feedback: what was not sent (unselected coordinates, quantization
 * and clipping error) stays in a residual on the node and is added to the next update. The
 * node checkpoints the residual (compress_residual / compress_residual_set).
 * docs/compression.md has the formats, bounds and the choice of k and b. */
#ifndef MEDFL_COMPRESS_H
#define MEDFL_COMPRESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Payload versions: plain payloads are written as version 2 (b-bit values, Rice-coded gaps)
 * and versions 1 and 2 are read; secure payloads are version 1. */
#define COMPRESS_PLAIN_VERSION 2
#define COMPRESS_SECAGG_VERSION 1
#define COMPRESS_DEFAULT_CHUNK 256
#define COMPRESS_MAX_CHUNK 65536
#define COMPRESS_SEED_BYTES 32
/* Fixed part of every payload: magic(4) version(1) scheme(1) reserved(2) n(4) k(4). */
#define COMPRESS_HEADER_BYTES 16

typedef enum {
    COMPRESS_PLAIN = 1,  /* top-k + b-bit values, per-chunk scales + Rice-coded index gaps */
    COMPRESS_SECAGG = 2, /* stochastic b-bit levels in the secure-aggregation ring */
} compress_scheme_t;

/* Federation-wide settings (the aggregator sends them in the round start). */
typedef struct {
    compress_scheme_t scheme;
    uint32_t k;          /* coordinates sent per round; 0 = use k_frac */
    double k_frac;       /* fraction of coordinates sent, in (0, 1]; used when k == 0 */
    bool error_feedback; /* keep what was not sent in the node's residual */
    /* PLAIN */
    uint32_t chunk;      /* selected values per float scale, 1..65536 */
    uint32_t value_bits; /* b of the sent values, 2..8: levels -(2^(b-1) - 1) .. 2^(b-1) - 1 */
    /* SECAGG */
    uint32_t bits;       /* b, levels 0 .. 2^b - 1, 2..16 */
    uint32_t max_nodes;  /* most nodes whose levels are summed: fixes the ring width */
    float clip;          /* R: weighted coordinates are clipped to [-R, R] */
    /* Distributed DP noise (docs/privacy.md §10): each node's level is offset by H and may
     * move by up to ±H levels of noise, so a node's element lies in 0 .. 2^b - 1 + 2H. 0 =
     * no noise in the ring. Both sides derive it from the round start (fed_dp_headroom). */
    uint32_t noise_levels;
} compress_config_t;

/* Defaults of the scheme: PLAIN k_frac 0.044, chunk 256, value_bits 4; SECAGG b = 8,
 * k_frac 0.25, max_nodes 16, clip 0 (must be set: it depends on the update's scale). Error
 * feedback on. */
void compress_config_default(compress_config_t *cfg, compress_scheme_t scheme);
/* Checks every field, naming the bad one (MEDFL_ECONFIG). */
int compress_config_check(const compress_config_t *cfg);
/* k for a vector of n coordinates: cfg->k, or round(k_frac * n) clamped to [1, n]. */
uint32_t compress_config_k(const compress_config_t *cfg, uint32_t n);
/* Ring element width for SECAGG: the least w with max_nodes * (2^b - 1) < 2^w (w <= 32). */
unsigned compress_ring_width(uint32_t bits, uint32_t max_nodes);
/* The same with H noise levels of headroom each side: max_nodes * (2^b - 1 + 2H) < 2^w. */
unsigned compress_ring_width_noise(uint32_t bits, uint32_t max_nodes, uint32_t noise_levels);
/* SECAGG level step Δ = 2R / (2^b - 1), in weighted-update units. */
double compress_config_step(const compress_config_t *cfg);

/* What a payload says about itself (compress_peek). */
typedef struct {
    uint8_t version;
    uint8_t scheme;
    uint32_t n, k;
    uint32_t chunk;    /* PLAIN */
    uint8_t value_bits; /* PLAIN: 8 in version 1 */
    uint8_t rice;      /* PLAIN version 2: Golomb-Rice parameter of the index gaps */
    uint8_t bits;      /* SECAGG */
    uint8_t width;     /* SECAGG */
    uint8_t flags;     /* SECAGG: bit 0 random-k, bit 1 scaled by n/k at decode */
    float clip;        /* SECAGG */
} compress_header_t;

#define COMPRESS_FLAG_RANDOM_K 0x01
#define COMPRESS_FLAG_SCALED 0x02

/* Reads and checks the header (magic, version, scheme, reserved bytes, the scheme's fixed
 * fields). */
int compress_peek(const uint8_t *buf, size_t len, compress_header_t *hdr);

/* ---- The node's compressor: settings, residual, rounding randomness. ---- */
typedef struct compress_t compress_t;

/* A compressor for vectors of n floats. `seed` keys the ChaCha20 stream used for
 * stochastic rounding (SECAGG); NULL draws a fresh one from the OS. Pass a fixed seed only
 * in tests: nodes sharing a seed would round identically and their errors would not
 * average out. Returns NULL with the medfl error set. */
compress_t *compress_new(const compress_config_t *cfg, uint32_t n,
                         const uint8_t seed[COMPRESS_SEED_BYTES]);
void compress_destroy(compress_t **self_p);

uint32_t compress_n(const compress_t *self);
/* The error-feedback residual (n floats): what was computed but not yet sent. */
const float *compress_residual(const compress_t *self);
/* Restores a checkpointed residual; rejects a length mismatch or non-finite values. */
int compress_residual_set(compress_t *self, const float *residual, uint32_t n);
void compress_residual_reset(compress_t *self);

/* ---- PLAIN ---- */

/* Largest payload compress_plain_encode can produce for this compressor. */
size_t compress_plain_max_bytes(const compress_t *self);
/* Compresses residual + update (the "accumulated" vector) into out[0 .. *len): the k
 * largest magnitudes, b-bit with per-chunk scales (version 2 payload). With error feedback
 * the residual becomes accumulated - decoded, computed so that residual + decoded ==
 * accumulated bitwise (see docs/compression.md for the proof via Sterbenz's lemma).
 * Rejects non-finite input. */
int compress_plain_encode(compress_t *self, const float *update, uint8_t *out, size_t cap,
                          size_t *len);
/* Strict decoder of version 1 and 2 payloads: checks every length, code, index, count,
 * value, padding bit and scale before writing, then writes the dense vector (zeros where
 * nothing was sent). n must equal the header's n.
 * Malformed input -> -1 with MEDFL_EFORMAT (MEDFL_EUNSUPPORTED for an unknown version or
 * scheme) and a message naming the field; dense is left untouched. */
int compress_plain_decode(const uint8_t *buf, size_t len, uint32_t n, float *dense);

/* ---- SECAGG ---- */

/* Everything every party must agree on for one round: the settings, n, and the round
 * seed that picks the random-k coordinates. Built identically by nodes and aggregator. */
typedef struct compress_round_t compress_round_t;

compress_round_t *compress_round_new(const compress_config_t *cfg, uint32_t n,
                                     const uint8_t round_seed[COMPRESS_SEED_BYTES]);
void compress_round_destroy(compress_round_t **self_p);
uint32_t compress_round_k(const compress_round_t *self);
unsigned compress_round_width(const compress_round_t *self);
/* The k coordinates sent this round, strictly increasing. */
const uint32_t *compress_round_indices(const compress_round_t *self);
/* Bytes of the payload that carries k ring elements of `width` bits (header included). */
size_t compress_round_payload_bytes(const compress_round_t *self);

/* Quantizes weight * (residual + update) at the round's k coordinates to levels[k] in
 * [0, 2^b - 1] (stochastic rounding, unbiased inside [-R, R]). With error feedback the
 * residual becomes accumulated - decoded / weight (unsent coordinates keep everything). */
int compress_secagg_encode(compress_t *self, const compress_round_t *round,
                           const float *update, float weight, uint32_t *levels);
/* Packs the (masked) ring vector: keeps the low `width` bits of each element. */
/* Adds this node's share of distributed DP noise to its k levels (after
 * compress_secagg_encode): level + H + Z with Z discrete Gaussian of std `std_levels`
 * (in levels), clamped to [-H, H] (docs/privacy.md §10 on the truncation). */
struct dp_rng_t;
int compress_secagg_add_noise(const compress_round_t *round, struct dp_rng_t *rng,
                              double std_levels, uint32_t *levels);
/* compress_config_step of the round's settings: the unit of its ring. */
double compress_round_step(const compress_round_t *round);
int compress_secagg_pack(const compress_round_t *round, const uint32_t *ring, uint8_t *out,
                         size_t cap, size_t *len);
/* Strict decoder of one node's packed payload: header must match the round exactly.
 * Writes k ring elements (zero-extended to 32 bits) to ring. */
int compress_secagg_unpack(const compress_round_t *round, const uint8_t *buf, size_t len,
                           uint32_t *ring);
/* The same decoder adding the k elements into acc (mod 2^32) instead: one pass from the
 * payload into a running sum. On failure acc is unchanged (every check precedes the sum). */
int compress_secagg_unpack_add(const compress_round_t *round, const uint8_t *buf, size_t len,
                               uint32_t *acc);
/* From the unmasked ring sum of n_nodes nodes' levels (any representative mod 2^32; it is
 * reduced mod 2^width here) to the dense sum of their decoded weighted updates, scaled by
 * n/k when the round says so. A sum above n_nodes * (2^b - 1) cannot come from honest
 * levels and is rejected (MEDFL_EPROTO). */
int compress_secagg_decode_sum(const compress_round_t *round, const uint32_t *ring_sum,
                               uint32_t n_nodes, float *dense);

#endif
