/* Event loop of the aggregator daemon. Identity of a sender always comes from its CURVE
 * key (the ZAP handler's User-Id, reported by wire as msg.node_id), never from what the
 * message claims; the registry is the single source of truth for enrollment, re-read
 * whenever another process (enroll / revoke) commits to it, so the allowlist follows
 * without a restart. Anything malformed or unexpected is logged with its reason and
 * answered with an Error; the daemon itself never stops for a peer's fault. */
#include "aggregator/aggregator.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/service.h"
#include "common/store.h"
#include "common/version_store.h"
#include "common/wire.h"
#include "aggregator/rounds.h"
#include "aggregator/versions.h"

#define AGG_TICK_MS 250 /* housekeeping period: timeouts, registry poll, status heartbeat */

typedef struct {
    char node_id[WIRE_NODE_ID_MAX + 1];
    char key_id[KEYS_ID_LEN + 1];
    int64_t last_rx_ms;      /* monotonic time of the last message */
    int64_t last_written_s;  /* last_seen already written to the registry */
    uint8_t identity_pk[KEYS_SIGN_PUBLIC_BYTES]; /* pinned identity, checked at hello */
    uint64_t n_records;      /* announced in hello */
    bool connected;          /* false: silent past heartbeat_timeout_ms; kept so that a node
                              * that was only busy is re-admitted by its next message */
} agg_peer_t;

struct aggregator_t {
    agg_config_t cfg;
    char config_path[CFG_STR_MAX];
    keys_t *keys;
    store_t *store;
    wire_server_t *server;
    char instance_hex[2 * WIRE_INSTANCE_ID_LEN + 1];
    int64_t data_version;
    int64_t next_poll_ms;
    int64_t next_alive_s;
    int64_t next_tick_ms;
    unsigned socket_errors;
    agg_peer_t *peers;  /* nodes that said Hello on their current connection */
    size_t n_peers, cap_peers;
    rounds_t *rounds;   /* the federation's round state machine */
    rounds_peer_t *round_peers;
    metrics_t *metrics; /* NULL when metrics.listen = off or the endpoint failed */
    uint64_t m_sent, m_received; /* wire traffic already added to the counters */
    uint8_t allow_digest[32]; /* of the allowlist last handed to wire: reloads log changes only */
    int lock_fd;        /* state folder lock, held for the process lifetime */
    size_t bulk_max;    /* largest bulk frame, sized at start (aggregator_bulk_max) */
    size_t bulk_warned; /* head parameter count already reported as above bulk_max */
};

static agg_peer_t *s_peer_find(aggregator_t *self, const char *node_id)
{
    for (size_t i = 0; i < self->n_peers; i++)
        if (strcmp(self->peers[i].node_id, node_id) == 0) return &self->peers[i];
    return NULL;
}

static size_t s_connected_count(const aggregator_t *self)
{
    size_t n = 0;
    for (size_t i = 0; i < self->n_peers; i++) n += self->peers[i].connected;
    return n;
}

static void s_peer_set_connected(aggregator_t *self, agg_peer_t *p, bool on)
{
    p->connected = on;
    if (store_node_set_connected(self->store, p->node_id, on) != 0 &&
        medfl_error_code() != MEDFL_ENOTFOUND)
        LOG_WARN(AGG, "registry: %s", medfl_error_message());
    metrics_set(self->metrics, "connected_nodes", NULL, (double)s_connected_count(self));
}

static void s_peer_remove(aggregator_t *self, agg_peer_t *p)
{
    size_t i = (size_t)(p - self->peers);
    self->peers[i] = self->peers[--self->n_peers];
    metrics_set(self->metrics, "connected_nodes", NULL, (double)s_connected_count(self));
}

