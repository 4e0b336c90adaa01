/* Records readers: JSONL and RFC 4180 CSV on good and bad input (truncated JSON, wrong
 * types, missing fields, unknown labels, bad CSV quoting, BOM, CRLF, empty files, invalid
 * UTF-8, over-long texts), every error checked for naming file, line/record and field;
 * label sets, top-K labels, deterministic stratified splits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common/error.h"
#include "node/data.h"

static const char *const s_labels[] = {"cardiology", "neurology", "dermatology"};

static records_opts_t s_opts(data_format_t fmt)
{
    records_opts_t o;
    records_opts_init(&o);
    o.format = fmt;
    o.labels = s_labels;
    o.n_labels = 3;
    return o;
}

/* Loads buf and expects failure with every fragment in the error message. */
static void s_expect_error(const char *buf, size_t len, const records_opts_t *o, ...)
{
    records_t *set = records_new();
    int rc = records_load_buffer(set, "in.data", buf, len, o);
    if (rc == 0) fail_msg("expected an error for: %.*s", (int)len, buf);
    assert_int_equal(records_count(set), 0);
    const char *msg = medfl_error_message();
    va_list ap;
    va_start(ap, o);
    for (const char *frag = va_arg(ap, const char *); frag; frag = va_arg(ap, const char *))
        if (!strstr(msg, frag)) fail_msg("error '%s' lacks '%s'", msg, frag);
    va_end(ap);
    records_destroy(&set);
}
#define EXPECT_ERR(str, opts, ...) s_expect_error(str, sizeof(str) - 1, opts, __VA_ARGS__, NULL)

/* ---------------------------------------------------------------- JSONL */

static void test_jsonl_good(void **state)
{
    (void)state;
    const char buf[] =
        "{\"text\": \"Chest pain \\u00e9 on exertion\", \"label\": \"cardiology\", \"id\": 7}\n"
        "\n"
        "   \n"
        "{\"label\": \"neurology\", \"text\": \"Tremor at rest\"}\n"
        "{\"text\": \"Itchy rash\\nline two\", \"label\": \"dermatology\", \"extra\": [1, {\"a\": null}]}";
    records_opts_t o = s_opts(DATA_FORMAT_JSONL);
    records_t *set = records_new();
    assert_int_equal(records_load_buffer(set, "good.jsonl", buf, sizeof buf - 1, &o), 0);
    assert_int_equal(records_count(set), 3);
    const record_t *r = records_get(set, 0);
    assert_string_equal(r->text, "Chest pain \xc3\xa9 on exertion");
    assert_int_equal(r->text_len, strlen(r->text));
    assert_int_equal(r->label, 0);
    assert_int_equal(r->record_no, 1);
    assert_int_equal(r->line, 1);
    r = records_get(set, 1);
    assert_int_equal(r->label, 1);
    assert_int_equal(r->record_no, 2);
    assert_int_equal(r->line, 4);
    r = records_get(set, 2);
    assert_string_equal(r->text, "Itchy rash\nline two");
    assert_int_equal(r->label, 2);
    assert_int_equal(r->line, 5);
    assert_null(records_get(set, 3));
    assert_string_equal(records_label_name(set, 2), "dermatology");
    assert_null(records_label_name(set, 3));
    assert_null(records_label_name(set, -1));
    size_t counts[3];
    records_label_counts(set, counts);
    assert_int_equal(counts[0] + counts[1] + counts[2], 3);
    records_destroy(&set);
    assert_null(set);
    records_destroy(&set);
    records_destroy(NULL);
}

static void test_jsonl_bom_crlf_custom_fields(void **state)
{
    (void)state;
    const char buf[] = "\xEF\xBB\xBF{\"note\": \"a\", \"dx\": \"neurology\"}\r\n"
                       "{\"note\": \"b\", \"dx\": \"cardiology\"}\r\n";
    records_opts_t o = s_opts(DATA_FORMAT_JSONL);
    o.text_field = "note";
    o.label_field = "dx";
    records_t *set = records_new();
    assert_int_equal(records_load_buffer(set, "crlf.jsonl", buf, sizeof buf - 1, &o), 0);
    assert_int_equal(records_count(set), 2);
    assert_string_equal(records_get(set, 1)->text, "b");
    assert_int_equal(records_get(set, 1)->label, 0);
    assert_int_equal(records_get(set, 1)->line, 2);
    /* Unlabelled records: label_field "" */
    o.label_field = "";
    assert_int_equal(records_load_buffer(set, "crlf.jsonl", buf, sizeof buf - 1, &o), 0);
    assert_int_equal(records_get(set, 0)->label, -1);
    records_destroy(&set);
}

