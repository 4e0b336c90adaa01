/* libFuzzer target for the GGUF reader: any byte string must either parse into metadata and
 * tensors that lie inside the buffer, or fail with an error message; never crash. For parsed
 * files every key is read through every typed getter (type mismatches must fail cleanly),
 * every string-array element is fetched, and each tensor is looked up by name and its first
 * row de-quantized (the panels of quant_matmul use the same kernels). Seeds:
 * tests/fuzz/corpus/gguf (the fixtures of tests/ref/make_gguf_fixtures.py). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/gguf.h"
#include "node/engine/quant.h"

static void s_walk_kv(const gguf_t *g, const char *key)
{
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    bool b;
    const char *s;
    size_t len;
    gguf_vtype_t et;
    uint64_t n;
    (void)gguf_get_u32(g, key, &u32);
    (void)gguf_get_i32(g, key, &i32);
    (void)gguf_get_u64(g, key, &u64);
    (void)gguf_get_i64(g, key, &i64);
    (void)gguf_get_f32(g, key, &f32);
    (void)gguf_get_f64(g, key, &f64);
    (void)gguf_get_bool(g, key, &b);
    if (gguf_get_str(g, key, &s, &len) == 0 && strlen(s) > len) abort();
    if (gguf_get_arr(g, key, &et, &n) < 0) return;
    if (et == GGUF_STRING) {
        for (uint64_t i = 0; i < n; i++)
            if (gguf_get_arr_str(g, key, i, &s, &len) < 0) abort();
        if (gguf_get_arr_str(g, key, n, &s, &len) == 0) abort();
    } else if (et != GGUF_ARRAY && n <= (1u << 16)) {
        void *dst = malloc(n * 8 + 1);
        if (dst && gguf_get_arr_data(g, key, et, dst, n) < 0) abort();
        free(dst);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy: ASan flags any read past the end */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    medfl_error_clear();
    gguf_t *g = gguf_parse(buf, size, "fuzz");
    if (!g) {
        if (medfl_error_message()[0] == '\0') abort(); /* failures must say why */
        free(buf);
        return 0;
    }
    for (size_t i = 0; i < gguf_kv_count(g); i++) {
        const char *key = gguf_kv_key(g, i);
        if (gguf_find_key(g, key) != (long)i) abort();
        s_walk_kv(g, key);
    }
    for (size_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor_t *t = gguf_tensor_at(g, i);
        if (gguf_find_tensor(g, t->name) != t) abort();
        const uint8_t *p = t->data;
        if (p < buf || t->n_bytes > size || p - buf > (ptrdiff_t)(size - t->n_bytes)) abort();
        if (!quant_supported(t->type) || t->ne[0] > (1u << 20)) continue;
        float *row = malloc((t->ne[0] ? t->ne[0] : 1) * sizeof *row);
        if (row && t->n_bytes >= quant_row_bytes(t->type, t->ne[0]) &&
            quant_dequantize_row(t->type, t->data, row, t->ne[0]) < 0)
            abort();
        free(row);
    }
    gguf_destroy(&g);
    free(buf);
    return 0;
}
