/* libFuzzer target for the secure-aggregation message parsers (common/secagg_msg.c): every
 * decoder of network input gets arbitrary bytes, both as given and with a valid header forced
 * onto them (so the fuzzer spends its time past the magic/version/type checks). A decoded
 * message must re-encode to exactly the input bytes: the format has one encoding per value.
 * Seeds: tests/fuzz/corpus/secagg/ (one valid message of each type, gen_secagg_seeds.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/secagg_msg.h"

static void s_same(const uint8_t *a, size_t al, uint8_t *b, size_t bl)
{
    if (al != bl || memcmp(a, b, al) != 0) abort();
    free(b);
}

static void s_decode_all(const uint8_t *d, size_t n)
{
    secagg_msg_type_t type;
    uint64_t rid;
    uint8_t *out;
    size_t ol;
    if (secagg_msg_peek(d, n, &type, &rid) < 0) return;
    secagg_params_t p;
    if (secagg_params_decode(d, n, &p) == 0 && secagg_params_encode(&p, &out, &ol) == 0)
        s_same(d, n, out, ol);
    secagg_advertise_t a;
    if (secagg_advertise_decode(d, n, &a) == 0 && secagg_advertise_encode(&a, &out, &ol) == 0)
        s_same(d, n, out, ol);
    secagg_broadcast_t bc;
    if (secagg_broadcast_decode(d, n, &bc) == 0) {
        if (secagg_broadcast_encode(&bc, &out, &ol) == 0) s_same(d, n, out, ol);
        secagg_broadcast_clear(&bc);
    }
    secagg_msg_type_t st[2] = {SECAGG_MSG_SHARE_KEYS, SECAGG_MSG_SHARES_DELIVERY};
    for (int i = 0; i < 2; i++) {
        secagg_shares_t sh;
        if (secagg_shares_decode(st[i], d, n, &sh) == 0) {
            if (secagg_shares_encode(st[i], &sh, &out, &ol) == 0) s_same(d, n, out, ol);
            secagg_shares_clear(&sh);
        }
    }
    secagg_masked_t mi;
    if (secagg_masked_decode(d, n, &mi) == 0) {
        if (secagg_masked_size(mi.m) != n) abort();
        volatile uint32_t acc = 0;
        for (uint64_t i = 0; i < mi.m * 4; i++) acc += mi.values_le[i]; /* in bounds */
    }
    secagg_survivors_t sv;
    if (secagg_survivors_decode(d, n, &sv) == 0) {
        if (secagg_survivors_encode(&sv, &out, &ol) == 0) s_same(d, n, out, ol);
    }
    secagg_survivors_clear(&sv);
    secagg_survivor_sig_t sg;
    if (secagg_survivor_sig_decode(d, n, &sg) == 0 &&
        secagg_survivor_sig_encode(&sg, &out, &ol) == 0)
        s_same(d, n, out, ol);
    secagg_unmask_req_t rq;
    if (secagg_unmask_req_decode(d, n, &rq) == 0) {
        if (secagg_unmask_req_encode(&rq, &out, &ol) == 0) s_same(d, n, out, ol);
    }
    secagg_unmask_req_clear(&rq);
    secagg_unmask_resp_t rs;
    if (secagg_unmask_resp_decode(d, n, &rs) == 0) {
        if (secagg_unmask_resp_encode(&rs, &out, &ol) == 0) s_same(d, n, out, ol);
        secagg_unmask_resp_clear(&rs);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_decode_all(data, size);
    if (size >= 1 && size < (1u << 20)) {
        uint8_t *d = malloc(size + SECAGG_HDR_BYTES);
        if (!d) return 0;
        d[0] = 'S';
        d[1] = 'A';
        d[2] = SECAGG_WIRE_VERSION;
        d[3] = (uint8_t)(data[0] % SECAGG_MSG_SURVIVORS_SIG + 1); /* every message type */
        memset(d + 4, 0, 8);
        memcpy(d + SECAGG_HDR_BYTES, data + 1, size - 1);
        s_decode_all(d, size - 1 + SECAGG_HDR_BYTES);
        free(d);
    }
    return 0;
}
