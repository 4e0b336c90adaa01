/* Hugging Face BERT folder -> base model HDF5. A checkpoint may come from BertModel ("x"),
 * BertFor* heads ("bert.x", plus pooler/cls/classifier tensors we do not use) or old TF
 * conversions (LayerNorm.gamma/beta); all map onto BertModel's names. Unsupported
 * architectures are refused by name rather than imported into something subtly wrong. */
#include "node/importer.h"

#include <cjson/cJSON.h>
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
#include "common/tokenizer.h"
#include "node/commands.h"

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

int model_import_hf(const char *dir, const char *out_path)
{
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
    if (base_file_write(out_path, &cfg, vocab, (size_t)cfg.vocab_size, tensors, n_specs, dir) < 0)
        goto done;
    LOG_INFO(MAIN, "imported %s -> %s: %lld layers, hidden %lld, %zu tensors (%zu ignored), "
                   "vocabulary %lld, %s", dir, out_path, (long long)cfg.num_hidden_layers,
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
    fprintf(out, "Usage: medfl-node import-model --hf DIR -o BASE.h5\n\n"
                 "Imports a Hugging Face BERT model folder (config.json, model.safetensors,\n"
                 "vocab.txt, optional tokenizer_config.json) into the node's base model file.\n");
}

int cmd_import_model(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage(stdout);
        return 0;
    }
    const char *dir = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "--hf") == 0) && i + 1 < argc)
            dir = argv[++i];
        else if ((strcmp(argv[i], "-o") == 0 || strcmp(argv[i], "--output") == 0) && i + 1 < argc)
            out = argv[++i];
        else {
            medfl_error_set(MEDFL_EINVAL, "import-model: unexpected argument '%s'", argv[i]);
            s_usage(stderr);
            return cli_fail("medfl-node");
        }
    }
    if (!dir || !out) {
        s_usage(stderr);
        return 2;
    }
    if (model_import_hf(dir, out) < 0) return cli_fail("medfl-node");
    printf("imported %s -> %s\n", dir, out);
    return 0;
}
