/* De-identification gate: recall on the planted-PHI corpus (tests/data/deid/phi.jsonl,
 * ground truth from tests/ref/make_deid_corpus.py) must be >= 0.98 with the right rule,
 * the false-positive rate on clean clinical records <= 0.02, and redaction must remove every
 * planted string. Plus targeted cases per rule (positives and the clinical look-alikes that
 * must stay unflagged), redaction output, policies and the gate over a records set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/data.h"
#include "node/deid.h"

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

/* Calls fn for every JSON line of path. */
static int s_each_line(const char *path, void (*fn)(cJSON *, void *), void *ctx)
{
    size_t len;
    char *buf = s_read(path, &len);
    if (!buf) return -1;
    int n = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(line);
        assert_non_null(o);
        fn(o, ctx);
        cJSON_Delete(o);
        n++;
    }
    free(buf);
    return n;
}

/* ---------------------------------------------------------------- corpus */

typedef struct {
    int planted, found, planted_by_rule[DEID_RULE_COUNT], found_by_rule[DEID_RULE_COUNT];
    int leaks;
    int records, flagged;
    uint32_t flagged_rules;
} s_stats_t;

static void s_phi_record(cJSON *o, void *ctx)
{
    s_stats_t *st = ctx;
    const char *text = cJSON_GetObjectItem(o, "text")->valuestring;
    size_t len = strlen(text);
    deid_span_t *v;
    size_t n;
    assert_int_equal(deid_scan(text, len, &v, &n), 0);
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(o, "phi")) {
        deid_rule_t rule;
        assert_int_equal(deid_rule_parse(cJSON_GetObjectItem(p, "rule")->valuestring, &rule), 0);
        size_t a = (size_t)cJSON_GetObjectItem(p, "start")->valuedouble;
        size_t b = (size_t)cJSON_GetObjectItem(p, "end")->valuedouble;
        int hit = 0;
        for (size_t i = 0; i < n; i++)
            if (v[i].rule == rule && v[i].start < b && a < v[i].end) hit = 1;
        st->planted++;
        st->planted_by_rule[rule]++;
        st->found += hit;
        st->found_by_rule[rule] += hit;
        if (!hit)
            print_message("missed %s: \"%.*s\"\n", deid_rule_name(rule), (int)(b - a), text + a);
    }
    free(v);
    /* Redaction must remove every planted string. */
    char *copy = strdup(text);
    size_t clen = len;
    assert_true(deid_redact(&copy, &clen) > 0);
    assert_int_equal(strlen(copy), clen);
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(o, "phi")) {
        const char *needle = cJSON_GetObjectItem(p, "needle")->valuestring;
        if (strstr(copy, needle)) {
            st->leaks++;
            print_message("redaction left \"%s\" in: %s\n", needle, copy);
        }
    }
    free(copy);
}

static void s_clean_record(cJSON *o, void *ctx)
{
    s_stats_t *st = ctx;
    const char *text = cJSON_GetObjectItem(o, "text")->valuestring;
    deid_span_t *v;
    size_t n;
    assert_int_equal(deid_scan(text, strlen(text), &v, &n), 0);
    st->records++;
    if (n) {
        st->flagged++;
        for (size_t i = 0; i < n; i++) {
            st->flagged_rules |= 1u << v[i].rule;
            print_message("false positive %s: \"%.*s\"\n", deid_rule_name(v[i].rule),
                          (int)(v[i].end - v[i].start), text + v[i].start);
        }
    }
    free(v);
}

static void test_corpus_recall_and_redaction(void **state)
{
    (void)state;
    s_stats_t st = {0};
    int n = s_each_line("tests/data/deid/phi.jsonl", s_phi_record, &st);
    assert_true(n >= 100);
    for (int r = 0; r < DEID_RULE_COUNT; r++) {
        print_message("%-12s planted %3d found %3d\n", deid_rule_name((deid_rule_t)r),
                      st.planted_by_rule[r], st.found_by_rule[r]);
        assert_true(st.planted_by_rule[r] >= 3); /* every kind of PHI is in the corpus */
    }
    double recall = (double)st.found / st.planted;
    print_message("recall: %.4f (%d/%d planted)\n", recall, st.found, st.planted);
    assert_true(recall >= 0.98);
    assert_int_equal(st.leaks, 0);
}

