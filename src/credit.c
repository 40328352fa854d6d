/*
 * credit.c - prepaid balances with holds, and spending budgets (credit.h).
 */
#include "sluice/credit.h"

#include "sluice/config.h"
#include "sluice/usagelog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

_Static_assert(sizeof(struct sl_credit_slot) == 64, "one cache line per key");

int sl_credit_create(uint32_t slots, struct sl_credit **out)
{
	if (slots == 0)
		return -EINVAL;
	struct sl_credit *c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	void *m = mmap(NULL, (size_t)slots * sizeof(struct sl_credit_slot), PROT_READ | PROT_WRITE,
	               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m == MAP_FAILED) {
		free(c);
		return -ENOMEM;
	}
	c->slots = slots;
	c->slot = m;
	*out = c;
	return 0;
}

void sl_credit_free(struct sl_credit *c)
{
	if (!c)
		return;
	munmap(c->slot, (size_t)c->slots * sizeof(struct sl_credit_slot));
	free(c);
}

uint32_t sl_credit_day_id(uint64_t unix_ms)
{
	return (uint32_t)(unix_ms / 86400000);
}

uint32_t sl_credit_month_id(uint64_t unix_ms)
{
	unsigned y, m, d;
	sl_civil_from_days(unix_ms / 86400000, &y, &m, &d);
	return y * 12 + m - 1;
}

/* period_spent: the counter of the current period, restarted at 0 when the
 * period changed (the first reactor to see the new id resets it). */
static int64_t period_spent(_Atomic int64_t *spent, _Atomic uint32_t *id, uint32_t now_id)
{
	uint32_t seen = atomic_load_explicit(id, memory_order_acquire);
	while (seen != now_id) {
		if ((int32_t)(now_id - seen) < 0)
			return atomic_load_explicit(spent, memory_order_relaxed); /* a clock step back */
		if (atomic_compare_exchange_weak_explicit(id, &seen, now_id, memory_order_acq_rel,
		                                          memory_order_acquire)) {
			atomic_store_explicit(spent, 0, memory_order_release);
			return 0;
		}
	}
	return atomic_load_explicit(spent, memory_order_relaxed);
}

void sl_credit_set_balance(struct sl_credit *c, uint32_t slot, int64_t balance,
                           const struct sl_credit_spent *spent, uint64_t now_unix_ms)
{
	SL_ASSERT(slot < c->slots);
	struct sl_credit_slot *s = &c->slot[slot];
	if (spent) {
		atomic_store(&s->available, balance - spent->total);
		atomic_store(&s->day_id, sl_credit_day_id(now_unix_ms));
		atomic_store(&s->day_spent, spent->day);
		atomic_store(&s->month_id, sl_credit_month_id(now_unix_ms));
		atomic_store(&s->month_spent, spent->month);
	} else {
		atomic_fetch_add(&s->available, balance - s->balance_seen);
	}
	s->balance_seen = balance;
}

/* plan_take: the hold from the plan credits of window `id`, if they cover
 * it. */
static bool plan_take(struct sl_credit_slot *s, int64_t hold, int64_t credits, uint32_t id)
{
	int64_t used = period_spent(&s->plan_used, &s->plan_id, id);
	if (used + hold > credits)
		return false;
	int64_t before = atomic_fetch_add_explicit(&s->plan_used, hold, memory_order_acq_rel);
	if (before + hold > credits) {
		atomic_fetch_sub_explicit(&s->plan_used, hold, memory_order_acq_rel);
		return false;
	}
	return true;
}

