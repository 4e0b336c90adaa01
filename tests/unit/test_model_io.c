/* Model <-> files glue on the tiny BERT fixture: import, load the base from HDF5 into the
 * model, save the trained (here: randomly initialised) LoRA + head to an adapter file, load
 * it into a fresh model and get identical parameters and logits; mismatching r, labels or
 * base hash are refused naming the file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/engine/backend.h"
#include "common/error.h"
#include "common/log.h"
#include "node/engine/model_io.h"
#include "node/importer.h"

static char s_dir[] = "/tmp/medfl-test-modelio-XXXXXX";
static char s_base[600], s_adapter[600], s_adapter2[600];

static int s_setup(void **state)
{
    (void)state;
    log_configure(stderr, LOG_LEVEL_ERROR, LOG_FORMAT_TEXT);
    if (!mkdtemp(s_dir)) return -1;
    snprintf(s_base, sizeof s_base, "%s/base.h5", s_dir);
    snprintf(s_adapter, sizeof s_adapter, "%s/adapter.h5", s_dir);
    snprintf(s_adapter2, sizeof s_adapter2, "%s/adapter-r4.h5", s_dir);
    return model_import_hf("tests/ref/fixtures/tiny_bert", s_base);
}

static int s_teardown(void **state)
{
    (void)state;
    unlink(s_base);
    unlink(s_adapter);
    unlink(s_adapter2);
    return rmdir(s_dir);
}

static model_t *s_model(backend_t *be, base_file_t *bf, int r, int labels)
{
    model_config_t cfg;
    model_config_default(&cfg);
    model_config_from_base(&cfg, base_file_config(bf));
    cfg.lora_r = r;
    cfg.num_labels = labels;
    cfg.lora_targets = LORA_QUERY | LORA_VALUE | LORA_FFN_OUT;
    model_t *m = model_new(&cfg, be);
    assert_non_null(m);
    if (model_load_base(m, bf) < 0) fail_msg("%s", medfl_error_message());
    return m;
}

static void test_save_load(void **state)
{
    (void)state;
    backend_t *be = backend_new("cpu", 1);
    base_file_t *bf = base_file_open(s_base);
    assert_non_null(be);
    assert_non_null(bf);
    model_t *a = s_model(be, bf, 8, 3), *b = s_model(be, bf, 8, 3);
    model_init_trainable(a, 42);
    /* LoRA B starts at zero: make it non-zero so the adapter changes the output. */
    size_t n = model_trainable_numel(a);
    float *pa = malloc(n * sizeof *pa), *pb = malloc(n * sizeof *pb);
    assert_int_equal(model_trainable_get(a, pa, n), 0);
    /* (the flat buffer may pad between tensors: touch and compare only tensor ranges) */
    for (size_t k = 0; k < model_trainable_count(a); k++) {
        const model_tensor_t *t = model_trainable_tensor(a, k);
        for (size_t i = t->offset; i < t->offset + t->numel; i++)
            pa[i] += 0.01f * (float)((int)(i % 17) - 8);
    }
    assert_int_equal(model_trainable_set(a, pa, n), 0);
    const char *labels[] = {"cardiology", "neurology", "radiology"};
    if (model_save_adapter(a, s_adapter, labels, 3, base_file_hash(bf), "tiny_bert") < 0)
        fail_msg("%s", medfl_error_message());
    if (model_load_adapter(b, s_adapter, base_file_hash(bf)) < 0)
        fail_msg("%s", medfl_error_message());
    assert_int_equal(model_trainable_get(b, pb, n), 0);
    for (size_t k = 0; k < model_trainable_count(a); k++) {
        const model_tensor_t *t = model_trainable_tensor(a, k);
        assert_memory_equal(pa + t->offset, pb + t->offset, t->numel * sizeof *pa);
    }
    int32_t ids[2 * 6] = {2, 10, 20, 30, 3, 0, 2, 40, 50, 3, 0, 0};
    int32_t mask[2 * 6] = {1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0};
    model_batch_t in = {.ids = ids, .mask = mask, .B = 2, .T = 6};
    float la[6], lb[6];
    assert_int_equal(model_forward(a, &in, NULL, la), 0);
    assert_int_equal(model_forward(b, &in, NULL, lb), 0);
    assert_memory_equal(la, lb, sizeof la);
    /* The adapter names the targets as the model parses them. */
    adapter_t ad;
    assert_int_equal(adapter_read(s_adapter, &ad), 0);
    assert_int_equal(ad.n_targets, 3);
    assert_string_equal(ad.targets[2], "ffn_out");
    assert_string_equal(ad.base_hash, base_file_hash(bf));
    adapter_free(&ad);

    /* Refusals: another base, another rank, another head size. */
    assert_int_equal(model_load_adapter(b, s_adapter, "00ff"), -1);
    assert_non_null(strstr(medfl_error_message(), "base model"));
    model_t *r4 = s_model(be, bf, 4, 3), *k2 = s_model(be, bf, 8, 2);
    assert_int_equal(model_load_adapter(r4, s_adapter, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "adapter.h5"));
    assert_non_null(strstr(medfl_error_message(), "r 8"));
    assert_int_equal(model_load_adapter(k2, s_adapter, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "3 labels"));
    assert_int_equal(model_save_adapter(k2, s_adapter2, labels, 3, "", ""), -1);
    model_init_trainable(r4, 1);
    assert_int_equal(model_save_adapter(r4, s_adapter2, labels, 3, "", ""), 0);
    assert_int_equal(model_load_adapter(a, s_adapter2, base_file_hash(bf)), -1);
    free(pa);
    free(pb);
    model_destroy(&a);
    model_destroy(&b);
    model_destroy(&r4);
    model_destroy(&k2);
    base_file_destroy(&bf);
    backend_destroy(&be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_save_load),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
