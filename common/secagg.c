/* Secure aggregation, both sides (Bonawitz et al. 2017 with the SecAgg+ graph of Bell et al.
 * 2020); API and driving order in secagg.h, design and threat model in
 * docs/secure-aggregation.md.
 *
 * Key schedule (all BLAKE2b-256 over a domain label, the round id and the two node ids in
 * increasing order, so both ends derive the same key and nothing is reused across rounds):
 *   share key  k_uv = H("medfl-secagg-enc-v1"  || round || min || max || X25519(c_sk_u, c_pk_v))
 *   mask seed  s_uv = H("medfl-secagg-mask-v1" || round || min || max || X25519(s_sk_u, s_pk_v))
 *   graph key       = H("medfl-secagg-graph-v1" || seed || round || n || k)
 * PRG(seed) is the ChaCha20-IETF keystream of the seed with a zero nonce (each seed is used
 * for exactly one stream). Share pairs are sealed with XChaCha20-Poly1305 under k_uv with
 * associated data (label, round, sender, recipient), so the aggregator can neither read nor
 * swap them between nodes or rounds. Every secret is wiped once its last use is over.
 * AdvertiseKeys signatures (Ed25519, identity key) cover
 *   "medfl-secagg-keys-v2" || round || context || node || c_pk || s_pk
 * where context is secagg_params_t.context, the digest of the round start the signer got.
 * ConsistencyCheck signatures (identity key, Bonawitz et al. round 3) cover
 *   "medfl-secagg-survivors-v1" || round || context || |U3| || U3 (sorted roster indices)
 * and a node reveals shares only after t valid ones from its neighbourhood over the very U3
 * it signed: an aggregator cannot show different survivor sets to different holders. */
#include "common/secagg.h"

#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/log.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#define S_BIG_ENDIAN 1
#else
#define S_BIG_ENDIAN 0
#endif

/* v2: the signature also covers the round context (secagg_params_t.context); v1 keys do
 * not verify under v2, which is the point: old and new peers cannot mix silently. */
static const char s_sig_label[] = "medfl-secagg-keys-v2";
static const char s_enc_label[] = "medfl-secagg-enc-v1";
static const char s_mask_label[] = "medfl-secagg-mask-v1";
static const char s_graph_label[] = "medfl-secagg-graph-v1";
static const char s_ad_label[] = "medfl-secagg-share-v1";
static const char s_set_label[] = "medfl-secagg-survivors-v1";

static void s_le32(uint8_t *b, uint32_t v)
{
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
}

static void s_le64(uint8_t *b, uint64_t v)
{
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
}

/* ---- parameters ---------------------------------------------------------------------- */

uint32_t secagg_default_neighbours(uint32_t n)
{
    if (n < 2) return 1;
    uint32_t lg = 0;
    while ((1ull << lg) < n) lg++;
    uint32_t k = 2 * lg;
    return k >= n - 1 ? n - 1 : k;
}

uint32_t secagg_default_threshold(uint32_t k)
{
    return (k + 1) / 2 + 1 > k + 1 ? k + 1 : (k + 1) / 2 + 1;
}

/* Why a strict majority: the aggregator asks the k + 1 holders of node u's shares for b_u
 * shares or for s_sk_u shares. With t <= (k + 1) / 2 it can ask two disjoint sets of t
 * holders, telling one "u survived" and the other "u dropped", and get both secrets, so
 * u's input in clear. With t > (k + 1) / 2 any two such sets share an honest holder, who
 * reveals one kind only (and the signed survivor set makes the split visible anyway). */
int secagg_threshold_check(uint32_t k, uint32_t t)
{
    uint32_t min = secagg_default_threshold(k);
    if (t < min || t > k + 1)
        return medfl_error_set(MEDFL_EPERM, "secagg params: threshold t = %u of the k + 1 = %u "
                               "holders of each node's shares is not a strict majority (needs "
                               "%u..%u): an aggregator could ask two disjoint sets of holders for "
                               "both secrets of one node and unmask its input", t, k + 1, min,
                               k + 1);
    return 0;
}

int secagg_params_validate(const secagg_params_t *p)
{
    if (p->n < 2 || p->n > SECAGG_MAX_NODES)
        return medfl_error_set(MEDFL_EINVAL, "secagg params: n = %u outside 2..%u", p->n,
                               SECAGG_MAX_NODES);
    if (p->k != p->n - 1 && (p->k < 2 || p->k > p->n - 2 || p->k % 2))
        return medfl_error_set(MEDFL_EINVAL, "secagg params: k = %u must be n-1 = %u or even "
                               "in 2..%u", p->k, p->n - 1, p->n - 2);
    if (secagg_threshold_check(p->k, p->t) < 0) return -1;
    if (p->m < 1 || p->m > SECAGG_MAX_PARAMS)
        return medfl_error_set(MEDFL_EINVAL, "secagg params: m = %llu outside 1..%u",
                               (unsigned long long)p->m, SECAGG_MAX_PARAMS);
    return 0;
}

int secagg_params_init(secagg_params_t *p, uint64_t round_id, uint32_t n, uint32_t k, uint32_t t,
                       uint64_t m)
{
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "sodium_init failed");
    memset(p, 0, sizeof *p);
    p->round_id = round_id;
    p->n = n;
    p->k = k ? k : secagg_default_neighbours(n);
    p->t = t ? t : secagg_default_threshold(p->k);
    p->m = m;
    randombytes_buf(p->graph_seed, sizeof p->graph_seed);
    return secagg_params_validate(p);
}

/* ---- neighbour graph ------------------------------------------------------------------- */

struct secagg_graph_t {
    uint32_t n, k;
    uint32_t *order; /* node at ring position i */
    uint32_t *pos;   /* ring position of node u */
};

typedef struct {
    uint8_t key[32];
    uint8_t block[64];
    uint32_t ic;
    int used;
} s_stream_t;

static uint32_t s_stream_u32(s_stream_t *st)
{
    static const uint8_t zero[64];
    if (st->used == 0 || st->used == 64) {
        uint8_t nonce[12] = {0};
        crypto_stream_chacha20_ietf_xor_ic(st->block, zero, 64, nonce, st->ic++, st->key);
        st->used = 0;
    }
    uint32_t v = (uint32_t)st->block[st->used] | (uint32_t)st->block[st->used + 1] << 8 |
                 (uint32_t)st->block[st->used + 2] << 16 | (uint32_t)st->block[st->used + 3] << 24;
    st->used += 4;
    return v;
}

secagg_graph_t *secagg_graph_new(const secagg_params_t *p)
{
    if (secagg_params_validate(p) < 0) return NULL;
    secagg_graph_t *g = calloc(1, sizeof *g);
    if (!g || !(g->order = malloc(p->n * sizeof *g->order)) ||
        !(g->pos = malloc(p->n * sizeof *g->pos))) {
        secagg_graph_destroy(&g);
        medfl_error_set(MEDFL_ENOMEM, "secagg graph of %u nodes", p->n);
        return NULL;
    }
    g->n = p->n;
    g->k = p->k;
    s_stream_t st = {.used = 0};
    crypto_generichash_state h;
    uint8_t b[8];
    crypto_generichash_init(&h, NULL, 0, 32);
    crypto_generichash_update(&h, (const uint8_t *)s_graph_label, sizeof s_graph_label - 1);
    crypto_generichash_update(&h, p->graph_seed, 32);
    s_le64(b, p->round_id);
    crypto_generichash_update(&h, b, 8);
    s_le32(b, p->n);
    s_le32(b + 4, p->k);
    crypto_generichash_update(&h, b, 8);
    crypto_generichash_final(&h, st.key, 32);
    for (uint32_t i = 0; i < g->n; i++) g->order[i] = i;
    /* Fisher-Yates with rejection sampling: an unbiased random ring order */
    for (uint32_t i = g->n - 1; i > 0; i--) {
        uint64_t span = (uint64_t)i + 1, limit = (0x100000000ull / span) * span, r;
        do r = s_stream_u32(&st);
        while (r >= limit);
        uint32_t j = (uint32_t)(r % span), tmp = g->order[i];
        g->order[i] = g->order[j];
        g->order[j] = tmp;
    }
    for (uint32_t i = 0; i < g->n; i++) g->pos[g->order[i]] = i;
    return g;
}

void secagg_graph_destroy(secagg_graph_t **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->order);
    free((*self_p)->pos);
    free(*self_p);
    *self_p = NULL;
}

bool secagg_graph_adjacent(const secagg_graph_t *g, uint32_t u, uint32_t v)
{
    if (u == v || u >= g->n || v >= g->n) return false;
    if (g->k == g->n - 1) return true;
    uint32_t d = g->pos[u] > g->pos[v] ? g->pos[u] - g->pos[v] : g->pos[v] - g->pos[u];
    if (d > g->n - d) d = g->n - d;
    return d <= g->k / 2;
}

static int s_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

uint32_t secagg_graph_neighbours(const secagg_graph_t *g, uint32_t u, uint32_t *out)
{
    uint32_t c = 0;
    if (g->k == g->n - 1) {
        for (uint32_t v = 0; v < g->n; v++)
            if (v != u) out[c++] = v;
        return c;
    }
    for (uint32_t d = 1; d <= g->k / 2; d++) {
        out[c++] = g->order[(g->pos[u] + d) % g->n];
        out[c++] = g->order[(g->pos[u] + g->n - d) % g->n];
    }
    qsort(out, c, sizeof *out, s_cmp_u32);
    return c;
}

/* ---- fixed point ------------------------------------------------------------------------ */

