/* libFuzzer target for the VersionAnnounce payload decoder (vs_blob_parse, and through it
 * the manifest parser): any byte string must either be refused with a message or decode
 * into a manifest whose tensor table tiles exactly the flat vector received; a decoded
 * manifest must survive a JSON round trip with the same canonical hashes (the signature of
 * a version must not depend on how its manifest was formatted). The manifest text alone is
 * also fed to vs_manifest_parse, as a node reads it from disk. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/version_store.h"

static void s_check_manifest(const vs_manifest_t *m, const float *flat)
{
    size_t off = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        if (m->tensors[i].offset != off) abort();
        off += m->tensors[i].numel;
    }
    if (off != m->numel) abort();
    char *json = vs_manifest_to_json(m);
    if (!json) return;
    vs_manifest_t *back = vs_manifest_parse(json, strlen(json), "round trip");
    free(json);
    if (!back) abort(); /* what we write we must read */
    uint8_t d1[VS_HASH_BYTES], h1[VS_HASH_BYTES], d2[VS_HASH_BYTES], h2[VS_HASH_BYTES];
    if (flat && (vs_compute_hashes(m, flat, d1, h1) < 0 || vs_compute_hashes(back, flat, d2, h2) < 0 ||
                 memcmp(d1, d2, sizeof d1) || memcmp(h1, h2, sizeof h1)))
        abort();
    vs_manifest_destroy(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    if (vs_blob_parse(data, size, &m, &flat) == 0) {
        s_check_manifest(m, flat);
        vs_manifest_destroy(&m);
        free(flat);
    } else if (medfl_error_message()[0] == '\0') {
        abort(); /* failures must say why */
    }
    m = vs_manifest_parse((const char *)data, size, "fuzz");
    if (m) {
        s_check_manifest(m, NULL);
        vs_manifest_destroy(&m);
    }
    return 0;
}
