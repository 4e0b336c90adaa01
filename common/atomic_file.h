/* Crash-safe file replacement, the one way medfl writes a file that something else reads:
 * keys, model versions, adapters, base models, optimizer state, PEFT exports, reports, the
 * bound-endpoint file. A killed process (SIGKILL, OOM, power loss) must never leave a
 * half-written file where a node would load a model or a daemon would read its key: readers
 * see the old file or the whole new one. So bytes go to a temporary file in the target's own
 * folder (a rename across file systems is not atomic), which is fsynced, renamed over the
 * target, and the folder is fsynced so the rename itself survives a crash.
 *
 * The temporary file is created 0600 (mkstemp) and gets its final mode only just before the
 * rename, so a secret is never readable by others, even for an instant. Writers that fill a
 * buffer use atomic_file_replace; writers that stream use atomic_file_new / _write /
 * _commit; writers that go through a library wanting a file name (HDF5) write to
 * atomic_file_tmp_path and then commit. Destroying an uncommitted handle removes the
 * temporary file and leaves the target untouched. */
#ifndef MEDFL_ATOMIC_FILE_H
#define MEDFL_ATOMIC_FILE_H

#include <stddef.h>
#include <sys/types.h>

typedef struct atomic_file_t atomic_file_t;

/* Starts replacing `path`: creates "<path>.tmp.XXXXXX" next to it. `mode` is what the file
 * gets at commit (0600 for secrets). NULL on error (missing or unwritable folder). */
atomic_file_t *atomic_file_new(const char *path, mode_t mode);
/* Aborts an uncommitted file: closes and removes the temporary file. Safe on NULL and twice. */
void atomic_file_destroy(atomic_file_t **self_p);

/* Appends bytes to the temporary file (retrying short writes and EINTR). After a failure the
 * handle refuses to commit. */
int atomic_file_write(atomic_file_t *self, const void *data, size_t len)
    __attribute__((warn_unused_result));
/* The temporary file's name, for libraries that open files by name. They must write to that
 * file in place (not replace it) and close it before atomic_file_commit. */
const char *atomic_file_tmp_path(const atomic_file_t *self);
/* The target path given to atomic_file_new. */
const char *atomic_file_path(const atomic_file_t *self);

/* Sets the mode, fsyncs, renames over the target and fsyncs the folder. Destroys the handle
 * either way (on failure the temporary file is removed and the target left as it was). */
int atomic_file_commit(atomic_file_t **self_p) __attribute__((warn_unused_result));

/* The whole cycle for a buffer: the target holds exactly data[0..len) with `mode`, or is
 * unchanged. */
int atomic_file_replace(const char *path, const void *data, size_t len, mode_t mode)
    __attribute__((warn_unused_result));

/* fsync of the folder holding `path`, making a rename or unlink in it durable. */
int atomic_file_sync_dir(const char *path) __attribute__((warn_unused_result));

#endif
