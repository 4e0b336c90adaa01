/* DP-SGD building blocks: RDP accountant for the sampled Gaussian mechanism, (ε, δ)
 * conversion, noise-multiplier search, CSPRNG-driven Gaussian noise, Poisson sampling and
 * per-example clipping. See dp.h for the contract and docs/privacy.md for the reasoning.
 *
 * The accountant mirrors Opacus' accountants/analysis/rdp.py (from TF-Privacy's
 * rdp_accountant.py) line by line, in log space, so that its numbers can be checked against
 * both projects' published values; the places where C needs its own code (log erfc for
 * large arguments, the generalized binomial coefficient) are commented. */
#include "common/dp.h"

#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/error.h"

/* ================================================================ accountant */

static double s_default_orders[DP_DEFAULT_ORDERS_N];
static pthread_once_t s_default_once = PTHREAD_ONCE_INIT;

static void s_fill_default_orders(void)
{
    /* Written in the same IEEE operations as Opacus' `1 + x / 10.0`, so 2.0, 3.0, ... come
     * out exactly integral and take the integer path, as in Python. */
    size_t k = 0;
    for (int x = 1; x < 100; x++) s_default_orders[k++] = 1.0 + (double)x / 10.0;
    for (int a = 12; a < 64; a++) s_default_orders[k++] = (double)a;
}

const double *dp_default_orders(size_t *n_out)
{
    pthread_once(&s_default_once, s_fill_default_orders);
    if (n_out) *n_out = DP_DEFAULT_ORDERS_N;
    return s_default_orders;
}

int dp_conversion_parse(const char *name, dp_conversion_t *out)
{
    if (name && strcmp(name, "improved") == 0) { *out = DP_CONV_IMPROVED; return 0; }
    if (name && strcmp(name, "classic") == 0) { *out = DP_CONV_CLASSIC; return 0; }
    return medfl_error_set(MEDFL_EINVAL, "conversion '%s': expected 'improved' or 'classic'",
                           name ? name : "(null)");
}

const char *dp_conversion_name(dp_conversion_t conv)
{
    return conv == DP_CONV_CLASSIC ? "classic" : "improved";
}

/* log(exp(x) + exp(y)) */
static double s_log_add(double logx, double logy)
{
    double a = fmin(logx, logy), b = fmax(logx, logy);
    if (a == -INFINITY) return b;
    return log1p(exp(a - b)) + b;
}

/* log(exp(x) - exp(y)); x ≥ y required (Opacus raises otherwise; we report it). */
static int s_log_sub(double logx, double logy, double *out)
{
    if (logx < logy)
        return medfl_error_set(MEDFL_EINVAL, "RDP series: log-space subtraction went negative");
    if (logy == -INFINITY) { *out = logx; return 0; }
    if (logx == logy) { *out = -INFINITY; return 0; }
    double d = expm1(logx - logy);
    *out = isinf(d) ? logx : log(d) + logy; /* Opacus: OverflowError → logx */
    return 0;
}

/* log(erfc(x)), accurate where erfc underflows. scipy computes it as
 * log(2) + log_ndtr(-√2 x); here libm's erfc is used while it keeps full relative precision
 * and the asymptotic series erfc(x) = e^{-x²}/(x√π) Σ (-1)^k (2k-1)!!/(2x²)^k beyond
 * (at x ≥ 20 the terms fall below 1e-17 long before they start to grow). */
static double s_log_erfc(double x)
{
    if (x < 20.0) return log(erfc(x));
    double t = 1.0 / (2.0 * x * x), term = 1.0, sum = 1.0;
    for (int k = 1; k < 60; k++) {
        term *= -(2.0 * k - 1.0) * t;
        sum += term;
        if (fabs(term) < 1e-18) break;
    }
    return -x * x - log(x) - 0.5 * log(M_PI) + log(sum);
}

