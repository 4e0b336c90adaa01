/* medfl-node's subcommands around the daemon: `run`, `keygen`, `example-config`. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/service.h"
#include "node/commands.h"
#include "node/node.h"
#include "node/node_config.h"

#define PROG "medfl-node"

static int s_no_extra(int argc, char **argv, const char *usage)
{
    if (argc > 1)
        return medfl_error_set(MEDFL_EINVAL, "unexpected argument '%s' (usage: %s)", argv[1], usage);
    return 0;
}

/* The node as service_run_daemon sees it. */
static void *s_daemon_new(const void *cfg, const char *config_path)
{
    return node_new(cfg, config_path);
}
static int s_daemon_run(void *node) { return node_run(node); }
static void s_daemon_destroy(void *node)
{
    node_t *self = node;
    node_destroy(&self);
}

int cmd_node_run(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " PROG " run [-c CONFIG]\n\n"
               "Runs the hospital node in the foreground until SIGTERM or SIGINT: connects to the\n"
               "aggregator, says hello with its identity and capabilities, keeps the session alive\n"
               "and re-establishes it after an aggregator restart. CONFIG defaults to\n"
               NODE_CONFIG_DEFAULT_PATH "; `" PROG " example-config` prints every option.\n"
               "Exit status: 0 stopped by a signal, 1 configuration or start error,\n"
               "3 revoked by the aggregator.\n");
        return 0;
    }
    const char *path = node_config_take_path(&argc, argv);
    if (s_no_extra(argc, argv, PROG " run [-c CONFIG]") != 0) return cli_fail(PROG);
    node_config_t cfg;
    if (node_config_load(&cfg, path) != 0) return cli_fail(PROG);
    return service_run_daemon(&(service_daemon_t){
        .program = PROG, .instance = cfg.node_id, .config_path = path, .log_level = cfg.log_level,
        .log_format = cfg.log_format, .log_file = cfg.log_file, .cfg = &cfg,
        .create = s_daemon_new, .run = s_daemon_run, .destroy = s_daemon_destroy});
}

int cmd_node_keygen(int argc, char **argv)
{
    const char *usage = PROG " keygen [-d KEYDIR | -c CONFIG] [--force]";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Writes this node's CURVE key pair (curve.pub, curve.key) and Ed25519 identity key\n"
               "pair (identity.pub, identity.key) into KEYDIR (default: key_dir of CONFIG).\n"
               "Secret files are mode 0600; existing keys are kept unless --force is given.\n"
               "Prints the public keys to hand to the consortium for enrollment:\n"
               "  medfl-aggregator enroll NODE_ID 'CURVE_PUBLIC' --identity IDENTITY_PUBLIC\n",
               usage);
        return 0;
    }
    const char *dir = NULL;
    bool force = false, has_config = false;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--force")) force = true;
        else if (!strcmp(argv[i], "-d") && i + 1 < argc) dir = argv[++i];
        else if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) {
            has_config = true;
            path = argv[++i];
        } else {
            medfl_error_set(MEDFL_EINVAL, "unexpected argument '%s' (usage: %s)", argv[i], usage);
            return cli_fail(PROG);
        }
    }
    node_config_t cfg;
    if (!dir) {
        if (has_config) {
            /* Only key_dir matters here; a config still missing its aggregator key must
             * not stop the node from creating its keys first. */
            memset(&cfg, 0, sizeof cfg);
            if (cfg_load(node_config_table, &cfg, path) != 0) return cli_fail(PROG);
        } else if (cfg_set_defaults(node_config_table, &cfg) != 0) {
            return cli_fail(PROG);
        }
        dir = cfg.key_dir;
    }
    char z85[KEYS_Z85_LEN + 1], hex[2 * KEYS_SIGN_PUBLIC_BYTES + 1];
    if (keys_keygen(dir, force, stdout, z85, hex) != 0) return cli_fail(PROG);
    printf("# enroll with: medfl-aggregator enroll NODE_ID '%s' --identity %s\n", z85, hex);
    return 0;
}

int cmd_node_example_config(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " PROG " example-config [-c CONFIG]\n\n"
               "Prints every configuration option with its help, bounds and default, as a\n"
               "loadable config file (configs/node.example.conf is this output). With -c,\n"
               "CONFIG is checked as `run` loads it and its values are printed in place of the\n"
               "defaults (paths resolved to absolute ones): what the file means, in full.\n");
        return 0;
    }
    bool has_config = false;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) has_config = true;
    const char *path = node_config_take_path(&argc, argv);
    if (s_no_extra(argc, argv, PROG " example-config [-c CONFIG]") != 0) return cli_fail(PROG);
    if (has_config) {
        char abs[PATH_MAX];
        node_config_t cfg;
        if (node_config_load(&cfg, realpath(path, abs) ? abs : path) != 0) return cli_fail(PROG);
        printf("# " PROG " configuration: %s with every default filled in (generated by\n"
               "# `" PROG " example-config -c`); paths are absolute.\n\n", path);
        cfg_write_values(node_config_table, &cfg, stdout);
        return 0;
    }
    printf("# medfl-node configuration (generated by `medfl-node example-config`).\n"
           "# Every option is shown with its default; relative paths resolve against the folder\n"
           "# of this file. Unknown keys, wrong types and out-of-range values are errors.\n\n");
    cfg_write_example(node_config_table, stdout);
    return 0;
}
