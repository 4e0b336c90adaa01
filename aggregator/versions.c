/* medfl-aggregator versions / rollback / export / init-version: the operator's view of the
 * signed version chain (common/version_store) and its bridges to Hugging Face PEFT, so a
 * consortium can seed the federation from an adapter trained with PEFT and hand the result
 * back to anyone with `PeftModel.from_pretrained`. */
#include "aggregator/versions.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/agg_config.h"
#include "common/adapter_file.h"
#include "common/atomic_file.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "common/safetensors.h"

#define S_PROG "medfl-aggregator"
#define S_PEFT "base_model.model."

void versions_dir(const char *state_dir, char *out, size_t size)
{
    snprintf(out, size, "%s/versions", state_dir);
}

/* ---------------------------------------------------------------- keys */

int versions_read_hex_key(const char *path_or_hex, uint8_t *out, size_t n, bool secret)
{
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "libsodium failed to initialise");
    char buf[512] = {0};
    const char *text = path_or_hex, *what = "key given on the command line";
    /* A file path of exactly 2n characters is still a path: hex only when every character
     * is a hex digit. */
    bool hex = strlen(path_or_hex) == 2 * n;
    for (const char *c = path_or_hex; hex && *c; c++) hex = isxdigit((unsigned char)*c) != 0;
    if (!hex) {
        int fd = open(path_or_hex, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO,
                                   "%s: cannot open key file: %s", path_or_hex, strerror(errno));
        struct stat st;
        if (fstat(fd, &st) < 0 || (secret && (st.st_mode & 077))) {
            close(fd);
            return medfl_error_set(MEDFL_EPERM,
                                   "%s: secret key readable by group or others (mode %03o); chmod 600 it",
                                   path_or_hex, (unsigned)(st.st_mode & 0777));
        }
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r < 0) return medfl_error_set(MEDFL_EIO, "%s: read failed", path_or_hex);
        buf[r] = '\0';
        while (r > 0 && (buf[r - 1] == '\n' || buf[r - 1] == '\r' || buf[r - 1] == ' ')) buf[--r] = '\0';
        text = buf;
        what = path_or_hex;
    }
    size_t got = 0;
    int rc = 0;
    if (strlen(text) != 2 * n || sodium_hex2bin(out, n, text, strlen(text), NULL, &got, NULL) != 0 ||
        got != n)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: expected %zu hex digits of an Ed25519 %s key", what,
                             2 * n, secret ? "secret" : "public");
    sodium_memzero(buf, sizeof buf);
    return rc;
}

/* ---------------------------------------------------------------- names */

static const char *const s_target_order[] = {"attention.self.query", "attention.self.key",
                                             "attention.self.value", "attention.output.dense",
                                             "intermediate.dense", "output.dense"};

/* Sort key reproducing the model's trainable layout (node/engine/model: layers, targets in
 * bitmask order, A then B; then classifier weight, bias), so a seeded version's flat vector
 * is laid out as the nodes' own. */
static void s_layout_key(const char *name, long key[4])
{
    int layer;
    char mod[128], which;
    key[0] = key[1] = key[2] = key[3] = 0;
    if (adapter_lora_parts(name, &layer, mod, sizeof mod, &which)) {
        key[0] = 0;
        key[1] = layer;
        key[2] = 6;
        for (int t = 0; t < 6; t++)
            if (strcmp(mod, s_target_order[t]) == 0) key[2] = t;
        key[3] = which == 'A' ? 0 : 1;
    } else if (strcmp(name, "classifier.weight") == 0) {
        key[0] = 1;
    } else if (strcmp(name, "classifier.bias") == 0) {
        key[0] = 2;
    } else {
        key[0] = 3;
    }
}

typedef struct {
    const char *name; /* medfl name */
    const st_tensor_t *t;
} s_item_t;

static int s_cmp_layout(const void *a, const void *b)
{
    const s_item_t *x = a, *y = b;
    long kx[4], ky[4];
    s_layout_key(x->name, kx);
    s_layout_key(y->name, ky);
    for (int i = 0; i < 4; i++)
        if (kx[i] != ky[i]) return kx[i] < ky[i] ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* ---------------------------------------------------------------- labels */

/* The version attribute "labels": the label names as a compact JSON array, in head order. */
static int s_set_labels_attr(vs_manifest_t *m, char **labels, size_t n, const char *origin)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < n; i++)
        if (!cJSON_AddItemToArray(arr, cJSON_CreateString(labels[i]))) {
            cJSON_Delete(arr);
            arr = NULL;
        }
    char *text = arr ? cJSON_PrintUnformatted(arr) : NULL;
    cJSON_Delete(arr);
    if (!text) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", origin);
    int rc = 0;
    if (strlen(text) > 4096)
        rc = medfl_error_set(MEDFL_EUNSUPPORTED, "%s: the %zu label names take %zu bytes; a version "
                             "attribute holds at most 4096", origin, n, strlen(text));
    else
        rc = vs_manifest_set_attr(m, "labels", text);
    free(text);
    return rc;
}

/* Labels of a version in head order (NULL, 0 when it records none); the attribute is signed
 * but still checked, as any input: a JSON array of distinct, non-empty names. */
