/* SQLite registry of enrolled nodes and daemon facts. Keys are stored as text (Z85 for
 * CURVE, hex for Ed25519) so that an operator inspecting the file with sqlite3 sees the
 * same strings keygen printed. Every statement is prepared with bound parameters: node
 * ids come from command lines and the network. */
#include "common/store.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <sqlite3.h>
#include <zmq.h>

#include "common/error.h"

struct store_t {
    sqlite3 *db;
    char path[512];
};

static const char s_schema[] =
    "CREATE TABLE IF NOT EXISTS nodes ("
    "  node_id TEXT PRIMARY KEY NOT NULL,"
    "  curve_pub TEXT NOT NULL UNIQUE,"      /* Z85 */
    "  identity_pub TEXT,"                   /* hex, NULL until given or pinned */
    "  enrolled_at INTEGER NOT NULL,"
    "  revoked_at INTEGER,"                  /* NULL while active */
    "  connected INTEGER NOT NULL DEFAULT 0,"
    "  last_seen INTEGER,"
    "  device TEXT, n_records INTEGER, software TEXT);"
    "CREATE TABLE IF NOT EXISTS daemon_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);";

static int s_db_error(store_t *self, const char *what)
{
    return medfl_error_set(MEDFL_EDB, "%s: %s: %s", self->path, what, sqlite3_errmsg(self->db));
}

static int64_t s_now(void)
{
    return (int64_t)time(NULL);
}

store_t *store_open(const char *path)
{
    store_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory for the registry");
        return NULL;
    }
    snprintf(self->path, sizeof self->path, "%s", path);
    if (sqlite3_open_v2(path, &self->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                             SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
        medfl_error_set(MEDFL_EDB, "%s: cannot open registry: %s", path,
                        self->db ? sqlite3_errmsg(self->db) : "out of memory");
        store_destroy(&self);
        return NULL;
    }
    /* Tools and daemon wait up to 5 s for each other's write transactions. */
    sqlite3_busy_timeout(self->db, 5000);
    /* synchronous=FULL: under WAL, NORMAL does not fsync at commit, so a committed revoke
     * could be lost on power failure and a revoked node let back in. Registry writes are
     * rare; durability matters more than their speed. */
    char *err = NULL;
    if (sqlite3_exec(self->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
                     &err) != SQLITE_OK ||
        sqlite3_exec(self->db, s_schema, NULL, NULL, &err) != SQLITE_OK) {
        medfl_error_set(MEDFL_EDB, "%s: cannot initialise registry: %s", path,
                        err ? err : sqlite3_errmsg(self->db));
        sqlite3_free(err);
        store_destroy(&self);
        return NULL;
    }
    return self;
}

void store_destroy(store_t **self_p)
{
    if (!self_p || !*self_p) return;
    store_t *self = *self_p;
    if (self->db) sqlite3_close(self->db);
    free(self);
    *self_p = NULL;
}

int store_node_id_check(const char *id)
{
    if (!id || !*id)
        return medfl_error_set(MEDFL_EINVAL, "node id is empty");
    size_t len = strlen(id);
    if (len > STORE_NODE_ID_MAX)
        return medfl_error_set(MEDFL_EINVAL, "node id '%.*s...' longer than %d characters", 16, id,
                               STORE_NODE_ID_MAX);
    if (id[0] == '.' || id[0] == '-')
        return medfl_error_set(MEDFL_EINVAL, "node id '%s' must not start with '.' or '-'", id);
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return medfl_error_set(MEDFL_EINVAL,
                                   "node id '%s': character %zu is not one of [A-Za-z0-9._-]", id,
                                   i + 1);
    }
    return 0;
}

static void s_z85(const uint8_t key[STORE_KEY_BYTES], char out[41])
{
    zmq_z85_encode(out, key, STORE_KEY_BYTES);
}

static void s_text(char *out, size_t size, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(out, size, "%s", t ? (const char *)t : "");
}

