/* The aggregator's option table and the checks across options. Defaults are the paths of
 * a packaged install (FHS: keys under /etc, state under /var/lib); relative paths written
 * in a config file resolve against the file's folder, which is what tests and demos use. */
#include "aggregator/agg_config.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"

#define O(f) offsetof(agg_config_t, f)

const cfg_option_t agg_config_table[] = {
    {"name", CFG_STRING, O(name), 0, 0, "aggregator", false, NULL,
     "name of this aggregator in logs and status output"},
    {"key_dir", CFG_PATH, O(key_dir), 0, 0, "/etc/medfl/aggregator/keys", false, NULL,
     "folder with curve.pub/curve.key/identity.pub/identity.key (medfl-aggregator keygen)"},
    {"state_dir", CFG_PATH, O(state_dir), 0, 0, "/var/lib/medfl/aggregator", false, NULL,
     "folder for the node registry (registry.db) and the bound-endpoint file (endpoint)"},
    {"net.bind", CFG_STRING, O(bind), 0, 0, "tcp://0.0.0.0:7750", false, NULL,
     "ZeroMQ endpoint the ROUTER binds; tcp://HOST:* picks a free port (written to state_dir/endpoint)"},
    {"net.heartbeat_interval_ms", CFG_INT, O(heartbeat_ivl_ms), 100, 600000, "1000", false, NULL,
     "period of transport and application heartbeats, told to nodes in Welcome"},
    {"net.heartbeat_timeout_ms", CFG_INT, O(heartbeat_timeout_ms), 300, 3600000, "5000", false,
     NULL, "a node silent for this long is marked disconnected (at least 3 heartbeat intervals)"},
    {"net.max_update_mib", CFG_INT, O(max_update_mib), 1, 4096, "2048", false, NULL,
     "largest bulk frame (update tensors) accepted from a node, in MiB"},
    {"registry.poll_ms", CFG_INT, O(registry_poll_ms), 100, 60000, "1000", true, NULL,
     "how often the daemon checks the registry for enroll/revoke made by the tools"},
    {"log.level", CFG_ENUM, O(log_level), 0, 0, "info", true, "debug|info|warn|error",
     "least severe level written"},
    {"log.format", CFG_ENUM, O(log_format), 0, 0, "text", true, "text|json",
     "text lines, or JSON lines for log shippers"},
    {"log.file", CFG_PATH, O(log_file), 0, 0, "", false, NULL,
     "append the log to this file; empty = standard error (journald under systemd)"},
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

int agg_config_load(agg_config_t *cfg, const char *path)
{
    memset(cfg, 0, sizeof *cfg);
    if (cfg_load(agg_config_table, cfg, path) != 0) return -1;
    if (cfg->heartbeat_timeout_ms < 3 * cfg->heartbeat_ivl_ms)
        return medfl_error_set(MEDFL_ECONFIG,
                               "%s: key 'net.heartbeat_timeout_ms': %lld is less than 3 x "
                               "'net.heartbeat_interval_ms' (%lld); one lost heartbeat would "
                               "disconnect a node",
                               path, (long long)cfg->heartbeat_timeout_ms,
                               (long long)cfg->heartbeat_ivl_ms);
    if (strncmp(cfg->bind, "tcp://", 6) != 0 && strncmp(cfg->bind, "ipc://", 6) != 0)
        return medfl_error_set(MEDFL_ECONFIG, "%s: key 'net.bind': '%s' is not a tcp:// or ipc:// "
                               "endpoint", path, cfg->bind);
    return 0;
}

void agg_config_registry_path(const agg_config_t *cfg, char *out, size_t size)
{
    snprintf(out, size, "%s/registry.db", cfg->state_dir);
}

void agg_config_endpoint_path(const agg_config_t *cfg, char *out, size_t size)
{
    snprintf(out, size, "%s/endpoint", cfg->state_dir);
}

const char *agg_config_take_path(int *argc, char **argv)
{
    const char *path = AGG_CONFIG_DEFAULT_PATH;
    for (int i = 1; i < *argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < *argc) {
            path = argv[i + 1];
            for (int j = i; j + 2 <= *argc; j++) argv[j] = argv[j + 2];
            *argc -= 2;
            i--;
        }
    }
    return path;
}
