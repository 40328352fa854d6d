/*
 * arena.c - the per-request bump allocator (see arena.h for the contract).
 *
 * Blocks grow geometrically (16 KiB, 32 KiB, ... up to 1 MiB) so a small
 * request touches one small block and a large one takes few blocks. An
 * allocation that does not fit a regular block gets a block of its own,
 * linked behind the current one so the current block's free tail stays in
 * use. Every block starts with a small header that links it into the list.
 */
#include "sluice/arena.h"

#include <string.h>

#define ARENA_BLOCK_MIN_BYTES ((size_t)16 << 10)
#define ARENA_BLOCK_MAX_BYTES ((size_t)1 << 20)
#define ARENA_ALIGN 8

struct sl_arena_block {
	struct sl_arena_block *next;
	size_t cap; /* bytes of the block, this header included */
};

#define ARENA_HEADER_BYTES sizeof(struct sl_arena_block)

_Static_assert(sizeof(struct sl_arena_block) % ARENA_ALIGN == 0, "header keeps alignment");
_Static_assert(ARENA_BLOCK_MIN_BYTES >= ((size_t)1 << SL_BUFPOOL_CLASS_MIN), "pool class");

static inline size_t align_up(size_t n)
{
	return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

void sl_arena_init(struct sl_arena *a, struct sl_bufpool *pool, size_t limit_bytes)
{
	*a = (struct sl_arena){ 0 };
	a->pool = pool;
	a->limit_bytes = limit_bytes ? limit_bytes : SIZE_MAX;
}

/* The size of the next regular block: double the newest one, within bounds. */
static size_t next_block_bytes(const struct sl_arena *a)
{
	if (!a->blocks)
		return ARENA_BLOCK_MIN_BYTES;
	size_t n = a->blocks->cap * 2;
	return SL_MAX(ARENA_BLOCK_MIN_BYTES, SL_MIN(n, ARENA_BLOCK_MAX_BYTES));
}

/* take_block gets a block whose payload holds at least payload_min bytes,
 * preferring want bytes in all; within the limit. NULL when it cannot. */
static struct sl_arena_block *take_block(struct sl_arena *a, size_t payload_min, size_t want)
{
	if (payload_min > SIZE_MAX / 2)
		return NULL;
	size_t need = align_up(payload_min + ARENA_HEADER_BYTES);
	size_t room = a->limit_bytes > a->used_bytes ? a->limit_bytes - a->used_bytes : 0;
	if (need > room)
		return NULL;
	want = SL_MAX(want, need);
	struct sl_arena_block *b;
	size_t cap;
	if (a->pool) {
		/* The pool hands out powers of two: pick the largest class that
		 * the limit allows, no smaller than need. */
		if (want > ((size_t)1 << SL_BUFPOOL_CLASS_MAX))
			return NULL;
		cap = (size_t)1 << sl_bufpool_class(want);
		while (cap > room && cap / 2 >= need && cap / 2 >= ((size_t)1 << SL_BUFPOOL_CLASS_MIN))
			cap /= 2;
		if (cap > room)
			return NULL;
		size_t got;
		b = sl_bufpool_get(a->pool, cap, &got);
		if (!b)
			return NULL;
		SL_ASSERT(got == cap);
	} else {
		cap = align_up(SL_MIN(want, room));
		if (cap > room)
			cap = need;
		b = malloc(cap);
		if (!b)
			return NULL;
	}
	b->cap = cap;
	a->used_bytes += cap;
	return b;
}

static void *alloc_slow(struct sl_arena *a, size_t n)
{
	size_t regular = next_block_bytes(a);
	if (n + ARENA_HEADER_BYTES > regular / 2 && a->blocks) {
		/* Large: its own block, behind the current one. */
		struct sl_arena_block *b = take_block(a, n, 0);
		if (!b) {
			a->failed = true;
			return NULL;
		}
		b->next = a->blocks->next;
		a->blocks->next = b;
		return (char *)b + ARENA_HEADER_BYTES;
	}
	struct sl_arena_block *b = take_block(a, n, regular);
	if (!b) {
		a->failed = true;
		return NULL;
	}
	b->next = a->blocks;
	a->blocks = b;
	char *p = (char *)b + ARENA_HEADER_BYTES;
	a->cur = p + n;
	a->end = (char *)b + (b->cap & ~(size_t)(ARENA_ALIGN - 1));
	SL_ASSERT(a->cur <= a->end);
	return p;
}

void *sl_arena_alloc(struct sl_arena *a, size_t len)
{
	if (SL_UNLIKELY(len > SIZE_MAX / 2)) {
		a->failed = true;
		return NULL;
	}
	size_t n = len ? align_up(len) : ARENA_ALIGN;
	if (SL_LIKELY((size_t)(a->end - a->cur) >= n)) {
		void *p = a->cur;
		a->cur += n;
		return p;
	}
	return alloc_slow(a, n);
}

char *sl_arena_memdup(struct sl_arena *a, const void *s, size_t len)
{
	if (SL_UNLIKELY(len >= SIZE_MAX / 2)) {
		a->failed = true;
		return NULL;
	}
	char *p = sl_arena_alloc(a, len + 1);
	if (!p)
		return NULL;
	if (len)
		memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

char *sl_arena_tail(struct sl_arena *a, size_t used, size_t need)
{
	SL_ASSERT(used <= need);
	if (SL_LIKELY((size_t)(a->end - a->cur) >= need))
		return a->cur;
	SL_ASSERT(used <= (size_t)(a->end - a->cur));
	struct sl_arena_block *b = take_block(a, need, next_block_bytes(a));
	if (!b) {
		a->failed = true;
		return NULL;
	}
	char *p = (char *)b + ARENA_HEADER_BYTES;
	if (used)
		memcpy(p, a->cur, used);
	b->next = a->blocks;
	a->blocks = b;
	a->cur = p;
	a->end = (char *)b + (b->cap & ~(size_t)(ARENA_ALIGN - 1));
	return p;
}

void sl_arena_commit(struct sl_arena *a, size_t len)
{
	SL_ASSERT(len <= (size_t)(a->end - a->cur));
	size_t n = len ? align_up(len) : ARENA_ALIGN;
	/* end is aligned, so the rounded length still fits unless len == 0
	 * at the very end of a block: then nothing is taken. */
	if (n > (size_t)(a->end - a->cur))
		n = (size_t)(a->end - a->cur);
	a->cur += n;
}

void sl_arena_release(struct sl_arena *a)
{
	struct sl_arena_block *b = a->blocks;
	while (b) {
		struct sl_arena_block *next = b->next;
		if (a->pool)
			sl_bufpool_put(a->pool, b, b->cap);
		else
			free(b);
		b = next;
	}
	a->blocks = NULL;
	a->cur = NULL;
	a->end = NULL;
	a->used_bytes = 0;
	a->failed = false;
}
