/* The node's option table and the checks across options. Defaults are the paths of a
 * packaged install; relative paths in a config file resolve against the file's folder. */
#include "node/node_config.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/metrics.h"
#include "common/store.h"

#define O(f) offsetof(node_config_t, f)

const cfg_option_t node_config_table[] = {
    {"node_id", CFG_STRING, O(node_id), 0, 0, NULL, false, NULL,
     "this hospital's node id, as enrolled at the aggregator ([A-Za-z0-9._-], at most 63)"},
    {"key_dir", CFG_PATH, O(key_dir), 0, 0, "/etc/medfl/node/keys", false, NULL,
     "folder with curve.pub/curve.key/identity.pub/identity.key (medfl-node keygen)"},
    {"state_dir", CFG_PATH, O(state_dir), 0, 0, "/var/lib/medfl/node", false, NULL,
     "folder for the node's state (privacy ledger, received model versions)"},
    {"device", CFG_ENUM, O(device), 0, 0, "auto", false, "auto|cpu|cuda",
     "compute device: auto uses a CUDA GPU when one is present, else the CPU"},
    {"aggregator.endpoint", CFG_STRING, O(agg_endpoint), 0, 0, NULL, false, NULL,
     "the aggregator's ZeroMQ endpoint, e.g. tcp://aggregator.example.org:7750"},
    {"aggregator.public_key", CFG_STRING, O(agg_public_key), 0, 0, "", false, NULL,
     "the aggregator's CURVE public key (40 Z85 characters); or use public_key_file"},
    {"aggregator.public_key_file", CFG_PATH, O(agg_public_key_file), 0, 0, "", false, NULL,
     "file holding the aggregator's CURVE public key (its curve.pub)"},
    {"net.heartbeat_interval_ms", CFG_INT, O(heartbeat_ivl_ms), 100, 600000, "1000", false, NULL,
     "period of heartbeats sent to the aggregator"},
    {"net.heartbeat_misses", CFG_INT, O(heartbeat_misses), 2, 1000, "5", false, NULL,
     "after this many heartbeat periods without any reply the node says hello again"},
    DEID_CFG_OPTIONS(node_config_t, data),
    TRAIN_CFG_OPTIONS(node_config_t, train),
    /* The node's privacy policy: what a round start must ask for before this node trains
     * (node/round.c, docs/privacy.md section 11). Defaults are the safe side. */
    {"privacy.require_dp", CFG_BOOL, O(policy.require_dp), 0, 0, "true", false, NULL,
     "decline every federated round that does not ask for DP-SGD; off lets the aggregator "
     "take raw updates (each such round is recorded in the ledger with epsilon infinite)"},
    {"privacy.min_noise_multiplier", CFG_DOUBLE, O(policy.min_noise_multiplier), 0, 1e6,
     "0.5", false, NULL,
     "decline rounds whose noise multiplier sigma, as this node's ledger charges it (with "
     "distributed noise: the accounted sigma), is below this"},
    {"privacy.max_sample_rate", CFG_DOUBLE, O(policy.max_sample_rate), 1e-9, 1, "1", false,
     NULL, "decline rounds whose Poisson sampling rate q is above this"},
    {"privacy.max_clip_norm", CFG_DOUBLE, O(policy.max_clip_norm), 0, 1e6, "0", false, NULL,
     "decline rounds whose per-example clipping norm C is above this; 0 = any C (epsilon "
     "does not depend on C: the noise scales with it)"},
    {"aggregator.identity_key", CFG_STRING, O(agg_identity_key), 0, 0, "", false, NULL,
     "the aggregator's Ed25519 identity key (64 hex digits, or the path of its identity.pub): "
     "model versions must carry its signature; empty = this node takes part in no round"},
    {"round.trainer", CFG_ENUM, O(round_trainer), 0, 0, "model", false, "model|synthetic",
     "what trains in a round: model = the LoRA adapters of model.base on data.records; "
     "synthetic = least squares on generated data (runtime checks without a model)"},
    {"round.synthetic_records", CFG_INT, O(synth_records), 1, 10000000, "200", false, NULL,
     "training rows of the synthetic trainer"},
    {"round.synthetic_step_ms", CFG_INT, O(synth_step_ms), 0, 600000, "0", false, NULL,
     "pause per synthetic training step (fault tests: a node that trains for a while)"},
    {"metrics.listen", CFG_STRING, O(metrics_listen), 0, 0, "127.0.0.1:9751", false, NULL,
     "Prometheus endpoint (GET /metrics): ADDRESS:PORT, loopback by default because the "
     "metrics tell epsilon spent and participation" METRICS_LISTEN_HELP_SUFFIX},
    {"log.level", CFG_ENUM, O(log_level), 0, 0, "info", true, "debug|info|warn|error",
     "least severe level written"},
    {"log.format", CFG_ENUM, O(log_format), 0, 0, "text", true, "text|json",
     "text lines, or JSON lines for log shippers"},
    {"log.file", CFG_PATH, O(log_file), 0, 0, "", false, NULL,
     "append the log to this file; empty = standard error (journald under systemd)"},
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

int node_config_load(node_config_t *cfg, const char *path)
{
    memset(cfg, 0, sizeof *cfg);
    if (cfg_load(node_config_table, cfg, path) != 0) return -1;
    if (store_node_id_check(cfg->node_id) != 0)
        return medfl_error_prefix("%s:%u: key 'node_id': ", path, cfg_line_of(path, "node_id"));
    bool has_key = cfg->agg_public_key[0] != '\0';
    bool has_file = cfg->agg_public_key_file[0] != '\0';
    if (has_key == has_file)
        return medfl_error_set(MEDFL_ECONFIG,
                               "%s: keys 'aggregator.public_key' and 'aggregator.public_key_file': "
                               "set exactly one of them", path);
    if (strncmp(cfg->agg_endpoint, "tcp://", 6) != 0 && strncmp(cfg->agg_endpoint, "ipc://", 6) != 0)
        return medfl_error_set(MEDFL_ECONFIG,
                               "%s: key 'aggregator.endpoint': '%s' is not a tcp:// or ipc:// "
                               "endpoint", path, cfg->agg_endpoint);
    metrics_listen_t ml;
    if (metrics_listen_parse(cfg->metrics_listen, path, "metrics.listen", &ml) != 0) return -1;
    return 0;
}

const char *node_config_take_path(int *argc, char **argv)
{
    const char *path = NODE_CONFIG_DEFAULT_PATH;
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

int node_config_path_of(const char *path, const char *key, const char *def, char *out)
{
    const cfg_option_t table[] = {
        {key, CFG_PATH, 0, 0, 0, def, false, NULL, NULL},
        {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
    };
    return cfg_load_subset(table, node_config_table, out, path);
}
