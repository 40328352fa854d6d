/*
 * pool.c - the per-core size-class block pool (see pool.h for the contract).
 */
#include "sluice/pool.h"

#include <errno.h>
#include <sys/mman.h>

int sl_bufpool_init(struct sl_bufpool *pool, size_t size_bytes)
{
	*pool = (struct sl_bufpool){ 0 };
	void *p = mmap(NULL, size_bytes, PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	pool->base = p;
	pool->size_bytes = size_bytes;
	return 0;
}

void sl_bufpool_destroy(struct sl_bufpool *pool)
{
	if (pool->base)
		munmap(pool->base, pool->size_bytes);
	*pool = (struct sl_bufpool){ 0 };
}

void *sl_bufpool_get(struct sl_bufpool *pool, size_t len, size_t *out_cap)
{
	if (len > ((size_t)1 << SL_BUFPOOL_CLASS_MAX))
		return NULL;
	unsigned cls = sl_bufpool_class(len);
	size_t cap = (size_t)1 << cls;
	void *block = pool->free_lists[cls];
	if (block) {
		pool->free_lists[cls] = *(void **)block;
	} else {
		/* Blocks are aligned to min(their size, 64 KiB) so that small
		 * blocks pack and large ones start on a page. */
		size_t align = SL_MIN(cap, (size_t)65536);
		size_t start = (pool->used_bytes + align - 1) & ~(align - 1);
		if (start > pool->size_bytes || pool->size_bytes - start < cap)
			return NULL;
		block = pool->base + start;
		pool->used_bytes = start + cap;
	}
	pool->live_bytes += cap;
	*out_cap = cap;
	return block;
}

void sl_bufpool_put(struct sl_bufpool *pool, void *block, size_t cap)
{
	if (!block)
		return;
	SL_ASSERT((char *)block >= pool->base && (char *)block < pool->base + pool->size_bytes);
	SL_ASSERT(cap >= ((size_t)1 << SL_BUFPOOL_CLASS_MIN) && (cap & (cap - 1)) == 0);
	SL_ASSERT(pool->live_bytes >= cap);
	unsigned cls = sl_bufpool_class(cap);
	*(void **)block = pool->free_lists[cls];
	pool->free_lists[cls] = block;
	pool->live_bytes -= cap;
}
