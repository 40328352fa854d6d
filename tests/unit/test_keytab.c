/*
 * test_keytab.c - the gateway's key table: the precomputed HMAC against
 * HMAC(), lookups of created and imported keys, model lists, slots kept
 * across reloads and never reused while the previous table lives, the slot
 * bound, a torn journal ignored without a write, the shared lock, empty
 * stores, and lookups from several threads at once.
 */
#include "../../src/keytab.c"
#include "test.h"

#include <fcntl.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char dir_template[] = "/tmp/sluice-test-keytab-XXXXXX";
static char dir[64];
static int dir_seq;

static const char *fresh_dir(void)
{
	snprintf(dir, sizeof(dir), "%s/d%d", dir_template, dir_seq++);
	return dir;
}

static off_t file_size(const char *name)
{
	char path[128];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return stat(path, &st) == 0 ? st.st_size : -1;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A store in a fresh directory with num created keys (texts in keys[]). */
static void make_store(uint32_t num, char keys[][SL_KEY_TEXT_LEN + 1], struct sl_key *recs)
{
	struct sl_keystore ks;
	SL_ASSERT(sl_keys_open(&ks, fresh_dir(), NULL) == 0);
	for (uint32_t i = 0; i < num; i++) {
		char name[32];
		snprintf(name, sizeof(name), "user %u", i);
		SL_ASSERT(sl_keys_create(&ks, name, i % 2 ? "free" : "pro", i % 3 == 1 ? "gpt-4o,claude-3" : NULL,
		                         NULL, keys[i], recs ? &recs[i] : NULL) == 0);
	}
	sl_keys_close(&ks);
}

TEST(hmac_precomputed_equals_hmac)
{
	struct sl_keystore ks;
	char key[SL_KEY_TEXT_LEN + 1];
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "x", "pro", NULL, NULL, key, NULL), 0);
	uint8_t secret[SL_KEYS_SECRET_LEN];
	memcpy(secret, ks.secret, sizeof(secret));
	sl_keys_close(&ks);
	struct sl_keytab *t;
	char err[256];
	CHECK_EQ_INT(sl_keytab_load(dir, 16, NULL, &t, NULL, err, sizeof(err)), 0);
	/* lengths around the SHA-256 block and padding boundaries */
	static const size_t lens[] = { 1, 20, 42, 55, 56, 63, 64, 65, 119, 120, 128, 200, 255, 256 };
	char msg[SL_KEY_TEXT_LEN_MAX];
	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (char)('!' + (i * 7) % 90);
	for (size_t i = 0; i < SL_ARRAY_LEN(lens); i++) {
		uint8_t want[SL_KEY_HASH_LEN], got[SL_KEY_HASH_LEN];
		unsigned int want_len = 0;
		HMAC(EVP_sha256(), secret, sizeof(secret), (const uint8_t *)msg, lens[i], want, &want_len);
		keytab_hmac(t, msg, lens[i], got);
		if (want_len != SL_KEY_HASH_LEN || memcmp(want, got, SL_KEY_HASH_LEN) != 0)
			FAIL_AT("hmac_precomputed_equals_hmac", "length %zu differs", lens[i]);
	}
	sl_keytab_free(t);
}

