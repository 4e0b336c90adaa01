/* The aggregator's round state machine (see rounds.h for the phases and the recovery rule).
 * Everything here runs on the daemon's one thread between two wire_server_recv calls, so
 * nothing is locked; every phase change goes through s_enter() which journals it first. */
#include "aggregator/rounds.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <sqlite3.h>

#include "aggregator/contrib_db.h"
#include "aggregator/strategy.h"
#include "aggregator/versions.h"
#include "common/error.h"
#include "common/fedround.h"
#include "common/log.h"
#include "common/service.h"

#define ROUNDS_GENESIS_TENSOR "synthetic.w"
#define ROUNDS_MAX_PARTICIPANTS 1024 /* wire bound on repeated per-node fields */
#define ROUNDS_SYNC_MAX 16           /* catch-up versions per node per round start */
#define ROUNDS_RECENT_REPORTS 3      /* evaluations averaged into a node's quality */

typedef struct {
    char id[WIRE_NODE_ID_MAX + 1];
    uint8_t ipk[32];
    uint64_t n_records;
    double weight;
    bool declined, keys, shares, input, signed_set, unmask, eval;
    bool dropped;             /* said Hello again mid-round: restarted, its round state gone */
    uint64_t bytes_up, bytes_down;
} part_t;

typedef struct {
    char id[WIRE_NODE_ID_MAX + 1];
    uint64_t version;     /* latest version the node is known to hold */
    bool budget_out;      /* declined its last round for privacy budget: not selected until
                           * it says Hello again or the configuration is reloaded */
    bool policy_out;      /* declined it for its privacy policy (the round's DP settings are
                           * outside what the hospital allows): likewise, since every retry
                           * with the same settings would be declined (and cost a ledger row) */
} known_t;

struct rounds_t {
    const agg_config_t *cfg;
    wire_server_t *server;
    sqlite3 *db;
    contrib_db_t *contrib;    /* weights, reports, reliability, bytes, epsilon (contrib.db) */
    vs_store_t *vs;
    uint8_t sk[64], pk[32];

    rounds_phase_t phase;
    int64_t deadline_ms;
    int64_t hold_until_ms;    /* federation.debug_phase_hold_ms (tests): no close before */
    bool commit_pending;      /* version written, journal + announce held (tests) */
    int64_t idle_until_ms;
    int64_t min_reached_ms;   /* when min_nodes were first seen connected, 0 = not yet */
    uint64_t round_id, last_round_id, completed;

    part_t *parts;
    size_t n_parts;
    char **roster;            /* part ids, the secagg roster order */

    known_t *known;
    size_t n_known, cap_known;
    char **live;              /* ids of the sessions at the last tick */
    size_t n_live;
    rounds_peer_t *eligible;  /* the connected nodes a round may select (budget left) */
    char idle_reason[256];    /* why no round starts although nodes are connected; "" = none */

    uint64_t head;
    vs_manifest_t *head_m;
    float *global;
    size_t numel;

    /* the round's settings */
    bool secure;
    fed_encoding_t enc;
    compress_config_t cc;
    compress_round_t *cr;
    uint64_t seed;
    secagg_fixed_t fx;
    secagg_params_t sp;
    secagg_server_t *ss;
    uint64_t m;               /* elements summed: numel (dense) or k (levels) */
    double *acc;              /* plain dense / top-k: sum of w * delta */
    uint32_t *ring_acc;       /* plain levels: ring sum */
    double weight_in;         /* sum of the weights of the inputs in the sum */
    size_t n_in;
    uint64_t new_version;
    double commit_weight;     /* weight total of new_version's sum */
    double headroom;          /* distributed-noise headroom per node (update units), 0 = none */

    metrics_t *metrics;       /* NULL when metrics are off */
    int64_t started_ms;       /* monotonic start of the round in progress */
};

const char *rounds_phase_name(rounds_phase_t p)
{
    static const char *names[] = {"idle", "keys", "shares", "input", "consistency", "unmask",
                                  "eval", "done"};
    return (unsigned)p < sizeof names / sizeof *names ? names[p] : "?";
}

/* ---- journal ---------------------------------------------------------------------------- */

static const char *s_schema =
    "CREATE TABLE IF NOT EXISTS rounds ("
    " round_id INTEGER PRIMARY KEY, phase TEXT NOT NULL, participants TEXT NOT NULL,"
    " base_version INTEGER NOT NULL, version INTEGER, started_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL, finished_at INTEGER, outcome TEXT, reason TEXT);"
    "CREATE TABLE IF NOT EXISTS round_evals ("
    " round_id INTEGER NOT NULL, version INTEGER NOT NULL, node_id TEXT NOT NULL,"
    " loss REAL, accuracy REAL, macro_f1 REAL, n INTEGER, received_at INTEGER,"
    " PRIMARY KEY (round_id, node_id));"
    "CREATE TABLE IF NOT EXISTS round_traffic ("
    " round_id INTEGER NOT NULL, node_id TEXT NOT NULL, bytes_up INTEGER, bytes_down INTEGER,"
    " weight REAL, PRIMARY KEY (round_id, node_id));"
    "CREATE TABLE IF NOT EXISTS rounds_idle ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), reason TEXT NOT NULL, since INTEGER NOT NULL);";

static int s_db_err(sqlite3 *db, const char *what)
{
    return medfl_error_set(MEDFL_EDB, "round journal: %s: %s", what, sqlite3_errmsg(db));
}

/* Runs one statement with text/int binds given as a format of 't' (text), 'i' (int64),
 * 'd' (double), 'n' (null) inside its own transaction. */
static int s_exec(sqlite3 *db, const char *sql, const char *types, ...)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return s_db_err(db, "begin");
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) goto fail;
    va_list ap;
    va_start(ap, types);
    for (int i = 0; types[i]; i++) {
        switch (types[i]) {
        case 't': sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT); break;
        case 'i': sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t)); break;
        case 'd': sqlite3_bind_double(st, i + 1, va_arg(ap, double)); break;
        default: sqlite3_bind_null(st, i + 1); break;
        }
    }
    va_end(ap);
    if (sqlite3_step(st) != SQLITE_DONE) goto fail;
    sqlite3_finalize(st);
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        s_db_err(db, "commit");
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    return 0;
fail:
    s_db_err(db, sql);
    sqlite3_finalize(st);
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

static void s_journal_phase(rounds_t *self)
{
    if (s_exec(self->db, "UPDATE rounds SET phase = ?, updated_at = ? WHERE round_id = ?", "tii",
               rounds_phase_name(self->phase), (int64_t)time(NULL), (int64_t)self->round_id) != 0)
        LOG_ERROR(AGG, "%s", medfl_error_message());
}

/* ---- metrics hooks (no-ops when metrics are off) ---------------------------------------- */

static void s_metrics_start(rounds_t *self, int64_t now)
{
    self->started_ms = now;
    metrics_add(self->metrics, "rounds_started_total", NULL, 1);
    if (!self->metrics) return;
    for (size_t i = 0; i < self->n_known; i++) /* not selected this round: no weight */
        metrics_set(self->metrics, "node_weight", self->known[i].id, 0);
    for (size_t i = 0; i < self->n_parts; i++)
        metrics_set(self->metrics, "node_weight", self->parts[i].id, self->parts[i].weight);
}

static void s_metrics_end(rounds_t *self, const char *outcome)
{
    bool completed = strcmp(outcome, "completed") == 0;
    metrics_add(self->metrics, completed ? "rounds_completed_total" : "rounds_aborted_total",
                NULL, 1);
    if (!completed) return;
    metrics_set(self->metrics, "last_round_duration_seconds", NULL,
                (double)(service_now_ms() - self->started_ms) / 1000.0);
    metrics_set(self->metrics, "model_version", NULL, (double)vs_store_head(self->vs));
}

static void s_journal_end(rounds_t *self, const char *outcome, const char *reason)
{
    s_metrics_end(self, outcome);
    if (s_exec(self->db,
               "UPDATE rounds SET phase = ?, outcome = ?, reason = ?, version = ?, finished_at = ?,"
               " updated_at = ? WHERE round_id = ?",
               "tttiiii", rounds_phase_name(self->phase), outcome, reason ? reason : "",
               (int64_t)self->new_version, (int64_t)time(NULL), (int64_t)time(NULL),
               (int64_t)self->round_id) != 0)
        LOG_ERROR(AGG, "%s", medfl_error_message());
    for (size_t i = 0; i < self->n_parts; i++) {
        const part_t *p = &self->parts[i];
        LOG_INFO(AGG, "round %" PRIu64 ": node %s: %" PRIu64 " B sent to the aggregator, %" PRIu64
                 " B received, weight %.4f", self->round_id, p->id, p->bytes_up, p->bytes_down,
                 p->weight);
        if (s_exec(self->db,
                   "INSERT OR REPLACE INTO round_traffic VALUES (?, ?, ?, ?, ?)", "itiid",
                   (int64_t)self->round_id, p->id, (int64_t)p->bytes_up, (int64_t)p->bytes_down,
                   p->weight) != 0)
            LOG_ERROR(AGG, "%s", medfl_error_message());
    }
}

/* A round a previous process left open: its version may already be committed (the crash
 * came between the version and the journal), then it completed; otherwise it is aborted
 * because its secure-aggregation state died with that process. */
static int s_recover(rounds_t *self)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db, "SELECT round_id, phase FROM rounds WHERE outcome IS NULL",
                           -1, &st, NULL) != SQLITE_OK)
        return s_db_err(self->db, "select open rounds");
    uint64_t ids[64];
    char phases[64][16];
    size_t n = 0;
    while (sqlite3_step(st) == SQLITE_ROW && n < 64) {
        ids[n] = (uint64_t)sqlite3_column_int64(st, 0);
        snprintf(phases[n], sizeof phases[n], "%s", (const char *)sqlite3_column_text(st, 1));
        n++;
    }
    sqlite3_finalize(st);
    size_t nv = 0;
    const uint64_t *vers = vs_store_versions(self->vs, &nv);
    for (size_t i = 0; i < n; i++) {
        uint64_t committed = 0;
        for (size_t j = nv; j-- > 0 && !committed;) {
            vs_manifest_t *m = vs_store_manifest(self->vs, vers[j]);
            if (m && m->round == ids[i]) committed = vers[j];
            vs_manifest_destroy(&m);
        }
        char reason[128];
        snprintf(reason, sizeof reason, "aggregator restarted during phase %s", phases[i]);
        int rc = committed
                     ? s_exec(self->db,
                              "UPDATE rounds SET outcome = 'completed', version = ?, reason = ?,"
                              " finished_at = ?, updated_at = ? WHERE round_id = ?",
                              "itiii", (int64_t)committed, reason, (int64_t)time(NULL),
                              (int64_t)time(NULL), (int64_t)ids[i])
                     : s_exec(self->db,
                              "UPDATE rounds SET outcome = 'aborted', reason = ?, finished_at = ?,"
                              " updated_at = ? WHERE round_id = ?",
                              "tiii", reason, (int64_t)time(NULL), (int64_t)time(NULL),
                              (int64_t)ids[i]);
        if (rc != 0) return -1;
        if (committed)
            LOG_WARN(AGG, "round %" PRIu64 ": %s after version %" PRIu64 " was committed: "
                     "journaled as completed", ids[i], reason, committed);
        else
            LOG_WARN(AGG, "round %" PRIu64 ": %s: journaled as aborted (its secure-aggregation "
                     "state was in memory); a new round follows", ids[i], reason);
    }
    if (sqlite3_prepare_v2(self->db,
                           "SELECT COALESCE(MAX(round_id), 0),"
                           " (SELECT COUNT(*) FROM rounds WHERE outcome = 'completed') FROM rounds",
                           -1, &st, NULL) != SQLITE_OK)
        return s_db_err(self->db, "select last round");
    if (sqlite3_step(st) == SQLITE_ROW) {
        self->last_round_id = (uint64_t)sqlite3_column_int64(st, 0);
        self->completed = (uint64_t)sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    return 0;
}

