/* Prometheus registry and HTTP endpoint. Families are few (tens) and samples per family are
 * bounded by the number of nodes, so plain arrays under one mutex are the right size; the
 * renderer follows the text format strictly (HELP/TYPE once per family, escaped label
 * values and help text, NaN/+Inf spelled as Prometheus expects). */
#include "common/metrics.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/log.h"
#include "common/atomic_file.h"
#include "common/service.h"

#define METRIC_NAME_MAX 128
#define METRIC_LABEL_MAX 128

typedef struct {
    char label_value[METRIC_LABEL_MAX];
    double value;
} metric_sample_t;

typedef struct {
    char name[METRIC_NAME_MAX];
    char *help;
    char label_name[METRIC_NAME_MAX]; /* "" = unlabelled */
    metric_kind_t kind;
    metric_sample_t *samples;
    size_t n_samples, cap_samples;
} metric_family_t;

struct metrics_t {
    pthread_mutex_t lock;
    char prefix[METRIC_NAME_MAX];
    metric_family_t *families;
    size_t n_families, cap_families;
    struct MHD_Daemon *httpd;
    uint16_t port;
};

metrics_t *metrics_new(const char *prefix)
{
    metrics_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    pthread_mutex_init(&self->lock, NULL);
    snprintf(self->prefix, sizeof self->prefix, "%s", prefix ? prefix : "medfl");
    return self;
}

