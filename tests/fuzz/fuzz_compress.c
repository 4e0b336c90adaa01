/* libFuzzer target for the compressed-update decoders, which read network input from every
 * node: compress_peek, compress_plain_decode of versions 1 (varint gaps, int8) and 2
 * (Rice-coded gaps, b-bit values, implied lengths) with n taken from the header, capped so the
 * fuzzer cannot make us allocate gigabytes, and compress_secagg_unpack + decode_sum against
 * a fixed round, with compress_secagg_unpack_add giving the same verdict and leaving its sum
 * untouched when it refuses. Any crash, sanitizer report or out-of-range index is a bug; rejection with
 * a medfl error is the expected outcome for almost all inputs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/compress.h"
#include "common/error.h"

static compress_round_t *s_round;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    compress_header_t h;
    if (compress_peek(data, size, &h) == 0 && h.n <= (1u << 16)) {
        float *dense = malloc((size_t)h.n * sizeof(float));
        if (dense) {
            if (compress_plain_decode(data, size, h.n, dense) == 0) {
                /* a payload that decodes has at most k non-zero coordinates */
                uint32_t nz = 0;
                for (uint32_t i = 0; i < h.n; i++)
                    nz += dense[i] != 0.0f;
                if (nz > h.k)
                    abort();
            }
            free(dense);
        }
    }
    if (!s_round) {
        compress_config_t cfg;
        compress_config_default(&cfg, COMPRESS_SECAGG);
        cfg.bits = 5;
        cfg.k_frac = 0.5;
        cfg.max_nodes = 3;
        cfg.clip = 1.0f;
        const uint8_t seed[COMPRESS_SEED_BYTES] = {0};
        s_round = compress_round_new(&cfg, 33, seed);
        if (!s_round)
            abort();
    }
    uint32_t ring[33], acc[33];
    float dense[33];
    for (uint32_t j = 0; j < 33; j++)
        acc[j] = 0xFFFFFF00u + j;
    int rc = compress_secagg_unpack(s_round, data, size, ring);
    /* the aggregator's adding decoder: the same verdict; untouched sum when refused */
    if (compress_secagg_unpack_add(s_round, data, size, acc) != rc)
        abort();
    for (uint32_t j = 0; j < compress_round_k(s_round); j++)
        if (acc[j] != 0xFFFFFF00u + j + (rc == 0 ? ring[j] : 0))
            abort();
    if (rc == 0) {
        for (uint32_t j = 0; j < compress_round_k(s_round); j++)
            if (ring[j] >> compress_round_width(s_round))
                abort();
        (void)compress_secagg_decode_sum(s_round, ring, 3, dense);
    }
    medfl_error_clear();
    return 0;
}
