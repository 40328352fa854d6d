/*
 * http1.c - the HTTP/1.1 head parser and chunked decoder (see http1.h).
 *
 * Speed: every byte of a head is classified with one lookup in char_class[];
 * header values and request targets, the long parts of a head, are scanned
 * 16 bytes at a time with SSE2 for the first byte that ends or breaks them.
 * A parse is one pass over the bytes plus one pass over the header array for
 * the few fields that decide framing (matched by length first).
 *
 * Strictness: the grammar is RFC 9112's, not the lenient superset most
 * servers accept, because a proxy that reads a message differently from the
 * server behind it is a request-smuggling hole. Every rejection path is a
 * plain "return fail(...)" so it can be audited in one read.
 */
#include "sluice/http1.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Byte classes, one table lookup per byte. */
enum {
	CL_TCHAR = 1 << 0,  /* token: field names, methods, codings */
	CL_VALUE = 1 << 1,  /* field-value: HTAB SP VCHAR obs-text */
	CL_TARGET = 1 << 2, /* request-target: VCHAR obs-text (no SP, no CTL) */
	CL_HOST = 1 << 3,   /* Host: reg-name / IP-literal / ":" port */
	CL_DIGIT = 1 << 4,
};

#define IS_ALPHA_(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define IS_DIGIT_(c) ((c) >= '0' && (c) <= '9')
#define IS_TCHAR_(c)                                                                        \
	(IS_ALPHA_(c) || IS_DIGIT_(c) || (c) == '!' || (c) == '#' || (c) == '$' ||          \
	 (c) == '%' || (c) == '&' || (c) == '\'' || (c) == '*' || (c) == '+' || (c) == '-' || \
	 (c) == '.' || (c) == '^' || (c) == '_' || (c) == '`' || (c) == '|' || (c) == '~')
#define IS_VCHAR_OR_OBS_(c) (((c) >= 0x21 && (c) <= 0x7e) || (c) >= 0x80)
#define IS_HOST_(c)                                                                         \
	(IS_ALPHA_(c) || IS_DIGIT_(c) || (c) == '-' || (c) == '.' || (c) == '_' || (c) == '~' || \
	 (c) == '%' || (c) == '!' || (c) == '$' || (c) == '&' || (c) == '\'' || (c) == '(' ||  \
	 (c) == ')' || (c) == '*' || (c) == '+' || (c) == ',' || (c) == ';' || (c) == '=' ||   \
	 (c) == ':' || (c) == '[' || (c) == ']')
#define CLASS_(c)                                                                           \
	(uint8_t)((IS_TCHAR_(c) ? CL_TCHAR : 0) |                                           \
	          (IS_VCHAR_OR_OBS_(c) || (c) == ' ' || (c) == '\t' ? CL_VALUE : 0) |       \
	          (IS_VCHAR_OR_OBS_(c) ? CL_TARGET : 0) | (IS_HOST_(c) ? CL_HOST : 0) |     \
	          (IS_DIGIT_(c) ? CL_DIGIT : 0))
#define CLASS4_(c) CLASS_(c), CLASS_((c) + 1), CLASS_((c) + 2), CLASS_((c) + 3)
#define CLASS16_(c) CLASS4_(c), CLASS4_((c) + 4), CLASS4_((c) + 8), CLASS4_((c) + 12)
#define CLASS64_(c) CLASS16_(c), CLASS16_((c) + 16), CLASS16_((c) + 32), CLASS16_((c) + 48)

static const uint8_t char_class[256] = { CLASS64_(0), CLASS64_(64), CLASS64_(128),
	                                 CLASS64_(192) };

/* Hex digit value, or 0xff. */
#define HEX_(c)                                                                             \
	(uint8_t)(IS_DIGIT_(c) ? (c) - '0'                                                  \
	          : ((c) >= 'a' && (c) <= 'f') ? (c) - 'a' + 10                             \
	          : ((c) >= 'A' && (c) <= 'F') ? (c) - 'A' + 10                             \
	                                       : 0xff)
#define HEX4_(c) HEX_(c), HEX_((c) + 1), HEX_((c) + 2), HEX_((c) + 3)
#define HEX16_(c) HEX4_(c), HEX4_((c) + 4), HEX4_((c) + 8), HEX4_((c) + 12)
#define HEX64_(c) HEX16_(c), HEX16_((c) + 16), HEX16_((c) + 32), HEX16_((c) + 48)

static const uint8_t hex_value[256] = { HEX64_(0), HEX64_(64), HEX64_(128), HEX64_(192) };

/* Content-Length values above this are rejected: every body length must fit
 * an off_t. */
#define CONTENT_LENGTH_MAX ((uint64_t)INT64_MAX)

