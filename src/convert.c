/*
 * convert.c - OpenAI <-> Anthropic conversion of requests, non-streaming
 * responses and errors; the local token estimate for count_tokens. The SSE
 * stream transcoders live in transcode.c.
 *
 * Every conversion builds a new tree in the request's arena and shares the
 * input's subtrees (tool schemas, texts, image data) instead of copying
 * them. The mapping tables and every documented choice (what is dropped,
 * what is refused with a 400, non-standard fields) are in docs/convert.md;
 * the comments here say why where the code alone would not.
 *
 * Internally the OpenAI Chat Completions shape is the pivot: a Responses or
 * legacy Completions request is first turned into a chat request, which then
 * goes out as is (OpenAI-format upstream) or through the chat -> Messages
 * converter; a Messages response going to a Responses or legacy client is
 * first turned into a chat.completion. The pivot carries everything the
 * outer formats need (reasoning signatures, cache-write tokens) in the
 * non-standard fields documented in docs/convert.md.
 *
 * Errors: a converter returns NULL after recording the first error message
 * in struct cv (a 400 for requests, a 502 for responses). Arena exhaustion
 * is recorded separately (cv.oom) and reported once at the end.
 */
#include "sluice/convert.h"

#include <stdarg.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Anthropic requires max_tokens: the last fallback when neither the client
 * nor the model config gives one. */
#define CONVERT_MAX_TOKENS_DEFAULT 4096

/* reasoning_effort <-> thinking.budget_tokens (docs/convert.md). */
#define BUDGET_LOW_TOKENS 1024
#define BUDGET_MEDIUM_TOKENS 8192
#define BUDGET_HIGH_TOKENS 24576
#define BUDGET_XHIGH_TOKENS 32768
#define BUDGET_MIN_TOKENS 1024 /* Anthropic's minimum budget */
#define EFFORT_LOW_BELOW_TOKENS 4096
#define EFFORT_MEDIUM_BELOW_TOKENS 16384
/* Each effort's budget maps back to the same effort. */
_Static_assert(BUDGET_LOW_TOKENS < EFFORT_LOW_BELOW_TOKENS &&
               EFFORT_LOW_BELOW_TOKENS <= BUDGET_MEDIUM_TOKENS &&
               BUDGET_MEDIUM_TOKENS < EFFORT_MEDIUM_BELOW_TOKENS &&
               EFFORT_MEDIUM_BELOW_TOKENS <= BUDGET_HIGH_TOKENS,
               "reasoning_effort -> budget -> reasoning_effort must round-trip");

/* Prefix of a Responses reasoning item's encrypted_content that carries an
 * Anthropic redacted_thinking block instead of a thinking signature (base64
 * signatures never contain ':'). */
#define REDACTED_PREFIX "redacted:"

/* Upstream error text copied into a client error body, at most. */
#define ERROR_MESSAGE_BYTES_MAX 2048

struct cv {
	struct sl_arena *a;
	const char *err; /* first error; NULL while all is well */
	bool oom;        /* an arena allocation failed */
};

/* --- reading ---------------------------------------------------------------------------- */

static struct sl_json *share(const struct sl_json *v)
{
	return (struct sl_json *)v; /* input trees are immutable and may be shared */
}

static bool is_obj(const struct sl_json *v)
{
	return v && v->type == SL_JSON_OBJECT;
}

static bool is_arr(const struct sl_json *v)
{
	return v && v->type == SL_JSON_ARRAY;
}

static bool is_str(const struct sl_json *v)
{
	return v && v->type == SL_JSON_STRING;
}

static bool is_num(const struct sl_json *v)
{
	return v && v->type == SL_JSON_NUMBER;
}

static bool is_absent(const struct sl_json *v)
{
	return !v || v->type == SL_JSON_NULL;
}

static bool is_true(const struct sl_json *v)
{
	return v && v->type == SL_JSON_TRUE;
}

static struct sl_json *get(const struct sl_json *o, const char *key)
{
	return is_obj(o) ? sl_json_get(o, key) : NULL;
}

static bool type_is(const struct sl_json *o, const char *type)
{
	return sl_json_is_str(get(o, "type"), type);
}

/* An integer member, or dflt when absent or not an integer. */
static int64_t get_int(const struct sl_json *o, const char *key, int64_t dflt)
{
	int64_t n;
	return is_obj(o) && sl_json_get_int(o, key, &n) ? n : dflt;
}

/* JSON whitespace (strchr would also match the NUL byte). */
static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

static bool str_nonempty(const struct sl_json *v)
{
	return is_str(v) && v->len > 0;
}

static bool has_prefix(const struct sl_json *s, const char *prefix)
{
	size_t n = strlen(prefix);
	return is_str(s) && s->len >= n && memcmp(s->u.str, prefix, n) == 0;
}

/* Length of s clipped to at most max bytes on a UTF-8 character boundary,
 * for quoting client text in messages. */
static int clip_utf8(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return (int)len;
	size_t n = max;
	while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
		n--;
	return (int)n;
}

/* --- errors ------------------------------------------------------------------------------ */

/* cv_fail records the first error (formatted into the arena) and returns
 * NULL so converters can `return cv_fail(...)`. */
SL_PRINTF(2, 3) static void *cv_fail(struct cv *c, const char *fmt, ...)
{
	if (c->err)
		return NULL;
	char text[320];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	size_t len = (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
	len = (size_t)clip_utf8(text, len, len); /* vsnprintf may cut a character */
	char *m = sl_arena_memdup(c->a, text, len);
	c->err = m ? m : "invalid request (conversion memory exhausted)";
	return NULL;
}

/* A client string quoted in a message: "%.*s" arguments. */
#define QUOTE(v) clip_utf8(is_str(v) ? (v)->u.str : "", is_str(v) ? (v)->len : 0, 60), \
	(is_str(v) ? (v)->u.str : "")

/* --- building ------------------------------------------------------------------------------ */

static struct sl_json *oom_check(struct cv *c, struct sl_json *v)
{
	if (!v)
		c->oom = true;
	return v;
}

static struct sl_json *mk_obj(struct cv *c)
{
	return oom_check(c, sl_json_object(c->a));
}

static struct sl_json *mk_arr(struct cv *c)
{
	return oom_check(c, sl_json_array(c->a));
}

/* A string that points at s (a literal, arena or input memory, NUL after it). */
static struct sl_json *mk_ref(struct cv *c, const char *s, size_t len)
{
	return oom_check(c, sl_json_str_ref(c->a, s, len));
}

/* lit must be a string literal (the "" concatenation checks it). */
#define mk_lit(c, lit) mk_ref((c), "" lit "", sizeof(lit) - 1)

static struct sl_json *mk_copy(struct cv *c, const char *s, size_t len)
{
	return oom_check(c, sl_json_str(c->a, s, len));
}

static struct sl_json *mk_int(struct cv *c, int64_t n)
{
	return oom_check(c, sl_json_int(c->a, n));
}

static struct sl_json *mk_bool(struct cv *c, bool b)
{
	return oom_check(c, sl_json_bool(c->a, b));
}

static struct sl_json *mk_null(struct cv *c)
{
	return oom_check(c, sl_json_null(c->a));
}

static struct sl_json *mk_raw(struct cv *c, const char *text)
{
	return oom_check(c, sl_json_raw(c->a, text, strlen(text)));
}

/* put appends key: v to o; a NULL o or v (an earlier failure) is absorbed. */
static void put(struct cv *c, struct sl_json *o, const char *key, const struct sl_json *v)
{
	if (!o || !v || !sl_json_set(c->a, o, key, share(v)))
		c->oom = true;
}

static void add(struct cv *c, struct sl_json *arr, const struct sl_json *v)
{
	if (!arr || !v || !sl_json_push(c->a, arr, share(v)))
		c->oom = true;
}

#define put_lit(c, o, key, lit) put((c), (o), (key), mk_lit((c), lit))

/* put_if copies member key of from into to, when present and not null. */
static void put_if(struct cv *c, struct sl_json *to, const char *key, const struct sl_json *from,
                   const char *from_key)
{
	const struct sl_json *v = get(from, from_key);
	if (!is_absent(v))
		put(c, to, key, v);
}

/* cat joins a[0..n) (strings) with sep into one arena string. */
static struct sl_json *cat(struct cv *c, struct sl_json *const *a, uint32_t n, const char *sep)
{
	size_t sep_len = strlen(sep), len = 0;
	for (uint32_t i = 0; i < n; i++)
		len += a[i]->len + (i ? sep_len : 0);
	char *p = sl_arena_alloc(c->a, len + 1);
	if (!p) {
		c->oom = true;
		return NULL;
	}
	size_t off = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (i) {
			memcpy(p + off, sep, sep_len);
			off += sep_len;
		}
		memcpy(p + off, a[i]->u.str, a[i]->len);
		off += a[i]->len;
	}
	p[off] = '\0';
	return mk_ref(c, p, off);
}

/* cat3 builds s1 + s2 + s3 (byte ranges) as one arena string. */
static struct sl_json *cat3(struct cv *c, const char *s1, size_t n1, const char *s2, size_t n2,
                            const char *s3, size_t n3)
{
	char *p = sl_arena_alloc(c->a, n1 + n2 + n3 + 1);
	if (!p) {
		c->oom = true;
		return NULL;
	}
	memcpy(p, s1, n1);
	memcpy(p + n1, s2, n2);
	memcpy(p + n1 + n2, s3, n3);
	p[n1 + n2 + n3] = '\0';
	return mk_ref(c, p, n1 + n2 + n3);
}

/*
 * Client-facing ids are built as the stream transcoder builds them, so a
 * client sees the same shape streamed or not: the upstream id without its
 * format prefix ("chatcmpl-", "msg_", "resp_", "cmpl-"), reduced to
 * [A-Za-z0-9_-] and 64 bytes (else the request id, else "0"), after the
 * client format's prefix: "msg_X", "chatcmpl-X", "resp_X", "cmpl-X"; items
 * "msg_X_N", "fc_X_N", "rs_X_N"; missing tool ids "toolu_X_N" / "call_X_N".
 */
#define BASE_ID_BYTES_MAX 64

static size_t base_id(const struct sl_convert_ctx *ctx, const struct sl_json *in, char *out)
{
	static const char *const prefixes[] = { "chatcmpl-", "msg_", "resp_", "cmpl-" };
	const struct sl_json *idv = get(in, "id");
	const char *id = is_str(idv) ? idv->u.str : NULL;
	size_t len = is_str(idv) ? idv->len : 0, n = 0;
	for (size_t i = 0; id && i < SL_ARRAY_LEN(prefixes); i++) {
		size_t pl = strlen(prefixes[i]);
		if (len > pl && memcmp(id, prefixes[i], pl) == 0) {
			id += pl;
			len -= pl;
			break;
		}
	}
	for (int pass = 0; pass < 2 && n == 0; pass++) {
		if (pass == 1) {
			id = ctx->request_id;
			len = id ? strlen(id) : 0;
		}
		for (size_t i = 0; id && i < len && n < BASE_ID_BYTES_MAX; i++) {
			unsigned char ch = (unsigned char)id[i];
			if ((ch | 0x20) - 'a' < 26u || ch - '0' < 10u || ch == '_' || ch == '-')
				out[n++] = (char)ch;
		}
	}
	if (n == 0)
		out[n++] = '0';
	out[n] = '\0';
	return n;
}

/* prefix + base id (+ "_" + index when index >= 0). */
static struct sl_json *client_id(struct cv *c, const struct sl_convert_ctx *ctx,
                                 const struct sl_json *in, const char *prefix, int64_t index)
{
	char base[BASE_ID_BYTES_MAX + 1], text[BASE_ID_BYTES_MAX + 48];
	base_id(ctx, in, base);
	int n = index >= 0 ? snprintf(text, sizeof text, "%s%s_%lld", prefix, base, (long long)index)
	                   : snprintf(text, sizeof text, "%s%s", prefix, base);
	return mk_copy(c, text, n > 0 ? (size_t)n : 0);
}

static struct sl_json *mk_text_block(struct cv *c, const struct sl_json *text)
{
	struct sl_json *b = mk_obj(c);
	put_lit(c, b, "type", "text");
	put(c, b, "text", text);
	return b;
}

/* The number text of v compared with a limit, for clamping temperature
 * without re-formatting the client's number. */
static bool number_above(const struct sl_json *v, double limit)
{
	char text[64];
	if (!is_num(v) || v->len >= sizeof text)
		return false;
	memcpy(text, v->u.str, v->len);
	text[v->len] = '\0';
	return strtod(text, NULL) > limit;
}

/* --- shared pieces ------------------------------------------------------------------------ */

/*
 * One reasoning segment of an assistant turn: an Anthropic thinking block
 * (text + signature) or redacted_thinking block (data), an OpenAI-side
 * reasoning_details entry, or a Responses reasoning item.
 */
struct reasoning {
	const struct sl_json *text;      /* string or NULL */
	const struct sl_json *signature; /* string or NULL */
	const struct sl_json *data;      /* redacted: the opaque data */
};

/*
 * reasoning_from_chat reads the reasoning of an OpenAI-side assistant message
 * (request history or response): reasoning_details when present (exact
 * segments), else reasoning_content (or "reasoning", as some hosts name it)
 * plus reasoning_signature. Returns the number of segments in *out (arena).
 */
static uint32_t reasoning_from_chat(struct cv *c, const struct sl_json *msg, struct reasoning **out)
{
	*out = NULL;
	const struct sl_json *blocks = get(msg, "thinking_blocks");
	if (is_arr(blocks) && blocks->len > 0) {
		struct reasoning *r = sl_arena_alloc(c->a, blocks->len * sizeof *r);
		if (!r) {
			c->oom = true;
			return 0;
		}
		uint32_t n = 0;
		for (uint32_t i = 0; i < blocks->len; i++) {
			const struct sl_json *b = blocks->u.items[i];
			const struct sl_json *t = get(b, "thinking"), *s = get(b, "signature");
			if (type_is(b, "redacted_thinking") && is_str(get(b, "data")))
				r[n++] = (struct reasoning){ NULL, NULL, get(b, "data") };
			else if (type_is(b, "thinking"))
				r[n++] = (struct reasoning){ is_str(t) ? t : NULL, is_str(s) ? s : NULL, NULL };
		}
		*out = r;
		return n;
	}
	const struct sl_json *details = get(msg, "reasoning_details");
	if (is_arr(details) && details->len > 0) {
		struct reasoning *r = sl_arena_alloc(c->a, details->len * sizeof *r);
		if (!r) {
			c->oom = true;
			return 0;
		}
		uint32_t n = 0;
		for (uint32_t i = 0; i < details->len; i++) {
			const struct sl_json *d = details->u.items[i];
			if (type_is(d, "reasoning.encrypted") && is_str(get(d, "data"))) {
				r[n++] = (struct reasoning){ NULL, NULL, get(d, "data") };
			} else if (type_is(d, "reasoning.text")) {
				const struct sl_json *t = get(d, "text"), *s = get(d, "signature");
				r[n++] = (struct reasoning){ is_str(t) ? t : NULL, is_str(s) ? s : NULL,
				                             NULL };
			} else if (type_is(d, "reasoning.summary") && is_str(get(d, "summary"))) {
				r[n++] = (struct reasoning){ get(d, "summary"), NULL, NULL };
			}
		}
		*out = r;
		return n;
	}
	const struct sl_json *text = get(msg, "reasoning_content");
	if (!is_str(text))
		text = get(msg, "reasoning");
	const struct sl_json *sig = get(msg, "reasoning_signature");
	if (!is_str(text) && !is_str(sig))
		return 0;
	struct reasoning *r = sl_arena_alloc(c->a, sizeof *r);
	if (!r) {
		c->oom = true;
		return 0;
	}
	*r = (struct reasoning){ is_str(text) ? text : NULL, is_str(sig) ? sig : NULL, NULL };
	*out = r;
	return 1;
}

