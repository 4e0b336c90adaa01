/* Update compression with error feedback (see compress.h for the two schemes and
 * docs/compression.md for the formats and bounds).
 *
 * Why these choices:
 *  - Top-k by magnitude with a 3-way quickselect: O(n) expected and robust to the many
 *    exact ties (zeros) of a LoRA update whose B matrices start at zero.
 *  - b-bit values (b = 2..8) with a float scale per chunk of selected values: the selected
 *    magnitudes span a narrow range within a chunk (they are all "large"), and the
 *    quantization error goes into the residual, so error feedback repairs it later; fewer
 *    bits per value buy more coordinates per byte.
 *  - Index gaps Golomb-Rice coded (version 2): the gaps of a top-k selection are roughly
 *    geometric, for which a Rice code with the best parameter is within a few percent of the
 *    entropy; at 3 % density that is about 6.5 bits per gap, against 8 for a one-byte LEB128
 *    varint (version 1, still decoded). The encoder picks the parameter by computing the
 *    exact size for each candidate (cheap: k additions per candidate).
 *  - Version 2 has no section headers: every region's length follows from n, k, chunk and
 *    b, so the decoder checks the lengths instead of trusting them, and 24 fixed bytes are
 *    saved per message (they matter on a 3k-parameter head at 50x).
 *  - Stochastic rounding driven by ChaCha20 (libsodium) rather than rand(): reproducible
 *    from a seed in tests, independent across nodes in production, and unbiased to 2^-53.
 *  - All parsing is two-pass (validate everything, then write) so a malformed payload never
 *    leaves a half-written vector behind. */
#include "common/compress.h"
#include "common/dp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/error.h"

#define S_MAGIC "MFLC"
#define S_PLAIN_FIXED 20  /* header + chunk (v1); header + bits, rice, chunk - 1 (v2) */
#define S_SECAGG_FIXED 32 /* header + bits, width, flags, reserved, clip, round tag */
#define S_SECTION_BYTES 8 /* id u16, reserved u16, length u32 */
#define S_SEC_INDICES 1
#define S_SEC_SCALES 2
#define S_SEC_VALUES 3
#define S_SEC_RING 4
#define S_MAX_N (1u << 30)
#define S_TAG_BYTES 8
#define S_MAX_RICE 30     /* indices are < 2^30 */

/* ---- little-endian helpers ---- */

static void s_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void s_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t s_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t s_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint32_t s_float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float s_bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- ChaCha20 keystream as a PRG (original ChaCha20: 64-bit block counter, 8-byte
 * nonce, so one key yields 2^70 bytes; we never come near). ---- */

typedef struct {
    uint8_t key[crypto_stream_chacha20_KEYBYTES];
    uint8_t nonce[crypto_stream_chacha20_NONCEBYTES];
    uint64_t block; /* next 64-byte block of the keystream */
    uint8_t buf[1024];
    size_t pos;     /* bytes of buf already used */
} s_prg_t;

static void s_prg_init(s_prg_t *p, const uint8_t key[32], const char nonce[8])
{
    memcpy(p->key, key, sizeof p->key);
    memcpy(p->nonce, nonce, sizeof p->nonce);
    p->block = 0;
    p->pos = sizeof p->buf;
}

static void s_prg_wipe(s_prg_t *p)
{
    sodium_memzero(p, sizeof *p);
}

static void s_prg_refill(s_prg_t *p)
{
    memset(p->buf, 0, sizeof p->buf);
    crypto_stream_chacha20_xor_ic(p->buf, p->buf, sizeof p->buf, p->nonce, p->block, p->key);
    p->block += sizeof p->buf / 64;
    p->pos = 0;
}

static uint64_t s_prg_u64(s_prg_t *p)
{
    if (p->pos + 8 > sizeof p->buf)
        s_prg_refill(p);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p->buf[p->pos + i] << (8 * i);
    p->pos += 8;
    return v;
}

/* Uniform in [0, bound) without modulo bias (rejection of the short top interval). */
static uint32_t s_prg_uniform(s_prg_t *p, uint32_t bound)
{
    uint64_t limit = (UINT64_MAX / bound) * bound;
    uint64_t r;
    do
        r = s_prg_u64(p);
    while (r >= limit);
    return (uint32_t)(r % bound);
}

/* Uniform double in [0, 1) with 53 random bits. */
static double s_prg_unit(s_prg_t *p)
{
    return (double)(s_prg_u64(p) >> 11) * 0x1.0p-53;
}

/* ---- configuration ---- */

void compress_config_default(compress_config_t *cfg, compress_scheme_t scheme)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->scheme = scheme;
    cfg->error_feedback = true;
    cfg->chunk = COMPRESS_DEFAULT_CHUNK;
    cfg->value_bits = 4;
    cfg->bits = 8;
    cfg->max_nodes = 16;
    cfg->clip = 0.0f;
    /* plain: 4.4 % at 4 bits is what fits 50x of the whole traffic of the 3,080-parameter
     * head in the federated experiment (docs/benchmarks.md, "Compression") */
    cfg->k_frac = scheme == COMPRESS_SECAGG ? 0.25 : 0.044;
}

unsigned compress_ring_width(uint32_t bits, uint32_t max_nodes)
{
    return compress_ring_width_noise(bits, max_nodes, 0);
}

unsigned compress_ring_width_noise(uint32_t bits, uint32_t max_nodes, uint32_t noise_levels)
{
    if (bits < 1 || bits > 32 || max_nodes < 1)
        return 0;
    uint64_t top = (uint64_t)max_nodes *
                   ((((uint64_t)1 << bits) - 1) + 2 * (uint64_t)noise_levels);
    unsigned w = 1;
    while (w < 64 && top >= ((uint64_t)1 << w))
        w++;
    return w <= 32 ? w : 0;
}