static agg_peer_t *s_peer_add(aggregator_t *self, const char *node_id)
{
    agg_peer_t *p = s_peer_find(self, node_id);
    if (p) return p;
    if (self->n_peers == self->cap_peers) {
        size_t cap = self->cap_peers ? self->cap_peers * 2 : 16;
        agg_peer_t *grown = realloc(self->peers, cap * sizeof *grown);
        if (!grown) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory for node sessions");
            return NULL;
        }
        self->peers = grown;
        self->cap_peers = cap;
    }
    p = &self->peers[self->n_peers++];
    memset(p, 0, sizeof *p);
    snprintf(p->node_id, sizeof p->node_id, "%s", node_id);
    return p;
}

/* Re-reads the registry and hands the active nodes to the ZAP handler. Sessions of nodes
 * that are no longer active are told REVOKED and dropped here (wire also drops their
 * later messages), which is what cuts a revoked node off without a restart. */
static int s_reload_allowlist(aggregator_t *self)
{
    store_node_t *nodes = NULL;
    size_t n = 0;
    if (store_node_list(self->store, &nodes, &n) != 0) return -1;
    wire_allow_entry_t *allow = calloc(n ? n : 1, sizeof *allow);
    if (!allow) {
        free(nodes);
        return medfl_error_set(MEDFL_ENOMEM, "out of memory for the allowlist");
    }
    size_t n_allow = 0;
    /* The registry changes for many reasons (this daemon's own journal and last_seen writes
     * among them): the allowlist is logged only when its set of (node, key) changed. */
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, sizeof self->allow_digest);
    for (size_t i = 0; i < n; i++) {
        if (nodes[i].revoked_at) continue;
        snprintf(allow[n_allow].node_id, sizeof allow[n_allow].node_id, "%s", nodes[i].node_id);
        memcpy(allow[n_allow].public_key, nodes[i].curve_public, WIRE_KEY_LEN);
        crypto_generichash_update(&h, (const uint8_t *)allow[n_allow].node_id,
                                  sizeof allow[n_allow].node_id);
        crypto_generichash_update(&h, allow[n_allow].public_key, WIRE_KEY_LEN);
        n_allow++;
    }
    uint8_t digest[sizeof self->allow_digest];
    crypto_generichash_final(&h, digest, sizeof digest);
    if (sodium_memcmp(digest, self->allow_digest, sizeof digest) == 0) {
        LOG_DEBUG(NET, "registry changed, allowlist unchanged (%zu active)", n_allow);
        free(allow);
        free(nodes);
        return 0;
    }
    int rc = wire_server_set_allowlist(self->server, allow, n_allow);
    free(allow);
    if (rc == 0) {
        memcpy(self->allow_digest, digest, sizeof digest);
        LOG_INFO(NET, "allowlist loaded: %zu enrolled node(s) active, %zu revoked", n_allow,
                 n - n_allow);
        for (size_t i = 0; i < self->n_peers;) {
            agg_peer_t *p = &self->peers[i];
            bool active = false;
            for (size_t j = 0; j < n; j++)
                if (strcmp(nodes[j].node_id, p->node_id) == 0 && !nodes[j].revoked_at)
                    active = true;
            if (active) {
                i++;
                continue;
            }
            LOG_WARN(NET, "node %s (key %s) is no longer enrolled: cutting its session off",
                     p->node_id, p->key_id);
            wire_server_send_error(self->server, p->node_id, 0, MEDFL__ERROR_CODE__ERROR_REVOKED,
                                   "this node's enrollment was revoked");
            s_peer_set_connected(self, p, false);
            s_peer_remove(self, p);
        }
    }
    free(nodes);
    return rc;
}

static void s_send_error(aggregator_t *self, const char *node_id, Medfl__ErrorCode code,
                         const char *text)
{
    if (wire_server_send_error(self->server, node_id, 0, code, text) != 0)
        LOG_WARN(NET, "cannot send error to node %s: %s", node_id, medfl_error_message());
}

