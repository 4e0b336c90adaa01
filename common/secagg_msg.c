/* Encoding and strict parsing of the secure-aggregation messages (layout in secagg_msg.h).
 * Every decoder is fed untrusted network bytes: lengths are computed from bounded counts
 * before any allocation, and the total must match exactly. */
#include "common/secagg_msg.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

static const char *const s_names[] = {
    "?", "AdvertiseKeys", "KeysBroadcast", "ShareKeys", "SharesDelivery",
    "MaskedInput", "UnmaskRequest", "UnmaskResponse", "SecAggParams",
    "ConsistencyCheck", "ConsistencySignature",
};

/* ---- little-endian cursor ------------------------------------------------------------ */

typedef struct {
    uint8_t *p;
} s_w_t;

static void s_put8(s_w_t *w, uint8_t v) { *w->p++ = v; }
static void s_put32(s_w_t *w, uint32_t v)
{
    for (int i = 0; i < 4; i++) *w->p++ = (uint8_t)(v >> (8 * i));
}
static void s_put64(s_w_t *w, uint64_t v)
{
    for (int i = 0; i < 8; i++) *w->p++ = (uint8_t)(v >> (8 * i));
}
static void s_putb(s_w_t *w, const uint8_t *b, size_t n)
{
    memcpy(w->p, b, n);
    w->p += n;
}

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} s_r_t;

static uint8_t s_get8(s_r_t *r) { return *r->p++; }
static uint32_t s_get32(s_r_t *r)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)r->p[i] << (8 * i);
    r->p += 4;
    return v;
}
static uint64_t s_get64(s_r_t *r)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)r->p[i] << (8 * i);
    r->p += 8;
    return v;
}
static void s_getb(s_r_t *r, uint8_t *b, size_t n)
{
    memcpy(b, r->p, n);
    r->p += n;
}
static size_t s_left(const s_r_t *r) { return (size_t)(r->end - r->p); }

static uint8_t *s_alloc(size_t len, secagg_msg_type_t type, uint64_t round_id, s_w_t *w)
{
    uint8_t *buf = malloc(len);
    if (!buf) {
        medfl_error_set(MEDFL_ENOMEM, "secagg: %zu bytes for %s", len, s_names[type]);
        return NULL;
    }
    w->p = buf;
    s_put8(w, 'S');
    s_put8(w, 'A');
    s_put8(w, SECAGG_WIRE_VERSION);
    s_put8(w, (uint8_t)type);
    s_put64(w, round_id);
    return buf;
}

int secagg_msg_peek(const uint8_t *buf, size_t len, secagg_msg_type_t *type, uint64_t *round_id)
{
    if (!buf || len < SECAGG_HDR_BYTES)
        return medfl_error_set(MEDFL_EPROTO, "secagg message: %zu bytes, shorter than header", len);
    if (buf[0] != 'S' || buf[1] != 'A')
        return medfl_error_set(MEDFL_EPROTO, "secagg message: bad magic");
    if (buf[2] != SECAGG_WIRE_VERSION)
        return medfl_error_set(MEDFL_EPROTO, "secagg message: version %u, expected %u", buf[2],
                               SECAGG_WIRE_VERSION);
    if (buf[3] < SECAGG_MSG_ADVERTISE_KEYS || buf[3] > SECAGG_MSG_SURVIVORS_SIG)
        return medfl_error_set(MEDFL_EPROTO, "secagg message: unknown type %u", buf[3]);
    s_r_t r = {buf + 4, buf + len};
    if (type) *type = (secagg_msg_type_t)buf[3];
    uint64_t rid = s_get64(&r);
    if (round_id) *round_id = rid;
    return 0;
}

/* Checks header and type; leaves r after round_id and requires `fixed` more bytes. */
static int s_open(const uint8_t *buf, size_t len, secagg_msg_type_t want, size_t fixed, s_r_t *r,
                  uint64_t *round_id)
{
    secagg_msg_type_t type;
    if (secagg_msg_peek(buf, len, &type, round_id) < 0) return -1;
    if (type != want)
        return medfl_error_set(MEDFL_EPROTO, "secagg message: got %s, expected %s",
                               s_names[type], s_names[want]);
    r->p = buf + SECAGG_HDR_BYTES;
    r->end = buf + len;
    if (s_left(r) < fixed)
        return medfl_error_set(MEDFL_EPROTO, "%s: %zu bytes, need at least %zu", s_names[want],
                               len, SECAGG_HDR_BYTES + fixed);
    return 0;
}

