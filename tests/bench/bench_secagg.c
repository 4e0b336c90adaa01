/* medfl-bench secagg: runs one secure-aggregation round in-process (all n clients and the
 * server of common/secagg) and reports one client's round-2 masking time, the server's
 * aggregate + unmask time and the bytes a node sends, checking the sum exactly. Dropouts
 * happen after ShareKeys and before MaskedInput: the costliest case for the server, which
 * must then rebuild each dropped node's mask key and re-expand its pairwise masks. The
 * baseline is one ChaCha20 mask expansion of m values measured in the same process, so the
 * server's CPU time also prints as a machine-independent count of mask expansions
 * (secagg_server_prg_equiv, to compare with secagg_server_expansions, the work required). */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "common/secagg.h"
#include "tests/bench/bench.h"

/* Process CPU seconds: on a shared machine the server's CPU time is steadier than its wall
 * time (clients are idle while a server call runs, so the difference is the server's). */
static double s_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void s_usage(FILE *out)
{
    fprintf(out,
            "Usage: medfl-bench secagg [--nodes N] [--params M] [--dropout D] [--neighbours K]\n"
            "                          [--threshold T] [--threads W]\n"
            "  --nodes N       nodes in the round (default 100)\n"
            "  --params M      ring elements per update (default 100000)\n"
            "  --dropout D     fraction of nodes dropping after ShareKeys (default 0.1)\n"
            "  --neighbours K  SecAgg+ degree, even, or N-1 for the complete graph\n"
            "                  (default: smallest even >= 2*ceil(log2 N))\n"
            "  --threshold T   shares needed out of K+1 (default: majority, K/2+1)\n"
            "  --threads W     server unmasking threads (default 2)\n");
}

static int s_num(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *end;
    double d = strtod(v ? v : "", &end);
    if (!v || *end || d < lo || d > hi)
        return medfl_error_set(MEDFL_EINVAL, "secagg bench: %s '%s' outside [%g, %g]", opt,
                               v ? v : "", lo, hi);
    *out = d;
    return 0;
}

