/* Decoder fine-tuning records (node/llm_data.c): the JSONL reader's errors (FILE:LINE and the
 * field, never the value), the training example's labels (LLAMA_IGNORE exactly over the
 * prompt span bpe_chat_encode reports, the response tokens and end-of-turn token labelled),
 * the de-identification gate over prompt and response, and ROUGE-L / exact match on pairs
 * whose values are worked out by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "node/engine/bpe_gguf.h"
#include "node/engine/llama.h"
#include "node/llm_data.h"
#include "testlib.h"

#define TINY "tests/ref/fixtures/llama_gguf/tiny.gguf"

static llm_records_t *s_load(const char *text)
{
    return llm_records_load_buffer("r.jsonl", text, strlen(text), 0);
}

/* Loading fails with an error containing want and without the secret value. */
static void s_bad(const char *text, const char *want)
{
    llm_records_t *r = s_load(text);
    assert_null(r);
    const char *msg = medfl_error_message();
    if (!strstr(msg, want)) fail_msg("error '%s' lacks '%s'", msg, want);
    assert_null(strstr(msg, "SECRET"));
}

static void test_reader(void **state)
{
    (void)state;
    llm_records_t *r = s_load("{\"prompt\": \"p1\", \"response\": \"r1\"}\n\n"
                              "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"},"
                              "{\"role\": \"user\", \"content\": \"u\"},"
                              "{\"role\": \"assistant\", \"content\": \"a\"}]}\n"
                              "{\"prompt\": \"q\", \"options\": [\"x\", \"y\"], \"answer\": 1}\n");
    assert_non_null(r);
    assert_int_equal(llm_records_count(r), 3);
    const llm_record_t *a = llm_records_get(r, 0), *b = llm_records_get(r, 1),
                       *c = llm_records_get(r, 2);
    assert_int_equal(a->n_msgs, 2);
    assert_string_equal(a->role[1], "assistant");
    assert_string_equal(a->content[1], "r1");
    assert_int_equal(b->n_msgs, 3);
    assert_int_equal(b->line, 3);
    assert_string_equal(b->content[2], "a");
    assert_int_equal(c->n_options, 2);
    assert_int_equal(c->answer, 1);
    assert_string_equal(c->content[1], "y"); /* the response defaults to options[answer] */
    llm_records_destroy(&r);

    s_bad("{\"prompt\": \"SECRET\"}\n", "r.jsonl:1: field 'response' is missing");
    s_bad("{\"prompt\": \"a\", \"response\": \"b\"}\n{\"messages\": [{\"role\": \"user\", "
          "\"content\": \"SECRET\"}]}\n", "r.jsonl:2: field 'messages' has no assistant turn");
    s_bad("{\"messages\": [{\"role\": \"user\", \"content\": \"SECRET\"}, {\"role\": "
          "\"assistant\", \"content\": 42}]}\n", "r.jsonl:1: field 'messages[1].content' is not "
          "a string");
    s_bad("{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", "
          "\"content\": \"SECRET\"}, {\"role\": \"user\", \"content\": \"u\"}]}\n",
          "goes on after the last assistant turn");
    s_bad("{\"messages\": [{\"role\": \"doctor\", \"content\": \"SECRET\"}]}\n",
          "'messages[0].role' is not system, user or assistant");
    s_bad("{\"prompt\": \"SECRET\", \"response\": [\"SECRET\"]}\n",
          "field 'response' is not a string");
    s_bad("{\"prompt\": \"SECRET\", \"options\": [\"a\", \"b\"], \"answer\": 2}\n",
          "field 'answer' is not an index into 'options'");
    s_bad("{\"prompt\": \"SECRET\", \"response\": \"\xff\"}\n", "field 'response': invalid UTF-8");
    s_bad("{\"prompt\": \"SECRET\", \"response\": \"x\"\n", "r.jsonl:1: invalid JSON");
    s_bad("\n\n", "no records");
}

