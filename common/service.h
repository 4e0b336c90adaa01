/* What both medfl daemons need around their event loop: signal handlers that only set
 * flags (the loop polls them, so no work ever runs in signal context), logging configured
 * from the config's log.* options, the `run` subcommand's frame around a daemon object, a
 * monotonic clock, folder creation and sd_notify.
 * Crash-safe files are common/atomic_file. */
#ifndef MEDFL_SERVICE_H
#define MEDFL_SERVICE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "common/config.h"

/* Installs SIGTERM/SIGINT (stop) and SIGHUP (reload) handlers that only set flags, and
 * ignores SIGPIPE. Clears both flags. */
int service_signals_install(void);
bool service_stop_requested(void);
/* Returns and clears the reload flag. */
bool service_reload_requested(void);

/* Configures the process log from option values: level debug|info|warn|error, format
 * text|json, file "" for stderr or a path opened for appending (*opened receives the
 * FILE to fclose at exit, NULL for stderr). */
int service_log_setup(const char *program, const char *instance, const char *level,
                      const char *format, const char *file, FILE **opened)
    __attribute__((warn_unused_result));

/* Changes level and format of the log configured by service_log_setup, keeping its sink
 * (SIGHUP reload of log.level / log.format). */
int service_log_relevel(const char *level, const char *format) __attribute__((warn_unused_result));

/* SIGHUP reload of a program's config: logs (as warnings) the options of fresh that differ
 * from cur but need a restart, copies the reloadable ones that differ into cur (logging
 * each), and re-levels the log from the new log.level / log.format when the table has
 * them. Returns the number of options applied. */
int service_config_reload(const cfg_option_t *table, void *cur, const void *fresh, const char *path);

/* The `run` subcommand of both daemons around their own object: configures the log from
 * the config's log.* options, installs the signal flags, creates the daemon, runs it until
 * a stop signal, destroys it, and returns the log to stderr. The daemon is reached through
 * the three functions below (each program adapts its typed x_new / x_run / x_destroy), so
 * start-up errors, the "stopped" line and log teardown behave the same in both programs. */
typedef struct {
    const char *program;     /* "medfl-node", prefix of error lines */
    const char *instance;    /* node_id or aggregator name, in every log line */
    const char *config_path;
    const char *log_level, *log_format, *log_file; /* the config's log.* options */
    const void *cfg;         /* the loaded config, handed to create */
    /* NULL with a medfl error when the daemon cannot start. */
    void *(*create)(const void *cfg, const char *config_path);
    /* Until SIGTERM/SIGINT; returns the process exit status. */
    int (*run)(void *daemon);
    void (*destroy)(void *daemon);
} service_daemon_t;

/* Returns the process exit status: run's, SERVICE_EXIT_LOCKED when another process holds
 * the state folder (service_lock_state), or 1 when setup or start failed otherwise (the
 * error is printed as "program: message" and, once the log is set up, logged). */
int service_run_daemon(const service_daemon_t *d);

/* Exit status of a daemon refused because another process holds its state folder. 3 is the
 * node's "revoked", so systemd units can tell the two apart (RestartPreventExitStatus). */
#define SERVICE_EXIT_LOCKED 4
#define SERVICE_LOCK_FILE "daemon.lock"

/* Takes an exclusive flock(2) on <state_dir>/daemon.lock (created 0600) for the lifetime of
 * the process and writes its pid into it. A second daemon on the same state folder would
 * journal the first one's live round as aborted and overwrite its pid and endpoint in the
 * registry, so it is refused: MEDFL_EBUSY with the holder's pid. The kernel releases the
 * lock when the process exits, however it dies, so a stale lock file never blocks a
 * restart. Returns the descriptor to keep open (service_unlock_state), -1 on error. */
int service_lock_state(const char *state_dir) __attribute__((warn_unused_result));
/* Releases the lock and closes *fd (no-op for -1); sets *fd to -1. */
void service_unlock_state(int *fd);

/* Creates path and its missing parents with mode (existing folders are kept). */
int service_mkdir_p(const char *path, mode_t mode) __attribute__((warn_unused_result));

/* Milliseconds of CLOCK_MONOTONIC, for timeouts that must not jump with the wall clock. */
int64_t service_now_ms(void);

/* "2026-11-21 23:10:00Z" for a unix time, "-" for 0. */
void service_format_time(int64_t unix_s, char *out, size_t size);

/* Sends a systemd notification such as "READY=1\nSTATUS=serving" to $NOTIFY_SOCKET (path or
 * @abstract name). Returns 0 when sent or when not running under systemd, -1 on failure. */
int service_notify(const char *state);

#endif