/* An Anthropic thinking / redacted_thinking block for one segment. */
static struct sl_json *reasoning_block(struct cv *c, const struct reasoning *r)
{
	struct sl_json *b = mk_obj(c);
	if (r->data) {
		put_lit(c, b, "type", "redacted_thinking");
		put(c, b, "data", r->data);
		return b;
	}
	put_lit(c, b, "type", "thinking");
	put(c, b, "thinking", r->text ? r->text : mk_lit(c, ""));
	put(c, b, "signature", r->signature ? r->signature : mk_lit(c, ""));
	return b;
}

/*
 * reasoning_to_chat sets the OpenAI-side reasoning fields of msg from
 * r[0..n): reasoning_content (texts joined by a blank line), the last
 * signature as reasoning_signature, and thinking_blocks (LiteLLM's shape:
 * the exact Anthropic blocks, as the stream transcoder emits them) always
 * when all_blocks, else only when the two fields cannot say it all
 * (several segments, or redacted ones).
 */
static void reasoning_to_chat(struct cv *c, struct sl_json *msg, const struct reasoning *r,
                              uint32_t n, bool all_blocks)
{
	if (n == 0)
		return;
	struct sl_json **texts = sl_arena_alloc(c->a, n * sizeof *texts);
	if (!texts) {
		c->oom = true;
		return;
	}
	uint32_t num_texts = 0;
	const struct sl_json *sig = NULL;
	bool redacted = false;
	for (uint32_t i = 0; i < n; i++) {
		if (r[i].data) {
			redacted = true;
			continue;
		}
		if (r[i].text)
			texts[num_texts++] = share(r[i].text);
		if (str_nonempty(r[i].signature))
			sig = r[i].signature;
	}
	if (num_texts == 1)
		put(c, msg, "reasoning_content", texts[0]);
	else if (num_texts > 1)
		put(c, msg, "reasoning_content", cat(c, texts, num_texts, "\n\n"));
	if (sig)
		put(c, msg, "reasoning_signature", sig);
	if (!all_blocks && n == 1 && !redacted)
		return;
	struct sl_json *blocks = mk_arr(c);
	for (uint32_t i = 0; i < n; i++)
		add(c, blocks, reasoning_block(c, &r[i]));
	put(c, msg, "thinking_blocks", blocks);
}

/* Splits "data:MEDIA[;params];base64,DATA". */
static bool parse_data_url(const struct sl_json *url, struct sl_str *media, struct sl_str *data)
{
	if (!has_prefix(url, "data:"))
		return false;
	const char *s = url->u.str + 5, *end = url->u.str + url->len;
	const char *comma = memchr(s, ',', (size_t)(end - s));
	if (!comma || comma - s < 7 || memcmp(comma - 7, ";base64", 7) != 0)
		return false;
	const char *semi = memchr(s, ';', (size_t)(comma - s));
	media->ptr = s;
	media->len = (size_t)(semi - s);
	data->ptr = comma + 1;
	data->len = (size_t)(end - data->ptr);
	return media->len > 0;
}

/* "data:" + media + ";base64," + data as one arena string. */
static struct sl_json *mk_data_url(struct cv *c, const struct sl_json *media,
                                   const struct sl_json *data)
{
	size_t n1 = 5 + media->len;
	char *head = sl_arena_alloc(c->a, n1 + 1);
	if (!head) {
		c->oom = true;
		return NULL;
	}
	memcpy(head, "data:", 5);
	memcpy(head + 5, media->u.str, media->len);
	return cat3(c, head, n1, ";base64,", 8, data->u.str, data->len);
}

static int base64_value(unsigned char ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return ch - 'A';
	if (ch >= 'a' && ch <= 'z')
		return ch - 'a' + 26;
	if (ch >= '0' && ch <= '9')
		return ch - '0' + 52;
	if (ch == '+' || ch == '-')
		return 62;
	if (ch == '/' || ch == '_')
		return 63;
	return -1;
}

/* Decodes base64 (standard or URL alphabet, padding optional, no spaces)
 * into an arena buffer; false when malformed. */
static bool base64_decode(struct cv *c, const char *s, size_t len, char **out, size_t *out_len)
{
	while (len > 0 && s[len - 1] == '=')
		len--;
	if (len % 4 == 1)
		return false;
	char *p = sl_arena_alloc(c->a, len / 4 * 3 + 3);
	if (!p) {
		c->oom = true;
		return false;
	}
	size_t n = 0;
	uint32_t acc = 0;
	unsigned bits = 0;
	for (size_t i = 0; i < len; i++) {
		int v = base64_value((unsigned char)s[i]);
		if (v < 0)
			return false;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			p[n++] = (char)(acc >> bits);
		}
	}
	p[n] = '\0';
	*out = p;
	*out_len = n;
	return true;
}

/* Strict UTF-8 check (no overlongs, no surrogates, no NUL), for decoded
 * text documents that become JSON strings. */
