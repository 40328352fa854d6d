/*
 * keytab.h - the gateway's key table: an immutable snapshot of the key
 * store (keys.h), built once per (re)load and read by every reactor at the
 * same time without a lock.
 *
 * The key store is the CLI's single-writer store. The gateway never writes
 * it: sl_keytab_load takes the store's lock shared for the length of one
 * read, builds a table, and releases the lock. On SIGHUP the gateway loads a
 * new table (passing the current one as prev, so every key keeps its
 * limiter slot), publishes it, and frees the old one once no reader can
 * still hold it (gate.h). Nothing in a table changes after load, so any
 * number of threads may call every function below on the same table.
 *
 * The request path, sl_keytab_lookup, neither allocates nor locks: it
 * computes HMAC-SHA-256(secret, key) from SHA-256 states precomputed at load,
 * probes an open-addressing index on the hash's first 8 bytes, and compares
 * the whole hash in constant time.
 */
#ifndef SLUICE_KEYTAB_H
#define SLUICE_KEYTAB_H

#include "sluice/common.h"
#include "sluice/keys.h"

struct sl_keytab;

/* One key as the gateway sees it. hash first: the lookup compares it, and
 * slot and status (read right after a match) share its cache line. */
struct sl_keytab_entry {
	uint8_t hash[SL_KEY_HASH_LEN]; /* HMAC-SHA-256(secret, key text) */
	/* The key's limiter slot, < the table's slots_max. Stable across
	 * reloads for as long as the key is in the store, and never given to
	 * another key while a table that had this key may still be read (see
	 * sl_keytab_load). */
	uint32_t slot;
	enum sl_key_status status;
	/* The key's own model list, parsed once at load: num_models names, each
	 * stored as one length byte and that many bytes, back to back from
	 * models (owned by the table). num_models 0: every model. Ask
	 * sl_keytab_model_allowed rather than walking it. */
	uint16_t num_models;
	const uint8_t *models;
	int64_t balance_micro_usd;
	int64_t created_unix_s;
	char id[SL_KEY_ID_LEN + 1];
	char tier[SL_KEY_TIER_LEN_MAX + 1];
	char parent[SL_KEY_ID_LEN + 1]; /* "": no parent account */
	char name[SL_KEY_NAME_LEN_MAX + 1];
};

/* sl_keytab_load loads the key store in data_dir read-only and builds a
 * table in *out. It takes a SHARED flock on the store's lock file (blocking:
 * the CLI holds its exclusive lock only for one command), reads the secret,
 * the snapshot and the journal, and releases the lock before building. A
 * torn or corrupt journal tail is ignored, not cut (the gateway never writes
 * the store; the CLI's next command cuts it), and reported in *out_report
 * (may be NULL) as journal_cut_offset / journal_cut_bytes. A data directory
 * that does not exist, or has no secret yet, gives an empty table (every
 * key unknown) and returns 0.
 *
 * Slots: every key gets a slot < slots_max. prev (may be NULL) is the table
 * being replaced: a key id present in prev keeps its slot; each new id gets
 * the lowest slot used by no id of prev nor of the new table. So a slot is
 * never reused for another key while prev may still be read; the caller
 * must free (stop reading) the table before prev before it loads the table
 * after this one. More keys than free slots: -ENOSPC.
 *
 * Must not be called from a reactor: it blocks on the lock and reads files.
 * Returns 0, or a negative errno with a one-line message in err (err_len
 * may be 0): -EBADMSG for a corrupt snapshot or secret, -ENOSPC, -ENOMEM,
 * or an errno from the file system. On failure *out is untouched. */
int sl_keytab_load(const char *data_dir, uint32_t slots_max, const struct sl_keytab *prev,
                   struct sl_keytab **out, struct sl_keys_load_report *out_report, char *err,
                   size_t err_len);

/* sl_keytab_free wipes the table's copy of the store secret and releases
 * it. NULL is a no-op. No thread may read the table any more. */
void sl_keytab_free(struct sl_keytab *t);

/* sl_keytab_lookup finds the key whose text is key[0..key_len) (no NUL
 * needed): HMAC-SHA-256 with the store secret, computed without malloc and
 * without shared state (the precomputed inner and outer SHA-256 states are
 * copied to the stack), an index probe on the first 8 bytes of the hash,
 * then a constant-time compare (CRYPTO_memcmp) of all 32 bytes. The probe's
 * time depends only on the keyed hash, which an attacker cannot predict
 * without the secret. Returns the entry whatever its status (the caller
 * refuses revoked keys) or NULL. An empty key, or one longer than
 * SL_KEY_TEXT_LEN_MAX bytes, gives NULL without hashing. */
const struct sl_keytab_entry *sl_keytab_lookup(const struct sl_keytab *t, const char *key, size_t key_len);

/* sl_keytab_model_allowed: may the key e use model[0..model_len)? True when
 * the key has no model list, else when one entry of the list is exactly
 * (case-sensitively) the model. The tier's own list is the caller's
 * business. */
bool sl_keytab_model_allowed(const struct sl_keytab_entry *e, const char *model, size_t model_len);

/* sl_keytab_num returns the number of entries (every status). */
uint32_t sl_keytab_num(const struct sl_keytab *t);

/* sl_keytab_at returns entry i, i < sl_keytab_num(t) (asserted), in store
 * order. */
const struct sl_keytab_entry *sl_keytab_at(const struct sl_keytab *t, uint32_t i);

/* sl_keytab_by_slot returns the entry holding slot, or NULL if none does
 * (any slot value is accepted). */
const struct sl_keytab_entry *sl_keytab_by_slot(const struct sl_keytab *t, uint32_t slot);

/* sl_keytab_by_id returns the entry with this NUL-terminated id, or NULL. */
const struct sl_keytab_entry *sl_keytab_by_id(const struct sl_keytab *t, const char *id);

#endif
