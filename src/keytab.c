/*
 * keytab.c - the gateway's immutable key table (see include/sluice/keytab.h).
 *
 * A table is built once by sl_keytab_load from a read-only open of the key
 * store (sl_keys_open_readonly) and never changes, so readers need no lock.
 * Three indexes, all open addressing with linear probing at a load factor of
 * at most 1/2, all holding an entry position + 1 (0 = empty):
 *   by hash  the first 8 bytes of the HMAC (uniform: no further mixing),
 *            kept in the index next to the position so that an unknown key
 *            costs one index cache line and no entry;
 *   by id    FNV-1a of the id (reload and the reconciler's save);
 *   by slot  a plain array, slot -> position (slots are dense: lowest free).
 * HMAC-SHA-256 with a 32-byte key is SHA256((K ^ opad) || SHA256((K ^ ipad)
 * || m)) with K zero-padded to the 64-byte block; the two states after the
 * first block are computed at load, so a lookup is two SHA256_Update +
 * SHA256_Final on stack copies, with no allocation and no shared write.
 */
#include "sluice/keytab.h"

#include <errno.h>
#include <string.h>

#include <openssl/mem.h>
#include <openssl/sha.h>

#define SHA256_BLOCK_LEN 64

_Static_assert(SL_KEYS_SECRET_LEN <= SHA256_BLOCK_LEN, "an HMAC key longer than a block is hashed first");
_Static_assert(SL_KEY_MODELS_LEN_MAX <= 255, "a model name's length must fit the length byte");

struct hash_slot {
	uint64_t tag;      /* first 8 bytes of the entry's hash */
	uint32_t pos_plus1; /* 0: empty */
};

struct sl_keytab {
	uint32_t num;
	uint32_t slots_max;
	struct sl_keytab_entry *entries;
	struct hash_slot *by_hash;
	uint32_t by_hash_mask;
	uint32_t *by_id;
	uint32_t by_id_mask;
	uint32_t *by_slot; /* num_by_slot entries */
	uint32_t num_by_slot;
	uint8_t *models; /* the model lists, length-prefixed names */
	bool has_secret; /* false: no store yet, every lookup fails */
	SHA256_CTX hmac_inner; /* after (K ^ ipad) */
	SHA256_CTX hmac_outer; /* after (K ^ opad) */
};

/* --- indexes ----------------------------------------------------------------------- */

static uint64_t id_hash(const char *id)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *id; id++)
		h = (h ^ (uint8_t)*id) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

static uint64_t hash_tag(const uint8_t hash[SL_KEY_HASH_LEN])
{
	uint64_t tag;
	memcpy(&tag, hash, sizeof(tag));
	return tag;
}

/* The index capacity for num entries: a power of two >= 2 * num, >= 16. */
static uint32_t index_cap(uint32_t num)
{
	uint32_t cap = 16;
	while (cap < 2 * (uint64_t)num)
		cap *= 2;
	return cap;
}

const struct sl_keytab_entry *sl_keytab_by_id(const struct sl_keytab *t, const char *id)
{
	for (uint32_t i = (uint32_t)id_hash(id) & t->by_id_mask;; i = (i + 1) & t->by_id_mask) {
		uint32_t pos = t->by_id[i];
		if (pos == 0)
			return NULL;
		if (strcmp(t->entries[pos - 1].id, id) == 0)
			return &t->entries[pos - 1];
	}
}

const struct sl_keytab_entry *sl_keytab_by_slot(const struct sl_keytab *t, uint32_t slot)
{
	if (slot >= t->num_by_slot || t->by_slot[slot] == 0)
		return NULL;
	return &t->entries[t->by_slot[slot] - 1];
}

uint32_t sl_keytab_num(const struct sl_keytab *t)
{
	return t->num;
}

const struct sl_keytab_entry *sl_keytab_at(const struct sl_keytab *t, uint32_t i)
{
	SL_ASSERT(i < t->num);
	return &t->entries[i];
}

