/*
 * usage.c - the token-usage scanner (see usage.h).
 *
 * The scanner is a tokeniser over raw bytes with five states:
 *
 *   SCAN         between keys: find_quote for the next '"'; a quote preceded by
 *                an odd run of backslashes is escaped and skipped;
 *   KEY          after an unescaped quote, reading a name byte by byte;
 *   AFTER_KEY    after `"name"`: whitespace, then ':';
 *   AFTER_COLON  whitespace, then the first digit;
 *   NUMBER       digits, accumulated and stored into the field as they come.
 *
 * Any byte a state does not expect sends the scanner back to SCAN, which
 * reads that same byte again (a failed key may be followed at once by a
 * quote that opens the next one). After a failed name SCAN resumes right
 * after the opening quote; the bytes a failed name consumed are a prefix of
 * some name, so they hold no quote and no backslash and nothing is missed.
 *
 * Speed: text without quotes costs one find_quote. At a quote with at least
 * NAME_LEN_MAX + 1 bytes left in the piece, match_name_whole decides with
 * one switch on the first byte and a fixed-length memcmp, with no state
 * kept; only a name that straddles the end of a piece goes through KEY, one
 * byte per call, narrowing a bitmask of the names it can still be. Both
 * paths accept exactly names[]; the split tests and the fuzzer hold them to
 * it.
 *
 * Escapes: whether a quote is escaped depends on the backslashes right
 * before it, which may lie in earlier pieces. quote_escaped counts back
 * within the piece and, when the run reaches the piece's start, adds the
 * parity the previous pieces ended with (backslash_odd, updated at the end
 * of every feed). Each backslash is counted at most once, by the quote that
 * ends its run, so the look-back costs O(n) over a body.
 */
#include "sluice/usage.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

enum scan_state {
	ST_SCAN = 0, /* a zeroed scanner is ready */
	ST_KEY,
	ST_AFTER_KEY,
	ST_AFTER_COLON,
	ST_NUMBER,
};

enum name_index {
	NAME_PROMPT_TOKENS = 0,
	NAME_INPUT_TOKENS,
	NAME_COMPLETION_TOKENS,
	NAME_OUTPUT_TOKENS,
	NAME_CACHED_TOKENS,
	NAME_CACHE_READ_INPUT_TOKENS,
	NAME_CACHE_CREATION_INPUT_TOKENS,
	NAME_EPHEMERAL_1H_INPUT_TOKENS,
	NUM_NAMES,
};

struct name {
	const char *str;
	uint8_t len;
	uint8_t field; /* SL_USAGE_INPUT, ... */
};

#define NAME(s, f) { (s), sizeof(s) - 1, (f) }
static const struct name names[NUM_NAMES] = {
	[NAME_PROMPT_TOKENS] = NAME("prompt_tokens", SL_USAGE_INPUT),
	[NAME_INPUT_TOKENS] = NAME("input_tokens", SL_USAGE_INPUT),
	[NAME_COMPLETION_TOKENS] = NAME("completion_tokens", SL_USAGE_OUTPUT),
	[NAME_OUTPUT_TOKENS] = NAME("output_tokens", SL_USAGE_OUTPUT),
	[NAME_CACHED_TOKENS] = NAME("cached_tokens", SL_USAGE_CACHE_READ),
	[NAME_CACHE_READ_INPUT_TOKENS] = NAME("cache_read_input_tokens", SL_USAGE_CACHE_READ),
	[NAME_CACHE_CREATION_INPUT_TOKENS] = NAME("cache_creation_input_tokens", SL_USAGE_CACHE_WRITE),
	[NAME_EPHEMERAL_1H_INPUT_TOKENS] = NAME("ephemeral_1h_input_tokens", SL_USAGE_CACHE_WRITE_1H),
};
#undef NAME

#define NAME_LEN_MAX 27 /* "cache_creation_input_tokens" */
#define NAMES_ALL ((uint8_t)((1u << NUM_NAMES) - 1))
#define FAST_SCAN_MIN 64 /* shorter pieces go quote by quote */

