/* Subcommand dispatch and the shared --help / error-exit conventions of medfl's programs. */
#include "common/cli.h"

#include <stdio.h>
#include <string.h>

#include "common/error.h"

static void s_usage(FILE *out, const char *prog, const char *about, const cli_command_t *table)
{
    fprintf(out, "%s — %s\n\nUsage: %s COMMAND [options]   (%s COMMAND --help for details)\n\n"
                 "Commands:\n", prog, about, prog, prog);
    for (const cli_command_t *c = table; c->name; c++)
        fprintf(out, "  %-14s %s\n", c->name, c->summary);
}

bool cli_wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) return true;
    return false;
}

int cli_dispatch(const char *prog, const char *about, const cli_command_t *table, int argc,
                 char **argv)
{
    if (argc < 2) {
        s_usage(stderr, prog, about, table);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        s_usage(stdout, prog, about, table);
        return 0;
    }
    for (const cli_command_t *c = table; c->name; c++)
        if (strcmp(c->name, argv[1]) == 0) return c->run(argc - 1, argv + 1);
    fprintf(stderr, "%s: unknown command '%s'\n\n", prog, argv[1]);
    s_usage(stderr, prog, about, table);
    return 2;
}

int cli_fail(const char *prog)
{
    fprintf(stderr, "%s: %s\n", prog, medfl_error_message());
    return 1;
}