#define S_NODE_COLUMNS                                                                         \
    "node_id, curve_pub, identity_pub, enrolled_at, revoked_at, connected, last_seen, device, " \
    "n_records, software"

static int s_row(store_t *self, sqlite3_stmt *st, store_node_t *n)
{
    memset(n, 0, sizeof *n);
    s_text(n->node_id, sizeof n->node_id, st, 0);
    const unsigned char *curve = sqlite3_column_text(st, 1);
    if (!curve || strlen((const char *)curve) != 40 ||
        !zmq_z85_decode(n->curve_public, (const char *)curve))
        return medfl_error_set(MEDFL_EDB, "%s: node '%s': stored CURVE key is corrupt", self->path,
                               n->node_id);
    const unsigned char *ident = sqlite3_column_text(st, 2);
    if (ident) {
        size_t bin_len = 0;
        if (sodium_hex2bin(n->identity_public, sizeof n->identity_public, (const char *)ident,
                           strlen((const char *)ident), NULL, &bin_len, NULL) != 0 ||
            bin_len != sizeof n->identity_public)
            return medfl_error_set(MEDFL_EDB, "%s: node '%s': stored identity key is corrupt",
                                   self->path, n->node_id);
        n->has_identity = true;
    }
    n->enrolled_at = sqlite3_column_int64(st, 3);
    n->revoked_at = sqlite3_column_int64(st, 4);
    n->connected = sqlite3_column_int(st, 5) != 0;
    n->last_seen = sqlite3_column_int64(st, 6);
    s_text(n->device, sizeof n->device, st, 7);
    n->n_records = sqlite3_column_int64(st, 8);
    s_text(n->software, sizeof n->software, st, 9);
    return 0;
}

/* Runs a one-row query bound to one text parameter. */
static int s_get_one(store_t *self, const char *sql, const char *param, const char *what,
                     store_node_t *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db, sql, -1, &st, NULL) != SQLITE_OK)
        return s_db_error(self, "prepare");
    sqlite3_bind_text(st, 1, param, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int ret;
    if (rc == SQLITE_ROW)
        ret = s_row(self, st, out);
    else if (rc == SQLITE_DONE)
        ret = medfl_error_set(MEDFL_ENOTFOUND, "%s is not enrolled", what);
    else
        ret = s_db_error(self, "query");
    sqlite3_finalize(st);
    return ret;
}

int store_node_get(store_t *self, const char *node_id, store_node_t *out)
{
    char what[STORE_NODE_ID_MAX + 16];
    snprintf(what, sizeof what, "node '%s'", node_id);
    return s_get_one(self, "SELECT " S_NODE_COLUMNS " FROM nodes WHERE node_id = ?", node_id,
                     what, out);
}

int store_node_by_key(store_t *self, const uint8_t curve_public[STORE_KEY_BYTES], store_node_t *out)
{
    char z85[41];
    s_z85(curve_public, z85);
    return s_get_one(self, "SELECT " S_NODE_COLUMNS " FROM nodes WHERE curve_pub = ?", z85,
                     "this key", out);
}

/* Executes sql with text/integer parameters given as a printf-like spec: 't' text (NULL
 * allowed), 'i' int64. Returns the number of changed rows, or -1. */
static int s_exec(store_t *self, const char *sql, const char *spec, ...)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db, sql, -1, &st, NULL) != SQLITE_OK)
        return s_db_error(self, "prepare");
    va_list ap;
    va_start(ap, spec);
    for (int i = 0; spec[i]; i++) {
        if (spec[i] == 't') {
            const char *t = va_arg(ap, const char *);
            if (t) sqlite3_bind_text(st, i + 1, t, -1, SQLITE_TRANSIENT);
            else sqlite3_bind_null(st, i + 1);
        } else {
            sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
        }
    }
    va_end(ap);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return s_db_error(self, "update");
    return sqlite3_changes(self->db);
}

