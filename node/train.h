/* The node's trainer: fine-tunes the LoRA adapters and classification head of the base model
 * (base.h5 from `medfl-node import-model`) on the hospital's records, with optional DP-SGD,
 * and evaluates them. One library used by `medfl-node train-local` / `eval` and, per
 * federated round, by the node daemon, so local and federated training run the same code.
 *
 * WHY this split of work: the trainer owns everything between "records in memory" and "a
 * trainable vector": tokenization (once, at load), deterministic splits and shuffles by
 * seed, the optimizer schedule, DP-SGD (Poisson sampling, per-example clipping, noise from
 * the CSPRNG, division by the EXPECTED batch size), evaluation, and checkpoints. It does NOT
 * write the privacy ledger or talk to the network: the caller decides whether a round may
 * run (ledger_admit_round with the (q, σ, steps) it gets from trainer_dp_plan) and what to
 * do with the returned delta.
 *
 * Per federated round the daemon calls:
 *   trainer_dp_plan(t, local_steps, &q, &sigma)     (or its own σ from the ledger)
 *   trainer_set_dp(t, true, q, sigma, clip)
 *   trainer_round(t, global, n, local_steps, delta, &stats)   delta = local - global
 *   stats.examples_total (n_examples to report), stats.dp_steps (accountant steps)
 *   trainer_evaluate_vector(t, version_vector, n, TRAIN_SPLIT_VALID, &ev)
 * and trainer_save / trainer_load for crash-safe checkpoints (adapter + AdamW state). */
#ifndef MEDFL_NODE_TRAIN_H
#define MEDFL_NODE_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "node/data.h"

/* [model], [train] and [privacy] options of node.conf (see TRAIN_CFG_OPTIONS). */
typedef struct {
    char base[CFG_STR_MAX];          /* model.base: base.h5 */
    char pooling[CFG_STR_MAX];       /* model.pooling: mean|cls */
    int64_t lora_r;                  /* model.lora.r */
    double lora_alpha;               /* model.lora.alpha */
    char lora_targets[CFG_STR_MAX];  /* model.lora.targets: "query,value" */
    int64_t labels_top_k;            /* model.labels_top_k: 0 = data.labels */
    int64_t epochs;                  /* train.epochs */
    int64_t max_steps;               /* train.max_steps: stop early; 0 = run all epochs */
    int64_t batch_size;              /* train.batch_size */
    double lr;                       /* train.lr */
    double head_lr;                  /* train.head_lr: 0 = train.lr */
    char optimizer[CFG_STR_MAX];     /* train.optimizer: adamw|sgd */
    char lr_schedule[CFG_STR_MAX];   /* train.lr_schedule: linear|constant */
    double warmup_fraction;          /* train.warmup_fraction */
    double weight_decay;             /* train.weight_decay */
    int64_t max_seq_len;             /* train.max_seq_len */
    int64_t seed;                    /* train.seed */
    double valid_fraction;           /* train.valid_fraction */
    double test_fraction;            /* train.test_fraction */
    int64_t threads;                 /* train.threads */
    bool dp;                         /* privacy.enabled */
    double noise_multiplier;         /* privacy.noise_multiplier: 0 = from target_epsilon */
    double target_epsilon;           /* privacy.target_epsilon */
    double clip_norm;                /* privacy.clip_norm */
    double sample_rate;              /* privacy.sample_rate: 0 = batch_size / n_train */
    double epsilon_budget;           /* privacy.epsilon_budget (ledger) */
    double delta;                    /* privacy.delta */
    bool distributed_noise;          /* privacy.distributed_noise */
    int64_t distributed_colluders;   /* privacy.distributed_colluders */
} train_config_t;