static int s_get_labels_attr(const vs_manifest_t *m, char ***labels_out, size_t *n_out)
{
    *labels_out = NULL;
    *n_out = 0;
    const char *text = vs_manifest_attr(m, "labels");
    if (!text) return 0;
    cJSON *arr = cJSON_Parse(text);
    size_t n = cJSON_IsArray(arr) ? (size_t)cJSON_GetArraySize(arr) : 0;
    char **labels = calloc(n ? n : 1, sizeof *labels);
    int rc = -1;
    if (!cJSON_IsArray(arr) || !labels) {
        medfl_error_set(labels ? MEDFL_EFORMAT : MEDFL_ENOMEM,
                        "v%06llu: attribute 'labels' is not a JSON array of names",
                        (unsigned long long)m->version);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const cJSON *it = cJSON_GetArrayItem(arr, (int)i);
        if (!cJSON_IsString(it) || !(labels[i] = strdup(it->valuestring))) {
            medfl_error_set(MEDFL_EFORMAT, "v%06llu: attribute 'labels': entry %zu is not a string",
                            (unsigned long long)m->version, i);
            goto done;
        }
    }
    char origin[64];
    snprintf(origin, sizeof origin, "v%06llu: attribute 'labels'", (unsigned long long)m->version);
    if (adapter_labels_check(labels, n, origin) < 0) goto done;
    *labels_out = labels;
    *n_out = n;
    labels = NULL;
    rc = 0;
done:
    adapter_labels_free(&labels, n);
    cJSON_Delete(arr);
    return rc;
}

/* label_config.json beside adapter_config.json (what `medfl-node init-adapter` writes), when
 * present: its labels and pooling become the attributes "labels" and "pooling", which every
 * later version inherits from its parent (versions_next). The labels must be as many as the
 * classifier's rows. */
static int s_read_label_config(const char *cfg_path, vs_manifest_t *m)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", cfg_path);
    char *slash = strrchr(path, '/');
    snprintf(slash ? slash + 1 : path, sizeof path - (size_t)(slash ? slash + 1 - path : 0),
             ADAPTER_LABEL_CONFIG);
    char **labels = NULL, pooling[8];
    size_t n = 0;
    if (adapter_label_config_read(path, &labels, &n, pooling) < 0) {
        if (medfl_error_code() != MEDFL_ENOTFOUND) return -1;
        medfl_error_clear();
        return 0;
    }
    int rc = 0;
    long head = vs_manifest_find_tensor(m, "classifier.weight");
    if (n && head >= 0 && m->tensors[head].shape[0] != (int64_t)n)
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: %zu labels, but the classifier has %lld rows", path,
                             n, (long long)m->tensors[head].shape[0]);
    if (rc == 0 && n) rc = s_set_labels_attr(m, labels, n, path);
    if (rc == 0 && pooling[0]) rc = vs_manifest_set_attr(m, "pooling", pooling);
    adapter_labels_free(&labels, n);
    return rc;
}

/* ---------------------------------------------------------------- export */

/* Markdown list of the labels: "0 `A`, 1 `B`, ..." (a backtick inside a name would end the
 * code span early, so those names are written as a double-backtick span). */
static void s_readme_labels(FILE *f, char **labels, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool tick = strchr(labels[i], '`') != NULL;
        fprintf(f, "%s%zu %s%s%s", i ? ", " : "", i, tick ? "`` " : "`", labels[i], tick ? " ``" : "`");
    }
}

/* A Python string literal of s (quotes, backslashes and control characters escaped). */
static void s_py_string(const char *s, char *out, size_t size)
{
    size_t k = 0;
    out[k++] = '"';
    for (; *s && k + 6 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[k++] = '\\';
            out[k++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            k += (size_t)snprintf(out + k, size - k, "\\x%02x", c);
        } else {
            out[k++] = (char)c;
        }
    }
    out[k++] = '"';
    out[k] = '\0';
}

/* The README's Python recipe: PEFT loads the adapter into BertForSequenceClassification, but
 * the prediction pools as medfl did and applies the exported classifier to that. */
