/* wire: ZeroMQ CURVE transport with ZAP enrolment, and the pure Envelope decoder.
 *
 * Why it is built this way:
 * - Identity comes from the CURVE key: the ZAP handler maps an admitted key to its node_id
 *   (User-Id) and attaches the key itself as connection metadata (X-Medfl-Key), so every
 *   received message can be re-checked against the *current* allowlist. That is how a
 *   revocation cuts off a node that is still connected: libzmq cannot drop one peer of a
 *   ROUTER, but we can refuse everything it sends and tell it to stop.
 * - Sizes are checked before protobuf-c allocates anything: the frame length against
 *   WIRE_ENVELOPE_MAX, then the body against its type's limit, and ZMQ_MAXMSGSIZE makes
 *   libzmq refuse bigger frames before it buffers them.
 * - Bulk frames never pass through protobuf: zero-copy out (zmq_msg_init_data), in place
 *   in (the zmq_msg is kept alive inside wire_msg_t or wire_bulk_t).
 * - One zmq context per server / client: the ZAP handler is per context, and separate
 *   contexts give each end its own I/O thread (CURVE encryption and decryption overlap). */
#include "common/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "common/error.h"
#include "common/log.h"

#define WIRE_MAX_NODES 1024      /* bound on repeated per-node fields */
#define WIRE_HASH_MAX 64
#define WIRE_SIG_LEN 64
#define WIRE_SHARE_MAX 1024      /* one Shamir share or its ciphertext */
#define WIRE_TEXT_MAX 1024
#define WIRE_ROUTING_ID_MAX 255
#define WIRE_KEY_PROPERTY "X-Medfl-Key"

/* ---- type table ---------------------------------------------------------------------- */

typedef enum { BULK_NEVER = 0, BULK_OPTIONAL, BULK_REQUIRED } bulk_rule_t;

typedef struct {
    const char *name;
    const ProtobufCMessageDescriptor *desc;
    size_t body_limit;
    bulk_rule_t bulk;
} type_info_t;

#define KIB ((size_t)1024)
#define MIB ((size_t)1024 * 1024)

/* Indexed by Medfl__MsgType. Limits are generous for WIRE_MAX_NODES participants. */
static const type_info_t s_types[] = {
    [MEDFL__MSG_TYPE__MSG_HELLO] = {"HELLO", &medfl__hello__descriptor, 4 * KIB, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_WELCOME] = {"WELCOME", &medfl__welcome__descriptor, 1 * KIB, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_HEARTBEAT] = {"HEARTBEAT", &medfl__heartbeat__descriptor, 64, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_ERROR] = {"ERROR", &medfl__error__descriptor, 4 * KIB, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_ROUND_START] = {"ROUND_START", &medfl__round_start__descriptor,
                                          128 * KIB, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS] = {"ADVERTISE_KEYS", &medfl__advertise_keys__descriptor,
                                             512, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_KEYS_BROADCAST] = {"KEYS_BROADCAST", &medfl__keys_broadcast__descriptor,
                                             512 * KIB, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_SHARE_KEYS] = {"SHARE_KEYS", &medfl__share_keys__descriptor, 2 * MIB,
                                         BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_SHARES_DELIVERY] = {"SHARES_DELIVERY",
                                              &medfl__shares_delivery__descriptor, 2 * MIB,
                                              BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_MASKED_INPUT] = {"MASKED_INPUT", &medfl__masked_input_header__descriptor,
                                           256, BULK_REQUIRED},
    [MEDFL__MSG_TYPE__MSG_UNMASK_REQUEST] = {"UNMASK_REQUEST", &medfl__unmask_request__descriptor,
                                             256 * KIB, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_UNMASK_RESPONSE] = {"UNMASK_RESPONSE",
                                              &medfl__unmask_response__descriptor, 2 * MIB,
                                              BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_UPDATE] = {"UPDATE", &medfl__update__descriptor, 256, BULK_REQUIRED},
    [MEDFL__MSG_TYPE__MSG_VERSION_ANNOUNCE] = {"VERSION_ANNOUNCE",
                                               &medfl__version_announce__descriptor, 2 * MIB,
                                               BULK_OPTIONAL},
    [MEDFL__MSG_TYPE__MSG_EVAL_REPORT] = {"EVAL_REPORT", &medfl__eval_report__descriptor, 256,
                                          BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_DECLINE] = {"DECLINE", &medfl__decline__descriptor, 4 * KIB, BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_CONSISTENCY_CHECK] = {"CONSISTENCY_CHECK",
                                                &medfl__consistency_check__descriptor, 128 * KIB,
                                                BULK_NEVER},
    [MEDFL__MSG_TYPE__MSG_CONSISTENCY_SIGNATURE] = {"CONSISTENCY_SIGNATURE",
                                                    &medfl__consistency_signature__descriptor,
                                                    256, BULK_NEVER},
};
#define N_TYPES (sizeof s_types / sizeof s_types[0])

static const type_info_t *s_type(Medfl__MsgType type)
{
    if ((int)type <= 0 || (size_t)type >= N_TYPES || !s_types[type].desc)
        return NULL;
    return &s_types[type];
}

size_t wire_body_limit(Medfl__MsgType type)
{
    const type_info_t *t = s_type(type);
    return t ? t->body_limit : 0;
}

const char *wire_type_name(Medfl__MsgType type)
{
    const type_info_t *t = s_type(type);
    return t ? t->name : "?";
}

void wire_options_default(wire_options_t *opts)
{
    opts->heartbeat_ivl_ms = 1000;
    opts->heartbeat_timeout_ms = 5000;
    opts->reconnect_ivl_ms = 100;
    opts->reconnect_ivl_max_ms = 2000;
    opts->send_timeout_ms = 10000;
    opts->max_bulk = WIRE_BULK_MAX_DEFAULT;
    opts->handshake_retry_max_ms = 60000;
    opts->server_key_origin[0] = '\0';
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t s_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

bool wire_node_id_valid(const char *id)
{
    if (!id || !id[0])
        return false;
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok || n >= WIRE_NODE_ID_MAX)
            return false;
    }
    return true;
}

void wire_key_id(const uint8_t public_key[WIRE_KEY_LEN], char out[WIRE_KEY_ID_LEN + 1])
{
    uint8_t h[32];
    if (sodium_init() < 0) {
        snprintf(out, WIRE_KEY_ID_LEN + 1, "%s", "????????????????");
        return;
    }
    crypto_generichash(h, sizeof h, public_key, WIRE_KEY_LEN, NULL, 0);
    sodium_bin2hex(out, WIRE_KEY_ID_LEN + 1, h, WIRE_KEY_ID_LEN / 2);
}

/* ---- round context ------------------------------------------------------------------ */

static const char s_round_context_label[] = "medfl-round-context-v1";

int wire_round_context(const Medfl__RoundStart *rs, uint8_t out[WIRE_ROUND_CONTEXT_BYTES])
{
    if (!rs || !out)
        return medfl_error_set(MEDFL_EINVAL, "round context: %s is NULL",
                               rs ? "the output" : "the round start");
    if (rs->base.descriptor != &medfl__round_start__descriptor)
        return medfl_error_set(MEDFL_EINVAL, "round context: message is a %s, not a RoundStart",
                               rs->base.descriptor && rs->base.descriptor->name
                                   ? rs->base.descriptor->name : "(no descriptor)");
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "sodium_init failed");
    /* A shallow copy: only the top-level per-node scalars change, the nested messages and
     * arrays are the caller's, read-only. */
    Medfl__RoundStart c = *rs;
    c.weight = 0;
    c.deadline_ms = 0;
    size_t len = medfl__round_start__get_packed_size(&c);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return medfl_error_set(MEDFL_ENOMEM, "round context: %zu bytes for round %" PRIu64
                               "'s packed round start", len, rs->round_id);
    size_t got = medfl__round_start__pack(&c, buf);
    if (got != len) {
        free(buf);
        return medfl_error_set(MEDFL_EINVAL, "round context: round %" PRIu64 "'s round start "
                               "packed to %zu bytes, sized %zu", rs->round_id, got, len);
    }
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, WIRE_ROUND_CONTEXT_BYTES);
    crypto_generichash_update(&h, (const uint8_t *)s_round_context_label,
                              sizeof s_round_context_label - 1);
    crypto_generichash_update(&h, buf, len);
    crypto_generichash_final(&h, out, WIRE_ROUND_CONTEXT_BYTES);
    free(buf);
    return 0;
}

/* ---- body validation ----------------------------------------------------------------- */

static int s_bytes_len(const ProtobufCBinaryData *b, size_t want, const char *type,
                       const char *field)
{
    if (b->len != want)
        return medfl_error_set(MEDFL_EPROTO, "%s: field '%s': %zu bytes, expected %zu", type,
                               field, b->len, want);
    return 0;
}

static int s_bytes_max(const ProtobufCBinaryData *b, size_t max, const char *type,
                       const char *field)
{
    if (b->len > max)
        return medfl_error_set(MEDFL_EPROTO, "%s: field '%s': %zu bytes, at most %zu allowed",
                               type, field, b->len, max);
    return 0;
}

static int s_str_max(const char *s, size_t max, const char *type, const char *field)
{
    if (s && strlen(s) > max)
        return medfl_error_set(MEDFL_EPROTO, "%s: field '%s': longer than %zu chars", type,
                               field, max);
    return 0;
}

static int s_node_id(const char *id, bool may_be_empty, const char *type, const char *field)
{
    if (may_be_empty && (!id || !id[0]))
        return 0;
    if (!wire_node_id_valid(id))
        return medfl_error_set(MEDFL_EPROTO, "%s: field '%s': invalid node id", type, field);
    return 0;
}

static int s_count(size_t n, size_t max, const char *type, const char *field)
{
    if (n > max)
        return medfl_error_set(MEDFL_EPROTO, "%s: field '%s': %zu entries, at most %zu", type,
                               field, n, max);
    return 0;
}

static int s_finite(double v, bool non_negative, const char *type, const char *field)
{
    if (!isfinite(v) || (non_negative && v < 0))
        return medfl_error_set(MEDFL_EPROTO, "%s: field '%s': value %g out of range", type,
                               field, v);
    return 0;
}

static size_t s_dtype_size(Medfl__TensorDtype d)
{
    switch (d) {
    case MEDFL__TENSOR_DTYPE__DTYPE_F32: return 4;
    case MEDFL__TENSOR_DTYPE__DTYPE_F16: return 2;
    case MEDFL__TENSOR_DTYPE__DTYPE_BF16: return 2;
    case MEDFL__TENSOR_DTYPE__DTYPE_I8: return 1;
    case MEDFL__TENSOR_DTYPE__DTYPE_U32: return 4;
    case MEDFL__TENSOR_DTYPE__DTYPE_U64: return 8;
    default: return 0;
    }
}

