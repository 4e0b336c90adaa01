/* Adapter HDF5 files and the PEFT export (see adapter_file.h). Shapes are validated on both
 * write and read so that a file produced by another node or version can never hand the model
 * a tensor of the wrong size. */
#include "common/adapter_file.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/h5io.h"
#include "common/safetensors.h"

#define LORA_PREFIX "base_model.model."

static bool s_ends(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static bool s_is_head(const char *name)
{
    return strcmp(name, "classifier.weight") == 0 || strcmp(name, "classifier.bias") == 0;
}

const named_tensor_t *adapter_find(const adapter_t *a, const char *name)
{
    for (size_t i = 0; i < a->n_tensors; i++)
        if (strcmp(a->tensors[i].name, name) == 0) return &a->tensors[i];
    return NULL;
}

static int s_check_list(const named_tensor_t *ref, const named_tensor_t *t, size_t n,
                        const char *o, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        bool same = t[i].name && strcmp(t[i].name, ref[i].name) == 0 && t[i].ndim == ref[i].ndim &&
                    t[i].data && memcmp(t[i].shape, ref[i].shape, sizeof t[i].shape) == 0;
        if (!same)
            return medfl_error_set(MEDFL_EFORMAT, "%s: optimizer %s of tensor '%s' missing or of "
                                                  "another shape", o, what, ref[i].name);
    }
    return 0;
}

int adapter_validate(const adapter_t *a, const char *o)
{
    if (a->r < 1 || a->r > 4096)
        return medfl_error_set(MEDFL_EFORMAT, "%s: field 'r' %lld out of range [1, 4096]", o,
                               (long long)a->r);
    if (!(a->alpha > 0))
        return medfl_error_set(MEDFL_EFORMAT, "%s: field 'lora_alpha' must be positive", o);
    if (strcmp(a->pooling, "mean") != 0 && strcmp(a->pooling, "cls") != 0)
        return medfl_error_set(MEDFL_EFORMAT, "%s: field 'pooling' '%s' is not mean or cls", o,
                               a->pooling);
    size_t n_lora = 0;
    for (size_t i = 0; i < a->n_tensors; i++) {
        const named_tensor_t *t = &a->tensors[i];
        if (!t->name || !t->name[0] || strchr(t->name, '/') || !t->data)
            return medfl_error_set(MEDFL_EFORMAT, "%s: tensor %zu has no valid name or data", o, i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(a->tensors[j].name, t->name) == 0)
                return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' appears twice", o, t->name);
        bool is_a = s_ends(t->name, ".lora_A.weight"), is_b = s_ends(t->name, ".lora_B.weight");
        if (is_a || is_b) {
            n_lora++;
            if (strncmp(t->name, LORA_PREFIX, strlen(LORA_PREFIX)) != 0)
                return medfl_error_set(MEDFL_EFORMAT, "%s: LoRA tensor '%s' lacks the PEFT prefix "
                                                      "'" LORA_PREFIX "'", o, t->name);
            if (t->ndim != 2 || t->shape[is_a ? 0 : 1] != a->r || t->shape[is_a ? 1 : 0] < 1)
                return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' must be [%s] with r = %lld",
                                       o, t->name, is_a ? "r, in" : "out, r", (long long)a->r);
        } else if (strcmp(t->name, "classifier.weight") == 0) {
            if (t->ndim != 2 || t->shape[0] != (int64_t)a->n_labels || t->shape[1] < 1)
                return medfl_error_set(MEDFL_EFORMAT, "%s: tensor 'classifier.weight' must be "
                                                      "[%zu labels, hidden]", o, a->n_labels);
        } else if (strcmp(t->name, "classifier.bias") == 0) {
            if (t->ndim != 1 || t->shape[0] != (int64_t)a->n_labels)
                return medfl_error_set(MEDFL_EFORMAT, "%s: tensor 'classifier.bias' must be "
                                                      "[%zu labels]", o, a->n_labels);
        } else {
            return medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' is neither LoRA nor head", o,
                                   t->name);
        }
    }
    if (n_lora % 2)
        return medfl_error_set(MEDFL_EFORMAT, "%s: %zu LoRA tensors (need A/B pairs)", o, n_lora);
    if ((n_lora == 0) != (a->n_targets == 0)) /* head-only adapters list no targets */
        return medfl_error_set(MEDFL_EFORMAT, "%s: %zu LoRA tensors but %zu targets listed", o,
                               n_lora, a->n_targets);
    for (size_t i = 0; i < a->n_labels; i++)
        if (!a->labels[i] || !a->labels[i][0])
            return medfl_error_set(MEDFL_EFORMAT, "%s: label %zu is empty", o, i);
    if (a->has_optimizer) {
        if (a->step < 0)
            return medfl_error_set(MEDFL_EFORMAT, "%s: optimizer step %lld negative", o,
                                   (long long)a->step);
        if (!a->m || !a->v)
            return medfl_error_set(MEDFL_EFORMAT, "%s: optimizer state incomplete", o);
        if (s_check_list(a->tensors, a->m, a->n_tensors, o, "m") < 0 ||
            s_check_list(a->tensors, a->v, a->n_tensors, o, "v") < 0)
            return -1;
    }
    return 0;
}

