/*
 * router.c - route table and the top-level "model" scan (see router.h).
 */
#include "sluice/router.h"

#include <errno.h>
#include <string.h>

struct route_entry {
	const char *suffix;
	uint8_t suffix_len;
	enum sl_route route;
	enum sl_format format;
	bool is_post;
};

#define R(s, r, f, p) { s, sizeof(s) - 1, r, f, p }
static const struct route_entry routes[] = {
	R("/chat/completions", SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_OPENAI, true),
	R("/messages", SL_ROUTE_MESSAGES, SL_FORMAT_ANTHROPIC, true),
	R("/messages/count_tokens", SL_ROUTE_COUNT_TOKENS, SL_FORMAT_ANTHROPIC, true),
	R("/completions", SL_ROUTE_COMPLETIONS, SL_FORMAT_OPENAI, true),
	R("/embeddings", SL_ROUTE_EMBEDDINGS, SL_FORMAT_OPENAI, true),
	R("/images/generations", SL_ROUTE_IMAGES_GENERATIONS, SL_FORMAT_OPENAI, true),
	R("/responses", SL_ROUTE_RESPONSES, SL_FORMAT_OPENAI, true),
	R("/models", SL_ROUTE_MODELS, SL_FORMAT_OPENAI, false),
};
#undef R

static bool has_prefix(const char *s, size_t len, const char *p, size_t plen)
{
	return len >= plen && memcmp(s, p, plen) == 0;
}

enum sl_route sl_router_match(const char *target, size_t len, struct sl_route_match *out)
{
	*out = (struct sl_route_match){ .route = SL_ROUTE_NONE, .format = SL_FORMAT_OPENAI };
	const char *q = memchr(target, '?', len);
	size_t path_len = q ? (size_t)(q - target) : len;
	if (q)
		out->query = (struct sl_str){ q, len - path_len };

	if (path_len == 8 && memcmp(target, "/healthz", 8) == 0) {
		out->route = SL_ROUTE_HEALTH;
		return out->route;
	}
	size_t skip;
	if (has_prefix(target, path_len, "/v1/", 4))
		skip = 3;
	else if (has_prefix(target, path_len, "/openai/v1/", 11))
		skip = 10;
	else if (has_prefix(target, path_len, "/api/v1/", 8))
		skip = 7;
	else
		return SL_ROUTE_NONE;

	const char *suffix = target + skip;
	size_t suffix_len = path_len - skip;
	/* An Anthropic client that hits a wrong path still gets its own shape. */
	if (has_prefix(suffix, suffix_len, "/messages", 9))
		out->format = SL_FORMAT_ANTHROPIC;
	for (size_t i = 0; i < SL_ARRAY_LEN(routes); i++) {
		const struct route_entry *e = &routes[i];
		if (suffix_len == e->suffix_len && memcmp(suffix, e->suffix, suffix_len) == 0) {
			out->route = e->route;
			out->format = e->format;
			out->is_post = e->is_post;
			out->suffix = (struct sl_str){ suffix, suffix_len };
			return out->route;
		}
	}
	if (suffix_len > 8 && memcmp(suffix, "/models/", 8) == 0 &&
	    memchr(suffix + 8, '/', suffix_len - 8) == NULL) {
		out->route = SL_ROUTE_MODEL;
		out->suffix = (struct sl_str){ suffix, suffix_len };
		out->model_id = (struct sl_str){ suffix + 8, suffix_len - 8 };
	}
	return out->route;
}

const char *sl_route_name(enum sl_route route)
{
	static const char *const names[] = {
		[SL_ROUTE_NONE] = "none",
		[SL_ROUTE_CHAT_COMPLETIONS] = "chat_completions",
		[SL_ROUTE_COMPLETIONS] = "completions",
		[SL_ROUTE_EMBEDDINGS] = "embeddings",
		[SL_ROUTE_IMAGES_GENERATIONS] = "images_generations",
		[SL_ROUTE_RESPONSES] = "responses",
		[SL_ROUTE_MESSAGES] = "messages",
		[SL_ROUTE_COUNT_TOKENS] = "count_tokens",
		[SL_ROUTE_MODELS] = "models",
		[SL_ROUTE_MODEL] = "model",
		[SL_ROUTE_HEALTH] = "health",
	};
	return (unsigned)route < SL_ARRAY_LEN(names) ? names[route] : "none";
}

