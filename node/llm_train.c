/* Decoder LLM fine-tuning and evaluation commands (train-local / eval with a GGUF base).
 * See llm_train.h. */
#include "node/llm_train.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "common/service.h"
#include "node/engine/backend.h"
#include "node/engine/bpe_gguf.h"
#include "node/engine/llama_export.h"
#include "node/import_gguf.h"
#include "node/llm_data.h"

#define PROG "medfl-node"
#define S_MAX_NEW 256 /* longest greedy answer eval generates */

bool llm_base_is_decoder(const char *base, char *gguf, size_t size)
{
    size_t n = strlen(base);
    struct stat sb;
    if (n >= 5 && strcmp(base + n - 5, ".gguf") == 0)
        return snprintf(gguf, size, "%s", base) < (int)size;
    /* base.h5 of a decoder node: import-model --gguf writes base.gguf beside it, no base.h5 */
    return n >= 3 && strcmp(base + n - 3, ".h5") == 0 && stat(base, &sb) != 0 &&
           import_gguf_target(base, gguf, size) == 0 && stat(gguf, &sb) == 0;
}

/* ---- PEFT adapter */

int llm_adapter_config(const char *dir, llama_gguf_opts_t *o)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: cannot open", path);
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    cJSON *j = cJSON_ParseWithLength(buf, n);
    if (j == NULL)
        return medfl_error_set(MEDFL_EFORMAT, "%s: not JSON (or over 64 KB)", path);
    const cJSON *r = cJSON_GetObjectItem(j, "r"), *a = cJSON_GetObjectItem(j, "lora_alpha"),
                *t = cJSON_GetObjectItem(j, "target_modules");
    int rc = 0;
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 || r->valuedouble > 4096 ||
        !cJSON_IsNumber(a) || !(a->valuedouble > 0) || !cJSON_IsArray(t))
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: needs r (1..4096), lora_alpha (> 0) and "
                             "target_modules (a list)", path);
    char list[512] = "";
    const cJSON *e;
    cJSON_ArrayForEach(e, t)
    {
        if (rc == 0 && (!cJSON_IsString(e) || strlen(list) + strlen(e->valuestring) + 2 >
                                                  sizeof list))
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: target_modules: a bad entry", path);
        if (rc == 0) {
            strcat(list, list[0] ? "," : "");
            strcat(list, e->valuestring);
        }
    }
    if (rc == 0) {
        o->lora_r = (int)r->valuedouble;
        o->lora_alpha = (float)a->valuedouble;
        if (llama_lora_targets_parse(list, &o->lora_targets) != 0)
            rc = medfl_error_prefix("%s: target_modules: ", path);
    }
    cJSON_Delete(j);
    return rc;
}

/* Every trainable tensor of m from the PEFT file (names without ".default"), nothing else. */
int llm_adapter_load(llama_t *m, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    safetensors_t *st = safetensors_open(path);
    if (st == NULL)
        return -1;
    size_t n = llama_trainable_numel(m);
    float *p = calloc(n ? n : 1, sizeof(float));
    int rc = p ? 0 : medfl_error_set(MEDFL_ENOMEM, "out of memory");
    if (rc == 0 && safetensors_count(st) != llama_trainable_count(m))
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: %zu tensors, the adapter of adapter_config.json "
                             "has %zu", path, safetensors_count(st), llama_trainable_count(m));
    for (size_t i = 0; rc == 0 && i < llama_trainable_count(m); i++) {
        const model_tensor_t *t = llama_trainable_tensor(m, i);
        const st_tensor_t *s = safetensors_find(st, t->name);
        if (s == NULL)
            rc = medfl_error_set(MEDFL_ENOTFOUND, "%s: tensor '%s' missing", path, t->name);
        else if (s->ndim != 2 || s->shape[0] != t->shape[0] || s->shape[1] != t->shape[1])
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: tensor '%s' is not [%d, %d]", path,
                                 t->name, t->shape[0], t->shape[1]);
        else
            rc = safetensors_read_f32(st, s, p + t->offset);
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (!isfinite(p[i]))
            rc = medfl_error_set(MEDFL_EFORMAT, "%s: a value is not finite", path);
    if (rc == 0)
        rc = llama_trainable_set(m, p, n);
    free(p);
    safetensors_destroy(&st);
    return rc;
}