/* log A_α for integer α: Σ_i C(α,i) q^i (1-q)^(α-i) exp((i² - i) / (2σ²)). */
static double s_log_a_int(double q, double sigma, int alpha)
{
    double log_a = -INFINITY;
    double lq = log(q), l1q = log1p(-q), lga = lgamma(alpha + 1.0);
    for (int i = 0; i <= alpha; i++) {
        double log_coef = lga - lgamma(i + 1.0) - lgamma(alpha - i + 1.0) + i * lq +
                          (alpha - i) * l1q;
        double s = log_coef + ((double)i * i - i) / (2.0 * sigma * sigma);
        log_a = s_log_add(log_a, s);
    }
    return log_a;
}

/* log A_α for fractional α: the two series over (-inf, z0] and [z0, inf). The generalized
 * binomial coefficient C(α, i) is carried as (log|c|, sign) by c_i = c_{i-1}(α-i+1)/i,
 * which equals scipy's special.binom and never hits 0 for non-integer α. */
static int s_log_a_frac(double q, double sigma, double alpha, double *out)
{
    double log_a0 = -INFINITY, log_a1 = -INFINITY;
    double z0 = sigma * sigma * log(1.0 / q - 1.0) + 0.5;
    double lq = log(q), l1q = log1p(-q);
    double log_coef = 0.0; /* log|C(α, 0)| */
    int sign = 1;
    for (long i = 0;; i++) {
        if (i > 0) {
            double f = alpha - (double)i + 1.0;
            if (f < 0) sign = -sign;
            log_coef += log(fabs(f)) - log((double)i);
        }
        double j = alpha - (double)i;
        double log_t0 = log_coef + i * lq + j * l1q;
        double log_t1 = log_coef + j * lq + i * l1q;
        double log_e0 = log(0.5) + s_log_erfc((i - z0) / (M_SQRT2 * sigma));
        double log_e1 = log(0.5) + s_log_erfc((z0 - j) / (M_SQRT2 * sigma));
        double log_s0 = log_t0 + ((double)i * i - i) / (2.0 * sigma * sigma) + log_e0;
        double log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        if (sign > 0) {
            log_a0 = s_log_add(log_a0, log_s0);
            log_a1 = s_log_add(log_a1, log_s1);
        } else if (s_log_sub(log_a0, log_s0, &log_a0) != 0 ||
                   s_log_sub(log_a1, log_s1, &log_a1) != 0) {
            return medfl_error_prefix("q=%g sigma=%g alpha=%g: ", q, sigma, alpha);
        }
        if (fmax(log_s0, log_s1) < -30) break;
        if (i > 1000000)
            return medfl_error_set(MEDFL_EINVAL,
                                   "q=%g sigma=%g alpha=%g: RDP series did not converge", q,
                                   sigma, alpha);
    }
    *out = s_log_add(log_a0, log_a1);
    return 0;
}

int dp_rdp_step(double q, double sigma, double alpha, double *rdp_out)
{
    if (!(q >= 0.0 && q <= 1.0))
        return medfl_error_set(MEDFL_EINVAL, "sample rate q=%g: must be in [0, 1]", q);
    if (!(sigma >= 0.0) || isinf(sigma))
        return medfl_error_set(MEDFL_EINVAL, "noise multiplier %g: must be finite and >= 0",
                               sigma);
    if (!(alpha > 1.0))
        return medfl_error_set(MEDFL_EINVAL, "RDP order %g: must be > 1", alpha);
    if (q == 0.0) { *rdp_out = 0.0; return 0; }
    if (sigma == 0.0) { *rdp_out = INFINITY; return 0; } /* no noise, no privacy */
    if (q == 1.0) { *rdp_out = alpha / (2.0 * sigma * sigma); return 0; }
    if (isinf(alpha)) { *rdp_out = INFINITY; return 0; }
    double log_a = 0.0;
    if (alpha == floor(alpha) && alpha < 2147483647.0) {
        log_a = s_log_a_int(q, sigma, (int)alpha);
    } else if (s_log_a_frac(q, sigma, alpha, &log_a) != 0) {
        return -1;
    }
    *rdp_out = log_a / (alpha - 1.0);
    return 0;
}

