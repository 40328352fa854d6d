/*
 * proxy.c - the HTTP/1.1 protocol layer: reads client requests, hands each
 * one to an upstream connection, and relays the response back.
 *
 * A client connection walks IDLE -> HEAD -> BODY -> EXCHANGE -> FLUSH and
 * back to IDLE (keep-alive), one request at a time, so pipelined requests
 * are answered in order by construction. An upstream connection walks
 * CONNECTING -> WAIT_HEAD -> BODY -> POOLED. The request (head + body) is
 * kept contiguous in the client's input block; the upstream request is sent
 * as an iovec of [rewritten head, body before "model", upstream model id,
 * body after "model"], so the body is never copied. The response body is
 * relayed from the provided recv buffer it arrived in, straight into the
 * client's send queue; the buffer returns to the ring when the client's send
 * completes. A client that reads slowly fills its queue and pauses the
 * upstream recv: backpressure, not memory growth.
 */
#include "sluice/convert.h"
#include "sluice/credit.h"
#include "sluice/gate.h"
#include "sluice/ipblock.h"
#include "sluice/json.h"
#include "sluice/proxyproto.h"
#include "sluice/reactor.h"
#include "sluice/tls.h"
#include "sluice/usagelog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MODEL_NAME_MAX 256
/* Bodies up to this size travel in the same block as their head (one send
 * instead of an iovec); SSE events are never copied. */
#define SMALL_BODY_INLINE_MAX 4096
#define INPUT_BLOCK_MIN 4096

/* --- a bounded writer for heads and error bodies ------------------------------ */

struct wbuf {
	char *p;
	size_t len;
	size_t cap;
	bool overflow;
};

static void w_mem(struct wbuf *w, const void *s, size_t n)
{
	if (n == 0)
		return; /* s may be NULL for an empty range */
	if (SL_UNLIKELY(w->cap - w->len < n)) {
		w->overflow = true;
		return;
	}
	memcpy(w->p + w->len, s, n);
	w->len += n;
}

#define W_LIT(w, lit) w_mem((w), (lit), sizeof(lit) - 1)

static void w_str(struct wbuf *w, const char *s)
{
	w_mem(w, s, strlen(s));
}

/* Two digits at a time: the rate-limit headers write up to ten numbers on
 * every response. */
static void w_u64(struct wbuf *w, uint64_t v)
{
	static const char pairs[201] = "00010203040506070809101112131415161718192021222324"
	                               "25262728293031323334353637383940414243444546474849"
	                               "50515253545556575859606162636465666768697071727374"
	                               "75767778798081828384858687888990919293949596979899";
	char tmp[20];
	size_t i = sizeof tmp;
	while (v >= 100) {
		unsigned two = (unsigned)(v % 100);
		v /= 100;
		i -= 2;
		memcpy(tmp + i, pairs + 2 * two, 2);
	}
	if (v >= 10) {
		i -= 2;
		memcpy(tmp + i, pairs + 2 * v, 2);
	} else {
		tmp[--i] = (char)('0' + v);
	}
	w_mem(w, tmp + i, sizeof tmp - i);
}

static void w_header(struct wbuf *w, const char *name, size_t name_len, const char *value,
                     size_t value_len)
{
	w_mem(w, name, name_len);
	W_LIT(w, ": ");
	w_mem(w, value, value_len);
	W_LIT(w, "\r\n");
}

/* JSON string contents, escaped; n bytes of s at most. */
static void w_json_escaped(struct wbuf *w, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			char e[2] = { '\\', (char)c };
			w_mem(w, e, 2);
		} else if (c < 0x20) {
			char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
			w_mem(w, e, 6);
		} else {
			w_mem(w, &s[i], 1);
		}
	}
}

/* An error object in the client's format (SPEC section 1); the message is
 * cut at 700 bytes so the object always fits a 1 KiB buffer. */
static void w_error_json(struct wbuf *w, enum sl_format format, const char *type,
                         const char *message)
{
	size_t msg_len = SL_MIN(strlen(message), (size_t)700);
	if (format == SL_FORMAT_ANTHROPIC) {
		W_LIT(w, "{\"type\":\"error\",\"error\":{\"type\":\"");
		w_str(w, type);
		W_LIT(w, "\",\"message\":\"");
		w_json_escaped(w, message, msg_len);
		W_LIT(w, "\"}}");
	} else {
		W_LIT(w, "{\"error\":{\"message\":\"");
		w_json_escaped(w, message, msg_len);
		W_LIT(w, "\",\"type\":\"");
		w_str(w, type);
		W_LIT(w, "\",\"param\":null,\"code\":\"");
		w_str(w, type);
		W_LIT(w, "\"}}");
	}
}

/* --- helpers --------------------------------------------------------------------- */

static struct sl_http_limits http_limits(const struct sl_reactor *r)
{
	const struct sl_limits_config *l = &r->config->limits;
	return (struct sl_http_limits){
		.head_len_max = l->header_bytes_max,
		.target_len_max = l->target_bytes_max,
		.num_headers_max = l->headers_num_max,
	};
}

static uint32_t relay_pause_at(const struct sl_reactor *r)
{
	uint32_t n = r->config->limits.send_queue_buffers_max;
	return SL_MAX(2u, SL_MIN(n, (uint32_t)SL_SENDQ_CAP / 2));
}

static void make_request_id(struct sl_reactor *r, struct sl_conn *c)
{
	static const char hex[] = "0123456789abcdef";
	char *p = c->cx.request_id;
	memcpy(p, "req_", 4);
	uint64_t parts[3] = { r->id_prefix, r->index, ++r->request_seq };
	int digits[3] = { 8, 2, 12 };
	int o = 4;
	for (int k = 0; k < 3; k++)
		for (int d = digits[k] - 1; d >= 0; d--)
			p[o++] = hex[(parts[k] >> (4 * d)) & 15];
	p[o] = '\0';
}

/* Hop-by-hop headers (RFC 9110 section 7.6.1) and the ones the proxy sets
 * itself: never forwarded in either direction. */
static bool is_hop_or_owned(const struct sl_http_header *h)
{
	switch (h->name_len) {
	case 2:
		return sl_ascii_ieq(h->name, "te", 2);
	case 4:
		return sl_ascii_ieq(h->name, "host", 4);
	case 6:
		return sl_ascii_ieq(h->name, "expect", 6);
	case 7:
		return sl_ascii_ieq(h->name, "trailer", 7) || sl_ascii_ieq(h->name, "upgrade", 7);
	case 9:
		return sl_ascii_ieq(h->name, "x-api-key", 9);
	case 10:
		return sl_ascii_ieq(h->name, "connection", 10) ||
		       sl_ascii_ieq(h->name, "keep-alive", 10);
	case 12:
		return sl_ascii_ieq(h->name, "x-request-id", 12);
	case 13:
		return sl_ascii_ieq(h->name, "authorization", 13);
	case 14:
		return sl_ascii_ieq(h->name, "content-length", 14);
	case 16:
		return sl_ascii_ieq(h->name, "proxy-connection", 16);
	case 17:
		return sl_ascii_ieq(h->name, "transfer-encoding", 17);
	case 18:
		return sl_ascii_ieq(h->name, "proxy-authenticate", 18);
	case 19:
		return sl_ascii_ieq(h->name, "proxy-authorization", 19);
	default:
		return false;
	}
}

/* The provider's own rate-limit headers describe the operator's upstream
 * key, not the client's: they are replaced by the gateway's. */
static bool is_provider_limit(const struct sl_http_header *h)
{
	return (h->name_len > 12 && sl_ascii_ieq(h->name, "x-ratelimit-", 12)) ||
	       (h->name_len > 20 && sl_ascii_ieq(h->name, "anthropic-ratelimit-", 20));
}

/* Collects the field names listed in Connection headers: they are hop-by-hop
 * too. At most SL_ARRAY_LEN(out) are honoured; the rest are ignored. */
static size_t connection_tokens(const struct sl_http_header *hs, size_t n, struct sl_str *out,
                                size_t out_max)
{
	size_t num = 0;
	for (size_t i = 0; i < n; i++) {
		if (hs[i].name_len != 10 || !sl_ascii_ieq(hs[i].name, "connection", 10))
			continue;
		const char *v = hs[i].value, *end = v + hs[i].value_len;
		while (v < end && num < out_max) {
			while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
				v++;
			const char *s = v;
			while (v < end && *v != ',' && *v != ' ' && *v != '\t')
				v++;
			if (v > s)
				out[num++] = (struct sl_str){ s, (size_t)(v - s) };
		}
	}
	return num;
}

static bool listed_in(const struct sl_http_header *h, const struct sl_str *tokens, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (tokens[i].len == h->name_len && sl_ascii_ieq(h->name, tokens[i].ptr, h->name_len))
			return true;
	return false;
}

static bool push_pool_block(struct sl_conn *c, void *block, size_t cap, size_t len)
{
	struct sl_send_entry e = {
		.ptr = block,
		.len = (uint32_t)len,
		.owner = SL_OWN_POOL,
		.block_class = (uint8_t)sl_bufpool_class(cap),
		.block = block,
	};
	return sl_conn_send_push(c, &e);
}

static bool push_static(struct sl_conn *c, const char *p, size_t len)
{
	if (len == 0)
		return true;
	struct sl_send_entry e = { .ptr = p, .len = (uint32_t)len, .owner = SL_OWN_NONE };
	return sl_conn_send_push(c, &e);
}

/* Queues the block holding a response head (and maybe its body) for the
 * client; false, with the block released, when the queue is full. */
static bool push_response_head(struct sl_reactor *r, struct sl_conn *c, void *block, size_t cap,
                               size_t len)
{
	if (!push_pool_block(c, block, cap, len)) {
		sl_bufpool_put(&r->mem, block, cap);
		return false;
	}
	c->cx.response_started = true;
	if (!c->cx.first_byte_ms) {
		/* every head we write starts "HTTP/1.1 NNN" */
		c->cx.first_byte_ms = r->now_ms ? r->now_ms : 1;
		const char *h = block;
		if (len >= 12 && memcmp(h, "HTTP/1.1 ", 9) == 0)
			c->cx.status = (uint16_t)((h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0'));
	}
	return true;
}

/* Arms the client's send deadline while it has bytes queued. */
static void client_send_timer(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->sq.num)
		sl_timer_arm(r, &c->timer, &r->send_q);
	else if (c->timer.queue == &r->send_q)
		sl_timer_cancel(&c->timer);
}

static void exchange_fail(struct sl_reactor *r, struct sl_conn *c, unsigned status,
                          const char *type, const char *message, const char *extra_headers);
static void limits_peek(struct sl_reactor *r, struct sl_conn *c);
static void limits_finish(struct sl_reactor *r, struct sl_conn *c);

/* --- rate-limit headers -------------------------------------------------------------- */

/* The RFC 3339 text of a reset time (0: the window's, 1: the day's), cached
 * per reactor: each changes once per window or day. */
static const char *reset_text(struct sl_reactor *r, unsigned which, uint64_t unix_ms)
{
	if (r->reset_text_ms[which] != unix_ms) {
		sl_format_rfc3339(unix_ms, r->reset_text[which]);
		r->reset_text_ms[which] = unix_ms;
	}
	return r->reset_text[which];
}

/* Writes the rate-limit headers of SPEC section 1 for the key of the
 * exchange: the tier, and each limit the tier sets (an unlimited dimension
 * has no header). Bounded: at most LIMIT_HEADERS_BYTES_MAX bytes. */
#define LIMIT_HEADERS_BYTES_MAX 640
static void w_limit_headers(struct sl_reactor *r, struct wbuf *w, const struct sl_conn *c)
{
	if (c->cx.attempts > 1) { /* the response of a retried request says so */
		W_LIT(w, "x-sluice-attempts: ");
		w_u64(w, c->cx.attempts);
		W_LIT(w, "\r\n");
	}
	if (!c->cx.has_report || !c->cx.key.valid)
		return;
	const struct sl_limit_report *rep = &c->cx.report;
	W_LIT(w, "x-ratelimit-tier: ");
	w_str(w, r->config->tiers[c->cx.key.tier].name);
	W_LIT(w, "\r\n");
	if (rep->requests_limit) {
		W_LIT(w, "x-ratelimit-limit-requests: ");
		w_u64(w, rep->requests_limit);
		W_LIT(w, "\r\nx-ratelimit-remaining-requests: ");
		w_u64(w, rep->requests_remaining);
		W_LIT(w, "\r\nx-ratelimit-reset-requests: ");
		w_mem(w, reset_text(r, 0, rep->requests_reset_unix_ms), 20);
		W_LIT(w, "\r\n");
	}
	if (rep->tokens_limit) {
		W_LIT(w, "x-ratelimit-limit-tokens: ");
		w_u64(w, rep->tokens_limit);
		W_LIT(w, "\r\nx-ratelimit-remaining-tokens: ");
		w_u64(w, rep->tokens_remaining);
		W_LIT(w, "\r\n");
	}
	if (rep->concurrent_limit) {
		W_LIT(w, "x-concurrent-limit: ");
		w_u64(w, rep->concurrent_limit);
		W_LIT(w, "\r\nx-concurrent-remaining: ");
		w_u64(w, rep->concurrent_remaining);
		W_LIT(w, "\r\n");
	}
	if (rep->daily_limit) {
		W_LIT(w, "x-ratelimit-limit-requests-day: ");
		w_u64(w, rep->daily_limit);
		W_LIT(w, "\r\nx-ratelimit-remaining-requests-day: ");
		w_u64(w, rep->daily_remaining);
		W_LIT(w, "\r\nx-ratelimit-reset-requests-day: ");
		w_mem(w, reset_text(r, 1, rep->daily_reset_unix_ms), 20);
		W_LIT(w, "\r\n");
	}
}

/* --- error responses ---------------------------------------------------------------- */

static const char *error_type_for(unsigned status)
{
	switch (status) {
	case 400:
	case 414:
	case 431:
	case 505:
		return "invalid_request_error";
	case 404:
		return "not_found";
	case 405:
		return "method_not_allowed";
	case 408:
		return "request_timeout";
	case 413:
		return "payload_too_large";
	case 501:
		return "not_implemented";
	case 503:
		return "overloaded";
	case 504:
		return "upstream_timeout";
	default:
		return status >= 500 ? "server_error" : "invalid_request_error";
	}
}

/* A response the gateway makes itself, for /metrics. */
static void count_local(struct sl_reactor *r, unsigned status)
{
	if (status >= 100 && status < 600)
		SL_METRIC_INC(r->metrics.local_responses[status - 100]);
}

/*
 * respond_error queues a complete error response in the client format of the
 * current route. With close_after the connection closes once it is sent (the
 * framing of the rest of the input cannot be trusted, or a body was not read).
 * Must only be called before any byte of another response was queued.
 */
static void respond_error(struct sl_reactor *r, struct sl_conn *c, unsigned status,
                          const char *type, const char *message, const char *extra_headers,
                          bool close_after)
{
	SL_ASSERT(!c->cx.response_started);
	count_local(r, status);
	if (!type)
		type = error_type_for(status);
	if (c->cx.key.valid && !c->cx.has_report)
		limits_peek(r, c); /* an authenticated error still reports the limits */
	size_t cap;
	char *block = sl_bufpool_get(&r->mem, 2048 + LIMIT_HEADERS_BYTES_MAX, &cap);
	if (!block) {
		sl_conn_close(r, c);
		return;
	}
	/* the body first, so its length is known */
	char body_tmp[1024];
	struct wbuf b = { body_tmp, 0, sizeof body_tmp, false };
	w_error_json(&b, (enum sl_format)c->cx.format, type, message);
	SL_ASSERT(!b.overflow);
	struct wbuf w = { block, 0, cap, false };
	W_LIT(&w, "HTTP/1.1 ");
	w_u64(&w, status);
	W_LIT(&w, " ");
	w_str(&w, sl_http_status_reason(status));
	W_LIT(&w, "\r\nContent-Type: application/json\r\nContent-Length: ");
	w_u64(&w, b.len);
	if (c->cx.request_id[0]) {
		W_LIT(&w, "\r\nx-request-id: ");
		w_str(&w, c->cx.request_id);
	}
	W_LIT(&w, "\r\n");
	w_limit_headers(r, &w, c);
	if (extra_headers)
		w_str(&w, extra_headers);
	if (close_after)
		W_LIT(&w, "Connection: close\r\n");
	W_LIT(&w, "\r\n");
	w_mem(&w, b.p, b.len);
	SL_ASSERT(!w.overflow);
	if (!push_response_head(r, c, block, cap, w.len)) {
		sl_conn_close(r, c);
		return;
	}
	if (close_after) {
		c->close_after_flush = true;
		c->keep_alive = false;
		sl_conn_recv_pause(r, c); /* nothing more will be read */
	}
	sl_conn_send_flush(r, c);
	client_send_timer(r, c);
}

/* --- client input ---------------------------------------------------------------------- */

/* Makes c->in hold at least need bytes, keeping its contents. */
static bool input_reserve(struct sl_reactor *r, struct sl_conn *c, size_t need)
{
	if (c->in && c->in_cap >= need)
		return true;
	size_t cap;
	char *block = sl_bufpool_get(&r->mem, SL_MAX(need, (size_t)INPUT_BLOCK_MIN), &cap);
	if (!block)
		return false;
	if (c->in) {
		memcpy(block, c->in, c->in_len);
		sl_bufpool_put(&r->mem, c->in, c->in_cap);
	}
	c->in = block;
	c->in_cap = cap;
	return true;
}

static void client_process(struct sl_reactor *r, struct sl_conn *c);
static void exchange_begin(struct sl_reactor *r, struct sl_conn *c);
static void exchange_attempt(struct sl_reactor *r, struct sl_conn *c);
static uint64_t next_rand(struct sl_reactor *r);
static void attempt_end(struct sl_reactor *r, struct sl_conn *c);

/* The request's bytes end here; what follows in c->in is the next request. */
static size_t request_end(const struct sl_conn *c)
{
	return c->cx.head_len + (size_t)c->cx.body_len;
}

static const struct sockaddr *client_peer(struct sl_conn *c);

/* ,"key":"value" with the value escaped and cut at max bytes; the whole
 * field or nothing, so a line that runs out of room is still JSON. The
 * macros make the key's prefix a literal (no strlen per field). */
static void w_json_field(struct wbuf *w, const char *prefix, size_t prefix_len, const char *v,
                         size_t n, size_t max)
{
	n = SL_MIN(n, max);
	size_t e = sl_json_escaped_len(v, n);
	if (w->cap - w->len < prefix_len + e + 1)
		return;
	w_mem(w, prefix, prefix_len);
	if (e == n)
		memcpy(w->p + w->len, v, n); /* nothing to escape: the common case */
	else
		sl_json_escape(v, n, w->p + w->len);
	w->len += e;
	W_LIT(w, "\"");
}
#define W_STR_FIELD(w, key, v, n, max) \
	w_json_field(w, ",\"" key "\":\"", sizeof(key) + 4, v, n, max)

static void w_num_field(struct wbuf *w, const char *prefix, size_t prefix_len, uint64_t v)
{
	if (w->cap - w->len < prefix_len + 20)
		return;
	w_mem(w, prefix, prefix_len);
	w_u64(w, v);
}
#define W_NUM_FIELD(w, key, v) w_num_field(w, ",\"" key "\":", sizeof(key) + 3, v)

/*
 * The request's access log line (accesslog.h), once, when it ends: its
 * response flushed, or its connection gone. status 499: the client left
 * while the exchange was in progress; 0: nothing was answered.
 */
static void access_log_line(struct sl_reactor *r, struct sl_conn *c)
{
	if (!c->cx.access_pending)
		return;
	c->cx.access_pending = false;
	if (!r->alog.buf[0])
		return;
	static const char *const methods[] = { "", "OTHER", "GET", "HEAD", "POST", "PUT",
		                                "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE" };
	char line[SL_ALOG_LINE_MAX];
	/* room kept for the closing "}\n" whatever the fields took */
	struct wbuf w = { line, 0, sizeof line - 2, false };
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	uint64_t elapsed = r->now_ms - c->cx.started_ms;
	uint64_t start = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000 - elapsed;
	char ts[21];
	sl_format_rfc3339(start - start % 1000, ts); /* "2026-11-22T10:31:00Z" (whole: it rounds up) */
	W_LIT(&w, "{\"time\":\"");
	w_mem(&w, ts, 19);
	char ms[6] = { '.', (char)('0' + start % 1000 / 100), (char)('0' + start % 100 / 10),
		       (char)('0' + start % 10), 'Z', '"' };
	w_mem(&w, ms, sizeof ms);
	W_STR_FIELD(&w, "id", c->cx.request_id, strlen(c->cx.request_id), 64);
	const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)(const void *)client_peer(c);
	if (a6->sin6_family == AF_INET) {
		/* by hand: inet_ntop costs more than the rest of the line */
		const uint8_t *b =
		    (const uint8_t *)&((const struct sockaddr_in *)(const void *)a6)->sin_addr;
		W_LIT(&w, ",\"ip\":\"");
		for (int i = 0; i < 4; i++) {
			if (i)
				W_LIT(&w, ".");
			w_u64(&w, b[i]);
		}
		W_LIT(&w, "\"");
	} else if (a6->sin6_family == AF_INET6) {
		char ip[INET6_ADDRSTRLEN];
		inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof ip);
		W_STR_FIELD(&w, "ip", ip, strlen(ip), sizeof ip);
	}
	if (c->cx.key.valid)
		W_STR_FIELD(&w, "key", c->cx.key.id, strlen(c->cx.key.id), 64);
	if (c->cx.method && c->cx.method < SL_ARRAY_LEN(methods)) {
		W_STR_FIELD(&w, "method", methods[c->cx.method], strlen(methods[c->cx.method]), 16);
		if (c->in && (size_t)c->cx.target_off + c->cx.target_len <= c->in_len)
			W_STR_FIELD(&w, "path", c->in + c->cx.target_off, c->cx.target_len, 512);
		else if (c->cx.path_len)
			W_STR_FIELD(&w, "path", c->cx.path, c->cx.path_len, sizeof c->cx.path);
	}
	unsigned status = c->state == SL_CLIENT_EXCHANGE ? 499 : c->cx.status;
	W_NUM_FIELD(&w, "status", status);
	if (c->cx.has_model) {
		const struct sl_model_config *m = &r->config->models[c->cx.model_index];
		W_STR_FIELD(&w, "model", m->id, strlen(m->id), 255);
	}
	if (c->cx.target) {
		const struct sl_model_target *t = c->cx.target;
		const char *p = r->config->providers[t->provider].name;
		W_STR_FIELD(&w, "provider", p, strlen(p), 255);
		W_STR_FIELD(&w, "upstream_model", t->model, strlen(t->model), 255);
		W_NUM_FIELD(&w, "attempts", c->cx.attempts);
		W_NUM_FIELD(&w, "input_tokens", c->cx.billed_input);
		W_NUM_FIELD(&w, "output_tokens", c->cx.billed_output);
		char cost[32];
		sl_format_pico_usd(c->cx.billed_cost, cost, sizeof cost);
		W_STR_FIELD(&w, "cost_usd", cost, strlen(cost), sizeof cost);
		if (w.cap - w.len >= 16) {
			if (c->cx.stream)
				W_LIT(&w, ",\"stream\":true");
			else
				W_LIT(&w, ",\"stream\":false");
		}
	}
	if (c->cx.first_byte_ms)
		W_NUM_FIELD(&w, "ttfb_ms", c->cx.first_byte_ms - c->cx.started_ms);
	W_NUM_FIELD(&w, "ms", elapsed);
	SL_ASSERT(!w.overflow);
	w.cap += 2;
	W_LIT(&w, "}\n");
	sl_alog_append(&r->alog, &r->ring, sl_ud(SL_OP_ALOG_WRITE, 0, 0), line, w.len, r->now_ms);
}

