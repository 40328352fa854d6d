/*
 * json.c - the exact, bounded JSON reader and writer (see json.h and
 * docs/json.md).
 *
 * Reader: recursive descent over the input, one pass. Every node and every
 * decoded string comes from the caller's arena. The children of an array or
 * object are collected on a scratch stack shared by all open containers and
 * copied into an exact-size arena array when the container closes, so a
 * parsed tree holds no slack. Strings are decoded straight into the arena's
 * free tail (sl_arena_tail), 16 bytes at a time with SSE2: a chunk without a
 * quote, backslash, control byte or non-ASCII byte is copied whole; the rest
 * is handled a byte (or a UTF-8 sequence, or an escape) at a time. Numbers
 * are checked against the RFC 8259 grammar and kept as text.
 *
 * Writer: sl_json_serialized_len computes the exact length, sl_json_write
 * fills a buffer of that length; strings are escaped 16 bytes at a time.
 */
#include "sluice/json.h"

#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#define JSON_SIMD 1
#else
#define JSON_SIMD 0
#endif

#define JSON_DEPTH_DEFAULT 128
#define JSON_DEPTH_HARD_MAX 1024 /* the reader recurses: bound the C stack */
#define JSON_SCRATCH_BYTES 8192  /* scratch stack on the C stack; then the arena */

_Static_assert(sizeof(struct sl_json) == 24, "node size");
_Static_assert(sizeof(struct sl_json_member) == 24, "member size");

/* --- character tables ------------------------------------------------------ */

/* Bytes an escaped byte adds to its string: 1 for \" \\ \b \f \n \r \t,
 * 5 for the other control bytes (\u00XX), 0 for everything else. */
static const uint8_t escape_extra[256] = {
	5, 5, 5, 5, 5, 5, 5, 5, 1, 1, 1, 5, 1, 1, 5, 5, /* \b \t \n \f \r */
	5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
	['"'] = 1, ['\\'] = 1,
};

static inline int hex_value(unsigned c)
{
	if (c - '0' < 10)
		return (int)(c - '0');
	c |= 0x20;
	if (c - 'a' < 6)
		return (int)(c - 'a' + 10);
	return -1;
}

/* --- reader ------------------------------------------------------------------ */

struct parser {
	const char *p;
	const char *end;
	const char *start;
	struct sl_arena *a;
	uint32_t depth_max;
	const char *err_at;
	const char *err_message;
	char *stack; /* scratch: children of the open containers */
	size_t stack_len;
	size_t stack_cap;
};

static void *fail(struct parser *ps, const char *at, const char *message)
{
	if (!ps->err_message) {
		ps->err_at = at;
		ps->err_message = message;
	}
	return NULL;
}

static void *fail_arena(struct parser *ps)
{
	ps->a->failed = true;
	return fail(ps, ps->p, "arena exhausted");
}

/* alloc8: n a multiple of 8; the arena's fast path, inlined. */
static inline void *alloc8(struct sl_arena *a, size_t n)
{
	if (SL_LIKELY((size_t)(a->end - a->cur) >= n)) {
		void *p = a->cur;
		a->cur += n;
		return p;
	}
	return sl_arena_alloc(a, n);
}

static inline struct sl_json *node_new(struct sl_arena *a, uint8_t type)
{
	struct sl_json *v = alloc8(a, sizeof(*v));
	if (SL_LIKELY(v != NULL)) {
		v->type = type;
		v->len = 0;
		v->cap = 0;
		v->u.str = NULL;
	}
	return v;
}

static inline const char *skip_ws(const char *p, const char *end)
{
	while (p < end) {
		unsigned char c = (unsigned char)*p;
		if (c > ' ' || (c != ' ' && c != '\n' && c != '\r' && c != '\t'))
			break;
		p++;
	}
	return p;
}

static bool stack_reserve(struct parser *ps, size_t n)
{
	if (SL_LIKELY(ps->stack_cap - ps->stack_len >= n))
		return true;
	size_t cap = SL_MAX(ps->stack_cap * 2, ps->stack_len + n);
	char *p = sl_arena_alloc(ps->a, cap);
	if (!p)
		return false;
	memcpy(p, ps->stack, ps->stack_len);
	ps->stack = p;
	ps->stack_cap = cap;
	return true;
}

/* utf8_sequence returns the length of the valid UTF-8 sequence at s (lead
 * byte >= 0x80), or 0: no overlongs, no surrogates, nothing past U+10FFFF. */
