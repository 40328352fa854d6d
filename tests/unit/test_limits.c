/*
 * test_limits.c - per-core allowances and the reconciler: exactness of every
 * limit on one core and under real threads (one pthread per simulated core,
 * a reconciler thread beside them), redistribution from idle cores, token
 * corrections, daily resets, Retry-After and remaining values, limit changes
 * mid-window, and the state file. The clock is injected (now_unix_ms).
 */
#include "../../src/limits.c"
#include "test.h"

#include <pthread.h>
#include <time.h>

/* 2026-01-01 00:00:00 UTC: a window- and day-aligned instant. */
#define T0 UINT64_C(1767225600000)

static char dir_template[] = "/tmp/sluice-test-limits-XXXXXX";
static int dir_seq;

static struct sl_limiter *make(uint32_t cores, uint32_t slots, uint32_t window_ms, uint32_t hour)
{
	struct sl_limiter_config cfg = {
		.cores = cores, .slots = slots, .window_ms = window_ms, .reconcile_ms = 50,
		.day_reset_hour_utc = hour, .active_max = 1024, .local_only = true,
	};
	struct sl_limiter *l = NULL;
	SL_ASSERT(sl_limiter_create(&cfg, &l) == 0);
	return l;
}

/* As the gateway runs it: a core short of allowance takes it from the
 * others' words on the refusal path. */
static struct sl_limiter *make_mode(uint32_t cores, uint32_t slots, uint32_t window_ms, bool shared)
{
	struct sl_limiter_config cfg = {
		.cores = cores, .slots = slots, .window_ms = window_ms, .reconcile_ms = 50,
		.active_max = 1024, .local_only = !shared,
	};
	struct sl_limiter *l = NULL;
	SL_ASSERT(sl_limiter_create(&cfg, &l) == 0);
	return l;
}

static struct sl_limiter *make_shared(uint32_t cores, uint32_t slots)
{
	return make_mode(cores, slots, 60000, true);
}

static void set4(struct sl_limiter *l, uint32_t slot, uint64_t rpm, uint64_t tpm, uint64_t conc, uint64_t rpd)
{
	struct sl_tier_limits lim = {
		.requests_per_window = rpm, .tokens_per_window = tpm, .concurrent = conc, .requests_per_day = rpd,
	};
	sl_limiter_set(l, slot, &lim);
}

/* Admits (and finishes at once, tokens as estimated) until the first refusal;
 * returns how many were admitted. */
static uint64_t drain(struct sl_limiter *l, uint32_t core, uint32_t slot, uint64_t tokens, uint64_t now)
{
	struct sl_limit_ticket t;
	uint64_t n = 0;
	while (sl_limiter_admit(l, core, slot, tokens, now, &t, NULL) == SL_LIMIT_NONE) {
		sl_limiter_finish(l, core, &t, UINT64_MAX, now);
		n++;
		SL_ASSERT(n < 1000000);
	}
	return n;
}

static int fresh_dir(void)
{
	char path[96];
	snprintf(path, sizeof(path), "%s/d%d", dir_template, dir_seq++);
	SL_ASSERT(mkdir(path, 0700) == 0);
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	SL_ASSERT(fd >= 0);
	return fd;
}

static void sleep_us(long us)
{
	struct timespec ts = { .tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000 };
	nanosleep(&ts, NULL);
}

/* --- one core ------------------------------------------------------------------------ */

TEST(single_core_exact_rpm)
{
	struct sl_limiter *l = make(1, 4, 60000, 0);
	set4(l, 1, 60, 0, 0, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	for (int i = 0; i < 60; i++)
		CHECK_EQ_INT(sl_limiter_admit(l, 0, 1, 0, T0 + 1000, &t, NULL), SL_LIMIT_NONE);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 1, 0, T0 + 1000, &t, &rep), SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(t.held, 0);
	CHECK_EQ_INT(rep.refused, SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(rep.retry_after_ms, 59000);
	CHECK_EQ_INT(rep.requests_remaining, 0);
	CHECK_EQ_INT(rep.requests_reset_unix_ms, T0 + 60000);
	sl_limiter_reconcile(l, T0 + 2000);
	CHECK_EQ_INT(drain(l, 0, 1, 0, T0 + 59999), 0);
	CHECK_EQ_INT(drain(l, 0, 1, 0, T0 + 60000), 60);
	sl_limiter_free(l);
}

TEST(unlimited_slot_always_admits)
{
	struct sl_limiter *l = make(2, 4, 60000, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	for (int i = 0; i < 1000; i++)
		CHECK_EQ_INT(sl_limiter_admit(l, i & 1, 3, 500, T0 + (uint64_t)i, &t, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(t.held, 0);
	CHECK_EQ_INT(rep.requests_limit, 0);
	CHECK_EQ_INT(rep.tokens_limit, 0);
	sl_limiter_free(l);
}

TEST(static_shares_sum_to_limit)
{
	static const uint64_t limits[] = { 1, 2, 3, 5, 7, 8, 9, 60, 61, 63, 1000003 };
	const uint32_t cores = 8;
	for (size_t i = 0; i < SL_ARRAY_LEN(limits); i++) {
		for (uint32_t slot = 0; slot < 16; slot++) {
			uint64_t sum = 0;
			for (uint32_t c = 0; c < cores; c++)
				sum += (uint64_t)share_of(limits[i], cores, c, slot);
			CHECK_EQ_INT(sum, limits[i]);
		}
	}
	/* limit < cores: the units land on different cores for different slots */
	CHECK(share_of(3, 8, 0, 0) == 1 && share_of(3, 8, 3, 0) == 0);
	CHECK(share_of(3, 8, 0, 5) == 0 && share_of(3, 8, 3, 5) == 1);
	/* the same through real admissions: each core drains exactly its share */
	struct sl_limiter *l = make(cores, 16, 60000, 0);
	for (uint32_t slot = 0; slot < 16; slot++) {
		set4(l, slot, 3 + slot, 0, 0, 0);
		uint64_t sum = 0;
		for (uint32_t c = 0; c < cores; c++) {
			uint64_t n = drain(l, c, slot, 0, T0);
			CHECK_EQ_INT(n, share_of(3 + slot, cores, c, slot));
			sum += n;
		}
		CHECK_EQ_INT(sum, 3 + slot);
	}
	sl_limiter_free(l);
}

/* --- the reconciler ------------------------------------------------------------------- */

TEST(idle_core_gives_back_within_one_pass)
{
	struct sl_limiter *l = make(2, 4, 60000, 0);
	set4(l, 0, 60, 0, 0, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 0, 0, T0, &t, NULL), SL_LIMIT_NONE); /* core 1: one, then idle */
	uint64_t busy = drain(l, 0, 0, 0, T0 + 10);
	CHECK_EQ_INT(busy, 30);
	/* refused, but allowance exists on core 1: come back after one pass */
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 0, T0 + 10, &t, &rep), SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(rep.retry_after_ms, 50);
	/* exact, before any pass: 60 - 30 - core 1's one */
	CHECK_EQ_INT(rep.requests_remaining, 29);
	sl_limiter_reconcile(l, T0 + 50);
	busy += drain(l, 0, 0, 0, T0 + 60);
	CHECK_EQ_INT(busy, 59);
	CHECK(busy * 100 >= 97 * 60);
	/* everything used: the next chance is the next window */
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 0, T0 + 60, &t, &rep), SL_LIMIT_REQUESTS);
	sl_limiter_reconcile(l, T0 + 100);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 0, T0 + 1000, &t, &rep), SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(rep.retry_after_ms, 59000);
	CHECK_EQ_INT(rep.requests_remaining, 0);
	CHECK_EQ_INT(drain(l, 1, 0, 0, T0 + 1000), 0);
	sl_limiter_free(l);
}