int bench_secagg(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage(stdout);
        return 0;
    }
    double nodes = 100, params = 100000, dropout = 0.1, k = 0, t = 0, threads = 2;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int rc;
        if (!strcmp(o, "--nodes")) rc = s_num(o, v, 2, SECAGG_MAX_NODES, &nodes);
        else if (!strcmp(o, "--params")) rc = s_num(o, v, 1, SECAGG_MAX_PARAMS, &params);
        else if (!strcmp(o, "--dropout")) rc = s_num(o, v, 0, 0.99, &dropout);
        else if (!strcmp(o, "--neighbours")) rc = s_num(o, v, 0, SECAGG_MAX_NODES, &k);
        else if (!strcmp(o, "--threshold")) rc = s_num(o, v, 0, SECAGG_MAX_NODES, &t);
        else if (!strcmp(o, "--threads")) rc = s_num(o, v, 1, 16, &threads);
        else {
            s_usage(stderr);
            medfl_error_set(MEDFL_EINVAL, "secagg bench: unknown option '%s'", o);
            return cli_fail("medfl-bench");
        }
        if (rc < 0) return cli_fail("medfl-bench");
        i++;
    }
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "sodium_init failed");
        return cli_fail("medfl-bench");
    }
    log_configure(NULL, LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
    uint32_t n = (uint32_t)nodes;
    uint64_t m = (uint64_t)params;
    secagg_params_t p;
    if (secagg_params_init(&p, 1, n, (uint32_t)k, (uint32_t)t, m) < 0)
        return cli_fail("medfl-bench");

    int status = 1;
    uint8_t *id_pk = malloc((size_t)n * 32), *id_sk = malloc((size_t)n * 64);
    uint8_t *drop = calloc(n, 1);
    uint32_t *x = malloc(m * 4), *expect = calloc(m, 4), *sum = malloc(m * 4);
    double *bytes = calloc(n, sizeof *bytes);
    secagg_client_t **cl = calloc(n, sizeof *cl);
    secagg_server_t *srv = NULL;
    uint8_t *rq = NULL, *b = NULL, *b2 = NULL;
    size_t rq_len = 0, l, l2;
    if (!id_pk || !id_sk || !drop || !x || !expect || !sum || !bytes || !cl) {
        medfl_error_set(MEDFL_ENOMEM, "secagg bench: %u nodes x %llu params", n,
                        (unsigned long long)m);
        goto out;
    }
    for (uint32_t u = 0; u < n; u++) crypto_sign_keypair(id_pk + 32 * u, id_sk + 64 * u);
    if (!(srv = secagg_server_new(&p, id_pk, (int)threads))) goto out;
    uint32_t n_drop = (uint32_t)(dropout * n + 0.5);
    for (uint32_t c = 0; c < n_drop;) {
        uint32_t u = randombytes_uniform(n);
        if (!drop[u]) drop[u] = 1, c++;
    }
    for (uint32_t u = 0; u < n; u++)
        if (!(cl[u] = secagg_client_new(&p, u, id_sk + 64 * u, id_pk))) goto out;

    /* baseline: one mask expansion of m values, best of 3 (wall and CPU) */
    uint8_t seed[32];
    randombytes_buf(seed, sizeof seed);
    memset(sum, 0, m * 4);
    double prg_s = 1e9, prg_cpu = 1e9, t0, c0;
    for (int rep = 0; rep < 3; rep++) {
        t0 = bench_now();
        c0 = s_cpu_now();
        secagg_prg_accumulate(sum, m, seed, +1);
        double w = bench_now() - t0, c = s_cpu_now() - c0;
        prg_s = w < prg_s ? w : prg_s;
        prg_cpu = c < prg_cpu ? c : prg_cpu;
    }

    for (uint32_t u = 0; u < n; u++) {
        if (secagg_client_advertise(cl[u], &b, &l) < 0 || secagg_server_add_keys(srv, b, l) < 0)
            goto out;
        bytes[u] += (double)l;
        free(b), b = NULL;
    }
    if (secagg_server_close_keys(srv) < 0) goto out;
    for (uint32_t u = 0; u < n; u++) {
        if (secagg_server_keys_broadcast(srv, u, &b, &l) < 0 ||
            secagg_client_handle_keys(cl[u], b, l, &b2, &l2) < 0 ||
            secagg_server_add_shares(srv, b2, l2) < 0)
            goto out;
        bytes[u] += (double)l2;
        free(b), b = NULL;
        free(b2), b2 = NULL;
    }
    if (secagg_server_close_shares(srv) < 0) goto out;
    double mask_s = 0, sum_s = 0, server_cpu = 0;
    uint32_t n_masked = 0;
    for (uint32_t u = 0; u < n; u++) {
        if (secagg_server_shares_delivery(srv, u, &b, &l) < 0 ||
            secagg_client_handle_shares(cl[u], b, l) < 0)
            goto out;
        free(b), b = NULL;
        if (drop[u]) continue;
        randombytes_buf(x, m * 4);
        for (uint64_t i = 0; i < m; i++) expect[i] += x[i];
        t0 = bench_now();
        if (secagg_client_masked_input(cl[u], x, &b, &l) < 0) goto out;
        mask_s += bench_now() - t0;
        n_masked++;
        bytes[u] += (double)l;
        t0 = bench_now();
        c0 = s_cpu_now();
        if (secagg_server_add_masked(srv, b, l) < 0) goto out;
        sum_s += bench_now() - t0;
        server_cpu += s_cpu_now() - c0;
        free(b), b = NULL;
    }
    if (secagg_server_close_masked(srv) < 0 || secagg_server_survivors(srv, &rq, &rq_len) < 0)
        goto out;
    /* consistency check: every survivor signs the survivor set */
    for (uint32_t u = 0; u < n; u++) {
        if (drop[u]) continue;
        if (secagg_client_sign_survivors(cl[u], rq, rq_len, &b, &l) < 0 ||
            secagg_server_add_signature(srv, b, l) < 0)
            goto out;
        bytes[u] += (double)l;
        free(b), b = NULL;
    }
    free(rq), rq = NULL;
    if (secagg_server_close_signatures(srv) < 0) goto out;
    double unmask_s = 0;
    for (uint32_t u = 0; u < n; u++) {
        if (drop[u]) continue;
        if (secagg_server_unmask_request(srv, u, &rq, &rq_len) < 0) goto out;
        int rc = secagg_client_handle_unmask(cl[u], rq, rq_len, &b, &l);
        free(rq), rq = NULL;
        if (rc < 0) goto out;
        bytes[u] += (double)l;
        t0 = bench_now();
        c0 = s_cpu_now();
        if (secagg_server_add_unmask(srv, b, l) < 0) goto out;
        unmask_s += bench_now() - t0;
        server_cpu += s_cpu_now() - c0;
        secagg_buf_free(b, l), b = NULL;
    }
    t0 = bench_now();
    c0 = s_cpu_now();
    if (secagg_server_finish(srv, sum) < 0) goto out;
    unmask_s += bench_now() - t0;
    server_cpu += s_cpu_now() - c0;
    if (memcmp(sum, expect, m * 4) != 0) {
        medfl_error_set(MEDFL_ESTATE, "secagg bench: unmasked sum differs from the plain sum");
        goto out;
    }
    double total_bytes = 0;
    for (uint32_t u = 0; u < n; u++)
        if (!drop[u]) total_bytes += bytes[u];
    double server_s = sum_s + unmask_s;
    /* mask expansions the server had to do: one per survivor, one per (dropped, surviving
     * neighbour) pair */
    uint64_t expansions = n_masked;
    secagg_graph_t *g = secagg_graph_new(&p);
    uint32_t *nb = malloc(p.k * sizeof *nb);
    if (!g || !nb) {
        secagg_graph_destroy(&g);
        free(nb);
        goto out;
    }
    for (uint32_t d = 0; d < n; d++) {
        if (!drop[d]) continue;
        uint32_t c = secagg_graph_neighbours(g, d, nb);
        for (uint32_t i = 0; i < c; i++) expansions += !drop[nb[i]];
    }
    secagg_graph_destroy(&g);
    free(nb);
    printf("secagg_nodes: %u nodes\n", n);
    printf("secagg_params: %llu values\n", (unsigned long long)m);
    printf("secagg_neighbours: %u k\n", p.k);
    printf("secagg_threshold: %u t\n", p.t);
    printf("secagg_dropped: %u nodes\n", n_drop);
    printf("secagg_prg_baseline_s: %.6f s\n", prg_s);
    printf("secagg_node_mask_s: %.4f s\n", mask_s / n_masked);
    printf("secagg_server_sum_s: %.4f s\n", sum_s);
    printf("secagg_server_unmask_s: %.4f s\n", unmask_s);
    printf("secagg_server_s: %.4f s\n", server_s);
    printf("secagg_server_cpu_s: %.4f s\n", server_cpu);
    printf("secagg_server_expansions: %llu expansions\n", (unsigned long long)expansions);
    /* CPU seconds over the CPU seconds of one expansion: stable on a loaded machine */
    printf("secagg_server_prg_equiv: %.1f expansions\n", server_cpu / prg_cpu);
    printf("secagg_bytes_per_node: %.0f B\n", total_bytes / n_masked);
    printf("secagg_correct: 1 bool\n");
    status = 0;
out:
    if (status) cli_fail("medfl-bench");
    free(b);
    free(b2);
    free(rq);
    if (cl)
        for (uint32_t u = 0; u < n; u++) secagg_client_destroy(&cl[u]);
    free(cl);
    secagg_server_destroy(&srv);
    if (id_sk) sodium_memzero(id_sk, (size_t)n * 64);
    free(id_sk);
    free(id_pk);
    free(drop);
    free(x);
    free(expect);
    free(sum);
    free(bytes);
    return status;
}
