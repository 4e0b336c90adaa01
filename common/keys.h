/* Long-term keys of a medfl party (node or aggregator), kept in one key folder:
 *
 *   curve.pub     CURVE (X25519) public key, 40 characters of Z85 (ZeroMQ's own text form,
 *                 what ZMQ_CURVE_SERVERKEY and enrollment take), one line
 *   curve.key     CURVE secret key, Z85, mode 0600
 *   identity.pub  Ed25519 public key (libsodium crypto_sign), 64 hex digits, one line
 *   identity.key  Ed25519 secret key (libsodium's 64-byte seed||public form), 128 hex digits,
 *                 mode 0600
 *
 * The CURVE pair authenticates the transport (ZAP allowlist); the Ed25519 identity signs
 * what must stay attributable beyond one connection (secure-aggregation ephemeral keys,
 * model versions). Secret files are written atomically (temp, fsync, rename) and refused
 * on load when group or others may read them, because a key that leaked through a loose
 * mode is not one an operator should keep using silently. Secrets are wiped on destroy. */
#ifndef MEDFL_KEYS_H
#define MEDFL_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define KEYS_CURVE_BYTES 32
#define KEYS_SIGN_PUBLIC_BYTES 32
#define KEYS_SIGN_SECRET_BYTES 64
#define KEYS_Z85_LEN 40        /* text length of a 32-byte key in Z85 */
#define KEYS_ID_LEN 16         /* hex digits of a key id */

typedef struct {
    uint8_t curve_public[KEYS_CURVE_BYTES];
    uint8_t curve_secret[KEYS_CURVE_BYTES];
    uint8_t sign_public[KEYS_SIGN_PUBLIC_BYTES];
    uint8_t sign_secret[KEYS_SIGN_SECRET_BYTES];
} keys_t;

/* Fresh CURVE and Ed25519 key pairs from libsodium's CSPRNG; NULL on failure. */
keys_t *keys_generate(void);

/* Loads the four files of dir, checking the secret files' modes and that each secret
 * key matches its public file. Errors name the file (and its mode when too open). */
keys_t *keys_load(const char *dir);

/* Writes the four files into dir (created 0700 when missing). Refuses to replace existing
 * key files unless overwrite is true, so a second keygen never silently orphans an
 * enrollment. */
int keys_save(const keys_t *self, const char *dir, bool overwrite)
    __attribute__((warn_unused_result));

/* `keygen` of both programs: fresh key pairs saved into dir (created with its parents,
 * 0700; existing keys replaced only when overwrite), then printed for the operator on out
 * as "key_dir:", "curve_public:", "identity_public:" and "key_id:" lines. The public keys'
 * text forms come back in curve_z85 and identity_hex for the program's own hint line. */
int keys_keygen(const char *dir, bool overwrite, FILE *out, char curve_z85[KEYS_Z85_LEN + 1],
                char identity_hex[2 * KEYS_SIGN_PUBLIC_BYTES + 1])
    __attribute__((warn_unused_result));

/* Wipes the secrets and frees; safe with NULL and twice. */
void keys_destroy(keys_t **self_p);

/* Z85 text of a 32-byte key into out[KEYS_Z85_LEN + 1]. */
int keys_z85_encode(const uint8_t key[KEYS_CURVE_BYTES], char out[KEYS_Z85_LEN + 1]);
/* Parses exactly 40 Z85 characters (surrounding blanks ignored); -1 with a message naming
 * `what` otherwise. */
int keys_z85_decode(const char *text, uint8_t out[KEYS_CURVE_BYTES], const char *what)
    __attribute__((warn_unused_result));

/* Parses 64 hex digits of an Ed25519 public key. */
int keys_hex_decode_public(const char *text, uint8_t out[KEYS_SIGN_PUBLIC_BYTES],
                           const char *what) __attribute__((warn_unused_result));

/* Short, non-secret fingerprint of a public key for logs and tables: the first 8 bytes of
 * BLAKE2b-256(key) in hex (the same id as wire_key_id, so logs of the transport and the
 * `nodes` table match). Two different keys never share a prefix by accident in practice,
 * and the id does not reveal more than the public key itself. */
void keys_key_id(const uint8_t key[KEYS_CURVE_BYTES], char out[KEYS_ID_LEN + 1]);

/* Reads a CURVE public key given either as 40 Z85 characters or as the path of a file
 * holding them (e.g. the aggregator's curve.pub). */
int keys_load_curve_public(const char *value_or_path, uint8_t out[KEYS_CURVE_BYTES])
    __attribute__((warn_unused_result));

#endif
