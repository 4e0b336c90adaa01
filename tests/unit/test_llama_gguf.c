/* Llama decoders from GGUF (node/engine/llama_gguf) over a quantized base, against
 * transformers reading the same file (tests/ref/make_llama_gguf_ref.py).
 *
 * Always: tests/ref/fixtures/llama_gguf/tiny.gguf (a tiny random Llama, Q8_0 / Q4_1 / Q4_0 /
 * F16 matrices, F32 norms, q/k permuted as llama.cpp stores them): logits within 1e-4 of
 * transformers' GGUF loader (de-quantized, q/k un-permuted by transformers itself), for the
 * quantized base and the de-quantized fp32 one; LoRA loss and gradients through the quantized
 * base equal those through the fp32 base; KV-cache decoding equals the full forward; bad
 * files (another architecture, a missing key, an unsupported block type) are clear errors.
 * With SmolLM2-135M-Instruct.Q4_1.gguf (testlib_smollm2_gguf): next-token logits of 3 prompts
 * within 1e-3 of transformers, 32 greedy tokens identical, and the prompts tokenize to
 * transformers' ids. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "node/engine/backend.h"
#include "common/error.h"
#include "common/safetensors.h"
#include "node/engine/bpe_chat.h"
#include "node/engine/bpe_gguf.h"
#include "node/engine/llama_gguf.h"
#include "node/engine/quant.h"
#include "testlib.h"

#define FIXDIR "tests/ref/fixtures/llama_gguf/"
#define TINY FIXDIR "tiny.gguf"

/* max |a - ref| / max |ref| */
static double s_rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)a[i] - ref[i]));
        mr = fmax(mr, fabs((double)ref[i]));
    }
    return md / fmax(mr, 1e-6);
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static llama_t *s_load(backend_t *be, const char *path, bool dequantize, unsigned targets)
{
    llama_gguf_opts_t o = {.lora_r = 4, .lora_alpha = 8.0f, .lora_targets = targets,
                           .dequantize = dequantize};
    llama_t *m = llama_from_gguf(path, &o, be);
    if (m == NULL)
        fail_msg("%s", medfl_error_message());
    return m;
}

typedef struct {
    safetensors_t *st;
    int B, T;
    int32_t *ids;
    float *logits;
} s_tiny_ref;

static void s_ref_open(s_tiny_ref *r)
{
    r->st = safetensors_open(FIXDIR "tiny_ref.safetensors");
    if (r->st == NULL)
        fail_msg("%s", medfl_error_message());
    const st_tensor_t *ti = safetensors_find(r->st, "ids"), *tl = safetensors_find(r->st, "logits");
    assert_non_null(ti);
    assert_non_null(tl);
    r->B = (int)ti->shape[0];
    r->T = (int)ti->shape[1];
    float *f = malloc((size_t)r->B * r->T * sizeof(float));
    r->ids = malloc((size_t)r->B * r->T * sizeof(int32_t));
    r->logits = malloc((size_t)(tl->shape[0] * tl->shape[1] * tl->shape[2]) * sizeof(float));
    assert_int_equal(safetensors_read_f32(r->st, ti, f), 0);
    assert_int_equal(safetensors_read_f32(r->st, tl, r->logits), 0);
    for (int i = 0; i < r->B * r->T; i++)
        r->ids[i] = (int32_t)f[i];
    free(f);
}

static void s_ref_close(s_tiny_ref *r)
{
    safetensors_destroy(&r->st);
    free(r->ids);
    free(r->logits);
}

static void test_tiny_config(void **state)
{
    (void)state;
    gguf_t *f = gguf_open(TINY);
    assert_non_null(f);
    llama_config_t c;
    llama_config_default(&c);
    assert_int_equal(llama_gguf_config(f, &c), 0);
    assert_int_equal(c.n_layers, 2);
    assert_int_equal(c.hidden, 64);
    assert_int_equal(c.n_heads, 4);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.ffn, 128);
    assert_int_equal(c.vocab, 678);
    assert_int_equal(c.max_seq, 256);
    assert_true(fabsf(c.rope_theta - 1e5f) < 1.0f);
    assert_true(fabsf(c.rms_eps - 1e-5f) < 1e-9f);
    assert_false(c.tie_embeddings);
    gguf_destroy(&f);
}