TEST(light_load_keeps_shares_everywhere)
{
	/* 4 cores, one request now and then: the free allowance stays spread so
	 * any core can admit without waiting for a pass. */
	struct sl_limiter *l = make(4, 4, 60000, 0);
	set4(l, 2, 60, 0, 0, 0);
	struct sl_limit_ticket t;
	uint64_t now = T0;
	for (int i = 0; i < 40; i++) {
		CHECK_EQ_INT(sl_limiter_admit(l, (uint32_t)i % 4, 2, 0, now, &t, NULL), SL_LIMIT_NONE);
		now += 50;
		sl_limiter_reconcile(l, now);
	}
	uint64_t total = 0;
	for (uint32_t c = 0; c < 4; c++) {
		uint64_t n = drain(l, c, 2, 0, now);
		CHECK(n > 0);
		total += n;
	}
	CHECK_EQ_INT(total, 20);
	sl_limiter_free(l);
}

TEST(report_remaining_values)
{
	struct sl_limiter *l = make(2, 4, 60000, 0);
	set4(l, 0, 10, 1000, 4, 100);
	struct sl_limit_ticket t[8];
	struct sl_limit_report rep;
	/* before any pass too, remaining sums every core's word */
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 100, T0, &t[0], &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.requests_limit, 10);
	CHECK_EQ_INT(rep.requests_remaining, 9);
	CHECK_EQ_INT(rep.tokens_limit, 1000);
	CHECK_EQ_INT(rep.tokens_remaining, 900);
	CHECK_EQ_INT(rep.concurrent_limit, 4);
	CHECK_EQ_INT(rep.concurrent_remaining, 3);
	CHECK_EQ_INT(rep.daily_limit, 100);
	CHECK_EQ_INT(rep.daily_remaining, 99);
	CHECK_EQ_INT(rep.daily_reset_unix_ms, T0 + 86400000);
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 0, 100, T0, &t[1], &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.requests_remaining, 8); /* exact: core 0's word is read too */
	sl_limiter_reconcile(l, T0 + 50);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 100, T0 + 60, &t[2], &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.requests_remaining, 7);
	CHECK_EQ_INT(rep.tokens_remaining, 700);
	CHECK_EQ_INT(rep.concurrent_remaining, 1);
	CHECK_EQ_INT(rep.daily_remaining, 97);
	sl_limiter_finish(l, 0, &t[0], 50, T0 + 70);
	sl_limiter_finish(l, 1, &t[1], UINT64_MAX, T0 + 70);
	sl_limiter_finish(l, 0, &t[2], 100, T0 + 70);
	sl_limiter_reconcile(l, T0 + 100);
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 0, 10, T0 + 110, &t[3], &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.requests_remaining, 6);
	CHECK_EQ_INT(rep.tokens_remaining, 1000 - 50 - 100 - 100 - 10);
	CHECK_EQ_INT(rep.concurrent_remaining, 3);
	sl_limiter_free(l);
}

TEST(retry_after_values)
{
	struct sl_limiter *l = make(2, 8, 60000, 0);
	struct sl_limit_ticket t, held[4];
	struct sl_limit_report rep;
	/* requests: allowance on the other core -> one pass; none -> window end */
	set4(l, 0, 4, 0, 0, 0);
	CHECK_EQ_INT(drain(l, 0, 0, 0, T0 + 20000), 2);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 0, T0 + 20000, &t, &rep), SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(rep.retry_after_ms, 50);
	CHECK_EQ_INT(drain(l, 1, 0, 0, T0 + 20000), 2);
	sl_limiter_reconcile(l, T0 + 20010);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 0, T0 + 20020, &t, &rep), SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(rep.retry_after_ms, 39980);
	/* a pass is later than the window end: the window end */
	set4(l, 5, 4, 0, 0, 0);
	CHECK_EQ_INT(drain(l, 0, 5, 0, T0 + 59990), 2);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 5, 0, T0 + 59990, &t, &rep), SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(rep.retry_after_ms, 10);
	/* daily: to the next reset */
	set4(l, 1, 0, 0, 0, 2);
	CHECK_EQ_INT(drain(l, 0, 1, 0, T0 + 3600000), 1);
	CHECK_EQ_INT(drain(l, 1, 1, 0, T0 + 3600000), 1);
	sl_limiter_reconcile(l, T0 + 3600000);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 1, 0, T0 + 3600000, &t, &rep), SL_LIMIT_DAILY);
	CHECK_EQ_INT(rep.retry_after_ms, 23 * 3600000);
	CHECK_EQ_INT(rep.daily_reset_unix_ms, T0 + 86400000);
	/* concurrency: free units on the other core -> one pass; none -> 1 s */
	set4(l, 2, 0, 0, 2, 0);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 2, 0, T0, &held[0], NULL), SL_LIMIT_NONE);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 2, 0, T0, &t, &rep), SL_LIMIT_CONCURRENT);
	CHECK_EQ_INT(rep.retry_after_ms, 50);
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 2, 0, T0, &held[1], NULL), SL_LIMIT_NONE);
	sl_limiter_reconcile(l, T0 + 50);
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 2, 0, T0 + 60, &t, &rep), SL_LIMIT_CONCURRENT);
	CHECK_EQ_INT(rep.retry_after_ms, 1000);
	sl_limiter_finish(l, 0, &held[0], UINT64_MAX, T0 + 70);
	sl_limiter_finish(l, 1, &held[1], UINT64_MAX, T0 + 70);
	/* tokens: enough left elsewhere -> one pass; not enough anywhere -> window end */
	set4(l, 3, 0, 1000, 0, 0);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 3, 400, T0, &held[2], NULL), SL_LIMIT_NONE);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 3, 400, T0, &t, &rep), SL_LIMIT_TOKENS);
	CHECK_EQ_INT(rep.retry_after_ms, 50);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 3, 700, T0, &t, &rep), SL_LIMIT_TOKENS);
	CHECK_EQ_INT(rep.retry_after_ms, 60000);
	sl_limiter_free(l);
}

