/*
 * buf.h - a growable output buffer backed by the reactor's block pool.
 *
 * Converters write their output into an sl_buf; the proxy then takes the
 * block (sl_buf_take) and queues it for sending, so converted bytes are
 * written once and never copied again. Growing moves the contents to the
 * next size class (a copy, amortised O(1)). With pool == NULL blocks come
 * from malloc (tools, tests, fuzzers).
 */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include "sluice/common.h"
#include "sluice/pool.h"

struct sl_buf {
	struct sl_bufpool *pool;
	char *p;
	size_t len;
	size_t cap;
	size_t len_max; /* growth past this fails (0: no bound but the pool's) */
	bool failed;    /* an append failed: the contents are incomplete */
};

void sl_buf_init(struct sl_buf *b, struct sl_bufpool *pool, size_t len_max);

/* sl_buf_reserve makes room for n more bytes; false (and b->failed) when it
 * cannot. sl_buf_append copies n bytes. */
bool sl_buf_reserve(struct sl_buf *b, size_t n);
bool sl_buf_append(struct sl_buf *b, const void *s, size_t n);
#define SL_BUF_LIT(b, lit) sl_buf_append((b), (lit), sizeof(lit) - 1)

/* sl_buf_take hands the block to the caller (to release with sl_bufpool_put
 * with *out_cap, or free() when pool is NULL) and leaves b empty. Returns NULL
 * when b is empty. */
char *sl_buf_take(struct sl_buf *b, size_t *out_len, size_t *out_cap);

/* sl_buf_release frees the block, if any; b stays usable. */
void sl_buf_release(struct sl_buf *b);

#endif
