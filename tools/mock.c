/*
 * mock.c - sluice-mock: a fake LLM provider speaking the OpenAI and Anthropic
 * wire formats, with per-request fault injection, for sluice's integration
 * tests and benchmarks (docs/TEAM-CONTRACT.md, "Mock upstream"; tools/mock.md).
 *
 * Shape:
 *   - N worker threads, each with its own SO_REUSEPORT listener and epoll
 *     instance. Accepted sockets are non-blocking, edge-triggered and owned by
 *     the thread that accepted them: no shared locks on the request path
 *     (a thread's own stats lock, contended only by /mock/stats; the shared
 *     x-request-id table of x-mock-fault only for requests carrying it).
 *   - A connection has one input buffer (pipelined requests are answered
 *     strictly in order), one output buffer, at most one response in progress
 *     (a delayed head or a stream) and at most one pending timer. Timers live
 *     in a per-thread binary heap whose earliest deadline is epoll_wait's
 *     timeout, so delays never block the thread.
 *   - The JSON body is scanned, not parsed: only the top-level keys a
 *     response depends on are read.
 *   - It must never be the bottleneck of a proxy benchmark: a non-stream
 *     answer is one read, one writev; a stream without delays is one write.
 *   - TLS (--tls-cert/--tls-key, BoringSSL): a connection accepted on a TLS
 *     listener has an SSL object (c->ssl) on its non-blocking socket; the
 *     same edge-triggered loop drives SSL_do_handshake, SSL_read and
 *     SSL_write. Plain connections (c->ssl == NULL) take the old paths.
 */
#include "sluice/common.h"
#include "sluice/http1.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#define MOCK_THREADS_MAX 256
#define HEAD_BYTES_MAX 65536
#define TARGET_BYTES_MAX 16384
#define HEADERS_NUM_MAX 128
#define BODY_BYTES_MAX (64u << 20)
/* head + body + chunked framing overhead of one request */
#define IN_BYTES_MAX (BODY_BYTES_MAX + (4u << 20))
#define IN_BYTES_INITIAL 16384
#define IN_BYTES_SHRINK 262144
#define OUT_BYTES_INITIAL 16384
#define OUT_BYTES_SHRINK 1048576
#define OUT_PENDING_MAX 262144 /* a stream waits for EPOLLOUT beyond this */
#define STATS_BODY_BYTES 65536
#define MODEL_BYTES_MAX 256
#define TOOL_NAME_BYTES_MAX 128
#define TOOL_NAMES_BYTES 512 /* the names of the first TOOLS_MAX tools */
#define TOOLS_MAX 16
#define CALLS_MAX 64 /* x-mock-parallel-tools */
#define STOP_RAW_BYTES 64
#define THINK_STEPS 5 /* thinking deltas: "Let me think about this." */
#define SIGNATURE_BYTES 72 /* a thinking signature: 96 base64 characters */
#define CACHE_TOKENS_MAX 1000000000
#define MSG_BYTES_MAX 320
#define TOKENS_DEFAULT 8
#define TOKENS_MAX 10000000
#define DELAY_MS_MAX 3600000
#define RESPONSE_BYTES_MAX (64u << 20)
#define LINGER_MS 2000
#define EMBED_DIMS_DEFAULT 8
#define EMBED_DIMS_MAX 8192
#define EMBED_INPUTS_MAX 2048
#define EMBED_FLOATS_MAX (1u << 20)
#define EMBED_TABLE_LEN 64
#define EVENTS_MAX 256
#define SNI_BYTES_MAX 255
#define ACCEPTS_PER_WAKE 64
#define FAULT_SPECS_MAX 32     /* SPECs of one request's x-mock-fault headers */
#define FAULT_IDS_MAX 4096     /* x-request-ids remembered for times=N (ring) */
#define FAULT_ID_BUCKETS 8192
#define FAULT_ID_BYTES 128     /* a longer id: its first bytes, length and hash */
#define RATE_ONE 1000000u      /* rate=P: P% as parts per million */
#define KEYS_MAX 64            /* requests_by_key: distinct keys per thread (and listed) */
#define KEY_BYTES_MAX 256      /* a longer key counts as its first 256 bytes */

_Static_assert(HEAD_BYTES_MAX < IN_BYTES_INITIAL * 8, "a head fits after a few doublings");
_Static_assert((EMBED_TABLE_LEN & (EMBED_TABLE_LEN - 1)) == 0, "table index is a mask");
_Static_assert((FAULT_ID_BUCKETS & (FAULT_ID_BUCKETS - 1)) == 0, "bucket index is a mask");
_Static_assert(TOOL_NAME_BYTES_MAX <= TOOL_NAMES_BYTES, "the first tool's name always fits");

/* --- small growable byte buffer ---------------------------------------------- */

struct buf {
	char *ptr;
	size_t len;
	size_t cap;
};

static void die_oom(void)
{
	fputs("sluice-mock: out of memory\n", stderr);
	abort();
}

static void buf_grow(struct buf *b, size_t extra)
{
	size_t cap = b->cap ? b->cap : 1024;
	while (cap < b->len + extra)
		cap *= 2;
	char *p = realloc(b->ptr, cap);
	if (!p)
		die_oom();
	b->ptr = p;
	b->cap = cap;
}

static inline void put(struct buf *b, const void *s, size_t n)
{
	if (SL_UNLIKELY(b->len + n > b->cap))
		buf_grow(b, n);
	if (n)
		memcpy(b->ptr + b->len, s, n);
	b->len += n;
}

#define PUT_LIT(b, s) put((b), "" s, sizeof(s) - 1)

static inline void put_ch(struct buf *b, char ch)
{
	if (SL_UNLIKELY(b->len + 1 > b->cap))
		buf_grow(b, 1);
	b->ptr[b->len++] = ch;
}

