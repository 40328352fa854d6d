/*
 * usagelog.c - the append-only usage log (see usagelog.h for the format).
 *
 * The writer keeps two buffers: records are framed into `fill` with one
 * memcpy-sized encode each; a flush swaps the buffers and writes `flight`
 * at the segment's end through the reactor's io_uring, then fdatasyncs it.
 * The write and the fsync are two submissions, not an IOSQE_IO_LINK chain:
 * a short write would break a link and let the fsync run on half a batch,
 * so the write's completion decides (the rest of a short write, or the
 * fsync). Rotation happens at the start of a flush, when nothing is in
 * flight: the new segment is opened, with a synchronous open, once per
 * segment_bytes_max or segment_age_max_s.
 */
#include "sluice/usagelog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* --- records ------------------------------------------------------------------ */

/*
 * Payload, version 1 (little-endian):
 *
 *   0  u8  version      1  u8 route     2  u8 flags    3  u8 attempts
 *   4  u16 status       6  u8 ip_family 7  u8 zero
 *   8  u64 time_unix_ms
 *  16  u32 ttfb_ms     20  u32 total_ms
 *  24  u64 input  32 u64 output  40 u64 cache_read  48 u64 cache_write
 *  56  u64 cache_write_1h (of cache_write)
 *  64  i64 cost_pico_usd
 *  72  u8[16] ip
 *  88  u32 images      92 u32 zero
 *  96  five strings, each u8 length + bytes: request_id, key_id, model,
 *      provider, upstream_model
 */
#define REC_FIXED 96
#define REC_STRINGS 5

static const struct sl_ustr *rec_string(const struct sl_usage_record *rec, int i)
{
	const struct sl_ustr *s[REC_STRINGS] = { &rec->request_id, &rec->key_id, &rec->model,
		                                 &rec->provider, &rec->upstream_model };
	return s[i];
}

int sl_usage_record_encode(const struct sl_usage_record *rec, uint8_t *out, size_t cap)
{
	size_t need = REC_FIXED + REC_STRINGS;
	for (int i = 0; i < REC_STRINGS; i++)
		need += rec_string(rec, i)->len;
	_Static_assert(REC_FIXED + REC_STRINGS * (1 + SL_ULOG_STR_MAX) <= SL_ULOG_PAYLOAD_MAX,
	               "a record always fits a payload");
	if (need > cap)
		return -ENOSPC;
	out[0] = SL_ULOG_RECORD_VERSION;
	out[1] = rec->route;
	out[2] = rec->flags;
	out[3] = rec->attempts;
	sl_put_le16(out + 4, rec->status);
	out[6] = rec->ip_family;
	out[7] = 0;
	sl_put_le64(out + 8, rec->time_unix_ms);
	sl_put_le32(out + 16, rec->ttfb_ms);
	sl_put_le32(out + 20, rec->total_ms);
	sl_put_le64(out + 24, rec->input_tokens);
	sl_put_le64(out + 32, rec->output_tokens);
	sl_put_le64(out + 40, rec->cache_read_tokens);
	sl_put_le64(out + 48, rec->cache_write_tokens);
	sl_put_le64(out + 56, rec->cache_write_1h_tokens);
	sl_put_le64(out + 64, (uint64_t)rec->cost_pico_usd);
	memcpy(out + 72, rec->ip, 16);
	sl_put_le32(out + 88, rec->images);
	sl_put_le32(out + 92, 0);
	size_t off = REC_FIXED;
	for (int i = 0; i < REC_STRINGS; i++) {
		const struct sl_ustr *s = rec_string(rec, i);
		out[off++] = s->len;
		if (s->len)
			memcpy(out + off, s->p, s->len);
		off += s->len;
	}
	return (int)off;
}

