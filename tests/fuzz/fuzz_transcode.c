/*
 * fuzz_transcode.c - libFuzzer driver for the SSE stream transcoders.
 *
 * Input: byte 0 picks the direction (bits 0-2: upstream format and client
 * route, bit 3: the client asked for stream usage, bit 4: the upstream body
 * was cut), byte 1 seeds the split pattern, the rest is the upstream body.
 * Properties, checked on every input:
 *   - no crash, no leak, no sanitizer report;
 *   - fed whole and fed in pieces (sizes from the seed), the output is
 *     byte-identical;
 *   - the output is a well-formed client stream: SSE events whose data is
 *     JSON (or [DONE]), in the order the client's SDK requires
 *     (tc_check_stream below: content block indexes, tool-call indexes,
 *     sequence numbers, exactly one terminal event).
 *
 *   ninja build/fuzz/fuzz_transcode
 *   build/fuzz/fuzz_transcode -dict=tests/fuzz/transcode.dict \
 *       tests/fuzz/corpus/transcode -max_total_time=600
 *
 * The unit test (tests/unit/test_transcode.c) includes this file: it runs
 * tc_check_stream on every golden output and replays the corpus.
 */
#include "sluice/convert.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* --- the client-stream checker ------------------------------------------------------ */

struct check {
	enum sl_route route;
	struct sl_arena a;
	const char *err;
	size_t events_num;
	bool ended;       /* the terminal event went out: nothing may follow */
	/* Anthropic */
	bool started;
	bool message_delta;
	int64_t next_index;
	int64_t open_index; /* -1: none */
	char open_type[24];
	/* chat / completions */
	int64_t tools_num;
	bool finished;
	bool errored;
	/* Responses */
	int64_t sequence;
	int64_t items_num;
	bool item_open;
	char item_type[24];
	char item_id[128];
	bool failed_due;  /* an error event: response.failed must follow */
};

#define CHECK_FAIL(c, msg)                \
	do {                              \
		if (!(c)->err)            \
			(c)->err = (msg); \
		return;                   \
	} while (0)

static bool check_str_is(const struct sl_json *v, const char *key, const char *s)
{
	return sl_json_is_str(sl_json_get(v, key), s);
}

static bool check_has_str(const struct sl_json *v, const char *key)
{
	const struct sl_json *x = sl_json_get(v, key);
	return x && x->type == SL_JSON_STRING;
}

static bool check_has_int(const struct sl_json *v, const char *key)
{
	int64_t n;
	return sl_json_get_int(v, key, &n);
}

static void check_copy(char *dst, size_t cap, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, s ? s : "", n);
	dst[n] = '\0';
}

