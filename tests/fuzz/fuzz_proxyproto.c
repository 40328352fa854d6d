/* libFuzzer driver for the PROXY protocol parser: never crash or read past
 * the input; a header found is found again in its own bytes alone, and
 * every shorter prefix of it asks for more rather than failing. */
#include "sluice/common.h"
#include "sluice/proxyproto.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	/* the first byte picks the bound: from the smallest allowed to the largest */
	size_t max = SL_PROXYPROTO_BYTES_MIN + (size_t)data[0] * 257;
	const char *s = (const char *)data + 1;
	size_t len = size - 1;
	struct sl_proxyproto pp;
	ssize_t n = sl_proxyproto_parse(s, len, max, &pp);
	SL_ASSERT(n >= -1 && n <= (ssize_t)len && n <= (ssize_t)max);
	if (n > 0) {
		SL_ASSERT(pp.version == 1 || pp.version == 2);
		SL_ASSERT(!pp.has_address || pp.src.sin6_family == AF_INET ||
		          pp.src.sin6_family == AF_INET6);
		SL_ASSERT(sl_proxyproto_parse(s, (size_t)n, max, &pp) == n);
		for (size_t i = 0; i < (size_t)n; i++)
			SL_ASSERT(sl_proxyproto_parse(s, i, max, &pp) == 0);
	}
	return 0;
}
