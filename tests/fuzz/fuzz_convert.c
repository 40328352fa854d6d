/*
 * fuzz_convert.c - libFuzzer driver for the request, response and error
 * converters (convert.c).
 *
 * Input: byte 0 picks the arena limit (bits 0-1: 16 MiB, 64 KiB, 4 KiB, or
 * 256 bytes times the rest of the byte, to reach every out-of-memory path);
 * the rest is a JSON document. Every input goes through every conversion
 * (each client route x upstream format, requests and responses), then the
 * converted requests through the opposite direction, and the raw bytes
 * through sl_convert_error. Properties, checked on every input:
 *   - no crash, no leak, no sanitizer report;
 *   - a conversion that succeeds gives a tree that serialises to JSON that
 *     parses again, as an object; one that fails gives a message (valid
 *     UTF-8, as it goes into a JSON error body);
 *   - an error body is always a JSON object, whatever the upstream sent.
 *
 *   ninja build/fuzz/fuzz_convert
 *   build/fuzz/fuzz_convert -dict=tests/fuzz/convert.dict tests/fuzz/corpus/convert \
 *       -max_total_time=600
 */
#include "sluice/convert.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool fz_utf8(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		size_t n = *p < 0x80 ? 0 : *p >= 0xF0 ? 3 : *p >= 0xE0 ? 2 : *p >= 0xC2 ? 1 : 9;
		if (n == 9)
			return false;
		for (size_t i = 1; i <= n; i++)
			if ((p[i] & 0xC0) != 0x80)
				return false;
		p += n + 1;
	}
	return true;
}

/* Serialises v and parses it back: it must be a JSON object. */
static void fz_check_tree(struct sl_arena *a, const struct sl_json *v)
{
	SL_ASSERT(v != NULL);
	size_t len;
	char *text = sl_json_serialize(a, v, &len);
	if (!text) {
		SL_ASSERT(a->failed); /* only memory may stop it */
		return;
	}
	SL_ASSERT(len == sl_json_serialized_len(v));
	struct sl_json *back;
	struct sl_json_error e;
	/* Outputs nest input subtrees a few levels deeper than the input. */
	struct sl_json_limits deep = { .depth_max = 1024 };
	int rc = sl_json_parse(a, text, len, &deep, &back, &e);
	if (rc != 0) {
		SL_ASSERT(a->failed);
		return;
	}
	SL_ASSERT(back->type == SL_JSON_OBJECT);
}

static void fz_ctx(struct sl_convert_ctx *ctx, enum sl_route route, enum sl_format format)
{
	*ctx = (struct sl_convert_ctx){
		.route = route,
		.upstream_format = format,
		.upstream_model = "up",
		.client_model = "client",
		.default_max_tokens = 0,
		.request_id = "req",
		.created_s = 1,
	};
}

static const enum sl_route fz_routes[] = {
	SL_ROUTE_CHAT_COMPLETIONS, SL_ROUTE_MESSAGES, SL_ROUTE_RESPONSES, SL_ROUTE_COMPLETIONS,
	SL_ROUTE_COUNT_TOKENS,     SL_ROUTE_EMBEDDINGS,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	static const size_t limits[] = { 16u << 20, 64u << 10, 4u << 10 };
	size_t limit = (data[0] & 3) < 3 ? limits[data[0] & 3] : (size_t)(data[0] >> 2) * 256 + 64;
	const char *text = (const char *)data + 1;
	size_t len = size - 1;

	struct sl_arena in_arena;
	sl_arena_init(&in_arena, NULL, 16u << 20);
	struct sl_json *in = NULL;
	struct sl_json_error e;
	bool parsed = sl_json_parse(&in_arena, text, len, NULL, &in, &e) == 0;

	for (size_t r = 0; parsed && r < SL_ARRAY_LEN(fz_routes); r++) {
		for (int f = 0; f < 2; f++) {
			enum sl_format format = f ? SL_FORMAT_ANTHROPIC : SL_FORMAT_OPENAI;
			struct sl_arena a;
			sl_arena_init(&a, NULL, limit);
			struct sl_convert_ctx ctx;
			fz_ctx(&ctx, fz_routes[r], format);
			struct sl_json *out = NULL;
			const char *message = NULL;
			if (sl_convert_request(&a, &ctx, in, &out, &message) == 0) {
				fz_check_tree(&a, out);
				/* The converted request, as a client of the upstream's
				 * format would send it, back the other way. */
				struct sl_convert_ctx back;
				fz_ctx(&back, ctx.upstream_route == SL_ROUTE_MESSAGES ? SL_ROUTE_MESSAGES
				                                                       : SL_ROUTE_CHAT_COMPLETIONS,
				       format == SL_FORMAT_OPENAI ? SL_FORMAT_ANTHROPIC : SL_FORMAT_OPENAI);
				struct sl_json *out2 = NULL;
				if (sl_convert_request(&a, &back, out, &out2, &message) == 0)
					fz_check_tree(&a, out2);
				else
					SL_ASSERT(message && fz_utf8(message));
			} else {
				SL_ASSERT(out == NULL && message != NULL && fz_utf8(message));
			}
			sl_arena_release(&a);

			sl_arena_init(&a, NULL, limit);
			fz_ctx(&ctx, fz_routes[r], format);
			out = NULL;
			if (sl_convert_response(&a, &ctx, in, &out, &message) == 0)
				fz_check_tree(&a, out);
			else
				SL_ASSERT(out == NULL && message != NULL && fz_utf8(message));
			struct sl_usage u;
			sl_usage_from_response(in, format, &u);
			SL_ASSERT(u.input_tokens >= -1 && u.cache_read_tokens >= -1);
			sl_arena_release(&a);
		}
	}
	if (parsed)
		(void)sl_count_tokens_local(in);

	static const unsigned statuses[] = { 400, 429, 500, 529 };
	for (size_t i = 0; i < SL_ARRAY_LEN(statuses); i++) {
		struct sl_arena a;
		sl_arena_init(&a, NULL, limit);
		struct sl_convert_ctx ctx;
		fz_ctx(&ctx, i & 1 ? SL_ROUTE_MESSAGES : SL_ROUTE_CHAT_COMPLETIONS, SL_FORMAT_OPENAI);
		size_t body_len;
		const char *body = sl_convert_error(&a, &ctx, statuses[i], text, len, &body_len);
		SL_ASSERT(body && body_len > 0);
		struct sl_arena check;
		sl_arena_init(&check, NULL, 0);
		struct sl_json *v;
		SL_ASSERT(sl_json_parse(&check, body, body_len, NULL, &v, &e) == 0);
		SL_ASSERT(v->type == SL_JSON_OBJECT && sl_json_get(v, "error") != NULL);
		sl_arena_release(&check);
		sl_arena_release(&a);
	}
	sl_arena_release(&in_arena);
	return 0;
}
