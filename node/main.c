/* medfl-node: the hospital's training node and its tools. Each subcommand lives with the
 * module that implements it; this file only lists them. */
#include "common/cli.h"
#include "node/commands.h"

static const cli_command_t s_commands[] = {
    {"import-model", cmd_import_model, "import a base model: Hugging Face BERT folder (base.h5) or GGUF decoder"},
    {"check-data", cmd_check_data, "schema checks and de-identification gate over the records"},
    {"synth", cmd_synth, "write synthetic de-identified clinical records for K sites"},
    {"privacy", cmd_privacy, "privacy budget: what-if calculator, spent/remaining, history"},
    {"train-local", cmd_train_local, "fine-tune the adapters on the local records (-c node.conf)"},
    {"eval", cmd_eval, "evaluate a saved adapter: loss, accuracy, macro-F1"},
    {"tokenize", cmd_tokenize, "print the token ids of each standard-input line (--model BASE)"},
    {"generate", cmd_generate, "continue a prompt with a decoder LLM (--model BASE --prompt TEXT)"},
    {"init-adapter", cmd_init_adapter, "write the initial adapter a federation starts from (PEFT)"},
    {"export-adapter", cmd_export_adapter, "write a verified global version as an adapter file"},
    {"run", cmd_node_run, "run the hospital node (-c node.conf)"},
    {"keygen", cmd_node_keygen, "create this node's CURVE and identity key pairs"},
    {"example-config", cmd_node_example_config, "print a commented config with every option"},
    {NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return cli_dispatch("medfl-node", "hospital training node for federated fine-tuning",
                        s_commands, argc, argv);
}
