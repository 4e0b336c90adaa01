/* `medfl-node privacy`: the privacy officer's tool. Two modes:
 *
 *   what-if   --sample-rate Q --steps N --delta D (--noise-multiplier S | --target-epsilon E)
 *             prints the ε a planned training would spend, or the σ it needs for a target;
 *   ledger    -c node.conf | --ledger FILE --budget E --delta D
 *             prints spent, remaining and the per-round history of this node, and with
 *             --sample-rate/--steps (and optionally --noise-multiplier) whether a planned
 *             round would fit the remaining budget.
 *
 * WHY a separate reader for node.conf: this command must work on a node whose daemon is
 * stopped or misconfigured elsewhere, so it reads only the three keys it needs
 * (state_dir, privacy.epsilon_budget, privacy.delta), each checked through an option table
 * with the same bounds and messages as the daemon's, and ignores the rest of the file. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/config.h"
#include "common/dp.h"
#include "common/error.h"
#include "node/commands.h"
#include "node/ledger.h"
#include "node/node_config.h"

#define PROG "medfl-node privacy"
#define LEDGER_FILE "privacy_ledger.db"

typedef struct {
    char state_dir[CFG_STR_MAX];
    double epsilon_budget;
    bool dp;                 /* privacy.enabled */
    double noise_multiplier; /* privacy.noise_multiplier, the per-round plan's sigma */
    double sample_rate;      /* privacy.sample_rate, the plan's q */
    double delta;
} privacy_conf_t;

static const cfg_option_t s_privacy_options[] = {
    /* Same default as the daemon's node_config_table. */
    {"state_dir", CFG_PATH, offsetof(privacy_conf_t, state_dir), 0, 0, "/var/lib/medfl/node",
     false, NULL, "folder for the node's state (privacy ledger, received model versions)"},
    /* Same bounds and defaults as the node table's rows (node/train.h), so the tool and the
     * daemon always agree on the budget a config means. */
    {"privacy.epsilon_budget", CFG_DOUBLE, offsetof(privacy_conf_t, epsilon_budget), 1e-3, 1e3,
     "10", true, NULL, "total epsilon this node may ever spend"},
    {"privacy.delta", CFG_DOUBLE, offsetof(privacy_conf_t, delta), 1e-15, 0.1, "1e-5", false,
     NULL, "delta of the (epsilon, delta) guarantee; well below 1 / number of records"},
    {"privacy.enabled", CFG_BOOL, offsetof(privacy_conf_t, dp), 0, 0, "false", false, NULL,
     "train with DP-SGD"},
    {"privacy.noise_multiplier", CFG_DOUBLE, offsetof(privacy_conf_t, noise_multiplier), 0, 1e6,
     "0", false, NULL, "sigma"},
    {"privacy.sample_rate", CFG_DOUBLE, offsetof(privacy_conf_t, sample_rate), 0, 1, "0", false,
     NULL, "Poisson sampling rate q"},
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

static void s_usage(FILE *out)
{
    fprintf(out,
            "Usage:\n"
            "  " PROG " --sample-rate Q --steps N --delta D --noise-multiplier S\n"
            "        prints the epsilon spent by N steps of DP-SGD at sampling rate Q\n"
            "  " PROG " --sample-rate Q --steps N --delta D --target-epsilon E\n"
            "        prints the noise multiplier that keeps those N steps within E\n"
            "  " PROG " -c node.conf            (or --ledger FILE --budget E --delta D)\n"
            "        prints this node's spent and remaining budget and its round history;\n"
            "        add --sample-rate Q --steps N [--noise-multiplier S] to check a plan;\n"
            "        add --init to create an empty ledger (pins delta before the first round);\n"
            "        with -c also the plan of the config (privacy.noise_multiplier,\n"
            "        privacy.sample_rate): epsilon per round of --round-steps N DP-SGD steps\n"
            "        (default 20, the aggregator's federation.local_steps) and the rounds the\n"
            "        remaining budget affords; before the first round over an empty ledger\n"
            "Options:\n"
            "  --conversion improved|classic   RDP to (epsilon, delta) conversion\n"
            "                                  (default improved: Balle et al. 2020, as Opacus)\n"
            "  --tolerance T                   epsilon tolerance of the noise search (0.01)\n");
}

/* Usage error: message, hint, exit status 2. */
static int s_bad(const char *fmt, const char *arg)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(" PROG " --help for usage)\n");
    return 2;
}

static int s_number(const char *opt, const char *text, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v)) return -1;
    (void)opt;
    *out = v;
    return 0;
}

/* Reads the privacy keys of a node config, ignoring the others (see the file comment). */
static int s_read_node_conf(const char *path, privacy_conf_t *out)
{
    memset(out, 0, sizeof *out);
    return cfg_load_subset(s_privacy_options, node_config_table, out, path);
}

