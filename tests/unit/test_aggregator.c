/* The aggregator daemon in-process, driven step by step, against a raw ZeroMQ CURVE
 * DEALER holding an enrolled key: garbage, truncated, oversized, wrong-version and
 * extra-frame messages are rejected with a logged reason while the daemon keeps serving;
 * a valid Hello is welcomed and recorded in the registry; a heartbeat before Hello asks
 * for a Hello; revocation through a second registry handle (as `revoke` does) cuts the
 * session off; a silent node is marked disconnected. Also the node's record counting and
 * the cross-option checks of both config loaders. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "aggregator/agg_config.h"
#include "aggregator/aggregator.h"
#include "common/error.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/service.h"
#include "common/store.h"
#include "common/wire.h"
#include "node/node.h"
#include "node/node_config.h"
#include "tests/unit/testlib.h"

static const char *s_root; /* testlib_setup's folder */

typedef struct {
    agg_config_t cfg;
    aggregator_t *agg;
    keys_t *server_keys;
    keys_t *node_keys;
    void *ctx;
    void *sock;
} fixture_t;

static int s_setup(void **state)
{
    (void)state;
    return (s_root = testlib_setup("aggregator", true, LOG_LEVEL_DEBUG)) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    return testlib_teardown();
}

static void s_start(fixture_t *fx, const char *name, int64_t heartbeat_timeout_ms)
{
    memset(fx, 0, sizeof *fx);
    char dir[700];
    snprintf(dir, sizeof dir, "%s/%s", s_root, name);
    assert_int_equal(cfg_set_defaults(agg_config_table, &fx->cfg), 0);
    snprintf(fx->cfg.key_dir, sizeof fx->cfg.key_dir, "%s/keys", dir);
    snprintf(fx->cfg.state_dir, sizeof fx->cfg.state_dir, "%s/state", dir);
    snprintf(fx->cfg.bind, sizeof fx->cfg.bind, "tcp://127.0.0.1:*");
    fx->cfg.heartbeat_ivl_ms = 100;
    fx->cfg.heartbeat_timeout_ms = heartbeat_timeout_ms;
    fx->cfg.registry_poll_ms = 100;
    assert_int_equal(service_mkdir_p(dir, 0700), 0);
    fx->server_keys = keys_generate();
    assert_int_equal(keys_save(fx->server_keys, fx->cfg.key_dir, false), 0);

    /* Enroll the raw client's key as "site-1", as `medfl-aggregator enroll` would. */
    fx->node_keys = keys_generate();
    assert_int_equal(service_mkdir_p(fx->cfg.state_dir, 0700), 0);
    char db[CFG_STR_MAX + 32];
    agg_config_registry_path(&fx->cfg, db, sizeof db);
    store_t *tool = store_open(db);
    assert_non_null(tool);
    assert_int_equal(store_enroll(tool, "site-1", fx->node_keys->curve_public, NULL, false), 0);
    store_destroy(&tool);

    fx->agg = aggregator_new(&fx->cfg, NULL);
    if (!fx->agg) fail_msg("aggregator_new: %s", medfl_error_message());

    fx->ctx = zmq_ctx_new();
    fx->sock = zmq_socket(fx->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(fx->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(fx->sock, ZMQ_CURVE_SERVERKEY, fx->server_keys->curve_public, 32);
    zmq_setsockopt(fx->sock, ZMQ_CURVE_PUBLICKEY, fx->node_keys->curve_public, 32);
    zmq_setsockopt(fx->sock, ZMQ_CURVE_SECRETKEY, fx->node_keys->curve_secret, 32);
    assert_int_equal(zmq_connect(fx->sock, aggregator_endpoint(fx->agg)), 0);
}

static void s_stop(fixture_t *fx)
{
    zmq_close(fx->sock);
    zmq_ctx_term(fx->ctx);
    aggregator_destroy(&fx->agg);
    aggregator_destroy(&fx->agg);
    keys_destroy(&fx->server_keys);
    keys_destroy(&fx->node_keys);
}

/* Runs the aggregator until the raw socket receives one message (decoded into *out) or
 * the time runs out. */
static bool s_pump_reply(fixture_t *fx, wire_decoded_t *out, int timeout_ms)
{
    int64_t end = service_now_ms() + timeout_ms;
    while (service_now_ms() < end) {
        aggregator_step(fx->agg, 20);
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, fx->sock, ZMQ_DONTWAIT) >= 0) {
            int rc = wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), out);
            zmq_msg_close(&m);
            assert_int_equal(rc, 0);
            return true;
        }
        zmq_msg_close(&m);
    }
    return false;
}

