/* Differential privacy for DP-SGD: the RDP accountant of the sampled Gaussian mechanism
 * (Mironov, Talwar, Zhang 2019) with the (ε, δ) conversions of Balle et al. 2020 and the
 * classic one, its inverse (noise multiplier for a target ε), and the per-step mechanism
 * itself: Poisson sampling, per-example clipping over a [batch, P] gradient buffer, and
 * Gaussian noise from a ChaCha20 stream keyed by libsodium's randombytes.
 *
 * WHY one module: the accountant is only sound if the mechanism is exactly the one it
 * accounts for (Poisson sampling at rate q, L2 clipping to C, N(0, σ²C²) on the sum), so
 * both live side by side and are tested against each other's assumptions.
 *
 * The accountant follows Opacus' accountants/analysis/rdp.py (itself TF-Privacy's
 * rdp_accountant.py) step by step so that numbers can be compared with both. */
#ifndef MEDFL_DP_H
#define MEDFL_DP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- accountant */

typedef enum {
    DP_CONV_IMPROVED = 0, /* Balle et al. 2020, Thm 21 (Opacus get_privacy_spent) */
    DP_CONV_CLASSIC,      /* Mironov 2017: ε = rdp − log δ / (α − 1) */
} dp_conversion_t;

/* Parses "improved" / "classic". */
int dp_conversion_parse(const char *name, dp_conversion_t *out);
const char *dp_conversion_name(dp_conversion_t conv);

/* Opacus' default orders: [1 + x / 10 for x in 1..99] + [12..63], 151 values. */
#define DP_DEFAULT_ORDERS_N 151
const double *dp_default_orders(size_t *n_out);

/* RDP of ONE step of the sampled Gaussian mechanism at order alpha (> 1): q ∈ [0, 1],
 * sigma ≥ 0 (0 → +inf), integer alpha by the binomial expansion, fractional alpha by the
 * two-series computation. Returns -1 on bad arguments or numerical failure. */
int dp_rdp_step(double q, double sigma, double alpha, double *rdp_out);

/* rdp_out[i] = steps · RDP(q, sigma, orders[i]) (compute_rdp of Opacus/TF-Privacy). */
int dp_compute_rdp(double q, double sigma, int64_t steps, const double *orders, size_t n,
                   double *rdp_out);

/* Best ε over the orders for the RDP curve and δ; *opt_order gets the chosen order (NaN
 * when every order gives +inf, then *eps = +inf). ε is clamped at 0 from below as
 * TF-Privacy does (a negative value carries no meaning). An all-zero curve (nothing ran)
 * gives ε = 0 and order NaN: the conversion alone would report its own slack (≈ 0.1). */
int dp_rdp_to_epsilon(const double *orders, const double *rdp, size_t n, double delta,
                      dp_conversion_t conv, double *eps, double *opt_order);

/* Accumulates the RDP curve of a sequence of (q, σ, steps) entries: composition over every
 * step of every round is the sum of the per-order RDP. */
typedef struct dp_accountant_t dp_accountant_t;

/* orders NULL → the default orders. */
dp_accountant_t *dp_accountant_new(const double *orders, size_t n_orders);
void dp_accountant_destroy(dp_accountant_t **self_p);
int dp_accountant_add(dp_accountant_t *self, double q, double sigma, int64_t steps);
/* Number of entries added and total steps. */
size_t dp_accountant_entries(const dp_accountant_t *self);
int64_t dp_accountant_steps(const dp_accountant_t *self);
int dp_accountant_epsilon(const dp_accountant_t *self, double delta, dp_conversion_t conv,
                          double *eps, double *opt_order);
/* The ε the history would reach with one more entry (q, σ, steps), without adding it. */
int dp_accountant_epsilon_if(const dp_accountant_t *self, double q, double sigma,
                             int64_t steps, double delta, dp_conversion_t conv, double *eps,
                             double *opt_order);

