/* The federation report: charts collected as (x, series, y) points, rendered to inline SVG.
 * Hand-written SVG keeps the page self-contained and the dependency list short; the charts
 * are few and simple (lines over rounds, grouped bars), so a plotting library would buy
 * nothing. Missing values (a node that skipped a round) leave gaps rather than zeros, because
 * a zero ε or weight would be a false statement.
 *
 * Readability rules, each from a report that misled: charts take the page's width (viewBox,
 * width 100%); series differ in colour AND dash AND marker, and the first drawn is the widest,
 * so two series with equal values show as one line edged in the other's colour (and the
 * legend says they are equal) instead of one hiding the other; bytes use a log axis, where
 * a 22 kB upload stays visible next to a 630 kB download; every chart is by round, the
 * version each round produced written under it; the scores follow the head's lineage, and a
 * branch a rollback abandoned is its own dotted series rather than part of the line. */
#include "aggregator/report.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/agg_config.h"
#include "aggregator/contrib_db.h"
#include "aggregator/versions.h"
#include "common/atomic_file.h"
#include "common/cli.h"
#include "common/error.h"
#include "common/version_store.h"

#define REPORT_NAME_MAX 96
#define REPORT_MAX_CHARTS 16
#define REPORT_MAX_FACTS 32
#define REPORT_MAX_CHANGES 8

typedef struct {
    double x, y;
    int series;
} report_point_t;

typedef struct {
    char name[REPORT_NAME_MAX];
    unsigned flags;
    int branch_of; /* series index, -1 for none */
} report_series_t;

struct report_chart_t {
    char id[REPORT_NAME_MAX], title[REPORT_NAME_MAX * 2], x_label[REPORT_NAME_MAX],
        y_label[REPORT_NAME_MAX];
    bool bars;
    report_y_scale_t scale;
    report_series_t *series;
    size_t n_series, cap_series;
    report_point_t *points;
    size_t n_points, cap_points;
};

typedef struct {
    uint64_t round, version;
    bool abandoned;
} report_note_t;

typedef struct {
    char metric[REPORT_NAME_MAX], baseline_at[REPORT_NAME_MAX], latest_at[REPORT_NAME_MAX];
    double baseline, latest;
} report_change_t;

struct report_t {
    char title[REPORT_NAME_MAX * 2];
    report_chart_t charts[REPORT_MAX_CHARTS];
    size_t n_charts;
    char facts[REPORT_MAX_FACTS][2][REPORT_NAME_MAX];
    size_t n_facts;
    report_change_t changes[REPORT_MAX_CHANGES];
    size_t n_changes;
    report_note_t *notes; /* sorted by round */
    size_t n_notes, cap_notes;
};

/* Colour-blind-safe palette (Okabe-Ito), then a few more distinct hues; with it a dash
 * pattern and a marker shape per series, so no two of the first 40 series look alike even
 * in grey print. */
static const char *const s_palette[] = {"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7",
                                        "#56B4E9", "#F0E442", "#000000", "#7F3C8D", "#11A579"};
#define PALETTE_N (sizeof s_palette / sizeof s_palette[0])
static const char *const s_dash[] = {"", "12 5", "3 4", "14 4 3 4", "7 3", "2 7", "18 4", "8 3 2 3 2 3"};
#define DASH_N (sizeof s_dash / sizeof s_dash[0])
#define BRANCH_DASH "1.5 5"
#define MARKER_N 5

report_t *report_new(const char *title)
{
    report_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "report: out of memory");
        return NULL;
    }
    snprintf(self->title, sizeof self->title, "%s", title ? title : "medfl federation report");
    return self;
}

void report_destroy(report_t **self_p)
{
    if (!self_p || !*self_p) return;
    report_t *self = *self_p;
    for (size_t i = 0; i < self->n_charts; i++) {
        free(self->charts[i].series);
        free(self->charts[i].points);
    }
    free(self->notes);
    free(self);
    *self_p = NULL;
}

report_chart_t *report_add_chart(report_t *self, const char *id, const char *title,
                                 const char *x_label, const char *y_label, bool bars)
{
    if (self->n_charts == REPORT_MAX_CHARTS) {
        medfl_error_set(MEDFL_EINVAL, "report: more than %d charts", REPORT_MAX_CHARTS);
        return NULL;
    }
    report_chart_t *c = &self->charts[self->n_charts++];
    memset(c, 0, sizeof *c);
    snprintf(c->id, sizeof c->id, "%s", id);
    snprintf(c->title, sizeof c->title, "%s", title);
    snprintf(c->x_label, sizeof c->x_label, "%s", x_label);
    snprintf(c->y_label, sizeof c->y_label, "%s", y_label);
    c->bars = bars;
    return c;
}

void report_chart_set_y_scale(report_chart_t *c, report_y_scale_t scale) { c->scale = scale; }

static int s_series_find(const report_chart_t *c, const char *name)
{
    for (size_t i = 0; i < c->n_series; i++)
        if (strcmp(c->series[i].name, name) == 0) return (int)i;
    return -1;
}

static int s_series_index(report_chart_t *c, const char *name)
{
    int found = s_series_find(c, name);
    if (found >= 0) return found;
    if (c->n_series == c->cap_series) {
        size_t cap = c->cap_series ? c->cap_series * 2 : 8;
        void *p = realloc(c->series, cap * sizeof *c->series);
        if (!p) return medfl_error_set(MEDFL_ENOMEM, "report: out of memory");
        c->series = p;
        c->cap_series = cap;
    }
    report_series_t *s = &c->series[c->n_series];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->branch_of = -1;
    return (int)c->n_series++;
}

int report_add_series(report_chart_t *c, const char *name, unsigned flags, const char *branch_of)
{
    int of = -1;
    if (branch_of && (of = s_series_find(c, branch_of)) < 0)
        return medfl_error_set(MEDFL_EINVAL, "report: chart '%s': series '%s' is a branch of "
                               "'%s', which does not exist", c->id, name, branch_of);
    int si = s_series_index(c, name);
    if (si < 0) return -1;
    c->series[si].flags = flags;
    c->series[si].branch_of = of;
    return 0;
}