int dp_compute_rdp(double q, double sigma, int64_t steps, const double *orders, size_t n,
                   double *rdp_out)
{
    if (steps < 0) return medfl_error_set(MEDFL_EINVAL, "steps %lld: must be >= 0", (long long)steps);
    for (size_t i = 0; i < n; i++) {
        double r;
        if (dp_rdp_step(q, sigma, orders[i], &r) != 0) return -1;
        /* inf · 0 steps would be NaN: zero steps spend nothing. */
        rdp_out[i] = steps == 0 ? 0.0 : r * (double)steps;
    }
    return 0;
}

int dp_rdp_to_epsilon(const double *orders, const double *rdp, size_t n, double delta,
                      dp_conversion_t conv, double *eps, double *opt_order)
{
    if (!(delta > 0.0 && delta < 1.0))
        return medfl_error_set(MEDFL_EINVAL, "delta %g: must be in (0, 1)", delta);
    if (n == 0) return medfl_error_set(MEDFL_EINVAL, "no RDP orders");
    double best = NAN, best_order = NAN;
    bool nothing = true;
    for (size_t i = 0; i < n; i++) nothing = nothing && rdp[i] == 0.0;
    if (nothing) { /* no mechanism ran: zero loss, not the conversion's slack */
        *eps = 0.0;
        *opt_order = NAN;
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        double a = orders[i], e;
        if (conv == DP_CONV_CLASSIC)
            e = rdp[i] - log(delta) / (a - 1.0);
        else /* Balle et al. 2020, Theorem 21, as Opacus' get_privacy_spent */
            e = rdp[i] - (log(delta) + log(a)) / (a - 1.0) + log((a - 1.0) / a);
        if (isnan(e)) continue;
        if (isnan(best) || e < best) { best = e; best_order = a; }
    }
    if (isnan(best) || isinf(best)) {
        *eps = INFINITY;
        *opt_order = NAN;
        return 0;
    }
    *eps = best < 0.0 ? 0.0 : best;
    *opt_order = best_order;
    return 0;
}

struct dp_accountant_t {
    size_t n;
    double *orders;
    double *rdp;    /* composed RDP at each order */
    double *tmp;    /* scratch for one entry */
    size_t entries;
    int64_t steps;
};

dp_accountant_t *dp_accountant_new(const double *orders, size_t n_orders)
{
    if (!orders) orders = dp_default_orders(&n_orders);
    if (n_orders == 0) {
        medfl_error_set(MEDFL_EINVAL, "accountant: no RDP orders");
        return NULL;
    }
    for (size_t i = 0; i < n_orders; i++)
        if (!(orders[i] > 1.0)) {
            medfl_error_set(MEDFL_EINVAL, "accountant: order %g must be > 1", orders[i]);
            return NULL;
        }
    dp_accountant_t *self = calloc(1, sizeof *self);
    if (self) {
        self->orders = malloc(n_orders * sizeof(double));
        self->rdp = calloc(n_orders, sizeof(double));
        self->tmp = malloc(n_orders * sizeof(double));
    }
    if (!self || !self->orders || !self->rdp || !self->tmp) {
        dp_accountant_destroy(&self);
        medfl_error_set(MEDFL_ENOMEM, "accountant: out of memory");
        return NULL;
    }
    memcpy(self->orders, orders, n_orders * sizeof(double));
    self->n = n_orders;
    return self;
}

void dp_accountant_destroy(dp_accountant_t **self_p)
{
    if (!self_p || !*self_p) return;
    dp_accountant_t *self = *self_p;
    free(self->orders);
    free(self->rdp);
    free(self->tmp);
    free(self);
    *self_p = NULL;
}

int dp_accountant_add(dp_accountant_t *self, double q, double sigma, int64_t steps)
{
    if (dp_compute_rdp(q, sigma, steps, self->orders, self->n, self->tmp) != 0) return -1;
    for (size_t i = 0; i < self->n; i++) self->rdp[i] += self->tmp[i];
    self->entries++;
    self->steps += steps;
    return 0;
}

size_t dp_accountant_entries(const dp_accountant_t *self) { return self->entries; }
int64_t dp_accountant_steps(const dp_accountant_t *self) { return self->steps; }

