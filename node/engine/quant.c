/* Quantized blocks (ggml layouts) and the de-quantizing matmul; see quant.h.
 *
 * The quantizers reproduce gguf-py's numpy code operation for operation in float32 (same
 * divisions, reciprocal, rounding and clipping) because their output is compared byte for byte
 * and because a file medfl writes must read back in llama.cpp exactly as it would have been
 * quantized there. The matmul's speed comes from BLAS: each panel of de-quantized rows is
 * reused by every token, so expanding it costs a fraction of the product when there are many
 * tokens (training), and the scratch stays at a few hundred KB, L2-sized, whatever the matrix. */
#include "node/engine/quant.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* Scratch target of one de-quantized panel: small enough to stay in L2 between the
 * expansion and sgemm's packing of it, large enough that sgemm calls are not tiny. */
#define PANEL_BYTES (256u * 1024)
#define PANEL_MIN_ROWS 16
/* Below this many tokens (generation with a KV cache, T = 1) a panel would not be reused
 * enough to pay for sgemm's packing: rows are expanded one at a time into a row-sized buffer
 * and applied with sdot / saxpy, streaming the quantized weight once. */
#define ROW_PATH_MAX_TOKENS 4

static const struct {
    uint32_t id;
    uint16_t block, size;
    const char *name;
} s_types[] = {
    /* ggml's type table (ggml.h / gguf-py constants.GGML_QUANT_SIZES) */
    {0, 1, 4, "F32"},          {1, 1, 2, "F16"},          {2, 32, 18, "Q4_0"},
    {3, 32, 20, "Q4_1"},       {6, 32, 22, "Q5_0"},       {7, 32, 24, "Q5_1"},
    {8, 32, 34, "Q8_0"},       {9, 32, 40, "Q8_1"},       {10, 256, 84, "Q2_K"},
    {11, 256, 110, "Q3_K"},    {12, 256, 144, "Q4_K"},    {13, 256, 176, "Q5_K"},
    {14, 256, 210, "Q6_K"},    {15, 256, 292, "Q8_K"},    {16, 256, 66, "IQ2_XXS"},
    {17, 256, 74, "IQ2_XS"},   {18, 256, 98, "IQ3_XXS"},  {19, 256, 50, "IQ1_S"},
    {20, 32, 18, "IQ4_NL"},    {21, 256, 110, "IQ3_S"},   {22, 256, 82, "IQ2_S"},
    {23, 256, 136, "IQ4_XS"},  {24, 1, 1, "I8"},          {25, 1, 2, "I16"},
    {26, 1, 4, "I32"},         {27, 1, 8, "I64"},         {28, 1, 8, "F64"},
    {29, 256, 56, "IQ1_M"},    {30, 1, 2, "BF16"},        {34, 256, 54, "TQ1_0"},
    {35, 256, 66, "TQ2_0"},    {39, 32, 17, "MXFP4"},     {40, 64, 36, "NVFP4"},
    {41, 128, 18, "Q1_0"},
};

bool quant_type_info(uint32_t type, size_t *block_size, size_t *type_size, const char **name)
{
    for (size_t i = 0; i < sizeof s_types / sizeof s_types[0]; i++) {
        if (s_types[i].id != type) continue;
        if (block_size) *block_size = s_types[i].block;
        if (type_size) *type_size = s_types[i].size;
        if (name) *name = s_types[i].name;
        return true;
    }
    return false;
}

const char *quant_type_name(uint32_t type)
{
    const char *name = "unknown";
    quant_type_info(type, NULL, NULL, &name);
    return name;
}

bool quant_supported(uint32_t type)
{
    switch (type) {
    case QUANT_F32: case QUANT_F16: case QUANT_BF16:
    case QUANT_Q8_0: case QUANT_Q4_0: case QUANT_Q4_1:
        return true;
    default:
        return false;
    }
}

size_t quant_row_bytes(uint32_t type, size_t n)
{
    size_t block, size;
    if (!quant_type_info(type, &block, &size, NULL) || n % block) return 0;
    if (n / block > SIZE_MAX / size) return 0;
    return n / block * size;
}

/* ---------------------------------------------------------------- scalar conversions */

