/* medfl-bench rounds: the cost of a round as the federation ages. An in-process federation
 * (aggregator/rounds.c on a plain-mode wire server over loopback TCP, N node/round.c
 * participants on wire clients, one loop driving them all, a trainer that returns a fixed
 * tiny delta at once) runs R rounds; with no training work and a tiny vector, a round's wall
 * time is the protocol's own overhead: selection, messages, the server step, signing,
 * writing and verifying version v + 1 on the aggregator and every node, the journal.
 *
 * What it guards: that overhead must not grow with the number of rounds already run (a
 * federation of 1000 rounds must not pay for its history in every round). It prints the
 * mean process CPU time per round (round_overhead_ms_*: the cost, steady on a shared
 * machine) and wall time per round (round_wall_ms_*) of the first and of the last
 * `--window` rounds, and the CPU ratio. The first round is left out of the first window: it
 * also sets up connections and writes genesis. The default folder is /dev/shm when it
 * exists: fsync on a shared disk varies tenfold from minute to minute and would drown the
 * growth this measures (`--dir` to measure on a disk).
 * Every committed version is checked at the end: the head is the exact sum of the rounds'
 * mean deltas, and its chain verifies from genesis on the aggregator and on every node. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aggregator/agg_config.h"
#include "aggregator/rounds.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "common/service.h"
#include "common/version_store.h"
#include "common/wire.h"
#include "node/ledger.h"
#include "node/round.h"
#include "tests/bench/bench.h"

#define S_MAX_NODES 16
#define S_DIM_MAX 1000000

static void s_usage(FILE *out)
{
    fprintf(out,
            "Usage: medfl-bench rounds [--rounds R] [--nodes N] [--dim D] [--window W] [--secure]\n"
            "                          [--dir PATH]\n"
            "  --rounds R   rounds to run (default 1000)\n"
            "  --nodes N    nodes, 2..%d (default 3)\n"
            "  --dim D      length of the model vector (default 16)\n"
            "  --window W   rounds averaged at the start and at the end (default 50)\n"
            "  --secure     secure aggregation (dense fixed point) instead of plain updates\n"
            "  --dir PATH   parent folder of the federation's state (default /dev/shm, else\n"
            "               $TMPDIR or /tmp); removed afterwards\n",
            S_MAX_NODES);
}

static int s_num(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    double d = strtod(v ? v : "", &end);
    if (!v || *end || d < lo || d > hi || d != floor(d))
        return medfl_error_set(MEDFL_EINVAL, "rounds bench: %s '%s' is not an integer in [%g, %g]",
                               opt, v ? v : "", lo, hi);
    *out = d;
    return 0;
}

/* delta_u[i] = 0.001 (u + 1): known, so the head after R rounds is known exactly. */
typedef struct {
    int index;
} s_trainer_t;

static int s_train(void *ctx, const float *global, size_t n, const round_hparams_t *hp,
                   float *delta, uint64_t *n_examples)
{
    (void)global;
    (void)hp;
    const s_trainer_t *t = ctx;
    for (size_t i = 0; i < n; i++) delta[i] = 0.001f * (float)(t->index + 1);
    *n_examples = 10;
    return 0;
}

static int s_eval(void *ctx, const float *x, size_t n, double *loss, double *acc, double *f1,
                  uint64_t *n_eval)
{
    (void)ctx;
    *loss = n ? x[0] : 0;
    *acc = *f1 = 0.5;
    *n_eval = 4;
    return 0;
}

typedef struct {
    agg_config_t cfg;
    wire_server_t *server;
    rounds_t *rounds;
    uint8_t agg_sk[64], agg_pk[32];
    size_t n;
    char ids[S_MAX_NODES][16];
    uint8_t sk[S_MAX_NODES][64], pk[S_MAX_NODES][32];
    s_trainer_t tt[S_MAX_NODES];
    wire_client_t *client[S_MAX_NODES];
    node_round_t *node[S_MAX_NODES];
    ledger_t *ledger[S_MAX_NODES];
    rounds_peer_t peers[S_MAX_NODES];
} s_fed_t;

