/* common/service: signal flags and the sd_notify protocol: real signals set the flags exactly once, and
 * notifications arrive on a socket that plays systemd's part (path and abstract names). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/error.h"
#include "common/service.h"

static void test_signals_set_flags(void **state)
{
    (void)state;
    assert_int_equal(service_signals_install(), 0);
    assert_false(service_reload_requested());
    raise(SIGHUP);
    assert_true(service_reload_requested());
    assert_false(service_reload_requested()); /* consumed */
    assert_false(service_stop_requested());
    raise(SIGPIPE); /* ignored, must not kill us */
    raise(SIGTERM);
    assert_true(service_stop_requested());
}

static int s_listen(const char *name, bool abstract)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(sa.sun_path, name, len);
    if (abstract) sa.sun_path[0] = '\0';
    assert_int_equal(bind(fd, (struct sockaddr *)&sa,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)), 0);
    return fd;
}

static void s_expect(int fd, const char *want)
{
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, want);
}

static void test_notify(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(service_notify("READY=1"), 0); /* not under systemd: no-op */

    char path[64];
    snprintf(path, sizeof path, "/tmp/medfl-notify-%d", (int)getpid());
    unlink(path);
    int fd = s_listen(path, false);
    setenv("NOTIFY_SOCKET", path, 1);
    assert_int_equal(service_notify("READY=1\nSTATUS=serving"), 0);
    s_expect(fd, "READY=1\nSTATUS=serving");
    close(fd);
    unlink(path);

    char abs_name[64];
    snprintf(abs_name, sizeof abs_name, "@medfl-notify-%d", (int)getpid());
    fd = s_listen(abs_name, true);
    setenv("NOTIFY_SOCKET", abs_name, 1);
    assert_int_equal(service_notify("STOPPING=1"), 0);
    s_expect(fd, "STOPPING=1");
    close(fd);

    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(service_notify("READY=1"), -1);
    setenv("NOTIFY_SOCKET", "/tmp/medfl-no-such-socket", 1);
    assert_int_equal(service_notify("READY=1"), -1);
    unsetenv("NOTIFY_SOCKET");
}

/* service_run_daemon with a stand-in daemon: the calls happen in order with the config
 * handed through, run's status is returned, a daemon that cannot start gives 1 without
 * run or destroy, and a bad log option stops before create. */
typedef struct {
    int created, ran, destroyed;
    bool fail_create;
    int status;
} s_fake_t;

static void *s_fake_new(const void *cfg, const char *config_path)
{
    s_fake_t *f = (s_fake_t *)cfg;
    assert_string_equal(config_path, "fake.conf");
    f->created++;
    if (f->fail_create) {
        medfl_error_set(MEDFL_EIO, "fake.conf: cannot bind");
        return NULL;
    }
    return f;
}
static int s_fake_run(void *d)
{
    s_fake_t *f = d;
    f->ran++;
    return f->status;
}
static void s_fake_destroy(void *d) { ((s_fake_t *)d)->destroyed++; }

static void test_run_daemon(void **state)
{
    (void)state;
    s_fake_t f = {.status = 3};
    service_daemon_t d = {.program = "medfl-test", .instance = "t", .config_path = "fake.conf",
                          .log_level = "error", .log_format = "text", .log_file = "",
                          .cfg = &f, .create = s_fake_new, .run = s_fake_run,
                          .destroy = s_fake_destroy};
    assert_int_equal(service_run_daemon(&d), 3);
    assert_int_equal(f.created, 1);
    assert_int_equal(f.ran, 1);
    assert_int_equal(f.destroyed, 1);

    f = (s_fake_t){.fail_create = true, .status = 0};
    assert_int_equal(service_run_daemon(&d), 1);
    assert_int_equal(f.created, 1);
    assert_int_equal(f.ran + f.destroyed, 0);
    assert_non_null(strstr(medfl_error_message(), "cannot bind"));

    f = (s_fake_t){.status = 0};
    d.log_level = "loud";
    assert_int_equal(service_run_daemon(&d), 1);
    assert_int_equal(f.created, 0);
    assert_non_null(strstr(medfl_error_message(), "log.level"));
}

/* The state-folder lock: a second holder (another open file description, as a second
 * process would have) is refused with MEDFL_EBUSY naming the holder's pid, the first keeps
 * it, a release lets the next one in, and a daemon refused by it exits SERVICE_EXIT_LOCKED. */
static bool s_lock_in_create;
static void *s_locking_new(const void *cfg, const char *path)
{
    (void)path;
    int fd = service_lock_state((const char *)cfg);
    if (fd < 0) return NULL;
    s_lock_in_create = true;
    service_unlock_state(&fd);
    return NULL;
}

static void test_state_lock(void **state)
{
    (void)state;
    char dir[] = "/tmp/medfl-test-lock-XXXXXX";
    assert_non_null(mkdtemp(dir));
    int a = service_lock_state(dir);
    assert_true(a >= 0);
    char path[128], text[32] = "";
    snprintf(path, sizeof path, "%s/" SERVICE_LOCK_FILE, dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(text, sizeof text, f));
    fclose(f);
    assert_int_equal(atol(text), (long)getpid());

    assert_int_equal(service_lock_state(dir), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EBUSY);
    char want[48];
    snprintf(want, sizeof want, "pid %ld", (long)getpid());
    assert_non_null(strstr(medfl_error_message(), want));
    assert_non_null(strstr(medfl_error_message(), dir));

    /* A daemon whose create is refused by the lock exits with the distinct status. */
    service_daemon_t d = {.program = "medfl-test", .instance = "t", .config_path = "fake.conf",
                          .log_level = "error", .log_format = "text", .log_file = "",
                          .cfg = dir, .create = s_locking_new, .run = s_fake_run,
                          .destroy = s_fake_destroy};
    assert_int_equal(service_run_daemon(&d), SERVICE_EXIT_LOCKED);
    assert_false(s_lock_in_create);

    service_unlock_state(&a);
    assert_int_equal(a, -1);
    service_unlock_state(&a); /* idempotent */
    int b = service_lock_state(dir);
    assert_true(b >= 0);
    service_unlock_state(&b);

    /* A folder that does not exist is an I/O error naming the path, not "busy". */
    char missing[160];
    snprintf(missing, sizeof missing, "%s/nope", dir);
    assert_int_equal(service_lock_state(missing), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EIO);
    assert_non_null(strstr(medfl_error_message(), "nope"));
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_signals_set_flags),
        cmocka_unit_test(test_notify),
        cmocka_unit_test(test_run_daemon),
        cmocka_unit_test(test_state_lock),
    };
    return cmocka_run_group_tests_name("daemon", tests, NULL, NULL);
}