void metrics_destroy(metrics_t **self_p)
{
    if (!self_p || !*self_p) return;
    metrics_t *self = *self_p;
    if (self->httpd) MHD_stop_daemon(self->httpd);
    for (size_t i = 0; i < self->n_families; i++) {
        free(self->families[i].help);
        free(self->families[i].samples);
    }
    free(self->families);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

static bool s_valid_name(const char *s, bool label)
{
    if (!s || !*s) return false;
    for (const char *p = s; *p; p++) {
        bool alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
                     (!label && *p == ':');
        bool digit = *p >= '0' && *p <= '9';
        if (!(alpha || (digit && p != s))) return false;
    }
    return !(label && strncmp(s, "__", 2) == 0);
}

static metric_family_t *s_find(metrics_t *self, const char *name)
{
    for (size_t i = 0; i < self->n_families; i++) {
        const char *full = self->families[i].name;
        size_t pl = strlen(self->prefix);
        if (strncmp(full, self->prefix, pl) == 0 && full[pl] == '_' && strcmp(full + pl + 1, name) == 0)
            return &self->families[i];
    }
    return NULL;
}

int metrics_declare(metrics_t *self, const char *name, metric_kind_t kind, const char *help,
                    const char *label_name)
{
    char full[METRIC_NAME_MAX];
    if (snprintf(full, sizeof full, "%s_%s", self->prefix, name) >= (int)sizeof full ||
        !s_valid_name(full, false))
        return medfl_error_set(MEDFL_EINVAL, "metric '%s': invalid name", name);
    size_t nl = strlen(full);
    if (kind == METRIC_COUNTER && (nl < 6 || strcmp(full + nl - 6, "_total") != 0))
        return medfl_error_set(MEDFL_EINVAL, "metric '%s': counters must end in _total", name);
    if (label_name && !s_valid_name(label_name, true))
        return medfl_error_set(MEDFL_EINVAL, "metric '%s': invalid label name '%s'", name,
                               label_name);
    pthread_mutex_lock(&self->lock);
    int rc = 0;
    if (s_find(self, name)) {
        rc = medfl_error_set(MEDFL_EINVAL, "metric '%s' declared twice", name);
    } else if (self->n_families == self->cap_families) {
        size_t cap = self->cap_families ? self->cap_families * 2 : 16;
        metric_family_t *f = realloc(self->families, cap * sizeof *f);
        if (!f) rc = medfl_error_set(MEDFL_ENOMEM, "metrics: out of memory");
        else { self->families = f; self->cap_families = cap; }
    }
    if (rc == 0) {
        metric_family_t *f = &self->families[self->n_families];
        memset(f, 0, sizeof *f);
        snprintf(f->name, sizeof f->name, "%s", full);
        snprintf(f->label_name, sizeof f->label_name, "%s", label_name ? label_name : "");
        f->kind = kind;
        f->help = strdup(help ? help : "");
        if (!f->help) rc = medfl_error_set(MEDFL_ENOMEM, "metrics: out of memory");
        else self->n_families++;
    }
    pthread_mutex_unlock(&self->lock);
    return rc;
}

/* Caller holds the lock. */
static metric_sample_t *s_sample(metric_family_t *f, const char *label_value, bool create)
{
    bool labelled = f->label_name[0] != '\0';
    if (labelled != (label_value != NULL)) {
        medfl_error_set(MEDFL_EINVAL, "metric '%s': label %s", f->name,
                        labelled ? "value missing" : "given for an unlabelled family");
        return NULL;
    }
    const char *lv = label_value ? label_value : "";
    if (strlen(lv) >= METRIC_LABEL_MAX) {
        medfl_error_set(MEDFL_EINVAL, "metric '%s': label value too long", f->name);
        return NULL;
    }
    for (size_t i = 0; i < f->n_samples; i++)
        if (strcmp(f->samples[i].label_value, lv) == 0) return &f->samples[i];
    if (!create) {
        medfl_error_set(MEDFL_ENOTFOUND, "metric '%s': no sample '%s'", f->name, lv);
        return NULL;
    }
    if (f->n_samples == f->cap_samples) {
        size_t cap = f->cap_samples ? f->cap_samples * 2 : 4;
        metric_sample_t *s = realloc(f->samples, cap * sizeof *s);
        if (!s) {
            medfl_error_set(MEDFL_ENOMEM, "metrics: out of memory");
            return NULL;
        }
        f->samples = s;
        f->cap_samples = cap;
    }
    metric_sample_t *s = &f->samples[f->n_samples++];
    snprintf(s->label_value, sizeof s->label_value, "%s", lv);
    s->value = 0;
    return s;
}

static int s_update(metrics_t *self, const char *name, const char *label_value, double v,
                    bool add)
{
    if (!self) return 0;
    pthread_mutex_lock(&self->lock);
    int rc = 0;
    metric_family_t *f = s_find(self, name);
    if (!f) {
        rc = medfl_error_set(MEDFL_ENOTFOUND, "metric '%s' not declared", name);
    } else if (f->kind == METRIC_COUNTER && (!add || v < 0 || isnan(v))) {
        rc = medfl_error_set(MEDFL_EINVAL, "metric '%s': counters only increase", name);
    } else {
        metric_sample_t *s = s_sample(f, label_value, true);
        if (!s) rc = -1;
        else if (add) s->value += v;
        else s->value = v;
    }
    pthread_mutex_unlock(&self->lock);
    return rc;
}

int metrics_set(metrics_t *self, const char *name, const char *label_value, double value)
{
    return s_update(self, name, label_value, value, false);
}

int metrics_add(metrics_t *self, const char *name, const char *label_value, double delta)
{
    return s_update(self, name, label_value, delta, true);
}

int metrics_get(metrics_t *self, const char *name, const char *label_value, double *out)
{
    pthread_mutex_lock(&self->lock);
    int rc = -1;
    metric_family_t *f = s_find(self, name);
    if (!f) medfl_error_set(MEDFL_ENOTFOUND, "metric '%s' not declared", name);
    else {
        metric_sample_t *s = s_sample(f, label_value, false);
        if (s) { *out = s->value; rc = 0; }
    }
    pthread_mutex_unlock(&self->lock);
    return rc;
}

/* Text format escapes: help escapes \ and newline; label values also escape ". */
static void s_put_escaped(FILE *out, const char *s, bool label)
{
    for (; *s; s++) {
        if (*s == '\\') fputs("\\\\", out);
        else if (*s == '\n') fputs("\\n", out);
        else if (label && *s == '"') fputs("\\\"", out);
        else fputc(*s, out);
    }
}

static void s_put_value(FILE *out, double v)
{
    if (isnan(v)) fputs("NaN", out);
    else if (isinf(v)) fputs(v > 0 ? "+Inf" : "-Inf", out);
    else fprintf(out, "%.17g", v);
}

int metrics_render(metrics_t *self, char **out, size_t *len)
{
    FILE *mem = open_memstream(out, len);
    if (!mem) return medfl_error_set(MEDFL_ENOMEM, "metrics: out of memory");
    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->n_families; i++) {
        metric_family_t *f = &self->families[i];
        fprintf(mem, "# HELP %s ", f->name);
        s_put_escaped(mem, f->help, false);
        fprintf(mem, "\n# TYPE %s %s\n", f->name, f->kind == METRIC_COUNTER ? "counter" : "gauge");
        for (size_t j = 0; j < f->n_samples; j++) {
            fputs(f->name, mem);
            if (f->label_name[0]) {
                fprintf(mem, "{%s=\"", f->label_name);
                s_put_escaped(mem, f->samples[j].label_value, true);
                fputs("\"}", mem);
            }
            fputc(' ', mem);
            s_put_value(mem, f->samples[j].value);
            fputc('\n', mem);
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (fclose(mem) != 0) return medfl_error_set(MEDFL_ENOMEM, "metrics: out of memory");
    return 0;
}

static enum MHD_Result s_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **req_cls)
{
    (void)version; (void)upload_data; (void)upload_data_size; (void)req_cls;
    metrics_t *self = cls;
    struct MHD_Response *resp;
    unsigned status;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static const char msg[] = "only GET is supported\n";
        resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (strcmp(url, "/metrics") != 0) {
        static const char msg[] = "not found; metrics are at /metrics\n";
        resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        status = MHD_HTTP_NOT_FOUND;
    } else {
        char *text = NULL;
        size_t len = 0;
        if (metrics_render(self, &text, &len) != 0) return MHD_NO;
        resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        if (!resp) { free(text); return MHD_NO; }
        MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        status = MHD_HTTP_OK;
    }
    if (!resp) return MHD_NO;
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

int metrics_serve(metrics_t *self, const char *address, uint16_t port)
{
    if (self->httpd) return medfl_error_set(MEDFL_ESTATE, "metrics: already serving");
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (inet_pton(AF_INET, address ? address : "127.0.0.1", &sa.sin_addr) != 1)
        return medfl_error_set(MEDFL_EINVAL, "metrics: bad listen address '%s' (IPv4 expected)",
                               address);
    self->httpd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, port,
                                   NULL, NULL, s_handle, self, MHD_OPTION_SOCK_ADDR, &sa,
                                   MHD_OPTION_CONNECTION_LIMIT, 16u,
                                   MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (!self->httpd)
        return medfl_error_set(MEDFL_EIO, "metrics: cannot listen on %s:%u", address, port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(self->httpd, MHD_DAEMON_INFO_BIND_PORT);
    self->port = info ? info->port : port;
    LOG_INFO(MAIN, "metrics served at http://%s:%u/metrics", address, self->port);
    return 0;
}

uint16_t metrics_port(const metrics_t *self) { return self->port; }

/* ---- metrics.listen ------------------------------------------------------------------- */

/* Line of config_path that sets key ("section.key"), 0 when not found: the config module
 * reports lines only for its own checks, and this option's syntax is checked here. */
static unsigned s_key_line(const char *config_path, const char *key)
{
    FILE *f = config_path ? fopen(config_path, "r") : NULL;
    if (!f) return 0;
    char line[4096], section[128] = "";
    unsigned lineno = 0, found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        lineno++;
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (!close) continue;
            *close = '\0';
            char *name = s + 1;
            while (isspace((unsigned char)*name)) name++;
            size_t n = strlen(name);
            while (n > 0 && isspace((unsigned char)name[n - 1])) name[--n] = '\0';
            snprintf(section, sizeof section, "%s", name);
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq || *s == '#' || *s == ';') continue;
        size_t n = (size_t)(eq - s);
        while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
        char full[300];
        if (section[0]) snprintf(full, sizeof full, "%s.%.*s", section, (int)n, s);
        else snprintf(full, sizeof full, "%.*s", (int)n, s);
        if (strcmp(full, key) == 0) found = lineno;
    }
    fclose(f);
    return found;
}

static int s_listen_error(const char *config_path, const char *key, const char *value,
                          const char *why)
{
    unsigned line = s_key_line(config_path, key);
    if (config_path && line)
        return medfl_error_set(MEDFL_ECONFIG, "%s:%u: key '%s': '%s' %s", config_path, line, key,
                               value, why);
    if (config_path)
        return medfl_error_set(MEDFL_ECONFIG, "%s: key '%s': '%s' %s", config_path, key, value, why);
    return medfl_error_set(MEDFL_ECONFIG, "key '%s': '%s' %s", key, value, why);
}

int metrics_listen_parse(const char *value, const char *config_path, const char *key,
                         metrics_listen_t *out)
{
    memset(out, 0, sizeof *out);
    if (!value || !*value || strcmp(value, "off") == 0) return 0;
    const char *colon = strrchr(value, ':');
    const char *port_text = colon ? colon + 1 : value;
    char address[64] = "127.0.0.1";
    if (colon) {
        size_t n = (size_t)(colon - value);
        if (n == 0 || n >= sizeof address)
            return s_listen_error(config_path, key, value,
                                  "is not ADDRESS:PORT (e.g. 127.0.0.1:9751), PORT or off");
        memcpy(address, value, n);
        address[n] = '\0';
    }
    struct in_addr ia;
    if (inet_pton(AF_INET, address, &ia) != 1)
        return s_listen_error(config_path, key, value,
                              "does not start with an IPv4 address (e.g. 127.0.0.1:9751)");
    char *end = NULL;
    errno = 0;
    unsigned long port = strtoul(port_text, &end, 10);
    if (!*port_text || !isdigit((unsigned char)*port_text) || *end || errno || port > 65535)
        return s_listen_error(config_path, key, value,
                              "has no valid port (0..65535; 0 picks a free port)");
    out->enabled = true;
    snprintf(out->address, sizeof out->address, "%s", address);
    out->port = (uint16_t)port;
    return 0;
}

int metrics_start(metrics_t *self, const metrics_listen_t *listen, const char *state_dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/metrics_endpoint", state_dir) >= (int)sizeof path)
        return medfl_error_set(MEDFL_EINVAL, "%s: path too long", state_dir);
    if (unlink(path) != 0 && errno != ENOENT)
        return medfl_error_set(MEDFL_EIO, "%s: cannot remove: %s", path, strerror(errno));
    if (!listen->enabled) {
        LOG_INFO(MAIN, "metrics endpoint off (metrics.listen)");
        return 0;
    }
    if (metrics_serve(self, listen->address, listen->port) != 0) return -1;
    char text[64];
    snprintf(text, sizeof text, "http://%s:%u/metrics\n", listen->address, self->port);
    return atomic_file_replace(path, text, strlen(text), 0644);
}

int metrics_open(const char *prefix, const metrics_family_t *table, size_t n,
                 const char *listen_value, const char *config_path, const char *state_dir,
                 metrics_t **out)
{
    *out = NULL;
    metrics_listen_t ml;
    if (metrics_listen_parse(listen_value, config_path, "metrics.listen", &ml) != 0) return -1;
    metrics_t *self = metrics_new(prefix);
    if (!self) return medfl_error_set(MEDFL_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (metrics_declare(self, table[i].name, table[i].kind, table[i].help, table[i].label) !=
            0) {
            metrics_destroy(&self);
            return -1;
        }
        if (!table[i].label) metrics_add(self, table[i].name, NULL, 0);
    }
    if (metrics_start(self, &ml, state_dir) != 0) {
        LOG_ERROR(MAIN, "metrics endpoint not started, running without it: %s",
                  medfl_error_message());
        metrics_destroy(&self);
        return 0;
    }
    if (ml.enabled) *out = self;
    else metrics_destroy(&self);
    return 0;
}
