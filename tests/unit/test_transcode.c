/*
 * test_transcode.c - the SSE stream transcoders: golden fixtures for every
 * direction, every split of every fixture, the SSE parser's corners,
 * malformed upstreams, usage, bounded memory, and the fuzz corpus.
 *
 *   build/test_transcode            (from the repository root)
 *   SLUICE_UPDATE_FIXTURES=1 build/test_transcode   rewrites the expected
 *   outputs (review the diff: they are the specification).
 *
 * Fixtures: tests/fixtures/transcode/<upstream>.sse is an upstream body
 * (openai-* or anthropic-*); <upstream>.<client>.sse is what the client gets.
 */
#include "../../src/transcode.c"
#include "../fuzz/fuzz_transcode.c"
#include "test.h"

#include <dirent.h>
#include <errno.h>

#define FIXTURES "tests/fixtures/transcode/"
/* HAS: the output buffer b contains the literal. */
#define HAS(b, lit) ((b).p && memmem((b).p, (b).len, (lit), sizeof(lit) - 1) != NULL)
#define CORPUS "tests/fuzz/corpus/transcode/"

/* --- helpers ------------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *out_len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, len = 0;
	char *p = malloc(cap);
	size_t n;
	while (p && (n = fread(p + len, 1, cap - len, f)) > 0) {
		len += n;
		if (len == cap)
			p = realloc(p, cap *= 2);
	}
	fclose(f);
	if (p) {
		p[len < cap ? len : cap - 1] = '\0';
		*out_len = len;
	}
	return p;
}

static bool write_file(const char *path, const char *s, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return false;
	bool ok = fwrite(s, 1, n, f) == n;
	return fclose(f) == 0 && ok;
}

static struct sl_convert_ctx ctx_for(enum sl_format upstream, enum sl_route route, bool usage)
{
	return (struct sl_convert_ctx){
		.route = route,
		.upstream_format = upstream,
		.upstream_model = "upstream-model-id",
		.client_model = "client-model",
		.request_id = "req_7f3c2a9b",
		.created_s = 1732240000,
		.client_wants_usage = usage,
	};
}

/* pieces: split points (ascending, < n), num_pieces of them. The run ends
 * with finish(upstream_ok) unless feed fails, then finish(false). Returns
 * the output in out (caller releases). */
static int run_split(const struct sl_convert_ctx *ctx, const char *s, size_t n, const size_t *cuts,
                     size_t cuts_num, bool upstream_ok, const char *message, struct sl_buf *out)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, (size_t)64 << 20);
	struct sl_transcoder *t = sl_transcoder_create(&a, NULL, ctx);
	if (!t)
		return -100;
	size_t off = 0;
	int rc = 0;
	for (size_t i = 0; i <= cuts_num && rc == 0; i++) {
		size_t end = i < cuts_num ? cuts[i] : n;
		rc = sl_transcoder_feed(t, s + off, end - off, out);
		off = end;
	}
	int frc = sl_transcoder_finish(t, rc == 0 && upstream_ok, message, out);
	sl_arena_release(&a);
	return rc ? rc : frc;
}

static int run_whole(const struct sl_convert_ctx *ctx, const char *s, size_t n, struct sl_buf *out)
{
	return run_split(ctx, s, n, NULL, 0, true, NULL, out);
}

static int run_bytes(const struct sl_convert_ctx *ctx, const char *s, size_t n, struct sl_buf *out)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, (size_t)64 << 20);
	struct sl_transcoder *t = sl_transcoder_create(&a, NULL, ctx);
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = sl_transcoder_feed(t, s + i, 1, out);
	int frc = sl_transcoder_finish(t, rc == 0, NULL, out);
	sl_arena_release(&a);
	return rc ? rc : frc;
}