static void s_on_hello(aggregator_t *self, const wire_msg_t *msg)
{
    const Medfl__Hello *hello = msg->body.hello;
    const char *who = msg->node_id;
    if (!hello->node_id || strcmp(hello->node_id, who) != 0) {
        LOG_WARN(NET, "hello from node %s claims node id '%s': refused", who,
                 hello->node_id ? hello->node_id : "");
        s_send_error(self, who, MEDFL__ERROR_CODE__ERROR_PROTOCOL,
                     "hello names another node than the one your key is enrolled as");
        return;
    }
    if (hello->identity_pk.len != KEYS_SIGN_PUBLIC_BYTES) {
        LOG_WARN(NET, "hello from node %s: identity key of %zu bytes, expected %d: refused", who,
                 hello->identity_pk.len, KEYS_SIGN_PUBLIC_BYTES);
        s_send_error(self, who, MEDFL__ERROR_CODE__ERROR_PROTOCOL, "identity key must be 32 bytes");
        return;
    }
    store_node_t rec;
    if (store_node_get(self->store, who, &rec) != 0 || rec.revoked_at) {
        /* Revoked between the ZAP check and now: the registry wins. */
        LOG_WARN(NET, "hello from node %s, which is not enrolled (any more): refused", who);
        s_send_error(self, who, MEDFL__ERROR_CODE__ERROR_REVOKED, "not enrolled");
        return;
    }
    char key_id[KEYS_ID_LEN + 1];
    keys_key_id(rec.curve_public, key_id);
    if (rec.has_identity) {
        if (sodium_memcmp(rec.identity_public, hello->identity_pk.data, KEYS_SIGN_PUBLIC_BYTES) != 0) {
            LOG_WARN(CRYPTO, "hello from node %s (key %s): identity key differs from the enrolled "
                     "one: refused", who, key_id);
            s_send_error(self, who, MEDFL__ERROR_CODE__ERROR_PROTOCOL,
                         "identity key does not match this node's enrollment");
            return;
        }
    } else if (store_node_pin_identity(self->store, who, hello->identity_pk.data) == 0) {
        LOG_INFO(CRYPTO, "node %s: identity key pinned from its first hello", who);
    } else {
        LOG_WARN(AGG, "registry: %s", medfl_error_message());
    }

    const Medfl__Capabilities *caps = hello->capabilities;
    const char *device = caps && caps->device ? caps->device : "";
    uint64_t n_records = caps ? caps->n_records : 0;
    const char *software = caps && caps->software_version ? caps->software_version : "";
    int64_t now_s = (int64_t)time(NULL);
    if (store_node_hello(self->store, who, now_s, device,
                         n_records > INT64_MAX ? INT64_MAX : (int64_t)n_records, software) != 0)
        LOG_WARN(AGG, "registry: %s", medfl_error_message());

    agg_peer_t *p = s_peer_add(self, who);
    if (!p) {
        LOG_ERROR(AGG, "%s", medfl_error_message());
        return;
    }
    snprintf(p->key_id, sizeof p->key_id, "%s", key_id);
    p->connected = true;
    metrics_set(self->metrics, "connected_nodes", NULL, (double)s_connected_count(self));
    p->last_rx_ms = service_now_ms();
    p->last_written_s = now_s;
    memcpy(p->identity_pk, hello->identity_pk.data, KEYS_SIGN_PUBLIC_BYTES);
    p->n_records = n_records;
    rounds_on_hello(self->rounds, who, caps ? caps->model_version : 0);

    Medfl__Welcome welcome = MEDFL__WELCOME__INIT;
    welcome.instance_id.data = (uint8_t *)wire_server_instance_id(self->server);
    welcome.instance_id.len = WIRE_INSTANCE_ID_LEN;
    welcome.heartbeat_ivl_ms = (uint32_t)self->cfg.heartbeat_ivl_ms;
    if (wire_server_send(self->server, who, MEDFL__MSG_TYPE__MSG_WELCOME, 0,
                         &welcome.base, NULL, 0, NULL, NULL) != 0) {
        LOG_WARN(NET, "cannot welcome node %s: %s", who, medfl_error_message());
        return;
    }
    LOG_INFO(NET, "node %s (key %s) connected: device %s, %llu records, software %s", who, key_id,
             device[0] ? device : "?", (unsigned long long)n_records, software[0] ? software : "?");
}