/* ---- head version ------------------------------------------------------------------------ */

static int s_genesis(rounds_t *self)
{
    int64_t dim = self->cfg->fed_genesis_dim;
    vs_manifest_t *m = vs_manifest_new();
    float *zero = calloc((size_t)dim, sizeof *zero);
    int rc = -1;
    if (!m || !zero) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory for the genesis version");
        goto done;
    }
    if (vs_manifest_add_tensor(m, ROUNDS_GENESIS_TENSOR, 1, &dim) != 0 ||
        vs_manifest_set_attr(m, "model", "synthetic") != 0 ||
        vs_store_commit(self->vs, m, zero, self->sk) != 0)
        goto done;
    LOG_INFO(AGG, "empty version store: genesis version %" PRIu64 " = zero vector of %lld "
             "(federation.genesis_zero_dim)", m->version, (long long)dim);
    rc = 0;
done:
    vs_manifest_destroy(&m);
    free(zero);
    return rc;
}

/* Loads and verifies the head the next round starts from: the whole chain the first time
 * (startup), then only each new version and its link to the head verified before. */
static int s_load_head(rounds_t *self)
{
    uint64_t head = vs_store_head(self->vs);
    if (head == 0 && self->cfg->fed_genesis_dim > 0) {
        if (s_genesis(self) != 0) return -1;
        head = vs_store_head(self->vs);
    }
    if (head == 0) return medfl_error_set(MEDFL_ENOTFOUND, "no model version yet");
    if (head == self->head && self->global) return 0;
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    if (vs_store_verify_cached(self->vs, head, self->pk, &m, &flat) != 0)
        return medfl_error_prefix("head version %" PRIu64 ": ", head);
    vs_manifest_destroy(&self->head_m);
    free(self->global);
    self->head_m = m;
    self->global = flat;
    self->numel = m->numel;
    self->head = head;
    return 0;
}

/* ---- peers -------------------------------------------------------------------------------- */

static known_t *s_known(rounds_t *self, const char *id)
{
    for (size_t i = 0; i < self->n_known; i++)
        if (strcmp(self->known[i].id, id) == 0) return &self->known[i];
    if (self->n_known == self->cap_known) {
        size_t cap = self->cap_known ? 2 * self->cap_known : 16;
        known_t *g = realloc(self->known, cap * sizeof *g);
        if (!g) return NULL;
        self->known = g;
        self->cap_known = cap;
    }
    known_t *k = &self->known[self->n_known++];
    memset(k, 0, sizeof *k);
    snprintf(k->id, sizeof k->id, "%s", id);
    return k;
}

static bool s_in_round(const rounds_t *self)
{
    return self->round_id && self->phase != ROUNDS_IDLE && self->phase != ROUNDS_DONE;
}

static part_t *s_part(rounds_t *self, const char *id);

/* A participant that says Hello during the round started a new session: a restarted node
 * lost its round state (secure-aggregation keys, the RoundStart), so nothing more will come
 * from it for this round. It is dropped now, exactly as if it had disconnected in this
 * phase, so the phase closes as soon as the others have answered instead of at the
 * deadline; it is selected again from the next round. */
static void s_drop_rehello(rounds_t *self, const char *node_id)
{
    part_t *p = s_in_round(self) ? s_part(self, node_id) : NULL;
    if (!p || p->declined || p->dropped) return;
    p->dropped = true;
    LOG_WARN(AGG, "round %" PRIu64 ": node %s said hello again during phase %s (a new session: "
             "its round state is gone): dropped from this round, it is selected again from the "
             "next", self->round_id, node_id, rounds_phase_name(self->phase));
}

void rounds_on_hello(rounds_t *self, const char *node_id, uint64_t model_version)
{
    s_drop_rehello(self, node_id);
    known_t *k = s_known(self, node_id);
    if (!k) return;
    k->version = model_version;
    /* A (re)started node may have had its privacy budget raised: ask it again. */
    if (k->budget_out || k->policy_out)
        LOG_INFO(AGG, "node %s (%s at its last round) said hello: it will be asked again",
                 node_id, k->budget_out ? "out of privacy budget" : "declined for its privacy policy");
    k->budget_out = k->policy_out = false;
}

void rounds_on_reload(rounds_t *self)
{
    size_t cleared = 0;
    for (size_t i = 0; i < self->n_known; i++) {
        cleared += self->known[i].budget_out || self->known[i].policy_out;
        self->known[i].budget_out = self->known[i].policy_out = false;
    }
    if (cleared)
        LOG_INFO(AGG, "configuration reloaded: %zu node(s) out of privacy budget or declining for "
                 "their privacy policy will be asked again", cleared);
}

#define S_HEAD_PREFIX "head version: " /* idle reasons about the version store */

/* Journals (for `status`, another process) and logs, once per change, why connected nodes
 * get no round, and what lets rounds resume; "" clears it. */
static void s_set_idle_reason(rounds_t *self, const char *reason, const char *resume)
{
    if (strcmp(self->idle_reason, reason) == 0) return;
    bool had_version = strncmp(self->idle_reason, S_HEAD_PREFIX, strlen(S_HEAD_PREFIX)) != 0;
    snprintf(self->idle_reason, sizeof self->idle_reason, "%s", reason);
    int rc = reason[0] ? s_exec(self->db, "INSERT OR REPLACE INTO rounds_idle VALUES (1, ?, ?)",
                                "ti", reason, (int64_t)time(NULL))
                       : s_exec(self->db, "DELETE FROM rounds_idle", "");
    if (rc != 0) LOG_ERROR(AGG, "%s", medfl_error_message());
    if (reason[0])
        LOG_WARN(AGG, "no round starts: %s; %s", reason, resume);
    else if (had_version)
        LOG_INFO(AGG, "rounds resume: enough connected nodes have privacy budget");
    else
        LOG_INFO(AGG, "rounds resume: head version v%" PRIu64, vs_store_head(self->vs));
}

#define S_BUDGET_RESUME "rounds resume when a node with budget connects, a node restarts or " \
                        "reconnects, or the configuration is reloaded (SIGHUP: e.g. DP settings " \
                        "the nodes' privacy policies accept)"

/* Another process may have moved the head since this one last looked: `rollback V` (HEAD
 * file) or `init-version` (the first version). A readdir and a small file read, once per
 * round start (and per retry while there is no version), so the running daemon follows
 * without a restart. */
static int s_follow_store(rounds_t *self)
{
    uint64_t before = vs_store_head(self->vs);
    if (vs_store_refresh(self->vs) != 0) {
        LOG_ERROR(AGG, "version store: %s", medfl_error_message());
        return -1;
    }
    uint64_t head = vs_store_head(self->vs), latest = vs_store_latest(self->vs);
    if (head == before) return 0;
    if (head < latest)
        LOG_INFO(AGG, "head moved to v%" PRIu64 " by rollback (latest v%" PRIu64 " kept): next "
                 "round starts from v%" PRIu64, head, latest, head);
    else
        LOG_INFO(AGG, "head moved to v%" PRIu64 " (written by another process, e.g. "
                 "init-version): next round starts from v%" PRIu64, head, head);
    return 0;
}

static part_t *s_part(rounds_t *self, const char *id)
{
    for (size_t i = 0; i < self->n_parts; i++)
        if (strcmp(self->parts[i].id, id) == 0) return &self->parts[i];
    return NULL;
}

static void s_free_blob(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Sends version v (manifest + tensors) to the nodes; round_id 0 marks a catch-up copy that
 * needs no evaluation report. Returns the bytes of one copy, 0 on failure. */
static size_t s_announce(rounds_t *self, uint64_t v, uint64_t round_id, char *const *ids, size_t n)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    vs_manifest_t *m = vs_store_manifest(self->vs, v);
    char *json = m ? vs_manifest_to_json(m) : NULL;
    if (!m || !json || vs_store_serialize(self->vs, v, &blob, &len) != 0) {
        LOG_ERROR(AGG, "cannot announce version %" PRIu64 ": %s", v, medfl_error_message());
        vs_manifest_destroy(&m);
        free(json);
        return 0;
    }
    Medfl__VersionAnnounce va = MEDFL__VERSION_ANNOUNCE__INIT;
    va.version = v;
    va.parent = m->parent;
    va.hash.data = m->hash;
    va.hash.len = VS_HASH_BYTES;
    va.signature.data = m->signature;
    va.signature.len = VS_SIG_BYTES;
    va.manifest.data = (uint8_t *)json;
    va.manifest.len = strlen(json);
    size_t bytes = protobuf_c_message_get_packed_size(&va.base) + len;
    int sent = wire_server_send_many(self->server, (const char *const *)ids, n,
                                     MEDFL__MSG_TYPE__MSG_VERSION_ANNOUNCE, round_id, &va.base,
                                     blob, len, s_free_blob, NULL);
    vs_manifest_destroy(&m);
    free(json);
    if (sent < 0) {
        LOG_ERROR(AGG, "cannot announce version %" PRIu64 ": %s", v, medfl_error_message());
        return 0;
    }
    /* Only a send to every node proves each got it; otherwise a later Hello or a
     * BASE_MISMATCH decline tells what a node holds. */
    if ((size_t)sent == n)
        for (size_t i = 0; i < n; i++) {
            known_t *k = s_known(self, ids[i]);
            if (k && k->version < v) k->version = v;
        }
    return bytes;
}

/* Sends a node the versions of the head's chain newer than what it holds, oldest first
 * (a node installs a version only on top of its parent), at most ROUNDS_SYNC_MAX per round
 * start: a node that says it holds nothing (model_version 0) must not make each round start
 * queue the whole history for it (issue #16). A node further behind declines this round
 * (base mismatch) and gets the next versions at the next round start; s_announce records
 * what was sent. Stops at the first send that fails (the node is gone or not reading). */
static void s_sync_node(rounds_t *self, part_t *p)
{
    known_t *k = s_known(self, p->id);
    uint64_t have = k ? k->version : 0;
    uint64_t chain[256];
    size_t n = 0;
    uint64_t v = self->head;
    while (v > have && n < 256) {
        chain[n++] = v;
        vs_manifest_t *m = vs_store_manifest(self->vs, v);
        if (!m) break;
        v = m->parent;
        vs_manifest_destroy(&m);
    }
    if (n > ROUNDS_SYNC_MAX)
        LOG_INFO(AGG, "round %" PRIu64 ": node %s is %zu versions behind: sending the next %d "
                 "this round", self->round_id, p->id, n, ROUNDS_SYNC_MAX);
    char *ids[1] = {p->id};
    for (size_t sent = 0; n > 0 && sent < ROUNDS_SYNC_MAX; sent++) {
        size_t bytes = s_announce(self, chain[--n], 0, ids, 1);
        if (!bytes || !wire_server_has_peer(self->server, p->id)) break;
        p->bytes_down += bytes;
    }
}

/* ---- sending ------------------------------------------------------------------------------ */

static int s_send(rounds_t *self, part_t *p, Medfl__MsgType type, const ProtobufCMessage *body,
                  void *bulk, size_t bulk_len, wire_free_fn *free_fn)
{
    size_t bytes = protobuf_c_message_get_packed_size(body) + bulk_len;
    if (wire_server_send(self->server, p->id, type, self->round_id, body, bulk, bulk_len,
                         free_fn, NULL) != 0) {
        LOG_WARN(AGG, "round %" PRIu64 ": cannot send %s to node %s: %s", self->round_id,
                 wire_type_name(type), p->id, medfl_error_message());
        return -1;
    }
    p->bytes_down += bytes;
    return 0;
}

/* ---- round life --------------------------------------------------------------------------- */

static void s_release_round(rounds_t *self)
{
    secagg_server_destroy(&self->ss);
    compress_round_destroy(&self->cr);
    free(self->acc);
    self->acc = NULL;
    free(self->ring_acc);
    self->ring_acc = NULL;
    free(self->parts);
    self->parts = NULL;
    free(self->roster);
    self->roster = NULL;
    self->n_parts = 0;
    self->n_in = 0;
    self->weight_in = 0;
    self->new_version = 0;
    self->commit_pending = false;
}

