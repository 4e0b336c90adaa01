/* libFuzzer target for the decoder loader (node/engine/llama_gguf) and the tokenizer built from
 * a GGUF's metadata (node/engine/bpe_gguf): any byte string must either load into a model and
 * a tokenizer that work, or fail with an error message; never crash, never read outside the
 * file. A file that gets through gguf_parse is taken through llama_gguf_config and
 * llama_gguf_check_tensors; the tokenizer (when the file has one) encodes a fixed text; a
 * file that passes every check is loaded from a memfd (as `generate` would load it) and runs
 * one forward pass over tokens inside its vocabulary. The model size is bounded by the input
 * (every tensor lies in it). Seed: tests/fuzz/corpus/llama_gguf (tests/ref/make_llama_fuzz_seed.py). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/error.h"
#include "node/engine/backend.h"
#include "node/engine/bpe.h"
#include "node/engine/bpe_gguf.h"
#include "node/engine/gguf.h"
#include "node/engine/llama_gguf.h"

static void s_tokenizer(const gguf_t *g)
{
    bpe_gguf_t bg;
    if (bpe_gguf_from(g, &bg) < 0) return;
    bpe_t *b = bpe_gguf_tokenizer(&bg, NULL);
    bpe_gguf_clear(&bg);
    if (!b) {
        if (medfl_error_message()[0] == '\0') abort();
        return;
    }
    static const char text[] = "Patient seen at 08:30, <|im_start|>BP 120/80 caf\xc3\xa9 \xe2\x80\x94 ok";
    bpe_ids_t ids = {0};
    if (bpe_encode(b, text, sizeof text - 1, BPE_PARSE_SPECIAL, &ids) == 0)
        for (size_t i = 0; i < ids.n; i++)
            if (ids.v[i] < 0 || (size_t)ids.v[i] >= bpe_vocab_size(b)) abort();
    bpe_ids_free(&ids);
    bpe_destroy(&b);
}

static void s_model(const uint8_t *data, size_t size, int vocab)
{
    int fd = memfd_create("fuzz_llama_gguf", 0);
    if (fd < 0) return;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    backend_t *be = backend_new("cpu", 1);
    llama_t *m = be ? llama_from_gguf(path, NULL, be) : NULL;
    if (be && !m && medfl_error_message()[0] == '\0') abort();
    if (m) {
        int32_t ids[3] = {0, vocab > 1 ? 1 : 0, vocab > 2 ? vocab - 1 : 0};
        llama_batch_t in = {.ids = ids, .B = 1, .T = 3};
        float *logits = malloc((size_t)vocab * 3 * sizeof *logits);
        if (logits) (void)llama_forward(m, &in, NULL, logits);
        free(logits);
        llama_destroy(&m);
    }
    backend_destroy(&be);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1); /* exact size: ASan flags reads past the end */
    if (!buf) return 0;
    memcpy(buf, data, size);
    medfl_error_clear();
    gguf_t *g = gguf_parse(buf, size, "fuzz");
    if (!g) {
        free(buf);
        return 0;
    }
    s_tokenizer(g);
    llama_config_t cfg;
    llama_config_default(&cfg);
    medfl_error_clear();
    int ok = llama_gguf_config(g, &cfg) == 0 && llama_gguf_check_tensors(g, &cfg) == 0;
    if (!ok && medfl_error_message()[0] == '\0') abort(); /* refusals must say why */
    gguf_destroy(&g);
    if (ok && cfg.n_layers <= 4 && cfg.vocab <= 4096) s_model(buf, size, cfg.vocab);
    free(buf);
    return 0;
}
