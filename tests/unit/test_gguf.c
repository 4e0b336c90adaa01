/* GGUF reader: files written by gguf-py (tests/ref/make_gguf_fixtures.py) read back with
 * every metadata value and every tensor equal to what gguf-py's own reader and dequantize
 * give; hostile files (every truncation point, wrong magic and version, unknown types, absurd
 * counts and lengths, bad dimensions, offsets past the end / misaligned / overlapping,
 * duplicates) fail with an error naming the file and the field, key or tensor, never a value
 * and never a crash (this binary also runs under SANITIZE=1). The real SmolLM2-135M GGUF is
 * checked when the real model is present (testlib_smollm2_gguf). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "node/engine/gguf.h"
#include "node/engine/quant.h"
#include "tests/unit/testlib.h"

#define FIX "tests/ref/fixtures/gguf/"

static uint8_t *s_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static cJSON *s_json(const char *path)
{
    size_t n;
    char *buf = (char *)s_slurp(path, &n);
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    assert_non_null(j);
    return j;
}

static float s_jfloat(const cJSON *v)
{
    if (cJSON_IsString(v)) return strtof(v->valuestring, NULL); /* "inf", "-inf", "nan" */
    return (float)v->valuedouble;
}

/* The error message contains each of the needles. */
static void s_assert_msg(const char *needle1, const char *needle2)
{
    const char *m = medfl_error_message();
    if (!strstr(m, needle1) || (needle2 && !strstr(m, needle2)))
        fail_msg("error message '%s' lacks '%s' / '%s'", m, needle1, needle2 ? needle2 : "");
}

/* ------------------------------------------------------------------ tiny.gguf: metadata */