TEST(rpd_rolls_over_at_configured_hour)
{
	struct sl_limiter *l = make(2, 4, 60000, 5);
	set4(l, 0, 0, 0, 0, 3);
	uint64_t before = T0 + 5 * 3600000 - 1000; /* 04:59:59 */
	uint64_t at = T0 + 5 * 3600000;            /* 05:00:00 */
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	CHECK_EQ_INT(drain(l, 0, 0, 0, before), 2); /* shares 2 + 1 */
	CHECK_EQ_INT(drain(l, 1, 0, 0, before), 1);
	sl_limiter_reconcile(l, before);
	CHECK_EQ_INT(drain(l, 0, 0, 0, before + 500) + drain(l, 1, 0, 0, before + 500), 0);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 0, before + 999, &t, &rep), SL_LIMIT_DAILY);
	CHECK_EQ_INT(rep.daily_reset_unix_ms, at);
	CHECK_EQ_INT(rep.retry_after_ms, 1);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 0, at, &t, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.daily_reset_unix_ms, at + 86400000);
	CHECK_EQ_INT(rep.daily_remaining, 2);
	sl_limiter_free(l);
}

TEST(concurrency_exact_one_core_and_cancel)
{
	struct sl_limiter *l = make(1, 4, 60000, 0);
	set4(l, 0, 100, 1000, 2, 100);
	struct sl_limit_ticket a, b, c;
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 100, T0, &a, NULL), SL_LIMIT_NONE);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 100, T0, &b, NULL), SL_LIMIT_NONE);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 100, T0, &c, &rep), SL_LIMIT_CONCURRENT);
	/* the refused request left nothing charged */
	CHECK_EQ_INT(rep.requests_remaining, 98);
	CHECK_EQ_INT(rep.tokens_remaining, 800);
	CHECK_EQ_INT(rep.daily_remaining, 98);
	sl_limiter_cancel(l, 0, &b, T0);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 100, T0, &c, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.requests_remaining, 98);
	CHECK_EQ_INT(rep.tokens_remaining, 800);
	CHECK_EQ_INT(rep.daily_remaining, 98);
	CHECK_EQ_INT(rep.concurrent_remaining, 0);
	sl_limiter_finish(l, 0, &a, UINT64_MAX, T0);
	sl_limiter_finish(l, 0, &c, UINT64_MAX, T0);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 100, T0, &a, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.concurrent_remaining, 1);
	sl_limiter_free(l);
}

TEST(peek_reports_without_charging)
{
	struct sl_limiter *l = make_shared(2, 4);
	set4(l, 0, 10, 1000, 3, 100);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 100, T0, &t, NULL), SL_LIMIT_NONE);
	for (int i = 0; i < 3; i++) {
		sl_limiter_peek(l, 1, 0, T0 + 10, &rep);
		CHECK_EQ_INT(rep.refused, SL_LIMIT_NONE);
		CHECK_EQ_INT(rep.requests_remaining, 9);
		CHECK_EQ_INT(rep.tokens_remaining, 900);
		CHECK_EQ_INT(rep.concurrent_remaining, 2);
		CHECK_EQ_INT(rep.daily_remaining, 99);
		CHECK_EQ_INT(rep.requests_reset_unix_ms, T0 + 60000);
	}
	struct sl_limiter_stats st;
	sl_limiter_reconcile(l, T0 + 20);
	sl_limiter_stats(l, &st);
	CHECK_EQ_INT(st.active_num, 1); /* the admission queued it, the peeks did not add */
	sl_limiter_reconcile(l, T0 + 70);
	sl_limiter_peek(l, 0, 0, T0 + 80, &rep);
	sl_limiter_reconcile(l, T0 + 120);
	sl_limiter_stats(l, &st);
	CHECK_EQ_INT(st.active_num, 0);
	sl_limiter_peek(l, 0, 1, T0, &rep); /* an unlimited slot */
	CHECK_EQ_INT(rep.requests_limit, 0);
	CHECK_EQ_INT(rep.requests_remaining, 0);
	sl_limiter_free(l);
}

TEST(tpm_estimate_corrected_down_and_up)
{
	struct sl_limiter *l = make(1, 4, 60000, 0);
	set4(l, 0, 0, 1000, 0, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 400, T0, &t, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(t.tokens_reserved, 400);
	CHECK_EQ_INT(rep.tokens_remaining, 600);
	sl_limiter_finish(l, 0, &t, 100, T0 + 1); /* down: 300 back */
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 900, T0 + 2, &t, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.tokens_remaining, 0);
	sl_limiter_finish(l, 0, &t, 1200, T0 + 3); /* up: 300 more, below 0 */
	CHECK_EQ_INT(word_rem(atomic_load(&l->cores[0].slots[0].word[DIM_TOKENS])), -300);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 1, T0 + 4, &t, &rep), SL_LIMIT_TOKENS);
	CHECK_EQ_INT(rep.retry_after_ms, 60000 - 4);
	/* reserved in one window, finished in the next: the refund is dropped,
	 * the extra is charged to the window it finishes in */
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 500, T0 + 60000, &t, NULL), SL_LIMIT_NONE);
	sl_limiter_finish(l, 0, &t, 100, T0 + 120000);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 300, T0 + 120000, &t, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.tokens_remaining, 700);
	sl_limiter_finish(l, 0, &t, 300, T0 + 120000);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 300, T0 + 120000, &t, NULL), SL_LIMIT_NONE);
	sl_limiter_finish(l, 0, &t, 500, T0 + 180000);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 801, T0 + 180000, &t, &rep), SL_LIMIT_TOKENS);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 800, T0 + 180000, &t, &rep), SL_LIMIT_NONE);
	/* an estimate of 0 reserves 1 */
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 0, T0 + 240000, &t, NULL), SL_LIMIT_NONE);
	CHECK_EQ_INT(t.tokens_reserved, 1);
	sl_limiter_free(l);
}

