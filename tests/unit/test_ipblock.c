/*
 * test_ipblock.c - failed-auth counting per address: the threshold exactly,
 * success resets, expiry unblocks, IPv4 / IPv6 / v4-mapped identity, the
 * table full (fail-open), the sweep, and threads failing at once: on one
 * address (one block, the count never past the threshold) and on many
 * addresses sharing probe windows (no failure lands on another address).
 */
#include "../../src/ipblock.c"
#include "test.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <sys/un.h>

#define T0 1000000u /* a monotonic clock value to start from */
#define BLOCK_MS 300000u

static struct sockaddr_storage v4(const char *text, uint16_t port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	in->sin_family = AF_INET;
	in->sin_port = htons(port);
	SL_ASSERT(inet_pton(AF_INET, text, &in->sin_addr) == 1);
	return ss;
}

static struct sockaddr_storage v6(const char *text, uint16_t port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	in6->sin6_family = AF_INET6;
	in6->sin6_port = htons(port);
	SL_ASSERT(inet_pton(AF_INET6, text, &in6->sin6_addr) == 1);
	return ss;
}

/* The i-th test address, 10.x.y.z. */
static struct sockaddr_storage nth(uint32_t i)
{
	char text[32];
	snprintf(text, sizeof(text), "10.%u.%u.%u", (i >> 16) & 255, (i >> 8) & 255, i & 255);
	return v4(text, 40000);
}

#define SA(ss) ((const struct sockaddr *)&(ss))

/* The count in addr's entry, or -1 when it has none. */
static int64_t count_of(struct sl_ipblock *b, const struct sockaddr *sa)
{
	uint64_t a[2], w, expires_ms;
	SL_ASSERT(addr_key(sa, a));
	if (find(b, a, addr_hash(b, a), 0, SL_IPBLOCK_PROBE_MAX, &w, &expires_ms) < 0)
		return -1;
	return (int64_t)(w & COUNT_MASK);
}

TEST(empty_fast_path_and_disabled)
{
	struct sl_ipblock *b = sl_ipblock_create(1024, 50, BLOCK_MS);
	struct sockaddr_storage a = v4("192.0.2.1", 1);
	CHECK(!sl_ipblock_active(b));
	CHECK(!sl_ipblock_is_blocked(b, SA(a), T0, NULL));
	sl_ipblock_success(b, SA(a), T0); /* nothing to reset: no write */
	CHECK(!sl_ipblock_active(b));
	CHECK(!sl_ipblock_fail(b, SA(a), T0));
	CHECK(sl_ipblock_active(b));
	struct sl_ipblock_stats st;
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.capacity, 1024);
	CHECK_EQ_INT(st.entries_live, 1);
	sl_ipblock_free(b);
	sl_ipblock_free(NULL);

	/* threshold 0: nothing counted, nothing blocked */
	b = sl_ipblock_create(16, 0, BLOCK_MS);
	for (int i = 0; i < 1000; i++)
		CHECK(!sl_ipblock_fail(b, SA(a), T0));
	CHECK(!sl_ipblock_active(b));
	CHECK(!sl_ipblock_is_blocked(b, SA(a), T0, NULL));
	sl_ipblock_free(b);

	/* capacity rounding */
	b = sl_ipblock_create(1000, 50, 0);
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.capacity, 1024);
	CHECK_EQ_INT(b->block_ms, SL_IPBLOCK_BLOCK_MS_DEFAULT);
	sl_ipblock_free(b);
	b = sl_ipblock_create(0, 50, 1);
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.capacity, 65536);
	sl_ipblock_free(b);
	b = sl_ipblock_create(3, 50, 1);
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.capacity, SL_IPBLOCK_PROBE_MAX);
	sl_ipblock_free(b);
}