static int s_exact(const s_r_t *r, secagg_msg_type_t t, size_t need, const char *what)
{
    if (s_left(r) != need)
        return medfl_error_set(MEDFL_EPROTO, "%s: %zu bytes after %s, expected %zu", s_names[t],
                               s_left(r), what, need);
    return 0;
}

static int s_count(secagg_msg_type_t t, uint32_t count, const char *field)
{
    if (count > SECAGG_MAX_NODES)
        return medfl_error_set(MEDFL_EPROTO, "%s: field '%s' = %u exceeds %u", s_names[t], field,
                               count, SECAGG_MAX_NODES);
    return 0;
}

static int s_node(secagg_msg_type_t t, uint32_t node, const char *field)
{
    if (node >= SECAGG_MAX_NODES)
        return medfl_error_set(MEDFL_EPROTO, "%s: field '%s' = %u is not a node id", s_names[t],
                               field, node);
    return 0;
}

void secagg_buf_free(uint8_t *buf, size_t len)
{
    if (!buf) return;
    sodium_memzero(buf, len);
    free(buf);
}

/* ---- params ------------------------------------------------------------------------- */

#define S_PARAMS_BODY (4 + 4 + 4 + 8 + 32)

int secagg_params_encode(const secagg_params_t *p, uint8_t **out, size_t *len)
{
    s_w_t w;
    *len = SECAGG_HDR_BYTES + S_PARAMS_BODY;
    if (!(*out = s_alloc(*len, SECAGG_MSG_PARAMS, p->round_id, &w))) return -1;
    s_put32(&w, p->n);
    s_put32(&w, p->k);
    s_put32(&w, p->t);
    s_put64(&w, p->m);
    s_putb(&w, p->graph_seed, 32);
    return 0;
}

int secagg_params_decode(const uint8_t *buf, size_t len, secagg_params_t *p)
{
    s_r_t r;
    memset(p, 0, sizeof *p);
    if (s_open(buf, len, SECAGG_MSG_PARAMS, S_PARAMS_BODY, &r, &p->round_id) < 0) return -1;
    if (s_exact(&r, SECAGG_MSG_PARAMS, S_PARAMS_BODY, "header") < 0) return -1;
    p->n = s_get32(&r);
    p->k = s_get32(&r);
    p->t = s_get32(&r);
    p->m = s_get64(&r);
    s_getb(&r, p->graph_seed, 32);
    return 0;
}

/* ---- keys --------------------------------------------------------------------------- */

#define S_KEYS_BYTES (4 + 2 * SECAGG_PK_BYTES + SECAGG_SIG_BYTES)

static void s_put_keys(s_w_t *w, const secagg_keys_t *k)
{
    s_put32(w, k->node);
    s_putb(w, k->c_pk, SECAGG_PK_BYTES);
    s_putb(w, k->s_pk, SECAGG_PK_BYTES);
    s_putb(w, k->sig, SECAGG_SIG_BYTES);
}

static void s_get_keys(s_r_t *r, secagg_keys_t *k)
{
    k->node = s_get32(r);
    s_getb(r, k->c_pk, SECAGG_PK_BYTES);
    s_getb(r, k->s_pk, SECAGG_PK_BYTES);
    s_getb(r, k->sig, SECAGG_SIG_BYTES);
}

int secagg_advertise_encode(const secagg_advertise_t *m, uint8_t **out, size_t *len)
{
    s_w_t w;
    *len = SECAGG_HDR_BYTES + S_KEYS_BYTES;
    if (!(*out = s_alloc(*len, SECAGG_MSG_ADVERTISE_KEYS, m->round_id, &w))) return -1;
    s_put_keys(&w, &m->keys);
    return 0;
}

int secagg_advertise_decode(const uint8_t *buf, size_t len, secagg_advertise_t *m)
{
    s_r_t r;
    memset(m, 0, sizeof *m);
    if (s_open(buf, len, SECAGG_MSG_ADVERTISE_KEYS, S_KEYS_BYTES, &r, &m->round_id) < 0)
        return -1;
    if (s_exact(&r, SECAGG_MSG_ADVERTISE_KEYS, S_KEYS_BYTES, "header") < 0) return -1;
    s_get_keys(&r, &m->keys);
    return s_node(SECAGG_MSG_ADVERTISE_KEYS, m->keys.node, "node");
}