static int s_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void s_fed_free(s_fed_t *f)
{
    for (size_t i = 0; i < f->n; i++) {
        node_round_destroy(&f->node[i]);
        wire_client_destroy(&f->client[i]);
        ledger_destroy(&f->ledger[i]);
    }
    rounds_destroy(&f->rounds);
    wire_server_destroy(&f->server);
}

static int s_fed_init(s_fed_t *f, const char *dir, size_t n, size_t dim, size_t rounds, bool secure)
{
    if (cfg_set_defaults(agg_config_table, &f->cfg) != 0) return -1;
    f->cfg.fed_rounds = (int64_t)rounds;
    f->cfg.fed_min_nodes = (int64_t)n;
    f->cfg.fed_max_nodes = (int64_t)n;
    f->cfg.fed_secure = secure;
    f->cfg.fed_select_wait_ms = 0;
    f->cfg.fed_retry_ms = 0;
    f->cfg.fed_genesis_dim = (int64_t)dim;
    f->cfg.dp_enabled = false;
    snprintf(f->cfg.fed_weighting, sizeof f->cfg.fed_weighting, "uniform");
    snprintf(f->cfg.comp_scheme, sizeof f->cfg.comp_scheme, "none");
    f->cfg.comp_clip = 0.05;
    crypto_sign_keypair(f->agg_pk, f->agg_sk);
    wire_options_t opts;
    wire_options_default(&opts);
    if (!(f->server = wire_server_new("tcp://127.0.0.1:*", NULL, NULL, &opts))) return -1;
    char db[4200], vdir[4200];
    snprintf(db, sizeof db, "%s/journal.db", dir);
    snprintf(vdir, sizeof vdir, "%s/versions", dir);
    if (!(f->rounds = rounds_new(&f->cfg, f->server, db, vdir, f->agg_sk, f->agg_pk))) return -1;
    f->n = n;
    for (size_t i = 0; i < n; i++) {
        snprintf(f->ids[i], sizeof f->ids[i], "h%zu", i);
        crypto_sign_keypair(f->pk[i], f->sk[i]);
        f->peers[i].node_id = f->ids[i];
        f->peers[i].identity_pk = f->pk[i];
        f->peers[i].n_records = 100;
        f->tt[i].index = (int)i;
        if (!(f->client[i] = wire_client_new(wire_server_endpoint(f->server), NULL, NULL, NULL,
                                             f->ids[i], &opts)))
            return -1;
        char sdir[4200];
        snprintf(sdir, sizeof sdir, "%s/%s", dir, f->ids[i]);
        if (service_mkdir_p(sdir, 0700) != 0) return -1;
        /* a node takes part only with a privacy ledger and a policy admitting the round, as
         * in a deployment (DP is off here: the ledger admits each round without spending) */
        char lpath[4300];
        snprintf(lpath, sizeof lpath, "%s/ledger.db", sdir);
        if (!(f->ledger[i] = ledger_open(lpath, 100.0, 1e-5, LEDGER_CREATE))) return -1;
        round_trainer_t tr = {.ctx = &f->tt[i], .train = s_train, .evaluate = s_eval};
        node_round_policy_t policy; /* rounds without DP: this measures the protocol */
        node_round_policy_default(&policy);
        policy.require_dp = false;
        node_round_opts_t o = {.node_id = f->ids[i], .state_dir = sdir, .identity_sk = f->sk[i],
                               .identity_pk = f->pk[i], .agg_sign_pk = f->agg_pk,
                               .ledger = f->ledger[i], .policy = &policy};
        if (!(f->node[i] = node_round_new(&o, &tr, f->client[i]))) return -1;
        /* the server learns a plain-mode client's route from its first message */
        Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
        if (wire_client_send(f->client[i], MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, &hb.base, NULL, 0,
                             NULL, NULL) != 0)
            return -1;
    }
    return 0;
}