TEST(threshold_exactly_then_expiry)
{
	struct sl_ipblock *b = sl_ipblock_create(1024, 50, BLOCK_MS);
	struct sockaddr_storage a = v4("198.51.100.7", 5555), other = v4("198.51.100.8", 5555);
	uint64_t retry = 0;
	for (int i = 1; i <= 49; i++) {
		CHECK(!sl_ipblock_fail(b, SA(a), T0 + (uint64_t)i));
		CHECK(!sl_ipblock_is_blocked(b, SA(a), T0 + (uint64_t)i, &retry));
	}
	CHECK_EQ_INT(count_of(b, SA(a)), 49);
	CHECK(sl_ipblock_fail(b, SA(a), T0 + 50)); /* the 50th blocks */
	CHECK(sl_ipblock_is_blocked(b, SA(a), T0 + 50, &retry));
	CHECK_EQ_INT(retry, BLOCK_MS);
	CHECK(sl_ipblock_is_blocked(b, SA(a), T0 + 50 + 1000, &retry));
	CHECK_EQ_INT(retry, BLOCK_MS - 1000);
	CHECK(!sl_ipblock_is_blocked(b, SA(other), T0 + 50, NULL));
	/* failures during the block neither count nor extend it */
	for (int i = 0; i < 200; i++)
		CHECK(!sl_ipblock_fail(b, SA(a), T0 + 2000));
	CHECK(sl_ipblock_is_blocked(b, SA(a), T0 + 50 + BLOCK_MS - 1, &retry));
	CHECK_EQ_INT(retry, 1);
	/* a success during the block does not lift it */
	sl_ipblock_success(b, SA(a), T0 + 3000);
	CHECK(sl_ipblock_is_blocked(b, SA(a), T0 + 3000, NULL));
	/* expiry unblocks, and the next run needs the full threshold again */
	uint64_t t = T0 + 50 + BLOCK_MS;
	CHECK(!sl_ipblock_is_blocked(b, SA(a), t, NULL));
	for (int i = 1; i <= 49; i++)
		CHECK(!sl_ipblock_fail(b, SA(a), t));
	CHECK(!sl_ipblock_is_blocked(b, SA(a), t, NULL));
	CHECK(sl_ipblock_fail(b, SA(a), t));
	CHECK(sl_ipblock_is_blocked(b, SA(a), t, NULL));
	struct sl_ipblock_stats st;
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.blocks, 2);
	CHECK_EQ_INT(st.untracked_failures, 0);
	sl_ipblock_free(b);

	/* threshold 1: the first failure blocks */
	b = sl_ipblock_create(16, 1, 100);
	CHECK(sl_ipblock_fail(b, SA(a), T0));
	CHECK(sl_ipblock_is_blocked(b, SA(a), T0 + 99, &retry) && retry == 1);
	CHECK(!sl_ipblock_is_blocked(b, SA(a), T0 + 100, NULL));
	CHECK(sl_ipblock_fail(b, SA(a), T0 + 100));
	sl_ipblock_free(b);
}

TEST(success_resets_and_old_failures_lapse)
{
	struct sl_ipblock *b = sl_ipblock_create(1024, 50, BLOCK_MS);
	struct sockaddr_storage a = v6("2001:db8::42", 443);
	for (int i = 0; i < 49; i++)
		CHECK(!sl_ipblock_fail(b, SA(a), T0));
	sl_ipblock_success(b, SA(a), T0);
	CHECK_EQ_INT(count_of(b, SA(a)), -1); /* the entry is freed */
	CHECK(!sl_ipblock_active(b));
	for (int i = 0; i < 49; i++)
		CHECK(!sl_ipblock_fail(b, SA(a), T0));
	CHECK(!sl_ipblock_is_blocked(b, SA(a), T0, NULL));
	/* failures further apart than block_ms do not add up */
	CHECK(!sl_ipblock_fail(b, SA(a), T0 + BLOCK_MS));
	CHECK_EQ_INT(count_of(b, SA(a)), 1);
	for (int i = 0; i < 48; i++)
		CHECK(!sl_ipblock_fail(b, SA(a), T0 + BLOCK_MS + 10));
	CHECK(sl_ipblock_fail(b, SA(a), T0 + BLOCK_MS + 20));
	sl_ipblock_free(b);
}

TEST(ipv4_ipv6_mapped_identity)
{
	struct sl_ipblock *b = sl_ipblock_create(1024, 3, BLOCK_MS);
	struct sockaddr_storage a4 = v4("203.0.113.9", 1000);
	struct sockaddr_storage a4_port = v4("203.0.113.9", 2000);
	struct sockaddr_storage mapped = v6("::ffff:203.0.113.9", 3000);
	struct sockaddr_storage compat = v6("::203.0.113.9", 1000);
	struct sockaddr_storage six = v6("2001:db8::cb00:7109", 1000);
	struct sockaddr_storage near = v4("203.0.113.10", 1000);
	/* three failures through three views of one address */
	CHECK(!sl_ipblock_fail(b, SA(a4), T0));
	CHECK(!sl_ipblock_fail(b, SA(mapped), T0));
	CHECK(sl_ipblock_fail(b, SA(a4_port), T0));
	CHECK(sl_ipblock_is_blocked(b, SA(a4), T0, NULL));
	CHECK(sl_ipblock_is_blocked(b, SA(mapped), T0, NULL));
	CHECK(!sl_ipblock_is_blocked(b, SA(compat), T0, NULL));
	CHECK(!sl_ipblock_is_blocked(b, SA(six), T0, NULL));
	CHECK(!sl_ipblock_is_blocked(b, SA(near), T0, NULL));
	/* plain IPv6 addresses are counted on their own */
	CHECK(!sl_ipblock_fail(b, SA(six), T0));
	CHECK(!sl_ipblock_fail(b, SA(compat), T0));
	CHECK_EQ_INT(count_of(b, SA(six)), 1);
	CHECK_EQ_INT(count_of(b, SA(compat)), 1);
	/* other families are never tracked */
	struct sockaddr_un un = { .sun_family = AF_UNIX };
	CHECK(!sl_ipblock_fail(b, (const struct sockaddr *)&un, T0));
	CHECK(!sl_ipblock_is_blocked(b, (const struct sockaddr *)&un, T0, NULL));
	sl_ipblock_success(b, (const struct sockaddr *)&un, T0);
	sl_ipblock_free(b);
}

