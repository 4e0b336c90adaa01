/* Node-side round participation (see round.h). One round at a time: a RoundStart with a
 * higher id replaces the one in progress (the aggregator restarted or gave up on it), an
 * Error UNKNOWN_ROUND for the current round ends it. Every failure wipes the secagg client
 * (its secrets) and leaves the node ready for the next round. Round ids only grow: the
 * highest one this node took to its ledger is kept in STATE_DIR/last_round, and a RoundStart
 * at or below it (a replay, which the ledger would charge again) is declined, restarts
 * included. */
#include "node/round.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "common/compress.h"
#include "common/dp.h"
#include "common/atomic_file.h"
#include "common/error.h"
#include "common/fedround.h"
#include "common/log.h"
#include "common/secagg.h"
#include "common/service.h"
#include "common/version_store.h"

#define RESIDUAL_MAGIC "MFLRES01"
#define LAST_ROUND_MAX 32 /* bytes of STATE_DIR/last_round: a decimal id and a newline */

struct node_round_t {
    char node_id[WIRE_NODE_ID_MAX + 1];
    char state_dir[1024];
    char residual_path[1100];
    char last_round_path[1100];
    uint64_t last_round;      /* highest round id taken to the ledger (STATE_DIR/last_round) */
    uint8_t identity_sk[64], identity_pk[32], agg_pk[32];
    ledger_t *ledger;
    node_round_policy_t policy; /* privacy.require_dp, min_noise_multiplier, max_* */
    bool distributed_noise;   /* privacy.distributed_noise */
    uint32_t colluders;       /* privacy.distributed_colluders */
    dp_rng_t *noise_rng;      /* ring noise (OS CSPRNG), created on first use */
    round_trainer_t trainer;
    wire_client_t *client;
    vs_store_t *vs;
    float *residual;          /* error-feedback residual (n_residual floats) */
    size_t n_residual;
    uint64_t contributed, declined;
    metrics_t *metrics;       /* NULL when metrics are off */
    uint64_t m_round;         /* round joined last, until its version arrives */
    int64_t m_joined_ms;
    uint64_t unmasked_round;  /* the last round whose UnmaskRequest this node answered or
                               * refused: a node reveals shares once per round, so a second
                               * request cannot ask for the other share of a peer */

    /* the round in progress */
    uint64_t round_id;
    bool secure;
    char **roster;
    size_t n_roster;
    uint32_t self_idx;
    secagg_client_t *sc;
    round_hparams_t hp;
    Medfl__Compression comp;  /* copy of the round's compression settings */
    fed_encoding_t enc;
    compress_config_t cc;
    double weight;
    double headroom;          /* > 0: the round sized its ring for distributed noise */
    double shared_std;        /* > 0: this node adds this much noise in the ring (update units) */
    uint64_t base_version;
    float *base;              /* the base version's vector */
    size_t numel;
    uint64_t m;
};

/* ---- residual checkpoint ---- */

static void s_residual_load(node_round_t *self)
{
    FILE *f = fopen(self->residual_path, "rb");
    if (!f) return;
    char magic[8];
    uint64_t n = 0;
    if (fread(magic, 1, 8, f) == 8 && memcmp(magic, RESIDUAL_MAGIC, 8) == 0 &&
        fread(&n, sizeof n, 1, f) == 1 && n > 0 && n < ((uint64_t)1 << 31)) {
        float *r = malloc(n * sizeof *r);
        if (r && fread(r, sizeof *r, n, f) == n) {
            bool finite = true;
            for (uint64_t i = 0; i < n; i++) finite = finite && isfinite(r[i]);
            if (finite) {
                self->residual = r;
                self->n_residual = n;
                r = NULL;
                LOG_INFO(TRAIN, "compression residual of %" PRIu64 " values restored from %s", n,
                         self->residual_path);
            }
        }
        free(r);
    }
    if (!self->residual) LOG_WARN(TRAIN, "%s: not a valid residual checkpoint: ignored",
                                  self->residual_path);
    fclose(f);
}

/* atomic_file: a kill leaves the old or the new residual, never half of one. */
static int s_residual_save(node_round_t *self)
{
    uint64_t n = self->n_residual;
    atomic_file_t *f = atomic_file_new(self->residual_path, 0600);
    if (!f || atomic_file_write(f, RESIDUAL_MAGIC, 8) != 0 ||
        atomic_file_write(f, &n, sizeof n) != 0 ||
        atomic_file_write(f, self->residual, n * sizeof *self->residual) != 0 ||
        atomic_file_commit(&f) != 0) {
        atomic_file_destroy(&f);
        return medfl_error_prefix("%s: cannot write the residual checkpoint: ",
                                  self->residual_path);
    }
    return 0;
}

/* ---- the last round taken ---- */

/* 0 with last_round set (0 when the file does not exist: a node that never took a round);
 * -1 naming the file when it is unreadable or not a round id. */
static int s_last_round_load(node_round_t *self)
{
    FILE *f = fopen(self->last_round_path, "r");
    if (!f) {
        if (errno == ENOENT) return 0;
        return medfl_error_set(MEDFL_EIO, "%s: %s", self->last_round_path, strerror(errno));
    }
    char buf[LAST_ROUND_MAX + 1];
    size_t n = fread(buf, 1, LAST_ROUND_MAX, f);
    bool more = fgetc(f) != EOF;
    fclose(f);
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (more || n == 0 || buf[0] < '0' || buf[0] > '9' || errno != 0 || strcmp(end, "\n") != 0)
        return medfl_error_set(MEDFL_EFORMAT, "%s: not a round id (a decimal number and a "
                               "newline); it guards against replayed rounds, restore it rather "
                               "than delete it", self->last_round_path);
    self->last_round = v;
    return 0;
}

/* atomic_file: after a crash the file holds the old id or the new one. */
static int s_last_round_save(node_round_t *self, uint64_t rid)
{
    char text[LAST_ROUND_MAX];
    int len = snprintf(text, sizeof text, "%" PRIu64 "\n", rid);
    atomic_file_t *f = atomic_file_new(self->last_round_path, 0600);
    if (!f || atomic_file_write(f, text, (size_t)len) != 0 || atomic_file_commit(&f) != 0) {
        atomic_file_destroy(&f);
        return medfl_error_prefix("%s: ", self->last_round_path);
    }
    self->last_round = rid;
    return 0;
}

/* ---- metrics hooks (common/metrics; no-ops when metrics are off) ---- */

static void s_metrics_joined(node_round_t *self, uint64_t rid)
{
    self->m_round = rid;
    self->m_joined_ms = service_now_ms();
    metrics_add(self->metrics, "rounds_joined_total", NULL, 1);
}

/* The round this node joined last is complete for it when the version it produced arrives. */
static void s_metrics_version(node_round_t *self, uint64_t rid, uint64_t v)
{
    metrics_set(self->metrics, "model_version", NULL, (double)v);
    if (!rid || rid != self->m_round) return;
    metrics_add(self->metrics, "rounds_completed_total", NULL, 1);
    metrics_set(self->metrics, "last_round_duration_seconds", NULL,
                (double)(service_now_ms() - self->m_joined_ms) / 1000.0);
    self->m_round = 0;
}