int secagg_fixed_check(const secagg_fixed_t *fx, uint32_t n)
{
    if (!(fx->scale > 0) || !(fx->clip > 0) || !(fx->max_weight > 0) || !isfinite(fx->scale) ||
        !isfinite(fx->clip) || !isfinite(fx->max_weight))
        return medfl_error_set(MEDFL_EINVAL, "secagg fixed point: scale %g, clip %g, max_weight %g "
                               "must be finite and > 0", fx->scale, fx->clip, fx->max_weight);
    double worst = (double)n * (fx->clip * fx->max_weight * fx->scale + 0.5);
    if (worst > 2147483647.0)
        return medfl_error_set(MEDFL_EINVAL, "secagg fixed point: n = %u * (clip %g * max_weight "
                               "%g * scale %g + 0.5) = %.4g exceeds 2^31 - 1: the sum could wrap",
                               n, fx->clip, fx->max_weight, fx->scale, worst);
    return 0;
}

int secagg_encode(const secagg_fixed_t *fx, const float *x, size_t m, double weight,
                  uint32_t *out)
{
    if (secagg_fixed_check(fx, 1) < 0) return -1;
    if (!(weight >= 0) || weight > fx->max_weight)
        return medfl_error_set(MEDFL_EINVAL, "secagg encode: weight %g outside [0, %g]", weight,
                               fx->max_weight);
    double f = weight * fx->scale;
    for (size_t i = 0; i < m; i++) {
        double v = x[i];
        if (!isfinite(v))
            return medfl_error_set(MEDFL_EINVAL, "secagg encode: coordinate %zu is not finite", i);
        v = v > fx->clip ? fx->clip : v < -fx->clip ? -fx->clip : v;
        out[i] = (uint32_t)(int64_t)llround(v * f);
    }
    return 0;
}

int secagg_decode(const secagg_fixed_t *fx, const uint32_t *sum, size_t m, double weight_sum,
                  float *avg)
{
    if (!(weight_sum > 0) || !(fx->scale > 0))
        return medfl_error_set(MEDFL_EINVAL, "secagg decode: weight sum %g and scale %g must be "
                               "> 0", weight_sum, fx->scale);
    double f = 1.0 / (fx->scale * weight_sum);
    for (size_t i = 0; i < m; i++) {
        int64_t v = sum[i] >= 0x80000000u ? (int64_t)sum[i] - 0x100000000ll : (int64_t)sum[i];
        avg[i] = (float)((double)v * f);
    }
    return 0;
}

/* ---- PRG expansion --------------------------------------------------------------------- */

#define S_CHUNK 4096 /* ring elements per keystream block: 16 KiB stays in L1/L2 */

typedef struct {
    uint8_t seed[32];
    int sign;
} s_job_t;

static const uint8_t s_zero[S_CHUNK * 4];

/* acc[lo, hi) += sum_j sign_j * PRG(seed_j)[lo, hi); lo is a multiple of 16 (one block). */
static void s_apply_range(uint32_t *acc, uint64_t lo, uint64_t hi, const s_job_t *jobs,
                          size_t njobs)
{
    uint32_t ks[S_CHUNK];
    static const uint8_t nonce[12];
    for (uint64_t c = lo; c < hi; c += S_CHUNK) {
        size_t len = hi - c < S_CHUNK ? (size_t)(hi - c) : S_CHUNK;
        uint32_t *a = acc + c;
        for (size_t j = 0; j < njobs; j++) {
            crypto_stream_chacha20_ietf_xor_ic((uint8_t *)ks, s_zero, len * 4, nonce,
                                               (uint32_t)(c / 16), jobs[j].seed);
#if S_BIG_ENDIAN
            for (size_t i = 0; i < len; i++) ks[i] = __builtin_bswap32(ks[i]);
#endif
            if (jobs[j].sign > 0)
                for (size_t i = 0; i < len; i++) a[i] += ks[i];
            else
                for (size_t i = 0; i < len; i++) a[i] -= ks[i];
        }
    }
    sodium_memzero(ks, sizeof ks);
}

typedef struct {
    uint32_t *acc;
    uint64_t lo, hi;
    const s_job_t *jobs;
    size_t njobs;
} s_part_t;

static void *s_part_run(void *arg)
{
    s_part_t *p = arg;
    s_apply_range(p->acc, p->lo, p->hi, p->jobs, p->njobs);
    return NULL;
}

/* Splits [0, m) into `threads` block-aligned parts; each worker runs every job over its
 * part, so no two threads touch the same accumulator words. */
static void s_apply(uint32_t *acc, uint64_t m, const s_job_t *jobs, size_t njobs, int threads)
{
    if (threads < 1) threads = 1;
    if (threads > 16) threads = 16;
    if (m < (uint64_t)threads * S_CHUNK) threads = 1;
    s_part_t parts[16];
    pthread_t tid[16];
    int started[16] = {0};
    uint64_t per = (m / (uint64_t)threads + 15) / 16 * 16;
    for (int i = 0; i < threads; i++) {
        parts[i].acc = acc;
        parts[i].lo = per * (uint64_t)i > m ? m : per * (uint64_t)i;
        parts[i].hi = i == threads - 1 || per * (uint64_t)(i + 1) > m ? m : per * (uint64_t)(i + 1);
        parts[i].jobs = jobs;
        parts[i].njobs = njobs;
    }
    for (int i = 1; i < threads; i++)
        started[i] = pthread_create(&tid[i], NULL, s_part_run, &parts[i]) == 0;
    s_part_run(&parts[0]);
    for (int i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            s_part_run(&parts[i]); /* could not start a thread: do its part here */
    }
}

void secagg_prg_accumulate(uint32_t *acc, uint64_t m, const uint8_t seed[32], int sign)
{
    s_job_t job;
    memcpy(job.seed, seed, 32);
    job.sign = sign;
    s_apply(acc, m, &job, 1, 1);
    sodium_memzero(&job, sizeof job);
}

/* ---- key derivation --------------------------------------------------------------------- */

/* out = H(label || round || min(u,v) || max(u,v) || X25519(sk, pk)); fails on a low-order pk. */
static int s_derive(uint8_t out[32], const char *label, uint64_t round_id, uint32_t u, uint32_t v,
                    const uint8_t sk[32], const uint8_t pk[32])
{
    uint8_t shared[crypto_scalarmult_BYTES], b[16];
    if (crypto_scalarmult(shared, sk, pk) != 0) {
        sodium_memzero(shared, sizeof shared);
        return medfl_error_set(MEDFL_ECRYPTO, "secagg: X25519 with node %u's key failed "
                               "(low-order point)", u == v ? u : (u < v ? v : u));
    }
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    crypto_generichash_update(&h, (const uint8_t *)label, strlen(label));
    s_le64(b, round_id);
    s_le32(b + 8, u < v ? u : v);
    s_le32(b + 12, u < v ? v : u);
    crypto_generichash_update(&h, b, sizeof b);
    crypto_generichash_update(&h, shared, sizeof shared);
    crypto_generichash_final(&h, out, 32);
    sodium_memzero(shared, sizeof shared);
    sodium_memzero(&h, sizeof h);
    return 0;
}

/* The bytes an AdvertiseKeys signature covers: label || round || context || node || c_pk ||
 * s_pk. The context binds the rest of the round start the signer received (threshold, DP
 * parameters, compression, base version...): a node that was sent different round
 * parameters signs something its neighbours' verification does not reproduce. */
#define S_SIG_MSG_BYTES (sizeof s_sig_label - 1 + 8 + SECAGG_CONTEXT_BYTES + 4 + 64)

static void s_sig_msg(uint8_t out[S_SIG_MSG_BYTES], uint64_t round_id,
                      const uint8_t context[SECAGG_CONTEXT_BYTES], const secagg_keys_t *k)
{
    size_t o = sizeof s_sig_label - 1;
    memcpy(out, s_sig_label, o);
    s_le64(out + o, round_id);
    o += 8;
    memcpy(out + o, context, SECAGG_CONTEXT_BYTES);
    o += SECAGG_CONTEXT_BYTES;
    s_le32(out + o, k->node);
    memcpy(out + o + 4, k->c_pk, 32);
    memcpy(out + o + 36, k->s_pk, 32);
}

static int s_verify_keys(uint64_t round_id, const uint8_t context[SECAGG_CONTEXT_BYTES],
                         const secagg_keys_t *k, const uint8_t id_pk[32])
    __attribute__((warn_unused_result));
static int s_verify_keys(uint64_t round_id, const uint8_t context[SECAGG_CONTEXT_BYTES],
                         const secagg_keys_t *k, const uint8_t id_pk[32])
{
    uint8_t msg[S_SIG_MSG_BYTES];
    s_sig_msg(msg, round_id, context, k);
    if (crypto_sign_verify_detached(k->sig, msg, sizeof msg, id_pk) != 0)
        return medfl_error_set(MEDFL_ECRYPTO, "secagg round %llu: keys of node %u: signature "
                               "does not verify against its enrolled identity key and this "
                               "round's parameters (it was sent another round start than this "
                               "party, or it runs an incompatible medfl version)",
                               (unsigned long long)round_id, k->node);
    return 0;
}

/* label || round || context || count || survivors (u32 LE each): what a ConsistencyCheck
 * signature covers. Freed by the caller. */