TEST(request_bigger_than_limit_refused)
{
	struct sl_limiter *l = make(2, 4, 60000, 0);
	set4(l, 0, 10, 1000, 0, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 1001, T0, &t, &rep), SL_LIMIT_TOO_LARGE);
	CHECK_EQ_INT(rep.refused, SL_LIMIT_TOO_LARGE);
	CHECK_EQ_INT(rep.retry_after_ms, 0);
	CHECK_EQ_INT(t.held, 0);
	CHECK_EQ_INT(rep.requests_remaining, 10); /* the request unit went back */
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 0, 1000, T0, &t, &rep), SL_LIMIT_TOKENS);
	sl_limiter_free(l);
}

TEST(big_estimate_above_share_not_starved)
{
	struct sl_limiter *l = make(4, 4, 60000, 0);
	set4(l, 0, 0, 1000, 0, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	uint64_t now = T0;
	bool admitted = false;
	for (int pass = 0; pass < 10 && !admitted; pass++) {
		/* the other cores keep asking for small amounts */
		for (uint32_t c = 1; c < 4; c++)
			if (sl_limiter_admit(l, c, 0, 5, now, &t, NULL) == SL_LIMIT_NONE)
				sl_limiter_finish(l, c, &t, 5, now);
		enum sl_limit_kind k = sl_limiter_admit(l, 0, 0, 600, now, &t, &rep);
		if (k == SL_LIMIT_NONE)
			admitted = true;
		else
			CHECK_EQ_INT(rep.retry_after_ms, 50);
		now += 50;
		sl_limiter_reconcile(l, now);
	}
	CHECK(admitted);
	sl_limiter_free(l);
}

TEST(set_changes_limit_mid_window)
{
	struct sl_limiter *l = make(2, 4, 60000, 0);
	set4(l, 0, 10, 0, 0, 0);
	uint64_t now = T0 + 1000;
	CHECK_EQ_INT(drain(l, 0, 0, 0, now), 5);
	CHECK_EQ_INT(drain(l, 1, 0, 0, now) > 0, 1);
	/* 10 used: raising to 14 leaves 4 for this window */
	set4(l, 0, 14, 0, 0, 0);
	sl_limiter_reconcile(l, now);
	sl_limiter_reconcile(l, now + 50);
	uint64_t more = drain(l, 0, 0, 0, now + 60);
	sl_limiter_reconcile(l, now + 100);
	more += drain(l, 1, 0, 0, now + 110) + drain(l, 0, 0, 0, now + 110);
	CHECK_EQ_INT(more, 4);
	/* lowering below what was used: nothing more this window, the new
	 * limit in the next */
	set4(l, 0, 6, 0, 0, 0);
	sl_limiter_reconcile(l, now + 150);
	CHECK_EQ_INT(drain(l, 0, 0, 0, now + 160) + drain(l, 1, 0, 0, now + 160), 0);
	uint64_t next = T0 + 60000;
	CHECK_EQ_INT(drain(l, 0, 0, 0, next) + drain(l, 1, 0, 0, next), 6);
	/* lowering with allowance still out on the cores: clawed back at once */
	uint64_t w3 = T0 + 120000;
	CHECK_EQ_INT(drain(l, 0, 0, 0, w3), 3); /* core 1 still holds 3 */
	set4(l, 0, 4, 0, 0, 0);
	sl_limiter_reconcile(l, w3);
	CHECK_EQ_INT(drain(l, 0, 0, 0, w3 + 10) + drain(l, 1, 0, 0, w3 + 10), 1);
	/* unlimited, then limited again within the same window: the window's
	 * consumption under the old limit still counts */
	set4(l, 0, 0, 0, 0, 0);
	sl_limiter_reconcile(l, w3 + 20);
	struct sl_limit_ticket t;
	for (int i = 0; i < 100; i++)
		CHECK_EQ_INT(sl_limiter_admit(l, 1, 0, 0, w3 + 30, &t, NULL), SL_LIMIT_NONE);
	set4(l, 0, 8, 0, 0, 0);
	sl_limiter_reconcile(l, w3 + 40);
	sl_limiter_reconcile(l, w3 + 50);
	CHECK_EQ_INT(drain(l, 0, 0, 0, w3 + 60) + drain(l, 1, 0, 0, w3 + 60), 4);
	sl_limiter_free(l);
}

TEST(limit_change_applied_in_a_pass_without_demand)
{
	for (int shared = 0; shared < 2; shared++) {
		struct sl_limiter *l = shared ? make_shared(2, 4) : make(2, 4, 60000, 0);
		set4(l, 0, 10, 0, 0, 0);
		uint64_t now = T0 + 1000;
		CHECK_EQ_INT(drain(l, 0, 0, 0, now), 5 + 5 * shared); /* shared: takes core 1's too */
		sl_limiter_reconcile(l, now);
		/* lowered to 5 with 5 (or 10) used and nobody asking: whatever is
		 * still out on the words comes back, nothing more is admitted */
		set4(l, 0, 5, 0, 0, 0);
		sl_limiter_reconcile(l, now + 50);
		CHECK_EQ_INT(drain(l, 0, 0, 0, now + 60) + drain(l, 1, 0, 0, now + 60), 0);
		/* raised to 14, again nobody asking: the 9 (or 4) left reach the
		 * words, the pool does not keep them */
		set4(l, 0, 14, 0, 0, 0);
		sl_limiter_reconcile(l, now + 100);
		struct sl_limit_ticket t;
		struct sl_limit_report rep;
		uint64_t left = shared ? 4 : 9;
		CHECK_EQ_INT(sl_limiter_admit(l, 1, 0, 0, now + 110, &t, &rep), SL_LIMIT_NONE);
		CHECK_EQ_INT(rep.requests_remaining, left - 1);
		CHECK_EQ_INT(drain(l, 0, 0, 0, now + 110) + drain(l, 1, 0, 0, now + 110), left - 1);
		sl_limiter_free(l);
	}
}

TEST(ring_full_and_visit_overflow_recover)
{
	/* active_max 1: rings of 64 entries, one slot visited per pass */
	struct sl_limiter_config cfg = { .cores = 1, .slots = 256, .window_ms = 1000, .active_max = 1 };
	struct sl_limiter *l;
	CHECK_EQ_INT(sl_limiter_create(&cfg, &l), 0);
	struct sl_limit_ticket t;
	for (uint32_t s = 0; s < 100; s++)
		sl_limiter_admit(l, 0, s, 0, T0, &t, NULL);
	for (uint32_t s = 0; s < 100; s++) /* queued already, or retried and dropped again */
		sl_limiter_admit(l, 0, s, 0, T0, &t, NULL);
	struct sl_limiter_stats st;
	sl_limiter_stats(l, &st);
	CHECK_EQ_INT(st.ring_drops, 72);
	sl_limiter_reconcile(l, T0);
	sl_limiter_stats(l, &st);
	CHECK_EQ_INT(st.active_num, 1);
	CHECK_EQ_INT(st.active_overflow, 63);
	/* nothing touched since: nothing to visit */
	sl_limiter_reconcile(l, T0 + 50);
	sl_limiter_stats(l, &st);
	CHECK_EQ_INT(st.active_num, 0);
	/* drained entries were cleared: a new touch queues the slot again */
	sl_limiter_admit(l, 0, 99, 0, T0 + 60, &t, NULL);
	sl_limiter_finish(l, 0, &t, UINT64_MAX, T0 + 60);
	sl_limiter_reconcile(l, T0 + 100);
	sl_limiter_stats(l, &st);
	CHECK_EQ_INT(st.active_num, 1);
	CHECK_EQ_INT(st.ring_drops, 72);
	CHECK_EQ_INT(st.passes, 3);
	sl_limiter_free(l);
}

/* --- real threads --------------------------------------------------------------------- */

#define WINDOWS_MAX 64

struct hammer {
	pthread_t thread;
	struct sl_limiter *l;
	uint32_t core, slot;
	uint64_t tokens;
	_Atomic int *stop;
	_Atomic uint64_t *clock;
	_Atomic int *in_flight, *in_flight_max, *violations;
	uint64_t concurrency_limit;
	_Atomic int refused; /* set on a refusal, cleared by the reconciler thread */
	bool vary_tokens; /* actual = estimate - 5 .. estimate + 5 */
	uint64_t admitted;
	uint64_t per_window[WINDOWS_MAX];
	uint64_t tokens_actual, tokens_extra;
};

static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	while (!atomic_load(h->stop)) {
		uint64_t now = atomic_load(h->clock);
		struct sl_limit_ticket t;
		if (sl_limiter_admit(h->l, h->core, h->slot, h->tokens, now, &t, NULL) != SL_LIMIT_NONE) {
			atomic_store_explicit(&h->refused, 1, memory_order_relaxed);
			continue;
		}
		h->admitted++;
		if (t.window_tag >= 1 && t.window_tag - 1 < WINDOWS_MAX)
			h->per_window[t.window_tag - 1]++;
		if (h->concurrency_limit) {
			int n = atomic_fetch_add(h->in_flight, 1) + 1;
			if ((uint64_t)n > h->concurrency_limit)
				atomic_fetch_add(h->violations, 1);
			int m = atomic_load(h->in_flight_max);
			while (n > m && !atomic_compare_exchange_weak(h->in_flight_max, &m, n))
				;
			for (volatile int spin = 0; spin < 2000; spin++)
				;
			atomic_fetch_sub(h->in_flight, 1);
		}
		uint64_t actual = h->vary_tokens ? h->tokens - 5 + h->admitted % 11 : h->tokens;
		h->tokens_actual += actual;
		h->tokens_extra += actual > h->tokens ? actual - h->tokens : 0;
		sl_limiter_finish(h->l, h->core, &t, actual, atomic_load(h->clock));
	}
	return NULL;
}