int sl_usage_record_decode(const uint8_t *p, size_t len, struct sl_usage_record *rec)
{
	if (len < REC_FIXED + REC_STRINGS || len > SL_ULOG_PAYLOAD_MAX ||
	    p[0] != SL_ULOG_RECORD_VERSION || p[7] != 0 ||
	    (p[6] != 0 && p[6] != 4 && p[6] != 6))
		return -EINVAL;
	memset(rec, 0, sizeof *rec);
	rec->route = p[1];
	rec->flags = p[2];
	rec->attempts = p[3];
	rec->status = sl_get_le16(p + 4);
	rec->ip_family = p[6];
	rec->time_unix_ms = sl_get_le64(p + 8);
	rec->ttfb_ms = sl_get_le32(p + 16);
	rec->total_ms = sl_get_le32(p + 20);
	rec->input_tokens = sl_get_le64(p + 24);
	rec->output_tokens = sl_get_le64(p + 32);
	rec->cache_read_tokens = sl_get_le64(p + 40);
	rec->cache_write_tokens = sl_get_le64(p + 48);
	rec->cache_write_1h_tokens = sl_get_le64(p + 56);
	rec->cost_pico_usd = (int64_t)sl_get_le64(p + 64);
	memcpy(rec->ip, p + 72, 16);
	rec->images = sl_get_le32(p + 88);
	if (sl_get_le32(p + 92) != 0)
		return -EINVAL;
	struct sl_ustr *s[REC_STRINGS] = { &rec->request_id, &rec->key_id, &rec->model,
		                           &rec->provider, &rec->upstream_model };
	size_t off = REC_FIXED;
	for (int i = 0; i < REC_STRINGS; i++) {
		if (off >= len)
			return -EINVAL;
		uint8_t n = p[off++];
		if (n > len - off)
			return -EINVAL;
		s[i]->p = (const char *)p + off;
		s[i]->len = n;
		off += n;
	}
	return off == len ? 0 : -EINVAL;
}

/* frame_crc: CRC-32C over the seq bytes and the payload, which follow
 * each other in a frame. */
static uint32_t frame_crc(const uint8_t *frame, size_t payload_len)
{
	return sl_crc32c(frame + 8, 8 + payload_len);
}

/* --- reading --------------------------------------------------------------------- */

static void header_make(uint8_t h[SL_ULOG_HEADER_LEN], uint32_t core)
{
	memcpy(h, SL_ULOG_MAGIC, 8);
	sl_put_le32(h + 8, core);
	sl_put_le32(h + 12, 0);
}

bool sl_ulog_segment_name(const char *name, uint32_t *core, uint64_t *first_seq)
{
	/* usage-cNNN-XXXXXXXXXXXXXXXX.log */
	if (strlen(name) != 31 || memcmp(name, "usage-c", 7) != 0 || name[10] != '-' ||
	    strcmp(name + 27, ".log") != 0)
		return false;
	uint32_t c = 0;
	for (int i = 7; i < 10; i++) {
		if (name[i] < '0' || name[i] > '9')
			return false;
		c = c * 10 + (uint32_t)(name[i] - '0');
	}
	uint64_t s = 0;
	for (int i = 11; i < 27; i++) {
		char ch = name[i];
		unsigned d;
		if (ch >= '0' && ch <= '9')
			d = (unsigned)(ch - '0');
		else if (ch >= 'a' && ch <= 'f')
			d = (unsigned)(ch - 'a' + 10);
		else
			return false;
		s = s << 4 | d;
	}
	*core = c;
	*first_seq = s;
	return true;
}

