/* Shared round computations and the protobuf <-> secagg_msg translation (see fedround.h).
 * Every *_from_proto builds a secagg struct from already wire-validated fields, maps node
 * ids to roster indices (unknown id -> MEDFL_EPROTO), sorts entries (the secagg codecs
 * demand strictly increasing indices, which also rejects duplicates) and re-encodes. */
#include "common/fedround.h"
#include "common/dp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/error.h"

int fed_fixed_params(uint32_t n, double clip, secagg_fixed_t *fx)
{
    if (n == 0 || !(clip > 0) || !isfinite(clip))
        return medfl_error_set(MEDFL_EINVAL, "fixed point: n %u, clip %g", n, clip);
    fx->clip = clip;
    fx->max_weight = 1.0;
    double room = (2147483647.0 / n - 0.5) / clip;
    if (!(room >= 1.0))
        return medfl_error_set(MEDFL_EINVAL, "fixed point: clip %g too large for %u nodes", clip, n);
    fx->scale = exp2(floor(log2(room)));
    while (secagg_fixed_check(fx, n) != 0 && fx->scale > 1) fx->scale /= 2;
    return secagg_fixed_check(fx, n);
}

double fed_dp_headroom(const Medfl__DpParams *dp, double lr, bool secure)
{
    if (!dp || !dp->enabled || !dp->distributed || !secure) return 0;
    if (!(dp->sample_rate > 0) || !(lr > 0) || !(dp->record_weight_max > 0)) return 0;
    double h = 12.0 * dp->noise_multiplier * dp->clip_norm * (lr / dp->sample_rate) *
               dp->record_weight_max;
    return isfinite(h) && h > 0 ? h : 0;
}

int fed_dp_ring(double headroom, compress_config_t *cc)
{
    if (!(headroom > 0)) return 0;
    if (cc->scheme == COMPRESS_SECAGG) {
        double step = compress_config_step(cc);
        double lv = ceil(headroom / step);
        if (!(lv < 1e9))
            return medfl_error_set(MEDFL_ECONFIG, "distributed noise: headroom %g is %g levels of "
                                   "%g: raise compression.clip or lower compression.bits",
                                   headroom, lv, step);
        cc->noise_levels = (uint32_t)lv;
        cc->error_feedback = false;
        return compress_config_check(cc);
    }
    cc->error_feedback = false;
    return 0;
}

int fed_fixed_params_dp(uint32_t n, double clip, double headroom, secagg_fixed_t *fx)
{
    if (!(headroom > 0)) return fed_fixed_params(n, clip, fx);
    if (fed_fixed_params(n, clip + headroom, fx) != 0)
        return medfl_error_prefix("distributed noise (headroom %g): ", headroom);
    fx->clip = clip; /* the data keeps its range; only the scale leaves room */
    return 0;
}

int fed_fixed_add_noise(const secagg_fixed_t *fx, struct dp_rng_t *rng, double std,
                        double headroom, uint32_t *ring, size_t m)
{
    if (!fx || !rng || !ring || !(std >= 0) || !(headroom > 0))
        return medfl_error_set(MEDFL_EINVAL, "fixed-point noise: bad arguments");
    double s = std * fx->scale;
    int64_t H = (int64_t)floor(headroom * fx->scale);
    for (size_t i = 0; i < m; i++) {
        int64_t z = dp_rng_discrete_gaussian(rng, s);
        z = z > H ? H : z < -H ? -H : z;
        ring[i] = (uint32_t)((int64_t)(int32_t)ring[i] + z);
    }
    return 0;
}

void fed_compress_seed(uint64_t seed, uint8_t out[COMPRESS_SEED_BYTES])
{
    uint8_t in[8 + 20];
    for (int i = 0; i < 8; i++) in[i] = (uint8_t)(seed >> (8 * i));
    memcpy(in + 8, "medfl-compress-round", 20);
    crypto_generichash(out, COMPRESS_SEED_BYTES, in, sizeof in, NULL, 0);
}

