/* common/version_store + aggregator/versions: a chain of versions verifies; one flipped
 * tensor byte, one edited manifest field, a bad or foreign signature, a wrong parent hash
 * (even when correctly re-signed) are each refused with their own error; an interrupted
 * write leaves no half version; rollback keeps history and parents the next version;
 * transfer blobs install on a node store only with their parent and intact; PEFT export and
 * import round-trip against the PEFT-written fixture; the per-round cached check reads only
 * new versions and their links, the full walk stays available. Each test uses its own folder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <hdf5.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aggregator/versions.h"
#include "common/adapter_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "common/version_store.h"

typedef struct {
    char dir[64];
    char store[128];
    uint8_t pk[VS_PK_BYTES], sk[VS_SK_BYTES];
} fx_t;

static int s_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof *fx);
    if (!fx || sodium_init() < 0) return -1;
    log_configure(fopen("/dev/null", "w"), LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/medfl-test-versions-XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    snprintf(fx->store, sizeof fx->store, "%s/versions", fx->dir);
    uint8_t seed[32];
    for (int i = 0; i < 32; i++) seed[i] = (uint8_t)(i * 7 + 1);
    crypto_sign_seed_keypair(fx->pk, fx->sk, seed);
    *state = fx;
    return 0;
}

static int s_teardown(void **state)
{
    fx_t *fx = *state;
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    if (system(cmd) != 0) return -1;
    free(fx);
    return 0;
}

#define N_FLAT (6 + 6 + 6 + 2)

/* A manifest like the model's: two LoRA tensors and the head; values depend on `seed`. */
static vs_manifest_t *s_manifest(uint64_t round, float *flat, int seed)
{
    vs_manifest_t *m = vs_manifest_new();
    int64_t a[2] = {2, 3}, b[2] = {3, 2}, h[2] = {2, 3}, hb[1] = {2};
    assert_int_equal(vs_manifest_add_tensor(m, "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight", 2, a), 0);
    assert_int_equal(vs_manifest_add_tensor(m, "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight", 2, b), 0);
    assert_int_equal(vs_manifest_add_tensor(m, "classifier.weight", 2, h), 0);
    assert_int_equal(vs_manifest_add_tensor(m, "classifier.bias", 1, hb), 0);
    assert_int_equal(m->numel, N_FLAT);
    m->round = round;
    assert_int_equal(vs_manifest_add_participant(m, "hospital-a", 0.25), 0);
    assert_int_equal(vs_manifest_add_participant(m, "hospital-b", 0.75), 0);
    assert_int_equal(vs_manifest_set_metric(m, "val_loss", 0.5 / (double)(round + 1)), 0);
    assert_int_equal(vs_manifest_set_metric(m, "accuracy", 0.7), 0);
    /* A sum of weights that is one ulp below 1: cJSON's own printer wrote it as "1" and the
     * stored manifest no longer matched its signed hash (seen in the demo at round 1). */
    assert_int_equal(vs_manifest_set_metric(m, "weight_total", nextafter(1.0, 0.0)), 0);
    assert_int_equal(vs_manifest_set_attr(m, "lora_alpha", "16"), 0);
    assert_int_equal(vs_manifest_set_attr(m, "labels", "[\"neg\",\"pos\"]"), 0);
    assert_int_equal(vs_manifest_set_attr(m, "pooling", "mean"), 0);
    for (int i = 0; i < N_FLAT; i++) flat[i] = (float)(seed * 100 + i) * 0.01f;
    return m;
}

static vs_store_t *s_chain(fx_t *fx, int n)
{
    vs_store_t *s = vs_store_open(fx->store, true);
    assert_non_null(s);
    for (int v = 1; v <= n; v++) {
        float flat[N_FLAT];
        vs_manifest_t *m = s_manifest((uint64_t)v, flat, v);
        assert_int_equal(vs_store_commit(s, m, flat, fx->sk), 0);
        assert_int_equal(m->version, (uint64_t)v);
        assert_int_equal(m->parent, (uint64_t)(v - 1));
        vs_manifest_destroy(&m);
    }
    return s;
}

static void s_path(const fx_t *fx, uint64_t v, const char *ext, char *out, size_t size)
{
    snprintf(out, size, "%s/v%06llu.%s", fx->store, (unsigned long long)v, ext);
}

/* Replaces the first occurrence of `from` by `to` in a file. */
static void s_edit(const char *path, const char *from, const char *to)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strstr(buf, from);
    assert_non_null(p);
    char out[65536];
    size_t pre = (size_t)(p - buf);
    memcpy(out, buf, pre);
    snprintf(out + pre, sizeof out - pre, "%s%s", to, p + strlen(from));
    f = fopen(path, "wb");
    assert_non_null(f);
    fputs(out, f);
    fclose(f);
}

