/*
 * test_usagelog.c - the usage log (usagelog.h): the record codec, the
 * writer through a real io_uring (group commit, rotation, the synchronous
 * path when both buffers are busy, a failed write), and the reader and
 * recovery against torn tails at every byte offset, flipped bytes, sequence
 * gaps and the restarts a crash or an idle run leaves behind.
 *
 * Records are made from their seq (make_record), so a scan can check every
 * field it reads against what was appended. Each case works in its own
 * directory under one mkdtemp'd parent, removed at the end.
 */
#include "sluice/usagelog.h"

#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define UD_WRITE 1
#define UD_FSYNC 2

static char dir_template[] = "/tmp/sluice-test-usagelog-XXXXXX";
static int dir_seq;

/* fresh_dir: a new parent under the temp dir and, in out, the path of its
 * (not yet existing) "usage" directory. */
static const char *fresh_dir(char out[PATH_MAX])
{
	snprintf(out, PATH_MAX, "%s/d%d", dir_template, dir_seq++);
	SL_ASSERT(mkdir(out, 0700) == 0);
	strcat(out, "/usage");
	return out;
}

static uint64_t monotonic_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* --- records made from their seq ---------------------------------------------- */

struct rec_text {
	char request_id[40];
	char key_id[20];
	char model[40];
	char provider[16];
	char upstream_model[64];
};

static const char *const models[] = { "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-flash",
	                              "o3" };
static const char *const providers[] = { "openai", "anthropic", "google", "" };

static struct sl_ustr ustr(const char *s)
{
	return (struct sl_ustr){ s, (uint8_t)strlen(s) };
}

/* make_record: the record appended with seq i, every field set and most of
 * them varying with i (IPv4, IPv6 and unknown addresses; empty strings). */
static void make_record(uint64_t i, struct sl_usage_record *rec, struct rec_text *t)
{
	memset(rec, 0, sizeof *rec);
	snprintf(t->request_id, sizeof t->request_id, "%08x-%04x-4%03x-a%03x-%012" PRIx64,
	         (uint32_t)(i * 2654435761u), (unsigned)(i & 0xffff), (unsigned)(i % 4096),
	         (unsigned)(i % 4093), (uint64_t)(i * UINT64_C(11400714819323198485)) >> 16);
	snprintf(t->key_id, sizeof t->key_id, "k%015" PRIu64, i % 977);
	snprintf(t->model, sizeof t->model, "%s", models[i % 4]);
	snprintf(t->provider, sizeof t->provider, "%s", providers[i % 4]);
	snprintf(t->upstream_model, sizeof t->upstream_model, "%s-2025-%02u-%02u", models[i % 4],
	         (unsigned)(i % 12 + 1), (unsigned)(i % 28 + 1));
	rec->time_unix_ms = UINT64_C(1767225600000) + i * 7;
	rec->route = (uint8_t)(i % 5);
	rec->flags = (uint8_t)(i % 8);
	rec->attempts = (uint8_t)(i % 4);
	rec->status = (uint16_t)(i % 7 ? 200 : 429);
	rec->ttfb_ms = (uint32_t)(i * 13 % 5000);
	rec->total_ms = (uint32_t)(i * 31 % 90000);
	rec->input_tokens = i * 1000 + 17;
	rec->output_tokens = i % 3 ? i * 3 : UINT64_MAX - i;
	rec->cache_read_tokens = i / 2;
	rec->cache_write_tokens = i % 11;
	rec->cache_write_1h_tokens = i % 5;
	rec->images = i % 3;
	rec->cost_pico_usd = i % 5 ? (int64_t)(i * 123) : -(int64_t)i - 1;
	rec->ip_family = (uint8_t)(i % 3 == 0 ? 4 : i % 3 == 1 ? 6 : 0);
	if (rec->ip_family)
		for (int b = 0; b < (rec->ip_family == 4 ? 4 : 16); b++)
			rec->ip[b] = (uint8_t)(i * 7 + (uint64_t)b * 31);
	rec->request_id = ustr(t->request_id);
	rec->key_id = ustr(t->key_id);
	rec->model = ustr(t->model);
	rec->provider = ustr(t->provider);
	rec->upstream_model = i % 9 == 4 ? (struct sl_ustr){ NULL, 0 } : ustr(t->upstream_model);
}