static bool utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + len;
	while (p < end) {
		unsigned ch = *p;
		if (ch == 0)
			return false;
		if (ch < 0x80) {
			p++;
			continue;
		}
		size_t n;
		uint32_t cp, min;
		if (ch >= 0xC2 && ch <= 0xDF) {
			n = 1, cp = ch & 0x1F, min = 0x80;
		} else if (ch >= 0xE0 && ch <= 0xEF) {
			n = 2, cp = ch & 0x0F, min = 0x800;
		} else if (ch >= 0xF0 && ch <= 0xF4) {
			n = 3, cp = ch & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if ((size_t)(end - p) <= n)
			return false;
		for (size_t i = 1; i <= n; i++) {
			if ((p[i] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		p += n + 1;
	}
	return true;
}

/* Anthropic tool ids must match ^[a-zA-Z0-9_-]+$; OpenAI-format hosts use
 * others ("functions.get_weather:0"). Replacing every other byte with '_' is
 * deterministic, so a tool_use id and its tool_result id stay equal. */
static struct sl_json *tool_id_for_anthropic(struct cv *c, const struct sl_json *id)
{
	bool clean = true;
	for (uint32_t i = 0; i < id->len && clean; i++) {
		unsigned char ch = (unsigned char)id->u.str[i];
		clean = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		        (ch >= '0' && ch <= '9') || ch == '_' || ch == '-';
	}
	if (clean)
		return share(id);
	char *p = sl_arena_memdup(c->a, id->u.str, id->len);
	if (!p) {
		c->oom = true;
		return NULL;
	}
	for (uint32_t i = 0; i < id->len; i++) {
		unsigned char ch = (unsigned char)p[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '_' || ch == '-'))
			p[i] = '_';
	}
	/* A multi-byte character became several '_': still valid UTF-8. */
	return mk_ref(c, p, id->len);
}

/* The "model" member of a converted request. */
static const struct sl_json *model_for_upstream(struct cv *c, const struct sl_convert_ctx *ctx,
                                                const struct sl_json *in)
{
	if (ctx->upstream_model)
		return mk_ref(c, ctx->upstream_model, strlen(ctx->upstream_model));
	const struct sl_json *m = get(in, "model");
	return is_str(m) ? m : mk_lit(c, "");
}

/* The "model" member of a converted response: what the client asked for. */
static const struct sl_json *model_for_client(struct cv *c, const struct sl_convert_ctx *ctx,
                                              const struct sl_json *in)
{
	if (ctx->client_model)
		return mk_ref(c, ctx->client_model, strlen(ctx->client_model));
	const struct sl_json *m = get(in, "model");
	return is_str(m) ? m : mk_lit(c, "");
}

/* Validates an optional positive integer member; *out is its node. */
static bool opt_positive_int(struct cv *c, const struct sl_json *o, const char *key,
                             const struct sl_json **out)
{
	const struct sl_json *v = get(o, key);
	*out = NULL;
	if (is_absent(v))
		return true;
	int64_t n;
	if (!sl_json_get_int(o, key, &n) || n < 1) {
		cv_fail(c, "%s must be a positive integer", key);
		return false;
	}
	*out = v;
	return true;
}

/* Validates an optional number member (temperature, top_p). */
static bool opt_number(struct cv *c, const struct sl_json *o, const char *key)
{
	const struct sl_json *v = get(o, key);
	if (is_absent(v) || is_num(v))
		return true;
	cv_fail(c, "%s must be a number", key);
	return false;
}

/* --- requests: OpenAI chat -> Anthropic Messages -------------------------------------------- */

/* The Anthropic messages list being built: consecutive messages of one role
 * are merged (Anthropic wants tool results and the next user text in one
 * user turn). */
struct amsgs {
	struct sl_json *list;
	struct sl_json *last;         /* last message object */
	struct sl_json *last_content; /* its content: a string node or an array we own */
	bool last_user;
};

/* Appends role + content (a string node, or an array we built). */
static void amsgs_add(struct cv *c, struct amsgs *m, bool user, struct sl_json *content)
{
	if (!content)
		return;
	if (m->last && m->last_user == user) {
		struct sl_json *merged = m->last_content;
		if (merged->type == SL_JSON_STRING) {
			merged = mk_arr(c);
			add(c, merged, mk_text_block(c, m->last_content));
		}
		if (content->type == SL_JSON_STRING) {
			add(c, merged, mk_text_block(c, content));
		} else {
			for (uint32_t i = 0; i < content->len; i++)
				add(c, merged, content->u.items[i]);
		}
		if (merged && merged != m->last_content) {
			/* The message object is ours: point its content at the array. */
			if (m->last->len == 2 && strcmp(m->last->u.members[1].key, "content") == 0)
				m->last->u.members[1].value = merged;
			else
				c->oom = true; /* its members were never all set */
			m->last_content = merged;
		}
		return;
	}
	struct sl_json *msg = mk_obj(c);
	put(c, msg, "role", user ? mk_lit(c, "user") : mk_lit(c, "assistant"));
	put(c, msg, "content", content);
	add(c, m->list, msg);
	m->last = msg;
	m->last_content = content;
	m->last_user = user;
}

/* OpenAI image_url part -> Anthropic image block. */
static struct sl_json *image_to_anthropic(struct cv *c, const struct sl_json *part, uint32_t mi,
                                          uint32_t pi)
{
	const struct sl_json *iu = get(part, "image_url");
	const struct sl_json *url = is_str(iu) ? iu : get(iu, "url");
	if (!is_str(url))
		return cv_fail(c, "messages[%u].content[%u].image_url.url must be a string", mi, pi);
	struct sl_json *src = mk_obj(c);
	struct sl_str media, data;
	if (has_prefix(url, "data:")) {
		if (!parse_data_url(url, &media, &data))
			return cv_fail(c, "messages[%u].content[%u].image_url.url: only base64 data: URLs "
			               "are supported", mi, pi);
		put_lit(c, src, "type", "base64");
		put(c, src, "media_type", mk_copy(c, media.ptr, media.len));
		put(c, src, "data", mk_ref(c, data.ptr, data.len));
	} else if (has_prefix(url, "https://") || has_prefix(url, "http://")) {
		put_lit(c, src, "type", "url");
		put(c, src, "url", url);
	} else {
		return cv_fail(c, "messages[%u].content[%u].image_url.url must be an http(s) or data: "
		               "URL", mi, pi);
	}
	struct sl_json *b = mk_obj(c);
	put_lit(c, b, "type", "image");
	put(c, b, "source", src);
	put_if(c, b, "cache_control", part, "cache_control");
	return b;
}

/* OpenAI file part -> Anthropic document block (PDF or text). */
static struct sl_json *file_to_anthropic(struct cv *c, const struct sl_json *part, uint32_t mi,
                                         uint32_t pi)
{
	const struct sl_json *file = get(part, "file");
	const struct sl_json *fd = get(file, "file_data");
	struct sl_str media, data;
	if (!is_str(fd))
		return cv_fail(c, "messages[%u].content[%u]: only files sent inline as file_data can "
		               "be converted (file_id refers to another provider's storage)", mi, pi);
	if (!parse_data_url(fd, &media, &data))
		return cv_fail(c, "messages[%u].content[%u].file.file_data must be a base64 data: URL",
		               mi, pi);
	struct sl_json *src = mk_obj(c);
	if (media.len == 15 && memcmp(media.ptr, "application/pdf", 15) == 0) {
		put_lit(c, src, "type", "base64");
		put_lit(c, src, "media_type", "application/pdf");
		put(c, src, "data", mk_ref(c, data.ptr, data.len));
	} else if (media.len >= 5 && memcmp(media.ptr, "text/", 5) == 0) {
		char *text;
		size_t text_len;
		if (!base64_decode(c, data.ptr, data.len, &text, &text_len) || !utf8_valid(text, text_len))
			return c->oom ? NULL
			              : cv_fail(c, "messages[%u].content[%u].file.file_data: not base64 "
			                        "of UTF-8 text", mi, pi);
		put_lit(c, src, "type", "text");
		put_lit(c, src, "media_type", "text/plain");
		put(c, src, "data", mk_ref(c, text, text_len));
	} else {
		return cv_fail(c, "messages[%u].content[%u]: file type %.*s is not supported by this "
		               "model (PDF or text only)", mi, pi, clip_utf8(media.ptr, media.len, 60),
		               media.ptr);
	}
	struct sl_json *b = mk_obj(c);
	put_lit(c, b, "type", "document");
	put(c, b, "source", src);
	put_if(c, b, "title", file, "filename");
	put_if(c, b, "cache_control", part, "cache_control");
	return b;
}

/* OpenAI user content -> Anthropic content: a string stays a string; an
 * array becomes blocks (empty text parts dropped: Anthropic rejects them). */
static struct sl_json *user_content_to_anthropic(struct cv *c, const struct sl_json *content,
                                                 uint32_t mi)
{
	if (is_str(content))
		return share(content);
	if (!is_arr(content))
		return cv_fail(c, "messages[%u].content must be a string or an array", mi);
	struct sl_json *blocks = mk_arr(c);
	for (uint32_t i = 0; i < content->len && !c->err; i++) {
		const struct sl_json *p = content->u.items[i];
		if (type_is(p, "text")) {
			const struct sl_json *t = get(p, "text");
			if (!is_str(t))
				return cv_fail(c, "messages[%u].content[%u].text must be a string", mi, i);
			if (t->len == 0)
				continue;
			struct sl_json *b = mk_text_block(c, t);
			put_if(c, b, "cache_control", p, "cache_control");
			add(c, blocks, b);
		} else if (type_is(p, "image_url")) {
			add(c, blocks, image_to_anthropic(c, p, mi, i));
		} else if (type_is(p, "file")) {
			add(c, blocks, file_to_anthropic(c, p, mi, i));
		} else {
			return cv_fail(c, "messages[%u].content[%u]: content type \"%.*s\" is not "
			               "supported by this model", mi, i, QUOTE(get(p, "type")));
		}
	}
	return c->err ? NULL : blocks;
}

/* Adds the text of an OpenAI system/developer message as system blocks. */
static void system_to_anthropic(struct cv *c, struct sl_json *system, const struct sl_json *content,
                                uint32_t mi)
{
	if (is_str(content)) {
		if (content->len > 0)
			add(c, system, mk_text_block(c, content));
		return;
	}
	if (!is_arr(content)) {
		cv_fail(c, "messages[%u].content must be a string or an array", mi);
		return;
	}
	for (uint32_t i = 0; i < content->len; i++) {
		const struct sl_json *p = content->u.items[i];
		const struct sl_json *t = get(p, "text");
		if (!type_is(p, "text") || !is_str(t)) {
			cv_fail(c, "messages[%u].content[%u]: system messages take text parts only", mi, i);
			return;
		}
		if (t->len == 0)
			continue;
		struct sl_json *b = mk_text_block(c, t);
		put_if(c, b, "cache_control", p, "cache_control");
		add(c, system, b);
	}
}

/* Parses tool-call arguments (a JSON text) into the object Anthropic wants:
 * "" and null become {}. */
static struct sl_json *arguments_to_input(struct cv *c, const struct sl_json *args, uint32_t mi,
                                          uint32_t ti)
{
	if (is_absent(args))
		return mk_raw(c, "{}");
	if (!is_str(args))
		return cv_fail(c, "messages[%u].tool_calls[%u].function.arguments must be a string", mi,
		               ti);
	size_t i = 0;
	while (i < args->len && is_space(args->u.str[i]))
		i++;
	if (i == args->len)
		return mk_raw(c, "{}");
	struct sl_json *v;
	struct sl_json_error e;
	if (sl_json_parse(c->a, args->u.str, args->len, NULL, &v, &e) != 0) {
		if (c->a->failed) {
			c->oom = true;
			return NULL;
		}
		return cv_fail(c, "messages[%u].tool_calls[%u].function.arguments is not valid JSON "
		               "(%s at byte %zu)", mi, ti, e.message ? e.message : "syntax error",
		               e.offset);
	}
	if (v->type == SL_JSON_NULL)
		return mk_raw(c, "{}");
	if (v->type != SL_JSON_OBJECT)
		return cv_fail(c, "messages[%u].tool_calls[%u].function.arguments must be a JSON object",
		               mi, ti);
	return v;
}

/* OpenAI assistant message -> Anthropic content blocks: thinking first, then
 * text, then tool_use (the order Anthropic returns them in). */
static struct sl_json *assistant_to_anthropic(struct cv *c, const struct sl_json *msg, uint32_t mi)
{
	struct sl_json *blocks = mk_arr(c);
	struct reasoning *r;
	uint32_t n = reasoning_from_chat(c, msg, &r);
	for (uint32_t i = 0; i < n; i++) {
		/* Anthropic rejects thinking it did not sign: unsigned reasoning
		 * (from another provider) is left out of the history. */
		if (r[i].data || str_nonempty(r[i].signature))
			add(c, blocks, reasoning_block(c, &r[i]));
	}
	const struct sl_json *content = get(msg, "content");
	if (is_str(content)) {
		if (content->len > 0)
			add(c, blocks, mk_text_block(c, content));
	} else if (is_arr(content)) {
		for (uint32_t i = 0; i < content->len; i++) {
			const struct sl_json *p = content->u.items[i];
			const struct sl_json *t = type_is(p, "refusal") ? get(p, "refusal") : get(p, "text");
			if ((!type_is(p, "text") && !type_is(p, "refusal")) || !is_str(t))
				return cv_fail(c, "messages[%u].content[%u]: assistant messages take text "
				               "parts only", mi, i);
			if (t->len == 0)
				continue;
			struct sl_json *b = mk_text_block(c, t);
			put_if(c, b, "cache_control", p, "cache_control");
			add(c, blocks, b);
		}
	} else if (!is_absent(content)) {
		return cv_fail(c, "messages[%u].content must be a string, an array or null", mi);
	}
	if (str_nonempty(get(msg, "refusal")) && !str_nonempty(content))
		add(c, blocks, mk_text_block(c, get(msg, "refusal")));
	const struct sl_json *calls = get(msg, "tool_calls");
	if (!is_absent(calls) && !is_arr(calls))
		return cv_fail(c, "messages[%u].tool_calls must be an array", mi);
	for (uint32_t i = 0; calls && is_arr(calls) && i < calls->len && !c->err; i++) {
		const struct sl_json *call = calls->u.items[i];
		const struct sl_json *id = get(call, "id"), *fn = get(call, "function");
		const struct sl_json *name = get(fn, "name");
		if (!str_nonempty(id))
			return cv_fail(c, "messages[%u].tool_calls[%u].id must be a non-empty string", mi, i);
		if (!is_str(name))
			return cv_fail(c, "messages[%u].tool_calls[%u].function.name must be a string", mi,
			               i);
		struct sl_json *b = mk_obj(c);
		put_lit(c, b, "type", "tool_use");
		put(c, b, "id", tool_id_for_anthropic(c, id));
		put(c, b, "name", name);
		put(c, b, "input", arguments_to_input(c, get(fn, "arguments"), mi, i));
		put_if(c, b, "cache_control", call, "cache_control");
		add(c, blocks, b);
	}
	if (!is_absent(get(msg, "function_call")))
		return cv_fail(c, "messages[%u].function_call is deprecated and not supported; use "
		               "tool_calls", mi);
	return c->err ? NULL : blocks;
}

/* OpenAI tool message -> Anthropic tool_result block. */
static struct sl_json *tool_to_anthropic(struct cv *c, const struct sl_json *msg, uint32_t mi)
{
	const struct sl_json *id = get(msg, "tool_call_id"), *content = get(msg, "content");
	if (!str_nonempty(id))
		return cv_fail(c, "messages[%u].tool_call_id must be a non-empty string", mi);
	struct sl_json *b = mk_obj(c);
	put_lit(c, b, "type", "tool_result");
	put(c, b, "tool_use_id", tool_id_for_anthropic(c, id));
	if (is_str(content)) {
		if (content->len > 0)
			put(c, b, "content", content);
	} else if (is_arr(content)) {
		struct sl_json *parts = mk_arr(c);
		for (uint32_t i = 0; i < content->len; i++) {
			const struct sl_json *p = content->u.items[i];
			if (type_is(p, "text") && is_str(get(p, "text"))) {
				if (get(p, "text")->len > 0)
					add(c, parts, mk_text_block(c, get(p, "text")));
			} else if (type_is(p, "image_url")) {
				add(c, parts, image_to_anthropic(c, p, mi, i));
			} else {
				return cv_fail(c, "messages[%u].content[%u]: tool messages take text parts "
				               "only", mi, i);
			}
		}
		if (parts && parts->len > 0)
			put(c, b, "content", parts);
	} else if (!is_absent(content)) {
		return cv_fail(c, "messages[%u].content must be a string or an array", mi);
	}
	return c->err ? NULL : b;
}

/* OpenAI tools -> Anthropic tools. */
static struct sl_json *tools_to_anthropic(struct cv *c, const struct sl_json *tools)
{
	struct sl_json *out = mk_arr(c);
	for (uint32_t i = 0; i < tools->len && !c->err; i++) {
		const struct sl_json *t = tools->u.items[i];
		if (!is_obj(t))
			return cv_fail(c, "tools[%u] must be an object", i);
		if (!type_is(t, "function"))
			return cv_fail(c, "tools[%u]: tool type \"%.*s\" is not supported by this model "
			               "(function tools only)", i, QUOTE(get(t, "type")));
		const struct sl_json *fn = get(t, "function"), *name = get(fn, "name");
		if (!str_nonempty(name))
			return cv_fail(c, "tools[%u].function.name must be a non-empty string", i);
		const struct sl_json *params = get(fn, "parameters");
		if (!is_absent(params) && !is_obj(params))
			return cv_fail(c, "tools[%u].function.parameters must be an object", i);
		struct sl_json *a = mk_obj(c);
		put(c, a, "name", name);
		if (is_str(get(fn, "description")))
			put(c, a, "description", get(fn, "description"));
		put(c, a, "input_schema",
		    is_obj(params) ? params : mk_raw(c, "{\"type\":\"object\",\"properties\":{}}"));
		put_if(c, a, "cache_control", t, "cache_control");
		add(c, out, a);
	}
	return c->err ? NULL : out;
}

/* OpenAI tool_choice + parallel_tool_calls -> Anthropic tool_choice. */
static struct sl_json *tool_choice_to_anthropic(struct cv *c, const struct sl_json *choice,
                                                bool parallel_off)
{
	struct sl_json *tc = mk_obj(c);
	if (is_absent(choice) || sl_json_is_str(choice, "auto")) {
		put_lit(c, tc, "type", "auto");
	} else if (sl_json_is_str(choice, "required")) {
		put_lit(c, tc, "type", "any");
	} else if (sl_json_is_str(choice, "none")) {
		put_lit(c, tc, "type", "none");
		return tc; /* disable_parallel_tool_use is not allowed with none */
	} else if (type_is(choice, "function")) {
		const struct sl_json *name = get(get(choice, "function"), "name");
		if (!str_nonempty(name))
			return cv_fail(c, "tool_choice.function.name must be a non-empty string");
		put_lit(c, tc, "type", "tool");
		put(c, tc, "name", name);
	} else {
		return cv_fail(c, "tool_choice must be \"auto\", \"required\", \"none\" or "
		               "{\"type\":\"function\",...}");
	}
	if (parallel_off)
		put(c, tc, "disable_parallel_tool_use", mk_bool(c, true));
	return tc;
}

/* reasoning_effort -> thinking budget; 0 for "none". -1: unknown. */
static int64_t effort_budget(const struct sl_json *effort)
{
	static const struct {
		const char *name;
		int64_t budget;
	} table[] = {
		{ "none", 0 },
		{ "minimal", BUDGET_LOW_TOKENS },
		{ "low", BUDGET_LOW_TOKENS },
		{ "medium", BUDGET_MEDIUM_TOKENS },
		{ "high", BUDGET_HIGH_TOKENS },
		{ "xhigh", BUDGET_XHIGH_TOKENS },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(table); i++)
		if (sl_json_is_str(effort, table[i].name))
			return table[i].budget;
	return -1;
}

/* response_format -> the instruction appended to the system prompt
 * (Anthropic has no response_format; docs/convert.md). */
static struct sl_json *response_format_instruction(struct cv *c, const struct sl_json *rf)
{
	if (is_absent(rf) || type_is(rf, "text"))
		return NULL;
	if (type_is(rf, "json_object"))
		return mk_lit(c, "Respond with a single valid JSON object and nothing else: no prose, "
		                 "no code fences.");
	if (!type_is(rf, "json_schema"))
		return cv_fail(c, "response_format.type \"%.*s\" is not supported by this model",
		               QUOTE(get(rf, "type")));
	const struct sl_json *js = get(rf, "json_schema");
	const struct sl_json *schema = get(js, "schema");
	if (!is_obj(schema))
		return cv_fail(c, "response_format.json_schema.schema must be an object");
	size_t len;
	char *text = sl_json_serialize(c->a, schema, &len);
	if (!text) {
		c->oom = true;
		return NULL;
	}
	static const char head[] = "Respond with a single JSON value that conforms to the JSON "
	                           "Schema below, and nothing else: no prose, no code fences.\n"
	                           "JSON Schema: ";
	return cat3(c, head, sizeof head - 1, text, len, "", 0);
}

static bool has_non_space(const struct sl_json *s)
{
	for (uint32_t i = 0; i < s->len; i++)
		if (!is_space(s->u.str[i]))
			return true;
	return false;
}

/*
 * req_chat_to_anthropic converts an OpenAI Chat Completions request (from a
 * client, or built from a Responses / legacy request) to Anthropic Messages.
 */
static struct sl_json *req_chat_to_anthropic(struct cv *c, struct sl_convert_ctx *ctx,
                                             const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "the request body must be a JSON object");
	const struct sl_json *msgs = get(in, "messages");
	if (!is_arr(msgs))
		return cv_fail(c, "messages must be an array");

	int64_t n = 1;
	if (!is_absent(get(in, "n")) && (!sl_json_get_int(in, "n", &n) || n < 1))
		return cv_fail(c, "n must be a positive integer");
	if (n > 1)
		return cv_fail(c, "n > 1 is not supported by this model: it returns one choice per "
		               "request");
	if (is_true(get(in, "logprobs")) || get_int(in, "top_logprobs", 0) > 0)
		return cv_fail(c, "logprobs are not available for this model");
	const struct sl_json *mods = get(in, "modalities");
	for (uint32_t i = 0; is_arr(mods) && i < mods->len; i++)
		if (sl_json_is_str(mods->u.items[i], "audio"))
			return cv_fail(c, "audio output is not available for this model");
	if (!is_absent(get(in, "audio")))
		return cv_fail(c, "audio output is not available for this model");
	if (!opt_number(c, in, "temperature") || !opt_number(c, in, "top_p"))
		return NULL;

	/* max_tokens: Anthropic requires it. */
	const struct sl_json *mt, *mct;
	if (!opt_positive_int(c, in, "max_completion_tokens", &mct) ||
	    !opt_positive_int(c, in, "max_tokens", &mt))
		return NULL;
	int64_t max_tokens = ctx->default_max_tokens ? ctx->default_max_tokens
	                                             : CONVERT_MAX_TOKENS_DEFAULT;
	if (mct || mt)
		sl_json_get_int(in, mct ? "max_completion_tokens" : "max_tokens", &max_tokens);

	struct sl_json *out = mk_obj(c);
	put(c, out, "model", model_for_upstream(c, ctx, in));

	struct sl_json *system = mk_arr(c);
	struct amsgs am = { .list = mk_arr(c) };
	for (uint32_t i = 0; i < msgs->len && !c->err; i++) {
		const struct sl_json *m = msgs->u.items[i];
		const struct sl_json *role = get(m, "role");
		if (!is_obj(m) || !is_str(role))
			return cv_fail(c, "messages[%u] must be an object with a string role", i);
		if (sl_json_is_str(role, "system") || sl_json_is_str(role, "developer")) {
			system_to_anthropic(c, system, get(m, "content"), i);
		} else if (sl_json_is_str(role, "user")) {
			amsgs_add(c, &am, true, user_content_to_anthropic(c, get(m, "content"), i));
		} else if (sl_json_is_str(role, "assistant")) {
			struct sl_json *blocks = assistant_to_anthropic(c, m, i);
			/* An empty assistant turn says nothing; Anthropic rejects it. */
			if (blocks && blocks->len > 0)
				amsgs_add(c, &am, false, blocks);
		} else if (sl_json_is_str(role, "tool")) {
			struct sl_json *blocks = mk_arr(c);
			add(c, blocks, tool_to_anthropic(c, m, i));
			if (!c->err)
				amsgs_add(c, &am, true, blocks);
		} else if (sl_json_is_str(role, "function")) {
			return cv_fail(c, "messages[%u]: role \"function\" is deprecated and not "
			               "supported; use tools", i);
		} else {
			return cv_fail(c, "messages[%u]: unknown role \"%.*s\"", i, QUOTE(role));
		}
	}
	if (c->err)
		return NULL;

	struct sl_json *instruction = response_format_instruction(c, get(in, "response_format"));
	if (c->err)
		return NULL;
	if (instruction)
		add(c, system, mk_text_block(c, instruction));
	if (system && system->len == 1 && !get(system->u.items[0], "cache_control"))
		put(c, out, "system", get(system->u.items[0], "text"));
	else if (system && system->len > 0)
		put(c, out, "system", system);
	put(c, out, "messages", am.list);

	/* Thinking: reasoning_effort, or an Anthropic thinking object passed
	 * as is by clients that know the model. */
	const struct sl_json *thinking = get(in, "thinking");
	const struct sl_json *effort = get(in, "reasoning_effort");
	struct sl_json *think_out = NULL;
	if (is_obj(thinking)) {
		think_out = share(thinking);
		ctx->thinking = type_is(thinking, "enabled") || type_is(thinking, "adaptive");
	} else if (!is_absent(effort)) {
		int64_t budget = effort_budget(effort);
		if (budget < 0)
			return cv_fail(c, "reasoning_effort must be one of none, minimal, low, medium, "
			               "high, xhigh");
		/* Anthropic refuses thinking when tool_choice forces a tool; the
		 * forced call wins over the effort hint. */
		const struct sl_json *tc = get(in, "tool_choice"), *ts = get(in, "tools");
		if (is_arr(ts) && ts->len > 0 &&
		    (sl_json_is_str(tc, "required") || type_is(tc, "function")))
			budget = 0;
		/* Anthropic wants budget_tokens < max_tokens; max_tokens counts the
		 * thinking too (as max_completion_tokens does for reasoning). */
		if (budget >= max_tokens)
			budget = max_tokens * 3 / 4;
		if (budget >= BUDGET_MIN_TOKENS) {
			think_out = mk_obj(c);
			put_lit(c, think_out, "type", "enabled");
			put(c, think_out, "budget_tokens", mk_int(c, budget));
			ctx->thinking = true;
		}
	}

	put(c, out, "max_tokens", mct ? mct : mt ? mt : mk_int(c, max_tokens));

	const struct sl_json *user = get(in, "user");
	if (!is_str(user))
		user = get(in, "safety_identifier");
	if (str_nonempty(user)) {
		struct sl_json *md = mk_obj(c);
		put(c, md, "user_id", user);
		put(c, out, "metadata", md);
	}

	const struct sl_json *stop = get(in, "stop");
	if (is_str(stop) || is_arr(stop)) {
		struct sl_json *seqs = mk_arr(c);
		uint32_t num = is_str(stop) ? 1 : stop->len;
		for (uint32_t i = 0; i < num; i++) {
			const struct sl_json *s = is_str(stop) ? stop : stop->u.items[i];
			if (!is_str(s))
				return cv_fail(c, "stop must be a string or an array of strings");
			if (has_non_space(s)) /* Anthropic rejects whitespace-only ones */
				add(c, seqs, s);
		}
		if (seqs && seqs->len > 0)
			put(c, out, "stop_sequences", seqs);
	} else if (!is_absent(stop)) {
		return cv_fail(c, "stop must be a string or an array of strings");
	}

	const struct sl_json *stream = get(in, "stream");
	if (is_true(stream)) {
		put(c, out, "stream", mk_bool(c, true));
		ctx->stream = true;
		ctx->client_wants_usage = is_true(get(get(in, "stream_options"), "include_usage"));
	}

	/* With thinking that the gateway derived from reasoning_effort,
	 * Anthropic accepts no sampling parameters (temperature 1 only, top_p
	 * >= 0.95, no top_k): they are left out. A client that sends a thinking
	 * object itself knows the model and gets what it asked for. */
	bool sampling = !(think_out && think_out != thinking);
	const struct sl_json *temp = get(in, "temperature");
	if (is_num(temp) && sampling)
		put(c, out, "temperature", number_above(temp, 1.0) ? oom_check(c, sl_json_number_text(
		                                                         c->a, "1", 1))
		                                                   : temp);
	if (sampling) {
		put_if(c, out, "top_p", in, "top_p");
		if (is_num(get(in, "top_k")))
			put(c, out, "top_k", get(in, "top_k"));
	}
	if (think_out)
		put(c, out, "thinking", think_out);

	const struct sl_json *tools = get(in, "tools");
	if (!is_absent(tools) && !is_arr(tools))
		return cv_fail(c, "tools must be an array");
	const struct sl_json *ptc = get(in, "parallel_tool_calls");
	bool parallel_off = ptc && ptc->type == SL_JSON_FALSE;
	if (is_arr(tools) && tools->len > 0) {
		put(c, out, "tools", tools_to_anthropic(c, tools));
		const struct sl_json *choice = get(in, "tool_choice");
		if (!is_absent(choice) || parallel_off)
			put(c, out, "tool_choice", tool_choice_to_anthropic(c, choice, parallel_off));
	}
	return c->err ? NULL : out;
}

/* --- requests: Anthropic Messages -> OpenAI chat -------------------------------------------- */

/* Anthropic image block -> OpenAI image_url part. */
static struct sl_json *image_to_openai(struct cv *c, const struct sl_json *b, uint32_t mi,
                                       uint32_t bi)
{
	const struct sl_json *src = get(b, "source");
	const struct sl_json *url;
	if (type_is(src, "base64")) {
		const struct sl_json *media = get(src, "media_type"), *data = get(src, "data");
		if (!str_nonempty(media) || !is_str(data))
			return cv_fail(c, "messages[%u].content[%u].source needs media_type and data "
			               "strings", mi, bi);
		url = mk_data_url(c, media, data);
	} else if (type_is(src, "url")) {
		url = get(src, "url");
		if (!is_str(url))
			return cv_fail(c, "messages[%u].content[%u].source.url must be a string", mi, bi);
	} else {
		return cv_fail(c, "messages[%u].content[%u]: image source type \"%.*s\" cannot be sent "
		               "to this model (base64 or url only)", mi, bi, QUOTE(get(src, "type")));
	}
	struct sl_json *iu = mk_obj(c);
	put(c, iu, "url", url);
	struct sl_json *p = mk_obj(c);
	put_lit(c, p, "type", "image_url");
	put(c, p, "image_url", iu);
	return p;
}

/* Anthropic document block -> OpenAI parts (added to parts). */
static void document_to_openai(struct cv *c, struct sl_json *parts, const struct sl_json *b,
                               uint32_t mi, uint32_t bi)
{
	const struct sl_json *src = get(b, "source");
	if (type_is(src, "base64")) {
		const struct sl_json *media = get(src, "media_type"), *data = get(src, "data");
		if (!str_nonempty(media) || !is_str(data)) {
			cv_fail(c, "messages[%u].content[%u].source needs media_type and data strings", mi,
			        bi);
			return;
		}
		struct sl_json *file = mk_obj(c);
		const struct sl_json *title = get(b, "title");
		put(c, file, "filename", str_nonempty(title) ? title : mk_lit(c, "document.pdf"));
		put(c, file, "file_data", mk_data_url(c, media, data));
		struct sl_json *p = mk_obj(c);
		put_lit(c, p, "type", "file");
		put(c, p, "file", file);
		add(c, parts, p);
	} else if (type_is(src, "text")) {
		const struct sl_json *data = get(src, "data");
		if (!is_str(data)) {
			cv_fail(c, "messages[%u].content[%u].source.data must be a string", mi, bi);
			return;
		}
		add(c, parts, mk_text_block(c, data));
	} else if (type_is(src, "content")) {
		const struct sl_json *content = get(src, "content");
		if (is_str(content)) {
			add(c, parts, mk_text_block(c, content));
			return;
		}
		for (uint32_t i = 0; is_arr(content) && i < content->len; i++) {
			const struct sl_json *x = content->u.items[i];
			if (type_is(x, "text") && is_str(get(x, "text")))
				add(c, parts, mk_text_block(c, get(x, "text")));
			else if (type_is(x, "image"))
				add(c, parts, image_to_openai(c, x, mi, bi));
			else
				cv_fail(c, "messages[%u].content[%u].source.content[%u]: only text and image "
				        "blocks can be converted", mi, bi, i);
		}
	} else {
		cv_fail(c, "messages[%u].content[%u]: document source type \"%.*s\" cannot be sent to "
		        "this model (base64 PDF, text or content only)", mi, bi,
		        QUOTE(get(src, "type")));
	}
}

/* Anthropic tool_result block -> OpenAI tool message; images in the result
 * go to images (OpenAI tool messages take text only) for the user message
 * that follows. */
static struct sl_json *tool_result_to_openai(struct cv *c, const struct sl_json *b,
                                             struct sl_json *images, uint32_t mi, uint32_t bi)
{
	const struct sl_json *id = get(b, "tool_use_id"), *content = get(b, "content");
	if (!str_nonempty(id))
		return cv_fail(c, "messages[%u].content[%u].tool_use_id must be a non-empty string", mi,
		               bi);
	bool is_error = is_true(get(b, "is_error"));
	struct sl_json *out_content;
	if (is_absent(content)) {
		out_content = is_error ? mk_lit(c, "Error") : mk_lit(c, "");
	} else if (is_str(content)) {
		out_content = is_error ? cat3(c, "Error: ", 7, content->u.str, content->len, "", 0)
		                       : share(content);
	} else if (is_arr(content)) {
		out_content = mk_arr(c);
		if (is_error)
			add(c, out_content, mk_text_block(c, mk_lit(c, "Error:")));
		for (uint32_t i = 0; i < content->len; i++) {
			const struct sl_json *x = content->u.items[i];
			if (type_is(x, "text") && is_str(get(x, "text")))
				add(c, out_content, mk_text_block(c, get(x, "text")));
			else if (type_is(x, "image"))
				add(c, images, image_to_openai(c, x, mi, bi));
			else if (type_is(x, "document"))
				document_to_openai(c, images, x, mi, bi);
			else
				return cv_fail(c, "messages[%u].content[%u].content[%u]: block type \"%.*s\" "
				               "cannot be converted", mi, bi, i, QUOTE(get(x, "type")));
		}
	} else {
		return cv_fail(c, "messages[%u].content[%u].content must be a string or an array", mi,
		               bi);
	}
	struct sl_json *m = mk_obj(c);
	put_lit(c, m, "role", "tool");
	put(c, m, "tool_call_id", id);
	put(c, m, "content", out_content);
	return c->err ? NULL : m;
}

/* A list of parts -> message content: one text part becomes a string. */
static const struct sl_json *parts_content(struct cv *c, struct sl_json *parts)
{
	if (parts && parts->len == 1 && type_is(parts->u.items[0], "text"))
		return get(parts->u.items[0], "text");
	return parts;
}

/* Anthropic user message -> OpenAI tool messages (one per tool_result, in
 * order) followed by one user message with everything else. */
static void user_to_openai(struct cv *c, struct sl_json *out, const struct sl_json *content,
                           uint32_t mi)
{
	if (is_str(content)) {
		struct sl_json *m = mk_obj(c);
		put_lit(c, m, "role", "user");
		put(c, m, "content", content);
		add(c, out, m);
		return;
	}
	if (!is_arr(content)) {
		cv_fail(c, "messages[%u].content must be a string or an array", mi);
		return;
	}
	struct sl_json *parts = mk_arr(c);
	for (uint32_t i = 0; i < content->len && !c->err; i++) {
		const struct sl_json *b = content->u.items[i];
		if (type_is(b, "text")) {
			if (!is_str(get(b, "text"))) {
				cv_fail(c, "messages[%u].content[%u].text must be a string", mi, i);
				return;
			}
			add(c, parts, mk_text_block(c, get(b, "text")));
		} else if (type_is(b, "image")) {
			add(c, parts, image_to_openai(c, b, mi, i));
		} else if (type_is(b, "document")) {
			document_to_openai(c, parts, b, mi, i);
		} else if (type_is(b, "tool_result")) {
			add(c, out, tool_result_to_openai(c, b, parts, mi, i));
		} else {
			cv_fail(c, "messages[%u].content[%u]: block type \"%.*s\" cannot be sent to this "
			        "model", mi, i, QUOTE(get(b, "type")));
		}
	}
	/* A turn of only tool results needs no user message; an empty one is
	 * kept (and judged) as the client sent it. */
	if (!c->err && parts && (parts->len > 0 || content->len == 0)) {
		struct sl_json *m = mk_obj(c);
		put_lit(c, m, "role", "user");
		put(c, m, "content", parts_content(c, parts));
		add(c, out, m);
	}
}

/* Anthropic assistant message -> OpenAI assistant message. */
static void assistant_to_openai(struct cv *c, struct sl_json *out, const struct sl_json *content,
                                uint32_t mi)
{
	struct sl_json *m = mk_obj(c);
	put_lit(c, m, "role", "assistant");
	if (is_str(content)) {
		put(c, m, "content", content);
		add(c, out, m);
		return;
	}
	if (!is_arr(content)) {
		cv_fail(c, "messages[%u].content must be a string or an array", mi);
		return;
	}
	struct sl_json *texts = mk_arr(c), *calls = mk_arr(c);
	struct reasoning *r = sl_arena_alloc(c->a, (content->len + 1) * sizeof *r);
	uint32_t num_r = 0;
	if (!r) {
		c->oom = true;
		return;
	}
	for (uint32_t i = 0; i < content->len && !c->err; i++) {
		const struct sl_json *b = content->u.items[i];
		if (type_is(b, "text")) {
			if (!is_str(get(b, "text"))) {
				cv_fail(c, "messages[%u].content[%u].text must be a string", mi, i);
				return;
			}
			add(c, texts, mk_text_block(c, get(b, "text")));
		} else if (type_is(b, "tool_use")) {
			const struct sl_json *id = get(b, "id"), *name = get(b, "name");
			const struct sl_json *input = get(b, "input");
			if (!str_nonempty(id) || !is_str(name)) {
				cv_fail(c, "messages[%u].content[%u]: tool_use needs id and name strings", mi,
				        i);
				return;
			}
			size_t len = 2;
			char *args = is_absent(input) ? (char *)"{}"
			                              : sl_json_serialize(c->a, input, &len);
			if (!args) {
				c->oom = true;
				return;
			}
			struct sl_json *fn = mk_obj(c);
			put(c, fn, "name", name);
			put(c, fn, "arguments", mk_ref(c, args, len));
			struct sl_json *call = mk_obj(c);
			put(c, call, "id", id);
			put_lit(c, call, "type", "function");
			put(c, call, "function", fn);
			put_if(c, call, "extra_content", b, "extra_content");
			add(c, calls, call);
		} else if (type_is(b, "thinking")) {
			const struct sl_json *t = get(b, "thinking"), *s = get(b, "signature");
			r[num_r++] = (struct reasoning){ is_str(t) ? t : NULL, is_str(s) ? s : NULL, NULL };
		} else if (type_is(b, "redacted_thinking")) {
			if (!is_str(get(b, "data"))) {
				cv_fail(c, "messages[%u].content[%u].data must be a string", mi, i);
				return;
			}
			r[num_r++] = (struct reasoning){ NULL, NULL, get(b, "data") };
		} else {
			cv_fail(c, "messages[%u].content[%u]: block type \"%.*s\" cannot be sent to this "
			        "model", mi, i, QUOTE(get(b, "type")));
		}
	}
	if (c->err || !texts || !calls)
		return;
	if (texts->len > 0)
		put(c, m, "content", parts_content(c, texts));
	else
		put(c, m, "content", calls->len > 0 ? mk_null(c) : mk_lit(c, ""));
	if (calls->len > 0)
		put(c, m, "tool_calls", calls);
	reasoning_to_chat(c, m, r, num_r, false);
	add(c, out, m);
}

/* Anthropic system (string or text blocks) -> one OpenAI system message. */
static void system_to_openai(struct cv *c, struct sl_json *out, const struct sl_json *system)
{
	if (is_absent(system))
		return;
	struct sl_json *m = mk_obj(c);
	put_lit(c, m, "role", "system");
	if (is_str(system)) {
		put(c, m, "content", system);
		add(c, out, m);
		return;
	}
	if (!is_arr(system)) {
		cv_fail(c, "system must be a string or an array of text blocks");
		return;
	}
	if (system->len == 0)
		return;
	struct sl_json *parts = mk_arr(c);
	for (uint32_t i = 0; i < system->len; i++) {
		const struct sl_json *b = system->u.items[i];
		if (!type_is(b, "text") || !is_str(get(b, "text"))) {
			cv_fail(c, "system[%u] must be a text block", i);
			return;
		}
		add(c, parts, mk_text_block(c, get(b, "text"))); /* cache_control dropped */
	}
	put(c, m, "content", parts_content(c, parts));
	add(c, out, m);
}

static struct sl_json *tools_to_openai(struct cv *c, const struct sl_json *tools)
{
	struct sl_json *out = mk_arr(c);
	for (uint32_t i = 0; i < tools->len && !c->err; i++) {
		const struct sl_json *t = tools->u.items[i];
		if (!is_obj(t))
			return cv_fail(c, "tools[%u] must be an object", i);
		const struct sl_json *type = get(t, "type");
		if (!is_absent(type) && !sl_json_is_str(type, "custom"))
			return cv_fail(c, "tools[%u]: tool type \"%.*s\" is not available for this model "
			               "(custom tools with an input_schema only)", i, QUOTE(type));
		const struct sl_json *name = get(t, "name"), *schema = get(t, "input_schema");
		if (!str_nonempty(name))
			return cv_fail(c, "tools[%u].name must be a non-empty string", i);
		if (!is_obj(schema))
			return cv_fail(c, "tools[%u].input_schema must be an object", i);
		struct sl_json *fn = mk_obj(c);
		put(c, fn, "name", name);
		if (is_str(get(t, "description")))
			put(c, fn, "description", get(t, "description"));
		put(c, fn, "parameters", schema);
		struct sl_json *o = mk_obj(c);
		put_lit(c, o, "type", "function");
		put(c, o, "function", fn);
		add(c, out, o);
	}
	return c->err ? NULL : out;
}

/* thinking.budget_tokens -> reasoning_effort. */
static struct sl_json *budget_effort(struct cv *c, int64_t budget)
{
	if (budget < EFFORT_LOW_BELOW_TOKENS)
		return mk_lit(c, "low");
	if (budget < EFFORT_MEDIUM_BELOW_TOKENS)
		return mk_lit(c, "medium");
	return mk_lit(c, "high");
}

/* stream: true on an OpenAI-format upstream always asks for the usage chunk
 * (the gateway bills from it); other stream_options are kept. */
static void put_stream(struct cv *c, struct sl_json *out, const struct sl_json *client_options)
{
	put(c, out, "stream", mk_bool(c, true));
	struct sl_json *so = mk_obj(c);
	for (uint32_t i = 0; is_obj(client_options) && i < client_options->len; i++) {
		const struct sl_json_member *mb = &client_options->u.members[i];
		if (strcmp(mb->key, "include_usage") != 0)
			put(c, so, mb->key, mb->value);
	}
	put(c, so, "include_usage", mk_bool(c, true));
	put(c, out, "stream_options", so);
}

/* req_anthropic_to_chat converts an Anthropic Messages request to OpenAI
 * Chat Completions. */
static struct sl_json *req_anthropic_to_chat(struct cv *c, struct sl_convert_ctx *ctx,
                                             const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "the request body must be a JSON object");
	const struct sl_json *msgs = get(in, "messages");
	if (!is_arr(msgs))
		return cv_fail(c, "messages: Field required (an array)");
	const struct sl_json *mt;
	if (!opt_positive_int(c, in, "max_tokens", &mt) || !opt_number(c, in, "temperature") ||
	    !opt_number(c, in, "top_p"))
		return NULL;

	struct sl_json *out = mk_obj(c);
	put(c, out, "model", model_for_upstream(c, ctx, in));
	struct sl_json *list = mk_arr(c);
	system_to_openai(c, list, get(in, "system"));
	for (uint32_t i = 0; i < msgs->len && !c->err; i++) {
		const struct sl_json *m = msgs->u.items[i];
		const struct sl_json *role = get(m, "role");
		if (sl_json_is_str(role, "user"))
			user_to_openai(c, list, get(m, "content"), i);
		else if (sl_json_is_str(role, "assistant"))
			assistant_to_openai(c, list, get(m, "content"), i);
		else if (!is_obj(m) || !is_str(role))
			return cv_fail(c, "messages[%u] must be an object with a string role", i);
		else
			return cv_fail(c, "messages[%u]: role must be \"user\" or \"assistant\", not "
			               "\"%.*s\"", i, QUOTE(role));
	}
	if (c->err)
		return NULL;
	put(c, out, "messages", list);
	if (mt)
		put(c, out, "max_completion_tokens", mt);
	put_if(c, out, "temperature", in, "temperature");
	put_if(c, out, "top_p", in, "top_p");

	const struct sl_json *stop = get(in, "stop_sequences");
	if (is_arr(stop)) {
		for (uint32_t i = 0; i < stop->len; i++)
			if (!is_str(stop->u.items[i]))
				return cv_fail(c, "stop_sequences must be an array of strings");
		if (stop->len > 0)
			put(c, out, "stop", stop);
	} else if (!is_absent(stop)) {
		return cv_fail(c, "stop_sequences must be an array of strings");
	}

	const struct sl_json *tools = get(in, "tools");
	if (!is_absent(tools) && !is_arr(tools))
		return cv_fail(c, "tools must be an array");
	const struct sl_json *tc = get(in, "tool_choice");
	if (is_arr(tools) && tools->len > 0) {
		put(c, out, "tools", tools_to_openai(c, tools));
		if (type_is(tc, "auto")) {
			put_lit(c, out, "tool_choice", "auto");
		} else if (type_is(tc, "any")) {
			put_lit(c, out, "tool_choice", "required");
		} else if (type_is(tc, "none")) {
			put_lit(c, out, "tool_choice", "none");
		} else if (type_is(tc, "tool")) {
			if (!str_nonempty(get(tc, "name")))
				return cv_fail(c, "tool_choice.name must be a non-empty string");
			struct sl_json *fn = mk_obj(c), *o = mk_obj(c);
			put(c, fn, "name", get(tc, "name"));
			put_lit(c, o, "type", "function");
			put(c, o, "function", fn);
			put(c, out, "tool_choice", o);
		} else if (!is_absent(tc)) {
			return cv_fail(c, "tool_choice.type must be auto, any, tool or none");
		}
		if (is_true(get(tc, "disable_parallel_tool_use")) && !type_is(tc, "none"))
			put(c, out, "parallel_tool_calls", mk_bool(c, false));
	}

	const struct sl_json *thinking = get(in, "thinking");
	if (type_is(thinking, "enabled")) {
		int64_t budget = get_int(thinking, "budget_tokens", BUDGET_MEDIUM_TOKENS);
		put(c, out, "reasoning_effort", budget_effort(c, budget));
		ctx->thinking = true;
	} else if (!is_absent(thinking) && !is_obj(thinking)) {
		return cv_fail(c, "thinking must be an object");
	}

	const struct sl_json *user = get(get(in, "metadata"), "user_id");
	if (str_nonempty(user))
		put(c, out, "user", user);

	if (is_true(get(in, "stream"))) {
		put_stream(c, out, NULL);
		ctx->stream = true;
		ctx->client_wants_usage = true; /* Anthropic streams always carry usage */
	}
	return c->err ? NULL : out;
}