static bool same(const struct sl_buf *a, const struct sl_buf *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

/* transcode_str: the whole output for a stream given as a C string. */
static char *transcode_str(enum sl_format up, enum sl_route route, bool usage, const char *stream,
                           int *out_rc)
{
	struct sl_convert_ctx ctx = ctx_for(up, route, usage);
	struct sl_buf out;
	sl_buf_init(&out, NULL, 0);
	int rc = run_whole(&ctx, stream, strlen(stream), &out);
	if (out_rc)
		*out_rc = rc;
	SL_BUF_LIT(&out, "\0");
	return out.p;
}

static const char *route_suffix(enum sl_route r)
{
	switch (r) {
	case SL_ROUTE_MESSAGES:
		return "messages";
	case SL_ROUTE_CHAT_COMPLETIONS:
		return "chat";
	case SL_ROUTE_RESPONSES:
		return "responses";
	default:
		return "completions";
	}
}

/*
 * tool_args_check: every tool call's complete arguments in a client stream
 * parse as JSON (Anthropic: the partial_json of each tool_use block; chat:
 * the arguments of each tool_calls index; Responses: arguments.done).
 * Returns the number of tool calls, or -1.
 */
static int tool_args_check(enum sl_route route, const char *s, size_t len)
{
	struct sl_buf args[16];
	int num = 0;
	for (int i = 0; i < 16; i++)
		sl_buf_init(&args[i], NULL, 0);
	int open = -1, result = 0;
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	for (const char *p = s; p < s + len;) {
		const char *nl = memchr(p, '\n', (size_t)(s + len - p));
		if (!nl)
			break;
		if (nl - p > 6 && memcmp(p, "data: ", 6) == 0 && memcmp(p, "data: [DONE]", 12) != 0) {
			struct sl_json *v;
			struct sl_json_error e;
			if (sl_json_parse(&a, p + 6, (size_t)(nl - p - 6), NULL, &v, &e) != 0) {
				result = -1;
				break;
			}
			const char *type = sl_json_get_str(v, "type", NULL);
			if (route == SL_ROUTE_MESSAGES && type) {
				const struct sl_json *cb = sl_json_get(v, "content_block");
				const struct sl_json *d = sl_json_get(v, "delta");
				if (!strcmp(type, "content_block_start") && sl_json_is_str(sl_json_get(cb, "type"), "tool_use"))
					open = num < 16 ? num++ : -1;
				else if (!strcmp(type, "content_block_delta") && open >= 0 &&
				         sl_json_get_str(d, "partial_json", NULL))
					sl_buf_append(&args[open], sl_json_get_str(d, "partial_json", NULL),
					              strlen(sl_json_get_str(d, "partial_json", NULL)));
				else if (!strcmp(type, "content_block_stop"))
					open = -1;
			} else if (route == SL_ROUTE_RESPONSES && type &&
			           !strcmp(type, "response.function_call_arguments.done") && num < 16) {
				const char *x = sl_json_get_str(v, "arguments", NULL);
				sl_buf_append(&args[num++], x, strlen(x));
			} else if (route == SL_ROUTE_CHAT_COMPLETIONS) {
				const struct sl_json *ch = sl_json_get(v, "choices");
				const struct sl_json *d = ch && ch->type == SL_JSON_ARRAY && ch->len
				                                  ? sl_json_get(ch->u.items[0], "delta")
				                                  : NULL;
				const struct sl_json *calls = sl_json_get(d, "tool_calls");
				for (uint32_t i = 0; calls && i < calls->len; i++) {
					int64_t idx;
					sl_json_get_int(calls->u.items[i], "index", &idx);
					const char *x = sl_json_get_str(sl_json_get(calls->u.items[i], "function"),
					                                "arguments", NULL);
					if (idx >= 0 && idx < 16) {
						if (idx >= num)
							num = (int)idx + 1;
						sl_buf_append(&args[idx], x, strlen(x));
					}
				}
			}
			sl_arena_release(&a);
		}
		p = nl + 1;
	}
	for (int i = 0; i < num && result == 0; i++) {
		struct sl_json *v;
		struct sl_json_error e;
		if (sl_json_parse(&a, args[i].p ? args[i].p : "", args[i].len, NULL, &v, &e) != 0 ||
		    v->type != SL_JSON_OBJECT)
			result = -1;
	}
	for (int i = 0; i < 16; i++)
		sl_buf_release(&args[i]);
	sl_arena_release(&a);
	return result < 0 ? -1 : num;
}

/* --- golden fixtures ------------------------------------------------------------------- */

static const struct golden {
	const char *upstream; /* fixture name; format from its prefix */
	enum sl_route route;
	bool wants_usage;
	const char *variant;  /* NULL, or a suffix for a second expectation of one route */
	int tools_num;        /* tool calls the client must see */
} goldens[] = {
	{ "openai-text", SL_ROUTE_MESSAGES, false, NULL, 0 },
	{ "openai-text", SL_ROUTE_RESPONSES, false, NULL, 0 },
	{ "openai-text", SL_ROUTE_COMPLETIONS, true, NULL, 0 },
	{ "openai-thinking", SL_ROUTE_MESSAGES, false, NULL, 0 },
	{ "openai-thinking", SL_ROUTE_RESPONSES, false, NULL, 0 },
	{ "openai-tool", SL_ROUTE_MESSAGES, false, NULL, 1 },
	{ "openai-tool", SL_ROUTE_RESPONSES, false, NULL, 1 },
	{ "openai-tools-parallel", SL_ROUTE_MESSAGES, false, NULL, 3 },
	{ "openai-tools-parallel", SL_ROUTE_RESPONSES, false, NULL, 3 },
	{ "openai-tools-interleaved", SL_ROUTE_MESSAGES, false, NULL, 3 },
	{ "openai-tools-interleaved", SL_ROUTE_RESPONSES, false, NULL, 3 },
	{ "openai-tools-interleaved", SL_ROUTE_CHAT_COMPLETIONS, false, NULL, 3 },
	{ "openai-max-tokens", SL_ROUTE_MESSAGES, false, NULL, 0 },
	{ "openai-max-tokens", SL_ROUTE_RESPONSES, false, NULL, 0 },
	{ "openai-max-tokens", SL_ROUTE_COMPLETIONS, false, NULL, 0 },
	{ "openai-error", SL_ROUTE_MESSAGES, false, NULL, 0 },
	{ "openai-error", SL_ROUTE_RESPONSES, false, NULL, 0 },
	{ "openai-no-done", SL_ROUTE_MESSAGES, false, NULL, 0 },
	{ "openai-gemini-tools", SL_ROUTE_MESSAGES, false, NULL, 2 },
	{ "openai-gemini-tools", SL_ROUTE_RESPONSES, false, NULL, 2 },
	{ "anthropic-text", SL_ROUTE_CHAT_COMPLETIONS, true, NULL, 0 },
	{ "anthropic-text", SL_ROUTE_CHAT_COMPLETIONS, false, "nousage", 0 },
	{ "anthropic-text", SL_ROUTE_RESPONSES, false, NULL, 0 },
	{ "anthropic-text", SL_ROUTE_COMPLETIONS, false, NULL, 0 },
	{ "anthropic-thinking", SL_ROUTE_CHAT_COMPLETIONS, false, NULL, 0 },
	{ "anthropic-thinking", SL_ROUTE_RESPONSES, false, NULL, 0 },
	{ "anthropic-tool", SL_ROUTE_CHAT_COMPLETIONS, true, NULL, 1 },
	{ "anthropic-tool", SL_ROUTE_RESPONSES, false, NULL, 1 },
	{ "anthropic-tools-parallel", SL_ROUTE_CHAT_COMPLETIONS, false, NULL, 2 },
	{ "anthropic-tools-parallel", SL_ROUTE_RESPONSES, false, NULL, 2 },
	{ "anthropic-max-tokens", SL_ROUTE_CHAT_COMPLETIONS, false, NULL, 0 },
	{ "anthropic-max-tokens", SL_ROUTE_RESPONSES, false, NULL, 0 },
	{ "anthropic-error", SL_ROUTE_CHAT_COMPLETIONS, false, NULL, 0 },
	{ "anthropic-error", SL_ROUTE_RESPONSES, false, NULL, 0 },
	{ "anthropic-redacted-stopseq", SL_ROUTE_CHAT_COMPLETIONS, false, NULL, 0 },
	{ "anthropic-redacted-stopseq", SL_ROUTE_RESPONSES, false, NULL, 0 },
};

static void golden_name(const struct golden *g, char *name, size_t cap)
{
	snprintf(name, cap, "%s.%s%s%s", g->upstream, route_suffix(g->route), g->variant ? "-" : "",
	         g->variant ? g->variant : "");
}

/* One case per golden: expected output, the checker, tool arguments, every
 * two-piece split, byte by byte, and random many-piece splits. */
static void run_golden(const struct golden *g)
{
	char name[160], path[256];
	golden_name(g, name, sizeof name);
	snprintf(path, sizeof path, FIXTURES "%s.sse", g->upstream);
	size_t n;
	char *in = read_file(path, &n);
	if (!in) {
		FAIL_AT(name, "cannot read %s", path);
		test_failed_num++;
		return;
	}
	enum sl_format up = strncmp(g->upstream, "openai", 6) == 0 ? SL_FORMAT_OPENAI : SL_FORMAT_ANTHROPIC;
	struct sl_convert_ctx ctx = ctx_for(up, g->route, g->wants_usage);
	struct sl_buf whole, other;
	sl_buf_init(&whole, NULL, 0);
	sl_buf_init(&other, NULL, 0);
	test_current_failed = 0;
	int rc = run_whole(&ctx, in, n, &whole);
	if (rc != 0)
		FAIL_AT(name, "transcoding failed: %d", rc);

	snprintf(path, sizeof path, FIXTURES "%s.sse", name);
	size_t en = 0;
	char *expected = read_file(path, &en);
	if (getenv("SLUICE_UPDATE_FIXTURES")) {
		if (!write_file(path, whole.p ? whole.p : "", whole.len))
			FAIL_AT(name, "cannot write %s", path);
	} else if (!expected) {
		FAIL_AT(name, "no expected output %s (SLUICE_UPDATE_FIXTURES=1 writes it)", path);
	} else if (en != whole.len || memcmp(expected, whole.p, en) != 0) {
		size_t i = 0;
		while (i < en && i < whole.len && expected[i] == whole.p[i])
			i++;
		FAIL_AT(name, "output differs from %s at byte %zu: got \"%.60s\"", path, i,
		        whole.p ? whole.p + i : "");
	}
	free(expected);

	const char *err = tc_check_stream(g->route, whole.p ? whole.p : "", whole.len);
	if (err)
		FAIL_AT(name, "malformed client stream: %s", err);
	if (g->route != SL_ROUTE_COMPLETIONS) {
		int tools = tool_args_check(g->route, whole.p ? whole.p : "", whole.len);
		if (tools != g->tools_num)
			FAIL_AT(name, "%d tool calls with valid JSON arguments, expected %d", tools, g->tools_num);
	}

	for (size_t k = 0; k <= n && !test_current_failed; k++) {
		other.len = 0;
		run_split(&ctx, in, n, &k, 1, true, NULL, &other);
		if (!same(&whole, &other))
			FAIL_AT(name, "split at byte %zu of %zu changes the output", k, n);
	}
	other.len = 0;
	run_bytes(&ctx, in, n, &other);
	if (!same(&whole, &other))
		FAIL_AT(name, "byte-by-byte feeding changes the output");
	uint32_t x = 0x9e3779b9u;
	for (int trial = 0; trial < 200 && !test_current_failed; trial++) {
		size_t cuts[8], num = 0;
		for (size_t i = 0; i < 8; i++) {
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			size_t c = x % (n + 1);
			if (num == 0 || c > cuts[num - 1])
				cuts[num++] = c;
		}
		other.len = 0;
		run_split(&ctx, in, n, cuts, num, true, NULL, &other);
		if (!same(&whole, &other))
			FAIL_AT(name, "a %zu-piece split changes the output", num + 1);
	}
	if (test_current_failed) {
		test_failed_num++;
	} else {
		test_passed_num++;
		printf("PASS golden_%s (%zu splits)\n", name, n + 2 + 200);
	}
	sl_buf_release(&whole);
	sl_buf_release(&other);
	free(in);
}

/* --- targeted cases ------------------------------------------------------------------------ */

#define OA_CHUNK(delta, finish)                                                                   \
	"data: {\"id\":\"chatcmpl-t1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\"," \
	"\"choices\":[{\"index\":0,\"delta\":" delta ",\"finish_reason\":" finish "}]}\n\n"

static const char oa_simple[] = OA_CHUNK("{\"role\":\"assistant\",\"content\":\"\"}", "null")
	OA_CHUNK("{\"content\":\"Hi\"}", "null") OA_CHUNK("{}", "\"stop\"") "data: [DONE]\n\n";

/* sse_line_endings: LF, CRLF and CR line ends give the same output. */
TEST(sse_line_endings)
{
	char *lf = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, oa_simple, NULL);
	char crlf_in[sizeof oa_simple * 2], cr_in[sizeof oa_simple];
	size_t a = 0, b = 0;
	for (const char *p = oa_simple; *p; p++) {
		if (*p == '\n') {
			crlf_in[a++] = '\r';
			crlf_in[a++] = '\n';
			cr_in[b++] = '\r';
		} else {
			crlf_in[a++] = *p;
			cr_in[b++] = *p;
		}
	}
	crlf_in[a] = cr_in[b] = '\0';
	char *crlf = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, crlf_in, NULL);
	char *cr = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, cr_in, NULL);
	CHECK(strcmp(lf, crlf) == 0);
	CHECK(strcmp(lf, cr) == 0);
	CHECK(strstr(lf, "\"text\":\"Hi\"") != NULL);
	/* a CR at the end of one feed and its LF at the start of the next */
	struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false);
	struct sl_buf out;
	sl_buf_init(&out, NULL, 0);
	size_t cut = (size_t)(strchr(crlf_in, '\r') - crlf_in) + 1;
	run_split(&ctx, crlf_in, strlen(crlf_in), &cut, 1, true, NULL, &out);
	CHECK(out.len == strlen(lf) && memcmp(out.p, lf, out.len) == 0);
	sl_buf_release(&out);
	free(lf);
	free(crlf);
	free(cr);
}