int adapter_write(const char *path, const adapter_t *a)
{
    if (adapter_validate(a, path) < 0) return -1;
    h5io_t *h = h5io_create(path);
    if (!h) return -1;
    int rc = 0;
    rc |= h5io_set_attr_str(h, "/", "format", ADAPTER_FILE_FORMAT);
    rc |= h5io_set_attr_i64(h, "/", "format_version", ADAPTER_FILE_VERSION);
    rc |= h5io_set_attr_i64(h, "/", "r", a->r);
    rc |= h5io_set_attr_f64(h, "/", "lora_alpha", a->alpha);
    rc |= h5io_set_attr_str(h, "/", "pooling", a->pooling);
    rc |= h5io_set_attr_str(h, "/", "base_model_hash", a->base_hash);
    rc |= h5io_set_attr_str(h, "/", "base_model_name", a->base_model_name);
    rc |= h5io_write_strings(h, "/targets", (const char *const *)a->targets, a->n_targets);
    rc |= h5io_write_strings(h, "/labels", (const char *const *)a->labels, a->n_labels);
    char p[600];
    for (size_t i = 0; rc == 0 && i < a->n_tensors; i++) {
        const named_tensor_t *t = &a->tensors[i];
        snprintf(p, sizeof p, "/tensors/%s", t->name);
        rc |= h5io_write_f32(h, p, t->ndim, t->shape, t->data);
        if (a->has_optimizer) {
            snprintf(p, sizeof p, "/optimizer/m/%s", t->name);
            rc |= h5io_write_f32(h, p, t->ndim, t->shape, a->m[i].data);
            snprintf(p, sizeof p, "/optimizer/v/%s", t->name);
            rc |= h5io_write_f32(h, p, t->ndim, t->shape, a->v[i].data);
        }
    }
    if (rc == 0 && a->has_optimizer) rc |= h5io_set_attr_i64(h, "/optimizer", "step", a->step);
    if (rc != 0) {
        h5io_destroy(&h);
        return -1;
    }
    return h5io_commit(&h);
}

void adapter_free(adapter_t *a)
{
    if (!a) return;
    h5io_strings_free(&a->targets, a->n_targets);
    h5io_strings_free(&a->labels, a->n_labels);
    named_tensor_list_free(&a->tensors, a->n_tensors);
    named_tensor_list_free(&a->m, a->m ? a->n_tensors : 0);
    named_tensor_list_free(&a->v, a->v ? a->n_tensors : 0);
    memset(a, 0, sizeof *a);
}

static int s_read_group(h5io_t *h, const char *group, char **names, size_t n, named_tensor_t **out)
{
    named_tensor_t *ts = calloc(n ? n : 1, sizeof *ts);
    if (!ts) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    *out = ts;
    char p[600];
    for (size_t i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s/%s", group, names[i]);
        if (!(ts[i].name = strdup(names[i])))
            return medfl_error_set(MEDFL_ENOMEM, "out of memory");
        if (h5io_read_f32(h, p, &ts[i].ndim, ts[i].shape, &ts[i].data) < 0) return -1;
    }
    return 0;
}

static int s_attr_into(h5io_t *h, const char *name, char *dst, size_t size)
{
    char *s;
    if (h5io_get_attr_str(h, "/", name, &s) < 0) return -1;
    int rc = 0;
    if (strlen(s) >= size)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: attribute '%s' too long", h5io_path(h), name);
    else
        snprintf(dst, size, "%s", s);
    free(s);
    return rc;
}

