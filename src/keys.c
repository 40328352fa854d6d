/*
 * keys.c - the API-key store (see include/sluice/keys.h for the on-disk
 * layout). Single writer (flock); every change is appended to the journal and
 * fsync'd before the in-memory table changes, so an acknowledged change is on
 * disk. A record's payload is one line of tab-separated text:
 *
 *   v1 id status balance created last_used hash_hex tier parent models name
 *
 * Field values are printable ASCII (no tab), checked on entry and on load.
 */
#include "sluice/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#define JOURNAL_NAME "keys.journal"
#define SNAPSHOT_NAME "keys.snapshot"
#define SNAPSHOT_TMP_NAME "keys.snapshot.tmp"
#define SECRET_NAME "secret"
#define LOCK_NAME "lock"
#define FRAME_HEADER_LEN 8
#define PAYLOAD_LEN_MAX 4096
#define SNAPSHOT_MAGIC "sluice-keys-snapshot v1"

_Static_assert(SL_KEY_RANDOM_LEN * 5 >= 128, "key text must carry >= 128 bits");


/* --- small I/O helpers --------------------------------------------------------- */


/* --- field validation and the record text ---------------------------------------- */

static bool printable(const char *s, size_t len_max, bool allow_empty, bool allow_space)
{
	size_t len = strlen(s);
	if (len > len_max || (!allow_empty && len == 0))
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c > 0x7e || (c == ' ' && !allow_space))
			return false;
	}
	return true;
}

static bool valid_id(const char *s)
{
	if (strlen(s) != SL_KEY_ID_LEN || memcmp(s, "key_", 4) != 0)
		return false;
	for (int i = 4; i < SL_KEY_ID_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static bool valid_tier(const char *s)
{
	size_t len = strlen(s);
	if (len == 0 || len > SL_KEY_TIER_LEN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
		      c == '-' || c == '.'))
			return false;
	}
	return true;
}

static bool valid_models(const char *s)
{
	/* comma-separated names, no empty element, no spaces */
	if (!printable(s, SL_KEY_MODELS_LEN_MAX, true, false))
		return false;
	size_t len = strlen(s);
	if (len && (s[0] == ',' || s[len - 1] == ',' || strstr(s, ",,")))
		return false;
	return true;
}

static bool valid_record(const struct sl_key *k)
{
	return valid_id(k->id) && printable(k->name, SL_KEY_NAME_LEN_MAX, false, true) &&
	       valid_tier(k->tier) && valid_models(k->models) && (!k->parent[0] || valid_id(k->parent)) &&
	       (k->status == SL_KEY_ACTIVE || k->status == SL_KEY_REVOKED) && k->balance_micro_usd >= 0;
}

static int record_format(const struct sl_key *k, char *buf, size_t buf_len)
{
	static const char digits[] = "0123456789abcdef";
	char hex[SL_KEY_HASH_LEN * 2 + 1];
	for (int i = 0; i < SL_KEY_HASH_LEN; i++) {
		hex[2 * i] = digits[k->hash[i] >> 4];
		hex[2 * i + 1] = digits[k->hash[i] & 15];
	}
	hex[SL_KEY_HASH_LEN * 2] = 0;
	int n = snprintf(buf, buf_len, "v1\t%s\t%d\t%" PRId64 "\t%" PRId64 "\t%" PRId64 "\t%s\t%s\t%s\t%s\t%s",
	                 k->id, (int)k->status, k->balance_micro_usd, k->created_unix_s, k->last_used_unix_s,
	                 hex, k->tier, k->parent, k->models, k->name);
	SL_ASSERT(n > 0 && (size_t)n < buf_len);
	return n;
}