/* federation.debug_phase_hold_ms keeps each phase open (journaled, visible in `status`)
 * for at least that long, so a crash test can SIGKILL the daemon in a phase that otherwise
 * lasts milliseconds; messages are still taken in meanwhile, the deadline moves by the hold.
 * 0 in production. */
static void s_enter(rounds_t *self, rounds_phase_t phase, int64_t now, int64_t deadline_ms)
{
    int64_t hold = self->cfg->fed_debug_hold_ms;
    self->phase = phase;
    self->hold_until_ms = now + hold;
    self->deadline_ms = now + hold + deadline_ms;
    s_journal_phase(self);
    LOG_INFO(AGG, "round %" PRIu64 ": phase %s (deadline %lld ms)%s", self->round_id,
             rounds_phase_name(phase), (long long)deadline_ms,
             hold > 0 ? " (held open by federation.debug_phase_hold_ms, a test setting)" : "");
}

/* The round's end in the contribution history: whether each selected node delivered its
 * update (the reliability EMA; a node that declined is not counted either way: declining for
 * budget or a base mismatch is not unreliability) and its bytes on the wire. Upserts keyed by
 * (round, node), so a replay after a crash counts nothing twice. */
static void s_record_history(rounds_t *self)
{
    contrib_params_t cp;
    contrib_params_default(&cp);
    for (size_t i = 0; i < self->n_parts; i++) {
        const part_t *p = &self->parts[i];
        if ((!p->declined &&
             contrib_db_record_participation(self->contrib, self->round_id, p->id, p->input,
                                             cp.ema_alpha) != 0) ||
            contrib_db_record_round_stats(self->contrib, self->round_id, p->id, p->bytes_up,
                                          p->bytes_down, NAN) != 0)
            LOG_ERROR(AGG, "contribution history: %s", medfl_error_message());
    }
}

static void s_after_round(rounds_t *self, int64_t now, int64_t pause_ms)
{
    s_release_round(self);
    self->round_id = 0;
    self->min_reached_ms = 0;
    self->idle_until_ms = now + pause_ms;
    bool done = self->cfg->fed_rounds > 0 && self->completed >= (uint64_t)self->cfg->fed_rounds;
    self->phase = done ? ROUNDS_DONE : ROUNDS_IDLE;
    if (done)
        LOG_INFO(AGG, "federation finished: %" PRIu64 " rounds completed (federation.rounds)",
                 self->completed);
}

static void s_abort(rounds_t *self, int64_t now, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    LOG_WARN(AGG, "round %" PRIu64 " aborted in phase %s: %s", self->round_id,
             rounds_phase_name(self->phase), reason);
    s_journal_end(self, "aborted", reason);
    char text[600];
    snprintf(text, sizeof text, "round %" PRIu64 " aborted: %s", self->round_id, reason);
    for (size_t i = 0; i < self->n_parts; i++)
        if (!self->parts[i].declined)
            wire_server_send_error(self->server, self->parts[i].id, self->round_id,
                                   MEDFL__ERROR_CODE__ERROR_UNKNOWN_ROUND, text);
    s_record_history(self);
    s_after_round(self, now, self->cfg->fed_retry_ms);
}

static int s_cmp_peer(const void *a, const void *b)
{
    return strcmp(((const rounds_peer_t *)a)->node_id, ((const rounds_peer_t *)b)->node_id);
}

/* Per-node weights of the round (docs/contribution-weighting.md): equal, or the contribution
 * weights from the history in contrib.db — the records each node announced, the mean loss it
 * reported for its latest evaluations (a node whose validation data disagrees with the
 * others', e.g. mislabelled, reports an outlying loss) and its reliability — computed,
 * logged and stored for the round by contrib_db_compute_round, so `weights` and `report`
 * read what the round used. Normalised to sum 1; equal weights when that fails. */
static void s_weights(rounds_t *self)
{
    size_t n = self->n_parts;
    bool uniform = strcmp(self->cfg->fed_weighting, "uniform") == 0;
    if (!uniform) {
        contrib_params_t cp;
        contrib_params_default(&cp);
        const char **ids = calloc(n, sizeof *ids);
        double *records = calloc(n, sizeof *records);
        contrib_output_t *out = calloc(n, sizeof *out);
        if (ids && records && out) {
            for (size_t i = 0; i < n; i++) {
                ids[i] = self->parts[i].id;
                records[i] = (double)self->parts[i].n_records;
            }
            if (contrib_db_compute_round(self->contrib, &cp, self->round_id, ids, records, NULL,
                                         n, ROUNDS_RECENT_REPORTS, out) == 0)
                for (size_t i = 0; i < n; i++) self->parts[i].weight = out[i].weight;
            else
                uniform = true;
        } else {
            medfl_error_set(MEDFL_ENOMEM, "out of memory for %zu weights", n);
            uniform = true;
        }
        if (uniform)
            LOG_WARN(AGG, "round %" PRIu64 ": contribution weights: %s; using equal weights",
                     self->round_id, medfl_error_message());
        free(ids);
        free(records);
        free(out);
    }
    if (uniform)
        for (size_t i = 0; i < n; i++) self->parts[i].weight = 1.0 / (double)n;
}

static Medfl__CompressionScheme s_scheme(const rounds_t *self)
{
    const char *s = self->cfg->comp_scheme;
    if (strcmp(s, "auto") == 0) s = self->secure ? "randk" : "topk";
    if (strcmp(s, "topk") == 0) return MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK;
    if (strcmp(s, "quantize") == 0) return MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE;
    if (strcmp(s, "randk") == 0) return MEDFL__COMPRESSION_SCHEME__COMPRESSION_RANDK;
    return MEDFL__COMPRESSION_SCHEME__COMPRESSION_NONE;
}

static void s_start(rounds_t *self, const rounds_peer_t *peers, size_t n_peers, int64_t now)
{
    const agg_config_t *cfg = self->cfg;
    size_t n = n_peers < (size_t)cfg->fed_max_nodes ? n_peers : (size_t)cfg->fed_max_nodes;
    if (n > ROUNDS_MAX_PARTICIPANTS) n = ROUNDS_MAX_PARTICIPANTS;
    rounds_peer_t *sorted = malloc(n_peers * sizeof *sorted);
    self->parts = calloc(n, sizeof *self->parts);
    self->roster = calloc(n, sizeof *self->roster);
    if (!sorted || !self->parts || !self->roster) {
        free(sorted);
        s_release_round(self);
        LOG_ERROR(AGG, "out of memory starting a round");
        return;
    }
    memcpy(sorted, peers, n_peers * sizeof *sorted);
    qsort(sorted, n_peers, sizeof *sorted, s_cmp_peer);
    /* Least recently chosen first would be fairer for max_nodes < connected; the sorted
     * prefix is deterministic, which the roster needs anyway. */
    for (size_t i = 0; i < n; i++) {
        part_t *p = &self->parts[i];
        snprintf(p->id, sizeof p->id, "%s", sorted[i].node_id);
        memcpy(p->ipk, sorted[i].identity_pk, 32);
        p->n_records = sorted[i].n_records;
        self->roster[i] = p->id;
    }
    free(sorted);
    self->n_parts = n;
    self->round_id = self->last_round_id + 1;
    self->secure = cfg->fed_secure;
    s_weights(self);

    /* Compression and secure aggregation settings. */
    Medfl__Compression comp = MEDFL__COMPRESSION__INIT;
    comp.scheme = s_scheme(self);
    randombytes_buf(&self->seed, sizeof self->seed);
    comp.seed = self->seed;
    comp.bits = (uint32_t)cfg->comp_bits;
    comp.value_bits = (uint32_t)cfg->comp_value_bits;
    comp.clip = (float)cfg->comp_clip;
    comp.max_nodes = (uint32_t)n;
    if (comp.scheme == MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK ||
        comp.scheme == MEDFL__COMPRESSION_SCHEME__COMPRESSION_RANDK) {
        double frac = cfg->comp_k_frac;
        if (!(frac > 0)) {
            compress_config_t d;
            compress_config_default(&d, comp.scheme == MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK
                                            ? COMPRESS_PLAIN : COMPRESS_SECAGG);
            frac = d.k_frac;
        }
        double k = round(frac * (double)self->numel);
        comp.k = k < 1 ? 1 : k > (double)self->numel ? self->numel : (uint64_t)k;
    }
    if (fed_compression(&comp, self->secure, (uint32_t)self->numel, &self->enc, &self->cc) != 0) {
        LOG_ERROR(AGG, "round not started: %s", medfl_error_message());
        s_release_round(self);
        self->round_id = 0;
        self->idle_until_ms = now + cfg->fed_retry_ms;
        return;
    }
    /* Distributed noise (docs/privacy.md §10): ρ_max = max w / N sizes every node's share
     * and the ring's headroom; the nodes derive the same headroom from the round start. */
    double rho_max = 0;
    if (cfg->dp_enabled && cfg->dp_distributed && !self->secure)
        LOG_WARN(AGG, "privacy.distributed needs secure aggregation: not offered");
    else if (cfg->dp_enabled && cfg->dp_distributed) {
        for (size_t i = 0; i < n; i++) {
            if (self->parts[i].n_records == 0) {
                rho_max = 0;
                LOG_WARN(AGG, "round %" PRIu64 ": %s announced no records: distributed noise not "
                         "offered this round", self->round_id, self->parts[i].id);
                break;
            }
            double r = self->parts[i].weight / (double)self->parts[i].n_records;
            if (r > rho_max) rho_max = r;
        }
    }
    Medfl__DpParams dp = MEDFL__DP_PARAMS__INIT;
    dp.enabled = cfg->dp_enabled;
    dp.noise_multiplier = cfg->dp_noise;
    dp.clip_norm = cfg->dp_clip;
    dp.sample_rate = cfg->dp_sample_rate;
    dp.delta = cfg->dp_delta;
    dp.distributed = rho_max > 0;
    dp.record_weight_max = rho_max;
    double headroom = fed_dp_headroom(&dp, cfg->fed_lr, self->secure);
    /* The participants' identity keys, one contiguous copy for the secagg server and the
     * RoundStart's views into it; both freed on every path. */
    uint8_t *ipks = NULL;
    ProtobufCBinaryData *pks = NULL;
    if (fed_dp_ring(headroom, &self->cc) != 0) goto fail;
    self->headroom = headroom;

    self->m = self->numel;
    if (self->enc == FED_LEVELS) {
        uint8_t seed32[COMPRESS_SEED_BYTES];
        fed_compress_seed(self->seed, seed32);
        self->cr = compress_round_new(&self->cc, (uint32_t)self->numel, seed32);
        if (!self->cr) goto fail;
        self->m = compress_round_k(self->cr);
    }
    if (self->secure) {
        if (self->enc == FED_DENSE &&
            fed_fixed_params_dp((uint32_t)n, cfg->comp_clip, headroom, &self->fx) != 0)
            goto fail;
        uint32_t k = (uint32_t)cfg->fed_neighbours;
        if (k == 0 || k >= n) k = secagg_default_neighbours((uint32_t)n);
        if (k >= n) k = (uint32_t)n - 1;
        /* 0 = a strict majority; a fraction is > 0.5 (agg_config_load), so ceil keeps t a
         * strict majority too (the secagg params check refuses anything less) */
        uint32_t t = cfg->fed_threshold > 0 ? (uint32_t)ceil(cfg->fed_threshold * (double)(k + 1))
                                            : secagg_default_threshold(k);
        if (t < secagg_default_threshold(k)) t = secagg_default_threshold(k);
        if (t > k + 1) t = k + 1;
        if (secagg_params_init(&self->sp, self->round_id, (uint32_t)n, k, t, self->m) != 0)
            goto fail;
    } else if (self->enc == FED_LEVELS) {
        self->ring_acc = calloc(self->m, sizeof *self->ring_acc);
        if (!self->ring_acc) goto fail;
    } else {
        self->acc = calloc(self->numel, sizeof *self->acc);
        if (!self->acc) goto fail;
    }

    /* The round start, identical for every participant but for weight and deadline_ms.
     * Built before the secagg server: its digest (wire_round_context, which a node computes
     * from the copy it receives) goes into the params every AdvertiseKeys signature covers,
     * so a node that was sent other round parameters cannot take part unnoticed. */
    Medfl__Hyperparams hp = MEDFL__HYPERPARAMS__INIT;
    hp.lr = cfg->fed_lr;
    hp.local_steps = (uint32_t)cfg->fed_local_steps;
    hp.batch_size = (uint32_t)cfg->fed_batch_size;
    hp.max_seq_len = (uint32_t)cfg->fed_max_seq_len;
    Medfl__SecAggParams sa = MEDFL__SEC_AGG_PARAMS__INIT;
    pks = calloc(n, sizeof *pks);
    ipks = malloc(n * 32);
    if (!pks || !ipks) {
        medfl_error_set(MEDFL_ENOMEM, "identity keys of %zu participants", n);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        memcpy(ipks + 32 * i, self->parts[i].ipk, 32);
        pks[i].data = ipks + 32 * i;
        pks[i].len = 32;
    }
    sa.enabled = self->secure;
    sa.participants = self->roster;
    sa.n_participants = n;
    if (self->secure) {
        sa.threshold = self->sp.t;
        sa.neighbours = self->sp.k;
        sa.graph_seed.data = self->sp.graph_seed;
        sa.graph_seed.len = 32;
        sa.m = self->m;
        sa.identity_pks = pks;
        sa.n_identity_pks = n;
    }
    Medfl__RoundStart rs = MEDFL__ROUND_START__INIT;
    rs.round_id = self->round_id;
    rs.base_version = self->head;
    rs.base_hash.data = self->head_m->hash;
    rs.base_hash.len = VS_HASH_BYTES;
    rs.hyperparams = &hp;
    rs.dp = &dp;
    rs.compression = &comp;
    rs.secagg = &sa;
    rs.deadline_ms = (uint32_t)cfg->fed_train_ms;
    if (self->secure) {
        _Static_assert(SECAGG_CONTEXT_BYTES == WIRE_ROUND_CONTEXT_BYTES, "round context size");
        if (wire_round_context(&rs, self->sp.context) != 0) goto fail;
        self->ss = secagg_server_new(&self->sp, ipks, 2);
        if (!self->ss) goto fail;
    }

    /* Journal first: a crash after this line leaves a round that recovery aborts. */
    size_t plen = 1;
    for (size_t i = 0; i < n; i++) plen += strlen(self->parts[i].id) + 1;
    char *plist = calloc(plen, 1);
    if (!plist) goto fail;
    for (size_t i = 0; i < n; i++) {
        if (i) strcat(plist, ",");
        strcat(plist, self->parts[i].id);
    }
    self->phase = self->secure ? ROUNDS_KEYS : ROUNDS_INPUT;
    int jrc = s_exec(self->db,
                     "INSERT INTO rounds (round_id, phase, participants, base_version, started_at,"
                     " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                     "ittiii", (int64_t)self->round_id, rounds_phase_name(self->phase), plist,
                     (int64_t)self->head, (int64_t)time(NULL), (int64_t)time(NULL));
    if (jrc != 0) {
        free(plist);
        goto fail;
    }
    self->last_round_id = self->round_id;
    s_metrics_start(self, now);
    LOG_INFO(AGG, "round %" PRIu64 " started from version %" PRIu64 ": %zu participants [%s], "
             "%s, compression %s (%" PRIu64 " of %zu coordinates)%s",
             self->round_id, self->head, n, plist,
             self->secure ? "secure aggregation" : "plain updates",
             comp.scheme == MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK       ? "topk"
             : comp.scheme == MEDFL__COMPRESSION_SCHEME__COMPRESSION_RANDK    ? "randk"
             : comp.scheme == MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE ? "quantize"
                                                                               : "none",
             comp.k ? comp.k : self->m, self->numel, cfg->dp_enabled ? ", DP-SGD" : "");
    free(plist);
    if (self->secure)
        LOG_INFO(AGG, "round %" PRIu64 ": secure aggregation n %u, neighbours %u, threshold %u",
                 self->round_id, self->sp.n, self->sp.k, self->sp.t);
    if (dp.distributed)
        LOG_INFO(AGG, "round %" PRIu64 ": distributed noise offered (sigma %g, record weight max "
                 "%.6g, ring headroom %.4g)", self->round_id, dp.noise_multiplier, rho_max,
                 headroom);

    /* Catch-up copies of the base version first (same connection: they arrive before). */
    for (size_t i = 0; i < n; i++) s_sync_node(self, &self->parts[i]);

    for (size_t i = 0; i < n; i++) {
        rs.weight = self->parts[i].weight;
        s_send(self, &self->parts[i], MEDFL__MSG_TYPE__MSG_ROUND_START, &rs.base, NULL, 0, NULL);
    }
    free(pks);
    free(ipks);
    s_enter(self, self->phase, now, self->secure ? cfg->fed_keys_ms : cfg->fed_train_ms);
    return;
fail:
    free(pks);
    free(ipks);
    LOG_ERROR(AGG, "round %" PRIu64 " not started: %s", self->round_id, medfl_error_message());
    s_release_round(self);
    self->round_id = 0;
    self->phase = ROUNDS_IDLE;
    self->idle_until_ms = now + cfg->fed_retry_ms;
}

