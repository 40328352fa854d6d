#include "sluice/common.h"

void sl_assert_fail(const char *expr, const char *file, int line)
{
	fprintf(stderr, "sluice: assertion failed: %s (%s:%d)\n", expr, file, line);
	fflush(stderr);
	abort();
}

static uint32_t crc32c_table[256];

__attribute__((constructor)) static void crc32c_table_build(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc32c_table[i] = c;
	}
}

uint32_t sl_crc32c(const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t c = 0xFFFFFFFFu;
	for (size_t i = 0; i < len; i++)
		c = crc32c_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}
