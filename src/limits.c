/*
 * limits.c - per-core allowances with a reconciler (include/sluice/limits.h,
 * docs/limits.md).
 *
 * Allowance words. Every (core, slot, dimension) has one atomic word packing
 *   bits 0..23   period tag: window or day index % TAG_MOD + 1 (0: never
 *                initialised; concurrency words use TAG_CONCURRENT forever);
 *   bits 24..63  remaining, signed.
 * Writers: the owning core (take, give back) and the reconciler (initialise,
 * move allowance in or out), always by compare-and-swap on the whole word, so
 * an operation meant for one period can never land in the next. Whoever first
 * meets a word of an older period initialises it to the core's static share
 * of the limit; the shares of all cores sum to the limit, and the per-slot
 * pool (reconciler only) starts each period at 0. Every later change is a
 * transfer between a word and the pool, a consumption, or a limit change
 * applied to the pool, hence per period
 *   sum of remaining + pool + consumed == limit.
 *
 * Memory, per core: a slots-long array of 64-byte records (one cache line,
 * written by its core on the request path), one mmap each so the pages of
 * slots never touched stay unbacked. The reconciler visits only slots some
 * core touched since their last visit: each core queues a slot in its ring
 * (to the reconciler) on its first touch after the slot's last drain.
 */
#include "sluice/limits.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum dim { DIM_REQUESTS = 0, DIM_TOKENS, DIM_DAILY, DIM_CONCURRENT, DIM_NUM };

#define CACHE_LINE 64
#define TAG_BITS 24
#define TAG_MASK ((UINT32_C(1) << TAG_BITS) - 1)
#define TAG_MOD TAG_MASK /* tags are 1..TAG_MOD */
#define TAG_CONCURRENT 1u
#define REMAINING_MAX ((INT64_C(1) << 39) - 1)
#define HOUR_MS INT64_C(3600000)
#define DAY_MS INT64_C(86400000)
#define CONTROL_RING_LEN 4096u
#define RETRY_UNKNOWN_MS 1000 /* concurrency: when no core has a free unit */

_Static_assert(SL_LIMIT_VALUE_MAX == (uint64_t)REMAINING_MAX, "limits fit the remaining field");
_Static_assert((CONTROL_RING_LEN & (CONTROL_RING_LEN - 1)) == 0, "ring lengths are powers of two");

/* --- the records ---------------------------------------------------------------- */

/* One core's state for one slot. */
struct core_slot {
	/* line 1: written by the owning core on the request path (and by the
	 * reconciler: compare-and-swap on word[], clearing queued) */
	_Atomic uint64_t word[DIM_NUM];
	_Atomic uint64_t attempts;     /* requests tried, admitted or refused; monotonic */
	_Atomic uint64_t tokens_asked; /* estimates tried + extras charged; monotonic */
	_Atomic uint64_t last_admit_ms;
	_Atomic uint32_t queued;        /* in this core's ring, not drained yet */
	_Atomic uint32_t tokens_needed; /* largest estimate refused since the last pass */
};
_Static_assert(sizeof(struct core_slot) == CACHE_LINE, "one line per core and slot");

/* The reconciler's private view of one (slot, core), dense per slot so a
 * visit reads a few consecutive lines instead of one line per core. */
struct recon_core {
	uint64_t seen_attempts, seen_tokens_asked;
};

/* Read by every core, written by the control thread (first set) and the
 * reconciler (limit changes): read-mostly. */
struct slot_shared {
	_Atomic uint64_t limit[DIM_NUM]; /* in force; 0: unlimited */
};

/* The reconciler's (and the control thread's) state of one slot. */
struct slot_state {
	_Atomic uint64_t requested[DIM_NUM]; /* control thread: the limits asked for */
	_Atomic uint32_t pending;            /* control sets, reconciler clears */
	uint8_t configured;                  /* control thread: dimensions ever set non-zero */
	uint8_t known;                       /* reconciler: in the known list */
	uint16_t unused_;
	uint32_t visit_pass; /* reconciler: the pass whose visit list holds the slot */
	uint64_t basis[DIM_NUM]; /* the limit the pool accounts for (kept while unlimited) */
	int64_t pool[DIM_NUM];
	uint32_t pool_tag[DIM_NUM];
	int64_t used_index[3]; /* requests, tokens, daily: period of used[] */
	uint64_t used[3];      /* consumption at the last visit, for the state file */
	uint64_t last_used_ms;
};

struct periods {
	int64_t window_index, window_start_ms, window_end_ms;
	int64_t day_index, day_start_ms, day_end_ms;
	uint32_t window_tag, day_tag;
};

/* Single producer, single consumer ring of slot numbers. */
struct ring {
	alignas(CACHE_LINE) _Atomic uint32_t head; /* producer */
	uint32_t mask;
	uint32_t *items;
	_Atomic uint64_t drops; /* producer */
	alignas(CACHE_LINE) _Atomic uint32_t tail; /* consumer */
};

struct core_state {
	alignas(CACHE_LINE) struct core_slot *slots;
	int64_t valid_from_ms, valid_until_ms; /* p holds for now in [from, until) */
	struct periods p;
	struct ring ring; /* slots touched since their last visit -> reconciler */
};

struct sl_limiter {
	struct sl_limiter_config cfg;
	struct core_state *cores;
	struct slot_shared *shared;
	struct slot_state *state;
	struct recon_core *recon; /* [slot * cores + core] */
	size_t core_slots_bytes, shared_bytes, state_bytes, known_bytes, recon_bytes;
	/* reconciler */
	uint32_t pass;
	uint32_t *visit; /* this pass's slots, active_max at most */
	uint32_t visit_num;
	uint32_t *retry; /* limit changes postponed to the next pass */
	uint32_t retry_num;
	uint32_t *known; /* every slot ever visited or restored: what save writes */
	uint32_t known_num;
	int64_t *rem, *target;
	uint64_t *demand_attempts, *demand_tokens, *need, *none;
	/* control thread -> reconciler */
	struct ring control;
	_Atomic uint32_t rescan; /* the control ring overflowed: scan every slot's pending flag */
	_Atomic uint64_t active_overflow, postponed, passes;
	_Atomic uint32_t active_num_published;
};

/* --- small helpers -------------------------------------------------------------- */

static inline uint32_t word_tag(uint64_t w)
{
	return (uint32_t)(w & TAG_MASK);
}

static inline int64_t word_rem(uint64_t w)
{
	return (int64_t)w >> TAG_BITS; /* arithmetic shift (gcc, clang) */
}

static inline uint64_t word_make(uint32_t tag, int64_t rem)
{
	SL_ASSERT_HOT(rem >= -REMAINING_MAX && rem <= REMAINING_MAX);
	return (uint64_t)rem << TAG_BITS | tag;
}

static inline uint64_t word_delta(int64_t amount)
{
	return (uint64_t)amount << TAG_BITS;
}

/* < 0: the word is of an older period (or never initialised); 0: current;
 * > 0: newer (a clock that is ahead of ours initialised it). */
static inline int tag_cmp(uint32_t word, uint32_t tag)
{
	if (word == tag)
		return 0;
	if (word == 0)
		return -1;
	uint32_t ahead = (word + TAG_MOD - tag) % TAG_MOD;
	return ahead < TAG_MOD / 2 ? 1 : -1;
}

static uint32_t tag_of(int64_t index)
{
	int64_t m = index % (int64_t)TAG_MOD;
	if (m < 0)
		m += TAG_MOD;
	return (uint32_t)m + 1;
}

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;
	return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* A core's static share of limit: limit / cores, plus one on limit % cores of
 * the cores, rotated by slot so different keys put the remainder on
 * different cores. The shares of cores 0..cores-1 sum to limit. */
static int64_t share_of(uint64_t limit, uint32_t cores, uint32_t core, uint32_t slot)
{
	uint64_t q = limit / cores, r = limit % cores;
	return (int64_t)(q + (((uint64_t)core + slot) % cores < r ? 1 : 0));
}

/* Single-writer counters: a plain load and store, no locked instruction. */
static inline void own_add(_Atomic uint64_t *a, uint64_t n)
{
	atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + n, memory_order_relaxed);
}