/* req_openai_passthrough re-emits an OpenAI-format request for an
 * OpenAI-format upstream: "model" replaced, stream usage requested. */
static struct sl_json *req_openai_passthrough(struct cv *c, struct sl_convert_ctx *ctx,
                                              const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "the request body must be a JSON object");
	struct sl_json *out = mk_obj(c);
	bool stream = is_true(get(in, "stream"));
	put(c, out, "model", model_for_upstream(c, ctx, in));
	for (uint32_t i = 0; i < in->len; i++) {
		const struct sl_json_member *mb = &in->u.members[i];
		if (strcmp(mb->key, "model") == 0 || strcmp(mb->key, "stream") == 0 ||
		    strcmp(mb->key, "stream_options") == 0)
			continue;
		put(c, out, mb->key, mb->value);
	}
	if (stream) {
		put_stream(c, out, get(in, "stream_options"));
		ctx->stream = true;
		ctx->client_wants_usage = is_true(get(get(in, "stream_options"), "include_usage"));
	}
	return out;
}

/* req_anthropic_passthrough: "model" replaced, everything else kept. */
static struct sl_json *req_anthropic_passthrough(struct cv *c, struct sl_convert_ctx *ctx,
                                                 const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "the request body must be a JSON object");
	struct sl_json *out = mk_obj(c);
	put(c, out, "model", model_for_upstream(c, ctx, in));
	for (uint32_t i = 0; i < in->len; i++)
		if (strcmp(in->u.members[i].key, "model") != 0)
			put(c, out, in->u.members[i].key, in->u.members[i].value);
	ctx->stream = is_true(get(in, "stream"));
	ctx->client_wants_usage = true;
	ctx->thinking = type_is(get(in, "thinking"), "enabled");
	return out;
}

