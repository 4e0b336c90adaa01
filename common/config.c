/* Option-table driven INI loader. Parsing is strict on purpose: an unknown key, a value of
 * the wrong type or out of bounds, a duplicate key or a malformed line is an error naming
 * the file, line and key, because a silently ignored typo in a privacy budget or a key
 * path is worse than a daemon that refuses to start. */
#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/error.h"

#define CFG_LINE_MAX 4096

const cfg_option_t *cfg_find(const cfg_option_t *table, const char *name)
{
    for (const cfg_option_t *o = table; o->name; o++)
        if (strcmp(o->name, name) == 0) return o;
    return NULL;
}

static char *s_trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1])) *--end = '\0';
    return s;
}

static bool s_choice_ok(const char *choices, const char *v)
{
    size_t vl = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vl && strncmp(p, v, len) == 0) return true;
        if (!bar) break;
        p = bar + 1;
    }
    return false;
}

static int s_parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) { *out = true; return 0; }
        if (strcasecmp(v, no[i]) == 0) { *out = false; return 0; }
    }
    return -1;
}

/* origin is "file:line" (or "default", "--set") and base_dir resolves CFG_PATH. */
static int s_assign(const cfg_option_t *o, void *out, const char *value, const char *origin,
                    const char *base_dir)
{
    char *field = (char *)out + o->offset;
    switch (o->type) {
    case CFG_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end)
            return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': expected an integer, got '%s'",
                                   origin, o->name, value);
        if ((double)v < o->min || (double)v > o->max)
            return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': value %lld outside [%.17g, %.17g]",
                                   origin, o->name, v, o->min, o->max);
        *(int64_t *)field = v;
        return 0;
    }
    case CFG_DOUBLE: {
        char *end;
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v))
            return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': expected a number, got '%s'",
                                   origin, o->name, value);
        if (v < o->min || v > o->max)
            return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': value %g outside [%g, %g]",
                                   origin, o->name, v, o->min, o->max);
        *(double *)field = v;
        return 0;
    }
    case CFG_BOOL:
        if (s_parse_bool(value, (bool *)field) != 0)
            return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': expected true or false, got '%s'",
                                   origin, o->name, value);
        return 0;
    case CFG_ENUM:
        if (!s_choice_ok(o->choices, value))
            return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': '%s' is not one of %s", origin,
                                   o->name, value, o->choices);
        /* fall through */
    case CFG_STRING:
    case CFG_PATH: {
        char buf[CFG_STR_MAX * 2];
        if (o->type == CFG_PATH && value[0] && value[0] != '/' && base_dir && base_dir[0])
            snprintf(buf, sizeof buf, "%s/%s", base_dir, value);
        else
            snprintf(buf, sizeof buf, "%s", value);
        if (strlen(buf) >= CFG_STR_MAX)
            return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': value longer than %d bytes",
                                   origin, o->name, CFG_STR_MAX - 1);
        memcpy(field, buf, strlen(buf) + 1);
        return 0;
    }
    }
    return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': bad option type", origin, o->name);
}

static int s_set_defaults(const cfg_option_t *table, void *out, const char *base_dir)
{
    for (const cfg_option_t *o = table; o->name; o++) {
        if (!o->def) continue;
        if (s_assign(o, out, o->def, "default", base_dir) != 0) return -1;
    }
    return 0;
}

int cfg_set_defaults(const cfg_option_t *table, void *out)
{
    return s_set_defaults(table, out, NULL);
}

int cfg_set(const cfg_option_t *table, void *out, const char *key, const char *value,
            const char *origin)
{
    const cfg_option_t *o = cfg_find(table, key);
    if (!o)
        return medfl_error_set(MEDFL_ECONFIG, "%s: unknown key '%s'", origin, key);
    return s_assign(o, out, value, origin, NULL);
}

/* Whether any option of table lives in [section]. */
static bool s_section_known(const cfg_option_t *table, const char *section)
{
    size_t n = strlen(section);
    for (const cfg_option_t *o = table; o->name; o++)
        if (strncmp(o->name, section, n) == 0 && o->name[n] == '.') return true;
    return false;
}

/* whole: the table the file as a whole must obey. Keys of whole that table lacks are
 * another command's and skipped; keys of neither (typos) are errors, as in the program
 * that owns the file. */
