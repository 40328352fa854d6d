/*
 * transcode.c - per-stream SSE transcoders (the stream half of convert.h).
 *
 * An upstream's event stream (OpenAI chat.completion.chunk, or Anthropic
 * Messages events) becomes the event stream the client's SDK expects:
 * Anthropic Messages events, OpenAI chat chunks, Responses API events, or
 * legacy text_completion chunks. Design and the choices made for the cases
 * the formats do not map one to one: docs/streams.md.
 *
 * Three layers, top to bottom:
 *   1. an SSE parser (WHATWG HTML "event stream interpretation") that takes
 *      its input split anywhere and dispatches complete events;
 *   2. one upstream reader per format, which turns each event's JSON into a
 *      few normalised operations (op_*: text, thinking, signature, redacted
 *      thinking, tool-call fragment, block end, stop, done, error, ping);
 *   3. one writer per client format. The Anthropic and Responses writers sit
 *      behind a block sequencer (seq_*) which makes their content blocks
 *      (output items) contiguous and of one kind each: thinking never leaks
 *      into a text block, and interleaved parallel tool calls become one
 *      block each, emitted in order.
 *
 * Output is a pure function of the sequence of complete upstream events, so
 * any split of the input gives byte-identical output (the unit test checks
 * every split point). Memory: the state, tool calls and (Responses only) the
 * text kept for the final events live in the stream's arena; each event's
 * JSON tree lives in a scratch arena released after the event.
 */
#include "sluice/convert.h"

#include <string.h>

#define TC_MAGIC 0x5eed7c0dU
#define TC_EVENT_BYTES_MAX ((size_t)1 << 20)    /* one upstream event */
#define TC_SCRATCH_BYTES_MAX ((size_t)16 << 20) /* its JSON tree */
#define TC_LINE_BYTES_MIN 1024                  /* first size of the line and data buffers */
#define TC_TOOLS_NUM_MAX 1024                   /* tool calls per stream */
#define TC_ITEMS_NUM_MAX 4096                   /* Responses output items per stream */
#define TC_EVENT_NAME_MAX 64
#define TC_BASE_ID_MAX 64
#define TC_JSON_DEPTH_MAX 64
#define ROPE_SEG_MIN_BYTES 256
#define ROPE_SEG_MAX_BYTES 65536

_Static_assert(TC_EVENT_BYTES_MAX < TC_SCRATCH_BYTES_MAX, "a tree needs more than its text");
_Static_assert(ROPE_SEG_MIN_BYTES <= ROPE_SEG_MAX_BYTES, "rope segment bounds");

enum tc_client {
	CLIENT_ANTHROPIC,   /* SL_ROUTE_MESSAGES */
	CLIENT_CHAT,        /* SL_ROUTE_CHAT_COMPLETIONS */
	CLIENT_RESPONSES,   /* SL_ROUTE_RESPONSES */
	CLIENT_COMPLETIONS, /* SL_ROUTE_COMPLETIONS */
};

/* The transcoder's states; every transition is in tc_fail, op_done,
 * op_error and sl_transcoder_finish. */
enum tc_state {
	TC_STREAMING = 0, /* the client's stream is open; upstream events flow */
	TC_DONE,          /* the client's stream ended normally; later input is ignored */
	TC_ERRORED,       /* the upstream's error event was relayed; later input is ignored */
	TC_FAILED,        /* feed returned SL_ERROR; only finish may follow */
	TC_FINISHED,      /* finish ran; nothing may follow */
};

enum tc_kind { KIND_NONE = 0, KIND_TEXT, KIND_THINKING, KIND_REDACTED, KIND_TOOL };

enum tc_stop {
	STOP_NONE = 0,
	STOP_END_TURN,
	STOP_SEQUENCE,
	STOP_MAX_TOKENS,
	STOP_TOOL_USE,
	STOP_REFUSAL,
	STOP_PAUSE_TURN,
};

/* A rope: text appended piecewise into arena segments that double in size
 * (bounded), so long text costs no copies and wastes at most one segment. */
struct rope_seg {
	struct rope_seg *next;
	uint32_t len;
	uint32_t cap;
	char data[];
};

struct rope {
	struct rope_seg *head;
	struct rope_seg *tail;
	size_t len;
};

enum tool_state {
	TOOL_NEW = 0, /* seen, not yet written to the client */
	TOOL_PENDING, /* sequencer: another block is open; fragments buffered in args */
	TOOL_OPEN,    /* its block is open (chat: announced) */
	TOOL_CLOSED,  /* its block was closed */
};

/* A tool call's arguments scanned as they stream, to learn when they form
 * one complete JSON object or array: after that no fragment but whitespace
 * can follow, so the sequencer may close the call's block before the
 * upstream says so. Scalars at the top level never count as complete. */
struct json_scan {
	uint32_t depth;
	bool in_string;
	bool escape;
	bool complete;
	bool broken; /* not an object or array, or text after its end */
};

struct item;

struct tool {
	struct tool *next;      /* creation order */
	int64_t key;            /* upstream identity: OpenAI tool_calls[].index, Anthropic block index */
	char *id;               /* arena copy; NULL until known */
	uint32_t id_len;
	char *name;
	uint32_t name_len;
	bool name_sent;         /* chat: the name went out in a delta */
	enum tool_state state;
	uint32_t index;         /* 0, 1, ... in creation order: the OpenAI tool_calls index */
	struct rope args;       /* Responses: all arguments; Anthropic: those buffered while pending */
	struct item *item;      /* Responses: its output item */
	struct json_scan scan;  /* sequencer: are the arguments written so far a whole value? */
	char *extra;            /* extra_content (e.g. Gemini's thought_signature), serialised */
	size_t extra_len;
};

/* A Responses output item: kept until response.completed repeats them all. */
struct item {
	struct item *next;
	enum tc_kind kind;      /* TEXT: message; THINKING, REDACTED: reasoning; TOOL: function_call */
	uint32_t output_index;
	bool done;
	struct rope text;       /* message text, or the reasoning summary text */
	struct rope opaque;     /* reasoning: the signature, or redacted data (encrypted_content) */
	struct tool *tool;
};

/* A buffer in the stream's arena, reused from event to event and grown by
 * doubling: its memory is bounded by twice the largest event, and nothing
 * outlives the arena (a transcoder dropped without finish leaks nothing). */
struct linebuf {
	char *p;
	size_t len;
	size_t cap;
};

struct sse {
	struct linebuf line;    /* a line cut by the end of a feed */
	struct linebuf data;    /* the event's data lines, each followed by \n */
	char event[TC_EVENT_NAME_MAX];
	uint32_t event_len;     /* 0: none given ("message"); UINT32_MAX: too long to know */
	uint8_t bom_matched;    /* bytes of a leading UTF-8 BOM seen so far */
	bool bom_done;
	bool after_cr;          /* the last byte fed was a CR: a leading LF belongs to it */
};

struct sl_transcoder {
	uint32_t magic;
	enum tc_state state;
	enum tc_client client;
	enum sl_format upstream;
	struct sl_arena *arena;  /* the stream's: state, tools, items */
	struct sl_arena scratch; /* one event's JSON tree */
	struct sse sse;
	const char *fail_message; /* why feed failed (static text) */

	const char *model;       /* echoed to the client */
	size_t model_len;
	int64_t created_s;
	int64_t estimated_input_tokens; /* message_start's input before the upstream's count */
	bool wants_usage;        /* chat/completions client asked for the usage chunk */
	const char *request_id;

	bool started;            /* the client's opening event(s) went out */
	char base_id[TC_BASE_ID_MAX + 1]; /* [A-Za-z0-9_-]: suffix of every generated id */
	size_t base_id_len;
	char *chunk_prefix;      /* chat/completions: `data: {"id":...,"choices":[` */
	size_t chunk_prefix_len;

	enum tc_stop stop;
	char *stop_sequence;     /* Anthropic upstream's matched stop sequence */
	uint32_t stop_sequence_len;
	bool finish_sent;        /* chat/completions: the finish_reason chunk went out */
	bool saw_refusal;        /* an OpenAI refusal was relayed as text */
	struct rope thinking;    /* chat: the open thinking block's text and signature, */
	struct rope signature;   /* repeated whole in thinking_blocks when it ends */
	bool upstream_block_ignored; /* Anthropic upstream: the open block is not relayed */
	struct sl_usage usage;   /* as reported; -1 where not (yet) */
	int64_t content_bytes;   /* output text seen: estimates output tokens when none are reported */

	struct tool *tools;
	struct tool *tools_tail;
	uint32_t tools_num;
	uint32_t pending_num;    /* sequencer: tools in TOOL_PENDING */

	/* sequencer: the one open block (Anthropic) or item (Responses) */
	enum tc_kind cur;
	struct tool *cur_tool;
	struct item *cur_item;
	uint32_t block_index;    /* Anthropic: the open (or next) block's index */
	struct item *items;
	struct item *items_tail;
	uint32_t items_num;
	int64_t sequence_number; /* Responses: the next event's */
};

/* A string to write: flat, or a rope. */
struct text {
	const char *s;
	size_t len;
	const struct rope *rope;
};

#define TEXT_FLAT(s_, n_) ((struct text){ (s_), (n_), NULL })
#define TEXT_ROPE(r_) ((struct text){ NULL, 0, (r_) })

/* --- output helpers -------------------------------------------------------------- */

/* All writers append to out and ignore its failure: sl_buf failures are
 * sticky, so the caller checks out->failed once per event. */

static inline void put(struct sl_buf *b, const char *s, size_t n)
{
	sl_buf_append(b, s, n);
}

/* PUT takes string literals only ("" lit "" does not compile otherwise). */
#define PUT(b, lit) put((b), "" lit "", sizeof(lit) - 1)

static void put_escaped(struct sl_buf *b, const char *s, size_t n)
{
	if (!n)
		return;
	size_t e = sl_json_escaped_len(s, n);
	if (!sl_buf_reserve(b, e))
		return;
	size_t w = sl_json_escape(s, n, b->p + b->len);
	SL_ASSERT_HOT(w == e);
	b->len += w;
}

/* put_str writes a JSON string: quotes and escapes (s is valid UTF-8). */
static void put_str(struct sl_buf *b, const char *s, size_t n)
{
	PUT(b, "\"");
	put_escaped(b, s, n);
	PUT(b, "\"");
}

/* Escaping is byte-local for valid UTF-8 (only ASCII bytes are escaped), so
 * a rope is escaped segment by segment even where a segment boundary cuts
 * a multi-byte sequence. */
static void put_text(struct sl_buf *b, struct text x)
{
	PUT(b, "\"");
	if (x.rope) {
		for (const struct rope_seg *s = x.rope->head; s; s = s->next)
			put_escaped(b, s->data, s->len);
	} else {
		put_escaped(b, x.s, x.len);
	}
	PUT(b, "\"");
}

