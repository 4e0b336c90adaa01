/* Metrics registry and endpoint: exact exposition text, escaping, counter rules, the HTTP
 * endpoint on an ephemeral loopback port, and a strict check of the served text with
 * Prometheus' own linter (promtool check metrics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/error.h"
#include "common/metrics.h"

static metrics_t *s_sample_registry(void)
{
    metrics_t *m = metrics_new("medfl_node");
    assert_non_null(m);
    assert_int_equal(metrics_declare(m, "rounds_joined_total", METRIC_COUNTER, "Rounds joined.", NULL), 0);
    assert_int_equal(metrics_declare(m, "epsilon_spent", METRIC_GAUGE, "Privacy loss spent\\so far.\n", NULL), 0);
    assert_int_equal(metrics_declare(m, "node_weight", METRIC_GAUGE, "Contribution weight.", "node"), 0);
    assert_int_equal(metrics_add(m, "rounds_joined_total", NULL, 2), 0);
    assert_int_equal(metrics_add(m, "rounds_joined_total", NULL, 1), 0);
    assert_int_equal(metrics_set(m, "epsilon_spent", NULL, 1.5), 0);
    assert_int_equal(metrics_set(m, "node_weight", "hospital-a", 0.25), 0);
    assert_int_equal(metrics_set(m, "node_weight", "we\"ird\\name\n", INFINITY), 0);
    return m;
}

static void test_render_exact(void **state)
{
    (void)state;
    metrics_t *m = s_sample_registry();
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(m, &text, &len), 0);
    const char *expect =
        "# HELP medfl_node_rounds_joined_total Rounds joined.\n"
        "# TYPE medfl_node_rounds_joined_total counter\n"
        "medfl_node_rounds_joined_total 3\n"
        "# HELP medfl_node_epsilon_spent Privacy loss spent\\\\so far.\\n\n"
        "# TYPE medfl_node_epsilon_spent gauge\n"
        "medfl_node_epsilon_spent 1.5\n"
        "# HELP medfl_node_node_weight Contribution weight.\n"
        "# TYPE medfl_node_node_weight gauge\n"
        "medfl_node_node_weight{node=\"hospital-a\"} 0.25\n"
        "medfl_node_node_weight{node=\"we\\\"ird\\\\name\\n\"} +Inf\n";
    assert_string_equal(text, expect);
    assert_int_equal(len, strlen(expect));
    free(text);
    double v;
    assert_int_equal(metrics_get(m, "rounds_joined_total", NULL, &v), 0);
    assert_true(v == 3);
    metrics_destroy(&m);
    metrics_destroy(&m); /* safe twice */
}

static void test_rejects_misuse(void **state)
{
    (void)state;
    metrics_t *m = s_sample_registry();
    assert_int_equal(metrics_declare(m, "bytes_sent", METRIC_COUNTER, "no suffix", NULL), -1);
    assert_int_equal(metrics_declare(m, "bad-name", METRIC_GAUGE, "bad", NULL), -1);
    assert_int_equal(metrics_declare(m, "x", METRIC_GAUGE, "bad label", "__reserved"), -1);
    assert_int_equal(metrics_declare(m, "epsilon_spent", METRIC_GAUGE, "dup", NULL), -1);
    assert_int_equal(metrics_add(m, "rounds_joined_total", NULL, -1), -1);
    assert_int_equal(metrics_set(m, "rounds_joined_total", NULL, 0), -1);
    assert_int_equal(metrics_set(m, "undeclared", NULL, 1), -1);
    assert_int_equal(metrics_set(m, "node_weight", NULL, 1), -1);          /* label missing */
    assert_int_equal(metrics_set(m, "epsilon_spent", "x", 1), -1);         /* unexpected */
    double v;
    assert_int_equal(metrics_get(m, "node_weight", "nobody", &v), -1);
    metrics_destroy(&m);
}

static char *s_http_get(uint16_t port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf + len, cap - 1 - len)) > 0) len += (size_t)r;
    buf[len] = '\0';
    close(fd);
    return buf;
}

