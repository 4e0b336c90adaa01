/* Model trainer for rounds, and `medfl-node init-adapter` (see round_model.h). */
#include "node/round_model.h"

#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common/adapter_file.h"
#include "common/atomic_file.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "node/engine/model.h"
#include "common/safetensors.h"
#include "common/version_store.h"
#include "node/node.h"
#include "node/commands.h"
#include "node/data.h"
#include "node/deid.h"
#include "node/train.h"

/* Versions hold the trainable tensors packed back to back in the model's layout order
 * (aggregator/versions sorts a seeded adapter that way); the trainer's flat vector keeps
 * each tensor 64-byte aligned. pad[] is the trainer-side buffer. */
struct model_trainer_t {
    trainer_t *t;
    double node_lr;     /* train.lr: used when a round sends no learning rate */
    long node_batch;    /* train.batch_size: used when a round sends no batch size */
    long node_seq;      /* train.max_seq_len: the records were tokenized at this length */
    uint64_t processed; /* examples the last round's steps went through (the metrics') */
    size_t packed;      /* sum of the trainable tensors' sizes */
    float *pad, *pad_delta;
};

static void s_unpack(const model_trainer_t *m, const float *packed, float *pad)
{
    const model_t *mo = trainer_model(m->t);
    memset(pad, 0, trainer_n_params(m->t) * sizeof *pad);
    size_t pos = 0;
    for (size_t i = 0; i < model_trainable_count(mo); i++) {
        const model_tensor_t *tt = model_trainable_tensor(mo, i);
        memcpy(pad + tt->offset, packed + pos, tt->numel * sizeof *pad);
        pos += tt->numel;
    }
}

static void s_pack(const model_trainer_t *m, const float *pad, float *packed)
{
    const model_t *mo = trainer_model(m->t);
    size_t pos = 0;
    for (size_t i = 0; i < model_trainable_count(mo); i++) {
        const model_tensor_t *tt = model_trainable_tensor(mo, i);
        memcpy(packed + pos, pad + tt->offset, tt->numel * sizeof *packed);
        pos += tt->numel;
    }
}

static records_t *s_records(const node_config_t *cfg, records_opts_t *opts)
{
    deid_policy_t pol;
    if (deid_policy_parse(cfg->data.policy, &pol) != 0) return NULL;
    records_t *set = records_new();
    if (!set) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    if (records_load_file(set, cfg->data.records, opts) != 0) goto fail;
    size_t flagged = 0;
    uint32_t seen = 0;
    if (deid_gate_records(set, pol, NULL, &flagged, &seen) != 0) goto fail;
    if (flagged && pol == DEID_POLICY_REFUSE) {
        medfl_error_set(MEDFL_EPERM, "%s: %zu of %zu records carry possible PHI (deid.policy = "
                        "refuse): not training; see `medfl-node check-data -c CONFIG`",
                        cfg->data.records, flagged, records_count(set));
        goto fail;
    }
    if (flagged) LOG_WARN(DATA, "%zu records carried possible PHI and were redacted", flagged);
    return set;
fail:
    records_destroy(&set);
    return NULL;
}

/* A trainer on the configured base model and label set; with_records loads data.records. */
static trainer_t *s_trainer(const node_config_t *cfg, bool with_records)
{
    if (!cfg->data.labels[0]) {
        medfl_error_set(MEDFL_ECONFIG, "key 'data.labels': federated nodes must share a fixed "
                        "label set (data.labels = A,B,C)");
        return NULL;
    }
    records_opts_t opts;
    char **labels = NULL;
    size_t n_labels = 0;
    if (data_config_to_opts(&cfg->data, NULL, &opts, &labels, &n_labels) != 0) return NULL;
    trainer_t *t = trainer_new(&cfg->train, cfg->device, (const char *const *)labels, n_labels);
    records_t *set = NULL;
    if (t && with_records) {
        if (!cfg->data.records[0]) {
            medfl_error_set(MEDFL_ECONFIG, "key 'data.records' is empty: nothing to train on");
            trainer_destroy(&t);
        } else if (!(set = s_records(cfg, &opts)) || trainer_set_records(t, set, false) != 0) {
            trainer_destroy(&t);
        }
    }
    records_destroy(&set);
    data_labels_free(labels, n_labels);
    return t;
}