/* sse_fields: data lines are joined with \n; no space after the colon;
 * comments, id, retry and unknown fields are ignored; a BOM is stripped. */
TEST(sse_fields)
{
	const char *in = "\xef\xbb\xbf: a comment\n"
	                 "id: 7\nretry: 100\nfoo: bar\n"
	                 "data:{\"id\":\"chatcmpl-j\",\"choices\":[{\"index\":0,\n"
	                 "data: \"delta\":{\"content\":\"joined\"}}]}\n"
	                 "\n"
	                 "event: message\n"
	                 "\n" /* an event without data dispatches nothing */
	                 "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
	                 "data: [DONE]\n\n";
	int rc;
	char *out = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, in, &rc);
	CHECK_EQ_INT(rc, 0);
	CHECK(strstr(out, "\"id\":\"msg_j\"") != NULL);
	CHECK(strstr(out, "{\"type\":\"text_delta\",\"text\":\"joined\"}") != NULL);
	CHECK(strstr(out, "event: message_stop") != NULL);
	CHECK(tc_check_stream(SL_ROUTE_MESSAGES, out, strlen(out)) == NULL);
	/* the BOM fed a byte at a time */
	struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false);
	struct sl_buf b;
	sl_buf_init(&b, NULL, 0);
	run_bytes(&ctx, in, strlen(in), &b);
	CHECK(b.len == strlen(out) && memcmp(b.p, out, b.len) == 0);
	sl_buf_release(&b);
	free(out);
	/* a stream that starts with two BOM bytes only: they belong to the line */
	out = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, "\xef\xbb" "data: {}\n\n", &rc);
	CHECK(strstr(out, "event: error") != NULL); /* no stop: ended early */
	free(out);
}

