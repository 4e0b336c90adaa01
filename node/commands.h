/* Entry points of medfl-node's subcommands (argv[0] is the subcommand name). */
#ifndef MEDFL_NODE_COMMANDS_H
#define MEDFL_NODE_COMMANDS_H

int cmd_import_model(int argc, char **argv);
int cmd_check_data(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_privacy(int argc, char **argv);
int cmd_node_run(int argc, char **argv);
int cmd_node_keygen(int argc, char **argv);
int cmd_node_example_config(int argc, char **argv);
int cmd_train_local(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_init_adapter(int argc, char **argv);
int cmd_export_adapter(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);

#endif