model_trainer_t *model_trainer_new(const node_config_t *cfg)
{
    model_trainer_t *m = calloc(1, sizeof *m);
    if (!m) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    m->t = s_trainer(cfg, true);
    if (!m->t) {
        free(m);
        return NULL;
    }
    m->node_lr = cfg->train.lr;
    m->node_batch = (long)cfg->train.batch_size;
    m->node_seq = (long)cfg->train.max_seq_len;
    const model_t *mo = trainer_model(m->t);
    for (size_t i = 0; i < model_trainable_count(mo); i++)
        m->packed += model_trainable_tensor(mo, i)->numel;
    m->pad = calloc(trainer_n_params(m->t), sizeof *m->pad);
    m->pad_delta = calloc(trainer_n_params(m->t), sizeof *m->pad_delta);
    if (!m->pad || !m->pad_delta) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        model_trainer_destroy(&m);
        return NULL;
    }
    LOG_INFO(TRAIN, "model trainer: %zu trainable parameters, %zu training and %zu validation "
             "records", trainer_n_params(m->t), trainer_split_size(m->t, TRAIN_SPLIT_TRAIN),
             trainer_split_size(m->t, TRAIN_SPLIT_VALID));
    return m;
}

void model_trainer_destroy(model_trainer_t **self_p)
{
    if (!self_p || !*self_p) return;
    trainer_destroy(&(*self_p)->t);
    free((*self_p)->pad);
    free((*self_p)->pad_delta);
    free(*self_p);
    *self_p = NULL;
}

size_t model_trainer_records(const model_trainer_t *m)
{
    return trainer_split_size(m->t, TRAIN_SPLIT_TRAIN);
}

size_t model_trainer_numel(const model_trainer_t *m) { return m->packed; }

static int s_check_n(const model_trainer_t *m, size_t n)
{
    if (n != m->packed)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "the version has %zu trainable parameters, this "
                               "node's model (model.base, model.lora.*, data.labels) has %zu",
                               n, m->packed);
    return 0;
}

/* The round's hyperparameters (RoundStart) rule, so every participant trains alike and the
 * operator tunes the federation in one place; a value the round does not send (0) falls
 * back to the node's own [train] setting. The log line says which one was used. Records
 * were tokenized once at load, so max_seq_len stays the node's. Under DP-SGD the batches
 * are Poisson draws at the round's q, q x N examples on average: the batch size then only
 * sizes the memory chunks, so the line gives the expected batch instead. */
static int s_round_hparams(model_trainer_t *m, const round_hparams_t *hp)
{
    double lr = hp->lr > 0 ? hp->lr : m->node_lr;
    long batch = hp->batch_size > 0 ? (long)hp->batch_size : m->node_batch;
    if (trainer_set_lr(m->t, lr) != 0 || trainer_set_batch_size(m->t, batch) != 0)
        return medfl_error_prefix("round %llu: ", (unsigned long long)hp->round_id);
    char seq[160] = "";
    if (hp->max_seq_len && (long)hp->max_seq_len != m->node_seq)
        snprintf(seq, sizeof seq, "; the round's max_seq_len %u is not applied (records were "
                 "tokenized at train.max_seq_len %ld when loaded)", hp->max_seq_len, m->node_seq);
    const char *lr_from = hp->lr > 0 ? "from the round" : "node train.lr: the round sent none";
    if (hp->dp) {
        size_t ntr = trainer_split_size(m->t, TRAIN_SPLIT_TRAIN);
        LOG_INFO(TRAIN, "round %llu: lr %g (%s), DP-SGD Poisson batches at q %g (from the round): "
                 "expected batch %.1f = q x %zu training records, %u local steps (round)%s",
                 (unsigned long long)hp->round_id, lr, lr_from, hp->sample_rate,
                 hp->sample_rate * (double)ntr, ntr, hp->local_steps, seq);
        return 0;
    }
    LOG_INFO(TRAIN, "round %llu: lr %g (%s), batch size %ld (%s), %u local steps (round)%s",
             (unsigned long long)hp->round_id, lr, lr_from, batch,
             hp->batch_size > 0 ? "from the round" : "node train.batch_size: the round sent none",
             hp->local_steps, seq);
    return 0;
}

