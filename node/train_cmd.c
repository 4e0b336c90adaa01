/* `medfl-node train-local` and `medfl-node eval`: the trainer (node/train.h) on the
 * hospital's own records, outside any federation.
 *
 * WHY they read node.conf with cfg_load_subset: a hospital tries local training before it is
 * enrolled (no aggregator key yet), so these commands read only [data], [deid], [model],
 * [train], [privacy] and `device` -- with the same option rows, bounds and messages as the
 * daemon's table -- and skip the daemon's other keys; a key or section the daemon's table
 * does not know (a typo) is refused with file and line, as `run` would. ONE node.conf
 * serves check-data, train-local, eval, privacy and run. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/adapter_file.h"
#include "common/cli.h"
#include "common/config.h"
#include "common/dp.h"
#include "common/error.h"
#include "common/log.h"
#include "common/service.h"
#include "node/commands.h"
#include "node/data.h"
#include "node/deid.h"
#include "node/llm_train.h"
#include "node/node_config.h"
#include "node/train.h"

#define PROG "medfl-node"

typedef struct {
    char device[CFG_STR_MAX];
    data_config_t data;
    train_config_t train;
} s_conf_t;

static const cfg_option_t s_options[] = {
    {"device", CFG_ENUM, offsetof(s_conf_t, device), 0, 0, "auto", false, "auto|cpu|cuda",
     "compute device: auto uses a CUDA GPU when one is present, else the CPU"},
    DEID_CFG_OPTIONS(s_conf_t, data),
    TRAIN_CFG_OPTIONS(s_conf_t, train),
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

#define S_MAX_ADAPTERS 16

typedef struct {
    const char *config, *records, *epochs, *device, *out, *adapter, *split, *checkpoint,
        *max_steps;
    const char *more_adapters[S_MAX_ADAPTERS]; /* eval: --adapter given again */
    size_t n_more;
} s_args_t;

static int s_parse(int argc, char **argv, s_args_t *a, const char *usage)
{
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        const char **slot = NULL;
        if (!strcmp(o, "-c") || !strcmp(o, "--config")) slot = &a->config;
        else if (!strcmp(o, "--records")) slot = &a->records;
        else if (!strcmp(o, "--epochs")) slot = &a->epochs;
        else if (!strcmp(o, "--max-steps")) slot = &a->max_steps;
        else if (!strcmp(o, "--device")) slot = &a->device;
        else if (!strcmp(o, "-o") || !strcmp(o, "--output")) slot = &a->out;
        else if (!strcmp(o, "--adapter") && !a->adapter) slot = &a->adapter;
        else if (!strcmp(o, "--adapter")) {
            if (a->n_more + 1 >= S_MAX_ADAPTERS)
                return medfl_error_set(MEDFL_EINVAL, "at most %d --adapter options", S_MAX_ADAPTERS);
            slot = &a->more_adapters[a->n_more++];
        }
        else if (!strcmp(o, "--split")) slot = &a->split;
        else if (!strcmp(o, "--checkpoint")) slot = &a->checkpoint;
        if (!slot || i + 1 >= argc)
            return medfl_error_set(MEDFL_EINVAL, "%s '%s' (usage: %s)",
                                   slot ? "missing value after" : "unexpected argument", o, usage);
        *slot = argv[++i];
    }
    if (!a->config) return medfl_error_set(MEDFL_EINVAL, "-c node.conf is required (usage: %s)", usage);
    return 0;
}

static int s_load_conf(const s_args_t *a, s_conf_t *c)
{
    memset(c, 0, sizeof *c);
    if (cfg_load_subset(s_options, node_config_table, c, a->config) != 0) return -1;
    const char *origin = "command line";
    if ((a->records && cfg_set(s_options, c, "data.records", a->records, origin) != 0) ||
        (a->epochs && cfg_set(s_options, c, "train.epochs", a->epochs, origin) != 0) ||
        (a->max_steps && cfg_set(s_options, c, "train.max_steps", a->max_steps, origin) != 0) ||
        (a->device && cfg_set(s_options, c, "device", a->device, origin) != 0))
        return -1;
    if (!c->data.records[0])
        return medfl_error_set(MEDFL_ECONFIG, "%s: key 'data.records' is empty (or give --records)",
                               a->config);
    return 0;
}