static int s_print_entry(const ledger_entry_t *e, void *arg)
{
    (void)arg;
    char when[32];
    time_t t = (time_t)e->timestamp;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    /* no-dp: a raw update the node's policy let out (epsilon inf, docs/privacy.md §11) */
    const char *status = e->no_dp ? "no-dp"
                         : e->status == LEDGER_ADMITTED ? "admitted" : "declined";
    printf("  round %lld  %s  %-8s  q=%g sigma=%g steps=%lld  epsilon=%.4f  budget=%g%s%s\n",
           (long long)e->round_id, when, status, e->q, e->sigma,
           (long long)e->steps, e->epsilon, e->budget, e->reason[0] ? "  reason: " : "",
           e->reason);
    return 0;
}

typedef struct {
    double q, sigma, target, delta, budget, tol;
    long long steps, round_steps;
    bool has_q, has_sigma, has_target, has_delta, has_budget, has_steps, init;
    const char *config, *ledger;
    dp_conversion_t conv;
} privacy_args_t;

#define S_ROUNDS_MAX 10000000LL
/* DP-SGD steps of one round when --round-steps is not given: the aggregator's default
 * federation.local_steps (its RoundStart sets a live round's). */
#define S_ROUND_STEPS 20

/* Epsilon of k rounds of `steps` DP-SGD steps each at the config's (q, sigma). */
static int s_rounds_epsilon(const privacy_conf_t *pc, long long steps, long long k, double delta,
                            dp_conversion_t conv, double *eps)
{
    size_t n;
    const double *orders = dp_default_orders(&n);
    double *rdp = calloc(n, sizeof *rdp), order;
    if (!rdp) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    int rc = dp_compute_rdp(pc->sample_rate, pc->noise_multiplier, (int64_t)(k * steps), orders,
                            n, rdp) != 0 ||
             dp_rdp_to_epsilon(orders, rdp, n, delta, conv, eps, &order) != 0 ? -1 : 0;
    free(rdp);
    return rc;
}

/* The plan a config implies, printed beside the ledger: epsilon of one round of `steps`
 * DP-SGD steps at the config's q and sigma, and how many such rounds the remaining budget
 * affords (composition by RDP over all of them, as the ledger accounts). The aggregator's
 * RoundStart decides a live round's q, sigma and steps; the config's values are what this
 * node's officer planned with (privacy.noise_multiplier, privacy.sample_rate). */
static int s_print_plan(const privacy_conf_t *pc, double remaining, double delta,
                        long long steps, dp_conversion_t conv)
{
    if (!pc->dp) {
        printf("plan: privacy.enabled = false: rounds spend no epsilon (no DP guarantee)\n");
        return 0;
    }
    if (!(pc->noise_multiplier > 0) || !(pc->sample_rate > 0)) {
        printf("plan: privacy.noise_multiplier and privacy.sample_rate not both set in the "
               "config: the per-round epsilon depends on the aggregator's RoundStart\n");
        return 0;
    }
    double eps1;
    long long lo = 0, hi = 1;
    if (s_rounds_epsilon(pc, steps, 1, delta, conv, &eps1) != 0) return -1;
    for (double e; hi < S_ROUNDS_MAX; lo = hi, hi *= 2) {
        if (s_rounds_epsilon(pc, steps, hi, delta, conv, &e) != 0) return -1;
        if (e > remaining) break;
    }
    while (hi - lo > 1) { /* lo rounds fit, hi do not */
        long long mid = lo + (hi - lo) / 2;
        double e;
        if (s_rounds_epsilon(pc, steps, mid, delta, conv, &e) != 0) return -1;
        *(e <= remaining ? &lo : &hi) = mid;
    }
    printf("plan_sample_rate: %g\nplan_noise_multiplier: %g\nplan_steps_per_round: %lld\n",
           pc->sample_rate, pc->noise_multiplier, steps);
    printf("plan_epsilon_per_round: %.6f\n", eps1);
    printf("plan_rounds_affordable: %lld%s\n", lo, lo >= S_ROUNDS_MAX ? "+" : "");
    return 0;
}