static void check_anthropic(struct check *c, const char *event, const struct sl_json *v)
{
	const char *type = sl_json_get_str(v, "type", NULL);
	if (!event || !type || strcmp(event, type) != 0)
		CHECK_FAIL(c, "anthropic: event name differs from data.type");
	if (strcmp(type, "ping") == 0)
		return;
	if (strcmp(type, "error") == 0) {
		const struct sl_json *e = sl_json_get(v, "error");
		if (!check_has_str(e, "type") || !check_has_str(e, "message"))
			CHECK_FAIL(c, "anthropic: error without type and message");
		c->ended = true;
		return;
	}
	if (strcmp(type, "message_start") == 0) {
		const struct sl_json *m = sl_json_get(v, "message");
		const char *id = sl_json_get_str(m, "id", NULL);
		if (c->started || !id || strncmp(id, "msg_", 4) != 0 || !check_str_is(m, "role", "assistant") ||
		    !check_has_int(sl_json_get(m, "usage"), "input_tokens") || !check_has_str(m, "model"))
			CHECK_FAIL(c, "anthropic: bad message_start");
		c->started = true;
		return;
	}
	if (!c->started)
		CHECK_FAIL(c, "anthropic: event before message_start");
	int64_t index = -1;
	(void)sl_json_get_int(v, "index", &index);
	if (strcmp(type, "content_block_start") == 0) {
		const struct sl_json *b = sl_json_get(v, "content_block");
		const char *bt = sl_json_get_str(b, "type", NULL);
		if (c->message_delta || c->open_index >= 0 || index != c->next_index || !bt)
			CHECK_FAIL(c, "anthropic: content_block_start out of order");
		if (strcmp(bt, "text") == 0) {
			if (!check_str_is(b, "text", ""))
				CHECK_FAIL(c, "anthropic: text block starts non-empty");
		} else if (strcmp(bt, "thinking") == 0) {
			if (!check_has_str(b, "thinking"))
				CHECK_FAIL(c, "anthropic: thinking block without thinking");
		} else if (strcmp(bt, "redacted_thinking") == 0) {
			if (!check_has_str(b, "data"))
				CHECK_FAIL(c, "anthropic: redacted_thinking without data");
		} else if (strcmp(bt, "tool_use") == 0) {
			const char *id = sl_json_get_str(b, "id", NULL);
			if (!id || !*id || !check_has_str(b, "name"))
				CHECK_FAIL(c, "anthropic: tool_use without id or name");
		} else {
			CHECK_FAIL(c, "anthropic: unknown block type");
		}
		c->open_index = index;
		check_copy(c->open_type, sizeof c->open_type, bt);
		if (strcmp(bt, "redacted_thinking") == 0)
			check_copy(c->open_type, sizeof c->open_type, "redacted");
		return;
	}
	if (strcmp(type, "content_block_delta") == 0) {
		const struct sl_json *d = sl_json_get(v, "delta");
		const char *dt = sl_json_get_str(d, "type", NULL);
		if (c->open_index < 0 || index != c->open_index || !dt)
			CHECK_FAIL(c, "anthropic: delta outside its block (content block not found)");
		bool ok = (strcmp(dt, "text_delta") == 0 && strcmp(c->open_type, "text") == 0 &&
		           check_has_str(d, "text")) ||
		          (strcmp(dt, "thinking_delta") == 0 && strcmp(c->open_type, "thinking") == 0 &&
		           check_has_str(d, "thinking")) ||
		          (strcmp(dt, "signature_delta") == 0 && strcmp(c->open_type, "thinking") == 0 &&
		           check_has_str(d, "signature")) ||
		          (strcmp(dt, "input_json_delta") == 0 && strcmp(c->open_type, "tool_use") == 0 &&
		           check_has_str(d, "partial_json"));
		if (!ok)
			CHECK_FAIL(c, "anthropic: delta of the wrong kind for its block");
		return;
	}
	if (strcmp(type, "content_block_stop") == 0) {
		if (c->open_index < 0 || index != c->open_index)
			CHECK_FAIL(c, "anthropic: content_block_stop of no open block");
		c->open_index = -1;
		c->next_index++;
		return;
	}
	if (strcmp(type, "message_delta") == 0) {
		const char *sr = sl_json_get_str(sl_json_get(v, "delta"), "stop_reason", NULL);
		static const char *const reasons[] = { "end_turn",   "stop_sequence", "max_tokens",
			                               "tool_use",   "refusal",       "pause_turn" };
		bool known_reason = false;
		for (size_t i = 0; sr && i < sizeof reasons / sizeof reasons[0]; i++)
			known_reason |= strcmp(sr, reasons[i]) == 0;
		if (c->message_delta || c->open_index >= 0 || !known_reason ||
		    !check_has_int(sl_json_get(v, "usage"), "output_tokens"))
			CHECK_FAIL(c, "anthropic: bad message_delta");
		c->message_delta = true;
		return;
	}
	if (strcmp(type, "message_stop") == 0) {
		if (!c->message_delta)
			CHECK_FAIL(c, "anthropic: message_stop before message_delta");
		c->ended = true;
		return;
	}
	CHECK_FAIL(c, "anthropic: unknown event type");
}

