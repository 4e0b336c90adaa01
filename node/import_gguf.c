/* import-model --gguf; see import_gguf.h. */
#include "node/import_gguf.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "node/engine/bpe_gguf.h"
#include "node/engine/llama_gguf.h"
#include "node/node_config.h"

int import_gguf_target(const char *out, char *target, size_t size)
{
    size_t n = strlen(out);
    const char *slash = strrchr(out, '/'), *dot = strrchr(out, '.');
    if (n >= 5 && strcmp(out + n - 5, ".gguf") == 0) {
        if (n >= size)
            return medfl_error_set(MEDFL_EINVAL, "output path too long");
        memcpy(target, out, n + 1);
        return 0;
    }
    size_t stem = dot && (!slash || dot > slash + 1) ? (size_t)(dot - out) : n;
    if (stem + 6 > size)
        return medfl_error_set(MEDFL_EINVAL, "output path too long");
    memcpy(target, out, stem);
    memcpy(target + stem, ".gguf", 6);
    return 0;
}

int import_gguf_check(const char *path)
{
    gguf_t *f = gguf_open(path);
    if (f == NULL)
        return -1;
    llama_config_t c;
    llama_config_default(&c);
    bpe_gguf_t g = {0};
    bpe_t *tok = NULL;
    int rc = -1;
    if (llama_gguf_config(f, &c) != 0 || llama_config_check(&c) != 0 ||
        llama_gguf_check_tensors(f, &c) != 0 || bpe_gguf_from(f, &g) != 0)
        goto done;
    if (!(tok = bpe_gguf_tokenizer(&g, NULL))) {
        medfl_error_prefix("%s: tokenizer: ", path);
        goto done;
    }
    rc = 0;
done:
    bpe_destroy(&tok);
    bpe_gguf_clear(&g);
    gguf_destroy(&f);
    return rc;
}

int import_gguf(const char *src, const char *target, char sha256_hex[65])
{
    if (import_gguf_check(src) != 0) /* refuse early, before copying gigabytes */
        return -1;
    FILE *in = fopen(src, "rb");
    if (in == NULL)
        return medfl_error_set(MEDFL_EIO, "%s: cannot open", src);
    atomic_file_t *af = atomic_file_new(target, 0644);
    if (af == NULL) {
        fclose(in);
        return -1;
    }
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK);
    int rc = buf ? 0 : medfl_error_set(MEDFL_ENOMEM, "import-model: out of memory");
    size_t n;
    while (rc == 0 && (n = fread(buf, 1, CHUNK, in)) > 0) {
        crypto_hash_sha256_update(&st, buf, n);
        if (atomic_file_write(af, buf, n) != 0)
            rc = -1;
    }
    if (rc == 0 && ferror(in))
        rc = medfl_error_set(MEDFL_EIO, "%s: read error", src);
    fclose(in);
    free(buf);
    /* the copy is what nodes will load: validate it, not only the source */
    if (rc == 0 && import_gguf_check(atomic_file_tmp_path(af)) != 0)
        rc = medfl_error_prefix("the copy of %s changed while importing: ", src);
    if (rc == 0)
        rc = atomic_file_commit(&af);
    atomic_file_destroy(&af);
    if (rc == 0) {
        unsigned char h[crypto_hash_sha256_BYTES];
        crypto_hash_sha256_final(&st, h);
        sodium_bin2hex(sha256_hex, 65, h, sizeof h);
    }
    return rc;
}

int import_gguf_resolve_base(const char *model, const char *config, char *out, size_t size)
{
    char from_cfg[4096];
    if (!model && config) {
        if (node_config_path_of(config, "model.base", "base.h5", from_cfg) != 0) return -1;
        model = from_cfg;
    }
    if (!model) return medfl_error_set(MEDFL_EINVAL, "--model BASE or -c node.conf is required");
    size_t n = strlen(model);
    struct stat sb;
    if (n >= 3 && strcmp(model + n - 3, ".h5") == 0 && import_gguf_target(model, out, size) == 0 &&
        stat(out, &sb) == 0)
        return 0;
    if (n + 1 > size) return medfl_error_set(MEDFL_EINVAL, "model path too long");
    memcpy(out, model, n + 1);
    return 0;
}
