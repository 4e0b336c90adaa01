/* Small HDF5 helpers for medfl's model files (base model, adapters, versions): float32
 * tensors by path with their shape, string and numeric attributes, string-list datasets (the
 * vocabulary), and group listing. Files written with h5io are created under a temporary name
 * and appear at their final path only after fsync + rename (h5io_commit), so a crash never
 * leaves a half-written model where a node would load it. Every error names the file and the
 * dataset or attribute. Files are plain HDF5, readable by h5py.
 *
 * The serial HDF5 library is not thread-safe: use h5io from one thread at a time. */
#ifndef MEDFL_H5IO_H
#define MEDFL_H5IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/named_tensor.h"

typedef struct h5io_t h5io_t;

/* Starts writing `path` (through a temporary file in the same folder). */
h5io_t *h5io_create(const char *path);
/* Opens an existing file read-only. */
h5io_t *h5io_open(const char *path);
/* Closes, fsyncs and renames a created file into place; destroys the handle either way. */
int h5io_commit(h5io_t **self_p) __attribute__((warn_unused_result));
/* Closes; a created but uncommitted file is removed. Safe on NULL and twice. */
void h5io_destroy(h5io_t **self_p);
const char *h5io_path(const h5io_t *self);

bool h5io_exists(h5io_t *self, const char *obj_path);
/* Creates a group (and its parents) if missing. */
int h5io_group(h5io_t *self, const char *group_path);
/* Link names directly under a group, in name order; free with h5io_strings_free. */
int h5io_list(h5io_t *self, const char *group_path, char ***names, size_t *count);

/* float32 datasets; parent groups are created. */
int h5io_write_f32(h5io_t *self, const char *dset, int ndim, const int64_t *shape,
                   const float *data);
int h5io_shape(h5io_t *self, const char *dset, int *ndim, int64_t shape[NT_MAX_DIMS]);
/* Reads into a malloc'ed buffer (*data; free it), any float dataset converted to float32. */
int h5io_read_f32(h5io_t *self, const char *dset, int *ndim, int64_t shape[NT_MAX_DIMS],
                  float **data);
/* Reads into dst after checking the stored shape equals the expected one. */
int h5io_read_f32_into(h5io_t *self, const char *dset, int ndim, const int64_t *shape,
                       float *dst);

/* Attributes on a group or dataset (a missing group is created when writing). */
int h5io_set_attr_str(h5io_t *self, const char *obj, const char *name, const char *value);
int h5io_set_attr_i64(h5io_t *self, const char *obj, const char *name, int64_t value);
int h5io_set_attr_f64(h5io_t *self, const char *obj, const char *name, double value);
/* *value is malloc'ed. Fixed-length and variable-length strings are both accepted. */
int h5io_get_attr_str(h5io_t *self, const char *obj, const char *name, char **value);
int h5io_get_attr_i64(h5io_t *self, const char *obj, const char *name, int64_t *value);
int h5io_get_attr_f64(h5io_t *self, const char *obj, const char *name, double *value);
bool h5io_has_attr(h5io_t *self, const char *obj, const char *name);

/* One-dimensional dataset of variable-length UTF-8 strings. */
int h5io_write_strings(h5io_t *self, const char *dset, const char *const *list, size_t count);
int h5io_read_strings(h5io_t *self, const char *dset, char ***list, size_t *count);
void h5io_strings_free(char ***list_p, size_t count);

#endif
