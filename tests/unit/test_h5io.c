/* h5io: tensors, attributes and string lists round trip; shape mismatches, missing objects
 * and wrong types are errors naming file and object; an uncommitted file never appears at
 * its final path; a non-HDF5 file is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/h5io.h"

static char s_dir[] = "/tmp/medfl-test-h5io-XXXXXX";

static int s_setup(void **state)
{
    (void)state;
    return mkdtemp(s_dir) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    DIR *d = opendir(s_dir);
    struct dirent *e;
    char p[600];
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') {
            snprintf(p, sizeof p, "%s/%s", s_dir, e->d_name);
            unlink(p);
        }
    if (d) closedir(d);
    return rmdir(s_dir);
}

static size_t s_entries(void)
{
    DIR *d = opendir(s_dir);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static void test_round_trip(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/a.h5", s_dir);
    h5io_t *w = h5io_create(path);
    assert_non_null(w);
    float a[6] = {1, 2, 3, 4, 5, 6}, s = 7;
    int64_t shape[2] = {2, 3};
    assert_int_equal(h5io_write_f32(w, "/weights/encoder.layer.0.attention.self.query.weight", 2,
                                    shape, a), 0);
    assert_int_equal(h5io_write_f32(w, "/scalar", 0, NULL, &s), 0);
    assert_int_equal(h5io_set_attr_str(w, "/", "format", "medfl-test"), 0);
    assert_int_equal(h5io_set_attr_i64(w, "/config", "hidden_size", 384), 0);
    assert_int_equal(h5io_set_attr_f64(w, "/config", "layer_norm_eps", 1e-12), 0);
    assert_int_equal(h5io_set_attr_i64(w, "/config", "hidden_size", 385), 0); /* overwrite */
    const char *vocab[] = {"[PAD]", "caf\xc3\xa9", "", "##s"};
    assert_int_equal(h5io_write_strings(w, "/vocab", vocab, 4), 0);
    assert_int_equal(access(path, F_OK), -1); /* not visible before commit */
    assert_int_equal(h5io_commit(&w), 0);
    assert_null(w);
    assert_int_equal(s_entries(), 1); /* temp file renamed, nothing left over */

    h5io_t *r = h5io_open(path);
    assert_non_null(r);
    int nd;
    int64_t got_shape[NT_MAX_DIMS];
    float *data;
    assert_int_equal(h5io_read_f32(r, "/weights/encoder.layer.0.attention.self.query.weight", &nd,
                                   got_shape, &data), 0);
    assert_int_equal(nd, 2);
    assert_int_equal(got_shape[1], 3);
    assert_memory_equal(data, a, sizeof a);
    free(data);
    float dst[6];
    assert_int_equal(h5io_read_f32_into(r, "/weights/encoder.layer.0.attention.self.query.weight",
                                        2, shape, dst), 0);
    int64_t wrong[2] = {3, 2};
    assert_int_equal(h5io_read_f32_into(r, "/weights/encoder.layer.0.attention.self.query.weight",
                                        2, wrong, dst), -1);
    assert_non_null(strstr(medfl_error_message(), "has shape [2, 3], expected [3, 2]"));
    assert_non_null(strstr(medfl_error_message(), "a.h5"));
    assert_int_equal(h5io_read_f32(r, "/weights/missing", &nd, got_shape, &data), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_non_null(strstr(medfl_error_message(), "'/weights/missing'"));
    assert_int_equal(h5io_read_f32(r, "/nogroup/x/y", &nd, got_shape, &data), -1);
    assert_int_equal(h5io_read_f32(r, "/vocab", &nd, got_shape, &data), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    char *str;
    assert_int_equal(h5io_get_attr_str(r, "/", "format", &str), 0);
    assert_string_equal(str, "medfl-test");
    free(str);
    int64_t hs;
    double eps;
    assert_int_equal(h5io_get_attr_i64(r, "/config", "hidden_size", &hs), 0);
    assert_int_equal(hs, 385);
    assert_int_equal(h5io_get_attr_f64(r, "/config", "layer_norm_eps", &eps), 0);
    assert_true(eps == 1e-12);
    assert_int_equal(h5io_get_attr_i64(r, "/config", "layer_norm_eps", &hs), -1);
    assert_non_null(strstr(medfl_error_message(), "not a single integer"));
    assert_int_equal(h5io_get_attr_str(r, "/config", "nope", &str), -1);
    assert_non_null(strstr(medfl_error_message(), "'nope'"));
    assert_true(h5io_has_attr(r, "/config", "hidden_size"));
    assert_false(h5io_has_attr(r, "/config", "nope"));
    char **list;
    size_t n;
    assert_int_equal(h5io_read_strings(r, "/vocab", &list, &n), 0);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) assert_string_equal(list[i], vocab[i]);
    h5io_strings_free(&list, n);
    assert_int_equal(h5io_list(r, "/weights", &list, &n), 0);
    assert_int_equal(n, 1);
    h5io_strings_free(&list, n);
    assert_int_equal(h5io_list(r, "/missing", &list, &n), -1);
    assert_int_equal(h5io_read_strings(r, "/scalar", &list, &n), -1);
    assert_true(h5io_exists(r, "/config"));
    assert_false(h5io_exists(r, "/config/x/y"));
    h5io_destroy(&r);
    h5io_destroy(&r);
    unlink(path);
}

static void test_abandoned_and_bad_files(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/b.h5", s_dir);
    h5io_t *w = h5io_create(path);
    assert_non_null(w);
    float x = 1;
    assert_int_equal(h5io_write_f32(w, "/x", 0, NULL, &x), 0);
    assert_int_equal(h5io_write_f32(w, "/x", 0, NULL, &x), -1); /* exists */
    h5io_destroy(&w); /* abandoned: nothing left */
    assert_int_equal(s_entries(), 0);
    assert_null(h5io_open(path));
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    FILE *f = fopen(path, "w");
    fputs("not hdf5 at all", f);
    fclose(f);
    assert_null(h5io_open(path));
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    assert_non_null(strstr(medfl_error_message(), "b.h5"));
    unlink(path);
    snprintf(path, sizeof path, "%s/no-such-dir/c.h5", s_dir);
    assert_null(h5io_create(path));
    assert_int_equal(medfl_error_code(), MEDFL_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_abandoned_and_bad_files),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
