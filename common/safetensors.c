/* safetensors reader/writer. The reader maps the file and validates the header completely
 * before any tensor is touched, because the import path turns whatever a user downloaded into
 * the node's base model: a corrupt or hostile header must end in a clear error, never an
 * out-of-bounds read. The writer produces what the reference implementation produces (header
 * padded with spaces to 8 bytes) so PEFT and the safetensors package read it back. */
#include "common/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/error.h"

struct safetensors_t {
    char *origin;
    const uint8_t *data; /* start of the data buffer */
    size_t data_len;
    st_tensor_t *tensors;
    size_t count;
    char **meta;         /* key, value, key, value ... */
    size_t n_meta;
    void *map;           /* mmap of the file when opened from a path */
    size_t map_len;
};

static const struct {
    const char *name;
    size_t size;
} s_dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
    {"I8", 1}, {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1},
    {"F8_E5M2", 1},
};

void safetensors_destroy(safetensors_t **self_p)
{
    if (!self_p || !*self_p) return;
    safetensors_t *self = *self_p;
    for (size_t i = 0; i < self->count; i++) free(self->tensors[i].name);
    free(self->tensors);
    for (size_t i = 0; i < 2 * self->n_meta; i++) free(self->meta[i]);
    free(self->meta);
    if (self->map) munmap(self->map, self->map_len);
    free(self->origin);
    free(self);
    *self_p = NULL;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static bool s_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return false;
    *out = (uint64_t)d;
    return true;
}

static int s_cmp_begin(const void *a, const void *b)
{
    const st_tensor_t *x = *(const st_tensor_t *const *)a, *y = *(const st_tensor_t *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int s_cmp_name(const void *a, const void *b)
{
    return strcmp((*(const st_tensor_t *const *)a)->name, (*(const st_tensor_t *const *)b)->name);
}

static int s_parse_tensor(safetensors_t *self, const cJSON *item, st_tensor_t *t)
{
    const char *o = self->origin, *n = item->string;
    if (!cJSON_IsObject(item))
        return medfl_error_set(MEDFL_EFORMAT, "%s: header entry '%s' is not an object", o, n);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt) || !dt->valuestring)
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': field 'dtype' missing or not a "
                                              "string", o, n);
    for (size_t i = 0; i < sizeof s_dtypes / sizeof s_dtypes[0]; i++)
        if (strcmp(dt->valuestring, s_dtypes[i].name) == 0) {
            snprintf(t->dtype, sizeof t->dtype, "%s", s_dtypes[i].name);
            t->dtype_size = s_dtypes[i].size;
        }
    if (!t->dtype_size)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: tensor '%s': unknown dtype '%.32s'", o,
                               n, dt->valuestring);
    if (!cJSON_IsArray(shape))
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': field 'shape' missing or not "
                                              "an array", o, n);
    int nd = cJSON_GetArraySize(shape);
    if (nd > NT_MAX_DIMS)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: tensor '%s': %d dimensions (at most %d)",
                               o, n, nd, NT_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    bool overflow = false;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!s_uint(cJSON_GetArrayItem(shape, i), &d))
            return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': field 'shape'[%d] is not a "
                                                  "non-negative integer", o, n, i);
        t->shape[i] = (int64_t)d;
        if (d && numel > UINT64_MAX / d) overflow = true;
        numel *= d;
    }
    uint64_t b, e;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !s_uint(cJSON_GetArrayItem(offs, 0), &b) || !s_uint(cJSON_GetArrayItem(offs, 1), &e))
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': field 'data_offsets' must be "
                                              "two non-negative integers", o, n);
    if (b > e || e > self->data_len)
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] "
                                              "outside the %zu-byte data buffer", o, n,
                               (unsigned long long)b, (unsigned long long)e, self->data_len);
    if (overflow || numel > UINT64_MAX / t->dtype_size || numel * t->dtype_size != e - b)
        return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s': shape x %s size is not the "
                                              "%llu bytes of data_offsets", o, n, t->dtype,
                               (unsigned long long)(e - b));
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return 0;
}

static int s_parse_meta(safetensors_t *self, const cJSON *meta)
{
    if (!cJSON_IsObject(meta))
        return medfl_error_set(MEDFL_EFORMAT, "%s: '__metadata__' is not an object", self->origin);
    size_t n = (size_t)cJSON_GetArraySize(meta);
    if (!n) return 0;
    if (!(self->meta = calloc(2 * n, sizeof *self->meta)))
        return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", self->origin);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta)
    {
        if (!cJSON_IsString(kv) || !kv->valuestring)
            return medfl_error_set(MEDFL_EFORMAT, "%s: '__metadata__' value of '%s' is not a "
                                                  "string", self->origin, kv->string);
        char *k = strdup(kv->string), *v = strdup(kv->valuestring);
        self->meta[2 * self->n_meta] = k;
        self->meta[2 * self->n_meta + 1] = v;
        self->n_meta++;
        if (!k || !v) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", self->origin);
    }
    return 0;
}

