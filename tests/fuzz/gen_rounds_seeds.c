/* Writes the seed corpus of fuzz_rounds (tests/fuzz/corpus/rounds/): message sequences in
 * fuzz_rounds' record format that reach deep into a round, so libFuzzer starts from a round
 * that commits a version and collects evaluations instead of rediscovering the protocol:
 *   plain_dense_commit: three valid dense updates, the deadline, evaluation reports
 *   plain_short_bulk:   issue #16's TOPK header over m float32 with a 64-byte frame
 *   plain_eval_forged:  evaluation reports for other rounds, versions and values
 *   secure_junk_keys:   AdvertiseKeys of the right sizes with bad signatures, the deadline
 * Build and run from the repository root after `make`:
 *   cc -std=c11 -D_GNU_SOURCE -I. -Ibuild tests/fuzz/gen_rounds_seeds.c build/libmedfl.a \
 *      -lprotobuf-c -o /tmp/gen && /tmp/gen */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/medfl.pb-c.h"

#define DIM 16 /* fuzz_rounds' genesis vector */

static uint8_t s_buf[1 << 16];
static size_t s_len;

static void s_put(const void *p, size_t n)
{
    if (s_len + n > sizeof s_buf) abort();
    memcpy(s_buf + s_len, p, n);
    s_len += n;
}

/* One record: op (type), sender, round (0 = current), body, bulk (NULL = none). */
static void s_msg(Medfl__MsgType type, int sender, int round, const ProtobufCMessage *body,
                  const void *bulk, size_t bulk_len)
{
    uint8_t b[4096];
    size_t blen = body ? protobuf_c_message_pack(body, b) : 0;
    uint8_t hdr[7] = {(uint8_t)type, (uint8_t)sender, (uint8_t)round, (uint8_t)blen,
                      (uint8_t)(blen >> 8), (uint8_t)(bulk ? bulk_len : 0xff),
                      (uint8_t)(bulk ? bulk_len >> 8 : 0xff)};
    s_put(hdr, sizeof hdr);
    s_put(b, blen);
    if (bulk) s_put(bulk, bulk_len);
}

static void s_tick(void) { s_put("\xff", 1); }

static void s_write(const char *name, uint8_t mode)
{
    char p[256];
    snprintf(p, sizeof p, "tests/fuzz/corpus/rounds/%s", name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(&mode, 1, 1, f) != 1 || fwrite(s_buf, 1, s_len, f) != s_len || fclose(f))
        abort();
    s_len = 0;
}

static void s_eval(int sender, int round, uint64_t version, double acc, uint64_t n)
{
    Medfl__EvalReport e = MEDFL__EVAL_REPORT__INIT;
    e.version = version;
    e.loss = 0.5;
    e.accuracy = acc;
    e.macro_f1 = acc;
    e.n = n;
    s_msg(MEDFL__MSG_TYPE__MSG_EVAL_REPORT, sender, round, &e.base, NULL, 0);
}

int main(void)
{
    float v[DIM];
    for (int i = 0; i < DIM; i++) v[i] = 0.001f * (float)(i + 1);
    Medfl__Compression none = MEDFL__COMPRESSION__INIT;
    Medfl__Update u = MEDFL__UPDATE__INIT;
    u.base_version = 1; /* the genesis version */
    u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_F32;
    u.n_elements = DIM;
    u.n_examples = 10;
    u.compression = &none;

    /* mode byte: bit 0 secure, bits 1-2 the scheme (fuzz_rounds.c) */
    for (int s = 0; s < 3; s++) s_msg(MEDFL__MSG_TYPE__MSG_UPDATE, s, 0, &u.base, v, sizeof v);
    s_tick();
    for (int s = 0; s < 3; s++) s_eval(s, 0, 2, 0.75, 10);
    s_tick();
    s_write("plain_dense_commit", 0);

    Medfl__Compression topk = MEDFL__COMPRESSION__INIT;
    topk.scheme = MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK;
    u.compression = &topk;
    uint8_t junk[64];
    memset(junk, 0x41, sizeof junk);
    s_msg(MEDFL__MSG_TYPE__MSG_UPDATE, 0, 0, &u.base, junk, sizeof junk);
    u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_I8;
    u.n_elements = sizeof junk;
    s_msg(MEDFL__MSG_TYPE__MSG_UPDATE, 1, 0, &u.base, junk, sizeof junk);
    s_tick();
    s_write("plain_short_bulk", 1 << 1); /* a topk round */

    u.compression = &none;
    u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_F32;
    u.n_elements = DIM;
    for (int s = 0; s < 2; s++) s_msg(MEDFL__MSG_TYPE__MSG_UPDATE, s, 0, &u.base, v, sizeof v);
    s_tick();
    s_eval(0, 100, 999, 0.99, 4);
    s_eval(1, 0, 999, 0.5, 4);
    s_eval(1, 0, 2, 7.5, 4);
    s_eval(1, 0, 2, 0.5, 1000000);
    s_eval(2, 0, 2, 0.5, 4); /* did not contribute */
    s_eval(3, 0, 2, 0.5, 4); /* not a participant */
    s_eval(0, 0, 2, 0.5, 4);
    s_eval(0, 0, 2, 0.5, 4);
    s_write("plain_eval_forged", 0);

    uint8_t k[32], sig[64];
    memset(k, 0x11, sizeof k);
    memset(sig, 0x22, sizeof sig);
    Medfl__AdvertiseKeys a = MEDFL__ADVERTISE_KEYS__INIT;
    a.c_pk.data = k, a.c_pk.len = 32;
    a.s_pk.data = k, a.s_pk.len = 32;
    a.signature.data = sig, a.signature.len = 64;
    for (int s = 0; s < 4; s++) s_msg(MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS, s, 0, &a.base, NULL, 0);
    s_tick();
    s_write("secure_junk_keys", 1);
    return 0;
}