static void test_masking(void **state)
{
    (void)state;
    bpe_gguf_t g = {0};
    assert_int_equal(bpe_gguf_read(TINY, &g), 0);
    bpe_t *tok = bpe_gguf_tokenizer(&g, NULL);
    assert_non_null(tok);
    bpe_chat_t chat;
    assert_int_equal(llm_chat_format(&g, tok, TINY, &chat), 0); /* no template: ChatML by tokens */
    assert_int_equal(chat.format, BPE_CHAT_CHATML);
    llm_records_t *r = s_load("{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"},"
                              "{\"role\": \"user\", \"content\": \"color of item 7\"},"
                              "{\"role\": \"assistant\", \"content\": \"dark blue\"}]}\n");
    assert_non_null(r);
    const llm_record_t *rec = llm_records_get(r, 0);
    bpe_msg_t m[3] = {{"system", "be brief"}, {"user", "color of item 7"}, {"assistant", "dark blue"}};
    bpe_ids_t ref = {0};
    size_t rb, re;
    assert_int_equal(bpe_chat_encode(tok, &chat, m, 3, false, &ref, &rb, &re), 0);
    assert_true(rb > 0 && re > rb && re <= ref.n);
    int32_t *ids, *lab;
    size_t n;
    bool cut;
    assert_int_equal(llm_encode_example(tok, &chat, rec, NULL, 1000, &ids, &lab, &n, &cut), 0);
    assert_false(cut);
    assert_int_equal(n, re); /* cut after the end-of-turn token */
    for (size_t t = 0; t < n; t++) {
        assert_int_equal(ids[t], ref.v[t]);
        assert_int_equal(lab[t], t < rb ? LLAMA_IGNORE : ref.v[t]);
    }
    size_t len;
    char *resp = bpe_decode(tok, ids + rb, re - rb, &len);
    assert_string_equal(resp, "dark blue<|im_end|>");
    free(resp);
    /* the prompt alone ends with the assistant header: exactly the labelled span's prefix */
    bpe_ids_t p = {0};
    assert_int_equal(llm_encode_prompt(tok, &chat, rec, &p), 0);
    assert_int_equal(p.n, rb);
    assert_memory_equal(p.v, ids, rb * sizeof(int32_t));
    free(ids);
    free(lab);
    /* truncation: max_len inside the response keeps its first tokens labelled */
    assert_int_equal(llm_encode_example(tok, &chat, rec, NULL, rb + 1, &ids, &lab, &n, &cut), 0);
    assert_true(cut);
    assert_int_equal(n, rb + 1);
    assert_int_equal(lab[rb], ids[rb]);
    assert_int_equal(lab[rb - 1], LLAMA_IGNORE);
    free(ids);
    free(lab);
    /* another response (a multiple-choice option) replaces the assistant's content */
    assert_int_equal(llm_encode_example(tok, &chat, rec, "red", 1000, &ids, &lab, &n, &cut), 0);
    resp = bpe_decode(tok, ids + rb, n - rb, &len);
    assert_string_equal(resp, "red<|im_end|>");
    free(resp);
    free(ids);
    free(lab);
    bpe_ids_free(&p);
    bpe_ids_free(&ref);
    llm_records_destroy(&r);
    bpe_chat_clear(&chat);
    bpe_destroy(&tok);
    bpe_gguf_clear(&g);
}

static void test_deid(void **state)
{
    (void)state;
    llm_records_t *r = s_load("{\"prompt\": \"Patient John Smith, MRN: 12345678\", \"response\": \"ok\"}\n"
                              "{\"prompt\": \"BP 120/80\", \"response\": \"Dr. Alice Jones called\"}\n"
                              "{\"prompt\": \"fine\", \"response\": \"fine\"}\n");
    assert_non_null(r);
    size_t flagged;
    char buf[1024] = "";
    FILE *out = fmemopen(buf, sizeof buf, "w");
    assert_int_equal(llm_records_deid(r, DEID_POLICY_REFUSE, out, &flagged), 0);
    fclose(out);
    assert_int_equal(flagged, 2);
    assert_non_null(strstr(buf, "r.jsonl:1: possible PHI:"));
    assert_non_null(strstr(buf, "r.jsonl:2: possible PHI:"));
    assert_null(strstr(buf, "Smith"));
    assert_null(strstr(buf, "Jones"));
    assert_non_null(strstr(llm_records_get(r, 0)->content[0], "Smith")); /* refuse: unchanged */
    assert_int_equal(llm_records_deid(r, DEID_POLICY_REDACT, NULL, &flagged), 0);
    assert_int_equal(flagged, 2);
    assert_null(strstr(llm_records_get(r, 0)->content[0], "Smith"));
    assert_null(strstr(llm_records_get(r, 1)->content[1], "Jones"));
    assert_string_equal(llm_records_get(r, 2)->content[1], "fine");
    llm_records_destroy(&r);
}

static void test_rouge(void **state)
{
    (void)state;
    /* cand "the cat sat on the mat" vs ref "the cat is on the mat":
     * LCS = the cat on the mat = 5; P = 5/6, R = 5/6, F = 5/6 */
    assert_float_equal(llm_rouge_l("the cat sat on the mat", "the cat is on the mat"), 5.0 / 6, 1e-12);
    /* LCS 2 ("a c"), P = 2/3, R = 2/2 -> F = 2 * (2/3) / (5/3) = 0.8 */
    assert_float_equal(llm_rouge_l("a b c", "a c"), 0.8, 1e-12);
    /* order matters: reversed has LCS 1 -> P = R = 1/3 */
    assert_float_equal(llm_rouge_l("x y z", "z y x"), 1.0 / 3, 1e-12);
    assert_float_equal(llm_rouge_l("  The  CAT\n", "the cat"), 1.0, 1e-12);
    assert_float_equal(llm_rouge_l("dog", "cat"), 0.0, 1e-12);
    assert_float_equal(llm_rouge_l("", "cat"), 0.0, 1e-12);
    assert_float_equal(llm_rouge_l(" ", ""), 1.0, 1e-12);
    /* a repeated token counts once per match: LCS("a a a", "a") = 1, P = 1/3, R = 1, F = 0.5 */
    assert_float_equal(llm_rouge_l("a a a", "a"), 0.5, 1e-12);
    assert_true(llm_exact_match(" Dark\tBLUE ", "dark blue"));
    assert_false(llm_exact_match("dark blue.", "dark blue"));
    assert_false(llm_exact_match("dark", "dark blue"));
    assert_true(llm_exact_match("", "  "));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader),
        cmocka_unit_test(test_masking),
        cmocka_unit_test(test_deid),
        cmocka_unit_test(test_rouge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
