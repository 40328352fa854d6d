/*
 * test_keys.c - the key store: round trips through a temp data directory,
 * reload, torn and corrupt journal tails, snapshot + journal replay, the
 * writer's lock wait, the read-only open, import, bulk creation, the dollar
 * parser.
 */
#include "../../src/keys.c"
#include "test.h"

#include <pthread.h>

static char dir_template[] = "/tmp/sluice-test-keys-XXXXXX";
static char dir[64];
static int dir_seq;

/* A fresh, empty data directory per case (inside one mkdtemp'd parent). */
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

static void truncate_file(const char *name, off_t len)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	SL_ASSERT(truncate(path, len) == 0);
}

static void flip_byte(const char *name, off_t at)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_RDWR);
	SL_ASSERT(fd >= 0);
	uint8_t b;
	SL_ASSERT(pread(fd, &b, 1, at) == 1);
	b ^= 0x40;
	SL_ASSERT(pwrite(fd, &b, 1, at) == 1);
	close(fd);
}

static bool same_key(const struct sl_key *a, const struct sl_key *b)
{
	return strcmp(a->id, b->id) == 0 && strcmp(a->name, b->name) == 0 && strcmp(a->tier, b->tier) == 0 &&
	       strcmp(a->models, b->models) == 0 && strcmp(a->parent, b->parent) == 0 &&
	       a->status == b->status && a->balance_micro_usd == b->balance_micro_usd &&
	       a->created_unix_s == b->created_unix_s && memcmp(a->hash, b->hash, SL_KEY_HASH_LEN) == 0;
}

TEST(create_lookup_revoke_topup)
{
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(file_size("secret"), SL_KEYS_SECRET_LEN);
	char key[SL_KEY_TEXT_LEN + 1];
	struct sl_key rec;
	CHECK_EQ_INT(sl_keys_create(&ks, "alice", "pro", "gpt-4o,claude", NULL, key, &rec), 0);
	CHECK_EQ_INT(strlen(key), SL_KEY_TEXT_LEN);
	CHECK(memcmp(key, "sk-sluice-", 10) == 0);
	for (size_t i = 10; i < SL_KEY_TEXT_LEN; i++)
		CHECK(strchr(base62, key[i]) != NULL);
	CHECK(valid_id(rec.id));
	const struct sl_key *k = sl_keys_lookup(&ks, key, strlen(key));
	CHECK(k && strcmp(k->id, rec.id) == 0 && k->status == SL_KEY_ACTIVE);
	CHECK_EQ_INT(sl_keys_topup(&ks, rec.id, 5250000), 0);
	CHECK_EQ_INT(sl_keys_topup(&ks, rec.id, 1), 0);
	CHECK_EQ_INT(sl_keys_find(&ks, rec.id)->balance_micro_usd, 5250001);
	CHECK_EQ_INT(sl_keys_topup(&ks, rec.id, 0), -EINVAL);
	CHECK_EQ_INT(sl_keys_topup(&ks, rec.id, INT64_MAX), -ERANGE);
	CHECK_EQ_INT(sl_keys_update(&ks, rec.id, "alice2", NULL, ""), 0);
	k = sl_keys_find(&ks, rec.id);
	CHECK(strcmp(k->name, "alice2") == 0 && strcmp(k->tier, "pro") == 0 && k->models[0] == 0);
	CHECK_EQ_INT(sl_keys_revoke(&ks, rec.id), 0);
	k = sl_keys_lookup(&ks, key, strlen(key));
	CHECK(k && k->status == SL_KEY_REVOKED);
	CHECK_EQ_INT(sl_keys_revoke(&ks, "key_000000000000"), -ENOENT);
	sl_keys_close(&ks);
}