/* Logits of the quantized and of the de-quantized base against transformers. */
static void test_tiny_logits(void **state)
{
    (void)state;
    backend_t *be = backend_cpu_new(2);
    s_tiny_ref r;
    s_ref_open(&r);
    for (int deq = 0; deq < 2; deq++) {
        llama_t *m = s_load(be, TINY, deq, LLAMA_LORA_Q | LLAMA_LORA_V);
        assert_int_equal(llama_base_quantized(m), !deq);
        size_t n = (size_t)r.B * r.T * 678;
        float *lg = malloc(n * sizeof(float));
        llama_batch_t in = {r.ids, NULL, NULL, r.B, r.T};
        if (llama_forward(m, &in, NULL, lg) != 0)
            fail_msg("%s", medfl_error_message());
        double e = s_rel_err(lg, r.logits, n);
        printf("tiny %s base: logits rel err %.2e\n", deq ? "fp32" : "quantized", e);
        assert_true(e < 1e-4);
        free(lg);
        llama_destroy(&m);
    }
    s_ref_close(&r);
    backend_destroy(&be);
}

/* The same LoRA (B non-zero so every A gradient is too) on the quantized and on the
 * de-quantized base: loss and every gradient agree (the only difference is how the frozen
 * products are computed). */
static void test_tiny_grads_quant_vs_fp32(void **state)
{
    (void)state;
    backend_t *be = backend_cpu_new(2);
    s_tiny_ref r;
    s_ref_open(&r);
    int32_t *labels = malloc((size_t)r.B * r.T * sizeof(int32_t));
    for (int i = 0; i < r.B * r.T; i++)
        labels[i] = i % r.T < 3 ? LLAMA_IGNORE : r.ids[i];
    llama_t *mq = s_load(be, TINY, false, LLAMA_LORA_ALL);
    llama_t *mf = s_load(be, TINY, true, LLAMA_LORA_ALL);
    size_t n = llama_trainable_numel(mq);
    assert_int_equal(n, llama_trainable_numel(mf));
    float *p = malloc(n * sizeof(float)), *gq = malloc(n * sizeof(float)),
          *gf = malloc(n * sizeof(float));
    uint64_t s = 42;
    for (size_t i = 0; i < n; i++)
        p[i] = (float)((double)(testlib_rng(&s) >> 11) / 9007199254740992.0 - 0.5) * 0.2f;
    llama_batch_t in = {r.ids, NULL, labels, r.B, r.T};
    float loss[2];
    llama_t *ms[2] = {mq, mf};
    float *gs[2] = {gq, gf};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(llama_trainable_set(ms[k], p, n), 0);
        llama_zero_grad(ms[k]);
        if (llama_forward_train(ms[k], &in, &loss[k]) != 0 || llama_backward(ms[k]) != 0)
            fail_msg("%s", medfl_error_message());
        assert_int_equal(llama_grad_get(ms[k], gs[k], n), 0);
    }
    double e = s_rel_err(gq, gf, n), gmax = 0.0;
    for (size_t i = 0; i < n; i++)
        gmax = fmax(gmax, fabs(gf[i]));
    printf("tiny: loss %.6f vs %.6f, LoRA gradient rel err %.2e (max |g| %.3g)\n", loss[0],
           loss[1], e, gmax);
    assert_true(fabs(loss[0] - loss[1]) < 1e-5 * fabs(loss[1]));
    assert_true(gmax > 1e-3); /* the gradients are not trivially zero */
    assert_true(e < 1e-5);
    /* de-quantized reads of a quantized matrix equal the fp32 model's (un-permuted) tensor */
    const char *nm = "model.layers.0.self_attn.k_proj.weight";
    size_t nk = llama_base_find(mq, nm)->numel;
    float *a = malloc(nk * sizeof(float)), *b = malloc(nk * sizeof(float));
    assert_int_equal(llama_base_get(mq, nm, a, nk), 0);
    assert_int_equal(llama_base_get(mf, nm, b, nk), 0);
    assert_memory_equal(a, b, nk * sizeof(float));
    free(a), free(b), free(p), free(gq), free(gf), free(labels);
    llama_destroy(&mq);
    llama_destroy(&mf);
    s_ref_close(&r);
    backend_destroy(&be);
}

