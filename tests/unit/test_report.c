/* The federation report: built from a real history database (contrib_db) and version store
 * (with a rollback) filled the way the aggregator fills them, rendered to one self-contained
 * HTML page: scores by round with the rolled-back branch apart, the latest scores against
 * their baseline, equal series named, bytes on a log axis. The page is then opened in
 * headless Chromium at 1280 px and the screenshot checked for every series' colours and for
 * charts spanning the page, so "the plots read well" is tested on the rendered pixels, not
 * just on the markup; two identical series are checked to both stay visible. */
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

#include <sodium.h>

#include "aggregator/contrib_db.h"
#include "aggregator/report.h"
#include "aggregator/strategy.h"
#include "aggregator/versions.h"
#include "common/error.h"
#include "common/version_store.h"

static char s_dir[] = "/tmp/medfl-test-report-XXXXXX";

static int s_setup(void **state)
{
    (void)state;
    return sodium_init() >= 0 && mkdtemp(s_dir) ? 0 : -1;
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

/* Six rounds of four hospitals, as the aggregator writes them: round r produces version
 * r + 1 (v1 is genesis); rounds 3 and 4 made the model worse, so the operator rolled back to
 * v3 before round 5 (v4 and v5 are abandoned). hospital-<c> drops out of round 3;
 * hospital-d reports exactly what hospital-b does, so their weights are equal. Uploads are
 * ~22 kB per node, downloads 630 kB (the scale that hid uploads on a linear axis). */
static const double s_acc[8] = {0, 0, 0.60, 0.70, 0.55, 0.50, 0.80, 0.90}; /* by version */

static void s_fill_history(void)
{
    char path[256], vdir[256];
    contrib_db_path(s_dir, path, sizeof path);
    contrib_db_t *db = contrib_db_open(path);
    assert_non_null(db);
    versions_dir(s_dir, vdir, sizeof vdir);
    vs_store_t *vs = vs_store_open(vdir, true);
    assert_non_null(vs);
    uint8_t pk[32], sk[64];
    crypto_sign_keypair(pk, sk);
    contrib_params_t p;
    contrib_params_default(&p);
    const char *nodes[4] = {"hospital-a", "hospital-b", "hospital-<c>", "hospital-d"};
    double n_samples[4] = {400, 250, 120, 250};
    for (uint64_t round = 0; round <= 6; round++) {
        if (round == 5) assert_int_equal(vs_store_rollback(vs, 3), 0);
        vs_manifest_t *m = vs_manifest_new();
        int64_t dim = 2;
        float flat[2] = {(float)round, 1};
        assert_int_equal(vs_manifest_add_tensor(m, "w", 1, &dim), 0);
        m->round = round;
        assert_int_equal(vs_store_commit(vs, m, flat, sk), 0);
        assert_int_equal(m->version, round + 1);
        vs_manifest_destroy(&m);
        if (round == 0) continue;
        contrib_output_t out[4];
        assert_int_equal(contrib_db_compute_round(db, &p, round, nodes, n_samples, NULL, 4, 3, out), 0);
        for (int k = 0; k < 4; k++) {
            bool completed = !(round == 3 && k == 2);
            assert_int_equal(contrib_db_record_participation(db, round, nodes[k], completed, 0.3), 0);
            double eps = completed ? 0.8 * (double)round * (1.0 + 0.2 * k) : NAN;
            assert_int_equal(contrib_db_record_round_stats(db, round, nodes[k], 22000 + 100 * k,
                                                           630000 / 4, eps), 0);
            double acc = s_acc[round + 1];
            assert_int_equal(contrib_db_record_report(db, nodes[k], round + 1, 1.0 - acc, acc,
                                                      acc - 0.1, (int64_t)n_samples[k]), 0);
        }
    }
    /* Bytes accumulate within a round. */
    assert_int_equal(contrib_db_record_round_stats(db, 4, "hospital-a", 1000000, 0, NAN), 0);
    assert_int_equal(vs_store_head(vs), 7);
    vs_store_destroy(&vs);
    contrib_db_destroy(&db);
}

/* Renders html to a PNG in headless Chromium at a 1280 px wide window; false (test skipped)
 * when chromium is not installed. */
static bool s_screenshot(const char *html, const char *png, int height)
{
    if (system("command -v chromium >/dev/null 2>&1") != 0) {
        print_message("chromium not installed (deploy/install-deps.sh adds it): screenshot check skipped\n");
        return false;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "HOME=%s timeout 120 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "
             "--window-size=1280,%d --screenshot=%s file://%s >/dev/null 2>&1", s_dir, height, png, html);
    assert_int_equal(system(cmd), 0);
    return true;
}

/* Pixel count and longest horizontal run of each colour (tests/ref/png_colors.py). */
static void s_colors(const char *png, const char *const *hex, size_t n, unsigned *count, unsigned *run)
{
    char cmd[1024], out[300];
    snprintf(out, sizeof out, "%s/colors.txt", s_dir);
    int len = snprintf(cmd, sizeof cmd, "python3 tests/ref/png_colors.py --runs %s", png);
    for (size_t i = 0; i < n; i++) len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %s", hex[i]);
    snprintf(cmd + len, sizeof cmd - (size_t)len, " > %s", out);
    assert_int_equal(system(cmd), 0);
    char *text = s_slurp(out), *p = text;
    for (size_t i = 0; i < n; i++) {
        char name[8];
        int used = 0;
        assert_int_equal(sscanf(p, "%7s %u %u%n", name, &count[i], &run[i], &used), 3);
        assert_string_equal(name, hex[i]);
        p += used;
    }
    free(text);
}

/* The section of the page holding chart `id`, as a string of its own. */
static char *s_section(const char *html, const char *id)
{
    char key[64];
    snprintf(key, sizeof key, "<section id=\"%s\">", id);
    const char *a = strstr(html, key);
    assert_non_null(a);
    const char *b = strstr(a, "</section>");
    assert_non_null(b);
    return strndup(a, (size_t)(b - a));
}

/* The d="..." of series `name`'s line in a section. */
static char *s_path_of(const char *section, const char *name)
{
    char key[200];
    snprintf(key, sizeof key, "data-series=\"%s\"><path", name);
    const char *a = strstr(section, key);
    if (!a) fail_msg("no line for series '%s'", name);
    a = strstr(a, " d=\"") + 4;
    return strndup(a, (size_t)(strchr(a, '"') - a));
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
    assert_int_equal(s_count(html, "<svg class=\"chart\""), 5);
    assert_int_equal(s_count(html, "no data yet"), 0);
    assert_null(strstr(html, "<script"));
    assert_null(strstr(html, " src="));  /* self-contained: nothing fetched */
    assert_null(strstr(html, " href="));
    assert_null(strstr(html, "width=\"760\"")); /* no fixed-size chart */
    assert_non_null(strstr(html, "Consortium &lt;test&gt; report"));     /* escaped */
    assert_non_null(strstr(html, "data-series=\"hospital-&lt;c&gt;\""));  /* escaped node id */
    assert_non_null(strstr(html, "data-series=\"dropped or declined\""));
    assert_non_null(strstr(html, "<td>Head version</td><td>v7 (round 6)</td>"));
    assert_non_null(strstr(html, "<td>Versions abandoned by rollbacks</td><td>2 (v4, v5)</td>"));
    /* latest next to its baseline: the first round's version, on the head's line */
    assert_non_null(strstr(html, "<tr><td>macro-F1</td><td>0.5000 <span class=\"at\">(round 1, v2)"
                                 "</span></td><td><b>0.8000</b> <span class=\"at\">(round 6, v7)"
                                 "</span></td><td class=\"up\">+0.3000</td></tr>"));
    assert_non_null(strstr(html, "<tr><td>accuracy</td><td>0.6000"));

    /* scores by round: the head's line is rounds 1, 2, 5, 6 (v2 v3 v6 v7) in one stroke;
     * the abandoned v4, v5 are a branch of their own, starting at the v3 it forked from */
    char *q = s_section(html, "quality");
    assert_non_null(strstr(q, "round (under it: the version it produced)"));
    char *main_line = s_path_of(q, "accuracy");
    assert_int_equal(s_count(main_line, "M"), 1);
    assert_int_equal(s_count(main_line, "L"), 3);
    char *branch = s_path_of(q, "accuracy, branch from v4 (rolled back)");
    assert_int_equal(s_count(branch, "M"), 1);
    assert_int_equal(s_count(branch, "L"), 2);
    /* the branch starts where the main line's second point (round 2, v3) is */
    char *second = strchr(main_line, 'L');
    assert_non_null(second);
    assert_memory_equal(branch + 1, second + 1, (size_t)(strchr(second, ' ') - second));
    assert_non_null(strstr(q, "accuracy, branch from v4 (rolled back), round 4 (v5, rolled back): "
                                 "0.5</title>"));
    assert_non_null(strstr(q, "class=\"note gone\" text-anchor=\"middle\">v4<"));
    assert_non_null(strstr(q, "class=\"note\" text-anchor=\"middle\">v7<"));
    assert_int_equal(s_count(q, "<rect class=\"gone\""), 2);
    assert_non_null(strstr(q, "a rollback abandoned"));
    free(main_line);
    free(branch);
    free(q);

    /* equal weights are named as such; the dropped node's round-3 epsilon is a gap */
    char *w = s_section(html, "weights");
    assert_non_null(strstr(w, "hospital-d <em>(same values as hospital-b)</em>"));
    free(w);
    char *e = s_section(html, "epsilon");
    char *c_line = s_path_of(e, "hospital-&lt;c&gt;");
    assert_int_equal(s_count(c_line, "M"), 2);
    free(c_line);
    free(e);
    /* bytes on a log axis with kB / MB ticks; round 4 upload: 4 * 22 kB + 600 B + 1 MB */
    char *b = s_section(html, "bytes");
    assert_non_null(strstr(b, ">50 kB</text>"));
    assert_non_null(strstr(b, ">100 kB</text>"));
    assert_non_null(strstr(b, ">2 MB</text>"));
    assert_null(strstr(b, ">20 kB</text>")); /* the axis starts at the data, not a decade below */
    assert_non_null(strstr(b, ">1 MB</text>"));
    assert_non_null(strstr(b, "node to aggregator, round 4 (v5, rolled back): 1.09 MB</title>"));
    assert_non_null(strstr(b, "node to aggregator, round 1 (v2): 88.6 kB</title>"));
    free(b);
    free(html);

    /* Pixels: the page in a 1280 px window; each series colour is drawn, and the charts span
     * the page (their x axes are more than 1000 px long, they were 526 px on a 760 px chart) */
    char png[300];
    snprintf(png, sizeof png, "%s/report.png", s_dir);
    if (!s_screenshot(out, png, 3000)) skip();
    const char *hex[5] = {"0072B2", "E69F00", "009E73", "D55E00", "444444"};
    unsigned count[5], run[5];
    s_colors(png, hex, 5, count, run);
    if (count[0] < 3000 || count[1] < 2000 || count[2] < 1000 || count[3] < 500)
        fail_msg("screenshot lacks series colours: %u %u %u %u", count[0], count[1], count[2], count[3]);
    if (run[4] <= 1000 || run[4] >= 1280) fail_msg("chart axis %u px wide in a 1280 px window", run[4]);
    if (getenv("MEDFL_KEEP_REPORT")) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "cp %s %s '%s'/", out, png, getenv("MEDFL_KEEP_REPORT"));
        assert_int_equal(system(cmd), 0);
    }
}