static uint32_t pow2_at_least(uint32_t n)
{
	uint32_t p = 1;
	while (p < n)
		p <<= 1;
	return p;
}

static void periods_at(const struct sl_limiter *l, uint64_t now_unix_ms, struct periods *p)
{
	int64_t now = (int64_t)now_unix_ms, w = l->cfg.window_ms;
	int64_t reset_ms = (int64_t)l->cfg.day_reset_hour_utc * HOUR_MS;
	p->window_index = now / w;
	p->window_start_ms = p->window_index * w;
	p->window_end_ms = p->window_start_ms + w;
	p->day_index = floor_div(now - reset_ms, DAY_MS);
	p->day_start_ms = p->day_index * DAY_MS + reset_ms;
	p->day_end_ms = p->day_start_ms + DAY_MS;
	p->window_tag = tag_of(p->window_index);
	p->day_tag = tag_of(p->day_index);
}

static uint32_t dim_tag(const struct periods *p, int d)
{
	return d == DIM_CONCURRENT ? TAG_CONCURRENT : d == DIM_DAILY ? p->day_tag : p->window_tag;
}

static int64_t dim_index(const struct periods *p, int d)
{
	return d == DIM_DAILY ? p->day_index : p->window_index;
}

static void *big_alloc(size_t bytes)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void big_free(void *p, size_t bytes)
{
	if (p)
		munmap(p, bytes);
}

/* --- rings ------------------------------------------------------------------------ */

static int ring_init(struct ring *r, uint32_t len)
{
	r->items = calloc(len, sizeof(uint32_t));
	if (!r->items)
		return -ENOMEM;
	r->mask = len - 1;
	return 0;
}

static bool ring_push(struct ring *r, uint32_t v)
{
	uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
	if (head - atomic_load_explicit(&r->tail, memory_order_acquire) > r->mask)
		return false;
	r->items[head & r->mask] = v;
	atomic_store_explicit(&r->head, head + 1, memory_order_release);
	return true;
}

static bool ring_pop(struct ring *r, uint32_t *out)
{
	uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
	if (tail == atomic_load_explicit(&r->head, memory_order_acquire))
		return false;
	*out = r->items[tail & r->mask];
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
	return true;
}

/* --- create / free / set ------------------------------------------------------------ */

int sl_limiter_create(const struct sl_limiter_config *cfg, struct sl_limiter **out)
{
	struct sl_limiter_config c = *cfg;
	if (c.window_ms == 0)
		c.window_ms = 60000;
	if (c.reconcile_ms == 0)
		c.reconcile_ms = 50;
	if (c.active_max == 0)
		c.active_max = 65536;
	if (c.cores == 0 || c.cores > SL_LIMITER_CORES_MAX || c.slots == 0 || c.slots > SL_LIMITER_SLOTS_MAX ||
	    c.day_reset_hour_utc > 23 || c.active_max > SL_LIMITER_SLOTS_MAX)
		return -EINVAL;
	c.active_max = SL_MIN(c.active_max, c.slots);

	struct sl_limiter *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->cfg = c;
	l->core_slots_bytes = (size_t)c.slots * sizeof(struct core_slot);
	l->shared_bytes = (size_t)c.slots * sizeof(struct slot_shared);
	l->state_bytes = (size_t)c.slots * sizeof(struct slot_state);
	l->known_bytes = (size_t)c.slots * sizeof(uint32_t);
	l->recon_bytes = (size_t)c.slots * c.cores * sizeof(struct recon_core);
	l->cores = aligned_alloc(CACHE_LINE, c.cores * sizeof(struct core_state));
	l->shared = big_alloc(l->shared_bytes);
	l->state = big_alloc(l->state_bytes);
	l->known = big_alloc(l->known_bytes);
	l->recon = big_alloc(l->recon_bytes);
	l->visit = calloc(c.active_max, sizeof(uint32_t));
	l->retry = calloc(c.active_max, sizeof(uint32_t));
	l->rem = calloc(c.cores, sizeof(int64_t));
	l->target = calloc(c.cores, sizeof(int64_t));
	l->demand_attempts = calloc(c.cores, sizeof(uint64_t));
	l->demand_tokens = calloc(c.cores, sizeof(uint64_t));
	l->need = calloc(c.cores, sizeof(uint64_t));
	l->none = calloc(c.cores, sizeof(uint64_t));
	bool ok = l->cores && l->shared && l->state && l->known && l->recon && l->visit && l->retry && l->rem &&
	          l->target &&
	          l->demand_attempts && l->demand_tokens && l->need && l->none &&
	          ring_init(&l->control, CONTROL_RING_LEN) == 0;
	if (l->cores) {
		memset(l->cores, 0, c.cores * sizeof(struct core_state));
		for (uint32_t i = 0; ok && i < c.cores; i++) {
			struct core_state *cs = &l->cores[i];
			cs->slots = big_alloc(l->core_slots_bytes);
			ok = cs->slots && ring_init(&cs->ring, pow2_at_least(SL_MAX(c.active_max, 64u))) == 0;
		}
	}
	if (!ok) {
		sl_limiter_free(l);
		return -ENOMEM;
	}
	*out = l;
	return 0;
}

void sl_limiter_free(struct sl_limiter *l)
{
	if (!l)
		return;
	if (l->cores) {
		for (uint32_t i = 0; i < l->cfg.cores; i++) {
			big_free(l->cores[i].slots, l->core_slots_bytes);
			free(l->cores[i].ring.items);
		}
		free(l->cores);
	}
	big_free(l->shared, l->shared_bytes);
	big_free(l->state, l->state_bytes);
	big_free(l->known, l->known_bytes);
	big_free(l->recon, l->recon_bytes);
	free(l->visit);
	free(l->retry);
	free(l->rem);
	free(l->target);
	free(l->demand_attempts);
	free(l->demand_tokens);
	free(l->need);
	free(l->none);
	free(l->control.items);
	free(l);
}

void sl_limiter_set(struct sl_limiter *l, uint32_t slot, const struct sl_tier_limits *lim)
{
	SL_ASSERT(slot < l->cfg.slots);
	struct slot_state *st = &l->state[slot];
	struct slot_shared *sh = &l->shared[slot];
	const uint64_t want[DIM_NUM] = {
		[DIM_REQUESTS] = SL_MIN(lim->requests_per_window, SL_LIMIT_VALUE_MAX),
		[DIM_TOKENS] = SL_MIN(lim->tokens_per_window, SL_LIMIT_VALUE_MAX),
		[DIM_DAILY] = SL_MIN(lim->requests_per_day, SL_LIMIT_VALUE_MAX),
		[DIM_CONCURRENT] = SL_MIN(lim->concurrent, SL_LIMIT_VALUE_MAX),
	};
	bool changed = false;
	for (int d = 0; d < DIM_NUM; d++) {
		uint64_t before = atomic_exchange_explicit(&st->requested[d], want[d], memory_order_relaxed);
		if (!(st->configured & 1u << d)) {
			/* Never limited: no word of this dimension was ever touched,
			 * so the limit can take effect at once; cores initialise their
			 * words to shares of it and the reconciler adopts it. */
			if (want[d]) {
				st->configured |= (uint8_t)(1u << d);
				atomic_store_explicit(&sh->limit[d], want[d], memory_order_release);
			}
		} else if (before != want[d]) {
			changed = true;
		}
	}
	if (!changed)
		return;
	atomic_store_explicit(&st->pending, 1, memory_order_release);
	if (!ring_push(&l->control, slot))
		atomic_store_explicit(&l->rescan, 1, memory_order_release);
}

/* --- the request path ------------------------------------------------------------------ */

static void core_clock_set(const struct sl_limiter *l, struct core_state *cs, uint64_t now_unix_ms)
{
	periods_at(l, now_unix_ms, &cs->p);
	cs->valid_from_ms = SL_MAX(cs->p.window_start_ms, cs->p.day_start_ms);
	cs->valid_until_ms = SL_MIN(cs->p.window_end_ms, cs->p.day_end_ms);
}

