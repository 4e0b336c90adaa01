/* Quant blocks: the C quantizers are byte-identical to gguf-py's (llama.cpp's reference) on
 * rows full of rounding edge cases (tests/ref/fixtures/gguf/quant_ref.bin, written by
 * make_gguf_fixtures.py), de-quantization is bit-identical, fp16/bf16 conversions are exact
 * over all 65,536 halves, round-trip errors stay inside each format's bound, and the
 * de-quantizing matmul and its transpose equal a float64 product on the de-quantized weight
 * within 1e-5 of sum |x w| for odd shapes (several panels with a remainder; 1, 4, 5 and 37
 * tokens: the row path and the panels; unaligned F32). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/quant.h"
#include "tests/unit/testlib.h"

#define FIX "tests/ref/fixtures/gguf/"

static const uint32_t s_all[] = {QUANT_F32, QUANT_F16, QUANT_BF16, QUANT_Q8_0, QUANT_Q4_0,
                                 QUANT_Q4_1};

static float s_normal(uint64_t *st)
{
    double u1 = ((double)(testlib_rng(st) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(testlib_rng(st) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void test_type_table(void **state)
{
    (void)state;
    size_t bs, ts;
    const char *name;
    assert_true(quant_type_info(QUANT_Q4_1, &bs, &ts, &name));
    assert_int_equal(bs, 32);
    assert_int_equal(ts, 20);
    assert_string_equal(name, "Q4_1");
    assert_true(quant_type_info(12, &bs, &ts, &name)); /* Q4_K: known, not computable */
    assert_int_equal(bs, 256);
    assert_int_equal(ts, 144);
    assert_false(quant_supported(12));
    assert_false(quant_type_info(4, NULL, NULL, NULL)); /* removed Q4_2 */
    assert_false(quant_type_info(1000, NULL, NULL, NULL));
    assert_string_equal(quant_type_name(1000), "unknown");
    assert_int_equal(quant_row_bytes(QUANT_Q4_1, 576), 18 * 20);
    assert_int_equal(quant_row_bytes(QUANT_Q8_0, 1536), 48 * 34);
    assert_int_equal(quant_row_bytes(QUANT_Q4_0, 64), 36);
    assert_int_equal(quant_row_bytes(QUANT_F16, 7), 14);
    assert_int_equal(quant_row_bytes(QUANT_BF16, 3), 6);
    assert_int_equal(quant_row_bytes(QUANT_F32, 5), 20);
    assert_int_equal(quant_row_bytes(QUANT_Q8_0, 33), 0);
    assert_int_equal(quant_row_bytes(77, 32), 0);
    for (size_t i = 0; i < sizeof s_all / sizeof s_all[0]; i++) assert_true(quant_supported(s_all[i]));

    float out[64];
    uint8_t raw[64 * 4] = {0};
    assert_int_equal(quant_dequantize_row(QUANT_Q8_0, raw, out, 33), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_non_null(strstr(medfl_error_message(), "row length 33 is not a multiple of the Q8_0 "
                                                  "block size 32"));
    assert_int_equal(quant_quantize_row(14, out, raw, 256), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EUNSUPPORTED);
    assert_non_null(strstr(medfl_error_message(), "Q6_K (14) is not supported"));
}