static uint8_t *s_set_msg(uint64_t round_id, const uint8_t context[SECAGG_CONTEXT_BYTES],
                          const uint32_t *nodes, uint32_t count, size_t *len)
{
    size_t o = sizeof s_set_label - 1;
    *len = o + 8 + SECAGG_CONTEXT_BYTES + 4 + 4 * (size_t)count;
    uint8_t *m = malloc(*len);
    if (!m) {
        medfl_error_set(MEDFL_ENOMEM, "secagg: survivor set of %u nodes", count);
        return NULL;
    }
    memcpy(m, s_set_label, o);
    s_le64(m + o, round_id);
    o += 8;
    memcpy(m + o, context, SECAGG_CONTEXT_BYTES);
    o += SECAGG_CONTEXT_BYTES;
    s_le32(m + o, count);
    o += 4;
    for (uint32_t i = 0; i < count; i++, o += 4) s_le32(m + o, nodes[i]);
    return m;
}

static void s_ad(uint8_t ad[sizeof s_ad_label - 1 + 16], uint64_t round_id, uint32_t sender,
                 uint32_t recipient)
{
    size_t o = sizeof s_ad_label - 1;
    memcpy(ad, s_ad_label, o);
    s_le64(ad + o, round_id);
    s_le32(ad + o + 8, sender);
    s_le32(ad + o + 12, recipient);
}

#define S_AD_BYTES (sizeof s_ad_label - 1 + 16)

static void s_share_pack(uint8_t *out, const shamir_share_t *b, const shamir_share_t *sk)
{
    for (int l = 0; l < SHAMIR_LIMBS; l++) {
        s_le64(out + 8 * l, b->y[l]);
        s_le64(out + SHAMIR_SHARE_BYTES + 8 * l, sk->y[l]);
    }
}

static int s_share_unpack(const uint8_t *in, shamir_share_t *b, shamir_share_t *sk)
{
    int bad = 0;
    for (int l = 0; l < SHAMIR_LIMBS; l++) {
        uint64_t x = 0, y = 0;
        for (int i = 0; i < 8; i++) {
            x |= (uint64_t)in[8 * l + i] << (8 * i);
            y |= (uint64_t)in[SHAMIR_SHARE_BYTES + 8 * l + i] << (8 * i);
        }
        b->y[l] = x;
        sk->y[l] = y;
        bad |= x >= SHAMIR_P || y >= SHAMIR_P;
    }
    return bad ? -1 : 0;
}

/* ---- client ----------------------------------------------------------------------------- */

struct secagg_client_t {
    secagg_params_t p;
    uint32_t self;
    secagg_client_state_t state;
    secagg_graph_t *g;
    uint8_t id_sk[crypto_sign_SECRETKEYBYTES];
    uint8_t *id_pks;      /* n * 32 */
    uint8_t c_pk[32], c_sk[32], s_pk[32], s_sk[32], b[32];
    uint8_t *peer_c_pk;   /* n * 32, valid where in_u1 */
    uint8_t *peer_s_pk;   /* n * 32 */
    uint8_t *in_u1;       /* neighbour advertised signed keys */
    uint8_t *in_u2;       /* neighbour's share pair received (self included) */
    shamir_share_t *held_b, *held_sk; /* n each: our share of node v's b_v / s_sk_v */
    uint32_t *nbr;        /* k sorted neighbours */
    uint32_t n_nbr;
    uint32_t *u3;         /* the survivor set this node signed (sorted) */
    uint32_t n_u3;
    uint8_t *revealed;    /* n: kind + 1 of the share of node v this node revealed, 0 = none;
                           * kept after the reveal so the whole round is covered */
};

static void s_client_wipe(secagg_client_t *c)
{
    sodium_memzero(c->c_sk, 32);
    sodium_memzero(c->s_sk, 32);
    sodium_memzero(c->b, 32);
    sodium_memzero(c->id_sk, sizeof c->id_sk);
    if (c->held_b) sodium_memzero(c->held_b, c->p.n * sizeof *c->held_b);
    if (c->held_sk) sodium_memzero(c->held_sk, c->p.n * sizeof *c->held_sk);
}

static int s_client_abort(secagg_client_t *c)
{
    /* keep the error already recorded; only wipe and refuse further calls */
    c->state = SECAGG_C_ABORTED;
    s_client_wipe(c);
    return -1;
}

secagg_client_t *secagg_client_new(const secagg_params_t *p, uint32_t self,
                                   const uint8_t *identity_sk, const uint8_t *identity_pks)
{
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "sodium_init failed");
        return NULL;
    }
    if (secagg_params_validate(p) < 0) return NULL;
    if (self >= p->n) {
        medfl_error_set(MEDFL_EINVAL, "secagg client: node %u outside roster of %u", self, p->n);
        return NULL;
    }
    if (!identity_sk || !identity_pks) {
        medfl_error_set(MEDFL_EINVAL, "secagg client %u: identity keys missing", self);
        return NULL;
    }
    secagg_client_t *c = calloc(1, sizeof *c);
    if (!c) goto oom;
    c->p = *p;
    c->self = self;
    size_t n = p->n;
    if (!(c->g = secagg_graph_new(p))) {
        secagg_client_destroy(&c);
        return NULL;
    }
    c->id_pks = malloc(n * 32);
    c->peer_c_pk = calloc(n, 32);
    c->peer_s_pk = calloc(n, 32);
    c->in_u1 = calloc(n, 1);
    c->in_u2 = calloc(n, 1);
    c->held_b = calloc(n, sizeof *c->held_b);
    c->held_sk = calloc(n, sizeof *c->held_sk);
    c->nbr = malloc(p->k * sizeof *c->nbr);
    c->revealed = calloc(n, 1);
    if (!c->id_pks || !c->peer_c_pk || !c->peer_s_pk || !c->in_u1 || !c->in_u2 || !c->held_b ||
        !c->held_sk || !c->nbr || !c->revealed)
        goto oom;
    memcpy(c->id_pks, identity_pks, n * 32);
    memcpy(c->id_sk, identity_sk, sizeof c->id_sk);
    c->n_nbr = secagg_graph_neighbours(c->g, self, c->nbr);
    return c;
oom:
    secagg_client_destroy(&c);
    medfl_error_set(MEDFL_ENOMEM, "secagg client state for %u nodes", p->n);
    return NULL;
}

void secagg_client_destroy(secagg_client_t **self_p)
{
    if (!self_p || !*self_p) return;
    secagg_client_t *c = *self_p;
    s_client_wipe(c);
    secagg_graph_destroy(&c->g);
    free(c->id_pks);
    free(c->peer_c_pk);
    free(c->peer_s_pk);
    free(c->in_u1);
    free(c->in_u2);
    free(c->held_b);
    free(c->held_sk);
    free(c->nbr);
    free(c->u3);
    free(c->revealed);
    sodium_memzero(c, sizeof *c);
    free(c);
    *self_p = NULL;
}

secagg_client_state_t secagg_client_state(const secagg_client_t *c)
{
    return c->state;
}

int secagg_client_revealed(const secagg_client_t *c, uint32_t node)
{
    return node < c->p.n && c->revealed[node] ? c->revealed[node] - 1 : -1;
}

static int s_client_expect(secagg_client_t *c, secagg_client_state_t want, const char *what)
{
    if (c->state != want)
        return medfl_error_set(MEDFL_ESTATE, "secagg client %u: %s not valid in state %d",
                               c->self, what, (int)c->state);
    return 0;
}

static int s_client_round(secagg_client_t *c, uint64_t round_id, const char *what)
{
    if (round_id != c->p.round_id)
        return medfl_error_set(MEDFL_EPROTO, "secagg client %u: %s for round %llu, expected %llu",
                               c->self, what, (unsigned long long)round_id,
                               (unsigned long long)c->p.round_id);
    return 0;
}

int secagg_client_advertise(secagg_client_t *c, uint8_t **out, size_t *out_len)
{
    if (s_client_expect(c, SECAGG_C_INIT, "advertise") < 0) return -1;
    secagg_advertise_t a = {.round_id = c->p.round_id};
    crypto_box_keypair(c->c_pk, c->c_sk);
    crypto_box_keypair(c->s_pk, c->s_sk);
    a.keys.node = c->self;
    memcpy(a.keys.c_pk, c->c_pk, 32);
    memcpy(a.keys.s_pk, c->s_pk, 32);
    uint8_t msg[S_SIG_MSG_BYTES];
    s_sig_msg(msg, c->p.round_id, c->p.context, &a.keys);
    crypto_sign_detached(a.keys.sig, NULL, msg, sizeof msg, c->id_sk);
    /* the identity key signs once more: the survivor set (secagg_client_sign_survivors) */
    if (secagg_advertise_encode(&a, out, out_len) < 0) return s_client_abort(c);
    c->state = SECAGG_C_ADVERTISED;
    return 0;
}

