/*
 * test_credit.c - prices, holds and settlements, budgets, and the replay of
 * the usage log that balances are derived from (credit.h).
 */
#include "sluice/config.h"
#include "sluice/credit.h"
#include "sluice/usagelog.h"
#include "test.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static char dir_template[] = "/tmp/sluice-test-credit-XXXXXX";

#define PICO SL_PICO_PER_MICRO
#define DAY_MS UINT64_C(86400000)
/* 2026-11-22T12:00:00Z */
#define NOON UINT64_C(1795348800000)

/* sl_credit_hold with terms built from the arguments; no plan */
static enum sl_credit_refusal hold_no_plan(struct sl_credit *c, uint32_t slot, int64_t hold, bool prepaid,
                                   int64_t budget_day, int64_t budget_month, uint64_t now)
{
	struct sl_credit_terms t = { .prepaid = prepaid, .budget_day = budget_day,
		                     .budget_month = budget_month };
	uint32_t plan;
	enum sl_credit_refusal k = sl_credit_hold(c, slot, hold, &t, now, &plan);
	CHECK_EQ_INT(plan, 0);
	return k;
}

static struct sl_model_price price(int64_t in, int64_t out, int64_t cread, int64_t cwrite)
{
	struct sl_model_price p = { .input = in, .output = out, .cached_input = cread,
		                    .cache_write = cwrite, .set = true };
	return p;
}

/* A million requests: the costs add up to the prices times the token totals,
 * to the pico-dollar. Rounding each request to any coarser unit would drift
 * (here by up to half a unit per request). */
TEST(cost_exact_no_drift_over_a_million_requests)
{
	struct sl_model_price p = price(150000, 600000, 75000, 3750000); /* $0.15 .. $3.75 / 1M */
	p.cache_write_1h = 6000000; /* 1-hour cache writes: $6 / 1M */
	uint64_t x = 88172645463325252u, tin = 0, tout = 0, tr = 0, tw = 0, tw3 = 0;
	int64_t sum = 0;
	for (int i = 0; i < 1000000; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		uint64_t in = x % 5000, out = (x >> 16) % 700, r = (x >> 32) % 50, w = (x >> 48) % 9;
		sum += sl_credit_cost(&p, in, out, r, w, w / 3);
		tin += in, tout += out, tr += r, tw += w, tw3 += w / 3;
	}
	int64_t want = (int64_t)(tin * 150000 + tout * 600000 + tr * 75000 + (tw - tw3) * 3750000 +
	                         tw3 * 6000000);
	CHECK_EQ_INT(sum, want);
	/* 7 tokens at $0.15/1M is 1.05 micro-dollars: exactly 1050000 pico */
	CHECK_EQ_INT(sl_credit_cost(&p, 7, 0, 0, 0, 0), 1050000);
	/* 10 cache writes, 4 of them 1-hour: 6 x 3.75 + 4 x 6 */
	CHECK_EQ_INT(sl_credit_cost(&p, 0, 0, 0, 10, 4), 6 * 3750000 + 4 * 6000000);
	CHECK_EQ_INT(sl_credit_cost(&p, 0, 0, 0, 10, 99), 10 * 6000000); /* 1h capped at all */
	struct sl_model_price unset = { 0 };
	CHECK_EQ_INT(sl_credit_cost(&unset, 1000, 1000, 0, 0, 0), 0);
	CHECK_EQ_INT(sl_credit_cost(&p, UINT64_MAX, UINT64_MAX, 0, 0, 0), INT64_MAX);
}

TEST(format_pico_usd)
{
	char b[32];
	sl_format_pico_usd(1050000, b, sizeof b);
	CHECK_EQ_MEM(b, strlen(b), "0.00000105");
	sl_format_pico_usd(-2 * PICO * 1000000, b, sizeof b);
	CHECK_EQ_MEM(b, strlen(b), "-2.000000");
	sl_format_pico_usd(1500000000025, b, sizeof b);
	CHECK_EQ_MEM(b, strlen(b), "1.500000000025");
	sl_format_pico_usd(INT64_MIN + 1, b, sizeof b);
	CHECK_EQ_MEM(b, strlen(b), "-9223372.036854775807");
}

