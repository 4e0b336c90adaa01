/* medfl-node's configuration: one option table (common/config.h) describing
 * node_config_t. Later features (training, privacy, data) add their options here as rows
 * of the same table, so `medfl-node example-config` and configs/node.example.conf stay
 * complete. */
#ifndef MEDFL_NODE_CONFIG_H
#define MEDFL_NODE_CONFIG_H

#include <stdint.h>

#include "common/config.h"
#include "node/deid.h"
#include "node/round.h"
#include "node/train.h"

#define NODE_CONFIG_DEFAULT_PATH "/etc/medfl/node.conf"

typedef struct {
    char node_id[CFG_STR_MAX];
    char key_dir[CFG_STR_MAX];
    char state_dir[CFG_STR_MAX];
    char device[CFG_STR_MAX];
    char agg_endpoint[CFG_STR_MAX];
    char agg_public_key[CFG_STR_MAX];
    char agg_public_key_file[CFG_STR_MAX];
    int64_t heartbeat_ivl_ms;
    int64_t heartbeat_misses;
    data_config_t data;   /* [data] and [deid]: shared with check-data */
    train_config_t train; /* [model], [train], [privacy] */
    node_round_policy_t policy; /* [privacy] require_dp, min_noise_multiplier, max_* */
    /* federated rounds (node/round.c) */
    char agg_identity_key[CFG_STR_MAX];
    char round_trainer[CFG_STR_MAX];
    int64_t synth_records;
    int64_t synth_step_ms;
    char metrics_listen[CFG_STR_MAX]; /* [metrics] listen: Prometheus endpoint */
    char log_level[CFG_STR_MAX];
    char log_format[CFG_STR_MAX];
    char log_file[CFG_STR_MAX];
} node_config_t;

extern const cfg_option_t node_config_table[];

/* Loads path over the defaults, then checks rules across options (node id syntax,
 * exactly one way of giving the aggregator's public key, metrics.listen syntax); errors
 * name file and key. */
int node_config_load(node_config_t *cfg, const char *path) __attribute__((warn_unused_result));

/* "-c FILE" / "--config FILE" anywhere in argv, removed from it; default path otherwise. */
const char *node_config_take_path(int *argc, char **argv);

/* One path-valued key of a node config (resolved against the config's folder; def when
 * the file does not set it), the rest of the file ignored: for tools that need only that
 * key (import-model's model.base, synth's state_dir) on a node not yet fully configured.
 * out holds CFG_STR_MAX bytes. */
int node_config_path_of(const char *path, const char *key, const char *def, char *out);

#endif