int sl_ulog_scan_file(const char *path, uint64_t expected_seq, struct sl_ulog_scan *out,
                      sl_ulog_visit_fn visit, void *arg)
{
	memset(out, 0, sizeof *out);
	out->first_seq = expected_seq;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	out->file_bytes = (uint64_t)st.st_size;
	FILE *f = fdopen(fd, "rb");
	if (!f) {
		int e = -errno;
		close(fd);
		return e;
	}
	int rc = 0;
	uint8_t h[SL_ULOG_HEADER_LEN];
	if (fread(h, 1, sizeof h, f) != sizeof h || memcmp(h, SL_ULOG_MAGIC, 8) != 0 ||
	    sl_get_le32(h + 12) != 0) {
		out->damage = SL_ULOG_BAD_HEADER;
		goto done;
	}
	out->core = sl_get_le32(h + 8);
	out->good_bytes = SL_ULOG_HEADER_LEN;
	uint64_t want = expected_seq;
	bool check = expected_seq != UINT64_MAX; /* after the first frame, always */
	static _Thread_local uint8_t frame[SL_ULOG_FRAME_HEAD + SL_ULOG_PAYLOAD_MAX];
	const uint8_t *payload = frame + SL_ULOG_FRAME_HEAD;
	for (;;) {
		size_t got = fread(frame, 1, SL_ULOG_FRAME_HEAD, f);
		if (got == 0)
			break; /* a clean end */
		if (got < SL_ULOG_FRAME_HEAD) {
			out->damage = SL_ULOG_TORN;
			break;
		}
		uint32_t len = sl_get_le32(frame), crc = sl_get_le32(frame + 4);
		uint64_t seq = sl_get_le64(frame + 8);
		if (len == 0 || len > SL_ULOG_PAYLOAD_MAX) {
			/* (zeros: a crash after the file grew, before the data) */
			out->damage = SL_ULOG_BAD_LEN;
			break;
		}
		if (fread(frame + SL_ULOG_FRAME_HEAD, 1, len, f) != len) {
			out->damage = SL_ULOG_TORN;
			break;
		}
		if (frame_crc(frame, len) != crc) {
			out->damage = SL_ULOG_BAD_CRC;
			break;
		}
		struct sl_usage_record rec;
		if (sl_usage_record_decode(payload, len, &rec) != 0) {
			out->damage = SL_ULOG_BAD_RECORD;
			break;
		}
		if (check && seq != want) {
			out->damage = SL_ULOG_SEQ_GAP;
			break;
		}
		if (out->records == 0)
			out->first_seq = seq;
		out->last_seq = seq;
		out->records++;
		out->good_bytes += SL_ULOG_FRAME_HEAD + len;
		want = seq + 1;
		check = true;
		if (visit) {
			rc = visit(arg, seq, &rec);
			if (rc != 0)
				break;
		}
	}
done:
	fclose(f);
	return rc;
}

static int seg_cmp(const void *a, const void *b)
{
	const struct sl_ulog_segment *x = a, *y = b;
	if (x->core != y->core)
		return x->core < y->core ? -1 : 1;
	return x->first_seq < y->first_seq ? -1 : x->first_seq > y->first_seq;
}

int sl_ulog_list(const char *dir, struct sl_ulog_segment **out, size_t *num)
{
	*out = NULL;
	*num = 0;
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	size_t cap = 0, n = 0;
	struct sl_ulog_segment *segs = NULL;
	struct dirent *de;
	int rc = 0;
	while ((de = readdir(d)) != NULL) {
		uint32_t core;
		uint64_t first;
		if (!sl_ulog_segment_name(de->d_name, &core, &first))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			struct sl_ulog_segment *m = realloc(segs, cap * sizeof *segs);
			if (!m) {
				rc = -ENOMEM;
				break;
			}
			segs = m;
		}
		size_t pl = strlen(dir) + 1 + strlen(de->d_name) + 1;
		char *path = malloc(pl);
		if (!path) {
			rc = -ENOMEM;
			break;
		}
		snprintf(path, pl, "%s/%s", dir, de->d_name);
		segs[n++] = (struct sl_ulog_segment){ .path = path, .core = core, .first_seq = first };
	}
	closedir(d);
	if (rc != 0) {
		sl_ulog_list_free(segs, n);
		return rc;
	}
	if (n)
		qsort(segs, n, sizeof *segs, seg_cmp);
	*out = segs;
	*num = n;
	return 0;
}

void sl_ulog_list_free(struct sl_ulog_segment *segs, size_t num)
{
	for (size_t i = 0; i < num; i++)
		free(segs[i].path);
	free(segs);
}

static const char *damage_name(enum sl_ulog_damage d)
{
	switch (d) {
	case SL_ULOG_OK:
		return "ok";
	case SL_ULOG_BAD_HEADER:
		return "bad header";
	case SL_ULOG_TORN:
		return "torn frame";
	case SL_ULOG_BAD_CRC:
		return "checksum mismatch";
	case SL_ULOG_BAD_LEN:
		return "bad length";
	case SL_ULOG_BAD_RECORD:
		return "bad record";
	case SL_ULOG_SEQ_GAP:
		return "sequence gap";
	}
	return "?";
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) == 0 ? 0 : -errno;
	close(fd);
	return rc;
}

/* set_aside renames a file that is not a segment (a bad header) out of the
 * writers' way, keeping it for the operator. */
static void set_aside(const char *dir, const char *path, FILE *report, const char *why)
{
	char aside[PATH_MAX];
	if ((size_t)snprintf(aside, sizeof aside, "%s.bad", path) >= sizeof aside ||
	    rename(path, aside) != 0) {
		if (report)
			fprintf(report, "usage log: %s: %s; cannot set it aside: %s\n", path, why,
			        strerror(errno));
		return;
	}
	fsync_dir(dir);
	if (report)
		fprintf(report, "usage log: %s: %s; set aside as %s\n", path, why, aside);
}