static void put_int(struct sl_buf *b, int64_t v)
{
	char tmp[24];
	char *p = tmp + sizeof tmp;
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--p = '-';
	put(b, p, (size_t)(tmp + sizeof tmp - p));
}

static inline void put_cstr(struct sl_buf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* --- ropes ------------------------------------------------------------------------- */

static bool rope_append(struct sl_arena *a, struct rope *r, const char *s, size_t n)
{
	while (n) {
		struct rope_seg *t = r->tail;
		if (t && t->len < t->cap) {
			size_t k = SL_MIN(n, (size_t)(t->cap - t->len));
			memcpy(t->data + t->len, s, k);
			t->len += (uint32_t)k;
			r->len += k;
			s += k;
			n -= k;
			continue;
		}
		size_t cap = t ? SL_MIN((size_t)t->cap * 2, (size_t)ROPE_SEG_MAX_BYTES) : ROPE_SEG_MIN_BYTES;
		cap = SL_MAX(cap, SL_MIN(n, (size_t)ROPE_SEG_MAX_BYTES));
		struct rope_seg *g = sl_arena_alloc(a, sizeof *g + cap);
		if (!g)
			return false;
		g->next = NULL;
		g->len = 0;
		g->cap = (uint32_t)cap;
		if (t)
			t->next = g;
		else
			r->head = g;
		r->tail = g;
	}
	return true;
}

/* linebuf_append: false when the arena is exhausted. Callers bound len. */
static bool linebuf_append(struct sl_arena *a, struct linebuf *b, const char *s, size_t n)
{
	if (b->cap - b->len < n) {
		size_t cap = SL_MAX(SL_MAX(b->cap * 2, b->len + n), (size_t)TC_LINE_BYTES_MIN);
		char *p = sl_arena_alloc(a, cap);
		if (!p)
			return false;
		if (b->len)
			memcpy(p, b->p, b->len);
		b->p = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	return true;
}

static void json_scan(struct json_scan *j, const char *s, size_t n)
{
	for (size_t i = 0; i < n && !j->broken; i++) {
		char c = s[i];
		if (j->in_string) {
			if (j->escape)
				j->escape = false;
			else if (c == '\\')
				j->escape = true;
			else if (c == '"')
				j->in_string = false;
			continue;
		}
		if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
			continue;
		if (j->complete || (j->depth == 0 && c != '{' && c != '[')) {
			j->broken = true;
			j->complete = false;
		} else if (c == '"') {
			j->in_string = true;
		} else if (c == '{' || c == '[') {
			j->depth++;
		} else if (c == '}' || c == ']') {
			if (--j->depth == 0)
				j->complete = true;
		}
	}
}

static bool only_whitespace(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
			return false;
	return true;
}

static void json_scan_rope(struct json_scan *j, const struct rope *r)
{
	for (const struct rope_seg *g = r->head; g; g = g->next)
		json_scan(j, g->data, g->len);
}

/* --- failure ------------------------------------------------------------------------- */

/* tc_fail records why the upstream stream cannot be transcoded further;
 * sl_transcoder_finish(..., false, ...) then tells the client. */
static int tc_fail(struct sl_transcoder *t, const char *message)
{
	SL_ASSERT(t->state != TC_FINISHED);
	t->state = TC_FAILED;
	t->fail_message = message;
	return SL_ERROR;
}

static int tc_oom(struct sl_transcoder *t)
{
	return tc_fail(t, "stream state memory exhausted");
}

/* --- ids --------------------------------------------------------------------------------- */

/* set_base_id derives the suffix of the client's ids from the upstream's
 * message id ("chatcmpl-X", "msg_X" -> "X"), else the request id. Only
 * [A-Za-z0-9_-] is kept, so ids never need escaping and Anthropic's id
 * pattern holds. */
static void set_base_id(struct sl_transcoder *t, const char *id, size_t len)
{
	static const char *const prefixes[] = { "chatcmpl-", "msg_", "resp_", "cmpl-" };
	if (id) {
		for (size_t i = 0; i < SL_ARRAY_LEN(prefixes); i++) {
			size_t pl = strlen(prefixes[i]);
			if (len > pl && memcmp(id, prefixes[i], pl) == 0) {
				id += pl;
				len -= pl;
				break;
			}
		}
	}
	for (int pass = 0; pass < 2 && t->base_id_len == 0; pass++) {
		if (pass == 1) {
			id = t->request_id;
			len = id ? strlen(id) : 0;
		}
		for (size_t i = 0; id && i < len && t->base_id_len < TC_BASE_ID_MAX; i++) {
			unsigned char c = (unsigned char)id[i];
			if ((c | 0x20) - 'a' < 26u || c - '0' < 10u || c == '_' || c == '-')
				t->base_id[t->base_id_len++] = (char)c;
		}
	}
	if (t->base_id_len == 0)
		t->base_id[t->base_id_len++] = '0';
	t->base_id[t->base_id_len] = '\0';
}

static void put_base_id(struct sl_transcoder *t, struct sl_buf *b)
{
	put(b, t->base_id, t->base_id_len);
}

/* A generated tool-call id, for upstreams that give none: unique per stream. */
static void put_tool_id(struct sl_transcoder *t, struct sl_buf *b, const struct tool *tool)
{
	if (tool->id_len) {
		put_str(b, tool->id, tool->id_len);
		return;
	}
	put_cstr(b, t->client == CLIENT_ANTHROPIC ? "\"toolu_" : "\"call_");
	put_base_id(t, b);
	PUT(b, "_");
	put_int(b, tool->index);
	PUT(b, "\"");
}

/* --- stop reasons ---------------------------------------------------------------------- */

static enum tc_stop stop_from_openai(const char *s, size_t n)
{
	if (n == 6 && memcmp(s, "length", 6) == 0)
		return STOP_MAX_TOKENS;
	if ((n == 10 && memcmp(s, "tool_calls", 10) == 0) ||
	    (n == 13 && memcmp(s, "function_call", 13) == 0))
		return STOP_TOOL_USE;
	if (n == 14 && memcmp(s, "content_filter", 14) == 0)
		return STOP_REFUSAL;
	return STOP_END_TURN; /* "stop", and anything unknown */
}

static enum tc_stop stop_from_anthropic(const char *s, size_t n)
{
	static const struct {
		const char *name;
		enum tc_stop stop;
	} map[] = {
		{ "end_turn", STOP_END_TURN },       { "stop_sequence", STOP_SEQUENCE },
		{ "max_tokens", STOP_MAX_TOKENS },   { "tool_use", STOP_TOOL_USE },
		{ "refusal", STOP_REFUSAL },         { "pause_turn", STOP_PAUSE_TURN },
		{ "model_context_window_exceeded", STOP_MAX_TOKENS },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(map); i++)
		if (strlen(map[i].name) == n && memcmp(map[i].name, s, n) == 0)
			return map[i].stop;
	return STOP_END_TURN;
}

/* The stop reason the client sees. An OpenAI-format host that called tools
 * but said "stop" (several do) is reported as tool use: agent loops look at
 * the stop reason to decide whether to run the tools. A refusal (OpenAI's
 * delta.refusal text) is reported as one. */
static enum tc_stop effective_stop(const struct sl_transcoder *t)
{
	enum tc_stop s = t->stop;
	if (s == STOP_NONE)
		s = t->tools_num ? STOP_TOOL_USE : STOP_END_TURN;
	if (s == STOP_END_TURN && t->upstream == SL_FORMAT_OPENAI && t->tools_num)
		s = STOP_TOOL_USE;
	if (t->saw_refusal && s != STOP_MAX_TOKENS)
		s = STOP_REFUSAL; /* as convert.c does for a non-stream refusal */
	return s;
}

static const char *stop_name_openai(enum tc_stop s)
{
	switch (s) {
	case STOP_MAX_TOKENS:
		return "length";
	case STOP_TOOL_USE:
		return "tool_calls";
	case STOP_REFUSAL:
		return "content_filter";
	default:
		return "stop";
	}
}

static const char *stop_name_anthropic(enum tc_stop s)
{
	switch (s) {
	case STOP_SEQUENCE:
		return "stop_sequence";
	case STOP_MAX_TOKENS:
		return "max_tokens";
	case STOP_TOOL_USE:
		return "tool_use";
	case STOP_REFUSAL:
		return "refusal";
	case STOP_PAUSE_TURN:
		return "pause_turn";
	default:
		return "end_turn";
	}
}

/* --- usage ------------------------------------------------------------------------------ */

static inline int64_t known(int64_t v)
{
	return v < 0 ? 0 : v;
}

/* Output tokens for the client: the upstream's count, else an estimate
 * (4 bytes a token) rather than the zero clients would show. */
static int64_t client_output_tokens(const struct sl_transcoder *t)
{
	if (t->usage.output_tokens >= 0)
		return t->usage.output_tokens;
	return (t->content_bytes + 3) / 4;
}

/* OpenAI's prompt_tokens counts cached tokens too; Anthropic's input_tokens
 * does not. */
static int64_t prompt_tokens(const struct sl_transcoder *t)
{
	return known(t->usage.input_tokens) + known(t->usage.cache_read_tokens) +
	       known(t->usage.cache_write_tokens);
}

static void put_usage_openai(struct sl_transcoder *t, struct sl_buf *b)
{
	int64_t p = prompt_tokens(t), c = client_output_tokens(t);
	PUT(b, "{\"prompt_tokens\":");
	put_int(b, p);
	PUT(b, ",\"completion_tokens\":");
	put_int(b, c);
	PUT(b, ",\"total_tokens\":");
	put_int(b, p + c);
	PUT(b, ",\"prompt_tokens_details\":{\"cached_tokens\":");
	put_int(b, known(t->usage.cache_read_tokens));
	PUT(b, "}}");
}

/* input_estimate: what to say while the upstream has not counted the input
 * (an OpenAI upstream counts it in its last chunk, or, ignoring
 * include_usage, never): the proxy's local estimate, not a zero. */
static void put_usage_anthropic(struct sl_transcoder *t, struct sl_buf *b, int64_t output,
                                int64_t input_estimate)
{
	PUT(b, "{\"input_tokens\":");
	put_int(b, t->usage.input_tokens >= 0 ? t->usage.input_tokens : input_estimate);
	PUT(b, ",\"cache_creation_input_tokens\":");
	put_int(b, known(t->usage.cache_write_tokens));
	PUT(b, ",\"cache_read_input_tokens\":");
	put_int(b, known(t->usage.cache_read_tokens));
	PUT(b, ",\"output_tokens\":");
	put_int(b, output);
	PUT(b, "}");
}

static void put_usage_responses(struct sl_transcoder *t, struct sl_buf *b)
{
	int64_t p = prompt_tokens(t), c = client_output_tokens(t);
	PUT(b, "{\"input_tokens\":");
	put_int(b, p);
	PUT(b, ",\"input_tokens_details\":{\"cached_tokens\":");
	put_int(b, known(t->usage.cache_read_tokens));
	PUT(b, "},\"output_tokens\":");
	put_int(b, c);
	PUT(b, ",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":");
	put_int(b, p + c);
	PUT(b, "}");
}

/* --- tools ------------------------------------------------------------------------------ */

/* The most recent tool with this key (an OpenAI host may reuse an index for
 * a second call with a new id: that is a new tool). Linear: tools are few
 * and bounded by TC_TOOLS_NUM_MAX. */
static struct tool *tool_by_key(struct sl_transcoder *t, int64_t key)
{
	struct tool *found = NULL;
	for (struct tool *x = t->tools; x; x = x->next)
		if (x->key == key)
			found = x;
	return found;
}

static struct tool *tool_by_id(struct sl_transcoder *t, const char *id, size_t len)
{
	for (struct tool *x = t->tools; x; x = x->next)
		if (x->id_len == len && memcmp(x->id, id, len) == 0)
			return x;
	return NULL;
}

/* tool_new returns a new tool, or NULL (t failed) past the limits. */
static struct tool *tool_new(struct sl_transcoder *t, int64_t key)
{
	if (t->tools_num >= TC_TOOLS_NUM_MAX) {
		tc_fail(t, "upstream stream has too many tool calls");
		return NULL;
	}
	struct tool *x = sl_arena_alloc(t->arena, sizeof *x);
	if (!x) {
		tc_oom(t);
		return NULL;
	}
	*x = (struct tool){ .key = key, .index = t->tools_num++ };
	if (t->tools_tail)
		t->tools_tail->next = x;
	else
		t->tools = x;
	t->tools_tail = x;
	return x;
}

/* tool_learn keeps the first non-empty id, name and extra_content an
 * upstream gives. */
static int tool_learn(struct sl_transcoder *t, struct tool *x, const char *id, uint32_t id_len,
                      const char *name, uint32_t name_len, const struct sl_json *extra)
{
	if (extra && extra->type == SL_JSON_OBJECT && !x->extra) {
		size_t n = sl_json_serialized_len(extra);
		if (!(x->extra = sl_arena_alloc(t->arena, n)))
			return tc_oom(t);
		x->extra_len = sl_json_write(extra, x->extra);
	}
	if (id && id_len && !x->id_len) {
		if (!(x->id = sl_arena_memdup(t->arena, id, id_len)))
			return tc_oom(t);
		x->id_len = id_len;
	}
	if (name && name_len && !x->name_len) {
		if (!(x->name = sl_arena_memdup(t->arena, name, name_len)))
			return tc_oom(t);
		x->name_len = name_len;
	}
	return 0;
}

/* --- Anthropic client writer ------------------------------------------------------- */

#define ANTH_EVENT(b, name) PUT((b), "event: " name "\ndata: {\"type\":\"" name "\"")

static void anth_message_start(struct sl_transcoder *t, struct sl_buf *out)
{
	ANTH_EVENT(out, "message_start");
	PUT(out, ",\"message\":{\"id\":\"msg_");
	put_base_id(t, out);
	PUT(out, "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
	put_str(out, t->model, t->model_len);
	PUT(out, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":");
	put_usage_anthropic(t, out, known(t->usage.output_tokens), t->estimated_input_tokens);
	PUT(out, "}}\n\n");
}

static void anth_block_start(struct sl_transcoder *t, enum tc_kind kind, const struct tool *tool,
                             struct text data, struct sl_buf *out)
{
	ANTH_EVENT(out, "content_block_start");
	PUT(out, ",\"index\":");
	put_int(out, t->block_index);
	switch (kind) {
	case KIND_TEXT:
		PUT(out, ",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
		break;
	case KIND_THINKING:
		PUT(out, ",\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n");
		break;
	case KIND_REDACTED:
		PUT(out, ",\"content_block\":{\"type\":\"redacted_thinking\",\"data\":");
		put_text(out, data);
		PUT(out, "}}\n\n");
		break;
	case KIND_TOOL:
		PUT(out, ",\"content_block\":{\"type\":\"tool_use\",\"id\":");
		put_tool_id(t, out, tool);
		PUT(out, ",\"name\":");
		put_str(out, tool->name, tool->name_len);
		if (tool->extra) {
			PUT(out, ",\"extra_content\":");
			put(out, tool->extra, tool->extra_len);
		}
		PUT(out, ",\"input\":{}}}\n\n");
		break;
	case KIND_NONE:
		SL_ASSERT(!"block of no kind");
	}
}

/* kind KIND_NONE: a signature delta (of the open thinking block). */
static void anth_block_delta(struct sl_transcoder *t, enum tc_kind kind, struct text x,
                             struct sl_buf *out)
{
	ANTH_EVENT(out, "content_block_delta");
	PUT(out, ",\"index\":");
	put_int(out, t->block_index);
	switch (kind) {
	case KIND_TEXT:
		PUT(out, ",\"delta\":{\"type\":\"text_delta\",\"text\":");
		break;
	case KIND_THINKING:
		PUT(out, ",\"delta\":{\"type\":\"thinking_delta\",\"thinking\":");
		break;
	case KIND_TOOL:
		PUT(out, ",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":");
		break;
	default:
		PUT(out, ",\"delta\":{\"type\":\"signature_delta\",\"signature\":");
		break;
	}
	put_text(out, x);
	PUT(out, "}}\n\n");
}

static void anth_block_stop(struct sl_transcoder *t, struct sl_buf *out)
{
	ANTH_EVENT(out, "content_block_stop");
	PUT(out, ",\"index\":");
	put_int(out, t->block_index);
	PUT(out, "}\n\n");
	t->block_index++;
}

static void anth_message_end(struct sl_transcoder *t, struct sl_buf *out)
{
	enum tc_stop s = effective_stop(t);
	ANTH_EVENT(out, "message_delta");
	PUT(out, ",\"delta\":{\"stop_reason\":\"");
	put_cstr(out, stop_name_anthropic(s));
	PUT(out, "\",\"stop_sequence\":");
	if (s == STOP_SEQUENCE && t->stop_sequence)
		put_str(out, t->stop_sequence, t->stop_sequence_len);
	else
		PUT(out, "null");
	PUT(out, "},\"usage\":");
	put_usage_anthropic(t, out, client_output_tokens(t), t->estimated_input_tokens);
	PUT(out, "}\n\n");
	ANTH_EVENT(out, "message_stop");
	PUT(out, "}\n\n");
}

/* Anthropic error types, from either format's. */
static const char *anthropic_error_type(const char *type, size_t n)
{
	static const char *const same[] = {
		"invalid_request_error", "authentication_error", "permission_error", "not_found_error",
		"request_too_large",     "rate_limit_error",     "api_error",        "overloaded_error",
		"billing_error",         "timeout_error",
	};
	if (type) {
		for (size_t i = 0; i < SL_ARRAY_LEN(same); i++)
			if (strlen(same[i]) == n && memcmp(same[i], type, n) == 0)
				return same[i];
		if (memmem(type, n, "rate_limit", 10) || memmem(type, n, "quota", 5))
			return "rate_limit_error";
		if (memmem(type, n, "overload", 8))
			return "overloaded_error";
		if (memmem(type, n, "timeout", 7))
			return "timeout_error";
	}
	return "api_error";
}

/* --- Responses client writer ------------------------------------------------------ */

#define RESP_EVENT(t, b, name)                                                              \
	do {                                                                                \
		PUT((b), "event: " name "\ndata: {\"type\":\"" name "\",\"sequence_number\":"); \
		put_int((b), (t)->sequence_number++);                                       \
	} while (0)

static void put_item_id(struct sl_transcoder *t, struct sl_buf *b, const struct item *it)
{
	switch (it->kind) {
	case KIND_TEXT:
		PUT(b, "\"msg_");
		break;
	case KIND_TOOL:
		PUT(b, "\"fc_");
		break;
	default:
		PUT(b, "\"rs_");
		break;
	}
	put_base_id(t, b);
	PUT(b, "_");
	put_int(b, it->output_index);
	PUT(b, "\"");
}

/* put_item writes an output item as the client sees it: empty while it
 * streams (output_item.added), complete once done. */
static void put_item(struct sl_transcoder *t, struct sl_buf *b, const struct item *it, bool full)
{
	PUT(b, "{\"id\":");
	put_item_id(t, b, it);
	switch (it->kind) {
	case KIND_TEXT:
		PUT(b, ",\"type\":\"message\",\"status\":");
		if (!full) {
			PUT(b, "\"in_progress\",\"content\":[],\"role\":\"assistant\"}");
			return;
		}
		put_cstr(b, it->done ? "\"completed\"" : "\"incomplete\"");
		PUT(b, ",\"content\":[{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":");
		put_text(b, TEXT_ROPE(&it->text));
		PUT(b, "}],\"role\":\"assistant\"}");
		return;
	case KIND_THINKING:
	case KIND_REDACTED:
		PUT(b, ",\"type\":\"reasoning\",\"summary\":[");
		if (full && it->text.len) {
			PUT(b, "{\"type\":\"summary_text\",\"text\":");
			put_text(b, TEXT_ROPE(&it->text));
			PUT(b, "}");
		}
		PUT(b, "]");
		if (it->kind == KIND_REDACTED) {
			/* docs/convert.md: "redacted:" marks a redacted block's data */
			PUT(b, ",\"encrypted_content\":\"redacted:");
			for (const struct rope_seg *g = it->opaque.head; g; g = g->next)
				put_escaped(b, g->data, g->len);
			PUT(b, "\"");
		} else if (full && it->opaque.len) {
			PUT(b, ",\"encrypted_content\":");
			put_text(b, TEXT_ROPE(&it->opaque));
		}
		PUT(b, "}");
		return;
	case KIND_TOOL:
		PUT(b, ",\"type\":\"function_call\",\"status\":");
		if (full) {
			put_cstr(b, it->done ? "\"completed\"" : "\"incomplete\"");
			PUT(b, ",\"arguments\":");
			put_text(b, TEXT_ROPE(&it->tool->args));
		} else {
			PUT(b, "\"in_progress\",\"arguments\":\"\"");
		}
		PUT(b, ",\"call_id\":");
		put_tool_id(t, b, it->tool);
		PUT(b, ",\"name\":");
		put_str(b, it->tool->name, it->tool->name_len);
		if (it->tool->extra) {
			PUT(b, ",\"extra_content\":");
			put(b, it->tool->extra, it->tool->extra_len);
		}
		PUT(b, "}");
		return;
	case KIND_NONE:
		break;
	}
	SL_ASSERT(!"item of no kind");
}

/* The Responses "response" object. status: in_progress, completed,
 * incomplete or failed; error_message for failed. */
static void put_response(struct sl_transcoder *t, struct sl_buf *b, const char *status,
                         const char *error_code, const char *error_message, size_t error_len)
{
	PUT(b, "{\"id\":\"resp_");
	put_base_id(t, b);
	PUT(b, "\",\"object\":\"response\",\"created_at\":");
	put_int(b, t->created_s);
	PUT(b, ",\"status\":\"");
	put_cstr(b, status);
	PUT(b, "\",\"background\":false,\"error\":");
	if (error_message) {
		PUT(b, "{\"code\":\"");
		put_cstr(b, error_code);
		PUT(b, "\",\"message\":");
		put_str(b, error_message, error_len);
		PUT(b, "}");
	} else {
		PUT(b, "null");
	}
	PUT(b, ",\"incomplete_details\":");
	if (strcmp(status, "incomplete") == 0) {
		PUT(b, "{\"reason\":\"");
		put_cstr(b, effective_stop(t) == STOP_REFUSAL ? "content_filter" : "max_output_tokens");
		PUT(b, "\"}");
	} else {
		PUT(b, "null");
	}
	PUT(b, ",\"instructions\":null,\"max_output_tokens\":null,\"model\":");
	put_str(b, t->model, t->model_len);
	PUT(b, ",\"output\":[");
	bool in_progress = strcmp(status, "in_progress") == 0;
	for (const struct item *it = t->items; it && !in_progress; it = it->next) {
		if (it != t->items)
			PUT(b, ",");
		put_item(t, b, it, true);
	}
	PUT(b, "],\"parallel_tool_calls\":true,\"previous_response_id\":null,"
	       "\"reasoning\":{\"effort\":null,\"summary\":null},\"service_tier\":\"default\","
	       "\"store\":false,\"temperature\":null,\"text\":{\"format\":{\"type\":\"text\"}},"
	       "\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":null,\"truncation\":\"disabled\","
	       "\"usage\":");
	if (in_progress || error_message)
		PUT(b, "null");
	else
		put_usage_responses(t, b);
	PUT(b, ",\"user\":null,\"metadata\":{}}");
}

static void resp_start(struct sl_transcoder *t, struct sl_buf *out)
{
	RESP_EVENT(t, out, "response.created");
	PUT(out, ",\"response\":");
	put_response(t, out, "in_progress", NULL, NULL, 0);
	PUT(out, "}\n\n");
	RESP_EVENT(t, out, "response.in_progress");
	PUT(out, ",\"response\":");
	put_response(t, out, "in_progress", NULL, NULL, 0);
	PUT(out, "}\n\n");
}

/* The fields every item-scoped event carries after sequence_number. */
static void put_item_ref(struct sl_transcoder *t, struct sl_buf *b, const struct item *it)
{
	PUT(b, ",\"item_id\":");
	put_item_id(t, b, it);
	PUT(b, ",\"output_index\":");
	put_int(b, it->output_index);
}

static int resp_open(struct sl_transcoder *t, enum tc_kind kind, struct tool *tool, struct text data,
                     struct sl_buf *out)
{
	if (t->items_num >= TC_ITEMS_NUM_MAX)
		return tc_fail(t, "upstream stream has too many output items");
	struct item *it = sl_arena_alloc(t->arena, sizeof *it);
	if (!it)
		return tc_oom(t);
	*it = (struct item){ .kind = kind, .output_index = t->items_num++, .tool = tool };
	if (kind == KIND_REDACTED && !rope_append(t->arena, &it->opaque, data.s, data.len))
		return tc_oom(t);
	if (tool)
		tool->item = it;
	if (t->items_tail)
		t->items_tail->next = it;
	else
		t->items = it;
	t->items_tail = it;
	t->cur_item = it;

	RESP_EVENT(t, out, "response.output_item.added");
	PUT(out, ",\"output_index\":");
	put_int(out, it->output_index);
	PUT(out, ",\"item\":");
	put_item(t, out, it, false);
	PUT(out, "}\n\n");
	if (kind == KIND_TEXT) {
		RESP_EVENT(t, out, "response.content_part.added");
		put_item_ref(t, out, it);
		PUT(out, ",\"content_index\":0,\"part\":{\"type\":\"output_text\",\"annotations\":[],"
		         "\"logprobs\":[],\"text\":\"\"}}\n\n");
	} else if (kind == KIND_THINKING) {
		RESP_EVENT(t, out, "response.reasoning_summary_part.added");
		put_item_ref(t, out, it);
		PUT(out, ",\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":\"\"}}\n\n");
	}
	return 0;
}

/* resp_delta writes one delta of the open item. kind KIND_NONE: a
 * signature (no event: it becomes the item's encrypted_content). append:
 * the text is new (a pending tool's flush replays what args already holds). */
static int resp_delta(struct sl_transcoder *t, enum tc_kind kind, struct text x, bool append,
                      struct sl_buf *out)
{
	struct item *it = t->cur_item;
	SL_ASSERT(it);
	struct rope *r = kind == KIND_NONE ? &it->opaque : kind == KIND_TOOL ? &it->tool->args : &it->text;
	if (append && !rope_append(t->arena, r, x.s, x.len))
		return tc_oom(t);
	switch (kind) {
	case KIND_TEXT:
		RESP_EVENT(t, out, "response.output_text.delta");
		put_item_ref(t, out, it);
		PUT(out, ",\"content_index\":0,\"delta\":");
		put_text(out, x);
		PUT(out, ",\"logprobs\":[]}\n\n");
		break;
	case KIND_THINKING:
		RESP_EVENT(t, out, "response.reasoning_summary_text.delta");
		put_item_ref(t, out, it);
		PUT(out, ",\"summary_index\":0,\"delta\":");
		put_text(out, x);
		PUT(out, "}\n\n");
		break;
	case KIND_TOOL:
		RESP_EVENT(t, out, "response.function_call_arguments.delta");
		put_item_ref(t, out, it);
		PUT(out, ",\"delta\":");
		put_text(out, x);
		PUT(out, "}\n\n");
		break;
	default:
		break;
	}
	return 0;
}

static void resp_close(struct sl_transcoder *t, struct sl_buf *out)
{
	struct item *it = t->cur_item;
	SL_ASSERT(it && !it->done);
	it->done = true;
	if (it->kind == KIND_TEXT) {
		RESP_EVENT(t, out, "response.output_text.done");
		put_item_ref(t, out, it);
		PUT(out, ",\"content_index\":0,\"text\":");
		put_text(out, TEXT_ROPE(&it->text));
		PUT(out, ",\"logprobs\":[]}\n\n");
		RESP_EVENT(t, out, "response.content_part.done");
		put_item_ref(t, out, it);
		PUT(out, ",\"content_index\":0,\"part\":{\"type\":\"output_text\",\"annotations\":[],"
		         "\"logprobs\":[],\"text\":");
		put_text(out, TEXT_ROPE(&it->text));
		PUT(out, "}}\n\n");
	} else if (it->kind == KIND_THINKING) {
		RESP_EVENT(t, out, "response.reasoning_summary_text.done");
		put_item_ref(t, out, it);
		PUT(out, ",\"summary_index\":0,\"text\":");
		put_text(out, TEXT_ROPE(&it->text));
		PUT(out, "}\n\n");
		RESP_EVENT(t, out, "response.reasoning_summary_part.done");
		put_item_ref(t, out, it);
		PUT(out, ",\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":");
		put_text(out, TEXT_ROPE(&it->text));
		PUT(out, "}}\n\n");
	} else if (it->kind == KIND_TOOL) {
		RESP_EVENT(t, out, "response.function_call_arguments.done");
		put_item_ref(t, out, it);
		PUT(out, ",\"name\":");
		put_str(out, it->tool->name, it->tool->name_len);
		PUT(out, ",\"arguments\":");
		put_text(out, TEXT_ROPE(&it->tool->args));
		PUT(out, "}\n\n");
	}
	RESP_EVENT(t, out, "response.output_item.done");
	PUT(out, ",\"output_index\":");
	put_int(out, it->output_index);
	PUT(out, ",\"item\":");
	put_item(t, out, it, true);
	PUT(out, "}\n\n");
	t->cur_item = NULL;
}

static void resp_end(struct sl_transcoder *t, struct sl_buf *out)
{
	enum tc_stop s = effective_stop(t);
	if (s == STOP_MAX_TOKENS || s == STOP_REFUSAL) {
		RESP_EVENT(t, out, "response.incomplete");
		PUT(out, ",\"response\":");
		put_response(t, out, "incomplete", NULL, NULL, 0);
	} else {
		RESP_EVENT(t, out, "response.completed");
		PUT(out, ",\"response\":");
		put_response(t, out, "completed", NULL, NULL, 0);
	}
	PUT(out, "}\n\n");
}

/* --- chat / completions client writer --------------------------------------------- */

/* The prefix every chat/completions chunk shares, built once in the arena:
 * `data: {"id":...,"object":...,"created":...,"model":...,"choices":[`. */
static int chunk_prefix_build(struct sl_transcoder *t)
{
	size_t cap = 128 + t->base_id_len + sl_json_escaped_len(t->model, t->model_len);
	struct sl_buf b;
	sl_buf_init(&b, NULL, cap); /* an arena block: len_max == cap, so it never grows */
	if (!(b.p = sl_arena_alloc(t->arena, cap)))
		return tc_oom(t);
	b.cap = cap;
	bool chat = t->client == CLIENT_CHAT;
	PUT(&b, "data: {\"id\":\"");
	if (chat)
		PUT(&b, "chatcmpl-");
	else
		PUT(&b, "cmpl-");
	put_base_id(t, &b);
	if (chat)
		PUT(&b, "\",\"object\":\"chat.completion.chunk\",\"created\":");
	else
		PUT(&b, "\",\"object\":\"text_completion\",\"created\":");
	put_int(&b, t->created_s);
	PUT(&b, ",\"model\":");
	put_str(&b, t->model, t->model_len);
	PUT(&b, ",\"choices\":[");
	SL_ASSERT(!b.failed);
	t->chunk_prefix = b.p;
	t->chunk_prefix_len = b.len;
	return 0;
}

static inline void chunk_open(struct sl_transcoder *t, struct sl_buf *out)
{
	put(out, t->chunk_prefix, t->chunk_prefix_len);
}

#define CHAT_DELTA_END "},\"logprobs\":null,\"finish_reason\":null}]}\n\n"

/* A chat chunk with one delta member: "name":<x>. */
static void chat_delta(struct sl_transcoder *t, const char *member, struct text x, struct sl_buf *out)
{
	chunk_open(t, out);
	PUT(out, "{\"index\":0,\"delta\":{\"");
	put_cstr(out, member);
	PUT(out, "\":");
	put_text(out, x);
	PUT(out, CHAT_DELTA_END);
}

static void chat_tool(struct sl_transcoder *t, struct tool *x, struct text args, struct sl_buf *out)
{
	chunk_open(t, out);
	PUT(out, "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":");
	put_int(out, x->index);
	if (x->state == TOOL_NEW) {
		PUT(out, ",\"id\":");
		put_tool_id(t, out, x);
		PUT(out, ",\"type\":\"function\"");
		if (x->extra) {
			PUT(out, ",\"extra_content\":");
			put(out, x->extra, x->extra_len);
		}
		x->state = TOOL_OPEN;
	}
	PUT(out, ",\"function\":{");
	if (x->name_len && !x->name_sent) {
		PUT(out, "\"name\":");
		put_str(out, x->name, x->name_len);
		PUT(out, ",");
		x->name_sent = true;
	}
	PUT(out, "\"arguments\":");
	put_text(out, args);
	PUT(out, "}}]" CHAT_DELTA_END);
}

static void chat_finish(struct sl_transcoder *t, struct sl_buf *out)
{
	if (t->finish_sent)
		return;
	t->finish_sent = true;
	chunk_open(t, out);
	if (t->client == CLIENT_CHAT)
		PUT(out, "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"");
	else
		PUT(out, "{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"");
	put_cstr(out, stop_name_openai(effective_stop(t)));
	PUT(out, "\"}]}\n\n");
}

static void chat_end(struct sl_transcoder *t, struct sl_buf *out)
{
	chat_finish(t, out);
	if (t->wants_usage) {
		chunk_open(t, out);
		PUT(out, "],\"usage\":");
		put_usage_openai(t, out);
		PUT(out, "}\n\n");
	}
	PUT(out, "data: [DONE]\n\n");
}

/* --- block sequencer (Anthropic and Responses clients) ------------------------- */

static int blk_open(struct sl_transcoder *t, enum tc_kind kind, struct tool *tool, struct text data,
                    struct sl_buf *out)
{
	SL_ASSERT(t->cur == KIND_NONE);
	t->cur = kind;
	t->cur_tool = tool;
	if (tool)
		tool->state = TOOL_OPEN;
	if (t->client == CLIENT_ANTHROPIC) {
		anth_block_start(t, kind, tool, data, out);
		return 0;
	}
	return resp_open(t, kind, tool, data, out);
}

static int blk_delta(struct sl_transcoder *t, enum tc_kind kind, struct text x, bool append,
                     struct sl_buf *out)
{
	if (t->client == CLIENT_ANTHROPIC) {
		anth_block_delta(t, kind, x, out);
		return 0;
	}
	return resp_delta(t, kind, x, append, out);
}

static void seq_close(struct sl_transcoder *t, struct sl_buf *out)
{
	if (t->cur == KIND_NONE)
		return;
	if (t->cur_tool)
		t->cur_tool->state = TOOL_CLOSED;
	if (t->client == CLIENT_ANTHROPIC)
		anth_block_stop(t, out);
	else
		resp_close(t, out);
	t->cur = KIND_NONE;
	t->cur_tool = NULL;
}

static int seq_content(struct sl_transcoder *t, enum tc_kind kind, const char *s, size_t n,
                       struct sl_buf *out)
{
	if (!n)
		return 0;
	if (t->cur != kind) {
		seq_close(t, out);
		if (blk_open(t, kind, NULL, TEXT_FLAT(NULL, 0), out))
			return SL_ERROR;
	}
	return blk_delta(t, kind, TEXT_FLAT(s, n), true, out);
}

/* A signature belongs to the open thinking block; one that arrives when no
 * thinking block is open gets a thinking block of its own. */
static int seq_signature(struct sl_transcoder *t, const char *s, size_t n, struct sl_buf *out)
{
	if (!n)
		return 0;
	if (t->cur != KIND_THINKING) {
		seq_close(t, out);
		if (blk_open(t, KIND_THINKING, NULL, TEXT_FLAT(NULL, 0), out))
			return SL_ERROR;
	}
	return blk_delta(t, KIND_NONE, TEXT_FLAT(s, n), true, out);
}

static int seq_redacted(struct sl_transcoder *t, const char *s, size_t n, struct sl_buf *out)
{
	seq_close(t, out);
	if (blk_open(t, KIND_REDACTED, NULL, TEXT_FLAT(s, n), out))
		return SL_ERROR;
	seq_close(t, out);
	return 0;
}

/* seq_open_pending opens the first waiting tool (creation order) and writes
 * what it has buffered as one delta; it then streams live. */
static int seq_open_pending(struct sl_transcoder *t, struct tool *x, struct sl_buf *out)
{
	SL_ASSERT(x->state == TOOL_PENDING && t->pending_num > 0);
	t->pending_num--;
	seq_close(t, out);
	if (blk_open(t, KIND_TOOL, x, TEXT_FLAT(NULL, 0), out))
		return SL_ERROR;
	json_scan_rope(&x->scan, &x->args);
	if (x->args.len && blk_delta(t, KIND_TOOL, TEXT_ROPE(&x->args), false, out))
		return SL_ERROR;
	return 0;
}

static struct tool *first_pending(struct sl_transcoder *t)
{
	for (struct tool *x = t->tools; x && t->pending_num; x = x->next)
		if (x->state == TOOL_PENDING)
			return x;
	return NULL;
}

/* seq_advance opens waiting tools while the open block is done with: not a
 * tool, or a tool whose arguments are complete. A waiting tool without a
 * name stops the advance (a block's start must carry the name; order is
 * kept). */
static int seq_advance(struct sl_transcoder *t, struct sl_buf *out)
{
	while (t->pending_num && (t->cur != KIND_TOOL || t->cur_tool->scan.complete)) {
		struct tool *x = first_pending(t);
		SL_ASSERT(x);
		if (!x->name_len)
			return 0;
		if (seq_open_pending(t, x, out))
			return SL_ERROR;
	}
	return 0;
}

/* seq_tool routes a tool-call fragment. Blocks cannot interleave, so a tool
 * first seen while another tool's block is open waits, its fragments
 * buffered, until that block is done with: its arguments complete (the
 * usual sequential parallel calls then stream live), or the upstream
 * stops. Truly interleaved calls thus come out one whole block after the
 * other, in order of first appearance. */
static int seq_tool(struct sl_transcoder *t, struct tool *x, const char *args, size_t n,
                    struct sl_buf *out)
{
	switch (x->state) {
	case TOOL_OPEN:
		SL_ASSERT(t->cur_tool == x);
		if (n) {
			json_scan(&x->scan, args, n);
			if (blk_delta(t, KIND_TOOL, TEXT_FLAT(args, n), true, out))
				return SL_ERROR;
		}
		return seq_advance(t, out);
	case TOOL_CLOSED:
		if (!only_whitespace(args, n))
			return tc_fail(t, "upstream sent tool call arguments after the call ended");
		return 0;
	case TOOL_NEW:
		x->state = TOOL_PENDING;
		t->pending_num++;
		__attribute__((fallthrough));
	case TOOL_PENDING:
		if (n && !rope_append(t->arena, &x->args, args, n))
			return tc_oom(t);
		return seq_advance(t, out);
	}
	return 0;
}

/* seq_flush closes the open block and emits the waiting tools, each as a
 * whole block: the upstream stopped, so their arguments are complete. */
static int seq_flush(struct sl_transcoder *t, struct sl_buf *out)
{
	struct tool *x;
	while ((x = first_pending(t)))
		if (seq_open_pending(t, x, out))
			return SL_ERROR;
	seq_close(t, out);
	SL_ASSERT(t->pending_num == 0);
	return 0;
}

/* chat_thinking_end: the chat client's thinking block ended. Its text went
 * out live as reasoning_content; now the whole block follows in
 * thinking_blocks (LiteLLM's shape) with its signature, plus
 * reasoning_signature: what convert.c reads back on the next turn, so the
 * signed block reaches Anthropic again exactly (docs/convert.md). */
static void chat_thinking_end(struct sl_transcoder *t, struct sl_buf *out)
{
	if (!t->signature.len) {
		/* unsigned thinking cannot go back to Anthropic: nothing to keep */
		t->thinking = (struct rope){ 0 };
		return;
	}
	chunk_open(t, out);
	PUT(out, "{\"index\":0,\"delta\":{\"reasoning_signature\":");
	put_text(out, TEXT_ROPE(&t->signature));
	PUT(out, ",\"thinking_blocks\":[{\"type\":\"thinking\",\"thinking\":");
	put_text(out, TEXT_ROPE(&t->thinking));
	PUT(out, ",\"signature\":");
	put_text(out, TEXT_ROPE(&t->signature));
	PUT(out, "}]" CHAT_DELTA_END);
	t->thinking = (struct rope){ 0 };
	t->signature = (struct rope){ 0 };
}

/* --- normalised operations: upstream readers call these ------------------------- */

static int op_start(struct sl_transcoder *t, const char *id, size_t id_len, struct sl_buf *out)
{
	if (t->started)
		return 0;
	t->started = true;
	set_base_id(t, id, id_len);
	switch (t->client) {
	case CLIENT_ANTHROPIC:
		anth_message_start(t, out);
		return 0;
	case CLIENT_RESPONSES:
		resp_start(t, out);
		return 0;
	case CLIENT_CHAT:
		if (chunk_prefix_build(t))
			return SL_ERROR;
		chunk_open(t, out);
		PUT(out, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
		         "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
		return 0;
	case CLIENT_COMPLETIONS:
		return chunk_prefix_build(t);
	}
	return 0;
}

static inline int ensure_started(struct sl_transcoder *t, struct sl_buf *out)
{
	return t->started ? 0 : op_start(t, NULL, 0, out);
}

/* op_content: text (KIND_TEXT) or thinking text (KIND_THINKING). */
static int op_content(struct sl_transcoder *t, enum tc_kind kind, const char *s, size_t n,
                      struct sl_buf *out)
{
	if (!s || !n)
		return 0;
	if (ensure_started(t, out))
		return SL_ERROR;
	t->content_bytes += (int64_t)n;
	switch (t->client) {
	case CLIENT_ANTHROPIC:
	case CLIENT_RESPONSES:
		return seq_content(t, kind, s, n, out);
	case CLIENT_CHAT:
		if (kind == KIND_TEXT) {
			chat_thinking_end(t, out);
			chat_delta(t, "content", TEXT_FLAT(s, n), out);
			return 0;
		}
		if (!rope_append(t->arena, &t->thinking, s, n))
			return tc_oom(t);
		chat_delta(t, "reasoning_content", TEXT_FLAT(s, n), out);
		return 0;
	case CLIENT_COMPLETIONS:
		if (kind == KIND_TEXT) {
			chunk_open(t, out);
			PUT(out, "{\"text\":");
			put_str(out, s, n);
			PUT(out, ",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n\n");
		}
		return 0;
	}
	return 0;
}

static int op_signature(struct sl_transcoder *t, const char *s, size_t n, struct sl_buf *out)
{
	if (!s || !n)
		return 0;
	if (ensure_started(t, out))
		return SL_ERROR;
	switch (t->client) {
	case CLIENT_ANTHROPIC:
	case CLIENT_RESPONSES:
		return seq_signature(t, s, n, out);
	case CLIENT_CHAT:
		return rope_append(t->arena, &t->signature, s, n) ? 0 : tc_oom(t);
	case CLIENT_COMPLETIONS:
		return 0;
	}
	return 0;
}

static int op_redacted(struct sl_transcoder *t, const char *s, size_t n, struct sl_buf *out)
{
	if (!s)
		return 0;
	if (ensure_started(t, out))
		return SL_ERROR;
	switch (t->client) {
	case CLIENT_ANTHROPIC:
	case CLIENT_RESPONSES:
		return seq_redacted(t, s, n, out);
	case CLIENT_CHAT:
		chat_thinking_end(t, out);
		chunk_open(t, out);
		PUT(out, "{\"index\":0,\"delta\":{\"thinking_blocks\":[{\"type\":\"redacted_thinking\","
		         "\"data\":");
		put_str(out, s, n);
		PUT(out, "}]" CHAT_DELTA_END);
		return 0;
	case CLIENT_COMPLETIONS:
		return 0;
	}
	return 0;
}

/* op_tool: a fragment of tool call x (id and name already learnt). */
static int op_tool(struct sl_transcoder *t, struct tool *x, const char *args, size_t n,
                   struct sl_buf *out)
{
	if (ensure_started(t, out))
		return SL_ERROR;
	t->content_bytes += (int64_t)n;
	switch (t->client) {
	case CLIENT_ANTHROPIC:
	case CLIENT_RESPONSES:
		return seq_tool(t, x, args, n, out);
	case CLIENT_CHAT:
		chat_thinking_end(t, out);
		if (x->state == TOOL_NEW || n || (x->name_len && !x->name_sent))
			chat_tool(t, x, TEXT_FLAT(args, n), out);
		return 0;
	case CLIENT_COMPLETIONS:
		return 0;
	}
	return 0;
}

/* op_block_end: the upstream closed a content block (Anthropic). */
static int op_block_end(struct sl_transcoder *t, struct sl_buf *out)
{
	if (t->client == CLIENT_ANTHROPIC || t->client == CLIENT_RESPONSES)
		seq_close(t, out);
	else if (t->client == CLIENT_CHAT)
		chat_thinking_end(t, out);
	return 0;
}

static int op_stop(struct sl_transcoder *t, enum tc_stop stop, const char *seq, size_t seq_len,
                   struct sl_buf *out)
{
	if (ensure_started(t, out))
		return SL_ERROR;
	t->stop = stop;
	if (seq && seq_len && !t->stop_sequence) {
		if (!(t->stop_sequence = sl_arena_memdup(t->arena, seq, seq_len)))
			return tc_oom(t);
		t->stop_sequence_len = (uint32_t)seq_len;
	}
	switch (t->client) {
	case CLIENT_ANTHROPIC:
	case CLIENT_RESPONSES:
		return seq_flush(t, out);
	case CLIENT_CHAT:
	case CLIENT_COMPLETIONS:
		chat_thinking_end(t, out);
		chat_finish(t, out);
		return 0;
	}
	return 0;
}

/* op_done: the upstream's stream is complete; so is the client's. */
static int op_done(struct sl_transcoder *t, struct sl_buf *out)
{
	if (ensure_started(t, out))
		return SL_ERROR;
	switch (t->client) {
	case CLIENT_ANTHROPIC:
		if (seq_flush(t, out))
			return SL_ERROR;
		anth_message_end(t, out);
		break;
	case CLIENT_RESPONSES:
		if (seq_flush(t, out))
			return SL_ERROR;
		resp_end(t, out);
		break;
	case CLIENT_CHAT:
	case CLIENT_COMPLETIONS:
		chat_thinking_end(t, out);
		chat_end(t, out);
		break;
	}
	t->state = TC_DONE;
	return 0;
}

/* op_error writes the client's error event and ends its stream. type may be
 * NULL (a gateway-side failure). */
static void op_error(struct sl_transcoder *t, const char *type, size_t type_len, const char *msg,
                     size_t msg_len, struct sl_buf *out)
{
	if (!msg) {
		msg = "upstream error";
		msg_len = strlen(msg);
	}
	switch (t->client) {
	case CLIENT_ANTHROPIC:
		ANTH_EVENT(out, "error");
		PUT(out, ",\"error\":{\"type\":\"");
		put_cstr(out, anthropic_error_type(type, type_len));
		PUT(out, "\",\"message\":");
		put_str(out, msg, msg_len);
		PUT(out, "}}\n\n");
		break;
	case CLIENT_CHAT:
	case CLIENT_COMPLETIONS:
		PUT(out, "data: {\"error\":{\"message\":");
		put_str(out, msg, msg_len);
		PUT(out, ",\"type\":");
		if (type)
			put_str(out, type, type_len);
		else
			PUT(out, "\"upstream_error\"");
		PUT(out, ",\"param\":null,\"code\":null}}\n\n");
		break;
	case CLIENT_RESPONSES: {
		const char *code = "server_error";
		if (type && (memmem(type, type_len, "rate_limit", 10) || memmem(type, type_len, "quota", 5) ||
		             memmem(type, type_len, "overload", 8)))
			code = "rate_limit_exceeded";
		if (!t->started)
			set_base_id(t, NULL, 0);
		RESP_EVENT(t, out, "error");
		PUT(out, ",\"code\":");
		if (type)
			put_str(out, type, type_len);
		else
			PUT(out, "\"upstream_error\"");
		PUT(out, ",\"message\":");
		put_str(out, msg, msg_len);
		PUT(out, ",\"param\":null}\n\n");
		RESP_EVENT(t, out, "response.failed");
		PUT(out, ",\"response\":");
		put_response(t, out, "failed", code, msg, msg_len);
		PUT(out, "}\n\n");
		break;
	}
	}
	t->state = TC_ERRORED;
}

static void op_ping(struct sl_transcoder *t, struct sl_buf *out)
{
	if (t->client == CLIENT_ANTHROPIC)
		PUT(out, "event: ping\ndata: {\"type\":\"ping\"}\n\n");
	else if (t->client == CLIENT_CHAT || t->client == CLIENT_COMPLETIONS)
		PUT(out, ": ping\n\n"); /* an SSE comment: keeps idle timers quiet, SDKs skip it */
	/* Responses: nothing; its SDKs reject unknown event types less gracefully */
}

/* --- OpenAI upstream reader ---------------------------------------------------------- */

static bool str_is(const char *s, size_t n, const char *lit)
{
	return s && strlen(lit) == n && memcmp(s, lit, n) == 0;
}

static void read_openai_usage(struct sl_transcoder *t, const struct sl_json *u)
{
	int64_t prompt, completion, cached = 0, written = 0;
	bool has_prompt = sl_json_get_int(u, "prompt_tokens", &prompt);
	if (sl_json_get_int(u, "completion_tokens", &completion))
		t->usage.output_tokens = completion;
	const struct sl_json *d = sl_json_get(u, "prompt_tokens_details");
	if (d && d->type == SL_JSON_OBJECT) {
		if (!sl_json_get_int(d, "cached_tokens", &cached) || cached < 0)
			cached = 0;
		if (!sl_json_get_int(d, "cache_write_tokens", &written) || written < 0)
			written = 0;
	}
	if (has_prompt) {
		t->usage.cache_read_tokens = cached;
		t->usage.cache_write_tokens = written;
		t->usage.input_tokens = SL_MAX(prompt - cached - written, (int64_t)0);
	}
}

/* Reasoning and its opaque state as OpenAI-format hosts send it: text in
 * reasoning_content (DeepSeek, vLLM) or reasoning (OpenRouter, Groq);
 * signatures and redacted blocks in thinking_blocks (LiteLLM's shape) or
 * reasoning_details (OpenRouter's), or a bare reasoning_signature. The text
 * of those arrays is used only when no plain text field came with them. */
static int read_openai_reasoning(struct sl_transcoder *t, const struct sl_json *d, struct sl_buf *out)
{
	uint32_t n = 0;
	const char *s = sl_json_get_str(d, "reasoning_content", &n);
	if (!s)
		s = sl_json_get_str(d, "reasoning", &n);
	bool had_text = s != NULL;
	if (op_content(t, KIND_THINKING, s, n, out))
		return SL_ERROR;
	static const char *const arrays[] = { "thinking_blocks", "reasoning_details" };
	for (size_t k = 0; k < SL_ARRAY_LEN(arrays); k++) {
		const struct sl_json *arr = sl_json_get(d, arrays[k]);
		if (!arr || arr->type != SL_JSON_ARRAY)
			continue;
		for (uint32_t i = 0; i < arr->len; i++) {
			const struct sl_json *b = arr->u.items[i];
			uint32_t tl = 0, dl = 0;
			const char *type = sl_json_get_str(b, "type", &tl);
			const char *data = sl_json_get_str(b, "data", &dl);
			if (str_is(type, tl, "redacted_thinking") || str_is(type, tl, "reasoning.encrypted")) {
				if (op_redacted(t, data, dl, out))
					return SL_ERROR;
				continue;
			}
			if (!had_text) {
				const char *x = sl_json_get_str(b, "thinking", &n);
				if (!x)
					x = sl_json_get_str(b, "text", &n);
				if (!x)
					x = sl_json_get_str(b, "summary", &n);
				if (op_content(t, KIND_THINKING, x, n, out))
					return SL_ERROR;
			}
			s = sl_json_get_str(b, "signature", &n);
			if (op_signature(t, s, n, out))
				return SL_ERROR;
		}
	}
	s = sl_json_get_str(d, "reasoning_signature", &n);
	return op_signature(t, s, n, out);
}

static int read_openai_tool_call(struct sl_transcoder *t, const struct sl_json *tc, uint32_t position,
                                 struct sl_buf *out)
{
	if (!tc || tc->type != SL_JSON_OBJECT)
		return 0;
	int64_t key;
	if (!sl_json_get_int(tc, "index", &key))
		key = position;
	uint32_t id_len = 0, name_len = 0, args_len = 0;
	const char *id = sl_json_get_str(tc, "id", &id_len);
	const struct sl_json *fn = sl_json_get(tc, "function");
	const char *name = sl_json_get_str(fn, "name", &name_len);
	const char *args = sl_json_get_str(fn, "arguments", &args_len);
	struct tool *x = tool_by_key(t, key);
	if (x && id && id_len && x->id_len && !(x->id_len == id_len && !memcmp(x->id, id, id_len)))
		x = tool_by_id(t, id, id_len); /* a new call reusing an index, or a known one by id */
	if (!x && !(x = tool_new(t, key)))
		return SL_ERROR;
	if (tool_learn(t, x, id, id_len, name, name_len, sl_json_get(tc, "extra_content")))
		return SL_ERROR;
	return op_tool(t, x, args, args ? args_len : 0, out);
}

/* The legacy single function_call delta: one tool, key -1. */
static int read_openai_function_call(struct sl_transcoder *t, const struct sl_json *fc,
                                     struct sl_buf *out)
{
	uint32_t name_len = 0, args_len = 0;
	const char *name = sl_json_get_str(fc, "name", &name_len);
	const char *args = sl_json_get_str(fc, "arguments", &args_len);
	struct tool *x = tool_by_key(t, -1);
	if (!x && !(x = tool_new(t, -1)))
		return SL_ERROR;
	if (tool_learn(t, x, NULL, 0, name, name_len, NULL))
		return SL_ERROR;
	return op_tool(t, x, args, args ? args_len : 0, out);
}

static int read_openai_delta(struct sl_transcoder *t, const struct sl_json *d, struct sl_buf *out)
{
	if (read_openai_reasoning(t, d, out))
		return SL_ERROR;
	uint32_t n = 0;
	const char *s = sl_json_get_str(d, "content", &n);
	if (op_content(t, KIND_TEXT, s, n, out))
		return SL_ERROR;
	s = sl_json_get_str(d, "refusal", &n);
	if (s && n)
		t->saw_refusal = true;
	if (op_content(t, KIND_TEXT, s, n, out))
		return SL_ERROR;
	const struct sl_json *calls = sl_json_get(d, "tool_calls");
	if (calls && calls->type == SL_JSON_ARRAY)
		for (uint32_t i = 0; i < calls->len; i++)
			if (read_openai_tool_call(t, calls->u.items[i], i, out))
				return SL_ERROR;
	const struct sl_json *fc = sl_json_get(d, "function_call");
	if (fc && fc->type == SL_JSON_OBJECT && read_openai_function_call(t, fc, out))
		return SL_ERROR;
	return 0;
}

static int read_openai(struct sl_transcoder *t, const char *event, size_t event_len,
                       const struct sl_json *v, struct sl_buf *out)
{
	const struct sl_json *err = sl_json_get(v, "error");
	if ((err && err->type != SL_JSON_NULL) || str_is(event, event_len, "error")) {
		uint32_t tl = 0, ml = 0;
		const char *type = NULL, *msg = NULL;
		if (err && err->type == SL_JSON_STRING) {
			msg = err->u.str;
			ml = err->len;
		} else {
			const struct sl_json *e = err && err->type == SL_JSON_OBJECT ? err : v;
			msg = sl_json_get_str(e, "message", &ml);
			type = sl_json_get_str(e, "type", &tl);
			if (!type)
				type = sl_json_get_str(e, "code", &tl);
		}
		op_error(t, type, tl, msg, ml, out);
		return 0;
	}
	/* usage first: a host that reports it on every chunk gives message_start
	 * its real input tokens */
	const struct sl_json *usage = sl_json_get(v, "usage");
	if (usage && usage->type == SL_JSON_OBJECT)
		read_openai_usage(t, usage);
	uint32_t id_len = 0;
	const char *id = sl_json_get_str(v, "id", &id_len);
	if (op_start(t, id, id_len, out))
		return SL_ERROR;
	const struct sl_json *choices = sl_json_get(v, "choices");
	if (!choices || choices->type != SL_JSON_ARRAY)
		return 0;
	for (uint32_t i = 0; i < choices->len; i++) {
		const struct sl_json *c = choices->u.items[i];
		if (!c || c->type != SL_JSON_OBJECT)
			continue;
		int64_t index;
		if (sl_json_get_int(c, "index", &index) ? index != 0 : i != 0)
			continue; /* n > 1: only the first choice is transcoded */
		const struct sl_json *d = sl_json_get(c, "delta");
		if (d && d->type == SL_JSON_OBJECT && read_openai_delta(t, d, out))
			return SL_ERROR;
		uint32_t n = 0;
		const char *text = sl_json_get_str(c, "text", &n); /* legacy text_completion */
		if (op_content(t, KIND_TEXT, text, n, out))
			return SL_ERROR;
		const char *fr = sl_json_get_str(c, "finish_reason", &n);
		if (fr && op_stop(t, stop_from_openai(fr, n), NULL, 0, out))
			return SL_ERROR;
	}
	return 0;
}

/* --- Anthropic upstream reader ------------------------------------------------------ */

static void read_anthropic_usage(struct sl_transcoder *t, const struct sl_json *u)
{
	if (!u || u->type != SL_JSON_OBJECT)
		return;
	int64_t v;
	if (sl_json_get_int(u, "input_tokens", &v))
		t->usage.input_tokens = v;
	if (sl_json_get_int(u, "output_tokens", &v))
		t->usage.output_tokens = v;
	if (sl_json_get_int(u, "cache_read_input_tokens", &v))
		t->usage.cache_read_tokens = v;
	if (sl_json_get_int(u, "cache_creation_input_tokens", &v))
		t->usage.cache_write_tokens = v;
}

static int read_anthropic_block_start(struct sl_transcoder *t, const struct sl_json *v,
                                      struct sl_buf *out)
{
	int64_t index = 0;
	(void)sl_json_get_int(v, "index", &index);
	const struct sl_json *cb = sl_json_get(v, "content_block");
	uint32_t tl = 0, n = 0;
	const char *type = sl_json_get_str(cb, "type", &tl);
	const char *s;
	t->upstream_block_ignored = false;
	if (str_is(type, tl, "text")) {
		s = sl_json_get_str(cb, "text", &n);
		return op_content(t, KIND_TEXT, s, n, out);
	}
	if (str_is(type, tl, "thinking")) {
		s = sl_json_get_str(cb, "thinking", &n);
		if (op_content(t, KIND_THINKING, s, n, out))
			return SL_ERROR;
		s = sl_json_get_str(cb, "signature", &n);
		return op_signature(t, s, n, out);
	}
	if (str_is(type, tl, "redacted_thinking")) {
		s = sl_json_get_str(cb, "data", &n);
		return op_redacted(t, s ? s : "", s ? n : 0, out);
	}
	if (str_is(type, tl, "tool_use")) {
		uint32_t id_len = 0, name_len = 0;
		const char *id = sl_json_get_str(cb, "id", &id_len);
		const char *name = sl_json_get_str(cb, "name", &name_len);
		struct tool *x = tool_new(t, index);
		if (!x || tool_learn(t, x, id, id_len, name, name_len, sl_json_get(cb, "extra_content")))
			return SL_ERROR;
		/* input is {} when streamed; a host that sends it whole gets it
		 * forwarded as one fragment */
		const struct sl_json *input = sl_json_get(cb, "input");
		size_t args_len = 0;
		char *args = NULL;
		if (input && input->type == SL_JSON_OBJECT && input->len) {
			if (!(args = sl_json_serialize(&t->scratch, input, &args_len)))
				return tc_fail(t, "upstream stream event too large");
		}
		return op_tool(t, x, args, args_len, out);
	}
	/* server tools and their results run at the provider: not the client's */
	t->upstream_block_ignored = true;
	return 0;
}

static int read_anthropic_block_delta(struct sl_transcoder *t, const struct sl_json *v,
                                      struct sl_buf *out)
{
	if (t->upstream_block_ignored)
		return 0;
	const struct sl_json *d = sl_json_get(v, "delta");
	uint32_t tl = 0, n = 0;
	const char *type = sl_json_get_str(d, "type", &tl);
	const char *s;
	if (str_is(type, tl, "text_delta")) {
		s = sl_json_get_str(d, "text", &n);
		return op_content(t, KIND_TEXT, s, n, out);
	}
	if (str_is(type, tl, "thinking_delta")) {
		s = sl_json_get_str(d, "thinking", &n);
		return op_content(t, KIND_THINKING, s, n, out);
	}
	if (str_is(type, tl, "signature_delta")) {
		s = sl_json_get_str(d, "signature", &n);
		return op_signature(t, s, n, out);
	}
	if (str_is(type, tl, "input_json_delta")) {
		int64_t index = 0;
		(void)sl_json_get_int(v, "index", &index);
		s = sl_json_get_str(d, "partial_json", &n);
		struct tool *x = tool_by_key(t, index);
		if (!x && !(x = tool_new(t, index)))
			return SL_ERROR;
		return op_tool(t, x, s, s ? n : 0, out);
	}
	return 0; /* citations_delta and future kinds */
}

static int read_anthropic(struct sl_transcoder *t, const char *event, size_t event_len,
                          const struct sl_json *v, struct sl_buf *out)
{
	uint32_t tl = 0, n = 0;
	const char *type = sl_json_get_str(v, "type", &tl);
	if (!type) {
		type = event;
		tl = (uint32_t)event_len;
	}
	if (str_is(type, tl, "content_block_delta"))
		return read_anthropic_block_delta(t, v, out);
	if (str_is(type, tl, "content_block_start"))
		return read_anthropic_block_start(t, v, out);
	if (str_is(type, tl, "content_block_stop")) {
		if (t->upstream_block_ignored) {
			t->upstream_block_ignored = false;
			return 0;
		}
		return op_block_end(t, out);
	}
	if (str_is(type, tl, "message_start")) {
		const struct sl_json *m = sl_json_get(v, "message");
		read_anthropic_usage(t, sl_json_get(m, "usage"));
		const char *id = sl_json_get_str(m, "id", &n);
		return op_start(t, id, n, out);
	}
	if (str_is(type, tl, "message_delta")) {
		read_anthropic_usage(t, sl_json_get(v, "usage"));
		const struct sl_json *d = sl_json_get(v, "delta");
		uint32_t sl = 0;
		const char *reason = sl_json_get_str(d, "stop_reason", &n);
		const char *seq = sl_json_get_str(d, "stop_sequence", &sl);
		if (!reason)
			return 0;
		return op_stop(t, stop_from_anthropic(reason, n), seq, sl, out);
	}
	if (str_is(type, tl, "message_stop"))
		return op_done(t, out);
	if (str_is(type, tl, "ping")) {
		op_ping(t, out);
		return 0;
	}
	if (str_is(type, tl, "error")) {
		const struct sl_json *e = sl_json_get(v, "error");
		uint32_t ml = 0;
		const char *et = sl_json_get_str(e, "type", &tl);
		const char *msg = sl_json_get_str(e, "message", &ml);
		op_error(t, et, tl, msg, ml, out);
		return 0;
	}
	return 0; /* unknown event types are skipped, as the SDKs do */
}

/* --- SSE parser --------------------------------------------------------------------- */

/* tc_event handles one complete upstream event: data[0..len) without the
 * final newline. */
static int tc_event(struct sl_transcoder *t, const char *event, size_t event_len, const char *data,
                    size_t len, struct sl_buf *out)
{
	if (t->upstream == SL_FORMAT_OPENAI && len == 6 && memcmp(data, "[DONE]", 6) == 0)
		return op_done(t, out);
	struct sl_json *v;
	struct sl_json_error err;
	const struct sl_json_limits limits = { .depth_max = TC_JSON_DEPTH_MAX,
		                               .text_len_max = TC_EVENT_BYTES_MAX };
	if (sl_json_parse(&t->scratch, data, len, &limits, &v, &err) != 0)
		return tc_fail(t, t->scratch.failed ? "upstream stream event too large"
		                                    : "upstream sent an event that is not valid JSON");
	if (v->type != SL_JSON_OBJECT)
		return tc_fail(t, "upstream sent an event that is not a JSON object");
	if (t->upstream == SL_FORMAT_OPENAI)
		return read_openai(t, event, event_len, v, out);
	return read_anthropic(t, event, event_len, v, out);
}

static int sse_dispatch(struct sl_transcoder *t, struct sl_buf *out)
{
	struct sse *s = &t->sse;
	if (s->data.len == 0) {
		s->event_len = 0;
		return 0;
	}
	const char *name = "message";
	size_t name_len = 7;
	if (s->event_len == UINT32_MAX) {
		name = "";
		name_len = 0;
	} else if (s->event_len) {
		name = s->event;
		name_len = s->event_len;
	}
	int rc = tc_event(t, name, name_len, s->data.p, s->data.len - 1, out);
	s->data.len = 0;
	s->event_len = 0;
	sl_arena_release(&t->scratch);
	if (out->failed && t->state != TC_FAILED)
		return tc_fail(t, "client output buffer exhausted");
	return rc;
}

/* sse_line interprets one line (without its end-of-line). */
static int sse_line(struct sl_transcoder *t, const char *p, size_t n, struct sl_buf *out)
{
	struct sse *s = &t->sse;
	if (n == 0)
		return sse_dispatch(t, out);
	if (p[0] == ':')
		return 0; /* comment */
	const char *colon = memchr(p, ':', n);
	size_t name_len = colon ? (size_t)(colon - p) : n;
	const char *value = colon ? colon + 1 : p + n;
	size_t value_len = (size_t)(p + n - value);
	if (value_len && *value == ' ') {
		value++;
		value_len--;
	}
	if (name_len == 4 && memcmp(p, "data", 4) == 0) {
		if (s->data.len + value_len + 1 > TC_EVENT_BYTES_MAX)
			return tc_fail(t, "upstream stream event over 1 MiB");
		if (!linebuf_append(t->arena, &s->data, value, value_len) ||
		    !linebuf_append(t->arena, &s->data, "\n", 1))
			return tc_oom(t);
	} else if (name_len == 5 && memcmp(p, "event", 5) == 0) {
		if (value_len < TC_EVENT_NAME_MAX) {
			memcpy(s->event, value, value_len);
			s->event_len = (uint32_t)value_len;
		} else {
			s->event_len = UINT32_MAX;
		}
	}
	/* id, retry and unknown fields: nothing a transcoder needs */
	return 0;
}

/* sse_lines splits p[0..n) into lines (LF, CRLF or CR), joining a line cut
 * by the previous feed. Stops once the stream is no longer streaming. */
static int sse_lines(struct sl_transcoder *t, const char *p, size_t n, struct sl_buf *out)
{
	struct sse *s = &t->sse;
	const char *end = p + n;
	while (p < end && t->state == TC_STREAMING) {
		if (s->after_cr) {
			s->after_cr = false;
			if (*p == '\n') {
				p++;
				continue;
			}
		}
		size_t rest = (size_t)(end - p);
		const char *lf = memchr(p, '\n', rest);
		const char *eol = memchr(p, '\r', lf ? (size_t)(lf - p) : rest);
		if (!eol)
			eol = lf;
		if (!eol) {
			if (s->line.len + rest > TC_EVENT_BYTES_MAX)
				return tc_fail(t, "upstream stream event over 1 MiB");
			if (!linebuf_append(t->arena, &s->line, p, rest))
				return tc_oom(t);
			break;
		}
		const char *line = p;
		size_t line_len = (size_t)(eol - p);
		if (s->line.len) {
			if (s->line.len + line_len > TC_EVENT_BYTES_MAX)
				return tc_fail(t, "upstream stream event over 1 MiB");
			if (!linebuf_append(t->arena, &s->line, p, line_len))
				return tc_oom(t);
			line = s->line.p;
			line_len = s->line.len;
		}
		int rc = sse_line(t, line, line_len, out);
		s->line.len = 0;
		if (rc)
			return rc;
		p = eol + 1;
		if (*eol == '\r') {
			if (p == end)
				s->after_cr = true;
			else if (*p == '\n')
				p++;
		}
	}
	return 0;
}

static const char bom[3] = { '\xef', '\xbb', '\xbf' };

/* sse_feed strips a UTF-8 BOM at the very start of the stream (it may
 * arrive a byte at a time), then splits lines. */
static int sse_feed(struct sl_transcoder *t, const char *p, size_t n, struct sl_buf *out)
{
	struct sse *s = &t->sse;
	size_t i = 0;
	while (!s->bom_done && i < n) {
		if (p[i] == bom[s->bom_matched]) {
			i++;
			if (++s->bom_matched == sizeof bom) {
				s->bom_done = true;
				s->bom_matched = 0;
			}
			continue;
		}
		s->bom_done = true;
		uint8_t matched = s->bom_matched;
		s->bom_matched = 0;
		if (matched && sse_lines(t, bom, matched, out))
			return SL_ERROR;
	}
	return sse_lines(t, p + i, n - i, out);
}

/* sse_end handles the end of a complete upstream body: a last line or
 * event without its terminating newline is still taken (lenient: the spec
 * would drop it, but a host that omits the final blank line meant it). */
static int sse_end(struct sl_transcoder *t, struct sl_buf *out)
{
	struct sse *s = &t->sse;
	if (!s->bom_done && s->bom_matched) {
		uint8_t matched = s->bom_matched;
		s->bom_done = true;
		s->bom_matched = 0;
		if (sse_lines(t, bom, matched, out))
			return SL_ERROR;
	}
	if (t->state == TC_STREAMING && s->line.len) {
		int rc = sse_line(t, s->line.p, s->line.len, out);
		s->line.len = 0;
		if (rc)
			return rc;
	}
	if (t->state == TC_STREAMING && s->data.len)
		return sse_dispatch(t, out);
	return 0;
}

/* --- public API ---------------------------------------------------------------------- */

struct sl_transcoder *sl_transcoder_create(struct sl_arena *a, struct sl_bufpool *pool,
                                           const struct sl_convert_ctx *ctx)
{
	enum tc_client client;
	switch (ctx->route) {
	case SL_ROUTE_MESSAGES:
		client = CLIENT_ANTHROPIC;
		break;
	case SL_ROUTE_CHAT_COMPLETIONS:
		client = CLIENT_CHAT;
		break;
	case SL_ROUTE_RESPONSES:
		client = CLIENT_RESPONSES;
		break;
	case SL_ROUTE_COMPLETIONS:
		client = CLIENT_COMPLETIONS;
		break;
	default:
		return NULL;
	}
	struct sl_transcoder *t = sl_arena_alloc(a, sizeof *t);
	if (!t)
		return NULL;
	*t = (struct sl_transcoder){
		.magic = TC_MAGIC,
		.state = TC_STREAMING,
		.client = client,
		.upstream = ctx->upstream_format,
		.arena = a,
		.created_s = ctx->created_s,
		.estimated_input_tokens = SL_MAX(ctx->estimated_input_tokens, (int64_t)0),
		.wants_usage = ctx->client_wants_usage,
		.usage = { -1, -1, -1, -1 },
	};
	/* copies: the ctx need not outlive the stream */
	const char *model = ctx->client_model ? ctx->client_model : ctx->upstream_model;
	t->model_len = model ? strlen(model) : 0;
	t->model = sl_arena_memdup(a, model ? model : "", t->model_len);
	if (ctx->request_id)
		t->request_id = sl_arena_memdup(a, ctx->request_id, strlen(ctx->request_id));
	if (!t->model || (ctx->request_id && !t->request_id))
		return NULL;
	sl_arena_init(&t->scratch, pool, TC_SCRATCH_BYTES_MAX);
	return t;
}

int sl_transcoder_feed(struct sl_transcoder *t, const char *data, size_t len, struct sl_buf *out)
{
	SL_ASSERT(t->magic == TC_MAGIC);
	SL_ASSERT(t->state != TC_FINISHED);
	if (t->state == TC_FAILED)
		return SL_ERROR;
	if (t->state != TC_STREAMING)
		return 0; /* after the end or an error: the rest is of no use */
	int rc = sse_feed(t, data, len, out);
	/* the scratch is empty again: between calls a transcoder holds nothing
	 * outside the stream's arena */
	SL_ASSERT(t->scratch.blocks == NULL);
	return rc;
}

int sl_transcoder_finish(struct sl_transcoder *t, bool upstream_ok, const char *error_message,
                         struct sl_buf *out)
{
	SL_ASSERT(t->magic == TC_MAGIC);
	SL_ASSERT(t->state != TC_FINISHED);
	if (t->state == TC_STREAMING && upstream_ok)
		(void)sse_end(t, out); /* on failure the state says so */
	if (t->state == TC_STREAMING && upstream_ok) {
		if (t->stop != STOP_NONE) {
			/* a host that ends without [DONE] / message_stop */
			if (op_done(t, out))
				t->state = TC_FAILED;
		} else {
			t->state = TC_FAILED;
			t->fail_message = "upstream stream ended before the response was complete";
		}
	}
	if (t->state == TC_STREAMING || t->state == TC_FAILED) {
		/* the caller's words, then why the stream failed when it knows */
		const char *msg = error_message ? error_message : t->fail_message;
		if (!msg)
			msg = "upstream stream interrupted";
		if (error_message && t->fail_message) {
			size_t n1 = strlen(error_message), n2 = strlen(t->fail_message);
			char *both = sl_arena_alloc(t->arena, n1 + n2 + 3);
			if (both) {
				memcpy(both, error_message, n1);
				memcpy(both + n1, ": ", 2);
				memcpy(both + n1 + 2, t->fail_message, n2 + 1);
				msg = both;
			}
		}
		op_error(t, NULL, 0, msg, strlen(msg), out);
	}
	t->state = TC_FINISHED;
	sl_arena_release(&t->scratch);
	return out->failed ? SL_ERROR : 0;
}

void sl_transcoder_usage(const struct sl_transcoder *t, struct sl_usage *out)
{
	SL_ASSERT(t->magic == TC_MAGIC);
	*out = t->usage;
}
