/* The model-family tables (node/engine/family): target lists parse per family with clear
 * errors, the name builders give the Hugging Face / PEFT / GGUF names, and -- the point of
 * one authority -- the BERT encoder's and the Llama decoder's own tensor tables carry exactly
 * the names the family builds; the type-erased ops reach the family's model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/error.h"
#include "node/engine/backend.h"
#include "node/engine/family.h"
#include "node/engine/llama.h"
#include "node/engine/model.h"

static void s_fails_with(int rc, const char *needle)
{
    assert_int_equal(rc, -1);
    if (!strstr(medfl_error_message(), needle))
        fail_msg("error '%s' lacks '%s'", medfl_error_message(), needle);
}

static void test_find(void **state)
{
    (void)state;
    assert_ptr_equal(family_find("bert"), family_bert());
    assert_ptr_equal(family_find("llama"), family_llama());
    assert_null(family_find("gpt2"));
    assert_non_null(strstr(medfl_error_message(), "'gpt2' unknown"));
    assert_null(family_find(NULL));
}

static void test_parse_bert(void **state)
{
    (void)state;
    const model_family_t *f = family_bert();
    unsigned m = 99;
    assert_int_equal(family_targets_parse(f, "query,value", &m), 0);
    assert_int_equal(m, LORA_QUERY | LORA_VALUE);
    /* config, PEFT and module names all name the same target */
    assert_int_equal(family_targets_parse(f, " attn_out, intermediate.dense ,attention.self.key", &m), 0);
    assert_int_equal(m, LORA_ATTN_OUT | LORA_FFN_IN | LORA_KEY);
    assert_int_equal(family_targets_parse(f, "all", &m), 0);
    assert_int_equal(m, LORA_ALL);
    assert_int_equal(family_targets_parse(f, "none", &m), 0);
    assert_int_equal(m, 0);
    /* the model's own parser is the family's */
    assert_int_equal(model_lora_targets_parse("ffn_out", &m), 0);
    assert_int_equal(m, LORA_FFN_OUT);
    m = 7;
    s_fails_with(family_targets_parse(f, "query,q_proj", &m), "unknown bert target 'q_proj'");
    assert_non_null(strstr(medfl_error_message(), "query, key, value, attn_out"));
    assert_int_equal(m, 7); /* untouched on error */
    s_fails_with(family_targets_parse(f, " , ", &m), "empty list");
    s_fails_with(family_targets_parse(f, "query,none", &m), "'none'");
    s_fails_with(family_targets_parse(f, NULL, &m), "empty list");
    /* a hostile entry is cut in the message */
    char longname[300];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    s_fails_with(family_targets_parse(f, longname, &m), "unknown bert target");
    assert_true(strlen(medfl_error_message()) < 250);
}

static void test_parse_llama(void **state)
{
    (void)state;
    const model_family_t *f = family_llama();
    unsigned m = 0;
    assert_int_equal(family_targets_parse(f, "q_proj, v", &m), 0);
    assert_int_equal(m, LLAMA_LORA_Q | LLAMA_LORA_V);
    assert_int_equal(family_targets_parse(f, "mlp.down_proj,gate", &m), 0);
    assert_int_equal(m, LLAMA_LORA_DOWN | LLAMA_LORA_GATE);
    assert_int_equal(llama_lora_targets_parse("all", &m), 0);
    assert_int_equal(m, LLAMA_LORA_ALL);
    assert_int_equal(family_targets_all(f), LLAMA_LORA_ALL);
    /* a decoder always has adapters: "none" is not a list here */
    s_fails_with(family_targets_parse(f, "none", &m), "unknown llama target 'none'");
    s_fails_with(family_targets_parse(f, "query", &m), "expected q, k, v, o, gate, up, down, all)");
}

static void test_names(void **state)
{
    (void)state;
    char nm[FAMILY_NAME_MAX];
    const model_family_t *b = family_bert(), *l = family_llama();
    assert_int_equal(family_lora_name(b, 3, 0, 'A', nm, sizeof nm), 0);
    assert_string_equal(nm, "base_model.model.encoder.layer.3.attention.self.query.lora_A.weight");
    assert_int_equal(family_lora_name(l, 2, 6, 'B', nm, sizeof nm), 0);
    assert_string_equal(nm, "base_model.model.model.layers.2.mlp.down_proj.lora_B.weight");
    assert_int_equal(family_base_name(l, 0, 3, "weight", nm, sizeof nm), 0);
    assert_string_equal(nm, "model.layers.0.self_attn.o_proj.weight");
    assert_int_equal(family_gguf_name(l, 29, 0, "weight", nm, sizeof nm), 0);
    assert_string_equal(nm, "blk.29.attn_q.weight");
    assert_int_equal(family_gguf_name(l, 1, 4, "weight", nm, sizeof nm), 0);
    assert_string_equal(nm, "blk.1.ffn_gate.weight");
    s_fails_with(family_gguf_name(b, 0, 0, "weight", nm, sizeof nm), "no GGUF name");
    s_fails_with(family_lora_name(b, 0, 6, 'A', nm, sizeof nm), "out of range");
    s_fails_with(family_lora_name(b, -1, 0, 'A', nm, sizeof nm), "out of range");
    s_fails_with(family_lora_name(b, 0, 0, 'C', nm, sizeof nm), "neither A nor B");
    s_fails_with(family_lora_name(b, 0, 0, 'A', nm, 20), "longer than 20 bytes");
    const char *names[FAMILY_MAX_TARGETS];
    assert_int_equal(family_targets_names(b, LORA_KEY | LORA_FFN_OUT, names), 2);
    assert_string_equal(names[0], "key");
    assert_string_equal(names[1], "ffn_out");
    assert_int_equal(family_target_find(l, "up_proj"), 5);
    assert_int_equal(family_target_find(l, "up"), 5);
    assert_int_equal(family_target_find(l, "upx"), -1);
    assert_int_equal(family_target_find(l, NULL), -1);
}