static inline unsigned utf8_sequence(const unsigned char *s, const unsigned char *end)
{
	unsigned c = s[0];
	size_t avail = (size_t)(end - s);
	if (c < 0xc2)
		return 0;
	if (c < 0xe0)
		return avail >= 2 && (s[1] & 0xc0) == 0x80 ? 2 : 0;
	if (c < 0xf0) {
		if (avail < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80)
			return 0;
		if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0))
			return 0;
		return 3;
	}
	if (c < 0xf5) {
		if (avail < 4 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80 ||
		    (s[3] & 0xc0) != 0x80)
			return 0;
		if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90))
			return 0;
		return 4;
	}
	return 0;
}

static inline int hex4(const unsigned char *s)
{
	int a = hex_value(s[0]), b = hex_value(s[1]), c = hex_value(s[2]), d = hex_value(s[3]);
	if ((a | b | c | d) < 0)
		return -1;
	return (a << 12) | (b << 8) | (c << 4) | d;
}

static inline char *utf8_encode(char *d, uint32_t cp)
{
	if (cp < 0x80) {
		*d++ = (char)cp;
	} else if (cp < 0x800) {
		*d++ = (char)(0xc0 | (cp >> 6));
		*d++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*d++ = (char)(0xe0 | (cp >> 12));
		*d++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*d++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*d++ = (char)(0xf0 | (cp >> 18));
		*d++ = (char)(0x80 | ((cp >> 12) & 0x3f));
		*d++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*d++ = (char)(0x80 | (cp & 0x3f));
	}
	return d;
}

/* string_end returns the closing quote of the string whose unparsed rest
 * starts at s (not inside an escape), or NULL when there is none. */
static const unsigned char *string_end(const unsigned char *s, const unsigned char *end)
{
	const unsigned char *q = s;
	while ((q = memchr(q, '"', (size_t)(end - q))) != NULL) {
		size_t backslashes = 0;
		while (q - backslashes > s && q[-1 - (ptrdiff_t)backslashes] == '\\')
			backslashes++;
		if (backslashes % 2 == 0)
			return q;
		q++;
	}
	return NULL;
}

/*
 * parse_string decodes the string whose opening quote is at ps->p into the
 * arena (NUL-terminated) and leaves ps->p after the closing quote. Returns
 * the text and its length in *out_len, or NULL with the error recorded.
 * The decoded bytes are written at the arena's free tail: each turn needs at
 * most 16 bytes (a chunk) or 4 (an escape or a UTF-8 sequence) plus the NUL,
 * so the loop keeps 20 bytes of room ahead and grows the tail when short.
 */