static void s_expect_refused(vs_store_t *s, uint64_t v, const uint8_t *pk, const char *needle)
{
    assert_int_equal(vs_store_verify(s, v, pk, NULL, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
    if (!strstr(medfl_error_message(), needle)) fail_msg("message '%s' lacks '%s'", medfl_error_message(), needle);
}

static void test_chain_verifies(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 3);
    assert_int_equal(vs_store_latest(s), 3);
    assert_int_equal(vs_store_head(s), 3);
    vs_manifest_t *prev = NULL;
    for (uint64_t v = 1; v <= 3; v++) {
        vs_manifest_t *m = NULL;
        float *flat = NULL;
        assert_int_equal(vs_store_verify(s, v, fx->pk, &m, &flat), 0);
        assert_int_equal(m->round, v);
        assert_int_equal(m->n_participants, 2);
        assert_string_equal(m->participants[1].node, "hospital-b");
        assert_true(m->participants[1].weight == 0.75);
        assert_string_equal(m->metrics[0].name, "accuracy"); /* sorted */
        assert_string_equal(vs_manifest_attr(m, "lora_alpha"), "16");
        for (int i = 0; i < N_FLAT; i++) assert_true(flat[i] == (float)((int)v * 100 + i) * 0.01f);
        if (prev) assert_memory_equal(m->parent_hash, prev->hash, VS_HASH_BYTES);
        else assert_true(sodium_is_zero(m->parent_hash, VS_HASH_BYTES));
        vs_manifest_destroy(&prev);
        prev = m;
        free(flat);
    }
    vs_manifest_destroy(&prev);
    assert_int_equal(versions_verify(fx->store, 3, fx->pk), 0);
    assert_int_equal(versions_verify(fx->store, 4, fx->pk), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    vs_store_destroy(&s);
    vs_store_destroy(&s);
}

static void test_tampered_tensor_byte(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 3);
    char path[256];
    s_path(fx, 2, "h5", path, sizeof path);
    /* Flip one byte of the raw data of one dataset, found through HDF5 itself. */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "/tensors/classifier.weight", H5P_DEFAULT);
    haddr_t off = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
    assert_true(off != HADDR_UNDEF);
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    fseek(fp, (long)off + 5, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, (long)off + 5, SEEK_SET);
    fputc(c ^ 0x01, fp);
    fclose(fp);
    s_expect_refused(s, 2, fx->pk, "v000002: tensors altered");
    s_expect_refused(s, 3, fx->pk, "v000002: tensors altered"); /* the chain includes v2 */
    assert_int_equal(vs_store_verify(s, 1, fx->pk, NULL, NULL), 0);
    vs_store_destroy(&s);
}

static void test_tampered_manifest_field(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 3);
    char path[256];
    s_path(fx, 2, "json", path, sizeof path);
    s_edit(path, "\"weight\":\t0.25", "\"weight\":\t0.5");
    s_expect_refused(s, 2, fx->pk, "metadata altered");
    s_path(fx, 1, "json", path, sizeof path);
    s_edit(path, "\"round\":\t1", "\"round\":\t9");
    s_expect_refused(s, 1, fx->pk, "v000001: metadata altered");
    s_path(fx, 3, "json", path, sizeof path);
    s_edit(path, "\"lora_alpha\":\t\"16\"", "\"lora_alpha\":\t\"32\"");
    s_expect_refused(s, 3, fx->pk, "v000003: metadata altered");
    vs_store_destroy(&s);
}

static void test_tampered_signature(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 2);
    vs_manifest_t *m = vs_store_manifest(s, 2);
    assert_non_null(m);
    char hex[2 * VS_SIG_BYTES + 1], bad[2 * VS_SIG_BYTES + 1], path[256];
    vs_hex(m->signature, VS_SIG_BYTES, hex);
    memcpy(bad, hex, sizeof bad);
    bad[10] = bad[10] == '0' ? '1' : '0';
    s_path(fx, 2, "json", path, sizeof path);
    s_edit(path, hex, bad);
    s_expect_refused(s, 2, fx->pk, "v000002: signature invalid");

    /* Another key: refused as a foreign signer before anything else. */
    uint8_t pk2[VS_PK_BYTES], sk2[VS_SK_BYTES];
    crypto_sign_keypair(pk2, sk2);
    s_expect_refused(s, 1, pk2, "not by the aggregator's key");

    /* No signature at all: a format error naming the field. */
    s_edit(path, bad, "");
    assert_int_equal(vs_store_verify(s, 2, fx->pk, NULL, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EFORMAT);
    assert_non_null(strstr(medfl_error_message(), "'signature'"));
    vs_manifest_destroy(&m);
    vs_store_destroy(&s);
}

static void test_tampered_parent_hash(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 3);
    vs_manifest_t *m3 = vs_store_manifest(s, 3);
    char old[65], fake[65], path[256];
    vs_hex(m3->parent_hash, VS_HASH_BYTES, old);
    memcpy(fake, old, sizeof fake);
    fake[0] = fake[0] == 'a' ? 'b' : 'a';
    s_path(fx, 3, "json", path, sizeof path);
    s_edit(path, old, fake);
    s_expect_refused(s, 3, fx->pk, "metadata altered");

    /* Even a version correctly signed by the aggregator's key is refused when its parent
     * hash is not its parent's: the chain check does not rest on the signature. */
    float *flat = NULL;
    vs_manifest_t *orig = NULL;
    assert_int_equal(vs_store_load(s, 1, &orig, &flat), 0);
    vs_manifest_destroy(&orig);
    m3->parent_hash[0] ^= 0xff;
    float *flat3 = NULL;
    vs_manifest_t *tmp = NULL;
    s_edit(path, fake, old);
    assert_int_equal(vs_store_load(s, 3, &tmp, &flat3), 0);
    vs_manifest_destroy(&tmp);
    assert_int_equal(vs_compute_hashes(m3, flat3, m3->tensors_digest, m3->hash), 0);
    uint8_t msg[20 + VS_HASH_BYTES];
    memcpy(msg, "medfl-version-sig-v1", 20);
    memcpy(msg + 20, m3->hash, VS_HASH_BYTES);
    crypto_sign_detached(m3->signature, NULL, msg, sizeof msg, fx->sk);
    assert_int_equal(vs_check(m3, flat3, fx->pk, "forged"), 0); /* consistent in isolation */
    char *json = vs_manifest_to_json(m3);
    FILE *f = fopen(path, "wb");
    fputs(json, f);
    fclose(f);
    free(json);
    s_expect_refused(s, 3, fx->pk, "chain broken: parent_hash of v000003");
    free(flat);
    free(flat3);
    vs_manifest_destroy(&m3);
    vs_store_destroy(&s);
}