int fed_compression(const Medfl__Compression *c, bool secure, uint32_t numel,
                    fed_encoding_t *enc, compress_config_t *cc)
{
    memset(cc, 0, sizeof *cc);
    Medfl__CompressionScheme s = c ? c->scheme : MEDFL__COMPRESSION_SCHEME__COMPRESSION_NONE;
    switch (s) {
    case MEDFL__COMPRESSION_SCHEME__COMPRESSION_NONE:
        *enc = FED_DENSE;
        return 0;
    case MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK:
        if (secure)
            return medfl_error_set(MEDFL_EPROTO, "compression: top-k cannot be used with secure "
                                   "aggregation (nodes would send different coordinates)");
        compress_config_default(cc, COMPRESS_PLAIN);
        cc->k = c->k ? (uint32_t)(c->k > numel ? numel : c->k) : 0;
        if (c->value_bits) cc->value_bits = c->value_bits; /* 0: the default; 2..8 checked below */
        *enc = FED_TOPK;
        break;
    case MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE:
    case MEDFL__COMPRESSION_SCHEME__COMPRESSION_RANDK:
        compress_config_default(cc, COMPRESS_SECAGG);
        cc->bits = c->bits;
        cc->max_nodes = c->max_nodes;
        cc->clip = c->clip;
        if (s == MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE) {
            cc->k = numel;
        } else {
            if (c->k == 0 || c->k > numel)
                return medfl_error_set(MEDFL_EPROTO, "compression: random-k with k = %llu of %u "
                                       "coordinates", (unsigned long long)c->k, numel);
            cc->k = (uint32_t)c->k;
        }
        *enc = FED_LEVELS;
        break;
    default:
        return medfl_error_set(MEDFL_EPROTO, "compression: unknown scheme %d", (int)s);
    }
    if (compress_config_check(cc) != 0) return medfl_error_prefix("compression of the round: ");
    return 0;
}

int fed_roster_index(char *const *roster, size_t n, const char *node_id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(roster[i], node_id) == 0) return (int)i;
    return -1;
}

static int s_index(char *const *roster, size_t n, const char *id, const char *what, uint32_t *out)
{
    int i = id ? fed_roster_index(roster, n, id) : -1;
    if (i < 0)
        return medfl_error_set(MEDFL_EPROTO, "%s: node '%s' is not in the round's roster", what,
                               id ? id : "");
    *out = (uint32_t)i;
    return 0;
}

static int s_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- AdvertiseKeys ---- */

int fed_advertise_to_proto(const uint8_t *buf, size_t len, Medfl__AdvertiseKeys *out)
{
    secagg_advertise_t a;
    if (secagg_advertise_decode(buf, len, &a) != 0) return -1;
    /* The fields point into static copies held by the caller's message: copy into buf-owned
     * storage is not possible, so the three arrays are malloc'ed together. */
    uint8_t *mem = malloc(2 * SECAGG_PK_BYTES + SECAGG_SIG_BYTES);
    if (!mem) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    memcpy(mem, a.keys.c_pk, SECAGG_PK_BYTES);
    memcpy(mem + SECAGG_PK_BYTES, a.keys.s_pk, SECAGG_PK_BYTES);
    memcpy(mem + 2 * SECAGG_PK_BYTES, a.keys.sig, SECAGG_SIG_BYTES);
    medfl__advertise_keys__init(out);
    out->c_pk.data = mem;
    out->c_pk.len = SECAGG_PK_BYTES;
    out->s_pk.data = mem + SECAGG_PK_BYTES;
    out->s_pk.len = SECAGG_PK_BYTES;
    out->signature.data = mem + 2 * SECAGG_PK_BYTES;
    out->signature.len = SECAGG_SIG_BYTES;
    return 0;
}

int fed_advertise_from_proto(const Medfl__AdvertiseKeys *in, uint64_t round_id, uint32_t sender,
                             uint8_t **out, size_t *out_len)
{
    if (in->c_pk.len != SECAGG_PK_BYTES || in->s_pk.len != SECAGG_PK_BYTES ||
        in->signature.len != SECAGG_SIG_BYTES)
        return medfl_error_set(MEDFL_EPROTO, "AdvertiseKeys: key or signature of wrong size");
    secagg_advertise_t a;
    memset(&a, 0, sizeof a);
    a.round_id = round_id;
    a.keys.node = sender;
    memcpy(a.keys.c_pk, in->c_pk.data, SECAGG_PK_BYTES);
    memcpy(a.keys.s_pk, in->s_pk.data, SECAGG_PK_BYTES);
    memcpy(a.keys.sig, in->signature.data, SECAGG_SIG_BYTES);
    return secagg_advertise_encode(&a, out, out_len);
}