static char *parse_string(struct parser *ps, uint32_t *out_len)
{
	struct sl_arena *a = ps->a;
	const unsigned char *s = (const unsigned char *)ps->p + 1;
	const unsigned char *end = (const unsigned char *)ps->end;
	char *d0 = a->cur, *d = d0, *dend = a->end;
#if JSON_SIMD
	const __m128i quote = _mm_set1_epi8('"');
	const __m128i backslash = _mm_set1_epi8('\\');
	const __m128i space = _mm_set1_epi8(' ');
#endif
	for (;;) {
		if (SL_UNLIKELY(dend - d < 20)) {
			size_t used = (size_t)(d - d0);
			size_t need = used + SL_MAX(used, (size_t)256);
			if (used >= 4096) {
				/* A long string: size the tail once, from where
				 * it ends in the input (decoding never grows it). */
				const unsigned char *q = string_end(s, end);
				need = used + (size_t)((q ? q : end) - s) + 20;
			}
			d0 = sl_arena_tail(a, used, need);
			if (!d0)
				return fail_arena(ps);
			d = d0 + used;
			dend = a->end;
		}
#if JSON_SIMD
		if (SL_LIKELY(end - s >= 16)) {
			__m128i v = _mm_loadu_si128((const __m128i *)s);
			_mm_storeu_si128((__m128i *)d, v);
			/* signed compare: catches control bytes and bytes >= 0x80 */
			__m128i special = _mm_or_si128(
				_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
				_mm_cmplt_epi8(v, space));
			unsigned mask = (unsigned)_mm_movemask_epi8(special);
			if (SL_LIKELY(mask == 0)) {
				s += 16;
				d += 16;
				continue;
			}
			unsigned i = (unsigned)__builtin_ctz(mask);
			s += i;
			d += i;
		} else
#endif
		{
			if (SL_UNLIKELY(s >= end))
				return fail(ps, (const char *)s, "unterminated string");
			unsigned c = *s;
			if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
				*d++ = (char)c;
				s++;
				continue;
			}
		}
		unsigned c = *s;
		if (c == '"')
			break;
		if (c == '\\') {
			if (end - s < 2)
				return fail(ps, (const char *)s, "unterminated string");
			switch (s[1]) {
			case '"': *d++ = '"'; break;
			case '\\': *d++ = '\\'; break;
			case '/': *d++ = '/'; break;
			case 'b': *d++ = '\b'; break;
			case 'f': *d++ = '\f'; break;
			case 'n': *d++ = '\n'; break;
			case 'r': *d++ = '\r'; break;
			case 't': *d++ = '\t'; break;
			case 'u': {
				int cp = end - s >= 6 ? hex4(s + 2) : -1;
				if (cp < 0)
					return fail(ps, (const char *)s, "invalid \\u escape");
				if (cp >= 0xdc00 && cp <= 0xdfff)
					return fail(ps, (const char *)s, "lone surrogate in \\u escape");
				if (cp >= 0xd800 && cp <= 0xdbff) {
					int lo = -1;
					if (end - s >= 12 && s[6] == '\\' && s[7] == 'u')
						lo = hex4(s + 8);
					if (lo < 0xdc00 || lo > 0xdfff)
						return fail(ps, (const char *)s, "lone surrogate in \\u escape");
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					s += 6;
				}
				d = utf8_encode(d, (uint32_t)cp);
				s += 6;
				continue;
			}
			default:
				return fail(ps, (const char *)s, "invalid escape in string");
			}
			s += 2;
			continue;
		}
		if (c < 0x20)
			return fail(ps, (const char *)s, "control character in string");
		unsigned n = utf8_sequence(s, end);
		if (!n)
			return fail(ps, (const char *)s, "invalid UTF-8 in string");
		d[0] = (char)s[0];
		d[1] = (char)s[1];
		if (n > 2)
			d[2] = (char)s[2];
		if (n > 3)
			d[3] = (char)s[3];
		s += n;
		d += n;
	}
	size_t len = (size_t)(d - d0);
	if (SL_UNLIKELY(len >= UINT32_MAX))
		return fail(ps, (const char *)s, "string too long");
	*d = '\0';
	sl_arena_commit(a, len + 1);
	ps->p = (const char *)s + 1;
	*out_len = (uint32_t)len;
	return d0;
}

/* scan_number returns the end of the RFC 8259 number at p, or NULL. */
static inline const char *scan_number(const char *p, const char *end)
{
	if (p < end && *p == '-')
		p++;
	if (p >= end)
		return NULL;
	if (*p == '0') {
		p++;
	} else if (*p >= '1' && *p <= '9') {
		p++;
		while (p < end && (unsigned)(*p - '0') < 10)
			p++;
	} else {
		return NULL;
	}
	if (p < end && *p == '.') {
		p++;
		if (p >= end || (unsigned)(*p - '0') >= 10)
			return NULL;
		while (p < end && (unsigned)(*p - '0') < 10)
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p >= end || (unsigned)(*p - '0') >= 10)
			return NULL;
		while (p < end && (unsigned)(*p - '0') < 10)
			p++;
	}
	return p;
}

static struct sl_json *parse_value(struct parser *ps, uint32_t depth);

