/*
 * accesslog.h - the access log: one JSON line per request, whatever became
 * of it (routed, refused, answered locally, client gone), for operators to
 * tail and ship. Unlike the usage log it is not a billing record: it is
 * written when convenient and may drop lines under pressure, counted.
 *
 * One file, opened O_APPEND by main and shared by every reactor. Each
 * reactor formats lines into its own buffer (two of access_log.buffer_bytes,
 * allocated at start) and writes the full one through its io_uring at most
 * every access_log.flush_ms, or sooner when it is half full; the kernel
 * appends each write whole, so lines of different reactors never mix.
 * When a line finds the active buffer full while the other is still being
 * written, it is dropped and counted (sluice_access_log_dropped_total): the
 * request path never waits on the disk. SIGHUP reopens the file (log
 * rotation): the new file takes the old descriptor's number (dup3), so
 * nothing on the request path changes. Exit writes what is left.
 */
#ifndef SLUICE_ACCESSLOG_H
#define SLUICE_ACCESSLOG_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest line formatted (a longer one is cut, still valid JSON). */
#define SL_ALOG_LINE_MAX 2048

struct sl_alog {
	int fd;
	char *buf[2];
	size_t cap;
	size_t len[2];
	unsigned active;       /* the buffer lines go into */
	bool busy;             /* the other buffer is being written */
	size_t write_off;      /* bytes of the busy buffer written so far */
	uint64_t flush_ms;
	uint64_t first_line_ms; /* when the active buffer got its first line */
	/* counters (metrics.h rules: written here only, read anywhere) */
	uint64_t lines, dropped, write_errors;
};

/* sl_alog_open opens path for appending (0640, created if missing);
 * returns the fd or -errno. */
int sl_alog_open(const char *path);

/* sl_alog_reopen points fd at a fresh open of path (dup3), for rotation;
 * 0 or -errno (the old file stays in use). */
int sl_alog_reopen(int fd, const char *path);

/* sl_alog_init allocates the two buffers; 0 or -ENOMEM. */
int sl_alog_init(struct sl_alog *a, int fd, size_t buffer_bytes, uint64_t flush_ms);
void sl_alog_destroy(struct sl_alog *a);

/* sl_alog_append copies one line (with its newline) into the active
 * buffer, starting a write first if that is the only way to make room;
 * counts it dropped otherwise. */
void sl_alog_append(struct sl_alog *a, struct io_uring *ring, uint64_t ud, const char *line,
                    size_t len, uint64_t now_ms);

/* sl_alog_tick starts a write when one is due; returns the next time one
 * will be (UINT64_MAX: nothing waits). */
uint64_t sl_alog_tick(struct sl_alog *a, struct io_uring *ring, uint64_t ud, uint64_t now_ms);

/* sl_alog_on_write handles the write's completion (a short write goes on
 * with the rest). */
void sl_alog_on_write(struct sl_alog *a, struct io_uring *ring, uint64_t ud, int res);

/* sl_alog_finish writes what is left with write(2), at exit (no write may
 * be in flight). */
void sl_alog_finish(struct sl_alog *a);

#endif
