/* medfl-bench wire: throughput of one large update node -> aggregator over loopback
 * through the medfl wire layer (CURVE, and the same path without CURVE), against a bare
 * libzmq DEALER -> ROUTER CURVE transfer of one message of the same size measured in the
 * same process, so the ratio says what the wire layer costs on this machine whatever its
 * speed (issue 2 target: wire_curve_vs_baseline >= 0.8).
 *
 * The three measurements are interleaved rep by rep (in rotating order) and each reports
 * its median, so a burst of load from other processes hits all of them alike. Every
 * transfer is timed from the send call until the receiver holds the whole message;
 * connections are established (handshake done) before the clock starts. MB = 10^6 bytes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>
#include <zmq.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "common/wire.h"
#include "tests/bench/bench.h"

static void s_usage(void)
{
    printf("usage: medfl-bench wire [--size-mb N] [--reps N]\n"
           "  Sends an N MiB update (default 64) node -> aggregator over loopback: medfl wire\n"
           "  with CURVE, without CURVE, and a bare libzmq CURVE DEALER->ROUTER baseline.\n"
           "  --reps N   transfers per variant, median reported (default 3)\n");
}

static void s_no_free(void *data, void *hint)
{
    (void)data;
    (void)hint; /* the benchmark owns the buffer and reuses it */
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct {
    uint8_t spk[32], ssk[32], cpk[32], csk[32];
} keys_t;

/* One medfl wire session (server + client), CURVE or plain, kept across reps. */
typedef struct {
    wire_server_t *srv;
    wire_client_t *cli;
} wire_pair_t;

static int s_wire_open(wire_pair_t *p, const keys_t *k, bool curve)
{
    memset(p, 0, sizeof *p);
    wire_options_t o;
    wire_options_default(&o);
    o.send_timeout_ms = 60000;
    p->srv = wire_server_new("tcp://127.0.0.1:*", curve ? k->ssk : NULL, curve ? k->spk : NULL, &o);
    if (!p->srv)
        return -1;
    if (curve) {
        wire_allow_entry_t a;
        snprintf(a.node_id, sizeof a.node_id, "bench-node");
        memcpy(a.public_key, k->cpk, 32);
        if (wire_server_set_allowlist(p->srv, &a, 1) < 0)
            return -1;
    }
    p->cli = wire_client_new(wire_server_endpoint(p->srv), curve ? k->spk : NULL,
                             curve ? k->cpk : NULL, curve ? k->csk : NULL, "bench-node", &o);
    if (!p->cli)
        return -1;
    /* Handshake and first message outside the clock. */
    Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
    if (wire_client_send(p->cli, MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, &hb.base, NULL, 0, NULL, NULL) < 0)
        return -1;
    wire_msg_t m;
    int rc = wire_server_recv(p->srv, &m, 10000);
    wire_msg_close(&m);
    if (rc != 1)
        return rc < 0 ? -1 : medfl_error_set(MEDFL_ETIMEOUT, "wire bench: no handshake in 10 s");
    return 0;
}

static void s_wire_close(wire_pair_t *p)
{
    wire_client_destroy(&p->cli);
    wire_server_destroy(&p->srv);
}

/* Seconds for one update of size bytes through the wire layer, or -1. */
static double s_wire_once(wire_pair_t *p, const uint8_t *buf, size_t size)
{
    Medfl__Update u = MEDFL__UPDATE__INIT;
    u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_F32;
    u.n_elements = size / 4;
    u.n_examples = 1;
    u.weight = 1;
    double t0 = bench_now();
    if (wire_client_send(p->cli, MEDFL__MSG_TYPE__MSG_UPDATE, 1, &u.base, buf, size, s_no_free, NULL) < 0)
        return -1;
    wire_msg_t m;
    for (;;) {
        int rc = wire_server_recv(p->srv, &m, 60000);
        if (rc <= 0)
            return rc < 0 ? -1 : medfl_error_set(MEDFL_ETIMEOUT, "wire bench: update lost");
        if (m.type == MEDFL__MSG_TYPE__MSG_UPDATE)
            break;
        wire_msg_close(&m);
    }
    double dt = bench_now() - t0;
    bool ok = m.bulk_len == size && m.bulk[0] == buf[0] && m.bulk[size - 1] == buf[size - 1];
    wire_msg_close(&m);
    if (!ok)
        return medfl_error_set(MEDFL_EPROTO, "wire bench: update arrived damaged");
    return dt;
}

