/*
 * pool.h - per-core memory that the request path draws from without malloc.
 *
 * A reactor owns one sl_bufpool: a single virtual region reserved at start
 * (mmap, MAP_NORESERVE: pages cost memory only once touched) and carved into
 * power-of-two blocks from 4 KiB up. A freed block goes on its size class's
 * free list and is reused by the next request of that class; blocks are never
 * split or merged, so the pool never fragments a block and every operation is
 * O(1). When the region is used up sl_bufpool_get returns NULL and the caller
 * answers 503 instead of growing: the bound is limits.memory_per_core_bytes.
 *
 * Nothing here is thread-safe; each reactor has its own pool.
 */
#ifndef SLUICE_POOL_H
#define SLUICE_POOL_H

#include "sluice/common.h"

#define SL_BUFPOOL_CLASS_MIN 12 /* 4 KiB */
#define SL_BUFPOOL_CLASS_MAX 32 /* 4 GiB */

struct sl_bufpool {
	char *base;
	size_t size_bytes;
	size_t used_bytes;                          /* bump pointer */
	void *free_lists[SL_BUFPOOL_CLASS_MAX + 1]; /* singly linked through the block */
	size_t live_bytes;                          /* handed out and not returned */
};

/* sl_bufpool_init reserves size_bytes of address space. Returns 0 or -errno. */
int sl_bufpool_init(struct sl_bufpool *pool, size_t size_bytes);

/* sl_bufpool_destroy unmaps the region; every block becomes invalid. */
void sl_bufpool_destroy(struct sl_bufpool *pool);

/* sl_bufpool_class returns the size class (log2 of the block size) that holds
 * len bytes; the block size is 1 << class. */
static inline unsigned sl_bufpool_class(size_t len)
{
	if (len <= (1u << SL_BUFPOOL_CLASS_MIN))
		return SL_BUFPOOL_CLASS_MIN;
	return 64 - (unsigned)__builtin_clzll((unsigned long long)(len - 1));
}

/* sl_bufpool_get returns a block of at least len bytes and stores its
 * capacity in *out_cap, or returns NULL when the region is exhausted (or len
 * is over 4 GiB). The block's contents are unspecified. */
void *sl_bufpool_get(struct sl_bufpool *pool, size_t len, size_t *out_cap);

/* sl_bufpool_put returns a block obtained from sl_bufpool_get with the
 * capacity it reported. sl_bufpool_put(pool, NULL, 0) is a no-op. */
void sl_bufpool_put(struct sl_bufpool *pool, void *block, size_t cap);

#endif