int report_add_point(report_chart_t *c, double x, const char *series, double y)
{
    if (!isfinite(x)) return medfl_error_set(MEDFL_EINVAL, "report: non-finite x in '%s'", c->id);
    if (!isfinite(y)) return 0; /* a gap, not a point */
    int si = s_series_index(c, series);
    if (si < 0) return -1;
    /* The same (x, series) again replaces the earlier value. */
    for (size_t i = 0; i < c->n_points; i++) {
        if (c->points[i].x == x && c->points[i].series == si) {
            c->points[i].y = y;
            return 0;
        }
    }
    if (c->n_points == c->cap_points) {
        size_t cap = c->cap_points ? c->cap_points * 2 : 64;
        void *p = realloc(c->points, cap * sizeof *c->points);
        if (!p) return medfl_error_set(MEDFL_ENOMEM, "report: out of memory");
        c->points = p;
        c->cap_points = cap;
    }
    c->points[c->n_points++] = (report_point_t){x, y, si};
    return 0;
}

int report_add_fact(report_t *self, const char *name, const char *value)
{
    if (self->n_facts == REPORT_MAX_FACTS)
        return medfl_error_set(MEDFL_EINVAL, "report: more than %d facts", REPORT_MAX_FACTS);
    snprintf(self->facts[self->n_facts][0], REPORT_NAME_MAX, "%s", name);
    snprintf(self->facts[self->n_facts][1], REPORT_NAME_MAX, "%s", value);
    self->n_facts++;
    return 0;
}

int report_add_change(report_t *self, const char *metric, double baseline, const char *baseline_at,
                      double latest, const char *latest_at)
{
    if (self->n_changes == REPORT_MAX_CHANGES)
        return medfl_error_set(MEDFL_EINVAL, "report: more than %d quality rows", REPORT_MAX_CHANGES);
    report_change_t *c = &self->changes[self->n_changes++];
    snprintf(c->metric, sizeof c->metric, "%s", metric);
    snprintf(c->baseline_at, sizeof c->baseline_at, "%s", baseline_at);
    snprintf(c->latest_at, sizeof c->latest_at, "%s", latest_at);
    c->baseline = baseline;
    c->latest = latest;
    return 0;
}

static const report_note_t *s_note(const report_t *self, double round)
{
    size_t lo = 0, hi = self->n_notes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if ((double)self->notes[mid].round < round) lo = mid + 1;
        else hi = mid;
    }
    return lo < self->n_notes && (double)self->notes[lo].round == round ? &self->notes[lo] : NULL;
}

int report_note_round(report_t *self, uint64_t round, uint64_t version, bool abandoned)
{
    size_t i = self->n_notes;
    while (i > 0 && self->notes[i - 1].round > round) i--;
    if (i > 0 && self->notes[i - 1].round == round) {
        self->notes[i - 1] = (report_note_t){round, version, abandoned};
        return 0;
    }
    if (self->n_notes == self->cap_notes) {
        size_t cap = self->cap_notes ? 2 * self->cap_notes : 64;
        report_note_t *n = realloc(self->notes, cap * sizeof *n);
        if (!n) return medfl_error_set(MEDFL_ENOMEM, "report: out of memory");
        self->notes = n;
        self->cap_notes = cap;
    }
    memmove(&self->notes[i + 1], &self->notes[i], (self->n_notes - i) * sizeof *self->notes);
    self->notes[i] = (report_note_t){round, version, abandoned};
    self->n_notes++;
    return 0;
}

/* ---- the version tree (manifests of the version store) --------------------------------- */

typedef struct {
    uint64_t version, parent, round;
    bool main; /* on the line the head descends from */
} s_ver_t;

typedef struct {
    s_ver_t *v; /* sorted by version */
    size_t n;
    uint64_t head;
    bool present;
} s_tree_t;

static s_ver_t *s_tree_find(const s_tree_t *t, uint64_t version)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->v[mid].version < version) lo = mid + 1;
        else hi = mid;
    }
    return lo < t->n && t->v[lo].version == version ? &t->v[lo] : NULL;
}

/* The oldest version of the abandoned branch v is on (its parent is on the main line). */
static const s_ver_t *s_branch_root(const s_tree_t *t, const s_ver_t *v)
{
    const s_ver_t *p;
    while ((p = s_tree_find(t, v->parent)) && !p->main) v = p;
    return v;
}

/* Reads every manifest's version, parent and round, and marks the head's lineage. Nothing is
 * verified (`versions verify` does that): the report shows history, it does not trust it. A
 * missing folder is not an error: the scores are then plotted by version number. */
static int s_tree_load(s_tree_t *t, const char *state_dir)
{
    char dir[CFG_STR_MAX + 32];
    versions_dir(state_dir, dir, sizeof dir);
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (errno == ENOENT) return 0;
        return medfl_error_set(MEDFL_EIO, "%s: %s", dir, strerror(errno));
    }
    vs_store_t *s = vs_store_open_readonly(dir);
    if (!s) return -1;
    size_t n = 0;
    const uint64_t *vs = vs_store_versions(s, &n);
    int rc = -1;
    if (!(t->v = calloc(n ? n : 1, sizeof *t->v))) {
        medfl_error_set(MEDFL_ENOMEM, "report: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        vs_manifest_t *m = vs_store_manifest(s, vs[i]);
        if (!m) goto done;
        t->v[i] = (s_ver_t){m->version, m->parent, m->round, false}; /* parent < version */
        vs_manifest_destroy(&m);
    }
    t->n = n;
    t->head = vs_store_head(s);
    for (s_ver_t *x = s_tree_find(t, t->head); x; x = s_tree_find(t, x->parent)) x->main = true;
    t->present = true;
    rc = 0;
done:
    vs_store_destroy(&s);
    return rc;
}

