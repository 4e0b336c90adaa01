/* Model <-> files glue (see model_io.h). Adapters are matched to the model by tensor name,
 * never by position, so a file written by another build or node with a different internal
 * ordering still loads into the right slots or fails naming the tensor. */
#include "node/engine/model_io.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/family.h"


void model_config_from_base(model_config_t *cfg, const base_config_t *b)
{
    cfg->vocab_size = (int)b->vocab_size;
    cfg->hidden = (int)b->hidden_size;
    cfg->layers = (int)b->num_hidden_layers;
    cfg->heads = (int)b->num_attention_heads;
    cfg->ffn = (int)b->intermediate_size;
    cfg->max_position = (int)b->max_position_embeddings;
    cfg->type_vocab = (int)b->type_vocab_size;
    cfg->layer_norm_eps = (float)b->layer_norm_eps;
}

static int s_load_one(void *ctx, const named_tensor_t *t)
{
    return model_base_set(ctx, t->name, t->data, named_tensor_numel(t));
}

int model_load_base(model_t *m, base_file_t *bf)
{
    const model_config_t *c = model_config(m);
    const base_config_t *b = base_file_config(bf);
    if (c->hidden != b->hidden_size || c->layers != b->num_hidden_layers ||
        c->vocab_size != b->vocab_size || c->ffn != b->intermediate_size ||
        c->heads != b->num_attention_heads || c->max_position != b->max_position_embeddings ||
        c->type_vocab != b->type_vocab_size)
        return medfl_error_set(MEDFL_EINVAL, "base model sizes differ from the model config "
                                             "(use model_config_from_base)");
    return base_file_foreach_tensor(bf, s_load_one, m) == 0 ? 0 : -1;
}

size_t model_targets_names(unsigned targets, const char *names[MODEL_N_TARGETS])
{
    return family_targets_names(family_bert(), targets, names);
}

int model_save_adapter(const model_t *m, const char *path, const char *const *labels,
                       size_t n_labels, const char *base_hash, const char *base_name)
{
    const model_config_t *c = model_config(m);
    if ((int)n_labels != c->num_labels)
        return medfl_error_set(MEDFL_EINVAL, "%s: %zu labels for a head of %d classes", path,
                               n_labels, c->num_labels);
    size_t n = model_trainable_count(m), total = model_trainable_numel(m);
    float *flat = malloc(total * sizeof *flat);
    named_tensor_t *ts = calloc(n, sizeof *ts);
    int rc = -1;
    if (!flat || !ts) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    if (model_trainable_get(m, flat, total) < 0) goto done;
    for (size_t i = 0; i < n; i++) {
        const model_tensor_t *t = model_trainable_tensor(m, i);
        ts[i].name = (char *)t->name;
        ts[i].ndim = t->ndim;
        ts[i].shape[0] = t->shape[0];
        ts[i].shape[1] = t->ndim > 1 ? t->shape[1] : 0;
        ts[i].data = flat + t->offset;
    }
    const char *targets[MODEL_N_TARGETS];
    adapter_t a = {.r = c->lora_r, .alpha = c->lora_alpha, .tensors = ts, .n_tensors = n,
                   .labels = (char **)labels, .n_labels = n_labels,
                   .targets = (char **)targets};
    a.n_targets = model_targets_names(c->lora_targets, targets);
    snprintf(a.pooling, sizeof a.pooling, "%s", c->pooling == POOL_CLS ? "cls" : "mean");
    snprintf(a.base_hash, sizeof a.base_hash, "%s", base_hash ? base_hash : "");
    snprintf(a.base_model_name, sizeof a.base_model_name, "%s", base_name ? base_name : "");
    rc = adapter_write(path, &a);
done:
    free(ts);
    free(flat);
    return rc;
}

int model_load_adapter(model_t *m, const char *path, const char *base_hash)
{
    const model_config_t *c = model_config(m);
    adapter_t a;
    if (adapter_read(path, &a) < 0) return -1;
    size_t total = model_trainable_numel(m), n = model_trainable_count(m);
    float *flat = NULL;
    int rc = -1;
    unsigned targets = 0;
    char want[64] = "none"; /* a head-only adapter lists no targets */
    if (a.n_targets > 0) want[0] = '\0';
    for (size_t i = 0; i < a.n_targets; i++) {
        size_t len = strlen(want);
        snprintf(want + len, sizeof want - len, "%s%s", i ? "," : "", a.targets[i]);
    }
    if (model_lora_targets_parse(want, &targets) < 0 || targets != c->lora_targets) {
        medfl_error_set(MEDFL_EFORMAT, "%s: LoRA targets '%s' differ from the model's", path, want);
        goto done;
    }
    if (a.r != c->lora_r || fabs(a.alpha - c->lora_alpha) > 1e-6 * c->lora_alpha) {
        medfl_error_set(MEDFL_EFORMAT, "%s: r %lld / alpha %g differ from the model's %d / %g",
                        path, (long long)a.r, a.alpha, c->lora_r, (double)c->lora_alpha);
        goto done;
    }
    if (strcmp(a.pooling, c->pooling == POOL_CLS ? "cls" : "mean") != 0 ||
        (int)a.n_labels != c->num_labels) {
        medfl_error_set(MEDFL_EFORMAT, "%s: head (%s pooling, %zu labels) differs from the "
                                       "model's (%d labels)", path, a.pooling, a.n_labels,
                        c->num_labels);
        goto done;
    }
    if (base_hash && base_hash[0] && a.base_hash[0] && strcmp(base_hash, a.base_hash) != 0) {
        medfl_error_set(MEDFL_EFORMAT, "%s: adapter was trained on base model %.16s..., this "
                                       "base is %.16s...", path, a.base_hash, base_hash);
        goto done;
    }
    if (a.n_tensors != n) {
        medfl_error_set(MEDFL_EFORMAT, "%s: %zu tensors, the model has %zu trainable", path,
                        a.n_tensors, n);
        goto done;
    }
    if (!(flat = calloc(total ? total : 1, sizeof *flat))) { /* padding between tensors: 0 */
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const model_tensor_t *t = model_trainable_tensor(m, i);
        const named_tensor_t *f = adapter_find(&a, t->name);
        if (!f || f->ndim != t->ndim || f->shape[0] != t->shape[0] ||
            (t->ndim > 1 && f->shape[1] != t->shape[1])) {
            medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' missing or of another shape", path,
                            t->name);
            goto done;
        }
        memcpy(flat + t->offset, f->data, t->numel * sizeof *flat);
    }
    rc = model_trainable_set(m, flat, total);
done:
    free(flat);
    adapter_free(&a);
    return rc;
}