static void test_tiny_metadata(void **state)
{
    (void)state;
    gguf_t *g = gguf_open(FIX "tiny.gguf");
    assert_non_null(g);
    assert_int_equal(gguf_version(g), 3);
    assert_int_equal(gguf_alignment(g), 32);
    cJSON *ref = s_json(FIX "tiny.json");
    const cJSON *keys = cJSON_GetObjectItem(ref, "keys");
    assert_int_equal(gguf_kv_count(g), (size_t)cJSON_GetArraySize(keys));
    for (int i = 0; i < cJSON_GetArraySize(keys); i++) {
        const char *k = cJSON_GetArrayItem(keys, i)->valuestring;
        assert_string_equal(gguf_kv_key(g, (size_t)i), k);
        assert_int_equal(gguf_find_key(g, k), i);
    }
    cJSON_Delete(ref);
    assert_int_equal(gguf_find_key(g, "no.such.key"), -1);

    const char *s;
    size_t len;
    assert_int_equal(gguf_get_str(g, "general.architecture", &s, &len), 0);
    assert_string_equal(s, "llama");
    assert_int_equal(len, 5);
    assert_int_equal(gguf_get_str(g, "test.str", &s, &len), 0);
    assert_string_equal(s, "Grüße, 世界 🩺");
    assert_int_equal(len, strlen("Grüße, 世界 🩺"));
    assert_int_equal(gguf_get_str(g, "test.empty_str", &s, NULL), 0);
    assert_string_equal(s, "");

    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    bool b;
    assert_int_equal(gguf_get_u32(g, "test.u8", &u32), 0);
    assert_int_equal(u32, 200);
    assert_int_equal(gguf_get_i32(g, "test.i8", &i32), 0);
    assert_int_equal(i32, -100);
    assert_int_equal(gguf_get_u32(g, "test.u16", &u32), 0);
    assert_int_equal(u32, 60000);
    assert_int_equal(gguf_get_i32(g, "test.i16", &i32), 0);
    assert_int_equal(i32, -30000);
    assert_int_equal(gguf_get_u32(g, "test.u32", &u32), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(gguf_get_i32(g, "test.i32", &i32), 0);
    assert_int_equal(i32, -2000000000);
    assert_int_equal(gguf_get_u64(g, "test.u64", &u64), 0);
    assert_true(u64 == (1ull << 63) + 5);
    assert_int_equal(gguf_get_i64(g, "test.i64", &i64), 0);
    assert_true(i64 == -(1ll << 62) - 3);
    assert_int_equal(gguf_get_i64(g, "test.i32", &i64), 0); /* widening */
    assert_true(i64 == -2000000000);
    assert_int_equal(gguf_get_f32(g, "test.f32", &f32), 0);
    assert_true(f32 == 0.15625f);
    assert_int_equal(gguf_get_f64(g, "test.f64", &f64), 0);
    assert_true(f64 == -1.0e-300);
    assert_int_equal(gguf_get_f64(g, "test.f32", &f64), 0);
    assert_true(f64 == 0.15625);
    assert_int_equal(gguf_get_bool(g, "test.bool_true", &b), 0);
    assert_true(b);
    assert_int_equal(gguf_get_bool(g, "test.bool_false", &b), 0);
    assert_false(b);
    assert_int_equal(gguf_get_u32(g, "llama.block_count", &u32), 0);
    assert_int_equal(u32, 2);

    /* missing, wrong type, out of range: errors name the key and the expectation, no value */
    assert_int_equal(gguf_get_u32(g, "llama.context_length", &u32), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    s_assert_msg("tiny.gguf: metadata key 'llama.context_length' (uint32) is missing", NULL);
    assert_int_equal(gguf_get_u32(g, "test.str", &u32), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    s_assert_msg("'test.str' is a string, expected uint32", NULL);
    assert_null(strstr(medfl_error_message(), "Grüße"));
    assert_int_equal(gguf_get_u32(g, "test.i8", &u32), -1);
    s_assert_msg("'test.i8' is out of range for uint32", NULL);
    assert_int_equal(gguf_get_i32(g, "test.u32", &i32), -1);
    s_assert_msg("'test.u32' is out of range for int32", NULL);
    assert_int_equal(gguf_get_i64(g, "test.u64", &i64), -1);
    s_assert_msg("'test.u64' is out of range for int64", NULL);
    assert_int_equal(gguf_get_f32(g, "test.f64", &f32), -1);
    s_assert_msg("'test.f64' is a float64, expected float32", NULL);
    assert_int_equal(gguf_get_bool(g, "test.u8", &b), -1);
    s_assert_msg("'test.u8' is a uint8, expected bool", NULL);
    assert_int_equal(gguf_get_str(g, "test.arr_str", &s, NULL), -1);
    s_assert_msg("'test.arr_str' is a array, expected string", NULL);
    gguf_destroy(&g);
    assert_null(g);
    gguf_destroy(&g); /* idempotent */
}

static void test_tiny_arrays(void **state)
{
    (void)state;
    gguf_t *g = gguf_open(FIX "tiny.gguf");
    assert_non_null(g);
    gguf_vtype_t et;
    uint64_t n;
    uint8_t u8[3];
    int32_t i32[3];
    uint64_t u64[2];
    float f32[3];
    uint8_t bo[3];
    assert_int_equal(gguf_get_arr(g, "test.arr_u8", &et, &n), 0);
    assert_int_equal(et, GGUF_UINT8);
    assert_int_equal(n, 3);
    assert_int_equal(gguf_get_arr_data(g, "test.arr_u8", GGUF_UINT8, u8, 3), 0);
    assert_int_equal(u8[0], 1);
    assert_int_equal(u8[2], 250);
    assert_int_equal(gguf_get_arr_data(g, "test.arr_i32", GGUF_INT32, i32, 3), 0);
    assert_int_equal(i32[1], -8);
    assert_int_equal(i32[2], 2147483647);
    assert_int_equal(gguf_get_arr_data(g, "test.arr_u64", GGUF_UINT64, u64, 2), 0);
    assert_true(u64[1] == UINT64_MAX);
    assert_int_equal(gguf_get_arr_data(g, "test.arr_f32", GGUF_FLOAT32, f32, 3), 0);
    assert_true(f32[0] == 0.5f && f32[1] == -1.25f && f32[2] == 3.0e38f);
    assert_int_equal(gguf_get_arr_data(g, "test.arr_bool", GGUF_BOOL, bo, 3), 0);
    assert_true(bo[0] == 1 && bo[1] == 0 && bo[2] == 1);

    const char *want[] = {"a", "", "ĠHello", "Ġ Ġ", "<|im_start|>", "日本"};
    assert_int_equal(gguf_get_arr(g, "test.arr_str", &et, &n), 0);
    assert_int_equal(et, GGUF_STRING);
    assert_int_equal(n, 6);
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        assert_int_equal(gguf_get_arr_str(g, "test.arr_str", i, &s, &len), 0);
        assert_int_equal(len, strlen(want[i]));
        assert_memory_equal(s, want[i], len);
    }
    const char *s;
    size_t len;
    assert_int_equal(gguf_get_arr_str(g, "test.arr_str", 6, &s, &len), -1);
    s_assert_msg("'test.arr_str': element 6 of 6", NULL);
    assert_int_equal(gguf_get_arr(g, "test.arr_nested", &et, &n), 0);
    assert_int_equal(et, GGUF_ARRAY);
    assert_int_equal(n, 2);

    /* wrong element type, wrong count, strings through the numeric getter, not an array */
    assert_int_equal(gguf_get_arr_data(g, "test.arr_i32", GGUF_UINT32, i32, 3), -1);
    s_assert_msg("'test.arr_i32' is an array of int32, expected array of uint32", NULL);
    assert_int_equal(gguf_get_arr_data(g, "test.arr_i32", GGUF_INT32, i32, 2), -1);
    s_assert_msg("'test.arr_i32' has 3 elements, expected 2", NULL);
    assert_int_equal(gguf_get_arr_data(g, "test.arr_str", GGUF_STRING, i32, 6), -1);
    s_assert_msg("not string", NULL);
    assert_int_equal(gguf_get_arr_str(g, "test.arr_nested", 0, &s, &len), -1);
    s_assert_msg("array of array, expected array of string", NULL);
    assert_int_equal(gguf_get_arr(g, "test.u8", &et, &n), -1);
    s_assert_msg("'test.u8' is a uint8, expected array", NULL);
    assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    s_assert_msg("'tokenizer.ggml.merges' (array) is missing", NULL);
    gguf_destroy(&g);
}

/* ------------------------------------------------------------------ tiny.gguf: tensors */

/* Every tensor of a file equals tiny.json's gguf-py de-quantization, bit for bit. */
static void s_check_tensors(const gguf_t *g, const cJSON *tensors)
{
    assert_int_equal(gguf_tensor_count(g), (size_t)cJSON_GetArraySize(tensors));
    for (int i = 0; i < cJSON_GetArraySize(tensors); i++) {
        const cJSON *r = cJSON_GetArrayItem(tensors, i);
        const char *name = cJSON_GetObjectItem(r, "name")->valuestring;
        const gguf_tensor_t *t = gguf_tensor_at(g, (size_t)i);
        assert_non_null(t);
        assert_string_equal(t->name, name);
        assert_ptr_equal(gguf_find_tensor(g, name), t);
        assert_ptr_equal(gguf_get_tensor(g, name), t);
        assert_int_equal(t->type, cJSON_GetObjectItem(r, "type")->valueint);
        const cJSON *ne = cJSON_GetObjectItem(r, "ne");
        assert_int_equal(t->n_dims, cJSON_GetArraySize(ne));
        uint64_t n_el = 1;
        for (int d = 0; d < t->n_dims; d++) {
            assert_int_equal(t->ne[d], (uint64_t)cJSON_GetArrayItem(ne, d)->valueint);
            n_el *= t->ne[d];
        }
        assert_int_equal(t->n_elements, n_el);
        assert_int_equal(t->offset % gguf_alignment(g), 0);
        assert_int_equal(t->n_bytes, quant_row_bytes(t->type, t->ne[0]) * gguf_tensor_rows(t));
        const cJSON *vals = cJSON_GetObjectItem(r, "values");
        assert_int_equal((uint64_t)cJSON_GetArraySize(vals), n_el);
        float *row = malloc(t->ne[0] * sizeof *row);
        size_t rb = quant_row_bytes(t->type, t->ne[0]);
        for (uint64_t rr = 0; rr < gguf_tensor_rows(t); rr++) {
            assert_int_equal(quant_dequantize_row(t->type, (const uint8_t *)t->data + rr * rb,
                                                  row, t->ne[0]), 0);
            for (uint64_t c = 0; c < t->ne[0]; c++) {
                float want = s_jfloat(cJSON_GetArrayItem(vals, (int)(rr * t->ne[0] + c)));
                if (memcmp(&want, &row[c], 4) != 0)
                    fail_msg("tensor %s row %llu col %llu: %.9g != gguf-py %.9g", name,
                             (unsigned long long)rr, (unsigned long long)c, row[c], want);
            }
        }
        free(row);
    }
}

static void test_tiny_tensors(void **state)
{
    (void)state;
    gguf_t *g = gguf_open(FIX "tiny.gguf");
    assert_non_null(g);
    cJSON *ref = s_json(FIX "tiny.json");
    s_check_tensors(g, cJSON_GetObjectItem(ref, "tensors"));
    for (size_t i = 0; i < gguf_tensor_count(g); i++) /* mapped: page-aligned base */
        assert_int_equal((uintptr_t)gguf_tensor_at(g, i)->data % 32, 0);
    const gguf_tensor_t *t = gguf_find_tensor(g, "q4_1");
    assert_int_equal(t->type, QUANT_Q4_1);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 7);
    assert_int_equal(gguf_tensor_rows(t), 7);
    assert_int_equal(t->n_bytes, 7 * 2 * 20);
    assert_null(gguf_find_tensor(g, "nope"));
    assert_null(gguf_get_tensor(g, "nope"));
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    s_assert_msg("tiny.gguf: tensor 'nope' not found", NULL);
    assert_null(gguf_tensor_at(g, 99));
    gguf_destroy(&g);

    /* version 2 has the same layout (little-endian, 64-bit counts) */
    size_t len;
    uint8_t *buf = s_slurp(FIX "tiny.gguf", &len);
    buf[4] = 2;
    g = gguf_parse(buf, len, "v2");
    assert_non_null(g);
    assert_int_equal(gguf_version(g), 2);
    s_check_tensors(g, cJSON_GetObjectItem(ref, "tensors"));
    gguf_destroy(&g);
    free(buf);
    cJSON_Delete(ref);
}

static void test_custom_alignment(void **state)
{
    (void)state;
    gguf_t *g = gguf_open(FIX "align64.gguf");
    assert_non_null(g);
    assert_int_equal(gguf_alignment(g), 64);
    const gguf_tensor_t *a = gguf_get_tensor(g, "a"), *b = gguf_get_tensor(g, "b");
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->offset % 64, 0);
    assert_int_equal(b->offset % 64, 0);
    assert_true(b->offset >= a->offset + 64);
    float av[5], bv[64];
    assert_int_equal(quant_dequantize_row(a->type, a->data, av, 5), 0);
    for (int i = 0; i < 5; i++) assert_true(av[i] == (float)i);
    assert_int_equal(b->type, QUANT_Q8_0);
    assert_int_equal(quant_dequantize_row(b->type, b->data, bv, 64), 0);
    for (int i = 0; i < 64; i++) assert_true(fabsf(bv[i] - (-1.0f + 2.0f * i / 63.0f)) < 0.005f);
    gguf_destroy(&g);
}

