/* The federation report: charts collected as (x, series, y) points, rendered to inline SVG.
 * Hand-written SVG keeps the page self-contained and the dependency list short; the charts
 * are few and simple (lines over rounds, grouped bars), so a plotting library would buy
 * nothing. Missing values (a node that skipped a round) leave gaps rather than zeros, because
 * a zero ε or weight would be a false statement. */
#include "aggregator/report.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aggregator/agg_config.h"
#include "aggregator/contrib_db.h"
#include "common/atomic_file.h"
#include "common/cli.h"
#include "common/error.h"

#define REPORT_NAME_MAX 96
#define REPORT_MAX_CHARTS 16
#define REPORT_MAX_FACTS 32

typedef struct {
    double x, y;
    int series;
} report_point_t;

struct report_chart_t {
    char id[REPORT_NAME_MAX], title[REPORT_NAME_MAX * 2], x_label[REPORT_NAME_MAX],
        y_label[REPORT_NAME_MAX];
    bool bars;
    char (*series)[REPORT_NAME_MAX];
    size_t n_series, cap_series;
    report_point_t *points;
    size_t n_points, cap_points;
};

struct report_t {
    char title[REPORT_NAME_MAX * 2];
    report_chart_t charts[REPORT_MAX_CHARTS];
    size_t n_charts;
    char facts[REPORT_MAX_FACTS][2][REPORT_NAME_MAX];
    size_t n_facts;
};

/* Colour-blind-safe palette (Okabe-Ito), then a few more distinct hues. */
static const char *const s_palette[] = {"#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7",
                                        "#56B4E9", "#F0E442", "#000000", "#7F3C8D", "#11A579"};
#define PALETTE_N (sizeof s_palette / sizeof s_palette[0])

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

