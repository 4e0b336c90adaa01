/* Base model HDF5 file (see base_file.h). The canonical tensor list lives here, in one place,
 * so the importer, the file checks and the model loader agree on names and shapes. */
#include "node/engine/base_file.h"

#include <math.h>
#include <stdarg.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/h5io.h"

struct base_file_t {
    h5io_t *h5;
    base_config_t cfg;
    char hash[BASE_HASH_HEX];
    char model_name[256];
};

int base_config_validate(const base_config_t *c, const char *o)
{
    struct {
        const char *name;
        int64_t v, max;
    } ints[] = {
        {"hidden_size", c->hidden_size, 1 << 16},
        {"num_hidden_layers", c->num_hidden_layers, 1024},
        {"num_attention_heads", c->num_attention_heads, 1024},
        {"intermediate_size", c->intermediate_size, 1 << 18},
        {"vocab_size", c->vocab_size, 1 << 24},
        {"max_position_embeddings", c->max_position_embeddings, 1 << 20},
        {"type_vocab_size", c->type_vocab_size, 1 << 10},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i].v < 1 || ints[i].v > ints[i].max)
            return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s': %lld out of range [1, %lld]",
                                   o, ints[i].name, (long long)ints[i].v, (long long)ints[i].max);
    if (c->hidden_size % c->num_attention_heads)
        return medfl_error_set(MEDFL_EFORMAT, "%s: field 'hidden_size' %lld is not a multiple of "
                                              "num_attention_heads %lld", o,
                               (long long)c->hidden_size, (long long)c->num_attention_heads);
    if (c->pad_token_id < 0 || c->pad_token_id >= c->vocab_size)
        return medfl_error_set(MEDFL_EFORMAT, "%s: field 'pad_token_id' %lld outside the "
                                              "vocabulary", o, (long long)c->pad_token_id);
    if (!(c->layer_norm_eps > 0 && c->layer_norm_eps < 1))
        return medfl_error_set(MEDFL_EFORMAT, "%s: field 'layer_norm_eps' %g out of range", o,
                               c->layer_norm_eps);
    if (strcmp(c->model_type, "bert") != 0)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: field 'model_type': '%s' is not "
                                                   "supported (only bert)", o, c->model_type);
    if (strcmp(c->hidden_act, "gelu") != 0)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: field 'hidden_act': '%s' is not "
                                                   "supported (only gelu)", o, c->hidden_act);
    return 0;
}

