/*
 * bench_convert.c - micro-benchmark of format conversion, per core.
 *
 *   build/bench_convert [iterations]
 *
 * Requests: a ~60 KB Anthropic Messages request shaped like a coding
 * agent's (cached system prompt, 30 tools with JSON schemas, a multi-turn
 * tool loop with thinking, signatures and tool results) converted to the
 * OpenAI format and back: each leg is parse + sl_convert_request +
 * serialise, as the proxy does it. MB/s counts the request JSON going in.
 * Bar (issue 3): >= 300 MB/s of request JSON per core.
 *
 * Responses: a non-stream chat.completion with two tool calls converted
 * to an Anthropic message (parse + sl_convert_response + serialise).
 *
 * Streams: 500-event upstream streams transcoded, fed one event per call
 * (one recv per event, what the relay sees): OpenAI chunks -> Anthropic
 * events, Anthropic events -> OpenAI chunks, and both -> Responses events.
 * MB/s counts upstream bytes.
 *
 * All memory comes from a reactor-style block pool, as in the gateway.
 * Each case runs 5 times and reports its fastest run, so that other load on
 * the machine disturbs the figures less.
 */
#include "sluice/convert.h"

#include <string.h>
#include <time.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

#define RUNS 5

static void report(const char *name, double ns, long iterations, size_t bytes, const char *extra)
{
	double per_op = ns / (double)iterations;
	printf("%-44s %8zu B  %11.1f ns/op  %8.1f MB/s%s\n", name, bytes, per_op,
	       (double)bytes / per_op * 1e3, extra ? extra : "");
}

#define APPEND(b, ...)                                                          \
	do {                                                                    \
		char tmp_[4096];                                                \
		int n_ = snprintf(tmp_, sizeof tmp_, __VA_ARGS__);              \
		sl_buf_append((b), tmp_, (size_t)SL_MIN(n_, (int)sizeof tmp_ - 1)); \
	} while (0)

static const char lorem[] =
	"The function reads the configuration, validates every field against the schema and "
	"returns a list of errors with their key paths; callers decide whether to abort. ";

