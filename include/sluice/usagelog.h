/*
 * usagelog.h - the append-only usage log: one record per request that
 * reached routing, the billing source of truth (SPEC section 3).
 *
 * Layout. <data_dir>/usage/ holds segment files, one writer per reactor:
 *
 *   usage-c<CORE>-<FIRSTSEQ>.log     CORE: 3 decimal digits, FIRSTSEQ: 16 hex
 *
 * A segment starts with a 16-byte header (magic "SLULOG01", u32 core, u32
 * zero) followed by frames, all integers little-endian:
 *
 *   u32 len      payload bytes, 1..SL_ULOG_PAYLOAD_MAX
 *   u32 crc      CRC-32C of the 8 seq bytes and the payload
 *   u64 seq      per-core sequence number: +1 per record, across segments
 *   payload      a record (sl_usage_record_encode)
 *
 * A core's segments, in FIRSTSEQ order, hold consecutive sequence numbers;
 * a gap, a bad frame or a frame whose seq is not the next one marks where
 * the log stops being trusted. At start, sl_ulog_recover checks every
 * segment and cuts a torn or corrupt tail of each core's last segment (a
 * crash mid-write); damage anywhere else is reported and left for the
 * operator (`sluice usage verify`), never skipped silently.
 *
 * Durability: records are appended to a per-reactor buffer, written
 * through the reactor's io_uring at most flush_ms after the first of them
 * (group commit), and fdatasync'ed right after each write, the next write
 * not waiting for the fsync. A process crash (SIGKILL, abort) loses at most
 * the records of the last flush_ms plus one write's latency; a power cut
 * also those whose fsync had not completed (flush_ms plus one fsync's
 * latency). SIGTERM/SIGINT write and sync everything before exit.
 */
#ifndef SLUICE_USAGELOG_H
#define SLUICE_USAGELOG_H

#include "sluice/common.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct io_uring;

#define SL_ULOG_MAGIC "SLULOG01"
#define SL_ULOG_HEADER_LEN 16
#define SL_ULOG_FRAME_HEAD 16 /* len + crc + seq */
#define SL_ULOG_PAYLOAD_MAX 2048
#define SL_ULOG_STR_MAX 255 /* each string field; longer ones are cut */
#define SL_ULOG_RECORD_VERSION 1

/* record flags */
#define SL_UREC_STREAM 0x01    /* the client asked for a stream */
#define SL_UREC_ESTIMATED 0x02 /* tokens counted by the gateway, not reported upstream */
#define SL_UREC_REFUSED 0x04   /* refused before any upstream call */
#define SL_UREC_PLAN 0x08      /* paid from the key's plan credits, not its balance */

/* One request. Strings are (pointer, length), not NUL-terminated, and are
 * cut to SL_ULOG_STR_MAX bytes on encode. */
struct sl_ustr {
	const char *p;
	uint8_t len;
};

struct sl_usage_record {
	uint64_t time_unix_ms; /* when the request head was complete */
	uint8_t route;         /* enum sl_route */
	uint8_t flags;         /* SL_UREC_* */
	uint8_t attempts;      /* upstream attempts, 0 when refused */
	uint16_t status;       /* HTTP status the client got */
	uint32_t ttfb_ms;      /* to the first response byte sent, 0 if none */
	uint32_t total_ms;
	uint64_t input_tokens;
	uint64_t output_tokens;
	uint64_t cache_read_tokens;
	uint64_t cache_write_tokens;    /* all cache writes (Anthropic: 5-minute + 1-hour) */
	uint64_t cache_write_1h_tokens; /* of which 1-hour ones */
	uint32_t images;                /* images generated (images routes) */
	int64_t cost_pico_usd; /* exact: tokens x micro-dollars per 1M (common.h) */
	uint8_t ip_family; /* 0: unknown, 4 or 6 */
	uint8_t ip[16];    /* 4 bytes for IPv4 */
	struct sl_ustr request_id, key_id, model, provider, upstream_model;
};

/* sl_usage_record_encode writes rec's payload into out[cap]; returns its
 * length (<= SL_ULOG_PAYLOAD_MAX) or -ENOSPC. */
int sl_usage_record_encode(const struct sl_usage_record *rec, uint8_t *out, size_t cap);

/* sl_usage_record_decode reads a payload; strings point into p. Returns 0,
 * or -EINVAL for a payload that is not a version-1 record of exactly len
 * bytes. */
int sl_usage_record_decode(const uint8_t *p, size_t len, struct sl_usage_record *rec);

/* --- reading (recovery, verify, export) --------------------------------- */

enum sl_ulog_damage {
	SL_ULOG_OK = 0,
	SL_ULOG_BAD_HEADER, /* not a segment, or another core's */
	SL_ULOG_TORN,       /* the file ends inside a frame */
	SL_ULOG_BAD_CRC,    /* a frame whose checksum is wrong */
	SL_ULOG_BAD_LEN,    /* a length out of range */
	SL_ULOG_BAD_RECORD, /* checksum right, payload not a record */
	SL_ULOG_SEQ_GAP,    /* seq is not the previous one + 1 */
};

struct sl_ulog_scan {
	uint32_t core;
	uint64_t records;
	uint64_t first_seq; /* of the first good frame; expected_seq if none */
	uint64_t last_seq;
	uint64_t good_bytes; /* header + good frames: where a cut would go */
	uint64_t file_bytes;
	enum sl_ulog_damage damage; /* the first damage met; scanning stops there */
};

/* Called for each good record in order; a nonzero return stops the scan
 * and is returned by sl_ulog_scan_file. */
typedef int (*sl_ulog_visit_fn)(void *arg, uint64_t seq, const struct sl_usage_record *rec);

