/*
 * test_http1.c - unit and property tests for the HTTP/1 head parser and the
 * chunked decoder. Includes src/http1.c to reach its scanners.
 *
 * Every parse of a prefix runs on an exact-size heap copy, so that under
 * ASan any read past the bytes handed to the parser is caught.
 */
#include "../../src/http1.c"

#include "test.h"

#include <stdlib.h>
#include <string.h>

#define HEADERS_CAP 128

static struct sl_http_header hdrs[HEADERS_CAP];
static const struct sl_http_limits limits = {
	.head_len_max = 16384,
	.target_len_max = 8192,
	.num_headers_max = 100,
};

#define LIT(s) (s), (sizeof(s) - 1)

static char *dup_exact(const char *s, size_t len)
{
	char *p = malloc(len ? len : 1);
	if (p == NULL)
		abort();
	memcpy(p, s, len);
	return p;
}

/* The exact-size copy the last parse ran on; the parsed pointers point into
 * it, so it lives until the next parse. */
static char *last_copy;

static const char *fresh_copy(const char *s, size_t len)
{
	free(last_copy);
	last_copy = dup_exact(s, len);
	return last_copy;
}

static ssize_t parse_req_lim(const char *s, size_t len, struct sl_http_request *req,
                             const struct sl_http_limits *lim)
{
	memset(req, 0, sizeof(*req));
	req->headers = hdrs;
	return sl_http_parse_request(fresh_copy(s, len), len, req, lim);
}

static ssize_t parse_req(const char *s, size_t len, struct sl_http_request *req)
{
	return parse_req_lim(s, len, req, &limits);
}

static ssize_t parse_resp_lim(const char *s, size_t len, struct sl_http_response *resp,
                              enum sl_http_method method, const struct sl_http_limits *lim)
{
	memset(resp, 0, sizeof(*resp));
	resp->headers = hdrs;
	return sl_http_parse_response(fresh_copy(s, len), len, resp, lim, method);
}

static ssize_t parse_resp(const char *s, size_t len, struct sl_http_response *resp,
                          enum sl_http_method method)
{
	return parse_resp_lim(s, len, resp, method, &limits);
}

/* Request rejection: the status and a message. Prints the case on failure. */
#define CHECK_REQ_REJECT(lit, status)                                                      \
	do {                                                                               \
		struct sl_http_request r_;                                                 \
		ssize_t n_ = parse_req(LIT(lit), &r_);                                     \
		if (n_ != SL_ERROR || r_.error_status != (status) || !r_.error_message)     \
			FAIL_AT(__func__ + 5, "%s: got %zd status %u, expected %d", #lit, n_, \
			        r_.error_status, (status));                                \
	} while (0)