static void s_publish(rounds_t *self, int64_t now);

/* Commits the server step over the weighted sum S (numel floats) and W, announces it. */
static void s_commit(rounds_t *self, const float *sum, double weight_total, int64_t now)
{
    /* A rollback (or another writer) moved the head during the round: the sum was trained on
     * the round's base, so committing it on the new head would mix two histories, and on the
     * old one would silently undo the rollback. The next round starts from the new head. */
    if (s_follow_store(self) != 0) {
        s_abort(self, now, "version store: %s", medfl_error_message());
        return;
    }
    if (vs_store_head(self->vs) != self->head) {
        s_abort(self, now, "head moved to v%" PRIu64 " during the round (rollback or another "
                "writer); the round trained on v%" PRIu64 ": next round starts from v%" PRIu64,
                vs_store_head(self->vs), self->head, vs_store_head(self->vs));
        return;
    }
    strategy_params_t sp;
    strategy_kind_t kind = STRATEGY_FEDAVG;
    if (strategy_kind_parse(self->cfg->fed_strategy, &kind) != 0) kind = STRATEGY_FEDAVG;
    strategy_params_default(&sp, kind);
    if (self->cfg->fed_server_lr > 0) sp.lr = self->cfg->fed_server_lr;
    vs_participant_t *parts = calloc(self->n_parts ? self->n_parts : 1, sizeof *parts);
    if (!parts) {
        s_abort(self, now, "out of memory");
        return;
    }
    size_t np = 0;
    for (size_t i = 0; i < self->n_parts; i++)
        if (self->parts[i].input) {
            parts[np].node = self->parts[i].id;
            parts[np].weight = self->parts[i].weight;
            np++;
        }
    vs_metric_t metrics[2] = {{(char *)"contributors", (double)np},
                              {(char *)"weight_total", weight_total}};
    uint64_t v = 0;
    int rc = versions_next(self->vs, self->sk, &sp, sum, self->numel, weight_total,
                           self->round_id, parts, np, metrics, 2, &v);
    free(parts);
    if (rc != 0) {
        s_abort(self, now, "server step / version commit failed: %s", medfl_error_message());
        return;
    }
    self->new_version = v;
    self->commit_weight = weight_total;
    if (self->cfg->fed_debug_hold_ms > 0) {
        /* The window a crash recovery must handle: the version is in the store, the journal
         * does not name it yet. Held open (tests only) so a test can kill the daemon here. */
        self->commit_pending = true;
        self->hold_until_ms = now + self->cfg->fed_debug_hold_ms;
        LOG_WARN(AGG, "round %" PRIu64 ": version %" PRIu64 " written, journal update held %lld ms "
                 "(federation.debug_phase_hold_ms, a test setting)", self->round_id, v,
                 (long long)self->cfg->fed_debug_hold_ms);
        return;
    }
    s_publish(self, now);
}

/* Journals the version written by s_commit, makes it the head and announces it. */
static void s_publish(rounds_t *self, int64_t now)
{
    uint64_t v = self->new_version;
    size_t np = 0;
    for (size_t i = 0; i < self->n_parts; i++) np += self->parts[i].input;
    self->commit_pending = false;
    if (s_exec(self->db, "UPDATE rounds SET version = ?, updated_at = ? WHERE round_id = ?",
               "iii", (int64_t)v, (int64_t)time(NULL), (int64_t)self->round_id) != 0)
        LOG_ERROR(AGG, "%s", medfl_error_message());
    uint64_t parent = self->head;
    if (s_load_head(self) != 0) LOG_ERROR(AGG, "reloading the head: %s", medfl_error_message());
    LOG_INFO(AGG, "round %" PRIu64 ": version %" PRIu64 " committed from %zu updates "
             "(weight total %.4f, %s)", self->round_id, v, np, self->commit_weight,
             self->cfg->fed_strategy);
    /* Every connected node holding the parent gets it (participants evaluate it); the
     * others receive the chain when they are next selected. */
    char **to = calloc(self->n_live ? self->n_live : 1, sizeof *to);
    size_t n_to = 0;
    for (size_t i = 0; to && i < self->n_live; i++) {
        known_t *k = s_known(self, self->live[i]);
        if (k && k->version >= parent) to[n_to++] = self->live[i];
    }
    size_t bytes = to ? s_announce(self, v, self->round_id, to, n_to) : 0;
    free(to);
    for (size_t i = 0; i < self->n_parts; i++) {
        known_t *k = s_known(self, self->parts[i].id);
        if (k && k->version >= v) self->parts[i].bytes_down += bytes;
    }
    s_enter(self, ROUNDS_EVAL, now, self->cfg->fed_eval_ms);
}

static size_t s_count(const rounds_t *self, size_t field_offset)
{
    size_t c = 0;
    for (size_t i = 0; i < self->n_parts; i++)
        if (*(const bool *)((const char *)&self->parts[i] + field_offset)) c++;
    return c;
}

static size_t s_quorum(const rounds_t *self)
{
    double q = ceil(self->cfg->fed_quorum * (double)self->n_parts);
    return q < 1 ? 1 : (size_t)q;
}

static void s_finish_plain(rounds_t *self, int64_t now)
{
    if (self->n_in < s_quorum(self)) {
        s_abort(self, now, "%zu of %zu updates arrived, quorum is %zu", self->n_in, self->n_parts,
                s_quorum(self));
        return;
    }
    float *sum = calloc(self->numel ? self->numel : 1, sizeof *sum);
    if (!sum) {
        s_abort(self, now, "out of memory");
        return;
    }
    if (self->enc == FED_LEVELS) {
        if (compress_secagg_decode_sum(self->cr, self->ring_acc, (uint32_t)self->n_in, sum) != 0) {
            free(sum);
            s_abort(self, now, "decoding the sum: %s", medfl_error_message());
            return;
        }
        LOG_INFO(AGG, "round %" PRIu64 ": sum checksum %" PRIu32 " over %zu inputs",
                 self->round_id, fed_checksum(self->ring_acc, self->m), self->n_in);
    } else {
        for (size_t i = 0; i < self->numel; i++) sum[i] = (float)self->acc[i];
    }
    s_commit(self, sum, self->weight_in, now);
    free(sum);
}