/* Prompt at once then one token at a time through the KV cache = the full forward's logits
 * at every position, with an adapter on every target. */
static void test_tiny_kv_cache(void **state)
{
    (void)state;
    backend_t *be = backend_cpu_new(2);
    s_tiny_ref r;
    s_ref_open(&r);
    llama_t *m = s_load(be, TINY, false, LLAMA_LORA_ALL);
    size_t n = llama_trainable_numel(m);
    float *p = malloc(n * sizeof(float));
    uint64_t s = 7;
    for (size_t i = 0; i < n; i++)
        p[i] = (float)((double)(testlib_rng(&s) >> 11) / 9007199254740992.0 - 0.5) * 0.2f;
    assert_int_equal(llama_trainable_set(m, p, n), 0);
    int T = r.T, V = 678;
    float *full = malloc((size_t)T * V * sizeof(float)), *step = malloc((size_t)V * sizeof(float));
    llama_batch_t in = {r.ids, NULL, NULL, 1, T};
    assert_int_equal(llama_forward(m, &in, NULL, full), 0);
    llama_kv_t *kv = llama_kv_new(m, T);
    assert_non_null(kv);
    int prompt = 3;
    assert_int_equal(llama_decode(m, kv, r.ids, prompt, step), 0);
    assert_true(s_rel_err(step, full + (size_t)(prompt - 1) * V, V) < 1e-5);
    for (int t = prompt; t < T; t++) {
        assert_int_equal(llama_decode(m, kv, r.ids + t, 1, step), 0);
        double e = s_rel_err(step, full + (size_t)t * V, V);
        if (e > 1e-5)
            fail_msg("position %d: rel err %.2e", t, e);
    }
    assert_int_equal(llama_kv_len(kv), T);
    /* full cache, bad id: errors, cache unchanged */
    assert_int_equal(llama_decode(m, kv, r.ids, 1, step), -1);
    assert_non_null(strstr(medfl_error_message(), "KV cache"));
    llama_kv_reset(kv);
    int32_t bad = 678;
    assert_int_equal(llama_decode(m, kv, &bad, 1, step), -1);
    assert_int_equal(llama_kv_len(kv), 0);
    llama_kv_destroy(&kv);
    free(p), free(full), free(step);
    llama_destroy(&m);
    s_ref_close(&r);
    backend_destroy(&be);
}

/* ------------------------------------------------------------ bad files */

static unsigned char *s_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*len);
    assert_int_equal(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static size_t s_find_bytes(const unsigned char *b, size_t len, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(b + i, s, n) == 0)
            return i;
    fail_msg("'%s' not in the fixture", s);
    return 0;
}

/* Loads a patched copy of tiny.gguf; the error must contain `want`. */
static void s_expect_error(const unsigned char *b, size_t len, const char *want, int code)
{
    char path[] = "/tmp/medfl-test-llama-gguf-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, len), (ssize_t)len);
    close(fd);
    backend_t *be = backend_cpu_new(1);
    llama_t *m = llama_from_gguf(path, NULL, be);
    unlink(path);
    assert_null(m);
    if (!strstr(medfl_error_message(), want) || (int)medfl_error_code() != code)
        fail_msg("want '%s' (code %d), got (%d) %s", want, code, medfl_error_code(),
                 medfl_error_message());
    printf("  -> %s\n", medfl_error_message());
    backend_destroy(&be);
}