/* --- the request path ---------------------------------------------------------------- */

/* HMAC-SHA-256(secret, key) from the precomputed states: stack copies only,
 * so any number of threads may run it on one table. */
static inline void keytab_hmac(const struct sl_keytab *t, const char *key, size_t key_len,
                               uint8_t out[SL_KEY_HASH_LEN])
{
	uint8_t inner[SHA256_DIGEST_LENGTH];
	SHA256_CTX ctx = t->hmac_inner;
	SHA256_Update(&ctx, key, key_len);
	SHA256_Final(inner, &ctx);
	ctx = t->hmac_outer;
	SHA256_Update(&ctx, inner, sizeof(inner));
	SHA256_Final(out, &ctx);
}

const struct sl_keytab_entry *sl_keytab_lookup(const struct sl_keytab *t, const char *key, size_t key_len)
{
	if (key_len == 0 || key_len > SL_KEY_TEXT_LEN_MAX || !t->has_secret)
		return NULL;
	uint8_t hash[SL_KEY_HASH_LEN];
	keytab_hmac(t, key, key_len, hash);
	uint64_t tag = hash_tag(hash);
	const struct sl_keytab_entry *found = NULL;
	/* At most 1/2 full, so an empty slot ends the probe; the bound is only a
	 * guard against a corrupted index. */
	for (uint32_t i = (uint32_t)tag & t->by_hash_mask, n = 0; n <= t->by_hash_mask;
	     i = (i + 1) & t->by_hash_mask, n++) {
		const struct hash_slot *s = &t->by_hash[i];
		if (s->pos_plus1 == 0)
			break;
		if (s->tag != tag)
			continue;
		const struct sl_keytab_entry *e = &t->entries[s->pos_plus1 - 1];
		if (CRYPTO_memcmp(e->hash, hash, SL_KEY_HASH_LEN) == 0) {
			found = e;
			break;
		}
	}
	return found;
}

bool sl_keytab_model_allowed(const struct sl_keytab_entry *e, const char *model, size_t model_len)
{
	if (e->num_models == 0)
		return true;
	const uint8_t *p = e->models;
	for (uint16_t i = 0; i < e->num_models; i++) {
		size_t len = p[0];
		if (len == model_len && memcmp(p + 1, model, len) == 0)
			return true;
		p += 1 + len;
	}
	return false;
}

/* --- load -------------------------------------------------------------------------------- */

void sl_keytab_free(struct sl_keytab *t)
{
	if (!t)
		return;
	OPENSSL_cleanse(&t->hmac_inner, sizeof(t->hmac_inner));
	OPENSSL_cleanse(&t->hmac_outer, sizeof(t->hmac_outer));
	free(t->entries);
	free(t->by_hash);
	free(t->by_id);
	free(t->by_slot);
	free(t->models);
	free(t);
}

static void hmac_precompute(struct sl_keytab *t, const uint8_t secret[SL_KEYS_SECRET_LEN])
{
	uint8_t block[SHA256_BLOCK_LEN];
	memset(block, 0x36, sizeof(block));
	for (int i = 0; i < SL_KEYS_SECRET_LEN; i++)
		block[i] ^= secret[i];
	SHA256_Init(&t->hmac_inner);
	SHA256_Update(&t->hmac_inner, block, sizeof(block));
	memset(block, 0x5c, sizeof(block));
	for (int i = 0; i < SL_KEYS_SECRET_LEN; i++)
		block[i] ^= secret[i];
	SHA256_Init(&t->hmac_outer);
	SHA256_Update(&t->hmac_outer, block, sizeof(block));
	OPENSSL_cleanse(block, sizeof(block));
}

/* Writes the comma-separated list (valid: checked by the store) as
 * length-prefixed names at out; returns the number of names. */
