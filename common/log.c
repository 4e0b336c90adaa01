/* Process-wide log sink. Text lines look like
 *   2026-11-21T23:10:00.123Z INFO  NET    node hospital-a connected
 * and JSON lines like
 *   {"ts":"...","level":"info","domain":"net","program":"medfl-node","msg":"..."}
 * Each line is formatted into a local buffer and written with one fwrite under a mutex.
 *
 * Messages carry text that came from peers, files and the command line (node ids, file
 * names, error details). A newline in such text would forge a second log line ("\nFAKE
 * INFO ..."), an ESC sequence would rewrite a terminal. So every formatted message has its
 * control characters (C0, DEL, and the C1 range U+0080..U+009F in UTF-8) replaced by
 * visible \xNN escapes before it is framed, here, so that no call site can forget it. */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
static FILE *s_sink;
static log_level_t s_min_level = LOG_LEVEL_INFO;
static log_format_t s_format = LOG_FORMAT_AUTO;
static char s_program[64] = "medfl";
static char s_instance[64];

static const char *const s_level_names[] = {"debug", "info", "warn", "error"};
static const char *const s_domain_names[LOG_DOM_COUNT] = {
    "main", "net", "crypto", "train", "agg", "config", "privacy", "data"};

/* Control bytes to "\xNN" (C1 controls: each of their two UTF-8 bytes). Stops early rather
 * than cut an escape in half; out is always NUL-terminated. */
static void s_escape_controls(const char *s, char *out, size_t out_size)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        int c1 = c == 0xC2 && p[1] >= 0x80 && p[1] <= 0x9F;
        if (c < 0x20 || c == 0x7F || c1) {
            size_t need = c1 ? 8 : 4;
            if (o + need >= out_size) break;
            for (int k = 0; k <= c1; k++) {
                unsigned char b = p[k];
                out[o++] = '\\';
                out[o++] = 'x';
                out[o++] = hex[b >> 4];
                out[o++] = hex[b & 15];
            }
            p += c1;
        } else {
            if (o + 1 >= out_size) break;
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

void log_configure(FILE *sink, log_level_t min_level, log_format_t format)
{
    pthread_mutex_lock(&s_lock);
    s_sink = sink;
    s_min_level = min_level;
    s_format = format;
    pthread_mutex_unlock(&s_lock);
}

void log_set_identity(const char *program, const char *instance)
{
    pthread_mutex_lock(&s_lock);
    snprintf(s_program, sizeof s_program, "%s", program ? program : "medfl");
    s_escape_controls(instance ? instance : "", s_instance, sizeof s_instance);
    pthread_mutex_unlock(&s_lock);
}

int log_level_parse(const char *name, log_level_t *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, s_level_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return -1;
}

int log_format_parse(const char *name, log_format_t *out)
{
    if (strcasecmp(name, "auto") == 0) *out = LOG_FORMAT_AUTO;
    else if (strcasecmp(name, "text") == 0) *out = LOG_FORMAT_TEXT;
    else if (strcasecmp(name, "json") == 0) *out = LOG_FORMAT_JSON;
    else return -1;
    return 0;
}

const char *log_domain_name(log_domain_t domain)
{
    return (unsigned)domain < LOG_DOM_COUNT ? s_domain_names[domain] : "?";
}

bool log_enabled(log_level_t level) { return level >= s_min_level; }

void log_json_escape(const char *s, char *out, size_t out_size)
{
    size_t o = 0;
    if (out_size == 0) return;
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 7 < out_size; p++) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c == '\n') {
            out[o++] = '\\'; out[o++] = 'n';
        } else if (c == '\t') {
            out[o++] = '\\'; out[o++] = 't';
        } else if (c == '\r') {
            out[o++] = '\\'; out[o++] = 'r';
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, out_size - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

static void s_timestamp(char *buf, size_t size)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, size - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

void log_write(log_level_t level, log_domain_t domain, const char *fmt, ...)
{
    if (level < s_min_level) return;
    char raw[LOG_LINE_MAX];
    char msg[LOG_LINE_MAX];
    char line[LOG_LINE_MAX * 2];
    char ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    s_escape_controls(raw, msg, sizeof msg);
    s_timestamp(ts, sizeof ts);

    pthread_mutex_lock(&s_lock);
    FILE *sink = s_sink ? s_sink : stderr;
    int n;
    if (s_format == LOG_FORMAT_JSON) {
        char esc[LOG_LINE_MAX * 2 - 256];
        log_json_escape(msg, esc, sizeof esc);
        n = snprintf(line, sizeof line,
                     "{\"ts\":\"%s\",\"level\":\"%s\",\"domain\":\"%s\",\"program\":\"%s\"%s%s%s,"
                     "\"msg\":\"%s\"}\n",
                     ts, s_level_names[level], log_domain_name(domain), s_program,
                     s_instance[0] ? ",\"instance\":\"" : "", s_instance,
                     s_instance[0] ? "\"" : "", esc);
    } else {
        char dom[16];
        snprintf(dom, sizeof dom, "%s", log_domain_name(domain));
        for (char *d = dom; *d; d++) *d = (char)(*d >= 'a' && *d <= 'z' ? *d - 32 : *d);
        n = snprintf(line, sizeof line, "%s %-5s %-7s %s%s%s\n", ts,
                     level == LOG_LEVEL_DEBUG ? "DEBUG" : level == LOG_LEVEL_INFO ? "INFO"
                     : level == LOG_LEVEL_WARN ? "WARN" : "ERROR",
                     dom, s_instance[0] ? s_instance : "", s_instance[0] ? ": " : "", msg);
    }
    if (n > 0) {
        size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
        if (len == sizeof line - 1) line[len - 1] = '\n';
        fwrite(line, 1, len, sink);
        fflush(sink);
    }
    pthread_mutex_unlock(&s_lock);
}