/* Queues slot for the next pass unless it is queued already; called after
 * the words changed, so the pass that drains the entry sees the change. The
 * reconciler clears queued when it drains the entry: a later touch queues
 * the slot again. A full ring drops the entry (counted) and the next touch
 * tries again; until then the slot's allowance stays where it is. */
static inline void core_touch(struct core_state *cs, struct core_slot *r, uint32_t slot)
{
	if (atomic_load_explicit(&r->queued, memory_order_relaxed))
		return;
	atomic_store_explicit(&r->queued, 1, memory_order_relaxed);
	if (SL_UNLIKELY(!ring_push(&cs->ring, slot))) {
		atomic_store_explicit(&r->queued, 0, memory_order_relaxed);
		own_add(&cs->ring.drops, 1);
	}
}

/* Takes amount from this core's word of dimension d for the period `tag`.
 * A word of an older period is first initialised to the core's static share
 * of limit; a word of a newer period (initialised by a clock ahead of ours) is
 * charged as it is. Returns whether the word held amount, and the period
 * charged in *out_tag. */
static inline bool take(const struct sl_limiter *l, struct core_slot *r, int d, uint32_t tag, int64_t amount,
                        uint64_t limit, uint32_t core, uint32_t slot, uint32_t *out_tag)
{
	_Atomic uint64_t *w = &r->word[d];
	uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
	for (;;) {
		if (SL_UNLIKELY(word_tag(v) != tag) && tag_cmp(word_tag(v), tag) < 0) {
			uint64_t fresh = word_make(tag, share_of(limit, l->cfg.cores, core, slot));
			if (!atomic_compare_exchange_weak_explicit(w, &v, fresh, memory_order_relaxed,
			                                           memory_order_relaxed))
				continue;
			v = fresh;
		}
		if (word_rem(v) < amount)
			return false;
		if (atomic_compare_exchange_weak_explicit(w, &v, v - word_delta(amount), memory_order_relaxed,
		                                          memory_order_relaxed)) {
			*out_tag = word_tag(v);
			return true;
		}
	}
}

/* The slow path of a refusal: this core's word is short, but the allowance
 * may sit on another core's word until the next reconcile pass moves it (a
 * key of limit 3 on 2 cores has shares 2 and 1: its third sequential request
 * on one connection would be refused for up to one period). Take it from
 * there. That is a compare-and-swap on another core's line, but only on this
 * path; an admitted request on the common path still writes only its own
 * line. Conservation holds exactly as for a local take (the units move from
 * a word to the ticket), so the overshoot bounds are unchanged; only
 * refusals that the limit does not justify go away. */
static void give(_Atomic uint64_t *w, uint32_t tag, int64_t amount);

static bool take_remote(const struct sl_limiter *l, uint32_t self, uint32_t slot, int d, uint32_t tag,
                        int64_t amount, uint64_t limit, uint32_t *out_tag)
{
	if (l->cfg.local_only)
		return false;
	for (uint32_t k = 1; k < l->cfg.cores; k++) {
		uint32_t core = (self + k) % l->cfg.cores;
		if (take(l, &l->cores[core].slots[slot], d, tag, amount, limit, core, slot, out_tag))
			return true;
	}
	if (d != DIM_TOKENS || amount <= 1)
		return false;
	/* A token estimate larger than any one word but not than their sum:
	 * gather it piece by piece, own word first; if the words drained
	 * meanwhile, give the pieces back to this core's word (conservation
	 * again: the units only move). */
	int64_t got = 0;
	for (uint32_t k = 0; k < l->cfg.cores && got < amount; k++) {
		uint32_t core = (self + k) % l->cfg.cores;
		_Atomic uint64_t *w = &l->cores[core].slots[slot].word[d];
		uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
		for (;;) {
			if (word_tag(v) != tag) {
				if (tag_cmp(word_tag(v), tag) > 0)
					break; /* a newer period: not ours to take */
				uint64_t fresh = word_make(tag, share_of(limit, l->cfg.cores, core, slot));
				if (!atomic_compare_exchange_weak_explicit(w, &v, fresh, memory_order_relaxed,
				                                           memory_order_relaxed))
					continue;
				v = fresh;
			}
			int64_t piece = SL_MIN(word_rem(v), amount - got);
			if (piece <= 0)
				break;
			if (atomic_compare_exchange_weak_explicit(w, &v, v - word_delta(piece), memory_order_relaxed,
			                                          memory_order_relaxed)) {
				got += piece;
				break;
			}
		}
	}
	if (got == amount) {
		*out_tag = tag;
		return true;
	}
	if (got > 0)
		give(&l->cores[self].slots[slot].word[d], tag, got);
	return false;
}

/* Adds amount back to a word if it still belongs to period tag; a unit of a
 * period that has ended is dropped (giving it to the next would overshoot). */
static void give(_Atomic uint64_t *w, uint32_t tag, int64_t amount)
{
	uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
	while (word_tag(v) == tag) {
		if (atomic_compare_exchange_weak_explicit(w, &v, v + word_delta(amount), memory_order_relaxed,
		                                          memory_order_relaxed))
			return;
	}
}

/* Charges amount to the current period's word even below 0 (tokens used
 * beyond an estimate). */
static void charge(const struct sl_limiter *l, struct core_slot *r, uint32_t tag, int64_t amount, uint64_t limit,
                   uint32_t core, uint32_t slot)
{
	_Atomic uint64_t *w = &r->word[DIM_TOKENS];
	uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
	for (;;) {
		uint64_t next;
		if (tag_cmp(word_tag(v), tag) < 0)
			next = word_make(tag, share_of(limit, l->cfg.cores, core, slot) - amount);
		else
			next = v - word_delta(SL_MIN(amount, word_rem(v) + REMAINING_MAX));
		if (atomic_compare_exchange_weak_explicit(w, &v, next, memory_order_relaxed, memory_order_relaxed))
			return;
	}
}

/* The slot's remaining allowance on all cores: the sum of every core's word
 * of this period (a word still of an older period counts as its core's
 * static share, which it will be initialised to). Reading the other cores'
 * words costs a load of each of their lines, no write; it is exact but for
 * allowance a reconcile pass holds in its pool for the few instructions
 * between taking and giving. Clamped to [0, limit]. */
static int64_t global_remaining(const struct sl_limiter *l, int d, uint32_t tag, uint64_t limit, uint32_t slot)
{
	uint32_t n = l->cfg.cores;
	uint64_t share_base = limit / n, share_extra = limit % n; /* share_of, hoisted */
	int64_t g = 0;
	for (uint32_t c = 0; c < n; c++) {
		uint64_t v = atomic_load_explicit(&l->cores[c].slots[slot].word[d], memory_order_relaxed);
		if (tag_cmp(word_tag(v), tag) >= 0)
			g += word_rem(v);
		else
			g += (int64_t)(share_base + ((uint64_t)((c + slot) % n) < share_extra ? 1 : 0));
	}
	return g < 0 ? 0 : SL_MIN(g, (int64_t)limit);
}

static uint64_t until(int64_t end_ms, int64_t now)
{
	return end_ms > now ? (uint64_t)(end_ms - now) : 0;
}