TEST(invalid_fields_rejected)
{
	struct sl_keystore ks;
	char key[SL_KEY_TEXT_LEN + 1];
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "", "pro", NULL, NULL, key, NULL), -EINVAL);
	CHECK_EQ_INT(sl_keys_create(&ks, "a\tb", "pro", NULL, NULL, key, NULL), -EINVAL);
	CHECK_EQ_INT(sl_keys_create(&ks, "a", "p r", NULL, NULL, key, NULL), -EINVAL);
	CHECK_EQ_INT(sl_keys_create(&ks, "a", "pro", "x,,y", NULL, key, NULL), -EINVAL);
	CHECK_EQ_INT(sl_keys_create(&ks, "a", "pro", NULL, "nope", key, NULL), -EINVAL);
	CHECK_EQ_INT(sl_keys_create(&ks, "a", "pro", NULL, "key_0123456789ab", key, NULL), -ENOENT);
	CHECK_EQ_INT(ks.num_keys, 0);
	CHECK_EQ_INT(file_size("keys.journal"), 0);
	sl_keys_close(&ks);
}

TEST(reload_equals_and_wrong_key_not_found)
{
	struct sl_keystore ks;
	char keys[5][SL_KEY_TEXT_LEN + 1];
	struct sl_key recs[5];
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	for (int i = 0; i < 5; i++) {
		char name[16];
		snprintf(name, sizeof(name), "user %d", i);
		CHECK_EQ_INT(sl_keys_create(&ks, name, i & 1 ? "free" : "pro", i == 2 ? "m1" : NULL,
		                            i ? recs[0].id : NULL, keys[i], &recs[i]),
		             0);
	}
	CHECK_EQ_INT(sl_keys_topup(&ks, recs[3].id, 42), 0);
	CHECK_EQ_INT(sl_keys_revoke(&ks, recs[4].id), 0);
	recs[3] = *sl_keys_find(&ks, recs[3].id);
	recs[4] = *sl_keys_find(&ks, recs[4].id);
	sl_keys_close(&ks);

	struct sl_keys_load_report report;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, &report), 0);
	CHECK_EQ_INT(report.journal_records_num, 7);
	CHECK_EQ_INT(report.journal_cut_bytes, 0);
	CHECK_EQ_INT(ks.num_keys, 5);
	for (int i = 0; i < 5; i++) {
		const struct sl_key *k = sl_keys_lookup(&ks, keys[i], SL_KEY_TEXT_LEN);
		CHECK(k && same_key(k, &recs[i]));
	}
	char wrong[SL_KEY_TEXT_LEN + 1];
	memcpy(wrong, keys[0], sizeof(wrong));
	wrong[SL_KEY_TEXT_LEN - 1] = wrong[SL_KEY_TEXT_LEN - 1] == 'a' ? 'b' : 'a';
	CHECK(sl_keys_lookup(&ks, wrong, SL_KEY_TEXT_LEN) == NULL);
	CHECK(sl_keys_lookup(&ks, keys[0], SL_KEY_TEXT_LEN - 1) == NULL);
	CHECK(sl_keys_lookup(&ks, "", 0) == NULL);
	sl_keys_close(&ks);
}

TEST(secret_never_stored_in_records)
{
	struct sl_keystore ks;
	char key[SL_KEY_TEXT_LEN + 1];
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "x", "pro", NULL, NULL, key, NULL), 0);
	CHECK_EQ_INT(sl_keys_compact(&ks), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "y", "pro", NULL, NULL, key, NULL), 0);
	sl_keys_close(&ks);
	const char *files[] = { "keys.journal", "keys.snapshot" };
	for (int f = 0; f < 2; f++) {
		int dfd = open(dir, O_RDONLY | O_DIRECTORY);
		uint8_t *buf;
		size_t len;
		CHECK_EQ_INT(sl_read_file_at(dfd, files[f], 0, &buf, &len), 0);
		close(dfd);
		CHECK(memmem(buf, len, "sk-sluice-", 10) == NULL);
		free(buf);
	}
	char path[128];
	struct stat st;
	snprintf(path, sizeof(path), "%s/secret", dir);
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
}