/* Each client's error event, for an upstream event that is not JSON. */
TEST(malformed_json_gives_clean_error)
{
	static const struct {
		enum sl_format up;
		enum sl_route route;
		const char *expected_tail;
	} cases[] = {
		{ SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES,
		  "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":"
		  "\"upstream sent an event that is not valid JSON\"}}\n\n" },
		{ SL_FORMAT_ANTHROPIC, SL_ROUTE_CHAT_COMPLETIONS,
		  "data: {\"error\":{\"message\":\"upstream sent an event that is not valid JSON\","
		  "\"type\":\"upstream_error\",\"param\":null,\"code\":null}}\n\n" },
		{ SL_FORMAT_ANTHROPIC, SL_ROUTE_COMPLETIONS,
		  "data: {\"error\":{\"message\":\"upstream sent an event that is not valid JSON\","
		  "\"type\":\"upstream_error\",\"param\":null,\"code\":null}}\n\n" },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		const char *in = cases[i].up == SL_FORMAT_OPENAI
		                         ? OA_CHUNK("{\"content\":\"ok\"}", "null") "data: {\"choices\":[\n\n"
		                         : "event: message_start\ndata: {\"type\":\"message_start\",\"message\":"
		                           "{\"id\":\"msg_1\"}}\n\nevent: ping\ndata: {nope}\n\n";
		struct sl_convert_ctx ctx = ctx_for(cases[i].up, cases[i].route, false);
		struct sl_arena a;
		sl_arena_init(&a, NULL, 0);
		struct sl_transcoder *t = sl_transcoder_create(&a, NULL, &ctx);
		struct sl_buf out;
		sl_buf_init(&out, NULL, 0);
		CHECK_EQ_INT(sl_transcoder_feed(t, in, strlen(in), &out), SL_ERROR);
		CHECK_EQ_INT(sl_transcoder_feed(t, "more", 4, &out), SL_ERROR);
		CHECK_EQ_INT(sl_transcoder_finish(t, false, NULL, &out), 0);
		size_t tl = strlen(cases[i].expected_tail);
		CHECK(out.len >= tl && memcmp(out.p + out.len - tl, cases[i].expected_tail, tl) == 0);
		CHECK(tc_check_stream(cases[i].route, out.p, out.len) == NULL);
		CHECK(!HAS(out, "[DONE]"));
		sl_buf_release(&out);
		sl_arena_release(&a);
	}
	/* Responses: error, then response.failed */
	int rc;
	char *out = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_RESPONSES, false, "data: [1,2]\n\n", &rc);
	CHECK_EQ_INT(rc, SL_ERROR);
	CHECK(strstr(out, "event: error\ndata: {\"type\":\"error\",\"sequence_number\":0,") == out);
	CHECK(strstr(out, "event: response.failed\ndata: {\"type\":\"response.failed\",\"sequence_number\":1,") != NULL);
	CHECK(strstr(out, "\"status\":\"failed\"") != NULL);
	CHECK(tc_check_stream(SL_ROUTE_RESPONSES, out, strlen(out)) == NULL);
	free(out);
}