int sl_ulog_recover(const char *dir, uint64_t *next_seq, uint32_t num_cores, FILE *report)
{
	for (uint32_t i = 0; i < num_cores; i++)
		next_seq[i] = 0;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return -errno;
	struct sl_ulog_segment *segs;
	size_t n;
	int rc = sl_ulog_list(dir, &segs, &n);
	if (rc != 0)
		return rc;
	uint64_t next = 0; /* the seq the current core continues from */
	for (size_t i = 0; i < n; i++) {
		const struct sl_ulog_segment *s = &segs[i];
		bool first_of_core = i == 0 || segs[i - 1].core != s->core;
		bool last_of_core = i + 1 == n || segs[i + 1].core != s->core;
		if (first_of_core)
			next = 0;
		/* each segment is checked against its own name, so damage in
		 * one never condemns the next; a gap between them is reported */
		struct sl_ulog_scan sc;
		rc = sl_ulog_scan_file(s->path, s->first_seq, &sc, NULL, NULL);
		if (rc != 0)
			break;
		if (sc.damage == SL_ULOG_OK && sc.core != s->core)
			sc.damage = SL_ULOG_BAD_HEADER; /* another core's segment, renamed */
		if (sc.damage == SL_ULOG_BAD_HEADER) {
			if (sc.file_bytes < SL_ULOG_HEADER_LEN && last_of_core) {
				/* created, its header never made it: nothing in it */
				if (report)
					fprintf(report,
					        "usage log: %s: empty segment (%llu bytes) removed\n",
					        s->path, (unsigned long long)sc.file_bytes);
				unlink(s->path);
				fsync_dir(dir);
			} else {
				set_aside(dir, s->path, report, "not a segment of this core");
			}
			goto next_seg;
		}
		if (!first_of_core && s->first_seq != next && report)
			fprintf(report, "usage log: %s: starts at seq %llu, the core's previous segment "
			                "ends before %llu (records missing or repeated)\n",
			        s->path, (unsigned long long)s->first_seq, (unsigned long long)next);
		if (sc.damage != SL_ULOG_OK && last_of_core) {
			if (report)
				fprintf(report,
				        "usage log: %s: %s at byte %llu: cut %llu bytes, %llu "
				        "records kept\n",
				        s->path, damage_name(sc.damage),
				        (unsigned long long)sc.good_bytes,
				        (unsigned long long)(sc.file_bytes - sc.good_bytes),
				        (unsigned long long)sc.records);
			int fd = open(s->path, O_WRONLY | O_CLOEXEC);
			if (fd < 0 || ftruncate(fd, (off_t)sc.good_bytes) != 0 || fdatasync(fd) != 0) {
				rc = -errno;
				if (fd >= 0)
					close(fd);
				break;
			}
			close(fd);
		} else if (sc.damage != SL_ULOG_OK && report) {
			fprintf(report,
			        "usage log: %s: %s at byte %llu (not the last segment: left as "
			        "is, see `sluice usage verify`)\n",
			        s->path, damage_name(sc.damage), (unsigned long long)sc.good_bytes);
		}
		if (sc.records) {
			next = sc.last_seq + 1;
		} else if (last_of_core) {
			/* opened and never written (or cut to nothing): the next
			 * writer of this core opens this very name */
			unlink(s->path);
			fsync_dir(dir);
			next = SL_MAX(next, s->first_seq);
		}
	next_seg:
		if (last_of_core && s->core < num_cores)
			next_seq[s->core] = next;
		else if (last_of_core && report)
			fprintf(report, "usage log: core %u's segments kept (no such reactor now)\n",
			        s->core);
	}
	sl_ulog_list_free(segs, n);
	return rc;
}

/* --- writing ------------------------------------------------------------------------ */

struct ulog_buf {
	uint8_t *p;
	size_t len;
};

/*
 * Two buffers and two operations, pipelined: `fill` takes records while
 * `flight` is being written, and the fdatasync of what was written runs
 * beside the next write. A write puts the records in the page cache, safe
 * from a process crash; the fsync makes them safe from a power cut. So a
 * slow fsync never holds records back from the page cache: a SIGKILL loses
 * at most the records of the last flush_ms (plus one write's latency),
 * whatever the disk does.
 */