static int s_train(void *ctx, const float *global, size_t n, const round_hparams_t *hp,
                   float *delta, uint64_t *n_examples)
{
    model_trainer_t *m = ctx;
    m->processed = 0;
    if (s_check_n(m, n) != 0) return -1;
    if (s_round_hparams(m, hp) != 0) return -1;
    if (trainer_set_dp(m->t, hp->dp, hp->dp ? hp->sample_rate : 1.0, hp->noise_multiplier,
                       hp->dp ? hp->clip_norm : 1.0) != 0)
        return -1;
    train_stats_t st;
    trainer_set_stop(m->t, hp->should_stop);
    trainer_set_tick(m->t, hp->tick, hp->tick_ctx);
    s_unpack(m, global, m->pad);
    if (trainer_round(m->t, m->pad, trainer_n_params(m->t), (long)hp->local_steps, m->pad_delta,
                      &st) != 0)
        return -1;
    s_pack(m, m->pad_delta, delta);
    if (hp->tick) hp->tick(hp->tick_ctx);
    *n_examples = st.examples_total;
    m->processed = st.examples;
    LOG_INFO(TRAIN, "round %llu: %ld steps (%zu examples) in %.1f s, mean loss %.4f%s",
             (unsigned long long)hp->round_id, st.steps, st.examples, st.seconds, st.mean_loss,
             st.dp ? " (DP-SGD)" : "");
    return 0;
}

static int s_eval(void *ctx, const float *x, size_t n, double *loss, double *acc, double *f1,
                  uint64_t *n_eval)
{
    model_trainer_t *m = ctx;
    if (s_check_n(m, n) != 0) return -1;
    train_eval_t ev;
    s_unpack(m, x, m->pad);
    if (trainer_evaluate_vector(m->t, m->pad, trainer_n_params(m->t), TRAIN_SPLIT_VALID, &ev) != 0)
        return -1;
    *loss = ev.loss;
    *acc = ev.accuracy;
    *f1 = ev.macro_f1;
    *n_eval = ev.n;
    return 0;
}

/* The version's table must be the model's trainable tensors, same names, sizes, order. */
static int s_check_layout(void *ctx, const vs_manifest_t *v)
{
    model_trainer_t *m = ctx;
    const model_t *mo = trainer_model(m->t);
    if (v->n_tensors != model_trainable_count(mo))
        return medfl_error_set(MEDFL_EUNSUPPORTED, "the version has %zu tensors, this node's model "
                               "%zu trainable ones", v->n_tensors, model_trainable_count(mo));
    for (size_t i = 0; i < v->n_tensors; i++) {
        const model_tensor_t *tt = model_trainable_tensor(mo, i);
        if (strcmp(v->tensors[i].name, tt->name) != 0 || v->tensors[i].numel != tt->numel)
            return medfl_error_set(MEDFL_EUNSUPPORTED, "tensor %zu of the version is '%s' (%zu "
                                   "values), this node's model has '%s' (%zu) there", i,
                                   v->tensors[i].name, v->tensors[i].numel, tt->name, tt->numel);
    }
    return 0;
}

static int s_linear_step(void *ctx, const round_hparams_t *hp, double *scale)
{
    model_trainer_t *m = ctx;
    if (s_round_hparams(m, hp) != 0 ||
        trainer_set_dp(m->t, hp->dp, hp->dp ? hp->sample_rate : 1.0, 0,
                       hp->dp ? hp->clip_norm : 1.0) != 0)
        return -1;
    return trainer_linear_step(m->t, (long)hp->local_steps, scale);
}

static uint64_t s_processed(void *ctx)
{
    return ((const model_trainer_t *)ctx)->processed;
}

void model_trainer_bind(model_trainer_t *m, round_trainer_t *t)
{
    memset(t, 0, sizeof *t); /* callbacks added later start absent (callers pass stack memory) */
    t->examples_processed = s_processed;
    t->linear_step = s_linear_step;
    t->check_layout = s_check_layout;
    t->ctx = m;
    t->train = s_train;
    t->evaluate = s_eval;
}