TEST(lookup_created_imported_revoked)
{
	char keys[8][SL_KEY_TEXT_LEN + 1];
	struct sl_key recs[8];
	make_store(8, keys, recs);
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	CHECK_EQ_INT(sl_keys_revoke(&ks, recs[3].id), 0);
	const char *imported = "sk-ant-api03-very_old-key.from.elsewhere";
	struct sl_key imp;
	CHECK_EQ_INT(sl_keys_import(&ks, imported, strlen(imported), "old", "pro", NULL, NULL, &imp), 0);
	char long_key[SL_KEY_TEXT_LEN_MAX];
	memset(long_key, 'Q', sizeof(long_key));
	CHECK_EQ_INT(sl_keys_import(&ks, long_key, sizeof(long_key), "long", "pro", NULL, NULL, NULL), 0);
	sl_keys_close(&ks);

	struct sl_keytab *t;
	struct sl_keys_load_report report;
	char err[256];
	CHECK_EQ_INT(sl_keytab_load(dir, 1000, NULL, &t, &report, err, sizeof(err)), 0);
	CHECK_EQ_INT(sl_keytab_num(t), 10);
	CHECK_EQ_INT(report.journal_records_num, 11);
	for (int i = 0; i < 8; i++) {
		const struct sl_keytab_entry *e = sl_keytab_lookup(t, keys[i], SL_KEY_TEXT_LEN);
		CHECK(e && strcmp(e->id, recs[i].id) == 0 && strcmp(e->name, recs[i].name) == 0 &&
		      strcmp(e->tier, recs[i].tier) == 0);
		CHECK(e && e->status == (i == 3 ? SL_KEY_REVOKED : SL_KEY_ACTIVE));
		CHECK(e && memcmp(e->hash, recs[i].hash, SL_KEY_HASH_LEN) == 0);
	}
	const struct sl_keytab_entry *e = sl_keytab_lookup(t, imported, strlen(imported));
	CHECK(e && strcmp(e->id, imp.id) == 0);
	CHECK(sl_keytab_lookup(t, long_key, sizeof(long_key)) != NULL);
	CHECK(sl_keytab_lookup(t, long_key, sizeof(long_key) - 1) == NULL);
	char wrong[SL_KEY_TEXT_LEN + 1];
	memcpy(wrong, keys[0], sizeof(wrong));
	wrong[12] ^= 1;
	CHECK(sl_keytab_lookup(t, wrong, SL_KEY_TEXT_LEN) == NULL);
	CHECK(sl_keytab_lookup(t, keys[0], SL_KEY_TEXT_LEN - 1) == NULL);
	CHECK(sl_keytab_lookup(t, keys[0], 0) == NULL);
	char huge[SL_KEY_TEXT_LEN_MAX + 1];
	memset(huge, 'Q', sizeof(huge));
	CHECK(sl_keytab_lookup(t, huge, sizeof(huge)) == NULL);
	sl_keytab_free(t);
}

TEST(model_lists)
{
	char keys[3][SL_KEY_TEXT_LEN + 1];
	struct sl_key recs[3];
	make_store(3, keys, recs); /* key 1 has "gpt-4o,claude-3", the others none */
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	char models[SL_KEY_MODELS_LEN_MAX + 1];
	memset(models, 'm', sizeof(models) - 1); /* one 255-byte name */
	models[SL_KEY_MODELS_LEN_MAX] = 0;
	CHECK_EQ_INT(sl_keys_update(&ks, recs[2].id, NULL, NULL, models), 0);
	sl_keys_close(&ks);
	struct sl_keytab *t;
	CHECK_EQ_INT(sl_keytab_load(dir, 8, NULL, &t, NULL, NULL, 0), 0);
	const struct sl_keytab_entry *all = sl_keytab_by_id(t, recs[0].id);
	const struct sl_keytab_entry *two = sl_keytab_by_id(t, recs[1].id);
	const struct sl_keytab_entry *big = sl_keytab_by_id(t, recs[2].id);
	CHECK(all && two && big);
	CHECK(all && all->num_models == 0 && sl_keytab_model_allowed(all, "anything", 8));
	CHECK(two && two->num_models == 2);
	CHECK(sl_keytab_model_allowed(two, "gpt-4o", 6));
	CHECK(sl_keytab_model_allowed(two, "claude-3", 8));
	CHECK(!sl_keytab_model_allowed(two, "gpt-4", 5));
	CHECK(!sl_keytab_model_allowed(two, "gpt-4o-mini", 11));
	CHECK(!sl_keytab_model_allowed(two, "GPT-4o", 6));
	CHECK(!sl_keytab_model_allowed(two, "", 0));
	CHECK(!sl_keytab_model_allowed(two, "gpt-4o,claude-3", 15));
	CHECK(big && big->num_models == 1 && sl_keytab_model_allowed(big, models, 255));
	CHECK(!sl_keytab_model_allowed(big, models, 254));
	sl_keytab_free(t);
}