/* Two series with the same values: both stay visible on the screen (the first is drawn wider
 * underneath, with larger markers) and the legend says they are the same. */
static void test_identical_series_visible(void **state)
{
    (void)state;
    report_t *r = report_new("same");
    report_chart_t *c = report_add_chart(r, "w", "Weights", "round", "weight", false);
    for (int x = 1; x <= 20; x++) {
        double y = 0.25 + 0.01 * (x % 3);
        assert_int_equal(report_add_point(c, x, "north", y), 0);
        assert_int_equal(report_add_point(c, x, "south", y), 0);
    }
    char out[300], png[300];
    snprintf(out, sizeof out, "%s/same.html", s_dir);
    snprintf(png, sizeof png, "%s/same.png", s_dir);
    assert_int_equal(report_write(r, out), 0);
    report_destroy(&r);
    char *html = s_slurp(out);
    assert_non_null(strstr(html, "south <em>(same values as north)</em>"));
    free(html);
    if (!s_screenshot(out, png, 700)) skip();
    if (getenv("MEDFL_KEEP_REPORT")) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "cp %s '%s'/", png, getenv("MEDFL_KEEP_REPORT"));
        assert_int_equal(system(cmd), 0);
    }
    const char *hex[2] = {"0072B2", "E69F00"};
    unsigned count[2], run[2];
    s_colors(png, hex, 2, count, run);
    /* the first series shows around the second along the whole line, not just in the legend */
    if (count[0] < 800 || count[1] < 800) /* the legend alone is ~100 each */
        fail_msg("an identical series is hidden: %u and %u pixels", count[0], count[1]);
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

    /* A damaged manifest in the version store (the history of the first test): refused,
     * naming the file and the field, not drawn as some other tree. */
    char path[300];
    snprintf(path, sizeof path, "%s/versions/v000003.json", s_dir);
    if (access(path, F_OK) != 0) s_fill_history(); /* this test run alone */
    char *json = s_slurp(path);
    char *p = strstr(json, "\"parent\":\t2");
    assert_non_null(p);
    p[10] = '9';
    FILE *f = fopen(path, "w");
    fputs(json, f);
    fclose(f);
    free(json);
    r = report_new(NULL);
    assert_int_equal(report_load_state(r, s_dir), -1);
    assert_non_null(strstr(medfl_error_message(), "v000003.json: field 'parent' = 9 must be below"));
    report_destroy(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_from_history),
        cmocka_unit_test(test_identical_series_visible),
        cmocka_unit_test(test_empty_and_errors),
    };
    return cmocka_run_group_tests_name("report", tests, s_setup, s_teardown);
}