/* An event over 1 MiB fails, however it arrives: one long line, many data
 * lines, or a line that never ends. */
TEST(event_over_one_mib)
{
	size_t big = ((size_t)1 << 20) + 100;
	char *s = malloc(big * 2 + 64);
	for (int shape = 0; shape < 3; shape++) {
		size_t n = 0;
		if (shape == 1) {
			while (n + 35 <= big * 2) {
				memcpy(s + n, "data: xxxxxxxxxxxxxxxxxxxxxxxxxxxx\n", 35);
				n += 35;
			}
		} else {
			memcpy(s, "data: \"", 7);
			n = 7;
			memset(s + n, 'a', big);
			n += big;
			if (shape == 0) {
				memcpy(s + n, "\"\n\n", 3);
				n += 3;
			}
		}
		struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_OPENAI, SL_ROUTE_CHAT_COMPLETIONS, false);
		struct sl_arena a;
		sl_arena_init(&a, NULL, 0);
		struct sl_transcoder *t = sl_transcoder_create(&a, NULL, &ctx);
		struct sl_buf out;
		sl_buf_init(&out, NULL, 0);
		int rc = 0;
		for (size_t off = 0; off < n && rc == 0; off += 4096)
			rc = sl_transcoder_feed(t, s + off, SL_MIN((size_t)4096, n - off), &out);
		CHECK_EQ_INT(rc, SL_ERROR);
		sl_transcoder_finish(t, false, NULL, &out);
		CHECK(HAS(out, "upstream stream event over 1 MiB"));
		CHECK(tc_check_stream(SL_ROUTE_CHAT_COMPLETIONS, out.p, out.len) == NULL);
		sl_buf_release(&out);
		sl_arena_release(&a);
	}
	free(s);
}

/* A stream cut by the upstream (finish(false)) or that ends before its
 * stop (finish(true) without a finish_reason) ends in an error event. */
