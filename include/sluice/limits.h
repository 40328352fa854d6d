/*
 * limits.h - per-key (and per-model) rate limits on per-core allowances,
 * moved between cores by a reconciler. Design and bounds: docs/limits.md.
 *
 * A slot is one client key or one model (global per-model limits); slots are
 * numbered 0..slots-1 by the caller. Each slot may limit four dimensions
 * (0 = unlimited for each):
 *   requests per window  window_ms long, aligned to unix time
 *                        (window index = now_unix_ms / window_ms);
 *   tokens per window    the same windows; a request reserves its estimate;
 *   concurrent requests  admitted and not yet finished or cancelled;
 *   requests per day     the day starts at day_reset_hour_utc
 *                        (day index = floor((now_unix_ms - hour * 3600000) / 86400000)).
 *
 * Every reactor core owns, per slot, one allowance word per dimension: a
 * packed (period id, remaining) atomic in a cache line only this core writes
 * on the request path. An admission is a few uncontended compare-and-swaps on
 * that line: no lock, no malloc, no system call. Only a request this core's
 * words cannot serve takes the units from other cores' words (a
 * compare-and-swap on their lines) before it is refused. The reconciler
 * thread moves allowance between the words (and a per-slot pool it owns)
 * toward the cores that ask for it, also by compare-and-swap, so allowance is
 * conserved: per period,
 *   sum of the cores' remaining + pool + consumed == limit.
 * Requests per window, requests per day and concurrency are therefore exact:
 * a request above the limit is never admitted, on any number of cores. Tokens
 * can overshoot only by what requests used beyond their estimate.
 *
 * Threads: sl_limiter_admit / finish / cancel on reactor `core` (each core
 * index used by one thread at a time); sl_limiter_reconcile, save and stats on
 * one reconciler thread; sl_limiter_set on one control thread at a time;
 * create, load and free with nothing else running.
 */
#ifndef SLUICE_LIMITS_H
#define SLUICE_LIMITS_H

#include "sluice/common.h"

/* Limits above this are clamped to it (remaining is a signed 40-bit field). */
#define SL_LIMIT_VALUE_MAX ((UINT64_C(1) << 39) - 1)
#define SL_LIMITER_CORES_MAX 1024
#define SL_LIMITER_SLOTS_MAX (UINT32_C(1) << 26)
#define SL_LIMITER_ID_LEN_MAX 255 /* slot id strings in the state file */
#define SL_LIMITER_STATE_NAME "limits.state"

/* The limits of one slot. 0 means unlimited, for each field. */
struct sl_tier_limits {
	uint64_t requests_per_window;
	uint64_t tokens_per_window;
	uint64_t concurrent;
	uint64_t requests_per_day;
};

struct sl_limiter_config {
	uint32_t cores;              /* reactor threads, 1..SL_LIMITER_CORES_MAX */
	uint32_t slots;              /* keys + models, 1..SL_LIMITER_SLOTS_MAX */
	uint32_t window_ms;          /* 0: 60000 */
	uint32_t reconcile_ms;       /* the caller's reconcile period, for Retry-After; 0: 50 */
	uint32_t day_reset_hour_utc; /* 0..23 */
	uint32_t active_max;         /* slots one pass visits at most, and the entries of
	                                each core's ring to the reconciler; 0: 65536 */
	/* Unit tests of the reconciler alone: no refusal slow path that takes
	 * allowance from other cores' words (see take_remote in limits.c). */
	bool local_only;
};

enum sl_limit_kind {
	SL_LIMIT_NONE = 0,   /* admitted */
	SL_LIMIT_REQUESTS,   /* requests per window */
	SL_LIMIT_TOKENS,     /* tokens per window */
	SL_LIMIT_CONCURRENT, /* concurrent requests */
	SL_LIMIT_DAILY,      /* requests per day */
	SL_LIMIT_TOO_LARGE,  /* the token estimate alone exceeds tokens_per_window:
	                        never admissible, retry_after_ms is 0 */
};

/* What an admitted request holds; handed back to sl_limiter_finish or
 * sl_limiter_cancel exactly once. Plain data: copy it into the request. */