/* ---- init-adapter ---- */

/* medfl tensor name -> PEFT name of a BertForSequenceClassification adapter, the form
 * `medfl-aggregator init-version` reads. */
static int s_peft_name(const char *name, char *out, size_t size)
{
    const char *enc = "base_model.model.encoder.";
    if (strncmp(name, enc, strlen(enc)) == 0)
        snprintf(out, size, "base_model.model.bert.encoder.%s", name + strlen(enc));
    else if (strncmp(name, "classifier.", 11) == 0)
        snprintf(out, size, "base_model.model.%s", name);
    else
        return medfl_error_set(MEDFL_EFORMAT, "adapter tensor '%s' has no PEFT name", name);
    return 0;
}

int cmd_init_adapter(int argc, char **argv)
{
    const char *usage = "medfl-node init-adapter -c node.conf -o DIR";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Writes the freshly initialised adapter of this node's model (model.base,\n"
               "model.lora.*, model.pooling, data.labels, train.seed) as a PEFT folder\n"
               "(adapter_model.safetensors with SequenceClassification names, adapter_config.json,\n"
               "label_config.json: data.labels as id2label/label2id, and the pooling) that\n"
               "`medfl-aggregator init-version --from DIR` turns into the federation's first\n"
               "version. Every node of a federation must use the same model settings.\n", usage);
        return 0;
    }
    const char *conf = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) conf = argv[++i];
        else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) && i + 1 < argc) out = argv[++i];
        else {
            medfl_error_set(MEDFL_EINVAL, "unexpected argument '%s' (usage: %s)", argv[i], usage);
            return cli_fail("medfl-node init-adapter");
        }
    }
    if (!conf || !out) {
        medfl_error_set(MEDFL_EINVAL, "-c and -o are required (usage: %s)", usage);
        return cli_fail("medfl-node init-adapter");
    }
    node_config_t cfg;
    if (cfg_set_defaults(node_config_table, &cfg) != 0 ||
        cfg_load_subset(node_config_table, node_config_table, &cfg, conf) != 0)
        return cli_fail("medfl-node init-adapter");
    trainer_t *t = s_trainer(&cfg, false);
    if (!t) return cli_fail("medfl-node init-adapter");
    char tmp[] = "/tmp/medfl-init-adapter-XXXXXX";
    int fd = mkstemp(tmp);
    adapter_t a;
    memset(&a, 0, sizeof a);
    named_tensor_t *renamed = NULL;
    cJSON *js = NULL;
    char *text = NULL;
    int rc = -1;
    if (fd < 0) {
        medfl_error_set(MEDFL_EIO, "cannot create a temporary file");
        goto done;
    }
    close(fd);
    if (trainer_save(t, tmp, false) != 0 || adapter_read(tmp, &a) != 0) goto done;
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        medfl_error_set(MEDFL_EIO, "%s: cannot create folder: %s", out, strerror(errno));
        goto done;
    }
    renamed = calloc(a.n_tensors, sizeof *renamed);
    if (!renamed) goto done;
    for (size_t i = 0; i < a.n_tensors; i++) {
        char name[600];
        if (s_peft_name(a.tensors[i].name, name, sizeof name) != 0) goto done;
        renamed[i] = a.tensors[i];
        renamed[i].name = strdup(name);
        if (!renamed[i].name) goto done;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    const char *meta[] = {"format", "pt"};
    if (safetensors_write_f32(path, renamed, a.n_tensors, meta, 1) < 0) goto done;
    js = cJSON_CreateObject();
    cJSON_AddStringToObject(js, "peft_type", "LORA");
    cJSON_AddStringToObject(js, "task_type", "SEQ_CLS");
    cJSON_AddStringToObject(js, "base_model_name_or_path", a.base_model_name);
    cJSON_AddNumberToObject(js, "r", (double)a.r);
    cJSON_AddNumberToObject(js, "lora_alpha", a.alpha);
    cJSON *tm = cJSON_AddArrayToObject(js, "target_modules");
    for (size_t i = 0; i < a.n_targets; i++) cJSON_AddItemToArray(tm, cJSON_CreateString(a.targets[i]));
    if (!(text = cJSON_Print(js))) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    snprintf(path, sizeof path, "%s/adapter_config.json", out);
    /* The label names (data.labels, in head order) and pooling travel with the genesis:
     * init-version records them in the version, export hands them to Hugging Face users. */
    if (atomic_file_replace(path, text, strlen(text), 0644) < 0 ||
        adapter_label_config_write(out, a.labels, a.n_labels, a.pooling) < 0)
        goto done;
    size_t numel = 0;
    for (size_t i = 0; i < a.n_tensors; i++) numel += named_tensor_numel(&a.tensors[i]);
    printf("adapter: %s\ntensors: %zu\nparameters: %zu\nlabels: %zu\npooling: %s\n", out,
           a.n_tensors, numel, a.n_labels, a.pooling);
    rc = 0;
done:
    if (renamed)
        for (size_t i = 0; i < a.n_tensors; i++) free(renamed[i].name);
    free(renamed);
    cJSON_Delete(js);
    free(text);
    adapter_free(&a);
    unlink(tmp);
    trainer_destroy(&t);
    return rc == 0 ? 0 : cli_fail("medfl-node init-adapter");
}

