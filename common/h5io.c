/* HDF5 helpers: see h5io.h. The HDF5 library's own error stack printing is switched off so
 * that problems surface once, as medfl errors naming the file and object. */
#include "common/h5io.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/atomic_file.h"
#include "common/error.h"

struct h5io_t {
    hid_t file;
    char *path;          /* final path */
    atomic_file_t *out;  /* the temporary file while writing, NULL for readers */
};

static void s_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

const char *h5io_path(const h5io_t *self) { return self->path; }

h5io_t *h5io_create(const char *path)
{
    s_quiet();
    h5io_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = strdup(path))) {
        free(self);
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    if (!(self->out = atomic_file_new(path, 0644))) {
        free(self->path);
        free(self);
        return NULL;
    }
    /* H5F_ACC_TRUNC truncates the temporary file in place, as atomic_file requires. */
    self->file = H5Fcreate(atomic_file_tmp_path(self->out), H5F_ACC_TRUNC, H5P_DEFAULT,
                           H5P_DEFAULT);
    if (self->file < 0) {
        medfl_error_set(MEDFL_EIO, "%s: cannot create HDF5 file", path);
        h5io_destroy(&self);
        return NULL;
    }
    return self;
}

h5io_t *h5io_open(const char *path)
{
    s_quiet();
    if (access(path, R_OK) != 0) {
        medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s",
                        path, strerror(errno));
        return NULL;
    }
    h5io_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = strdup(path))) {
        free(self);
        medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    self->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (self->file < 0) {
        medfl_error_set(MEDFL_EFORMAT, "%s: not an HDF5 file or corrupt", path);
        h5io_destroy(&self);
        return NULL;
    }
    return self;
}

void h5io_destroy(h5io_t **self_p)
{
    if (!self_p || !*self_p) return;
    h5io_t *self = *self_p;
    if (self->file > 0) H5Fclose(self->file);
    atomic_file_destroy(&self->out);
    free(self->path);
    free(self);
    *self_p = NULL;
}

int h5io_commit(h5io_t **self_p)
{
    h5io_t *self = *self_p;
    if (!self || !self->out) {
        h5io_destroy(self_p);
        return medfl_error_set(MEDFL_EINVAL, "h5io_commit: file was not opened for writing");
    }
    herr_t e = H5Fclose(self->file);
    self->file = -1;
    int rc = e < 0 ? medfl_error_set(MEDFL_EIO, "%s: closing the HDF5 file failed", self->path)
                   : atomic_file_commit(&self->out);
    h5io_destroy(self_p);
    return rc;
}

bool h5io_exists(h5io_t *self, const char *obj_path)
{
    if (strcmp(obj_path, "/") == 0) return true;
    /* H5Lexists needs every parent to exist: walk the path. */
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", obj_path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        htri_t ok = H5Lexists(self->file, buf, H5P_DEFAULT);
        *p = '/';
        if (ok <= 0) return false;
    }
    return H5Lexists(self->file, buf, H5P_DEFAULT) > 0;
}

static hid_t s_lcpl(void)
{
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl >= 0) {
        H5Pset_create_intermediate_group(lcpl, 1);
        H5Pset_char_encoding(lcpl, H5T_CSET_UTF8);
    }
    return lcpl;
}

int h5io_group(h5io_t *self, const char *group_path)
{
    if (h5io_exists(self, group_path)) return 0;
    hid_t lcpl = s_lcpl();
    hid_t g = H5Gcreate2(self->file, group_path, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (g < 0) return medfl_error_set(MEDFL_EIO, "%s: cannot create group '%s'", self->path, group_path);
    H5Gclose(g);
    return 0;
}

typedef struct {
    char **names;
    size_t n, cap;
    int failed;
} s_list_t;

static herr_t s_list_cb(hid_t g, const char *name, const H5L_info_t *info, void *data)
{
    (void)g;
    (void)info;
    s_list_t *l = data;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **v = realloc(l->names, cap * sizeof *v);
        if (!v) return (l->failed = 1, -1);
        l->names = v;
        l->cap = cap;
    }
    if (!(l->names[l->n] = strdup(name))) return (l->failed = 1, -1);
    l->n++;
    return 0;
}

int h5io_list(h5io_t *self, const char *group_path, char ***names, size_t *count)
{
    *names = NULL;
    *count = 0;
    hid_t g = H5Gopen2(self->file, group_path, H5P_DEFAULT);
    if (g < 0)
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: group '%s' not found", self->path, group_path);
    s_list_t l = {0};
    herr_t e = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, s_list_cb, &l);
    H5Gclose(g);
    if (e < 0 || l.failed) {
        h5io_strings_free(&l.names, l.n);
        return medfl_error_set(MEDFL_EIO, "%s: cannot list group '%s'", self->path, group_path);
    }
    *names = l.names;
    *count = l.n;
    return 0;
}