/* The unmasked dense sum of honest inputs lies inside the ring's clip range: each node
 * clipped every coordinate to [-clip, clip] before weighting, and its distributed noise is
 * clamped to the headroom. The aggregator cannot see one node's input, only this sum; a sum
 * outside means some node encoded out-of-range values (the ring cannot tell), and committing
 * it would poison the version, so the round is aborted instead. Levels rounds have the same
 * check inside compress_secagg_decode_sum. 0, or -1 (MEDFL_EPROTO) naming the coordinate. */
static int s_sum_out_of_range(const rounds_t *self, const float *sum, double w, uint32_t n3)
{
    double bound = w * self->fx.clip + n3 * self->headroom + (n3 + 1) / self->fx.scale;
    for (size_t i = 0; i < self->numel; i++)
        if (!(fabs((double)sum[i]) <= bound * (1 + 1e-6)))
            return medfl_error_set(MEDFL_EPROTO, "unmasked sum out of the ring's clip range at "
                                   "coordinate %zu (bound %.4g for weight %.4g): some input was "
                                   "not clipped; nothing committed", i, bound, w);
    return 0;
}

static void s_finish_secure(rounds_t *self, int64_t now)
{
    uint32_t *ring = calloc(self->m ? self->m : 1, sizeof *ring);
    float *sum = calloc(self->numel ? self->numel : 1, sizeof *sum);
    if (!ring || !sum) {
        free(ring);
        free(sum);
        s_abort(self, now, "out of memory");
        return;
    }
    if (secagg_server_finish(self->ss, ring) != 0) {
        free(ring);
        free(sum);
        s_abort(self, now, "unmasking: %s", medfl_error_message());
        return;
    }
    uint32_t n3 = 0;
    const uint32_t *u3 = secagg_server_set(self->ss, 3, &n3);
    double w = 0;
    for (uint32_t i = 0; i < n3; i++) w += self->parts[u3[i]].weight;
    char names[1024] = "";
    for (uint32_t i = 0; i < n3; i++) {
        if (i) strncat(names, ",", sizeof names - strlen(names) - 1);
        strncat(names, self->parts[u3[i]].id, sizeof names - strlen(names) - 1);
    }
    uint32_t check = 0;
    int rc;
    if (self->enc == FED_LEVELS) {
        unsigned width = compress_round_width(self->cr);
        uint32_t mask = width >= 32 ? 0xFFFFFFFFu : ((1u << width) - 1);
        for (uint64_t i = 0; i < self->m; i++) check += ring[i] & mask;
        rc = compress_secagg_decode_sum(self->cr, ring, n3, sum);
    } else {
        check = fed_checksum(ring, self->m);
        rc = secagg_decode(&self->fx, ring, self->m, 1.0, sum);
    }
    free(ring);
    LOG_INFO(AGG, "round %" PRIu64 ": unmasked sum checksum %" PRIu32 " over %u survivors [%s]",
             self->round_id, check, n3, names);
    if (rc != 0) {
        free(sum);
        s_abort(self, now, "decoding the unmasked sum: %s", medfl_error_message());
        return;
    }
    if (self->enc == FED_DENSE && s_sum_out_of_range(self, sum, w, n3) != 0) {
        free(sum);
        s_abort(self, now, "%s", medfl_error_message());
        return;
    }
    s_commit(self, sum, w, now);
    free(sum);
}

/* Consistency check (Bonawitz et al. round 3): the survivor set, the same for every survivor,
 * which each signs before any share is revealed. */
static void s_send_survivors(rounds_t *self, int64_t now)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    Medfl__ConsistencyCheck cc;
    if (secagg_server_survivors(self->ss, &buf, &len) != 0 ||
        fed_survivors_to_proto(buf, len, self->roster, self->n_parts, &cc) != 0) {
        free(buf);
        s_abort(self, now, "consistency check: %s", medfl_error_message());
        return;
    }
    free(buf);
    for (size_t i = 0; i < self->n_parts; i++)
        if (self->parts[i].input && !self->parts[i].dropped)
            s_send(self, &self->parts[i], MEDFL__MSG_TYPE__MSG_CONSISTENCY_CHECK, &cc.base, NULL,
                   0, NULL);
    LOG_INFO(AGG, "round %" PRIu64 ": consistency check: %zu survivors asked to sign the "
             "survivor set", self->round_id, cc.n_survivors);
    fed_proto_free_survivors(&cc);
    s_enter(self, ROUNDS_CONSISTENCY, now, self->cfg->fed_unmask_ms);
}

/* Each signer gets the survivors, the dropped nodes and its neighbourhood's signatures. */
static void s_send_unmask(rounds_t *self, int64_t now)
{
    size_t sent = 0, n_surv = 0, n_drop = 0;
    for (size_t i = 0; i < self->n_parts; i++) {
        if (!self->parts[i].signed_set) continue;
        uint8_t *buf = NULL;
        size_t len = 0;
        Medfl__UnmaskRequest ur;
        if (secagg_server_unmask_request(self->ss, (uint32_t)i, &buf, &len) != 0 ||
            fed_unmask_req_to_proto(buf, len, self->roster, self->n_parts, &ur) != 0) {
            free(buf);
            s_abort(self, now, "unmask request for node %s: %s", self->parts[i].id,
                    medfl_error_message());
            return;
        }
        free(buf);
        if (s_send(self, &self->parts[i], MEDFL__MSG_TYPE__MSG_UNMASK_REQUEST, &ur.base, NULL, 0,
                   NULL) == 0)
            sent++;
        n_surv = ur.n_survivors, n_drop = ur.n_dropped;
        fed_proto_free_unmask_req(&ur);
    }
    LOG_INFO(AGG, "round %" PRIu64 ": unmask request to %zu signers: %zu survivors, %zu dropped",
             self->round_id, sent, n_surv, n_drop);
    s_enter(self, ROUNDS_UNMASK, now, self->cfg->fed_unmask_ms);
}

static void s_close_phase(rounds_t *self, int64_t now)
{
    const agg_config_t *cfg = self->cfg;
    switch (self->phase) {
    case ROUNDS_KEYS: {
        if (secagg_server_close_keys(self->ss) != 0) {
            s_abort(self, now, "%s", medfl_error_message());
            return;
        }
        uint32_t n1 = 0;
        const uint32_t *u1 = secagg_server_set(self->ss, 1, &n1);
        for (uint32_t i = 0; i < n1; i++) {
            if (self->parts[u1[i]].dropped) continue; /* its keys still serve the others */
            uint8_t *buf = NULL;
            size_t len = 0;
            Medfl__KeysBroadcast kb;
            if (secagg_server_keys_broadcast(self->ss, u1[i], &buf, &len) != 0 ||
                fed_broadcast_to_proto(buf, len, self->roster, self->n_parts, &kb) != 0) {
                LOG_ERROR(AGG, "round %" PRIu64 ": keys for node %s: %s", self->round_id,
                          self->parts[u1[i]].id, medfl_error_message());
                free(buf);
                continue;
            }
            free(buf);
            s_send(self, &self->parts[u1[i]], MEDFL__MSG_TYPE__MSG_KEYS_BROADCAST, &kb.base, NULL,
                   0, NULL);
            fed_proto_free_broadcast(&kb);
        }
        s_enter(self, ROUNDS_SHARES, now, cfg->fed_shares_ms);
        return;
    }
    case ROUNDS_SHARES: {
        if (secagg_server_close_shares(self->ss) != 0) {
            s_abort(self, now, "%s", medfl_error_message());
            return;
        }
        uint32_t n2 = 0;
        const uint32_t *u2 = secagg_server_set(self->ss, 2, &n2);
        for (uint32_t i = 0; i < n2; i++) {
            if (self->parts[u2[i]].dropped) continue;
            uint8_t *buf = NULL;
            size_t len = 0;
            Medfl__SharesDelivery sd = MEDFL__SHARES_DELIVERY__INIT;
            if (secagg_server_shares_delivery(self->ss, u2[i], &buf, &len) != 0 ||
                fed_shares_to_proto(SECAGG_MSG_SHARES_DELIVERY, buf, len, self->roster,
                                    self->n_parts, &sd.shares, &sd.n_shares) != 0) {
                LOG_ERROR(AGG, "round %" PRIu64 ": shares for node %s: %s", self->round_id,
                          self->parts[u2[i]].id, medfl_error_message());
                free(buf);
                continue;
            }
            free(buf);
            s_send(self, &self->parts[u2[i]], MEDFL__MSG_TYPE__MSG_SHARES_DELIVERY, &sd.base,
                   NULL, 0, NULL);
            fed_proto_free_shares(sd.shares, sd.n_shares);
        }
        s_enter(self, ROUNDS_INPUT, now, cfg->fed_train_ms);
        return;
    }
    case ROUNDS_INPUT:
        if (!self->secure) {
            s_finish_plain(self, now);
            return;
        }
        if (self->n_in < s_quorum(self)) {
            s_abort(self, now, "%zu of %zu masked inputs arrived, quorum is %zu", self->n_in,
                    self->n_parts, s_quorum(self));
            return;
        }
        if (secagg_server_close_masked(self->ss) != 0) {
            s_abort(self, now, "%s", medfl_error_message());
            return;
        }
        s_send_survivors(self, now);
        return;
    case ROUNDS_CONSISTENCY:
        if (secagg_server_close_signatures(self->ss) != 0) {
            s_abort(self, now, "%s", medfl_error_message());
            return;
        }
        s_send_unmask(self, now);
        return;
    case ROUNDS_UNMASK:
        s_finish_secure(self, now);
        return;
    case ROUNDS_EVAL: {
        size_t reports = s_count(self, offsetof(part_t, eval));
        LOG_INFO(AGG, "round %" PRIu64 " completed: version %" PRIu64 ", %zu evaluation reports",
                 self->round_id, self->new_version, reports);
        self->completed++;
        s_journal_end(self, "completed", NULL);
        s_record_history(self);
        s_after_round(self, now, 0);
        return;
    }
    default:
        return;
    }
}

/* True when every node still expected in this phase has answered. */
static bool s_phase_complete(const rounds_t *self)
{
    size_t want = 0, got = 0;
    for (size_t i = 0; i < self->n_parts; i++) {
        const part_t *p = &self->parts[i];
        if (p->dropped) continue; /* nothing more is awaited from it (what it sent counts) */
        switch (self->phase) {
        case ROUNDS_KEYS: want += !p->declined; got += p->keys; break;
        case ROUNDS_SHARES: want += p->keys; got += p->shares; break;
        case ROUNDS_INPUT:
            want += self->secure ? p->shares : !p->declined;
            got += p->input;
            break;
        case ROUNDS_CONSISTENCY: want += p->input; got += p->signed_set; break;
        case ROUNDS_UNMASK: want += p->signed_set; got += p->unmask; break;
        case ROUNDS_EVAL: want += p->input; got += p->eval; break;
        default: return false;
        }
    }
    return got >= want;
}

