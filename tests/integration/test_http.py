"""The gateway's HTTP/1.1 front: keep-alive, pipelining, chunked and large
uploads, 100-continue, error statuses and shapes, request smuggling vectors,
garbage."""

import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (CLIENT_KEY, OPENAI_UPSTREAM_MODEL, Conn, build_request, chat_body, env,  # noqa: E402
                     expect, expect_error, expect_status, main, messages_body, test)

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}

env("small_body", {"limits": {"body_bytes_max": 4096}})


def upstream_requests_during(e, action):
    """How many requests reached the mock while action() ran (the stats
    requests themselves are calibrated out)."""
    s1 = e.mock_stats()
    s2 = e.mock_stats()
    per_stats = s2["requests"] - s1["requests"]
    action()
    s3 = e.mock_stats()
    return s3["requests"] - s2["requests"] - per_stats


# --- connection handling ------------------------------------------------------

@test(fresh=True)
def keepalive_many_requests_pooled_upstream(e):
    s0 = e.mock_stats()
    with Conn(e.addr) as c:
        for i in range(40):
            if i % 2:
                c.send(build_request("POST", "/v1/messages", messages_body(content=f"m{i}"), XKEY))
            else:
                c.send(build_request("POST", "/v1/chat/completions", chat_body(content=f"c{i}"), AUTH))
            r = c.read_response()
            expect(r.status == 200, f"request {i} on the connection: {r!r}")
            expect(r.header("connection", "").lower() != "close", f"request {i}: gateway closed the connection")
    s1 = e.mock_stats()
    upstream_conns = s1["connections_accepted"] - s0["connections_accepted"] - 1  # minus this stats call
    expect(s1["requests"] - s0["requests"] >= 40, "all 40 requests reached the mock")
    expect(upstream_conns <= 4, f"{upstream_conns} upstream connections for 40 sequential requests: not pooled")


@test
def pipelined_requests_answered_in_order(e):
    with Conn(e.addr) as c:
        c.send(build_request("GET", "/healthz") +
               build_request("POST", "/v1/chat/completions", chat_body(), AUTH) +
               build_request("GET", "/v1/models/gpt-4o-mini", headers=AUTH))
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
    expect_status(r1, 200)
    expect(r1.body.strip() == b"ok", f"first response is /healthz's: {r1!r}")
    expect_status(r2, 200)
    expect(r2.json().get("object") == "chat.completion", f"second is the chat completion: {r2!r}")
    expect_status(r3, 200)
    expect(r3.json().get("id") == "gpt-4o-mini", f"third is the model: {r3!r}")


@test
def connection_close_and_http10(e):
    with Conn(e.addr) as c:
        c.send(build_request("GET", "/healthz", headers={"Connection": "close"}))
        expect_status(c.read_response(), 200)
        expect(c.wait_closed(2), "Connection: close not honoured")
    with Conn(e.addr) as c:
        c.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        r = c.read_response()
        expect_status(r, 200)
        expect(r.body.strip() == b"ok", f"{r!r}")
        expect(c.wait_closed(2), "an HTTP/1.0 request without keep-alive must be answered then closed")


@test
def chunked_request_body(e):
    body = json.dumps(chat_body(content="chunked upload works")).encode()
    pieces = [body[:7], body[7:30], body[30:31], body[31:]]
    r = e.request("POST", "/v1/chat/completions", None, AUTH, chunks=pieces)
    expect_status(r, 200)
    lr = e.last_request()
    sent = json.loads(lr["body"])
    expect(sent["messages"][0]["content"] == "chunked upload works", f"upstream body {lr['body'][:200]!r}")
    expect(sent["model"] == OPENAI_UPSTREAM_MODEL, "model rewritten")


@test(timeout=60)
def ten_mib_body(e):
    big = "a" * (10 << 20)
    r = e.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": big}, AUTH,
                  timeout_s=30)
    expect_status(r, 200)
    lr = e.last_request()
    expect(lr.get("path") == "/v1/embeddings", f"path {lr.get('path')}")
    expect(lr["body_len"] >= (10 << 20), f"upstream body_len {lr['body_len']}, expected >= 10 MiB")


@test
def expect_100_continue(e):
    body = json.dumps(chat_body()).encode()
    with Conn(e.addr) as c:
        c.send(build_request("POST", "/v1/chat/completions", headers=dict(AUTH, Expect="100-continue"))
               .replace(b"\r\n\r\n", f"\r\nContent-Length: {len(body)}\r\n\r\n".encode(), 1))
        r = c.read_response(timeout_s=3)
        expect_status(r, 100)
        c.send(body)
        r = c.read_response()
        expect_status(r, 200)
        expect(r.json().get("object") == "chat.completion", f"{r!r}")


# --- errors ---------------------------------------------------------------------

@test
def unknown_model_404(e):
    expect_error(e.request("POST", "/v1/chat/completions", chat_body("no-such-model"), AUTH), 404, "not_found")
    expect_error(e.request("POST", "/v1/messages", messages_body("no-such-model"), XKEY), 404, "not_found",
                 shape="anthropic")


