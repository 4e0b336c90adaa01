/* medfl-aggregator's subcommands around the daemon: `run`, `keygen`, `enroll`, `revoke`,
 * `nodes`, `status`, `example-config`. The tools talk to the running daemon only through
 * the registry (SQLite), so they work whether the daemon runs or not, and the daemon
 * notices their changes within registry.poll_ms. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "aggregator/agg_config.h"
#include "aggregator/aggregator.h"
#include "aggregator/commands.h"
#include "aggregator/rounds.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/keys.h"
#include "common/log.h"
#include "common/service.h"
#include "common/store.h"

#define PROG "medfl-aggregator"

/* Rejects any flag left after the caller took its own; positional count checked too.
 * Z85's alphabet includes '-', so a 40-character argument is a key, never an option;
 * "--" also ends the options. Positionals are compacted to argv[1..]. */
static int s_check_args(int argc, char **argv, int want_positional, const char *usage)
{
    int positional = 0;
    bool options = true;
    for (int i = 1; i < argc; i++) {
        if (options && strcmp(argv[i], "--") == 0) {
            options = false;
            continue;
        }
        if (options && argv[i][0] == '-' && argv[i][1] && strlen(argv[i]) != KEYS_Z85_LEN)
            return medfl_error_set(MEDFL_EINVAL, "unknown option '%s' (usage: %s)", argv[i], usage);
        argv[++positional] = argv[i];
    }
    if (positional != want_positional)
        return medfl_error_set(MEDFL_EINVAL, "expected %d argument(s), got %d (usage: %s)",
                               want_positional, positional, usage);
    return 0;
}

/* Takes "NAME VALUE" out of argv; NULL when absent. */
static const char *s_take_option(int *argc, char **argv, const char *name)
{
    for (int i = 1; i < *argc; i++) {
        if (strcmp(argv[i], name) == 0 && i + 1 < *argc) {
            const char *v = argv[i + 1];
            for (int j = i; j + 2 <= *argc; j++) argv[j] = argv[j + 2];
            *argc -= 2;
            return v;
        }
    }
    return NULL;
}

static bool s_take_flag(int *argc, char **argv, const char *name)
{
    for (int i = 1; i < *argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            for (int j = i; j + 1 <= *argc; j++) argv[j] = argv[j + 1];
            *argc -= 1;
            return true;
        }
    }
    return false;
}

static store_t *s_open_registry(const char *config_path, agg_config_t *cfg)
{
    if (agg_config_load(cfg, config_path) != 0) return NULL;
    if (service_mkdir_p(cfg->state_dir, 0700) != 0) return NULL;
    char path[CFG_STR_MAX + 32];
    agg_config_registry_path(cfg, path, sizeof path);
    return store_open(path);
}

/* Running = the recorded process exists, did not record a clean stop, and refreshed
 * alive_at recently: a SIGKILLed daemon leaves its last facts behind but stops refreshing
 * them, and its sessions' "connected" flags are stale until the next start resets them. */
static bool s_daemon_running(store_t *store)
{
    char pid_text[32] = "0", alive[32] = "0", stopped[32] = "0";
    store_meta_get(store, "pid", pid_text, sizeof pid_text);
    store_meta_get(store, "alive_at", alive, sizeof alive);
    store_meta_get(store, "stopped_at", stopped, sizeof stopped);
    long pid = strtol(pid_text, NULL, 10);
    long long age = (long long)time(NULL) - strtoll(alive, NULL, 10);
    return pid > 0 && strtoll(stopped, NULL, 10) == 0 &&
           (kill((pid_t)pid, 0) == 0 || errno == EPERM) && age <= 10;
}

/* The aggregator as service_run_daemon sees it. */
static void *s_daemon_new(const void *cfg, const char *config_path)
{
    return aggregator_new(cfg, config_path);
}
static int s_daemon_run(void *agg) { return aggregator_run(agg); }
static void s_daemon_destroy(void *agg)
{
    aggregator_t *self = agg;
    aggregator_destroy(&self);
}

int cmd_agg_run(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " PROG " run [-c CONFIG]\n\n"
               "Runs the aggregation service in the foreground until SIGTERM or SIGINT.\n"
               "CONFIG defaults to " AGG_CONFIG_DEFAULT_PATH "; `" PROG " example-config`\n"
               "prints every option. The bound endpoint is written to STATE_DIR/endpoint.\n");
        return 0;
    }
    const char *path = agg_config_take_path(&argc, argv);
    if (s_check_args(argc, argv, 0, PROG " run [-c CONFIG]") != 0) return cli_fail(PROG);
    agg_config_t cfg;
    if (agg_config_load(&cfg, path) != 0) return cli_fail(PROG);
    return service_run_daemon(&(service_daemon_t){
        .program = PROG, .instance = cfg.name, .config_path = path, .log_level = cfg.log_level,
        .log_format = cfg.log_format, .log_file = cfg.log_file, .cfg = &cfg,
        .create = s_daemon_new, .run = s_daemon_run, .destroy = s_daemon_destroy});
}

