/* Event loop of the node daemon. The node never trusts its own idea of "connected": a new
 * handshake (wire_client_connections), an aggregator that asks for a hello (Error STATE,
 * e.g. after its restart), a Welcome with a new instance id, or heartbeat_misses periods
 * of silence all lead to a fresh Hello, so the session heals itself without an operator.
 * A revocation is final: the node logs it and exits with NODE_EXIT_REVOKED. */
#include "node/node.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#ifdef MEDFL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "common/error.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/service.h"
#include "common/wire.h"
#include "node/ledger.h"
#include "node/round.h"
#include "node/round_model.h"

#define NODE_RECV_SLICE_MS 200

/* Heartbeats while the trainer works. One training step (or an evaluation) can outlast the
 * aggregator's heartbeat timeout, and the step-boundary tick (round_hparams_t.tick) cannot
 * speak during a step. ZeroMQ sockets are not thread-safe, so the simplest correct design is
 * a hand-over rather than sharing: for the duration of a train/evaluate call the socket
 * belongs to a keepalive thread alone, which sends the due heartbeats (wire_client_tick);
 * the main thread, busy computing, does not touch it (its step tick is switched off for the
 * call). pthread_create and pthread_join are the full memory barriers ZeroMQ requires when a
 * socket changes threads. Messages from the aggregator wait in the socket meanwhile and are
 * read by the main loop afterwards, exactly as before. */
typedef struct {
    round_trainer_t inner;   /* the real trainer (synthetic or model) */
    wire_client_t *client;   /* the node's connection: the keepalive thread's while it runs */
    int period_ms;           /* how often the thread checks whether a heartbeat is due */
    pthread_mutex_t lock;    /* guards stop; the socket needs no lock (one user at a time) */
    pthread_cond_t wake;
    bool stop;
    pthread_t thread;
} keepalive_t;

struct node_t {
    node_config_t cfg;
    char config_path[CFG_STR_MAX];
    keys_t *keys;
    uint8_t agg_public[KEYS_CURVE_BYTES];
    char key_id[KEYS_ID_LEN + 1];
    char device[64];
    uint64_t n_records;
    wire_client_t *client;
    wire_options_t wire_opts;
    uint64_t connections_seen;
    bool need_hello;
    bool hello_sent;
    bool welcomed;
    int64_t hello_at_ms;
    bool have_instance;
    uint8_t instance[WIRE_INSTANCE_ID_LEN];
    ledger_t *ledger;
    synth_trainer_t *synth;
    model_trainer_t *model;
    node_round_t *round;     /* NULL when no aggregator.identity_key is configured */
    metrics_t *metrics;      /* NULL when metrics.listen = off or the endpoint failed */
    uint64_t m_sent, m_received; /* wire traffic already added to the counters */
    int lock_fd;             /* state folder lock, held for the process lifetime */
    keepalive_t keepalive;   /* wraps the trainer handed to the round */
};

#define NODE_LEDGER_FILE "privacy_ledger.db" /* as `medfl-node privacy` reads it */

/* The aggregator's identity key: 64 hex digits given directly or in a file. */
int node_load_agg_identity(const char *value, uint8_t out[KEYS_SIGN_PUBLIC_BYTES])
{
    char text[256];
    if (strlen(value) == 2 * KEYS_SIGN_PUBLIC_BYTES && value[0] != '/' && value[0] != '.')
        return keys_hex_decode_public(value, out, "aggregator.identity_key");
    FILE *f = fopen(value, "r");
    if (!f)
        return medfl_error_set(MEDFL_ENOTFOUND, "key 'aggregator.identity_key': %s: %s", value,
                               strerror(errno));
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
        text[--n] = 0;
    return keys_hex_decode_public(text, out, value);
}

static void *s_keepalive_main(void *arg)
{
    keepalive_t *ka = arg;
    pthread_mutex_lock(&ka->lock);
    while (!ka->stop) {
        if (wire_client_tick(ka->client) < 0)
            LOG_DEBUG(NET, "heartbeat during training: %s", medfl_error_message());
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)ka->period_ms * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&ka->wake, &ka->lock, &until);
    }
    pthread_mutex_unlock(&ka->lock);
    return NULL;
}

/* Hands the socket to the keepalive thread; false when no thread could start (the caller
 * then keeps the step-boundary tick, as before). Signals stay with the main thread, whose
 * loop polls the flags they set. */
