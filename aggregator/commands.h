/* Entry points of medfl-aggregator's subcommands (argv[0] is the subcommand name). */
#ifndef MEDFL_AGGREGATOR_COMMANDS_H
#define MEDFL_AGGREGATOR_COMMANDS_H

int cmd_agg_run(int argc, char **argv);
int cmd_agg_keygen(int argc, char **argv);
int cmd_agg_enroll(int argc, char **argv);
int cmd_agg_revoke(int argc, char **argv);
int cmd_agg_nodes(int argc, char **argv);
int cmd_agg_status(int argc, char **argv);
int cmd_agg_example_config(int argc, char **argv);
int cmd_versions(int argc, char **argv);
int cmd_rollback(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_init_version(int argc, char **argv);
int cmd_weights(int argc, char **argv);
int cmd_report(int argc, char **argv);

#endif
