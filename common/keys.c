/* Key folder I/O for CURVE and Ed25519 key pairs. Text formats (Z85 for CURVE, hex for
 * Ed25519) are what operators paste into enrollment and configs, so they stay readable;
 * every loaded secret is cross-checked against its public file, which catches both
 * corruption and a folder assembled from two different keygens. Files are replaced with
 * atomic_file_replace (mkstemp creates its temporary 0600, so a secret never exists with a
 * looser mode, even briefly; a crash leaves the old or the complete new file). */
#include "common/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>
#include <zmq.h>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/service.h"

#define KEYS_FILE_MAX 512 /* no key file is longer; anything bigger is not a key file */

static int s_sodium(void)
{
    if (sodium_init() < 0)
        return medfl_error_set(MEDFL_ECRYPTO, "libsodium failed to initialise");
    return 0;
}

/* Reads a small text file, trimmed, into buf. Secret files must be regular files that
 * group and others cannot access; the check is on the opened descriptor so it describes
 * the very file that is read. */
static int s_read_text(const char *path, char *buf, size_t size, bool secret)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return medfl_error_set(errno == ENOENT ? MEDFL_ENOTFOUND : MEDFL_EIO, "%s: cannot open: %s",
                               path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return medfl_error_set(MEDFL_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return medfl_error_set(MEDFL_EFORMAT, "%s: not a regular file", path);
    }
    if (secret && (st.st_mode & 077)) {
        close(fd);
        return medfl_error_set(MEDFL_EPERM,
                               "%s: secret key file has mode %04o, readable by group or others; "
                               "refusing it (chmod 600 %s, and consider the key exposed)",
                               path, (unsigned)(st.st_mode & 07777), path);
    }
    size_t used = 0;
    for (;;) {
        if (used + 1 >= size) {
            close(fd);
            sodium_memzero(buf, size);
            return medfl_error_set(MEDFL_EFORMAT, "%s: file too large for a key file", path);
        }
        ssize_t n = read(fd, buf + used, size - 1 - used);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            sodium_memzero(buf, size);
            return medfl_error_set(MEDFL_EIO, "%s: read error: %s", path, strerror(e));
        }
        if (n == 0) break;
        used += (size_t)n;
    }
    close(fd);
    buf[used] = '\0';
    while (used && (buf[used - 1] == '\n' || buf[used - 1] == '\r' || buf[used - 1] == ' ' ||
                    buf[used - 1] == '\t'))
        buf[--used] = '\0';
    size_t lead = strspn(buf, " \t\r\n");
    if (lead) memmove(buf, buf + lead, used - lead + 1);
    return 0;
}

static void s_path(char *out, size_t size, const char *dir, const char *name)
{
    snprintf(out, size, "%s/%s", dir, name);
}

int keys_z85_encode(const uint8_t key[KEYS_CURVE_BYTES], char out[KEYS_Z85_LEN + 1])
{
    if (!zmq_z85_encode(out, key, KEYS_CURVE_BYTES))
        return medfl_error_set(MEDFL_ECRYPTO, "Z85 encoding failed");
    return 0;
}

int keys_z85_decode(const char *text, uint8_t out[KEYS_CURVE_BYTES], const char *what)
{
    char buf[KEYS_Z85_LEN + 1];
    while (*text == ' ' || *text == '\t') text++;
    size_t len = strcspn(text, " \t\r\n");
    if (len != KEYS_Z85_LEN || text[len + strspn(text + len, " \t\r\n")] != '\0')
        return medfl_error_set(MEDFL_EFORMAT,
                               "%s: expected a CURVE key of %d Z85 characters on one line, "
                               "found %zu characters%s",
                               what, KEYS_Z85_LEN, len,
                               text[len + strspn(text + len, " \t\r\n")] ? " and more text" : "");
    memcpy(buf, text, KEYS_Z85_LEN);
    buf[KEYS_Z85_LEN] = '\0';
    uint8_t *ok = zmq_z85_decode(out, buf);
    sodium_memzero(buf, sizeof buf);
    if (!ok)
        return medfl_error_set(MEDFL_EFORMAT, "%s: not valid Z85 text", what);
    return 0;
}