TEST(torn_tail_cut_earlier_survive)
{
	struct sl_keystore ks;
	char k1[SL_KEY_TEXT_LEN + 1], k2[SL_KEY_TEXT_LEN + 1];
	struct sl_key r1, r2;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "one", "pro", NULL, NULL, k1, &r1), 0);
	off_t good = file_size("keys.journal");
	CHECK_EQ_INT(sl_keys_create(&ks, "two", "pro", NULL, NULL, k2, &r2), 0);
	off_t full = file_size("keys.journal");
	sl_keys_close(&ks);

	/* cut in the middle of the last record's payload, then in its header */
	for (int c = 0; c < 2; c++) {
		off_t cut = c == 0 ? good + (full - good) / 2 : good + 3;
		truncate_file("keys.journal", cut);
		struct sl_keys_load_report report;
		CHECK_EQ_INT(sl_keys_open(&ks, dir, &report), 0);
		CHECK_EQ_INT(report.journal_cut_offset, good);
		CHECK_EQ_INT(report.journal_cut_bytes, cut - good);
		CHECK(!report.journal_crc_mismatch);
		CHECK_EQ_INT(ks.num_keys, 1);
		CHECK(sl_keys_lookup(&ks, k1, SL_KEY_TEXT_LEN) != NULL);
		CHECK(sl_keys_lookup(&ks, k2, SL_KEY_TEXT_LEN) == NULL);
		CHECK_EQ_INT(file_size("keys.journal"), good);
		/* appending after the cut works and survives a reload */
		CHECK_EQ_INT(sl_keys_topup(&ks, r1.id, 7), 0);
		sl_keys_close(&ks);
		CHECK_EQ_INT(sl_keys_open(&ks, dir, &report), 0);
		CHECK_EQ_INT(report.journal_cut_bytes, 0);
		CHECK_EQ_INT(sl_keys_find(&ks, r1.id)->balance_micro_usd, 7 * (c + 1));
		good = file_size("keys.journal");
		CHECK_EQ_INT(sl_keys_create(&ks, "two", "pro", NULL, NULL, k2, &r2), 0);
		full = file_size("keys.journal");
		sl_keys_close(&ks);
	}
}

TEST(corrupt_crc_detected_nothing_after_trusted)
{
	struct sl_keystore ks;
	char k[3][SL_KEY_TEXT_LEN + 1];
	off_t ends[3];
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	for (int i = 0; i < 3; i++) {
		CHECK_EQ_INT(sl_keys_create(&ks, "n", "pro", NULL, NULL, k[i], NULL), 0);
		ends[i] = file_size("keys.journal");
	}
	sl_keys_close(&ks);
	/* one bit of the second record's payload flipped: the second and the
	 * (intact) third record are both dropped */
	flip_byte("keys.journal", ends[0] + FRAME_HEADER_LEN + 5);
	struct sl_keys_load_report report;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, &report), 0);
	CHECK(report.journal_crc_mismatch);
	CHECK_EQ_INT(report.journal_cut_offset, ends[0]);
	CHECK_EQ_INT(report.journal_cut_bytes, ends[2] - ends[0]);
	CHECK_EQ_INT(ks.num_keys, 1);
	CHECK(sl_keys_lookup(&ks, k[0], SL_KEY_TEXT_LEN) != NULL);
	CHECK(sl_keys_lookup(&ks, k[2], SL_KEY_TEXT_LEN) == NULL);
	sl_keys_close(&ks);
}