/* ---- loading from the history database ------------------------------------------------ */

typedef struct {
    /* n-weighted means of the nodes' reports per version, in version order */
    uint64_t *version;
    double *acc_sum, *f1_sum, *n_sum;
    size_t n_versions, cap;
} s_eval_acc_t;

static int s_on_report(void *ctx, const char *node, uint64_t version, double loss,
                       double accuracy, double macro_f1, int64_t n)
{
    (void)node;
    (void)loss;
    s_eval_acc_t *a = ctx;
    size_t i = a->n_versions;
    while (i > 0 && a->version[i - 1] != version) i--;
    if (i == 0) {
        i = a->n_versions;
        if (a->n_versions == a->cap) {
            size_t cap = a->cap ? a->cap * 2 : 32;
            uint64_t *v = realloc(a->version, cap * sizeof *v);
            double *ac = NULL, *f = NULL, *nn = NULL;
            if (v) a->version = v;
            if (v && (ac = realloc(a->acc_sum, cap * sizeof *ac))) a->acc_sum = ac;
            if (ac && (f = realloc(a->f1_sum, cap * sizeof *f))) a->f1_sum = f;
            if (f && (nn = realloc(a->n_sum, cap * sizeof *nn))) a->n_sum = nn;
            if (!nn) return medfl_error_set(MEDFL_ENOMEM, "report: out of memory");
            a->cap = cap;
        }
        a->version[i] = version;
        a->acc_sum[i] = a->f1_sum[i] = a->n_sum[i] = 0;
        a->n_versions++;
    } else {
        i--;
    }
    double w = n > 0 ? (double)n : 1.0;
    a->acc_sum[i] += w * accuracy;
    a->f1_sum[i] += w * macro_f1;
    a->n_sum[i] += w;
    return 0;
}

static long s_eval_find(const s_eval_acc_t *a, uint64_t version)
{
    for (size_t i = 0; i < a->n_versions; i++)
        if (a->version[i] == version) return (long)i;
    return -1;
}

static int s_on_weight(void *ctx, const contrib_row_t *row)
{
    return report_add_point(ctx, (double)row->round, row->node, row->c.weight);
}

typedef struct {
    report_chart_t *epsilon, *bytes;
} s_stats_ctx_t;

/* Adds y to the (x, series) point of a chart, creating it at y. */
static int s_accumulate(report_chart_t *c, double x, const char *series, double y)
{
    int si = s_series_index(c, series);
    if (si < 0) return -1;
    double cur = 0;
    for (size_t i = c->n_points; i-- > 0;)
        if (c->points[i].x == x && c->points[i].series == si) {
            cur = c->points[i].y;
            break;
        }
    return report_add_point(c, x, series, cur + y);
}

static int s_on_stats(void *ctx, const contrib_round_stats_t *row)
{
    s_stats_ctx_t *s = ctx;
    if (report_add_point(s->epsilon, (double)row->round, row->node, row->epsilon) != 0) return -1;
    /* bytes are summed over the round's nodes, per direction */
    if (s_accumulate(s->bytes, (double)row->round, "node to aggregator", (double)row->bytes_up) ||
        s_accumulate(s->bytes, (double)row->round, "aggregator to node", (double)row->bytes_down))
        return -1;
    return 0;
}

static int s_on_participation(void *ctx, uint64_t round, const char *node, bool completed)
{
    (void)node;
    return s_accumulate(ctx, (double)round, completed ? "completed" : "dropped or declined", 1);
}

/* Where a score was measured: "round 4, v5", or "v5" without a version store. */
static void s_at(const s_tree_t *t, uint64_t version, char *out, size_t size)
{
    const s_ver_t *x = t->present ? s_tree_find(t, version) : NULL;
    if (x) snprintf(out, size, "round %" PRIu64 ", v%" PRIu64, x->round, version);
    else snprintf(out, size, "v%" PRIu64, version);
}

/* The quality chart: scores by the round that produced each version. The head's lineage is
 * one line per metric; each abandoned branch is a dotted series of its own, starting at the
 * version it forked from so it reads as a side branch. Also the baseline/latest rows. */
static int s_quality(report_t *self, const s_tree_t *t, const s_eval_acc_t *a, size_t *unplotted)
{
    report_chart_t *q = report_add_chart(self, "quality", "Global model on the hospitals' validation splits",
                                         t->present ? "round" : "version",
                                         "score (n-weighted mean)", false);
    if (!q || report_add_series(q, "accuracy", REPORT_SERIES_CONNECT, NULL) ||
        report_add_series(q, "macro-F1", REPORT_SERIES_CONNECT, NULL))
        return -1;
    const char *metric[2] = {"accuracy", "macro-F1"};
    long first = -1, last = -1;
    double first_x = 0, last_x = 0;
    for (size_t i = 0; i < a->n_versions; i++) {
        double y[2] = {a->acc_sum[i] / a->n_sum[i], a->f1_sum[i] / a->n_sum[i]};
        const s_ver_t *x = t->present ? s_tree_find(t, a->version[i]) : NULL;
        if (t->present && !x) {
            (*unplotted)++;
            continue;
        }
        double px = x ? (double)x->round : (double)a->version[i];
        if (!x || x->main) {
            for (int k = 0; k < 2; k++)
                if (report_add_point(q, px, metric[k], y[k]) != 0) return -1;
            if (first < 0 || px < first_x) first = (long)i, first_x = px;
            if (last < 0 || px >= last_x) last = (long)i, last_x = px;
            continue;
        }
        const s_ver_t *root = s_branch_root(t, x), *fork = s_tree_find(t, root->parent);
        long fe = fork ? s_eval_find(a, fork->version) : -1;
        for (int k = 0; k < 2; k++) {
            char name[REPORT_NAME_MAX];
            snprintf(name, sizeof name, "%s, branch from v%" PRIu64 " (rolled back)", metric[k],
                     root->version);
            if (report_add_series(q, name, REPORT_SERIES_CONNECT, metric[k]) ||
                report_add_point(q, px, name, y[k]))
                return -1;
            if (fe >= 0 &&
                report_add_point(q, (double)fork->round, name,
                                 k ? a->f1_sum[fe] / a->n_sum[fe] : a->acc_sum[fe] / a->n_sum[fe]))
                return -1;
        }
    }
    if (first < 0) return 0;
    char b_at[REPORT_NAME_MAX], l_at[REPORT_NAME_MAX];
    s_at(t, a->version[first], b_at, sizeof b_at);
    s_at(t, a->version[last], l_at, sizeof l_at);
    if (report_add_change(self, "macro-F1", a->f1_sum[first] / a->n_sum[first], b_at,
                          a->f1_sum[last] / a->n_sum[last], l_at) ||
        report_add_change(self, "accuracy", a->acc_sum[first] / a->n_sum[first], b_at,
                          a->acc_sum[last] / a->n_sum[last], l_at))
        return -1;
    return 0;
}