static void test_endpoint_and_promtool(void **state)
{
    (void)state;
    metrics_t *m = s_sample_registry();
    assert_int_equal(metrics_serve(m, "127.0.0.1", 0), 0);
    uint16_t port = metrics_port(m);
    assert_true(port > 0);
    char *resp = s_http_get(port, "/metrics");
    assert_non_null(strstr(resp, "HTTP/1.0 200") ? resp : strstr(resp, "HTTP/1.1 200"));
    assert_non_null(strstr(resp, "Content-Type: text/plain; version=0.0.4"));
    char *body = strstr(resp, "\r\n\r\n");
    assert_non_null(body);
    body += 4;
    assert_non_null(strstr(body, "medfl_node_rounds_joined_total 3\n"));
    char *notfound = s_http_get(port, "/other");
    assert_non_null(strstr(notfound, " 404 "));
    free(notfound);

    /* promtool is installed by deploy/install-deps.sh for this check. */
    assert_int_equal(system("command -v promtool >/dev/null"), 0);
    char path[] = "/tmp/medfl-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s", path);
    int rc = system(cmd);
    if (rc != 0) fail_msg("promtool rejected the exposition:\n%s", body);
    /* And the checker does fail on broken text, so the pass above means something. */
    FILE *f = fopen(path, "w");
    fputs("# TYPE medfl_x counter\nmedfl_x{a=b} 1\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s >/dev/null 2>&1", path);
    assert_int_not_equal(system(cmd), 0);
    unlink(path);
    free(resp);
    metrics_destroy(&m);
}

/* metrics.listen: accepted forms, and errors that name file:line and key. */
static void test_listen_parse(void **state)
{
    (void)state;
    metrics_listen_t l;
    assert_int_equal(metrics_listen_parse("off", NULL, "metrics.listen", &l), 0);
    assert_false(l.enabled);
    assert_int_equal(metrics_listen_parse("", NULL, "metrics.listen", &l), 0);
    assert_false(l.enabled);
    assert_int_equal(metrics_listen_parse("9751", NULL, "metrics.listen", &l), 0);
    assert_true(l.enabled);
    assert_string_equal(l.address, "127.0.0.1"); /* loopback unless told otherwise */
    assert_int_equal(l.port, 9751);
    assert_int_equal(metrics_listen_parse("10.1.2.3:0", NULL, "metrics.listen", &l), 0);
    assert_string_equal(l.address, "10.1.2.3");
    assert_int_equal(l.port, 0);
    assert_int_equal(metrics_listen_parse("0.0.0.0:65535", NULL, "metrics.listen", &l), 0);
    assert_int_equal(l.port, 65535);
    const char *bad[] = {"127.0.0.1:65536", "localhost:9750", "127.0.0.1", ":9750",
                         "127.0.0.1:", "127.0.0.1:-1", "127.0.0.1:97x0", "on", "[::1]:9750"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(metrics_listen_parse(bad[i], NULL, "metrics.listen", &l), -1);
        assert_false(l.enabled);
        assert_int_equal(medfl_error_code(), MEDFL_ECONFIG);
        assert_non_null(strstr(medfl_error_message(), "key 'metrics.listen'"));
    }
    char path[] = "/tmp/medfl-metrics-conf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "node_id = a\n[metrics]\n# listen = 1\n  listen = 1.2.3:9\n[log]\nlevel = info\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(metrics_listen_parse("1.2.3:9", path, "metrics.listen", &l), -1);
    char want[128];
    snprintf(want, sizeof want, "%s:4: key 'metrics.listen': '1.2.3:9'", path);
    assert_non_null(strstr(medfl_error_message(), want));
    unlink(path);
}

/* metrics_start: the endpoint file names the bound port; off removes a stale file; a NULL
 * registry (metrics off) swallows updates. */
static void test_start_endpoint_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/medfl-metrics-state-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char file[128];
    snprintf(file, sizeof file, "%s/metrics_endpoint", dir);
    metrics_t *m = s_sample_registry();
    metrics_listen_t l;
    assert_int_equal(metrics_listen_parse("0", NULL, "metrics.listen", &l), 0);
    assert_int_equal(metrics_start(m, &l, dir), 0);
    FILE *f = fopen(file, "r");
    assert_non_null(f);
    char line[128] = "";
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    char want[64];
    snprintf(want, sizeof want, "http://127.0.0.1:%u/metrics\n", metrics_port(m));
    assert_string_equal(line, want);
    char *resp = s_http_get(metrics_port(m), "/metrics");
    assert_non_null(strstr(resp, "medfl_node_epsilon_spent 1.5\n"));
    free(resp);
    /* a second registry cannot take the same port: an error, the file is gone */
    metrics_t *m2 = metrics_new("medfl_node");
    metrics_listen_t same = l;
    same.port = metrics_port(m);
    assert_int_equal(metrics_start(m2, &same, dir), -1);
    assert_int_equal(access(file, F_OK), -1);
    metrics_destroy(&m2);
    /* off: stale file removed, nothing served */
    f = fopen(file, "w");
    fputs("http://127.0.0.1:1/metrics\n", f);
    fclose(f);
    metrics_t *m3 = metrics_new("medfl_node");
    metrics_listen_t off;
    assert_int_equal(metrics_listen_parse("off", NULL, "metrics.listen", &off), 0);
    assert_int_equal(metrics_start(m3, &off, dir), 0);
    assert_int_equal(access(file, F_OK), -1);
    assert_int_equal(metrics_port(m3), 0);
    metrics_destroy(&m3);
    metrics_destroy(&m);
    assert_int_equal(metrics_add(NULL, "anything_total", NULL, 1), 0);
    assert_int_equal(metrics_set(NULL, "anything", "x", 1), 0);
    rmdir(dir);
}