TEST(snapshot_plus_journal_replay)
{
	struct sl_keystore ks;
	char k1[SL_KEY_TEXT_LEN + 1], k2[SL_KEY_TEXT_LEN + 1];
	struct sl_key r1, r2;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "one", "pro", "a,b", NULL, k1, &r1), 0);
	CHECK_EQ_INT(sl_keys_topup(&ks, r1.id, 100), 0);
	CHECK_EQ_INT(sl_keys_compact(&ks), 0);
	CHECK_EQ_INT(file_size("keys.journal"), 0);
	CHECK(file_size("keys.snapshot") > 0);
	CHECK(file_size("keys.snapshot.tmp") < 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "two", "free", NULL, r1.id, k2, &r2), 0);
	CHECK_EQ_INT(sl_keys_topup(&ks, r1.id, 1), 0);
	sl_keys_close(&ks);

	struct sl_keys_load_report report;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, &report), 0);
	CHECK_EQ_INT(report.snapshot_records_num, 1);
	CHECK_EQ_INT(report.journal_records_num, 2);
	CHECK_EQ_INT(ks.num_keys, 2);
	const struct sl_key *k = sl_keys_lookup(&ks, k1, SL_KEY_TEXT_LEN);
	CHECK(k && k->balance_micro_usd == 101 && strcmp(k->models, "a,b") == 0);
	k = sl_keys_lookup(&ks, k2, SL_KEY_TEXT_LEN);
	CHECK(k && strcmp(k->parent, r1.id) == 0);
	sl_keys_close(&ks);
}

TEST(crash_between_rename_and_truncate_is_harmless)
{
	/* Simulated by keeping a copy of the journal and restoring it after
	 * compaction: the snapshot's records are replayed again on top. */
	struct sl_keystore ks;
	char k1[SL_KEY_TEXT_LEN + 1];
	struct sl_key r1;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "one", "pro", NULL, NULL, k1, &r1), 0);
	CHECK_EQ_INT(sl_keys_topup(&ks, r1.id, 5), 0);
	uint8_t *copy;
	size_t copy_len;
	CHECK_EQ_INT(sl_read_file_at(ks.dir_fd, JOURNAL_NAME, 0, &copy, &copy_len), 0);
	CHECK_EQ_INT(sl_keys_compact(&ks), 0);
	CHECK_EQ_INT(sl_write_all(ks.journal_fd, copy, copy_len), 0);
	free(copy);
	sl_keys_close(&ks);
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	CHECK_EQ_INT(ks.num_keys, 1);
	CHECK_EQ_INT(sl_keys_find(&ks, r1.id)->balance_micro_usd, 5);
	sl_keys_close(&ks);
}

TEST(corrupt_snapshot_refused)
{
	struct sl_keystore ks;
	char k1[SL_KEY_TEXT_LEN + 1];
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "one", "pro", NULL, NULL, k1, NULL), 0);
	CHECK_EQ_INT(sl_keys_compact(&ks), 0);
	sl_keys_close(&ks);
	flip_byte("keys.snapshot", file_size("keys.snapshot") - 3);
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), -EBADMSG);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

TEST(second_writer_waits_then_gives_up)
{
	struct sl_keystore ks, ks2;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	/* flock is per open file description, so a second open in this process
	 * conflicts just as another process would */
	keys_lock_wait_ms = 150;
	uint64_t t0 = mono_ms();
	CHECK_EQ_INT(sl_keys_open(&ks2, dir, NULL), -EWOULDBLOCK);
	uint64_t waited = mono_ms() - t0;
	CHECK(waited >= 150 && waited < 2000);
	sl_keys_close(&ks);
	CHECK_EQ_INT(sl_keys_open(&ks2, dir, NULL), 0);
	sl_keys_close(&ks2);
	keys_lock_wait_ms = SL_KEYS_LOCK_WAIT_MS;
}

/* A reader's shared lock held for a moment (as a gateway reload does): the
 * writer waits for it instead of failing. */
static void *hold_shared_lock(void *arg)
{
	int fd = *(int *)arg;
	struct timespec pause = { 0, 80 * 1000 * 1000 };
	nanosleep(&pause, NULL);
	flock(fd, LOCK_UN);
	return NULL;
}

TEST(writer_waits_for_reader)
{
	struct sl_keystore ks;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	sl_keys_close(&ks);
	char path[128];
	snprintf(path, sizeof(path), "%s/lock", dir);
	int fd = open(path, O_RDONLY);
	CHECK(fd >= 0 && flock(fd, LOCK_SH) == 0);
	pthread_t t;
	pthread_create(&t, NULL, hold_shared_lock, &fd);
	uint64_t t0 = mono_ms();
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	CHECK(mono_ms() - t0 >= 60);
	pthread_join(t, NULL);
	close(fd);
	sl_keys_close(&ks);
}

