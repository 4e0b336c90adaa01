/* medfl-aggregator: the consortium's aggregation service and its tools. Each subcommand
 * lives with the module that implements it; this file only lists them. */
#include "common/cli.h"
#include "aggregator/commands.h"

static const cli_command_t s_commands[] = {
    {"run", cmd_agg_run, "run the aggregation service (-c aggregator.conf)"},
    {"keygen", cmd_agg_keygen, "create the aggregator's CURVE and identity key pairs"},
    {"enroll", cmd_agg_enroll, "admit a node: enroll NODE_ID PUBKEY"},
    {"revoke", cmd_agg_revoke, "revoke a node's enrollment: revoke NODE_ID"},
    {"nodes", cmd_agg_nodes, "list enrolled nodes and their connection state"},
    {"status", cmd_agg_status, "show whether the service runs, its endpoint, connected nodes"},
    {"example-config", cmd_agg_example_config, "print a commented config with every option"},
    {"versions", cmd_versions, "list the signed version chain (verify with --key-dir)"},
    {"rollback", cmd_rollback, "move the head back to VERSION (history kept)"},
    {"export", cmd_export, "export VERSION as a Hugging Face PEFT adapter (--peft DIR)"},
    {"init-version", cmd_init_version, "seed the federation from a PEFT adapter"},
    {"report", cmd_report, "write a self-contained HTML report of the federation (-o FILE)"},
    {"weights", cmd_weights, "contribution weights per round and node, with components"},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return cli_dispatch("medfl-aggregator", "secure aggregation service for a hospital consortium",
                        s_commands, argc, argv);
}