/* ---- export-adapter ---- */

int cmd_export_adapter(int argc, char **argv)
{
    const char *usage = "medfl-node export-adapter -c node.conf --version V -o ADAPTER.h5";
    if (cli_wants_help(argc, argv)) {
        printf("Usage: %s\n\n"
               "Verifies global version V in this node's version store (state_dir/versions,\n"
               "signature by aggregator.identity_key and the chain) and writes it as an adapter\n"
               "file that `medfl-node eval --adapter` and `train-local` read.\n", usage);
        return 0;
    }
    const char *conf = NULL, *out = NULL, *ver = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc) conf = argv[++i];
        else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--version") && i + 1 < argc) ver = argv[++i];
        else {
            medfl_error_set(MEDFL_EINVAL, "unexpected argument '%s' (usage: %s)", argv[i], usage);
            return cli_fail("medfl-node export-adapter");
        }
    }
    char *end = NULL;
    unsigned long long v = ver ? strtoull(ver, &end, 10) : 0;
    if (!conf || !out || !ver || !end || *end || v == 0) {
        medfl_error_set(MEDFL_EINVAL, "-c, --version (>= 1) and -o are required (usage: %s)", usage);
        return cli_fail("medfl-node export-adapter");
    }
    node_config_t cfg;
    if (cfg_set_defaults(node_config_table, &cfg) != 0 ||
        cfg_load_subset(node_config_table, node_config_table, &cfg, conf) != 0)
        return cli_fail("medfl-node export-adapter");
    uint8_t pk[32];
    char dir[CFG_STR_MAX + 16];
    snprintf(dir, sizeof dir, "%s/versions", cfg.state_dir);
    model_trainer_t m = {0};
    vs_store_t *vs = NULL;
    vs_manifest_t *man = NULL;
    float *flat = NULL;
    int rc = -1;
    if (node_load_agg_identity(cfg.agg_identity_key, pk) != 0) goto done;
    if (!(vs = vs_store_open(dir, false)) || vs_store_verify(vs, v, pk, &man, &flat) != 0) goto done;
    if (!(m.t = s_trainer(&cfg, false))) goto done;
    const model_t *mo = trainer_model(m.t);
    for (size_t i = 0; i < model_trainable_count(mo); i++) m.packed += model_trainable_tensor(mo, i)->numel;
    if (s_check_layout(&m, man) != 0) goto done;
    if (!(m.pad = calloc(trainer_n_params(m.t), sizeof *m.pad))) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto done;
    }
    s_unpack(&m, flat, m.pad);
    if (trainer_set_params(m.t, m.pad, trainer_n_params(m.t)) != 0 || trainer_save(m.t, out, false) != 0)
        goto done;
    printf("version: %llu\nadapter: %s\n", v, out);
    rc = 0;
done:
    free(m.pad);
    trainer_destroy(&m.t);
    vs_manifest_destroy(&man);
    free(flat);
    vs_store_destroy(&vs);
    return rc == 0 ? 0 : cli_fail("medfl-node export-adapter");
}