int compress_config_check(const compress_config_t *cfg)
{
    if (!cfg)
        return medfl_error_set(MEDFL_EINVAL, "compress: no configuration");
    if (cfg->scheme != COMPRESS_PLAIN && cfg->scheme != COMPRESS_SECAGG)
        return medfl_error_set(MEDFL_ECONFIG, "compress: field 'scheme': unknown scheme %d",
                               (int)cfg->scheme);
    if (cfg->k == 0 && !(cfg->k_frac > 0.0 && cfg->k_frac <= 1.0))
        return medfl_error_set(MEDFL_ECONFIG,
                               "compress: field 'k_frac': %g not in (0, 1] (and k = 0)",
                               cfg->k_frac);
    if (cfg->scheme == COMPRESS_PLAIN) {
        if (cfg->chunk < 1 || cfg->chunk > COMPRESS_MAX_CHUNK)
            return medfl_error_set(MEDFL_ECONFIG, "compress: field 'chunk': %u not in 1..%u",
                                   cfg->chunk, COMPRESS_MAX_CHUNK);
        if (cfg->value_bits < 2 || cfg->value_bits > 8)
            return medfl_error_set(MEDFL_ECONFIG,
                                   "compress: field 'value_bits': %u not in 2..8",
                                   cfg->value_bits);
        return 0;
    }
    if (cfg->bits < 2 || cfg->bits > 16)
        return medfl_error_set(MEDFL_ECONFIG, "compress: field 'bits': %u not in 2..16",
                               cfg->bits);
    if (cfg->max_nodes < 1)
        return medfl_error_set(MEDFL_ECONFIG, "compress: field 'max_nodes': must be >= 1");
    if (compress_ring_width_noise(cfg->bits, cfg->max_nodes, cfg->noise_levels) == 0)
        return medfl_error_set(MEDFL_ECONFIG,
                               "compress: fields 'bits'/'max_nodes'/'noise_levels': %u * (2^%u "
                               "- 1 + 2 * %u) does not fit in the 32-bit ring",
                               cfg->max_nodes, cfg->bits, cfg->noise_levels);
    if (!(isfinite(cfg->clip) && cfg->clip > 0.0f))
        return medfl_error_set(MEDFL_ECONFIG,
                               "compress: field 'clip': %g must be finite and > 0 (the range "
                               "[-R, R] of weighted coordinates)",
                               (double)cfg->clip);
    return 0;
}

uint32_t compress_config_k(const compress_config_t *cfg, uint32_t n)
{
    uint64_t k = cfg->k ? cfg->k : (uint64_t)llround(cfg->k_frac * (double)n);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return (uint32_t)k;
}

/* ---- header ---- */

static int s_check_header(const uint8_t *buf, size_t len, compress_header_t *h)
{
    if (!buf)
        return medfl_error_set(MEDFL_EINVAL, "compressed payload: NULL buffer");
    if (len < COMPRESS_HEADER_BYTES)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: truncated header: %zu bytes, need %d", len,
                               COMPRESS_HEADER_BYTES);
    if (memcmp(buf, S_MAGIC, 4) != 0)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: bad magic %02x%02x%02x%02x (want 'MFLC')",
                               buf[0], buf[1], buf[2], buf[3]);
    memset(h, 0, sizeof *h);
    h->version = buf[4];
    h->scheme = buf[5];
    if (h->version < 1 || h->version > COMPRESS_PLAIN_VERSION)
        return medfl_error_set(MEDFL_EUNSUPPORTED,
                               "compressed payload: field 'version': %u not supported (want "
                               "1..%d)",
                               h->version, COMPRESS_PLAIN_VERSION);
    if (h->scheme == COMPRESS_SECAGG && h->version != COMPRESS_SECAGG_VERSION)
        return medfl_error_set(MEDFL_EUNSUPPORTED,
                               "compressed payload: field 'version': %u not supported for the "
                               "secagg scheme (want %d)",
                               h->version, COMPRESS_SECAGG_VERSION);
    if (s_get_u16(buf + 6) != 0)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: reserved header bytes 6..7 are not zero");
    h->n = s_get_u32(buf + 8);
    h->k = s_get_u32(buf + 12);
    if (h->n < 1 || h->n > S_MAX_N)
        return medfl_error_set(MEDFL_EFORMAT, "compressed payload: field 'n': %u not in 1..%u",
                               h->n, S_MAX_N);
    if (h->k < 1 || h->k > h->n)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: field 'k': %u not in 1..n (n = %u)", h->k,
                               h->n);
    if (h->scheme == COMPRESS_PLAIN) {
        if (len < S_PLAIN_FIXED)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: truncated plain header: %zu bytes, "
                                   "need %d",
                                   len, S_PLAIN_FIXED);
        if (h->version == 1) {
            h->chunk = s_get_u32(buf + 16);
            h->value_bits = 8;
        } else {
            h->value_bits = buf[16];
            h->rice = buf[17];
            h->chunk = (uint32_t)s_get_u16(buf + 18) + 1;
            if (h->value_bits < 2 || h->value_bits > 8)
                return medfl_error_set(MEDFL_EFORMAT,
                                       "compressed payload: field 'value_bits': %u not in 2..8",
                                       h->value_bits);
            if (h->rice > S_MAX_RICE)
                return medfl_error_set(MEDFL_EFORMAT,
                                       "compressed payload: field 'rice': %u not in 0..%d",
                                       h->rice, S_MAX_RICE);
        }
        if (h->chunk < 1 || h->chunk > COMPRESS_MAX_CHUNK)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: field 'chunk': %u not in 1..%u",
                                   h->chunk, COMPRESS_MAX_CHUNK);
        return 0;
    }
    if (h->scheme == COMPRESS_SECAGG) {
        if (len < S_SECAGG_FIXED)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: truncated secagg header: %zu bytes, "
                                   "need %d",
                                   len, S_SECAGG_FIXED);
        h->bits = buf[16];
        h->width = buf[17];
        h->flags = buf[18];
        if (buf[19] != 0)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: reserved secagg header byte 19 is not "
                                   "zero");
        h->clip = s_bits_float(s_get_u32(buf + 20));
        if (h->bits < 2 || h->bits > 16)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: field 'bits': %u not in 2..16", h->bits);
        if (h->width < h->bits || h->width > 32)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: field 'width': %u not in bits..32",
                                   h->width);
        if (h->flags & ~(COMPRESS_FLAG_RANDOM_K | COMPRESS_FLAG_SCALED))
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: field 'flags': unknown bits 0x%02x",
                                   h->flags);
        if (!(isfinite(h->clip) && h->clip > 0.0f))
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: field 'clip': %g not finite and > 0",
                                   (double)h->clip);
        return 0;
    }
    return medfl_error_set(MEDFL_EUNSUPPORTED, "compressed payload: field 'scheme': unknown %u",
                           h->scheme);
}

int compress_peek(const uint8_t *buf, size_t len, compress_header_t *hdr)
{
    compress_header_t h;
    if (s_check_header(buf, len, &h) != 0)
        return -1;
    if (hdr)
        *hdr = h;
    return 0;
}

