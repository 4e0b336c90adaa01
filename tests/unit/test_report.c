/* The federation report: built from a real history database (contrib_db) filled the way the
 * aggregator fills it, rendered to one self-contained HTML page; the page is then opened in
 * headless Chromium and the screenshot checked for every chart's colours, so "the plots are
 * present" is tested on the rendered pixels, not just on the markup. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aggregator/contrib_db.h"
#include "aggregator/report.h"
#include "aggregator/strategy.h"
#include "common/error.h"

static char s_dir[] = "/tmp/medfl-test-report-XXXXXX";

static int s_setup(void **state)
{
    (void)state;
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *s_slurp(const char *path)
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
    return buf;
}

static size_t s_count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Four rounds of three hospitals; hospital-c drops out of round 3. */
static void s_fill_history(void)
{
    char path[256];
    contrib_db_path(s_dir, path, sizeof path);
    contrib_db_t *db = contrib_db_open(path);
    assert_non_null(db);
    contrib_params_t p;
    contrib_params_default(&p);
    const char *nodes[3] = {"hospital-a", "hospital-b", "hospital-<c>"};
    double n_samples[3] = {400, 250, 120};
    for (uint64_t round = 1; round <= 4; round++) {
        contrib_output_t out[3];
        assert_int_equal(contrib_db_compute_round(db, &p, round, nodes, n_samples, NULL, 3, 3, out), 0);
        for (int k = 0; k < 3; k++) {
            bool completed = !(round == 3 && k == 2);
            assert_int_equal(contrib_db_record_participation(db, round, nodes[k], completed, 0.3), 0);
            double eps = completed ? 0.8 * (double)round * (1.0 + 0.2 * k) : NAN;
            assert_int_equal(contrib_db_record_round_stats(db, round, nodes[k], 40000 + 1000 * k,
                                                           150000, eps), 0);
            assert_int_equal(contrib_db_record_report(db, nodes[k], round, 1.0 / (double)round,
                                                      0.5 + 0.1 * (double)round, 0.4 + 0.1 * (double)round,
                                                      (int64_t)n_samples[k]), 0);
        }
    }
    /* Bytes accumulate within a round. */
    assert_int_equal(contrib_db_record_round_stats(db, 4, "hospital-a", 1000000, 0, NAN), 0);
    contrib_db_destroy(&db);
}

static void test_report_from_history(void **state)
{
    (void)state;
    s_fill_history();
    report_t *r = report_new("Consortium <test> report");
    assert_non_null(r);
    assert_int_equal(report_load_state(r, s_dir), 0);
    char out[300];
    snprintf(out, sizeof out, "%s/report.html", s_dir);
    assert_int_equal(report_write(r, out), 0);
    report_destroy(&r);
    report_destroy(&r); /* safe twice */

    char *html = s_slurp(out);
    assert_int_equal(s_count(html, "<svg"), 5);
    assert_int_equal(s_count(html, "no data yet"), 0);
    assert_null(strstr(html, "<script"));
    assert_null(strstr(html, " src="));  /* self-contained: nothing fetched */
    assert_null(strstr(html, " href="));
    assert_non_null(strstr(html, "Consortium &lt;test&gt; report"));     /* escaped */
    assert_non_null(strstr(html, "data-series=\"hospital-&lt;c&gt;\""));  /* escaped node id */
    assert_non_null(strstr(html, "data-series=\"macro-F1\""));
    assert_non_null(strstr(html, "data-series=\"dropped or declined\""));
    assert_non_null(strstr(html, "<td>Latest accuracy</td><td>0.9000</td>"));
    /* Round 4 upload: 40000+41000+42000 bytes + 1 MB = 1.123 MB. */
    assert_non_null(strstr(html, "<title>4: 1.123</title>"));
    /* The dropped node's round-3 epsilon is a gap: its line restarts with M. */
    const char *eps = strstr(html, "id=\"epsilon\"");
    assert_non_null(eps);
    const char *c_series = strstr(eps, "data-series=\"hospital-&lt;c&gt;\"");
    assert_non_null(c_series);
    const char *d = strstr(c_series, " d=\"");
    assert_int_equal(s_count(d ? d : "", "M") >= 2, 1);
    free(html);

    /* Pixels: a headless Chromium screenshot shows each chart's first series colours. */
    if (system("command -v chromium >/dev/null 2>&1") != 0) {
        print_message("chromium not installed (deploy/install-deps.sh adds it): screenshot check skipped\n");
        skip();
    }
    char cmd[1024], png[300];
    snprintf(png, sizeof png, "%s/report.png", s_dir);
    snprintf(cmd, sizeof cmd,
             "HOME=%s timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "
             "--window-size=900,2000 --screenshot=%s file://%s >/dev/null 2>&1", s_dir, png, out);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "python3 tests/ref/png_colors.py %s 0072B2 E69F00 009E73 > %s/colors.txt", png, s_dir);
    assert_int_equal(system(cmd), 0);
    char colors_path[300];
    snprintf(colors_path, sizeof colors_path, "%s/colors.txt", s_dir);
    char *colors = s_slurp(colors_path);
    unsigned blue = 0, orange = 0, green = 0;
    assert_int_equal(sscanf(colors, "0072B2 %u\nE69F00 %u\n009E73 %u", &blue, &orange, &green), 3);
    if (blue < 2000 || orange < 1000 || green < 300)
        fail_msg("screenshot lacks plot colours: blue %u, orange %u, green %u", blue, orange, green);
    free(colors);
    if (getenv("MEDFL_KEEP_REPORT")) {
        snprintf(cmd, sizeof cmd, "cp %s %s /tmp/", out, png);
        assert_int_equal(system(cmd), 0);
    }
}

static void test_empty_and_errors(void **state)
{
    (void)state;
    report_t *r = report_new(NULL);
    /* No history database: a clear error naming the file. */
    assert_int_equal(report_load_state(r, "/nonexistent-medfl-state"), -1);
    assert_non_null(strstr(medfl_error_message(), "/nonexistent-medfl-state/contrib.db"));
    report_destroy(&r);

    r = report_new("empty");
    report_chart_t *c = report_add_chart(r, "x", "Nothing yet", "round", "y", false);
    assert_non_null(c);
    assert_int_equal(report_add_point(c, NAN, "s", 1), -1);   /* x must be finite */
    assert_int_equal(report_add_point(c, 1, "s", NAN), 0);    /* y NaN is a gap */
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    assert_int_equal(report_render(r, mem), 0);
    fclose(mem);
    assert_non_null(strstr(buf, "no data yet"));
    assert_null(strstr(buf, "<svg"));
    free(buf);
    assert_int_equal(report_write(r, "/nonexistent-dir/r.html"), -1);
    assert_non_null(strstr(medfl_error_message(), "/nonexistent-dir/r.html"));
    report_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_from_history),
        cmocka_unit_test(test_empty_and_errors),
    };
    return cmocka_run_group_tests_name("report", tests, s_setup, s_teardown);
}