int dp_accountant_epsilon(const dp_accountant_t *self, double delta, dp_conversion_t conv,
                          double *eps, double *opt_order)
{
    return dp_rdp_to_epsilon(self->orders, self->rdp, self->n, delta, conv, eps, opt_order);
}

/* ε of (history + entry) over the given orders, history's rdp may be NULL. */
static int s_epsilon_with(const double *orders, size_t n, const double *base_rdp, double q,
                          double sigma, int64_t steps, double delta, dp_conversion_t conv,
                          double *eps, double *opt_order)
{
    double *r = malloc(n * sizeof(double));
    if (!r) return medfl_error_set(MEDFL_ENOMEM, "accountant: out of memory");
    int rc = dp_compute_rdp(q, sigma, steps, orders, n, r);
    if (rc == 0) {
        if (base_rdp)
            for (size_t i = 0; i < n; i++) r[i] += base_rdp[i];
        rc = dp_rdp_to_epsilon(orders, r, n, delta, conv, eps, opt_order);
    }
    free(r);
    return rc;
}

int dp_accountant_epsilon_if(const dp_accountant_t *self, double q, double sigma,
                             int64_t steps, double delta, dp_conversion_t conv, double *eps,
                             double *opt_order)
{
    return s_epsilon_with(self->orders, self->n, self->rdp, q, sigma, steps, delta, conv, eps,
                          opt_order);
}

#define DP_MAX_SIGMA 1e6

int dp_noise_multiplier(const dp_accountant_t *history, double target_eps, double q,
                        int64_t steps, double delta, dp_conversion_t conv, double tol,
                        double *sigma_out)
{
    if (!(target_eps > 0.0) || isinf(target_eps))
        return medfl_error_set(MEDFL_EINVAL, "target epsilon %g: must be finite and > 0",
                               target_eps);
    if (tol <= 0.0) tol = 0.01;
    size_t n;
    const double *orders = history ? history->orders : dp_default_orders(&n);
    if (history) n = history->n;
    const double *base = history ? history->rdp : NULL;

    /* Same bracket and bisection as Opacus' get_noise_multiplier, so results agree. */
    double eps_high = INFINITY, sigma_low = 0.0, sigma_high = 10.0, order;
    while (eps_high > target_eps) {
        sigma_high *= 2.0;
        if (sigma_high > DP_MAX_SIGMA)
            return medfl_error_set(MEDFL_EBUDGET,
                                   "target epsilon %g is out of reach: even noise multiplier "
                                   "%g gives epsilon %g (q=%g, %lld steps, delta=%g%s)",
                                   target_eps, sigma_high / 2.0, eps_high, q, (long long)steps,
                                   delta, base ? ", after the recorded history" : "");
        if (s_epsilon_with(orders, n, base, q, sigma_high, steps, delta, conv, &eps_high,
                           &order) != 0)
            return -1;
    }
    while (target_eps - eps_high > tol) {
        double sigma = (sigma_low + sigma_high) / 2.0, eps;
        if (s_epsilon_with(orders, n, base, q, sigma, steps, delta, conv, &eps, &order) != 0)
            return -1;
        if (eps < target_eps) {
            sigma_high = sigma;
            eps_high = eps;
        } else {
            sigma_low = sigma;
        }
        if (sigma_high - sigma_low < 1e-12 * sigma_high) break; /* ε flat in σ: stop */
    }
    *sigma_out = sigma_high;
    return 0;
}

/* ================================================================ randomness */

#define DP_RNG_BUF 4096

struct dp_rng_t {
    unsigned char key[crypto_stream_chacha20_KEYBYTES];
    unsigned char nonce[crypto_stream_chacha20_NONCEBYTES];
    unsigned char buf[DP_RNG_BUF];
    size_t pos;
    bool seeded;
    bool have_spare;
    double spare;
};

static void s_rng_refill(dp_rng_t *self)
{
    /* A fresh 64-bit nonce per buffer: one key, never a repeated (key, nonce) pair. */
    crypto_stream_chacha20(self->buf, sizeof self->buf, self->nonce, self->key);
    sodium_increment(self->nonce, sizeof self->nonce);
    self->pos = 0;
}

