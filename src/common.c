#include "sluice/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

void sl_assert_fail(const char *expr, const char *file, int line)
{
	fprintf(stderr, "sluice: assertion failed: %s (%s:%d)\n", expr, file, line);
	fflush(stderr);
	abort();
}

static uint32_t crc32c_table[256];
static bool crc32c_hw;

__attribute__((constructor)) static void crc32c_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc32c_table[i] = c;
	}
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc32c_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
/* SSE4.2's crc32 instruction computes CRC-32C, 8 bytes at a time: every
 * usage record is checksummed on the request path. Chosen at start-up, so
 * the build stays baseline x86-64. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t c, const uint8_t *p,
                                                                 size_t len)
{
	uint64_t c64 = c;
	for (; len >= 8; p += 8, len -= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c64 = __builtin_ia32_crc32di(c64, v);
	}
	c = (uint32_t)c64;
	for (; len; p++, len--)
		c = __builtin_ia32_crc32qi(c, *p);
	return c;
}
#endif

uint32_t sl_crc32c(const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t c = 0xFFFFFFFFu;
#if defined(__x86_64__)
	if (crc32c_hw)
		return crc32c_sse42(c, p, len) ^ 0xFFFFFFFFu;
#endif
	for (size_t i = 0; i < len; i++)
		c = crc32c_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}

void sl_format_pico_usd(int64_t pico, char *out, size_t len)
{
	/* by hand, not snprintf: the access log writes one per request */
	uint64_t m = pico < 0 ? -(uint64_t)pico : (uint64_t)pico;
	char text[40], digits[20];
	size_t n = 0, d = 0;
	if (pico < 0)
		text[n++] = '-';
	uint64_t whole = m / 1000000000000u, frac = m % 1000000000000u;
	do {
		digits[d++] = (char)('0' + whole % 10);
		whole /= 10;
	} while (whole);
	while (d)
		text[n++] = digits[--d];
	text[n++] = '.';
	char f[12];
	for (int i = 11; i >= 0; i--) {
		f[i] = (char)('0' + frac % 10);
		frac /= 10;
	}
	size_t fl = 12; /* at least six decimals: micro-dollars */
	while (fl > 6 && f[fl - 1] == '0')
		fl--;
	memcpy(text + n, f, fl);
	n += fl;
	if (len) {
		size_t c = n < len - 1 ? n : len - 1;
		memcpy(out, text, c);
		out[c] = '\0';
	}
}

static void put2(char *p, unsigned v)
{
	p[0] = (char)('0' + v / 10);
	p[1] = (char)('0' + v % 10);
}

void sl_civil_from_days(uint64_t days, unsigned *year, unsigned *month, unsigned *day)
{
	/* shift the year to start in March (the leap day is then the last day
	 * of a year) and count 400-year eras of 146097 days */
	uint64_t z = days + 719468; /* days since 0000-03-01 */
	uint64_t era = z / 146097;
	unsigned day_of_era = (unsigned)(z - era * 146097);
	unsigned year_of_era =
	    (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
	unsigned day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
	unsigned month_from_march = (5 * day_of_year + 2) / 153;
	*day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
	*month = month_from_march < 10 ? month_from_march + 3 : month_from_march - 9;
	*year = (unsigned)(era * 400 + year_of_era) + (*month <= 2);
}

/* Every rate-limited response carries two of these, so no gmtime_r and
 * strftime. Years past 9999 are clamped. */
void sl_format_rfc3339(uint64_t unix_ms, char out[21])
{
	uint64_t t = unix_ms / 1000 + (unix_ms % 1000 != 0); /* rounded up, like Retry-After */
	if (t > UINT64_C(253402300799))
		t = UINT64_C(253402300799); /* 9999-12-31T23:59:59Z */
	unsigned sec_of_day = (unsigned)(t % 86400);
	unsigned year, month, day;
	sl_civil_from_days(t / 86400, &year, &month, &day);
	put2(out, year / 100);
	put2(out + 2, year % 100);
	out[4] = '-';
	put2(out + 5, month);
	out[7] = '-';
	put2(out + 8, day);
	out[10] = 'T';
	put2(out + 11, sec_of_day / 3600);
	out[13] = ':';
	put2(out + 14, sec_of_day / 60 % 60);
	out[16] = ':';
	put2(out + 17, sec_of_day % 60);
	out[19] = 'Z';
	out[20] = '\0';
}

int sl_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int sl_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

int sl_read_file_at(int dir_fd, const char *name, size_t max, uint8_t **out, size_t *out_len)
{
	int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	if (max && (uint64_t)st.st_size > max) {
		close(fd);
		return -EFBIG;
	}
	size_t cap = (size_t)st.st_size, len = 0;
	uint8_t *buf = malloc(cap + 1);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (len < cap) {
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int rc = -errno;
			free(buf);
			close(fd);
			return rc;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	*out = buf;
	*out_len = len;
	return 0;
}