int h5io_write_f32(h5io_t *self, const char *dset, int ndim, const int64_t *shape,
                   const float *data)
{
    if (ndim < 0 || ndim > NT_MAX_DIMS)
        return medfl_error_set(MEDFL_EINVAL, "%s: dataset '%s': %d dimensions", self->path, dset, ndim);
    hsize_t dims[NT_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return medfl_error_set(MEDFL_EINVAL, "%s: dataset '%s': negative dimension",
                                   self->path, dset);
        dims[i] = (hsize_t)shape[i];
    }
    hid_t space = ndim ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t lcpl = s_lcpl();
    hid_t d = H5Dcreate2(self->file, dset, H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int rc = 0;
    if (d < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot create dataset '%s' (exists?)", self->path, dset);
    else if (H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot write dataset '%s'", self->path, dset);
    if (d >= 0) H5Dclose(d);
    H5Pclose(lcpl);
    H5Sclose(space);
    return rc;
}

static hid_t s_open_float(h5io_t *self, const char *dset, int *ndim, int64_t *shape)
{
    if (!h5io_exists(self, dset)) {
        medfl_error_set(MEDFL_ENOTFOUND, "%s: dataset '%s' not found", self->path, dset);
        return -1;
    }
    hid_t d = H5Dopen2(self->file, dset, H5P_DEFAULT);
    if (d < 0) {
        medfl_error_set(MEDFL_EFORMAT, "%s: '%s' is not a dataset", self->path, dset);
        return -1;
    }
    hid_t type = H5Dget_type(d);
    H5T_class_t cls = H5Tget_class(type);
    H5Tclose(type);
    if (cls != H5T_FLOAT) {
        H5Dclose(d);
        medfl_error_set(MEDFL_EFORMAT, "%s: dataset '%s' is not floating point", self->path, dset);
        return -1;
    }
    hid_t space = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(space);
    hsize_t dims[NT_MAX_DIMS];
    if (nd < 0 || nd > NT_MAX_DIMS) {
        H5Sclose(space);
        H5Dclose(d);
        medfl_error_set(MEDFL_EFORMAT, "%s: dataset '%s' has %d dimensions", self->path, dset, nd);
        return -1;
    }
    H5Sget_simple_extent_dims(space, dims, NULL);
    H5Sclose(space);
    *ndim = nd;
    for (int i = 0; i < nd; i++) shape[i] = (int64_t)dims[i];
    return d;
}

int h5io_shape(h5io_t *self, const char *dset, int *ndim, int64_t shape[NT_MAX_DIMS])
{
    hid_t d = s_open_float(self, dset, ndim, shape);
    if (d < 0) return -1;
    H5Dclose(d);
    return 0;
}

int h5io_read_f32(h5io_t *self, const char *dset, int *ndim, int64_t shape[NT_MAX_DIMS],
                  float **data)
{
    *data = NULL;
    hid_t d = s_open_float(self, dset, ndim, shape);
    if (d < 0) return -1;
    named_tensor_t t = {.ndim = *ndim};
    memcpy(t.shape, shape, sizeof t.shape);
    size_t n = named_tensor_numel(&t);
    float *buf = malloc((n ? n : 1) * sizeof *buf);
    int rc = 0;
    if (!buf)
        rc = medfl_error_set(MEDFL_ENOMEM, "%s: dataset '%s': out of memory", self->path, dset);
    else if (n && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot read dataset '%s'", self->path, dset);
    H5Dclose(d);
    if (rc < 0) {
        free(buf);
        return -1;
    }
    *data = buf;
    return 0;
}

int h5io_read_f32_into(h5io_t *self, const char *dset, int ndim, const int64_t *shape,
                       float *dst)
{
    int nd;
    int64_t got[NT_MAX_DIMS];
    hid_t d = s_open_float(self, dset, &nd, got);
    if (d < 0) return -1;
    bool same = nd == ndim;
    for (int i = 0; same && i < nd; i++) same = got[i] == shape[i];
    int rc = 0;
    if (!same) {
        char a[128], b[128];
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: dataset '%s' has shape %s, expected %s",
                             self->path, dset, named_tensor_shape_str(nd, got, a, sizeof a),
                             named_tensor_shape_str(ndim, shape, b, sizeof b));
    } else if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0) {
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot read dataset '%s'", self->path, dset);
    }
    H5Dclose(d);
    return rc;
}

/* Opens obj for attribute access; creates it as a group when writing and missing. */
static hid_t s_obj(h5io_t *self, const char *obj, bool create)
{
    if (!h5io_exists(self, obj)) {
        if (!create || h5io_group(self, obj) < 0) {
            if (!create)
                medfl_error_set(MEDFL_ENOTFOUND, "%s: object '%s' not found", self->path, obj);
            return -1;
        }
    }
    hid_t o = H5Oopen(self->file, obj, H5P_DEFAULT);
    if (o < 0) medfl_error_set(MEDFL_EIO, "%s: cannot open '%s'", self->path, obj);
    return o;
}

static int s_set_attr(h5io_t *self, const char *obj, const char *name, hid_t type,
                      const void *value)
{
    hid_t o = s_obj(self, obj, true);
    if (o < 0) return -1;
    if (H5Aexists(o, name) > 0) H5Adelete(o, name);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(o, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    int rc = 0;
    if (a < 0 || H5Awrite(a, type, value) < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot write attribute '%s' of '%s'", self->path,
                             name, obj);
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    H5Oclose(o);
    return rc;
}

static hid_t s_vlen_str(void)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

int h5io_set_attr_str(h5io_t *self, const char *obj, const char *name, const char *value)
{
    hid_t t = s_vlen_str();
    int rc = s_set_attr(self, obj, name, t, &value);
    H5Tclose(t);
    return rc;
}

int h5io_set_attr_i64(h5io_t *self, const char *obj, const char *name, int64_t value)
{
    return s_set_attr(self, obj, name, H5T_STD_I64LE, &value);
}

int h5io_set_attr_f64(h5io_t *self, const char *obj, const char *name, double value)
{
    return s_set_attr(self, obj, name, H5T_IEEE_F64LE, &value);
}

bool h5io_has_attr(h5io_t *self, const char *obj, const char *name)
{
    if (!h5io_exists(self, obj)) return false;
    hid_t o = H5Oopen(self->file, obj, H5P_DEFAULT);
    if (o < 0) return false;
    bool ok = H5Aexists(o, name) > 0;
    H5Oclose(o);
    return ok;
}

/* Opens a scalar (or 1-element) attribute, checking its class. */
static hid_t s_get_attr(h5io_t *self, const char *obj, const char *name, H5T_class_t want1,
                        H5T_class_t want2, const char *what)
{
    hid_t o = s_obj(self, obj, false);
    if (o < 0) return -1;
    if (H5Aexists(o, name) <= 0) {
        H5Oclose(o);
        medfl_error_set(MEDFL_ENOTFOUND, "%s: attribute '%s' of '%s' not found", self->path,
                        name, obj);
        return -1;
    }
    hid_t a = H5Aopen(o, name, H5P_DEFAULT);
    H5Oclose(o);
    if (a < 0) {
        medfl_error_set(MEDFL_EIO, "%s: cannot open attribute '%s' of '%s'", self->path, name, obj);
        return -1;
    }
    hid_t t = H5Aget_type(a), space = H5Aget_space(a);
    H5T_class_t cls = H5Tget_class(t);
    hssize_t npoints = H5Sget_simple_extent_npoints(space);
    H5Tclose(t);
    H5Sclose(space);
    if ((cls != want1 && cls != want2) || npoints != 1) {
        H5Aclose(a);
        medfl_error_set(MEDFL_EFORMAT, "%s: attribute '%s' of '%s' is not a single %s",
                        self->path, name, obj, what);
        return -1;
    }
    return a;
}

int h5io_get_attr_i64(h5io_t *self, const char *obj, const char *name, int64_t *value)
{
    hid_t a = s_get_attr(self, obj, name, H5T_INTEGER, H5T_INTEGER, "integer");
    if (a < 0) return -1;
    herr_t e = H5Aread(a, H5T_NATIVE_INT64, value);
    H5Aclose(a);
    return e < 0 ? medfl_error_set(MEDFL_EIO, "%s: cannot read attribute '%s'", self->path, name) : 0;
}

int h5io_get_attr_f64(h5io_t *self, const char *obj, const char *name, double *value)
{
    hid_t a = s_get_attr(self, obj, name, H5T_FLOAT, H5T_INTEGER, "number");
    if (a < 0) return -1;
    herr_t e = H5Aread(a, H5T_NATIVE_DOUBLE, value);
    H5Aclose(a);
    return e < 0 ? medfl_error_set(MEDFL_EIO, "%s: cannot read attribute '%s'", self->path, name) : 0;
}

int h5io_get_attr_str(h5io_t *self, const char *obj, const char *name, char **value)
{
    *value = NULL;
    hid_t a = s_get_attr(self, obj, name, H5T_STRING, H5T_STRING, "string");
    if (a < 0) return -1;
    hid_t ft = H5Aget_type(a);
    int rc = 0;
    if (H5Tis_variable_str(ft) > 0) {
        hid_t mt = s_vlen_str();
        char *s = NULL;
        if (H5Aread(a, mt, &s) < 0 || !s) {
            rc = medfl_error_set(MEDFL_EIO, "%s: cannot read attribute '%s'", self->path, name);
        } else {
            if (!(*value = strdup(s))) rc = medfl_error_set(MEDFL_ENOMEM, "out of memory");
            H5free_memory(s);
        }
        H5Tclose(mt);
    } else {
        size_t n = H5Tget_size(ft);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n + 1);
        H5Tset_strpad(mt, H5T_STR_NULLTERM);
        char *s = calloc(1, n + 2);
        if (!s || H5Aread(a, mt, s) < 0) {
            free(s);
            rc = medfl_error_set(MEDFL_EIO, "%s: cannot read attribute '%s'", self->path, name);
        } else {
            *value = s;
        }
        H5Tclose(mt);
    }
    H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

int h5io_write_strings(h5io_t *self, const char *dset, const char *const *list, size_t count)
{
    hsize_t dims[1] = {count};
    hid_t space = H5Screate_simple(1, dims, NULL);
    hid_t t = s_vlen_str(), lcpl = s_lcpl();
    hid_t d = H5Dcreate2(self->file, dset, t, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    int rc = 0;
    if (d < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot create dataset '%s'", self->path, dset);
    else if (count && H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, list) < 0)
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot write dataset '%s'", self->path, dset);
    if (d >= 0) H5Dclose(d);
    H5Pclose(lcpl);
    H5Tclose(t);
    H5Sclose(space);
    return rc;
}

int h5io_read_strings(h5io_t *self, const char *dset, char ***list, size_t *count)
{
    *list = NULL;
    *count = 0;
    if (!h5io_exists(self, dset))
        return medfl_error_set(MEDFL_ENOTFOUND, "%s: dataset '%s' not found", self->path, dset);
    hid_t d = H5Dopen2(self->file, dset, H5P_DEFAULT);
    if (d < 0) return medfl_error_set(MEDFL_EFORMAT, "%s: '%s' is not a dataset", self->path, dset);
    hid_t ft = H5Dget_type(d), space = H5Dget_space(d);
    int rc = 0;
    char **raw = NULL, **out = NULL;
    size_t n = 0;
    if (H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) <= 0 ||
        H5Sget_simple_extent_ndims(space) != 1) {
        rc = medfl_error_set(MEDFL_EFORMAT, "%s: dataset '%s' is not a list of variable-length "
                                            "strings", self->path, dset);
        goto done;
    }
    hsize_t dims[1];
    H5Sget_simple_extent_dims(space, dims, NULL);
    n = (size_t)dims[0];
    raw = calloc(n ? n : 1, sizeof *raw);
    out = calloc(n ? n : 1, sizeof *out);
    if (!raw || !out) {
        rc = medfl_error_set(MEDFL_ENOMEM, "%s: dataset '%s': out of memory", self->path, dset);
        goto done;
    }
    hid_t mt = s_vlen_str();
    herr_t e = n ? H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) : 0;
    if (e < 0) {
        H5Tclose(mt);
        rc = medfl_error_set(MEDFL_EIO, "%s: cannot read dataset '%s'", self->path, dset);
        goto done;
    }
    for (size_t i = 0; i < n && rc == 0; i++)
        if (!(out[i] = strdup(raw[i] ? raw[i] : "")))
            rc = medfl_error_set(MEDFL_ENOMEM, "%s: out of memory", self->path);
    H5Dvlen_reclaim(mt, space, H5P_DEFAULT, raw);
    H5Tclose(mt);
done:
    free(raw);
    H5Tclose(ft);
    H5Sclose(space);
    H5Dclose(d);
    if (rc < 0) {
        h5io_strings_free(&out, n);
        return -1;
    }
    *list = out;
    *count = n;
    return 0;
}

void h5io_strings_free(char ***list_p, size_t count)
{
    if (!list_p || !*list_p) return;
    for (size_t i = 0; i < count; i++) free((*list_p)[i]);
    free(*list_p);
    *list_p = NULL;
}