/* processed: examples that went through the model in this round's steps (not the weight the
 * update carries, which is the size of the training split). */
static void s_metrics_trained(node_round_t *self, uint64_t processed, int64_t t0_ms)
{
    double s = (double)(service_now_ms() - t0_ms) / 1000.0;
    metrics_add(self->metrics, "training_examples_total", NULL, (double)processed);
    if (s > 0) metrics_set(self->metrics, "training_examples_per_second", NULL, processed / s);
}

/* ---- round state ---- */

static void s_end_round(node_round_t *self)
{
    secagg_client_destroy(&self->sc);
    for (size_t i = 0; i < self->n_roster; i++) free(self->roster[i]);
    free(self->roster);
    self->roster = NULL;
    self->n_roster = 0;
    free(self->base);
    self->base = NULL;
    self->round_id = 0;
}

static void s_tick(void *ctx)
{
    (void)wire_client_tick((wire_client_t *)ctx);
}

static int s_send(node_round_t *self, Medfl__MsgType type, const ProtobufCMessage *body,
                  void *bulk, size_t bulk_len, wire_free_fn *free_fn)
{
    if (wire_client_send(self->client, type, self->round_id, body, bulk, bulk_len, free_fn, NULL) !=
        0) {
        LOG_WARN(NET, "round %" PRIu64 ": cannot send %s: %s", self->round_id,
                 wire_type_name(type), medfl_error_message());
        return -1;
    }
    return 0;
}

static void s_decline(node_round_t *self, uint64_t round_id, Medfl__DeclineReason reason,
                      const char *text)
{
    Medfl__Decline d = MEDFL__DECLINE__INIT;
    d.round_id = round_id;
    d.reason = reason;
    char t[1000];
    snprintf(t, sizeof t, "%s", text);
    d.text = t;
    LOG_WARN(NET, "declining round %" PRIu64 ": %s", round_id, text);
    if (wire_client_send(self->client, MEDFL__MSG_TYPE__MSG_DECLINE, round_id, &d.base, NULL, 0,
                         NULL, NULL) != 0)
        LOG_WARN(NET, "cannot send decline: %s", medfl_error_message());
    self->declined++;
    metrics_add(self->metrics, "rounds_declined_total", NULL, 1);
}

static void s_free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Trains, encodes and sends this node's contribution: Update (plain) or MaskedInput. */
static int s_train_and_send(node_round_t *self)
{
    size_t n = self->numel;
    float *delta = calloc(n ? n : 1, sizeof *delta);
    uint32_t *ring = NULL;
    uint8_t *payload = NULL, *masked = NULL;
    compress_t *comp = NULL;
    compress_round_t *cr = NULL;
    size_t payload_len = 0, masked_len = 0;
    uint64_t n_examples = 0;
    int rc = -1;
    if (!delta) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory for the update");
        goto done;
    }
    LOG_INFO(TRAIN, "round %" PRIu64 ": training %u local steps from version %" PRIu64 "%s",
             self->round_id, self->hp.local_steps, self->base_version,
             self->hp.dp ? " with DP-SGD" : "");
    int64_t t0_ms = service_now_ms();
    if (self->trainer.train(self->trainer.ctx, self->base, n, &self->hp, delta, &n_examples) != 0)
        goto done;
    s_metrics_trained(self, self->trainer.examples_processed
                                ? self->trainer.examples_processed(self->trainer.ctx)
                                : n_examples, t0_ms);
    bool ef = self->enc != FED_DENSE && self->cc.error_feedback;
    if (self->headroom > 0 && !self->noise_rng && !(self->noise_rng = dp_rng_new())) goto done;
    if (self->enc != FED_DENSE && !ef) {
        comp = compress_new(&self->cc, (uint32_t)n, NULL);
        if (!comp) goto done;
    } else if (self->enc != FED_DENSE) {
        if (self->n_residual != n) {
            free(self->residual);
            self->residual = calloc(n, sizeof *self->residual);
            self->n_residual = self->residual ? n : 0;
            if (!self->residual) goto done;
        }
        comp = compress_new(&self->cc, (uint32_t)n, NULL);
        if (!comp || compress_residual_set(comp, self->residual, (uint32_t)n) != 0) goto done;
    }
    if (self->enc == FED_TOPK) {
        size_t cap = compress_plain_max_bytes(comp);
        payload = malloc(cap);
        if (!payload || compress_plain_encode(comp, delta, payload, cap, &payload_len) != 0)
            goto done;
    } else if (self->enc == FED_LEVELS) {
        uint8_t seed32[COMPRESS_SEED_BYTES];
        fed_compress_seed(self->comp.seed, seed32);
        cr = compress_round_new(&self->cc, (uint32_t)n, seed32);
        if (!cr) goto done;
        ring = calloc(compress_round_k(cr), sizeof *ring);
        if (!ring || compress_secagg_encode(comp, cr, delta, (float)self->weight, ring) != 0)
            goto done;
        /* Every node adds the offset H; sharing nodes add their noise with it. */
        if (self->headroom > 0 &&
            compress_secagg_add_noise(cr, self->noise_rng,
                                      self->shared_std / compress_round_step(cr), ring) != 0)
            goto done;
    } else if (self->secure) {
        secagg_fixed_t fx;
        ring = calloc(n ? n : 1, sizeof *ring);
        if (!ring ||
            fed_fixed_params_dp((uint32_t)self->n_roster, self->comp.clip, self->headroom,
                                &fx) != 0 ||
            secagg_encode(&fx, delta, n, self->weight, ring) != 0)
            goto done;
        if (self->shared_std > 0 &&
            fed_fixed_add_noise(&fx, self->noise_rng, self->shared_std, self->headroom, ring, n) !=
                0)
            goto done;
    }
    if (comp && ef) {
        memcpy(self->residual, compress_residual(comp), n * sizeof *self->residual);
        if (s_residual_save(self) != 0)
            LOG_WARN(TRAIN, "%s", medfl_error_message()); /* training result still valid */
    }

    if (!self->secure) {
        Medfl__Update u = MEDFL__UPDATE__INIT;
        u.base_version = self->base_version;
        u.n_examples = n_examples;
        u.weight = self->weight;
        u.compression = &self->comp;
        void *bulk;
        size_t bulk_len;
        if (self->enc == FED_DENSE) {
            u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_F32;
            u.n_elements = n;
            bulk = delta, bulk_len = n * sizeof *delta;
            delta = NULL;
        } else {
            if (self->enc == FED_LEVELS) {
                size_t cap = compress_round_payload_bytes(cr);
                payload = malloc(cap);
                if (!payload || compress_secagg_pack(cr, ring, payload, cap, &payload_len) != 0)
                    goto done;
            }
            u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_I8;
            u.n_elements = payload_len;
            bulk = payload, bulk_len = payload_len;
            payload = NULL;
        }
        if (s_send(self, MEDFL__MSG_TYPE__MSG_UPDATE, &u.base, bulk, bulk_len, s_free_buf) != 0)
            goto done;
        LOG_INFO(NET, "round %" PRIu64 ": update sent (%zu B, %" PRIu64 " examples)", self->round_id,
                 bulk_len, n_examples);
    } else {
        uint64_t m = self->m;
        uint32_t check = fed_checksum(ring, m);
        if (secagg_client_masked_input(self->sc, ring, &masked, &masked_len) != 0) goto done;
        uint32_t *y = calloc(m ? m : 1, sizeof *y);
        if (!y || fed_masked_values(masked, masked_len, m, y) != 0) {
            free(y);
            goto done;
        }
        Medfl__MaskedInputHeader h = MEDFL__MASKED_INPUT_HEADER__INIT;
        h.n_examples = n_examples;
        h.compression = &self->comp;
        void *bulk;
        size_t bulk_len;
        if (self->enc == FED_LEVELS) {
            size_t cap = compress_round_payload_bytes(cr);
            payload = malloc(cap);
            if (!payload || compress_secagg_pack(cr, y, payload, cap, &payload_len) != 0) {
                free(y);
                goto done;
            }
            free(y);
            h.dtype = MEDFL__TENSOR_DTYPE__DTYPE_I8;
            h.n_elements = payload_len;
            bulk = payload, bulk_len = payload_len;
            payload = NULL;
        } else {
            uint8_t *le = (uint8_t *)y; /* rewritten in place as little-endian bytes */
            for (uint64_t i = 0; i < m; i++) {
                uint32_t v = y[i];
                le[4 * i] = (uint8_t)v, le[4 * i + 1] = (uint8_t)(v >> 8);
                le[4 * i + 2] = (uint8_t)(v >> 16), le[4 * i + 3] = (uint8_t)(v >> 24);
            }
            h.dtype = MEDFL__TENSOR_DTYPE__DTYPE_U32;
            h.n_elements = m;
            bulk = y, bulk_len = m * 4;
        }
        if (s_send(self, MEDFL__MSG_TYPE__MSG_MASKED_INPUT, &h.base, bulk, bulk_len, s_free_buf) !=
            0)
            goto done;
        LOG_INFO(NET, "round %" PRIu64 ": masked input sent (%zu B, input checksum %" PRIu32 ")",
                 self->round_id, bulk_len, check);
    }
    self->contributed++;
    rc = 0;