/* The label set and reader options: data.labels, else the top-K labels of the file (then
 * records of other labels are skipped and counted), else an error -- a classifier's classes
 * must be fixed by configuration, never by whatever a file happens to contain. */
static int s_labels(s_conf_t *c, records_opts_t *opts, char ***labels, size_t *n)
{
    *labels = NULL;
    *n = 0;
    if (c->train.labels_top_k > 0 && c->data.labels[0])
        return medfl_error_set(MEDFL_ECONFIG, "keys 'data.labels' and 'model.labels_top_k': set "
                               "only one of them");
    if (c->train.labels_top_k > 0) {
        c->data.skip_unknown_labels = false;
        if (data_config_to_opts(&c->data, NULL, opts, labels, n) != 0) return -1;
        if (data_top_labels(c->data.records, opts, (size_t)c->train.labels_top_k, labels, n) != 0)
            return -1;
        opts->labels = (const char *const *)*labels;
        opts->n_labels = *n;
        opts->skip_unknown_labels = true;
        return 0;
    }
    if (!c->data.labels[0])
        return medfl_error_set(MEDFL_ECONFIG, "no label set: set data.labels = A,B,C (or "
                               "model.labels_top_k = K)");
    return data_config_to_opts(&c->data, NULL, opts, labels, n);
}

/* Reads the records and runs the de-identification gate: under policy refuse, flagged
 * records stop training (exit status 3, as check-data). */
static records_t *s_read_records(s_conf_t *c, records_opts_t *opts, int *status)
{
    *status = 1;
    deid_policy_t pol;
    if (deid_policy_parse(c->data.policy, &pol) != 0) return NULL;
    records_t *set = records_new();
    if (!set) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    if (records_load_file(set, c->data.records, opts) != 0) {
        records_destroy(&set);
        return NULL;
    }
    if (records_skipped(set))
        LOG_INFO(DATA, "%zu records with labels outside the label set skipped", records_skipped(set));
    size_t flagged = 0;
    uint32_t seen = 0;
    if (deid_gate_records(set, pol, NULL, &flagged, &seen) != 0) {
        records_destroy(&set);
        return NULL;
    }
    if (pol == DEID_POLICY_OFF)
        LOG_WARN(DATA, "de-identification gate is off: records were not scanned");
    else if (flagged && pol == DEID_POLICY_REDACT)
        LOG_WARN(DATA, "%zu records carried possible PHI and were redacted before training", flagged);
    else if (flagged) {
        medfl_error_set(MEDFL_EPERM, "%s: %zu of %zu records carry possible PHI (deid.policy = "
                        "refuse): not training; see `medfl-node check-data -c CONFIG`",
                        c->data.records, flagged, records_count(set));
        records_destroy(&set);
        *status = 3;
        return NULL;
    }
    return set;
}

static void s_print_eval(const char *prefix, const train_eval_t *e)
{
    printf("%sloss: %.6f\n%saccuracy: %.6f\n%smacro_f1: %.6f\n%sn: %zu\n", prefix, e->loss,
           prefix, e->accuracy, prefix, e->macro_f1, prefix, e->n);
}