/* A round message; an evaluation the round accepted also goes into the contribution
 * history that weighs the next rounds. 1 when the type belongs to rounds. */
static int s_round_message(aggregator_t *self, wire_msg_t *msg)
{
    if (rounds_on_message(self->rounds, msg, service_now_ms()) != 1) return 0;
    rounds_record_eval(self->rounds, msg);
    return 1;
}

static void s_on_message(aggregator_t *self, wire_msg_t *msg)
{
    agg_peer_t *p = s_peer_find(self, msg->node_id);
    if (msg->type == MEDFL__MSG_TYPE__MSG_HELLO) {
        s_on_hello(self, msg);
        return;
    }
    if (!p && s_round_message(self, msg) == 1) {
        /* A round message from an enrolled node (CURVE proved who it is) whose session
         * timed out while it trained without sending heartbeats: the round still counts
         * it; the node says hello again by itself once its loop runs. */
        return;
    }
    if (!p) {
        /* Typically a node whose session predates a restart of this daemon: asking for a
         * hello lets it re-establish the session at once. */
        if (msg->type == MEDFL__MSG_TYPE__MSG_HEARTBEAT) /* routine: a node's first
                                                             * heartbeat can overtake its hello */
            LOG_DEBUG(NET, "HEARTBEAT from node %s before its hello: asking it to say hello",
                      msg->node_id);
        else
            LOG_INFO(NET, "%s from node %s before its hello: asking it to say hello",
                     wire_type_name(msg->type), msg->node_id);
        s_send_error(self, msg->node_id, MEDFL__ERROR_CODE__ERROR_STATE, "say hello first");
        return;
    }
    if (!p->connected) {
        /* Marked disconnected for silence, but its session is intact (CURVE proved the
         * sender): it was busy, not gone. Re-admitted without a new hello, which would also
         * drop it from the round it is working on. */
        LOG_INFO(NET, "node %s heard again after %lld ms of silence: session resumed",
                 p->node_id, (long long)(service_now_ms() - p->last_rx_ms));
        s_peer_set_connected(self, p, true);
    }
    p->last_rx_ms = service_now_ms();
    int64_t now_s = (int64_t)time(NULL);
    if (now_s != p->last_written_s) {
        if (store_node_seen(self->store, p->node_id, now_s) != 0)
            LOG_WARN(AGG, "registry: %s", medfl_error_message());
        p->last_written_s = now_s;
    }
    switch (msg->type) {
    case MEDFL__MSG_TYPE__MSG_HEARTBEAT:
        break; /* answered by wire; liveness recorded above */
    case MEDFL__MSG_TYPE__MSG_ERROR:
        LOG_WARN(NET, "node %s reports error %d: %s", p->node_id, (int)msg->body.error->code,
                 msg->body.error->text ? msg->body.error->text : "");
        break;
    default:
        if (s_round_message(self, msg) == 1) break;
        LOG_WARN(NET, "unexpected %s from node %s: not handled by the aggregator",
                 wire_type_name(msg->type), p->node_id);
        s_send_error(self, p->node_id, MEDFL__ERROR_CODE__ERROR_STATE, "no round in progress");
        break;
    }
}