void rounds_tick(rounds_t *self, const rounds_peer_t *peers, size_t n_peers, int64_t now)
{
    /* Remember who is live, for announcements. */
    free(self->live);
    self->live = calloc(n_peers ? n_peers : 1, sizeof *self->live);
    self->n_live = 0;
    if (self->live)
        for (size_t i = 0; i < n_peers; i++) self->live[self->n_live++] = (char *)peers[i].node_id;

    /* Nodes out of budget are not selected, so they cannot keep a round from reaching
     * quorum, and an all-exhausted federation idles instead of retrying forever. */
    rounds_peer_t *el = realloc(self->eligible, (n_peers ? n_peers : 1) * sizeof *el);
    if (el) self->eligible = el;
    size_t n_el = 0, n_out = 0, n_policy = 0;
    for (size_t i = 0; i < n_peers; i++) {
        known_t *k = s_known(self, peers[i].node_id);
        if (k && (k->budget_out || k->policy_out)) n_out++, n_policy += k->policy_out;
        else if (el) self->eligible[n_el++] = peers[i];
    }
    if (!el) n_el = n_peers, n_out = n_policy = 0; /* out of memory: select from everyone */
    const rounds_peer_t *cand = el ? self->eligible : peers;

    if (self->phase == ROUNDS_DONE) {
        if (self->cfg->fed_rounds == 0 || self->completed < (uint64_t)self->cfg->fed_rounds)
            self->phase = ROUNDS_IDLE; /* rounds raised by a reload */
        else
            return;
    }
    if (self->phase == ROUNDS_IDLE) {
        if (now < self->idle_until_ms) return;
        size_t need = self->cfg->fed_min_nodes > 2 ? (size_t)self->cfg->fed_min_nodes : 2;
        if (n_el < need) {
            char reason[256] = "";
            if (n_policy > 0 && n_el + n_out >= need)
                snprintf(reason, sizeof reason, "%zu of %zu connected nodes decline this "
                         "federation's privacy settings (their privacy policy), %zu out of "
                         "budget, %zu eligible, a round needs %zu", n_policy, n_el + n_out,
                         n_out - n_policy, n_el, need);
            else if (n_out > 0 && n_el == 0)
                snprintf(reason, sizeof reason, "all nodes out of privacy budget");
            else if (n_out > 0 && n_el + n_out >= need)
                snprintf(reason, sizeof reason, "%zu of %zu connected nodes out of privacy budget, "
                         "%zu with budget left, a round needs %zu", n_out, n_el + n_out, n_el, need);
            s_set_idle_reason(self, reason, S_BUDGET_RESUME);
            self->min_reached_ms = 0;
            return;
        }
        if (!self->min_reached_ms) self->min_reached_ms = now;
        if (n_el < (size_t)self->cfg->fed_max_nodes &&
            now - self->min_reached_ms < self->cfg->fed_select_wait_ms)
            return;
        (void)s_follow_store(self); /* logged; s_load_head reports what is unusable */
        if (s_load_head(self) != 0) {
            char reason[256];
            if (medfl_error_code() == MEDFL_ENOTFOUND)
                snprintf(reason, sizeof reason, S_HEAD_PREFIX "no model version yet (seed one "
                         "with `medfl-aggregator init-version`)");
            else
                snprintf(reason, sizeof reason, S_HEAD_PREFIX "%s", medfl_error_message());
            s_set_idle_reason(self, reason, "a round starts once the version store has a head "
                              "version, checked every federation.retry_ms");
            self->idle_until_ms = now + (self->cfg->fed_retry_ms > 250 ? self->cfg->fed_retry_ms
                                                                       : 250);
            return;
        }
        s_set_idle_reason(self, "", "");
        s_start(self, cand, n_el, now);
        return;
    }
    if (self->commit_pending) {
        if (now >= self->hold_until_ms) s_publish(self, now);
        return;
    }
    if (now < self->hold_until_ms) return;
    if (now >= self->deadline_ms) {
        if (self->phase != ROUNDS_EVAL)
            for (size_t i = 0; i < self->n_parts; i++) {
                const part_t *p = &self->parts[i];
                bool missing = !p->dropped && ((self->phase == ROUNDS_KEYS && !p->declined && !p->keys) ||
                               (self->phase == ROUNDS_SHARES && p->keys && !p->shares) ||
                               (self->phase == ROUNDS_INPUT && !p->declined && !p->input &&
                                (!self->secure || p->shares)) ||
                               (self->phase == ROUNDS_CONSISTENCY && p->input &&
                                !p->signed_set) ||
                               (self->phase == ROUNDS_UNMASK && p->signed_set && !p->unmask));
                if (missing)
                    LOG_WARN(AGG, "round %" PRIu64 ": node %s missed the %s deadline: dropped",
                             self->round_id, p->id, rounds_phase_name(self->phase));
            }
        s_close_phase(self, now);
    } else if (s_phase_complete(self)) {
        s_close_phase(self, now);
    }
}

/* ---- incoming -------------------------------------------------------------------------- */

static bool s_round_type(Medfl__MsgType t)
{
    switch (t) {
    case MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS:
    case MEDFL__MSG_TYPE__MSG_SHARE_KEYS:
    case MEDFL__MSG_TYPE__MSG_MASKED_INPUT:
    case MEDFL__MSG_TYPE__MSG_CONSISTENCY_SIGNATURE:
    case MEDFL__MSG_TYPE__MSG_UNMASK_RESPONSE:
    case MEDFL__MSG_TYPE__MSG_UPDATE:
    case MEDFL__MSG_TYPE__MSG_EVAL_REPORT:
    case MEDFL__MSG_TYPE__MSG_DECLINE:
        return true;
    default:
        return false;
    }
}

static const char *s_decline_name(Medfl__DeclineReason r)
{
    switch (r) {
    case MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET: return "privacy budget";
    case MEDFL__DECLINE_REASON__DECLINE_BUSY: return "busy";
    case MEDFL__DECLINE_REASON__DECLINE_BASE_MISMATCH: return "base version mismatch";
    case MEDFL__DECLINE_REASON__DECLINE_INSUFFICIENT_DATA: return "insufficient data";
    case MEDFL__DECLINE_REASON__DECLINE_OPERATOR: return "paused by operator";
    case MEDFL__DECLINE_REASON__DECLINE_DEVICE: return "device unavailable";
    case MEDFL__DECLINE_REASON__DECLINE_PRIVACY_POLICY: return "privacy policy";
    default: return "unspecified";
    }
}

static void s_state_error(rounds_t *self, part_t *p, const char *what)
{
    LOG_WARN(AGG, "round %" PRIu64 ": %s from node %s refused in phase %s", self->round_id, what,
             p->id, rounds_phase_name(self->phase));
    wire_server_send_error(self->server, p->id, self->round_id, MEDFL__ERROR_CODE__ERROR_STATE,
                           "message not expected in this phase of the round");
}

/* ---- what this round accepts from a node ------------------------------------------------
 * Every check below runs before a handler touches a byte of the bulk frame or hands a count
 * to a decoder: the wire layer only knows that a message is well formed, the round knows
 * what it asked for. The expectation comes from the round's own settings, never from the
 * message (issue #16: a TOPK header over a 64-byte bulk made the dense handler read 4 m). */

/* Largest plain top-k payload accepted for n coordinates: an index (4 B) and a value (up to
 * 4 B) per coordinate plus headers. A generous bound; compress_plain_decode checks the rest. */
static size_t s_topk_max_bytes(uint64_t n) { return 64 + 8 * (size_t)n; }

/* What the round expects in an Update (plain) or MaskedInput (secure) header and bulk frame. */
typedef struct {
    Medfl__TensorDtype dtype;
    uint64_t n_elements; /* 0: must equal the bulk length (byte payloads) */
    size_t min_bytes, max_bytes;
} expect_t;

static void s_expect(const rounds_t *self, expect_t *e)
{
    if (self->enc == FED_DENSE) {
        /* plain: float32 per coordinate; secure: one ring element per coordinate */
        e->dtype = self->secure ? MEDFL__TENSOR_DTYPE__DTYPE_U32 : MEDFL__TENSOR_DTYPE__DTYPE_F32;
        e->n_elements = self->secure ? self->m : self->numel;
        e->min_bytes = e->max_bytes = 4 * (size_t)e->n_elements;
    } else if (self->enc == FED_TOPK) {
        e->dtype = MEDFL__TENSOR_DTYPE__DTYPE_I8;
        e->n_elements = 0;
        e->min_bytes = 1;
        e->max_bytes = s_topk_max_bytes(self->numel);
    } else {
        e->dtype = MEDFL__TENSOR_DTYPE__DTYPE_I8;
        e->n_elements = 0;
        e->min_bytes = e->max_bytes = compress_round_payload_bytes(self->cr);
    }
}

static const char *s_scheme_name(Medfl__CompressionScheme s)
{
    switch (s) {
    case MEDFL__COMPRESSION_SCHEME__COMPRESSION_NONE: return "none";
    case MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK: return "topk";
    case MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE: return "quantize";
    case MEDFL__COMPRESSION_SCHEME__COMPRESSION_RANDK: return "randk";
    default: return "unknown";
    }
}

static bool s_scheme_fits(const rounds_t *self, const Medfl__Compression *c)
{
    Medfl__CompressionScheme s = c ? c->scheme : MEDFL__COMPRESSION_SCHEME__COMPRESSION_NONE;
    switch (self->enc) {
    case FED_DENSE: return s == MEDFL__COMPRESSION_SCHEME__COMPRESSION_NONE;
    case FED_TOPK: return s == MEDFL__COMPRESSION_SCHEME__COMPRESSION_TOPK;
    default:
        return s == MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE ||
               s == MEDFL__COMPRESSION_SCHEME__COMPRESSION_RANDK;
    }
}

/* Refuses (logged, Error PROTOCOL to the node) an input whose header or bulk frame is not
 * what this round asked for. Names the field and the sizes, never a value. 0 / -1. */
static int s_check_input(rounds_t *self, part_t *p, const wire_msg_t *msg)
{
    const char *what = wire_type_name(msg->type);
    const Medfl__Compression *comp;
    Medfl__TensorDtype dtype;
    uint64_t n;
    if (msg->type == MEDFL__MSG_TYPE__MSG_UPDATE) {
        comp = msg->body.update->compression;
        dtype = msg->body.update->dtype;
        n = msg->body.update->n_elements;
    } else {
        comp = msg->body.masked_input->compression;
        dtype = msg->body.masked_input->dtype;
        n = msg->body.masked_input->n_elements;
    }
    expect_t e;
    s_expect(self, &e);
    char why[200] = "";
    if (!s_scheme_fits(self, comp))
        snprintf(why, sizeof why, "compression %s is not this round's",
                 s_scheme_name(comp ? comp->scheme : MEDFL__COMPRESSION_SCHEME__COMPRESSION_NONE));
    else if (dtype != e.dtype)
        snprintf(why, sizeof why, "dtype %d, the round expects %d", (int)dtype, (int)e.dtype);
    else if (e.n_elements ? n != e.n_elements : n != msg->bulk_len)
        snprintf(why, sizeof why, "n_elements %" PRIu64 ", the round expects %" PRIu64, n,
                 e.n_elements ? e.n_elements : (uint64_t)msg->bulk_len);
    else if (!msg->bulk || msg->bulk_len < e.min_bytes || msg->bulk_len > e.max_bytes)
        snprintf(why, sizeof why, "bulk frame of %zu bytes, the round expects %zu..%zu",
                 msg->bulk_len, e.min_bytes, e.max_bytes);
    if (!why[0]) return 0;
    LOG_WARN(AGG, "round %" PRIu64 ": %s from node %s refused: %s", self->round_id, what, p->id,
             why);
    wire_server_send_error(self->server, p->id, self->round_id,
                           MEDFL__ERROR_CODE__ERROR_PROTOCOL, "input does not match the round");
    return -1;
}

/* Count fields of the secure-aggregation messages, bounded by this round's roster before a
 * translator walks them (the wire layer bounds them by WIRE's node limit only). */
static int s_check_count(rounds_t *self, part_t *p, const char *what, size_t n)
{
    if (n <= self->n_parts) return 0;
    LOG_WARN(AGG, "round %" PRIu64 ": %s from node %s refused: %zu entries for a roster of %zu",
             self->round_id, what, p->id, n, self->n_parts);
    wire_server_send_error(self->server, p->id, self->round_id,
                           MEDFL__ERROR_CODE__ERROR_PROTOCOL, "more entries than participants");
    return -1;
}

/* The L2 bound of one plain update: federation.update_norm_max, or the norm of the box
 * [-compression.clip, clip]^n that secure rounds clip every update to. */
static double s_norm_max(const rounds_t *self)
{
    double b = self->cfg->fed_update_norm_max;
    return b > 0 ? b : self->cfg->comp_clip * sqrt((double)self->numel);
}

/* Scales a plain update down to the round's norm bound (logged): what one node can move the
 * average by is bounded, whatever it sends. Returns the factor applied (1 when inside). */