#define TRAIN_CFG_OPTIONS(T, m)                                                               \
    {"model.base", CFG_PATH, offsetof(T, m.base), 0, 0, "base.h5", false, NULL,               \
     "base model file written by `medfl-node import-model`"},                                 \
    {"model.pooling", CFG_ENUM, offsetof(T, m.pooling), 0, 0, "mean", false, "mean|cls",      \
     "sentence representation fed to the head: mean of tokens, or [CLS]"},                    \
    {"model.lora.r", CFG_INT, offsetof(T, m.lora_r), 1, 256, "8", false, NULL,                \
     "LoRA rank"},                                                                            \
    {"model.lora.alpha", CFG_DOUBLE, offsetof(T, m.lora_alpha), 1e-3, 1e4, "16", false, NULL, \
     "LoRA alpha (scaling alpha / r)"},                                                       \
    {"model.lora.targets", CFG_STRING, offsetof(T, m.lora_targets), 0, 0, "none", false,     \
     NULL, "LoRA targets: query,key,value,attn_out,ffn_in,ffn_out or all; none = only the "  \
     "classification head trains, on the frozen encoder (the default: under DP-SGD at a few " \
     "hundred records per site, noise on LoRA's many parameters drowns the signal, "          \
     "docs/privacy.md section 7a)"},                                                          \
    {"model.labels_top_k", CFG_INT, offsetof(T, m.labels_top_k), 0, 100000, "0", false, NULL, \
     "label set = the K most frequent labels of data.records (others skipped); 0 = use "      \
     "data.labels. Federated nodes must share data.labels instead"},                          \
    {"train.epochs", CFG_INT, offsetof(T, m.epochs), 1, 100000, "3", false, NULL,             \
     "passes over the training split (train-local)"},                                         \
    {"train.max_steps", CFG_INT, offsetof(T, m.max_steps), 0, 100000000, "0", false, NULL,    \
     "stop after this many optimizer steps (the schedule still spans train.epochs; resume "   \
     "with --checkpoint); 0 = run all epochs"},                                               \
    {"train.batch_size", CFG_INT, offsetof(T, m.batch_size), 1, 4096, "16", false, NULL,      \
     "examples per step (DP: expected examples per step)"},                                   \
    {"train.lr", CFG_DOUBLE, offsetof(T, m.lr), 1e-8, 100, "20", false, NULL,                  \
     "peak learning rate (of the LoRA parameters when train.head_lr is set); in rounds the "  \
     "aggregator's federation.lr replaces it. 20 suits sgd on the head; LoRA with adamw "     \
     "wants about 1e-3"},                                                                     \
    {"train.optimizer", CFG_ENUM, offsetof(T, m.optimizer), 0, 0, "sgd", false, "adamw|sgd",  \
     "AdamW, or plain SGD (p -= lr g): under DP with secure aggregation, sgd with one local "  \
     "step per round makes the federation equal centralized DP-SGD (docs/privacy.md)"},      \
    {"train.lr_schedule", CFG_ENUM, offsetof(T, m.lr_schedule), 0, 0, "linear", false,       \
     "linear|constant", "train-local: after the warm-up, decay linearly to 0 over the planned " \
     "steps, or stay constant as federated rounds do (for like-for-like baselines)"},         \
    {"train.head_lr", CFG_DOUBLE, offsetof(T, m.head_lr), 0, 100, "0", false, NULL,            \
     "peak learning rate of the classification head; 0 = train.lr. With DP, a head_lr ~10x "  \
     "train.lr keeps the noise from disturbing the pretrained features (docs/privacy.md)"},   \
    {"train.warmup_fraction", CFG_DOUBLE, offsetof(T, m.warmup_fraction), 0, 1, "0.1", false, \
     NULL, "fraction of the steps with a linear warm-up (then linear decay to 0)"},           \
    {"train.weight_decay", CFG_DOUBLE, offsetof(T, m.weight_decay), 0, 10, "0.01", false,     \
     NULL, "AdamW decoupled weight decay"},                                                   \
    {"train.max_seq_len", CFG_INT, offsetof(T, m.max_seq_len), 8, 4096, "128", false, NULL,   \
     "tokens per record, [CLS] and [SEP] included; longer records are truncated"},            \
    {"train.seed", CFG_INT, offsetof(T, m.seed), 0, 9.0e18, "1", false, NULL,                 \
     "seed of the splits, the shuffles and the adapter initialisation"},                      \
    {"train.valid_fraction", CFG_DOUBLE, offsetof(T, m.valid_fraction), 0, 0.9, "0.1", false, \
     NULL, "share of the records held out for validation (stratified by label)"},             \
    {"train.test_fraction", CFG_DOUBLE, offsetof(T, m.test_fraction), 0, 0.9, "0", false,     \
     NULL, "share of the records held out as a test split (eval --split test)"},              \
    {"train.threads", CFG_INT, offsetof(T, m.threads), 0, 256, "0", false, NULL,              \
     "CPU threads for OpenBLAS; 0 = OpenBLAS' default"},                                      \
    {"privacy.enabled", CFG_BOOL, offsetof(T, m.dp), 0, 0, "false", false, NULL,              \
     "train with DP-SGD (Poisson sampling, per-example clipping, Gaussian noise)"},           \
    {"privacy.noise_multiplier", CFG_DOUBLE, offsetof(T, m.noise_multiplier), 0, 1e6, "0",    \
     false, NULL, "sigma; 0 = the smallest sigma meeting privacy.target_epsilon"},            \
    {"privacy.target_epsilon", CFG_DOUBLE, offsetof(T, m.target_epsilon), 0, 1e3, "8", false, \
     NULL, "epsilon the planned training may reach (when noise_multiplier = 0)"},             \
    {"privacy.clip_norm", CFG_DOUBLE, offsetof(T, m.clip_norm), 1e-6, 1e6, "1.0", false,      \
     NULL, "per-example gradient L2 clipping norm C"},                                        \
    {"privacy.sample_rate", CFG_DOUBLE, offsetof(T, m.sample_rate), 0, 1, "0", false, NULL,   \
     "Poisson sampling rate q; 0 = batch_size / training records"},                           \
    {"privacy.epsilon_budget", CFG_DOUBLE, offsetof(T, m.epsilon_budget), 1e-3, 1e3, "10",    \
     true, NULL, "total epsilon this node may ever spend (privacy ledger)"},                  \
    {"privacy.delta", CFG_DOUBLE, offsetof(T, m.delta), 1e-15, 0.1, "1e-5", false, NULL,      \
     "delta of the (epsilon, delta) guarantee; well below 1 / number of records"},            \
    {"privacy.distributed_noise", CFG_BOOL, offsetof(T, m.distributed_noise), 0, 0, "false",  \
     false, NULL, "in secure-aggregation rounds that offer it, add only this node's share of "  \
     "the noise inside the ring (trusts the aggregator to follow the protocol; docs/privacy.md "\
     "section 10)"},                                                                          \
    {"privacy.distributed_colluders", CFG_INT, offsetof(T, m.distributed_colluders), 0, 1000, \
     "0", false, NULL, "participants that may collude with the aggregator: their noise is not " \
     "counted on (shares shrink to sigma / sqrt(threshold - colluders))"}