int adapter_read(const char *path, adapter_t *a)
{
    memset(a, 0, sizeof *a);
    h5io_t *h = h5io_open(path);
    if (!h) return -1;
    char fmt[32] = "";
    int64_t version = 0;
    char **names = NULL;
    size_t n = 0;
    int rc = -1;
    if (s_attr_into(h, "format", fmt, sizeof fmt) < 0) goto done;
    if (strcmp(fmt, ADAPTER_FILE_FORMAT) != 0) {
        medfl_error_set(MEDFL_EFORMAT, "%s: format '%s' is not a medfl adapter", path, fmt);
        goto done;
    }
    if (h5io_get_attr_i64(h, "/", "format_version", &version) < 0) goto done;
    if (version != ADAPTER_FILE_VERSION) {
        medfl_error_set(MEDFL_EUNSUPPORTED, "%s: adapter format_version %lld (this medfl reads %d)",
                        path, (long long)version, ADAPTER_FILE_VERSION);
        goto done;
    }
    if (h5io_get_attr_i64(h, "/", "r", &a->r) < 0 ||
        h5io_get_attr_f64(h, "/", "lora_alpha", &a->alpha) < 0 ||
        s_attr_into(h, "pooling", a->pooling, sizeof a->pooling) < 0 ||
        s_attr_into(h, "base_model_hash", a->base_hash, sizeof a->base_hash) < 0 ||
        s_attr_into(h, "base_model_name", a->base_model_name, sizeof a->base_model_name) < 0 ||
        h5io_read_strings(h, "/targets", &a->targets, &a->n_targets) < 0 ||
        h5io_read_strings(h, "/labels", &a->labels, &a->n_labels) < 0 ||
        h5io_list(h, "/tensors", &names, &n) < 0)
        goto done;
    a->n_tensors = n;
    if (s_read_group(h, "/tensors", names, n, &a->tensors) < 0) goto done;
    if (h5io_exists(h, "/optimizer")) {
        a->has_optimizer = true;
        if (h5io_get_attr_i64(h, "/optimizer", "step", &a->step) < 0 ||
            s_read_group(h, "/optimizer/m", names, n, &a->m) < 0 ||
            s_read_group(h, "/optimizer/v", names, n, &a->v) < 0)
            goto done;
    }
    rc = adapter_validate(a, path);
done:
    h5io_strings_free(&names, n);
    h5io_destroy(&h);
    if (rc < 0) adapter_free(a);
    return rc;
}

/* ---------------------------------------------------------------- PEFT */

#define S_ENC LORA_PREFIX "encoder."
#define S_HEAD "classifier."

int adapter_peft_name(const char *name, const char *prefix, char *out, size_t size)
{
    int n;
    if (strncmp(name, S_ENC, strlen(S_ENC)) == 0)
        n = prefix && *prefix
                ? snprintf(out, size, LORA_PREFIX "%s.encoder.%s", prefix, name + strlen(S_ENC))
                : snprintf(out, size, "%s", name);
    else if (strncmp(name, S_HEAD, strlen(S_HEAD)) == 0)
        n = snprintf(out, size, LORA_PREFIX "%s", name);
    else
        return medfl_error_set(MEDFL_EINVAL, "tensor '%s': not a LoRA encoder or classifier tensor", name);
    if (n < 0 || (size_t)n >= size) return medfl_error_set(MEDFL_EINVAL, "tensor '%s': name too long", name);
    return 0;
}

int adapter_medfl_name(const char *peft_name, const char *prefix, char *out, size_t size)
{
    char enc[160];
    if (prefix && *prefix) snprintf(enc, sizeof enc, LORA_PREFIX "%s.encoder.", prefix);
    else snprintf(enc, sizeof enc, "%s", S_ENC);
    int n;
    if (strncmp(peft_name, enc, strlen(enc)) == 0)
        n = snprintf(out, size, S_ENC "%s", peft_name + strlen(enc));
    else if (strncmp(peft_name, LORA_PREFIX S_HEAD, strlen(LORA_PREFIX S_HEAD)) == 0)
        n = snprintf(out, size, "%s", peft_name + strlen(LORA_PREFIX));
    else
        return medfl_error_set(MEDFL_EINVAL,
                               "tensor '%s': expected a name starting with '%s' or '" LORA_PREFIX S_HEAD "'",
                               peft_name, enc);
    if (n < 0 || (size_t)n >= size) return medfl_error_set(MEDFL_EINVAL, "tensor '%s': name too long", peft_name);
    return 0;
}