#define CHECK_RESP_REJECT(lit, method)                                                     \
	do {                                                                               \
		struct sl_http_response r_;                                                \
		ssize_t n_ = parse_resp(LIT(lit), &r_, (method));                          \
		if (n_ != SL_ERROR || !r_.error_message)                                   \
			FAIL_AT(__func__ + 5, "%s: got %zd, expected SL_ERROR", #lit, n_);  \
	} while (0)

/* ---- valid requests ------------------------------------------------------ */

TEST(request_simple_get)
{
	static const char m[] = "GET /v1/models?x=1 HTTP/1.1\r\nHost: example.com\r\n"
	                        "Accept: */*\r\n\r\n";
	struct sl_http_request req;
	CHECK_EQ_INT(parse_req(LIT(m), &req), sizeof(m) - 1);
	CHECK_EQ_INT(req.method, SL_METHOD_GET);
	CHECK_EQ_MEM(req.method_str, req.method_len, "GET");
	CHECK_EQ_MEM(req.target, req.target_len, "/v1/models?x=1");
	CHECK_EQ_INT(req.version_minor, 1);
	CHECK_EQ_INT(req.num_headers, 2);
	CHECK_EQ_MEM(hdrs[0].name, hdrs[0].name_len, "Host");
	CHECK_EQ_MEM(hdrs[0].value, hdrs[0].value_len, "example.com");
	CHECK_EQ_MEM(hdrs[1].name, hdrs[1].name_len, "Accept");
	CHECK_EQ_MEM(hdrs[1].value, hdrs[1].value_len, "*/*");
	CHECK_EQ_INT(req.framing, SL_BODY_NONE);
	CHECK(req.keep_alive);
	CHECK(!req.expect_continue);
	CHECK_EQ_INT(req.error_status, 0);
}

TEST(request_post_content_length)
{
	static const char m[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n"
	                        "Content-Type: application/json\r\nContent-Length: 13\r\n\r\n"
	                        "{\"model\":\"x\"}";
	struct sl_http_request req;
	ssize_t n = parse_req(LIT(m), &req);
	CHECK_EQ_INT(n, sizeof(m) - 1 - 13);
	CHECK_EQ_INT(req.method, SL_METHOD_POST);
	CHECK_EQ_INT(req.framing, SL_BODY_LENGTH);
	CHECK_EQ_INT(req.content_length, 13);
	CHECK(req.keep_alive);
}

TEST(request_chunked)
{
	static const char m[] = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	                        "5\r\nhello\r\n0\r\n\r\n";
	struct sl_http_request req;
	ssize_t n = parse_req(LIT(m), &req);
	CHECK_EQ_INT(n, strstr(m, "\r\n\r\n") + 4 - m);
	CHECK_EQ_INT(req.framing, SL_BODY_CHUNKED);
	CHECK_EQ_INT(req.content_length, 0);
}

TEST(request_transfer_encoding_case_and_lists)
{
	struct sl_http_request req;
	static const char a[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\n";
	CHECK_EQ_INT(parse_req(LIT(a), &req), sizeof(a) - 1);
	CHECK_EQ_INT(req.framing, SL_BODY_CHUNKED);
	/* empty list elements are ignored (RFC 9110 5.6.1.2), also across lines */
	static const char b[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n"
	                        "Transfer-Encoding: , chunked ,\r\n\r\n";
	CHECK_EQ_INT(parse_req(LIT(b), &req), sizeof(b) - 1);
	CHECK_EQ_INT(req.framing, SL_BODY_CHUNKED);
}

TEST(request_pipelined)
{
	static const char m[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
	                        "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
	                        "GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
	struct sl_http_request req;
	size_t off = 0;
	ssize_t n = parse_req(m, sizeof(m) - 1, &req);
	CHECK(n > 0);
	CHECK_EQ_MEM(req.target, req.target_len, "/a");
	off += (size_t)n;
	n = parse_req(m + off, sizeof(m) - 1 - off, &req);
	CHECK(n > 0);
	CHECK_EQ_MEM(req.target, req.target_len, "/b");
	CHECK_EQ_INT(req.content_length, 2);
	off += (size_t)n + req.content_length;
	n = parse_req(m + off, sizeof(m) - 1 - off, &req);
	CHECK_EQ_INT(n, sizeof(m) - 1 - off);
	CHECK_EQ_MEM(req.target, req.target_len, "/c");
}

TEST(request_leading_empty_lines)
{
	static const char m[] = "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n";
	struct sl_http_request req;
	CHECK_EQ_INT(parse_req(LIT(m), &req), sizeof(m) - 1);
	CHECK_EQ_MEM(req.method_str, req.method_len, "GET");
	CHECK_EQ_INT(parse_req(LIT("\r\n"), &req), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_req(LIT("\r\n\r"), &req), SL_INCOMPLETE);
	CHECK_REQ_REJECT("\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400);
	CHECK_REQ_REJECT("\r\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400);
}

TEST(request_keep_alive_rules)
{
	struct sl_http_request req;
	CHECK(parse_req(LIT("GET / HTTP/1.0\r\n\r\n"), &req) > 0);
	CHECK_EQ_INT(req.version_minor, 0);
	CHECK(!req.keep_alive);
	CHECK(parse_req(LIT("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), &req) > 0);
	CHECK(req.keep_alive);
	CHECK(parse_req(LIT("GET / HTTP/1.0\r\nConnection: Upgrade, KEEP-ALIVE\r\n\r\n"), &req) > 0);
	CHECK(req.keep_alive);
	CHECK(parse_req(LIT("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), &req) > 0);
	CHECK(!req.keep_alive);
	CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), &req) > 0);
	CHECK(!req.keep_alive);
	CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: te,  Close \r\n\r\n"), &req) > 0);
	CHECK(!req.keep_alive);
	CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n"), &req) > 0);
	CHECK(req.keep_alive);
	CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n"
	                    "Connection: close\r\n\r\n"), &req) > 0);
	CHECK(!req.keep_alive);
}

TEST(request_expect_continue)
{
	struct sl_http_request req;
	CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
	                    "Content-Length: 3\r\n\r\n"), &req) > 0);
	CHECK(req.expect_continue);
	CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nEXPECT:100-continue\r\n\r\n"), &req) > 0);
	CHECK(req.expect_continue);
	CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"), &req) > 0);
	CHECK(!req.expect_continue);
}

TEST(request_methods)
{
	static const struct {
		const char *text;
		enum sl_http_method method;
	} cases[] = {
		{ "GET", SL_METHOD_GET },         { "HEAD", SL_METHOD_HEAD },
		{ "POST", SL_METHOD_POST },       { "PUT", SL_METHOD_PUT },
		{ "DELETE", SL_METHOD_DELETE },   { "OPTIONS", SL_METHOD_OPTIONS },
		{ "PATCH", SL_METHOD_PATCH },     { "CONNECT", SL_METHOD_CONNECT },
		{ "TRACE", SL_METHOD_TRACE },     { "get", SL_METHOD_OTHER },
		{ "PROPFIND", SL_METHOD_OTHER },  { "X-CUSTOM!", SL_METHOD_OTHER },
		{ "GETS", SL_METHOD_OTHER },      { "POS", SL_METHOD_OTHER },
	};
	for (size_t i = 0; i < SL_ARRAY_LEN(cases); i++) {
		char m[128];
		int len = snprintf(m, sizeof(m), "%s / HTTP/1.1\r\nHost: a\r\n\r\n", cases[i].text);
		struct sl_http_request req;
		ssize_t n = parse_req(m, (size_t)len, &req);
		if (n != len || req.method != cases[i].method)
			FAIL_AT("request_methods", "%s: n %zd method %d", cases[i].text, n, req.method);
		else
			CHECK_EQ_MEM(req.method_str, req.method_len, cases[i].text);
	}
}

TEST(request_header_values_trimmed)
{
	static const char m[] = "GET / HTTP/1.1\r\nHost:a\r\nX-A:  \t v a l \t \r\nX-Empty:\r\n"
	                        "X-Spaces:    \r\nX-Tab:\tx\ty\r\nX-Obs: caf\xc3\xa9 \xff\r\n"
	                        "x-!#$%&'*+-.^_`|~09: v\r\n\r\n";
	struct sl_http_request req;
	CHECK_EQ_INT(parse_req(LIT(m), &req), sizeof(m) - 1);
	CHECK_EQ_INT(req.num_headers, 7);
	CHECK_EQ_MEM(hdrs[0].value, hdrs[0].value_len, "a");
	CHECK_EQ_MEM(hdrs[1].value, hdrs[1].value_len, "v a l");
	CHECK_EQ_INT(hdrs[2].value_len, 0);
	CHECK_EQ_INT(hdrs[3].value_len, 0);
	CHECK_EQ_MEM(hdrs[4].value, hdrs[4].value_len, "x\ty");
	CHECK_EQ_MEM(hdrs[5].value, hdrs[5].value_len, "caf\xc3\xa9 \xff");
	CHECK_EQ_MEM(hdrs[6].name, hdrs[6].name_len, "x-!#$%&'*+-.^_`|~09");
}

TEST(request_long_value_simd_paths)
{
	/* values long enough for the 16-byte scan, with HTAB and the end at
	 * every offset within a block */
	for (int pad = 0; pad < 40; pad++) {
		char m[256];
		int len = snprintf(m, sizeof(m), "GET / HTTP/1.1\r\nHost: a\r\nX-V: [%.*s\tz%.*s]\r\n\r\n",
		                   pad, "0123456789abcdef0123456789abcdef0123456789abcdef", pad,
		                   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz");
		struct sl_http_request req;
		ssize_t n = parse_req(m, (size_t)len, &req);
		if (n != len || hdrs[1].value_len != (uint32_t)(2 * pad + 4)) {
			FAIL_AT("request_long_value_simd_paths", "pad %d: n %zd", pad, n);
			break;
		}
		/* a NUL, DEL or bare LF at any position of the value must be caught */
		size_t value_off = (size_t)(hdrs[1].value - last_copy);
		for (size_t pos = value_off; pos < value_off + hdrs[1].value_len; pos++) {
			for (int k = 0; k < 3; k++) {
				char saved = m[pos];
				m[pos] = "\0\x7f\n"[k];
				n = parse_req(m, (size_t)len, &req);
				m[pos] = saved;
				if (n != SL_ERROR || req.error_status != 400) {
					FAIL_AT("request_long_value_simd_paths", "pad %d pos %zu: %zd",
					        pad, pos, n);
					return;
				}
			}
		}
	}
}

TEST(request_content_length_forms)
{
	struct sl_http_request req;
	CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"), &req) > 0);
	CHECK_EQ_INT(req.content_length, 5);
	CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5 ,\t5\r\n\r\n"), &req) > 0);
	CHECK_EQ_INT(req.content_length, 5);
	CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n"
	                    "content-length: 7\r\n\r\n"), &req) > 0);
	CHECK_EQ_INT(req.content_length, 7);
	CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), &req) > 0);
	CHECK_EQ_INT(req.framing, SL_BODY_LENGTH);
	CHECK_EQ_INT(req.content_length, 0);
	CHECK(parse_req(LIT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
	                    "00000000000000000000000000009223372036854775807\r\n\r\n"), &req) > 0);
	CHECK(req.content_length == (uint64_t)INT64_MAX);
	CHECK(parse_req(LIT("POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\n"), &req) > 0);
	CHECK_EQ_INT(req.framing, SL_BODY_LENGTH);
}