/* ------------------------------------------------------------------ hostile input */

static void test_truncated_everywhere(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = s_slurp(FIX "tiny.gguf", &len);
    gguf_t *g = gguf_parse(buf, len, "cut.gguf");
    assert_non_null(g);
    size_t data_end = 0; /* end of the last tensor's data: the file's padding may go */
    for (size_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        if (t->offset + t->n_bytes > data_end) data_end = t->offset + t->n_bytes;
    }
    gguf_destroy(&g);
    assert_true(data_end > 1000 && data_end <= len);
    for (size_t cut = 0; cut < len; cut++) {
        /* a private copy so that ASan sees any read past the cut */
        uint8_t *part = malloc(cut ? cut : 1);
        memcpy(part, buf, cut);
        medfl_error_clear();
        g = gguf_parse(part, cut, "cut.gguf");
        if (cut >= data_end) {
            if (!g) fail_msg("cut at %zu (after the data): %s", cut, medfl_error_message());
            gguf_destroy(&g);
        } else {
            if (g) fail_msg("cut at %zu parsed", cut);
            const char *m = medfl_error_message();
            if (strncmp(m, "cut.gguf: ", 10) != 0 ||
                (!strstr(m, "truncated at byte") && !strstr(m, "past the end of the file") &&
                 !strstr(m, "more than the")))
                fail_msg("cut at %zu: unclear error '%s'", cut, m);
        }
        free(part);
    }
    free(buf);
}