static bool ustr_eq(struct sl_ustr a, struct sl_ustr b)
{
	return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static bool rec_eq(const struct sl_usage_record *a, const struct sl_usage_record *b)
{
	return a->time_unix_ms == b->time_unix_ms && a->route == b->route && a->flags == b->flags &&
	       a->attempts == b->attempts && a->status == b->status && a->ttfb_ms == b->ttfb_ms &&
	       a->total_ms == b->total_ms && a->input_tokens == b->input_tokens &&
	       a->output_tokens == b->output_tokens && a->cache_read_tokens == b->cache_read_tokens &&
	       a->cache_write_tokens == b->cache_write_tokens &&
	       a->cache_write_1h_tokens == b->cache_write_1h_tokens && a->images == b->images &&
	       a->cost_pico_usd == b->cost_pico_usd && a->ip_family == b->ip_family &&
	       memcmp(a->ip, b->ip, 16) == 0 && ustr_eq(a->request_id, b->request_id) &&
	       ustr_eq(a->key_id, b->key_id) && ustr_eq(a->model, b->model) &&
	       ustr_eq(a->provider, b->provider) && ustr_eq(a->upstream_model, b->upstream_model);
}

/* The visitor of every scan: records must come in seq order (each one the
 * previous + 1) and equal what make_record gives for their seq. */
struct visit_check {
	uint64_t visits;
	uint64_t next_seq; /* UINT64_MAX: the first visit takes any */
	uint64_t out_of_order, unequal;
};

static int visit_check(void *arg, uint64_t seq, const struct sl_usage_record *rec)
{
	struct visit_check *v = arg;
	if (v->next_seq != UINT64_MAX && seq != v->next_seq)
		v->out_of_order++;
	v->next_seq = seq + 1;
	struct sl_usage_record want;
	struct rec_text t;
	make_record(seq, &want, &t);
	if (!rec_eq(rec, &want))
		v->unequal++;
	v->visits++;
	return 0;
}

/* --- the writer, driven as a reactor drives it ------------------------------------ */

static int append_range(struct sl_ulog *l, uint64_t first, uint64_t num, uint64_t now_ms)
{
	for (uint64_t i = first; i < first + num; i++) {
		struct sl_usage_record rec;
		struct rec_text t;
		make_record(i, &rec, &t);
		int rc = sl_ulog_append(l, &rec, now_ms);
		if (rc != 0)
			return rc;
	}
	return 0;
}

/* The completions the ring owes: submitted operations not yet reaped. The
 * cases use one ring at a time (ring_init resets it). */
static unsigned ops_out;

static int ring_init(struct io_uring *ring)
{
	ops_out = 0;
	return io_uring_queue_init(64, ring, 0);
}

static void submit(struct io_uring *ring)
{
	int n = io_uring_submit(ring);
	SL_ASSERT(n >= 0);
	ops_out += (unsigned)n;
}

/* reap_one: submits what is queued, waits (5 s at most) for one completion
 * and hands it to the writer by its user_data, as the reactor's handle_cqe
 * does. Returns the handler's result, or -ETIMEDOUT. */
static int reap_one(struct sl_ulog *l, struct io_uring *ring)
{
	submit(ring);
	struct io_uring_cqe *cqe = NULL;
	struct __kernel_timespec ts = { .tv_sec = 5 };
	int rc = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
	if (rc != 0 || !cqe)
		return -ETIMEDOUT;
	uint64_t ud = cqe->user_data;
	int res = cqe->res;
	io_uring_cqe_seen(ring, cqe);
	SL_ASSERT(ops_out > 0);
	ops_out--;
	if (ud == UD_WRITE)
		return sl_ulog_on_write(l, ring, res, UD_WRITE, UD_FSYNC);
	SL_ASSERT(ud == UD_FSYNC);
	return sl_ulog_on_fsync(l, ring, res, UD_FSYNC);
}

/* drain: completions until the ring owes none (the writes and fsyncs the
 * handlers queue included). Returns 0, the first handler error, or
 * -ETIMEDOUT. */
static int drain(struct sl_ulog *l, struct io_uring *ring)
{
	int first = 0;
	for (int i = 0; i < 10000 && (ops_out > 0 || io_uring_sq_ready(ring) > 0); i++) {
		int rc = reap_one(l, ring);
		if (rc == -ETIMEDOUT)
			return rc;
		if (rc != 0 && first == 0)
			first = rc;
	}
	return first;
}

static uint64_t flushes_of(const struct sl_ulog *l)
{
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	return st.flushes;
}

/* flush_now: one group commit to its end (write, then fdatasync), as the
 * reactor's loop runs it. Returns 0 when there was nothing to flush. */
static int flush_now(struct sl_ulog *l, struct io_uring *ring, uint64_t now_ms)
{
	int rc = sl_ulog_flush_start(l, ring, UD_WRITE, now_ms);
	if (rc != 0)
		return rc;
	return drain(l, ring);
}

static struct sl_ulog *open_writer(const char *dir, uint32_t core, uint64_t next_seq)
{
	struct sl_ulog_config cfg = { .dir = dir, .core = core, .next_seq = next_seq };
	struct sl_ulog *l = NULL;
	int rc = sl_ulog_open(&l, &cfg);
	if (rc != 0) {
		fprintf(stderr, "sl_ulog_open %s core %u seq %" PRIu64 ": %s\n", dir, core, next_seq,
		        strerror(-rc));
		return NULL;
	}
	return l;
}

/* write_segment: a writer that appends num records from next_seq and
 * closes (the synchronous exit path writes them). */
static void write_segment(const char *dir, uint32_t core, uint64_t next_seq, uint64_t num)
{
	struct sl_ulog *l = open_writer(dir, core, next_seq);
	SL_ASSERT(l != NULL);
	SL_ASSERT(append_range(l, next_seq, num, monotonic_ms()) == 0);
	SL_ASSERT(sl_ulog_close(l) == 0);
}

static char *segment_path(const char *dir, uint32_t core, uint64_t first_seq)
{
	static char path[PATH_MAX];
	SL_ASSERT((size_t)snprintf(path, sizeof path, "%s/usage-c%03u-%016" PRIx64 ".log", dir, core,
	                           first_seq) < sizeof path);
	return path;
}

static long long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static size_t read_file(const char *path, uint8_t *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	SL_ASSERT(fd >= 0);
	ssize_t n = read(fd, buf, cap);
	SL_ASSERT(n >= 0 && (size_t)n < cap);
	close(fd);
	return (size_t)n;
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	SL_ASSERT(fd >= 0);
	SL_ASSERT(write(fd, buf, len) == (ssize_t)len);
	close(fd);
}

static void flip_byte(const char *path, long long at, uint8_t mask)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	SL_ASSERT(fd >= 0);
	uint8_t b;
	SL_ASSERT(pread(fd, &b, 1, at) == 1);
	b ^= mask;
	SL_ASSERT(pwrite(fd, &b, 1, at) == 1);
	close(fd);
}

/* frame_end: the offset just past frame k (0-based) of a segment's bytes. */
static size_t frame_end(const uint8_t *seg, size_t len, int k)
{
	size_t off = SL_ULOG_HEADER_LEN;
	for (int i = 0; i <= k; i++) {
		SL_ASSERT(off + 4 <= len);
		off += SL_ULOG_FRAME_HEAD + sl_get_le32(seg + off);
	}
	SL_ASSERT(off <= len);
	return off;
}

static struct sl_ulog_scan scan(const char *path, uint64_t expected_seq, struct visit_check *v)
{
	struct sl_ulog_scan sc;
	v->next_seq = expected_seq;
	int rc = sl_ulog_scan_file(path, expected_seq, &sc, visit_check, v);
	if (rc != 0) {
		/* unreadable (removed?): reads as no segment at all */
		memset(&sc, 0, sizeof sc);
		sc.damage = SL_ULOG_BAD_HEADER;
	}
	return sc;
}

/* --- the record codec ----------------------------------------------------------------- */

TEST(record_round_trip_all_fields)
{
	struct sl_usage_record rec = {
		.time_unix_ms = UINT64_C(1767225600123),
		.route = 3,
		.flags = SL_UREC_STREAM | SL_UREC_ESTIMATED | SL_UREC_REFUSED,
		.attempts = 2,
		.status = 529,
		.ttfb_ms = 4294967295u,
		.total_ms = 123456,
		.input_tokens = UINT64_MAX,
		.output_tokens = 1,
		.cache_read_tokens = UINT64_C(0x0102030405060708),
		.cache_write_tokens = 99,
		.cache_write_1h_tokens = 33,
		.cost_pico_usd = INT64_MIN + 5,
		.ip_family = 6,
		.ip = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef },
		.request_id = ustr("5f0c2a6e-8e2b-4c1e-9a57-1b2c3d4e5f60"),
		.key_id = ustr("k7Hq2pXw9ZbN4mR1"),
		.model = ustr("claude-sonnet-4"),
		.provider = ustr("anthropic"),
		.upstream_model = ustr("claude-sonnet-4-20250514"),
	};
	uint8_t buf[SL_ULOG_PAYLOAD_MAX];
	int n = sl_usage_record_encode(&rec, buf, sizeof buf);
	CHECK(n > 0 && n <= SL_ULOG_PAYLOAD_MAX);
	struct sl_usage_record back;
	memset(&back, 0xa5, sizeof back);
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), 0);
	CHECK(rec_eq(&rec, &back));
	/* strings point into the payload, not copies of the input */
	CHECK((const uint8_t *)back.request_id.p >= buf && (const uint8_t *)back.request_id.p < buf + n);
	CHECK_EQ_MEM(back.upstream_model.p, back.upstream_model.len, "claude-sonnet-4-20250514");

	/* an IPv4 client and an unknown one */
	rec.ip_family = 4;
	memset(rec.ip, 0, sizeof rec.ip);
	memcpy(rec.ip, "\x0a\x00\x00\x07", 4);
	n = sl_usage_record_encode(&rec, buf, sizeof buf);
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), 0);
	CHECK(rec_eq(&rec, &back));
	rec.ip_family = 0;
	memset(rec.ip, 0, sizeof rec.ip);
	n = sl_usage_record_encode(&rec, buf, sizeof buf);
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), 0);
	CHECK(rec_eq(&rec, &back));

	/* and a few hundred made ones */
	for (uint64_t i = 0; i < 500; i++) {
		struct rec_text t;
		make_record(i, &rec, &t);
		n = sl_usage_record_encode(&rec, buf, sizeof buf);
		CHECK(n > 0);
		CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), 0);
		CHECK(rec_eq(&rec, &back));
	}
}