struct sl_ulog {
	struct sl_ulog_config cfg;
	char *dir;
	int fd;
	uint64_t seg_bytes; /* written or being written into the current segment */
	uint64_t seg_opened_ms;
	uint64_t next_seq;
	struct ulog_buf fill, flight;
	size_t flight_done; /* bytes of flight written so far */
	uint64_t flight_off;
	bool write_in_flight;
	bool fsync_in_flight;
	bool fsync_wanted;  /* a write completed while an fsync was in flight */
	bool seg_broken;    /* a write failed: rotate before writing again */
	/* durability, by seq: every record below durable_seq is on disk */
	uint64_t flight_end;      /* next_seq when the flight was taken */
	uint64_t sync_written;    /* next_seq after the last synchronous write */
	uint64_t written_seq;     /* records below it are written (page cache) */
	uint64_t fsync_covers;    /* written_seq when the fsync in flight was queued */
	uint64_t durable_seq;
	uint64_t oldest_ms; /* the first record waiting in fill; 0: none */
	struct sl_ulog_stats stats;
};

static uint64_t monotonic_ms_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}


/* segment_open starts a new segment named after next_seq. The previous
 * one, if any, is synced and closed first: callers make sure nothing is in
 * flight on it. */
static int segment_open(struct sl_ulog *l, uint64_t first_seq, uint64_t now_ms)
{
	char path[PATH_MAX];
	if ((size_t)snprintf(path, sizeof path, "%s/usage-c%03u-%016llx.log", l->dir,
	                     l->cfg.core % 1000, (unsigned long long)first_seq) >= sizeof path)
		return -ENAMETOOLONG;
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	uint8_t h[SL_ULOG_HEADER_LEN];
	header_make(h, l->cfg.core);
	int rc = sl_pwrite_all(fd, h, sizeof h, 0);
	if (rc == 0)
		rc = fsync_dir(l->dir);
	if (rc == 0 && l->fd >= 0 && !l->seg_broken && fdatasync(l->fd) != 0)
		rc = -errno;
	if (rc != 0) {
		close(fd);
		unlink(path);
		return rc;
	}
	if (l->fd >= 0)
		close(l->fd);
	l->fd = fd;
	l->seg_bytes = SL_ULOG_HEADER_LEN;
	l->seg_opened_ms = now_ms;
	l->stats.segments++;
	return 0;
}

int sl_ulog_open(struct sl_ulog **out, const struct sl_ulog_config *cfg)
{
	struct sl_ulog *l = calloc(1, sizeof *l);
	if (!l)
		return -ENOMEM;
	l->cfg = *cfg;
	if (!l->cfg.buffer_bytes)
		l->cfg.buffer_bytes = 1 << 20;
	if (l->cfg.buffer_bytes < 2 * (SL_ULOG_FRAME_HEAD + SL_ULOG_PAYLOAD_MAX))
		l->cfg.buffer_bytes = 2 * (SL_ULOG_FRAME_HEAD + SL_ULOG_PAYLOAD_MAX);
	if (!l->cfg.flush_ms)
		l->cfg.flush_ms = 5;
	if (!l->cfg.segment_bytes_max)
		l->cfg.segment_bytes_max = (uint64_t)64 << 20;
	if (!l->cfg.segment_age_max_s)
		l->cfg.segment_age_max_s = 3600;
	l->fd = -1;
	l->next_seq = cfg->next_seq;
	l->flight_end = l->sync_written = l->written_seq = l->fsync_covers = l->durable_seq =
	    cfg->next_seq;
	l->dir = strdup(cfg->dir);
	l->fill.p = malloc(l->cfg.buffer_bytes);
	l->flight.p = malloc(l->cfg.buffer_bytes);
	int rc = -ENOMEM;
	if (!l->dir || !l->fill.p || !l->flight.p)
		goto fail;
	if (mkdir(l->dir, 0700) != 0 && errno != EEXIST) {
		rc = -errno;
		goto fail;
	}
	rc = segment_open(l, l->next_seq, monotonic_ms_now());
	if (rc != 0)
		goto fail;
	*out = l;
	return 0;
fail:
	free(l->fill.p);
	free(l->flight.p);
	free(l->dir);
	free(l);
	return rc;
}

