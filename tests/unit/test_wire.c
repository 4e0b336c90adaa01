/* wire: envelope encoding/decoding limits, and the CURVE transport in-process over
 * loopback: enrolled keys get through with the right node id, unknown keys are refused
 * and logged by key id, an allowlist swap revokes a connected node, malformed frames are
 * rejected while the server keeps serving, bulk frames arrive intact, and a node
 * reconnects by itself after the server is restarted on the same port. The round context
 * (the digest nodes fold into their secure-aggregation key signatures) is equal across
 * per-node fields and a decode round trip, and differs for any shared parameter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <zmq.h>

#include "common/error.h"
#include "common/log.h"
#include "common/wire.h"

typedef struct {
    uint8_t pk[WIRE_KEY_LEN], sk[WIRE_KEY_LEN];
} keypair_t;

static keypair_t s_server, s_node_a, s_node_b;
static char s_log_path[] = "/tmp/medfl-test-wire-log-XXXXXX";
static FILE *s_log;

static int s_setup(void **state)
{
    (void)state;
    if (sodium_init() < 0)
        return -1;
    crypto_box_keypair(s_server.pk, s_server.sk);
    crypto_box_keypair(s_node_a.pk, s_node_a.sk);
    crypto_box_keypair(s_node_b.pk, s_node_b.sk);
    int fd = mkstemp(s_log_path);
    if (fd < 0)
        return -1;
    s_log = fdopen(fd, "w+");
    log_configure(s_log, LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    log_configure(NULL, LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    fclose(s_log);
    unlink(s_log_path);
    sodium_memzero(&s_server, sizeof s_server);
    return 0;
}

/* True when the captured log contains needle. */
static bool s_log_contains(const char *needle)
{
    fflush(s_log);
    FILE *f = fopen(s_log_path, "r");
    if (!f)
        return false;
    char line[2048];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

static Medfl__Hello *s_hello(Medfl__Hello *h, Medfl__Capabilities *c, const char *id,
                             uint8_t *idpk)
{
    medfl__hello__init(h);
    medfl__capabilities__init(c);
    c->device = "cpu";
    c->n_records = 1234;
    c->software_version = "0.1.0";
    h->node_id = (char *)id;
    h->identity_pk.data = idpk;
    h->identity_pk.len = 32;
    h->capabilities = c;
    return h;
}

/* Builds a raw envelope with arbitrary fields, bypassing wire_encode's checks. */
static size_t s_raw_envelope(uint8_t *out, uint32_t version, int type, const char *sender,
                             const uint8_t *body, size_t body_len)
{
    Medfl__Envelope e = MEDFL__ENVELOPE__INIT;
    e.protocol_version = version;
    e.type = (Medfl__MsgType)type;
    e.sender = (char *)sender;
    e.body.data = (uint8_t *)body;
    e.body.len = body_len;
    return medfl__envelope__pack(&e, out);
}

/* ---- pure decoding ------------------------------------------------------------------ */

static void test_encode_decode_round_trip(void **state)
{
    (void)state;
    uint8_t idpk[32];
    memset(idpk, 7, sizeof idpk);
    Medfl__Hello h;
    Medfl__Capabilities c;
    s_hello(&h, &c, "hospital-a", idpk);
    uint8_t *buf;
    size_t len;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HELLO, 0, "hospital-a", &h.base, &buf, &len), 0);
    wire_decoded_t d;
    assert_int_equal(wire_decode(buf, len, &d), 0);
    assert_int_equal(d.type, MEDFL__MSG_TYPE__MSG_HELLO);
    assert_int_equal(d.protocol_version, WIRE_PROTOCOL_VERSION);
    assert_string_equal(d.sender, "hospital-a");
    assert_string_equal(d.body.hello->node_id, "hospital-a");
    assert_int_equal(d.body.hello->capabilities->n_records, 1234);
    assert_memory_equal(d.body.hello->identity_pk.data, idpk, 32);
    wire_decoded_clear(&d);
    wire_decoded_clear(&d); /* safe twice */

    /* Every truncation of a valid envelope is rejected or decodes, never crashes. */
    for (size_t n = 0; n < len; n++) {
        wire_decoded_t t;
        if (wire_decode(buf, n, &t) == 0)
            wire_decoded_clear(&t);
        else
            assert_int_equal(medfl_error_code(), MEDFL_EPROTO);
    }
    /* Cut off inside the body: protobuf cannot parse it. */
    assert_int_equal(wire_decode(buf, len - 3, &d), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EPROTO);
    free(buf);

    /* A RoundStart with secure aggregation parameters survives the trip. */
    Medfl__RoundStart rs = MEDFL__ROUND_START__INIT;
    Medfl__Hyperparams hp = MEDFL__HYPERPARAMS__INIT;
    Medfl__SecAggParams sa = MEDFL__SEC_AGG_PARAMS__INIT;
    char *parts[] = {"a", "b", "c"};
    hp.lr = 1e-4, hp.batch_size = 8, hp.max_seq_len = 128;
    sa.enabled = true, sa.threshold = 2, sa.n_participants = 3, sa.participants = parts;
    rs.round_id = 9, rs.hyperparams = &hp, rs.secagg = &sa, rs.weight = 0.25;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_ROUND_START, 9, WIRE_SERVER_SENDER, &rs.base, &buf, &len), 0);
    assert_int_equal(wire_decode(buf, len, &d), 0);
    assert_int_equal(d.body.round_start->secagg->n_participants, 3);
    assert_string_equal(d.body.round_start->secagg->participants[2], "c");
    wire_decoded_clear(&d);
    free(buf);
    /* threshold above the participant count is refused, by the receiver (raw bytes) and
     * already by the sender */
    sa.threshold = 4;
    rs.round_id = 0;
    uint8_t body[512], raw[600];
    size_t blen = medfl__round_start__pack(&rs, body);
    len = s_raw_envelope(raw, 1, MEDFL__MSG_TYPE__MSG_ROUND_START, WIRE_SERVER_SENDER, body, blen);
    assert_int_equal(wire_decode(raw, len, &d), -1);
    assert_non_null(strstr(medfl_error_message(), "secagg.threshold"));
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_ROUND_START, 0, WIRE_SERVER_SENDER, &rs.base, &buf, &len), -1);
    assert_non_null(strstr(medfl_error_message(), "secagg.threshold"));
    /* body round id must match the envelope's (raw envelope says round 0) */
    sa.threshold = 2;
    rs.round_id = 9;
    blen = medfl__round_start__pack(&rs, body);
    len = s_raw_envelope(raw, 1, MEDFL__MSG_TYPE__MSG_ROUND_START, WIRE_SERVER_SENDER, body, blen);
    assert_int_equal(wire_decode(raw, len, &d), -1);
    assert_non_null(strstr(medfl_error_message(), "round_id"));
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_ROUND_START, 8, WIRE_SERVER_SENDER, &rs.base, &buf, &len), -1);
}