int cmd_train_local(int argc, char **argv)
{
    const char *usage = PROG " train-local -c node.conf [--records FILE] [--epochs N] "
                        "[--max-steps N] [--device auto|cpu|cuda] [-o adapter.h5] "
                        "[--checkpoint FILE]";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Fine-tunes the LoRA adapters and head of model.base on data.records (the\n"
               "training split; train.valid_fraction and train.test_fraction are held out by\n"
               "train.seed), evaluating the validation split after each epoch, and writes the\n"
               "adapter (default adapter.h5). With privacy.enabled, DP-SGD with Poisson\n"
               "sampling; the epsilon reached is printed. --checkpoint FILE saves adapter and\n"
               "optimizer state after each epoch and resumes from FILE when it exists.\n"
               "SIGTERM or SIGINT stop the run after the current step: with --checkpoint the\n"
               "state is saved there (prints `stopped_at_step: N`, exit 0), without it the\n"
               "run fails.\n"
               "Refuses (exit status 3) when the de-identification gate flags records under\n"
               "deid.policy = refuse. Prints `epoch: N`, `train_loss: X`, `valid_loss: X`,\n"
               "`valid_accuracy: X`, `valid_macro_f1: X`, `valid_n: N` per epoch.\n", usage);
        return 0;
    }
    s_args_t a;
    s_conf_t c;
    if (s_parse(argc, argv, &a, usage) != 0 || a.adapter || a.split) {
        if (a.adapter || a.split) medfl_error_set(MEDFL_EINVAL, "usage: %s", usage);
        return cli_fail(PROG);
    }
    if (s_load_conf(&a, &c) != 0) return cli_fail(PROG);
    char gguf[4096];
    if (llm_base_is_decoder(c.train.base, gguf, sizeof gguf)) {
        if (a.checkpoint) {
            medfl_error_set(MEDFL_EINVAL, "--checkpoint: not available for a decoder base yet");
            return cli_fail(PROG);
        }
        return llm_train_local(&(llm_cmd_t){.train = &c.train, .data = &c.data,
                                            .device = c.device, .out = a.out});
    }
    records_opts_t opts;
    char **labels = NULL;
    size_t n_labels = 0;
    if (s_labels(&c, &opts, &labels, &n_labels) != 0) return cli_fail(PROG);
    int status = 1;
    records_t *set = s_read_records(&c, &opts, &status);
    trainer_t *t = NULL;
    dp_accountant_t *acc = NULL;
    const char *out = a.out ? a.out : "adapter.h5";
    if (!set) goto fail;
    status = 1;
    t = trainer_new(&c.train, c.device, (const char *const *)labels, n_labels);
    if (!t || trainer_set_records(t, set, false) != 0) goto fail;
    records_destroy(&set);
    /* SIGTERM/SIGINT end the run after the current step; with --checkpoint the adapter and
     * optimizer state are saved there, and a later run resumes at that very step. */
    if (service_signals_install() != 0) goto fail;
    trainer_set_stop(t, service_stop_requested);
    size_t ntr = trainer_split_size(t, TRAIN_SPLIT_TRAIN), nva = trainer_split_size(t, TRAIN_SPLIT_VALID);
    printf("records_train: %zu\nrecords_valid: %zu\nrecords_test: %zu\nlabels: %zu\n", ntr, nva,
           trainer_split_size(t, TRAIN_SPLIT_TEST), n_labels);
    double dp_q = 0, dp_sigma = 0;
    long spe = trainer_steps_per_epoch(t);
    /* The schedule (and the DP plan) span train.epochs; train.max_steps only stops the run
     * early, so a run stopped there and resumed from its checkpoint is the same run. */
    long total = spe * (long)c.train.epochs;
    if (c.train.dp) {
        /* An epoch of DP-SGD is 1/q Poisson steps; σ is planned over the whole run. */
        double q = c.train.sample_rate > 0 ? c.train.sample_rate
                                           : fmin(1.0, (double)c.train.batch_size / (double)ntr);
        spe = (long)fmax(1.0, floor(1.0 / q + 0.5));
        total = spe * (long)c.train.epochs;
        double sigma;
        if (trainer_dp_plan(t, total, &q, &sigma) != 0 ||
            trainer_set_dp(t, true, q, sigma, c.train.clip_norm) != 0)
            goto fail;
        dp_q = q;
        dp_sigma = sigma;
        printf("dp_sample_rate: %.6g\ndp_noise_multiplier: %.6g\ndp_clip_norm: %g\n"
               "dp_planned_steps: %ld\n", q, sigma, c.train.clip_norm, total);
        if (!(acc = dp_accountant_new(NULL, 0))) goto fail;
    }
    trainer_set_schedule(t, (long)floor(c.train.warmup_fraction * (double)total),
                         strcmp(c.train.lr_schedule, "constant") == 0 ? 0 : total);
    if (a.checkpoint) {
        FILE *f = fopen(a.checkpoint, "r");
        if (f) {
            fclose(f);
            if (trainer_load(t, a.checkpoint) != 0) goto fail;
            LOG_INFO(TRAIN, "resumed from %s at step %ld of %ld", a.checkpoint, trainer_step(t),
                     total);
        }
    }
    train_eval_t ev = {0};
    long stop = c.train.max_steps > 0 && c.train.max_steps < total ? (long)c.train.max_steps : total;
    int epochs = (int)((total + spe - 1) / spe);
    for (int e = (int)(trainer_step(t) / spe); e < epochs && trainer_step(t) < stop; e++) {
        long todo = (long)(e + 1) * spe;
        if (todo > stop) todo = stop;
        todo -= trainer_step(t);
        char label[64];
        snprintf(label, sizeof label, "epoch %d/%d", e + 1, epochs);
        trainer_set_progress(t, true, label);
        train_stats_t st;
        if (trainer_train_steps(t, todo, &st) != 0 && !service_stop_requested()) goto fail;
        if (service_stop_requested()) break;
        printf("epoch: %d\ntrain_loss: %.6f\ntrain_examples_per_s: %.2f\n", e + 1, st.mean_loss,
               st.seconds > 0 ? (double)st.examples / st.seconds : 0);
        if (st.dp)
            printf("dp_mean_grad_norm: %.4f\ndp_clipped_fraction: %.4f\n", st.mean_grad_norm,
                   st.examples ? (double)st.clipped / (double)st.examples : 0.0);
        if (nva) {
            if (trainer_evaluate(t, TRAIN_SPLIT_VALID, &ev) != 0) goto fail;
            s_print_eval("valid_", &ev);
        }
        fflush(stdout);
        if (a.checkpoint && trainer_save(t, a.checkpoint, true) != 0) goto fail;
    }
    if (service_stop_requested()) {
        printf("stopped_at_step: %ld\n", trainer_step(t));
        if (!a.checkpoint) {
            medfl_error_set(MEDFL_ESTATE, "stopped by a signal at step %ld; nothing saved "
                            "(--checkpoint FILE keeps the progress)", trainer_step(t));
            goto fail;
        }
        if (trainer_save(t, a.checkpoint, true) != 0) goto fail;
        printf("checkpoint: %s\n", a.checkpoint);
        LOG_INFO(TRAIN, "stopped by a signal at step %ld: checkpoint %s (run again with "
                 "--checkpoint to resume)", trainer_step(t), a.checkpoint);
        trainer_destroy(&t);
        dp_accountant_destroy(&acc);
        data_labels_free(labels, n_labels);
        return 0;
    }
    if (trainer_save(t, out, false) != 0) goto fail;
    printf("adapter: %s\n", out);
    if (acc) {
        /* Every step of the run (a resumed one included) used the same planned (q, σ). */
        double eps, order;
        int64_t steps_all = trainer_step(t);
        if (dp_accountant_add(acc, dp_q, dp_sigma, steps_all) != 0 ||
            dp_accountant_epsilon(acc, c.train.delta, DP_CONV_IMPROVED, &eps, &order) != 0)
            goto fail;
        printf("dp_steps: %lld\ndp_epsilon: %.4f\ndp_delta: %g\n", (long long)steps_all, eps,
               c.train.delta);
    }
    if (nva) {
        train_eval_t base;
        if (trainer_majority_baseline(t, TRAIN_SPLIT_VALID, &base) == 0)
            printf("valid_majority_macro_f1: %.6f\n", base.macro_f1);
    }
    trainer_destroy(&t);
    dp_accountant_destroy(&acc);
    data_labels_free(labels, n_labels);
    return 0;