/* ---- KeysBroadcast ---- */

int fed_broadcast_to_proto(const uint8_t *buf, size_t len, char *const *roster, size_t n,
                           Medfl__KeysBroadcast *out)
{
    medfl__keys_broadcast__init(out);
    secagg_broadcast_t b;
    memset(&b, 0, sizeof b);
    if (secagg_broadcast_decode(buf, len, &b) != 0) return -1;
    int rc = -1;
    out->keys = calloc(b.count ? b.count : 1, sizeof *out->keys);
    if (!out->keys) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < b.count; i++) {
        const secagg_keys_t *k = &b.entries[i];
        if (k->node >= n) {
            medfl_error_set(MEDFL_EPROTO, "KeysBroadcast: node %u outside the roster", k->node);
            goto done;
        }
        Medfl__NodeKeys *nk = calloc(1, sizeof *nk + 2 * SECAGG_PK_BYTES + SECAGG_SIG_BYTES);
        if (!nk) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory");
            goto done;
        }
        medfl__node_keys__init(nk);
        uint8_t *mem = (uint8_t *)(nk + 1);
        memcpy(mem, k->c_pk, SECAGG_PK_BYTES);
        memcpy(mem + SECAGG_PK_BYTES, k->s_pk, SECAGG_PK_BYTES);
        memcpy(mem + 2 * SECAGG_PK_BYTES, k->sig, SECAGG_SIG_BYTES);
        nk->node_id = roster[k->node];
        nk->c_pk.data = mem;
        nk->c_pk.len = SECAGG_PK_BYTES;
        nk->s_pk.data = mem + SECAGG_PK_BYTES;
        nk->s_pk.len = SECAGG_PK_BYTES;
        nk->signature.data = mem + 2 * SECAGG_PK_BYTES;
        nk->signature.len = SECAGG_SIG_BYTES;
        out->keys[out->n_keys++] = nk;
    }
    rc = 0;
done:
    secagg_broadcast_clear(&b);
    if (rc != 0) fed_proto_free_broadcast(out);
    return rc;
}

void fed_proto_free_broadcast(Medfl__KeysBroadcast *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n_keys; i++) free(m->keys[i]);
    free(m->keys);
    m->keys = NULL;
    m->n_keys = 0;
}

static int s_cmp_keys(const void *a, const void *b)
{
    return s_cmp_u32(&((const secagg_keys_t *)a)->node, &((const secagg_keys_t *)b)->node);
}

int fed_broadcast_from_proto(const Medfl__KeysBroadcast *in, uint64_t round_id,
                             char *const *roster, size_t n, uint8_t **out, size_t *out_len)
{
    secagg_broadcast_t b;
    memset(&b, 0, sizeof b);
    b.round_id = round_id;
    b.entries = calloc(in->n_keys ? in->n_keys : 1, sizeof *b.entries);
    if (!b.entries) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    int rc = -1;
    for (size_t i = 0; i < in->n_keys; i++) {
        const Medfl__NodeKeys *k = in->keys[i];
        secagg_keys_t *e = &b.entries[i];
        if (s_index(roster, n, k->node_id, "KeysBroadcast", &e->node) != 0) goto done;
        if (k->c_pk.len != SECAGG_PK_BYTES || k->s_pk.len != SECAGG_PK_BYTES ||
            k->signature.len != SECAGG_SIG_BYTES) {
            medfl_error_set(MEDFL_EPROTO, "KeysBroadcast: key or signature of wrong size");
            goto done;
        }
        memcpy(e->c_pk, k->c_pk.data, SECAGG_PK_BYTES);
        memcpy(e->s_pk, k->s_pk.data, SECAGG_PK_BYTES);
        memcpy(e->sig, k->signature.data, SECAGG_SIG_BYTES);
    }
    b.count = (uint32_t)in->n_keys;
    qsort(b.entries, b.count, sizeof *b.entries, s_cmp_keys);
    rc = secagg_broadcast_encode(&b, out, out_len);
done:
    free(b.entries);
    return rc;
}