int secagg_client_handle_keys(secagg_client_t *c, const uint8_t *in, size_t in_len,
                              uint8_t **out, size_t *out_len)
{
    if (s_client_expect(c, SECAGG_C_ADVERTISED, "KeysBroadcast") < 0) return -1;
    secagg_broadcast_t bc;
    if (secagg_broadcast_decode(in, in_len, &bc) < 0) return s_client_abort(c);
    int rc = -1;
    uint64_t *xs = NULL;
    shamir_share_t *sb = NULL, *ssk = NULL;
    secagg_shares_t sk = {.round_id = c->p.round_id, .owner = c->self};
    uint32_t h = bc.count + 1, self_at = 0;
    uint8_t pt[SECAGG_SHARE_PT_BYTES], key[32], ad[S_AD_BYTES];
    if (s_client_round(c, bc.round_id, "KeysBroadcast") < 0) goto done;
    for (uint32_t i = 0; i < bc.count; i++) {
        const secagg_keys_t *e = &bc.entries[i];
        if (!secagg_graph_adjacent(c->g, c->self, e->node)) {
            medfl_error_set(MEDFL_EPROTO, "secagg client %u: KeysBroadcast entry %u: node %u is "
                            "not a neighbour", c->self, i, e->node);
            goto done;
        }
        if (s_verify_keys(c->p.round_id, c->p.context, e, c->id_pks + 32 * (size_t)e->node) < 0)
            goto done;
        if (sodium_memcmp(e->c_pk, e->s_pk, 32) == 0) {
            medfl_error_set(MEDFL_ECRYPTO, "secagg client %u: node %u advertised equal c and s "
                            "keys", c->self, e->node);
            goto done;
        }
    }
    if (bc.count + 1 < c->p.t) {
        medfl_error_set(MEDFL_ESTATE, "secagg client %u: only %u neighbours advertised keys, "
                        "threshold %u needs %u: round aborted", c->self, bc.count, c->p.t,
                        c->p.t - 1);
        goto done;
    }
    for (uint32_t i = 0; i < bc.count; i++) {
        uint32_t v = bc.entries[i].node;
        c->in_u1[v] = 1;
        memcpy(c->peer_c_pk + 32 * (size_t)v, bc.entries[i].c_pk, 32);
        memcpy(c->peer_s_pk + 32 * (size_t)v, bc.entries[i].s_pk, 32);
    }
    /* holders: the advertised neighbours and this node, in increasing id order */
    xs = malloc(h * sizeof *xs);
    sb = malloc(h * sizeof *sb);
    ssk = malloc(h * sizeof *ssk);
    sk.entries = calloc(bc.count ? bc.count : 1, sizeof *sk.entries);
    if (!xs || !sb || !ssk || !sk.entries) {
        medfl_error_set(MEDFL_ENOMEM, "secagg client %u: shares for %u holders", c->self, h);
        goto done;
    }
    for (uint32_t i = 0, j = 0; i < h; i++) {
        uint32_t node;
        if (j < bc.count && (bc.entries[j].node < c->self || i != j)) node = bc.entries[j++].node;
        else node = c->self;
        if (node == c->self) self_at = i;
        xs[i] = (uint64_t)node + 1;
    }
    randombytes_buf(c->b, 32);
    if (shamir_split(c->b, c->p.t, xs, h, sb) < 0 || shamir_split(c->s_sk, c->p.t, xs, h, ssk) < 0)
        goto done;
    for (uint32_t i = 0, e = 0; i < h; i++) {
        uint32_t v = (uint32_t)(xs[i] - 1);
        if (i == self_at) continue;
        if (s_derive(key, s_enc_label, c->p.round_id, c->self, v, c->c_sk,
                     c->peer_c_pk + 32 * (size_t)v) < 0)
            goto done;
        s_share_pack(pt, &sb[i], &ssk[i]);
        s_ad(ad, c->p.round_id, c->self, v);
        secagg_cipher_t *ct = &sk.entries[e++];
        ct->peer = v;
        randombytes_buf(ct->ct, 24);
        crypto_aead_xchacha20poly1305_ietf_encrypt(ct->ct + 24, NULL, pt, sizeof pt, ad,
                                                   sizeof ad, NULL, ct->ct, key);
        sodium_memzero(pt, sizeof pt);
        sodium_memzero(key, sizeof key);
    }
    sk.count = bc.count;
    c->held_b[c->self] = sb[self_at];
    c->held_sk[c->self] = ssk[self_at];
    c->in_u2[c->self] = 1;
    if (secagg_shares_encode(SECAGG_MSG_SHARE_KEYS, &sk, out, out_len) < 0) goto done;
    c->state = SECAGG_C_SHARED;
    rc = 0;
done:
    sodium_memzero(pt, sizeof pt);
    sodium_memzero(key, sizeof key);
    if (sb) sodium_memzero(sb, h * sizeof *sb);
    if (ssk) sodium_memzero(ssk, h * sizeof *ssk);
    free(sb);
    free(ssk);
    free(xs);
    secagg_shares_clear(&sk);
    secagg_broadcast_clear(&bc);
    return rc < 0 ? s_client_abort(c) : 0;
}

int secagg_client_handle_shares(secagg_client_t *c, const uint8_t *in, size_t in_len)
{
    if (s_client_expect(c, SECAGG_C_SHARED, "SharesDelivery") < 0) return -1;
    secagg_shares_t d;
    if (secagg_shares_decode(SECAGG_MSG_SHARES_DELIVERY, in, in_len, &d) < 0)
        return s_client_abort(c);
    int rc = -1;
    uint8_t pt[SECAGG_SHARE_PT_BYTES], key[32], ad[S_AD_BYTES];
    if (s_client_round(c, d.round_id, "SharesDelivery") < 0) goto done;
    if (d.owner != c->self) {
        medfl_error_set(MEDFL_EPROTO, "secagg client %u: SharesDelivery addressed to %u",
                        c->self, d.owner);
        goto done;
    }
    if (d.count + 1 < c->p.t) {
        medfl_error_set(MEDFL_ESTATE, "secagg client %u: shares from only %u neighbours, "
                        "threshold %u: round aborted", c->self, d.count, c->p.t);
        goto done;
    }
    for (uint32_t i = 0; i < d.count; i++) {
        uint32_t v = d.entries[i].peer;
        if (v >= c->p.n || !c->in_u1[v]) {
            medfl_error_set(MEDFL_EPROTO, "secagg client %u: shares from node %u, which did not "
                            "advertise keys to us", c->self, v);
            goto done;
        }
        if (s_derive(key, s_enc_label, c->p.round_id, c->self, v, c->c_sk,
                     c->peer_c_pk + 32 * (size_t)v) < 0)
            goto done;
        s_ad(ad, c->p.round_id, v, c->self);
        const uint8_t *ct = d.entries[i].ct;
        int bad = crypto_aead_xchacha20poly1305_ietf_decrypt(
                      pt, NULL, NULL, ct + 24, SECAGG_CT_BYTES - 24, ad, sizeof ad, ct, key) != 0;
        sodium_memzero(key, sizeof key);
        if (bad || s_share_unpack(pt, &c->held_b[v], &c->held_sk[v]) < 0) {
            medfl_error_set(MEDFL_ECRYPTO, "secagg client %u: share pair from node %u does not "
                            "decrypt/authenticate", c->self, v);
            goto done;
        }
        c->in_u2[v] = 1;
    }
    /* shares are in: the encryption key pair has served its purpose */
    sodium_memzero(c->c_sk, 32);
    c->state = SECAGG_C_READY;
    rc = 0;
done:
    sodium_memzero(pt, sizeof pt);
    secagg_shares_clear(&d);
    return rc < 0 ? s_client_abort(c) : 0;
}

int secagg_client_masked_input(secagg_client_t *c, const uint32_t *x, uint8_t **out,
                               size_t *out_len)
{
    if (s_client_expect(c, SECAGG_C_READY, "masked input") < 0) return -1;
    uint64_t m = c->p.m;
    size_t len = secagg_masked_size(m);
    uint8_t *buf = malloc(len);
    s_job_t *jobs = malloc((c->n_nbr + 1) * sizeof *jobs);
    if (!buf || !jobs) {
        free(buf);
        free(jobs);
        medfl_error_set(MEDFL_ENOMEM, "secagg client %u: masked input of %llu values", c->self,
                        (unsigned long long)m);
        return s_client_abort(c);
    }
    size_t nj = 0;
    memcpy(jobs[nj].seed, c->b, 32);
    jobs[nj++].sign = +1;
    for (uint32_t i = 0; i < c->n_nbr; i++) {
        uint32_t v = c->nbr[i];
        if (!c->in_u2[v]) continue;
        if (s_derive(jobs[nj].seed, s_mask_label, c->p.round_id, c->self, v, c->s_sk,
                     c->peer_s_pk + 32 * (size_t)v) < 0) {
            sodium_memzero(jobs, (c->n_nbr + 1) * sizeof *jobs);
            free(jobs);
            free(buf);
            return s_client_abort(c);
        }
        jobs[nj++].sign = c->self < v ? +1 : -1;
    }
    secagg_masked_write_header(buf, c->p.round_id, c->self, m);
    /* the value area starts 24 bytes into a malloc'd block: 8-byte aligned */
    uint32_t *y = (uint32_t *)(void *)(buf + (len - 4 * (size_t)m));
    memcpy(y, x, 4 * (size_t)m);
    s_apply(y, m, jobs, nj, 1);
#if S_BIG_ENDIAN
    for (uint64_t i = 0; i < m; i++) y[i] = __builtin_bswap32(y[i]);
#endif
    sodium_memzero(jobs, (c->n_nbr + 1) * sizeof *jobs);
    free(jobs);
    sodium_memzero(c->b, 32);
    sodium_memzero(c->s_sk, 32);
    sodium_memzero(c->c_sk, 32);
    *out = buf;
    *out_len = len;
    c->state = SECAGG_C_MASKED;
    return 0;
}

/* Self and neighbours: the holders of this node's shares, whose signatures count. */
static bool s_client_holder(const secagg_client_t *c, uint32_t v)
{
    return v == c->self || secagg_graph_adjacent(c->g, c->self, v);
}

static bool s_in_sorted(const uint32_t *list, uint32_t count, uint32_t v)
{
    return bsearch(&v, list, count, sizeof *list, s_cmp_u32) != NULL;
}