_Static_assert(NUM_NAMES <= 8, "key_mask holds one bit per name");
_Static_assert(NAME_LEN_MAX < 256, "key_pos is a uint8_t");
_Static_assert(sizeof(struct sl_usage_scanner) <= 64, "the scanner stays small");

void sl_usage_scanner_init(struct sl_usage_scanner *s)
{
	memset(s, 0, sizeof(*s));
	s->state = ST_SCAN;
}

static inline bool is_json_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline bool is_digit(unsigned char c)
{
	return (unsigned)(c - '0') < 10u;
}

/* quote_escaped: is the quote at q, inside the piece starting at start,
 * preceded by an odd run of backslashes (counting those that ended the
 * earlier pieces, whose parity is carry_odd)? */
static inline bool quote_escaped(const char *start, const char *q, bool carry_odd)
{
	size_t run = 0;
	while (q > start && q[-1] == '\\') {
		q--;
		run++;
	}
	if (q == start)
		run += carry_odd;
	return (run & 1) != 0;
}

/* find_quote: the first '"' in [p, end), or NULL. Inline and 16 bytes at a
 * time: a response has a quote every dozen bytes or so, and a libc memchr
 * call per quote cost more than the scanner itself. */
static inline const char *find_quote(const char *p, const char *end)
{
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"');
	for (; end - p >= 16; p += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote));
		if (m)
			return p + __builtin_ctz(m);
	}
#endif
	for (; p < end; p++)
		if (*p == '"')
			return p;
	return NULL;
}

/* match_name_whole: which name s starts with, followed by its closing quote,
 * or -1. s must have at least NAME_LEN_MAX + 1 readable bytes. Accepts
 * exactly the names[] table (test_usage checks the two agree). */
static inline int match_name_whole(const char *s)
{
#define IS(lit) (memcmp(s, lit "\"", sizeof(lit)) == 0)
	switch (s[0]) {
	case 'p':
		return IS("prompt_tokens") ? NAME_PROMPT_TOKENS : -1;
	case 'i':
		return IS("input_tokens") ? NAME_INPUT_TOKENS : -1;
	case 'o':
		return IS("output_tokens") ? NAME_OUTPUT_TOKENS : -1;
	case 'e':
		return IS("ephemeral_1h_input_tokens") ? NAME_EPHEMERAL_1H_INPUT_TOKENS : -1;
	case 'c':
		if (s[1] == 'o')
			return IS("completion_tokens") ? NAME_COMPLETION_TOKENS : -1;
		if (memcmp(s, "cache", 5) != 0)
			return -1;
		switch (s[5]) {
		case 'd':
			return IS("cached_tokens") ? NAME_CACHED_TOKENS : -1;
		case '_':
			if (s[6] == 'r')
				return IS("cache_read_input_tokens") ? NAME_CACHE_READ_INPUT_TOKENS : -1;
			return IS("cache_creation_input_tokens") ? NAME_CACHE_CREATION_INPUT_TOKENS
			                                         : -1;
		}
		return -1;
	}
	return -1;
#undef IS
}

/* name_ending_at: the name whose closing quote is k (k[-1] is 's'), opened
 * by an unescaped quote q with from <= q < q_limit: its index in *key and
 * the byte after k, or NULL. The opening quote is the nearest one before k
 * (names hold none); match_name_whole then reads from it, which is safe as
 * q_limit leaves NAME_LEN_MAX + 1 bytes after q. */
static const char *name_ending_at(const char *data, const char *from, const char *q_limit,
                                  const char *k, bool carry_odd, int *key)
{
	if (k - from < 13 || memcmp(k - 7, "_tokens", 7) != 0)
		return NULL;
	const char *q = k - 8, *low = k - NAME_LEN_MAX - 1;
	if (low < from)
		low = from;
	while (q >= low && *q != '"')
		q--;
	if (q < low || q >= q_limit)
		return NULL;
	int i = match_name_whole(q + 1);
	if (i < 0 || q + 1 + names[i].len != k || quote_escaped(data, q, carry_odd))
		return NULL;
	*key = i;
	return k + 1;
}

