/* Tokenizer: every string of tests/ref/fixtures/tokenizer_ref.jsonl (made by
 * tests/ref/make_tokenizer_ref.py from Hugging Face's BertTokenizer) must give exactly the same
 * ids, uncased and cased, with and without truncation/padding; the first mismatch is printed
 * with its context. Also invalid UTF-8 (named by byte offset), vocab errors, encode edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "node/engine/tokenizer.h"

#define FIX "tests/ref/fixtures/"

static char *s_unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    char *out = malloc(n + 1);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (char)v;
    }
    out[n] = '\0';
    *len = n;
    return out;
}

static void s_print_ids(const tokenizer_t *tok, const char *what, const int32_t *ids, size_t n)
{
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d(%s)", ids[i], tokenizer_token(tok, ids[i]));
    fprintf(stderr, "\n");
}

/* Compares got[] with the JSON int array; prints the first difference and returns false. */
static bool s_same(const tokenizer_t *tok, int line, const char *field, const char *text,
                   const cJSON *want, const int32_t *got, size_t n)
{
    size_t wn = (size_t)cJSON_GetArraySize(want);
    int32_t *w = calloc(wn + 1, sizeof *w);
    for (size_t i = 0; i < wn; i++) w[i] = (int32_t)cJSON_GetArrayItem(want, (int)i)->valueint;
    size_t i = 0;
    while (i < wn && i < n && w[i] == got[i]) i++;
    bool ok = i == wn && i == n;
    if (!ok) {
        fprintf(stderr, "MISMATCH fixture line %d, %s, text \"%s\": first difference at "
                        "position %zu\n", line, field, text, i);
        s_print_ids(tok, "expected", w, wn);
        s_print_ids(tok, "got     ", got, n);
    }
    free(w);
    return ok;
}