int secagg_broadcast_encode(const secagg_broadcast_t *m, uint8_t **out, size_t *len)
{
    s_w_t w;
    *len = SECAGG_HDR_BYTES + 4 + (size_t)m->count * S_KEYS_BYTES;
    if (!(*out = s_alloc(*len, SECAGG_MSG_KEYS_BROADCAST, m->round_id, &w))) return -1;
    s_put32(&w, m->count);
    for (uint32_t i = 0; i < m->count; i++) s_put_keys(&w, &m->entries[i]);
    return 0;
}

int secagg_broadcast_decode(const uint8_t *buf, size_t len, secagg_broadcast_t *m)
{
    const secagg_msg_type_t T = SECAGG_MSG_KEYS_BROADCAST;
    s_r_t r;
    memset(m, 0, sizeof *m);
    if (s_open(buf, len, T, 4, &r, &m->round_id) < 0) return -1;
    uint32_t count = s_get32(&r);
    if (s_count(T, count, "count") < 0) return -1;
    if (s_exact(&r, T, (size_t)count * S_KEYS_BYTES, "count") < 0) return -1;
    m->entries = calloc(count ? count : 1, sizeof *m->entries);
    if (!m->entries) return medfl_error_set(MEDFL_ENOMEM, "%s: %u entries", s_names[T], count);
    m->count = count;
    for (uint32_t i = 0; i < count; i++) {
        s_get_keys(&r, &m->entries[i]);
        uint32_t node = m->entries[i].node;
        if (node >= SECAGG_MAX_NODES || (i > 0 && node <= m->entries[i - 1].node)) {
            medfl_error_set(MEDFL_EPROTO, "%s: entry %u: node %u invalid or not increasing",
                            s_names[T], i, node);
            secagg_broadcast_clear(m);
            return -1;
        }
    }
    return 0;
}

void secagg_broadcast_clear(secagg_broadcast_t *m)
{
    if (!m) return;
    free(m->entries);
    m->entries = NULL;
    m->count = 0;
}

/* ---- encrypted shares ---------------------------------------------------------------- */

#define S_CIPHER_BYTES (4 + SECAGG_CT_BYTES)

int secagg_shares_encode(secagg_msg_type_t type, const secagg_shares_t *m, uint8_t **out,
                         size_t *len)
{
    if (type != SECAGG_MSG_SHARE_KEYS && type != SECAGG_MSG_SHARES_DELIVERY)
        return medfl_error_set(MEDFL_EINVAL, "secagg_shares_encode: type %d", (int)type);
    s_w_t w;
    *len = SECAGG_HDR_BYTES + 8 + (size_t)m->count * S_CIPHER_BYTES;
    if (!(*out = s_alloc(*len, type, m->round_id, &w))) return -1;
    s_put32(&w, m->owner);
    s_put32(&w, m->count);
    for (uint32_t i = 0; i < m->count; i++) {
        s_put32(&w, m->entries[i].peer);
        s_putb(&w, m->entries[i].ct, SECAGG_CT_BYTES);
    }
    return 0;
}

int secagg_shares_decode(secagg_msg_type_t type, const uint8_t *buf, size_t len,
                         secagg_shares_t *m)
{
    s_r_t r;
    memset(m, 0, sizeof *m);
    if (type != SECAGG_MSG_SHARE_KEYS && type != SECAGG_MSG_SHARES_DELIVERY)
        return medfl_error_set(MEDFL_EINVAL, "secagg_shares_decode: type %d", (int)type);
    if (s_open(buf, len, type, 8, &r, &m->round_id) < 0) return -1;
    uint32_t owner = s_get32(&r);
    uint32_t count = s_get32(&r);
    if (s_node(type, owner, "owner") < 0 || s_count(type, count, "count") < 0) return -1;
    if (s_exact(&r, type, (size_t)count * S_CIPHER_BYTES, "count") < 0) return -1;
    m->entries = calloc(count ? count : 1, sizeof *m->entries);
    if (!m->entries) return medfl_error_set(MEDFL_ENOMEM, "%s: %u entries", s_names[type], count);
    m->owner = owner;
    m->count = count;
    for (uint32_t i = 0; i < count; i++) {
        m->entries[i].peer = s_get32(&r);
        s_getb(&r, m->entries[i].ct, SECAGG_CT_BYTES);
        uint32_t peer = m->entries[i].peer;
        if (peer >= SECAGG_MAX_NODES || peer == owner ||
            (i > 0 && peer <= m->entries[i - 1].peer)) {
            medfl_error_set(MEDFL_EPROTO, "%s: entry %u: peer %u invalid, equal to owner or "
                            "not increasing", s_names[type], i, peer);
            secagg_shares_clear(m);
            return -1;
        }
    }
    return 0;
}

