/*
 * common.h - the few definitions every sluice module shares: assertions,
 * parser return codes, branch hints and small helpers.
 *
 * Return conventions (STYLE.md habit 3):
 *   - syscall-like functions return 0 or a negative errno;
 *   - parsers return the number of bytes consumed, or SL_INCOMPLETE (more
 *     input needed) or SL_ERROR (input rejected; details in an out struct).
 */
#ifndef SLUICE_COMMON_H
#define SLUICE_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

#define SLUICE_VERSION "0.1.0"

#define SL_ERROR (-1)
#define SL_INCOMPLETE (-2)

#define SL_LIKELY(x) __builtin_expect(!!(x), 1)
#define SL_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define SL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SL_MAX(a, b) ((a) > (b) ? (a) : (b))
#define SL_UNUSED __attribute__((unused))
#define SL_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Called by a failed assertion: prints where and aborts. Never returns. */
__attribute__((noreturn, cold)) void sl_assert_fail(const char *expr, const char *file, int line);

/* SL_ASSERT stays on in every build: state-machine and pool invariants.
 * SL_ASSERT_HOT is for inner loops and is compiled out unless SL_DEBUG. */
#define SL_ASSERT(e) ((SL_LIKELY(e)) ? (void)0 : sl_assert_fail(#e, __FILE__, __LINE__))
#ifdef SL_DEBUG
#define SL_ASSERT_HOT(e) SL_ASSERT(e)
#else
#define SL_ASSERT_HOT(e) ((void)0)
#endif

/* A borrowed byte range; never owns memory. */
struct sl_str {
	const char *ptr;
	size_t len;
};
#define SL_STR(lit) ((struct sl_str){ (lit), sizeof(lit) - 1 })

/* Case-insensitive ASCII comparison of a[0..len) with the NUL-free literal b
 * of the same length. Returns true when equal. */
static inline bool sl_ascii_ieq(const char *a, const char *b, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
		if (x - 'A' < 26u)
			x |= 0x20;
		if (y - 'A' < 26u)
			y |= 0x20;
		if (x != y)
			return false;
	}
	return true;
}

/* sl_crc32c is CRC-32C (Castagnoli) of data[0..len): the checksum of the
 * key journal's and limits.state's frames. Thread-safe (the table is built
 * before main). */
uint32_t sl_crc32c(const void *data, size_t len);

/* sl_format_rfc3339 writes unix_ms as "2026-11-22T10:31:00Z" (seconds
 * precision, rounded up so a reset is never early) into out[21]. */
void sl_format_rfc3339(uint64_t unix_ms, char out[21]);

/* Money. Prices are integer micro-dollars per 1M tokens, so a token count
 * times a price is an exact number of pico-dollars (1e-12 $): costs,
 * balances and budgets are kept in pico-dollars, with no rounding anywhere.
 * int64 holds +-9.2M dollars. */
#define SL_PICO_PER_MICRO INT64_C(1000000)

/* sl_format_pico_usd writes dollars, exactly: "0.000003", "1.500000000025",
 * "-2.000000" (6 to 12 decimals). out: 32 bytes are enough. */
void sl_format_pico_usd(int64_t pico, char *out, size_t len);

/* sl_civil_from_days: the proleptic Gregorian date of a count of days since
 * 1970-01-01. */
void sl_civil_from_days(uint64_t days, unsigned *year, unsigned *month, unsigned *day);

/* Little-endian 32-bit fields of on-disk frames. */
static inline void sl_put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static inline uint32_t sl_get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void sl_put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline uint16_t sl_get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline void sl_put_le64(uint8_t *p, uint64_t v)
{
	sl_put_le32(p, (uint32_t)v);
	sl_put_le32(p + 4, (uint32_t)(v >> 32));
}

static inline uint64_t sl_get_le64(const uint8_t *p)
{
	return (uint64_t)sl_get_le32(p) | (uint64_t)sl_get_le32(p + 4) << 32;
}

/* sl_write_all / sl_pwrite_all: all of buf, retrying short writes and EINTR
 * (the synchronous file paths: the key journal, the state files, the usage
 * log's fallbacks). 0 or -errno. */
int sl_write_all(int fd, const void *buf, size_t len);
int sl_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

/* sl_read_file_at reads the whole file dir_fd/name (AT_FDCWD: name as a
 * path) into a malloc'd buffer (one spare byte past *out_len). max: the
 * largest size accepted (-EFBIG beyond; 0: any). 0 or -errno (-ENOENT if
 * absent). */
int sl_read_file_at(int dir_fd, const char *name, size_t max, uint8_t **out, size_t *out_len);

#endif
