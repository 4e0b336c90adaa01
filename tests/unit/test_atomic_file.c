/* common/atomic_file: a replaced file holds exactly the new bytes with the requested mode, and
 * every failure (missing folder, folder without write permission, a write that the kernel
 * refuses, a rename that cannot happen, an aborted handle) leaves the old target untouched
 * and no temporary file behind. The write failure is real: RLIMIT_FSIZE makes write() fail
 * with EFBIG. Permission failures are checked in a child that drops root, because root
 * ignores folder modes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/error.h"

static int s_setup(void **state)
{
    char *dir = strdup("/tmp/medfl-atomic-XXXXXX");
    if (!dir || !mkdtemp(dir)) return -1;
    *state = dir;
    return 0;
}

static int s_teardown(void **state)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "chmod -R u+rwx '%s' && rm -rf '%s'", (char *)*state,
             (char *)*state);
    int rc = system(cmd);
    free(*state);
    return rc == 0 ? 0 : -1;
}

static char *s_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf) buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

static void s_write_old(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("old contents\n", f);
    assert_int_equal(fclose(f), 0);
}

static void s_assert_old(const char *path)
{
    char *text = s_read(path, NULL);
    assert_non_null(text);
    assert_string_equal(text, "old contents\n");
    free(text);
}

/* Number of entries in dir other than . and .. */
static int s_count(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static mode_t s_mode(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

static void test_replace_creates_and_replaces(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/file.bin", dir);
    const char data[] = {'a', '\0', 'b', '\n'};
    assert_int_equal(atomic_file_replace(path, data, sizeof data, 0644), 0);
    size_t len = 0;
    char *got = s_read(path, &len);
    assert_int_equal(len, sizeof data);
    assert_memory_equal(got, data, sizeof data);
    free(got);
    assert_int_equal(s_mode(path), 0644);
    /* Replacing a longer file with a shorter one leaves nothing of the old one. */
    s_write_old(path);
    assert_int_equal(atomic_file_replace(path, "new", 3, 0644), 0);
    got = s_read(path, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(got, "new", 3);
    free(got);
    /* Empty content is a valid file. */
    assert_int_equal(atomic_file_replace(path, "", 0, 0644), 0);
    got = s_read(path, &len);
    assert_int_equal(len, 0);
    free(got);
    assert_int_equal(s_count(dir), 1);
}

static void test_mode_honoured(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/secret.key", dir);
    mode_t old = umask(0);
    int rc = atomic_file_replace(path, "s3cret\n", 7, 0600);
    umask(old);
    assert_int_equal(rc, 0);
    assert_int_equal(s_mode(path), 0600);
    /* A looser file replaced by a secret becomes 0600 too (the mode is not inherited). */
    assert_int_equal(chmod(path, 0666), 0);
    assert_int_equal(atomic_file_replace(path, "other\n", 6, 0600), 0);
    assert_int_equal(s_mode(path), 0600);
    assert_int_equal(atomic_file_replace(path, "pub\n", 4, 0644), 0);
    assert_int_equal(s_mode(path), 0644);
}

static void test_temp_file_private_until_commit(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/key", dir);
    atomic_file_t *f = atomic_file_new(path, 0644);
    assert_non_null(f);
    assert_string_equal(atomic_file_path(f), path);
    const char *tmp = atomic_file_tmp_path(f);
    assert_int_equal(strncmp(tmp, path, strlen(path)), 0);
    assert_non_null(strstr(tmp, ".tmp."));
    assert_int_equal(s_mode(tmp), 0600);
    assert_int_equal(access(path, F_OK), -1); /* nothing at the target yet */
    assert_int_equal(atomic_file_write(f, "abc", 3), 0);
    assert_int_equal(atomic_file_write(f, "def", 3), 0);
    assert_int_equal(atomic_file_commit(&f), 0);
    assert_null(f);
    char *got = s_read(path, NULL);
    assert_string_equal(got, "abcdef");
    free(got);
    assert_int_equal(s_mode(path), 0644);
    assert_int_equal(s_count(dir), 1);
}

/* A library that writes by file name (HDF5 does) truncates and fills the temporary file. */
static void test_write_by_tmp_path(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/lib.out", dir);
    s_write_old(path);
    atomic_file_t *f = atomic_file_new(path, 0640);
    assert_non_null(f);
    FILE *lib = fopen(atomic_file_tmp_path(f), "w");
    assert_non_null(lib);
    fputs("written by name\n", lib);
    assert_int_equal(fclose(lib), 0);
    s_assert_old(path); /* still the old file until commit */
    assert_int_equal(atomic_file_commit(&f), 0);
    char *got = s_read(path, NULL);
    assert_string_equal(got, "written by name\n");
    free(got);
    assert_int_equal(s_mode(path), 0640);
    assert_int_equal(s_count(dir), 1);
}

static void test_abort_keeps_target(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/kept", dir);
    s_write_old(path);
    atomic_file_t *f = atomic_file_new(path, 0644);
    assert_non_null(f);
    assert_int_equal(atomic_file_write(f, "partial", 7), 0);
    assert_int_equal(s_count(dir), 2);
    atomic_file_destroy(&f);
    assert_null(f);
    atomic_file_destroy(&f); /* twice is safe */
    atomic_file_destroy(NULL);
    s_assert_old(path);
    assert_int_equal(s_count(dir), 1);
}

static void test_missing_folder(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/no/such/folder/file", dir);
    medfl_error_clear();
    assert_int_equal(atomic_file_replace(path, "x", 1, 0644), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EIO);
    assert_non_null(strstr(medfl_error_message(), path));
    assert_non_null(strstr(medfl_error_message(), "No such file or directory"));
    assert_null(atomic_file_new(path, 0644));
    assert_int_equal(s_count(dir), 0);
    /* A parent that is a file, not a folder. */
    char file[512], below[600];
    snprintf(file, sizeof file, "%s/plain", dir);
    s_write_old(file);
    snprintf(below, sizeof below, "%s/x", file);
    assert_int_equal(atomic_file_replace(below, "x", 1, 0644), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EIO);
    s_assert_old(file);
}

/* write() fails with EFBIG past RLIMIT_FSIZE (SIGXFSZ ignored): the error is reported,
 * commit refuses, the target keeps its old bytes and the temporary file is gone. */
static void test_write_failure_keeps_target(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/big", dir);
    s_write_old(path);
    size_t n = 64 * 1024;
    char *data = malloc(n);
    assert_non_null(data);
    memset(data, 'z', n);
    struct rlimit old;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {.rlim_cur = 4096, .rlim_max = old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    medfl_error_clear();
    int rc = atomic_file_replace(path, data, n, 0644);
    int code = medfl_error_code();
    char msg[512];
    snprintf(msg, sizeof msg, "%s", medfl_error_message());
    /* The streaming form: the failed write sticks, commit refuses. */
    atomic_file_t *f = atomic_file_new(path, 0644);
    int w1 = f ? atomic_file_write(f, data, n) : 0;
    int w2 = f ? atomic_file_write(f, "x", 1) : 0;
    int c = f ? atomic_file_commit(&f) : 0;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, old_handler);
    free(data);
    assert_int_equal(rc, -1);
    assert_int_equal(code, MEDFL_EIO);
    assert_non_null(strstr(msg, "write failed"));
    assert_non_null(strstr(msg, path));
    assert_int_equal(w1, -1);
    assert_int_equal(w2, -1);
    assert_int_equal(c, -1);
    assert_null(f);
    s_assert_old(path);
    assert_int_equal(s_count(dir), 1);
}

/* rename() onto a non-empty folder fails: the folder is untouched, no temporary file left. */
static void test_rename_failure(void **state)
{
    const char *dir = *state;
    char path[512], inner[600];
    snprintf(path, sizeof path, "%s/occupied", dir);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(inner, sizeof inner, "%s/inside", path);
    s_write_old(inner);
    medfl_error_clear();
    assert_int_equal(atomic_file_replace(path, "x", 1, 0644), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EIO);
    assert_non_null(strstr(medfl_error_message(), "rename failed"));
    s_assert_old(inner);
    assert_int_equal(s_count(dir), 1);
    assert_int_equal(s_count(path), 1);
}

/* A folder without write permission: creating the temporary file fails and the existing
 * target is kept. Run as an unprivileged user (root bypasses folder modes). */
static void test_read_only_folder(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/ro", dir);
    s_write_old(path);
    assert_int_equal(chmod(path, 0666), 0);
    assert_int_equal(chmod(dir, 0555), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(10);
        if (atomic_file_replace(path, "new", 3, 0644) != -1) _exit(11);
        if (medfl_error_code() != MEDFL_EIO) _exit(12);
        if (!strstr(medfl_error_message(), "Permission denied")) _exit(13);
        if (atomic_file_new(path, 0644) != NULL) _exit(14);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(chmod(dir, 0700), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    s_assert_old(path);
    assert_int_equal(s_count(dir), 1);
}

static void test_sync_dir(void **state)
{
    const char *dir = *state;
    char path[512];
    snprintf(path, sizeof path, "%s/f", dir);
    assert_int_equal(atomic_file_sync_dir(path), 0);
    assert_int_equal(atomic_file_sync_dir("relative-name"), 0); /* the current folder */
    assert_int_equal(atomic_file_sync_dir("/top-level"), 0);    /* "/" */
    snprintf(path, sizeof path, "%s/missing/f", dir);
    assert_int_equal(atomic_file_sync_dir(path), -1);
    assert_non_null(strstr(medfl_error_message(), "fsync of the folder"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replace_creates_and_replaces, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_mode_honoured, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_temp_file_private_until_commit, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_write_by_tmp_path, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_abort_keeps_target, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_missing_folder, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_write_failure_keeps_target, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_rename_failure, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_read_only_folder, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_sync_dir, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
