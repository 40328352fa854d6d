/*
 * bench_limits.c - what admission costs per request: the key-table lookup
 * (HMAC-SHA-256 + index probe + constant-time compare), the failed-auth IP
 * check, the rate limiter's admit + finish, and all of them together as the
 * request path runs them.
 *
 * The key stores are real: a temporary data directory per case, keys made
 * by sl_keys_create_many (random key texts, stored as their HMAC, written
 * with one snapshot), loaded by sl_keytab_load as the gateway does. Lookups
 * present real key texts picked at random (a fixed-seed sequence of 65536
 * picks, copied back to back so reading the text costs no cache miss: the
 * misses measured are the table's own, as with live traffic).
 *
 *   build/bench_limits [seconds_per_case]      (default 0.5)
 *
 * Each figure is ns per request on one core. "best" is the fastest ~50 us
 * batch over seconds_per_case (what the code costs, robust to neighbours on
 * a shared machine); "mean" is the whole run's average (includes the cache
 * misses of random access over a large table, and the neighbours).
 */
#include "sluice/arena.h"
#include "sluice/convert.h"
#include "sluice/ipblock.h"
#include "sluice/json.h"
#include "sluice/keys.h"
#include "sluice/keytab.h"
#include "sluice/limits.h"
#include "sluice/pool.h"
#include "sluice/usage.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <string.h>
#include <time.h>

#include <openssl/mem.h>

#define PICKS 65536 /* random key picks per case, a power of 2 */
#define BIG_KEYS 100000u

static char data_root[] = "/tmp/sluice-bench-limits-XXXXXX";

/* --- the cases' state ------------------------------------------------------------- */

struct keyset {
	struct sl_keytab *table;
	uint32_t num;
	char *picks; /* PICKS key texts, SL_KEY_TEXT_LEN each, back to back */
	uint32_t *pick_slots; /* the slot of each pick (for the limiter-only cases) */
};

static struct keyset one, big;
static struct sl_ipblock *ipblock_empty, *ipblock_busy;
static struct sl_limiter *limiter;
static struct sockaddr_in client;
static uint32_t pick_next;
static uint64_t now_unix_ms;
static uint64_t sink; /* results go here so nothing is optimised away */
static uint64_t refused;
static const char *model = "gpt-4o-mini";
static uint32_t model_slot;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* Makes a store of num keys in a fresh directory, loads its table, and picks
 * PICKS of its keys at random. */
static int keyset_make(struct keyset *ks, uint32_t num, const char *name)
{
	char dir[128];
	snprintf(dir, sizeof(dir), "%s/%s", data_root, name);
	struct sl_keystore store;
	int rc = sl_keys_open(&store, dir, NULL);
	if (rc < 0) {
		fprintf(stderr, "bench_limits: open %s: %s\n", dir, strerror(-rc));
		return rc;
	}
	char *texts = malloc((size_t)num * (SL_KEY_TEXT_LEN + 1));
	if (!texts)
		return -ENOMEM;
	/* each key may use two models: the permission check walks a list */
	rc = sl_keys_create_many(&store, num, "bench", "pro", "gpt-4o,gpt-4o-mini", texts, NULL);
	sl_keys_close(&store);
	if (rc < 0) {
		fprintf(stderr, "bench_limits: create %u keys: %s\n", num, strerror(-rc));
		free(texts);
		return rc;
	}
	char err[256];
	rc = sl_keytab_load(dir, num, NULL, &ks->table, NULL, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "bench_limits: %s\n", err);
		free(texts);
		return rc;
	}
	ks->num = num;
	ks->picks = malloc((size_t)PICKS * SL_KEY_TEXT_LEN);
	ks->pick_slots = malloc((size_t)PICKS * sizeof(*ks->pick_slots));
	if (!ks->picks || !ks->pick_slots)
		return -ENOMEM;
	for (uint32_t i = 0; i < PICKS; i++) {
		const char *text = texts + (size_t)(rnd() % num) * (SL_KEY_TEXT_LEN + 1);
		memcpy(ks->picks + (size_t)i * SL_KEY_TEXT_LEN, text, SL_KEY_TEXT_LEN);
		const struct sl_keytab_entry *e = sl_keytab_lookup(ks->table, text, SL_KEY_TEXT_LEN);
		if (!e) {
			fprintf(stderr, "bench_limits: a created key is not in the table\n");
			return -EINVAL;
		}
		ks->pick_slots[i] = e->slot;
	}
	OPENSSL_cleanse(texts, (size_t)num * (SL_KEY_TEXT_LEN + 1));
	free(texts);
	return 0;
}