static void test_crash_leaves_no_half_version(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 1);
    vs_store_destroy(&s);
    /* Simulate a crash after the tensor file of v2 was renamed into place and while its
     * manifest was still a temporary file. */
    char src[256], dst[256], tmp[300], cmd[700];
    s_path(fx, 1, "h5", src, sizeof src);
    s_path(fx, 2, "h5", dst, sizeof dst);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", src, dst);
    assert_int_equal(system(cmd), 0);
    s_path(fx, 2, "json", tmp, sizeof tmp);
    strcat(tmp, ".tmp.Ab12Cd");
    FILE *f = fopen(tmp, "w");
    fputs("{\"format\": \"medfl-version-1\", \"vers", f); /* half written */
    fclose(f);

    s = vs_store_open(fx->store, false);
    assert_non_null(s);
    assert_int_equal(vs_store_latest(s), 1);
    assert_false(vs_store_has(s, 2));
    assert_int_equal(access(tmp, F_OK), -1);
    assert_int_equal(access(dst, F_OK), -1);
    float flat[N_FLAT];
    vs_manifest_t *m = s_manifest(2, flat, 42);
    assert_int_equal(vs_store_commit(s, m, flat, fx->sk), 0);
    assert_int_equal(m->version, 2);
    vs_manifest_destroy(&m);
    float *got = NULL;
    assert_int_equal(vs_store_verify(s, 2, fx->pk, NULL, &got), 0);
    assert_true(got[3] == flat[3]);
    free(got);
    vs_store_destroy(&s);
}

static void test_rollback_keeps_history(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 3);
    assert_int_equal(vs_store_rollback(s, 7), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_int_equal(vs_store_rollback(s, 1), 0);
    assert_int_equal(vs_store_head(s), 1);
    assert_int_equal(vs_store_latest(s), 3);
    vs_store_destroy(&s);
    s = vs_store_open(fx->store, false); /* the head survives a restart */
    assert_int_equal(vs_store_head(s), 1);
    float flat[N_FLAT];
    vs_manifest_t *m = s_manifest(4, flat, 4);
    assert_int_equal(vs_store_commit(s, m, flat, fx->sk), 0);
    assert_int_equal(m->version, 4);
    assert_int_equal(m->parent, 1);
    vs_manifest_t *m1 = vs_store_manifest(s, 1);
    assert_memory_equal(m->parent_hash, m1->hash, VS_HASH_BYTES);
    vs_manifest_destroy(&m1);
    vs_manifest_destroy(&m);
    assert_int_equal(vs_store_head(s), 4);
    size_t n;
    vs_store_versions(s, &n);
    assert_int_equal(n, 4);
    for (uint64_t v = 1; v <= 4; v++) assert_int_equal(vs_store_verify(s, v, fx->pk, NULL, NULL), 0);
    /* Roll back to a version off the current branch and on again. */
    assert_int_equal(vs_store_rollback(s, 3), 0);
    vs_store_destroy(&s);
    s = vs_store_open(fx->store, false);
    assert_int_equal(vs_store_head(s), 3);
    m = s_manifest(5, flat, 5);
    assert_int_equal(vs_store_commit(s, m, flat, fx->sk), 0);
    assert_int_equal(m->parent, 3);
    vs_manifest_destroy(&m);
    assert_int_equal(vs_store_verify(s, 5, fx->pk, NULL, NULL), 0);
    vs_store_destroy(&s);
}

/* Re-signs version v's manifest after `edit` changed it (an aggregator key signing what it
 * should not), so the version is consistent in isolation. */