TEST(cut_streams_end_in_error_event)
{
	const char *in = OA_CHUNK("{\"role\":\"assistant\",\"content\":\"Hel\"}", "null");
	struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false);
	struct sl_buf out;
	sl_buf_init(&out, NULL, 0);
	CHECK_EQ_INT(run_split(&ctx, in, strlen(in), NULL, 0, false, "upstream idle timeout", &out), 0);
	CHECK(HAS(out, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\","
	               "\"message\":\"upstream idle timeout\"}}\n\n"));
	CHECK(tc_check_stream(SL_ROUTE_MESSAGES, out.p, out.len) == NULL);
	out.len = 0;
	CHECK_EQ_INT(run_split(&ctx, in, strlen(in), NULL, 0, true, NULL, &out), 0);
	CHECK(HAS(out, "upstream stream ended before the response was complete"));
	CHECK(tc_check_stream(SL_ROUTE_MESSAGES, out.p, out.len) == NULL);
	/* after a feed error the caller's message comes first, then the reason */
	out.len = 0;
	const char *bad = OA_CHUNK("{\"content\":\"x\"}", "null") "data: {oops}\n\n";
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_transcoder *t = sl_transcoder_create(&a, NULL, &ctx);
	CHECK_EQ_INT(sl_transcoder_feed(t, bad, strlen(bad), &out), SL_ERROR);
	sl_transcoder_finish(t, false, "the provider sent a malformed stream", &out);
	CHECK(HAS(out, "\"message\":\"the provider sent a malformed stream: upstream sent an event "
	               "that is not valid JSON\"}}\n\n"));
	sl_arena_release(&a);
	/* a truncated last event of a complete body is still an error */
	out.len = 0;
	const char *trunc = OA_CHUNK("{\"content\":\"x\"}", "\"stop\"") "data: {\"choi";
	CHECK_EQ_INT(run_split(&ctx, trunc, strlen(trunc), NULL, 0, true, NULL, &out), 0);
	CHECK(HAS(out, "not valid JSON"));
	CHECK(tc_check_stream(SL_ROUTE_MESSAGES, out.p, out.len) == NULL);
	sl_buf_release(&out);
}

/* After the end ([DONE], message_stop) or a relayed error, input is ignored
 * and finish adds nothing. */
TEST(input_after_end_is_ignored)
{
	struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_OPENAI, SL_ROUTE_CHAT_COMPLETIONS, false);
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_transcoder *t = sl_transcoder_create(&a, NULL, &ctx);
	struct sl_buf out;
	sl_buf_init(&out, NULL, 0);
	CHECK_EQ_INT(sl_transcoder_feed(t, oa_simple, strlen(oa_simple), &out), 0);
	size_t len = out.len;
	CHECK_EQ_INT(sl_transcoder_feed(t, "data: garbage\n\n", 15, &out), 0);
	CHECK_EQ_INT(sl_transcoder_finish(t, false, "late", &out), 0);
	CHECK_EQ_INT(out.len, len);
	CHECK(tc_check_stream(SL_ROUTE_CHAT_COMPLETIONS, out.p, out.len) == NULL);
	sl_buf_release(&out);
	sl_arena_release(&a);
}

/* sl_transcoder_usage: -1 until reported; cached tokens are not input. */
TEST(usage_is_tracked)
{
	static const struct {
		const char *fixture;
		enum sl_format up;
		struct sl_usage expected;
	} cases[] = {
		{ "openai-tools-parallel", SL_FORMAT_OPENAI, { 56, 64, 2944, 100 } },
		{ "openai-text", SL_FORMAT_OPENAI, { 226, 9, 1024, 0 } },
		{ "anthropic-text", SL_FORMAT_ANTHROPIC, { 472, 12, 20480, 1024 } },
		{ "anthropic-thinking", SL_FORMAT_ANTHROPIC, { 85, 96, 0, 0 } },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		char path[128];
		snprintf(path, sizeof path, FIXTURES "%s.sse", cases[i].fixture);
		size_t n;
		char *in = read_file(path, &n);
		CHECK(in != NULL);
		if (!in)
			continue;
		struct sl_convert_ctx ctx = ctx_for(cases[i].up, SL_ROUTE_RESPONSES, false);
		struct sl_arena a;
		sl_arena_init(&a, NULL, 0);
		struct sl_transcoder *t = sl_transcoder_create(&a, NULL, &ctx);
		struct sl_buf out;
		sl_buf_init(&out, NULL, 0);
		struct sl_usage u;
		sl_transcoder_usage(t, &u);
		CHECK(u.input_tokens == -1 && u.output_tokens == -1 && u.cache_read_tokens == -1 &&
		      u.cache_write_tokens == -1);
		CHECK_EQ_INT(sl_transcoder_feed(t, in, n, &out), 0);
		sl_transcoder_usage(t, &u);
		CHECK_EQ_INT(u.input_tokens, cases[i].expected.input_tokens);
		CHECK_EQ_INT(u.output_tokens, cases[i].expected.output_tokens);
		CHECK_EQ_INT(u.cache_read_tokens, cases[i].expected.cache_read_tokens);
		CHECK_EQ_INT(u.cache_write_tokens, cases[i].expected.cache_write_tokens);
		sl_transcoder_finish(t, true, NULL, &out);
		sl_buf_release(&out);
		sl_arena_release(&a);
		free(in);
	}
}

/* The Anthropic client sees the real counts in message_delta (input and
 * cache fields too); without any usage from the upstream, an estimate of
 * the output, never a zero. */
TEST(anthropic_client_usage_never_zero)
{
	char *out = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, oa_simple, NULL);
	CHECK(strstr(out, "\"usage\":{\"input_tokens\":0,\"cache_creation_input_tokens\":0,"
	                  "\"cache_read_input_tokens\":0,\"output_tokens\":1}}") != NULL);
	free(out);
	/* message_start carries the proxy's estimate until the real count, and
	 * message_delta too when the upstream never counts */
	struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false);
	ctx.estimated_input_tokens = 1234;
	struct sl_buf b;
	sl_buf_init(&b, NULL, 0);
	CHECK_EQ_INT(run_whole(&ctx, oa_simple, strlen(oa_simple), &b), 0);
	CHECK(HAS(b, "\"stop_sequence\":null,\"usage\":{\"input_tokens\":1234,"));
	CHECK(HAS(b, "\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
	             "\"usage\":{\"input_tokens\":1234,"));
	sl_buf_release(&b);
	char path[128];
	snprintf(path, sizeof path, FIXTURES "openai-tools-parallel.messages.sse");
	size_t n;
	char *exp = read_file(path, &n);
	CHECK(exp && strstr(exp, "\"usage\":{\"input_tokens\":56,\"cache_creation_input_tokens\":100,"
	                         "\"cache_read_input_tokens\":2944,\"output_tokens\":64}") != NULL);
	free(exp);
}