static dp_rng_t *s_rng_alloc(void)
{
    if (sodium_init() < 0) {
        medfl_error_set(MEDFL_ECRYPTO, "libsodium initialisation failed");
        return NULL;
    }
    dp_rng_t *self = calloc(1, sizeof *self);
    if (!self) medfl_error_set(MEDFL_ENOMEM, "dp rng: out of memory");
    return self;
}

dp_rng_t *dp_rng_new(void)
{
    dp_rng_t *self = s_rng_alloc();
    if (!self) return NULL;
    randombytes_buf(self->key, sizeof self->key);
    self->pos = DP_RNG_BUF;
    return self;
}

dp_rng_t *dp_rng_new_seeded(uint64_t seed)
{
    dp_rng_t *self = s_rng_alloc();
    if (!self) return NULL;
    unsigned char s[8];
    for (int i = 0; i < 8; i++) s[i] = (unsigned char)(seed >> (8 * i));
    crypto_generichash(self->key, sizeof self->key, s, sizeof s,
                       (const unsigned char *)"medfl-dp-test-seed", 18);
    self->seeded = true;
    self->pos = DP_RNG_BUF;
    return self;
}

void dp_rng_destroy(dp_rng_t **self_p)
{
    if (!self_p || !*self_p) return;
    sodium_memzero(*self_p, sizeof **self_p); /* key and unread keystream */
    free(*self_p);
    *self_p = NULL;
}

bool dp_rng_is_seeded(const dp_rng_t *self) { return self->seeded; }

uint64_t dp_rng_u64(dp_rng_t *self)
{
    if (self->pos + 8 > DP_RNG_BUF) s_rng_refill(self);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)self->buf[self->pos + i] << (8 * i);
    self->pos += 8;
    return v;
}

/* Uniform on [0, 1) from 53 bits. */
static double s_uniform53(dp_rng_t *self)
{
    return (double)(dp_rng_u64(self) >> 11) * 0x1.0p-53;
}

double dp_rng_uniform_pos(dp_rng_t *self)
{
    /* Binary exponent from leading zeros: P(u ∈ [2^-k-1, 2^-k)) = 2^-k-1 exactly, then a
     * uniform 52-bit mantissa inside that octave. Result in (0, 1). */
    int e = -1;
    uint64_t w;
    while ((w = dp_rng_u64(self)) == 0) {
        e -= 64;
        if (e < -1074) return 0x1.0p-1074;
    }
    e -= __builtin_clzll(w);
    uint64_t m = dp_rng_u64(self) >> 12; /* 52 bits */
    double u = ldexp(1.0 + (double)m * 0x1.0p-52, e);
    return u > 0.0 ? u : 0x1.0p-1074;
}

double dp_rng_gaussian(dp_rng_t *self)
{
    if (self->have_spare) {
        self->have_spare = false;
        return self->spare;
    }
    double r = sqrt(-2.0 * log(dp_rng_uniform_pos(self)));
    double t = 2.0 * M_PI * s_uniform53(self), sn, cs;
    sincos(t, &sn, &cs);
    self->spare = r * sn;
    self->have_spare = true;
    return r * cs;
}

/* ================================================================ mechanism */

int64_t dp_rng_discrete_gaussian(dp_rng_t *self, double sigma)
{
    if (!(sigma > 0) || !isfinite(sigma)) return 0;
    const double t = floor(sigma) + 1.0, s2 = sigma * sigma;
    for (;;) {
        /* Discrete Laplace of scale t: |y| geometric with P(x) ∝ e^(-x/t), a random sign,
         * and the draw (-0) rejected so that 0 is not counted twice. */
        double x = floor(-t * log(dp_rng_uniform_pos(self)));
        bool neg = dp_rng_u64(self) & 1;
        if (neg && x == 0) continue;
        double d = x - s2 / t;
        if (dp_rng_uniform_pos(self) <= exp(-d * d / (2.0 * s2)))
            return (int64_t)(neg ? -x : x);
    }
}

