/* Entry points of medfl-aggregator's subcommands (argv[0] is the subcommand name). */
#ifndef MEDFL_AGGREGATOR_COMMANDS_H
#define MEDFL_AGGREGATOR_COMMANDS_H

#endif
