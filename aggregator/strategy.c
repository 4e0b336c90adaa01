/* Server optimizers (FedAvg, FedAdam) over the flat trainable vector, contribution weights
 * and leave-one-out scoring. See strategy.h for the formulas and why the step takes the
 * weighted sum rather than individual updates (secure aggregation). */
#include "aggregator/strategy.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"

struct strategy_t {
    strategy_params_t p;
    size_t n;
    uint64_t steps;
    float *m; /* [n] first moment (FedAdam) */
    float *v; /* [n] second moment (FedAdam) */
};

void strategy_params_default(strategy_params_t *p, strategy_kind_t kind)
{
    p->kind = kind;
    p->lr = kind == STRATEGY_FEDADAM ? 1e-2 : 1.0;
    p->beta1 = 0.9;
    p->beta2 = 0.99;
    p->tau = 1e-3;
}

int strategy_kind_parse(const char *name, strategy_kind_t *out)
{
    if (strcmp(name, "fedavg") == 0) *out = STRATEGY_FEDAVG;
    else if (strcmp(name, "fedadam") == 0) *out = STRATEGY_FEDADAM;
    else return medfl_error_set(MEDFL_EINVAL, "strategy '%s': expected fedavg or fedadam", name);
    return 0;
}

static int s_check_params(const strategy_params_t *p)
{
    if (p->kind != STRATEGY_FEDAVG && p->kind != STRATEGY_FEDADAM)
        return medfl_error_set(MEDFL_EINVAL, "strategy: unknown kind %d", (int)p->kind);
    if (!(p->lr > 0) || !isfinite(p->lr))
        return medfl_error_set(MEDFL_EINVAL, "strategy: server lr %g must be > 0", p->lr);
    if (p->kind == STRATEGY_FEDADAM &&
        (!(p->beta1 >= 0 && p->beta1 < 1) || !(p->beta2 >= 0 && p->beta2 < 1) || !(p->tau > 0)))
        return medfl_error_set(MEDFL_EINVAL,
                               "strategy: FedAdam needs 0 <= beta1, beta2 < 1 and tau > 0 (got %g, %g, %g)",
                               p->beta1, p->beta2, p->tau);
    return 0;
}

strategy_t *strategy_new(const strategy_params_t *p, size_t n)
{
    if (s_check_params(p) < 0) return NULL;
    if (n == 0) {
        medfl_error_set(MEDFL_EINVAL, "strategy: empty parameter vector");
        return NULL;
    }
    strategy_t *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->p = *p;
    s->n = n;
    if (p->kind == STRATEGY_FEDADAM) {
        s->m = calloc(n, sizeof *s->m);
        s->v = calloc(n, sizeof *s->v);
        if (!s->m || !s->v) goto oom;
    }
    return s;
oom:
    strategy_destroy(&s);
    medfl_error_set(MEDFL_ENOMEM, "strategy: out of memory for %zu parameters", n);
    return NULL;
}

void strategy_destroy(strategy_t **self_p)
{
    if (!self_p || !*self_p) return;
    free((*self_p)->m);
    free((*self_p)->v);
    free(*self_p);
    *self_p = NULL;
}

uint64_t strategy_steps(const strategy_t *s) { return s->steps; }
const float *strategy_m(const strategy_t *s) { return s->m; }
const float *strategy_v(const strategy_t *s) { return s->v; }

