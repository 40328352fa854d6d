/*
 * gate.c - process-wide admission state (see include/sluice/gate.h): the
 * swapped key table, the IP block table, the limiter and its reconciler
 * thread.
 */
#include "sluice/gate.h"
#include "sluice/credit.h"
#include "sluice/ipblock.h"
#include "sluice/keytab.h"
#include "sluice/reactor.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct sl_gate_snapshot {
	struct sl_keytab *keys;
	uint16_t *tier_plus1; /* by slot: tier index + 1, 0 = tier not configured */
	uint32_t num_slots;   /* entries of tier_plus1 */
};

static uint64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void sl_gate_tier_limits(const struct sl_tier_config *t, struct sl_tier_limits *out)
{
	out->requests_per_window = t->requests_per_minute;
	out->tokens_per_window = t->tokens_per_minute;
	out->concurrent = t->concurrent;
	out->requests_per_day = t->requests_per_day;
}

static void snapshot_free(struct sl_gate_snapshot *s)
{
	if (!s)
		return;
	sl_keytab_free(s->keys);
	free(s->tier_plus1);
	free(s);
}

/* Loads the key store into a new snapshot (slots kept from prev) and gives
 * every key its tier's limits in the limiter. */
static int snapshot_load(struct sl_gate *g, const struct sl_gate_snapshot *prev,
                         struct sl_gate_snapshot **out, uint32_t *out_unknown_tiers, char *err,
                         size_t err_len)
{
	const struct sl_config *cfg = g->config;
	struct sl_gate_snapshot *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	struct sl_keys_load_report report;
	int rc = sl_keytab_load(cfg->data_dir, cfg->rate.keys_max, prev ? prev->keys : NULL, &s->keys,
	                        &report, err, err_len);
	if (rc) {
		free(s);
		return rc;
	}
	uint32_t n = sl_keytab_num(s->keys), max_slot = 0;
	for (uint32_t i = 0; i < n; i++)
		max_slot = SL_MAX(max_slot, sl_keytab_at(s->keys, i)->slot);
	s->num_slots = n ? max_slot + 1 : 0;
	s->tier_plus1 = calloc(s->num_slots ? s->num_slots : 1, sizeof *s->tier_plus1);
	if (!s->tier_plus1) {
		snapshot_free(s);
		return -ENOMEM;
	}
	*out_unknown_tiers = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct sl_keytab_entry *e = sl_keytab_at(s->keys, i);
		const struct sl_tier_config *t = sl_config_find_tier(cfg, e->tier);
		if (!t) {
			if (e->status == SL_KEY_ACTIVE)
				(*out_unknown_tiers)++;
			continue;
		}
		s->tier_plus1[e->slot] = (uint16_t)(t - cfg->tiers + 1);
		struct sl_tier_limits lim;
		sl_gate_tier_limits(t, &lim);
		sl_limiter_set(g->limiter, e->slot, &lim);
	}
	*out = s;
	return 0;
}

/* --- the reconciler thread ------------------------------------------------------- */

static const char *slot_id(void *ctx, uint32_t slot)
{
	struct sl_gate *g = ctx;
	static __thread char model_id[80];
	if (slot >= g->model_slot_base) {
		uint32_t m = slot - g->model_slot_base;
		if (m >= g->config->num_models)
			return NULL;
		snprintf(model_id, sizeof model_id, "model:%s", g->config->models[m].id);
		return model_id;
	}
	/* the reconciler runs while a reload may swap: it reads the table the
	 * reload keeps alive until the reconciler is quiescent too (it is
	 * joined to the epoch through recon_seen) */
	struct sl_gate_snapshot *s = atomic_load_explicit(&g->snap, memory_order_acquire);
	const struct sl_keytab_entry *e = sl_keytab_by_slot(s->keys, slot);
	return e ? e->id : NULL;
}

static int64_t slot_of(void *ctx, const char *id)
{
	struct sl_gate *g = ctx;
	if (strncmp(id, "model:", 6) == 0) {
		const struct sl_model_config *m = sl_config_find_model(g->config, id + 6, strlen(id + 6));
		return m ? (int64_t)(g->model_slot_base + (uint32_t)(m - g->config->models)) : -1;
	}
	struct sl_gate_snapshot *s = atomic_load_explicit(&g->snap, memory_order_acquire);
	const struct sl_keytab_entry *e = sl_keytab_by_id(s->keys, id);
	return e ? (int64_t)e->slot : -1;
}