/* A growable byte buffer to craft files. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} bytes_t;

static void b_put(bytes_t *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void b_u32(bytes_t *b, uint32_t v) { b_put(b, &v, 4); }
static void b_u64(bytes_t *b, uint64_t v) { b_put(b, &v, 8); }

static void b_str(bytes_t *b, const char *s)
{
    b_u64(b, strlen(s));
    b_put(b, s, strlen(s));
}

static void b_header(bytes_t *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    b->n = 0;
    b_put(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}

static void b_kv_u32(bytes_t *b, const char *key, uint32_t v)
{
    b_str(b, key);
    b_u32(b, GGUF_UINT32);
    b_u32(b, v);
}

/* A tensor info: name, dims (n_dims of them), type, offset. */
static void b_tensor(bytes_t *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                     uint32_t type, uint64_t offset)
{
    b_str(b, name);
    b_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) b_u64(b, ne[d]);
    b_u32(b, type);
    b_u64(b, offset);
}

/* Pads to `align` and appends n zero bytes of data. */
static void b_data(bytes_t *b, size_t align, size_t n)
{
    static const uint8_t zero[4096];
    while (b->n % align) b_put(b, zero, 1);
    while (n) {
        size_t k = n < sizeof zero ? n : sizeof zero;
        b_put(b, zero, k);
        n -= k;
    }
}

