/*
 * bench_usagelog.c - appends per second into one core's usage log writer,
 * with the group commit running through a real io_uring as the reactor runs
 * it: each loop turn reads the clock once, appends a batch of records (the
 * requests that finished in that turn), starts a flush when one is due,
 * submits, and hands the completions it finds (never waiting) to
 * sl_ulog_on_write / sl_ulog_on_fsync.
 *
 *   build/bench_usagelog [seconds_per_run [parent_dir]]   (default 1.0, build/)
 *
 * The segments go to a fresh directory under parent_dir (build/, else
 * /var/tmp): a real disk, since the writes and fdatasyncs are the point; the
 * output names the directory and warns if it is a tmpfs. Records look like
 * a real request's: a 36-character request id, a 16-character key id,
 * model, provider and upstream model names, tokens and cost. Five runs; the
 * best is reported. After each run the writer is closed (not timed) and
 * every segment is read back: the count must equal the appends.
 *
 * The bar: >= 1,000,000 appends/s per core. "sync writes" counts
 * appends that found both buffers busy (the disk behind the appends): a
 * nonzero figure means the run measured the disk, not the append path.
 */
#include "sluice/usagelog.h"

#include <errno.h>
#include <inttypes.h>
#include <liburing.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define RUNS 5
#define TURN_APPENDS 64 /* records appended per loop turn */
#define POOL 4096       /* distinct prebuilt records, a power of 2 */
#define UD_WRITE 1
#define UD_FSYNC 2
#define TMPFS_MAGIC_NUMBER 0x01021994

_Static_assert((POOL & (POOL - 1)) == 0, "POOL is a power of 2");

struct pooled {
	struct sl_usage_record rec;
	char request_id[40];
	char key_id[20];
	char upstream_model[48];
};

static struct pooled pool[POOL];

static const char *const models[] = { "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-flash",
	                              "gpt-4.1" };
static const char *const providers[] = { "openai", "anthropic", "google", "azure" };

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct sl_ustr ustr(const char *s)
{
	return (struct sl_ustr){ s, (uint8_t)strlen(s) };
}

static void pool_make(void)
{
	static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	for (uint32_t i = 0; i < POOL; i++) {
		struct pooled *p = &pool[i];
		uint64_t a = rnd(), b = rnd();
		snprintf(p->request_id, sizeof p->request_id, "%08x-%04x-4%03x-%04x-%012" PRIx64,
		         (uint32_t)a, (unsigned)(a >> 32) & 0xffff, (unsigned)(a >> 48) & 0xfff,
		         (unsigned)(0x8000 | (b & 0x3fff)), (uint64_t)(b >> 16) & UINT64_C(0xffffffffffff));
		for (int k = 0; k < 16; k++)
			p->key_id[k] = b62[rnd() % 62];
		p->key_id[16] = 0;
		uint32_t m = (uint32_t)(rnd() % 4);
		snprintf(p->upstream_model, sizeof p->upstream_model, "%s-2025-04-14", models[m]);
		struct sl_usage_record *r = &p->rec;
		*r = (struct sl_usage_record){
			.time_unix_ms = UINT64_C(1767225600000) + i,
			.route = (uint8_t)(i % 3),
			.flags = (uint8_t)(i % 4 == 0 ? SL_UREC_STREAM : 0),
			.attempts = 1,
			.status = 200,
			.ttfb_ms = 180 + (uint32_t)(rnd() % 400),
			.total_ms = 900 + (uint32_t)(rnd() % 9000),
			.input_tokens = 200 + rnd() % 4000,
			.output_tokens = 50 + rnd() % 1500,
			.cache_read_tokens = rnd() % 2 ? rnd() % 2000 : 0,
			.cost_pico_usd = (int64_t)(rnd() % 20000),
			.ip_family = i % 2 ? 6 : 4,
		};
		for (int k = 0; k < 16; k++)
			r->ip[k] = k < 4 || r->ip_family == 6 ? (uint8_t)rnd() : 0;
		r->request_id = ustr(p->request_id);
		r->key_id = ustr(p->key_id);
		r->model = ustr(models[m]);
		r->provider = ustr(providers[m]);
		r->upstream_model = ustr(p->upstream_model);
	}
}

