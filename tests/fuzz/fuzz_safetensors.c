/* libFuzzer target for the safetensors header parser: any byte string must either parse into
 * tensors whose byte ranges lie inside the buffer, or fail with an error; never crash. For
 * parsed files every float-convertible tensor is also read, to exercise the converters on
 * the validated ranges. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    safetensors_t *st = safetensors_parse(data, size, "fuzz");
    if (!st) {
        if (medfl_error_message()[0] == '\0') abort(); /* failures must say why */
        return 0;
    }
    for (size_t i = 0; i < safetensors_count(st); i++) {
        const st_tensor_t *t = safetensors_at(st, i);
        if (t->end < t->begin || t->end > size) abort();
        size_t n = (t->end - t->begin) / t->dtype_size;
        if (n > (1u << 20)) continue;
        float *buf = malloc((n ? n : 1) * sizeof *buf);
        if (buf) {
            (void)safetensors_read_f32(st, t, buf);
            free(buf);
        }
        if (safetensors_find(st, t->name) == NULL) abort();
    }
    safetensors_destroy(&st);
    return 0;
}