static void s_housekeeping(aggregator_t *self)
{
    int64_t now = service_now_ms();
    for (size_t i = 0; i < self->n_peers;) {
        agg_peer_t *p = &self->peers[i];
        int64_t silent = now - p->last_rx_ms;
        /* The transport drops a node whose send queue filled up (it does not read): its
         * session ends too, so no round waits for it; it must say hello again. */
        if (!wire_server_has_peer(self->server, p->node_id)) {
            LOG_WARN(NET, "node %s dropped by the transport (not reading, or gone): session "
                     "ended", p->node_id);
            s_peer_set_connected(self, p, false);
            s_peer_remove(self, p);
            continue;
        }
        i++;
        /* A silent node keeps its session record: its next message re-admits it. */
        if (!p->connected || silent <= self->cfg.heartbeat_timeout_ms) continue;
        LOG_WARN(NET, "node %s silent for %lld ms: marked disconnected", p->node_id,
                 (long long)silent);
        s_peer_set_connected(self, p, false);
    }
    if (now >= self->next_poll_ms) {
        self->next_poll_ms = now + self->cfg.registry_poll_ms;
        int64_t v;
        if (store_data_version(self->store, &v) != 0) {
            LOG_WARN(AGG, "registry: %s", medfl_error_message());
        } else if (v != self->data_version) {
            self->data_version = v;
            if (s_reload_allowlist(self) != 0)
                LOG_ERROR(NET, "allowlist not reloaded: %s", medfl_error_message());
        }
    }
    int64_t now_s = (int64_t)time(NULL);
    if (now_s >= self->next_alive_s) {
        /* Lets `status` tell a running daemon from a killed one. */
        char text[32];
        snprintf(text, sizeof text, "%lld", (long long)now_s);
        if (store_meta_set(self->store, "alive_at", text) != 0)
            LOG_WARN(AGG, "registry: %s", medfl_error_message());
        self->next_alive_s = now_s + 1;
    }
}

/* The aggregator's Prometheus families (docs/operator-guide-aggregator.md, "Metrics"). */
static const metrics_family_t s_agg_metrics[] = {
    {"rounds_started_total", METRIC_COUNTER, "Rounds started (RoundStart sent).", NULL},
    {"rounds_completed_total", METRIC_COUNTER,
     "Rounds completed since the federation began (the journal's count, as in `status`).", NULL},
    {"rounds_aborted_total", METRIC_COUNTER,
     "Rounds aborted by this process (quorum, deadlines, stop).", NULL},
    {"connected_nodes", METRIC_GAUGE, "Enrolled nodes with a live session.", NULL},
    {"node_weight", METRIC_GAUGE,
     "Contribution weight of each node in the latest round (0 when not selected).", "node"},
    {"bytes_sent_total", METRIC_COUNTER, "Message bytes sent to nodes (before CURVE).", NULL},
    {"bytes_received_total", METRIC_COUNTER, "Message bytes received from nodes (before CURVE).",
     NULL},
    {"last_round_duration_seconds", METRIC_GAUGE,
     "Seconds from RoundStart to the end of the last completed round.", NULL},
    {"model_version", METRIC_GAUGE, "Head model version of the version store.", NULL},
};

/* Declares the families and starts the endpoint; an endpoint that cannot bind is logged and
 * the federation goes on without metrics (monitoring must not stop rounds). */
static int s_metrics_setup(aggregator_t *self)
{
    return metrics_open("medfl_aggregator", s_agg_metrics,
                        sizeof s_agg_metrics / sizeof *s_agg_metrics, self->cfg.metrics_listen,
                        self->config_path[0] ? self->config_path : NULL, self->cfg.state_dir,
                        &self->metrics);
}

/* Wire traffic, copied from the counters wire keeps as messages pass. */
static void s_metrics_sync(aggregator_t *self)
{
    if (!self->metrics) return;
    wire_server_stats_t st;
    wire_server_stats(self->server, &st);
    metrics_add(self->metrics, "bytes_sent_total", NULL, (double)(st.bytes_sent - self->m_sent));
    metrics_add(self->metrics, "bytes_received_total", NULL,
                (double)(st.bytes_received - self->m_received));
    self->m_sent = st.bytes_sent;
    self->m_received = st.bytes_received;
}

