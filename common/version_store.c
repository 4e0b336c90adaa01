/* Signed, hash-chained model versions (see version_store.h and docs/versions.md). The hash is
 * computed over a binary canonical form rebuilt from parsed values, never over file bytes,
 * so JSON formatting or HDF5 layout can change without breaking old signatures, while any
 * change of a value, name, shape or order changes the hash. Verification reports WHICH part
 * failed (signer, signature, tensors, metadata, parent link) so an operator knows whether a
 * file was damaged, edited, or signed by someone else. */
#include "common/version_store.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/h5io.h"
#include "common/log.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "version_store hashes float32 data in host order, which must be little-endian"
#endif

#define S_FORMAT "medfl-version-1"
#define S_BLOB_MAGIC "MFLVER01"
static const char s_sig_domain[] = "medfl-version-sig-v1";

/* A version whose chain to genesis was verified through this store object, with its hash. */
typedef struct {
    uint64_t version;
    uint8_t hash[VS_HASH_BYTES];
} s_verified_t;

struct vs_store_t {
    char *dir;
    uint64_t *versions;
    size_t n_versions, cap_versions;
    /* Verified versions, sorted by number, all under the key verified_pk: a later version is
     * verified by checking its own link against the hash held here, without re-reading the
     * chain below (vs_store_verify_cached). Files are never trusted through this cache: the
     * version being verified is always read and checked, only ancestors' hashes come from it. */
    s_verified_t *verified;
    size_t n_verified, cap_verified;
    uint8_t verified_pk[VS_PK_BYTES];
    uint64_t head_file;    /* from HEAD, 0 when absent */
    uint64_t head_latest;  /* latest version when HEAD was written */
};

/* ---------------------------------------------------------------- manifest */

vs_manifest_t *vs_manifest_new(void)
{
    vs_manifest_t *m = calloc(1, sizeof *m);
    if (!m) medfl_error_set(MEDFL_ENOMEM, "version manifest: out of memory");
    return m;
}

void vs_manifest_destroy(vs_manifest_t **self_p)
{
    if (!self_p || !*self_p) return;
    vs_manifest_t *m = *self_p;
    for (size_t i = 0; i < m->n_tensors; i++) free(m->tensors[i].name);
    for (size_t i = 0; i < m->n_participants; i++) free(m->participants[i].node);
    for (size_t i = 0; i < m->n_metrics; i++) free(m->metrics[i].name);
    for (size_t i = 0; i < m->n_attrs; i++) {
        free(m->attrs[i].key);
        free(m->attrs[i].value);
    }
    free(m->tensors);
    free(m->participants);
    free(m->metrics);
    free(m->attrs);
    free(m);
    *self_p = NULL;
}

static int s_check_name(const char *what, const char *name, bool no_slash)
{
    if (!name || !name[0]) return medfl_error_set(MEDFL_EINVAL, "%s: empty name", what);
    size_t len = strlen(name);
    if (len > VS_MAX_NAME)
        return medfl_error_set(MEDFL_EINVAL, "%s '%.40s...': name longer than %d bytes", what,
                               name, VS_MAX_NAME);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c == 0x7f || (no_slash && c == '/'))
            return medfl_error_set(MEDFL_EINVAL, "%s '%s': control character or '/' in name",
                                   what, name);
    }
    return 0;
}

long vs_manifest_find_tensor(const vs_manifest_t *m, const char *name)
{
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return (long)i;
    return -1;
}

int vs_manifest_add_tensor(vs_manifest_t *m, const char *name, int ndim, const int64_t *shape)
{
    if (s_check_name("tensor", name, true) < 0) return -1;
    if (ndim < 1 || ndim > NT_MAX_DIMS)
        return medfl_error_set(MEDFL_EINVAL, "tensor '%s': ndim %d outside 1..%d", name, ndim,
                               NT_MAX_DIMS);
    if (m->n_tensors >= VS_MAX_TENSORS)
        return medfl_error_set(MEDFL_EINVAL, "tensor '%s': more than %d tensors", name,
                               VS_MAX_TENSORS);
    if (vs_manifest_find_tensor(m, name) >= 0)
        return medfl_error_set(MEDFL_EINVAL, "tensor '%s' listed twice", name);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 1 || (uint64_t)shape[d] > VS_MAX_NUMEL || numel > VS_MAX_NUMEL / (size_t)shape[d])
            return medfl_error_set(MEDFL_EINVAL, "tensor '%s': bad dimension %d (%lld)", name, d,
                                   (long long)shape[d]);
        numel *= (size_t)shape[d];
    }
    if (m->numel + numel > VS_MAX_NUMEL)
        return medfl_error_set(MEDFL_EINVAL, "tensor '%s': total size above %zu floats", name,
                               VS_MAX_NUMEL);
    vs_tensor_info_t *t = realloc(m->tensors, (m->n_tensors + 1) * sizeof *t);
    if (!t) return medfl_error_set(MEDFL_ENOMEM, "tensor table: out of memory");
    m->tensors = t;
    t = &m->tensors[m->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->offset = m->numel;
    t->numel = numel;
    m->numel += numel;
    m->n_tensors++;
    return 0;
}

int vs_manifest_add_participant(vs_manifest_t *m, const char *node, double weight)
{
    if (s_check_name("participant", node, false) < 0) return -1;
    if (!isfinite(weight) || weight < 0)
        return medfl_error_set(MEDFL_EINVAL, "participant '%s': weight %g not finite and >= 0",
                               node, weight);
    if (m->n_participants >= VS_MAX_ITEMS)
        return medfl_error_set(MEDFL_EINVAL, "more than %d participants", VS_MAX_ITEMS);
    for (size_t i = 0; i < m->n_participants; i++)
        if (strcmp(m->participants[i].node, node) == 0)
            return medfl_error_set(MEDFL_EINVAL, "participant '%s' listed twice", node);
    vs_participant_t *p = realloc(m->participants, (m->n_participants + 1) * sizeof *p);
    if (!p) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    m->participants = p;
    if (!(p[m->n_participants].node = strdup(node)))
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    p[m->n_participants++].weight = weight;
    return 0;
}

