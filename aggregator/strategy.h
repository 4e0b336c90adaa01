/* Server steps and per-node contribution weights of the aggregator.
 *
 * Under secure aggregation the aggregator never sees one node's update: it learns only
 * S = sum_u w_u * delta_u (each node scales its delta by its public weight w_u before
 * masking) and the survivors' W = sum_u w_u. So the server step takes (S, W), never a list
 * of updates:
 *   FedAvg : x <- x + lr * S / W                               (lr = 1: plain FedAvg)
 *   FedAdam: g = S / W; m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
 *            x <- x + lr * m / (sqrt(v) + tau)       (Reddi et al. 2021, Algorithm 2)
 * The delta is (local model - global model), i.e. a descent direction, hence "+".
 * FedAdam's m and v are state that must survive restarts and follow rollbacks: they are
 * saved per version (strategy_state_path) with temp + fsync + rename.
 *
 * Contribution weights (docs/contribution-weighting.md):
 *   size_u    = sqrt(n_u)                              (damped sample count)
 *   z_u       = (q_u - median q) / max(1.4826 * MAD q, spread_floor * |median q|)
 *                                                      (robust z of the reported quality)
 *   quality_u = 1 if |z_u| <= z0, else exp(-(|z_u| - z0))   (1 when nothing reported)
 *   rel_u     = reliability EMA in [0, 1] of "completed when selected"
 *   raw_u     = size_u * quality_u * rel_u * loo_u
 *   w_u       = clamp(k * raw_u, w_min, w_max), k chosen so that sum w_u = 1
 *   w_min     = floor_frac / N,   w_max = max(cap, 1 / N)
 * so weights are normalised, nobody is silenced (w_min > 0), and no node exceeds the cap. */
#ifndef MEDFL_STRATEGY_H
#define MEDFL_STRATEGY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { STRATEGY_FEDAVG = 0, STRATEGY_FEDADAM } strategy_kind_t;

typedef struct {
    strategy_kind_t kind;
    double lr;    /* server learning rate: 1.0 for FedAvg; ~1e-2..1e-1 for FedAdam */
    double beta1; /* FedAdam first-moment decay (0.9) */
    double beta2; /* FedAdam second-moment decay (0.99) */
    double tau;   /* FedAdam adaptivity floor (1e-3) */
} strategy_params_t;

/* FedAvg with lr 1; FedAdam defaults of Reddi et al. (b1 .9, b2 .99, tau 1e-3, lr 1e-2). */
void strategy_params_default(strategy_params_t *p, strategy_kind_t kind);
/* "fedavg" | "fedadam". */
int strategy_kind_parse(const char *name, strategy_kind_t *out);

typedef struct strategy_t strategy_t;

/* Server optimizer over a flat vector of n floats (state zero). */
strategy_t *strategy_new(const strategy_params_t *p, size_t n);
void strategy_destroy(strategy_t **self_p);
/* Number of server steps taken. */
uint64_t strategy_steps(const strategy_t *s);
const float *strategy_m(const strategy_t *s);
const float *strategy_v(const strategy_t *s);

/* Applies one server step to x (n floats) from the weighted sum S (n floats) and W > 0. */
int strategy_step(strategy_t *s, float *x, const float *weighted_sum, double weight_total)
    __attribute__((warn_unused_result));

/* State file (crash-safe write; checksummed so a damaged file is refused, not used). */
int strategy_save(const strategy_t *s, const char *path) __attribute__((warn_unused_result));
/* Loads state saved for the same kind and n; params (lr, betas, tau) come from p so that
 * the operator can change them between rounds. */
strategy_t *strategy_load(const char *path, const strategy_params_t *p, size_t n);
/* "<dir>/opt_v000007.bin": the server state after producing version 7. */
void strategy_state_path(const char *versions_dir, uint64_t version, char *out, size_t size);

/* ---- contribution weighting ---- */
typedef struct {
    double floor_frac;  /* w_min = floor_frac / N, in (0, 1]; default 0.2 */
    double cap;         /* largest share of one node, in (0, 1]; default 0.5 */
    double z0;          /* robust-z tolerance before down-weighting; default 2.0 */
    double ema_alpha;   /* reliability smoothing in (0, 1]; default 0.3 */
    double spread_floor;/* smallest z scale relative to |median|, >= 0; default 0.1: hospitals
                           whose quality differs by less than ~z0 * 10% are never outliers */
} contrib_params_t;

void contrib_params_default(contrib_params_t *p);

typedef struct {
    const char *node;
    double n_samples;   /* >= 0 */
    bool has_quality;   /* node reported metrics of recent versions */
    double quality;     /* e.g. mean reported validation loss of recent versions */
    double reliability; /* EMA in [0, 1] (contrib_reliability_update) */
    double loo;         /* leave-one-out factor in (0, 1]; 1 when not scored */
} contrib_input_t;

typedef struct {
    double weight;      /* final, normalised */
    double size, z, quality, reliability, loo, raw;
} contrib_output_t;

/* Computes the N weights (deterministic: depends on the inputs only, not their order). */
int contrib_weights(const contrib_params_t *p, const contrib_input_t *in, size_t n,
                    contrib_output_t *out) __attribute__((warn_unused_result));

/* New reliability after a round in which the node was selected: EMA towards 1 (completed)
 * or 0 (dropped). Nodes start at 1. */
double contrib_reliability_update(double r_prev, bool completed, double alpha);

/* Robust z-scores: (x - median) / max(1.4826 MAD, min_scale, 1e-12); all 0 when the values
 * are identical. */
void contrib_robust_z(const double *x, size_t n, double min_scale, double *z);

/* ---- leave-one-out scoring (plain mode only: individual updates are visible) ---- */

/* Evaluates a full trainable vector on the aggregator's validation set: lower loss = better. */
typedef int (*contrib_eval_fn)(void *ctx, const float *x, size_t n, double *loss, double *accuracy);

/* For K updates delta_u (each n floats) with weights w_u applied to base x0:
 *   full   = x0 + sum w delta / sum w,      minus_u = same without u
 *   score_u = loss(minus_u) - loss(full)   (> 0: u helps; < 0: removing u helps)
 * and loo_u = 1 unless score_u is a low outlier (robust z < -z0), then exp(z + z0).
 * Needs K >= 2. */
int contrib_leave_one_out(const float *x0, const float *const *deltas, const double *w, size_t k,
                          size_t n, contrib_eval_fn eval, void *ctx, double z0, double *scores,
                          double *loo) __attribute__((warn_unused_result));

#endif