TEST(hold_refused_when_short_settle_returns_the_rest)
{
	struct sl_credit *c;
	CHECK_EQ_INT(sl_credit_create(16, &c), 0);
	struct sl_credit_spent spent = { .total = 30 * PICO };
	sl_credit_set_balance(c, 3, 100 * PICO, &spent, NOON); /* 70 available */
	CHECK_EQ_INT(sl_credit_available(c, 3), 70 * PICO);
	CHECK_EQ_INT(hold_no_plan(c, 3, 71 * PICO, true, 0, 0, NOON), SL_CREDIT_BALANCE);
	CHECK_EQ_INT(sl_credit_available(c, 3), 70 * PICO); /* nothing taken on a refusal */
	CHECK_EQ_INT(hold_no_plan(c, 3, 50 * PICO, true, 0, 0, NOON), SL_CREDIT_OK);
	CHECK_EQ_INT(sl_credit_available(c, 3), 20 * PICO);
	sl_credit_settle(c, 3, 50 * PICO, 0, 12 * PICO, NOON);
	CHECK_EQ_INT(sl_credit_available(c, 3), 58 * PICO);
	/* a cost beyond the hold overdraws by the difference, no more */
	CHECK_EQ_INT(hold_no_plan(c, 3, 58 * PICO, true, 0, 0, NOON), SL_CREDIT_OK);
	sl_credit_settle(c, 3, 58 * PICO, 0, 60 * PICO, NOON);
	CHECK_EQ_INT(sl_credit_available(c, 3), -2 * PICO);
	CHECK_EQ_INT(hold_no_plan(c, 3, 0, true, 0, 0, NOON), SL_CREDIT_BALANCE);
	/* not prepaid: no balance needed */
	CHECK_EQ_INT(hold_no_plan(c, 3, 5 * PICO, false, 0, 0, NOON), SL_CREDIT_OK);
	/* a top-up (reload: spent NULL) adds only the change of balance */
	sl_credit_set_balance(c, 3, 110 * PICO, NULL, NOON);
	CHECK_EQ_INT(sl_credit_available(c, 3), 8 * PICO);
	sl_credit_set_balance(c, 3, 110 * PICO, NULL, NOON);
	CHECK_EQ_INT(sl_credit_available(c, 3), 8 * PICO);
	sl_credit_free(c);
}

TEST(budgets_per_day_and_month_roll_over)
{
	struct sl_credit *c;
	CHECK_EQ_INT(sl_credit_create(4, &c), 0);
	struct sl_credit_spent none = { 0 };
	sl_credit_set_balance(c, 1, 0, &none, NOON);
	CHECK_EQ_INT(hold_no_plan(c, 1, 0, false, 10, 25, NOON), SL_CREDIT_OK);
	sl_credit_settle(c, 1, 0, 0, 10, NOON);
	CHECK_EQ_INT(hold_no_plan(c, 1, 0, false, 10, 25, NOON), SL_CREDIT_BUDGET_DAY);
	/* the next day: the daily budget is back, the month's counts on */
	uint64_t tomorrow = NOON + DAY_MS;
	CHECK_EQ_INT(hold_no_plan(c, 1, 0, false, 10, 25, tomorrow), SL_CREDIT_OK);
	sl_credit_settle(c, 1, 0, 0, 9, tomorrow);
	CHECK_EQ_INT(hold_no_plan(c, 1, 0, false, 10, 25, tomorrow + DAY_MS), SL_CREDIT_OK);
	sl_credit_settle(c, 1, 0, 0, 7, tomorrow + DAY_MS);
	CHECK_EQ_INT(hold_no_plan(c, 1, 0, false, 100, 25, tomorrow + DAY_MS),
	             SL_CREDIT_BUDGET_MONTH);
	/* December: a new month */
	CHECK_EQ_INT(hold_no_plan(c, 1, 0, false, 100, 25, NOON + 10 * DAY_MS), SL_CREDIT_OK);
	CHECK_EQ_INT(sl_credit_month_id(NOON), 2026 * 12 + 10);
	CHECK_EQ_INT(sl_credit_month_id(NOON + 10 * DAY_MS), 2026 * 12 + 11);
	sl_credit_free(c);
}

/* Plan credits go first, a request wholly to one source; the window
 * renews them; a balance pays once they do not cover a hold. */