int cmd_agg_keygen(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " PROG " keygen [-d KEYDIR | -c CONFIG] [--force]\n\n"
               "Writes a CURVE key pair (curve.pub, curve.key) and an Ed25519 identity key pair\n"
               "(identity.pub, identity.key) into KEYDIR (default: key_dir of CONFIG). Secret\n"
               "files are mode 0600. Existing keys are kept unless --force is given. Prints the\n"
               "public keys: nodes need curve_public in aggregator.public_key.\n");
        return 0;
    }
    bool force = s_take_flag(&argc, argv, "--force");
    const char *dir = s_take_option(&argc, argv, "-d");
    bool has_config = false;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) has_config = true;
    const char *path = agg_config_take_path(&argc, argv);
    if (s_check_args(argc, argv, 0, PROG " keygen [-d KEYDIR | -c CONFIG] [--force]") != 0)
        return cli_fail(PROG);
    agg_config_t cfg;
    if (!dir) {
        if (has_config) {
            if (agg_config_load(&cfg, path) != 0) return cli_fail(PROG);
        } else if (cfg_set_defaults(agg_config_table, &cfg) != 0) {
            return cli_fail(PROG);
        }
        dir = cfg.key_dir;
    }
    char z85[KEYS_Z85_LEN + 1], hex[2 * KEYS_SIGN_PUBLIC_BYTES + 1];
    if (keys_keygen(dir, force, stdout, z85, hex) != 0) return cli_fail(PROG);
    printf("# nodes: aggregator.public_key = \"%s\"  (or aggregator.public_key_file = %s/curve.pub)\n",
           z85, dir);
    return 0;
}

int cmd_agg_enroll(int argc, char **argv)
{
    const char *usage = PROG " enroll NODE_ID CURVE_PUBKEY [--identity HEX] [--replace] [-c CONFIG]";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Admits a node: NODE_ID ([A-Za-z0-9._-], at most 63) with the CURVE public key\n"
               "its `medfl-node keygen` printed (40 Z85 characters; quote it in the shell) or the\n"
               "path of its curve.pub. --identity pins its Ed25519 identity key (64 hex digits);\n"
               "without it the identity of the node's first hello is pinned. A revoked node is\n"
               "re-enrolled with the key given; an active one only with --replace. A running\n"
               "aggregator admits the node within registry.poll_ms, without a restart.\n", usage);
        return 0;
    }
    bool replace = s_take_flag(&argc, argv, "--replace");
    const char *ident = s_take_option(&argc, argv, "--identity");
    const char *path = agg_config_take_path(&argc, argv);
    if (s_check_args(argc, argv, 2, usage) != 0) return cli_fail(PROG);
    const char *node_id = argv[1];
    if (store_node_id_check(node_id) != 0) return cli_fail(PROG);
    uint8_t curve[KEYS_CURVE_BYTES], identity[KEYS_SIGN_PUBLIC_BYTES];
    if (keys_load_curve_public(argv[2], curve) != 0) return cli_fail(PROG);
    if (ident && keys_hex_decode_public(ident, identity, "--identity") != 0) return cli_fail(PROG);
    agg_config_t cfg;
    store_t *store = s_open_registry(path, &cfg);
    if (!store) return cli_fail(PROG);
    int rc = store_enroll(store, node_id, curve, ident ? identity : NULL, replace);
    store_destroy(&store);
    if (rc != 0) return cli_fail(PROG);
    char id[KEYS_ID_LEN + 1];
    keys_key_id(curve, id);
    printf("enrolled node %s (key %s)\n", node_id, id);
    return 0;
}

int cmd_agg_revoke(int argc, char **argv)
{
    const char *usage = PROG " revoke NODE_ID [-c CONFIG]";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Revokes a node's enrollment. A running aggregator refuses the node's key for new\n"
               "connections and cuts its current session off (Error REVOKED) within\n"
               "registry.poll_ms; the node stops. Re-enroll with `" PROG " enroll`.\n", usage);
        return 0;
    }
    const char *path = agg_config_take_path(&argc, argv);
    if (s_check_args(argc, argv, 1, usage) != 0) return cli_fail(PROG);
    agg_config_t cfg;
    store_t *store = s_open_registry(path, &cfg);
    if (!store) return cli_fail(PROG);
    int rc = store_revoke(store, argv[1]);
    store_destroy(&store);
    if (rc != 0) return cli_fail(PROG);
    printf("revoked node %s\n", argv[1]);
    return 0;
}