@test
def unknown_route_404(e):
    expect_error(e.request("POST", "/v1/no/such/route", chat_body(), AUTH), 404, "not_found")
    expect_error(e.request("GET", "/nope", headers=AUTH), 404, "not_found")


@test
def wrong_method_405(e):
    expect_error(e.request("GET", "/v1/chat/completions", headers=AUTH), 405, "method_not_allowed")
    expect_error(e.request("GET", "/v1/messages", headers=XKEY), 405, "method_not_allowed", shape="anthropic")


@test
def bad_json_400(e):
    n = upstream_requests_during(e, lambda: [
        expect_error(e.request("POST", "/v1/chat/completions", '{"model": "gpt-4o-mini", "messages": [',
                               AUTH), 400, "invalid_request_error"),
        expect_error(e.request("POST", "/v1/chat/completions", {"messages": []}, AUTH), 400,
                     "invalid_request_error"),
        expect_error(e.request("POST", "/v1/chat/completions", {"model": 42}, AUTH), 400,
                     "invalid_request_error"),
        expect_error(e.request("POST", "/v1/messages", "not json at all", XKEY), 400,
                     "invalid_request_error", shape="anthropic"),
    ])
    expect(n == 0, f"{n} invalid requests reached the upstream")


@test(env="small_body")
def body_over_limit_413(e):
    with Conn(e.addr) as c:
        c.send(build_request("POST", "/v1/chat/completions", "x", AUTH)
               .replace(b"Content-Length: 1", b"Content-Length: 100000"))
        expect_error(c.read_response(), 413, "payload_too_large")
    big = json.dumps(chat_body(content="y" * 8000))
    with Conn(e.addr) as c:
        c.try_send(build_request("POST", "/v1/chat/completions", headers=AUTH, chunks=[big[:3000], big[3000:]]))
        expect_error(c.read_response(), 413, "payload_too_large")
    # under the limit still works
    expect_status(e.request("POST", "/v1/chat/completions", chat_body(), AUTH), 200)


@test(env="small_body")
def expect_100_continue_over_limit_413(e):
    with Conn(e.addr) as c:
        c.send(build_request("POST", "/v1/chat/completions", "x", dict(AUTH, Expect="100-continue"))
               .replace(b"Content-Length: 1\r\n", b"Content-Length: 100000\r\n")[:-1])
        expect_error(c.read_response(timeout_s=3), 413, "payload_too_large")


@test
def target_too_long_414(e):
    r = e.request("GET", "/v1/models?q=" + "a" * 9000, headers=AUTH)
    expect_error(r, 414, "invalid_request_error")


@test
def header_too_large_431(e):
    r = e.request("GET", "/v1/models", headers=dict(AUTH, **{"X-Big": "b" * 20000}))
    expect_error(r, 431, "invalid_request_error")


@test
def too_many_headers_431(e):
    r = e.request("GET", "/v1/models", headers=[("X-H%d" % i, "v") for i in range(150)])
    expect_error(r, 431, "invalid_request_error")


# --- request smuggling: rejected, answered in the OpenAI shape, connection
# closed, and nothing reaches the upstream ---------------------------------------

CANARY = json.dumps(chat_body(content="smuggle-canary")).encode()
CHUNKED_CANARY = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CANARY), CANARY)
LINE = b"POST /v1/chat/completions HTTP/1.1\r\n"
HOST = b"Host: sluice.test\r\n"
AUTH_LINE = b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n"
CL = b"Content-Length: %d\r\n" % len(CANARY)