/* Waits for the next reply that is not a heartbeat echo. */
static bool s_pump_reply_type(fixture_t *fx, wire_decoded_t *out, int timeout_ms)
{
    int64_t end = service_now_ms() + timeout_ms;
    while (service_now_ms() < end) {
        if (!s_pump_reply(fx, out, (int)(end - service_now_ms()))) return false;
        if (out->type != MEDFL__MSG_TYPE__MSG_HEARTBEAT) return true;
        wire_decoded_clear(out);
    }
    return false;
}

static void s_pump(fixture_t *fx, int ms)
{
    int64_t end = service_now_ms() + ms;
    while (service_now_ms() < end) aggregator_step(fx->agg, 20);
}

static void s_send_raw(fixture_t *fx, const void *data, size_t len, int flags)
{
    assert_int_equal(zmq_send(fx->sock, data, len, flags), (int)len);
}

static void s_encode_hello(const fixture_t *fx, uint8_t **buf, size_t *len)
{
    Medfl__Capabilities caps = MEDFL__CAPABILITIES__INIT;
    caps.device = (char *)"cpu";
    caps.n_records = 42;
    caps.software_version = (char *)"test";
    Medfl__Hello hello = MEDFL__HELLO__INIT;
    hello.node_id = (char *)"site-1";
    hello.identity_pk.data = fx->node_keys->sign_public;
    hello.identity_pk.len = 32;
    hello.capabilities = &caps;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HELLO, 0, "site-1", &hello.base, buf, len), 0);
}

static void s_expect_error(fixture_t *fx, Medfl__ErrorCode code)
{
    wire_decoded_t d;
    if (!s_pump_reply_type(fx, &d, 3000)) fail_msg("no reply (expected error %d)", (int)code);
    assert_int_equal(d.type, MEDFL__MSG_TYPE__MSG_ERROR);
    assert_int_equal(d.body.error->code, code);
    wire_decoded_clear(&d);
}

static void s_expect_welcome(fixture_t *fx)
{
    wire_decoded_t d;
    if (!s_pump_reply_type(fx, &d, 3000)) fail_msg("no welcome");
    assert_int_equal(d.type, MEDFL__MSG_TYPE__MSG_WELCOME);
    assert_int_equal(d.body.welcome->instance_id.len, WIRE_INSTANCE_ID_LEN);
    assert_int_equal(d.body.welcome->heartbeat_ivl_ms, 100);
    wire_decoded_clear(&d);
}

