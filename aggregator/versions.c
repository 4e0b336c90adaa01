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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/agg_config.h"
#include "common/adapter_file.h"
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

/* Sort key reproducing the model's trainable layout (common/model: layers, targets in
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

/* ---------------------------------------------------------------- export */

int versions_export_peft(const vs_manifest_t *m, const float *flat, const char *dir,
                         const char *prefix, double lora_alpha, const char *base_model,
                         bool include_head)
{
    if (lora_alpha <= 0) {
        const char *a = vs_manifest_attr(m, "lora_alpha");
        char *end = NULL;
        if (a) lora_alpha = strtod(a, &end);
        if (!a || end == a || *end || !(lora_alpha > 0))
            return medfl_error_set(MEDFL_EINVAL,
                                   "v%06llu: no valid 'lora_alpha' attribute; give --lora-alpha",
                                   (unsigned long long)m->version);
    }
    if (!base_model) base_model = vs_manifest_attr(m, "base_model");
    named_tensor_t *list = calloc(m->n_tensors ? m->n_tensors : 1, sizeof *list);
    if (!list) return medfl_error_set(MEDFL_ENOMEM, "export: out of memory");
    for (size_t i = 0; i < m->n_tensors; i++) {
        const vs_tensor_info_t *t = &m->tensors[i];
        list[i].name = t->name;
        list[i].ndim = t->ndim;
        memcpy(list[i].shape, t->shape, sizeof list[i].shape);
        list[i].data = (float *)(flat + t->offset);
    }
    adapter_peft_opts_t o = {.task = ADAPTER_PEFT_SEQ_CLS, .prefix = prefix,
                             .include_head = include_head, .lora_alpha = lora_alpha,
                             .base_model = base_model};
    int rc = adapter_peft_write(dir, list, m->n_tensors, &o);
    if (rc < 0) medfl_error_prefix("v%06llu: ", (unsigned long long)m->version);
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

int cmd_versions(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " S_PROG " versions [-c CONFIG] [--state DIR] [--key-dir DIR | --pubkey HEX|FILE]\n\n"
               "Lists the signed version chain: version (* = head, where the next round starts),\n"
               "parent, round, participants, hash prefix, creation time (UTC) and aggregated\n"
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
    printf("%-8s %-7s %-6s %-12s %-16s %-20s %s\n", "VERSION", "PARENT", "ROUND", "PARTICIPANTS",
           "HASH", "CREATED", "METRICS");
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
        printf("%-8s %-7llu %-6llu %-12zu %-16s %-20s %s\n", ver, (unsigned long long)m->parent,
               (unsigned long long)m->round, m->n_participants, hex, when, metrics[0] ? metrics : "-");
        vs_manifest_destroy(&m);
    }
    if (rc == 0) {
        printf("versions: %zu\nhead: %llu\n", n, (unsigned long long)head);
        if (have_pk) printf("verified: %zu\n", n);
    }
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
               "       [--lora-alpha A] [--base-model NAME] [--model-prefix bert] [--no-head]\n\n"
               "Writes DIR/adapter_model.safetensors and DIR/adapter_config.json so that\n"
               "PeftModel.from_pretrained(AutoModelForSequenceClassification(BASE), DIR) loads the\n"
               "version (task SEQ_CLS, the classifier as a module to save unless --no-head).\n"
               "lora_alpha and the base model default to the version's attributes. With a public\n"
               "key (--key-dir, or key_dir of -c CONFIG) the version is verified first.\n");
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
    vs_store_t *s = s_open_store(&a, false);
    if (!s) return cli_fail(S_PROG " export");
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    int rc = 0;
    if (!vs_store_has(s, v)) {
        medfl_error_set(MEDFL_ENOTFOUND, "%s: version %llu does not exist", vs_store_dir(s),
                        (unsigned long long)v);
        rc = cli_fail(S_PROG " export");
    } else if ((have_pk ? vs_store_verify(s, v, pk, &m, &flat) : vs_store_load(s, v, &m, &flat)) < 0 ||
               versions_export_peft(m, flat, a.peft, a.prefix, a.lora_alpha, a.base_model, !a.no_head) < 0) {
        rc = cli_fail(S_PROG " export");
    } else {
        printf("exported: v%llu -> %s (%zu tensors, %zu parameters%s)\n", (unsigned long long)v, a.peft,
               m->n_tensors, m->numel, have_pk ? ", verified" : "");
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
