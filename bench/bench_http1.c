/*
 * bench_http1.c - micro-benchmark of the HTTP/1 parser and chunked decoder.
 *
 *   build/bench_http1 [iterations]
 *
 * Cases: a ~1 KB POST request head as the OpenAI Python SDK sends it, a
 * typical streaming response head from an LLM provider, and a 64 KB chunked
 * body of 200-byte chunks (one SSE event each) decoded out of place and
 * tracked for framing only (what the relay does); and the PROXY protocol
 * header, v1 and v2, parsed once per connection on such listeners. Prints
 * ns/op and MB/s.
 */
#include "sluice/http1.h"
#include "sluice/proxyproto.h"

#include <string.h>
#include <time.h>

static const char request_head[] =
	"POST /v1/chat/completions HTTP/1.1\r\n"
	"Host: api.openai.com\r\n"
	"Accept-Encoding: gzip, deflate\r\n"
	"Connection: keep-alive\r\n"
	"Accept: application/json\r\n"
	"Content-Type: application/json\r\n"
	"User-Agent: OpenAI/Python 1.54.3\r\n"
	"X-Stainless-Lang: python\r\n"
	"X-Stainless-Package-Version: 1.54.3\r\n"
	"X-Stainless-OS: Linux\r\n"
	"X-Stainless-Arch: x64\r\n"
	"X-Stainless-Runtime: CPython\r\n"
	"X-Stainless-Runtime-Version: 3.12.7\r\n"
	"Authorization: Bearer sk-proj-Q3bS9xk2Lw8vTtYqR1mZ0aNc4dEf5gHi6jKl7MnOp8QrSt9UvWx0Yz"
	"A1bC2dE3fG4hI5jK6lM7nO8pQ9rS0tU1vW2xY3zA4bC5dE6fG7hI8jK9lM0nO1pQ2rS3tU4vW5xY6zA7bC8dE9"
	"fG0hI1jK2lM3nO4pQ5rS6tU7vW8xY9zA0bC1dE2fG3hI4jK5lM6nO7pQ8rS9tU0vW1xY2zA3bC4dE5fG6hI7jK8\r\n"
	"X-Stainless-Async: false\r\n"
	"x-stainless-retry-count: 0\r\n"
	"x-stainless-read-timeout: 600\r\n"
	"OpenAI-Organization: org-Abc123Def456Ghi789Jkl012\r\n"
	"OpenAI-Project: proj_Mno345Pqr678Stu901Vwx234\r\n"
	"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
	"Content-Length: 1543\r\n"
	"\r\n";

static const char response_head[] =
	"HTTP/1.1 200 OK\r\n"
	"Date: Sat, 22 Nov 2025 02:28:00 GMT\r\n"
	"Content-Type: text/event-stream; charset=utf-8\r\n"
	"Transfer-Encoding: chunked\r\n"
	"Connection: keep-alive\r\n"
	"access-control-expose-headers: X-Request-ID\r\n"
	"openai-organization: user-abc123def456\r\n"
	"openai-processing-ms: 231\r\n"
	"openai-version: 2020-10-01\r\n"
	"x-ratelimit-limit-requests: 10000\r\n"
	"x-ratelimit-limit-tokens: 30000000\r\n"
	"x-ratelimit-remaining-requests: 9999\r\n"
	"x-ratelimit-remaining-tokens: 29999975\r\n"
	"x-ratelimit-reset-requests: 6ms\r\n"
	"x-ratelimit-reset-tokens: 0s\r\n"
	"x-request-id: req_7f3c2a9b1e4d4c8fa0b6e5d2c1a09f87\r\n"
	"strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n"
	"cf-cache-status: DYNAMIC\r\n"
	"Server: cloudflare\r\n"
	"cf-ray: 8e6f1a2b3c4d5e6f-FRA\r\n"
	"alt-svc: h3=\":443\"; ma=86400\r\n"
	"\r\n";

#define CHUNK_DATA_LEN 200
#define BODY_DATA_LEN (64 * 1024)

static char chunked_body[BODY_DATA_LEN + BODY_DATA_LEN / CHUNK_DATA_LEN * 8 + 64];
static char decoded[BODY_DATA_LEN + 1024];