/* Smallest noise multiplier (to within tol in ε, on the safe side: the returned σ gives
 * ε ≤ target) such that history (may be NULL = none) plus `steps` steps at rate q reaches
 * at most target_eps. Bracket (σ = 20, 40, ... up to 1e6) and bisection as Opacus'
 * get_noise_multiplier. tol ≤ 0 → 0.01 (Opacus' default). MEDFL_EBUDGET when no σ ≤ 1e6
 * meets the target (the history alone may already exceed it). */
int dp_noise_multiplier(const dp_accountant_t *history, double target_eps, double q,
                        int64_t steps, double delta, dp_conversion_t conv, double tol,
                        double *sigma_out);

/* ---------------------------------------------------------------- randomness */

/* A ChaCha20 keystream turned into uniforms and Gaussians. dp_rng_new() keys it from
 * randombytes (the OS CSPRNG); dp_rng_new_seeded() derives the key from a seed and is
 * for tests and reproducible benchmarks only: noise from a known seed protects nothing. */
typedef struct dp_rng_t dp_rng_t;
dp_rng_t *dp_rng_new(void);
dp_rng_t *dp_rng_new_seeded(uint64_t seed);
void dp_rng_destroy(dp_rng_t **self_p);
bool dp_rng_is_seeded(const dp_rng_t *self);
uint64_t dp_rng_u64(dp_rng_t *self);
/* Uniform on (0, 1] with every double reachable down to 2^-1074 (exponent drawn from the
 * count of leading zero bits, then a 52-bit mantissa), so the Gaussian tail is not cut at
 * 8.6σ as it would be with a plain 53-bit uniform. */
double dp_rng_uniform_pos(dp_rng_t *self);
/* Standard normal by Box-Muller in double precision (pairs cached). */
double dp_rng_gaussian(dp_rng_t *self);

/* Discrete Gaussian on the integers, P(z) ∝ exp(-z² / 2σ²), by Canonne, Kamath and Steinke
 * (2020), Algorithm 3: a discrete Laplace proposal of scale t = ⌊σ⌋ + 1 accepted with
 * probability exp(-(|y| - σ²/t)² / 2σ²), in double precision. sigma 0 gives 0. Used for
 * noise added inside the secure-aggregation ring, where the sum of the nodes' shares must
 * itself be (close to) a discrete Gaussian (Kairouz, Liu, Steinke 2021). */
int64_t dp_rng_discrete_gaussian(dp_rng_t *self, double sigma);

/* ---------------------------------------------------------------- distributed noise */

/* One node's share of noise split over a secure-aggregation round (docs/privacy.md §10).
 * Every weighted update in the sum is  -w_v (lr / q) (1 / N_v) Σ clipped gradients, so a
 * record of node u moves the sum by at most C (lr / q) w_u / N_u (its sensitivity), and the
 * largest over the round is C (lr / q) ρ_max with ρ_max = max_v w_v / N_v. If at least h
 * nodes each add noise of std σ C (lr / q) ρ_max / √h, the sum carries σ C (lr / q) ρ_max:
 * at least σ times every node's sensitivity, as one node adding σ would give on its own. */
typedef struct {
    double sigma;             /* σ, the noise multiplier the federation promises */
    double clip;              /* C */
    double lr_over_q;         /* the round's lr / q (the same for every participant) */
    double record_weight_max; /* ρ_max, from the round start */
    uint32_t honest;          /* h: contributors whose noise this node counts on, >= 1 */
    double sensitivity;       /* this node's: C · w_u · (its own step scale), update units */
    double rounding;          /* L2 bound of what encoding can add to a difference: the
                               * accounted sensitivity is sensitivity + rounding */
} dp_shared_noise_t;

/* node_std: the std this node adds (update units). sigma_eff: the noise multiplier this
 * node's ledger charges, total noise / (sensitivity + rounding), which is below σ when the
 * rounding is not negligible or this node's own scale exceeds ρ_max. */
