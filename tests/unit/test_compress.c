/* Update compression: plain top-k round trips (b-bit values, Rice-coded gaps, version 2)
 * against an independent reference and an independent parser of the documented layout, the
 * encoder's choice of the Rice parameter, top-k correctness under ties, the error-feedback
 * residual (bitwise in plain mode, for every value width), decoding of version 1, residual
 * checkpoint/restore, secure-aggregation levels summed under cancelling 32-bit masks and
 * shipped in the narrow ring, statistical unbiasedness of stochastic rounding and of scaled
 * random-k (seeded, so deterministic; bounds 6 standard errors wide), and the strict
 * decoders rejecting each kind of malformed payload with the right error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/compress.h"
#include "common/error.h"
#include "common/fedround.h"

/* ---- deterministic test data ---- */

static uint64_t s_rs = 12345;

static uint64_t s_rand(void)
{
    uint64_t z = (s_rs += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double s_unit(void)
{
    return (double)(s_rand() >> 11) * 0x1.0p-53;
}

static float s_gauss(void)
{
    double u = s_unit(), v = s_unit();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(2.0 * M_PI * v));
}

static void s_fill(float *x, uint32_t n, float sigma)
{
    for (uint32_t i = 0; i < n; i++)
        x[i] = sigma * s_gauss();
}

static const uint8_t s_seed_a[32] = {1, 2, 3};
static const uint8_t s_seed_b[32] = {9, 8, 7};

static compress_t *s_plain_b(uint32_t n, double frac, uint32_t chunk, uint32_t bits, bool ef)
{
    compress_config_t cfg;
    compress_config_default(&cfg, COMPRESS_PLAIN);
    cfg.k_frac = frac;
    cfg.chunk = chunk;
    cfg.value_bits = bits;
    cfg.error_feedback = ef;
    compress_t *c = compress_new(&cfg, n, s_seed_a);
    assert_non_null(c);
    return c;
}

static compress_t *s_plain(uint32_t n, double frac, uint32_t chunk, bool ef)
{
    return s_plain_b(n, frac, chunk, 8, ef);
}

/* Bit i of an LSB-first stream. */
static unsigned s_bit(const uint8_t *p, uint64_t i)
{
    return (p[i >> 3] >> (i & 7)) & 1u;
}

/* Reads the indices of a version 2 plain payload by the documented layout (header 20 bytes
 * with b at 16, the Rice parameter at 17 and chunk - 1 at 18; 4-byte scales; k values of b
 * bits; then Rice codes: ones, a zero, r low bits, of the first index and of each gap - 1):
 * a conformance check independent of the decoder. Returns k; *bits_used = Rice bits. */
static uint32_t s_parse_indices_bits(const uint8_t *p, uint32_t *idx, uint64_t *bits_used)
{
    uint32_t k = (uint32_t)p[12] | (uint32_t)p[13] << 8 | (uint32_t)p[14] << 16 |
                 (uint32_t)p[15] << 24;
    assert_int_equal(p[4], 2);
    uint32_t bits = p[16], r = p[17], chunk = (uint32_t)(p[18] | p[19] << 8) + 1;
    const uint8_t *rice = p + 20 + 4 * ((k + chunk - 1) / chunk) + (k * bits + 7) / 8;
    uint64_t pos = 0;
    for (uint32_t j = 0; j < k; j++) {
        uint32_t q = 0, low = 0;
        while (s_bit(rice, pos++))
            q++;
        for (uint32_t b = 0; b < r; b++)
            low |= s_bit(rice, pos++) << b;
        uint32_t v = (q << r) | low;
        idx[j] = j == 0 ? v : idx[j - 1] + 1 + v;
    }
    if (bits_used)
        *bits_used = pos;
    return k;
}

static uint32_t s_parse_indices(const uint8_t *p, uint32_t *idx)
{
    return s_parse_indices_bits(p, idx, NULL);
}

static const float *s_mag_base;

static int s_cmp_mag_desc(const void *a, const void *b)
{
    float x = fabsf(s_mag_base[*(const uint32_t *)a]), y = fabsf(s_mag_base[*(const uint32_t *)b]);
    return (x < y) - (x > y);
}

static int s_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Reference plain compression by full sort: the expected dense decode. */
static void s_reference_plain(const float *acc, uint32_t n, uint32_t k, uint32_t chunk,
                              uint32_t bits, float *dense)
{
    uint32_t *ord = malloc(n * sizeof *ord);
    for (uint32_t i = 0; i < n; i++)
        ord[i] = i;
    s_mag_base = acc;
    qsort(ord, n, sizeof *ord, s_cmp_mag_desc);
    qsort(ord, k, sizeof *ord, s_cmp_u32);
    memset(dense, 0, n * sizeof *dense);
    for (uint32_t c = 0; c * chunk < k; c++) {
        uint32_t j1 = (c + 1) * chunk < k ? (c + 1) * chunk : k;
        float m = 0;
        for (uint32_t j = c * chunk; j < j1; j++)
            m = fmaxf(m, fabsf(acc[ord[j]]));
        float L = (float)((1 << (bits - 1)) - 1);
        float s = m / L;
        for (uint32_t j = c * chunk; j < j1; j++) {
            float q = s > 0 ? nearbyintf(acc[ord[j]] / s) : 0;
            q = fminf(fmaxf(q, -L), L);
            dense[ord[j]] = q * s;
        }
    }
    free(ord);
}

/* ---- plain ---- */

/* Bits of the Rice code of the k sorted indices with parameter r (test's own count). */
static uint64_t s_rice_size(const uint32_t *idx, uint32_t k, uint32_t r)
{
    uint64_t bits = 0;
    for (uint32_t j = 0; j < k; j++)
        bits += ((j == 0 ? idx[0] : idx[j] - idx[j - 1] - 1) >> r) + 1 + r;
    return bits;
}

static void test_plain_roundtrip_matches_reference(void **state)
{
    (void)state;
    const uint32_t n = 5000, k = 250;
    static const uint32_t widths[] = {2, 3, 4, 5, 8};
    float *x = malloc(n * sizeof *x), *got = malloc(n * sizeof *got), *want = malloc(n * sizeof *want);
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        uint32_t bits = widths[w];
        compress_t *c = s_plain_b(n, 0.05, 64, bits, false);
        s_fill(x, n, 0.01f);
        size_t cap = compress_plain_max_bytes(c), len = 0;
        uint8_t *buf = malloc(cap);
        assert_int_equal(compress_plain_encode(c, x, buf, cap, &len), 0);
        assert_true(len <= cap);
        compress_header_t h;
        assert_int_equal(compress_peek(buf, len, &h), 0);
        assert_int_equal(h.version, COMPRESS_PLAIN_VERSION);
        assert_int_equal(h.scheme, COMPRESS_PLAIN);
        assert_int_equal(h.n, n);
        assert_int_equal(h.k, k);
        assert_int_equal(h.chunk, 64);
        assert_int_equal(h.value_bits, bits);
        assert_int_equal(compress_plain_decode(buf, len, n, got), 0);
        s_reference_plain(x, n, k, 64, bits, want);
        assert_memory_equal(got, want, n * sizeof *got);
        uint32_t idx[250];
        uint64_t used = 0;
        assert_int_equal(s_parse_indices_bits(buf, idx, &used), k);
        for (uint32_t j = 1; j < k; j++)
            assert_true(idx[j] > idx[j - 1]);
        /* exact size: header, 4 scales, k values of b bits, the Rice bits rounded up */
        assert_int_equal(len, 20 + 4 * 4 + (k * bits + 7) / 8 + (used + 7) / 8);
        /* the encoder's parameter gives the smallest code of all parameters */
        for (uint32_t r = 0; r <= 30; r++)
            assert_true(used <= s_rice_size(idx, k, r));
        assert_int_equal(used, s_rice_size(idx, k, h.rice));
        /* at 5 % density, well under a byte per gap (a varint takes 8 bits or more) */
        assert_true(used < 7 * k);
        free(buf);
        compress_destroy(&c);
        compress_destroy(&c); /* safe twice */
    }
    free(x);
    free(got);
    free(want);
}

