/*
 * route.c - target and key selection, cooldowns, disabled keys, circuits
 * (see route.h).
 */
#include "sluice/route.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One cache line each: written on failures by any core, read by all. */
struct key_health {
	_Atomic uint64_t cooldown_until_ms; /* monotonic; 0: usable */
	_Atomic uint32_t strikes;           /* 429s in a row without Retry-After */
	_Atomic uint32_t disabled;          /* 401/403 seen: until SIGHUP */
	char pad[48];
};

struct target_health {
	_Atomic uint64_t window_start_ms;
	_Atomic uint64_t open_until_ms; /* 0: closed */
	_Atomic uint64_t probe_until_ms; /* half-open: a probe is out until then */
	_Atomic uint32_t failures;       /* in the current window */
	char pad[36];
};

_Static_assert(sizeof(struct key_health) == 64, "one cache line");
_Static_assert(sizeof(struct target_health) == 64, "one cache line");

struct sl_routing {
	const struct sl_config *cfg;
	struct key_health *keys;
	uint32_t *key_base; /* per provider: its first key's index */
	uint32_t num_keys;
	struct target_health *targets;
	uint32_t *target_base; /* per model: its first target's index */
};

int sl_route_create(const struct sl_config *cfg, struct sl_routing **out)
{
	struct sl_routing *rt = calloc(1, sizeof *rt);
	if (!rt)
		return -ENOMEM;
	rt->cfg = cfg;
	rt->key_base = calloc(cfg->num_providers + 1, sizeof *rt->key_base);
	rt->target_base = calloc(cfg->num_models + 1, sizeof *rt->target_base);
	uint32_t nk = 0, nt = 0;
	for (uint32_t i = 0; rt->key_base && i < cfg->num_providers; i++) {
		rt->key_base[i] = nk;
		nk += cfg->providers[i].num_keys;
	}
	for (uint32_t i = 0; rt->target_base && i < cfg->num_models; i++) {
		rt->target_base[i] = nt;
		nt += cfg->models[i].num_targets;
	}
	rt->num_keys = nk;
	rt->keys = aligned_alloc(64, (nk + 1) * sizeof *rt->keys);
	rt->targets = aligned_alloc(64, (nt + 1) * sizeof *rt->targets);
	if (!rt->key_base || !rt->target_base || !rt->keys || !rt->targets) {
		sl_route_free(rt);
		return -ENOMEM;
	}
	memset(rt->keys, 0, (nk + 1) * sizeof *rt->keys);
	memset(rt->targets, 0, (nt + 1) * sizeof *rt->targets);
	*out = rt;
	return 0;
}

void sl_route_free(struct sl_routing *rt)
{
	if (!rt)
		return;
	free(rt->keys);
	free(rt->targets);
	free(rt->key_base);
	free(rt->target_base);
	free(rt);
}

uint32_t sl_route_key_index(const struct sl_routing *rt, uint32_t provider, uint32_t key)
{
	return rt->key_base[provider] + key;
}

uint32_t sl_route_num_keys(const struct sl_routing *rt)
{
	return rt->num_keys;
}

static bool tried_pair(const struct sl_route_pick *tried, unsigned n, uint32_t t, uint32_t k)
{
	for (unsigned i = 0; i < n; i++)
		if (tried[i].target == t && tried[i].key == k)
			return true;
	return false;
}

/* Can target th take an attempt now? Sets *until to when it could, if not. */
static bool circuit_allows(struct target_health *th, uint64_t now, bool commit, uint64_t open_ms,
                           uint64_t *until)
{
	uint64_t open = atomic_load_explicit(&th->open_until_ms, memory_order_relaxed);
	if (open == 0)
		return true;
	if (now < open) {
		*until = open;
		return false;
	}
	/* half-open: one probe at a time */
	uint64_t probe = atomic_load_explicit(&th->probe_until_ms, memory_order_relaxed);
	if (probe > now) {
		*until = probe;
		return false;
	}
	if (!commit)
		return true;
	if (atomic_compare_exchange_strong(&th->probe_until_ms, &probe, now + open_ms))
		return true;
	*until = now + 1;
	return false;
}