TEST(indexes_by_id_slot_at)
{
	enum { N = 300 };
	static char keys[N][SL_KEY_TEXT_LEN + 1];
	static char ids[N][SL_KEY_ID_LEN + 1];
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create_many(&ks, N, "bulk", "pro", NULL, &keys[0][0], &ids[0][0]), 0);
	sl_keys_close(&ks);
	struct sl_keytab *t;
	CHECK_EQ_INT(sl_keytab_load(dir, N, NULL, &t, NULL, NULL, 0), 0);
	CHECK_EQ_INT(sl_keytab_num(t), N);
	bool seen[N] = { false };
	for (uint32_t i = 0; i < N; i++) {
		const struct sl_keytab_entry *e = sl_keytab_at(t, i);
		CHECK(e->slot < N && !seen[e->slot]);
		seen[e->slot] = true;
		CHECK(sl_keytab_by_slot(t, e->slot) == e);
		CHECK(sl_keytab_by_id(t, e->id) == e);
		CHECK(sl_keytab_lookup(t, keys[i], SL_KEY_TEXT_LEN) == sl_keytab_by_id(t, ids[i]));
	}
	CHECK(sl_keytab_by_slot(t, N) == NULL);
	CHECK(sl_keytab_by_slot(t, UINT32_MAX) == NULL);
	CHECK(sl_keytab_by_id(t, "key_000000000000") == NULL);
	CHECK(sl_keytab_by_id(t, "") == NULL);
	sl_keytab_free(t);
}

/* A stand-in for a previous table: ids and slots only. */
static struct sl_keytab *fake_table(const char *const *ids, const uint32_t *slots, uint32_t num)
{
	struct sl_keytab *t = calloc(1, sizeof(*t));
	t->num = num;
	t->slots_max = 1000;
	t->entries = calloc(num, sizeof(*t->entries));
	for (uint32_t i = 0; i < num; i++) {
		snprintf(t->entries[i].id, sizeof(t->entries[i].id), "%s", ids[i]);
		t->entries[i].slot = slots[i];
	}
	SL_ASSERT(build_indexes(t) == 0);
	return t;
}

TEST(slots_kept_and_never_reused_while_prev_lives)
{
	char keys[4][SL_KEY_TEXT_LEN + 1];
	struct sl_key recs[4];
	make_store(3, keys, recs);
	struct sl_keytab *t1, *t2, *t3;
	CHECK_EQ_INT(sl_keytab_load(dir, 100, NULL, &t1, NULL, NULL, 0), 0);
	for (int i = 0; i < 3; i++) /* first load: slots 0, 1, 2 in store order */
		CHECK_EQ_INT(sl_keytab_by_id(t1, recs[i].id)->slot, i);
	/* a new key: the old ones keep their slots, the new one gets 3 */
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "late", "pro", NULL, NULL, keys[3], &recs[3]), 0);
	sl_keys_close(&ks);
	CHECK_EQ_INT(sl_keytab_load(dir, 100, t1, &t2, NULL, NULL, 0), 0);
	for (int i = 0; i < 4; i++)
		CHECK_EQ_INT(sl_keytab_by_id(t2, recs[i].id)->slot, i);
	CHECK(sl_keytab_lookup(t2, keys[3], SL_KEY_TEXT_LEN)->slot == 3);
	sl_keytab_free(t1);

	/* a previous table whose keys are gone from the store (e.g. a restored
	 * backup): their slots stay reserved, the store's keys get the lowest
	 * others. prev: recs[1] at 7, "gone" keys at 0, 2 and 4. */
	const char *ids[] = { recs[1].id, "key_aaaaaaaaaaaa", "key_bbbbbbbbbbbb", "key_cccccccccccc" };
	const uint32_t slots[] = { 7, 0, 2, 4 };
	struct sl_keytab *prev = fake_table(ids, slots, 4);
	CHECK_EQ_INT(sl_keytab_load(dir, 100, prev, &t3, NULL, NULL, 0), 0);
	CHECK_EQ_INT(sl_keytab_by_id(t3, recs[1].id)->slot, 7);
	CHECK_EQ_INT(sl_keytab_by_id(t3, recs[0].id)->slot, 1);
	CHECK_EQ_INT(sl_keytab_by_id(t3, recs[2].id)->slot, 3);
	CHECK_EQ_INT(sl_keytab_by_id(t3, recs[3].id)->slot, 5);
	CHECK(sl_keytab_by_slot(t3, 0) == NULL && sl_keytab_by_slot(t3, 2) == NULL);
	/* the next generation (prev = t3) may reuse 0, 2, 4: nothing reads the
	 * fake table any more */
	sl_keytab_free(prev);
	struct sl_keytab *t4;
	CHECK_EQ_INT(sl_keytab_load(dir, 100, t3, &t4, NULL, NULL, 0), 0);
	CHECK_EQ_INT(sl_keytab_by_id(t4, recs[0].id)->slot, 1);
	CHECK_EQ_INT(sl_keytab_by_id(t4, recs[1].id)->slot, 7);
	sl_keytab_free(t3);
	sl_keytab_free(t4);
	sl_keytab_free(t2);
}