static int s_ledger_mode(const privacy_args_t *a)
{
    char path[CFG_STR_MAX + 64];
    double budget = a->budget, delta = a->delta;
    privacy_conf_t pc;
    memset(&pc, 0, sizeof pc);
    if (a->config) {
        if (s_read_node_conf(a->config, &pc) != 0) return cli_fail(PROG);
        snprintf(path, sizeof path, "%s/%s", pc.state_dir, LEDGER_FILE);
        budget = pc.epsilon_budget;
        delta = pc.delta;
    } else {
        snprintf(path, sizeof path, "%s", a->ledger);
    }
    /* Before the first round the node has no ledger yet: the officer still sees the plan,
     * over an empty ledger that is never written (SQLite's :memory:). */
    bool absent = a->config && !a->init && access(path, F_OK) != 0;
    ledger_t *l = ledger_open(absent ? ":memory:" : path, budget, delta,
                              a->init || absent ? LEDGER_CREATE : LEDGER_OPEN_EXISTING);
    if (!l) return cli_fail(PROG);
    double spent, order, remaining;
    int64_t adm = 0, dec = 0;
    if (ledger_spent(l, &spent, &order) != 0 || ledger_remaining(l, &remaining) != 0 ||
        ledger_count(l, &adm, &dec) != 0) {
        ledger_destroy(&l);
        return cli_fail(PROG);
    }
    printf("ledger: %s%s\n", path, absent ? " (not created yet: the node creates it before its "
                                            "first round; shown empty)" : "");
    printf("delta: %g\n", delta);
    printf("budget: %g\n", budget);
    printf("spent: %.6f\n", spent);
    printf("remaining: %.6f\n", remaining);
    if (!isnan(order)) printf("optimal_order: %g\n", order);
    printf("rounds_admitted: %lld\n", (long long)adm);
    printf("rounds_declined: %lld\n", (long long)dec);
    printf("history:\n");
    int rc = ledger_foreach(l, s_print_entry, NULL);
    if (rc == 0 && a->has_q && a->has_steps) {
        if (a->has_sigma) {
            bool exceeds;
            double after;
            rc = ledger_would_exceed(l, a->q, a->sigma, a->steps, &exceeds, &after);
            if (rc == 0) {
                printf("planned_epsilon: %.6f\n", after);
                printf("planned_round: %s\n", exceeds ? "exceeds budget (would be declined)" : "fits");
            }
        } else {
            double sigma;
            rc = ledger_noise_for_remaining(l, a->q, a->steps, &sigma);
            if (rc == 0) printf("noise_multiplier_for_remaining: %.6g\n", sigma);
        }
    }
    if (rc == 0 && a->config)
        rc = s_print_plan(&pc, remaining, delta, a->round_steps ? a->round_steps : S_ROUND_STEPS,
                          a->conv);
    ledger_destroy(&l);
    return rc == 0 ? 0 : cli_fail(PROG);
}

static int s_whatif_mode(const privacy_args_t *a)
{
    if (a->has_sigma) {
        dp_accountant_t *acc = dp_accountant_new(NULL, 0);
        double eps, order;
        if (!acc || dp_accountant_add(acc, a->q, a->sigma, a->steps) != 0 ||
            dp_accountant_epsilon(acc, a->delta, a->conv, &eps, &order) != 0) {
            dp_accountant_destroy(&acc);
            return cli_fail(PROG);
        }
        dp_accountant_destroy(&acc);
        printf("epsilon: %.10g\n", eps);
        if (!isnan(order)) printf("optimal_order: %g\n", order);
        printf("conversion: %s\n", dp_conversion_name(a->conv));
        return 0;
    }
    double sigma, eps, order;
    if (dp_noise_multiplier(NULL, a->target, a->q, a->steps, a->delta, a->conv, a->tol,
                            &sigma) != 0)
        return cli_fail(PROG);
    dp_accountant_t *acc = dp_accountant_new(NULL, 0);
    if (!acc || dp_accountant_add(acc, a->q, sigma, a->steps) != 0 ||
        dp_accountant_epsilon(acc, a->delta, a->conv, &eps, &order) != 0) {
        dp_accountant_destroy(&acc);
        return cli_fail(PROG);
    }
    dp_accountant_destroy(&acc);
    printf("noise_multiplier: %.10g\n", sigma);
    printf("epsilon: %.10g\n", eps);
    if (!isnan(order)) printf("optimal_order: %g\n", order);
    printf("conversion: %s\n", dp_conversion_name(a->conv));
    return 0;
}