/* fill_sync writes the fill buffer synchronously, after whatever is being
 * written: both buffers were busy, and a record is never dropped. */
static int fill_sync(struct sl_ulog *l)
{
	int rc = sl_pwrite_all(l->fd, l->fill.p, l->fill.len, l->seg_bytes);
	if (rc == 0 && fdatasync(l->fd) != 0)
		rc = -errno;
	if (rc != 0) {
		l->stats.errors++;
		return rc;
	}
	l->seg_bytes += l->fill.len;
	l->fill.len = 0;
	l->oldest_ms = 0;
	l->stats.sync_writes++;
	l->sync_written = l->next_seq;
	if (!l->write_in_flight) /* nothing below is still on its way: all synced */
		l->written_seq = l->durable_seq = l->next_seq;
	return 0;
}

int sl_ulog_append(struct sl_ulog *l, const struct sl_usage_record *rec, uint64_t now_ms)
{
	if (l->cfg.buffer_bytes - l->fill.len < SL_ULOG_FRAME_HEAD + SL_ULOG_PAYLOAD_MAX) {
		int rc = fill_sync(l);
		if (rc != 0)
			return rc;
	}
	uint8_t *f = l->fill.p + l->fill.len;
	int n = sl_usage_record_encode(rec, f + SL_ULOG_FRAME_HEAD, SL_ULOG_PAYLOAD_MAX);
	if (n < 0)
		return n;
	sl_put_le32(f, (uint32_t)n);
	sl_put_le64(f + 8, l->next_seq);
	sl_put_le32(f + 4, frame_crc(f, (size_t)n));
	l->fill.len += SL_ULOG_FRAME_HEAD + (size_t)n;
	l->next_seq++;
	l->stats.records++;
	if (!l->oldest_ms)
		l->oldest_ms = now_ms ? now_ms : 1;
	return 0;
}

bool sl_ulog_flush_due(const struct sl_ulog *l, uint64_t now_ms)
{
	if (l->write_in_flight || l->fill.len == 0 || (l->seg_broken && l->fsync_in_flight))
		return false;
	if (l->cfg.strict)
		return true; /* responses wait: write now, batching what came meanwhile */
	return now_ms >= l->oldest_ms + l->cfg.flush_ms || l->fill.len >= l->cfg.buffer_bytes / 2;
}

uint64_t sl_ulog_next_deadline(const struct sl_ulog *l)
{
	if (l->fill.len == 0 || l->write_in_flight || (l->seg_broken && l->fsync_in_flight))
		return UINT64_MAX;
	if (l->cfg.strict)
		return 0;
	return l->oldest_ms + l->cfg.flush_ms;
}