int keys_hex_decode_public(const char *text, uint8_t out[KEYS_SIGN_PUBLIC_BYTES],
                           const char *what)
{
    if (s_sodium() != 0) return -1;
    size_t bin_len = 0;
    const char *end = NULL;
    while (*text == ' ' || *text == '\t') text++;
    if (sodium_hex2bin(out, KEYS_SIGN_PUBLIC_BYTES, text, strlen(text), NULL, &bin_len, &end) != 0 ||
        bin_len != KEYS_SIGN_PUBLIC_BYTES || end[strspn(end, " \t\r\n")] != '\0')
        return medfl_error_set(MEDFL_EFORMAT, "%s: expected an Ed25519 public key of %d hex digits",
                               what, 2 * KEYS_SIGN_PUBLIC_BYTES);
    return 0;
}

void keys_key_id(const uint8_t key[KEYS_CURVE_BYTES], char out[KEYS_ID_LEN + 1])
{
    uint8_t h[crypto_generichash_BYTES];
    crypto_generichash(h, sizeof h, key, KEYS_CURVE_BYTES, NULL, 0);
    sodium_bin2hex(out, KEYS_ID_LEN + 1, h, KEYS_ID_LEN / 2);
}

keys_t *keys_generate(void)
{
    if (s_sodium() != 0) return NULL;
    keys_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory for keys");
        return NULL;
    }
    randombytes_buf(self->curve_secret, sizeof self->curve_secret);
    crypto_scalarmult_base(self->curve_public, self->curve_secret);
    crypto_sign_keypair(self->sign_public, self->sign_secret);
    return self;
}

void keys_destroy(keys_t **self_p)
{
    if (!self_p || !*self_p) return;
    sodium_memzero(*self_p, sizeof **self_p);
    free(*self_p);
    *self_p = NULL;
}

static int s_load_curve(keys_t *self, const char *dir)
{
    char path[4096], text[KEYS_FILE_MAX];
    s_path(path, sizeof path, dir, "curve.pub");
    if (s_read_text(path, text, sizeof text, false) != 0) return -1;
    if (keys_z85_decode(text, self->curve_public, path) != 0) return -1;

    s_path(path, sizeof path, dir, "curve.key");
    if (s_read_text(path, text, sizeof text, true) != 0) return -1;
    int rc = keys_z85_decode(text, self->curve_secret, path);
    sodium_memzero(text, sizeof text);
    if (rc != 0) return -1;
    uint8_t derived[KEYS_CURVE_BYTES];
    crypto_scalarmult_base(derived, self->curve_secret);
    rc = sodium_memcmp(derived, self->curve_public, sizeof derived);
    sodium_memzero(derived, sizeof derived);
    if (rc != 0)
        return medfl_error_set(MEDFL_ECRYPTO, "%s: secret key does not match %s/curve.pub", path,
                               dir);
    return 0;
}

static int s_load_identity(keys_t *self, const char *dir)
{
    char path[4096], text[KEYS_FILE_MAX];
    s_path(path, sizeof path, dir, "identity.pub");
    if (s_read_text(path, text, sizeof text, false) != 0) return -1;
    if (keys_hex_decode_public(text, self->sign_public, path) != 0) return -1;

    s_path(path, sizeof path, dir, "identity.key");
    if (s_read_text(path, text, sizeof text, true) != 0) return -1;
    size_t bin_len = 0;
    const char *end = NULL;
    int rc = sodium_hex2bin(self->sign_secret, sizeof self->sign_secret, text, strlen(text), NULL,
                            &bin_len, &end);
    bool trailing = rc == 0 && *end != '\0';
    sodium_memzero(text, sizeof text);
    if (rc != 0 || bin_len != sizeof self->sign_secret || trailing)
        return medfl_error_set(MEDFL_EFORMAT, "%s: expected an Ed25519 secret key of %d hex digits",
                               path, 2 * KEYS_SIGN_SECRET_BYTES);
    uint8_t derived[KEYS_SIGN_PUBLIC_BYTES];
    crypto_sign_ed25519_sk_to_pk(derived, self->sign_secret);
    rc = sodium_memcmp(derived, self->sign_public, sizeof derived);
    if (rc != 0)
        return medfl_error_set(MEDFL_ECRYPTO, "%s: secret key does not match %s/identity.pub",
                               path, dir);
    return 0;
}