/* Facts about the version tree: head, and the versions rollbacks abandoned. */
static int s_tree_facts(report_t *self, const s_tree_t *t, const char *state_dir)
{
    char buf[REPORT_NAME_MAX];
    if (!t->present) {
        char dir[CFG_STR_MAX + 32];
        versions_dir(state_dir, dir, sizeof dir);
        snprintf(buf, sizeof buf, "none at %.60s: scores by version number", dir);
        return report_add_fact(self, "Version store", buf);
    }
    const s_ver_t *h = s_tree_find(t, t->head);
    if (h) snprintf(buf, sizeof buf, "v%" PRIu64 " (round %" PRIu64 ")", h->version, h->round);
    else snprintf(buf, sizeof buf, "none yet");
    if (report_add_fact(self, "Head version", buf) != 0) return -1;
    size_t n = 0, len = 0;
    char list[REPORT_NAME_MAX / 2] = "";
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i].main) continue;
        if (n++ < 6 && len < sizeof list) /* snprintf truncates; len may pass the end */
            len += (size_t)snprintf(list + len, sizeof list - len, "%sv%" PRIu64, n > 1 ? ", " : "",
                                    t->v[i].version);
    }
    if (n == 0) return 0;
    snprintf(buf, sizeof buf, "%zu (%s%s)", n, list, n > 6 ? ", ..." : "");
    return report_add_fact(self, "Versions abandoned by rollbacks", buf);
}

int report_load_state(report_t *self, const char *state_dir)
{
    char path[CFG_STR_MAX + 32];
    contrib_db_path(state_dir, path, sizeof path);
    contrib_db_t *db = contrib_db_open_readonly(path);
    if (!db) return -1;
    int rc = -1;
    s_eval_acc_t acc = {0};
    s_tree_t tree = {0};
    size_t unplotted = 0;
    if (s_tree_load(&tree, state_dir) != 0) goto done;
    for (size_t i = 0; i < tree.n; i++)
        if (tree.v[i].round > 0 &&
            report_note_round(self, tree.v[i].round, tree.v[i].version, !tree.v[i].main) != 0)
            goto done;
    if (contrib_db_foreach_report(db, s_on_report, &acc) != 0) goto done;
    if (s_quality(self, &tree, &acc, &unplotted) != 0) goto done;
    report_chart_t *eps = report_add_chart(self, "epsilon", "Privacy loss spent per hospital",
                                           "round", "epsilon (delta fixed per node)", false);
    report_chart_t *weights = report_add_chart(self, "weights", "Contribution weights",
                                               "round", "weight (sums to 1)", false);
    report_chart_t *part = report_add_chart(self, "participation", "Participation and dropouts",
                                            "round", "hospitals", true);
    report_chart_t *bytes = report_add_chart(self, "bytes", "Bytes on the wire per round (all hospitals)",
                                             "round", "bytes (log scale)", false);
    if (!eps || !weights || !part || !bytes) goto done;
    report_chart_set_y_scale(bytes, REPORT_Y_LOG_BYTES);
    if (contrib_db_history(db, NULL, s_on_weight, weights) != 0) goto done;
    s_stats_ctx_t sc = {eps, bytes};
    if (contrib_db_foreach_round_stats(db, s_on_stats, &sc) != 0) goto done;
    if (contrib_db_foreach_participation(db, s_on_participation, part) != 0) goto done;

    char buf[64];
    snprintf(buf, sizeof buf, "%zu", acc.n_versions);
    if (report_add_fact(self, "Versions evaluated", buf) != 0) goto done;
    if (unplotted) {
        snprintf(buf, sizeof buf, "%zu (not in the version store)", unplotted);
        if (report_add_fact(self, "Evaluated versions not plotted", buf) != 0) goto done;
    }
    if (s_tree_facts(self, &tree, state_dir) != 0) goto done;
    snprintf(buf, sizeof buf, "%zu", weights->n_series > part->n_series ? weights->n_series : eps->n_series);
    if (report_add_fact(self, "Hospitals", buf) != 0) goto done;
    if (report_add_fact(self, "State folder", state_dir) != 0) goto done;
    rc = 0;
done:
    free(acc.version);
    free(acc.acc_sum);
    free(acc.f1_sum);
    free(acc.n_sum);
    free(tree.v);
    contrib_db_destroy(&db);
    return rc;
}

/* ---- rendering ------------------------------------------------------------------------- */

static void s_html_escape(FILE *out, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", out); break;
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '"': fputs("&quot;", out); break;
        case '\'': fputs("&#39;", out); break;
        default: fputc(*s, out);
        }
    }
}