/* --- requests: OpenAI Responses -> chat ------------------------------------------------------ */

/* Responses content parts (input_text, output_text, input_image,
 * input_file, refusal) -> chat parts. */
static const struct sl_json *responses_content_to_chat(struct cv *c, const struct sl_json *content,
                                                       uint32_t ii)
{
	if (is_str(content))
		return content;
	if (!is_arr(content))
		return cv_fail(c, "input[%u].content must be a string or an array", ii);
	struct sl_json *parts = mk_arr(c);
	for (uint32_t i = 0; i < content->len && !c->err; i++) {
		const struct sl_json *p = content->u.items[i];
		if (type_is(p, "input_text") || type_is(p, "output_text") || type_is(p, "text")) {
			if (!is_str(get(p, "text")))
				return cv_fail(c, "input[%u].content[%u].text must be a string", ii, i);
			add(c, parts, mk_text_block(c, get(p, "text")));
		} else if (type_is(p, "refusal") && is_str(get(p, "refusal"))) {
			add(c, parts, mk_text_block(c, get(p, "refusal")));
		} else if (type_is(p, "input_image")) {
			const struct sl_json *url = get(p, "image_url");
			if (!is_str(url))
				return cv_fail(c, "input[%u].content[%u]: only images given by image_url can "
				               "be converted (file_id refers to OpenAI's storage)", ii, i);
			struct sl_json *iu = mk_obj(c), *o = mk_obj(c);
			put(c, iu, "url", url);
			if (is_str(get(p, "detail")) && !sl_json_is_str(get(p, "detail"), "auto"))
				put(c, iu, "detail", get(p, "detail"));
			put_lit(c, o, "type", "image_url");
			put(c, o, "image_url", iu);
			add(c, parts, o);
		} else if (type_is(p, "input_file")) {
			if (!is_str(get(p, "file_data")))
				return cv_fail(c, "input[%u].content[%u]: only files sent inline as file_data "
				               "can be converted", ii, i);
			struct sl_json *f = mk_obj(c), *o = mk_obj(c);
			put_if(c, f, "filename", p, "filename");
			put(c, f, "file_data", get(p, "file_data"));
			put_lit(c, o, "type", "file");
			put(c, o, "file", f);
			add(c, parts, o);
		} else {
			return cv_fail(c, "input[%u].content[%u]: content type \"%.*s\" cannot be "
			               "converted", ii, i, QUOTE(get(p, "type")));
		}
	}
	return c->err ? NULL : parts_content(c, parts);
}

/* The assistant turn being assembled from consecutive Responses items
 * (reasoning, assistant message, function_call). */
struct pending_assistant {
	struct sl_json *texts; /* text parts */
	struct sl_json *calls; /* tool_calls */
	struct reasoning *r;
	uint32_t num_r, cap_r;
};

static void pending_flush(struct cv *c, struct sl_json *list, struct pending_assistant *p)
{
	if (!p->texts && !p->calls && p->num_r == 0)
		return;
	struct sl_json *m = mk_obj(c);
	put_lit(c, m, "role", "assistant");
	if (p->texts && p->texts->len > 0)
		put(c, m, "content", parts_content(c, p->texts));
	else
		put(c, m, "content", p->calls ? mk_null(c) : mk_lit(c, ""));
	if (p->calls)
		put(c, m, "tool_calls", p->calls);
	reasoning_to_chat(c, m, p->r, p->num_r, false);
	add(c, list, m);
	*p = (struct pending_assistant){ .r = p->r, .cap_r = p->cap_r };
}

/* A Responses reasoning item -> one reasoning segment of the pending turn:
 * summary texts joined; encrypted_content carries the signature (or, with
 * the "redacted:" prefix, a redacted_thinking block's data). */
static void reasoning_item_to_pending(struct cv *c, struct pending_assistant *p,
                                      const struct sl_json *item)
{
	if (p->num_r == p->cap_r)
		return; /* cap_r is the number of input items: cannot happen */
	const struct sl_json *enc = get(item, "encrypted_content");
	if (has_prefix(enc, REDACTED_PREFIX)) {
		size_t n = sizeof REDACTED_PREFIX - 1;
		p->r[p->num_r++] = (struct reasoning){ NULL, NULL,
		                                       mk_ref(c, enc->u.str + n, enc->len - n) };
		return;
	}
	const struct sl_json *list = get(item, "summary");
	if (!is_arr(list) || list->len == 0)
		list = get(item, "content");
	uint32_t num = 0;
	struct sl_json **texts = NULL;
	if (is_arr(list) && list->len > 0) {
		texts = sl_arena_alloc(c->a, list->len * sizeof *texts);
		if (!texts) {
			c->oom = true;
			return;
		}
		for (uint32_t i = 0; i < list->len; i++)
			if (is_str(get(list->u.items[i], "text")))
				texts[num++] = get(list->u.items[i], "text");
	}
	const struct sl_json *text = num == 1 ? texts[0] : num > 1 ? cat(c, texts, num, "\n\n")
	                                                          : NULL;
	p->r[p->num_r++] = (struct reasoning){ text, is_str(enc) ? enc : NULL, NULL };
}

/* Responses tools -> chat tools (function tools only). */
static struct sl_json *responses_tools_to_chat(struct cv *c, const struct sl_json *tools)
{
	struct sl_json *out = mk_arr(c);
	for (uint32_t i = 0; i < tools->len && !c->err; i++) {
		const struct sl_json *t = tools->u.items[i];
		if (!type_is(t, "function"))
			return cv_fail(c, "tools[%u]: tool type \"%.*s\" is not available for this model "
			               "(function tools only)", i, QUOTE(get(t, "type")));
		if (!str_nonempty(get(t, "name")))
			return cv_fail(c, "tools[%u].name must be a non-empty string", i);
		struct sl_json *fn = mk_obj(c), *o = mk_obj(c);
		put(c, fn, "name", get(t, "name"));
		put_if(c, fn, "description", t, "description");
		put_if(c, fn, "parameters", t, "parameters");
		put_if(c, fn, "strict", t, "strict");
		put_lit(c, o, "type", "function");
		put(c, o, "function", fn);
		add(c, out, o);
	}
	return c->err ? NULL : out;
}

/* req_responses_to_chat converts a Responses API request into the chat
 * request it means (the pivot); the caller finishes it for the upstream. */