enum sl_credit_refusal sl_credit_hold(struct sl_credit *c, uint32_t slot, int64_t hold,
                                      const struct sl_credit_terms *t, uint64_t now_unix_ms,
                                      uint32_t *plan_id)
{
	SL_ASSERT_HOT(slot < c->slots);
	struct sl_credit_slot *s = &c->slot[slot];
	*plan_id = 0;
	if (t->budget_day &&
	    period_spent(&s->day_spent, &s->day_id, sl_credit_day_id(now_unix_ms)) >= t->budget_day)
		return SL_CREDIT_BUDGET_DAY;
	if (t->budget_month && period_spent(&s->month_spent, &s->month_id,
	                                    sl_credit_month_id(now_unix_ms)) >= t->budget_month)
		return SL_CREDIT_BUDGET_MONTH;
	if (t->plan_credits > 0 && t->plan_window_ms) {
		uint32_t id = (uint32_t)(now_unix_ms / t->plan_window_ms);
		if (plan_take(s, hold, t->plan_credits, id)) {
			*plan_id = id + 1;
			return SL_CREDIT_OK;
		}
	}
	if (!t->prepaid)
		return SL_CREDIT_OK;
	/* take the hold, and give it back if that went below zero: two cores
	 * racing for the last dollars both see the truth of the sum */
	int64_t before = atomic_fetch_sub_explicit(&s->available, hold, memory_order_acq_rel);
	if (before < hold || before <= 0) {
		atomic_fetch_add_explicit(&s->available, hold, memory_order_acq_rel);
		return SL_CREDIT_BALANCE;
	}
	return SL_CREDIT_OK;
}

void sl_credit_settle(struct sl_credit *c, uint32_t slot, int64_t hold, uint32_t plan_id,
                      int64_t cost, uint64_t now_unix_ms)
{
	SL_ASSERT_HOT(slot < c->slots);
	struct sl_credit_slot *s = &c->slot[slot];
	if (plan_id) {
		/* the hold went into window plan_id - 1, the window of the
		 * request's admission, which pays for it; if that window is over
		 * its count is gone, and so is the difference (the replay also
		 * charges a plan record to the window of its admission) */
		uint32_t held_in = plan_id - 1;
		if (atomic_load_explicit(&s->plan_id, memory_order_acquire) == held_in)
			atomic_fetch_add_explicit(&s->plan_used, cost - hold, memory_order_acq_rel);
	} else {
		atomic_fetch_add_explicit(&s->available, hold - cost, memory_order_acq_rel);
	}
	if (cost == 0)
		return;
	period_spent(&s->day_spent, &s->day_id, sl_credit_day_id(now_unix_ms));
	atomic_fetch_add_explicit(&s->day_spent, cost, memory_order_acq_rel);
	period_spent(&s->month_spent, &s->month_id, sl_credit_month_id(now_unix_ms));
	atomic_fetch_add_explicit(&s->month_spent, cost, memory_order_acq_rel);
}

void sl_credit_plan_add(struct sl_credit *c, uint32_t slot, uint32_t window, int64_t cost)
{
	SL_ASSERT(slot < c->slots);
	struct sl_credit_slot *s = &c->slot[slot];
	period_spent(&s->plan_used, &s->plan_id, window);
	if (atomic_load(&s->plan_id) == window)
		atomic_fetch_add(&s->plan_used, cost);
}

int64_t sl_credit_plan_left(const struct sl_credit *c, uint32_t slot, int64_t plan_credits,
                            uint64_t plan_window_ms, uint64_t now_unix_ms)
{
	SL_ASSERT(slot < c->slots);
	const struct sl_credit_slot *s = &c->slot[slot];
	if (!plan_window_ms || plan_credits <= 0)
		return 0;
	if (atomic_load(&s->plan_id) != (uint32_t)(now_unix_ms / plan_window_ms))
		return plan_credits;
	return plan_credits - atomic_load(&s->plan_used);
}