static size_t build_chunked_body(void)
{
	size_t n = 0, data = 0;
	while (data < BODY_DATA_LEN) {
		size_t len = SL_MIN((size_t)CHUNK_DATA_LEN, (size_t)BODY_DATA_LEN - data);
		n += (size_t)sprintf(chunked_body + n, "%zx\r\n", len);
		/* an SSE event: "data: {...}\n\n" padded to len */
		memset(chunked_body + n, 'x', len);
		memcpy(chunked_body + n, "data: {\"choices\":[{\"delta\":{\"content\":\"", 40);
		memcpy(chunked_body + n + len - 6, "\"}]}\n\n", 6);
		n += len;
		data += len;
		memcpy(chunked_body + n, "\r\n", 2);
		n += 2;
	}
	memcpy(chunked_body + n, "0\r\n\r\n", 5);
	return n + 5;
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void report(const char *name, double ns, long iterations, size_t bytes)
{
	double per_op = ns / (double)iterations;
	printf("%-34s %8zu B  %10.1f ns/op  %9.1f MB/s\n", name, bytes, per_op,
	       (double)bytes / per_op * 1e3);
}

int main(int argc, char **argv)
{
	long iterations = argc > 1 ? atol(argv[1]) : 2000000;
	if (iterations < 1)
		iterations = 1;
	static struct sl_http_header headers[64];
	const struct sl_http_limits limits = { 16384, 8192, 64 };
	volatile size_t sink = 0;
	double t0;

	/* request head */
	struct sl_http_request req = { .headers = headers };
	if (sl_http_parse_request(request_head, sizeof(request_head) - 1, &req, &limits) !=
	    (ssize_t)(sizeof(request_head) - 1)) {
		fprintf(stderr, "bench_http1: request head rejected: %s\n", req.error_message);
		return 1;
	}
	t0 = now_ns();
	for (long i = 0; i < iterations; i++) {
		ssize_t n = sl_http_parse_request(request_head, sizeof(request_head) - 1, &req,
		                                  &limits);
		sink += (size_t)n + req.num_headers;
	}
	report("parse_request (POST, 21 headers)", now_ns() - t0, iterations,
	       sizeof(request_head) - 1);

	/* response head */
	struct sl_http_response resp = { .headers = headers };
	if (sl_http_parse_response(response_head, sizeof(response_head) - 1, &resp, &limits,
	                           SL_METHOD_POST) != (ssize_t)(sizeof(response_head) - 1)) {
		fprintf(stderr, "bench_http1: response head rejected: %s\n", resp.error_message);
		return 1;
	}
	t0 = now_ns();
	for (long i = 0; i < iterations; i++) {
		ssize_t n = sl_http_parse_response(response_head, sizeof(response_head) - 1, &resp,
		                                   &limits, SL_METHOD_POST);
		sink += (size_t)n + resp.num_headers;
	}
	report("parse_response (SSE, 20 headers)", now_ns() - t0, iterations,
	       sizeof(response_head) - 1);

	/* chunked body */
	size_t body_len = build_chunked_body();
	long body_iterations = iterations / 200 > 0 ? iterations / 200 : 1;
	struct sl_chunked d;
	size_t out_len = 0;
	sl_chunked_init(&d);
	if (sl_chunked_feed(&d, chunked_body, body_len, decoded, &out_len) != (ssize_t)body_len ||
	    !d.complete || out_len != BODY_DATA_LEN) {
		fprintf(stderr, "bench_http1: chunked body rejected\n");
		return 1;
	}
	t0 = now_ns();
	for (long i = 0; i < body_iterations; i++) {
		sl_chunked_init(&d);
		ssize_t n = sl_chunked_feed(&d, chunked_body, body_len, decoded, &out_len);
		sink += (size_t)n + out_len;
	}
	report("chunked_feed 64K/200B, decode", now_ns() - t0, body_iterations, body_len);
	t0 = now_ns();
	for (long i = 0; i < body_iterations; i++) {
		sl_chunked_init(&d);
		ssize_t n = sl_chunked_feed(&d, chunked_body, body_len, NULL, NULL);
		sink += (size_t)n;
	}
	report("chunked_feed 64K/200B, framing", now_ns() - t0, body_iterations, body_len);
	/* the relay sees one recv per event: feed chunk by chunk */
	size_t piece = CHUNK_DATA_LEN + 7;
	t0 = now_ns();
	for (long i = 0; i < body_iterations; i++) {
		sl_chunked_init(&d);
		for (size_t off = 0; off < body_len; off += piece) {
			ssize_t n = sl_chunked_feed(&d, chunked_body + off, SL_MIN(piece, body_len - off),
			                            NULL, NULL);
			sink += (size_t)n;
		}
	}
	report("chunked_feed 64K/200B, per-event", now_ns() - t0, body_iterations, body_len);

	/* PROXY protocol headers: once per connection on such a listener */
	static const char pp_v1[] = "PROXY TCP6 2001:db8:85a3::8a2e:370:7334 2001:db8::2 51234 443\r\n";
	static const char pp_v2[] = "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"
	                            "\xcb\x00\x71\x07\xc0\x00\x02\x01\xc8\x1f\x01\xbb";
	struct {
		const char *name, *text;
		size_t len;
	} pp[] = { { "proxyproto v1 (TCP6)", pp_v1, sizeof pp_v1 - 1 },
		   { "proxyproto v2 (TCP4)", pp_v2, sizeof pp_v2 - 1 } };
	for (size_t k = 0; k < 2; k++) {
		struct sl_proxyproto out;
		if (sl_proxyproto_parse(pp[k].text, pp[k].len, SL_PROXYPROTO_BYTES_DEFAULT, &out) !=
		    (ssize_t)pp[k].len) {
			fprintf(stderr, "bench_http1: %s rejected\n", pp[k].name);
			return 1;
		}
		t0 = now_ns();
		for (long i = 0; i < iterations; i++) {
			ssize_t n = sl_proxyproto_parse(pp[k].text, pp[k].len,
			                                SL_PROXYPROTO_BYTES_DEFAULT, &out);
			sink += (size_t)n + out.src.sin6_port;
		}
		report(pp[k].name, now_ns() - t0, iterations, pp[k].len);
	}
	return sink == 0;
}