static void test_jsonl_errors(void **state)
{
    (void)state;
    records_opts_t o = s_opts(DATA_FORMAT_JSONL);
    EXPECT_ERR("{\"text\": \"a\", \"label\": \"neurology\"}\n{\"text\": \"trunc", &o,
               "in.data:2:", "record 2", "invalid JSON");
    EXPECT_ERR("{\"text\": 12, \"label\": \"neurology\"}\n", &o, "in.data:1:",
               "field 'text'", "expected a string, got number");
    EXPECT_ERR("{\"text\": \"a\", \"label\": [\"neurology\"]}\n", &o, "field 'label'",
               "got array");
    EXPECT_ERR("{\"text\": \"a\", \"label\": null}\n", &o, "field 'label'", "got null");
    EXPECT_ERR("{\"label\": \"neurology\"}\n", &o, "in.data:1:", "field 'text' is missing");
    EXPECT_ERR("{\"text\": \"ok\", \"label\": \"neurology\"}\n\n{\"text\": \"a\"}\n", &o,
               "in.data:3:", "record 2", "field 'label' is missing");
    /* A field value is never echoed (a label column may hold a name or note text). */
    EXPECT_ERR("{\"text\": \"a\", \"label\": \"oncology\"}\n", &o, "field 'label'",
               "unknown label (8 bytes, value not shown");
    assert_null(strstr(medfl_error_message(), "oncology"));
    EXPECT_ERR("{\"text\": \"a\", \"label\": \"Jane Roe\"}\n", &o, "in.data:1:", "record 1",
               "field 'label'", "unknown label");
    assert_null(strstr(medfl_error_message(), "Jane"));
    s_expect_error("{\"text\": \"a\", \"label\": \"Seen by Dr. Smith on 03/14/2021\"}\n", 58, &o,
                   "unknown label (31 bytes, value not shown", NULL);
    assert_null(strstr(medfl_error_message(), "Smith"));
    EXPECT_ERR("[\"text\", \"label\"]\n", &o, "expected a JSON object, got array");
    EXPECT_ERR("{\"text\": \"a\", \"label\": \"neurology\"} {\"x\": 1}\n", &o,
               "unexpected data after the JSON object");
    EXPECT_ERR("{\"text\": \"\", \"label\": \"neurology\"}\n", &o, "field 'text' is empty");
    EXPECT_ERR("{\"text\": \"a\", \"label\": \"\"}\n", &o, "field 'label' is empty");
    EXPECT_ERR("", &o, "no records");
    EXPECT_ERR("\n \r\n\t\n", &o, "no records");
    EXPECT_ERR("\xEF\xBB\xBF", &o, "no records");
    /* Invalid UTF-8: a stray continuation byte, an overlong NUL, a surrogate, a NUL byte */
    EXPECT_ERR("{\"text\": \"ok\", \"label\": \"neurology\"}\n{\"text\": \"bad \x80\"}\n", &o,
               "in.data:2:", "invalid UTF-8", "byte offset 51", "column 15");
    EXPECT_ERR("{\"text\": \"\xC0\x80\", \"label\": \"neurology\"}\n", &o, "in.data:1:",
               "invalid UTF-8");
    EXPECT_ERR("{\"text\": \"\xED\xA0\x80\", \"label\": \"neurology\"}\n", &o, "invalid UTF-8");
    EXPECT_ERR("{\"text\": \"a\xF4\x90\x80\x80\", \"label\": \"neurology\"}\n", &o, "invalid UTF-8");
    {
        const char nul[] = "{\"text\": \"a\0b\", \"label\": \"neurology\"}\n";
        s_expect_error(nul, sizeof nul - 1, &o, "NUL byte", "in.data:1:", NULL);
    }
    /* Over-long text */
    o.max_text_bytes = 8;
    EXPECT_ERR("{\"text\": \"short\", \"label\": \"neurology\"}\n"
               "{\"text\": \"far too long\", \"label\": \"neurology\"}\n",
               &o, "in.data:2:", "record 2", "12 bytes", "limit of 8");
}