static void s_spec(base_tensor_spec_t *s, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_spec(base_tensor_spec_t *s, int64_t d0, int64_t d1, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = d1 ? 2 : 1;
    s->shape[0] = d0;
    s->shape[1] = d1;
}

int base_tensor_specs(const base_config_t *c, base_tensor_spec_t **specs, size_t *count)
{
    int64_t H = c->hidden_size, I = c->intermediate_size;
    size_t n = 5 + 16 * (size_t)c->num_hidden_layers, k = 0;
    base_tensor_spec_t *s = calloc(n, sizeof *s);
    if (!s) return medfl_error_set(MEDFL_ENOMEM, "out of memory for %zu tensor specs", n);
    s_spec(&s[k++], c->vocab_size, H, "embeddings.word_embeddings.weight");
    s_spec(&s[k++], c->max_position_embeddings, H, "embeddings.position_embeddings.weight");
    s_spec(&s[k++], c->type_vocab_size, H, "embeddings.token_type_embeddings.weight");
    s_spec(&s[k++], H, 0, "embeddings.LayerNorm.weight");
    s_spec(&s[k++], H, 0, "embeddings.LayerNorm.bias");
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const char *p = "encoder.layer";
        long long L = (long long)l;
        s_spec(&s[k++], H, H, "%s.%lld.attention.self.query.weight", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.attention.self.query.bias", p, L);
        s_spec(&s[k++], H, H, "%s.%lld.attention.self.key.weight", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.attention.self.key.bias", p, L);
        s_spec(&s[k++], H, H, "%s.%lld.attention.self.value.weight", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.attention.self.value.bias", p, L);
        s_spec(&s[k++], H, H, "%s.%lld.attention.output.dense.weight", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.attention.output.dense.bias", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.attention.output.LayerNorm.weight", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.attention.output.LayerNorm.bias", p, L);
        s_spec(&s[k++], I, H, "%s.%lld.intermediate.dense.weight", p, L);
        s_spec(&s[k++], I, 0, "%s.%lld.intermediate.dense.bias", p, L);
        s_spec(&s[k++], H, I, "%s.%lld.output.dense.weight", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.output.dense.bias", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.output.LayerNorm.weight", p, L);
        s_spec(&s[k++], H, 0, "%s.%lld.output.LayerNorm.bias", p, L);
    }
    *specs = s;
    *count = k;
    return 0;
}

static size_t s_spec_numel(const base_tensor_spec_t *s)
{
    return (size_t)s->shape[0] * (s->ndim == 2 ? (size_t)s->shape[1] : 1);
}

/* Hash input per tensor: name, NUL, ndim and dims as little-endian int64, float32 data. */
static void s_hash_tensor(crypto_generichash_state *st, const base_tensor_spec_t *s,
                          const float *data)
{
    crypto_generichash_update(st, (const unsigned char *)s->name, strlen(s->name) + 1);
    int64_t dims[3] = {s->ndim, s->shape[0], s->ndim == 2 ? s->shape[1] : 0};
    crypto_generichash_update(st, (const unsigned char *)dims, sizeof dims);
    crypto_generichash_update(st, (const unsigned char *)data, 4 * s_spec_numel(s));
}

static void s_hash_final(crypto_generichash_state *st, char hex[BASE_HASH_HEX])
{
    unsigned char h[32];
    crypto_generichash_final(st, h, sizeof h);
    sodium_bin2hex(hex, BASE_HASH_HEX, h, sizeof h);
}

static const named_tensor_t *s_find(const named_tensor_t *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].name && strcmp(t[i].name, name) == 0) return &t[i];
    return NULL;
}

int base_file_write(const char *path, const base_config_t *cfg, const char *const *vocab,
                    size_t n_vocab, const named_tensor_t *tensors, size_t n_tensors,
                    const char *source, const char *model_name)
{
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "libsodium init failed");
    if (base_config_validate(cfg, path) < 0) return -1;
    if ((int64_t)n_vocab != cfg->vocab_size)
        return medfl_error_set(MEDFL_EFORMAT, "%s: vocabulary has %zu tokens, config says "
                                              "vocab_size %lld", path, n_vocab,
                               (long long)cfg->vocab_size);
    base_tensor_spec_t *specs;
    size_t n_specs;
    if (base_tensor_specs(cfg, &specs, &n_specs) < 0) return -1;
    int rc = 0;
    h5io_t *h = NULL;
    if (n_tensors != n_specs) {
        rc = medfl_error_set(MEDFL_EINVAL, "%s: %zu tensors given, the config needs %zu", path,
                             n_tensors, n_specs);
        goto done;
    }
    if (!(h = h5io_create(path))) {
        rc = -1;
        goto done;
    }
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    for (size_t i = 0; i < n_specs && rc == 0; i++) {
        const named_tensor_t *t = s_find(tensors, n_tensors, specs[i].name);
        bool ok = t && t->ndim == specs[i].ndim && t->shape[0] == specs[i].shape[0] &&
                  (t->ndim == 1 || t->shape[1] == specs[i].shape[1]);
        if (!ok) {
            rc = medfl_error_set(MEDFL_EINVAL, "%s: tensor '%s' missing or of the wrong shape",
                                 path, specs[i].name);
            break;
        }
        char dset[160];
        snprintf(dset, sizeof dset, "/weights/%s", specs[i].name);
        rc = h5io_write_f32(h, dset, t->ndim, t->shape, t->data);
        s_hash_tensor(&st, &specs[i], t->data);
    }
    char hex[BASE_HASH_HEX];
    s_hash_final(&st, hex);
    if (rc == 0)
        rc = h5io_set_attr_str(h, "/", "format", BASE_FILE_FORMAT) |
             h5io_set_attr_i64(h, "/", "format_version", BASE_FILE_VERSION) |
             h5io_set_attr_str(h, "/", "weights_hash", hex) |
             h5io_set_attr_str(h, "/", "source", source ? source : "") |
             h5io_set_attr_str(h, "/", "model_name", model_name ? model_name : "") |
             h5io_set_attr_str(h, "/config", "model_type", cfg->model_type) |
             h5io_set_attr_str(h, "/config", "hidden_act", cfg->hidden_act) |
             h5io_set_attr_i64(h, "/config", "hidden_size", cfg->hidden_size) |
             h5io_set_attr_i64(h, "/config", "num_hidden_layers", cfg->num_hidden_layers) |
             h5io_set_attr_i64(h, "/config", "num_attention_heads", cfg->num_attention_heads) |
             h5io_set_attr_i64(h, "/config", "intermediate_size", cfg->intermediate_size) |
             h5io_set_attr_i64(h, "/config", "vocab_size", cfg->vocab_size) |
             h5io_set_attr_i64(h, "/config", "max_position_embeddings",
                               cfg->max_position_embeddings) |
             h5io_set_attr_i64(h, "/config", "type_vocab_size", cfg->type_vocab_size) |
             h5io_set_attr_i64(h, "/config", "pad_token_id", cfg->pad_token_id) |
             h5io_set_attr_f64(h, "/config", "layer_norm_eps", cfg->layer_norm_eps) |
             h5io_set_attr_i64(h, "/config", "do_lower_case", cfg->do_lower_case) |
             h5io_write_strings(h, "/vocab", vocab, n_vocab);
    if (rc == 0) rc = h5io_commit(&h);
done:
    h5io_destroy(&h);
    free(specs);
    return rc < 0 ? -1 : 0;
}

void base_file_destroy(base_file_t **self_p)
{
    if (!self_p || !*self_p) return;
    h5io_destroy(&(*self_p)->h5);
    free(*self_p);
    *self_p = NULL;
}

static int s_attr_copy(h5io_t *h, const char *name, char *dst, size_t size)
{
    char *s;
    if (h5io_get_attr_str(h, "/config", name, &s) < 0) return -1;
    snprintf(dst, size, "%s", s);
    free(s);
    return 0;
}

base_file_t *base_file_open(const char *path)
{
    base_file_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    if (!(self->h5 = h5io_open(path))) goto fail;
    h5io_t *h = self->h5;
    char *fmt = NULL;
    int64_t version, lower;
    if (h5io_get_attr_str(h, "/", "format", &fmt) < 0) goto fail;
    bool ok = strcmp(fmt, BASE_FILE_FORMAT) == 0;
    if (!ok) medfl_error_set(MEDFL_EFORMAT, "%s: format '%s' is not a medfl base model", path, fmt);
    free(fmt);
    if (!ok) goto fail;
    if (h5io_get_attr_i64(h, "/", "format_version", &version) < 0) goto fail;
    if (version != BASE_FILE_VERSION) {
        medfl_error_set(MEDFL_EUNSUPPORTED, "%s: base model format_version %lld (this medfl "
                                            "reads %d)", path, (long long)version, BASE_FILE_VERSION);
        goto fail;
    }
    char *hash;
    if (h5io_get_attr_str(h, "/", "weights_hash", &hash) < 0) goto fail;
    snprintf(self->hash, sizeof self->hash, "%s", hash);
    free(hash);
    /* Files imported before model_name existed have none: "" (exports fall back to a path). */
    char *name = NULL;
    if (h5io_has_attr(h, "/", "model_name") && h5io_get_attr_str(h, "/", "model_name", &name) < 0)
        goto fail;
    snprintf(self->model_name, sizeof self->model_name, "%s", name ? name : "");
    free(name);
    base_config_t *c = &self->cfg;
    if (s_attr_copy(h, "model_type", c->model_type, sizeof c->model_type) < 0 ||
        s_attr_copy(h, "hidden_act", c->hidden_act, sizeof c->hidden_act) < 0 ||
        h5io_get_attr_i64(h, "/config", "hidden_size", &c->hidden_size) < 0 ||
        h5io_get_attr_i64(h, "/config", "num_hidden_layers", &c->num_hidden_layers) < 0 ||
        h5io_get_attr_i64(h, "/config", "num_attention_heads", &c->num_attention_heads) < 0 ||
        h5io_get_attr_i64(h, "/config", "intermediate_size", &c->intermediate_size) < 0 ||
        h5io_get_attr_i64(h, "/config", "vocab_size", &c->vocab_size) < 0 ||
        h5io_get_attr_i64(h, "/config", "max_position_embeddings", &c->max_position_embeddings) < 0 ||
        h5io_get_attr_i64(h, "/config", "type_vocab_size", &c->type_vocab_size) < 0 ||
        h5io_get_attr_i64(h, "/config", "pad_token_id", &c->pad_token_id) < 0 ||
        h5io_get_attr_f64(h, "/config", "layer_norm_eps", &c->layer_norm_eps) < 0 ||
        h5io_get_attr_i64(h, "/config", "do_lower_case", &lower) < 0)
        goto fail;
    c->do_lower_case = lower != 0;
    if (base_config_validate(c, path) < 0) goto fail;
    return self;
fail:
    base_file_destroy(&self);
    return NULL;
}

const base_config_t *base_file_config(const base_file_t *self) { return &self->cfg; }
const char *base_file_model_name(const base_file_t *self)
{
    return self->model_name;
}

const char *base_file_hash(const base_file_t *self) { return self->hash; }

int base_file_read_config(const char *path, base_config_t *cfg)
{
    base_file_t *bf = base_file_open(path);
    if (!bf) return -1;
    *cfg = bf->cfg;
    base_file_destroy(&bf);
    return 0;
}

int base_file_read_tensor(base_file_t *self, const char *name, float *dst, int ndim,
                          const int64_t *shape)
{
    char dset[160];
    snprintf(dset, sizeof dset, "/weights/%s", name);
    return h5io_read_f32_into(self->h5, dset, ndim, shape, dst);
}

int base_file_foreach_tensor(base_file_t *self,
                             int (*fn)(void *ctx, const named_tensor_t *tensor), void *ctx)
{
    base_tensor_spec_t *specs;
    size_t n;
    if (base_tensor_specs(&self->cfg, &specs, &n) < 0) return -1;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        named_tensor_t t = {.name = specs[i].name, .ndim = specs[i].ndim,
                            .shape = {specs[i].shape[0], specs[i].shape[1]}};
        if (!(t.data = malloc(4 * s_spec_numel(&specs[i])))) {
            rc = medfl_error_set(MEDFL_ENOMEM, "out of memory for tensor '%s'", t.name);
            break;
        }
        rc = base_file_read_tensor(self, t.name, t.data, t.ndim, t.shape);
        if (rc == 0) rc = fn(ctx, &t);
        free(t.data);
    }
    free(specs);
    return rc;
}