struct sl_limit_ticket {
	uint32_t slot;
	uint32_t core;       /* the admitting core: finish and cancel credit its words */
	uint32_t window_tag; /* period ids the reservations were charged to */
	uint32_t day_tag;
	uint64_t tokens_reserved;
	uint8_t held; /* bits: what to give back (SL_LIMIT_HELD_*) */
};
#define SL_LIMIT_HELD_REQUESTS 0x1
#define SL_LIMIT_HELD_TOKENS 0x2
#define SL_LIMIT_HELD_DAILY 0x4
#define SL_LIMIT_HELD_CONCURRENT 0x8

/* The numbers for the response headers. For a dimension whose limit is 0
 * (unlimited) the limit and remaining fields are 0: send no header for it.
 * remaining is the sum of every core's word of the current period, after
 * this request's charge: exact but for allowance a reconciler pass holds
 * between taking and giving (docs/limits.md). */
struct sl_limit_report {
	uint64_t requests_limit, requests_remaining, requests_reset_unix_ms; /* window end */
	uint64_t tokens_limit, tokens_remaining;                             /* same window */
	uint64_t concurrent_limit, concurrent_remaining;
	uint64_t daily_limit, daily_remaining, daily_reset_unix_ms;
	enum sl_limit_kind refused; /* SL_LIMIT_NONE when admitted */
	uint64_t retry_after_ms;    /* when refused: real time until the refused limit admits
	                               again (round up to whole seconds for Retry-After) */
};

struct sl_limiter_stats {
	uint64_t ring_drops;      /* touches not queued (core ring full): retried on the next touch */
	uint64_t active_overflow; /* queued slots a pass skipped (active_max visited already) */
	uint64_t postponed;       /* limit changes deferred a pass (a core's clock ahead) */
	uint64_t passes;          /* reconcile passes run */
	uint32_t active_num;      /* slots the last pass visited */
};

struct sl_limiter;

/* sl_limiter_create allocates everything the limiter will ever use, from
 * cfg: per core a slots-long array of 64-byte records and a ring of
 * active_max entries to the reconciler; the reconciler's per-slot state
 * (~150 bytes) and per (slot, core) counters (16 bytes). The arrays are
 * anonymous mappings: pages of slots never touched cost no memory. Every
 * limit starts at 0 (unlimited). Returns 0, -EINVAL for a bad cfg or -ENOMEM;
 * on success *out must be released with sl_limiter_free. */
int sl_limiter_create(const struct sl_limiter_config *cfg, struct sl_limiter **out);

/* sl_limiter_free releases l. NULL is a no-op. Nothing may use l meanwhile. */
void sl_limiter_free(struct sl_limiter *l);

/* sl_limiter_set gives slot its limits (values above SL_LIMIT_VALUE_MAX are
 * clamped). Control thread only, one at a time; safe while reactors and the
 * reconciler run. A dimension set for the first time takes effect at once
 * (before reactors start this is how limits are loaded); later changes are
 * applied by the next reconciler pass, which adjusts the pool so the new limit
 * holds for the rest of the current window or day (consumption so far
 * counts). */
void sl_limiter_set(struct sl_limiter *l, uint32_t slot, const struct sl_tier_limits *lim);

/* sl_limiter_admit decides one request for slot on reactor `core`
 * (0..cores-1), at now_unix_ms. It charges one request to the window and
 * day allowances, reserves tokens_estimate tokens (0 is taken as 1) and one
 * concurrency unit, from this core's words (when they are short, from other
 * cores' words before refusing, unless local_only). Returns SL_LIMIT_NONE and
 * fills *out_ticket when admitted; the caller must then call sl_limiter_finish
 * or sl_limiter_cancel once. Otherwise returns the first limit that refused
 * (checked in the order daily, requests, tokens, concurrent; nothing stays
 * charged) and *out_ticket holds nothing. out_report may be NULL; when given
 * it is filled on both outcomes. No lock, no malloc, no system call. */
enum sl_limit_kind sl_limiter_admit(struct sl_limiter *l, uint32_t core, uint32_t slot, uint64_t tokens_estimate,
                                    uint64_t now_unix_ms, struct sl_limit_ticket *out_ticket,
                                    struct sl_limit_report *out_report);

