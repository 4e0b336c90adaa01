/* Node registry: id validation, enroll / revoke / re-enroll rules, duplicate keys,
 * connection state, two handles on one file (tool + daemon) and data_version. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/store.h"

static char s_root[] = "/tmp/medfl-test-store-XXXXXX";
static int s_counter;

static const char *s_newdb(void)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/r%d.db", s_root, s_counter++);
    return path;
}

static void s_key(uint8_t key[STORE_KEY_BYTES], int seed)
{
    for (int i = 0; i < STORE_KEY_BYTES; i++) key[i] = (uint8_t)(seed * 31 + i);
}

static int s_setup(void **state)
{
    (void)state;
    return mkdtemp(s_root) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_root);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_node_ids(void **state)
{
    (void)state;
    assert_int_equal(store_node_id_check("hospital-a"), 0);
    assert_int_equal(store_node_id_check("H_1.site-2"), 0);
    char max[STORE_NODE_ID_MAX + 2];
    memset(max, 'a', STORE_NODE_ID_MAX);
    max[STORE_NODE_ID_MAX] = '\0';
    assert_int_equal(store_node_id_check(max), 0);
    max[STORE_NODE_ID_MAX] = 'a';
    max[STORE_NODE_ID_MAX + 1] = '\0';
    assert_int_equal(store_node_id_check(max), -1);
    assert_int_equal(store_node_id_check(""), -1);
    assert_int_equal(store_node_id_check(NULL), -1);
    assert_int_equal(store_node_id_check("-rf"), -1);
    assert_int_equal(store_node_id_check(".."), -1);
    assert_int_equal(store_node_id_check("a b"), -1);
    assert_int_equal(store_node_id_check("a/b"), -1);
    assert_int_equal(store_node_id_check("x'; DROP TABLE nodes;--"), -1);
    assert_non_null(strstr(medfl_error_message(), "[A-Za-z0-9._-]"));
}

static void test_enroll_revoke_reenroll(void **state)
{
    (void)state;
    store_t *s = store_open(s_newdb());
    assert_non_null(s);
    uint8_t ka[STORE_KEY_BYTES], kb[STORE_KEY_BYTES], kc[STORE_KEY_BYTES], id[STORE_KEY_BYTES];
    s_key(ka, 1);
    s_key(kb, 2);
    s_key(kc, 3);
    s_key(id, 9);

    assert_int_equal(store_enroll(s, "a", ka, NULL, false), 0);
    assert_int_equal(store_enroll(s, "b", kb, id, false), 0);
    /* The same key twice under another id is refused. */
    assert_int_equal(store_enroll(s, "c", ka, NULL, false), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    assert_non_null(strstr(medfl_error_message(), "'a'"));
    /* Re-enrolling an active node with the same key is idempotent; another key needs replace. */
    assert_int_equal(store_enroll(s, "a", ka, NULL, false), 0);
    assert_int_equal(store_enroll(s, "a", kc, NULL, false), -1);
    assert_non_null(strstr(medfl_error_message(), "--replace"));
    assert_int_equal(store_enroll(s, "bad id", kc, NULL, false), -1);

    store_node_t n;
    assert_int_equal(store_node_get(s, "b", &n), 0);
    assert_true(n.has_identity);
    assert_memory_equal(n.identity_public, id, STORE_KEY_BYTES);
    assert_memory_equal(n.curve_public, kb, STORE_KEY_BYTES);
    assert_true(n.enrolled_at > 0);
    assert_int_equal(n.revoked_at, 0);
    assert_int_equal(store_node_by_key(s, ka, &n), 0);
    assert_string_equal(n.node_id, "a");
    assert_false(n.has_identity);
    assert_int_equal(store_node_by_key(s, kc, &n), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_int_equal(store_node_get(s, "zzz", &n), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);

    /* Connection state. */
    assert_int_equal(store_node_hello(s, "a", 1000, "cpu", 120, "medfl 0.1"), 0);
    assert_int_equal(store_node_hello(s, "ghost", 1000, "cpu", 1, "x"), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_int_equal(store_node_seen(s, "a", 1005), 0);
    int64_t count = -1;
    assert_int_equal(store_connected_count(s, &count), 0);
    assert_int_equal(count, 1);
    assert_int_equal(store_node_get(s, "a", &n), 0);
    assert_true(n.connected);
    assert_int_equal(n.last_seen, 1005);
    assert_string_equal(n.device, "cpu");
    assert_int_equal(n.n_records, 120);
    assert_string_equal(n.software, "medfl 0.1");

    /* Identity pinning happens once. */
    assert_int_equal(store_node_pin_identity(s, "a", id), 0);
    assert_int_equal(store_node_pin_identity(s, "a", kc), -1);
    assert_int_equal(store_node_get(s, "a", &n), 0);
    assert_memory_equal(n.identity_public, id, STORE_KEY_BYTES);

    /* Revoke: disconnected and marked; twice is an error; unknown is an error. */
    assert_int_equal(store_revoke(s, "a"), 0);
    assert_int_equal(store_node_get(s, "a", &n), 0);
    assert_true(n.revoked_at > 0);
    assert_false(n.connected);
    assert_int_equal(store_revoke(s, "a"), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    assert_int_equal(store_revoke(s, "nobody"), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);

    /* A revoked node's key still blocks reuse under another id. */
    assert_int_equal(store_enroll(s, "c", ka, NULL, false), -1);
    assert_non_null(strstr(medfl_error_message(), "revoked"));
    /* Re-enrollment with a new key reactivates and forgets the old pinned identity. */
    assert_int_equal(store_enroll(s, "a", kc, NULL, false), 0);
    assert_int_equal(store_node_get(s, "a", &n), 0);
    assert_int_equal(n.revoked_at, 0);
    assert_false(n.has_identity);
    assert_false(n.connected);
    assert_int_equal(n.last_seen, 0);
    assert_memory_equal(n.curve_public, kc, STORE_KEY_BYTES);

    store_node_t *list = NULL;
    size_t len = 0;
    assert_int_equal(store_node_list(s, &list, &len), 0);
    assert_int_equal(len, 2);
    assert_string_equal(list[0].node_id, "a");
    assert_string_equal(list[1].node_id, "b");
    free(list);

    assert_int_equal(store_node_hello(s, "b", 2000, "cuda", 5, "v"), 0);
    assert_int_equal(store_disconnect_all(s), 0);
    assert_int_equal(store_connected_count(s, &count), 0);
    assert_int_equal(count, 0);
    store_destroy(&s);
    store_destroy(&s);
}

static void test_two_handles_share_state(void **state)
{
    (void)state;
    const char *path = s_newdb();
    store_t *daemon = store_open(path);
    store_t *tool = store_open(path);
    assert_non_null(daemon);
    assert_non_null(tool);

    int64_t v0, v1, v2;
    assert_int_equal(store_data_version(daemon, &v0), 0);
    assert_int_equal(store_data_version(daemon, &v1), 0);
    assert_int_equal(v0, v1);
    /* The daemon's own writes do not look like a change made by someone else. */
    assert_int_equal(store_meta_set(daemon, "endpoint", "tcp://127.0.0.1:5555"), 0);
    assert_int_equal(store_data_version(daemon, &v1), 0);
    assert_int_equal(v0, v1);

    uint8_t k[STORE_KEY_BYTES];
    s_key(k, 5);
    assert_int_equal(store_enroll(tool, "site-1", k, NULL, false), 0);
    assert_int_equal(store_data_version(daemon, &v2), 0);
    assert_true(v2 != v1);
    store_node_t n;
    assert_int_equal(store_node_get(daemon, "site-1", &n), 0);

    char value[128];
    assert_int_equal(store_meta_get(tool, "endpoint", value, sizeof value), 0);
    assert_string_equal(value, "tcp://127.0.0.1:5555");
    assert_int_equal(store_meta_set(daemon, "endpoint", "tcp://127.0.0.1:6666"), 0);
    assert_int_equal(store_meta_get(tool, "endpoint", value, sizeof value), 0);
    assert_string_equal(value, "tcp://127.0.0.1:6666");
    assert_int_equal(store_meta_get(tool, "missing", value, sizeof value), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);

    store_destroy(&tool);
    store_destroy(&daemon);
}

static void test_open_errors(void **state)
{
    (void)state;
    assert_null(store_open("/nonexistent/dir/registry.db"));
    assert_int_equal(medfl_error_code(), MEDFL_EDB);
    assert_non_null(strstr(medfl_error_message(), "/nonexistent/dir/registry.db"));

    /* A file that is not a database is reported, not overwritten. */
    char path[600];
    snprintf(path, sizeof path, "%s/garbage.db", s_root);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 200; i++) fputs("this is not an sqlite database\n", f);
    fclose(f);
    assert_null(store_open(path));
    assert_int_equal(medfl_error_code(), MEDFL_EDB);
    assert_non_null(strstr(medfl_error_message(), "garbage.db"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_ids),
        cmocka_unit_test(test_enroll_revoke_reenroll),
        cmocka_unit_test(test_two_handles_share_state),
        cmocka_unit_test(test_open_errors),
    };
    return cmocka_run_group_tests_name("store", tests, s_setup, s_teardown);
}
