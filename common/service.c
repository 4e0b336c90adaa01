/* Daemon plumbing shared by medfl-node and medfl-aggregator. The two signal flags are the
 * only process-wide state: a signal handler cannot be handed a context pointer, and
 * everything else a daemon owns lives in its own object. The chosen log sink is kept too,
 * next to the process-wide log it belongs to. */
#include "common/service.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/log.h"

static volatile sig_atomic_t s_stop;
static volatile sig_atomic_t s_reload;
static FILE *s_log_sink; /* the sink service_log_setup chose, NULL = stderr */

static void s_on_stop(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void s_on_reload(int sig)
{
    (void)sig;
    s_reload = 1;
}

int service_signals_install(void)
{
    s_stop = 0;
    s_reload = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: a blocking poll returns EINTR so the loop sees the flag at once. */
    sa.sa_handler = s_on_stop;
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return medfl_error_set(MEDFL_EIO, "cannot install signal handlers: %s", strerror(errno));
    sa.sa_handler = s_on_reload;
    if (sigaction(SIGHUP, &sa, NULL) != 0)
        return medfl_error_set(MEDFL_EIO, "cannot install SIGHUP handler: %s", strerror(errno));
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    return 0;
}

bool service_stop_requested(void)
{
    return s_stop != 0;
}

bool service_reload_requested(void)
{
    if (!s_reload) return false;
    s_reload = 0;
    return true;
}

int service_log_setup(const char *program, const char *instance, const char *level,
                      const char *format, const char *file, FILE **opened)
{
    *opened = NULL;
    log_level_t lv;
    log_format_t fmt;
    if (log_level_parse(level, &lv) != 0)
        return medfl_error_set(MEDFL_ECONFIG, "key 'log.level': unknown level '%s'", level);
    if (log_format_parse(format, &fmt) != 0)
        return medfl_error_set(MEDFL_ECONFIG, "key 'log.format': unknown format '%s'", format);
    FILE *sink = NULL;
    if (file && file[0]) {
        sink = fopen(file, "a");
        if (!sink)
            return medfl_error_set(MEDFL_EIO, "key 'log.file': cannot open %s: %s", file,
                                   strerror(errno));
        setvbuf(sink, NULL, _IOLBF, 0);
        *opened = sink;
    }
    s_log_sink = sink;
    log_configure(sink, lv, fmt);
    log_set_identity(program, instance);
    return 0;
}

int service_log_relevel(const char *level, const char *format)
{
    log_level_t lv;
    log_format_t fmt;
    if (log_level_parse(level, &lv) != 0)
        return medfl_error_set(MEDFL_ECONFIG, "key 'log.level': unknown level '%s'", level);
    if (log_format_parse(format, &fmt) != 0)
        return medfl_error_set(MEDFL_ECONFIG, "key 'log.format': unknown format '%s'", format);
    log_configure(s_log_sink, lv, fmt);
    return 0;
}

int service_run_daemon(const service_daemon_t *d)
{
    FILE *log_file = NULL;
    if (service_log_setup(d->program, d->instance, d->log_level, d->log_format, d->log_file,
                          &log_file) != 0 ||
        service_signals_install() != 0)
        return cli_fail(d->program);
    LOG_INFO(CONFIG, "configuration loaded from %s", d->config_path);
    void *daemon = d->create(d->cfg, d->config_path);
    int rc = 1;
    if (!daemon) {
        if (medfl_error_code() == MEDFL_EBUSY) rc = SERVICE_EXIT_LOCKED;
        LOG_ERROR(MAIN, "cannot start: %s", medfl_error_message());
        cli_fail(d->program);
    } else {
        rc = d->run(daemon);
        d->destroy(daemon);
        LOG_INFO(MAIN, "stopped");
    }
    log_configure(NULL, LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    if (log_file) fclose(log_file);
    return rc;
}

int service_mkdir_p(const char *path, mode_t mode)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return medfl_error_set(MEDFL_EINVAL, "path too long: %s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return medfl_error_set(MEDFL_EIO, "%s: cannot create folder: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, mode) != 0 && errno != EEXIST)
        return medfl_error_set(MEDFL_EIO, "%s: cannot create folder: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return medfl_error_set(MEDFL_EIO, "%s: not a folder", buf);
    return 0;
}

int service_lock_state(const char *state_dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/" SERVICE_LOCK_FILE, state_dir) >= (int)sizeof path)
        return medfl_error_set(MEDFL_EINVAL, "state folder path too long: %s", state_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return medfl_error_set(MEDFL_EIO, "%s: cannot open the state folder lock: %s", path,
                               strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        /* The holder wrote its pid right after locking; an empty read is that instant. */
        char text[24] = "";
        ssize_t n = pread(fd, text, sizeof text - 1, 0);
        long pid = n > 0 ? strtol(text, NULL, 10) : 0;
        close(fd);
        if (err != EWOULDBLOCK)
            return medfl_error_set(MEDFL_EIO, "%s: cannot lock: %s", path, strerror(err));
        char who[40] = "pid unknown";
        if (pid > 0) snprintf(who, sizeof who, "pid %ld", pid);
        return medfl_error_set(MEDFL_EBUSY, "state folder %s is in use by another running daemon "
                               "(%s, lock %s): stop it first, or give this one its own "
                               "state_dir", state_dir, who, path);
    }
    char text[24];
    int len = snprintf(text, sizeof text, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)len, 0) != len) {
        int err = errno;
        close(fd);
        return medfl_error_set(MEDFL_EIO, "%s: cannot write the pid: %s", path, strerror(err));
    }
    return fd;
}

void service_unlock_state(int *fd)
{
    if (!fd || *fd < 0) return;
    /* The pid is left in the file: harmless, as only the flock counts, and truncating here
     * could race with the next holder's write. */
    flock(*fd, LOCK_UN);
    close(*fd);
    *fd = -1;
}

int64_t service_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void service_format_time(int64_t unix_s, char *out, size_t size)
{
    if (unix_s <= 0) {
        snprintf(out, size, "-");
        return;
    }
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, size, "%Y-%m-%d %H:%M:%SZ", &tm);
}

int service_config_reload(const cfg_option_t *table, void *cur, const void *fresh, const char *path)
{
    char names[512];
    if (cfg_diff_nonreloadable(table, cur, fresh, names, sizeof names) > 0)
        LOG_WARN(CONFIG, "%s: changed options that need a restart, not applied: %s", path, names);
    int applied = 0;
    for (const cfg_option_t *o = table; o->name; o++) {
        if (!o->reloadable || !cfg_option_differs(o, cur, fresh)) continue;
        size_t size = o->type == CFG_INT ? sizeof(int64_t)
                      : o->type == CFG_DOUBLE ? sizeof(double)
                      : o->type == CFG_BOOL ? sizeof(bool) : CFG_STR_MAX;
        memcpy((char *)cur + o->offset, (const char *)fresh + o->offset, size);
        LOG_INFO(CONFIG, "%s: option %s changed", path, o->name);
        applied++;
    }
    const cfg_option_t *lv = cfg_find(table, "log.level"), *fmt = cfg_find(table, "log.format");
    if (lv && fmt &&
        service_log_relevel((const char *)cur + lv->offset, (const char *)cur + fmt->offset) != 0)
        LOG_WARN(CONFIG, "%s", medfl_error_message());
    LOG_INFO(CONFIG, "configuration reloaded from %s (%d option(s) changed)", path, applied);
    return applied;
}

/* systemd notification protocol, spoken directly so a Type=notify unit works without
 * linking libsystemd; outside systemd (no $NOTIFY_SOCKET) it is a no-op. */
int service_notify(const char *state)
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