static int s_compression(const Medfl__Compression *c, const char *type)
{
    if (!c)
        return 0;
    if ((int)c->scheme < 0 || (int)c->scheme > MEDFL__COMPRESSION_SCHEME__COMPRESSION_RANDK)
        return medfl_error_set(MEDFL_EPROTO, "%s: field 'compression.scheme': unknown value %d",
                               type, (int)c->scheme);
    if (c->bits > 32)
        return medfl_error_set(MEDFL_EPROTO, "%s: field 'compression.bits': %u > 32", type,
                               c->bits);
    return 0;
}

static int s_tensor_header(Medfl__TensorDtype dtype, uint64_t n_elements, const char *type)
{
    if (s_dtype_size(dtype) == 0)
        return medfl_error_set(MEDFL_EPROTO, "%s: field 'dtype': unknown value %d", type,
                               (int)dtype);
    if (n_elements == 0)
        return medfl_error_set(MEDFL_EPROTO, "%s: field 'n_elements': must be > 0", type);
    return 0;
}

/* Semantic checks a peer's daemon would otherwise have to repeat: anything that passes
 * here has well-formed ids, exact key sizes and bounded lists. */
static int s_validate(Medfl__MsgType type, uint64_t round_id, const wire_body_t b)
{
    const char *t = wire_type_name(type);
    switch (type) {
    case MEDFL__MSG_TYPE__MSG_HELLO: {
        const Medfl__Hello *m = b.hello;
        if (s_node_id(m->node_id, false, t, "node_id") < 0 ||
            s_bytes_len(&m->identity_pk, 32, t, "identity_pk") < 0)
            return -1;
        if (!m->capabilities)
            return medfl_error_set(MEDFL_EPROTO, "%s: field 'capabilities': missing", t);
        const Medfl__Capabilities *c = m->capabilities;
        return (s_str_max(c->device, 128, t, "capabilities.device") < 0 ||
                s_str_max(c->software_version, 64, t, "capabilities.software_version") < 0 ||
                s_bytes_max(&c->base_hash, WIRE_HASH_MAX, t, "capabilities.base_hash") < 0)
                   ? -1
                   : 0;
    }
    case MEDFL__MSG_TYPE__MSG_WELCOME:
        return (s_bytes_len(&b.welcome->instance_id, WIRE_INSTANCE_ID_LEN, t, "instance_id") < 0 ||
                s_bytes_max(&b.welcome->global_hash, WIRE_HASH_MAX, t, "global_hash") < 0)
                   ? -1
                   : 0;
    case MEDFL__MSG_TYPE__MSG_HEARTBEAT:
        return 0;
    case MEDFL__MSG_TYPE__MSG_ERROR:
        if ((int)b.error->code < 0 || (int)b.error->code > MEDFL__ERROR_CODE__ERROR_UNKNOWN_ROUND)
            return medfl_error_set(MEDFL_EPROTO, "%s: field 'code': unknown value %d", t,
                                   (int)b.error->code);
        return s_str_max(b.error->text, WIRE_TEXT_MAX, t, "text");
    case MEDFL__MSG_TYPE__MSG_ROUND_START: {
        const Medfl__RoundStart *m = b.round_start;
        if (m->round_id != round_id)
            return medfl_error_set(MEDFL_EPROTO,
                                   "%s: field 'round_id': %" PRIu64 " differs from envelope's %" PRIu64,
                                   t, m->round_id, round_id);
        if (s_bytes_max(&m->base_hash, WIRE_HASH_MAX, t, "base_hash") < 0 ||
            s_finite(m->weight, true, t, "weight") < 0 || s_compression(m->compression, t) < 0)
            return -1;
        if (!m->hyperparams)
            return medfl_error_set(MEDFL_EPROTO, "%s: field 'hyperparams': missing", t);
        if (s_finite(m->hyperparams->lr, true, t, "hyperparams.lr") < 0)
            return -1;
        if (m->dp && (s_finite(m->dp->noise_multiplier, true, t, "dp.noise_multiplier") < 0 ||
                      s_finite(m->dp->clip_norm, true, t, "dp.clip_norm") < 0 ||
                      s_finite(m->dp->sample_rate, true, t, "dp.sample_rate") < 0 ||
                      s_finite(m->dp->delta, true, t, "dp.delta") < 0 ||
                      m->dp->sample_rate > 1 || m->dp->delta >= 1))
            return medfl_error_set(MEDFL_EPROTO, "%s: field 'dp': parameters out of range", t);
        if (m->secagg) {
            const Medfl__SecAggParams *s = m->secagg;
            if (s_count(s->n_participants, WIRE_MAX_NODES, t, "secagg.participants") < 0)
                return -1;
            for (size_t i = 0; i < s->n_participants; i++)
                if (s_node_id(s->participants[i], false, t, "secagg.participants") < 0)
                    return -1;
            if (s->n_identity_pks && s->n_identity_pks != s->n_participants)
                return medfl_error_set(MEDFL_EPROTO,
                                       "%s: field 'secagg.identity_pks': %zu keys for %zu "
                                       "participants", t, s->n_identity_pks, s->n_participants);
            for (size_t i = 0; i < s->n_identity_pks; i++)
                if (s_bytes_len(&s->identity_pks[i], 32, t, "secagg.identity_pks") < 0)
                    return -1;
            if (s->graph_seed.len && s_bytes_len(&s->graph_seed, 32, t, "secagg.graph_seed") < 0)
                return -1;
            if (s->enabled && (s->threshold == 0 || s->threshold > s->n_participants))
                return medfl_error_set(MEDFL_EPROTO,
                                       "%s: field 'secagg.threshold': %u not in 1..%zu", t,
                                       s->threshold, s->n_participants);
        }
        return 0;
    }
    case MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS:
        return (s_bytes_len(&b.advertise_keys->c_pk, 32, t, "c_pk") < 0 ||
                s_bytes_len(&b.advertise_keys->s_pk, 32, t, "s_pk") < 0 ||
                s_bytes_len(&b.advertise_keys->signature, WIRE_SIG_LEN, t, "signature") < 0)
                   ? -1
                   : 0;
    case MEDFL__MSG_TYPE__MSG_KEYS_BROADCAST: {
        const Medfl__KeysBroadcast *m = b.keys_broadcast;
        if (s_count(m->n_keys, WIRE_MAX_NODES, t, "keys") < 0)
            return -1;
        for (size_t i = 0; i < m->n_keys; i++) {
            const Medfl__NodeKeys *k = m->keys[i];
            if (s_node_id(k->node_id, false, t, "keys.node_id") < 0 ||
                s_bytes_len(&k->c_pk, 32, t, "keys.c_pk") < 0 ||
                s_bytes_len(&k->s_pk, 32, t, "keys.s_pk") < 0 ||
                s_bytes_len(&k->signature, WIRE_SIG_LEN, t, "keys.signature") < 0)
                return -1;
        }
        return 0;
    }
    case MEDFL__MSG_TYPE__MSG_SHARE_KEYS:
    case MEDFL__MSG_TYPE__MSG_SHARES_DELIVERY: {
        size_t n = type == MEDFL__MSG_TYPE__MSG_SHARE_KEYS ? b.share_keys->n_shares
                                                          : b.shares_delivery->n_shares;
        Medfl__EncryptedShare **sh = type == MEDFL__MSG_TYPE__MSG_SHARE_KEYS
                                         ? b.share_keys->shares
                                         : b.shares_delivery->shares;
        if (s_count(n, WIRE_MAX_NODES, t, "shares") < 0)
            return -1;
        for (size_t i = 0; i < n; i++) {
            bool to = type == MEDFL__MSG_TYPE__MSG_SHARE_KEYS;
            if (s_node_id(sh[i]->from_node, to, t, "shares.from_node") < 0 ||
                s_node_id(sh[i]->to_node, !to, t, "shares.to_node") < 0 ||
                s_bytes_max(&sh[i]->ciphertext, WIRE_SHARE_MAX, t, "shares.ciphertext") < 0)
                return -1;
        }
        return 0;
    }
    case MEDFL__MSG_TYPE__MSG_MASKED_INPUT:
        return (s_tensor_header(b.masked_input->dtype, b.masked_input->n_elements, t) < 0 ||
                s_compression(b.masked_input->compression, t) < 0)
                   ? -1
                   : 0;
    case MEDFL__MSG_TYPE__MSG_UNMASK_REQUEST: {
        const Medfl__UnmaskRequest *m = b.unmask_request;
        if (s_count(m->n_survivors, WIRE_MAX_NODES, t, "survivors") < 0 ||
            s_count(m->n_dropped, WIRE_MAX_NODES, t, "dropped") < 0)
            return -1;
        for (size_t i = 0; i < m->n_survivors; i++)
            if (s_node_id(m->survivors[i], false, t, "survivors") < 0)
                return -1;
        for (size_t i = 0; i < m->n_dropped; i++)
            if (s_node_id(m->dropped[i], false, t, "dropped") < 0)
                return -1;
        if (s_count(m->n_signatures, WIRE_MAX_NODES, t, "signatures") < 0)
            return -1;
        for (size_t i = 0; i < m->n_signatures; i++)
            if (s_node_id(m->signatures[i]->node_id, false, t, "signatures.node_id") < 0 ||
                s_bytes_len(&m->signatures[i]->signature, WIRE_SIG_LEN, t,
                            "signatures.signature") < 0)
                return -1;
        return 0;
    }
    case MEDFL__MSG_TYPE__MSG_CONSISTENCY_CHECK: {
        const Medfl__ConsistencyCheck *m = b.consistency_check;
        if (s_count(m->n_survivors, WIRE_MAX_NODES, t, "survivors") < 0)
            return -1;
        for (size_t i = 0; i < m->n_survivors; i++)
            if (s_node_id(m->survivors[i], false, t, "survivors") < 0)
                return -1;
        return 0;
    }
    case MEDFL__MSG_TYPE__MSG_CONSISTENCY_SIGNATURE:
        return s_bytes_len(&b.consistency_signature->signature, WIRE_SIG_LEN, t, "signature");
    case MEDFL__MSG_TYPE__MSG_UNMASK_RESPONSE: {
        const Medfl__UnmaskResponse *m = b.unmask_response;
        if (s_count(m->n_shares, WIRE_MAX_NODES, t, "shares") < 0)
            return -1;
        for (size_t i = 0; i < m->n_shares; i++) {
            const Medfl__UnmaskShare *s = m->shares[i];
            if (s_node_id(s->node_id, false, t, "shares.node_id") < 0 ||
                s_bytes_max(&s->share, WIRE_SHARE_MAX, t, "shares.share") < 0)
                return -1;
            if (s->kind != MEDFL__SHARE_KIND__SHARE_SELF_MASK_SEED &&
                s->kind != MEDFL__SHARE_KIND__SHARE_MASK_KEY)
                return medfl_error_set(MEDFL_EPROTO, "%s: field 'shares.kind': unknown value %d",
                                       t, (int)s->kind);
        }
        return 0;
    }
    case MEDFL__MSG_TYPE__MSG_UPDATE:
        return (s_tensor_header(b.update->dtype, b.update->n_elements, t) < 0 ||
                s_finite(b.update->weight, true, t, "weight") < 0 ||
                s_compression(b.update->compression, t) < 0)
                   ? -1
                   : 0;
    case MEDFL__MSG_TYPE__MSG_VERSION_ANNOUNCE:
        return (s_bytes_max(&b.version_announce->hash, WIRE_HASH_MAX, t, "hash") < 0 ||
                s_bytes_len(&b.version_announce->signature, WIRE_SIG_LEN, t, "signature") < 0)
                   ? -1
                   : 0;
    case MEDFL__MSG_TYPE__MSG_EVAL_REPORT: {
        const Medfl__EvalReport *m = b.eval_report;
        return (s_finite(m->loss, false, t, "loss") < 0 ||
                s_finite(m->accuracy, true, t, "accuracy") < 0 ||
                s_finite(m->macro_f1, true, t, "macro_f1") < 0)
                   ? -1
                   : 0;
    }
    case MEDFL__MSG_TYPE__MSG_DECLINE:
        if ((int)b.decline->reason < 0 || (int)b.decline->reason > MEDFL__DECLINE_REASON__DECLINE_PRIVACY_POLICY)
            return medfl_error_set(MEDFL_EPROTO, "%s: field 'reason': unknown value %d", t,
                                   (int)b.decline->reason);
        return s_str_max(b.decline->text, WIRE_TEXT_MAX, t, "text");
    default:
        return medfl_error_set(MEDFL_EPROTO, "unknown message type %d", (int)type);
    }
}

