/* The aggregator's option table and the checks across options. Defaults are the paths of
 * a packaged install (FHS: keys under /etc, state under /var/lib); relative paths written
 * in a config file resolve against the file's folder, which is what tests and demos use. */
#include "aggregator/agg_config.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"
#include "common/metrics.h"

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
    {"net.max_update_mib", CFG_INT, O(max_update_mib), 0, 4096, "0", false, NULL,
     "largest bulk frame (update tensors) accepted from a node, in MiB; 0 = derived from the "
     "head model at start (4 bytes per parameter + 64 KiB)"},
    {"registry.poll_ms", CFG_INT, O(registry_poll_ms), 100, 60000, "1000", true, NULL,
     "how often the daemon checks the registry for enroll/revoke made by the tools"},
    {"log.level", CFG_ENUM, O(log_level), 0, 0, "info", true, "debug|info|warn|error",
     "least severe level written"},
    {"log.format", CFG_ENUM, O(log_format), 0, 0, "text", true, "text|json",
     "text lines, or JSON lines for log shippers"},
    {"log.file", CFG_PATH, O(log_file), 0, 0, "", false, NULL,
     "append the log to this file; empty = standard error (journald under systemd)"},
    {"federation.rounds", CFG_INT, O(fed_rounds), 0, 1e9, "0", true, NULL,
     "rounds to run, then idle; 0 = run rounds forever"},
    {"federation.min_nodes", CFG_INT, O(fed_min_nodes), 1, 4096, "2", true, NULL,
     "a round starts only when this many enrolled nodes are connected"},
    {"federation.max_nodes", CFG_INT, O(fed_max_nodes), 1, 1024, "100", true, NULL,
     "most nodes selected for one round"},
    {"federation.quorum", CFG_DOUBLE, O(fed_quorum), 0, 1, "0.5", true, NULL,
     "fraction of the selected nodes whose update must reach the sum, else the round aborts"},
    {"federation.secure_aggregation", CFG_BOOL, O(fed_secure), 0, 0, "on", true, NULL,
     "on: the aggregator learns only the weighted sum (SecAgg); off: plain updates"},
    {"federation.threshold", CFG_DOUBLE, O(fed_threshold), 0, 1, "0", true, NULL,
     "SecAgg threshold t as a fraction of the k + 1 holders of a node's shares; 0 = a strict "
     "majority, floor((k + 1) / 2) + 1; a fraction must exceed 0.5 (nodes refuse less)"},
    {"federation.neighbours", CFG_INT, O(fed_neighbours), 0, 4096, "0", true, NULL,
     "SecAgg+ neighbours k per node; 0 = 2 ceil(log2 n), or the complete graph when smaller"},
    {"federation.select_wait_ms", CFG_INT, O(fed_select_wait_ms), 0, 3600000, "1000", true, NULL,
     "once min_nodes are connected, wait this long for more before starting"},
    {"federation.keys_deadline_ms", CFG_INT, O(fed_keys_ms), 100, 3600000, "10000", true, NULL,
     "secure phase 0: time for AdvertiseKeys"},
    {"federation.shares_deadline_ms", CFG_INT, O(fed_shares_ms), 100, 3600000, "10000", true,
     NULL, "secure phase 1: time for ShareKeys"},
    {"federation.train_deadline_ms", CFG_INT, O(fed_train_ms), 100, 86400000, "600000", true,
     NULL, "time for local training and the (masked) update"},
    {"federation.unmask_deadline_ms", CFG_INT, O(fed_unmask_ms), 100, 3600000, "10000", true,
     NULL, "secure phase 3: time for UnmaskResponse"},
    {"federation.eval_deadline_ms", CFG_INT, O(fed_eval_ms), 0, 86400000, "60000", true, NULL,
     "time for nodes to evaluate a new version and report before the next round"},
    {"federation.retry_ms", CFG_INT, O(fed_retry_ms), 0, 3600000, "2000", true, NULL,
     "pause after an aborted round"},
    {"federation.strategy", CFG_ENUM, O(fed_strategy), 0, 0, "fedavg", true, "fedavg|fedadam",
     "server step from the weighted sum"},
    {"federation.server_lr", CFG_DOUBLE, O(fed_server_lr), 0, 100, "0", true, NULL,
     "server learning rate; 0 = the strategy's default (FedAvg 1, FedAdam 0.01)"},
    {"federation.weighting", CFG_ENUM, O(fed_weighting), 0, 0, "contribution", true,
     "uniform|contribution",
     "node weights: equal, or from records, reported quality and reliability"},
    {"federation.update_norm_max", CFG_DOUBLE, O(fed_update_norm_max), 0, 1e12, "0", true, NULL,
     "plain rounds: an update whose L2 norm exceeds this is scaled down to it (logged); "
     "0 = compression.clip x sqrt(coordinates), the box secure rounds clip every update to"},
    {"federation.genesis_zero_dim", CFG_INT, O(fed_genesis_dim), 0, 1e8, "0", false, NULL,
     "testing without a model: an empty version store gets a zero vector of this size"},
    {"federation.lr", CFG_DOUBLE, O(fed_lr), 0, 100, "20", true, NULL,
     "local learning rate sent in RoundStart: 20 for the nodes' default, plain SGD on the "
     "classification head; LoRA with AdamW wants about 1e-3"},
    {"federation.local_steps", CFG_INT, O(fed_local_steps), 1, 1e6, "1", true, NULL,
     "local optimizer steps per round; 1 with the nodes' sgd makes FedAvg equal centralized "
     "DP-SGD on the union of the sites' batches (no client drift; allows distributed noise)"},
    {"federation.batch_size", CFG_INT, O(fed_batch_size), 1, 4096, "16", true, NULL,
     "local batch size (expected batch under DP: sample_rate x records)"},
    {"federation.max_seq_len", CFG_INT, O(fed_max_seq_len), 8, 8192, "128", true, NULL,
     "tokens per record"},
    {"federation.debug_phase_hold_ms", CFG_INT, O(fed_debug_hold_ms), 0, 600000, "0", true, NULL,
     "FOR TESTS ONLY (crash tests): keep every round phase open at least this long, and hold "
     "between writing a version and journaling it; 0 = off (production)"},
    {"privacy.dp", CFG_BOOL, O(dp_enabled), 0, 0, "on", true, NULL,
     "DP-SGD on the nodes (each node's ledger admits or declines every round)"},
    {"privacy.noise_multiplier", CFG_DOUBLE, O(dp_noise), 0, 1000, "1.4", true, NULL,
     "sigma of DP-SGD; with sample_rate 0.5 and one local step, 10 rounds cost each node "
     "epsilon 7.1 (delta 1e-5) of its privacy.epsilon_budget"},
    {"privacy.clip_norm", CFG_DOUBLE, O(dp_clip), 0, 1e6, "1.0", true, NULL,
     "per-example L2 clipping norm C"},
    {"privacy.sample_rate", CFG_DOUBLE, O(dp_sample_rate), 0, 1, "0.5", true, NULL,
     "Poisson sampling rate q: a node's expected batch is q x its training records"},
    {"privacy.delta", CFG_DOUBLE, O(dp_delta), 0, 0.1, "1e-5", true, NULL,
     "delta of the (epsilon, delta) guarantee"},
    {"privacy.distributed", CFG_BOOL, O(dp_distributed), 0, 0, "off", true, NULL,
     "with secure aggregation, offer distributed noise: nodes that accept it add sigma / "
     "sqrt(threshold) each inside the ring, so the sum carries sigma as centralized DP-SGD "
     "would, not sqrt(n) sigma (docs/privacy.md section 10)"},
    {"compression.scheme", CFG_ENUM, O(comp_scheme), 0, 0, "auto", true,
     "auto|none|topk|quantize|randk",
     "auto: topk in plain mode, randk with secure aggregation; topk needs secure_aggregation off"},
    {"compression.bits", CFG_INT, O(comp_bits), 2, 16, "8", true, NULL,
     "levels per coordinate in the secure modes (quantize/randk)"},
    {"compression.value_bits", CFG_INT, O(comp_value_bits), 2, 8, "4", true, NULL,
     "topk: bits per sent value (the more bits, the fewer coordinates fit the same bytes)"},
    {"compression.k_frac", CFG_DOUBLE, O(comp_k_frac), 0, 1, "0", true, NULL,
     "fraction of coordinates sent (topk, randk); 0 = the scheme's default (topk 0.044, "
     "randk 0.25: docs/compression.md)"},
    {"compression.clip", CFG_DOUBLE, O(comp_clip), 1e-9, 1e6, "0.5", true, NULL,
     "secure modes: each weighted coordinate is clipped to [-clip, clip]; 0.5 holds the "
     "head's SGD steps at federation.lr 20 (LoRA's small AdamW deltas fit 0.05)"},
    {"metrics.listen", CFG_STRING, O(metrics_listen), 0, 0, "127.0.0.1:9750", false, NULL,
     "Prometheus endpoint (GET /metrics): ADDRESS:PORT, loopback by default because the "
     "metrics tell who takes part and with what weight" METRICS_LISTEN_HELP_SUFFIX},
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
    if (cfg->fed_min_nodes > cfg->fed_max_nodes)
        return medfl_error_set(MEDFL_ECONFIG, "%s: keys 'federation.min_nodes' (%lld) and "
                               "'federation.max_nodes' (%lld): min exceeds max", path,
                               (long long)cfg->fed_min_nodes, (long long)cfg->fed_max_nodes);
    /* A threshold of half the holders or less lets an active aggregator split the holders
     * and unmask one node (docs/secure-aggregation.md); nodes would refuse every round. */
    if (cfg->fed_threshold > 0 && cfg->fed_threshold <= 0.5)
        return medfl_error_set(MEDFL_ECONFIG, "%s: key 'federation.threshold': %g is not a strict "
                               "majority of the holders of each node's shares; it must be above "
                               "0.5, or 0 for floor((k + 1) / 2) + 1 (nodes refuse a smaller "
                               "threshold: an active aggregator could unmask one node)", path,
                               cfg->fed_threshold);
    if (cfg->fed_secure && strcmp(cfg->comp_scheme, "topk") == 0)
        return medfl_error_set(MEDFL_ECONFIG, "%s: key 'compression.scheme': topk sends "
                               "different coordinates per node and cannot be summed under "
                               "secure aggregation; use randk or quantize", path);
    metrics_listen_t ml;
    if (metrics_listen_parse(cfg->metrics_listen, path, "metrics.listen", &ml) != 0) return -1;
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