bool adapter_lora_parts(const char *name, int *layer, char *module, size_t size, char *which)
{
    const char *p = S_ENC "layer.";
    if (strncmp(name, p, strlen(p)) != 0) return false;
    const char *s = name + strlen(p);
    char *end;
    long l = strtol(s, &end, 10);
    if (end == s || *end != '.' || l < 0 || l > 100000) return false;
    const char *mod = end + 1, *tail = strstr(mod, ".lora_");
    if (!tail || (tail[6] != 'A' && tail[6] != 'B') || strcmp(tail + 7, ".weight") != 0) return false;
    size_t ml = (size_t)(tail - mod);
    if (ml == 0 || ml >= size) return false;
    memcpy(module, mod, ml);
    module[ml] = '\0';
    *layer = (int)l;
    *which = tail[6];
    return true;
}

static int s_cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const named_tensor_t *)a)->name, ((const named_tensor_t *)b)->name);
}

/* target_modules: module suffixes when exact, else a regex naming every adapted module (see
 * adapter_file.h). `prefix` is the encoder's attribute ("" for BertModel). force_regex: the
 * head-only export's zero LoRA, whose suffix "attention.self.query" would match every layer. */
static cJSON *s_target_modules(const named_tensor_t *tensors, size_t n, char (*targets)[128],
                               size_t n_targets, int max_layer, const char *prefix,
                               bool force_regex)
{
    bool ambiguous = force_regex;
    for (size_t k = 0; k < n_targets; k++) {
        size_t count = 0;
        for (size_t i = 0; i < n; i++) {
            int layer;
            char mod[128], which;
            if (adapter_lora_parts(tensors[i].name, &layer, mod, sizeof mod, &which) && which == 'A' &&
                strcmp(mod, targets[k]) == 0)
                count++;
        }
        if (count != (size_t)max_layer + 1) ambiguous = true;
        if (strcmp(targets[k], "output.dense") == 0) {
            bool attn = false;
            for (size_t j = 0; j < n_targets; j++) attn |= strcmp(targets[j], "attention.output.dense") == 0;
            if (!attn) ambiguous = true;
        }
    }
    if (!ambiguous) {
        cJSON *tm = cJSON_CreateArray();
        for (size_t k = 0; tm && k < n_targets; k++) cJSON_AddItemToArray(tm, cJSON_CreateString(targets[k]));
        return tm;
    }
    size_t cap = 64;
    for (size_t i = 0; i < n; i++) cap += 2 * (strlen(prefix) + strlen(tensors[i].name)) + 8;
    char *re = calloc(1, cap);
    if (!re) return NULL;
    size_t len = (size_t)snprintf(re, cap, "^(?:");
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        int layer;
        char mod[128], which;
        if (!adapter_lora_parts(tensors[i].name, &layer, mod, sizeof mod, &which) || which != 'A') continue;
        char full[512];
        snprintf(full, sizeof full, "%s%sencoder.layer.%d.%s", prefix, *prefix ? "." : "", layer, mod);
        if (!first) re[len++] = '|';
        first = false;
        for (const char *c = full; *c && len + 3 < cap; c++) {
            if (*c == '.') re[len++] = '\\';
            re[len++] = *c;
        }
    }
    snprintf(re + len, cap - len, ")$");
    cJSON *tm = cJSON_CreateString(re);
    free(re);
    return tm;
}

static int s_peft_write(const char *dir, const named_tensor_t *tensors, size_t n,
                        const adapter_peft_opts_t *o, bool zero_lora);

/* PEFT's LoRA refuses a config that adapts no module, so a head-only adapter (model.lora.
 * targets = none, what DP training at hospital scale uses) is exported with one rank-1 LoRA
 * on layer 0's query whose A and B are zero: an exact no-op PEFT can load, beside the
 * classifier (a module to save for SEQ_CLS, medfl_head.* for FEATURE_EXTRACTION). */
