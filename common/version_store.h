/* Signed, hash-chained model versions in a folder, shared by the aggregator (which writes
 * them) and the nodes (which verify and install their own copy before training on one).
 *
 * It lives in common/ rather than aggregator/ because nodes must run exactly the same
 * verification code as the aggregator's writer: one canonical serialization, one hash.
 *
 * Layout of a store folder (see docs/versions.md):
 *   v000007.h5    the global trainable tensors, one float32 dataset per tensor under
 *                 /tensors/<name>, plus root attributes (format, version, parent, round, hash)
 *   v000007.json  the manifest: version, parent, parent_hash, round, created, participants
 *                 and their weights, aggregated metrics, attributes (model description), the
 *                 tensor table (name, shape, offset in the flat vector), tensors_digest, hash,
 *                 signer, signature. Written LAST: a version exists only when its manifest
 *                 does, so a crash mid-write leaves no half version.
 *   HEAD          "HEAD_VERSION LATEST_AT_WRITE" written by rollback only (see vs_store_head).
 *
 * Hashes (BLAKE2b-256) and signature (Ed25519), all integers little-endian:
 *   tensors_digest = H("medfl-tensors-v1" | u32 n | per tensor: str name, u32 ndim,
 *                      i64 dims..., f32 data...)
 *   hash           = H("medfl-version-v1" | parent_hash[32] | tensors_digest[32] |
 *                      canonical metadata)
 *   signature      = Ed25519("medfl-version-sig-v1" | hash)
 * with str = u32 length + bytes, and canonical metadata = u64 version, u64 parent,
 * u64 round, i64 created, u32 n + (str node, f64 weight) per participant in manifest order,
 * u32 n + (str name, f64 value) per metric sorted by name, u32 n + (str key, str value) per
 * attribute sorted by key. The tensor table's order IS the flat vector's layout. */
#ifndef MEDFL_VERSION_STORE_H
#define MEDFL_VERSION_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/named_tensor.h"

#define VS_HASH_BYTES 32
#define VS_SIG_BYTES 64
#define VS_PK_BYTES 32
#define VS_SK_BYTES 64
#define VS_MAX_TENSORS 65536
#define VS_MAX_ITEMS 4096          /* participants, metrics, attributes each */
#define VS_MAX_NAME 256            /* tensor, node, metric and attribute names */
#define VS_MAX_NUMEL ((size_t)1 << 31)
#define VS_MAX_MANIFEST (16u << 20)

typedef struct {
    char *name;
    int ndim;
    int64_t shape[NT_MAX_DIMS];
    size_t offset; /* in floats, into the flat vector */
    size_t numel;
} vs_tensor_info_t;

typedef struct {
    char *node;
    double weight;
} vs_participant_t;

typedef struct {
    char *name;
    double value;
} vs_metric_t;

typedef struct {
    char *key;
    char *value;
} vs_attr_t;

typedef struct {
    uint64_t version;  /* 1, 2, ... */
    uint64_t parent;   /* 0 for the genesis version */
    uint64_t round;    /* round id that produced it (0 for a seeded version) */
    int64_t created;   /* unix seconds */
    uint8_t parent_hash[VS_HASH_BYTES]; /* zeros for the genesis version */
    uint8_t tensors_digest[VS_HASH_BYTES];
    uint8_t hash[VS_HASH_BYTES];
    uint8_t signer[VS_PK_BYTES];
    uint8_t signature[VS_SIG_BYTES];
    vs_participant_t *participants;
    size_t n_participants;
    vs_metric_t *metrics; /* kept sorted by name */
    size_t n_metrics;
    vs_attr_t *attrs;     /* kept sorted by key */
    size_t n_attrs;
    vs_tensor_info_t *tensors;
    size_t n_tensors;
    size_t numel; /* total floats = length of the flat vector */
} vs_manifest_t;

/* ---- manifest building (what the aggregator fills before vs_store_commit) ---- */
vs_manifest_t *vs_manifest_new(void);
void vs_manifest_destroy(vs_manifest_t **self_p);
/* Appends a tensor to the table; its offset is the current total. Names must be unique,
 * non-empty, at most VS_MAX_NAME bytes, without '/'. */
int vs_manifest_add_tensor(vs_manifest_t *m, const char *name, int ndim, const int64_t *shape);
int vs_manifest_add_participant(vs_manifest_t *m, const char *node, double weight);
/* Sets (or replaces) a metric; finite values only. */
int vs_manifest_set_metric(vs_manifest_t *m, const char *name, double value);
/* Sets (or replaces) an attribute, e.g. "lora_r" = "8", "base_model" = "...". */
int vs_manifest_set_attr(vs_manifest_t *m, const char *key, const char *value);
const char *vs_manifest_attr(const vs_manifest_t *m, const char *key);
/* Index of a tensor by name, or -1. */
long vs_manifest_find_tensor(const vs_manifest_t *m, const char *name);

/* Manifest JSON text (malloc'ed, NUL-terminated) and its strict parser. `origin` names the
 * source in error messages ("v000003.json", "VersionAnnounce"). */
char *vs_manifest_to_json(const vs_manifest_t *m);
vs_manifest_t *vs_manifest_parse(const char *text, size_t len, const char *origin);

/* Recomputes tensors_digest and hash of m over flat (m->numel floats) into the given outputs. */
int vs_compute_hashes(const vs_manifest_t *m, const float *flat,
                      uint8_t digest[VS_HASH_BYTES], uint8_t hash[VS_HASH_BYTES]);