int secagg_client_sign_survivors(secagg_client_t *c, const uint8_t *in, size_t in_len,
                                 uint8_t **out, size_t *out_len)
{
    if (c->state == SECAGG_C_SIGNED || c->state == SECAGG_C_DONE) {
        medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing a second survivor set in round "
                        "%llu: a node signs one survivor set per round (two would let the "
                        "aggregator show different survivors to different holders)", c->self,
                        (unsigned long long)c->p.round_id);
        return s_client_abort(c);
    }
    if (s_client_expect(c, SECAGG_C_MASKED, "ConsistencyCheck") < 0) return -1;
    secagg_survivors_t sv;
    if (secagg_survivors_decode(in, in_len, &sv) < 0) return s_client_abort(c);
    int rc = -1;
    uint8_t *msg = NULL;
    size_t msg_len = 0;
    if (s_client_round(c, sv.round_id, "ConsistencyCheck") < 0) goto done;
    uint32_t holders = 0;
    for (uint32_t i = 0; i < sv.count; i++) {
        if (sv.nodes[i] >= c->p.n) {
            medfl_error_set(MEDFL_EPROTO, "secagg client %u: ConsistencyCheck names node %u "
                            "outside the roster", c->self, sv.nodes[i]);
            goto done;
        }
        holders += s_client_holder(c, sv.nodes[i]);
    }
    if (!s_in_sorted(sv.nodes, sv.count, c->self)) {
        medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing a survivor set that does not "
                        "list this node, which sent its masked input", c->self);
        goto done;
    }
    if (holders < c->p.t) {
        medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing a survivor set with %u of this "
                        "node's neighbourhood, threshold %u", c->self, holders, c->p.t);
        goto done;
    }
    secagg_survivor_sig_t sg = {.round_id = c->p.round_id, .s.node = c->self};
    if (!(msg = s_set_msg(c->p.round_id, c->p.context, sv.nodes, sv.count, &msg_len))) goto done;
    crypto_sign_detached(sg.s.sig, NULL, msg, msg_len, c->id_sk);
    sodium_memzero(c->id_sk, sizeof c->id_sk); /* its last use */
    if (secagg_survivor_sig_encode(&sg, out, out_len) < 0) goto done;
    c->u3 = sv.nodes;
    c->n_u3 = sv.count;
    sv.nodes = NULL;
    c->state = SECAGG_C_SIGNED;
    rc = 0;
done:
    free(msg);
    secagg_survivors_clear(&sv);
    return rc < 0 ? s_client_abort(c) : 0;
}

/* Before anything is revealed: the request names exactly the survivor set this node signed,
 * and carries at least t valid signatures over it from distinct surviving holders (self and
 * neighbours). Any signature that does not verify is refused outright: an honest aggregator
 * forwards only signatures it verified itself. */
static int s_check_consistency(secagg_client_t *c, const secagg_unmask_req_t *rq)
{
    if (rq->n_survivors != c->n_u3 ||
        (c->n_u3 && memcmp(rq->survivors, c->u3, c->n_u3 * sizeof *c->u3) != 0))
        return medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing UnmaskRequest: its "
                               "survivor set (%u nodes) is not the one this node signed (%u "
                               "nodes)", c->self, rq->n_survivors, c->n_u3);
    size_t len = 0;
    uint8_t *msg = s_set_msg(c->p.round_id, c->p.context, c->u3, c->n_u3, &len);
    if (!msg) return -1;
    uint32_t valid = 0;
    int rc = 0;
    for (uint32_t i = 0; i < rq->n_sigs && rc == 0; i++) {
        uint32_t v = rq->sigs[i].node;
        if (v >= c->p.n || !s_client_holder(c, v) || !s_in_sorted(c->u3, c->n_u3, v))
            rc = medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing UnmaskRequest: it "
                                 "forwards a survivor-set signature of node %u, not a surviving "
                                 "member of this node's neighbourhood", c->self, v);
        else if (crypto_sign_verify_detached(rq->sigs[i].sig, msg, len,
                                             c->id_pks + 32 * (size_t)v) != 0)
            rc = medfl_error_set(MEDFL_ECRYPTO, "secagg client %u: refusing UnmaskRequest: node "
                                 "%u's signature does not verify over the survivor set this node "
                                 "signed (the aggregator showed it another set)", c->self, v);
        else
            valid++;
    }
    free(msg);
    if (rc == 0 && valid < c->p.t)
        rc = medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing UnmaskRequest: %u valid "
                             "signatures over the survivor set from this node's neighbourhood, "
                             "threshold %u (without them the aggregator may have shown other "
                             "survivors to other holders)", c->self, valid, c->p.t);
    return rc;
}

int secagg_client_handle_unmask(secagg_client_t *c, const uint8_t *in, size_t in_len,
                                uint8_t **out, size_t *out_len)
{
    if (c->state == SECAGG_C_DONE) {
        /* not an abort: what was revealed stays recorded, and nothing more will be */
        uint32_t shown = 0;
        for (uint32_t v = 0; v < c->p.n; v++) shown += c->revealed[v] != 0;
        return medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing a second UnmaskRequest "
                               "in round %llu: this node already revealed %u shares and reveals "
                               "once per round (another request could ask for the other share "
                               "of a peer)", c->self, (unsigned long long)c->p.round_id, shown);
    }
    if (s_client_expect(c, SECAGG_C_SIGNED, "UnmaskRequest") < 0) return -1;
    secagg_unmask_req_t rq;
    if (secagg_unmask_req_decode(in, in_len, &rq) < 0) return s_client_abort(c);
    int rc = -1;
    uint32_t n = c->p.n;
    uint8_t *flag = calloc(n, 1); /* bit 0 survivor, bit 1 dropped */
    secagg_unmask_resp_t rs = {.round_id = c->p.round_id, .sender = c->self};
    rs.entries = calloc(c->n_nbr + 1, sizeof *rs.entries);
    if (!flag || !rs.entries) {
        medfl_error_set(MEDFL_ENOMEM, "secagg client %u: unmask response", c->self);
        goto done;
    }
    if (s_client_round(c, rq.round_id, "UnmaskRequest") < 0) goto done;
    if (s_check_consistency(c, &rq) < 0) goto done;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t cnt = pass ? rq.n_dropped : rq.n_survivors;
        const uint32_t *list = pass ? rq.dropped : rq.survivors;
        for (uint32_t i = 0; i < cnt; i++) {
            if (list[i] >= n) {
                medfl_error_set(MEDFL_EPROTO, "secagg client %u: UnmaskRequest names node %u "
                                "outside the roster", c->self, list[i]);
                goto done;
            }
            flag[list[i]] |= (uint8_t)(1u << pass);
        }
    }
    for (uint32_t v = 0; v < n; v++)
        if (flag[v] == 3) {
            medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing UnmaskRequest: node %u is "
                            "listed both as survivor and as dropped (would reveal its self-mask "
                            "and its mask key)", c->self, v);
            goto done;
        }
    if (flag[c->self] != 1) {
        medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing UnmaskRequest that does not "
                        "list this node as a survivor", c->self);
        goto done;
    }
    if (rq.n_survivors < c->p.t) {
        medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing UnmaskRequest with %u survivors "
                        "< threshold %u", c->self, rq.n_survivors, c->p.t);
        goto done;
    }
    /* walk self and neighbours in increasing id order */
    uint32_t cnt = 0;
    for (uint32_t i = 0, j = 0; i <= c->n_nbr; i++) {
        uint32_t v;
        if (j < c->n_nbr && (c->nbr[j] < c->self || i != j)) v = c->nbr[j++];
        else v = c->self;
        if (!flag[v]) continue;
        if (!c->in_u2[v]) {
            medfl_error_set(MEDFL_EPERM, "secagg client %u: refusing UnmaskRequest naming node "
                            "%u, which never shared keys with us", c->self, v);
            goto done;
        }
        secagg_reveal_t *e = &rs.entries[cnt++];
        e->node = v;
        e->kind = flag[v] == 1 ? SECAGG_REVEAL_B : SECAGG_REVEAL_SK;
        e->share = flag[v] == 1 ? c->held_b[v] : c->held_sk[v];
    }
    rs.count = cnt;
    if (secagg_unmask_resp_encode(&rs, out, out_len) < 0) goto done;
    for (uint32_t i = 0; i < cnt; i++)
        c->revealed[rs.entries[i].node] = (uint8_t)(rs.entries[i].kind + 1);
    c->state = SECAGG_C_DONE;
    s_client_wipe(c);
    rc = 0;
done:
    free(flag);
    rs.count = c->n_nbr + 1;
    secagg_unmask_resp_clear(&rs);
    secagg_unmask_req_clear(&rq);
    return rc < 0 ? s_client_abort(c) : 0;
}

/* ---- server ----------------------------------------------------------------------------- */

struct secagg_server_t {
    secagg_params_t p;
    secagg_server_state_t state;
    secagg_graph_t *g;
    int threads;
    uint8_t *id_pks;         /* n * 32 */
    secagg_keys_t *keys;     /* n, valid where has[PHASE_KEYS] */
    secagg_cipher_t **cts;   /* per sender: its ShareKeys entries, increasing recipient */
    uint32_t *n_cts;
    uint8_t *has[6];         /* per phase 1..5: node took part */
    uint32_t *set[6];        /* sorted participants of phase 1..5 */
    uint32_t set_n[6];
    uint8_t (*sigs)[SECAGG_SIG_BYTES]; /* n: survivor-set signatures, valid where has[4] */
    uint8_t *set_msg;        /* what those signatures cover (built at close_masked) */
    size_t set_msg_len;
    uint8_t *is_surv, *is_drop;
    uint32_t *sum;           /* m: running sum of masked inputs */
    uint64_t *rev_x;         /* n * (k+1): share points received per node */
    shamir_share_t *rev;     /* n * (k+1): shares received per node */
    uint32_t *n_rev_b, *n_rev_sk;
    uint32_t *nbuf;          /* k scratch neighbours */
};