/* Chunked framing bounds (http1.h). */
#define CHUNK_SIZE_DIGITS_MAX 16
#define CHUNK_SIZE_MAX (UINT64_C(1) << 62)
#define CHUNK_LINE_LEN_MAX 4096    /* one chunk-size line, CRLF included */
#define CHUNK_TRAILER_LEN_MAX 4096 /* the whole trailer section, final CRLF included */
_Static_assert(CHUNK_TRAILER_LEN_MAX == CHUNK_LINE_LEN_MAX, "sl_chunked_feed checks one bound");
_Static_assert(CHUNK_SIZE_DIGITS_MAX * 4 <= 64, "a chunk-size accumulates in a uint64_t");

struct parse_error {
	uint16_t status;
	const char *message;
};

static int fail(struct parse_error *err, uint16_t status, const char *message)
{
	err->status = status;
	err->message = message;
	return SL_ERROR;
}

static inline bool is_ows(unsigned char c)
{
	return c == ' ' || c == '\t';
}

static inline bool has_class(unsigned char c, uint8_t cls)
{
	return (char_class[c] & cls) != 0;
}

/* scan_token returns the first byte at or after p that is not a tchar, or end. */
static inline const char *scan_token(const char *p, const char *end)
{
	while (end - p >= 4) {
		if (!has_class(p[0], CL_TCHAR))
			return p;
		if (!has_class(p[1], CL_TCHAR))
			return p + 1;
		if (!has_class(p[2], CL_TCHAR))
			return p + 2;
		if (!has_class(p[3], CL_TCHAR))
			return p + 3;
		p += 4;
	}
	while (p < end && has_class(*p, CL_TCHAR))
		p++;
	return p;
}

/* scan_value returns the first byte at or after p that may not appear in a
 * field value (any CTL but HTAB: CR ends a value, the rest are errors), or
 * end. */
static inline const char *scan_value(const char *p, const char *end)
{
#ifdef __SSE2__
	const __m128i ctl_last = _mm_set1_epi8(0x1f);
	const __m128i del = _mm_set1_epi8(0x7f);
	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		/* unsigned v <= 0x1f  <=>  min(v, 0x1f) == v */
		__m128i stop = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, ctl_last), v),
		                            _mm_cmpeq_epi8(v, del));
		unsigned mask = (unsigned)_mm_movemask_epi8(stop);
		if (SL_LIKELY(mask == 0)) {
			p += 16;
			continue;
		}
		p += __builtin_ctz(mask);
		if (*p != '\t')
			return p;
		p++; /* HTAB is allowed; rare, so just restart the scan after it */
	}
#endif
	while (p < end && has_class(*p, CL_VALUE))
		p++;
	return p;
}

/* scan_target returns the first byte at or after p that may not appear in a
 * request-target (SP, CTL, DEL), or end. */
static inline const char *scan_target(const char *p, const char *end)
{
#ifdef __SSE2__
	const __m128i sp = _mm_set1_epi8(0x20);
	const __m128i del = _mm_set1_epi8(0x7f);
	while (end - p >= 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
		__m128i stop = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, sp), v),
		                            _mm_cmpeq_epi8(v, del));
		unsigned mask = (unsigned)_mm_movemask_epi8(stop);
		if (mask != 0)
			return p + __builtin_ctz(mask);
		p += 16;
	}
#endif
	while (p < end && has_class(*p, CL_TARGET))
		p++;
	return p;
}

/* name_eq compares a field name (already known to be all tchar) with a
 * lowercase literal of the same length. For tchar bytes, c | 0x20 folds
 * exactly the uppercase letters, so this is a case-insensitive compare. */
static inline bool name_eq(const char *name, const char *lower, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (((unsigned char)name[i] | 0x20) != (unsigned char)lower[i])
			return false;
	return true;
}

/* list_next yields the next non-empty element of a comma-separated list in
 * [*pp, end), OWS-trimmed, and advances *pp past it. Empty elements are
 * skipped (RFC 9110 section 5.6.1.2). Returns false at the end of the list. */
static bool list_next(const char **pp, const char *end, const char **out_elem,
                      size_t *out_elem_len)
{
	const char *p = *pp;
	while (p < end && (is_ows(*p) || *p == ','))
		p++;
	if (p == end) {
		*pp = p;
		return false;
	}
	const char *start = p;
	const char *comma = p;
	while (comma < end && *comma != ',')
		comma++;
	const char *stop = comma;
	while (stop > start && is_ows(stop[-1]))
		stop--;
	*out_elem = start;
	*out_elem_len = (size_t)(stop - start);
	*pp = comma < end ? comma + 1 : end;
	return true;
}

/* list_has reports whether the comma list v[0..len) has the element word
 * (case-insensitive). */