TEST(record_round_trip_empty_strings)
{
	struct sl_usage_record rec = { .status = 401, .flags = SL_UREC_REFUSED, .ip_family = 4 };
	memcpy(rec.ip, "\x7f\x00\x00\x01", 4);
	uint8_t buf[SL_ULOG_PAYLOAD_MAX];
	int n = sl_usage_record_encode(&rec, buf, sizeof buf);
	CHECK(n > 0);
	struct sl_usage_record back;
	memset(&back, 0xa5, sizeof back);
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), 0);
	CHECK(rec_eq(&rec, &back));
	CHECK_EQ_INT(back.request_id.len + back.key_id.len + back.model.len + back.provider.len +
	                     back.upstream_model.len,
	             0);
	/* every string costs its length byte, no more */
	rec.model = ustr("m");
	CHECK_EQ_INT(sl_usage_record_encode(&rec, buf, sizeof buf), n + 1);
}

/* A string field cannot carry more than SL_ULOG_STR_MAX bytes: its length is
 * a uint8_t, so "cut" happens where a caller fills the field (proxy.c cuts
 * with SL_MIN(len, 255)). What is checked: the type and SL_ULOG_STR_MAX
 * agree, a caller's cut of a 300-byte name keeps its first 255 bytes, five
 * strings at the maximum fit a payload and round-trip, and an encode into
 * a buffer one byte too small is refused. */
TEST(record_longest_strings_cut_and_fit)
{
	_Static_assert((uint8_t)-1 == SL_ULOG_STR_MAX, "sl_ustr.len holds exactly SL_ULOG_STR_MAX");
	char long_name[300];
	for (size_t i = 0; i < sizeof long_name; i++)
		long_name[i] = (char)('a' + i % 26);
	struct sl_ustr cut = { long_name, (uint8_t)SL_MIN(sizeof long_name, (size_t)SL_ULOG_STR_MAX) };
	struct sl_usage_record rec = {
		.request_id = cut, .key_id = cut, .model = cut, .provider = cut, .upstream_model = cut,
	};
	uint8_t buf[SL_ULOG_PAYLOAD_MAX + 16];
	int n = sl_usage_record_encode(&rec, buf, sizeof buf);
	CHECK(n > 5 * SL_ULOG_STR_MAX && n <= SL_ULOG_PAYLOAD_MAX);
	struct sl_usage_record back;
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), 0);
	CHECK_EQ_INT(back.model.len, SL_ULOG_STR_MAX);
	CHECK(memcmp(back.model.p, long_name, SL_ULOG_STR_MAX) == 0);
	CHECK(rec_eq(&rec, &back));
	CHECK_EQ_INT(sl_usage_record_encode(&rec, buf, (size_t)n - 1), -ENOSPC);
	CHECK_EQ_INT(sl_usage_record_encode(&rec, buf, (size_t)n), n);
}

TEST(record_decode_refuses_bad_payloads)
{
	struct sl_usage_record rec, back;
	struct rec_text t;
	make_record(42, &rec, &t);
	uint8_t buf[SL_ULOG_PAYLOAD_MAX + 1];
	int n = sl_usage_record_encode(&rec, buf, sizeof buf);
	SL_ASSERT(n > 0);
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), 0);

	/* one byte more (whatever it is), one byte less, nothing */
	buf[n] = 0;
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n + 1, &back), -EINVAL);
	buf[n] = 0x41;
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n + 1, &back), -EINVAL);
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n - 1, &back), -EINVAL);
	CHECK_EQ_INT(sl_usage_record_decode(buf, 0, &back), -EINVAL);
	CHECK_EQ_INT(sl_usage_record_decode(buf, 1, &back), -EINVAL);

	/* every shorter cut is refused too */
	for (int len = 0; len < n; len++)
		CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)len, &back), -EINVAL);

	/* another version */
	uint8_t v = buf[0];
	buf[0] = SL_ULOG_RECORD_VERSION + 1;
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), -EINVAL);
	buf[0] = 0;
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), -EINVAL);
	buf[0] = v;
	CHECK_EQ_INT(sl_usage_record_decode(buf, (size_t)n, &back), 0);

	/* garbage: text, all ones, all zeros */
	uint8_t junk[600];
	memset(junk, 'A', sizeof junk);
	CHECK_EQ_INT(sl_usage_record_decode(junk, sizeof junk, &back), -EINVAL);
	memset(junk, 0xff, sizeof junk);
	CHECK_EQ_INT(sl_usage_record_decode(junk, sizeof junk, &back), -EINVAL);
	memset(junk, 0, sizeof junk);
	CHECK_EQ_INT(sl_usage_record_decode(junk, sizeof junk, &back), -EINVAL);
	/* version 1 but a string length running past the end */
	memcpy(junk, buf, (size_t)n);
	junk[96] = 250; /* the first string's length byte */
	CHECK_EQ_INT(sl_usage_record_decode(junk, (size_t)n, &back), -EINVAL);
	/* and a pseudo-random flood, version byte set: refused or accepted, never a crash */
	uint64_t x = 0x9e3779b97f4a7c15ull;
	int accepted = 0;
	for (int i = 0; i < 20000; i++) {
		size_t len = (size_t)(x % 400);
		for (size_t k = 0; k < len; k++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			junk[k] = (uint8_t)x;
		}
		if (len)
			junk[0] = SL_ULOG_RECORD_VERSION;
		if (sl_usage_record_decode(junk, len, &back) == 0)
			accepted++;
	}
	CHECK(accepted < 20); /* random bytes are not records */
}

/* --- writing and scanning --------------------------------------------------------------- */