struct reconciler {
	pthread_t thread;
	struct sl_limiter *l;
	struct hammer *hammers;
	uint32_t hammers_num;
	_Atomic int *stop;
	_Atomic uint64_t *clock;
	uint64_t advance_ms; /* 0: fixed clock */
	uint64_t end_ms;     /* with advance: stop the hammers when the clock gets here */
	long sleep_us;
};

static void *reconciler_main(void *arg)
{
	struct reconciler *r = arg;
	while (!atomic_load(r->stop)) {
		uint64_t now = atomic_load(r->clock);
		sl_limiter_reconcile(r->l, now);
		for (uint32_t i = 0; i < r->hammers_num; i++)
			atomic_store(&r->hammers[i].refused, 0);
		sleep_us(r->sleep_us);
		if (r->advance_ms) {
			/* Every core has demand all the time: the clock moves on only
			 * once each hammer was refused since the pass. (The threads
			 * oversubscribe this machine's CPUs; a descheduled thread is
			 * not a core with requests waiting.) */
			for (int waited = 0; waited < 2000; waited++) {
				uint32_t done = 0;
				for (uint32_t i = 0; i < r->hammers_num; i++)
					done += (uint32_t)atomic_load(&r->hammers[i].refused);
				if (done == r->hammers_num)
					break;
				sleep_us(100);
			}
			if (now + r->advance_ms >= r->end_ms) {
				atomic_store(r->stop, 1);
				break;
			}
			atomic_store(r->clock, now + r->advance_ms);
		}
	}
	return NULL;
}

/* Runs `cores` hammer threads on slot 0 and a reconciler thread; returns
 * admitted counts per window in per_window (summed over threads). */
struct run_result {
	uint64_t admitted;
	uint64_t per_window[WINDOWS_MAX];
	uint64_t tokens_actual, tokens_extra;
	int in_flight_max, violations;
};

static void run_threads(struct sl_limiter *l, uint32_t cores, uint64_t start_ms, uint64_t advance_ms,
                        uint64_t end_ms, long run_us, uint64_t concurrency_limit, bool vary_tokens,
                        struct run_result *out)
{
	_Atomic int stop = 0, in_flight = 0, in_flight_max = 0, violations = 0;
	_Atomic uint64_t clock = start_ms;
	struct hammer h[8];
	struct reconciler r = {
		.l = l, .hammers = h, .hammers_num = cores, .stop = &stop, .clock = &clock, .advance_ms = advance_ms, .end_ms = end_ms, .sleep_us = 300,
	};
	SL_ASSERT(cores <= 8);
	for (uint32_t c = 0; c < cores; c++) {
		h[c] = (struct hammer){
			.l = l, .core = c, .slot = 0, .tokens = 10, .stop = &stop, .clock = &clock,
			.in_flight = &in_flight, .in_flight_max = &in_flight_max, .violations = &violations,
			.concurrency_limit = concurrency_limit, .vary_tokens = vary_tokens,
		};
		SL_ASSERT(pthread_create(&h[c].thread, NULL, hammer_main, &h[c]) == 0);
	}
	SL_ASSERT(pthread_create(&r.thread, NULL, reconciler_main, &r) == 0);
	if (!advance_ms) {
		sleep_us(run_us);
		atomic_store(&stop, 1);
	}
	pthread_join(r.thread, NULL);
	memset(out, 0, sizeof(*out));
	for (uint32_t c = 0; c < cores; c++) {
		pthread_join(h[c].thread, NULL);
		out->admitted += h[c].admitted;
		out->tokens_actual += h[c].tokens_actual;
		out->tokens_extra += h[c].tokens_extra;
		for (int w = 0; w < WINDOWS_MAX; w++)
			out->per_window[w] += h[c].per_window[w];
	}
	out->in_flight_max = atomic_load(&in_flight_max);
	out->violations = atomic_load(&violations);
}