/* --- the top-level scan ------------------------------------------------ */

#define JSON_SCAN_DEPTH_MAX 512

/* bytes that matter while skipping a nested value */
static const bool structural[256] = {
	['"'] = true, ['{'] = true, ['['] = true, ['}'] = true, [']'] = true,
};

static size_t skip_ws(const char *s, size_t i, size_t len)
{
	while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	return i;
}

/* Skips a string whose opening quote is at s[i]; returns the index after the
 * closing quote or (size_t)-1. Sets *escaped when a backslash occurs. Long
 * runs of text move with memchr; the contents are not validated (control
 * bytes are the upstream's to refuse), except the model's, by the caller. */
static size_t skip_string(const char *s, size_t i, size_t len, bool *escaped)
{
	SL_ASSERT_HOT(s[i] == '"');
	i++;
	for (;;) {
		const char *q = i < len ? memchr(s + i, '"', len - i) : NULL;
		if (!q)
			return (size_t)-1;
		size_t end = (size_t)(q - s);
		/* a backslash before the quote may escape it */
		const char *bs = memchr(s + i, '\\', end - i);
		if (!bs)
			return end + 1;
		*escaped = true;
		i = (size_t)(bs - s) + 2; /* skip the escaped byte, which may be '"' */
		if (i > len)
			return (size_t)-1;
	}
}

/* Skips any JSON value starting at s[i] (after whitespace). Nested arrays and
 * objects are skipped by bracket counting; strings are honoured so brackets
 * inside them do not count. Returns the index after the value or -1. This is
 * not a validator: the upstream validates what it is sent. */
