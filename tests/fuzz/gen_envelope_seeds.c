/* Writes the seed corpus of fuzz_envelope (tests/fuzz/corpus/envelope/): one valid,
 * small message of every type, so libFuzzer starts from inputs that reach the body
 * validators instead of spending its time rediscovering the Envelope layout.
 * Build and run from the repository root after `make`:
 *   cc -std=c11 -D_GNU_SOURCE -I. -Ibuild tests/fuzz/gen_envelope_seeds.c build/libmedfl.a \
 *      -lzmq -lsodium -lprotobuf-c -lm -o /tmp/gen && /tmp/gen */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/wire.h"
static void out(const char *name, Medfl__MsgType t, uint64_t r, const char *snd, const ProtobufCMessage *b) {
    uint8_t *buf; size_t len;
    if (wire_encode(t, r, snd, b, &buf, &len)) { fprintf(stderr, "fail %s\n", name); exit(1); }
    char p[256]; snprintf(p, sizeof p, "tests/fuzz/corpus/envelope/%s", name);
    FILE *f = fopen(p, "wb"); fwrite(buf, 1, len, f); fclose(f); free(buf);
}
int main(void) {
    uint8_t k[32], sig[64], inst[16];
    memset(k, 0x11, 32); memset(sig, 0x22, 64); memset(inst, 0x33, 16);
    Medfl__Capabilities c = MEDFL__CAPABILITIES__INIT; c.device = "cpu"; c.n_records = 5000; c.software_version = "0.1.0";
    c.base_hash.data = k; c.base_hash.len = 32;
    Medfl__Hello h = MEDFL__HELLO__INIT; h.node_id = "hospital-a"; h.identity_pk.data = k; h.identity_pk.len = 32; h.capabilities = &c;
    out("hello", MEDFL__MSG_TYPE__MSG_HELLO, 0, "hospital-a", &h.base);
    Medfl__Welcome w = MEDFL__WELCOME__INIT; w.instance_id.data = inst; w.instance_id.len = 16; w.global_version = 3; w.heartbeat_ivl_ms = 1000;
    out("welcome", MEDFL__MSG_TYPE__MSG_WELCOME, 0, "aggregator", &w.base);
    Medfl__Heartbeat hb = MEDFL__HEARTBEAT__INIT; hb.sent_unix_ms = 1700000000000ull;
    out("heartbeat", MEDFL__MSG_TYPE__MSG_HEARTBEAT, 0, "hospital-a", &hb.base);
    Medfl__Error e = MEDFL__ERROR__INIT; e.code = MEDFL__ERROR_CODE__ERROR_REVOKED; e.text = "revoked";
    out("error", MEDFL__MSG_TYPE__MSG_ERROR, 0, "aggregator", &e.base);
    Medfl__Hyperparams hp = MEDFL__HYPERPARAMS__INIT; hp.lr = 1e-4; hp.local_epochs = 1; hp.batch_size = 16; hp.max_seq_len = 128;
    Medfl__DpParams dp = MEDFL__DP_PARAMS__INIT; dp.enabled = 1; dp.noise_multiplier = 1.1; dp.clip_norm = 1; dp.sample_rate = 0.01; dp.delta = 1e-5;
    Medfl__Compression cp = MEDFL__COMPRESSION__INIT; cp.scheme = MEDFL__COMPRESSION_SCHEME__COMPRESSION_QUANTIZE; cp.bits = 8; cp.seed = 42;
    char *parts[] = {"hospital-a", "hospital-b", "hospital-c"};
    Medfl__SecAggParams sa = MEDFL__SEC_AGG_PARAMS__INIT; sa.enabled = 1; sa.threshold = 2; sa.n_participants = 3; sa.participants = parts; sa.neighbours = 2;
    Medfl__RoundStart rs = MEDFL__ROUND_START__INIT; rs.round_id = 7; rs.base_version = 2; rs.base_hash.data = k; rs.base_hash.len = 32;
    rs.hyperparams = &hp; rs.dp = &dp; rs.compression = &cp; rs.secagg = &sa; rs.weight = 0.3; rs.deadline_ms = 60000;
    out("round_start", MEDFL__MSG_TYPE__MSG_ROUND_START, 7, "aggregator", &rs.base);
    Medfl__AdvertiseKeys ak = MEDFL__ADVERTISE_KEYS__INIT; ak.c_pk.data = k; ak.c_pk.len = 32; ak.s_pk.data = k; ak.s_pk.len = 32; ak.signature.data = sig; ak.signature.len = 64;
    out("advertise_keys", MEDFL__MSG_TYPE__MSG_ADVERTISE_KEYS, 7, "hospital-a", &ak.base);
    Medfl__NodeKeys nk = MEDFL__NODE_KEYS__INIT; nk.node_id = "hospital-b"; nk.c_pk = ak.c_pk; nk.s_pk = ak.s_pk; nk.signature = ak.signature;
    Medfl__NodeKeys *nks[] = {&nk, &nk};
    Medfl__KeysBroadcast kb = MEDFL__KEYS_BROADCAST__INIT; kb.n_keys = 2; kb.keys = nks;
    out("keys_broadcast", MEDFL__MSG_TYPE__MSG_KEYS_BROADCAST, 7, "aggregator", &kb.base);
    Medfl__EncryptedShare es = MEDFL__ENCRYPTED_SHARE__INIT; es.from_node = "hospital-a"; es.to_node = "hospital-b"; es.ciphertext.data = sig; es.ciphertext.len = 64;
    Medfl__EncryptedShare *ess[] = {&es};
    Medfl__ShareKeys sk = MEDFL__SHARE_KEYS__INIT; sk.n_shares = 1; sk.shares = ess;
    out("share_keys", MEDFL__MSG_TYPE__MSG_SHARE_KEYS, 7, "hospital-a", &sk.base);
    Medfl__SharesDelivery sd = MEDFL__SHARES_DELIVERY__INIT; sd.n_shares = 1; sd.shares = ess;
    out("shares_delivery", MEDFL__MSG_TYPE__MSG_SHARES_DELIVERY, 7, "aggregator", &sd.base);
    Medfl__MaskedInputHeader mi = MEDFL__MASKED_INPUT_HEADER__INIT; mi.dtype = MEDFL__TENSOR_DTYPE__DTYPE_U32; mi.n_elements = 1000; mi.n_examples = 50;
    out("masked_input", MEDFL__MSG_TYPE__MSG_MASKED_INPUT, 7, "hospital-a", &mi.base);
    char *surv[] = {"hospital-a", "hospital-b"}; char *drop[] = {"hospital-c"};
    Medfl__UnmaskRequest ur = MEDFL__UNMASK_REQUEST__INIT; ur.n_survivors = 2; ur.survivors = surv; ur.n_dropped = 1; ur.dropped = drop;
    Medfl__SurvivorSignature ss = MEDFL__SURVIVOR_SIGNATURE__INIT; ss.node_id = "hospital-a"; ss.signature.data = sig; ss.signature.len = 64;
    Medfl__SurvivorSignature *ssp[1] = {&ss}; ur.n_signatures = 1; ur.signatures = ssp;
    out("unmask_request", MEDFL__MSG_TYPE__MSG_UNMASK_REQUEST, 7, "aggregator", &ur.base);
    Medfl__ConsistencyCheck cck = MEDFL__CONSISTENCY_CHECK__INIT; cck.n_survivors = 2; cck.survivors = surv;
    out("consistency_check", MEDFL__MSG_TYPE__MSG_CONSISTENCY_CHECK, 7, "aggregator", &cck.base);
    Medfl__ConsistencySignature csg = MEDFL__CONSISTENCY_SIGNATURE__INIT; csg.signature.data = sig; csg.signature.len = 64;
    out("consistency_signature", MEDFL__MSG_TYPE__MSG_CONSISTENCY_SIGNATURE, 7, "hospital-a", &csg.base);
    Medfl__UnmaskShare us = MEDFL__UNMASK_SHARE__INIT; us.node_id = "hospital-c"; us.kind = MEDFL__SHARE_KIND__SHARE_MASK_KEY; us.share.data = sig; us.share.len = 48;
    Medfl__UnmaskShare *uss[] = {&us};
    Medfl__UnmaskResponse uresp = MEDFL__UNMASK_RESPONSE__INIT; uresp.n_shares = 1; uresp.shares = uss;
    out("unmask_response", MEDFL__MSG_TYPE__MSG_UNMASK_RESPONSE, 7, "hospital-a", &uresp.base);
    Medfl__Update u = MEDFL__UPDATE__INIT; u.base_version = 2; u.dtype = MEDFL__TENSOR_DTYPE__DTYPE_F32; u.n_elements = 4096; u.n_examples = 50; u.weight = 0.3; u.compression = &cp;
    out("update", MEDFL__MSG_TYPE__MSG_UPDATE, 7, "hospital-a", &u.base);
    Medfl__VersionAnnounce va = MEDFL__VERSION_ANNOUNCE__INIT; va.version = 3; va.parent = 2; va.hash.data = k; va.hash.len = 32; va.signature.data = sig; va.signature.len = 64;
    va.manifest.data = (uint8_t *)"{\"tensors\":[]}"; va.manifest.len = 14;
    out("version_announce", MEDFL__MSG_TYPE__MSG_VERSION_ANNOUNCE, 7, "aggregator", &va.base);
    Medfl__EvalReport er = MEDFL__EVAL_REPORT__INIT; er.version = 3; er.loss = 0.41; er.accuracy = 0.88; er.macro_f1 = 0.8; er.n = 500;
    out("eval_report", MEDFL__MSG_TYPE__MSG_EVAL_REPORT, 7, "hospital-a", &er.base);
    Medfl__Decline dc = MEDFL__DECLINE__INIT; dc.round_id = 7; dc.reason = MEDFL__DECLINE_REASON__DECLINE_PRIVACY_BUDGET; dc.text = "epsilon budget 8.0 would be exceeded";
    out("decline", MEDFL__MSG_TYPE__MSG_DECLINE, 7, "hospital-a", &dc.base);
    return 0;
}
