/* Signal flags and sd_notify. The flags are the one place a process-wide variable is
 * unavoidable: a signal handler can only reach static storage, and may only touch
 * volatile sig_atomic_t. Everything else lives in the daemons' own objects. */
#include "common/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <stdlib.h>

#include "common/error.h"

static volatile sig_atomic_t s_stop;
static volatile sig_atomic_t s_reload;

static void s_on_signal(int sig)
{
    if (sig == SIGHUP) s_reload = 1;
    else s_stop = 1;
}

int daemon_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: blocking calls return EINTR so loops notice the flag promptly. */
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0 ||
        sigaction(SIGHUP, &sa, NULL) != 0)
        return medfl_error_set(MEDFL_EIO, "sigaction: %s", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

bool daemon_stop_requested(void) { return s_stop != 0; }

bool daemon_reload_requested(void)
{
    if (!s_reload) return false;
    s_reload = 0;
    return true;
}

void daemon_request_stop(void) { s_stop = 1; }
void daemon_request_reload(void) { s_reload = 1; }

int daemon_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;
    size_t len = strlen(path);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof sa.sun_path)
        return medfl_error_set(MEDFL_EINVAL, "NOTIFY_SOCKET '%s' is not a socket path", path);
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@') sa.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return medfl_error_set(MEDFL_EIO, "notify socket: %s", strerror(errno));
    socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, sl);
    int err = errno;
    close(fd);
    if (n < 0) return medfl_error_set(MEDFL_EIO, "notify '%s': %s", path, strerror(err));
    return 0;
}
