/*
 * http1.h - an incremental, allocation-free HTTP/1.1 message parser.
 *
 * The parser is a set of pure functions in the style of picohttpparser: the
 * caller hands it the bytes received so far; it returns the length of the
 * message head once the head is complete, SL_INCOMPLETE when more bytes are
 * needed, or SL_ERROR when the input is rejected. It never allocates and never
 * keeps a pointer past the call: header names and values point into the
 * caller's buffer. Calling it again with a longer buffer re-parses from the
 * start (heads are small; the bound is head_len_max).
 *
 * Framing follows RFC 9112 strictly because a proxy is a smuggling target:
 *   - Transfer-Encoding together with Content-Length: rejected (400);
 *   - several Content-Length values that differ, or one that is not 1*DIGIT,
 *     or that overflows: rejected (400); identical repeats are accepted;
 *   - a Transfer-Encoding that is not exactly one final "chunked": rejected
 *     (400 when chunked is not last or missing, 501 for an unknown coding);
 *     Transfer-Encoding in an HTTP/1.0 request: 400;
 *   - obs-fold, bare CR, bare LF, NUL or any other CTL in the head, a header
 *     name with a non-tchar byte or whitespace before the colon: 400;
 *   - an HTTP/1.1 request without exactly one Host header: 400;
 *   - HTTP versions other than 1.0 and 1.1: 505.
 * Leading empty lines (CRLF) before a request line are skipped, as RFC 9112
 * section 2.2 allows.
 */
#ifndef SLUICE_HTTP1_H
#define SLUICE_HTTP1_H

#include "sluice/common.h"

enum sl_http_method {
	SL_METHOD_OTHER = 0, /* a valid token we do not know */
	SL_METHOD_GET,
	SL_METHOD_HEAD,
	SL_METHOD_POST,
	SL_METHOD_PUT,
	SL_METHOD_DELETE,
	SL_METHOD_OPTIONS,
	SL_METHOD_PATCH,
	SL_METHOD_CONNECT,
	SL_METHOD_TRACE,
};

/* How the body of a message is delimited. */
enum sl_http_framing {
	SL_BODY_NONE = 0,    /* no body (no CL/TE on a request; 1xx/204/304/HEAD) */
	SL_BODY_LENGTH,      /* Content-Length bytes follow the head */
	SL_BODY_CHUNKED,     /* chunked transfer coding */
	SL_BODY_UNTIL_CLOSE, /* responses only: body ends when the peer closes */
};

struct sl_http_header {
	const char *name;
	const char *value; /* leading and trailing OWS removed */
	uint32_t name_len;
	uint32_t value_len;
};

/* Bounds enforced by the parser. A head that grows past head_len_max without
 * completing is answered 431 (or 414 while the request target alone is longer
 * than target_len_max). num_headers_max must not exceed the capacity of the
 * headers array the caller provides. */
struct sl_http_limits {
	uint32_t head_len_max;    /* request/status line + headers + CRLF, bytes */
	uint32_t target_len_max;  /* request-target, bytes: 414 beyond */
	uint32_t num_headers_max; /* header fields: 431 beyond */
};

struct sl_http_request {
	/* in: caller-provided array of at least limits->num_headers_max */
	struct sl_http_header *headers;

	/* out, valid when the parse returned a length */
	enum sl_http_method method;
	const char *method_str;
	uint32_t method_len;
	const char *target; /* origin-form "/path?query" (or absolute/asterisk form) */
	uint32_t target_len;
	uint8_t version_minor; /* 0 or 1 */
	uint32_t num_headers;
	enum sl_http_framing framing; /* NONE, LENGTH or CHUNKED */
	uint64_t content_length;      /* when framing == SL_BODY_LENGTH */
	bool keep_alive;              /* version default adjusted by Connection */
	bool expect_continue;         /* Expect: 100-continue */

	/* out, valid when the parse returned SL_ERROR */
	uint16_t error_status;     /* 400, 414, 431, 501 or 505 */
	const char *error_message; /* static text, safe to show the client */
};

struct sl_http_response {
	/* in */
	struct sl_http_header *headers;

	/* out */
	uint8_t version_minor;
	uint16_t status;
	const char *reason;
	uint32_t reason_len;
	uint32_t num_headers;
	enum sl_http_framing framing;
	uint64_t content_length;
	bool keep_alive; /* false when the upstream connection must not be reused */
	const char *error_message;
};

/*
 * sl_http_parse_request parses a request head at the start of buf[0..len).
 * Returns the head length in bytes (through the blank line; any leading empty
 * lines skipped are included), SL_INCOMPLETE, or SL_ERROR with
 * error_status/error_message set. req->headers must point to an array of at
 * least limits->num_headers_max entries.
 */
ssize_t sl_http_parse_request(const char *buf, size_t len, struct sl_http_request *req,
                              const struct sl_http_limits *limits);

/*
 * sl_http_parse_response parses a response head. request_method is the method
 * of the request it answers (a response to HEAD has no body). Returns the head
 * length, SL_INCOMPLETE or SL_ERROR (error_message set). Interim 1xx responses
 * are returned like any other (status < 200, framing NONE); the caller skips
 * them. A response with both Transfer-Encoding and Content-Length, or with
 * malformed framing, is SL_ERROR: a proxy never forwards an ambiguous message.
 */
ssize_t sl_http_parse_response(const char *buf, size_t len, struct sl_http_response *resp,
                               const struct sl_http_limits *limits,
                               enum sl_http_method request_method);

/* Incremental chunked-body decoder state; zero it with sl_chunked_init. */
struct sl_chunked {
	uint64_t chunk_left;   /* data bytes left in the current chunk */
	uint32_t overhead_len; /* bytes of the current size line/trailer so far */
	uint8_t state;         /* private */
	bool complete;         /* last-chunk and trailer section seen */
};

void sl_chunked_init(struct sl_chunked *d);

/*
 * sl_chunked_feed consumes the next bytes of a chunked body from buf[0..len).
 * Returns the number of bytes that belong to the body: len, or less when the
 * body ended inside buf (then d->complete is true and the rest of buf is the
 * next message). Returns SL_ERROR on malformed framing (bad hex, a size over
 * 2^62, bare LF, a size line or trailer section over 4096 bytes).
 *
 * If data_out is not NULL the decoded data bytes are written there and
 * *data_out_len is set to their count; data_out may equal buf (decoding in
 * place is safe: output never overtakes input). If data_out is NULL only the
 * framing is tracked (*data_out_len, if not NULL, still gets the count), which
 * is what a relay that passes chunked bytes through unchanged needs.
 */
ssize_t sl_chunked_feed(struct sl_chunked *d, const char *buf, size_t len, char *data_out,
                        size_t *data_out_len);

/* sl_chunked_at_boundary tells whether d is between chunks: every chunk fed
 * so far was complete, so a proxy may append a chunk of its own. (State 0 is
 * the start of a chunk-size line; http1.c keeps that true.) */
static inline bool sl_chunked_at_boundary(const struct sl_chunked *d)
{
	return d->state == 0 && !d->complete;
}

/* sl_http_find_header returns the first header named name (case-insensitive),
 * or NULL. */
const struct sl_http_header *sl_http_find_header(const struct sl_http_header *headers,
                                                 size_t num_headers, const char *name,
                                                 size_t name_len);

/* sl_http_status_reason returns the standard reason phrase for status, or
 * "Unknown". */
const char *sl_http_status_reason(unsigned status);

#endif