/* ---- the model, its tokenizer and chat format */

typedef struct {
    backend_t *be;
    llama_t *m;
    bpe_gguf_t g;
    bpe_t *tok;
    bpe_chat_t chat;
    size_t max_len; /* tokens per example: train.max_seq_len within the model's context */
} s_llm;

static void s_llm_close(s_llm *l)
{
    bpe_chat_clear(&l->chat);
    bpe_destroy(&l->tok);
    bpe_gguf_clear(&l->g);
    llama_destroy(&l->m);
    backend_destroy(&l->be);
}

static int s_llm_open(s_llm *l, const char *gguf, const train_config_t *tc, const char *device,
                      const llama_gguf_opts_t *o)
{
    memset(l, 0, sizeof *l);
    if (strcmp(device, "cuda") == 0)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "device = cuda: a decoder computes on the CPU "
                               "for now (device = cpu or auto)");
    if (!(l->be = backend_cpu_new(tc->threads > 0 ? (int)tc->threads : 2)) ||
        !(l->m = llama_from_gguf(gguf, o, l->be)) || bpe_gguf_read(gguf, &l->g) != 0 ||
        !(l->tok = bpe_gguf_tokenizer(&l->g, NULL)) ||
        llm_chat_format(&l->g, l->tok, gguf, &l->chat) != 0) {
        s_llm_close(l);
        return -1;
    }
    int ctx = llama_config(l->m)->max_seq;
    l->max_len = tc->max_seq_len < ctx ? (size_t)tc->max_seq_len : (size_t)ctx;
    llama_init_trainable(l->m, (uint64_t)tc->seed);
    return 0;
}

/* ---- records -> examples */

typedef struct {
    int32_t *ids, *labels;
    size_t n, n_labelled;
} s_ex;

typedef struct {
    llm_records_t *recs;
    s_ex *ex;
    size_t n, truncated, unlearnable;
} s_data;

static void s_data_free(s_data *d)
{
    for (size_t i = 0; d->ex && i < d->n; i++) {
        free(d->ex[i].ids);
        free(d->ex[i].labels);
    }
    free(d->ex);
    llm_records_destroy(&d->recs);
    memset(d, 0, sizeof *d);
}

/* Reads, gates and tokenizes data.records; *status 3 when the gate refuses. */
static int s_data_load(s_data *d, const llm_cmd_t *a, const s_llm *l, int *status)
{
    memset(d, 0, sizeof *d);
    *status = 1;
    deid_policy_t pol;
    if (deid_policy_parse(a->data->policy, &pol) != 0 ||
        !(d->recs = llm_records_load(a->data->records, (size_t)a->data->max_text_bytes)))
        return -1;
    size_t flagged = 0, n = llm_records_count(d->recs);
    if (llm_records_deid(d->recs, pol, pol == DEID_POLICY_REFUSE ? stderr : NULL, &flagged) != 0)
        return -1;
    if (pol == DEID_POLICY_OFF)
        LOG_WARN(DATA, "de-identification gate is off: records were not scanned");
    else if (flagged && pol == DEID_POLICY_REDACT)
        LOG_WARN(DATA, "%zu records carried possible PHI and were redacted", flagged);
    else if (flagged) {
        *status = 3;
        return medfl_error_set(MEDFL_EPERM, "%s: %zu of %zu records carry possible PHI "
                               "(deid.policy = refuse): not using them", a->data->records,
                               flagged, n);
    }
    if (!(d->ex = calloc(n, sizeof *d->ex)))
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    d->n = n;
    for (size_t i = 0; i < n; i++) {
        const llm_record_t *r = llm_records_get(d->recs, i);
        bool cut;
        s_ex *e = &d->ex[i];
        if (llm_encode_example(l->tok, &l->chat, r, NULL, l->max_len, &e->ids, &e->labels, &e->n,
                               &cut) != 0)
            return medfl_error_prefix("%s:%zu: ", a->data->records, r->line);
        for (size_t t = 0; t < e->n; t++)
            e->n_labelled += e->labels[t] != LLAMA_IGNORE;
        d->truncated += cut;
        d->unlearnable += e->n_labelled == 0;
    }
    if (d->truncated)
        LOG_WARN(DATA, "%zu of %zu records longer than %zu tokens were truncated (train.max_seq_len)",
                 d->truncated, n, l->max_len);
    if (d->unlearnable)
        LOG_WARN(DATA, "%zu records kept no response token after truncation: left out of the "
                 "loss", d->unlearnable);
    return 0;
}