TEST(plan_credits_first_then_balance_and_renewal)
{
	struct sl_credit *c;
	CHECK_EQ_INT(sl_credit_create(2, &c), 0);
	struct sl_credit_spent none = { 0 };
	sl_credit_set_balance(c, 1, 50, &none, NOON);
	const uint64_t w = 5 * 3600000;
	struct sl_credit_terms t = { .prepaid = true, .plan_credits = 100, .plan_window_ms = w };
	uint32_t plan;
	uint64_t start = NOON / w * w;
	CHECK_EQ_INT(sl_credit_hold(c, 1, 60, &t, start, &plan), SL_CREDIT_OK);
	CHECK_EQ_INT(plan, start / w + 1);
	sl_credit_settle(c, 1, 60, plan, 40, start); /* 40 of the plan used */
	CHECK_EQ_INT(sl_credit_plan_left(c, 1, 100, w, start), 60);
	CHECK_EQ_INT(sl_credit_hold(c, 1, 61, &t, start + 1, &plan), SL_CREDIT_BALANCE);
	CHECK_EQ_INT(sl_credit_hold(c, 1, 45, &t, start + 1, &plan), SL_CREDIT_OK);
	CHECK(plan != 0); /* 45 fits in the 60 left */
	uint32_t plan2;
	CHECK_EQ_INT(sl_credit_hold(c, 1, 30, &t, start + 2, &plan2), SL_CREDIT_OK);
	CHECK_EQ_INT(plan2, 0); /* 15 left in the plan: the balance pays */
	CHECK_EQ_INT(sl_credit_available(c, 1), 20);
	sl_credit_settle(c, 1, 30, 0, 10, start + 3);
	sl_credit_settle(c, 1, 45, plan, 45, start + 3);
	CHECK_EQ_INT(sl_credit_available(c, 1), 40);
	CHECK_EQ_INT(sl_credit_plan_left(c, 1, 100, w, start + 3), 15);
	/* the next window: the plan is whole again */
	CHECK_EQ_INT(sl_credit_plan_left(c, 1, 100, w, start + w), 100);
	CHECK_EQ_INT(sl_credit_hold(c, 1, 100, &t, start + w, &plan), SL_CREDIT_OK);
	CHECK_EQ_INT(plan, start / w + 2);
	/* a request admitted in the old window, settled in the new one, does
	 * not touch the new window's count */
	uint32_t old = (uint32_t)(start / w + 1);
	sl_credit_settle(c, 1, 45, old, 45, start + w);
	CHECK_EQ_INT(sl_credit_plan_left(c, 1, 100, w, start + w), 0);
	/* start-up: plan costs replayed into the current window */
	sl_credit_plan_add(c, 0, (uint32_t)(start / w), 30);
	CHECK_EQ_INT(sl_credit_plan_left(c, 0, 100, w, start), 70);
	sl_credit_free(c);
}

/* Threads racing for one key's balance: the holds admitted never exceed it,
 * and after every settlement the balance is exactly what the costs left. */
struct race {
	struct sl_credit *c;
	int admitted;
	int64_t cost_sum;
};

static void *race_thread(void *arg)
{
	struct race *rc = arg;
	for (int i = 0; i < 20000; i++) {
		if (hold_no_plan(rc->c, 0, 7, true, 0, 0, NOON) != SL_CREDIT_OK)
			continue;
		rc->admitted++;
		int64_t cost = i % 7; /* at most the hold */
		rc->cost_sum += cost;
		sl_credit_settle(rc->c, 0, 7, 0, cost, NOON);
	}
	return NULL;
}

TEST(threads_never_overdraw_and_settle_exactly)
{
	struct sl_credit *c;
	CHECK_EQ_INT(sl_credit_create(1, &c), 0);
	struct sl_credit_spent none = { 0 };
	sl_credit_set_balance(c, 0, 100000, &none, NOON);
	struct race r[4] = { { c, 0, 0 }, { c, 0, 0 }, { c, 0, 0 }, { c, 0, 0 } };
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, race_thread, &r[i]);
	int64_t spent = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		spent += r[i].cost_sum;
	}
	CHECK(spent <= 100000);
	CHECK_EQ_INT(sl_credit_available(c, 0), 100000 - spent);
	CHECK(sl_credit_available(c, 0) >= 0);
	sl_credit_free(c);
}

/* The replay sums what each key's records cost, all time, this day and this
 * month. */
struct seen {
	char id[32];
	struct sl_credit_spent s;
};
static struct seen seen[8];
static int num_seen;

static void visit(void *arg, const char *key_id, const struct sl_credit_spent *s)
{
	(void)arg;
	if (num_seen < 8) {
		snprintf(seen[num_seen].id, sizeof seen[num_seen].id, "%s", key_id);
		seen[num_seen++].s = *s;
	}
}

static const struct sl_credit_spent *seen_of(const char *id)
{
	for (int i = 0; i < num_seen; i++)
		if (strcmp(seen[i].id, id) == 0)
			return &seen[i].s;
	return NULL;
}