int vs_manifest_set_metric(vs_manifest_t *m, const char *name, double value)
{
    if (s_check_name("metric", name, false) < 0) return -1;
    if (!isfinite(value))
        return medfl_error_set(MEDFL_EINVAL, "metric '%s': value is not finite", name);
    size_t i = 0;
    for (; i < m->n_metrics; i++) {
        int c = strcmp(m->metrics[i].name, name);
        if (c == 0) {
            m->metrics[i].value = value;
            return 0;
        }
        if (c > 0) break;
    }
    if (m->n_metrics >= VS_MAX_ITEMS)
        return medfl_error_set(MEDFL_EINVAL, "more than %d metrics", VS_MAX_ITEMS);
    vs_metric_t *a = realloc(m->metrics, (m->n_metrics + 1) * sizeof *a);
    if (!a) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    m->metrics = a;
    char *copy = strdup(name);
    if (!copy) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    memmove(&a[i + 1], &a[i], (m->n_metrics - i) * sizeof *a);
    a[i].name = copy;
    a[i].value = value;
    m->n_metrics++;
    return 0;
}

int vs_manifest_set_attr(vs_manifest_t *m, const char *key, const char *value)
{
    if (s_check_name("attribute", key, false) < 0) return -1;
    if (!value || strlen(value) > 4096)
        return medfl_error_set(MEDFL_EINVAL, "attribute '%s': missing or too long value", key);
    char *v = strdup(value);
    if (!v) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    size_t i = 0;
    for (; i < m->n_attrs; i++) {
        int c = strcmp(m->attrs[i].key, key);
        if (c == 0) {
            free(m->attrs[i].value);
            m->attrs[i].value = v;
            return 0;
        }
        if (c > 0) break;
    }
    if (m->n_attrs >= VS_MAX_ITEMS) {
        free(v);
        return medfl_error_set(MEDFL_EINVAL, "more than %d attributes", VS_MAX_ITEMS);
    }
    vs_attr_t *a = realloc(m->attrs, (m->n_attrs + 1) * sizeof *a);
    char *k = strdup(key);
    if (a) m->attrs = a;
    if (!a || !k) {
        free(v);
        free(k);
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    }
    memmove(&a[i + 1], &a[i], (m->n_attrs - i) * sizeof *a);
    a[i].key = k;
    a[i].value = v;
    m->n_attrs++;
    return 0;
}

const char *vs_manifest_attr(const vs_manifest_t *m, const char *key)
{
    for (size_t i = 0; i < m->n_attrs; i++)
        if (strcmp(m->attrs[i].key, key) == 0) return m->attrs[i].value;
    return NULL;
}

void vs_hex(const uint8_t *bytes, size_t n, char *out)
{
    sodium_bin2hex(out, 2 * n + 1, bytes, n);
}

static int s_unhex(const cJSON *item, const char *field, uint8_t *out, size_t n, const char *origin)
{
    if (!cJSON_IsString(item))
        return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s' missing or not a string", origin, field);
    const char *s = item->valuestring;
    size_t got = 0;
    if (strlen(s) != 2 * n || sodium_hex2bin(out, n, s, strlen(s), NULL, &got, NULL) != 0 || got != n)
        return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s' is not %zu hex digits", origin,
                               field, 2 * n);
    return 0;
}

/* cJSON prints a double with 15 digits whenever that reads back within DBL_EPSILON, so
 * 0.9999999999999999 became "1" and the signed hash, which covers the exact bits, no longer
 * matched the stored manifest. 17 significant digits always read back bit for bit. */
static cJSON *s_exact_number(double v)
{
    if (!isfinite(v)) return cJSON_CreateNull(); /* refused when read back */
    char buf[40];
    snprintf(buf, sizeof buf, "%.17g", v);
    return cJSON_CreateRaw(buf);
}

char *vs_manifest_to_json(const vs_manifest_t *m)
{
    char hex[2 * VS_SIG_BYTES + 1];
    cJSON *root = cJSON_CreateObject();
    if (!root) goto oom;
    cJSON_AddStringToObject(root, "format", S_FORMAT);
    cJSON_AddNumberToObject(root, "version", (double)m->version);
    cJSON_AddNumberToObject(root, "parent", (double)m->parent);
    vs_hex(m->parent_hash, VS_HASH_BYTES, hex);
    cJSON_AddStringToObject(root, "parent_hash", hex);
    cJSON_AddNumberToObject(root, "round", (double)m->round);
    cJSON_AddNumberToObject(root, "created", (double)m->created);
    cJSON *parts = cJSON_AddArrayToObject(root, "participants");
    for (size_t i = 0; parts && i < m->n_participants; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddItemToArray(parts, p);
        cJSON_AddStringToObject(p, "node", m->participants[i].node);
        cJSON_AddItemToObject(p, "weight", s_exact_number(m->participants[i].weight));
    }
    cJSON *metrics = cJSON_AddObjectToObject(root, "metrics");
    for (size_t i = 0; metrics && i < m->n_metrics; i++)
        cJSON_AddItemToObject(metrics, m->metrics[i].name, s_exact_number(m->metrics[i].value));
    cJSON *attrs = cJSON_AddObjectToObject(root, "attrs");
    for (size_t i = 0; attrs && i < m->n_attrs; i++)
        cJSON_AddStringToObject(attrs, m->attrs[i].key, m->attrs[i].value);
    cJSON *tensors = cJSON_AddArrayToObject(root, "tensors");
    for (size_t i = 0; tensors && i < m->n_tensors; i++) {
        const vs_tensor_info_t *t = &m->tensors[i];
        cJSON *o = cJSON_CreateObject(), *shape = cJSON_CreateArray();
        cJSON_AddItemToArray(tensors, o);
        cJSON_AddStringToObject(o, "name", t->name);
        for (int d = 0; shape && d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddItemToObject(o, "shape", shape);
        cJSON_AddNumberToObject(o, "offset", (double)t->offset);
    }
    cJSON_AddNumberToObject(root, "numel", (double)m->numel);
    vs_hex(m->tensors_digest, VS_HASH_BYTES, hex);
    cJSON_AddStringToObject(root, "tensors_digest", hex);
    vs_hex(m->hash, VS_HASH_BYTES, hex);
    cJSON_AddStringToObject(root, "hash", hex);
    vs_hex(m->signer, VS_PK_BYTES, hex);
    cJSON_AddStringToObject(root, "signer", hex);
    vs_hex(m->signature, VS_SIG_BYTES, hex);
    cJSON_AddStringToObject(root, "signature", hex);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) goto oom;
    return text;
oom:
    cJSON_Delete(root);
    medfl_error_set(MEDFL_ENOMEM, "version manifest: out of memory");
    return NULL;
}

/* Reads a non-negative integer field that must be exact in a double. */
static int s_get_u64(const cJSON *root, const char *field, uint64_t max, uint64_t *out,
                     const char *origin)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!cJSON_IsNumber(it))
        return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s' missing or not a number", origin, field);
    double v = it->valuedouble;
    if (!(v >= 0) || v > (double)max || v != floor(v))
        return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s' = %g is not an integer in 0..%llu",
                               origin, field, v, (unsigned long long)max);
    *out = (uint64_t)v;
    return 0;
}

