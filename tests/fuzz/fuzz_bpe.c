/* libFuzzer target for the byte-level BPE tokenizer, which encodes untrusted record text:
 * any bytes, under each pre-tokenizer and with or without special tokens parsed, must either
 * be rejected as invalid UTF-8 (exactly when utf8_first_invalid says so) or give ids inside
 * the vocabulary that decode back to the input bytes; chat encoding of the same text as a
 * message must not crash either. The vocabulary is the committed tiny one
 * (tests/ref/fixtures/bpe/tiny.gguf), read once through node/engine/bpe_gguf; run from the
 * repository root. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "node/engine/tokenizer.h"
#include "node/engine/bpe.h"
#include "node/engine/bpe_chat.h"
#include "node/engine/bpe_gguf.h"

static const char *const s_pres[] = {"gpt-2", "smollm", "llama-bpe", "qwen2"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bpe_t *bpe[4];
    static bpe_chat_t chat[2];
    if (!bpe[0]) {
        bpe_gguf_t g;
        if (bpe_gguf_read("tests/ref/fixtures/bpe/tiny.gguf", &g) < 0) abort();
        for (int k = 0; k < 4; k++)
            if (!(bpe[k] = bpe_gguf_tokenizer(&g, s_pres[k]))) abort();
        if (bpe_chat_detect(g.chat_template, &chat[0]) < 0) abort();
        chat[1].format = BPE_CHAT_LLAMA3;
        bpe_gguf_clear(&g);
    }
    const char *text = (const char *)data;
    bool valid = utf8_first_invalid(text, size) == size;
    for (int k = 0; k < 4; k++) {
        for (int flags = 0; flags <= BPE_PARSE_SPECIAL; flags += BPE_PARSE_SPECIAL) {
            bpe_ids_t ids = {0};
            int rc = bpe_encode(bpe[k], text, size, flags, &ids);
            if ((rc == 0) != valid) abort();
            for (size_t i = 0; i < ids.n; i++)
                if (ids.v[i] < 0 || (size_t)ids.v[i] >= bpe_vocab_size(bpe[k])) abort();
            if (rc == 0) {
                size_t len;
                char *back = bpe_decode(bpe[k], ids.v, ids.n, &len);
                if (!back || len != size || memcmp(back, text, size) != 0) abort();
                free(back);
            }
            bpe_ids_free(&ids);
        }
    }
    char *msg = malloc(size + 1);
    memcpy(msg, data, size);
    msg[size] = '\0';
    bpe_msg_t m[2] = {{"user", msg}, {"assistant", msg}};
    for (int c = 0; c < 2; c++) {
        bpe_ids_t ids = {0};
        size_t b, e;
        int rc = bpe_chat_encode(bpe[c ? 2 : 1], &chat[c], m, 2, false, &ids, &b, &e);
        if (rc == 0 && !(b <= e && e <= ids.n)) abort();
        bpe_ids_free(&ids);
    }
    free(msg);
    return 0;
}