/* ---- batches */

typedef struct {
    int32_t *ids, *mask, *labels;
    int B, T;
} s_batch;

/* Examples idx[0..B) padded on the right to the longest of them. */
static int s_batch_make(s_batch *b, const s_data *d, const size_t *idx, int B)
{
    size_t T = 1;
    for (int i = 0; i < B; i++)
        if (d->ex[idx[i]].n > T) T = d->ex[idx[i]].n;
    size_t n = (size_t)B * T;
    free(b->ids);
    free(b->mask);
    free(b->labels);
    b->ids = calloc(n, sizeof(int32_t));
    b->mask = calloc(n, sizeof(int32_t));
    b->labels = malloc(n * sizeof(int32_t));
    if (!b->ids || !b->mask || !b->labels)
        return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (size_t k = 0; k < n; k++) b->labels[k] = LLAMA_IGNORE;
    for (int i = 0; i < B; i++) {
        const s_ex *e = &d->ex[idx[i]];
        for (size_t t = 0; t < e->n; t++) {
            b->ids[i * T + t] = e->ids[t];
            b->mask[i * T + t] = 1;
            b->labels[i * T + t] = e->labels[t];
        }
    }
    b->B = B;
    b->T = (int)T;
    return 0;
}

static void s_batch_free(s_batch *b)
{
    free(b->ids);
    free(b->mask);
    free(b->labels);
    memset(b, 0, sizeof *b);
}

/* Mean loss over every labelled token of the examples idx[0..n), and the count of them. */
static int s_mean_loss(llama_t *m, const s_data *d, const size_t *idx, size_t n, int bs,
                       double *loss, size_t *tokens)
{
    s_batch b = {0};
    double sum = 0;
    size_t cnt = 0, *sel = malloc((n ? n : 1) * sizeof *sel), k = 0;
    if (!sel) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        if (d->ex[idx[i]].n_labelled) sel[k++] = idx[i];
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < k; i += (size_t)bs) {
        int B = (int)(k - i < (size_t)bs ? k - i : (size_t)bs);
        float l;
        rc = s_batch_make(&b, d, sel + i, B);
        if (rc == 0) rc = llama_forward(m, &(llama_batch_t){b.ids, b.mask, b.labels, B, b.T}, &l, NULL);
        for (int e = 0; rc == 0 && e < B; e++) {
            sum += (double)l * llama_labelled_count(m, e);
            cnt += (size_t)llama_labelled_count(m, e);
        }
    }
    s_batch_free(&b);
    free(sel);
    *loss = cnt ? sum / (double)cnt : 0;
    *tokens = cnt;
    return rc;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- train-local */

static int s_check_train_conf(const train_config_t *tc)
{
    if (tc->dp)
        return medfl_error_set(MEDFL_EUNSUPPORTED, "privacy.enabled: DP-SGD is not wired for "
                               "decoders yet (issue #19 item 7); set privacy.enabled = false to "
                               "train a decoder without differential privacy");
    if (tc->lr > 0.1)
        return medfl_error_set(MEDFL_ECONFIG, "train.lr = %g is a classifier head's SGD rate; a "
                               "decoder's LoRA trains with AdamW at about 1e-4 to 1e-3: set "
                               "train.lr", tc->lr);
    return 0;
}

/* model.lora.* -> loader options; "none" (the classifier's default) means q,v here: a decoder
 * has no head that could train alone. */
static int s_lora_opts(const train_config_t *tc, llama_gguf_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->lora_r = (int)tc->lora_r;
    o->lora_alpha = (float)tc->lora_alpha;
    const char *t = strcmp(tc->lora_targets, "none") == 0 ? "q,v" : tc->lora_targets;
    if (llama_lora_targets_parse(t, &o->lora_targets) != 0)
        return medfl_error_prefix("model.lora.targets: ");
    return 0;
}