/* A long stream stays in bounded memory: the state arena stops growing and
 * the per-event scratch is returned after every event. */
static void bounded_case(enum sl_format up, enum sl_route route, const char *event, const char *head,
                         const char *name)
{
	struct sl_convert_ctx ctx = ctx_for(up, route, false);
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_transcoder *t = sl_transcoder_create(&a, NULL, &ctx);
	struct sl_buf out;
	sl_buf_init(&out, NULL, 0);
	sl_transcoder_feed(t, head, strlen(head), &out);
	size_t used_after_100 = 0;
	size_t elen = strlen(event);
	for (int i = 0; i < 100000; i++) {
		out.len = 0;
		if (sl_transcoder_feed(t, event, elen, &out) != 0) {
			FAIL_AT(name, "feed failed at event %d", i);
			break;
		}
		if (t->scratch.used_bytes != 0)
			FAIL_AT(name, "scratch not released after event %d", i);
		if (i == 100)
			used_after_100 = a.used_bytes;
	}
	if (a.used_bytes != used_after_100)
		FAIL_AT(name, "state arena grew from %zu to %zu bytes", used_after_100, a.used_bytes);
	sl_transcoder_finish(t, true, NULL, &out);
	sl_buf_release(&out);
	sl_arena_release(&a);
}

TEST(memory_bounded_over_100k_events)
{
	bounded_case(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, OA_CHUNK("{\"content\":\"tok \"}", "null"),
	             "", "memory_bounded_over_100k_events");
	bounded_case(SL_FORMAT_ANTHROPIC, SL_ROUTE_CHAT_COMPLETIONS,
	             "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
	             "\"delta\":{\"type\":\"text_delta\",\"text\":\"tok \"}}\r\n\r\n",
	             "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_b\"}}\n\n"
	             "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
	             "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
	             "memory_bounded_over_100k_events");
	bounded_case(SL_FORMAT_ANTHROPIC, SL_ROUTE_MESSAGES, "event: ping\ndata: {\"type\":\"ping\"}\n\n", "",
	             "memory_bounded_over_100k_events");
}

/* Fragments of a tool call whose block already closed cannot be placed:
 * the stream fails cleanly instead of corrupting the arguments. */
TEST(tool_fragment_after_close_fails_cleanly)
{
	const char *in =
		OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}", "null")
		OA_CHUNK("{\"content\":\"text\"}", "null")
		OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"}\"}}]}", "null");
	int rc;
	char *out = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, in, &rc);
	CHECK_EQ_INT(rc, SL_ERROR);
	CHECK(strstr(out, "tool call arguments after the call ended") != NULL);
	CHECK(tc_check_stream(SL_ROUTE_MESSAGES, out, strlen(out)) == NULL);
	free(out);
	/* a repeated id and name with no arguments (some hosts send them on every
	 * chunk) is harmless */
	in = OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}", "null")
		OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\"}}]}", "\"tool_calls\"")
		"data: [DONE]\n\n";
	out = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, in, &rc);
	CHECK_EQ_INT(rc, 0);
	CHECK(tc_check_stream(SL_ROUTE_MESSAGES, out, strlen(out)) == NULL);
	CHECK(strstr(out, "\"stop_reason\":\"tool_use\"") != NULL);
	free(out);
}

/* A tool whose first fragment has no name waits until the end (a block's
 * start must carry the name); a host that says "stop" after tool calls is
 * reported as tool use. */
TEST(nameless_tool_waits_and_stop_becomes_tool_use)
{
	const char *in =
		OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\"\"}}]}", "null")
		OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"id\":\"call_late\",\"function\":{\"name\":\"g\",\"arguments\":\":1}\"}}]}", "null")
		OA_CHUNK("{}", "\"stop\"") "data: [DONE]\n\n";
	int rc;
	char *out = transcode_str(SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES, false, in, &rc);
	CHECK_EQ_INT(rc, 0);
	CHECK(strstr(out, "\"content_block\":{\"type\":\"tool_use\",\"id\":\"call_late\",\"name\":\"g\"") != NULL);
	CHECK(strstr(out, "\"partial_json\":\"{\\\"a\\\":1}\"") != NULL);
	CHECK(strstr(out, "\"stop_reason\":\"tool_use\"") != NULL);
	CHECK(tc_check_stream(SL_ROUTE_MESSAGES, out, strlen(out)) == NULL);
	free(out);
}