TEST(slot_bound_enospc)
{
	char keys[5][SL_KEY_TEXT_LEN + 1];
	struct sl_key recs[5];
	make_store(5, keys, recs);
	struct sl_keytab *t = NULL, *prev;
	char err[256] = "";
	CHECK_EQ_INT(sl_keytab_load(dir, 4, NULL, &t, NULL, err, sizeof(err)), -ENOSPC);
	CHECK(t == NULL && strstr(err, "5 keys") != NULL);
	CHECK_EQ_INT(sl_keytab_load(dir, 5, NULL, &t, NULL, err, sizeof(err)), 0);
	sl_keytab_free(t);
	/* 5 keys fit 6 slots, but not while a previous table holds 2 slots for
	 * keys no longer in the store */
	const char *ids[] = { "key_aaaaaaaaaaaa", "key_bbbbbbbbbbbb" };
	const uint32_t slots[] = { 1, 3 };
	prev = fake_table(ids, slots, 2);
	err[0] = 0;
	CHECK_EQ_INT(sl_keytab_load(dir, 6, prev, &t, NULL, err, sizeof(err)), -ENOSPC);
	CHECK(err[0] != 0);
	CHECK_EQ_INT(sl_keytab_load(dir, 7, prev, &t, NULL, err, sizeof(err)), 0);
	sl_keytab_free(t);
	sl_keytab_free(prev);
}

TEST(torn_journal_ignored_not_cut)
{
	char keys[2][SL_KEY_TEXT_LEN + 1];
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "one", "pro", NULL, NULL, keys[0], NULL), 0);
	off_t good = file_size("keys.journal");
	CHECK_EQ_INT(sl_keys_create(&ks, "two", "pro", NULL, NULL, keys[1], NULL), 0);
	off_t full = file_size("keys.journal");
	sl_keys_close(&ks);
	char path[128];
	snprintf(path, sizeof(path), "%s/keys.journal", dir);
	CHECK_EQ_INT(truncate(path, full - 5), 0);
	struct sl_keytab *t;
	struct sl_keys_load_report report;
	CHECK_EQ_INT(sl_keytab_load(dir, 10, NULL, &t, &report, NULL, 0), 0);
	CHECK_EQ_INT(sl_keytab_num(t), 1);
	CHECK_EQ_INT(report.journal_cut_offset, good);
	CHECK_EQ_INT(report.journal_cut_bytes, full - 5 - good);
	CHECK(sl_keytab_lookup(t, keys[0], SL_KEY_TEXT_LEN) != NULL);
	CHECK(sl_keytab_lookup(t, keys[1], SL_KEY_TEXT_LEN) == NULL);
	CHECK_EQ_INT(file_size("keys.journal"), full - 5);
	sl_keytab_free(t);
	/* a corrupt snapshot is an error, with a message */
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	CHECK_EQ_INT(sl_keys_compact(&ks), 0);
	sl_keys_close(&ks);
	snprintf(path, sizeof(path), "%s/keys.snapshot", dir);
	int fd = open(path, O_RDWR);
	uint8_t b = 'X';
	CHECK(fd >= 0 && pwrite(fd, &b, 1, file_size("keys.snapshot") - 2) == 1);
	close(fd);
	char err[256] = "";
	t = NULL;
	CHECK_EQ_INT(sl_keytab_load(dir, 10, NULL, &t, NULL, err, sizeof(err)), -EBADMSG);
	CHECK(t == NULL && strstr(err, "corrupt") != NULL);
}