int sl_route_pick(struct sl_routing *rt, const uint32_t *inflight, uint32_t model_index,
                  const struct sl_route_pick *tried, unsigned num_tried, uint64_t now_ms,
                  uint64_t rnd, bool commit, struct sl_route_pick *out, uint64_t *retry_at_ms)
{
	const struct sl_config *cfg = rt->cfg;
	const struct sl_model_config *m = &cfg->models[model_index];
	struct target_health *ths = &rt->targets[rt->target_base[model_index]];
	uint64_t earliest = UINT64_MAX;
	bool any_waiting = false;
	/* the common case, one target with one key, healthy: no search */
	if (m->num_targets == 1 && cfg->providers[m->targets[0].provider].num_keys == 1 &&
	    !tried_pair(tried, num_tried, 0, 0)) {
		struct key_health *kh = &rt->keys[rt->key_base[m->targets[0].provider]];
		uint64_t until = 0;
		if (!atomic_load_explicit(&kh->disabled, memory_order_relaxed) &&
		    atomic_load_explicit(&kh->cooldown_until_ms, memory_order_relaxed) <= now_ms &&
		    circuit_allows(&ths[0], now_ms, commit, cfg->routing.circuit_open_ms, &until)) {
			out->target = 0;
			out->key = 0;
			return 0;
		}
	}
	/* priorities ascending: the lowest value not yet done */
	uint32_t done_below = 0;
	for (;;) {
		uint32_t prio = UINT32_MAX;
		for (uint32_t t = 0; t < m->num_targets; t++)
			if (m->targets[t].priority >= done_below && m->targets[t].priority < prio)
				prio = m->targets[t].priority;
		if (prio == UINT32_MAX)
			break;
		done_below = prio + 1;

		/* this group's usable targets, each with its best key */
		uint64_t total_weight = 0;
		struct {
			uint16_t t, k;
			uint32_t w;
		} cand[64];
		unsigned nc = 0;
		for (uint32_t t = 0; t < m->num_targets && nc < 64; t++) {
			const struct sl_model_target *tg = &m->targets[t];
			if (tg->priority != prio)
				continue;
			const struct sl_provider_config *p = &cfg->providers[tg->provider];
			struct key_health *khs = &rt->keys[rt->key_base[tg->provider]];
			const uint32_t *inf = inflight ? inflight + rt->key_base[tg->provider] : NULL;
			int best = -1;
			uint64_t best_num = 0, best_den = 1;
			bool target_waiting = false;
			uint64_t target_until = UINT64_MAX;
			for (uint32_t k = 0; k < p->num_keys; k++) {
				if (tried_pair(tried, num_tried, t, k))
					continue;
				if (atomic_load_explicit(&khs[k].disabled, memory_order_relaxed))
					continue;
				uint64_t cool = atomic_load_explicit(&khs[k].cooldown_until_ms,
				                                     memory_order_relaxed);
				if (cool > now_ms) {
					target_waiting = true;
					target_until = SL_MIN(target_until, cool);
					continue;
				}
				/* headroom: weight / (1 + in flight here); compare
				 * num/den without division */
				uint64_t num = p->keys[k].weight, den = 1 + (inf ? inf[k] : 0);
				if (best < 0 || num * best_den > best_num * den) {
					best = (int)k;
					best_num = num;
					best_den = den;
				}
			}
			if (best >= 0) {
				uint64_t until = 0;
				if (!circuit_allows(&ths[t], now_ms, false, cfg->routing.circuit_open_ms,
				                    &until)) {
					any_waiting = true;
					earliest = SL_MIN(earliest, until);
					continue;
				}
				cand[nc].t = (uint16_t)t;
				cand[nc].k = (uint16_t)best;
				cand[nc].w = tg->weight ? tg->weight : 1;
				total_weight += cand[nc].w;
				nc++;
			} else if (target_waiting) {
				any_waiting = true;
				earliest = SL_MIN(earliest, target_until);
			}
		}
		/* weighted at random; a half-open probe lost to another core
		 * drops that candidate and draws again */
		while (nc > 0) {
			uint64_t x = total_weight ? rnd % total_weight : 0;
			unsigned i = 0;
			while (i + 1 < nc && x >= cand[i].w) {
				x -= cand[i].w;
				i++;
			}
			uint64_t until = 0;
			if (!commit || circuit_allows(&ths[cand[i].t], now_ms, true,
			                              cfg->routing.circuit_open_ms, &until)) {
				out->target = cand[i].t;
				out->key = cand[i].k;
				return 0;
			}
			any_waiting = true;
			earliest = SL_MIN(earliest, until);
			total_weight -= cand[i].w;
			cand[i] = cand[--nc];
			rnd = rnd * 6364136223846793005ull + 1442695040888963407ull;
		}
	}
	if (any_waiting) {
		*retry_at_ms = earliest;
		return -EAGAIN;
	}
	return -ENOENT;
}