static void report_fill(const struct sl_limiter *l, const struct core_state *cs, const uint64_t *lim, uint32_t slot,
                        int64_t now, enum sl_limit_kind refused, uint64_t tokens, struct sl_limit_report *rep)
{
	const struct periods *p = &cs->p;
	int64_t g[DIM_NUM] = { 0 };
	for (int d = 0; d < DIM_NUM; d++)
		if (lim[d])
			g[d] = global_remaining(l, d, dim_tag(p, d), lim[d], slot);
	rep->requests_limit = lim[DIM_REQUESTS];
	rep->requests_remaining = (uint64_t)g[DIM_REQUESTS];
	rep->requests_reset_unix_ms = (uint64_t)p->window_end_ms;
	rep->tokens_limit = lim[DIM_TOKENS];
	rep->tokens_remaining = (uint64_t)g[DIM_TOKENS];
	rep->concurrent_limit = lim[DIM_CONCURRENT];
	rep->concurrent_remaining = (uint64_t)g[DIM_CONCURRENT];
	rep->daily_limit = lim[DIM_DAILY];
	rep->daily_remaining = (uint64_t)g[DIM_DAILY];
	rep->daily_reset_unix_ms = (uint64_t)p->day_end_ms;
	rep->refused = refused;
	/* Allowance left on another core reaches this one within one pass;
	 * none left anywhere comes back when the period ends. */
	uint64_t reconcile_ms = l->cfg.reconcile_ms, retry = 0;
	switch (refused) {
	case SL_LIMIT_NONE:
	case SL_LIMIT_TOO_LARGE:
		break;
	case SL_LIMIT_REQUESTS:
		retry = until(p->window_end_ms, now);
		if (g[DIM_REQUESTS] > 0)
			retry = SL_MIN(retry, reconcile_ms);
		break;
	case SL_LIMIT_TOKENS:
		retry = until(p->window_end_ms, now);
		if ((uint64_t)g[DIM_TOKENS] >= tokens)
			retry = SL_MIN(retry, reconcile_ms);
		break;
	case SL_LIMIT_DAILY:
		retry = until(p->day_end_ms, now);
		if (g[DIM_DAILY] > 0)
			retry = SL_MIN(retry, reconcile_ms);
		break;
	case SL_LIMIT_CONCURRENT:
		retry = g[DIM_CONCURRENT] > 0 ? reconcile_ms : RETRY_UNKNOWN_MS;
		break;
	}
	rep->retry_after_ms = retry;
}

enum sl_limit_kind sl_limiter_admit(struct sl_limiter *l, uint32_t core, uint32_t slot, uint64_t tokens_estimate,
                                    uint64_t now_unix_ms, struct sl_limit_ticket *out_ticket,
                                    struct sl_limit_report *out_report)
{
	SL_ASSERT_HOT(core < l->cfg.cores && slot < l->cfg.slots);
	struct core_state *cs = &l->cores[core];
	int64_t now = (int64_t)now_unix_ms;
	if (SL_UNLIKELY(now < cs->valid_from_ms || now >= cs->valid_until_ms))
		core_clock_set(l, cs, now_unix_ms);
	struct core_slot *r = &cs->slots[slot];
	struct slot_shared *sh = &l->shared[slot];
	own_add(&r->attempts, 1);

	uint64_t lim[DIM_NUM];
	for (int d = 0; d < DIM_NUM; d++)
		lim[d] = atomic_load_explicit(&sh->limit[d], memory_order_relaxed);
	uint64_t tokens = tokens_estimate ? SL_MIN(tokens_estimate, SL_LIMIT_VALUE_MAX) : 1;
	struct sl_limit_ticket t = {
		.slot = slot, .core = core, .window_tag = cs->p.window_tag, .day_tag = cs->p.day_tag,
	};
	uint32_t tokens_tag = cs->p.window_tag;
	enum sl_limit_kind refused = SL_LIMIT_NONE;
	/* Demand counts every attempt in every dimension, refused or not, so
	 * the reconciler spreads request units and tokens alike. */
	if (lim[DIM_TOKENS])
		own_add(&r->tokens_asked, tokens);

	if (lim[DIM_DAILY]) {
		if (take(l, r, DIM_DAILY, cs->p.day_tag, 1, lim[DIM_DAILY], core, slot, &t.day_tag) ||
		    take_remote(l, core, slot, DIM_DAILY, cs->p.day_tag, 1, lim[DIM_DAILY], &t.day_tag))
			t.held |= SL_LIMIT_HELD_DAILY;
		else
			refused = SL_LIMIT_DAILY;
	}
	if (!refused && lim[DIM_REQUESTS]) {
		if (take(l, r, DIM_REQUESTS, cs->p.window_tag, 1, lim[DIM_REQUESTS], core, slot, &t.window_tag) ||
		    take_remote(l, core, slot, DIM_REQUESTS, cs->p.window_tag, 1, lim[DIM_REQUESTS],
		                &t.window_tag))
			t.held |= SL_LIMIT_HELD_REQUESTS;
		else
			refused = SL_LIMIT_REQUESTS;
	}
	if (!refused && lim[DIM_TOKENS]) {
		if (SL_UNLIKELY(tokens > lim[DIM_TOKENS])) {
			refused = SL_LIMIT_TOO_LARGE;
		} else if (take(l, r, DIM_TOKENS, cs->p.window_tag, (int64_t)tokens, lim[DIM_TOKENS], core, slot,
		                &tokens_tag) ||
		           take_remote(l, core, slot, DIM_TOKENS, cs->p.window_tag, (int64_t)tokens,
		                       lim[DIM_TOKENS], &tokens_tag)) {
			t.held |= SL_LIMIT_HELD_TOKENS;
			t.tokens_reserved = tokens;
			if (!(t.held & SL_LIMIT_HELD_REQUESTS))
				t.window_tag = tokens_tag;
		} else {
			/* Ask the reconciler for at least this much here, so an
			 * estimate above this core's share is not starved. */
			refused = SL_LIMIT_TOKENS;
			uint32_t need = (uint32_t)SL_MIN(tokens, UINT32_MAX);
			if (need > atomic_load_explicit(&r->tokens_needed, memory_order_relaxed))
				atomic_store_explicit(&r->tokens_needed, need, memory_order_relaxed);
		}
	}
	if (!refused && lim[DIM_CONCURRENT]) {
		uint32_t unused;
		if (take(l, r, DIM_CONCURRENT, TAG_CONCURRENT, 1, lim[DIM_CONCURRENT], core, slot, &unused) ||
		    take_remote(l, core, slot, DIM_CONCURRENT, TAG_CONCURRENT, 1, lim[DIM_CONCURRENT], &unused))
			t.held |= SL_LIMIT_HELD_CONCURRENT;
		else
			refused = SL_LIMIT_CONCURRENT;
	}

	if (SL_UNLIKELY(refused)) {
		if (t.held & SL_LIMIT_HELD_DAILY)
			give(&r->word[DIM_DAILY], t.day_tag, 1);
		if (t.held & SL_LIMIT_HELD_REQUESTS)
			give(&r->word[DIM_REQUESTS], t.window_tag, 1);
		if (t.held & SL_LIMIT_HELD_TOKENS)
			give(&r->word[DIM_TOKENS], tokens_tag, (int64_t)tokens);
		t.held = 0;
		t.tokens_reserved = 0;
	} else {
		atomic_store_explicit(&r->last_admit_ms, now_unix_ms, memory_order_relaxed);
	}
	core_touch(cs, r, slot);
	*out_ticket = t;
	if (out_report)
		report_fill(l, cs, lim, slot, now, refused, tokens, out_report);
	return refused;
}

void sl_limiter_peek(struct sl_limiter *l, uint32_t core, uint32_t slot, uint64_t now_unix_ms,
                     struct sl_limit_report *out_report)
{
	SL_ASSERT_HOT(core < l->cfg.cores && slot < l->cfg.slots);
	struct core_state *cs = &l->cores[core];
	int64_t now = (int64_t)now_unix_ms;
	if (now < cs->valid_from_ms || now >= cs->valid_until_ms)
		core_clock_set(l, cs, now_unix_ms);
	uint64_t lim[DIM_NUM];
	for (int d = 0; d < DIM_NUM; d++)
		lim[d] = atomic_load_explicit(&l->shared[slot].limit[d], memory_order_relaxed);
	report_fill(l, cs, lim, slot, now, SL_LIMIT_NONE, 1, out_report);
}