/* After a response is flushed: drop the consumed request, keep pipelined
 * bytes, and go on with the next request. */
static void client_next_request(struct sl_reactor *r, struct sl_conn *c)
{
	access_log_line(r, c);
	size_t used = request_end(c);
	SL_ASSERT(used <= c->in_len);
	size_t left = c->in_len - used;
	if (left)
		memmove(c->in, c->in + used, left);
	c->in_len = left;
	sl_arena_release(&c->cx.arena);
	sl_buf_release(&c->cx.pending);
	memset(&c->cx, 0, sizeof c->cx);
	c->flush_deferred = false;
	c->durable_wait = 0;
	c->close_after_flush = false;
	c->state = SL_CLIENT_IDLE;
	/* pipelined bytes that did not fit while the last request ran */
	for (unsigned i = 0; i < c->stash_num; i++) {
		uint32_t len = c->stash[i].len;
		if (!input_reserve(r, c, c->in_len + len)) {
			sl_conn_close(r, c);
			return;
		}
		memcpy(c->in + c->in_len, r->buf_base + (size_t)c->stash[i].bid * r->buf_size +
		                                  c->stash[i].off, len);
		c->in_len += len;
		sl_buf_return(r, c->stash[i].bid);
	}
	c->stash_num = 0;
	if (c->in_len == 0) {
		/* idle keep-alive connections hold no input block */
		sl_bufpool_put(&r->mem, c->in, c->in_cap);
		c->in = NULL;
		c->in_cap = 0;
		sl_timer_arm(r, &c->timer, &r->keepalive_q);
	}
	sl_conn_recv_resume(r, c);
	if (c->in_len)
		client_process(r, c);
}

/* Queues the head of a 200 with a body of body_len bytes; false (the
 * connection closed) without memory or queue room. */
static bool local_head(struct sl_reactor *r, struct sl_conn *c, const char *content_type,
                       size_t body_len)
{
	count_local(r, 200);
	size_t cap;
	char *block = sl_bufpool_get(&r->mem, 512 + LIMIT_HEADERS_BYTES_MAX, &cap);
	if (!block) {
		sl_conn_close(r, c);
		return false;
	}
	struct wbuf w = { block, 0, cap, false };
	W_LIT(&w, "HTTP/1.1 200 OK\r\nContent-Type: ");
	w_str(&w, content_type);
	W_LIT(&w, "\r\nContent-Length: ");
	w_u64(&w, body_len);
	W_LIT(&w, "\r\nx-request-id: ");
	w_str(&w, c->cx.request_id);
	W_LIT(&w, "\r\n");
	w_limit_headers(r, &w, c);
	if (!c->keep_alive)
		W_LIT(&w, "Connection: close\r\n");
	W_LIT(&w, "\r\n");
	SL_ASSERT(!w.overflow);
	if (!push_response_head(r, c, block, cap, w.len)) {
		sl_conn_close(r, c);
		return false;
	}
	return true;
}

static void respond_local(struct sl_reactor *r, struct sl_conn *c, const char *content_type,
                          const char *body, size_t body_len, bool head_only)
{
	if (!local_head(r, c, content_type, body_len))
		return;
	/* config memory: lives as long as we do */
	if (!head_only && !push_static(c, body, body_len)) {
		sl_conn_close(r, c);
		return;
	}
	sl_conn_send_flush(r, c);
	client_send_timer(r, c);
}

/* GET /metrics on the admin listener: every reactor's counters, rendered
 * into one pool block (metrics.h). */
static void respond_metrics(struct sl_reactor *r, struct sl_conn *c, bool head_only)
{
	const struct sl_config *cfg = r->config;
	size_t cap;
	char *body = sl_bufpool_get(&r->mem, sl_metrics_render_cap(cfg->num_models), &cap);
	if (!body) {
		respond_error(r, c, 503, NULL, "The gateway is out of memory for metrics; retry",
		              "Retry-After: 1\r\n", false);
		return;
	}
	size_t len = sl_metrics_render(r->all, r->num_all, body, cap);
	if (len == 0) {
		sl_bufpool_put(&r->mem, body, cap);
		respond_error(r, c, 500, NULL, "The metrics did not fit their buffer", NULL, false);
		return;
	}
	if (!local_head(r, c, "text/plain; version=0.0.4; charset=utf-8", len)) {
		sl_bufpool_put(&r->mem, body, cap);
		return;
	}
	if (head_only) {
		sl_bufpool_put(&r->mem, body, cap);
	} else if (!push_pool_block(c, body, cap, len)) {
		sl_bufpool_put(&r->mem, body, cap);
		sl_conn_close(r, c);
		return;
	}
	sl_conn_send_flush(r, c);
	client_send_timer(r, c);
}

/* Answers the routes the gateway serves itself. */
static void serve_local(struct sl_reactor *r, struct sl_conn *c, const struct sl_route_match *m,
                        bool head_only)
{
	const struct sl_config *cfg = r->config;
	if (m->route != SL_ROUTE_HEALTH)
		limits_peek(r, c);
	if (m->route == SL_ROUTE_HEALTH) {
		respond_local(r, c, "text/plain", "ok\n", 3, head_only);
	} else if (m->route == SL_ROUTE_MODELS) {
		respond_local(r, c, "application/json", cfg->models_json, cfg->models_json_len,
		              head_only);
	} else {
		const struct sl_model_config *model =
		        sl_config_find_model(cfg, m->model_id.ptr, m->model_id.len);
		if (!model) {
			char msg[MODEL_NAME_MAX + 64];
			snprintf(msg, sizeof msg, "The model '%.*s' does not exist",
			         (int)SL_MIN(m->model_id.len, (size_t)MODEL_NAME_MAX), m->model_id.ptr);
			respond_error(r, c, 404, NULL, msg, NULL, false);
			return;
		}
		respond_local(r, c, "application/json", model->json, model->json_len, head_only);
	}
}

static void usage_feed(const struct sl_conn *u, struct sl_conn *c, const char *data, size_t len);

/* Appends the exchange's usage record, once, if its model was known: every
 * way an exchange ends comes through here (client_exchange_done, or the
 * client's release mid-exchange). */
static void usage_log_record(struct sl_reactor *r, struct sl_conn *c, bool client_gone)
{
	if (!c->cx.routed)
		return;
	c->cx.routed = false;
	const struct sl_config *cfg = r->config;
	const struct sl_model_config *model = &cfg->models[c->cx.model_index];
	struct sl_usage_record rec = { 0 };
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	uint64_t elapsed = r->now_ms - c->cx.started_ms;
	rec.time_unix_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000 - elapsed;
	rec.route = c->cx.route;
	rec.total_ms = (uint32_t)SL_MIN(elapsed, (uint64_t)UINT32_MAX);
	if (c->cx.first_byte_ms)
		rec.ttfb_ms = (uint32_t)SL_MIN(c->cx.first_byte_ms - c->cx.started_ms,
		                               (uint64_t)UINT32_MAX);
	/* 499: the client went away before the response ended (nginx's code) */
	rec.status = client_gone ? 499 : c->cx.status;
	if (c->cx.stream)
		rec.flags |= SL_UREC_STREAM;
	if (c->cx.target) {
		const struct sl_model_target *t = c->cx.target;
		const char *pname = cfg->providers[t->provider].name;
		rec.attempts = c->cx.attempts;
		rec.provider = (struct sl_ustr){ pname, (uint8_t)SL_MIN(strlen(pname), 255u) };
		rec.upstream_model = (struct sl_ustr){ t->model, (uint8_t)SL_MIN(strlen(t->model), 255u) };
	} else {
		rec.flags |= SL_UREC_REFUSED;
	}
	const struct sl_token_usage *u = &c->cx.usage;
	bool reported = u->fields_seen & (SL_USAGE_INPUT | SL_USAGE_OUTPUT);
	if (reported) {
		/* input is the uncached part: OpenAI counts cached tokens in it */
		rec.input_tokens = u->input_tokens;
		if ((u->fields_seen & SL_USAGE_CACHE_READ_IN_INPUT))
			rec.input_tokens -= SL_MIN(u->cache_read_tokens, u->input_tokens);
		rec.output_tokens = u->output_tokens;
		rec.cache_read_tokens = u->cache_read_tokens;
		rec.cache_write_tokens = u->cache_write_tokens;
		rec.cache_write_1h_tokens = SL_MIN(u->cache_write_1h_tokens, u->cache_write_tokens);
	}
	bool generated = rec.status == 499 || (rec.status >= 200 && rec.status < 300);
	if (c->cx.target && generated && (!reported || !c->cx.upstream_done)) {
		/* The upstream did not say, or not to the end (a stream cut
		 * short, a client gone: an Anthropic stream reports its input
		 * first and its output last): bill what was relayed, never zero.
		 * Input, if unknown: a quarter token per request byte. Output:
		 * one token per content event of a stream (the deltas), less the
		 * events before the first delta (OpenAI's role chunk; Anthropic's
		 * message_start, content_block_start, ping), or a quarter token
		 * per byte of a body; never below what the upstream said. */
		rec.flags |= SL_UREC_ESTIMATED;
		if (!(u->fields_seen & SL_USAGE_INPUT))
			rec.input_tokens = (c->cx.request_bytes + 3) / 4;
		uint64_t out;
		if (c->cx.events) {
			unsigned preamble =
			    cfg->providers[c->cx.target->provider].format == SL_FORMAT_ANTHROPIC ? 3 : 1;
			out = c->cx.events > preamble ? c->cx.events - preamble : 0;
		} else {
			out = (c->cx.relayed_bytes + 3) / 4;
		}
		rec.output_tokens = SL_MAX(rec.output_tokens, out);
	}
	rec.images = c->cx.images;
	rec.cost_pico_usd =
	    sl_credit_cost(&model->price, rec.input_tokens, rec.output_tokens, rec.cache_read_tokens,
	                   rec.cache_write_tokens, rec.cache_write_1h_tokens);
	int64_t images_cost = sl_credit_image_cost(&model->price, rec.images);
	rec.cost_pico_usd = images_cost > INT64_MAX - rec.cost_pico_usd ? INT64_MAX
	                                                                 : rec.cost_pico_usd + images_cost;
	if (c->cx.credit_held) {
		sl_credit_settle(r->gate->credit, c->cx.key.slot, c->cx.credit_hold, c->cx.credit_plan,
		                 rec.cost_pico_usd, sl_gate_unix_ms(r->gate, r->now_ms));
		if (c->cx.credit_plan)
			rec.flags |= SL_UREC_PLAN;
		c->cx.credit_held = false;
	}
	c->cx.billed_input = rec.input_tokens;
	c->cx.billed_output = rec.output_tokens;
	c->cx.billed_cost = rec.cost_pico_usd;
	sl_metric_request(&r->metrics.models[c->cx.model_index], rec.status, rec.input_tokens,
	                  rec.output_tokens, rec.cache_read_tokens, rec.cache_write_tokens,
	                  rec.cost_pico_usd, rec.flags & SL_UREC_ESTIMATED, rec.attempts,
	                  rec.ttfb_ms, c->cx.first_byte_ms != 0);
	if (!r->ulog)
		return;
	if (c->have_peer || client_peer(c)) {
		const struct sockaddr_in6 *a6 = &c->peer_addr;
		if (a6->sin6_family == AF_INET6) {
			rec.ip_family = 6;
			memcpy(rec.ip, &a6->sin6_addr, 16);
		} else if (a6->sin6_family == AF_INET) {
			rec.ip_family = 4;
			memcpy(rec.ip, &((const struct sockaddr_in *)(const void *)a6)->sin_addr, 4);
		}
	}
	rec.request_id = (struct sl_ustr){ c->cx.request_id, (uint8_t)strlen(c->cx.request_id) };
	if (c->cx.key.valid)
		rec.key_id = (struct sl_ustr){ c->cx.key.id, (uint8_t)strlen(c->cx.key.id) };
	rec.model = (struct sl_ustr){ model->id, (uint8_t)SL_MIN(strlen(model->id), 255u) };
	int rc = sl_ulog_append(r->ulog, &rec, r->now_ms);
	if (rc) {
		fprintf(stderr, "sluice: reactor %u: USAGE RECORD LOST for request %s: %s\n", r->index,
		        c->cx.request_id, strerror(-rc));
		if (c->flush_deferred && !client_gone)
			sl_conn_close(r, c); /* strict: no response completes unrecorded */
	} else if (c->flush_deferred) {
		c->durable_wait = sl_ulog_last_seq(r->ulog) + 1;
	}
}

