/* Synthetic records: same seed gives byte-identical files, another seed other files; every
 * note passes the de-identification gate and the records reader; sites are non-IID (label
 * mix and writing style differ); no single word gives a label away; CSV output reads back;
 * bad options are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <math.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "node/commands.h"
#include "node/data.h"
#include "node/deid.h"
#include "node/synth.h"

static char s_dir[] = "/tmp/medfl-test-synth-XXXXXX";

static char *s_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    if (b) { b[n] = '\0'; *len = (size_t)n; }
    return b;
}

static const char *s_files[] = {"labels.txt", "pooled-test.jsonl", "site-1/train.jsonl",
                                "site-1/valid.jsonl", "site-1/test.jsonl", "site-2/train.jsonl",
                                "site-2/valid.jsonl", "site-2/test.jsonl", "site-3/train.jsonl",
                                "site-3/valid.jsonl", "site-3/test.jsonl", NULL};

static int s_same_file(const char *pa, const char *pb)
{
    size_t la, lb;
    char *x = s_read(pa, &la), *y = s_read(pb, &lb);
    assert_non_null(x);
    assert_non_null(y);
    int same = la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static int s_same_files(const char *a, const char *b)
{
    int same = 1;
    for (const char **f = s_files; *f; f++) {
        char pa[700], pb[700];
        snprintf(pa, sizeof pa, "%s/%s", a, *f);
        snprintf(pb, sizeof pb, "%s/%s", b, *f);
        if (!s_same_file(pa, pb)) same = 0;
    }
    return same;
}

static void s_rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[800];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR) s_rm_tree(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static void s_gen(const char *name, uint64_t seed, data_format_t fmt, char *out, size_t out_size)
{
    snprintf(out, out_size, "%s/%s", s_dir, name);
    synth_opts_t o;
    synth_opts_init(&o);
    o.sites = 3;
    o.records_per_site = 200;
    o.seed = seed;
    o.format = fmt;
    if (synth_write(&o, out) != 0) fail_msg("synth_write: %s", medfl_error_message());
}

static void test_deterministic_by_seed(void **state)
{
    (void)state;
    char a[700], b[700], c[700];
    s_gen("a", 11, DATA_FORMAT_JSONL, a, sizeof a);
    s_gen("b", 11, DATA_FORMAT_JSONL, b, sizeof b);
    s_gen("c", 12, DATA_FORMAT_JSONL, c, sizeof c);
    assert_true(s_same_files(a, b));
    assert_false(s_same_files(a, c));
}

static records_t *s_load(const char *dir, const char *file);

/* --test-per-site: more test notes, train and valid byte-identical to the default. */
static void test_larger_test_split(void **state)
{
    (void)state;
    char a[700], b[700];
    s_gen("t-default", 21, DATA_FORMAT_JSONL, a, sizeof a);
    snprintf(b, sizeof b, "%s/t-big", s_dir);
    synth_opts_t o;
    synth_opts_init(&o);
    o.sites = 3;
    o.records_per_site = 200;
    o.seed = 21;
    o.test_per_site = 75;
    if (synth_write(&o, b) != 0) fail_msg("synth_write: %s", medfl_error_message());
    for (int site = 1; site <= 3; site++) {
        char fa[800], fb[800];
        for (int p = 0; p < 2; p++) {
            const char *part = p ? "valid" : "train";
            snprintf(fa, sizeof fa, "%s/site-%d/%s.jsonl", a, site, part);
            snprintf(fb, sizeof fb, "%s/site-%d/%s.jsonl", b, site, part);
            assert_true(s_same_file(fa, fb));
        }
        snprintf(fb, sizeof fb, "site-%d/test.jsonl", site);
        records_t *t = s_load(b, fb);
        assert_int_equal(records_count(t), 75);
        records_destroy(&t);
    }
    records_t *pooled = s_load(b, "pooled-test.jsonl");
    assert_int_equal(records_count(pooled), 225);
    records_destroy(&pooled);
}

static records_t *s_load(const char *dir, const char *file)
{
    char p[800];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    size_t n;
    const char *const *labels = synth_labels(&n);
    records_opts_t o;
    records_opts_init(&o);
    if (strstr(file, ".csv")) o.format = DATA_FORMAT_CSV;
    o.labels = labels;
    o.n_labels = n;
    records_t *set = records_new();
    if (records_load_file(set, p, &o) != 0) fail_msg("%s", medfl_error_message());
    return set;
}