static void s_shuffle(size_t *v, size_t n, uint64_t seed)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = data_rng_below(&seed, (uint32_t)i), t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

int llm_train_local(const llm_cmd_t *a)
{
    const train_config_t *tc = a->train;
    char gguf[4096];
    llama_gguf_opts_t o;
    s_llm l = {0};
    s_data d = {0};
    s_batch b = {0};
    size_t *tr = NULL, *va = NULL, *order = NULL, ntr = 0, nva = 0, nord = 0;
    int status = 1;
    const char *out = a->out ? a->out : "adapter";
    llm_base_is_decoder(tc->base, gguf, sizeof gguf);
    if (s_check_train_conf(tc) != 0 || s_lora_opts(tc, &o) != 0 ||
        s_llm_open(&l, gguf, tc, a->device, &o) != 0 || s_data_load(&d, a, &l, &status) != 0)
        goto fail;
    status = 1;
    if (llm_records_split(d.recs, (uint64_t)tc->seed, tc->valid_fraction, &tr, &ntr, &va, &nva) != 0)
        goto fail;
    if (!(order = malloc((ntr ? ntr : 1) * sizeof *order))) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < ntr; i++)
        if (d.ex[tr[i]].n_labelled) order[nord++] = tr[i];
    if (nord == 0) {
        medfl_error_set(MEDFL_EINVAL, "%s: no training record keeps a response token within "
                        "train.max_seq_len = %zu", a->data->records, l.max_len);
        goto fail;
    }
    printf("model: %s\nlora_r: %d\nlora_trainable: %zu\nrecords_train: %zu\nrecords_valid: %zu\n"
           "records_truncated: %zu\n", gguf, llama_config(l.m)->lora_r,
           llama_trainable_numel(l.m), ntr, nva, d.truncated);
    if (strcmp(tc->optimizer, "adamw") != 0)
        LOG_INFO(TRAIN, "a decoder's LoRA trains with AdamW (train.optimizer = %s applies to the "
                 "classifier)", tc->optimizer);
    int bs = (int)(tc->batch_size < (int64_t)nord ? tc->batch_size : (int64_t)nord);
    long spe = (long)((nord + (size_t)bs - 1) / (size_t)bs), total = spe * (long)tc->epochs;
    long stop = tc->max_steps > 0 && tc->max_steps < total ? (long)tc->max_steps : total;
    adamw_config_t opt;
    adamw_config_default(&opt);
    opt.lr = (float)tc->lr;
    opt.weight_decay = (float)tc->weight_decay;
    opt.warmup_steps = (long)floor(tc->warmup_fraction * (double)total);
    opt.total_steps = strcmp(tc->lr_schedule, "constant") == 0 ? 0 : total;
    if (service_signals_install() != 0) goto fail;
    long step = 0;
    for (int e = 0; step < stop && !service_stop_requested(); e++) {
        s_shuffle(order, nord, (uint64_t)tc->seed * 1000003u + (uint64_t)e);
        long epoch_steps = spe < stop - step ? spe : stop - step;
        char label[64];
        snprintf(label, sizeof label, "epoch %d/%d", e + 1, (int)((stop + spe - 1) / spe));
        double sum = 0, t0 = s_now();
        size_t toks = 0, seqs = 0;
        for (long k = 0; k < epoch_steps && !service_stop_requested(); k++) {
            size_t at = (size_t)k * (size_t)bs;
            int B = (int)(nord - at < (size_t)bs ? nord - at : (size_t)bs);
            float loss;
            if (s_batch_make(&b, &d, order + at, B) != 0) goto fail;
            llama_zero_grad(l.m);
            if (llama_forward_train(l.m, &(llama_batch_t){b.ids, b.mask, b.labels, B, b.T},
                                    &loss) != 0 ||
                llama_backward(l.m) != 0)
                goto fail;
            llama_adamw_step(l.m, &opt, ++step);
            sum += loss;
            seqs += (size_t)B;
            for (int i = 0; i < B; i++) toks += (size_t)llama_labelled_count(l.m, i);
            double secs = s_now() - t0;
            train_progress_print(label, k + 1, epoch_steps, sum / (double)(k + 1),
                                 secs > 0 ? (double)seqs / secs : 0, k + 1 == epoch_steps);
        }
        if (service_stop_requested()) break;
        double secs = s_now() - t0;
        printf("epoch: %d\ntrain_loss: %.6f\ntrain_tokens_per_s: %.1f\n", e + 1,
               sum / (double)epoch_steps, secs > 0 ? (double)toks / secs : 0);
        if (nva) {
            double vl;
            size_t vt;
            if (s_mean_loss(l.m, &d, va, nva, bs, &vl, &vt) != 0) goto fail;
            printf("valid_loss: %.6f\nvalid_perplexity: %.4f\nvalid_tokens: %zu\n", vl, exp(vl), vt);
        }
        fflush(stdout);
    }
    if (service_stop_requested()) {
        medfl_error_set(MEDFL_ESTATE, "stopped by a signal at step %ld; nothing saved", step);
        goto fail;
    }
    if (llama_export_peft(l.m, out, NULL) != 0) goto fail;
    printf("steps: %ld\nadapter: %s\n", step, out);
    status = 0;