/* The exchange of c ended (answered locally, by an error, or relayed). */
static void attempt_end(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->cx.attempt_inflight) {
		c->cx.attempt_inflight = false;
		r->route_inflight[c->cx.attempt_key]--;
	}
}

static void client_exchange_done(struct sl_reactor *r, struct sl_conn *c)
{
	attempt_end(r, c);
	usage_log_record(r, c, false);
	limits_finish(r, c);
	if (c->state == SL_CLIENT_EXCHANGE)
		SL_METRIC_DEC(r->num_exchanges);
	c->state = SL_CLIENT_FLUSH;
	if (c->timer.queue != &r->send_q)
		sl_timer_cancel(&c->timer);
	if (r->stopping)
		c->keep_alive = false;
	sl_proxy_on_sent(r, c); /* finishes now if nothing is queued */
}

/* --- admission: IP blocking, authentication, limits ------------------------------------ */

/* The client's address, fetched once per connection and only when needed
 * (the IP table has entries, or an authentication failed). */
static const struct sockaddr *client_peer(struct sl_conn *c)
{
	if (!c->have_peer) {
		socklen_t len = sizeof c->peer_addr;
		if (getpeername(c->fd, (struct sockaddr *)&c->peer_addr, &len) != 0)
			memset(&c->peer_addr, 0, sizeof c->peer_addr);
		c->have_peer = true;
	}
	return (const struct sockaddr *)&c->peer_addr;
}

/* The credential of a header, if it carries one: "Authorization: Bearer K"
 * (scheme case-insensitive) or "x-api-key: K". */
static bool header_credential(const struct sl_http_header *h, const char **out, size_t *out_len)
{
	const char *v = h->value;
	size_t n = h->value_len;
	if (h->name_len == 13 && sl_ascii_ieq(h->name, "authorization", 13)) {
		if (n < 7 || !sl_ascii_ieq(v, "bearer ", 7))
			return false;
		v += 7;
		n -= 7;
	} else if (!(h->name_len == 9 && sl_ascii_ieq(h->name, "x-api-key", 9))) {
		return false;
	}
	while (n && (*v == ' ' || *v == '\t')) {
		v++;
		n--;
	}
	while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	*out = v;
	*out_len = n;
	return true;
}

static void respond_retry_after(struct sl_reactor *r, struct sl_conn *c, unsigned status,
                                const char *type, const char *message, uint64_t retry_after_ms,
                                bool close_after)
{
	char extra[96];
	uint64_t s = (retry_after_ms + 999) / 1000;
	snprintf(extra, sizeof extra, "Retry-After: %llu\r\nretry-after-ms: %llu\r\n",
	         (unsigned long long)(s ? s : 1), (unsigned long long)retry_after_ms);
	respond_error(r, c, status, type, message, extra, close_after);
}

/*
 * client_authenticate checks the client's address against the IP block
 * table and its key against the key table. Returns false when the request
 * was refused (answered, or the connection closed). The key text is never
 * logged nor echoed.
 */
static bool client_authenticate(struct sl_reactor *r, struct sl_conn *c,
                                const struct sl_http_request *req, bool has_body)
{
	struct sl_gate *g = r->gate;
	if (!r->config->auth.required || !g)
		return true;
	bool tracked = g->ipblock && sl_ipblock_active(g->ipblock);
	uint64_t retry_ms;
	if (tracked && sl_ipblock_is_blocked(g->ipblock, client_peer(c), r->now_ms, &retry_ms)) {
		respond_retry_after(r, c, 403, "ip_blocked",
		                    "Too many failed authentications from this address; try again later",
		                    retry_ms, has_body);
		return false;
	}
	enum sl_gate_auth res = SL_GATE_AUTH_MISSING;
	for (uint32_t i = 0; i < req->num_headers && res != SL_GATE_AUTH_OK; i++) {
		const char *key;
		size_t key_len;
		if (!header_credential(&req->headers[i], &key, &key_len))
			continue;
		enum sl_gate_auth one = sl_gate_authenticate(g, key, key_len, &c->cx.key);
		/* the most telling outcome wins when two headers disagree */
		if (res == SL_GATE_AUTH_MISSING || one == SL_GATE_AUTH_OK ||
		    one == SL_GATE_AUTH_REVOKED || one == SL_GATE_AUTH_NO_TIER)
			res = one;
	}
	if (res == SL_GATE_AUTH_OK) {
		if (tracked)
			sl_ipblock_success(g->ipblock, client_peer(c), r->now_ms);
		return true;
	}
	c->cx.key.valid = false;
	if (g->ipblock && res != SL_GATE_AUTH_NO_TIER)
		sl_ipblock_fail(g->ipblock, client_peer(c), r->now_ms);
	switch (res) {
	case SL_GATE_AUTH_MISSING:
		respond_error(r, c, 401, "authentication_error",
		              "Missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
		              "WWW-Authenticate: Bearer\r\n", has_body);
		break;
	case SL_GATE_AUTH_REVOKED:
		respond_error(r, c, 401, "authentication_error", "This API key has been revoked",
		              "WWW-Authenticate: Bearer\r\n", has_body);
		break;
	case SL_GATE_AUTH_NO_TIER:
		respond_error(r, c, 403, "permission_error",
		              "This API key's tier is not configured on this gateway", NULL, has_body);
		break;
	default:
		respond_error(r, c, 401, "authentication_error", "Invalid API key",
		              "WWW-Authenticate: Bearer\r\n", has_body);
		break;
	}
	return false;
}

/* Fills the exchange's rate-limit report without using any allowance (GET
 * routes are authenticated, not counted). */
static void limits_peek(struct sl_reactor *r, struct sl_conn *c)
{
	if (!c->cx.key.valid)
		return;
	sl_limiter_peek(r->gate->limiter, r->index, c->cx.key.slot,
	                sl_gate_unix_ms(r->gate, r->now_ms), &c->cx.report);
	c->cx.has_report = true;
}

/* Settles the exchange's limit tickets: gives the concurrency slot back and
 * corrects the token estimate with the real usage. Exactly once. */
static void limits_finish(struct sl_reactor *r, struct sl_conn *c)
{
	if (!c->cx.key_ticket_held && !c->cx.model_ticket_held)
		return;
	uint64_t now = sl_gate_unix_ms(r->gate, r->now_ms);
	if (c->cx.scan_usage && (c->cx.usage.fields_seen & (SL_USAGE_INPUT | SL_USAGE_OUTPUT)))
		c->cx.tokens_actual = sl_usage_total_tokens(&c->cx.usage);
	if (c->cx.key_ticket_held)
		sl_limiter_finish(r->gate->limiter, r->index, &c->cx.key_ticket, c->cx.tokens_actual,
		                  now);
	if (c->cx.model_ticket_held)
		sl_limiter_finish(r->gate->limiter, r->index, &c->cx.model_ticket,
		                  c->cx.tokens_actual, now);
	c->cx.key_ticket_held = c->cx.model_ticket_held = false;
}

static const char *limit_name(enum sl_limit_kind k)
{
	switch (k) {
	case SL_LIMIT_REQUESTS:
		return "requests per minute";
	case SL_LIMIT_TOKENS:
		return "tokens per minute";
	case SL_LIMIT_CONCURRENT:
		return "concurrent requests";
	default:
		return "requests per day";
	}
}

static void refuse_limit(struct sl_reactor *r, struct sl_conn *c, enum sl_limit_kind kind,
                         const struct sl_limit_report *rep, const char *whose, uint64_t estimate)
{
	char msg[200];
	uint64_t limit = kind == SL_LIMIT_REQUESTS     ? rep->requests_limit
	                 : kind == SL_LIMIT_TOKENS     ? rep->tokens_limit
	                 : kind == SL_LIMIT_CONCURRENT ? rep->concurrent_limit
	                                               : rep->daily_limit;
	snprintf(msg, sizeof msg, "Rate limit reached for %s%s: limit %llu; retry after %llu ms",
	         limit_name(kind), whose, (unsigned long long)limit,
	         (unsigned long long)rep->retry_after_ms);
	if (kind == SL_LIMIT_DAILY)
		snprintf(msg, sizeof msg, "Daily request quota%s exhausted: limit %llu; it resets in %llu s",
		         whose, (unsigned long long)limit,
		         (unsigned long long)((rep->retry_after_ms + 999) / 1000));
	if (kind == SL_LIMIT_TOO_LARGE) {
		/* never admissible: say so; Retry-After points at the window end
		 * only because a 429 must carry one */
		snprintf(msg, sizeof msg,
		         "Request too large for tokens per minute%s: this request may use %llu "
		         "tokens, the limit is %llu; send fewer tokens or a lower max_tokens",
		         whose, (unsigned long long)estimate,
		         (unsigned long long)rep->tokens_limit);
		uint64_t now = sl_gate_unix_ms(r->gate, r->now_ms);
		respond_retry_after(r, c, 429, "rate_limit_error", msg,
		                    rep->requests_reset_unix_ms > now ? rep->requests_reset_unix_ms - now
		                                                      : 1000,
		                    false);
		return;
	}
	respond_retry_after(r, c, 429, kind == SL_LIMIT_DAILY ? "quota_exceeded" : "rate_limit_error",
	                    msg, rep->retry_after_ms, false);
}

/* Input tokens of a request for the TPM limits, estimated like
 * count_tokens does, plus the output it may ask for (max_tokens, capped by
 * rate_limits.max_tokens_estimate_max). The parse happens only for keys or
 * models that have a token limit. */
static uint64_t estimate_tokens(struct sl_reactor *r, struct sl_conn *c, const char *body,
                                size_t body_len, const struct sl_model_config *model,
                                uint64_t *output_part);

/* The most a request may cost, from the estimate at admission: the hold a
 * prepaid key's balance must cover. */
static int64_t exchange_hold(const struct sl_model_config *model, uint64_t input, uint64_t output)
{
	return sl_credit_cost(&model->price, input, output, 0, 0, 0);
}

/* Holds the request's worst cost on a prepaid key's balance and checks its
 * budgets. Returns false when it was refused (402, answered). */
static bool exchange_credit(struct sl_reactor *r, struct sl_conn *c,
                            const struct sl_model_config *model, uint64_t input, uint64_t output)
{
	struct sl_gate *g = r->gate;
	const struct sl_tier_config *t = &r->config->tiers[c->cx.key.tier];
	int64_t hold = t->prepaid ? exchange_hold(model, input, output) : 0;
	const struct sl_credit_terms terms = {
		.prepaid = t->prepaid,
		.budget_day = t->budget_day_pico_usd,
		.budget_month = t->budget_month_pico_usd,
		.plan_credits = t->plan_credits_pico_usd,
		.plan_window_ms = (uint64_t)t->plan_window_hours * 3600000,
	};
	uint64_t now = sl_gate_unix_ms(g, r->now_ms);
	enum sl_credit_refusal k =
	    sl_credit_hold(g->credit, c->cx.key.slot, hold, &terms, now, &c->cx.credit_plan);
	if (k == SL_CREDIT_OK) {
		c->cx.credit_hold = hold;
		c->cx.credit_held = true;
		return true;
	}
	char msg[256], up_to[32], avail[32], renew[21] = "";
	sl_format_pico_usd(hold, up_to, sizeof up_to);
	sl_format_pico_usd(SL_MAX(sl_credit_available(g->credit, c->cx.key.slot), 0), avail,
	                   sizeof avail);
	if (terms.plan_credits)
		sl_format_rfc3339((now / terms.plan_window_ms + 1) * terms.plan_window_ms, renew);
	if (k == SL_CREDIT_BALANCE)
		snprintf(msg, sizeof msg,
		         "This API key's balance does not cover this request (up to $%s; available "
		         "$%s)%s%s: add credits",
		         up_to, avail, renew[0] ? "; plan credits renew at " : "", renew);
	else
		snprintf(msg, sizeof msg, "This API key has reached its %s spending budget",
		         k == SL_CREDIT_BUDGET_DAY ? "daily" : "monthly");
	limits_peek(r, c);
	exchange_fail(r, c, 402, k == SL_CREDIT_BALANCE ? "insufficient_balance" : "budget_exceeded",
	              msg, NULL);
	return false;
}

/* Admits the exchange under its key's and model's limits. Returns false
 * when it was refused (answered). */
static bool exchange_admit(struct sl_reactor *r, struct sl_conn *c,
                           const struct sl_model_config *model, const char *body, size_t body_len)
{
	struct sl_gate *g = r->gate;
	const struct sl_config *cfg = r->config;
	uint32_t model_index = (uint32_t)(model - cfg->models);
	c->cx.model_index = model_index;
	c->cx.tokens_actual = UINT64_MAX;
	if (!g)
		return true;
	bool keyed = c->cx.key.valid;
	if (keyed) {
		int rc = sl_gate_model_allowed(g, &c->cx.key, model_index);
		if (rc == -ENOENT) {
			exchange_fail(r, c, 401, "authentication_error", "This API key has been revoked",
			              NULL);
			return false;
		}
		if (rc == -EACCES) {
			char msg[MODEL_NAME_MAX + 64];
			snprintf(msg, sizeof msg, "This API key may not use the model '%s'", model->id);
			limits_peek(r, c); /* the headers, without spending anything */
			exchange_fail(r, c, 403, "model_not_allowed", msg, NULL);
			return false;
		}
	}
	bool tokens = (keyed && cfg->tiers[c->cx.key.tier].tokens_per_minute) ||
	              model->limits.tokens_per_minute;
	if (!keyed && !model->limits.set)
		return true;
	const struct sl_tier_config *tier = keyed ? &cfg->tiers[c->cx.key.tier] : NULL;
	bool credit = keyed && (tier->prepaid || tier->budget_day_pico_usd ||
	                        tier->budget_month_pico_usd);
	uint64_t output = 0;
	uint64_t estimate = tokens || credit ? estimate_tokens(r, c, body, body_len, model, &output) : 0;
	if (credit && !exchange_credit(r, c, model, estimate - output, output))
		return false;
	if (tokens) {
		c->cx.scan_usage = true;
		sl_usage_scanner_init(&c->cx.usage_scan);
		memset(&c->cx.usage, 0, sizeof c->cx.usage);
	}
	uint64_t now = sl_gate_unix_ms(g, r->now_ms);
	if (keyed) {
		enum sl_limit_kind k = sl_limiter_admit(g->limiter, r->index, c->cx.key.slot, estimate,
		                                        now, &c->cx.key_ticket, &c->cx.report);
		c->cx.has_report = true;
		if (k != SL_LIMIT_NONE) {
			refuse_limit(r, c, k, &c->cx.report, "", estimate);
			if (!c->closing)
				client_exchange_done(r, c);
			return false;
		}
		c->cx.key_ticket_held = true;
	}
	if (model->limits.set) {
		struct sl_limit_report mrep;
		enum sl_limit_kind k = sl_limiter_admit(g->limiter, r->index,
		                                        g->model_slot_base + model_index, estimate, now,
		                                        &c->cx.model_ticket, &mrep);
		if (k != SL_LIMIT_NONE) {
			if (c->cx.key_ticket_held) {
				sl_limiter_cancel(g->limiter, r->index, &c->cx.key_ticket, now);
				c->cx.key_ticket_held = false;
			}
			refuse_limit(r, c, k, &mrep, " of this model (all keys)", estimate);
			if (!c->closing)
				client_exchange_done(r, c);
			return false;
		}
		c->cx.model_ticket_held = true;
	}
	return true;
}