static struct sl_json *parse_array(struct parser *ps, uint32_t depth)
{
	if (depth >= ps->depth_max)
		return fail(ps, ps->p, "nesting too deep");
	struct sl_json *node = node_new(ps->a, SL_JSON_ARRAY);
	if (!node)
		return fail_arena(ps);
	const char *p = skip_ws(ps->p + 1, ps->end);
	if (p < ps->end && *p == ']') {
		ps->p = p + 1;
		return node;
	}
	size_t base = ps->stack_len;
	for (;;) {
		ps->p = p;
		struct sl_json *item = parse_value(ps, depth + 1);
		if (!item)
			return NULL;
		if (!stack_reserve(ps, sizeof(item)))
			return fail_arena(ps);
		memcpy(ps->stack + ps->stack_len, &item, sizeof(item));
		ps->stack_len += sizeof(item);
		p = skip_ws(ps->p, ps->end);
		if (p >= ps->end)
			return fail(ps, p, "unexpected end of input in array");
		if (*p == ',') {
			p = skip_ws(p + 1, ps->end);
			continue;
		}
		if (*p == ']')
			break;
		return fail(ps, p, "expected ',' or ']' in array");
	}
	ps->p = p + 1;
	size_t bytes = ps->stack_len - base;
	if (bytes / sizeof(struct sl_json *) >= UINT32_MAX)
		return fail(ps, p, "array too long");
	struct sl_json **items = alloc8(ps->a, bytes);
	if (!items)
		return fail_arena(ps);
	memcpy(items, ps->stack + base, bytes);
	ps->stack_len = base;
	node->len = node->cap = (uint32_t)(bytes / sizeof(struct sl_json *));
	node->u.items = items;
	return node;
}

static struct sl_json *parse_object(struct parser *ps, uint32_t depth)
{
	if (depth >= ps->depth_max)
		return fail(ps, ps->p, "nesting too deep");
	struct sl_json *node = node_new(ps->a, SL_JSON_OBJECT);
	if (!node)
		return fail_arena(ps);
	const char *p = skip_ws(ps->p + 1, ps->end);
	if (p < ps->end && *p == '}') {
		ps->p = p + 1;
		return node;
	}
	size_t base = ps->stack_len;
	for (;;) {
		if (p >= ps->end)
			return fail(ps, p, "unexpected end of input in object");
		if (*p != '"')
			return fail(ps, p, "expected a string key in object");
		struct sl_json_member m;
		ps->p = p;
		m.key = parse_string(ps, &m.key_len);
		if (!m.key)
			return NULL;
		p = skip_ws(ps->p, ps->end);
		if (p >= ps->end || *p != ':')
			return fail(ps, p, "expected ':' after object key");
		ps->p = skip_ws(p + 1, ps->end);
		m.value = parse_value(ps, depth + 1);
		if (!m.value)
			return NULL;
		if (!stack_reserve(ps, sizeof(m)))
			return fail_arena(ps);
		memcpy(ps->stack + ps->stack_len, &m, sizeof(m));
		ps->stack_len += sizeof(m);
		p = skip_ws(ps->p, ps->end);
		if (p >= ps->end)
			return fail(ps, p, "unexpected end of input in object");
		if (*p == ',') {
			p = skip_ws(p + 1, ps->end);
			continue;
		}
		if (*p == '}')
			break;
		return fail(ps, p, "expected ',' or '}' in object");
	}
	ps->p = p + 1;
	size_t bytes = ps->stack_len - base;
	if (bytes / sizeof(struct sl_json_member) >= UINT32_MAX)
		return fail(ps, p, "object too long");
	struct sl_json_member *members = alloc8(ps->a, bytes);
	if (!members)
		return fail_arena(ps);
	memcpy(members, ps->stack + base, bytes);
	ps->stack_len = base;
	node->len = node->cap = (uint32_t)(bytes / sizeof(struct sl_json_member));
	node->u.members = members;
	return node;
}

static struct sl_json *parse_literal(struct parser *ps, const char *word, size_t len,
                                     uint8_t type)
{
	if ((size_t)(ps->end - ps->p) < len || memcmp(ps->p, word, len) != 0)
		return fail(ps, ps->p, "invalid literal");
	struct sl_json *v = node_new(ps->a, type);
	if (!v)
		return fail_arena(ps);
	ps->p += len;
	return v;
}

/* parse_value parses the value at ps->p (whitespace already skipped);
 * depth is the number of containers around it. */