/* The file must be refused with an error naming it and containing both needles. */
static void s_refused(bytes_t *b, const char *needle1, const char *needle2)
{
    uint8_t *copy = malloc(b->n ? b->n : 1); /* exact size: ASan catches over-reads */
    memcpy(copy, b->p, b->n);
    medfl_error_clear();
    gguf_t *g = gguf_parse(copy, b->n, "bad.gguf");
    if (g) fail_msg("accepted a file that should fail with '%s'", needle1);
    if (strncmp(medfl_error_message(), "bad.gguf: ", 10) != 0)
        fail_msg("error does not name the file: '%s'", medfl_error_message());
    s_assert_msg(needle1, needle2);
    free(copy);
}

static void s_accepted(bytes_t *b)
{
    gguf_t *g = gguf_parse(b->p, b->n, "good.gguf");
    if (!g) fail_msg("refused a valid file: %s", medfl_error_message());
    gguf_destroy(&g);
}

static void test_hostile_headers(void **state)
{
    (void)state;
    bytes_t b = {0};
    const uint64_t ne64[] = {64, 2};

    /* baseline: a valid one-tensor file, so each case below differs by one thing */
    b_header(&b, 3, 1, 1);
    b_kv_u32(&b, "general.quantization_version", 2);
    b_tensor(&b, "w", 2, ne64, QUANT_Q8_0, 0);
    b_data(&b, 32, 2 * 2 * 34);
    s_accepted(&b);

    b_header(&b, 3, 0, 0);
    b.p[0] = 'G', b.p[1] = 'G', b.p[2] = 'M', b.p[3] = 'L';
    s_refused(&b, "wrong magic", NULL);
    b_header(&b, 1, 0, 0);
    s_refused(&b, "GGUF version 1", "not supported");
    b_header(&b, 7, 0, 0);
    s_refused(&b, "unsupported GGUF version 7", NULL);
    b_header(&b, 0x03000000u, 0, 0);
    s_refused(&b, "big-endian", NULL);
    b.n = 3;
    s_refused(&b, "truncated at byte 0 reading the magic", NULL);

    /* absurd counts */
    b_header(&b, 3, 0, 1ull << 62);
    s_refused(&b, "the metadata count", "more than");
    b_header(&b, 3, UINT64_MAX, 0);
    s_refused(&b, "the tensor count", "more than");

    /* keys */
    b_header(&b, 3, 0, 1);
    b_u64(&b, 1ull << 63);
    b_data(&b, 1, 16);
    s_refused(&b, "the key of metadata entry 0", "at most 65535");
    b_header(&b, 3, 0, 1);
    b_u64(&b, 1000);
    b_put(&b, "abcdefghij", 10);
    s_refused(&b, "truncated at byte 32 reading the key of metadata entry 0", "1000 bytes announced");
    b_header(&b, 3, 0, 1);
    b_str(&b, "");
    b_u32(&b, GGUF_UINT8);
    b_put(&b, "\1", 1);
    s_refused(&b, "metadata entry 0", "empty");
    b_header(&b, 3, 0, 1);
    b_str(&b, "bad\nkey");
    b_u32(&b, GGUF_UINT8);
    b_put(&b, "\1", 1);
    s_refused(&b, "metadata entry 0", "not printable ASCII");
    b_header(&b, 3, 0, 2);
    b_kv_u32(&b, "a.b", 1);
    b_kv_u32(&b, "a.b", 2);
    s_refused(&b, "duplicate metadata key 'a.b'", NULL);

    /* values */
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, 13);
    b_u32(&b, 0);
    s_refused(&b, "key 'k'", "unknown value type 13");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_BOOL);
    b_put(&b, "\2", 1);
    s_refused(&b, "bool of key 'k'", "neither 0 nor 1");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_UINT64);
    b_u32(&b, 5);
    s_refused(&b, "truncated at byte", "the uint64 value of key 'k'");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_STRING);
    b_u64(&b, (1ull << 63) + 1);
    s_refused(&b, "a string of key 'k'", "bytes announced");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_ARRAY);
    b_u32(&b, GGUF_UINT32);
    b_u64(&b, 1ull << 60);
    s_refused(&b, "array 'k'", "announces");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_ARRAY);
    b_u32(&b, 77);
    s_refused(&b, "array 'k'", "unknown element type 77");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_ARRAY);
    b_u32(&b, GGUF_STRING);
    b_u64(&b, 2);
    b_str(&b, "ok");
    b_u64(&b, 999);
    s_refused(&b, "string 1 of array 'k'", "999 bytes announced");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_ARRAY);
    b_u32(&b, GGUF_BOOL);
    b_u64(&b, 3);
    b_put(&b, "\1\0\7", 3);
    s_refused(&b, "bool of key 'k'", "neither 0 nor 1");
    /* arrays of arrays 9 deep */
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, GGUF_ARRAY);
    for (int d = 0; d < 9; d++) {
        b_u32(&b, GGUF_ARRAY);
        b_u64(&b, 1);
    }
    b_u32(&b, GGUF_UINT8);
    b_u64(&b, 0);
    s_refused(&b, "array 'k'", "nests arrays more than 8 deep");

    /* general.alignment */
    b_header(&b, 3, 0, 1);
    b_kv_u32(&b, "general.alignment", 48);
    s_refused(&b, "'general.alignment' is not a power of two", NULL);
    b_header(&b, 3, 0, 1);
    b_kv_u32(&b, "general.alignment", 0);
    s_refused(&b, "'general.alignment' is not a power of two", NULL);
    b_header(&b, 3, 0, 1);
    b_str(&b, "general.alignment");
    b_u32(&b, GGUF_UINT64);
    b_u64(&b, 64);
    s_refused(&b, "'general.alignment' is a uint64, expected uint32", NULL);
    free(b.p);
}