/* ---- round context -------------------------------------------------------------------- */

/* A fully populated secure round start, as the aggregator sends it. */
typedef struct {
    Medfl__RoundStart rs;
    Medfl__Hyperparams hp;
    Medfl__DpParams dp;
    Medfl__Compression comp;
    Medfl__SecAggParams sa;
    char *parts[3];
    ProtobufCBinaryData pks[3];
    uint8_t pk[3][32], seed[32], hash[32];
} rs_fix_t;

static void s_rs_fix(rs_fix_t *f)
{
    memset(f, 0, sizeof *f);
    medfl__round_start__init(&f->rs);
    medfl__hyperparams__init(&f->hp);
    medfl__dp_params__init(&f->dp);
    medfl__compression__init(&f->comp);
    medfl__sec_agg_params__init(&f->sa);
    f->parts[0] = "h0", f->parts[1] = "h1", f->parts[2] = "h2";
    for (int i = 0; i < 3; i++) {
        memset(f->pk[i], 0x10 + i, 32);
        f->pks[i].data = f->pk[i], f->pks[i].len = 32;
    }
    memset(f->seed, 0x5e, 32);
    memset(f->hash, 0xab, 32);
    f->hp.lr = 1e-4, f->hp.local_steps = 20, f->hp.batch_size = 8, f->hp.max_seq_len = 128;
    f->dp.enabled = true, f->dp.noise_multiplier = 1.1, f->dp.clip_norm = 1.0;
    f->dp.sample_rate = 0.01, f->dp.delta = 1e-5, f->dp.distributed = true;
    f->dp.record_weight_max = 0.004;
    f->comp.scheme = MEDFL__COMPRESSION_SCHEME__COMPRESSION_RANDK, f->comp.bits = 12;
    f->comp.k = 100, f->comp.seed = 77, f->comp.clip = 0.05f, f->comp.max_nodes = 3;
    f->sa.enabled = true, f->sa.threshold = 2, f->sa.participants = f->parts;
    f->sa.n_participants = 3, f->sa.neighbours = 2, f->sa.identity_pks = f->pks;
    f->sa.n_identity_pks = 3, f->sa.graph_seed.data = f->seed, f->sa.graph_seed.len = 32;
    f->sa.m = 100;
    f->rs.round_id = 12, f->rs.base_version = 4;
    f->rs.base_hash.data = f->hash, f->rs.base_hash.len = 32;
    f->rs.hyperparams = &f->hp, f->rs.dp = &f->dp, f->rs.compression = &f->comp;
    f->rs.secagg = &f->sa, f->rs.weight = 0.25, f->rs.deadline_ms = 60000;
}

/* Digest of the fixture after change number v to one shared parameter. */
static void s_mutated_context(int v, uint8_t out[WIRE_ROUND_CONTEXT_BYTES])
{
    rs_fix_t f;
    s_rs_fix(&f);
    switch (v) {
    case 0: f.dp.record_weight_max = 0.002; break;
    case 1: f.dp.noise_multiplier = 0.9; break;
    case 2: f.sa.threshold = 3; break;
    case 3: f.hp.lr = 2e-4; break;
    case 4: f.hash[31] ^= 1; break;
    case 5: f.comp.scheme = MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE; break;
    case 6: f.dp.distributed = false; break;
    case 7: f.comp.clip = 0.1f; break;
    case 8: f.rs.base_version = 5; break;
    case 9: f.rs.round_id = 13; break;
    case 10: f.pk[1][0] ^= 1; break;            /* another enrolled key for h1 */
    case 11: f.parts[2] = "h3"; break;           /* another roster */
    case 12: f.seed[0] ^= 1; break;              /* another neighbour graph */
    case 13: f.sa.m = 101; break;
    case 14: f.rs.dp = NULL; break;              /* DP settings withheld */
    default: fail_msg("no variant %d", v);
    }
    assert_int_equal(wire_round_context(&f.rs, out), 0);
}

