/*
 * keys.h - the API-key store: a data directory holding a per-install secret,
 * an append-only checksummed journal and a compacted snapshot.
 *
 * Files in the data directory:
 *   secret          32 bytes from RAND_bytes, mode 0600, created on first open;
 *   keys.snapshot   framed records, written temp + fsync + rename + dir fsync;
 *   keys.journal    framed records appended (and fsync'd) after the snapshot;
 *   lock            flock'd exclusively while a store is open for writing (one
 *                   writer, for the length of one CLI command), and shared
 *                   while a reader (the gateway, keytab.h) loads it.
 * A frame is [u32 payload length, LE][u32 CRC-32C of payload, LE][payload].
 * Every journal record carries the full state of one key after a change, so
 * replay is an idempotent upsert: a crash between the snapshot rename and the
 * journal truncation replays records the snapshot already holds, harmlessly.
 *
 * Keys are "sk-sluice-" + 32 base62 characters (190 bits from RAND_bytes),
 * shown once and stored only as HMAC-SHA-256(secret, key). Keys imported
 * from another gateway (sl_keys_import) are any 20..256 printable ASCII
 * characters without spaces, stored the same way.
 */
#ifndef SLUICE_KEYS_H
#define SLUICE_KEYS_H

#include "sluice/common.h"

#define SL_KEY_PREFIX "sk-sluice-"
#define SL_KEY_RANDOM_LEN 32
#define SL_KEY_TEXT_LEN (sizeof(SL_KEY_PREFIX) - 1 + SL_KEY_RANDOM_LEN)
/* Bounds of an imported key's text; no presented key longer than
 * SL_KEY_TEXT_LEN_MAX is ever hashed. */
#define SL_KEY_IMPORT_LEN_MIN 20
#define SL_KEY_TEXT_LEN_MAX 256
#define SL_KEY_ID_LEN 16 /* "key_" + 12 hex */
#define SL_KEY_NAME_LEN_MAX 63
#define SL_KEY_TIER_LEN_MAX 31
#define SL_KEY_MODELS_LEN_MAX 255
#define SL_KEY_HASH_LEN 32
#define SL_KEYS_SECRET_LEN 32
#define SL_KEYS_NUM_MAX 1000000
/* The journal is folded into a new snapshot once it holds this many records. */
#define SL_KEYS_COMPACT_RECORDS 1024

enum sl_key_status {
	SL_KEY_ACTIVE = 1,
	SL_KEY_REVOKED = 2,
};

struct sl_key {
	char id[SL_KEY_ID_LEN + 1];
	char name[SL_KEY_NAME_LEN_MAX + 1];
	char tier[SL_KEY_TIER_LEN_MAX + 1];
	char models[SL_KEY_MODELS_LEN_MAX + 1]; /* comma-separated; "": every model */
	char parent[SL_KEY_ID_LEN + 1];         /* "": no parent account */
	enum sl_key_status status;
	int64_t balance_micro_usd;
	int64_t created_unix_s;
	int64_t last_used_unix_s; /* 0: never */
	uint8_t hash[SL_KEY_HASH_LEN];
};

/* What sl_keys_open (or sl_keys_open_readonly, sl_keytab_load) found on
 * disk. */
struct sl_keys_load_report {
	uint32_t snapshot_records_num;
	uint32_t journal_records_num;
	/* Bytes cut from the journal's end: a torn or corrupt record and all
	 * that followed it. 0 when the journal was clean. A read-only load
	 * ignores these bytes instead of cutting them (the writer's next open
	 * cuts them). */
	uint64_t journal_cut_bytes;
	uint64_t journal_cut_offset;
	bool journal_crc_mismatch; /* the cut was a checksum failure, not a torn length */
};

struct sl_keystore {
	int dir_fd;
	int lock_fd;
	int journal_fd; /* -1: opened read-only, no change allowed */
	uint32_t journal_records_num;
	uint8_t secret[SL_KEYS_SECRET_LEN];
	bool has_secret; /* false: a read-only open of a store never written */
	struct sl_key *keys;
	uint32_t num_keys;
	uint32_t keys_cap;
	/* open addressing on the id: position in keys + 1, 0 = empty */
	uint32_t *id_index;
	uint32_t id_index_mask;
};

/* How long sl_keys_open waits for another process's lock before it gives up
 * with -EWOULDBLOCK. */
#define SL_KEYS_LOCK_WAIT_MS 10000

/* sl_keys_open opens (creating if needed) the store in data_dir: creates the
 * directory (0700) and the secret, takes an exclusive flock (waiting up to
 * SL_KEYS_LOCK_WAIT_MS while another process holds the lock, e.g. a gateway
 * reloading its key table; then -EWOULDBLOCK), loads the snapshot, replays
 * the journal and cuts a torn or corrupt tail (described in *out_report,
 * which may be NULL). Returns 0 or a negative errno; -EBADMSG when the
 * snapshot or the secret is corrupt. On failure *ks needs no sl_keys_close. */
int sl_keys_open(struct sl_keystore *ks, const char *data_dir, struct sl_keys_load_report *out_report);