static bool list_has(const char *v, size_t len, const char *word, size_t word_len)
{
	const char *p = v, *end = v + len, *elem;
	size_t elem_len;
	while (list_next(&p, end, &elem, &elem_len))
		if (elem_len == word_len && sl_ascii_ieq(elem, word, word_len))
			return true;
	return false;
}

/* connection_options reads the close and keep-alive options of one
 * Connection field value. */
static void connection_options(const char *v, size_t len, bool *out_close,
                               bool *out_keep_alive)
{
	const char *p = v, *end = v + len, *elem;
	size_t elem_len;
	while (list_next(&p, end, &elem, &elem_len)) {
		if (elem_len == 5 && sl_ascii_ieq(elem, "close", 5))
			*out_close = true;
		else if (elem_len == 10 && sl_ascii_ieq(elem, "keep-alive", 10))
			*out_keep_alive = true;
	}
}

/*
 * parse_content_length parses a Content-Length value: 1*DIGIT, or a list of
 * identical such values ("5, 5", which RFC 9110 section 8.6 lets a recipient
 * accept). Leading zeros are fine; empty elements, signs, anything but digits,
 * differing values and values over CONTENT_LENGTH_MAX are not.
 */
static bool parse_content_length(const char *v, size_t len, uint64_t *out_value)
{
	size_t i = 0;
	bool have = false;
	uint64_t first = 0;
	for (;;) {
		if (i == len || !has_class(v[i], CL_DIGIT))
			return false;
		uint64_t x = 0;
		do {
			unsigned digit = (unsigned)(v[i] - '0');
			if (x > (CONTENT_LENGTH_MAX - digit) / 10)
				return false;
			x = x * 10 + digit;
			i++;
		} while (i < len && has_class(v[i], CL_DIGIT));
		if (have && x != first)
			return false;
		first = x;
		have = true;
		while (i < len && is_ows(v[i]))
			i++;
		if (i == len)
			break;
		if (v[i] != ',')
			return false;
		i++;
		while (i < len && is_ows(v[i]))
			i++;
	}
	*out_value = first;
	return true;
}

/* The codings of every Transfer-Encoding field line, in order. */
struct te_codings {
	bool present;        /* at least one Transfer-Encoding field line */
	bool chunked_seen;   /* chunked appeared */
	bool chunked_last;   /* the last coding so far is chunked */
	bool chunked_repeat; /* chunked appeared more than once */
	bool unknown;        /* a coding other than chunked appeared */
	bool malformed;      /* a list element is not a transfer-coding */
};

/* te_add adds the codings of one Transfer-Encoding field value (the list may
 * be split over several field lines; RFC 9110 section 5.3). */
static void te_add(struct te_codings *te, const char *v, size_t len)
{
	const char *p = v, *end = v + len, *elem;
	size_t elem_len;

	te->present = true;
	while (list_next(&p, end, &elem, &elem_len)) {
		const char *elem_end = elem + elem_len;
		const char *tok_end = scan_token(elem, elem_end);
		const char *q = tok_end;
		bool has_params = false;

		while (q < elem_end && is_ows(*q))
			q++;
		if (q < elem_end) {
			if (*q != ';') {
				te->malformed = true;
				return;
			}
			has_params = true; /* transfer-parameters; chunked has none */
		}
		if (tok_end == elem) {
			te->malformed = true;
			return;
		}
		if (tok_end - elem == 7 && sl_ascii_ieq(elem, "chunked", 7)) {
			if (has_params)
				te->malformed = true;
			if (te->chunked_seen)
				te->chunked_repeat = true;
			te->chunked_seen = true;
			te->chunked_last = true;
		} else {
			te->unknown = true;
			te->chunked_last = false;
		}
	}
}

/* te_check turns the collected codings into 0 (framing is chunked), 400 or
 * 501. */
static uint16_t te_check(const struct te_codings *te)
{
	if (te->malformed || te->chunked_repeat || !te->chunked_last)
		return 400;
	if (te->unknown)
		return 501;
	return 0;
}

/* host_valid checks a Host value: uri-host [ ":" port ] bytes only, so that a
 * Host cannot smuggle a path, userinfo or whitespace (RFC 9112 section 3.2:
 * an invalid Host is a 400). */
static bool host_valid(const char *v, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!has_class(v[i], CL_HOST))
			return false;
	return true;
}

/*
 * parse_version parses "HTTP/" DIGIT "." DIGIT at p. Returns 0 with
 * *out_minor set for 1.0 and 1.1, SL_INCOMPLETE when the bytes so far could
 * still become a version, or SL_ERROR: 400 for a malformed version, 505 for a
 * well-formed one other than 1.0 and 1.1.
 */