static struct sl_json *parse_value(struct parser *ps, uint32_t depth)
{
	if (SL_UNLIKELY(ps->p >= ps->end))
		return fail(ps, ps->p, "unexpected end of input");
	switch (*ps->p) {
	case '"': {
		struct sl_json *v = node_new(ps->a, SL_JSON_STRING);
		if (!v)
			return fail_arena(ps);
		v->u.str = parse_string(ps, &v->len);
		return v->u.str ? v : NULL;
	}
	case '{':
		return parse_object(ps, depth);
	case '[':
		return parse_array(ps, depth);
	case 't':
		return parse_literal(ps, "true", 4, SL_JSON_TRUE);
	case 'f':
		return parse_literal(ps, "false", 5, SL_JSON_FALSE);
	case 'n':
		return parse_literal(ps, "null", 4, SL_JSON_NULL);
	case '-':
	case '0' ... '9': {
		const char *e = scan_number(ps->p, ps->end);
		if (!e)
			return fail(ps, ps->p, "invalid number");
		size_t len = (size_t)(e - ps->p);
		if (len >= UINT32_MAX)
			return fail(ps, ps->p, "number too long");
		struct sl_json *v = node_new(ps->a, SL_JSON_NUMBER);
		char *text = alloc8(ps->a, (len + 8) & ~(size_t)7);
		if (!v || !text)
			return fail_arena(ps);
		memcpy(text, ps->p, len);
		text[len] = '\0';
		v->u.str = text;
		v->len = (uint32_t)len;
		ps->p = e;
		return v;
	}
	default:
		return fail(ps, ps->p, "unexpected character");
	}
}

int sl_json_parse(struct sl_arena *a, const char *text, size_t len,
                  const struct sl_json_limits *limits, struct sl_json **out,
                  struct sl_json_error *err)
{
	_Alignas(8) char scratch[JSON_SCRATCH_BYTES];
	struct parser ps = {
		.p = text,
		.end = text + len,
		.start = text,
		.a = a,
		.depth_max = JSON_DEPTH_DEFAULT,
		.stack = scratch,
		.stack_cap = sizeof(scratch),
	};
	*out = NULL;
	if (limits) {
		if (limits->depth_max)
			ps.depth_max = SL_MIN(limits->depth_max, (uint32_t)JSON_DEPTH_HARD_MAX);
		if (limits->text_len_max && len > limits->text_len_max) {
			if (err) {
				err->offset = limits->text_len_max;
				err->message = "input too large";
			}
			return SL_ERROR;
		}
	}
	if (!text)
		ps.p = ps.end = ps.start = "";
	ps.p = skip_ws(ps.p, ps.end);
	struct sl_json *v = parse_value(&ps, 0);
	if (v) {
		ps.p = skip_ws(ps.p, ps.end);
		if (ps.p != ps.end)
			v = fail(&ps, ps.p, "unexpected characters after the value");
	}
	if (!v) {
		SL_ASSERT(ps.err_message != NULL);
		if (err) {
			err->offset = (size_t)(ps.err_at - ps.start);
			err->message = ps.err_message;
		}
		return SL_ERROR;
	}
	if (err) {
		err->offset = len;
		err->message = NULL;
	}
	*out = v;
	return 0;
}

/* --- reading ------------------------------------------------------------------ */

struct sl_json *sl_json_get(const struct sl_json *v, const char *key)
{
	if (!v || v->type != SL_JSON_OBJECT)
		return NULL;
	size_t key_len = strlen(key);
	for (uint32_t i = v->len; i-- > 0;) {
		const struct sl_json_member *m = &v->u.members[i];
		if (m->key_len == key_len && memcmp(m->key, key, key_len) == 0)
			return m->value;
	}
	return NULL;
}

const char *sl_json_get_str(const struct sl_json *v, const char *key, uint32_t *out_len)
{
	const struct sl_json *s = sl_json_get(v, key);
	if (!s || s->type != SL_JSON_STRING)
		return NULL;
	if (out_len)
		*out_len = s->len;
	return s->u.str;
}

bool sl_json_get_bool(const struct sl_json *v, const char *key, bool dflt)
{
	const struct sl_json *b = sl_json_get(v, key);
	if (b && b->type == SL_JSON_TRUE)
		return true;
	if (b && b->type == SL_JSON_FALSE)
		return false;
	return dflt;
}

/* parse_int64 reads an integer written as [-]digits; false on anything else
 * or out of range. */
static bool parse_int64(const char *s, size_t len, int64_t *out)
{
	bool neg = len > 0 && s[0] == '-';
	size_t i = neg ? 1 : 0;
	if (i >= len)
		return false;
	uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	uint64_t n = 0;
	for (; i < len; i++) {
		unsigned digit = (unsigned)(s[i] - '0');
		if (digit >= 10)
			return false;
		if (n > (limit - digit) / 10)
			return false;
		n = n * 10 + digit;
	}
	*out = neg ? (int64_t)(0 - n) : (int64_t)n;
	return true;
}