int64_t sl_credit_cost(const struct sl_model_price *price, uint64_t input, uint64_t output,
                       uint64_t cache_read, uint64_t cache_write, uint64_t cache_write_1h)
{
	if (!price->set)
		return 0;
	cache_write_1h = SL_MIN(cache_write_1h, cache_write);
	const uint64_t tokens[5] = { input, output, cache_read, cache_write - cache_write_1h,
		                     cache_write_1h };
	const int64_t per[5] = { price->input, price->output, price->cached_input,
		                 price->cache_write, price->cache_write_1h };
	unsigned __int128 sum = 0;
	for (int i = 0; i < 5; i++)
		if (per[i] > 0)
			sum += (unsigned __int128)tokens[i] * (uint64_t)per[i];
	return sum > INT64_MAX ? INT64_MAX : (int64_t)sum;
}

int64_t sl_credit_image_cost(const struct sl_model_price *price, uint64_t images)
{
	if (!price->set || price->image <= 0)
		return 0;
	unsigned __int128 x = (unsigned __int128)images * (uint64_t)price->image * SL_PICO_PER_MICRO;
	return x > INT64_MAX ? INT64_MAX : (int64_t)x;
}

int64_t sl_credit_available(const struct sl_credit *c, uint32_t slot)
{
	SL_ASSERT(slot < c->slots);
	return atomic_load_explicit(&((struct sl_credit *)c)->slot[slot].available,
	                            memory_order_acquire);
}

/* --- credits.state -------------------------------------------------------------- */

#define SNAP_MAGIC "SLCRED01"
#define SNAP_ENTRY_FIXED (8 + 4 + 4 + 8 + 8 + 8 + 4 + 8) /* after the id */

int sl_credit_snapshot_write(const char *path, const struct sl_credit_snapshot *s)
{
	size_t len = 8 + 4 + 8 * (size_t)s->cores + 8 + 4;
	for (size_t i = 0; i < s->num; i++)
		len += 1 + strlen(s->e[i].id) + SNAP_ENTRY_FIXED;
	uint8_t *b = malloc(len), *p = b;
	if (!b)
		return -ENOMEM;
	memcpy(p, SNAP_MAGIC, 8), p += 8;
	sl_put_le32(p, s->cores), p += 4;
	for (uint32_t i = 0; i < s->cores; i++)
		sl_put_le64(p, s->next_seq[i]), p += 8;
	sl_put_le64(p, s->num), p += 8;
	for (size_t i = 0; i < s->num; i++) {
		const struct sl_credit_snap_entry *e = &s->e[i];
		size_t n = strlen(e->id);
		*p++ = (uint8_t)n;
		memcpy(p, e->id, n), p += n;
		sl_put_le64(p, (uint64_t)e->total), p += 8;
		sl_put_le32(p, e->day_id), p += 4;
		sl_put_le32(p, e->month_id), p += 4;
		sl_put_le64(p, (uint64_t)e->day), p += 8;
		sl_put_le64(p, (uint64_t)e->month), p += 8;
		sl_put_le64(p, e->plan_window_ms), p += 8;
		sl_put_le32(p, e->plan_id), p += 4;
		sl_put_le64(p, (uint64_t)e->plan_used), p += 8;
	}
	sl_put_le32(p, sl_crc32c(b, (size_t)(p - b))), p += 4;
	SL_ASSERT((size_t)(p - b) == len);
	char tmp[PATH_MAX];
	int rc = 0;
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
		free(b);
		return -ENAMETOOLONG;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		free(b);
		return -errno;
	}
	rc = sl_write_all(fd, b, len);
	if (rc == 0 && fsync(fd) != 0)
		rc = -errno;
	close(fd);
	free(b);
	if (rc == 0 && rename(tmp, path) != 0)
		rc = -errno;
	if (rc != 0) {
		unlink(tmp);
		return rc;
	}
	/* the directory entry too */
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = '\0';
	int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		if (fsync(dfd) != 0)
			rc = -errno;
		close(dfd);
	}
	return rc;
}

void sl_credit_snapshot_free(struct sl_credit_snapshot *s)
{
	free(s->next_seq);
	free(s->e);
	memset(s, 0, sizeof *s);
}