static bool s_keepalive_start(keepalive_t *ka)
{
    ka->stop = false;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&ka->thread, NULL, s_keepalive_main, ka);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) LOG_WARN(NET, "no heartbeat thread during training: %s", strerror(rc));
    return rc == 0;
}

static void s_keepalive_stop(keepalive_t *ka)
{
    pthread_mutex_lock(&ka->lock);
    ka->stop = true;
    pthread_cond_signal(&ka->wake);
    pthread_mutex_unlock(&ka->lock);
    pthread_join(ka->thread, NULL); /* the socket is the main thread's again */
}

static int s_ka_train(void *ctx, const float *global, size_t n, const round_hparams_t *hp,
                      float *delta, uint64_t *n_examples)
{
    keepalive_t *ka = ctx;
    round_hparams_t mine = *hp;
    bool threaded = s_keepalive_start(ka);
    if (threaded) mine.tick = NULL; /* the thread owns the socket now */
    int rc = ka->inner.train(ka->inner.ctx, global, n, &mine, delta, n_examples);
    if (threaded) s_keepalive_stop(ka);
    return rc;
}

static int s_ka_evaluate(void *ctx, const float *x, size_t n, double *loss, double *accuracy,
                         double *macro_f1, uint64_t *n_eval)
{
    keepalive_t *ka = ctx;
    bool threaded = s_keepalive_start(ka);
    int rc = ka->inner.evaluate(ka->inner.ctx, x, n, loss, accuracy, macro_f1, n_eval);
    if (threaded) s_keepalive_stop(ka);
    return rc;
}

static int s_ka_check_layout(void *ctx, const vs_manifest_t *m)
{
    keepalive_t *ka = ctx;
    return ka->inner.check_layout(ka->inner.ctx, m);
}

static int s_ka_linear_step(void *ctx, const round_hparams_t *hp, double *scale)
{
    keepalive_t *ka = ctx;
    return ka->inner.linear_step(ka->inner.ctx, hp, scale);
}

/* The trainer the round sees: inner's functions, each train/evaluate call under a
 * keepalive thread. */
static round_trainer_t s_keepalive_wrap(keepalive_t *ka, const round_trainer_t *inner,
                                        wire_client_t *client, int64_t heartbeat_ivl_ms)
{
    ka->inner = *inner;
    ka->client = client;
    ka->period_ms = heartbeat_ivl_ms / 4 < 20 ? 20 : heartbeat_ivl_ms / 4 > 250
                                                        ? 250 : (int)(heartbeat_ivl_ms / 4);
    round_trainer_t t = {.ctx = ka, .train = s_ka_train, .evaluate = s_ka_evaluate};
    if (inner->check_layout) t.check_layout = s_ka_check_layout;
    if (inner->linear_step) t.linear_step = s_ka_linear_step;
    return t;
}

/* Rounds need the aggregator's identity (versions are signed with it), the privacy ledger
 * and a trainer; without the identity key the node only keeps its session. */
static int s_rounds_setup(node_t *self)
{
    const node_config_t *cfg = &self->cfg;
    if (!cfg->agg_identity_key[0]) {
        LOG_WARN(NET, "no aggregator.identity_key configured: this node takes part in no round");
        return 0;
    }
    uint8_t agg_pk[KEYS_SIGN_PUBLIC_BYTES];
    if (node_load_agg_identity(cfg->agg_identity_key, agg_pk) != 0) return -1;
    char path[CFG_STR_MAX + 32];
    snprintf(path, sizeof path, "%s/" NODE_LEDGER_FILE, cfg->state_dir);
    self->ledger = ledger_open(path, cfg->train.epsilon_budget, cfg->train.delta, LEDGER_CREATE);
    if (!self->ledger) return -1;
    round_trainer_t trainer = {0};
    if (strcmp(cfg->round_trainer, "synthetic") == 0) {
        self->synth = synth_trainer_new(cfg->node_id, (uint32_t)cfg->synth_records,
                                        (uint32_t)cfg->synth_step_ms);
        if (!self->synth) return -1;
        synth_trainer_bind(self->synth, &trainer);
    } else {
        self->model = model_trainer_new(cfg);
        if (!self->model) return medfl_error_prefix("round.trainer = model: ");
        model_trainer_bind(self->model, &trainer);
        self->n_records = model_trainer_records(self->model);
    }
    node_round_opts_t opts = {
        .node_id = cfg->node_id,
        .state_dir = cfg->state_dir,
        .identity_sk = self->keys->sign_secret,
        .identity_pk = self->keys->sign_public,
        .agg_sign_pk = agg_pk,
        .ledger = self->ledger,
        .policy = &cfg->policy,
        .distributed_noise = cfg->train.distributed_noise,
        .distributed_colluders = (uint32_t)cfg->train.distributed_colluders,
    };
    double spent = 0;
    metrics_set(self->metrics, "privacy_epsilon_budget", NULL, ledger_budget(self->ledger));
    if (ledger_spent(self->ledger, &spent, NULL) == 0)
        metrics_set(self->metrics, "privacy_epsilon_spent", NULL, spent);
    else
        LOG_WARN(PRIVACY, "privacy ledger: %s", medfl_error_message());
    round_trainer_t kept = s_keepalive_wrap(&self->keepalive, &trainer, self->client,
                                            self->cfg.heartbeat_ivl_ms);
    self->round = node_round_new(&opts, &kept, self->client);
    if (!self->round) return -1;
    node_round_set_metrics(self->round, self->metrics);
    return 0;
}