static void test_corpus_false_positive_rate(void **state)
{
    (void)state;
    s_stats_t st = {0};
    int n = s_each_line("tests/data/deid/clean.jsonl", s_clean_record, &st);
    assert_true(n >= 100);
    double fpr = (double)st.flagged / st.records;
    print_message("false_positive_rate: %.4f (%d/%d clean records flagged)\n", fpr, st.flagged,
                  st.records);
    assert_true(fpr <= 0.02);
}

/* ---------------------------------------------------------------- Unicode variants */

/* tests/data/deid/unicode_variants.jsonl (tests/ref/make_deid_unicode_corpus.py): the same
 * identifiers written with no-break/thin/ideographic spaces, line breaks, dashes, fullwidth
 * forms, zero-width characters, other cases, surname particles. Every one must be flagged
 * by the right rule over its whole byte span (recall 1.0), and redaction must remove every
 * word of it while leaving the clinical text around it byte for byte. */
typedef struct {
    int variants, covered, redacted_ok;
    int by_rule[DEID_RULE_COUNT];
} s_uni_t;

/* Whether word occurs in text as a whole word (not inside a longer ASCII word). */
static int s_has_word(const char *text, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = strstr(text, word); p; p = strstr(p + 1, word)) {
        int left = p == text || !isalnum((unsigned char)p[-1]);
        int right = !isalnum((unsigned char)p[n]);
        if (left && right) return 1;
    }
    return 0;
}

static void s_unicode_record(cJSON *o, void *ctx)
{
    s_uni_t *st = ctx;
    const char *text = cJSON_GetObjectItem(o, "text")->valuestring;
    const char *variant = cJSON_GetObjectItem(o, "variant")->valuestring;
    size_t len = strlen(text);
    deid_rule_t rule;
    assert_int_equal(deid_rule_parse(cJSON_GetObjectItem(o, "rule")->valuestring, &rule), 0);
    size_t a = (size_t)cJSON_GetObjectItem(o, "start")->valuedouble;
    size_t b = (size_t)cJSON_GetObjectItem(o, "end")->valuedouble;
    assert_true(a < b && b <= len);
    st->variants++;
    st->by_rule[rule]++;
    deid_span_t *v;
    size_t n;
    assert_int_equal(deid_scan(text, len, &v, &n), 0);
    int hit = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i].rule == rule && v[i].start <= a && b <= v[i].end) hit = 1;
    free(v);
    st->covered += hit;
    if (!hit)
        print_message("missed %s (%s): \"%.*s\"\n", deid_rule_name(rule), variant,
                      (int)(b - a), text + a);
    /* Redaction: no word of the PHI left, the text around it intact. */
    char *copy = strdup(text);
    size_t clen = len;
    assert_true(deid_redact(&copy, &clen) >= 0);
    const char *prefix = cJSON_GetObjectItem(o, "prefix")->valuestring;
    const char *suffix = cJSON_GetObjectItem(o, "suffix")->valuestring;
    int ok = strncmp(copy, prefix, strlen(prefix)) == 0 && clen >= strlen(suffix) &&
             strcmp(copy + clen - strlen(suffix), suffix) == 0;
    const cJSON *tok;
    cJSON_ArrayForEach(tok, cJSON_GetObjectItem(o, "tokens"))
        if (s_has_word(copy, tok->valuestring)) ok = 0;
    st->redacted_ok += ok;
    if (!ok) print_message("redaction (%s, %s): %s\n", deid_rule_name(rule), variant, copy);
    free(copy);
}

static void test_unicode_variants_recall(void **state)
{
    (void)state;
    s_uni_t st = {0};
    int n = s_each_line("tests/data/deid/unicode_variants.jsonl", s_unicode_record, &st);
    assert_true(n >= 100);
    for (int r = 0; r < DEID_RULE_COUNT; r++) assert_true(st.by_rule[r] >= 3);
    print_message("unicode variants: %d/%d flagged with the right rule, %d redacted cleanly\n",
                  st.covered, st.variants, st.redacted_ok);
    assert_int_equal(st.covered, st.variants);
    assert_int_equal(st.redacted_ok, st.variants);
}

static void s_unicode_negative(cJSON *o, void *ctx)
{
    int *flagged = ctx;
    const char *text = cJSON_GetObjectItem(o, "text")->valuestring;
    deid_span_t *v;
    size_t n;
    assert_int_equal(deid_scan(text, strlen(text), &v, &n), 0);
    for (size_t i = 0; i < n; i++)
        print_message("false positive %s: \"%.*s\" in: %s\n", deid_rule_name(v[i].rule),
                      (int)(v[i].end - v[i].start), text + v[i].start, text);
    *flagged += n > 0;
    free(v);
}