static int s_series_index(report_chart_t *c, const char *name)
{
    for (size_t i = 0; i < c->n_series; i++)
        if (strcmp(c->series[i], name) == 0) return (int)i;
    if (c->n_series == c->cap_series) {
        size_t cap = c->cap_series ? c->cap_series * 2 : 8;
        void *p = realloc(c->series, cap * sizeof *c->series);
        if (!p) return medfl_error_set(MEDFL_ENOMEM, "report: out of memory");
        c->series = p;
        c->cap_series = cap;
    }
    snprintf(c->series[c->n_series], REPORT_NAME_MAX, "%s", name);
    return (int)c->n_series++;
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

/* ---- loading from the history database ------------------------------------------------ */

typedef struct {
    report_chart_t *chart;
    /* n-weighted means of the nodes' reports per version */
    double *version, *acc_sum, *f1_sum, *n_sum;
    size_t n_versions, cap;
} s_eval_acc_t;

static int s_on_report(void *ctx, const char *node, uint64_t version, double loss,
                       double accuracy, double macro_f1, int64_t n)
{
    (void)node;
    (void)loss;
    s_eval_acc_t *a = ctx;
    size_t i = 0;
    while (i < a->n_versions && a->version[i] != (double)version) i++;
    if (i == a->n_versions) {
        if (a->n_versions == a->cap) {
            size_t cap = a->cap ? a->cap * 2 : 32;
            double *v = realloc(a->version, cap * sizeof *v), *ac = NULL, *f = NULL, *nn = NULL;
            if (v) a->version = v;
            if (v && (ac = realloc(a->acc_sum, cap * sizeof *ac))) a->acc_sum = ac;
            if (ac && (f = realloc(a->f1_sum, cap * sizeof *f))) a->f1_sum = f;
            if (f && (nn = realloc(a->n_sum, cap * sizeof *nn))) a->n_sum = nn;
            if (!nn) return medfl_error_set(MEDFL_ENOMEM, "report: out of memory");
            a->cap = cap;
        }
        a->version[i] = (double)version;
        a->acc_sum[i] = a->f1_sum[i] = a->n_sum[i] = 0;
        a->n_versions++;
    }
    double w = n > 0 ? (double)n : 1.0;
    a->acc_sum[i] += w * accuracy;
    a->f1_sum[i] += w * macro_f1;
    a->n_sum[i] += w;
    return 0;
}

static int s_on_weight(void *ctx, const contrib_row_t *row)
{
    return report_add_point(ctx, (double)row->round, row->node, row->c.weight);
}

typedef struct {
    report_chart_t *epsilon, *bytes;
    double max_round;
} s_stats_ctx_t;

static int s_on_stats(void *ctx, const contrib_round_stats_t *row)
{
    s_stats_ctx_t *s = ctx;
    if (report_add_point(s->epsilon, (double)row->round, row->node, row->epsilon) != 0) return -1;
    /* Bytes are summed over nodes per round: find and add. */
    report_chart_t *b = s->bytes;
    const char *dirs[2] = {"node to aggregator", "aggregator to node"};
    double add[2] = {(double)row->bytes_up / 1e6, (double)row->bytes_down / 1e6};
    for (int d = 0; d < 2; d++) {
        int si = s_series_index(b, dirs[d]);
        if (si < 0) return -1;
        double cur = 0;
        for (size_t i = 0; i < b->n_points; i++)
            if (b->points[i].x == (double)row->round && b->points[i].series == si) cur = b->points[i].y;
        if (report_add_point(b, (double)row->round, dirs[d], cur + add[d]) != 0) return -1;
    }
    if ((double)row->round > s->max_round) s->max_round = (double)row->round;
    return 0;
}

static int s_on_participation(void *ctx, uint64_t round, const char *node, bool completed)
{
    (void)node;
    report_chart_t *c = ctx;
    const char *name = completed ? "completed" : "dropped or declined";
    int si = s_series_index(c, name);
    if (si < 0) return -1;
    double cur = 0;
    for (size_t i = 0; i < c->n_points; i++)
        if (c->points[i].x == (double)round && c->points[i].series == si) cur = c->points[i].y;
    return report_add_point(c, (double)round, name, cur + 1);
}

int report_load_state(report_t *self, const char *state_dir)
{
    char path[CFG_STR_MAX + 32];
    contrib_db_path(state_dir, path, sizeof path);
    contrib_db_t *db = contrib_db_open_readonly(path);
    if (!db) return -1;
    int rc = -1;
    s_eval_acc_t acc = {0};
    report_chart_t *quality = report_add_chart(self, "quality", "Global model on the hospitals' validation splits",
                                               "version", "score (n-weighted mean)", false);
    report_chart_t *eps = report_add_chart(self, "epsilon", "Privacy loss spent per hospital",
                                           "round", "epsilon (delta fixed per node)", false);
    report_chart_t *weights = report_add_chart(self, "weights", "Contribution weights",
                                               "round", "weight (sums to 1)", false);
    report_chart_t *part = report_add_chart(self, "participation", "Participation and dropouts",
                                            "round", "hospitals", true);
    report_chart_t *bytes = report_add_chart(self, "bytes", "Bytes on the wire per round",
                                             "round", "MB", true);
    if (!quality || !eps || !weights || !part || !bytes) goto done;
    acc.chart = quality;
    if (contrib_db_foreach_report(db, s_on_report, &acc) != 0) goto done;
    for (size_t i = 0; i < acc.n_versions; i++) {
        if (report_add_point(quality, acc.version[i], "accuracy", acc.acc_sum[i] / acc.n_sum[i]) ||
            report_add_point(quality, acc.version[i], "macro-F1", acc.f1_sum[i] / acc.n_sum[i]))
            goto done;
    }
    if (contrib_db_history(db, NULL, s_on_weight, weights) != 0) goto done;
    s_stats_ctx_t sc = {eps, bytes, 0};
    if (contrib_db_foreach_round_stats(db, s_on_stats, &sc) != 0) goto done;
    if (contrib_db_foreach_participation(db, s_on_participation, part) != 0) goto done;

    char buf[64];
    snprintf(buf, sizeof buf, "%zu", acc.n_versions);
    if (report_add_fact(self, "Versions evaluated", buf) != 0) goto done;
    double last_acc = acc.n_versions ? acc.acc_sum[acc.n_versions - 1] / acc.n_sum[acc.n_versions - 1] : NAN;
    double last_f1 = acc.n_versions ? acc.f1_sum[acc.n_versions - 1] / acc.n_sum[acc.n_versions - 1] : NAN;
    snprintf(buf, sizeof buf, isnan(last_acc) ? "-" : "%.4f", last_acc);
    if (report_add_fact(self, "Latest accuracy", buf) != 0) goto done;
    snprintf(buf, sizeof buf, isnan(last_f1) ? "-" : "%.4f", last_f1);
    if (report_add_fact(self, "Latest macro-F1", buf) != 0) goto done;
    snprintf(buf, sizeof buf, "%zu", weights->n_series > part->n_series ? weights->n_series : eps->n_series);
    if (report_add_fact(self, "Hospitals", buf) != 0) goto done;
    report_add_fact(self, "State folder", state_dir);
    rc = 0;
done:
    free(acc.version);
    free(acc.acc_sum);
    free(acc.f1_sum);
    free(acc.n_sum);
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

enum { W = 760, H = 300, ML = 64, MR = 170, MT = 20, MB = 44 };

static void s_render_chart(const report_chart_t *c, FILE *out)
{
    fprintf(out, "<section id=\"%s\"><h2>", c->id);
    s_html_escape(out, c->title);
    fputs("</h2>\n", out);
    if (c->n_points == 0) {
        fputs("<p class=\"empty\">no data yet</p></section>\n", out);
        return;
    }
    /* Unique sorted x values; bars are laid out by index, lines by value. */
    double *xs = malloc(c->n_points * sizeof *xs);
    if (!xs) return;
    size_t nx = 0;
    double ymin = 0, ymax = 0;
    for (size_t i = 0; i < c->n_points; i++) {
        xs[nx++] = c->points[i].x;
        if (c->points[i].y > ymax) ymax = c->points[i].y;
        if (c->points[i].y < ymin) ymin = c->points[i].y;
    }
    qsort(xs, nx, sizeof *xs, s_cmp_double);
    size_t u = 0;
    for (size_t i = 0; i < nx; i++)
        if (u == 0 || xs[i] != xs[u - 1]) xs[u++] = xs[i];
    nx = u;
    double ystep = s_nice_step(ymax - ymin > 0 ? ymax - ymin : fabs(ymax) + 1, 5);
    double y0 = floor(ymin / ystep) * ystep, y1 = ceil(ymax / ystep) * ystep;
    if (y1 <= y0) y1 = y0 + ystep;
    double xmin = xs[0], xmax = xs[nx - 1];
    const double pw = W - ML - MR, ph = H - MT - MB;
#define PX(v) (c->bars ? ML + pw * ((double)(v) + 0.5) / (double)nx \
                       : ML + (xmax > xmin ? pw * ((v) - xmin) / (xmax - xmin) : pw / 2))
#define PY(v) (MT + ph * (1 - ((v) - y0) / (y1 - y0)))
    fprintf(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                 "viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"", W, H, W, H);
    s_html_escape(out, c->title);
    fputs("\">\n", out);
    /* grid and y axis */
    for (double v = y0; v <= y1 + ystep * 1e-9; v += ystep) {
        fprintf(out, "<line x1=\"%d\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                     "<text x=\"%d\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%g</text>\n",
                ML, W - MR + 0.0, PY(v), PY(v), ML - 6, PY(v) + 4, fabs(v) < ystep * 1e-9 ? 0.0 : v);
    }
    /* x ticks: at most ~12 labels */
    size_t every = nx > 12 ? (nx + 11) / 12 : 1;
    for (size_t i = 0; i < nx; i += every) {
        double px = c->bars ? PX(i) : PX(xs[i]);
        fprintf(out, "<text x=\"%.1f\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">%g</text>\n", px,
                H - MB + 16, xs[i]);
    }
    fprintf(out, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" class=\"axis\"/>", ML, W - MR, H - MB, H - MB);
    fprintf(out, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" class=\"axis\"/>\n", ML, ML, MT, H - MB);
    fprintf(out, "<text x=\"%.1f\" y=\"%d\" class=\"label\" text-anchor=\"middle\">", ML + pw / 2, H - 6);
    s_html_escape(out, c->x_label);
    fprintf(out, "</text><text x=\"14\" y=\"%.1f\" class=\"label\" text-anchor=\"middle\" "
                 "transform=\"rotate(-90 14 %.1f)\">", MT + ph / 2, MT + ph / 2);
    s_html_escape(out, c->y_label);
    fputs("</text>\n", out);

    double slot = pw / (double)nx, bw = slot * 0.8 / (double)(c->n_series ? c->n_series : 1);
    for (size_t s = 0; s < c->n_series; s++) {
        const char *col = s_palette[s % PALETTE_N];
        fprintf(out, "<g class=\"series\" data-series=\"");
        s_html_escape(out, c->series[s]);
        fprintf(out, "\" fill=\"%s\" stroke=\"%s\">\n", col, col);
        if (c->bars) {
            for (size_t i = 0; i < c->n_points; i++) {
                const report_point_t *p = &c->points[i];
                if (p->series != (int)s) continue;
                size_t xi = 0;
                while (xs[xi] != p->x) xi++;
                double left = ML + slot * (double)xi + slot * 0.1 + bw * (double)s;
                double top = PY(p->y > 0 ? p->y : 0), bottom = PY(p->y > 0 ? 0 : p->y);
                if (y0 > 0) bottom = PY(y0);
                fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"><title>%g: %g</title></rect>\n",
                        left, top, bw, bottom - top > 0.5 ? bottom - top : 0.5, p->x, p->y);
            }
        } else {
            /* Points of this series in x order; a missing x breaks the line. */
            fputs("<path fill=\"none\" stroke-width=\"2.5\" d=\"", out);
            bool pen_down = false;
            for (size_t xi = 0; xi < nx; xi++) {
                const report_point_t *p = NULL;
                for (size_t i = 0; i < c->n_points; i++)
                    if (c->points[i].series == (int)s && c->points[i].x == xs[xi]) p = &c->points[i];
                if (!p) {
                    pen_down = false;
                    continue;
                }
                fprintf(out, "%s%.1f %.1f ", pen_down ? "L" : "M", PX(p->x), PY(p->y));
                pen_down = true;
            }
            fputs("\"/>\n", out);
            for (size_t i = 0; i < c->n_points; i++) {
                const report_point_t *p = &c->points[i];
                if (p->series != (int)s) continue;
                fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\"><title>%g: %g</title></circle>\n",
                        PX(p->x), PY(p->y), p->x, p->y);
            }
        }
        /* legend entry */
        double ly = MT + 10 + 20.0 * (double)s;
        fprintf(out, "<rect x=\"%d\" y=\"%.1f\" width=\"14\" height=\"14\"/>"
                     "<text x=\"%d\" y=\"%.1f\" class=\"legend\" stroke=\"none\" fill=\"#222\">",
                W - MR + 16, ly - 11, W - MR + 36, ly);
        s_html_escape(out, c->series[s]);
        fputs("</text>\n</g>\n", out);
    }
#undef PX
#undef PY
    fputs("</svg></section>\n", out);
    free(xs);
}

int report_render(const report_t *self, FILE *out)
{
    char when[64];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tm);
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>", out);
    s_html_escape(out, self->title);
    fputs("</title>\n<style>\n"
          "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:820px}\n"
          "h1{font-size:22px}h2{font-size:16px;margin:28px 0 6px}\n"
          "table{border-collapse:collapse}td{padding:2px 12px 2px 0}td:first-child{color:#555}\n"
          ".grid{stroke:#e4e4e4;stroke-width:1}.axis{stroke:#444;stroke-width:1}\n"
          ".tick,.legend{font-size:11px;fill:#333}.label{font-size:12px;fill:#333}\n"
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
    for (size_t i = 0; i < self->n_charts; i++) s_render_chart(&self->charts[i], out);
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
        "history: global accuracy and macro-F1 per version, epsilon per hospital, contribution\n"
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
