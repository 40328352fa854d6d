#include "../../src/pool.c"
#include "test.h"

TEST(class_boundaries)
{
	CHECK_EQ_INT(sl_bufpool_class(1), 12);
	CHECK_EQ_INT(sl_bufpool_class(4096), 12);
	CHECK_EQ_INT(sl_bufpool_class(4097), 13);
	CHECK_EQ_INT(sl_bufpool_class(65536), 16);
	CHECK_EQ_INT(sl_bufpool_class(65537), 17);
}

TEST(get_put_reuses_block)
{
	struct sl_bufpool p;
	CHECK_EQ_INT(sl_bufpool_init(&p, 1 << 20), 0);
	size_t cap = 0;
	char *a = sl_bufpool_get(&p, 100, &cap);
	CHECK(a != NULL);
	CHECK_EQ_INT(cap, 4096);
	memset(a, 'x', cap);
	sl_bufpool_put(&p, a, cap);
	CHECK_EQ_INT(p.live_bytes, 0);
	char *b = sl_bufpool_get(&p, 4000, &cap);
	CHECK(a == b);
	sl_bufpool_put(&p, b, cap);
	sl_bufpool_destroy(&p);
}

TEST(exhaustion_returns_null_and_recovers)
{
	struct sl_bufpool p;
	CHECK_EQ_INT(sl_bufpool_init(&p, 64 * 1024), 0);
	size_t cap;
	void *blocks[16];
	int n = 0;
	while (n < 16 && (blocks[n] = sl_bufpool_get(&p, 8192, &cap)) != NULL)
		n++;
	CHECK_EQ_INT(n, 8);
	CHECK(sl_bufpool_get(&p, 8192, &cap) == NULL);
	CHECK(sl_bufpool_get(&p, 1 << 20, &cap) == NULL);
	sl_bufpool_put(&p, blocks[3], 8192);
	CHECK(sl_bufpool_get(&p, 5000, &cap) == blocks[3]);
	sl_bufpool_destroy(&p);
}

TEST(large_blocks_are_page_aligned)
{
	struct sl_bufpool p;
	CHECK_EQ_INT(sl_bufpool_init(&p, 8u << 20), 0);
	size_t cap;
	void *small = sl_bufpool_get(&p, 10, &cap);
	void *big = sl_bufpool_get(&p, 300000, &cap);
	CHECK(small != NULL && big != NULL);
	CHECK_EQ_INT(cap, 524288);
	CHECK_EQ_INT(((uintptr_t)big) & 65535, 0);
	sl_bufpool_destroy(&p);
}

int main(void)
{
	RUN(class_boundaries);
	RUN(get_put_reuses_block);
	RUN(exhaustion_returns_null_and_recovers);
	RUN(large_blocks_are_page_aligned);
	return test_summary();
}