done:
    if (rc != 0) {
        LOG_ERROR(TRAIN, "round %" PRIu64 ": no update sent: %s", self->round_id,
                  medfl_error_message());
        self->m_round = 0; /* its version will not hold this node's update */
    }
    free(delta);
    free(ring);
    free(payload);
    secagg_buf_free(masked, masked_len);
    compress_destroy(&comp);
    compress_round_destroy(&cr);
    return rc;
}

/* Whether this node may add only its share of the round's DP noise (docs/privacy.md §10),
 * and how much: 0 with *node_std and the sigma its ledger charges, -1 with the reason. */
static int s_shared_noise(node_round_t *self, const Medfl__RoundStart *rs,
                          const round_hparams_t *hp, fed_encoding_t enc,
                          const compress_config_t *cc, size_t numel, double *node_std,
                          double *sigma_acc, char *why, size_t why_len)
{
    const Medfl__SecAggParams *sa = rs->secagg;
    double scale = 0;
    if (!self->distributed_noise) {
        snprintf(why, why_len, "privacy.distributed_noise is off");
        return -1;
    }
    uint32_t t = sa ? sa->threshold : 0;
    if (t < self->colluders + 2) {
        snprintf(why, why_len, "threshold %u minus privacy.distributed_colluders %u leaves fewer "
                 "than 2 contributors", t, self->colluders);
        return -1;
    }
    if (!self->trainer.linear_step) {
        snprintf(why, why_len, "this trainer's update is not linear in its gradients");
        return -1;
    }
    if (self->trainer.linear_step(self->trainer.ctx, hp, &scale) != 0) {
        snprintf(why, why_len, "%s", medfl_error_message());
        return -1;
    }
    /* What encoding may add to the difference two neighbouring datasets make: deterministic
     * fixed-point rounding moves each coordinate by < 1 unit, stochastic levels by < 1
     * step in the coupling of the two runs' rounding draws; over the coordinates sent. */
    double rounding;
    if (enc == FED_LEVELS) {
        rounding = sqrt((double)compress_config_k(cc, (uint32_t)numel)) * compress_config_step(cc);
    } else {
        secagg_fixed_t fx;
        if (!rs->compression) {
            snprintf(why, why_len, "the round start carries no compression settings (clip)");
            return -1;
        }
        if (fed_fixed_params_dp((uint32_t)sa->n_participants, rs->compression->clip,
                                fed_dp_headroom(rs->dp, hp->lr, true), &fx) != 0) {
            snprintf(why, why_len, "%s", medfl_error_message());
            return -1;
        }
        rounding = sqrt((double)numel) / fx.scale;
    }
    /* 1e-5: float arithmetic of the step against the exact linear map. */
    dp_shared_noise_t in = {
        .sigma = hp->noise_multiplier,
        .clip = hp->clip_norm,
        .lr_over_q = hp->lr / hp->sample_rate,
        .record_weight_max = rs->dp->record_weight_max,
        .honest = t - self->colluders,
        .sensitivity = hp->clip_norm * rs->weight * scale * (1 + 1e-5),
        .rounding = rounding,
    };
    if (dp_shared_noise_plan(&in, node_std, sigma_acc) != 0) {
        snprintf(why, why_len, "%s", medfl_error_message());
        return -1;
    }
    /* Coarse encodings make rounding, not data, the sensitivity: sharing would then cost
     * this node more epsilon than adding all of sigma itself. */
    if (*sigma_acc < 0.8 * hp->noise_multiplier) {
        snprintf(why, why_len, "the encoding's rounding (L2 up to %.3g against a sensitivity of "
                 "%.3g) would leave sigma %.3g: raise compression.bits (16 suits) or lower "
                 "compression.clip", rounding, in.sensitivity, *sigma_acc);
        return -1;
    }
    return 0;
}

void node_round_policy_default(node_round_policy_t *p)
{
    *p = (node_round_policy_t){.require_dp = true, .min_noise_multiplier = 0.5,
                               .max_sample_rate = 1.0, .max_clip_norm = 0};
}

/* The node's privacy policy against the round's DP parameters as this node would train them
 * (sigma_acc: the sigma its ledger would charge, less than the round's sigma when it adds
 * only a share in the ring). 0 inside the policy, -1 with the reason. The numbers named are
 * round parameters, never data. */