SMUGGLING = [
    ("te_and_cl", LINE + HOST + AUTH_LINE + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
     % len(CHUNKED_CANARY) + CHUNKED_CANARY, (400,)),
    ("cl_and_te", LINE + HOST + AUTH_LINE + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
     + CHUNKED_CANARY, (400,)),
    ("cl_cl_differ", LINE + HOST + AUTH_LINE + CL + b"Content-Length: %d\r\n\r\n" % (len(CANARY) + 1)
     + CANARY + b"x", (400,)),
    ("cl_list_differ", LINE + HOST + AUTH_LINE + b"Content-Length: %d, %d\r\n\r\n"
     % (len(CANARY), len(CANARY) + 1) + CANARY, (400,)),
    ("cl_plus_sign", LINE + HOST + AUTH_LINE + b"Content-Length: +%d\r\n\r\n" % len(CANARY) + CANARY, (400,)),
    ("cl_hex", LINE + HOST + AUTH_LINE + b"Content-Length: 0x%x\r\n\r\n" % len(CANARY) + CANARY, (400,)),
    ("cl_overflow", LINE + HOST + AUTH_LINE + b"Content-Length: 18446744073709551617\r\n\r\n" + CANARY,
     (400, 413)),
    ("te_gzip", LINE + HOST + AUTH_LINE + b"Transfer-Encoding: gzip\r\n\r\n" + CHUNKED_CANARY, (400, 501)),
    ("te_chunked_not_last", LINE + HOST + AUTH_LINE + b"Transfer-Encoding: chunked, gzip\r\n\r\n"
     + CHUNKED_CANARY, (400, 501)),
    ("te_chunked_twice", LINE + HOST + AUTH_LINE + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
     + CHUNKED_CANARY, (400, 501)),
    ("te_xchunked", LINE + HOST + AUTH_LINE + b"Transfer-Encoding: xchunked\r\n\r\n" + CHUNKED_CANARY, (400, 501)),
    ("te_in_http10", LINE.replace(b"1.1", b"1.0") + HOST + AUTH_LINE + b"Transfer-Encoding: chunked\r\n\r\n"
     + CHUNKED_CANARY, (400,)),
    ("obs_fold", LINE + HOST + AUTH_LINE + b"X-Folded: a\r\n b\r\n" + CL + b"\r\n" + CANARY, (400,)),
    ("obs_fold_cl", LINE + HOST + AUTH_LINE + b"X-A: a\r\n\tContent-Length: 5\r\n" + CL + b"\r\n" + CANARY, (400,)),
    ("bare_lf", LINE + HOST + AUTH_LINE + b"X-A: a\n" + CL + b"\r\n" + CANARY, (400,)),
    ("bare_lf_request_line", LINE[:-2] + b"\n" + HOST + AUTH_LINE + CL + b"\r\n" + CANARY, (400,)),
    ("bare_cr", LINE + HOST + AUTH_LINE + b"X-A: a\rb\r\n" + CL + b"\r\n" + CANARY, (400,)),
    ("nul_in_value", LINE + HOST + AUTH_LINE + b"X-A: a\x00b\r\n" + CL + b"\r\n" + CANARY, (400,)),
    ("space_before_colon", LINE + HOST + AUTH_LINE + b"Content-Length : %d\r\n\r\n" % len(CANARY) + CANARY, (400,)),
    ("space_in_header_name", LINE + HOST + AUTH_LINE + b"X A: a\r\n" + CL + b"\r\n" + CANARY, (400,)),
    ("no_host", LINE + AUTH_LINE + CL + b"\r\n" + CANARY, (400,)),
    ("two_hosts", LINE + HOST + b"Host: other.test\r\n" + AUTH_LINE + CL + b"\r\n" + CANARY, (400,)),
    ("bad_chunk_size", LINE + HOST + AUTH_LINE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + CANARY
     + b"\r\n0\r\n\r\n", (400,)),
    ("http_2_0", LINE.replace(b"HTTP/1.1", b"HTTP/2.0") + HOST + AUTH_LINE + CL + b"\r\n" + CANARY, (505, 400)),
    ("http_1_2", LINE.replace(b"HTTP/1.1", b"HTTP/1.2") + HOST + AUTH_LINE + CL + b"\r\n" + CANARY, (505, 400)),
]


def smuggling_test(name, raw, statuses):
    def run(e):
        got = {}

        def attack():
            with Conn(e.addr, 5) as c:
                c.try_send(raw)
                got["r"] = c.read_response(timeout_s=5)
                got["closed"] = c.wait_closed(3)
        n = upstream_requests_during(e, attack)
        r = got["r"]
        expect_status(r, statuses)
        expect_error(r, r.status, ("invalid_request_error", "not_implemented", "http_version_not_supported",
                                   "payload_too_large") if r.status != 400 else "invalid_request_error")
        expect(got["closed"], "connection not closed after a rejected request")
        expect(n == 0, f"{n} request(s) reached the upstream")
        lr = e.last_request()
        expect(b"smuggle-canary" not in lr.get("body", "").encode(), "the canary body reached the upstream")
    run.__name__ = "smuggling_" + name
    return run


for _name, _raw, _statuses in SMUGGLING:
    test(smuggling_test(_name, _raw, _statuses))


@test
def garbage_does_not_hurt(e):
    rnd = random.Random(1234)
    conns = []
    for i in range(20):
        c = Conn(e.addr, 5)
        blob = bytes(rnd.getrandbits(8) for _ in range(rnd.choice((1, 100, 4096, 20000))))
        if i % 4 == 1:
            blob = b"POST /v1/chat/completions HTTP/1.1\r\n" + blob
        elif i % 4 == 2:
            blob = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n" + blob
        c.try_send(blob)
        conns.append(c)
    for i, c in enumerate(conns):
        if i % 2:
            c.wait_closed(0.2)
        c.close()
    c = Conn(e.addr)
    c.try_send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200))  # a TLS ClientHello
    c.wait_closed(2)
    c.close()
    expect_status(e.request("GET", "/healthz"), 200)
    expect_status(e.request("POST", "/v1/chat/completions", chat_body(), AUTH), 200)


if __name__ == "__main__":
    main()
