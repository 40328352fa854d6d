/*
 * libFuzzer driver for the token-usage scanner (usage.h).
 *
 * The input is a response body. On any input:
 *   - feeding it cut at offsets chosen by the first byte (two cuts: one in
 *     the first 256 bytes, one scaled over the whole input) gives the same
 *     usage as feeding it whole; this is the oracle the scanner's contract
 *     states ("the result does not depend on how the body is cut");
 *   - so does feeding it byte by byte (inputs up to 4 KiB, to stay fast);
 *   - the usage equals that of a naive reference written straight from the
 *     definition in usage.h, with no fast path, no memchr and no state kept
 *     between pieces (it sees the whole input at once);
 *   - sl_usage_total_tokens never exceeds SL_USAGE_TOKENS_MAX.
 * Every piece is fed from an exact-size heap copy so ASan catches a read
 * past the bytes handed over.
 */
#include "sluice/usage.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(e) SL_ASSERT(e)

static void feed_copy(struct sl_usage_scanner *s, const uint8_t *p, size_t len, struct sl_token_usage *u)
{
	char *copy = malloc(len ? len : 1);
	CHECK(copy != NULL);
	memcpy(copy, p, len);
	sl_usage_scanner_feed(s, len ? copy : NULL, len, u);
	free(copy);
}

static bool usage_eq(const struct sl_token_usage *a, const struct sl_token_usage *b)
{
	return a->input_tokens == b->input_tokens && a->output_tokens == b->output_tokens &&
	       a->cache_read_tokens == b->cache_read_tokens &&
	       a->cache_write_tokens == b->cache_write_tokens &&
	       a->cache_write_1h_tokens == b->cache_write_1h_tokens && a->fields_seen == b->fields_seen;
}

/* ---- the reference: the definition, read off the whole input ------------- */

static const struct {
	const char *name;
	uint32_t field;
} ref_names[] = {
	{ "prompt_tokens", SL_USAGE_INPUT },
	{ "input_tokens", SL_USAGE_INPUT },
	{ "completion_tokens", SL_USAGE_OUTPUT },
	{ "output_tokens", SL_USAGE_OUTPUT },
	{ "cached_tokens", SL_USAGE_CACHE_READ },
	{ "cache_read_input_tokens", SL_USAGE_CACHE_READ },
	{ "cache_creation_input_tokens", SL_USAGE_CACHE_WRITE },
	{ "ephemeral_1h_input_tokens", SL_USAGE_CACHE_WRITE_1H },
};

static bool ref_space(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* reference_scan: left to right, at each quote not preceded by an odd run
 * of backslashes, try `name"` ws* ':' ws* digits. A failed name resumes
 * right after its opening quote; a name that matched but is not followed by
 * a count resumes at the byte that broke it. */
static struct sl_token_usage reference_scan(const uint8_t *d, size_t n)
{
	struct sl_token_usage u = { 0 };
	size_t i = 0;
	while (i < n) {
		if (d[i] != '"') {
			i++;
			continue;
		}
		size_t run = 0;
		while (run < i && d[i - 1 - run] == '\\')
			run++;
		if (run % 2) {
			i++;
			continue;
		}
		int key = -1;
		size_t after = 0;
		for (size_t k = 0; k < SL_ARRAY_LEN(ref_names); k++) {
			size_t len = strlen(ref_names[k].name);
			if (i + 1 + len < n && memcmp(d + i + 1, ref_names[k].name, len) == 0 &&
			    d[i + 1 + len] == '"') {
				key = (int)k;
				after = i + 2 + len;
			}
		}
		if (key < 0) {
			i++;
			continue;
		}
		i = after;
		while (i < n && ref_space(d[i]))
			i++;
		if (i >= n || d[i] != ':')
			continue;
		i++;
		while (i < n && ref_space(d[i]))
			i++;
		if (i >= n || d[i] < '0' || d[i] > '9')
			continue;
		uint64_t v = 0;
		for (; i < n && d[i] >= '0' && d[i] <= '9'; i++) {
			/* Saturating, in the simplest form: once over the cap, stay. */
			unsigned digit = (unsigned)(d[i] - '0');
			if (v > SL_USAGE_TOKENS_MAX / 10 || v * 10 > SL_USAGE_TOKENS_MAX - digit)
				v = SL_USAGE_TOKENS_MAX;
			else
				v = v * 10 + digit;
		}
		uint32_t field = ref_names[key].field;
		u.fields_seen |= field;
		if (key == 4)
			u.fields_seen |= SL_USAGE_CACHE_READ_IN_INPUT;
		if (key == 5)
			u.fields_seen &= ~SL_USAGE_CACHE_READ_IN_INPUT;
		if (field == SL_USAGE_INPUT)
			u.input_tokens = v;
		else if (field == SL_USAGE_OUTPUT)
			u.output_tokens = v;
		else if (field == SL_USAGE_CACHE_READ)
			u.cache_read_tokens = v;
		else if (field == SL_USAGE_CACHE_WRITE_1H)
			u.cache_write_1h_tokens = v;
		else
			u.cache_write_tokens = v;
	}
	return u;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sl_usage_scanner s;

	struct sl_token_usage whole = { 0 };
	sl_usage_scanner_init(&s);
	feed_copy(&s, data, size, &whole);

	/* Three pieces, cut where the first byte says. */
	size_t cut1 = 0, cut2 = 0;
	if (size > 0) {
		cut1 = data[0] % (size + 1);
		cut2 = size * data[0] / 255;
	}
	size_t lo = SL_MIN(cut1, cut2), hi = SL_MAX(cut1, cut2);
	struct sl_token_usage pieces = { 0 };
	sl_usage_scanner_init(&s);
	feed_copy(&s, data, lo, &pieces);
	feed_copy(&s, data + lo, hi - lo, &pieces);
	feed_copy(&s, data + hi, size - hi, &pieces);
	if (!usage_eq(&whole, &pieces)) {
		fprintf(stderr, "cut at %zu and %zu differs from whole\n", lo, hi);
		abort();
	}

	if (size <= 4096) {
		struct sl_token_usage bytes = { 0 };
		sl_usage_scanner_init(&s);
		for (size_t i = 0; i < size; i++)
			sl_usage_scanner_feed(&s, (const char *)data + i, 1, &bytes);
		if (!usage_eq(&whole, &bytes)) {
			fprintf(stderr, "byte by byte differs from whole\n");
			abort();
		}
	}

	struct sl_token_usage ref = reference_scan(data, size);
	if (!usage_eq(&whole, &ref)) {
		fprintf(stderr,
		        "differs from the reference: in %llu/%llu out %llu/%llu cread %llu/%llu "
		        "cwrite %llu/%llu bits %x/%x\n",
		        (unsigned long long)whole.input_tokens, (unsigned long long)ref.input_tokens,
		        (unsigned long long)whole.output_tokens, (unsigned long long)ref.output_tokens,
		        (unsigned long long)whole.cache_read_tokens,
		        (unsigned long long)ref.cache_read_tokens,
		        (unsigned long long)whole.cache_write_tokens,
		        (unsigned long long)ref.cache_write_tokens, whole.fields_seen, ref.fields_seen);
		abort();
	}

	CHECK(sl_usage_total_tokens(&whole) <= SL_USAGE_TOKENS_MAX);
	return 0;
}