static void s_put_header(uint8_t *out, compress_scheme_t scheme, uint32_t n, uint32_t k)
{
    memcpy(out, S_MAGIC, 4);
    out[4] = scheme == COMPRESS_PLAIN ? COMPRESS_PLAIN_VERSION : COMPRESS_SECAGG_VERSION;
    out[5] = (uint8_t)scheme;
    s_put_u16(out + 6, 0);
    s_put_u32(out + 8, n);
    s_put_u32(out + 12, k);
}

static void s_put_section(uint8_t *p, uint16_t id, uint32_t len)
{
    s_put_u16(p, id);
    s_put_u16(p + 2, 0);
    s_put_u32(p + 4, len);
}

/* Reads the section header at *pos, which must carry `id`; returns its length in *slen
 * after checking that the body fits in the buffer. */
static int s_take_section(const uint8_t *buf, size_t len, size_t *pos, uint16_t id,
                          const char *name, size_t *slen)
{
    if (len - *pos < S_SECTION_BYTES)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: truncated before the %s section header at "
                               "byte %zu",
                               name, *pos);
    uint16_t got = s_get_u16(buf + *pos);
    if (got != id)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: section at byte %zu has id %u, want %u (%s)",
                               *pos, got, id, name);
    if (s_get_u16(buf + *pos + 2) != 0)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: %s section: reserved bytes are not zero",
                               name);
    uint32_t l = s_get_u32(buf + *pos + 4);
    *pos += S_SECTION_BYTES;
    if (l > len - *pos)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: %s section: length %u runs past the end "
                               "(%zu bytes left)",
                               name, l, len - *pos);
    *slen = l;
    return 0;
}

/* ---- compressor ---- */

typedef struct {
    float mag;
    uint32_t idx;
} s_item_t;

struct compress_t {
    compress_config_t cfg;
    uint32_t n;
    uint32_t k;        /* PLAIN: coordinates sent */
    float *residual;   /* n */
    float *acc;        /* n, scratch: residual + update */
    s_item_t *items;   /* n, PLAIN scratch for the selection */
    uint32_t *sel;     /* k, PLAIN scratch: selected indices, sorted */
    s_prg_t rng;       /* stochastic rounding */
    uint64_t pivot_state; /* splitmix64 for quickselect pivots (deterministic) */
};

compress_t *compress_new(const compress_config_t *cfg, uint32_t n,
                         const uint8_t seed[COMPRESS_SEED_BYTES])
{
    if (compress_config_check(cfg) != 0)
        return NULL;
    if (n < 1 || n > S_MAX_N) {
        medfl_error_set(MEDFL_EINVAL, "compress: n = %u not in 1..%u", n, S_MAX_N);
        return NULL;
    }
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "compress: sodium_init failed");
        return NULL;
    }
    compress_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "compress: out of memory");
        return NULL;
    }
    self->cfg = *cfg;
    self->n = n;
    self->k = compress_config_k(cfg, n);
    self->residual = calloc(n, sizeof(float));
    self->acc = calloc(n, sizeof(float));
    if (cfg->scheme == COMPRESS_PLAIN) {
        self->items = calloc(n, sizeof(s_item_t));
        self->sel = calloc(self->k, sizeof(uint32_t));
    }
    if (!self->residual || !self->acc ||
        (cfg->scheme == COMPRESS_PLAIN && (!self->items || !self->sel))) {
        compress_destroy(&self);
        medfl_error_set(MEDFL_ENOMEM, "compress: out of memory for n = %u", n);
        return NULL;
    }
    uint8_t key[COMPRESS_SEED_BYTES];
    if (seed)
        memcpy(key, seed, sizeof key);
    else
        randombytes_buf(key, sizeof key);
    s_prg_init(&self->rng, key, "mflround");
    sodium_memzero(key, sizeof key);
    self->pivot_state = 0x9E3779B97F4A7C15ull ^ n;
    return self;
}

void compress_destroy(compress_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    compress_t *self = *self_p;
    free(self->residual);
    free(self->acc);
    free(self->items);
    free(self->sel);
    s_prg_wipe(&self->rng);
    free(self);
    *self_p = NULL;
}

uint32_t compress_n(const compress_t *self)
{
    return self->n;
}

const float *compress_residual(const compress_t *self)
{
    return self->residual;
}

int compress_residual_set(compress_t *self, const float *residual, uint32_t n)
{
    if (!self || !residual)
        return medfl_error_set(MEDFL_EINVAL, "compress: residual_set: NULL argument");
    if (n != self->n)
        return medfl_error_set(MEDFL_EINVAL,
                               "compress: residual has %u values, the compressor expects %u", n,
                               self->n);
    for (uint32_t i = 0; i < n; i++)
        if (!isfinite(residual[i]))
            return medfl_error_set(MEDFL_EINVAL, "compress: residual[%u] is not finite", i);
    memcpy(self->residual, residual, (size_t)n * sizeof(float));
    return 0;
}

void compress_residual_reset(compress_t *self)
{
    memset(self->residual, 0, (size_t)self->n * sizeof(float));
}

/* acc = residual + update (or update alone without error feedback); rejects non-finite. */
static int s_accumulate(compress_t *self, const float *update)
{
    if (!update)
        return medfl_error_set(MEDFL_EINVAL, "compress: NULL update");
    bool ef = self->cfg.error_feedback;
    for (uint32_t i = 0; i < self->n; i++) {
        float a = ef ? self->residual[i] + update[i] : update[i];
        if (!isfinite(a))
            return medfl_error_set(MEDFL_EINVAL,
                                   "compress: update[%u] = %g is not finite (or overflows with "
                                   "the residual)",
                                   i, (double)update[i]);
        self->acc[i] = a;
    }
    return 0;
}

/* ---- PLAIN ---- */

static uint64_t s_splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Rearranges items so that items[0 .. k) hold k of the largest magnitudes. Quickselect with
 * a random pivot and a 3-way (Dutch flag) partition: expected O(n), and runs of equal
 * magnitudes (zeros) end the search at once instead of degrading to O(n^2). */
