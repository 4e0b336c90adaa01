/* Logging for medfl daemons and tools: levels, domains (NET, CRYPTO, TRAIN, AGG, CONFIG,
 * ...), plain text when writing to a terminal and JSON lines when configured (for journald
 * or log shippers). One process-wide sink guarded by a mutex; messages are written with a
 * single fwrite so lines from threads never interleave. Never pass secrets to it. */
#ifndef MEDFL_LOG_H
#define MEDFL_LOG_H

#include <stdbool.h>
#include <stdio.h>

typedef enum { LOG_LEVEL_DEBUG = 0, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR } log_level_t;

typedef enum {
    LOG_DOM_MAIN = 0,
    LOG_DOM_NET,
    LOG_DOM_CRYPTO,
    LOG_DOM_TRAIN,
    LOG_DOM_AGG,
    LOG_DOM_CONFIG,
    LOG_DOM_PRIVACY,
    LOG_DOM_DATA,
    LOG_DOM_COUNT
} log_domain_t;

typedef enum { LOG_FORMAT_AUTO = 0, LOG_FORMAT_TEXT, LOG_FORMAT_JSON } log_format_t;

/* Sets the sink (NULL = stderr), minimum level and format. AUTO picks text on a terminal
 * and JSON lines otherwise only when explicitly configured, i.e. AUTO == TEXT unless set. */
void log_configure(FILE *sink, log_level_t min_level, log_format_t format);
/* Adds a fixed "program" field (e.g. "medfl-node") and an instance name to every line. */
void log_set_identity(const char *program, const char *instance);
int log_level_parse(const char *name, log_level_t *out);
int log_format_parse(const char *name, log_format_t *out);
const char *log_domain_name(log_domain_t domain);
bool log_enabled(log_level_t level);

void log_write(log_level_t level, log_domain_t domain, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_DEBUG(dom, ...) log_write(LOG_LEVEL_DEBUG, LOG_DOM_##dom, __VA_ARGS__)
#define LOG_INFO(dom, ...) log_write(LOG_LEVEL_INFO, LOG_DOM_##dom, __VA_ARGS__)
#define LOG_WARN(dom, ...) log_write(LOG_LEVEL_WARN, LOG_DOM_##dom, __VA_ARGS__)
#define LOG_ERROR(dom, ...) log_write(LOG_LEVEL_ERROR, LOG_DOM_##dom, __VA_ARGS__)

/* Escapes s as the inside of a JSON string into out (always NUL-terminated). */
void log_json_escape(const char *s, char *out, size_t out_size);

#endif
