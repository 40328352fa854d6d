/*
 * arena.h - a bounded bump allocator for one request (or one stream).
 *
 * An arena takes blocks from the reactor's sl_bufpool as it grows and gives
 * them all back at once in sl_arena_release; nothing is freed
 * piecemeal. It never exceeds limit_bytes: an allocation past the limit (or
 * when the pool is exhausted) returns NULL and sets `failed`, so a converter
 * can run to the end and the caller answers 413/503 once. Not thread-safe.
 */
#ifndef SLUICE_ARENA_H
#define SLUICE_ARENA_H

#include "sluice/common.h"
#include "sluice/pool.h"

struct sl_arena_block; /* private: header at the start of each pool block */

struct sl_arena {
	struct sl_bufpool *pool;       /* NULL: blocks come from malloc (tools, tests) */
	struct sl_arena_block *blocks; /* newest first */
	char *cur;                     /* bump pointer in the newest block */
	char *end;
	size_t used_bytes;             /* sum of block capacities taken */
	size_t limit_bytes;
	bool failed;
};

/* sl_arena_init prepares an empty arena; no memory is taken until the first
 * allocation. pool may be NULL (malloc-backed, for tools and tests).
 * limit_bytes 0 means no limit but the pool's. */
void sl_arena_init(struct sl_arena *a, struct sl_bufpool *pool, size_t limit_bytes);

/* sl_arena_alloc returns len bytes aligned to 8, or NULL (and a->failed). */
void *sl_arena_alloc(struct sl_arena *a, size_t len);

/* sl_arena_memdup copies s[0..len) and a terminating NUL; NULL on failure. */
char *sl_arena_memdup(struct sl_arena *a, const void *s, size_t len);

/* sl_arena_release gives every block back; the arena is empty and reusable.
 * sl_arena_release on an empty arena is a no-op. */
void sl_arena_release(struct sl_arena *a);

/*
 * Open-ended allocation, for writers that learn the length as they go (the
 * JSON string decoder, a serialiser): the bytes from a->cur to a->end are
 * free space that can be written without being allocated yet.
 *
 * sl_arena_tail makes a->end - a->cur >= need, keeping the first `used` bytes
 * already written at a->cur (they are copied when a new block is taken), and
 * returns the (possibly new) a->cur; NULL and a->failed when it cannot.
 * sl_arena_commit then allocates the first len bytes written at a->cur (len
 * <= a->end - a->cur). Any other allocation in between discards the tail.
 */
char *sl_arena_tail(struct sl_arena *a, size_t used, size_t need);
void sl_arena_commit(struct sl_arena *a, size_t len);

#endif