keys_t *keys_load(const char *dir)
{
    if (s_sodium() != 0) return NULL;
    keys_t *self = calloc(1, sizeof *self);
    if (!self) {
        medfl_error_set(MEDFL_ENOMEM, "out of memory for keys");
        return NULL;
    }
    if (s_load_curve(self, dir) != 0 || s_load_identity(self, dir) != 0) {
        keys_destroy(&self);
        return NULL;
    }
    return self;
}

int keys_save(const keys_t *self, const char *dir, bool overwrite)
{
    if (s_sodium() != 0) return -1;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return medfl_error_set(MEDFL_EIO, "%s: cannot create key folder: %s", dir, strerror(errno));
    static const char *const names[] = {"curve.pub", "curve.key", "identity.pub", "identity.key"};
    char path[4096];
    if (!overwrite) {
        for (int i = 0; i < 4; i++) {
            s_path(path, sizeof path, dir, names[i]);
            if (access(path, F_OK) == 0)
                return medfl_error_set(MEDFL_ESTATE,
                                       "%s already exists; refusing to replace keys that may be "
                                       "enrolled (use --force to replace them)", path);
        }
    }
    /* Text buffers of secrets are wiped before returning on every path. */
    char text[2 * KEYS_SIGN_SECRET_BYTES + 2];
    int rc = 0;

    if (keys_z85_encode(self->curve_secret, text) != 0) rc = -1;
    if (rc == 0) {
        strcat(text, "\n");
        s_path(path, sizeof path, dir, "curve.key");
        rc = atomic_file_replace(path, text, strlen(text), 0600);
    }
    if (rc == 0) {
        sodium_bin2hex(text, sizeof text - 1, self->sign_secret, sizeof self->sign_secret);
        strcat(text, "\n");
        s_path(path, sizeof path, dir, "identity.key");
        rc = atomic_file_replace(path, text, strlen(text), 0600);
    }
    /* Public files last: a folder with public but no secret files never exists. */
    if (rc == 0 && keys_z85_encode(self->curve_public, text) != 0) rc = -1;
    if (rc == 0) {
        strcat(text, "\n");
        s_path(path, sizeof path, dir, "curve.pub");
        rc = atomic_file_replace(path, text, strlen(text), 0644);
    }
    if (rc == 0) {
        sodium_bin2hex(text, sizeof text - 1, self->sign_public, sizeof self->sign_public);
        strcat(text, "\n");
        s_path(path, sizeof path, dir, "identity.pub");
        rc = atomic_file_replace(path, text, strlen(text), 0644);
    }
    sodium_memzero(text, sizeof text);
    return rc;
}

int keys_keygen(const char *dir, bool overwrite, FILE *out, char curve_z85[KEYS_Z85_LEN + 1],
                char identity_hex[2 * KEYS_SIGN_PUBLIC_BYTES + 1])
{
    keys_t *k = keys_generate();
    if (!k || service_mkdir_p(dir, 0700) != 0 || keys_save(k, dir, overwrite) != 0 ||
        keys_z85_encode(k->curve_public, curve_z85) != 0) {
        keys_destroy(&k);
        return -1;
    }
    char id[KEYS_ID_LEN + 1];
    sodium_bin2hex(identity_hex, 2 * KEYS_SIGN_PUBLIC_BYTES + 1, k->sign_public,
                   sizeof k->sign_public);
    keys_key_id(k->curve_public, id);
    keys_destroy(&k);
    fprintf(out, "key_dir: %s\ncurve_public: %s\nidentity_public: %s\nkey_id: %s\n", dir,
            curve_z85, identity_hex, id);
    return 0;
}