int cmd_agg_nodes(int argc, char **argv)
{
    const char *usage = PROG " nodes [-c CONFIG]";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Lists enrolled and revoked nodes: id, key id, state, connected (always no while\n"
               "the daemon is not running), last seen (UTC), device and number of records from\n"
               "the node's last hello.\n", usage);
        return 0;
    }
    const char *path = agg_config_take_path(&argc, argv);
    if (s_check_args(argc, argv, 0, usage) != 0) return cli_fail(PROG);
    agg_config_t cfg;
    store_t *store = s_open_registry(path, &cfg);
    if (!store) return cli_fail(PROG);
    store_node_t *nodes = NULL;
    size_t n = 0;
    int rc = store_node_list(store, &nodes, &n);
    bool running = s_daemon_running(store);
    store_destroy(&store);
    if (rc != 0) return cli_fail(PROG);
    printf("%-20s %-16s %-8s %-9s %-20s %-10s %s\n", "NODE", "KEY_ID", "STATE", "CONNECTED",
           "LAST_SEEN", "DEVICE", "RECORDS");
    for (size_t i = 0; i < n; i++) {
        char id[KEYS_ID_LEN + 1], seen[32];
        keys_key_id(nodes[i].curve_public, id);
        service_format_time(nodes[i].last_seen, seen, sizeof seen);
        char records[32] = "-";
        if (nodes[i].last_seen) snprintf(records, sizeof records, "%lld", (long long)nodes[i].n_records);
        printf("%-20s %-16s %-8s %-9s %-20s %-10s %s\n", nodes[i].node_id, id,
               nodes[i].revoked_at ? "revoked" : "enrolled",
               running && nodes[i].connected ? "yes" : "no",
               seen, nodes[i].device[0] ? nodes[i].device : "-", records);
    }
    free(nodes);
    return 0;
}

int cmd_agg_status(int argc, char **argv)
{
    const char *usage = PROG " status [-c CONFIG]";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Shows whether the daemon runs, its instance id, bound endpoint, and how many\n"
               "nodes are enrolled, revoked and connected. Exit status 0 when running, 3 when\n"
               "not running.\n", usage);
        return 0;
    }
    const char *path = agg_config_take_path(&argc, argv);
    if (s_check_args(argc, argv, 0, usage) != 0) return cli_fail(PROG);
    agg_config_t cfg;
    store_t *store = s_open_registry(path, &cfg);
    if (!store) return cli_fail(PROG);
    char instance[64] = "-", endpoint[CFG_STR_MAX] = "-", pid_text[32] = "0", started[32] = "0";
    store_meta_get(store, "instance", instance, sizeof instance);
    store_meta_get(store, "endpoint", endpoint, sizeof endpoint);
    store_meta_get(store, "pid", pid_text, sizeof pid_text);
    store_meta_get(store, "started_at", started, sizeof started);
    bool running = s_daemon_running(store);
    store_node_t *nodes = NULL;
    size_t n = 0;
    int rc = store_node_list(store, &nodes, &n);
    store_destroy(&store);
    if (rc != 0) return cli_fail(PROG);
    size_t enrolled = 0, revoked = 0, connected = 0;
    for (size_t i = 0; i < n; i++) {
        if (nodes[i].revoked_at) revoked++;
        else enrolled++;
        if (nodes[i].connected && !nodes[i].revoked_at) connected++;
    }
    free(nodes);
    long pid = strtol(pid_text, NULL, 10);
    char started_text[32];
    service_format_time(strtoll(started, NULL, 10), started_text, sizeof started_text);
    printf("running: %s\n", running ? "yes" : "no");
    printf("instance: %s\nendpoint: %s\npid: %ld\nstarted: %s\n", instance, endpoint, pid,
           started_text);
    printf("enrolled: %zu\nrevoked: %zu\nconnected: %zu\n", enrolled, revoked,
           running ? connected : (size_t)0);
    char db_path[CFG_STR_MAX + 32];
    agg_config_registry_path(&cfg, db_path, sizeof db_path);
    rounds_print_status(db_path, stdout);
    return running ? 0 : 3;
}

int cmd_agg_example_config(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        printf("Usage: " PROG " example-config [-c CONFIG]\n\n"
               "Prints every configuration option with its help, bounds and default, as a\n"
               "loadable config file (configs/aggregator.example.conf is this output). With -c,\n"
               "CONFIG is checked as `run` loads it and its values are printed in place of the\n"
               "defaults (paths resolved to absolute ones): what the file means, in full.\n");
        return 0;
    }
    bool has_config = false;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) has_config = true;
    const char *path = agg_config_take_path(&argc, argv);
    if (s_check_args(argc, argv, 0, PROG " example-config [-c CONFIG]") != 0) return cli_fail(PROG);
    if (has_config) {
        char abs[PATH_MAX];
        agg_config_t cfg;
        if (agg_config_load(&cfg, realpath(path, abs) ? abs : path) != 0) return cli_fail(PROG);
        printf("# " PROG " configuration: %s with every default filled in (generated by\n"
               "# `" PROG " example-config -c`); paths are absolute.\n\n", path);
        cfg_write_values(agg_config_table, &cfg, stdout);
        return 0;
    }
    printf("# medfl-aggregator configuration (generated by `medfl-aggregator example-config`).\n"
           "# Every option is shown with its default; relative paths resolve against the folder\n"
           "# of this file. Unknown keys, wrong types and out-of-range values are errors.\n\n");
    cfg_write_example(agg_config_table, stdout);
    return 0;
}