/* --- the operations measured ---------------------------------------------------------- */

static inline const char *next_pick(const struct keyset *ks, uint32_t *out_i)
{
	uint32_t i = pick_next++ & (PICKS - 1);
	*out_i = i;
	return ks->picks + (size_t)i * SL_KEY_TEXT_LEN;
}

static void op_lookup(const struct keyset *ks)
{
	uint32_t i;
	const struct sl_keytab_entry *e = sl_keytab_lookup(ks->table, next_pick(ks, &i), SL_KEY_TEXT_LEN);
	sink += e->slot;
}

static void op_lookup_1(void)
{
	op_lookup(&one);
}

static void op_lookup_big(void)
{
	op_lookup(&big);
}

static void op_lookup_unknown(void)
{
	/* a well-formed key that is not in the table: HMAC + a probe that ends
	 * at an empty index slot */
	uint32_t i;
	char text[SL_KEY_TEXT_LEN];
	memcpy(text, next_pick(&big, &i), SL_KEY_TEXT_LEN);
	text[SL_KEY_TEXT_LEN - 1] ^= 0x20;
	sink += sl_keytab_lookup(big.table, text, SL_KEY_TEXT_LEN) != NULL;
}

static void op_ipblock_empty(void)
{
	uint64_t retry;
	sink += sl_ipblock_is_blocked(ipblock_empty, (const struct sockaddr *)&client, now_unix_ms, &retry);
}

static void op_ipblock_busy(void)
{
	uint64_t retry;
	client.sin_addr.s_addr = (uint32_t)rnd(); /* mostly not tracked */
	sink += sl_ipblock_is_blocked(ipblock_busy, (const struct sockaddr *)&client, now_unix_ms, &retry);
}

static void admit_finish(uint32_t slot)
{
	struct sl_limit_ticket ticket;
	if (sl_limiter_admit(limiter, 0, slot, 1000, now_unix_ms, &ticket, NULL) != SL_LIMIT_NONE) {
		refused++;
		return;
	}
	sl_limiter_finish(limiter, 0, &ticket, 700, now_unix_ms);
}

static void op_limiter_1(void)
{
	admit_finish(one.pick_slots[0]);
}

static void op_limiter_big(void)
{
	admit_finish(big.pick_slots[pick_next++ & (PICKS - 1)]);
}

/* The request path as the gateway runs it: the IP check (empty table, the
 * common case), the key lookup among 100k, the model permission, the key's
 * and the model's limits admitted, then both finished. */
static void op_total(void)
{
	uint64_t retry;
	if (sl_ipblock_is_blocked(ipblock_empty, (const struct sockaddr *)&client, now_unix_ms, &retry)) {
		refused++;
		return;
	}
	uint32_t i;
	const struct sl_keytab_entry *e = sl_keytab_lookup(big.table, next_pick(&big, &i), SL_KEY_TEXT_LEN);
	if (!e || e->status != SL_KEY_ACTIVE || !sl_keytab_model_allowed(e, model, strlen(model))) {
		refused++;
		return;
	}
	struct sl_limit_ticket key_ticket, model_ticket;
	if (sl_limiter_admit(limiter, 0, e->slot, 1000, now_unix_ms, &key_ticket, NULL) != SL_LIMIT_NONE) {
		refused++;
		return;
	}
	if (sl_limiter_admit(limiter, 0, model_slot, 1000, now_unix_ms, &model_ticket, NULL) != SL_LIMIT_NONE) {
		sl_limiter_cancel(limiter, 0, &key_ticket, now_unix_ms);
		refused++;
		return;
	}
	sl_limiter_finish(limiter, 0, &model_ticket, 700, now_unix_ms);
	sl_limiter_finish(limiter, 0, &key_ticket, 700, now_unix_ms);
}