TEST(readonly_open_reports_tail_without_cutting)
{
	struct sl_keystore ks, ro;
	char k1[SL_KEY_TEXT_LEN + 1], k2[SL_KEY_TEXT_LEN + 1];
	struct sl_keys_load_report report;
	/* no directory, then a directory without a secret: empty, nothing made */
	CHECK_EQ_INT(sl_keys_open_readonly(&ro, fresh_dir(), &report), 0);
	CHECK(!ro.has_secret && ro.num_keys == 0 && sl_keys_lookup(&ro, "x", 1) == NULL);
	sl_keys_close(&ro);
	CHECK_EQ_INT(mkdir(dir, 0700), 0);
	CHECK_EQ_INT(sl_keys_open_readonly(&ro, dir, &report), 0);
	CHECK(!ro.has_secret && ro.num_keys == 0);
	sl_keys_close(&ro);
	CHECK(file_size("lock") < 0 && file_size("secret") < 0);

	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	CHECK_EQ_INT(sl_keys_create(&ks, "one", "pro", NULL, NULL, k1, NULL), 0);
	CHECK_EQ_INT(sl_keys_compact(&ks), 0);
	off_t good = file_size("keys.journal");
	CHECK_EQ_INT(sl_keys_create(&ks, "two", "pro", NULL, NULL, k2, NULL), 0);
	off_t full = file_size("keys.journal");
	sl_keys_close(&ks);
	truncate_file("keys.journal", good + (full - good) / 2);

	CHECK_EQ_INT(sl_keys_open_readonly(&ro, dir, &report), 0);
	CHECK(ro.has_secret && ro.num_keys == 1);
	CHECK_EQ_INT(report.snapshot_records_num, 1);
	CHECK_EQ_INT(report.journal_records_num, 0);
	CHECK_EQ_INT(report.journal_cut_offset, good);
	CHECK_EQ_INT(report.journal_cut_bytes, (full - good) / 2);
	CHECK(sl_keys_lookup(&ro, k1, SL_KEY_TEXT_LEN) != NULL);
	CHECK(sl_keys_lookup(&ro, k2, SL_KEY_TEXT_LEN) == NULL);
	CHECK_EQ_INT(file_size("keys.journal"), good + (full - good) / 2); /* not cut */
	/* the lock is released on return: a writer gets it at once */
	keys_lock_wait_ms = 0;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	keys_lock_wait_ms = SL_KEYS_LOCK_WAIT_MS;
	CHECK_EQ_INT(file_size("keys.journal"), good); /* the writer cuts */
	sl_keys_close(&ks);
	sl_keys_close(&ro);
}