static void s_select_topk(s_item_t *it, uint32_t n, uint32_t k, uint64_t *rs)
{
    uint32_t lo = 0, hi = n;
    while (hi - lo > 1) {
        float p = it[lo + (uint32_t)(s_splitmix(rs) % (hi - lo))].mag;
        uint32_t a = lo, i = lo, b = hi;
        while (i < b) {
            if (it[i].mag > p) {
                s_item_t t = it[i];
                it[i++] = it[a];
                it[a++] = t;
            } else if (it[i].mag < p) {
                s_item_t t = it[i];
                it[i] = it[--b];
                it[b] = t;
            } else {
                i++;
            }
        }
        /* [lo, a) > p, [a, b) == p, [b, hi) < p */
        if (k < a)
            hi = a;
        else if (k <= b)
            return;
        else
            lo = b;
    }
}

static int s_cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

/* Canonical LEB128 of a uint32: at most 5 bytes, no bits beyond 32, no overlong form (a
 * final 0x00 byte after a continuation). Returns bytes used, 0 on error (message set). */
static size_t s_varint_get(const uint8_t *p, size_t avail, uint32_t *out, size_t at,
                           uint32_t ordinal)
{
    uint64_t v = 0;
    for (size_t i = 0; i < 5; i++) {
        if (i >= avail) {
            medfl_error_set(MEDFL_EFORMAT,
                            "compressed payload: indices section: varint of index %u at byte "
                            "%zu is truncated",
                            ordinal, at);
            return 0;
        }
        uint8_t b = p[i];
        if (i == 4 && (b & 0xF0)) {
            medfl_error_set(MEDFL_EFORMAT,
                            "compressed payload: indices section: varint of index %u at byte "
                            "%zu overflows 32 bits",
                            ordinal, at);
            return 0;
        }
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            if (i > 0 && b == 0) {
                medfl_error_set(MEDFL_EFORMAT,
                                "compressed payload: indices section: varint of index %u at "
                                "byte %zu is overlong (not canonical)",
                                ordinal, at);
                return 0;
            }
            *out = (uint32_t)v;
            return i + 1;
        }
    }
    /* unreachable: the 5th byte either ends or was rejected for bits 4..7 */
    medfl_error_set(MEDFL_EFORMAT, "compressed payload: indices section: bad varint at byte %zu",
                    at);
    return 0;
}

/* ---- bit streams (version 2): LSB-first within each byte, like the secagg ring ---- */

typedef struct {
    uint8_t *p;  /* zeroed beforehand: only 1 bits are written */
    uint64_t pos; /* bits written */
} s_bitw_t;

static void s_bitw_put(s_bitw_t *w, uint32_t v, unsigned nbits)
{
    for (unsigned i = 0; i < nbits; i++, w->pos++)
        if ((v >> i) & 1u)
            w->p[w->pos >> 3] |= (uint8_t)(1u << (w->pos & 7));
}

typedef struct {
    const uint8_t *p;
    uint64_t pos, end; /* in bits */
} s_bitr_t;

/* Reads nbits (<= 32) LSB-first; -1 when the stream ends first. */
static int s_bitr_get(s_bitr_t *r, unsigned nbits, uint32_t *v)
{
    if (r->end - r->pos < nbits)
        return -1;
    uint32_t x = 0;
    for (unsigned i = 0; i < nbits; i++, r->pos++)
        x |= (uint32_t)((r->p[r->pos >> 3] >> (r->pos & 7)) & 1u) << i;
    *v = x;
    return 0;
}

/* The value Rice-coded for selected index j: the first index itself, then gap - 1 >= 0. */
static uint32_t s_rice_value(const uint32_t *sel, uint32_t j)
{
    return j == 0 ? sel[0] : sel[j] - sel[j - 1] - 1;
}

/* Bits of the Rice code of the k index values with parameter r: (v >> r) ones, a zero, the
 * low r bits. */
static uint64_t s_rice_bits(const uint32_t *sel, uint32_t k, unsigned r)
{
    uint64_t bits = (uint64_t)k * (1 + r);
    for (uint32_t j = 0; j < k; j++)
        bits += s_rice_value(sel, j) >> r;
    return bits;
}

/* floor(log2(n / k)) for 1 <= k <= n: the parameter whose size bounds the encoder's. */
static unsigned s_rice_bound_param(uint32_t n, uint32_t k)
{
    unsigned r = 0;
    while (r < S_MAX_RICE && ((uint64_t)k << (r + 1)) <= n)
        r++;
    return r;
}

/* Levels of b-bit values: -(2^(b-1) - 1) .. 2^(b-1) - 1 (symmetric, so -2^(b-1) is never
 * produced and the decoder rejects it). */
static int32_t s_levels(unsigned bits)
{
    return (int32_t)(1u << (bits - 1)) - 1;
}

size_t compress_plain_max_bytes(const compress_t *self)
{
    /* The Rice part: with r0 = floor(log2(n/k)), sum_j (v_j >> r0) <= (n - k) / 2^r0 < 2k,
     * so the code with r0 takes < k (3 + r0) bits, and the encoder picks the smallest size
     * over all parameters, r0 included. */
    uint64_t k = self->k, chunks = (k + self->cfg.chunk - 1) / self->cfg.chunk;
    uint64_t rice_bits = k * (3 + s_rice_bound_param(self->n, self->k));
    return (size_t)(S_PLAIN_FIXED + 4 * chunks + (k * self->cfg.value_bits + 7) / 8 +
                    (rice_bits + 7) / 8);
}