TEST(empty_when_no_store)
{
	struct sl_keytab *t;
	char err[256];
	/* no directory */
	CHECK_EQ_INT(sl_keytab_load(fresh_dir(), 10, NULL, &t, NULL, err, sizeof(err)), 0);
	CHECK_EQ_INT(sl_keytab_num(t), 0);
	CHECK(sl_keytab_lookup(t, "sk-sluice-whatever-whatever", 27) == NULL);
	CHECK(sl_keytab_by_slot(t, 0) == NULL && sl_keytab_by_id(t, "key_000000000000") == NULL);
	sl_keytab_free(t);
	CHECK(file_size("") < 0); /* nothing created */
	/* a directory without a secret */
	CHECK_EQ_INT(mkdir(dir, 0700), 0);
	CHECK_EQ_INT(sl_keytab_load(dir, 10, NULL, &t, NULL, err, sizeof(err)), 0);
	CHECK_EQ_INT(sl_keytab_num(t), 0);
	sl_keytab_free(t);
	CHECK(file_size("lock") < 0 && file_size("secret") < 0);
	/* a store with a secret and no key yet */
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	sl_keys_close(&ks);
	CHECK_EQ_INT(sl_keytab_load(dir, 10, NULL, &t, NULL, err, sizeof(err)), 0);
	CHECK_EQ_INT(sl_keytab_num(t), 0);
	CHECK(sl_keytab_lookup(t, "sk-sluice-whatever-whatever", 27) == NULL);
	sl_keytab_free(t);
	sl_keytab_free(NULL);
}

struct load_arg {
	struct sl_keytab *t;
	int rc;
	uint64_t done_ms;
};

static void *load_thread(void *arg)
{
	struct load_arg *a = arg;
	a->rc = sl_keytab_load(dir, 10, NULL, &a->t, NULL, NULL, 0);
	a->done_ms = mono_ms();
	return NULL;
}

TEST(waits_for_writer_lock)
{
	char keys[1][SL_KEY_TEXT_LEN + 1];
	make_store(1, keys, NULL);
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0); /* the writer holds the lock */
	struct load_arg a = { 0 };
	pthread_t th;
	pthread_create(&th, NULL, load_thread, &a);
	struct timespec pause = { 0, 100 * 1000 * 1000 };
	nanosleep(&pause, NULL);
	char k2[SL_KEY_TEXT_LEN + 1];
	CHECK_EQ_INT(sl_keys_create(&ks, "during", "pro", NULL, NULL, k2, NULL), 0);
	uint64_t released_ms = mono_ms();
	sl_keys_close(&ks);
	pthread_join(th, NULL);
	CHECK_EQ_INT(a.rc, 0);
	CHECK(a.done_ms >= released_ms);
	/* it read the store as the writer left it */
	CHECK_EQ_INT(sl_keytab_num(a.t), 2);
	CHECK(sl_keytab_lookup(a.t, k2, SL_KEY_TEXT_LEN) != NULL);
	sl_keytab_free(a.t);
	/* and released its shared lock: a writer gets in at once */
	uint64_t t0 = mono_ms();
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	CHECK(mono_ms() - t0 < 5);
	sl_keys_close(&ks);
}

struct reader_arg {
	const struct sl_keytab *t;
	char (*keys)[SL_KEY_TEXT_LEN + 1];
	uint32_t num;
	uint32_t found;
};

static void *reader_thread(void *arg)
{
	struct reader_arg *a = arg;
	for (int round = 0; round < 200; round++)
		for (uint32_t i = 0; i < a->num; i++) {
			const struct sl_keytab_entry *e = sl_keytab_lookup(a->t, a->keys[i], SL_KEY_TEXT_LEN);
			a->found += e && sl_keytab_by_slot(a->t, e->slot) == e;
		}
	return NULL;
}

TEST(concurrent_lookups)
{
	enum { N = 64, THREADS = 4 };
	static char keys[N][SL_KEY_TEXT_LEN + 1];
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create_many(&ks, N, "c", "pro", NULL, &keys[0][0], NULL), 0);
	sl_keys_close(&ks);
	struct sl_keytab *t;
	CHECK_EQ_INT(sl_keytab_load(dir, N, NULL, &t, NULL, NULL, 0), 0);
	pthread_t th[THREADS];
	struct reader_arg args[THREADS];
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct reader_arg){ .t = t, .keys = keys, .num = N };
		pthread_create(&th[i], NULL, reader_thread, &args[i]);
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		CHECK_EQ_INT(args[i].found, 200 * N);
	}
	sl_keytab_free(t);
}

int main(void)
{
	if (!mkdtemp(dir_template)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(hmac_precomputed_equals_hmac);
	RUN(lookup_created_imported_revoked);
	RUN(model_lists);
	RUN(indexes_by_id_slot_at);
	RUN(slots_kept_and_never_reused_while_prev_lives);
	RUN(slot_bound_enospc);
	RUN(torn_journal_ignored_not_cut);
	RUN(empty_when_no_store);
	RUN(waits_for_writer_lock);
	RUN(concurrent_lookups);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir_template);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir_template);
	return test_summary();
}