TEST(import_good_short_duplicate)
{
	struct sl_keystore ks;
	struct sl_key rec;
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	const char *old = "sk-proj-Abc123_def-456.xyz789";
	CHECK_EQ_INT(sl_keys_import(&ks, old, strlen(old), "migrated", "pro", "m1,m2", NULL, &rec), 0);
	CHECK(valid_id(rec.id) && rec.status == SL_KEY_ACTIVE && strcmp(rec.models, "m1,m2") == 0);
	const struct sl_key *k = sl_keys_lookup(&ks, old, strlen(old));
	CHECK(k && strcmp(k->id, rec.id) == 0);
	/* stored as HMAC-SHA-256(secret, text) like a created key */
	uint8_t mac[SL_KEY_HASH_LEN];
	unsigned int mac_len = 0;
	HMAC(EVP_sha256(), ks.secret, SL_KEYS_SECRET_LEN, (const uint8_t *)old, strlen(old), mac, &mac_len);
	CHECK(mac_len == SL_KEY_HASH_LEN && memcmp(mac, rec.hash, SL_KEY_HASH_LEN) == 0);
	/* 19 characters: too short; 257: too long; a space or a control: refused */
	CHECK_EQ_INT(sl_keys_import(&ks, old, 19, "x", "pro", NULL, NULL, NULL), -EINVAL);
	char big[SL_KEY_TEXT_LEN_MAX + 2];
	memset(big, 'a', sizeof(big));
	CHECK_EQ_INT(sl_keys_import(&ks, big, SL_KEY_TEXT_LEN_MAX + 1, "x", "pro", NULL, NULL, NULL), -EINVAL);
	CHECK_EQ_INT(sl_keys_import(&ks, big, SL_KEY_TEXT_LEN_MAX, "x", "pro", NULL, NULL, NULL), 0);
	CHECK_EQ_INT(sl_keys_import(&ks, "aaaaaaaaaa bbbbbbbbbb", 21, "x", "pro", NULL, NULL, NULL), -EINVAL);
	CHECK_EQ_INT(sl_keys_import(&ks, "aaaaaaaaaa\tbbbbbbbbbb", 21, "x", "pro", NULL, NULL, NULL), -EINVAL);
	/* the same text again, even once revoked: refused, nothing written */
	CHECK_EQ_INT(sl_keys_revoke(&ks, rec.id), 0);
	off_t before = file_size("keys.journal");
	CHECK_EQ_INT(sl_keys_import(&ks, old, strlen(old), "again", "pro", NULL, NULL, NULL), -EEXIST);
	CHECK_EQ_INT(file_size("keys.journal"), before);
	CHECK_EQ_INT(sl_keys_import(&ks, old, strlen(old) - 1, "x", "bad tier", NULL, NULL, NULL), -EINVAL);
	CHECK_EQ_INT(sl_keys_import(&ks, old, strlen(old) - 1, "x", "pro", NULL, "key_0123456789ab", NULL),
	             -ENOENT);
	CHECK_EQ_INT(ks.num_keys, 2);
	sl_keys_close(&ks);
	/* survives a reload; the key text itself is nowhere on disk */
	CHECK_EQ_INT(sl_keys_open(&ks, dir, NULL), 0);
	k = sl_keys_lookup(&ks, old, strlen(old));
	CHECK(k && k->status == SL_KEY_REVOKED);
	sl_keys_close(&ks);
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	uint8_t *buf;
	size_t len;
	CHECK_EQ_INT(sl_read_file_at(dfd, "keys.journal", 0, &buf, &len), 0);
	close(dfd);
	CHECK(memmem(buf, len, old, strlen(old)) == NULL);
	free(buf);
}

TEST(create_many_one_snapshot)
{
	struct sl_keystore ks;
	enum { N = 3000 };
	static char keys[N][SL_KEY_TEXT_LEN + 1], ids[N][SL_KEY_ID_LEN + 1];
	CHECK_EQ_INT(sl_keys_open(&ks, fresh_dir(), NULL), 0);
	char k0[SL_KEY_TEXT_LEN + 1];
	CHECK_EQ_INT(sl_keys_create(&ks, "first", "pro", NULL, NULL, k0, NULL), 0);
	CHECK_EQ_INT(sl_keys_create_many(&ks, N, "bulk", "free", "m", &keys[0][0], &ids[0][0]), 0);
	CHECK_EQ_INT(file_size("keys.journal"), 0);
	CHECK_EQ_INT(ks.num_keys, N + 1);
	char spare[SL_KEY_TEXT_LEN + 1];
	CHECK_EQ_INT(sl_keys_create_many(&ks, 1, "", "free", NULL, spare, NULL), -EINVAL);
	CHECK_EQ_INT(ks.num_keys, N + 1);
	sl_keys_close(&ks);
	struct sl_keys_load_report report;
	CHECK_EQ_INT(sl_keys_open(&ks, dir, &report), 0);
	CHECK_EQ_INT(report.snapshot_records_num, N + 1);
	CHECK_EQ_INT(ks.num_keys, N + 1);
	CHECK(sl_keys_lookup(&ks, k0, SL_KEY_TEXT_LEN) != NULL);
	for (int i = 0; i < N; i += 397) {
		const struct sl_key *k = sl_keys_lookup(&ks, keys[i], SL_KEY_TEXT_LEN);
		CHECK(k && strcmp(k->id, ids[i]) == 0 && strcmp(k->models, "m") == 0);
		CHECK(sl_keys_find(&ks, ids[i]) == k);
	}
	sl_keys_close(&ks);
}