/* One loop iteration without waiting: deadlines, the server's messages, every client's. */
static void s_step(s_fed_t *f)
{
    rounds_peer_t live[S_MAX_NODES];
    size_t n_live = 0;
    for (size_t i = 0; i < f->n; i++)
        if (wire_server_has_peer(f->server, f->ids[i])) live[n_live++] = f->peers[i];
    rounds_tick(f->rounds, live, n_live, service_now_ms());
    for (;;) {
        wire_msg_t msg;
        memset(&msg, 0, sizeof msg);
        int rc = wire_server_recv(f->server, &msg, 0);
        if (rc == 1) (void)rounds_on_message(f->rounds, &msg, service_now_ms());
        wire_msg_close(&msg);
        if (rc != 1) break;
    }
    for (size_t i = 0; i < f->n; i++)
        for (;;) {
            wire_msg_t msg;
            memset(&msg, 0, sizeof msg);
            int rc = wire_client_recv(f->client[i], &msg, 0);
            if (rc == 1) (void)node_round_on_message(f->node[i], &msg);
            wire_msg_close(&msg);
            if (rc != 1) break;
        }
}

/* The head after R rounds of uniform FedAvg: R times the mean delta, exactly up to float
 * rounding; and every chain verifies from genesis, on the aggregator and on every node. */
static int s_check(s_fed_t *f, const char *dir, size_t rounds, bool secure)
{
    size_t numel = 0;
    const float *g = rounds_global(f->rounds, &numel);
    double mean = 0;
    for (size_t u = 0; u < f->n; u++) mean += 0.001 * (double)(u + 1);
    mean /= (double)f->n;
    double want = mean * (double)rounds, tol = secure ? 1e-4 * (double)rounds : 1e-6 * (double)rounds;
    for (size_t i = 0; g && i < numel; i++)
        if (fabs(g[i] - want) > tol)
            return medfl_error_set(MEDFL_ESTATE, "rounds bench: head coordinate %zu is %.6f after "
                                   "%zu rounds, expected %.6f", i, (double)g[i], rounds, want);
    if (!g) return medfl_error_set(MEDFL_ESTATE, "rounds bench: no head version");
    uint64_t head = rounds_head_version(f->rounds);
    char vdir[4200];
    snprintf(vdir, sizeof vdir, "%s/versions", dir);
    if (versions_verify(vdir, head, f->agg_pk) != 0) return -1;
    for (size_t i = 0; i < f->n; i++) {
        snprintf(vdir, sizeof vdir, "%s/%s/versions", dir, f->ids[i]);
        if (versions_verify(vdir, node_round_model_version(f->node[i]), f->agg_pk) != 0)
            return medfl_error_prefix("node %s: ", f->ids[i]);
    }
    return 0;
}

/* Process CPU seconds (every thread: the loop, libzmq's I/O threads). On a shared machine a
 * round's CPU time is its cost; its wall time also holds the time other processes ran. */
static double s_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double s_mean(const double *t, size_t from, size_t to)
{
    double s = 0;
    for (size_t i = from; i < to; i++) s += t[i];
    return to > from ? s / (double)(to - from) : 0;
}