/* build_request writes the coding-agent request. */
static void build_request(struct sl_buf *b)
{
	SL_BUF_LIT(b, "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":32000,\"stream\":true,"
	              "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":10000},"
	              "\"metadata\":{\"user_id\":\"user_8f2c1e_account_4b1d_session_9a7e\"},"
	              "\"system\":[{\"type\":\"text\",\"text\":\"You are an interactive CLI tool that "
	              "helps users with software engineering tasks.");
	for (int i = 0; i < 46; i++)
		APPEND(b, " Rule %d: %s", i, lorem);
	SL_BUF_LIT(b, "\",\"cache_control\":{\"type\":\"ephemeral\"}}],\"tools\":[");
	for (int i = 0; i < 30; i++) {
		APPEND(b,
		       "%s{\"name\":\"tool_%02d_%s\",\"description\":\"Tool %d. %s%s\","
		       "\"input_schema\":{\"$schema\":\"http://json-schema.org/draft-07/schema#\","
		       "\"type\":\"object\",\"additionalProperties\":false,\"properties\":{"
		       "\"file_path\":{\"type\":\"string\",\"description\":\"The absolute path to the "
		       "file to operate on (must be absolute, not relative)\"},"
		       "\"offset\":{\"type\":\"number\",\"description\":\"The line number to start "
		       "reading from. Only provide if the file is too large to read at once\"},"
		       "\"limit\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":2000},"
		       "\"mode\":{\"type\":\"string\",\"enum\":[\"read\",\"write\",\"append\",\"patch\"]},"
		       "\"edits\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{"
		       "\"old_string\":{\"type\":\"string\"},\"new_string\":{\"type\":\"string\"},"
		       "\"replace_all\":{\"type\":\"boolean\",\"default\":false}},"
		       "\"required\":[\"old_string\",\"new_string\"]}}},"
		       "\"required\":[\"file_path\"]}%s}",
		       i ? "," : "", i, i % 3 ? "edit" : "read", i, lorem, lorem,
		       i == 29 ? ",\"cache_control\":{\"type\":\"ephemeral\"}" : "");
	}
	SL_BUF_LIT(b, "],\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
	              "\"Fix the failing test in tests/unit/test_config.c and explain.\"}]}");
	for (int turn = 0; turn < 10; turn++) {
		APPEND(b,
		       ",{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":"
		       "\"Turn %d: I should read the file first, then the test. %s\",\"signature\":"
		       "\"EqQBCkgIBxABGAIiQL2UoU0b1OHYi+Ktu8pn3Yd0hA6l0qDxIx6o4vPUbcsfpWr1rHIdT%02dc"
		       "8WluyNqO7vtUyC7U0Zbz0PsaZ6BDIXSkhEpsVQPNcOs3B7qvLKeBBjUVn0bGjdP0n9p8CZl\"},"
		       "{\"type\":\"text\",\"text\":\"Let me look at both files.\"},"
		       "{\"type\":\"tool_use\",\"id\":\"toolu_01A%02dxQ\",\"name\":\"tool_00_read\","
		       "\"input\":{\"file_path\":\"/work/src/config.c\",\"offset\":%d,\"limit\":200}},"
		       "{\"type\":\"tool_use\",\"id\":\"toolu_01B%02dyR\",\"name\":\"tool_01_edit\","
		       "\"input\":{\"file_path\":\"/work/tests/unit/test_config.c\",\"mode\":\"patch\","
		       "\"edits\":[{\"old_string\":\"CHECK(x == 1);\",\"new_string\":\"CHECK(x == 2);\"}]}}]}",
		       turn, lorem, turn, turn, turn * 100, turn);
		APPEND(b,
		       ",{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
		       "\"toolu_01A%02dxQ\",\"content\":\"     1\\tstatic int parse(const char *s)\\n"
		       "     2\\t{\\n     3\\t\\treturn s[0] == '{' ? 0 : -1;\\n     4\\t}\\n%s%s%s\"},"
		       "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01B%02dyR\",\"is_error\":%s,"
		       "\"content\":[{\"type\":\"text\",\"text\":\"%s\"}]%s}]}",
		       turn, lorem, lorem, lorem, turn, turn % 2 ? "true" : "false", lorem,
		       turn == 9 ? ",\"cache_control\":{\"type\":\"ephemeral\"}" : "");
	}
	SL_BUF_LIT(b, "]}");
}

static const char chat_response[] =
	"{\"id\":\"chatcmpl-BENCH\",\"object\":\"chat.completion\",\"created\":1732240000,"
	"\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
	"\"content\":\"I will read both files and then apply the fix to the test expectation.\","
	"\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"tool_00_read\","
	"\"arguments\":\"{\\\"file_path\\\":\\\"/work/src/config.c\\\",\\\"limit\\\":200}\"}},"
	"{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"tool_01_edit\","
	"\"arguments\":\"{\\\"file_path\\\":\\\"/work/tests/unit/test_config.c\\\",\\\"mode\\\":"
	"\\\"patch\\\"}\"}}],\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],"
	"\"usage\":{\"prompt_tokens\":15210,\"completion_tokens\":96,\"total_tokens\":15306,"
	"\"prompt_tokens_details\":{\"cached_tokens\":14848}},\"system_fingerprint\":\"fp_a7d06e42a7\"}";

/* A 500-event upstream stream, and where each event ends. */
struct stream {
	struct sl_buf body;
	size_t ends[512];
	size_t num;
};

static void mark(struct stream *s)
{
	s->ends[s->num++] = s->body.len;
}