/* sl_keys_open_readonly loads the store in data_dir without changing
 * anything: it takes a shared flock on the lock file (blocking: a writer
 * holds its exclusive lock for one command), reads the secret, the snapshot
 * and the journal, and releases the lock before returning. A torn or corrupt
 * journal tail is ignored and reported in *out_report (may be NULL), not
 * cut. A directory that does not exist, or has no secret yet, gives an empty
 * store with has_secret false. The result answers sl_keys_find and
 * sl_keys_lookup; changing it is a programmer error (asserted). Release it
 * with sl_keys_close. Returns 0 or a negative errno (-EBADMSG: corrupt
 * snapshot or secret); on failure *ks needs no sl_keys_close. */
int sl_keys_open_readonly(struct sl_keystore *ks, const char *data_dir,
                          struct sl_keys_load_report *out_report);

/* sl_keys_close releases the lock and memory and wipes the secret. */
void sl_keys_close(struct sl_keystore *ks);

/* sl_keys_create makes a new active key. models and parent may be NULL or "";
 * a non-empty parent must be an existing key id. Writes the key text (shown
 * once, NUL-terminated) to out_key and a copy of the record to out (may be
 * NULL). Returns 0, -EINVAL for a bad field, -ENOENT for an unknown parent,
 * or a negative errno from disk. */
int sl_keys_create(struct sl_keystore *ks, const char *name, const char *tier, const char *models,
                   const char *parent, char out_key[SL_KEY_TEXT_LEN + 1], struct sl_key *out);

/* sl_keys_import stores an existing key text (migrated from another
 * gateway) as a new active key, like sl_keys_create but with the caller's
 * key[0..key_len) instead of a random one. The text must be
 * SL_KEY_IMPORT_LEN_MIN..SL_KEY_TEXT_LEN_MAX printable ASCII characters
 * without spaces. Only its HMAC is stored. Writes a copy of the record to
 * out (may be NULL). Returns 0, -EINVAL for a bad field or key text,
 * -EEXIST when a key (of any status) already has this text, -ENOENT for an
 * unknown parent, or a negative errno from disk. */
int sl_keys_import(struct sl_keystore *ks, const char *key, size_t key_len, const char *name,
                   const char *tier, const char *models, const char *parent, struct sl_key *out);

/* sl_keys_create_many makes num new active keys named name (tier, models as
 * in sl_keys_create, no parent) and writes them with one compaction instead
 * of one fsync'd journal record each: for bulk provisioning and benchmarks.
 * Either every key is on disk when it returns 0, or none is (the in-memory
 * table is rolled back). out_keys receives num key texts of
 * SL_KEY_TEXT_LEN + 1 bytes each (NUL-terminated), out_ids (may be NULL) num
 * ids of SL_KEY_ID_LEN + 1 bytes each. Returns 0, -EINVAL, -ENOSPC (more
 * than SL_KEYS_NUM_MAX keys) or a negative errno. */
int sl_keys_create_many(struct sl_keystore *ks, uint32_t num, const char *name, const char *tier,
                        const char *models, char *out_keys, char *out_ids);

/* sl_keys_find returns the record with this id, or NULL. The pointer is valid
 * until the next change to the store. */
const struct sl_key *sl_keys_find(const struct sl_keystore *ks, const char *id);

/* sl_keys_lookup returns the record whose key is the presented text (any
 * status: the caller refuses revoked keys), or NULL. Hashes are compared in
 * constant time, against every record (the CLI's path; the gateway uses
 * keytab.h). An empty text or one longer than SL_KEY_TEXT_LEN_MAX: NULL. */
const struct sl_key *sl_keys_lookup(const struct sl_keystore *ks, const char *key, size_t key_len);

/* sl_keys_update changes the fields that are not NULL. Returns 0, -ENOENT,
 * -EINVAL, or a negative errno from disk. */
int sl_keys_update(struct sl_keystore *ks, const char *id, const char *name, const char *tier,
                   const char *models);

/* sl_keys_revoke marks a key revoked (idempotent). 0, -ENOENT or -errno. */
int sl_keys_revoke(struct sl_keystore *ks, const char *id);

/* sl_keys_topup adds amount_micro_usd (> 0) to a key's balance. Returns 0,
 * -ENOENT, -EINVAL (amount), -ERANGE (overflow) or -errno. */
int sl_keys_topup(struct sl_keystore *ks, const char *id, int64_t amount_micro_usd);

/* sl_keys_compact writes every record to a new snapshot (temp, fsync,
 * rename, directory fsync) and then truncates the journal. 0 or -errno. */
int sl_keys_compact(struct sl_keystore *ks);

/* sl_keys_parse_usd parses a non-negative decimal dollar amount ("5", "0.25",
 * "12.000001") into micro-dollars exactly. At most 6 fractional digits.
 * Returns 0, -EINVAL (syntax) or -ERANGE (too large). */
int sl_keys_parse_usd(const char *text, int64_t *out_micro_usd);

/* sl_keys_format_usd writes micro_usd as "D.DDDDDD" into buf. */
void sl_keys_format_usd(int64_t micro_usd, char *buf, size_t buf_len);

/* sl_keys_main is `sluice keys ...`; argv[0] is "keys". Exit status. */
int sl_keys_main(int argc, char **argv);

#endif