static bool header_credential(const struct sl_http_header *h, const char **out, size_t *out_len);

/* The request carries the admin key (Authorization: Bearer, or x-api-key);
 * compared in constant time. */
static bool admin_key_ok(const struct sl_http_request *req, const char *want)
{
	size_t want_len = strlen(want);
	for (size_t i = 0; i < req->num_headers; i++) {
		const char *v;
		size_t n;
		if (!header_credential(&req->headers[i], &v, &n) || n != want_len)
			continue;
		unsigned char diff = 0;
		for (size_t k = 0; k < n; k++)
			diff |= (unsigned char)(v[k] ^ want[k]);
		if (diff == 0)
			return true;
	}
	return false;
}

/* The admin listener: GET/HEAD /metrics and /healthz, nothing else (the
 * API routes are not served there, nor these on the public listeners). */
static void admin_on_head(struct sl_reactor *r, struct sl_conn *c,
                          const struct sl_http_request *req, bool has_body)
{
	size_t n = 0;
	while (n < req->target_len && req->target[n] != '?')
		n++;
	bool metrics = n == 8 && memcmp(req->target, "/metrics", 8) == 0;
	bool health = n == 8 && memcmp(req->target, "/healthz", 8) == 0;
	if (!metrics && !health) {
		respond_error(r, c, 404, NULL,
		              "Unknown admin URL: this listener serves /metrics and /healthz", NULL,
		              has_body);
		return;
	}
	bool head = req->method == SL_METHOD_HEAD;
	if (req->method != SL_METHOD_GET && !head) {
		respond_error(r, c, 405, NULL, "Method not allowed on this route; use GET",
		              "Allow: GET, HEAD\r\n", has_body);
		return;
	}
	const char *want = r->config->admin->admin_key;
	if (metrics && want && !admin_key_ok(req, want)) {
		respond_error(r, c, 401, NULL,
		              "The admin listener needs its key: Authorization: Bearer <admin key>",
		              "WWW-Authenticate: Bearer\r\n", has_body);
		return;
	}
	if (has_body) {
		c->keep_alive = false; /* a GET body is not read: close after */
		c->close_after_flush = true;
		sl_conn_recv_pause(r, c);
	}
	if (health)
		respond_local(r, c, "text/plain", "ok\n", 3, head);
	else
		respond_metrics(r, c, head);
}

/* Handles a parsed request head. Returns false when the request was answered
 * (or the connection closed) and no body is to be read. */
static bool client_on_head(struct sl_reactor *r, struct sl_conn *c, struct sl_http_request *req,
                           size_t head_len)
{
	const struct sl_limits_config *lim = &r->config->limits;
	struct sl_route_match m;
	sl_router_match(req->target, req->target_len, &m);
	c->cx.head_len = (uint32_t)head_len;
	c->cx.route = (uint8_t)m.route;
	c->cx.format = (uint8_t)m.format;
	c->cx.framing = (uint8_t)req->framing;
	c->cx.content_length = req->content_length;
	c->keep_alive = req->keep_alive && !r->stopping;
	c->cx.http10 = req->version_minor == 0;
	c->cx.method = (uint8_t)(req->method + 1);
	c->cx.target_off = (uint32_t)(req->target - c->in);
	c->cx.target_len = (uint16_t)SL_MIN(req->target_len, (size_t)UINT16_MAX);
	SL_METRIC_INC(r->stats.requests);
	bool has_body = req->framing != SL_BODY_NONE;

	if (c->admin_conn) {
		admin_on_head(r, c, req, has_body);
		return false;
	}
	if (m.route == SL_ROUTE_NONE) {
		respond_error(r, c, 404, NULL, "Unknown request URL: no such route", NULL, has_body);
		return false;
	}
	if (m.route != SL_ROUTE_HEALTH && !client_authenticate(r, c, req, has_body))
		return false;
	if (!m.is_post) {
		bool get = req->method == SL_METHOD_GET, head = req->method == SL_METHOD_HEAD;
		if (!get && !head) {
			respond_error(r, c, 405, NULL, "Method not allowed on this route; use GET",
			              "Allow: GET, HEAD\r\n", has_body);
			return false;
		}
		if (has_body) {
			c->keep_alive = false; /* a GET body is not read: close after */
			c->close_after_flush = true;
			sl_conn_recv_pause(r, c);
		}
		serve_local(r, c, &m, head);
		return false;
	}
	if (req->method != SL_METHOD_POST) {
		respond_error(r, c, 405, NULL, "Method not allowed on this route; use POST",
		              "Allow: POST\r\n", has_body);
		return false;
	}
	if (!has_body) {
		respond_error(r, c, 400, NULL, "A JSON request body is required", NULL, false);
		return false;
	}
	if (req->framing == SL_BODY_LENGTH) {
		if (req->content_length > lim->body_bytes_max) {
			respond_error(r, c, 413, NULL, "Request body is larger than the gateway accepts",
			              NULL, true);
			return false;
		}
		if (!input_reserve(r, c, head_len + req->content_length)) {
			respond_error(r, c, 503, NULL, "The gateway is out of request memory; retry",
			              "Retry-After: 1\r\n", true);
			return false;
		}
	} else {
		sl_chunked_init(&c->cx.chunked);
		c->cx.body_scan_off = (uint32_t)head_len;
	}
	if (req->expect_continue && c->in_len == head_len) {
		static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
		push_static(c, cont, sizeof cont - 1);
		sl_conn_send_flush(r, c);
		c->cx.sent_continue = true;
	}
	return true;
}

/*
 * client_process advances the request state machine over c->in. Stops when
 * more input is needed, when an exchange starts, or when the connection
 * closes.
 */
static void client_process(struct sl_reactor *r, struct sl_conn *c)
{
	const struct sl_limits_config *lim = &r->config->limits;
	for (;;) {
		if (c->closing || c->close_after_flush)
			return;
		switch (c->state) {
		case SL_CLIENT_IDLE:
			if (c->in_len == 0)
				return;
			c->state = SL_CLIENT_HEAD;
			c->cx.started_ms = r->now_ms;
			c->cx.access_pending = true;
			make_request_id(r, c);
			sl_timer_arm(r, &c->timer, &r->header_q);
			break;
		case SL_CLIENT_HEAD: {
			struct sl_http_limits hl = http_limits(r);
			struct sl_http_request req = { .headers = r->headers };
			ssize_t n = sl_http_parse_request(c->in, c->in_len, &req, &hl);
			if (n == SL_INCOMPLETE) {
				if (c->in_len >= lim->header_bytes_max) {
					respond_error(r, c, 431, NULL, "Request header fields too large",
					              NULL, true);
					return;
				}
				return;
			}
			if (n == SL_ERROR) {
				unsigned status = req.error_status ? req.error_status : 400;
				respond_error(r, c, status, NULL,
				              req.error_message ? req.error_message : "Bad request", NULL,
				              true);
				return;
			}
			if (!client_on_head(r, c, &req, (size_t)n)) {
				c->cx.body_len = 0;
				if (!c->closing)
					client_exchange_done(r, c);
				return;
			}
			c->state = SL_CLIENT_BODY;
			sl_timer_arm(r, &c->timer, &r->body_q);
			break;
		}
		case SL_CLIENT_BODY: {
			size_t head_len = c->cx.head_len;
			if (c->cx.framing == SL_BODY_LENGTH) {
				if (c->in_len < head_len + c->cx.content_length) {
					sl_timer_arm(r, &c->timer, &r->body_q);
					return;
				}
				c->cx.body_len = c->cx.content_length;
			} else {
				size_t out_len = 0;
				ssize_t n = sl_chunked_feed(&c->cx.chunked, c->in + c->cx.body_scan_off,
				                            c->in_len - c->cx.body_scan_off,
				                            c->in + head_len + c->cx.body_len, &out_len);
				if (n == SL_ERROR) {
					respond_error(r, c, 400, NULL, "Malformed chunked request body",
					              NULL, true);
					return;
				}
				c->cx.body_len += out_len;
				size_t data_end = head_len + (size_t)c->cx.body_len;
				size_t tail = c->in_len - c->cx.body_scan_off - (size_t)n;
				/* close the gap left by the chunk framing */
				memmove(c->in + data_end, c->in + c->cx.body_scan_off + n, tail);
				c->in_len = data_end + tail;
				c->cx.body_scan_off = (uint32_t)data_end;
				if (c->cx.body_len > lim->body_bytes_max) {
					respond_error(r, c, 413, NULL,
					              "Request body is larger than the gateway accepts", NULL,
					              true);
					return;
				}
				if (!c->cx.chunked.complete) {
					sl_timer_arm(r, &c->timer, &r->body_q);
					return;
				}
			}
			exchange_begin(r, c);
			return;
		}
		default:
			return;
		}
	}
}

static bool client_on_data(struct sl_reactor *r, struct sl_conn *c, uint16_t bid, char *data,
                           size_t len)
{
	size_t off = 0;
	while (off < len) {
		if (c->closing || c->close_after_flush)
			return false; /* input after an error that closes: discarded */
		if (c->state == SL_CLIENT_EXCHANGE || c->state == SL_CLIENT_FLUSH) {
			/* a pipelined request: keep it for later */
			size_t left = len - off;
			if (c->in && c->in_cap - c->in_len >= left) {
				memcpy(c->in + c->in_len, data + off, left);
				c->in_len += left;
				return false;
			}
			if (c->stash_num == SL_STASH_MAX) {
				sl_conn_close(r, c); /* abusive pipelining */
				return false;
			}
			c->stash[c->stash_num].bid = bid;
			c->stash[c->stash_num].off = (uint16_t)off;
			c->stash[c->stash_num].len = (uint32_t)left;
			c->stash_num++;
			if (c->stash_num >= SL_STASH_MAX / 2)
				sl_conn_recv_pause(r, c);
			return true;
		}
		size_t room = c->in ? c->in_cap - c->in_len : 0;
		if (room == 0) {
			size_t want;
			if (c->state == SL_CLIENT_BODY) {
				/* chunked: double; (Content-Length reserved its size up front) */
				want = c->in_cap ? c->in_cap * 2 : INPUT_BLOCK_MIN;
				want = SL_MIN(want, (size_t)c->cx.head_len +
				                            r->config->limits.body_bytes_max + 8192);
			} else {
				want = c->in_cap ? (size_t)r->config->limits.header_bytes_max
				                 : INPUT_BLOCK_MIN;
			}
			if (want <= c->in_cap || !input_reserve(r, c, want)) {
				if (c->state == SL_CLIENT_BODY)
					respond_error(r, c, 413, NULL,
					              "Request body is larger than the gateway accepts",
					              NULL, true);
				else if (c->in_cap >= r->config->limits.header_bytes_max)
					respond_error(r, c, 431, NULL, "Request header fields too large",
					              NULL, true);
				else
					respond_error(r, c, 503, NULL,
					              "The gateway is out of request memory; retry",
					              "Retry-After: 1\r\n", true);
				return false;
			}
			room = c->in_cap - c->in_len;
		}
		size_t n = SL_MIN(room, len - off);
		memcpy(c->in + c->in_len, data + off, n);
		c->in_len += n;
		off += n;
		client_process(r, c);
	}
	return false;
}

/* --- upstream exchange ------------------------------------------------------------- */

static void upstream_release_to_pool(struct sl_reactor *r, struct sl_conn *u);

/* Detaches client and upstream. */
static void unpair(struct sl_conn *c, struct sl_conn *u)
{
	if (c)
		c->peer = NULL;
	if (u)
		u->peer = NULL;
}

/* Closes u. If its request send is still in flight it references the
 * client's input block: u takes that block (freed with u) and the client
 * continues with a copy. */
static void upstream_close(struct sl_reactor *r, struct sl_conn *u)
{
	struct sl_conn *c = u->peer;
	if (c && u->send_busy && c->in && !u->ux.pinned) {
		size_t cap;
		char *copy = sl_bufpool_get(&r->mem, c->in_cap, &cap);
		if (copy) {
			memcpy(copy, c->in, c->in_len);
			u->ux.pinned = c->in;
			u->ux.pinned_cap = c->in_cap;
			c->in = copy;
			c->in_cap = cap;
		} else {
			/* no memory for a copy: the client cannot continue safely */
			unpair(c, u);
			sl_conn_close(r, c);
		}
	}
	unpair(u->peer, u);
	sl_conn_close(r, u);
}

/*
 * upstream_fail ends the exchange of u's client because of an upstream
 * problem. Before any response byte went to the client it gets an error in
 * its format; after, its response is cut (the connection closes once what
 * was relayed is flushed) so the client sees a truncated message, never a
 * spliced one.
 */
static bool sse_error_event(struct sl_reactor *r, struct sl_conn *c, const char *type,
                            const char *message);
static void converted_stream_end(struct sl_reactor *r, struct sl_conn *c, bool ok,
                                 const char *message);

static void upstream_fail(struct sl_reactor *r, struct sl_conn *u, unsigned status,
                          const char *type, const char *message)
{
	struct sl_conn *c = u->peer;
	/* A stream cut between two events can still end well-formed. */
	bool can_end_stream = c && c->cx.response_started && u->state == SL_UP_BODY &&
	                      u->ux.is_sse && u->ux.framing == SL_BODY_CHUNKED && !u->ux.dechunk &&
	                      sl_chunked_at_boundary(&u->ux.chunked) &&
	                      memcmp(u->ux.tail, "\n\n\r\n", 4) == 0;
	bool converted_stream = c && c->cx.tc && u->ux.convert_mode == SL_CONVERT_STREAM;
	upstream_close(r, u);
	if (!c || c->closing)
		return;
	if (!c->cx.response_started) {
		respond_error(r, c, status, type, message, NULL, false);
		if (!c->closing)
			client_exchange_done(r, c);
	} else if (converted_stream) {
		converted_stream_end(r, c, false, message);
		client_exchange_done(r, c);
	} else if (can_end_stream && sse_error_event(r, c, type ? type : "upstream_error", message)) {
		client_exchange_done(r, c);
	} else {
		c->keep_alive = false;
		c->close_after_flush = true;
		client_exchange_done(r, c);
	}
}

/* Ends a chunked SSE response with an error event in the client's format and
 * the last chunk. Returns false when it could not be queued. */
static bool sse_error_event(struct sl_reactor *r, struct sl_conn *c, const char *type,
                            const char *message)
{
	if (c->ovf_num)
		return false; /* it would overtake chained relay data */
	size_t cap;
	char *block = sl_bufpool_get(&r->mem, 2048, &cap);
	if (!block)
		return false;
	char ev[1200];
	struct wbuf e = { ev, 0, sizeof ev, false };
	if (c->cx.format == SL_FORMAT_ANTHROPIC)
		W_LIT(&e, "event: error\ndata: ");
	else
		W_LIT(&e, "data: ");
	w_error_json(&e, (enum sl_format)c->cx.format, type, message);
	W_LIT(&e, "\n\n");
	SL_ASSERT(!e.overflow);
	struct wbuf w = { block, 0, cap, false };
	static const char hex[] = "0123456789abcdef";
	char size_line[8];
	int k = 0;
	for (int shift = 12; shift >= 0; shift -= 4)
		if ((e.len >> shift) || k || shift == 0)
			size_line[k++] = hex[(e.len >> shift) & 15];
	w_mem(&w, size_line, (size_t)k);
	W_LIT(&w, "\r\n");
	w_mem(&w, ev, e.len);
	W_LIT(&w, "\r\n0\r\n\r\n");
	SL_ASSERT(!w.overflow);
	if (!push_pool_block(c, block, cap, w.len)) {
		sl_bufpool_put(&r->mem, block, cap);
		return false;
	}
	sl_conn_send_flush(r, c);
	client_send_timer(r, c);
	return true;
}

/* --- retries (route.h) --------------------------------------------------------------- */

/* Could the exchange of c take another attempt now (a route exists, the
 * attempt budget and deadline allow)? *backoff_ms: the wait before it. */
enum retry_verdict {
	RETRY_NO = 0,
	RETRY_ROUTE, /* another attempt has somewhere to go */
	RETRY_WAIT,  /* every route is cooling down: the next attempt answers 503 */
};