static void build_openai_stream(struct stream *s)
{
	static const char head[] =
		"data: {\"id\":\"chatcmpl-B9mXt2Qw7LrKp4sZ\",\"object\":\"chat.completion.chunk\","
		"\"created\":1732240000,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\","
		"\"system_fingerprint\":\"fp_a7d06e42a7\",\"choices\":[";
	struct sl_buf *b = &s->body;
	APPEND(b, "%s{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},"
	          "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n", head);
	mark(s);
	for (int i = 0; i < 480; i++) {
		APPEND(b, "%s{\"index\":0,\"delta\":{\"content\":\" token%d \\\"q\\\" caf\\u00e9\"},"
		          "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n", head, i);
		mark(s);
	}
	APPEND(b, "%s{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_Qx3vN8aPz1\","
	          "\"type\":\"function\",\"function\":{\"name\":\"tool_00_read\",\"arguments\":\"\"}}]},"
	          "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n", head);
	mark(s);
	for (int i = 0; i < 15; i++) {
		APPEND(b, "%s{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
		          "{\"arguments\":\"%s\"}}]},\"logprobs\":null,\"finish_reason\":null}],"
		          "\"usage\":null}\n\n", head,
		       i == 0 ? "{\\\"file_path\\\":\\\"" : i == 14 ? "c\\\"}" : "src/config");
		mark(s);
	}
	APPEND(b, "%s{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],"
	          "\"usage\":null}\n\n", head);
	mark(s);
	APPEND(b, "%s],\"usage\":{\"prompt_tokens\":15210,\"completion_tokens\":980,\"total_tokens\":16190,"
	          "\"prompt_tokens_details\":{\"cached_tokens\":14848}}}\n\n", head);
	mark(s);
	SL_BUF_LIT(b, "data: [DONE]\n\n");
	mark(s);
}