static int s_policy_check(const node_round_t *self, const round_hparams_t *hp, double sigma_acc,
                          char *why, size_t why_len)
{
    const node_round_policy_t *p = &self->policy;
    if (!hp->dp) {
        if (!p->require_dp) return 0;
        snprintf(why, why_len, "privacy policy: the round asks for no DP-SGD and this node's "
                 "privacy.require_dp is on: it sends DP-noised updates only");
        return -1;
    }
    if (!isfinite(sigma_acc) || !(sigma_acc >= p->min_noise_multiplier))
        snprintf(why, why_len, "privacy policy: the round's noise multiplier %g (accounted "
                 "sigma %g) is below this node's privacy.min_noise_multiplier %g",
                 hp->noise_multiplier, sigma_acc, p->min_noise_multiplier);
    else if (!(hp->sample_rate > 0 && hp->sample_rate <= p->max_sample_rate))
        snprintf(why, why_len, "privacy policy: the round's sample rate %g is not in (0, %g] "
                 "(privacy.max_sample_rate)", hp->sample_rate, p->max_sample_rate);
    else if (!isfinite(hp->clip_norm) || !(hp->clip_norm > 0) ||
             (p->max_clip_norm > 0 && hp->clip_norm > p->max_clip_norm))
        snprintf(why, why_len, "privacy policy: the round's clip norm %g is not in (0, %g] "
                 "(privacy.max_clip_norm)", hp->clip_norm,
                 p->max_clip_norm > 0 ? p->max_clip_norm : INFINITY);
    else if (self->ledger && !(hp->delta <= ledger_delta(self->ledger)))
        snprintf(why, why_len, "privacy policy: the round states delta %g, above this node's "
                 "privacy.delta %g", hp->delta, ledger_delta(self->ledger));
    else
        return 0;
    return -1;
}

/* The policy, then the ledger, decide before anything is trained, and the ledger records
 * every decision (also a policy decline: the privacy officer's audit shows what the
 * aggregator asked for). 0: train; -1: declined (Decline sent). */
static int s_admit(node_round_t *self, uint64_t rid, const round_hparams_t *hp, double sigma_acc)
{
    char reason[LEDGER_REASON_MAX] = "";
    if (!self->ledger) {
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET,
                  "no privacy ledger configured");
        return -1;
    }
    if (s_policy_check(self, hp, sigma_acc, reason, sizeof reason) != 0) {
        /* Hostile values cannot be stored as numbers; the reason still names them. */
        bool ok = hp->dp && hp->sample_rate >= 0 && hp->sample_rate <= 1 && sigma_acc >= 0 &&
                  isfinite(sigma_acc);
        if (ledger_record_declined(self->ledger, (int64_t)rid, ok ? hp->sample_rate : 1.0,
                                   ok ? sigma_acc : 0.0, hp->local_steps, reason) != 0)
            LOG_ERROR(PRIVACY, "round %" PRIu64 ": the policy decline is not in the ledger: %s",
                      rid, medfl_error_message());
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_PRIVACY_POLICY, reason);
        return -1;
    }
    if (!hp->dp) {
        snprintf(reason, sizeof reason, "no DP: the round asks for no DP-SGD and this node's "
                 "privacy.require_dp is off; the update leaves without noise, no epsilon bounds it");
        if (ledger_record_no_dp(self->ledger, (int64_t)rid, hp->local_steps, reason) == 0) {
            metrics_set(self->metrics, "privacy_epsilon_spent", NULL, INFINITY);
            return 0;
        }
        snprintf(reason, sizeof reason, "ledger: %s", medfl_error_message());
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET, reason);
        return -1;
    }
    double eps = 0;
    int adm = ledger_admit_round(self->ledger, (int64_t)rid, hp->sample_rate, sigma_acc,
                                 hp->local_steps, &eps, reason, sizeof reason);
    if (adm < 0) snprintf(reason, sizeof reason, "ledger: %s", medfl_error_message());
    if (adm != 1) {
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET, reason);
        return -1;
    }
    LOG_INFO(PRIVACY, "round %" PRIu64 " admitted by the privacy ledger: epsilon after it %.4f",
             rid, eps);
    metrics_set(self->metrics, "privacy_epsilon_spent", NULL, eps);
    return 0;
}

