/*
 * route.h - which upstream gets an attempt: targets by priority and weight,
 * keys by headroom, and what failures teach (cooldowns, disabled keys,
 * circuits).
 *
 * A model has targets (provider + upstream model, priority, weight); a
 * provider has keys (weights). An attempt goes to the best priority group
 * that has a usable (target, key): among its targets, weighted at random;
 * within the target's provider, the key with the most headroom, weight /
 * (1 + this core's attempts in flight on it).
 *
 * Health is shared by every core the moment it is learnt, lock-free: one
 * cache line of atomics per key and per target, written only when an attempt
 * fails (or the first success after failures), read by every pick.
 *   - a key answered 429: it cools down for the Retry-After (or
 *     routing.cooldown_ms, doubling per 429 in a row, up to cooldown_max_ms);
 *   - a key answered 401/403: disabled until SIGHUP (logged);
 *   - a target failed (connect error, reset, 5xx, timeout) circuit_failures
 *     times within circuit_window_ms: its circuit opens for circuit_open_ms,
 *     then one attempt probes it (half-open); a success closes it, a failure
 *     opens it again.
 * Each core counts its own attempts in flight per key (no sharing).
 */
#ifndef SLUICE_ROUTE_H
#define SLUICE_ROUTE_H

#include "sluice/common.h"
#include "sluice/config.h"

struct sl_routing;

#define SL_ROUTE_ATTEMPTS_MAX 8

enum sl_route_outcome {
	SL_ROUTE_OK = 0,       /* a response head that is not a failure */
	SL_ROUTE_RATE_LIMITED, /* 429: the key cools down */
	SL_ROUTE_AUTH,         /* 401/403: the key is disabled */
	SL_ROUTE_FAILED,       /* refused, reset, 5xx, timeout: counts toward the circuit */
};

struct sl_route_pick {
	uint16_t target; /* index into model->targets */
	uint16_t key;    /* index into the target's provider's keys */
};

int sl_route_create(const struct sl_config *cfg, struct sl_routing **out);
void sl_route_free(struct sl_routing *rt);

/* Global index of (provider, key) for per-core in-flight counters; the
 * number of such counters a core needs. */
uint32_t sl_route_key_index(const struct sl_routing *rt, uint32_t provider, uint32_t key);
uint32_t sl_route_num_keys(const struct sl_routing *rt);

/*
 * sl_route_pick chooses the next attempt for model model_index, skipping
 * the (target, key) pairs in tried[0..num_tried). inflight is the calling
 * core's counters; rnd a random 64-bit value. commit claims a half-open
 * circuit's probe (pass false to ask whether an attempt would be possible).
 * Returns 0 with *out; -EAGAIN when every untried pair is cooling down or
 * its circuit is open (*retry_at_ms: the earliest recovery, monotonic);
 * -ENOENT when no untried usable pair exists at all (disabled keys).
 */
int sl_route_pick(struct sl_routing *rt, const uint32_t *inflight, uint32_t model_index,
                  const struct sl_route_pick *tried, unsigned num_tried, uint64_t now_ms,
                  uint64_t rnd, bool commit, struct sl_route_pick *out, uint64_t *retry_at_ms);

/* sl_route_report records how an attempt ended. retry_after_ms: the
 * provider's Retry-After for a 429 (0: none given). */
void sl_route_report(struct sl_routing *rt, uint32_t model_index, const struct sl_route_pick *p,
                     enum sl_route_outcome outcome, uint64_t retry_after_ms, uint64_t now_ms);

/* SIGHUP: disabled keys get another chance. */
void sl_route_reenable_keys(struct sl_routing *rt);

/* The jittered backoff before attempt number `attempt` (2, 3, ...). */
uint64_t sl_route_backoff_ms(const struct sl_routing_config *rc, unsigned attempt, uint64_t rnd);

#endif