static void test_round_context(void **state)
{
    (void)state;
    rs_fix_t f;
    uint8_t d0[WIRE_ROUND_CONTEXT_BYTES], d1[WIRE_ROUND_CONTEXT_BYTES];
    s_rs_fix(&f);
    assert_int_equal(wire_round_context(&f.rs, d0), 0);
    /* deterministic, and blind to the per-node fields */
    assert_int_equal(wire_round_context(&f.rs, d1), 0);
    assert_memory_equal(d0, d1, sizeof d0);
    f.rs.weight = 0.75;
    f.rs.deadline_ms = 1234;
    assert_int_equal(wire_round_context(&f.rs, d1), 0);
    assert_memory_equal(d0, d1, sizeof d0);
    f.rs.weight = 0;
    f.rs.deadline_ms = 0;
    assert_int_equal(wire_round_context(&f.rs, d1), 0);
    assert_memory_equal(d0, d1, sizeof d0);
    /* the caller's message is left as it was */
    assert_true(f.rs.secagg == &f.sa && f.rs.dp == &f.dp);

    /* what a node computes from the decoded copy equals what the aggregator computed from
     * the struct it sent */
    f.rs.weight = 0.5, f.rs.deadline_ms = 30000;
    uint8_t *buf;
    size_t len;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_ROUND_START, 12, WIRE_SERVER_SENDER,
                                 &f.rs.base, &buf, &len), 0);
    wire_decoded_t d;
    assert_int_equal(wire_decode(buf, len, &d), 0);
    free(buf);
    assert_true(d.body.round_start->weight == 0.5);
    assert_int_equal(wire_round_context(d.body.round_start, d1), 0);
    assert_memory_equal(d0, d1, sizeof d0);
    /* ... and changes when the received copy was given another record weight bound */
    d.body.round_start->dp->record_weight_max *= 0.5;
    assert_int_equal(wire_round_context(d.body.round_start, d1), 0);
    assert_memory_not_equal(d0, d1, sizeof d0);
    wire_decoded_clear(&d);

    /* every shared parameter is bound: each change gives a digest unlike the honest one
     * and unlike every other change */
    enum { NV = 15 };
    uint8_t dv[NV][WIRE_ROUND_CONTEXT_BYTES];
    for (int v = 0; v < NV; v++) {
        s_mutated_context(v, dv[v]);
        if (memcmp(dv[v], d0, sizeof d0) == 0) fail_msg("variant %d: digest unchanged", v);
        for (int w = 0; w < v; w++)
            if (memcmp(dv[v], dv[w], sizeof d0) == 0) fail_msg("variants %d and %d collide", w, v);
    }

    /* a field this version does not know (a newer aggregator's, highest number) is kept by
     * the decoder and packed back in the same place: the digest is that of the bytes sent */
    s_rs_fix(&f);
    f.rs.weight = 0, f.rs.deadline_ms = 0;
    uint8_t raw[1024], want[WIRE_ROUND_CONTEXT_BYTES];
    size_t rl = medfl__round_start__pack(&f.rs, raw);
    raw[rl++] = 15 << 3; /* field 15, varint */
    raw[rl++] = 42;
    Medfl__RoundStart *u = medfl__round_start__unpack(NULL, rl, raw);
    assert_non_null(u);
    assert_int_equal(u->base.n_unknown_fields, 1);
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, sizeof want);
    crypto_generichash_update(&h, (const uint8_t *)"medfl-round-context-v1", 22);
    crypto_generichash_update(&h, raw, rl);
    crypto_generichash_final(&h, want, sizeof want);
    assert_int_equal(wire_round_context(u, d1), 0);
    assert_memory_equal(d1, want, sizeof want);
    assert_memory_not_equal(d1, d0, sizeof d0);
    medfl__round_start__free_unpacked(u, NULL);

    /* refusals */
    assert_int_equal(wire_round_context(NULL, d1), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_non_null(strstr(medfl_error_message(), "round start is NULL"));
    assert_int_equal(wire_round_context(&f.rs, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
    assert_int_equal(wire_round_context((const Medfl__RoundStart *)(const void *)&hb, d1), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_non_null(strstr(medfl_error_message(), "not a RoundStart"));
}

static void test_decode_rejects_bad_input(void **state)
{
    (void)state;
    wire_decoded_t d;
    uint8_t buf[512] = {0};
    /* empty, garbage */
    assert_int_equal(wire_decode(buf, 0, &d), -1);
    assert_int_equal(wire_decode(NULL, 10, &d), -1);
    memset(buf, 0xff, sizeof buf);
    assert_int_equal(wire_decode(buf, sizeof buf, &d), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EPROTO);
    assert_non_null(strstr(medfl_error_message(), "not a valid protobuf"));
    /* oversized: refused on length alone, before any parsing */
    size_t big = WIRE_ENVELOPE_MAX + 1;
    uint8_t *huge = calloc(1, big);
    assert_non_null(huge);
    assert_int_equal(wire_decode(huge, big, &d), -1);
    assert_non_null(strstr(medfl_error_message(), "at most"));
    free(huge);
    /* wrong protocol version */
    size_t n = s_raw_envelope(buf, 2, MEDFL__MSG_TYPE__MSG_HEARTBEAT, "a", NULL, 0);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EUNSUPPORTED);
    assert_non_null(strstr(medfl_error_message(), "protocol version 2"));
    /* unknown and unspecified types */
    n = s_raw_envelope(buf, 1, 99, "a", NULL, 0);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    assert_non_null(strstr(medfl_error_message(), "unknown message type 99"));
    n = s_raw_envelope(buf, 1, 0, "a", NULL, 0);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    /* bad sender */
    n = s_raw_envelope(buf, 1, MEDFL__MSG_TYPE__MSG_HEARTBEAT, "bad id!", NULL, 0);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    assert_non_null(strstr(medfl_error_message(), "sender"));
    n = s_raw_envelope(buf, 1, MEDFL__MSG_TYPE__MSG_HEARTBEAT, "", NULL, 0);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    /* type/body mismatch: an AdvertiseKeys body labelled WELCOME lacks the instance id */
    Medfl__AdvertiseKeys ak = MEDFL__ADVERTISE_KEYS__INIT;
    uint8_t k32[32] = {1}, sig[64] = {2};
    ak.c_pk.data = k32, ak.c_pk.len = 32, ak.s_pk.data = k32, ak.s_pk.len = 32;
    ak.signature.data = sig, ak.signature.len = 64;
    uint8_t body[256];
    size_t blen = medfl__advertise_keys__pack(&ak, body);
    n = s_raw_envelope(buf, 1, MEDFL__MSG_TYPE__MSG_WELCOME, "aggregator", body, blen);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    assert_non_null(strstr(medfl_error_message(), "WELCOME"));
    /* ... and labelled ADVERTISE_KEYS it is fine; with a short key it is not */
    n = s_raw_envelope(buf, 1, MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS, "a", body, blen);
    assert_int_equal(wire_decode(buf, n, &d), 0);
    wire_decoded_clear(&d);
    ak.s_pk.len = 31;
    blen = medfl__advertise_keys__pack(&ak, body);
    n = s_raw_envelope(buf, 1, MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS, "a", body, blen);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    assert_non_null(strstr(medfl_error_message(), "s_pk"));
    /* body over its type's limit (heartbeat: 64 bytes) */
    uint8_t junk[100];
    memset(junk, 0, sizeof junk);
    n = s_raw_envelope(buf, 1, MEDFL__MSG_TYPE__MSG_HEARTBEAT, "a", junk, sizeof junk);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    assert_non_null(strstr(medfl_error_message(), "HEARTBEAT: body of 100 bytes"));
    /* body that is not protobuf */
    memset(junk, 0xff, sizeof junk);
    n = s_raw_envelope(buf, 1, MEDFL__MSG_TYPE__MSG_DECLINE, "a", junk, 20);
    assert_int_equal(wire_decode(buf, n, &d), -1);
    /* wire_encode refuses a body of the wrong type */
    uint8_t *out;
    size_t olen;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HELLO, 0, "a", &ak.base, &out, &olen), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    /* ... and a body the receiver would refuse: the same rules apply on the way out */
    uint8_t idpk[32] = {0};
    Medfl__Hello h;
    Medfl__Capabilities c;
    s_hello(&h, &c, "a", idpk);
    h.identity_pk.len = 16;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HELLO, 0, "a", &h.base, &out, &olen), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_non_null(strstr(medfl_error_message(), "identity_pk"));
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_UPDATE, 0, "a", NULL, &out, &olen), -1);
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, "a", NULL, &out, &olen), 0);
    free(out);
}