/* sl_ulog_scan_file reads one segment. expected_seq: the seq its first
 * frame must carry (UINT64_MAX: whatever it is, e.g. the first segment of a
 * core). Returns 0 (damage, if any, in out->damage), a visitor's nonzero
 * return, or -errno when the file cannot be read. */
int sl_ulog_scan_file(const char *path, uint64_t expected_seq, struct sl_ulog_scan *out,
                      sl_ulog_visit_fn visit, void *arg);

/* sl_ulog_segment_name parses "usage-c007-00000000000003e8.log"; returns
 * true with *core and *first_seq set. */
bool sl_ulog_segment_name(const char *name, uint32_t *core, uint64_t *first_seq);

/* The segments of dir, sorted by (core, first_seq). */
struct sl_ulog_segment {
	char *path;
	uint32_t core;
	uint64_t first_seq;
};
int sl_ulog_list(const char *dir, struct sl_ulog_segment **out, size_t *num);
void sl_ulog_list_free(struct sl_ulog_segment *segs, size_t num);

/* sl_ulog_recover checks every segment of dir (creating dir if missing),
 * cuts a damaged tail of each core's last segment (ftruncate + fsync) and
 * writes one line per cut or damage found to report (may be NULL). On
 * success next_seq[core] (for core < num_cores; 0 where a core has no
 * segment) is the seq that core's writer continues from. Returns 0, or
 * -errno. Runs before the reactors start. */
int sl_ulog_recover(const char *dir, uint64_t *next_seq, uint32_t num_cores, FILE *report);

/* --- writing: one writer per reactor ------------------------------------- */

struct sl_ulog_config {
	const char *dir;
	uint32_t core;
	uint64_t next_seq;
	size_t buffer_bytes;        /* each of the two buffers; default 1 MiB */
	uint32_t flush_ms;          /* group-commit period; default 5 */
	uint64_t segment_bytes_max; /* rotate past this size; default 64 MiB */
	uint32_t segment_age_max_s; /* rotate past this age; default 3600 */
	/* strict: a flush starts as soon as a record waits (no flush_ms),
	 * for callers that hold responses until sl_ulog_durable_seq passes
	 * their record */
	bool strict;
};

struct sl_ulog;

/* sl_ulog_open creates the writer and its first (new) segment. */
int sl_ulog_open(struct sl_ulog **out, const struct sl_ulog_config *cfg);

/* sl_ulog_append encodes and frames rec into the fill buffer: a memcpy, no
 * syscall. When the fill buffer is full and a flush is in flight, the
 * buffer is written synchronously (pwrite) rather than losing a record;
 * that path is counted (sl_ulog_stats). Returns 0 or -errno (the record
 * could not be kept: logged loudly by the caller). */
int sl_ulog_append(struct sl_ulog *l, const struct sl_usage_record *rec, uint64_t now_ms);

/* sl_ulog_flush_due: should the reactor start a flush now (records waiting
 * for flush_ms, or the fill buffer half full, and none in flight)? */
bool sl_ulog_flush_due(const struct sl_ulog *l, uint64_t now_ms);

/* sl_ulog_next_deadline: the monotonic ms by which a flush should start, or
 * UINT64_MAX when nothing waits (for the reactor's wait timeout). */
uint64_t sl_ulog_next_deadline(const struct sl_ulog *l);

/* sl_ulog_flush_start swaps the buffers and queues a write of the waiting
 * records on ring with user_data ud_write. Rotation happens here, between
 * writes. Returns 0, or -errno (then the records stay in the buffer). */
int sl_ulog_flush_start(struct sl_ulog *l, struct io_uring *ring, uint64_t ud_write,
                        uint64_t now_ms);

/* Completions. on_write resubmits the rest of a short write, or ends the
 * write and queues an fdatasync (ud_fsync) of everything written so far, or
 * asks for one after the fsync in flight. Writes and fsyncs are pipelined:
 * a slow fsync never holds the next write back. A failed write or fsync is
 * retried synchronously once; if it still fails the error is returned and
 * the caller logs it loudly. */
int sl_ulog_on_write(struct sl_ulog *l, struct io_uring *ring, int res, uint64_t ud_write,
                     uint64_t ud_fsync);
int sl_ulog_on_fsync(struct sl_ulog *l, struct io_uring *ring, int res, uint64_t ud_fsync);

/* sl_ulog_last_seq: the seq of the record appended last. */
uint64_t sl_ulog_last_seq(const struct sl_ulog *l);

/* sl_ulog_durable_seq: every record with a seq below it is on disk (written
 * and fdatasync'ed). It moves on when an fsync completes (or a synchronous
 * write did both). */
uint64_t sl_ulog_durable_seq(const struct sl_ulog *l);

/* sl_ulog_idle: nothing buffered and nothing in flight. */
bool sl_ulog_idle(const struct sl_ulog *l);

/* sl_ulog_close waits for nothing: it writes and fdatasyncs every buffered
 * record synchronously (the exit path; no flush may be in flight on a ring
 * that is still running), closes the segment and frees the writer. */
int sl_ulog_close(struct sl_ulog *l);

struct sl_ulog_stats {
	uint64_t records;
	uint64_t flushes;
	uint64_t sync_writes; /* appends that found both buffers busy */
	uint64_t errors;
	uint64_t segments;
};
void sl_ulog_stats(const struct sl_ulog *l, struct sl_ulog_stats *out);

/* sl_ulog_main is `sluice usage verify|export|totals ...` (usage_cli.c);
 * argv[0] is "usage". Exit status. */
int sl_ulog_main(int argc, char **argv);

#endif