static void s_on_round_start(node_round_t *self, const wire_msg_t *msg)
{
    const Medfl__RoundStart *rs = msg->body.round_start;
    uint64_t rid = msg->round_id;
    if (self->round_id && rid <= self->round_id) {
        LOG_WARN(NET, "RoundStart for round %" PRIu64 " while in round %" PRIu64 ": ignored", rid,
                 self->round_id);
        return;
    }
    /* Round ids only grow (the aggregator journals every id it used): an id at or below
     * the last this node took is a replay, whose fresh secrets leak nothing but which the
     * ledger would charge again. */
    if (rid <= self->last_round) {
        char why[200];
        snprintf(why, sizeof why, "round %" PRIu64 " is not after round %" PRIu64 ", the last "
                 "this node took part in (%s): a replayed round start, nothing trained or "
                 "charged", rid, self->last_round, self->last_round_path);
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_UNSPECIFIED, why);
        return;
    }
    if (self->round_id) {
        LOG_WARN(NET, "round %" PRIu64 " abandoned: the aggregator started round %" PRIu64,
                 self->round_id, rid);
        s_end_round(self);
    }
    const Medfl__SecAggParams *sa = rs->secagg;
    if (!sa || sa->n_participants == 0) {
        LOG_WARN(NET, "RoundStart %" PRIu64 " without participants: ignored", rid);
        return;
    }
    int idx = fed_roster_index(sa->participants, sa->n_participants, self->node_id);
    if (idx < 0) {
        LOG_WARN(NET, "RoundStart %" PRIu64 " does not list this node: ignored", rid);
        return;
    }
    /* Base version: held, and the same bytes the aggregator means. */
    char text[512];
    vs_manifest_t *bm = vs_store_has(self->vs, rs->base_version)
                            ? vs_store_manifest(self->vs, rs->base_version)
                            : NULL;
    if (!bm || rs->base_hash.len != VS_HASH_BYTES ||
        sodium_memcmp(bm->hash, rs->base_hash.data, VS_HASH_BYTES) != 0) {
        snprintf(text, sizeof text, "base version %" PRIu64 " %s (this node holds up to %" PRIu64 ")",
                 rs->base_version, bm ? "has another hash here" : "is not installed here",
                 vs_store_latest(self->vs));
        vs_manifest_destroy(&bm);
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_BASE_MISMATCH, text);
        return;
    }
    vs_manifest_destroy(&bm);
    float *base = NULL;
    vs_manifest_t *m = NULL;
    /* the base and its link to the versions verified at earlier rounds (the whole chain
     * at the first round after start) */
    if (vs_store_verify_cached(self->vs, rs->base_version, self->agg_pk, &m, &base) != 0) {
        snprintf(text, sizeof text, "base version %" PRIu64 " does not verify: %s",
                 rs->base_version, medfl_error_message());
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_BASE_MISMATCH, text);
        return;
    }
    size_t numel = m->numel;
    if (self->trainer.check_layout && self->trainer.check_layout(self->trainer.ctx, m) != 0) {
        snprintf(text, sizeof text, "base version %" PRIu64 ": %s", rs->base_version,
                 medfl_error_message());
        vs_manifest_destroy(&m);
        free(base);
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_BASE_MISMATCH, text);
        return;
    }
    vs_manifest_destroy(&m);

    bool secure = sa->enabled;
    /* Before the ledger charges anything: a threshold that is no strict majority of a
     * neighbourhood lets an active aggregator unmask one node (docs/secure-aggregation.md). */
    if (secure && secagg_threshold_check(sa->neighbours ? sa->neighbours
                                                        : (uint32_t)sa->n_participants - 1,
                                         sa->threshold) != 0) {
        snprintf(text, sizeof text, "secure aggregation refused: %s", medfl_error_message());
        free(base);
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_UNSPECIFIED, text);
        return;
    }
    fed_encoding_t enc;
    compress_config_t cc;
    if (fed_compression(rs->compression, secure, (uint32_t)numel, &enc, &cc) != 0) {
        snprintf(text, sizeof text, "%s", medfl_error_message());
        free(base);
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_UNSPECIFIED, text);
        return;
    }
    const Medfl__Hyperparams *h = rs->hyperparams;
    const Medfl__DpParams *dp = rs->dp;
    round_hparams_t hp = {0};
    hp.round_id = rid;
    hp.lr = h->lr;
    hp.local_steps = h->local_steps ? h->local_steps : 1;
    hp.batch_size = h->batch_size; /* 0 = not sent: the trainer uses its own */
    hp.max_seq_len = h->max_seq_len;
    hp.dp = dp && dp->enabled;
    if (hp.dp) {
        hp.noise_multiplier = dp->noise_multiplier;
        hp.clip_norm = dp->clip_norm;
        hp.sample_rate = dp->sample_rate;
        hp.delta = dp->delta;
    }
    hp.tick = s_tick;
    hp.tick_ctx = self->client;
    hp.should_stop = service_stop_requested;

    /* Distributed noise: the ring is sized for it whenever the round offers it (so every
     * node encodes alike); this node adds only its share when its own conditions hold. */
    double headroom = fed_dp_headroom(dp, hp.lr, secure), shared_std = 0;
    double sigma_acc = hp.noise_multiplier;
    if (headroom > 0) {
        if (fed_dp_ring(headroom, &cc) != 0) {
            snprintf(text, sizeof text, "%s", medfl_error_message());
            free(base);
            s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_UNSPECIFIED, text);
            return;
        }
        char why[400] = "";
        int shared = s_shared_noise(self, rs, &hp, enc, &cc, numel, &shared_std, &sigma_acc, why,
                                    sizeof why);
        /* The policy's floor is on the accounted sigma: a share plan below it falls back to
         * all of sigma here, which the floor then checks like any round. */
        if (shared == 0 && !(sigma_acc >= self->policy.min_noise_multiplier)) {
            snprintf(why, sizeof why, "its accounted sigma %.6g would be below this node's "
                     "privacy.min_noise_multiplier %g", sigma_acc,
                     self->policy.min_noise_multiplier);
            shared = -1;
        }
        if (shared == 0) {
            LOG_INFO(PRIVACY, "round %" PRIu64 ": distributed noise: this node adds std %.4g in "
                     "the ring (sigma %g split over %u honest contributors); accounted sigma "
                     "%.4f", rid, shared_std, hp.noise_multiplier,
                     sa->threshold - self->colluders, sigma_acc);
            hp.noise_multiplier = 0; /* the trainer clips and samples; the ring adds noise */
        } else {
            LOG_INFO(PRIVACY, "round %" PRIu64 " offers distributed noise; this node adds all of "
                     "sigma itself: %s", rid, why);
            shared_std = 0;
            sigma_acc = hp.noise_multiplier;
        }
    }

    /* Kept before the ledger sees the round: a crash between the two leaves a round this
     * node declines if replayed, never one the ledger charges twice. */
    if (s_last_round_save(self, rid) != 0) {
        snprintf(text, sizeof text, "cannot keep the round id: %s", medfl_error_message());
        free(base);
        s_decline(self, rid, MEDFL__DECLINE_REASON__DECLINE_UNSPECIFIED, text);
        return;
    }
    if (s_admit(self, rid, &hp, sigma_acc) != 0) {
        free(base);
        return;
    }

    self->round_id = rid;
    self->secure = secure;
    self->hp = hp;
    self->enc = enc;
    self->cc = cc;
    medfl__compression__init(&self->comp);
    if (rs->compression) {
        self->comp.scheme = rs->compression->scheme;
        self->comp.bits = rs->compression->bits;
        self->comp.k = rs->compression->k;
        self->comp.seed = rs->compression->seed;
        self->comp.clip = rs->compression->clip;
        self->comp.max_nodes = rs->compression->max_nodes;
    }
    self->weight = rs->weight;
    self->headroom = headroom;
    self->shared_std = shared_std;
    self->base_version = rs->base_version;
    self->base = base;
    self->numel = numel;
    self->self_idx = (uint32_t)idx;
    self->roster = calloc(sa->n_participants, sizeof *self->roster);
    if (!self->roster) goto fail;
    for (size_t i = 0; i < sa->n_participants; i++) {
        self->roster[i] = strdup(sa->participants[i]);
        if (!self->roster[i]) goto fail;
        self->n_roster = i + 1;
    }
    LOG_INFO(NET, "round %" PRIu64 ": joined (%s, %zu participants, weight %.4f, base version %"
             PRIu64 ")", rid, secure ? "secure aggregation" : "plain", sa->n_participants,
             self->weight, self->base_version);
    s_metrics_joined(self, rid);
    if (!secure) {
        s_train_and_send(self);
        s_end_round(self);
        return;
    }

    /* Secure: the roster's identity keys come with the round (pinned by the aggregator at
     * enrollment); ours must be among them as ours. */
    if (sa->n_identity_pks != sa->n_participants || sa->graph_seed.len != 32) {
        medfl_error_set(MEDFL_EPROTO, "RoundStart: secure round without identity keys / graph seed");
        goto fail;
    }
    if (sodium_memcmp(sa->identity_pks[idx].data, self->identity_pk, 32) != 0) {
        medfl_error_set(MEDFL_ECRYPTO, "RoundStart lists another identity key for this node");
        goto fail;
    }
    secagg_params_t sp;
    memset(&sp, 0, sizeof sp);
    sp.round_id = rid;
    sp.n = (uint32_t)sa->n_participants;
    sp.k = sa->neighbours;
    sp.t = sa->threshold;
    sp.m = sa->m;
    memcpy(sp.graph_seed, sa->graph_seed.data, 32);
    /* The round start exactly as received (nothing above modifies it): the context every
     * key signature of this round covers, so neighbours sent other parameters (another
     * threshold, record_weight_max, base...) and this node refuse each other's keys. */
    _Static_assert(SECAGG_CONTEXT_BYTES == WIRE_ROUND_CONTEXT_BYTES, "round context size");
    if (wire_round_context(rs, sp.context) != 0) goto fail;
    if (secagg_params_validate(&sp) != 0) goto fail;
    uint64_t want_m = enc == FED_LEVELS ? compress_config_k(&cc, (uint32_t)numel) : numel;
    if (sp.m != want_m) {
        medfl_error_set(MEDFL_EPROTO, "RoundStart: secagg m %" PRIu64 ", expected %" PRIu64, sp.m,
                        want_m);
        goto fail;
    }
    self->m = sp.m;
    uint8_t *pks = malloc(32 * sa->n_participants);
    if (!pks) goto fail;
    for (size_t i = 0; i < sa->n_participants; i++) memcpy(pks + 32 * i, sa->identity_pks[i].data, 32);
    self->sc = secagg_client_new(&sp, self->self_idx, self->identity_sk, pks);
    free(pks);
    if (!self->sc) goto fail;
    uint8_t *buf = NULL;
    size_t len = 0;
    Medfl__AdvertiseKeys ak;
    if (secagg_client_advertise(self->sc, &buf, &len) != 0) goto fail;
    int rc = fed_advertise_to_proto(buf, len, &ak);
    free(buf);
    if (rc != 0) goto fail;
    rc = s_send(self, MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS, &ak.base, NULL, 0, NULL);
    free(ak.c_pk.data);
    if (rc != 0) goto fail;
    return;