static void test_bad_files(void **state)
{
    (void)state;
    size_t len;
    unsigned char *orig = s_slurp(TINY, &len), *b = malloc(len);
    /* another architecture (same length, so the file stays valid GGUF) */
    memcpy(b, orig, len);
    size_t at = s_find_bytes(b, len, "general.architecture");
    at = s_find_bytes(b + at, len - at, "llama") + at;
    memcpy(b + at, "gemma", 5);
    s_expect_error(b, len, "architecture 'gemma' is not supported", MEDFL_EUNSUPPORTED);
    /* a required key missing (renamed) */
    memcpy(b, orig, len);
    at = s_find_bytes(b, len, "llama.feed_forward_length");
    b[at + 6] = 'F';
    s_expect_error(b, len, "llama.feed_forward_length", MEDFL_ENOTFOUND);
    /* an unsupported block type: the Q4_0 ffn_up of layer 1 relabelled IQ4_NL (same block
     * size and bytes, so only the decoder can refuse it) */
    memcpy(b, orig, len);
    const char *nm = "blk.1.ffn_up.weight";
    at = s_find_bytes(b, len, nm) + strlen(nm);
    uint32_t nd, type;
    memcpy(&nd, b + at, 4);
    assert_int_equal(nd, 2);
    memcpy(&type, b + at + 4 + 16, 4);
    assert_int_equal(type, QUANT_Q4_0);
    type = 20; /* GGML_TYPE_IQ4_NL */
    memcpy(b + at + 4 + 16, &type, 4);
    s_expect_error(b, len, "'blk.1.ffn_up.weight' is of type IQ4_NL, not supported",
                   MEDFL_EUNSUPPORTED);
    /* a tensor missing (renamed to one the decoder does not know) */
    memcpy(b, orig, len);
    at = s_find_bytes(b, len, "blk.1.ffn_gate.weight");
    b[at + 6] = 'x';
    s_expect_error(b, len, "tensor 'blk.1.ffn_gate.weight' not found", MEDFL_ENOTFOUND);
    free(b);
    free(orig);
}

/* ------------------------------------------------------------ SmolLM2 */

static int32_t *s_json_ids(const cJSON *a, int *n)
{
    *n = cJSON_GetArraySize(a);
    int32_t *v = malloc((size_t)(*n ? *n : 1) * sizeof *v);
    for (int i = 0; i < *n; i++)
        v[i] = (int32_t)cJSON_GetArrayItem(a, i)->valuedouble;
    return v;
}

