/*
 * test_route.c - target and key selection, cooldowns, disabled keys and
 * circuits, with an injected clock (route.h).
 */
#include "sluice/config.h"
#include "sluice/route.h"
#include "test.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Model "m": targets a (priority 1, weight 3: keys k1 weight 1, k2 weight
 * 3), b (priority 1, weight 1: one key), c (priority 2: one key). */
static const char CONFIG[] =
        "{ \"listen\": [{ \"address\": \"127.0.0.1:0\" }],"
        "  \"routing\": { \"circuit_failures\": 3, \"circuit_window_ms\": 1000,"
        "                 \"circuit_open_ms\": 500, \"cooldown_ms\": 100, \"cooldown_max_ms\": 400 },"
        "  \"providers\": {"
        "    \"pa\": { \"base_url\": \"http://127.0.0.1:1/v1\", \"format\": \"openai\","
        "              \"keys\": [{ \"key\": \"k1\", \"weight\": 1 }, { \"key\": \"k2\", \"weight\": 3 }] },"
        "    \"pb\": { \"base_url\": \"http://127.0.0.1:2\", \"format\": \"anthropic\", \"keys\": [\"kb\"] },"
        "    \"pc\": { \"base_url\": \"http://127.0.0.1:3/v1\", \"format\": \"openai\", \"keys\": [\"kc\"] } },"
        "  \"models\": { \"m\": { \"targets\": ["
        "    { \"provider\": \"pa\", \"model\": \"a\", \"priority\": 1, \"weight\": 3 },"
        "    { \"provider\": \"pb\", \"model\": \"b\", \"priority\": 1, \"weight\": 1 },"
        "    { \"provider\": \"pc\", \"model\": \"c\", \"priority\": 2 } ] } } }";

static struct sl_config *cfg;
static struct sl_routing *rt;
static uint32_t inflight[8];

static void setup(void)
{
	char err[256];
	if (cfg)
		sl_config_free(cfg);
	sl_route_free(rt);
	cfg = NULL;
	rt = NULL;
	memset(inflight, 0, sizeof inflight);
	if (sl_config_load_string(CONFIG, sizeof CONFIG - 1, "test", &cfg, err, sizeof err) != 0) {
		printf("config: %s\n", err);
		abort();
	}
	if (sl_route_create(cfg, &rt) != 0)
		abort();
}

static uint64_t lcg(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return *s >> 11;
}

static int pick(uint64_t now, uint64_t rnd, const struct sl_route_pick *tried, unsigned n,
                struct sl_route_pick *out, uint64_t *retry_at)
{
	return sl_route_pick(rt, inflight, 0, tried, n, now, rnd, true, out, retry_at);
}

TEST(weights_split_the_best_priority_group)
{
	setup();
	unsigned by_target[3] = { 0 }, by_key[2] = { 0 };
	uint64_t s = 1, ra;
	for (int i = 0; i < 40000; i++) {
		struct sl_route_pick p;
		CHECK_EQ_INT(pick(1000, lcg(&s), NULL, 0, &p, &ra), 0);
		by_target[p.target]++;
		if (p.target == 0)
			by_key[p.key]++;
	}
	/* a:b = 3:1 within priority 1; c (priority 2) never while they work */
	CHECK(by_target[0] > 28000 && by_target[0] < 32000);
	CHECK(by_target[1] > 8000 && by_target[1] < 12000);
	CHECK_EQ_INT(by_target[2], 0);
	/* with nothing in flight the heavier key wins every time */
	CHECK_EQ_INT(by_key[0], 0);
}

TEST(headroom_spreads_keys_by_weight_and_in_flight)
{
	setup();
	uint32_t k1 = sl_route_key_index(rt, 0, 0), k2 = sl_route_key_index(rt, 0, 1);
	uint64_t ra;
	struct sl_route_pick p;
	/* k2 (weight 3) while it carries fewer than 3 per k1's 1 (ties: k1) */
	inflight[k2] = 1; /* 3/2 > 1/1 */
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, NULL, 0, 1000, 0, true, &p, &ra), 0);
	CHECK(p.target == 0 && p.key == 1);
	inflight[k2] = 3; /* 3/4 < 1/1 */
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, NULL, 0, 1000, 0, true, &p, &ra), 0);
	CHECK(p.target == 0 && p.key == 0);
	inflight[k1] = 1; /* 1/2 < 3/4 */
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, NULL, 0, 1000, 0, true, &p, &ra), 0);
	CHECK(p.target == 0 && p.key == 1);
}