vs_manifest_t *vs_manifest_parse(const char *text, size_t len, const char *origin)
{
    if (len > VS_MAX_MANIFEST) {
        medfl_error_set(MEDFL_EFORMAT, "%s: manifest larger than %u bytes", origin, VS_MAX_MANIFEST);
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    vs_manifest_t *m = NULL;
    if (!cJSON_IsObject(root)) {
        medfl_error_set(MEDFL_EFORMAT, "%s: manifest is not a JSON object", origin);
        goto fail;
    }
    if (!(m = vs_manifest_new())) goto fail;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, S_FORMAT) != 0) {
        medfl_error_set(MEDFL_EUNSUPPORTED, "%s: field 'format' is not \"%s\"", origin, S_FORMAT);
        goto fail;
    }
    const uint64_t max_int = (uint64_t)1 << 53;
    uint64_t created = 0, numel = 0;
    if (s_get_u64(root, "version", max_int, &m->version, origin) < 0 ||
        s_get_u64(root, "parent", max_int, &m->parent, origin) < 0 ||
        s_get_u64(root, "round", max_int, &m->round, origin) < 0 ||
        s_get_u64(root, "created", max_int, &created, origin) < 0 ||
        s_get_u64(root, "numel", VS_MAX_NUMEL, &numel, origin) < 0)
        goto fail;
    m->created = (int64_t)created;
    if (m->version < 1 || m->parent >= m->version) {
        medfl_error_set(MEDFL_EFORMAT, "%s: field 'parent' = %llu must be below 'version' = %llu (>= 1)",
                        origin, (unsigned long long)m->parent, (unsigned long long)m->version);
        goto fail;
    }
    if (s_unhex(cJSON_GetObjectItemCaseSensitive(root, "parent_hash"), "parent_hash",
                m->parent_hash, VS_HASH_BYTES, origin) < 0 ||
        s_unhex(cJSON_GetObjectItemCaseSensitive(root, "tensors_digest"), "tensors_digest",
                m->tensors_digest, VS_HASH_BYTES, origin) < 0 ||
        s_unhex(cJSON_GetObjectItemCaseSensitive(root, "hash"), "hash", m->hash, VS_HASH_BYTES,
                origin) < 0 ||
        s_unhex(cJSON_GetObjectItemCaseSensitive(root, "signer"), "signer", m->signer,
                VS_PK_BYTES, origin) < 0 ||
        s_unhex(cJSON_GetObjectItemCaseSensitive(root, "signature"), "signature", m->signature,
                VS_SIG_BYTES, origin) < 0)
        goto fail;

    const cJSON *it, *parts = cJSON_GetObjectItemCaseSensitive(root, "participants");
    if (!cJSON_IsArray(parts)) {
        medfl_error_set(MEDFL_EFORMAT, "%s: field 'participants' missing or not an array", origin);
        goto fail;
    }
    size_t idx = 0;
    cJSON_ArrayForEach(it, parts) {
        const cJSON *node = cJSON_GetObjectItemCaseSensitive(it, "node");
        const cJSON *w = cJSON_GetObjectItemCaseSensitive(it, "weight");
        if (!cJSON_IsString(node) || !cJSON_IsNumber(w)) {
            medfl_error_set(MEDFL_EFORMAT, "%s: participants[%zu]: needs string 'node' and number 'weight'",
                            origin, idx);
            goto fail;
        }
        if (vs_manifest_add_participant(m, node->valuestring, w->valuedouble) < 0) {
            medfl_error_prefix("%s: participants[%zu]: ", origin, idx);
            goto fail;
        }
        idx++;
    }
    const cJSON *metrics = cJSON_GetObjectItemCaseSensitive(root, "metrics");
    if (!cJSON_IsObject(metrics)) {
        medfl_error_set(MEDFL_EFORMAT, "%s: field 'metrics' missing or not an object", origin);
        goto fail;
    }
    cJSON_ArrayForEach(it, metrics) {
        if (!cJSON_IsNumber(it)) {
            medfl_error_set(MEDFL_EFORMAT, "%s: metrics: '%s' is not a number", origin,
                            it->string ? it->string : "?");
            goto fail;
        }
        /* A repeated key would otherwise silently collapse into one value. */
        size_t before = m->n_metrics;
        if (vs_manifest_set_metric(m, it->string, it->valuedouble) < 0) {
            medfl_error_prefix("%s: metrics: ", origin);
            goto fail;
        }
        if (m->n_metrics == before) {
            medfl_error_set(MEDFL_EFORMAT, "%s: metrics: '%s' given twice", origin, it->string);
            goto fail;
        }
    }
    const cJSON *attrs = cJSON_GetObjectItemCaseSensitive(root, "attrs");
    if (!cJSON_IsObject(attrs)) {
        medfl_error_set(MEDFL_EFORMAT, "%s: field 'attrs' missing or not an object", origin);
        goto fail;
    }
    cJSON_ArrayForEach(it, attrs) {
        size_t before = m->n_attrs;
        if (!cJSON_IsString(it)) {
            medfl_error_set(MEDFL_EFORMAT, "%s: attrs: '%s' is not a string", origin,
                            it->string ? it->string : "?");
            goto fail;
        }
        if (vs_manifest_set_attr(m, it->string, it->valuestring) < 0) {
            medfl_error_prefix("%s: attrs: ", origin);
            goto fail;
        }
        if (m->n_attrs == before) {
            medfl_error_set(MEDFL_EFORMAT, "%s: attrs: '%s' given twice", origin, it->string);
            goto fail;
        }
    }
    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    if (!cJSON_IsArray(tensors) || cJSON_GetArraySize(tensors) < 1) {
        medfl_error_set(MEDFL_EFORMAT, "%s: field 'tensors' missing, empty or not an array", origin);
        goto fail;
    }
    idx = 0;
    cJSON_ArrayForEach(it, tensors) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
        uint64_t offset = 0;
        int64_t dims[NT_MAX_DIMS];
        int ndim = 0;
        if (!cJSON_IsString(name) || !cJSON_IsArray(shape)) {
            medfl_error_set(MEDFL_EFORMAT, "%s: tensors[%zu]: needs string 'name' and array 'shape'",
                            origin, idx);
            goto fail;
        }
        const cJSON *d;
        cJSON_ArrayForEach(d, shape) {
            if (ndim >= NT_MAX_DIMS || !cJSON_IsNumber(d) || d->valuedouble < 1 ||
                d->valuedouble > (double)VS_MAX_NUMEL || d->valuedouble != floor(d->valuedouble)) {
                medfl_error_set(MEDFL_EFORMAT, "%s: tensors[%zu] '%s': bad shape", origin, idx,
                                name->valuestring);
                goto fail;
            }
            dims[ndim++] = (int64_t)d->valuedouble;
        }
        if (s_get_u64(it, "offset", VS_MAX_NUMEL, &offset, origin) < 0) goto fail;
        if (vs_manifest_add_tensor(m, name->valuestring, ndim, dims) < 0) {
            medfl_error_prefix("%s: tensors[%zu]: ", origin, idx);
            goto fail;
        }
        if (offset != m->tensors[m->n_tensors - 1].offset) {
            medfl_error_set(MEDFL_EFORMAT, "%s: tensors[%zu] '%s': offset %llu, expected %zu (tensors must tile the flat vector in order)",
                            origin, idx, name->valuestring, (unsigned long long)offset,
                            m->tensors[m->n_tensors - 1].offset);
            goto fail;
        }
        idx++;
    }
    if (numel != m->numel) {
        medfl_error_set(MEDFL_EFORMAT, "%s: field 'numel' = %llu but the tensor table holds %zu floats",
                        origin, (unsigned long long)numel, m->numel);
        goto fail;
    }
    cJSON_Delete(root);
    return m;