static int parse_version(const char *p, const char *end, uint8_t *out_minor,
                         struct parse_error *err)
{
	if (SL_LIKELY(end - p >= 8) && memcmp(p, "HTTP/1.", 7) == 0 &&
	    (p[7] == '1' || p[7] == '0')) {
		*out_minor = (uint8_t)(p[7] - '0');
		return 0;
	}
	static const char pattern[8] = { 'H', 'T', 'T', 'P', '/', '0', '.', '0' }; /* '0': a digit */
	size_t avail = (size_t)SL_MIN(end - p, 8);
	for (size_t i = 0; i < avail; i++) {
		bool ok = pattern[i] == '0' ? has_class(p[i], CL_DIGIT) : p[i] == pattern[i];
		if (!ok)
			return fail(err, 400, "malformed HTTP version");
	}
	if (avail < 8)
		return SL_INCOMPLETE;
	return fail(err, 505, "HTTP version not supported");
}

/* parse_crlf expects CRLF at p: 0 (then p + 2 is next), SL_INCOMPLETE or
 * SL_ERROR with the given message. */
static int parse_crlf(const char *p, const char *end, struct parse_error *err,
                      const char *message)
{
	if (p == end)
		return SL_INCOMPLETE;
	if (*p != '\r')
		return fail(err, 400, message);
	if (p + 1 == end)
		return SL_INCOMPLETE;
	if (p[1] != '\n')
		return fail(err, 400, "bare CR");
	return 0;
}

/*
 * parse_headers parses field lines from *pp through the empty line that ends
 * the head, into headers[0..num_max). Returns 0 (*pp past the empty line,
 * *out_num set), SL_INCOMPLETE, or SL_ERROR (431 past num_max, else 400).
 */
static int parse_headers(const char **pp, const char *end, struct sl_http_header *headers,
                         uint32_t num_max, uint32_t *out_num, struct parse_error *err)
{
	const char *p = *pp;
	uint32_t num = 0;

	for (;;) {
		if (SL_UNLIKELY(p == end))
			return SL_INCOMPLETE;
		unsigned char c = (unsigned char)*p;
		if (SL_UNLIKELY(!has_class(c, CL_TCHAR))) {
			if (c == '\r') {
				if (p + 1 == end)
					return SL_INCOMPLETE;
				if (p[1] != '\n')
					return fail(err, 400, "bare CR");
				*pp = p + 2;
				*out_num = num;
				return 0;
			}
			if (is_ows(c))
				return fail(err, 400, "obsolete line folding or whitespace at line start");
			if (c == '\n')
				return fail(err, 400, "bare LF");
			if (c == ':')
				return fail(err, 400, "empty header name");
			return fail(err, 400, "invalid character in header name");
		}
		if (SL_UNLIKELY(num == num_max))
			return fail(err, 431, "too many header fields");

		const char *name = p;
		p = scan_token(p + 1, end);
		if (SL_UNLIKELY(p == end))
			return SL_INCOMPLETE;
		if (SL_UNLIKELY(*p != ':')) {
			if (is_ows(*p))
				return fail(err, 400, "whitespace between header name and colon");
			return fail(err, 400, "invalid character in header name");
		}
		uint32_t name_len = (uint32_t)(p - name);
		p++;
		while (p < end && is_ows(*p))
			p++;
		const char *value = p;
		p = scan_value(p, end);
		if (SL_UNLIKELY(p == end))
			return SL_INCOMPLETE;
		if (SL_UNLIKELY(*p != '\r')) {
			if (*p == '\n')
				return fail(err, 400, "bare LF");
			return fail(err, 400, "invalid character in header value");
		}
		if (SL_UNLIKELY(p + 1 == end))
			return SL_INCOMPLETE;
		if (SL_UNLIKELY(p[1] != '\n'))
			return fail(err, 400, "bare CR");
		const char *value_end = p;
		while (value_end > value && is_ows(value_end[-1]))
			value_end--;

		struct sl_http_header *h = &headers[num++];
		h->name = name;
		h->name_len = name_len;
		h->value = value;
		h->value_len = (uint32_t)(value_end - value);
		p += 2;
	}
}

/* The fields that decide framing and connection reuse, gathered from one
 * pass over the parsed headers. */
struct framing_fields {
	struct te_codings te;
	bool content_length_present;
	uint64_t content_length;
	bool connection_close;
	bool connection_keep_alive;
	bool expect_continue;
	uint32_t host_num;
};

/* collect_framing_fields fills *f from headers; for requests it also counts
 * and validates Host and reads Expect. Returns 0 or SL_ERROR (400). */