static void test_bulk_rules(void **state)
{
    (void)state;
    wire_decoded_t d;
    memset(&d, 0, sizeof d);
    Medfl__Update u = MEDFL__UPDATE__INIT;
    u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_F32;
    u.n_elements = 10;
    d.type = MEDFL__MSG_TYPE__MSG_UPDATE;
    d.body.update = &u;
    assert_int_equal(wire_check_bulk(&d, true, 40, 1000), 0);
    assert_int_equal(wire_check_bulk(&d, true, 39, 1000), -1);
    assert_int_equal(wire_check_bulk(&d, false, 0, 1000), -1);
    assert_non_null(strstr(medfl_error_message(), "missing"));
    assert_int_equal(wire_check_bulk(&d, true, 40, 39), -1);
    u.n_elements = UINT64_MAX / 2; /* overflow attempt */
    assert_int_equal(wire_check_bulk(&d, true, 40, 1000), -1);
    Medfl__Compression c = MEDFL__COMPRESSION__INIT;
    c.scheme = MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE;
    c.bits = 8;
    u.compression = &c;
    u.n_elements = 10;
    /* compressed: the header still describes the frame (issue #16: a QUANTIZE/TOPK header
     * over m float32 with a short frame made the aggregator read past it) */
    assert_int_equal(wire_check_bulk(&d, true, 13, 1000), -1);
    assert_non_null(strstr(medfl_error_message(), "does not hold 10 elements of 4 bytes"));
    u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_I8; /* how nodes send a payload: its bytes */
    u.n_elements = 13;
    assert_int_equal(wire_check_bulk(&d, true, 13, 1000), 0);
    d.type = MEDFL__MSG_TYPE__MSG_HELLO;
    assert_int_equal(wire_check_bulk(&d, true, 1, 1000), -1);
    assert_non_null(strstr(medfl_error_message(), "unexpected bulk"));
    d.type = MEDFL__MSG_TYPE__MSG_VERSION_ANNOUNCE;
    assert_int_equal(wire_check_bulk(&d, false, 0, 1000), 0);
    assert_int_equal(wire_check_bulk(&d, true, 1000, 1000), 0);
}

static void test_key_id_and_node_ids(void **state)
{
    (void)state;
    char a[WIRE_KEY_ID_LEN + 1], b[WIRE_KEY_ID_LEN + 1];
    wire_key_id(s_node_a.pk, a);
    wire_key_id(s_node_b.pk, b);
    assert_int_equal(strlen(a), WIRE_KEY_ID_LEN);
    assert_string_not_equal(a, b);
    uint8_t h[32];
    char hex[17];
    crypto_generichash(h, 32, s_node_a.pk, 32, NULL, 0);
    sodium_bin2hex(hex, sizeof hex, h, 8);
    assert_string_equal(a, hex);
    assert_true(wire_node_id_valid("hospital-a.eu_1"));
    assert_false(wire_node_id_valid(""));
    assert_false(wire_node_id_valid("a b"));
    assert_false(wire_node_id_valid("a/b"));
    char long_id[80];
    memset(long_id, 'x', sizeof long_id);
    long_id[WIRE_NODE_ID_MAX] = 0;
    assert_true(wire_node_id_valid(long_id));
    long_id[WIRE_NODE_ID_MAX] = 'x';
    long_id[WIRE_NODE_ID_MAX + 1] = 0;
    assert_false(wire_node_id_valid(long_id));
}

/* ---- transport ---------------------------------------------------------------------- */

static wire_options_t s_fast_opts(void)
{
    wire_options_t o;
    wire_options_default(&o);
    o.heartbeat_ivl_ms = 200;
    o.heartbeat_timeout_ms = 1000;
    o.reconnect_ivl_ms = 50;
    o.reconnect_ivl_max_ms = 200;
    o.send_timeout_ms = 2000;
    o.max_bulk = 64u << 20;
    return o;
}

static wire_server_t *s_curve_server(const char *endpoint)
{
    wire_options_t o = s_fast_opts();
    wire_server_t *srv = wire_server_new(endpoint, s_server.sk, s_server.pk, &o);
    assert_non_null(srv);
    wire_allow_entry_t allow[1];
    snprintf(allow[0].node_id, sizeof allow[0].node_id, "node-a");
    memcpy(allow[0].public_key, s_node_a.pk, 32);
    assert_int_equal(wire_server_set_allowlist(srv, allow, 1), 0);
    return srv;
}

static wire_client_t *s_client(const wire_server_t *srv, const keypair_t *kp, const char *id)
{
    wire_options_t o = s_fast_opts();
    wire_client_t *c = wire_client_new(wire_server_endpoint(srv), s_server.pk, kp->pk, kp->sk, id, &o);
    assert_non_null(c);
    return c;
}