static struct sl_json *req_responses_to_chat(struct cv *c, const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "the request body must be a JSON object");
	if (!is_absent(get(in, "previous_response_id")) || !is_absent(get(in, "conversation")))
		return cv_fail(c, "previous_response_id and conversation need server-side state, "
		               "which this model does not keep: send the whole conversation in input");
	if (!is_absent(get(in, "prompt")))
		return cv_fail(c, "prompt templates are not available for this model");
	if (is_true(get(in, "background")))
		return cv_fail(c, "background responses are not available for this model");
	const struct sl_json *mot;
	if (!opt_positive_int(c, in, "max_output_tokens", &mot))
		return NULL;

	struct sl_json *out = mk_obj(c), *list = mk_arr(c);
	put_if(c, out, "model", in, "model");
	const struct sl_json *instr = get(in, "instructions");
	if (str_nonempty(instr)) {
		struct sl_json *m = mk_obj(c);
		put_lit(c, m, "role", "system");
		put(c, m, "content", instr);
		add(c, list, m);
	} else if (!is_absent(instr) && !is_str(instr)) {
		return cv_fail(c, "instructions must be a string");
	}

	const struct sl_json *input = get(in, "input");
	if (is_str(input)) {
		struct sl_json *m = mk_obj(c);
		put_lit(c, m, "role", "user");
		put(c, m, "content", input);
		add(c, list, m);
	} else if (is_arr(input)) {
		struct pending_assistant p = { 0 };
		p.cap_r = input->len;
		p.r = sl_arena_alloc(c->a, (input->len + 1) * sizeof *p.r);
		if (!p.r) {
			c->oom = true;
			return NULL;
		}
		for (uint32_t i = 0; i < input->len && !c->err; i++) {
			const struct sl_json *it = input->u.items[i];
			const struct sl_json *role = get(it, "role");
			if (!is_obj(it))
				return cv_fail(c, "input[%u] must be an object", i);
			if (type_is(it, "message") || (is_absent(get(it, "type")) && is_str(role))) {
				if (sl_json_is_str(role, "assistant")) {
					const struct sl_json *ct =
						responses_content_to_chat(c, get(it, "content"), i);
					if (!p.texts)
						p.texts = mk_arr(c);
					if (is_str(ct))
						add(c, p.texts, mk_text_block(c, ct));
					for (uint32_t k = 0; is_arr(ct) && k < ct->len; k++)
						add(c, p.texts, ct->u.items[k]);
					continue;
				}
				if (!sl_json_is_str(role, "user") && !sl_json_is_str(role, "system") &&
				    !sl_json_is_str(role, "developer"))
					return cv_fail(c, "input[%u].role must be user, assistant, system or "
					               "developer", i);
				pending_flush(c, list, &p);
				struct sl_json *m = mk_obj(c);
				put(c, m, "role", sl_json_is_str(role, "user") ? role : mk_lit(c, "system"));
				put(c, m, "content", responses_content_to_chat(c, get(it, "content"), i));
				add(c, list, m);
			} else if (type_is(it, "function_call")) {
				const struct sl_json *id = get(it, "call_id"), *name = get(it, "name");
				const struct sl_json *args = get(it, "arguments");
				if (!str_nonempty(id) || !is_str(name) || !is_str(args))
					return cv_fail(c, "input[%u]: function_call needs call_id, name and "
					               "arguments strings", i);
				struct sl_json *fn = mk_obj(c), *call = mk_obj(c);
				put(c, fn, "name", name);
				put(c, fn, "arguments", args);
				put(c, call, "id", id);
				put_lit(c, call, "type", "function");
				put(c, call, "function", fn);
				put_if(c, call, "extra_content", it, "extra_content");
				if (!p.calls)
					p.calls = mk_arr(c);
				add(c, p.calls, call);
			} else if (type_is(it, "function_call_output")) {
				const struct sl_json *id = get(it, "call_id"), *o = get(it, "output");
				if (!str_nonempty(id))
					return cv_fail(c, "input[%u].call_id must be a non-empty string", i);
				pending_flush(c, list, &p);
				const struct sl_json *ct = is_absent(o) ? mk_lit(c, "")
				                                        : responses_content_to_chat(c, o, i);
				for (uint32_t k = 0; is_arr(ct) && k < ct->len; k++)
					if (!type_is(ct->u.items[k], "text"))
						return cv_fail(c, "input[%u].output: only text can be returned by "
						               "a function call to this model", i);
				struct sl_json *m = mk_obj(c);
				put_lit(c, m, "role", "tool");
				put(c, m, "tool_call_id", id);
				put(c, m, "content", ct);
				add(c, list, m);
			} else if (type_is(it, "reasoning")) {
				/* Reasoning opens a new assistant turn if one is complete. */
				if (p.texts || p.calls)
					pending_flush(c, list, &p);
				reasoning_item_to_pending(c, &p, it);
			} else {
				return cv_fail(c, "input[%u]: item type \"%.*s\" is not available for this "
				               "model", i, QUOTE(get(it, "type")));
			}
		}
		pending_flush(c, list, &p);
	} else {
		return cv_fail(c, "input must be a string or an array");
	}
	if (c->err)
		return NULL;
	put(c, out, "messages", list);
	if (mot)
		put(c, out, "max_completion_tokens", mot);
	put_if(c, out, "temperature", in, "temperature");
	put_if(c, out, "top_p", in, "top_p");

	const struct sl_json *tools = get(in, "tools");
	if (is_arr(tools) && tools->len > 0) {
		put(c, out, "tools", responses_tools_to_chat(c, tools));
		const struct sl_json *tc = get(in, "tool_choice");
		if (sl_json_is_str(tc, "auto") || sl_json_is_str(tc, "none") ||
		    sl_json_is_str(tc, "required")) {
			put(c, out, "tool_choice", tc);
		} else if (type_is(tc, "function") && str_nonempty(get(tc, "name"))) {
			struct sl_json *fn = mk_obj(c), *o = mk_obj(c);
			put(c, fn, "name", get(tc, "name"));
			put_lit(c, o, "type", "function");
			put(c, o, "function", fn);
			put(c, out, "tool_choice", o);
		} else if (!is_absent(tc)) {
			return cv_fail(c, "tool_choice must be auto, none, required or "
			               "{\"type\":\"function\",\"name\":...} for this model");
		}
		put_if(c, out, "parallel_tool_calls", in, "parallel_tool_calls");
	} else if (!is_absent(tools) && !is_arr(tools)) {
		return cv_fail(c, "tools must be an array");
	}

	const struct sl_json *effort = get(get(in, "reasoning"), "effort");
	if (is_str(effort))
		put(c, out, "reasoning_effort", effort);
	const struct sl_json *fmt = get(get(in, "text"), "format");
	if (type_is(fmt, "json_schema")) {
		struct sl_json *js = mk_obj(c), *rf = mk_obj(c);
		put_if(c, js, "name", fmt, "name");
		put_if(c, js, "description", fmt, "description");
		put_if(c, js, "schema", fmt, "schema");
		put_if(c, js, "strict", fmt, "strict");
		put_lit(c, rf, "type", "json_schema");
		put(c, rf, "json_schema", js);
		put(c, out, "response_format", rf);
	} else if (type_is(fmt, "json_object")) {
		struct sl_json *rf = mk_obj(c);
		put_lit(c, rf, "type", "json_object");
		put(c, out, "response_format", rf);
	} else if (!is_absent(fmt) && !type_is(fmt, "text")) {
		return cv_fail(c, "text.format.type must be text, json_schema or json_object");
	}
	put_if(c, out, "user", in, "user");
	put_if(c, out, "safety_identifier", in, "safety_identifier");
	if (is_true(get(in, "stream")))
		put(c, out, "stream", mk_bool(c, true));
	return c->err ? NULL : out;
}

/* --- requests: legacy completions -> chat ----------------------------------------------------- */

static struct sl_json *req_legacy_to_chat(struct cv *c, const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "the request body must be a JSON object");
	const struct sl_json *prompt = get(in, "prompt");
	if (is_arr(prompt) && prompt->len == 1 && is_str(prompt->u.items[0]))
		prompt = prompt->u.items[0];
	if (is_arr(prompt) && prompt->len > 0 && !is_str(prompt->u.items[0]))
		return cv_fail(c, "prompt must be a string (token arrays cannot be converted for this "
		               "model)");
	if (is_arr(prompt) && prompt->len > 1)
		return cv_fail(c, "this model takes one prompt per request, not an array of prompts");
	if (!is_str(prompt))
		return cv_fail(c, "prompt must be a string (token arrays cannot be converted for this "
		               "model)");
	if (str_nonempty(get(in, "suffix")))
		return cv_fail(c, "suffix (insertion) is not available for this model");
	if (is_true(get(in, "echo")))
		return cv_fail(c, "echo is not available for this model");
	if (get_int(in, "best_of", 1) > 1)
		return cv_fail(c, "best_of > 1 is not available for this model");
	if (!is_absent(get(in, "logprobs")))
		return cv_fail(c, "logprobs are not available for this model");

	struct sl_json *out = mk_obj(c), *list = mk_arr(c), *m = mk_obj(c);
	put_if(c, out, "model", in, "model");
	put_lit(c, m, "role", "user");
	put(c, m, "content", prompt);
	add(c, list, m);
	put(c, out, "messages", list);
	static const char *const keep[] = { "max_tokens", "temperature", "top_p", "n", "stop",
		                            "presence_penalty", "frequency_penalty", "logit_bias",
		                            "seed", "user", "stream", "stream_options" };
	for (size_t i = 0; i < SL_ARRAY_LEN(keep); i++)
		put_if(c, out, strcmp(keep[i], "max_tokens") == 0 ? "max_completion_tokens" : keep[i],
		       in, keep[i]);
	return out;
}

/* --- sl_convert_request ------------------------------------------------------------------------ */

/* The error message for a failed conversion: a client error, or memory. */
static const char *cv_message(const struct cv *c)
{
	if (c->err)
		return c->err;
	return "the request is too large to convert (conversion memory limit reached)";
}

int sl_convert_request(struct sl_arena *a, struct sl_convert_ctx *ctx, const struct sl_json *in,
                       struct sl_json **out, const char **out_message)
{
	SL_ASSERT(a && ctx && out && out_message);
	struct cv c = { .a = a };
	struct sl_json *r = NULL;
	bool anthropic = ctx->upstream_format == SL_FORMAT_ANTHROPIC;
	ctx->stream = false;
	ctx->client_wants_usage = false;
	ctx->thinking = false;
	ctx->upstream_route = anthropic ? SL_ROUTE_MESSAGES : SL_ROUTE_CHAT_COMPLETIONS;
	*out = NULL;
	*out_message = NULL;

	if (!in) {
		cv_fail(&c, "the request body must be a JSON object");
	} else if (ctx->route == SL_ROUTE_CHAT_COMPLETIONS) {
		r = anthropic ? req_chat_to_anthropic(&c, ctx, in) : req_openai_passthrough(&c, ctx, in);
	} else if (ctx->route == SL_ROUTE_MESSAGES) {
		r = anthropic ? req_anthropic_passthrough(&c, ctx, in)
		              : req_anthropic_to_chat(&c, ctx, in);
	} else if (ctx->route == SL_ROUTE_RESPONSES || ctx->route == SL_ROUTE_COMPLETIONS) {
		bool responses = ctx->route == SL_ROUTE_RESPONSES;
		struct sl_json *chat = responses ? req_responses_to_chat(&c, in)
		                                 : req_legacy_to_chat(&c, in);
		if (chat && !c.err)
			r = anthropic ? req_chat_to_anthropic(&c, ctx, chat)
			              : req_openai_passthrough(&c, ctx, chat);
		if (responses)
			ctx->client_wants_usage = true; /* response.completed carries usage */
	} else if (ctx->route == SL_ROUTE_COUNT_TOKENS) {
		if (anthropic) {
			r = req_anthropic_passthrough(&c, ctx, in);
			ctx->upstream_route = SL_ROUTE_COUNT_TOKENS;
			ctx->stream = false;
		} else {
			cv_fail(&c, "count_tokens for an OpenAI-format model is answered locally "
			        "(sl_count_tokens_local), not converted");
		}
	} else if (ctx->route == SL_ROUTE_EMBEDDINGS || ctx->route == SL_ROUTE_IMAGES_GENERATIONS) {
		if (anthropic) {
			cv_fail(&c, "%s are not available for this model",
			        ctx->route == SL_ROUTE_EMBEDDINGS ? "embeddings" : "image generations");
		} else {
			r = req_openai_passthrough(&c, ctx, in);
			ctx->upstream_route = ctx->route;
		}
	} else {
		cv_fail(&c, "route %s has no request body to convert", sl_route_name(ctx->route));
	}
	if (c.err || c.oom || a->failed || !r) {
		*out_message = cv_message(&c);
		return SL_ERROR;
	}
	*out = r;
	return 0;
}

/* --- responses: Anthropic message -> chat.completion ------------------------------------------ */

static const char *finish_from_stop_reason(const struct sl_json *sr)
{
	if (sl_json_is_str(sr, "max_tokens") || sl_json_is_str(sr, "model_context_window_exceeded"))
		return "length";
	if (sl_json_is_str(sr, "tool_use"))
		return "tool_calls";
	if (sl_json_is_str(sr, "refusal"))
		return "content_filter";
	return "stop"; /* end_turn, stop_sequence, pause_turn, null */
}

static const char *stop_reason_from_finish(const struct sl_json *fr)
{
	if (sl_json_is_str(fr, "length"))
		return "max_tokens";
	if (sl_json_is_str(fr, "tool_calls") || sl_json_is_str(fr, "function_call"))
		return "tool_use";
	if (sl_json_is_str(fr, "content_filter"))
		return "refusal";
	return "end_turn"; /* stop, null */
}

static int64_t nonneg(int64_t n)
{
	return n < 0 ? 0 : n;
}

/* Anthropic usage -> chat usage: prompt_tokens counts every input token
 * (uncached + cache read + cache write), as OpenAI's does; the cache-write
 * part rides along as prompt_tokens_details.cache_write_tokens. */
static struct sl_json *usage_anthropic_to_chat(struct cv *c, const struct sl_json *u)
{
	int64_t in = nonneg(get_int(u, "input_tokens", 0));
	int64_t out = nonneg(get_int(u, "output_tokens", 0));
	int64_t cr = nonneg(get_int(u, "cache_read_input_tokens", 0));
	int64_t cw = nonneg(get_int(u, "cache_creation_input_tokens", 0));
	struct sl_json *o = mk_obj(c), *d = mk_obj(c);
	put(c, o, "prompt_tokens", mk_int(c, in + cr + cw));
	put(c, o, "completion_tokens", mk_int(c, out));
	put(c, o, "total_tokens", mk_int(c, in + cr + cw + out));
	put(c, d, "cached_tokens", mk_int(c, cr));
	if (cw > 0)
		put(c, d, "cache_write_tokens", mk_int(c, cw));
	put(c, o, "prompt_tokens_details", d);
	return o;
}

/* resp_anthropic_to_chat converts an Anthropic message to a
 * chat.completion (also the pivot for Responses and legacy clients). */
static struct sl_json *resp_anthropic_to_chat(struct cv *c, const struct sl_convert_ctx *ctx,
                                              const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "upstream response is not a JSON object");
	const struct sl_json *content = get(in, "content");
	if (type_is(in, "error"))
		return cv_fail(c, "upstream returned an error object with a success status");
	if (!is_arr(content))
		return cv_fail(c, "upstream response has no content array");

	struct sl_json *texts_buf[1];
	struct sl_json **texts = content->len > 1 ? sl_arena_alloc(c->a, content->len * sizeof *texts)
	                                          : texts_buf;
	struct reasoning *r = sl_arena_alloc(c->a, (content->len + 1) * sizeof *r);
	if (!texts || !r) {
		c->oom = true;
		return NULL;
	}
	uint32_t num_texts = 0, num_r = 0;
	struct sl_json *calls = NULL;
	for (uint32_t i = 0; i < content->len; i++) {
		const struct sl_json *b = content->u.items[i];
		if (type_is(b, "text") && is_str(get(b, "text"))) {
			texts[num_texts++] = get(b, "text");
		} else if (type_is(b, "tool_use")) {
			const struct sl_json *id = get(b, "id"), *name = get(b, "name");
			if (!is_str(name))
				return cv_fail(c, "upstream tool_use block %u has no name", i);
			if (!str_nonempty(id))
				id = client_id(c, ctx, in, "call_", calls ? calls->len : 0);
			size_t len = 2;
			const struct sl_json *input = get(b, "input");
			char *args = is_absent(input) ? (char *)"{}" : sl_json_serialize(c->a, input, &len);
			if (!args) {
				c->oom = true;
				return NULL;
			}
			struct sl_json *fn = mk_obj(c), *call = mk_obj(c);
			put(c, fn, "name", name);
			put(c, fn, "arguments", mk_ref(c, args, len));
			put(c, call, "id", id);
			put_lit(c, call, "type", "function");
			put(c, call, "function", fn);
			put_if(c, call, "extra_content", b, "extra_content");
			if (!calls)
				calls = mk_arr(c);
			add(c, calls, call);
		} else if (type_is(b, "thinking")) {
			const struct sl_json *t = get(b, "thinking"), *s = get(b, "signature");
			r[num_r++] = (struct reasoning){ is_str(t) ? t : NULL, is_str(s) ? s : NULL, NULL };
		} else if (type_is(b, "redacted_thinking") && is_str(get(b, "data"))) {
			r[num_r++] = (struct reasoning){ NULL, NULL, get(b, "data") };
		}
		/* Server tool blocks (web search...) have no chat equivalent. */
	}

	struct sl_json *msg = mk_obj(c);
	put_lit(c, msg, "role", "assistant");
	if (num_texts == 1)
		put(c, msg, "content", texts[0]);
	else if (num_texts > 1)
		put(c, msg, "content", cat(c, texts, num_texts, ""));
	else
		put(c, msg, "content", calls ? mk_null(c) : mk_lit(c, ""));
	put(c, msg, "refusal", mk_null(c));
	if (calls)
		put(c, msg, "tool_calls", calls);
	reasoning_to_chat(c, msg, r, num_r, true);

	const struct sl_json *sr = get(in, "stop_reason");
	const char *finish = finish_from_stop_reason(sr);
	struct sl_json *choice = mk_obj(c);
	put(c, choice, "index", mk_int(c, 0));
	put(c, choice, "message", msg);
	put(c, choice, "logprobs", mk_null(c));
	put(c, choice, "finish_reason", mk_ref(c, finish, strlen(finish)));
	struct sl_json *choices = mk_arr(c);
	add(c, choices, choice);

	struct sl_json *out = mk_obj(c);
	put(c, out, "id", client_id(c, ctx, in, "chatcmpl-", -1));
	put_lit(c, out, "object", "chat.completion");
	put(c, out, "created", mk_int(c, ctx->created_s));
	put(c, out, "model", model_for_client(c, ctx, in));
	put(c, out, "choices", choices);
	put(c, out, "usage", usage_anthropic_to_chat(c, get(in, "usage")));
	return out;
}