static void test_bad_messages_then_hello(void **state)
{
    (void)state;
    fixture_t fx;
    s_start(&fx, "bad", 600);

    /* Heartbeat before hello: asked to say hello. */
    Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, "site-1", &hb.base, &buf, &len), 0);
    s_send_raw(&fx, buf, len, 0);
    free(buf);
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_STATE);

    /* Garbage. */
    const char garbage[] = "\xff\xfe this is not a protobuf envelope \x01\x02\x03";
    s_send_raw(&fx, garbage, sizeof garbage, 0);
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_PROTOCOL);

    /* Truncated hello. */
    s_encode_hello(&fx, &buf, &len);
    s_send_raw(&fx, buf, len / 2, 0);
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_PROTOCOL);

    /* Wrong protocol version. */
    Medfl__Envelope env = MEDFL__ENVELOPE__INIT;
    env.protocol_version = WIRE_PROTOCOL_VERSION + 7;
    env.type = MEDFL__MSG_TYPE__MSG_HEARTBEAT;
    env.sender = (char *)"site-1";
    uint8_t packed[256];
    size_t plen = medfl__envelope__pack(&env, packed);
    s_send_raw(&fx, packed, plen, 0);
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_VERSION);

    /* Oversized envelope frame: above the transport's limit (sized from the model, at least
     * WIRE_ENVELOPE_MAX), so libzmq drops the connection before anything is decoded; no
     * reply. The DEALER reconnects by itself and the checks below go on over the new one. */
    size_t big_len = WIRE_ENVELOPE_MAX + 1;
    uint8_t *big = calloc(1, big_len);
    assert_non_null(big);
    s_send_raw(&fx, big, big_len, 0);
    free(big);
    wire_decoded_t none;
    if (s_pump_reply_type(&fx, &none, 1000)) {
        wire_decoded_clear(&none);
        fail_msg("an envelope frame above the transport limit was answered");
    }

    /* Three frames where at most two are allowed. */
    s_send_raw(&fx, buf, len, ZMQ_SNDMORE);
    s_send_raw(&fx, "x", 1, ZMQ_SNDMORE);
    s_send_raw(&fx, "y", 1, 0);
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_PROTOCOL);

    /* Hello claiming another node id than the key's enrollment. */
    Medfl__Hello other = MEDFL__HELLO__INIT;
    other.node_id = (char *)"site-2";
    other.identity_pk.data = fx.node_keys->sign_public;
    other.identity_pk.len = 32;
    Medfl__Capabilities caps = MEDFL__CAPABILITIES__INIT;
    other.capabilities = &caps;
    uint8_t *obuf = NULL;
    size_t olen = 0;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HELLO, 0, "site-1", &other.base, &obuf, &olen), 0);
    s_send_raw(&fx, obuf, olen, 0);
    free(obuf);
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_PROTOCOL);
    assert_int_equal(aggregator_session_count(fx.agg), 0);

    /* After all that, the daemon still welcomes a valid hello. */
    s_send_raw(&fx, buf, len, 0);
    free(buf);
    s_expect_welcome(&fx);
    assert_int_equal(aggregator_session_count(fx.agg), 1);
    assert_true(testlib_log_has("rejected message from"));
    assert_true(testlib_log_has("claims node id 'site-2'"));

    /* The registry shows the session and the pinned identity. */
    char db[CFG_STR_MAX + 32];
    agg_config_registry_path(&fx.cfg, db, sizeof db);
    store_t *tool = store_open(db);
    assert_non_null(tool);
    store_node_t n;
    assert_int_equal(store_node_get(tool, "site-1", &n), 0);
    assert_true(n.connected);
    assert_int_equal(n.n_records, 42);
    assert_string_equal(n.device, "cpu");
    assert_true(n.has_identity);
    assert_memory_equal(n.identity_public, fx.node_keys->sign_public, 32);

    /* A different identity key in a later hello is refused. */
    Medfl__Hello imp = MEDFL__HELLO__INIT;
    uint8_t wrong[32];
    memset(wrong, 7, sizeof wrong);
    imp.node_id = (char *)"site-1";
    imp.identity_pk.data = wrong;
    imp.identity_pk.len = 32;
    imp.capabilities = &caps;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HELLO, 0, "site-1", &imp.base, &obuf, &olen), 0);
    s_send_raw(&fx, obuf, olen, 0);
    free(obuf);
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_PROTOCOL);
    assert_true(testlib_log_has("identity key differs"));

    /* Silence: the session times out and the registry says disconnected. */
    int64_t end = service_now_ms() + 5000;
    while (aggregator_session_count(fx.agg) != 0 && service_now_ms() < end) s_pump(&fx, 100);
    assert_int_equal(aggregator_session_count(fx.agg), 0);
    assert_int_equal(store_node_get(tool, "site-1", &n), 0);
    assert_false(n.connected);
    assert_true(testlib_log_has("marked disconnected"));

    /* It was only busy: its next heartbeat re-admits it, without "say hello first". */
    testlib_log_reset();
    Medfl__Heartbeat busy = MEDFL__HEARTBEAT__INIT;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, "site-1", &busy.base, &obuf,
                                 &olen), 0);
    s_send_raw(&fx, obuf, olen, 0);
    free(obuf);
    end = service_now_ms() + 3000;
    while (aggregator_session_count(fx.agg) != 1 && service_now_ms() < end) s_pump(&fx, 20);
    assert_int_equal(aggregator_session_count(fx.agg), 1);
    assert_true(testlib_log_has("site-1 heard again after"));
    assert_false(testlib_log_has("before its hello"));
    assert_int_equal(store_node_get(tool, "site-1", &n), 0);
    assert_true(n.connected);

    /* Registry writes that leave the allowlist as it was are not logged at INFO. */
    testlib_log_reset();
    assert_int_equal(store_meta_set(tool, "note", "x"), 0);
    s_pump(&fx, 400);
    assert_true(testlib_log_has("allowlist unchanged"));
    assert_false(testlib_log_has("allowlist loaded"));
    assert_int_equal(store_enroll(tool, "site-9", fx.server_keys->curve_public, NULL, false), 0);
    s_pump(&fx, 400);
    assert_true(testlib_log_has("allowlist loaded: 2 enrolled node(s) active"));
    store_destroy(&tool);
    s_stop(&fx);
}

static void test_revocation_cuts_off(void **state)
{
    (void)state;
    fixture_t fx;
    /* A long timeout: the session must end by revocation, not by silence. */
    s_start(&fx, "revoke", 10000);
    uint8_t *buf = NULL;
    size_t len = 0;
    s_encode_hello(&fx, &buf, &len);
    s_send_raw(&fx, buf, len, 0);
    free(buf);
    s_expect_welcome(&fx);

    char db[CFG_STR_MAX + 32];
    agg_config_registry_path(&fx.cfg, db, sizeof db);
    store_t *tool = store_open(db);
    assert_non_null(tool);
    assert_int_equal(store_revoke(tool, "site-1"), 0);
    /* Within registry.poll_ms the daemon notices and tells the node. */
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_REVOKED);
    assert_int_equal(aggregator_session_count(fx.agg), 0);
    assert_true(testlib_log_has("no longer enrolled"));

    /* Anything it still sends is dropped and answered REVOKED. */
    Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT;
    assert_int_equal(wire_encode(MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, "site-1", &hb.base, &buf, &len), 0);
    s_send_raw(&fx, buf, len, 0);
    free(buf);
    s_expect_error(&fx, MEDFL__ERROR_CODE__ERROR_REVOKED);
    assert_int_equal(aggregator_session_count(fx.agg), 0);
    store_destroy(&tool);
    s_stop(&fx);
}