/* True when text could be (part of) a key pasted where a file name was expected: long,
 * every character in Z85's alphabet, upper and lower case and digits mixed as random text
 * has them and file names rarely do. Such text is never echoed: it may be a secret key. */
static bool s_looks_like_key(const char *text)
{
    static const char z85[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                              ".-:+=^!/*?&<>()[]{}@%$#";
    size_t len = strlen(text);
    bool upper = false, lower = false, digit = false;
    for (const char *c = text; *c; c++) {
        upper |= *c >= 'A' && *c <= 'Z';
        lower |= *c >= 'a' && *c <= 'z';
        digit |= *c >= '0' && *c <= '9';
    }
    /* Two of the three classes, not all three: 40 random Z85 characters lack a digit about
     * one time in 150 (a pasted key was then echoed as a missing file's name). */
    return len >= 24 && strspn(text, z85) == len && (int)upper + (int)lower + (int)digit >= 2;
}

/* The part of a missing path below its deepest existing folder: what the operator typed
 * when a path option's value arrives with the config's folder in front. Z85 keys contain
 * '/', so a pasted key may look like several path components; none of them exists. */
static const char *s_missing_part(const char *path)
{
    const char *part = path;
    char prefix[4096];
    for (const char *p = strchr(path, '/'); p; p = strchr(p + 1, '/')) {
        size_t n = (size_t)(p - path);
        struct stat sb;
        if (n >= sizeof prefix) break;
        memcpy(prefix, path, n);
        prefix[n] = '\0';
        if (n > 0 && (stat(prefix, &sb) != 0 || !S_ISDIR(sb.st_mode))) break;
        part = p + 1;
    }
    return part;
}

int keys_load_curve_public(const char *value_or_path, uint8_t out[KEYS_CURVE_BYTES])
{
    /* Z85's alphabet includes '/' and '.', so a 40-character path may also be valid Z85:
     * an existing file wins, then the text form is recognised by decoding. */
    size_t len = strlen(value_or_path);
    if (len == 0)
        return medfl_error_set(MEDFL_EINVAL, "empty: give the path of a curve.pub file or the "
                                             "%d-character Z85 key it holds", KEYS_Z85_LEN);
    bool exists = access(value_or_path, F_OK) == 0;
    if (!exists && len == KEYS_Z85_LEN && keys_z85_decode(value_or_path, out, "public key") == 0)
        return 0;
    /* A key pasted into a path option arrives with the config's folder in front. */
    const char *base = exists ? value_or_path : s_missing_part(value_or_path);
    if (!exists && s_looks_like_key(base)) {
        size_t n = strlen(base);
        return medfl_error_set(
            MEDFL_EFORMAT, "%s (%zu characters, not shown) is not a file, and %s (a CURVE public "
            "key is exactly %d Z85 characters, as in curve.pub; a key option takes the key, a "
            "file option the path of curve.pub)",
            base == value_or_path ? "the value" : "its file name", n,
            n != KEYS_Z85_LEN ? "has the wrong length for a key"
            : base == value_or_path ? "is 40 characters but not valid Z85"
                                    : "looks like a key given where a file path belongs",
            KEYS_Z85_LEN);
    }
    char text[KEYS_FILE_MAX];
    if (s_read_text(value_or_path, text, sizeof text, false) != 0) {
        if (medfl_error_code() == MEDFL_ENOTFOUND)
            medfl_error_set(MEDFL_ENOTFOUND, "%s: no such file (expected the path of a curve.pub "
                            "file, or the %d-character Z85 key it holds)", value_or_path,
                            KEYS_Z85_LEN);
        return -1;
    }
    int rc = keys_z85_decode(text, out, value_or_path);
    sodium_memzero(text, sizeof text);
    return rc;
}