TEST(writer_1000_records_scan_back)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	struct sl_ulog *l = open_writer(dir, 3, 100);
	CHECK(l != NULL);
	if (!l)
		return;
	CHECK_EQ_INT(append_range(l, 100, 1000, monotonic_ms()), 0);
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	CHECK_EQ_INT(st.records, 1000);
	CHECK_EQ_INT(st.segments, 1);
	CHECK_EQ_INT(sl_ulog_close(l), 0);

	struct sl_ulog_segment *segs;
	size_t num;
	CHECK_EQ_INT(sl_ulog_list(dir, &segs, &num), 0);
	CHECK_EQ_INT(num, 1);
	if (num != 1)
		return;
	const char *base = strrchr(segs[0].path, '/') + 1;
	CHECK_EQ_MEM(base, strlen(base), "usage-c003-0000000000000064.log");
	CHECK_EQ_INT(segs[0].core, 3);
	CHECK_EQ_INT(segs[0].first_seq, 100);

	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(segs[0].path, 100, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.core, 3);
	CHECK_EQ_INT(sc.records, 1000);
	CHECK_EQ_INT(v.visits, 1000);
	CHECK_EQ_INT(sc.first_seq, 100);
	CHECK_EQ_INT(sc.last_seq, 1099);
	CHECK_EQ_INT(sc.good_bytes, sc.file_bytes);
	CHECK_EQ_INT(sc.file_bytes, file_size(segs[0].path));
	CHECK_EQ_INT(v.out_of_order, 0);
	CHECK_EQ_INT(v.unequal, 0);
	/* whatever the first seq is, when none is expected */
	v = (struct visit_check){ 0 };
	sc = scan(segs[0].path, UINT64_MAX, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(v.visits, 1000);
	sl_ulog_list_free(segs, num);
}

/* A visitor that stops the scan at the third record, returning 77. */
static int visit_stop_at_3(void *arg, uint64_t seq, const struct sl_usage_record *rec)
{
	uint64_t *n = arg;
	return ++*n == 3 ? 77 : 0;
}

TEST(scan_visitor_stop_and_names)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	write_segment(dir, 0, 0, 10);
	uint64_t n = 0;
	struct sl_ulog_scan sc;
	CHECK_EQ_INT(sl_ulog_scan_file(segment_path(dir, 0, 0), 0, &sc, visit_stop_at_3, &n), 77);
	CHECK_EQ_INT(n, 3);
	CHECK(sl_ulog_scan_file(segment_path(dir, 0, 99), 0, &sc, NULL, NULL) == -ENOENT);

	uint32_t core;
	uint64_t first;
	CHECK(sl_ulog_segment_name("usage-c007-00000000000003e8.log", &core, &first));
	CHECK_EQ_INT(core, 7);
	CHECK_EQ_INT(first, 1000);
	CHECK(!sl_ulog_segment_name("usage-c007-00000000000003e8.lo", &core, &first));
	CHECK(!sl_ulog_segment_name("usage-c07-00000000000003e8.log", &core, &first));
	CHECK(!sl_ulog_segment_name("usage-c007-00000000000003E8.log", &core, &first));
	CHECK(!sl_ulog_segment_name("usage-c007-00000000000003e8.log.tmp", &core, &first));
	CHECK(!sl_ulog_segment_name("", &core, &first));
}

TEST(flush_through_io_uring)
{
	struct io_uring ring;
	int rc = ring_init(&ring);
	CHECK_EQ_INT(rc, 0);
	if (rc != 0)
		return;
	char dir[PATH_MAX];
	fresh_dir(dir);
	struct sl_ulog *l = open_writer(dir, 0, 0);
	CHECK(l != NULL);
	if (!l) {
		io_uring_queue_exit(&ring);
		return;
	}
	const char *path = segment_path(dir, 0, 0);
	uint64_t now = monotonic_ms();

	/* nothing waits: no deadline, no flush */
	CHECK(sl_ulog_idle(l));
	CHECK_EQ_INT(sl_ulog_next_deadline(l), UINT64_MAX);
	CHECK(!sl_ulog_flush_due(l, now + 1000000));

	uint64_t total = 0;
	for (int round = 0; round < 3; round++) {
		uint64_t num = round == 0 ? 50 : round == 1 ? 1 : 700;
		long long size_before = file_size(path);
		CHECK_EQ_INT(append_range(l, total, num, now), 0);
		total += num;
		/* records wait: a deadline within flush_ms (default 5), due at it */
		CHECK(!sl_ulog_idle(l));
		uint64_t deadline = sl_ulog_next_deadline(l);
		CHECK(deadline != UINT64_MAX && deadline >= now && deadline <= now + 5);
		CHECK(sl_ulog_flush_due(l, deadline));
		CHECK(sl_ulog_flush_due(l, now + 1000));
		/* appending is a memcpy: nothing reached the file yet */
		CHECK_EQ_INT(file_size(path), size_before);

		uint64_t before = flushes_of(l);
		CHECK_EQ_INT(sl_ulog_flush_start(l, &ring, UD_WRITE, deadline), 0);
		/* in flight: neither due nor a deadline, and a second start is a no-op */
		CHECK(!sl_ulog_flush_due(l, deadline + 1000));
		CHECK_EQ_INT(sl_ulog_next_deadline(l), UINT64_MAX);
		CHECK_EQ_INT(io_uring_sq_ready(&ring), 1);
		CHECK_EQ_INT(sl_ulog_flush_start(l, &ring, UD_WRITE, deadline), 0);
		CHECK_EQ_INT(io_uring_sq_ready(&ring), 1);
		CHECK(!sl_ulog_idle(l));
		CHECK_EQ_INT(drain(l, &ring), 0);
		CHECK_EQ_INT(flushes_of(l), before + 1);
		CHECK(sl_ulog_idle(l));
		CHECK_EQ_INT(sl_ulog_next_deadline(l), UINT64_MAX);
		CHECK(!sl_ulog_flush_due(l, deadline + 1000));
		CHECK_EQ_INT(io_uring_sq_ready(&ring), 0);

		/* durable before close: every record so far is in the file */
		struct visit_check v = { 0 };
		struct sl_ulog_scan sc = scan(path, 0, &v);
		CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
		CHECK_EQ_INT(sc.records, total);
		CHECK_EQ_INT(v.visits, total);
		CHECK_EQ_INT(v.unequal + v.out_of_order, 0);
		CHECK_EQ_INT(sc.good_bytes, sc.file_bytes);
		now += 10;
	}
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	CHECK_EQ_INT(st.flushes, 3);
	CHECK_EQ_INT(st.sync_writes, 0);
	CHECK_EQ_INT(st.errors, 0);
	long long size = file_size(path);
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	CHECK_EQ_INT(file_size(path), size); /* nothing was left to write */
	io_uring_queue_exit(&ring);
}

/* A crash mid-write leaves any prefix of the last frame: recovery cuts it
 * back to the two whole frames, whatever the offset. */