static int s_begin(store_t *self)
{
    /* IMMEDIATE takes the write lock at once, so check-then-write cannot race another
     * enroll or revoke. */
    if (sqlite3_exec(self->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return s_db_error(self, "begin transaction");
    return 0;
}

static int s_end(store_t *self, int rc)
{
    if (rc == 0) {
        if (sqlite3_exec(self->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            s_db_error(self, "commit");
            sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
        return 0;
    }
    sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

int store_enroll(store_t *self, const char *node_id, const uint8_t curve_public[STORE_KEY_BYTES],
                 const uint8_t *identity_public, bool replace)
{
    if (store_node_id_check(node_id) != 0) return -1;
    char z85[41], hex[2 * STORE_KEY_BYTES + 1];
    s_z85(curve_public, z85);
    if (identity_public) sodium_bin2hex(hex, sizeof hex, identity_public, STORE_KEY_BYTES);
    if (s_begin(self) != 0) return -1;

    int rc = 0;
    store_node_t other;
    if (store_node_by_key(self, curve_public, &other) == 0 && strcmp(other.node_id, node_id) != 0)
        rc = medfl_error_set(MEDFL_ESTATE,
                             "this key is already enrolled as node '%s'%s; each node needs its own "
                             "key pair", other.node_id, other.revoked_at ? " (revoked)" : "");
    store_node_t cur;
    bool exists = false;
    if (rc == 0) {
        if (store_node_get(self, node_id, &cur) == 0)
            exists = true;
        else if (medfl_error_code() != MEDFL_ENOTFOUND)
            rc = -1;
    }
    if (rc == 0 && exists && !cur.revoked_at && !replace &&
        sodium_memcmp(cur.curve_public, curve_public, STORE_KEY_BYTES) != 0)
        rc = medfl_error_set(MEDFL_ESTATE,
                             "node '%s' is already enrolled with another key; revoke it first or "
                             "use --replace", node_id);
    if (rc == 0 && exists) {
        /* Reactivation or key replacement starts a fresh enrollment: connection state and a
         * pinned identity belong to the old key. */
        rc = s_exec(self,
                    "UPDATE nodes SET curve_pub = ?, identity_pub = ?, enrolled_at = ?, "
                    "revoked_at = NULL, connected = 0, last_seen = NULL, device = NULL, "
                    "n_records = NULL, software = NULL WHERE node_id = ?",
                    "ttit", z85, identity_public ? hex : NULL, s_now(), node_id) < 0 ? -1 : 0;
    } else if (rc == 0) {
        rc = s_exec(self,
                    "INSERT INTO nodes (node_id, curve_pub, identity_pub, enrolled_at) "
                    "VALUES (?, ?, ?, ?)",
                    "ttti", node_id, z85, identity_public ? hex : NULL, s_now()) < 0 ? -1 : 0;
    }
    return s_end(self, rc);
}

int store_revoke(store_t *self, const char *node_id)
{
    if (store_node_id_check(node_id) != 0) return -1;
    if (s_begin(self) != 0) return -1;
    store_node_t cur;
    int rc = store_node_get(self, node_id, &cur);
    if (rc == 0 && cur.revoked_at)
        rc = medfl_error_set(MEDFL_ESTATE, "node '%s' is already revoked", node_id);
    if (rc == 0)
        rc = s_exec(self, "UPDATE nodes SET revoked_at = ?, connected = 0 WHERE node_id = ?", "it",
                    s_now(), node_id) < 0 ? -1 : 0;
    return s_end(self, rc);
}

int store_node_list(store_t *self, store_node_t **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db, "SELECT " S_NODE_COLUMNS " FROM nodes ORDER BY node_id", -1,
                           &st, NULL) != SQLITE_OK)
        return s_db_error(self, "prepare");
    store_node_t *list = NULL;
    size_t n = 0, cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            store_node_t *grown = realloc(list, ncap * sizeof *list);
            if (!grown) {
                free(list);
                sqlite3_finalize(st);
                return medfl_error_set(MEDFL_ENOMEM, "out of memory listing nodes");
            }
            list = grown;
            cap = ncap;
        }
        if (s_row(self, st, &list[n]) != 0) {
            free(list);
            sqlite3_finalize(st);
            return -1;
        }
        n++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        free(list);
        return s_db_error(self, "list nodes");
    }
    *out = list;
    *count = n;
    return 0;
}

/* Updates of one node's state: 0, or -1 with ENOTFOUND when no such node. */
static int s_node_update(store_t *self, int changed, const char *node_id)
{
    (void)self;
    if (changed < 0) return -1;
    if (changed == 0)
        return medfl_error_set(MEDFL_ENOTFOUND, "node '%s' is not enrolled", node_id);
    return 0;
}

int store_node_hello(store_t *self, const char *node_id, int64_t now, const char *device,
                     int64_t n_records, const char *software)
{
    return s_node_update(self,
                         s_exec(self,
                                "UPDATE nodes SET connected = 1, last_seen = ?, device = ?, "
                                "n_records = ?, software = ? WHERE node_id = ?",
                                "ititt", now, device, n_records, software, node_id),
                         node_id);
}

int store_node_seen(store_t *self, const char *node_id, int64_t now)
{
    return s_node_update(self,
                         s_exec(self, "UPDATE nodes SET connected = 1, last_seen = ? WHERE node_id = ?",
                                "it", now, node_id),
                         node_id);
}

int store_node_set_connected(store_t *self, const char *node_id, bool connected)
{
    return s_node_update(self,
                         s_exec(self, "UPDATE nodes SET connected = ? WHERE node_id = ?", "it",
                                (int64_t)connected, node_id),
                         node_id);
}

int store_node_pin_identity(store_t *self, const char *node_id,
                            const uint8_t identity_public[STORE_KEY_BYTES])
{
    char hex[2 * STORE_KEY_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, identity_public, STORE_KEY_BYTES);
    /* Only pins when empty: a pinned identity is never silently replaced. */
    int changed = s_exec(self,
                         "UPDATE nodes SET identity_pub = ? WHERE node_id = ? AND identity_pub IS NULL",
                         "tt", hex, node_id);
    if (changed < 0) return -1;
    if (changed == 0)
        return medfl_error_set(MEDFL_ESTATE, "node '%s': identity key already set or node unknown",
                               node_id);
    return 0;
}

int store_disconnect_all(store_t *self)
{
    return s_exec(self, "UPDATE nodes SET connected = 0 WHERE connected != 0", "") < 0 ? -1 : 0;
}

int store_connected_count(store_t *self, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db,
                           "SELECT count(*) FROM nodes WHERE connected != 0 AND revoked_at IS NULL",
                           -1, &st, NULL) != SQLITE_OK)
        return s_db_error(self, "prepare");
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : s_db_error(self, "count");
}

int store_data_version(store_t *self, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db, "PRAGMA data_version", -1, &st, NULL) != SQLITE_OK)
        return s_db_error(self, "prepare");
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : s_db_error(self, "data_version");
}

int store_meta_set(store_t *self, const char *key, const char *value)
{
    return s_exec(self,
                  "INSERT INTO daemon_meta (key, value) VALUES (?, ?) "
                  "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                  "tt", key, value) < 0 ? -1 : 0;
}

int store_meta_get(store_t *self, const char *key, char *out, size_t size)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(self->db, "SELECT value FROM daemon_meta WHERE key = ?", -1, &st,
                           NULL) != SQLITE_OK)
        return s_db_error(self, "prepare");
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW)
        s_text(out, size, st, 0);
    else if (rc == SQLITE_DONE)
        ret = medfl_error_set(MEDFL_ENOTFOUND, "%s: '%s' not recorded", self->path, key);
    else
        ret = s_db_error(self, "query");
    sqlite3_finalize(st);
    return ret;
}
