/* Daemon plumbing shared by medfl-node and medfl-aggregator: signal handlers that only set
 * flags (the event loops poll them), and the systemd notification protocol (READY=1,
 * RELOADING=1, STOPPING=1, STATUS=...) spoken directly over $NOTIFY_SOCKET, so a
 * Type=notify unit works without linking libsystemd and the daemons run the same outside
 * systemd (where notifications are a no-op). */
#ifndef MEDFL_DAEMON_H
#define MEDFL_DAEMON_H

#include <stdbool.h>

/* Installs handlers for SIGTERM/SIGINT (stop) and SIGHUP (reload); ignores SIGPIPE. */
int daemon_signals_install(void);
/* Consumes a pending request: true once per received signal burst. */
bool daemon_stop_requested(void);
bool daemon_reload_requested(void);
/* Test and embedding hooks: raise the same flags without a signal. */
void daemon_request_stop(void);
void daemon_request_reload(void);

/* Sends a notification such as "READY=1\nSTATUS=serving" to $NOTIFY_SOCKET. Returns 0 when
 * sent or when not running under systemd, -1 on a send failure. */
int daemon_notify(const char *state);

#endif