TEST(request_targets_and_hosts)
{
	struct sl_http_request req;
	CHECK(parse_req(LIT("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), &req) > 0);
	CHECK_EQ_MEM(req.target, req.target_len, "*");
	CHECK(parse_req(LIT("GET http://a.b:80/x?y#z HTTP/1.1\r\nHost: a.b:80\r\n\r\n"), &req) > 0);
	CHECK_EQ_MEM(req.target, req.target_len, "http://a.b:80/x?y#z");
	CHECK(parse_req(LIT("CONNECT a.b:443 HTTP/1.1\r\nHost: a.b:443\r\n\r\n"), &req) > 0);
	CHECK_EQ_INT(req.method, SL_METHOD_CONNECT);
	CHECK(parse_req(LIT("GET /\xc3\xa9 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), &req) > 0);
	CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost:\r\n\r\n"), &req) > 0); /* empty Host is valid */
	CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: xn--caf-dma.example_1~%41\r\n\r\n"), &req) > 0);
}

TEST(find_header_and_reason)
{
	struct sl_http_request req;
	CHECK(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\nX-Mock-Status: 429\r\nx-mock-status: 1\r\n\r\n"),
	                &req) > 0);
	const struct sl_http_header *h = sl_http_find_header(hdrs, req.num_headers,
	                                                     "x-mock-STATUS", 13);
	CHECK(h == &hdrs[1]);
	CHECK_EQ_MEM(h->value, h->value_len, "429");
	CHECK(sl_http_find_header(hdrs, req.num_headers, "x-mock", 6) == NULL);
	CHECK(sl_http_find_header(hdrs, 0, "host", 4) == NULL);
	CHECK(strcmp(sl_http_status_reason(200), "OK") == 0);
	CHECK(strcmp(sl_http_status_reason(429), "Too Many Requests") == 0);
	CHECK(strcmp(sl_http_status_reason(431), "Request Header Fields Too Large") == 0);
	CHECK(strcmp(sl_http_status_reason(504), "Gateway Timeout") == 0);
	CHECK(strcmp(sl_http_status_reason(299), "Unknown") == 0);
	CHECK(strcmp(sl_http_status_reason(0), "Unknown") == 0);
}

/* ---- request rejections ------------------------------------------------- */

TEST(reject_te_and_cl)
{
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
	                 "Content-Length: 5\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
	                 "Transfer-Encoding: chunked\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
	                 "Transfer-Encoding: gzip, chunked\r\n\r\n", 400);
}

TEST(reject_bad_content_length)
{
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ,5\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,,5\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa5\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400);
}

TEST(reject_bad_transfer_encoding)
{
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
	                 "Transfer-Encoding: gzip\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
	                 "Transfer-Encoding: chunked\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n"
	                 "Transfer-Encoding: chunked\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;a=b\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked x\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 400);
	/* chunked is final, but we do not implement the other coding */
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
	CHECK_REQ_REJECT("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip;q=1\r\n"
	                 "Transfer-Encoding: chunked\r\n\r\n", 501);
	/* no Transfer-Encoding in HTTP/1.0 */
	CHECK_REQ_REJECT("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

TEST(reject_obs_fold_and_line_endings)
{
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
	/* bare CR */
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\rHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n", 400);
	CHECK_REQ_REJECT("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	/* bare LF */
	CHECK_REQ_REJECT("GET / HTTP/1.1\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\n\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\n\nX: y\r\n\r\n", 400);
}

TEST(reject_ctl_bytes)
{
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: \0\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX: a\x1b[0m\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX\0: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("G\0T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789abcdef0123456789\x0b"
	                 "abcdef\r\n\r\n", 400);
}

TEST(reject_bad_header_names)
{
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX\"y: 1\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX@y: 1\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nX/y: 1\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\n\xc3\xa9: 1\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\n{x}: 1\r\n\r\n", 400);
}

TEST(reject_host_rules)
{
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.0\r\nHost: a\r\nHOST: b\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\nHost: a?b\r\n\r\n", 400);
}

TEST(reject_versions)
{
	CHECK_REQ_REJECT("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
	CHECK_REQ_REJECT("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);
	CHECK_REQ_REJECT("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505);
	CHECK_REQ_REJECT("GET / HTTP/3.0\r\n\r\n", 505);
	CHECK_REQ_REJECT("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/11\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / http/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/2\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTPS/1.1\r\n", 400);
	CHECK_REQ_REJECT("GET / XTTP", 400); /* rejected before the line is complete */
	struct sl_http_request req;
	CHECK_EQ_INT(parse_req(LIT("GET / HTTP/2"), &req), SL_INCOMPLETE);
}

TEST(reject_bad_request_lines)
{
	CHECK_REQ_REJECT("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET /\tx HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET /\r\n\r\n", 400); /* HTTP/0.9 */
	CHECK_REQ_REJECT("GET / \r\n\r\n", 400);
	CHECK_REQ_REJECT("GET\r\n\r\n", 400);
	CHECK_REQ_REJECT("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
	CHECK_REQ_REJECT("GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", 400);
}

TEST(reject_target_too_long_414)
{
	struct sl_http_limits lim = { .head_len_max = 4096, .target_len_max = 100,
		                      .num_headers_max = 10 };
	char path[128], m[256];
	memset(path, 'a', sizeof(path));
	struct sl_http_request req;
	/* exactly the limit: fine */
	int len = snprintf(m, sizeof(m), "GET /%.*s HTTP/1.1\r\nHost: a\r\n\r\n", 99, path);
	CHECK_EQ_INT(parse_req_lim(m, (size_t)len, &req, &lim), len);
	CHECK_EQ_INT(req.target_len, 100);
	/* one more: 414 on the complete head */
	len = snprintf(m, sizeof(m), "GET /%.*s HTTP/1.1\r\nHost: a\r\n\r\n", 100, path);
	CHECK_EQ_INT(parse_req_lim(m, (size_t)len, &req, &lim), SL_ERROR);
	CHECK_EQ_INT(req.error_status, 414);
	/* and as soon as the partial target exceeds it */
	CHECK_EQ_INT(parse_req_lim(m, 4 + 100, &req, &lim), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_req_lim(m, 4 + 101, &req, &lim), SL_ERROR);
	CHECK_EQ_INT(req.error_status, 414);
}

TEST(reject_head_too_large_431)
{
	struct sl_http_limits lim = { .head_len_max = 64, .target_len_max = 1000,
		                      .num_headers_max = 4 };
	static const char ok[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: 012345678901234567890123456789\r\n\r\n";
	_Static_assert(sizeof(ok) - 1 == 64, "exactly head_len_max");
	struct sl_http_request req;
	CHECK_EQ_INT(parse_req_lim(LIT(ok), &req, &lim), 64);
	/* a body after a head that fits is not counted */
	static const char ok_body[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: 012345678901234567890123456789\r\n\r\nBODY";
	CHECK_EQ_INT(parse_req_lim(LIT(ok_body), &req, &lim), 64);
	/* one byte more in the head: 431, whether complete or not */
	static const char big[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: 0123456789012345678901234567890\r\n\r\n";
	CHECK_EQ_INT(parse_req_lim(LIT(big), &req, &lim), SL_ERROR);
	CHECK_EQ_INT(req.error_status, 431);
	CHECK_EQ_INT(parse_req_lim(big, 64, &req, &lim), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_req_lim(big, 65, &req, &lim), SL_ERROR);
	CHECK_EQ_INT(req.error_status, 431);
	/* a long target under target_len_max but over head_len_max: 431 */
	char m[200];
	memset(m, 'a', sizeof(m));
	memcpy(m, "GET /", 5);
	CHECK_EQ_INT(parse_req_lim(m, sizeof(m), &req, &lim), SL_ERROR);
	CHECK_EQ_INT(req.error_status, 431);
}

TEST(reject_too_many_headers_431)
{
	struct sl_http_limits lim = { .head_len_max = 4096, .target_len_max = 1000,
		                      .num_headers_max = 3 };
	struct sl_http_request req;
	CHECK_EQ_INT(parse_req_lim(LIT("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n"), &req, &lim),
	             sizeof("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n") - 1);
	CHECK_EQ_INT(req.num_headers, 3);
	CHECK_EQ_INT(parse_req_lim(LIT("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
	                           &req, &lim), SL_ERROR);
	CHECK_EQ_INT(req.error_status, 431);
	/* reported as soon as the extra field line starts */
	CHECK_EQ_INT(parse_req_lim(LIT("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC"), &req, &lim),
	             SL_ERROR);
	CHECK_EQ_INT(req.error_status, 431);
	lim.num_headers_max = 0;
	CHECK_EQ_INT(parse_req_lim(LIT("GET / HTTP/1.0\r\n\r\n"), &req, &lim), 18);
	CHECK_EQ_INT(parse_req_lim(LIT("GET / HTTP/1.0\r\nA: 1\r\n\r\n"), &req, &lim), SL_ERROR);
	CHECK_EQ_INT(req.error_status, 431);
}

TEST(incomplete_requests)
{
	struct sl_http_request req;
	CHECK_EQ_INT(parse_req("", 0, &req), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_req(LIT("GET"), &req), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_req(LIT("GET /"), &req), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\n"), &req), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_req(LIT("GET / HTTP/1.1\r\nHost: a\r\n\r"), &req), SL_INCOMPLETE);
	CHECK_EQ_INT(req.error_status, 0);
}

/* ---- responses ------------------------------------------------------------- */

TEST(response_200_content_length)
{
	static const char m[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
	                        "Content-Length: 2\r\n\r\n{}";
	struct sl_http_response resp;
	CHECK_EQ_INT(parse_resp(LIT(m), &resp, SL_METHOD_POST), sizeof(m) - 3);
	CHECK_EQ_INT(resp.status, 200);
	CHECK_EQ_INT(resp.version_minor, 1);
	CHECK_EQ_MEM(resp.reason, resp.reason_len, "OK");
	CHECK_EQ_INT(resp.num_headers, 2);
	CHECK_EQ_INT(resp.framing, SL_BODY_LENGTH);
	CHECK_EQ_INT(resp.content_length, 2);
	CHECK(resp.keep_alive);
}

TEST(response_chunked)
{
	static const char m[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
	                        "Transfer-Encoding: chunked\r\n\r\n";
	struct sl_http_response resp;
	CHECK_EQ_INT(parse_resp(LIT(m), &resp, SL_METHOD_POST), sizeof(m) - 1);
	CHECK_EQ_INT(resp.framing, SL_BODY_CHUNKED);
	CHECK(resp.keep_alive);
}

TEST(response_no_body_statuses)
{
	struct sl_http_response resp;
	CHECK(parse_resp(LIT("HTTP/1.1 204 No Content\r\n\r\n"), &resp, SL_METHOD_GET) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_NONE);
	CHECK(resp.keep_alive);
	CHECK(parse_resp(LIT("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"), &resp,
	                 SL_METHOD_GET) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_NONE);
	CHECK(resp.keep_alive);
	CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"), &resp,
	                 SL_METHOD_HEAD) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_NONE);
	CHECK(resp.keep_alive);
	CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), &resp,
	                 SL_METHOD_HEAD) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_NONE);
	CHECK(parse_resp(LIT("HTTP/1.1 100 Continue\r\n\r\n"), &resp, SL_METHOD_POST) > 0);
	CHECK_EQ_INT(resp.status, 100);
	CHECK_EQ_INT(resp.framing, SL_BODY_NONE);
	CHECK(parse_resp(LIT("HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"), &resp,
	                 SL_METHOD_GET) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_NONE);
	CHECK(parse_resp(LIT("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
	                     "Connection: upgrade\r\n\r\n"), &resp, SL_METHOD_GET) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_NONE);
	CHECK(!resp.keep_alive);
	CHECK(parse_resp(LIT("HTTP/1.1 200 Connection established\r\n\r\n"), &resp,
	                 SL_METHOD_CONNECT) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_NONE);
	CHECK(!resp.keep_alive);
}

TEST(response_until_close_and_keep_alive)
{
	struct sl_http_response resp;
	CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\n\r\n"), &resp, SL_METHOD_GET) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_UNTIL_CLOSE);
	CHECK(!resp.keep_alive);
	CHECK(parse_resp(LIT("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"), &resp, SL_METHOD_GET) > 0);
	CHECK_EQ_INT(resp.version_minor, 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_LENGTH);
	CHECK(!resp.keep_alive);
	CHECK(parse_resp(LIT("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\n"),
	                 &resp, SL_METHOD_GET) > 0);
	CHECK(resp.keep_alive);
	CHECK(parse_resp(LIT("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n"),
	                 &resp, SL_METHOD_GET) > 0);
	CHECK(!resp.keep_alive);
	CHECK(parse_resp(LIT("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"), &resp,
	                 SL_METHOD_GET) > 0);
	CHECK_EQ_INT(resp.framing, SL_BODY_UNTIL_CLOSE);
	CHECK(!resp.keep_alive);
}

TEST(response_status_lines)
{
	struct sl_http_response resp;
	CHECK(parse_resp(LIT("HTTP/1.1 200 \r\n\r\n"), &resp, SL_METHOD_HEAD) > 0);
	CHECK_EQ_INT(resp.reason_len, 0);
	CHECK(parse_resp(LIT("HTTP/1.1 200\r\n\r\n"), &resp, SL_METHOD_HEAD) > 0);
	CHECK_EQ_INT(resp.reason_len, 0);
	CHECK(parse_resp(LIT("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\n"
	                     "Content-Length: 0\r\n\r\n"), &resp, SL_METHOD_POST) > 0);
	CHECK_EQ_INT(resp.status, 429);
	CHECK_EQ_MEM(resp.reason, resp.reason_len, "Too Many Requests");
	CHECK(parse_resp(LIT("HTTP/1.1 599 \xc3\xa9\tx\r\nContent-Length: 0\r\n\r\n"), &resp,
	                 SL_METHOD_POST) > 0);
	CHECK_EQ_MEM(resp.reason, resp.reason_len, "\xc3\xa9\tx");
	CHECK_EQ_INT(parse_resp(LIT("HTTP/1.1 20"), &resp, SL_METHOD_GET), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_resp(LIT("HTTP/1.1 200"), &resp, SL_METHOD_GET), SL_INCOMPLETE);
	CHECK_EQ_INT(parse_resp(LIT("HTTP/1.1 200 OK\r\n"), &resp, SL_METHOD_GET), SL_INCOMPLETE);
}

TEST(response_rejections)
{
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
	                  SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 204 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
	                  SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n...", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
	                  SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/2.0 200 OK\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 20 OK\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 2000 OK\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 2x0 OK\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 099 OK\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 600 OK\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1  200 OK\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 O\x01K\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nX : a\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("\r\nHTTP/1.1 200 OK\r\n\r\n", SL_METHOD_GET);
	CHECK_RESP_REJECT("http/1.1 200 OK\r\n\r\n", SL_METHOD_GET);
}

TEST(response_limits)
{
	struct sl_http_limits lim = { .head_len_max = 40, .target_len_max = 10,
		                      .num_headers_max = 2 };
	struct sl_http_response resp;
	CHECK(parse_resp_lim(LIT("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n"), &resp, SL_METHOD_GET,
	                     &lim) > 0);
	CHECK_EQ_INT(parse_resp_lim(LIT("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), &resp,
	                            SL_METHOD_GET, &lim), SL_ERROR);
	CHECK(resp.error_message != NULL);
	CHECK_EQ_INT(parse_resp_lim(LIT("HTTP/1.1 200 OK\r\nA: 01234567890123456789\r\n\r\n"), &resp,
	                            SL_METHOD_GET, &lim), SL_ERROR);
	CHECK(resp.error_message != NULL);
}

/* ---- chunked decoder ------------------------------------------------------- */

/* decode_all feeds s in one call, out of place. Returns the feed result. */
static ssize_t decode_all(const char *s, size_t len, char *out, size_t *out_len,
                          struct sl_chunked *d)
{
	char *copy = dup_exact(s, len);
	sl_chunked_init(d);
	ssize_t r = sl_chunked_feed(d, copy, len, out, out_len);
	free(copy);
	return r;
}

#define CHECK_CHUNKED_OK(lit, data)                                                        \
	do {                                                                               \
		char out_[8192];                                                           \
		size_t out_len_ = 0;                                                       \
		struct sl_chunked d_;                                                      \
		ssize_t n_ = decode_all(LIT(lit), out_, &out_len_, &d_);                   \
		if (n_ != (ssize_t)(sizeof(lit) - 1) || !d_.complete ||                    \
		    out_len_ != strlen(data) || memcmp(out_, data, out_len_) != 0)         \
			FAIL_AT(__func__ + 5, "%s: n %zd complete %d out \"%.*s\"", #lit, n_, \
			        d_.complete, (int)out_len_, out_);                          \
	} while (0)

#define CHECK_CHUNKED_REJECT(lit)                                                          \
	do {                                                                               \
		char out_[8192];                                                           \
		size_t out_len_ = 0;                                                       \
		struct sl_chunked d_;                                                      \
		ssize_t n_ = decode_all(LIT(lit), out_, &out_len_, &d_);                   \
		if (n_ != SL_ERROR)                                                        \
			FAIL_AT(__func__ + 5, "%s: got %zd, expected SL_ERROR", #lit, n_);  \
	} while (0)

TEST(chunked_simple)
{
	CHECK_CHUNKED_OK("5\r\nhello\r\n0\r\n\r\n", "hello");
	CHECK_CHUNKED_OK("0\r\n\r\n", "");
	CHECK_CHUNKED_OK("3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", "abcdefg");
	CHECK_CHUNKED_OK("A\r\n0123456789\r\na\r\nabcdefghij\r\n000\r\n\r\n",
	                 "0123456789abcdefghij");
	CHECK_CHUNKED_OK("0000000000000001\r\nx\r\n0\r\n\r\n", "x");
	CHECK_CHUNKED_OK("2\r\n\r\n\r\n0\r\n\r\n", "\r\n");
}

TEST(chunked_stops_at_end_of_body)
{
	static const char m[] = "5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
	char out[64];
	size_t out_len;
	struct sl_chunked d;
	sl_chunked_init(&d);
	ssize_t n = sl_chunked_feed(&d, m, sizeof(m) - 1, out, &out_len);
	CHECK_EQ_INT(n, 15);
	CHECK(d.complete);
	CHECK_EQ_MEM(out, out_len, "hello");
	/* fed again after completion: nothing belongs to the body */
	n = sl_chunked_feed(&d, m + 15, sizeof(m) - 1 - 15, out, &out_len);
	CHECK_EQ_INT(n, 0);
	CHECK_EQ_INT(out_len, 0);
	CHECK_EQ_INT(sl_chunked_feed(&d, NULL, 0, NULL, NULL), 0);
}

TEST(chunked_extensions)
{
	CHECK_CHUNKED_OK("5;name=value\r\nhello\r\n0;x\r\n\r\n", "hello");
	CHECK_CHUNKED_OK("5 ;a=\"q u;o\\\"te\";b\r\nhello\r\n0\r\n\r\n", "hello");
	CHECK_CHUNKED_OK("5\t ; a = b\r\nhello\r\n0\r\n\r\n", "hello");
	CHECK_CHUNKED_REJECT("5;a=\x01\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5;a=\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5;a=\0\r\nhello\r\n0\r\n\r\n");
}

TEST(chunked_trailers)
{
	CHECK_CHUNKED_OK("5\r\nhello\r\n0\r\nX-Usage: 12\r\nChecksum:\tab c \r\n\r\n", "hello");
	CHECK_CHUNKED_OK("0\r\nA:\r\n\r\n", "");
	CHECK_CHUNKED_REJECT("0\r\nX-A: 1\r\n folded\r\n\r\n");
	CHECK_CHUNKED_REJECT("0\r\nX-A 1\r\n\r\n");
	CHECK_CHUNKED_REJECT("0\r\nX-A : 1\r\n\r\n");
	CHECK_CHUNKED_REJECT("0\r\n: 1\r\n\r\n");
	CHECK_CHUNKED_REJECT("0\r\nX-A: 1\n\r\n");
	CHECK_CHUNKED_REJECT("0\r\nX-A: 1\r\n\n");
	CHECK_CHUNKED_REJECT("0\r\nX-A: 1\0\r\n\r\n");
	CHECK_CHUNKED_REJECT("0\r\nX-A: 1\r\r\n\r\n");
}

TEST(chunked_bad_sizes)
{
	CHECK_CHUNKED_REJECT("g\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT(";x\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("-5\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("+5\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("0x5\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT(" 5\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5 \r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5 5\r\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5\r\nhello\r\n0 \r\n\r\n");
	CHECK_CHUNKED_REJECT("5\r\nhello\r\n\r\n");
	/* more than 16 digits, even if the value is small */
	CHECK_CHUNKED_REJECT("00000000000000005\r\nhello\r\n0\r\n\r\n");
	/* over 2^62 */
	CHECK_CHUNKED_REJECT("4000000000000001\r\n");
	CHECK_CHUNKED_REJECT("ffffffffffffffff\r\n");
	CHECK_CHUNKED_REJECT("10000000000000000\r\n");
	/* 2^62 itself is accepted (and then waits for that much data) */
	struct sl_chunked d;
	char out[8];
	size_t out_len;
	CHECK_EQ_INT(decode_all(LIT("4000000000000000\r\nab"), out, &out_len, &d), 20);
	CHECK(d.chunk_left == (UINT64_C(1) << 62) - 2);
	CHECK(!d.complete);
}

TEST(chunked_bad_crlf)
{
	CHECK_CHUNKED_REJECT("5\r\nhelloX\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5\r\nhello\r0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5\r\nhello\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5\nhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5\rhello\r\n0\r\n\r\n");
	CHECK_CHUNKED_REJECT("5\r\nhello\r\n0\n\r\n");
	CHECK_CHUNKED_REJECT("5\r\nhello\r\n0\r\n\n");
	CHECK_CHUNKED_REJECT("5\r\nhello\r\n0\r\n\rX");
	CHECK_CHUNKED_REJECT("5\r\nhello\r\n\r\n0\r\n\r\n");
}

TEST(chunked_line_limits)
{
	static char m[10000];
	char out[16];
	size_t out_len;
	struct sl_chunked d;
	/* a size line of exactly 4096 bytes (CRLF included) is fine */
	size_t n = 0;
	m[n++] = '1';
	m[n++] = ';';
	while (n < 4094)
		m[n++] = 'e';
	memcpy(m + n, "\r\nx\r\n0\r\n\r\n", 10);
	CHECK_EQ_INT(decode_all(m, n + 10, out, &out_len, &d), n + 10);
	CHECK(d.complete);
	CHECK_EQ_MEM(out, out_len, "x");
	/* one more byte is not */
	memmove(m + n + 1, m + n, 10);
	m[n] = 'e';
	CHECK_EQ_INT(decode_all(m, n + 11, out, &out_len, &d), SL_ERROR);
	/* a trailer section of 4096 bytes (final CRLF included) is fine */
	memcpy(m, "0\r\nX:", 5);
	n = 5;
	while (n < 3 + 4096 - 4)
		m[n++] = 'v';
	memcpy(m + n, "\r\n\r\n", 4);
	CHECK_EQ_INT(decode_all(m, n + 4, out, &out_len, &d), n + 4);
	CHECK(d.complete);
	m[n] = 'v';
	memcpy(m + n + 1, "\r\n\r\n", 4);
	CHECK_EQ_INT(decode_all(m, n + 5, out, &out_len, &d), SL_ERROR);
	/* many short trailer lines add up too */
	n = 0;
	memcpy(m, "0\r\n", 3);
	n = 3;
	while (n < 3 + 4200) {
		memcpy(m + n, "A: b\r\n", 6);
		n += 6;
	}
	memcpy(m + n, "\r\n", 2);
	CHECK_EQ_INT(decode_all(m, n + 2, out, &out_len, &d), SL_ERROR);
}

TEST(chunked_error_is_sticky_and_framing_only_mode)
{
	struct sl_chunked d;
	sl_chunked_init(&d);
	CHECK_EQ_INT(sl_chunked_feed(&d, LIT("zz"), NULL, NULL), SL_ERROR);
	CHECK_EQ_INT(sl_chunked_feed(&d, LIT("5\r\nhello\r\n0\r\n\r\n"), NULL, NULL), SL_ERROR);
	CHECK(!d.complete);

	static const char m[] = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
	size_t count = 99;
	sl_chunked_init(&d);
	CHECK_EQ_INT(sl_chunked_feed(&d, LIT(m), NULL, &count), sizeof(m) - 1);
	CHECK_EQ_INT(count, 11);
	CHECK(d.complete);
	sl_chunked_init(&d);
	CHECK_EQ_INT(sl_chunked_feed(&d, LIT(m), NULL, NULL), sizeof(m) - 1);
	CHECK(d.complete);
}

TEST(chunked_at_boundary)
{
	static const char m[] = "5\r\nhello\r\n3;x\r\nabc\r\n0\r\n\r\n";
	/* offsets after which the decoder is between chunks */
	static const size_t boundaries[] = { 0, 10, 20 };
	struct sl_chunked d;
	size_t b = 0;
	sl_chunked_init(&d);
	CHECK(sl_chunked_at_boundary(&d));
	for (size_t i = 0; i < sizeof(m) - 1; i++) {
		CHECK_EQ_INT(sl_chunked_feed(&d, m + i, 1, NULL, NULL), 1);
		bool expected = b + 1 < SL_ARRAY_LEN(boundaries) && boundaries[b + 1] == i + 1;
		if (expected)
			b++;
		if (sl_chunked_at_boundary(&d) != expected)
			FAIL_AT("chunked_at_boundary", "after %zu bytes: %d", i + 1, !expected);
	}
	CHECK(d.complete);
	CHECK(!sl_chunked_at_boundary(&d));
}

/* ---- property tests: every split point ------------------------------------ */

static const char *const valid_requests[] = {
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: api.example.com:8080\r\nAccept: */*\r\n\r\n",
	"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
	"Authorization: Bearer sk-0123456789abcdef0123456789abcdef\r\nContent-Length: 5, 5\r\n"
	"X-Tab:\t a\tb \t\r\nX-Empty:\r\n\r\n",
	"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
	"GET /x HTTP/1.0\r\nConnection: keep-alive\r\nUser-Agent: caf\xc3\xa9\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: [::1]\r\nTransfer-Encoding: ,chunked\r\n\r\n",
};

static const char *const valid_responses[] = {
	"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: application/json\r\n\r\n",
	("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
	 "x-request-id: req_0123456789abcdef0123456789\r\n\r\n"),
	"HTTP/1.1 204 \r\n\r\n",
	"HTTP/1.1 100 Continue\r\n\r\n",
	"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n",
	"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
};

static bool same_request(const struct sl_http_request *a, const struct sl_http_request *b)
{
	return a->method == b->method && a->method_len == b->method_len &&
	       a->target_len == b->target_len && a->version_minor == b->version_minor &&
	       a->num_headers == b->num_headers && a->framing == b->framing &&
	       a->content_length == b->content_length && a->keep_alive == b->keep_alive &&
	       a->expect_continue == b->expect_continue;
}

TEST(property_request_every_split)
{
	for (size_t i = 0; i < SL_ARRAY_LEN(valid_requests); i++) {
		const char *m = valid_requests[i];
		size_t len = strlen(m);
		struct sl_http_request full, part;
		ssize_t n = parse_req(m, len, &full);
		if (n != (ssize_t)len) {
			FAIL_AT("property_request_every_split", "request %zu: %zd (%s)", i, n,
			        full.error_message);
			continue;
		}
		for (size_t k = 0; k < len; k++) {
			ssize_t r = parse_req(m, k, &part);
			if (r != SL_INCOMPLETE)
				FAIL_AT("property_request_every_split", "request %zu prefix %zu: %zd", i,
				        k, r);
		}
		/* followed by more bytes (a body, the next request): same head */
		char buf[1024];
		memcpy(buf, m, len);
		memcpy(buf + len, "GET / HTTP/1.1\r\n", 16);
		for (size_t extra = 1; extra <= 16; extra++) {
			ssize_t r = parse_req(buf, len + extra, &part);
			if (r != n || !same_request(&full, &part))
				FAIL_AT("property_request_every_split", "request %zu + %zu: %zd", i,
				        extra, r);
		}
	}
}

TEST(property_response_every_split)
{
	static const enum sl_http_method methods[] = { SL_METHOD_GET, SL_METHOD_HEAD,
		                                       SL_METHOD_POST };
	for (size_t i = 0; i < SL_ARRAY_LEN(valid_responses); i++) {
		const char *m = valid_responses[i];
		size_t len = strlen(m);
		for (size_t j = 0; j < SL_ARRAY_LEN(methods); j++) {
			struct sl_http_response full, part;
			ssize_t n = parse_resp(m, len, &full, methods[j]);
			if (n != (ssize_t)len) {
				FAIL_AT("property_response_every_split", "response %zu: %zd", i, n);
				continue;
			}
			for (size_t k = 0; k < len; k++) {
				ssize_t r = parse_resp(m, k, &part, methods[j]);
				if (r != SL_INCOMPLETE)
					FAIL_AT("property_response_every_split",
					        "response %zu prefix %zu: %zd", i, k, r);
			}
			char buf[1024];
			memcpy(buf, m, len);
			memcpy(buf + len, "0123456789", 10);
			ssize_t r = parse_resp(buf, len + 10, &part, methods[j]);
			if (r != n || part.status != full.status || part.framing != full.framing ||
			    part.keep_alive != full.keep_alive || part.num_headers != full.num_headers)
				FAIL_AT("property_response_every_split", "response %zu + body", i);
		}
	}
}

/* An SSE-like body: events of varying sizes, one chunk each, extensions on
 * some, and a trailer. */
static char sse_body[1500];

static void build_sse_body(void)
{
	size_t n = 0;
	for (int i = 0; i < 6; i++) {
		char event[256];
		int len = snprintf(event, sizeof(event),
		                   "data: {\"id\":\"chatcmpl-%d\",\"choices\":[{\"delta\":"
		                   "{\"content\":\"%.*s\"}}]}\n\n",
		                   i, i * 30, "tokens tokens tokens tokens tokens tokens tokens "
		                              "tokens tokens tokens tokens tokens tokens tokens "
		                              "tokens tokens tokens tokens tokens tokens tokens");
		n += (size_t)snprintf(sse_body + n, sizeof(sse_body) - n, "%x%s\r\n%s\r\n", len,
		                      i % 2 ? ";n=1" : "", event);
	}
	n += (size_t)snprintf(sse_body + n, sizeof(sse_body) - n, "0\r\nX-Usage: 7\r\n\r\n");
	SL_ASSERT(n < sizeof(sse_body) - 1);
}

static const char *valid_chunked[] = {
	"5\r\nhello\r\n0\r\n\r\n",
	"0\r\n\r\n",
	"1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\nA\r\n0123456789\r\n0\r\n\r\n",
	"E\r\ndata: [DONE]\n\n\r\n0\r\nX-Trailer: v\r\nY:\r\n\r\n",
	sse_body, /* built by build_sse_body() */
	"04 ; a=\"b\"\r\n\r\n\r\n\r\n0000\r\n\r\n",
};

/* decode_split feeds m[0..len) as the pieces given by cuts[] (increasing
 * offsets), in place or not. Returns the total consumed, or SL_ERROR; the
 * decoded bytes go to out. */
static ssize_t decode_split(const char *m, size_t len, const size_t *cuts, size_t num_cuts,
                            bool in_place, char *out, size_t *out_len, bool *complete)
{
	char *buf = dup_exact(m, len);
	struct sl_chunked d;
	size_t consumed = 0, produced = 0, start = 0;
	sl_chunked_init(&d);
	for (size_t c = 0; c <= num_cuts; c++) {
		size_t stop = c < num_cuts ? cuts[c] : len;
		/* each piece in its own exact-size buffer unless decoding in place */
		size_t piece_len = stop - start, n_out = 0;
		ssize_t r;
		if (in_place) {
			r = sl_chunked_feed(&d, buf + start, piece_len, buf + produced, &n_out);
		} else {
			char *piece = dup_exact(m + start, piece_len);
			r = sl_chunked_feed(&d, piece, piece_len, out + produced, &n_out);
			free(piece);
		}
		if (r == SL_ERROR) {
			free(buf);
			return SL_ERROR;
		}
		produced += n_out;
		consumed += (size_t)r;
		if (d.complete)
			break;
		start = stop;
	}
	if (in_place)
		memcpy(out, buf, produced);
	free(buf);
	*out_len = produced;
	*complete = d.complete;
	return (ssize_t)consumed;
}

TEST(property_chunked_every_split)
{
	for (size_t i = 0; i < SL_ARRAY_LEN(valid_chunked); i++) {
		/* the body followed by the next message's bytes */
		char m[2048];
		size_t body_len = strlen(valid_chunked[i]);
		memcpy(m, valid_chunked[i], body_len);
		memcpy(m + body_len, "HTTP/1.1", 8);
		size_t len = body_len + 8;

		char ref[2048], out[2048];
		size_t ref_len, out_len;
		bool complete;
		ssize_t n = decode_split(m, len, NULL, 0, false, ref, &ref_len, &complete);
		if (n != (ssize_t)body_len || !complete) {
			FAIL_AT("property_chunked_every_split", "body %zu: %zd", i, n);
			continue;
		}
		for (int in_place = 0; in_place < 2; in_place++) {
			for (size_t k = 0; k <= len; k++) {
				n = decode_split(m, len, &k, 1, in_place, out, &out_len, &complete);
				if (n != (ssize_t)body_len || !complete || out_len != ref_len ||
				    memcmp(out, ref, ref_len) != 0)
					FAIL_AT("property_chunked_every_split",
					        "body %zu split %zu in_place %d: %zd", i, k, in_place, n);
			}
			for (size_t k1 = 0; k1 <= len; k1 += 3) {
				for (size_t k2 = k1; k2 <= len; k2 += 5) {
					size_t cuts[2] = { k1, k2 };
					n = decode_split(m, len, cuts, 2, in_place, out, &out_len,
					                 &complete);
					if (n != (ssize_t)body_len || out_len != ref_len ||
					    memcmp(out, ref, ref_len) != 0)
						FAIL_AT("property_chunked_every_split",
						        "body %zu cuts %zu,%zu: %zd", i, k1, k2, n);
				}
			}
			/* one byte at a time */
			size_t cuts[2048];
			for (size_t k = 0; k < len; k++)
				cuts[k] = k + 1;
			n = decode_split(m, len, cuts, len - 1, in_place, out, &out_len, &complete);
			if (n != (ssize_t)body_len || !complete || out_len != ref_len ||
			    memcmp(out, ref, ref_len) != 0)
				FAIL_AT("property_chunked_every_split", "body %zu bytewise: %zd", i, n);
		}
	}
}

TEST(property_chunked_prefix_never_complete)
{
	for (size_t i = 0; i < SL_ARRAY_LEN(valid_chunked); i++) {
		size_t len = strlen(valid_chunked[i]);
		for (size_t k = 0; k < len; k++) {
			char out[2048];
			size_t out_len;
			struct sl_chunked d;
			ssize_t n = decode_all(valid_chunked[i], k, out, &out_len, &d);
			if (n != (ssize_t)k || d.complete)
				FAIL_AT("property_chunked_prefix_never_complete", "body %zu prefix %zu",
				        i, k);
		}
	}
}

/* Random single-byte mutations of valid requests: the parser must keep its
 * invariants (bounded result; success is stable under re-parse; an error in a
 * prefix is an error for the whole). */
TEST(property_request_mutations)
{
	uint64_t rng = 0x9e3779b97f4a7c15u;
	static const char interesting[] = "\r\n :\t\0\x7f\x80,;\"0aA";
	for (int iter = 0; iter < 20000; iter++) {
		rng ^= rng << 13;
		rng ^= rng >> 7;
		rng ^= rng << 17;
		const char *src = valid_requests[rng % SL_ARRAY_LEN(valid_requests)];
		char m[512];
		size_t len = strlen(src);
		memcpy(m, src, len);
		size_t pos = (size_t)(rng >> 8) % len;
		m[pos] = interesting[(rng >> 24) % (sizeof(interesting) - 1)];
		struct sl_http_request a, b;
		ssize_t n = parse_req(m, len, &a);
		if (n > (ssize_t)len || (n < 0 && n != SL_ERROR && n != SL_INCOMPLETE)) {
			FAIL_AT("property_request_mutations", "bad result %zd", n);
			break;
		}
		if (n > 0 && (parse_req(m, (size_t)n, &b) != n || !same_request(&a, &b))) {
			FAIL_AT("property_request_mutations", "unstable re-parse of %.*s", (int)len, m);
			break;
		}
		if (parse_req(m, pos + 1, &b) == SL_ERROR && n != SL_ERROR) {
			FAIL_AT("property_request_mutations", "prefix error, full %zd: %.*s", n,
			        (int)len, m);
			break;
		}
		if (n == SL_ERROR && (a.error_message == NULL || a.error_status < 400)) {
			FAIL_AT("property_request_mutations", "error without status");
			break;
		}
	}
}

/* ---- the scanners against byte-at-a-time references ------------------------ */

TEST(scanners_match_reference)
{
	uint64_t rng = 12345;
	char buf[80];
	for (int iter = 0; iter < 50000; iter++) {
		size_t len = iter % 70;
		for (size_t i = 0; i < len; i++) {
			rng = rng * 6364136223846793005u + 1442695040888963407u;
			/* mostly valid bytes, sometimes a stop byte */
			unsigned v = (unsigned)(rng >> 33);
			buf[i] = (v % 23 == 0) ? (char)(v >> 8) : (char)('a' + v % 26);
		}
		const char *end = buf + len, *p;
		p = buf;
		while (p < end && (char_class[(unsigned char)*p] & CL_VALUE))
			p++;
		if (scan_value(buf, end) != p) {
			FAIL_AT("scanners_match_reference", "scan_value len %zu", len);
			break;
		}
		p = buf;
		while (p < end && (char_class[(unsigned char)*p] & CL_TARGET))
			p++;
		if (scan_target(buf, end) != p) {
			FAIL_AT("scanners_match_reference", "scan_target len %zu", len);
			break;
		}
		p = buf;
		while (p < end && (char_class[(unsigned char)*p] & CL_TCHAR))
			p++;
		if (scan_token(buf, end) != p) {
			FAIL_AT("scanners_match_reference", "scan_token len %zu", len);
			break;
		}
	}
}

TEST(char_classes)
{
	int tchar = 0, value = 0, target = 0;
	for (int c = 0; c < 256; c++) {
		tchar += !!(char_class[c] & CL_TCHAR);
		value += !!(char_class[c] & CL_VALUE);
		target += !!(char_class[c] & CL_TARGET);
	}
	CHECK_EQ_INT(tchar, 26 * 2 + 10 + 15);
	CHECK_EQ_INT(value, 94 + 128 + 2);
	CHECK_EQ_INT(target, 94 + 128);
	CHECK(!(char_class[0x7f] & CL_VALUE));
	CHECK(char_class['\t'] & CL_VALUE);
	CHECK(!(char_class['\r'] & CL_VALUE));
	CHECK(!(char_class[':'] & CL_TCHAR));
	CHECK_EQ_INT(hex_value['f'], 15);
	CHECK_EQ_INT(hex_value['F'], 15);
	CHECK_EQ_INT(hex_value['g'], 0xff);
	CHECK_EQ_INT(hex_value['9'], 9);
}

TEST(content_length_parser)
{
	uint64_t v;
	CHECK(parse_content_length(LIT("0"), &v) && v == 0);
	CHECK(parse_content_length(LIT("12 , 12"), &v) && v == 12);
	CHECK(!parse_content_length(LIT(""), &v));
	CHECK(!parse_content_length(LIT("1 2"), &v));
	CHECK(!parse_content_length(LIT("12,13"), &v));
	CHECK(parse_content_length(LIT("9223372036854775807"), &v) && v == (uint64_t)INT64_MAX);
	CHECK(!parse_content_length(LIT("9223372036854775808"), &v));
}

int main(void)
{
	build_sse_body();
	RUN(request_simple_get);
	RUN(request_post_content_length);
	RUN(request_chunked);
	RUN(request_transfer_encoding_case_and_lists);
	RUN(request_pipelined);
	RUN(request_leading_empty_lines);
	RUN(request_keep_alive_rules);
	RUN(request_expect_continue);
	RUN(request_methods);
	RUN(request_header_values_trimmed);
	RUN(request_long_value_simd_paths);
	RUN(request_content_length_forms);
	RUN(request_targets_and_hosts);
	RUN(find_header_and_reason);
	RUN(reject_te_and_cl);
	RUN(reject_bad_content_length);
	RUN(reject_bad_transfer_encoding);
	RUN(reject_obs_fold_and_line_endings);
	RUN(reject_ctl_bytes);
	RUN(reject_bad_header_names);
	RUN(reject_host_rules);
	RUN(reject_versions);
	RUN(reject_bad_request_lines);
	RUN(reject_target_too_long_414);
	RUN(reject_head_too_large_431);
	RUN(reject_too_many_headers_431);
	RUN(incomplete_requests);
	RUN(response_200_content_length);
	RUN(response_chunked);
	RUN(response_no_body_statuses);
	RUN(response_until_close_and_keep_alive);
	RUN(response_status_lines);
	RUN(response_rejections);
	RUN(response_limits);
	RUN(chunked_simple);
	RUN(chunked_stops_at_end_of_body);
	RUN(chunked_extensions);
	RUN(chunked_trailers);
	RUN(chunked_bad_sizes);
	RUN(chunked_bad_crlf);
	RUN(chunked_line_limits);
	RUN(chunked_error_is_sticky_and_framing_only_mode);
	RUN(chunked_at_boundary);
	RUN(property_request_every_split);
	RUN(property_response_every_split);
	RUN(property_chunked_every_split);
	RUN(property_chunked_prefix_never_complete);
	RUN(property_request_mutations);
	RUN(scanners_match_reference);
	RUN(char_classes);
	RUN(content_length_parser);
	return test_summary();
}