/* ---- ShareKeys / SharesDelivery ---- */

int fed_shares_to_proto(secagg_msg_type_t type, const uint8_t *buf, size_t len,
                        char *const *roster, size_t n, Medfl__EncryptedShare ***shares,
                        size_t *n_shares)
{
    *shares = NULL;
    *n_shares = 0;
    secagg_shares_t s;
    memset(&s, 0, sizeof s);
    if (secagg_shares_decode(type, buf, len, &s) != 0) return -1;
    int rc = -1;
    Medfl__EncryptedShare **arr = calloc(s.count ? s.count : 1, sizeof *arr);
    if (!arr) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < s.count; i++) {
        if (s.entries[i].peer >= n) {
            medfl_error_set(MEDFL_EPROTO, "shares: peer %u outside the roster", s.entries[i].peer);
            goto done;
        }
        Medfl__EncryptedShare *e = calloc(1, sizeof *e + SECAGG_CT_BYTES);
        if (!e) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory");
            goto done;
        }
        medfl__encrypted_share__init(e);
        memcpy(e + 1, s.entries[i].ct, SECAGG_CT_BYTES);
        e->ciphertext.data = (uint8_t *)(e + 1);
        e->ciphertext.len = SECAGG_CT_BYTES;
        if (type == SECAGG_MSG_SHARE_KEYS) {
            e->to_node = roster[s.entries[i].peer];
            e->from_node = (char *)"";
        } else {
            e->from_node = roster[s.entries[i].peer];
            e->to_node = (char *)"";
        }
        arr[(*n_shares)++] = e;
    }
    *shares = arr;
    arr = NULL;
    rc = 0;
done:
    if (arr) fed_proto_free_shares(arr, *n_shares), *n_shares = 0;
    secagg_shares_clear(&s);
    return rc;
}

void fed_proto_free_shares(Medfl__EncryptedShare **shares, size_t n)
{
    if (!shares) return;
    for (size_t i = 0; i < n; i++) free(shares[i]);
    free(shares);
}

static int s_cmp_cipher(const void *a, const void *b)
{
    return s_cmp_u32(&((const secagg_cipher_t *)a)->peer, &((const secagg_cipher_t *)b)->peer);
}

int fed_shares_from_proto(secagg_msg_type_t type, Medfl__EncryptedShare *const *shares,
                          size_t n_shares, uint64_t round_id, uint32_t owner,
                          char *const *roster, size_t n, uint8_t **out, size_t *out_len)
{
    secagg_shares_t s;
    memset(&s, 0, sizeof s);
    s.round_id = round_id;
    s.owner = owner;
    s.entries = calloc(n_shares ? n_shares : 1, sizeof *s.entries);
    if (!s.entries) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    int rc = -1;
    for (size_t i = 0; i < n_shares; i++) {
        const char *peer = type == SECAGG_MSG_SHARE_KEYS ? shares[i]->to_node : shares[i]->from_node;
        if (s_index(roster, n, peer, "shares", &s.entries[i].peer) != 0) goto done;
        if (shares[i]->ciphertext.len != SECAGG_CT_BYTES) {
            medfl_error_set(MEDFL_EPROTO, "shares: ciphertext of %zu bytes, expected %d",
                            shares[i]->ciphertext.len, SECAGG_CT_BYTES);
            goto done;
        }
        memcpy(s.entries[i].ct, shares[i]->ciphertext.data, SECAGG_CT_BYTES);
    }
    s.count = (uint32_t)n_shares;
    qsort(s.entries, s.count, sizeof *s.entries, s_cmp_cipher);
    rc = secagg_shares_encode(type, &s, out, out_len);
done:
    free(s.entries);
    return rc;
}

/* ---- ConsistencyCheck, ConsistencySignature, UnmaskRequest ---- */

static int s_names(const uint32_t *idx, uint32_t count, char *const *roster, size_t n,
                   const char *what, char ***names)
{
    *names = calloc(count ? count : 1, sizeof **names);
    if (!*names) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < count; i++) {
        if (idx[i] >= n)
            return medfl_error_set(MEDFL_EPROTO, "%s: node %u outside the roster", what, idx[i]);
        (*names)[i] = roster[idx[i]];
    }
    return 0;
}