static int collect_framing_fields(const struct sl_http_header *headers, uint32_t num,
                                  bool is_request, struct framing_fields *f,
                                  struct parse_error *err)
{
	memset(f, 0, sizeof(*f));
	for (uint32_t i = 0; i < num; i++) {
		const struct sl_http_header *h = &headers[i];
		switch (h->name_len) {
		case 4:
			if (is_request && name_eq(h->name, "host", 4)) {
				if (++f->host_num > 1)
					return fail(err, 400, "more than one Host header");
				if (!host_valid(h->value, h->value_len))
					return fail(err, 400, "invalid Host header");
			}
			break;
		case 6:
			if (is_request && name_eq(h->name, "expect", 6) &&
			    list_has(h->value, h->value_len, "100-continue", 12))
				f->expect_continue = true;
			break;
		case 10:
			if (name_eq(h->name, "connection", 10)) {
				connection_options(h->value, h->value_len, &f->connection_close,
				                   &f->connection_keep_alive);
			}
			break;
		case 14:
			if (name_eq(h->name, "content-length", 14)) {
				uint64_t value;
				if (!parse_content_length(h->value, h->value_len, &value))
					return fail(err, 400, "invalid Content-Length");
				if (f->content_length_present && value != f->content_length)
					return fail(err, 400, "conflicting Content-Length headers");
				f->content_length_present = true;
				f->content_length = value;
			}
			break;
		case 17:
			if (name_eq(h->name, "transfer-encoding", 17))
				te_add(&f->te, h->value, h->value_len);
			break;
		}
	}
	return 0;
}

static enum sl_http_method method_from(const char *m, size_t len)
{
	switch (len) {
	case 3:
		if (memcmp(m, "GET", 3) == 0)
			return SL_METHOD_GET;
		if (memcmp(m, "PUT", 3) == 0)
			return SL_METHOD_PUT;
		break;
	case 4:
		if (memcmp(m, "POST", 4) == 0)
			return SL_METHOD_POST;
		if (memcmp(m, "HEAD", 4) == 0)
			return SL_METHOD_HEAD;
		break;
	case 5:
		if (memcmp(m, "PATCH", 5) == 0)
			return SL_METHOD_PATCH;
		if (memcmp(m, "TRACE", 5) == 0)
			return SL_METHOD_TRACE;
		break;
	case 6:
		if (memcmp(m, "DELETE", 6) == 0)
			return SL_METHOD_DELETE;
		break;
	case 7:
		if (memcmp(m, "OPTIONS", 7) == 0)
			return SL_METHOD_OPTIONS;
		if (memcmp(m, "CONNECT", 7) == 0)
			return SL_METHOD_CONNECT;
		break;
	}
	return SL_METHOD_OTHER;
}

/* parse_request parses a request head in [buf, end); end is already capped at
 * head_len_max. */
static ssize_t parse_request(const char *buf, const char *end, struct sl_http_request *req,
                             const struct sl_http_limits *limits, struct parse_error *err)
{
	const char *p = buf;
	int rc;

	/* RFC 9112 section 2.2: ignore empty lines before the request-line. */
	while (p < end && *p == '\r') {
		if (p + 1 == end)
			return SL_INCOMPLETE;
		if (p[1] != '\n')
			return fail(err, 400, "bare CR");
		p += 2;
	}
	if (p == end)
		return SL_INCOMPLETE;

	/* method SP */
	const char *method = p;
	p = scan_token(p, end);
	if (p == end)
		return SL_INCOMPLETE;
	if (p == method || *p != ' ')
		return fail(err, 400, "malformed request line");
	req->method_str = method;
	req->method_len = (uint32_t)(p - method);
	req->method = method_from(method, req->method_len);
	p++;

	/* request-target SP */
	const char *target = p;
	p = scan_target(p, end);
	if ((size_t)(p - target) > limits->target_len_max)
		return fail(err, 414, "request target too long");
	if (p == end)
		return SL_INCOMPLETE;
	if (p == target || *p != ' ')
		return fail(err, 400, "malformed request line");
	req->target = target;
	req->target_len = (uint32_t)(p - target);
	p++;

	/* HTTP-version CRLF */
	rc = parse_version(p, end, &req->version_minor, err);
	if (rc != 0)
		return rc;
	p += 8;
	rc = parse_crlf(p, end, err, "malformed request line");
	if (rc != 0)
		return rc;
	p += 2;

	rc = parse_headers(&p, end, req->headers, limits->num_headers_max, &req->num_headers, err);
	if (rc != 0)
		return rc;

	struct framing_fields f;
	if (collect_framing_fields(req->headers, req->num_headers, true, &f, err) != 0)
		return SL_ERROR;
	if (f.host_num == 0 && req->version_minor == 1)
		return fail(err, 400, "missing Host header");
	if (f.te.present) {
		if (req->version_minor == 0)
			return fail(err, 400, "Transfer-Encoding in an HTTP/1.0 request");
		if (f.content_length_present)
			return fail(err, 400, "both Transfer-Encoding and Content-Length");
		uint16_t status = te_check(&f.te);
		if (status == 501)
			return fail(err, 501, "unsupported transfer coding");
		if (status != 0)
			return fail(err, 400, "invalid Transfer-Encoding");
		req->framing = SL_BODY_CHUNKED;
	} else if (f.content_length_present) {
		req->framing = SL_BODY_LENGTH;
		req->content_length = f.content_length;
	}
	req->keep_alive = req->version_minor == 1 ? !f.connection_close
	                                          : f.connection_keep_alive && !f.connection_close;
	req->expect_continue = f.expect_continue;
	return p - buf;
}