/* metrics_open, the daemons' setup: families declared (unlabelled ones at 0) and served; off
 * gives no registry; an endpoint that cannot bind is not fatal (0, no registry, no endpoint
 * file); a bad listen value or a bad table is an error and allocates nothing. */
static void test_open_table(void **state)
{
    (void)state;
    static const metrics_family_t table[] = {
        {"rounds_total", METRIC_COUNTER, "Rounds.", NULL},
        {"node_weight", METRIC_GAUGE, "Weight.", "node"},
        {"connected", METRIC_GAUGE, "Connected.", NULL},
    };
    char dir[] = "/tmp/medfl-metrics-open-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char file[128];
    snprintf(file, sizeof file, "%s/metrics_endpoint", dir);

    metrics_t *m = NULL;
    assert_int_equal(metrics_open("medfl_test", table, 3, "0", NULL, dir, &m), 0);
    assert_non_null(m);
    assert_int_not_equal(metrics_port(m), 0);
    assert_int_equal(access(file, F_OK), 0);
    double v = -1;
    assert_int_equal(metrics_get(m, "rounds_total", NULL, &v), 0);
    assert_true(v == 0);
    assert_int_equal(metrics_get(m, "connected", NULL, &v), 0);
    assert_int_equal(metrics_get(m, "node_weight", "hospital-a", &v), -1); /* no sample yet */
    char *resp = s_http_get(metrics_port(m), "/metrics");
    assert_non_null(strstr(resp, "medfl_test_rounds_total 0\n"));
    assert_non_null(strstr(resp, "# TYPE medfl_test_node_weight gauge\n"));
    free(resp);

    /* the port is taken: logged, running without metrics, no stale endpoint file */
    char taken[32];
    snprintf(taken, sizeof taken, "127.0.0.1:%u", metrics_port(m));
    metrics_t *m2 = (metrics_t *)&m2; /* must be overwritten */
    assert_int_equal(metrics_open("medfl_test", table, 3, taken, NULL, dir, &m2), 0);
    assert_null(m2);
    assert_int_equal(access(file, F_OK), -1);

    /* off: no registry, no endpoint file */
    metrics_t *m3 = (metrics_t *)&m3;
    assert_int_equal(metrics_open("medfl_test", table, 3, "off", NULL, dir, &m3), 0);
    assert_null(m3);
    assert_int_equal(access(file, F_OK), -1);

    /* a bad listen value names the key; a bad table (counter without _total) fails */
    metrics_t *m4 = (metrics_t *)&m4;
    assert_int_equal(metrics_open("medfl_test", table, 3, "localhost:1", NULL, dir, &m4), -1);
    assert_null(m4);
    assert_non_null(strstr(medfl_error_message(), "metrics.listen"));
    static const metrics_family_t bad[] = {
        {"rounds_total", METRIC_COUNTER, "Rounds.", NULL},
        {"rounds", METRIC_COUNTER, "Not a counter name.", NULL},
    };
    assert_int_equal(metrics_open("medfl_test", bad, 2, "0", NULL, dir, &m4), -1);
    assert_null(m4);
    assert_int_equal(access(file, F_OK), -1);

    metrics_destroy(&m);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exact),
        cmocka_unit_test(test_rejects_misuse),
        cmocka_unit_test(test_endpoint_and_promtool),
        cmocka_unit_test(test_listen_parse),
        cmocka_unit_test(test_start_endpoint_file),
        cmocka_unit_test(test_open_table),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