static void build_anthropic_stream(struct stream *s)
{
	struct sl_buf *b = &s->body;
	SL_BUF_LIT(b, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":"
	              "\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\","
	              "\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,"
	              "\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":"
	              "1024,\"cache_read_input_tokens\":20480,\"output_tokens\":1}}}\n\n");
	mark(s);
	SL_BUF_LIT(b, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
	              "\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n");
	mark(s);
	for (int i = 0; i < 100; i++) {
		APPEND(b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
		          "\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\" step %d of the plan\"}}\n\n", i);
		mark(s);
	}
	SL_BUF_LIT(b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
	              "\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3h"
	              "GgxBdjrkzLoky3dl1pkiMOYds+/=\"}}\n\nevent: content_block_stop\ndata: "
	              "{\"type\":\"content_block_stop\",\"index\":0}\n\n");
	mark(s);
	SL_BUF_LIT(b, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,"
	              "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
	mark(s);
	for (int i = 0; i < 376; i++) {
		APPEND(b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,"
		          "\"delta\":{\"type\":\"text_delta\",\"text\":\" token%d \\\"q\\\" caf\\u00e9\"}}\n\n", i);
		mark(s);
		if (i % 50 == 0) {
			SL_BUF_LIT(b, "event: ping\ndata: {\"type\": \"ping\"}\n\n");
			mark(s);
		}
	}
	SL_BUF_LIT(b, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
	              "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,"
	              "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\","
	              "\"name\":\"tool_00_read\",\"input\":{}}}\n\n");
	mark(s);
	for (int i = 0; i < 10; i++) {
		APPEND(b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,"
		          "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"%s\"}}\n\n",
		       i == 0 ? "{\\\"file_path\\\":\\\"" : i == 9 ? "c\\\"}" : "src/config");
		mark(s);
	}
	SL_BUF_LIT(b, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n"
	              "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
	              "\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":980}}\n\n");
	mark(s);
	SL_BUF_LIT(b, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
	mark(s);
}

static struct sl_bufpool pool;

/* convert_leg: parse, convert, serialise; returns the output length. */
static size_t convert_leg(struct sl_convert_ctx *ctx, const char *in, size_t len, char **out_text,
                          struct sl_arena *a)
{
	struct sl_json *v, *conv;
	struct sl_json_error err;
	const char *msg;
	if (sl_json_parse(a, in, len, NULL, &v, &err) != 0) {
		fprintf(stderr, "bench_convert: parse: %s at %zu\n", err.message, err.offset);
		exit(1);
	}
	if (sl_convert_request(a, ctx, v, &conv, &msg) != 0) {
		fprintf(stderr, "bench_convert: convert: %s\n", msg);
		exit(1);
	}
	size_t n;
	*out_text = sl_json_serialize(a, conv, &n);
	if (!*out_text) {
		fprintf(stderr, "bench_convert: serialise failed\n");
		exit(1);
	}
	return n;
}

static void bench_stream(const char *name, const struct stream *s, enum sl_format up,
                         enum sl_route route, long iterations)
{
	struct sl_convert_ctx ctx = {
		.route = route,
		.upstream_format = up,
		.client_model = "client-model",
		.request_id = "req_bench",
		.created_s = 1732240000,
		.client_wants_usage = true,
	};
	struct sl_buf out;
	sl_buf_init(&out, &pool, 0);
	size_t out_len = 0;
	double best = 1e300;
	for (int r = 0; r < RUNS; r++) {
	double t0 = now_ns();
	for (long it = 0; it < iterations; it++) {
		struct sl_arena a;
		sl_arena_init(&a, &pool, (size_t)1 << 20);
		struct sl_transcoder *t = sl_transcoder_create(&a, &pool, &ctx);
		size_t off = 0;
		for (size_t e = 0; e < s->num; e++) {
			out.len = 0; /* the proxy takes the output after each recv */
			if (sl_transcoder_feed(t, s->body.p + off, s->ends[e] - off, &out) != 0) {
				fprintf(stderr, "bench_convert: %s: feed failed\n", name);
				exit(1);
			}
			out_len += out.len;
			off = s->ends[e];
		}
		out.len = 0;
		sl_transcoder_finish(t, true, NULL, &out);
		sl_arena_release(&a);
	}
	best = SL_MIN(best, now_ns() - t0);
	}
	double ns = best;
	char extra[64];
	snprintf(extra, sizeof extra, "  %6.1f ns/event", ns / (double)iterations / (double)s->num);
	report(name, ns, iterations, s->body.len, extra);
	sl_buf_release(&out);
	if (out_len == 0)
		exit(1);
}

int main(int argc, char **argv)
{
	long iterations = argc > 1 ? atol(argv[1]) : 2000;
	if (iterations < 1)
		iterations = 1;
	if (sl_bufpool_init(&pool, (size_t)1 << 30) != 0) {
		fprintf(stderr, "bench_convert: cannot reserve the pool\n");
		return 1;
	}

	struct sl_buf req;
	sl_buf_init(&req, NULL, 0);
	build_request(&req);

	/* Anthropic -> OpenAI, then the OpenAI request back to Anthropic */
	struct sl_convert_ctx to_openai = { .route = SL_ROUTE_MESSAGES,
		                            .upstream_format = SL_FORMAT_OPENAI,
		                            .upstream_model = "gpt-4o-2024-08-06",
		                            .client_model = "claude-sonnet-4-5",
		                            .request_id = "req_bench",
		                            .created_s = 1732240000 };
	struct sl_convert_ctx to_anthropic = { .route = SL_ROUTE_CHAT_COMPLETIONS,
		                               .upstream_format = SL_FORMAT_ANTHROPIC,
		                               .upstream_model = "claude-sonnet-4-5-20250929",
		                               .client_model = "gpt-4o",
		                               .default_max_tokens = 8192,
		                               .request_id = "req_bench",
		                               .created_s = 1732240000 };
	struct sl_arena a;
	sl_arena_init(&a, &pool, (size_t)64 << 20);
	char *oa_text;
	size_t oa_len = convert_leg(&to_openai, req.p, req.len, &oa_text, &a);
	struct sl_buf oa;
	sl_buf_init(&oa, NULL, 0);
	sl_buf_append(&oa, oa_text, oa_len);
	char *back_text;
	size_t back_len = convert_leg(&to_anthropic, oa.p, oa.len, &back_text, &a);
	sl_arena_release(&a);
	printf("request: Anthropic %zu B, 30 tools -> OpenAI %zu B -> Anthropic %zu B\n", req.len,
	       oa_len, back_len);

	volatile size_t sink = 0;
	double t0, best;
	best = 1e300;
	for (int r = 0; r < RUNS; r++) {
		t0 = now_ns();
		for (long i = 0; i < iterations; i++) {
			sl_arena_init(&a, &pool, (size_t)64 << 20);
			char *o;
			sink += convert_leg(&to_openai, req.p, req.len, &o, &a);
			sl_arena_release(&a);
		}
		best = SL_MIN(best, now_ns() - t0);
	}
	report("request Anthropic -> OpenAI (60 KB, 30 tools)", best, iterations, req.len, NULL);
	best = 1e300;
	for (int r = 0; r < RUNS; r++) {
		t0 = now_ns();
		for (long i = 0; i < iterations; i++) {
			sl_arena_init(&a, &pool, (size_t)64 << 20);
			char *o;
			sink += convert_leg(&to_anthropic, oa.p, oa.len, &o, &a);
			sl_arena_release(&a);
		}
		best = SL_MIN(best, now_ns() - t0);
	}
	report("request OpenAI -> Anthropic (back)", best, iterations, oa.len, NULL);
	best = 1e300;
	for (int r = 0; r < RUNS; r++) {
		t0 = now_ns();
		for (long i = 0; i < iterations; i++) {
			sl_arena_init(&a, &pool, (size_t)64 << 20);
			char *o, *o2;
			size_t n = convert_leg(&to_openai, req.p, req.len, &o, &a);
			sink += convert_leg(&to_anthropic, o, n, &o2, &a);
			sl_arena_release(&a);
		}
		best = SL_MIN(best, now_ns() - t0);
	}
	report("request round trip (MB/s of the 60 KB input)", best, iterations, req.len, NULL);

	/* a non-stream response, OpenAI -> Anthropic */
	long resp_iterations = iterations * 20;
	t0 = now_ns();
	for (long i = 0; i < resp_iterations; i++) {
		sl_arena_init(&a, &pool, (size_t)1 << 20);
		struct sl_json *v, *conv;
		struct sl_json_error err;
		const char *msg;
		size_t n;
		if (sl_json_parse(&a, chat_response, sizeof chat_response - 1, NULL, &v, &err) != 0 ||
		    sl_convert_response(&a, &to_openai, v, &conv, &msg) != 0 ||
		    !sl_json_serialize(&a, conv, &n)) {
			fprintf(stderr, "bench_convert: response conversion failed\n");
			return 1;
		}
		sink += n;
		sl_arena_release(&a);
	}
	report("response OpenAI -> Anthropic (tool calls)", now_ns() - t0, resp_iterations,
	       sizeof chat_response - 1, NULL);

	/* streams */
	static struct stream oas, ans;
	sl_buf_init(&oas.body, NULL, 0);
	sl_buf_init(&ans.body, NULL, 0);
	build_openai_stream(&oas);
	build_anthropic_stream(&ans);
	printf("streams: OpenAI %zu events, %zu B; Anthropic %zu events, %zu B\n", oas.num,
	       oas.body.len, ans.num, ans.body.len);
	long stream_iterations = iterations / 2 > 0 ? iterations / 2 : 1;
	bench_stream("stream OpenAI -> Anthropic (500 events)", &oas, SL_FORMAT_OPENAI,
	             SL_ROUTE_MESSAGES, stream_iterations);
	bench_stream("stream Anthropic -> OpenAI chat (500 events)", &ans, SL_FORMAT_ANTHROPIC,
	             SL_ROUTE_CHAT_COMPLETIONS, stream_iterations);
	bench_stream("stream OpenAI -> Responses (500 events)", &oas, SL_FORMAT_OPENAI,
	             SL_ROUTE_RESPONSES, stream_iterations);
	bench_stream("stream Anthropic -> Responses (500 events)", &ans, SL_FORMAT_ANTHROPIC,
	             SL_ROUTE_RESPONSES, stream_iterations);

	sl_buf_release(&req);
	sl_buf_release(&oa);
	sl_buf_release(&oas.body);
	sl_buf_release(&ans.body);
	sl_bufpool_destroy(&pool);
	return sink == 0;
}
