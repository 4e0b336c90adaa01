/* Prometheus metrics for the node and the aggregator: a small registry of counter and gauge
 * families (optionally with one label, e.g. node="hospital-a") rendered in the Prometheus
 * text exposition format 0.0.4, and served over HTTP by libmicrohttpd on 127.0.0.1 by
 * default, because metrics reveal operational facts (ε spent, participation) that belong
 * on the hospital's monitoring network, not the internet. Thread-safe: the training
 * thread, the network loop and the HTTP thread update and read it concurrently. */
#ifndef MEDFL_METRICS_H
#define MEDFL_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct metrics_t metrics_t;

typedef enum { METRIC_COUNTER, METRIC_GAUGE } metric_kind_t;

/* prefix is prepended to every family name ("medfl_node" -> "medfl_node_rounds_joined_total"). */
metrics_t *metrics_new(const char *prefix);
void metrics_destroy(metrics_t **self_p);

/* Declares a family. label_name is NULL for a family without labels. Counters must end in
 * "_total". Returns 0, or -1 for an invalid or duplicate name. */
int metrics_declare(metrics_t *self, const char *name, metric_kind_t kind, const char *help,
                    const char *label_name) __attribute__((warn_unused_result));

/* Sets a gauge, or adds to a counter (delta >= 0). label_value is NULL for unlabelled
 * families. Returns -1 for an undeclared family, a negative counter delta, or a missing
 * or unexpected label. A NULL registry is a no-op returning 0: daemons with metrics off
 * pass NULL to the code that reports events, which then needs no test of its own. */
int metrics_set(metrics_t *self, const char *name, const char *label_value, double value);
int metrics_add(metrics_t *self, const char *name, const char *label_value, double delta);
/* Reads a sample back (tests, status commands); -1 when absent. */
int metrics_get(metrics_t *self, const char *name, const char *label_value, double *out);

/* Renders the exposition text; *out is malloc'd and NUL-terminated. */
int metrics_render(metrics_t *self, char **out, size_t *len);

/* Serves GET /metrics on address:port (port 0 picks a free port). */
int metrics_serve(metrics_t *self, const char *address, uint16_t port)
    __attribute__((warn_unused_result));
/* The port actually bound, 0 when not serving. */
uint16_t metrics_port(const metrics_t *self);

/* The `metrics.listen` option of both daemons: "off" or "" disables the endpoint; "PORT"
 * binds 127.0.0.1:PORT; "ADDRESS:PORT" binds an IPv4 address (0.0.0.0 only when an operator
 * writes it). Port 0 picks a free port. */
typedef struct {
    bool enabled;
    char address[16]; /* dotted IPv4 */
    uint16_t port;
} metrics_listen_t;

#define METRICS_LISTEN_HELP_SUFFIX                                                              \
    "; PORT alone binds 127.0.0.1; port 0 picks a free one (written to state_dir/"             \
    "metrics_endpoint); off or empty = no endpoint"

/* Parses value; errors name config_path:line of key (found in the file) and the key, so a
 * typo reads like every other config error. config_path may be NULL (then "key 'K': ..."). */
int metrics_listen_parse(const char *value, const char *config_path, const char *key,
                         metrics_listen_t *out) __attribute__((warn_unused_result));

/* Starts serving per listen (nothing when disabled) and records "http://A:P/metrics" in
 * state_dir/metrics_endpoint (removed first, so a stale file never names a dead endpoint).
 * A failure to bind is returned; the daemons log it and run on without metrics. */
int metrics_start(metrics_t *self, const metrics_listen_t *listen, const char *state_dir)
    __attribute__((warn_unused_result));

/* One family of a daemon's table; label NULL for an unlabelled family. */
typedef struct {
    const char *name;
    metric_kind_t kind;
    const char *help;
    const char *label;
} metrics_family_t;

/* A daemon's whole metrics setup, shared by medfl-node and medfl-aggregator: parses
 * listen_value (metrics_listen_parse, errors naming config_path:line), creates a registry
 * with prefix, declares the n families of table (each unlabelled one gets its sample at 0,
 * so a scrape shows it before the first event) and starts the endpoint (metrics_start).
 * *out is the registry, or NULL when listen is off or the endpoint could not start: that
 * failure is logged ("metrics endpoint not started, running without it") and returns 0,
 * because monitoring must never stop rounds or training. Returns -1 (nothing allocated)
 * only for a bad listen value, a bad table or no memory. */
int metrics_open(const char *prefix, const metrics_family_t *table, size_t n,
                 const char *listen_value, const char *config_path, const char *state_dir,
                 metrics_t **out) __attribute__((warn_unused_result));

#endif