int adapter_peft_write(const char *dir, const named_tensor_t *tensors, size_t n,
                       const adapter_peft_opts_t *o)
{
    const named_tensor_t *head_w = NULL;
    bool lora = false;
    for (size_t i = 0; i < n; i++) {
        int layer;
        char mod[128], which;
        lora |= adapter_lora_parts(tensors[i].name, &layer, mod, sizeof mod, &which);
        if (strcmp(tensors[i].name, S_HEAD "weight") == 0) head_w = &tensors[i];
    }
    if (lora || !head_w || head_w->ndim != 2) return s_peft_write(dir, tensors, n, o, false);
    const size_t hidden = (size_t)head_w->shape[1];
    named_tensor_t *list = calloc(n + 2, sizeof *list);
    float *zeros = calloc(hidden ? hidden : 1, sizeof *zeros);
    if (!list || !zeros) {
        free(list);
        free(zeros);
        return medfl_error_set(MEDFL_ENOMEM, "%s: PEFT export: out of memory", dir);
    }
    memcpy(list, tensors, n * sizeof *list);
    named_tensor_t *a = &list[n], *b = &list[n + 1];
    a->name = (char *)S_ENC "layer.0.attention.self.query.lora_A.weight";
    a->ndim = 2;
    a->shape[0] = 1;
    a->shape[1] = (int64_t)hidden;
    a->data = zeros;
    b->name = (char *)S_ENC "layer.0.attention.self.query.lora_B.weight";
    b->ndim = 2;
    b->shape[0] = (int64_t)hidden;
    b->shape[1] = 1;
    b->data = zeros;
    int rc = s_peft_write(dir, list, n + 2, o, true);
    free(list);
    free(zeros);
    return rc;
}

static int s_peft_write(const char *dir, const named_tensor_t *tensors, size_t n,
                        const adapter_peft_opts_t *o, bool zero_lora)
{
    const bool seq = o->task == ADAPTER_PEFT_SEQ_CLS;
    const char *prefix = !seq ? "" : o->prefix ? o->prefix : "bert";
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return medfl_error_set(MEDFL_EIO, "%s: cannot create folder: %s", dir, strerror(errno));
    named_tensor_t *list = calloc(n ? n : 1, sizeof *list);
    char (*targets)[128] = calloc(n ? n : 1, sizeof *targets);
    size_t n_list = 0, n_targets = 0;
    long r = -1;
    int max_layer = -1;
    bool head = false;
    int rc = -1;
    cJSON *cfg = NULL;
    char *json = NULL;
    if (!list || !targets) goto oom;
    for (size_t i = 0; i < n; i++) {
        const named_tensor_t *t = &tensors[i];
        int layer;
        char mod[128], which;
        if (strncmp(t->name, S_HEAD, strlen(S_HEAD)) == 0) {
            if (!seq || !o->include_head) continue;
            head = true;
        } else if (adapter_lora_parts(t->name, &layer, mod, sizeof mod, &which)) {
            long rank = which == 'A' ? (long)t->shape[0] : (long)t->shape[t->ndim - 1];
            if (t->ndim != 2 || (r >= 0 && rank != r)) {
                medfl_error_set(MEDFL_EUNSUPPORTED,
                                "%s: tensor '%s' has rank %ld, others %ld (one rank per adapter)",
                                dir, t->name, rank, r);
                goto done;
            }
            r = rank;
            if (layer > max_layer) max_layer = layer;
            size_t k = 0;
            while (k < n_targets && strcmp(targets[k], mod) != 0) k++;
            if (k == n_targets) snprintf(targets[n_targets++], 128, "%s", mod);
        } else {
            medfl_error_set(MEDFL_EUNSUPPORTED,
                            "%s: tensor '%s' is neither the head nor LoRA (not on a BERT layer module)",
                            dir, t->name);
            goto done;
        }
        char peft[1024];
        if (adapter_peft_name(t->name, prefix, peft, sizeof peft) < 0) goto done;
        named_tensor_t *nt = &list[n_list++];
        if (!(nt->name = strdup(peft))) goto oom;
        nt->ndim = t->ndim;
        memcpy(nt->shape, t->shape, sizeof nt->shape);
        nt->data = t->data;
    }
    if (r < 0) {
        medfl_error_set(MEDFL_EINVAL, "%s: no LoRA tensors to export (a head-only adapter, "
                        "model.lora.targets = none, has nothing a PEFT LoRA config can hold)", dir);
        goto done;
    }
    /* Sorted by name, as PEFT's own save_file writes the header. */
    qsort(list, n_list, sizeof *list, s_cmp_tensor_name);
    const char *meta[] = {"format", "pt"};
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (safetensors_write_f32(path, list, n_list, meta, 1) < 0) goto done;

    /* Keys as PEFT's LoraConfig.save_pretrained writes them (sorted). */
    cJSON *tm = s_target_modules(tensors, n, targets, n_targets, max_layer, prefix, zero_lora);
    if (!tm || !(cfg = cJSON_CreateObject())) {
        cJSON_Delete(tm);
        goto oom;
    }
    cJSON_AddItemToObject(cfg, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddItemToObject(cfg, "auto_mapping", cJSON_CreateNull());
    if (o->base_model) cJSON_AddStringToObject(cfg, "base_model_name_or_path", o->base_model);
    else cJSON_AddNullToObject(cfg, "base_model_name_or_path");
    cJSON_AddStringToObject(cfg, "bias", "none");
    cJSON_AddFalseToObject(cfg, "fan_in_fan_out");
    cJSON_AddTrueToObject(cfg, "inference_mode");
    cJSON_AddTrueToObject(cfg, "init_lora_weights");
    cJSON_AddNullToObject(cfg, "layers_pattern");
    cJSON_AddNullToObject(cfg, "layers_to_transform");
    cJSON_AddNumberToObject(cfg, "lora_alpha", o->lora_alpha);
    cJSON_AddNumberToObject(cfg, "lora_dropout", 0.0);
    if (head) {
        cJSON *mts = cJSON_AddArrayToObject(cfg, "modules_to_save");
        cJSON_AddItemToArray(mts, cJSON_CreateString("classifier"));
    } else {
        cJSON_AddNullToObject(cfg, "modules_to_save");
    }
    cJSON_AddStringToObject(cfg, "peft_type", "LORA");
    cJSON_AddNumberToObject(cfg, "r", (double)r);
    cJSON_AddItemToObject(cfg, "rank_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(cfg, "revision");
    cJSON_AddItemToObject(cfg, "target_modules", tm);
    cJSON_AddStringToObject(cfg, "task_type", seq ? "SEQ_CLS" : "FEATURE_EXTRACTION");
    cJSON_AddBoolToObject(cfg, "use_dora", false);
    cJSON_AddBoolToObject(cfg, "use_rslora", false);
    if (!(json = cJSON_Print(cfg))) goto oom;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (atomic_file_replace(path, json, strlen(json), 0644) < 0) goto done;
    rc = 0;
    goto done;
oom:
    medfl_error_set(MEDFL_ENOMEM, "%s: PEFT export: out of memory", dir);
done:
    for (size_t i = 0; list && i < n_list; i++) free(list[i].name);
    free(list);
    free(targets);
    cJSON_Delete(cfg);
    free(json);
    return rc;
}

static cJSON *s_string_array(char **list, size_t n)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateString(list[i]));
    return arr;
}