static void s_readme_snippet(FILE *f, const char *base_py, const char *dir_py, const char *prefix,
                             const char *pooling, bool labels, long long k)
{
    fprintf(f, "## Predicting as medfl does\n\n"
            "`BertForSequenceClassification` classifies `tanh(pooler.dense(h[CLS]))`, which is "
            "neither of medfl's poolings: **`model(**inputs).logits` is not this model's "
            "prediction**. Pool the encoder's output yourself and apply the exported classifier:\n\n"
            "```python\n"
            "import json, torch\n"
            "from peft import PeftModel\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            "BASE, DIR = %s, %s  # DIR: this folder\n", base_py, dir_py);
    if (labels)
        fprintf(f, "lc = json.load(open(f\"{DIR}/label_config.json\"))\n"
                "id2label = {int(i): name for i, name in lc[\"id2label\"].items()}  # JSON keys are strings\n"
                "base = AutoModelForSequenceClassification.from_pretrained(\n"
                "    BASE, num_labels=len(id2label), id2label=id2label, label2id=lc[\"label2id\"])\n");
    else
        fprintf(f, "base = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=%lld)\n", k);
    fprintf(f, "model = PeftModel.from_pretrained(base, DIR).eval()\n"
            "tok = AutoTokenizer.from_pretrained(BASE)\n"
            "enc = tok([\"a clinical note\"], padding=True, truncation=True, max_length=128,\n"
            "          return_tensors=\"pt\")  # max_length: the nodes' train.max_seq_len\n"
            "with torch.no_grad():\n"
            "    hidden = model.base_model.model.%s(**enc).last_hidden_state  # LoRA applied\n", prefix);
    if (strcmp(pooling, "cls") != 0)
        fprintf(f, "    # mean pooling%s: average over the attention mask\n"
                "    mask = enc[\"attention_mask\"].unsqueeze(-1).to(hidden.dtype)\n"
                "    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)\n",
                *pooling ? "" : " (medfl's default; the version does not record its pooling)");
    if (strcmp(pooling, "mean") != 0)
        fprintf(f, "    %spooled = hidden[:, 0]  # cls pooling: the [CLS] state, no pooler\n",
                *pooling ? "" : "# ");
    fprintf(f, "    logits = model.base_model.model.classifier(pooled)\n"
            "%s\n"
            "```\n", labels ? "print([id2label[i] for i in logits.argmax(-1).tolist()])"
                             : "print(logits.argmax(-1).tolist())  # class ids: no label names recorded");
}

/* README.md of an export: what a reader needs to use the adapter correctly, above all the
 * pooling, which BertForSequenceClassification does not do as medfl does. */
static int s_write_readme(const char *dir, const vs_manifest_t *m, const versions_export_opts_t *o,
                          const char *base_model, const char *pooling, double lora_alpha,
                          char **labels, size_t n_labels)
{
    char *text = NULL, hex[2 * VS_HASH_BYTES + 1], path[4200];
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return medfl_error_set(MEDFL_ENOMEM, "%s: README: out of memory", dir);
    vs_hex(m->hash, VS_HASH_BYTES, hex);
    long head = vs_manifest_find_tensor(m, "classifier.weight");
    long long k = head >= 0 ? (long long)m->tensors[head].shape[0] : (long long)n_labels;
    const char *prefix = o->prefix ? o->prefix : "bert";
    char base_py[8300], dir_py[8300];
    s_py_string(base_model ? base_model : "BASE_MODEL_NAME", base_py, sizeof base_py);
    s_py_string(dir, dir_py, sizeof dir_py);
    fprintf(f, "# medfl model version %llu\n\n"
            "A LoRA adapter for Hugging Face PEFT, exported by `medfl-aggregator export` from the\n"
            "consortium's signed model version %llu (round %llu, parent %llu, hash `%s`%s).\n\n",
            (unsigned long long)m->version, (unsigned long long)m->version,
            (unsigned long long)m->round, (unsigned long long)m->parent, hex,
            o->verified ? ", verified before export" : ", NOT verified: exported without the public key");
    fprintf(f, "- **Base model**: %s%s%s\n", base_model ? "`" : "",
            base_model ? base_model : "not recorded in this version (export again with --base-model NAME)",
            base_model ? "` (`base_model_name_or_path` in adapter_config.json)" : "");
    fprintf(f, "- **Task**: single-label text classification into %lld classes (softmax; PEFT "
            "task_type SEQ_CLS)%s\n", k,
            o->include_head ? ", classifier included as a module to save"
                            : "; the classifier is NOT included (exported with --no-head)");
    fprintf(f, "- **Labels** (id name, `id2label` in label_config.json): ");
    if (n_labels) s_readme_labels(f, labels, n_labels);
    else fprintf(f, "not recorded in this version (it was not seeded by `medfl-node init-adapter`)");
    fprintf(f, "\n- **Pooling** (`medfl_pooling` in label_config.json): ");
    if (!strcmp(pooling, "mean"))
        fprintf(f, "**mean**: the classifier reads the average of the encoder's last hidden states "
                "over the attention mask ([CLS] and [SEP] included, padding excluded), as "
                "sentence-transformers pools\n");
    else if (!strcmp(pooling, "cls"))
        fprintf(f, "**cls**: the classifier reads the last hidden state of [CLS] directly, without "
                "BERT's pooler (no dense layer, no tanh)\n");
    else
        fprintf(f, "**not recorded** in this version; medfl nodes pool as their `model.pooling` "
                "says (default mean). Export again with --pooling mean|cls once you know it\n");
    fprintf(f, "- **LoRA**: lora_alpha %g, tensors and rank in adapter_model.safetensors / "
            "adapter_config.json\n\n", lora_alpha);
    s_readme_snippet(f, base_py, dir_py, prefix, pooling, n_labels > 0, k);
    if (fclose(f) != 0 || !text) {
        free(text);
        return medfl_error_set(MEDFL_ENOMEM, "%s: README: out of memory", dir);
    }
    snprintf(path, sizeof path, "%s/README.md", dir);
    int rc = atomic_file_replace(path, text, len, 0644);
    free(text);
    return rc;
}

int versions_export_peft(const vs_manifest_t *m, const float *flat, const char *dir,
                         const versions_export_opts_t *o)
{
    double lora_alpha = o->lora_alpha;
    if (lora_alpha <= 0) {
        const char *a = vs_manifest_attr(m, "lora_alpha");
        char *end = NULL;
        if (a) lora_alpha = strtod(a, &end);
        if (!a || end == a || *end || !(lora_alpha > 0))
            return medfl_error_set(MEDFL_EINVAL,
                                   "v%06llu: no valid 'lora_alpha' attribute; give --lora-alpha",
                                   (unsigned long long)m->version);
    }
    const char *base_model = o->base_model ? o->base_model : vs_manifest_attr(m, "base_model");
    const char *pooling = o->pooling ? o->pooling : vs_manifest_attr(m, "pooling");
    if (!pooling) pooling = "";
    if (*pooling && strcmp(pooling, "mean") != 0 && strcmp(pooling, "cls") != 0)
        return medfl_error_set(MEDFL_EINVAL, "v%06llu: pooling '%.16s' is not mean or cls",
                               (unsigned long long)m->version, pooling);
    char **labels = NULL;
    size_t n_labels = 0;
    if (s_get_labels_attr(m, &labels, &n_labels) < 0) return -1;
    long head = vs_manifest_find_tensor(m, "classifier.weight");
    if (n_labels && head >= 0 && m->tensors[head].shape[0] != (int64_t)n_labels) {
        adapter_labels_free(&labels, n_labels);
        return medfl_error_set(MEDFL_EFORMAT, "v%06llu: %zu labels, but the classifier has %lld rows",
                               (unsigned long long)m->version, n_labels,
                               (long long)m->tensors[head].shape[0]);
    }
    named_tensor_t *list = calloc(m->n_tensors ? m->n_tensors : 1, sizeof *list);
    if (!list) {
        adapter_labels_free(&labels, n_labels);
        return medfl_error_set(MEDFL_ENOMEM, "export: out of memory");
    }
    for (size_t i = 0; i < m->n_tensors; i++) {
        const vs_tensor_info_t *t = &m->tensors[i];
        list[i].name = t->name;
        list[i].ndim = t->ndim;
        memcpy(list[i].shape, t->shape, sizeof list[i].shape);
        list[i].data = (float *)(flat + t->offset);
    }
    adapter_peft_opts_t po = {.task = ADAPTER_PEFT_SEQ_CLS, .prefix = o->prefix,
                              .include_head = o->include_head, .lora_alpha = lora_alpha,
                              .base_model = base_model};
    int rc = adapter_peft_write(dir, list, m->n_tensors, &po);
    if (rc == 0) rc = adapter_label_config_write(dir, labels, n_labels, pooling);
    if (rc == 0) rc = s_write_readme(dir, m, o, base_model, pooling, lora_alpha, labels, n_labels);
    if (rc < 0) medfl_error_prefix("v%06llu: ", (unsigned long long)m->version);
    adapter_labels_free(&labels, n_labels);
    free(list);
    return rc;
}

/* ---------------------------------------------------------------- import */

static char *s_slurp(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    fclose(f);
    if (!buf || n > max) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

int versions_read_peft(const char *path, const char *prefix, vs_manifest_t **m_out, float **flat_out)
{
    char st_path[4096], cfg_path[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(st_path, sizeof st_path, "%s/adapter_model.safetensors", path);
        snprintf(cfg_path, sizeof cfg_path, "%s/adapter_config.json", path);
    } else {
        snprintf(st_path, sizeof st_path, "%s", path);
        snprintf(cfg_path, sizeof cfg_path, "%s", path);
        char *slash = strrchr(cfg_path, '/');
        snprintf(slash ? slash + 1 : cfg_path, sizeof cfg_path - (size_t)(slash ? slash + 1 - cfg_path : 0),
                 "adapter_config.json");
    }
    safetensors_t *st = safetensors_open(st_path);
    if (!st) return -1;
    size_t n = safetensors_count(st);
    s_item_t *items = calloc(n ? n : 1, sizeof *items);
    char **names = calloc(n ? n : 1, sizeof *names);
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    char *cfg_text = NULL;
    cJSON *cfg = NULL;
    int rc = -1;
    if (!items || !names || !(m = vs_manifest_new())) {
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", st_path);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const st_tensor_t *t = safetensors_at(st, i);
        char nm[VS_MAX_NAME + 64];
        if (adapter_medfl_name(t->name, prefix, nm, sizeof nm) < 0) {
            medfl_error_prefix("%s: ", st_path);
            goto done;
        }
        if (!(names[i] = strdup(nm))) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory");
            goto done;
        }
        items[i].name = names[i];
        items[i].t = t;
    }
    qsort(items, n, sizeof *items, s_cmp_layout);
    long r = -1;
    for (size_t i = 0; i < n; i++) {
        if (vs_manifest_add_tensor(m, items[i].name, items[i].t->ndim, items[i].t->shape) < 0) {
            medfl_error_prefix("%s: ", st_path);
            goto done;
        }
        int layer;
        char mod[128], which;
        if (adapter_lora_parts(items[i].name, &layer, mod, sizeof mod, &which) && which == 'A') r = items[i].t->shape[0];
    }
    bool has_head = false;
    for (size_t i = 0; i < n; i++) has_head |= strcmp(items[i].name, "classifier.weight") == 0;
    if (r < 0 && !has_head) { /* a head-only adapter (lora.targets = none) has no LoRA pairs */
        medfl_error_set(MEDFL_EFORMAT, "%s: neither LoRA tensors (names like '" S_PEFT "%s.encoder."
                        "layer.0.attention.self.query.lora_A.weight') nor a classifier head",
                        st_path, prefix);
        goto done;
    }
    if (!(flat = malloc(m->numel * sizeof *flat))) {
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", st_path);
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        if (safetensors_read_f32(st, items[i].t, flat + m->tensors[i].offset) < 0) goto done;
    char rbuf[32];
    snprintf(rbuf, sizeof rbuf, "%ld", r);
    if (r > 0 && vs_manifest_set_attr(m, "lora_r", rbuf) < 0) goto done;
    if ((cfg_text = s_slurp(cfg_path, 1 << 20))) {
        cfg = cJSON_Parse(cfg_text);
        if (!cJSON_IsObject(cfg)) {
            medfl_error_set(MEDFL_EFORMAT, "%s: not a JSON object", cfg_path);
            goto done;
        }
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(cfg, "lora_alpha");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(cfg, "base_model_name_or_path");
        const cJSON *cr = cJSON_GetObjectItemCaseSensitive(cfg, "r");
        const cJSON *tm = cJSON_GetObjectItemCaseSensitive(cfg, "target_modules");
        if (r > 0 && cJSON_IsNumber(cr) && (long)cr->valuedouble != r) {
            medfl_error_set(MEDFL_EFORMAT, "%s: field 'r' = %g but the tensors have rank %ld", cfg_path,
                            cr->valuedouble, r);
            goto done;
        }
        if (cJSON_IsNumber(a)) {
            char abuf[64];
            snprintf(abuf, sizeof abuf, "%.17g", a->valuedouble);
            if (vs_manifest_set_attr(m, "lora_alpha", abuf) < 0) goto done;
        }
        if (cJSON_IsString(b) && vs_manifest_set_attr(m, "base_model", b->valuestring) < 0) goto done;
        if (cJSON_IsArray(tm)) {
            char list[1024] = "";
            const cJSON *it;
            cJSON_ArrayForEach(it, tm) {
                if (!cJSON_IsString(it)) continue;
                size_t l = strlen(list);
                snprintf(list + l, sizeof list - l, "%s%s", l ? "," : "", it->valuestring);
            }
            if (vs_manifest_set_attr(m, "target_modules", list) < 0) goto done;
        }
    }
    if (s_read_label_config(cfg_path, m) < 0) goto done;
    *m_out = m;
    *flat_out = flat;
    m = NULL;
    flat = NULL;
    rc = 0;
done:
    for (size_t i = 0; names && i < n; i++) free(names[i]);
    free(names);
    free(items);
    cJSON_Delete(cfg);
    free(cfg_text);
    vs_manifest_destroy(&m);
    free(flat);
    safetensors_destroy(&st);
    return rc;
}

/* ---------------------------------------------------------------- commands */

typedef struct {
    const char *config;
    agg_config_t cfg; /* loaded when -c is given */
    const char *state;
    const char *key_dir;
    const char *pubkey;
    const char *peft;
    const char *from;
    const char *base_model;
    const char *prefix;
    const char *pooling;
    double lora_alpha;
    bool no_head, force;
    const char *pos[4];
    int n_pos;
} s_args_t;

/* Options shared by the version tools; unknown options are errors naming the option. */
static int s_parse(int argc, char **argv, s_args_t *a)
{
    memset(a, 0, sizeof *a);
    a->prefix = "bert";
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char **slot = NULL;
        if (strcmp(o, "--state") == 0) slot = &a->state;
        else if (strcmp(o, "--key-dir") == 0) slot = &a->key_dir;
        else if (strcmp(o, "--pubkey") == 0) slot = &a->pubkey;
        else if (strcmp(o, "--peft") == 0) slot = &a->peft;
        else if (strcmp(o, "--from") == 0 || strcmp(o, "--from-adapter") == 0) slot = &a->from;
        else if (strcmp(o, "--base-model") == 0) slot = &a->base_model;
        else if (strcmp(o, "--model-prefix") == 0) slot = &a->prefix;
        else if (strcmp(o, "--pooling") == 0) slot = &a->pooling;
        else if (strcmp(o, "--lora-alpha") == 0) {
            if (i + 1 >= argc) return medfl_error_set(MEDFL_EINVAL, "option '%s' needs a value", o);
            char *end;
            a->lora_alpha = strtod(argv[++i], &end);
            if (*end || !(a->lora_alpha > 0))
                return medfl_error_set(MEDFL_EINVAL, "--lora-alpha '%s': expected a number > 0", argv[i]);
            continue;
        } else if (strcmp(o, "--no-head") == 0) {
            a->no_head = true;
            continue;
        } else if (strcmp(o, "--force") == 0) {
            a->force = true;
            continue;
        } else if (strcmp(o, "-c") == 0 || strcmp(o, "--config") == 0) {
            slot = &a->config;
        } else if (o[0] == '-' && o[1]) {
            return medfl_error_set(MEDFL_EINVAL, "unknown option '%s'", o);
        } else {
            if (a->n_pos >= 4) return medfl_error_set(MEDFL_EINVAL, "too many arguments ('%s')", o);
            a->pos[a->n_pos++] = o;
            continue;
        }
        if (i + 1 >= argc) return medfl_error_set(MEDFL_EINVAL, "option '%s' needs a value", o);
        *slot = argv[++i];
    }
    /* -c supplies state_dir and key_dir; --state / --key-dir given beside it win. */
    if (a->config) {
        if (agg_config_load(&a->cfg, a->config) != 0) return -1;
        if (!a->state) a->state = a->cfg.state_dir;
        if (!a->key_dir) a->key_dir = a->cfg.key_dir;
    }
    if (!a->state) a->state = "/var/lib/medfl/aggregator";
    return 0;
}

static int s_parse_version(const char *text, uint64_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(text, &end, 10);
    if (text[0] == 'v') return s_parse_version(text + 1, v);
    if (errno || end == text || *end || x == 0)
        return medfl_error_set(MEDFL_EINVAL, "version '%s': expected a number >= 1 (or vN)", text);
    *v = x;
    return 0;
}

/* Public key to verify with: --pubkey (hex or file), else <key-dir>/identity.pub; 0 = none. */
static int s_public_key(const s_args_t *a, uint8_t pk[VS_PK_BYTES], bool *have)
{
    *have = false;
    char path[4096];
    const char *src = a->pubkey;
    if (!src && a->key_dir) {
        snprintf(path, sizeof path, "%s/identity.pub", a->key_dir);
        src = path;
    }
    if (!src) return 0;
    if (versions_read_hex_key(src, pk, VS_PK_BYTES, false) < 0) return -1;
    *have = true;
    return 0;
}

static vs_store_t *s_open_store(const s_args_t *a, bool create)
{
    char dir[4096];
    versions_dir(a->state, dir, sizeof dir);
    if (create && mkdir(a->state, 0700) < 0 && errno != EEXIST) {
        medfl_error_set(MEDFL_EIO, "%s: cannot create state folder: %s", a->state, strerror(errno));
        return NULL;
    }
    return vs_store_open(dir, create);
}

/* ---------------------------------------------------------------- evaluation column */

/* The nodes' evaluation reports of each version, from the round journal (table round_evals
 * of <state_dir>/registry.db, written by aggregator/rounds): opened read-only with a busy
 * timeout, so listing is safe while the daemon runs (WAL readers do not block its writer). */
typedef struct {
    sqlite3 *db;
    sqlite3_stmt *st;
} s_evals_t;

static void s_evals_open(s_evals_t *e, const char *state)
{
    memset(e, 0, sizeof *e);
    char path[4096];
    snprintf(path, sizeof path, "%s/registry.db", state);
    if (access(path, F_OK) != 0) return; /* no federation has run: nothing evaluated */
    /* accuracy and macro-F1 weighted by the records each node evaluated on; a report
     * without one of them does not count in that mean */
    const char *sql = "SELECT SUM(accuracy * n) / SUM(CASE WHEN accuracy IS NULL THEN NULL ELSE n END),"
                      " SUM(macro_f1 * n) / SUM(CASE WHEN macro_f1 IS NULL THEN NULL ELSE n END)"
                      " FROM round_evals WHERE version = ? AND n > 0";
    if (sqlite3_open_v2(path, &e->db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_busy_timeout(e->db, 5000) != SQLITE_OK ||
        sqlite3_prepare_v2(e->db, sql, -1, &e->st, NULL) != SQLITE_OK) {
        /* a journal from before evaluations were recorded has no round_evals: not an error */
        if (!e->db || !strstr(sqlite3_errmsg(e->db), "no such table"))
            fprintf(stderr, S_PROG " versions: %s: evaluation reports not readable (%s); "
                    "ACCURACY and MACRO_F1 show '-'\n", path, e->db ? sqlite3_errmsg(e->db) : "out of memory");
        sqlite3_close(e->db);
        e->db = NULL;
    }
}

/* "0.8731" or "-" (no report, or a value that is not a fraction) into out[8]. */
static void s_eval_cell(sqlite3_stmt *st, int col, char out[8])
{
    double v = sqlite3_column_double(st, col);
    if (sqlite3_column_type(st, col) == SQLITE_NULL || !(v >= 0 && v <= 1)) snprintf(out, 8, "-");
    else snprintf(out, 8, "%.4f", v);
}

static void s_evals_get(s_evals_t *e, uint64_t version, char acc[8], char f1[8])
{
    snprintf(acc, 8, "-");
    snprintf(f1, 8, "-");
    if (!e->st) return;
    sqlite3_reset(e->st);
    sqlite3_bind_int64(e->st, 1, (sqlite3_int64)version);
    int rc = sqlite3_step(e->st);
    if (rc == SQLITE_ROW) {
        s_eval_cell(e->st, 0, acc);
        s_eval_cell(e->st, 1, f1);
    } else if (rc != SQLITE_DONE) {
        fprintf(stderr, S_PROG " versions: evaluation reports of v%llu not readable: %s\n",
                (unsigned long long)version, sqlite3_errmsg(e->db));
    }
}

static void s_evals_close(s_evals_t *e)
{
    sqlite3_finalize(e->st);
    sqlite3_close(e->db);
    memset(e, 0, sizeof *e);
}

int cmd_versions(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " S_PROG " versions [-c CONFIG] [--state DIR] [--key-dir DIR | --pubkey HEX|FILE]\n\n"
               "Lists the signed version chain: version (* = head, where the next round starts),\n"
               "parent, round, participants, hash prefix, creation time (UTC), the accuracy and\n"
               "macro-F1 the nodes reported for the version (means weighted by their evaluation\n"
               "records, from the round journal in registry.db; '-' when none) and aggregated\n"
               "metrics. With the aggregator's public key every version is verified (signature,\n"
               "tensors, metadata, chain to genesis) and the listing fails on the first refusal.\n"
               "  -c CONFIG       aggregator config: state_dir and key_dir from it\n"
               "  --state DIR     aggregator state_dir (default /var/lib/medfl/aggregator)\n"
               "  --key-dir DIR   folder holding identity.pub\n"
               "  --pubkey K      Ed25519 public key as 64 hex digits or a file holding them\n");
        return 0;
    }
    s_args_t a;
    uint8_t pk[VS_PK_BYTES];
    bool have_pk;
    if (s_parse(argc, argv, &a) < 0 || a.n_pos || s_public_key(&a, pk, &have_pk) < 0) {
        if (a.n_pos && medfl_error_code() == MEDFL_OK)
            medfl_error_set(MEDFL_EINVAL, "unexpected argument '%s'", a.pos[0]);
        return cli_fail(S_PROG " versions");
    }
    vs_store_t *s = s_open_store(&a, false);
    if (!s) return cli_fail(S_PROG " versions");
    size_t n;
    const uint64_t *vs = vs_store_versions(s, &n);
    uint64_t head = vs_store_head(s);
    s_evals_t evals;
    s_evals_open(&evals, a.state);
    printf("%-8s %-7s %-6s %-12s %-16s %-20s %-8s %-8s %s\n", "VERSION", "PARENT", "ROUND",
           "PARTICIPANTS", "HASH", "CREATED", "ACCURACY", "MACRO_F1", "METRICS");
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        vs_manifest_t *m = NULL;
        if (have_pk) {
            if (vs_store_verify(s, vs[i], pk, &m, NULL) < 0) {
                rc = cli_fail(S_PROG " versions");
                break;
            }
        } else if (!(m = vs_store_manifest(s, vs[i]))) {
            rc = cli_fail(S_PROG " versions");
            break;
        }
        char hex[2 * VS_HASH_BYTES + 1], when[32], metrics[512] = "", ver[24];
        vs_hex(m->hash, VS_HASH_BYTES, hex);
        hex[16] = '\0';
        time_t t = (time_t)m->created;
        struct tm tmv;
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tmv));
        for (size_t k = 0; k < m->n_metrics; k++) {
            size_t l = strlen(metrics);
            snprintf(metrics + l, sizeof metrics - l, "%s%s=%.4g", l ? " " : "", m->metrics[k].name,
                     m->metrics[k].value);
        }
        snprintf(ver, sizeof ver, "%s%llu", vs[i] == head ? "*" : " ", (unsigned long long)m->version);
        char acc[8], f1[8];
        s_evals_get(&evals, m->version, acc, f1);
        printf("%-8s %-7llu %-6llu %-12zu %-16s %-20s %-8s %-8s %s\n", ver,
               (unsigned long long)m->parent, (unsigned long long)m->round, m->n_participants, hex,
               when, acc, f1, metrics[0] ? metrics : "-");
        vs_manifest_destroy(&m);
    }
    if (rc == 0) {
        printf("versions: %zu\nhead: %llu\n", n, (unsigned long long)head);
        if (have_pk) printf("verified: %zu\n", n);
    }
    s_evals_close(&evals);
    vs_store_destroy(&s);
    return rc;
}