static void s_resign(fx_t *fx, vs_store_t *s, uint64_t v, void (*edit)(vs_manifest_t *m))
{
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    assert_int_equal(vs_store_load(s, v, &m, &flat), 0);
    edit(m);
    assert_int_equal(vs_compute_hashes(m, flat, m->tensors_digest, m->hash), 0);
    uint8_t msg[20 + VS_HASH_BYTES];
    memcpy(msg, "medfl-version-sig-v1", 20);
    memcpy(msg + 20, m->hash, VS_HASH_BYTES);
    crypto_sign_detached(m->signature, NULL, msg, sizeof msg, fx->sk);
    assert_int_equal(vs_check(m, flat, fx->pk, "resigned"), 0);
    char path[256], *json = vs_manifest_to_json(m);
    s_path(fx, v, "json", path, sizeof path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(json, f);
    fclose(f);
    free(json);
    free(flat);
    vs_manifest_destroy(&m);
}

static void s_flip_parent_hash(vs_manifest_t *m) { m->parent_hash[0] ^= 0xff; }
static void s_other_alpha(vs_manifest_t *m) { assert_int_equal(vs_manifest_set_attr(m, "lora_alpha", "32"), 0); }

static void s_commit_one(fx_t *fx, vs_store_t *s, int seed)
{
    float flat[N_FLAT];
    vs_manifest_t *m = s_manifest((uint64_t)seed, flat, seed);
    assert_int_equal(vs_store_commit(s, m, flat, fx->sk), 0);
    vs_manifest_destroy(&m);
}

static void s_expect_cached_refused(vs_store_t *s, uint64_t v, const uint8_t *pk, const char *needle)
{
    assert_int_equal(vs_store_verify_cached(s, v, pk, NULL, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
    if (!strstr(medfl_error_message(), needle)) fail_msg("message '%s' lacks '%s'", medfl_error_message(), needle);
}

/* The daemons' per-round check: the first call on an opened store walks the whole chain;
 * later calls check the new version and its link to the hash verified before, without
 * reading older versions again (shown by damaging one: only the full walk still sees it). */
static void test_verify_cached(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 3);
    char p1[256];
    s_path(fx, 1, "json", p1, sizeof p1);
    s_edit(p1, "\"round\":\t1", "\"round\":\t9");
    s_expect_cached_refused(s, 3, fx->pk, "v000001: metadata altered"); /* first call: all */
    s_edit(p1, "\"round\":\t9", "\"round\":\t1");
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    assert_int_equal(vs_store_verify_cached(s, 3, fx->pk, &m, &flat), 0);
    assert_int_equal(m->version, 3);
    assert_true(flat[4] == (float)(300 + 4) * 0.01f);
    vs_manifest_destroy(&m);
    free(flat);

    /* v4 on top: its own checks and its link to v3's remembered hash, nothing below */
    s_commit_one(fx, s, 4);
    s_edit(p1, "\"round\":\t1", "\"round\":\t9");
    assert_int_equal(vs_store_verify_cached(s, 4, fx->pk, NULL, NULL), 0);
    s_expect_refused(s, 4, fx->pk, "v000001: metadata altered"); /* the full walk reads it */
    s_edit(p1, "\"round\":\t9", "\"round\":\t1");

    /* the version verified is always read and checked itself */
    s_commit_one(fx, s, 5);
    char p5[256];
    s_path(fx, 5, "json", p5, sizeof p5);
    s_edit(p5, "\"lora_alpha\":\t\"16\"", "\"lora_alpha\":\t\"32\"");
    s_expect_cached_refused(s, 5, fx->pk, "v000005: metadata altered");
    s_edit(p5, "\"lora_alpha\":\t\"32\"", "\"lora_alpha\":\t\"16\"");
    /* signed, but its parent_hash is not the verified v4's: the link fails on the cache */
    s_resign(fx, s, 5, s_flip_parent_hash);
    s_expect_cached_refused(s, 5, fx->pk, "chain broken: parent_hash of v000005 does not match "
                                          "the hash of v000004");
    /* a verified number signed again with other contents: refused as changed */
    s_resign(fx, s, 4, s_other_alpha);
    s_expect_cached_refused(s, 4, fx->pk, "v000004 changed on disk since it was verified");
    /* another key: nothing remembered under the first one counts */
    uint8_t pk2[VS_PK_BYTES], sk2[VS_SK_BYTES];
    crypto_sign_keypair(pk2, sk2);
    s_expect_cached_refused(s, 3, pk2, "not by the aggregator's key");
    vs_store_destroy(&s);

    /* reopened (a restart): the first call walks everything again and finds v4 and v5 */
    s = vs_store_open(fx->store, false);
    assert_non_null(s);
    s_expect_cached_refused(s, 5, fx->pk, "chain broken: parent_hash of v000005");
    assert_int_equal(vs_store_verify_cached(s, 3, fx->pk, NULL, NULL), 0);
    /* after a rollback the new version links to an older verified one */
    assert_int_equal(vs_store_rollback(s, 2), 0);
    s_commit_one(fx, s, 6);
    s_edit(p1, "\"round\":\t1", "\"round\":\t9");
    assert_int_equal(vs_store_verify_cached(s, 6, fx->pk, &m, NULL), 0);
    assert_int_equal(m->parent, 2);
    vs_manifest_destroy(&m);
    s_expect_refused(s, 6, fx->pk, "v000001: metadata altered");
    vs_store_destroy(&s);
}

/* A daemon's store follows what other processes did (commits, init-version, rollback)
 * through vs_store_refresh, which probes the numbers after its latest and re-reads HEAD. */
static void test_refresh_follows_other_writers(void **state)
{
    fx_t *fx = *state;
    vs_store_t *daemon = s_chain(fx, 2);
    vs_store_t *tool = vs_store_open(fx->store, false);
    assert_non_null(tool);
    s_commit_one(fx, tool, 3);
    s_commit_one(fx, tool, 4);
    assert_int_equal(vs_store_rollback(tool, 3), 0);
    assert_int_equal(vs_store_latest(daemon), 2); /* not yet seen */
    assert_int_equal(vs_store_refresh(daemon), 0);
    assert_int_equal(vs_store_latest(daemon), 4);
    assert_true(vs_store_has(daemon, 3) && vs_store_has(daemon, 4));
    assert_int_equal(vs_store_head(daemon), 3);
    assert_int_equal(vs_store_verify_cached(daemon, 4, fx->pk, NULL, NULL), 0);
    /* its own next commit goes on from what it now knows, parented on the head */
    float flat[N_FLAT];
    vs_manifest_t *m = s_manifest(5, flat, 5);
    assert_int_equal(vs_store_commit(daemon, m, flat, fx->sk), 0);
    assert_int_equal(m->version, 5);
    assert_int_equal(m->parent, 3);
    vs_manifest_destroy(&m);
    assert_int_equal(vs_store_refresh(daemon), 0); /* nothing new: unchanged */
    assert_int_equal(vs_store_latest(daemon), 5);
    vs_store_destroy(&tool);
    vs_store_destroy(&daemon);
}

static void test_transfer_install(void **state)
{
    fx_t *fx = *state;
    vs_store_t *agg = s_chain(fx, 3);
    char node_dir[128];
    snprintf(node_dir, sizeof node_dir, "%s/node", fx->dir);
    vs_store_t *node = vs_store_open(node_dir, true);
    assert_non_null(node);
    uint8_t *blob[4] = {NULL};
    size_t len[4];
    for (uint64_t v = 1; v <= 3; v++) assert_int_equal(vs_store_serialize(agg, v, &blob[v], &len[v]), 0);
    uint64_t got = 0;
    assert_int_equal(vs_store_install(node, blob[2], len[2], fx->pk, &got), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ENOTFOUND);
    assert_non_null(strstr(medfl_error_message(), "parent v000001"));
    for (uint64_t v = 1; v <= 3; v++) {
        assert_int_equal(vs_store_install(node, blob[v], len[v], fx->pk, &got), 0);
        assert_int_equal(got, v);
    }
    assert_int_equal(vs_store_install(node, blob[3], len[3], fx->pk, &got), 0); /* idempotent */
    assert_int_equal(vs_store_verify(node, 3, fx->pk, NULL, NULL), 0);
    float *a = NULL, *b = NULL;
    assert_int_equal(vs_store_load(agg, 3, NULL, &a), 0);
    assert_int_equal(vs_store_load(node, 3, NULL, &b), 0);
    assert_memory_equal(a, b, N_FLAT * sizeof(float));
    free(a);
    free(b);

    /* A flipped tensor byte in transit; a truncated blob; a wrong key. */
    uint8_t *bad = malloc(len[3]);
    memcpy(bad, blob[3], len[3]);
    bad[len[3] - 3] ^= 0x10;
    vs_store_t *node2 = NULL;
    char node2_dir[128];
    snprintf(node2_dir, sizeof node2_dir, "%s/node2", fx->dir);
    node2 = vs_store_open(node2_dir, true);
    assert_int_equal(vs_store_install(node2, blob[1], len[1], fx->pk, NULL), 0);
    assert_int_equal(vs_store_install(node2, blob[2], len[2], fx->pk, NULL), 0);
    assert_int_equal(vs_store_install(node2, bad, len[3], fx->pk, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
    assert_non_null(strstr(medfl_error_message(), "tensors altered"));
    assert_false(vs_store_has(node2, 3));
    assert_int_equal(vs_store_install(node2, blob[3], len[3] - 1, fx->pk, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EPROTO);
    assert_int_equal(vs_store_install(node2, blob[3], 10, fx->pk, NULL), -1);
    uint8_t pk2[VS_PK_BYTES], sk2[VS_SK_BYTES];
    crypto_sign_keypair(pk2, sk2);
    assert_int_equal(vs_store_install(node2, blob[3], len[3], pk2, NULL), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);

    /* The aggregator signs a different v3 (equivocation): a node holding v3 refuses it. */
    vs_store_t *agg2 = NULL;
    char agg2_dir[128];
    snprintf(agg2_dir, sizeof agg2_dir, "%s/agg2", fx->dir);
    agg2 = vs_store_open(agg2_dir, true);
    for (uint64_t v = 1; v <= 2; v++) assert_int_equal(vs_store_install(agg2, blob[v], len[v], fx->pk, NULL), 0);
    float flat[N_FLAT];
    vs_manifest_t *m = s_manifest(3, flat, 99);
    assert_int_equal(vs_store_commit(agg2, m, flat, fx->sk), 0);
    assert_int_equal(m->version, 3);
    vs_manifest_destroy(&m);
    uint8_t *other = NULL;
    size_t olen = 0;
    assert_int_equal(vs_store_serialize(agg2, 3, &other, &olen), 0);
    assert_int_equal(vs_store_install(node, other, olen, fx->pk, NULL), -1);
    assert_non_null(strstr(medfl_error_message(), "different version with this number"));
    free(other);
    free(bad);
    for (int v = 1; v <= 3; v++) free(blob[v]);
    vs_store_destroy(&agg2);
    vs_store_destroy(&node2);
    vs_store_destroy(&node);
    vs_store_destroy(&agg);
}

static void test_manifest_parse_errors(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "[]",
        "{\"format\": \"other\"}",
        "{\"format\": \"medfl-version-1\", \"version\": 0}",
        "{\"format\": \"medfl-version-1\", \"version\": 2, \"parent\": 2, \"round\": 1, \"created\": 1, \"numel\": 1}",
        "{\"format\": \"medfl-version-1\", \"version\": 1.5, \"parent\": 0, \"round\": 1, \"created\": 1, \"numel\": 1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        vs_manifest_t *m = vs_manifest_parse(bad[i], strlen(bad[i]), "case");
        assert_null(m);
        assert_true(medfl_error_code() == MEDFL_EFORMAT || medfl_error_code() == MEDFL_EUNSUPPORTED);
    }
    /* A valid manifest, then the same with a hole in the offsets, a duplicate tensor and a
     * metric given twice. */
    float flat[N_FLAT];
    vs_manifest_t *m = s_manifest(1, flat, 1);
    m->version = 1;
    char *json = vs_manifest_to_json(m);
    vs_manifest_t *back = vs_manifest_parse(json, strlen(json), "ok");
    assert_non_null(back);
    assert_int_equal(back->numel, N_FLAT);
    vs_manifest_destroy(&back);
    char *p = strstr(json, "\"offset\":\t6");
    assert_non_null(p);
    p[10] = '7';
    assert_null(vs_manifest_parse(json, strlen(json), "hole"));
    assert_non_null(strstr(medfl_error_message(), "must tile"));
    p[10] = '6';
    p = strstr(json, "\"accuracy\"");
    memcpy(p, "\"val_loss\"", 10);
    assert_null(vs_manifest_parse(json, strlen(json), "dup"));
    assert_non_null(strstr(medfl_error_message(), "given twice"));
    free(json);
    /* Builders refuse what the parser would. */
    int64_t shape[1] = {3};
    assert_int_equal(vs_manifest_add_tensor(m, "classifier.bias", 1, shape), -1);
    assert_int_equal(vs_manifest_add_tensor(m, "a/b", 1, shape), -1);
    int64_t zero[1] = {0};
    assert_int_equal(vs_manifest_add_tensor(m, "z", 1, zero), -1);
    assert_int_equal(vs_manifest_set_metric(m, "nan", 0.0 / 0.0), -1);
    assert_int_equal(vs_manifest_add_participant(m, "hospital-a", 1), -1);
    vs_manifest_destroy(&m);
}

static void test_commit_refuses_nonfinite(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = vs_store_open(fx->store, true);
    float flat[N_FLAT];
    vs_manifest_t *m = s_manifest(1, flat, 1);
    flat[13] = 1.0f / 0.0f;
    assert_int_equal(vs_store_commit(s, m, flat, fx->sk), -1);
    assert_non_null(strstr(medfl_error_message(), "classifier.weight"));
    assert_int_equal(vs_store_latest(s), 0);
    vs_manifest_destroy(&m);
    vs_store_destroy(&s);
}

static void test_peft_roundtrip(void **state)
{
    fx_t *fx = *state;
    vs_manifest_t *m = NULL;
    float *flat = NULL;
    assert_int_equal(versions_read_peft("tests/ref/fixtures/tiny_peft", "bert", &m, &flat), 0);
    /* Model layout: per layer query, value, intermediate (A then B), then the head. */
    assert_int_equal(m->n_tensors, 14);
    assert_string_equal(m->tensors[0].name, "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight");
    assert_string_equal(m->tensors[1].name, "base_model.model.encoder.layer.0.attention.self.query.lora_B.weight");
    assert_string_equal(m->tensors[2].name, "base_model.model.encoder.layer.0.attention.self.value.lora_A.weight");
    assert_string_equal(m->tensors[4].name, "base_model.model.encoder.layer.0.intermediate.dense.lora_A.weight");
    assert_string_equal(m->tensors[6].name, "base_model.model.encoder.layer.1.attention.self.query.lora_A.weight");
    assert_string_equal(m->tensors[12].name, "classifier.weight");
    assert_string_equal(m->tensors[13].name, "classifier.bias");
    assert_string_equal(vs_manifest_attr(m, "lora_r"), "4");
    assert_string_equal(vs_manifest_attr(m, "lora_alpha"), "8");

    assert_null(vs_manifest_attr(m, "labels")); /* the fixture has no label_config.json */
    assert_null(vs_manifest_attr(m, "pooling"));
    long head = vs_manifest_find_tensor(m, "classifier.weight");
    assert_true(head >= 0);
    assert_int_equal(m->tensors[head].shape[0], 3);
    /* as init-version records them from `medfl-node init-adapter`'s label_config.json */
    assert_int_equal(vs_manifest_set_attr(m, "labels", "[\"Cardiology\",\"neuro \\\"x\\\"\",\"P\u00e9diatrie\"]"), 0);
    assert_int_equal(vs_manifest_set_attr(m, "pooling", "cls"), 0);

    char out[128];
    snprintf(out, sizeof out, "%s/peft", fx->dir);
    versions_export_opts_t eo = {.prefix = "bert", .base_model = "tiny-bert", .include_head = true};
    assert_int_equal(versions_export_peft(m, flat, out, &eo), 0);
    char path[200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    safetensors_t *st = safetensors_open(path);
    assert_non_null(st);
    assert_int_equal(safetensors_count(st), 14);
    for (size_t i = 1; i < 14; i++) /* header sorted by name, as PEFT's save_file does */
        assert_true(strcmp(safetensors_at(st, i - 1)->name, safetensors_at(st, i)->name) < 0);
    const st_tensor_t *t = safetensors_find(st, "base_model.model.bert.encoder.layer.1.intermediate.dense.lora_B.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 64);
    assert_non_null(safetensors_find(st, "base_model.model.classifier.bias"));
    safetensors_destroy(&st);

    vs_manifest_t *m2 = NULL;
    float *flat2 = NULL;
    assert_int_equal(versions_read_peft(out, "bert", &m2, &flat2), 0);
    assert_int_equal(m2->numel, m->numel);
    assert_memory_equal(flat, flat2, m->numel * sizeof(float));
    assert_string_equal(vs_manifest_attr(m2, "base_model"), "tiny-bert");
    /* labels and pooling make the round trip through label_config.json, in order */
    assert_string_equal(vs_manifest_attr(m2, "labels"), vs_manifest_attr(m, "labels"));
    assert_string_equal(vs_manifest_attr(m2, "pooling"), "cls");
    vs_manifest_destroy(&m2);
    free(flat2);
    char **labels = NULL, pooling[8];
    size_t n_labels = 0;
    snprintf(path, sizeof path, "%s/label_config.json", out);
    assert_int_equal(adapter_label_config_read(path, &labels, &n_labels, pooling), 0);
    assert_int_equal(n_labels, 3);
    assert_string_equal(labels[1], "neuro \"x\"");
    assert_string_equal(labels[2], "P\xc3\xa9" "diatrie");
    assert_string_equal(pooling, "cls");
    adapter_labels_free(&labels, n_labels);
    snprintf(path, sizeof path, "%s/README.md", out);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char readme[8192];
    size_t rl = fread(readme, 1, sizeof readme - 1, f);
    fclose(f);
    readme[rl] = '\0';
    assert_non_null(strstr(readme, "**Base model**: `tiny-bert`"));
    assert_non_null(strstr(readme, "0 `Cardiology`, 1 `neuro \"x\"`, 2 `P\xc3\xa9" "diatrie`"));
    assert_non_null(strstr(readme, "**Pooling** (`medfl_pooling` in label_config.json): **cls**"));
    assert_non_null(strstr(readme, "NOT verified"));

    /* A labels attribute that is not a list of distinct names, or not one per classifier
     * row, is refused before anything is written (the message names the attribute). */
    snprintf(out, sizeof out, "%s/peft-bad", fx->dir);
    const char *bad[] = {"Cardiology", "[\"a\",\"b\"]", "[\"a\",\"b\",\"a\"]", "[\"a\",\"\",\"c\"]",
                         "[\"a\",2,\"c\"]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(vs_manifest_set_attr(m, "labels", bad[i]), 0);
        assert_int_equal(versions_export_peft(m, flat, out, &eo), -1);
        assert_true(strstr(medfl_error_message(), "labels") != NULL);
        assert_null(strstr(medfl_error_message(), "Cardiology"));
        assert_int_equal(access(out, F_OK), -1);
    }
    eo.pooling = "max";
    assert_int_equal(vs_manifest_set_attr(m, "labels", "[\"a\",\"b\",\"c\"]"), 0);
    assert_int_equal(versions_export_peft(m, flat, out, &eo), -1);
    assert_non_null(strstr(medfl_error_message(), "pooling"));

    /* Without the head; without alpha anywhere. */
    snprintf(out, sizeof out, "%s/peft-nohead", fx->dir);
    eo = (versions_export_opts_t){.prefix = "bert"};
    assert_int_equal(versions_export_peft(m, flat, out, &eo), 0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    st = safetensors_open(path);
    assert_int_equal(safetensors_count(st), 12);
    safetensors_destroy(&st);
    assert_int_equal(vs_manifest_set_attr(m, "lora_alpha", "x"), 0);
    eo.include_head = true;
    assert_int_equal(versions_export_peft(m, flat, out, &eo), -1);
    assert_non_null(strstr(medfl_error_message(), "lora_alpha"));
    vs_manifest_destroy(&m);
    free(flat);

    /* Names outside the supported forms are refused in both directions. */
    char nm[300];
    assert_int_equal(adapter_peft_name("encoder.layer.0.x", "bert", nm, sizeof nm), -1);
    assert_int_equal(adapter_medfl_name("base_model.model.roberta.encoder.layer.0.x", "bert", nm, sizeof nm), -1);
    assert_int_equal(adapter_medfl_name("base_model.model.bert.encoder.layer.0.x", "bert", nm, sizeof nm), 0);
    assert_string_equal(nm, "base_model.model.encoder.layer.0.x");
}

static void test_key_files(void **state)
{
    fx_t *fx = *state;
    char path[200];
    snprintf(path, sizeof path, "%s/identity.key", fx->dir);
    char hex[2 * VS_SK_BYTES + 1];
    vs_hex(fx->sk, VS_SK_BYTES, hex);
    FILE *f = fopen(path, "w");
    fprintf(f, "%s\n", hex);
    fclose(f);
    uint8_t sk[VS_SK_BYTES];
    chmod(path, 0644);
    assert_int_equal(versions_read_hex_key(path, sk, sizeof sk, true), -1);
    assert_int_equal(medfl_error_code(), MEDFL_EPERM);
    chmod(path, 0600);
    assert_int_equal(versions_read_hex_key(path, sk, sizeof sk, true), 0);
    assert_memory_equal(sk, fx->sk, sizeof sk);
    uint8_t pk[VS_PK_BYTES];
    vs_hex(fx->pk, VS_PK_BYTES, hex);
    assert_int_equal(versions_read_hex_key(hex, pk, sizeof pk, false), 0);
    assert_memory_equal(pk, fx->pk, sizeof pk);
    hex[5] = 'z';
    assert_int_equal(versions_read_hex_key(hex, pk, sizeof pk, false), -1);
    /* A key FILE whose path happens to be 64 characters long is read as a file. */
    char pub[2 * VS_PK_BYTES + 1];
    size_t base = strlen(fx->dir) + 1;
    assert_true(base + 4 < sizeof pub);
    snprintf(pub, sizeof pub, "%s/%0*d", fx->dir, (int)(2 * VS_PK_BYTES - base), 7);
    assert_int_equal(strlen(pub), 2 * VS_PK_BYTES);
    vs_hex(fx->pk, VS_PK_BYTES, hex);
    f = fopen(pub, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", hex);
    fclose(f);
    memset(pk, 0, sizeof pk);
    assert_int_equal(versions_read_hex_key(pub, pk, sizeof pk, false), 0);
    assert_memory_equal(pk, fx->pk, sizeof pk);
}

static void test_round_step(void **state)
{
    fx_t *fx = *state;
    vs_store_t *s = s_chain(fx, 1);
    float *x1 = NULL;
    assert_int_equal(vs_store_load(s, 1, NULL, &x1), 0);
    float sum[N_FLAT];
    for (int i = 0; i < N_FLAT; i++) sum[i] = (float)(i % 4) * 0.5f; /* S; W = 2 */
    vs_participant_t parts[2] = {{"hospital-a", 0.5}, {"hospital-c", 1.5}};
    vs_metric_t metrics[1] = {{"val_loss", 0.25}};
    strategy_params_t avg;
    strategy_params_default(&avg, STRATEGY_FEDAVG);
    uint64_t v = 0;
    assert_int_equal(versions_next(s, fx->sk, &avg, sum, N_FLAT, 2.0, 11, parts, 2, metrics, 1, &v), 0);
    assert_int_equal(v, 2);
    vs_manifest_t *m = NULL;
    float *x2 = NULL;
    assert_int_equal(vs_store_verify(s, 2, fx->pk, &m, &x2), 0);
    for (int i = 0; i < N_FLAT; i++) assert_true(x2[i] == (float)((double)x1[i] + sum[i] / 2.0));
    assert_int_equal(m->parent, 1);
    assert_int_equal(m->round, 11);
    assert_string_equal(m->participants[1].node, "hospital-c");
    assert_true(m->participants[1].weight == 1.5);
    /* the model description is carried from the head: labels and pooling included, so an
     * export of any round's version names the consortium's classes */
    assert_string_equal(vs_manifest_attr(m, "lora_alpha"), "16");
    assert_string_equal(vs_manifest_attr(m, "labels"), "[\"neg\",\"pos\"]");
    assert_string_equal(vs_manifest_attr(m, "pooling"), "mean");
    assert_int_equal(m->n_tensors, 4);
    vs_manifest_destroy(&m);

    /* FedAdam: state saved per version; after a rollback the rolled-back version's state
     * is continued, not the newest one. */
    strategy_params_t adam;
    strategy_params_default(&adam, STRATEGY_FEDADAM);
    assert_int_equal(versions_next(s, fx->sk, &adam, sum, N_FLAT, 2.0, 12, parts, 2, NULL, 0, &v), 0);
    assert_int_equal(versions_next(s, fx->sk, &adam, sum, N_FLAT, 2.0, 13, parts, 2, NULL, 0, &v), 0);
    assert_int_equal(v, 4);
    char path[256];
    strategy_state_path(fx->store, 4, path, sizeof path);
    strategy_t *st = strategy_load(path, &adam, N_FLAT);
    assert_non_null(st);
    assert_int_equal(strategy_steps(st), 2);
    strategy_destroy(&st);
    assert_int_equal(vs_store_rollback(s, 3), 0);
    assert_int_equal(versions_next(s, fx->sk, &adam, sum, N_FLAT, 2.0, 14, parts, 2, NULL, 0, &v), 0);
    assert_int_equal(v, 5);
    strategy_state_path(fx->store, 5, path, sizeof path);
    st = strategy_load(path, &adam, N_FLAT);
    assert_int_equal(strategy_steps(st), 2); /* continued from v3's state (1 step) */
    strategy_destroy(&st);
    m = vs_store_manifest(s, 5);
    assert_int_equal(m->parent, 3);
    vs_manifest_destroy(&m);

    /* Wrong size, and a tampered head, are refused before anything is written. */
    assert_int_equal(versions_next(s, fx->sk, &avg, sum, N_FLAT - 1, 2.0, 15, parts, 2, NULL, 0, &v), -1);
    char json[256];
    s_path(fx, 5, "json", json, sizeof json);
    s_edit(json, "\"round\":\t14", "\"round\":\t15");
    assert_int_equal(versions_next(s, fx->sk, &avg, sum, N_FLAT, 2.0, 15, parts, 2, NULL, 0, &v), -1);
    assert_int_equal(medfl_error_code(), MEDFL_ECRYPTO);
    assert_int_equal(vs_store_latest(s), 5);
    free(x1);
    free(x2);
    vs_store_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chain_verifies, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_tampered_tensor_byte, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_tampered_manifest_field, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_tampered_signature, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_tampered_parent_hash, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_crash_leaves_no_half_version, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_rollback_keeps_history, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_verify_cached, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_refresh_follows_other_writers, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_transfer_install, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_manifest_parse_errors, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_commit_refuses_nonfinite, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_peft_roundtrip, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_key_files, s_setup, s_teardown),
        cmocka_unit_test_setup_teardown(test_round_step, s_setup, s_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
