/* libFuzzer target for the records readers (JSONL and CSV, from a memory buffer) and the
 * de-identification scanner/redactor run on every text they accept: hospital exports are
 * untrusted input, and both the parsers and the PHI matchers walk it byte by byte.
 * The first input byte picks the format and options; the rest is the file. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "node/data.h"
#include "common/error.h"
#include "node/deid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t sel = data[0];
    const char *buf = (const char *)data + 1;
    size_t len = size - 1;

    static const char *const labels[] = {"a", "b", "cardiology"};
    records_opts_t o;
    records_opts_init(&o);
    o.format = (sel & 1) ? DATA_FORMAT_CSV : DATA_FORMAT_JSONL;
    if (sel & 2) { o.labels = labels; o.n_labels = 3; }
    o.skip_unknown_labels = (sel & 4) != 0;
    o.skip_empty_text = (sel & 8) != 0;
    if (sel & 16) o.label_field = "";
    if (sel & 32) o.max_text_bytes = 64;

    records_t *set = records_new();
    if (!set) return 0;
    if (records_load_buffer(set, "fuzz", buf, len, &o) == 0) {
        for (size_t i = 0; i < records_count(set); i++) {
            const record_t *r = records_get(set, i);
            if (strlen(r->text) != r->text_len) abort();
            if (data_utf8_check(r->text, r->text_len) != r->text_len) abort();
            deid_span_t *v;
            size_t n;
            if (deid_scan(r->text, r->text_len, &v, &n) == 0) {
                for (size_t k = 0; k < n; k++)
                    if (v[k].start >= v[k].end || v[k].end > r->text_len) abort();
                free(v);
            }
        }
        size_t flagged;
        /* Redact fails (only) on a label that looks like PHI: labels are not rewritten. */
        if (deid_gate_records(set, DEID_POLICY_REDACT, NULL, &flagged, NULL) != 0 &&
            medfl_error_code() != MEDFL_EFORMAT)
            abort();
        records_split_t split;
        if (records_split(set, sel, 0.1, 0.1, &split) == 0) records_split_free(&split);
    }
    records_destroy(&set);

    /* The scanner on raw bytes too (it must not assume valid UTF-8 or a NUL). */
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, buf, len);
        copy[len] = '\0';
        size_t clen = len;
        deid_span_t *v;
        size_t n;
        if (deid_scan(copy, len, &v, &n) == 0) {
            for (size_t k = 0; k < n; k++)
                if (v[k].start >= v[k].end || v[k].end > len) abort();
            free(v);
        }
        if (deid_redact(&copy, &clen) >= 0 && strlen(copy) > clen) abort();
        free(copy);
    }
    return 0;
}