TEST(parse_usd_table)
{
	static const struct {
		const char *text;
		int rc;
		int64_t micro;
	} cases[] = {
		{ "0", 0, 0 },
		{ "5", 0, 5000000 },
		{ "0.25", 0, 250000 },
		{ "12.000001", 0, 12000001 },
		{ "1.1", 0, 1100000 },
		{ "0.999999", 0, 999999 },
		{ "007.50", 0, 7500000 },
		{ "9223372036854", 0, 9223372036854000000 },
		{ "9223372036854.775807", 0, INT64_MAX },
		{ "9223372036854.775808", -ERANGE, 0 },
		{ "9223372036855", -ERANGE, 0 },
		{ "99999999999999999999", -ERANGE, 0 },
		{ "1.0000001", -EINVAL, 0 },
		{ "", -EINVAL, 0 },
		{ ".5", -EINVAL, 0 },
		{ "5.", -EINVAL, 0 },
		{ "-1", -EINVAL, 0 },
		{ "+1", -EINVAL, 0 },
		{ "1e3", -EINVAL, 0 },
		{ "1,5", -EINVAL, 0 },
		{ " 1", -EINVAL, 0 },
		{ "1 ", -EINVAL, 0 },
		{ "$1", -EINVAL, 0 },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		int64_t micro = -1;
		int rc = sl_keys_parse_usd(cases[i].text, &micro);
		if (rc != cases[i].rc || (rc == 0 && micro != cases[i].micro))
			FAIL_AT("parse_usd_table", "\"%s\": rc %d micro %" PRId64, cases[i].text, rc, micro);
	}
	char buf[32];
	sl_keys_format_usd(12000001, buf, sizeof(buf));
	CHECK(strcmp(buf, "12.000001") == 0);
	sl_keys_format_usd(0, buf, sizeof(buf));
	CHECK(strcmp(buf, "0.000000") == 0);
}

/* Bit by bit, for checking the table and the SSE4.2 paths on every length
 * and alignment. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t n)
{
	uint32_t c = 0xFFFFFFFFu;
	for (size_t i = 0; i < n; i++) {
		c ^= p[i];
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
	}
	return c ^ 0xFFFFFFFFu;
}

TEST(crc32c_matches_bitwise_all_lengths_and_offsets)
{
	uint8_t buf[300];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	for (size_t off = 0; off < 8; off++)
		for (size_t n = 0; n + off <= sizeof buf; n += 1 + n / 16)
			CHECK_EQ_INT(sl_crc32c(buf + off, n), crc32c_bitwise(buf + off, n));
}

TEST(crc32c_known_vector)
{
	CHECK_EQ_INT(sl_crc32c("123456789", 9), 0xE3069283u);
}

int main(void)
{
	if (!mkdtemp(dir_template)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(crc32c_known_vector);
	RUN(crc32c_matches_bitwise_all_lengths_and_offsets);
	RUN(create_lookup_revoke_topup);
	RUN(invalid_fields_rejected);
	RUN(reload_equals_and_wrong_key_not_found);
	RUN(secret_never_stored_in_records);
	RUN(torn_tail_cut_earlier_survive);
	RUN(corrupt_crc_detected_nothing_after_trusted);
	RUN(snapshot_plus_journal_replay);
	RUN(crash_between_rename_and_truncate_is_harmless);
	RUN(corrupt_snapshot_refused);
	RUN(second_writer_waits_then_gives_up);
	RUN(writer_waits_for_reader);
	RUN(readonly_open_reports_tail_without_cutting);
	RUN(import_good_short_duplicate);
	RUN(create_many_one_snapshot);
	RUN(parse_usd_table);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir_template);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir_template);
	return test_summary();
}