TEST(table_full_fails_open_then_reuses)
{
	/* 16 entries: one probe window is the whole table */
	struct sl_ipblock *b = sl_ipblock_create(16, 5, 1000);
	for (uint32_t i = 0; i < 16; i++) {
		struct sockaddr_storage a = nth(i);
		CHECK(!sl_ipblock_fail(b, SA(a), T0));
	}
	struct sl_ipblock_stats st;
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.entries_live, 16);
	/* the 17th address cannot be tracked: it is never blocked (fail-open) */
	struct sockaddr_storage x = nth(16);
	for (int i = 0; i < 10; i++)
		CHECK(!sl_ipblock_fail(b, SA(x), T0 + 1));
	CHECK(!sl_ipblock_is_blocked(b, SA(x), T0 + 1, NULL));
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.untracked_failures, 10);
	/* block address 0; once the others lapse (1000 ms after their failure)
	 * their entries are reused, but not the blocked one's */
	struct sockaddr_storage a0 = nth(0);
	for (int i = 0; i < 4; i++)
		sl_ipblock_fail(b, SA(a0), T0 + 500);
	CHECK(sl_ipblock_is_blocked(b, SA(a0), T0 + 500, NULL));
	for (uint32_t i = 100; i < 115; i++) {
		struct sockaddr_storage a = nth(i);
		CHECK(!sl_ipblock_fail(b, SA(a), T0 + 1000));
	}
	struct sockaddr_storage y = nth(200);
	CHECK(!sl_ipblock_fail(b, SA(y), T0 + 1000)); /* 15 reused + the block: full again */
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.untracked_failures, 11);
	CHECK(sl_ipblock_is_blocked(b, SA(a0), T0 + 1000, NULL));
	CHECK_EQ_INT(st.entries_live, 16);
	sl_ipblock_free(b);
}

TEST(sweep_frees_stale_entries)
{
	struct sl_ipblock *b = sl_ipblock_create(256, 3, 1000);
	for (uint32_t i = 0; i < 40; i++) {
		struct sockaddr_storage a = nth(i);
		sl_ipblock_fail(b, SA(a), T0);
	}
	struct sockaddr_storage blocked = nth(1000);
	for (int i = 0; i < 3; i++)
		sl_ipblock_fail(b, SA(blocked), T0 + 500);
	CHECK_EQ_INT(sl_ipblock_sweep(b, T0 + 999, 256), 0); /* nothing stale yet */
	uint32_t freed = 0;
	for (int i = 0; i < 4; i++) /* a quarter of the table per call */
		freed += sl_ipblock_sweep(b, T0 + 1000, 64);
	CHECK_EQ_INT(freed, 40);
	CHECK(sl_ipblock_active(b));
	CHECK(sl_ipblock_is_blocked(b, SA(blocked), T0 + 1000, NULL));
	CHECK_EQ_INT(sl_ipblock_sweep(b, T0 + 1500, 256), 1);
	CHECK(!sl_ipblock_active(b));
	CHECK(!sl_ipblock_is_blocked(b, SA(blocked), T0 + 1500, NULL));
	sl_ipblock_free(b);
}

/* --- threads ------------------------------------------------------------------------------ */

struct same_arg {
	struct sl_ipblock *b;
	int fails;
	int blocked_by_me;
	int64_t count_max;
};

static void *fail_same(void *arg)
{
	struct same_arg *a = arg;
	struct sockaddr_storage ip = v4("192.0.2.200", 1);
	for (int i = 0; i < a->fails; i++) {
		a->blocked_by_me += sl_ipblock_fail(a->b, SA(ip), T0);
		int64_t c = count_of(a->b, SA(ip));
		if (c > a->count_max)
			a->count_max = c;
	}
	return NULL;
}