/* A "nice" step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over span. */
static double s_nice_step(double span, int ticks)
{
    if (!(span > 0)) return 1;
    double raw = span / ticks, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Decimal units, as network figures are quoted: 22 kB, 630 kB, 1.12 MB. */
static void s_fmt_bytes(char *out, size_t size, double b)
{
    static const char *const unit[] = {"B", "kB", "MB", "GB", "TB"};
    int u = 0;
    while (fabs(b) >= 1000 && u < 4) b /= 1000, u++;
    snprintf(out, size, "%.3g %s", b, unit[u]);
}

static void s_fmt_value(const report_chart_t *c, double v, char *out, size_t size)
{
    if (c->scale == REPORT_Y_LOG_BYTES) s_fmt_bytes(out, size, v);
    else snprintf(out, size, "%.4g", v);
}

/* log10 of the largest 1, 2 or 5 x 10^k at most v (up: the smallest at least v). */
static double s_log_bound(double v, bool up)
{
    static const double m[] = {1, 2, 5, 10};
    double d = floor(log10(v)), best = up ? d + 1 : d;
    for (int k = 0; k < 4; k++) {
        double b = log10(m[k]) + d;
        if (up && m[k] * pow(10, d) >= v * (1 - 1e-12)) return b;
        if (!up && m[k] * pow(10, d) <= v * (1 + 1e-12)) best = b;
    }
    return best;
}

enum { W = 1200, H = 340, ML = 78, MR = 28, MT = 16, MB = 66 };

/* The axes of one chart: x from the sorted unique xs (by value for lines, by index for
 * bars); y linear from 0 (or below) or log over whole decades. */
typedef struct {
    const report_chart_t *c;
    const double *xs;
    size_t nx;
    double xmin, xmax, y0, y1, ystep;
    bool log;
} s_axes_t;

static double s_px(const s_axes_t *a, size_t xi)
{
    const double pw = W - ML - MR;
    if (a->c->bars) return ML + pw * ((double)xi + 0.5) / (double)a->nx;
    return ML + (a->xmax > a->xmin ? pw * (a->xs[xi] - a->xmin) / (a->xmax - a->xmin) : pw / 2);
}

static double s_py(const s_axes_t *a, double v)
{
    const double ph = H - MT - MB;
    double f = a->log ? (log10(v) - a->y0) / (a->y1 - a->y0) : (v - a->y0) / (a->y1 - a->y0);
    return MT + ph * (1 - f);
}

/* Marker shapes: circle, square, triangle, diamond, inverted triangle; r is the size. */
static void s_marker(FILE *out, int shape, double x, double y, double r)
{
    switch (shape % MARKER_N) {
    case 0: fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\"/>", x, y, r); break;
    case 1: fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>", x - 0.85 * r,
                    y - 0.85 * r, 1.7 * r, 1.7 * r); break;
    case 2: fprintf(out, "<path d=\"M%.1f %.1fL%.1f %.1fL%.1f %.1fZ\"/>", x, y - 1.1 * r, x + r,
                    y + 0.7 * r, x - r, y + 0.7 * r); break;
    case 3: fprintf(out, "<path d=\"M%.1f %.1fL%.1f %.1fL%.1f %.1fL%.1f %.1fZ\"/>", x, y - 1.2 * r,
                    x + r, y, x, y + 1.2 * r, x - r, y); break;
    default: fprintf(out, "<path d=\"M%.1f %.1fL%.1f %.1fL%.1f %.1fZ\"/>", x, y + 1.1 * r, x + r,
                     y - 0.7 * r, x - r, y - 0.7 * r); break;
    }
}

typedef struct {
    const char *colour, *dash;
    double width, r;
    int marker;
    bool hollow;
} s_style_t;

/* Draw order is series order: the first series is drawn widest with the largest markers, so a
 * later series with the same values leaves it showing at both edges and around its marks. */
static s_style_t s_style(const report_chart_t *c, size_t s)
{
    const report_series_t *se = &c->series[s];
    double rank = c->n_series > 1 ? (double)(c->n_series - 1 - s) / (double)(c->n_series - 1) : 0;
    s_style_t st = {s_palette[s % PALETTE_N], s_dash[s % DASH_N], 2.5 + 2.0 * rank, 4.0 + 2.5 * rank,
                    (int)(s % MARKER_N), false};
    if (se->branch_of >= 0) {
        st = s_style(c, (size_t)se->branch_of);
        st.dash = BRANCH_DASH;
        st.width = 2.5;
        st.hollow = true;
    }
    return st;
}

/* Index of an earlier series with exactly the same values at the same x, or -1. */
static int s_same_as(const double *ys, size_t nx, size_t s)
{
    for (size_t t = 0; t < s; t++) {
        bool same = true, any = false;
        for (size_t i = 0; i < nx && same; i++) {
            double a = ys[s * nx + i], b = ys[t * nx + i];
            if (isnan(a) != isnan(b) || (!isnan(a) && a != b)) same = false;
            any |= !isnan(a);
        }
        if (same && any) return (int)t;
    }
    return -1;
}

static void s_legend(const report_chart_t *c, const double *ys, size_t nx, FILE *out)
{
    fputs("<div class=\"legend\">", out);
    for (size_t s = 0; s < c->n_series; s++) {
        s_style_t st = s_style(c, s);
        fputs("<span class=\"key\"><svg width=\"46\" height=\"18\" viewBox=\"0 0 46 18\" aria-hidden=\"true\">", out);
        if (c->bars) {
            fprintf(out, "<rect x=\"8\" y=\"2\" width=\"30\" height=\"14\" fill=\"%s\"/>", st.colour);
        } else {
            fprintf(out, "<line x1=\"2\" x2=\"44\" y1=\"9\" y2=\"9\" stroke=\"%s\" stroke-width=\"%.1f\" "
                         "stroke-dasharray=\"%s\"/><g fill=\"%s\" stroke=\"%s\" stroke-width=\"1.5\">",
                    st.colour, st.width > 4 ? 4.0 : st.width, st.dash, st.hollow ? "#fff" : st.colour,
                    st.hollow ? st.colour : "#fff");
            s_marker(out, st.marker, 23, 9, 4.5);
            fputs("</g>", out);
        }
        fputs("</svg>", out);
        s_html_escape(out, c->series[s].name);
        int same = s_same_as(ys, nx, s);
        if (same >= 0) {
            fputs(" <em>(same values as ", out);
            s_html_escape(out, c->series[same].name);
            fputs(")</em>", out);
        }
        fputs("</span>\n", out);
    }
    fputs("</div>\n", out);
}