typedef struct {
    crypto_generichash_state st;
    const base_tensor_spec_t *specs;
    size_t i;
} s_verify_t;

static int s_verify_cb(void *ctx, const named_tensor_t *t)
{
    s_verify_t *v = ctx;
    s_hash_tensor(&v->st, &v->specs[v->i++], t->data);
    return 0;
}

int base_file_verify(base_file_t *self)
{
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "libsodium init failed");
    s_verify_t v = {0};
    size_t n;
    base_tensor_spec_t *specs;
    if (base_tensor_specs(&self->cfg, &specs, &n) < 0) return -1;
    v.specs = specs;
    crypto_generichash_init(&v.st, NULL, 0, 32);
    int rc = base_file_foreach_tensor(self, s_verify_cb, &v);
    free(specs);
    if (rc != 0) return -1;
    char hex[BASE_HASH_HEX];
    s_hash_final(&v.st, hex);
    if (sodium_memcmp(hex, self->hash, BASE_HASH_HEX - 1) != 0)
        return medfl_error_set(MEDFL_EFORMAT, "%s: weights do not match the stored weights_hash "
                                              "(file corrupted or modified)", h5io_path(self->h5));
    return 0;
}

tokenizer_t *base_file_tokenizer(base_file_t *self)
{
    char **vocab;
    size_t n;
    if (h5io_read_strings(self->h5, "/vocab", &vocab, &n) < 0) return NULL;
    tokenizer_t *tok = NULL;
    if ((int64_t)n != self->cfg.vocab_size)
        medfl_error_set(MEDFL_EFORMAT, "%s: /vocab has %zu tokens, vocab_size is %lld",
                        h5io_path(self->h5), n, (long long)self->cfg.vocab_size);
    else
        tok = tokenizer_new_from_list((const char *const *)vocab, n, self->cfg.do_lower_case);
    h5io_strings_free(&vocab, n);
    return tok;
}