static size_t skip_value(const char *s, size_t i, size_t len)
{
	if (i >= len)
		return (size_t)-1;
	char c = s[i];
	if (c == '"') {
		bool esc = false;
		return skip_string(s, i, len, &esc);
	}
	if (c == '{' || c == '[') {
		unsigned depth = 0;
		for (; i < len; i++) {
			while (i < len && !structural[(unsigned char)s[i]])
				i++;
			if (i >= len)
				break;
			c = s[i];
			if (c == '"') {
				bool esc = false;
				i = skip_string(s, i, len, &esc);
				if (i == (size_t)-1)
					return i;
				i--;
			} else if (c == '{' || c == '[') {
				if (++depth > JSON_SCAN_DEPTH_MAX)
					return (size_t)-1;
			} else if (c == '}' || c == ']') {
				if (--depth == 0)
					return i + 1;
			}
		}
		return (size_t)-1;
	}
	/* number, true, false, null: up to a delimiter */
	size_t start = i;
	while (i < len && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' &&
	       s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
		i++;
	return i > start ? i : (size_t)-1;
}

int sl_json_find_model(const char *body, size_t len, size_t *out_start, size_t *out_end,
                       bool *out_escaped)
{
	size_t i = skip_ws(body, 0, len);
	if (i >= len || body[i] != '{')
		return SL_ERROR;
	bool found = false, not_string = false;
	i = skip_ws(body, i + 1, len);
	if (i < len && body[i] == '}')
		goto end_object;
	for (;;) {
		if (i >= len || body[i] != '"')
			return SL_ERROR;
		bool key_escaped = false;
		size_t key_start = i + 1;
		size_t key_after = skip_string(body, i, len, &key_escaped);
		if (key_after == (size_t)-1)
			return SL_ERROR;
		size_t key_len = key_after - 1 - key_start;
		bool is_model;
		if (!key_escaped) {
			is_model = key_len == 5 && memcmp(body + key_start, "model", 5) == 0;
		} else {
			char tmp[16];
			ssize_t n = key_len <= 6 * 5 + 8
			                    ? sl_json_unescape_string(body + key_start, key_len, tmp,
			                                              sizeof tmp)
			                    : SL_ERROR;
			is_model = n == 5 && memcmp(tmp, "model", 5) == 0;
		}
		i = skip_ws(body, key_after, len);
		if (i >= len || body[i] != ':')
			return SL_ERROR;
		i = skip_ws(body, i + 1, len);
		size_t value_after = skip_value(body, i, len);
		if (value_after == (size_t)-1)
			return SL_ERROR;
		if (is_model) {
			if (found || not_string)
				return SL_ERROR; /* duplicate "model" */
			if (body[i] == '"') {
				bool esc = false;
				(void)skip_string(body, i, len, &esc);
				for (size_t k = i + 1; k < value_after - 1; k++)
					if ((unsigned char)body[k] < 0x20)
						return SL_ERROR;
				*out_start = i + 1;
				*out_end = value_after - 1;
				*out_escaped = esc;
				found = true;
			} else {
				not_string = true;
			}
		}
		i = skip_ws(body, value_after, len);
		if (i < len && body[i] == ',') {
			i = skip_ws(body, i + 1, len);
			continue;
		}
		if (i < len && body[i] == '}')
			break;
		return SL_ERROR;
	}
end_object:
	if (skip_ws(body, i + 1, len) != len)
		return SL_ERROR;
	if (not_string)
		return -EINVAL;
	return found ? 0 : -ENOENT;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static long read_u16_escape(const char *in, size_t i, size_t len)
{
	if (i + 4 > len)
		return -1;
	long v = 0;
	for (int k = 0; k < 4; k++) {
		int h = hex_value(in[i + k]);
		if (h < 0)
			return -1;
		v = v << 4 | h;
	}
	return v;
}

ssize_t sl_json_unescape_string(const char *in, size_t len, char *out, size_t out_cap)
{
	size_t o = 0;
	for (size_t i = 0; i < len;) {
		unsigned char c = (unsigned char)in[i];
		if (c < 0x20)
			return SL_ERROR;
		if (c != '\\') {
			if (o >= out_cap)
				return SL_ERROR;
			out[o++] = (char)c;
			i++;
			continue;
		}
		if (++i >= len)
			return SL_ERROR;
		char e = in[i++];
		unsigned long cp;
		switch (e) {
		case '"': cp = '"'; break;
		case '\\': cp = '\\'; break;
		case '/': cp = '/'; break;
		case 'b': cp = '\b'; break;
		case 'f': cp = '\f'; break;
		case 'n': cp = '\n'; break;
		case 'r': cp = '\r'; break;
		case 't': cp = '\t'; break;
		case 'u': {
			long hi = read_u16_escape(in, i, len);
			if (hi < 0)
				return SL_ERROR;
			i += 4;
			cp = (unsigned long)hi;
			if (hi >= 0xDC00 && hi <= 0xDFFF)
				return SL_ERROR; /* lone low surrogate */
			if (hi >= 0xD800 && hi <= 0xDBFF) {
				if (i + 6 > len || in[i] != '\\' || in[i + 1] != 'u')
					return SL_ERROR;
				long lo = read_u16_escape(in, i + 2, len);
				if (lo < 0xDC00 || lo > 0xDFFF)
					return SL_ERROR;
				i += 6;
				cp = 0x10000 + (((unsigned long)hi - 0xD800) << 10) +
				     ((unsigned long)lo - 0xDC00);
			}
			break;
		}
		default:
			return SL_ERROR;
		}
		/* UTF-8 encode cp */
		unsigned char buf[4];
		size_t n;
		if (cp < 0x80) {
			buf[0] = (unsigned char)cp;
			n = 1;
		} else if (cp < 0x800) {
			buf[0] = (unsigned char)(0xC0 | cp >> 6);
			buf[1] = (unsigned char)(0x80 | (cp & 0x3F));
			n = 2;
		} else if (cp < 0x10000) {
			buf[0] = (unsigned char)(0xE0 | cp >> 12);
			buf[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
			buf[2] = (unsigned char)(0x80 | (cp & 0x3F));
			n = 3;
		} else {
			buf[0] = (unsigned char)(0xF0 | cp >> 18);
			buf[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
			buf[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
			buf[3] = (unsigned char)(0x80 | (cp & 0x3F));
			n = 4;
		}
		if (out_cap - o < n)
			return SL_ERROR;
		memcpy(out + o, buf, n);
		o += n;
	}
	return (ssize_t)o;
}
