/* libFuzzer target for the label config reader (label_config.json, which init-version reads
 * from a genesis folder someone sent): any byte string either yields a label list that
 * satisfies adapter_labels_check (ids 0..K-1, distinct, non-empty names) and a pooling of
 * "", "mean" or "cls", or fails with a message; never a crash. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/adapter_file.h"
#include "common/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char **labels = NULL, pooling[8];
    size_t n = 0;
    if (adapter_label_config_parse((const char *)data, size, "fuzz", &labels, &n, pooling) < 0) {
        if (labels || medfl_error_message()[0] == '\0') abort(); /* failures must say why */
        return 0;
    }
    if (adapter_labels_check(labels, n, "fuzz") < 0) abort();
    if (pooling[0] && strcmp(pooling, "mean") != 0 && strcmp(pooling, "cls") != 0) abort();
    adapter_labels_free(&labels, n);
    return 0;
}