ssize_t sl_http_parse_request(const char *buf, size_t len, struct sl_http_request *req,
                              const struct sl_http_limits *limits)
{
	SL_ASSERT(req != NULL && limits != NULL && (buf != NULL || len == 0));
	SL_ASSERT(req->headers != NULL || limits->num_headers_max == 0);

	struct parse_error err = { 0, NULL };
	size_t scan_len = SL_MIN(len, (size_t)limits->head_len_max);

	req->method = SL_METHOD_OTHER;
	req->method_str = NULL;
	req->method_len = 0;
	req->target = NULL;
	req->target_len = 0;
	req->version_minor = 0;
	req->num_headers = 0;
	req->framing = SL_BODY_NONE;
	req->content_length = 0;
	req->keep_alive = false;
	req->expect_continue = false;
	req->error_status = 0;
	req->error_message = NULL;

	ssize_t r = parse_request(buf, buf + scan_len, req, limits, &err);
	if (r == SL_INCOMPLETE && len > scan_len)
		r = fail(&err, 431, "request header section too large");
	if (r == SL_ERROR) {
		req->error_status = err.status;
		req->error_message = err.message;
	}
	SL_ASSERT_HOT(r == SL_ERROR || r == SL_INCOMPLETE || (size_t)r <= len);
	return r;
}

/* parse_response parses a response head in [buf, end); end is already capped
 * at head_len_max. */
static ssize_t parse_response(const char *buf, const char *end, struct sl_http_response *resp,
                              const struct sl_http_limits *limits,
                              enum sl_http_method request_method, struct parse_error *err)
{
	const char *p = buf;
	int rc;

	/* HTTP-version SP status-code [ SP reason-phrase ] CRLF */
	rc = parse_version(p, end, &resp->version_minor, err);
	if (rc != 0)
		return rc;
	p += 8;
	if (p == end)
		return SL_INCOMPLETE;
	if (*p != ' ')
		return fail(err, 400, "malformed status line");
	p++;
	for (int i = 0; i < 3; i++, p++) {
		if (p == end)
			return SL_INCOMPLETE;
		if (!has_class(*p, CL_DIGIT))
			return fail(err, 400, "malformed status code");
		resp->status = (uint16_t)(resp->status * 10 + (unsigned)(*p - '0'));
	}
	if (resp->status < 100 || resp->status > 599)
		return fail(err, 400, "status code out of range");
	if (p == end)
		return SL_INCOMPLETE;
	/* The SP before an empty reason is often left out; accept that. */
	if (*p == ' ') {
		p++;
		const char *reason = p;
		p = scan_value(p, end);
		resp->reason = reason;
		resp->reason_len = (uint32_t)(p - reason);
	} else {
		resp->reason = p;
	}
	rc = parse_crlf(p, end, err, "malformed status line");
	if (rc != 0)
		return rc;
	p += 2;

	rc = parse_headers(&p, end, resp->headers, limits->num_headers_max, &resp->num_headers,
	                   err);
	if (rc != 0)
		return rc;

	struct framing_fields f;
	if (collect_framing_fields(resp->headers, resp->num_headers, false, &f, err) != 0)
		return SL_ERROR;
	if (f.te.present) {
		if (f.content_length_present)
			return fail(err, 400, "both Transfer-Encoding and Content-Length");
		if (resp->version_minor == 0)
			return fail(err, 400, "Transfer-Encoding in an HTTP/1.0 response");
		if (te_check(&f.te) != 0)
			return fail(err, 400, "invalid or unsupported Transfer-Encoding");
	}