static int s_indices(char *const *names, size_t count, char *const *roster, size_t n,
                     const char *what, uint32_t **out)
{
    *out = calloc(count ? count : 1, sizeof **out);
    if (!*out) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (size_t i = 0; i < count; i++)
        if (s_index(roster, n, names[i], what, &(*out)[i]) != 0) return -1;
    qsort(*out, count, sizeof **out, s_cmp_u32);
    return 0;
}

int fed_survivors_to_proto(const uint8_t *buf, size_t len, char *const *roster, size_t n,
                           Medfl__ConsistencyCheck *out)
{
    medfl__consistency_check__init(out);
    secagg_survivors_t sv;
    if (secagg_survivors_decode(buf, len, &sv) != 0) return -1;
    int rc = s_names(sv.nodes, sv.count, roster, n, "consistency check", &out->survivors);
    out->n_survivors = sv.count;
    secagg_survivors_clear(&sv);
    if (rc != 0) fed_proto_free_survivors(out);
    return rc;
}

void fed_proto_free_survivors(Medfl__ConsistencyCheck *m)
{
    if (!m) return;
    free(m->survivors);
    m->survivors = NULL;
    m->n_survivors = 0;
}

int fed_survivors_from_proto(const Medfl__ConsistencyCheck *in, uint64_t round_id,
                             char *const *roster, size_t n, uint8_t **out, size_t *out_len)
{
    secagg_survivors_t sv = {.round_id = round_id};
    int rc = -1;
    if (s_indices(in->survivors, in->n_survivors, roster, n, "consistency check", &sv.nodes) ==
        0) {
        sv.count = (uint32_t)in->n_survivors;
        rc = secagg_survivors_encode(&sv, out, out_len);
    }
    free(sv.nodes);
    return rc;
}

int fed_survivor_sig_to_proto(const uint8_t *buf, size_t len, Medfl__ConsistencySignature *out)
{
    medfl__consistency_signature__init(out);
    secagg_survivor_sig_t sg;
    if (secagg_survivor_sig_decode(buf, len, &sg) != 0) return -1;
    out->signature.data = malloc(SECAGG_SIG_BYTES);
    if (!out->signature.data) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    memcpy(out->signature.data, sg.s.sig, SECAGG_SIG_BYTES);
    out->signature.len = SECAGG_SIG_BYTES;
    return 0;
}

void fed_proto_free_survivor_sig(Medfl__ConsistencySignature *m)
{
    if (!m) return;
    free(m->signature.data);
    m->signature.data = NULL;
    m->signature.len = 0;
}

int fed_survivor_sig_from_proto(const Medfl__ConsistencySignature *in, uint64_t round_id,
                                uint32_t sender, uint8_t **out, size_t *out_len)
{
    if (in->signature.len != SECAGG_SIG_BYTES)
        return medfl_error_set(MEDFL_EPROTO, "consistency signature: %zu bytes, expected %d",
                               in->signature.len, SECAGG_SIG_BYTES);
    secagg_survivor_sig_t sg = {.round_id = round_id, .s.node = sender};
    memcpy(sg.s.sig, in->signature.data, SECAGG_SIG_BYTES);
    return secagg_survivor_sig_encode(&sg, out, out_len);
}