fail:
    records_destroy(&set);
    trainer_destroy(&t);
    dp_accountant_destroy(&acc);
    data_labels_free(labels, n_labels);
    cli_fail(PROG);
    return status;
}

int cmd_eval(int argc, char **argv)
{
    const char *usage = PROG " eval -c node.conf --adapter adapter.h5 [--adapter more.h5 ...] "
                        "[--records FILE | --split train|valid|test] [--device auto|cpu|cuda]";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Evaluates a saved adapter on the whole of --records FILE, or on a split of\n"
               "data.records cut exactly as train-local cut it (same file, labels and\n"
               "train.seed; default --split valid). The label set is the adapter's. Prints\n"
               "`loss: X`, `accuracy: Y`, `macro_f1: Z`, `n: N` and the majority-class\n"
               "baseline `majority_macro_f1: B` (the most frequent training label).\n"
               "With several --adapter options (same label set) each is evaluated in turn on\n"
               "the same records, its lines after `adapter: PATH`; adapters that train only\n"
               "the head (model.lora.targets = none) share one encoder pass over the records.\n",
               usage);
        return 0;
    }
    s_args_t a;
    s_conf_t c;
    if (s_parse(argc, argv, &a, usage) != 0) return cli_fail(PROG);
    if (a.epochs || a.out || a.checkpoint || a.max_steps || (a.records && a.split)) {
        medfl_error_set(MEDFL_EINVAL, "usage: %s", usage);
        return cli_fail(PROG);
    }
    if (s_load_conf(&a, &c) != 0) return cli_fail(PROG);
    char gguf[4096];
    if (llm_base_is_decoder(c.train.base, gguf, sizeof gguf)) {
        if (a.n_more) {
            medfl_error_set(MEDFL_EINVAL, "one --adapter at a time for a decoder base");
            return cli_fail(PROG);
        }
        return llm_eval(&(llm_cmd_t){.train = &c.train, .data = &c.data, .device = c.device,
                                     .adapter = a.adapter, .split = a.split,
                                     .whole = a.records != NULL});
    }
    if (!a.adapter) {
        medfl_error_set(MEDFL_EINVAL, "usage: %s", usage);
        return cli_fail(PROG);
    }
    int split = TRAIN_SPLIT_VALID;
    if (a.records) split = TRAIN_SPLIT_ALL;
    else if (a.split && train_split_parse(a.split, &split) != 0) return cli_fail(PROG);
    adapter_t ad;
    if (adapter_read(a.adapter, &ad) != 0) return cli_fail(PROG);
    records_opts_t opts;
    char **cl = NULL;
    size_t ncl = 0;
    /* The adapter's labels decide the classes; the config decides how the file is read. */
    bool top_k = c.train.labels_top_k > 0;
    c.data.labels[0] = '\0';
    if (data_config_to_opts(&c.data, NULL, &opts, &cl, &ncl) != 0) {
        adapter_free(&ad);
        return cli_fail(PROG);
    }
    opts.labels = (const char *const *)ad.labels;
    opts.n_labels = ad.n_labels;
    opts.skip_unknown_labels = top_k || c.data.skip_unknown_labels;
    int status = 1;
    trainer_t *t = NULL;
    records_t *set = s_read_records(&c, &opts, &status);
    if (!set) goto fail;
    status = 1;
    t = trainer_new(&c.train, c.device, (const char *const *)ad.labels, ad.n_labels);
    if (!t || trainer_load(t, a.adapter) != 0 ||
        trainer_set_records(t, set, split == TRAIN_SPLIT_ALL) != 0)
        goto fail;
    records_destroy(&set);
    train_eval_t ev, base;
    if (a.n_more) printf("adapter: %s\n", a.adapter);
    if (trainer_evaluate(t, split, &ev) != 0) goto fail;
    s_print_eval("", &ev);
    if (trainer_majority_baseline(t, split, &base) == 0)
        printf("majority_macro_f1: %.6f\nmajority_accuracy: %.6f\n", base.macro_f1, base.accuracy);
    for (size_t k = 0; k < a.n_more; k++) {
        adapter_t more;
        if (adapter_read(a.more_adapters[k], &more) != 0) goto fail;
        bool same = more.n_labels == ad.n_labels;
        for (size_t i = 0; same && i < ad.n_labels; i++)
            same = strcmp(more.labels[i], ad.labels[i]) == 0;
        adapter_free(&more);
        if (!same) {
            medfl_error_set(MEDFL_EINVAL, "%s: its label set differs from %s's", a.more_adapters[k],
                            a.adapter);
            goto fail;
        }
        /* The records and their cached encoder outputs stay; only the weights change. */
        if (trainer_load(t, a.more_adapters[k]) != 0 || trainer_evaluate(t, split, &ev) != 0)
            goto fail;
        printf("adapter: %s\n", a.more_adapters[k]);
        s_print_eval("", &ev);
    }
    trainer_destroy(&t);
    adapter_free(&ad);
    return 0;
fail:
    records_destroy(&set);
    trainer_destroy(&t);
    adapter_free(&ad);
    cli_fail(PROG);
    return status;
}