void secagg_shares_clear(secagg_shares_t *m)
{
    if (!m) return;
    free(m->entries);
    m->entries = NULL;
    m->count = 0;
}

/* ---- masked input -------------------------------------------------------------------- */

size_t secagg_masked_size(uint64_t m)
{
    return SECAGG_HDR_BYTES + 4 + 8 + (size_t)m * 4;
}

void secagg_masked_write_header(uint8_t *buf, uint64_t round_id, uint32_t sender, uint64_t m)
{
    s_w_t w = {buf};
    s_put8(&w, 'S');
    s_put8(&w, 'A');
    s_put8(&w, SECAGG_WIRE_VERSION);
    s_put8(&w, SECAGG_MSG_MASKED_INPUT);
    s_put64(&w, round_id);
    s_put32(&w, sender);
    s_put64(&w, m);
}

int secagg_masked_decode(const uint8_t *buf, size_t len, secagg_masked_t *m)
{
    const secagg_msg_type_t T = SECAGG_MSG_MASKED_INPUT;
    s_r_t r;
    memset(m, 0, sizeof *m);
    if (s_open(buf, len, T, 12, &r, &m->round_id) < 0) return -1;
    m->sender = s_get32(&r);
    m->m = s_get64(&r);
    if (s_node(T, m->sender, "sender") < 0) return -1;
    if (m->m > SECAGG_MAX_PARAMS)
        return medfl_error_set(MEDFL_EPROTO, "%s: field 'm' = %llu exceeds %u", s_names[T],
                               (unsigned long long)m->m, SECAGG_MAX_PARAMS);
    if (s_exact(&r, T, (size_t)m->m * 4, "m") < 0) return -1;
    m->values_le = r.p;
    return 0;
}

/* ---- unmask request / response ------------------------------------------------------- */

static int s_get_list(s_r_t *r, secagg_msg_type_t T, const char *field, uint32_t *count,
                      uint32_t **list)
{
    if (s_left(r) < 4)
        return medfl_error_set(MEDFL_EPROTO, "%s: truncated before '%s'", s_names[T], field);
    uint32_t c = s_get32(r);
    if (s_count(T, c, field) < 0) return -1;
    if (s_left(r) < (size_t)c * 4)
        return medfl_error_set(MEDFL_EPROTO, "%s: '%s' holds %u ids, %zu bytes left", s_names[T],
                               field, c, s_left(r));
    *list = malloc((c ? c : 1) * sizeof **list);
    if (!*list) return medfl_error_set(MEDFL_ENOMEM, "%s: %u ids", s_names[T], c);
    *count = c;
    for (uint32_t i = 0; i < c; i++) {
        (*list)[i] = s_get32(r);
        if ((*list)[i] >= SECAGG_MAX_NODES || (i > 0 && (*list)[i] <= (*list)[i - 1]))
            return medfl_error_set(MEDFL_EPROTO, "%s: '%s'[%u] = %u invalid or not increasing",
                                   s_names[T], field, i, (*list)[i]);
    }
    return 0;
}

int secagg_survivors_encode(const secagg_survivors_t *m, uint8_t **out, size_t *len)
{
    s_w_t w;
    *len = SECAGG_HDR_BYTES + 4 + 4 * (size_t)m->count;
    if (!(*out = s_alloc(*len, SECAGG_MSG_SURVIVORS, m->round_id, &w))) return -1;
    s_put32(&w, m->count);
    for (uint32_t i = 0; i < m->count; i++) s_put32(&w, m->nodes[i]);
    return 0;
}