void sl_route_report(struct sl_routing *rt, uint32_t model_index, const struct sl_route_pick *p,
                     enum sl_route_outcome outcome, uint64_t retry_after_ms, uint64_t now_ms)
{
	const struct sl_config *cfg = rt->cfg;
	const struct sl_routing_config *rc = &cfg->routing;
	const struct sl_model_target *tg = &cfg->models[model_index].targets[p->target];
	struct key_health *kh = &rt->keys[rt->key_base[tg->provider] + p->key];
	struct target_health *th = &rt->targets[rt->target_base[model_index] + p->target];
	switch (outcome) {
	case SL_ROUTE_OK:
		/* Written only when something was wrong: a healthy path does
		 * not touch the shared lines. */
		if (atomic_load_explicit(&kh->strikes, memory_order_relaxed))
			atomic_store_explicit(&kh->strikes, 0, memory_order_relaxed);
		if (atomic_load_explicit(&th->failures, memory_order_relaxed))
			atomic_store_explicit(&th->failures, 0, memory_order_relaxed);
		if (atomic_load_explicit(&th->open_until_ms, memory_order_relaxed)) {
			atomic_store_explicit(&th->open_until_ms, 0, memory_order_relaxed);
			atomic_store_explicit(&th->probe_until_ms, 0, memory_order_relaxed);
			fprintf(stderr, "sluice: model %s: target %s/%s is healthy again (circuit closed)\n",
			        cfg->models[model_index].id, cfg->providers[tg->provider].name, tg->model);
		}
		break;
	case SL_ROUTE_RATE_LIMITED: {
		uint64_t wait = retry_after_ms;
		if (wait == 0 && rc->cooldown_ms == 0)
			break; /* configured: a bare 429 is noise, not an exhausted key */
		if (wait == 0) {
			uint32_t s = atomic_fetch_add(&kh->strikes, 1);
			wait = rc->cooldown_ms;
			for (uint32_t i = 0; i < s && wait < rc->cooldown_max_ms; i++)
				wait *= 2;
			wait = SL_MIN(wait, (uint64_t)rc->cooldown_max_ms);
		}
		uint64_t until = now_ms + wait, cur = atomic_load(&kh->cooldown_until_ms);
		while (cur < until && !atomic_compare_exchange_weak(&kh->cooldown_until_ms, &cur, until))
			;
		break;
	}
	case SL_ROUTE_AUTH:
		if (!atomic_exchange(&kh->disabled, 1))
			fprintf(stderr,
			        "sluice: provider %s refused its key #%u (401/403): the key is disabled "
			        "until the next SIGHUP; check it\n",
			        cfg->providers[tg->provider].name, (unsigned)p->key + 1);
		break;
	case SL_ROUTE_FAILED: {
		uint64_t open = atomic_load(&th->open_until_ms);
		if (open && now_ms >= open) {
			/* the half-open probe failed: open again */
			atomic_store(&th->open_until_ms, now_ms + rc->circuit_open_ms);
			atomic_store(&th->probe_until_ms, 0);
			break;
		}
		uint64_t start = atomic_load(&th->window_start_ms);
		if (now_ms - start > rc->circuit_window_ms &&
		    atomic_compare_exchange_strong(&th->window_start_ms, &start, now_ms))
			atomic_store(&th->failures, 0);
		uint32_t n = atomic_fetch_add(&th->failures, 1) + 1;
		if (n >= rc->circuit_failures && open == 0) {
			uint64_t zero = 0;
			if (atomic_compare_exchange_strong(&th->open_until_ms, &zero,
			                                   now_ms + rc->circuit_open_ms))
				fprintf(stderr,
				        "sluice: model %s: target %s/%s failed %u times in %u ms: circuit "
				        "open for %u ms\n",
				        cfg->models[model_index].id, cfg->providers[tg->provider].name,
				        tg->model, n, rc->circuit_window_ms, rc->circuit_open_ms);
		}
		break;
	}
	}
}

void sl_route_reenable_keys(struct sl_routing *rt)
{
	for (uint32_t i = 0; i < rt->num_keys; i++)
		atomic_store(&rt->keys[i].disabled, 0);
}

uint64_t sl_route_backoff_ms(const struct sl_routing_config *rc, unsigned attempt, uint64_t rnd)
{
	uint64_t b = rc->backoff_ms;
	for (unsigned i = 2; i < attempt && b < rc->backoff_max_ms; i++)
		b *= 2;
	b = SL_MIN(b, (uint64_t)rc->backoff_max_ms);
	/* 50..100%: spread retries, never to zero */
	return b / 2 + (b ? rnd % (b / 2 + 1) : 0);
}