int sl_credit_snapshot_read(const char *path, struct sl_credit_snapshot *s)
{
	memset(s, 0, sizeof *s);
	FILE *f = fopen(path, "rb");
	if (!f)
		return -errno;
	uint8_t *b = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 4096;
			uint8_t *m = realloc(b, cap);
			if (!m) {
				free(b);
				fclose(f);
				return -ENOMEM;
			}
			b = m;
		}
		size_t got = fread(b + len, 1, cap - len, f);
		len += got;
		if (got == 0)
			break;
	}
	fclose(f);
	int rc = -EBADMSG;
	const uint8_t *p = b, *end = b + len;
	if (len < 8 + 4 + 8 + 4 || memcmp(p, SNAP_MAGIC, 8) != 0 ||
	    sl_get_le32(end - 4) != sl_crc32c(b, len - 4))
		goto out;
	end -= 4;
	p += 8;
	s->cores = sl_get_le32(p), p += 4;
	if (s->cores > 4096 || (size_t)(end - p) < 8 * (size_t)s->cores + 8)
		goto out;
	if (!(s->next_seq = calloc(s->cores ? s->cores : 1, sizeof *s->next_seq))) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < s->cores; i++)
		s->next_seq[i] = sl_get_le64(p), p += 8;
	uint64_t num = sl_get_le64(p);
	p += 8;
	if (num > (uint64_t)(end - p) / (1 + SNAP_ENTRY_FIXED))
		goto out;
	if (!(s->e = calloc(num ? num : 1, sizeof *s->e))) {
		rc = -ENOMEM;
		goto out;
	}
	for (s->num = 0; s->num < num; s->num++) {
		struct sl_credit_snap_entry *e = &s->e[s->num];
		if (p >= end || (size_t)(end - p) < 1u + *p + SNAP_ENTRY_FIXED)
			goto out;
		size_t n = *p++;
		memcpy(e->id, p, n), p += n;
		e->id[n] = '\0';
		e->total = (int64_t)sl_get_le64(p), p += 8;
		e->day_id = sl_get_le32(p), p += 4;
		e->month_id = sl_get_le32(p), p += 4;
		e->day = (int64_t)sl_get_le64(p), p += 8;
		e->month = (int64_t)sl_get_le64(p), p += 8;
		e->plan_window_ms = sl_get_le64(p), p += 8;
		e->plan_id = sl_get_le32(p), p += 4;
		e->plan_used = (int64_t)sl_get_le64(p), p += 8;
	}
	rc = p == end ? 0 : -EBADMSG;
out:
	free(b);
	if (rc != 0)
		sl_credit_snapshot_free(s);
	return rc;
}

/* --- replay ------------------------------------------------------------------------ */

struct spent_entry {
	char id[SL_CREDIT_ID_MAX + 1]; /* "": free */
	struct sl_credit_spent s;
};

struct replay {
	struct spent_entry *t;
	size_t cap, num;
	uint32_t day, month;
	int err;
	sl_credit_plan_fn plan;
	void *arg;
	uint64_t from_seq; /* of the segment's core: records below are in the base */
};

static uint64_t id_hash(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603u; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)p[i]) * 1099511628211u;
	return h;
}

static struct spent_entry *replay_slot(struct replay *rp, const char *id, size_t n)
{
	if (rp->num * 2 >= rp->cap) {
		size_t cap = rp->cap ? rp->cap * 2 : 1024;
		struct spent_entry *t = calloc(cap, sizeof *t);
		if (!t)
			return NULL;
		for (size_t i = 0; i < rp->cap; i++) {
			if (!rp->t[i].id[0])
				continue;
			size_t j = id_hash(rp->t[i].id, strlen(rp->t[i].id)) & (cap - 1);
			while (t[j].id[0])
				j = (j + 1) & (cap - 1);
			t[j] = rp->t[i];
		}
		free(rp->t);
		rp->t = t;
		rp->cap = cap;
	}
	size_t j = id_hash(id, n) & (rp->cap - 1);
	while (rp->t[j].id[0]) {
		if (strlen(rp->t[j].id) == n && memcmp(rp->t[j].id, id, n) == 0)
			return &rp->t[j];
		j = (j + 1) & (rp->cap - 1);
	}
	memcpy(rp->t[j].id, id, n);
	rp->t[j].id[n] = '\0';
	rp->num++;
	return &rp->t[j];
}