/* ---- counting before unpacking --------------------------------------------------------- */

#define WIRE_UNKNOWN_MAX 64 /* fields this build does not know, per message (newer peers) */
#define WIRE_NEST_MAX 8     /* nesting depth of messages inside a body */

static int s_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return -1;
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return 0;
    }
    return -1;
}

/* Walks the protobuf encoding of a `desc` message without allocating, and refuses one whose
 * repeated fields hold more than WIRE_MAX_NODES entries (packed scalars counted per value),
 * more than WIRE_UNKNOWN_MAX unknown fields, or nests deeper than WIRE_NEST_MAX. protobuf-c
 * allocates a struct per entry as it unpacks, so 2 MiB of empty entries cost over 100 MiB
 * before a count could be checked after decoding (issue #16); here the count comes first.
 * Anything malformed is left to the unpacker to refuse. 0 / -1 (MEDFL_EPROTO). */
static int s_scan_counts(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
                         int depth, const char *type)
{
    if (depth > WIRE_NEST_MAX)
        return medfl_error_set(MEDFL_EPROTO, "%s: messages nested deeper than %d", type,
                               WIRE_NEST_MAX);
    size_t counts[64] = {0}; /* by field index; medfl messages have fewer fields */
    size_t unknown = 0;
    const uint8_t *end = p + len;
    while (p < end) {
        uint64_t key, v;
        if (s_varint(&p, end, &key) < 0) return 0;
        uint32_t num = (uint32_t)(key >> 3);
        unsigned wt = (unsigned)(key & 7);
        const ProtobufCFieldDescriptor *f =
            key >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(desc, num) : NULL;
        const uint8_t *val = p;
        size_t vlen = 0;
        switch (wt) {
        case 0: if (s_varint(&p, end, &v) < 0) return 0; break;
        case 1: if ((size_t)(end - p) < 8) return 0; p += 8; break;
        case 5: if ((size_t)(end - p) < 4) return 0; p += 4; break;
        case 2:
            if (s_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p)) return 0;
            val = p, vlen = (size_t)v, p += v;
            break;
        default: return 0; /* groups: protobuf-c refuses them */
        }
        if (!f) {
            if (++unknown > WIRE_UNKNOWN_MAX)
                return medfl_error_set(MEDFL_EPROTO, "%s: more than %d unknown fields", type,
                                       WIRE_UNKNOWN_MAX);
            continue;
        }
        size_t fi = (size_t)(f - desc->fields);
        if (f->label == PROTOBUF_C_LABEL_REPEATED && fi < 64) {
            size_t add = 1;
            if (wt == 2 && f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_BYTES &&
                f->type != PROTOBUF_C_TYPE_MESSAGE) { /* packed scalars: one per value */
                add = 0;
                for (size_t i = 0; i < vlen; i++) add += !(val[i] & 0x80);
            }
            counts[fi] += add;
            if (counts[fi] > WIRE_MAX_NODES)
                return medfl_error_set(MEDFL_EPROTO, "%s: field '%s': more than %d entries "
                                       "(refused before decoding)", type, f->name, WIRE_MAX_NODES);
        }
        if (wt == 2 && f->type == PROTOBUF_C_TYPE_MESSAGE &&
            s_scan_counts(f->descriptor, val, vlen, depth + 1, type) < 0)
            return -1;
    }
    return 0;
}

/* ---- decode / encode ----------------------------------------------------------------- */

void wire_decoded_clear(wire_decoded_t *d)
{
    if (!d)
        return;
    if (d->body.any)
        protobuf_c_message_free_unpacked(d->body.any, NULL);
    memset(d, 0, sizeof *d);
}

int wire_decode(const void *data, size_t size, wire_decoded_t *out)
{
    memset(out, 0, sizeof *out);
    if (!data || size == 0)
        return medfl_error_set(MEDFL_EPROTO, "envelope: empty frame");
    if (size > WIRE_ENVELOPE_MAX)
        return medfl_error_set(MEDFL_EPROTO, "envelope: %zu bytes, at most %zu allowed", size,
                               WIRE_ENVELOPE_MAX);
    if (s_scan_counts(&medfl__envelope__descriptor, data, size, 0, "envelope") < 0)
        return -1;
    Medfl__Envelope *env = medfl__envelope__unpack(NULL, size, data);
    if (!env)
        return medfl_error_set(MEDFL_EPROTO, "envelope: not a valid protobuf Envelope (%zu bytes)",
                               size);
    int rc = -1;
    const type_info_t *ti = s_type(env->type);
    if (env->protocol_version != WIRE_PROTOCOL_VERSION) {
        medfl_error_set(MEDFL_EUNSUPPORTED, "envelope: protocol version %u, this build speaks %u",
                        env->protocol_version, WIRE_PROTOCOL_VERSION);
        goto done;
    }
    if (!ti) {
        medfl_error_set(MEDFL_EPROTO, "envelope: unknown message type %d", (int)env->type);
        goto done;
    }
    if (!wire_node_id_valid(env->sender)) {
        medfl_error_set(MEDFL_EPROTO, "envelope: field 'sender': invalid node id");
        goto done;
    }
    if (env->body.len > ti->body_limit) {
        medfl_error_set(MEDFL_EPROTO, "%s: body of %zu bytes, at most %zu allowed", ti->name,
                        env->body.len, ti->body_limit);
        goto done;
    }
    if (s_scan_counts(ti->desc, env->body.data, env->body.len, 0, ti->name) < 0)
        goto done;
    /* protobuf-c wants a non-NULL pointer even for an empty body. */
    static const uint8_t empty[1] = {0};
    ProtobufCMessage *body = protobuf_c_message_unpack(
        ti->desc, NULL, env->body.len, env->body.len ? env->body.data : empty);
    if (!body) {
        medfl_error_set(MEDFL_EPROTO, "%s: body is not a valid %s message (%zu bytes)", ti->name,
                        ti->desc->name, env->body.len);
        goto done;
    }
    out->body.any = body;
    out->protocol_version = env->protocol_version;
    out->type = env->type;
    out->round_id = env->round_id;
    snprintf(out->sender, sizeof out->sender, "%s", env->sender);
    if (s_validate(out->type, out->round_id, out->body) < 0) {
        wire_decoded_clear(out);
        goto done;
    }
    rc = 0;
done:
    medfl__envelope__free_unpacked(env, NULL);
    return rc;
}

int wire_check_bulk(const wire_decoded_t *d, bool has_bulk, size_t bulk_len, size_t max_bulk)
{
    const type_info_t *ti = s_type(d->type);
    if (!ti)
        return medfl_error_set(MEDFL_EPROTO, "unknown message type %d", (int)d->type);
    if (has_bulk && ti->bulk == BULK_NEVER)
        return medfl_error_set(MEDFL_EPROTO, "%s: unexpected bulk frame (%zu bytes)", ti->name,
                               bulk_len);
    if (!has_bulk && ti->bulk == BULK_REQUIRED)
        return medfl_error_set(MEDFL_EPROTO, "%s: bulk frame missing", ti->name);
    if (!has_bulk)
        return 0;
    if (bulk_len > max_bulk)
        return medfl_error_set(MEDFL_EPROTO, "%s: bulk frame of %zu bytes, at most %zu allowed",
                               ti->name, bulk_len, max_bulk);
    Medfl__TensorDtype dtype = MEDFL__TENSOR_DTYPE__DTYPE_UNSPECIFIED;
    uint64_t n = 0;
    const Medfl__Compression *comp = NULL;
    if (d->type == MEDFL__MSG_TYPE__MSG_UPDATE && d->body.update) {
        dtype = d->body.update->dtype, n = d->body.update->n_elements;
        comp = d->body.update->compression;
    } else if (d->type == MEDFL__MSG_TYPE__MSG_MASKED_INPUT && d->body.masked_input) {
        dtype = d->body.masked_input->dtype, n = d->body.masked_input->n_elements;
        comp = d->body.masked_input->compression;
    }
    /* The frame must hold exactly n_elements of dtype, compressed or not: a compressed
     * payload travels as n_elements = its length in bytes of dtype I8, and its layout is then
     * the compression decoder's to check. Checking only uncompressed frames let a TOPK
     * header claim m float32 over a 64-byte frame (issue #16). */
    (void)comp;
    size_t es = s_dtype_size(dtype);
    if (es) {
        if (n > max_bulk / es || (size_t)n * es != bulk_len)
            return medfl_error_set(MEDFL_EPROTO,
                                   "%s: bulk frame of %zu bytes does not hold %" PRIu64
                                   " elements of %zu bytes",
                                   ti->name, bulk_len, n, es);
    }
    return 0;
}