static int s_parse(safetensors_t *self, const uint8_t *buf, size_t len)
{
    const char *o = self->origin;
    if (len < 8)
        return medfl_error_set(MEDFL_EFORMAT, "%s: %zu bytes, too short for a safetensors "
                                              "header length", o, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen > len - 8)
        return medfl_error_set(MEDFL_EFORMAT, "%s: header length %llu exceeds the file size "
                                              "(%zu bytes): truncated or not safetensors", o,
                               (unsigned long long)hlen, len);
    if (hlen > ST_MAX_HEADER)
        return medfl_error_set(MEDFL_EFORMAT, "%s: header length %llu above the %u limit", o,
                               (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen < 2 || buf[8] != '{')
        return medfl_error_set(MEDFL_EFORMAT, "%s: header is not a JSON object", o);
    self->data = buf + 8 + hlen;
    self->data_len = len - 8 - (size_t)hlen;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)buf + 8, (size_t)hlen, &end, false);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return medfl_error_set(MEDFL_EFORMAT, "%s: header is not valid JSON (near byte %zu)", o,
                               end ? (size_t)(end - (const char *)buf) : (size_t)8);
    }
    /* Only trailing spaces (the writer's padding) may follow the JSON object. */
    for (const char *p = end; p && p < (const char *)buf + 8 + hlen; p++)
        if (*p != ' ' && *p != '\0') {
            cJSON_Delete(root);
            return medfl_error_set(MEDFL_EFORMAT, "%s: trailing bytes after the header JSON "
                                                  "at byte %zu", o, (size_t)(p - (const char *)buf));
        }
    int rc = 0;
    size_t n = (size_t)cJSON_GetArraySize(root);
    self->tensors = calloc(n ? n : 1, sizeof *self->tensors);
    st_tensor_t **order = calloc(n ? n : 1, sizeof *order);
    if (!self->tensors || !order) {
        rc = medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", o);
        goto done;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, root)
    {
        if (!item->string || !item->string[0]) {
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: header entry with an empty name", o);
            goto done;
        }
        if (strcmp(item->string, "__metadata__") == 0) {
            if (self->meta || self->n_meta) {
                rc = medfl_error_set(MEDFL_EFORMAT, "%s: '__metadata__' appears twice", o);
                goto done;
            }
            if ((rc = s_parse_meta(self, item)) < 0) goto done;
            continue;
        }
        st_tensor_t *t = &self->tensors[self->count];
        if ((rc = s_parse_tensor(self, item, t)) < 0) goto done;
        if (!(t->name = strdup(item->string))) {
            rc = medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", o);
            goto done;
        }
        order[self->count] = t;
        self->count++;
    }
    /* Duplicate names: cJSON keeps both, so a lookup would silently pick the first. */
    qsort(order, self->count, sizeof *order, s_cmp_name);
    for (size_t i = 1; i < self->count; i++)
        if (strcmp(order[i]->name, order[i - 1]->name) == 0) {
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' appears twice", o, order[i]->name);
            goto done;
        }
    /* Byte ranges must tile the buffer: sorted, each starting where the previous ended. */
    qsort(order, self->count, sizeof *order, s_cmp_begin);
    size_t at = 0;
    for (size_t i = 0; i < self->count; i++) {
        if (order[i]->begin < at) {
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' data_offsets [%zu, %zu] overlap "
                                                "'%s'", o, order[i]->name, order[i]->begin,
                                 order[i]->end, order[i - 1]->name);
            goto done;
        }
        if (order[i]->begin > at) {
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: hole in the data buffer before tensor '%s' "
                                                "(bytes %zu..%zu unused)", o, order[i]->name, at,
                                 order[i]->begin);
            goto done;
        }
        at = order[i]->end;
    }
    if (at != self->data_len)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: data buffer is %zu bytes but tensors cover %zu",
                             o, self->data_len, at);
done:
    free(order);
    cJSON_Delete(root);
    return rc;
}

safetensors_t *safetensors_parse(const uint8_t *buf, size_t len, const char *origin)
{
    safetensors_t *self = calloc(1, sizeof *self);
    if (!self || !(self->origin = strdup(origin ? origin : "safetensors"))) {
        free(self);
        medfl_error_set(MEDFL_ENOMEM, "safetensors: out of memory");
        return NULL;
    }
    if (s_parse(self, buf, len) < 0) safetensors_destroy(&self);
    return self;
}