static enum retry_verdict attempt_retryable(struct sl_reactor *r, struct sl_conn *c,
                                            uint64_t *backoff_ms)
{
	const struct sl_routing_config *rc = &r->config->routing;
	if (c->cx.attempts >= rc->attempts_max || c->cx.attempts >= SL_ROUTE_ATTEMPTS_MAX)
		return RETRY_NO;
	*backoff_ms = sl_route_backoff_ms(rc, c->cx.attempts + 1u, next_rand(r));
	if (r->now_ms + *backoff_ms > c->cx.attempts_deadline_ms)
		return RETRY_NO;
	struct sl_route_pick pick;
	uint64_t retry_at;
	int rc1 = sl_route_pick(r->route, r->route_inflight, c->cx.model_index, c->cx.tried,
	                        c->cx.attempts, r->now_ms, 0, false, &pick, &retry_at);
	if (rc1 == 0)
		return RETRY_ROUTE;
	/* nothing untried: the same (target, key) again, unless it is excluded */
	int rc2 = sl_route_pick(r->route, r->route_inflight, c->cx.model_index, NULL, 0, r->now_ms, 0,
	                        false, &pick, &retry_at);
	if (rc2 == 0)
		return RETRY_ROUTE;
	return rc1 == -EAGAIN || rc2 == -EAGAIN ? RETRY_WAIT : RETRY_NO;
}

static void attempt_retry_later(struct sl_reactor *r, struct sl_conn *u, uint64_t backoff,
                                unsigned status, const char *type, const char *message,
                                bool reusable);

/* Did u's request go out whole? (If not, a failure proves the provider
 * cannot have started on it.) */
static bool request_sent(const struct sl_conn *u)
{
	return u->state == SL_UP_WAIT_HEAD && !u->send_busy && u->sq.num == 0;
}

/* Before any response byte, the attempt on u failed: tell route.h, then
 * retry after a jittered backoff, or answer the client with the error. */
static void attempt_failed(struct sl_reactor *r, struct sl_conn *u, enum sl_route_outcome o,
                           uint64_t retry_after_ms, unsigned status, const char *type,
                           const char *message, bool unsure)
{
	struct sl_conn *c = u->peer;
	uint64_t backoff = 0;
	if (c && c->cx.attempts)
		sl_route_report(r->route, c->cx.model_index, &c->cx.tried[c->cx.attempts - 1], o,
		                retry_after_ms, r->now_ms);
	/* unsure: the provider may have started generating (the whole request
	 * went out, then a reset, a timeout, a 500): retried only if the
	 * operator allows it (routing.retry_unconfirmed) */
	if (!c || c->closing || c->cx.response_started ||
	    (unsure && !r->config->routing.retry_unconfirmed) || !attempt_retryable(r, c, &backoff)) {
		upstream_fail(r, u, status, type, message);
		return;
	}
	attempt_retry_later(r, u, backoff, status, type, message, false);
}

/* Drops the attempt on u (its route outcome already reported) and starts
 * the next one after backoff_ms. */
static void attempt_retry_later(struct sl_reactor *r, struct sl_conn *u, uint64_t backoff,
                                unsigned status, const char *type, const char *message,
                                bool reusable)
{
	struct sl_conn *c = u->peer;
	if (reusable)
		upstream_release_to_pool(r, u); /* the error answer was whole: keep the connection */
	else
		upstream_close(r, u); /* the request input stays the client's */
	attempt_end(r, c);
	c->cx.last_status = (uint16_t)status;
	snprintf(c->cx.last_type, sizeof c->cx.last_type, "%s", type ? type : error_type_for(status));
	snprintf(c->cx.last_msg, sizeof c->cx.last_msg, "%s", message);
	c->cx.retry_ts.tv_sec = (long long)(backoff / 1000);
	c->cx.retry_ts.tv_nsec = (long long)(backoff % 1000) * 1000000;
	struct io_uring_sqe *sqe = sl_reactor_sqe(r);
	io_uring_prep_timeout(sqe, &c->cx.retry_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_RETRY, c->gen, c->slot));
	c->inflight++;
	c->cx.retry_pending = true;
}

void sl_proxy_on_retry(struct sl_reactor *r, struct sl_conn *c)
{
	c->cx.retry_pending = false;
	if (c->kind != SL_CONN_CLIENT || c->state != SL_CLIENT_EXCHANGE || c->peer)
		return;
	exchange_attempt(r, c);
}

/* A Retry-After the provider sent with a 429, in ms (0: none): OpenAI's
 * retry-after-ms, else Retry-After in seconds. */
static uint64_t retry_after_of(const struct sl_http_response *resp)
{
	uint64_t secs = 0;
	for (uint32_t i = 0; i < resp->num_headers; i++) {
		const struct sl_http_header *h = &resp->headers[i];
		uint64_t v = 0;
		size_t j = 0;
		while (j < h->value_len && j < 12 && h->value[j] >= '0' && h->value[j] <= '9')
			v = v * 10 + (uint64_t)(h->value[j++] - '0');
		if (j == 0)
			continue;
		if (h->name_len == 14 && sl_ascii_ieq(h->name, "retry-after-ms", 14))
			return SL_MAX(v, (uint64_t)1);
		if (h->name_len == 11 && sl_ascii_ieq(h->name, "retry-after", 11))
			secs = SL_MAX(v, (uint64_t)1);
	}
	return secs * 1000;
}

static void upstream_send_request(struct sl_reactor *r, struct sl_conn *u)
{
	struct sl_upstream_pool *pool = &r->upstreams[u->ux.provider];
	u->state = SL_UP_WAIT_HEAD;
	sl_conn_send_flush(r, u);
	sl_timer_arm(r, &u->timer, &pool->first_q);
	sl_conn_recv_arm(r, u);
}

static struct sl_conn *upstream_take_pooled(struct sl_reactor *r, uint32_t provider)
{
	struct sl_upstream_pool *pool = &r->upstreams[provider];
	struct sl_conn *u = pool->idle;
	if (!u)
		return NULL;
	pool->idle = u->pool_next;
	pool->num_idle--;
	u->pool_next = NULL;
	sl_timer_cancel(&u->timer);
	u->ux.reused = true;
	SL_METRIC_INC(r->stats.upstream_reused);
	return u;
}

static void pool_unlink(struct sl_reactor *r, struct sl_conn *u)
{
	struct sl_upstream_pool *pool = &r->upstreams[u->ux.provider];
	for (struct sl_conn **p = &pool->idle; *p; p = &(*p)->pool_next) {
		if (*p == u) {
			*p = u->pool_next;
			pool->num_idle--;
			break;
		}
	}
	u->pool_next = NULL;
}

static struct sl_conn *upstream_connect(struct sl_reactor *r, uint32_t provider, int *out_err)
{
	const struct sl_provider_config *p = &r->config->providers[provider];
	int fd = socket(p->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*out_err = errno;
		return NULL;
	}
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sl_conn *u = sl_conn_alloc(r, fd, SL_CONN_UPSTREAM);
	if (!u) {
		close(fd);
		*out_err = EMFILE;
		return NULL;
	}
	u->state = SL_UP_CONNECTING;
	u->ux.provider = provider;
	if (p->tls && sl_tls_attach_client(r, u, provider) != 0) {
		sl_conn_close(r, u);
		*out_err = ENOMEM;
		return NULL;
	}
	struct io_uring_sqe *sqe = sl_reactor_sqe(r);
	io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&p->addr, p->addr_len);
	io_uring_sqe_set_data64(sqe, sl_ud(SL_OP_CONNECT, u->gen, u->slot));
	u->inflight++;
	sl_timer_arm(r, &u->timer, &r->upstreams[provider].connect_q);
	SL_METRIC_INC(r->stats.upstream_connects);
	return u;
}

/*
 * exchange_begin routes a fully received request (head + body in c->in) to
 * an upstream and queues the rewritten request on it.
 */
/* Answers the current exchange with an error and ends it. */
static void exchange_fail(struct sl_reactor *r, struct sl_conn *c, unsigned status,
                          const char *type, const char *message, const char *extra_headers)
{
	respond_error(r, c, status, type, message, extra_headers, false);
	if (!c->closing)
		client_exchange_done(r, c);
}

/* Answers with a small JSON body built by the caller (copied). */
static void respond_json(struct sl_reactor *r, struct sl_conn *c, unsigned status,
                         const char *extra_headers, const char *body, size_t body_len)
{
	count_local(r, status);
	size_t cap;
	char *block = sl_bufpool_get(&r->mem, 512 + LIMIT_HEADERS_BYTES_MAX + body_len, &cap);
	if (!block) {
		sl_conn_close(r, c);
		return;
	}
	struct wbuf w = { block, 0, cap, false };
	W_LIT(&w, "HTTP/1.1 ");
	w_u64(&w, status);
	W_LIT(&w, " ");
	w_str(&w, sl_http_status_reason(status));
	W_LIT(&w, "\r\nContent-Type: application/json\r\nContent-Length: ");
	w_u64(&w, body_len);
	W_LIT(&w, "\r\nx-request-id: ");
	w_str(&w, c->cx.request_id);
	W_LIT(&w, "\r\n");
	w_limit_headers(r, &w, c);
	if (extra_headers)
		w_str(&w, extra_headers);
	if (!c->keep_alive)
		W_LIT(&w, "Connection: close\r\n");
	W_LIT(&w, "\r\n");
	w_mem(&w, body, body_len);
	SL_ASSERT(!w.overflow);
	if (!push_response_head(r, c, block, cap, w.len)) {
		sl_conn_close(r, c);
		return;
	}
	sl_conn_send_flush(r, c);
	client_send_timer(r, c);
}

/* Headers a converted request does not carry to a provider of the other
 * format, and Accept-Encoding: a converter must read the upstream's body. */
static bool skip_for_conversion(const struct sl_http_header *h, enum sl_format upstream)
{
	if (h->name_len == 15 && sl_ascii_ieq(h->name, "accept-encoding", 15))
		return true;
	if (upstream == SL_FORMAT_OPENAI)
		return h->name_len > 10 && sl_ascii_ieq(h->name, "anthropic-", 10);
	return h->name_len > 7 && sl_ascii_ieq(h->name, "openai-", 7);
}

/* The arena of one converted exchange: generous for the trees of a request
 * and its response, bounded so one request cannot take a reactor's memory. */
static size_t exchange_arena_limit(const struct sl_reactor *r, size_t body_len)
{
	size_t lim = 8 * body_len + ((size_t)4 << 20);
	return SL_MIN(lim, (size_t)(r->config->limits.memory_per_core_bytes / 4));
}

/*
 * convert_request parses the client's body and builds the upstream body in
 * the provider's format into a pool block (the upstream's send queue owns
 * it, so a retry or an early close never depends on the client's memory).
 * Returns 0, or answers the client itself and returns -1.
 */
static int convert_request(struct sl_reactor *r, struct sl_conn *c,
                           const struct sl_model_config *model, const struct sl_model_target *t,
                           const struct sl_provider_config *p, const char *client_model,
                           size_t client_model_len, const char *body, size_t body_len,
                           void **out_block, size_t *out_cap, size_t *out_len)
{
	sl_arena_release(&c->cx.arena);
	sl_arena_init(&c->cx.arena, &r->mem, exchange_arena_limit(r, body_len));
	struct sl_arena *a = &c->cx.arena;
	struct sl_json *in = NULL;
	struct sl_json_error jerr = { 0 };
	if (sl_json_parse(a, body, body_len, NULL, &in, &jerr) != 0) {
		char msg[160];
		snprintf(msg, sizeof msg, "The request body is not valid JSON: %s at byte %zu",
		         jerr.message ? jerr.message : "error", jerr.offset);
		exchange_fail(r, c, a->failed ? 413 : 400, NULL, msg, NULL);
		return -1;
	}
	struct sl_convert_ctx *ctx = sl_arena_alloc(a, sizeof *ctx);
	char *name = sl_arena_memdup(a, client_model, client_model_len);
	if (!ctx || !name) {
		exchange_fail(r, c, 503, NULL, "The gateway is out of request memory; retry",
		              "Retry-After: 1\r\n");
		return -1;
	}
	*ctx = (struct sl_convert_ctx){
		.route = (enum sl_route)c->cx.route,
		.upstream_format = p->format,
		.upstream_model = t->model,
		.client_model = name,
		.default_max_tokens = model->max_output_tokens ? model->max_output_tokens : 4096,
		.request_id = c->cx.request_id,
		.created_s = (int64_t)time(NULL),
	};
	if (ctx->route == SL_ROUTE_MESSAGES && p->format == SL_FORMAT_OPENAI)
		ctx->estimated_input_tokens = sl_count_tokens_local(in);
	struct sl_json *out = NULL;
	const char *msg = NULL;
	if (sl_convert_request(a, ctx, in, &out, &msg) != 0 || !out) {
		if (a->failed)
			exchange_fail(r, c, 413, NULL,
			              "The request is too large to convert within the gateway's limits",
			              NULL);
		else
			exchange_fail(r, c, 400, NULL, msg ? msg : "The request cannot be converted",
			              NULL);
		return -1;
	}
	size_t n = sl_json_serialized_len(out);
	void *block = sl_bufpool_get(&r->mem, n, out_cap);
	if (!block) {
		exchange_fail(r, c, 503, NULL, "The gateway is out of request memory; retry",
		              "Retry-After: 1\r\n");
		return -1;
	}
	*out_len = sl_json_write(out, block);
	SL_ASSERT(*out_len == n);
	*out_block = block;
	c->cx.conv = ctx;
	return 0;
}

/* count_tokens for a model no Anthropic upstream serves: counted here. */
static void count_tokens_locally(struct sl_reactor *r, struct sl_conn *c, const char *body,
                                 size_t body_len)
{
	sl_arena_release(&c->cx.arena);
	sl_arena_init(&c->cx.arena, &r->mem, exchange_arena_limit(r, body_len));
	struct sl_json *in = NULL;
	struct sl_json_error jerr = { 0 };
	if (sl_json_parse(&c->cx.arena, body, body_len, NULL, &in, &jerr) != 0) {
		exchange_fail(r, c, 400, NULL, "The request body is not valid JSON", NULL);
		return;
	}
	char out[64];
	int n = snprintf(out, sizeof out, "{\"input_tokens\":%lld}",
	                 (long long)sl_count_tokens_local(in));
	respond_json(r, c, 200, NULL, out, (size_t)n);
	if (!c->closing)
		client_exchange_done(r, c);
}

static uint64_t estimate_tokens(struct sl_reactor *r, struct sl_conn *c, const char *body,
                                size_t body_len, const struct sl_model_config *model,
                                uint64_t *output_part)
{
	const struct sl_rate_config *rc = &r->config->rate;
	uint64_t rough = (body_len + 3) / 4; /* JSON bytes / 4: never far below */
	uint64_t output = rc->max_tokens_estimate_max;
	if (model->max_output_tokens && model->max_output_tokens < output)
		output = model->max_output_tokens;
	sl_arena_release(&c->cx.arena);
	sl_arena_init(&c->cx.arena, &r->mem, exchange_arena_limit(r, body_len));
	struct sl_json *in = NULL;
	struct sl_json_error jerr = { 0 };
	*output_part = output;
	if (sl_json_parse(&c->cx.arena, body, body_len, NULL, &in, &jerr) != 0)
		return rough + output; /* refused later, by the converter or upstream */
	static const char *const max_keys[] = { "max_tokens", "max_completion_tokens",
		                                "max_output_tokens" };
	for (size_t i = 0; i < SL_ARRAY_LEN(max_keys); i++) {
		int64_t asked;
		if (sl_json_get_int(in, max_keys[i], &asked) && asked >= 0) {
			output = SL_MIN(output, (uint64_t)asked);
			break;
		}
	}
	/* count_tokens' local count knows messages, system and tools; bodies
	 * without messages (prompt, input) fall back to the rough count */
	int64_t counted = sl_json_get(in, "messages") ? sl_count_tokens_local(in) : -1;
	uint64_t input = counted > 0 ? (uint64_t)counted : rough;
	sl_arena_release(&c->cx.arena);
	*output_part = output;
	return input + output;
}

/*
 * exchange_begin routes a fully received request (head + body in c->in) to
 * an upstream and queues the rewritten request on it: the client's body
 * itself when the formats match (zero-copy), a converted body otherwise.
 */
/* The client's model name, at the offsets exchange_begin found in body:
 * in place, or unescaped into buf. Its length, or -1 (bad or too long). */
static ssize_t model_name(const struct sl_conn *c, const char *body, char buf[MODEL_NAME_MAX],
                          const char **out)
{
	const char *p = body + c->cx.model_start;
	size_t n = c->cx.model_end - c->cx.model_start;
	if (!c->cx.model_escaped) {
		*out = p;
		return (ssize_t)n;
	}
	*out = buf;
	return sl_json_unescape_string(p, n, buf, MODEL_NAME_MAX);
}