int wire_encode(Medfl__MsgType type, uint64_t round_id, const char *sender,
                const ProtobufCMessage *body, uint8_t **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    const type_info_t *ti = s_type(type);
    if (!ti)
        return medfl_error_set(MEDFL_EINVAL, "wire_encode: unknown message type %d", (int)type);
    if (body && body->descriptor != ti->desc)
        return medfl_error_set(MEDFL_EINVAL, "wire_encode: %s body has type %s", ti->name,
                               body->descriptor->name);
    if (!wire_node_id_valid(sender))
        return medfl_error_set(MEDFL_EINVAL, "wire_encode: invalid sender id");
    size_t blen = body ? protobuf_c_message_get_packed_size(body) : 0;
    if (blen > ti->body_limit)
        return medfl_error_set(MEDFL_EINVAL, "wire_encode: %s body of %zu bytes exceeds %zu",
                               ti->name, blen, ti->body_limit);
    uint8_t *bbuf = malloc(blen ? blen : 1);
    if (!bbuf)
        return medfl_error_set(MEDFL_ENOMEM, "wire_encode: %zu bytes", blen);
    if (body)
        protobuf_c_message_pack(body, bbuf);
    Medfl__Envelope env = MEDFL__ENVELOPE__INIT;
    env.protocol_version = WIRE_PROTOCOL_VERSION;
    env.type = type;
    env.round_id = round_id;
    env.sender = (char *)sender;
    env.body.data = bbuf;
    env.body.len = blen;
    size_t elen = medfl__envelope__get_packed_size(&env);
    uint8_t *ebuf = malloc(elen ? elen : 1);
    if (!ebuf) {
        free(bbuf);
        return medfl_error_set(MEDFL_ENOMEM, "wire_encode: %zu bytes", elen);
    }
    medfl__envelope__pack(&env, ebuf);
    free(bbuf);
    /* Hold outgoing messages to the receiver's rules (ids, key sizes, limits): a daemon bug
     * then fails here, with a precise reason, instead of as an Error from the peer. */
    wire_decoded_t check;
    if (wire_decode(ebuf, elen, &check) < 0) {
        free(ebuf);
        char reason[512];
        snprintf(reason, sizeof reason, "%s", medfl_error_message());
        return medfl_error_set(MEDFL_EINVAL, "wire_encode: refusing to send: %s", reason);
    }
    wire_decoded_clear(&check);
    *out = ebuf;
    *out_len = elen;
    return 0;
}

/* ---- messages ------------------------------------------------------------------------ */

struct wire_bulk_t {
    zmq_msg_t msg;
};

void wire_msg_close(wire_msg_t *msg)
{
    if (!msg)
        return;
    wire_decoded_clear(&msg->_dec);
    if (msg->_has_bulk)
        zmq_msg_close(&msg->_bulk_msg);
    memset(msg, 0, sizeof *msg);
}

wire_bulk_t *wire_msg_take_bulk(wire_msg_t *msg)
{
    if (!msg || !msg->_has_bulk)
        return NULL;
    wire_bulk_t *b = calloc(1, sizeof *b);
    if (!b) {
        medfl_error_set(MEDFL_ENOMEM, "wire_msg_take_bulk");
        return NULL;
    }
    zmq_msg_init(&b->msg);
    zmq_msg_move(&b->msg, &msg->_bulk_msg);
    zmq_msg_close(&msg->_bulk_msg);
    msg->_has_bulk = false;
    msg->bulk = NULL;
    msg->bulk_len = 0;
    return b;
}

const uint8_t *wire_bulk_data(const wire_bulk_t *b)
{
    return b ? zmq_msg_data((zmq_msg_t *)&b->msg) : NULL;
}

size_t wire_bulk_size(const wire_bulk_t *b)
{
    return b ? zmq_msg_size((zmq_msg_t *)&b->msg) : 0;
}

void wire_bulk_destroy(wire_bulk_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    zmq_msg_close(&(*self_p)->msg);
    free(*self_p);
    *self_p = NULL;
}