TEST(torn_tail_at_every_offset)
{
	char src_dir[PATH_MAX];
	fresh_dir(src_dir);
	write_segment(src_dir, 0, 7, 3);
	static uint8_t seg[16384];
	size_t full = read_file(segment_path(src_dir, 0, 7), seg, sizeof seg);
	size_t two = frame_end(seg, full, 1);
	CHECK_EQ_INT(frame_end(seg, full, 2), full);
	int cases = 0;
	for (size_t len = two; len < full; len++) {
		char dir[PATH_MAX];
		fresh_dir(dir);
		SL_ASSERT(mkdir(dir, 0700) == 0);
		const char *path = segment_path(dir, 0, 7);
		write_file(path, seg, len);
		uint64_t next_seq[1] = { 12345 };
		int rc = sl_ulog_recover(dir, next_seq, 1, NULL);
		struct visit_check v = { 0 };
		struct sl_ulog_scan sc = scan(path, 7, &v);
		if (rc != 0 || file_size(path) != (long long)two || next_seq[0] != 9 ||
		    sc.damage != SL_ULOG_OK || sc.records != 2 || v.visits != 2 || v.unequal) {
			FAIL_AT("torn_tail_at_every_offset",
			        "length %zu: rc %d, size %lld (want %zu), next_seq %" PRIu64
			        ", damage %d, records %" PRIu64,
			        len, rc, file_size(path), two, next_seq[0], (int)sc.damage, sc.records);
			break;
		}
		cases++;
	}
	CHECK_EQ_INT(cases, full - two);

	/* unrecovered, each cut reads as torn (or, inside the length field,
	 * as torn too: never a good frame) */
	char dir[PATH_MAX];
	fresh_dir(dir);
	SL_ASSERT(mkdir(dir, 0700) == 0);
	const char *path = segment_path(dir, 0, 7);
	for (size_t len = two + 1; len < full; len++) {
		write_file(path, seg, len);
		struct visit_check v = { 0 };
		struct sl_ulog_scan sc = scan(path, 7, &v);
		CHECK_EQ_INT(sc.damage, SL_ULOG_TORN);
		CHECK_EQ_INT(sc.records, 2);
		CHECK_EQ_INT(sc.good_bytes, two);
		CHECK_EQ_INT(sc.file_bytes, len);
	}
}

TEST(corrupt_payload_crc_and_recover_reports)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	write_segment(dir, 0, 0, 3);
	const char *p = segment_path(dir, 0, 0);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s", p);
	static uint8_t seg[16384];
	size_t full = read_file(path, seg, sizeof seg);
	size_t one = frame_end(seg, full, 0), two = frame_end(seg, full, 1);

	/* a byte in the middle record's payload */
	long long at = (long long)(one + SL_ULOG_FRAME_HEAD + (two - one - SL_ULOG_FRAME_HEAD) / 2);
	flip_byte(path, at, 0x10);
	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_BAD_CRC);
	CHECK_EQ_INT(sc.records, 1);
	CHECK_EQ_INT(v.visits, 1);
	CHECK_EQ_INT(sc.good_bytes, one);
	CHECK_EQ_INT(sc.file_bytes, full);

	/* recovery (the core's last segment) cuts it to the one good record and says so */
	char *text = NULL;
	size_t text_len = 0;
	FILE *report = open_memstream(&text, &text_len);
	SL_ASSERT(report != NULL);
	uint64_t next_seq[2] = { 99, 99 };
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 2, report), 0);
	fclose(report);
	CHECK_EQ_INT(file_size(path), one);
	CHECK_EQ_INT(next_seq[0], 1);
	CHECK_EQ_INT(next_seq[1], 0);
	CHECK(text != NULL && strstr(text, "usage-c000-0000000000000000.log") != NULL);
	free(text);
	v = (struct visit_check){ 0 };
	sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, 1);

	/* the seq is covered by the checksum too */
	write_file(path, seg, full);
	flip_byte(path, (long long)one + 8, 0x01);
	v = (struct visit_check){ 0 };
	sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_BAD_CRC);
	CHECK_EQ_INT(sc.records, 1);
	/* so is the checksum field itself */
	write_file(path, seg, full);
	flip_byte(path, (long long)one + 5, 0x80);
	sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_BAD_CRC);
	CHECK_EQ_INT(sc.records, 1);
}

/* Every bit of the middle frame's length field: the scan stops at that
 * frame with a length, checksum or torn verdict (a length running past the
 * end of the file is torn), never a crash and never a good frame. */
TEST(corrupt_length_field)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	write_segment(dir, 0, 0, 3);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s", segment_path(dir, 0, 0));
	static uint8_t seg[16384];
	size_t full = read_file(path, seg, sizeof seg);
	size_t one = frame_end(seg, full, 0);
	int seen_len = 0, seen_crc = 0;
	for (int byte = 0; byte < 4; byte++) {
		for (int bit = 0; bit < 8; bit++) {
			write_file(path, seg, full);
			flip_byte(path, (long long)(one + (size_t)byte), (uint8_t)(1u << bit));
			struct visit_check v = { 0 };
			struct sl_ulog_scan sc = scan(path, 0, &v);
			CHECK(sc.damage == SL_ULOG_BAD_LEN || sc.damage == SL_ULOG_BAD_CRC ||
			      sc.damage == SL_ULOG_TORN);
			CHECK_EQ_INT(sc.records, 1);
			CHECK_EQ_INT(sc.good_bytes, one);
			seen_len += sc.damage == SL_ULOG_BAD_LEN;
			seen_crc += sc.damage == SL_ULOG_BAD_CRC;
		}
	}
	CHECK(seen_len > 0 && seen_crc > 0);
	/* a zero length (a file grown before its data) */
	write_file(path, seg, full);
	memset(seg + one, 0, 4);
	write_file(path, seg, full);
	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_BAD_LEN);
	/* not a segment at all */
	write_file(path, (const uint8_t *)"SLULOG02\0\0\0\0\0\0\0\0", 16);
	sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_BAD_HEADER);
	CHECK_EQ_INT(sc.records, 0);
}

TEST(seq_gap_between_and_within_segments)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	write_segment(dir, 0, 0, 5);   /* seqs 0..4 */
	write_segment(dir, 0, 10, 5);  /* seqs 10..14: 5..9 are missing */
	struct sl_ulog_segment *segs;
	size_t num;
	CHECK_EQ_INT(sl_ulog_list(dir, &segs, &num), 0);
	CHECK_EQ_INT(num, 2);
	if (num != 2)
		return;
	CHECK_EQ_INT(segs[0].first_seq, 0);
	CHECK_EQ_INT(segs[1].first_seq, 10);
	struct visit_check v = { 0 };
	struct sl_ulog_scan a = scan(segs[0].path, UINT64_MAX, &v);
	CHECK_EQ_INT(a.damage, SL_ULOG_OK);
	CHECK_EQ_INT(a.last_seq, 4);
	v = (struct visit_check){ 0 };
	struct sl_ulog_scan b = scan(segs[1].path, a.last_seq + 1, &v);
	CHECK_EQ_INT(b.damage, SL_ULOG_SEQ_GAP);
	CHECK_EQ_INT(b.records, 0);
	CHECK_EQ_INT(v.visits, 0);
	CHECK_EQ_INT(b.good_bytes, SL_ULOG_HEADER_LEN);
	v = (struct visit_check){ 0 };
	b = scan(segs[1].path, 10, &v);
	CHECK_EQ_INT(b.damage, SL_ULOG_OK);
	CHECK_EQ_INT(b.records, 5);

	/* the same gap inside one file: the frames of both, back to back */
	static uint8_t sa[8192], sb[8192], joined[16384];
	size_t la = read_file(segs[0].path, sa, sizeof sa), lb = read_file(segs[1].path, sb, sizeof sb);
	memcpy(joined, sa, la);
	memcpy(joined + la, sb + SL_ULOG_HEADER_LEN, lb - SL_ULOG_HEADER_LEN);
	char other[PATH_MAX];
	fresh_dir(other);
	SL_ASSERT(mkdir(other, 0700) == 0);
	const char *path = segment_path(other, 0, 0);
	write_file(path, joined, la + lb - SL_ULOG_HEADER_LEN);
	v = (struct visit_check){ 0 };
	struct sl_ulog_scan j = scan(path, UINT64_MAX, &v);
	CHECK_EQ_INT(j.damage, SL_ULOG_SEQ_GAP);
	CHECK_EQ_INT(j.records, 5);
	CHECK_EQ_INT(j.good_bytes, la);
	sl_ulog_list_free(segs, num);
}