/* find_name: the first name in the piece [data, end) whose opening quote q
 * lies in [from, q_limit), where q_limit <= end - NAME_LEN_MAX - 1 so that
 * the whole name and its closing quote are in the piece. Instead of trying
 * every quote it looks for the closing quote of a name, a '"' right after
 * an 's' ("choices", "..._tokens"), which is rare in a response, and checks
 * the names back from there. Finds exactly the names the quote-by-quote
 * scan finds over the same quotes (names hold no quote, and no two names
 * end at the same quote). Returns the byte after the closing quote, or NULL. */
static const char *find_name(const char *data, const char *from, const char *q_limit,
                             const char *end, bool carry_odd, int *key)
{
	const char *b = from + 1;
	const char *k_limit = q_limit + NAME_LEN_MAX + 1; /* the last closing quote that can count */
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), ess = _mm_set1_epi8('s');
	for (; end - b >= 16 && b <= k_limit; b += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)b);
		__m128i prev = _mm_loadu_si128((const __m128i *)(const void *)(b - 1));
		unsigned m = (unsigned)_mm_movemask_epi8(
		    _mm_and_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(prev, ess)));
		while (m) {
			const char *after =
			    name_ending_at(data, from, q_limit, b + __builtin_ctz(m), carry_odd, key);
			if (after)
				return after;
			m &= m - 1;
		}
	}
#endif
	for (; b < end && b <= k_limit; b++) {
		if (*b == '"' && b[-1] == 's') {
			const char *after = name_ending_at(data, from, q_limit, b, carry_odd, key);
			if (after)
				return after;
		}
	}
	return NULL;
}

/* key_step: the names in mask that accept byte c at position pos (a name
 * accepts its closing quote right after its last byte). */
static inline uint8_t key_step(uint8_t mask, uint8_t pos, unsigned char c)
{
	uint8_t next = 0;
	for (int i = 0; i < NUM_NAMES; i++) {
		if (!(mask & (1u << i)))
			continue;
		const struct name *n = &names[i];
		if (pos < n->len ? (unsigned char)n->str[pos] == c : (pos == n->len && c == '"'))
			next |= (uint8_t)(1u << i);
	}
	return next;
}

static inline uint64_t add_digit(uint64_t v, unsigned d)
{
	if (v > (SL_USAGE_TOKENS_MAX - d) / 10)
		return SL_USAGE_TOKENS_MAX;
	return v * 10 + d;
}

/* key_begins_value: the first digit of the value of names[key] has come. */
static void key_begins_value(struct sl_token_usage *usage, unsigned key)
{
	usage->fields_seen |= names[key].field;
	if (key == NAME_CACHED_TOKENS)
		usage->fields_seen |= SL_USAGE_CACHE_READ_IN_INPUT;
	else if (key == NAME_CACHE_READ_INPUT_TOKENS)
		usage->fields_seen &= ~SL_USAGE_CACHE_READ_IN_INPUT;
}

static void store_value(struct sl_token_usage *usage, unsigned key, uint64_t v)
{
	switch (names[key].field) {
	case SL_USAGE_INPUT:
		usage->input_tokens = v;
		break;
	case SL_USAGE_OUTPUT:
		usage->output_tokens = v;
		break;
	case SL_USAGE_CACHE_READ:
		usage->cache_read_tokens = v;
		break;
	case SL_USAGE_CACHE_WRITE:
		usage->cache_write_tokens = v;
		break;
	case SL_USAGE_CACHE_WRITE_1H:
		usage->cache_write_1h_tokens = v;
		break;
	default:
		SL_ASSERT(!"a name maps to one field");
	}
}

void sl_usage_scanner_feed(struct sl_usage_scanner *s, const char *data, size_t len,
                           struct sl_token_usage *usage)
{
	if (len == 0)
		return;
	SL_ASSERT(data != NULL && usage != NULL);
	SL_ASSERT(s->state <= ST_NUMBER && s->key < NUM_NAMES);