static void check_chat(struct check *c, const char *event, const struct sl_json *v)
{
	bool chat = c->route == SL_ROUTE_CHAT_COMPLETIONS;
	if (event)
		CHECK_FAIL(c, "chat: named event");
	const struct sl_json *e = sl_json_get(v, "error");
	if (e) {
		if (!check_has_str(e, "message") || !check_has_str(e, "type"))
			CHECK_FAIL(c, "chat: error without message");
		c->ended = c->errored = true;
		return;
	}
	const char *id = sl_json_get_str(v, "id", NULL);
	if (!id || strncmp(id, chat ? "chatcmpl-" : "cmpl-", chat ? 9 : 5) != 0 ||
	    !check_str_is(v, "object", chat ? "chat.completion.chunk" : "text_completion") ||
	    !check_has_int(v, "created") || !check_has_str(v, "model"))
		CHECK_FAIL(c, "chat: chunk without id, object, created, model");
	const struct sl_json *choices = sl_json_get(v, "choices");
	if (!choices || choices->type != SL_JSON_ARRAY || choices->len > 1)
		CHECK_FAIL(c, "chat: choices");
	if (choices->len == 0) {
		const struct sl_json *u = sl_json_get(v, "usage");
		if (!c->finished || !check_has_int(u, "prompt_tokens") || !check_has_int(u, "completion_tokens"))
			CHECK_FAIL(c, "chat: usage chunk before the finish chunk, or without counts");
		return;
	}
	const struct sl_json *ch = choices->u.items[0];
	int64_t index;
	if (!sl_json_get_int(ch, "index", &index) || index != 0)
		CHECK_FAIL(c, "chat: choice index");
	const char *fr = sl_json_get_str(ch, "finish_reason", NULL);
	if (fr) {
		if (c->finished || (strcmp(fr, "stop") && strcmp(fr, "length") && strcmp(fr, "tool_calls") &&
		                    strcmp(fr, "content_filter")))
			CHECK_FAIL(c, "chat: second or unknown finish_reason");
		c->finished = true;
	}
	if (!chat) {
		if (!check_has_str(ch, "text"))
			CHECK_FAIL(c, "completions: choice without text");
		return;
	}
	const struct sl_json *d = sl_json_get(ch, "delta");
	if (!d || d->type != SL_JSON_OBJECT)
		CHECK_FAIL(c, "chat: choice without delta");
	if (c->events_num == 1 && !check_str_is(d, "role", "assistant"))
		CHECK_FAIL(c, "chat: first chunk is not the role chunk");
	const struct sl_json *calls = sl_json_get(d, "tool_calls");
	for (uint32_t i = 0; calls && i < calls->len; i++) {
		const struct sl_json *tc = calls->u.items[i];
		int64_t ti;
		if (!sl_json_get_int(tc, "index", &ti) || ti < 0 || ti > c->tools_num)
			CHECK_FAIL(c, "chat: tool_calls index skips ahead");
		if (ti == c->tools_num) {
			const char *tid = sl_json_get_str(tc, "id", NULL);
			if (!tid || !*tid || !check_str_is(tc, "type", "function"))
				CHECK_FAIL(c, "chat: a new tool call without id and type");
			c->tools_num++;
		} else if (sl_json_get(tc, "id")) {
			CHECK_FAIL(c, "chat: a tool call's id sent twice");
		}
		if (!check_has_str(sl_json_get(tc, "function"), "arguments"))
			CHECK_FAIL(c, "chat: tool call delta without arguments");
	}
}

static void check_item_ref(struct check *c, const struct sl_json *v, const char *type)
{
	int64_t oi;
	if (!c->item_open || strcmp(c->item_type, type) != 0 ||
	    !sl_json_is_str(sl_json_get(v, "item_id"), c->item_id) ||
	    !sl_json_get_int(v, "output_index", &oi) || oi != c->items_num - 1)
		CHECK_FAIL(c, "responses: event of no open item of its type");
}

