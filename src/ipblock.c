/*
 * ipblock.c - failed-auth counting per client address across all reactors
 * (see include/sluice/ipblock.h for the contract and its precision bounds).
 *
 * An entry is 32 bytes: a 64-bit control word, the 16-byte address and a
 * 64-bit time. The control word is everything that must change atomically:
 *
 *   bits 63..34  generation: bumped whenever the entry is freed or reused,
 *                so an update meant for the previous address fails its CAS
 *   bits 33..32  state: FREE, WRITING (claimed, address being written),
 *                LIVE (address readable)
 *   bit  31      blocked
 *   bits 30..0   consecutive failures
 *
 * expires_ms is the block's end when blocked, else the last failure +
 * block_ms; an entry is stale (reusable) once now >= expires_ms.
 *
 * Readers use the control word as a sequence lock: load it (acquire), read
 * the address and expires_ms, fence, load it again; a different generation
 * or state means the entry changed under them and is read again. A claim is
 * a CAS from FREE (or stale LIVE) to WRITING with the next generation, then
 * plain atomic stores of the fields, then a release store of LIVE. A word
 * that was never used is 0, and a freed one never is (generations start at
 * 1), so a probe stops at a never-used entry: no address was ever placed
 * past it in its window.
 */
#include "sluice/ipblock.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define STATE_FREE 0u
#define STATE_WRITING 1u
#define STATE_LIVE 2u
#define BLOCKED_BIT (1ull << 31)
#define COUNT_MASK 0x7fffffffull
#define GEN_MASK ((1ull << 30) - 1)
#define CAPACITY_DEFAULT 65536u
/* Loop turns a reader waits for a claimer to publish an address before it
 * treats the entry as another address (see the duplicate bound). */
#define WRITING_SPIN_MAX 256

struct entry {
	_Atomic uint64_t word;
	_Atomic uint64_t addr[2];
	_Atomic uint64_t expires_ms;
};
_Static_assert(sizeof(struct entry) == 32, "two entries per cache line");
_Static_assert((SL_IPBLOCK_PROBE_MAX & (SL_IPBLOCK_PROBE_MAX - 1)) == 0, "probe window is a power of 2");
_Static_assert((SL_IPBLOCK_CAPACITY_MAX & (SL_IPBLOCK_CAPACITY_MAX - 1)) == 0, "capacity bound is a power of 2");

struct sl_ipblock {
	/* read-only after create */
	struct entry *entries;
	uint32_t mask;
	uint32_t threshold;
	uint64_t block_ms;
	uint64_t seed[2];
	/* written on claim and free only: its own cache line, read by every
	 * request */
	alignas(64) _Atomic uint32_t num_live;
	alignas(64) _Atomic uint64_t blocks;
	_Atomic uint64_t untracked_failures;
	_Atomic uint32_t sweep_cursor;
};

static inline uint32_t word_state(uint64_t w)
{
	return (uint32_t)(w >> 32) & 3u;
}

static inline uint64_t word_gen(uint64_t w)
{
	return w >> 34;
}

/* the generation and state: what must not change between two reads */
static inline uint64_t word_tag(uint64_t w)
{
	return w >> 32;
}

static inline uint64_t word_make(uint64_t gen, uint32_t state, bool blocked, uint64_t count)
{
	SL_ASSERT_HOT(gen <= GEN_MASK && state <= 3 && count <= COUNT_MASK);
	return gen << 34 | (uint64_t)state << 32 | (blocked ? BLOCKED_BIT : 0) | count;
}