fail:
    cJSON_Delete(root);
    vs_manifest_destroy(&m);
    return NULL;
}

/* ---------------------------------------------------------------- hashing */

static void s_h_u32(crypto_generichash_state *st, uint32_t v)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
    crypto_generichash_update(st, b, 4);
}

static void s_h_u64(crypto_generichash_state *st, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    crypto_generichash_update(st, b, 8);
}

static void s_h_f64(crypto_generichash_state *st, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, 8);
    s_h_u64(st, bits);
}

static void s_h_str(crypto_generichash_state *st, const char *s)
{
    size_t n = strlen(s);
    s_h_u32(st, (uint32_t)n);
    crypto_generichash_update(st, (const uint8_t *)s, n);
}

int vs_compute_hashes(const vs_manifest_t *m, const float *flat, uint8_t digest[VS_HASH_BYTES],
                      uint8_t hash[VS_HASH_BYTES])
{
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "libsodium failed to initialise");
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, VS_HASH_BYTES);
    s_h_str(&st, "medfl-tensors-v1");
    s_h_u32(&st, (uint32_t)m->n_tensors);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const vs_tensor_info_t *t = &m->tensors[i];
        s_h_str(&st, t->name);
        s_h_u32(&st, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) s_h_u64(&st, (uint64_t)t->shape[d]);
        crypto_generichash_update(&st, (const uint8_t *)(flat + t->offset), 4 * t->numel);
    }
    crypto_generichash_final(&st, digest, VS_HASH_BYTES);

    crypto_generichash_init(&st, NULL, 0, VS_HASH_BYTES);
    s_h_str(&st, "medfl-version-v1");
    crypto_generichash_update(&st, m->parent_hash, VS_HASH_BYTES);
    crypto_generichash_update(&st, digest, VS_HASH_BYTES);
    s_h_u64(&st, m->version);
    s_h_u64(&st, m->parent);
    s_h_u64(&st, m->round);
    s_h_u64(&st, (uint64_t)m->created);
    s_h_u32(&st, (uint32_t)m->n_participants);
    for (size_t i = 0; i < m->n_participants; i++) {
        s_h_str(&st, m->participants[i].node);
        s_h_f64(&st, m->participants[i].weight);
    }
    s_h_u32(&st, (uint32_t)m->n_metrics);
    for (size_t i = 0; i < m->n_metrics; i++) {
        s_h_str(&st, m->metrics[i].name);
        s_h_f64(&st, m->metrics[i].value);
    }
    s_h_u32(&st, (uint32_t)m->n_attrs);
    for (size_t i = 0; i < m->n_attrs; i++) {
        s_h_str(&st, m->attrs[i].key);
        s_h_str(&st, m->attrs[i].value);
    }
    crypto_generichash_final(&st, hash, VS_HASH_BYTES);
    return 0;
}

static void s_sig_message(const uint8_t hash[VS_HASH_BYTES], uint8_t *msg)
{
    memcpy(msg, s_sig_domain, sizeof s_sig_domain - 1);
    memcpy(msg + sizeof s_sig_domain - 1, hash, VS_HASH_BYTES);
}
#define S_SIG_MSG_LEN (sizeof s_sig_domain - 1 + VS_HASH_BYTES)

int vs_check(const vs_manifest_t *m, const float *flat, const uint8_t pk[VS_PK_BYTES],
             const char *origin)
{
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "libsodium failed to initialise");
    char a[2 * VS_PK_BYTES + 1], b[2 * VS_PK_BYTES + 1];
    if (sodium_memcmp(m->signer, pk, VS_PK_BYTES) != 0) {
        vs_hex(m->signer, 8, a);
        vs_hex(pk, 8, b);
        return medfl_error_set(MEDFL_ECRYPTO,
                               "%s: signed by key %s..., not by the aggregator's key %s...",
                               origin, a, b);
    }
    uint8_t msg[S_SIG_MSG_LEN];
    s_sig_message(m->hash, msg);
    if (crypto_sign_verify_detached(m->signature, msg, sizeof msg, pk) != 0)
        return medfl_error_set(MEDFL_ECRYPTO,
                               "%s: signature invalid: the aggregator did not sign this hash", origin);
    uint8_t digest[VS_HASH_BYTES], hash[VS_HASH_BYTES];
    if (vs_compute_hashes(m, flat, digest, hash) < 0) return -1;
    if (sodium_memcmp(digest, m->tensors_digest, VS_HASH_BYTES) != 0)
        return medfl_error_set(MEDFL_ECRYPTO,
                               "%s: tensors altered: their digest does not match the signed manifest",
                               origin);
    if (sodium_memcmp(hash, m->hash, VS_HASH_BYTES) != 0)
        return medfl_error_set(MEDFL_ECRYPTO,
                               "%s: metadata altered: version, parent, round, created, participants, "
                               "metrics or attributes do not match the signed hash",
                               origin);
    return 0;
}

/* ---------------------------------------------------------------- files */

static void s_paths(const char *dir, uint64_t v, char *h5, char *json, size_t size)
{
    if (h5) snprintf(h5, size, "%s/v%06llu.h5", dir, (unsigned long long)v);
    if (json) snprintf(json, size, "%s/v%06llu.json", dir, (unsigned long long)v);
}