static void test_skip_unknown_and_empty(void **state)
{
    (void)state;
    const char buf[] = "{\"text\": \"a\", \"label\": \"oncology\"}\n"
                       "{\"text\": \"b\", \"label\": \"neurology\"}\n"
                       "{\"text\": \"\", \"label\": \"neurology\"}\n"
                       "{\"text\": \"c\", \"label\": \"urology\"}\n";
    records_opts_t o = s_opts(DATA_FORMAT_JSONL);
    o.skip_unknown_labels = true;
    o.skip_empty_text = true;
    records_t *set = records_new();
    assert_int_equal(records_load_buffer(set, "skip.jsonl", buf, sizeof buf - 1, &o), 0);
    assert_int_equal(records_count(set), 1);
    assert_int_equal(records_skipped(set), 2);
    assert_int_equal(records_skipped_empty(set), 1);
    assert_int_equal(records_get(set, 0)->record_no, 2);
    /* All skipped is still an error: nothing to train on. */
    const char none[] = "{\"text\": \"a\", \"label\": \"oncology\"}\n";
    assert_int_equal(records_load_buffer(set, "none.jsonl", none, sizeof none - 1, &o), -1);
    assert_non_null(strstr(medfl_error_message(), "no records left"));
    records_destroy(&set);
}

static void test_collected_labels(void **state)
{
    (void)state;
    const char buf[] = "{\"text\": \"a\", \"label\": \"z\"}\n{\"text\": \"b\", \"label\": \"y\"}\n"
                       "{\"text\": \"c\", \"label\": \"z\"}\n";
    records_t *set = records_new();
    assert_int_equal(records_load_buffer(set, "c.jsonl", buf, sizeof buf - 1, NULL), 0);
    assert_int_equal(records_n_labels(set), 2);
    assert_string_equal(records_label_name(set, 0), "z");
    assert_int_equal(records_get(set, 2)->label, 0);
    records_destroy(&set);
    /* A label set listing a name twice is refused. */
    const char *const dup[] = {"a", "a"};
    records_opts_t o;
    records_opts_init(&o);
    o.labels = dup;
    o.n_labels = 2;
    set = records_new();
    assert_int_equal(records_load_buffer(set, "c.jsonl", buf, sizeof buf - 1, &o), -1);
    assert_non_null(strstr(medfl_error_message(), "listed twice"));
    records_destroy(&set);
}

/* ---------------------------------------------------------------- CSV */

static void test_csv_good(void **state)
{
    (void)state;
    const char buf[] = "\xEF\xBB\xBFid,label,text\r\n"
                       "1,cardiology,\"Chest pain, exertional\"\r\n"
                       "2,neurology,\"Said \"\"it hurts\"\"\r\nnext line\"\r\n"
                       "\r\n"
                       "3,dermatology,plain text\r\n"
                       "4,\"cardiology\",\"\"\"quoted\"\"\"";
    records_opts_t o = s_opts(DATA_FORMAT_CSV);
    records_t *set = records_new();
    assert_int_equal(records_load_buffer(set, "good.csv", buf, sizeof buf - 1, &o), 0);
    assert_int_equal(records_count(set), 4);
    assert_string_equal(records_get(set, 0)->text, "Chest pain, exertional");
    assert_int_equal(records_get(set, 0)->line, 2);
    assert_string_equal(records_get(set, 1)->text, "Said \"it hurts\"\r\nnext line");
    assert_int_equal(records_get(set, 1)->label, 1);
    assert_int_equal(records_get(set, 1)->line, 3);
    assert_int_equal(records_get(set, 2)->line, 6); /* after a two-line field and a blank */
    assert_int_equal(records_get(set, 2)->record_no, 3);
    assert_string_equal(records_get(set, 3)->text, "\"quoted\"");
    records_destroy(&set);
    /* Column names chosen by the caller; LF line ends; empty non-text fields are fine. */
    const char b2[] = "transcription,medical_specialty,keywords\n"
                      "\"a,b\",neurology,\n";
    o.text_field = "transcription";
    o.label_field = "medical_specialty";
    set = records_new();
    assert_int_equal(records_load_buffer(set, "mt.csv", b2, sizeof b2 - 1, &o), 0);
    assert_string_equal(records_get(set, 0)->text, "a,b");
    records_destroy(&set);
}

