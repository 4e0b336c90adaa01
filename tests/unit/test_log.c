/* common/log: a message carrying text from a peer or a file (a node id, a field name) must
 * stay one log line whatever bytes it holds, in text and JSON formats: newlines, carriage
 * returns, ESC, other C0/C1 controls and DEL come out as visible \xNN escapes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/log.h"

/* Logs msg to a memory sink in the given format and returns what was written (free it). */
static char *s_capture(log_format_t format, const char *msg)
{
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    assert_non_null(f);
    log_configure(f, LOG_LEVEL_DEBUG, format);
    LOG_INFO(NET, "peer said %s", msg);
    log_configure(NULL, LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    fclose(f);
    return buf;
}

static size_t s_count(const char *s, char c)
{
    size_t n = 0;
    for (; *s; s++) n += *s == c;
    return n;
}

static void test_newline_cannot_forge_a_line(void **state)
{
    (void)state;
    const log_format_t formats[] = {LOG_FORMAT_TEXT, LOG_FORMAT_JSON};
    for (size_t f = 0; f < 2; f++) {
        char *out = s_capture(formats[f], "x\nFAKE INFO line\r\n2026-01-01T00:00:00Z ERROR x");
        assert_int_equal(s_count(out, '\n'), 1);
        assert_null(strchr(out, '\r'));
        assert_non_null(strstr(out, "\\x0a"));
        assert_non_null(strstr(out, "FAKE INFO line"));
        free(out);
    }
}

static void test_controls_escaped(void **state)
{
    (void)state;
    /* ESC [2J (clear screen), BEL, DEL, a C1 NEL (U+0085) and a C1 CSI (U+009B). */
    char *out = s_capture(LOG_FORMAT_TEXT, "a\x1b[2Jb\x07" "c\x7f" "d\xc2\x85" "e\xc2\x9b" "f");
    assert_int_equal(s_count(out, '\n'), 1);
    for (const char *p = out; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\n') continue;
        assert_true(c >= 0x20 && c != 0x7f);
        if (c == 0xc2) assert_false((unsigned char)p[1] >= 0x80 && (unsigned char)p[1] <= 0x9f);
    }
    assert_non_null(strstr(out, "a\\x1b[2Jb\\x07c\\x7fd\\xc2\\x85e\\xc2\\x9bf"));
    free(out);
    /* Ordinary UTF-8 (é, en dash) is kept as it is. */
    out = s_capture(LOG_FORMAT_TEXT, "Jos\xc3\xa9 \xe2\x80\x93 ok");
    assert_non_null(strstr(out, "Jos\xc3\xa9 \xe2\x80\x93 ok"));
    free(out);
}

static void test_json_stays_valid(void **state)
{
    (void)state;
    char *out = s_capture(LOG_FORMAT_JSON, "q\"\x1b\n");
    assert_int_equal(s_count(out, '\n'), 1);
    assert_non_null(strstr(out, "q\\\"\\\\x1b\\\\x0a"));
    free(out);
}

static void test_long_message_cut_whole(void **state)
{
    (void)state;
    /* Escapes quadruple the size: a long run of newlines is cut, never half an escape. */
    char big[5000];
    memset(big, '\n', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char *out = s_capture(LOG_FORMAT_TEXT, big);
    assert_int_equal(s_count(out, '\n'), 1);
    const char *last = strrchr(out, 'a'); /* last "\x0a" */
    assert_non_null(last);
    assert_int_equal(last[1], '\n');
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_newline_cannot_forge_a_line),
        cmocka_unit_test(test_controls_escaped),
        cmocka_unit_test(test_json_stays_valid),
        cmocka_unit_test(test_long_message_cut_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