static int s_read_file(const char *path, char **out, size_t *len, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s",
                               path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                free(buf);
                fclose(f);
                return medfl_error_set(MEDFL_EFORMAT, "%s: larger than %zu bytes", path, max);
            }
            cap = cap ? cap * 2 : 4096;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    bool err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return medfl_error_set(MEDFL_EIO, "%s: read error", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static int s_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Parses "v%06llu.EXT" exactly; 0 when the name is something else. */
static uint64_t s_version_of(const char *name, const char *ext)
{
    size_t n = strlen(name), e = strlen(ext);
    if (n < 2 + e || name[0] != 'v' || strcmp(name + n - e, ext) != 0) return 0;
    uint64_t v = 0;
    for (size_t i = 1; i < n - e; i++) {
        if (name[i] < '0' || name[i] > '9' || v > ((uint64_t)1 << 53)) return 0;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    return v;
}

static int s_scan(vs_store_t *s, bool clean)
{
    DIR *d = opendir(s->dir);
    if (!d)
        return medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO,
                               "%s: cannot open version store: %s", s->dir, strerror(errno));
    free(s->versions);
    s->versions = NULL;
    s->n_versions = s->cap_versions = 0;
    size_t cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
        if (clean && strstr(e->d_name, ".tmp.")) {
            /* An interrupted write: never renamed, so never part of the store. */
            LOG_WARN(AGG, "%s: removing leftover temporary file of an interrupted write", path);
            unlink(path);
            continue;
        }
        uint64_t v = s_version_of(e->d_name, ".json");
        if (v == 0) continue;
        if (s->n_versions == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *nv = realloc(s->versions, cap * sizeof *nv);
            if (!nv) {
                rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
                break;
            }
            s->versions = nv;
        }
        s->versions[s->n_versions++] = v;
    }
    s->cap_versions = cap;
    closedir(d);
    if (rc < 0) return rc;
    if (s->n_versions) qsort(s->versions, s->n_versions, sizeof *s->versions, s_cmp_u64);
    if (clean) {
        /* Tensor files newer than the last manifest belong to a version whose manifest was
         * never written: it does not exist, and the next commit reuses its number. */
        d = opendir(s->dir);
        while (d && (e = readdir(d))) {
            uint64_t v = s_version_of(e->d_name, ".h5");
            if (v && !vs_store_has(s, v)) {
                char path[4096];
                snprintf(path, sizeof path, "%s/%s", s->dir, e->d_name);
                LOG_WARN(AGG, "%s: tensor file without a manifest (interrupted write), removed", path);
                unlink(path);
            }
        }
        if (d) closedir(d);
    }
    return 0;
}

static int s_read_head(vs_store_t *s)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/HEAD", s->dir);
    char *text = NULL;
    size_t len = 0;
    s->head_file = s->head_latest = 0;
    if (s_read_file(path, &text, &len, 256) < 0) {
        if (medfl_error_code() == MEDFL_ENOTFOUND) {
            medfl_error_clear();
            return 0;
        }
        return -1;
    }
    unsigned long long h = 0, l = 0;
    int n = sscanf(text, "%llu %llu", &h, &l);
    free(text);
    if (n != 2 || h == 0 || h > l)
        return medfl_error_set(MEDFL_EFORMAT, "%s: expected \"HEAD_VERSION LATEST_VERSION\"", path);
    if (!vs_store_has(s, h))
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: head version %llu does not exist", path, h);
    s->head_file = h;
    s->head_latest = l;
    return 0;
}

static vs_store_t *s_open(const char *dir, bool create, bool clean)
{
    if (create && mkdir(dir, 0700) < 0 && errno != EEXIST) {
        medfl_error_set(MEDFL_EIO, "%s: cannot create version store: %s", dir, strerror(errno));
        return NULL;
    }
    vs_store_t *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    if (s_scan(s, clean) < 0 || s_read_head(s) < 0) vs_store_destroy(&s);
    return s;
}

vs_store_t *vs_store_open(const char *dir, bool create) { return s_open(dir, create, true); }

vs_store_t *vs_store_open_readonly(const char *dir) { return s_open(dir, false, false); }

static int s_versions_add(vs_store_t *s, uint64_t v);

int vs_store_refresh(vs_store_t *s)
{
    /* Another process numbers on from the latest version (commit, init-version), so what it
     * added is found by probing the next numbers' manifests: O(1) per call where a folder
     * scan costs O(versions), and the daemon calls this twice a round. Nothing is removed: a
     * temporary file here may be another process's write in progress. */
    for (;;) {
        char path[4096];
        uint64_t next = vs_store_latest(s) + 1;
        s_paths(s->dir, next, NULL, path, sizeof path);
        if (access(path, F_OK) != 0) break;
        if (s_versions_add(s, next) < 0) return -1;
    }
    return s_read_head(s);
}

void vs_store_destroy(vs_store_t **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->verified);
    free((*self_p)->versions);
    free((*self_p)->dir);
    free(*self_p);
    *self_p = NULL;
}

const char *vs_store_dir(const vs_store_t *s) { return s->dir; }

uint64_t vs_store_latest(const vs_store_t *s)
{
    return s->n_versions ? s->versions[s->n_versions - 1] : 0;
}

uint64_t vs_store_head(const vs_store_t *s)
{
    uint64_t latest = vs_store_latest(s);
    /* A commit always makes the new version the head; HEAD only records a rollback, and
     * stops counting as soon as a version newer than it exists. So a commit never has to
     * write HEAD, and a crash between writing a version and moving head cannot happen. */
    if (s->head_file && latest <= s->head_latest) return s->head_file;
    return latest;
}

bool vs_store_has(const vs_store_t *s, uint64_t version)
{
    return version && s->n_versions &&
           bsearch(&version, s->versions, s->n_versions, sizeof *s->versions, s_cmp_u64);
}

const uint64_t *vs_store_versions(const vs_store_t *s, size_t *count)
{
    *count = s->n_versions;
    return s->versions;
}

int vs_store_rollback(vs_store_t *s, uint64_t version)
{
    if (!vs_store_has(s, version))
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: version %llu does not exist", s->dir,
                               (unsigned long long)version);
    char path[4096], text[64];
    snprintf(path, sizeof path, "%s/HEAD", s->dir);
    uint64_t latest = vs_store_latest(s);
    int n = snprintf(text, sizeof text, "%llu %llu\n", (unsigned long long)version,
                     (unsigned long long)latest);
    if (atomic_file_replace(path, text, (size_t)n, 0644) < 0) return -1;
    s->head_file = version;
    s->head_latest = latest;
    LOG_INFO(AGG, "version store %s: head moved to v%llu (latest v%llu kept)", s->dir,
             (unsigned long long)version, (unsigned long long)latest);
    return 0;
}