static void s_free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Builds the bulk zmq_msg: zero copy with free_fn, a copy without. On failure free_fn has
 * been called (the caller's ownership rule holds on every path). */
static int s_bulk_msg(zmq_msg_t *m, const void *bulk, size_t len, wire_free_fn *free_fn,
                      void *hint)
{
    if (free_fn) {
        if (zmq_msg_init_data(m, (void *)bulk, len, free_fn, hint) != 0) {
            free_fn((void *)bulk, hint);
            return medfl_error_set(MEDFL_ENOMEM, "bulk frame: %s", zmq_strerror(errno));
        }
        return 0;
    }
    if (zmq_msg_init_size(m, len) != 0)
        return medfl_error_set(MEDFL_ENOMEM, "bulk frame of %zu bytes: %s", len,
                               zmq_strerror(errno));
    if (len)
        memcpy(zmq_msg_data(m), bulk, len);
    return 0;
}

/* Encodes and checks an outgoing message; builds the envelope and (optional) bulk msgs.
 * Consumes bulk (free_fn) on failure. */
static int s_prepare(Medfl__MsgType type, uint64_t round_id, const char *sender,
                     const ProtobufCMessage *body, const void *bulk, size_t bulk_len,
                     wire_free_fn *free_fn, void *hint, size_t max_bulk, zmq_msg_t *env_msg,
                     zmq_msg_t *bulk_msg)
{
    wire_decoded_t view;
    memset(&view, 0, sizeof view);
    view.type = type;
    view.body.any = (ProtobufCMessage *)body;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (wire_check_bulk(&view, bulk != NULL, bulk_len, max_bulk) < 0 ||
        wire_encode(type, round_id, sender, body, &buf, &len) < 0) {
        if (bulk && free_fn)
            free_fn((void *)bulk, hint);
        return -1;
    }
    if (zmq_msg_init_data(env_msg, buf, len, s_free_buf, NULL) != 0) {
        free(buf);
        if (bulk && free_fn)
            free_fn((void *)bulk, hint);
        return medfl_error_set(MEDFL_ENOMEM, "envelope frame: %s", zmq_strerror(errno));
    }
    if (bulk && s_bulk_msg(bulk_msg, bulk, bulk_len, free_fn, hint) < 0) {
        zmq_msg_close(env_msg);
        return -1;
    }
    return 0;
}

/* Receives the remaining frames of one message (the routing frame, if any, was read):
 * envelope, optional bulk, and counts (and discards) any further frames. */
static int s_recv_rest(void *sock, zmq_msg_t *env, zmq_msg_t *bulk, bool *has_bulk,
                       size_t *extra)
{
    *has_bulk = false;
    *extra = 0;
    zmq_msg_init(env);
    if (zmq_msg_recv(env, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(env);
        return medfl_error_set(MEDFL_EIO, "receive: %s", zmq_strerror(errno));
    }
    if (!zmq_msg_more(env))
        return 0;
    zmq_msg_init(bulk);
    if (zmq_msg_recv(bulk, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(bulk);
        zmq_msg_close(env);
        return medfl_error_set(MEDFL_EIO, "receive: %s", zmq_strerror(errno));
    }
    *has_bulk = true;
    int more = zmq_msg_more(bulk);
    while (more) {
        zmq_msg_t x;
        zmq_msg_init(&x);
        if (zmq_msg_recv(&x, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&x);
            break;
        }
        more = zmq_msg_more(&x);
        zmq_msg_close(&x);
        (*extra)++;
    }
    return 0;
}

/* Decodes envelope + bulk into msg (envelope msg consumed, bulk moved into msg). */
static int s_fill_msg(wire_msg_t *msg, zmq_msg_t *env, zmq_msg_t *bulk, bool has_bulk,
                      size_t extra, size_t max_bulk)
{
    int rc = -1;
    if (extra) {
        medfl_error_set(MEDFL_EPROTO, "message has %zu unexpected extra frame(s)", extra);
    } else if (wire_decode(zmq_msg_data(env), zmq_msg_size(env), &msg->_dec) == 0) {
        if (wire_check_bulk(&msg->_dec, has_bulk, has_bulk ? zmq_msg_size(bulk) : 0,
                            max_bulk) < 0)
            wire_decoded_clear(&msg->_dec);
        else
            rc = 0;
    }
    zmq_msg_close(env);
    if (rc < 0) {
        if (has_bulk)
            zmq_msg_close(bulk);
        return -1;
    }
    msg->type = msg->_dec.type;
    msg->round_id = msg->_dec.round_id;
    msg->body = msg->_dec.body;
    if (has_bulk) {
        zmq_msg_init(&msg->_bulk_msg);
        zmq_msg_move(&msg->_bulk_msg, bulk);
        zmq_msg_close(bulk);
        msg->_has_bulk = true;
        msg->bulk = zmq_msg_data(&msg->_bulk_msg);
        msg->bulk_len = zmq_msg_size(&msg->_bulk_msg);
    }
    return 0;
}

static int s_common_sockopts(void *sock, const wire_options_t *o)
{
    /* ZMTP carries the TTL in deciseconds in 16 bits: libzmq refuses more than 6553.5 s.
     * A longer timeout still applies on our side through ZMQ_HEARTBEAT_TIMEOUT. */
    int ttl = o->heartbeat_timeout_ms > 6553500 ? 6553500 : o->heartbeat_timeout_ms;
    int linger = 500;
    int64_t maxmsg = (int64_t)(o->max_bulk > WIRE_ENVELOPE_MAX ? o->max_bulk : WIRE_ENVELOPE_MAX);
    if (zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0 ||
        zmq_setsockopt(sock, ZMQ_SNDTIMEO, &o->send_timeout_ms, sizeof(int)) != 0 ||
        zmq_setsockopt(sock, ZMQ_HEARTBEAT_IVL, &o->heartbeat_ivl_ms, sizeof(int)) != 0 ||
        zmq_setsockopt(sock, ZMQ_HEARTBEAT_TIMEOUT, &o->heartbeat_timeout_ms, sizeof(int)) != 0 ||
        zmq_setsockopt(sock, ZMQ_HEARTBEAT_TTL, &ttl, sizeof ttl) != 0)
        return medfl_error_set(MEDFL_EINVAL, "socket options: %s", zmq_strerror(errno));
    return 0;
}

static int s_check_options(const wire_options_t *o)
{
    if (o->heartbeat_ivl_ms <= 0 || o->heartbeat_timeout_ms <= o->heartbeat_ivl_ms ||
        o->reconnect_ivl_ms <= 0 ||
        o->reconnect_ivl_max_ms < o->reconnect_ivl_ms || o->send_timeout_ms < 0 ||
        o->handshake_retry_max_ms < o->reconnect_ivl_max_ms ||
        o->max_bulk == 0 || o->max_bulk > (size_t)INT64_MAX)
        return medfl_error_set(MEDFL_EINVAL,
                               "wire options: heartbeat_ivl_ms %d, heartbeat_timeout_ms %d, "
                               "reconnect %d..%d ms, handshake retry up to %d ms, "
                               "send_timeout_ms %d out of range",
                               o->heartbeat_ivl_ms, o->heartbeat_timeout_ms, o->reconnect_ivl_ms,
                               o->reconnect_ivl_max_ms, o->handshake_retry_max_ms,
                               o->send_timeout_ms);
    return 0;
}

static int s_check_keypair(const uint8_t *pk, const uint8_t *sk, const char *what)
{
    uint8_t derived[WIRE_KEY_LEN];
    if (sodium_init() < 0)
        return medfl_error_set(MEDFL_ECRYPTO, "libsodium initialisation failed");
    if (crypto_scalarmult_base(derived, sk) != 0 || sodium_memcmp(derived, pk, WIRE_KEY_LEN) != 0) {
        sodium_memzero(derived, sizeof derived);
        return medfl_error_set(MEDFL_ECRYPTO, "%s: public key does not match the secret key",
                               what);
    }
    sodium_memzero(derived, sizeof derived);
    return 0;
}

/* ---- server -------------------------------------------------------------------------- */

typedef struct {
    char node_id[WIRE_NODE_ID_MAX + 1];
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    bool slow; /* its send queue was full: dropped until it reconnects (new routing id) */
} peer_t;

struct wire_server_t {
    void *ctx;
    void *router;
    void *zap; /* REP socket, used only by the ZAP thread once it runs */
    pthread_t zap_thread;
    bool zap_started;
    bool curve;
    wire_options_t opts;
    char endpoint[256];
    uint8_t instance_id[WIRE_INSTANCE_ID_LEN];
    pthread_mutex_t lock; /* allow, stats */
    wire_allow_entry_t *allow;
    size_t n_allow;
    wire_server_stats_t stats;
    peer_t *peers; /* touched only by the owning thread */
    size_t n_peers, cap_peers;
};

/* Looks a key up in the allowlist (caller holds the lock). */
static const wire_allow_entry_t *s_allow_find_key(const wire_server_t *self, const uint8_t *key)
{
    for (size_t i = 0; i < self->n_allow; i++)
        if (sodium_memcmp(self->allow[i].public_key, key, WIRE_KEY_LEN) == 0)
            return &self->allow[i];
    return NULL;
}

static int s_zap_send(void *sock, const char *s, size_t n, int flags)
{
    return zmq_send(sock, s, n, flags) < 0 ? -1 : 0;
}

/* One ZAP exchange (RFC 27): version, request id, domain, address, routing id, mechanism,
 * credentials... -> version, request id, status, text, user id, metadata. */
static void s_zap_handle(wire_server_t *self, void *sock)
{
    enum { MAXF = 8 };
    zmq_msg_t f[MAXF];
    size_t nf = 0;
    int more = 1;
    while (more) {
        zmq_msg_t spare, *m = nf < MAXF ? &f[nf] : &spare; /* frames past MAXF: dropped */
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, 0) < 0) {
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &spare)
            zmq_msg_close(m);
        else
            nf++;
    }
    if (nf < 6)
        goto out; /* libzmq never sends this; a REP socket cannot leave it unanswered, but
                     an incomplete request means the context is terminating. */
    const char *reqid = zmq_msg_data(&f[1]);
    size_t reqid_len = zmq_msg_size(&f[1]);
    char address[64] = "?";
    size_t al = zmq_msg_size(&f[3]) < sizeof address - 1 ? zmq_msg_size(&f[3]) : sizeof address - 1;
    memcpy(address, zmq_msg_data(&f[3]), al);
    address[al] = 0;
    const char *status = "400", *text = "key not enrolled";
    char user[WIRE_NODE_ID_MAX + 1] = "";
    uint8_t meta[1 + sizeof WIRE_KEY_PROPERTY + 4 + 2 * WIRE_KEY_LEN + 1];
    size_t meta_len = 0;
    bool is_curve = zmq_msg_size(&f[5]) == 5 && memcmp(zmq_msg_data(&f[5]), "CURVE", 5) == 0;
    if (!is_curve || nf < 7 || zmq_msg_size(&f[6]) != WIRE_KEY_LEN) {
        LOG_WARN(NET, "refused connection from %s: not a CURVE client", address);
        text = "CURVE required";
        pthread_mutex_lock(&self->lock);
        self->stats.zap_refused++;
        pthread_mutex_unlock(&self->lock);
    } else {
        const uint8_t *key = zmq_msg_data(&f[6]);
        char kid[WIRE_KEY_ID_LEN + 1];
        wire_key_id(key, kid);
        pthread_mutex_lock(&self->lock);
        const wire_allow_entry_t *e = s_allow_find_key(self, key);
        if (e) {
            snprintf(user, sizeof user, "%s", e->node_id);
            self->stats.zap_admitted++;
        } else {
            self->stats.zap_refused++;
        }
        pthread_mutex_unlock(&self->lock);
        if (user[0]) {
            status = "200", text = "OK";
            /* ZMTP metadata: name-len(1) name value-len(4, big endian) value. */
            size_t nl = strlen(WIRE_KEY_PROPERTY);
            meta[0] = (uint8_t)nl;
            memcpy(meta + 1, WIRE_KEY_PROPERTY, nl);
            uint32_t vl = 2 * WIRE_KEY_LEN;
            meta[1 + nl] = 0, meta[2 + nl] = 0, meta[3 + nl] = 0, meta[4 + nl] = (uint8_t)vl;
            char hex[2 * WIRE_KEY_LEN + 1];
            sodium_bin2hex(hex, sizeof hex, key, WIRE_KEY_LEN);
            memcpy(meta + 5 + nl, hex, vl);
            meta_len = 5 + nl + vl;
            LOG_INFO(NET, "admitted node '%s' (key %s) from %s", user, kid, address);
        } else {
            LOG_WARN(NET, "refused connection from %s: key %s is not enrolled", address, kid);
        }
    }
    if (s_zap_send(sock, "1.0", 3, ZMQ_SNDMORE) < 0 ||
        s_zap_send(sock, reqid, reqid_len, ZMQ_SNDMORE) < 0 ||
        s_zap_send(sock, status, 3, ZMQ_SNDMORE) < 0 ||
        s_zap_send(sock, text, strlen(text), ZMQ_SNDMORE) < 0 ||
        s_zap_send(sock, user, strlen(user), ZMQ_SNDMORE) < 0 ||
        s_zap_send(sock, (const char *)meta, meta_len, 0) < 0)
        LOG_WARN(NET, "ZAP reply failed: %s", zmq_strerror(errno));
out:
    for (size_t i = 0; i < nf; i++)
        zmq_msg_close(&f[i]);
}

static void *s_zap_thread(void *arg)
{
    wire_server_t *self = arg;
    void *sock = self->zap;
    for (;;) {
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, -1);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            break; /* ETERM: the context is shutting down */
        }
        s_zap_handle(self, sock);
    }
    zmq_close(sock);
    return NULL;
}