TEST(rotation_by_size_keeps_seqs_consecutive)
{
	struct io_uring ring;
	int rc = ring_init(&ring);
	CHECK_EQ_INT(rc, 0);
	if (rc != 0)
		return;
	char dir[PATH_MAX];
	fresh_dir(dir);
	struct sl_ulog_config cfg = { .dir = dir, .core = 1, .next_seq = 5000,
		                      .segment_bytes_max = 4096 };
	struct sl_ulog *l = NULL;
	CHECK_EQ_INT(sl_ulog_open(&l, &cfg), 0);
	if (!l) {
		io_uring_queue_exit(&ring);
		return;
	}
	uint64_t now = monotonic_ms(), seq = 5000;
	for (int round = 0; round < 40; round++) {
		uint64_t num = 3 + (uint64_t)round % 17;
		CHECK_EQ_INT(append_range(l, seq, num, now), 0);
		seq += num;
		now += 6;
		CHECK(sl_ulog_flush_due(l, now));
		CHECK_EQ_INT(flush_now(l, &ring, now), 0);
	}
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	CHECK(st.segments >= 4);
	CHECK_EQ_INT(st.flushes, 40);
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	io_uring_queue_exit(&ring);

	struct sl_ulog_segment *segs;
	size_t num;
	CHECK_EQ_INT(sl_ulog_list(dir, &segs, &num), 0);
	CHECK_EQ_INT(num, st.segments);
	CHECK(num >= 4);
	struct visit_check v = { .next_seq = UINT64_MAX };
	uint64_t want = 5000, records = 0;
	for (size_t i = 0; i < num; i++) {
		CHECK_EQ_INT(segs[i].core, 1);
		CHECK_EQ_INT(segs[i].first_seq, want);
		struct sl_ulog_scan sc;
		CHECK_EQ_INT(sl_ulog_scan_file(segs[i].path, want, &sc, visit_check, &v), 0);
		CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
		CHECK_EQ_INT(sc.core, 1);
		CHECK_EQ_INT(sc.first_seq, want);
		CHECK(sc.records > 0);
		/* rotated past 4096 bytes, at a flush boundary */
		if (i + 1 < num)
			CHECK(sc.file_bytes >= 4096 && sc.file_bytes < 4096 + 20 * 400);
		want = sc.last_seq + 1;
		records += sc.records;
	}
	CHECK_EQ_INT(records, seq - 5000);
	CHECK_EQ_INT(v.visits, seq - 5000);
	CHECK_EQ_INT(v.out_of_order + v.unequal, 0);
	/* and recovery agrees: nothing to cut, the core goes on at the next seq */
	uint64_t next_seq[2];
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 2, NULL), 0);
	CHECK_EQ_INT(next_seq[0], 0);
	CHECK_EQ_INT(next_seq[1], seq);
	sl_ulog_list_free(segs, num);
}

TEST(recover_missing_and_empty_dir)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	uint64_t next_seq[4] = { 7, 7, 7, 7 };
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 4, NULL), 0);
	struct stat st;
	CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));
	for (int i = 0; i < 4; i++)
		CHECK_EQ_INT(next_seq[i], 0);
	/* again, now that it exists and is empty; other files are not segments */
	char other[PATH_MAX + 16];
	snprintf(other, sizeof other, "%s/notes.txt", dir);
	write_file(other, (const uint8_t *)"hello", 5);
	next_seq[2] = 7;
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 4, NULL), 0);
	CHECK_EQ_INT(next_seq[2], 0);
	struct sl_ulog_segment *segs;
	size_t num = 9;
	CHECK_EQ_INT(sl_ulog_list(dir, &segs, &num), 0);
	CHECK_EQ_INT(num, 0);
	sl_ulog_list_free(segs, num);
	CHECK_EQ_INT(file_size(other), 5);
}

/* Both buffers busy: a flush submitted but not reaped, and more than a
 * buffer's worth appended. Every record is kept (written synchronously)
 * and the file reads in seq order once the flush has ended. */
TEST(sync_path_when_both_buffers_busy)
{
	struct io_uring ring;
	int rc = ring_init(&ring);
	CHECK_EQ_INT(rc, 0);
	if (rc != 0)
		return;
	char dir[PATH_MAX];
	fresh_dir(dir);
	struct sl_ulog_config cfg = { .dir = dir, .core = 2, .next_seq = 0, .buffer_bytes = 4096 };
	struct sl_ulog *l = NULL;
	CHECK_EQ_INT(sl_ulog_open(&l, &cfg), 0);
	if (!l) {
		io_uring_queue_exit(&ring);
		return;
	}
	uint64_t now = monotonic_ms(), seq = 0;
	while (!sl_ulog_flush_due(l, now) && seq < 1000) {
		CHECK_EQ_INT(append_range(l, seq, 1, now), 0);
		seq++;
	}
	CHECK(seq < 1000); /* half a small buffer makes a flush due before flush_ms */
	CHECK_EQ_INT(sl_ulog_flush_start(l, &ring, UD_WRITE, now), 0);
	submit(&ring);
	CHECK_EQ_INT(ops_out, 1);
	/* 200 records: several buffers' worth while the flight is out */
	CHECK_EQ_INT(append_range(l, seq, 200, now), 0);
	seq += 200;
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	CHECK(st.sync_writes > 0);
	CHECK_EQ_INT(st.records, seq);
	CHECK_EQ_INT(drain(l, &ring), 0);
	/* whatever still waits goes with the next flush */
	CHECK_EQ_INT(append_range(l, seq, 3, now), 0);
	seq += 3;
	CHECK_EQ_INT(flush_now(l, &ring, now + 10), 0);
	CHECK(sl_ulog_idle(l));
	sl_ulog_stats(l, &st);
	CHECK_EQ_INT(st.errors, 0);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s", segment_path(dir, 2, 0));
	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, seq);
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	io_uring_queue_exit(&ring);

	v = (struct visit_check){ 0 };
	sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, seq);
	CHECK_EQ_INT(v.visits, seq);
	CHECK_EQ_INT(v.out_of_order + v.unequal, 0);
	CHECK_EQ_INT(sc.good_bytes, sc.file_bytes);
}

/* A write or fdatasync completion reporting failure is retried
 * synchronously; when the retry succeeds the handler returns 0, the flush
 * goes on to its end and the records are durable. */