vs_manifest_t *vs_store_manifest(const vs_store_t *s, uint64_t version)
{
    char path[4096];
    s_paths(s->dir, version, NULL, path, sizeof path);
    char *text = NULL;
    size_t len = 0;
    if (s_read_file(path, &text, &len, VS_MAX_MANIFEST) < 0) return NULL;
    vs_manifest_t *m = vs_manifest_parse(text, len, path);
    free(text);
    if (m && m->version != version) {
        medfl_error_set(MEDFL_EFORMAT, "%s: manifest says version %llu", path,
                        (unsigned long long)m->version);
        vs_manifest_destroy(&m);
    }
    return m;
}

static int s_load_tensors(const vs_store_t *s, const vs_manifest_t *m, float **flat_out)
{
    char path[4096];
    s_paths(s->dir, m->version, path, NULL, sizeof path);
    h5io_t *h = h5io_open(path);
    if (!h) return -1;
    float *flat = malloc((m->numel ? m->numel : 1) * sizeof *flat);
    char **names = NULL;
    size_t n_names = 0;
    int rc = -1;
    if (!flat) {
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    if (h5io_list(h, "/tensors", &names, &n_names) < 0) goto done;
    if (n_names != m->n_tensors) {
        medfl_error_set(MEDFL_EFORMAT, "%s: holds %zu tensors, the manifest lists %zu", path,
                        n_names, m->n_tensors);
        goto done;
    }
    for (size_t i = 0; i < m->n_tensors; i++) {
        char dset[VS_MAX_NAME + 16];
        snprintf(dset, sizeof dset, "/tensors/%s", m->tensors[i].name);
        if (h5io_read_f32_into(h, dset, m->tensors[i].ndim, m->tensors[i].shape,
                               flat + m->tensors[i].offset) < 0)
            goto done;
    }
    *flat_out = flat;
    flat = NULL;
    rc = 0;
done:
    h5io_strings_free(&names, n_names);
    free(flat);
    h5io_destroy(&h);
    return rc;
}

int vs_store_load(const vs_store_t *s, uint64_t version, vs_manifest_t **m_out, float **flat_out)
{
    vs_manifest_t *m = vs_store_manifest(s, version);
    if (!m) return -1;
    float *flat = NULL;
    if (flat_out && s_load_tensors(s, m, &flat) < 0) {
        vs_manifest_destroy(&m);
        return -1;
    }
    if (flat_out) *flat_out = flat;
    if (m_out) *m_out = m;
    else vs_manifest_destroy(&m);
    return 0;
}

/* Records a version just written (its manifest renamed into place) in the sorted list. Not a
 * rescan of the folder: that costs O(versions) per round, and this object is the store's only
 * writer (commit numbers come from its own list). */
static int s_versions_add(vs_store_t *s, uint64_t v)
{
    if (vs_store_has(s, v)) return 0;
    if (s->n_versions == s->cap_versions) {
        size_t cap = s->cap_versions ? 2 * s->cap_versions : 16;
        uint64_t *nv = realloc(s->versions, cap * sizeof *nv);
        if (!nv) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", s->dir);
        s->versions = nv;
        s->cap_versions = cap;
    }
    size_t i = s->n_versions;
    while (i > 0 && s->versions[i - 1] > v) i--;
    memmove(&s->versions[i + 1], &s->versions[i], (s->n_versions - i) * sizeof *s->versions);
    s->versions[i] = v;
    s->n_versions++;
    return 0;
}

/* Writes tensors then manifest; the manifest's rename is the commit point. */
static int s_write_version(vs_store_t *s, const vs_manifest_t *m, const float *flat)
{
    char h5path[4096], jpath[4096], hex[2 * VS_HASH_BYTES + 1];
    s_paths(s->dir, m->version, h5path, jpath, sizeof h5path);
    h5io_t *h = h5io_create(h5path);
    if (!h) return -1;
    vs_hex(m->hash, VS_HASH_BYTES, hex);
    if (h5io_group(h, "/tensors") < 0 || h5io_set_attr_str(h, "/", "format", S_FORMAT) < 0 ||
        h5io_set_attr_i64(h, "/", "version", (int64_t)m->version) < 0 ||
        h5io_set_attr_i64(h, "/", "parent", (int64_t)m->parent) < 0 ||
        h5io_set_attr_i64(h, "/", "round", (int64_t)m->round) < 0 ||
        h5io_set_attr_str(h, "/", "hash", hex) < 0) {
        h5io_destroy(&h);
        return -1;
    }
    for (size_t i = 0; i < m->n_tensors; i++) {
        char dset[VS_MAX_NAME + 16];
        snprintf(dset, sizeof dset, "/tensors/%s", m->tensors[i].name);
        if (h5io_write_f32(h, dset, m->tensors[i].ndim, m->tensors[i].shape,
                           flat + m->tensors[i].offset) < 0) {
            h5io_destroy(&h);
            return -1;
        }
    }
    if (h5io_commit(&h) < 0) return -1;
    char *json = vs_manifest_to_json(m);
    if (!json) return -1;
    int rc = atomic_file_replace(jpath, json, strlen(json), 0644);
    free(json);
    if (rc < 0) return -1;
    return s_versions_add(s, m->version);
}

int vs_store_commit(vs_store_t *s, vs_manifest_t *m, const float *flat, const uint8_t sk[VS_SK_BYTES])
{
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "libsodium failed to initialise");
    if (m->n_tensors == 0)
        return medfl_error_set(MEDFL_EINVAL, "%s: a version needs at least one tensor", s->dir);
    for (size_t i = 0; i < m->numel; i++)
        if (!isfinite(flat[i])) {
            long t = 0;
            while ((size_t)t + 1 < m->n_tensors && m->tensors[t + 1].offset <= i) t++;
            return medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' holds a non-finite value at %zu",
                                   s->dir, m->tensors[t].name, i - m->tensors[t].offset);
        }
    m->version = vs_store_latest(s) + 1;
    m->parent = vs_store_head(s);
    memset(m->parent_hash, 0, VS_HASH_BYTES);
    if (m->parent) {
        vs_manifest_t *pm = vs_store_manifest(s, m->parent);
        if (!pm) return medfl_error_prefix("parent v%llu: ", (unsigned long long)m->parent);
        memcpy(m->parent_hash, pm->hash, VS_HASH_BYTES);
        vs_manifest_destroy(&pm);
    }
    if (m->created == 0) m->created = (int64_t)time(NULL);
    crypto_sign_ed25519_sk_to_pk(m->signer, sk);
    if (vs_compute_hashes(m, flat, m->tensors_digest, m->hash) < 0) return -1;
    uint8_t msg[S_SIG_MSG_LEN];
    s_sig_message(m->hash, msg);
    crypto_sign_detached(m->signature, NULL, msg, sizeof msg, sk);
    if (s_write_version(s, m, flat) < 0) return -1;
    char hex[2 * VS_HASH_BYTES + 1];
    vs_hex(m->hash, VS_HASH_BYTES, hex);
    LOG_INFO(AGG, "version v%llu written (parent v%llu, round %llu, %zu participants, hash %.16s)",
             (unsigned long long)m->version, (unsigned long long)m->parent,
             (unsigned long long)m->round, m->n_participants, hex);
    return 0;
}