	unsigned status = resp->status;
	bool tunnel = request_method == SL_METHOD_CONNECT && status >= 200 && status < 300;
	if (status < 200 || status == 204 || status == 304 || request_method == SL_METHOD_HEAD ||
	    tunnel) {
		resp->framing = SL_BODY_NONE;
	} else if (f.te.present) {
		resp->framing = SL_BODY_CHUNKED;
	} else if (f.content_length_present) {
		resp->framing = SL_BODY_LENGTH;
		resp->content_length = f.content_length;
	} else {
		resp->framing = SL_BODY_UNTIL_CLOSE;
	}
	resp->keep_alive = resp->version_minor == 1
	                           ? !f.connection_close
	                           : f.connection_keep_alive && !f.connection_close;
	/* After these the connection no longer carries HTTP/1 messages. */
	if (resp->framing == SL_BODY_UNTIL_CLOSE || status == 101 || tunnel)
		resp->keep_alive = false;
	return p - buf;
}

ssize_t sl_http_parse_response(const char *buf, size_t len, struct sl_http_response *resp,
                               const struct sl_http_limits *limits,
                               enum sl_http_method request_method)
{
	SL_ASSERT(resp != NULL && limits != NULL && (buf != NULL || len == 0));
	SL_ASSERT(resp->headers != NULL || limits->num_headers_max == 0);

	struct parse_error err = { 0, NULL };
	size_t scan_len = SL_MIN(len, (size_t)limits->head_len_max);

	resp->version_minor = 0;
	resp->status = 0;
	resp->reason = NULL;
	resp->reason_len = 0;
	resp->num_headers = 0;
	resp->framing = SL_BODY_NONE;
	resp->content_length = 0;
	resp->keep_alive = false;
	resp->error_message = NULL;

	ssize_t r = parse_response(buf, buf + scan_len, resp, limits, request_method, &err);
	if (r == SL_INCOMPLETE && len > scan_len)
		r = fail(&err, 431, "response header section too large");
	if (r == SL_ERROR)
		resp->error_message = err.message;
	SL_ASSERT_HOT(r == SL_ERROR || r == SL_INCOMPLETE || (size_t)r <= len);
	return r;
}

/* Chunked decoder states (struct sl_chunked.state). Zero must be the start,
 * and only the start of a chunk-size line: sl_chunked_at_boundary() in
 * http1.h relies on state 0 meaning "between chunks". */
enum {
	CH_SIZE_FIRST = 0, /* before the first hex digit of a chunk-size line */
	CH_SIZE,           /* in chunk-size hex digits */
	CH_SIZE_BWS,       /* whitespace after the size: only ";" may follow */
	CH_EXT,            /* in chunk extensions, up to CR */
	CH_SIZE_LF,        /* CR of the size line seen */
	CH_DATA,           /* chunk_left data bytes to go */
	CH_DATA_CR,        /* expecting the CR after chunk data */
	CH_DATA_LF,        /* expecting the LF after chunk data */
	CH_TRAILER_LINE,   /* at the start of a trailer line (or the final CRLF) */
	CH_TRAILER_NAME,   /* in a trailer field name */
	CH_TRAILER_VALUE,  /* in a trailer field value, up to CR */
	CH_TRAILER_LF,     /* CR of a trailer line seen */
	CH_END_LF,         /* CR of the final empty line seen */
	CH_DONE,
	CH_FAILED,
};

void sl_chunked_init(struct sl_chunked *d)
{
	SL_ASSERT(d != NULL);
	memset(d, 0, sizeof(*d));
}