int node_count_records(const char *path, const char *format, uint64_t *out)
{
    *out = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s",
                               path, strerror(errno));
    bool csv = strcmp(format, "csv") == 0;
    bool in_quotes = false, has_content = false, header_pending = csv;
    uint64_t n = 0;
    int c;
    while ((c = fgetc(f)) != EOF) {
        if (csv && c == '"') in_quotes = !in_quotes;
        if (c == '\n' && !in_quotes) {
            if (has_content) {
                if (header_pending) header_pending = false;
                else n++;
            }
            has_content = false;
        } else if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
            has_content = true;
        }
    }
    bool failed = ferror(f) != 0;
    fclose(f);
    if (failed) return medfl_error_set(MEDFL_EIO, "%s: read error", path);
    if (has_content && !header_pending) n++; /* last record without a newline */
    *out = n;
    return 0;
}

/* The node's Prometheus families (docs/operator-guide-node.md, "Metrics"). */
static const metrics_family_t s_node_metrics[] = {
    {"rounds_joined_total", METRIC_COUNTER, "Rounds this node joined (RoundStart accepted).", NULL},
    {"rounds_completed_total", METRIC_COUNTER,
     "Rounds this node joined whose new model version it then received and installed.", NULL},
    {"rounds_declined_total", METRIC_COUNTER,
     "Rounds declined (privacy budget, base version, settings).", NULL},
    {"privacy_epsilon_spent", METRIC_GAUGE,
     "Epsilon spent by the admitted DP rounds, as `medfl-node privacy` reports it.", NULL},
    {"privacy_epsilon_budget", METRIC_GAUGE, "Epsilon budget of this node (privacy.epsilon_budget).", NULL},
    {"bytes_sent_total", METRIC_COUNTER, "Message bytes sent to the aggregator (before CURVE).", NULL},
    {"bytes_received_total", METRIC_COUNTER,
     "Message bytes received from the aggregator (before CURVE).", NULL},
    {"last_round_duration_seconds", METRIC_GAUGE,
     "Seconds from joining the last completed round to installing its version.", NULL},
    {"training_examples_total", METRIC_COUNTER, "Examples processed by local training.", NULL},
    {"training_examples_per_second", METRIC_GAUGE, "Examples per second of the last local training.", NULL},
    {"model_version", METRIC_GAUGE, "Latest model version installed.", NULL},
    {"connected", METRIC_GAUGE, "1 while the aggregator has welcomed this node's session.", NULL},
};

/* Declares the families and starts the endpoint; an endpoint that cannot bind is logged and
 * the node federates without metrics (monitoring must not stop training). */
static int s_metrics_setup(node_t *self)
{
    return metrics_open("medfl_node", s_node_metrics,
                        sizeof s_node_metrics / sizeof *s_node_metrics, self->cfg.metrics_listen,
                        self->config_path[0] ? self->config_path : NULL, self->cfg.state_dir,
                        &self->metrics);
}

