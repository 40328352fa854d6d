/*
 * credit.h - what each client key may still spend: its prepaid balance, held
 * against at admission and settled with the real cost, and its spending
 * budgets per day and per month. docs/billing.md has the rules and bounds.
 *
 * All amounts are integer pico-dollars (common.h): costs are exact. State is derived, never stored on
 * its own: at start the balance of a key is its journal balance (the sum of
 * its top-ups, keys.h) minus the cost of all its records in the usage log,
 * which sl_credit_replay computes; while running, settlements keep it.
 *
 * Per key slot, one cache line of atomics shared by the reactors: a hold and
 * a settlement are one fetch-and-add each on the key's own line (no lock, no
 * malloc, no system call). A key hammered from every core bounces that line
 * between cores; keys do not interfere with each other.
 *
 * Plan credits (a tier's plan_credits_usd per plan window) are spent first:
 * a request whose hold fits in what is left of the window's plan credits is
 * charged to them, else to the balance. Each request is charged wholly to
 * the source chosen at admission, and its record says which (SL_UREC_PLAN).
 *
 * Bounds. A hold reserves the request's worst cost as estimated at admission
 * (input estimate at the input price + output tokens up to max_tokens, capped,
 * at the output price), so a balance can go below zero only by what requests
 * in flight cost beyond their hold: for a request with max_tokens at most the
 * cap, by its input beyond the estimate. Budgets count settled costs: a
 * budget can be exceeded by the cost of the requests in flight when it was
 * reached.
 */
#ifndef SLUICE_CREDIT_H
#define SLUICE_CREDIT_H

#include "sluice/common.h"

#include <stdatomic.h>

#define SL_CREDIT_ID_MAX 255 /* key ids, as the usage log holds them */

enum sl_credit_refusal {
	SL_CREDIT_OK = 0,
	SL_CREDIT_BALANCE,      /* 402 insufficient_balance */
	SL_CREDIT_BUDGET_DAY,   /* 402 budget_exceeded */
	SL_CREDIT_BUDGET_MONTH, /* 402 budget_exceeded */
};

struct sl_credit_slot {
	_Atomic int64_t available;   /* balance - costs settled - holds outstanding */
	_Atomic int64_t day_spent;   /* costs settled in day day_id */
	_Atomic int64_t month_spent; /* costs settled in month month_id */
	_Atomic uint32_t day_id;     /* days since the epoch (UTC) */
	_Atomic uint32_t month_id;   /* year * 12 + month - 1 (UTC) */
	int64_t balance_seen;        /* the journal balance applied (control thread) */
	_Atomic int64_t plan_used;   /* plan credits held or spent in window plan_id */
	_Atomic uint32_t plan_id;    /* plan window index: unix ms / window length */
	char pad[64 - 52];
};

struct sl_credit {
	uint32_t slots;
	struct sl_credit_slot *slot; /* anonymous mapping: untouched slots cost nothing */
};

int sl_credit_create(uint32_t slots, struct sl_credit **out);
void sl_credit_free(struct sl_credit *c);

/* The UTC day and month of a unix time, as sl_credit_slot counts them. */
uint32_t sl_credit_day_id(uint64_t unix_ms);
uint32_t sl_credit_month_id(uint64_t unix_ms);

/* Spending of one key found in the usage log (sl_credit_replay's output). */
struct sl_credit_spent {
	int64_t total;
	int64_t day, month; /* in the day / month of `now` */
};

/* sl_credit_set_balance (control thread): the key's journal balance is
 * `balance` (at start, with what it spent per the log; on reload, spent is
 * NULL and only the change of balance since the last call is applied, so
 * a top-up adds to what is available and nothing else moves). */
void sl_credit_set_balance(struct sl_credit *c, uint32_t slot, int64_t balance,
                           const struct sl_credit_spent *spent, uint64_t now_unix_ms);

/* What a key's tier asks of sl_credit_hold. */
struct sl_credit_terms {
	bool prepaid;
	int64_t budget_day, budget_month; /* 0: none */
	int64_t plan_credits;             /* per plan window; 0: no plan */
	uint64_t plan_window_ms;
};

/* sl_credit_hold (reactors): admits a request of the key that may cost up to
 * `hold`: checks the budgets against the costs settled in the current day
 * and month; then takes the hold from the plan credits left in the current
 * window if they cover it (*plan_id = window + 1), else, when prepaid, from
 * the balance (*plan_id = 0), refusing when less than the hold is available.
 * Nothing is taken on a refusal. */