static void check_responses(struct check *c, const char *event, const struct sl_json *v)
{
	const char *type = sl_json_get_str(v, "type", NULL);
	int64_t seq;
	if (!event || !type || strcmp(event, type) != 0)
		CHECK_FAIL(c, "responses: event name differs from data.type");
	if (!sl_json_get_int(v, "sequence_number", &seq) || seq != c->sequence)
		CHECK_FAIL(c, "responses: sequence_number out of order");
	c->sequence++;
	if (c->failed_due && strcmp(type, "response.failed") != 0)
		CHECK_FAIL(c, "responses: error not followed by response.failed");
	if (strcmp(type, "error") == 0) {
		if (!check_has_str(v, "message"))
			CHECK_FAIL(c, "responses: error without message");
		c->failed_due = true;
		return;
	}
	const struct sl_json *resp = sl_json_get(v, "response");
	if (strcmp(type, "response.created") == 0 || strcmp(type, "response.in_progress") == 0) {
		if (seq != (strcmp(type, "response.created") == 0 ? 0 : 1) ||
		    !check_str_is(resp, "status", "in_progress") || !check_has_str(resp, "id"))
			CHECK_FAIL(c, "responses: bad created/in_progress");
		return;
	}
	if (strcmp(type, "response.completed") == 0 || strcmp(type, "response.incomplete") == 0 ||
	    strcmp(type, "response.failed") == 0) {
		const struct sl_json *output = sl_json_get(resp, "output");
		if ((!c->failed_due && c->item_open) || !output || output->type != SL_JSON_ARRAY ||
		    output->len != c->items_num || !check_has_str(resp, "status"))
			CHECK_FAIL(c, "responses: terminal event with open items or a short output");
		if (strcmp(type, "response.failed") != 0 &&
		    !check_has_int(sl_json_get(resp, "usage"), "total_tokens"))
			CHECK_FAIL(c, "responses: completed without usage");
		c->ended = true;
		return;
	}
	if (seq < 2)
		CHECK_FAIL(c, "responses: content before response.in_progress");
	if (strcmp(type, "response.output_item.added") == 0) {
		const struct sl_json *item = sl_json_get(v, "item");
		const char *it = sl_json_get_str(item, "type", NULL);
		const char *id = sl_json_get_str(item, "id", NULL);
		int64_t oi;
		if (c->item_open || !it || !id || !sl_json_get_int(v, "output_index", &oi) || oi != c->items_num)
			CHECK_FAIL(c, "responses: output_item.added out of order");
		if (strcmp(it, "function_call") == 0 &&
		    (!check_has_str(item, "call_id") || !check_has_str(item, "name")))
			CHECK_FAIL(c, "responses: function_call item without call_id and name");
		if (strcmp(it, "message") && strcmp(it, "reasoning") && strcmp(it, "function_call"))
			CHECK_FAIL(c, "responses: unknown item type");
		c->item_open = true;
		c->items_num++;
		check_copy(c->item_type, sizeof c->item_type, it);
		check_copy(c->item_id, sizeof c->item_id, id);
		return;
	}
	if (strcmp(type, "response.output_item.done") == 0) {
		const struct sl_json *item = sl_json_get(v, "item");
		int64_t oi;
		if (!c->item_open || !sl_json_is_str(sl_json_get(item, "id"), c->item_id) ||
		    !sl_json_get_int(v, "output_index", &oi) || oi != c->items_num - 1)
			CHECK_FAIL(c, "responses: output_item.done of no open item");
		c->item_open = false;
		return;
	}
	static const struct {
		const char *event;
		const char *item;
		const char *field;
	} refs[] = {
		{ "response.content_part.added", "message", "part" },
		{ "response.content_part.done", "message", "part" },
		{ "response.output_text.delta", "message", "delta" },
		{ "response.output_text.done", "message", "text" },
		{ "response.reasoning_summary_part.added", "reasoning", "part" },
		{ "response.reasoning_summary_part.done", "reasoning", "part" },
		{ "response.reasoning_summary_text.delta", "reasoning", "delta" },
		{ "response.reasoning_summary_text.done", "reasoning", "text" },
		{ "response.function_call_arguments.delta", "function_call", "delta" },
		{ "response.function_call_arguments.done", "function_call", "arguments" },
	};
	for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
		if (strcmp(type, refs[i].event) != 0)
			continue;
		check_item_ref(c, v, refs[i].item);
		if (!sl_json_get(v, refs[i].field))
			CHECK_FAIL(c, "responses: event without its payload field");
		return;
	}
	CHECK_FAIL(c, "responses: unknown event type");
}