TEST(failed_completion_retried_synchronously)
{
	struct io_uring ring;
	int rc = ring_init(&ring);
	CHECK_EQ_INT(rc, 0);
	if (rc != 0)
		return;
	char dir[PATH_MAX];
	fresh_dir(dir);
	struct sl_ulog *l = open_writer(dir, 0, 0);
	CHECK(l != NULL);
	if (!l) {
		io_uring_queue_exit(&ring);
		return;
	}
	uint64_t now = monotonic_ms();
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s", segment_path(dir, 0, 0));

	/* the write's completion says -EIO (the write itself landed: its
	 * retry rewrites the same bytes at the same offset) */
	CHECK_EQ_INT(append_range(l, 0, 20, now), 0);
	CHECK_EQ_INT(sl_ulog_flush_start(l, &ring, UD_WRITE, now), 0);
	submit(&ring);
	struct io_uring_cqe *cqe = NULL;
	CHECK_EQ_INT(io_uring_wait_cqe(&ring, &cqe), 0);
	CHECK_EQ_INT(cqe->user_data, UD_WRITE);
	io_uring_cqe_seen(&ring, cqe);
	ops_out--;
	CHECK_EQ_INT(sl_ulog_on_write(l, &ring, -EIO, UD_WRITE, UD_FSYNC), 0);
	CHECK_EQ_INT(drain(l, &ring), 0);
	CHECK(sl_ulog_idle(l));
	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, 20);
	CHECK_EQ_INT(sc.good_bytes, sc.file_bytes);

	/* the fdatasync's completion says -EIO */
	CHECK_EQ_INT(append_range(l, 20, 20, now), 0);
	CHECK_EQ_INT(sl_ulog_flush_start(l, &ring, UD_WRITE, now + 10), 0);
	CHECK_EQ_INT(reap_one(l, &ring), 0); /* the write: queues the fsync */
	CHECK_EQ_INT(io_uring_sq_ready(&ring), 1);
	submit(&ring);
	CHECK_EQ_INT(io_uring_wait_cqe(&ring, &cqe), 0);
	CHECK_EQ_INT(cqe->user_data, UD_FSYNC);
	io_uring_cqe_seen(&ring, cqe);
	ops_out--;
	CHECK_EQ_INT(sl_ulog_on_fsync(l, &ring, -EIO, UD_FSYNC), 0);
	CHECK_EQ_INT(drain(l, &ring), 0);
	CHECK(sl_ulog_idle(l));
	v = (struct visit_check){ 0 };
	sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, 40);

	/* and the writer goes on */
	CHECK_EQ_INT(append_range(l, 40, 5, now), 0);
	CHECK_EQ_INT(flush_now(l, &ring, now + 20), 0);
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	CHECK_EQ_INT(st.errors, 0);
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	io_uring_queue_exit(&ring);
	v = (struct visit_check){ 0 };
	sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, 45);
	CHECK_EQ_INT(v.out_of_order + v.unequal, 0);
}

/* Writes and fsyncs are pipelined: while an fsync is in flight the next
 * flush is due and its write goes out; the write that completes during the
 * fsync gets an fsync of its own after it. */
TEST(write_pipelined_with_fsync)
{
	struct io_uring ring;
	int rc = ring_init(&ring);
	CHECK_EQ_INT(rc, 0);
	if (rc != 0)
		return;
	char dir[PATH_MAX];
	fresh_dir(dir);
	struct sl_ulog *l = open_writer(dir, 4, 0);
	CHECK(l != NULL);
	if (!l) {
		io_uring_queue_exit(&ring);
		return;
	}
	uint64_t now = monotonic_ms(), seq = 0;
	unsigned fsyncs = 0;
	for (int round = 0; round < 20; round++) {
		CHECK_EQ_INT(append_range(l, seq, 30, now), 0);
		seq += 30;
		now += 5;
		CHECK(sl_ulog_flush_due(l, now));
		CHECK_EQ_INT(sl_ulog_flush_start(l, &ring, UD_WRITE, now), 0);
		/* reap the write only: its fsync is then queued or wanted, and
		 * the writer takes the next batch without waiting for it */
		int guard = 0;
		uint64_t before = flushes_of(l);
		while (flushes_of(l) == before && guard++ < 100) {
			submit(&ring);
			struct io_uring_cqe *cqe = NULL;
			CHECK_EQ_INT(io_uring_wait_cqe(&ring, &cqe), 0);
			if (!cqe)
				break;
			uint64_t ud = cqe->user_data;
			int res = cqe->res;
			io_uring_cqe_seen(&ring, cqe);
			ops_out--;
			if (ud == UD_WRITE) {
				CHECK_EQ_INT(sl_ulog_on_write(l, &ring, res, UD_WRITE, UD_FSYNC), 0);
			} else {
				fsyncs++;
				CHECK_EQ_INT(sl_ulog_on_fsync(l, &ring, res, UD_FSYNC), 0);
			}
		}
		CHECK_EQ_INT(flushes_of(l), before + 1);
	}
	CHECK_EQ_INT(drain(l, &ring), 0);
	CHECK(sl_ulog_idle(l));
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s", segment_path(dir, 4, 0));
	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(path, 0, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, seq);
	CHECK_EQ_INT(v.out_of_order + v.unequal, 0);
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	CHECK_EQ_INT(st.flushes, 20);
	CHECK_EQ_INT(st.errors + st.sync_writes, 0);
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	io_uring_queue_exit(&ring);
}

/* find_fd: the descriptor this process holds on path (the writer's). */
static int find_fd(const char *path)
{
	char want[PATH_MAX], link[PATH_MAX], name[300];
	if (!realpath(path, want))
		return -1;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int found = -1;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(name, sizeof name, "/proc/self/fd/%s", de->d_name);
		ssize_t n = readlink(name, link, sizeof link - 1);
		if (n < 0)
			continue;
		link[n] = 0;
		if (strcmp(link, want) == 0)
			found = atoi(de->d_name);
	}
	closedir(d);
	return found;
}

/* A write that really fails, and its synchronous retry too (the segment's
 * descriptor is swapped for a read-only one): the handler returns the
 * error for the caller to log, the error is counted, the flush still ends
 * (nothing stays in flight), the writer goes on once the disk is back, and
 * what was durable before the failure stays readable. (What happens to the
 * failed batch's bytes is not in the contract: they are lost.) */