static void test_unicode_negatives(void **state)
{
    (void)state;
    int flagged = 0;
    int n = s_each_line("tests/data/deid/unicode_negatives.jsonl", s_unicode_negative, &flagged);
    assert_true(n >= 20);
    assert_int_equal(flagged, 0);
}

/* Spans are in original bytes: a redaction of text full of multi-byte separators replaces
 * exactly the identifier, and a zero-width character inside it goes with it. */
static void test_unicode_redaction_offsets(void **state)
{
    (void)state;
    char *t = strdup("\u00e9t\u00e9: Dr.\u00a0S\u200bmith\u2009\u2014 call 555\u2013123\u20134567.");
    size_t len = strlen(t);
    assert_int_equal(deid_redact(&t, &len), 2);
    assert_string_equal(t, "\u00e9t\u00e9: Dr.\u00a0[NAME]\u2009\u2014 call [PHONE].");
    assert_int_equal(strlen(t), len);
    free(t);
    /* CRLF between title and name; invalid UTF-8 bytes pass through without a crash. */
    t = strdup("Dr.\r\nSmith \xff\xfe Dr. \xc3");
    len = strlen(t);
    assert_int_equal(deid_redact(&t, &len), 1);
    assert_string_equal(t, "Dr.\r\n[NAME] \xff\xfe Dr. \xc3");
    free(t);
}

/* ---------------------------------------------------------------- targeted cases */

static uint32_t s_mask(const char *text) { return deid_scan_mask(text, strlen(text)); }
#define BIT(r) (1u << (r))

static void test_rules_positive(void **state)
{
    (void)state;
    struct { const char *text; deid_rule_t rule; } cases[] = {
        {"Seen by Dr. Smith today.", DEID_NAME},
        {"Mr. John Doe returns.", DEID_NAME},
        {"patient Jane Roe was seen", DEID_NAME},
        {"Patient Name:\n  Jane Roe", DEID_NAME},
        {"Electronically signed by Sarah Connor", DEID_NAME},
        {"Jane A. Roe, MD", DEID_NAME},
        {"Seen by Dr. Müller.", DEID_NAME},
        {"on 03/14/2021", DEID_DATE},
        {"2021-03-14", DEID_DATE},
        {"March 14, 2021", DEID_DATE},
        {"14 Mar 2021", DEID_DATE},
        {"on the 3rd of May", DEID_DATE},
        {"since March 2019", DEID_DATE},
        {"kidney transplant in 12/07", DEID_DATE},
        {"rectal exam done on 10/99.", DEID_DATE},
        {"PSA from 7/2008 (4.2)", DEID_DATE},
        {"discharged1/19/93.", DEID_DATE},
        {"on February 6,2007", DEID_DATE},
        {"(555) 123-4567", DEID_PHONE},
        {"+1 555 123 4567", DEID_PHONE},
        {"Fax: 555-987-6543", DEID_FAX},
        {"jane.roe@example.com", DEID_EMAIL},
        {"123-45-6789", DEID_SSN},
        {"SSN 123456789", DEID_SSN},
        {"MRN: 1234567", DEID_MRN},
        {"MR# A-998877", DEID_MRN},
        {"Acct 44556677", DEID_ACCOUNT},
        {"Member ID: W123456789", DEID_ACCOUNT},
        {"https://x.example.org/a", DEID_URL},
        {"www.example.com", DEID_URL},
        {"192.168.1.20", DEID_IP},
        {"2001:db8::ff00:42:8329", DEID_IP},
        {"123 Main Street", DEID_ADDRESS},
        {"Apt 4B", DEID_ADDRESS},
        {"P.O. Box 4432", DEID_ADDRESS},
        {"she lives in Bakersfield", DEID_ADDRESS},
        {"Springfield, IL 62704", DEID_ZIP},
        {"ZIP code 02115-1234", DEID_ZIP},
        {"a 92-year-old man", DEID_AGE_OVER_89},
        {"age 95", DEID_AGE_OVER_89},
        {"aged 90", DEID_AGE_OVER_89},
        {"93 y/o", DEID_AGE_OVER_89},
        {"ninety-two-year-old", DEID_AGE_OVER_89},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint32_t m = s_mask(cases[i].text);
        if (!(m & BIT(cases[i].rule)))
            fail_msg("'%s' not flagged as %s (mask 0x%x)", cases[i].text,
                     deid_rule_name(cases[i].rule), m);
    }
}