int secagg_survivors_decode(const uint8_t *buf, size_t len, secagg_survivors_t *m)
{
    const secagg_msg_type_t T = SECAGG_MSG_SURVIVORS;
    s_r_t r;
    memset(m, 0, sizeof *m);
    if (s_open(buf, len, T, 4, &r, &m->round_id) < 0) return -1;
    if (s_get_list(&r, T, "survivors", &m->count, &m->nodes) < 0 ||
        s_exact(&r, T, 0, "survivors") < 0) {
        secagg_survivors_clear(m);
        return -1;
    }
    return 0;
}

void secagg_survivors_clear(secagg_survivors_t *m)
{
    if (!m) return;
    free(m->nodes);
    m->nodes = NULL;
    m->count = 0;
}

#define S_SET_SIG_BYTES (4 + SECAGG_SIG_BYTES)

int secagg_survivor_sig_encode(const secagg_survivor_sig_t *m, uint8_t **out, size_t *len)
{
    s_w_t w;
    *len = SECAGG_HDR_BYTES + S_SET_SIG_BYTES;
    if (!(*out = s_alloc(*len, SECAGG_MSG_SURVIVORS_SIG, m->round_id, &w))) return -1;
    s_put32(&w, m->s.node);
    s_putb(&w, m->s.sig, SECAGG_SIG_BYTES);
    return 0;
}

int secagg_survivor_sig_decode(const uint8_t *buf, size_t len, secagg_survivor_sig_t *m)
{
    const secagg_msg_type_t T = SECAGG_MSG_SURVIVORS_SIG;
    s_r_t r;
    memset(m, 0, sizeof *m);
    if (s_open(buf, len, T, 0, &r, &m->round_id) < 0 ||
        s_exact(&r, T, S_SET_SIG_BYTES, "header") < 0)
        return -1;
    m->s.node = s_get32(&r);
    s_getb(&r, m->s.sig, SECAGG_SIG_BYTES);
    return s_node(T, m->s.node, "sender");
}

int secagg_unmask_req_encode(const secagg_unmask_req_t *m, uint8_t **out, size_t *len)
{
    s_w_t w;
    *len = SECAGG_HDR_BYTES + 12 + 4 * ((size_t)m->n_survivors + m->n_dropped) +
           (size_t)m->n_sigs * S_SET_SIG_BYTES;
    if (!(*out = s_alloc(*len, SECAGG_MSG_UNMASK_REQUEST, m->round_id, &w))) return -1;
    s_put32(&w, m->n_survivors);
    for (uint32_t i = 0; i < m->n_survivors; i++) s_put32(&w, m->survivors[i]);
    s_put32(&w, m->n_dropped);
    for (uint32_t i = 0; i < m->n_dropped; i++) s_put32(&w, m->dropped[i]);
    s_put32(&w, m->n_sigs);
    for (uint32_t i = 0; i < m->n_sigs; i++) {
        s_put32(&w, m->sigs[i].node);
        s_putb(&w, m->sigs[i].sig, SECAGG_SIG_BYTES);
    }
    return 0;
}

/* The forwarded survivor-set signatures: count, then (node, signature), nodes increasing. */
static int s_get_sigs(s_r_t *r, secagg_msg_type_t T, uint32_t *count, secagg_set_sig_t **sigs)
{
    if (s_left(r) < 4)
        return medfl_error_set(MEDFL_EPROTO, "%s: truncated before 'signatures'", s_names[T]);
    uint32_t c = s_get32(r);
    if (s_count(T, c, "signatures") < 0 || s_exact(r, T, (size_t)c * S_SET_SIG_BYTES,
                                                   "signatures") < 0)
        return -1;
    *sigs = calloc(c ? c : 1, sizeof **sigs);
    if (!*sigs) return medfl_error_set(MEDFL_ENOMEM, "%s: %u signatures", s_names[T], c);
    *count = c;
    for (uint32_t i = 0; i < c; i++) {
        (*sigs)[i].node = s_get32(r);
        s_getb(r, (*sigs)[i].sig, SECAGG_SIG_BYTES);
        if ((*sigs)[i].node >= SECAGG_MAX_NODES || (i > 0 && (*sigs)[i].node <= (*sigs)[i - 1].node))
            return medfl_error_set(MEDFL_EPROTO, "%s: 'signatures'[%u] = node %u invalid or not "
                                   "increasing", s_names[T], i, (*sigs)[i].node);
    }
    return 0;
}