wire_server_t *wire_server_new(const char *endpoint, const uint8_t *secret_key,
                               const uint8_t *public_key, const wire_options_t *opts)
{
    if (!endpoint || (!secret_key) != (!public_key)) {
        medfl_error_set(MEDFL_EINVAL, "wire_server_new: endpoint and both keys (or neither) needed");
        return NULL;
    }
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "libsodium initialisation failed");
        return NULL;
    }
    wire_server_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "wire_server_new");
        return NULL;
    }
    pthread_mutex_init(&self->lock, NULL);
    if (opts)
        self->opts = *opts;
    else
        wire_options_default(&self->opts);
    self->curve = secret_key != NULL;
    randombytes_buf(self->instance_id, sizeof self->instance_id);
    if (s_check_options(&self->opts) < 0 ||
        (self->curve && s_check_keypair(public_key, secret_key, "server key") < 0))
        goto fail;
    self->ctx = zmq_ctx_new();
    if (!self->ctx) {
        medfl_error_set(MEDFL_EIO, "zmq context: %s", zmq_strerror(errno));
        goto fail;
    }
    if (self->curve) {
        /* The handler must be bound before the ROUTER accepts its first handshake. */
        self->zap = zmq_socket(self->ctx, ZMQ_REP);
        int linger = 0;
        if (!self->zap || zmq_setsockopt(self->zap, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
            zmq_bind(self->zap, "inproc://zeromq.zap.01") != 0) {
            medfl_error_set(MEDFL_EIO, "ZAP handler: %s", zmq_strerror(errno));
            goto fail;
        }
        if (pthread_create(&self->zap_thread, NULL, s_zap_thread, self) != 0) {
            medfl_error_set(MEDFL_EIO, "ZAP handler thread: %s", strerror(errno));
            goto fail;
        }
        self->zap_started = true;
    }
    self->router = zmq_socket(self->ctx, ZMQ_ROUTER);
    if (!self->router) {
        medfl_error_set(MEDFL_EIO, "ROUTER socket: %s", zmq_strerror(errno));
        goto fail;
    }
    /* The daemon's one thread must never wait on a peer: sends never block (SNDTIMEO 0) and
     * each peer's queue holds at most WIRE_SERVER_SNDHWM messages, so a node that stops
     * reading costs a bounded amount of memory and is dropped (s_send_rid) instead of
     * stalling every other node's deadlines and heartbeats (issue #16). */
    int one = 1, zero = 0, hwm = WIRE_SERVER_SNDHWM;
    if (s_common_sockopts(self->router, &self->opts) < 0 ||
        zmq_setsockopt(self->router, ZMQ_SNDTIMEO, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(self->router, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(self->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0) {
        medfl_error_set(MEDFL_EINVAL, "ROUTER options: %s", zmq_strerror(errno));
        goto fail;
    }
    if (self->curve &&
        (zmq_setsockopt(self->router, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
         zmq_setsockopt(self->router, ZMQ_CURVE_SECRETKEY, secret_key, WIRE_KEY_LEN) != 0 ||
         zmq_setsockopt(self->router, ZMQ_ZAP_DOMAIN, "medfl", 5) != 0)) {
        medfl_error_set(MEDFL_ECRYPTO, "CURVE server options: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_bind(self->router, endpoint) != 0) {
        medfl_error_set(MEDFL_EIO, "bind '%s': %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    size_t elen = sizeof self->endpoint;
    if (zmq_getsockopt(self->router, ZMQ_LAST_ENDPOINT, self->endpoint, &elen) != 0)
        snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    LOG_INFO(NET, "listening on %s (%s)", self->endpoint,
             self->curve ? "CURVE, enrolled keys only" : "PLAIN: no encryption, tests only");
    return self;
fail:
    wire_server_destroy(&self);
    return NULL;
}

void wire_server_destroy(wire_server_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    wire_server_t *self = *self_p;
    if (self->router) {
        int linger = 0;
        zmq_setsockopt(self->router, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(self->router);
    }
    if (self->ctx) {
        if (self->zap_started) {
            zmq_ctx_shutdown(self->ctx); /* wakes the ZAP thread with ETERM */
            pthread_join(self->zap_thread, NULL);
        } else if (self->zap) {
            zmq_close(self->zap);
        }
        zmq_ctx_term(self->ctx);
    }
    free(self->allow);
    free(self->peers);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

const char *wire_server_endpoint(const wire_server_t *self)
{
    return self->endpoint;
}

const uint8_t *wire_server_instance_id(const wire_server_t *self)
{
    return self->instance_id;
}

int wire_server_set_allowlist(wire_server_t *self, const wire_allow_entry_t *entries, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!wire_node_id_valid(entries[i].node_id))
            return medfl_error_set(MEDFL_EINVAL, "allowlist entry %zu: invalid node id", i);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(entries[i].node_id, entries[j].node_id) == 0)
                return medfl_error_set(MEDFL_EINVAL, "allowlist: node '%s' listed twice",
                                       entries[i].node_id);
            if (sodium_memcmp(entries[i].public_key, entries[j].public_key, WIRE_KEY_LEN) == 0)
                return medfl_error_set(MEDFL_EINVAL, "allowlist: nodes '%s' and '%s' share a key",
                                       entries[i].node_id, entries[j].node_id);
        }
    }
    wire_allow_entry_t *copy = NULL;
    if (n) {
        copy = malloc(n * sizeof *copy);
        if (!copy)
            return medfl_error_set(MEDFL_ENOMEM, "allowlist of %zu entries", n);
        memcpy(copy, entries, n * sizeof *copy);
    }
    pthread_mutex_lock(&self->lock);
    wire_allow_entry_t *old = self->allow;
    self->allow = copy;
    self->n_allow = n;
    pthread_mutex_unlock(&self->lock);
    free(old);
    LOG_INFO(NET, "allowlist replaced: %zu enrolled node(s)", n);
    return 0;
}

static peer_t *s_peer_find(const wire_server_t *self, const char *node_id)
{
    for (size_t i = 0; i < self->n_peers; i++)
        if (strcmp(self->peers[i].node_id, node_id) == 0)
            return &self->peers[i];
    return NULL;
}

/* A peer messages can be sent to: known and not dropped for a full queue. */
static peer_t *s_peer_reachable(const wire_server_t *self, const char *node_id)
{
    peer_t *p = s_peer_find(self, node_id);
    return p && !p->slow ? p : NULL;
}

/* Its queue is full: the node does not read what it is sent. Dropped (nothing more is
 * queued for it) until it reconnects; logged once. */
static void s_peer_slow(wire_server_t *self, peer_t *p)
{
    if (p->slow)
        return;
    p->slow = true;
    pthread_mutex_lock(&self->lock);
    self->stats.slow_drops++;
    pthread_mutex_unlock(&self->lock);
    LOG_WARN(NET, "node '%s' dropped: it does not read its messages (send queue of %d full); "
             "nothing more is sent to it until it reconnects", p->node_id, WIRE_SERVER_SNDHWM);
}

static peer_t *s_peer_by_rid(const wire_server_t *self, const uint8_t *rid, size_t rid_len)
{
    for (size_t i = 0; i < self->n_peers; i++)
        if (self->peers[i].rid_len == rid_len && memcmp(self->peers[i].rid, rid, rid_len) == 0)
            return &self->peers[i];
    return NULL;
}

static void s_peer_forget(wire_server_t *self, const char *node_id)
{
    peer_t *p = s_peer_find(self, node_id);
    if (p)
        *p = self->peers[--self->n_peers];
}

static void s_peer_note(wire_server_t *self, const char *node_id, const uint8_t *rid,
                        size_t rid_len)
{
    peer_t *p = s_peer_find(self, node_id);
    if (!p) {
        if (self->n_peers == self->cap_peers) {
            size_t cap = self->cap_peers ? 2 * self->cap_peers : 16;
            peer_t *np = realloc(self->peers, cap * sizeof *np);
            if (!np)
                return; /* the node stays unreachable until its next message */
            self->peers = np;
            self->cap_peers = cap;
        }
        p = &self->peers[self->n_peers++];
        memset(p, 0, sizeof *p);
        snprintf(p->node_id, sizeof p->node_id, "%s", node_id);
    }
    /* Still sending on the connection whose queue filled up: stays dropped. */
    if (p->rid_len != rid_len || memcmp(p->rid, rid, rid_len) != 0)
        p->slow = false;
    memcpy(p->rid, rid, rid_len);
    p->rid_len = rid_len;
}

bool wire_server_has_peer(const wire_server_t *self, const char *node_id)
{
    return node_id && s_peer_reachable(self, node_id) != NULL;
}

void wire_server_stats(wire_server_t *self, wire_server_stats_t *out)
{
    pthread_mutex_lock(&self->lock);
    *out = self->stats;
    pthread_mutex_unlock(&self->lock);
}

static void s_stat_inc(wire_server_t *self, uint64_t *field)
{
    pthread_mutex_lock(&self->lock);
    (*field)++;
    pthread_mutex_unlock(&self->lock);
}

/* Sends envelope (+ bulk) to a routing id; the msgs are consumed. */
static int s_send_rid(wire_server_t *self, const uint8_t *rid, size_t rid_len, zmq_msg_t *env,
                      zmq_msg_t *bulk, bool has_bulk)
{
    int err = 0;
    uint64_t bytes = zmq_msg_size(env) + (has_bulk ? zmq_msg_size(bulk) : 0);
    if (zmq_send(self->router, rid, rid_len, ZMQ_SNDMORE) < 0)
        err = errno;
    else if (zmq_msg_send(env, self->router, has_bulk ? ZMQ_SNDMORE : 0) < 0)
        err = errno;
    else if (has_bulk && zmq_msg_send(bulk, self->router, 0) < 0)
        err = errno;
    /* zmq_msg_send leaves a sent msg empty, so closing is right on every path. */
    zmq_msg_close(env);
    if (has_bulk)
        zmq_msg_close(bulk);
    if (!err) {
        pthread_mutex_lock(&self->lock);
        self->stats.bytes_sent += bytes;
        pthread_mutex_unlock(&self->lock);
    }
    if (err == EHOSTUNREACH)
        return medfl_error_set(MEDFL_ENOTFOUND, "peer is no longer connected");
    if (err == EAGAIN) {
        peer_t *p = s_peer_by_rid(self, rid, rid_len);
        if (p)
            s_peer_slow(self, p);
        return medfl_error_set(MEDFL_ETIMEOUT, "send queue full (%d messages): the peer does "
                               "not read, dropped", WIRE_SERVER_SNDHWM);
    }
    if (err)
        return medfl_error_set(MEDFL_EIO, "send: %s", zmq_strerror(err));
    return 0;
}

static int s_send_rid_error(wire_server_t *self, const uint8_t *rid, size_t rid_len,
                            uint64_t round_id, Medfl__ErrorCode code, const char *text)
{
    Medfl__Error e = MEDFL__ERROR__INIT;
    e.code = code;
    char t[WIRE_TEXT_MAX];
    snprintf(t, sizeof t, "%s", text);
    e.text = t;
    zmq_msg_t env, bulk;
    if (s_prepare(MEDFL__MSG_TYPE__MSG_ERROR, round_id, WIRE_SERVER_SENDER, &e.base, NULL, 0,
                  NULL, NULL, self->opts.max_bulk, &env, &bulk) < 0)
        return -1;
    return s_send_rid(self, rid, rid_len, &env, &bulk, false);
}

int wire_server_send(wire_server_t *self, const char *node_id, Medfl__MsgType type,
                     uint64_t round_id, const ProtobufCMessage *body, const void *bulk,
                     size_t bulk_len, wire_free_fn *free_fn, void *hint)
{
    peer_t *p = node_id ? s_peer_find(self, node_id) : NULL;
    if (!p || p->slow) {
        if (bulk && free_fn)
            free_fn((void *)bulk, hint);
        return medfl_error_set(MEDFL_ENOTFOUND, "send %s: node '%s' is %s", wire_type_name(type),
                               node_id ? node_id : "(null)",
                               p ? "dropped (it does not read its messages)" : "not connected");
    }
    zmq_msg_t env, bm;
    if (s_prepare(type, round_id, WIRE_SERVER_SENDER, body, bulk, bulk_len, free_fn, hint,
                  self->opts.max_bulk, &env, &bm) < 0)
        return medfl_error_prefix("send %s to '%s': ", wire_type_name(type), node_id);
    if (s_send_rid(self, p->rid, p->rid_len, &env, &bm, bulk != NULL) < 0) {
        if (medfl_error_code() == MEDFL_ENOTFOUND)
            s_peer_forget(self, node_id);
        return medfl_error_prefix("send %s to '%s': ", wire_type_name(type), node_id);
    }
    return 0;
}

int wire_server_send_many(wire_server_t *self, const char *const *node_ids, size_t n_nodes,
                          Medfl__MsgType type, uint64_t round_id, const ProtobufCMessage *body,
                          const void *bulk, size_t bulk_len, wire_free_fn *free_fn, void *hint)
{
    zmq_msg_t env, bm;
    if (s_prepare(type, round_id, WIRE_SERVER_SENDER, body, bulk, bulk_len, free_fn, hint,
                  self->opts.max_bulk, &env, &bm) < 0)
        return -1;
    int sent = 0;
    for (size_t i = 0; i < n_nodes; i++) {
        peer_t *p = s_peer_find(self, node_ids[i]);
        if (!p || p->slow) {
            LOG_WARN(NET, "send %s: node '%s' is %s", wire_type_name(type), node_ids[i],
                     p ? "dropped (it does not read its messages)" : "not connected");
            continue;
        }
        /* zmq_msg_copy shares the buffer (reference count): one bulk for all nodes. */
        zmq_msg_t e, b;
        zmq_msg_init(&e);
        zmq_msg_copy(&e, &env);
        if (bulk) {
            zmq_msg_init(&b);
            zmq_msg_copy(&b, &bm);
        }
        if (s_send_rid(self, p->rid, p->rid_len, &e, &b, bulk != NULL) < 0) {
            LOG_WARN(NET, "send %s to '%s': %s", wire_type_name(type), node_ids[i],
                     medfl_error_message());
            if (medfl_error_code() == MEDFL_ENOTFOUND)
                s_peer_forget(self, node_ids[i]);
            continue;
        }
        sent++;
    }
    zmq_msg_close(&env);
    if (bulk)
        zmq_msg_close(&bm);
    return sent;
}

int wire_server_send_error(wire_server_t *self, const char *node_id, uint64_t round_id,
                           Medfl__ErrorCode code, const char *text)
{
    Medfl__Error e = MEDFL__ERROR__INIT;
    e.code = code;
    char t[WIRE_TEXT_MAX];
    snprintf(t, sizeof t, "%s", text ? text : "");
    e.text = t;
    return wire_server_send(self, node_id, MEDFL__MSG_TYPE__MSG_ERROR, round_id, &e.base, NULL,
                            0, NULL, NULL);
}

/* Is (node_id, key hex) still enrolled? */
static bool s_still_enrolled(wire_server_t *self, const char *node_id, const char *key_hex)
{
    uint8_t key[WIRE_KEY_LEN];
    if (!key_hex || sodium_hex2bin(key, sizeof key, key_hex, strlen(key_hex), NULL, NULL, NULL) != 0)
        return false;
    bool ok = false;
    pthread_mutex_lock(&self->lock);
    const wire_allow_entry_t *e = s_allow_find_key(self, key);
    ok = e && strcmp(e->node_id, node_id) == 0;
    pthread_mutex_unlock(&self->lock);
    return ok;
}

int wire_server_recv(wire_server_t *self, wire_msg_t *msg, int timeout_ms)
{
    memset(msg, 0, sizeof *msg);
    zmq_pollitem_t it = {self->router, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&it, 1, timeout_ms);
    if (rc < 0) {
        if (errno == EINTR)
            return 0;
        return medfl_error_set(MEDFL_EIO, "poll: %s", zmq_strerror(errno));
    }
    if (rc == 0)
        return 0;
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    int rid_len = zmq_recv(self->router, rid, sizeof rid, ZMQ_DONTWAIT);
    if (rid_len < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        return medfl_error_set(MEDFL_EIO, "receive: %s", zmq_strerror(errno));
    }
    if ((size_t)rid_len > sizeof rid)
        rid_len = sizeof rid; /* libzmq routing ids are at most 255 bytes */
    zmq_msg_t env, bulk;
    bool has_bulk;
    size_t extra;
    if (s_recv_rest(self->router, &env, &bulk, &has_bulk, &extra) < 0)
        return -1;
    pthread_mutex_lock(&self->lock);
    self->stats.bytes_received += zmq_msg_size(&env) + (has_bulk ? zmq_msg_size(&bulk) : 0);
    pthread_mutex_unlock(&self->lock);

    /* Who sent it: the ZAP User-Id under CURVE (the key decided), the claim in plain mode. */
    char key_hex[2 * WIRE_KEY_LEN + 1] = "";
    if (self->curve) {
        const char *uid = zmq_msg_gets(&env, "User-Id");
        const char *k = zmq_msg_gets(&env, WIRE_KEY_PROPERTY);
        if (!uid || !wire_node_id_valid(uid) || !k) {
            zmq_msg_close(&env);
            if (has_bulk)
                zmq_msg_close(&bulk);
            s_stat_inc(self, &self->stats.rejected);
            LOG_WARN(NET, "dropped message from an unauthenticated connection");
            return medfl_error_set(MEDFL_EPERM, "message without an authenticated node id");
        }
        snprintf(msg->node_id, sizeof msg->node_id, "%s", uid);
        snprintf(key_hex, sizeof key_hex, "%s", k);
        if (!s_still_enrolled(self, msg->node_id, key_hex)) {
            zmq_msg_close(&env);
            if (has_bulk)
                zmq_msg_close(&bulk);
            s_stat_inc(self, &self->stats.revoked_drops);
            s_peer_forget(self, msg->node_id);
            LOG_WARN(NET, "dropped message from node '%s': no longer enrolled (revoked)",
                     msg->node_id);
            s_send_rid_error(self, rid, (size_t)rid_len, 0, MEDFL__ERROR_CODE__ERROR_REVOKED,
                             "this node's key is no longer enrolled");
            return medfl_error_set(MEDFL_EPERM, "node '%s' is no longer enrolled", msg->node_id);
        }
    }

    if (s_fill_msg(msg, &env, &bulk, has_bulk, extra, self->opts.max_bulk) < 0) {
        medfl_err_t code = medfl_error_code();
        char reason[512];
        snprintf(reason, sizeof reason, "%s", medfl_error_message());
        s_stat_inc(self, &self->stats.rejected);
        LOG_WARN(NET, "rejected message from %s: %s", msg->node_id[0] ? msg->node_id : "unknown node",
                 reason);
        s_send_rid_error(self, rid, (size_t)rid_len, 0,
                         code == MEDFL_EUNSUPPORTED ? MEDFL__ERROR_CODE__ERROR_VERSION
                                                    : MEDFL__ERROR_CODE__ERROR_PROTOCOL,
                         reason);
        return medfl_error_set(code, "%s", reason);
    }
    if (self->curve && strcmp(msg->_dec.sender, msg->node_id) != 0) {
        char claimed[WIRE_NODE_ID_MAX + 1];
        snprintf(claimed, sizeof claimed, "%s", msg->_dec.sender);
        char who[WIRE_NODE_ID_MAX + 1];
        snprintf(who, sizeof who, "%s", msg->node_id);
        wire_msg_close(msg);
        snprintf(msg->node_id, sizeof msg->node_id, "%s", who);
        s_stat_inc(self, &self->stats.rejected);
        LOG_WARN(NET, "rejected message from node '%s': envelope claims sender '%s'", who, claimed);
        s_send_rid_error(self, rid, (size_t)rid_len, 0, MEDFL__ERROR_CODE__ERROR_PROTOCOL,
                         "envelope sender does not match the authenticated key");
        return medfl_error_set(MEDFL_EPROTO, "node '%s' claimed to be '%s'", who, claimed);
    }
    if (!self->curve)
        snprintf(msg->node_id, sizeof msg->node_id, "%s", msg->_dec.sender);
    s_peer_note(self, msg->node_id, rid, (size_t)rid_len);
    s_stat_inc(self, &self->stats.received);
    if (msg->type == MEDFL__MSG_TYPE__MSG_HEARTBEAT && s_peer_reachable(self, msg->node_id)) {
        Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
        hb.sent_unix_ms = s_unix_ms();
        zmq_msg_t e, b;
        if (s_prepare(MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, WIRE_SERVER_SENDER, &hb.base, NULL, 0,
                      NULL, NULL, self->opts.max_bulk, &e, &b) == 0 &&
            s_send_rid(self, rid, (size_t)rid_len, &e, &b, false) < 0)
            LOG_DEBUG(NET, "heartbeat reply to '%s': %s", msg->node_id, medfl_error_message());
    }
    return 1;
}

/* ---- client -------------------------------------------------------------------------- */

struct wire_client_t {
    void *ctx;
    void *dealer;
    void *monitor;
    char node_id[WIRE_NODE_ID_MAX + 1];
    char endpoint[256];
    wire_options_t opts;
    uint64_t connections;
    bool connected;
    bool auth_refused;
    bool handshake_failed; /* disconnected after a failed handshake: we redial at retry_at_ms */
    int64_t retry_at_ms;
    int64_t retry_delay_ms; /* backoff step of the latest failure, 0 after a success */
    int64_t last_rx_ms; /* -1 = never */
    int64_t last_hb_ms;
    uint64_t bytes_sent, bytes_received; /* envelope + bulk, for metrics */
};

wire_client_t *wire_client_new(const char *endpoint, const uint8_t *server_public_key,
                               const uint8_t *client_public_key,
                               const uint8_t *client_secret_key, const char *node_id,
                               const wire_options_t *opts)
{
    bool curve = server_public_key || client_public_key || client_secret_key;
    if (!endpoint || !wire_node_id_valid(node_id) ||
        (curve && !(server_public_key && client_public_key && client_secret_key))) {
        medfl_error_set(MEDFL_EINVAL,
                        "wire_client_new: endpoint, a valid node id and all three keys (or none) needed");
        return NULL;
    }
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "libsodium initialisation failed");
        return NULL;
    }
    wire_client_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "wire_client_new");
        return NULL;
    }
    snprintf(self->node_id, sizeof self->node_id, "%s", node_id);
    snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    if (opts)
        self->opts = *opts;
    else
        wire_options_default(&self->opts);
    self->last_rx_ms = -1;
    self->last_hb_ms = s_now_ms();
    if (s_check_options(&self->opts) < 0 ||
        (curve && s_check_keypair(client_public_key, client_secret_key, "node key") < 0))
        goto fail;
    self->ctx = zmq_ctx_new();
    if (!self->ctx) {
        medfl_error_set(MEDFL_EIO, "zmq context: %s", zmq_strerror(errno));
        goto fail;
    }
    self->dealer = zmq_socket(self->ctx, ZMQ_DEALER);
    if (!self->dealer) {
        medfl_error_set(MEDFL_EIO, "DEALER socket: %s", zmq_strerror(errno));
        goto fail;
    }
    if (s_common_sockopts(self->dealer, &self->opts) < 0 ||
        zmq_setsockopt(self->dealer, ZMQ_RECONNECT_IVL, &self->opts.reconnect_ivl_ms, sizeof(int)) != 0 ||
        zmq_setsockopt(self->dealer, ZMQ_RECONNECT_IVL_MAX, &self->opts.reconnect_ivl_max_ms,
                       sizeof(int)) != 0 ||
        /* A reconnect to an address that no longer answers (the aggregator restarted under
         * another IP, as containers do) would otherwise hang in the kernel's SYN retries for
         * about two minutes; giving up after the peer-gone time makes libzmq retry soon and
         * resolve the host name again. */
        zmq_setsockopt(self->dealer, ZMQ_CONNECT_TIMEOUT, &self->opts.heartbeat_timeout_ms,
                       sizeof(int)) != 0) {
        medfl_error_set(MEDFL_EINVAL, "socket options: %s", zmq_strerror(errno));
        goto fail;
    }
    if (curve && (zmq_setsockopt(self->dealer, ZMQ_CURVE_SERVERKEY, server_public_key, WIRE_KEY_LEN) != 0 ||
                  zmq_setsockopt(self->dealer, ZMQ_CURVE_PUBLICKEY, client_public_key, WIRE_KEY_LEN) != 0 ||
                  zmq_setsockopt(self->dealer, ZMQ_CURVE_SECRETKEY, client_secret_key, WIRE_KEY_LEN) != 0)) {
        medfl_error_set(MEDFL_ECRYPTO, "CURVE client options: %s", zmq_strerror(errno));
        goto fail;
    }
    /* The monitor tells us about (re)connections and ZAP refusals; libzmq does the
     * reconnecting itself. The address only has to be unique within our own context. */
    char mon[64];
    snprintf(mon, sizeof mon, "inproc://medfl-wire-monitor");
    if (zmq_socket_monitor(self->dealer, mon,
                           ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0 ||
        !(self->monitor = zmq_socket(self->ctx, ZMQ_PAIR)) || zmq_connect(self->monitor, mon) != 0) {
        medfl_error_set(MEDFL_EIO, "socket monitor: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_connect(self->dealer, endpoint) != 0) {
        medfl_error_set(MEDFL_EIO, "connect '%s': %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    LOG_INFO(NET, "node '%s' connecting to %s (%s)", node_id, endpoint,
             curve ? "CURVE" : "PLAIN: no encryption, tests only");
    return self;
fail:
    wire_client_destroy(&self);
    return NULL;
}

void wire_client_destroy(wire_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    wire_client_t *self = *self_p;
    if (self->dealer) {
        zmq_socket_monitor(self->dealer, NULL, 0);
        zmq_close(self->dealer);
    }
    if (self->monitor) {
        int linger = 0;
        zmq_setsockopt(self->monitor, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(self->monitor);
    }
    if (self->ctx)
        zmq_ctx_term(self->ctx);
    free(self);
    *self_p = NULL;
}

/* Next backoff step: reconnect_ivl_max_ms, then doubling up to handshake_retry_max_ms,
 * jittered by +-20% so nodes refused together (an aggregator whose key was replaced) do
 * not redial in lockstep. */
static int64_t s_next_retry_delay(wire_client_t *self)
{
    int64_t d = self->retry_delay_ms ? 2 * self->retry_delay_ms : self->opts.reconnect_ivl_max_ms;
    if (d > self->opts.handshake_retry_max_ms) d = self->opts.handshake_retry_max_ms;
    self->retry_delay_ms = d;
    int64_t span = d * 2 / 5; /* 40% of d, centred */
    return d - span / 2 + (span > 0 ? (int64_t)randombytes_uniform((uint32_t)span + 1) : 0);
}

/* A refused handshake: libzmq would redial a server that hangs up on a wrong CURVE key
 * every reconnect_ivl_ms (several times a second, forever), and gives a ZAP refusal up
 * for good. Either way we take the connection down ourselves and redial after a backoff
 * step (s_redial), logging one error per step that says what to check. Events arriving
 * while a redial is pending belong to the attempt already reported. */
static void s_handshake_failed(wire_client_t *self, uint16_t event, uint32_t value)
{
    self->connected = false;
    if (self->handshake_failed) return;
    self->handshake_failed = true;
    zmq_disconnect(self->dealer, self->endpoint); /* ENOENT when libzmq already dropped it */
    int64_t delay = s_next_retry_delay(self);
    self->retry_at_ms = s_now_ms() + delay;
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
        self->auth_refused = true;
        LOG_ERROR(NET, "aggregator at %s refused this node's key (not enrolled, or revoked; "
                       "status %u); retrying in %.1f s — the consortium enrolls it with "
                       "`medfl-aggregator enroll NODE_ID CURVE_PUBKEY`",
                  self->endpoint, value, (double)delay / 1000.0);
        return;
    }
    const char *origin = self->opts.server_key_origin;
    LOG_ERROR(NET, "CURVE handshake with %s refused: the aggregator's key does not match %s%s "
                   "(or the endpoint is not a medfl aggregator; code %u); retrying in %.1f s — "
                   "check that it holds the aggregator's curve.pub (printed by "
                   "`medfl-aggregator keygen`) and that the endpoint is right",
              self->endpoint, origin[0] ? "" : "the configured server key", origin, value,
              (double)delay / 1000.0);
}

/* Drains pending monitor events (frame 1: uint16 event + uint32 value; frame 2: address). */
static void s_monitor_drain(wire_client_t *self)
{
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, self->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (uint8_t *)zmq_msg_data(&ev) + 2, 4);
        }
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        while (more) {
            zmq_msg_t x;
            zmq_msg_init(&x);
            if (zmq_msg_recv(&x, self->monitor, 0) < 0) {
                zmq_msg_close(&x);
                break;
            }
            more = zmq_msg_more(&x);
            zmq_msg_close(&x);
        }
        switch (event) {
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
            self->connections++;
            self->connected = true;
            self->auth_refused = false;
            self->retry_delay_ms = 0;
            LOG_INFO(NET, "connected to %s (connection %" PRIu64 ")", self->endpoint,
                     self->connections);
            break;
        case ZMQ_EVENT_DISCONNECTED:
            if (self->connected)
                LOG_WARN(NET, "disconnected from %s; reconnecting", self->endpoint);
            self->connected = false;
            break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            s_handshake_failed(self, event, value);
            break;
        default:
            break;
        }
    }
}

/* The redial after a failed handshake (s_handshake_failed): a refused node may be
 * enrolled a minute later, a wrong key replaced; each attempt is one handshake. */
static void s_redial(wire_client_t *self)
{
    if (!self->handshake_failed || s_now_ms() < self->retry_at_ms)
        return;
    self->handshake_failed = false;
    if (zmq_connect(self->dealer, self->endpoint) != 0)
        LOG_WARN(NET, "reconnect to %s: %s", self->endpoint, zmq_strerror(errno));
}

uint64_t wire_client_connections(wire_client_t *self)
{
    s_monitor_drain(self);
    s_redial(self);
    return self->connections;
}

bool wire_client_connected(wire_client_t *self)
{
    s_monitor_drain(self);
    return self->connected;
}

bool wire_client_auth_refused(wire_client_t *self)
{
    s_monitor_drain(self);
    return self->auth_refused;
}

int64_t wire_client_ms_since_rx(const wire_client_t *self)
{
    return self->last_rx_ms < 0 ? -1 : s_now_ms() - self->last_rx_ms;
}

void wire_client_traffic(const wire_client_t *self, uint64_t *sent, uint64_t *received)
{
    *sent = self->bytes_sent;
    *received = self->bytes_received;
}

int wire_client_send(wire_client_t *self, Medfl__MsgType type, uint64_t round_id,
                     const ProtobufCMessage *body, const void *bulk, size_t bulk_len,
                     wire_free_fn *free_fn, void *hint)
{
    zmq_msg_t env, bm;
    if (s_prepare(type, round_id, self->node_id, body, bulk, bulk_len, free_fn, hint,
                  self->opts.max_bulk, &env, &bm) < 0)
        return medfl_error_prefix("send %s: ", wire_type_name(type));
    int err = 0;
    uint64_t bytes = zmq_msg_size(&env) + (bulk ? zmq_msg_size(&bm) : 0);
    if (zmq_msg_send(&env, self->dealer, bulk ? ZMQ_SNDMORE : 0) < 0)
        err = errno;
    else if (bulk && zmq_msg_send(&bm, self->dealer, 0) < 0)
        err = errno;
    zmq_msg_close(&env);
    if (bulk)
        zmq_msg_close(&bm);
    if (!err)
        self->bytes_sent += bytes;
    if (err == EAGAIN)
        return medfl_error_set(MEDFL_ETIMEOUT, "send %s: queue to %s full for %d ms",
                               wire_type_name(type), self->endpoint, self->opts.send_timeout_ms);
    if (err)
        return medfl_error_set(MEDFL_EIO, "send %s: %s", wire_type_name(type), zmq_strerror(err));
    return 0;
}

int wire_client_tick(wire_client_t *self)
{
    s_monitor_drain(self);
    s_redial(self);
    int64_t now = s_now_ms();
    if (!self->connected || now - self->last_hb_ms < self->opts.heartbeat_ivl_ms)
        return 0;
    self->last_hb_ms = now;
    Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
    hb.sent_unix_ms = s_unix_ms();
    return wire_client_send(self, MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, &hb.base, NULL, 0, NULL,
                            NULL);
}

int wire_client_recv(wire_client_t *self, wire_msg_t *msg, int timeout_ms)
{
    memset(msg, 0, sizeof *msg);
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : s_now_ms() + timeout_ms;
    for (;;) {
        if (wire_client_tick(self) < 0)
            LOG_DEBUG(NET, "heartbeat: %s", medfl_error_message());
        int64_t now = s_now_ms();
        if (now > deadline)
            return 0;
        int64_t wait = self->last_hb_ms + self->opts.heartbeat_ivl_ms - now;
        if (wait < 1)
            wait = 1;
        if (deadline != INT64_MAX && deadline - now < wait)
            wait = deadline - now;
        zmq_pollitem_t it[2] = {{self->dealer, 0, ZMQ_POLLIN, 0}, {self->monitor, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(it, 2, (long)wait);
        if (rc < 0) {
            if (errno == EINTR)
                return 0;
            return medfl_error_set(MEDFL_EIO, "poll: %s", zmq_strerror(errno));
        }
        if (it[1].revents & ZMQ_POLLIN)
            s_monitor_drain(self);
        if (!(it[0].revents & ZMQ_POLLIN)) {
            if (s_now_ms() >= deadline)
                return 0;
            continue;
        }
        zmq_msg_t env, bulk;
        bool has_bulk;
        size_t extra;
        if (s_recv_rest(self->dealer, &env, &bulk, &has_bulk, &extra) < 0)
            return -1;
        self->last_rx_ms = s_now_ms();
        self->bytes_received += zmq_msg_size(&env) + (has_bulk ? zmq_msg_size(&bulk) : 0);
        snprintf(msg->node_id, sizeof msg->node_id, "%s", WIRE_SERVER_SENDER);
        if (s_fill_msg(msg, &env, &bulk, has_bulk, extra, self->opts.max_bulk) < 0) {
            LOG_WARN(NET, "rejected message from the aggregator: %s", medfl_error_message());
            return -1;
        }
        if (strcmp(msg->_dec.sender, WIRE_SERVER_SENDER) != 0) {
            wire_msg_close(msg);
            LOG_WARN(NET, "rejected message from the aggregator: sender is not '%s'",
                     WIRE_SERVER_SENDER);
            return medfl_error_set(MEDFL_EPROTO, "message sender is not '%s'", WIRE_SERVER_SENDER);
        }
        if (msg->type == MEDFL__MSG_TYPE__MSG_HEARTBEAT) {
            wire_msg_close(msg);
            if (s_now_ms() >= deadline)
                return 0;
            continue;
        }
        return 1;
    }
}