/* --- responses: chat.completion -> Anthropic message ------------------------------------------ */

/* The first choice's message of a chat.completion, validated. */
static const struct sl_json *chat_choice(struct cv *c, const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "upstream response is not a JSON object");
	if (is_obj(get(in, "error")))
		return cv_fail(c, "upstream returned an error object with a success status");
	const struct sl_json *choices = get(in, "choices");
	if (!is_arr(choices) || choices->len == 0)
		return cv_fail(c, "upstream response has no choices");
	const struct sl_json *choice = choices->u.items[0];
	if (!is_obj(get(choice, "message")))
		return cv_fail(c, "upstream response choice has no message");
	return choice;
}

/* Parses tool-call arguments from an upstream response into an object;
 * text that is not a JSON object is kept, wrapped, rather than lost
 * (docs/convert.md). */
static struct sl_json *response_arguments(struct cv *c, const struct sl_json *args)
{
	if (!str_nonempty(args) || !has_non_space(args))
		return mk_raw(c, "{}");
	struct sl_json *v;
	struct sl_json_error e;
	if (sl_json_parse(c->a, args->u.str, args->len, NULL, &v, &e) == 0 &&
	    v->type == SL_JSON_OBJECT)
		return v;
	if (c->a->failed) {
		c->oom = true;
		return NULL;
	}
	struct sl_json *o = mk_obj(c);
	put(c, o, "_invalid_arguments", args);
	return o;
}

static struct sl_json *resp_chat_to_anthropic(struct cv *c, const struct sl_convert_ctx *ctx,
                                              const struct sl_json *in)
{
	const struct sl_json *choice = chat_choice(c, in);
	if (!choice)
		return NULL;
	const struct sl_json *msg = get(choice, "message");
	struct sl_json *content = mk_arr(c);
	struct reasoning *r;
	uint32_t num_r = reasoning_from_chat(c, msg, &r);
	for (uint32_t i = 0; i < num_r; i++)
		add(c, content, reasoning_block(c, &r[i]));
	const struct sl_json *text = get(msg, "content");
	if (str_nonempty(text)) {
		add(c, content, mk_text_block(c, text));
	} else if (is_arr(text)) {
		for (uint32_t i = 0; i < text->len; i++) {
			const struct sl_json *t = get(text->u.items[i], "text");
			if (str_nonempty(t))
				add(c, content, mk_text_block(c, t));
		}
	}
	const struct sl_json *refusal = get(msg, "refusal");
	if (str_nonempty(refusal))
		add(c, content, mk_text_block(c, refusal));
	const struct sl_json *calls = get(msg, "tool_calls");
	uint32_t num_calls = 0;
	for (uint32_t i = 0; is_arr(calls) && i < calls->len; i++) {
		const struct sl_json *call = calls->u.items[i], *fn = get(call, "function");
		const struct sl_json *id = get(call, "id");
		if (!is_str(get(fn, "name")))
			return cv_fail(c, "upstream tool call %u has no function.name", i);
		struct sl_json *b = mk_obj(c);
		put_lit(c, b, "type", "tool_use");
		put(c, b, "id", str_nonempty(id) ? id : client_id(c, ctx, in, "toolu_", i));
		put(c, b, "name", get(fn, "name"));
		put(c, b, "input", response_arguments(c, get(fn, "arguments")));
		put_if(c, b, "extra_content", call, "extra_content");
		add(c, content, b);
		num_calls++;
	}

	const struct sl_json *fr = get(choice, "finish_reason");
	const char *sr = stop_reason_from_finish(fr);
	/* Some hosts end a tool-calling turn with "stop". */
	if (num_calls > 0 && sl_json_is_str(fr, "stop"))
		sr = "tool_use";
	if (str_nonempty(refusal) && !sl_json_is_str(fr, "length"))
		sr = "refusal";

	const struct sl_json *u = get(in, "usage"), *pd = get(u, "prompt_tokens_details");
	int64_t prompt = nonneg(get_int(u, "prompt_tokens", 0));
	int64_t cached = nonneg(get_int(pd, "cached_tokens", 0));
	int64_t written = nonneg(get_int(pd, "cache_write_tokens", 0));
	struct sl_json *usage = mk_obj(c);
	put(c, usage, "input_tokens", mk_int(c, nonneg(prompt - cached - written)));
	put(c, usage, "cache_creation_input_tokens", mk_int(c, written));
	put(c, usage, "cache_read_input_tokens", mk_int(c, cached));
	put(c, usage, "output_tokens", mk_int(c, nonneg(get_int(u, "completion_tokens", 0))));

	struct sl_json *out = mk_obj(c);
	put(c, out, "id", client_id(c, ctx, in, "msg_", -1));
	put_lit(c, out, "type", "message");
	put_lit(c, out, "role", "assistant");
	put(c, out, "model", model_for_client(c, ctx, in));
	put(c, out, "content", content);
	put(c, out, "stop_reason", mk_ref(c, sr, strlen(sr)));
	put(c, out, "stop_sequence", mk_null(c));
	put(c, out, "usage", usage);
	return c->err ? NULL : out;
}

/* --- responses: chat.completion -> Responses object -------------------------------------------- */

static struct sl_json *resp_chat_to_responses(struct cv *c, const struct sl_convert_ctx *ctx,
                                              const struct sl_json *in)
{
	const struct sl_json *choice = chat_choice(c, in);
	if (!choice)
		return NULL;
	const struct sl_json *msg = get(choice, "message");
	struct sl_json *output = mk_arr(c);
	uint32_t index = 0;

	struct reasoning *r;
	uint32_t num_r = reasoning_from_chat(c, msg, &r);
	for (uint32_t i = 0; i < num_r; i++) {
		struct sl_json *it = mk_obj(c), *summary = mk_arr(c);
		put(c, it, "id", client_id(c, ctx, in, "rs_", index++));
		put_lit(c, it, "type", "reasoning");
		if (r[i].text && r[i].text->len > 0) {
			struct sl_json *s = mk_obj(c);
			put_lit(c, s, "type", "summary_text");
			put(c, s, "text", r[i].text);
			add(c, summary, s);
		}
		put(c, it, "summary", summary);
		if (r[i].data)
			put(c, it, "encrypted_content",
			    cat3(c, REDACTED_PREFIX, sizeof REDACTED_PREFIX - 1, r[i].data->u.str,
			         r[i].data->len, "", 0));
		else if (str_nonempty(r[i].signature))
			put(c, it, "encrypted_content", r[i].signature);
		add(c, output, it);
	}

	const struct sl_json *text = get(msg, "content"), *refusal = get(msg, "refusal");
	const struct sl_json *calls = get(msg, "tool_calls");
	struct sl_json *parts = mk_arr(c);
	if (is_str(text) && (text->len > 0 || !is_arr(calls) || calls->len == 0)) {
		struct sl_json *p = mk_obj(c);
		put_lit(c, p, "type", "output_text");
		put(c, p, "text", text);
		put(c, p, "annotations", mk_arr(c));
		add(c, parts, p);
	} else if (is_arr(text)) {
		for (uint32_t i = 0; i < text->len; i++) {
			const struct sl_json *t = get(text->u.items[i], "text");
			if (!is_str(t))
				continue;
			struct sl_json *p = mk_obj(c);
			put_lit(c, p, "type", "output_text");
			put(c, p, "text", t);
			put(c, p, "annotations", mk_arr(c));
			add(c, parts, p);
		}
	}
	if (str_nonempty(refusal)) {
		struct sl_json *p = mk_obj(c);
		put_lit(c, p, "type", "refusal");
		put(c, p, "refusal", refusal);
		add(c, parts, p);
	}
	const struct sl_json *fr = get(choice, "finish_reason");
	bool incomplete = sl_json_is_str(fr, "length") || sl_json_is_str(fr, "content_filter");
	if (parts && parts->len > 0) {
		struct sl_json *it = mk_obj(c);
		put(c, it, "id", client_id(c, ctx, in, "msg_", index++));
		put_lit(c, it, "type", "message");
		put(c, it, "status", incomplete ? mk_lit(c, "incomplete") : mk_lit(c, "completed"));
		put_lit(c, it, "role", "assistant");
		put(c, it, "content", parts);
		add(c, output, it);
	}
	for (uint32_t i = 0; is_arr(calls) && i < calls->len; i++) {
		const struct sl_json *call = calls->u.items[i], *fn = get(call, "function");
		const struct sl_json *id = get(call, "id");
		if (!is_str(get(fn, "name")))
			return cv_fail(c, "upstream tool call %u has no function.name", i);
		const struct sl_json *args = get(fn, "arguments");
		struct sl_json *it = mk_obj(c);
		put(c, it, "id", client_id(c, ctx, in, "fc_", index++));
		put_lit(c, it, "type", "function_call");
		put_lit(c, it, "status", "completed");
		put(c, it, "call_id", str_nonempty(id) ? id : client_id(c, ctx, in, "call_", i));
		put(c, it, "name", get(fn, "name"));
		put(c, it, "arguments", is_str(args) ? args : mk_lit(c, "{}"));
		put_if(c, it, "extra_content", call, "extra_content");
		add(c, output, it);
	}

	struct sl_json *details = mk_null(c);
	if (incomplete) {
		details = mk_obj(c);
		put(c, details, "reason", sl_json_is_str(fr, "length") ? mk_lit(c, "max_output_tokens")
		                                                       : mk_lit(c, "content_filter"));
	}

	const struct sl_json *u = get(in, "usage");
	int64_t input = nonneg(get_int(u, "prompt_tokens", 0));
	int64_t output_tokens = nonneg(get_int(u, "completion_tokens", 0));
	struct sl_json *usage = mk_obj(c), *itd = mk_obj(c), *otd = mk_obj(c);
	put(c, usage, "input_tokens", mk_int(c, input));
	put(c, itd, "cached_tokens",
	    mk_int(c, nonneg(get_int(get(u, "prompt_tokens_details"), "cached_tokens", 0))));
	put(c, usage, "input_tokens_details", itd);
	put(c, usage, "output_tokens", mk_int(c, output_tokens));
	put(c, otd, "reasoning_tokens",
	    mk_int(c, nonneg(get_int(get(u, "completion_tokens_details"), "reasoning_tokens", 0))));
	put(c, usage, "output_tokens_details", otd);
	put(c, usage, "total_tokens", mk_int(c, input + output_tokens));

	/* The request parameters a real Response echoes are not known here: the
	 * fields SDKs type as required get neutral values (docs/convert.md). */
	struct sl_json *out = mk_obj(c);
	put(c, out, "id", client_id(c, ctx, in, "resp_", -1));
	put_lit(c, out, "object", "response");
	put(c, out, "created_at", mk_int(c, ctx->created_s));
	put(c, out, "status", incomplete ? mk_lit(c, "incomplete") : mk_lit(c, "completed"));
	put(c, out, "error", mk_null(c));
	put(c, out, "incomplete_details", details);
	put(c, out, "instructions", mk_null(c));
	put(c, out, "max_output_tokens", mk_null(c));
	put(c, out, "model", model_for_client(c, ctx, in));
	put(c, out, "output", output);
	put(c, out, "parallel_tool_calls", mk_bool(c, true));
	put(c, out, "previous_response_id", mk_null(c));
	put(c, out, "temperature", mk_null(c));
	put_lit(c, out, "tool_choice", "auto");
	put(c, out, "tools", mk_arr(c));
	put(c, out, "top_p", mk_null(c));
	put(c, out, "metadata", mk_obj(c));
	put(c, out, "usage", usage);
	return c->err ? NULL : out;
}

/* --- responses: chat.completion -> legacy text_completion -------------------------------------- */

static struct sl_json *resp_chat_to_legacy(struct cv *c, const struct sl_convert_ctx *ctx,
                                           const struct sl_json *in)
{
	if (!chat_choice(c, in))
		return NULL;
	const struct sl_json *choices = get(in, "choices");
	struct sl_json *out_choices = mk_arr(c);
	for (uint32_t i = 0; i < choices->len; i++) {
		const struct sl_json *ch = choices->u.items[i], *msg = get(ch, "message");
		const struct sl_json *text = get(msg, "content");
		const struct sl_json *fr = get(ch, "finish_reason");
		struct sl_json *o = mk_obj(c);
		put(c, o, "text", is_str(text) ? text : mk_lit(c, ""));
		put(c, o, "index", is_num(get(ch, "index")) ? get(ch, "index") : mk_int(c, i));
		put(c, o, "logprobs", mk_null(c));
		put(c, o, "finish_reason",
		    sl_json_is_str(fr, "length") || sl_json_is_str(fr, "content_filter") ? fr
		                                                                          : mk_lit(c, "stop"));
		add(c, out_choices, o);
	}
	const struct sl_json *u = get(in, "usage");
	int64_t p = nonneg(get_int(u, "prompt_tokens", 0)), q = nonneg(get_int(u, "completion_tokens", 0));
	struct sl_json *usage = mk_obj(c);
	put(c, usage, "prompt_tokens", mk_int(c, p));
	put(c, usage, "completion_tokens", mk_int(c, q));
	put(c, usage, "total_tokens", mk_int(c, p + q));
	struct sl_json *out = mk_obj(c);
	put(c, out, "id", client_id(c, ctx, in, "cmpl-", -1));
	put_lit(c, out, "object", "text_completion");
	put(c, out, "created", mk_int(c, ctx->created_s));
	put(c, out, "model", model_for_client(c, ctx, in));
	put(c, out, "choices", out_choices);
	put(c, out, "usage", usage);
	return out;
}

/* Same format: the body as is, with the client's model name. */
static struct sl_json *resp_passthrough(struct cv *c, const struct sl_convert_ctx *ctx,
                                        const struct sl_json *in)
{
	if (!is_obj(in))
		return cv_fail(c, "upstream response is not a JSON object");
	struct sl_json *out = mk_obj(c);
	for (uint32_t i = 0; i < in->len; i++) {
		const struct sl_json_member *mb = &in->u.members[i];
		put(c, out, mb->key, strcmp(mb->key, "model") == 0 && ctx->client_model
		                             ? model_for_client(c, ctx, in)
		                             : mb->value);
	}
	return out;
}

int sl_convert_response(struct sl_arena *a, const struct sl_convert_ctx *ctx,
                        const struct sl_json *in, struct sl_json **out, const char **out_message)
{
	SL_ASSERT(a && ctx && out && out_message);
	struct cv c = { .a = a };
	struct sl_json *r = NULL;
	bool anthropic = ctx->upstream_format == SL_FORMAT_ANTHROPIC;
	*out = NULL;
	*out_message = NULL;

	if (!in) {
		cv_fail(&c, "upstream response is not a JSON object");
	} else if (ctx->route == SL_ROUTE_CHAT_COMPLETIONS) {
		r = anthropic ? resp_anthropic_to_chat(&c, ctx, in) : resp_passthrough(&c, ctx, in);
	} else if (ctx->route == SL_ROUTE_MESSAGES) {
		r = anthropic ? resp_passthrough(&c, ctx, in) : resp_chat_to_anthropic(&c, ctx, in);
	} else if (ctx->route == SL_ROUTE_RESPONSES || ctx->route == SL_ROUTE_COMPLETIONS) {
		const struct sl_json *chat = anthropic ? resp_anthropic_to_chat(&c, ctx, in) : in;
		if (chat && !c.err)
			r = ctx->route == SL_ROUTE_RESPONSES ? resp_chat_to_responses(&c, ctx, chat)
			                                     : resp_chat_to_legacy(&c, ctx, chat);
	} else if (is_obj(in)) {
		r = resp_passthrough(&c, ctx, in); /* count_tokens, embeddings, images */
	} else {
		cv_fail(&c, "upstream response is not a JSON object");
	}
	if (c.err || c.oom || a->failed || !r) {
		*out_message = c.err ? c.err : "the upstream response is too large to convert";
		return SL_ERROR;
	}
	*out = r;
	return 0;
}