static void test_plain_topk_with_ties(void **state)
{
    (void)state;
    const uint32_t n = 4096;
    /* magnitudes drawn from 6 values so that ties are everywhere, zeros most of all */
    float *x = malloc(n * sizeof *x);
    static const float vals[6] = {0, 0, 0, 1, 2, 3};
    for (uint32_t i = 0; i < n; i++)
        x[i] = vals[s_rand() % 6] * ((s_rand() & 1) ? 1.0f : -1.0f);
    for (uint32_t k = 1; k < n; k = k * 3 + 1) {
        compress_config_t cfg;
        compress_config_default(&cfg, COMPRESS_PLAIN);
        cfg.k = k;
        compress_t *c = compress_new(&cfg, n, NULL);
        assert_non_null(c);
        size_t cap = compress_plain_max_bytes(c), len;
        uint8_t *buf = malloc(cap);
        assert_int_equal(compress_plain_encode(c, x, buf, cap, &len), 0);
        uint32_t *idx = malloc(k * sizeof *idx);
        assert_int_equal(s_parse_indices(buf, idx), k);
        char *sel = calloc(n, 1);
        float min_sel = INFINITY, max_unsel = 0;
        for (uint32_t j = 0; j < k; j++) {
            assert_true(idx[j] < n);
            if (j)
                assert_true(idx[j] > idx[j - 1]);
            sel[idx[j]] = 1;
            min_sel = fminf(min_sel, fabsf(x[idx[j]]));
        }
        for (uint32_t i = 0; i < n; i++)
            if (!sel[i])
                max_unsel = fmaxf(max_unsel, fabsf(x[i]));
        assert_true(min_sel >= max_unsel);
        free(sel);
        free(idx);
        free(buf);
        compress_destroy(&c);
    }
    free(x);
}

static void s_residual_exact(uint32_t bits)
{
    const uint32_t n = 20000, rounds = 8;
    compress_t *c = s_plain_b(n, 0.02, 256, bits, true);
    float *x = malloc(n * sizeof *x), *acc = malloc(n * sizeof *acc),
          *dec = malloc(n * sizeof *dec), *prev = calloc(n, sizeof *prev);
    double *sum_in = calloc(n, sizeof *sum_in), *sum_out = calloc(n, sizeof *sum_out);
    size_t cap = compress_plain_max_bytes(c), len;
    uint8_t *buf = malloc(cap);
    for (uint32_t r = 0; r < rounds; r++) {
        /* heavy-ish tails: Gaussian times an occasional factor 10 */
        for (uint32_t i = 0; i < n; i++)
            x[i] = s_gauss() * 1e-3f * ((s_rand() % 50) == 0 ? 10.0f : 1.0f);
        for (uint32_t i = 0; i < n; i++)
            acc[i] = prev[i] + x[i];
        assert_int_equal(compress_plain_encode(c, x, buf, cap, &len), 0);
        assert_int_equal(compress_plain_decode(buf, len, n, dec), 0);
        const float *res = compress_residual(c);
        for (uint32_t i = 0; i < n; i++) {
            /* residual + decoded == accumulated, bitwise */
            assert_true(res[i] + dec[i] == acc[i]);
            if (dec[i] == 0.0f)
                assert_true(res[i] == acc[i]);
            sum_in[i] += x[i];
            sum_out[i] += dec[i];
        }
        memcpy(prev, res, n * sizeof *prev);
    }
    /* everything put in was either sent or is still in the residual */
    const float *res = compress_residual(c);
    for (uint32_t i = 0; i < n; i++)
        assert_true(fabs(sum_in[i] - (sum_out[i] + res[i])) < 1e-6);
    free(buf);
    free(x);
    free(acc);
    free(dec);
    free(prev);
    free(sum_in);
    free(sum_out);
    compress_destroy(&c);
}

/* Bitwise residual + decoded == accumulated for every value width: few bits mean large
 * quantization errors, which the residual must hold exactly. */
static void test_plain_residual_exact(void **state)
{
    (void)state;
    static const uint32_t widths[] = {2, 3, 4, 6, 8};
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++)
        s_residual_exact(widths[w]);
}

/* compress_plain_max_bytes bounds every payload, at the extremes of the Rice code: all
 * coordinates, one coordinate at the far end, clustered and evenly spread selections. */
static void test_plain_size_bound_extremes(void **state)
{
    (void)state;
    const uint32_t n = 3000;
    float *x = calloc(n, sizeof *x), *d = malloc(n * sizeof *d);
    static const uint32_t ks[] = {1, 2, 30, 1500, 2999, 3000};
    for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
        for (int layout = 0; layout < 3; layout++) {
            compress_config_t cfg;
            compress_config_default(&cfg, COMPRESS_PLAIN);
            cfg.k = ks[t];
            cfg.value_bits = 2 + (uint32_t)(t % 7);
            compress_t *c = compress_new(&cfg, n, NULL);
            assert_non_null(c);
            for (uint32_t i = 0; i < n; i++) {
                /* 0: largest at the end; 1: largest first (clustered); 2: spread */
                float m = layout == 0 ? (float)i : layout == 1 ? (float)(n - i)
                                                              : (float)((i * 7919u) % n);
                x[i] = (i & 1) ? -m - 1 : m + 1;
            }
            size_t cap = compress_plain_max_bytes(c), len = 0;
            uint8_t *buf = malloc(cap);
            assert_int_equal(compress_plain_encode(c, x, buf, cap, &len), 0);
            assert_true(len <= cap);
            assert_int_equal(compress_plain_decode(buf, len, n, d), 0);
            uint32_t nz = 0;
            for (uint32_t i = 0; i < n; i++)
                nz += d[i] != 0.0f;
            assert_true(nz <= ks[t]);
            free(buf);
            compress_destroy(&c);
        }
    }
    free(x);
    free(d);
}