int adapter_export_peft(const adapter_t *a, const char *dir)
{
    if (adapter_validate(a, dir) < 0) return -1;
    adapter_peft_opts_t o = {.task = ADAPTER_PEFT_FEATURE_EXTRACTION, .lora_alpha = a->alpha,
                             .base_model = a->base_model_name};
    if (adapter_peft_write(dir, a->tensors, a->n_tensors, &o) < 0) return -1;
    named_tensor_t head[2];
    size_t n_head = 0;
    for (size_t i = 0; i < a->n_tensors; i++)
        if (s_is_head(a->tensors[i].name) && n_head < 2) head[n_head++] = a->tensors[i];
    if (!n_head) return 0;
    char path[4200];
    const char *meta[] = {"format", "pt"};
    snprintf(path, sizeof path, "%s/medfl_head.safetensors", dir);
    if (safetensors_write_f32(path, head, n_head, meta, 1) < 0) return -1;
    cJSON *hj = cJSON_CreateObject();
    char *text = NULL;
    int rc = -1;
    if (hj) {
        cJSON_AddStringToObject(hj, "pooling", a->pooling);
        cJSON_AddItemToObject(hj, "labels", s_string_array(a->labels, a->n_labels));
        cJSON_AddStringToObject(hj, "base_model_hash", a->base_hash);
        cJSON_AddItemToObject(hj, "targets", s_string_array(a->targets, a->n_targets));
        text = cJSON_Print(hj);
    }
    if (!text) {
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", dir);
    } else {
        snprintf(path, sizeof path, "%s/medfl_head.json", dir);
        rc = atomic_file_replace(path, text, strlen(text), 0644);
    }
    free(text);
    cJSON_Delete(hj);
    return rc;
}

/* ---------------------------------------------------------------- label config */

#define S_LABEL_CONFIG_MAX (32u << 20)

typedef struct {
    const char *name;
    size_t pos;
} s_label_pos_t;

/* By name, then position: equal names end up adjacent, the earlier one first. */
static int s_cmp_label_pos(const void *a, const void *b)
{
    const s_label_pos_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->pos > y->pos) - (x->pos < y->pos);
}