static int s_record_start(aggregator_t *self)
{
    char path[CFG_STR_MAX + 32], text[CFG_STR_MAX + 8];
    const char *endpoint = wire_server_endpoint(self->server);
    agg_config_endpoint_path(&self->cfg, path, sizeof path);
    snprintf(text, sizeof text, "%s\n", endpoint);
    if (atomic_file_replace(path, text, strlen(text), 0644) != 0) return -1;
    char num[32];
    snprintf(num, sizeof num, "%lld", (long long)time(NULL));
    char pid[32];
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    if (store_meta_set(self->store, "instance", self->instance_hex) != 0 ||
        store_meta_set(self->store, "endpoint", endpoint) != 0 ||
        store_meta_set(self->store, "name", self->cfg.name) != 0 ||
        store_meta_set(self->store, "pid", pid) != 0 ||
        store_meta_set(self->store, "started_at", num) != 0 ||
        store_meta_set(self->store, "alive_at", num) != 0 ||
        store_meta_set(self->store, "stopped_at", "0") != 0)
        return -1;
    return 0;
}

size_t aggregator_bulk_max(const agg_config_t *cfg, uint64_t numel)
{
    if (cfg->max_update_mib > 0) return (size_t)cfg->max_update_mib << 20;
    return (size_t)(4 * numel) + AGG_BULK_HEADROOM;
}

/* Parameters of the model the first round will train: the head version, or the genesis the
 * rounds will create (federation.genesis_zero_dim), or 0 with no model yet. */
static uint64_t s_head_numel(const agg_config_t *cfg, const char *vdir)
{
    vs_store_t *vs = vs_store_open(vdir, true);
    uint64_t numel = cfg->fed_genesis_dim > 0 ? (uint64_t)cfg->fed_genesis_dim : 0;
    vs_manifest_t *m = vs ? vs_store_manifest(vs, vs_store_head(vs)) : NULL;
    if (m) numel = m->numel;
    vs_manifest_destroy(&m);
    vs_store_destroy(&vs);
    return numel;
}