/* Wire traffic and session state, copied from the counters wire keeps as messages pass. */
static void s_metrics_sync(node_t *self)
{
    if (!self->metrics) return;
    uint64_t sent, received;
    wire_client_traffic(self->client, &sent, &received);
    if (sent < self->m_sent || received < self->m_received) self->m_sent = self->m_received = 0;
    metrics_add(self->metrics, "bytes_sent_total", NULL, (double)(sent - self->m_sent));
    metrics_add(self->metrics, "bytes_received_total", NULL, (double)(received - self->m_received));
    self->m_sent = sent;
    self->m_received = received;
    metrics_set(self->metrics, "connected", NULL, self->welcomed ? 1 : 0);
}

/* "auto" takes a CUDA GPU when one is visible; asking for "cuda" without one is an
 * error rather than a silent fallback, because the operator asked for it explicitly. */
static int s_resolve_device(const char *want, char *out, size_t size)
{
    int gpus = 0;
#ifdef MEDFL_HAVE_CUDA
    if (strcmp(want, "cpu") != 0 && cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
    if (gpus > 0) {
        struct cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
            snprintf(out, size, "cuda:0 %s", prop.name);
            return 0;
        }
        snprintf(out, size, "cuda:0");
        return 0;
    }
#endif
    if (strcmp(want, "cuda") == 0)
        return medfl_error_set(MEDFL_EDEVICE, "key 'device': cuda requested but %s",
#ifdef MEDFL_HAVE_CUDA
                               "no CUDA device is visible"
#else
                               "this build has no CUDA backend"
#endif
        );
    (void)gpus;
    if (strcmp(want, "auto") == 0)
        LOG_INFO(TRAIN, "device auto: no CUDA GPU available, using the CPU");
    snprintf(out, size, "cpu");
    return 0;
}

/* A refused handshake (key not enrolled yet) is redialled by wire every
 * reconnect_ivl_max_ms, so enrolling the node is all an operator has to do. */
static int s_connect(node_t *self)
{
    wire_client_destroy(&self->client);
    self->client = wire_client_new(self->cfg.agg_endpoint, self->agg_public,
                                   self->keys->curve_public, self->keys->curve_secret,
                                   self->cfg.node_id, &self->wire_opts);
    self->connections_seen = 0;
    self->hello_sent = false;
    self->welcomed = false;
    return self->client ? 0 : -1;
}

node_t *node_new(const node_config_t *cfg, const char *config_path)
{
    node_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    self->cfg = *cfg;
    self->lock_fd = -1;
    pthread_mutex_init(&self->keepalive.lock, NULL);
    pthread_cond_init(&self->keepalive.wake, NULL);
    snprintf(self->config_path, sizeof self->config_path, "%s", config_path ? config_path : "");
    if (service_mkdir_p(cfg->state_dir, 0700) != 0) goto fail;
    /* Two nodes on one state folder would share a privacy ledger and a version store. */
    if ((self->lock_fd = service_lock_state(cfg->state_dir)) < 0) goto fail;
    self->keys = keys_load(cfg->key_dir);
    if (!self->keys) goto fail;
    keys_key_id(self->keys->curve_public, self->key_id);
    const char *agg_key = cfg->agg_public_key[0] ? cfg->agg_public_key : cfg->agg_public_key_file;
    if (keys_load_curve_public(agg_key, self->agg_public) != 0) {
        const char *key = cfg->agg_public_key[0] ? "aggregator.public_key" : "aggregator.public_key_file";
        if (config_path)
            medfl_error_prefix("%s:%u: key '%s': ", config_path, cfg_line_of(config_path, key), key);
        else
            medfl_error_prefix("key '%s': ", key);
        goto fail;
    }
    if (s_resolve_device(cfg->device, self->device, sizeof self->device) != 0) {
        if (config_path) medfl_error_prefix("%s: ", config_path);
        goto fail;
    }
    if (cfg->data.records[0]) {
        data_format_t df = DATA_FORMAT_JSONL;
        if (strcmp(cfg->data.format, "auto") == 0) (void)data_format_guess(cfg->data.records, &df);
        else df = strcmp(cfg->data.format, "csv") == 0 ? DATA_FORMAT_CSV : DATA_FORMAT_JSONL;
        if (node_count_records(cfg->data.records, df == DATA_FORMAT_CSV ? "csv" : "jsonl",
                               &self->n_records) != 0) {
            /* No data yet is a normal state for a freshly installed node. */
            LOG_WARN(DATA, "%s; announcing 0 records", medfl_error_message());
            self->n_records = 0;
        }
    }
    char agg_id[KEYS_ID_LEN + 1];
    keys_key_id(self->agg_public, agg_id);
    wire_options_default(&self->wire_opts);
    self->wire_opts.heartbeat_ivl_ms = (int)cfg->heartbeat_ivl_ms;
    int64_t timeout = cfg->heartbeat_ivl_ms * cfg->heartbeat_misses;
    self->wire_opts.heartbeat_timeout_ms = timeout > 1000000000 ? 1000000000 : (int)timeout;
    if (cfg->agg_public_key[0])
        snprintf(self->wire_opts.server_key_origin, sizeof self->wire_opts.server_key_origin,
                 "aggregator.public_key (key id %s)", agg_id);
    else
        snprintf(self->wire_opts.server_key_origin, sizeof self->wire_opts.server_key_origin,
                 "aggregator.public_key_file (%s)", cfg->agg_public_key_file);
    if (s_connect(self) != 0) goto fail;
    if (s_metrics_setup(self) != 0) goto fail;
    if (s_rounds_setup(self) != 0) goto fail;
    if (self->round)
        metrics_set(self->metrics, "model_version", NULL,
                    (double)node_round_model_version(self->round));
    LOG_INFO(NET, "node %s (key %s) connecting to %s (aggregator key %s); device %s, %llu records",
             cfg->node_id, self->key_id, cfg->agg_endpoint, agg_id, self->device,
             (unsigned long long)self->n_records);
    return self;
fail:
    node_destroy(&self);
    return NULL;
}