static void test_plain_residual_checkpoint(void **state)
{
    (void)state;
    const uint32_t n = 3000;
    compress_t *a = s_plain(n, 0.03, 128, true), *b = s_plain(n, 0.03, 128, true);
    float *x = malloc(n * sizeof *x);
    size_t cap = compress_plain_max_bytes(a), la, lb;
    uint8_t *ba = malloc(cap), *bb = malloc(cap);
    s_fill(x, n, 1.0f);
    assert_int_equal(compress_plain_encode(a, x, ba, cap, &la), 0);
    /* b restores a's checkpointed residual: the next payloads must be identical */
    float *ck = malloc(n * sizeof *ck);
    memcpy(ck, compress_residual(a), n * sizeof *ck);
    assert_int_equal(compress_residual_set(b, ck, n), 0);
    s_fill(x, n, 1.0f);
    assert_int_equal(compress_plain_encode(a, x, ba, cap, &la), 0);
    assert_int_equal(compress_plain_encode(b, x, bb, cap, &lb), 0);
    assert_int_equal(la, lb);
    assert_memory_equal(ba, bb, la);
    assert_memory_equal(compress_residual(a), compress_residual(b), n * sizeof(float));
    /* bad checkpoints are refused */
    assert_int_equal(compress_residual_set(b, ck, n - 1), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    ck[7] = NAN;
    assert_int_equal(compress_residual_set(b, ck, n), -1);
    assert_non_null(strstr(medfl_error_message(), "residual[7]"));
    compress_residual_reset(b);
    for (uint32_t i = 0; i < n; i++)
        assert_true(compress_residual(b)[i] == 0.0f);
    /* non-finite updates are refused */
    x[42] = INFINITY;
    assert_int_equal(compress_plain_encode(a, x, ba, cap, &la), -1);
    assert_non_null(strstr(medfl_error_message(), "update[42]"));
    /* too small an output buffer is refused */
    x[42] = 0;
    assert_int_equal(compress_plain_encode(a, x, ba, 10, &la), -1);
    free(ck);
    free(x);
    free(ba);
    free(bb);
    compress_destroy(&a);
    compress_destroy(&b);
}

static void test_config_errors(void **state)
{
    (void)state;
    compress_config_t cfg;
    compress_config_default(&cfg, COMPRESS_PLAIN);
    assert_int_equal(compress_config_check(&cfg), 0);
    cfg.chunk = 0;
    assert_int_equal(compress_config_check(&cfg), -1);
    assert_non_null(strstr(medfl_error_message(), "'chunk'"));
    compress_config_default(&cfg, COMPRESS_PLAIN);
    cfg.value_bits = 1;
    assert_int_equal(compress_config_check(&cfg), -1);
    assert_non_null(strstr(medfl_error_message(), "'value_bits'"));
    cfg.value_bits = 9;
    assert_int_equal(compress_config_check(&cfg), -1);
    assert_non_null(strstr(medfl_error_message(), "'value_bits'"));
    compress_config_default(&cfg, COMPRESS_PLAIN);
    cfg.k_frac = 0;
    assert_int_equal(compress_config_check(&cfg), -1);
    assert_non_null(strstr(medfl_error_message(), "'k_frac'"));
    cfg.k = 10;
    assert_int_equal(compress_config_check(&cfg), 0);
    assert_int_equal(compress_config_k(&cfg, 5), 5);
    compress_config_default(&cfg, COMPRESS_SECAGG);
    assert_int_equal(compress_config_check(&cfg), -1); /* clip must be set */
    assert_non_null(strstr(medfl_error_message(), "'clip'"));
    cfg.clip = 1.0f;
    assert_int_equal(compress_config_check(&cfg), 0);
    cfg.bits = 1;
    assert_int_equal(compress_config_check(&cfg), -1);
    cfg.bits = 17;
    assert_int_equal(compress_config_check(&cfg), -1);
    assert_non_null(strstr(medfl_error_message(), "'bits'"));
    cfg.bits = 16;
    cfg.max_nodes = 65538; /* 65538 * 65535 >= 2^32 (65537 * 65535 = 2^32 - 1 fits) */
    assert_int_equal(compress_config_check(&cfg), -1);
    assert_non_null(strstr(medfl_error_message(), "max_nodes"));
    assert_int_equal(compress_ring_width(16, 65536), 32);
    assert_int_equal(compress_ring_width(16, 65537), 32);
    assert_int_equal(compress_ring_width(16, 65538), 0);
    assert_int_equal(compress_ring_width(8, 16), 12);
    assert_int_equal(compress_ring_width(8, 3), 10);
    assert_int_equal(compress_ring_width(8, 1), 8);
    assert_int_equal(compress_ring_width(4, 17), 8); /* 255 < 256 */
    assert_int_equal(compress_ring_width(4, 18), 9);
    cfg.max_nodes = 4;
    cfg.clip = NAN;
    assert_int_equal(compress_config_check(&cfg), -1);
    compress_config_default(&cfg, COMPRESS_PLAIN);
    assert_null(compress_new(&cfg, 0, NULL));
}

/* ---- malformed plain payloads ---- */

typedef struct {
    uint8_t b[512];
    size_t len;
} s_buf_t;

static void s_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Builds a version 1 plain payload by the documented layout from raw parts. */
static void s_build(s_buf_t *o, uint32_t n, uint32_t k, uint32_t chunk, const uint8_t *ib,
                    size_t il, const float *scales, uint32_t ns, const int8_t *vals, uint32_t nv)
{
    uint8_t *p = o->b;
    memcpy(p, "MFLC", 4);
    p[4] = 1;
    p[5] = 1;
    p[6] = p[7] = 0;
    s_u32(p + 8, n);
    s_u32(p + 12, k);
    s_u32(p + 16, chunk);
    size_t pos = 20;
    p[pos] = 1, p[pos + 1] = 0, p[pos + 2] = p[pos + 3] = 0;
    s_u32(p + pos + 4, (uint32_t)il);
    memcpy(p + pos + 8, ib, il);
    pos += 8 + il;
    p[pos] = 2, p[pos + 1] = 0, p[pos + 2] = p[pos + 3] = 0;
    s_u32(p + pos + 4, 4 * ns);
    memcpy(p + pos + 8, scales, 4 * ns);
    pos += 8 + 4 * ns;
    p[pos] = 3, p[pos + 1] = 0, p[pos + 2] = p[pos + 3] = 0;
    s_u32(p + pos + 4, nv);
    memcpy(p + pos + 8, vals, nv);
    pos += 8 + nv;
    o->len = pos;
}

static void s_expect_reject(const s_buf_t *o, uint32_t n, medfl_err_t code, const char *needle)
{
    float dense[300];
    for (int i = 0; i < 300; i++)
        dense[i] = 42.0f;
    assert_true(n <= 300);
    int rc = compress_plain_decode(o->b, o->len, n, dense);
    if (rc != -1 || medfl_error_code() != code || !strstr(medfl_error_message(), needle))
        fail_msg("expected rejection with '%s' (code %d), got rc %d code %d '%s'", needle,
                 (int)code, rc, (int)medfl_error_code(), medfl_error_message());
    for (int i = 0; i < 300; i++)
        assert_true(dense[i] == 42.0f); /* untouched */
}

static void test_plain_v1_rejects_malformed(void **state)
{
    (void)state;
    const float sc1[1] = {0.5f};
    const int8_t v3[3] = {1, -2, 127};
    s_buf_t o;
    /* valid: indices 3, 10, 200 of n = 300 */
    const uint8_t ok[] = {3, 7, 190, 1};
    s_build(&o, 300, 3, 256, ok, 4, sc1, 1, v3, 3);
    float dense[300];
    assert_int_equal(compress_plain_decode(o.b, o.len, 300, dense), 0);
    assert_true(dense[3] == 0.5f && dense[10] == -1.0f && dense[200] == 63.5f);
    assert_true(dense[0] == 0.0f && dense[299] == 0.0f);

    /* truncated at every length */
    s_buf_t t = o;
    for (size_t l = 0; l < o.len; l++) {
        t.len = l;
        float d[300];
        assert_int_equal(compress_plain_decode(t.b, t.len, 300, d), -1);
        assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    }
    t.len = 5;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "truncated header");
    /* trailing byte */
    t = o;
    t.b[t.len++] = 0;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "trailing");
    /* bad magic */
    t = o;
    t.b[0] = 'X';
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "magic");
    /* bad version */
    t = o;
    t.b[4] = 3;
    s_expect_reject(&t, 300, MEDFL_EUNSUPPORTED, "'version'");
    t.b[4] = 0;
    s_expect_reject(&t, 300, MEDFL_EUNSUPPORTED, "'version'");
    /* unknown scheme */
    t = o;
    t.b[5] = 9;
    s_expect_reject(&t, 300, MEDFL_EUNSUPPORTED, "'scheme'");
    /* n differs from the model's */
    s_expect_reject(&o, 299, MEDFL_EFORMAT, "'n'");
    /* varint overflow: 5 bytes carrying more than 32 bits */
    const uint8_t ovf[] = {0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 7, 1};
    s_build(&t, 300, 3, 256, ovf, sizeof ovf, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "overflows 32 bits");
    /* varint longer than 5 bytes */
    const uint8_t ovf2[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 7, 1};
    s_build(&t, 300, 3, 256, ovf2, sizeof ovf2, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "overflows 32 bits");
    /* overlong varint (3 as 0x83 0x00) */
    const uint8_t over[] = {0x83, 0x00, 7, 190, 1};
    s_build(&t, 300, 3, 256, over, sizeof over, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "overlong");
    /* index out of range: first index 300, and a gap that runs past n */
    const uint8_t oor[] = {0xAC, 0x02, 7, 1}; /* 300 */
    s_build(&t, 300, 3, 256, oor, sizeof oor, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "not < n");
    const uint8_t oor3[] = {3, 7, 0xA2, 0x02}; /* 10 + 290 = 300 */
    s_build(&t, 300, 3, 256, oor3, sizeof oor3, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "index 2 is 300");
    /* non-increasing: a zero gap */
    const uint8_t dup[] = {3, 0, 190, 1};
    s_build(&t, 300, 3, 256, dup, sizeof dup, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "strictly increasing");
    /* count mismatch: fewer indices than k (varint runs out), more bytes than k indices */
    const uint8_t few[] = {3, 7};
    s_build(&t, 300, 3, 256, few, sizeof few, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "truncated");
    const uint8_t many[] = {3, 7, 190, 1, 5};
    s_build(&t, 300, 3, 256, many, sizeof many, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "count mismatch");
    s_build(&t, 300, 3, 256, ok, 4, sc1, 1, v3, 2);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "values section");
    const float sc2[2] = {0.5f, 0.5f};
    s_build(&t, 300, 3, 256, ok, 4, sc2, 2, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "scales section");
    /* k = 0 and k > n */
    s_build(&t, 300, 0, 256, ok, 0, sc1, 0, v3, 0);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "'k'");
    s_build(&t, 2, 3, 256, ok, 4, sc1, 1, v3, 3);
    s_expect_reject(&t, 2, MEDFL_EFORMAT, "'k'");
    /* chunk 0 */
    s_build(&t, 300, 3, 0, ok, 4, sc1, 1, v3, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "'chunk'");
    /* scales NaN, Inf, negative */
    const float bad_scales[3] = {NAN, INFINITY, -0.5f};
    for (int i = 0; i < 3; i++) {
        s_build(&t, 300, 3, 256, ok, 4, &bad_scales[i], 1, v3, 3);
        s_expect_reject(&t, 300, MEDFL_EFORMAT, "scale of chunk 0");
    }
    /* int8 -128 is outside the symmetric range */
    const int8_t vbad[3] = {1, INT8_MIN, 3};
    s_build(&t, 300, 3, 256, ok, 4, sc1, 1, vbad, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "-128");
    /* section id and reserved bytes */
    t = o;
    t.b[20] = 2;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "id 2");
    t = o;
    t.b[6] = 1;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "reserved");
    /* section length past the end */
    t = o;
    s_u32(t.b + 24, 0xFFFFFFF0u);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "runs past the end");
    assert_int_equal(compress_plain_decode(NULL, 0, 300, dense), -1);
}