/* Fills cfg with the table's defaults (tests, bench). */
void train_config_defaults(train_config_t *cfg);

enum { TRAIN_SPLIT_TRAIN = 0, TRAIN_SPLIT_VALID, TRAIN_SPLIT_TEST, TRAIN_SPLIT_ALL,
       TRAIN_SPLIT_COUNT };
/* "train" | "valid" | "test" | "all". */
int train_split_parse(const char *name, int *out);
const char *train_split_name(int split);

/* The progress line of a training run: a bar redrawn on standard error when it is a
 * terminal, else a log line every tenth of the steps (and at the end). Shared with the
 * decoder trainer (node/llm_train.c). */
void train_progress_print(const char *label, long done, long total, double loss, double rate,
                          bool final);

typedef struct trainer_t trainer_t;

/* Opens the base model (cfg->base) on device ("auto" | "cpu" | "cuda") with a head of
 * n_labels classes named labels, initialises the adapters from cfg->seed. NULL with a medfl
 * error naming the file/field on failure. */
trainer_t *trainer_new(const train_config_t *cfg, const char *device, const char *const *labels,
                       size_t n_labels);
void trainer_destroy(trainer_t **self_p);

/* Tokenizes every record (labels must be set, indices into the trainer's labels) and cuts
 * the splits: whole = false -> stratified train / valid / test by cfg seed and fractions;
 * whole = true -> every record in TRAIN_SPLIT_ALL only (eval --records). Replaces any
 * earlier records. */