void node_destroy(node_t **self_p)
{
    if (!self_p || !*self_p) return;
    node_t *self = *self_p;
    node_round_destroy(&self->round);
    metrics_destroy(&self->metrics); /* after the round, which reports into it */
    synth_trainer_destroy(&self->synth);
    model_trainer_destroy(&self->model);
    ledger_destroy(&self->ledger);
    wire_client_destroy(&self->client);
    keys_destroy(&self->keys);
    service_unlock_state(&self->lock_fd); /* last: the state is closed */
    pthread_cond_destroy(&self->keepalive.wake);
    pthread_mutex_destroy(&self->keepalive.lock);
    free(self);
    *self_p = NULL;
}

static int s_send_hello(node_t *self)
{
    Medfl__Capabilities caps = MEDFL__CAPABILITIES__INIT;
    caps.device = self->device;
    caps.n_records = self->n_records;
    caps.software_version = (char *)MEDFL_SOFTWARE_VERSION;
    caps.model_version = self->round ? node_round_model_version(self->round) : 0;
    Medfl__Hello hello = MEDFL__HELLO__INIT;
    hello.node_id = self->cfg.node_id;
    hello.identity_pk.data = self->keys->sign_public;
    hello.identity_pk.len = KEYS_SIGN_PUBLIC_BYTES;
    hello.capabilities = &caps;
    if (wire_client_send(self->client, MEDFL__MSG_TYPE__MSG_HELLO, 0, &hello.base, NULL, 0, NULL,
                         NULL) != 0)
        return -1;
    self->hello_sent = true;
    self->welcomed = false;
    self->hello_at_ms = service_now_ms();
    LOG_DEBUG(NET, "hello sent");
    return 0;
}

static void s_on_welcome(node_t *self, const Medfl__Welcome *w)
{
    bool restarted = false;
    if (w->instance_id.len == WIRE_INSTANCE_ID_LEN) {
        restarted = self->have_instance &&
                    sodium_memcmp(self->instance, w->instance_id.data, WIRE_INSTANCE_ID_LEN) != 0;
        memcpy(self->instance, w->instance_id.data, WIRE_INSTANCE_ID_LEN);
        self->have_instance = true;
    }
    char hex[2 * WIRE_INSTANCE_ID_LEN + 1];
    sodium_bin2hex(hex, sizeof hex, self->instance, WIRE_INSTANCE_ID_LEN);
    self->welcomed = true;
    if (restarted)
        LOG_INFO(NET, "welcomed again by a restarted aggregator (instance %s)", hex);
    else
        LOG_INFO(NET, "welcomed by the aggregator (instance %s)", hex);
}