static double s_clip_norm(rounds_t *self, const part_t *p, const float *v, size_t n)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)v[i] * (double)v[i];
    double norm = sqrt(ss), max = s_norm_max(self);
    if (norm <= max) return 1.0;
    LOG_WARN(AGG, "round %" PRIu64 ": update from node %s has L2 norm %.4g above the bound %.4g "
             "(federation.update_norm_max): scaled down to it", self->round_id, p->id, norm, max);
    return max / norm;
}

/* An evaluation report counts only from a node that contributed to the round whose version
 * it evaluates, while that round collects evaluations, once, with values that can be true.
 * Anything else is refused and logged (never stored: each row is an fsync on this thread
 * and `status` shows the latest round's reports). */
static void s_on_eval(rounds_t *self, const wire_msg_t *msg)
{
    const Medfl__EvalReport *e = msg->body.eval_report;
    const char *who = msg->node_id;
    part_t *p = self->round_id && msg->round_id == self->round_id ? s_part(self, who) : NULL;
    char why[160] = "";
    if (!self->round_id || msg->round_id != self->round_id || self->phase != ROUNDS_EVAL ||
        self->commit_pending)
        snprintf(why, sizeof why, "round %" PRIu64 " is not collecting evaluations (current round "
                 "%" PRIu64 ", phase %s)", msg->round_id, self->round_id,
                 rounds_phase_name(self->phase));
    else if (!p || !p->input)
        snprintf(why, sizeof why, "the node did not contribute to round %" PRIu64, self->round_id);
    else if (e->version != self->new_version)
        snprintf(why, sizeof why, "it names version %" PRIu64 ", round %" PRIu64 " produced %" PRIu64,
                 e->version, self->round_id, self->new_version);
    else if (!isfinite(e->loss) || !(e->accuracy >= 0 && e->accuracy <= 1) ||
             !(e->macro_f1 >= 0 && e->macro_f1 <= 1))
        snprintf(why, sizeof why, "loss, accuracy or macro-F1 out of range");
    else if (e->n == 0 || (p->n_records > 0 && e->n > p->n_records)) /* 0: not announced */
        snprintf(why, sizeof why, "%" PRIu64 " examples evaluated, the node announced %" PRIu64
                 " records", e->n, p->n_records);
    else if (p->eval)
        snprintf(why, sizeof why, "a second report for round %" PRIu64, self->round_id);
    if (why[0]) {
        LOG_WARN(AGG, "evaluation report from node %s for round %" PRIu64 " refused: %s", who,
                 msg->round_id, why);
        wire_server_send_error(self->server, who, msg->round_id, MEDFL__ERROR_CODE__ERROR_STATE,
                               "evaluation report refused");
        return;
    }
    p->eval = true;
    LOG_INFO(AGG, "round %" PRIu64 ": node %s evaluated version %" PRIu64 ": loss %.4f accuracy "
             "%.4f macro-F1 %.4f n %" PRIu64, msg->round_id, who, e->version, e->loss,
             e->accuracy, e->macro_f1, e->n);
    if (s_exec(self->db, "INSERT OR REPLACE INTO round_evals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               "iitdddii", (int64_t)msg->round_id, (int64_t)e->version, who, e->loss,
               e->accuracy, e->macro_f1, (int64_t)e->n, (int64_t)time(NULL)) != 0)
        LOG_ERROR(AGG, "%s", medfl_error_message());
}

static void s_add_plain(rounds_t *self, part_t *p, const wire_msg_t *msg)
{
    const Medfl__Update *u = msg->body.update;
    if (u->base_version != self->head) {
        LOG_WARN(AGG, "round %" PRIu64 ": update from node %s trained on version %" PRIu64
                 ", the round's base is %" PRIu64 ": rejected", self->round_id, p->id,
                 u->base_version, self->head);
        wire_server_send_error(self->server, p->id, self->round_id,
                               MEDFL__ERROR_CODE__ERROR_STATE, "update on the wrong base version");
        return;
    }
    double w = p->weight; /* the aggregator's weight, not what the node claims */
    if (self->enc == FED_DENSE || self->enc == FED_TOPK) {
        float *dense = calloc(self->numel ? self->numel : 1, sizeof *dense);
        if (!dense) {
            LOG_ERROR(AGG, "round %" PRIu64 ": out of memory for the update of node %s",
                      self->round_id, p->id);
            return;
        }
        if (self->enc == FED_DENSE) { /* size checked by s_check_input: 4 numel bytes */
            memcpy(dense, msg->bulk, self->numel * sizeof *dense);
            for (size_t i = 0; i < self->numel; i++)
                if (!isfinite(dense[i])) {
                    free(dense);
                    s_state_error(self, p, "update with non-finite values");
                    return;
                }
        } else if (compress_plain_decode(msg->bulk, msg->bulk_len, (uint32_t)self->numel,
                                         dense) != 0) {
            LOG_WARN(AGG, "round %" PRIu64 ": update from node %s: %s: rejected", self->round_id,
                     p->id, medfl_error_message());
            free(dense);
            wire_server_send_error(self->server, p->id, self->round_id,
                                   MEDFL__ERROR_CODE__ERROR_PROTOCOL, "malformed compressed update");
            return;
        }
        double f = s_clip_norm(self, p, dense, self->numel);
        for (size_t i = 0; i < self->numel; i++) self->acc[i] += w * f * (double)dense[i];
        free(dense);
    } else {
        uint32_t *ring = calloc(self->m, sizeof *ring);
        if (!ring || compress_secagg_unpack(self->cr, msg->bulk, msg->bulk_len, ring) != 0) {
            LOG_WARN(AGG, "round %" PRIu64 ": update from node %s: %s: rejected", self->round_id,
                     p->id, medfl_error_message());
            free(ring);
            wire_server_send_error(self->server, p->id, self->round_id,
                                   MEDFL__ERROR_CODE__ERROR_PROTOCOL, "malformed compressed update");
            return;
        }
        for (uint64_t i = 0; i < self->m; i++) self->ring_acc[i] += ring[i];
        free(ring);
    }
    p->input = true;
    self->n_in++;
    self->weight_in += w;
    LOG_INFO(AGG, "round %" PRIu64 ": update from node %s (%zu B, %" PRIu64 " examples)",
             self->round_id, p->id, msg->bulk_len, u->n_examples);
}

/* secagg_add_fn: decodes a MaskedInput's payload straight into the secure-aggregation
 * server's running sum (one pass: no ring copy, no re-serialised secagg message). */
typedef struct {
    const rounds_t *self;
    const wire_msg_t *msg;
} masked_ctx_t;

static int s_masked_decode(void *ctx, uint32_t *sum, uint64_t m)
{
    const masked_ctx_t *c = ctx;
    const Medfl__MaskedInputHeader *h = c->msg->body.masked_input;
    if (c->self->enc == FED_LEVELS)
        return compress_secagg_unpack_add(c->self->cr, c->msg->bulk, c->msg->bulk_len, sum);
    if (h->dtype != MEDFL__TENSOR_DTYPE__DTYPE_U32 || h->n_elements != m ||
        c->msg->bulk_len != 4 * m)
        return medfl_error_set(MEDFL_EPROTO, "masked input of %" PRIu64 " elements (%zu bytes), "
                               "round has %" PRIu64, h->n_elements, c->msg->bulk_len, m);
    secagg_add_le(sum, c->msg->bulk, m);
    return 0;
}

static void s_add_masked(rounds_t *self, part_t *p, uint32_t idx, const wire_msg_t *msg)
{
    masked_ctx_t ctx = {self, msg};
    int rc = secagg_server_add_masked_values(self->ss, self->round_id, idx, self->m,
                                             s_masked_decode, &ctx);
    if (rc != 0) {
        LOG_WARN(AGG, "round %" PRIu64 ": masked input from node %s refused: %s", self->round_id,
                 p->id, medfl_error_message());
        wire_server_send_error(self->server, p->id, self->round_id,
                               MEDFL__ERROR_CODE__ERROR_PROTOCOL, "masked input refused");
        return;
    }
    p->input = true;
    self->n_in++;
    self->weight_in += p->weight;
    LOG_INFO(AGG, "round %" PRIu64 ": masked input from node %s (%zu B)", self->round_id, p->id,
             msg->bulk_len);
}

int rounds_on_message(rounds_t *self, wire_msg_t *msg, int64_t now)
{
    if (!s_round_type(msg->type)) return 0;
    (void)now;
    const char *who = msg->node_id;
    part_t *p = self->round_id && msg->round_id == self->round_id ? s_part(self, who) : NULL;
    if (msg->type == MEDFL__MSG_TYPE__MSG_EVAL_REPORT) {
        s_on_eval(self, msg);
        return 1;
    }
    if (msg->type == MEDFL__MSG_TYPE__MSG_DECLINE) {
        const Medfl__Decline *d = msg->body.decline;
        char reason[1100];
        const char *name = s_decline_name(d->reason), *text = d->text ? d->text : "";
        if (!strncmp(text, name, strlen(name))) /* the node's text may already name it */
            snprintf(reason, sizeof reason, "%s", text);
        else
            snprintf(reason, sizeof reason, "%s%s%s", name, text[0] ? ": " : "", text);
        LOG_WARN(AGG, "node %s declined round %llu: %s", who, (unsigned long long)msg->round_id,
                 reason);
        if (p) p->declined = true;
        if (p && (d->reason == MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET ||
                  d->reason == MEDFL__DECLINE_REASON__DECLINE_PRIVACY_POLICY)) {
            known_t *k = s_known(self, who);
            if (k && d->reason == MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET) k->budget_out = true;
            if (k && d->reason == MEDFL__DECLINE_REASON__DECLINE_PRIVACY_POLICY) k->policy_out = true;
        }
        if (d->reason == MEDFL__DECLINE_REASON__DECLINE_BASE_MISMATCH) {
            /* It lacks versions we assumed it had: the next round re-sends the chain. One
             * still catching up (sent part of the chain, ROUNDS_SYNC_MAX) goes on from there. */
            known_t *k = s_known(self, who);
            if (k && (!p || k->version >= self->head)) k->version = 0;
        }
        return 1;
    }
    if (!self->round_id || msg->round_id != self->round_id) {
        char text[160];
        snprintf(text, sizeof text, "round %" PRIu64 " is not in progress (current: %" PRIu64 ")",
                 msg->round_id, self->round_id);
        LOG_WARN(AGG, "%s from node %s for round %" PRIu64 " rejected: %s", wire_type_name(msg->type),
                 who, msg->round_id, text);
        wire_server_send_error(self->server, who, msg->round_id,
                               MEDFL__ERROR_CODE__ERROR_UNKNOWN_ROUND, text);
        return 1;
    }
    if (!p) {
        LOG_WARN(AGG, "%s from node %s, which is not a participant of round %" PRIu64 ": refused",
                 wire_type_name(msg->type), who, self->round_id);
        wire_server_send_error(self->server, who, msg->round_id, MEDFL__ERROR_CODE__ERROR_STATE,
                               "not a participant of this round");
        return 1;
    }
    p->bytes_up += (msg->body.any ? protobuf_c_message_get_packed_size(msg->body.any) : 0) +
                   msg->bulk_len;
    if (self->commit_pending) { /* the sum is final; the phase only looks open (test hold) */
        s_state_error(self, p, wire_type_name(msg->type));
        return 1;
    }
    int idx = fed_roster_index(self->roster, self->n_parts, who);
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;
    switch (msg->type) {
    case MEDFL__MSG_TYPE__MSG_UPDATE:
        if (self->secure || self->phase != ROUNDS_INPUT || p->input) {
            s_state_error(self, p, "update");
            break;
        }
        if (s_check_input(self, p, msg) == 0) s_add_plain(self, p, msg);
        break;
    case MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS:
        if (!self->secure || self->phase != ROUNDS_KEYS || p->keys) {
            s_state_error(self, p, "AdvertiseKeys");
            break;
        }
        rc = fed_advertise_from_proto(msg->body.advertise_keys, self->round_id, (uint32_t)idx,
                                      &buf, &len);
        if (rc == 0) rc = secagg_server_add_keys(self->ss, buf, len);
        if (rc == 0) p->keys = true;
        else
            LOG_WARN(AGG, "round %" PRIu64 ": keys of node %s refused: %s", self->round_id, who,
                     medfl_error_message());
        break;
    case MEDFL__MSG_TYPE__MSG_SHARE_KEYS:
        if (!self->secure || self->phase != ROUNDS_SHARES || !p->keys || p->shares) {
            s_state_error(self, p, "ShareKeys");
            break;
        }
        if (s_check_count(self, p, "ShareKeys", msg->body.share_keys->n_shares) != 0) break;
        rc = fed_shares_from_proto(SECAGG_MSG_SHARE_KEYS, msg->body.share_keys->shares,
                                   msg->body.share_keys->n_shares, self->round_id, (uint32_t)idx,
                                   self->roster, self->n_parts, &buf, &len);
        if (rc == 0) rc = secagg_server_add_shares(self->ss, buf, len);
        if (rc == 0) p->shares = true;
        else
            LOG_WARN(AGG, "round %" PRIu64 ": shares of node %s refused: %s", self->round_id, who,
                     medfl_error_message());
        break;
    case MEDFL__MSG_TYPE__MSG_MASKED_INPUT:
        if (!self->secure || self->phase != ROUNDS_INPUT || !p->shares || p->input) {
            s_state_error(self, p, "MaskedInput");
            break;
        }
        if (s_check_input(self, p, msg) == 0) s_add_masked(self, p, (uint32_t)idx, msg);
        break;
    case MEDFL__MSG_TYPE__MSG_CONSISTENCY_SIGNATURE:
        if (!self->secure || self->phase != ROUNDS_CONSISTENCY || !p->input || p->signed_set) {
            s_state_error(self, p, "ConsistencySignature");
            break;
        }
        rc = fed_survivor_sig_from_proto(msg->body.consistency_signature, self->round_id,
                                         (uint32_t)idx, &buf, &len);
        if (rc == 0) rc = secagg_server_add_signature(self->ss, buf, len);
        if (rc == 0) p->signed_set = true;
        else
            LOG_WARN(AGG, "round %" PRIu64 ": survivor-set signature of node %s refused: %s",
                     self->round_id, who, medfl_error_message());
        break;
    case MEDFL__MSG_TYPE__MSG_UNMASK_RESPONSE:
        if (!self->secure || self->phase != ROUNDS_UNMASK || !p->signed_set || p->unmask) {
            s_state_error(self, p, "UnmaskResponse");
            break;
        }
        if (s_check_count(self, p, "UnmaskResponse", msg->body.unmask_response->n_shares) != 0)
            break;
        rc = fed_unmask_resp_from_proto(msg->body.unmask_response, self->round_id, (uint32_t)idx,
                                        self->roster, self->n_parts, &buf, &len);
        if (rc == 0) rc = secagg_server_add_unmask(self->ss, buf, len);
        if (rc == 0) p->unmask = true;
        else
            LOG_WARN(AGG, "round %" PRIu64 ": unmask response of node %s refused: %s",
                     self->round_id, who, medfl_error_message());
        if (buf) sodium_memzero(buf, len);
        break;
    default:
        break;
    }
    free(buf);
    return 1;
}

