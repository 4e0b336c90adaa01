/* t-of-n Shamir secret sharing of 32-byte secrets (secure-aggregation self-mask seeds and
 * X25519 mask keys) over the prime field GF(p), p = 2^61 - 1.
 *
 * Why this field: a Mersenne prime makes reduction two adds and a shift with 128-bit products,
 * evaluation points are the node ids + 1 so any roster up to 2^61 nodes works (GF(2^8)
 * byte-wise sharing stops at 255 share holders, too few for a complete graph of 500 nodes),
 * and the arithmetic is ~20 lines with no extra dependency. A secret is cut into 8 limbs of
 * 32 bits, each shared with its own random polynomial of degree t - 1; a share is 8 field
 * elements (64 bytes on the wire). On reconstruction every limb must come out < 2^32: a
 * corrupted share yields a limb >= 2^32 with probability ~1 - 2^-29, which is reported as an
 * error (a sanity check, not authentication: shares travel inside AEAD ciphertexts). */
#ifndef MEDFL_SHAMIR_H
#define MEDFL_SHAMIR_H

#include <stddef.h>
#include <stdint.h>

#define SHAMIR_P ((uint64_t)0x1FFFFFFFFFFFFFFFULL) /* 2^61 - 1 */
#define SHAMIR_SECRET_BYTES 32
#define SHAMIR_LIMBS 8
#define SHAMIR_SHARE_BYTES (SHAMIR_LIMBS * 8)

typedef struct {
    uint64_t y[SHAMIR_LIMBS]; /* each < SHAMIR_P; the x coordinate is known from context */
} shamir_share_t;

/* Splits secret into n shares at the distinct non-zero points xs[0..n-1] (< SHAMIR_P) so
 * that any t of them reconstruct it and t - 1 reveal nothing. 1 <= t <= n. */
int shamir_split(const uint8_t secret[SHAMIR_SECRET_BYTES], uint32_t t, const uint64_t *xs,
                 size_t n, shamir_share_t *out);

/* Reconstructs the secret from count shares at distinct non-zero points (Lagrange
 * interpolation at 0). Pass at least t shares of one split; with fewer the result is
 * unrelated to the secret (usually detected by the limb range check, never guaranteed). */
int shamir_combine(const uint64_t *xs, const shamir_share_t *shares, size_t count,
                   uint8_t secret[SHAMIR_SECRET_BYTES]) __attribute__((warn_unused_result));

/* The same in two steps, so a caller reconstructing many secrets from one set of holders
 * (the aggregator, complete graph) computes the Lagrange coefficients at 0 once:
 * shamir_lagrange fills lambda[0..count-1] for the points; shamir_combine_lagrange applies
 * them. */
int shamir_lagrange(const uint64_t *xs, size_t count, uint64_t *lambda)
    __attribute__((warn_unused_result));
int shamir_combine_lagrange(const uint64_t *lambda, const shamir_share_t *shares, size_t count,
                            uint8_t secret[SHAMIR_SECRET_BYTES]) __attribute__((warn_unused_result));

/* Field helpers, exposed for tests. */
uint64_t shamir_mul(uint64_t a, uint64_t b);
uint64_t shamir_inv(uint64_t a);

#endif