enum sl_credit_refusal sl_credit_hold(struct sl_credit *c, uint32_t slot, int64_t hold,
                                      const struct sl_credit_terms *terms, uint64_t now_unix_ms,
                                      uint32_t *plan_id);

/* sl_credit_settle (reactors): the request held `hold` (0 when it was not
 * prepaid), from the plan window plan_id - 1 (0: from the balance), and
 * cost `cost`; exactly once per admitted request. */
void sl_credit_settle(struct sl_credit *c, uint32_t slot, int64_t hold, uint32_t plan_id,
                      int64_t cost, uint64_t now_unix_ms);

/* sl_credit_plan_add (start-up, from the log's replay): a plan-paid cost
 * settled in plan window `window`. */
void sl_credit_plan_add(struct sl_credit *c, uint32_t slot, uint32_t window, int64_t cost);

/* sl_credit_plan_left: plan credits left in the window of now. */
int64_t sl_credit_plan_left(const struct sl_credit *c, uint32_t slot, int64_t plan_credits,
                            uint64_t plan_window_ms, uint64_t now_unix_ms);

/* sl_credit_cost: what tokens cost at a model's prices, in pico-dollars,
 * exactly (a price is micro-dollars per 1M tokens, i.e. pico-dollars per
 * token): no rounding, so costs add up with no drift. cache_write counts
 * every cache write, cache_write_1h those of them priced as 1-hour (at
 * price->cache_write_1h; the rest at price->cache_write). Saturates at
 * INT64_MAX. Unset or negative prices count 0. */
struct sl_model_price;
int64_t sl_credit_cost(const struct sl_model_price *price, uint64_t input, uint64_t output,
                       uint64_t cache_read, uint64_t cache_write, uint64_t cache_write_1h);

/* sl_credit_image_cost: images at the model's per-image price, pico-dollars. */
int64_t sl_credit_image_cost(const struct sl_model_price *price, uint64_t images);

/* sl_credit_available: what the key may still spend now (the balance less
 * outstanding holds). */
int64_t sl_credit_available(const struct sl_credit *c, uint32_t slot);

/* credits.state, in the data directory: what the usage log held up to
 * per-core seqs, per key, written at a clean stop (when every record is on
 * disk and no hold is out). A start loads it and replays only the records
 * after it; it stays valid after a later crash (the log only grows past it),
 * and lets an operator archive old segments. */
#define SL_CREDIT_STATE_NAME "credits.state"

struct sl_credit_snap_entry {
	char id[SL_CREDIT_ID_MAX + 1];
	int64_t total;               /* paid by the balance, all time */
	uint32_t day_id, month_id;   /* the day and month of day / month */
	int64_t day, month;          /* all costs settled in them */
	uint64_t plan_window_ms;     /* the plan window then (0: none) */
	uint32_t plan_id;            /* and its index */
	int64_t plan_used;           /* plan credits spent in it */
};

struct sl_credit_snapshot {
	uint32_t cores;
	uint64_t *next_seq; /* per core: records below are summed here */
	size_t num;
	struct sl_credit_snap_entry *e;
};

/* Writes s to path atomically (a temporary file, fsync, rename, directory
 * fsync); reads it back, checking its CRC-32C (-ENOENT: none; -EBADMSG:
 * damaged). */
int sl_credit_snapshot_write(const char *path, const struct sl_credit_snapshot *s);
int sl_credit_snapshot_read(const char *path, struct sl_credit_snapshot *s);
void sl_credit_snapshot_free(struct sl_credit_snapshot *s);

/* sl_credit_replay reads the usage log in dir and sums, per key id, the
 * costs of its records: visit(arg, key_id, spent) once per key seen
 * (spent->total counts what the balance paid; day and month all costs), and
 * plan(arg, key_id, admitted_unix_ms, cost) once per record paid from plan
 * credits (the window of its admission paid for it). With a base snapshot,
 * its sums are the starting point (plan: one call per entry, at the start
 * of its window) and only records at or past its seqs are read. Returns the
 * number of records read.
 * Returns the number of records read, or -errno; damage is skipped (the
 * start-up recovery has cut torn tails already; other damage is reported by
 * `sluice usage verify`). */
typedef void (*sl_credit_visit_fn)(void *arg, const char *key_id, const struct sl_credit_spent *s);
typedef void (*sl_credit_plan_fn)(void *arg, const char *key_id, uint64_t admitted_unix_ms,
                                  int64_t cost);
int64_t sl_credit_replay(const char *dir, uint64_t now_unix_ms,
                         const struct sl_credit_snapshot *base, sl_credit_visit_fn visit,
                         sl_credit_plan_fn plan, void *arg);

#endif