static struct io_uring_sqe *get_sqe(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	if (!sqe) {
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	SL_ASSERT(sqe != NULL);
	return sqe;
}

static void queue_write(struct sl_ulog *l, struct io_uring *ring, uint64_t ud)
{
	struct io_uring_sqe *sqe = get_sqe(ring);
	io_uring_prep_write(sqe, l->fd, l->flight.p + l->flight_done,
	                    (unsigned)(l->flight.len - l->flight_done), l->flight_off + l->flight_done);
	io_uring_sqe_set_data64(sqe, ud);
}

static void queue_fsync(struct sl_ulog *l, struct io_uring *ring, uint64_t ud)
{
	struct io_uring_sqe *sqe = get_sqe(ring);
	io_uring_prep_fsync(sqe, l->fd, IORING_FSYNC_DATASYNC);
	io_uring_sqe_set_data64(sqe, ud);
	l->fsync_covers = l->written_seq;
	l->fsync_in_flight = true;
	l->fsync_wanted = false;
}

int sl_ulog_flush_start(struct sl_ulog *l, struct io_uring *ring, uint64_t ud_write,
                        uint64_t now_ms)
{
	if (l->write_in_flight || l->fill.len == 0 || (l->seg_broken && l->fsync_in_flight))
		return 0;
	if ((l->seg_broken || l->seg_bytes >= l->cfg.segment_bytes_max ||
	     now_ms >= l->seg_opened_ms + (uint64_t)l->cfg.segment_age_max_s * 1000) &&
	    !l->fsync_in_flight) {
		/* rotate: the new segment is named after the first record
		 * waiting in fill; the old one is synced and closed (a blocking
		 * open + fdatasync, once per segment) */
		int rc = segment_open(l, sl_get_le64(l->fill.p + 8), now_ms);
		if (rc == 0)
			l->seg_broken = false;
		if (rc != 0 && l->seg_broken) {
			l->stats.errors++;
			return rc; /* records stay in fill until a segment can be opened */
		}
		if (rc != 0) {
			l->stats.errors++; /* records stay; the old segment goes on */
			fprintf(stderr, "sluice: usage log: cannot rotate: %s\n", strerror(-rc));
			l->seg_opened_ms = now_ms; /* try again a period later */
		}
	}
	struct ulog_buf t = l->flight;
	l->flight = l->fill;
	l->fill = t;
	l->fill.len = 0;
	l->oldest_ms = 0;
	l->flight_done = 0;
	l->flight_end = l->next_seq;
	l->flight_off = l->seg_bytes;
	l->seg_bytes += l->flight.len;
	l->write_in_flight = true;
	queue_write(l, ring, ud_write);
	return 0;
}

int sl_ulog_on_write(struct sl_ulog *l, struct io_uring *ring, int res, uint64_t ud_write,
                     uint64_t ud_fsync)
{
	SL_ASSERT(l->write_in_flight);
	int rc = 0;
	if (res < 0 && res != -EINTR && res != -EAGAIN) {
		/* once more, synchronously; if that fails too the batch is
		 * lost (the caller says so loudly) and nothing more goes into
		 * this segment, which would now have a hole: the next flush
		 * starts a new one, and `verify` reports the missing seqs */
		rc = sl_pwrite_all(l->fd, l->flight.p + l->flight_done, l->flight.len - l->flight_done,
		               l->flight_off + l->flight_done);
		if (rc != 0) {
			l->stats.errors++;
			l->seg_broken = true;
		}
		l->flight_done = l->flight.len;
	} else if (res > 0) {
		l->flight_done += (size_t)res;
	}
	if (l->flight_done < l->flight.len) {
		queue_write(l, ring, ud_write); /* the rest of a short write */
		return 0;
	}
	l->write_in_flight = false;
	l->flight.len = 0;
	l->stats.flushes++;
	/* (after a failed write too: the caller is told, and drops whatever
	 * waited for those records, rather than the log stalling) */
	l->written_seq = SL_MAX(l->flight_end, l->sync_written);
	if (l->fsync_in_flight)
		l->fsync_wanted = true;
	else
		queue_fsync(l, ring, ud_fsync);
	return rc;
}

int sl_ulog_on_fsync(struct sl_ulog *l, struct io_uring *ring, int res, uint64_t ud_fsync)
{
	SL_ASSERT(l->fsync_in_flight);
	l->fsync_in_flight = false;
	int rc = 0;
	if (res < 0) {
		rc = fdatasync(l->fd) == 0 ? 0 : -errno;
		if (rc != 0)
			l->stats.errors++;
	}
	l->durable_seq = SL_MAX(l->durable_seq, l->fsync_covers); /* an error: as above */
	if (l->fsync_wanted)
		queue_fsync(l, ring, ud_fsync);
	return rc;
}

uint64_t sl_ulog_last_seq(const struct sl_ulog *l)
{
	return l->next_seq - 1;
}

uint64_t sl_ulog_durable_seq(const struct sl_ulog *l)
{
	return l->durable_seq;
}

bool sl_ulog_idle(const struct sl_ulog *l)
{
	return !l->write_in_flight && !l->fsync_in_flight && l->fill.len == 0;
}

int sl_ulog_close(struct sl_ulog *l)
{
	if (!l)
		return 0;
	int rc = 0;
	if (l->write_in_flight) {
		/* the ring is gone: write the flight again synchronously (same
		 * bytes, same offset: idempotent) */
		rc = sl_pwrite_all(l->fd, l->flight.p, l->flight.len, l->flight_off);
		l->write_in_flight = false;
	}
	if (rc == 0 && l->fill.len)
		rc = sl_pwrite_all(l->fd, l->fill.p, l->fill.len, l->seg_bytes);
	if (rc == 0 && fdatasync(l->fd) != 0)
		rc = -errno;
	if (l->fd >= 0)
		close(l->fd);
	free(l->fill.p);
	free(l->flight.p);
	free(l->dir);
	free(l);
	return rc;
}

void sl_ulog_stats(const struct sl_ulog *l, struct sl_ulog_stats *out)
{
	*out = l->stats;
}