static void test_rules_clinical_negatives(void **state)
{
    (void)state;
    const char *clean[] = {
        "Dr. visit next week.", "500 mg twice daily, 2.5 mL", "WBC 12.3, Na 138, K 4.1",
        "BP 140/90, HR 92", "in 2015", "since 2019", "2008-2012", "1/2 tablet", "pain 8/10",
        "strength 5/5", "Crohn's disease", "Parkinson's disease", "Hodgkin lymphoma",
        "Apgar 8/9", "Glasgow Coma Scale 15", "Babinski sign", "Foley catheter",
        "Patient Education", "Patient Active Problem List", "Mother: Hypertension.",
        "67-year-old woman", "platelets 250,000", "INR 2.3", "10:30", "Drug Name: Lisinopril",
        "Operating Suite 3", "call if fever above 101.5", "ICD-10 K50.90", "L4-L5",
        "T2N1M0", "Gleason 3+4=7", "MS flare", "ratio 1:1", "taking into account 3 factors",
        "may improve in March", "Epstein-Barr virus", "Wolff-Parkinson-White", "",
        "HR 95 bpm, SpO2 92%", "weight 92 kg", "1 g in 1/2 NS", "in 1/5 lymph nodes",
        "pain in 8/10", "on 3/4 L of oxygen", "on 1/2 tablet", "pressures 31/14/21 mmHg",
    };
    for (size_t i = 0; i < sizeof clean / sizeof clean[0]; i++) {
        uint32_t m = s_mask(clean[i]);
        if (m) fail_msg("'%s' flagged (mask 0x%x)", clean[i], m);
    }
}

static void test_redact_output(void **state)
{
    (void)state;
    char *t = strdup("Dr. Smith saw the 92-year-old on 03/14/2021; MRN: 1234567.");
    size_t len = strlen(t);
    assert_int_equal(deid_redact(&t, &len), 4);
    assert_string_equal(t, "Dr. [NAME] saw the [AGE_OVER_89]-year-old on [DATE]; MRN: [MRN].");
    assert_int_equal(len, strlen(t));
    free(t);
    /* Surnames that are eponyms too are still names after a title or before a degree. */
    t = strdup("Dr. John Murphy and Ann Wilson, MD; positive Murphy sign.");
    len = strlen(t);
    assert_int_equal(deid_redact(&t, &len), 2);
    assert_string_equal(t, "Dr. [NAME] and [NAME], MD; positive Murphy sign.");
    /* Clean text is left alone. */
    assert_int_equal(deid_redact(&t, &len), 0);
    free(t);
}

static void test_names_and_policies(void **state)
{
    (void)state;
    for (int r = 0; r < DEID_RULE_COUNT; r++) {
        deid_rule_t back;
        assert_int_equal(deid_rule_parse(deid_rule_name((deid_rule_t)r), &back), 0);
        assert_int_equal(back, r);
    }
    deid_rule_t rr;
    assert_int_equal(deid_rule_parse("PASSPORT", &rr), -1);
    assert_null(deid_rule_name(DEID_RULE_COUNT));
    deid_policy_t p;
    assert_int_equal(deid_policy_parse("refuse", &p), 0);
    assert_int_equal(p, DEID_POLICY_REFUSE);
    assert_int_equal(deid_policy_parse("redact", &p), 0);
    assert_int_equal(p, DEID_POLICY_REDACT);
    assert_int_equal(deid_policy_parse("off", &p), 0);
    assert_int_equal(p, DEID_POLICY_OFF);
    assert_int_equal(deid_policy_parse("maybe", &p), -1);
    assert_non_null(strstr(medfl_error_message(), "maybe"));
}