ssize_t sl_chunked_feed(struct sl_chunked *d, const char *buf, size_t len, char *data_out,
                        size_t *data_out_len)
{
	SL_ASSERT(d != NULL && (buf != NULL || len == 0));
	SL_ASSERT(d->state <= CH_FAILED);

	const char *p = buf, *end = buf + len;
	size_t out_len = 0;
	unsigned state = d->state;
	uint64_t left = d->chunk_left;
	uint32_t overhead_len = d->overhead_len;
	ssize_t result;

	if (state == CH_FAILED) {
		result = SL_ERROR;
		goto out;
	}
	while (p < end && state != CH_DONE) {
		if (state == CH_DATA) {
			size_t n = (size_t)SL_MIN((uint64_t)(end - p), left);
			if (data_out != NULL && data_out + out_len != p)
				memmove(data_out + out_len, p, n); /* out trails in: safe in place */
			out_len += n;
			p += n;
			left -= n;
			if (left == 0)
				state = CH_DATA_CR;
			continue;
		}

		unsigned char c = (unsigned char)*p++;
		uint8_t hex;
		/* one bound for the size line and for the trailer section: the
		 * counter restarts when either begins */
		if (SL_UNLIKELY(++overhead_len > CHUNK_LINE_LEN_MAX))
			goto failed;
		switch (state) {
		case CH_SIZE_FIRST:
			hex = hex_value[c];
			if (hex == 0xff)
				goto failed;
			left = hex;
			state = CH_SIZE;
			break;
		case CH_SIZE:
			hex = hex_value[c];
			if (hex != 0xff) {
				/* overhead_len counts the digits so far: the line starts with them */
				if (overhead_len > CHUNK_SIZE_DIGITS_MAX)
					goto failed;
				left = left << 4 | hex;
				if (left > CHUNK_SIZE_MAX)
					goto failed;
			} else if (c == '\r') {
				state = CH_SIZE_LF;
			} else if (c == ';') {
				state = CH_EXT;
			} else if (is_ows(c)) {
				state = CH_SIZE_BWS;
			} else {
				goto failed;
			}
			break;
		case CH_SIZE_BWS:
			if (c == ';')
				state = CH_EXT;
			else if (!is_ows(c))
				goto failed;
			break;
		case CH_EXT:
			/* chunk-ext: any field-value bytes; ignored, but no CTL and no
			 * bare LF, so no reader can end the line elsewhere */
			if (c == '\r')
				state = CH_SIZE_LF;
			else if (!has_class(c, CL_VALUE))
				goto failed;
			break;
		case CH_SIZE_LF:
			if (c != '\n')
				goto failed;
			state = left == 0 ? CH_TRAILER_LINE : CH_DATA;
			overhead_len = 0;
			break;
		case CH_DATA_CR:
			if (c != '\r')
				goto failed;
			state = CH_DATA_LF;
			break;
		case CH_DATA_LF:
			if (c != '\n')
				goto failed;
			state = CH_SIZE_FIRST;
			overhead_len = 0;
			break;
		case CH_TRAILER_LINE:
			if (c == '\r')
				state = CH_END_LF;
			else if (has_class(c, CL_TCHAR))
				state = CH_TRAILER_NAME;
			else
				goto failed; /* obs-fold, bare LF, empty name, CTL */
			break;
		case CH_TRAILER_NAME:
			if (c == ':')
				state = CH_TRAILER_VALUE;
			else if (!has_class(c, CL_TCHAR))
				goto failed;
			break;
		case CH_TRAILER_VALUE:
			if (c == '\r')
				state = CH_TRAILER_LF;
			else if (!has_class(c, CL_VALUE))
				goto failed;
			break;
		case CH_TRAILER_LF:
			if (c != '\n')
				goto failed;
			state = CH_TRAILER_LINE;
			break;
		case CH_END_LF:
			if (c != '\n')
				goto failed;
			state = CH_DONE;
			d->complete = true;
			break;
		default:
			SL_ASSERT(!"unreachable chunked state");
		}
	}
	result = p - buf;
	goto out;

failed:
	state = CH_FAILED;
	result = SL_ERROR;
out:
	d->state = (uint8_t)state;
	d->chunk_left = state == CH_FAILED ? 0 : left;
	d->overhead_len = overhead_len;
	if (data_out_len != NULL)
		*data_out_len = out_len;
	return result;
}

const struct sl_http_header *sl_http_find_header(const struct sl_http_header *headers,
                                                 size_t num_headers, const char *name,
                                                 size_t name_len)
{
	for (size_t i = 0; i < num_headers; i++)
		if (headers[i].name_len == name_len &&
		    sl_ascii_ieq(headers[i].name, name, name_len))
			return &headers[i];
	return NULL;
}

const char *sl_http_status_reason(unsigned status)
{
	switch (status) {
	case 100: return "Continue";
	case 101: return "Switching Protocols";
	case 102: return "Processing";
	case 103: return "Early Hints";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 203: return "Non-Authoritative Information";
	case 204: return "No Content";
	case 205: return "Reset Content";
	case 206: return "Partial Content";
	case 207: return "Multi-Status";
	case 208: return "Already Reported";
	case 226: return "IM Used";
	case 300: return "Multiple Choices";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 303: return "See Other";
	case 304: return "Not Modified";
	case 305: return "Use Proxy";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 402: return "Payment Required";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 406: return "Not Acceptable";
	case 407: return "Proxy Authentication Required";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 410: return "Gone";
	case 411: return "Length Required";
	case 412: return "Precondition Failed";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 416: return "Range Not Satisfiable";
	case 417: return "Expectation Failed";
	case 421: return "Misdirected Request";
	case 422: return "Unprocessable Content";
	case 423: return "Locked";
	case 424: return "Failed Dependency";
	case 425: return "Too Early";
	case 426: return "Upgrade Required";
	case 428: return "Precondition Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 451: return "Unavailable For Legal Reasons";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	case 506: return "Variant Also Negotiates";
	case 507: return "Insufficient Storage";
	case 508: return "Loop Detected";
	case 510: return "Not Extended";
	case 529: return "Site Overloaded"; /* Anthropic: overloaded_error */
	case 511: return "Network Authentication Required";
	default: return "Unknown";
	}
}