/* sl_limiter_peek fills *out_report for slot at now_unix_ms with what is
 * left now (refused is SL_LIMIT_NONE), without charging anything, counting
 * demand or queuing the slot for the reconciler: for responses that use no
 * allowance (e.g. GET routes). Reads only; on reactor `core`. */
void sl_limiter_peek(struct sl_limiter *l, uint32_t core, uint32_t slot, uint64_t now_unix_ms,
                     struct sl_limit_report *out_report);

/* sl_limiter_finish ends an admitted request: gives its concurrency unit back
 * and corrects the token reservation with tokens_actual (UINT64_MAX: unknown,
 * keep the estimate). Unused tokens return to the window they were reserved
 * in if it is still current (else they are dropped); tokens beyond the
 * estimate are charged to the current window even when that drives its
 * remaining below 0. Call it on the admitting core (core == t->core): it
 * updates that core's single-writer counters. */
void sl_limiter_finish(struct sl_limiter *l, uint32_t core, const struct sl_limit_ticket *t, uint64_t tokens_actual,
                       uint64_t now_unix_ms);

/* sl_limiter_cancel undoes an admission (e.g. a second slot's limit then
 * refused the request, or it never reached an upstream): gives back the
 * concurrency unit, and the request, daily and token units to periods that
 * are still current. On the admitting core, like sl_limiter_finish. */
void sl_limiter_cancel(struct sl_limiter *l, uint32_t core, const struct sl_limit_ticket *t, uint64_t now_unix_ms);

/* sl_limiter_reconcile is one reconciler pass at now_unix_ms: it visits
 * the slots some core touched (admit, finish, cancel) since their last visit
 * and the slots with a pending limit change: applies the change, then moves
 * each limited dimension's free allowance toward the cores that asked for it
 * since the last visit (under contention idle cores give theirs back) and
 * empties the pool into the words. Call it from one thread every
 * cfg.reconcile_ms. Cost: O(slots touched since the last pass * cores);
 * about 0.3 us per touched slot with 8 cores. */
void sl_limiter_reconcile(struct sl_limiter *l, uint64_t now_unix_ms);

/* sl_limiter_save writes SL_LIMITER_STATE_NAME in dir_fd (temp file, fsync,
 * rename, directory fsync): for every slot visited or restored since start,
 * its id (slot_id(ctx, slot); NULL skips the slot), the window's and day's
 * index and used count as of the slot's last visit, and its last admission
 * time. Reconciler thread only; call sl_limiter_reconcile just before it.
 * Returns 0 or a negative errno. */
int sl_limiter_save(struct sl_limiter *l, int dir_fd, const char *(*slot_id)(void *ctx, uint32_t slot), void *ctx,
                    uint64_t now_unix_ms);

/* sl_limiter_load reads SL_LIMITER_STATE_NAME from dir_fd and, for each id
 * slot_of(ctx, id) maps to a slot (-1: unknown, skipped), restores the used
 * counts of periods still current at now_unix_ms: that slot then has limit -
 * used left (0 if used >= limit) for the rest of its window or day. Stale
 * periods, unlimited dimensions and a changed window_ms or reset hour are
 * ignored. Call after sl_limiter_set for every slot and before the reactors
 * and the reconciler start. Returns 0, -ENOENT (no file: a fresh start),
 * -EBADMSG (torn or corrupt: nothing restored) or another negative errno. */
int sl_limiter_load(struct sl_limiter *l, int dir_fd, int64_t (*slot_of)(void *ctx, const char *id), void *ctx,
                    uint64_t now_unix_ms);

/* sl_limiter_read_last_used calls cb(ctx, id, last_used_unix_ms) for every
 * entry of the state file in dir_fd (for `sluice keys list`); 0 means never.
 * Returns 0, -ENOENT, -EBADMSG (no callback made) or a negative errno. */
int sl_limiter_read_last_used(int dir_fd, void (*cb)(void *ctx, const char *id, uint64_t last_used_unix_ms),
                              void *ctx);

/* sl_limiter_stats copies the counters (any thread; each is read atomically,
 * the set as a whole is not a snapshot). */
void sl_limiter_stats(const struct sl_limiter *l, struct sl_limiter_stats *out);

#endif