fail:
    LOG_ERROR(NET, "round %" PRIu64 ": leaving the round: %s", rid, medfl_error_message());
    s_end_round(self);
}

static void s_on_keys(node_round_t *self, const wire_msg_t *msg)
{
    uint8_t *in = NULL, *out = NULL;
    size_t in_len = 0, out_len = 0;
    Medfl__ShareKeys sk = MEDFL__SHARE_KEYS__INIT;
    if (fed_broadcast_from_proto(msg->body.keys_broadcast, self->round_id, self->roster,
                                 self->n_roster, &in, &in_len) != 0 ||
        secagg_client_handle_keys(self->sc, in, in_len, &out, &out_len) != 0 ||
        fed_shares_to_proto(SECAGG_MSG_SHARE_KEYS, out, out_len, self->roster, self->n_roster,
                            &sk.shares, &sk.n_shares) != 0 ||
        s_send(self, MEDFL__MSG_TYPE__MSG_SHARE_KEYS, &sk.base, NULL, 0, NULL) != 0) {
        LOG_ERROR(NET, "round %" PRIu64 ": keys phase failed, leaving the round: %s",
                  self->round_id, medfl_error_message());
        s_end_round(self);
    }
    fed_proto_free_shares(sk.shares, sk.n_shares);
    free(in);
    free(out);
}

static void s_on_shares(node_round_t *self, const wire_msg_t *msg)
{
    uint8_t *in = NULL;
    size_t in_len = 0;
    const Medfl__SharesDelivery *sd = msg->body.shares_delivery;
    if (fed_shares_from_proto(SECAGG_MSG_SHARES_DELIVERY, sd->shares, sd->n_shares, self->round_id,
                              self->self_idx, self->roster, self->n_roster, &in, &in_len) != 0 ||
        secagg_client_handle_shares(self->sc, in, in_len) != 0) {
        free(in);
        LOG_ERROR(NET, "round %" PRIu64 ": shares phase failed, leaving the round: %s",
                  self->round_id, medfl_error_message());
        s_end_round(self);
        return;
    }
    free(in);
    if (s_train_and_send(self) != 0) s_end_round(self);
}

static void s_on_survivors(node_round_t *self, const wire_msg_t *msg)
{
    uint8_t *in = NULL, *out = NULL;
    size_t in_len = 0, out_len = 0;
    Medfl__ConsistencySignature cs = MEDFL__CONSISTENCY_SIGNATURE__INIT;
    if (fed_survivors_from_proto(msg->body.consistency_check, self->round_id, self->roster,
                                 self->n_roster, &in, &in_len) != 0 ||
        secagg_client_sign_survivors(self->sc, in, in_len, &out, &out_len) != 0 ||
        fed_survivor_sig_to_proto(out, out_len, &cs) != 0 ||
        s_send(self, MEDFL__MSG_TYPE__MSG_CONSISTENCY_SIGNATURE, &cs.base, NULL, 0, NULL) != 0) {
        LOG_ERROR(CRYPTO, "round %" PRIu64 ": survivor set refused, leaving the round: %s",
                  self->round_id, medfl_error_message());
        s_end_round(self);
    } else {
        LOG_INFO(NET, "round %" PRIu64 ": survivor set of %zu nodes signed",
                 self->round_id, msg->body.consistency_check->n_survivors);
    }
    fed_proto_free_survivor_sig(&cs);
    free(in);
    free(out);
}

static void s_on_unmask(node_round_t *self, const wire_msg_t *msg)
{
    uint8_t *in = NULL, *out = NULL;
    size_t in_len = 0, out_len = 0;
    Medfl__UnmaskResponse ur = MEDFL__UNMASK_RESPONSE__INIT;
    self->unmasked_round = self->round_id;
    if (fed_unmask_req_from_proto(msg->body.unmask_request, self->round_id, self->roster,
                                  self->n_roster, &in, &in_len) != 0 ||
        secagg_client_handle_unmask(self->sc, in, in_len, &out, &out_len) != 0 ||
        fed_unmask_resp_to_proto(out, out_len, self->roster, self->n_roster, &ur) != 0 ||
        s_send(self, MEDFL__MSG_TYPE__MSG_UNMASK_RESPONSE, &ur.base, NULL, 0, NULL) != 0)
        LOG_ERROR(CRYPTO, "round %" PRIu64 ": unmask request refused, no share revealed: %s",
                  self->round_id, medfl_error_message());
    else
        LOG_INFO(NET, "round %" PRIu64 ": unmask response sent (%zu shares)", self->round_id,
                 ur.n_shares);
    fed_proto_free_unmask_resp(&ur);
    free(in);
    secagg_buf_free(out, out_len);
    s_end_round(self);
}

static void s_on_version(node_round_t *self, const wire_msg_t *msg)
{
    const Medfl__VersionAnnounce *va = msg->body.version_announce;
    uint64_t v = 0;
    if (!msg->bulk) {
        LOG_WARN(NET, "version %" PRIu64 " announced without its tensors: ignored", va->version);
        return;
    }
    if (vs_store_install(self->vs, msg->bulk, msg->bulk_len, self->agg_pk, &v) != 0) {
        LOG_ERROR(CRYPTO, "version %" PRIu64 " refused: %s", va->version, medfl_error_message());
        return;
    }
    if (v != va->version) {
        LOG_ERROR(CRYPTO, "announce names version %" PRIu64 " but carries version %" PRIu64,
                  va->version, v);
        return;
    }
    LOG_INFO(NET, "version %" PRIu64 " verified and installed", v);
    s_metrics_version(self, msg->round_id, v);
    if (msg->round_id == 0 || !self->trainer.evaluate) return; /* a catch-up copy */
    float *flat = NULL;
    vs_manifest_t *m = NULL;
    if (vs_store_load(self->vs, v, &m, &flat) != 0) {
        LOG_ERROR(NET, "version %" PRIu64 ": %s", v, medfl_error_message());
        return;
    }
    Medfl__EvalReport er = MEDFL__EVAL_REPORT__INIT;
    er.version = v;
    if (self->trainer.evaluate(self->trainer.ctx, flat, m->numel, &er.loss, &er.accuracy,
                               &er.macro_f1, &er.n) == 0) {
        if (wire_client_send(self->client, MEDFL__MSG_TYPE__MSG_EVAL_REPORT, msg->round_id,
                             &er.base, NULL, 0, NULL, NULL) != 0)
            LOG_WARN(NET, "cannot send the evaluation: %s", medfl_error_message());
        else
            LOG_INFO(TRAIN, "version %" PRIu64 ": validation loss %.4f accuracy %.4f macro-F1 %.4f "
                     "(n %" PRIu64 ")", v, er.loss, er.accuracy, er.macro_f1, er.n);
    } else {
        LOG_ERROR(TRAIN, "evaluating version %" PRIu64 ": %s", v, medfl_error_message());
    }
    vs_manifest_destroy(&m);
    free(flat);
}