static uint16_t models_parse(const char *list, uint8_t *out, size_t *out_len)
{
	uint16_t num = 0;
	size_t len = 0;
	const char *p = list;
	while (*p) {
		const char *comma = strchr(p, ',');
		size_t name_len = comma ? (size_t)(comma - p) : strlen(p);
		SL_ASSERT(name_len > 0 && name_len <= 255);
		out[len] = (uint8_t)name_len;
		memcpy(out + len + 1, p, name_len);
		len += 1 + name_len;
		num++;
		p += name_len + (comma ? 1 : 0);
	}
	*out_len = len;
	return num;
}

/* Gives every entry a slot: its slot in prev if prev has its id, else the
 * lowest slot < slots_max taken by no id of prev nor of this table. */
static int assign_slots(struct sl_keytab *t, const struct sl_keytab *prev, char *err, size_t err_len)
{
	uint32_t words = (t->slots_max + 63) / 64;
	uint64_t *used = calloc(words ? words : 1, sizeof(*used));
	bool *kept = calloc(t->num ? t->num : 1, sizeof(*kept));
	int rc = 0;
	if (!used || !kept) {
		rc = -ENOMEM;
		snprintf(err, err_len, "key table: out of memory");
		goto out;
	}
	for (uint32_t i = 0; prev && i < prev->num; i++) {
		uint32_t slot = prev->entries[i].slot;
		if (slot < t->slots_max)
			used[slot / 64] |= 1ull << (slot % 64);
	}
	for (uint32_t i = 0; prev && i < t->num; i++) {
		const struct sl_keytab_entry *old = sl_keytab_by_id(prev, t->entries[i].id);
		if (!old)
			continue;
		if (old->slot >= t->slots_max) {
			rc = -ENOSPC;
			snprintf(err, err_len, "key %s has limiter slot %u, beyond the %u key slots",
			         old->id, old->slot, t->slots_max);
			goto out;
		}
		t->entries[i].slot = old->slot;
		kept[i] = true;
	}
	uint32_t word = 0;
	for (uint32_t i = 0; i < t->num; i++) {
		if (kept[i])
			continue;
		while (word < words && used[word] == UINT64_MAX)
			word++;
		uint32_t slot = word < words ? word * 64 + (uint32_t)__builtin_ctzll(~used[word]) : t->slots_max;
		if (slot >= t->slots_max) {
			rc = -ENOSPC;
			snprintf(err, err_len,
			         "%u keys (with those of the table being replaced) do not fit the %u key "
			         "slots (rate_limits.keys_max)",
			         t->num, t->slots_max);
			goto out;
		}
		used[slot / 64] |= 1ull << (slot % 64);
		t->entries[i].slot = slot;
	}
out:
	free(used);
	free(kept);
	return rc;
}

/* Builds the three indexes over t->entries. */
static int build_indexes(struct sl_keytab *t)
{
	uint32_t cap = index_cap(t->num), max_slot = 0;
	t->by_hash = calloc(cap, sizeof(*t->by_hash));
	t->by_id = calloc(cap, sizeof(*t->by_id));
	for (uint32_t i = 0; i < t->num; i++)
		max_slot = SL_MAX(max_slot, t->entries[i].slot);
	t->num_by_slot = t->num ? max_slot + 1 : 0;
	t->by_slot = calloc(t->num_by_slot ? t->num_by_slot : 1, sizeof(*t->by_slot));
	if (!t->by_hash || !t->by_id || !t->by_slot)
		return -ENOMEM;
	t->by_hash_mask = t->by_id_mask = cap - 1;
	for (uint32_t pos = 0; pos < t->num; pos++) {
		const struct sl_keytab_entry *e = &t->entries[pos];
		uint64_t tag = hash_tag(e->hash);
		uint32_t i = (uint32_t)tag & t->by_hash_mask;
		bool duplicate = false;
		for (; t->by_hash[i].pos_plus1; i = (i + 1) & t->by_hash_mask) {
			const struct sl_keytab_entry *other = &t->entries[t->by_hash[i].pos_plus1 - 1];
			if (t->by_hash[i].tag == tag && memcmp(other->hash, e->hash, SL_KEY_HASH_LEN) == 0)
				duplicate = true; /* the store refuses these; first one wins */
		}
		if (!duplicate)
			t->by_hash[i] = (struct hash_slot){ .tag = tag, .pos_plus1 = pos + 1 };

		for (i = (uint32_t)id_hash(e->id) & t->by_id_mask; t->by_id[i]; i = (i + 1) & t->by_id_mask)
			;
		t->by_id[i] = pos + 1;

		SL_ASSERT(e->slot < t->num_by_slot && t->by_slot[e->slot] == 0);
		t->by_slot[e->slot] = pos + 1;
	}
	return 0;
}

