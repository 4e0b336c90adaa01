/* medfl-aggregator's configuration: one option table (common/config.h) describing
 * agg_config_t. Later features add their options here, as rows of the same table, so that
 * `medfl-aggregator example-config` and configs/aggregator.example.conf stay complete. */
#ifndef MEDFL_AGG_CONFIG_H
#define MEDFL_AGG_CONFIG_H

#include <stdint.h>

#include "common/config.h"

/* Used when -c is not given. */
#define AGG_CONFIG_DEFAULT_PATH "/etc/medfl/aggregator.conf"

typedef struct {
    char name[CFG_STR_MAX];          /* instance name in logs */
    char key_dir[CFG_STR_MAX];
    char state_dir[CFG_STR_MAX];
    char bind[CFG_STR_MAX];
    int64_t heartbeat_ivl_ms;
    int64_t heartbeat_timeout_ms;
    int64_t max_update_mib;
    int64_t registry_poll_ms;
    char log_level[CFG_STR_MAX];
    char log_format[CFG_STR_MAX];
    char log_file[CFG_STR_MAX];
    /* [federation]: rounds (aggregator/rounds.c) */
    int64_t fed_rounds;            /* 0 = forever */
    int64_t fed_min_nodes, fed_max_nodes;
    double fed_quorum;             /* fraction of the selected nodes whose update must count */
    bool fed_secure;
    double fed_threshold;          /* secagg t: fraction > 0.5 of the k + 1 holders, 0 = majority */
    int64_t fed_neighbours;        /* SecAgg+ k; 0 = default for n */
    int64_t fed_select_wait_ms, fed_keys_ms, fed_shares_ms, fed_train_ms, fed_unmask_ms;
    int64_t fed_eval_ms, fed_retry_ms;
    char fed_strategy[CFG_STR_MAX];
    double fed_server_lr;
    char fed_weighting[CFG_STR_MAX];
    int64_t fed_genesis_dim;
    double fed_update_norm_max;    /* plain rounds: L2 bound per update; 0 = clip x sqrt(n) */
    double fed_lr;
    int64_t fed_local_steps, fed_batch_size, fed_max_seq_len;
    int64_t fed_debug_hold_ms;     /* TESTS ONLY: pause at each phase start / after a commit */
    /* [privacy] */
    bool dp_enabled;
    double dp_noise, dp_clip, dp_sample_rate, dp_delta;
    bool dp_distributed;
    /* [compression] */
    char comp_scheme[CFG_STR_MAX];
    int64_t comp_bits, comp_value_bits;
    double comp_k_frac, comp_clip;
    /* [metrics] */
    char metrics_listen[CFG_STR_MAX];
} agg_config_t;

extern const cfg_option_t agg_config_table[];

/* Loads path (defaults first), then checks rules that tie options together; errors name
 * the file and the keys. */
int agg_config_load(agg_config_t *cfg, const char *path) __attribute__((warn_unused_result));

/* Path of the registry database and of the bound-endpoint file inside state_dir. */
void agg_config_registry_path(const agg_config_t *cfg, char *out, size_t size);
void agg_config_endpoint_path(const agg_config_t *cfg, char *out, size_t size);

/* Shared option parsing of the tools: "-c FILE" / "--config FILE" anywhere in argv.
 * Returns the path (AGG_CONFIG_DEFAULT_PATH when absent) and removes the pair from argv,
 * updating *argc, so the caller sees only positional arguments and its own flags. */
const char *agg_config_take_path(int *argc, char **argv);

#endif