/*
 * tc_check_stream checks that s[0..len) is a complete, well-formed client
 * stream for route: SSE events ("event:" line optional, one "data:" line,
 * a blank line; or a comment), data JSON or [DONE], in an order the client's
 * SDK accepts, with exactly one terminal event at the end. Returns NULL, or
 * what is wrong.
 */
static const char *tc_check_stream(enum sl_route route, const char *s, size_t len)
{
	struct check c = { .route = route, .open_index = -1 };
	sl_arena_init(&c.a, NULL, 0);
	const char *p = s, *end = s + len;
	bool done_seen = false;
	while (p < end && !c.err) {
		const char *blank = memmem(p, (size_t)(end - p), "\n\n", 2);
		if (!blank) {
			c.err = "sse: an event without its blank line";
			break;
		}
		if (c.ended || done_seen) {
			c.err = "sse: an event after the terminal one";
			break;
		}
		const char *q = p, *event = NULL, *data = NULL;
		size_t event_len = 0, data_len = 0;
		bool comment = false;
		while (q < blank + 1) {
			const char *nl = memchr(q, '\n', (size_t)(blank + 1 - q));
			size_t n = (size_t)(nl - q);
			if (n >= 7 && memcmp(q, "event: ", 7) == 0 && !event && !data) {
				event = q + 7;
				event_len = n - 7;
			} else if (n >= 6 && memcmp(q, "data: ", 6) == 0 && !data) {
				data = q + 6;
				data_len = n - 6;
			} else if (n >= 1 && q[0] == ':' && !event && !data) {
				comment = true;
			} else {
				c.err = "sse: a line that is not event, data or comment";
			}
			q = nl + 1;
		}
		p = blank + 2;
		if (c.err)
			break;
		if (comment && !data && !event)
			continue;
		if (!data) {
			c.err = "sse: an event without data";
			break;
		}
		if (comment) {
			c.err = "sse: a comment inside an event";
			break;
		}
		c.events_num++;
		if (data_len == 6 && memcmp(data, "[DONE]", 6) == 0) {
			if ((route != SL_ROUTE_CHAT_COMPLETIONS && route != SL_ROUTE_COMPLETIONS) || event ||
			    c.errored)
				c.err = "sse: [DONE] where it does not belong";
			done_seen = true;
			continue;
		}
		struct sl_json *v;
		struct sl_json_error je;
		if (sl_json_parse(&c.a, data, data_len, NULL, &v, &je) != 0 || v->type != SL_JSON_OBJECT) {
			c.err = "sse: data is not a JSON object";
			break;
		}
		char name[64];
		size_t name_len = event_len < sizeof name - 1 ? event_len : sizeof name - 1;
		memcpy(name, event ? event : "", name_len);
		name[name_len] = '\0';
		const char *ev = event ? name : NULL;
		switch (route) {
		case SL_ROUTE_MESSAGES:
			check_anthropic(&c, ev, v);
			break;
		case SL_ROUTE_RESPONSES:
			check_responses(&c, ev, v);
			break;
		default:
			check_chat(&c, ev, v);
			break;
		}
		sl_arena_release(&c.a);
	}
	sl_arena_release(&c.a);
	if (!c.err && !c.ended && !done_seen)
		c.err = "sse: the stream has no terminal event";
	if (!c.err && (route == SL_ROUTE_CHAT_COMPLETIONS || route == SL_ROUTE_COMPLETIONS) &&
	    !c.errored && !done_seen)
		c.err = "chat: no [DONE]";
	return c.err;
}