static int replay_visit(void *arg, uint64_t seq, const struct sl_usage_record *rec)
{
	struct replay *rp = arg;
	if (seq < rp->from_seq || rec->key_id.len == 0 || rec->cost_pico_usd == 0)
		return 0;
	struct spent_entry *e = replay_slot(rp, rec->key_id.p, rec->key_id.len);
	if (!e) {
		rp->err = -ENOMEM;
		return 1;
	}
	/* a record's time is its start; it was settled at its end */
	uint64_t settled = rec->time_unix_ms + rec->total_ms;
	if (rec->flags & SL_UREC_PLAN) {
		char id[SL_ULOG_STR_MAX + 1];
		memcpy(id, rec->key_id.p, rec->key_id.len);
		id[rec->key_id.len] = '\0';
		if (rp->plan) /* the window of its admission paid (sl_credit_settle) */
			rp->plan(rp->arg, id, rec->time_unix_ms, rec->cost_pico_usd);
	} else {
		e->s.total += rec->cost_pico_usd;
	}
	if (sl_credit_day_id(settled) == rp->day)
		e->s.day += rec->cost_pico_usd;
	if (sl_credit_month_id(settled) == rp->month)
		e->s.month += rec->cost_pico_usd;
	return 0;
}

int64_t sl_credit_replay(const char *dir, uint64_t now_unix_ms,
                         const struct sl_credit_snapshot *base, sl_credit_visit_fn visit,
                         sl_credit_plan_fn plan, void *arg)
{
	struct sl_ulog_segment *segs = NULL;
	size_t n = 0;
	int rc = sl_ulog_list(dir, &segs, &n);
	if (rc == -ENOENT)
		rc = 0;
	if (rc != 0)
		return rc;
	struct replay rp = { .day = sl_credit_day_id(now_unix_ms),
		             .month = sl_credit_month_id(now_unix_ms),
		             .plan = plan,
		             .arg = arg };
	for (size_t i = 0; base && i < base->num && rc == 0; i++) {
		const struct sl_credit_snap_entry *b = &base->e[i];
		struct spent_entry *e = replay_slot(&rp, b->id, strlen(b->id));
		if (!e) {
			rc = -ENOMEM;
			break;
		}
		e->s.total += b->total;
		if (b->day_id == rp.day)
			e->s.day += b->day;
		if (b->month_id == rp.month)
			e->s.month += b->month;
		if (plan && b->plan_used && b->plan_window_ms)
			plan(arg, b->id, b->plan_id * b->plan_window_ms, b->plan_used);
	}
	int64_t records = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct sl_ulog_scan sc;
		rp.from_seq = base && segs[i].core < base->cores ? base->next_seq[segs[i].core] : 0;
		if (i + 1 < n && segs[i + 1].core == segs[i].core && segs[i + 1].first_seq <= rp.from_seq)
			continue; /* wholly in the base */
		rc = sl_ulog_scan_file(segs[i].path, UINT64_MAX, &sc, replay_visit, &rp);
		if (rc > 0)
			rc = rp.err;
		records += (int64_t)sc.records;
	}
	sl_ulog_list_free(segs, n);
	if (rc == 0)
		for (size_t i = 0; i < rp.cap; i++)
			if (rp.t[i].id[0])
				visit(arg, rp.t[i].id, &rp.t[i].s);
	free(rp.t);
	return rc != 0 ? rc : records;
}