void sl_limiter_finish(struct sl_limiter *l, uint32_t core, const struct sl_limit_ticket *t, uint64_t tokens_actual,
                       uint64_t now_unix_ms)
{
	SL_ASSERT_HOT(core == t->core && core < l->cfg.cores && t->slot < l->cfg.slots);
	(void)core;
	if (!t->held)
		return;
	struct core_state *cs = &l->cores[t->core];
	struct core_slot *r = &cs->slots[t->slot];
	if (t->held & SL_LIMIT_HELD_CONCURRENT)
		atomic_fetch_add_explicit(&r->word[DIM_CONCURRENT], word_delta(1), memory_order_relaxed);
	if ((t->held & SL_LIMIT_HELD_TOKENS) && tokens_actual != UINT64_MAX && tokens_actual != t->tokens_reserved) {
		uint64_t actual = SL_MIN(tokens_actual, SL_LIMIT_VALUE_MAX);
		if (actual < t->tokens_reserved) {
			give(&r->word[DIM_TOKENS], t->window_tag, (int64_t)(t->tokens_reserved - actual));
		} else {
			int64_t now = (int64_t)now_unix_ms;
			if (now < cs->valid_from_ms || now >= cs->valid_until_ms)
				core_clock_set(l, cs, now_unix_ms);
			uint64_t extra = actual - t->tokens_reserved;
			own_add(&r->tokens_asked, extra);
			uint64_t limit = atomic_load_explicit(&l->shared[t->slot].limit[DIM_TOKENS], memory_order_relaxed);
			if (limit)
				charge(l, r, cs->p.window_tag, (int64_t)extra, limit, t->core, t->slot);
		}
	}
	core_touch(cs, r, t->slot);
}

void sl_limiter_cancel(struct sl_limiter *l, uint32_t core, const struct sl_limit_ticket *t, uint64_t now_unix_ms)
{
	SL_ASSERT_HOT(core == t->core && core < l->cfg.cores && t->slot < l->cfg.slots);
	(void)core;
	(void)now_unix_ms;
	if (!t->held)
		return;
	struct core_state *cs = &l->cores[t->core];
	struct core_slot *r = &cs->slots[t->slot];
	if (t->held & SL_LIMIT_HELD_CONCURRENT)
		atomic_fetch_add_explicit(&r->word[DIM_CONCURRENT], word_delta(1), memory_order_relaxed);
	if (t->held & SL_LIMIT_HELD_DAILY)
		give(&r->word[DIM_DAILY], t->day_tag, 1);
	if (t->held & SL_LIMIT_HELD_REQUESTS)
		give(&r->word[DIM_REQUESTS], t->window_tag, 1);
	if (t->held & SL_LIMIT_HELD_TOKENS)
		give(&r->word[DIM_TOKENS], t->window_tag, (int64_t)t->tokens_reserved);
	core_touch(cs, r, t->slot);
}

/* --- the reconciler ----------------------------------------------------------------------- */

/* Brings a core's word of dimension d to period tag, initialising it to the
 * core's share of basis if it is older. Returns false if it is newer (a core
 * whose clock is ahead; the caller leaves the dimension for the next pass);
 * else its current value in *out. */
static bool word_current(const struct sl_limiter *l, _Atomic uint64_t *w, uint32_t tag, uint64_t basis,
                         uint32_t core, uint32_t slot, uint64_t *out)
{
	uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
	for (;;) {
		int cmp = tag_cmp(word_tag(v), tag);
		if (cmp > 0)
			return false;
		if (cmp == 0) {
			*out = v;
			return true;
		}
		uint64_t fresh = word_make(tag, share_of(basis, l->cfg.cores, core, slot));
		if (atomic_compare_exchange_weak_explicit(w, &v, fresh, memory_order_relaxed, memory_order_relaxed)) {
			*out = fresh;
			return true;
		}
	}
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
	return a + b < a ? UINT64_MAX : a + b;
}

/* Splits free (pool + the words' remaining) among n cores, given each
 * core's remaining (rem) and what it asked for since the last pass (demand;
 * floor: a refused token estimate, served first when the floors fit). A core
 * wants twice its demand, at least its floor.
 *  - All wants fit: nothing moves except toward cores short of their want,
 *    funded by the pool and then by the others' surplus in proportion to it;
 *    a leftover pool is spread evenly. Idle cores keep their allowance: nobody
 *    else wants it, and a burst there needs no pass.
 *  - They do not fit (contention): floors first, the rest in proportion to
 *    demand; idle cores give everything back. Remainders go to the highest
 *    demand.
 *  - free <= 0 (a lowered limit): every core gives everything back.
 * Returns false when nothing needs to move. */
static bool targets_compute(int64_t free, int64_t pool, uint32_t n, const int64_t *rem, const uint64_t *demand,
                            const uint64_t *floor, int64_t *target)
{
	uint64_t demand_sum = 0, floor_sum = 0, want_sum = 0;
	uint32_t top = 0, top_floor = 0;
	for (uint32_t c = 0; c < n; c++) {
		demand_sum = add_sat(demand_sum, demand[c]);
		floor_sum = add_sat(floor_sum, floor[c]);
		want_sum = add_sat(want_sum, SL_MAX(add_sat(demand[c], demand[c]), floor[c]));
		if (demand[c] > demand[top])
			top = c;
		if (floor[c] > floor[top_floor])
			top_floor = c;
		target[c] = 0;
	}
	if (free <= 0)
		return true;
	uint64_t avail = (uint64_t)free;
	if (want_sum <= avail) {
		uint64_t short_sum = 0, surplus_sum = 0;
		for (uint32_t c = 0; c < n; c++) {
			int64_t want = (int64_t)SL_MAX(2 * demand[c], floor[c]);
			if (rem[c] < want)
				short_sum += (uint64_t)(want - rem[c]);
			else
				surplus_sum += (uint64_t)(rem[c] - want);
		}
		if (short_sum == 0 && pool == 0)
			return false;
		/* taken from the others: what the pool cannot cover (or, with a
		 * debt in the pool, the debt too) */
		int64_t needed = (int64_t)short_sum - pool, taken = 0;
		for (uint32_t c = 0; c < n; c++) {
			int64_t want = (int64_t)SL_MAX(2 * demand[c], floor[c]);
			target[c] = SL_MAX(rem[c], want);
			if (rem[c] > want && needed > 0) {
				int64_t part = (int64_t)((unsigned __int128)(uint64_t)needed * (uint64_t)(rem[c] - want) /
				                         surplus_sum);
				target[c] -= part;
				taken += part;
			}
		}
		if (needed > 0) {
			/* the rounding, from whoever has surplus left (the surplus
			 * sum covers needed since all wants fit) */
			for (uint32_t c = 0; c < n && taken < needed; c++) {
				int64_t spare = target[c] - (int64_t)SL_MAX(2 * demand[c], floor[c]);
				int64_t x = SL_MIN(spare, needed - taken);
				if (x > 0) {
					target[c] -= x;
					taken += x;
				}
			}
		} else {
			int64_t spread = -needed; /* pool left over */
			for (uint32_t c = 0; c < n; c++)
				target[c] += spread / n;
			target[top] += spread % n;
		}
		return true;
	}
	uint64_t rest = avail;
	if (floor_sum <= avail) {
		for (uint32_t c = 0; c < n; c++)
			target[c] = (int64_t)floor[c];
		rest -= floor_sum;
	}
	if (demand_sum == 0) {
		target[top_floor] += (int64_t)rest;
		return true;
	}
	uint64_t given = 0;
	for (uint32_t c = 0; c < n; c++) {
		uint64_t part = (uint64_t)((unsigned __int128)rest * demand[c] / demand_sum);
		target[c] += (int64_t)part;
		given += part;
	}
	target[top] += (int64_t)(rest - given);
	return true;
}

/* One dimension of one slot: bring every word to the current period, move
 * free allowance toward demand (and empty the pool into the words). Returns
 * the consumption of the period (for concurrency: the requests in flight). */