int strategy_step(strategy_t *s, float *x, const float *weighted_sum, double weight_total)
{
    if (!(weight_total > 0) || !isfinite(weight_total))
        return medfl_error_set(MEDFL_EINVAL, "server step: total weight %g must be > 0", weight_total);
    /* Validate before touching x or the moments, so a bad sum leaves the state unchanged. */
    for (size_t i = 0; i < s->n; i++)
        if (!isfinite(weighted_sum[i]))
            return medfl_error_set(MEDFL_EINVAL, "server step: weighted sum has a non-finite value at %zu", i);
    const double inv_w = 1.0 / weight_total, lr = s->p.lr;
    if (s->p.kind == STRATEGY_FEDAVG) {
        for (size_t i = 0; i < s->n; i++) x[i] = (float)((double)x[i] + lr * weighted_sum[i] * inv_w);
    } else {
        const double b1 = s->p.beta1, b2 = s->p.beta2, tau = s->p.tau;
        for (size_t i = 0; i < s->n; i++) {
            double g = weighted_sum[i] * inv_w;                       /* pseudo-gradient */
            double m = b1 * s->m[i] + (1 - b1) * g;
            double v = b2 * s->v[i] + (1 - b2) * g * g;
            s->m[i] = (float)m;
            s->v[i] = (float)v;
            x[i] = (float)((double)x[i] + lr * m / (sqrt(v) + tau));
        }
    }
    s->steps++;
    return 0;
}

/* File: "MFLOPT01" u32 kind u32 0 u64 n u64 steps f32 m[n] f32 v[n] (FedAdam only),
 * then BLAKE2b-256 of everything before it. */
#define S_OPT_MAGIC "MFLOPT01"

int strategy_save(const strategy_t *s, const char *path)
{
    size_t body = 8 + 4 + 4 + 8 + 8 + (s->m ? 8 * s->n : 0), total = body + 32;
    uint8_t *buf = malloc(total);
    if (!buf) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    memcpy(buf, S_OPT_MAGIC, 8);
    uint32_t kind = (uint32_t)s->p.kind, zero = 0;
    uint64_t n = s->n;
    memcpy(buf + 8, &kind, 4);
    memcpy(buf + 12, &zero, 4);
    memcpy(buf + 16, &n, 8);
    memcpy(buf + 24, &s->steps, 8);
    if (s->m) {
        memcpy(buf + 32, s->m, 4 * s->n);
        memcpy(buf + 32 + 4 * s->n, s->v, 4 * s->n);
    }
    crypto_generichash(buf + body, 32, buf, body, NULL, 0);
    /* 0600: the optimizer state is private working data of the aggregator. */
    int rc = atomic_file_replace(path, buf, total, 0600);
    free(buf);
    return rc;
}

strategy_t *strategy_load(const char *path, const strategy_params_t *p, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s", path,
                        strerror(errno));
        return NULL;
    }
    size_t body = 32 + (p->kind == STRATEGY_FEDADAM ? 8 * n : 0), total = body + 32;
    uint8_t *buf = malloc(total + 1);
    strategy_t *s = NULL;
    if (!buf) {
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    size_t got = fread(buf, 1, total + 1, f);
    uint8_t sum[32];
    uint32_t kind;
    uint64_t fn, steps;
    if (got != total || memcmp(buf, S_OPT_MAGIC, 8) != 0) {
        medfl_error_set(MEDFL_EFORMAT, "%s: not a server optimizer state for %zu parameters (%s)",
                        path, n, p->kind == STRATEGY_FEDADAM ? "fedadam" : "fedavg");
        goto done;
    }
    crypto_generichash(sum, 32, buf, body, NULL, 0);
    if (sodium_memcmp(sum, buf + body, 32) != 0) {
        medfl_error_set(MEDFL_EFORMAT, "%s: checksum mismatch (damaged file)", path);
        goto done;
    }
    memcpy(&kind, buf + 8, 4);
    memcpy(&fn, buf + 16, 8);
    memcpy(&steps, buf + 24, 8);
    if (kind != (uint32_t)p->kind || fn != n) {
        medfl_error_set(MEDFL_EFORMAT, "%s: state of kind %u over %llu parameters, expected kind %d over %zu",
                        path, kind, (unsigned long long)fn, (int)p->kind, n);
        goto done;
    }
    if (!(s = strategy_new(p, n))) goto done;
    s->steps = steps;
    if (s->m) {
        memcpy(s->m, buf + 32, 4 * n);
        memcpy(s->v, buf + 32 + 4 * n, 4 * n);
    }
done:
    fclose(f);
    free(buf);
    return s;
}

void strategy_state_path(const char *versions_dir, uint64_t version, char *out, size_t size)
{
    snprintf(out, size, "%s/opt_v%06llu.bin", versions_dir, (unsigned long long)version);
}