int sl_keytab_load(const char *data_dir, uint32_t slots_max, const struct sl_keytab *prev,
                   struct sl_keytab **out, struct sl_keys_load_report *out_report, char *err,
                   size_t err_len)
{
	char err_local[1];
	if (!err || err_len == 0) {
		err = err_local;
		err_len = sizeof(err_local);
	}
	err[0] = 0;
	struct sl_keystore ks;
	int rc = sl_keys_open_readonly(&ks, data_dir, out_report);
	if (rc < 0) {
		snprintf(err, err_len, "cannot read the key store in %s: %s", data_dir,
		         rc == -EBADMSG ? "the key snapshot or secret is corrupt" : strerror(-rc));
		return rc;
	}
	if (ks.num_keys > slots_max) {
		snprintf(err, err_len, "the key store in %s holds %u keys, more than the %u key slots "
		         "(rate_limits.keys_max)", data_dir, ks.num_keys, slots_max);
		sl_keys_close(&ks);
		return -ENOSPC;
	}
	struct sl_keytab *t = calloc(1, sizeof(*t));
	size_t models_len = 0;
	for (uint32_t i = 0; i < ks.num_keys; i++)
		models_len += strlen(ks.keys[i].models) + 1;
	if (t) {
		t->num = ks.num_keys;
		t->slots_max = slots_max;
		t->has_secret = ks.has_secret;
		t->entries = calloc(t->num ? t->num : 1, sizeof(*t->entries));
		t->models = malloc(models_len ? models_len : 1);
	}
	if (!t || !t->entries || !t->models) {
		rc = -ENOMEM;
		snprintf(err, err_len, "key table: out of memory");
		goto fail;
	}
	if (ks.has_secret)
		hmac_precompute(t, ks.secret);
	size_t models_off = 0;
	for (uint32_t i = 0; i < t->num; i++) {
		const struct sl_key *k = &ks.keys[i];
		struct sl_keytab_entry *e = &t->entries[i];
		memcpy(e->hash, k->hash, SL_KEY_HASH_LEN);
		e->status = k->status;
		e->balance_micro_usd = k->balance_micro_usd;
		e->created_unix_s = k->created_unix_s;
		memcpy(e->id, k->id, sizeof(e->id));
		memcpy(e->tier, k->tier, sizeof(e->tier));
		memcpy(e->parent, k->parent, sizeof(e->parent));
		memcpy(e->name, k->name, sizeof(e->name));
		size_t len;
		e->num_models = models_parse(k->models, t->models + models_off, &len);
		e->models = t->models + models_off;
		models_off += len;
	}
	SL_ASSERT(models_off <= models_len);
	if ((rc = assign_slots(t, prev, err, err_len)) < 0)
		goto fail;
	if ((rc = build_indexes(t)) < 0) {
		snprintf(err, err_len, "key table: out of memory");
		goto fail;
	}
	sl_keys_close(&ks);
	*out = t;
	return 0;
fail:
	sl_keys_close(&ks);
	sl_keytab_free(t);
	return rc;
}