int adapter_labels_check(char *const *labels, size_t n, const char *o)
{
    if (n > ADAPTER_MAX_LABELS)
        return medfl_error_set(MEDFL_EFORMAT, "%s: %zu labels (at most %d)", o, n, ADAPTER_MAX_LABELS);
    for (size_t i = 0; i < n; i++) {
        const char *l = labels[i];
        size_t len = l ? strlen(l) : 0;
        if (len == 0 || len > ADAPTER_MAX_LABEL)
            return medfl_error_set(MEDFL_EFORMAT, "%s: label %zu is empty or longer than %d bytes",
                                   o, i, ADAPTER_MAX_LABEL);
        for (size_t k = 0; k < len; k++)
            if ((unsigned char)l[k] < 0x20 || l[k] == 0x7f)
                return medfl_error_set(MEDFL_EFORMAT, "%s: label %zu holds a control character", o, i);
    }
    /* K may reach 10^5 (ICD codes): sort (name, position) pairs rather than compare pairwise. */
    if (n < 2) return 0;
    s_label_pos_t *sorted = malloc(n * sizeof *sorted);
    if (!sorted) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", o);
    for (size_t i = 0; i < n; i++) sorted[i] = (s_label_pos_t){labels[i], i};
    qsort(sorted, n, sizeof *sorted, s_cmp_label_pos);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++)
        if (strcmp(sorted[i - 1].name, sorted[i].name) == 0)
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: labels %zu and %zu are the same name", o,
                                 sorted[i - 1].pos, sorted[i].pos);
    free(sorted);
    return rc;
}

void adapter_labels_free(char ***labels, size_t n)
{
    if (!labels || !*labels) return;
    for (size_t i = 0; i < n; i++) free((*labels)[i]);
    free(*labels);
    *labels = NULL;
}

int adapter_label_config_write(const char *dir, char *const *labels, size_t n, const char *pooling)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/" ADAPTER_LABEL_CONFIG, dir);
    if (adapter_labels_check(labels, n, path) < 0) return -1;
    if (pooling && *pooling && strcmp(pooling, "mean") != 0 && strcmp(pooling, "cls") != 0)
        return medfl_error_set(MEDFL_EINVAL, "%s: pooling '%s' is not mean or cls", path, pooling);
    cJSON *root = cJSON_CreateObject();
    char *text = NULL;
    bool ok = root != NULL;
    if (ok && n) {
        cJSON *id2label = cJSON_AddObjectToObject(root, "id2label");
        cJSON *label2id = cJSON_AddObjectToObject(root, "label2id");
        ok = id2label && label2id;
        for (size_t i = 0; ok && i < n; i++) {
            char id[24];
            snprintf(id, sizeof id, "%zu", i);
            ok = cJSON_AddStringToObject(id2label, id, labels[i]) &&
                 cJSON_AddNumberToObject(label2id, labels[i], (double)i);
        }
        ok = ok && cJSON_AddNumberToObject(root, "num_labels", (double)n);
    }
    ok = ok && cJSON_AddStringToObject(root, "problem_type", "single_label_classification");
    if (ok && pooling && *pooling) ok = cJSON_AddStringToObject(root, "medfl_pooling", pooling) != NULL;
    else if (ok) ok = cJSON_AddNullToObject(root, "medfl_pooling") != NULL;
    if (ok) text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        free(text);
        return medfl_error_set(MEDFL_EIO, "%s: cannot create folder: %s", dir, strerror(errno));
    }
    int rc = atomic_file_replace(path, text, strlen(text), 0644);
    free(text);
    return rc;
}

/* "0", "1", ... exactly: no sign, no leading zero, no spaces; -1 otherwise or >= n. */
static long s_label_id(const char *key, size_t n)
{
    if (!key[0] || (key[0] == '0' && key[1]) || strlen(key) > 9) return -1;
    long v = 0;
    for (const char *c = key; *c; c++) {
        if (*c < '0' || *c > '9') return -1;
        v = v * 10 + (*c - '0');
    }
    return (size_t)v < n ? v : -1;
}