TEST(tried_pairs_are_skipped_then_the_next_priority)
{
	setup();
	struct sl_route_pick tried[3] = { { 0, 1 }, { 0, 0 }, { 1, 0 } }, p;
	uint64_t ra;
	CHECK_EQ_INT(pick(1000, 0, tried, 1, &p, &ra), 0);
	CHECK(p.target != 0 || p.key == 0); /* k2 tried: k1 or target b */
	CHECK_EQ_INT(pick(1000, 0, tried, 3, &p, &ra), 0);
	CHECK(p.target == 2 && p.key == 0); /* priority 2 once priority 1 is spent */
	struct sl_route_pick all[4] = { { 0, 1 }, { 0, 0 }, { 1, 0 }, { 2, 0 } };
	CHECK_EQ_INT(pick(1000, 0, all, 4, &p, &ra), -ENOENT);
}

TEST(rate_limited_keys_cool_down_for_retry_after_then_doubling)
{
	setup();
	struct sl_route_pick p, k2 = { 0, 1 }, k1 = { 0, 0 }, b = { 1, 0 }, c = { 2, 0 };
	uint64_t ra = 0;
	sl_route_report(rt, 0, &k2, SL_ROUTE_RATE_LIMITED, 3000, 1000);
	uint64_t s = 7;
	for (int i = 0; i < 200; i++) {
		CHECK_EQ_INT(pick(1000, lcg(&s), NULL, 0, &p, &ra), 0);
		CHECK(!(p.target == 0 && p.key == 1)); /* k2 cools until 4000 */
	}
	/* every route cooling: -EAGAIN with the earliest recovery */
	sl_route_report(rt, 0, &k1, SL_ROUTE_RATE_LIMITED, 0, 1000);  /* 100 ms */
	sl_route_report(rt, 0, &b, SL_ROUTE_RATE_LIMITED, 2000, 1000); /* until 3000 */
	sl_route_report(rt, 0, &c, SL_ROUTE_RATE_LIMITED, 5000, 1000); /* until 6000 */
	CHECK_EQ_INT(pick(1050, 0, NULL, 0, &p, &ra), -EAGAIN);
	CHECK_EQ_INT(ra, 1100);
	CHECK_EQ_INT(pick(1100, 0, NULL, 0, &p, &ra), 0);
	CHECK(p.target == 0 && p.key == 0);
	/* 429s in a row without Retry-After: 100, 200, 400, 400 ms */
	uint64_t now = 2000;
	const uint64_t expect[] = { 200, 400, 400 };
	for (int i = 0; i < 3; i++) {
		sl_route_report(rt, 0, &k1, SL_ROUTE_RATE_LIMITED, 0, now);
		struct sl_route_pick skip[2] = { { 0, 1 }, { 1, 0 } };
		CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, skip, 2, now, 0, true, &p, &ra), -EAGAIN);
		CHECK_EQ_INT(ra, now + expect[i] < 6000 ? now + expect[i] : 6000);
		now += expect[i];
	}
	/* a success resets the doubling */
	sl_route_report(rt, 0, &k1, SL_ROUTE_OK, 0, now);
	sl_route_report(rt, 0, &k1, SL_ROUTE_RATE_LIMITED, 0, now);
	struct sl_route_pick skip[2] = { { 0, 1 }, { 1, 0 } };
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, skip, 2, now, 0, true, &p, &ra), -EAGAIN);
	CHECK_EQ_INT(ra, now + 100);
}

TEST(refused_keys_stay_disabled_until_reenabled)
{
	setup();
	struct sl_route_pick p, k2 = { 0, 1 }, k1 = { 0, 0 };
	uint64_t ra;
	sl_route_report(rt, 0, &k2, SL_ROUTE_AUTH, 0, 1000);
	sl_route_report(rt, 0, &k1, SL_ROUTE_AUTH, 0, 1000);
	uint64_t s = 3;
	for (int i = 0; i < 100; i++) {
		CHECK_EQ_INT(pick(1000 + (uint64_t)i * 100000, lcg(&s), NULL, 0, &p, &ra), 0);
		CHECK_EQ_INT(p.target, 1); /* provider pa has no usable key; b is left */
	}
	sl_route_reenable_keys(rt);
	CHECK_EQ_INT(pick(1000, 0, NULL, 0, &p, &ra), 0);
	CHECK(p.target == 0 && p.key == 1);
}