/* ---------------------------------------------------------------- weighting */

void contrib_params_default(contrib_params_t *p)
{
    p->floor_frac = 0.2;
    p->cap = 0.5;
    p->z0 = 2.0;
    p->ema_alpha = 0.3;
    p->spread_floor = 0.1;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double s_median(double *tmp, size_t n)
{
    qsort(tmp, n, sizeof *tmp, s_cmp_double);
    return n % 2 ? tmp[n / 2] : 0.5 * (tmp[n / 2 - 1] + tmp[n / 2]);
}

void contrib_robust_z(const double *x, size_t n, double min_scale, double *z)
{
    if (n == 0) return;
    double *tmp = malloc(n * sizeof *tmp);
    if (!tmp) { /* no room to sort: treat everyone as typical rather than fail a round */
        for (size_t i = 0; i < n; i++) z[i] = 0;
        return;
    }
    memcpy(tmp, x, n * sizeof *tmp);
    double med = s_median(tmp, n);
    for (size_t i = 0; i < n; i++) tmp[i] = fabs(x[i] - med);
    double mad = s_median(tmp, n);
    free(tmp);
    double scale = fmax(fmax(1.4826 * mad, min_scale), 1e-12);
    for (size_t i = 0; i < n; i++) z[i] = (x[i] - med) / scale;
}

double contrib_reliability_update(double r_prev, bool completed, double alpha)
{
    if (!(r_prev >= 0 && r_prev <= 1)) r_prev = 1;
    return (1 - alpha) * r_prev + alpha * (completed ? 1.0 : 0.0);
}

static double s_clamp(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

int contrib_weights(const contrib_params_t *p, const contrib_input_t *in, size_t n,
                    contrib_output_t *out)
{
    if (n == 0) return medfl_error_set(MEDFL_EINVAL, "contribution weights: no nodes");
    if (!(p->floor_frac > 0 && p->floor_frac <= 1) || !(p->cap > 0 && p->cap <= 1) || !(p->z0 >= 0) ||
        !(p->spread_floor >= 0))
        return medfl_error_set(MEDFL_EINVAL,
                               "contribution weights: need 0 < floor_frac <= 1, 0 < cap <= 1, z0 >= 0, spread_floor >= 0");
    for (size_t i = 0; i < n; i++)
        if (!(in[i].n_samples >= 0) || !isfinite(in[i].n_samples) ||
            !(in[i].reliability >= 0 && in[i].reliability <= 1) || !(in[i].loo > 0 && in[i].loo <= 1) ||
            (in[i].has_quality && !isfinite(in[i].quality)))
            return medfl_error_set(MEDFL_EINVAL,
                                   "contribution weights: node '%s': n_samples >= 0, reliability in [0,1], "
                                   "loo in (0,1] and a finite quality are required",
                                   in[i].node ? in[i].node : "?");
    /* Robust z over the nodes that reported; the others are neutral. */
    double *q = malloc(n * sizeof *q), *z = malloc(n * sizeof *z);
    if (!q || !z) {
        free(q);
        free(z);
        return medfl_error_set(MEDFL_ENOMEM, "contribution weights: out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (in[i].has_quality) q[k++] = in[i].quality;
    if (k >= 3) { /* fewer than 3 reports cannot tell an outlier from the majority */
        double *tmp = malloc(k * sizeof *tmp);
        double med = 0;
        if (tmp) {
            memcpy(tmp, q, k * sizeof *tmp);
            med = s_median(tmp, k);
            free(tmp);
        }
        contrib_robust_z(q, k, p->spread_floor * fabs(med), z);
    } else {
        for (size_t i = 0; i < k; i++) z[i] = 0;
    }
    k = 0;
    double raw_sum = 0;
    for (size_t i = 0; i < n; i++) {
        contrib_output_t *o = &out[i];
        o->size = sqrt(in[i].n_samples);
        o->z = in[i].has_quality ? z[k++] : 0;
        double az = fabs(o->z);
        o->quality = az <= p->z0 ? 1.0 : exp(-(az - p->z0));
        o->reliability = in[i].reliability;
        o->loo = in[i].loo;
        o->raw = o->size * o->quality * o->reliability * o->loo;
        raw_sum += o->raw;
    }
    free(q);
    free(z);
    const double w_min = p->floor_frac / (double)n, w_max = fmax(p->cap, 1.0 / (double)n);
    if (!(raw_sum > 0)) {
        for (size_t i = 0; i < n; i++) out[i].weight = 1.0 / (double)n;
        return 0;
    }
    /* sum_i clamp(k raw_i, w_min, w_max) is continuous and non-decreasing in k, from
     * n w_min <= 1 at k = 0 to >= 1 for k large: bisect for the k where it reaches 1.
     * The result depends on the multiset of inputs only, so it is order-independent up to
     * floating-point summation, and exactly reproducible for the same order. */
    double lo = 0, hi = 1.0 / raw_sum;
    for (int it = 0; it < 200; it++) {
        double sum = 0;
        for (size_t i = 0; i < n; i++) sum += s_clamp(hi * out[i].raw, w_min, w_max);
        if (sum >= 1) break;
        hi *= 2;
    }
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi), sum = 0;
        for (size_t i = 0; i < n; i++) sum += s_clamp(mid * out[i].raw, w_min, w_max);
        if (sum < 1) lo = mid;
        else hi = mid;
    }
    double total = 0;
    for (size_t i = 0; i < n; i++) total += (out[i].weight = s_clamp(hi * out[i].raw, w_min, w_max));
    for (size_t i = 0; i < n; i++) out[i].weight /= total; /* removes the bisection's last ulps */
    return 0;
}

int contrib_leave_one_out(const float *x0, const float *const *deltas, const double *w, size_t k,
                          size_t n, contrib_eval_fn eval, void *ctx, double z0, double *scores,
                          double *loo)
{
    if (k < 2) return medfl_error_set(MEDFL_EINVAL, "leave-one-out: needs at least 2 updates, got %zu", k);
    double wsum = 0;
    for (size_t u = 0; u < k; u++) {
        if (!(w[u] > 0) || !isfinite(w[u]))
            return medfl_error_set(MEDFL_EINVAL, "leave-one-out: weight of update %zu must be > 0", u);
        wsum += w[u];
    }
    double *sum = calloc(n, sizeof *sum);
    float *x = malloc(n * sizeof *x);
    int rc = -1;
    if (!sum || !x) {
        medfl_error_set(MEDFL_ENOMEM, "leave-one-out: out of memory");
        goto done;
    }
    for (size_t u = 0; u < k; u++)
        for (size_t i = 0; i < n; i++) sum[i] += w[u] * (double)deltas[u][i];
    double full_loss = 0, acc = 0;
    for (size_t i = 0; i < n; i++) x[i] = (float)((double)x0[i] + sum[i] / wsum);
    if (eval(ctx, x, n, &full_loss, &acc) < 0) goto done;
    for (size_t u = 0; u < k; u++) {
        double wo = wsum - w[u], loss = 0;
        for (size_t i = 0; i < n; i++)
            x[i] = (float)((double)x0[i] + (sum[i] - w[u] * (double)deltas[u][i]) / wo);
        if (eval(ctx, x, n, &loss, &acc) < 0) goto done;
        if (!isfinite(loss)) {
            medfl_error_set(MEDFL_EINVAL, "leave-one-out: evaluator returned a non-finite loss");
            goto done;
        }
        scores[u] = loss - full_loss;
    }
    contrib_robust_z(scores, k, 0.01 * fabs(full_loss) + 1e-9, loo);
    for (size_t u = 0; u < k; u++) loo[u] = loo[u] < -z0 ? exp(loo[u] + z0) : 1.0;
    for (size_t u = 0; u < k; u++)
        if (loo[u] < 1e-6) loo[u] = 1e-6; /* stays a valid (0, 1] factor; the weight floor does the rest */
    rc = 0;
done:
    free(sum);
    free(x);
    return rc;
}