TEST(failed_write_reported_writer_goes_on)
{
	struct io_uring ring;
	int rc = ring_init(&ring);
	CHECK_EQ_INT(rc, 0);
	if (rc != 0)
		return;
	char dir[PATH_MAX];
	fresh_dir(dir);
	struct sl_ulog *l = open_writer(dir, 0, 0);
	CHECK(l != NULL);
	if (!l) {
		io_uring_queue_exit(&ring);
		return;
	}
	uint64_t now = monotonic_ms();
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s", segment_path(dir, 0, 0));
	CHECK_EQ_INT(append_range(l, 0, 10, now), 0);
	CHECK_EQ_INT(flush_now(l, &ring, now), 0);

	int fd = find_fd(path);
	CHECK(fd >= 0);
	if (fd < 0) {
		sl_ulog_close(l);
		io_uring_queue_exit(&ring);
		return;
	}
	int saved = dup(fd), ro = open(path, O_RDONLY | O_CLOEXEC);
	SL_ASSERT(saved >= 0 && ro >= 0);
	SL_ASSERT(dup2(ro, fd) == fd);

	CHECK_EQ_INT(append_range(l, 10, 10, now), 0);
	CHECK_EQ_INT(sl_ulog_flush_start(l, &ring, UD_WRITE, now + 10), 0);
	rc = drain(l, &ring);
	CHECK(rc < 0 && rc != -ETIMEDOUT);
	CHECK(sl_ulog_idle(l));
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	CHECK(st.errors > 0);

	SL_ASSERT(dup2(saved, fd) == fd);
	close(saved);
	close(ro);
	CHECK_EQ_INT(append_range(l, 20, 5, now), 0);
	CHECK_EQ_INT(flush_now(l, &ring, now + 20), 0);
	CHECK(sl_ulog_idle(l));
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	io_uring_queue_exit(&ring);

	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(path, 0, &v);
	CHECK(sc.records >= 10);
	CHECK_EQ_INT(sc.first_seq, 0);
	CHECK_EQ_INT(v.out_of_order + v.unequal, 0);
}

/* --- restarts: recover, then open each core's writer where it says ----------------- */

TEST(restart_continues_seq)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	write_segment(dir, 0, 0, 10);
	write_segment(dir, 1, 0, 4);
	uint64_t next_seq[2];
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 2, NULL), 0);
	CHECK_EQ_INT(next_seq[0], 10);
	CHECK_EQ_INT(next_seq[1], 4);
	struct sl_ulog *l = open_writer(dir, 0, next_seq[0]);
	CHECK(l != NULL);
	if (!l)
		return;
	CHECK_EQ_INT(append_range(l, 10, 5, monotonic_ms()), 0);
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(segment_path(dir, 0, 10), 10, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, 5);
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 2, NULL), 0);
	CHECK_EQ_INT(next_seq[0], 15);
}

/* A gateway started and stopped with no request leaves a header-only
 * segment; so does a crash right after a rotation. The next start must be
 * able to open its writer at the seq recovery gives. */
TEST(restart_after_idle_run)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	struct sl_ulog *l = open_writer(dir, 0, 0);
	CHECK(l != NULL);
	if (!l)
		return;
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	CHECK_EQ_INT(file_size(segment_path(dir, 0, 0)), SL_ULOG_HEADER_LEN);
	uint64_t next_seq[1] = { 9 };
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 1, NULL), 0);
	CHECK_EQ_INT(next_seq[0], 0);
	l = open_writer(dir, 0, next_seq[0]);
	CHECK(l != NULL);
	if (!l)
		return;
	CHECK_EQ_INT(append_range(l, 0, 3, monotonic_ms()), 0);
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 1, NULL), 0);
	CHECK_EQ_INT(next_seq[0], 3);
}

/* A crash between a rotation's open and its header leaves a last segment
 * shorter than a header: recovery removes it, and the core goes on after
 * the previous segment's last record. */
TEST(recover_headerless_last_segment)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	write_segment(dir, 0, 0, 10);
	char stub[PATH_MAX];
	snprintf(stub, sizeof stub, "%s", segment_path(dir, 0, 10));
	write_file(stub, (const uint8_t *)"SLULO", 5);
	char *text = NULL;
	size_t text_len = 0;
	FILE *report = open_memstream(&text, &text_len);
	SL_ASSERT(report != NULL);
	uint64_t next_seq[1] = { 9 };
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 1, report), 0);
	fclose(report);
	CHECK_EQ_INT(file_size(stub), -1);
	CHECK(text != NULL && strstr(text, "usage-c000-000000000000000a.log") != NULL);
	free(text);
	CHECK_EQ_INT(next_seq[0], 10);
	struct sl_ulog *l = open_writer(dir, 0, next_seq[0]);
	CHECK(l != NULL);
	if (l)
		CHECK_EQ_INT(sl_ulog_close(l), 0);
}

/* Damage in a segment that is not its core's last is reported and left for
 * the operator; the segments after it are not cut, and the core goes on
 * after its highest seq (no seq written twice). */
TEST(recover_leaves_damage_before_the_last_segment)
{
	char dir[PATH_MAX];
	fresh_dir(dir);
	write_segment(dir, 0, 0, 5);
	write_segment(dir, 0, 5, 5);
	char a[PATH_MAX], b[PATH_MAX];
	snprintf(a, sizeof a, "%s", segment_path(dir, 0, 0));
	snprintf(b, sizeof b, "%s", segment_path(dir, 0, 5));
	static uint8_t seg[8192];
	size_t full = read_file(a, seg, sizeof seg);
	size_t three = frame_end(seg, full, 2);
	flip_byte(a, (long long)three + SL_ULOG_FRAME_HEAD + 20, 0x04); /* record seq 3 */
	long long size_b = file_size(b);
	char *text = NULL;
	size_t text_len = 0;
	FILE *report = open_memstream(&text, &text_len);
	SL_ASSERT(report != NULL);
	uint64_t next_seq[1] = { 0 };
	CHECK_EQ_INT(sl_ulog_recover(dir, next_seq, 1, report), 0);
	fclose(report);
	CHECK_EQ_INT(file_size(a), full);
	CHECK_EQ_INT(file_size(b), size_b);
	CHECK(text != NULL && strstr(text, "usage-c000-0000000000000000.log") != NULL);
	free(text);
	CHECK_EQ_INT(next_seq[0], 10);
	struct visit_check v = { 0 };
	struct sl_ulog_scan sc = scan(b, 5, &v);
	CHECK_EQ_INT(sc.damage, SL_ULOG_OK);
	CHECK_EQ_INT(sc.records, 5);
}

int main(void)
{
	if (!mkdtemp(dir_template)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(record_round_trip_all_fields);
	RUN(record_round_trip_empty_strings);
	RUN(record_longest_strings_cut_and_fit);
	RUN(record_decode_refuses_bad_payloads);
	RUN(writer_1000_records_scan_back);
	RUN(scan_visitor_stop_and_names);
	RUN(flush_through_io_uring);
	RUN(torn_tail_at_every_offset);
	RUN(corrupt_payload_crc_and_recover_reports);
	RUN(corrupt_length_field);
	RUN(seq_gap_between_and_within_segments);
	RUN(rotation_by_size_keeps_seqs_consecutive);
	RUN(recover_missing_and_empty_dir);
	RUN(sync_path_when_both_buffers_busy);
	RUN(failed_completion_retried_synchronously);
	RUN(write_pipelined_with_fsync);
	RUN(failed_write_reported_writer_goes_on);
	RUN(restart_continues_seq);
	RUN(restart_after_idle_run);
	RUN(recover_headerless_last_segment);
	RUN(recover_leaves_damage_before_the_last_segment);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir_template);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir_template);
	return test_summary();
}