/* Receives on the server until a message arrives (skipping nothing) or 5 s pass. */
static int s_srv_recv(wire_server_t *srv, wire_msg_t *m)
{
    for (int i = 0; i < 50; i++) {
        int rc = wire_server_recv(srv, m, 100);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int s_send_hello(wire_client_t *c, const char *id)
{
    uint8_t idpk[32] = {9};
    Medfl__Hello h;
    Medfl__Capabilities caps;
    s_hello(&h, &caps, id, idpk);
    return wire_client_send(c, MEDFL__MSG_TYPE__MSG_HELLO, 0, &h.base, NULL, 0, NULL, NULL);
}

static void test_enrolled_node_gets_through(void **state)
{
    (void)state;
    wire_server_t *srv = s_curve_server("tcp://127.0.0.1:*");
    assert_non_null(strstr(wire_server_endpoint(srv), "tcp://127.0.0.1:"));
    wire_client_t *c = s_client(srv, &s_node_a, "node-a");
    assert_int_equal(s_send_hello(c, "node-a"), 0);
    wire_msg_t m;
    assert_int_equal(s_srv_recv(srv, &m), 1);
    assert_string_equal(m.node_id, "node-a");
    assert_int_equal(m.type, MEDFL__MSG_TYPE__MSG_HELLO);
    assert_string_equal(m.body.hello->capabilities->device, "cpu");
    assert_null(m.bulk);
    wire_msg_close(&m);
    wire_msg_close(&m);
    assert_true(wire_server_has_peer(srv, "node-a"));
    assert_true(s_log_contains("admitted node 'node-a'"));

    Medfl__Welcome w = MEDFL__WELCOME__INIT;
    w.instance_id.data = (uint8_t *)wire_server_instance_id(srv);
    w.instance_id.len = WIRE_INSTANCE_ID_LEN;
    w.heartbeat_ivl_ms = 200;
    assert_int_equal(wire_server_send(srv, "node-a", MEDFL__MSG_TYPE__MSG_WELCOME, 0, &w.base,
                                      NULL, 0, NULL, NULL), 0);
    assert_int_equal(wire_client_recv(c, &m, 5000), 1);
    assert_int_equal(m.type, MEDFL__MSG_TYPE__MSG_WELCOME);
    assert_string_equal(m.node_id, WIRE_SERVER_SENDER);
    assert_memory_equal(m.body.welcome->instance_id.data, wire_server_instance_id(srv), 16);
    wire_msg_close(&m);
    assert_true(wire_client_connected(c));
    assert_int_equal(wire_client_connections(c), 1);
    assert_false(wire_client_auth_refused(c));
    assert_true(wire_client_ms_since_rx(c) >= 0);

    /* application heartbeats flow while the node waits, and the server answers them */
    wire_server_stats_t st0, st1;
    wire_server_stats(srv, &st0);
    assert_int_equal(wire_client_recv(c, &m, 500), 0);
    int hb = 0;
    while (wire_server_recv(srv, &m, 50) == 1) {
        hb += m.type == MEDFL__MSG_TYPE__MSG_HEARTBEAT;
        wire_msg_close(&m);
    }
    assert_true(hb >= 1);
    wire_server_stats(srv, &st1);
    assert_true(st1.received > st0.received);
    assert_int_equal(wire_client_recv(c, &m, 300), 0); /* heartbeat replies consumed */
    assert_true(wire_client_ms_since_rx(c) < 1000);

    /* sending to an unknown node fails cleanly */
    assert_int_equal(wire_server_send_error(srv, "nobody", 0, MEDFL__ERROR_CODE__ERROR_STATE, "x"), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    wire_client_destroy(&c);
    wire_client_destroy(&c);
    wire_server_destroy(&srv);
    wire_server_destroy(&srv);
}

static void test_unknown_key_refused_and_logged(void **state)
{
    (void)state;
    wire_server_t *srv = s_curve_server("tcp://127.0.0.1:*");
    wire_client_t *c = s_client(srv, &s_node_b, "node-b");
    assert_int_equal(s_send_hello(c, "node-b"), 0);
    bool refused = false;
    wire_msg_t m;
    for (int i = 0; i < 50 && !refused; i++) {
        assert_int_equal(wire_server_recv(srv, &m, 100), 0); /* nothing gets through */
        refused = wire_client_auth_refused(c);
    }
    assert_true(refused);
    assert_false(wire_client_connected(c));
    wire_server_stats_t st;
    wire_server_stats(srv, &st);
    assert_true(st.zap_refused >= 1);
    assert_int_equal(st.received, 0);
    char kid[WIRE_KEY_ID_LEN + 1], line[128];
    wire_key_id(s_node_b.pk, kid);
    snprintf(line, sizeof line, "key %s is not enrolled", kid);
    assert_true(s_log_contains(line));
    /* the secret key never appears in the log */
    char skhex[65];
    sodium_bin2hex(skhex, sizeof skhex, s_node_b.sk, 32);
    assert_false(s_log_contains(skhex));
    wire_client_destroy(&c);

    /* A client holding the wrong server key never completes the handshake either. */
    keypair_t other;
    crypto_box_keypair(other.pk, other.sk);
    wire_options_t o = s_fast_opts();
    c = wire_client_new(wire_server_endpoint(srv), other.pk, s_node_a.pk, s_node_a.sk, "node-a", &o);
    assert_non_null(c);
    assert_int_equal(s_send_hello(c, "node-a"), 0);
    assert_int_equal(wire_server_recv(srv, &m, 500), 0);
    assert_false(wire_client_connected(c));
    wire_client_destroy(&c);
    /* mismatched key pairs are refused up front */
    assert_null(wire_client_new(wire_server_endpoint(srv), s_server.pk, s_node_b.pk, s_node_a.sk, "x", &o));
    assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
    wire_server_destroy(&srv);
    assert_null(wire_server_new("tcp://127.0.0.1:*", s_server.sk, s_node_a.pk, &o));
}

static void test_allowlist_swap_revokes(void **state)
{
    (void)state;
    wire_server_t *srv = s_curve_server("tcp://127.0.0.1:*");
    wire_client_t *ca = s_client(srv, &s_node_a, "node-a");
    wire_client_t *cb = s_client(srv, &s_node_b, "node-b");
    assert_int_equal(s_send_hello(ca, "node-a"), 0);
    wire_msg_t m;
    assert_int_equal(s_srv_recv(srv, &m), 1);
    assert_string_equal(m.node_id, "node-a");
    wire_msg_close(&m);

    /* enrol b and revoke a, without restarting */
    wire_allow_entry_t allow[1];
    snprintf(allow[0].node_id, sizeof allow[0].node_id, "node-b");
    memcpy(allow[0].public_key, s_node_b.pk, 32);
    assert_int_equal(wire_server_set_allowlist(srv, allow, 1), 0);

    /* b (refused earlier, or not yet connected) gets in on its next attempt: the client
     * redials by itself while the node sits in wire_client_recv */
    for (int i = 0; i < 60 && !wire_client_connected(cb); i++)
        assert_int_equal(wire_client_recv(cb, &m, 100), 0);
    assert_true(wire_client_connected(cb));
    assert_false(wire_client_auth_refused(cb));
    assert_int_equal(s_send_hello(cb, "node-b"), 0);
    int rc;
    while ((rc = s_srv_recv(srv, &m)) == 1 && strcmp(m.node_id, "node-b") != 0)
        wire_msg_close(&m);
    assert_int_equal(rc, 1);
    assert_string_equal(m.node_id, "node-b");
    wire_msg_close(&m);

    /* a is still connected but everything it sends is dropped and answered REVOKED */
    assert_int_equal(s_send_hello(ca, "node-a"), 0);
    while ((rc = s_srv_recv(srv, &m)) == 1) { /* b's heartbeats may come first */
        assert_string_equal(m.node_id, "node-b");
        wire_msg_close(&m);
    }
    assert_int_equal(rc, -1);
    assert_int_equal(medfl_error_code(), MEDFL_EPERM);
    assert_string_equal(m.node_id, "node-a");
    assert_false(wire_server_has_peer(srv, "node-a"));
    assert_true(s_log_contains("dropped message from node 'node-a': no longer enrolled"));
    int got = 0;
    for (int i = 0; i < 20 && !got; i++) {
        rc = wire_client_recv(ca, &m, 250);
        assert_true(rc >= 0);
        if (rc == 1) {
            assert_int_equal(m.type, MEDFL__MSG_TYPE__MSG_ERROR);
            assert_int_equal(m.body.error->code, MEDFL__ERROR_CODE__ERROR_REVOKED);
            got = 1;
            wire_msg_close(&m);
        }
    }
    assert_true(got);
    wire_server_stats_t st;
    wire_server_stats(srv, &st);
    assert_true(st.revoked_drops >= 1);

    /* bad allowlists are refused and leave the current one in place */
    wire_allow_entry_t dup[2];
    dup[0] = allow[0];
    dup[1] = allow[0];
    snprintf(dup[1].node_id, sizeof dup[1].node_id, "node-c");
    assert_int_equal(wire_server_set_allowlist(srv, dup, 2), -1);
    snprintf(dup[1].node_id, sizeof dup[1].node_id, "bad id");
    assert_int_equal(wire_server_set_allowlist(srv, dup, 2), -1);
    assert_int_equal(s_send_hello(cb, "node-b"), 0);
    /* skip b's heartbeats and the drops of a's queued heartbeats */
    while (((rc = s_srv_recv(srv, &m)) == 1 && m.type == MEDFL__MSG_TYPE__MSG_HEARTBEAT) ||
           (rc == -1 && strcmp(m.node_id, "node-a") == 0))
        wire_msg_close(&m);
    assert_int_equal(rc, 1);
    assert_string_equal(m.node_id, "node-b");
    wire_msg_close(&m);
    wire_client_destroy(&ca);
    wire_client_destroy(&cb);
    wire_server_destroy(&srv);
}

/* A raw libzmq CURVE DEALER with node a's key, to send frames wire_client never would. */
static void *s_raw_dealer(void *ctx, const char *endpoint)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    assert_non_null(s);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, s_server.pk, 32), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, s_node_a.pk, 32), 0);
    assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, s_node_a.sk, 32), 0);
    assert_int_equal(zmq_connect(s, endpoint), 0);
    return s;
}