/* Checks one version in isolation: signer == public key, signature over hash, tensors
 * against tensors_digest, metadata against hash. Errors (MEDFL_ECRYPTO) say which part. */
int vs_check(const vs_manifest_t *m, const float *flat, const uint8_t pk[VS_PK_BYTES],
             const char *origin) __attribute__((warn_unused_result));

/* ---- the store ---- */
typedef struct vs_store_t vs_store_t;

/* Opens (create: makes the folder, 0700) a store. Leftover temporary files of an
 * interrupted write and tensor files without a manifest are removed (logged). */
vs_store_t *vs_store_open(const char *dir, bool create);
/* For another process reading a store its owner may be writing (`report`): removes nothing
 * (a temporary file may be the owner's write in progress) and never writes. */
vs_store_t *vs_store_open_readonly(const char *dir);
void vs_store_destroy(vs_store_t **self_p);
/* Picks up what other processes changed (`rollback` writes HEAD, `init-version` and commits
 * add versions numbered on from the latest): probes the manifests after the latest known and
 * re-reads HEAD, in O(1) (no folder scan: a daemon calls it every round). A long-lived
 * reader calls it before relying on vs_store_head. Unlike open, it removes nothing. */
int vs_store_refresh(vs_store_t *s) __attribute__((warn_unused_result));
const char *vs_store_dir(const vs_store_t *s);

/* Highest complete version, 0 when empty. */
uint64_t vs_store_latest(const vs_store_t *s);
/* The version the next round starts from: the latest version, unless a rollback since the
 * latest version was written moved it back. 0 when empty. */
uint64_t vs_store_head(const vs_store_t *s);
bool vs_store_has(const vs_store_t *s, uint64_t version);
/* Complete versions in ascending order (array owned by the store, valid until the next
 * commit/install). */
const uint64_t *vs_store_versions(const vs_store_t *s, size_t *count);

/* Moves head to an existing version (crash-safe write of HEAD). History is kept: the
 * next committed version gets `version` as its parent. */
int vs_store_rollback(vs_store_t *s, uint64_t version) __attribute__((warn_unused_result));

/* Writes a new version whose parent is the current head: fills m->version, parent,
 * parent_hash, created (when 0), tensors_digest, hash, signer, signature, then writes the
 * tensor file and the manifest (each temp + fsync + rename, then the folder fsync'ed).
 * flat holds m->numel floats laid out by m's tensor table. sk: 64-byte Ed25519 secret key. */
int vs_store_commit(vs_store_t *s, vs_manifest_t *m, const float *flat,
                    const uint8_t sk[VS_SK_BYTES]) __attribute__((warn_unused_result));

/* Reads a version without verifying it (listing, export of a verified store). */
vs_manifest_t *vs_store_manifest(const vs_store_t *s, uint64_t version);
int vs_store_load(const vs_store_t *s, uint64_t version, vs_manifest_t **m_out, float **flat_out);

/* Verifies a version and its whole chain down to genesis (signature, tensors, metadata,
 * each parent link). On success, optionally returns the version's manifest and tensors.
 * What `versions verify`, rollback and exports use: it reads every version again. The store
 * object remembers the hashes of the versions it verified (see vs_store_verify_cached). */
int vs_store_verify(vs_store_t *s, uint64_t version, const uint8_t pk[VS_PK_BYTES],
                    vs_manifest_t **m_out, float **flat_out) __attribute__((warn_unused_result));
/* The same guarantee at the cost of the new links only, for the daemons' per-round checks:
 * the version itself is always read and checked (signature, tensors, metadata), then the walk
 * towards genesis stops at the first ancestor this object verified before under the same key,
 * whose parent link is checked against the hash held in memory. The first call on a freshly
 * opened store walks the whole chain (the check at startup), later ones cost O(1) per new
 * version instead of O(versions). A version whose number was verified with another hash is
 * refused (changed on disk, or the signer signed two). */
int vs_store_verify_cached(vs_store_t *s, uint64_t version, const uint8_t pk[VS_PK_BYTES],
                           vs_manifest_t **m_out, float **flat_out)
    __attribute__((warn_unused_result));

/* Convenience for callers holding only a folder: opens, verifies, closes. */
int versions_verify(const char *dir, uint64_t version, const uint8_t pk[VS_PK_BYTES])
    __attribute__((warn_unused_result));

/* ---- transfer (VersionAnnounce payload) ----
 * blob = "MFLVER01" | u64 manifest_len | manifest JSON | u64 numel | f32 flat[numel]. */
int vs_store_serialize(const vs_store_t *s, uint64_t version, uint8_t **blob, size_t *len);
/* Strict decoder: bounds, manifest syntax, numel == manifest's table. flat_out is a malloc'ed
 * copy. Checks nothing cryptographic (vs_check does). */
int vs_blob_parse(const uint8_t *blob, size_t len, vs_manifest_t **m_out, float **flat_out);
/* Node side: parses, checks signature/tensors/hash, requires the parent (unless genesis) to
 * be present locally with the hash the blob names, then writes the version. Installing a
 * version already present with the same hash is a no-op; with a different hash it is
 * refused (the aggregator signed two different versions with one number). ENOTFOUND names
 * the missing parent so the caller can fetch it first. */
int vs_store_install(vs_store_t *s, const uint8_t *blob, size_t len,
                     const uint8_t pk[VS_PK_BYTES], uint64_t *version_out)
    __attribute__((warn_unused_result));

/* Lower-case hex of a hash / key into out (2 * n + 1 bytes). */
void vs_hex(const uint8_t *bytes, size_t n, char *out);

#endif