int dp_shared_noise_plan(const dp_shared_noise_t *in, double *node_std, double *sigma_eff);
/* The std one node would add alone (h = 1): what ring headroom must cover. */
double dp_shared_noise_full_std(const dp_shared_noise_t *in);

/* ---------------------------------------------------------------- mechanism */

/* Poisson sampling: each of n records is taken independently with probability q. Writes
 * the chosen indices ascending into idx (room for n) and their count into *count. The
 * batch size is random on purpose; the accountant's q assumes exactly this sampler. */
int dp_poisson_sample(dp_rng_t *rng, size_t n, double q, uint32_t *idx, size_t *count);

typedef struct {
    size_t rows;       /* examples seen */
    size_t clipped;    /* rows whose norm exceeded C */
    double max_norm;   /* largest pre-clip L2 norm */
    double mean_norm;  /* mean pre-clip L2 norm (for choosing C) */
} dp_clip_stats_t;

/* grads: [batch, P] row-major, row b = example b's gradient over all trainable parameters.
 * Scales each row with norm > C by C/‖g‖ (shrunk by 2^-23 relative so that the rounded
 * float row is ≤ C for certain); rows with norm ≤ C are left bit-for-bit unchanged.
 * Non-finite gradients are an error (they would break the sensitivity bound). stats may be
 * NULL. */
int dp_clip_rows(float *grads, size_t batch, size_t P, double clip, dp_clip_stats_t *stats);

/* Clipping factors from row norms computed elsewhere, e.g. on the GPU by the model
 * backend's row_norms, so that the clipped sum is one product scales[1, B] @ rows[B, P]
 * on the device and only P floats travel to the host for the noise. norm_rel_err bounds
 * the relative error of those norms (float accumulation over P terms: pass e.g. 1e-4 for a
 * blocked/pairwise sum, P·2^-24 for a naive one); the factor is shrunk by it so the true
 * norm of every scaled row is ≤ C. scales[b] = 1 exactly when norms[b] ≤ C / (1 +
 * norm_rel_err). Non-finite or negative norms are an error. stats may be NULL. */
int dp_clip_scales(const float *norms, size_t batch, double clip, double norm_rel_err,
                   float *scales, dp_clip_stats_t *stats);

/* sum[P] = Σ_b grads[b, :] (after dp_clip_rows), accumulated in double. */
int dp_sum_rows(const float *grads, size_t batch, size_t P, float *sum);

/* v[j] += N(0, std²) for each j, then each v[j] is snapped to the power-of-two grid
 * dp_noise_grid(std) (see docs/privacy.md: floating-point caveats). std = σ·C. */
int dp_add_noise(dp_rng_t *rng, float *v, size_t P, double std);
double dp_noise_grid(double std);

/* The same in two halves, so the noise (which does not depend on the data) can be drawn
 * ahead, e.g. by a thread while the device computes the step's gradients:
 * dp_noise_draw fills noise[j] = std·z_j; dp_noise_apply adds it to v and snaps.
 * draw + apply on the same rng state gives exactly dp_add_noise's result. A dp_rng_t is
 * not thread-safe: give the drawing thread its own. */
int dp_noise_draw(dp_rng_t *rng, double *noise, size_t P, double std);
int dp_noise_apply(float *v, const double *noise, size_t P, double std);

/* One DP-SGD step's gradient: clip rows of grads in place, sum, add N(0, σ²C²) noise.
 * out[P] receives the NOISY SUM; the trainer divides it by the EXPECTED batch size q·N
 * (not by the realised batch size, which would depend on the data). batch may be 0
 * (Poisson sampling can draw an empty batch: out is then pure noise). */
int dp_privatize(float *grads, size_t batch, size_t P, double clip, double sigma,
                 dp_rng_t *rng, float *out, dp_clip_stats_t *stats);

#endif
