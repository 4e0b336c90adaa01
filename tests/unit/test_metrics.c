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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exact),
        cmocka_unit_test(test_rejects_misuse),
        cmocka_unit_test(test_endpoint_and_promtool),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