static void exchange_begin(struct sl_reactor *r, struct sl_conn *c)
{
	const struct sl_config *cfg = r->config;
	sl_timer_cancel(&c->timer);
	c->state = SL_CLIENT_EXCHANGE;
	SL_METRIC_INC(r->num_exchanges);

	const char *body = c->in + c->cx.head_len;
	size_t body_len = (size_t)c->cx.body_len;

	size_t ms = 0, me = 0;
	bool escaped = false;
	int rc = sl_json_find_model(body, body_len, &ms, &me, &escaped);
	/* kept for every attempt: the scan is a pass over the whole body */
	c->cx.model_start = (uint32_t)ms;
	c->cx.model_end = (uint32_t)me;
	c->cx.model_escaped = escaped;
	if (rc != 0) {
		exchange_fail(r, c, 400, NULL,
		              rc == -ENOENT   ? "you must provide a model parameter"
		              : rc == -EINVAL ? "model: expected a string"
		                              : "The request body is not a valid JSON object",
		              NULL);
		return;
	}
	char name_buf[MODEL_NAME_MAX];
	const char *name;
	ssize_t name_len = model_name(c, body, name_buf, &name);
	const struct sl_model_config *model =
	        name_len >= 0 ? sl_config_find_model(cfg, name, (size_t)name_len) : NULL;
	if (!model) {
		char msg[MODEL_NAME_MAX + 96];
		snprintf(msg, sizeof msg, "The model '%.*s' does not exist or is not served here",
		         (int)SL_MIN((size_t)SL_MAX(name_len, 0), (size_t)MODEL_NAME_MAX), name);
		exchange_fail(r, c, 404, NULL, msg, NULL);
		return;
	}
	c->cx.model_index = (uint32_t)(model - cfg->models);
	c->cx.has_model = true;
	if (r->ulog) {
		/* from here on the exchange leaves a usage record */
		c->cx.routed = true;
		c->cx.request_bytes = body_len;
		/* strict: the response's last bytes wait for the record */
		c->flush_deferred = cfg->usage_log.strict;
		c->cx.scan_usage = true;
		sl_usage_scanner_init(&c->cx.usage_scan);
		memset(&c->cx.usage, 0, sizeof c->cx.usage);
	}
	if (!exchange_admit(r, c, model, body, body_len))
		return;
	c->cx.attempts_deadline_ms = r->now_ms + cfg->routing.deadline_ms;
	exchange_attempt(r, c);
}

static uint64_t next_rand(struct sl_reactor *r)
{
	/* xorshift64*: weights and jitter, not secrets */
	uint64_t x = r->rnd ? r->rnd : 0x9E3779B97F4A7C15ull;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	r->rnd = x;
	return x * 0x2545F4914F6CDD1Dull;
}

/* No (target, key) can take an attempt: every one is cooling down or its
 * circuit is open (503 with the earliest recovery), or none is usable. */
static void exchange_no_route(struct sl_reactor *r, struct sl_conn *c, int rc, uint64_t retry_at)
{
	const struct sl_model_config *model = &r->config->models[c->cx.model_index];
	char msg[MODEL_NAME_MAX + 160];
	if (rc == -EAGAIN) {
		uint64_t secs = retry_at > r->now_ms ? (retry_at - r->now_ms + 999) / 1000 : 1;
		char hdr[48];
		snprintf(hdr, sizeof hdr, "Retry-After: %llu\r\n", (unsigned long long)SL_MAX(secs, 1));
		snprintf(msg, sizeof msg,
		         "Every upstream of model '%s' is rate limited or failing; retry after %llu s",
		         model->id, (unsigned long long)SL_MAX(secs, 1));
		exchange_fail(r, c, 503, "overloaded", msg, hdr);
	} else if (c->cx.attempts > 0 && c->cx.last_status) {
		exchange_fail(r, c, c->cx.last_status, c->cx.last_type, c->cx.last_msg, NULL);
	} else {
		snprintf(msg, sizeof msg, "No usable upstream key for model '%s'", model->id);
		exchange_fail(r, c, 503, "overloaded", msg, "Retry-After: 60\r\n");
	}
}

/*
 * exchange_attempt sends the admitted request to the next (target, key)
 * route.h picks: converted if that target speaks the other format, from the
 * request kept in c->in (every attempt replays it).
 */
static void exchange_attempt(struct sl_reactor *r, struct sl_conn *c)
{
	const struct sl_config *cfg = r->config;
	const struct sl_model_config *model = &cfg->models[c->cx.model_index];
	struct sl_route_pick pick;
	uint64_t retry_at = 0;
	uint64_t rnd = next_rand(r);
	int prc = sl_route_pick(r->route, r->route_inflight, c->cx.model_index, c->cx.tried,
	                        c->cx.attempts, r->now_ms, rnd, true, &pick, &retry_at);
	if (prc && c->cx.attempts) {
		/* every pair was tried: one that failed may be tried again */
		uint64_t retry_at2 = 0;
		int prc2 = sl_route_pick(r->route, r->route_inflight, c->cx.model_index, NULL, 0,
		                         r->now_ms, rnd, true, &pick, &retry_at2);
		if (prc2 == 0)
			prc = 0;
		else if (prc != -EAGAIN && prc2 == -EAGAIN) {
			prc = prc2;
			retry_at = retry_at2;
		}
	}
	if (prc) {
		exchange_no_route(r, c, prc, retry_at);
		return;
	}
	struct sl_http_limits hl = http_limits(r);
	struct sl_http_request req = { .headers = r->headers };
	ssize_t n = sl_http_parse_request(c->in, c->cx.head_len, &req, &hl);
	SL_ASSERT(n == (ssize_t)c->cx.head_len);
	(void)n;
	const char *body = c->in + c->cx.head_len;
	size_t body_len = (size_t)c->cx.body_len;
	enum sl_route route = (enum sl_route)c->cx.route;
	size_t ms = c->cx.model_start, me = c->cx.model_end; /* exchange_begin found it */
	char name_buf[MODEL_NAME_MAX];
	const char *name;
	ssize_t name_len = model_name(c, body, name_buf, &name);

	const struct sl_model_target *t = &model->targets[pick.target];
	const struct sl_provider_config *p = &cfg->providers[t->provider];
	c->cx.tried[c->cx.attempts++] = pick;
	c->cx.target = t;
	c->cx.attempt_key = sl_route_key_index(r->route, t->provider, pick.key);
	c->cx.attempt_inflight = true;
	r->route_inflight[c->cx.attempt_key]++;
	/* an earlier attempt's conversion does not carry over */
	c->cx.conv = NULL;
	c->cx.tc = NULL;

	/* Which path: pass-through, conversion, or answered here. */
	bool convert;
	switch (route) {
	case SL_ROUTE_EMBEDDINGS:
	case SL_ROUTE_IMAGES_GENERATIONS:
		if (p->format != SL_FORMAT_OPENAI) {
			char msg[MODEL_NAME_MAX + 96];
			snprintf(msg, sizeof msg, "The model '%s' does not support this endpoint",
			         model->id);
			exchange_fail(r, c, 400, NULL, msg, NULL);
			return;
		}
		convert = false;
		break;
	case SL_ROUTE_COUNT_TOKENS:
		if (p->format != SL_FORMAT_ANTHROPIC) {
			count_tokens_locally(r, c, body, body_len);
			return;
		}
		convert = false;
		break;
	case SL_ROUTE_RESPONSES:
		convert = true; /* served from chat or messages upstreams */
		break;
	default:
		convert = (uint8_t)p->format != c->cx.format;
		break;
	}
	void *conv_block = NULL;
	size_t conv_cap = 0, conv_len = 0;
	if (convert && convert_request(r, c, model, t, p, name, (size_t)name_len, body, body_len,
	                               &conv_block, &conv_cap, &conv_len) != 0)
		return;

	/* the upstream request head */
	size_t extra = 512 + strlen(p->base_path) + strlen(p->host);
	for (uint32_t i = 0; i < p->num_headers; i++)
		extra += strlen(p->headers[i].name) + strlen(p->headers[i].value) + 4;
	const struct sl_provider_key *key = &p->keys[pick.key];
	extra += strlen(key->key);
	/* A small pass-through body is copied behind the head: one plain send
	 * instead of a four-part sendmsg costs less than the copy. */
	size_t model_len = strlen(t->model);
	bool inline_body = !convert && body_len <= SMALL_BODY_INLINE_MAX;
	if (inline_body)
		extra += body_len + model_len;
	size_t cap;
	char *block = sl_bufpool_get(&r->mem, c->cx.head_len + extra, &cap);
	if (!block) {
		sl_bufpool_put(&r->mem, conv_block, conv_cap);
		exchange_fail(r, c, 503, NULL, "The gateway is out of request memory; retry",
		              "Retry-After: 1\r\n");
		return;
	}
	struct wbuf w = { block, 0, cap, false };
	W_LIT(&w, "POST ");
	w_str(&w, p->base_path);
	if (convert) {
		if (c->cx.conv->upstream_route == SL_ROUTE_MESSAGES)
			W_LIT(&w, "/v1/messages");
		else if (c->cx.conv->upstream_route == SL_ROUTE_COMPLETIONS)
			W_LIT(&w, "/completions");
		else
			W_LIT(&w, "/chat/completions");
	} else {
		struct sl_route_match m;
		sl_router_match(req.target, req.target_len, &m);
		if (p->format == SL_FORMAT_ANTHROPIC)
			W_LIT(&w, "/v1");
		w_mem(&w, m.suffix.ptr, m.suffix.len);
		w_mem(&w, m.query.ptr, m.query.len);
	}
	W_LIT(&w, " HTTP/1.1\r\nHost: ");
	w_str(&w, p->host);
	W_LIT(&w, "\r\n");
	struct sl_str tokens[16];
	size_t num_tokens = connection_tokens(req.headers, req.num_headers, tokens, 16);
	bool has_version = false;
	for (uint32_t i = 0; i < req.num_headers; i++) {
		const struct sl_http_header *h = &req.headers[i];
		if (is_hop_or_owned(h) || listed_in(h, tokens, num_tokens))
			continue;
		if (convert && skip_for_conversion(h, p->format))
			continue;
		if (h->name_len == 17 && sl_ascii_ieq(h->name, "anthropic-version", 17))
			has_version = true;
		w_header(&w, h->name, h->name_len, h->value, h->value_len);
	}
	if (p->format == SL_FORMAT_OPENAI) {
		W_LIT(&w, "Authorization: Bearer ");
		w_str(&w, key->key);
		W_LIT(&w, "\r\n");
	} else {
		W_LIT(&w, "x-api-key: ");
		w_str(&w, key->key);
		W_LIT(&w, "\r\n");
		if (!has_version) {
			W_LIT(&w, "anthropic-version: ");
			w_str(&w, p->anthropic_version);
			W_LIT(&w, "\r\n");
		}
	}
	for (uint32_t i = 0; i < p->num_headers; i++)
		w_header(&w, p->headers[i].name, strlen(p->headers[i].name), p->headers[i].value,
		         strlen(p->headers[i].value));
	W_LIT(&w, "x-request-id: ");
	w_str(&w, c->cx.request_id);
	W_LIT(&w, "\r\nContent-Length: ");
	w_u64(&w, convert ? conv_len : body_len - (me - ms) + model_len);
	W_LIT(&w, "\r\n\r\n");
	if (inline_body) {
		w_mem(&w, body, ms);
		w_mem(&w, t->model, model_len);
		w_mem(&w, body + me, body_len - me);
	}
	SL_ASSERT(!w.overflow);

	struct sl_conn *u = c->cx.retried ? NULL : upstream_take_pooled(r, t->provider);
	if (!u) {
		int err = 0;
		u = upstream_connect(r, t->provider, &err);
		if (!u) {
			sl_bufpool_put(&r->mem, block, cap);
			sl_bufpool_put(&r->mem, conv_block, conv_cap);
			char msg[256];
			snprintf(msg, sizeof msg, "provider %s: cannot open a connection: %s", p->name,
			         strerror(err));
			exchange_fail(r, c, 502, "connection_error", msg, NULL);
			return;
		}
	}
	c->peer = u;
	u->peer = c;
	/* a fresh or pooled upstream has an empty queue: these pushes fit */
	bool ok = push_pool_block(u, block, cap, w.len);
	SL_ASSERT(ok);
	if (convert) {
		ok = push_pool_block(u, conv_block, conv_cap, conv_len);
	} else if (!inline_body) {
		ok = push_static(u, body, ms) && push_static(u, t->model, model_len) &&
		     push_static(u, body + me, body_len - me);
	}
	SL_ASSERT(ok);
	if (u->state != SL_UP_CONNECTING)
		upstream_send_request(r, u);
}

/* --- converted responses ------------------------------------------------------------ */

/* Frames out's bytes (after its 10-byte placeholder) as one chunk, or as raw
 * bytes for an HTTP/1.0 client, and queues them. terminal appends the last
 * chunk. Releases out. */
static void push_converted(struct sl_reactor *r, struct sl_conn *c, struct sl_buf *out,
                           bool terminal)
{
	static const char hex[] = "0123456789abcdef";
	if (out->failed) {
		sl_buf_release(out);
		c->keep_alive = false;
		c->close_after_flush = true;
		return;
	}
	size_t data_len = out->len >= 10 ? out->len - 10 : 0;
	if (!c->cx.http10) {
		if (data_len)
			SL_BUF_LIT(out, "\r\n");
		if (terminal)
			SL_BUF_LIT(out, "0\r\n\r\n");
	}
	if (out->failed || (!data_len && !terminal)) {
		sl_buf_release(out);
		return;
	}
	size_t start = 10;
	if (!c->cx.http10 && data_len) {
		for (int k = 0; k < 8; k++)
			out->p[7 - k] = hex[(data_len >> (4 * k)) & 15];
		start = 0; /* "0000002a\r\n" is a valid chunk-size line */
	}
	if (out->len == start) {
		sl_buf_release(out);
		return;
	}
	/* Behind a full queue (the upstream's pause still in flight), output
	 * waits in one pending buffer, in order. */
	if (c->cx.pending.len || c->sq.num >= SL_SENDQ_CAP - 4) {
		if (!c->cx.pending.pool)
			sl_buf_init(&c->cx.pending, &r->mem, (size_t)16 << 20);
		if (!sl_buf_append(&c->cx.pending, out->p + start, out->len - start)) {
			c->keep_alive = false;
			c->close_after_flush = true;
		}
		sl_buf_release(out);
		return;
	}
	size_t len, cap;
	char *block = sl_buf_take(out, &len, &cap);
	struct sl_send_entry e = {
		.ptr = block + start,
		.len = (uint32_t)(len - start),
		.owner = SL_OWN_POOL,
		.block_class = (uint8_t)sl_bufpool_class(cap),
		.block = block,
	};
	bool ok = sl_conn_send_push(c, &e);
	SL_ASSERT(ok); /* room was checked above */
}

/* Queues the pending converted output once the send queue has room. */
static void pending_drain(struct sl_reactor *r, struct sl_conn *c)
{
	if (!c->cx.pending.len || c->sq.num >= SL_SENDQ_CAP - 4)
		return;
	size_t len, cap;
	char *block = sl_buf_take(&c->cx.pending, &len, &cap);
	struct sl_send_entry e = {
		.ptr = block,
		.len = (uint32_t)len,
		.owner = SL_OWN_POOL,
		.block_class = (uint8_t)sl_bufpool_class(cap),
		.block = block,
	};
	bool ok = sl_conn_send_push(c, &e);
	SL_ASSERT(ok);
	sl_conn_send_flush(r, c);
}

static void converted_buf_init(struct sl_reactor *r, struct sl_buf *out)
{
	sl_buf_init(out, &r->mem, 0);
	SL_BUF_LIT(out, "00000000\r\n"); /* placeholder for the chunk-size line */
}

/* Ends a converted stream: closing events (or an error event), last chunk. */
static void converted_stream_end(struct sl_reactor *r, struct sl_conn *c, bool ok,
                                 const char *message)
{
	struct sl_buf out;
	converted_buf_init(r, &out);
	sl_transcoder_finish(c->cx.tc, ok, message, &out);
	push_converted(r, c, &out, true);
	c->cx.tc = NULL;
	sl_conn_send_flush(r, c);
	client_send_timer(r, c);
}

/* Starts the client's response of a converted exchange. */
static bool convert_response_head(struct sl_reactor *r, struct sl_conn *u, struct sl_conn *c,
                                  const struct sl_http_response *resp)
{
	u->ux.status = resp->status;
	u->ux.dechunk = resp->framing == SL_BODY_CHUNKED;
	const struct sl_http_header *ra =
	        sl_http_find_header(resp->headers, resp->num_headers, "retry-after", 11);
	if (ra && ra->value_len < sizeof u->ux.retry_after) {
		memcpy(u->ux.retry_after, ra->value, ra->value_len);
		u->ux.retry_after[ra->value_len] = '\0';
	}
	const struct sl_http_header *ct =
	        sl_http_find_header(resp->headers, resp->num_headers, "content-type", 12);
	bool sse = ct && ct->value_len >= 17 && sl_ascii_ieq(ct->value, "text/event-stream", 17);
	if (resp->status < 200 || resp->status > 299 || !c->cx.conv->stream || !sse) {
		u->ux.convert_mode = SL_CONVERT_BUFFER;
		sl_buf_init(&u->ux.body, &r->mem, r->config->limits.body_bytes_max);
		return true;
	}
	u->ux.convert_mode = SL_CONVERT_STREAM;
	c->cx.tc = sl_transcoder_create(&c->cx.arena, &r->mem, c->cx.conv);
	if (!c->cx.tc)
		return false;
	size_t cap;
	char *block = sl_bufpool_get(&r->mem, 256 + LIMIT_HEADERS_BYTES_MAX, &cap);
	if (!block)
		return false;
	c->cx.stream = true;
	struct wbuf w = { block, 0, cap, false };
	W_LIT(&w, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
	          "Cache-Control: no-cache\r\n");
	w_limit_headers(r, &w, c);
	W_LIT(&w, "x-request-id: ");
	w_str(&w, c->cx.request_id);
	if (c->cx.http10) {
		c->keep_alive = false;
		W_LIT(&w, "\r\nConnection: close\r\n\r\n");
	} else {
		W_LIT(&w, "\r\nTransfer-Encoding: chunked\r\n");
		if (!c->keep_alive)
			W_LIT(&w, "Connection: close\r\n");
		W_LIT(&w, "\r\n");
	}
	SL_ASSERT(!w.overflow);
	return push_response_head(r, c, block, cap, w.len);
}