int compress_plain_encode(compress_t *self, const float *update, uint8_t *out, size_t cap,
                          size_t *len)
{
    if (!self || !out || !len)
        return medfl_error_set(MEDFL_EINVAL, "compress: plain_encode: NULL argument");
    if (self->cfg.scheme != COMPRESS_PLAIN)
        return medfl_error_set(MEDFL_ESTATE, "compress: plain_encode on a secagg compressor");
    size_t max = compress_plain_max_bytes(self);
    if (cap < max)
        return medfl_error_set(MEDFL_EINVAL,
                               "compress: output buffer of %zu bytes, need up to %zu", cap, max);
    if (s_accumulate(self, update) != 0)
        return -1;
    uint32_t n = self->n, k = self->k, chunk = self->cfg.chunk, bits = self->cfg.value_bits;
    for (uint32_t i = 0; i < n; i++) {
        self->items[i].mag = fabsf(self->acc[i]);
        self->items[i].idx = i;
    }
    s_select_topk(self->items, n, k, &self->pivot_state);
    for (uint32_t j = 0; j < k; j++)
        self->sel[j] = self->items[j].idx;
    qsort(self->sel, k, sizeof(uint32_t), s_cmp_u32);

    unsigned rice = 0;
    uint64_t rice_bits = s_rice_bits(self->sel, k, 0);
    for (unsigned r = 1; r <= S_MAX_RICE; r++) {
        uint64_t b = s_rice_bits(self->sel, k, r);
        if (b < rice_bits) {
            rice_bits = b;
            rice = r;
        }
    }
    uint32_t chunks = (k + chunk - 1) / chunk;
    size_t vbytes = ((size_t)k * bits + 7) / 8;
    size_t total = S_PLAIN_FIXED + 4 * (size_t)chunks + vbytes + (size_t)((rice_bits + 7) / 8);
    memset(out, 0, total);
    s_put_header(out, COMPRESS_PLAIN, n, k);
    out[16] = (uint8_t)bits;
    out[17] = (uint8_t)rice;
    s_put_u16(out + 18, (uint16_t)(chunk - 1));
    uint8_t *scales = out + S_PLAIN_FIXED;
    s_bitw_t vw = {out + S_PLAIN_FIXED + 4 * (size_t)chunks, 0};
    s_bitw_t iw = {vw.p + vbytes, 0};

    /* values, chunk by chunk; residual of sent coordinates = acc - decoded */
    int32_t L = s_levels(bits);
    float Lf = (float)L;
    uint32_t mask = (1u << bits) - 1;
    bool ef = self->cfg.error_feedback;
    if (ef)
        memcpy(self->residual, self->acc, (size_t)n * sizeof(float));
    for (uint32_t c = 0; c < chunks; c++) {
        uint32_t j0 = c * chunk, j1 = j0 + chunk < k ? j0 + chunk : k;
        float m = 0.0f;
        for (uint32_t j = j0; j < j1; j++)
            m = fmaxf(m, fabsf(self->acc[self->sel[j]]));
        float scale = m / Lf;
        s_put_u32(scales + 4 * (size_t)c, s_float_bits(scale));
        for (uint32_t j = j0; j < j1; j++) {
            uint32_t i = self->sel[j];
            /* round to nearest, ties to even (nearbyintf in the default rounding mode) */
            float q = scale > 0.0f ? nearbyintf(self->acc[i] / scale) : 0.0f;
            if (q > Lf)
                q = Lf;
            if (q < -Lf)
                q = -Lf;
            int32_t qi = (int32_t)q;
            s_bitw_put(&vw, (uint32_t)qi & mask, bits);
            if (ef)
                self->residual[i] = self->acc[i] - (float)qi * scale;
        }
    }
    /* indices: Rice codes of the first index and of the gaps minus one */
    for (uint32_t j = 0; j < k; j++) {
        uint32_t v = s_rice_value(self->sel, j), q = v >> rice;
        for (uint32_t u = 0; u < q; u++)
            s_bitw_put(&iw, 1, 1);
        s_bitw_put(&iw, 0, 1);
        s_bitw_put(&iw, v & (uint32_t)(((uint64_t)1 << rice) - 1), rice);
    }
    *len = total;
    return 0;
}

/* Version 1: walks the whole payload; with dense == NULL only validates. */
static int s_plain_walk_v1(const uint8_t *buf, size_t len, uint32_t n, const compress_header_t *hp,
                           float *dense)
{
    compress_header_t h = *hp;
    size_t pos = S_PLAIN_FIXED, ilen, slen, vlen;
    if (s_take_section(buf, len, &pos, S_SEC_INDICES, "indices", &ilen) != 0)
        return -1;
    size_t ipos = pos;
    pos += ilen;
    if (s_take_section(buf, len, &pos, S_SEC_SCALES, "scales", &slen) != 0)
        return -1;
    size_t spos = pos;
    pos += slen;
    if (s_take_section(buf, len, &pos, S_SEC_VALUES, "values", &vlen) != 0)
        return -1;
    size_t vpos = pos;
    pos += vlen;
    if (pos != len)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: %zu trailing bytes after the values section",
                               len - pos);
    uint32_t chunks = (uint32_t)(((uint64_t)h.k + h.chunk - 1) / h.chunk);
    if (slen != 4 * (size_t)chunks)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: scales section: %zu bytes, want %u scales "
                               "(k = %u, chunk = %u) = %zu bytes",
                               slen, chunks, h.k, h.chunk, 4 * (size_t)chunks);
    if (vlen != h.k)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: values section: %zu values, header says "
                               "k = %u",
                               vlen, h.k);
    for (uint32_t c = 0; c < chunks; c++) {
        uint32_t bits = s_get_u32(buf + spos + 4 * (size_t)c);
        float s = s_bits_float(bits);
        if (!isfinite(s) || (bits & 0x80000000u))
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: scale of chunk %u is %g (must be finite "
                                   "and non-negative)",
                                   c, (double)s);
    }
    const int8_t *vals = (const int8_t *)(buf + vpos);
    for (uint32_t j = 0; j < h.k; j++)
        if (vals[j] == INT8_MIN)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: value %u is -128 (the int8 range is "
                                   "symmetric, -127..127)",
                                   j);
    if (dense)
        memset(dense, 0, (size_t)n * sizeof(float));
    size_t p = 0;
    uint64_t idx = 0;
    for (uint32_t j = 0; j < h.k; j++) {
        uint32_t v;
        size_t used = s_varint_get(buf + ipos + p, ilen - p, &v, ipos + p, j);
        if (used == 0)
            return -1;
        p += used;
        if (j > 0 && v == 0)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: indices not strictly increasing at "
                                   "position %u (gap 0 after index %llu)",
                                   j, (unsigned long long)idx);
        idx = j == 0 ? v : idx + v;
        if (idx >= n)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: index %u is %llu, not < n = %u", j,
                                   (unsigned long long)idx, n);
        if (dense) {
            float s = s_bits_float(s_get_u32(buf + spos + 4 * (size_t)(j / h.chunk)));
            dense[idx] = (float)vals[j] * s;
        }
    }
    if (p != ilen)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: indices section: %zu bytes left after k = %u "
                               "indices (count mismatch)",
                               ilen - p, h.k);
    return 0;
}

/* Version 2: scales, b-bit values, Rice-coded indices, lengths implied by the header. With
 * dense == NULL only validates. */