TEST(circuit_opens_after_failures_in_window_and_probes_half_open)
{
	setup();
	struct sl_route_pick p, a = { 0, 1 }, b = { 1, 0 };
	uint64_t ra;
	/* two failures, then the window passes: still closed */
	sl_route_report(rt, 0, &b, SL_ROUTE_FAILED, 0, 1000);
	sl_route_report(rt, 0, &b, SL_ROUTE_FAILED, 0, 1500);
	sl_route_report(rt, 0, &b, SL_ROUTE_FAILED, 0, 2600); /* a new window: 1 */
	uint64_t s = 11;
	unsigned got_b = 0;
	for (int i = 0; i < 400; i++) {
		CHECK_EQ_INT(pick(2600, lcg(&s), NULL, 0, &p, &ra), 0);
		got_b += p.target == 1;
	}
	CHECK(got_b > 50);
	/* three within the window: open for 500 ms */
	sl_route_report(rt, 0, &b, SL_ROUTE_FAILED, 0, 2700);
	sl_route_report(rt, 0, &b, SL_ROUTE_FAILED, 0, 2800);
	for (int i = 0; i < 400; i++) {
		CHECK_EQ_INT(pick(2900, lcg(&s), NULL, 0, &p, &ra), 0);
		CHECK_EQ_INT(p.target, 0);
	}
	/* only b is left: -EAGAIN until the circuit half-opens at 3300 */
	struct sl_route_pick not_a[2] = { { 0, 0 }, { 0, 1 } };
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, not_a, 2, 3000, 0, true, &p, &ra), 0);
	CHECK_EQ_INT(p.target, 2); /* priority 2 takes over */
	struct sl_route_pick not_ac[3] = { { 0, 0 }, { 0, 1 }, { 2, 0 } };
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, not_ac, 3, 3000, 0, true, &p, &ra), -EAGAIN);
	CHECK_EQ_INT(ra, 3300);
	/* half-open: one probe; a second one waits */
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, not_ac, 3, 3300, 0, true, &p, &ra), 0);
	CHECK_EQ_INT(p.target, 1);
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, not_ac, 3, 3301, 0, true, &p, &ra), -EAGAIN);
	/* the probe fails: open again for 500 ms */
	sl_route_report(rt, 0, &b, SL_ROUTE_FAILED, 0, 3400);
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, not_ac, 3, 3500, 0, true, &p, &ra), -EAGAIN);
	CHECK_EQ_INT(ra, 3900);
	/* the next probe succeeds: closed */
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, not_ac, 3, 3900, 0, true, &p, &ra), 0);
	sl_route_report(rt, 0, &b, SL_ROUTE_OK, 0, 3950);
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, not_ac, 3, 3951, 0, true, &p, &ra), 0);
	CHECK_EQ_INT(sl_route_pick(rt, inflight, 0, not_ac, 3, 3952, 0, true, &p, &ra), 0);
	CHECK_EQ_INT(p.target, 1);
	(void)a;
}

TEST(backoff_doubles_with_jitter_within_bounds)
{
	struct sl_routing_config rc = { .backoff_ms = 40, .backoff_max_ms = 200 };
	uint64_t s = 5;
	const uint64_t base[] = { 0, 0, 40, 80, 160, 200, 200 };
	for (unsigned attempt = 2; attempt <= 6; attempt++) {
		uint64_t lo = UINT64_MAX, hi = 0;
		for (int i = 0; i < 2000; i++) {
			uint64_t b = sl_route_backoff_ms(&rc, attempt, lcg(&s));
			lo = b < lo ? b : lo;
			hi = b > hi ? b : hi;
		}
		CHECK(lo >= base[attempt] / 2 && hi <= base[attempt]);
		CHECK(hi - lo >= base[attempt] / 4); /* jittered */
	}
}

int main(void)
{
	RUN(weights_split_the_best_priority_group);
	RUN(headroom_spreads_keys_by_weight_and_in_flight);
	RUN(tried_pairs_are_skipped_then_the_next_priority);
	RUN(rate_limited_keys_cool_down_for_retry_after_then_doubling);
	RUN(refused_keys_stay_disabled_until_reenabled);
	RUN(circuit_opens_after_failures_in_window_and_probes_half_open);
	RUN(backoff_doubles_with_jitter_within_bounds);
	sl_route_free(rt);
	sl_config_free(cfg);
	return test_summary();
}
