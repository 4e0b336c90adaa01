/* libFuzzer target for the aggregator's round handlers: arbitrary message SEQUENCES from
 * three enrolled nodes go to a live round state machine (aggregator/rounds.c), not only to
 * the decoders. Every input starts a fresh aggregator (journal, version store, genesis
 * vector of 16) on a plain-mode wire server with nobody connected (its sends fail quietly),
 * starts one round (plain or secure, scheme picked by the first byte) and then reads records:
 *
 *   op (1 byte)  0xff: advance the clock past the phase deadline and tick; anything else:
 *                a message of type op % 17 from node (sender % 4; 3 = not a participant),
 *   sender (1)   for round (0 = the current one, else that id), with
 *   round (1)    an envelope body of body_len bytes and a bulk frame of bulk_len bytes
 *   body_len (2, little endian), bulk_len (2), body, bulk   (0xffff = no bulk frame)
 *
 * A message goes through exactly what the server does before the daemon sees it (the
 * envelope built around the body, wire_decode, wire_check_bulk), then rounds_on_message.
 * No crash, no leak, no undefined behaviour, no read past a frame (the bulk is a heap copy
 * of exactly bulk_len bytes). Seeds: tests/fuzz/corpus/rounds/ (gen_rounds_seeds.c: valid
 * updates of every plain scheme, a forged eval, the issue #16 short bulk). */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "aggregator/agg_config.h"
#include "aggregator/rounds.h"
#include "common/log.h"
#include "common/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define N_NODES 3
#define MAX_MSGS 64

static wire_server_t *s_server;
static char s_base[256];
static uint8_t s_sk[64], s_pk[32], s_ipk[N_NODES][32];
static unsigned long s_case;

static int s_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void s_cleanup(void)
{
    wire_server_destroy(&s_server);
    nftw(s_base, s_rm, 16, FTW_DEPTH | FTW_PHYS);
}

static void s_once(void)
{
    if (s_server) return;
    if (sodium_init() < 0) abort();
    FILE *null = fopen("/dev/null", "w"); /* the refusals are the point: not printed */
    log_configure(null ? null : stderr, LOG_LEVEL_ERROR, LOG_FORMAT_TEXT);
    const char *shm = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(s_base, sizeof s_base, "%s/medfl-fuzz-rounds-%d", shm, (int)getpid());
    if (mkdir(s_base, 0700) != 0) abort();
    crypto_sign_keypair(s_pk, s_sk);
    for (int i = 0; i < N_NODES; i++) randombytes_buf(s_ipk[i], 32);
    s_server = wire_server_new("tcp://127.0.0.1:*", NULL, NULL, NULL);
    if (!s_server) abort();
    atexit(s_cleanup);
}

static uint16_t s_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

/* Builds the envelope around body, decodes it as the server would and hands it on. */
static void s_deliver(rounds_t *r, int64_t now, Medfl__MsgType type, const char *who,
                      uint64_t round_id, const uint8_t *body, size_t body_len,
                      const uint8_t *bulk, size_t bulk_len, int has_bulk)
{
    Medfl__Envelope env = MEDFL__ENVELOPE__INIT;
    env.protocol_version = WIRE_PROTOCOL_VERSION;
    env.type = type;
    env.round_id = round_id;
    env.sender = (char *)who;
    env.body.data = (uint8_t *)body;
    env.body.len = body_len;
    size_t len = medfl__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) return;
    medfl__envelope__pack(&env, buf);
    wire_msg_t msg;
    memset(&msg, 0, sizeof msg);
    int ok = wire_decode(buf, len, &msg._dec) == 0;
    free(buf);
    if (!ok) return;
    uint8_t *copy = NULL;
    if (wire_check_bulk(&msg._dec, has_bulk, bulk_len, (size_t)1 << 20) == 0) {
        snprintf(msg.node_id, sizeof msg.node_id, "%s", who);
        msg.type = msg._dec.type;
        msg.round_id = msg._dec.round_id;
        msg.body = msg._dec.body;
        if (has_bulk) {
            copy = malloc(bulk_len ? bulk_len : 1); /* exactly the frame: ASan sees overreads */
            if (copy) {
                memcpy(copy, bulk, bulk_len);
                msg.bulk = copy;
                msg.bulk_len = bulk_len;
            }
        }
        if (!has_bulk || copy) (void)rounds_on_message(r, &msg, now);
    }
    free(copy);
    wire_msg_close(&msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    s_once();
    if (size < 1) return 0;
    char dir[512], db[600], vdir[600];
    snprintf(dir, sizeof dir, "%s/%lu", s_base, s_case++);
    if (mkdir(dir, 0700) != 0) abort();
    snprintf(db, sizeof db, "%s/journal.db", dir);
    snprintf(vdir, sizeof vdir, "%s/versions", dir);

    static const char *schemes[] = {"none", "topk", "quantize", "randk"};
    agg_config_t cfg;
    if (cfg_set_defaults(agg_config_table, &cfg) != 0) abort();
    cfg.fed_secure = data[0] & 1;
    snprintf(cfg.comp_scheme, sizeof cfg.comp_scheme, "%s",
             schemes[cfg.fed_secure ? 2 * ((data[0] >> 1) & 1) : (data[0] >> 1) & 3]);
    cfg.fed_rounds = 0;
    cfg.fed_min_nodes = N_NODES;
    cfg.fed_max_nodes = N_NODES;
    cfg.fed_select_wait_ms = 0;
    cfg.fed_retry_ms = 0;
    cfg.fed_genesis_dim = 16;
    cfg.comp_k_frac = 0.5;
    cfg.dp_enabled = false;
    snprintf(cfg.fed_weighting, sizeof cfg.fed_weighting, "uniform");
    rounds_t *r = rounds_new(&cfg, s_server, db, vdir, s_sk, s_pk);
    if (!r) abort();
    static const char *ids[] = {"h0", "h1", "h2", "x9"};
    rounds_peer_t peers[N_NODES];
    for (int i = 0; i < N_NODES; i++) {
        peers[i].node_id = ids[i];
        peers[i].identity_pk = s_ipk[i];
        peers[i].n_records = 100;
    }
    int64_t now = 1000000;
    rounds_tick(r, peers, N_NODES, now);
    if (rounds_current(r) == 0) abort(); /* three nodes connected: a round must start */

    size_t off = 1;
    for (int k = 0; k < MAX_MSGS && off < size; k++) {
        uint8_t op = data[off++];
        if (op == 0xff) {
            now += 3600 * 1000; /* past any phase deadline */
            rounds_tick(r, peers, N_NODES, now);
            continue;
        }
        if (size - off < 6) break;
        const char *who = ids[data[off] % 4];
        uint64_t rid = data[off + 1] ? data[off + 1] : rounds_current(r);
        size_t blen = s_u16(data + off + 2), bulk_len = s_u16(data + off + 4);
        int has_bulk = bulk_len != 0xffff;
        if (!has_bulk) bulk_len = 0;
        off += 6;
        if (blen > size - off) blen = size - off;
        const uint8_t *body = data + off;
        off += blen;
        if (bulk_len > size - off) bulk_len = size - off;
        const uint8_t *bulk = data + off;
        off += bulk_len;
        s_deliver(r, now, (Medfl__MsgType)(op % 17), who, rid, body, blen, bulk, bulk_len,
                  has_bulk);
        rounds_tick(r, peers, N_NODES, ++now);
    }
    rounds_destroy(&r);
    nftw(dir, s_rm, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}