	const char *p = data, *end = data + len;
	while (p < end) {
		unsigned char c = (unsigned char)*p;
		switch (s->state) {
		case ST_SCAN:
			if ((size_t)(end - p) > FAST_SCAN_MIN) {
				/* the bulk of the piece by closing quotes; the
				 * last NAME_LEN_MAX + 1 bytes quote by quote, as
				 * a name there may end in the next piece */
				const char *q_limit = end - (NAME_LEN_MAX + 1);
				int key;
				const char *after = find_name(data, p, q_limit, end, s->backslash_odd, &key);
				if (after) {
					s->key = (uint8_t)key;
					s->state = ST_AFTER_KEY;
					p = after;
					break;
				}
				p = q_limit;
			}
			while (p < end) {
				const char *q = find_quote(p, end);
				if (q == NULL) {
					p = end;
					break;
				}
				p = q + 1;
				if ((size_t)(end - p) > NAME_LEN_MAX) {
					/* most quotes open or close other strings: the
					 * name check fails first, the escape check is
					 * only needed for a name */
					int key = match_name_whole(p);
					if (key < 0 || quote_escaped(data, q, s->backslash_odd))
						continue;
					s->key = (uint8_t)key;
					s->state = ST_AFTER_KEY;
					p += names[key].len + 1;
					break;
				}
				if (quote_escaped(data, q, s->backslash_odd))
					continue;
				s->state = ST_KEY;
				s->key_pos = 0;
				s->key_mask = NAMES_ALL;
				break;
			}
			break;

		case ST_KEY: {
			uint8_t next = key_step(s->key_mask, s->key_pos, c);
			if (next == 0) {
				s->state = ST_SCAN; /* read c again */
				break;
			}
			p++;
			if (c == '"') {
				/* No name is a prefix of another: one is left. */
				SL_ASSERT_HOT((next & (next - 1)) == 0);
				s->key = (uint8_t)__builtin_ctz(next);
				s->state = ST_AFTER_KEY;
				break;
			}
			s->key_mask = next;
			s->key_pos++;
			SL_ASSERT_HOT(s->key_pos <= NAME_LEN_MAX);
			break;
		}

		case ST_AFTER_KEY:
			if (is_json_space(c)) {
				p++;
			} else if (c == ':') {
				p++;
				s->state = ST_AFTER_COLON;
			} else {
				s->state = ST_SCAN;
			}
			break;

		case ST_AFTER_COLON:
			if (is_json_space(c)) {
				p++;
			} else if (is_digit(c)) {
				key_begins_value(usage, s->key);
				s->value = 0;
				s->state = ST_NUMBER;
			} else {
				s->state = ST_SCAN; /* null, a string, '-': not a count */
			}
			break;

		case ST_NUMBER: {
			uint64_t v = s->value;
			while (p < end && is_digit((unsigned char)*p)) {
				v = add_digit(v, (unsigned)(*p - '0'));
				p++;
			}
			s->value = v;
			store_value(usage, s->key, v);
			if (p < end)
				s->state = ST_SCAN;
			break;
		}

		default:
			SL_ASSERT(!"usage scanner state");
		}
	}

	/* The parity of the backslash run the input now ends with. */
	size_t run = 0;
	while (run < len && data[len - 1 - run] == '\\')
		run++;
	if (run == len)
		s->backslash_odd ^= (uint8_t)(run & 1);
	else
		s->backslash_odd = (uint8_t)(run & 1);
}

static inline uint64_t add_saturating(uint64_t a, uint64_t b)
{
	/* Both at most SL_USAGE_TOKENS_MAX: the sum cannot wrap. */
	a = SL_MIN(a, SL_USAGE_TOKENS_MAX);
	b = SL_MIN(b, SL_USAGE_TOKENS_MAX);
	return SL_MIN(a + b, SL_USAGE_TOKENS_MAX);
}

uint64_t sl_usage_total_tokens(const struct sl_token_usage *u)
{
	uint64_t total = add_saturating(u->input_tokens, u->output_tokens);
	total = add_saturating(total, u->cache_write_tokens);
	if (!(u->fields_seen & SL_USAGE_CACHE_READ_IN_INPUT))
		total = add_saturating(total, u->cache_read_tokens);
	return total;
}