static void test_smollm2(void **state)
{
    (void)state;
    const char *path = testlib_smollm2_gguf();
    if (path == NULL) {
        printf("SKIP: %s\n", TESTLIB_SMOLLM2_HINT);
        skip();
    }
    size_t jl;
    unsigned char *js = s_slurp(FIXDIR "smollm2_ref.json", &jl);
    cJSON *ref = cJSON_ParseWithLength((const char *)js, jl);
    assert_non_null(ref);
    backend_t *be = backend_cpu_new(2);
    double t0 = s_now();
    llama_t *m = llama_from_gguf(path, NULL, be);
    if (m == NULL)
        fail_msg("%s", medfl_error_message());
    double t_load = s_now() - t0;
    const llama_config_t *c = llama_config(m);
    assert_int_equal(c->n_layers, 30);
    assert_int_equal(c->vocab, 49152);
    assert_true(c->tie_embeddings);
    bpe_gguf_t g;
    assert_int_equal(bpe_gguf_read(path, &g), 0);
    bpe_t *tok = bpe_gguf_tokenizer(&g, NULL);
    assert_non_null(tok);
    bpe_chat_t chat;
    assert_int_equal(bpe_chat_detect(g.chat_template, &chat), 0);
    int eos = (int)cJSON_GetObjectItem(ref, "eos")->valuedouble;
    float *lg = malloc((size_t)c->vocab * sizeof(float));
    double t_fwd = 0.0, t_gen = 0.0;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(ref, "cases"))
    {
        int n, nt, ns, ng;
        int32_t *ids = s_json_ids(cJSON_GetObjectItem(cs, "ids"), &n);
        /* our tokenizer (and chat format) gives transformers' prompt ids */
        const char *prompt = cJSON_GetObjectItem(cs, "prompt")->valuestring;
        bpe_ids_t mine = {0};
        if (cJSON_IsTrue(cJSON_GetObjectItem(cs, "chat"))) {
            bpe_msg_t msg = {"user", prompt};
            assert_int_equal(bpe_chat_encode(tok, &chat, &msg, 1, true, &mine, NULL, NULL), 0);
        } else {
            assert_int_equal(bpe_encode(tok, prompt, strlen(prompt), 0, &mine), 0);
        }
        assert_int_equal(mine.n, n);
        assert_memory_equal(mine.v, ids, (size_t)n * sizeof(int32_t));
        bpe_ids_free(&mine);
        /* next-token logits: top-20 and a sample of the vocabulary */
        llama_kv_t *kv = llama_kv_new(m, n + 32);
        assert_non_null(kv);
        t0 = s_now();
        assert_int_equal(llama_decode(m, kv, ids, n, lg), 0);
        t_fwd += s_now() - t0;
        int32_t *top = s_json_ids(cJSON_GetObjectItem(cs, "top_ids"), &nt);
        int32_t *sid = s_json_ids(cJSON_GetObjectItem(cs, "sample_ids"), &ns);
        const cJSON *tv = cJSON_GetObjectItem(cs, "top_logits"),
                    *sv = cJSON_GetObjectItem(cs, "sample_logits");
        float *mine_v = malloc((size_t)(nt + ns) * sizeof(float)),
              *ref_v = malloc((size_t)(nt + ns) * sizeof(float));
        for (int i = 0; i < nt; i++) {
            mine_v[i] = lg[top[i]];
            ref_v[i] = (float)cJSON_GetArrayItem(tv, i)->valuedouble;
        }
        for (int i = 0; i < ns; i++) {
            mine_v[nt + i] = lg[sid[i]];
            ref_v[nt + i] = (float)cJSON_GetArrayItem(sv, i)->valuedouble;
        }
        double e = s_rel_err(mine_v, ref_v, (size_t)(nt + ns));
        int am = 0;
        for (int v = 1; v < c->vocab; v++)
            if (lg[v] > lg[am])
                am = v;
        printf("SmolLM2 prompt of %d tokens: logits rel err %.2e\n", n, e);
        assert_true(e < 1e-3);
        assert_int_equal(am, top[0]);
        /* greedy continuation through the KV cache */
        int32_t *want = s_json_ids(cJSON_GetObjectItem(cs, "greedy"), &ng);
        t0 = s_now();
        for (int i = 0; i < ng; i++) {
            int best = 0;
            for (int v = 1; v < c->vocab; v++)
                if (lg[v] > lg[best])
                    best = v;
            if (best != want[i])
                fail_msg("greedy token %d: %d, transformers %d", i, best, want[i]);
            if (best == eos)
                break;
            int32_t id = best;
            assert_int_equal(llama_decode(m, kv, &id, 1, lg), 0);
        }
        t_gen += s_now() - t0;
        free(want), free(top), free(sid), free(mine_v), free(ref_v), free(ids);
        llama_kv_destroy(&kv);
    }
    printf("SmolLM2 (2 threads): load %.2f s, 3 prompt forwards %.2f s, greedy tokens %.2f s\n",
           t_load, t_fwd, t_gen);
    free(lg);
    bpe_chat_clear(&chat);
    bpe_destroy(&tok);
    bpe_gguf_clear(&g);
    llama_destroy(&m);
    backend_destroy(&be);
    cJSON_Delete(ref);
    free(js);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_config),
        cmocka_unit_test(test_tiny_logits),
        cmocka_unit_test(test_tiny_grads_quant_vs_fp32),
        cmocka_unit_test(test_tiny_kv_cache),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_smollm2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