/* Sends frames (NULL-terminated list of (data,len)) then expects the server to reject it
 * with a reason containing `why`, and still accept a good message afterwards. */
static void s_expect_rejected(wire_server_t *srv, void *raw, const char *why)
{
    wire_msg_t m;
    int rc;
    while ((rc = s_srv_recv(srv, &m)) == 1) /* skip nothing legit expected here */
        wire_msg_close(&m);
    assert_int_equal(rc, -1);
    if (!strstr(medfl_error_message(), why))
        fail_msg("reason '%s' lacks '%s'", medfl_error_message(), why);
    /* the sender is told why */
    zmq_pollitem_t it = {raw, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 2000), 1);
    char buf[2048];
    int n = zmq_recv(raw, buf, sizeof buf, 0);
    assert_true(n > 0);
    wire_decoded_t d;
    assert_int_equal(wire_decode(buf, (size_t)n, &d), 0);
    assert_int_equal(d.type, MEDFL__MSG_TYPE__MSG_ERROR);
    assert_true(d.body.error->code == MEDFL__ERROR_CODE__ERROR_PROTOCOL ||
                d.body.error->code == MEDFL__ERROR_CODE__ERROR_VERSION);
    wire_decoded_clear(&d);
}

static void s_raw_send_good(wire_server_t *srv, void *raw)
{
    Medfl__EvalReport e = MEDFL__EVAL_REPORT__INIT;
    e.version = 3, e.loss = 0.5, e.accuracy = 0.9, e.macro_f1 = 0.8, e.n = 100;
    uint8_t *buf;
    size_t len;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_EVAL_REPORT, 4, "node-a", &e.base, &buf, &len), 0);
    assert_int_equal(zmq_send(raw, buf, len, 0), (int)len);
    free(buf);
    wire_msg_t m;
    assert_int_equal(s_srv_recv(srv, &m), 1);
    assert_int_equal(m.type, MEDFL__MSG_TYPE__MSG_EVAL_REPORT);
    assert_int_equal(m.round_id, 4);
    assert_int_equal(m.body.eval_report->n, 100);
    assert_string_equal(m.node_id, "node-a");
    wire_msg_close(&m);
}

