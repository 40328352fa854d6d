/* libFuzzer driver for the router and the top-level "model" scan: never
 * crash, and a found model span must lie inside the input between quotes. */
#include "sluice/router.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	struct sl_route_match m;
	enum sl_route r = sl_router_match(s, size, &m);
	if (r != SL_ROUTE_NONE && r != SL_ROUTE_HEALTH)
		SL_ASSERT(m.suffix.ptr >= s && m.suffix.ptr + m.suffix.len <= s + size);
	size_t start, end;
	bool esc;
	if (sl_json_find_model(s, size, &start, &end, &esc) == 0) {
		SL_ASSERT(start >= 1 && start <= end && end < size);
		SL_ASSERT(s[start - 1] == '"' && s[end] == '"');
		char out[256];
		(void)sl_json_unescape_string(s + start, end - start, out, sizeof out);
	}
	return 0;
}
