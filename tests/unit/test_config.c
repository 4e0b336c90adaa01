/* Config loader, error table and logging: strict parsing with errors naming file, line
 * and key; defaults, bounds, enums, paths; reload diffs; JSON log escaping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/error.h"
#include "common/log.h"

typedef struct {
    int64_t epochs;
    double lr;
    bool secure;
    char device[CFG_STR_MAX];
    char records[CFG_STR_MAX];
    char name[CFG_STR_MAX];
} demo_config_t;

static const cfg_option_t s_table[] = {
    {"train.epochs", CFG_INT, offsetof(demo_config_t, epochs), 1, 1000, "3", true, NULL, "epochs"},
    {"train.lr", CFG_DOUBLE, offsetof(demo_config_t, lr), 1e-7, 1, "0.001", true, NULL, "lr"},
    {"secure", CFG_BOOL, offsetof(demo_config_t, secure), 0, 0, "true", false, NULL, "secagg"},
    {"device", CFG_ENUM, offsetof(demo_config_t, device), 0, 0, "auto", false, "auto|cpu|cuda", "dev"},
    {"records", CFG_PATH, offsetof(demo_config_t, records), 0, 0, "data.jsonl", false, NULL, "recs"},
    {"name", CFG_STRING, offsetof(demo_config_t, name), 0, 0, NULL, false, NULL, "node id"},
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

static char s_dir[] = "/tmp/medfl-test-config-XXXXXX";

static const char *s_write(const char *name, const char *text)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static int s_setup(void **state)
{
    (void)state;
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_loads_values_and_defaults(void **state)
{
    (void)state;
    demo_config_t c;
    const char *p = s_write("ok.conf", "# comment\nname = hospital-a\n\n[train]\nepochs = 7 # inline\n"
                                       "lr=\"0.01\"\n");
    assert_int_equal(cfg_load(s_table, &c, p), 0);
    assert_int_equal(c.epochs, 7);
    assert_true(c.lr == 0.01);
    assert_true(c.secure);
    assert_string_equal(c.device, "auto");
    assert_string_equal(c.name, "hospital-a");
    char expect[700];
    snprintf(expect, sizeof expect, "%s/data.jsonl", s_dir);
    assert_string_equal(c.records, expect); /* relative to the config's folder */
}

static void s_expect_error(const char *text, const char *needle1, const char *needle2)
{
    demo_config_t c;
    const char *p = s_write("bad.conf", text);
    assert_int_equal(cfg_load(s_table, &c, p), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ECONFIG);
    const char *msg = medfl_error_message();
    if (!strstr(msg, needle1) || !strstr(msg, needle2) || !strstr(msg, "bad.conf"))
        fail_msg("error '%s' lacks '%s' / '%s'", msg, needle1, needle2);
}

static void test_errors_name_file_line_key(void **state)
{
    (void)state;
    s_expect_error("name = a\nbogus = 1\n", "bad.conf:2", "unknown key 'bogus'");
    s_expect_error("name = a\n[train]\nepochs = three\n", "bad.conf:3", "train.epochs");
    s_expect_error("name = a\n[train]\nepochs = 0\n", ":3", "outside");
    s_expect_error("name = a\n[train]\nlr = 5\n", ":3", "train.lr");
    s_expect_error("name = a\nsecure = maybe\n", ":2", "secure");
    s_expect_error("name = a\ndevice = tpu\n", ":2", "auto|cpu|cuda");
    s_expect_error("[train\nname = a\n", ":1", "section");
    s_expect_error("name = a\njust words\n", ":2", "key = value");
    s_expect_error("name = a\nname = b\n", ":2", "already set on line 1");
    s_expect_error("[train]\nepochs = 2\n", "required key", "name");
    s_expect_error("name = \"unterminated\n", ":1", "name");
    s_expect_error("name = a\n[train]\nepochs = 99999999999999999999999\n", ":3", "epochs");
}