static int s_read_id2label(const char *path, const cJSON *id2label, char ***out, size_t *n_out)
{
    if (!cJSON_IsObject(id2label))
        return medfl_error_set(MEDFL_EFORMAT, "%s: key 'id2label' is not an object", path);
    size_t n = (size_t)cJSON_GetArraySize(id2label);
    if (n > ADAPTER_MAX_LABELS)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key 'id2label' holds %zu labels (at most %d)",
                               path, n, ADAPTER_MAX_LABELS);
    char **labels = calloc(n ? n : 1, sizeof *labels);
    if (!labels) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    const cJSON *it;
    size_t k = 0;
    cJSON_ArrayForEach(it, id2label) {
        long id = s_label_id(it->string, n);
        if (id < 0 || labels[id] || !cJSON_IsString(it)) {
            adapter_labels_free(&labels, n);
            return medfl_error_set(MEDFL_EFORMAT,
                                   "%s: key 'id2label': entry %zu is not a string under an id "
                                   "0..%zu given once", path, k, n ? n - 1 : 0);
        }
        if (!(labels[id] = strdup(it->valuestring))) {
            adapter_labels_free(&labels, n);
            return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        }
        k++;
    }
    char origin[4300];
    snprintf(origin, sizeof origin, "%s: key 'id2label'", path);
    if (adapter_labels_check(labels, n, origin) < 0) {
        adapter_labels_free(&labels, n);
        return -1;
    }
    *out = labels;
    *n_out = n;
    return 0;
}

/* label2id must name every label with its id and nothing else. */
static int s_check_label2id(const char *path, const cJSON *label2id, char **labels, size_t n)
{
    if (!cJSON_IsObject(label2id) || (size_t)cJSON_GetArraySize(label2id) != n)
        return medfl_error_set(MEDFL_EFORMAT, "%s: key 'label2id' is not an object of %zu entries "
                               "(one per id2label entry)", path, n);
    for (size_t i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(label2id, labels[i]);
        if (!cJSON_IsNumber(v) || v->valuedouble != (double)i)
            return medfl_error_set(MEDFL_EFORMAT, "%s: key 'label2id' does not map the label of id "
                                   "%zu back to %zu", path, i, i);
    }
    return 0;
}

int adapter_label_config_read(const char *path, char ***labels_out, size_t *n_out, char pooling[8])
{
    *labels_out = NULL;
    *n_out = 0;
    pooling[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f)
        return medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s",
                               path, strerror(errno));
    char *text = malloc(S_LABEL_CONFIG_MAX + 1);
    size_t len = text ? fread(text, 1, S_LABEL_CONFIG_MAX + 1, f) : 0;
    bool err = ferror(f);
    fclose(f);
    if (!text) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    if (err || len > S_LABEL_CONFIG_MAX)
        rc = medfl_error_set(err ? MEDFL_EIO : MEDFL_EFORMAT, "%s: %s", path,
                             err ? "read failed" : "larger than 32 MiB");
    else
        rc = adapter_label_config_parse(text, len, path, labels_out, n_out, pooling);
    free(text);
    return rc;
}

int adapter_label_config_parse(const char *text, size_t len, const char *path, char ***labels_out,
                               size_t *n_out, char pooling[8])
{
    *labels_out = NULL;
    *n_out = 0;
    pooling[0] = '\0';
    cJSON *root = cJSON_ParseWithLength(text, len);
    char **labels = NULL;
    size_t n = 0;
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        medfl_error_set(MEDFL_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }
    const cJSON *id2label = cJSON_GetObjectItemCaseSensitive(root, "id2label");
    const cJSON *label2id = cJSON_GetObjectItemCaseSensitive(root, "label2id");
    const cJSON *num = cJSON_GetObjectItemCaseSensitive(root, "num_labels");
    const cJSON *pool = cJSON_GetObjectItemCaseSensitive(root, "medfl_pooling");
    if (id2label && s_read_id2label(path, id2label, &labels, &n) < 0) goto done;
    if (label2id && s_check_label2id(path, label2id, labels, n) < 0) goto done;
    if (num && (!cJSON_IsNumber(num) || num->valuedouble != (double)n)) {
        medfl_error_set(MEDFL_EFORMAT, "%s: key 'num_labels' is not the %zu labels of 'id2label'",
                        path, n);
        goto done;
    }
    if (pool && !cJSON_IsNull(pool)) {
        if (!cJSON_IsString(pool) || (strcmp(pool->valuestring, "mean") != 0 &&
                                      strcmp(pool->valuestring, "cls") != 0)) {
            medfl_error_set(MEDFL_EFORMAT, "%s: key 'medfl_pooling' is not \"mean\", \"cls\" or null",
                            path);
            goto done;
        }
        snprintf(pooling, 8, "%s", pool->valuestring);
    }
    *labels_out = labels;
    *n_out = n;
    labels = NULL;
    rc = 0;
done:
    adapter_labels_free(&labels, n);
    cJSON_Delete(root);
    return rc;
}
