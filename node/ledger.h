/* The node's privacy ledger: an append-only SQLite table of every round this hospital's
 * node was asked to train (admitted or declined), with (q, σ, steps, δ) and the cumulative
 * ε, and the budget check that runs BEFORE a round trains.
 *
 * WHY a database and not a counter: the guarantee a hospital states is over every step of
 * every round it ever trained, so the history must outlive restarts, crashes and upgrades
 * (WAL, one transaction per decision, synchronous=FULL), and a privacy officer must be able
 * to audit each round afterwards. ε is always recomputed from the stored (q, σ, steps)
 * by the RDP accountant, never summed from stored ε values (ε does not compose additively;
 * RDP does). The stored ε is the audit record of what the node believed at the time. */
#ifndef MEDFL_NODE_LEDGER_H
#define MEDFL_NODE_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ledger_t ledger_t;

typedef enum {
    LEDGER_OPEN_EXISTING = 0, /* missing file → MEDFL_ENOTFOUND (the CLI reads) */
    LEDGER_CREATE = 1,        /* create on first use (the node daemon) */
} ledger_mode_t;

typedef enum { LEDGER_ADMITTED = 0, LEDGER_DECLINED = 1 } ledger_status_t;

#define LEDGER_REASON_MAX 512

typedef struct {
    int64_t seq;        /* append order, 1-based */
    int64_t round_id;   /* the aggregator's round number */
    int64_t timestamp;  /* unix seconds of the decision */
    ledger_status_t status;
    double q, sigma;
    int64_t steps;
    double delta;
    double epsilon;     /* admitted: cumulative ε after this round; declined: the ε it would
                           have reached */
    double budget;      /* the budget in force at the decision */
    char reason[LEDGER_REASON_MAX]; /* declined rounds: why; rounds without DP: that */
    bool no_dp;         /* a round contributed WITHOUT DP (ledger_record_no_dp) */
} ledger_entry_t;

/* Opens (or creates) the ledger at path for a node whose config says epsilon_budget and
 * delta. A ledger created with another δ is refused with MEDFL_ECONFIG (message explains
 * why); a file that is not a ledger → MEDFL_EDB / MEDFL_EFORMAT naming the file. The budget
 * may change between runs (a policy decision, logged); δ may not. */
ledger_t *ledger_open(const char *path, double epsilon_budget, double delta,
                      ledger_mode_t mode);
void ledger_destroy(ledger_t **self_p);

double ledger_budget(const ledger_t *self);
double ledger_delta(const ledger_t *self);
const char *ledger_path(const ledger_t *self);

/* ε the node would reach by composing the whole admitted history plus the planned round
 * (q, σ, steps), and whether that passes the budget. Writes nothing. */
int ledger_would_exceed(ledger_t *self, double q, double sigma, int64_t steps,
                        bool *exceeds, double *eps_after);

/* The decision before a round, in one transaction: recomputes the ε after the planned
 * round; within budget → appends an ADMITTED row and returns 1; over budget → appends a
 * DECLINED row with the reason (also copied to reason, for the aggregator) and returns 0;
 * -1 on error (nothing written). Rows are written before training on purpose: a crash
 * after an update left the node must not forget the spend. reason / eps_after may be NULL. */
int ledger_admit_round(ledger_t *self, int64_t round_id, double q, double sigma, int64_t steps,
                       double *eps_after, char *reason, size_t reason_size)
    __attribute__((warn_unused_result));

/* Appends a DECLINED row for a reason decided elsewhere (e.g. too few records). */
int ledger_record_declined(ledger_t *self, int64_t round_id, double q, double sigma,
                           int64_t steps, const char *reason);

/* Appends the row of a round this node contributes WITHOUT differential privacy (its policy,
 * privacy.require_dp = false, allows it), before it trains: status ADMITTED, q = 1, σ = 0,
 * ε = +inf, with the reason. No (ε, δ) bound covers a raw update, and the ledger says so:
 * from this row on the composed ε is infinite (ledger_spent), so every later DP round is
 * declined for budget; the privacy guarantee of the data cannot be restored. */
int ledger_record_no_dp(ledger_t *self, int64_t round_id, int64_t steps, const char *reason)
    __attribute__((warn_unused_result));

/* ε spent so far by the admitted rounds (0 when none) and the order that gave it. */
int ledger_spent(ledger_t *self, double *eps, double *opt_order);
/* budget − spent, floored at 0. */
int ledger_remaining(ledger_t *self, double *remaining);
/* Number of rows (admitted + declined). */
int ledger_count(ledger_t *self, int64_t *admitted, int64_t *declined);

/* The noise multiplier the planned round (q, steps) needs to fit the remaining budget
 * (tolerance 0.01 in ε, on the safe side). MEDFL_EBUDGET when nothing fits. */
int ledger_noise_for_remaining(ledger_t *self, double q, int64_t steps, double *sigma);

/* Calls fn for every row in append order; a non-zero return from fn stops and is
 * returned. */
int ledger_foreach(ledger_t *self, int (*fn)(const ledger_entry_t *entry, void *arg),
                   void *arg);

#endif