safetensors_t *safetensors_open(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s",
                        path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        medfl_error_set(MEDFL_EIO, "%s: not a regular file", path);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            medfl_error_set(MEDFL_EIO, "%s: mmap failed: %s", path, strerror(errno));
            return NULL;
        }
    }
    close(fd);
    static const uint8_t empty[1];
    safetensors_t *self = safetensors_parse(map ? map : empty, len, path);
    if (!self) {
        if (map) munmap(map, len);
        return NULL;
    }
    self->map = map;
    self->map_len = len;
    return self;
}

size_t safetensors_count(const safetensors_t *self) { return self->count; }

const st_tensor_t *safetensors_at(const safetensors_t *self, size_t i)
{
    return i < self->count ? &self->tensors[i] : NULL;
}

const st_tensor_t *safetensors_find(const safetensors_t *self, const char *name)
{
    for (size_t i = 0; i < self->count; i++)
        if (strcmp(self->tensors[i].name, name) == 0) return &self->tensors[i];
    return NULL;
}

const char *safetensors_metadata(const safetensors_t *self, const char *key)
{
    for (size_t i = 0; i < self->n_meta; i++)
        if (strcmp(self->meta[2 * i], key) == 0) return self->meta[2 * i + 1];
    return NULL;
}

static float s_half(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int safetensors_read_f32(const safetensors_t *self, const st_tensor_t *t, float *dst)
{
    const uint8_t *p = self->data + t->begin;
    size_t n = (t->end - t->begin) / t->dtype_size;
    if (strcmp(t->dtype, "F32") == 0) {
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                         (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&dst[i], &v, 4);
        }
    } else if (strcmp(t->dtype, "F16") == 0) {
        for (size_t i = 0; i < n; i++) dst[i] = s_half((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
    } else if (strcmp(t->dtype, "BF16") == 0) {
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &v, 4);
        }
    } else {
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: tensor '%s': dtype %s is not supported "
                                                   "for weights (F32, F16 or BF16)", self->origin,
                               t->name, t->dtype);
    }
    return 0;
}

int safetensors_write_f32(const char *path, const named_tensor_t *tensors, size_t count,
                          const char *const *meta_kv, size_t n_meta)
{
    cJSON *root = cJSON_CreateObject();
    char *json = NULL;
    uint8_t *header = NULL;
    atomic_file_t *f = NULL;
    int rc = -1;
    if (!root) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    if (n_meta) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (size_t i = 0; m && i < n_meta; i++)
            cJSON_AddStringToObject(m, meta_kv[2 * i], meta_kv[2 * i + 1]);
    }
    size_t off = 0;
    for (size_t i = 0; i < count; i++) {
        const named_tensor_t *t = &tensors[i];
        size_t numel = named_tensor_numel(t);
        if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0 ||
            t->ndim > NT_MAX_DIMS || (numel == 0 && t->ndim > 0 && t->shape[0] != 0)) {
            medfl_error_set(MEDFL_EINVAL, "%s: tensor %zu has no valid name or shape", path, i);
            goto done;
        }
        if (cJSON_GetObjectItemCaseSensitive(root, t->name)) {
            medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' given twice", path, t->name);
            goto done;
        }
        cJSON *e = cJSON_AddObjectToObject(root, t->name);
        cJSON *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
        if (!e || !shape || !offs) {
            cJSON_Delete(shape);
            cJSON_Delete(offs);
            medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        cJSON_AddStringToObject(e, "dtype", "F32");
        for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddItemToObject(e, "shape", shape);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + 4 * numel)));
        cJSON_AddItemToObject(e, "data_offsets", offs);
        off += 4 * numel;
    }
    if (!(json = cJSON_PrintUnformatted(root))) {
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    size_t jlen = strlen(json), hlen = (jlen + 7) / 8 * 8;
    if (!(header = malloc(8 + hlen))) {
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < 8; i++) header[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(header + 8, json, jlen);
    memset(header + 8 + jlen, ' ', hlen - jlen);
    if (!(f = atomic_file_new(path, 0644))) goto done;
    if (atomic_file_write(f, header, 8 + hlen) < 0) goto done;
    for (size_t i = 0; i < count; i++) {
        size_t numel = named_tensor_numel(&tensors[i]);
        /* Little-endian float32, which is the host order on every supported target. */
        if (numel && atomic_file_write(f, tensors[i].data, 4 * numel) < 0) goto done;
    }
    rc = atomic_file_commit(&f);
done:
    atomic_file_destroy(&f);
    free(header);
    free(json);
    cJSON_Delete(root);
    return rc;
}
