/* medfl-node's subcommands around the daemon: `run`, `keygen`, `example-config`. */
#include <stdio.h>
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
    FILE *log_file = NULL;
    if (service_log_setup(PROG, cfg.node_id, cfg.log_level, cfg.log_format, cfg.log_file,
                          &log_file) != 0 ||
        service_signals_install() != 0)
        return cli_fail(PROG);
    LOG_INFO(CONFIG, "configuration loaded from %s", path);
    node_t *node = node_new(&cfg, path);
    int rc = 1;
    if (!node) {
        LOG_ERROR(MAIN, "cannot start: %s", medfl_error_message());
        cli_fail(PROG);
    } else {
        rc = node_run(node);
        node_destroy(&node);
        LOG_INFO(MAIN, "stopped");
    }
    log_configure(NULL, LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    if (log_file) fclose(log_file);
    return rc;
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
    keys_t *k = keys_generate();
    if (!k || service_mkdir_p(dir, 0700) != 0 || keys_save(k, dir, force) != 0) {
        keys_destroy(&k);
        return cli_fail(PROG);
    }
    char z85[KEYS_Z85_LEN + 1], hex[2 * KEYS_SIGN_PUBLIC_BYTES + 1], id[KEYS_ID_LEN + 1];
    if (keys_z85_encode(k->curve_public, z85) != 0) {
        keys_destroy(&k);
        return cli_fail(PROG);
    }
    sodium_bin2hex(hex, sizeof hex, k->sign_public, sizeof k->sign_public);
    keys_key_id(k->curve_public, id);
    keys_destroy(&k);
    printf("key_dir: %s\ncurve_public: %s\nidentity_public: %s\nkey_id: %s\n", dir, z85, hex, id);
    printf("# enroll with: medfl-aggregator enroll NODE_ID '%s' --identity %s\n", z85, hex);
    return 0;
}

int cmd_node_example_config(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " PROG " example-config\n\n"
               "Prints every configuration option with its help, bounds and default, as a\n"
               "config file (configs/node.example.conf is this output).\n");
        return 0;
    }
    if (s_no_extra(argc, argv, PROG " example-config") != 0) return cli_fail(PROG);
    printf("# medfl-node configuration (generated by `medfl-node example-config`).\n"
           "# Every option is shown with its default; relative paths resolve against the folder\n"
           "# of this file. Unknown keys, wrong types and out-of-range values are errors.\n\n");
    cfg_write_example(node_config_table, stdout);
    return 0;
}