/* ---- malformed version 2 plain payloads ---- */

static void s_put_bits(uint8_t *p, uint64_t *pos, uint32_t v, uint32_t nbits)
{
    for (uint32_t i = 0; i < nbits; i++, (*pos)++)
        if ((v >> i) & 1u)
            p[*pos >> 3] |= (uint8_t)(1u << (*pos & 7));
}

/* Builds a version 2 plain payload by the documented layout from raw parts: `vals` are the
 * b-bit two's complement fields, `codes` the values to Rice-code with parameter `rice` (the
 * first index, then each gap - 1). */
static void s_build2(s_buf_t *o, uint32_t n, uint32_t k, uint32_t chunk, uint32_t bits,
                     uint32_t rice, const float *scales, uint32_t ns, const int32_t *vals,
                     uint32_t nv, const uint32_t *codes, uint32_t nc)
{
    memset(o->b, 0, sizeof o->b);
    uint8_t *p = o->b;
    memcpy(p, "MFLC", 4);
    p[4] = 2;
    p[5] = 1;
    s_u32(p + 8, n);
    s_u32(p + 12, k);
    p[16] = (uint8_t)bits;
    p[17] = (uint8_t)rice;
    p[18] = (uint8_t)(chunk - 1);
    p[19] = (uint8_t)((chunk - 1) >> 8);
    size_t pos = 20;
    memcpy(p + pos, scales, 4 * ns);
    pos += 4 * ns;
    uint64_t b = 0;
    for (uint32_t j = 0; j < nv; j++)
        s_put_bits(p + pos, &b, (uint32_t)vals[j] & ((1u << bits) - 1), bits);
    pos += (b + 7) / 8;
    b = 0;
    for (uint32_t j = 0; j < nc; j++) {
        for (uint32_t q = codes[j] >> rice; q > 0; q--)
            s_put_bits(p + pos, &b, 1, 1);
        s_put_bits(p + pos, &b, 0, 1);
        s_put_bits(p + pos, &b, codes[j] & ((1u << rice) - 1), rice);
    }
    pos += (b + 7) / 8;
    o->len = pos;
}