static int s_shared_check(const dp_shared_noise_t *in)
{
    if (!in || !(in->sigma >= 0) || !isfinite(in->sigma) || !(in->clip > 0) ||
        !(in->lr_over_q > 0) || !isfinite(in->lr_over_q) || !(in->record_weight_max > 0) ||
        !isfinite(in->record_weight_max) || in->honest < 1 || !(in->sensitivity > 0) ||
        !isfinite(in->sensitivity) || !(in->rounding >= 0) || !isfinite(in->rounding))
        return medfl_error_set(MEDFL_EINVAL, "distributed noise: need sigma >= 0, C > 0, "
                               "lr/q > 0, record_weight_max > 0, honest >= 1, sensitivity > 0 "
                               "and rounding >= 0 (got %g, %g, %g, %g, %u, %g, %g)",
                               in ? in->sigma : 0, in ? in->clip : 0, in ? in->lr_over_q : 0,
                               in ? in->record_weight_max : 0, in ? in->honest : 0,
                               in ? in->sensitivity : 0, in ? in->rounding : 0);
    return 0;
}

double dp_shared_noise_full_std(const dp_shared_noise_t *in)
{
    return in->sigma * in->clip * in->lr_over_q * in->record_weight_max;
}

int dp_shared_noise_plan(const dp_shared_noise_t *in, double *node_std, double *sigma_eff)
{
    if (s_shared_check(in) != 0) return -1;
    double total = dp_shared_noise_full_std(in);
    *node_std = total / sqrt((double)in->honest);
    *sigma_eff = total / (in->sensitivity + in->rounding);
    return 0;
}