int cmd_rollback(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " S_PROG " rollback VERSION [-c CONFIG | --state DIR] [--key-dir DIR | --pubkey K]\n\n"
               "Moves the head back to VERSION: the next round starts from it and the version it\n"
               "produces has VERSION as its parent. Nothing is deleted: later versions stay in\n"
               "the history. With a public key, VERSION's chain is verified first. Takes effect\n"
               "at the next round of a running aggregator. -c CONFIG takes state_dir and key_dir\n"
               "from the aggregator's config.\n");
        return 0;
    }
    s_args_t a;
    uint64_t v = 0;
    uint8_t pk[VS_PK_BYTES];
    bool have_pk;
    if (s_parse(argc, argv, &a) < 0 || s_public_key(&a, pk, &have_pk) < 0) return cli_fail(S_PROG " rollback");
    if (a.n_pos != 1) {
        medfl_error_set(MEDFL_EINVAL, "expected exactly one VERSION argument");
        return cli_fail(S_PROG " rollback");
    }
    if (s_parse_version(a.pos[0], &v) < 0) return cli_fail(S_PROG " rollback");
    vs_store_t *s = s_open_store(&a, false);
    if (!s) return cli_fail(S_PROG " rollback");
    int rc = 0;
    if ((have_pk && vs_store_verify(s, v, pk, NULL, NULL) < 0) || vs_store_rollback(s, v) < 0)
        rc = cli_fail(S_PROG " rollback");
    else
        printf("head: %llu\nlatest: %llu\n", (unsigned long long)v, (unsigned long long)vs_store_latest(s));
    vs_store_destroy(&s);
    return rc;
}

