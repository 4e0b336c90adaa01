/* Subcommand dispatch shared by medfl-node, medfl-aggregator and medfl-bench: one table of
 * (name, handler, summary), `PROG --help` listing it, `PROG CMD --help` handled by each
 * handler (cli_wants_help). Handlers return the process exit status. */
#ifndef MEDFL_CLI_H
#define MEDFL_CLI_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    const char *summary;
} cli_command_t;

/* Dispatches argv[1]; prints usage and returns 2 on an unknown or missing command. */
int cli_dispatch(const char *prog, const char *about, const cli_command_t *table, int argc,
                 char **argv);

/* True when argv holds -h or --help. */
bool cli_wants_help(int argc, char **argv);

/* Prints "PROG: message" for the current medfl error and returns 1. */
int cli_fail(const char *prog);

#endif