/* Body bytes of a converted response (already de-chunked). Returns false
 * when the exchange failed and was ended here. */
static bool convert_response_body(struct sl_reactor *r, struct sl_conn *u, struct sl_conn *c,
                                  const char *data, size_t len)
{
	if (u->ux.convert_mode == SL_CONVERT_BUFFER) {
		if (!sl_buf_append(&u->ux.body, data, len)) {
			u->ux.resp_keep_alive = false;
			upstream_fail(r, u, 502, "upstream_error",
			              "the provider's response is too large to convert");
			return false;
		}
		return true;
	}
	struct sl_buf out;
	converted_buf_init(r, &out);
	if (sl_transcoder_feed(c->cx.tc, data, len, &out) != 0) {
		push_converted(r, c, &out, false);
		u->ux.resp_keep_alive = false;
		upstream_fail(r, u, 502, "upstream_error", "the provider sent a malformed stream");
		return false;
	}
	push_converted(r, c, &out, false);
	return true;
}

/* The upstream response of a converted exchange is complete. */
static void convert_response_end(struct sl_reactor *r, struct sl_conn *u, struct sl_conn *c)
{
	if (u->ux.convert_mode == SL_CONVERT_STREAM) {
		converted_stream_end(r, c, true, NULL);
		return;
	}
	struct sl_arena *a = &c->cx.arena;
	const char *text = u->ux.body.p ? u->ux.body.p : "";
	size_t text_len = u->ux.body.len;
	unsigned status = u->ux.status;
	char extra[48] = "";
	if (u->ux.retry_after[0])
		snprintf(extra, sizeof extra, "Retry-After: %s\r\n", u->ux.retry_after);
	if (status >= 200 && status <= 299) {
		struct sl_json *in = NULL, *out = NULL;
		struct sl_json_error jerr = { 0 };
		const char *msg = NULL;
		if (sl_json_parse(a, text, text_len, NULL, &in, &jerr) != 0 ||
		    sl_convert_response(a, c->cx.conv, in, &out, &msg) != 0 || !out) {
			char m[200];
			snprintf(m, sizeof m, "the provider's response cannot be converted: %s",
			         msg ? msg : jerr.message ? jerr.message : "invalid");
			respond_error(r, c, 502, "upstream_error", m, NULL, false);
			return;
		}
		size_t n = sl_json_serialized_len(out);
		char *body = sl_arena_alloc(a, n + 1);
		if (!body) {
			respond_error(r, c, 503, NULL, "The gateway is out of response memory; retry",
			              "Retry-After: 1\r\n", false);
			return;
		}
		sl_json_write(out, body);
		respond_json(r, c, status, NULL, body, n);
		return;
	}
	size_t n = 0;
	const char *body = sl_convert_error(a, c->cx.conv, status, text, text_len, &n);
	respond_json(r, c, status, extra[0] ? extra : NULL, body, n);
}

/* Queues data (owned as described by tmpl) for the client and tracks the
 * response framing. Returns true when the client now owns the buffer. */
static bool relay_body(struct sl_reactor *r, struct sl_conn *u, struct sl_conn *c,
                       char *data, size_t len, const struct sl_send_entry *tmpl)
{
	size_t take = len;
	bool done = false;
	switch ((enum sl_http_framing)u->ux.framing) {
	case SL_BODY_NONE:
		take = 0;
		done = true;
		break;
	case SL_BODY_LENGTH:
		take = (size_t)SL_MIN((uint64_t)len, u->ux.body_left);
		u->ux.body_left -= take;
		done = u->ux.body_left == 0;
		break;
	case SL_BODY_CHUNKED: {
		/* passed through as is; for an HTTP/1.0 client decoded in place
		 * (the recv buffer is ours) and sent close-delimited */
		size_t out_len = 0;
		ssize_t n = sl_chunked_feed(&u->ux.chunked, data, len,
		                            u->ux.dechunk ? data : NULL, &out_len);
		if (n == SL_ERROR) {
			/* relay what we have, then cut: the client sees a truncated body */
			u->ux.resp_keep_alive = false;
			upstream_fail(r, u, 502, "upstream_error", "invalid chunked framing upstream");
			return false;
		}
		take = (size_t)n;
		done = u->ux.chunked.complete;
		if (take < len)
			u->ux.resp_keep_alive = false; /* bytes after the response */
		if (u->ux.dechunk)
			take = len = out_len;
		break;
	}
	case SL_BODY_UNTIL_CLOSE:
		break;
	}
	if (take < len)
		u->ux.resp_keep_alive = false; /* bytes after the response: not reusable */
	if (c->cx.scan_usage && take)
		usage_feed(u, c, data, take);
	bool kept = false;
	if (u->ux.convert_mode != SL_CONVERT_NONE) {
		/* converted: the bytes are read here, never relayed as they are */
		if (take > 0 && !convert_response_body(r, u, c, data, take))
			return false;
		take = 0;
		if ((c->sq.num >= relay_pause_at(r) || c->cx.pending.len) && !done) {
			sl_conn_recv_pause(r, u);
			sl_timer_cancel(&u->timer);
		}
	}
	if (take > 0) {
		if (tmpl->owner == SL_OWN_RING) {
			sl_conn_send_push_ring(r, c, tmpl->bid, data, take);
		} else {
			/* the first body bytes of a split head: the queue is near empty */
			struct sl_send_entry e = *tmpl;
			e.ptr = data;
			e.len = (uint32_t)take;
			if (!sl_conn_send_push(c, &e)) {
				u->ux.resp_keep_alive = false;
				upstream_fail(r, u, 502, "upstream_error", "relay queue overflow");
				return false;
			}
		}
		kept = true;
		if (take >= 4) {
			memcpy(u->ux.tail, data + take - 4, 4);
		} else {
			memmove(u->ux.tail, u->ux.tail + take, 4 - take);
			memcpy(u->ux.tail + 4 - take, data, take);
		}
		if (c->sq.num >= relay_pause_at(r) && !done) {
			sl_conn_recv_pause(r, u);
			sl_timer_cancel(&u->timer); /* a stall is the client's, not upstream's */
		}
	}
	if (done && u->ux.convert_mode != SL_CONVERT_NONE)
		convert_response_end(r, u, c);
	sl_conn_send_flush(r, c);
	client_send_timer(r, c);
	if (done) {
		c->cx.upstream_done = true;
		upstream_release_to_pool(r, u); /* unpairs */
		client_exchange_done(r, c);
	} else if (!u->recv_paused) {
		sl_timer_arm(r, &u->timer, &r->upstreams[u->ux.provider].idle_q);
	}
	return kept;
}

/* The images of an images/generations response: its "url" and "b64_json"
 * keys (a quote right after a backslash is escaped: not a key), counted as
 * the bytes pass, a key cut between two pieces included. */
static const struct sl_str image_keys[] = { { "\"url\"", 5 }, { "\"b64_json\"", 10 } };
#define IMAGE_KEY_MAX 10

static uint32_t image_keys_in(const char *p, size_t n, char before)
{
	uint32_t found = 0;
	for (size_t k = 0; k < SL_ARRAY_LEN(image_keys); k++) {
		const char *key = image_keys[k].ptr;
		size_t kl = image_keys[k].len;
		for (const char *q = p; (q = memmem(q, (size_t)(p + n - q), key, kl)) != NULL; q++)
			if ((q == p ? before : q[-1]) != '\\')
				found++;
	}
	return found;
}

static void count_images(struct sl_conn *c, const char *data, size_t len)
{
	char win[2 * IMAGE_KEY_MAX];
	size_t t = c->cx.img_tail_len, head = SL_MIN(len, (size_t)IMAGE_KEY_MAX - 1);
	if (t) {
		/* keys that start in the last piece's tail and end in this one */
		memcpy(win, c->cx.img_tail, t);
		memcpy(win + t, data, head);
		size_t whole = t + head;
		for (size_t k = 0; k < SL_ARRAY_LEN(image_keys); k++)
			for (size_t i = 0; i < t; i++)
				if (i + image_keys[k].len > t && i + image_keys[k].len <= whole &&
				    memcmp(win + i, image_keys[k].ptr, image_keys[k].len) == 0 &&
				    (i == 0 || win[i - 1] != '\\'))
					c->cx.images++;
	}
	c->cx.images += image_keys_in(data, len, t ? c->cx.img_tail[t - 1] : 0);
	/* keep the last IMAGE_KEY_MAX - 1 bytes for a key cut at the end */
	size_t keep = IMAGE_KEY_MAX - 1;
	if (len >= keep) {
		memcpy(c->cx.img_tail, data + len - keep, keep);
		c->cx.img_tail_len = (uint8_t)keep;
	} else {
		size_t from_old = SL_MIN((size_t)t, keep - len);
		memmove(c->cx.img_tail, c->cx.img_tail + t - from_old, from_old);
		memcpy(c->cx.img_tail + from_old, data, len);
		c->cx.img_tail_len = (uint8_t)(from_old + len);
	}
}

/* The upstream's response bytes pass the usage scanner; their count and,
 * for an event stream, the number of events are kept for the estimate a
 * response cut short is billed by (usage_log_record). */
static void usage_feed(const struct sl_conn *u, struct sl_conn *c, const char *data, size_t len)
{
	sl_usage_scanner_feed(&c->cx.usage_scan, data, len, &c->cx.usage);
	c->cx.relayed_bytes += len;
	if (c->cx.route == SL_ROUTE_IMAGES_GENERATIONS && len)
		count_images(c, data, len);
	if (!u->ux.is_sse)
		return;
	/* an event ends with a blank line: "\n\n", maybe split across pieces */
	const char *p = data, *end = data + len;
	if (c->cx.last_was_nl && *p == '\n')
		c->cx.events++;
	while ((p = memchr(p, '\n', (size_t)(end - p))) != NULL && ++p < end)
		if (*p == '\n')
			c->cx.events++, p++;
	c->cx.last_was_nl = end[-1] == '\n';
}

/* Builds and queues the client's response head from the upstream's. */
static bool relay_head(struct sl_reactor *r, struct sl_conn *u, struct sl_conn *c,
                       const struct sl_http_response *resp, size_t inline_room)
{
	size_t need = 256 + LIMIT_HEADERS_BYTES_MAX + inline_room;
	for (uint32_t i = 0; i < resp->num_headers; i++)
		need += resp->headers[i].name_len + resp->headers[i].value_len + 4;
	size_t cap;
	char *block = sl_bufpool_get(&r->mem, need, &cap);
	if (!block)
		return false;
	struct wbuf w = { block, 0, cap, false };
	W_LIT(&w, "HTTP/1.1 "); /* our version, whatever the client's (RFC 9110 6.2) */
	w_u64(&w, resp->status);
	W_LIT(&w, " ");
	if (resp->reason_len)
		w_mem(&w, resp->reason, resp->reason_len);
	else
		w_str(&w, sl_http_status_reason(resp->status));
	W_LIT(&w, "\r\n");
	struct sl_str tokens[16];
	size_t num_tokens = connection_tokens(resp->headers, resp->num_headers, tokens, 16);
	for (uint32_t i = 0; i < resp->num_headers; i++) {
		const struct sl_http_header *h = &resp->headers[i];
		if (is_hop_or_owned(h) || listed_in(h, tokens, num_tokens) || is_provider_limit(h))
			continue;
		if (h->name_len == 12 && sl_ascii_ieq(h->name, "content-type", 12) &&
		    h->value_len >= 17 && sl_ascii_ieq(h->value, "text/event-stream", 17))
			u->ux.is_sse = c->cx.stream = true;
		w_header(&w, h->name, h->name_len, h->value, h->value_len);
	}
	W_LIT(&w, "x-request-id: ");
	w_str(&w, c->cx.request_id);
	W_LIT(&w, "\r\n");
	w_limit_headers(r, &w, c);
	switch (resp->framing) {
	case SL_BODY_LENGTH:
		W_LIT(&w, "Content-Length: ");
		w_u64(&w, resp->content_length);
		W_LIT(&w, "\r\n");
		break;
	case SL_BODY_CHUNKED:
		if (c->cx.http10) {
			u->ux.dechunk = true;
			c->keep_alive = false;
		} else {
			W_LIT(&w, "Transfer-Encoding: chunked\r\n");
		}
		break;
	case SL_BODY_UNTIL_CLOSE:
		c->keep_alive = false;
		break;
	case SL_BODY_NONE:
		if (resp->status != 204 && resp->status != 304)
			W_LIT(&w, "Content-Length: 0\r\n");
		break;
	}
	if (!c->keep_alive)
		W_LIT(&w, "Connection: close\r\n");
	W_LIT(&w, "\r\n");
	SL_ASSERT(!w.overflow);
	return push_response_head(r, c, block, cap, w.len);
}

/* Once a response has started the request can no longer be retried, so its
 * input block goes back to the pool, unless pipelined bytes follow it or the
 * upstream is still sending from it. A long stream then holds no request
 * memory. */
static void client_input_release(struct sl_reactor *r, struct sl_conn *c, struct sl_conn *u)
{
	if (!c->in || u->send_busy || u->sq.num || c->in_len != request_end(c))
		return;
	if (r->alog.buf[0] && c->cx.method) {
		/* the access log line will want the path */
		c->cx.path_len = (uint8_t)SL_MIN((size_t)c->cx.target_len, sizeof c->cx.path);
		memcpy(c->cx.path, c->in + c->cx.target_off, c->cx.path_len);
	}
	sl_bufpool_put(&r->mem, c->in, c->in_cap);
	c->in = NULL;
	c->in_cap = c->in_len = 0;
	c->cx.head_len = 0;
	c->cx.body_len = 0;
}