/* Shades the rounds whose version was abandoned by a rollback; returns whether any was. */
static bool s_bands(const report_t *r, const s_axes_t *a, FILE *out)
{
    bool any = false;
    double half = a->c->bars || a->xmax <= a->xmin
                      ? (W - ML - MR) / (double)a->nx / 2
                      : (W - ML - MR) / (a->xmax - a->xmin) / 2;
    for (size_t i = 0; i < a->nx; i++) {
        const report_note_t *n = s_note(r, a->xs[i]);
        if (!n || !n->abandoned) continue;
        double x = s_px(a, i), l = fmax(ML, x - half), rr = fmin(W - MR, x + half);
        fprintf(out, "<rect class=\"gone\" x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\"/>\n", l,
                MT, rr - l, H - MT - MB);
        any = true;
    }
    return any;
}

static void s_y_grid(const s_axes_t *a, FILE *out)
{
    char label[32];
    if (!a->log) {
        for (double v = a->y0; v <= a->y1 + a->ystep * 1e-9; v += a->ystep) {
            s_fmt_value(a->c, fabs(v) < a->ystep * 1e-9 ? 0.0 : v, label, sizeof label);
            fprintf(out, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                         "<text x=\"%d\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%s</text>\n",
                    ML, W - MR, s_py(a, v), s_py(a, v), ML - 8, s_py(a, v) + 4, label);
        }
        return;
    }
    /* decades, with 2 and 5 between them when there are few */
    static const double sub[] = {1, 2, 5};
    int n_sub = a->y1 - a->y0 <= 3.5 ? 3 : 1;
    for (int d = (int)floor(a->y0); d <= (int)ceil(a->y1); d++)
        for (int k = 0; k < n_sub; k++) {
            double v = sub[k] * pow(10, d);
            if (log10(v) < a->y0 - 1e-9) continue;
            if (log10(v) > a->y1 + 1e-9) break;
            s_fmt_bytes(label, sizeof label, v);
            fprintf(out, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid%s\"/>"
                         "<text x=\"%d\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%s</text>\n",
                    ML, W - MR, s_py(a, v), s_py(a, v), k ? " minor" : "", ML - 8, s_py(a, v) + 4,
                    label);
        }
}

/* x ticks: round numbers (a nice integer step) for lines, thinned indices for bars; under a
 * round, the version it produced. */
static void s_x_ticks(const report_t *r, const s_axes_t *a, bool by_round, FILE *out)
{
    size_t every = a->nx > 14 ? (a->nx + 13) / 14 : 1;
    double step = a->c->bars ? 0 : fmax(1, round(s_nice_step(a->xmax - a->xmin, 12)));
    for (size_t i = 0; i < a->nx; i++) {
        double x = a->xs[i];
        bool tick = a->c->bars ? i % every == 0 : fmod(x, step) == 0 || a->nx == 1;
        if (!tick) continue;
        double px = s_px(a, i);
        fprintf(out, "<text x=\"%.1f\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">%g</text>\n", px,
                H - MB + 18, x);
        const report_note_t *n = by_round ? s_note(r, x) : NULL;
        if (n)
            fprintf(out, "<text x=\"%.1f\" y=\"%d\" class=\"note%s\" text-anchor=\"middle\">v%" PRIu64
                         "</text>\n", px, H - MB + 33, n->abandoned ? " gone" : "", n->version);
    }
}

static void s_tooltip(const report_t *r, const report_chart_t *c, size_t s, double x, double y,
                      bool by_round, FILE *out)
{
    char value[32];
    s_fmt_value(c, y, value, sizeof value);
    fputs("<title>", out);
    s_html_escape(out, c->series[s].name);
    fprintf(out, ", %s %g", by_round ? "round" : c->x_label, x);
    const report_note_t *n = by_round ? s_note(r, x) : NULL;
    if (n) fprintf(out, " (v%" PRIu64 "%s)", n->version, n->abandoned ? ", rolled back" : "");
    fprintf(out, ": %s</title>", value);
}

static void s_lines(const report_t *r, const s_axes_t *a, const double *ys, bool by_round, FILE *out)
{
    const report_chart_t *c = a->c;
    for (size_t s = 0; s < c->n_series; s++) {
        s_style_t st = s_style(c, s);
        fputs("<g class=\"series\" data-series=\"", out);
        s_html_escape(out, c->series[s].name);
        fprintf(out, "\"><path fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\" stroke-dasharray=\"%s\" "
                     "stroke-linejoin=\"round\" d=\"", st.colour, st.width, st.dash);
        bool pen = false;
        for (size_t i = 0; i < a->nx; i++) {
            double y = ys[s * a->nx + i];
            if (isnan(y)) {
                if (!(c->series[s].flags & REPORT_SERIES_CONNECT)) pen = false;
                continue;
            }
            fprintf(out, "%s%.1f %.1f ", pen ? "L" : "M", s_px(a, i), s_py(a, y));
            pen = true;
        }
        fputs("\"/></g>\n", out);
    }
    /* markers after every line, largest first; at most ~60 per series (every point keeps its
     * value in the line; the markers are for telling series apart and for tooltips) */
    size_t every = a->nx > 60 ? (a->nx + 59) / 60 : 1;
    for (size_t s = 0; s < c->n_series; s++) {
        s_style_t st = s_style(c, s);
        fprintf(out, "<g class=\"marks\" fill=\"%s\" stroke=\"%s\" stroke-width=\"1.5\">\n",
                st.hollow ? "#fff" : st.colour, st.hollow ? st.colour : "#fff");
        for (size_t i = 0; i < a->nx; i++) {
            double y = ys[s * a->nx + i];
            if (isnan(y) || (i % every != 0 && i + 1 != a->nx)) continue;
            fputs("<g>", out);
            s_marker(out, st.marker, s_px(a, i), s_py(a, y), st.r);
            s_tooltip(r, c, s, a->xs[i], y, by_round, out);
            fputs("</g>\n", out);
        }
        fputs("</g>\n", out);
    }
}