/* --- errors ---------------------------------------------------------------------------------- */

/* Error types by status, in each client format's vocabulary. */
static const char *error_type(unsigned status, bool anthropic)
{
	switch (status) {
	case 400:
	case 422:
		return "invalid_request_error";
	case 401:
		return "authentication_error";
	case 402:
		return anthropic ? "billing_error" : "insufficient_quota";
	case 403:
		return "permission_error";
	case 404:
		return anthropic ? "not_found_error" : "not_found";
	case 408:
	case 504:
		return anthropic ? "timeout_error" : "upstream_timeout";
	case 413:
		return anthropic ? "request_too_large" : "payload_too_large";
	case 429:
		return "rate_limit_error";
	case 503:
	case 529:
		return anthropic ? "overloaded_error" : "overloaded";
	default:
		if (status >= 500)
			return anthropic ? "api_error" : "server_error";
		return "invalid_request_error";
	}
}

/* Copies at most ERROR_MESSAGE_BYTES_MAX bytes of non-JSON error text,
 * replacing invalid UTF-8 and control bytes so it can be a JSON string. */
static struct sl_json *error_text(struct cv *c, const char *s, size_t len)
{
	while (len > 0 && is_space(s[len - 1]))
		len--;
	while (len > 0 && is_space(s[0]))
		s++, len--;
	if (len > ERROR_MESSAGE_BYTES_MAX)
		len = (size_t)clip_utf8(s, len, ERROR_MESSAGE_BYTES_MAX);
	char *p = sl_arena_alloc(c->a, len + 1);
	if (!p) {
		c->oom = true;
		return NULL;
	}
	size_t n = 0;
	for (size_t i = 0; i < len;) {
		unsigned char ch = (unsigned char)s[i];
		size_t k = ch < 0x80 ? 1 : ch >= 0xC2 && ch <= 0xDF ? 2 : ch >= 0xE0 && ch <= 0xEF ? 3
		                      : ch >= 0xF0 && ch <= 0xF4 ? 4 : 0;
		if (k > 1 && i + k <= len && utf8_valid(s + i, k)) {
			memcpy(p + n, s + i, k);
			n += k;
			i += k;
			continue;
		}
		p[n++] = (k == 1 && ch >= 0x20) || ch == '\t' || ch == '\n' ? (char)ch : '?';
		i++;
	}
	p[n] = '\0';
	return mk_ref(c, p, n);
}

/*
 * error_fields finds the message, type and code of an upstream error body:
 * OpenAI {"error":{"message","type","code"}}, Anthropic {"type":"error",
 * "error":{"type","message"}}, a bare {"error":"text"}, {"message":..},
 * {"detail":..} (FastAPI hosts) or a one-element array of those (Gemini).
 */
static void error_fields(const struct sl_json *v, const struct sl_json **message,
                         const struct sl_json **type, const struct sl_json **code)
{
	if (is_arr(v) && v->len > 0)
		v = v->u.items[0];
	const struct sl_json *e = get(v, "error");
	if (is_str(e)) {
		*message = e;
		return;
	}
	if (!is_obj(e))
		e = v;
	*message = is_str(get(e, "message")) ? get(e, "message") : NULL;
	if (!*message && is_str(get(e, "detail")))
		*message = get(e, "detail");
	if (!*message && is_str(get(get(e, "detail"), "message")))
		*message = get(get(e, "detail"), "message");
	const struct sl_json *t = get(e, "type");
	*type = is_str(t) && !sl_json_is_str(t, "error") ? t : NULL;
	const struct sl_json *k = get(e, "code");
	*code = is_str(k) ? k : NULL; /* OpenAI SDKs type code as a string */
}

const char *sl_convert_error(struct sl_arena *a, const struct sl_convert_ctx *ctx, unsigned status,
                             const char *body, size_t body_len, size_t *out_len)
{
	static const char fallback_openai[] =
		"{\"error\":{\"message\":\"upstream error\",\"type\":\"upstream_error\","
		"\"param\":null,\"code\":null}}";
	static const char fallback_anthropic[] =
		"{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream error\"}}";
	SL_ASSERT(a && ctx && out_len);
	bool anthropic = ctx->route == SL_ROUTE_MESSAGES || ctx->route == SL_ROUTE_COUNT_TOKENS;
	struct cv c = { .a = a };

	const struct sl_json *message = NULL, *utype = NULL, *code = NULL;
	struct sl_json *parsed = NULL;
	struct sl_json_error perr;
	struct sl_json_limits limits = { .depth_max = 64, .text_len_max = 1u << 20 };
	if (body && body_len > 0 &&
	    sl_json_parse(a, body, body_len, &limits, &parsed, &perr) == 0)
		error_fields(parsed, &message, &utype, &code);
	if (!message && body && body_len > 0 && !parsed)
		message = error_text(&c, body, body_len);
	if (!message || message->len == 0) {
		char text[64];
		int n = snprintf(text, sizeof text, "upstream returned HTTP %u", status);
		message = mk_copy(&c, text, n > 0 ? (size_t)n : 0);
	}
	const char *type = error_type(status, anthropic);

	struct sl_json *out = mk_obj(&c), *e = mk_obj(&c);
	if (anthropic) {
		put_lit(&c, out, "type", "error");
		put(&c, e, "type", mk_ref(&c, type, strlen(type)));
		put(&c, e, "message", message);
		put(&c, out, "error", e);
	} else {
		put(&c, e, "message", message);
		put(&c, e, "type", mk_ref(&c, type, strlen(type)));
		put(&c, e, "param", mk_null(&c));
		/* The upstream's own code, else its type (Anthropic's are codes). */
		put(&c, e, "code", code ? code : utype ? utype : mk_null(&c));
		put(&c, out, "error", e);
	}
	char *text = NULL;
	if (!c.oom && !a->failed)
		text = sl_json_serialize(a, out, out_len);
	if (!text) {
		*out_len = anthropic ? sizeof fallback_anthropic - 1 : sizeof fallback_openai - 1;
		return anthropic ? fallback_anthropic : fallback_openai;
	}
	return text;
}

/* --- usage ------------------------------------------------------------------------------------ */

void sl_usage_from_response(const struct sl_json *body, enum sl_format format,
                            struct sl_usage *out)
{
	SL_ASSERT(out);
	*out = (struct sl_usage){ -1, -1, -1, -1 };
	const struct sl_json *u = get(body, "usage");
	if (!is_obj(u))
		return;
	int64_t n;
	if (format == SL_FORMAT_ANTHROPIC) {
		if (sl_json_get_int(u, "input_tokens", &n))
			out->input_tokens = n;
		if (sl_json_get_int(u, "output_tokens", &n))
			out->output_tokens = n;
		if (sl_json_get_int(u, "cache_read_input_tokens", &n))
			out->cache_read_tokens = n;
		if (sl_json_get_int(u, "cache_creation_input_tokens", &n))
			out->cache_write_tokens = n;
		return;
	}
	/* OpenAI counts cached tokens inside prompt_tokens; sl_usage (like
	 * Anthropic) counts them apart, so billing never charges them twice.
	 * Chat/legacy/embeddings name them prompt/completion, Responses
	 * input/output. */
	bool responses = !get(u, "prompt_tokens") && get(u, "input_tokens");
	const struct sl_json *details = get(u, responses ? "input_tokens_details"
	                                                 : "prompt_tokens_details");
	int64_t cached = -1, written = -1;
	if (sl_json_get_int(details, "cached_tokens", &n))
		cached = n;
	if (sl_json_get_int(details, "cache_write_tokens", &n))
		written = n;
	if (sl_json_get_int(u, responses ? "input_tokens" : "prompt_tokens", &n))
		out->input_tokens = nonneg(n - SL_MAX(cached, 0) - SL_MAX(written, 0));
	if (sl_json_get_int(u, responses ? "output_tokens" : "completion_tokens", &n))
		out->output_tokens = n;
	out->cache_read_tokens = cached;
	out->cache_write_tokens = written;
}

/* --- local token count -------------------------------------------------------------------------- */

/*
 * The estimate (docs/convert.md has the method and the error measured
 * against o200k and cl100k): text costs a quarter token per ASCII letter,
 * digit or blank, half a token per ASCII punctuation byte (code and markup
 * split there), a third per 2-byte UTF-8 character (accented Latin,
 * Cyrillic, Greek, Arabic...), 0.92 per 3-byte one (CJK) and two per 4-byte
 * one (emoji); compact JSON (tool schemas, tool inputs) a quarter per byte,
 * as BPE merges its quoted keys; plus fixed costs per message, tool, image
 * and document.
 */
#define COUNT_BASE_TOKENS 3            /* reply priming */
#define COUNT_MESSAGE_TOKENS 4         /* role and separators */
#define COUNT_TOOL_TOKENS 8            /* per tool definition */
#define COUNT_TOOLS_PREAMBLE_TOKENS 16 /* the tool-use preamble, once */
#define COUNT_IMAGE_TOKENS 765         /* a 1024x1024 image at high detail */
#define COUNT_PDF_PAGE_BYTES 3000      /* base64 PDF bytes per page, roughly... */
#define COUNT_PDF_PAGE_TOKENS 1000     /* ...and what a page costs */
#define COUNT_UNITS_PER_TOKEN 12

/* The weight of one byte, in twelfths of a token. */
static inline unsigned byte_units(unsigned char ch)
{
	if (ch < 0x80) {
		bool word = (ch | 0x20) - 'a' < 26u || ch - '0' < 10u || ch == ' ' || ch == '\n' ||
		            ch == '\t';
		return word ? 3 : 6;
	}
	if (ch >= 0xF0)
		return 24;
	if (ch >= 0xE0)
		return 11;
	return ch >= 0xC0 ? 4 : 0; /* continuation bytes are free */
}

/* Text weight in twelfths of a token. This runs over every admitted body
 * when a token limit applies, so ASCII goes 16 bytes at a time: a word byte
 * (letter, digit, blank) costs 3, any other ASCII byte 6, exactly as
 * byte_units; a block holding a non-ASCII byte goes byte by byte. */
static uint64_t text_units(const char *s, size_t len)
{
	uint64_t q = 0;
	size_t i = 0;
#ifdef __SSE2__
	const __m128i case_bit = _mm_set1_epi8(0x20);
	/* x + (0x80 - lo) maps lo..lo+n-1 onto -128..-128+n-1 (signed) */
	const __m128i to_a = _mm_set1_epi8((char)(0x80 - 'a'));
	const __m128i to_0 = _mm_set1_epi8((char)(0x80 - '0'));
	const __m128i below_26 = _mm_set1_epi8((char)(-128 + 26));
	const __m128i below_10 = _mm_set1_epi8((char)(-128 + 10));
	const __m128i sp = _mm_set1_epi8(' '), nl = _mm_set1_epi8('\n'), tab = _mm_set1_epi8('\t');
	const __m128i zero = _mm_setzero_si128();
	/* word bytes are counted per lane (a lane holds at most 255) and
	 * summed across lanes every 255 blocks and at the end */
	__m128i lanes = zero;
	uint64_t ascii_blocks = 0, words = 0;
	unsigned pending = 0;
	for (; i + 16 <= len; i += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
		if (_mm_movemask_epi8(v) != 0) {
			for (size_t j = i; j < i + 16; j++)
				q += byte_units((unsigned char)s[j]);
			continue;
		}
		__m128i letter = _mm_cmplt_epi8(_mm_add_epi8(_mm_or_si128(v, case_bit), to_a), below_26);
		__m128i digit = _mm_cmplt_epi8(_mm_add_epi8(v, to_0), below_10);
		__m128i blank = _mm_or_si128(_mm_cmpeq_epi8(v, sp),
		                             _mm_or_si128(_mm_cmpeq_epi8(v, nl), _mm_cmpeq_epi8(v, tab)));
		/* a word byte's mask is -1: subtracting it counts one */
		lanes = _mm_sub_epi8(lanes, _mm_or_si128(letter, _mm_or_si128(digit, blank)));
		ascii_blocks++;
		if (++pending == 255) {
			__m128i sums = _mm_sad_epu8(lanes, zero);
			words += (uint64_t)_mm_cvtsi128_si64(sums) +
			         (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
			lanes = zero;
			pending = 0;
		}
	}
	__m128i sums = _mm_sad_epu8(lanes, zero);
	words += (uint64_t)_mm_cvtsi128_si64(sums) +
	         (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums));
	q += 16 * 6 * ascii_blocks - 3 * words;
#endif
	for (; i < len; i++)
		q += byte_units((unsigned char)s[i]);
	return q;
}

static int64_t text_tokens(const struct sl_json *s)
{
	if (!is_str(s))
		return 0;
	return (int64_t)((text_units(s->u.str, s->len) + COUNT_UNITS_PER_TOKEN - 1) /
	                 COUNT_UNITS_PER_TOKEN);
}

static int64_t json_tokens(const struct sl_json *v)
{
	return v ? (int64_t)((sl_json_serialized_len(v) + 3) / 4) : 0;
}

static int64_t blocks_tokens(const struct sl_json *content, unsigned depth);

static int64_t block_tokens(const struct sl_json *b, unsigned depth)
{
	if (type_is(b, "text"))
		return text_tokens(get(b, "text"));
	if (type_is(b, "image"))
		return COUNT_IMAGE_TOKENS;
	if (type_is(b, "document")) {
		const struct sl_json *src = get(b, "source");
		if (type_is(src, "text"))
			return text_tokens(get(src, "data"));
		if (type_is(src, "content"))
			return blocks_tokens(get(src, "content"), depth + 1);
		const struct sl_json *data = get(src, "data");
		uint64_t pages = is_str(data) ? data->len / COUNT_PDF_PAGE_BYTES + 1 : 1;
		return (int64_t)pages * COUNT_PDF_PAGE_TOKENS;
	}
	if (type_is(b, "tool_use"))
		return COUNT_MESSAGE_TOKENS + text_tokens(get(b, "name")) + json_tokens(get(b, "input"));
	if (type_is(b, "tool_result"))
		return COUNT_MESSAGE_TOKENS + blocks_tokens(get(b, "content"), depth + 1);
	/* thinking of earlier turns is not part of the context models see */
	return 0;
}

static int64_t blocks_tokens(const struct sl_json *content, unsigned depth)
{
	if (is_str(content))
		return text_tokens(content);
	if (!is_arr(content) || depth > 4)
		return 0;
	int64_t n = 0;
	for (uint32_t i = 0; i < content->len; i++)
		n += block_tokens(content->u.items[i], depth);
	return n;
}

int64_t sl_count_tokens_local(const struct sl_json *request)
{
	if (!is_obj(request))
		return SL_ERROR;
	int64_t n = COUNT_BASE_TOKENS;
	const struct sl_json *system = get(request, "system");
	if (!is_absent(system))
		n += COUNT_MESSAGE_TOKENS + blocks_tokens(system, 0);
	const struct sl_json *msgs = get(request, "messages");
	for (uint32_t i = 0; is_arr(msgs) && i < msgs->len; i++)
		n += COUNT_MESSAGE_TOKENS + blocks_tokens(get(msgs->u.items[i], "content"), 0);
	const struct sl_json *tools = get(request, "tools");
	if (is_arr(tools) && tools->len > 0) {
		n += COUNT_TOOLS_PREAMBLE_TOKENS;
		for (uint32_t i = 0; i < tools->len; i++) {
			const struct sl_json *t = tools->u.items[i];
			n += COUNT_TOOL_TOKENS + text_tokens(get(t, "name")) +
			     text_tokens(get(t, "description")) + json_tokens(get(t, "input_schema"));
		}
	}
	return n;
}