/* the reconciler thread's turn boundary, like a reactor's gate_seen */
static _Atomic uint64_t recon_seen;

static void save_state(struct sl_gate *g, uint64_t unix_ms)
{
	if (g->data_dir_fd < 0)
		return;
	int rc = sl_limiter_save(g->limiter, g->data_dir_fd, slot_id, g, unix_ms);
	if (rc)
		fprintf(stderr, "sluice: cannot write %s/limits.state: %s\n", g->data_dir,
		        strerror(-rc));
}

static void *reconciler_main(void *arg)
{
	struct sl_gate *g = arg;
	const struct sl_rate_config *rc = &g->config->rate;
	uint64_t period_ns = (uint64_t)rc->reconcile_ms * 1000000;
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (!atomic_load_explicit(&g->stop, memory_order_acquire)) {
		next.tv_nsec += (long)(period_ns % 1000000000);
		next.tv_sec += (time_t)(period_ns / 1000000000) + next.tv_nsec / 1000000000;
		next.tv_nsec %= 1000000000;
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR)
			;
		uint64_t mono = clock_ms(CLOCK_MONOTONIC);
		uint64_t unix_ms = sl_gate_unix_ms(g, mono);
		sl_limiter_reconcile(g->limiter, unix_ms);
		if (mono - g->saved_at_ms >= rc->state_save_ms) {
			save_state(g, unix_ms);
			g->saved_at_ms = mono;
		}
		/* forget addresses that stopped failing, so the request path's
		 * empty-table fast path comes back */
		if (g->ipblock && mono - g->swept_at_ms >= 1000) {
			sl_ipblock_sweep(g->ipblock, mono, g->config->auth.ip_table_entries / 16 + 16);
			g->swept_at_ms = mono;
		}
		sl_gate_quiescent(g, &recon_seen);
		/* a turn far behind schedule (a stopped VM) does not catch up in
		 * a burst */
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > next.tv_sec + 1)
			next = now;
	}
	return NULL;
}

/* --- life cycle ------------------------------------------------------------------- */