/* reap: the completions that are there, none waited for (as the reactor's
 * loop after io_uring_submit_and_wait_timeout). Returns how many. */
static unsigned reap(struct sl_ulog *l, struct io_uring *ring, uint64_t *errors)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	io_uring_for_each_cqe(ring, head, cqe)
	{
		int rc = cqe->user_data == UD_WRITE
		                 ? sl_ulog_on_write(l, ring, cqe->res, UD_WRITE, UD_FSYNC)
		                 : sl_ulog_on_fsync(l, ring, cqe->res, UD_FSYNC);
		if (rc != 0)
			(*errors)++;
		seen++;
	}
	io_uring_cq_advance(ring, seen);
	return seen;
}

struct run_result {
	double appends_per_s;
	double ns_per_append;
	uint64_t appends, bytes, sync_writes, flushes, segments, errors, read_back;
};

static int count_visit(void *arg, uint64_t seq, const struct sl_usage_record *rec)
{
	(*(uint64_t *)arg)++;
	return 0;
}

static int run_once(const char *dir, double seconds, struct run_result *out)
{
	memset(out, 0, sizeof *out);
	struct io_uring ring;
	int rc = io_uring_queue_init(256, &ring, 0);
	if (rc != 0) {
		fprintf(stderr, "bench_usagelog: io_uring_queue_init: %s\n", strerror(-rc));
		return rc;
	}
	struct sl_ulog_config cfg = { .dir = dir, .core = 0, .next_seq = 0 };
	struct sl_ulog *l = NULL;
	rc = sl_ulog_open(&l, &cfg);
	if (rc != 0) {
		fprintf(stderr, "bench_usagelog: sl_ulog_open %s: %s\n", dir, strerror(-rc));
		io_uring_queue_exit(&ring);
		return rc;
	}
	uint64_t n = 0, errors = 0;
	uint64_t t0 = mono_ns(), end = t0 + (uint64_t)(seconds * 1e9), t = t0;
	while (t < end) {
		uint64_t now_ms = t / 1000000;
		for (int k = 0; k < TURN_APPENDS; k++, n++) {
			struct sl_usage_record *r = &pool[n & (POOL - 1)].rec;
			r->output_tokens = 50 + (n & 1023);
			if (sl_ulog_append(l, r, now_ms) != 0)
				errors++;
		}
		if (sl_ulog_flush_due(l, now_ms) &&
		    sl_ulog_flush_start(l, &ring, UD_WRITE, now_ms) != 0)
			errors++;
		if (io_uring_sq_ready(&ring))
			io_uring_submit(&ring);
		reap(l, &ring, &errors);
		t = mono_ns();
	}
	double elapsed_s = (double)(t - t0) / 1e9;

	/* finish as the reactor's exit path does: drain the ring, then close */
	for (int guard = 0; guard < 100000 && !sl_ulog_idle(l); guard++) {
		uint64_t now_ms = mono_ns() / 1000000;
		if (sl_ulog_flush_due(l, now_ms + 1000))
			sl_ulog_flush_start(l, &ring, UD_WRITE, now_ms);
		io_uring_submit(&ring);
		struct io_uring_cqe *cqe;
		if (io_uring_wait_cqe(&ring, &cqe) == 0)
			reap(l, &ring, &errors);
	}
	struct sl_ulog_stats st;
	sl_ulog_stats(l, &st);
	rc = sl_ulog_close(l);
	io_uring_queue_exit(&ring);
	if (rc != 0) {
		fprintf(stderr, "bench_usagelog: sl_ulog_close: %s\n", strerror(-rc));
		errors++;
	}

	/* read everything back */
	struct sl_ulog_segment *segs;
	size_t num;
	uint64_t read_back = 0, bytes = 0;
	if (sl_ulog_list(dir, &segs, &num) == 0) {
		uint64_t want = 0;
		for (size_t i = 0; i < num; i++) {
			struct sl_ulog_scan sc;
			if (sl_ulog_scan_file(segs[i].path, want, &sc, count_visit, &read_back) != 0 ||
			    sc.damage != SL_ULOG_OK)
				errors++;
			want = sc.last_seq + 1;
			bytes += sc.file_bytes;
			unlink(segs[i].path);
		}
		sl_ulog_list_free(segs, num);
	}
	rmdir(dir);

	out->appends = n;
	out->appends_per_s = (double)n / elapsed_s;
	out->ns_per_append = elapsed_s * 1e9 / (double)n;
	out->bytes = bytes;
	out->sync_writes = st.sync_writes;
	out->flushes = st.flushes;
	out->segments = st.segments;
	out->errors = errors + st.errors;
	out->read_back = read_back;
	return 0;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 1.0;
	if (!(seconds > 0))
		seconds = 1.0;
	const char *parent = argc > 2 ? argv[2] : "build";
	struct stat st;
	if (argc <= 2 && (stat(parent, &st) != 0 || !S_ISDIR(st.st_mode)))
		parent = "/var/tmp";
	char root[PATH_MAX];
	if ((size_t)snprintf(root, sizeof root, "%s/bench-usagelog-XXXXXX", parent) >= sizeof root ||
	    !mkdtemp(root)) {
		fprintf(stderr, "bench_usagelog: cannot make a directory under %s: %s\n", parent,
		        strerror(errno));
		return 1;
	}
	char where[PATH_MAX];
	if (!realpath(root, where))
		snprintf(where, sizeof where, "%s", root);
	struct statfs fs;
	bool tmpfs = statfs(root, &fs) == 0 && (unsigned long)fs.f_type == TMPFS_MAGIC_NUMBER;

	pool_make();
	struct run_result best = { 0 }, r;
	uint64_t failures = 0;
	for (int i = 0; i < RUNS; i++) {
		char dir[PATH_MAX + 16];
		snprintf(dir, sizeof dir, "%s/run%d", root, i);
		if (run_once(dir, seconds, &r) != 0) {
			failures++;
			continue;
		}
		if (r.errors || r.read_back != r.appends) {
			fprintf(stderr,
			        "bench_usagelog: run %d: %" PRIu64 " errors, %" PRIu64
			        " records read back of %" PRIu64 " appended\n",
			        i, r.errors, r.read_back, r.appends);
			failures++;
		}
		fprintf(stderr,
		        "run %d: %.0f appends/s, %.1f ns/append, %" PRIu64 " flushes, %" PRIu64
		        " sync writes, %.0f MB/s to disk\n",
		        i, r.appends_per_s, r.ns_per_append, r.flushes, r.sync_writes,
		        (double)r.bytes / 1e6 / seconds);
		if (r.appends_per_s > best.appends_per_s)
			best = r;
	}
	rmdir(root);

	printf("usage log appends on one core, io_uring group commit (flush_ms 5, 1 MiB buffers), "
	       "best of %d runs of %.1f s\n",
	       RUNS, seconds);
	printf("segments in %s%s\n\n", where,
	       tmpfs ? " (a tmpfs: fdatasync costs nothing there, the figure flatters)" : " (a real disk)");
	printf("| measure | value |\n|---|---:|\n");
	printf("| appends/s per core | %.0f |\n", best.appends_per_s);
	printf("| ns per append | %.1f |\n", best.ns_per_append);
	printf("| record frame, bytes (mean) | %.0f |\n",
	       best.appends ? (double)best.bytes / (double)best.appends : 0.0);
	printf("| flushes (write + fdatasync) | %" PRIu64 " |\n", best.flushes);
	printf("| sync writes (both buffers busy) | %" PRIu64 " |\n", best.sync_writes);
	printf("| records read back | %" PRIu64 " of %" PRIu64 " |\n", best.read_back, best.appends);
	printf("\nbar: >= 1,000,000 appends/s per core: %s\n",
	       best.appends_per_s >= 1e6 ? "met" : "NOT met");
	return failures ? 1 : 0;
}
