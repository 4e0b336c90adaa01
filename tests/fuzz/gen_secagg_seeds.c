/* Writes the seed corpus of fuzz_secagg (tests/fuzz/corpus/secagg/): one valid message of
 * every secure-aggregation type (common/secagg_msg.h), so libFuzzer starts past the header
 * and count checks of each decoder, the consistency-check messages included.
 * Build and run from the repository root after `make`:
 *   cc -std=c11 -D_GNU_SOURCE -I. -Ibuild tests/fuzz/gen_secagg_seeds.c build/libmedfl.a \
 *      -lsodium -lm -o /tmp/gen && /tmp/gen */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/secagg_msg.h"

/* rc: the encoder's result, taken before buf and len are read (argument order). */
static void s_out(const char *name, int rc, uint8_t **bufp, const size_t *lenp)
{
    uint8_t *buf = *bufp;
    size_t len = *lenp;
    if (rc != 0) {
        fprintf(stderr, "cannot encode %s\n", name);
        exit(1);
    }
    char p[256];
    snprintf(p, sizeof p, "tests/fuzz/corpus/secagg/%s", name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", p);
        exit(1);
    }
    free(buf);
}

int main(void)
{
    uint8_t *b;
    size_t l;
    secagg_params_t p = {.round_id = 7, .n = 4, .k = 3, .t = 3, .m = 16};
    memset(p.graph_seed, 0x5a, 32);
    s_out("params", secagg_params_encode(&p, &b, &l), &b, &l);
    secagg_advertise_t a = {.round_id = 7, .keys = {.node = 1}};
    memset(a.keys.c_pk, 0x11, 32);
    memset(a.keys.s_pk, 0x22, 32);
    memset(a.keys.sig, 0x33, 64);
    s_out("advertise_keys", secagg_advertise_encode(&a, &b, &l), &b, &l);
    secagg_keys_t ks[2] = {a.keys, a.keys};
    ks[1].node = 3;
    secagg_broadcast_t bc = {.round_id = 7, .count = 2, .entries = ks};
    s_out("keys_broadcast", secagg_broadcast_encode(&bc, &b, &l), &b, &l);
    secagg_cipher_t cs[2] = {{.peer = 0}, {.peer = 2}};
    memset(cs[0].ct, 0x44, SECAGG_CT_BYTES);
    memset(cs[1].ct, 0x55, SECAGG_CT_BYTES);
    secagg_shares_t sh = {.round_id = 7, .owner = 1, .count = 2, .entries = cs};
    s_out("share_keys", secagg_shares_encode(SECAGG_MSG_SHARE_KEYS, &sh, &b, &l), &b, &l);
    s_out("shares_delivery", secagg_shares_encode(SECAGG_MSG_SHARES_DELIVERY, &sh, &b, &l), &b, &l);
    l = secagg_masked_size(4);
    b = calloc(1, l);
    if (!b) return 1;
    secagg_masked_write_header(b, 7, 1, 4);
    s_out("masked_input", 0, &b, &l);
    uint32_t surv[3] = {0, 1, 3}, drop[1] = {2};
    secagg_survivors_t sv = {.round_id = 7, .count = 3, .nodes = surv};
    s_out("consistency_check", secagg_survivors_encode(&sv, &b, &l), &b, &l);
    secagg_survivor_sig_t sg = {.round_id = 7, .s = {.node = 1}};
    memset(sg.s.sig, 0x66, 64);
    s_out("consistency_signature", secagg_survivor_sig_encode(&sg, &b, &l), &b, &l);
    secagg_set_sig_t sigs[2] = {sg.s, sg.s};
    sigs[1].node = 3;
    secagg_unmask_req_t rq = {.round_id = 7, .n_survivors = 3, .survivors = surv,
                              .n_dropped = 1, .dropped = drop, .n_sigs = 2, .sigs = sigs};
    s_out("unmask_request", secagg_unmask_req_encode(&rq, &b, &l), &b, &l);
    secagg_reveal_t rv[2] = {{.node = 0, .kind = SECAGG_REVEAL_B}, {.node = 2, .kind = SECAGG_REVEAL_SK}};
    rv[0].share.y[0] = 12345;
    secagg_unmask_resp_t rs = {.round_id = 7, .sender = 1, .count = 2, .entries = rv};
    s_out("unmask_response", secagg_unmask_resp_encode(&rs, &b, &l), &b, &l);
    return 0;
}