static uint64_t rebalance(struct sl_limiter *l, uint32_t slot, int d, const struct periods *p,
                          const uint64_t *demand, const uint64_t *floor)
{
	struct slot_state *st = &l->state[slot];
	uint32_t n = l->cfg.cores, tag = dim_tag(p, d);
	uint64_t basis = st->basis[d];
	int64_t *rem = l->rem, *target = l->target;
	const uint64_t share_base = basis / n, share_extra = basis % n; /* share_of, hoisted */
#define SHARE(c) ((int64_t)(share_base + ((uint64_t)(((c) + slot) % n) < share_extra ? 1 : 0)))
	/* A word of an older period counts as its core's share without being
	 * written: most cores never see most keys, and writing their lines
	 * would give every visited key a page per core. It is initialised only
	 * if allowance moves in or out of it. */
	for (uint32_t c = 0; c < n; c++) {
		uint64_t v = atomic_load_explicit(&l->cores[c].slots[slot].word[d], memory_order_relaxed);
		int cmp = tag_cmp(word_tag(v), tag);
		if (cmp > 0)
			return 0; /* a core's clock is ahead: next pass */
		rem[c] = cmp == 0 ? word_rem(v) : SHARE(c);
	}
	if (st->pool_tag[d] != tag) {
		st->pool[d] = 0;
		st->pool_tag[d] = tag;
	}
	int64_t free = st->pool[d];
	for (uint32_t c = 0; c < n; c++)
		free += rem[c];

	if (targets_compute(free, st->pool[d], n, rem, demand, floor, target)) {
		/* Take first, so the pool holds what is given. A word whose core
		 * consumed meanwhile yields less; a word that moved to the next
		 * period is left alone. */
		for (uint32_t c = 0; c < n; c++) {
			if (target[c] >= rem[c])
				continue;
			_Atomic uint64_t *w = &l->cores[c].slots[slot].word[d];
			uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
			for (;;) {
				int cmp = tag_cmp(word_tag(v), tag);
				if (cmp > 0)
					break;
				int64_t x = cmp == 0 ? word_rem(v) : SHARE(c);
				if (x <= target[c]) {
					rem[c] = x;
					break;
				}
				if (atomic_compare_exchange_weak_explicit(w, &v, word_make(tag, target[c]),
				                                          memory_order_relaxed, memory_order_relaxed)) {
					st->pool[d] += x - target[c];
					rem[c] = target[c];
					break;
				}
			}
		}
		for (uint32_t c = 0; c < n; c++) {
			int64_t g = SL_MIN(target[c] - rem[c], st->pool[d]);
			if (g <= 0)
				continue;
			_Atomic uint64_t *w = &l->cores[c].slots[slot].word[d];
			uint64_t v = atomic_load_explicit(w, memory_order_relaxed);
			for (;;) {
				int cmp = tag_cmp(word_tag(v), tag);
				if (cmp > 0)
					break;
				int64_t x = cmp == 0 ? word_rem(v) : SHARE(c);
				if (atomic_compare_exchange_weak_explicit(w, &v, word_make(tag, x + g), memory_order_relaxed,
				                                          memory_order_relaxed)) {
					st->pool[d] -= g;
					rem[c] = x + g;
					break;
				}
			}
		}
	}

	int64_t global = st->pool[d];
	for (uint32_t c = 0; c < n; c++)
		global += rem[c];
	int64_t used = (int64_t)basis - global;
	return used > 0 ? (uint64_t)used : 0;
#undef SHARE
}

/* Applies the limits the control thread asked for. A dimension that had a
 * limit: every word is first brought to the current period (with shares of
 * the old limit, as the cores would), then the pool absorbs new - old, and
 * the rebalance that follows spreads (or claws back) the difference. Returns
 * false if a core's clock is ahead: the rest waits for the next pass. */
static bool apply_requested(struct sl_limiter *l, uint32_t slot, const struct periods *p)
{
	struct slot_state *st = &l->state[slot];
	struct slot_shared *sh = &l->shared[slot];
	for (int d = 0; d < DIM_NUM; d++) {
		uint64_t want = atomic_load_explicit(&st->requested[d], memory_order_relaxed);
		uint64_t now_lim = atomic_load_explicit(&sh->limit[d], memory_order_relaxed);
		if (want == now_lim)
			continue;
		if (want == 0 || st->basis[d] == 0) {
			/* To unlimited: the words stay as they are, untouched while
			 * unlimited. From never limited: no word was ever touched. */
			if (want)
				st->basis[d] = want;
			atomic_store_explicit(&sh->limit[d], want, memory_order_release);
			continue;
		}
		uint32_t tag = dim_tag(p, d);
		for (uint32_t c = 0; c < l->cfg.cores; c++) {
			uint64_t v;
			if (!word_current(l, &l->cores[c].slots[slot].word[d], tag, st->basis[d], c, slot, &v))
				return false;
		}
		if (st->pool_tag[d] != tag) {
			st->pool[d] = 0;
			st->pool_tag[d] = tag;
		}
		st->pool[d] += (int64_t)want - (int64_t)st->basis[d];
		st->basis[d] = want;
		atomic_store_explicit(&sh->limit[d], want, memory_order_release);
	}
	return true;
}

/* Remembers slot for sl_limiter_save. */
static void known_add(struct sl_limiter *l, uint32_t slot)
{
	struct slot_state *st = &l->state[slot];
	if (!st->known) {
		st->known = 1;
		l->known[l->known_num++] = slot;
	}
}

/* Adds slot to this pass's visit list, once. When the list is full the slot
 * waits for its next touch (its queued flags are already clear). */
static void visit_add(struct sl_limiter *l, uint32_t slot)
{
	struct slot_state *st = &l->state[slot];
	if (st->visit_pass == l->pass)
		return;
	if (l->visit_num == l->cfg.active_max) {
		atomic_fetch_add_explicit(&l->active_overflow, 1, memory_order_relaxed);
		if (atomic_load_explicit(&st->pending, memory_order_relaxed))
			atomic_store_explicit(&l->rescan, 1, memory_order_relaxed);
		return;
	}
	st->visit_pass = l->pass;
	l->visit[l->visit_num++] = slot;
}

/* One slot's visit: applies a pending limit change, reads what each core
 * asked for since the last visit, rebalances every limited dimension.
 * Returns false if a limit change had to be postponed. */
static bool visit(struct sl_limiter *l, uint32_t slot, const struct periods *p)
{
	struct slot_state *st = &l->state[slot];
	struct slot_shared *sh = &l->shared[slot];
	uint32_t n = l->cfg.cores;
	known_add(l, slot);
	for (int d = 0; d < DIM_NUM; d++) {
		uint64_t lim = atomic_load_explicit(&sh->limit[d], memory_order_acquire);
		if (st->basis[d] == 0 && lim)
			st->basis[d] = lim; /* set directly by sl_limiter_set */
	}
	bool postponed = false;
	if (atomic_load_explicit(&st->pending, memory_order_acquire) &&
	    atomic_exchange_explicit(&st->pending, 0, memory_order_acq_rel) && !apply_requested(l, slot, p)) {
		postponed = true;
		atomic_store_explicit(&st->pending, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&l->postponed, 1, memory_order_relaxed);
	}

	uint64_t last_used = st->last_used_ms;
	struct recon_core *rc = &l->recon[(size_t)slot * n];
	for (uint32_t c = 0; c < n; c++) {
		struct core_slot *r = &l->cores[c].slots[slot];
		uint64_t a = atomic_load_explicit(&r->attempts, memory_order_relaxed);
		uint64_t tk = atomic_load_explicit(&r->tokens_asked, memory_order_relaxed);
		l->demand_attempts[c] = a - rc[c].seen_attempts;
		l->demand_tokens[c] = tk - rc[c].seen_tokens_asked;
		rc[c].seen_attempts = a;
		rc[c].seen_tokens_asked = tk;
		l->need[c] = atomic_load_explicit(&r->tokens_needed, memory_order_relaxed);
		if (l->need[c])
			l->need[c] = atomic_exchange_explicit(&r->tokens_needed, 0, memory_order_relaxed);
		last_used = SL_MAX(last_used, atomic_load_explicit(&r->last_admit_ms, memory_order_relaxed));
	}
	st->last_used_ms = last_used;

	for (int d = 0; d < DIM_NUM; d++) {
		if (!atomic_load_explicit(&sh->limit[d], memory_order_relaxed))
			continue;
		const uint64_t *demand = d == DIM_TOKENS ? l->demand_tokens : l->demand_attempts;
		const uint64_t *floor = d == DIM_TOKENS ? l->need : l->none;
		uint64_t used = rebalance(l, slot, d, p, demand, floor);
		if (d != DIM_CONCURRENT) {
			st->used[d] = used;
			st->used_index[d] = dim_index(p, d);
		}
	}
	return !postponed;
}