int trainer_set_records(trainer_t *t, const records_t *set, bool whole)
    __attribute__((warn_unused_result));
size_t trainer_split_size(const trainer_t *t, int split);
/* Records whose text was longer than max_seq_len tokens. */
size_t trainer_truncated(const trainer_t *t);

size_t trainer_n_labels(const trainer_t *t);
const char *trainer_label(const trainer_t *t, size_t i);
size_t trainer_n_params(const trainer_t *t);   /* trainable floats */
/* The model (its trainable tensor table: names, shapes, offsets in the padded flat vector). */
struct model;
const struct model *trainer_model(const trainer_t *t);
int trainer_get_params(const trainer_t *t, float *out, size_t n);
int trainer_set_params(trainer_t *t, const float *in, size_t n);

/* stop (may be NULL) is asked after every optimizer step; when it returns true the training
 * call gives up with MEDFL_ESTATE (the node daemon passes its SIGTERM flag). */
void trainer_set_stop(trainer_t *t, bool (*stop)(void));
/* tick(ctx) is called after every step (and every encoder batch of the head-only cache), so
 * that a node training for minutes keeps its session's heartbeats; NULL = none. */
void trainer_set_tick(trainer_t *t, void (*tick)(void *ctx), void *ctx);
/* DP-SGD on/off with sampling rate q (> 0), noise multiplier sigma (>= 0), clip norm C. */
int trainer_set_dp(trainer_t *t, bool on, double q, double sigma, double clip);
/* For tests and reproducible benchmarks ONLY: noise and sampling from a seeded stream.
 * Production trainers draw from the OS CSPRNG; the daemon must never call this. */
int trainer_use_seeded_rng(trainer_t *t, uint64_t seed);
bool trainer_rng_is_seeded(const trainer_t *t);
/* q and σ of a planned DP training of `steps` steps from the config: q = privacy.sample_rate
 * or batch_size / n_train; σ = privacy.noise_multiplier or the accountant's inverse for
 * privacy.target_epsilon at privacy.delta (improved conversion). */
int trainer_dp_plan(const trainer_t *t, int64_t steps, double *q, double *sigma);
/* Expected optimizer steps of one epoch: ceil(n_train / batch) without DP, round(1 / q)
 * with DP. */
long trainer_steps_per_epoch(const trainer_t *t);

/* Optimizer schedule: warm-up then linear decay to 0 at total_steps (0 = constant after
 * warm-up). Resets nothing else. */
void trainer_set_schedule(trainer_t *t, long warmup_steps, long total_steps);

/* Per-round hyperparameters (a federated round's RoundStart, node/round_model.c): the peak
 * learning rate and the batch size (examples per step without DP) replace train.lr and
 * train.batch_size from now on (train.head_lr, when set, stays the head's rate). lr > 0,
 * batch_size >= 1, else -1 and nothing changes. */
int trainer_set_lr(trainer_t *t, double lr) __attribute__((warn_unused_result));
double trainer_lr(const trainer_t *t);
int trainer_set_batch_size(trainer_t *t, long batch_size) __attribute__((warn_unused_result));
long trainer_batch_size(const trainer_t *t);