int secagg_unmask_req_decode(const uint8_t *buf, size_t len, secagg_unmask_req_t *m)
{
    const secagg_msg_type_t T = SECAGG_MSG_UNMASK_REQUEST;
    s_r_t r;
    memset(m, 0, sizeof *m);
    if (s_open(buf, len, T, 12, &r, &m->round_id) < 0) return -1;
    if (s_get_list(&r, T, "survivors", &m->n_survivors, &m->survivors) < 0 ||
        s_get_list(&r, T, "dropped", &m->n_dropped, &m->dropped) < 0 ||
        s_get_sigs(&r, T, &m->n_sigs, &m->sigs) < 0) {
        secagg_unmask_req_clear(m);
        return -1;
    }
    return 0;
}

void secagg_unmask_req_clear(secagg_unmask_req_t *m)
{
    if (!m) return;
    free(m->survivors);
    free(m->dropped);
    free(m->sigs);
    m->survivors = m->dropped = NULL;
    m->sigs = NULL;
    m->n_survivors = m->n_dropped = m->n_sigs = 0;
}

#define S_REVEAL_BYTES (4 + 1 + SHAMIR_SHARE_BYTES)

int secagg_unmask_resp_encode(const secagg_unmask_resp_t *m, uint8_t **out, size_t *len)
{
    s_w_t w;
    *len = SECAGG_HDR_BYTES + 8 + (size_t)m->count * S_REVEAL_BYTES;
    if (!(*out = s_alloc(*len, SECAGG_MSG_UNMASK_RESPONSE, m->round_id, &w))) return -1;
    s_put32(&w, m->sender);
    s_put32(&w, m->count);
    for (uint32_t i = 0; i < m->count; i++) {
        s_put32(&w, m->entries[i].node);
        s_put8(&w, m->entries[i].kind);
        for (int l = 0; l < SHAMIR_LIMBS; l++) s_put64(&w, m->entries[i].share.y[l]);
    }
    return 0;
}

int secagg_unmask_resp_decode(const uint8_t *buf, size_t len, secagg_unmask_resp_t *m)
{
    const secagg_msg_type_t T = SECAGG_MSG_UNMASK_RESPONSE;
    s_r_t r;
    memset(m, 0, sizeof *m);
    if (s_open(buf, len, T, 8, &r, &m->round_id) < 0) return -1;
    uint32_t sender = s_get32(&r);
    uint32_t count = s_get32(&r);
    if (s_node(T, sender, "sender") < 0 || s_count(T, count, "count") < 0) return -1;
    if (s_exact(&r, T, (size_t)count * S_REVEAL_BYTES, "count") < 0) return -1;
    m->entries = calloc(count ? count : 1, sizeof *m->entries);
    if (!m->entries) return medfl_error_set(MEDFL_ENOMEM, "%s: %u entries", s_names[T], count);
    m->sender = sender;
    m->count = count;
    for (uint32_t i = 0; i < count; i++) {
        secagg_reveal_t *e = &m->entries[i];
        e->node = s_get32(&r);
        e->kind = s_get8(&r);
        int bad = e->node >= SECAGG_MAX_NODES || (i > 0 && e->node <= m->entries[i - 1].node) ||
                  e->kind > SECAGG_REVEAL_SK;
        for (int l = 0; l < SHAMIR_LIMBS; l++) {
            e->share.y[l] = s_get64(&r);
            bad |= e->share.y[l] >= SHAMIR_P;
        }
        if (bad) {
            medfl_error_set(MEDFL_EPROTO, "%s: entry %u: node %u, kind %u or share invalid",
                            s_names[T], i, e->node, e->kind);
            secagg_unmask_resp_clear(m);
            return -1;
        }
    }
    return 0;
}

void secagg_unmask_resp_clear(secagg_unmask_resp_t *m)
{
    if (!m) return;
    if (m->entries) {
        sodium_memzero(m->entries, (size_t)m->count * sizeof *m->entries);
        free(m->entries);
    }
    m->entries = NULL;
    m->count = 0;
}