/* The tool-call limit fails cleanly. */
TEST(too_many_tools_fails_cleanly)
{
	struct sl_buf in;
	sl_buf_init(&in, NULL, 0);
	char chunk[256];
	for (int i = 0; i <= TC_TOOLS_NUM_MAX; i++) {
		int n = snprintf(chunk, sizeof chunk,
		                 "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":%d,"
		                 "\"id\":\"c%d\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}}]}\n\n",
		                 i, i);
		sl_buf_append(&in, chunk, (size_t)n);
	}
	struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_OPENAI, SL_ROUTE_CHAT_COMPLETIONS, false);
	struct sl_buf out;
	sl_buf_init(&out, NULL, 0);
	CHECK_EQ_INT(run_whole(&ctx, in.p, in.len, &out), SL_ERROR);
	CHECK(HAS(out, "too many tool calls"));
	CHECK(tc_check_stream(SL_ROUTE_CHAT_COMPLETIONS, out.p, out.len) == NULL);
	sl_buf_release(&out);
	sl_buf_release(&in);
}

/* Routes without a stream format get no transcoder. */
TEST(create_rejects_other_routes)
{
	struct sl_arena a;
	sl_arena_init(&a, NULL, 0);
	struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_OPENAI, SL_ROUTE_EMBEDDINGS, false);
	CHECK(sl_transcoder_create(&a, NULL, &ctx) == NULL);
	ctx.route = SL_ROUTE_COUNT_TOKENS;
	CHECK(sl_transcoder_create(&a, NULL, &ctx) == NULL);
	sl_arena_release(&a);
}

/* The transcoder works the same with the reactor's block pool behind its
 * scratch memory, and gives every block back at finish. */
TEST(pool_backed_scratch_is_returned)
{
	struct sl_bufpool pool;
	CHECK_EQ_INT(sl_bufpool_init(&pool, (size_t)256 << 20), 0);
	char path[128];
	snprintf(path, sizeof path, FIXTURES "anthropic-thinking.sse");
	size_t n;
	char *in = read_file(path, &n);
	CHECK(in != NULL);
	struct sl_arena a;
	sl_arena_init(&a, &pool, (size_t)1 << 20);
	struct sl_convert_ctx ctx = ctx_for(SL_FORMAT_ANTHROPIC, SL_ROUTE_RESPONSES, false);
	struct sl_transcoder *t = sl_transcoder_create(&a, &pool, &ctx);
	struct sl_buf out, ref;
	sl_buf_init(&out, &pool, 0);
	sl_buf_init(&ref, NULL, 0);
	for (size_t i = 0; in && i < n; i += 5)
		CHECK_EQ_INT(sl_transcoder_feed(t, in + i, SL_MIN((size_t)5, n - i), &out), 0);
	/* between feeds of whole events nothing but the arena and out is held */
	CHECK_EQ_INT(pool.live_bytes, a.used_bytes + out.cap);
	CHECK_EQ_INT(sl_transcoder_finish(t, true, NULL, &out), 0);
	run_whole(&ctx, in, n, &ref);
	CHECK(same(&out, &ref));
	sl_buf_release(&out);
	sl_arena_release(&a);
	CHECK_EQ_INT(pool.live_bytes, 0);
	/* a transcoder dropped mid-event without finish (the client went away)
	 * holds nothing outside its arena */
	sl_arena_init(&a, &pool, (size_t)1 << 20);
	t = sl_transcoder_create(&a, &pool, &ctx);
	CHECK_EQ_INT(sl_transcoder_feed(t, in, n / 2 + 3, &out), 0);
	CHECK(t->sse.line.len > 0 || t->sse.data.len > 0);
	sl_arena_release(&a);
	sl_buf_release(&out);
	CHECK_EQ_INT(pool.live_bytes, 0);
	sl_buf_release(&ref);
	sl_bufpool_destroy(&pool);
	free(in);
}

/* The fuzz corpus replays through the fuzz driver's properties. */
TEST(fuzz_corpus_replays)
{
	DIR *d = opendir(CORPUS);
	CHECK(d != NULL);
	if (!d)
		return;
	struct dirent *e;
	int num = 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[512];
		snprintf(path, sizeof path, CORPUS "%s", e->d_name);
		size_t n;
		char *s = read_file(path, &n);
		if (!s)
			continue;
		LLVMFuzzerTestOneInput((const uint8_t *)s, n);
		free(s);
		num++;
	}
	closedir(d);
	CHECK(num > 0);
}

int main(void)
{
	for (size_t i = 0; i < SL_ARRAY_LEN(goldens); i++)
		run_golden(&goldens[i]);
	RUN(sse_line_endings);
	RUN(sse_fields);
	RUN(malformed_json_gives_clean_error);
	RUN(event_over_one_mib);
	RUN(cut_streams_end_in_error_event);
	RUN(input_after_end_is_ignored);
	RUN(usage_is_tracked);
	RUN(anthropic_client_usage_never_zero);
	RUN(memory_bounded_over_100k_events);
	RUN(tool_fragment_after_close_fails_cleanly);
	RUN(nameless_tool_waits_and_stop_becomes_tool_use);
	RUN(too_many_tools_fails_cleanly);
	RUN(create_rejects_other_routes);
	RUN(pool_backed_scratch_is_returned);
	RUN(fuzz_corpus_replays);
	printf("%d passed, %d failed\n", test_passed_num, test_failed_num);
	return test_summary();
}
