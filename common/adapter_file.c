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
    if (n_lora == 0 || n_lora % 2)
        return medfl_error_set(MEDFL_EFORMAT, "%s: %zu LoRA tensors (need A/B pairs)", o, n_lora);
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

/* Module path of a LoRA tensor inside one encoder layer ("attention.self.query"), or NULL. */
static const char *s_layer_module(const char *name, char *out, size_t size)
{
    const char *p = strstr(name, "encoder.layer.");
    if (!p) return NULL;
    p += strlen("encoder.layer.");
    while (*p >= '0' && *p <= '9') p++;
    if (*p != '.') return NULL;
    p++;
    const char *end = strstr(p, ".lora_");
    if (!end || (size_t)(end - p) >= size) return NULL;
    memcpy(out, p, (size_t)(end - p));
    out[end - p] = '\0';
    return out;
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
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return medfl_error_set(MEDFL_EIO, "%s: cannot create folder: %s", dir, strerror(errno));
    named_tensor_t *lora = calloc(a->n_tensors, sizeof *lora), head[2];
    size_t n_lora = 0, n_head = 0;
    /* Target modules: the short PEFT names are unambiguous except for the FFN output
     * ("output.dense" also suffix-matches "attention.output.dense"); then a regex that
     * PEFT full-matches against module names is written instead. */
    static const char *const mods[] = {"attention.self.query", "attention.self.key",
                                       "attention.self.value", "attention.output.dense",
                                       "intermediate.dense", "output.dense"};
    static const char *const shorts[] = {"query", "key", "value", "attention.output.dense",
                                         "intermediate.dense", NULL};
    static const char *const regex[] = {"attention\\.self\\.query", "attention\\.self\\.key",
                                        "attention\\.self\\.value", "attention\\.output\\.dense",
                                        "intermediate\\.dense", "output\\.dense"};
    bool used[6] = {false};
    char mod[128], path[4200];
    int rc = -1;
    cJSON *cfg = NULL, *hj = NULL;
    char *text = NULL;
    if (!lora) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < a->n_tensors; i++) {
        const named_tensor_t *t = &a->tensors[i];
        if (s_is_head(t->name)) {
            head[n_head++] = *t;
            continue;
        }
        lora[n_lora++] = *t;
        size_t k = 0;
        if (!s_layer_module(t->name, mod, sizeof mod)) k = 6;
        while (k < 6 && strcmp(mods[k], mod) != 0) k++;
        if (k == 6) {
            medfl_error_set(MEDFL_EFORMAT, "%s: LoRA tensor '%s' is not on a BERT layer module",
                            dir, t->name);
            goto done;
        }
        used[k] = true;
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    const char *meta[] = {"format", "pt"};
    if (safetensors_write_f32(path, lora, n_lora, meta, 1) < 0) goto done;
    cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "peft_type", "LORA");
    cJSON_AddStringToObject(cfg, "task_type", "FEATURE_EXTRACTION");
    cJSON_AddStringToObject(cfg, "base_model_name_or_path", a->base_model_name);
    cJSON_AddNumberToObject(cfg, "r", (double)a->r);
    cJSON_AddNumberToObject(cfg, "lora_alpha", a->alpha);
    cJSON_AddNumberToObject(cfg, "lora_dropout", 0.0);
    cJSON_AddStringToObject(cfg, "bias", "none");
    cJSON_AddBoolToObject(cfg, "fan_in_fan_out", false);
    cJSON_AddBoolToObject(cfg, "inference_mode", true);
    cJSON_AddBoolToObject(cfg, "init_lora_weights", true);
    cJSON_AddBoolToObject(cfg, "use_rslora", false);
    cJSON_AddBoolToObject(cfg, "use_dora", false);
    cJSON_AddNullToObject(cfg, "modules_to_save");
    if (used[5]) {
        char re[512] = "encoder\\.layer\\.\\d+\\.(";
        bool first = true;
        for (int k = 0; k < 6; k++)
            if (used[k]) {
                strcat(re, first ? "" : "|");
                strcat(re, regex[k]);
                first = false;
            }
        strcat(re, ")");
        cJSON_AddStringToObject(cfg, "target_modules", re);
    } else {
        cJSON *tm = cJSON_AddArrayToObject(cfg, "target_modules");
        for (int k = 0; k < 5; k++)
            if (used[k]) cJSON_AddItemToArray(tm, cJSON_CreateString(shorts[k]));
    }
    if (!(text = cJSON_Print(cfg))) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (atomic_file_replace(path, text, strlen(text), 0644) < 0) goto done;
    free(text);
    text = NULL;
    if (n_head) {
        snprintf(path, sizeof path, "%s/medfl_head.safetensors", dir);
        if (safetensors_write_f32(path, head, n_head, meta, 1) < 0) goto done;
        hj = cJSON_CreateObject();
        cJSON_AddStringToObject(hj, "pooling", a->pooling);
        cJSON_AddItemToObject(hj, "labels", s_string_array(a->labels, a->n_labels));
        cJSON_AddStringToObject(hj, "base_model_hash", a->base_hash);
        cJSON_AddItemToObject(hj, "targets", s_string_array(a->targets, a->n_targets));
        if (!(text = cJSON_Print(hj))) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory");
            goto done;
        }
        snprintf(path, sizeof path, "%s/medfl_head.json", dir);
        if (atomic_file_replace(path, text, strlen(text), 0644) < 0) goto done;
    }
    rc = 0;
done:
    free(text);
    cJSON_Delete(cfg);
    cJSON_Delete(hj);
    free(lora);
    return rc;
}