static bool upstream_on_data(struct sl_reactor *r, struct sl_conn *u, uint16_t bid, char *data,
                             size_t len)
{
	struct sl_conn *c = u->peer;
	if (u->state == SL_UP_POOLED || !c) {
		/* bytes nobody asked for: the connection cannot be trusted */
		if (u->state == SL_UP_POOLED)
			pool_unlink(r, u);
		upstream_close(r, u);
		return false;
	}
	struct sl_send_entry tmpl = { .owner = SL_OWN_RING, .bid = bid };
	if (u->state == SL_UP_BODY)
		return relay_body(r, u, c, data, len, &tmpl);

	SL_ASSERT(u->state == SL_UP_WAIT_HEAD);
	const struct sl_limits_config *lim = &r->config->limits;
	const char *src = data;
	size_t src_len = len;
	if (u->in_len) {
		/* the head was split across recvs: assemble it */
		size_t n = SL_MIN(len, u->in_cap - u->in_len);
		memcpy(u->in + u->in_len, data, n);
		u->in_len += n;
		if (n < len) {
			upstream_fail(r, u, 502, "upstream_error", "upstream response head too large");
			return false;
		}
		src = u->in;
		src_len = u->in_len;
	}
	struct sl_http_limits hl = http_limits(r);
	struct sl_http_response resp;
	ssize_t n;
	for (;;) {
		resp = (struct sl_http_response){ .headers = r->headers };
		n = sl_http_parse_response(src, src_len, &resp, &hl, SL_METHOD_POST);
		if (n >= 0 && resp.status >= 100 && resp.status < 200 && resp.status != 101) {
			src += n; /* interim response: skip */
			src_len -= (size_t)n;
			continue;
		}
		break;
	}
	if (n == SL_INCOMPLETE) {
		if (src != u->in) {
			size_t cap;
			char *block = sl_bufpool_get(&r->mem, lim->header_bytes_max, &cap);
			if (!block || src_len > cap) {
				sl_bufpool_put(&r->mem, block, cap);
				upstream_fail(r, u, 502, "upstream_error", "upstream response head too large");
				return false;
			}
			memcpy(block, src, src_len);
			u->in = block;
			u->in_cap = cap;
			u->in_len = src_len;
		} else if (u->in_len >= u->in_cap) {
			upstream_fail(r, u, 502, "upstream_error", "upstream response head too large");
		}
		return false;
	}
	if (n == SL_ERROR || resp.status == 101) {
		char msg[192];
		snprintf(msg, sizeof msg, "provider %s sent an invalid HTTP response: %s",
		         r->config->providers[u->ux.provider].name,
		         resp.error_message ? resp.error_message : "status 101");
		attempt_failed(r, u, SL_ROUTE_FAILED, 0, 502, "upstream_error", msg, true);
		return false;
	}
	/* What the head says about this (target, key); a failure retries while
	 * the route and the attempt budget allow. */
	unsigned st = resp.status;
	enum sl_route_outcome outcome = SL_ROUTE_OK;
	if (st == 429)
		outcome = SL_ROUTE_RATE_LIMITED;
	else if (st == 401 || st == 403)
		outcome = SL_ROUTE_AUTH;
	else if (st == 500 || st == 502 || st == 503 || st == 529)
		outcome = SL_ROUTE_FAILED;
	if (c->cx.attempts) {
		uint64_t backoff = 0;
		const char *pname = r->config->providers[u->ux.provider].name;
		sl_route_report(r->route, c->cx.model_index, &c->cx.tried[c->cx.attempts - 1], outcome,
		                outcome == SL_ROUTE_RATE_LIMITED ? retry_after_of(&resp) : 0, r->now_ms);
		/* 429, 503, 529 and 401/403 prove the provider did not take the
		 * request on; a 500 or 502 does not */
		bool unsure = st == 500 || st == 502;
		enum retry_verdict v = outcome == SL_ROUTE_OK ||
		                                       (unsure && !r->config->routing.retry_unconfirmed)
		                               ? RETRY_NO
		                               : attempt_retryable(r, c, &backoff);
		/* A lone key's own 429 is relayed as it is (the provider's body
		 * and Retry-After); after retries the client gets the gateway's
		 * 503 with the earliest recovery. */
		if (v == RETRY_WAIT && outcome == SL_ROUTE_RATE_LIMITED && c->cx.attempts == 1)
			v = RETRY_NO;
		if (v != RETRY_NO) {
			char msg[192];
			snprintf(msg, sizeof msg, "provider %s answered %u", pname, st);
			/* a whole error answer in hand on a keep-alive connection: the
			 * connection goes back to the pool instead of a reconnect */
			bool whole = resp.framing == SL_BODY_NONE ||
			             (resp.framing == SL_BODY_LENGTH &&
			              resp.content_length == src_len - (size_t)n);
			u->ux.resp_keep_alive = resp.keep_alive && whole;
			attempt_retry_later(r, u, backoff, st == 429 ? 429 : 502,
			                    st == 429 ? "rate_limit_error" : "upstream_error", msg,
			                    u->ux.resp_keep_alive);
			return false;
		}
		if (outcome == SL_ROUTE_AUTH) {
			/* the provider refused the gateway's key, not the client's */
			char msg[192];
			snprintf(msg, sizeof msg, "provider %s refused the gateway's API key (%u)", pname, st);
			upstream_fail(r, u, 502, "upstream_error", msg);
			return false;
		}
	}
	/* A small non-stream body that arrived with its head is copied behind the
	 * new head (one send); an event stream is relayed from its buffers. */
	size_t rest_len0 = src_len - (size_t)n;
	bool inline_rest = !c->cx.conv && resp.framing == SL_BODY_LENGTH &&
	                   resp.content_length == rest_len0 && rest_len0 <= SMALL_BODY_INLINE_MAX;
	if (!(c->cx.conv ? convert_response_head(r, u, c, &resp)
	                 : relay_head(r, u, c, &resp, inline_rest ? rest_len0 : 0))) {
		upstream_fail(r, u, 503, NULL, "The gateway is out of response memory; retry");
		return false;
	}
	client_input_release(r, c, u);
	u->state = SL_UP_BODY;
	u->ux.framing = (uint8_t)resp.framing;
	u->ux.body_left = resp.content_length;
	u->ux.resp_keep_alive = resp.keep_alive;
	sl_chunked_init(&u->ux.chunked);
	char *rest = (char *)src + n;
	size_t rest_len = src_len - (size_t)n;
	if (inline_rest) {
		if (c->cx.scan_usage)
			usage_feed(u, c, rest, rest_len);
		/* relay_head sized its block for the body: append it there */
		struct sl_send_entry *e = &c->sq.entries[(c->sq.head + c->sq.num - 1) & (SL_SENDQ_CAP - 1)];
		SL_ASSERT(e->owner == SL_OWN_POOL &&
		          e->len + rest_len <= ((size_t)1 << e->block_class));
		memcpy((char *)e->ptr + e->len, rest, rest_len);
		e->len += (uint32_t)rest_len;
		u->ux.body_left = 0;
		rest_len = 0; /* the framing is complete; the recv buffer is not kept */
	}
	if (src == u->in) {
		/* the body's first bytes live in the assembly block: hand it over */
		struct sl_send_entry own = {
			.owner = SL_OWN_POOL,
			.block = u->in,
			.block_class = (uint8_t)sl_bufpool_class(u->in_cap),
		};
		u->in = NULL;
		u->in_len = u->in_cap = 0;
		if (!relay_body(r, u, c, rest, rest_len, &own))
			sl_send_entry_release(r, &own);
		return false;
	}
	return relay_body(r, u, c, rest, rest_len, &tmpl);
}

static void upstream_release_to_pool(struct sl_reactor *r, struct sl_conn *u)
{
	struct sl_upstream_pool *pool = &r->upstreams[u->ux.provider];
	const struct sl_provider_config *p = &r->config->providers[u->ux.provider];
	sl_timer_cancel(&u->timer);
	if (!u->ux.resp_keep_alive || u->send_busy || u->sq.num || r->stopping ||
	    pool->num_idle >= p->keepalive_per_core || u->closing) {
		upstream_close(r, u); /* unpairs, pinning the client's input if needed */
		return;
	}
	unpair(u->peer, u);
	sl_bufpool_put(&r->mem, u->in, u->in_cap);
	u->in = NULL;
	u->in_len = u->in_cap = 0;
	sl_buf_release(&u->ux.body);
	memset(&u->ux, 0, offsetof(typeof(u->ux), pinned));
	u->ux.provider = (uint32_t)(pool - r->upstreams);
	u->state = SL_UP_POOLED;
	u->pool_next = pool->idle;
	pool->idle = u;
	pool->num_idle++;
	sl_timer_arm(r, &u->timer, &r->up_pool_q);
	sl_conn_recv_resume(r, u);
	sl_conn_recv_arm(r, u); /* an idle connection still notices EOF */
}

/* A pooled connection failed before any response byte: the upstream closed
 * it while it sat idle. Retry once on a fresh connection. */
static bool upstream_retry_stale(struct sl_reactor *r, struct sl_conn *u)
{
	struct sl_conn *c = u->peer;
	if (!c || !u->ux.reused || u->state != SL_UP_WAIT_HEAD || u->in_len || c->cx.retried ||
	    c->cx.response_started || c->cx.attempts >= SL_ROUTE_ATTEMPTS_MAX)
		return false;
	upstream_close(r, u);
	if (c->closing)
		return true;
	/* at once, on a fresh connection; the provider may have seen the
	 * request, so it counts as an attempt */
	c->cx.retried = true;
	attempt_end(r, c);
	exchange_attempt(r, c);
	return true;
}

/* --- callbacks from the reactor ---------------------------------------------------- */

void sl_proxy_on_accept(struct sl_reactor *r, int fd, uint32_t listener)
{
	struct sl_conn *c = sl_conn_alloc(r, fd, SL_CONN_CLIENT);
	if (!c) {
		close(fd); /* connections_per_core reached */
		return;
	}
	if (r->config->listeners[listener].tls && sl_tls_attach_server(r, c, listener) != 0) {
		sl_conn_close(r, c); /* no memory for a TLS session: refused */
		return;
	}
	c->pp_pending = r->config->listeners[listener].proxy_protocol;
	c->admin_conn = r->config->listeners[listener].admin;
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	SL_METRIC_INC(r->stats.accepted);
	SL_METRIC_INC(r->num_clients);
	c->state = SL_CLIENT_IDLE;
	c->keep_alive = true;
	/* a connection that sends nothing gets the header deadline, not keep-alive's */
	sl_timer_arm(r, &c->timer, &r->header_q);
	sl_conn_recv_arm(r, c);
}

/* A header split across recvs waits in c->in (nothing else is there yet);
 * the common case, a whole header in the first recv, copies nothing. */
size_t sl_proxy_pp_feed(struct sl_reactor *r, struct sl_conn *c, const char *data, size_t len)
{
	size_t max = r->config->limits.proxy_header_bytes_max;
	size_t before = c->in_len;
	const char *p = data;
	size_t n = len;
	if (before) {
		/* the parser refuses a header longer than max, so max - before
		 * bytes more decide it */
		size_t take = SL_MIN(len, max - before);
		if (!input_reserve(r, c, before + take))
			goto bad;
		memcpy(c->in + before, data, take);
		c->in_len += take;
		p = c->in;
		n = c->in_len;
	}
	struct sl_proxyproto pp;
	ssize_t hl = sl_proxyproto_parse(p, n, max, &pp);
	if (hl < 0) {
		SL_METRIC_INC(r->stats.proxy_header_bad);
		goto bad;
	}
	if (hl == 0) {
		if (!before) {
			if (!input_reserve(r, c, len))
				goto bad;
			memcpy(c->in, data, len);
			c->in_len = len;
		}
		return len;
	}
	SL_ASSERT((size_t)hl > before);
	c->pp_pending = false;
	if (pp.has_address) {
		memcpy(&c->peer_addr, &pp.src, sizeof c->peer_addr);
		c->have_peer = true;
	}
	if (c->in) {
		sl_bufpool_put(&r->mem, c->in, c->in_cap);
		c->in = NULL;
		c->in_len = c->in_cap = 0;
	}
	return (size_t)hl - before;
bad:
	sl_conn_close(r, c);
	return len;
}

bool sl_proxy_on_data(struct sl_reactor *r, struct sl_conn *c, uint16_t bid, char *data,
                      size_t len)
{
	if (c->kind == SL_CONN_CLIENT)
		return client_on_data(r, c, bid, data, len);
	return upstream_on_data(r, c, bid, data, len);
}

void sl_proxy_on_eof(struct sl_reactor *r, struct sl_conn *c, int err)
{
	if (c->kind == SL_CONN_CLIENT) {
		/* The client went away (or half-closed): nothing more can be
		 * answered. Its upstream request is cancelled by closing it. */
		if (c->peer)
			upstream_close(r, c->peer);
		sl_conn_close(r, c);
		return;
	}
	struct sl_conn *u = c;
	switch (u->state) {
	case SL_UP_POOLED:
		pool_unlink(r, u);
		upstream_close(r, u);
		break;
	case SL_UP_WAIT_HEAD: {
		if (upstream_retry_stale(r, u))
			break;
		char msg[192];
		snprintf(msg, sizeof msg, "provider %s %s the connection before responding",
		         r->config->providers[u->ux.provider].name, err ? "reset" : "closed");
		attempt_failed(r, u, SL_ROUTE_FAILED, 0, 502, "upstream_error", msg, request_sent(u));
		break;
	}
	case SL_UP_BODY:
		if (u->ux.framing == SL_BODY_UNTIL_CLOSE && err == 0) {
			struct sl_conn *cl = u->peer;
			u->ux.resp_keep_alive = false;
			unpair(cl, u);
			upstream_close(r, u);
			if (cl)
				client_exchange_done(r, cl);
		} else {
			upstream_fail(r, u, 502, "upstream_error", "the provider ended the stream early");
		}
		break;
	default:
		upstream_close(r, u);
		break;
	}
}

void sl_proxy_on_send_error(struct sl_reactor *r, struct sl_conn *c, int err)
{
	if (c->kind == SL_CONN_CLIENT) {
		sl_proxy_on_eof(r, c, err);
		return;
	}
	if (upstream_retry_stale(r, c))
		return;
	upstream_fail(r, c, 502, "upstream_error", "could not send the request to the provider");
}

/* Closes a client whose last response is flushed. Over TLS a close_notify
 * goes first: a client reading to EOF (an HTTP/1.0 stream) can then tell a
 * whole response from a cut one. */
static void client_close_flushed(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->ssl && !c->tls_shutdown) {
		c->tls_shutdown = true;
		if (sl_tls_shutdown(r, c))
			return; /* back through sl_proxy_on_sent once it is out */
	}
	sl_conn_close(r, c);
}

void sl_proxy_on_sent(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->kind != SL_CONN_CLIENT)
		return;
	pending_drain(r, c);
	client_send_timer(r, c);
	struct sl_conn *u = c->peer;
	if (u && u->recv_paused && c->ovf_num == 0 && !c->cx.pending.len &&
	    c->sq.num <= relay_pause_at(r) / 2) {
		sl_conn_recv_resume(r, u);
		sl_timer_arm(r, &u->timer, &r->upstreams[u->ux.provider].idle_q);
	}
	if (c->sq.num || c->send_busy || c->ovf_num || c->cx.pending.len)
		return;
	if (c->close_after_flush && c->state != SL_CLIENT_EXCHANGE) {
		client_close_flushed(r, c);
		return;
	}
	if (c->state == SL_CLIENT_FLUSH) {
		if (!c->keep_alive)
			client_close_flushed(r, c);
		else
			client_next_request(r, c);
	}
}

void sl_proxy_on_connect(struct sl_reactor *r, struct sl_conn *u, int res)
{
	if (res < 0) {
		char msg[320];
		if (res == -EPROTO) /* tls.c: the handshake or the certificate failed */
			snprintf(msg, sizeof msg, "provider %s: %s",
			         r->config->providers[u->ux.provider].name, sl_tls_last_error());
		else
			snprintf(msg, sizeof msg, "provider %s is unreachable: %s",
			         r->config->providers[u->ux.provider].name, strerror(-res));
		attempt_failed(r, u, SL_ROUTE_FAILED, 0, 502, "connection_error", msg, false);
		return;
	}
	if (!u->peer) {
		upstream_close(r, u);
		return;
	}
	upstream_send_request(r, u);
}

void sl_proxy_on_timer(struct sl_reactor *r, struct sl_conn *c, enum sl_timer_kind kind)
{
	char msg[192];
	const char *provider =
	        c->kind == SL_CONN_UPSTREAM ? r->config->providers[c->ux.provider].name : "";
	switch (kind) {
	case SL_TIMER_HEADER:
		if (c->pp_pending || (c->state == SL_CLIENT_IDLE && c->in_len == 0)) {
			/* never said anything (a partial PROXY header is not a
			 * request: no answer to an address not known) */
			sl_conn_close(r, c);
			return;
		}
		/* fallthrough */
	case SL_TIMER_BODY:
		if (c->cx.response_started) {
			sl_conn_close(r, c);
			return;
		}
		respond_error(r, c, 408, NULL, "The client took too long to send the request", NULL,
		              true);
		return;
	case SL_TIMER_KEEPALIVE:
	case SL_TIMER_SEND:
		sl_proxy_on_eof(r, c, -ETIMEDOUT);
		return;
	case SL_TIMER_UP_CONNECT:
		snprintf(msg, sizeof msg, "provider %s: connect timed out", provider);
		attempt_failed(r, c, SL_ROUTE_FAILED, 0, 502, "connection_error", msg, false);
		return;
	case SL_TIMER_UP_FIRST:
		snprintf(msg, sizeof msg, "provider %s did not answer in time", provider);
		if (c->state == SL_UP_WAIT_HEAD)
			attempt_failed(r, c, SL_ROUTE_FAILED, 0, 504, "upstream_timeout", msg, true);
		else
			upstream_fail(r, c, 504, "upstream_timeout", msg);
		return;
	case SL_TIMER_UP_IDLE:
		snprintf(msg, sizeof msg, "provider %s stalled mid-response", provider);
		upstream_fail(r, c, 504, "upstream_timeout", msg);
		return;
	case SL_TIMER_UP_POOL:
		pool_unlink(r, c);
		upstream_close(r, c);
		return;
	}
}

void sl_proxy_on_release(struct sl_reactor *r, struct sl_conn *c)
{
	if (c->kind == SL_CONN_CLIENT) {
		if (c->state == SL_CLIENT_EXCHANGE)
			SL_METRIC_DEC(r->num_exchanges);
		SL_METRIC_DEC(r->num_clients);
		attempt_end(r, c);
		usage_log_record(r, c, true);
		access_log_line(r, c);
		limits_finish(r, c); /* a client gone mid-exchange */
		sl_arena_release(&c->cx.arena);
		sl_buf_release(&c->cx.pending);
		c->cx.tc = NULL;
		c->cx.conv = NULL;
		if (c->peer) {
			struct sl_conn *u = c->peer;
			unpair(c, u);
			sl_conn_close(r, u);
		}
	} else {
		sl_buf_release(&c->ux.body);
		if (c->state == SL_UP_POOLED)
			pool_unlink(r, c); /* idempotent */
		if (c->peer) {
			struct sl_conn *cl = c->peer;
			unpair(cl, c);
		}
	}
}

void sl_proxy_on_shutdown(struct sl_reactor *r)
{
	for (uint32_t i = 0; i < r->conn_cap; i++) {
		struct sl_conn *c = &r->conns[i];
		if (c->kind == SL_CONN_FREE || c->closing)
			continue;
		if (c->kind == SL_CONN_CLIENT) {
			if (c->state == SL_CLIENT_IDLE || c->state == SL_CLIENT_HEAD)
				sl_conn_close(r, c);
			else
				c->keep_alive = false;
		} else if (c->state == SL_UP_POOLED) {
			pool_unlink(r, c);
			sl_conn_close(r, c);
		}
	}
}