static bool parse_i64(const char *s, int64_t *out)
{
	if (!*s)
		return false;
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static bool copy_field(char *dst, size_t dst_len, const char *src)
{
	size_t len = strlen(src);
	if (len >= dst_len)
		return false;
	memcpy(dst, src, len + 1);
	return true;
}

/* The value of one lowercase or uppercase hex digit, or -1. (A loop of
 * sscanf("%2x") made loading a million keys take seconds.) */
static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parses one payload into *k. Returns false for anything malformed. */
static bool record_parse(const uint8_t *payload, size_t len, struct sl_key *k)
{
	char buf[PAYLOAD_LEN_MAX + 1];
	if (len > PAYLOAD_LEN_MAX || memchr(payload, 0, len))
		return false;
	memcpy(buf, payload, len);
	buf[len] = 0;
	char *fields[11];
	char *p = buf;
	for (int i = 0; i < 11; i++) {
		fields[i] = p;
		char *tab = strchr(p, '\t');
		if (i < 10) {
			if (!tab)
				return false;
			*tab = 0;
			p = tab + 1;
		} else if (tab) {
			return false;
		}
	}
	memset(k, 0, sizeof(*k));
	int64_t status;
	if (strcmp(fields[0], "v1") != 0 || !copy_field(k->id, sizeof(k->id), fields[1]) ||
	    !parse_i64(fields[2], &status) || !parse_i64(fields[3], &k->balance_micro_usd) ||
	    !parse_i64(fields[4], &k->created_unix_s) || !parse_i64(fields[5], &k->last_used_unix_s) ||
	    strlen(fields[6]) != SL_KEY_HASH_LEN * 2 || !copy_field(k->tier, sizeof(k->tier), fields[7]) ||
	    !copy_field(k->parent, sizeof(k->parent), fields[8]) ||
	    !copy_field(k->models, sizeof(k->models), fields[9]) ||
	    !copy_field(k->name, sizeof(k->name), fields[10]))
		return false;
	k->status = (enum sl_key_status)status;
	for (int i = 0; i < SL_KEY_HASH_LEN; i++) {
		int hi = hex_value(fields[6][2 * i]), lo = hex_value(fields[6][2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		k->hash[i] = (uint8_t)(hi << 4 | lo);
	}
	return valid_record(k);
}

/* --- the in-memory table ------------------------------------------------------------ */

/* FNV-1a of the id: ids from files are random hex, ids from the command line
 * are whatever the operator typed; either way the index stays short. */
static uint64_t id_hash(const char *id)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *id; id++)
		h = (h ^ (uint8_t)*id) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

static struct sl_key *find_mut(const struct sl_keystore *ks, const char *id)
{
	if (!ks->id_index)
		return NULL;
	for (uint32_t i = (uint32_t)id_hash(id) & ks->id_index_mask;; i = (i + 1) & ks->id_index_mask) {
		uint32_t pos = ks->id_index[i];
		if (pos == 0)
			return NULL;
		if (strcmp(ks->keys[pos - 1].id, id) == 0)
			return &ks->keys[pos - 1];
	}
}

static void index_insert(struct sl_keystore *ks, uint32_t pos)
{
	uint32_t i = (uint32_t)id_hash(ks->keys[pos].id) & ks->id_index_mask;
	while (ks->id_index[i])
		i = (i + 1) & ks->id_index_mask;
	ks->id_index[i] = pos + 1;
}

/* Rebuilds the id index for keys[0..num_keys) with room for keys_cap keys at
 * a load factor of at most 1/2. */
static int index_rebuild(struct sl_keystore *ks)
{
	uint32_t cap = 16;
	while (cap < 2 * ks->keys_cap)
		cap *= 2;
	uint32_t *index = calloc(cap, sizeof(*index));
	if (!index)
		return -ENOMEM;
	free(ks->id_index);
	ks->id_index = index;
	ks->id_index_mask = cap - 1;
	for (uint32_t pos = 0; pos < ks->num_keys; pos++)
		index_insert(ks, pos);
	return 0;
}

/* Makes room for extra more keys (table and index). */
static int reserve(struct sl_keystore *ks, uint32_t extra)
{
	if (extra > SL_KEYS_NUM_MAX || ks->num_keys > SL_KEYS_NUM_MAX - extra)
		return -ENOSPC;
	uint32_t need = ks->num_keys + extra;
	if (need > ks->keys_cap) {
		uint32_t cap = ks->keys_cap ? ks->keys_cap : 64;
		while (cap < need)
			cap *= 2;
		struct sl_key *keys = realloc(ks->keys, (size_t)cap * sizeof(*keys));
		if (!keys)
			return -ENOMEM;
		ks->keys = keys;
		ks->keys_cap = cap;
	}
	/* the index must stay at most half full, whatever happened before */
	if (!ks->id_index || (ks->id_index_mask + 1) / 2 < need)
		return index_rebuild(ks);
	return 0;
}

static int upsert(struct sl_keystore *ks, const struct sl_key *k)
{
	struct sl_key *slot = find_mut(ks, k->id);
	if (slot) {
		*slot = *k;
		return 0;
	}
	int rc = reserve(ks, 1);
	if (rc < 0)
		return rc;
	ks->keys[ks->num_keys] = *k;
	index_insert(ks, ks->num_keys++);
	return 0;
}

const struct sl_key *sl_keys_find(const struct sl_keystore *ks, const char *id)
{
	return find_mut(ks, id);
}

static void key_hash(const struct sl_keystore *ks, const char *key, size_t key_len, uint8_t out[SL_KEY_HASH_LEN])
{
	unsigned int out_len = 0;
	uint8_t *r = HMAC(EVP_sha256(), ks->secret, sizeof(ks->secret), (const uint8_t *)key, key_len, out,
	                  &out_len);
	SL_ASSERT(r && out_len == SL_KEY_HASH_LEN);
}

/* The record whose stored hash is hash, or NULL. Every record is compared,
 * in constant time, so the time taken does not depend on where (or
 * whether) the hash matches. */
static const struct sl_key *find_hash(const struct sl_keystore *ks, const uint8_t hash[SL_KEY_HASH_LEN])
{
	const struct sl_key *found = NULL;
	for (uint32_t i = 0; i < ks->num_keys; i++)
		if (CRYPTO_memcmp(ks->keys[i].hash, hash, SL_KEY_HASH_LEN) == 0)
			found = &ks->keys[i];
	return found;
}

const struct sl_key *sl_keys_lookup(const struct sl_keystore *ks, const char *key, size_t key_len)
{
	if (key_len == 0 || key_len > SL_KEY_TEXT_LEN_MAX || !ks->has_secret)
		return NULL;
	uint8_t hash[SL_KEY_HASH_LEN];
	key_hash(ks, key, key_len, hash);
	const struct sl_key *found = find_hash(ks, hash);
	OPENSSL_cleanse(hash, sizeof(hash));
	return found;
}

/* --- framed record files --------------------------------------------------------------- */

/* Walks the frames in buf. Calls upsert for each good record. Returns the
 * offset after the last good frame; *out_crc_bad tells a checksum failure
 * from a torn frame when the walk stops early; negative errno on ENOMEM.
 * skip_first: the first record is the snapshot header, checked by the caller. */
static int64_t replay(struct sl_keystore *ks, const uint8_t *buf, size_t len, uint32_t *out_records_num,
                      bool *out_crc_bad, bool skip_first)
{
	size_t off = 0;
	uint32_t records_num = 0;
	*out_crc_bad = false;
	while (off < len) {
		if (len - off < FRAME_HEADER_LEN)
			break;
		uint32_t payload_len = sl_get_le32(buf + off);
		uint32_t crc = sl_get_le32(buf + off + 4);
		if (payload_len == 0 || payload_len > PAYLOAD_LEN_MAX || payload_len > len - off - FRAME_HEADER_LEN)
			break;
		const uint8_t *payload = buf + off + FRAME_HEADER_LEN;
		if (sl_crc32c(payload, payload_len) != crc) {
			*out_crc_bad = true;
			break;
		}
		if (skip_first && off == 0) {
			if (payload_len != strlen(SNAPSHOT_MAGIC) || memcmp(payload, SNAPSHOT_MAGIC, payload_len))
				break;
		} else {
			struct sl_key k;
			if (!record_parse(payload, payload_len, &k)) {
				*out_crc_bad = true; /* checksummed but meaningless: same verdict */
				break;
			}
			int rc = upsert(ks, &k);
			if (rc < 0)
				return rc;
			records_num++;
		}
		off += FRAME_HEADER_LEN + payload_len;
	}
	*out_records_num = records_num;
	return (int64_t)off;
}

static size_t frame(uint8_t *out, const char *payload, size_t payload_len)
{
	SL_ASSERT(payload_len > 0 && payload_len <= PAYLOAD_LEN_MAX);
	sl_put_le32(out, (uint32_t)payload_len);
	sl_put_le32(out + 4, sl_crc32c(payload, payload_len));
	memcpy(out + FRAME_HEADER_LEN, payload, payload_len);
	return FRAME_HEADER_LEN + payload_len;
}

/* Appends one record and fsyncs. On a short write the journal is cut back to
 * where it was, so a failed append leaves no partial frame behind. */
static int journal_append(struct sl_keystore *ks, const struct sl_key *k)
{
	char payload[PAYLOAD_LEN_MAX];
	uint8_t framed[FRAME_HEADER_LEN + PAYLOAD_LEN_MAX];
	size_t framed_len = frame(framed, payload, (size_t)record_format(k, payload, sizeof(payload)));
	off_t end = lseek(ks->journal_fd, 0, SEEK_END);
	if (end < 0)
		return -errno;
	int rc = sl_write_all(ks->journal_fd, framed, framed_len);
	if (rc == 0 && fdatasync(ks->journal_fd) < 0)
		rc = -errno;
	if (rc < 0) {
		if (ftruncate(ks->journal_fd, end) == 0)
			(void)fdatasync(ks->journal_fd);
		return rc;
	}
	ks->journal_records_num++;
	return 0;
}

/* Journals the new state of a key, then applies it in memory. */
static int commit(struct sl_keystore *ks, const struct sl_key *k)
{
	SL_ASSERT(ks->journal_fd >= 0); /* not a read-only open */
	SL_ASSERT(valid_record(k));
	int rc = journal_append(ks, k);
	if (rc < 0)
		return rc;
	rc = upsert(ks, k);
	if (rc < 0)
		return rc;
	if (ks->journal_records_num >= SL_KEYS_COMPACT_RECORDS)
		(void)sl_keys_compact(ks); /* the journal still holds everything on failure */
	return 0;
}

/* sl_keys_compact; *out_renamed tells whether the new snapshot is in place
 * (a later failure to truncate the journal loses nothing). */
static int compact(struct sl_keystore *ks, bool *out_renamed)
{
	SL_ASSERT(ks->journal_fd >= 0); /* not a read-only open */
	*out_renamed = false;
	int fd = openat(ks->dir_fd, SNAPSHOT_TMP_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	uint8_t framed[FRAME_HEADER_LEN + PAYLOAD_LEN_MAX];
	int rc = sl_write_all(fd, framed, frame(framed, SNAPSHOT_MAGIC, strlen(SNAPSHOT_MAGIC)));
	for (uint32_t i = 0; rc == 0 && i < ks->num_keys; i++) {
		char payload[PAYLOAD_LEN_MAX];
		int n = record_format(&ks->keys[i], payload, sizeof(payload));
		rc = sl_write_all(fd, framed, frame(framed, payload, (size_t)n));
	}
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	if (rc == 0 && renameat(ks->dir_fd, SNAPSHOT_TMP_NAME, ks->dir_fd, SNAPSHOT_NAME) < 0)
		rc = -errno;
	*out_renamed = rc == 0;
	if (rc == 0 && fsync(ks->dir_fd) < 0)
		rc = -errno;
	if (rc < 0) {
		(void)unlinkat(ks->dir_fd, SNAPSHOT_TMP_NAME, 0);
		return rc;
	}
	/* The snapshot is durable; the journal's records are now redundant (and
	 * harmless if the truncation below is lost: replay is idempotent). */
	if (ftruncate(ks->journal_fd, 0) < 0 || fsync(ks->journal_fd) < 0)
		return -errno;
	ks->journal_records_num = 0;
	return 0;
}

int sl_keys_compact(struct sl_keystore *ks)
{
	bool renamed;
	return compact(ks, &renamed);
}

/* --- open / close ----------------------------------------------------------------------- */

/* How long sl_keys_open waits for the lock; a test shortens it. */
static int keys_lock_wait_ms = SL_KEYS_LOCK_WAIT_MS;

/* Takes an exclusive flock on fd, retrying every 10 ms for up to wait_ms:
 * another CLI command or a gateway reloading its table holds it only
 * briefly. Polling (rather than a blocking flock) bounds the wait without a
 * signal. -EWOULDBLOCK when still held after wait_ms. */
static int lock_exclusive(int fd, int wait_ms)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (;;) {
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK && errno != EINTR)
			return -errno;
		clock_gettime(CLOCK_MONOTONIC, &now);
		int64_t waited_ms = (int64_t)(now.tv_sec - start.tv_sec) * 1000 +
		                    (now.tv_nsec - start.tv_nsec) / 1000000;
		if (waited_ms >= wait_ms)
			return -EWOULDBLOCK;
		struct timespec pause = { 0, 10 * 1000 * 1000 };
		nanosleep(&pause, NULL);
	}
}

/* Reads the secret; creates it when absent and create is set (-ENOENT
 * otherwise). */
static int load_secret(struct sl_keystore *ks, bool create)
{
	uint8_t *buf;
	size_t len;
	int rc = sl_read_file_at(ks->dir_fd, SECRET_NAME, 0, &buf, &len);
	if (rc == 0) {
		bool ok = len == SL_KEYS_SECRET_LEN;
		if (ok)
			memcpy(ks->secret, buf, SL_KEYS_SECRET_LEN);
		OPENSSL_cleanse(buf, len);
		free(buf);
		ks->has_secret = ok;
		return ok ? 0 : -EBADMSG;
	}
	if (rc != -ENOENT || !create)
		return rc;
	/* First use: write to a temp file and rename, so a crash never leaves a
	 * short secret behind. */
	if (!RAND_bytes(ks->secret, SL_KEYS_SECRET_LEN))
		return -EIO;
	int fd = openat(ks->dir_fd, SECRET_NAME ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	rc = sl_write_all(fd, ks->secret, SL_KEYS_SECRET_LEN);
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	if (rc == 0 && renameat(ks->dir_fd, SECRET_NAME ".tmp", ks->dir_fd, SECRET_NAME) < 0)
		rc = -errno;
	if (rc == 0 && fsync(ks->dir_fd) < 0)
		rc = -errno;
	ks->has_secret = rc == 0;
	return rc;
}

/* Loads the snapshot and replays the journal into ks. A torn or corrupt
 * journal tail is described in *report, and cut when cut_tail (the writer);
 * a read-only load leaves the files alone. An absent journal is empty. */
static int load(struct sl_keystore *ks, struct sl_keys_load_report *report, bool cut_tail)
{
	uint8_t *buf;
	size_t len;
	bool crc_bad;
	int rc = sl_read_file_at(ks->dir_fd, SNAPSHOT_NAME, 0, &buf, &len);
	if (rc == 0) {
		int64_t end = replay(ks, buf, len, &report->snapshot_records_num, &crc_bad, true);
		free(buf);
		if (end < 0)
			return (int)end;
		/* The snapshot was renamed into place whole: any damage is not a torn
		 * write but corruption, and silently dropping keys is not an option. */
		if ((size_t)end != len || len == 0)
			return -EBADMSG;
	} else if (rc != -ENOENT) {
		return rc;
	}
	rc = sl_read_file_at(ks->dir_fd, JOURNAL_NAME, 0, &buf, &len);
	if (rc == -ENOENT && !cut_tail)
		return 0;
	if (rc < 0)
		return rc;
	int64_t end = replay(ks, buf, len, &report->journal_records_num, &crc_bad, false);
	free(buf);
	if (end < 0)
		return (int)end;
	ks->journal_records_num = report->journal_records_num;
	if ((size_t)end != len) {
		report->journal_cut_offset = (uint64_t)end;
		report->journal_cut_bytes = len - (uint64_t)end;
		report->journal_crc_mismatch = crc_bad;
		if (cut_tail && (ftruncate(ks->journal_fd, end) < 0 || fsync(ks->journal_fd) < 0))
			return -errno;
	}
	return 0;
}

int sl_keys_open(struct sl_keystore *ks, const char *data_dir, struct sl_keys_load_report *out_report)
{
	struct sl_keys_load_report report_local;
	struct sl_keys_load_report *report = out_report ? out_report : &report_local;
	memset(report, 0, sizeof(*report));
	memset(ks, 0, sizeof(*ks));
	ks->dir_fd = ks->lock_fd = ks->journal_fd = -1;
	if (mkdir(data_dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	int rc = 0;
	ks->dir_fd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ks->dir_fd < 0) {
		rc = -errno;
		goto fail;
	}
	ks->lock_fd = openat(ks->dir_fd, LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (ks->lock_fd < 0) {
		rc = -errno;
		goto fail;
	}
	if ((rc = lock_exclusive(ks->lock_fd, keys_lock_wait_ms)) < 0)
		goto fail;
	ks->journal_fd = openat(ks->dir_fd, JOURNAL_NAME, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (ks->journal_fd < 0) {
		rc = -errno;
		goto fail;
	}
	if ((rc = load_secret(ks, true)) < 0 || (rc = load(ks, report, true)) < 0)
		goto fail;
	return 0;
fail:
	sl_keys_close(ks);
	return rc;
}

int sl_keys_open_readonly(struct sl_keystore *ks, const char *data_dir,
                          struct sl_keys_load_report *out_report)
{
	struct sl_keys_load_report report_local;
	struct sl_keys_load_report *report = out_report ? out_report : &report_local;
	memset(report, 0, sizeof(*report));
	memset(ks, 0, sizeof(*ks));
	ks->dir_fd = ks->lock_fd = ks->journal_fd = -1;
	int rc = 0;
	ks->dir_fd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ks->dir_fd < 0) {
		rc = errno == ENOENT ? 0 : -errno; /* no store yet: empty */
		goto done;
	}
	/* Every writer creates the lock file before anything else, so a missing
	 * one means no writer ever ran here; it is created (empty) only when
	 * there is a secret to read, e.g. a data directory copied without it. */
	ks->lock_fd = openat(ks->dir_fd, LOCK_NAME, O_RDONLY | O_CLOEXEC);
	if (ks->lock_fd < 0 && errno == ENOENT) {
		if (faccessat(ks->dir_fd, SECRET_NAME, F_OK, 0) < 0) {
			rc = errno == ENOENT ? 0 : -errno;
			goto done;
		}
		ks->lock_fd = openat(ks->dir_fd, LOCK_NAME, O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
	}
	if (ks->lock_fd < 0) {
		rc = -errno;
		goto done;
	}
	while (flock(ks->lock_fd, LOCK_SH) < 0) {
		if (errno != EINTR) {
			rc = -errno;
			goto done;
		}
	}
	rc = load_secret(ks, false);
	if (rc == -ENOENT) {
		rc = 0; /* the directory exists, no key was ever made */
		goto done;
	}
	if (rc == 0)
		rc = load(ks, report, false);
done:
	/* Release the lock at once: the table is in memory and a writer may be
	 * waiting. The fds are not needed by a read-only store. */
	if (ks->lock_fd >= 0)
		close(ks->lock_fd);
	if (ks->dir_fd >= 0)
		close(ks->dir_fd);
	ks->lock_fd = ks->dir_fd = -1;
	if (rc < 0)
		sl_keys_close(ks);
	return rc;
}

void sl_keys_close(struct sl_keystore *ks)
{
	if (ks->journal_fd >= 0)
		close(ks->journal_fd);
	if (ks->lock_fd >= 0)
		close(ks->lock_fd); /* releases the flock */
	if (ks->dir_fd >= 0)
		close(ks->dir_fd);
	OPENSSL_cleanse(ks->secret, sizeof(ks->secret));
	free(ks->keys);
	free(ks->id_index);
	memset(ks, 0, sizeof(*ks));
	ks->dir_fd = ks->lock_fd = ks->journal_fd = -1;
}

/* --- changes ------------------------------------------------------------------------------ */

static const char base62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* Fills out with len uniform base62 characters (rejection sampling: bytes
 * >= 248 are dropped so that byte % 62 is unbiased). */
static int random_base62(char *out, size_t len)
{
	size_t filled = 0;
	while (filled < len) {
		uint8_t bytes[64];
		if (!RAND_bytes(bytes, sizeof(bytes)))
			return -EIO;
		for (size_t i = 0; i < sizeof(bytes) && filled < len; i++)
			if (bytes[i] < 248)
				out[filled++] = base62[bytes[i] % 62];
		OPENSSL_cleanse(bytes, sizeof(bytes));
	}
	return 0;
}

/* Fills a new active record with a fresh random id and the given fields (no
 * hash yet). Returns 0, -EINVAL for a bad field, -ENOENT for an unknown
 * parent, -EIO when the random generator fails. */
static int new_record(const struct sl_keystore *ks, const char *name, const char *tier, const char *models,
                      const char *parent, struct sl_key *k)
{
	memset(k, 0, sizeof(*k));
	models = models ? models : "";
	parent = parent ? parent : "";
	if (!name || !tier || !printable(name, SL_KEY_NAME_LEN_MAX, false, true) || !valid_tier(tier) ||
	    !valid_models(models) || (parent[0] && !valid_id(parent)))
		return -EINVAL;
	if (parent[0] && !find_mut(ks, parent))
		return -ENOENT;
	strcpy(k->name, name);
	strcpy(k->tier, tier);
	strcpy(k->models, models);
	strcpy(k->parent, parent);
	k->status = SL_KEY_ACTIVE;
	k->created_unix_s = (int64_t)time(NULL);
	do {
		uint8_t id_bytes[6];
		if (!RAND_bytes(id_bytes, sizeof(id_bytes)))
			return -EIO;
		snprintf(k->id, sizeof(k->id), "key_%02x%02x%02x%02x%02x%02x", id_bytes[0], id_bytes[1],
		         id_bytes[2], id_bytes[3], id_bytes[4], id_bytes[5]);
	} while (find_mut(ks, k->id));
	return 0;
}

/* Writes a new random key text to key[0..SL_KEY_TEXT_LEN] (NUL-terminated). */
static int random_key(char key[SL_KEY_TEXT_LEN + 1])
{
	memcpy(key, SL_KEY_PREFIX, sizeof(SL_KEY_PREFIX) - 1);
	int rc = random_base62(key + sizeof(SL_KEY_PREFIX) - 1, SL_KEY_RANDOM_LEN);
	key[SL_KEY_TEXT_LEN] = 0;
	return rc;
}

int sl_keys_create(struct sl_keystore *ks, const char *name, const char *tier, const char *models,
                   const char *parent, char out_key[SL_KEY_TEXT_LEN + 1], struct sl_key *out)
{
	struct sl_key k;
	int rc = new_record(ks, name, tier, models, parent, &k);
	if (rc < 0)
		return rc;
	char key[SL_KEY_TEXT_LEN + 1];
	if ((rc = random_key(key)) < 0)
		return rc;
	key_hash(ks, key, SL_KEY_TEXT_LEN, k.hash);
	rc = commit(ks, &k);
	if (rc == 0) {
		memcpy(out_key, key, sizeof(key));
		if (out)
			*out = k;
	}
	OPENSSL_cleanse(key, sizeof(key));
	return rc;
}

int sl_keys_import(struct sl_keystore *ks, const char *key, size_t key_len, const char *name,
                   const char *tier, const char *models, const char *parent, struct sl_key *out)
{
	if (key_len < SL_KEY_IMPORT_LEN_MIN || key_len > SL_KEY_TEXT_LEN_MAX)
		return -EINVAL;
	for (size_t i = 0; i < key_len; i++)
		if ((unsigned char)key[i] <= ' ' || (unsigned char)key[i] > 0x7e)
			return -EINVAL;
	struct sl_key k;
	int rc = new_record(ks, name, tier, models, parent, &k);
	if (rc < 0)
		return rc;
	key_hash(ks, key, key_len, k.hash);
	if (find_hash(ks, k.hash))
		rc = -EEXIST;
	else
		rc = commit(ks, &k);
	if (rc == 0 && out)
		*out = k;
	OPENSSL_cleanse(k.hash, sizeof(k.hash));
	return rc;
}

int sl_keys_create_many(struct sl_keystore *ks, uint32_t num, const char *name, const char *tier,
                        const char *models, char *out_keys, char *out_ids)
{
	SL_ASSERT(ks->journal_fd >= 0); /* not a read-only open */
	int rc = reserve(ks, num);
	if (rc < 0)
		return rc;
	uint32_t num_before = ks->num_keys;
	for (uint32_t i = 0; i < num && rc == 0; i++) {
		struct sl_key k;
		char *key = out_keys + (size_t)i * (SL_KEY_TEXT_LEN + 1);
		if ((rc = new_record(ks, name, tier, models, NULL, &k)) < 0 || (rc = random_key(key)) < 0)
			break;
		key_hash(ks, key, SL_KEY_TEXT_LEN, k.hash);
		rc = upsert(ks, &k); /* room reserved: cannot fail */
		if (out_ids && rc == 0)
			memcpy(out_ids + (size_t)i * (SL_KEY_ID_LEN + 1), k.id, SL_KEY_ID_LEN + 1);
	}
	/* One snapshot holds every key, or (on failure) the old snapshot and
	 * journal stay as they were. */
	bool renamed = false;
	if (rc == 0)
		rc = compact(ks, &renamed);
	if (renamed)
		rc = 0; /* on disk; a journal left untruncated replays harmlessly */
	if (rc < 0) {
		ks->num_keys = num_before;
		memset(ks->id_index, 0, ((size_t)ks->id_index_mask + 1) * sizeof(*ks->id_index));
		for (uint32_t pos = 0; pos < ks->num_keys; pos++)
			index_insert(ks, pos);
		OPENSSL_cleanse(out_keys, (size_t)num * (SL_KEY_TEXT_LEN + 1));
	}
	return rc;
}

int sl_keys_update(struct sl_keystore *ks, const char *id, const char *name, const char *tier,
                   const char *models)
{
	const struct sl_key *cur = find_mut(ks, id);
	if (!cur)
		return -ENOENT;
	if ((name && !printable(name, SL_KEY_NAME_LEN_MAX, false, true)) || (tier && !valid_tier(tier)) ||
	    (models && !valid_models(models)))
		return -EINVAL;
	struct sl_key k = *cur;
	if (name)
		strcpy(k.name, name);
	if (tier)
		strcpy(k.tier, tier);
	if (models)
		strcpy(k.models, models);
	return commit(ks, &k);
}

int sl_keys_revoke(struct sl_keystore *ks, const char *id)
{
	const struct sl_key *cur = find_mut(ks, id);
	if (!cur)
		return -ENOENT;
	if (cur->status == SL_KEY_REVOKED)
		return 0;
	struct sl_key k = *cur;
	k.status = SL_KEY_REVOKED;
	return commit(ks, &k);
}

int sl_keys_topup(struct sl_keystore *ks, const char *id, int64_t amount_micro_usd)
{
	const struct sl_key *cur = find_mut(ks, id);
	if (!cur)
		return -ENOENT;
	if (amount_micro_usd <= 0)
		return -EINVAL;
	struct sl_key k = *cur;
	if (__builtin_add_overflow(k.balance_micro_usd, amount_micro_usd, &k.balance_micro_usd))
		return -ERANGE;
	return commit(ks, &k);
}

/* --- money ----------------------------------------------------------------------------------- */

int sl_keys_parse_usd(const char *text, int64_t *out_micro_usd)
{
	const char *p = text;
	int64_t whole = 0, frac = 0;
	int whole_digits = 0, frac_digits = 0;
	for (; *p >= '0' && *p <= '9'; p++, whole_digits++) {
		if (__builtin_mul_overflow(whole, 10, &whole) || __builtin_add_overflow(whole, *p - '0', &whole))
			return -ERANGE;
	}
	if (*p == '.') {
		p++;
		for (; *p >= '0' && *p <= '9'; p++, frac_digits++) {
			if (frac_digits == 6)
				return -EINVAL; /* sub-micro-dollar precision would be lost */
			frac = frac * 10 + (*p - '0');
		}
		if (frac_digits == 0)
			return -EINVAL;
	}
	if (*p || whole_digits == 0)
		return -EINVAL;
	for (int i = frac_digits; i < 6; i++)
		frac *= 10;
	int64_t micro;
	if (__builtin_mul_overflow(whole, 1000000, &micro) || __builtin_add_overflow(micro, frac, &micro))
		return -ERANGE;
	*out_micro_usd = micro;
	return 0;
}

void sl_keys_format_usd(int64_t micro_usd, char *buf, size_t buf_len)
{
	SL_ASSERT(micro_usd >= 0);
	snprintf(buf, buf_len, "%" PRId64 ".%06" PRId64, micro_usd / 1000000, micro_usd % 1000000);
}