int node_round_on_message(node_round_t *self, const wire_msg_t *msg)
{
    switch (msg->type) {
    case MEDFL__MSG_TYPE__MSG_ROUND_START:
        s_on_round_start(self, msg);
        return 1;
    case MEDFL__MSG_TYPE__MSG_VERSION_ANNOUNCE:
        s_on_version(self, msg);
        return 1;
    case MEDFL__MSG_TYPE__MSG_KEYS_BROADCAST:
    case MEDFL__MSG_TYPE__MSG_SHARES_DELIVERY:
    case MEDFL__MSG_TYPE__MSG_CONSISTENCY_CHECK:
    case MEDFL__MSG_TYPE__MSG_UNMASK_REQUEST:
        if (msg->type == MEDFL__MSG_TYPE__MSG_UNMASK_REQUEST && msg->round_id &&
            msg->round_id == self->unmasked_round) {
            LOG_ERROR(CRYPTO, "round %" PRIu64 ": second unmask request refused: this node "
                      "already answered the round's unmask request and reveals shares once "
                      "per round (a second request could ask for the other share of a peer)",
                      msg->round_id);
            return 1;
        }
        if (!self->round_id || msg->round_id != self->round_id || !self->sc) {
            LOG_WARN(NET, "%s for round %" PRIu64 " ignored: this node is not in it (current %" PRIu64
                     ")", wire_type_name(msg->type), msg->round_id, self->round_id);
            return 1;
        }
        if (msg->type == MEDFL__MSG_TYPE__MSG_KEYS_BROADCAST) s_on_keys(self, msg);
        else if (msg->type == MEDFL__MSG_TYPE__MSG_SHARES_DELIVERY) s_on_shares(self, msg);
        else if (msg->type == MEDFL__MSG_TYPE__MSG_CONSISTENCY_CHECK) s_on_survivors(self, msg);
        else s_on_unmask(self, msg);
        return 1;
    case MEDFL__MSG_TYPE__MSG_ERROR:
        if (msg->body.error->code == MEDFL__ERROR_CODE__ERROR_UNKNOWN_ROUND && msg->round_id &&
            msg->round_id == self->round_id) {
            LOG_WARN(NET, "round %" PRIu64 " ended by the aggregator: %s", self->round_id,
                     msg->body.error->text ? msg->body.error->text : "");
            s_end_round(self);
            return 1;
        }
        if (msg->body.error->code == MEDFL__ERROR_CODE__ERROR_UNKNOWN_ROUND) {
            LOG_WARN(NET, "the aggregator reports: %s",
                     msg->body.error->text ? msg->body.error->text : "");
            return 1;
        }
        return 0;
    default:
        return 0;
    }
}

node_round_t *node_round_new(const node_round_opts_t *opts, const round_trainer_t *trainer,
                             wire_client_t *client)
{
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "libsodium initialisation failed");
        return NULL;
    }
    node_round_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(self->node_id, sizeof self->node_id, "%s", opts->node_id);
    snprintf(self->state_dir, sizeof self->state_dir, "%s", opts->state_dir);
    snprintf(self->residual_path, sizeof self->residual_path, "%s/residual.bin", opts->state_dir);
    snprintf(self->last_round_path, sizeof self->last_round_path, "%s/last_round",
             opts->state_dir);
    memcpy(self->identity_sk, opts->identity_sk, 64);
    memcpy(self->identity_pk, opts->identity_pk, 32);
    memcpy(self->agg_pk, opts->agg_sign_pk, 32);
    self->ledger = opts->ledger;
    if (opts->policy)
        self->policy = *opts->policy;
    else
        node_round_policy_default(&self->policy);
    self->distributed_noise = opts->distributed_noise;
    self->colluders = opts->distributed_colluders;
    self->trainer = *trainer;
    self->client = client;
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/versions", opts->state_dir);
    self->vs = vs_store_open(dir, true);
    if (!self->vs) {
        node_round_destroy(&self);
        return NULL;
    }
    if (s_last_round_load(self) != 0) {
        node_round_destroy(&self);
        return NULL;
    }
    s_residual_load(self);
    return self;
}

void node_round_destroy(node_round_t **self_p)
{
    if (!self_p || !*self_p) return;
    node_round_t *self = *self_p;
    s_end_round(self);
    vs_store_destroy(&self->vs);
    free(self->residual);
    dp_rng_destroy(&self->noise_rng);
    sodium_memzero(self->identity_sk, sizeof self->identity_sk);
    free(self);
    *self_p = NULL;
}

void node_round_set_metrics(node_round_t *self, metrics_t *m) { self->metrics = m; }

int node_round_checkpoint(node_round_t *self)
{
    if (self->round_id)
        LOG_WARN(NET, "round %" PRIu64 ": left unfinished by the stop; the aggregator counts this "
                 "node as a dropout", self->round_id);
    s_end_round(self);
    if (!self->residual || !self->n_residual) return 0;
    if (s_residual_save(self) != 0) return -1;
    LOG_INFO(TRAIN, "checkpoint: compression residual of %zu values written to %s",
             self->n_residual, self->residual_path);
    return 0;
}

uint64_t node_round_model_version(const node_round_t *self) { return vs_store_latest(self->vs); }
uint64_t node_round_current(const node_round_t *self) { return self->round_id; }
uint64_t node_round_contributed(const node_round_t *self) { return self->contributed; }
uint64_t node_round_declined(const node_round_t *self) { return self->declined; }

/* ---- synthetic least-squares trainer --------------------------------------------------- */

struct synth_trainer_t {
    uint64_t seed;
    uint32_t n_train, n_valid, step_ms;
    size_t d;
    float *x, *y;   /* [n_train + n_valid, d], [n_train + n_valid] */
    dp_rng_t *rng;
};

static uint64_t s_splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double s_unit(uint64_t *s) /* uniform in [-1, 1) */
{
    return (double)(s_splitmix(s) >> 11) * 0x1.0p-52 - 1.0;
}