static void s_bars(const report_t *r, const s_axes_t *a, const double *ys, bool by_round, FILE *out)
{
    const report_chart_t *c = a->c;
    double slot = (W - ML - MR) / (double)a->nx, bw = slot * 0.8 / (double)c->n_series;
    double base = s_py(a, a->y0 > 0 ? a->y0 : 0);
    for (size_t s = 0; s < c->n_series; s++) {
        fputs("<g class=\"series\" data-series=\"", out);
        s_html_escape(out, c->series[s].name);
        fprintf(out, "\" fill=\"%s\">\n", s_style(c, s).colour);
        for (size_t i = 0; i < a->nx; i++) {
            double y = ys[s * a->nx + i];
            if (isnan(y)) continue;
            double left = ML + slot * (double)i + slot * 0.1 + bw * (double)s, top = s_py(a, y);
            double y_top = fmin(top, base), h = fabs(base - top);
            fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\">", left, y_top,
                    bw, h > 0.5 ? h : 0.5);
            s_tooltip(r, c, s, a->xs[i], y, by_round, out);
            fputs("</rect>\n", out);
        }
        fputs("</g>\n", out);
    }
}

static void s_render_chart(const report_t *r, const report_chart_t *c, FILE *out)
{
    fprintf(out, "<section id=\"%s\"><h2>", c->id);
    s_html_escape(out, c->title);
    fputs("</h2>\n", out);
    bool log = c->scale == REPORT_Y_LOG_BYTES;
    double *xs = malloc((c->n_points ? c->n_points : 1) * sizeof *xs), *ys = NULL;
    size_t nx = 0;
    double ymin = INFINITY, ymax = -INFINITY;
    for (size_t i = 0; xs && i < c->n_points; i++) {
        if (log && !(c->points[i].y > 0)) continue; /* no zero on a log axis: a gap */
        xs[nx++] = c->points[i].x;
        ymin = fmin(ymin, c->points[i].y);
        ymax = fmax(ymax, c->points[i].y);
    }
    if (!xs || nx == 0) {
        fputs(xs ? "<p class=\"empty\">no data yet</p></section>\n"
                 : "<p class=\"empty\">out of memory</p></section>\n", out);
        free(xs);
        return;
    }
    qsort(xs, nx, sizeof *xs, s_cmp_double);
    size_t u = 0;
    for (size_t i = 0; i < nx; i++)
        if (u == 0 || xs[i] != xs[u - 1]) xs[u++] = xs[i];
    nx = u;
    if (!(ys = malloc(c->n_series * nx * sizeof *ys))) {
        fputs("<p class=\"empty\">out of memory</p></section>\n", out);
        free(xs);
        return;
    }
    for (size_t i = 0; i < c->n_series * nx; i++) ys[i] = NAN;
    for (size_t i = 0; i < c->n_points; i++) {
        const report_point_t *p = &c->points[i];
        if (log && !(p->y > 0)) continue;
        double *hit = bsearch(&p->x, xs, nx, sizeof *xs, s_cmp_double);
        ys[(size_t)p->series * nx + (size_t)(hit - xs)] = p->y;
    }
    s_axes_t a = {c, xs, nx, xs[0], xs[nx - 1], 0, 0, 1, log};
    if (log) { /* bounds at 1, 2 or 5 times a power of ten around the data */
        a.y0 = s_log_bound(ymin, false);
        a.y1 = s_log_bound(ymax, true);
        if (a.y1 <= a.y0) a.y1 = a.y0 + 1;
    } else {
        ymin = fmin(ymin, 0);
        ymax = fmax(ymax, 0);
        a.ystep = s_nice_step(ymax - ymin > 0 ? ymax - ymin : fabs(ymax) + 1, 5);
        a.y0 = floor(ymin / a.ystep) * a.ystep;
        a.y1 = ceil(ymax / a.ystep) * a.ystep;
        if (a.y1 <= a.y0) a.y1 = a.y0 + a.ystep;
    }
    bool by_round = strcmp(c->x_label, "round") == 0;
    s_legend(c, ys, nx, out);
    fprintf(out, "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %d %d\" "
                 "role=\"img\" aria-label=\"", W, H);
    s_html_escape(out, c->title);
    fputs("\">\n", out);
    bool gone = by_round && s_bands(r, &a, out);
    s_y_grid(&a, out);
    s_x_ticks(r, &a, by_round, out);
    const double pw = W - ML - MR, ph = H - MT - MB;
    fprintf(out, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" class=\"axis\"/>", ML, W - MR, H - MB, H - MB);
    fprintf(out, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" class=\"axis\"/>\n", ML, ML, MT, H - MB);
    fprintf(out, "<text x=\"%.1f\" y=\"%d\" class=\"label\" text-anchor=\"middle\">", ML + pw / 2, H - 8);
    s_html_escape(out, c->x_label);
    if (by_round && r->n_notes) fputs(" (under it: the version it produced)", out);
    fprintf(out, "</text><text x=\"16\" y=\"%.1f\" class=\"label\" text-anchor=\"middle\" "
                 "transform=\"rotate(-90 16 %.1f)\">", MT + ph / 2, MT + ph / 2);
    s_html_escape(out, c->y_label);
    fputs("</text>\n", out);
    if (c->bars) s_bars(r, &a, ys, by_round, out);
    else s_lines(r, &a, ys, by_round, out);
    fputs("</svg>\n", out);
    if (gone)
        fputs("<p class=\"caption\">Shaded rounds produced a version that a rollback abandoned "
              "(later rounds started again from an older version).</p>\n", out);
    fputs("</section>\n", out);
    free(xs);
    free(ys);
}