float quant_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in float32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        bits = sign | 0x7f800000u | (mant << 13);
    else
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t quant_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: keep it a (quiet) NaN */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000u) /* >= 65520 rounds to infinity */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000u) {
        /* below 2^-14: a subnormal half, mantissa = |f| * 2^24 rounded to nearest even
         * (the scaling is exact; the default rounding mode is to nearest even) */
        float a;
        memcpy(&a, &ax, sizeof a);
        return (uint16_t)(sign | (uint16_t)nearbyintf(a * 0x1p24f));
    }
    uint32_t m = ax - 0x38000000u; /* rebias the exponent from 127 to 15 */
    m += 0x0fffu + ((m >> 13) & 1); /* round the 13 dropped bits to nearest even */
    return (uint16_t)(sign | (m >> 13));
}

float quant_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t quant_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: force quiet, as ggml does */
        return (uint16_t)(((x & 0xffff0000u) | 0x00400000u) >> 16);
    return (uint16_t)(((uint64_t)x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

static uint16_t s_rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static void s_wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ---------------------------------------------------------------- de-quantization */

/* The block kernels: SSE2 (every x86-64 has it) expands 16 codes per instruction group,
 * the portable loops elsewhere. Both compute exactly q * d, d * (q - 8) and d * q + m in
 * float32 (a multiply, then an add: no fused multiply-add), so results are bit-identical. */
#if defined(__SSE2__) && !defined(QUANT_PORTABLE)
#include <emmintrin.h>

/* 16 int32 lanes (4 vectors) -> y[0..15] = scale * v (+ offset when add). */
static inline void s_store16(const __m128i v[4], __m128 d, __m128 m, bool add, float *y)
{
    for (int k = 0; k < 4; k++) {
        __m128 f = _mm_mul_ps(d, _mm_cvtepi32_ps(v[k]));
        _mm_storeu_ps(y + 4 * k, add ? _mm_add_ps(f, m) : f);
    }
}

/* 16 unsigned bytes -> 4 vectors of int32, minus `bias`. */
static inline void s_widen_u8(__m128i b, __m128i bias, __m128i out[4])
{
    const __m128i z = _mm_setzero_si128();
    __m128i lo = _mm_unpacklo_epi8(b, z), hi = _mm_unpackhi_epi8(b, z);
    out[0] = _mm_sub_epi32(_mm_unpacklo_epi16(lo, z), bias);
    out[1] = _mm_sub_epi32(_mm_unpackhi_epi16(lo, z), bias);
    out[2] = _mm_sub_epi32(_mm_unpacklo_epi16(hi, z), bias);
    out[3] = _mm_sub_epi32(_mm_unpackhi_epi16(hi, z), bias);
}

/* 16 signed bytes -> 4 vectors of int32 (sign-extended by arithmetic shifts). */
static inline void s_widen_i8(__m128i b, __m128i out[4])
{
    __m128i lo = _mm_srai_epi16(_mm_unpacklo_epi8(b, b), 8),
            hi = _mm_srai_epi16(_mm_unpackhi_epi8(b, b), 8);
    out[0] = _mm_srai_epi32(_mm_unpacklo_epi16(lo, lo), 16);
    out[1] = _mm_srai_epi32(_mm_unpackhi_epi16(lo, lo), 16);
    out[2] = _mm_srai_epi32(_mm_unpacklo_epi16(hi, hi), 16);
    out[3] = _mm_srai_epi32(_mm_unpackhi_epi16(hi, hi), 16);
}

static void s_deq_q8_0(const uint8_t *b, float *y, size_t nb)
{
    __m128i v[4];
    for (size_t i = 0; i < nb; i++, b += 34, y += 32) {
        const __m128 d = _mm_set1_ps(quant_f16_to_f32(s_rd16(b)));
        for (int h = 0; h < 2; h++) {
            s_widen_i8(_mm_loadu_si128((const __m128i *)(b + 2 + 16 * h)), v);
            s_store16(v, d, d, false, y + 16 * h);
        }
    }
}

/* Nibbles of one block: byte j holds element j (low) and j + 16 (high). */
static void s_deq_nibbles(const uint8_t *q, __m128 d, __m128 m, bool add, int bias, float *y)
{
    const __m128i raw = _mm_loadu_si128((const __m128i *)q), mask = _mm_set1_epi8(0x0f),
                  vb = _mm_set1_epi32(bias);
    __m128i v[4];
    s_widen_u8(_mm_and_si128(raw, mask), vb, v);
    s_store16(v, d, m, add, y);
    s_widen_u8(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), vb, v);
    s_store16(v, d, m, add, y + 16);
}

static void s_deq_q4_0(const uint8_t *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, b += 18, y += 32) {
        const __m128 d = _mm_set1_ps(quant_f16_to_f32(s_rd16(b)));
        s_deq_nibbles(b + 2, d, d, false, 8, y);
    }
}