int cmd_export(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " S_PROG " export VERSION --peft DIR [-c CONFIG | --state DIR] [--key-dir DIR | --pubkey K]\n"
               "       [--lora-alpha A] [--base-model NAME] [--pooling mean|cls] [--model-prefix bert]\n"
               "       [--no-head]\n\n"
               "Writes DIR/adapter_model.safetensors and DIR/adapter_config.json so that\n"
               "PeftModel.from_pretrained(AutoModelForSequenceClassification(BASE), DIR) loads the\n"
               "version (task SEQ_CLS, the classifier as a module to save unless --no-head), plus\n"
               "DIR/label_config.json (id2label, label2id, medfl_pooling) and DIR/README.md (base\n"
               "model, labels, task, pooling, and how to predict as medfl does: medfl's head reads\n"
               "mean- or CLS-pooled hidden states, not BERT's pooler). lora_alpha, the base model,\n"
               "the labels and the pooling come from the version's attributes; the options\n"
               "override them. With a public key (--key-dir, or key_dir of -c CONFIG) the version\n"
               "is verified first.\n");
        return 0;
    }
    s_args_t a;
    uint64_t v = 0;
    uint8_t pk[VS_PK_BYTES];
    bool have_pk;
    if (s_parse(argc, argv, &a) < 0 || s_public_key(&a, pk, &have_pk) < 0) return cli_fail(S_PROG " export");
    if (a.n_pos != 1 || !a.peft) {
        medfl_error_set(MEDFL_EINVAL, "expected VERSION and --peft DIR");
        return cli_fail(S_PROG " export");
    }
    if (s_parse_version(a.pos[0], &v) < 0) return cli_fail(S_PROG " export");
    if (a.pooling && strcmp(a.pooling, "mean") != 0 && strcmp(a.pooling, "cls") != 0) {
        medfl_error_set(MEDFL_EINVAL, "--pooling '%s': expected mean or cls", a.pooling);
        return cli_fail(S_PROG " export");
    }
    vs_store_t *s = s_open_store(&a, false);
    if (!s) return cli_fail(S_PROG " export");
    versions_export_opts_t o = {.prefix = a.prefix, .lora_alpha = a.lora_alpha,
                                .base_model = a.base_model, .pooling = a.pooling,
                                .include_head = !a.no_head, .verified = have_pk};
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    int rc = 0;
    if (!vs_store_has(s, v)) {
        medfl_error_set(MEDFL_ENOTFOUND, "%s: version %llu does not exist", vs_store_dir(s),
                        (unsigned long long)v);
        rc = cli_fail(S_PROG " export");
    } else if ((have_pk ? vs_store_verify(s, v, pk, &m, &flat) : vs_store_load(s, v, &m, &flat)) < 0 ||
               versions_export_peft(m, flat, a.peft, &o) < 0) {
        rc = cli_fail(S_PROG " export");
    } else {
        const char *labels = vs_manifest_attr(m, "labels");
        const char *pooling = a.pooling ? a.pooling : vs_manifest_attr(m, "pooling");
        printf("exported: v%llu -> %s (%zu tensors, %zu parameters%s)\nlabels: %s\npooling: %s\n",
               (unsigned long long)v, a.peft, m->n_tensors, m->numel, have_pk ? ", verified" : "",
               labels ? "recorded (label_config.json)" : "not recorded",
               pooling ? pooling : "not recorded (give --pooling mean|cls)");
    }
    vs_manifest_destroy(&m);
    free(flat);
    vs_store_destroy(&s);
    return rc;
}