static void test_plain_v2_rejects_malformed(void **state)
{
    (void)state;
    const float sc1[1] = {0.5f};
    const int32_t v3[3] = {1, -2, 7};
    const uint32_t ok[3] = {3, 6, 189}; /* indices 3, 10, 200 */
    s_buf_t o, t;
    s_build2(&o, 300, 3, 256, 4, 3, sc1, 1, v3, 3, ok, 3);
    assert_int_equal(o.len, 20 + 4 + 2 + 5); /* 12 value bits, 4 + 4 + 27 Rice bits */
    float dense[300];
    assert_int_equal(compress_plain_decode(o.b, o.len, 300, dense), 0);
    assert_true(dense[3] == 0.5f && dense[10] == -1.0f && dense[200] == 3.5f);
    uint32_t nz = 0;
    for (int i = 0; i < 300; i++)
        nz += dense[i] != 0.0f;
    assert_int_equal(nz, 3);
    compress_header_t h;
    assert_int_equal(compress_peek(o.b, o.len, &h), 0);
    assert_int_equal(h.version, 2);
    assert_int_equal(h.value_bits, 4);
    assert_int_equal(h.rice, 3);
    assert_int_equal(h.chunk, 256);

    /* truncated at every length */
    for (size_t l = 0; l < o.len; l++) {
        t = o;
        t.len = l;
        float d[300];
        assert_int_equal(compress_plain_decode(t.b, t.len, 300, d), -1);
        assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    }
    t = o;
    t.len = 25;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "need 26 bytes");
    t.len = 28;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "count mismatch: fewer than k");
    /* a trailing byte */
    t = o;
    t.b[t.len++] = 0;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "trailing");
    /* padding bits: after the 12 value bits, after the 35 Rice bits */
    t = o;
    t.b[25] |= 0x10;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "values: padding bits");
    t = o;
    t.b[30] |= 0x80;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "indices: padding bits");
    /* the asymmetric value -8 of 4 bits */
    const int32_t vmin[3] = {1, -8, 7};
    s_build2(&t, 300, 3, 256, 4, 3, sc1, 1, vmin, 3, ok, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "value 1 is -8");
    /* header fields */
    s_build2(&t, 300, 3, 256, 1, 3, sc1, 1, v3, 3, ok, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "'value_bits'");
    s_build2(&t, 300, 3, 256, 9, 3, sc1, 1, v3, 3, ok, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "'value_bits'");
    t = o;
    t.b[17] = 31;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "'rice'");
    t = o;
    t.b[5] = 2; /* version 2 exists for the plain scheme only */
    s_expect_reject(&t, 300, MEDFL_EUNSUPPORTED, "secagg");
    t = o;
    t.b[4] = 3;
    s_expect_reject(&t, 300, MEDFL_EUNSUPPORTED, "'version'");
    t = o;
    t.b[7] = 1;
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "reserved");
    s_expect_reject(&o, 299, MEDFL_EFORMAT, "'n'");
    s_build2(&t, 2, 3, 256, 4, 3, sc1, 1, v3, 3, ok, 3);
    s_expect_reject(&t, 2, MEDFL_EFORMAT, "'k'");
    /* indices out of range: in the low bits, at the end of a gap, and in a long unary run
     * (rejected as soon as the quotient alone reaches n) */
    const uint32_t first300[3] = {300, 6, 189};
    s_build2(&t, 300, 3, 256, 4, 3, sc1, 1, v3, 3, first300, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "index 0 is 300");
    const uint32_t past[3] = {3, 6, 290};
    s_build2(&t, 300, 3, 256, 4, 3, sc1, 1, v3, 3, past, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "index 2 is 301");
    const uint32_t huge[3] = {3, 6, 1000};
    s_build2(&t, 300, 3, 256, 4, 3, sc1, 1, v3, 3, huge, 3);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "index 2 is >= 304");
    /* count mismatch: fewer codes than k, more codes than k */
    s_build2(&t, 300, 3, 256, 4, 3, sc1, 1, v3, 3, ok, 2);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "fewer than k");
    const uint32_t four[4] = {3, 6, 189, 40};
    s_build2(&t, 300, 3, 256, 4, 3, sc1, 1, v3, 3, four, 4);
    s_expect_reject(&t, 300, MEDFL_EFORMAT, "count mismatch");
    /* scales: wrong count shifts every later region; NaN, Inf, negative */
    const float bad_scales[3] = {NAN, INFINITY, -0.5f};
    for (int i = 0; i < 3; i++) {
        s_build2(&t, 300, 3, 256, 4, 3, &bad_scales[i], 1, v3, 3, ok, 3);
        s_expect_reject(&t, 300, MEDFL_EFORMAT, "scale of chunk 0");
    }
    /* chunk 1: three scales expected, one given -> the regions do not add up */
    s_build2(&t, 300, 3, 1, 4, 3, sc1, 1, v3, 3, ok, 3);
    assert_int_equal(compress_plain_decode(t.b, t.len, 300, dense), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    /* chunk 65536 is the largest a u16 field of chunk - 1 holds, and valid */
    s_build2(&t, 300, 3, 65536, 4, 3, sc1, 1, v3, 3, ok, 3);
    assert_int_equal(compress_plain_decode(t.b, t.len, 300, dense), 0);
    /* a valid payload at every Rice parameter decodes to the same vector */
    for (uint32_t r = 0; r <= 8; r++) {
        s_build2(&t, 300, 3, 256, 4, r, sc1, 1, v3, 3, ok, 3);
        float d2[300];
        assert_int_equal(compress_plain_decode(t.b, t.len, 300, d2), 0);
        assert_memory_equal(d2, dense, sizeof d2);
    }
}

/* Random corruption of real payloads never crashes (ASan/UBSan in CI) and a payload that
 * still decodes has indices in range. */