static void test_count_records(void **state)
{
    (void)state;
    char path[700];
    snprintf(path, sizeof path, "%s/records.jsonl", s_root);
    FILE *f = fopen(path, "w");
    fputs("{\"t\":1}\n\n  \n{\"t\":2}\n{\"t\":3}", f); /* blank lines, no final newline */
    fclose(f);
    uint64_t n = 0;
    assert_int_equal(node_count_records(path, "jsonl", &n), 0);
    assert_int_equal(n, 3);

    snprintf(path, sizeof path, "%s/records.csv", s_root);
    f = fopen(path, "w");
    fputs("id,text,label\n1,\"line one\nline two\",a\n2,plain,b\n\n", f);
    fclose(f);
    assert_int_equal(node_count_records(path, "csv", &n), 0);
    assert_int_equal(n, 2);

    f = fopen(path, "w");
    fputs("id,text,label\n", f);
    fclose(f);
    assert_int_equal(node_count_records(path, "csv", &n), 0);
    assert_int_equal(n, 0);

    assert_int_equal(node_count_records("/nonexistent/records.jsonl", "jsonl", &n), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
}

static const char *s_write_conf(const char *name, const char *text)
{
    static char path[700];
    snprintf(path, sizeof path, "%s/%s", s_root, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_config_rules(void **state)
{
    (void)state;
    agg_config_t a;
    const char *p = s_write_conf("agg.conf", "state_dir = st\n[net]\nbind = tcp://127.0.0.1:*\n");
    assert_int_equal(agg_config_load(&a, p), 0);
    assert_int_equal(a.heartbeat_ivl_ms, 1000);
    char expect[800];
    snprintf(expect, sizeof expect, "%s/st", s_root);
    assert_string_equal(a.state_dir, expect); /* relative to the config file */

    p = s_write_conf("agg2.conf", "[net]\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 2000\n");
    assert_int_equal(agg_config_load(&a, p), -1);
    assert_non_null(strstr(medfl_error_message(), "net.heartbeat_timeout_ms"));
    p = s_write_conf("agg3.conf", "[net]\nbind = udp://x\n");
    assert_int_equal(agg_config_load(&a, p), -1);
    assert_non_null(strstr(medfl_error_message(), "net.bind"));

    node_config_t n;
    p = s_write_conf("n1.conf", "node_id = site-1\n[aggregator]\nendpoint = tcp://h:1\n"
                                "public_key_file = k.pub\n");
    assert_int_equal(node_config_load(&n, p), 0);
    assert_string_equal(n.device, "auto");
    p = s_write_conf("n2.conf", "node_id = site-1\n[aggregator]\nendpoint = tcp://h:1\n");
    assert_int_equal(node_config_load(&n, p), -1);
    assert_non_null(strstr(medfl_error_message(), "aggregator.public_key"));
    p = s_write_conf("n3.conf", "node_id = bad id\n[aggregator]\nendpoint = tcp://h:1\n"
                                "public_key_file = k.pub\n");
    assert_int_equal(node_config_load(&n, p), -1);
    assert_non_null(strstr(medfl_error_message(), "node_id"));
    p = s_write_conf("n4.conf", "[aggregator]\nendpoint = tcp://h:1\n");
    assert_int_equal(node_config_load(&n, p), -1);
    assert_non_null(strstr(medfl_error_message(), "required key 'node_id'"));
    /* Missing keys folder: node_new fails naming the file. */
    p = s_write_conf("n5.conf", "node_id = site-1\nkey_dir = nokeys\nstate_dir = nstate\n"
                                "[aggregator]\nendpoint = tcp://127.0.0.1:1\npublic_key_file = k.pub\n");
    assert_int_equal(node_config_load(&n, p), 0);
    assert_null(node_new(&n, p));
    assert_non_null(strstr(medfl_error_message(), "nokeys/curve.pub"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_messages_then_hello),
        cmocka_unit_test(test_revocation_cuts_off),
        cmocka_unit_test(test_count_records),
        cmocka_unit_test(test_config_rules),
    };
    return cmocka_run_group_tests_name("aggregator", tests, s_setup, s_teardown);
}
