/* libFuzzer target for the tokenizer, which decodes untrusted record text: any bytes must
 * either be rejected as invalid UTF-8 (at the reported offset) or yield ids inside the
 * vocabulary, for both casings, with encode keeping [CLS] ... [SEP] [PAD]* in max_len. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "node/engine/tokenizer.h"

static const char *const s_vocab[] = {
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "##a", "##b", "##c", "ab",
    "abc", "##bc", ".", ",", "/", "-", "caf", "##\xc3\xa9", "\xc3\xa9", "\xe4\xb8\xad",
    "\xe1\x84\x92", "##\xe1\x85\xa1", "x", "##x", "mg", "##mg", "1", "##1", "\xce\xb1",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static tokenizer_t *tok[2];
    if (!tok[0]) {
        size_t n = sizeof s_vocab / sizeof s_vocab[0];
        tok[0] = tokenizer_new_from_list(s_vocab, n, true);
        tok[1] = tokenizer_new_from_list(s_vocab, n, false);
        if (!tok[0] || !tok[1]) abort();
    }
    const char *text = (const char *)data;
    size_t bad = utf8_first_invalid(text, size);
    for (int k = 0; k < 2; k++) {
        int32_t *ids;
        size_t n;
        int rc = tokenizer_tokenize(tok[k], text, size, &ids, &n);
        if ((rc == 0) != (bad == size)) abort();
        for (size_t i = 0; rc == 0 && i < n; i++)
            if (ids[i] < 0 || (size_t)ids[i] >= tokenizer_vocab_size(tok[k])) abort();
        free(ids);
        int32_t enc[16], mask[16];
        size_t pieces;
        int real = tokenizer_encode(tok[k], text, size, 16, enc, mask, NULL, &pieces);
        if (rc == 0) {
            if (real < 2 || real > 16 || pieces != n) abort();
            if (enc[0] != tokenizer_cls_id(tok[k]) || enc[real - 1] != tokenizer_sep_id(tok[k]))
                abort();
            for (int i = 0; i < 16; i++)
                if (mask[i] != (i < real) || (i >= real && enc[i] != tokenizer_pad_id(tok[k])))
                    abort();
        } else if (real != -1) {
            abort();
        }
    }
    return 0;
}