int cmd_init_version(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " S_PROG " init-version --from ADAPTER [-c CONFIG | --key-dir DIR --state DIR]\n"
               "       [--lora-alpha A] [--base-model NAME] [--model-prefix bert] [--force]\n\n"
               "Seeds the federation: writes a signed version (round 0, parent = current head)\n"
               "from a PEFT adapter (a folder with adapter_model.safetensors and\n"
               "adapter_config.json, or a .safetensors file), e.g. one trained locally. Refuses a\n"
               "store that already holds versions unless --force. Signs with identity.key of\n"
               "--key-dir (or key_dir of -c CONFIG) into --state (or state_dir of CONFIG).\n");
        return 0;
    }
    s_args_t a;
    if (s_parse(argc, argv, &a) < 0) return cli_fail(S_PROG " init-version");
    if (!a.from || !a.key_dir || a.n_pos) {
        medfl_error_set(MEDFL_EINVAL, "expected --from ADAPTER and --key-dir DIR (or -c CONFIG)");
        return cli_fail(S_PROG " init-version");
    }
    uint8_t sk[VS_SK_BYTES];
    char kpath[4096];
    snprintf(kpath, sizeof kpath, "%s/identity.key", a.key_dir);
    if (versions_read_hex_key(kpath, sk, sizeof sk, true) < 0) return cli_fail(S_PROG " init-version");
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    vs_store_t *s = NULL;
    int rc = 0;
    char abuf[64];
    if (versions_read_peft(a.from, a.prefix, &m, &flat) < 0) goto fail;
    if (a.lora_alpha > 0) {
        snprintf(abuf, sizeof abuf, "%.17g", a.lora_alpha);
        if (vs_manifest_set_attr(m, "lora_alpha", abuf) < 0) goto fail;
    }
    if (a.base_model && vs_manifest_set_attr(m, "base_model", a.base_model) < 0) goto fail;
    if (!vs_manifest_attr(m, "lora_alpha")) {
        medfl_error_set(MEDFL_EINVAL, "%s: lora_alpha unknown (no adapter_config.json): give --lora-alpha",
                        a.from);
        goto fail;
    }
    if (vs_manifest_set_attr(m, "source", "init-version") < 0) goto fail;
    if (!(s = s_open_store(&a, true))) goto fail;
    if (vs_store_latest(s) && !a.force) {
        medfl_error_set(MEDFL_ESTATE, "%s already holds %llu versions: seeding again needs --force",
                        vs_store_dir(s), (unsigned long long)vs_store_latest(s));
        goto fail;
    }
    if (vs_store_commit(s, m, flat, sk) < 0) goto fail;
    char hex[2 * VS_HASH_BYTES + 1];
    vs_hex(m->hash, VS_HASH_BYTES, hex);
    printf("version: %llu\nparent: %llu\ntensors: %zu\nparameters: %zu\nhash: %s\n",
           (unsigned long long)m->version, (unsigned long long)m->parent, m->n_tensors, m->numel, hex);
    goto done;
