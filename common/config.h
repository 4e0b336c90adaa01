/* INI-style configuration driven by one option table per program (name, type, bounds,
 * default, reloadable, help), in the manner of Redis' and Tor's config tables. The table
 * describes a plain struct by field offsets, so a loaded config is a value that can be
 * copied, compared and swapped on SIGHUP after the whole new file validated.
 *
 * File syntax:   # comment          ; comment
 *                [section]          key = value        key = "quoted value"
 * A key inside [section] is named "section.key" in the table. Errors name file, line and
 * key: "node.conf:12: key 'train.epochs': value 0 below minimum 1". Unknown keys and
 * sections are errors: a typo must not silently leave an option at its default. */
#ifndef MEDFL_CONFIG_H
#define MEDFL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CFG_STR_MAX 512

typedef enum {
    CFG_INT,    /* int64_t, bounds min..max */
    CFG_DOUBLE, /* double, bounds min..max */
    CFG_BOOL,   /* bool: true/false/yes/no/on/off/1/0 */
    CFG_STRING, /* char[CFG_STR_MAX] */
    CFG_PATH,   /* char[CFG_STR_MAX]; relative paths resolve against the config's folder */
    CFG_ENUM,   /* char[CFG_STR_MAX]; one of the '|'-separated choices */
} cfg_type_t;

typedef struct {
    const char *name;     /* "section.key" or "key" */
    cfg_type_t type;
    size_t offset;        /* offsetof(program_config_t, field) */
    double min, max;      /* CFG_INT / CFG_DOUBLE bounds, inclusive */
    const char *def;      /* default, written as in the file; NULL = required */
    bool reloadable;      /* may change on SIGHUP without a restart */
    const char *choices;  /* CFG_ENUM: "auto|cpu|cuda" */
    const char *help;     /* one line for --help and the example configs */
} cfg_option_t;

/* Tables end with an entry whose name is NULL. */

/* Fills every option of out with its default. Required options (def == NULL) are left
 * zeroed and reported by cfg_load when missing. */
int cfg_set_defaults(const cfg_option_t *table, void *out);

/* Loads path over the defaults. On error returns -1 with medfl_error_message() naming
 * file, line and key; out is then unspecified (load into a scratch copy for reloads). */
int cfg_load(const cfg_option_t *table, void *out, const char *path)
    __attribute__((warn_unused_result));

/* Like cfg_load, but for commands that read a few options of a program's config (e.g.
 * `medfl-node privacy -c node.conf` reads the privacy keys while the daemon is stopped):
 * keys of whole (the program's full table) that table lacks are skipped; a key or
 * [section] that whole does not know is an error naming file, line and key, so a typo is
 * refused by every command that reads the file, not only by the daemon. Syntax errors and
 * bad values of the table's keys are errors naming file, line and key. */
int cfg_load_subset(const cfg_option_t *table, const cfg_option_t *whole, void *out,
                    const char *path) __attribute__((warn_unused_result));

/* Applies one "key=value" override (CLI --set), same checks as the file. */
int cfg_set(const cfg_option_t *table, void *out, const char *key, const char *value,
            const char *origin) __attribute__((warn_unused_result));

/* Compares two loaded configs: returns the number of options that differ and are not
 * reloadable, writing their names comma-separated into names (may be NULL). */
int cfg_diff_nonreloadable(const cfg_option_t *table, const void *a, const void *b,
                           char *names, size_t names_size);
/* True when the option differs between the two configs. */
bool cfg_option_differs(const cfg_option_t *opt, const void *a, const void *b);

/* Writes every option as a commented example config (help, bounds, default). */
void cfg_write_example(const cfg_option_t *table, FILE *out);
/* The same, with the values of a loaded config (cfg) in place of the defaults: what a
 * config file means once defaults are filled in (`example-config -c FILE`). */
void cfg_write_values(const cfg_option_t *table, const void *cfg, FILE *out);

const cfg_option_t *cfg_find(const cfg_option_t *table, const char *name);

/* Line of path where `key` ("section.key") is set, 0 when it is not (or the file cannot be
 * read): for checks made after loading (rules tying options together, or a value another
 * module validates) that must still name FILE:LINE. */
unsigned cfg_line_of(const char *path, const char *key);

#endif