static void s_render_changes(const report_t *self, FILE *out)
{
    if (!self->n_changes) return;
    fputs("<h2>Model quality: latest against the baseline</h2>\n<table class=\"changes\">\n"
          "<tr><th></th><th>baseline</th><th>latest</th><th>change</th></tr>\n", out);
    for (size_t i = 0; i < self->n_changes; i++) {
        const report_change_t *c = &self->changes[i];
        double d = c->latest - c->baseline;
        fputs("<tr><td>", out);
        s_html_escape(out, c->metric);
        fprintf(out, "</td><td>%.4f <span class=\"at\">(", c->baseline);
        s_html_escape(out, c->baseline_at);
        fprintf(out, ")</span></td><td><b>%.4f</b> <span class=\"at\">(", c->latest);
        s_html_escape(out, c->latest_at);
        fprintf(out, ")</span></td><td class=\"%s\">%+.4f</td></tr>\n",
                d > 0 ? "up" : d < 0 ? "down" : "flat", d);
    }
    fputs("</table>\n", out);
}

int report_render(const report_t *self, FILE *out)
{
    char when[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tm);
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>", out);
    s_html_escape(out, self->title);
    fputs("</title>\n<style>\n"
          "body{font-family:system-ui,sans-serif;margin:24px;color:#222}\n"
          "h1{font-size:22px}h2{font-size:17px;margin:30px 0 6px}\n"
          "table{border-collapse:collapse}td,th{padding:2px 14px 2px 0;text-align:left}\n"
          "td:first-child{color:#555}th{font-weight:600;color:#555}\n"
          ".changes td{font-size:15px}.at{color:#777;font-size:13px}\n"
          ".up{color:#007a4d}.down{color:#b03a00}\n"
          "svg.chart{display:block;width:100%;height:auto}\n"
          ".legend{display:flex;flex-wrap:wrap;gap:4px 22px;font-size:14px;margin:4px 0 2px}\n"
          ".key{display:inline-flex;align-items:center;gap:6px}.key em{color:#666}\n"
          ".grid{stroke:#e2e2e2;stroke-width:1}.grid.minor{stroke:#f0f0f0}"
          ".axis{stroke:#444;stroke-width:1.5;shape-rendering:crispEdges}\n"
          ".tick{font-size:13px;fill:#333}.label{font-size:14px;fill:#333}\n"
          ".note{font-size:12px;fill:#777}.note.gone{fill:#b03a00}rect.gone{fill:#f6e6e0}\n"
          ".caption{color:#666;font-size:13px;margin:2px 0}\n"
          ".empty{color:#888;font-style:italic}\n"
          "</style></head><body>\n<h1>", out);
    s_html_escape(out, self->title);
    fprintf(out, "</h1>\n<p>Generated %s by medfl-aggregator report.</p>\n<table>\n", when);
    for (size_t i = 0; i < self->n_facts; i++) {
        fputs("<tr><td>", out);
        s_html_escape(out, self->facts[i][0]);
        fputs("</td><td>", out);
        s_html_escape(out, self->facts[i][1]);
        fputs("</td></tr>\n", out);
    }
    fputs("</table>\n", out);
    s_render_changes(self, out);
    for (size_t i = 0; i < self->n_charts; i++) s_render_chart(self, &self->charts[i], out);
    fputs("</body></html>\n", out);
    return ferror(out) ? medfl_error_set(MEDFL_EIO, "report: write failed") : 0;
}

int report_write(const report_t *self, const char *path)
{
    /* Rendered in memory first: the page replaces the old one whole, or not at all. */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    int rc = report_render(self, f);
    if (fclose(f) != 0 && rc == 0) rc = medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    if (rc == 0) rc = atomic_file_replace(path, buf, len, 0644);
    free(buf);
    return rc;
}

int cmd_report(int argc, char **argv)
{
    const char *usage =
        "Usage: medfl-aggregator report [-c aggregator.conf | --state DIR] -o report.html\n\n"
        "Writes one self-contained HTML page (inline SVG, no scripts) with the federation's\n"
        "history by round: global accuracy and macro-F1 (baseline and latest, rolled-back\n"
        "branches apart), epsilon per hospital, contribution\n"
        "weights, participation and dropouts, bytes per round. Safe while the daemon runs.\n";
    if (cli_wants_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    const char *conf = NULL, *state = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char **slot = NULL;
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) slot = &conf;
        else if (!strcmp(argv[i], "--state")) slot = &state;
        else if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) slot = &out;
        if (!slot || i + 1 >= argc) {
            fprintf(stderr, "medfl-aggregator report: %s '%s'\n\n%s",
                    slot ? "missing value after" : "unknown argument", argv[i], usage);
            return 2;
        }
        *slot = argv[++i];
    }
    if (!out || (conf && state)) {
        fprintf(stderr, "medfl-aggregator report: %s\n\n%s",
                !out ? "-o FILE is required" : "give either -c or --state, not both", usage);
        return 2;
    }
    agg_config_t cfg;
    if (!state) {
        if (agg_config_load(&cfg, conf ? conf : AGG_CONFIG_DEFAULT_PATH) != 0)
            return cli_fail("medfl-aggregator report");
        state = cfg.state_dir;
    }
    report_t *r = report_new("medfl federation report");
    if (!r) return cli_fail("medfl-aggregator report");
    int rc = report_load_state(r, state) == 0 && report_write(r, out) == 0 ? 0 : 1;
    if (rc) cli_fail("medfl-aggregator report");
    else printf("report: %s\n", out);
    report_destroy(&r);
    return rc;
}