static void test_hostile_tensors(void **state)
{
    (void)state;
    bytes_t b = {0};
    const uint64_t ne64[] = {64, 2}, ne33[] = {33, 1}, big[] = {1ull << 32, 1ull << 32},
                   neg[] = {1ull << 63}, five[] = {1, 1, 1, 1, 1};
    char long_name[80];
    memset(long_name, 'x', 65);
    long_name[65] = '\0';

    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 2, ne64, 77, 0);
    b_data(&b, 32, 4096);
    s_refused(&b, "unknown tensor type 77 in tensor 'w'", NULL);
    assert_int_equal(medfl_error_code(), MEDFL_EUNSUPPORTED);
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 5, five, QUANT_F32, 0);
    b_data(&b, 32, 64);
    s_refused(&b, "tensor 'w' has 5 dimensions", NULL);
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 0, ne64, QUANT_F32, 0);
    b_data(&b, 32, 64);
    s_refused(&b, "tensor 'w' has 0 dimensions", NULL);
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 2, big, QUANT_F32, 0);
    b_data(&b, 32, 64);
    s_refused(&b, "tensor 'w'", "overflow a 64-bit element count");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 1, neg, QUANT_F32, 0);
    b_data(&b, 32, 64);
    s_refused(&b, "tensor 'w'", "overflow");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 2, ne33, QUANT_Q4_0, 0);
    b_data(&b, 32, 64);
    s_refused(&b, "tensor 'w': row length 33 is not a multiple of the Q4_0 block size 32", NULL);
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 2, ne64, QUANT_Q8_0, 1ull << 40);
    b_data(&b, 32, 4096);
    s_refused(&b, "tensor 'w'", "past the end of the file");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 2, ne64, QUANT_Q8_0, UINT64_MAX - 31);
    b_data(&b, 32, 4096);
    s_refused(&b, "tensor 'w'", "past the end of the file");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 2, ne64, QUANT_F32, 0); /* 512 bytes needed, 100 there */
    b_data(&b, 32, 100);
    s_refused(&b, "tensor 'w'", "past the end of the file");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w", 2, ne64, QUANT_Q8_0, 4);
    b_data(&b, 32, 4096);
    s_refused(&b, "tensor 'w': data offset 4 is not a multiple of the alignment 32", NULL);
    b_header(&b, 3, 2, 0);
    b_tensor(&b, "a", 2, ne64, QUANT_F32, 0);
    b_tensor(&b, "b", 2, ne64, QUANT_F32, 256); /* a spans 0..512 */
    b_data(&b, 32, 4096);
    s_refused(&b, "the data of tensors 'a' and 'b' overlap", NULL);
    b_header(&b, 3, 2, 0);
    b_tensor(&b, "a", 2, ne64, QUANT_F32, 0);
    b_tensor(&b, "a", 2, ne64, QUANT_F32, 512);
    b_data(&b, 32, 4096);
    s_refused(&b, "duplicate tensor name 'a'", NULL);
    b_header(&b, 3, 1, 0);
    b_tensor(&b, long_name, 2, ne64, QUANT_F32, 0);
    b_data(&b, 32, 4096);
    s_refused(&b, "the name of tensor 0", "65 bytes long (at most 64");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "w\x1b[31m", 2, ne64, QUANT_F32, 0);
    b_data(&b, 32, 4096);
    s_refused(&b, "the name of tensor 0", "control bytes");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "a", 2, ne64, QUANT_F32, 0);
    b.n -= 3; /* the info is cut inside the offset */
    s_refused(&b, "truncated at byte", "the data offset of tensor 'a'");

    /* known but not computable types are listed (llama.cpp files with K-quants open), and
     * de-quantizing them is a clear error */
    const uint64_t ne256[] = {256, 2};
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "k", 2, ne256, 12 /* Q4_K */, 0);
    b_data(&b, 32, 2 * 144);
    gguf_t *g = gguf_parse(b.p, b.n, "kquant.gguf");
    assert_non_null(g);
    const gguf_tensor_t *t = gguf_get_tensor(g, "k");
    assert_int_equal(t->n_bytes, 288);
    float row[256];
    assert_int_equal(quant_dequantize_row(t->type, t->data, row, 256), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EUNSUPPORTED);
    s_assert_msg("tensor type Q4_K (12) is not supported", NULL);
    gguf_destroy(&g);
    free(b.p);
}