secagg_server_t *secagg_server_new(const secagg_params_t *p, const uint8_t *identity_pks,
                                   int threads)
{
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "sodium_init failed");
        return NULL;
    }
    if (secagg_params_validate(p) < 0) return NULL;
    if (!identity_pks) {
        medfl_error_set(MEDFL_EINVAL, "secagg server: enrolled identity keys missing");
        return NULL;
    }
    secagg_server_t *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->p = *p;
    s->threads = threads < 1 ? 1 : threads;
    size_t n = p->n;
    if (!(s->g = secagg_graph_new(p))) {
        secagg_server_destroy(&s);
        return NULL;
    }
    s->id_pks = malloc(n * 32);
    s->keys = calloc(n, sizeof *s->keys);
    s->cts = calloc(n, sizeof *s->cts);
    s->n_cts = calloc(n, sizeof *s->n_cts);
    s->is_surv = calloc(n, 1);
    s->is_drop = calloc(n, 1);
    s->n_rev_b = calloc(n, sizeof *s->n_rev_b);
    s->n_rev_sk = calloc(n, sizeof *s->n_rev_sk);
    s->nbuf = malloc(p->k * sizeof *s->nbuf);
    s->sigs = calloc(n, sizeof *s->sigs);
    if (!s->id_pks || !s->keys || !s->cts || !s->n_cts || !s->is_surv || !s->is_drop ||
        !s->n_rev_b || !s->n_rev_sk || !s->nbuf || !s->sigs)
        goto oom;
    for (int i = 1; i <= 5; i++) {
        s->has[i] = calloc(n, 1);
        s->set[i] = calloc(n, sizeof *s->set[i]);
        if (!s->has[i] || !s->set[i]) goto oom;
    }
    memcpy(s->id_pks, identity_pks, n * 32);
    return s;
oom:
    secagg_server_destroy(&s);
    medfl_error_set(MEDFL_ENOMEM, "secagg server state for %u nodes", p->n);
    return NULL;
}

static void s_server_wipe_reveals(secagg_server_t *s)
{
    if (s->rev) sodium_memzero(s->rev, (size_t)s->p.n * (s->p.k + 1) * sizeof *s->rev);
}

void secagg_server_destroy(secagg_server_t **self_p)
{
    if (!self_p || !*self_p) return;
    secagg_server_t *s = *self_p;
    s_server_wipe_reveals(s);
    secagg_graph_destroy(&s->g);
    free(s->id_pks);
    free(s->keys);
    if (s->cts)
        for (uint32_t i = 0; i < s->p.n; i++) free(s->cts[i]);
    free(s->cts);
    free(s->n_cts);
    for (int i = 1; i <= 5; i++) {
        free(s->has[i]);
        free(s->set[i]);
    }
    free(s->sigs);
    free(s->set_msg);
    free(s->is_surv);
    free(s->is_drop);
    free(s->sum);
    free(s->rev_x);
    free(s->rev);
    free(s->n_rev_b);
    free(s->n_rev_sk);
    free(s->nbuf);
    free(s);
    *self_p = NULL;
}

secagg_server_state_t secagg_server_state(const secagg_server_t *s)
{
    return s->state;
}

const uint32_t *secagg_server_set(const secagg_server_t *s, int phase, uint32_t *count)
{
    if (phase < 1 || phase > 5) {
        *count = 0;
        return NULL;
    }
    *count = s->set_n[phase];
    return s->set[phase];
}

void secagg_server_revealed(const secagg_server_t *s, uint32_t node, uint32_t *n_b,
                            uint32_t *n_sk)
{
    *n_b = node < s->p.n ? s->n_rev_b[node] : 0;
    *n_sk = node < s->p.n ? s->n_rev_sk[node] : 0;
}

static int s_server_abort(secagg_server_t *s)
{
    s->state = SECAGG_S_ABORTED;
    s_server_wipe_reveals(s);
    if (s->sum) {
        free(s->sum);
        s->sum = NULL;
    }
    return -1;
}

static int s_server_expect(secagg_server_t *s, secagg_server_state_t want, const char *what)
{
    if (s->state != want)
        return medfl_error_set(MEDFL_ESTATE, "secagg server round %llu: %s not valid in state %d",
                               (unsigned long long)s->p.round_id, what, (int)s->state);
    return 0;
}

static int s_server_msg(secagg_server_t *s, uint64_t round_id, uint32_t node, int phase,
                        const char *what)
{
    if (round_id != s->p.round_id)
        return medfl_error_set(MEDFL_EPROTO, "secagg server: %s for round %llu, expected %llu",
                               what, (unsigned long long)round_id,
                               (unsigned long long)s->p.round_id);
    if (node >= s->p.n)
        return medfl_error_set(MEDFL_EPROTO, "secagg server: %s from node %u outside roster of %u",
                               what, node, s->p.n);
    if (phase > 1 && !s->has[phase - 1][node])
        return medfl_error_set(MEDFL_EPERM, "secagg server: %s from node %u, which missed the "
                               "previous phase", what, node);
    if (s->has[phase][node])
        return medfl_error_set(MEDFL_EPROTO, "secagg server: duplicate %s from node %u", what,
                               node);
    return 0;
}

/* Freezes phase's participant list; aborts when fewer than t took part. */
static int s_close_phase(secagg_server_t *s, int phase, const char *what)
{
    uint32_t c = 0;
    for (uint32_t u = 0; u < s->p.n; u++)
        if (s->has[phase][u]) s->set[phase][c++] = u;
    s->set_n[phase] = c;
    if (c < s->p.t) {
        medfl_error_set(MEDFL_ESTATE, "secagg round %llu aborted: %u nodes %s, threshold %u",
                        (unsigned long long)s->p.round_id, c, what, s->p.t);
        LOG_WARN(AGG, "%s", medfl_error_message());
        return s_server_abort(s);
    }
    return 0;
}

int secagg_server_add_keys(secagg_server_t *s, const uint8_t *in, size_t len)
{
    if (s_server_expect(s, SECAGG_S_KEYS, "AdvertiseKeys") < 0) return -1;
    secagg_advertise_t a;
    if (secagg_advertise_decode(in, len, &a) < 0) return -1;
    if (s_server_msg(s, a.round_id, a.keys.node, 1, "AdvertiseKeys") < 0) return -1;
    if (s_verify_keys(a.round_id, s->p.context, &a.keys, s->id_pks + 32 * (size_t)a.keys.node) < 0)
        return -1;
    s->keys[a.keys.node] = a.keys;
    s->has[1][a.keys.node] = 1;
    return 0;
}

int secagg_server_close_keys(secagg_server_t *s)
{
    if (s_server_expect(s, SECAGG_S_KEYS, "closing AdvertiseKeys") < 0) return -1;
    if (s_close_phase(s, 1, "advertised keys") < 0) return -1;
    s->state = SECAGG_S_SHARES;
    return 0;
}

int secagg_server_keys_broadcast(secagg_server_t *s, uint32_t recipient, uint8_t **out,
                                 size_t *out_len)
{
    if (s->state == SECAGG_S_KEYS || s->state == SECAGG_S_ABORTED)
        return medfl_error_set(MEDFL_ESTATE, "secagg server: KeysBroadcast before keys closed or "
                               "after abort");
    if (recipient >= s->p.n || !s->has[1][recipient])
        return medfl_error_set(MEDFL_EINVAL, "secagg server: node %u did not advertise keys",
                               recipient);
    secagg_broadcast_t bc = {.round_id = s->p.round_id};
    bc.entries = malloc((s->p.k ? s->p.k : 1) * sizeof *bc.entries);
    if (!bc.entries) return medfl_error_set(MEDFL_ENOMEM, "secagg server: KeysBroadcast");
    uint32_t k = secagg_graph_neighbours(s->g, recipient, s->nbuf);
    for (uint32_t i = 0; i < k; i++)
        if (s->has[1][s->nbuf[i]]) bc.entries[bc.count++] = s->keys[s->nbuf[i]];
    int rc = secagg_broadcast_encode(&bc, out, out_len);
    free(bc.entries);
    return rc;
}

int secagg_server_add_shares(secagg_server_t *s, const uint8_t *in, size_t len)
{
    if (s_server_expect(s, SECAGG_S_SHARES, "ShareKeys") < 0) return -1;
    secagg_shares_t sk;
    if (secagg_shares_decode(SECAGG_MSG_SHARE_KEYS, in, len, &sk) < 0) return -1;
    uint32_t u = sk.owner;
    if (s_server_msg(s, sk.round_id, u, 2, "ShareKeys") < 0) goto fail;
    /* the sender must address exactly its advertised neighbours: compare sorted lists */
    uint32_t k = secagg_graph_neighbours(s->g, u, s->nbuf), want = 0;
    for (uint32_t i = 0; i < k; i++) {
        if (!s->has[1][s->nbuf[i]]) continue;
        if (want >= sk.count || sk.entries[want].peer != s->nbuf[i]) {
            medfl_error_set(MEDFL_EPROTO, "secagg server: ShareKeys of node %u lacks a share for "
                            "node %u", u, s->nbuf[i]);
            goto fail;
        }
        want++;
    }
    if (want != sk.count) {
        medfl_error_set(MEDFL_EPROTO, "secagg server: ShareKeys of node %u has %u entries, "
                        "expected %u", u, sk.count, want);
        goto fail;
    }
    s->cts[u] = sk.entries;
    s->n_cts[u] = sk.count;
    s->has[2][u] = 1;
    return 0;
fail:
    secagg_shares_clear(&sk);
    return -1;
}