static int s_plain_walk_v2(const uint8_t *buf, size_t len, uint32_t n,
                           const compress_header_t *h, float *dense)
{
    uint64_t chunks = ((uint64_t)h->k + h->chunk - 1) / h->chunk;
    uint64_t spos = S_PLAIN_FIXED, vpos = spos + 4 * chunks;
    uint64_t vbits = (uint64_t)h->k * h->value_bits, ipos = vpos + (vbits + 7) / 8;
    if (ipos > len)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: truncated: %llu scales and %u values of %u "
                               "bits need %llu bytes, the payload has %zu",
                               (unsigned long long)chunks, h->k, h->value_bits,
                               (unsigned long long)ipos, len);
    for (uint64_t c = 0; c < chunks; c++) {
        uint32_t bits = s_get_u32(buf + spos + 4 * c);
        float s = s_bits_float(bits);
        if (!isfinite(s) || (bits & 0x80000000u))
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: scale of chunk %llu is %g (must be "
                                   "finite and non-negative)",
                                   (unsigned long long)c, (double)s);
    }
    int32_t L = s_levels(h->value_bits);
    uint32_t sign = 1u << (h->value_bits - 1);
    s_bitr_t vr = {buf + vpos, 0, vbits};
    for (uint32_t j = 0; j < h->k; j++) {
        uint32_t u = 0;
        (void)s_bitr_get(&vr, h->value_bits, &u); /* in range: vbits = k * b */
        if (u == sign)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: value %u is %d (the %u-bit range is "
                                   "symmetric, -%d..%d)",
                                   j, -(int)sign, h->value_bits, L, L);
    }
    uint32_t pad = 0;
    vr.end = 8 * ((vbits + 7) / 8);
    if (s_bitr_get(&vr, (unsigned)(vr.end - vr.pos), &pad) != 0 || pad != 0)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: values: padding bits after value %u are "
                               "not zero",
                               h->k - 1);
    if (dense)
        memset(dense, 0, (size_t)n * sizeof(float));
    vr.pos = 0;
    unsigned r = h->rice;
    uint64_t ilen = len - ipos;
    s_bitr_t ir = {buf + ipos, 0, 8 * ilen};
    uint64_t idx = 0;
    for (uint32_t j = 0; j < h->k; j++) {
        /* unary quotient; q << r >= n already means an index out of range, which also
         * bounds the loop by n, not by the payload length */
        uint64_t q = 0;
        uint32_t bit = 1;
        uint64_t at = ir.pos;
        for (;;) {
            if (s_bitr_get(&ir, 1, &bit) != 0)
                return medfl_error_set(MEDFL_EFORMAT,
                                       "compressed payload: indices: code of index %u at bit "
                                       "%llu is truncated (count mismatch: fewer than k = %u)",
                                       j, (unsigned long long)at, h->k);
            if (!bit)
                break;
            if ((++q << r) >= n)
                return medfl_error_set(MEDFL_EFORMAT,
                                       "compressed payload: indices: index %u is >= %llu, not "
                                       "< n = %u",
                                       j, (unsigned long long)(q << r), n);
        }
        uint32_t low = 0;
        if (s_bitr_get(&ir, r, &low) != 0)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: indices: code of index %u at bit %llu "
                                   "is truncated (count mismatch: fewer than k = %u)",
                                   j, (unsigned long long)at, h->k);
        uint64_t v = (q << r) | low;
        idx = j == 0 ? v : idx + 1 + v;
        if (idx >= n)
            return medfl_error_set(MEDFL_EFORMAT,
                                   "compressed payload: index %u is %llu, not < n = %u", j,
                                   (unsigned long long)idx, n);
        uint32_t u = 0;
        (void)s_bitr_get(&vr, h->value_bits, &u);
        if (dense) {
            int32_t qv = (u & sign) ? (int32_t)u - (int32_t)(sign << 1) : (int32_t)u;
            float s = s_bits_float(s_get_u32(buf + spos + 4 * (uint64_t)(j / h->chunk)));
            dense[idx] = (float)qv * s;
        }
    }
    uint64_t left = ir.end - ir.pos;
    if (left >= 8)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: indices: %llu bytes left after k = %u "
                               "indices (count mismatch or trailing bytes)",
                               (unsigned long long)(left / 8), h->k);
    if (s_bitr_get(&ir, (unsigned)left, &pad) != 0 || pad != 0)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: indices: padding bits after index %u are "
                               "not zero",
                               h->k - 1);
    return 0;
}

static int s_plain_walk(const uint8_t *buf, size_t len, uint32_t n, float *dense)
{
    compress_header_t h;
    if (s_check_header(buf, len, &h) != 0)
        return -1;
    if (h.scheme != COMPRESS_PLAIN)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: scheme %u is not plain (expected %d)",
                               h.scheme, COMPRESS_PLAIN);
    if (h.n != n)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: field 'n': %u, the model has %u", h.n, n);
    return h.version == 1 ? s_plain_walk_v1(buf, len, n, &h, dense)
                          : s_plain_walk_v2(buf, len, n, &h, dense);
}

int compress_plain_decode(const uint8_t *buf, size_t len, uint32_t n, float *dense)
{
    if (!dense)
        return medfl_error_set(MEDFL_EINVAL, "compress: plain_decode: NULL output");
    if (s_plain_walk(buf, len, n, NULL) != 0)
        return -1;
    return s_plain_walk(buf, len, n, dense);
}

/* ---- SECAGG ---- */

struct compress_round_t {
    compress_config_t cfg;
    uint32_t n, k;
    unsigned width;
    uint8_t flags;
    uint8_t tag[S_TAG_BYTES]; /* BLAKE2b of the round seed: catches a node on another round */
    uint32_t *idx;            /* k, strictly increasing */
};

