/*
 * fuzz_http1.c - libFuzzer driver for the HTTP/1 parser and chunked decoder.
 *
 * The first input byte selects what the rest is fed to and with which
 * limits/method; the rest is the message:
 *   byte % 3 == 0: a request head, 1: a response head, 2: a chunked body.
 *   bit 2: small limits (to reach 414/431); bits 3-5: the response's request
 *   method.
 * Besides "never crash", it checks the invariants a caller relies on:
 *   - a returned length is <= len, and re-parsing exactly that prefix gives
 *     the same length and the same framing;
 *   - a few shorter prefixes of an accepted head are SL_INCOMPLETE, and an
 *     error in a prefix is an error for the whole input;
 *   - a chunked body fed in two arbitrary pieces, or byte by byte, gives the
 *     same result as in one go, and decoding in place equals out of place.
 */
#include "sluice/http1.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HEADERS_CAP 64

static struct sl_http_header headers[HEADERS_CAP];

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz_http1: invariant failed: %s\n", what);
		abort();
	}
}

/* An exact-size copy so ASan sees any read past the given length. */
static char *copy_of(const uint8_t *data, size_t len)
{
	char *p = malloc(len ? len : 1);
	check(p != NULL, "malloc");
	if (len)
		memcpy(p, data, len);
	return p;
}

static ssize_t parse_request_copy(const uint8_t *data, size_t len, struct sl_http_request *req,
                                  const struct sl_http_limits *limits)
{
	char *buf = copy_of(data, len);
	memset(req, 0, sizeof(*req));
	req->headers = headers;
	ssize_t r = sl_http_parse_request(buf, len, req, limits);
	if (r >= 0) {
		/* the fields must point inside the head */
		check(req->target >= buf && req->target + req->target_len <= buf + r, "target bounds");
		check(req->target_len > 0, "non-empty target");
		check(req->num_headers <= limits->num_headers_max, "num_headers");
		check(req->target_len <= limits->target_len_max, "target_len_max");
		check((size_t)r <= limits->head_len_max, "head_len_max");
		for (uint32_t i = 0; i < req->num_headers; i++) {
			const struct sl_http_header *h = &headers[i];
			check(h->name >= buf && h->name + h->name_len <= buf + r, "name bounds");
			check(h->value >= buf && h->value + h->value_len <= buf + r, "value bounds");
			check(h->name_len > 0, "empty name");
			if (h->value_len > 0) {
				char first = h->value[0], last = h->value[h->value_len - 1];
				check(first != ' ' && first != '\t' && last != ' ' && last != '\t',
				      "value trimmed");
			}
			for (uint32_t j = 0; j < h->value_len; j++) {
				unsigned char c = (unsigned char)h->value[j];
				check(c == '\t' || (c >= 0x20 && c != 0x7f), "value bytes");
			}
		}
		check(req->framing != SL_BODY_UNTIL_CLOSE, "request framing");
	} else if (r == SL_ERROR) {
		check(req->error_message != NULL, "error message");
		check(req->error_status == 400 || req->error_status == 414 ||
		      req->error_status == 431 || req->error_status == 501 ||
		      req->error_status == 505, "error status");
	} else {
		check(r == SL_INCOMPLETE, "request result");
	}
	free(buf);
	return r;
}

static void fuzz_request(const uint8_t *data, size_t len, const struct sl_http_limits *limits)
{
	struct sl_http_request req, again;
	ssize_t r = parse_request_copy(data, len, &req, limits);
	check(r == SL_ERROR || r == SL_INCOMPLETE || (r > 0 && (size_t)r <= len), "length <= len");
	if (r > 0) {
		check(parse_request_copy(data, (size_t)r, &again, limits) == r, "re-parse length");
		check(again.framing == req.framing && again.content_length == req.content_length &&
		      again.keep_alive == req.keep_alive && again.method == req.method &&
		      again.num_headers == req.num_headers, "re-parse fields");
		size_t cuts[3] = { (size_t)r - 1, (size_t)r / 2, len % (size_t)r };
		for (int i = 0; i < 3; i++)
			check(parse_request_copy(data, cuts[i], &again, limits) == SL_INCOMPLETE,
			      "prefix of a head is incomplete");
	} else if (len > 0) {
		size_t cut = (size_t)data[len - 1] * 7 % len;
		if (parse_request_copy(data, cut, &again, limits) == SL_ERROR)
			check(r == SL_ERROR, "error in a prefix is an error");
	}
}

static ssize_t parse_response_copy(const uint8_t *data, size_t len, struct sl_http_response *resp,
                                   const struct sl_http_limits *limits,
                                   enum sl_http_method method)
{
	char *buf = copy_of(data, len);
	memset(resp, 0, sizeof(*resp));
	resp->headers = headers;
	ssize_t r = sl_http_parse_response(buf, len, resp, limits, method);
	if (r >= 0) {
		check(resp->status >= 100 && resp->status <= 599, "status range");
		check(resp->num_headers <= limits->num_headers_max, "num_headers");
		check(resp->reason >= buf && resp->reason + resp->reason_len <= buf + r, "reason");
		if (resp->framing == SL_BODY_UNTIL_CLOSE)
			check(!resp->keep_alive, "until-close is not keep-alive");
		if (resp->status < 200 || resp->status == 204 || resp->status == 304 ||
		    method == SL_METHOD_HEAD)
			check(resp->framing == SL_BODY_NONE, "no-body statuses");
	} else if (r == SL_ERROR) {
		check(resp->error_message != NULL, "error message");
	} else {
		check(r == SL_INCOMPLETE, "response result");
	}
	free(buf);
	return r;
}