bool sl_json_get_int(const struct sl_json *v, const char *key, int64_t *out)
{
	const struct sl_json *n = sl_json_get(v, key);
	if (!n || n->type != SL_JSON_NUMBER)
		return false;
	return parse_int64(n->u.str, n->len, out);
}

bool sl_json_is_str(const struct sl_json *v, const char *s)
{
	if (!v || v->type != SL_JSON_STRING)
		return false;
	size_t len = strlen(s);
	return v->len == len && memcmp(v->u.str, s, len) == 0;
}

/* --- building ------------------------------------------------------------------ */

struct sl_json *sl_json_null(struct sl_arena *a)
{
	return node_new(a, SL_JSON_NULL);
}

struct sl_json *sl_json_bool(struct sl_arena *a, bool b)
{
	return node_new(a, b ? SL_JSON_TRUE : SL_JSON_FALSE);
}

struct sl_json *sl_json_int(struct sl_arena *a, int64_t n)
{
	char tmp[24];
	char *p = tmp + sizeof(tmp);
	uint64_t u = n < 0 ? 0 - (uint64_t)n : (uint64_t)n;
	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (n < 0)
		*--p = '-';
	return sl_json_number_text(a, p, (size_t)(tmp + sizeof(tmp) - p));
}

struct sl_json *sl_json_number_text(struct sl_arena *a, const char *text, size_t len)
{
	if (len == 0 || len >= UINT32_MAX || scan_number(text, text + len) != text + len)
		return NULL;
	struct sl_json *v = node_new(a, SL_JSON_NUMBER);
	char *copy = sl_arena_memdup(a, text, len);
	if (!v || !copy)
		return NULL;
	v->u.str = copy;
	v->len = (uint32_t)len;
	return v;
}

static struct sl_json *text_node(struct sl_arena *a, uint8_t type, const char *s, size_t len,
                                 bool copy)
{
	if (len >= UINT32_MAX) {
		a->failed = true;
		return NULL;
	}
	struct sl_json *v = node_new(a, type);
	if (!v)
		return NULL;
	if (copy) {
		char *c = sl_arena_memdup(a, s, len);
		if (!c)
			return NULL;
		v->u.str = c;
	} else {
		v->u.str = s;
	}
	v->len = (uint32_t)len;
	return v;
}

struct sl_json *sl_json_str(struct sl_arena *a, const char *s, size_t len)
{
	return text_node(a, SL_JSON_STRING, s, len, true);
}

struct sl_json *sl_json_str_ref(struct sl_arena *a, const char *s, size_t len)
{
	return text_node(a, SL_JSON_STRING, s, len, false);
}

struct sl_json *sl_json_raw(struct sl_arena *a, const char *json_text, size_t len)
{
	return text_node(a, SL_JSON_RAW, json_text, len, true);
}

struct sl_json *sl_json_raw_ref(struct sl_arena *a, const char *json_text, size_t len)
{
	return text_node(a, SL_JSON_RAW, json_text, len, false);
}

struct sl_json *sl_json_array(struct sl_arena *a)
{
	return node_new(a, SL_JSON_ARRAY);
}

struct sl_json *sl_json_object(struct sl_arena *a)
{
	return node_new(a, SL_JSON_OBJECT);
}

/* grow_children makes room for one more child of a container: capacity
 * doubles in the arena (the old array is left behind). A parsed container
 * has cap == len, so its first append copies it. */
static bool grow_children(struct sl_arena *a, struct sl_json *c, size_t size)
{
	if (c->len < c->cap)
		return true;
	if (c->len >= UINT32_MAX / 2) {
		a->failed = true;
		return false;
	}
	uint32_t cap = c->cap ? c->cap * 2 : 4;
	if (cap <= c->len)
		cap = c->len * 2 + 4;
	void *p = sl_arena_alloc(a, (size_t)cap * size);
	if (!p)
		return false;
	if (c->len)
		memcpy(p, c->u.items, (size_t)c->len * size);
	c->u.items = p;
	c->cap = cap;
	return true;
}

bool sl_json_push(struct sl_arena *a, struct sl_json *array, struct sl_json *item)
{
	SL_ASSERT(array == NULL || array->type == SL_JSON_ARRAY);
	if (!array || !item || !grow_children(a, array, sizeof(struct sl_json *))) {
		a->failed = true;
		return false;
	}
	array->u.items[array->len++] = item;
	return true;
}