static void test_half_conversions(void **state)
{
    (void)state;
    /* every half converts to float and back to itself (NaNs stay NaN) */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = quant_f16_to_f32((uint16_t)h);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
            assert_true(isnan(f));
            assert_true(isnan(quant_f16_to_f32(quant_f32_to_f16(f))));
            continue;
        }
        if (quant_f32_to_f16(f) != h) fail_msg("half 0x%04x -> %g -> 0x%04x", h, f, quant_f32_to_f16(f));
        /* and bf16: every bf16 is a float whose low half is zero */
        float g = quant_bf16_to_f32((uint16_t)h);
        if ((h & 0x7f80) != 0x7f80 || !(h & 0x7f))
            assert_int_equal(quant_f32_to_bf16(g), h);
    }
    /* rounding: ties to even, overflow, subnormals */
    assert_int_equal(quant_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(quant_f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(quant_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(quant_f32_to_f16(-1e10f), 0xfc00);
    assert_int_equal(quant_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);        /* tie -> even */
    assert_int_equal(quant_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);    /* tie -> even (up) */
    assert_int_equal(quant_f32_to_f16(0x1p-24f), 0x0001);
    assert_int_equal(quant_f32_to_f16(0x1p-25f), 0x0000);               /* tie -> even (0) */
    assert_int_equal(quant_f32_to_f16(0x1.8p-24f), 0x0002);             /* 1.5 ulp -> 2 */
    assert_int_equal(quant_f32_to_f16(-0.0f), 0x8000);
    assert_int_equal(quant_f32_to_f16(0x1.ffcp-15f), 0x0400);           /* rounds up to normal */
    assert_int_equal(quant_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);        /* tie -> even */
    assert_int_equal(quant_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    assert_int_equal(quant_f32_to_bf16(NAN) & 0x7fc0, 0x7fc0);
}

/* quant_ref.bin: input rows and gguf-py's encodings and decodings of them. */
static void test_matches_gguf_py(void **state)
{
    (void)state;
    FILE *f = fopen(FIX "quant_ref.bin", "rb");
    assert_non_null(f);
    char magic[8];
    uint32_t dims[2];
    assert_int_equal(fread(magic, 1, 8, f), 8);
    assert_memory_equal(magic, "MQREF1\0\0", 8);
    assert_int_equal(fread(dims, 4, 2, f), 2);
    const size_t R = dims[0], N = dims[1];
    float *x = malloc(R * N * 4), *want = malloc(R * N * 4), *got = malloc(R * N * 4);
    assert_int_equal(fread(x, 4, R * N, f), R * N);
    int types_seen = 0;
    uint32_t th[2];
    while (fread(th, 4, 2, f) == 2) {
        const uint32_t type = th[0];
        const size_t nbytes = th[1], rb = quant_row_bytes(type, N);
        assert_int_equal(nbytes, rb * R);
        uint8_t *ref = malloc(nbytes), *mine = malloc(nbytes);
        assert_int_equal(fread(ref, 1, nbytes, f), nbytes);
        assert_int_equal(fread(want, 4, R * N, f), R * N);
        for (size_t r = 0; r < R; r++) {
            assert_int_equal(quant_quantize_row(type, x + r * N, mine + r * rb, N), 0);
            for (size_t k = 0; k < rb; k++)
                if (mine[r * rb + k] != ref[r * rb + k])
                    fail_msg("%s row %zu byte %zu: 0x%02x != gguf-py 0x%02x", quant_type_name(type),
                             r, k, mine[r * rb + k], ref[r * rb + k]);
            assert_int_equal(quant_dequantize_row(type, ref + r * rb, got + r * N, N), 0);
        }
        for (size_t i = 0; i < R * N; i++)
            if (memcmp(&got[i], &want[i], 4) != 0)
                fail_msg("%s value %zu: %.9g != gguf-py %.9g", quant_type_name(type), i, got[i],
                         want[i]);
        free(ref);
        free(mine);
        types_seen++;
    }
    assert_int_equal(types_seen, 5);
    fclose(f);
    free(x);
    free(want);
    free(got);
}

/* Quantize -> de-quantize error inside each format's bound, block by block. */
static void test_round_trip_bounds(void **state)
{
    (void)state;
    uint64_t st = 42;
    enum { N = 4096 };
    float *x = malloc(N * 4), *y = malloc(N * 4);
    uint8_t *q = malloc(N * 4);
    for (int i = 0; i < N; i++) x[i] = s_normal(&st) * (i % 512 < 256 ? 1.0f : 0.01f) + (i % 97 == 0 ? 3.0f : 0.0f);
    for (size_t t = 0; t < sizeof s_all / sizeof s_all[0]; t++) {
        uint32_t type = s_all[t];
        assert_int_equal(quant_quantize_row(type, x, q, N), 0);
        assert_int_equal(quant_dequantize_row(type, q, y, N), 0);
        for (int b = 0; b < N / 32; b++) {
            float amax = 0, mn = x[b * 32], mx = x[b * 32];
            for (int j = 0; j < 32; j++) {
                amax = fmaxf(amax, fabsf(x[b * 32 + j]));
                mn = fminf(mn, x[b * 32 + j]);
                mx = fmaxf(mx, x[b * 32 + j]);
            }
            for (int j = 0; j < 32; j++) {
                float v = x[b * 32 + j], err = fabsf(y[b * 32 + j] - v), bound;
                switch (type) {
                case QUANT_F32: bound = 0; break;
                case QUANT_F16: bound = fabsf(v) * 0x1p-11f + 0x1p-25f; break;
                case QUANT_BF16: bound = fabsf(v) * 0x1p-8f; break;
                /* half a step, plus the fp16 rounding of the scale times the code */
                case QUANT_Q8_0: bound = amax / 127 * (0.5f + 127 * 0x1p-11f) + 1e-30f; break;
                /* the value of largest magnitude's opposite clips to 7 steps: one step */
                case QUANT_Q4_0: bound = amax / 8 * (1.0f + 8 * 0x1p-11f) + 1e-30f; break;
                default: bound = (mx - mn) / 15 * (0.5f + 15 * 0x1p-11f) + fabsf(mn) * 0x1p-11f + 1e-30f;
                }
                if (err > bound * 1.0001f)
                    fail_msg("%s block %d value %d: error %g > bound %g", quant_type_name(type), b,
                             j, err, bound);
            }
        }
    }
    free(x);
    free(y);
    free(q);
}

/* Reference: Y = X . Wd^T in float64 and the scale sum |x||w| of each output. */
static void s_ref(const float *Wd, size_t O, size_t I, const float *X, size_t T, double *Y,
                  double *scale)
{
    for (size_t t = 0; t < T; t++)
        for (size_t o = 0; o < O; o++) {
            double s = 0, a = 0;
            for (size_t i = 0; i < I; i++) {
                s += (double)X[t * I + i] * Wd[o * I + i];
                a += fabs((double)X[t * I + i] * Wd[o * I + i]);
            }
            Y[t * O + o] = s;
            scale[t * O + o] = a;
        }
}

static void s_ref_t(const float *Wd, size_t O, size_t I, const float *dY, size_t T, double *dX,
                    double *scale)
{
    for (size_t t = 0; t < T; t++)
        for (size_t i = 0; i < I; i++) {
            double s = 0, a = 0;
            for (size_t o = 0; o < O; o++) {
                s += (double)dY[t * O + o] * Wd[o * I + i];
                a += fabs((double)dY[t * O + o] * Wd[o * I + i]);
            }
            dX[t * I + i] = s;
            scale[t * I + i] = a;
        }
}

static void s_close(const char *what, uint32_t type, const float *got, const double *want,
                    const double *scale, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (fabs(got[k] - want[k]) > 1e-5 * scale[k] + 1e-30)
            fail_msg("%s %s: element %zu: %.9g vs %.9g (scale %g)", what, quant_type_name(type), k,
                     got[k], want[k], scale[k]);
}

static void test_matmul(void **state)
{
    (void)state;
    /* (rows_out, cols_in): several panels with a remainder at 576 and 1536 columns */
    const size_t shapes[][2] = {{37, 64}, {300, 576}, {100, 1536}, {1, 32}, {192, 576}};
    const size_t tokens[] = {1, 4, 5, 37}; /* row path up to 4, panels above */
    uint64_t st = 7;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const size_t O = shapes[s][0], I = shapes[s][1];
        float *W = malloc(O * I * 4), *Wd = malloc(O * I * 4);
        uint8_t *Wq = malloc(O * I * 4 + 4);
        for (size_t k = 0; k < O * I; k++) W[k] = s_normal(&st) * 0.05f;
        for (size_t t = 0; t < sizeof s_all / sizeof s_all[0]; t++) {
            const uint32_t type = s_all[t];
            const size_t rb = quant_row_bytes(type, I);
            /* F32 once unaligned (+2 bytes): the panel path instead of sgemm in place */
            uint8_t *wq = Wq + (type == QUANT_F32 && s % 2 ? 2 : 0);
            for (size_t o = 0; o < O; o++) {
                assert_int_equal(quant_quantize_row(type, W + o * I, wq + o * rb, I), 0);
                assert_int_equal(quant_dequantize_row(type, wq + o * rb, Wd + o * I, I), 0);
            }
            for (size_t nt = 0; nt < sizeof tokens / sizeof tokens[0]; nt++) {
                const size_t T = tokens[nt];
                float *X = malloc(T * I * 4), *Y = malloc(T * O * 4), *dY = malloc(T * O * 4),
                      *dX = malloc(T * I * 4);
                double *ref = malloc((T * (O > I ? O : I)) * 8), *sc = malloc((T * (O > I ? O : I)) * 8);
                for (size_t k = 0; k < T * I; k++) X[k] = s_normal(&st);
                for (size_t k = 0; k < T * O; k++) dY[k] = s_normal(&st);
                for (size_t k = 0; k < T * O; k++) Y[k] = NAN; /* must be overwritten */
                for (size_t k = 0; k < T * I; k++) dX[k] = NAN;
                assert_int_equal(quant_matmul(type, wq, O, I, X, T, Y), 0);
                s_ref(Wd, O, I, X, T, ref, sc);
                s_close("quant_matmul", type, Y, ref, sc, T * O);
                assert_int_equal(quant_matmul_t(type, wq, O, I, dY, T, dX), 0);
                s_ref_t(Wd, O, I, dY, T, ref, sc);
                s_close("quant_matmul_t", type, dX, ref, sc, T * I);
                free(X);
                free(Y);
                free(dY);
                free(dX);
                free(ref);
                free(sc);
            }
        }
        free(W);
        free(Wd);
        free(Wq);
    }
    /* the scratch stays small whatever the matrix */
    assert_true(quant_matmul_scratch_bytes(576) <= 256 * 1024);
    assert_true(quant_matmul_scratch_bytes(1536) <= 256 * 1024);
    assert_true(quant_matmul_scratch_bytes(1536) >= 16 * 1536 * 4);

    float X[64] = {0}, Y[4];
    uint8_t W[4 * 144] = {0};
    assert_int_equal(quant_matmul(12, W, 2, 256, X, 1, Y), -1);
    assert_non_null(strstr(medfl_error_message(), "quant_matmul: tensor type Q4_K (12) is not "
                                                  "supported"));
    assert_int_equal(quant_matmul_t(QUANT_Q4_0, W, 2, 48, X, 1, Y), -1);
    assert_non_null(strstr(medfl_error_message(), "quant_matmul_t: row length 48 is not a "
                                                  "multiple of the Q4_0 block size 32"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_half_conversions),
        cmocka_unit_test(test_matches_gguf_py),
        cmocka_unit_test(test_round_trip_bounds),
        cmocka_unit_test(test_matmul),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
