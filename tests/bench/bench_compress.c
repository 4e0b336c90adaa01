/* medfl-bench compress: wire size and speed of update compression for the model medfl
 * ships (MiniLM-L6, LoRA r = 8 on query and value, plus a 10-label head), and, with
 * --experiment, what compression costs in accuracy on a federated softmax regression over
 * synthetic non-IID data, run here without the model engine so that the cost of the
 * compressor alone is measured (the lead reruns it with the real model).
 *
 * Ratios are dense fp32 bytes / bytes on the wire, the wire bytes being the whole payload
 * (header, section headers, indices, scales, values; in secure mode the packed ring
 * elements of the narrow ring). Throughputs are dense fp32 MB (1e6 bytes) per second, next
 * to a memcpy baseline measured in the same run, since the machine is shared and noisy. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/cli.h"
#include "common/compress.h"
#include "common/error.h"
#include "tests/bench/bench.h"

/* ---- deterministic random numbers for synthetic updates and data ---- */

typedef struct {
    uint64_t s;
} s_rng_t;

static uint64_t s_next(s_rng_t *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double s_unit(s_rng_t *r)
{
    return ((double)(s_next(r) >> 11) + 0.5) * 0x1.0p-53;
}

static double s_gauss(s_rng_t *r)
{
    return sqrt(-2.0 * log(s_unit(r))) * cos(2.0 * M_PI * s_unit(r));
}

/* Student-t with 4 degrees of freedom: heavier tails than a Gaussian, finite variance. */
static double s_student4(s_rng_t *r)
{
    double chi = 0;
    for (int i = 0; i < 4; i++) {
        double g = s_gauss(r);
        chi += g * g;
    }
    return s_gauss(r) / sqrt(chi / 4.0);
}

/* ---- the MiniLM r = 8 query+value LoRA + head update, as one flat vector ---- */

enum { S_LAYERS = 6, S_HIDDEN = 384, S_RANK = 8, S_LABELS = 10 };

/* Tensor sizes in the order they are serialized (one contiguous buffer, llm.c style):
 * per layer: query A (r x h), query B (h x r), value A (r x h), value B (h x r); then the
 * head weight (labels x h) and bias (labels). */
static uint32_t s_minilm_sizes(uint32_t *sizes, uint32_t *rows)
{
    uint32_t t = 0;
    for (int l = 0; l < S_LAYERS; l++)
        for (int target = 0; target < 2; target++) {
            sizes[t] = S_RANK * S_HIDDEN, rows[t++] = S_RANK;   /* A: r x h */
            sizes[t] = S_HIDDEN * S_RANK, rows[t++] = S_HIDDEN; /* B: h x r */
        }
    sizes[t] = S_LABELS * S_HIDDEN, rows[t++] = S_LABELS;
    sizes[t] = S_LABELS, rows[t++] = 1;
    return t;
}

/* A trained-like update: each tensor has its own scale (log-normal, the head 3x larger),
 * each row its own scale (log-normal: some neurons move much more than others), and the
 * entries are Student-t(4), so the magnitudes are heavy-tailed and clustered by row, as in
 * real LoRA deltas, rather than i.i.d. Gaussian. */
static uint32_t s_minilm_update(float *x, s_rng_t *r)
{
    uint32_t sizes[64], rows[64];
    uint32_t nt = s_minilm_sizes(sizes, rows), off = 0;
    for (uint32_t t = 0; t < nt; t++) {
        double ts = 1e-3 * exp(0.5 * s_gauss(r)) * (t >= nt - 2 ? 3.0 : 1.0);
        uint32_t cols = sizes[t] / rows[t];
        for (uint32_t i = 0; i < rows[t]; i++) {
            double rs = ts * exp(0.5 * s_gauss(r));
            for (uint32_t j = 0; j < cols; j++)
                x[off + i * cols + j] = (float)(rs * s_student4(r));
        }
        off += sizes[t];
    }
    return off;
}

static uint32_t s_minilm_params(void)
{
    uint32_t sizes[64], rows[64], n = 0, nt = s_minilm_sizes(sizes, rows);
    for (uint32_t t = 0; t < nt; t++)
        n += sizes[t];
    return n;
}

/* ---- options ---- */

typedef struct {
    double plain_frac;
    uint32_t chunk;
    uint32_t value_bits; /* plain */
    uint32_t bits;       /* secagg */
    double sa_frac;
    uint32_t max_nodes;
    int iters;
    bool experiment;
    int nodes, rounds, seeds;
    double clip_mult;
} s_opts_t;

static int s_parse(int argc, char **argv, s_opts_t *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--experiment") == 0) {
            o->experiment = true;
            continue;
        }
        if (i + 1 >= argc)
            return medfl_error_set(MEDFL_EINVAL, "compress: option '%s' needs a value", a);
        const char *v = argv[++i];
        char *end;
        double d = strtod(v, &end);
        if (*end || end == v)
            return medfl_error_set(MEDFL_EINVAL, "compress: option '%s': '%s' is not a number",
                                   a, v);
        if (strcmp(a, "--k-frac") == 0)
            o->plain_frac = d;
        else if (strcmp(a, "--chunk") == 0)
            o->chunk = (uint32_t)d;
        else if (strcmp(a, "--value-bits") == 0)
            o->value_bits = (uint32_t)d;
        else if (strcmp(a, "--bits") == 0)
            o->bits = (uint32_t)d;
        else if (strcmp(a, "--secagg-k-frac") == 0)
            o->sa_frac = d;
        else if (strcmp(a, "--max-nodes") == 0)
            o->max_nodes = (uint32_t)d;
        else if (strcmp(a, "--iters") == 0)
            o->iters = (int)d;
        else if (strcmp(a, "--nodes") == 0)
            o->nodes = (int)d;
        else if (strcmp(a, "--rounds") == 0)
            o->rounds = (int)d;
        else if (strcmp(a, "--seeds") == 0)
            o->seeds = (int)d;
        else if (strcmp(a, "--clip-mult") == 0)
            o->clip_mult = d;
        else
            return medfl_error_set(MEDFL_EINVAL, "compress: unknown option '%s'", a);
    }
    if (o->iters < 1 || o->nodes < 2 || o->nodes > 64 || o->rounds < 1 || o->seeds < 1 ||
        !(o->clip_mult > 0))
        return medfl_error_set(MEDFL_EINVAL,
                               "compress: --iters, --rounds, --seeds >= 1, --nodes in 2..64, "
                               "--clip-mult > 0");
    return 0;
}