static int s_load(const cfg_option_t *table, const cfg_option_t *whole, void *out,
                  const char *path)
{
    bool subset = whole != table;
    char base_dir[CFG_STR_MAX] = "";
    const char *slash = strrchr(path, '/');
    if (slash && (size_t)(slash - path) < sizeof base_dir) {
        memcpy(base_dir, path, (size_t)(slash - path));
        base_dir[slash - path] = '\0';
        if (!base_dir[0]) strcpy(base_dir, "/");
    }
    /* Default paths are relative to the config file too, like paths written in it. */
    if (s_set_defaults(table, out, base_dir) != 0) return -1;
    FILE *f = fopen(path, "r");
    if (!f)
        return medfl_error_set(MEDFL_ECONFIG, "%s: cannot open: %s", path, strerror(errno));

    size_t n_opts = 0;
    while (table[n_opts].name) n_opts++;
    unsigned *seen_line = calloc(n_opts ? n_opts : 1, sizeof *seen_line);
    if (!seen_line) {
        fclose(f);
        return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    }

    char line[CFG_LINE_MAX];
    char section[128] = "";
    unsigned lineno = 0;
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        char origin[CFG_STR_MAX + 32];
        snprintf(origin, sizeof origin, "%s:%u", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            rc = medfl_error_set(MEDFL_ECONFIG, "%s: line longer than %d bytes", origin,
                                 CFG_LINE_MAX - 2);
            break;
        }
        char *s = s_trim(line);
        if (!*s || *s == '#' || *s == ';') continue;
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (!close || close[1] != '\0' || close == s + 1 ||
                (size_t)(close - s - 1) >= sizeof section) {
                rc = medfl_error_set(MEDFL_ECONFIG, "%s: malformed section header '%s'", origin, s);
                break;
            }
            *close = '\0';
            snprintf(section, sizeof section, "%s", s_trim(s + 1));
            /* "[trian]" would otherwise only be caught by its first key, or never when
             * it is empty; name the section itself. */
            if (!s_section_known(whole, section)) {
                rc = medfl_error_set(MEDFL_ECONFIG, "%s: unknown section '[%s]'", origin,
                                     section);
                break;
            }
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = medfl_error_set(MEDFL_ECONFIG, "%s: expected 'key = value', got '%s'", origin, s);
            break;
        }
        *eq = '\0';
        char *key = s_trim(s);
        char *value = s_trim(eq + 1);
        /* A trailing " # comment" after an unquoted value is a comment. */
        if (*value == '"') {
            char *endq = strrchr(value + 1, '"');
            if (!endq || *s_trim(endq + 1)) {
                rc = medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': unterminated quoted value",
                                     origin, key);
                break;
            }
            *endq = '\0';
            value++;
        } else {
            char *hash = strstr(value, " #");
            if (hash) { *hash = '\0'; value = s_trim(value); }
        }
        char full[256];
        if (section[0])
            snprintf(full, sizeof full, "%s.%s", section, key);
        else
            snprintf(full, sizeof full, "%s", key);
        const cfg_option_t *o = cfg_find(table, full);
        if (!o && subset && cfg_find(whole, full)) continue; /* another command's key */
        if (!o) {
            rc = medfl_error_set(MEDFL_ECONFIG, "%s: unknown key '%s'", origin, full);
            break;
        }
        size_t idx = (size_t)(o - table);
        if (seen_line[idx]) {
            rc = medfl_error_set(MEDFL_ECONFIG, "%s: key '%s' already set on line %u", origin,
                                 full, seen_line[idx]);
            break;
        }
        seen_line[idx] = lineno;
        rc = s_assign(o, out, value, origin, base_dir);
    }
    if (rc == 0 && ferror(f))
        rc = medfl_error_set(MEDFL_ECONFIG, "%s: read error", path);
    for (size_t i = 0; rc == 0 && i < n_opts; i++) {
        if (!table[i].def && !seen_line[i])
            rc = medfl_error_set(MEDFL_ECONFIG, "%s: required key '%s' is missing", path,
                                 table[i].name);
    }
    free(seen_line);
    fclose(f);
    return rc;
}

int cfg_load(const cfg_option_t *table, void *out, const char *path)
{
    return s_load(table, table, out, path);
}

int cfg_load_subset(const cfg_option_t *table, const cfg_option_t *whole, void *out,
                    const char *path)
{
    return s_load(table, whole, out, path);
}