aggregator_t *aggregator_new(const agg_config_t *cfg, const char *config_path)
{
    aggregator_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    self->cfg = *cfg;
    self->lock_fd = -1;
    snprintf(self->config_path, sizeof self->config_path, "%s", config_path ? config_path : "");
    char path[CFG_STR_MAX + 32];
    if (service_mkdir_p(cfg->state_dir, 0700) != 0) goto fail;
    /* Before anything touches the state: a second daemon must not journal the first one's
     * round as aborted nor overwrite its pid and endpoint. */
    if ((self->lock_fd = service_lock_state(cfg->state_dir)) < 0) goto fail;
    self->keys = keys_load(cfg->key_dir);
    if (!self->keys) goto fail;
    agg_config_registry_path(cfg, path, sizeof path);
    self->store = store_open(path);
    if (!self->store) goto fail;
    /* Sessions of a previous run (killed or stopped) are gone with it. */
    if (store_disconnect_all(self->store) != 0) goto fail;

    wire_options_t opts;
    wire_options_default(&opts);
    opts.heartbeat_ivl_ms = (int)cfg->heartbeat_ivl_ms;
    opts.heartbeat_timeout_ms = (int)cfg->heartbeat_timeout_ms;
    /* ZMQ_MAXMSGSIZE is read when a connection is made (libzmq copies the options at bind),
     * so it is sized here, before the ROUTER binds, from the model the rounds train: libzmq
     * then drops a peer announcing a bigger frame before buffering it. */
    char vdir[CFG_STR_MAX + 16];
    versions_dir(cfg->state_dir, vdir, sizeof vdir);
    uint64_t numel = s_head_numel(cfg, vdir);
    self->bulk_max = opts.max_bulk = aggregator_bulk_max(cfg, numel);
    self->bulk_warned = (size_t)numel;
    self->server = wire_server_new(cfg->bind, self->keys->curve_secret, self->keys->curve_public,
                                   &opts);
    if (!self->server) goto fail;
    sodium_bin2hex(self->instance_hex, sizeof self->instance_hex,
                   wire_server_instance_id(self->server), WIRE_INSTANCE_ID_LEN);
    if (store_data_version(self->store, &self->data_version) != 0) goto fail;
    if (s_reload_allowlist(self) != 0) goto fail;
    if (s_record_start(self) != 0) goto fail;
    {
        self->rounds = rounds_new(&self->cfg, self->server, path, vdir, self->keys->sign_secret,
                                  self->keys->sign_public);
        if (!self->rounds) goto fail;
    }
    if (s_metrics_setup(self) != 0) goto fail;
    rounds_set_metrics(self->rounds, self->metrics);
    char key_id[KEYS_ID_LEN + 1];
    keys_key_id(self->keys->curve_public, key_id);
    LOG_INFO(NET, "aggregator %s listening on %s (instance %s, server key %s)", cfg->name,
             wire_server_endpoint(self->server), self->instance_hex, key_id);
    size_t frame_max = self->bulk_max > WIRE_ENVELOPE_MAX ? self->bulk_max : WIRE_ENVELOPE_MAX;
    if (cfg->max_update_mib > 0)
        LOG_INFO(NET, "frames above %zu bytes are dropped by the transport (net.max_update_mib "
                 "= %lld)", frame_max, (long long)cfg->max_update_mib);
    else
        LOG_INFO(NET, "frames above %zu bytes are dropped by the transport (net.max_update_mib "
                 "= 0: 4 bytes x %llu parameters of the head version + %zu)", frame_max,
                 (unsigned long long)numel, AGG_BULK_HEADROOM);
    return self;
fail:
    aggregator_destroy(&self);
    return NULL;
}

void aggregator_destroy(aggregator_t **self_p)
{
    if (!self_p || !*self_p) return;
    aggregator_t *self = *self_p;
    if (self->store && self->server) {
        /* A clean stop leaves the registry saying so, unlike a crash. */
        char num[32];
        snprintf(num, sizeof num, "%lld", (long long)time(NULL));
        if (store_disconnect_all(self->store) != 0 ||
            store_meta_set(self->store, "stopped_at", num) != 0)
            LOG_WARN(AGG, "registry: %s", medfl_error_message());
    }
    rounds_destroy(&self->rounds);
    metrics_destroy(&self->metrics); /* after the rounds, which report into it */
    free(self->round_peers);
    wire_server_destroy(&self->server);
    store_destroy(&self->store);
    keys_destroy(&self->keys);
    free(self->peers);
    service_unlock_state(&self->lock_fd); /* last: the state is closed */
    free(self);
    *self_p = NULL;
}

const char *aggregator_endpoint(const aggregator_t *self)
{
    return wire_server_endpoint(self->server);
}

/* A head that grew past the frame limit sized at start (init-version or rollback to another
 * model): libzmq would drop every node sending a full update, and the limit cannot change on
 * the bound ROUTER, so the operator is told once per model size to restart. */
static void s_check_bulk_max(aggregator_t *self)
{
    size_t numel = 0;
    if (self->cfg.max_update_mib > 0 || !rounds_global(self->rounds, &numel) ||
        numel == self->bulk_warned)
        return;
    self->bulk_warned = numel;
    if (aggregator_bulk_max(&self->cfg, numel) > self->bulk_max)
        LOG_ERROR(NET, "the head version has %zu parameters, more than the frame limit sized at "
                  "start (%zu bytes) holds: nodes' updates will be dropped by the transport "
                  "until the aggregator is restarted", numel, self->bulk_max);
}