fail:
    rc = cli_fail(S_PROG " init-version");
done:
    sodium_memzero(sk, sizeof sk);
    vs_manifest_destroy(&m);
    free(flat);
    vs_store_destroy(&s);
    return rc;
}

/* ---------------------------------------------------------------- round step */

int versions_next(vs_store_t *s, const uint8_t sk[VS_SK_BYTES], const strategy_params_t *p,
                  const float *weighted_sum, size_t numel, double weight_total, uint64_t round,
                  const vs_participant_t *participants, size_t n_participants,
                  const vs_metric_t *metrics, size_t n_metrics, uint64_t *version_out)
{
    if (sodium_init() < 0) return medfl_error_set(MEDFL_ECRYPTO, "libsodium failed to initialise");
    uint64_t head = vs_store_head(s);
    if (!head)
        return medfl_error_set(MEDFL_ESTATE, "%s: no version to start from: seed one with init-version",
                               vs_store_dir(s));
    uint8_t pk[VS_PK_BYTES];
    crypto_sign_ed25519_sk_to_pk(pk, sk);
    vs_manifest_t *base = NULL, *m = NULL;
    float *x = NULL;
    strategy_t *opt = NULL;
    int rc = -1;
    /* Every round: the head's own checks plus its link to what this store verified before
     * (the whole chain only on the first call), so a round does not cost O(versions). */
    if (vs_store_verify_cached(s, head, pk, &base, &x) < 0) goto done;
    if (numel != base->numel) {
        medfl_error_set(MEDFL_EINVAL, "round %llu: weighted sum has %zu floats, head v%llu has %zu",
                        (unsigned long long)round, numel, (unsigned long long)head, base->numel);
        goto done;
    }
    char path[4096];
    strategy_state_path(vs_store_dir(s), head, path, sizeof path);
    if (p->kind == STRATEGY_FEDADAM && access(path, F_OK) == 0) {
        if (!(opt = strategy_load(path, p, numel))) goto done;
    } else if (!(opt = strategy_new(p, numel))) {
        goto done;
    }
    if (strategy_step(opt, x, weighted_sum, weight_total) < 0) goto done;
    if (!(m = vs_manifest_new())) goto done;
    for (size_t i = 0; i < base->n_tensors; i++)
        if (vs_manifest_add_tensor(m, base->tensors[i].name, base->tensors[i].ndim, base->tensors[i].shape) < 0)
            goto done;
    for (size_t i = 0; i < base->n_attrs; i++)
        if (vs_manifest_set_attr(m, base->attrs[i].key, base->attrs[i].value) < 0) goto done;
    for (size_t i = 0; i < n_participants; i++)
        if (vs_manifest_add_participant(m, participants[i].node, participants[i].weight) < 0) goto done;
    for (size_t i = 0; i < n_metrics; i++)
        if (vs_manifest_set_metric(m, metrics[i].name, metrics[i].value) < 0) goto done;
    m->round = round;
    if (p->kind == STRATEGY_FEDADAM) {
        strategy_state_path(vs_store_dir(s), vs_store_latest(s) + 1, path, sizeof path);
        if (strategy_save(opt, path) < 0) goto done;
    }
    if (vs_store_commit(s, m, x, sk) < 0) goto done;
    if (version_out) *version_out = m->version;
    rc = 0;
done:
    vs_manifest_destroy(&base);
    vs_manifest_destroy(&m);
    strategy_destroy(&opt);
    free(x);
    return rc;
}
