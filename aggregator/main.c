/* medfl-aggregator: the consortium's aggregation service and its tools. Each subcommand
 * lives with the module that implements it; this file only lists them. */
#include "common/cli.h"
#include "aggregator/commands.h"

static const cli_command_t s_commands[] = {
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return cli_dispatch("medfl-aggregator", "secure aggregation service for a hospital consortium",
                        s_commands, argc, argv);
}
