/* Key folder I/O: round trip of both key pairs, refusal of secret files with loose modes,
 * corrupt and mismatched files, overwrite protection, Z85/hex parsing and key ids. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "common/error.h"
#include "common/keys.h"

static char s_root[] = "/tmp/medfl-test-keys-XXXXXX";
static int s_counter;

/* A fresh, not yet existing key folder per test. */
static const char *s_newdir(void)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/k%d", s_root, s_counter++);
    return path;
}

static void s_overwrite(const char *dir, const char *name, const char *text, mode_t mode)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static int s_setup(void **state)
{
    (void)state;
    return mkdtemp(s_root) ? 0 : -1;
}

static int s_teardown(void **state)
{
    (void)state;
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_root);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_round_trip(void **state)
{
    (void)state;
    const char *dir = s_newdir();
    keys_t *k = keys_generate();
    assert_non_null(k);
    assert_int_equal(keys_save(k, dir, false), 0);

    char path[700];
    struct stat st;
    snprintf(path, sizeof path, "%s/curve.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(path, sizeof path, "%s/identity.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    keys_t *l = keys_load(dir);
    assert_non_null(l);
    assert_memory_equal(k->curve_public, l->curve_public, KEYS_CURVE_BYTES);
    assert_memory_equal(k->curve_secret, l->curve_secret, KEYS_CURVE_BYTES);
    assert_memory_equal(k->sign_public, l->sign_public, KEYS_SIGN_PUBLIC_BYTES);
    assert_memory_equal(k->sign_secret, l->sign_secret, KEYS_SIGN_SECRET_BYTES);

    /* The loaded identity key really signs for the loaded public key. */
    const unsigned char msg[] = "round 7 ephemeral key";
    unsigned char sig[crypto_sign_BYTES];
    assert_int_equal(crypto_sign_detached(sig, NULL, msg, sizeof msg, l->sign_secret), 0);
    assert_int_equal(crypto_sign_verify_detached(sig, msg, sizeof msg, k->sign_public), 0);

    /* The public key file is what the node config may point at. */
    uint8_t pub[KEYS_CURVE_BYTES];
    snprintf(path, sizeof path, "%s/curve.pub", dir);
    assert_int_equal(keys_load_curve_public(path, pub), 0);
    assert_memory_equal(pub, k->curve_public, KEYS_CURVE_BYTES);
    char z85[KEYS_Z85_LEN + 1];
    assert_int_equal(keys_z85_encode(k->curve_public, z85), 0);
    memset(pub, 0, sizeof pub);
    assert_int_equal(keys_load_curve_public(z85, pub), 0);
    assert_memory_equal(pub, k->curve_public, KEYS_CURVE_BYTES);

    /* A secret key pasted into a path option (it arrives with the config's folder in front)
     * is never echoed, even one without a digit (seen in CI: 40 random Z85 characters). */
    char pasted[800];
    snprintf(pasted, sizeof pasted, "%s/j!TJQRsQvdwE<ZMMqoE]SK=mgYA#Ks{&vVs}uVlX", dir);
    assert_int_equal(keys_load_curve_public(pasted, pub), -1);
    assert_null(strstr(medfl_error_message(), "TJQRsQ"));
    assert_non_null(strstr(medfl_error_message(), "not shown"));

    keys_destroy(&k);
    keys_destroy(&l);
    assert_null(k);
    keys_destroy(&k); /* twice is safe */
}

static void test_refuses_overwrite(void **state)
{
    (void)state;
    const char *dir = s_newdir();
    keys_t *a = keys_generate(), *b = keys_generate();
    assert_int_equal(keys_save(a, dir, false), 0);
    assert_int_equal(keys_save(b, dir, false), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    assert_non_null(strstr(medfl_error_message(), "already exists"));
    keys_t *l = keys_load(dir);
    assert_non_null(l);
    assert_memory_equal(l->curve_public, a->curve_public, KEYS_CURVE_BYTES);
    keys_destroy(&l);
    assert_int_equal(keys_save(b, dir, true), 0);
    l = keys_load(dir);
    assert_non_null(l);
    assert_memory_equal(l->curve_public, b->curve_public, KEYS_CURVE_BYTES);
    keys_destroy(&l);
    keys_destroy(&a);
    keys_destroy(&b);
}

static void test_loose_permissions_refused(void **state)
{
    (void)state;
    static const char *const secrets[] = {"curve.key", "identity.key"};
    static const mode_t modes[] = {0640, 0604, 0660};
    for (int s = 0; s < 2; s++) {
        for (int m = 0; m < 3; m++) {
            const char *dir = s_newdir();
            keys_t *k = keys_generate();
            assert_int_equal(keys_save(k, dir, false), 0);
            keys_destroy(&k);
            char path[700], mode_text[16];
            snprintf(path, sizeof path, "%s/%s", dir, secrets[s]);
            assert_int_equal(chmod(path, modes[m]), 0);
            assert_null(keys_load(dir));
            assert_int_equal(medfl_error_code(), MEDFL_EPERM);
            assert_non_null(strstr(medfl_error_message(), path));
            snprintf(mode_text, sizeof mode_text, "%04o", (unsigned)modes[m]);
            assert_non_null(strstr(medfl_error_message(), mode_text));
            /* Tightening the mode makes the same folder acceptable again. */
            assert_int_equal(chmod(path, 0400), 0);
            k = keys_load(dir);
            assert_non_null(k);
            keys_destroy(&k);
        }
    }
}

static void test_corrupt_files(void **state)
{
    (void)state;
    keys_t *other = keys_generate();
    char other_pub[KEYS_Z85_LEN + 2];
    assert_int_equal(keys_z85_encode(other->curve_public, other_pub), 0);
    strcat(other_pub, "\n");
    char other_id_pub[2 * KEYS_SIGN_PUBLIC_BYTES + 2];
    sodium_bin2hex(other_id_pub, sizeof other_id_pub - 1, other->sign_public,
                   sizeof other->sign_public);
    strcat(other_id_pub, "\n");

    struct {
        const char *file, *text;
        mode_t mode;
        medfl_err_t code;
        const char *needle;
    } cases[] = {
        {"curve.key", "too-short\n", 0600, MEDFL_EFORMAT, "curve.key"},
        {"curve.key", "", 0600, MEDFL_EFORMAT, "curve.key"},
        {"curve.key", "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\n",
         0600, MEDFL_EFORMAT, "Z85"},
        {"curve.pub", other_pub, 0644, MEDFL_ECRYPTO, "does not match"},
        {"curve.pub", "garbage garbage\n", 0644, MEDFL_EFORMAT, "curve.pub"},
        {"identity.pub", other_id_pub, 0644, MEDFL_ECRYPTO, "does not match"},
        {"identity.pub", "abcd\n", 0644, MEDFL_EFORMAT, "identity.pub"},
        {"identity.key", "00ff\n", 0600, MEDFL_EFORMAT, "identity.key"},
        {"identity.key", "zz not hex at all\n", 0600, MEDFL_EFORMAT, "identity.key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *dir = s_newdir();
        keys_t *k = keys_generate();
        assert_int_equal(keys_save(k, dir, false), 0);
        keys_destroy(&k);
        s_overwrite(dir, cases[i].file, cases[i].text, cases[i].mode);
        assert_null(keys_load(dir));
        if (medfl_error_code() != cases[i].code || !strstr(medfl_error_message(), cases[i].needle))
            fail_msg("case %zu (%s): got code %d, message '%s'", i, cases[i].file,
                     (int)medfl_error_code(), medfl_error_message());
    }

    /* A key file that is far too long is refused rather than read unbounded. */
    const char *dir = s_newdir();
    keys_t *k = keys_generate();
    assert_int_equal(keys_save(k, dir, false), 0);
    keys_destroy(&k);
    char big[2048];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    s_overwrite(dir, "curve.pub", big, 0644);
    assert_null(keys_load(dir));
    assert_non_null(strstr(medfl_error_message(), "too large"));

    /* Missing folder and missing file. */
    assert_null(keys_load("/nonexistent/medfl-keys"));
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_non_null(strstr(medfl_error_message(), "/nonexistent/medfl-keys/curve.pub"));
    keys_destroy(&other);
}

static void test_text_forms_and_ids(void **state)
{
    (void)state;
    uint8_t key[KEYS_CURVE_BYTES], back[KEYS_CURVE_BYTES];
    for (int i = 0; i < KEYS_CURVE_BYTES; i++) key[i] = (uint8_t)(i * 7 + 1);
    char z85[KEYS_Z85_LEN + 1];
    assert_int_equal(keys_z85_encode(key, z85), 0);
    assert_int_equal(strlen(z85), KEYS_Z85_LEN);
    assert_int_equal(keys_z85_decode(z85, back, "k"), 0);
    assert_memory_equal(key, back, sizeof key);

    char padded[64];
    snprintf(padded, sizeof padded, "  %s \n", z85);
    assert_int_equal(keys_z85_decode(padded, back, "k"), 0);
    assert_int_equal(keys_z85_decode("short", back, "arg PUBKEY"), -1);
    assert_non_null(strstr(medfl_error_message(), "arg PUBKEY"));
    char extra[64];
    snprintf(extra, sizeof extra, "%s x", z85);
    assert_int_equal(keys_z85_decode(extra, back, "k"), -1);
    char bad[KEYS_Z85_LEN + 1];
    memset(bad, '~', KEYS_Z85_LEN); /* '~' is outside the Z85 alphabet */
    bad[KEYS_Z85_LEN] = '\0';
    assert_int_equal(keys_z85_decode(bad, back, "k"), -1);
    /* Not a key and not a readable file either. */
    assert_int_equal(keys_load_curve_public(bad, back), -1);

    uint8_t pk[KEYS_SIGN_PUBLIC_BYTES];
    char hex[2 * KEYS_SIGN_PUBLIC_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, key, sizeof key);
    assert_int_equal(keys_hex_decode_public(hex, pk, "identity"), 0);
    assert_memory_equal(pk, key, sizeof pk);
    hex[10] = 'x';
    assert_int_equal(keys_hex_decode_public(hex, pk, "identity"), -1);
    assert_int_equal(keys_hex_decode_public("abcd", pk, "identity"), -1);

    char id1[KEYS_ID_LEN + 1], id2[KEYS_ID_LEN + 1], id3[KEYS_ID_LEN + 1];
    keys_key_id(key, id1);
    keys_key_id(key, id2);
    key[31] ^= 1;
    keys_key_id(key, id3);
    assert_int_equal(strlen(id1), KEYS_ID_LEN);
    assert_string_equal(id1, id2);
    assert_string_not_equal(id1, id3);
    assert_int_equal(strspn(id1, "0123456789abcdef"), KEYS_ID_LEN);
}

/* keygen as both programs run it: nested folder created 0700, the printed lines name the
 * folder and the public keys that keys_load then reads back, secrets 0600, a second keygen
 * refused unless overwrite, and a folder that cannot be created reported. */
static void test_keygen(void **state)
{
    (void)state;
    char dir[700];
    snprintf(dir, sizeof dir, "%s/nested/keys", s_newdir());
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    char z85[KEYS_Z85_LEN + 1], hex[2 * KEYS_SIGN_PUBLIC_BYTES + 1];
    assert_int_equal(keys_keygen(dir, false, out, z85, hex), 0);
    assert_int_equal(fclose(out), 0);
    keys_t *k = keys_load(dir);
    assert_non_null(k);
    char want_z85[KEYS_Z85_LEN + 1], want_hex[2 * KEYS_SIGN_PUBLIC_BYTES + 1], id[KEYS_ID_LEN + 1];
    assert_int_equal(keys_z85_encode(k->curve_public, want_z85), 0);
    sodium_bin2hex(want_hex, sizeof want_hex, k->sign_public, sizeof k->sign_public);
    keys_key_id(k->curve_public, id);
    keys_destroy(&k);
    assert_string_equal(z85, want_z85);
    assert_string_equal(hex, want_hex);
    char expect[600];
    snprintf(expect, sizeof expect, "key_dir: %s\ncurve_public: %s\nidentity_public: %s\nkey_id: %s\n",
             dir, want_z85, want_hex, id);
    assert_string_equal(text, expect);
    free(text);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char path[800];
    snprintf(path, sizeof path, "%s/identity.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    FILE *sink = fopen("/dev/null", "w");
    assert_non_null(sink);
    assert_int_equal(keys_keygen(dir, false, sink, z85, hex), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ESTATE);
    assert_string_equal(z85, want_z85); /* the refused keygen changed nothing */
    assert_int_equal(keys_keygen(dir, true, sink, z85, hex), 0);
    assert_string_not_equal(z85, want_z85);
    /* A parent that is a file. */
    snprintf(path, sizeof path, "%s/curve.pub/sub", dir);
    assert_int_equal(keys_keygen(path, false, sink, z85, hex), -1);
    assert_non_null(strstr(medfl_error_message(), "curve.pub"));
    fclose(sink);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refuses_overwrite),
        cmocka_unit_test(test_loose_permissions_refused),
        cmocka_unit_test(test_corrupt_files),
        cmocka_unit_test(test_text_forms_and_ids),
        cmocka_unit_test(test_keygen),
    };
    return cmocka_run_group_tests_name("keys", tests, s_setup, s_teardown);
}