typedef struct {
    long steps;           /* optimizer steps taken by this call */
    size_t examples;      /* examples that contributed (sum of the batch sizes) */
    double mean_loss;     /* mean training loss over the call's batches */
    double seconds;
    bool dp;
    double q, sigma, clip;
    int64_t dp_steps;     /* steps to add to the accountant (= steps when dp) */
    size_t clipped;       /* DP: per-example gradients that were clipped */
    double mean_grad_norm;/* DP: mean pre-clip per-example norm (for choosing C) */
    size_t examples_total;/* size of the training split (the weight the node reports) */
} train_stats_t;

/* Runs n_steps optimizer steps continuing the data stream (the epoch order is a function of
 * seed and epoch, so a restored trainer continues identically) and the optimizer step. */
int trainer_train_steps(trainer_t *t, long n_steps, train_stats_t *stats)
    __attribute__((warn_unused_result));

/* One federated round: sets the trainable vector to global (n floats), resets AdamW, runs
 * local_steps steps with warm-up over cfg warmup_fraction of them and a constant rate after,
 * and writes local - global into delta (n floats). DP settings as set by trainer_set_dp. */
/* When one round of local_steps is linear in the clipped gradient sum, i.e. the delta
 * trainer_round returns is exactly -scale · Σ_b clip(g_b) plus the noise (DP on, plain SGD
 * without weight decay terms, one local step, one learning rate for every coordinate),
 * writes that scale (lr / (q · N_train)) and returns 0; otherwise -1 with the reason. This is
 * what lets nodes split DP noise under secure aggregation (docs/privacy.md §10). */
int trainer_linear_step(const trainer_t *t, long local_steps, double *scale);

int trainer_round(trainer_t *t, const float *global, size_t n, long local_steps, float *delta,
                  train_stats_t *stats) __attribute__((warn_unused_result));

typedef struct {
    double loss;      /* mean cross-entropy */
    double accuracy;
    double macro_f1;  /* mean F1 over labels present in truth or predictions (sklearn) */
    size_t n;
} train_eval_t;

int trainer_evaluate(trainer_t *t, int split, train_eval_t *out)
    __attribute__((warn_unused_result));
/* Evaluates a given trainable vector, leaving the trainer's own parameters unchanged. */
int trainer_evaluate_vector(trainer_t *t, const float *vec, size_t n, int split,
                            train_eval_t *out) __attribute__((warn_unused_result));
/* Macro-F1 and accuracy on split of always predicting the most frequent training label. */
int trainer_majority_baseline(const trainer_t *t, int split, train_eval_t *out);

/* Optimizer steps done so far (the AdamW step count) and the data stream position. */
long trainer_step(const trainer_t *t);
long trainer_data_step(const trainer_t *t);
void trainer_set_data_step(trainer_t *t, long data_step);

/* Adapter file (adapter_file.h) with labels, targets, pooling and the base model's hash;
 * with_optimizer adds AdamW m, v and the step count (checkpoints). */
int trainer_save(trainer_t *t, const char *path, bool with_optimizer)
    __attribute__((warn_unused_result));
/* Loads an adapter written by trainer_save: refuses a different base model, rank, alpha,
 * targets, pooling or label set; restores optimizer state and step when present, and sets
 * the data position to that step (right for train-local; a daemon whose rounds reset the
 * optimizer keeps its own data position and restores it with trainer_set_data_step). */
int trainer_load(trainer_t *t, const char *path) __attribute__((warn_unused_result));

/* Progress display: on a terminal (isatty(stderr)) a one-line bar redrawn in place, else an
 * INFO log line about every 10% of the call. label prefixes it ("epoch 2/3"). */
void trainer_set_progress(trainer_t *t, bool on, const char *label);

/* Lower-level step for tests and the bench: the gradient of the batch idx[0..n) of split
 * TRAIN, into grad (n_params floats). privatize = false: mean gradient (model_backward).
 * privatize = true: per-example gradients, clipped, summed, noised (the trainer's DP
 * settings) and divided by divisor. */
int trainer_batch_gradient(trainer_t *t, const size_t *idx, size_t n, bool privatize,
                           double divisor, float *grad) __attribute__((warn_unused_result));

#endif