/* ---------------------------------------------------------------- verification cache */

static const s_verified_t *s_verified_find(const vs_store_t *s, uint64_t v,
                                           const uint8_t pk[VS_PK_BYTES])
{
    if (!s->n_verified || sodium_memcmp(s->verified_pk, pk, VS_PK_BYTES) != 0) return NULL;
    size_t lo = 0, hi = s->n_verified;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->verified[mid].version < v) lo = mid + 1;
        else hi = mid;
    }
    return lo < s->n_verified && s->verified[lo].version == v ? &s->verified[lo] : NULL;
}

/* Records the versions of a verified walk (walk[0] the newest). Appending is the usual case:
 * a new version is newer than every verified one. Out of memory only loses the shortcut. */
static void s_verified_add(vs_store_t *s, const s_verified_t *walk, size_t n,
                           const uint8_t pk[VS_PK_BYTES])
{
    if (s->n_verified && sodium_memcmp(s->verified_pk, pk, VS_PK_BYTES) != 0)
        s->n_verified = 0; /* verified under another key: says nothing under this one */
    memcpy(s->verified_pk, pk, VS_PK_BYTES);
    for (size_t k = n; k-- > 0;) {
        if (s_verified_find(s, walk[k].version, pk)) continue;
        if (s->n_verified == s->cap_verified) {
            size_t cap = s->cap_verified ? 2 * s->cap_verified : 64;
            s_verified_t *nv = realloc(s->verified, cap * sizeof *nv);
            if (!nv) return;
            s->verified = nv;
            s->cap_verified = cap;
        }
        size_t i = s->n_verified;
        while (i > 0 && s->verified[i - 1].version > walk[k].version) i--;
        memmove(&s->verified[i + 1], &s->verified[i], (s->n_verified - i) * sizeof *s->verified);
        s->verified[i] = walk[k];
        s->n_verified++;
    }
}

/* Walks from `version` towards genesis, checking each version in isolation (vs_check) and
 * each link (the child's parent number and parent_hash against the parent's verified hash).
 * With use_cache the walk ends at the first ancestor already verified through this object:
 * its hash, held in memory, closes the link. */
static int s_verify(vs_store_t *s, uint64_t version, const uint8_t pk[VS_PK_BYTES],
                    bool use_cache, vs_manifest_t **m_out, float **flat_out)
{
    if (!vs_store_has(s, version))
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: version %llu does not exist", s->dir,
                               (unsigned long long)version);
    uint64_t v = version;
    vs_manifest_t *child = NULL, *top = NULL;
    float *top_flat = NULL;
    s_verified_t *walk = NULL;
    size_t n_walk = 0, cap_walk = 0;
    int rc = -1;
    while (v) {
        char origin[64];
        snprintf(origin, sizeof origin, "v%06llu", (unsigned long long)v);
        const s_verified_t *known = child && use_cache ? s_verified_find(s, v, pk) : NULL;
        if (known) {
            if (sodium_memcmp(child->parent_hash, known->hash, VS_HASH_BYTES) != 0) {
                medfl_error_set(MEDFL_ECRYPTO,
                                "chain broken: parent_hash of v%06llu does not match the hash of %s",
                                (unsigned long long)child->version, origin);
                goto done;
            }
            break;
        }
        vs_manifest_t *m = NULL;
        float *flat = NULL;
        if (!vs_store_has(s, v)) {
            medfl_error_set(MEDFL_ECRYPTO, "chain broken: parent %s of v%06llu is missing", origin,
                            (unsigned long long)child->version);
            goto done;
        }
        if (vs_store_load(s, v, &m, &flat) < 0) {
            medfl_error_prefix("%s: ", origin);
            goto done;
        }
        int ok = vs_check(m, flat, pk, origin);
        if (ok == 0 && child) {
            if (m->version != child->parent)
                ok = medfl_error_set(MEDFL_ECRYPTO, "chain broken: v%06llu names parent %llu",
                                     (unsigned long long)child->version,
                                     (unsigned long long)child->parent);
            else if (sodium_memcmp(child->parent_hash, m->hash, VS_HASH_BYTES) != 0)
                ok = medfl_error_set(MEDFL_ECRYPTO,
                                     "chain broken: parent_hash of v%06llu does not match the hash of %s",
                                     (unsigned long long)child->version, origin);
        }
        if (ok == 0 && m->parent == 0 && !sodium_is_zero(m->parent_hash, VS_HASH_BYTES))
            ok = medfl_error_set(MEDFL_ECRYPTO, "chain broken: genesis %s has a non-zero parent_hash",
                                 origin);
        /* a verified version's number cannot hold another hash: the signer signed two */
        const s_verified_t *seen = ok == 0 ? s_verified_find(s, v, pk) : NULL;
        if (seen && sodium_memcmp(seen->hash, m->hash, VS_HASH_BYTES) != 0)
            ok = medfl_error_set(MEDFL_ECRYPTO, "%s changed on disk since it was verified", origin);
        if (ok == 0 && n_walk == cap_walk) {
            cap_walk = cap_walk ? 2 * cap_walk : 8;
            s_verified_t *nw = realloc(walk, cap_walk * sizeof *nw);
            if (nw) walk = nw;
            else ok = medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", origin);
        }
        if (ok < 0) {
            vs_manifest_destroy(&m);
            free(flat);
            goto done;
        }
        walk[n_walk].version = v;
        memcpy(walk[n_walk].hash, m->hash, VS_HASH_BYTES);
        n_walk++;
        if (!top) {
            top = m;
            top_flat = flat;
        } else {
            free(flat);
            if (child != top) vs_manifest_destroy(&child);
        }
        child = m;
        v = m->parent;
    }
    s_verified_add(s, walk, n_walk, pk);
    rc = 0;