/* Generations run 1..GEN_MASK, so a used word is never 0. */
static inline uint64_t gen_next(uint64_t w)
{
	uint64_t gen = (word_gen(w) + 1) & GEN_MASK;
	return gen ? gen : 1;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* The 16-byte key of a socket address: IPv4 as ::ffff:a.b.c.d. false for
 * other families. */
static bool addr_key(const struct sockaddr *sa, uint64_t out[2])
{
	uint8_t bytes[16];
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		memset(bytes, 0, 10);
		bytes[10] = bytes[11] = 0xff;
		memcpy(bytes + 12, &in->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		memcpy(bytes, &in6->sin6_addr, 16);
	} else {
		return false;
	}
	memcpy(out, bytes, 16);
	return true;
}

/* A keyed mix of the address (seeded at create, so that clients cannot aim
 * many addresses at one probe window without knowing the seed). */
static uint32_t addr_hash(const struct sl_ipblock *b, const uint64_t a[2])
{
	uint64_t h = (a[0] ^ b->seed[0]) * 0x9e3779b97f4a7c15ull;
	h = (h ^ (h >> 31) ^ a[1] ^ b->seed[1]) * 0xc2b2ae3d27d4eb4full;
	h = (h ^ (h >> 29)) * 0x165667b19e3779f9ull;
	return (uint32_t)(h ^ (h >> 32));
}

static inline struct entry *entry_at(const struct sl_ipblock *b, uint32_t h, uint32_t i)
{
	return &b->entries[(h + i) & b->mask];
}

enum read_result {
	READ_NEVER_USED, /* word 0: the probe may stop */
	READ_OTHER,      /* free, another address, or unreadable (still being written) */
	READ_MATCH,
};

/* Reads entry e consistently and compares its address with a. On a match,
 * *out_w is the control word the address belongs to and *out_expires_ms
 * was read after it. */
static enum read_result entry_read(const struct entry *e, const uint64_t a[2], uint64_t *out_w,
                                   uint64_t *out_expires_ms)
{
	for (int spin = 0; spin < WRITING_SPIN_MAX; spin++) {
		uint64_t w = atomic_load_explicit(&e->word, memory_order_acquire);
		if (w == 0)
			return READ_NEVER_USED;
		uint32_t state = word_state(w);
		if (state == STATE_FREE)
			return READ_OTHER;
		if (state == STATE_WRITING) {
			cpu_relax();
			continue;
		}
		uint64_t a0 = atomic_load_explicit(&e->addr[0], memory_order_relaxed);
		uint64_t a1 = atomic_load_explicit(&e->addr[1], memory_order_relaxed);
		uint64_t expires_ms = atomic_load_explicit(&e->expires_ms, memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		uint64_t w2 = atomic_load_explicit(&e->word, memory_order_relaxed);
		if (word_tag(w2) != word_tag(w))
			continue; /* freed or reused meanwhile: read again */
		if (a0 != a[0] || a1 != a[1])
			return READ_OTHER;
		*out_w = w;
		*out_expires_ms = expires_ms;
		return READ_MATCH;
	}
	return READ_OTHER;
}

/* Finds addr's entry in its probe window, from position first on. Returns
 * its position in the window, or -1. */
static int find(const struct sl_ipblock *b, const uint64_t a[2], uint32_t h, int first, int end,
                uint64_t *out_w, uint64_t *out_expires_ms)
{
	for (int i = first; i < end; i++) {
		enum read_result r = entry_read(entry_at(b, h, (uint32_t)i), a, out_w, out_expires_ms);
		if (r == READ_MATCH)
			return i;
		if (r == READ_NEVER_USED)
			return -1;
	}
	return -1;
}

/* Frees a LIVE entry whose word is still w. true on success. */
static bool entry_free(struct sl_ipblock *b, struct entry *e, uint64_t w)
{
	uint64_t free_w = word_make(gen_next(w), STATE_FREE, false, 0);
	if (!atomic_compare_exchange_strong_explicit(&e->word, &w, free_w, memory_order_acq_rel,
	                                             memory_order_relaxed))
		return false;
	atomic_fetch_sub_explicit(&b->num_live, 1, memory_order_relaxed);
	return true;
}

/* Counts one failure on entry e, read as word w with expires_ms. Returns 1
 * when this failure blocked the address, 0 when counted (or not counted
 * because the address is blocked), -1 when the entry now holds another
 * address (the caller looks again). */
static int count_failure(struct sl_ipblock *b, struct entry *e, uint64_t w, uint64_t expires_ms,
                         uint64_t now_ms)
{
	uint64_t tag = word_tag(w);
	for (;;) {
		bool blocked = w & BLOCKED_BIT;
		if (blocked && now_ms < expires_ms)
			return 0; /* a block runs its course; failures meanwhile do not extend it */
		/* a block that ended, or failures older than block_ms: a fresh run */
		uint64_t count = now_ms >= expires_ms ? 0 : w & COUNT_MASK;
		uint64_t next = count + 1;
		bool block = next >= b->threshold;
		uint64_t next_w = word_make(word_gen(w), STATE_LIVE, block, block ? 0 : next);
		/* expires first: a reader that sees the new word (acquire) sees at
		 * least this time, so a new block is never read with an old end */
		atomic_store_explicit(&e->expires_ms, now_ms + b->block_ms, memory_order_relaxed);
		if (atomic_compare_exchange_weak_explicit(&e->word, &w, next_w, memory_order_acq_rel,
		                                          memory_order_acquire)) {
			if (block)
				atomic_fetch_add_explicit(&b->blocks, 1, memory_order_relaxed);
			return block;
		}
		if (word_tag(w) != tag)
			return -1;
		expires_ms = atomic_load_explicit(&e->expires_ms, memory_order_relaxed);
	}
}

/* Claims an entry for addr in its window (the address was not found) and
 * counts the first failure. Returns 1 if that blocked it (threshold 1), 0
 * if counted, -1 to look again (someone else inserted it first), -2 when no
 * entry could be claimed. */
static int claim(struct sl_ipblock *b, const uint64_t a[2], uint32_t h, uint64_t now_ms)
{
	for (int i = 0; i < SL_IPBLOCK_PROBE_MAX; i++) {
		struct entry *e = entry_at(b, h, (uint32_t)i);
		uint64_t w = atomic_load_explicit(&e->word, memory_order_acquire);
		uint32_t state = word_state(w);
		bool reuse = false;
		if (state == STATE_LIVE) {
			uint64_t expires_ms = atomic_load_explicit(&e->expires_ms, memory_order_relaxed);
			if (now_ms < expires_ms)
				continue; /* failing or blocked now: not ours to take */
			reuse = true;
		} else if (state != STATE_FREE) {
			continue;
		}
		uint64_t gen = gen_next(w);
		if (!atomic_compare_exchange_strong_explicit(&e->word, &w, word_make(gen, STATE_WRITING, false, 0),
		                                             memory_order_acq_rel, memory_order_relaxed)) {
			/* taken under us, maybe for this very address */
			uint64_t w2, expires_ms;
			if (entry_read(e, a, &w2, &expires_ms) == READ_MATCH)
				return -1;
			continue;
		}
		/* the sequence-lock writer's fence: a reader that sees any field
		 * written below also sees the WRITING word on its second read */
		atomic_thread_fence(memory_order_release);
		if (!reuse)
			atomic_fetch_add_explicit(&b->num_live, 1, memory_order_relaxed);
		atomic_store_explicit(&e->addr[0], a[0], memory_order_relaxed);
		atomic_store_explicit(&e->addr[1], a[1], memory_order_relaxed);
		atomic_store_explicit(&e->expires_ms, now_ms + b->block_ms, memory_order_relaxed);
		bool block = b->threshold <= 1;
		uint64_t live_w = word_make(gen, STATE_LIVE, block, block ? 0 : 1);
		atomic_store_explicit(&e->word, live_w, memory_order_release);
		if (block) {
			atomic_fetch_add_explicit(&b->blocks, 1, memory_order_relaxed);
			return 1;
		}
		/* Another thread may have inserted the same address earlier in the
		 * window at the same time: keep that one and move this failure
		 * there (see the duplicate bound in ipblock.h). */
		uint64_t other_w, other_expires_ms;
		int j = find(b, a, h, 0, i, &other_w, &other_expires_ms);
		if (j >= 0 && entry_free(b, e, live_w)) {
			int r = count_failure(b, entry_at(b, h, (uint32_t)j), other_w, other_expires_ms, now_ms);
			return r < 0 ? -1 : r;
		}
		return 0;
	}
	return -2;
}

/* --- the API ---------------------------------------------------------------------------- */

struct sl_ipblock *sl_ipblock_create(uint32_t capacity, uint32_t threshold, uint32_t block_ms)
{
	if (capacity == 0)
		capacity = CAPACITY_DEFAULT;
	capacity = SL_MIN(capacity, SL_IPBLOCK_CAPACITY_MAX);
	uint32_t cap = SL_IPBLOCK_PROBE_MAX;
	while (cap < capacity)
		cap *= 2;
	struct sl_ipblock *b = aligned_alloc(64, sizeof(*b));
	if (!b)
		return NULL;
	memset(b, 0, sizeof(*b));
	b->entries = aligned_alloc(64, (size_t)cap * sizeof(struct entry));
	if (!b->entries) {
		free(b);
		return NULL;
	}
	memset(b->entries, 0, (size_t)cap * sizeof(struct entry));
	b->mask = cap - 1;
	b->threshold = threshold;
	b->block_ms = block_ms ? block_ms : SL_IPBLOCK_BLOCK_MS_DEFAULT;
	if (getrandom(b->seed, sizeof(b->seed), GRND_NONBLOCK) != (ssize_t)sizeof(b->seed)) {
		/* no entropy yet (early boot): a weaker seed still varies per run */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		b->seed[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)b;
		b->seed[1] = (uint64_t)ts.tv_sec * 0xc2b2ae3d27d4eb4full ^ (uint64_t)(uintptr_t)b->entries;
	}
	atomic_init(&b->num_live, 0);
	atomic_init(&b->blocks, 0);
	atomic_init(&b->untracked_failures, 0);
	atomic_init(&b->sweep_cursor, 0);
	return b;
}

void sl_ipblock_free(struct sl_ipblock *b)
{
	if (!b)
		return;
	free(b->entries);
	free(b);
}

bool sl_ipblock_active(const struct sl_ipblock *b)
{
	return atomic_load_explicit(&b->num_live, memory_order_relaxed) != 0;
}

bool sl_ipblock_is_blocked(struct sl_ipblock *b, const struct sockaddr *addr, uint64_t now_ms,
                           uint64_t *out_retry_after_ms)
{
	if (SL_LIKELY(atomic_load_explicit(&b->num_live, memory_order_relaxed) == 0))
		return false;
	uint64_t a[2], w, expires_ms;
	if (!addr_key(addr, a))
		return false;
	if (find(b, a, addr_hash(b, a), 0, SL_IPBLOCK_PROBE_MAX, &w, &expires_ms) < 0)
		return false;
	if (!(w & BLOCKED_BIT) || now_ms >= expires_ms)
		return false;
	if (out_retry_after_ms)
		*out_retry_after_ms = expires_ms - now_ms;
	return true;
}

bool sl_ipblock_fail(struct sl_ipblock *b, const struct sockaddr *addr, uint64_t now_ms)
{
	uint64_t a[2];
	if (b->threshold == 0 || !addr_key(addr, a))
		return false;
	uint32_t h = addr_hash(b, a);
	/* each turn ends unless an entry changed owner under us; a few turns
	 * bound the work when the window churns */
	for (int attempt = 0; attempt < 4; attempt++) {
		uint64_t w, expires_ms;
		int i = find(b, a, h, 0, SL_IPBLOCK_PROBE_MAX, &w, &expires_ms);
		int r = i >= 0 ? count_failure(b, entry_at(b, h, (uint32_t)i), w, expires_ms, now_ms)
		               : claim(b, a, h, now_ms);
		if (r >= 0)
			return r == 1;
		if (r == -2)
			break;
	}
	atomic_fetch_add_explicit(&b->untracked_failures, 1, memory_order_relaxed);
	return false;
}

void sl_ipblock_success(struct sl_ipblock *b, const struct sockaddr *addr, uint64_t now_ms)
{
	if (SL_LIKELY(atomic_load_explicit(&b->num_live, memory_order_relaxed) == 0))
		return;
	uint64_t a[2], w, expires_ms;
	if (!addr_key(addr, a))
		return;
	uint32_t h = addr_hash(b, a);
	int i = find(b, a, h, 0, SL_IPBLOCK_PROBE_MAX, &w, &expires_ms);
	if (i < 0)
		return;
	struct entry *e = entry_at(b, h, (uint32_t)i);
	uint64_t tag = word_tag(w);
	for (;;) {
		if ((w & BLOCKED_BIT) && now_ms < expires_ms)
			return; /* a block runs its course */
		if (entry_free(b, e, w))
			return;
		w = atomic_load_explicit(&e->word, memory_order_acquire);
		if (word_tag(w) != tag)
			return; /* freed or reused by someone else */
		expires_ms = atomic_load_explicit(&e->expires_ms, memory_order_relaxed);
	}
}

uint32_t sl_ipblock_sweep(struct sl_ipblock *b, uint64_t now_ms, uint32_t max_entries)
{
	if (atomic_load_explicit(&b->num_live, memory_order_relaxed) == 0)
		return 0;
	max_entries = SL_MIN(max_entries, b->mask + 1);
	uint32_t start = atomic_fetch_add_explicit(&b->sweep_cursor, max_entries, memory_order_relaxed);
	uint32_t freed = 0;
	for (uint32_t k = 0; k < max_entries; k++) {
		struct entry *e = &b->entries[(start + k) & b->mask];
		uint64_t w = atomic_load_explicit(&e->word, memory_order_acquire);
		if (word_state(w) != STATE_LIVE)
			continue;
		uint64_t expires_ms = atomic_load_explicit(&e->expires_ms, memory_order_relaxed);
		if (now_ms >= expires_ms && entry_free(b, e, w))
			freed++;
	}
	return freed;
}

void sl_ipblock_get_stats(const struct sl_ipblock *b, struct sl_ipblock_stats *out)
{
	out->capacity = b->mask + 1;
	out->entries_live = atomic_load_explicit(&b->num_live, memory_order_relaxed);
	out->blocks = atomic_load_explicit(&b->blocks, memory_order_relaxed);
	out->untracked_failures = atomic_load_explicit(&b->untracked_failures, memory_order_relaxed);
}