static void test_plain_random_corruption(void **state)
{
    (void)state;
    const uint32_t n = 2000;
    compress_t *c = s_plain(n, 0.05, 16, true);
    float *x = malloc(n * sizeof *x), *d = malloc(n * sizeof *d);
    s_fill(x, n, 1.0f);
    size_t cap = compress_plain_max_bytes(c), len;
    uint8_t *buf = malloc(cap), *m = malloc(cap + 8);
    assert_int_equal(compress_plain_encode(c, x, buf, cap, &len), 0);
    int rejected = 0;
    for (int t = 0; t < 3000; t++) {
        memcpy(m, buf, len);
        size_t l = len;
        int flips = 1 + (int)(s_rand() % 4);
        for (int f = 0; f < flips; f++)
            m[s_rand() % l] ^= (uint8_t)(1u << (s_rand() % 8));
        if (s_rand() % 8 == 0)
            l = s_rand() % len;
        if (compress_plain_decode(m, l, n, d) != 0)
            rejected++;
    }
    assert_true(rejected > 100);
    free(buf);
    free(m);
    free(x);
    free(d);
    compress_destroy(&c);
}

/* ---- secure aggregation ---- */

static compress_config_t s_sa_cfg(uint32_t bits, double frac, bool ef, float clip,
                                  uint32_t max_nodes)
{
    compress_config_t cfg;
    compress_config_default(&cfg, COMPRESS_SECAGG);
    cfg.bits = bits;
    cfg.k_frac = frac;
    cfg.error_feedback = ef;
    cfg.clip = clip;
    cfg.max_nodes = max_nodes;
    return cfg;
}

static void test_secagg_sum_through_masked_narrow_ring(void **state)
{
    (void)state;
    const uint32_t n = 3000, nodes = 5;
    const float R = 1.0f;
    for (int variant = 0; variant < 2; variant++) {
        compress_config_t cfg = s_sa_cfg(variant ? 4 : 8, variant ? 0.3 : 1.0, true, R, 8);
        uint8_t seed[32] = {77};
        compress_round_t *r = compress_round_new(&cfg, n, seed);
        assert_non_null(r);
        uint32_t k = compress_round_k(r);
        unsigned w = compress_round_width(r);
        assert_int_equal(w, variant ? 7 : 11); /* 8*15 < 128; 8*255 < 2048 */
        assert_int_equal(compress_round_payload_bytes(r), 40 + ((size_t)k * w + 7) / 8);
        const uint32_t *idx = compress_round_indices(r);
        float *x = malloc(n * nodes * sizeof *x), *dense = malloc(n * sizeof *dense);
        uint32_t *lev = malloc(k * sizeof *lev), *masked = malloc(k * nodes * sizeof *masked),
                 *unp = malloc(k * sizeof *unp), *sum = calloc(k, sizeof *sum);
        double *want = calloc(n, sizeof *want);
        float weights[5] = {1.0f, 0.5f, 0.25f, 2.0f, 0.75f};
        /* pairwise masks over the full 32-bit ring, cancelling in the sum */
        for (uint32_t u = 0; u < nodes; u++)
            for (uint32_t j = 0; j < k; j++)
                masked[u * k + j] = 0;
        for (uint32_t u = 0; u < nodes; u++)
            for (uint32_t v = u + 1; v < nodes; v++)
                for (uint32_t j = 0; j < k; j++) {
                    uint32_t m = (uint32_t)s_rand();
                    masked[u * k + j] += m;
                    masked[v * k + j] -= m;
                }
        size_t cap = compress_round_payload_bytes(r), len;
        uint8_t *buf = malloc(cap);
        for (uint32_t u = 0; u < nodes; u++) {
            uint8_t ns[32] = {(uint8_t)u, 1};
            compress_t *c = compress_new(&cfg, n, ns);
            assert_non_null(c);
            s_fill(x + u * n, n, 0.2f);
            assert_int_equal(compress_secagg_encode(c, r, x + u * n, weights[u], lev), 0);
            for (uint32_t j = 0; j < k; j++) {
                assert_true(lev[j] <= (1u << cfg.bits) - 1);
                masked[u * k + j] += lev[j];
                double y = (double)weights[u] * x[u * n + idx[j]];
                want[idx[j]] += y > R ? R : (y < -R ? -R : y);
            }
            /* only width bits travel */
            assert_int_equal(compress_secagg_pack(r, masked + u * k, buf, cap, &len), 0);
            assert_int_equal(len, cap);
            assert_int_equal(compress_secagg_unpack(r, buf, len, unp), 0);
            for (uint32_t j = 0; j < k; j++) {
                assert_int_equal(unp[j], masked[u * k + j] & ((1u << w) - 1));
                sum[j] += unp[j];
            }
            compress_destroy(&c);
        }
        assert_int_equal(compress_secagg_decode_sum(r, sum, nodes, dense), 0);
        double delta = 2.0 * R / ((1 << cfg.bits) - 1);
        char *sent = calloc(n, 1);
        for (uint32_t j = 0; j < k; j++)
            sent[idx[j]] = 1;
        for (uint32_t i = 0; i < n; i++) {
            if (!sent[i]) {
                assert_true(dense[i] == 0.0f);
                continue;
            }
            /* each node's level is within one step of its clipped value */
            assert_true(fabs(dense[i] - want[i]) <= nodes * delta * (1 + 1e-6));
        }
        free(sent);
        free(buf);
        free(x);
        free(dense);
        free(lev);
        free(masked);
        free(unp);
        free(sum);
        free(want);
        compress_round_destroy(&r);
    }
}

/* E[decoded] = x for stochastic rounding. 64 coordinates at off-grid points, T = 4000 seeded
 * trials: the per-trial deviation is at most delta/2 in standard deviation, so the mean is
 * within 6 * delta / (2 sqrt(T)) = 0.047 delta with overwhelming probability; the
 * deterministic seed makes the outcome fixed. Round-to-nearest would be off by 0.3 delta
 * at these points, so a biased quantizer fails this test. */
static void test_secagg_stochastic_unbiased(void **state)
{
    (void)state;
    const uint32_t n = 64, T = 4000;
    const float R = 1.0f;
    compress_config_t cfg = s_sa_cfg(4, 1.0, false, R, 1);
    uint8_t seed[32] = {5};
    compress_round_t *r = compress_round_new(&cfg, n, seed);
    compress_t *c = compress_new(&cfg, n, s_seed_b);
    assert_non_null(r);
    assert_non_null(c);
    const double delta = 2.0 / 15.0;
    float x[64], dense[64];
    uint32_t lev[64];
    double mean[64] = {0};
    for (uint32_t i = 0; i < n; i++) /* grid point + 0.2 or 0.8 step (nearest: 0.2 off) */
        x[i] = (float)(-1.0 + ((double)(i % 15) + (i % 2 ? 0.2 : 0.8)) * delta);
    for (uint32_t t = 0; t < T; t++) {
        assert_int_equal(compress_secagg_encode(c, r, x, 1.0f, lev), 0);
        assert_int_equal(compress_secagg_decode_sum(r, lev, 1, dense), 0);
        for (uint32_t i = 0; i < n; i++)
            mean[i] += dense[i] / (double)T;
    }
    double bound = 6.0 * delta / (2.0 * sqrt((double)T));
    for (uint32_t i = 0; i < n; i++) {
        assert_true(fabs(mean[i] - x[i]) < bound);
        /* the nearest-rounding bias here is 0.2 delta, far outside the bound */
        assert_true(0.2 * delta > 4 * bound);
    }
    compress_destroy(&c);
    compress_round_destroy(&r);
}