done:
    free(walk);
    if (child && child != top) vs_manifest_destroy(&child);
    if (rc == 0 && m_out) *m_out = top;
    else vs_manifest_destroy(&top);
    if (rc == 0 && flat_out) *flat_out = top_flat;
    else free(top_flat);
    return rc;
}

int vs_store_verify(vs_store_t *s, uint64_t version, const uint8_t pk[VS_PK_BYTES],
                    vs_manifest_t **m_out, float **flat_out)
{
    return s_verify(s, version, pk, false, m_out, flat_out);
}

int vs_store_verify_cached(vs_store_t *s, uint64_t version, const uint8_t pk[VS_PK_BYTES],
                           vs_manifest_t **m_out, float **flat_out)
{
    return s_verify(s, version, pk, true, m_out, flat_out);
}

int versions_verify(const char *dir, uint64_t version, const uint8_t pk[VS_PK_BYTES])
{
    vs_store_t *s = vs_store_open(dir, false);
    if (!s) return -1;
    int rc = vs_store_verify(s, version, pk, NULL, NULL);
    vs_store_destroy(&s);
    return rc;
}

/* ---------------------------------------------------------------- transfer */

static void s_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t s_get_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int vs_store_serialize(const vs_store_t *s, uint64_t version, uint8_t **blob, size_t *len)
{
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    if (vs_store_load(s, version, &m, &flat) < 0) return -1;
    char *json = vs_manifest_to_json(m);
    int rc = -1;
    if (!json) goto done;
    size_t jl = strlen(json), total = 8 + 8 + jl + 8 + 4 * m->numel;
    uint8_t *b = malloc(total);
    if (!b) {
        medfl_error_set(MEDFL_ENOMEM, "version %llu: out of memory", (unsigned long long)version);
        goto done;
    }
    memcpy(b, S_BLOB_MAGIC, 8);
    s_put_u64(b + 8, jl);
    memcpy(b + 16, json, jl);
    s_put_u64(b + 16 + jl, m->numel);
    memcpy(b + 24 + jl, flat, 4 * m->numel);
    *blob = b;
    *len = total;
    rc = 0;
done:
    free(json);
    free(flat);
    vs_manifest_destroy(&m);
    return rc;
}

int vs_blob_parse(const uint8_t *blob, size_t len, vs_manifest_t **m_out, float **flat_out)
{
    if (len < 24 || memcmp(blob, S_BLOB_MAGIC, 8) != 0)
        return medfl_error_set(MEDFL_EPROTO, "version blob: bad magic or shorter than 24 bytes");
    uint64_t jl = s_get_u64le(blob + 8);
    if (jl > VS_MAX_MANIFEST || jl > len - 24)
        return medfl_error_set(MEDFL_EPROTO, "version blob: manifest length %llu exceeds the blob",
                               (unsigned long long)jl);
    uint64_t numel = s_get_u64le(blob + 16 + jl);
    if (numel > VS_MAX_NUMEL || 4 * numel != len - 24 - jl)
        return medfl_error_set(MEDFL_EPROTO,
                               "version blob: %llu floats announced, %zu bytes of tensor data present",
                               (unsigned long long)numel, len - 24 - (size_t)jl);
    vs_manifest_t *m = vs_manifest_parse((const char *)blob + 16, (size_t)jl, "version blob");
    if (!m) return -1;
    if (m->numel != numel) {
        medfl_error_set(MEDFL_EPROTO, "version blob: %llu floats but the manifest's table holds %zu",
                        (unsigned long long)numel, m->numel);
        vs_manifest_destroy(&m);
        return -1;
    }
    float *flat = malloc((numel ? numel : 1) * sizeof *flat);
    if (!flat) {
        vs_manifest_destroy(&m);
        return medfl_error_set(MEDFL_ENOMEM, "version blob: out of memory");
    }
    memcpy(flat, blob + 24 + jl, 4 * numel);
    *m_out = m;
    *flat_out = flat;
    return 0;
}

int vs_store_install(vs_store_t *s, const uint8_t *blob, size_t len, const uint8_t pk[VS_PK_BYTES],
                     uint64_t *version_out)
{
    vs_manifest_t *m = NULL, *pm = NULL;
    float *flat = NULL;
    int rc = -1;
    if (vs_blob_parse(blob, len, &m, &flat) < 0) return -1;
    char origin[64];
    snprintf(origin, sizeof origin, "announced v%06llu", (unsigned long long)m->version);
    if (vs_check(m, flat, pk, origin) < 0) goto done;
    if (vs_store_has(s, m->version)) {
        vs_manifest_t *have = vs_store_manifest(s, m->version);
        if (!have) goto done;
        bool same = sodium_memcmp(have->hash, m->hash, VS_HASH_BYTES) == 0;
        vs_manifest_destroy(&have);
        if (!same) {
            medfl_error_set(MEDFL_ECRYPTO,
                            "%s: a different version with this number is already installed "
                            "(the aggregator signed two versions v%llu)",
                            origin, (unsigned long long)m->version);
            goto done;
        }
        rc = 0;
        goto done;
    }
    if (m->parent == 0) {
        if (!sodium_is_zero(m->parent_hash, VS_HASH_BYTES)) {
            medfl_error_set(MEDFL_ECRYPTO, "chain broken: genesis %s has a non-zero parent_hash", origin);
            goto done;
        }
    } else {
        if (!vs_store_has(s, m->parent)) {
            medfl_error_set(MEDFL_ENOTFOUND, "%s: parent v%06llu is not installed; install it first",
                            origin, (unsigned long long)m->parent);
            goto done;
        }
        if (!(pm = vs_store_manifest(s, m->parent))) goto done;
        if (sodium_memcmp(pm->hash, m->parent_hash, VS_HASH_BYTES) != 0) {
            medfl_error_set(MEDFL_ECRYPTO,
                            "chain broken: parent_hash of %s does not match the installed v%06llu",
                            origin, (unsigned long long)m->parent);
            goto done;
        }
    }
    if (s_write_version(s, m, flat) < 0) goto done;
    LOG_INFO(AGG, "installed verified version v%llu (parent v%llu)", (unsigned long long)m->version,
             (unsigned long long)m->parent);
    rc = 0;
done:
    if (rc == 0 && version_out) *version_out = m->version;
    vs_manifest_destroy(&m);
    vs_manifest_destroy(&pm);
    free(flat);
    return rc;
}