TEST(threads_fail_one_address)
{
	enum { THREADS = 8 };
	/* fixed time: exactly one block, later failures are not counted */
	struct sl_ipblock *b = sl_ipblock_create(1024, 50, BLOCK_MS);
	pthread_t th[THREADS];
	struct same_arg args[THREADS];
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct same_arg){ .b = b, .fails = 20000 };
		pthread_create(&th[i], NULL, fail_same, &args[i]);
	}
	int blocks = 0;
	int64_t count_max = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		blocks += args[i].blocked_by_me;
		count_max = SL_MAX(count_max, args[i].count_max);
	}
	CHECK_EQ_INT(blocks, 1);
	CHECK(count_max < 50);
	struct sockaddr_storage ip = v4("192.0.2.200", 1);
	CHECK(sl_ipblock_is_blocked(b, SA(ip), T0, NULL));
	struct sl_ipblock_stats st;
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.entries_live, 1); /* one entry, no duplicate */
	CHECK_EQ_INT(st.untracked_failures, 0);
	sl_ipblock_free(b);

	/* 8 x 49 failures at once: the 50th blocks, the rest are not counted */
	b = sl_ipblock_create(1024, 50, BLOCK_MS);
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct same_arg){ .b = b, .fails = 49 };
		pthread_create(&th[i], NULL, fail_same, &args[i]);
	}
	blocks = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		blocks += args[i].blocked_by_me;
	}
	CHECK_EQ_INT(blocks, 1);
	sl_ipblock_free(b);
}

struct many_arg {
	struct sl_ipblock *b;
	uint32_t first; /* this thread's addresses: first .. first + 7 */
	int wrong;      /* blocks or counts that should not be */
};

static void *churn_own_addresses(void *arg)
{
	struct many_arg *a = arg;
	/* rounds of 4 failures then a success on each own address: entries are
	 * claimed and freed all the time in windows shared with the other
	 * threads; a failure landing on another address would show as a block
	 * (threshold 5) or a count above 4 */
	for (int round = 0; round < 30000; round++) {
		struct sockaddr_storage ip = nth(a->first + (uint32_t)round % 8);
		for (int k = 0; k < 4; k++)
			a->wrong += sl_ipblock_fail(a->b, SA(ip), T0);
		int64_t c = count_of(a->b, SA(ip));
		a->wrong += c > 4;
		a->wrong += sl_ipblock_is_blocked(a->b, SA(ip), T0, NULL);
		sl_ipblock_success(a->b, SA(ip), T0);
	}
	/* then exactly 5 failures block each own address once */
	for (uint32_t i = 0; i < 8; i++) {
		struct sockaddr_storage ip = nth(a->first + i);
		int blocks = 0;
		for (int k = 0; k < 5; k++)
			blocks += sl_ipblock_fail(a->b, SA(ip), T0);
		a->wrong += blocks != 1;
		a->wrong += !sl_ipblock_is_blocked(a->b, SA(ip), T0, NULL);
	}
	return NULL;
}

TEST(threads_share_windows_without_crosstalk)
{
	enum { THREADS = 6 };
	struct sl_ipblock *b = sl_ipblock_create(128, 5, BLOCK_MS);
	pthread_t th[THREADS];
	struct many_arg args[THREADS];
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct many_arg){ .b = b, .first = (uint32_t)i * 8 };
		pthread_create(&th[i], NULL, churn_own_addresses, &args[i]);
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		CHECK_EQ_INT(args[i].wrong, 0);
	}
	struct sl_ipblock_stats st;
	sl_ipblock_get_stats(b, &st);
	CHECK_EQ_INT(st.entries_live, THREADS * 8);
	CHECK_EQ_INT(st.blocks, THREADS * 8);
	CHECK_EQ_INT(st.untracked_failures, 0);
	CHECK_EQ_INT(sl_ipblock_sweep(b, T0 + BLOCK_MS, 128), THREADS * 8);
	CHECK(!sl_ipblock_active(b));
	sl_ipblock_free(b);
}

int main(void)
{
	RUN(empty_fast_path_and_disabled);
	RUN(threshold_exactly_then_expiry);
	RUN(success_resets_and_old_failures_lapse);
	RUN(ipv4_ipv6_mapped_identity);
	RUN(table_full_fails_open_then_reuses);
	RUN(sweep_frees_stale_entries);
	RUN(threads_fail_one_address);
	RUN(threads_share_windows_without_crosstalk);
	return test_summary();
}
