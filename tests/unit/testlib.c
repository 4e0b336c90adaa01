/* Fixture helpers shared by the unit tests: see testlib.h. File-scope state is fine here
 * (one fixture per test binary, set up once by the group setup); library code never does
 * this. */
#include "tests/unit/testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/engine/base_file.h"
#include "common/error.h"

static char s_dir[600];
static char s_log_path[700];
static FILE *s_log;

const char *testlib_setup(const char *name, bool capture_log, log_level_t level)
{
    if (sodium_init() < 0) return NULL;
    snprintf(s_dir, sizeof s_dir, "/tmp/medfl-test-%s-XXXXXX", name);
    if (!mkdtemp(s_dir)) return NULL;
    if (!capture_log) {
        log_configure(stderr, level, LOG_FORMAT_TEXT);
        return s_dir;
    }
    snprintf(s_log_path, sizeof s_log_path, "%s/%s.log", s_dir, name);
    s_log = fopen(s_log_path, "w+");
    if (!s_log) return NULL;
    log_configure(s_log, level, LOG_FORMAT_TEXT);
    return s_dir;
}

int testlib_teardown(void)
{
    log_configure(NULL, LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    if (s_log) fclose(s_log);
    s_log = NULL;
    if (!s_dir[0] || getenv("MEDFL_TEST_KEEP")) return 0;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

bool testlib_log_has(const char *needle)
{
    if (!s_log) return false;
    fflush(s_log);
    FILE *f = fopen(s_log_path, "r");
    if (!f) return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

void testlib_log_reset(void)
{
    assert_non_null(s_log);
    fflush(s_log);
    assert_int_equal(ftruncate(fileno(s_log), 0), 0);
    rewind(s_log);
}

uint64_t testlib_rng(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int testlib_write_tiny_bert(const char *path, const char *const *words, size_t n_words,
                            const char *source)
{
    static const char *const spec[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","};
    const size_t n_spec = sizeof spec / sizeof *spec;
    base_config_t c;
    memset(&c, 0, sizeof c);
    snprintf(c.model_type, sizeof c.model_type, "bert");
    snprintf(c.hidden_act, sizeof c.hidden_act, "gelu");
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.intermediate_size = 64;
    c.max_position_embeddings = 64;
    c.type_vocab_size = 2;
    c.pad_token_id = 0;
    c.layer_norm_eps = 1e-12;
    c.do_lower_case = true;
    const char **vocab = calloc(n_spec + n_words, sizeof *vocab);
    if (!vocab) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    size_t nv = 0;
    for (size_t i = 0; i < n_spec; i++) vocab[nv++] = spec[i];
    for (size_t i = 0; i < n_words; i++) vocab[nv++] = words[i];
    c.vocab_size = (int64_t)nv;
    base_tensor_spec_t *specs;
    size_t ns;
    if (base_tensor_specs(&c, &specs, &ns) != 0) {
        free(vocab);
        return -1;
    }
    named_tensor_t *ts = calloc(ns, sizeof *ts);
    if (!ts) {
        free(specs);
        free(vocab);
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    }
    uint64_t st = 42;
    for (size_t i = 0; i < ns; i++) {
        ts[i].name = specs[i].name;
        ts[i].ndim = specs[i].ndim;
        size_t n = 1;
        for (int d = 0; d < specs[i].ndim; d++) {
            ts[i].shape[d] = specs[i].shape[d];
            n *= (size_t)specs[i].shape[d];
        }
        ts[i].data = malloc(n * sizeof(float));
        bool ln = strstr(specs[i].name, "LayerNorm") != NULL;
        bool bias = strstr(specs[i].name, "bias") != NULL;
        for (size_t j = 0; j < n; j++) {
            double u = (double)(testlib_rng(&st) >> 11) / 9007199254740992.0;
            ts[i].data[j] = ln && !bias ? 1.0f : bias ? 0.0f : (float)((u - 0.5) * 0.2);
        }
    }
    int rc = base_file_write(path, &c, vocab, nv, ts, ns, source, "tiny-random-bert");
    for (size_t i = 0; i < ns; i++) free(ts[i].data);
    free(ts);
    free(specs);
    free(vocab);
    return rc;
}

const char *testlib_smollm2_gguf(void)
{
    const char *env = getenv("MEDFL_SMOLLM2_GGUF");
    const char *path = env && *env ? env : TESTLIB_SMOLLM2_CACHE;
    return access(path, R_OK) == 0 ? path : NULL;
}