int fed_unmask_req_to_proto(const uint8_t *buf, size_t len, char *const *roster, size_t n,
                            Medfl__UnmaskRequest *out)
{
    medfl__unmask_request__init(out);
    secagg_unmask_req_t r;
    memset(&r, 0, sizeof r);
    if (secagg_unmask_req_decode(buf, len, &r) != 0) return -1;
    int rc = s_names(r.survivors, r.n_survivors, roster, n, "unmask request", &out->survivors);
    out->n_survivors = r.n_survivors;
    if (rc == 0) {
        rc = s_names(r.dropped, r.n_dropped, roster, n, "unmask request", &out->dropped);
        out->n_dropped = r.n_dropped;
    }
    if (rc == 0 && !(out->signatures = calloc(r.n_sigs ? r.n_sigs : 1, sizeof *out->signatures)))
        rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (uint32_t i = 0; rc == 0 && i < r.n_sigs; i++) {
        if (r.sigs[i].node >= n) {
            rc = medfl_error_set(MEDFL_EPROTO, "unmask request: signature of node %u outside "
                                 "the roster", r.sigs[i].node);
            break;
        }
        Medfl__SurvivorSignature *e = calloc(1, sizeof *e + SECAGG_SIG_BYTES);
        if (!e) {
            rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
            break;
        }
        medfl__survivor_signature__init(e);
        memcpy(e + 1, r.sigs[i].sig, SECAGG_SIG_BYTES);
        e->node_id = roster[r.sigs[i].node];
        e->signature.data = (uint8_t *)(e + 1);
        e->signature.len = SECAGG_SIG_BYTES;
        out->signatures[out->n_signatures++] = e;
    }
    secagg_unmask_req_clear(&r);
    if (rc != 0) fed_proto_free_unmask_req(out);
    return rc;
}

void fed_proto_free_unmask_req(Medfl__UnmaskRequest *m)
{
    if (!m) return;
    free(m->survivors);
    free(m->dropped);
    for (size_t i = 0; m->signatures && i < m->n_signatures; i++) free(m->signatures[i]);
    free(m->signatures);
    m->survivors = m->dropped = NULL;
    m->signatures = NULL;
    m->n_survivors = m->n_dropped = m->n_signatures = 0;
}

static int s_cmp_set_sig(const void *a, const void *b)
{
    return s_cmp_u32(&((const secagg_set_sig_t *)a)->node, &((const secagg_set_sig_t *)b)->node);
}

int fed_unmask_req_from_proto(const Medfl__UnmaskRequest *in, uint64_t round_id,
                              char *const *roster, size_t n, uint8_t **out, size_t *out_len)
{
    secagg_unmask_req_t r;
    memset(&r, 0, sizeof r);
    r.round_id = round_id;
    int rc = -1;
    if (s_indices(in->survivors, in->n_survivors, roster, n, "unmask request", &r.survivors) != 0 ||
        s_indices(in->dropped, in->n_dropped, roster, n, "unmask request", &r.dropped) != 0)
        goto done;
    r.n_survivors = (uint32_t)in->n_survivors;
    r.n_dropped = (uint32_t)in->n_dropped;
    r.sigs = calloc(in->n_signatures ? in->n_signatures : 1, sizeof *r.sigs);
    if (!r.sigs) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < in->n_signatures; i++) {
        const Medfl__SurvivorSignature *e = in->signatures[i];
        if (s_index(roster, n, e->node_id, "unmask request signature", &r.sigs[i].node) != 0)
            goto done;
        if (e->signature.len != SECAGG_SIG_BYTES) {
            medfl_error_set(MEDFL_EPROTO, "unmask request: signature of %zu bytes, expected %d",
                            e->signature.len, SECAGG_SIG_BYTES);
            goto done;
        }
        memcpy(r.sigs[i].sig, e->signature.data, SECAGG_SIG_BYTES);
    }
    r.n_sigs = (uint32_t)in->n_signatures;
    qsort(r.sigs, r.n_sigs, sizeof *r.sigs, s_cmp_set_sig);
    rc = secagg_unmask_req_encode(&r, out, out_len);
done:
    free(r.survivors);
    free(r.dropped);
    free(r.sigs);
    return rc;
}

/* ---- UnmaskResponse ---- */