static void fuzz_response(const uint8_t *data, size_t len, const struct sl_http_limits *limits,
                          enum sl_http_method method)
{
	struct sl_http_response resp, again;
	ssize_t r = parse_response_copy(data, len, &resp, limits, method);
	check(r == SL_ERROR || r == SL_INCOMPLETE || (r > 0 && (size_t)r <= len), "length <= len");
	if (r > 0) {
		check(parse_response_copy(data, (size_t)r, &again, limits, method) == r,
		      "re-parse length");
		check(again.framing == resp.framing && again.status == resp.status &&
		      again.content_length == resp.content_length &&
		      again.keep_alive == resp.keep_alive, "re-parse fields");
		check(parse_response_copy(data, (size_t)r - 1, &again, limits, method) ==
		      SL_INCOMPLETE, "prefix of a head is incomplete");
	} else if (len > 0) {
		size_t cut = (size_t)data[len - 1] * 7 % len;
		if (parse_response_copy(data, cut, &again, limits, method) == SL_ERROR)
			check(r == SL_ERROR, "error in a prefix is an error");
	}
}

struct chunked_result {
	ssize_t consumed; /* total, or SL_ERROR */
	bool complete;
	size_t out_len;
};

/* chunked_run feeds data as pieces cut at cuts[0..num_cuts) into out (or in
 * place into a copy, then copied to out). */
static struct chunked_result chunked_run(const uint8_t *data, size_t len, const size_t *cuts,
                                         size_t num_cuts, bool in_place, char *out)
{
	struct chunked_result res = { 0, false, 0 };
	struct sl_chunked d;
	char *buf = copy_of(data, len);
	size_t start = 0;
	sl_chunked_init(&d);
	for (size_t c = 0; c <= num_cuts && !d.complete; c++) {
		size_t stop = c < num_cuts ? cuts[c] : len;
		size_t n_out = 0;
		ssize_t r;
		if (in_place) {
			r = sl_chunked_feed(&d, buf + start, stop - start, buf + res.out_len, &n_out);
		} else {
			char *piece = copy_of(data + start, stop - start);
			r = sl_chunked_feed(&d, piece, stop - start, out + res.out_len, &n_out);
			free(piece);
		}
		if (r == SL_ERROR) {
			res.consumed = SL_ERROR;
			break;
		}
		check((size_t)r <= stop - start, "chunked consumed <= len");
		check(n_out <= (size_t)r, "decoded <= consumed");
		check(d.complete || (size_t)r == stop - start, "short only when complete");
		res.consumed += r;
		res.out_len += n_out;
		start = stop;
	}
	res.complete = d.complete;
	if (in_place && res.consumed != SL_ERROR)
		memcpy(out, buf, res.out_len);
	free(buf);
	return res;
}

static void fuzz_chunked(const uint8_t *data, size_t len)
{
	char *ref = malloc(len + 1), *out = malloc(len + 1);
	check(ref && out, "malloc");
	struct chunked_result whole = chunked_run(data, len, NULL, 0, false, ref);

	/* framing-only mode agrees */
	{
		struct sl_chunked d;
		size_t count = 0;
		sl_chunked_init(&d);
		ssize_t r = sl_chunked_feed(&d, (const char *)data, len, NULL, &count);
		check(r == whole.consumed, "framing-only consumed");
		check(r == SL_ERROR || (count == whole.out_len && d.complete == whole.complete),
		      "framing-only count");
	}

	size_t cut = len ? (size_t)(data[0] | data[len - 1] << 8) % (len + 1) : 0;
	for (int in_place = 0; in_place < 2; in_place++) {
		struct chunked_result r = chunked_run(data, len, &cut, 1, in_place, out);
		check(r.consumed == whole.consumed, "two pieces: consumed");
		if (r.consumed != SL_ERROR)
			check(r.complete == whole.complete && r.out_len == whole.out_len &&
			      memcmp(out, ref, r.out_len) == 0, "two pieces: data");
		r = chunked_run(data, len, NULL, 0, in_place, out);
		check(r.consumed == whole.consumed, "in place: consumed");
		if (r.consumed != SL_ERROR)
			check(r.out_len == whole.out_len && memcmp(out, ref, r.out_len) == 0,
			      "in place: data");
	}
	if (len <= 4096) {
		size_t *cuts = malloc(sizeof(*cuts) * (len + 1));
		check(cuts != NULL, "malloc");
		for (size_t i = 0; i + 1 < len; i++)
			cuts[i] = i + 1;
		struct chunked_result r = chunked_run(data, len, cuts, len ? len - 1 : 0, false, out);
		check(r.consumed == whole.consumed, "bytewise: consumed");
		if (r.consumed != SL_ERROR)
			check(r.complete == whole.complete && r.out_len == whole.out_len &&
			      memcmp(out, ref, r.out_len) == 0, "bytewise: data");
		free(cuts);
	}
	free(ref);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct sl_http_limits normal = { 16384, 8192, HEADERS_CAP };
	static const struct sl_http_limits small = { 96, 24, 4 };
	static const enum sl_http_method methods[8] = {
		SL_METHOD_GET, SL_METHOD_POST, SL_METHOD_HEAD, SL_METHOD_CONNECT,
		SL_METHOD_OTHER, SL_METHOD_PUT, SL_METHOD_DELETE, SL_METHOD_OPTIONS,
	};
	if (size < 1)
		return 0;
	uint8_t selector = data[0];
	const struct sl_http_limits *limits = (selector & 4) ? &small : &normal;
	data++;
	size--;
	switch (selector % 3) {
	case 0:
		fuzz_request(data, size, limits);
		break;
	case 1:
		fuzz_response(data, size, limits, methods[(selector >> 3) & 7]);
		break;
	default:
		fuzz_chunked(data, size);
		break;
	}
	return 0;
}