/* Takes an evaluation the round accepted (rounds_on_message wrote its row to round_evals,
 * which is the one check of what a node reports) into the contribution history: the loss
 * feeds the node's quality in the next rounds' weights, epsilon the report. A report the
 * round refused leaves no row and is ignored here. */
void rounds_record_eval(rounds_t *self, const wire_msg_t *msg)
{
    if (msg->type != MEDFL__MSG_TYPE__MSG_EVAL_REPORT || !msg->body.eval_report) return;
    const Medfl__EvalReport *e = msg->body.eval_report;
    sqlite3_stmt *st = NULL;
    bool accepted = false;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT 1 FROM round_evals WHERE round_id = ? AND node_id = ? AND"
                           " version = ? AND loss IS ?", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, (int64_t)msg->round_id);
        sqlite3_bind_text(st, 2, msg->node_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, (int64_t)e->version);
        sqlite3_bind_double(st, 4, e->loss);
        accepted = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    if (!accepted || !isfinite(e->loss) || e->n > INT64_MAX) return;
    double eps = isfinite(e->epsilon_spent) && e->epsilon_spent >= 0 ? e->epsilon_spent : NAN;
    if (contrib_db_record_report(self->contrib, msg->node_id, e->version, e->loss, e->accuracy,
                                 e->macro_f1, (int64_t)e->n) != 0 ||
        contrib_db_record_round_stats(self->contrib, msg->round_id, msg->node_id, 0, 0, eps) != 0)
        LOG_ERROR(AGG, "contribution history: %s", medfl_error_message());
}

/* ---- object ------------------------------------------------------------------------------ */

rounds_t *rounds_new(const agg_config_t *cfg, wire_server_t *server, const char *db_path,
                     const char *versions_dir, const uint8_t sign_sk[64], const uint8_t sign_pk[32])
{
    rounds_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    self->cfg = cfg;
    self->server = server;
    memcpy(self->sk, sign_sk, 64);
    memcpy(self->pk, sign_pk, 32);
    if (sqlite3_open_v2(db_path, &self->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        medfl_error_set(MEDFL_EDB, "%s: cannot open the round journal: %s", db_path,
                        self->db ? sqlite3_errmsg(self->db) : "out of memory");
        goto fail;
    }
    sqlite3_busy_timeout(self->db, 10000);
    if (sqlite3_exec(self->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
                     NULL) != SQLITE_OK ||
        sqlite3_exec(self->db, s_schema, NULL, NULL, NULL) != SQLITE_OK) {
        s_db_err(self->db, db_path);
        goto fail;
    }
    /* Who was out of budget is not remembered across a restart: every node is asked again. */
    if (s_exec(self->db, "DELETE FROM rounds_idle", "") != 0) goto fail;
    {
        /* contrib.db next to the journal: in the daemon, <state_dir>/contrib.db, where
         * `weights` and `report` read it (contrib_db_path). */
        char cpath[4096];
        const char *slash = strrchr(db_path, '/');
        int dlen = slash ? (int)(slash - db_path) : 1;
        snprintf(cpath, sizeof cpath, "%.*s/contrib.db", dlen, slash ? db_path : ".");
        self->contrib = contrib_db_open(cpath);
        if (!self->contrib) goto fail;
    }
    self->vs = vs_store_open(versions_dir, true);
    if (!self->vs) goto fail;
    if (s_recover(self) != 0) goto fail;
    if (self->cfg->fed_rounds > 0 && self->completed >= (uint64_t)self->cfg->fed_rounds)
        self->phase = ROUNDS_DONE;
    LOG_INFO(AGG, "rounds: %" PRIu64 " completed so far, last round id %" PRIu64 ", head version "
             "%" PRIu64, self->completed, self->last_round_id, vs_store_head(self->vs));
    return self;
fail:
    rounds_destroy(&self);
    return NULL;
}

void rounds_destroy(rounds_t **self_p)
{
    if (!self_p || !*self_p) return;
    rounds_t *self = *self_p;
    s_release_round(self);
    if (self->db) sqlite3_close(self->db);
    contrib_db_destroy(&self->contrib);
    vs_store_destroy(&self->vs);
    vs_manifest_destroy(&self->head_m);
    free(self->global);
    free(self->known);
    free(self->live);
    free(self->eligible);
    sodium_memzero(self->sk, sizeof self->sk);
    free(self);
    *self_p = NULL;
}

void rounds_set_metrics(rounds_t *self, metrics_t *m)
{
    self->metrics = m;
    metrics_add(m, "rounds_completed_total", NULL, (double)self->completed);
    metrics_set(m, "model_version", NULL, (double)vs_store_head(self->vs));
}

void rounds_stop(rounds_t *self, int64_t now_ms, const char *why)
{
    if (!self->round_id || self->phase == ROUNDS_IDLE || self->phase == ROUNDS_DONE) return;
    /* Held between the version write and its journal entry (test hold): the version exists,
     * so the round is finished, not aborted (the nodes get it as a catch-up copy later). */
    if (self->commit_pending) {
        self->commit_pending = false;
        self->phase = ROUNDS_EVAL;
    }
    if (self->phase == ROUNDS_EVAL) {
        LOG_INFO(AGG, "round %" PRIu64 ": %s while collecting evaluations: version %" PRIu64
                 " is committed, closing the round as completed", self->round_id, why,
                 self->new_version);
        s_close_phase(self, now_ms);
        return;
    }
    s_abort(self, now_ms, "%s during phase %s", why, rounds_phase_name(self->phase));
}

rounds_phase_t rounds_phase(const rounds_t *self) { return self->phase; }
uint64_t rounds_current(const rounds_t *self) { return self->round_id; }
uint64_t rounds_completed(const rounds_t *self) { return self->completed; }
uint64_t rounds_head_version(const rounds_t *self) { return vs_store_head(self->vs); }

const float *rounds_global(const rounds_t *self, size_t *numel)
{
    *numel = self->numel;
    return self->global;
}

/* "phase: idle", with the reason when connected nodes get no round (rounds_idle). */
static void s_print_idle(sqlite3 *db, FILE *out)
{
    sqlite3_stmt *st = NULL;
    fprintf(out, "round: none\n");
    if (sqlite3_prepare_v2(db, "SELECT reason FROM rounds_idle WHERE id = 1", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        fprintf(out, "phase: idle (%s)\n", (const char *)sqlite3_column_text(st, 0));
    else
        fprintf(out, "phase: idle\n");
    sqlite3_finalize(st);
}

int rounds_print_status(const char *db_path, FILE *out)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        fprintf(out, "rounds_completed: 0\n");
        return 0;
    }
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt *st = NULL;
    long long completed = 0, aborted = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT (SELECT COUNT(*) FROM rounds WHERE outcome = 'completed'),"
                           " (SELECT COUNT(*) FROM rounds WHERE outcome = 'aborted')",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        completed = sqlite3_column_int64(st, 0);
        aborted = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    st = NULL;
    fprintf(out, "rounds_completed: %lld\nrounds_aborted: %lld\n", completed, aborted);
    if (sqlite3_prepare_v2(db,
                           "SELECT round_id, phase, participants, base_version, version, outcome,"
                           " reason FROM rounds ORDER BY round_id DESC LIMIT 1",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        bool open = sqlite3_column_type(st, 5) == SQLITE_NULL;
        if (open)
            fprintf(out, "round: %lld\nphase: %s\nparticipants: %s\n", sqlite3_column_int64(st, 0),
                    (const char *)sqlite3_column_text(st, 1),
                    (const char *)sqlite3_column_text(st, 2));
        else
            s_print_idle(db, out);
        fprintf(out, "last_round: %lld %s (base %lld, version %lld%s%s)\n",
                sqlite3_column_int64(st, 0),
                open ? "in progress" : (const char *)sqlite3_column_text(st, 5),
                sqlite3_column_int64(st, 3), sqlite3_column_int64(st, 4),
                sqlite3_column_text(st, 6) && *sqlite3_column_text(st, 6) ? ": " : "",
                sqlite3_column_text(st, 6) ? (const char *)sqlite3_column_text(st, 6) : "");
    } else {
        s_print_idle(db, out);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT round_id, version, SUM(accuracy * n) / SUM(n),"
                           " SUM(macro_f1 * n) / SUM(n), COUNT(*) FROM round_evals"
                           " GROUP BY round_id ORDER BY round_id DESC LIMIT 1",
                           -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 2) != SQLITE_NULL)
        fprintf(out, "last_eval: round %lld version %lld accuracy %.4f macro_f1 %.4f reports %lld\n",
                sqlite3_column_int64(st, 0), sqlite3_column_int64(st, 1),
                sqlite3_column_double(st, 2), sqlite3_column_double(st, 3),
                sqlite3_column_int64(st, 4));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}