int sl_gate_create(const struct sl_config *config, uint32_t cores, struct sl_gate **out,
                   char *err, size_t err_len)
{
	*out = NULL;
	struct sl_gate *g = calloc(1, sizeof *g);
	if (!g)
		return -ENOMEM;
	g->config = config;
	g->cores = cores;
	g->data_dir_fd = -1;
	g->model_slot_base = config->rate.keys_max;
	int64_t offset = 0;
	const char *test_offset = getenv("SLUICE_TEST_CLOCK_OFFSET_MS");
	if (test_offset)
		offset = strtoll(test_offset, NULL, 10);
	g->unix_offset_ms = (int64_t)clock_ms(CLOCK_REALTIME) - (int64_t)clock_ms(CLOCK_MONOTONIC) +
	                    offset;
	if (!(g->data_dir = strdup(config->data_dir))) {
		free(g);
		return -ENOMEM;
	}

	struct sl_limiter_config lc = {
		.cores = cores,
		.slots = config->rate.keys_max + config->num_models,
		.window_ms = config->rate.window_ms,
		.reconcile_ms = config->rate.reconcile_ms,
		.day_reset_hour_utc = config->rate.daily_reset_hour_utc,
		.active_max = config->rate.active_keys_max,
	};
	int rc = sl_limiter_create(&lc, &g->limiter);
	if (rc) {
		snprintf(err, err_len, "rate limiter: %s", strerror(-rc));
		sl_gate_free(g);
		return rc;
	}
	if ((rc = sl_credit_create(config->rate.keys_max, &g->credit))) {
		snprintf(err, err_len, "balances: %s", strerror(-rc));
		sl_gate_free(g);
		return rc;
	}
	for (uint32_t i = 0; i < config->num_models; i++) {
		const struct sl_model_limits *ml = &config->models[i].limits;
		if (!ml->set)
			continue;
		struct sl_tier_limits lim = { .requests_per_window = ml->requests_per_minute,
			                      .tokens_per_window = ml->tokens_per_minute,
			                      .concurrent = ml->concurrent };
		sl_limiter_set(g->limiter, g->model_slot_base + i, &lim);
	}
	if (config->auth.required && config->auth.ip_block_failures) {
		g->ipblock = sl_ipblock_create(config->auth.ip_table_entries,
		                               config->auth.ip_block_failures,
		                               config->auth.ip_block_seconds * 1000u);
		if (!g->ipblock) {
			snprintf(err, err_len, "IP block table: out of memory");
			sl_gate_free(g);
			return -ENOMEM;
		}
	}

	struct sl_gate_snapshot *s = NULL;
	uint32_t unknown = 0;
	if (config->auth.required) {
		rc = snapshot_load(g, NULL, &s, &unknown, err, err_len);
		if (rc) {
			sl_gate_free(g);
			return rc;
		}
		if (unknown)
			fprintf(stderr,
			        "sluice: warning: %u active key%s name a tier the config does not "
			        "define; requests with them are refused\n",
			        unknown, unknown == 1 ? "" : "s");
		g->data_dir_fd = open(config->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	} else {
		s = calloc(1, sizeof *s);
		if (!s) {
			sl_gate_free(g);
			return -ENOMEM;
		}
	}
	atomic_store(&g->snap, s);
	if (g->data_dir_fd >= 0) {
		uint64_t unix_ms = sl_gate_unix_ms(g, clock_ms(CLOCK_MONOTONIC));
		rc = sl_limiter_load(g->limiter, g->data_dir_fd, slot_of, g, unix_ms);
		if (rc && rc != -ENOENT)
			fprintf(stderr, "sluice: warning: %s/limits.state: %s; limits start fresh\n",
			        config->data_dir, rc == -EBADMSG ? "corrupt" : strerror(-rc));
	}
	*out = g;
	return 0;
}

int sl_gate_start(struct sl_gate *g)
{
	g->saved_at_ms = clock_ms(CLOCK_MONOTONIC);
	int rc = pthread_create(&g->thread, NULL, reconciler_main, g);
	if (rc)
		return -rc;
	g->thread_started = true;
	return 0;
}

void sl_gate_stop(struct sl_gate *g)
{
	if (!g || !g->thread_started)
		return;
	atomic_store_explicit(&g->stop, true, memory_order_release);
	pthread_join(g->thread, NULL);
	g->thread_started = false;
	save_state(g, sl_gate_unix_ms(g, clock_ms(CLOCK_MONOTONIC)));
}

void sl_gate_free(struct sl_gate *g)
{
	if (!g)
		return;
	sl_gate_stop(g);
	snapshot_free(atomic_load(&g->snap));
	sl_limiter_free(g->limiter);
	sl_credit_free(g->credit);
	sl_ipblock_free(g->ipblock);
	if (g->data_dir_fd >= 0)
		close(g->data_dir_fd);
	free(g->data_dir);
	free(g);
}

void sl_gate_synchronize(struct sl_gate *g, struct sl_reactor *reactors, uint32_t num_reactors)
{
	uint64_t epoch = atomic_fetch_add(&g->epoch, 1) + 1;
	/* wake every reactor so an idle one passes a turn; then wait for all */
	for (uint32_t i = 0; i < num_reactors; i++) {
		struct sl_msg m = { .type = SL_MSG_WAKE };
		(void)sl_reactor_post(&reactors[i], &m);
	}
	for (unsigned spins = 0;; spins++) {
		bool all = atomic_load(&recon_seen) >= epoch || !g->thread_started;
		for (uint32_t i = 0; all && i < num_reactors; i++)
			all = atomic_load_explicit(&reactors[i].gate_seen, memory_order_acquire) >=
			      epoch;
		if (all)
			break;
		if (spins % 1000 == 999) /* a mailbox was full: wake again */
			for (uint32_t i = 0; i < num_reactors; i++) {
				struct sl_msg m = { .type = SL_MSG_WAKE };
				(void)sl_reactor_post(&reactors[i], &m);
			}
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
}

int sl_gate_reload_keys(struct sl_gate *g, struct sl_reactor *reactors, uint32_t num_reactors,
                        char *msg, size_t msg_len)
{
	if (!g->config->auth.required) {
		snprintf(msg, msg_len, "auth mode is \"none\": no keys to reload");
		return 0;
	}
	struct sl_gate_snapshot *old = atomic_load(&g->snap), *s;
	uint32_t unknown = 0;
	char err[256] = "";
	int rc = snapshot_load(g, old, &s, &unknown, err, sizeof err);
	if (rc) {
		snprintf(msg, msg_len, "key reload failed, keeping the old keys: %s", err);
		return rc;
	}
	atomic_store_explicit(&g->snap, s, memory_order_release);
	if (g->data_dir_fd < 0)
		g->data_dir_fd = open(g->config->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	sl_gate_synchronize(g, reactors, num_reactors);
	snapshot_free(old);
	uint32_t n = sl_keytab_num(s->keys), active = 0;
	/* top-ups: each key's balance change since the last load */
	for (uint32_t i = 0; i < n; i++) {
		const struct sl_keytab_entry *e = sl_keytab_at(s->keys, i);
		if (e->slot < g->credit->slots)
			sl_credit_set_balance(g->credit, e->slot, e->balance_micro_usd * SL_PICO_PER_MICRO, NULL,
			                      sl_gate_unix_ms(g, clock_ms(CLOCK_MONOTONIC)));
	}
	for (uint32_t i = 0; i < n; i++)
		active += sl_keytab_at(s->keys, i)->status == SL_KEY_ACTIVE;
	snprintf(msg, msg_len, "keys reloaded: %u keys (%u active)%s", n, active,
	         unknown ? "; some active keys name an unknown tier" : "");
	return 0;
}

struct credit_load {
	struct sl_gate *g;
	uint64_t now;
	uint8_t *seen; /* per key slot: given its spending already */
};

static void credit_load_visit(void *arg, const char *key_id, const struct sl_credit_spent *spent)
{
	struct credit_load *cl = arg;
	struct sl_gate_snapshot *s = atomic_load(&cl->g->snap);
	const struct sl_keytab_entry *e = s->keys ? sl_keytab_by_id(s->keys, key_id) : NULL;
	if (!e || e->slot >= cl->g->credit->slots)
		return; /* a key no longer in the store */
	sl_credit_set_balance(cl->g->credit, e->slot, e->balance_micro_usd * SL_PICO_PER_MICRO, spent,
	                      cl->now);
	cl->seen[e->slot / 8] |= (uint8_t)(1u << (e->slot % 8));
}

static void credit_load_plan(void *arg, const char *key_id, uint64_t admitted_unix_ms, int64_t cost)
{
	struct credit_load *cl = arg;
	struct sl_gate_snapshot *s = atomic_load(&cl->g->snap);
	const struct sl_keytab_entry *e = s->keys ? sl_keytab_by_id(s->keys, key_id) : NULL;
	if (!e || e->slot >= cl->g->credit->slots || e->slot >= s->num_slots || !s->tier_plus1[e->slot])
		return;
	const struct sl_tier_config *t = &cl->g->config->tiers[s->tier_plus1[e->slot] - 1];
	uint64_t window_ms = (uint64_t)t->plan_window_hours * 3600000;
	if (!t->plan_credits_pico_usd || !window_ms)
		return;
	uint32_t window = (uint32_t)(admitted_unix_ms / window_ms);
	if (window == (uint32_t)(cl->now / window_ms)) /* only this window's still counts */
		sl_credit_plan_add(cl->g->credit, e->slot, window, cost);
}

static void state_path(const struct sl_gate *g, char *out, size_t len)
{
	snprintf(out, len, "%s/%s", g->config->data_dir, SL_CREDIT_STATE_NAME);
}

int sl_gate_credit_load(struct sl_gate *g, const char *usage_dir, char *msg, size_t msg_len)
{
	struct credit_load cl = { .g = g, .now = sl_gate_unix_ms(g, clock_ms(CLOCK_MONOTONIC)) };
	cl.seen = calloc((g->credit->slots + 7) / 8, 1);
	if (!cl.seen)
		return -ENOMEM;
	/* credits.state, if a clean stop left one, spares reading the log
	 * it summarises */
	char path[PATH_MAX];
	state_path(g, path, sizeof path);
	struct sl_credit_snapshot base;
	int src = usage_dir ? sl_credit_snapshot_read(path, &base) : -ENOENT;
	if (src != 0 && src != -ENOENT)
		fprintf(stderr, "sluice: %s: %s: replaying the whole usage log\n", path,
		        src == -EBADMSG ? "damaged" : strerror(-src));
	int64_t records = usage_dir ? sl_credit_replay(usage_dir, cl.now, src == 0 ? &base : NULL,
	                                               credit_load_visit, credit_load_plan, &cl)
	                            : 0;
	size_t base_keys = src == 0 ? base.num : 0;
	if (src == 0)
		sl_credit_snapshot_free(&base);
	if (records < 0) {
		free(cl.seen);
		snprintf(msg, msg_len, "cannot replay the usage log: %s", strerror((int)-records));
		return (int)records;
	}
	/* keys with no cost in the log have their whole balance */
	struct sl_gate_snapshot *s = atomic_load(&g->snap);
	uint32_t n = s->keys ? sl_keytab_num(s->keys) : 0;
	static const struct sl_credit_spent none;
	for (uint32_t i = 0; i < n; i++) {
		const struct sl_keytab_entry *e = sl_keytab_at(s->keys, i);
		if (e->slot < g->credit->slots && !(cl.seen[e->slot / 8] & (1u << (e->slot % 8))))
			sl_credit_set_balance(g->credit, e->slot, e->balance_micro_usd * SL_PICO_PER_MICRO,
			                      &none, cl.now);
	}
	free(cl.seen);
	snprintf(msg, msg_len, "balances: %s%lld usage records replayed",
	         src == 0 ? "credits.state + " : "", (long long)records);
	(void)base_keys;
	return 0;
}

int sl_gate_credit_save(struct sl_gate *g, const uint64_t *next_seq, uint32_t cores)
{
	struct sl_gate_snapshot *s = atomic_load(&g->snap);
	uint32_t n = s->keys ? sl_keytab_num(s->keys) : 0;
	struct sl_credit_snapshot snap = { .cores = cores, .next_seq = (uint64_t *)next_seq };
	snap.e = calloc(n ? n : 1, sizeof *snap.e);
	if (!snap.e)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		const struct sl_keytab_entry *e = sl_keytab_at(s->keys, i);
		if (e->slot >= g->credit->slots)
			continue;
		const struct sl_credit_slot *cs = &g->credit->slot[e->slot];
		struct sl_credit_snap_entry *o = &snap.e[snap.num++];
		snprintf(o->id, sizeof o->id, "%s", e->id);
		/* no hold is out at a clean stop: what is not available was spent */
		o->total = cs->balance_seen - atomic_load(&cs->available);
		o->day_id = atomic_load(&cs->day_id);
		o->day = atomic_load(&cs->day_spent);
		o->month_id = atomic_load(&cs->month_id);
		o->month = atomic_load(&cs->month_spent);
		uint16_t t = e->slot < s->num_slots ? s->tier_plus1[e->slot] : 0;
		if (t && g->config->tiers[t - 1].plan_credits_pico_usd) {
			o->plan_window_ms = (uint64_t)g->config->tiers[t - 1].plan_window_hours * 3600000;
			o->plan_id = atomic_load(&cs->plan_id);
			o->plan_used = atomic_load(&cs->plan_used);
		}
	}
	char path[PATH_MAX];
	state_path(g, path, sizeof path);
	int rc = sl_credit_snapshot_write(path, &snap);
	free(snap.e);
	return rc;
}

/* --- the request path ----------------------------------------------------------------- */

enum sl_gate_auth sl_gate_authenticate(struct sl_gate *g, const char *key, size_t key_len,
                                       struct sl_gate_key *out)
{
	struct sl_gate_snapshot *s = atomic_load_explicit(&g->snap, memory_order_acquire);
	out->valid = false;
	if (key_len == 0)
		return SL_GATE_AUTH_MISSING;
	const struct sl_keytab_entry *e = s->keys ? sl_keytab_lookup(s->keys, key, key_len) : NULL;
	if (!e)
		return SL_GATE_AUTH_UNKNOWN;
	if (e->status != SL_KEY_ACTIVE)
		return SL_GATE_AUTH_REVOKED;
	uint16_t t = e->slot < s->num_slots ? s->tier_plus1[e->slot] : 0;
	if (!t)
		return SL_GATE_AUTH_NO_TIER;
	out->slot = e->slot;
	out->tier = (uint16_t)(t - 1);
	memcpy(out->id, e->id, sizeof out->id);
	out->valid = true;
	return SL_GATE_AUTH_OK;
}

int sl_gate_model_allowed(struct sl_gate *g, const struct sl_gate_key *key, uint32_t model_index)
{
	const struct sl_config *cfg = g->config;
	struct sl_gate_snapshot *s = atomic_load_explicit(&g->snap, memory_order_acquire);
	const struct sl_keytab_entry *e = s->keys ? sl_keytab_by_slot(s->keys, key->slot) : NULL;
	if (!e || e->status != SL_KEY_ACTIVE)
		return -ENOENT;
	const struct sl_tier_config *t = &cfg->tiers[key->tier];
	if (t->model_allowed && !t->model_allowed[model_index])
		return -EACCES;
	const char *id = cfg->models[model_index].id;
	if (!sl_keytab_model_allowed(e, id, strlen(id)))
		return -EACCES;
	return 0;
}
