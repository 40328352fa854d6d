/*
 * ipblock.h - failed-authentication counting per client address, shared by
 * every reactor, and blocking of an address that fails too often in a row.
 *
 * A fixed-capacity, lock-free open-addressing table (linear probing, at
 * most SL_IPBLOCK_PROBE_MAX entries per address) allocated at create and
 * never resized. Addresses are 16 bytes: IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d), so an AF_INET peer and the same peer seen through a
 * dual-stack AF_INET6 socket are one address. Every function is callable
 * from any thread at any time (except create/free).
 *
 * An entry counts an address's consecutive failures. The failure that
 * brings the count to the threshold blocks the address for block_ms and
 * resets the count; a success resets it (and frees the entry) unless the
 * address is blocked. Failures during a block are not counted and do not
 * extend it. An entry is reusable once its address is neither blocked nor
 * has failed within block_ms.
 *
 * Precision. Counting is exact: the count and the entry's generation share
 * one 64-bit word updated by compare-and-swap, so no increment is lost and
 * an increment never lands on an entry re-used for another address. Two
 * bounded imprecisions remain, both towards leniency (fail-open):
 *   - table full: when no entry in an address's probe window can be claimed
 *     (all held by addresses failing or blocked within block_ms) its
 *     failures are not counted (stat untracked_failures);
 *   - two first failures of one address racing with the release of another
 *     entry in the same window can, rarely, give the address two entries;
 *     the later one is dropped when noticed, but failures counted in it
 *     before are lost: a block then comes after at most 2 * threshold - 1
 *     failures instead of threshold.
 * Between the CAS that blocks an address and the store of its block end, a
 * concurrent check may still let a request through (nanoseconds).
 */
#ifndef SLUICE_IPBLOCK_H
#define SLUICE_IPBLOCK_H

#include "sluice/common.h"

#include <sys/socket.h>

/* Entries probed per address, at most: a lookup reads at most this many
 * consecutive 32-byte entries. */
#define SL_IPBLOCK_PROBE_MAX 16
#define SL_IPBLOCK_THRESHOLD_DEFAULT 50
#define SL_IPBLOCK_BLOCK_MS_DEFAULT 300000
#define SL_IPBLOCK_CAPACITY_MAX (1u << 24)

struct sl_ipblock;

struct sl_ipblock_stats {
	uint32_t capacity;
	uint32_t entries_live;        /* addresses tracked now (some may be stale) */
	uint64_t blocks;              /* addresses blocked so far */
	uint64_t untracked_failures;  /* failures not counted: no entry could be claimed */
};

/* sl_ipblock_create allocates a table of capacity entries (rounded up to a
 * power of two, at least SL_IPBLOCK_PROBE_MAX, at most
 * SL_IPBLOCK_CAPACITY_MAX; 0 gives 65536), blocking an address for block_ms
 * after threshold failed authentications in a row. threshold 0 disables
 * the table: nothing is counted and nothing is ever blocked. block_ms 0
 * gives SL_IPBLOCK_BLOCK_MS_DEFAULT. Returns NULL when out of memory. */
struct sl_ipblock *sl_ipblock_create(uint32_t capacity, uint32_t threshold, uint32_t block_ms);

/* sl_ipblock_free releases the table; NULL is a no-op. No thread may use it
 * any more. */
void sl_ipblock_free(struct sl_ipblock *b);

/* sl_ipblock_is_blocked: is addr blocked at now_ms? When it is, the time
 * left (>= 1) goes to *out_retry_after_ms (may be NULL). It runs on every
 * request: with no address tracked it is one relaxed atomic load; otherwise
 * a keyed hash and a read of at most SL_IPBLOCK_PROBE_MAX entries, with no
 * write. An address family other than AF_INET / AF_INET6 is never blocked.
 * now_ms is any monotonic millisecond clock, the same for every call. */
bool sl_ipblock_is_blocked(struct sl_ipblock *b, const struct sockaddr *addr, uint64_t now_ms,
                           uint64_t *out_retry_after_ms);

/* sl_ipblock_fail counts a failed authentication from addr at now_ms. The
 * failure that reaches the threshold blocks addr until now_ms + block_ms
 * and makes this call return true (exactly one call per block); otherwise
 * false, also when the failure was not counted (table disabled, address
 * blocked already, other family, no entry free: see the header comment). */
bool sl_ipblock_fail(struct sl_ipblock *b, const struct sockaddr *addr, uint64_t now_ms);

/* sl_ipblock_success records a successful authentication from addr: its
 * count goes back to 0 and its entry is freed, unless it is blocked (a
 * block runs its course). Writes only when addr has an entry; with none
 * tracked at all it is one relaxed atomic load. */
void sl_ipblock_success(struct sl_ipblock *b, const struct sockaddr *addr, uint64_t now_ms);

/* sl_ipblock_active: does the table track any address at all? When false,
 * is_blocked and success would do nothing, so the caller may skip fetching
 * the peer address (getpeername). One relaxed atomic load. */
bool sl_ipblock_active(const struct sl_ipblock *b);

/* sl_ipblock_sweep frees up to max_entries stale entries (neither blocked
 * nor failed within block_ms), continuing where the previous sweep stopped,
 * and returns how many it freed. Stale entries cost nothing but their room
 * and keep sl_ipblock_active true; call it now and then from one
 * housekeeping thread (e.g. capacity / 16 entries every second) so the
 * empty-table fast path comes back once the failures stop. */
uint32_t sl_ipblock_sweep(struct sl_ipblock *b, uint64_t now_ms, uint32_t max_entries);

/* sl_ipblock_get_stats fills *out (relaxed reads: a consistent picture only
 * when the table is quiet). */
void sl_ipblock_get_stats(const struct sl_ipblock *b, struct sl_ipblock_stats *out);

#endif