/* Each threaded case runs twice: reconciler only (local_only), and as the
 * gateway runs (refusals also take from other cores' words). */
TEST(threads_one_window_exact_and_97_percent)
{
	for (int shared = 0; shared < 2; shared++) {
		for (uint32_t cores = 4; cores <= 8; cores += 4) {
			struct sl_limiter *l = make_mode(cores, 4, 60000, shared);
			set4(l, 0, 60, 0, 0, 0);
			struct run_result res;
			run_threads(l, cores, T0 + 5000, 0, 0, 100000, 0, false, &res);
			CHECK(res.admitted <= 60);
			CHECK(res.admitted * 100 >= 97 * 60);
			if (res.admitted > 60 || res.admitted * 100 < 97 * 60)
				printf("  cores %u shared %d: admitted %" PRIu64 " of 60\n", cores, shared, res.admitted);
			sl_limiter_free(l);
		}
	}
}

/* 30 windows of 1000 ms, a pass every 50 ms of the injected clock (20 a
 * window), windows counted by the period each admission was charged to. */
static void many_windows(uint32_t cores, bool shared, uint64_t rpm, uint64_t tpm, bool vary_tokens,
                         struct run_result *res)
{
	struct sl_limiter *l = make_mode(cores, 4, 1000, shared);
	set4(l, 0, rpm, tpm, 0, 0);
	run_threads(l, cores, 0, 50, 30000, 0, 0, vary_tokens, res);
	sl_limiter_free(l);
}

TEST(threads_many_windows_advancing_clock)
{
	for (uint32_t run = 0; run < 4; run++) {
		uint32_t cores = run & 1 ? 8 : 4;
		bool shared = run >= 2;
		struct run_result res;
		many_windows(cores, shared, 60, 0, false, &res);
		uint64_t over = 0, under = 0;
		for (int w = 0; w < 30; w++) {
			over += res.per_window[w] > 60;
			under += w > 0 && w < 29 && res.per_window[w] * 100 < 97 * 60;
		}
		CHECK_EQ_INT(over, 0);
		CHECK_EQ_INT(under, 0);
		if (over || under) {
			for (int w = 0; w < 30; w++)
				printf(" %" PRIu64, res.per_window[w]);
			printf("\n");
		}
	}
}

TEST(threads_tpm_overshoot_only_beyond_estimates)
{
	/* 600 tokens a window, estimates of 10, real use 5..15: what was used
	 * never exceeds the limits plus the sum of (actual - estimate) > 0 */
	for (int shared = 0; shared < 2; shared++) {
		struct run_result res;
		many_windows(4, shared, 0, 600, true, &res);
		CHECK(res.admitted > 0);
		CHECK(res.tokens_actual <= 30 * 600 + res.tokens_extra);
		uint64_t admitted_fair = 0;
		for (int w = 1; w < 29; w++)
			admitted_fair += res.per_window[w];
		CHECK(admitted_fair * 10 * 100 >= 90 * 28 * 600); /* >= 90% of the tokens, by estimate */
	}
}

TEST(threads_concurrency_exact)
{
	const uint32_t cores = 4;
	for (int shared = 0; shared < 2; shared++) {
		struct sl_limiter *l = make_mode(cores, 4, 60000, shared);
		set4(l, 0, 0, 0, 3, 0);
		struct run_result res;
		run_threads(l, cores, T0, 0, 0, 100000, 3, false, &res);
		CHECK_EQ_INT(res.violations, 0);
		CHECK(res.in_flight_max >= 1 && res.in_flight_max <= 3);
		CHECK(res.admitted > 100);
		/* everything finished: all 3 units are free again, wherever they are */
		sl_limiter_reconcile(l, T0 + 100);
		sl_limiter_reconcile(l, T0 + 150);
		struct sl_limit_ticket t[4];
		int admitted = 0;
		for (uint32_t c = 0; c < cores; c++)
			while (admitted < 4 &&
			       sl_limiter_admit(l, c, 0, 0, T0 + 200, &t[admitted], NULL) == SL_LIMIT_NONE)
				admitted++;
		CHECK_EQ_INT(admitted, 3);
		sl_limiter_free(l);
	}
}

/* --- the state file -------------------------------------------------------------------- */

static const char *ids[] = { "key_000000000001", "key_000000000002", "model:gpt-x", "key_000000000004" };

static const char *slot_id_cb(void *ctx, uint32_t slot)
{
	(void)ctx;
	return slot < SL_ARRAY_LEN(ids) ? ids[slot] : NULL;
}

/* A restarted process may number slots differently: here reversed. */
static int64_t slot_of_reversed(void *ctx, const char *id)
{
	(void)ctx;
	for (uint32_t i = 0; i < SL_ARRAY_LEN(ids); i++)
		if (strcmp(ids[i], id) == 0)
			return (int64_t)(SL_ARRAY_LEN(ids) - 1 - i);
	return -1;
}

struct seen {
	int num;
	uint64_t last_used[4];
};

static void last_used_cb(void *ctx, const char *id, uint64_t last_used_ms)
{
	struct seen *s = ctx;
	for (uint32_t i = 0; i < SL_ARRAY_LEN(ids); i++)
		if (strcmp(ids[i], id) == 0)
			s->last_used[i] = last_used_ms;
	s->num++;
}

/* Slot 0: 4 of 10 requests, 400 of 1000 tokens, 4 of 100 daily used;
 * slot 1: 10 of 10 used. Saved at `at`. */
static void save_some(int dir_fd, uint64_t at)
{
	struct sl_limiter *l = make(2, 4, 60000, 0);
	set4(l, 0, 10, 1000, 0, 100);
	set4(l, 1, 10, 0, 0, 0);
	struct sl_limit_ticket t;
	for (int i = 0; i < 4; i++) {
		SL_ASSERT(sl_limiter_admit(l, (uint32_t)i & 1, 0, 100, at - 100 + (uint64_t)i, &t, NULL) == SL_LIMIT_NONE);
		sl_limiter_finish(l, (uint32_t)i & 1, &t, 100, at);
	}
	SL_ASSERT(drain(l, 0, 1, 0, at) + drain(l, 1, 1, 0, at) == 10);
	sl_limiter_reconcile(l, at);
	SL_ASSERT(sl_limiter_save(l, dir_fd, slot_id_cb, NULL, at) == 0);
	sl_limiter_free(l);
}