TEST(replay_sums_costs_per_key_day_and_month)
{
	char dir[256];
	snprintf(dir, sizeof dir, "%s/usage", dir_template);
	struct sl_ulog *l;
	struct sl_ulog_config uc = { .dir = dir, .core = 0, .next_seq = 0 };
	CHECK_EQ_INT(sl_ulog_open(&l, &uc), 0);
	struct sl_usage_record rec = { 0 };
	const struct {
		const char *key;
		uint64_t t;
		int64_t cost;
	} rows[] = {
		{ "key_a", NOON, 5 },
		{ "key_a", NOON - DAY_MS, 7 },       /* yesterday, same month */
		{ "key_a", NOON - 40 * DAY_MS, 11 }, /* October */
		{ "key_b", NOON, 13 },
		{ "", NOON, 17 },                    /* no key: not a balance */
		{ "key_b", NOON, 0 },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		rec.time_unix_ms = rows[i].t;
		rec.cost_pico_usd = rows[i].cost;
		rec.key_id = (struct sl_ustr){ rows[i].key, (uint8_t)strlen(rows[i].key) };
		CHECK_EQ_INT(sl_ulog_append(l, &rec, 1), 0);
	}
	CHECK_EQ_INT(sl_ulog_close(l), 0);
	num_seen = 0;
	CHECK_EQ_INT(sl_credit_replay(dir, NOON, NULL, visit, NULL, NULL), 6);
	CHECK_EQ_INT(num_seen, 2);
	const struct sl_credit_spent *a = seen_of("key_a"), *b = seen_of("key_b");
	CHECK(a && b);
	if (a && b) {
		CHECK_EQ_INT(a->total, 23);
		CHECK_EQ_INT(a->day, 5);
		CHECK_EQ_INT(a->month, 12);
		CHECK_EQ_INT(b->total, 13);
	}
	/* a snapshot of the first 4 records (seq 0..3 of core 0): the replay
	 * starts from its sums and reads only seq 4 and 5 */
	char state[256];
	snprintf(state, sizeof state, "%s/credits.state", dir_template);
	uint64_t next[1] = { 4 };
	struct sl_credit_snap_entry ents[2] = {
		{ .id = "key_a", .total = 1000, .day_id = sl_credit_day_id(NOON), .day = 100,
		  .month_id = sl_credit_month_id(NOON), .month = 200 },
		{ .id = "key_z", .total = 7, .day_id = 1, .day = 5, .month_id = 1, .month = 6 },
	};
	struct sl_credit_snapshot snap = { .cores = 1, .next_seq = next, .num = 2, .e = ents };
	CHECK_EQ_INT(sl_credit_snapshot_write(state, &snap), 0);
	struct sl_credit_snapshot back;
	CHECK_EQ_INT(sl_credit_snapshot_read(state, &back), 0);
	CHECK(back.cores == 1 && back.next_seq[0] == 4 && back.num == 2 &&
	      strcmp(back.e[1].id, "key_z") == 0 && back.e[0].month == 200);
	num_seen = 0;
	CHECK_EQ_INT(sl_credit_replay(dir, NOON, &back, visit, NULL, NULL), 6); /* one segment: read, seq 0..3 skipped */
	a = seen_of("key_a"), b = seen_of("key_b");
	const struct sl_credit_spent *z = seen_of("key_z");
	CHECK(a && z && !b); /* key_b's record (seq 3) is in the base, and the base never named it */
	if (a && z) {
		CHECK_EQ_INT(a->total, 1000);   /* seq 4 (no key) and 5 (cost 0) add nothing */
		CHECK_EQ_INT(a->day, 100);
		CHECK_EQ_INT(z->total, 7);
		CHECK_EQ_INT(z->day, 0); /* another day's */
	}
	sl_credit_snapshot_free(&back);
	/* a damaged snapshot is refused */
	FILE *f = fopen(state, "r+b");
	CHECK(f != NULL);
	if (f) {
		fseek(f, 20, SEEK_SET);
		fputc(0x5a, f);
		fclose(f);
	}
	CHECK_EQ_INT(sl_credit_snapshot_read(state, &back), -EBADMSG);
	/* no log at all: nothing spent */
	CHECK_EQ_INT(sl_credit_replay("/nonexistent/usage", NOON, NULL, visit, NULL, NULL), 0);
}

int main(void)
{
	if (!mkdtemp(dir_template)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(cost_exact_no_drift_over_a_million_requests);
	RUN(format_pico_usd);
	RUN(hold_refused_when_short_settle_returns_the_rest);
	RUN(budgets_per_day_and_month_roll_over);
	RUN(plan_credits_first_then_balance_and_renewal);
	RUN(threads_never_overdraw_and_settle_exactly);
	RUN(replay_sums_costs_per_key_day_and_month);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir_template);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir_template);
	return test_summary();
}