bool cfg_option_differs(const cfg_option_t *o, const void *a, const void *b)
{
    const char *fa = (const char *)a + o->offset;
    const char *fb = (const char *)b + o->offset;
    switch (o->type) {
    case CFG_INT: return *(const int64_t *)fa != *(const int64_t *)fb;
    case CFG_DOUBLE: return *(const double *)fa != *(const double *)fb;
    case CFG_BOOL: return *(const bool *)fa != *(const bool *)fb;
    default: return strcmp(fa, fb) != 0;
    }
}

int cfg_diff_nonreloadable(const cfg_option_t *table, const void *a, const void *b,
                           char *names, size_t names_size)
{
    int count = 0;
    size_t used = 0;
    if (names && names_size) names[0] = '\0';
    for (const cfg_option_t *o = table; o->name; o++) {
        if (o->reloadable || !cfg_option_differs(o, a, b)) continue;
        count++;
        if (names && used < names_size) {
            int w = snprintf(names + used, names_size - used, "%s%s", count > 1 ? ", " : "",
                             o->name);
            if (w > 0) used += (size_t)w;
        }
    }
    return count;
}

/* The value of o in a loaded config, written as the file would hold it. */
static void s_format_value(const cfg_option_t *o, const void *cfg, char *out, size_t size)
{
    const char *field = (const char *)cfg + o->offset;
    switch (o->type) {
    case CFG_INT: snprintf(out, size, "%lld", (long long)*(const int64_t *)field); break;
    case CFG_DOUBLE: snprintf(out, size, "%.17g", *(const double *)field); break;
    case CFG_BOOL: snprintf(out, size, "%s", *(const bool *)field ? "true" : "false"); break;
    default: snprintf(out, size, "%s", field); break;
    }
}

static void s_write_option(const cfg_option_t *o, const char *key, const void *cfg, FILE *out)
{
    fprintf(out, "# %s\n", o->help ? o->help : "");
    if (o->type == CFG_INT)
        fprintf(out, "# integer in [%.0f, %.0f]", o->min, o->max);
    else if (o->type == CFG_DOUBLE)
        fprintf(out, "# number in [%g, %g]", o->min, o->max);
    else if (o->type == CFG_ENUM)
        fprintf(out, "# one of %s", o->choices);
    else if (o->type == CFG_BOOL)
        fprintf(out, "# true or false");
    else
        fprintf(out, "# %s", o->type == CFG_PATH ? "path (relative to this file)" : "text");
    fprintf(out, "%s\n", o->reloadable ? "; reloadable with SIGHUP" : "; needs a restart");
    char value[CFG_STR_MAX + 32];
    if (cfg) {
        s_format_value(o, cfg, value, sizeof value);
        /* quoted so that a value holding " #" reads back unchanged */
        fprintf(out, "%s%s = \"%s\"\n\n", value[0] ? "" : "# ", key, value);
    } else if (o->def) {
        fprintf(out, "%s%s = %s\n\n", o->def[0] ? "" : "# ", key, o->def);
    } else {
        fprintf(out, "%s =   # required\n\n", key);
    }
}

void cfg_write_example(const cfg_option_t *table, FILE *out)
{
    cfg_write_values(table, NULL, out);
}

void cfg_write_values(const cfg_option_t *table, const void *cfg, FILE *out)
{
    /* Keys without a section must precede the first [section] header. */
    for (const cfg_option_t *o = table; o->name; o++)
        if (!strchr(o->name, '.')) s_write_option(o, o->name, cfg, out);
    char section[128] = "";
    for (const cfg_option_t *o = table; o->name; o++) {
        const char *dot = strchr(o->name, '.');
        if (!dot) continue;
        char sec[128];
        snprintf(sec, sizeof sec, "%.*s", (int)(dot - o->name), o->name);
        if (strcmp(sec, section) != 0) {
            fprintf(out, "[%s]\n", sec);
            snprintf(section, sizeof section, "%s", sec);
        }
        s_write_option(o, dot + 1, cfg, out);
    }
}

unsigned cfg_line_of(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[CFG_LINE_MAX], section[128] = "";
    unsigned lineno = 0, found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        lineno++;
        char *s = s_trim(line);
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (close) *close = '\0';
            snprintf(section, sizeof section, "%s", s_trim(s + 1));
            continue;
        }
        char *eq = strchr(s, '=');
        if (!*s || *s == '#' || *s == ';' || !eq) continue;
        *eq = '\0';
        char full[256];
        snprintf(full, sizeof full, "%s%s%s", section, section[0] ? "." : "", s_trim(s));
        if (strcmp(full, key) == 0) found = lineno;
    }
    fclose(f);
    return found;
}