static void test_matches_hugging_face(void **state)
{
    (void)state;
    tokenizer_t *tok[2] = {tokenizer_new(FIX "vocab_uncased_small.txt", true),
                           tokenizer_new(FIX "vocab_cased_small.txt", false)};
    const char *names[2] = {"uncased", "cased"};
    assert_non_null(tok[0]);
    assert_non_null(tok[1]);
    FILE *f = fopen(FIX "tokenizer_ref.jsonl", "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, checked = 0, failures = 0;
    while (getline(&line, &cap, f) > 0) {
        lineno++;
        cJSON *rec = cJSON_Parse(line);
        assert_non_null(rec);
        size_t len;
        char *text = s_unhex(cJSON_GetObjectItem(rec, "hex")->valuestring, &len);
        const char *shown = cJSON_GetObjectItem(rec, "text")->valuestring;
        for (int k = 0; k < 2; k++) {
            int32_t *pieces;
            size_t n;
            assert_int_equal(tokenizer_tokenize(tok[k], text, len, &pieces, &n), 0);
            int32_t *full = malloc((n + 2) * sizeof *full);
            full[0] = tokenizer_cls_id(tok[k]);
            if (n) memcpy(full + 1, pieces, n * sizeof *full);
            full[n + 1] = tokenizer_sep_id(tok[k]);
            if (!s_same(tok[k], lineno, names[k], shown, cJSON_GetObjectItem(rec, names[k]),
                        full, n + 2))
                failures++;
            int32_t ids[16], mask[16], types[16];
            size_t npieces;
            int real = tokenizer_encode(tok[k], text, len, 16, ids, mask, types, &npieces);
            assert_int_equal(real, n + 2 < 16 ? (int)(n + 2) : 16);
            assert_int_equal(npieces, n);
            char field[32];
            snprintf(field, sizeof field, "%s_pad16", names[k]);
            if (!s_same(tok[k], lineno, field, shown, cJSON_GetObjectItem(rec, field), ids, 16))
                failures++;
            snprintf(field, sizeof field, "%s_mask16", names[k]);
            if (!s_same(tok[k], lineno, field, shown, cJSON_GetObjectItem(rec, field), mask, 16))
                failures++;
            for (int i = 0; i < 16; i++) assert_int_equal(types[i], 0);
            free(full);
            free(pieces);
            if (failures) break;
        }
        free(text);
        cJSON_Delete(rec);
        checked++;
        if (failures) break;
    }
    free(line);
    fclose(f);
    tokenizer_destroy(&tok[0]);
    tokenizer_destroy(&tok[1]);
    tokenizer_destroy(&tok[1]); /* safe twice */
    printf("tokenizer: %d fixture strings checked\n", checked);
    assert_int_equal(failures, 0);
    assert_true(checked >= 200);
}

static void s_expect_invalid(const tokenizer_t *tok, const char *bytes, size_t len, size_t at)
{
    int32_t *ids = (int32_t *)0x1;
    size_t n = 7;
    assert_int_equal(tokenizer_tokenize(tok, bytes, len, &ids, &n), -1);
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    char want[64];
    snprintf(want, sizeof want, "invalid UTF-8 at byte %zu", at);
    if (!strstr(medfl_error_message(), want))
        fail_msg("message '%s' lacks '%s'", medfl_error_message(), want);
    int32_t buf[8];
    assert_int_equal(tokenizer_encode(tok, bytes, len, 8, buf, buf, NULL, NULL), -1);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    tokenizer_t *tok = tokenizer_new(FIX "vocab_uncased_small.txt", true);
    assert_non_null(tok);
    s_expect_invalid(tok, "ok \xff", 4, 3);            /* never valid byte */
    s_expect_invalid(tok, "ab\xc3", 3, 2);             /* truncated 2-byte */
    s_expect_invalid(tok, "\xc0\xaf", 2, 0);           /* overlong '/' */
    s_expect_invalid(tok, "x\xe0\x80\xaf", 4, 1);      /* overlong 3-byte */
    s_expect_invalid(tok, "12\xed\xa0\x80", 5, 2);     /* UTF-16 surrogate */
    s_expect_invalid(tok, "\xf4\x90\x80\x80", 4, 0);   /* above U+10FFFF */
    s_expect_invalid(tok, "caf\xc3\xa9 \x80", 7, 6);   /* stray continuation */
    s_expect_invalid(tok, "a\xe2\x82z", 4, 1);         /* bad continuation */
    assert_int_equal(utf8_first_invalid("caf\xc3\xa9", 5), 5);
    /* Valid 4-byte and the highest code point are accepted. */
    int32_t *ids;
    size_t n;
    assert_int_equal(tokenizer_tokenize(tok, "\xf4\x8f\xbf\xbf \xf0\x9f\x98\x80", 9, &ids, &n), 0);
    free(ids);
    tokenizer_destroy(&tok);
}

static void test_encode_edges(void **state)
{
    (void)state;
    tokenizer_t *tok = tokenizer_new(FIX "vocab_uncased_small.txt", true);
    assert_non_null(tok);
    int32_t ids[4], mask[4];
    assert_int_equal(tokenizer_encode(tok, "", 0, 4, ids, mask, NULL, NULL), 2);
    assert_int_equal(ids[0], tokenizer_cls_id(tok));
    assert_int_equal(ids[1], tokenizer_sep_id(tok));
    assert_int_equal(ids[2], tokenizer_pad_id(tok));
    assert_int_equal(mask[1], 1);
    assert_int_equal(mask[2], 0);
    /* max_len 2 keeps only [CLS] [SEP]; below that is an argument error. */
    size_t np;
    assert_int_equal(tokenizer_encode(tok, "chest pain", 10, 2, ids, NULL, NULL, &np), 2);
    assert_true(np >= 2);
    assert_int_equal(tokenizer_encode(tok, "x", 1, 1, ids, NULL, NULL, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EINVAL);
    assert_int_equal(tokenizer_token_id(tok, "[CLS]"), tokenizer_cls_id(tok));
    assert_int_equal(tokenizer_token_id(tok, "no-such-token-here"), -1);
    assert_null(tokenizer_token(tok, -1));
    assert_null(tokenizer_token(tok, (int32_t)tokenizer_vocab_size(tok)));
    assert_true(tokenizer_lowercase(tok));
    /* Very long text: one word per 2 bytes, no quadratic blow-up, truncation reported. */
    size_t big = 1 << 20;
    char *text = malloc(big);
    for (size_t i = 0; i < big; i++) text[i] = (i % 2) ? ' ' : 'a';
    int32_t ids128[128];
    assert_int_equal(tokenizer_encode(tok, text, big, 128, ids128, NULL, NULL, &np), 128);
    assert_int_equal(np, big / 2);
    assert_int_equal(ids128[127], tokenizer_sep_id(tok));
    free(text);
    tokenizer_destroy(&tok);
}

static void test_vocab_errors(void **state)
{
    (void)state;
    assert_null(tokenizer_new("tests/ref/fixtures/no-such-vocab.txt", true));
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_non_null(strstr(medfl_error_message(), "no-such-vocab.txt"));
    char path[] = "/tmp/medfl-test-vocab-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("[PAD]\r\n[UNK]\n[CLS]\nhello\n", f); /* no [SEP] */
    fclose(f);
    assert_null(tokenizer_new(path, true));
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    assert_non_null(strstr(medfl_error_message(), "[SEP]"));
    f = fopen(path, "w");
    fputs("[PAD]\n[UNK]\n[CLS]\n[SEP]\nbad\xff\n", f);
    fclose(f);
    assert_null(tokenizer_new(path, true));
    assert_non_null(strstr(medfl_error_message(), ":5:"));
    f = fopen(path, "w");
    fclose(f);
    assert_null(tokenizer_new(path, true));
    assert_non_null(strstr(medfl_error_message(), "empty"));
    /* CRLF lines are accepted; a repeated token maps to its last line as in HF. */
    f = fopen(path, "w");
    fputs("[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello\r\nhello\r\n", f);
    fclose(f);
    tokenizer_t *tok = tokenizer_new(path, true);
    assert_non_null(tok);
    assert_int_equal(tokenizer_token_id(tok, "hello"), 5);
    assert_int_equal(tokenizer_pad_id(tok), 0);
    tokenizer_destroy(&tok);
    unlink(path);
    const char *list[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "chest", "##s"};
    tok = tokenizer_new_from_list(list, 6, false);
    assert_non_null(tok);
    int32_t *ids;
    size_t n;
    assert_int_equal(tokenizer_tokenize(tok, "chests Chest", 12, &ids, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 4);
    assert_int_equal(ids[1], 5);
    assert_int_equal(ids[2], 1);
    free(ids);
    tokenizer_destroy(&tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_hugging_face),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_encode_edges),
        cmocka_unit_test(test_vocab_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