static void test_open_errors(void **state)
{
    (void)state;
    assert_null(gguf_open(FIX "no-such.gguf"));
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    s_assert_msg("no-such.gguf: cannot open", NULL);
    assert_null(gguf_open(FIX));
    s_assert_msg("not a regular file", NULL);
    char path[] = "/tmp/medfl-gguf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_null(gguf_open(path)); /* empty file */
    s_assert_msg(path, "truncated at byte 0 reading the magic");
    assert_null(gguf_open(FIX "tiny.json"));
    s_assert_msg("tiny.json: wrong magic", NULL);
    unlink(path);
}

/* ------------------------------------------------------------------ SmolLM2-135M */

static char *s_find_smollm2(void)
{
    const char *p = testlib_smollm2_gguf();
    return p ? strdup(p) : NULL;
}

static void test_smollm2(void **state)
{
    (void)state;
    char *path = s_find_smollm2();
    if (!path) {
        printf("SKIP test_smollm2: %s\n", TESTLIB_SMOLLM2_HINT);
        skip();
    }
    gguf_t *g = gguf_open(path);
    if (!g) fail_msg("%s", medfl_error_message());
    cJSON *ref = s_json(FIX "smollm2_ref.json");
    assert_int_equal(gguf_tensor_count(g), cJSON_GetObjectItem(ref, "tensor_count")->valueint);
    assert_int_equal(gguf_kv_count(g), cJSON_GetObjectItem(ref, "kv_count")->valueint);

    const char *s;
    size_t len;
    uint32_t u;
    float f;
    assert_int_equal(gguf_get_str(g, "general.architecture", &s, NULL), 0);
    assert_string_equal(s, "llama");
    struct { const char *key; uint32_t want; } ints[] = {
        {"llama.block_count", 30}, {"llama.embedding_length", 576},
        {"llama.feed_forward_length", 1536}, {"llama.attention.head_count", 9},
        {"llama.attention.head_count_kv", 3}, {"llama.vocab_size", 49152},
        {"llama.context_length", 8192}, {"llama.rope.dimension_count", 64},
        {"tokenizer.ggml.bos_token_id", 1}, {"tokenizer.ggml.eos_token_id", 2},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        assert_int_equal(gguf_get_u32(g, ints[i].key, &u), 0);
        assert_int_equal(u, ints[i].want);
    }
    assert_int_equal(gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
    assert_true(f == 100000.0f);
    assert_int_equal(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
    assert_true(f == 1e-5f);
    assert_int_equal(gguf_get_str(g, "tokenizer.ggml.model", &s, NULL), 0);
    assert_string_equal(s, "gpt2");
    assert_int_equal(gguf_get_str(g, "tokenizer.chat_template", &s, &len), 0);
    assert_int_equal(len, cJSON_GetObjectItem(ref, "chat_template_len")->valueint);
    assert_non_null(strstr(s, "<|im_start|>"));

    gguf_vtype_t et;
    uint64_t n;
    assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), 0);
    assert_int_equal(et, GGUF_STRING);
    assert_int_equal(n, cJSON_GetObjectItem(ref, "token_count")->valueint);
    assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n), 0);
    assert_int_equal(n, 48900);
    assert_int_equal(n, cJSON_GetObjectItem(ref, "merge_count")->valueint);
    struct { const char *key, *ref; uint64_t i; } strs[] = {
        {"tokenizer.ggml.tokens", "token_0", 0}, {"tokenizer.ggml.tokens", "token_last", 49151},
        {"tokenizer.ggml.merges", "merge_0", 0}, {"tokenizer.ggml.merges", "merge_last", 48899},
    };
    for (size_t i = 0; i < 4; i++) {
        const char *want = cJSON_GetObjectItem(ref, strs[i].ref)->valuestring;
        assert_int_equal(gguf_get_arr_str(g, strs[i].key, strs[i].i, &s, &len), 0);
        assert_int_equal(len, strlen(want));
        assert_memory_equal(s, want, len);
    }
    int32_t *tt = malloc(49152 * sizeof *tt);
    assert_int_equal(gguf_get_arr_data(g, "tokenizer.ggml.token_type", GGUF_INT32, tt, 49152), 0);
    long long tsum = 0;
    for (int i = 0; i < 49152; i++) tsum += tt[i];
    free(tt);
    assert_int_equal(tsum, cJSON_GetObjectItem(ref, "token_type_sum")->valueint);

    /* every tensor is of a computable type; the listed ones de-quantize as in gguf-py */
    for (size_t i = 0; i < gguf_tensor_count(g); i++)
        assert_true(quant_supported(gguf_tensor_at(g, i)->type));
    const cJSON *tr;
    cJSON_ArrayForEach(tr, cJSON_GetObjectItem(ref, "tensors"))
    {
        const char *name = cJSON_GetObjectItem(tr, "name")->valuestring;
        const gguf_tensor_t *t = gguf_get_tensor(g, name);
        assert_non_null(t);
        assert_int_equal(t->type, cJSON_GetObjectItem(tr, "type")->valueint);
        assert_int_equal(t->offset, (uint64_t)cJSON_GetObjectItem(tr, "offset")->valuedouble);
        const cJSON *ne = cJSON_GetObjectItem(tr, "ne");
        for (int d = 0; d < cJSON_GetArraySize(ne); d++)
            assert_int_equal(t->ne[d], cJSON_GetArrayItem(ne, d)->valueint);
        size_t cols = t->ne[0], rb = quant_row_bytes(t->type, cols);
        float *row = malloc(cols * sizeof *row);
        double total = 0;
        for (uint64_t r = 0; r < gguf_tensor_rows(t); r++) {
            assert_int_equal(quant_dequantize_row(t->type, (const uint8_t *)t->data + r * rb, row,
                                                  cols), 0);
            for (size_t c = 0; c < cols; c++) total += row[c];
        }
        double want_total = cJSON_GetObjectItem(tr, "sum")->valuedouble;
        if (fabs(total - want_total) > 1e-9 * (fabs(want_total) + cols))
            fail_msg("%s: sum %.12g != gguf-py %.12g", name, total, want_total);
        const cJSON *rows = cJSON_GetObjectItem(tr, "rows"), *rr;
        cJSON_ArrayForEach(rr, rows)
        {
            uint64_t r = strtoull(rr->string, NULL, 10);
            assert_int_equal(quant_dequantize_row(t->type, (const uint8_t *)t->data + r * rb, row,
                                                  cols), 0);
            const cJSON *head = cJSON_GetObjectItem(rr, "head");
            for (int c = 0; c < cJSON_GetArraySize(head); c++) {
                float want = s_jfloat(cJSON_GetArrayItem(head, c));
                if (memcmp(&want, &row[c], 4) != 0)
                    fail_msg("%s row %llu col %d: %.9g != gguf-py %.9g", name,
                             (unsigned long long)r, c, row[c], want);
            }
            double rs = 0;
            for (size_t c = 0; c < cols; c++) rs += row[c];
            assert_true(fabs(rs - cJSON_GetObjectItem(rr, "sum")->valuedouble) < 1e-9 * (1 + fabs(rs)));
        }
        free(row);
    }
    printf("SmolLM2: %zu tensors, %zu keys checked in %s\n", gguf_tensor_count(g),
           gguf_kv_count(g), path);
    cJSON_Delete(ref);
    gguf_destroy(&g);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_metadata),
        cmocka_unit_test(test_tiny_arrays),
        cmocka_unit_test(test_tiny_tensors),
        cmocka_unit_test(test_custom_alignment),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_hostile_tensors),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_smollm2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