/* Returns 1 when the node must stop because it was revoked. */
static int s_on_message(node_t *self, const wire_msg_t *msg)
{
    if (self->round && node_round_on_message(self->round, msg) == 1) return 0;
    switch (msg->type) {
    case MEDFL__MSG_TYPE__MSG_WELCOME:
        s_on_welcome(self, msg->body.welcome);
        return 0;
    case MEDFL__MSG_TYPE__MSG_ERROR: {
        const Medfl__Error *e = msg->body.error;
        const char *text = e->text ? e->text : "";
        if (e->code == MEDFL__ERROR_CODE__ERROR_REVOKED) {
            LOG_ERROR(NET, "the aggregator revoked this node (key %s): %s; stopping", self->key_id,
                      text);
            return 1;
        }
        if (e->code == MEDFL__ERROR_CODE__ERROR_STATE && !strcmp(text, "say hello first")) {
            /* A heartbeat that overtook our hello draws this answer too; the hello in
             * flight will be welcomed. */
            if (!self->welcomed && self->hello_sent &&
                service_now_ms() - self->hello_at_ms < self->cfg.heartbeat_ivl_ms *
                                                           self->cfg.heartbeat_misses)
                return 0;
            LOG_INFO(NET, "the aggregator has no session for this node (restarted?): saying hello");
            self->need_hello = true;
            return 0;
        }
        LOG_WARN(NET, "the aggregator reports error %d: %s", (int)e->code, text);
        return 0;
    }
    default:
        LOG_WARN(NET, "%s from the aggregator is not handled by this node version",
                 wire_type_name(msg->type));
        return 0;
    }
}

int node_run(node_t *self)
{
    /* Keys, state and sockets are up by now: tell systemd (Type=notify) we serve. */
    (void)service_notify("READY=1\nSTATUS=serving");
    const int64_t silence_ms = self->cfg.heartbeat_ivl_ms * self->cfg.heartbeat_misses;
    while (!service_stop_requested()) {
        if (service_reload_requested()) {
            node_config_t fresh;
            (void)service_notify("RELOADING=1");
            if (!self->config_path[0])
                LOG_WARN(CONFIG, "SIGHUP: no configuration file to reload");
            else if (node_config_load(&fresh, self->config_path) != 0)
                LOG_ERROR(CONFIG, "SIGHUP: configuration not reloaded, keeping the running one: %s",
                          medfl_error_message());
            else
                service_config_reload(node_config_table, &self->cfg, &fresh, self->config_path);
            (void)service_notify("READY=1");
        }
        uint64_t conns = wire_client_connections(self->client);
        if (conns != self->connections_seen) {
            if (self->connections_seen)
                LOG_INFO(NET, "reconnected to the aggregator (handshake %llu)",
                         (unsigned long long)conns);
            self->connections_seen = conns;
            self->need_hello = true;
        }
        int64_t now = service_now_ms();
        if (!self->welcomed && self->hello_sent && now - self->hello_at_ms > silence_ms) {
            LOG_WARN(NET, "no welcome within %lld ms: saying hello again", (long long)silence_ms);
            self->need_hello = true;
        }
        /* Before the first handshake a hello would only wait in libzmq's queue. */
        if (self->need_hello && conns > 0) {
            if (s_send_hello(self) == 0)
                self->need_hello = false;
            else
                LOG_WARN(NET, "cannot send hello: %s", medfl_error_message());
        }
        wire_msg_t msg;
        memset(&msg, 0, sizeof msg);
        int rc = wire_client_recv(self->client, &msg, NODE_RECV_SLICE_MS);
        if (rc == 1 && s_on_message(self, &msg) == 1) {
            wire_msg_close(&msg);
            return NODE_EXIT_REVOKED;
        }
        wire_msg_close(&msg);
        /* Judged only after a receive found nothing waiting: after a long training the
         * aggregator's answers are still queued, and a hello then would be a false alarm
         * that also drops this node from the round it just trained for. */
        int64_t quiet = wire_client_ms_since_rx(self->client);
        if (rc == 0 && self->welcomed && quiet > silence_ms) {
            LOG_WARN(NET, "nothing from the aggregator for %lld ms: saying hello again",
                     (long long)quiet);
            self->welcomed = false;
            self->need_hello = true;
        }
        s_metrics_sync(self);
    }
    /* Drain: training already gave up at its next step (round_hparams_t.should_stop); what
     * must outlive the process is written now, then the loop's owner closes the ledger. */
    LOG_INFO(MAIN, "stop requested: shutting down");
    (void)service_notify("STOPPING=1");
    if (self->round && node_round_checkpoint(self->round) != 0) {
        LOG_ERROR(MAIN, "checkpoint failed: %s", medfl_error_message());
        return 1;
    }
    return 0;
}