int dp_poisson_sample(dp_rng_t *rng, size_t n, double q, uint32_t *idx, size_t *count)
{
    if (!(q >= 0.0 && q <= 1.0))
        return medfl_error_set(MEDFL_EINVAL, "sample rate q=%g: must be in [0, 1]", q);
    if (n > UINT32_MAX)
        return medfl_error_set(MEDFL_EINVAL, "%zu records: more than 2^32-1", n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (s_uniform53(rng) < q) idx[k++] = (uint32_t)i;
    *count = k;
    return 0;
}

/* Clipping scale shrink: the rounded float row ‖fl(s·g)‖ ≤ ‖s·g‖(1 + 2^-24) (each element
 * rounds by at most half an ulp) and s·‖g‖ is C up to the double-precision error of the
 * norm, so (1 - 2^-23) keeps the stored row at or below C. */
#define DP_CLIP_SHRINK (1.0 - 0x1.0p-23)

int dp_clip_rows(float *grads, size_t batch, size_t P, double clip, dp_clip_stats_t *stats)
{
    if (!(clip > 0.0) || isinf(clip))
        return medfl_error_set(MEDFL_EINVAL, "clipping norm C=%g: must be finite and > 0", clip);
    dp_clip_stats_t st = {.rows = batch};
    double norm_sum = 0.0;
    for (size_t b = 0; b < batch; b++) {
        float *g = grads + b * P;
        double ss = 0.0;
        for (size_t j = 0; j < P; j++) ss += (double)g[j] * (double)g[j];
        double norm = sqrt(ss);
        if (!isfinite(norm))
            return medfl_error_set(MEDFL_EINVAL,
                                   "per-example gradient %zu: non-finite values (norm %g)", b,
                                   norm);
        norm_sum += norm;
        if (norm > st.max_norm) st.max_norm = norm;
        if (norm <= clip) continue;
        st.clipped++;
        float s = (float)(clip / norm * DP_CLIP_SHRINK);
        for (size_t j = 0; j < P; j++) g[j] *= s;
    }
    st.mean_norm = batch ? norm_sum / (double)batch : 0.0;
    if (stats) *stats = st;
    return 0;
}

int dp_clip_scales(const float *norms, size_t batch, double clip, double norm_rel_err,
                   float *scales, dp_clip_stats_t *stats)
{
    if (!(clip > 0.0) || isinf(clip))
        return medfl_error_set(MEDFL_EINVAL, "clipping norm C=%g: must be finite and > 0", clip);
    if (!(norm_rel_err >= 0.0 && norm_rel_err < 0.5))
        return medfl_error_set(MEDFL_EINVAL, "norm relative error %g: must be in [0, 0.5)",
                               norm_rel_err);
    dp_clip_stats_t st = {.rows = batch};
    double norm_sum = 0.0, limit = clip / (1.0 + norm_rel_err);
    for (size_t b = 0; b < batch; b++) {
        double norm = norms[b];
        if (!isfinite(norm) || norm < 0.0)
            return medfl_error_set(MEDFL_EINVAL, "per-example gradient %zu: norm %g", b, norm);
        norm_sum += norm;
        if (norm > st.max_norm) st.max_norm = norm;
        if (norm <= limit) {
            scales[b] = 1.0f;
            continue;
        }
        st.clipped++;
        scales[b] = (float)(limit / norm * DP_CLIP_SHRINK);
    }
    st.mean_norm = batch ? norm_sum / (double)batch : 0.0;
    if (stats) *stats = st;
    return 0;
}

int dp_sum_rows(const float *grads, size_t batch, size_t P, float *sum)
{
    double *acc = calloc(P ? P : 1, sizeof(double));
    if (!acc) return medfl_error_set(MEDFL_ENOMEM, "dp sum: out of memory");
    for (size_t b = 0; b < batch; b++) {
        const float *g = grads + b * P;
        for (size_t j = 0; j < P; j++) acc[j] += g[j];
    }
    for (size_t j = 0; j < P; j++) sum[j] = (float)acc[j];
    free(acc);
    return 0;
}

double dp_noise_grid(double std)
{
    /* A power of two near std / 2^10: rounding to it adds variance γ²/12 ≈ 8e-8·std²
     * (negligible) while hiding the bit pattern of the double-precision sample (Mironov
     * 2012); a power of two makes the snapping exact in binary floating point. */
    int e;
    frexp(std, &e);
    return ldexp(1.0, e - 11);
}

int dp_add_noise(dp_rng_t *rng, float *v, size_t P, double std)
{
    if (!(std >= 0.0) || isinf(std))
        return medfl_error_set(MEDFL_EINVAL, "noise std %g: must be finite and >= 0", std);
    if (std == 0.0) return 0;
    double grid = dp_noise_grid(std), inv = 1.0 / grid; /* powers of two: exact */
    for (size_t j = 0; j < P; j++) {
        double x = (double)v[j] + std * dp_rng_gaussian(rng);
        v[j] = (float)(nearbyint(x * inv) * grid);
    }
    return 0;
}

int dp_noise_draw(dp_rng_t *rng, double *noise, size_t P, double std)
{
    if (!(std >= 0.0) || isinf(std))
        return medfl_error_set(MEDFL_EINVAL, "noise std %g: must be finite and >= 0", std);
    for (size_t j = 0; j < P; j++) noise[j] = std == 0.0 ? 0.0 : std * dp_rng_gaussian(rng);
    return 0;
}

int dp_noise_apply(float *v, const double *noise, size_t P, double std)
{
    if (!(std >= 0.0) || isinf(std))
        return medfl_error_set(MEDFL_EINVAL, "noise std %g: must be finite and >= 0", std);
    if (std == 0.0) return 0;
    double grid = dp_noise_grid(std), inv = 1.0 / grid;
    for (size_t j = 0; j < P; j++) v[j] = (float)(nearbyint(((double)v[j] + noise[j]) * inv) * grid);
    return 0;
}

int dp_privatize(float *grads, size_t batch, size_t P, double clip, double sigma,
                 dp_rng_t *rng, float *out, dp_clip_stats_t *stats)
{
    if (!(sigma >= 0.0) || isinf(sigma))
        return medfl_error_set(MEDFL_EINVAL, "noise multiplier %g: must be finite and >= 0",
                               sigma);
    if (dp_clip_rows(grads, batch, P, clip, stats) != 0) return -1;
    if (dp_sum_rows(grads, batch, P, out) != 0) return -1;
    return dp_add_noise(rng, out, P, sigma * clip);
}