/* Random-k without error feedback is scaled by n/k: unbiased over round seeds. */
static void test_secagg_random_k_scaled_unbiased(void **state)
{
    (void)state;
    const uint32_t n = 40, T = 3000;
    compress_config_t cfg = s_sa_cfg(12, 0.5, false, 1.0f, 1);
    compress_t *c = compress_new(&cfg, n, s_seed_a);
    float x[40], dense[40];
    uint32_t lev[40];
    double mean[40] = {0};
    for (uint32_t i = 0; i < n; i++)
        x[i] = 0.4f * (float)sin(i + 1.0);
    for (uint32_t t = 0; t < T; t++) {
        uint8_t seed[32] = {0};
        memcpy(seed, &t, sizeof t);
        compress_round_t *r = compress_round_new(&cfg, n, seed);
        assert_non_null(r);
        assert_int_equal(compress_round_k(r), 20);
        assert_int_equal(compress_secagg_encode(c, r, x, 1.0f, lev), 0);
        assert_int_equal(compress_secagg_decode_sum(r, lev, 1, dense), 0);
        for (uint32_t i = 0; i < n; i++)
            mean[i] += dense[i] / (double)T;
        compress_round_destroy(&r);
    }
    /* per-trial sd <= |2x| + quantization; 6 standard errors */
    for (uint32_t i = 0; i < n; i++)
        assert_true(fabs(mean[i] - x[i]) < 6.0 * (2.0 * fabs(x[i]) + 0.01) / sqrt((double)T));
    compress_destroy(&c);
}

static void test_secagg_residual(void **state)
{
    (void)state;
    const uint32_t n = 5000;
    const float R = 0.5f;
    compress_config_t cfg = s_sa_cfg(6, 0.25, true, R, 4);
    compress_t *c = compress_new(&cfg, n, s_seed_a);
    float *x = malloc(n * sizeof *x), *acc = malloc(n * sizeof *acc),
          *dec = malloc(n * sizeof *dec), *prev = calloc(n, sizeof *prev);
    uint32_t *lev = malloc(n * sizeof *lev);
    for (uint32_t round = 0; round < 6; round++) {
        uint8_t seed[32] = {(uint8_t)round};
        compress_round_t *r = compress_round_new(&cfg, n, seed);
        assert_non_null(r);
        assert_true(compress_round_k(r) == 1250);
        s_fill(x, n, 0.3f); /* some coordinates exceed R: clipping goes to the residual */
        for (uint32_t i = 0; i < n; i++)
            acc[i] = prev[i] + x[i];
        assert_int_equal(compress_secagg_encode(c, r, x, 1.0f, lev), 0);
        assert_int_equal(compress_secagg_decode_sum(r, lev, 1, dec), 0);
        const float *res = compress_residual(c);
        for (uint32_t i = 0; i < n; i++) {
            if (dec[i] == 0.0f && res[i] == acc[i])
                continue;
            /* one float rounding of acc - decoded */
            float tol = 0x1.0p-23f * fmaxf(fabsf(acc[i]), fabsf(dec[i]));
            assert_true(fabsf(res[i] + dec[i] - acc[i]) <= tol);
        }
        const uint32_t *idx = compress_round_indices(r);
        for (uint32_t j = 1; j < 1250; j++)
            assert_true(idx[j] > idx[j - 1]);
        memcpy(prev, res, n * sizeof *prev);
        compress_round_destroy(&r);
    }
    free(x);
    free(acc);
    free(dec);
    free(prev);
    free(lev);
    compress_destroy(&c);
}