static void test_csv_errors(void **state)
{
    (void)state;
    records_opts_t o = s_opts(DATA_FORMAT_CSV);
    EXPECT_ERR("text,label\n\"unterminated,neurology\n", &o, "in.data:2:",
               "never closed");
    EXPECT_ERR("text,label\nbad \"quote\" here,neurology\n", &o, "in.data:2:",
               "quote inside an unquoted field");
    EXPECT_ERR("text,label\n\"closed\"x,neurology\n", &o, "in.data:2:",
               "after a closing quote");
    EXPECT_ERR("text,label\na,neurology\nb,neurology,extra\n", &o, "in.data:3:", "record 2",
               "expected 2 fields", "found 3");
    EXPECT_ERR("body,label\na,neurology\n", &o, "in.data:1:", "no column 'text'");
    EXPECT_ERR("text,dx\na,neurology\n", &o, "no column 'label'");
    EXPECT_ERR("", &o, "empty file");
    EXPECT_ERR("\r\n\r\n", &o, "empty file");
    EXPECT_ERR("text,label\r\n", &o, "no records");
    EXPECT_ERR("text,label\na,oncology\n", &o, "in.data:2:", "record 1", "unknown label");
    EXPECT_ERR("text,label\n,neurology\n", &o, "field 'text' is empty");
    EXPECT_ERR("text,label\na,\n", &o, "field 'label' is empty");
    EXPECT_ERR("text,label\n\"caf\xC3\",neurology\n", &o, "in.data:2:", "invalid UTF-8");
}

/* ---------------------------------------------------------------- files, labels, splits */

static char s_dir[] = "/tmp/medfl-test-data-XXXXXX";

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