/* The rounds see the live sessions; deadlines are checked at every step. */
static void s_rounds_tick(aggregator_t *self)
{
    rounds_peer_t *rp = realloc(self->round_peers, (self->n_peers + 1) * sizeof *rp);
    if (!rp) return;
    self->round_peers = rp;
    size_t n = 0;
    for (size_t i = 0; i < self->n_peers; i++) {
        if (!self->peers[i].connected) continue;
        rp[n].node_id = self->peers[i].node_id;
        rp[n].identity_pk = self->peers[i].identity_pk;
        rp[n].n_records = self->peers[i].n_records;
        n++;
    }
    rounds_tick(self->rounds, rp, n, service_now_ms());
    s_check_bulk_max(self);
}

int aggregator_step(aggregator_t *self, int timeout_ms)
{
    int64_t now = service_now_ms();
    if (now >= self->next_tick_ms) {
        s_housekeeping(self);
        self->next_tick_ms = now + AGG_TICK_MS;
    }
    int64_t until_tick = self->next_tick_ms - now;
    if (until_tick < 0) until_tick = 0;
    if (timeout_ms < 0 || timeout_ms > until_tick) timeout_ms = (int)until_tick;
    wire_msg_t msg;
    memset(&msg, 0, sizeof msg);
    int rc = wire_server_recv(self->server, &msg, timeout_ms);
    if (rc == 1) {
        self->socket_errors = 0;
        s_on_message(self, &msg);
    } else if (rc < 0) {
        /* Rejected messages are logged by wire with their reason; only a socket that
         * keeps failing needs a pause so the loop does not spin. */
        medfl_err_t code = medfl_error_code();
        if (code != MEDFL_EPROTO && code != MEDFL_EUNSUPPORTED && code != MEDFL_EPERM &&
            ++self->socket_errors > 3) {
            LOG_ERROR(NET, "receive failed: %s", medfl_error_message());
            usleep(100 * 1000);
        }
    }
    wire_msg_close(&msg);
    s_rounds_tick(self);
    s_metrics_sync(self);
    return rc;
}

void aggregator_reload(aggregator_t *self, const agg_config_t *fresh)
{
    service_config_reload(agg_config_table, &self->cfg, fresh, self->config_path);
    if (self->rounds) rounds_on_reload(self->rounds);
}

int aggregator_run(aggregator_t *self)
{
    /* Keys, state and sockets are up by now: tell systemd (Type=notify) we serve. */
    (void)service_notify("READY=1\nSTATUS=serving");
    while (!service_stop_requested()) {
        if (service_reload_requested()) {
            agg_config_t fresh;
            (void)service_notify("RELOADING=1");
            if (!self->config_path[0])
                LOG_WARN(CONFIG, "SIGHUP: no configuration file to reload");
            else if (agg_config_load(&fresh, self->config_path) != 0)
                LOG_ERROR(CONFIG, "SIGHUP: configuration not reloaded, keeping the running one: %s",
                          medfl_error_message());
            else
                aggregator_reload(self, &fresh);
            (void)service_notify("READY=1");
        }
        aggregator_step(self, AGG_TICK_MS);
    }
    /* Drain: the round in progress is closed in the journal now (completed when its version
     * is already committed, else aborted and its nodes told), so a restart finds a clean
     * journal instead of recovering an open round. */
    LOG_INFO(MAIN, "stop requested: shutting down");
    (void)service_notify("STOPPING=1");
    bool in_round = rounds_current(self->rounds) != 0;
    rounds_stop(self->rounds, service_now_ms(), "aggregator stopped (SIGTERM/SIGINT)");
    /* The ROUTER closes without linger: give libzmq's I/O thread a moment to deliver the
     * "round aborted" errors, so nodes drop the round now rather than at the next one. */
    if (in_round) usleep(200 * 1000);
    return 0;
}

size_t aggregator_session_count(const aggregator_t *self)
{
    return s_connected_count(self);
}

rounds_t *aggregator_rounds(aggregator_t *self)
{
    return self->rounds;
}