bool sl_json_set(struct sl_arena *a, struct sl_json *object, const char *key,
                 struct sl_json *value)
{
	SL_ASSERT(object == NULL || object->type == SL_JSON_OBJECT);
	size_t key_len = key ? strlen(key) : 0;
	if (!object || !key || !value || key_len >= UINT32_MAX ||
	    !grow_children(a, object, sizeof(struct sl_json_member))) {
		a->failed = true;
		return false;
	}
	object->u.members[object->len++] = (struct sl_json_member){
		.key = key, .key_len = (uint32_t)key_len, .value = value
	};
	return true;
}

/* --- writing ------------------------------------------------------------------ */

#if JSON_SIMD
/* Bytes that need escaping: '"', '\\' and control bytes (unsigned < 0x20). */
static inline unsigned escape_mask(const char *p)
{
	__m128i v = _mm_loadu_si128((const __m128i *)p);
	__m128i ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
	__m128i special = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
	                                            _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
	                               ctl);
	return (unsigned)_mm_movemask_epi8(special);
}
#endif

/* swar_special: nonzero when one of the 8 bytes of x is '"', '\\' or a
 * control byte (a borrow can only add false hits above a true one). */
static inline uint64_t swar_special(uint64_t x)
{
	const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
	uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
	return (((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b)) & high;
}

/* short_is_clean: true when s[0..len), len < 16, needs no escaping. */
static inline bool short_is_clean(const char *s, size_t len)
{
	uint64_t w;
	if (len >= 8) {
		uint64_t a, b;
		memcpy(&a, s, 8);
		memcpy(&b, s + len - 8, 8);
		return swar_special(a) == 0 && swar_special(b) == 0;
	}
	if (len >= 4) {
		uint32_t a, b;
		memcpy(&a, s, 4);
		memcpy(&b, s + len - 4, 4);
		w = (uint64_t)a | (uint64_t)b << 32;
		return swar_special(w) == 0;
	}
	unsigned extra = 0;
	for (size_t i = 0; i < len; i++)
		extra |= escape_extra[(unsigned char)s[i]];
	return extra == 0;
}

size_t sl_json_escaped_len(const char *s, size_t len)
{
	size_t n = len, i = 0;
	if (len < 16 && short_is_clean(s, len))
		return len;
#if JSON_SIMD
	if (len >= 16) {
		for (; i + 16 <= len; i += 16) {
			unsigned m = escape_mask(s + i);
			while (m) {
				n += escape_extra[(unsigned char)s[i + (unsigned)__builtin_ctz(m)]];
				m &= m - 1;
			}
		}
		/* The last partial chunk: the final 16 bytes, minus those seen. */
		unsigned m = escape_mask(s + len - 16) >> (16 - (len - i));
		while (m) {
			n += escape_extra[(unsigned char)s[i + (unsigned)__builtin_ctz(m)]];
			m &= m - 1;
		}
		return n;
	}
#endif
	for (; i < len; i++)
		n += escape_extra[(unsigned char)s[i]];
	return n;
}

/* copy_short copies n <= 16 bytes without a call. */
static inline void copy_short(char *d, const char *s, size_t n)
{
	uint64_t a, b;
	uint32_t x, y;
	if (n >= 8) {
		memcpy(&a, s, 8);
		memcpy(&b, s + n - 8, 8);
		memcpy(d, &a, 8);
		memcpy(d + n - 8, &b, 8);
	} else if (n >= 4) {
		memcpy(&x, s, 4);
		memcpy(&y, s + n - 4, 4);
		memcpy(d, &x, 4);
		memcpy(d + n - 4, &y, 4);
	} else if (n) {
		d[0] = s[0];
		d[n / 2] = s[n / 2];
		d[n - 1] = s[n - 1];
	}
}

static inline char *write_escape(char *d, unsigned char c)
{
	static const char short_form[32] = {
		['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n', ['\r'] = 'r', ['\t'] = 't',
	};
	static const char hex[] = "0123456789abcdef";
	d[0] = '\\';
	if (c == '"' || c == '\\') {
		d[1] = (char)c;
		return d + 2;
	}
	if (short_form[c]) {
		d[1] = short_form[c];
		return d + 2;
	}
	memcpy(d + 1, "u00", 3);
	d[4] = hex[c >> 4];
	d[5] = hex[c & 15];
	return d + 6;
}

size_t sl_json_escape(const char *s, size_t len, char *out)
{
	const char *p = s, *end = s + len;
	char *d = out;
	if (len < 16 && short_is_clean(s, len)) {
		copy_short(out, s, len);
		return len;
	}
#if JSON_SIMD
	/* A 16-byte chunk escapes to at least 16 bytes, so storing it whole
	 * before fixing up its first special byte stays inside out. */
	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)p);
		_mm_storeu_si128((__m128i *)d, v);
		unsigned m = escape_mask(p);
		if (SL_LIKELY(m == 0)) {
			p += 16;
			d += 16;
			continue;
		}
		unsigned i = (unsigned)__builtin_ctz(m);
		d = write_escape(d + i, (unsigned char)p[i]);
		p += i + 1;
	}
	if (len >= 16 && p < end) {
		/* The rest is in the final 16 bytes: often nothing to escape. */
		size_t r = (size_t)(end - p);
		if ((escape_mask(end - 16) >> (16 - r)) == 0) {
			copy_short(d, p, r);
			return (size_t)(d + r - out);
		}
	}