synth_trainer_t *synth_trainer_new(const char *node_id, uint32_t n_records, uint32_t step_ms)
{
    synth_trainer_t *s = calloc(1, sizeof *s);
    if (!s) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory");
        return NULL;
    }
    uint8_t h[8];
    crypto_generichash(h, sizeof h, (const uint8_t *)node_id, strlen(node_id), NULL, 0);
    for (int i = 0; i < 8; i++) s->seed |= (uint64_t)h[i] << (8 * i);
    s->n_train = n_records ? n_records : 1;
    s->n_valid = s->n_train / 4 ? s->n_train / 4 : 1;
    s->step_ms = step_ms;
    s->rng = dp_rng_new();
    if (!s->rng) {
        synth_trainer_destroy(&s);
        return NULL;
    }
    return s;
}

void synth_trainer_destroy(synth_trainer_t **self_p)
{
    if (!self_p || !*self_p) return;
    synth_trainer_t *s = *self_p;
    free(s->x);
    free(s->y);
    dp_rng_destroy(&s->rng);
    free(s);
    *self_p = NULL;
}

/* Data for dimension d: w*_i = 0.5 sin(i + 1), skew_u,i = 0.2 * unit(node seed). */
static int s_synth_data(synth_trainer_t *s, size_t d)
{
    if (s->x && s->d == d) return 0;
    free(s->x);
    free(s->y);
    size_t rows = (size_t)s->n_train + s->n_valid;
    s->x = malloc(rows * d * sizeof *s->x);
    s->y = malloc(rows * sizeof *s->y);
    if (!s->x || !s->y) return medfl_error_set(MEDFL_ENOMEM, "out of memory for synthetic data");
    s->d = d;
    uint64_t st = s->seed;
    double *w = malloc(d * sizeof *w);
    if (!w) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (size_t i = 0; i < d; i++) w[i] = 0.5 * sin((double)i + 1) + 0.2 * s_unit(&st);
    for (size_t r = 0; r < rows; r++) {
        double y = 0;
        for (size_t i = 0; i < d; i++) {
            float v = (float)s_unit(&st);
            s->x[r * d + i] = v;
            y += v * w[i];
        }
        s->y[r] = (float)y;
    }
    free(w);
    return 0;
}

static int s_synth_train(void *ctx, const float *global, size_t n, const round_hparams_t *hp,
                         float *delta, uint64_t *n_examples)
{
    synth_trainer_t *s = ctx;
    if (s_synth_data(s, n) != 0) return -1;
    float *w = malloc(n * sizeof *w);
    float *g = malloc(n * sizeof *g);
    float *rows = NULL;
    uint32_t *idx = NULL;
    int rc = -1;
    if (!w || !g) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory in the synthetic trainer");
        goto done;
    }
    memcpy(w, global, n * sizeof *w);
    uint64_t st = s->seed ^ (hp->round_id * 0x2545F4914F6CDD1Dull);
    *n_examples = 0;
    if (hp->dp) {
        rows = malloc((size_t)s->n_train * n * sizeof *rows);
        idx = malloc((size_t)s->n_train * sizeof *idx);
        if (!rows || !idx) {
            medfl_error_set(MEDFL_ENOMEM, "out of memory in the synthetic trainer");
            goto done;
        }
    }
    for (uint32_t step = 0; step < hp->local_steps; step++) {
        if (hp->dp) {
            size_t cnt = 0;
            if (dp_poisson_sample(s->rng, s->n_train, hp->sample_rate, idx, &cnt) != 0) goto done;
            for (size_t b = 0; b < cnt; b++) {
                const float *x = s->x + (size_t)idx[b] * n;
                double e = -s->y[idx[b]];
                for (size_t i = 0; i < n; i++) e += (double)x[i] * w[i];
                for (size_t i = 0; i < n; i++) rows[b * n + i] = (float)(e * x[i]);
            }
            if (dp_privatize(rows, cnt, n, hp->clip_norm, hp->noise_multiplier, s->rng, g, NULL) != 0)
                goto done;
            double expected = hp->sample_rate * s->n_train;
            for (size_t i = 0; i < n; i++) g[i] = (float)(g[i] / expected);
            *n_examples += cnt;
        } else {
            memset(g, 0, n * sizeof *g);
            uint32_t bs = hp->batch_size ? hp->batch_size : 1;
            if (bs > s->n_train) bs = s->n_train;
            for (uint32_t b = 0; b < bs; b++) {
                size_t r = s_splitmix(&st) % s->n_train;
                const float *x = s->x + r * n;
                double e = -s->y[r];
                for (size_t i = 0; i < n; i++) e += (double)x[i] * w[i];
                for (size_t i = 0; i < n; i++) g[i] += (float)(e * x[i] / bs);
            }
            *n_examples += bs;
        }
        for (size_t i = 0; i < n; i++) w[i] -= (float)(hp->lr * g[i]);
        if (s->step_ms) usleep(s->step_ms * 1000u);
        if (hp->tick) hp->tick(hp->tick_ctx);
        if (step + 1 < hp->local_steps && hp->should_stop && hp->should_stop()) {
            medfl_error_set(MEDFL_ESTATE, "training interrupted after %u of %u steps: the node "
                            "is stopping", step + 1, hp->local_steps);
            goto done;
        }
    }
    for (size_t i = 0; i < n; i++) delta[i] = w[i] - global[i];
    rc = 0;
done:
    free(w);
    free(g);
    free(rows);
    free(idx);
    return rc;
}

/* Loss = mean squared error on the validation rows; "accuracy" and macro-F1 treat the sign
 * of y as a two-class label, so the report has the same fields as a classifier's. */
static int s_synth_eval(void *ctx, const float *x, size_t n, double *loss, double *accuracy,
                        double *macro_f1, uint64_t *n_eval)
{
    synth_trainer_t *s = ctx;
    if (s_synth_data(s, n) != 0) return -1;
    double se = 0;
    uint64_t tp[2] = {0}, fp[2] = {0}, fn[2] = {0}, ok = 0;
    for (uint32_t r = s->n_train; r < s->n_train + s->n_valid; r++) {
        const float *row = s->x + (size_t)r * n;
        double p = 0;
        for (size_t i = 0; i < n; i++) p += (double)row[i] * x[i];
        double e = p - s->y[r];
        se += e * e;
        int truth = s->y[r] >= 0, pred = p >= 0;
        if (truth == pred) ok++, tp[truth]++;
        else fp[pred]++, fn[truth]++;
    }
    double f1 = 0;
    for (int c = 0; c < 2; c++) {
        double denom = 2.0 * tp[c] + fp[c] + fn[c];
        f1 += denom > 0 ? 2.0 * tp[c] / denom : 0;
    }
    *loss = se / s->n_valid;
    *accuracy = (double)ok / s->n_valid;
    *macro_f1 = f1 / 2;
    *n_eval = s->n_valid;
    return 0;
}

void synth_trainer_bind(synth_trainer_t *s, round_trainer_t *t)
{
    memset(t, 0, sizeof *t); /* every optional callback absent (callers pass stack memory) */
    t->ctx = s;
    t->train = s_synth_train;
    t->evaluate = s_synth_eval;
}