/* Starts loading the lines a visit of slot reads. */
static void visit_prefetch(const struct sl_limiter *l, uint32_t slot)
{
	uint32_t n = l->cfg.cores;
	for (uint32_t c = 0; c < n; c++)
		__builtin_prefetch(&l->cores[c].slots[slot]);
	const char *rc = (const char *)&l->recon[(size_t)slot * n];
	for (size_t off = 0; off < n * sizeof(struct recon_core); off += CACHE_LINE)
		__builtin_prefetch(rc + off);
	__builtin_prefetch(&l->state[slot]);
	__builtin_prefetch(&l->shared[slot]);
}

void sl_limiter_reconcile(struct sl_limiter *l, uint64_t now_unix_ms)
{
	struct periods p;
	periods_at(l, now_unix_ms, &p);
	if (++l->pass == 0)
		l->pass = 1; /* 0 marks "never visited" */
	l->visit_num = 0;
	uint32_t slot;
	for (uint32_t i = 0; i < l->retry_num; i++)
		visit_add(l, l->retry[i]);
	l->retry_num = 0;
	/* What the cores touched. Clearing queued before the visit lets a touch
	 * that lands after it queue the slot again for the next pass. At most
	 * one ring's worth per core, so a flood cannot hold the pass. */
	for (uint32_t c = 0; c < l->cfg.cores; c++) {
		struct core_state *cs = &l->cores[c];
		for (uint32_t k = 0; k <= cs->ring.mask && ring_pop(&cs->ring, &slot); k++) {
			atomic_store_explicit(&cs->slots[slot].queued, 0, memory_order_relaxed);
			visit_add(l, slot);
		}
	}
	atomic_thread_fence(memory_order_seq_cst);
	while (ring_pop(&l->control, &slot))
		visit_add(l, slot);
	if (atomic_load_explicit(&l->rescan, memory_order_relaxed) &&
	    atomic_exchange_explicit(&l->rescan, 0, memory_order_acquire)) {
		for (slot = 0; slot < l->cfg.slots; slot++)
			if (atomic_load_explicit(&l->state[slot].pending, memory_order_relaxed))
				visit_add(l, slot);
	}
	/* Each visit misses on a line per core: fetch the next slots' lines
	 * while this one is worked on. */
	for (uint32_t i = 0; i < l->visit_num && i < 2; i++)
		visit_prefetch(l, l->visit[i]);
	for (uint32_t i = 0; i < l->visit_num; i++) {
		if (i + 2 < l->visit_num)
			visit_prefetch(l, l->visit[i + 2]);
		slot = l->visit[i];
		if (!visit(l, slot, &p)) {
			if (l->retry_num < l->cfg.active_max)
				l->retry[l->retry_num++] = slot;
			else
				atomic_store_explicit(&l->rescan, 1, memory_order_relaxed);
		}
	}
	atomic_fetch_add_explicit(&l->passes, 1, memory_order_relaxed);
	atomic_store_explicit(&l->active_num_published, l->visit_num, memory_order_relaxed);
}

void sl_limiter_stats(const struct sl_limiter *l, struct sl_limiter_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (uint32_t c = 0; c < l->cfg.cores; c++)
		out->ring_drops += atomic_load_explicit(&l->cores[c].ring.drops, memory_order_relaxed);
	out->active_overflow = atomic_load_explicit(&l->active_overflow, memory_order_relaxed);
	out->postponed = atomic_load_explicit(&l->postponed, memory_order_relaxed);
	out->passes = atomic_load_explicit(&l->passes, memory_order_relaxed);
	out->active_num = atomic_load_explicit(&l->active_num_published, memory_order_relaxed);
}

/* --- the state file ------------------------------------------------------------------------
 * Frames [u32 payload length, LE][u32 CRC-32C of payload, LE][payload], as in
 * keys.c. The first payload is the header
 *   "sluice-limits v1" TAB window_ms TAB day_reset_hour_utc TAB saved_unix_ms
 * and every other one a slot
 *   id TAB window_index TAB requests_used TAB window_index TAB tokens_used
 *      TAB day_index TAB daily_used TAB last_used_unix_ms
 * (decimal; indices as defined in limits.h). The file is replaced whole by
 * rename, so any bad frame means damage: the whole file is refused. */

#define STATE_TMP_NAME SL_LIMITER_STATE_NAME ".tmp"
#define STATE_MAGIC "sluice-limits v1"
#define FRAME_HEADER_LEN 8
#define PAYLOAD_LEN_MAX 512
#define WRITE_BUFFER_LEN 65536

struct state_header {
	uint64_t window_ms;
	uint64_t day_reset_hour_utc;
	uint64_t saved_unix_ms;
};

struct state_record {
	char id[SL_LIMITER_ID_LEN_MAX + 1];
	int64_t requests_index, tokens_index, day_index;
	uint64_t requests_used, tokens_used, day_used;
	uint64_t last_used_ms;
};



struct writer {
	int fd;
	int rc;
	size_t len;
	uint8_t *buf;
};

static void writer_frame(struct writer *w, const char *payload, size_t payload_len)
{
	SL_ASSERT(payload_len > 0 && payload_len <= PAYLOAD_LEN_MAX);
	if (w->rc)
		return;
	if (w->len + FRAME_HEADER_LEN + payload_len > WRITE_BUFFER_LEN) {
		w->rc = sl_write_all(w->fd, w->buf, w->len);
		w->len = 0;
	}
	sl_put_le32(w->buf + w->len, (uint32_t)payload_len);
	sl_put_le32(w->buf + w->len + 4, sl_crc32c(payload, payload_len));
	memcpy(w->buf + w->len + FRAME_HEADER_LEN, payload, payload_len);
	w->len += FRAME_HEADER_LEN + payload_len;
}

static bool valid_id(const char *id)
{
	size_t len = strlen(id);
	if (len == 0 || len > SL_LIMITER_ID_LEN_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)id[i] <= ' ' || (unsigned char)id[i] >= 0x7F)
			return false;
	return true;
}