/* Every LoRA tensor of a model with all targets is, in order, the family's name for it, and
 * every target's base weight is found under the family's HF name. */
static void test_bert_model_uses_table(void **state)
{
    (void)state;
    model_config_t cfg;
    model_config_default(&cfg);
    cfg.vocab_size = 20, cfg.hidden = 8, cfg.layers = 2, cfg.heads = 2, cfg.ffn = 10;
    cfg.max_position = 8, cfg.num_labels = 2, cfg.lora_r = 2, cfg.lora_targets = LORA_ALL;
    backend_t *be = backend_cpu_new(1);
    model_t *m = model_new(&cfg, be);
    assert_non_null(m);
    const model_family_t *f = family_bert();
    char nm[FAMILY_NAME_MAX];
    size_t i = 0;
    for (int l = 0; l < cfg.layers; l++)
        for (int t = 0; t < f->n_targets; t++) {
            for (char w = 'A'; w <= 'B'; w++) {
                assert_int_equal(family_lora_name(f, l, t, w, nm, sizeof nm), 0);
                assert_string_equal(model_trainable_tensor(m, i++)->name, nm);
            }
            assert_int_equal(family_base_name(f, l, t, "weight", nm, sizeof nm), 0);
            assert_non_null(model_base_find(m, nm));
            assert_int_equal(family_base_name(f, l, t, "bias", nm, sizeof nm), 0);
            assert_non_null(model_base_find(m, nm));
        }
    assert_string_equal(model_trainable_tensor(m, i)->name, "classifier.weight");

    /* the ops reach the same model: same loss and gradients as the direct calls */
    model_base_init_random(m, 7, 0.5f);
    model_init_trainable(m, 3);
    int32_t ids[8] = {1, 5, 7, 2, 1, 9, 3, 2}, mask[8] = {1, 1, 1, 1, 1, 1, 1, 0};
    int32_t labels[2] = {0, 1};
    model_batch_t in = {.ids = ids, .mask = mask, .labels = labels, .B = 2, .T = 4};
    size_t n = model_trainable_numel(m);
    float l1 = 0, l2 = 0, *g1 = calloc(n, sizeof(float)), *g2 = calloc(n, sizeof(float));
    assert_non_null(g1);
    assert_non_null(g2);
    model_zero_grad(m);
    assert_int_equal(model_forward(m, &in, &l1, NULL), 0);
    assert_int_equal(model_backward(m), 0);
    assert_int_equal(model_grad_get(m, g1, n), 0);
    model_zero_grad(m);
    assert_int_equal(f->ops.forward_loss(m, &in, &l2), 0);
    assert_int_equal(f->ops.backward(m), 0);
    assert_int_equal(model_grad_get(m, g2, n), 0);
    assert_true(l1 > 0);
    assert_float_equal(l1, l2, 0);
    assert_memory_equal(g1, g2, n * sizeof(float));
    float *pe = model_per_example_buffer(m, 2);
    assert_non_null(pe);
    assert_int_equal(f->ops.per_example_grads(m, pe), 0);
    /* bad input through the ops is the model's own error, not a crash */
    ids[0] = 1000;
    assert_int_equal(f->ops.forward_loss(m, &in, &l2), -1);
    free(g1);
    free(g2);
    model_destroy(&m);
    backend_destroy(&be);
}

static void test_llama_model_uses_table(void **state)
{
    (void)state;
    llama_config_t c;
    llama_config_default(&c);
    c.n_layers = 2, c.hidden = 8, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 4, c.ffn = 12;
    c.vocab = 16, c.max_seq = 8, c.lora_r = 2, c.lora_targets = LLAMA_LORA_ALL;
    backend_t *be = backend_cpu_new(1);
    llama_t *m = llama_new(&c, be);
    assert_non_null(m);
    const model_family_t *f = family_llama();
    char nm[FAMILY_NAME_MAX];
    size_t i = 0;
    for (int l = 0; l < c.n_layers; l++)
        for (int t = 0; t < f->n_targets; t++) {
            for (char w = 'A'; w <= 'B'; w++) {
                assert_int_equal(family_lora_name(f, l, t, w, nm, sizeof nm), 0);
                assert_string_equal(llama_trainable_tensor(m, i++)->name, nm);
            }
            assert_int_equal(family_base_name(f, l, t, "weight", nm, sizeof nm), 0);
            assert_non_null(llama_base_find(m, nm));
        }
    assert_int_equal(i, llama_trainable_count(m));

    llama_base_init_random(m, 5, 0.3f);
    llama_init_trainable(m, 9);
    int32_t ids[8] = {1, 5, 7, 2, 3, 9, 4, 2};
    int32_t labels[8] = {LLAMA_IGNORE, 7, 2, 3, LLAMA_IGNORE, LLAMA_IGNORE, 4, 2};
    llama_batch_t in = {.ids = ids, .labels = labels, .B = 2, .T = 4};
    float loss = 0;
    llama_zero_grad(m);
    assert_int_equal(f->ops.forward_loss(m, &in, &loss), 0);
    assert_true(loss > 0);
    assert_int_equal(f->ops.backward(m), 0);
    size_t n = llama_trainable_numel(m);
    float *pe = calloc(2 * n, sizeof(float));
    assert_non_null(pe);
    assert_int_equal(f->ops.per_example_grads(m, pe), 0);
    free(pe);
    llama_destroy(&m);
    backend_destroy(&be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_parse_bert),
        cmocka_unit_test(test_parse_llama),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_bert_model_uses_table),
        cmocka_unit_test(test_llama_model_uses_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