static void s_configs(const s_opts_t *o, compress_config_t *plain, compress_config_t *sa,
                      float clip)
{
    compress_config_default(plain, COMPRESS_PLAIN);
    plain->k_frac = o->plain_frac;
    plain->chunk = o->chunk;
    plain->value_bits = o->value_bits;
    compress_config_default(sa, COMPRESS_SECAGG);
    sa->bits = o->bits;
    sa->k_frac = o->sa_frac;
    sa->max_nodes = o->max_nodes;
    sa->clip = clip;
}

/* ---- sizes and speed on the MiniLM update ---- */

static int s_speed(const s_opts_t *o)
{
    const uint32_t n = s_minilm_params();
    s_rng_t rng = {42};
    float *x = malloc((size_t)n * sizeof *x), *dense = malloc((size_t)n * sizeof *dense),
          *copy = malloc((size_t)n * sizeof *copy);
    uint32_t *lev = malloc((size_t)n * sizeof *lev);
    if (!x || !dense || !copy || !lev)
        return medfl_error_set(MEDFL_ENOMEM, "compress: out of memory");
    s_minilm_update(x, &rng);
    double ss = 0;
    for (uint32_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float clip = (float)(4.0 * sqrt(ss / n)); /* 4 x RMS: see docs/compression.md */
    compress_config_t pc, sc;
    s_configs(o, &pc, &sc, clip);
    const double mb = (double)n * 4 / 1e6;
    int rc = -1;
    compress_t *plain = compress_new(&pc, n, NULL), *sa = compress_new(&sc, n, NULL);
    uint8_t seed[COMPRESS_SEED_BYTES] = {1};
    compress_round_t *round = compress_round_new(&sc, n, seed);
    uint8_t *pbuf = NULL, *sbuf = NULL;
    if (!plain || !sa || !round)
        goto done;
    size_t pcap = compress_plain_max_bytes(plain), scap = compress_round_payload_bytes(round);
    pbuf = malloc(pcap);
    sbuf = malloc(scap);
    uint32_t *ring = malloc((size_t)n * sizeof *ring);
    if (!pbuf || !sbuf || !ring) {
        free(ring);
        medfl_error_set(MEDFL_ENOMEM, "compress: out of memory");
        goto done;
    }

    /* baseline: a dense copy */
    double t0 = bench_now();
    for (int i = 0; i < o->iters; i++) {
        memcpy(copy, x, (size_t)n * 4);
        x[i % n] += copy[(i * 7) % n] * 0.0f;
    }
    double t_copy = bench_now() - t0;

    /* wire size of the first payload (zero residual): deterministic for the seed */
    size_t plen = 0, slen = 0, plen0 = 0;
    if (compress_plain_encode(plain, x, pbuf, pcap, &plen0) != 0) {
        free(ring);
        goto done;
    }
    t0 = bench_now();
    for (int i = 0; i < o->iters; i++)
        if (compress_plain_encode(plain, x, pbuf, pcap, &plen) != 0) {
            free(ring);
            goto done;
        }
    double t_penc = bench_now() - t0;
    t0 = bench_now();
    for (int i = 0; i < o->iters; i++)
        if (compress_plain_decode(pbuf, plen, n, dense) != 0) {
            free(ring);
            goto done;
        }
    double t_pdec = bench_now() - t0;

    t0 = bench_now();
    for (int i = 0; i < o->iters; i++)
        if (compress_secagg_encode(sa, round, x, 1.0f, lev) != 0 ||
            compress_secagg_pack(round, lev, sbuf, scap, &slen) != 0) {
            free(ring);
            goto done;
        }
    double t_senc = bench_now() - t0;
    t0 = bench_now();
    for (int i = 0; i < o->iters; i++)
        if (compress_secagg_unpack(round, sbuf, slen, ring) != 0 ||
            compress_secagg_decode_sum(round, ring, 1, dense) != 0) {
            free(ring);
            goto done;
        }
    double t_sdec = bench_now() - t0;
    free(ring);

    printf("compress_params: %u params\n", n);
    printf("compress_bytes_dense: %u B\n", n * 4);
    printf("compress_plain_k_frac: %g\n", pc.k_frac);
    printf("compress_plain_k: %u\n", compress_config_k(&pc, n));
    printf("compress_plain_chunk: %u\n", pc.chunk);
    printf("compress_plain_value_bits: %u bits\n", pc.value_bits);
    printf("compress_bytes_plain: %zu B\n", plen0);
    printf("compress_ratio_plain: %.1f x\n", (double)n * 4 / (double)plen0);
    printf("compress_secagg_bits: %u\n", sc.bits);
    printf("compress_secagg_k_frac: %g\n", sc.k_frac);
    printf("compress_secagg_k: %u\n", compress_round_k(round));
    printf("compress_secagg_max_nodes: %u\n", sc.max_nodes);
    printf("compress_secagg_ring_bits: %u bits\n", compress_round_width(round));
    printf("compress_bytes_secagg: %zu B\n", slen);
    printf("compress_ratio_secagg: %.2f x\n", (double)n * 4 / (double)slen);
    printf("compress_ratio_secagg_ring32: %.2f x\n",
           (double)n * 4 / (40.0 + 4.0 * compress_round_k(round)));
    printf("compress_memcpy_MBps: %.0f MB/s\n", mb * o->iters / t_copy);
    printf("compress_encode_MBps: %.1f MB/s\n", mb * o->iters / t_penc);
    printf("compress_decode_MBps: %.1f MB/s\n", mb * o->iters / t_pdec);
    printf("compress_secagg_encode_MBps: %.1f MB/s\n", mb * o->iters / t_senc);
    printf("compress_secagg_decode_MBps: %.1f MB/s\n", mb * o->iters / t_sdec);
    rc = 0;
done:
    free(pbuf);
    free(sbuf);
    free(x);
    free(dense);
    free(copy);
    free(lev);
    compress_destroy(&plain);
    compress_destroy(&sa);
    compress_round_destroy(&round);
    return rc;
}

/* ---- experiment: federated softmax regression on synthetic non-IID data ---- */

enum { E_D = 256, E_C = 10, E_TEST = 5000 };
#define E_P (E_C * E_D + E_C) /* parameters: W (C x D) then b (C) */

typedef struct {
    float *x; /* count x D */
    int *y;
    int count;
} s_data_t;

/* Class means N(0, 0.18^2 I) in D = 256 dimensions, unit Gaussian noise: overlapping
 * classes, so accuracy saturates well below 100% and small differences show. Node u sees
 * half of its examples from classes 2u, 2u+1 (mod C) and half uniform: non-IID. */
static void s_gen(s_data_t *d, int count, const float *mu, int node, s_rng_t *r)
{
    d->count = count;
    d->x = malloc((size_t)count * E_D * sizeof *d->x);
    d->y = malloc((size_t)count * sizeof *d->y);
    for (int e = 0; e < count; e++) {
        int y = node < 0 || (s_next(r) & 1) ? (int)(s_next(r) % E_C)
                                            : (2 * node + (int)(s_next(r) & 1)) % E_C;
        d->y[e] = y;
        for (int j = 0; j < E_D; j++)
            d->x[(size_t)e * E_D + j] = mu[y * E_D + j] + (float)s_gauss(r);
    }
}

/* forward: logits = W x + b, p = softmax(logits). Returns argmax. */
static int s_forward(const float *w, const float *x, float *p)
{
    const float *b = w + E_C * E_D;
    float m = -INFINITY;
    int arg = 0;
    for (int c = 0; c < E_C; c++) {
        float z = b[c];
        for (int j = 0; j < E_D; j++)
            z += w[c * E_D + j] * x[j];
        p[c] = z;
        if (z > m)
            m = z, arg = c;
    }
    float s = 0;
    for (int c = 0; c < E_C; c++)
        s += p[c] = expf(p[c] - m);
    for (int c = 0; c < E_C; c++)
        p[c] /= s;
    return arg;
}

/* backward of the cross-entropy: dlogits = p - onehot(y); dW += dlogits x^T, db += dlogits */
static void s_backward(float *g, const float *x, const float *p, int y)
{
    for (int c = 0; c < E_C; c++) {
        float dz = p[c] - (c == y ? 1.0f : 0.0f);
        for (int j = 0; j < E_D; j++)
            g[c * E_D + j] += dz * x[j];
        g[E_C * E_D + c] += dz;
    }
}

/* One local epoch of minibatch SGD from w; leaves the update (local - w) in upd. */
static void s_local(const float *w, const s_data_t *d, float *upd, float *g, s_rng_t *r)
{
    const int B = 32;
    const float lr = 0.05f, wd = 0.02f;
    float p[E_C];
    float *loc = upd; /* train in place, then subtract */
    memcpy(loc, w, E_P * sizeof *loc);
    for (int start = 0; start < d->count; start += B) {
        memset(g, 0, E_P * sizeof *g);
        int nb = 0;
        for (int e = start; e < start + B && e < d->count; e++, nb++) {
            int ex = (int)(s_next(r) % (uint64_t)d->count);
            s_forward(loc, d->x + (size_t)ex * E_D, p);
            s_backward(g, d->x + (size_t)ex * E_D, p, d->y[ex]);
        }
        for (int i = 0; i < E_P; i++) /* L2 decay on W only: the data are few and noisy */
            loc[i] -= lr * (g[i] / (float)nb + (i < E_C * E_D ? wd * loc[i] : 0.0f));
    }
    for (int i = 0; i < E_P; i++)
        upd[i] = loc[i] - w[i];
}

static double s_accuracy(const float *w, const s_data_t *d)
{
    float p[E_C];
    int ok = 0;
    for (int e = 0; e < d->count; e++)
        ok += s_forward(w, d->x + (size_t)e * E_D, p) == d->y[e];
    return 100.0 * ok / d->count;
}

/* The federations compared. "Virtual start": a node starts local training from the global
 * model plus its own residual (its view of where the model would be had everything been
 * sent), so that the pseudo-gradient it hands the compressor does not re-propose what the
 * residual already holds; starting from the bare global model makes the residual grow
 * round after round with FedAvg-style multi-step updates (docs/compression.md). */
typedef struct {
    const char *name;
    int scheme;          /* 0 dense, else compress_scheme_t */
    bool error_feedback;
    bool start_virtual;
} s_mode_t;

enum { MODE_DENSE, MODE_PLAIN, MODE_PLAIN_GLOBAL, MODE_PLAIN_NOEF, MODE_SECAGG, MODE_COUNT };
static const s_mode_t s_modes[MODE_COUNT] = {
    {"dense", 0, false, false},
    {"plain", COMPRESS_PLAIN, true, true},
    {"plain_ef_global_start", COMPRESS_PLAIN, true, false},
    {"plain_noef", COMPRESS_PLAIN, false, false},
    {"secagg", COMPRESS_SECAGG, true, true},
};

/* Runs R rounds of FedAvg (weights n_u / sum n) in one mode; returns final test accuracy,
 * or -1 on error. In secure mode the levels go through real cancelling 32-bit pairwise
 * masks and the narrow-ring packing, as they would on the wire. */
static double s_federate(const s_opts_t *o, int mode, const s_data_t *nodes,
                         const s_data_t *test, uint64_t seed, float clip, size_t *wire_bytes)
{
    const int N = o->nodes;
    float *w = calloc(E_P, sizeof *w), *upd = malloc(E_P * sizeof *upd),
          *g = malloc(E_P * sizeof *g), *agg = malloc(E_P * sizeof *agg),
          *dec = malloc(E_P * sizeof *dec), *start = malloc(E_P * sizeof *start);
    uint32_t *lev = malloc(E_P * sizeof *lev), *ring = malloc(E_P * sizeof *ring),
             *sum = malloc(E_P * sizeof *sum), *masks = malloc((size_t)N * E_P * sizeof *masks);
    compress_t **c = calloc((size_t)N, sizeof *c);
    uint8_t *buf = malloc(E_P * 8 + 256);
    double acc = -1;
    compress_config_t pc, sc;
    s_configs(o, &pc, &sc, clip);
    pc.error_feedback = sc.error_feedback = s_modes[mode].error_feedback;
    double total_n = 0;
    for (int u = 0; u < N; u++)
        total_n += nodes[u].count;
    for (int u = 0; u < N && s_modes[mode].scheme != 0; u++) {
        uint8_t ns[COMPRESS_SEED_BYTES] = {(uint8_t)u, (uint8_t)seed, 0x5a};
        c[u] = compress_new(s_modes[mode].scheme == COMPRESS_SECAGG ? &sc : &pc, E_P, ns);
        if (!c[u])
            goto done;
    }
    s_rng_t rng = {seed * 7919 + 1};
    *wire_bytes = 0;
    for (int round = 0; round < o->rounds; round++) {
        memset(agg, 0, E_P * sizeof *agg);
        compress_round_t *cr = NULL;
        if (s_modes[mode].scheme == COMPRESS_SECAGG) {
            uint8_t rs[COMPRESS_SEED_BYTES] = {0};
            memcpy(rs, &round, sizeof round);
            rs[8] = (uint8_t)seed;
            cr = compress_round_new(&sc, E_P, rs);
            if (!cr)
                goto done;
            /* pairwise masks m_uv added by u, subtracted by v: they cancel in the sum */
            uint32_t k = compress_round_k(cr);
            memset(masks, 0, (size_t)N * E_P * sizeof *masks);
            for (int u = 0; u < N; u++)
                for (int v = u + 1; v < N; v++)
                    for (uint32_t j = 0; j < k; j++) {
                        uint32_t m = (uint32_t)s_next(&rng);
                        masks[(size_t)u * E_P + j] += m;
                        masks[(size_t)v * E_P + j] -= m;
                    }
            memset(sum, 0, E_P * sizeof *sum);
        }
        for (int u = 0; u < N; u++) {
            float wu = (float)(nodes[u].count / total_n);
            if (c[u] && s_modes[mode].start_virtual) {
                const float *e = compress_residual(c[u]);
                for (int i = 0; i < E_P; i++)
                    start[i] = w[i] + e[i];
            } else {
                memcpy(start, w, E_P * sizeof *start);
            }
            s_local(start, &nodes[u], upd, g, &rng);
            size_t len = 0;
            if (s_modes[mode].scheme == 0) {
                for (int i = 0; i < E_P; i++)
                    agg[i] += wu * upd[i];
                len = E_P * 4;
            } else if (s_modes[mode].scheme == COMPRESS_SECAGG) {
                uint32_t k = compress_round_k(cr);
                if (compress_secagg_encode(c[u], cr, upd, wu, lev) != 0)
                    goto round_fail;
                for (uint32_t j = 0; j < k; j++)
                    lev[j] += masks[(size_t)u * E_P + j];
                if (compress_secagg_pack(cr, lev, buf, E_P * 8 + 256, &len) != 0 ||
                    compress_secagg_unpack(cr, buf, len, ring) != 0)
                    goto round_fail;
                for (uint32_t j = 0; j < k; j++)
                    sum[j] += ring[j];
            } else {
                if (compress_plain_encode(c[u], upd, buf, E_P * 8 + 256, &len) != 0 ||
                    compress_plain_decode(buf, len, E_P, dec) != 0)
                    goto round_fail;
                for (int i = 0; i < E_P; i++)
                    agg[i] += wu * dec[i];
            }
            *wire_bytes += len;
        }
        if (s_modes[mode].scheme == COMPRESS_SECAGG) {
            /* sum of weighted decoded updates; the weights sum to 1 */
            if (compress_secagg_decode_sum(cr, sum, (uint32_t)N, agg) != 0)
                goto round_fail;
            compress_round_destroy(&cr);
        }
        for (int i = 0; i < E_P; i++)
            w[i] += agg[i];
        continue;
    round_fail:
        compress_round_destroy(&cr);
        goto done;
    }
    acc = s_accuracy(w, test);
done:
    for (int u = 0; u < N; u++)
        compress_destroy(&c[u]);
    free(c);
    free(w);
    free(upd);
    free(g);
    free(agg);
    free(dec);
    free(start);
    free(lev);
    free(ring);
    free(sum);
    free(masks);
    free(buf);
    return acc;
}

static int s_experiment(const s_opts_t *o)
{
    const int N = o->nodes;
    double acc[MODE_COUNT] = {0};
    size_t bytes[MODE_COUNT] = {0};
    float clip = 0;
    for (int s = 0; s < o->seeds; s++) {
        s_rng_t r = {1000 + (uint64_t)s};
        float *mu = malloc(E_C * E_D * sizeof *mu);
        for (int i = 0; i < E_C * E_D; i++)
            mu[i] = 0.18f * (float)s_gauss(&r);
        s_data_t *nodes = calloc((size_t)N, sizeof *nodes), test;
        for (int u = 0; u < N; u++)
            s_gen(&nodes[u], 600 + 200 * (u % 5), mu, u, &r);
        s_gen(&test, E_TEST, mu, -1, &r);
        /* The clipping range, fixed for the federation before training: clip_mult times
         * the largest weighted coordinate of node 0's first local update (a calibration
         * a consortium can do once on public or synthetic data). */
        {
            float *w0 = calloc(E_P, sizeof *w0), *u0 = malloc(E_P * sizeof *u0),
                  *g0 = malloc(E_P * sizeof *g0);
            s_rng_t rc = {7};
            s_local(w0, &nodes[0], u0, g0, &rc);
            double total = 0, m = 0;
            for (int u = 0; u < N; u++)
                total += nodes[u].count;
            for (int i = 0; i < E_P; i++)
                m = fmax(m, fabs(u0[i]));
            clip = (float)(o->clip_mult * m * nodes[0].count / total);
            free(w0);
            free(u0);
            free(g0);
        }
        for (int mode = 0; mode < MODE_COUNT; mode++) {
            size_t b = 0;
            double a = s_federate(o, mode, nodes, &test, (uint64_t)s, clip, &b);
            if (a < 0)
                return -1;
            acc[mode] += a / o->seeds;
            bytes[mode] += b;
        }
        for (int u = 0; u < N; u++) {
            free(nodes[u].x);
            free(nodes[u].y);
        }
        free(nodes);
        free(test.x);
        free(test.y);
        free(mu);
    }
    printf("compress_exp_nodes: %d\n", N);
    printf("compress_exp_rounds: %d\n", o->rounds);
    printf("compress_exp_seeds: %d\n", o->seeds);
    printf("compress_exp_params: %d params\n", E_P);
    printf("compress_exp_secagg_clip: %g (last seed)\n", (double)clip);
    for (int mode = 0; mode < MODE_COUNT; mode++)
        printf("compress_exp_acc_%s: %.2f %%\n", s_modes[mode].name, acc[mode]);
    for (int mode = 1; mode < MODE_COUNT; mode++) {
        printf("compress_exp_cost_%s: %.2f points\n", s_modes[mode].name,
               acc[MODE_DENSE] - acc[mode]);
        printf("compress_exp_ratio_%s: %.1f x\n", s_modes[mode].name,
               (double)bytes[MODE_DENSE] / (double)bytes[mode]);
    }
    return 0;
}

int bench_compress(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        compress_config_t d;
        compress_config_default(&d, COMPRESS_PLAIN);
        printf("usage: medfl-bench compress [--k-frac F] [--chunk C] [--value-bits V] [--bits B]\n"
               "         [--secagg-k-frac F] [--max-nodes N] [--iters I]\n"
               "         [--experiment [--nodes N] [--rounds R] [--seeds S] [--clip-mult M]]\n"
               "Wire size (dense fp32 bytes / payload bytes) and encode/decode speed of the\n"
               "plain (top-k, V-bit values, Rice-coded gaps) and secure-aggregation (b-bit\n"
               "stochastic, random-k)\n"
               "schemes on a MiniLM r=8 query+value LoRA + 10-label head update; with\n"
               "--experiment also the accuracy of federated softmax regression on synthetic\n"
               "non-IID data with and without compression. Defaults (the plain ones are\n"
               "compress_config_default's): --k-frac %g --chunk %u --value-bits %u --bits 8\n"
               "--secagg-k-frac 0.25 --max-nodes 16 --iters 50 --nodes 5 --rounds 60\n"
               "--seeds 3 --clip-mult 2.\n",
               d.k_frac, d.chunk, d.value_bits);
        return 0;
    }
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "compress: sodium_init failed");
        return cli_fail("medfl-bench");
    }
    compress_config_t pd;
    compress_config_default(&pd, COMPRESS_PLAIN);
    s_opts_t o = {.plain_frac = pd.k_frac, .chunk = pd.chunk, .value_bits = pd.value_bits,
                  .bits = 8, .sa_frac = 0.25, .max_nodes = 16, .iters = 50, .nodes = 5,
                  .rounds = 60, .seeds = 3, .clip_mult = 2.0};
    if (s_parse(argc, argv, &o) != 0)
        return cli_fail("medfl-bench");
    if (s_speed(&o) != 0)
        return cli_fail("medfl-bench");
    if (o.experiment && s_experiment(&o) != 0)
        return cli_fail("medfl-bench");
    return 0;
}