static void test_files_and_top_labels(void **state)
{
    (void)state;
    const char *p = s_write("top.jsonl",
                            "{\"text\": \"a\", \"label\": \"b\"}\n{\"text\": \"a\", \"label\": \"c\"}\n"
                            "{\"text\": \"a\", \"label\": \"a\"}\n{\"text\": \"a\", \"label\": \"c\"}\n"
                            "{\"text\": \"a\", \"label\": \"d\"}\n");
    char **labels;
    size_t n;
    assert_int_equal(data_top_labels(p, NULL, 3, &labels, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(labels[0], "c");
    assert_string_equal(labels[1], "a"); /* ties by name */
    assert_string_equal(labels[2], "b");
    /* The K most frequent as a label set, other records skipped and counted. */
    records_opts_t o;
    records_opts_init(&o);
    o.labels = (const char *const *)labels;
    o.n_labels = 2;
    o.skip_unknown_labels = true;
    records_t *set = records_new();
    assert_int_equal(records_load_file(set, p, &o), 0);
    assert_int_equal(records_count(set), 3);
    assert_int_equal(records_skipped(set), 2);
    records_destroy(&set);
    data_labels_free(labels, n);
    assert_int_equal(data_top_labels(p, NULL, 10, &labels, &n), 0);
    assert_int_equal(n, 4);
    data_labels_free(labels, n);

    set = records_new();
    char missing[700];
    snprintf(missing, sizeof missing, "%s/nope.jsonl", s_dir);
    assert_int_equal(records_load_file(set, missing, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_non_null(strstr(medfl_error_message(), "nope.jsonl"));
    assert_int_equal(data_top_labels(missing, NULL, 3, &labels, &n), -1);
    records_destroy(&set);

    data_format_t f;
    assert_int_equal(data_format_guess("a/b.CSV", &f), 0);
    assert_int_equal(f, DATA_FORMAT_CSV);
    assert_int_equal(data_format_guess("b.jsonl", &f), 0);
    assert_int_equal(f, DATA_FORMAT_JSONL);
    assert_int_equal(data_format_guess("b.xlsx", &f), -1);
    assert_int_equal(data_format_parse("csv", &f), 0);
    assert_int_equal(data_format_parse("xml", &f), -1);
}

/* With bad_out, every bad record is listed (file, line, record, field; never a value), the
 * read goes on, and it fails at the end with the count. */
static void s_bad_records(data_format_t fmt, const char *buf, size_t max, size_t n_bad,
                          const char *const *frags, const char *const *forbidden)
{
    records_opts_t o = s_opts(fmt);
    char *out = NULL;
    size_t out_len = 0;
    o.bad_out = open_memstream(&out, &out_len);
    o.bad_max = max;
    records_t *set = records_new();
    assert_int_equal(records_load_buffer(set, "in.data", buf, strlen(buf), &o), -1);
    assert_int_equal(records_count(set), 0);
    char want[64];
    snprintf(want, sizeof want, "in.data: %zu bad record", n_bad);
    if (!strstr(medfl_error_message(), want))
        fail_msg("error '%s' lacks '%s'", medfl_error_message(), want);
    fclose(o.bad_out);
    for (; *frags; frags++)
        if (!strstr(out, *frags)) fail_msg("bad-record list lacks '%s':\n%s", *frags, out);
    for (; *forbidden; forbidden++)
        if (strstr(out, *forbidden) || strstr(medfl_error_message(), *forbidden))
            fail_msg("'%s' echoed:\n%s", *forbidden, out);
    free(out);
    records_destroy(&set);
}

static void test_bad_records_all_listed(void **state)
{
    (void)state;
    const char *jsonl = "{\"text\": \"ok\", \"label\": \"neurology\"}\n"
                        "{\"text\": \"a\", \"label\": \"Jane Roe\"}\n"
                        "{\"text\": \"ok\", \"label\": \"cardiology\"}\n"
                        "{\"text\": 5, \"label\": \"neurology\"}\n"
                        "{\"text\": \"MRN 1234567 trunc\n"
                        "{\"text\": \"ok\", \"label\": \"neurology\"}\n";
    const char *const frags[] = {"error: in.data:2: record 2: field 'label': unknown label",
                                 "error: in.data:4: record 4: field 'text': expected a string",
                                 "error: in.data:5: record 5: invalid JSON", NULL};
    const char *const forbidden[] = {"Jane", "Roe", "1234567", NULL};
    s_bad_records(DATA_FORMAT_JSONL, jsonl, 0, 3, frags, forbidden);
    /* Bounded: the first bad_max, then how many more. */
    const char *const frags2[] = {"in.data:2:", "in.data:4:", "... and 1 more bad records", NULL};
    const char *const none[] = {"in.data:5:", NULL};
    s_bad_records(DATA_FORMAT_JSONL, jsonl, 2, 3, frags2, none);
    /* CSV: a short row, an unknown label, an empty text. */
    const char *csv = "text,label\nok,neurology\nonly one field\na,Jane Roe\n,cardiology\nok,neurology\n";
    const char *const frags3[] = {"in.data:3: record 2: expected 2 fields",
                                  "in.data:4: record 3: field 'label': unknown label",
                                  "in.data:5: record 4: field 'text' is empty", NULL};
    const char *const forbidden3[] = {"Jane", "only one", NULL};
    s_bad_records(DATA_FORMAT_CSV, csv, 0, 3, frags3, forbidden3);
}

static const char *s_write_gz(const char *name, const char *content, size_t cut)
{
    static char path[700];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    gzFile g = gzopen(path, "wb");
    assert_non_null(g);
    assert_int_equal(gzwrite(g, content, (unsigned)strlen(content)), (int)strlen(content));
    assert_int_equal(gzclose(g), Z_OK);
    if (cut) {
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(truncate(path, st.st_size - (off_t)cut), 0);
    }
    return path;
}

static void test_gzip_records(void **state)
{
    (void)state;
    data_format_t f;
    assert_int_equal(data_format_guess("a/train.jsonl.gz", &f), 0);
    assert_int_equal(f, DATA_FORMAT_JSONL);
    assert_int_equal(data_format_guess("a/train.CSV.GZ", &f), 0);
    assert_int_equal(f, DATA_FORMAT_CSV);
    assert_int_equal(data_format_guess("a/train.gz", &f), -1);
    assert_int_equal(data_format_guess(".gz", &f), -1);

    const char *csv = "text,label\nfirst note,neurology\nsecond note,cardiology\n";
    records_opts_t o = s_opts(DATA_FORMAT_CSV);
    records_t *set = records_new();
    const char *p = s_write_gz("notes.csv.gz", csv, 0);
    assert_int_equal(records_load_file(set, p, &o), 0);
    assert_int_equal(records_count(set), 2);
    assert_string_equal(records_get(set, 1)->text, "second note");
    assert_int_equal(records_get(set, 1)->line, 3);
    unlink(p);
    /* A truncated gzip stream is a read error, not a silently shorter file. */
    p = s_write_gz("cut.csv.gz", csv, 12);
    assert_int_equal(records_load_file(set, p, &o), -1);
    assert_non_null(strstr(medfl_error_message(), "cut.csv.gz: read error"));
    assert_int_equal(records_count(set), 0);
    unlink(p);
    records_destroy(&set);
}

static void test_labels_parse(void **state)
{
    (void)state;
    char **l;
    size_t n;
    assert_int_equal(data_labels_parse(" Surgery, Consult - History and Phy. ,Radiology", &l, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(l[1], "Consult - History and Phy.");
    data_labels_free(l, n);
    assert_int_equal(data_labels_parse("a,,b", &l, &n), -1);
    assert_non_null(strstr(medfl_error_message(), "empty label"));
    assert_int_equal(data_labels_parse("a,b,a", &l, &n), -1);
    assert_non_null(strstr(medfl_error_message(), "twice"));
}

static void test_split(void **state)
{
    (void)state;
    /* 100 records: 60 of label a, 30 of b, 10 of c */
    size_t cap = 100 * 48;
    char *buf = malloc(cap), *p = buf;
    for (int i = 0; i < 100; i++)
        p += sprintf(p, "{\"text\": \"n%d\", \"label\": \"%s\"}\n", i, i < 60 ? "a" : i < 90 ? "b" : "c");
    records_t *set = records_new();
    assert_int_equal(records_load_buffer(set, "s.jsonl", buf, (size_t)(p - buf), NULL), 0);
    free(buf);
    records_split_t s1, s2, s3;
    assert_int_equal(records_split(set, 42, 0.1, 0.2, &s1), 0);
    assert_int_equal(records_split(set, 42, 0.1, 0.2, &s2), 0);
    assert_int_equal(records_split(set, 43, 0.1, 0.2, &s3), 0);
    assert_int_equal(s1.n[DATA_SPLIT_TRAIN] + s1.n[DATA_SPLIT_VALID] + s1.n[DATA_SPLIT_TEST], 100);
    /* stratified: 20% of each label in test */
    assert_int_equal(s1.n[DATA_SPLIT_TEST], 12 + 6 + 2);
    assert_int_equal(s1.n[DATA_SPLIT_VALID], 6 + 3 + 1);
    int seen[100] = {0}, differs = 0;
    for (int s = 0; s < 3; s++) {
        assert_int_equal(s1.n[s], s2.n[s]);
        for (size_t i = 0; i < s1.n[s]; i++) {
            assert_int_equal(s1.idx[s][i], s2.idx[s][i]);
            if (i < s3.n[s] && s1.idx[s][i] != s3.idx[s][i]) differs = 1;
            if (i) assert_true(s1.idx[s][i] > s1.idx[s][i - 1]); /* file order */
            seen[s1.idx[s][i]]++;
        }
    }
    for (int i = 0; i < 100; i++) assert_int_equal(seen[i], 1);
    assert_true(differs);
    size_t test_c = 0;
    for (size_t i = 0; i < s1.n[DATA_SPLIT_TEST]; i++)
        test_c += records_get(set, s1.idx[DATA_SPLIT_TEST][i])->label == 2;
    assert_int_equal(test_c, 2);
    records_split_free(&s1);
    records_split_free(&s2);
    records_split_free(&s3);
    records_split_free(&s3);
    assert_int_equal(records_split(set, 1, 0.5, 0.5, &s1), -1);
    assert_int_equal(records_split(set, 1, -0.1, 0.2, &s1), -1);
    records_destroy(&set);
}

static void test_utf8_and_rng(void **state)
{
    (void)state;
    assert_int_equal(data_utf8_check("abc", 3), 3);
    assert_int_equal(data_utf8_check("a\xC3\xA9z", 4), 4);
    assert_int_equal(data_utf8_check("\xF0\x9F\x98\x80", 4), 4); /* emoji */
    assert_int_equal(data_utf8_check("ab\xC3", 3), 2);           /* truncated */
    assert_int_equal(data_utf8_check("\xE0\x80\xAF", 3), 0);     /* overlong */
    assert_int_equal(data_utf8_check("x\xFF", 2), 1);
    uint64_t a = 5, b = 5;
    for (int i = 0; i < 1000; i++) {
        uint32_t x = data_rng_below(&a, 7);
        assert_true(x < 7);
        assert_int_equal(x, data_rng_below(&b, 7));
        double u = data_rng_uniform(&a);
        assert_true(u >= 0 && u < 1);
        data_rng_uniform(&b);
    }
}

static int s_setup(void **state)
{
    (void)state;
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char path[700];
    snprintf(path, sizeof path, "%s/top.jsonl", s_dir);
    unlink(path);
    rmdir(s_dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jsonl_good),
        cmocka_unit_test(test_jsonl_bom_crlf_custom_fields),
        cmocka_unit_test(test_jsonl_errors),
        cmocka_unit_test(test_skip_unknown_and_empty),
        cmocka_unit_test(test_collected_labels),
        cmocka_unit_test(test_csv_good),
        cmocka_unit_test(test_csv_errors),
        cmocka_unit_test(test_files_and_top_labels),
        cmocka_unit_test(test_bad_records_all_listed),
        cmocka_unit_test(test_gzip_records),
        cmocka_unit_test(test_labels_parse),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_utf8_and_rng),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