static void s_deq_q4_1(const uint8_t *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, b += 20, y += 32) {
        const __m128 d = _mm_set1_ps(quant_f16_to_f32(s_rd16(b))),
                     m = _mm_set1_ps(quant_f16_to_f32(s_rd16(b + 2)));
        s_deq_nibbles(b + 4, d, m, true, 0, y);
    }
}
#else
static void s_deq_q8_0(const uint8_t *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, b += 34, y += 32) {
        const float d = quant_f16_to_f32(s_rd16(b));
        const int8_t *q = (const int8_t *)(b + 2);
        for (int j = 0; j < 32; j++) y[j] = (float)q[j] * d;
    }
}

static void s_deq_q4_0(const uint8_t *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, b += 18, y += 32) {
        const float d = quant_f16_to_f32(s_rd16(b));
        const uint8_t *q = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((q[j] & 0x0f) - 8);
            y[j + 16] = d * (float)((q[j] >> 4) - 8);
        }
    }
}

static void s_deq_q4_1(const uint8_t *b, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, b += 20, y += 32) {
        const float d = quant_f16_to_f32(s_rd16(b)), m = quant_f16_to_f32(s_rd16(b + 2));
        const uint8_t *q = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(q[j] & 0x0f) + m;
            y[j + 16] = d * (float)(q[j] >> 4) + m;
        }
    }
}
#endif

/* The unchecked expansion behind quant_dequantize_row and the matmul panels. */
static void s_dequantize(uint32_t type, const uint8_t *src, float *dst, size_t n)
{
    switch (type) {
    case QUANT_F32:
        memcpy(dst, src, n * sizeof *dst);
        break;
    case QUANT_F16:
        for (size_t i = 0; i < n; i++) dst[i] = quant_f16_to_f32(s_rd16(src + 2 * i));
        break;
    case QUANT_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = quant_bf16_to_f32(s_rd16(src + 2 * i));
        break;
    case QUANT_Q8_0:
        s_deq_q8_0(src, dst, n / QUANT_BLOCK);
        break;
    case QUANT_Q4_0:
        s_deq_q4_0(src, dst, n / QUANT_BLOCK);
        break;
    case QUANT_Q4_1:
        s_deq_q4_1(src, dst, n / QUANT_BLOCK);
        break;
    }
}

/* Type supported and n a whole number of blocks; errors name the operation. */
static int s_check(const char *op, uint32_t type, size_t n)
{
    size_t block = 1;
    if (!quant_supported(type))
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: tensor type %s (%u) is not supported "
                               "(F32, F16, BF16, Q8_0, Q4_0, Q4_1 are)", op,
                               quant_type_name(type), type);
    quant_type_info(type, &block, NULL, NULL);
    if (n % block)
        return medfl_error_set(MEDFL_EINVAL, "%s: row length %zu is not a multiple of the "
                               "%s block size %zu", op, n, quant_type_name(type), block);
    return 0;
}

int quant_dequantize_row(uint32_t type, const void *src, float *dst, size_t n)
{
    if (s_check("dequantize", type, n) < 0) return -1;
    s_dequantize(type, src, dst, n);
    return 0;
}

/* ---------------------------------------------------------------- quantization */

/* Float -> code conversions that stay defined for NaN and infinities (a C cast of an
 * out-of-range float is undefined); finite inputs never reach the clamps except where
 * gguf-py clips too. */
static unsigned s_nibble(float v)
{
    if (!(v >= 0.0f)) return 0;
    return v >= 15.0f ? 15u : (unsigned)v;
}

static uint8_t s_int8(float r)
{
    if (!(r >= -128.0f)) return r != r ? 0 : (uint8_t)(int8_t)-128;
    return r > 127.0f ? 127 : (uint8_t)(int8_t)r;
}