compress_round_t *compress_round_new(const compress_config_t *cfg, uint32_t n,
                                     const uint8_t round_seed[COMPRESS_SEED_BYTES])
{
    if (compress_config_check(cfg) != 0)
        return NULL;
    if (cfg->scheme != COMPRESS_SECAGG) {
        medfl_error_set(MEDFL_EINVAL, "compress: a round needs the secagg scheme");
        return NULL;
    }
    if (n < 1 || n > S_MAX_N || !round_seed) {
        medfl_error_set(MEDFL_EINVAL, "compress: round: n = %u not in 1..%u or no seed", n,
                        S_MAX_N);
        return NULL;
    }
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "compress: sodium_init failed");
        return NULL;
    }
    compress_round_t *r = calloc(1, sizeof *r);
    if (!r) {
        medfl_error_set(MEDFL_ENOMEM, "compress: out of memory");
        return NULL;
    }
    r->cfg = *cfg;
    r->n = n;
    r->k = compress_config_k(cfg, n);
    r->width = compress_ring_width_noise(cfg->bits, cfg->max_nodes, cfg->noise_levels);
    if (r->k < n)
        r->flags = COMPRESS_FLAG_RANDOM_K | (cfg->error_feedback ? 0 : COMPRESS_FLAG_SCALED);
    crypto_generichash(r->tag, sizeof r->tag, round_seed, COMPRESS_SEED_BYTES, NULL, 0);
    r->idx = malloc((size_t)n * sizeof(uint32_t));
    if (!r->idx) {
        compress_round_destroy(&r);
        medfl_error_set(MEDFL_ENOMEM, "compress: out of memory for n = %u", n);
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++)
        r->idx[i] = i;
    if (r->k < n) {
        /* partial Fisher-Yates: the first k entries are a uniform k-subset */
        s_prg_t prg;
        s_prg_init(&prg, round_seed, "mflrandk");
        for (uint32_t j = 0; j < r->k; j++) {
            uint32_t t = j + s_prg_uniform(&prg, n - j);
            uint32_t v = r->idx[j];
            r->idx[j] = r->idx[t];
            r->idx[t] = v;
        }
        s_prg_wipe(&prg);
        qsort(r->idx, r->k, sizeof(uint32_t), s_cmp_u32);
    }
    return r;
}

void compress_round_destroy(compress_round_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->idx);
    free(*self_p);
    *self_p = NULL;
}

uint32_t compress_round_k(const compress_round_t *self)
{
    return self->k;
}

unsigned compress_round_width(const compress_round_t *self)
{
    return self->width;
}

const uint32_t *compress_round_indices(const compress_round_t *self)
{
    return self->idx;
}

static size_t s_ring_bytes(const compress_round_t *r)
{
    return (size_t)(((uint64_t)r->k * r->width + 7) / 8);
}

size_t compress_round_payload_bytes(const compress_round_t *self)
{
    return S_SECAGG_FIXED + S_SECTION_BYTES + s_ring_bytes(self);
}

int compress_secagg_encode(compress_t *self, const compress_round_t *round,
                           const float *update, float weight, uint32_t *levels)
{
    if (!self || !round || !levels)
        return medfl_error_set(MEDFL_EINVAL, "compress: secagg_encode: NULL argument");
    if (self->cfg.scheme != COMPRESS_SECAGG)
        return medfl_error_set(MEDFL_ESTATE, "compress: secagg_encode on a plain compressor");
    if (round->n != self->n || round->cfg.bits != self->cfg.bits ||
        s_float_bits(round->cfg.clip) != s_float_bits(self->cfg.clip) ||
        round->cfg.error_feedback != self->cfg.error_feedback)
        return medfl_error_set(MEDFL_EINVAL,
                               "compress: round settings (n %u, bits %u, clip %g) differ from "
                               "the compressor's (n %u, bits %u, clip %g)",
                               round->n, round->cfg.bits, (double)round->cfg.clip, self->n,
                               self->cfg.bits, (double)self->cfg.clip);
    if (!(isfinite(weight) && weight > 0.0f))
        return medfl_error_set(MEDFL_EINVAL, "compress: weight %g must be finite and > 0",
                               (double)weight);
    if (s_accumulate(self, update) != 0)
        return -1;
    bool ef = self->cfg.error_feedback;
    if (ef)
        memcpy(self->residual, self->acc, (size_t)self->n * sizeof(float));
    const double R = self->cfg.clip, L = (double)((1u << self->cfg.bits) - 1);
    const double delta = 2.0 * R / L, w = weight;
    for (uint32_t j = 0; j < round->k; j++) {
        uint32_t i = round->idx[j];
        double y = w * (double)self->acc[i];
        if (y > R)
            y = R;
        if (y < -R)
            y = -R;
        double q = (y + R) / delta;
        if (q > L)
            q = L;
        if (q < 0.0)
            q = 0.0;
        double f = floor(q);
        /* P(round up) = q - f, so E[level] = q: unbiased within [-R, R] */
        uint32_t l = (uint32_t)f + (s_prg_unit(&self->rng) < q - f ? 1u : 0u);
        levels[j] = l;
        if (ef) {
            float dec = (float)((-R + (double)l * delta) / w);
            self->residual[i] = self->acc[i] - dec;
        }
    }
    return 0;
}

double compress_config_step(const compress_config_t *cfg)
{
    return 2.0 * (double)cfg->clip / (double)(((uint64_t)1 << cfg->bits) - 1);
}

double compress_round_step(const compress_round_t *round)
{
    return compress_config_step(&round->cfg);
}

int compress_secagg_add_noise(const compress_round_t *round, struct dp_rng_t *rng,
                              double std_levels, uint32_t *levels)
{
    if (!round || !rng || !levels)
        return medfl_error_set(MEDFL_EINVAL, "compress: secagg_add_noise: NULL argument");
    const int64_t H = round->cfg.noise_levels, L = ((int64_t)1 << round->cfg.bits) - 1;
    if (H == 0 || !(std_levels >= 0) || !isfinite(std_levels))
        return medfl_error_set(MEDFL_EINVAL, "compress: noise of std %g levels needs a ring with "
                               "noise headroom (H = %lld)", std_levels, (long long)H);
    for (uint32_t j = 0; j < round->k; j++) {
        if ((int64_t)levels[j] > L)
            return medfl_error_set(MEDFL_EINVAL, "compress: level %u at %u is not in 0..%lld",
                                   levels[j], j, (long long)L);
        int64_t z = dp_rng_discrete_gaussian(rng, std_levels);
        z = z > H ? H : z < -H ? -H : z;
        levels[j] = (uint32_t)((int64_t)levels[j] + H + z);
    }
    return 0;
}