/* The token work a request does when a tokens-per-minute limit applies
 * (proxy.c estimate_tokens and the usage scan of the response), on a 1 KB
 * chat body and the mock's chat completion. */
static struct sl_bufpool pool;
static char chat_body[1024];
static size_t chat_body_len;
static const char chat_response[] =
    "{\"id\":\"chatcmpl-0123456789abcdef\",\"object\":\"chat.completion\",\"created\":1763800000,"
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
    "\"assistant\",\"content\":\"The quick brown fox jumps over the lazy dog. The quick brown fox "
    "jumps over the lazy dog. The quick brown fox jumps over the lazy dog.\",\"refusal\":null,"
    "\"annotations\":[]},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{"
    "\"prompt_tokens\":262,\"completion_tokens\":30,\"total_tokens\":292,"
    "\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
    "\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,"
    "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}},"
    "\"service_tier\":\"default\",\"system_fingerprint\":\"fp_0123456789\"}";

static void op_estimate(void)
{
	struct sl_arena a;
	sl_arena_init(&a, &pool, 1 << 20);
	struct sl_json *in = NULL;
	struct sl_json_error e;
	int64_t max_tokens = 0;
	if (sl_json_parse(&a, chat_body, chat_body_len, NULL, &in, &e) != 0 ||
	    !sl_json_get_int(in, "max_tokens", &max_tokens) || sl_count_tokens_local(in) <= 0)
		refused++;
	sl_arena_release(&a);
}

static void op_usage_scan(void)
{
	struct sl_usage_scanner sc;
	struct sl_token_usage u = { 0 };
	sl_usage_scanner_init(&sc);
	sl_usage_scanner_feed(&sc, chat_response, sizeof chat_response - 1, &u);
	if (u.output_tokens != 30)
		refused++;
}

