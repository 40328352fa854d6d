/*
 * buf.c - the growable output buffer (see buf.h for the contract).
 *
 * Growth takes the next size class that holds the new length (at least
 * double the current block), copies the contents and returns the old block:
 * amortised O(1) per byte, and never more than one block live per buffer.
 * A failure is sticky: once an append has failed nothing more is appended,
 * so the contents are a prefix of the intended output and `failed` says so.
 */
#include "sluice/buf.h"

#include <string.h>

#define BUF_MIN_BYTES ((size_t)1 << SL_BUFPOOL_CLASS_MIN)

void sl_buf_init(struct sl_buf *b, struct sl_bufpool *pool, size_t len_max)
{
	*b = (struct sl_buf){ 0 };
	b->pool = pool;
	b->len_max = len_max;
}

static void block_free(struct sl_buf *b, char *p, size_t cap)
{
	if (!p)
		return;
	if (b->pool)
		sl_bufpool_put(b->pool, p, cap);
	else
		free(p);
}

static bool grow(struct sl_buf *b, size_t need)
{
	if (b->len_max && need > b->len_max)
		return false;
	size_t want = SL_MAX(need, BUF_MIN_BYTES);
	if (b->cap <= SIZE_MAX / 2)
		want = SL_MAX(want, b->cap * 2);
	if (b->len_max)
		want = SL_MIN(want, SL_MAX(need, b->len_max));
	char *p;
	size_t cap;
	if (b->pool) {
		p = sl_bufpool_get(b->pool, want, &cap);
	} else {
		p = malloc(want);
		cap = want;
	}
	if (!p)
		return false;
	if (b->len)
		memcpy(p, b->p, b->len);
	block_free(b, b->p, b->cap);
	b->p = p;
	b->cap = cap;
	return true;
}

bool sl_buf_reserve(struct sl_buf *b, size_t n)
{
	if (SL_UNLIKELY(b->failed))
		return false;
	if (SL_LIKELY(b->cap - b->len >= n))
		return true;
	if (n > SIZE_MAX / 2 - b->len || !grow(b, b->len + n)) {
		b->failed = true;
		return false;
	}
	return true;
}

bool sl_buf_append(struct sl_buf *b, const void *s, size_t n)
{
	if (!sl_buf_reserve(b, n))
		return false;
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	return true;
}

char *sl_buf_take(struct sl_buf *b, size_t *out_len, size_t *out_cap)
{
	char *p = b->p;
	size_t len = b->len, cap = b->cap;
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
	b->failed = false;
	if (!len) {
		block_free(b, p, cap);
		p = NULL;
		cap = 0;
	}
	*out_len = len;
	*out_cap = cap;
	return p;
}

void sl_buf_release(struct sl_buf *b)
{
	block_free(b, b->p, b->cap);
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
	b->failed = false;
}