fail:
    if (status != 0) cli_fail(PROG);
    s_batch_free(&b);
    free(tr);
    free(va);
    free(order);
    s_data_free(&d);
    s_llm_close(&l);
    return status;
}

/* ---- eval */

/* Greedy continuation of record r's prompt, up to the end of the turn; malloc'd text. */
static char *s_greedy(s_llm *l, const llm_record_t *r, size_t max_new, float *lg)
{
    bpe_ids_t p = {0}, outv = {0};
    llama_kv_t *kv = NULL;
    char *text = NULL;
    int ctx = llama_config(l->m)->max_seq, V = llama_config(l->m)->vocab;
    if (llm_encode_prompt(l->tok, &l->chat, r, &p) != 0) goto done;
    if (p.n >= (size_t)ctx) { /* no room to answer: an empty answer */
        text = strdup("");
        goto done;
    }
    size_t cap = p.n + max_new < (size_t)ctx ? p.n + max_new : (size_t)ctx;
    if (!(kv = llama_kv_new(l->m, (int)cap)) || llama_decode(l->m, kv, p.v, (int)p.n, lg) != 0)
        goto done;
    int32_t eos = bpe_specials(l->tok)->eos_id, im_end = bpe_token_id(l->tok, "<|im_end|>"),
            eot = bpe_token_id(l->tok, "<|eot_id|>");
    outv.v = malloc((max_new ? max_new : 1) * sizeof(int32_t));
    if (!outv.v) goto done;
    for (size_t i = 0; i < max_new; i++) {
        int32_t id = 0;
        for (int v = 1; v < V; v++)
            if (lg[v] > lg[id]) id = v;
        if (id == eos || id == im_end || id == eot) break;
        outv.v[outv.n++] = id;
        if (llama_kv_len(kv) >= (int)cap || llama_decode(l->m, kv, &id, 1, lg) != 0) break;
    }
    size_t len;
    text = bpe_decode(l->tok, outv.v, outv.n, &len);
done:
    if (!text && medfl_error_code() == MEDFL_OK) medfl_error_set(MEDFL_ENOMEM, "out of memory");
    llama_kv_destroy(&kv);
    bpe_ids_free(&p);
    free(outv.v);
    return text;
}

/* Total log-likelihood of option k of r as the assistant's answer (its end-of-turn included). */
static int s_option_ll(s_llm *l, const llm_record_t *r, size_t k, double *ll)
{
    int32_t *ids = NULL, *lab = NULL;
    size_t n;
    bool cut;
    float loss;
    int rc = llm_encode_example(l->tok, &l->chat, r, r->options[k], l->max_len, &ids, &lab, &n,
                                &cut);
    if (rc == 0 && llama_forward(l->m, &(llama_batch_t){ids, NULL, lab, 1, (int)n}, &loss,
                                 NULL) != 0)
        rc = -1;
    if (rc == 0) *ll = -(double)loss * llama_labelled_count(l->m, 0);
    free(ids);
    free(lab);
    return rc;
}