static void s_q8_0(const float *x, uint8_t *b, size_t nb)
{
    for (size_t i = 0; i < nb; i++, x += 32, b += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        s_wr16(b, quant_f32_to_f16(d));
        for (int j = 0; j < 32; j++) b[2 + j] = s_int8(roundf(x[j] * id));
    }
}

static void s_q4_0(const float *x, uint8_t *b, size_t nb)
{
    for (size_t i = 0; i < nb; i++, x += 32, b += 18) {
        /* the first value of largest magnitude, sign kept (numpy's argmax) */
        float amax = fabsf(x[0]), max = x[0];
        for (int j = 1; j < 32; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        s_wr16(b, quant_f32_to_f16(d));
        for (int j = 0; j < 16; j++) {
            const float v0 = x[j] * id + 8.5f, v1 = x[j + 16] * id + 8.5f;
            b[2 + j] = (uint8_t)(s_nibble(v0) | s_nibble(v1) << 4);
        }
    }
}

static void s_q4_1(const float *x, uint8_t *b, size_t nb)
{
    for (size_t i = 0; i < nb; i++, x += 32, b += 20) {
        float min = x[0], max = x[0];
        for (int j = 1; j < 32; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        s_wr16(b, quant_f32_to_f16(d));
        s_wr16(b + 2, quant_f32_to_f16(min));
        for (int j = 0; j < 16; j++) {
            const float v0 = (x[j] - min) * id + 0.5f, v1 = (x[j + 16] - min) * id + 0.5f;
            b[4 + j] = (uint8_t)(s_nibble(v0) | s_nibble(v1) << 4);
        }
    }
}

int quant_quantize_row(uint32_t type, const float *src, void *dst, size_t n)
{
    if (s_check("quantize", type, n) < 0) return -1;
    uint8_t *d = dst;
    switch (type) {
    case QUANT_F32:
        memcpy(dst, src, n * sizeof *src);
        break;
    case QUANT_F16:
        for (size_t i = 0; i < n; i++) s_wr16(d + 2 * i, quant_f32_to_f16(src[i]));
        break;
    case QUANT_BF16:
        for (size_t i = 0; i < n; i++) s_wr16(d + 2 * i, quant_f32_to_bf16(src[i]));
        break;
    case QUANT_Q8_0:
        s_q8_0(src, d, n / QUANT_BLOCK);
        break;
    case QUANT_Q4_0:
        s_q4_0(src, d, n / QUANT_BLOCK);
        break;
    case QUANT_Q4_1:
        s_q4_1(src, d, n / QUANT_BLOCK);
        break;
    }
    return 0;
}

/* ---------------------------------------------------------------- de-quantizing matmul */

static size_t s_panel_rows(size_t cols_in)
{
    size_t rows = PANEL_BYTES / (cols_in * sizeof(float) + 1);
    if (rows < PANEL_MIN_ROWS) rows = PANEL_MIN_ROWS;
    return rows;
}

size_t quant_matmul_scratch_bytes(size_t cols_in)
{
    return s_panel_rows(cols_in) * cols_in * sizeof(float);
}

/* Shared checks of both matmuls: type, block multiple, BLAS's int dimensions. */
static int s_matmul_check(const char *op, uint32_t type, size_t rows_out, size_t cols_in,
                          size_t n_tokens)
{
    if (s_check(op, type, cols_in) < 0) return -1;
    if (rows_out > INT_MAX || cols_in > INT_MAX || n_tokens > INT_MAX)
        return medfl_error_set(MEDFL_EINVAL, "%s: dimensions %zu x %zu x %zu exceed BLAS's "
                               "int range", op, n_tokens, rows_out, cols_in);
    return 0;
}

/* A float32 weight that BLAS can read in place (no copy needed). */
static bool s_direct(uint32_t type, const void *W)
{
    return type == QUANT_F32 && ((uintptr_t)W % sizeof(float)) == 0;
}

int quant_matmul(uint32_t type, const void *W, size_t rows_out, size_t cols_in, const float *X,
                 size_t n_tokens, float *Y)
{
    if (s_matmul_check("quant_matmul", type, rows_out, cols_in, n_tokens) < 0) return -1;
    if (rows_out == 0 || n_tokens == 0) return 0;
    if (cols_in == 0) {
        memset(Y, 0, n_tokens * rows_out * sizeof *Y);
        return 0;
    }
    const int T = (int)n_tokens, O = (int)rows_out, K = (int)cols_in;
    if (s_direct(type, W)) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, O, K, 1.0f, X, K, W, K, 0.0f,
                    Y, O);
        return 0;
    }
    const size_t row_bytes = quant_row_bytes(type, cols_in);
    const uint8_t *w = W;
    if (n_tokens <= ROW_PATH_MAX_TOKENS) {
        float *row = malloc(cols_in * sizeof *row);
        if (!row) return medfl_error_set(MEDFL_ENOMEM, "quant_matmul: row scratch");
        for (size_t o = 0; o < rows_out; o++) {
            s_dequantize(type, w + o * row_bytes, row, cols_in);
            for (size_t t = 0; t < n_tokens; t++)
                Y[t * rows_out + o] = cblas_sdot(K, X + t * cols_in, 1, row, 1);
        }
        free(row);
        return 0;
    }
    const size_t panel = s_panel_rows(cols_in);
    float *scratch = malloc((panel < rows_out ? panel : rows_out) * cols_in * sizeof *scratch);
    if (!scratch) return medfl_error_set(MEDFL_ENOMEM, "quant_matmul: panel scratch");
    for (size_t r0 = 0; r0 < rows_out; r0 += panel) {
        const size_t nr = rows_out - r0 < panel ? rows_out - r0 : panel;
        for (size_t r = 0; r < nr; r++)
            s_dequantize(type, w + (r0 + r) * row_bytes, scratch + r * cols_in, cols_in);
        /* Y[:, r0:r0+nr] = X . panel^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)nr, K, 1.0f, X, K, scratch,
                    K, 0.0f, Y + r0, O);
    }
    free(scratch);
    return 0;
}

int quant_matmul_t(uint32_t type, const void *W, size_t rows_out, size_t cols_in,
                   const float *dY, size_t n_tokens, float *dX)
{
    if (s_matmul_check("quant_matmul_t", type, rows_out, cols_in, n_tokens) < 0) return -1;
    if (cols_in == 0 || n_tokens == 0) return 0;
    if (rows_out == 0) {
        memset(dX, 0, n_tokens * cols_in * sizeof *dX);
        return 0;
    }
    const int T = (int)n_tokens, O = (int)rows_out, K = (int)cols_in;
    if (s_direct(type, W)) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, K, O, 1.0f, dY, O, W, K, 0.0f,
                    dX, K);
        return 0;
    }
    const size_t row_bytes = quant_row_bytes(type, cols_in);
    const uint8_t *w = W;
    if (n_tokens <= ROW_PATH_MAX_TOKENS) {
        float *row = malloc(cols_in * sizeof *row);
        if (!row) return medfl_error_set(MEDFL_ENOMEM, "quant_matmul_t: row scratch");
        memset(dX, 0, n_tokens * cols_in * sizeof *dX);
        for (size_t o = 0; o < rows_out; o++) {
            s_dequantize(type, w + o * row_bytes, row, cols_in);
            for (size_t t = 0; t < n_tokens; t++)
                cblas_saxpy(K, dY[t * rows_out + o], row, 1, dX + t * cols_in, 1);
        }
        free(row);
        return 0;
    }
    const size_t panel = s_panel_rows(cols_in);
    float *scratch = malloc((panel < rows_out ? panel : rows_out) * cols_in * sizeof *scratch);
    if (!scratch) return medfl_error_set(MEDFL_ENOMEM, "quant_matmul_t: panel scratch");
    for (size_t r0 = 0; r0 < rows_out; r0 += panel) {
        const size_t nr = rows_out - r0 < panel ? rows_out - r0 : panel;
        for (size_t r = 0; r < nr; r++)
            s_dequantize(type, w + (r0 + r) * row_bytes, scratch + r * cols_in, cols_in);
        /* dX (+)= dY[:, r0:r0+nr] . panel */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, K, (int)nr, 1.0f, dY + r0, O,
                    scratch, K, r0 == 0 ? 0.0f : 1.0f, dX, K);
    }
    free(scratch);
    return 0;
}