int secagg_server_close_shares(secagg_server_t *s)
{
    if (s_server_expect(s, SECAGG_S_SHARES, "closing ShareKeys") < 0) return -1;
    if (s_close_phase(s, 2, "shared keys") < 0) return -1;
    s->sum = calloc(s->p.m, sizeof *s->sum);
    if (!s->sum) {
        medfl_error_set(MEDFL_ENOMEM, "secagg server: sum of %llu values",
                        (unsigned long long)s->p.m);
        return s_server_abort(s);
    }
    s->state = SECAGG_S_MASKED;
    return 0;
}

static int s_cmp_cipher(const void *key, const void *elem)
{
    uint32_t k = *(const uint32_t *)key, p = ((const secagg_cipher_t *)elem)->peer;
    return k < p ? -1 : k > p;
}

int secagg_server_shares_delivery(secagg_server_t *s, uint32_t recipient, uint8_t **out,
                                  size_t *out_len)
{
    if (s->state != SECAGG_S_MASKED && s->state != SECAGG_S_CONSISTENCY &&
        s->state != SECAGG_S_UNMASK && s->state != SECAGG_S_DONE)
        return medfl_error_set(MEDFL_ESTATE, "secagg server: SharesDelivery before shares closed "
                               "or after abort");
    if (recipient >= s->p.n || !s->has[2][recipient])
        return medfl_error_set(MEDFL_EINVAL, "secagg server: node %u did not share keys",
                               recipient);
    secagg_shares_t d = {.round_id = s->p.round_id, .owner = recipient};
    d.entries = malloc((s->p.k ? s->p.k : 1) * sizeof *d.entries);
    if (!d.entries) return medfl_error_set(MEDFL_ENOMEM, "secagg server: SharesDelivery");
    uint32_t k = secagg_graph_neighbours(s->g, recipient, s->nbuf);
    for (uint32_t i = 0; i < k; i++) {
        uint32_t v = s->nbuf[i];
        if (!s->has[2][v]) continue;
        const secagg_cipher_t *e = bsearch(&recipient, s->cts[v], s->n_cts[v], sizeof *e,
                                           s_cmp_cipher);
        if (!e) { /* cannot happen: add_shares checked v addressed every advertised neighbour */
            free(d.entries);
            return medfl_error_set(MEDFL_ESTATE, "secagg server: no share from %u for %u", v,
                                   recipient);
        }
        d.entries[d.count] = *e;
        d.entries[d.count++].peer = v;
    }
    int rc = secagg_shares_encode(SECAGG_MSG_SHARES_DELIVERY, &d, out, out_len);
    free(d.entries);
    return rc;
}

int secagg_server_add_masked_values(secagg_server_t *s, uint64_t round_id, uint32_t sender,
                                    uint64_t m, secagg_add_fn add, void *ctx)
{
    if (s_server_expect(s, SECAGG_S_MASKED, "MaskedInput") < 0) return -1;
    if (s_server_msg(s, round_id, sender, 3, "MaskedInput") < 0) return -1;
    if (m != s->p.m)
        return medfl_error_set(MEDFL_EPROTO, "secagg server: MaskedInput of node %u has %llu "
                               "values, expected %llu", sender, (unsigned long long)m,
                               (unsigned long long)s->p.m);
    if (add(ctx, s->sum, m) < 0) return -1;
    s->has[3][sender] = 1;
    return 0;
}

/* secagg_add_fn over little-endian u32 values (a MaskedInput's payload); cannot fail. */
static int s_add_le(void *ctx, uint32_t *sum, uint64_t m)
{
    secagg_add_le(sum, ctx, m);
    return 0;
}

void secagg_add_le(uint32_t *sum, const uint8_t *values_le, uint64_t m)
{
    for (uint64_t i = 0; i < m; i++) {
        uint32_t x;
        memcpy(&x, values_le + 4 * i, 4);
#if S_BIG_ENDIAN
        x = __builtin_bswap32(x);
#endif
        sum[i] += x;
    }
}

int secagg_server_add_masked(secagg_server_t *s, const uint8_t *in, size_t len)
{
    if (s_server_expect(s, SECAGG_S_MASKED, "MaskedInput") < 0) return -1;
    secagg_masked_t mi;
    if (secagg_masked_decode(in, len, &mi) < 0) return -1;
    return secagg_server_add_masked_values(s, mi.round_id, mi.sender, mi.m, s_add_le,
                                           (void *)mi.values_le);
}

/* Holders of node u's shares that are in `phase`: u itself and its neighbours. */
static uint32_t s_holders_in(secagg_server_t *s, uint32_t u, int phase)
{
    uint32_t k = secagg_graph_neighbours(s->g, u, s->nbuf), c = s->has[phase][u];
    for (uint32_t i = 0; i < k; i++) c += s->has[phase][s->nbuf[i]];
    return c;
}

int secagg_server_close_masked(secagg_server_t *s)
{
    if (s_server_expect(s, SECAGG_S_MASKED, "closing MaskedInput") < 0) return -1;
    if (s_close_phase(s, 3, "sent masked inputs") < 0) return -1;
    for (uint32_t u = 0; u < s->p.n; u++) {
        s->is_surv[u] = s->has[3][u];
        s->is_drop[u] = s->has[2][u] && !s->has[3][u];
        if (!s->is_surv[u] && !s->is_drop[u]) continue;
        /* SecAgg+: every neighbourhood must still hold t shares, else unmasking cannot end */
        uint32_t h = s_holders_in(s, u, 3);
        if (h < s->p.t) {
            medfl_error_set(MEDFL_ESTATE, "secagg round %llu aborted: only %u holders of node "
                            "%u's shares sent masked inputs, threshold %u",
                            (unsigned long long)s->p.round_id, h, u, s->p.t);
            LOG_WARN(AGG, "%s", medfl_error_message());
            return s_server_abort(s);
        }
    }
    size_t cap = (size_t)s->p.n * (s->p.k + 1);
    s->rev_x = calloc(cap, sizeof *s->rev_x);
    s->rev = calloc(cap, sizeof *s->rev);
    if (!s->rev_x || !s->rev) {
        medfl_error_set(MEDFL_ENOMEM, "secagg server: %zu share slots", cap);
        return s_server_abort(s);
    }
    s->set_msg = s_set_msg(s->p.round_id, s->p.context, s->set[3], s->set_n[3], &s->set_msg_len);
    if (!s->set_msg) return s_server_abort(s);
    s->state = SECAGG_S_CONSISTENCY;
    return 0;
}

int secagg_server_survivors(secagg_server_t *s, uint8_t **out, size_t *out_len)
{
    if (s_server_expect(s, SECAGG_S_CONSISTENCY, "ConsistencyCheck") < 0) return -1;
    secagg_survivors_t sv = {.round_id = s->p.round_id, .count = s->set_n[3],
                             .nodes = s->set[3]};
    return secagg_survivors_encode(&sv, out, out_len);
}

int secagg_server_add_signature(secagg_server_t *s, const uint8_t *in, size_t len)
{
    if (s_server_expect(s, SECAGG_S_CONSISTENCY, "ConsistencySignature") < 0) return -1;
    secagg_survivor_sig_t sg;
    if (secagg_survivor_sig_decode(in, len, &sg) < 0) return -1;
    uint32_t u = sg.s.node;
    if (s_server_msg(s, sg.round_id, u, 4, "ConsistencySignature") < 0) return -1;
    if (crypto_sign_verify_detached(sg.s.sig, s->set_msg, s->set_msg_len,
                                    s->id_pks + 32 * (size_t)u) != 0)
        return medfl_error_set(MEDFL_ECRYPTO, "secagg round %llu: node %u's signature does not "
                               "verify over the survivor set this server sent (%u nodes)",
                               (unsigned long long)s->p.round_id, u, s->set_n[3]);
    memcpy(s->sigs[u], sg.s.sig, SECAGG_SIG_BYTES);
    s->has[4][u] = 1;
    return 0;
}

int secagg_server_close_signatures(secagg_server_t *s)
{
    if (s_server_expect(s, SECAGG_S_CONSISTENCY, "closing ConsistencySignature") < 0) return -1;
    if (s_close_phase(s, 4, "signed the survivor set") < 0) return -1;
    /* every holder that will be asked for shares checks t signatures of its neighbourhood,
     * and every node to unmask needs t answering holders: both need t signers per holder set */
    for (uint32_t u = 0; u < s->p.n; u++) {
        if (!s->is_surv[u] && !s->is_drop[u]) continue;
        uint32_t h = s_holders_in(s, u, 4);
        if (h < s->p.t) {
            medfl_error_set(MEDFL_ESTATE, "secagg round %llu aborted: only %u holders of node "
                            "%u's shares signed the survivor set, threshold %u",
                            (unsigned long long)s->p.round_id, h, u, s->p.t);
            LOG_WARN(AGG, "%s", medfl_error_message());
            return s_server_abort(s);
        }
    }
    s->state = SECAGG_S_UNMASK;
    return 0;
}