int llm_eval(const llm_cmd_t *a)
{
    const train_config_t *tc = a->train;
    char gguf[4096];
    llama_gguf_opts_t o;
    s_llm l = {0};
    s_data d = {0};
    size_t *tr = NULL, *va = NULL, ntr = 0, nva = 0;
    float *lg = NULL;
    int status = 1;
    llm_base_is_decoder(tc->base, gguf, sizeof gguf);
    if ((a->adapter ? llm_adapter_config(a->adapter, &o) : s_lora_opts(tc, &o)) != 0 ||
        s_llm_open(&l, gguf, tc, a->device, &o) != 0 ||
        (a->adapter && llm_adapter_load(l.m, a->adapter) != 0) ||
        s_data_load(&d, a, &l, &status) != 0)
        goto fail;
    status = 1;
    const char *split = a->whole ? "all" : a->split ? a->split : "valid";
    if (strcmp(split, "train") && strcmp(split, "valid") && strcmp(split, "all")) {
        medfl_error_set(MEDFL_EINVAL, "--split %s: a decoder's records are split train|valid "
                        "(or all)", split);
        goto fail;
    }
    if (llm_records_split(d.recs, (uint64_t)tc->seed, tc->valid_fraction, &tr, &ntr, &va, &nva) != 0)
        goto fail;
    size_t *idx = tr, n = ntr;
    if (strcmp(split, "valid") == 0) idx = va, n = nva;
    else if (strcmp(split, "all") == 0) {
        free(tr);
        if (!(tr = malloc((d.n ? d.n : 1) * sizeof *tr))) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < d.n; i++) tr[i] = i;
        idx = tr, n = d.n;
    }
    if (n == 0) {
        medfl_error_set(MEDFL_EINVAL, "%s: the %s split is empty", a->data->records, split);
        goto fail;
    }
    double loss;
    size_t toks;
    int bs = tc->batch_size > 0 ? (int)tc->batch_size : 1;
    if (s_mean_loss(l.m, &d, idx, n, bs, &loss, &toks) != 0) goto fail;
    if (!(lg = malloc((size_t)llama_config(l.m)->vocab * sizeof *lg))) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        goto fail;
    }
    double em = 0, rouge = 0;
    size_t mc_n = 0, mc_ok = 0;
    for (size_t i = 0; i < n; i++) {
        const llm_record_t *r = llm_records_get(d.recs, idx[i]);
        /* room for the reference's length twice over: a longer answer cannot match it */
        size_t max_new = 2 * (d.ex[idx[i]].n_labelled ? d.ex[idx[i]].n_labelled : 8) + 16;
        if (max_new > S_MAX_NEW) max_new = S_MAX_NEW;
        char *got = s_greedy(&l, r, max_new, lg);
        if (!got) goto fail;
        em += llm_exact_match(got, r->content[r->n_msgs - 1]);
        rouge += llm_rouge_l(got, r->content[r->n_msgs - 1]);
        free(got);
        if (r->n_options) {
            size_t best = 0;
            double best_ll = -INFINITY, ll;
            for (size_t k = 0; k < r->n_options; k++) {
                if (s_option_ll(&l, r, k, &ll) != 0) goto fail;
                if (ll > best_ll) best_ll = ll, best = k;
            }
            mc_n++;
            mc_ok += best == (size_t)r->answer;
        }
    }
    if (a->adapter) printf("adapter: %s\n", a->adapter);
    printf("n: %zu\nloss: %.6f\nperplexity: %.4f\ntokens: %zu\nexact_match: %.6f\n"
           "rouge_l: %.6f\n", n, loss, exp(loss), toks, em / (double)n, rouge / (double)n);
    if (mc_n) printf("mc_accuracy: %.6f\nmc_n: %zu\n", (double)mc_ok / (double)mc_n, mc_n);
    status = 0;
fail:
    if (status != 0) cli_fail(PROG);
    free(lg);
    free(tr);
    free(va);
    s_data_free(&d);
    s_llm_close(&l);
    return status;
}