static void test_bad_frames_rejected_server_survives(void **state)
{
    (void)state;
    wire_server_t *srv = s_curve_server("tcp://127.0.0.1:*");
    void *ctx = zmq_ctx_new();
    void *raw = s_raw_dealer(ctx, wire_server_endpoint(srv));
    s_raw_send_good(srv, raw);

    /* garbage */
    uint8_t junk[300];
    memset(junk, 0xa5, sizeof junk);
    zmq_send(raw, junk, sizeof junk, 0);
    s_expect_rejected(srv, raw, "not a valid protobuf");
    s_raw_send_good(srv, raw);

    /* truncated */
    Medfl__EvalReport e = MEDFL__EVAL_REPORT__INIT;
    e.loss = 1;
    uint8_t *buf;
    size_t len;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_EVAL_REPORT, 1, "node-a", &e.base, &buf, &len), 0);
    zmq_send(raw, buf, len - 4, 0);
    s_expect_rejected(srv, raw, "");
    s_raw_send_good(srv, raw);

    /* extra frames */
    zmq_send(raw, buf, len, ZMQ_SNDMORE);
    zmq_send(raw, "x", 1, ZMQ_SNDMORE);
    zmq_send(raw, "y", 1, 0);
    s_expect_rejected(srv, raw, "extra frame");
    s_raw_send_good(srv, raw);

    /* a bulk frame on a type that takes none */
    zmq_send(raw, buf, len, ZMQ_SNDMORE);
    zmq_send(raw, "x", 1, 0);
    s_expect_rejected(srv, raw, "unexpected bulk");
    free(buf);
    s_raw_send_good(srv, raw);

    /* oversized envelope */
    size_t big = WIRE_ENVELOPE_MAX + 10;
    uint8_t *huge = calloc(1, big);
    zmq_send(raw, huge, big, 0);
    free(huge);
    s_expect_rejected(srv, raw, "at most");
    s_raw_send_good(srv, raw);

    /* wrong protocol version */
    uint8_t env[64];
    size_t n = s_raw_envelope(env, 7, MEDFL__MSG_TYPE__MSG_HEARTBEAT, "node-a", NULL, 0);
    zmq_send(raw, env, n, 0);
    s_expect_rejected(srv, raw, "protocol version 7");
    s_raw_send_good(srv, raw);

    /* a node claiming another node's id */
    n = s_raw_envelope(env, 1, MEDFL__MSG_TYPE__MSG_HEARTBEAT, "node-z", NULL, 0);
    zmq_send(raw, env, n, 0);
    s_expect_rejected(srv, raw, "claimed to be 'node-z'");
    s_raw_send_good(srv, raw);

    /* an empty frame */
    zmq_send(raw, "", 0, 0);
    s_expect_rejected(srv, raw, "empty frame");
    s_raw_send_good(srv, raw);

    assert_true(s_log_contains("rejected message from node-a"));
    wire_server_stats_t st;
    wire_server_stats(srv, &st);
    assert_int_equal(st.rejected, 8);

    /* a burst of random messages (1-3 frames of random bytes, some starting like a real
     * envelope): every one is answered, none stops the server */
    uint8_t rnd[2048];
    for (int i = 0; i < 100; i++) {
        int frames = 1 + (int)randombytes_uniform(3);
        for (int f = 0; f < frames; f++) {
            size_t sz = 1 + randombytes_uniform(sizeof rnd);
            randombytes_buf(rnd, sz);
            if (f == 0 && i % 2 && sz > 4) /* field 1 = version 1, field 2 = a type */
                rnd[0] = 0x08, rnd[1] = 0x01, rnd[2] = 0x10, rnd[3] = (uint8_t)(i % 17);
            zmq_send(raw, rnd, sz, f + 1 < frames ? ZMQ_SNDMORE : 0);
        }
    }
    int handled = 0;
    wire_msg_t m;
    while (handled < 100) {
        int rc = s_srv_recv(srv, &m);
        assert_int_not_equal(rc, 0); /* each arrives and is handled, none is lost */
        wire_msg_close(&m);
        handled++;
    }
    char sink[4096];
    while (zmq_recv(raw, sink, sizeof sink, ZMQ_DONTWAIT) >= 0)
        ; /* the Error replies */
    s_raw_send_good(srv, raw);
    zmq_close(raw);
    zmq_ctx_term(ctx);
    wire_server_destroy(&srv);
}

static int s_freed;
static void s_count_free(void *data, void *hint)
{
    (void)hint;
    free(data);
    s_freed++;
}

static void test_bulk_round_trip_8mib(void **state)
{
    (void)state;
    wire_server_t *srv = s_curve_server("tcp://127.0.0.1:*");
    wire_client_t *c = s_client(srv, &s_node_a, "node-a");
    size_t n = (8u << 20) / 4;
    float *t = malloc(n * sizeof *t);
    assert_non_null(t);
    for (size_t i = 0; i < n; i++)
        t[i] = (float)i * 0.5f - 7.0f;
    float *ref = malloc(n * sizeof *ref);
    memcpy(ref, t, n * sizeof *ref);
    Medfl__Update u = MEDFL__UPDATE__INIT;
    u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_F32;
    u.n_elements = n;
    u.n_examples = 42;
    u.weight = 1.0;
    s_freed = 0;
    assert_int_equal(wire_client_send(c, MEDFL__MSG_TYPE__MSG_UPDATE, 5, &u.base, t, n * 4,
                                      s_count_free, NULL), 0);
    wire_msg_t m;
    int rc;
    while ((rc = s_srv_recv(srv, &m)) == 1 && m.type == MEDFL__MSG_TYPE__MSG_HEARTBEAT)
        wire_msg_close(&m);
    assert_int_equal(rc, 1);
    assert_int_equal(m.type, MEDFL__MSG_TYPE__MSG_UPDATE);
    assert_int_equal(m.round_id, 5);
    assert_int_equal(m.bulk_len, n * 4);
    assert_memory_equal(m.bulk, ref, n * 4);
    wire_bulk_t *b = wire_msg_take_bulk(&m);
    assert_non_null(b);
    assert_null(m.bulk);
    wire_msg_close(&m);
    assert_int_equal(wire_bulk_size(b), n * 4);
    assert_memory_equal(wire_bulk_data(b), ref, n * 4);
    wire_bulk_destroy(&b);
    wire_bulk_destroy(&b);
    assert_int_equal(s_freed, 1); /* the sender's buffer was handed over, freed once */

    /* a mismatched bulk is refused by the sender, and its buffer still freed */
    float *bad = malloc(16);
    assert_int_equal(wire_client_send(c, MEDFL__MSG_TYPE__MSG_UPDATE, 5, &u.base, bad, 16,
                                      s_count_free, NULL), -1);
    assert_int_equal(s_freed, 2);

    /* aggregator -> nodes: one 8 MiB buffer shared by send_many */
    Medfl__VersionAnnounce va = MEDFL__VERSION_ANNOUNCE__INIT;
    uint8_t sig[64] = {1}, hash[32] = {2};
    va.version = 1, va.signature.data = sig, va.signature.len = 64;
    va.hash.data = hash, va.hash.len = 32;
    float *w = malloc(n * 4);
    memcpy(w, ref, n * 4);
    const char *ids[] = {"node-a", "ghost"};
    assert_int_equal(wire_server_send_many(srv, ids, 2, MEDFL__MSG_TYPE__MSG_VERSION_ANNOUNCE, 5,
                                           &va.base, w, n * 4, s_count_free, NULL), 1);
    assert_int_equal(wire_client_recv(c, &m, 5000), 1);
    assert_int_equal(m.type, MEDFL__MSG_TYPE__MSG_VERSION_ANNOUNCE);
    assert_int_equal(m.bulk_len, n * 4);
    assert_memory_equal(m.bulk, ref, n * 4);
    wire_msg_close(&m);
    /* byte counters (the daemons' metrics): one 8 MiB bulk each way plus small envelopes;
     * the refused send and the send to the ghost count nothing */
    uint64_t c_sent, c_recv;
    wire_client_traffic(c, &c_sent, &c_recv);
    wire_server_stats_t st;
    wire_server_stats(srv, &st);
    assert_true(c_sent >= n * 4 && c_sent < n * 4 + 4096);
    assert_true(c_recv >= n * 4 && c_recv < n * 4 + 4096);
    assert_true(st.bytes_received >= n * 4 && st.bytes_received <= c_sent);
    assert_true(st.bytes_sent >= n * 4 && st.bytes_sent < n * 4 + 4096);
    wire_client_destroy(&c);
    wire_server_destroy(&srv);
    assert_int_equal(s_freed, 3);
    free(ref);
}

