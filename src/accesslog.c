/*
 * accesslog.c - the access log's double buffer and its writes (see
 * include/sluice/accesslog.h).
 */
#include "sluice/accesslog.h"

#include "sluice/common.h"
#include "sluice/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int sl_alog_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	return fd < 0 ? -errno : fd;
}

int sl_alog_reopen(int fd, const char *path)
{
	int nfd = sl_alog_open(path);
	if (nfd < 0)
		return nfd;
	int rc = dup3(nfd, fd, O_CLOEXEC) < 0 ? -errno : 0;
	close(nfd);
	return rc;
}

int sl_alog_init(struct sl_alog *a, int fd, size_t buffer_bytes, uint64_t flush_ms)
{
	memset(a, 0, sizeof *a);
	a->fd = fd;
	a->cap = buffer_bytes;
	a->flush_ms = flush_ms;
	a->buf[0] = malloc(buffer_bytes);
	a->buf[1] = malloc(buffer_bytes);
	if (!a->buf[0] || !a->buf[1]) {
		sl_alog_destroy(a);
		return -ENOMEM;
	}
	return 0;
}

void sl_alog_destroy(struct sl_alog *a)
{
	free(a->buf[0]);
	free(a->buf[1]);
	a->buf[0] = a->buf[1] = NULL;
}

static void submit(struct sl_alog *a, struct io_uring *ring, uint64_t ud)
{
	unsigned b = a->active ^ 1; /* the busy one */
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (!sqe) {
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	/* offset -1: the file position, which O_APPEND makes the end */
	io_uring_prep_write(sqe, a->fd, a->buf[b] + a->write_off,
	                    (unsigned)(a->len[b] - a->write_off), (uint64_t)-1);
	io_uring_sqe_set_data64(sqe, ud);
}

/* The active buffer goes to the disk; lines go to the other. */
static void start_write(struct sl_alog *a, struct io_uring *ring, uint64_t ud)
{
	a->active ^= 1;
	a->len[a->active] = 0;
	a->busy = true;
	a->write_off = 0;
	submit(a, ring, ud);
}

void sl_alog_append(struct sl_alog *a, struct io_uring *ring, uint64_t ud, const char *line,
                    size_t len, uint64_t now_ms)
{
	if (a->cap - a->len[a->active] < len) {
		if (a->busy || len > a->cap) {
			SL_METRIC_INC(a->dropped);
			return;
		}
		start_write(a, ring, ud);
	}
	if (a->len[a->active] == 0)
		a->first_line_ms = now_ms;
	memcpy(a->buf[a->active] + a->len[a->active], line, len);
	a->len[a->active] += len;
	SL_METRIC_INC(a->lines);
}

uint64_t sl_alog_tick(struct sl_alog *a, struct io_uring *ring, uint64_t ud, uint64_t now_ms)
{
	if (!a->buf[0] || a->len[a->active] == 0 || a->busy)
		return UINT64_MAX;
	uint64_t due = a->first_line_ms + a->flush_ms;
	if (now_ms >= due || a->len[a->active] >= a->cap / 2) {
		start_write(a, ring, ud);
		return UINT64_MAX;
	}
	return due;
}

void sl_alog_on_write(struct sl_alog *a, struct io_uring *ring, uint64_t ud, int res)
{
	unsigned b = a->active ^ 1;
	if (res > 0 && a->write_off + (size_t)res < a->len[b]) {
		a->write_off += (size_t)res; /* short: the rest */
		submit(a, ring, ud);
		return;
	}
	if (res <= 0) {
		if (a->write_errors == 0)
			fprintf(stderr, "sluice: access log write: %s (lines are being lost)\n",
			        res < 0 ? strerror(-res) : "no progress");
		SL_METRIC_INC(a->write_errors);
	}
	a->busy = false;
	a->len[b] = 0;
}

void sl_alog_finish(struct sl_alog *a)
{
	if (!a->buf[0])
		return;
	if (a->len[a->active] && sl_write_all(a->fd, a->buf[a->active], a->len[a->active]) != 0)
		SL_METRIC_INC(a->write_errors);
	a->len[a->active] = 0;
}