static void test_gate_over_records(void **state)
{
    (void)state;
    const char *buf =
        "{\"text\": \"Seen by Dr. Smith on 03/14/2021.\", \"label\": \"a\"}\n"
        "{\"text\": \"WBC 12.3, BP 140/90, Crohn's disease since 2015.\", \"label\": \"b\"}\n"
        "{\"text\": \"Call 555-123-4567.\", \"label\": \"a\"}\n";
    records_t *set = records_new();
    assert_int_equal(records_load_buffer(set, "mem", buf, strlen(buf), NULL), 0);

    char out[512] = "";
    FILE *f = fmemopen(out, sizeof out, "w");
    size_t flagged = 99;
    uint32_t seen = 0;
    assert_int_equal(deid_gate_records(set, DEID_POLICY_REFUSE, f, &flagged, &seen), 0);
    fclose(f);
    assert_int_equal(flagged, 2);
    assert_string_equal(out, "record 1: NAME,DATE\nrecord 3: PHONE\n");
    assert_int_equal(seen, BIT(DEID_NAME) | BIT(DEID_DATE) | BIT(DEID_PHONE));
    assert_null(strstr(out, "Smith"));
    /* refuse does not modify the texts */
    assert_non_null(strstr(records_get(set, 0)->text, "Smith"));

    assert_int_equal(deid_gate_records(set, DEID_POLICY_OFF, NULL, &flagged, NULL), 0);
    assert_int_equal(flagged, 0);

    assert_int_equal(deid_gate_records(set, DEID_POLICY_REDACT, NULL, &flagged, NULL), 0);
    assert_int_equal(flagged, 2);
    assert_string_equal(records_get(set, 0)->text, "Seen by Dr. [NAME] on [DATE].");
    assert_string_equal(records_get(set, 2)->text, "Call [PHONE].");
    assert_int_equal(records_get(set, 2)->text_len, strlen("Call [PHONE]."));
    /* After redaction the set is clean. */
    assert_int_equal(deid_gate_records(set, DEID_POLICY_REFUSE, NULL, &flagged, NULL), 0);
    assert_int_equal(flagged, 0);
    records_destroy(&set);
    records_destroy(&set);
}

static void test_config_to_opts(void **state)
{
    (void)state;
    data_config_t c;
    memset(&c, 0, sizeof c);
    strcpy(c.records, "x.csv");
    strcpy(c.format, "auto");
    strcpy(c.text_field, "transcription");
    strcpy(c.label_field, "medical_specialty");
    strcpy(c.labels, " Surgery , Radiology ");
    c.max_text_bytes = 4096;
    records_opts_t o;
    char **labels;
    size_t n;
    assert_int_equal(data_config_to_opts(&c, NULL, &o, &labels, &n), 0);
    assert_int_equal(o.format, DATA_FORMAT_CSV);
    assert_int_equal(n, 2);
    assert_string_equal(o.labels[1], "Radiology");
    assert_int_equal(o.max_text_bytes, 4096);
    data_labels_free(labels, n);
    c.labels[0] = '\0';
    c.skip_unknown_labels = true;
    assert_int_equal(data_config_to_opts(&c, NULL, &o, &labels, &n), -1);
    assert_non_null(strstr(medfl_error_message(), "data.labels"));
    strcpy(c.records, "x.parquet");
    c.skip_unknown_labels = false;
    assert_int_equal(data_config_to_opts(&c, NULL, &o, &labels, &n), -1);
    /* top_labels: the K most frequent labels of the file, others skipped when asked. */
    strcpy(c.records, "tests/data/deid/clean.jsonl");
    strcpy(c.text_field, "text");
    strcpy(c.label_field, "label");
    c.top_labels = 2;
    c.skip_unknown_labels = true;
    c.max_text_bytes = 0;
    assert_int_equal(data_config_to_opts(&c, NULL, &o, &labels, &n), 0);
    assert_int_equal(n, 2);
    records_t *set = records_new();
    assert_int_equal(records_load_file(set, c.records, &o), 0);
    assert_int_equal(records_n_labels(set), 2);
    assert_true(records_skipped(set) > 0);
    size_t counts[2];
    records_label_counts(set, counts);
    assert_true(counts[0] >= counts[1]);
    assert_int_equal(counts[0] + counts[1] + records_skipped(set), 150);
    records_destroy(&set);
    data_labels_free(labels, n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus_recall_and_redaction),
        cmocka_unit_test(test_corpus_false_positive_rate),
        cmocka_unit_test(test_unicode_variants_recall),
        cmocka_unit_test(test_unicode_negatives),
        cmocka_unit_test(test_unicode_redaction_offsets),
        cmocka_unit_test(test_rules_positive),
        cmocka_unit_test(test_rules_clinical_negatives),
        cmocka_unit_test(test_redact_output),
        cmocka_unit_test(test_names_and_policies),
        cmocka_unit_test(test_gate_over_records),
        cmocka_unit_test(test_config_to_opts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