static void test_secagg_rejects_malformed(void **state)
{
    (void)state;
    const uint32_t n = 101;
    compress_config_t cfg = s_sa_cfg(5, 0.5, true, 2.0f, 3);
    uint8_t seed[32] = {3}, other[32] = {4};
    compress_round_t *r = compress_round_new(&cfg, n, seed);
    compress_round_t *r2 = compress_round_new(&cfg, n, other);
    assert_non_null(r);
    assert_non_null(r2);
    /* same seed -> same coordinates; another seed -> others */
    compress_round_t *r1b = compress_round_new(&cfg, n, seed);
    assert_memory_equal(compress_round_indices(r), compress_round_indices(r1b),
                        compress_round_k(r) * sizeof(uint32_t));
    assert_memory_not_equal(compress_round_indices(r), compress_round_indices(r2),
                            compress_round_k(r) * sizeof(uint32_t));
    compress_round_destroy(&r1b);
    uint32_t k = compress_round_k(r);
    unsigned w = compress_round_width(r); /* 3 * 31 = 93 < 128 -> 7 */
    assert_int_equal(w, 7);
    uint32_t ring[101], out[101];
    for (uint32_t j = 0; j < k; j++)
        ring[j] = (uint32_t)s_rand();
    size_t cap = compress_round_payload_bytes(r), len;
    uint8_t buf[256], t[256];
    assert_int_equal(compress_secagg_pack(r, ring, buf, cap, &len), 0);
    assert_int_equal(compress_secagg_unpack(r, buf, len, out), 0);
    compress_header_t h;
    assert_int_equal(compress_peek(buf, len, &h), 0);
    assert_int_equal(h.scheme, COMPRESS_SECAGG);
    assert_int_equal(h.flags, COMPRESS_FLAG_RANDOM_K);
    assert_int_equal(h.width, 7);
    /* payload for another round */
    assert_int_equal(compress_secagg_unpack(r2, buf, len, out), -1);
    assert_non_null(strstr(medfl_error_message(), "round_tag"));
    /* truncated at every length */
    for (size_t l = 0; l < len; l++) {
        assert_int_equal(compress_secagg_unpack(r, buf, l, out), -1);
        assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    }
    /* trailing byte */
    memcpy(t, buf, len);
    t[len] = 0;
    assert_int_equal(compress_secagg_unpack(r, t, len + 1, out), -1);
    /* header fields that differ from the round */
    for (int f = 16; f <= 23; f++) {
        memcpy(t, buf, len);
        t[f] ^= 0x01;
        assert_int_equal(compress_secagg_unpack(r, t, len, out), -1);
    }
    /* padding bits: k * 7 = 350 bits -> 44 bytes with 2 padding bits */
    memcpy(t, buf, len);
    t[len - 1] |= 0x80;
    assert_int_equal(compress_secagg_unpack(r, t, len, out), -1);
    assert_non_null(strstr(medfl_error_message(), "padding"));
    /* the adding decoder (the aggregator's, into its running sum): adds the same values mod
     * 2^32, and a refused payload (here the bad padding, checked after everything else)
     * leaves the sum untouched */
    uint32_t acc[101], before[101];
    for (uint32_t j = 0; j < k; j++) acc[j] = 0xFFFFFFF0u + j;
    memcpy(before, acc, sizeof acc);
    assert_int_equal(compress_secagg_unpack_add(r, t, len, acc), -1);
    assert_memory_equal(acc, before, k * sizeof *acc);
    assert_int_equal(compress_secagg_unpack_add(r2, buf, len, acc), -1);
    assert_memory_equal(acc, before, k * sizeof *acc);
    assert_int_equal(compress_secagg_unpack_add(r, buf, len, acc), 0);
    for (uint32_t j = 0; j < k; j++) assert_int_equal(acc[j], (uint32_t)(before[j] + out[j]));
    /* plain payload to the secagg decoder and vice versa */
    float dense[101];
    assert_int_equal(compress_plain_decode(buf, len, n, dense), -1);
    assert_non_null(strstr(medfl_error_message(), "not plain"));
    /* a level sum that honest nodes cannot produce: 3 * 31 + 1 */
    uint32_t sum[101] = {0};
    sum[4] = 94;
    assert_int_equal(compress_secagg_decode_sum(r, sum, 3, dense), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EPROTO);
    sum[4] = 93 + (1u << 7); /* the same value mod 2^w is fine: only the low bits count */
    assert_int_equal(compress_secagg_decode_sum(r, sum, 3, dense), 0);
    assert_true(fabsf(dense[compress_round_indices(r)[4]] - 3 * 2.0f) < 1e-6f);
    assert_int_equal(compress_secagg_decode_sum(r, sum, 4, dense), -1); /* > max_nodes */
    /* encoder argument checks */
    compress_t *c = compress_new(&cfg, n, NULL);
    float x[101] = {0};
    uint32_t lev[101];
    assert_int_equal(compress_secagg_encode(c, r, x, 0.0f, lev), -1);
    assert_int_equal(compress_secagg_encode(c, r, x, NAN, lev), -1);
    x[3] = NAN;
    assert_int_equal(compress_secagg_encode(c, r, x, 1.0f, lev), -1);
    uint8_t pb[1024];
    assert_int_equal(compress_plain_encode(c, x, pb, sizeof pb, &len), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    compress_destroy(&c);
    compress_config_t other_cfg = s_sa_cfg(6, 0.5, true, 2.0f, 3);
    c = compress_new(&other_cfg, n, NULL);
    x[3] = 0;
    assert_int_equal(compress_secagg_encode(c, r, x, 1.0f, lev), -1); /* bits differ */
    compress_destroy(&c);
    compress_round_destroy(&r);
    compress_round_destroy(&r2);
}


/* The fuzz seed corpus is written by tests/ref/make_compress_corpus.py from the documented
 * layouts (see docs/compression.md): every payload must decode here, which pins the formats. */
static size_t s_read(const char *path, uint8_t *buf, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

static void test_corpus_payloads_decode(void **state)
{
    (void)state;
    uint8_t buf[512];
    size_t len = s_read("tests/fuzz/corpus/compress/plain-3of300", buf, sizeof buf);
    assert_true(len > 0);
    float dense[300];
    assert_int_equal(compress_plain_decode(buf, len, 300, dense), 0);
    assert_true(dense[3] == 0.5f && dense[10] == -1.0f && dense[200] == 63.5f);
    len = s_read("tests/fuzz/corpus/compress/plain-v2-3of300", buf, sizeof buf);
    assert_int_equal(len, 31);
    assert_int_equal(compress_plain_decode(buf, len, 300, dense), 0);
    assert_true(dense[3] == 0.5f && dense[10] == -1.0f && dense[200] == 3.5f);
    uint32_t nz = 0;
    for (int i = 0; i < 300; i++)
        nz += dense[i] != 0.0f;
    assert_int_equal(nz, 3);
    len = s_read("tests/fuzz/corpus/compress/secagg-17of33", buf, sizeof buf);
    assert_true(len > 0);
    compress_config_t cfg = s_sa_cfg(5, 0.5, true, 1.0f, 3);
    const uint8_t seed[32] = {0};
    compress_round_t *r = compress_round_new(&cfg, 33, seed);
    assert_non_null(r);
    assert_int_equal(compress_round_k(r), 17);
    uint32_t ring[33];
    assert_int_equal(compress_secagg_unpack(r, buf, len, ring), 0);
    /* bytes 1..14 then 0x01 as a 7-bit LSB-first stream: first element is 1 */
    assert_int_equal(ring[0], 1);
    compress_round_destroy(&r);
}

/* The round start carries the top-k value width (Compression.value_bits): node and
 * aggregator derive the same settings from it, 0 meaning the library default, and a width
 * outside 2..8 refuses the round with the field named. */
static void test_round_start_value_bits(void **state)
{
    (void)state;
    Medfl__Compression c = MEDFL__COMPRESSION__INIT;
    c.scheme = MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK;
    c.k = 100;
    c.bits = 12; /* the secure modes' setting: not the top-k value width */
    fed_encoding_t enc;
    compress_config_t cc, def;
    compress_config_default(&def, COMPRESS_PLAIN);
    assert_int_equal(fed_compression(&c, false, 3080, &enc, &cc), 0);
    assert_int_equal(enc, FED_TOPK);
    assert_int_equal(cc.value_bits, def.value_bits);
    assert_int_equal(compress_config_k(&cc, 3080), 100);
    c.value_bits = 3;
    assert_int_equal(fed_compression(&c, false, 3080, &enc, &cc), 0);
    assert_int_equal(cc.value_bits, 3);
    c.value_bits = 9;
    assert_int_equal(fed_compression(&c, false, 3080, &enc, &cc), -1);
    assert_non_null(strstr(medfl_error_message(), "'value_bits'"));
    c.value_bits = 1;
    assert_int_equal(fed_compression(&c, false, 3080, &enc, &cc), -1);
    assert_non_null(strstr(medfl_error_message(), "'value_bits'"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_roundtrip_matches_reference),
        cmocka_unit_test(test_plain_topk_with_ties),
        cmocka_unit_test(test_plain_residual_exact),
        cmocka_unit_test(test_plain_size_bound_extremes),
        cmocka_unit_test(test_plain_residual_checkpoint),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_plain_v1_rejects_malformed),
        cmocka_unit_test(test_plain_v2_rejects_malformed),
        cmocka_unit_test(test_plain_random_corruption),
        cmocka_unit_test(test_secagg_sum_through_masked_narrow_ring),
        cmocka_unit_test(test_secagg_stochastic_unbiased),
        cmocka_unit_test(test_secagg_random_k_scaled_unbiased),
        cmocka_unit_test(test_secagg_residual),
        cmocka_unit_test(test_secagg_rejects_malformed),
        cmocka_unit_test(test_corpus_payloads_decode),
        cmocka_unit_test(test_round_start_value_bits),
    };
    return cmocka_run_group_tests_name("compress", tests, NULL, NULL);
}