static void test_plain_mode(void **state)
{
    (void)state;
    wire_options_t o = s_fast_opts();
    wire_server_t *srv = wire_server_new("tcp://127.0.0.1:*", NULL, NULL, &o);
    assert_non_null(srv);
    wire_client_t *c = wire_client_new(wire_server_endpoint(srv), NULL, NULL, NULL, "plain-1", &o);
    assert_non_null(c);
    Medfl__Decline d = MEDFL__DECLINE__INIT;
    d.round_id = 3, d.reason = MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET, d.text = "eps";
    assert_int_equal(wire_client_send(c, MEDFL__MSG_TYPE__MSG_DECLINE, 3, &d.base, NULL, 0, NULL, NULL), 0);
    wire_msg_t m;
    assert_int_equal(s_srv_recv(srv, &m), 1);
    assert_string_equal(m.node_id, "plain-1");
    assert_int_equal(m.body.decline->reason, MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET);
    wire_msg_close(&m);
    wire_client_destroy(&c);
    wire_server_destroy(&srv);
    /* option checks: the timeout must exceed the interval; a timeout beyond what ZMTP's
     * TTL field holds (6553.5 s) is accepted */
    o.heartbeat_timeout_ms = o.heartbeat_ivl_ms;
    assert_null(wire_server_new("tcp://127.0.0.1:*", NULL, NULL, &o));
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    o.heartbeat_timeout_ms = 10000000;
    srv = wire_server_new("tcp://127.0.0.1:*", NULL, NULL, &o);
    assert_non_null(srv);
    wire_server_destroy(&srv);
    o = s_fast_opts();
    /* half a key set is an error */
    assert_null(wire_server_new("tcp://127.0.0.1:*", s_server.sk, NULL, &o));
    assert_null(wire_client_new("tcp://127.0.0.1:1", s_server.pk, NULL, NULL, "x", &o));
    assert_null(wire_client_new("tcp://127.0.0.1:1", NULL, NULL, NULL, "bad id", &o));
}

static void test_reconnect_after_server_restart(void **state)
{
    (void)state;
    wire_server_t *srv = s_curve_server("tcp://127.0.0.1:*");
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s", wire_server_endpoint(srv));
    uint8_t first_instance[WIRE_INSTANCE_ID_LEN];
    memcpy(first_instance, wire_server_instance_id(srv), sizeof first_instance);
    wire_client_t *c = s_client(srv, &s_node_a, "node-a");
    assert_int_equal(s_send_hello(c, "node-a"), 0);
    wire_msg_t m;
    assert_int_equal(s_srv_recv(srv, &m), 1);
    wire_msg_close(&m);
    assert_int_equal(wire_client_connections(c), 1);

    wire_server_destroy(&srv);
    bool down = false;
    for (int i = 0; i < 40 && !down; i++) {
        assert_int_equal(wire_client_recv(c, &m, 100), 0);
        down = !wire_client_connected(c);
    }
    assert_true(down);

    /* same port, new process state: the client finds it by itself */
    srv = s_curve_server(endpoint);
    assert_memory_not_equal(wire_server_instance_id(srv), first_instance, WIRE_INSTANCE_ID_LEN);
    uint64_t conns = 0;
    for (int i = 0; i < 50 && conns < 2; i++) {
        assert_int_equal(wire_client_recv(c, &m, 100), 0);
        conns = wire_client_connections(c);
    }
    assert_int_equal(conns, 2);
    assert_true(wire_client_connected(c));
    assert_int_equal(s_send_hello(c, "node-a"), 0);
    int rc;
    while ((rc = s_srv_recv(srv, &m)) == 1 && m.type != MEDFL__MSG_TYPE__MSG_HELLO)
        wire_msg_close(&m);
    assert_int_equal(rc, 1);
    assert_string_equal(m.node_id, "node-a");
    wire_msg_close(&m);
    wire_client_destroy(&c);
    wire_server_destroy(&srv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_decode_round_trip),
        cmocka_unit_test(test_decode_rejects_bad_input),
        cmocka_unit_test(test_round_context),
        cmocka_unit_test(test_bulk_rules),
        cmocka_unit_test(test_key_id_and_node_ids),
        cmocka_unit_test(test_enrolled_node_gets_through),
        cmocka_unit_test(test_unknown_key_refused_and_logged),
        cmocka_unit_test(test_allowlist_swap_revokes),
        cmocka_unit_test(test_bad_frames_rejected_server_survives),
        cmocka_unit_test(test_bulk_round_trip_8mib),
        cmocka_unit_test(test_plain_mode),
        cmocka_unit_test(test_reconnect_after_server_restart),
    };
    return cmocka_run_group_tests_name("wire", tests, s_setup, s_teardown);
}
