/* Temporary file + fsync + rename + folder fsync: see atomic_file.h for why. The temporary
 * file is fsynced through a descriptor opened by name at commit time, so a file written by a
 * library through its own descriptor (HDF5) is flushed the same way as one written here. */
#include "common/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"

struct atomic_file_t {
    char *path;   /* target */
    char *tmp;    /* "<path>.tmp.XXXXXX" while uncommitted */
    int fd;       /* descriptor of tmp from mkstemp */
    mode_t mode;  /* given to the file at commit */
    bool failed;  /* a write failed: commit must not publish a partial file */
};

atomic_file_t *atomic_file_new(const char *path, mode_t mode)
{
    atomic_file_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = strdup(path)) || asprintf(&self->tmp, "%s.tmp.XXXXXX", path) < 0) {
        if (self) free(self->path);
        free(self);
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    self->mode = mode;
    self->fd = mkstemp(self->tmp);
    if (self->fd < 0) {
        medfl_error_set(MEDFL_EIO, "%s: cannot create temporary file: %s", path, strerror(errno));
        free(self->tmp);
        free(self->path);
        free(self);
        return NULL;
    }
    return self;
}

void atomic_file_destroy(atomic_file_t **self_p)
{
    if (!self_p || !*self_p) return;
    atomic_file_t *self = *self_p;
    if (self->fd >= 0) close(self->fd);
    if (self->tmp) {
        unlink(self->tmp);
        free(self->tmp);
    }
    free(self->path);
    free(self);
    *self_p = NULL;
}

int atomic_file_write(atomic_file_t *self, const void *data, size_t len)
{
    if (self->failed)
        return medfl_error_set(MEDFL_EIO, "%s: an earlier write failed", self->path);
    const unsigned char *p = data;
    while (len) {
        ssize_t w = write(self->fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            self->failed = true;
            return medfl_error_set(MEDFL_EIO, "%s: write failed: %s", self->path,
                                   w < 0 ? strerror(errno) : "no progress");
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

const char *atomic_file_tmp_path(const atomic_file_t *self) { return self->tmp; }

const char *atomic_file_path(const atomic_file_t *self) { return self->path; }

int atomic_file_sync_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir) return medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    int fd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || fsync(fd) < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: fsync of the folder failed: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

int atomic_file_commit(atomic_file_t **self_p)
{
    atomic_file_t *self = *self_p;
    if (!self) return medfl_error_set(MEDFL_EINVAL, "atomic_file_commit: no file");
    if (self->failed) {
        int rc = medfl_error_set(MEDFL_EIO, "%s: not replaced: a write failed", self->path);
        atomic_file_destroy(self_p);
        return rc;
    }
    int rc = 0;
    int fd = open(self->tmp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot reopen %s: %s", self->path, self->tmp,
                             strerror(errno));
    if (rc == 0 && (fchmod(fd, self->mode) < 0 || fsync(fd) < 0))
        rc = medfl_error_set(MEDFL_EIO, "%s: fsync failed: %s", self->path, strerror(errno));
    if (fd >= 0) close(fd);
    if (close(self->fd) < 0 && rc == 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: close failed: %s", self->path, strerror(errno));
    self->fd = -1;
    if (rc == 0 && rename(self->tmp, self->path) < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: rename failed: %s", self->path, strerror(errno));
    if (rc == 0) {
        free(self->tmp); /* renamed: nothing left to remove */
        self->tmp = NULL;
        rc = atomic_file_sync_dir(self->path);
    }
    atomic_file_destroy(self_p);
    return rc;
}

int atomic_file_replace(const char *path, const void *data, size_t len, mode_t mode)
{
    atomic_file_t *f = atomic_file_new(path, mode);
    if (!f) return -1;
    if (atomic_file_write(f, data, len) < 0) {
        atomic_file_destroy(&f);
        return -1;
    }
    return atomic_file_commit(&f);
}