int compress_secagg_pack(const compress_round_t *round, const uint32_t *ring, uint8_t *out,
                         size_t cap, size_t *len)
{
    if (!round || !ring || !out || !len)
        return medfl_error_set(MEDFL_EINVAL, "compress: secagg_pack: NULL argument");
    size_t total = compress_round_payload_bytes(round);
    if (cap < total)
        return medfl_error_set(MEDFL_EINVAL,
                               "compress: output buffer of %zu bytes, need %zu", cap, total);
    s_put_header(out, COMPRESS_SECAGG, round->n, round->k);
    out[16] = (uint8_t)round->cfg.bits;
    out[17] = (uint8_t)round->width;
    out[18] = round->flags;
    out[19] = 0;
    s_put_u32(out + 20, s_float_bits(round->cfg.clip));
    memcpy(out + 24, round->tag, S_TAG_BYTES);
    size_t rb = s_ring_bytes(round);
    s_put_section(out + S_SECAGG_FIXED, S_SEC_RING, (uint32_t)rb);
    uint8_t *p = out + S_SECAGG_FIXED + S_SECTION_BYTES;
    /* LSB-first bit stream of width-bit elements */
    const unsigned w = round->width;
    const uint64_t mask = w == 32 ? 0xFFFFFFFFull : (((uint64_t)1 << w) - 1);
    uint64_t acc = 0;
    unsigned have = 0;
    size_t o = 0;
    for (uint32_t j = 0; j < round->k; j++) {
        acc |= ((uint64_t)ring[j] & mask) << have;
        have += w;
        while (have >= 8) {
            p[o++] = (uint8_t)acc;
            acc >>= 8;
            have -= 8;
        }
    }
    if (have > 0)
        p[o++] = (uint8_t)acc;
    *len = total;
    return 0;
}

/* Every check comes before the first element is written, so `add` leaves ring untouched on
 * failure (the aggregator decodes straight into its running sum). */
static int s_secagg_unpack(const compress_round_t *round, const uint8_t *buf, size_t len,
                           uint32_t *ring, bool add)
{
    if (!round || !ring)
        return medfl_error_set(MEDFL_EINVAL, "compress: secagg_unpack: NULL argument");
    compress_header_t h;
    if (s_check_header(buf, len, &h) != 0)
        return -1;
    if (h.scheme != COMPRESS_SECAGG)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: scheme %u is not secagg (expected %d)",
                               h.scheme, COMPRESS_SECAGG);
    if (h.n != round->n || h.k != round->k || h.bits != round->cfg.bits ||
        h.width != round->width || h.flags != round->flags ||
        s_float_bits(h.clip) != s_float_bits(round->cfg.clip))
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: header (n %u, k %u, bits %u, width %u, "
                               "flags %u, clip %g) differs from the round's (n %u, k %u, bits "
                               "%u, width %u, flags %u, clip %g)",
                               h.n, h.k, h.bits, h.width, h.flags, (double)h.clip, round->n,
                               round->k, round->cfg.bits, round->width, round->flags,
                               (double)round->cfg.clip);
    if (sodium_memcmp(buf + 24, round->tag, S_TAG_BYTES) != 0)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: field 'round_tag' does not match this "
                               "round's seed");
    size_t pos = S_SECAGG_FIXED, rlen;
    if (s_take_section(buf, len, &pos, S_SEC_RING, "ring", &rlen) != 0)
        return -1;
    size_t want = s_ring_bytes(round);
    if (rlen != want)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: ring section: %zu bytes, want %zu (k = %u "
                               "elements of %u bits)",
                               rlen, want, round->k, round->width);
    if (pos + rlen != len)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: %zu trailing bytes after the ring section",
                               len - pos - rlen);
    const uint8_t *p = buf + pos;
    const unsigned w = round->width;
    unsigned pad = (unsigned)(rlen * 8 - (uint64_t)round->k * w);
    if (pad && (p[rlen - 1] >> (8 - pad)) != 0)
        return medfl_error_set(MEDFL_EFORMAT,
                               "compressed payload: ring section: %u padding bits are not zero",
                               pad);
    const uint64_t mask = w == 32 ? 0xFFFFFFFFull : (((uint64_t)1 << w) - 1);
    uint64_t acc = 0;
    unsigned have = 0;
    size_t in = 0;
    for (uint32_t j = 0; j < round->k; j++) {
        while (have < w) {
            acc |= (uint64_t)p[in++] << have;
            have += 8;
        }
        if (add) ring[j] += (uint32_t)(acc & mask);
        else ring[j] = (uint32_t)(acc & mask);
        acc >>= w;
        have -= w;
    }
    return 0;
}

int compress_secagg_unpack(const compress_round_t *round, const uint8_t *buf, size_t len,
                           uint32_t *ring)
{
    return s_secagg_unpack(round, buf, len, ring, false);
}

int compress_secagg_unpack_add(const compress_round_t *round, const uint8_t *buf, size_t len,
                               uint32_t *acc)
{
    return s_secagg_unpack(round, buf, len, acc, true);
}

int compress_secagg_decode_sum(const compress_round_t *round, const uint32_t *ring_sum,
                               uint32_t n_nodes, float *dense)
{
    if (!round || !ring_sum || !dense)
        return medfl_error_set(MEDFL_EINVAL, "compress: secagg_decode_sum: NULL argument");
    if (n_nodes < 1 || n_nodes > round->cfg.max_nodes)
        return medfl_error_set(MEDFL_EINVAL,
                               "compress: %u nodes summed, the ring is sized for 1..%u",
                               n_nodes, round->cfg.max_nodes);
    const unsigned w = round->width;
    const uint32_t mask = w == 32 ? 0xFFFFFFFFu : ((1u << w) - 1);
    const uint64_t H = round->cfg.noise_levels, L = ((uint64_t)1 << round->cfg.bits) - 1,
                   top = (uint64_t)n_nodes * (L + 2 * H);
    for (uint32_t j = 0; j < round->k; j++)
        if ((ring_sum[j] & mask) > top)
            return medfl_error_set(MEDFL_EPROTO,
                                   "compress: coordinate %u: level sum %u exceeds n * (2^b - 1 "
                                   "+ 2H) = %llu (masks did not cancel, or a node sent levels "
                                   "out of range)",
                                   round->idx[j], ring_sum[j] & mask, (unsigned long long)top);
    const double R = round->cfg.clip, delta = 2.0 * R / (double)L;
    const double scale =
        (round->flags & COMPRESS_FLAG_SCALED) ? (double)round->n / (double)round->k : 1.0;
    memset(dense, 0, (size_t)round->n * sizeof(float));
    for (uint32_t j = 0; j < round->k; j++) {
        double lv = (double)(ring_sum[j] & mask) - (double)n_nodes * (double)H;
        double s = -(double)n_nodes * R + lv * delta;
        dense[round->idx[j]] = (float)(s * scale);
    }
    return 0;
}