int fed_unmask_resp_to_proto(const uint8_t *buf, size_t len, char *const *roster, size_t n,
                             Medfl__UnmaskResponse *out)
{
    medfl__unmask_response__init(out);
    secagg_unmask_resp_t r;
    memset(&r, 0, sizeof r);
    if (secagg_unmask_resp_decode(buf, len, &r) != 0) return -1;
    int rc = -1;
    out->shares = calloc(r.count ? r.count : 1, sizeof *out->shares);
    if (!out->shares) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < r.count; i++) {
        const secagg_reveal_t *e = &r.entries[i];
        if (e->node >= n) {
            medfl_error_set(MEDFL_EPROTO, "unmask response: node %u outside the roster", e->node);
            goto done;
        }
        Medfl__UnmaskShare *s = calloc(1, sizeof *s + SHAMIR_SHARE_BYTES);
        if (!s) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory");
            goto done;
        }
        medfl__unmask_share__init(s);
        uint8_t *p = (uint8_t *)(s + 1);
        for (int l = 0; l < SHAMIR_LIMBS; l++)
            for (int b = 0; b < 8; b++) p[8 * l + b] = (uint8_t)(e->share.y[l] >> (8 * b));
        s->node_id = roster[e->node];
        s->kind = e->kind == SECAGG_REVEAL_B ? MEDFL__SHARE_KIND__SHARE_SELF_MASK_SEED
                                             : MEDFL__SHARE_KIND__SHARE_MASK_KEY;
        s->share.data = p;
        s->share.len = SHAMIR_SHARE_BYTES;
        out->shares[out->n_shares++] = s;
    }
    rc = 0;
done:
    secagg_unmask_resp_clear(&r);
    if (rc != 0) fed_proto_free_unmask_resp(out);
    return rc;
}

void fed_proto_free_unmask_resp(Medfl__UnmaskResponse *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n_shares; i++) {
        sodium_memzero(m->shares[i] + 1, SHAMIR_SHARE_BYTES);
        free(m->shares[i]);
    }
    free(m->shares);
    m->shares = NULL;
    m->n_shares = 0;
}

static int s_cmp_reveal(const void *a, const void *b)
{
    return s_cmp_u32(&((const secagg_reveal_t *)a)->node, &((const secagg_reveal_t *)b)->node);
}

int fed_unmask_resp_from_proto(const Medfl__UnmaskResponse *in, uint64_t round_id,
                               uint32_t sender, char *const *roster, size_t n, uint8_t **out,
                               size_t *out_len)
{
    secagg_unmask_resp_t r;
    memset(&r, 0, sizeof r);
    r.round_id = round_id;
    r.sender = sender;
    r.entries = calloc(in->n_shares ? in->n_shares : 1, sizeof *r.entries);
    if (!r.entries) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    int rc = -1;
    for (size_t i = 0; i < in->n_shares; i++) {
        const Medfl__UnmaskShare *s = in->shares[i];
        secagg_reveal_t *e = &r.entries[i];
        if (s_index(roster, n, s->node_id, "unmask response", &e->node) != 0) goto done;
        if (s->share.len != SHAMIR_SHARE_BYTES) {
            medfl_error_set(MEDFL_EPROTO, "unmask response: share of %zu bytes, expected %d",
                            s->share.len, SHAMIR_SHARE_BYTES);
            goto done;
        }
        e->kind = s->kind == MEDFL__SHARE_KIND__SHARE_SELF_MASK_SEED ? SECAGG_REVEAL_B
                                                                      : SECAGG_REVEAL_SK;
        for (int l = 0; l < SHAMIR_LIMBS; l++) {
            uint64_t v = 0;
            for (int b = 0; b < 8; b++) v |= (uint64_t)s->share.data[8 * l + b] << (8 * b);
            e->share.y[l] = v;
        }
    }
    r.count = (uint32_t)in->n_shares;
    qsort(r.entries, r.count, sizeof *r.entries, s_cmp_reveal);
    rc = secagg_unmask_resp_encode(&r, out, out_len);
done:
    sodium_memzero(r.entries, (in->n_shares ? in->n_shares : 1) * sizeof *r.entries);
    free(r.entries);
    return rc;
}

/* ---- MaskedInput ---- */

int fed_masked_values(const uint8_t *buf, size_t len, uint64_t m, uint32_t *ring)
{
    secagg_masked_t mi;
    if (secagg_masked_decode(buf, len, &mi) != 0) return -1;
    if (mi.m != m)
        return medfl_error_set(MEDFL_EPROTO, "masked input of %llu values, round has %llu",
                               (unsigned long long)mi.m, (unsigned long long)m);
    const uint8_t *p = mi.values_le;
    for (uint64_t i = 0; i < m; i++)
        ring[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                  (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
    return 0;
}

uint32_t fed_checksum(const uint32_t *v, size_t m)
{
    uint32_t s = 0;
    for (size_t i = 0; i < m; i++) s += v[i];
    return s;
}
