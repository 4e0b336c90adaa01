/* Shamir secret sharing over GF(2^61 - 1) for 32-byte secrets; see shamir.h for the choice
 * of field and the limb layout. Every coefficient and intermediate that depends on the
 * secret is wiped before returning. */
#include "common/shamir.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

static inline uint64_t s_reduce(uint64_t x)
{
    /* x < 2^62 + small: fold once, then conditional subtract */
    x = (x & SHAMIR_P) + (x >> 61);
    return x >= SHAMIR_P ? x - SHAMIR_P : x;
}

static inline uint64_t s_add(uint64_t a, uint64_t b)
{
    return s_reduce(a + b);
}

static inline uint64_t s_sub(uint64_t a, uint64_t b)
{
    return s_reduce(a + SHAMIR_P - b);
}

uint64_t shamir_mul(uint64_t a, uint64_t b)
{
    unsigned __int128 p = (unsigned __int128)a * b; /* < 2^122 */
    uint64_t lo = (uint64_t)p & SHAMIR_P;
    uint64_t hi = (uint64_t)(p >> 61); /* < 2^61 */
    return s_reduce(lo + hi);
}

uint64_t shamir_inv(uint64_t a)
{
    /* Fermat: a^(p-2); a != 0 is the caller's contract (points are distinct and non-zero). */
    uint64_t r = 1, base = a, e = SHAMIR_P - 2;
    while (e) {
        if (e & 1) r = shamir_mul(r, base);
        base = shamir_mul(base, base);
        e >>= 1;
    }
    return r;
}

static uint64_t s_random_element(void)
{
    uint64_t v;
    do {
        randombytes_buf(&v, sizeof v);
        v &= SHAMIR_P;
    } while (v == SHAMIR_P);
    return v;
}

static int s_check_points(const uint64_t *xs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (xs[i] == 0 || xs[i] >= SHAMIR_P)
            return medfl_error_set(MEDFL_EINVAL, "shamir: point %zu is 0 or outside the field", i);
        for (size_t j = 0; j < i; j++)
            if (xs[i] == xs[j])
                return medfl_error_set(MEDFL_EINVAL, "shamir: points %zu and %zu coincide", j, i);
    }
    return 0;
}

int shamir_split(const uint8_t secret[SHAMIR_SECRET_BYTES], uint32_t t, const uint64_t *xs,
                 size_t n, shamir_share_t *out)
{
    if (t < 1 || t > n)
        return medfl_error_set(MEDFL_EINVAL, "shamir: threshold %u outside 1..%zu", t, n);
    if (s_check_points(xs, n) < 0) return -1;
    uint64_t coef[SHAMIR_LIMBS][64];
    uint64_t *dyn = NULL;
    uint64_t *c = &coef[0][0];
    if (t > 64) {
        dyn = calloc((size_t)SHAMIR_LIMBS * t, sizeof *dyn);
        if (!dyn) return medfl_error_set(MEDFL_ENOMEM, "shamir: %u coefficients", t);
        c = dyn;
    }
    size_t stride = t > 64 ? t : 64;
    for (int l = 0; l < SHAMIR_LIMBS; l++) {
        const uint8_t *b = secret + 4 * l;
        uint32_t limb = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                        (uint32_t)b[3] << 24; /* little-endian: shares cross machines */
        c[l * stride] = limb;
        for (uint32_t i = 1; i < t; i++) c[l * stride + i] = s_random_element();
        sodium_memzero(&limb, sizeof limb);
    }
    for (size_t k = 0; k < n; k++) {
        for (int l = 0; l < SHAMIR_LIMBS; l++) {
            /* Horner */
            uint64_t acc = 0;
            for (uint32_t i = t; i-- > 0;) acc = s_add(shamir_mul(acc, xs[k]), c[l * stride + i]);
            out[k].y[l] = acc;
        }
    }
    if (dyn) {
        sodium_memzero(dyn, (size_t)SHAMIR_LIMBS * t * sizeof *dyn);
        free(dyn);
    }
    sodium_memzero(coef, sizeof coef);
    return 0;
}

int shamir_lagrange(const uint64_t *xs, size_t count, uint64_t *lambda)
{
    if (count < 1) return medfl_error_set(MEDFL_EINVAL, "shamir: no shares to combine");
    if (s_check_points(xs, count) < 0) return -1;
    /* lambda_i = prod_{j != i} x_j / (x_j - x_i): numerators and denominators multiplied
     * separately so each coefficient costs one inversion. */
    for (size_t i = 0; i < count; i++) {
        uint64_t num = 1, den = 1;
        for (size_t j = 0; j < count; j++) {
            if (j == i) continue;
            num = shamir_mul(num, xs[j]);
            den = shamir_mul(den, s_sub(xs[j], xs[i]));
        }
        lambda[i] = shamir_mul(num, shamir_inv(den));
    }
    return 0;
}

int shamir_combine_lagrange(const uint64_t *lambda, const shamir_share_t *shares, size_t count,
                            uint8_t secret[SHAMIR_SECRET_BYTES])
{
    for (size_t k = 0; k < count; k++)
        for (int l = 0; l < SHAMIR_LIMBS; l++)
            if (shares[k].y[l] >= SHAMIR_P)
                return medfl_error_set(MEDFL_ECRYPTO, "shamir: share %zu limb %d outside field", k, l);
    uint64_t limbs[SHAMIR_LIMBS];
    int bad = 0;
    for (int l = 0; l < SHAMIR_LIMBS; l++) {
        uint64_t acc = 0;
        for (size_t i = 0; i < count; i++) acc = s_add(acc, shamir_mul(lambda[i], shares[i].y[l]));
        limbs[l] = acc;
        bad |= acc > UINT32_MAX;
    }
    if (bad) {
        sodium_memzero(limbs, sizeof limbs);
        return medfl_error_set(MEDFL_ECRYPTO,
                               "shamir: reconstructed value out of range (inconsistent shares)");
    }
    for (int l = 0; l < SHAMIR_LIMBS; l++)
        for (int b = 0; b < 4; b++) secret[4 * l + b] = (uint8_t)(limbs[l] >> (8 * b));
    sodium_memzero(limbs, sizeof limbs);
    return 0;
}

int shamir_combine(const uint64_t *xs, const shamir_share_t *shares, size_t count,
                   uint8_t secret[SHAMIR_SECRET_BYTES])
{
    if (count < 1) return medfl_error_set(MEDFL_EINVAL, "shamir: no shares to combine");
    uint64_t *lambda = malloc(count * sizeof *lambda);
    if (!lambda) return medfl_error_set(MEDFL_ENOMEM, "shamir: %zu coefficients", count);
    int rc = shamir_lagrange(xs, count, lambda);
    if (rc == 0) rc = shamir_combine_lagrange(lambda, shares, count, secret);
    free(lambda);
    return rc;
}