static void put_cstr(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static void put_u64(struct buf *b, uint64_t v)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[19 - n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(b, tmp + 20 - n, n);
}

static void put_hex(struct buf *b, uint64_t v)
{
	static const char digits[] = "0123456789abcdef";
	char tmp[16];
	int n = 0;
	do {
		tmp[15 - n++] = digits[v & 15];
		v >>= 4;
	} while (v);
	put(b, tmp + 16 - n, n);
}

/* utf8_seq_len returns the length of the valid UTF-8 sequence at s (which
 * starts with a byte >= 0x80), or 0 when it is not valid UTF-8. */
static size_t utf8_seq_len(const unsigned char *s, size_t len)
{
	unsigned char c = s[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else
		return 0;
	if (len < n || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

/* put_json_escaped appends s[0..len) as the inside of a JSON string: quotes,
 * backslashes and control bytes escaped, invalid UTF-8 replaced by U+FFFD, so
 * any byte string (a request body prefix, a header value) yields valid JSON. */
static void put_json_escaped(struct buf *b, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		size_t j = i;
		while (j < len && u[j] >= 0x20 && u[j] < 0x80 && u[j] != '"' && u[j] != '\\')
			j++;
		put(b, s + i, j - i);
		if (j == len)
			break;
		i = j;
		unsigned char ch = u[i];
		if (ch == '"' || ch == '\\') {
			char esc[2] = { '\\', (char)ch };
			put(b, esc, 2);
			i++;
		} else if (ch < 0x20) {
			if (ch == '\n')
				PUT_LIT(b, "\\n");
			else if (ch == '\r')
				PUT_LIT(b, "\\r");
			else if (ch == '\t')
				PUT_LIT(b, "\\t");
			else {
				char esc[6] = { '\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15] };
				put(b, esc, 6);
			}
			i++;
		} else {
			size_t n = utf8_seq_len(u + i, len - i);
			if (n) {
				put(b, s + i, n);
				i += n;
			} else {
				PUT_LIT(b, "\\ufffd");
				i++;
			}
		}
	}
}

/* --- a minimal JSON scanner ---------------------------------------------------- */

static const char *js_ws(const char *p, const char *e)
{
	while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* js_str_end: p is just after an opening quote; returns the closing quote. */
static const char *js_str_end(const char *p, const char *e)
{
	while (p < e) {
		const char *q = memchr(p, '"', e - p);
		if (!q)
			return NULL;
		size_t bs = 0;
		while (q - bs > p && q[-1 - (ptrdiff_t)bs] == '\\')
			bs++;
		if (!(bs & 1))
			return q;
		p = q + 1;
	}
	return NULL;
}

/* js_skip returns the end of the value starting at p, or NULL. Structure is
 * followed (strings, nesting), scalars are not validated. */
static const char *js_skip(const char *p, const char *e)
{
	if (p >= e)
		return NULL;
	if (*p == '"') {
		const char *q = js_str_end(p + 1, e);
		return q ? q + 1 : NULL;
	}
	if (*p == '{' || *p == '[') {
		int depth = 0;
		while (p < e) {
			char ch = *p;
			if (ch == '"') {
				const char *q = js_str_end(p + 1, e);
				if (!q)
					return NULL;
				p = q + 1;
				continue;
			}
			if (ch == '{' || ch == '[')
				depth++;
			else if ((ch == '}' || ch == ']') && --depth == 0)
				return p + 1;
			p++;
		}
		return NULL;
	}
	const char *s = p;
	while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' &&
	       *p != '\n' && *p != '\r')
		p++;
	return p > s ? p : NULL;
}

struct js_obj {
	const char *p;
	const char *e;
	bool first;
};

static bool js_obj_open(struct js_obj *o, const char *p, const char *e)
{
	p = js_ws(p, e);
	if (p >= e || *p != '{')
		return false;
	o->p = p + 1;
	o->e = e;
	o->first = true;
	return true;
}

/* js_obj_next yields the next member: 1 with key (inside the quotes, raw)
 * and val (the raw value text), 0 at the closing brace, -1 on bad input. */
static int js_obj_next(struct js_obj *o, struct sl_str *key, struct sl_str *val)
{
	const char *e = o->e;
	const char *p = js_ws(o->p, e);
	if (p >= e)
		return -1;
	if (*p == '}') {
		o->p = p + 1;
		return 0;
	}
	if (!o->first) {
		if (*p != ',')
			return -1;
		p = js_ws(p + 1, e);
	}
	o->first = false;
	if (p >= e || *p != '"')
		return -1;
	const char *ke = js_str_end(p + 1, e);
	if (!ke)
		return -1;
	key->ptr = p + 1;
	key->len = ke - (p + 1);
	p = js_ws(ke + 1, e);
	if (p >= e || *p != ':')
		return -1;
	p = js_ws(p + 1, e);
	const char *ve = js_skip(p, e);
	if (!ve)
		return -1;
	val->ptr = p;
	val->len = ve - p;
	o->p = ve;
	return 1;
}

static bool str_is(struct sl_str s, const char *lit, size_t lit_len)
{
	return s.len == lit_len && memcmp(s.ptr, lit, lit_len) == 0;
}

#define STR_IS(s, lit) str_is((s), "" lit, sizeof(lit) - 1)

/* js_array_count counts the elements of the array at p ('['). */
static uint64_t js_array_count(const char *p, const char *e)
{
	p = js_ws(p + 1, e);
	if (p < e && *p == ']')
		return 0;
	uint64_t n = 0;
	while (p < e) {
		const char *q = js_skip(p, e);
		if (!q)
			break;
		n++;
		q = js_ws(q, e);
		if (q >= e || *q != ',')
			break;
		p = js_ws(q + 1, e);
	}
	return n;
}

/* js_uint reads a non-negative integer value (a fraction is ignored). */
static bool js_uint(struct sl_str v, uint64_t max, uint64_t *out)
{
	uint64_t n = 0;
	size_t i = 0;
	for (; i < v.len && v.ptr[i] >= '0' && v.ptr[i] <= '9'; i++) {
		n = n * 10 + (uint64_t)(v.ptr[i] - '0');
		if (n > max)
			n = max;
	}
	if (!i)
		return false;
	*out = n;
	return true;
}

/* js_str_cut returns how many bytes of the raw (still escaped) string s to
 * keep so that at most max bytes remain without splitting an escape sequence
 * or a UTF-8 character: the kept prefix is still valid inside JSON quotes. */
static size_t js_str_cut(const char *s, size_t len, size_t max)
{
	if (len <= max)
		return len;
	size_t i = 0;
	while (i < len) {
		size_t step = 1;
		if (s[i] == '\\')
			step = (i + 1 < len && s[i + 1] == 'u') ? 6 : 2;
		if (i + step > max)
			break;
		i += step;
	}
	while (i > 0 && ((unsigned char)s[i] & 0xc0) == 0x80)
		i--;
	return i;
}

/* --- requests, responses and connections ----------------------------------------- */

enum endpoint {
	EP_NONE = 0,
	EP_CHAT,
	EP_COMPLETIONS,
	EP_EMBEDDINGS,
	EP_IMAGES,
	EP_MODELS,
	EP_MODEL,
	EP_MESSAGES,
	EP_COUNT_TOKENS,
	EP_STATS,
	EP_RESET,
};

enum wire_format { FMT_OPENAI = 0, FMT_ANTHROPIC };

enum conn_state {
	ST_IDLE = 0,        /* reading and answering requests */
	ST_WAIT_FIRST_BYTE, /* x-mock-first-byte-delay-ms timer pending */
	ST_STREAM,          /* a stream in progress (timer or EPOLLOUT pending) */
	ST_CLOSING,         /* flush the output, then close (abrupt) or linger */
	ST_LINGER,          /* write side shut, draining input until EOF or timer */
	ST_DEAD,            /* closed; freed at the end of the loop turn */
};

enum stream_phase { PH_PRE = 0, PH_CONTENT, PH_POST };

/* x-mock-fault KINDs */
enum fault_kind { FK_NONE = 0, FK_STATUS, FK_DELAY, FK_RESET, FK_CLOSE, FK_MIDSTREAM };


/* What to answer for one request: everything the response needs is copied
 * here, so the request bytes are consumed before a delayed answer. */
struct job {
	uint8_t ep;
	uint8_t fmt;
	uint8_t phase;
	bool keep_alive;
	bool http10;
	bool chunked; /* stream framing: chunked (1.1) or close-delimited (1.0) */
	bool stream;
	bool include_usage;
	bool tool;
	bool capped;
	bool embed_base64;
	bool malformed;
	bool json_bad;
	bool head_only; /* HEAD: the head of the answer, no body */
	bool delay_elapsed;
	bool thinking;     /* a thinking block / reasoning_content comes first */
	bool think_body;   /* the body asks for thinking / reasoning */
	uint8_t think_hdr; /* x-mock-thinking: 0 absent, 1 off, 2 on */
	bool text_before;  /* x-mock-text-before-tools */
	bool tools_seq;    /* x-mock-tool-order: sequential */
	bool has_text;     /* the answer has text content */
	bool rich;         /* thinking, parallel calls or text + calls: the general generator */
	bool stop_hit;     /* a stop sequence ended the text */
	bool model_set;    /* the body has a "model" */
	bool midstream;    /* x-mock-fault midstream: cut the answer, then RST */
	uint8_t fault;     /* x-mock-fault reset/close/midstream applies (enum fault_kind) */
	uint8_t ntools;    /* tool names collected in tool_names */
	uint8_t stop_idx;  /* 1 + the first word index a stop sequence matches; 0: none */
	uint8_t stop_len;
	uint16_t parallel; /* x-mock-parallel-tools */
	uint16_t ncalls;   /* tool calls of the answer */
	uint16_t err_status;  /* route error answered instead of the endpoint */
	uint16_t mock_status; /* x-mock-status >= 400 */
	const char *err_type;
	const char *allow; /* Allow header of a 405 */
	int64_t retry_after_s;    /* -1: none */
	int64_t disconnect_after; /* -1: none */
	uint64_t first_byte_delay_ms;
	uint64_t token_delay_ms;
	uint64_t tokens;
	uint64_t max_tokens; /* UINT64_MAX: none */
	uint64_t response_bytes;
	uint64_t out_tokens; /* content deltas of the answer */
	uint64_t pad_words;  /* extra words for x-mock-response-bytes */
	uint64_t emitted;    /* content deltas sent so far (streams) */
	uint64_t steps;      /* content deltas of a stream (all kinds) */
	uint64_t usage_out;  /* output tokens reported */
	uint64_t cache_read;
	uint64_t cache_write;
	uint64_t cache_write_1h; /* of cache_write: x-mock-cache-write-1h */
	uint64_t input_tokens;
	uint64_t embed_inputs;
	uint64_t images;        /* images/generations "n" (1) */
	bool images_b64;        /* response_format "b64_json" */
	uint64_t embed_dims;
	uint64_t id;
	uint64_t created;
	uint16_t model_len;
	uint16_t msg_len;
	char model[MODEL_BYTES_MAX];       /* raw JSON string content */
	char msg[MSG_BYTES_MAX];           /* unescaped error message */
	char stop_raw[STOP_RAW_BYTES];     /* the matching stop sequence, raw */
	uint16_t tool_off[TOOLS_MAX + 1];  /* name i: tool_names[tool_off[i]..tool_off[i+1]) */
	char tool_names[TOOL_NAMES_BYTES]; /* raw JSON string contents */
};

struct worker;

struct conn {
	int fd;
	uint8_t state;
	bool tls_done;  /* TLS: the handshake completed */
	bool tls_hello; /* TLS: a ClientHello (or garbage) arrived: an unfinished handshake failed */
	bool can_read; /* EPOLLIN seen and the socket not drained yet */
	bool peer_fin; /* EPOLLRDHUP/HUP seen: read until EOF, a short read is not "drained" */
	bool abrupt;   /* ST_CLOSING: close without lingering */
	bool want_out; /* a stream paused until the output drains */
	bool sent_continue;
	bool chunk_active;
	bool rst;       /* x-mock-fault reset/midstream: close with RST (SO_LINGER 0) */
	bool no_notify; /* x-mock-fault close: FIN without a TLS close_notify */
	int32_t heap_idx; /* -1: no timer */
	int64_t rst_until_us; /* rst: wait for unsent bytes to leave until then */
	int64_t deadline_us;
	struct worker *w;
	struct conn *prev, *next;
	char *in;
	size_t in_off, in_len, in_cap;
	struct sl_chunked chunked; /* chunked request body being decoded in place */
	size_t body_raw;           /* chunked bytes consumed after the head */
	size_t body_len;           /* decoded body bytes */
	struct buf out;
	size_t out_off;
	SSL *ssl; /* NULL: a plain connection */
	struct job job;
};

/* The last non-/mock request seen by one thread (stats pick the newest). */
struct last_request {
	uint64_t seq; /* 0: none */
	uint32_t head_len;
	uint32_t body_copied;
	uint64_t body_len;
	char head[HEAD_BYTES_MAX];
	char body[STATS_BODY_BYTES];
};

struct thread_stats {
	_Alignas(64) atomic_ullong accepted;
	atomic_llong open;
	atomic_ullong requests;
	atomic_ullong tls_full;    /* full handshakes completed */
	atomic_ullong tls_resumed; /* handshakes that resumed a session */
	atomic_ullong tls_failed;  /* handshakes that failed */
	atomic_ullong faults;      /* x-mock-fault faults applied */
	_Alignas(64) atomic_int lock;
	uint32_t nkeys; /* requests_by_key (under lock) */
	struct key_count {
		uint64_t count;
		uint32_t len;
		char key[KEY_BYTES_MAX];
	} keys[KEYS_MAX];
	uint64_t sni_seq; /* 0: none (under lock, like last) */
	uint32_t sni_len;
	char sni[SNI_BYTES_MAX];
	struct last_request last;
};

struct worker {
	int idx;
	int epfd;
	int lfd;
	int tls_lfd; /* --tls-listen: the TLS listener, or -1 */
	int stop_fd; /* eventfd: main asks the worker to exit */
	pthread_t thread;
	struct thread_stats *st;
	struct conn *conns; /* live connections */
	struct conn *dead;  /* closed this loop turn */
	struct conn **heap;
	uint32_t heap_len, heap_cap;
	int64_t now_us;
	uint64_t id_seq;
	uint64_t rng; /* x-mock-fault rate=P */
	struct buf hb; /* response head */
	struct buf sb; /* response body */
	struct buf eb; /* one SSE event */
	struct last_request *lr_copy;
	struct key_count *keys_copy; /* KEYS_MAX: requests_by_key merged for /mock/stats */
	struct sl_http_header hdrs[HEADERS_NUM_MAX];
	struct sl_http_header stats_hdrs[HEADERS_NUM_MAX];
};

static const struct sl_http_limits g_limits = {
	.head_len_max = HEAD_BYTES_MAX,
	.target_len_max = TARGET_BYTES_MAX,
	.num_headers_max = HEADERS_NUM_MAX,
};

static int g_nthreads = 1;
static struct worker *g_workers;
static struct thread_stats *g_stats;
static atomic_ullong g_seq;
static SSL_CTX *g_ssl_ctx;  /* --tls-cert/--tls-key */
static bool g_listen_tls;   /* --listen itself is TLS (no --tls-listen) */
static atomic_ullong g_sni_seq;

struct word {
	const char *s;
	size_t len;
};
#define WORD(s) { s, sizeof(s) - 1 }
static const struct word g_words[16] = {
	WORD("Hello"), WORD(" from"), WORD(" the"),   WORD(" mock"), WORD(" provider"), WORD("."),
	WORD(" The"),  WORD(" quick"), WORD(" brown"), WORD(" fox"),  WORD(" jumps"),    WORD(" over"),
	WORD(" a"),    WORD(" lazy"), WORD(" dog"),   WORD("."),
};
static const struct word g_word_hello_again = WORD(" Hello");

static inline const struct word *word_at(uint64_t i)
{
	if (i && (i & 15) == 0)
		return &g_word_hello_again;
	return &g_words[i & 15];
}

static char g_emb_str[EMBED_TABLE_LEN][24];
static uint8_t g_emb_len[EMBED_TABLE_LEN];
static float g_emb_val[EMBED_TABLE_LEN];

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void spin_lock(atomic_int *l)
{
	while (atomic_exchange_explicit(l, 1, memory_order_acquire))
		while (atomic_load_explicit(l, memory_order_relaxed))
			;
}

static void spin_unlock(atomic_int *l)
{
	atomic_store_explicit(l, 0, memory_order_release);
}

/* --- timers: a binary min-heap of connections per worker ----------------------------- */

static void heap_place(struct worker *w, uint32_t i, struct conn *c)
{
	w->heap[i] = c;
	c->heap_idx = (int32_t)i;
}

static void heap_up(struct worker *w, uint32_t i)
{
	struct conn *c = w->heap[i];
	while (i > 0) {
		uint32_t parent = (i - 1) / 2;
		if (w->heap[parent]->deadline_us <= c->deadline_us)
			break;
		heap_place(w, i, w->heap[parent]);
		i = parent;
	}
	heap_place(w, i, c);
}

static void heap_down(struct worker *w, uint32_t i)
{
	struct conn *c = w->heap[i];
	uint32_t n = w->heap_len;
	for (;;) {
		uint32_t l = 2 * i + 1;
		if (l >= n)
			break;
		uint32_t m = l;
		if (l + 1 < n && w->heap[l + 1]->deadline_us < w->heap[l]->deadline_us)
			m = l + 1;
		if (w->heap[m]->deadline_us >= c->deadline_us)
			break;
		heap_place(w, i, w->heap[m]);
		i = m;
	}
	heap_place(w, i, c);
}

static void timer_cancel(struct conn *c)
{
	if (c->heap_idx < 0)
		return;
	struct worker *w = c->w;
	uint32_t i = (uint32_t)c->heap_idx;
	SL_ASSERT(i < w->heap_len && w->heap[i] == c);
	c->heap_idx = -1;
	struct conn *last = w->heap[--w->heap_len];
	if (last == c)
		return;
	heap_place(w, i, last);
	heap_up(w, i);
	heap_down(w, (uint32_t)last->heap_idx);
}

static void timer_set(struct conn *c, uint64_t delay_ms)
{
	struct worker *w = c->w;
	timer_cancel(c);
	if (w->heap_len == w->heap_cap) {
		uint32_t cap = w->heap_cap ? w->heap_cap * 2 : 256;
		struct conn **v = realloc(w->heap, cap * sizeof(*v));
		if (!v)
			die_oom();
		w->heap = v;
		w->heap_cap = cap;
	}
	c->deadline_us = w->now_us + (int64_t)delay_ms * 1000;
	heap_place(w, w->heap_len++, c);
	heap_up(w, (uint32_t)c->heap_idx);
}

/* --- connection lifecycle ------------------------------------------------------------ */

static void conn_kill(struct conn *c)
{
	if (c->state == ST_DEAD)
		return;
	struct worker *w = c->w;
	if (SL_UNLIKELY(c->ssl) && !c->tls_done && c->tls_hello)
		atomic_fetch_add_explicit(&w->st->tls_failed, 1, memory_order_relaxed);
	if (SL_UNLIKELY(c->rst)) {
		/* x-mock-fault reset/midstream: close with RST, not FIN */
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };
		setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	close(c->fd);
	timer_cancel(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	atomic_fetch_sub_explicit(&w->st->open, 1, memory_order_relaxed);
	c->state = ST_DEAD;
	c->prev = NULL;
	c->next = w->dead;
	w->dead = c;
}

static void conn_free(struct conn *c)
{
	if (c->ssl)
		SSL_free(c->ssl);
	free(c->in);
	free(c->out.ptr);
	free(c);
}

/* --- TLS ----------------------------------------------------------------------------- */

/* tls_write writes one record's worth of the pending output (partial writes
 * are on). Returns 1 on progress, 0 when the socket is full (or the session
 * needs to read first: the next event retries), -EIO when broken. A retry
 * after WANT_WRITE passes the same bytes again (out only grows until it is
 * flushed; moving the buffer is allowed). */
static int tls_write(struct conn *c)
{
	size_t len = SL_MIN(c->out.len - c->out_off, (size_t)1 << 30);
	ERR_clear_error();
	int n = SSL_write(c->ssl, c->out.ptr + c->out_off, (int)len);
	if (n > 0) {
		c->out_off += (size_t)n;
		return 1;
	}
	int e = SSL_get_error(c->ssl, n);
	if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
		return 0;
	return -EIO;
}

static void tls_record_sni(struct conn *c)
{
	struct thread_stats *st = c->w->st;
	const char *sni = SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name);
	size_t len = sni ? strnlen(sni, SNI_BYTES_MAX) : 0;
	uint64_t seq = atomic_fetch_add_explicit(&g_sni_seq, 1, memory_order_relaxed) + 1;
	spin_lock(&st->lock);
	st->sni_seq = seq;
	st->sni_len = (uint32_t)len;
	if (len)
		memcpy(st->sni, sni, len);
	spin_unlock(&st->lock);
}

/* tls_handshake drives the server handshake. Returns true once it is done;
 * false while it waits for the socket (or when it failed: the connection is
 * dead). */
static bool tls_handshake(struct conn *c)
{
	ERR_clear_error();
	int r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		struct thread_stats *st = c->w->st;
		c->tls_done = true;
		c->can_read = true; /* the request may be decrypted and waiting in SSL already */
		if (SSL_session_reused(c->ssl))
			atomic_fetch_add_explicit(&st->tls_resumed, 1, memory_order_relaxed);
		else
			atomic_fetch_add_explicit(&st->tls_full, 1, memory_order_relaxed);
		tls_record_sni(c);
		return true;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ) {
		c->can_read = false; /* the socket is drained: wait for EPOLLIN */
		return false;
	}
	if (e == SSL_ERROR_WANT_WRITE)
		return false; /* wait for EPOLLOUT */
	/* a protocol error (garbage, an alert from a client that rejected our
	 * certificate) fails the handshake; EOF or a reset only after a
	 * ClientHello (conn_kill counts it) */
	if (e == SSL_ERROR_SSL)
		c->tls_hello = true;
	conn_kill(c);
	return false;
}

/* on_client_hello: a ClientHello was parsed (any handshake that ends now
 * without completing counts as failed). */
static enum ssl_select_cert_result_t on_client_hello(const SSL_CLIENT_HELLO *hello)
{
	struct conn *c = SSL_get_app_data(hello->ssl);
	if (c)
		c->tls_hello = true;
	return ssl_select_cert_success;
}

/* conn_flush writes the pending output. Returns 0 (all written or the socket
 * is full: see out_off) or a negative errno when the connection is broken. */
static int conn_flush(struct conn *c)
{
	while (c->out_off < c->out.len) {
		if (SL_UNLIKELY(c->ssl)) {
			int r = tls_write(c);
			if (r > 0)
				continue;
			return r;
		}
		ssize_t n = write(c->fd, c->out.ptr + c->out_off, c->out.len - c->out_off);
		if (n > 0) {
			c->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 0;
		return n < 0 ? -errno : -EIO;
	}
	c->out.len = 0;
	c->out_off = 0;
	if (SL_UNLIKELY(c->out.cap > OUT_BYTES_SHRINK)) {
		char *p = realloc(c->out.ptr, OUT_BYTES_INITIAL);
		if (p) {
			c->out.ptr = p;
			c->out.cap = OUT_BYTES_INITIAL;
		}
	}
	return 0;
}

static inline bool conn_out_pending(const struct conn *c)
{
	return c->out_off < c->out.len;
}

/* conn_send queues head + body, writing them at once with writev when nothing
 * else is queued and no pipelined request waits (then order is unaffected). */
static void conn_send(struct conn *c, const char *head, size_t head_len, const char *body,
                      size_t body_len)
{
	if (!conn_out_pending(c) && c->in_off == c->in_len && SL_LIKELY(!c->ssl)) {
		struct iovec iov[2] = { { (void *)head, head_len }, { (void *)body, body_len } };
		ssize_t n;
		do
			n = writev(c->fd, iov, body_len ? 2 : 1);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			n = 0; /* EAGAIN, or an error the next flush reports */
		size_t done = (size_t)n;
		if (done >= head_len + body_len)
			return;
		if (done < head_len) {
			put(&c->out, head + done, head_len - done);
			done = 0;
		} else
			done -= head_len;
		put(&c->out, body + done, body_len - done);
		return;
	}
	put(&c->out, head, head_len);
	put(&c->out, body, body_len);
}

/* conn_need makes room for a request that needs need bytes from in_off on.
 * Returns false when that exceeds IN_BYTES_MAX. */
static bool conn_need(struct conn *c, size_t need)
{
	if (need <= c->in_cap - c->in_off)
		return true;
	if (c->in_off) {
		memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
		c->in_len -= c->in_off;
		c->in_off = 0;
		if (need <= c->in_cap)
			return true;
	}
	if (need > IN_BYTES_MAX)
		return false;
	size_t cap = c->in_cap * 2;
	if (cap < need)
		cap = need;
	if (cap > IN_BYTES_MAX)
		cap = IN_BYTES_MAX;
	char *p = realloc(c->in, cap);
	if (!p)
		die_oom();
	c->in = p;
	c->in_cap = cap;
	return true;
}

/* --- response heads ------------------------------------------------------------------- */

static const char CT_JSON[] = "application/json";
static const char CT_SSE[] = "text/event-stream";

/* build_head formats the response head into h. content_length < 0: a stream
 * (chunked, or close-delimited for HTTP/1.0). */
static void build_head(struct conn *c, struct buf *h, unsigned status, const char *ctype,
                       int64_t content_length)
{
	const struct job *j = &c->job;
	h->len = 0;
	PUT_LIT(h, "HTTP/1.1 ");
	put_u64(h, status);
	put_ch(h, ' ');
	put_cstr(h, sl_http_status_reason(status));
	PUT_LIT(h, "\r\nContent-Type: ");
	put_cstr(h, ctype);
	if (content_length >= 0) {
		PUT_LIT(h, "\r\nContent-Length: ");
		put_u64(h, (uint64_t)content_length);
	} else {
		if (j->chunked)
			PUT_LIT(h, "\r\nTransfer-Encoding: chunked");
		PUT_LIT(h, "\r\nCache-Control: no-cache");
	}
	/* the providers' own request ids, as the real APIs send them */
	if (j->fmt == FMT_ANTHROPIC)
		PUT_LIT(h, "\r\nrequest-id: req_");
	else
		PUT_LIT(h, "\r\nx-request-id: req_");
	put_hex(h, j->id);
	if (j->retry_after_s >= 0 && status >= 400) {
		PUT_LIT(h, "\r\nRetry-After: ");
		put_u64(h, (uint64_t)j->retry_after_s);
	}
	if (j->allow) {
		PUT_LIT(h, "\r\nAllow: ");
		put_cstr(h, j->allow);
	}
	if (!j->keep_alive)
		PUT_LIT(h, "\r\nConnection: close");
	else if (j->http10)
		PUT_LIT(h, "\r\nConnection: keep-alive");
	PUT_LIT(h, "\r\n\r\n");
}

/* send_body answers with a complete body. cut: x-mock-disconnect-after on a
 * non-stream answer: the head and half the body, then close. */
static void send_body(struct conn *c, unsigned status, const char *ctype, const struct buf *body,
                      bool cut)
{
	struct buf *h = &c->w->hb;
	cut |= c->job.midstream;
	build_head(c, h, status, ctype, (int64_t)body->len);
	size_t send_len = c->job.head_only ? 0 : cut ? body->len / 2 : body->len;
	conn_send(c, h->ptr, h->len, body->ptr, send_len);
	if (cut) {
		c->state = ST_CLOSING;
		c->abrupt = true;
	} else if (!c->job.keep_alive) {
		c->state = ST_CLOSING;
	}
}

/* --- errors ------------------------------------------------------------------------------- */

static void error_defaults(enum wire_format fmt, unsigned status, const char **type,
                           const char **code, const char **msg)
{
	*code = NULL;
	if (fmt == FMT_ANTHROPIC) {
		switch (status) {
		case 400: *type = "invalid_request_error"; *msg = "Invalid request."; break;
		case 401: *type = "authentication_error"; *msg = "invalid x-api-key"; break;
		case 402: *type = "billing_error"; *msg = "Your credit balance is too low."; break;
		case 403: *type = "permission_error"; *msg = "Your API key does not have permission to use the specified resource."; break;
		case 404: *type = "not_found_error"; *msg = "Not found."; break;
		case 413: *type = "request_too_large"; *msg = "Request exceeds the maximum allowed number of bytes."; break;
		case 429: *type = "rate_limit_error"; *msg = "This request would exceed the rate limit for your organization. (mock)"; break;
		case 500: *type = "api_error"; *msg = "Internal server error"; break;
		case 504: *type = "timeout_error"; *msg = "Request timed out."; break;
		case 529: *type = "overloaded_error"; *msg = "Overloaded"; break;
		default:
			*type = status < 500 ? "invalid_request_error" : "api_error";
			*msg = status < 500 ? "Invalid request." : "Internal server error";
		}
		return;
	}
	switch (status) {
	case 401:
		*type = "invalid_request_error";
		*code = "invalid_api_key";
		*msg = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.";
		break;
	case 403:
		*type = "invalid_request_error";
		*code = "unsupported_country_region_territory";
		*msg = "Country, region, or territory not supported";
		break;
	case 404:
		*type = "invalid_request_error";
		*code = "model_not_found";
		*msg = "The model does not exist or you do not have access to it.";
		break;
	case 429:
		*type = "requests";
		*code = "rate_limit_exceeded";
		*msg = "Rate limit reached for requests (mock). Please try again later.";
		break;
	case 500:
		*type = "server_error";
		*msg = "The server had an error while processing your request. Sorry about that!";
		break;
	case 503:
		*type = "server_error";
		*msg = "The engine is currently overloaded, please try again later.";
		break;
	default:
		*type = status < 500 ? "invalid_request_error" : "server_error";
		*msg = status < 500 ? "Invalid request." : "The server had an error while processing your request.";
	}
}

/* respond_error answers status with an error body in the provider's shape.
 * type/msg NULL: the provider's usual ones for status. */
static void respond_error(struct conn *c, unsigned status, const char *type, const char *msg,
                          size_t msg_len)
{
	struct job *j = &c->job;
	struct buf *b = &c->w->sb;
	const char *dtype, *dcode, *dmsg;
	error_defaults((enum wire_format)j->fmt, status, &dtype, &dcode, &dmsg);
	if (type)
		dcode = NULL;
	else
		type = dtype;
	if (!msg) {
		msg = dmsg;
		msg_len = strlen(dmsg);
	}
	b->len = 0;
	if (j->fmt == FMT_ANTHROPIC) {
		PUT_LIT(b, "{\"type\":\"error\",\"error\":{\"type\":\"");
		put_cstr(b, type);
		PUT_LIT(b, "\",\"message\":\"");
		put_json_escaped(b, msg, msg_len);
		PUT_LIT(b, "\"}}");
	} else {
		PUT_LIT(b, "{\"error\":{\"message\":\"");
		put_json_escaped(b, msg, msg_len);
		PUT_LIT(b, "\",\"type\":\"");
		put_cstr(b, type);
		PUT_LIT(b, "\",\"param\":null,\"code\":");
		if (dcode) {
			put_ch(b, '"');
			put_cstr(b, dcode);
			put_ch(b, '"');
		} else
			PUT_LIT(b, "null");
		PUT_LIT(b, "}}");
	}
	send_body(c, status, CT_JSON, b, false);
}

/* --- response bodies ------------------------------------------------------------------- */

static void put_words(struct buf *b, uint64_t from, uint64_t to)
{
	for (uint64_t i = from; i < to; i++) {
		const struct word *wd = word_at(i);
		put(b, wd->s, wd->len);
	}
}

static const struct word g_think_words[THINK_STEPS] = {
	WORD("Let"), WORD(" me"), WORD(" think"), WORD(" about"), WORD(" this."),
};

static void put_think_words(struct buf *b, uint64_t from, uint64_t to)
{
	for (uint64_t i = from; i < to; i++)
		put(b, g_think_words[i].s, g_think_words[i].len);
}

/* The arguments of tool call k are {"text":"<total words from word k on>"}:
 * call 0 has the answer's words, every further call's start one word later,
 * so no two calls have the same fragment at the same position. from..to:
 * the fragment (one word each; the first opens the object, the last closes
 * it unless the answer was length-capped). escaped: inside a JSON string. */
static void put_call_args(struct buf *b, const struct job *j, uint64_t k, uint64_t from,
                          uint64_t to, uint64_t total, bool escaped)
{
	if (from == 0) {
		if (escaped)
			PUT_LIT(b, "{\\\"text\\\":\\\"");
		else
			PUT_LIT(b, "{\"text\":\"");
	}
	put_words(b, k + from, k + to);
	if (to == total && !j->capped) {
		if (escaped)
			PUT_LIT(b, "\\\"}");
		else
			PUT_LIT(b, "\"}");
	}
}

/* Tool call k calls tool k of the request (cycling when it has fewer). */
static void put_tool_name(struct buf *b, const struct job *j, uint64_t k)
{
	size_t i = (size_t)(k % j->ntools);
	put(b, j->tool_names + j->tool_off[i], (size_t)(j->tool_off[i + 1] - j->tool_off[i]));
}

/* The id of tool call k after its prefix: the answer's id, "_k" for k > 0. */
static void put_call_id(struct buf *b, const struct job *j, uint64_t k)
{
	put_hex(b, j->id);
	if (k) {
		put_ch(b, '_');
		put_u64(b, k);
	}
}

static void put_b64(struct buf *b, const unsigned char *s, size_t len);

/* A thinking block's signature: base64 of SIGNATURE_BYTES derived from the
 * answer's id (opaque, like the real ones; different for every answer). */
static void put_signature(struct buf *b, const struct job *j)
{
	unsigned char raw[SIGNATURE_BYTES];
	uint64_t x = j->id ^ 0x5369676e61747572ull;
	for (size_t i = 0; i < sizeof(raw); i += 8) {
		uint64_t z = (x += 0x9e3779b97f4a7c15ull); /* splitmix64 */
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		memcpy(raw + i, &z, 8);
	}
	put_b64(b, raw, sizeof(raw));
}

static const char *finish_reason(const struct job *j)
{
	if (j->fmt == FMT_ANTHROPIC)
		return j->capped ? "max_tokens" : j->stop_hit ? "stop_sequence" : j->tool ? "tool_use" : "end_turn";
	return j->capped ? "length" : j->tool ? "tool_calls" : "stop";
}

/* usage_of returns the output tokens of an answer whose text and tool calls
 * have n words each: one per delta (thinking deltas included). */
static inline uint64_t usage_of(const struct job *j, uint64_t n)
{
	return (j->thinking ? THINK_STEPS : 0) + (j->has_text ? n : 0) + j->ncalls * n;
}

static void put_openai_usage(struct buf *b, const struct job *j, uint64_t out_tokens)
{
	/* cached tokens are part of the prompt tokens (chat only) */
	uint64_t prompt = j->input_tokens + (j->ep == EP_CHAT ? j->cache_read : 0);
	PUT_LIT(b, "{\"prompt_tokens\":");
	put_u64(b, prompt);
	PUT_LIT(b, ",\"completion_tokens\":");
	put_u64(b, out_tokens);
	PUT_LIT(b, ",\"total_tokens\":");
	put_u64(b, prompt + out_tokens);
	if (j->ep != EP_CHAT) {
		put_ch(b, '}');
	} else if (!j->cache_read && !j->thinking) {
		PUT_LIT(b, ",\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
		           "\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,"
		           "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}");
	} else {
		PUT_LIT(b, ",\"prompt_tokens_details\":{\"cached_tokens\":");
		put_u64(b, j->cache_read);
		PUT_LIT(b, ",\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":");
		put_u64(b, j->thinking ? THINK_STEPS : 0);
		PUT_LIT(b, ",\"audio_tokens\":0,\"accepted_prediction_tokens\":0,"
		           "\"rejected_prediction_tokens\":0}}");
	}
}

/* The cache counts of an Anthropic usage object, up to "output_tokens": */
static inline void put_anthropic_cache(struct buf *b, const struct job *j)
{
	if (!j->cache_write && !j->cache_read) {
		PUT_LIT(b, ",\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,"
		           "\"output_tokens\":");
		return;
	}
	PUT_LIT(b, ",\"cache_creation_input_tokens\":");
	put_u64(b, j->cache_write);
	PUT_LIT(b, ",\"cache_read_input_tokens\":");
	put_u64(b, j->cache_read);
	if (j->cache_write_1h && j->cache_write_1h <= j->cache_write) {
		/* the split by cache lifetime, as the API gives it */
		PUT_LIT(b, ",\"cache_creation\":{\"ephemeral_5m_input_tokens\":");
		put_u64(b, j->cache_write - j->cache_write_1h);
		PUT_LIT(b, ",\"ephemeral_1h_input_tokens\":");
		put_u64(b, j->cache_write_1h);
		put_ch(b, '}');
	}
	PUT_LIT(b, ",\"output_tokens\":");
}

/* Anthropic stop_sequence: the request's stop sequence that ended the text. */
static inline void put_stop_sequence(struct buf *b, const struct job *j)
{
	if (j->stop_hit) {
		put_ch(b, '"');
		put(b, j->stop_raw, j->stop_len);
		put_ch(b, '"');
	} else {
		PUT_LIT(b, "null");
	}
}

/* put_rich_content writes the content blocks of a rich Anthropic answer:
 * thinking, text, tool calls (each as asked). */
static void put_rich_content(struct buf *b, const struct job *j, uint64_t n)
{
	bool first = true;
	if (j->thinking) {
		PUT_LIT(b, "{\"type\":\"thinking\",\"thinking\":\"");
		put_think_words(b, 0, THINK_STEPS);
		PUT_LIT(b, "\",\"signature\":\"");
		put_signature(b, j);
		PUT_LIT(b, "\"}");
		first = false;
	}
	if (j->has_text) {
		if (!first)
			put_ch(b, ',');
		PUT_LIT(b, "{\"type\":\"text\",\"text\":\"");
		put_words(b, 0, n);
		PUT_LIT(b, "\"}");
		first = false;
	}
	for (uint64_t k = 0; k < j->ncalls; k++) {
		if (!first)
			put_ch(b, ',');
		first = false;
		PUT_LIT(b, "{\"type\":\"tool_use\",\"id\":\"toolu_");
		put_call_id(b, j, k);
		PUT_LIT(b, "\",\"name\":\"");
		put_tool_name(b, j, k);
		PUT_LIT(b, "\",\"input\":");
		if (n == 0) {
			PUT_LIT(b, "{}");
		} else {
			PUT_LIT(b, "{\"text\":\"");
			put_words(b, k, k + n);
			PUT_LIT(b, "\"}");
		}
		put_ch(b, '}');
	}
}

/* put_rich_message writes the message members of a rich OpenAI answer
 * after "role": reasoning_content, content, tool_calls (each as asked). */
static void put_rich_message(struct buf *b, const struct job *j, uint64_t n)
{
	if (j->thinking) {
		PUT_LIT(b, "\"reasoning_content\":\"");
		put_think_words(b, 0, THINK_STEPS);
		PUT_LIT(b, "\",");
	}
	if (j->has_text) {
		PUT_LIT(b, "\"content\":\"");
		put_words(b, 0, n);
		PUT_LIT(b, "\",");
	} else {
		PUT_LIT(b, "\"content\":null,");
	}
	if (!j->ncalls)
		return;
	PUT_LIT(b, "\"tool_calls\":[");
	for (uint64_t k = 0; k < j->ncalls; k++) {
		if (k)
			put_ch(b, ',');
		PUT_LIT(b, "{\"id\":\"call_");
		put_call_id(b, j, k);
		PUT_LIT(b, "\",\"type\":\"function\",\"function\":{\"name\":\"");
		put_tool_name(b, j, k);
		PUT_LIT(b, "\",\"arguments\":\"");
		if (n == 0)
			PUT_LIT(b, "{}");
		else
			put_call_args(b, j, k, 0, n, n, true);
		PUT_LIT(b, "\"}}");
	}
	PUT_LIT(b, "],");
}

static void put_model(struct buf *b, const struct job *j)
{
	put(b, j->model, j->model_len);
}

/* body_generation writes the non-stream answer of chat, completions and
 * messages with n words of content. */
static void body_generation(struct buf *b, const struct job *j, uint64_t n)
{
	b->len = 0;
	if (j->ep == EP_MESSAGES) {
		PUT_LIT(b, "{\"id\":\"msg_");
		put_hex(b, j->id);
		PUT_LIT(b, "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"");
		put_model(b, j);
		if (j->rich) {
			PUT_LIT(b, "\",\"content\":[");
			put_rich_content(b, j, n);
			put_ch(b, ']');
		} else if (j->tool) {
			PUT_LIT(b, "\",\"content\":[{\"type\":\"tool_use\",\"id\":\"toolu_");
			put_hex(b, j->id);
			PUT_LIT(b, "\",\"name\":\"");
			put_tool_name(b, j, 0);
			PUT_LIT(b, "\",\"input\":");
			if (n == 0)
				PUT_LIT(b, "{}");
			else {
				/* a length-capped input is closed anyway: "input" is an object */
				PUT_LIT(b, "{\"text\":\"");
				put_words(b, 0, n);
				PUT_LIT(b, "\"}");
			}
			PUT_LIT(b, "}]");
		} else {
			PUT_LIT(b, "\",\"content\":[{\"type\":\"text\",\"text\":\"");
			put_words(b, 0, n);
			PUT_LIT(b, "\"}]");
		}
		PUT_LIT(b, ",\"stop_reason\":\"");
		put_cstr(b, finish_reason(j));
		PUT_LIT(b, "\",\"stop_sequence\":");
		put_stop_sequence(b, j);
		PUT_LIT(b, ",\"usage\":{\"input_tokens\":");
		put_u64(b, j->input_tokens);
		put_anthropic_cache(b, j);
		put_u64(b, usage_of(j, n));
		PUT_LIT(b, "}}");
		return;
	}
	if (j->ep == EP_COMPLETIONS) {
		PUT_LIT(b, "{\"id\":\"cmpl-");
		put_hex(b, j->id);
		PUT_LIT(b, "\",\"object\":\"text_completion\",\"created\":");
		put_u64(b, j->created);
		PUT_LIT(b, ",\"model\":\"");
		put_model(b, j);
		PUT_LIT(b, "\",\"choices\":[{\"text\":\"");
		put_words(b, 0, n);
		PUT_LIT(b, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"");
		put_cstr(b, finish_reason(j));
		PUT_LIT(b, "\"}],\"usage\":");
		put_openai_usage(b, j, usage_of(j, n));
		put_ch(b, '}');
		return;
	}
	PUT_LIT(b, "{\"id\":\"chatcmpl-");
	put_hex(b, j->id);
	PUT_LIT(b, "\",\"object\":\"chat.completion\",\"created\":");
	put_u64(b, j->created);
	PUT_LIT(b, ",\"model\":\"");
	put_model(b, j);
	PUT_LIT(b, "\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",");
	if (j->rich) {
		put_rich_message(b, j, n);
	} else if (j->tool) {
		PUT_LIT(b, "\"content\":null,\"tool_calls\":[{\"id\":\"call_");
		put_hex(b, j->id);
		PUT_LIT(b, "\",\"type\":\"function\",\"function\":{\"name\":\"");
		put_tool_name(b, j, 0);
		PUT_LIT(b, "\",\"arguments\":\"");
		if (n == 0)
			PUT_LIT(b, "{}");
		else
			put_call_args(b, j, 0, 0, n, n, true);
		PUT_LIT(b, "\"}}],");
	} else {
		PUT_LIT(b, "\"content\":\"");
		put_words(b, 0, n);
		PUT_LIT(b, "\",");
	}
	PUT_LIT(b, "\"refusal\":null,\"annotations\":[]},\"logprobs\":null,\"finish_reason\":\"");
	put_cstr(b, finish_reason(j));
	PUT_LIT(b, "\"}],\"usage\":");
	put_openai_usage(b, j, usage_of(j, n));
	PUT_LIT(b, ",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\"}");
}

static void respond_generation(struct conn *c)
{
	struct job *j = &c->job;
	struct buf *b = &c->w->sb;
	uint64_t n = j->out_tokens;
	body_generation(b, j, n);
	if (j->response_bytes > b->len) {
		/* pad the text with more words until the body is ~response_bytes
		 * (each word goes into the text and every tool call) */
		uint64_t want = j->response_bytes - b->len, got = 0;
		uint64_t copies = SL_MAX((j->has_text ? 1u : 0u) + (uint64_t)j->ncalls, (uint64_t)1);
		while (got < want)
			got += word_at(n++)->len * copies;
		body_generation(b, j, n);
	}
	send_body(c, 200, CT_JSON, b, j->disconnect_after >= 0);
}

static void put_b64(struct buf *b, const unsigned char *s, size_t len)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i = 0;
	for (; i + 3 <= len; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
		char o[4] = { tab[v >> 18], tab[(v >> 12) & 63], tab[(v >> 6) & 63], tab[v & 63] };
		put(b, o, 4);
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)s[i] << 16;
		char o[4] = { tab[v >> 18], tab[(v >> 12) & 63], '=', '=' };
		put(b, o, 4);
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
		char o[4] = { tab[v >> 18], tab[(v >> 12) & 63], tab[(v >> 6) & 63], '=' };
		put(b, o, 4);
	}
}

static void respond_embeddings(struct conn *c)
{
	const struct job *j = &c->job;
	struct buf *b = &c->w->sb;
	b->len = 0;
	PUT_LIT(b, "{\"object\":\"list\",\"data\":[");
	for (uint64_t i = 0; i < j->embed_inputs; i++) {
		if (i)
			put_ch(b, ',');
		PUT_LIT(b, "{\"object\":\"embedding\",\"index\":");
		put_u64(b, i);
		PUT_LIT(b, ",\"embedding\":");
		if (j->embed_base64) {
			/* little-endian float32s, base64: what encoding_format=base64 returns */
			put_ch(b, '"');
			unsigned char raw[3 * 64];
			size_t fill = 0;
			for (uint64_t d = 0; d < j->embed_dims; d++) {
				float f = g_emb_val[(i * 7 + d * 13 + i * d) & (EMBED_TABLE_LEN - 1)];
				memcpy(raw + fill, &f, 4);
				fill += 4;
				if (fill == sizeof(raw)) {
					put_b64(b, raw, fill);
					fill = 0;
				}
			}
			put_b64(b, raw, fill);
			put_ch(b, '"');
		} else {
			put_ch(b, '[');
			for (uint64_t d = 0; d < j->embed_dims; d++) {
				size_t k = (i * 7 + d * 13 + i * d) & (EMBED_TABLE_LEN - 1);
				if (d)
					put_ch(b, ',');
				put(b, g_emb_str[k], g_emb_len[k]);
			}
			put_ch(b, ']');
		}
		put_ch(b, '}');
	}
	PUT_LIT(b, "],\"model\":\"");
	put_model(b, j);
	PUT_LIT(b, "\",\"usage\":{\"prompt_tokens\":");
	put_u64(b, j->input_tokens);
	PUT_LIT(b, ",\"total_tokens\":");
	put_u64(b, j->input_tokens);
	PUT_LIT(b, "}}");
	send_body(c, 200, CT_JSON, b, j->disconnect_after >= 0);
}

/* OpenAI's images/generations answer, DALL-E style: "n" images as URLs, or
 * as base64 PNGs with response_format b64_json (a 1x1 PNG here). */
#define IMAGES_MAX 10
static void respond_images(struct conn *c)
{
	const struct job *j = &c->job;
	struct buf *b = &c->w->sb;
	b->len = 0;
	PUT_LIT(b, "{\"created\":1763800000,\"data\":[");
	for (uint64_t i = 0; i < j->images; i++) {
		if (i)
			put_ch(b, ',');
		if (j->images_b64) {
			PUT_LIT(b, "{\"revised_prompt\":\"A mock image, as asked: \\\"url\\\"\","
			           "\"b64_json\":\"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQV"
			           "R42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==\"}");
		} else {
			PUT_LIT(b, "{\"revised_prompt\":\"A mock image\",\"url\":\"https://images.mock.invalid/");
			put_u64(b, j->id);
			put_ch(b, '-');
			put_u64(b, i);
			PUT_LIT(b, ".png\"}");
		}
	}
	PUT_LIT(b, "]}");
	send_body(c, 200, CT_JSON, b, j->disconnect_after >= 0);
}

static const char *const g_model_ids[] = {
	"gpt-4o-mini", "gpt-4o", "gpt-4.1", "text-embedding-3-small", "mock-model",
};

static void put_model_object(struct buf *b, const char *id, size_t id_len)
{
	PUT_LIT(b, "{\"id\":\"");
	put(b, id, id_len);
	PUT_LIT(b, "\",\"object\":\"model\",\"created\":1715367049,\"owned_by\":\"system\"}");
}

static void respond_models(struct conn *c)
{
	const struct job *j = &c->job;
	struct buf *b = &c->w->sb;
	b->len = 0;
	if (j->ep == EP_MODEL) {
		put_model_object(b, j->model, j->model_len);
	} else {
		PUT_LIT(b, "{\"object\":\"list\",\"data\":[");
		for (size_t i = 0; i < SL_ARRAY_LEN(g_model_ids); i++) {
			if (i)
				put_ch(b, ',');
			put_model_object(b, g_model_ids[i], strlen(g_model_ids[i]));
		}
		PUT_LIT(b, "]}");
	}
	send_body(c, 200, CT_JSON, b, j->disconnect_after >= 0);
}

static void respond_count_tokens(struct conn *c)
{
	const struct job *j = &c->job;
	struct buf *b = &c->w->sb;
	b->len = 0;
	PUT_LIT(b, "{\"input_tokens\":");
	put_u64(b, j->input_tokens);
	put_ch(b, '}');
	send_body(c, 200, CT_JSON, b, j->disconnect_after >= 0);
}

/* --- streams ---------------------------------------------------------------------------- */

/* ev_commit queues the event in w->eb as one HTTP chunk. */
static void ev_commit(struct conn *c)
{
	struct buf *e = &c->w->eb;
	struct buf *o = &c->out;
	if (c->job.chunked) {
		put_hex(o, e->len);
		PUT_LIT(o, "\r\n");
		put(o, e->ptr, e->len);
		PUT_LIT(o, "\r\n");
	} else {
		put(o, e->ptr, e->len);
	}
}

static void oa_chunk_open(struct buf *e, const struct job *j)
{
	e->len = 0;
	if (j->ep == EP_CHAT) {
		PUT_LIT(e, "data: {\"id\":\"chatcmpl-");
		put_hex(e, j->id);
		PUT_LIT(e, "\",\"object\":\"chat.completion.chunk\",\"created\":");
	} else {
		PUT_LIT(e, "data: {\"id\":\"cmpl-");
		put_hex(e, j->id);
		PUT_LIT(e, "\",\"object\":\"text_completion\",\"created\":");
	}
	put_u64(e, j->created);
	PUT_LIT(e, ",\"model\":\"");
	put_model(e, j);
	if (j->ep == EP_CHAT)
		PUT_LIT(e, "\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\",\"choices\":[");
	else
		PUT_LIT(e, "\",\"choices\":[");
}

static void oa_chunk_close(struct conn *c)
{
	struct buf *e = &c->w->eb;
	if (c->job.include_usage)
		PUT_LIT(e, "],\"usage\":null}\n\n");
	else
		PUT_LIT(e, "]}\n\n");
	ev_commit(c);
}

/* --- rich streams: thinking, parallel tool calls, text before tool calls --- */

enum block_kind { BK_THINK, BK_TEXT, BK_TOOL };

/* an_block_kind: what block b of a rich Anthropic answer holds: the
 * thinking, the text, or tool call *call. */
static enum block_kind an_block_kind(const struct job *j, uint64_t b, uint64_t *call)
{
	*call = 0;
	if (j->thinking) {
		if (b == 0)
			return BK_THINK;
		b--;
	}
	if (j->has_text) {
		if (b == 0)
			return BK_TEXT;
		b--;
	}
	*call = b;
	return BK_TOOL;
}

static uint64_t an_blocks(const struct job *j)
{
	return (j->thinking ? 1u : 0u) + (j->has_text ? 1u : 0u) + j->ncalls;
}

/* an_block_of returns the block of content delta s and, in *f, its
 * position in the block: THINK_STEPS thinking deltas, then out_tokens per
 * text or tool block. */
static uint64_t an_block_of(const struct job *j, uint64_t s, uint64_t *f)
{
	uint64_t b = 0;
	if (j->thinking) {
		if (s < THINK_STEPS) {
			*f = s;
			return 0;
		}
		s -= THINK_STEPS;
		b = 1;
	}
	SL_ASSERT(j->out_tokens > 0);
	*f = s % j->out_tokens;
	return b + s / j->out_tokens;
}

static void an_block_start(struct conn *c, uint64_t b)
{
	const struct job *j = &c->job;
	struct buf *e = &c->w->eb;
	uint64_t k;
	enum block_kind kind = an_block_kind(j, b, &k);
	e->len = 0;
	PUT_LIT(e, "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":");
	put_u64(e, b);
	if (kind == BK_THINK) {
		PUT_LIT(e, ",\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n");
	} else if (kind == BK_TEXT) {
		PUT_LIT(e, ",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
	} else {
		PUT_LIT(e, ",\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_");
		put_call_id(e, j, k);
		PUT_LIT(e, "\",\"name\":\"");
		put_tool_name(e, j, k);
		PUT_LIT(e, "\",\"input\":{}}}\n\n");
	}
	ev_commit(c);
}

/* an_block_stop ends block b; a thinking block gets its signature first. */
static void an_block_stop(struct conn *c, uint64_t b)
{
	const struct job *j = &c->job;
	struct buf *e = &c->w->eb;
	uint64_t k;
	if (an_block_kind(j, b, &k) == BK_THINK) {
		e->len = 0;
		PUT_LIT(e, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":");
		put_u64(e, b);
		PUT_LIT(e, ",\"delta\":{\"type\":\"signature_delta\",\"signature\":\"");
		put_signature(e, j);
		PUT_LIT(e, "\"}}\n\n");
		ev_commit(c);
	}
	e->len = 0;
	PUT_LIT(e, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":");
	put_u64(e, b);
	PUT_LIT(e, "}\n\n");
	ev_commit(c);
}

/* an_rich_step sends content delta s of a rich Anthropic stream, after
 * closing the previous block and opening the next when s starts one. */
static void an_rich_step(struct conn *c, uint64_t s)
{
	const struct job *j = &c->job;
	struct buf *e = &c->w->eb;
	uint64_t f, pf, k;
	uint64_t b = an_block_of(j, s, &f);
	if (s > 0) {
		uint64_t pb = an_block_of(j, s - 1, &pf);
		if (pb != b) {
			an_block_stop(c, pb);
			an_block_start(c, b);
		}
	}
	enum block_kind kind = an_block_kind(j, b, &k);
	e->len = 0;
	PUT_LIT(e, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":");
	put_u64(e, b);
	if (kind == BK_THINK) {
		PUT_LIT(e, ",\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"");
		put_think_words(e, f, f + 1);
	} else if (kind == BK_TEXT) {
		PUT_LIT(e, ",\"delta\":{\"type\":\"text_delta\",\"text\":\"");
		put_words(e, f, f + 1);
	} else {
		PUT_LIT(e, ",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"");
		put_call_args(e, j, k, f, f + 1, j->out_tokens, true);
	}
	PUT_LIT(e, "\"}}\n\n");
	ev_commit(c);
}

/* an_rich_close ends the open block and sends the blocks without deltas
 * (text or tool calls of 0 words) that follow it. */
static void an_rich_close(struct conn *c)
{
	const struct job *j = &c->job;
	uint64_t f, last = j->steps ? an_block_of(j, j->steps - 1, &f) : 0;
	an_block_stop(c, last);
	for (uint64_t b = last + 1; b < an_blocks(j); b++) {
		an_block_start(c, b);
		an_block_stop(c, b);
	}
}

/* oa_rich_step sends content delta s of a rich OpenAI stream: the
 * reasoning_content deltas, the content deltas, then the tool calls'
 * argument fragments, interleaved by call (call s % ncalls) or, with
 * x-mock-tool-order: sequential, one call after another. A call's first
 * delta carries its id, type and name. */
static void oa_rich_step(struct conn *c, uint64_t s)
{
	const struct job *j = &c->job;
	struct buf *e = &c->w->eb;
	uint64_t n = j->out_tokens;
	oa_chunk_open(e, j);
	if (j->thinking) {
		if (s < THINK_STEPS) {
			PUT_LIT(e, "{\"index\":0,\"delta\":{\"reasoning_content\":\"");
			put_think_words(e, s, s + 1);
			PUT_LIT(e, "\"},\"logprobs\":null,\"finish_reason\":null}");
			oa_chunk_close(c);
			return;
		}
		s -= THINK_STEPS;
	}
	if (j->has_text) {
		if (s < n) {
			PUT_LIT(e, "{\"index\":0,\"delta\":{\"content\":\"");
			put_words(e, s, s + 1);
			PUT_LIT(e, "\"},\"logprobs\":null,\"finish_reason\":null}");
			oa_chunk_close(c);
			return;
		}
		s -= n;
	}
	uint64_t per = n ? n : 1; /* 0 words: one fragment, "{}" */
	uint64_t k = j->tools_seq ? s / per : s % j->ncalls;
	uint64_t f = j->tools_seq ? s % per : s / j->ncalls;
	PUT_LIT(e, "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":");
	put_u64(e, k);
	if (f == 0) {
		PUT_LIT(e, ",\"id\":\"call_");
		put_call_id(e, j, k);
		PUT_LIT(e, "\",\"type\":\"function\",\"function\":{\"name\":\"");
		put_tool_name(e, j, k);
		PUT_LIT(e, "\",\"arguments\":\"");
	} else {
		PUT_LIT(e, ",\"function\":{\"arguments\":\"");
	}
	if (n == 0)
		PUT_LIT(e, "{}");
	else
		put_call_args(e, j, k, f, f + 1, n, true);
	PUT_LIT(e, "\"}}]},\"logprobs\":null,\"finish_reason\":null}");
	oa_chunk_close(c);
}

static void stream_preamble(struct conn *c)
{
	const struct job *j = &c->job;
	struct buf *e = &c->w->eb;
	if (j->ep == EP_MESSAGES) {
		e->len = 0;
		PUT_LIT(e, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":"
		           "{\"id\":\"msg_");
		put_hex(e, j->id);
		PUT_LIT(e, "\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"");
		put_model(e, j);
		PUT_LIT(e, "\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
		           "\"usage\":{\"input_tokens\":");
		put_u64(e, j->input_tokens);
		put_anthropic_cache(e, j);
		PUT_LIT(e, "1}}}\n\n");
		ev_commit(c);
		if (j->rich) {
			an_block_start(c, 0);
		} else {
			e->len = 0;
			if (j->tool) {
				PUT_LIT(e, "event: content_block_start\ndata: {\"type\":\"content_block_start\","
				           "\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_");
				put_hex(e, j->id);
				PUT_LIT(e, "\",\"name\":\"");
				put_tool_name(e, j, 0);
				PUT_LIT(e, "\",\"input\":{}}}\n\n");
			} else {
				PUT_LIT(e, "event: content_block_start\ndata: {\"type\":\"content_block_start\","
				           "\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
			}
			ev_commit(c);
		}
		e->len = 0;
		PUT_LIT(e, "event: ping\ndata: {\"type\": \"ping\"}\n\n");
		ev_commit(c);
		return;
	}
	if (j->ep != EP_CHAT)
		return; /* legacy completions start with the first text chunk */
	oa_chunk_open(e, j);
	if (j->rich) {
		/* the calls' ids and names come with their first fragments */
		if (j->has_text)
			PUT_LIT(e, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",");
		else
			PUT_LIT(e, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,");
		PUT_LIT(e, "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}");
	} else if (j->tool) {
		PUT_LIT(e, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,"
		           "\"tool_calls\":[{\"index\":0,\"id\":\"call_");
		put_hex(e, j->id);
		PUT_LIT(e, "\",\"type\":\"function\",\"function\":{\"name\":\"");
		put_tool_name(e, j, 0);
		if (j->out_tokens == 0)
			PUT_LIT(e, "\",\"arguments\":\"{}\"}}],");
		else
			PUT_LIT(e, "\",\"arguments\":\"\"}}],");
		PUT_LIT(e, "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}");
	} else {
		PUT_LIT(e, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
		           "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}");
	}
	oa_chunk_close(c);
}

static void stream_content(struct conn *c, uint64_t i)
{
	const struct job *j = &c->job;
	struct buf *e = &c->w->eb;
	if (j->rich) {
		if (j->ep == EP_MESSAGES)
			an_rich_step(c, i);
		else
			oa_rich_step(c, i);
		return;
	}
	if (j->ep == EP_MESSAGES) {
		e->len = 0;
		if (j->tool) {
			PUT_LIT(e, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
			           "\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"");
			put_call_args(e, j, 0, i, i + 1, j->out_tokens, true);
		} else {
			PUT_LIT(e, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
			           "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"");
			put_words(e, i, i + 1);
		}
		PUT_LIT(e, "\"}}\n\n");
		ev_commit(c);
		return;
	}
	oa_chunk_open(e, j);
	if (j->ep == EP_COMPLETIONS) {
		PUT_LIT(e, "{\"text\":\"");
		put_words(e, i, i + 1);
		PUT_LIT(e, "\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}");
	} else if (j->tool) {
		PUT_LIT(e, "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":"
		           "{\"arguments\":\"");
		put_call_args(e, j, 0, i, i + 1, j->out_tokens, true);
		PUT_LIT(e, "\"}}]},\"logprobs\":null,\"finish_reason\":null}");
	} else {
		PUT_LIT(e, "{\"index\":0,\"delta\":{\"content\":\"");
		put_words(e, i, i + 1);
		PUT_LIT(e, "\"},\"logprobs\":null,\"finish_reason\":null}");
	}
	oa_chunk_close(c);
}

static void stream_trailer(struct conn *c)
{
	const struct job *j = &c->job;
	struct buf *e = &c->w->eb;
	if (j->ep == EP_MESSAGES) {
		if (j->rich) {
			an_rich_close(c);
		} else {
			e->len = 0;
			PUT_LIT(e, "event: content_block_stop\ndata: {\"type\":\"content_block_stop\","
			           "\"index\":0}\n\n");
			ev_commit(c);
		}
		e->len = 0;
		PUT_LIT(e, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
		           "{\"stop_reason\":\"");
		put_cstr(e, finish_reason(j));
		PUT_LIT(e, "\",\"stop_sequence\":");
		put_stop_sequence(e, j);
		PUT_LIT(e, "},\"usage\":{\"output_tokens\":");
		put_u64(e, j->usage_out);
		PUT_LIT(e, "}}\n\n");
		ev_commit(c);
		e->len = 0;
		PUT_LIT(e, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
		ev_commit(c);
	} else {
		oa_chunk_open(e, j);
		if (j->ep == EP_COMPLETIONS)
			PUT_LIT(e, "{\"text\":\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"");
		else
			PUT_LIT(e, "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"");
		put_cstr(e, finish_reason(j));
		PUT_LIT(e, "\"}");
		oa_chunk_close(c);
		if (j->include_usage) {
			oa_chunk_open(e, j);
			PUT_LIT(e, "],\"usage\":");
			put_openai_usage(e, j, j->usage_out);
			PUT_LIT(e, "}\n\n");
			ev_commit(c);
		}
		e->len = 0;
		PUT_LIT(e, "data: [DONE]\n\n");
		ev_commit(c);
	}
	if (j->chunked)
		PUT_LIT(&c->out, "0\r\n\r\n");
}

/* stream_pump queues stream events until the stream ends, a token delay
 * starts (timer armed), x-mock-disconnect-after cuts it (ST_CLOSING abrupt)
 * or the output backs up (want_out). */
static void stream_pump(struct conn *c)
{
	struct job *j = &c->job;
	SL_ASSERT(c->state == ST_STREAM);
	if (j->phase == PH_PRE) {
		stream_preamble(c);
		j->phase = PH_CONTENT;
	}
	while (j->phase == PH_CONTENT) {
		if ((int64_t)j->emitted == j->disconnect_after) {
			c->state = ST_CLOSING;
			c->abrupt = true;
			return;
		}
		if (j->emitted == j->steps) {
			j->phase = PH_POST;
			break;
		}
		if (j->token_delay_ms && !j->delay_elapsed) {
			timer_set(c, j->token_delay_ms);
			return;
		}
		j->delay_elapsed = false;
		stream_content(c, j->emitted++);
		if (c->out.len - c->out_off >= OUT_PENDING_MAX) {
			c->want_out = true;
			return;
		}
	}
	stream_trailer(c);
	c->state = (j->keep_alive && j->chunked) ? ST_IDLE : ST_CLOSING;
}

static void stream_start(struct conn *c)
{
	struct job *j = &c->job;
	struct buf *h = &c->w->hb;
	j->chunked = !j->http10;
	if (j->http10)
		j->keep_alive = false; /* close-delimited */
	build_head(c, h, 200, CT_SSE, -1);
	put(&c->out, h->ptr, h->len);
	c->state = ST_STREAM;
	j->phase = PH_PRE;
	stream_pump(c);
}

/* --- requests ---------------------------------------------------------------------------- */

static void respond_malformed(struct conn *c)
{
	static const char bad[] = "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"
	                          "{\"id\":\"chatcmpl-malformed\",\"object\":\"chat.completion\",";
	put(&c->out, bad, sizeof(bad) - 1);
	c->state = ST_CLOSING;
	c->abrupt = true;
}

/* respond_start answers the request described by c->job (now, or when its
 * first-byte delay expired). */
static void respond_start(struct conn *c)
{
	struct job *j = &c->job;
	if (SL_UNLIKELY(j->fault)) {
		if (j->fault == FK_RESET) { /* no byte of an answer, then RST */
			c->rst = true;
			c->state = ST_CLOSING;
			c->abrupt = true;
			return;
		}
		if (j->fault == FK_CLOSE) { /* no byte of an answer, then FIN */
			c->no_notify = true;
			c->state = ST_CLOSING;
			return;
		}
		c->rst = true; /* midstream: the answer is cut, then RST */
	}
	if (j->malformed) {
		respond_malformed(c);
		return;
	}
	if (j->err_status) {
		respond_error(c, j->err_status, j->err_type, j->msg, j->msg_len);
		return;
	}
	if (j->mock_status) {
		respond_error(c, j->mock_status, NULL, NULL, 0);
		return;
	}
	if (j->json_bad) {
		if (j->fmt == FMT_ANTHROPIC)
			respond_error(c, 400, "invalid_request_error", "There was an error parsing the body of your request.",
			              strlen("There was an error parsing the body of your request."));
		else
			respond_error(c, 400, "invalid_request_error", "We could not parse the JSON body of your request.",
			              strlen("We could not parse the JSON body of your request."));
		return;
	}
	switch (j->ep) {
	case EP_CHAT:
	case EP_COMPLETIONS:
	case EP_MESSAGES:
		if (j->stream)
			stream_start(c);
		else
			respond_generation(c);
		break;
	case EP_EMBEDDINGS:
		respond_embeddings(c);
		break;
	case EP_IMAGES:
		respond_images(c);
		break;
	case EP_MODELS:
	case EP_MODEL:
		respond_models(c);
		break;
	case EP_COUNT_TOKENS:
		respond_count_tokens(c);
		break;
	default:
		SL_ASSERT(!"unrouted endpoint");
	}
}

static void job_init(struct conn *c)
{
	struct job *j = &c->job;
	memset(j, 0, offsetof(struct job, model));
	j->retry_after_s = -1;
	j->disconnect_after = -1;
	j->tokens = TOKENS_DEFAULT;
	j->max_tokens = UINT64_MAX;
	j->embed_inputs = 1;
	j->images = 1;
	j->embed_dims = EMBED_DIMS_DEFAULT;
	memcpy(j->model, "mock-model", 10);
	j->model_len = 10;
	struct worker *w = c->w;
	j->id = (uint64_t)w->idx << 40 | ++w->id_seq;
}

static void job_message(struct job *j, const char *what, const struct sl_http_request *req,
                        size_t path_len)
{
	int n = snprintf(j->msg, sizeof(j->msg), "%s (%.*s %.*s)", what, (int)SL_MIN(req->method_len, 32u),
	                 req->method_str, (int)SL_MIN(path_len, 200u), req->target);
	j->msg_len = (uint16_t)(n < 0 ? 0 : SL_MIN((size_t)n, sizeof(j->msg) - 1));
}

struct route {
	const char *path;
	size_t path_len;
	enum sl_http_method method;
	enum endpoint ep;
};
#define ROUTE(p, m, e) { p, sizeof(p) - 1, m, e }
static const struct route g_routes[] = {
	ROUTE("/v1/chat/completions", SL_METHOD_POST, EP_CHAT),
	ROUTE("/v1/messages", SL_METHOD_POST, EP_MESSAGES),
	ROUTE("/v1/completions", SL_METHOD_POST, EP_COMPLETIONS),
	ROUTE("/v1/embeddings", SL_METHOD_POST, EP_EMBEDDINGS),
	ROUTE("/v1/images/generations", SL_METHOD_POST, EP_IMAGES),
	ROUTE("/v1/messages/count_tokens", SL_METHOD_POST, EP_COUNT_TOKENS),
	ROUTE("/v1/models", SL_METHOD_GET, EP_MODELS),
	ROUTE("/mock/stats", SL_METHOD_GET, EP_STATS),
	ROUTE("/mock/reset", SL_METHOD_POST, EP_RESET),
};

static void route(struct job *j, const struct sl_http_request *req)
{
	const char *t = req->target;
	const char *q = memchr(t, '?', req->target_len);
	size_t len = q ? (size_t)(q - t) : req->target_len;
	if (len >= 12 && memcmp(t, "/v1/messages", 12) == 0 && (len == 12 || t[12] == '/'))
		j->fmt = FMT_ANTHROPIC;
	for (size_t i = 0; i < SL_ARRAY_LEN(g_routes); i++) {
		const struct route *r = &g_routes[i];
		if (r->path_len != len || memcmp(r->path, t, len) != 0)
			continue;
		if (req->method == r->method) {
			j->ep = (uint8_t)r->ep;
			return;
		}
		j->err_status = 405;
		j->err_type = "invalid_request_error";
		j->allow = r->method == SL_METHOD_GET ? "GET" : "POST";
		job_message(j, "Invalid method for URL", req, len);
		return;
	}
	if (len > 11 && memcmp(t, "/v1/models/", 11) == 0 && !memchr(t + 11, '/', len - 11)) {
		if (req->method != SL_METHOD_GET) {
			j->err_status = 405;
			j->err_type = "invalid_request_error";
			j->allow = "GET";
			job_message(j, "Invalid method for URL", req, len);
			return;
		}
		j->ep = EP_MODEL;
		struct buf id = { 0 };
		put_json_escaped(&id, t + 11, len - 11);
		size_t n = js_str_cut(id.ptr, id.len, sizeof(j->model) - 1);
		memcpy(j->model, id.ptr, n);
		j->model_len = (uint16_t)n;
		free(id.ptr);
		return;
	}
	j->err_status = 404;
	j->err_type = j->fmt == FMT_ANTHROPIC ? "not_found_error" : "invalid_request_error";
	job_message(j, "Invalid URL", req, len);
}

static bool header_u64(const struct sl_http_header *h, uint64_t max, uint64_t *out)
{
	if (!h->value_len || h->value_len > 19)
		return false;
	uint64_t v = 0;
	for (uint32_t i = 0; i < h->value_len; i++) {
		char ch = h->value[i];
		if (ch < '0' || ch > '9')
			return false;
		v = v * 10 + (uint64_t)(ch - '0');
	}
	*out = v > max ? max : v;
	return true;
}

#define NAME_IS(n, nl, lit) ((nl) == sizeof(lit) - 1 && sl_ascii_ieq((n), lit, sizeof(lit) - 1))

/* header_flag reads a switch: 1 for "1"/"true", 0 for "0"/"false", else -1. */
static int header_flag(const struct sl_http_header *h)
{
	if (NAME_IS(h->value, h->value_len, "1") || NAME_IS(h->value, h->value_len, "true"))
		return 1;
	if (NAME_IS(h->value, h->value_len, "0") || NAME_IS(h->value, h->value_len, "false"))
		return 0;
	return -1;
}

/* What handle_request needs from the other headers: the API key (for
 * requests_by_key and key=), the client's x-request-id (times=N) and
 * whether x-mock-fault is present at all. */
struct hdr_info {
	struct sl_str bearer; /* Authorization: Bearer KEY */
	struct sl_str api_key; /* x-api-key: KEY */
	struct sl_str key;    /* the one the route's format uses, or the other */
	struct sl_str rid;    /* x-request-id */
	bool fault;
};

static void parse_mock_headers(struct job *j, const struct sl_http_request *req,
                               struct hdr_info *hi)
{
	for (uint32_t i = 0; i < req->num_headers; i++) {
		const struct sl_http_header *h = &req->headers[i];
		if (h->name_len <= 7 || !sl_ascii_ieq(h->name, "x-mock-", 7)) {
			if (NAME_IS(h->name, h->name_len, "authorization")) {
				if (h->value_len > 7 && sl_ascii_ieq(h->value, "bearer ", 7)) {
					size_t k = 7;
					while (k < h->value_len && (h->value[k] == ' ' || h->value[k] == '\t'))
						k++;
					hi->bearer.ptr = h->value + k;
					hi->bearer.len = h->value_len - k;
				}
			} else if (NAME_IS(h->name, h->name_len, "x-api-key")) {
				hi->api_key.ptr = h->value;
				hi->api_key.len = h->value_len;
			} else if (NAME_IS(h->name, h->name_len, "x-request-id")) {
				hi->rid.ptr = h->value;
				hi->rid.len = h->value_len;
			}
			continue;
		}
		const char *n = h->name + 7;
		size_t nl = h->name_len - 7;
		uint64_t v;
		if (NAME_IS(n, nl, "fault")) {
			hi->fault = true;
		} else if (NAME_IS(n, nl, "status")) {
			if (header_u64(h, 999, &v) && v >= 400 && v <= 599)
				j->mock_status = (uint16_t)v;
		} else if (NAME_IS(n, nl, "retry-after")) {
			if (header_u64(h, UINT32_MAX, &v))
				j->retry_after_s = (int64_t)v;
		} else if (NAME_IS(n, nl, "first-byte-delay-ms")) {
			if (header_u64(h, DELAY_MS_MAX, &v))
				j->first_byte_delay_ms = v;
		} else if (NAME_IS(n, nl, "token-delay-ms")) {
			if (header_u64(h, DELAY_MS_MAX, &v))
				j->token_delay_ms = v;
		} else if (NAME_IS(n, nl, "tokens")) {
			if (header_u64(h, TOKENS_MAX, &v))
				j->tokens = v;
		} else if (NAME_IS(n, nl, "disconnect-after")) {
			if (header_u64(h, TOKENS_MAX + 1, &v))
				j->disconnect_after = (int64_t)v;
		} else if (NAME_IS(n, nl, "malformed")) {
			j->malformed = h->value_len && !(h->value_len == 1 && h->value[0] == '0') &&
			               !NAME_IS(h->value, h->value_len, "false");
		} else if (NAME_IS(n, nl, "response-bytes")) {
			if (header_u64(h, RESPONSE_BYTES_MAX, &v))
				j->response_bytes = v;
		} else if (NAME_IS(n, nl, "thinking")) {
			int f = header_flag(h);
			if (f >= 0)
				j->think_hdr = f ? 2 : 1;
		} else if (NAME_IS(n, nl, "parallel-tools")) {
			if (header_u64(h, CALLS_MAX, &v))
				j->parallel = (uint16_t)v;
		} else if (NAME_IS(n, nl, "text-before-tools")) {
			j->text_before = header_flag(h) == 1;
		} else if (NAME_IS(n, nl, "tool-order")) {
			if (NAME_IS(h->value, h->value_len, "sequential"))
				j->tools_seq = true;
			else if (NAME_IS(h->value, h->value_len, "interleaved"))
				j->tools_seq = false;
		} else if (NAME_IS(n, nl, "cache-read")) {
			if (header_u64(h, CACHE_TOKENS_MAX, &v))
				j->cache_read = v;
		} else if (NAME_IS(n, nl, "cache-write")) {
			if (header_u64(h, CACHE_TOKENS_MAX, &v))
				j->cache_write = v;
		} else if (NAME_IS(n, nl, "cache-write-1h")) {
			if (header_u64(h, CACHE_TOKENS_MAX, &v))
				j->cache_write_1h = v;
		}
	}
	struct sl_str first = j->fmt == FMT_ANTHROPIC ? hi->api_key : hi->bearer;
	struct sl_str second = j->fmt == FMT_ANTHROPIC ? hi->bearer : hi->api_key;
	hi->key = first.len ? first : second;
}

/* --- x-mock-fault ------------------------------------------------------------------------ */

/* One SPEC: conditions (all must hold) and what to do. */
struct fault_spec {
	uint8_t kind;
	bool has_times;
	bool has_rate;
	uint16_t status;
	int64_t ra; /* -1: none */
	uint64_t delay_ms;
	uint64_t times;
	uint32_t rate_ppm;
	struct sl_str key;   /* ptr NULL: no key= condition */
	struct sl_str model; /* ptr NULL: no model= condition */
};

/* The x-request-ids seen with x-mock-fault (times=N): a ring of the newest
 * FAULT_IDS_MAX, chained in a hash table; shared by every thread. */
static struct {
	pthread_mutex_t mu;
	uint32_t used;
	uint32_t ring; /* the next slot to fill (the oldest once full) */
	uint32_t bucket[FAULT_ID_BUCKETS]; /* 1 + the chain's first slot; 0: empty */
	struct id_entry {
		uint64_t hash;
		uint32_t len;
		uint32_t count;
		uint32_t next; /* 1 + the next slot of the chain; 0: end */
		char id[FAULT_ID_BYTES];
	} e[FAULT_IDS_MAX];
} g_ids = { .mu = PTHREAD_MUTEX_INITIALIZER };

static uint64_t hash_bytes(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
	return h;
}

/* ids_seen counts one more request with this x-request-id and returns how
 * many came before it. */
static uint64_t ids_seen(struct sl_str id)
{
	uint64_t h = hash_bytes(id.ptr, id.len);
	size_t cmp = SL_MIN(id.len, (size_t)FAULT_ID_BYTES);
	uint32_t b = (uint32_t)(h & (FAULT_ID_BUCKETS - 1));
	uint64_t prior = 0;
	pthread_mutex_lock(&g_ids.mu);
	for (uint32_t i = g_ids.bucket[b]; i; i = g_ids.e[i - 1].next) {
		struct id_entry *e = &g_ids.e[i - 1];
		if (e->hash == h && e->len == id.len && memcmp(e->id, id.ptr, cmp) == 0) {
			prior = e->count;
			if (e->count < UINT32_MAX)
				e->count++;
			pthread_mutex_unlock(&g_ids.mu);
			return prior;
		}
	}
	uint32_t slot = g_ids.ring;
	g_ids.ring = (slot + 1) % FAULT_IDS_MAX;
	struct id_entry *e = &g_ids.e[slot];
	if (g_ids.used == FAULT_IDS_MAX) {
		/* evict the oldest id: unlink it from its chain */
		uint32_t *link = &g_ids.bucket[e->hash & (FAULT_ID_BUCKETS - 1)];
		while (*link != slot + 1)
			link = &g_ids.e[*link - 1].next;
		*link = e->next;
	} else {
		g_ids.used++;
	}
	e->hash = h;
	e->len = (uint32_t)id.len;
	e->count = 1;
	memcpy(e->id, id.ptr, cmp);
	e->next = g_ids.bucket[b];
	g_ids.bucket[b] = slot + 1;
	pthread_mutex_unlock(&g_ids.mu);
	return prior;
}

static void ids_reset(void)
{
	pthread_mutex_lock(&g_ids.mu);
	memset(g_ids.bucket, 0, sizeof(g_ids.bucket));
	g_ids.used = 0;
	g_ids.ring = 0;
	pthread_mutex_unlock(&g_ids.mu);
}

static uint64_t rng_next(struct worker *w)
{
	uint64_t z = (w->rng += 0x9e3779b97f4a7c15ull); /* splitmix64 */
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static struct sl_str str_trim(const char *p, const char *e)
{
	while (p < e && (*p == ' ' || *p == '\t'))
		p++;
	while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	return (struct sl_str){ p, (size_t)(e - p) };
}

/* str_u64 reads a decimal number (digits only; larger values count as max). */
static bool str_u64(struct sl_str s, uint64_t max, uint64_t *out)
{
	if (!s.len)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < s.len; i++) {
		if (s.ptr[i] < '0' || s.ptr[i] > '9')
			return false;
		if (v <= max)
			v = v * 10 + (uint64_t)(s.ptr[i] - '0');
	}
	*out = v > max ? max : v;
	return true;
}

/* str_rate reads a percentage 0..100 ("2.5") as parts per million. */
static bool str_rate(struct sl_str s, uint32_t *ppm)
{
	uint64_t whole = 0, frac = 0, scale = 10000;
	size_t i = 0;
	for (; i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9'; i++)
		if ((whole = whole * 10 + (uint64_t)(s.ptr[i] - '0')) > 100)
			return false;
	size_t int_digits = i;
	size_t frac_digits = 0;
	if (i < s.len && s.ptr[i] == '.') {
		for (i++; i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9'; i++, frac_digits++)
			if (scale > 1) {
				scale /= 10;
				frac += (uint64_t)(s.ptr[i] - '0') * scale;
			}
		if (!frac_digits)
			return false;
	}
	if (i != s.len || !int_digits)
		return false;
	uint64_t v = whole * 10000 + frac;
	if (v > RATE_ONE)
		return false;
	*ppm = (uint32_t)v;
	return true;
}

static void fault_error(struct job *j, const char *what, struct sl_str spec)
{
	int n = snprintf(j->msg, sizeof(j->msg), "x-mock-fault: %s in \"%.*s\" (SPEC is "
	                 "[key=K;][times=N;][rate=P;][model=M;][ra=S;]KIND, KIND one of 400..599, "
	                 "reset, close, delay:MS, midstream)",
	                 what, (int)SL_MIN(spec.len, (size_t)60), spec.ptr);
	j->msg_len = (uint16_t)(n < 0 ? 0 : SL_MIN((size_t)n, sizeof(j->msg) - 1));
	j->err_status = 400;
	j->err_type = "invalid_request_error";
}

/* fault_kind_parse reads the KIND token of a SPEC. */
static bool fault_kind_parse(struct sl_str t, struct fault_spec *f)
{
	uint64_t v;
	if (t.len && t.ptr[0] >= '0' && t.ptr[0] <= '9') {
		if (!str_u64(t, 999, &v) || v < 400 || v > 599)
			return false;
		f->kind = FK_STATUS;
		f->status = (uint16_t)v;
	} else if (NAME_IS(t.ptr, t.len, "reset")) {
		f->kind = FK_RESET;
	} else if (NAME_IS(t.ptr, t.len, "close")) {
		f->kind = FK_CLOSE;
	} else if (NAME_IS(t.ptr, t.len, "midstream")) {
		f->kind = FK_MIDSTREAM;
	} else if (t.len > 6 && sl_ascii_ieq(t.ptr, "delay:", 6)) {
		struct sl_str ms = str_trim(t.ptr + 6, t.ptr + t.len);
		if (!str_u64(ms, DELAY_MS_MAX, &f->delay_ms))
			return false;
		f->kind = FK_DELAY;
	} else {
		return false;
	}
	return true;
}

/* fault_parse appends the SPECs of one x-mock-fault value to specs[*n].
 * False (with the 400 prepared in j) when one is malformed. */
static bool fault_parse(struct job *j, const char *v, size_t len, struct fault_spec *specs,
                        unsigned *n)
{
	const char *p = v, *end = v + len;
	if (!str_trim(p, end).len)
		return true; /* an empty value: no SPEC */
	while (p <= end) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *se = comma ? comma : end;
		struct sl_str spec = str_trim(p, se);
		p = se + 1;
		if (!spec.len) {
			fault_error(j, "an empty SPEC", (struct sl_str){ v, len });
			return false;
		}
		if (*n == FAULT_SPECS_MAX) {
			fault_error(j, "too many SPECs (32 at most)", spec);
			return false;
		}
		struct fault_spec *f = &specs[*n];
		memset(f, 0, sizeof(*f));
		f->ra = -1;
		const char *q = spec.ptr, *qe = spec.ptr + spec.len;
		for (;;) {
			const char *semi = memchr(q, ';', (size_t)(qe - q));
			struct sl_str t = str_trim(q, semi ? semi : qe);
			if (!t.len) {
				fault_error(j, "an empty condition or KIND", spec);
				return false;
			}
			if (!semi) { /* the last token: the KIND */
				if (!fault_kind_parse(t, f)) {
					fault_error(j, memchr(t.ptr, '=', t.len) ? "no KIND at the end"
					                                          : "an unknown KIND", spec);
					return false;
				}
				break;
			}
			q = semi + 1;
			const char *eq = memchr(t.ptr, '=', t.len);
			if (!eq) {
				fault_error(j, "a condition without '=' (or a KIND before the end)", spec);
				return false;
			}
			struct sl_str name = str_trim(t.ptr, eq);
			struct sl_str val = str_trim(eq + 1, t.ptr + t.len);
			uint64_t x;
			if (!val.len) {
				fault_error(j, "an empty value", spec);
				return false;
			}
			if (NAME_IS(name.ptr, name.len, "key")) {
				f->key = val;
			} else if (NAME_IS(name.ptr, name.len, "model")) {
				f->model = val;
			} else if (NAME_IS(name.ptr, name.len, "times")) {
				if (!str_u64(val, 1000000000000000000ull, &f->times)) {
					fault_error(j, "times= needs a number", spec);
					return false;
				}
				f->has_times = true;
			} else if (NAME_IS(name.ptr, name.len, "rate")) {
				if (!str_rate(val, &f->rate_ppm)) {
					fault_error(j, "rate= needs a percentage 0..100", spec);
					return false;
				}
				f->has_rate = true;
			} else if (NAME_IS(name.ptr, name.len, "ra")) {
				if (!str_u64(val, UINT32_MAX, &x)) {
					fault_error(j, "ra= needs a number of seconds", spec);
					return false;
				}
				f->ra = (int64_t)x;
			} else {
				fault_error(j, "an unknown condition", spec);
				return false;
			}
		}
		if (f->ra >= 0 && f->kind != FK_STATUS) {
			fault_error(j, "ra= with a KIND that is not a status", spec);
			return false;
		}
		(*n)++;
	}
	return true;
}

/* apply_faults reads every x-mock-fault header of the request (present: hi)
 * and applies the first SPEC whose conditions hold. Called once the body
 * is scanned (model=, midstream's event count). */
static void apply_faults(struct conn *c, const struct sl_http_request *req,
                         const struct hdr_info *hi)
{
	struct job *j = &c->job;
	struct fault_spec specs[FAULT_SPECS_MAX];
	unsigned n = 0;
	for (uint32_t i = 0; i < req->num_headers; i++) {
		const struct sl_http_header *h = &req->headers[i];
		if (NAME_IS(h->name, h->name_len, "x-mock-fault") &&
		    !fault_parse(j, h->value, h->value_len, specs, &n))
			return;
	}
	if (!n)
		return;
	uint64_t prior = hi->rid.len ? ids_seen(hi->rid) : 0;
	for (unsigned i = 0; i < n; i++) {
		const struct fault_spec *f = &specs[i];
		if (f->key.ptr && !(hi->key.len == f->key.len && memcmp(hi->key.ptr, f->key.ptr, f->key.len) == 0))
			continue;
		if (f->model.ptr && !(j->model_set && j->model_len == f->model.len &&
		                      memcmp(j->model, f->model.ptr, f->model.len) == 0))
			continue;
		if (f->has_times && prior >= f->times)
			continue;
		if (f->has_rate && rng_next(c->w) % RATE_ONE >= f->rate_ppm)
			continue;
		atomic_fetch_add_explicit(&c->w->st->faults, 1, memory_order_relaxed);
		switch (f->kind) {
		case FK_STATUS:
			j->mock_status = f->status;
			if (f->ra >= 0)
				j->retry_after_s = f->ra;
			break;
		case FK_DELAY:
			j->first_byte_delay_ms = f->delay_ms;
			break;
		case FK_MIDSTREAM:
			j->midstream = true;
			j->disconnect_after = (int64_t)SL_MIN(j->steps, (uint64_t)2);
			j->fault = f->kind;
			break;
		default:
			j->fault = f->kind;
		}
		return;
	}
}

static void copy_json_string(struct sl_str v, char *dst, size_t dst_size, uint16_t *out_len)
{
	if (v.len < 2 || v.ptr[0] != '"')
		return;
	size_t n = js_str_cut(v.ptr + 1, v.len - 2, dst_size - 1);
	memcpy(dst, v.ptr + 1, n);
	*out_len = (uint16_t)n;
}

/* tool_name_at finds the name of the tool object at p: {"name":..}
 * (Anthropic) or {"type":"function","function":{"name":..}} (OpenAI). */
static bool tool_name_at(const char *p, const char *e, struct sl_str *name)
{
	struct js_obj o;
	struct sl_str k, val;
	if (!js_obj_open(&o, p, e))
		return false;
	while (js_obj_next(&o, &k, &val) > 0) {
		if (STR_IS(k, "name")) {
			*name = val;
			return val.len >= 2 && val.ptr[0] == '"';
		}
		if (STR_IS(k, "function")) {
			struct js_obj f;
			struct sl_str fk, fv;
			if (!js_obj_open(&f, val.ptr, val.ptr + val.len))
				continue;
			while (js_obj_next(&f, &fk, &fv) > 0)
				if (STR_IS(fk, "name")) {
					*name = fv;
					return fv.len >= 2 && fv.ptr[0] == '"';
				}
		}
	}
	return false;
}

/* scan_tools collects the names of the first tools (one, or as many as
 * x-mock-parallel-tools calls, up to TOOLS_MAX); a tool without a name is
 * "mock_tool". */
static void scan_tools(struct job *j, struct sl_str v)
{
	const char *e = v.ptr + v.len;
	const char *p = js_ws(v.ptr + 1, e);
	if (p >= e || *p == ']')
		return;
	j->tool = true;
	j->ntools = 0;
	j->tool_off[0] = 0;
	size_t want = j->parallel >= 2 ? SL_MIN((size_t)j->parallel, (size_t)TOOLS_MAX) : 1;
	while (j->ntools < want) {
		struct sl_str name;
		const char *s = "mock_tool";
		size_t len = 9;
		if (tool_name_at(p, e, &name)) {
			s = name.ptr + 1;
			len = js_str_cut(s, name.len - 2, TOOL_NAME_BYTES_MAX - 1);
		}
		size_t off = j->tool_off[j->ntools];
		if (off + len > TOOL_NAMES_BYTES)
			break;
		memcpy(j->tool_names + off, s, len);
		j->tool_off[++j->ntools] = (uint16_t)(off + len);
		const char *q = js_skip(p, e);
		q = q ? js_ws(q, e) : e;
		if (q >= e || *q != ',')
			break;
		p = js_ws(q + 1, e);
	}
}

/* stop_trim trims spaces and \n, \r, \t escapes off both ends of the raw
 * JSON string content s[0..*len); returns the new start. */
static const char *stop_trim(const char *s, size_t *len)
{
	size_t n = *len;
	for (;;) {
		if (n && s[0] == ' ') {
			s++;
			n--;
		} else if (n >= 2 && s[0] == '\\' && (s[1] == 'n' || s[1] == 'r' || s[1] == 't')) {
			s += 2;
			n -= 2;
		} else {
			break;
		}
	}
	for (;;) {
		if (n && s[n - 1] == ' ')
			n--;
		else if (n >= 2 && s[n - 2] == '\\' && (s[n - 1] == 'n' || s[n - 1] == 'r' || s[n - 1] == 't'))
			n -= 2;
		else
			break;
	}
	*len = n;
	return s;
}

/* stop_consider notes the stop sequence v (a raw JSON value) when it equals
 * a word of the answer, trimmed, earlier than the one noted so far. The
 * words repeat every 16, so the first match is among the first 16. */
static void stop_consider(struct job *j, struct sl_str v)
{
	if (v.len < 2 || v.ptr[0] != '"' || v.len - 2 > STOP_RAW_BYTES)
		return;
	size_t tl = v.len - 2;
	const char *t = stop_trim(v.ptr + 1, &tl);
	if (!tl)
		return;
	for (unsigned i = 0; i < 16 && (!j->stop_idx || i + 1 < j->stop_idx); i++) {
		const struct word *wd = &g_words[i];
		size_t skip = wd->s[0] == ' ';
		if (wd->len - skip == tl && memcmp(wd->s + skip, t, tl) == 0) {
			j->stop_idx = (uint8_t)(i + 1);
			j->stop_len = (uint8_t)(v.len - 2);
			memcpy(j->stop_raw, v.ptr + 1, v.len - 2);
			return;
		}
	}
}

/* scan_stops reads "stop" (a string or an array of strings) or
 * "stop_sequences" (an array of strings). */
static void scan_stops(struct job *j, struct sl_str v)
{
	if (v.ptr[0] == '"') {
		stop_consider(j, v);
		return;
	}
	if (v.ptr[0] != '[')
		return;
	const char *e = v.ptr + v.len;
	const char *p = js_ws(v.ptr + 1, e);
	while (p < e && *p != ']') {
		const char *q = js_skip(p, e);
		if (!q)
			return;
		stop_consider(j, (struct sl_str){ p, (size_t)(q - p) });
		q = js_ws(q, e);
		if (q >= e || *q != ',')
			return;
		p = js_ws(q + 1, e);
	}
}

/* thinking_enabled: an Anthropic "thinking" object of type "enabled" (or
 * "adaptive"). */
static bool thinking_enabled(struct sl_str v)
{
	struct js_obj o;
	struct sl_str k, val;
	if (!js_obj_open(&o, v.ptr, v.ptr + v.len))
		return false;
	while (js_obj_next(&o, &k, &val) > 0)
		if (STR_IS(k, "type"))
			return STR_IS(val, "\"enabled\"") || STR_IS(val, "\"adaptive\"");
	return false;
}

/* parse_body reads the top-level keys the answer depends on. Returns false
 * when the body is not a JSON object. */
static bool parse_body(struct job *j, const char *body, size_t len)
{
	struct js_obj o;
	struct sl_str k, v;
	if (!js_obj_open(&o, body, body + len))
		return false;
	int r;
	while ((r = js_obj_next(&o, &k, &v)) > 0) {
		switch (k.len) {
		case 1:
			if (STR_IS(k, "n") && j->ep == EP_IMAGES)
				js_uint(v, IMAGES_MAX, &j->images);
			break;
		case 4:
			if (STR_IS(k, "stop") && (j->ep == EP_CHAT || j->ep == EP_COMPLETIONS))
				scan_stops(j, v);
			break;
		case 5:
			if (STR_IS(k, "model")) {
				copy_json_string(v, j->model, sizeof(j->model), &j->model_len);
				j->model_set = v.len >= 2 && v.ptr[0] == '"';
			}
			else if (STR_IS(k, "tools") && v.ptr[0] == '[' && j->ep != EP_COMPLETIONS)
				scan_tools(j, v);
			else if (STR_IS(k, "input") && j->ep == EP_EMBEDDINGS && v.ptr[0] == '[') {
				const char *p = js_ws(v.ptr + 1, v.ptr + v.len);
				if (p < v.ptr + v.len && (*p == '"' || *p == '['))
					j->embed_inputs = js_array_count(v.ptr, v.ptr + v.len);
			}
			break;
		case 6:
			if (STR_IS(k, "stream"))
				j->stream = STR_IS(v, "true");
			break;
		case 8:
			if (STR_IS(k, "thinking") && j->ep == EP_MESSAGES)
				j->think_body = thinking_enabled(v);
			break;
		case 10:
			if (STR_IS(k, "max_tokens"))
				js_uint(v, TOKENS_MAX, &j->max_tokens);
			else if (STR_IS(k, "dimensions"))
				js_uint(v, EMBED_DIMS_MAX, &j->embed_dims);
			break;
		case 14:
			if (STR_IS(k, "stream_options")) {
				struct js_obj so;
				struct sl_str sk, sv;
				if (js_obj_open(&so, v.ptr, v.ptr + v.len))
					while (js_obj_next(&so, &sk, &sv) > 0)
						if (STR_IS(sk, "include_usage"))
							j->include_usage = STR_IS(sv, "true");
			} else if (STR_IS(k, "stop_sequences") && j->ep == EP_MESSAGES) {
				scan_stops(j, v);
			}
			break;
		case 15:
			if (STR_IS(k, "encoding_format"))
				j->embed_base64 = STR_IS(v, "\"base64\"");
			else if (STR_IS(k, "response_format") && j->ep == EP_IMAGES)
				j->images_b64 = STR_IS(v, "\"b64_json\"");
			break;
		case 16:
			if (STR_IS(k, "reasoning_effort") && j->ep == EP_CHAT)
				j->think_body = !STR_IS(v, "null") && !STR_IS(v, "\"none\"");
			break;
		case 21:
			if (STR_IS(k, "max_completion_tokens"))
				js_uint(v, TOKENS_MAX, &j->max_tokens);
			break;
		default:
			break;
		}
	}
	if (r < 0)
		return false;
	return js_ws(o.p, body + len) == body + len;
}

/* key_count adds one request for key (under st->lock). */
static void key_count(struct thread_stats *st, struct sl_str key)
{
	size_t len = SL_MIN(key.len, (size_t)KEY_BYTES_MAX);
	for (uint32_t i = 0; i < st->nkeys; i++) {
		struct key_count *k = &st->keys[i];
		if (k->len == len && memcmp(k->key, key.ptr, len) == 0) {
			k->count++;
			return;
		}
	}
	if (st->nkeys == KEYS_MAX)
		return; /* bounded: further keys are not counted */
	struct key_count *k = &st->keys[st->nkeys++];
	k->count = 1;
	k->len = (uint32_t)len;
	memcpy(k->key, key.ptr, len);
}

/* record_request keeps the request for last_request and counts key (a
 * generation request's API key; len 0: none). */
static void record_request(struct conn *c, const char *head, size_t head_len, const char *body,
                           size_t body_len, struct sl_str key)
{
	struct thread_stats *st = c->w->st;
	uint64_t seq = atomic_fetch_add_explicit(&g_seq, 1, memory_order_relaxed) + 1;
	size_t copy = SL_MIN(body_len, (size_t)STATS_BODY_BYTES);
	SL_ASSERT(head_len <= HEAD_BYTES_MAX);
	spin_lock(&st->lock);
	st->last.seq = seq;
	st->last.head_len = (uint32_t)head_len;
	memcpy(st->last.head, head, head_len);
	st->last.body_len = body_len;
	st->last.body_copied = (uint32_t)copy;
	if (copy)
		memcpy(st->last.body, body, copy);
	if (key.len)
		key_count(st, key);
	spin_unlock(&st->lock);
}

static void respond_stats(struct conn *c)
{
	struct worker *w = c->w;
	struct buf *b = &w->sb;
	uint64_t accepted = 0, requests = 0, best = 0;
	uint64_t tls_full = 0, tls_resumed = 0, tls_failed = 0, sni_best = 0, faults = 0;
	struct key_count *keys = w->keys_copy;
	uint32_t nkeys = 0;
	uint32_t sni_len = 0;
	char sni[SNI_BYTES_MAX];
	int64_t open = 0;
	for (int i = 0; i < g_nthreads; i++) {
		struct thread_stats *st = &g_stats[i];
		accepted += atomic_load_explicit(&st->accepted, memory_order_relaxed);
		open += atomic_load_explicit(&st->open, memory_order_relaxed);
		requests += atomic_load_explicit(&st->requests, memory_order_relaxed);
		tls_full += atomic_load_explicit(&st->tls_full, memory_order_relaxed);
		tls_resumed += atomic_load_explicit(&st->tls_resumed, memory_order_relaxed);
		tls_failed += atomic_load_explicit(&st->tls_failed, memory_order_relaxed);
		faults += atomic_load_explicit(&st->faults, memory_order_relaxed);
		spin_lock(&st->lock);
		for (uint32_t k = 0; k < st->nkeys; k++) {
			const struct key_count *kc = &st->keys[k];
			uint32_t m = 0;
			while (m < nkeys && !(keys[m].len == kc->len && memcmp(keys[m].key, kc->key, kc->len) == 0))
				m++;
			if (m < nkeys) {
				keys[m].count += kc->count;
			} else if (nkeys < KEYS_MAX) {
				keys[nkeys].count = kc->count;
				keys[nkeys].len = kc->len;
				memcpy(keys[nkeys].key, kc->key, kc->len);
				nkeys++;
			}
		}
		if (st->sni_seq > sni_best) {
			sni_best = st->sni_seq;
			sni_len = st->sni_len;
			memcpy(sni, st->sni, sni_len);
		}
		if (st->last.seq > best) {
			best = st->last.seq;
			struct last_request *lr = w->lr_copy;
			lr->seq = st->last.seq;
			lr->head_len = st->last.head_len;
			lr->body_len = st->last.body_len;
			lr->body_copied = st->last.body_copied;
			memcpy(lr->head, st->last.head, st->last.head_len);
			memcpy(lr->body, st->last.body, st->last.body_copied);
		}
		spin_unlock(&st->lock);
	}
	b->len = 0;
	PUT_LIT(b, "{\"connections_accepted\":");
	put_u64(b, accepted);
	PUT_LIT(b, ",\"connections_open\":");
	put_u64(b, open > 0 ? (uint64_t)open : 0);
	PUT_LIT(b, ",\"requests\":");
	put_u64(b, requests);
	PUT_LIT(b, ",\"requests_by_key\":{");
	for (uint32_t k = 0; k < nkeys; k++) {
		if (k)
			put_ch(b, ',');
		put_ch(b, '"');
		put_json_escaped(b, keys[k].key, keys[k].len);
		PUT_LIT(b, "\":");
		put_u64(b, keys[k].count);
	}
	PUT_LIT(b, "},\"faults_injected\":");
	put_u64(b, faults);
	PUT_LIT(b, ",\"tls_handshakes\":");
	put_u64(b, tls_full);
	PUT_LIT(b, ",\"tls_resumed\":");
	put_u64(b, tls_resumed);
	PUT_LIT(b, ",\"tls_failed\":");
	put_u64(b, tls_failed);
	PUT_LIT(b, ",\"tls_last_sni\":\"");
	put_json_escaped(b, sni, sni_len);
	PUT_LIT(b, "\",\"last_request\":");
	struct sl_http_request req;
	req.headers = w->stats_hdrs;
	const struct last_request *lr = w->lr_copy;
	if (!best || sl_http_parse_request(lr->head, lr->head_len, &req, &g_limits) < 0) {
		PUT_LIT(b, "null}");
	} else {
		PUT_LIT(b, "{\"method\":\"");
		put_json_escaped(b, req.method_str, req.method_len);
		PUT_LIT(b, "\",\"path\":\"");
		put_json_escaped(b, req.target, req.target_len);
		PUT_LIT(b, "\",\"headers\":[");
		for (uint32_t i = 0; i < req.num_headers; i++) {
			const struct sl_http_header *h = &req.headers[i];
			if (i)
				put_ch(b, ',');
			PUT_LIT(b, "[\"");
			put_json_escaped(b, h->name, h->name_len);
			PUT_LIT(b, "\",\"");
			put_json_escaped(b, h->value, h->value_len);
			PUT_LIT(b, "\"]");
		}
		PUT_LIT(b, "],\"body_len\":");
		put_u64(b, lr->body_len);
		PUT_LIT(b, ",\"body\":\"");
		put_json_escaped(b, lr->body, lr->body_copied);
		PUT_LIT(b, "\"}}");
	}
	send_body(c, 200, CT_JSON, b, false);
}

static void respond_reset(struct conn *c)
{
	for (int i = 0; i < g_nthreads; i++) {
		struct thread_stats *st = &g_stats[i];
		/* connections_open is a gauge: it is not reset */
		atomic_store_explicit(&st->accepted, 0, memory_order_relaxed);
		atomic_store_explicit(&st->requests, 0, memory_order_relaxed);
		atomic_store_explicit(&st->tls_full, 0, memory_order_relaxed);
		atomic_store_explicit(&st->tls_resumed, 0, memory_order_relaxed);
		atomic_store_explicit(&st->tls_failed, 0, memory_order_relaxed);
		atomic_store_explicit(&st->faults, 0, memory_order_relaxed);
		spin_lock(&st->lock);
		st->nkeys = 0;
		st->last.seq = 0;
		st->sni_seq = 0;
		spin_unlock(&st->lock);
	}
	ids_reset();
	struct buf *b = &c->w->sb;
	b->len = 0;
	PUT_LIT(b, "{\"ok\":true}");
	send_body(c, 200, CT_JSON, b, false);
}

/* job_shape derives what the answer holds from the request: thinking,
 * text, tool calls, a stop sequence ending the text; the output tokens and
 * the number of content deltas of a stream. */
static void job_shape(struct job *j)
{
	if (j->ep == EP_CHAT || j->ep == EP_MESSAGES)
		j->thinking = j->think_hdr ? j->think_hdr == 2 : j->think_body;
	j->has_text = !j->tool || j->text_before;
	if (j->has_text && j->stop_idx && j->stop_idx - 1u < j->out_tokens) {
		/* the text ends before the stop word; no tool calls follow */
		j->out_tokens = j->stop_idx - 1u;
		j->capped = false;
		j->stop_hit = true;
		j->tool = false;
	}
	j->ncalls = j->tool ? (j->parallel >= 2 ? j->parallel : 1) : 0;
	j->rich = j->thinking || j->ncalls > 1 || (j->ncalls && j->text_before);
	uint64_t blocks = (j->has_text ? 1u : 0u) + j->ncalls;
	if (blocks > 1 && j->out_tokens > TOKENS_MAX / blocks)
		j->out_tokens = TOKENS_MAX / blocks; /* all blocks' words together: TOKENS_MAX */
	uint64_t n = j->out_tokens;
	j->usage_out = usage_of(j, n);
	j->steps = n;
	if (j->rich) {
		uint64_t think = j->thinking ? THINK_STEPS : 0;
		if (j->ep == EP_MESSAGES)
			j->steps = think + ((j->has_text ? 1u : 0u) + j->ncalls) * n;
		else /* a call of 0 words still has one delta: "{}" */
			j->steps = think + (j->has_text ? n : 0) + j->ncalls * SL_MAX(n, (uint64_t)1);
	}
}

/* handle_request answers one complete request whose bytes were consumed
 * already (head and body stay valid until the next read). */
static void handle_request(struct conn *c, const struct sl_http_request *req, const char *head,
                           size_t head_len, const char *body, size_t body_len)
{
	struct job *j = &c->job;
	job_init(c);
	j->keep_alive = req->keep_alive;
	j->http10 = req->version_minor == 0;
	j->head_only = req->method == SL_METHOD_HEAD;
	route(j, req);
	atomic_fetch_add_explicit(&c->w->st->requests, 1, memory_order_relaxed);
	if (j->ep == EP_STATS) {
		respond_stats(c);
		return;
	}
	if (j->ep == EP_RESET) {
		respond_reset(c);
		return;
	}
	struct hdr_info hi = { 0 };
	parse_mock_headers(j, req, &hi);
	bool generation = j->ep == EP_CHAT || j->ep == EP_COMPLETIONS || j->ep == EP_MESSAGES ||
	                  j->ep == EP_EMBEDDINGS || j->ep == EP_IMAGES;
	record_request(c, head, head_len, body, body_len, generation ? hi.key : (struct sl_str){ 0 });
	j->input_tokens = SL_MAX(body_len / 4, (size_t)1);
	j->created = (uint64_t)time(NULL);
	if (!j->err_status && j->ep != EP_MODELS && j->ep != EP_MODEL)
		j->json_bad = !parse_body(j, body, body_len);
	j->out_tokens = j->tokens;
	if (j->max_tokens < j->out_tokens) {
		j->out_tokens = j->max_tokens;
		j->capped = true;
	}
	job_shape(j);
	if (j->embed_dims == 0)
		j->embed_dims = 1;
	if (j->embed_inputs > EMBED_INPUTS_MAX)
		j->embed_inputs = EMBED_INPUTS_MAX;
	if (j->embed_inputs * j->embed_dims > EMBED_FLOATS_MAX)
		j->embed_dims = SL_MAX(EMBED_FLOATS_MAX / j->embed_inputs, (uint64_t)1);
	if (SL_UNLIKELY(hi.fault) && !j->err_status && !j->malformed)
		apply_faults(c, req, &hi);
	if (j->first_byte_delay_ms) {
		c->state = ST_WAIT_FIRST_BYTE;
		timer_set(c, j->first_byte_delay_ms);
		return;
	}
	respond_start(c);
}

/* fail_request answers an unparseable or oversized request and closes. */
static void fail_request(struct conn *c, unsigned status, const char *msg)
{
	job_init(c);
	c->job.keep_alive = false;
	respond_error(c, status, "invalid_request_error", msg, strlen(msg));
	c->state = ST_CLOSING;
}

static void send_continue(struct conn *c, const struct sl_http_request *req)
{
	if (req->expect_continue && !c->sent_continue) {
		PUT_LIT(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
		c->sent_continue = true;
	}
}

/* conn_process answers every complete request in the input buffer, in
 * order, until one leaves the connection busy (delay, stream, closing). */
static void conn_process(struct conn *c)
{
	struct worker *w = c->w;
	while (c->state == ST_IDLE) {
		size_t avail = c->in_len - c->in_off;
		if (!avail) {
			c->in_off = c->in_len = 0;
			if (SL_UNLIKELY(c->in_cap > IN_BYTES_SHRINK)) {
				char *p = realloc(c->in, IN_BYTES_INITIAL);
				if (p) {
					c->in = p;
					c->in_cap = IN_BYTES_INITIAL;
				}
			}
			return;
		}
		char *p = c->in + c->in_off;
		struct sl_http_request req;
		req.headers = w->hdrs;
		ssize_t r = sl_http_parse_request(p, avail, &req, &g_limits);
		if (r == SL_INCOMPLETE) {
			if (!conn_need(c, avail + 1))
				fail_request(c, 431, "Request header fields too large");
			return;
		}
		if (r < 0) {
			fail_request(c, req.error_status ? req.error_status : 400,
			             req.error_message ? req.error_message : "Bad request");
			return;
		}
		size_t head_len = (size_t)r, total = head_len, body_len = 0;
		if (req.framing == SL_BODY_LENGTH) {
			if (req.content_length > BODY_BYTES_MAX) {
				fail_request(c, 413, "Request body too large");
				return;
			}
			if (avail - head_len < req.content_length) {
				send_continue(c, &req);
				conn_need(c, head_len + req.content_length);
				return;
			}
			body_len = req.content_length;
			total += body_len;
		} else if (req.framing == SL_BODY_CHUNKED) {
			if (!c->chunk_active) {
				sl_chunked_init(&c->chunked);
				c->chunk_active = true;
				c->body_raw = c->body_len = 0;
			}
			size_t raw = avail - head_len - c->body_raw;
			if (raw && !c->chunked.complete) {
				size_t out_n = 0;
				ssize_t n = sl_chunked_feed(&c->chunked, p + head_len + c->body_raw, raw,
				                            p + head_len + c->body_len, &out_n);
				if (n < 0) {
					c->chunk_active = false;
					fail_request(c, 400, "Invalid chunked body");
					return;
				}
				c->body_raw += (size_t)n;
				c->body_len += out_n;
			}
			if (c->body_len > BODY_BYTES_MAX) {
				c->chunk_active = false;
				fail_request(c, 413, "Request body too large");
				return;
			}
			if (!c->chunked.complete) {
				send_continue(c, &req);
				if (!conn_need(c, avail + 1)) {
					c->chunk_active = false;
					fail_request(c, 413, "Request body too large");
				}
				return;
			}
			c->chunk_active = false;
			body_len = c->body_len;
			total += c->body_raw;
		}
		c->in_off += total;
		c->sent_continue = false;
		handle_request(c, &req, p, head_len, p + head_len, body_len);
	}
}

/* conn_eof: the peer closed its side (or TLS reported EOF): as conn_read. */
static int conn_eof(struct conn *c)
{
	c->can_read = false;
	if (c->state == ST_CLOSING)
		return 0; /* half-closed peer: still deliver the last answer */
	if (c->state == ST_IDLE && conn_out_pending(c)) {
		c->state = ST_CLOSING;
		return 0;
	}
	/* EOF while busy: the client gave up on the answer (cancel it) */
	conn_kill(c);
	return -1;
}

/* conn_read_tls: conn_read for a TLS connection. SSL_read returns at most a
 * record, and may hold decrypted bytes (SSL_pending) the socket no longer
 * signals: the socket counts as drained only on SSL_ERROR_WANT_READ. */
static int conn_read_tls(struct conn *c, size_t space)
{
	ERR_clear_error();
	errno = 0;
	int n = SSL_read(c->ssl, c->in + c->in_len, (int)SL_MIN(space, (size_t)INT_MAX));
	if (n > 0) {
		c->in_len += (size_t)n;
		return 1;
	}
	int e = SSL_get_error(c->ssl, n);
	if (e == SSL_ERROR_WANT_READ) {
		c->can_read = false;
		return 0;
	}
	if (e == SSL_ERROR_WANT_WRITE)
		return 0; /* can_read stays: the next EPOLLOUT retries the read */
	if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0))
		return conn_eof(c); /* close_notify, or a FIN without one */
	if (e == SSL_ERROR_SYSCALL && errno == EINTR)
		return 1;
	conn_kill(c);
	return -1;
}

/* conn_read reads what fits into the input buffer. Returns 1 when bytes
 * arrived, 0 when there is nothing more to read now, -1 when the connection
 * was closed (EOF or error). */
static int conn_read(struct conn *c)
{
	if (c->in_len == c->in_cap) {
		if (!c->in_off) {
			/* full while busy: read again once it is consumed; but a peer
			 * that closed (FIN or RST) during a delay or a stream cancels
			 * it (as the EOF behind these bytes would) */
			if (c->peer_fin && (c->state == ST_WAIT_FIRST_BYTE || c->state == ST_STREAM)) {
				conn_kill(c);
				return -1;
			}
			return 0;
		}
		memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
		c->in_len -= c->in_off;
		c->in_off = 0;
	}
	size_t space = c->in_cap - c->in_len;
	if (SL_UNLIKELY(c->ssl))
		return conn_read_tls(c, space);
	ssize_t n = read(c->fd, c->in + c->in_len, space);
	if (n > 0) {
		c->in_len += (size_t)n;
		/* A short read drained the socket and edge-triggered epoll will
		 * report new data, unless the peer's FIN is already queued behind
		 * it: that edge has fired, so read on until EOF is seen. */
		if ((size_t)n < space && !c->peer_fin)
			c->can_read = false;
		return 1;
	}
	if (n < 0 && errno == EAGAIN) {
		c->can_read = false;
		return 0;
	}
	if (n < 0 && errno == EINTR)
		return 1;
	if (n == 0)
		return conn_eof(c);
	conn_kill(c);
	return -1;
}

static void conn_linger(struct conn *c)
{
	char sink[16384];
	for (;;) {
		ssize_t n = read(c->fd, sink, sizeof(sink));
		if (n > 0)
			continue;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			c->can_read = false;
			return;
		}
		conn_kill(c);
		return;
	}
}

/* rst_wait: before an RST, the bytes written so far (x-mock-fault
 * midstream's head and partial answer) must have left the socket: an RST
 * discards what is still unsent. True while some are (a short timer
 * retries), for at most LINGER_MS. */
static bool rst_wait(struct conn *c)
{
	int unsent = 0;
	if (ioctl(c->fd, SIOCOUTQNSD, &unsent) < 0 || unsent <= 0)
		return false;
	int64_t now = c->w->now_us;
	if (!c->rst_until_us)
		c->rst_until_us = now + (int64_t)LINGER_MS * 1000;
	if (now >= c->rst_until_us)
		return false;
	timer_set(c, 1);
	return true;
}

/* conn_drive moves a connection forward after any event: answer what can be
 * answered, write, read, until it waits for the socket or a timer. */
static void conn_drive(struct conn *c)
{
	for (;;) {
		if (c->state == ST_DEAD)
			return;
		if (SL_UNLIKELY(c->ssl) && !c->tls_done && !tls_handshake(c))
			return;
		if (c->state == ST_LINGER) {
			if (c->can_read)
				conn_linger(c);
			return;
		}
		if (c->state == ST_IDLE)
			conn_process(c);
		if (conn_flush(c) < 0) {
			conn_kill(c);
			return;
		}
		bool pending = conn_out_pending(c);
		if (!pending && c->state == ST_STREAM && c->want_out) {
			c->want_out = false;
			stream_pump(c);
			continue;
		}
		if (!pending && c->state == ST_CLOSING) {
			if (c->abrupt) {
				if (SL_UNLIKELY(c->rst) && rst_wait(c))
					return;
				conn_kill(c);
				return;
			}
			if (SL_UNLIKELY(c->ssl) && !c->no_notify) {
				/* close_notify (best effort): an abrupt close sends none, so a
				 * client can tell a cut answer from a complete one */
				ERR_clear_error();
				SSL_shutdown(c->ssl);
			}
			shutdown(c->fd, SHUT_WR);
			c->state = ST_LINGER;
			timer_set(c, LINGER_MS);
			continue;
		}
		if (!c->can_read)
			return;
		if (conn_read(c) <= 0)
			return;
	}
}

static void conn_on_timer(struct conn *c)
{
	switch (c->state) {
	case ST_WAIT_FIRST_BYTE:
		c->state = ST_IDLE;
		respond_start(c);
		break;
	case ST_STREAM:
		c->job.delay_elapsed = true;
		stream_pump(c);
		break;
	case ST_LINGER:
		conn_kill(c);
		return;
	case ST_CLOSING: /* rst_wait */
		break;
	default:
		return;
	}
	conn_drive(c);
}

static void conn_on_event(struct conn *c, uint32_t events)
{
	if (events & EPOLLERR) {
		conn_kill(c);
		return;
	}
	if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))
		c->can_read = true;
	if (events & (EPOLLRDHUP | EPOLLHUP))
		c->peer_fin = true;
	conn_drive(c);
}

/* --- workers ---------------------------------------------------------------------------- */

static void worker_accept(struct worker *w, int lfd, bool tls)
{
	for (int i = 0; i < ACCEPTS_PER_WAKE; i++) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE) {
				static atomic_bool warned;
				if (!atomic_exchange(&warned, true))
					fputs("sluice-mock: out of file descriptors; raise ulimit -n\n", stderr);
			}
			return;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct conn *c = calloc(1, sizeof(*c));
		char *in = malloc(IN_BYTES_INITIAL);
		char *out = malloc(OUT_BYTES_INITIAL);
		if (!c || !in || !out)
			die_oom();
		c->fd = fd;
		c->w = w;
		c->heap_idx = -1;
		c->state = ST_IDLE;
		c->in = in;
		c->in_cap = IN_BYTES_INITIAL;
		c->out.ptr = out;
		c->out.cap = OUT_BYTES_INITIAL;
		if (tls) {
			c->ssl = SSL_new(g_ssl_ctx);
			if (!c->ssl || !SSL_set_fd(c->ssl, fd))
				die_oom();
			SSL_set_accept_state(c->ssl);
			SSL_set_app_data(c->ssl, c);
		}
		c->next = w->conns;
		if (w->conns)
			w->conns->prev = c;
		w->conns = c;
		atomic_fetch_add_explicit(&w->st->accepted, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&w->st->open, 1, memory_order_relaxed);
		struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
			                  .data.ptr = c };
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
			conn_kill(c);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct epoll_event evs[EVENTS_MAX];
	w->now_us = now_us();
	for (;;) {
		int timeout_ms = -1;
		if (w->heap_len) {
			int64_t d = w->heap[0]->deadline_us - now_us();
			timeout_ms = d <= 0 ? 0 : (int)SL_MIN((d + 999) / 1000, (int64_t)INT_MAX);
		}
		int n = epoll_wait(w->epfd, evs, EVENTS_MAX, timeout_ms);
		if (n < 0 && errno != EINTR) {
			perror("sluice-mock: epoll_wait");
			exit(1);
		}
		w->now_us = now_us();
		bool stop = false;
		for (int i = 0; i < n; i++) {
			void *ptr = evs[i].data.ptr;
			if (!ptr)
				worker_accept(w, w->lfd, g_listen_tls);
			else if (ptr == w)
				stop = true;
			else if (ptr == &w->tls_lfd)
				worker_accept(w, w->tls_lfd, true);
			else
				conn_on_event(ptr, evs[i].events);
		}
		if (w->heap_len) {
			w->now_us = now_us();
			while (w->heap_len && w->heap[0]->deadline_us <= w->now_us) {
				struct conn *c = w->heap[0];
				timer_cancel(c);
				conn_on_timer(c);
			}
		}
		if (stop)
			while (w->conns)
				conn_kill(w->conns);
		while (w->dead) {
			struct conn *c = w->dead;
			w->dead = c->next;
			conn_free(c);
		}
		if (stop)
			break;
	}
	close(w->lfd);
	if (w->tls_lfd >= 0)
		close(w->tls_lfd);
	close(w->stop_fd);
	close(w->epfd);
	free(w->heap);
	free(w->hb.ptr);
	free(w->sb.ptr);
	free(w->eb.ptr);
	free(w->lr_copy);
	free(w->keys_copy);
	return NULL;
}

/* --- start-up ------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
	fputs("usage: sluice-mock [--listen HOST:PORT] [--threads N]\n"
	      "                   [--tls-cert FILE --tls-key FILE [--tls-listen HOST:PORT]]\n"
	      "  a fake OpenAI/Anthropic provider for tests and benchmarks (tools/mock.md)\n"
	      "  --listen HOST:PORT      default 127.0.0.1:9100; port 0 picks a free port\n"
	      "  --threads N             worker threads, each with its own SO_REUSEPORT listener\n"
	      "                          (default 1; 0 = one per online CPU)\n"
	      "  --tls-cert FILE         PEM certificate (chain: leaf first) for TLS 1.2/1.3\n"
	      "  --tls-key FILE          PEM private key of --tls-cert\n"
	      "  --tls-listen HOST:PORT  serve TLS here and plain HTTP on --listen; without\n"
	      "                          it, --tls-cert makes --listen itself TLS\n",
	      f);
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void init_embedding_table(void)
{
	uint32_t x = 0x2545f491;
	for (int i = 0; i < EMBED_TABLE_LEN; i++) {
		x = x * 1664525u + 1013904223u;
		double v = ((double)((x >> 8) & 0xffff) - 32768.0) / 327680.0; /* [-0.1, 0.1) */
		int n = snprintf(g_emb_str[i], sizeof(g_emb_str[i]), "%.9g", v);
		g_emb_len[i] = (uint8_t)n;
		g_emb_val[i] = strtof(g_emb_str[i], NULL);
	}
}

/* parse_addr resolves HOST:PORT or [V6]:PORT (opt names the option in errors). */
static bool parse_addr(const char *opt, const char *addr, struct sockaddr_storage *ss,
                       socklen_t *ss_len)
{
	char host[256];
	const char *colon = strrchr(addr, ':');
	if (!colon || (size_t)(colon - addr) >= sizeof(host)) {
		fprintf(stderr, "sluice-mock: %s %s: expected HOST:PORT\n", opt, addr);
		return false;
	}
	size_t host_len = (size_t)(colon - addr);
	const char *hp = addr;
	if (host_len >= 2 && hp[0] == '[' && hp[host_len - 1] == ']') {
		hp++;
		host_len -= 2;
	}
	memcpy(host, hp, host_len);
	host[host_len] = 0;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
		                  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *ai;
	int gai = getaddrinfo(host_len ? host : NULL, colon + 1, &hints, &ai);
	if (gai) {
		fprintf(stderr, "sluice-mock: %s %s: %s\n", opt, addr, gai_strerror(gai));
		return false;
	}
	*ss_len = ai->ai_addrlen;
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	return true;
}

static void tls_die(const char *what, const char *file)
{
	char msg[256];
	ERR_error_string_n(ERR_get_error(), msg, sizeof(msg));
	fprintf(stderr, "sluice-mock: %s%s%s: %s\n", what, file ? " " : "", file ? file : "", msg);
	exit(2);
}

/* tls_setup loads the certificate (chain) and key: TLS 1.2 and 1.3, session
 * resumption by tickets and the server session cache (BoringSSL's defaults). */
static SSL_CTX *tls_setup(const char *cert, const char *key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		tls_die("SSL_CTX_new", NULL);
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION))
		tls_die("TLS versions", NULL);
	if (!SSL_CTX_use_certificate_chain_file(ctx, cert))
		tls_die("--tls-cert", cert);
	if (!SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM))
		tls_die("--tls-key", key);
	if (!SSL_CTX_check_private_key(ctx))
		tls_die("--tls-key does not match --tls-cert", NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	static const uint8_t sid_ctx[] = "sluice-mock";
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_set_select_certificate_cb(ctx, on_client_hello);
	return ctx;
}

static void print_ready(const char *what, const struct sockaddr_storage *ss)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		fprintf(stderr, "sluice-mock: %s [%s]:%u\n", what, ip, (unsigned)ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		fprintf(stderr, "sluice-mock: %s %s:%u\n", what, ip, (unsigned)ntohs(s4->sin_port));
	}
}

static int open_listener(const struct sockaddr *addr, socklen_t addr_len)
{
	int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("sluice-mock: socket");
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		die("sluice-mock: SO_REUSEPORT");
	if (bind(fd, addr, addr_len) < 0)
		die("sluice-mock: bind");
	if (listen(fd, 4096) < 0)
		die("sluice-mock: listen");
	return fd;
}

int main(int argc, char **argv)
{
	const char *listen_addr = "127.0.0.1:9100";
	const char *tls_listen_addr = NULL, *tls_cert = NULL, *tls_key = NULL;
	long threads = 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--listen") && i + 1 < argc)
			listen_addr = argv[++i];
		else if (!strncmp(a, "--listen=", 9))
			listen_addr = a + 9;
		else if (!strcmp(a, "--tls-listen") && i + 1 < argc)
			tls_listen_addr = argv[++i];
		else if (!strncmp(a, "--tls-listen=", 13))
			tls_listen_addr = a + 13;
		else if (!strcmp(a, "--tls-cert") && i + 1 < argc)
			tls_cert = argv[++i];
		else if (!strncmp(a, "--tls-cert=", 11))
			tls_cert = a + 11;
		else if (!strcmp(a, "--tls-key") && i + 1 < argc)
			tls_key = argv[++i];
		else if (!strncmp(a, "--tls-key=", 10))
			tls_key = a + 10;
		else if ((!strcmp(a, "--threads") && i + 1 < argc) || !strncmp(a, "--threads=", 10)) {
			const char *v = a[9] == '=' ? a + 10 : argv[++i];
			char *end;
			threads = strtol(v, &end, 10);
			if (*end || threads < 0 || threads > MOCK_THREADS_MAX) {
				fprintf(stderr, "sluice-mock: --threads: 0..%d\n", MOCK_THREADS_MAX);
				return 2;
			}
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (!tls_cert != !tls_key || (tls_listen_addr && !tls_cert)) {
		fputs("sluice-mock: TLS needs both --tls-cert and --tls-key\n", stderr);
		return 2;
	}
	if (threads == 0)
		threads = SL_MAX(SL_MIN(sysconf(_SC_NPROCESSORS_ONLN), (long)MOCK_THREADS_MAX), 1L);
	g_nthreads = (int)threads;

	struct sockaddr_storage ss, tss;
	socklen_t ss_len, tss_len = 0;
	if (!parse_addr("--listen", listen_addr, &ss, &ss_len))
		return 2;
	if (tls_listen_addr && !parse_addr("--tls-listen", tls_listen_addr, &tss, &tss_len))
		return 2;
	if (tls_cert) {
		g_ssl_ctx = tls_setup(tls_cert, tls_key);
		g_listen_tls = !tls_listen_addr;
	}

	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	init_embedding_table();

	g_stats = aligned_alloc(64, sizeof(*g_stats) * (size_t)g_nthreads);
	g_workers = calloc((size_t)g_nthreads, sizeof(*g_workers));
	if (!g_stats || !g_workers)
		die_oom();
	memset(g_stats, 0, sizeof(*g_stats) * (size_t)g_nthreads);

	/* every thread binds its own listeners to the same ports (the first
	 * one's when port 0 was asked for) */
	for (int i = 0; i < g_nthreads; i++) {
		struct worker *w = &g_workers[i];
		w->idx = i;
		w->st = &g_stats[i];
		w->lfd = open_listener((struct sockaddr *)&ss, ss_len);
		w->tls_lfd = tls_listen_addr ? open_listener((struct sockaddr *)&tss, tss_len) : -1;
		if (i == 0) {
			ss_len = sizeof(ss);
			if (getsockname(w->lfd, (struct sockaddr *)&ss, &ss_len) < 0)
				die("sluice-mock: getsockname");
			tss_len = sizeof(tss);
			if (w->tls_lfd >= 0 && getsockname(w->tls_lfd, (struct sockaddr *)&tss, &tss_len) < 0)
				die("sluice-mock: getsockname");
		}
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		if (w->epfd < 0)
			die("sluice-mock: epoll_create1");
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd, &ev) < 0)
			die("sluice-mock: epoll_ctl");
		struct epoll_event tev = { .events = EPOLLIN, .data.ptr = &w->tls_lfd };
		if (w->tls_lfd >= 0 && epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->tls_lfd, &tev) < 0)
			die("sluice-mock: epoll_ctl");
		w->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		struct epoll_event sev = { .events = EPOLLIN, .data.ptr = w };
		if (w->stop_fd < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->stop_fd, &sev) < 0)
			die("sluice-mock: eventfd");
		w->lr_copy = malloc(sizeof(*w->lr_copy));
		w->keys_copy = malloc(sizeof(*w->keys_copy) * KEYS_MAX);
		if (!w->lr_copy || !w->keys_copy)
			die_oom();
		w->rng = (uint64_t)now_us() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32 ^ (uint64_t)i;
	}

	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	for (int i = 0; i < g_nthreads; i++) {
		int err = pthread_create(&g_workers[i].thread, NULL, worker_main, &g_workers[i]);
		if (err) {
			errno = err;
			die("sluice-mock: pthread_create");
		}
	}

	/* the TLS listener first: "ready on" is the last line, so a reader that
	 * waits for it has seen both */
	if (g_ssl_ctx)
		print_ready("tls ready on", tls_listen_addr ? &tss : &ss);
	print_ready("ready on", &ss);
	fflush(stderr);

	int sig = 0;
	while (sigwait(&sigs, &sig) != 0)
		;
	/* SIGTERM/SIGINT: every worker closes its connections and returns */
	for (int i = 0; i < g_nthreads; i++) {
		uint64_t one = 1;
		if (write(g_workers[i].stop_fd, &one, sizeof(one)) < 0)
			die("sluice-mock: eventfd write");
	}
	for (int i = 0; i < g_nthreads; i++)
		pthread_join(g_workers[i].thread, NULL);
	free(g_workers);
	free(g_stats);
	SSL_CTX_free(g_ssl_ctx);
	return 0;
}