int secagg_server_unmask_request(secagg_server_t *s, uint32_t recipient, uint8_t **out,
                                 size_t *out_len)
{
    if (s_server_expect(s, SECAGG_S_UNMASK, "UnmaskRequest") < 0) return -1;
    if (recipient >= s->p.n || !s->has[4][recipient])
        return medfl_error_set(MEDFL_EINVAL, "secagg server: node %u did not sign the survivor "
                               "set", recipient);
    secagg_unmask_req_t rq = {.round_id = s->p.round_id};
    rq.survivors = malloc(s->p.n * sizeof *rq.survivors);
    rq.dropped = malloc(s->p.n * sizeof *rq.dropped);
    rq.sigs = malloc((s->p.k + 1) * sizeof *rq.sigs);
    int rc = -1;
    if (!rq.survivors || !rq.dropped || !rq.sigs) {
        medfl_error_set(MEDFL_ENOMEM, "secagg server: UnmaskRequest");
    } else {
        for (uint32_t u = 0; u < s->p.n; u++) {
            if (s->is_surv[u]) rq.survivors[rq.n_survivors++] = u;
            if (s->is_drop[u]) rq.dropped[rq.n_dropped++] = u;
            /* the recipient's neighbourhood's signatures (itself included), increasing */
            if (s->has[4][u] && (u == recipient || secagg_graph_adjacent(s->g, recipient, u))) {
                rq.sigs[rq.n_sigs].node = u;
                memcpy(rq.sigs[rq.n_sigs++].sig, s->sigs[u], SECAGG_SIG_BYTES);
            }
        }
        rc = secagg_unmask_req_encode(&rq, out, out_len);
    }
    secagg_unmask_req_clear(&rq);
    return rc;
}

int secagg_server_add_unmask(secagg_server_t *s, const uint8_t *in, size_t len)
{
    if (s_server_expect(s, SECAGG_S_UNMASK, "UnmaskResponse") < 0) return -1;
    secagg_unmask_resp_t rs;
    if (secagg_unmask_resp_decode(in, len, &rs) < 0) return -1;
    uint32_t u = rs.sender;
    int rc = -1;
    if (s_server_msg(s, rs.round_id, u, 5, "UnmaskResponse") < 0) goto done;
    /* validate everything before storing anything */
    for (uint32_t i = 0; i < rs.count; i++) {
        const secagg_reveal_t *e = &rs.entries[i];
        bool holder = e->node == u || secagg_graph_adjacent(s->g, u, e->node);
        bool ok = e->node < s->p.n && holder &&
                  (e->kind == SECAGG_REVEAL_B ? s->is_surv[e->node]
                                              : s->is_drop[e->node] && e->node != u);
        if (!ok) {
            medfl_error_set(MEDFL_EPROTO, "secagg server: UnmaskResponse of node %u: entry for "
                            "node %u kind %u was not requested from it", u, e->node, e->kind);
            goto done;
        }
    }
    for (uint32_t i = 0; i < rs.count; i++) {
        const secagg_reveal_t *e = &rs.entries[i];
        uint32_t *cnt = e->kind == SECAGG_REVEAL_B ? &s->n_rev_b[e->node] : &s->n_rev_sk[e->node];
        size_t slot = (size_t)e->node * (s->p.k + 1) + *cnt;
        s->rev_x[slot] = (uint64_t)u + 1;
        s->rev[slot] = e->share;
        (*cnt)++;
    }
    s->has[5][u] = 1;
    rc = 0;
done:
    secagg_unmask_resp_clear(&rs);
    return rc;
}

/* One (dropped node d, surviving neighbour v) pair whose mask seed the server re-derives. */
typedef struct {
    const uint8_t *sk; /* d's reconstructed mask key */
    const uint8_t *pk; /* v's advertised s_pk */
    uint32_t d, v;
    s_job_t *job;
} s_pair_t;

typedef struct {
    s_pair_t *pairs;
    size_t lo, hi;
    uint64_t round_id;
    int failed;
    uint32_t bad_d, bad_v;
} s_dpart_t;

static void *s_derive_run(void *arg)
{
    s_dpart_t *p = arg;
    for (size_t i = p->lo; i < p->hi; i++) {
        s_pair_t *q = &p->pairs[i];
        if (s_derive(q->job->seed, s_mask_label, p->round_id, q->d, q->v, q->sk, q->pk) < 0) {
            p->failed = 1, p->bad_d = q->d, p->bad_v = q->v;
            return NULL;
        }
        /* v added +PRG when v < d, -PRG when v > d: undo it */
        q->job->sign = q->v < q->d ? -1 : +1;
    }
    return NULL;
}

/* X25519 + hash per pair: ~|dropped| * k scalar multiplications, split over the threads
 * (with the complete graph and n = 500 this is ~22 000 of them). */
static int s_derive_pairs(s_pair_t *pairs, size_t np, uint64_t round_id, int threads)
{
    if (threads > 16) threads = 16;
    if ((size_t)threads > np) threads = np ? (int)np : 1;
    s_dpart_t parts[16];
    pthread_t tid[16];
    int started[16] = {0};
    for (int i = 0; i < threads; i++)
        parts[i] = (s_dpart_t){pairs, np * i / threads, np * (i + 1) / threads, round_id, 0, 0, 0};
    for (int i = 1; i < threads; i++)
        started[i] = pthread_create(&tid[i], NULL, s_derive_run, &parts[i]) == 0;
    s_derive_run(&parts[0]);
    for (int i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            s_derive_run(&parts[i]);
    }
    for (int i = 0; i < threads; i++)
        if (parts[i].failed)
            return medfl_error_set(MEDFL_ECRYPTO, "secagg: X25519 of dropped node %u's key with "
                                   "node %u's failed (low-order point)", parts[i].bad_d,
                                   parts[i].bad_v);
    return 0;
}

int secagg_server_finish(secagg_server_t *s, uint32_t *sum)
{
    if (s_server_expect(s, SECAGG_S_UNMASK, "finish") < 0) return -1;
    uint32_t c5 = 0, t = s->p.t, n = s->p.n, n_drop = 0;
    for (uint32_t u = 0; u < n; u++)
        if (s->has[5][u]) s->set[5][c5++] = u;
    s->set_n[5] = c5;
    for (uint32_t u = 0; u < n; u++) {
        uint32_t have = s->is_surv[u] ? s->n_rev_b[u] : s->is_drop[u] ? s->n_rev_sk[u] : t;
        if (have < t) {
            medfl_error_set(MEDFL_ESTATE, "secagg round %llu aborted: %u of %u shares of node "
                            "%u's %s arrived", (unsigned long long)s->p.round_id, have, t, u,
                            s->is_surv[u] ? "self-mask seed" : "mask key");
            LOG_WARN(AGG, "%s", medfl_error_message());
            return s_server_abort(s);
        }
        n_drop += s->is_drop[u];
    }
    /* one job per survivor self-mask, one per (dropped, surviving neighbour) pair */
    size_t cap = s->set_n[3] + (size_t)n_drop * s->p.k, nj = 0, np = 0;
    s_job_t *jobs = malloc((cap ? cap : 1) * sizeof *jobs);
    s_pair_t *pairs = malloc(((size_t)n_drop * s->p.k + 1) * sizeof *pairs);
    uint8_t *dsk = malloc(((size_t)n_drop + 1) * 32); /* reconstructed mask keys */
    uint64_t *lx = malloc(t * sizeof *lx), *lambda = malloc(t * sizeof *lambda);
    int rc = -1;
    uint8_t pk[32];
    uint32_t di = 0;
    if (!jobs || !pairs || !dsk || !lx || !lambda) {
        medfl_error_set(MEDFL_ENOMEM, "secagg server: %zu unmask jobs", cap);
        goto done;
    }
    /* Lagrange coefficients depend only on which holders answered: with the complete graph
     * every node has the same first t holders, so they are computed once and reused. */
    bool have_lambda = false;
    for (uint32_t u = 0; u < n; u++) {
        size_t base = (size_t)u * (s->p.k + 1);
        if (!s->is_surv[u] && !s->is_drop[u]) continue;
        if (!have_lambda || memcmp(lx, s->rev_x + base, t * sizeof *lx) != 0) {
            memcpy(lx, s->rev_x + base, t * sizeof *lx);
            if (shamir_lagrange(lx, t, lambda) < 0) goto done;
            have_lambda = true;
        }
        if (s->is_surv[u]) {
            if (shamir_combine_lagrange(lambda, s->rev + base, t, jobs[nj].seed) < 0) {
                medfl_error_prefix("secagg: self-mask seed of node %u: ", u);
                goto done;
            }
            jobs[nj++].sign = -1;
            continue;
        }
        uint8_t *sk = dsk + 32 * (size_t)di++;
        if (shamir_combine_lagrange(lambda, s->rev + base, t, sk) < 0) {
            medfl_error_prefix("secagg: mask key of node %u: ", u);
            goto done;
        }
        /* the advertised public key authenticates the reconstruction */
        crypto_scalarmult_base(pk, sk);
        if (sodium_memcmp(pk, s->keys[u].s_pk, 32) != 0) {
            medfl_error_set(MEDFL_ECRYPTO, "secagg: reconstructed mask key of node %u does not "
                            "match its advertised public key", u);
            goto done;
        }
        uint32_t k = secagg_graph_neighbours(s->g, u, s->nbuf);
        for (uint32_t i = 0; i < k; i++) {
            uint32_t v = s->nbuf[i];
            if (s->is_surv[v])
                pairs[np++] = (s_pair_t){sk, s->keys[v].s_pk, u, v, NULL};
        }
    }
    for (size_t i = 0; i < np; i++) pairs[i].job = &jobs[nj + i];
    if (s_derive_pairs(pairs, np, s->p.round_id, s->threads) < 0) goto done;
    nj += np;
    s_apply(s->sum, s->p.m, jobs, nj, s->threads);
    memcpy(sum, s->sum, s->p.m * sizeof *sum);
    s->state = SECAGG_S_DONE;
    s_server_wipe_reveals(s);
    rc = 0;
done:
    free(lx);
    free(lambda);
    free(pairs);
    if (dsk) sodium_memzero(dsk, ((size_t)n_drop + 1) * 32);
    free(dsk);
    if (jobs) sodium_memzero(jobs, (cap ? cap : 1) * sizeof *jobs);
    free(jobs);
    return rc < 0 ? s_server_abort(s) : 0;
}