int bench_rounds(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage(stdout);
        return 0;
    }
    double rounds = 1000, nodes = 3, dim = 16, window = 50;
    bool secure = false;
    const char *parent = getenv("TMPDIR");
    if (!parent || !*parent) parent = "/tmp";
    if (access("/dev/shm", W_OK | X_OK) == 0) parent = "/dev/shm";
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc;
        if (!strcmp(o, "--secure")) {
            secure = true;
            continue;
        }
        if (!strcmp(o, "--rounds")) rc = s_num(o, v, 2, 1e6, &rounds);
        else if (!strcmp(o, "--nodes")) rc = s_num(o, v, 2, S_MAX_NODES, &nodes);
        else if (!strcmp(o, "--dim")) rc = s_num(o, v, 1, S_DIM_MAX, &dim);
        else if (!strcmp(o, "--window")) rc = s_num(o, v, 1, 1e6, &window);
        else if (!strcmp(o, "--dir")) {
            rc = v ? 0 : medfl_error_set(MEDFL_EINVAL, "rounds bench: --dir needs a folder");
            parent = v;
        } else {
            s_usage(stderr);
            medfl_error_set(MEDFL_EINVAL, "rounds bench: unknown option '%s'", o);
            return cli_fail("medfl-bench");
        }
        if (rc < 0) return cli_fail("medfl-bench");
        i++;
    }
    size_t R = (size_t)rounds, W = (size_t)window;
    if (2 * W + 1 > R) {
        medfl_error_set(MEDFL_EINVAL, "rounds bench: --rounds %zu is too few for two windows of %zu "
                        "after the first round", R, W);
        return cli_fail("medfl-bench");
    }
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "sodium_init failed");
        return cli_fail("medfl-bench");
    }
    log_configure(NULL, LOG_LEVEL_ERROR, LOG_FORMAT_TEXT);
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/medfl-bench-rounds-XXXXXX", parent);
    if (!mkdtemp(dir)) {
        medfl_error_set(MEDFL_EIO, "rounds bench: cannot create a folder under %s", parent);
        return cli_fail("medfl-bench");
    }
    s_fed_t *f = calloc(1, sizeof *f);
    double *t = calloc(R + 1, sizeof *t), *cpu = calloc(R + 1, sizeof *cpu); /* round k's s */
    int status = 1;
    if (!f || !t || !cpu) {
        medfl_error_set(MEDFL_ENOMEM, "rounds bench: out of memory");
        goto out;
    }
    if (s_fed_init(f, dir, (size_t)nodes, (size_t)dim, R, secure) != 0) goto out;
    double start = bench_now(), last = start, last_cpu = s_cpu_now();
    uint64_t done = 0;
    /* a round that takes a minute is stuck, not slow */
    while (done < R && bench_now() - last < 60) {
        s_step(f);
        uint64_t c = rounds_completed(f->rounds);
        if (c > done) {
            double now = bench_now(), now_cpu = s_cpu_now();
            t[c] = now - last;
            cpu[c] = now_cpu - last_cpu;
            last = now;
            last_cpu = now_cpu;
            done = c;
        }
    }
    if (done < R) {
        medfl_error_set(MEDFL_ETIMEOUT, "rounds bench: round %llu did not complete within 60 s",
                        (unsigned long long)done + 1);
        goto out;
    }
    /* the last announce reaches the nodes after the round completes */
    for (double end = bench_now() + 5; bench_now() < end;) {
        s_step(f);
        size_t have = 0;
        for (size_t i = 0; i < f->n; i++)
            have += node_round_model_version(f->node[i]) == rounds_head_version(f->rounds);
        if (have == f->n) break;
    }
    if (s_check(f, dir, R, secure) != 0) goto out;
    double first = 1e3 * s_mean(cpu, 2, 2 + W), lastw = 1e3 * s_mean(cpu, R + 1 - W, R + 1);
    printf("rounds: %zu\n", R);
    printf("nodes: %zu\n", f->n);
    printf("mode: %s\n", secure ? "secure" : "plain");
    printf("total_s: %.2f s\n", bench_now() - start);
    printf("round_wall_ms_first: %.3f ms\n", 1e3 * s_mean(t, 2, 2 + W));
    printf("round_wall_ms_last: %.3f ms\n", 1e3 * s_mean(t, R + 1 - W, R + 1));
    printf("round_overhead_ms_first: %.3f ms\n", first);
    printf("round_overhead_ms_last: %.3f ms\n", lastw);
    printf("round_overhead_ratio: %.3f x\n", first > 0 ? lastw / first : 0);
    status = 0;
out:
    if (f) s_fed_free(f);
    free(f);
    free(t);
    free(cpu);
    nftw(dir, s_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return status == 0 ? 0 : cli_fail("medfl-bench");
}