/* --- the driver ------------------------------------------------------------------------ */

static const struct {
	enum sl_format upstream;
	enum sl_route route;
} fuzz_directions[8] = {
	{ SL_FORMAT_OPENAI, SL_ROUTE_MESSAGES },           { SL_FORMAT_ANTHROPIC, SL_ROUTE_CHAT_COMPLETIONS },
	{ SL_FORMAT_OPENAI, SL_ROUTE_RESPONSES },          { SL_FORMAT_ANTHROPIC, SL_ROUTE_RESPONSES },
	{ SL_FORMAT_OPENAI, SL_ROUTE_COMPLETIONS },        { SL_FORMAT_ANTHROPIC, SL_ROUTE_COMPLETIONS },
	{ SL_FORMAT_OPENAI, SL_ROUTE_CHAT_COMPLETIONS },   { SL_FORMAT_ANTHROPIC, SL_ROUTE_MESSAGES },
};

/* fuzz_run transcodes s[0..n) fed in pieces: piece sizes from seed (0: whole). */
static void fuzz_run(uint8_t mode, uint32_t seed, const char *s, size_t n, struct sl_buf *out)
{
	struct sl_convert_ctx ctx = {
		.route = fuzz_directions[mode & 7].route,
		.upstream_format = fuzz_directions[mode & 7].upstream,
		.upstream_model = "upstream-model",
		.client_model = "client-model",
		.request_id = "req_fuzz",
		.created_s = 1732240000,
		.client_wants_usage = (mode & 8) != 0,
	};
	bool cut = (mode & 16) != 0;
	struct sl_arena a;
	sl_arena_init(&a, NULL, (size_t)64 << 20);
	struct sl_transcoder *t = sl_transcoder_create(&a, NULL, &ctx);
	SL_ASSERT(t);
	static const size_t sizes[] = { 1, 2, 3, 7, 64, 1000 };
	size_t max = seed ? sizes[seed % 6] : n;
	uint32_t x = seed * 2654435761u + 1;
	size_t off = 0;
	int rc = 0;
	while (off < n && rc == 0) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		size_t k = seed ? 1 + x % max : n;
		if (k > n - off)
			k = n - off;
		rc = sl_transcoder_feed(t, s + off, k, out);
		off += k;
	}
	struct sl_usage u;
	sl_transcoder_usage(t, &u);
	if (rc != 0)
		SL_ASSERT(sl_transcoder_feed(t, "x", 1, out) == SL_ERROR);
	sl_transcoder_finish(t, rc == 0 && !cut, rc == 0 && cut ? "upstream connection reset" : NULL, out);
	sl_arena_release(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	uint8_t mode = data[0];
	uint32_t seed = (uint32_t)data[1] + 1;
	const char *s = (const char *)data + 2;
	size_t n = size - 2;
	struct sl_buf whole, split;
	sl_buf_init(&whole, NULL, 0);
	sl_buf_init(&split, NULL, 0);
	fuzz_run(mode, 0, s, n, &whole);
	fuzz_run(mode, seed, s, n, &split);
	SL_ASSERT(!whole.failed && !split.failed);
	SL_ASSERT(whole.len == split.len && (whole.len == 0 || memcmp(whole.p, split.p, whole.len) == 0));
	const char *err = tc_check_stream(fuzz_directions[mode & 7].route, whole.p ? whole.p : "", whole.len);
	if (err) {
		fprintf(stderr, "fuzz_transcode: %s\n--- output ---\n%.*s\n", err, (int)whole.len,
		        whole.p ? whole.p : "");
		SL_ASSERT(!"malformed client stream");
	}
	sl_buf_release(&whole);
	sl_buf_release(&split);
	return 0;
}