static void test_notes_pass_gate_and_sites_differ(void **state)
{
    (void)state;
    char a[700];
    s_gen("gate", 5, DATA_FORMAT_JSONL, a, sizeof a);
    size_t n_labels;
    synth_labels(&n_labels);
    assert_true(n_labels >= 6 && n_labels <= 10);
    double dist[3][16] = {{0}};
    int soap[3] = {0}, cc[3] = {0}, total[3] = {0};
    for (int site = 0; site < 3; site++) {
        const char *parts[] = {"train", "valid", "test"};
        size_t expect[] = {140, 30, 30};
        for (int p = 0; p < 3; p++) {
            char f[64];
            snprintf(f, sizeof f, "site-%d/%s.jsonl", site + 1, parts[p]);
            records_t *set = s_load(a, f);
            assert_int_equal(records_count(set), expect[p]);
            size_t flagged = 1;
            assert_int_equal(deid_gate_records(set, DEID_POLICY_REFUSE, NULL, &flagged, NULL), 0);
            assert_int_equal(flagged, 0);
            for (size_t i = 0; i < records_count(set); i++) {
                const record_t *r = records_get(set, i);
                dist[site][r->label] += 1;
                soap[site] += strstr(r->text, "SUBJECTIVE:") != NULL;
                cc[site] += strncmp(r->text, "CC:", 3) == 0;
                total[site]++;
            }
            records_destroy(&set);
        }
    }
    records_t *pooled = s_load(a, "pooled-test.jsonl");
    assert_int_equal(records_count(pooled), 90);
    size_t flagged = 1;
    assert_int_equal(deid_gate_records(pooled, DEID_POLICY_REFUSE, NULL, &flagged, NULL), 0);
    assert_int_equal(flagged, 0);
    records_destroy(&pooled);
    /* Label skew: total variation distance between each pair of sites. */
    for (int s = 0; s < 3; s++)
        for (int t = s + 1; t < 3; t++) {
            double tv = 0;
            for (size_t k = 0; k < n_labels; k++)
                tv += fabs(dist[s][k] / total[s] - dist[t][k] / total[t]) / 2;
            print_message("label TV distance site %d vs %d: %.3f\n", s + 1, t + 1, tv);
            assert_true(tv > 0.15);
        }
    /* Writing style: site 1 writes SOAP notes, site 2 terse "CC:" notes. */
    assert_true(soap[0] > total[0] * 7 / 10 && soap[1] < total[1] * 3 / 10);
    assert_true(cc[1] > total[1] * 7 / 10 && cc[0] < total[0] * 3 / 10);
}

/* No word may give the label away: none is in >= 90% of one label's notes and <= 5% of the
 * others' (then a keyword lookup would classify, and the model would not need to read). */
static void test_no_single_keyword(void **state)
{
    (void)state;
    size_t n_labels;
    synth_labels(&n_labels);
    enum { PER_LABEL = 150, MAXW = 4096 };
    static char words[MAXW][32];
    static int df[MAXW][16];
    int nw = 0;
    uint64_t rng = 99;
    for (size_t label = 0; label < n_labels; label++) {
        for (int d = 0; d < PER_LABEL; d++) {
            char *note = synth_note(&rng, (int)label, d % SYNTH_N_STYLES, NULL);
            assert_non_null(note);
            int seen_here[MAXW] = {0};
            for (char *p = note; *p;) {
                while (*p && !isalpha((unsigned char)*p)) p++;
                char w[32];
                size_t k = 0;
                while (*p && isalpha((unsigned char)*p)) {
                    if (k < sizeof w - 1) w[k++] = (char)tolower((unsigned char)*p);
                    p++;
                }
                w[k] = '\0';
                if (k < 3) continue;
                int j = 0;
                while (j < nw && strcmp(words[j], w) != 0) j++;
                if (j == nw && nw < MAXW) strcpy(words[nw++], w);
                if (j < MAXW && !seen_here[j]) { seen_here[j] = 1; df[j][label]++; }
            }
            free(note);
        }
    }
    int keywords = 0;
    for (int j = 0; j < nw; j++)
        for (size_t l = 0; l < n_labels; l++) {
            int out = 0;
            for (size_t m = 0; m < n_labels; m++) if (m != l) out += df[j][m];
            double in_rate = (double)df[j][l] / PER_LABEL;
            double out_rate = (double)out / (PER_LABEL * (n_labels - 1));
            if (in_rate >= 0.9 && out_rate <= 0.05) {
                print_message("keyword '%s' gives away label %zu\n", words[j], l);
                keywords++;
            }
        }
    assert_int_equal(keywords, 0);
}

static void test_csv_output_and_errors(void **state)
{
    (void)state;
    char a[700];
    s_gen("csv", 3, DATA_FORMAT_CSV, a, sizeof a);
    records_t *set = s_load(a, "site-2/train.csv");
    assert_int_equal(records_count(set), 140);
    records_destroy(&set);

    synth_opts_t o;
    synth_opts_init(&o);
    char p[700];
    snprintf(p, sizeof p, "%s/bad", s_dir);
    o.sites = 0;
    assert_int_equal(synth_write(&o, p), -1);
    assert_non_null(strstr(medfl_error_message(), "--sites"));
    synth_opts_init(&o);
    o.records_per_site = 5;
    assert_int_equal(synth_write(&o, p), -1);
    synth_opts_init(&o);
    assert_int_equal(synth_write(&o, "/proc/medfl-no-such-dir/x"), -1);
    assert_null(synth_note(&(uint64_t){1}, 99, 0, NULL));
}

static void test_command(void **state)
{
    (void)state;
    char out[700];
    snprintf(out, sizeof out, "%s/cli", s_dir);
    char *ok[] = {"synth", "--sites", "2", "--records-per-site", "20", "--seed", "4", "-o", out,
                  "--format", "jsonl", NULL};
    assert_int_equal(cmd_synth(11, ok), 0);
    char p[800];
    snprintf(p, sizeof p, "%s/site-2/test.jsonl", out);
    assert_int_equal(access(p, R_OK), 0);
    char *bad[] = {"synth", "--sites", "0", "-o", out, NULL};
    assert_int_equal(cmd_synth(5, bad), 1);
    char *unknown[] = {"synth", "--bogus", "1", NULL};
    assert_int_equal(cmd_synth(3, unknown), 2);
    char *no_out[] = {"synth", "--sites", "2", NULL};
    assert_int_equal(cmd_synth(3, no_out), 2);
}

static int s_setup(void **state)
{
    (void)state;
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    s_rm_tree(s_dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deterministic_by_seed),
        cmocka_unit_test(test_larger_test_split),
        cmocka_unit_test(test_notes_pass_gate_and_sites_differ),
        cmocka_unit_test(test_no_single_keyword),
        cmocka_unit_test(test_csv_output_and_errors),
        cmocka_unit_test(test_command),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