/* --- timing ------------------------------------------------------------------------------ */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* measure runs op in batches of about 50 us for `seconds`; *out_best_ns is
 * the fastest batch's ns per op, *out_mean_ns the whole run's. Between
 * batches the clock the ops see advances (as a reactor's cached clock does)
 * and the limiter's reconciler runs about every 50 ms, as in the gateway. */
static void measure(void (*op)(void), double seconds, double *out_best_ns, double *out_mean_ns)
{
	double t0 = now_s();
	for (int k = 0; k < 1000; k++)
		op();
	double one_s = (now_s() - t0) / 1000;
	size_t batch = (size_t)(50e-6 / (one_s > 1e-9 ? one_s : 1e-9)) + 1;
	double best = 1e30, total = 0, start = now_s(), last_reconcile = start;
	uint64_t ops = 0;
	do {
		now_unix_ms = unix_ms();
		double b0 = now_s();
		for (size_t k = 0; k < batch; k++)
			op();
		double t = now_s() - b0;
		total += t;
		ops += batch;
		if (t < best)
			best = t;
		if (b0 - last_reconcile > 0.05) {
			sl_limiter_reconcile(limiter, now_unix_ms);
			last_reconcile = b0;
		}
	} while (now_s() - start < seconds);
	*out_best_ns = best / (double)batch * 1e9;
	*out_mean_ns = total / (double)ops * 1e9;
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 0.5;
	if (seconds <= 0)
		seconds = 0.5;
	if (!mkdtemp(data_root)) {
		perror("mkdtemp");
		return 1;
	}
	int status = 1;
	if (sl_bufpool_init(&pool, (size_t)64 << 20) != 0) {
		fprintf(stderr, "bench_limits: no memory for the pool\n");
		return 1;
	}
	{
		int n = snprintf(chat_body, sizeof chat_body,
		                 "{\"model\":\"gpt-4o-mini\",\"max_tokens\":64,\"messages\":[{\"role\":"
		                 "\"user\",\"content\":\"");
		while (n < (int)sizeof chat_body - 8)
			chat_body[n] = "lorem ipsum dolor sit amet, "[n % 28], n++;
		memcpy(chat_body + n, "\"}]}", 4);
		chat_body_len = (size_t)n + 4;
	}
	double t_setup = now_s();
	if (keyset_make(&one, 1, "one") < 0 || keyset_make(&big, BIG_KEYS, "big") < 0)
		goto out;
	double setup_s = now_s() - t_setup;

	ipblock_empty = sl_ipblock_create(65536, 50, 300000);
	ipblock_busy = sl_ipblock_create(65536, 50, 300000);
	if (!ipblock_empty || !ipblock_busy)
		goto out;
	client.sin_family = AF_INET;
	client.sin_addr.s_addr = htonl(0xc0000201);
	now_unix_ms = unix_ms();
	for (uint32_t i = 0; i < 1000; i++) { /* 1000 addresses failing now */
		struct sockaddr_in a = client;
		a.sin_addr.s_addr = htonl(0x0a000000u + i);
		sl_ipblock_fail(ipblock_busy, (const struct sockaddr *)&a, now_unix_ms);
	}

	/* one core; slots: the 100k keys, then one model. Limits high enough
	 * that nothing is refused: the admitted path is what is measured. */
	struct sl_limiter_config lc = { .cores = 1, .slots = BIG_KEYS + 1, .window_ms = 60000,
		                        .reconcile_ms = 50 };
	int rc = sl_limiter_create(&lc, &limiter);
	if (rc < 0) {
		fprintf(stderr, "bench_limits: sl_limiter_create: %s\n", strerror(-rc));
		goto out;
	}
	struct sl_tier_limits key_limits = { .requests_per_window = 1000000000,
		                             .tokens_per_window = 1000000000000ull,
		                             .concurrent = 1000,
		                             .requests_per_day = 100000000000ull };
	for (uint32_t slot = 0; slot < BIG_KEYS; slot++)
		sl_limiter_set(limiter, slot, &key_limits);
	model_slot = BIG_KEYS;
	struct sl_tier_limits model_limits = { .requests_per_window = 1000000000,
		                               .tokens_per_window = 1000000000000ull,
		                               .concurrent = 100000 };
	sl_limiter_set(limiter, model_slot, &model_limits);
	sl_limiter_reconcile(limiter, unix_ms());

	static const struct {
		const char *name;
		void (*op)(void);
	} cases[] = {
		{ "keytab lookup, 1 key", op_lookup_1 },
		{ "keytab lookup, 100k keys, random key", op_lookup_big },
		{ "keytab lookup, 100k keys, unknown key", op_lookup_unknown },
		{ "ipblock is_blocked, empty table", op_ipblock_empty },
		{ "ipblock is_blocked, 1000 tracked, other address", op_ipblock_busy },
		{ "limiter admit + finish, 1 slot", op_limiter_1 },
		{ "limiter admit + finish, random of 100k slots", op_limiter_big },
		{ "total: ip check + auth (100k) + model + 2 admits + 2 finishes", op_total },
		{ "TPM estimate: parse + count a 1 KB chat body", op_estimate },
		{ "TPM correction: usage scan of a chat completion (770 B)", op_usage_scan },
	};
	printf("admission cost, ns per request on one core (setup: %u + 1 keys made and loaded "
	       "in %.1f s)\n\n", BIG_KEYS, setup_s);
	printf("| case | best | mean |\n|---|---:|---:|\n");
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		double best, mean;
		measure(cases[i].op, seconds, &best, &mean);
		printf("| %s | %.1f | %.1f |\n", cases[i].name, best, mean);
		fflush(stdout);
	}
	if (refused)
		printf("\nwarning: %" PRIu64 " requests were refused: those figures mix in the refusal path\n",
		       refused);
	status = 0;
out:
	sl_limiter_free(limiter);
	sl_ipblock_free(ipblock_empty);
	sl_ipblock_free(ipblock_busy);
	sl_keytab_free(one.table);
	sl_keytab_free(big.table);
	free(one.picks);
	free(big.picks);
	free(one.pick_slots);
	free(big.pick_slots);
	char cmd[160];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", data_root);
	if (system(cmd) != 0)
		fprintf(stderr, "bench_limits: could not remove %s\n", data_root);
	return status + (int)(sink & 0);
}