#endif
	for (; p < end; p++) {
		unsigned char c = (unsigned char)*p;
		if (escape_extra[c])
			d = write_escape(d, c);
		else
			*d++ = (char)c;
	}
	return (size_t)(d - out);
}

size_t sl_json_serialized_len(const struct sl_json *v)
{
	switch (v->type) {
	case SL_JSON_NULL:
	case SL_JSON_TRUE:
		return 4;
	case SL_JSON_FALSE:
		return 5;
	case SL_JSON_NUMBER:
	case SL_JSON_RAW:
		return v->len;
	case SL_JSON_STRING:
		return 2 + sl_json_escaped_len(v->u.str, v->len);
	case SL_JSON_ARRAY: {
		size_t n = 2 + (v->len ? v->len - 1 : 0);
		for (uint32_t i = 0; i < v->len; i++)
			n += sl_json_serialized_len(v->u.items[i]);
		return n;
	}
	case SL_JSON_OBJECT: {
		size_t n = 2 + (v->len ? v->len - 1 : 0);
		for (uint32_t i = 0; i < v->len; i++) {
			const struct sl_json_member *m = &v->u.members[i];
			n += 3 + sl_json_escaped_len(m->key, m->key_len) +
			     sl_json_serialized_len(m->value);
		}
		return n;
	}
	}
	SL_ASSERT(!"unknown JSON node type");
	return 0;
}

static char *write_value(const struct sl_json *v, char *d)
{
	switch (v->type) {
	case SL_JSON_NULL:
		memcpy(d, "null", 4);
		return d + 4;
	case SL_JSON_TRUE:
		memcpy(d, "true", 4);
		return d + 4;
	case SL_JSON_FALSE:
		memcpy(d, "false", 5);
		return d + 5;
	case SL_JSON_NUMBER:
	case SL_JSON_RAW:
		memcpy(d, v->u.str, v->len);
		return d + v->len;
	case SL_JSON_STRING:
		*d++ = '"';
		d += sl_json_escape(v->u.str, v->len, d);
		*d++ = '"';
		return d;
	case SL_JSON_ARRAY:
		*d++ = '[';
		for (uint32_t i = 0; i < v->len; i++) {
			if (i)
				*d++ = ',';
			d = write_value(v->u.items[i], d);
		}
		*d++ = ']';
		return d;
	case SL_JSON_OBJECT:
		*d++ = '{';
		for (uint32_t i = 0; i < v->len; i++) {
			const struct sl_json_member *m = &v->u.members[i];
			if (i)
				*d++ = ',';
			*d++ = '"';
			d += sl_json_escape(m->key, m->key_len, d);
			*d++ = '"';
			*d++ = ':';
			d = write_value(m->value, d);
		}
		*d++ = '}';
		return d;
	}
	SL_ASSERT(!"unknown JSON node type");
	return d;
}

size_t sl_json_write(const struct sl_json *v, char *out)
{
	return (size_t)(write_value(v, out) - out);
}

char *sl_json_serialize(struct sl_arena *a, const struct sl_json *v, size_t *out_len)
{
	size_t len = sl_json_serialized_len(v);
	char *out = sl_arena_alloc(a, len + 1);
	if (!out)
		return NULL;
	size_t written = sl_json_write(v, out);
	SL_ASSERT(written == len);
	out[len] = '\0';
	if (out_len)
		*out_len = len;
	return out;
}