static struct sl_limiter *load_some(int dir_fd, uint64_t at, int *out_rc)
{
	struct sl_limiter *l = make(2, 4, 60000, 0);
	set4(l, 3, 10, 1000, 0, 100); /* was slot 0 */
	set4(l, 2, 10, 0, 0, 0);      /* was slot 1 */
	*out_rc = sl_limiter_load(l, dir_fd, slot_of_reversed, NULL, at);
	return l;
}

TEST(save_load_round_trip)
{
	int dir_fd = fresh_dir();
	uint64_t at = T0 + 30000;
	save_some(dir_fd, at);
	struct seen s = { 0 };
	CHECK_EQ_INT(sl_limiter_read_last_used(dir_fd, last_used_cb, &s), 0);
	CHECK_EQ_INT(s.num, 2);
	CHECK_EQ_INT(s.last_used[0], at - 97);
	CHECK_EQ_INT(s.last_used[1], at);

	/* same window: the used counts hold */
	int rc;
	struct sl_limiter *l = load_some(dir_fd, at + 1000, &rc);
	CHECK_EQ_INT(rc, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 3, 100, at + 1000, &t, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.requests_remaining, 5);
	CHECK_EQ_INT(rep.tokens_remaining, 500);
	CHECK_EQ_INT(rep.daily_remaining, 95);
	CHECK_EQ_INT(1 + drain(l, 0, 3, 100, at + 1000) + drain(l, 1, 3, 100, at + 1000), 6);
	/* used == limit before the restart: still refused, until the window ends */
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 2, 0, at + 1000, &t, &rep), SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(rep.retry_after_ms, 29000);
	sl_limiter_reconcile(l, at + 1050);
	CHECK_EQ_INT(drain(l, 0, 2, 0, at + 1100) + drain(l, 1, 2, 0, at + 1100), 0);
	CHECK_EQ_INT(drain(l, 0, 2, 0, T0 + 60000) + drain(l, 1, 2, 0, T0 + 60000), 10);
	/* saved again, the restored last_used survives */
	sl_limiter_reconcile(l, T0 + 60000);
	CHECK_EQ_INT(sl_limiter_save(l, dir_fd, slot_id_cb, NULL, T0 + 60000), 0);
	sl_limiter_free(l);
	memset(&s, 0, sizeof(s));
	CHECK_EQ_INT(sl_limiter_read_last_used(dir_fd, last_used_cb, &s), 0);
	CHECK_EQ_INT(s.last_used[3], at + 1000); /* slot 3 = "key_000000000004" now */
	CHECK_EQ_INT(s.last_used[2], T0 + 60000);
	close(dir_fd);
}

TEST(load_ignores_stale_periods)
{
	int dir_fd = fresh_dir();
	save_some(dir_fd, T0 + 30000);
	int rc;
	/* next window, same day: window counts stale, daily count holds */
	struct sl_limiter *l = load_some(dir_fd, T0 + 60000, &rc);
	CHECK_EQ_INT(rc, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 3, 100, T0 + 60000, &t, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.requests_remaining, 9);
	CHECK_EQ_INT(rep.tokens_remaining, 900);
	CHECK_EQ_INT(rep.daily_remaining, 95);
	CHECK_EQ_INT(drain(l, 0, 2, 0, T0 + 60000) + drain(l, 1, 2, 0, T0 + 60000), 10);
	sl_limiter_free(l);
	/* next day: everything fresh */
	l = load_some(dir_fd, T0 + 86400000, &rc);
	CHECK_EQ_INT(rc, 0);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 3, 100, T0 + 86400000, &t, &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.daily_remaining, 99);
	sl_limiter_free(l);
	/* a different window length: window counts ignored */
	struct sl_limiter_config cfg = { .cores = 2, .slots = 4, .window_ms = 30000 };
	SL_ASSERT(sl_limiter_create(&cfg, &l) == 0);
	set4(l, 2, 10, 0, 0, 0);
	CHECK_EQ_INT(sl_limiter_load(l, dir_fd, slot_of_reversed, NULL, T0 + 30000), 0);
	CHECK_EQ_INT(drain(l, 0, 2, 0, T0 + 30000) + drain(l, 1, 2, 0, T0 + 30000), 10);
	sl_limiter_free(l);
	close(dir_fd);
}

static void damage(int dir_fd, off_t at, bool truncate_there)
{
	int fd = openat(dir_fd, SL_LIMITER_STATE_NAME, O_RDWR);
	SL_ASSERT(fd >= 0);
	if (truncate_there) {
		SL_ASSERT(ftruncate(fd, at) == 0);
	} else {
		uint8_t b;
		SL_ASSERT(pread(fd, &b, 1, at) == 1);
		b ^= 0x10;
		SL_ASSERT(pwrite(fd, &b, 1, at) == 1);
	}
	close(fd);
}

static off_t state_size(int dir_fd)
{
	struct stat st;
	SL_ASSERT(fstatat(dir_fd, SL_LIMITER_STATE_NAME, &st, 0) == 0);
	return st.st_size;
}

TEST(corrupt_or_torn_file_refused_nothing_restored)
{
	int dir_fd = fresh_dir();
	int rc;
	struct sl_limiter *l = load_some(dir_fd, T0 + 30000, &rc);
	CHECK_EQ_INT(rc, -ENOENT);
	sl_limiter_free(l);

	save_some(dir_fd, T0 + 30000);
	damage(dir_fd, state_size(dir_fd) - 3, false); /* a byte of the last record */
	l = load_some(dir_fd, T0 + 30000, &rc);
	CHECK_EQ_INT(rc, -EBADMSG);
	CHECK_EQ_INT(drain(l, 0, 2, 0, T0 + 30000) + drain(l, 1, 2, 0, T0 + 30000), 10);
	CHECK_EQ_INT(drain(l, 0, 3, 0, T0 + 30000) + drain(l, 1, 3, 0, T0 + 30000), 10);
	sl_limiter_free(l);
	struct seen s = { 0 };
	CHECK_EQ_INT(sl_limiter_read_last_used(dir_fd, last_used_cb, &s), -EBADMSG);
	CHECK_EQ_INT(s.num, 0);

	save_some(dir_fd, T0 + 30000);
	damage(dir_fd, state_size(dir_fd) - 5, true); /* torn */
	l = load_some(dir_fd, T0 + 30000, &rc);
	CHECK_EQ_INT(rc, -EBADMSG);
	CHECK_EQ_INT(drain(l, 0, 3, 0, T0 + 30000) + drain(l, 1, 3, 0, T0 + 30000), 10);
	sl_limiter_free(l);

	save_some(dir_fd, T0 + 30000);
	damage(dir_fd, 0, true); /* empty */
	l = load_some(dir_fd, T0 + 30000, &rc);
	CHECK_EQ_INT(rc, -EBADMSG);
	sl_limiter_free(l);
	close(dir_fd);
}