int sl_limiter_save(struct sl_limiter *l, int dir_fd, const char *(*slot_id)(void *ctx, uint32_t slot), void *ctx,
                    uint64_t now_unix_ms)
{
	struct writer w = { .buf = malloc(WRITE_BUFFER_LEN) };
	if (!w.buf)
		return -ENOMEM;
	w.fd = openat(dir_fd, STATE_TMP_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (w.fd < 0) {
		int rc = -errno;
		free(w.buf);
		return rc;
	}
	char payload[PAYLOAD_LEN_MAX + 1];
	int n = snprintf(payload, sizeof(payload), STATE_MAGIC "\t%" PRIu32 "\t%" PRIu32 "\t%" PRIu64,
	                 l->cfg.window_ms, l->cfg.day_reset_hour_utc, now_unix_ms);
	writer_frame(&w, payload, (size_t)n);
	for (uint32_t i = 0; i < l->known_num && !w.rc; i++) {
		uint32_t slot = l->known[i];
		const struct slot_state *st = &l->state[slot];
		const char *id = slot_id(ctx, slot);
		if (!id || !valid_id(id))
			continue;
		n = snprintf(payload, sizeof(payload),
		             "%s\t%" PRId64 "\t%" PRIu64 "\t%" PRId64 "\t%" PRIu64 "\t%" PRId64 "\t%" PRIu64 "\t%" PRIu64,
		             id, st->used_index[DIM_REQUESTS], st->used[DIM_REQUESTS], st->used_index[DIM_TOKENS],
		             st->used[DIM_TOKENS], st->used_index[DIM_DAILY], st->used[DIM_DAILY], st->last_used_ms);
		SL_ASSERT(n > 0 && n <= PAYLOAD_LEN_MAX);
		writer_frame(&w, payload, (size_t)n);
	}
	int rc = w.rc;
	if (rc == 0)
		rc = sl_write_all(w.fd, w.buf, w.len);
	if (rc == 0 && fsync(w.fd) < 0)
		rc = -errno;
	close(w.fd);
	free(w.buf);
	if (rc == 0 && renameat(dir_fd, STATE_TMP_NAME, dir_fd, SL_LIMITER_STATE_NAME) < 0)
		rc = -errno;
	if (rc == 0 && fsync(dir_fd) < 0)
		rc = -errno;
	if (rc < 0)
		(void)unlinkat(dir_fd, STATE_TMP_NAME, 0);
	return rc;
}

/* Parses the tab-separated decimal fields of text (NUL-terminated) after the
 * first tab-terminated field, which is copied to first (first_len_max bytes
 * max). Signed fields where is_signed[i]. Returns false on any deviation. */
static bool fields_parse(char *text, char *first, size_t first_len_max, int num, const bool *is_signed,
                         uint64_t *out)
{
	char *tab = strchr(text, '\t');
	if (!tab || (size_t)(tab - text) > first_len_max || tab == text)
		return false;
	memcpy(first, text, (size_t)(tab - text));
	first[tab - text] = '\0';
	char *p = tab + 1;
	for (int i = 0; i < num; i++) {
		if (!(*p == '-' && is_signed[i]) && (*p < '0' || *p > '9'))
			return false;
		char *end;
		errno = 0;
		if (is_signed[i])
			out[i] = (uint64_t)strtoll(p, &end, 10);
		else
			out[i] = strtoull(p, &end, 10);
		if (errno || end == p || *end != (i == num - 1 ? '\0' : '\t'))
			return false;
		p = end + 1;
	}
	return true;
}

/* Walks the frames of buf: the header into *hdr, then cb for every record
 * (cb may be NULL to only validate). 0 or -EBADMSG. */
static int state_walk(const uint8_t *buf, size_t len, struct state_header *hdr,
                      void (*cb)(void *ctx, const struct state_record *rec), void *ctx)
{
	size_t off = 0;
	bool header_seen = false;
	while (off < len) {
		if (len - off < FRAME_HEADER_LEN)
			return -EBADMSG;
		uint32_t payload_len = sl_get_le32(buf + off);
		if (payload_len == 0 || payload_len > PAYLOAD_LEN_MAX || payload_len > len - off - FRAME_HEADER_LEN)
			return -EBADMSG;
		const uint8_t *payload = buf + off + FRAME_HEADER_LEN;
		if (sl_crc32c(payload, payload_len) != sl_get_le32(buf + off + 4))
			return -EBADMSG;
		char text[PAYLOAD_LEN_MAX + 1];
		memcpy(text, payload, payload_len);
		text[payload_len] = '\0';
		if (strlen(text) != payload_len)
			return -EBADMSG;
		if (!header_seen) {
			static const bool unsigned3[3] = { false, false, false };
			char magic[sizeof(STATE_MAGIC)];
			uint64_t f[3];
			if (!fields_parse(text, magic, sizeof(magic) - 1, 3, unsigned3, f) ||
			    strcmp(magic, STATE_MAGIC) != 0 || f[0] == 0 || f[1] > 23)
				return -EBADMSG;
			hdr->window_ms = f[0];
			hdr->day_reset_hour_utc = f[1];
			hdr->saved_unix_ms = f[2];
			header_seen = true;
		} else {
			static const bool kinds[7] = { true, false, true, false, true, false, false };
			struct state_record rec;
			uint64_t f[7];
			if (!fields_parse(text, rec.id, SL_LIMITER_ID_LEN_MAX, 7, kinds, f) || !valid_id(rec.id))
				return -EBADMSG;
			rec.requests_index = (int64_t)f[0];
			rec.requests_used = f[1];
			rec.tokens_index = (int64_t)f[2];
			rec.tokens_used = f[3];
			rec.day_index = (int64_t)f[4];
			rec.day_used = f[5];
			rec.last_used_ms = f[6];
			if (cb)
				cb(ctx, &rec);
		}
		off += FRAME_HEADER_LEN + payload_len;
	}
	return header_seen ? 0 : -EBADMSG;
}

/* Reads and validates the whole file before anything is applied. */
static int state_load(int dir_fd, void (*cb)(void *ctx, const struct state_record *rec), void *ctx,
                      struct state_header *hdr)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = sl_read_file_at(dir_fd, SL_LIMITER_STATE_NAME, 0, &buf, &len);
	if (rc < 0)
		return rc;
	rc = state_walk(buf, len, hdr, NULL, NULL);
	if (rc == 0)
		rc = state_walk(buf, len, hdr, cb, ctx);
	free(buf);
	return rc;
}

struct restore_ctx {
	struct sl_limiter *l;
	int64_t (*slot_of)(void *ctx, const char *id);
	void *ctx;
	const struct state_header *hdr;
	struct periods p;
};

/* Makes `used` of dimension d consumed in the current period: every core's
 * word gets its share of what is left, and the pool carries any excess of
 * used over the limit (so the rebalance gives nothing out). */
static void restore_dim(struct sl_limiter *l, uint32_t slot, int d, const struct periods *p, uint64_t used)
{
	struct slot_state *st = &l->state[slot];
	struct slot_shared *sh = &l->shared[slot];
	uint64_t limit = atomic_load_explicit(&sh->limit[d], memory_order_relaxed);
	if (!limit)
		return;
	used = SL_MIN(used, SL_LIMIT_VALUE_MAX);
	uint64_t left = used < limit ? limit - used : 0;
	uint32_t tag = dim_tag(p, d);
	for (uint32_t c = 0; c < l->cfg.cores; c++) {
		struct core_slot *r = &l->cores[c].slots[slot];
		int64_t share = share_of(left, l->cfg.cores, c, slot);
		atomic_store_explicit(&r->word[d], word_make(tag, share), memory_order_relaxed);
	}
	st->basis[d] = limit;
	st->pool[d] = (int64_t)limit - (int64_t)used - (int64_t)left;
	st->pool_tag[d] = tag;
	st->used[d] = used;
	st->used_index[d] = dim_index(p, d);
}

static void restore_record(void *arg, const struct state_record *rec)
{
	struct restore_ctx *rc = arg;
	struct sl_limiter *l = rc->l;
	int64_t slot = rc->slot_of(rc->ctx, rec->id);
	if (slot < 0 || slot >= (int64_t)l->cfg.slots)
		return;
	struct slot_state *st = &l->state[slot];
	bool windows_same = rc->hdr->window_ms == l->cfg.window_ms;
	bool days_same = rc->hdr->day_reset_hour_utc == l->cfg.day_reset_hour_utc;
	if (windows_same && rec->requests_index == rc->p.window_index && rec->requests_used)
		restore_dim(l, (uint32_t)slot, DIM_REQUESTS, &rc->p, rec->requests_used);
	if (windows_same && rec->tokens_index == rc->p.window_index && rec->tokens_used)
		restore_dim(l, (uint32_t)slot, DIM_TOKENS, &rc->p, rec->tokens_used);
	if (days_same && rec->day_index == rc->p.day_index && rec->day_used)
		restore_dim(l, (uint32_t)slot, DIM_DAILY, &rc->p, rec->day_used);
	st->last_used_ms = SL_MAX(st->last_used_ms, rec->last_used_ms);
	known_add(l, (uint32_t)slot);
}

int sl_limiter_load(struct sl_limiter *l, int dir_fd, int64_t (*slot_of)(void *ctx, const char *id), void *ctx,
                    uint64_t now_unix_ms)
{
	struct state_header hdr;
	struct restore_ctx rc = { .l = l, .slot_of = slot_of, .ctx = ctx, .hdr = &hdr };
	periods_at(l, now_unix_ms, &rc.p);
	return state_load(dir_fd, restore_record, &rc, &hdr);
}

struct last_used_ctx {
	void (*cb)(void *ctx, const char *id, uint64_t last_used_unix_ms);
	void *ctx;
};

static void last_used_record(void *arg, const struct state_record *rec)
{
	struct last_used_ctx *lc = arg;
	lc->cb(lc->ctx, rec->id, rec->last_used_ms);
}

int sl_limiter_read_last_used(int dir_fd, void (*cb)(void *ctx, const char *id, uint64_t last_used_unix_ms),
                              void *ctx)
{
	struct state_header hdr;
	struct last_used_ctx lc = { .cb = cb, .ctx = ctx };
	return state_load(dir_fd, last_used_record, &lc, &hdr);
}