static void test_missing_file(void **state)
{
    (void)state;
    demo_config_t c;
    assert_int_equal(cfg_load(s_table, &c, "/nonexistent/x.conf"), -1);
    assert_non_null(strstr(medfl_error_message(), "/nonexistent/x.conf"));
}

static void test_reload_diff(void **state)
{
    (void)state;
    demo_config_t a, b;
    assert_int_equal(cfg_load(s_table, &a, s_write("a.conf", "name = x\n")), 0);
    b = a;
    b.epochs = 9; /* reloadable */
    assert_int_equal(cfg_diff_nonreloadable(s_table, &a, &b, NULL, 0), 0);
    snprintf(b.device, sizeof b.device, "cpu");
    b.secure = false;
    char names[128];
    assert_int_equal(cfg_diff_nonreloadable(s_table, &a, &b, names, sizeof names), 2);
    assert_string_equal(names, "secure, device");
    assert_int_equal(cfg_set(s_table, &b, "train.epochs", "5", "--set"), 0);
    assert_int_equal(b.epochs, 5);
    assert_int_equal(cfg_set(s_table, &b, "nope", "5", "--set"), -1);
}

static void test_example_is_loadable(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/example.conf", s_dir);
    FILE *f = fopen(path, "w");
    cfg_write_example(s_table, f);
    fclose(f);
    demo_config_t c;
    /* Required keys appear with an empty value, which is present and loadable. */
    assert_int_equal(cfg_load(s_table, &c, path), 0);
    assert_int_equal(c.epochs, 3);
}

/* The whole program's table: the demo table's options plus keys of other commands. */
typedef struct {
    demo_config_t demo;
    int64_t foreign;
    char other_key[CFG_STR_MAX];
} whole_config_t;

