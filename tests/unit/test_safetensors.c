/* safetensors: F32/F16/BF16 conversion against PyTorch (fixture from
 * tests/ref/make_safetensors_ref.py), writer round trip, and every class of corrupt input
 * (short file, header length past the end, truncated data, bad JSON, unknown or unsupported
 * dtype, shape/size mismatch, offsets out of range, overlap, hole, duplicate names, missing
 * tensor): each must fail with an error naming the file and the tensor or field. */
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
#include <unistd.h>

#include "common/error.h"
#include "common/safetensors.h"

#define FIX "tests/ref/fixtures/"

static char *s_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void test_dtypes_match_torch(void **state)
{
    (void)state;
    safetensors_t *st = safetensors_open(FIX "dtypes.safetensors");
    assert_non_null(st);
    assert_string_equal(safetensors_metadata(st, "format"), "pt");
    assert_null(safetensors_metadata(st, "nope"));
    size_t jl;
    char *js = s_slurp(FIX "dtypes.json", &jl);
    cJSON *ref = cJSON_Parse(js);
    assert_non_null(ref);
    const cJSON *item;
    int checked = 0;
    cJSON_ArrayForEach(item, ref)
    {
        const st_tensor_t *t = safetensors_find(st, item->string);
        assert_non_null(t);
        const cJSON *shape = cJSON_GetObjectItem(item, "shape");
        assert_int_equal(t->ndim, cJSON_GetArraySize(shape));
        for (int d = 0; d < t->ndim; d++)
            assert_int_equal(t->shape[d], cJSON_GetArrayItem(shape, d)->valueint);
        const cJSON *vals = cJSON_GetObjectItem(item, "values");
        int n = cJSON_GetArraySize(vals);
        float *got = malloc(sizeof(float) * (size_t)(n + 1));
        assert_int_equal(safetensors_read_f32(st, t, got), 0);
        for (int i = 0; i < n; i++) {
            float want = strtof(cJSON_GetArrayItem(vals, i)->valuestring, NULL);
            if (memcmp(&want, &got[i], 4) != 0)
                fail_msg("%s[%d]: want %.9g got %.9g", item->string, i, want, got[i]);
            checked++;
        }
        free(got);
    }
    assert_true(checked > 30);
    /* I64 is listed but refused as weights, naming file and tensor. */
    const st_tensor_t *i64 = safetensors_find(st, "i64");
    assert_non_null(i64);
    assert_string_equal(i64->dtype, "I64");
    float tmp[3];
    assert_int_equal(safetensors_read_f32(st, i64, tmp), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EUNSUPPORTED);
    assert_non_null(strstr(medfl_error_message(), "'i64'"));
    assert_non_null(strstr(medfl_error_message(), "dtypes.safetensors"));
    assert_null(safetensors_find(st, "missing.weight"));
    cJSON_Delete(ref);
    free(js);
    safetensors_destroy(&st);
    safetensors_destroy(&st);
}

static void test_writer_round_trip(void **state)
{
    (void)state;
    char dir[] = "/tmp/medfl-test-st-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    float a[6] = {1, 2, 3, 4, 5, -6.5f}, b[1] = {42};
    named_tensor_t ts[3] = {
        {.name = "layer.0.lora_A.weight", .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "scalar", .ndim = 0, .data = b},
        {.name = "empty", .ndim = 2, .shape = {0, 5}, .data = NULL},
    };
    const char *meta[] = {"format", "pt"};
    assert_int_equal(safetensors_write_f32(path, ts, 3, meta, 1), 0);
    safetensors_t *st = safetensors_open(path);
    assert_non_null(st);
    assert_int_equal(safetensors_count(st), 3);
    const st_tensor_t *t = safetensors_find(st, "layer.0.lora_A.weight");
    assert_non_null(t);
    float got[6];
    assert_int_equal(safetensors_read_f32(st, t, got), 0);
    assert_memory_equal(got, a, sizeof a);
    t = safetensors_find(st, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(safetensors_read_f32(st, t, got), 0);
    assert_true(got[0] == 42);
    assert_string_equal(safetensors_metadata(st, "format"), "pt");
    safetensors_destroy(&st);
    /* Header is padded to 8 bytes, as the reference writer does. */
    size_t len;
    char *raw = s_slurp(path, &len);
    uint64_t hlen;
    memcpy(&hlen, raw, 8);
    assert_int_equal(hlen % 8, 0);
    free(raw);
    /* Duplicate names are refused and leave no file behind. */
    named_tensor_t dup[2] = {ts[0], ts[0]};
    char path2[160];
    snprintf(path2, sizeof path2, "%s/dup.safetensors", dir);
    assert_int_equal(safetensors_write_f32(path2, dup, 2, NULL, 0), -1);
    assert_int_equal(access(path2, F_OK), -1);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
}

/* Builds a file image: 8-byte length, header JSON, data_len bytes of data. */
static uint8_t *s_image(const char *json, size_t data_len, size_t *len)
{
    size_t h = strlen(json);
    *len = 8 + h + data_len;
    uint8_t *buf = calloc(1, *len + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, json, h);
    return buf;
}

static void s_bad(const char *json, size_t data_len, const char *needle)
{
    size_t len;
    uint8_t *buf = s_image(json, data_len, &len);
    safetensors_t *st = safetensors_parse(buf, len, "bad.safetensors");
    if (st) fail_msg("accepted corrupt header: %s", json);
    const char *msg = medfl_error_message();
    if (!strstr(msg, needle) || !strstr(msg, "bad.safetensors"))
        fail_msg("message '%s' lacks '%s'", msg, needle);
    free(buf);
}

static void test_corrupt_headers(void **state)
{
    (void)state;
    const char *ok = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t len;
    uint8_t *buf = s_image(ok, 8, &len);
    safetensors_t *st = safetensors_parse(buf, len, "ok");
    assert_non_null(st); /* the template itself is valid */
    safetensors_destroy(&st);
    /* Too short; header length beyond the file; truncated data. */
    assert_null(safetensors_parse(buf, 5, "bad.safetensors"));
    assert_non_null(strstr(medfl_error_message(), "too short"));
    uint8_t big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    assert_null(safetensors_parse(big, sizeof big, "bad.safetensors"));
    assert_non_null(strstr(medfl_error_message(), "exceeds the file size"));
    assert_null(safetensors_parse(buf, len - 3, "bad.safetensors"));
    assert_non_null(strstr(medfl_error_message(), "'w'"));
    free(buf);
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", 8, "not valid JSON");
    s_bad("[1,2,3]", 0, "not a JSON object");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}xx", 8, "trailing");
    s_bad("{\"w\":{\"dtype\":\"Q8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "unknown dtype 'Q8'");
    s_bad("{\"w\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'dtype'");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "shape x F32");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "'shape'[0]");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "'shape'[0]");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "'shape'");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "'data_offsets'");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "outside");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "outside");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
          "\"data_offsets\":[0,8]}}", 8, "shape x F32");
    s_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
          "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap");
    s_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
          "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "hole");
    s_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "cover");
    s_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "twice");
    s_bad("{\"__metadata__\":{\"format\":1}}", 0, "__metadata__");
    s_bad("{\"w\":[1]}", 0, "not an object");
    s_bad("{\"\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "empty name");
    s_bad("{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
          "dimensions");
    /* Opening: missing file and a non-safetensors file. */
    assert_null(safetensors_open("tests/ref/fixtures/no-such.safetensors"));
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_null(safetensors_open("tests/ref/fixtures/dtypes.json"));
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    assert_non_null(strstr(medfl_error_message(), "dtypes.json"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtypes_match_torch),
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_corrupt_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