/* Bare libzmq: CURVE DEALER -> ROUTER in two contexts (one I/O thread each, like the wire
 * layer), no ZAP handler, no envelope, zero-copy send. */
typedef struct {
    void *sctx, *cctx, *router, *dealer;
} raw_pair_t;

static int s_raw_open(raw_pair_t *p, const keys_t *k)
{
    memset(p, 0, sizeof *p);
    p->sctx = zmq_ctx_new();
    p->cctx = zmq_ctx_new();
    p->router = zmq_socket(p->sctx, ZMQ_ROUTER);
    p->dealer = zmq_socket(p->cctx, ZMQ_DEALER);
    int one = 1, zero = 0;
    char ep[256];
    size_t eplen = sizeof ep;
    if (!p->router || !p->dealer ||
        zmq_setsockopt(p->router, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(p->dealer, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(p->router, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(p->router, ZMQ_CURVE_SECRETKEY, k->ssk, 32) ||
        zmq_bind(p->router, "tcp://127.0.0.1:*") ||
        zmq_getsockopt(p->router, ZMQ_LAST_ENDPOINT, ep, &eplen) ||
        zmq_setsockopt(p->dealer, ZMQ_CURVE_SERVERKEY, k->spk, 32) ||
        zmq_setsockopt(p->dealer, ZMQ_CURVE_PUBLICKEY, k->cpk, 32) ||
        zmq_setsockopt(p->dealer, ZMQ_CURVE_SECRETKEY, k->csk, 32) || zmq_connect(p->dealer, ep))
        return medfl_error_set(MEDFL_EIO, "baseline sockets: %s", zmq_strerror(errno));
    /* handshake outside the clock */
    char b[16];
    int rcvtimeo = 10000;
    zmq_setsockopt(p->router, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo);
    if (zmq_send(p->dealer, "hi", 2, 0) != 2 || zmq_recv(p->router, b, sizeof b, 0) < 0 ||
        zmq_recv(p->router, b, sizeof b, 0) != 2)
        return medfl_error_set(MEDFL_EIO, "baseline handshake: %s", zmq_strerror(errno));
    rcvtimeo = 60000;
    zmq_setsockopt(p->router, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo);
    return 0;
}

static void s_raw_close(raw_pair_t *p)
{
    if (p->dealer)
        zmq_close(p->dealer);
    if (p->router)
        zmq_close(p->router);
    if (p->cctx)
        zmq_ctx_term(p->cctx);
    if (p->sctx)
        zmq_ctx_term(p->sctx);
}

static double s_raw_once(raw_pair_t *p, const uint8_t *buf, size_t size)
{
    zmq_msg_t out, rid, in;
    zmq_msg_init_data(&out, (void *)buf, size, s_no_free, NULL);
    double t0 = bench_now();
    if (zmq_msg_send(&out, p->dealer, 0) < 0) {
        zmq_msg_close(&out);
        return medfl_error_set(MEDFL_EIO, "baseline send: %s", zmq_strerror(errno));
    }
    zmq_msg_init(&rid);
    zmq_msg_init(&in);
    if (zmq_msg_recv(&rid, p->router, 0) < 0 || zmq_msg_recv(&in, p->router, 0) < 0) {
        zmq_msg_close(&rid);
        zmq_msg_close(&in);
        return medfl_error_set(MEDFL_EIO, "baseline receive: %s", zmq_strerror(errno));
    }
    double dt = bench_now() - t0;
    bool ok = zmq_msg_size(&in) == size;
    zmq_msg_close(&rid);
    zmq_msg_close(&in);
    if (!ok)
        return medfl_error_set(MEDFL_EPROTO, "baseline: message arrived damaged");
    return dt;
}

int bench_wire(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage();
        return 0;
    }
    long size_mb = 64, reps = 3;
    for (int i = 1; i < argc; i++) {
        long *dst = !strcmp(argv[i], "--size-mb") ? &size_mb : !strcmp(argv[i], "--reps") ? &reps : NULL;
        char *end = NULL;
        if (!dst || i + 1 >= argc) {
            medfl_error_set(MEDFL_EINVAL, "wire: unknown or incomplete option '%s'", argv[i]);
            return cli_fail("medfl-bench");
        }
        *dst = strtol(argv[++i], &end, 10);
        if (!end || *end || *dst < 1 || *dst > (dst == &size_mb ? 1024 : 100)) {
            medfl_error_set(MEDFL_EINVAL, "wire: option '%s': '%s' out of range", argv[i - 1], argv[i]);
            return cli_fail("medfl-bench");
        }
    }
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "libsodium initialisation failed");
        return cli_fail("medfl-bench");
    }
    log_configure(NULL, LOG_LEVEL_WARN, LOG_FORMAT_TEXT); /* keep stdout to figures */
    size_t size = (size_t)size_mb << 20;
    uint8_t *buf = malloc(size);
    double *t_curve = calloc((size_t)reps, sizeof(double));
    double *t_plain = calloc((size_t)reps, sizeof(double));
    double *t_base = calloc((size_t)reps, sizeof(double));
    keys_t k;
    wire_pair_t wc = {0}, wp = {0};
    raw_pair_t raw = {0};
    int status = 1;
    if (!buf || !t_curve || !t_plain || !t_base) {
        medfl_error_set(MEDFL_ENOMEM, "wire: %zu bytes", size);
        goto done;
    }
    randombytes_buf(buf, size);
    crypto_box_keypair(k.spk, k.ssk);
    crypto_box_keypair(k.cpk, k.csk);
    if (s_wire_open(&wc, &k, true) < 0 || s_wire_open(&wp, &k, false) < 0 || s_raw_open(&raw, &k) < 0)
        goto done;
    /* The order rotates each rep so that no variant always runs first (cold caches,
     * allocator state) or right after the expensive plain transfer. */
    for (long r = 0; r < reps; r++) {
        for (int v = 0; v < 3; v++) {
            int which = (int)((r + v) % 3);
            double t = which == 0   ? s_raw_once(&raw, buf, size)
                       : which == 1 ? s_wire_once(&wc, buf, size)
                                    : s_wire_once(&wp, buf, size);
            if (t < 0)
                goto done;
            (which == 0 ? t_base : which == 1 ? t_curve : t_plain)[r] = t;
        }
    }
    double mb = (double)size / 1e6;
    double curve = mb / s_median(t_curve, (int)reps), plain = mb / s_median(t_plain, (int)reps);
    double base = mb / s_median(t_base, (int)reps);
    printf("wire_size_MiB: %ld MiB\n", size_mb);
    printf("wire_reps: %ld reps\n", reps);
    printf("wire_curve_MBps: %.1f MB/s\n", curve);
    printf("wire_plain_MBps: %.1f MB/s\n", plain);
    printf("wire_baseline_curve_MBps: %.1f MB/s\n", base);
    printf("wire_curve_vs_baseline: %.3f x\n", curve / base);
    status = 0;
done:
    s_wire_close(&wc);
    s_wire_close(&wp);
    s_raw_close(&raw);
    if (status)
        cli_fail("medfl-bench");
    free(buf);
    free(t_curve);
    free(t_plain);
    free(t_base);
    return status;
}