static const cfg_option_t s_whole[] = {
    {"train.epochs", CFG_INT, offsetof(whole_config_t, demo.epochs), 1, 1000, "3", true, NULL, "epochs"},
    {"train.lr", CFG_DOUBLE, offsetof(whole_config_t, demo.lr), 1e-7, 1, "0.001", true, NULL, "lr"},
    {"secure", CFG_BOOL, offsetof(whole_config_t, demo.secure), 0, 0, "true", false, NULL, "secagg"},
    {"device", CFG_ENUM, offsetof(whole_config_t, demo.device), 0, 0, "auto", false, "auto|cpu|cuda", "dev"},
    {"records", CFG_PATH, offsetof(whole_config_t, demo.records), 0, 0, "data.jsonl", false, NULL, "recs"},
    {"name", CFG_STRING, offsetof(whole_config_t, demo.name), 0, 0, NULL, false, NULL, "node id"},
    {"foreign", CFG_INT, offsetof(whole_config_t, foreign), 0, 10, "0", false, NULL, "other"},
    {"other.key", CFG_STRING, offsetof(whole_config_t, other_key), 0, 0, "", false, NULL, "other"},
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

static void test_subset_skips_foreign_keys(void **state)
{
    (void)state;
    demo_config_t c;
    const char *p = s_write("subset.conf", "name = a\nforeign = 1\n[other]\nkey = x\n[train]\nepochs = 4\n");
    assert_int_equal(cfg_load(s_table, &c, p), -1); /* the full loader refuses */
    assert_int_equal(cfg_load_subset(s_table, s_whole, &c, p), 0);
    assert_int_equal(c.epochs, 4);
    /* Known keys are still checked. */
    p = s_write("subset.conf", "name = a\nforeign = 1\n[train]\nepochs = 0\n");
    assert_int_equal(cfg_load_subset(s_table, s_whole, &c, p), -1);
    assert_non_null(strstr(medfl_error_message(), "subset.conf:4: key 'train.epochs'"));
}

/* A typo is refused by a command reading part of the file, as by the program owning it. */
static void test_subset_refuses_typos(void **state)
{
    (void)state;
    demo_config_t c;
    const char *p = s_write("typo.conf", "name = a\n[train]\nepochs = 4\nepoch = 5\n");
    assert_int_equal(cfg_load_subset(s_table, s_whole, &c, p), -1);
    assert_non_null(strstr(medfl_error_message(), "typo.conf:4: unknown key 'train.epoch'"));
    /* A key of a known section that no command knows. */
    p = s_write("typo.conf", "name = a\n[other]\nkey = x\nkye = y\n");
    assert_int_equal(cfg_load_subset(s_table, s_whole, &c, p), -1);
    assert_non_null(strstr(medfl_error_message(), "typo.conf:4: unknown key 'other.kye'"));
    /* A misspelt section is named even when empty, in both loaders. */
    p = s_write("typo.conf", "name = a\n[trian]\n");
    assert_int_equal(cfg_load_subset(s_table, s_whole, &c, p), -1);
    assert_non_null(strstr(medfl_error_message(), "typo.conf:2: unknown section '[trian]'"));
    assert_int_equal(cfg_load(s_table, &c, p), -1);
    assert_non_null(strstr(medfl_error_message(), "typo.conf:2: unknown section '[trian]'"));
    /* A top-level typo. */
    p = s_write("typo.conf", "name = a\nrecord = x.jsonl\n");
    assert_int_equal(cfg_load_subset(s_table, s_whole, &c, p), -1);
    assert_non_null(strstr(medfl_error_message(), "typo.conf:2: unknown key 'record'"));
}

static void test_error_table(void **state)
{
    (void)state;
    for (int i = 0; i < MEDFL_ERR_COUNT; i++)
        assert_string_not_equal(medfl_strerror((medfl_err_t)i), "unknown error");
    assert_string_equal(medfl_strerror((medfl_err_t)999), "unknown error");
    medfl_error_set(MEDFL_EIO, "x.h5: short read");
    medfl_error_prefix("loading model: ");
    assert_string_equal(medfl_error_message(), "loading model: x.h5: short read");
    assert_int_equal(medfl_error_code(), MEDFL_EIO);
    medfl_error_clear();
    assert_string_equal(medfl_error_message(), "success");
}

static void test_log_json(void **state)
{
    (void)state;
    char buf[256];
    log_json_escape("a\"b\\c\nd\x01", buf, sizeof buf);
    assert_string_equal(buf, "a\\\"b\\\\c\\nd\\u0001");
    char *out = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&out, &len);
    log_configure(mem, LOG_LEVEL_INFO, LOG_FORMAT_JSON);
    log_set_identity("medfl-test", "site-1");
    LOG_DEBUG(NET, "hidden");
    LOG_WARN(NET, "key %s refused", "abc\"");
    fclose(mem);
    log_configure(NULL, LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    assert_null(strstr(out, "hidden"));
    assert_non_null(strstr(out, "\"level\":\"warn\",\"domain\":\"net\",\"program\":\"medfl-test\""));
    assert_non_null(strstr(out, "\"instance\":\"site-1\""));
    assert_non_null(strstr(out, "\"msg\":\"key abc\\\" refused\"}\n"));
    free(out);
    log_level_t lv;
    assert_int_equal(log_level_parse("WARN", &lv), 0);
    assert_int_equal(lv, LOG_LEVEL_WARN);
    assert_int_equal(log_level_parse("loud", &lv), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loads_values_and_defaults),
        cmocka_unit_test(test_errors_name_file_line_key),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_reload_diff),
        cmocka_unit_test(test_example_is_loadable),
        cmocka_unit_test(test_subset_skips_foreign_keys),
        cmocka_unit_test(test_subset_refuses_typos),
        cmocka_unit_test(test_error_table),
        cmocka_unit_test(test_log_json),
    };
    return cmocka_run_group_tests_name("config", tests, s_setup, s_teardown);
}