TEST(create_rejects_bad_config)
{
	struct sl_limiter *l = NULL;
	struct sl_limiter_config cfg = { .cores = 0, .slots = 4 };
	CHECK_EQ_INT(sl_limiter_create(&cfg, &l), -EINVAL);
	cfg = (struct sl_limiter_config){ .cores = 2, .slots = 4, .day_reset_hour_utc = 24 };
	CHECK_EQ_INT(sl_limiter_create(&cfg, &l), -EINVAL);
	cfg = (struct sl_limiter_config){ .cores = 2, .slots = 0 };
	CHECK_EQ_INT(sl_limiter_create(&cfg, &l), -EINVAL);
	sl_limiter_free(NULL);
}

TEST(refusal_path_takes_from_other_cores)
{
	/* limit 3 on 2 cores: one core admits all 3 with no pass at all, the
	 * fourth is refused, and the other core has nothing left either */
	struct sl_limiter *l = make_shared(2, 4);
	set4(l, 1, 3, 0, 0, 0);
	CHECK_EQ_INT(drain(l, 0, 1, 0, T0), 3);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 1, 0, T0, &t, &rep), SL_LIMIT_REQUESTS);
	CHECK_EQ_INT(rep.requests_remaining, 0);
	CHECK_EQ_INT(rep.retry_after_ms, 60000 - (T0 % 60000));
	sl_limiter_free(l);
}

TEST(token_estimate_gathered_across_cores)
{
	/* tpm 3000 on 2 cores (1500 each): 1000 + 1000 fit one word each, the
	 * third 1000 only in the sum of the two words' rest (500 + 500) */
	struct sl_limiter *l = make_shared(2, 4);
	set4(l, 2, 0, 3000, 0, 0);
	struct sl_limit_ticket t[4];
	struct sl_limit_report rep;
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 2, 1000, T0, &t[0], &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 2, 1000, T0, &t[1], &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(sl_limiter_admit(l, 0, 2, 1000, T0, &t[2], &rep), SL_LIMIT_NONE);
	CHECK_EQ_INT(rep.tokens_remaining, 0);
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 2, 1, T0, &t[3], &rep), SL_LIMIT_TOKENS);
	/* real usage smaller: the difference comes back */
	sl_limiter_finish(l, 0, &t[2], 400, T0 + 1);
	CHECK_EQ_INT(sl_limiter_admit(l, 1, 2, 600, T0 + 2, &t[3], &rep), SL_LIMIT_NONE);
	sl_limiter_free(l);
}

TEST(remaining_is_exact_across_cores)
{
	struct sl_limiter *l = make_shared(4, 4);
	set4(l, 0, 10, 0, 0, 0);
	struct sl_limit_ticket t;
	struct sl_limit_report rep;
	for (uint32_t i = 0; i < 10; i++) {
		CHECK_EQ_INT(sl_limiter_admit(l, i % 4, 0, 0, T0, &t, &rep), SL_LIMIT_NONE);
		CHECK_EQ_INT(rep.requests_remaining, 9 - i);
	}
	sl_limiter_free(l);
}

/* The hand-written civil date agrees with gmtime_r + strftime on edges
 * (epoch, leap days, century years, the 9999 clamp) and on random times. */
TEST(rfc3339_matches_gmtime)
{
	char got[21], want[32];
	const int64_t edges[] = { 0, 1, 999, 1000, 951782400000, 951868799999, 4107542400000,
		                  4107456000000, 1795392000000, 253402300799000 };
	uint64_t x = 88172645463325252u;
	for (int i = 0; i < 20000; i++) {
		uint64_t ms;
		if (i < (int)(sizeof edges / sizeof edges[0])) {
			ms = (uint64_t)edges[i];
		} else {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			ms = x % UINT64_C(253402300799000);
		}
		sl_format_rfc3339(ms, got);
		time_t t = (time_t)((ms + 999) / 1000);
		struct tm tm;
		gmtime_r(&t, &tm);
		strftime(want, sizeof want, "%Y-%m-%dT%H:%M:%SZ", &tm);
		CHECK_EQ_MEM(got, strlen(got), want);
		if (strcmp(got, want) != 0)
			break;
	}
	sl_format_rfc3339(UINT64_MAX, got);
	CHECK_EQ_MEM(got, strlen(got), "9999-12-31T23:59:59Z");
}

int main(void)
{
	RUN(refusal_path_takes_from_other_cores);
	RUN(token_estimate_gathered_across_cores);
	RUN(remaining_is_exact_across_cores);
	if (!mkdtemp(dir_template)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(single_core_exact_rpm);
	RUN(unlimited_slot_always_admits);
	RUN(static_shares_sum_to_limit);
	RUN(idle_core_gives_back_within_one_pass);
	RUN(light_load_keeps_shares_everywhere);
	RUN(report_remaining_values);
	RUN(retry_after_values);
	RUN(rpd_rolls_over_at_configured_hour);
	RUN(concurrency_exact_one_core_and_cancel);
	RUN(peek_reports_without_charging);
	RUN(tpm_estimate_corrected_down_and_up);
	RUN(request_bigger_than_limit_refused);
	RUN(big_estimate_above_share_not_starved);
	RUN(set_changes_limit_mid_window);
	RUN(limit_change_applied_in_a_pass_without_demand);
	RUN(ring_full_and_visit_overflow_recover);
	RUN(threads_one_window_exact_and_97_percent);
	RUN(threads_many_windows_advancing_clock);
	RUN(threads_tpm_overshoot_only_beyond_estimates);
	RUN(threads_concurrency_exact);
	RUN(save_load_round_trip);
	RUN(load_ignores_stale_periods);
	RUN(corrupt_or_torn_file_refused_nothing_restored);
	RUN(create_rejects_bad_config);
	RUN(rfc3339_matches_gmtime);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir_template);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir_template);
	return test_summary();
}