int cmd_privacy(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        s_usage(stdout);
        return 0;
    }
    enum { O_Q = 1000, O_SIGMA, O_STEPS, O_DELTA, O_TARGET, O_CONV, O_TOL, O_LEDGER, O_BUDGET, O_INIT, O_RSTEPS };
    static const struct option opts[] = {
        {"sample-rate", required_argument, NULL, O_Q},
        {"noise-multiplier", required_argument, NULL, O_SIGMA},
        {"steps", required_argument, NULL, O_STEPS},
        {"delta", required_argument, NULL, O_DELTA},
        {"target-epsilon", required_argument, NULL, O_TARGET},
        {"conversion", required_argument, NULL, O_CONV},
        {"tolerance", required_argument, NULL, O_TOL},
        {"ledger", required_argument, NULL, O_LEDGER},
        {"budget", required_argument, NULL, O_BUDGET},
        {"init", no_argument, NULL, O_INIT},
        {"round-steps", required_argument, NULL, O_RSTEPS},
        {"config", required_argument, NULL, 'c'},
        {NULL, 0, NULL, 0},
    };
    privacy_args_t a = {.conv = DP_CONV_IMPROVED, .tol = 0.01};
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":c:", opts, NULL)) != -1) {
        double v = 0;
        const char *name = NULL;
        switch (c) {
        case O_Q: name = "--sample-rate"; break;
        case O_SIGMA: name = "--noise-multiplier"; break;
        case O_STEPS: name = "--steps"; break;
        case O_DELTA: name = "--delta"; break;
        case O_TARGET: name = "--target-epsilon"; break;
        case O_TOL: name = "--tolerance"; break;
        case O_BUDGET: name = "--budget"; break;
        case O_RSTEPS: name = "--round-steps"; break;
        case O_CONV:
            if (dp_conversion_parse(optarg, &a.conv) != 0)
                return s_bad("--conversion '%s': expected 'improved' or 'classic'", optarg);
            continue;
        case O_LEDGER: a.ledger = optarg; continue;
        case O_INIT: a.init = true; continue;
        case 'c': a.config = optarg; continue;
        case ':': return s_bad("option %s needs a value", argv[optind - 1]);
        default: return s_bad("unknown option '%s'", argv[optind - 1]);
        }
        if (s_number(name, optarg, &v) != 0) {
            fprintf(stderr, PROG ": %s '%s': expected a number\n(" PROG " --help for usage)\n",
                    name, optarg);
            return 2;
        }
        switch (c) {
        case O_Q:
            if (!(v >= 0 && v <= 1)) return s_bad("--sample-rate %s: must be in [0, 1]", optarg);
            a.q = v; a.has_q = true; break;
        case O_SIGMA:
            if (!(v >= 0)) return s_bad("--noise-multiplier %s: must be >= 0", optarg);
            a.sigma = v; a.has_sigma = true; break;
        case O_STEPS:
            if (!(v >= 0 && v <= 1e15 && v == floor(v)))
                return s_bad("--steps %s: must be a whole number >= 0", optarg);
            a.steps = (long long)v; a.has_steps = true; break;
        case O_DELTA:
            if (!(v > 0 && v < 1)) return s_bad("--delta %s: must be in (0, 1)", optarg);
            a.delta = v; a.has_delta = true; break;
        case O_TARGET:
            if (!(v > 0)) return s_bad("--target-epsilon %s: must be > 0", optarg);
            a.target = v; a.has_target = true; break;
        case O_TOL:
            if (!(v > 0 && v < 1)) return s_bad("--tolerance %s: must be in (0, 1)", optarg);
            a.tol = v; break;
        case O_BUDGET:
            if (!(v > 0)) return s_bad("--budget %s: must be > 0", optarg);
            a.budget = v; a.has_budget = true; break;
        case O_RSTEPS:
            if (!(v >= 1 && v <= 1e9 && v == floor(v)))
                return s_bad("--round-steps %s: must be a whole number >= 1", optarg);
            a.round_steps = (long long)v; break;
        }
    }
    if (optind < argc) return s_bad("unexpected argument '%s'", argv[optind]);
    if (a.has_sigma && a.has_target)
        return s_bad("%s", "give --noise-multiplier or --target-epsilon, not both");

    if (a.config || a.ledger) {
        if (a.config && a.ledger)
            return s_bad("%s", "give -c node.conf or --ledger FILE, not both");
        if (a.config && (a.has_budget || a.has_delta))
            return s_bad("%s", "with -c the budget and delta come from the config; drop --budget/--delta");
        if (a.ledger && !(a.has_budget && a.has_delta))
            return s_bad("%s", "--ledger FILE needs --budget E and --delta D");
        if (a.has_target) return s_bad("%s", "--target-epsilon is for the what-if mode; with a ledger the target is the remaining budget");
        if ((a.has_q || a.has_sigma || a.has_steps) && !(a.has_q && a.has_steps))
            return s_bad("%s", "a planned round needs --sample-rate and --steps");
        return s_ledger_mode(&a);
    }
    if (!a.has_q) return s_bad("%s", "missing --sample-rate Q (or -c node.conf for the ledger)");
    if (!a.has_steps) return s_bad("%s", "missing --steps N");
    if (!a.has_delta) return s_bad("%s", "missing --delta D");
    if (!a.has_sigma && !a.has_target)
        return s_bad("%s", "missing --noise-multiplier S or --target-epsilon E");
    if (a.has_budget || a.init)
        return s_bad("%s", "--budget and --init are for the ledger mode (--ledger FILE or -c)");
    return s_whatif_mode(&a);
}
