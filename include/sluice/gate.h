/*
 * gate.h - admission: failed-auth IP blocking, client-key authentication,
 * tier and model permissions, and the per-key and per-model rate limits.
 *
 * One sl_gate per process, shared by every reactor. The request path only
 * reads it, except for each reactor's own limiter allowances (limits.h).
 * The key table is immutable; SIGHUP builds a new one (keytab.h) and swaps
 * the pointer. The old table is freed once every reactor has passed a loop
 * turn boundary after the swap (quiescent-state reclamation: a reactor holds
 * no table pointer between turns), so readers never lock and never see a
 * freed table. A reconciler thread moves limit allowances between cores
 * every rate_limits.reconcile_ms and saves limits.state.
 */
#ifndef SLUICE_GATE_H
#define SLUICE_GATE_H

#include "sluice/common.h"
#include "sluice/config.h"
#include "sluice/keys.h"
#include "sluice/limits.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

struct sl_keytab;
struct sl_ipblock;
struct sl_reactor;

/* What authentication found; kept by the exchange (no pointers into the
 * key table: it may be swapped before the exchange ends). */
struct sl_gate_key {
	uint32_t slot;  /* limiter slot of the key */
	uint16_t tier;  /* index into config->tiers */
	bool valid;
	char id[SL_KEY_ID_LEN + 1]; /* the key's public id, for the usage log */
};

enum sl_gate_auth {
	SL_GATE_AUTH_OK = 0,
	SL_GATE_AUTH_MISSING, /* no Authorization: Bearer / x-api-key */
	SL_GATE_AUTH_UNKNOWN, /* not a key of this gateway */
	SL_GATE_AUTH_REVOKED,
	SL_GATE_AUTH_NO_TIER, /* the key's tier is not in the config */
};

struct sl_gate_snapshot; /* a key table plus its slot -> tier map */

struct sl_credit;

struct sl_gate {
	const struct sl_config *config;
	uint32_t cores;
	_Atomic(struct sl_gate_snapshot *) snap;
	_Atomic uint64_t epoch; /* bumped by each swap; reactors echo it per turn */
	struct sl_ipblock *ipblock; /* NULL: IP blocking off */
	struct sl_limiter *limiter;
	struct sl_credit *credit; /* balances and budgets, per key slot */
	uint32_t model_slot_base; /* model i's global limits use slot base + i */
	int64_t unix_offset_ms;   /* unix ms = monotonic ms + this */
	int data_dir_fd;          /* -1: no data directory (nothing persisted) */
	char *data_dir;
	/* the reconciler thread */
	pthread_t thread;
	bool thread_started;
	_Atomic bool stop;
	uint64_t saved_at_ms;
	uint64_t swept_at_ms;
};

/* sl_gate_create loads the key table from config->data_dir, creates the
 * limiter and the IP table from the config and restores limits.state. cores
 * is the number of reactors. A data directory that does not exist yet gives
 * an empty key table (with auth required, every key is refused until keys
 * are created and SIGHUP is sent). Returns 0, or -errno with a line in err. */
int sl_gate_create(const struct sl_config *config, uint32_t cores, struct sl_gate **out,
                   char *err, size_t err_len);

/* sl_gate_credit_load (before the reactors start, after the usage log's
 * recovery) derives each key's balance and budget spending: its journal
 * balance less the costs of its records in usage_dir (NULL: no log). A line
 * for the start-up log goes to msg. 0 or -errno. */
int sl_gate_credit_load(struct sl_gate *g, const char *usage_dir, char *msg, size_t msg_len);

/* sl_gate_credit_save (at a clean stop, reactors joined, every usage log
 * closed cleanly) writes credits.state: each key's spending as settled,
 * which is what the log holds below next_seq[core]. 0 or -errno. */
int sl_gate_credit_save(struct sl_gate *g, const uint64_t *next_seq, uint32_t cores);

/* sl_gate_start starts the reconciler thread. 0 or -errno. */
int sl_gate_start(struct sl_gate *g);

/* sl_gate_stop stops the reconciler and writes limits.state a last time.
 * Idempotent; call after the reactors stopped. */
void sl_gate_stop(struct sl_gate *g);

/* sl_gate_free releases everything (NULL is a no-op). */
void sl_gate_free(struct sl_gate *g);

/* sl_gate_reload_keys (control thread, on SIGHUP) loads the key store again,
 * swaps it in, waits for every reactor to pass a turn, and frees the old
 * table. Keys keep their limiter slots. Writes a one-line summary (or the
 * error: the old table stays) to msg. 0 or -errno. */
int sl_gate_reload_keys(struct sl_gate *g, struct sl_reactor *reactors, uint32_t num_reactors,
                        char *msg, size_t msg_len);

/* sl_gate_synchronize (control thread) returns once every reactor (and the
 * reconciler) has passed a loop turn after the call: whatever a reactor
 * read from a pointer swapped before the call is no longer held. */
void sl_gate_synchronize(struct sl_gate *g, struct sl_reactor *reactors, uint32_t num_reactors);

/* sl_gate_unix_ms converts a reactor's monotonic clock to unix time (with
 * the SLUICE_TEST_CLOCK_OFFSET_MS test offset applied). */
static inline uint64_t sl_gate_unix_ms(const struct sl_gate *g, uint64_t monotonic_ms)
{
	return (uint64_t)((int64_t)monotonic_ms + g->unix_offset_ms);
}

/* sl_gate_authenticate looks key[0..key_len) up in the current table (a
 * keyed hash and a constant-time compare, no lock, no allocation). */
enum sl_gate_auth sl_gate_authenticate(struct sl_gate *g, const char *key, size_t key_len,
                                       struct sl_gate_key *out);

/* sl_gate_model_allowed: may this key use model index model_index (its
 * tier's list and the key's own list both allow it)? Re-reads the key from
 * the current table, so a revocation in between is seen: returns -EACCES
 * for a model outside the lists, -ENOENT when the key is gone or revoked,
 * 0 when allowed. */
int sl_gate_model_allowed(struct sl_gate *g, const struct sl_gate_key *key, uint32_t model_index);

/* sl_gate_key_limits fills the limiter limits of a tier. */
void sl_gate_tier_limits(const struct sl_tier_config *t, struct sl_tier_limits *out);

/* Per-turn hook of each reactor: publishes that it holds no table pointer. */
static inline void sl_gate_quiescent(struct sl_gate *g, _Atomic uint64_t *seen)
{
	atomic_store_explicit(seen, atomic_load_explicit(&g->epoch, memory_order_acquire),
	                      memory_order_release);
}

#endif
