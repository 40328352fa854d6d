"""Timeouts and failures on both sides: slow clients (408), slow, broken,
unreachable or vanishing upstreams (504, 502, cut streams), clients that go
away mid-stream."""

import json
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (CLIENT_KEY, Conn, build_request, chat_body, closed_port, env, eventually,  # noqa: E402
                     expect, expect_error, expect_status, main, messages_body, sse_data, test)

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}

env("client_timeouts", {"timeouts": {"header_ms": 500, "body_ms": 500, "keepalive_ms": 700}})
env("slow_reader", {"timeouts": {"send_ms": 500}})
env("slow_upstream", {"providers": {"mock-openai": {"timeouts": {"first_byte_ms": 500, "idle_ms": 500}}}})
env("unreachable", lambda mock_port: {"providers": {
    "mock-openai": {"base_url": f"http://127.0.0.1:{closed_port()}/v1"},
    "mock-anthropic": {"base_url": f"http://127.0.0.1:{closed_port()}"}}})


def wait_readable(c, timeout_s):
    r, _, _ = select.select([c.sock], [], [], timeout_s)
    return bool(r) or bool(c.buf)


# --- slow clients -------------------------------------------------------------

@test(env="client_timeouts")
def slow_headers_408(e):
    with Conn(e.addr, 5) as c:
        t0 = time.monotonic()
        c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice.test\r\nX-Slow: ")
        # keep trickling: the limit is on the whole head, not on each gap
        while time.monotonic() - t0 < 4 and not wait_readable(c, 0.1):
            if not c.try_send(b"a"):
                break
        r = c.read_response(timeout_s=2)
        took = r.t_head - t0
        expect_error(r, 408, "request_timeout")
        expect(0.4 <= took <= 2.0, f"408 after {took:.2f}s, header timeout is 0.5s")
        expect(c.wait_closed(2), "connection not closed after 408")


@test(env="client_timeouts")
def idle_partial_head_408(e):
    with Conn(e.addr, 5) as c:
        t0 = time.monotonic()
        c.send(b"GET /v1/models HTTP/1.1\r\nHost: sl")
        r = c.read_response(timeout_s=4)
        expect_error(r, 408, "request_timeout")
        expect(0.4 <= r.t_head - t0 <= 2.0, f"408 after {r.t_head - t0:.2f}s")
        expect(c.wait_closed(2), "connection not closed after 408")


@test(env="client_timeouts")
def slow_body_408(e):
    with Conn(e.addr, 5) as c:
        c.send(build_request("POST", "/v1/chat/completions", "x", AUTH)
               .replace(b"Content-Length: 1\r\n", b"Content-Length: 200\r\n")[:-1] + b'{"model":')
        t0 = time.monotonic()
        r = c.read_response(timeout_s=4)
        expect_error(r, 408, "request_timeout")
        expect(0.4 <= r.t_head - t0 <= 2.5, f"408 after {r.t_head - t0:.2f}s, body timeout is 0.5s")
        expect(c.wait_closed(2), "connection not closed after 408")


@test(env="client_timeouts")
def steady_body_and_requests_within_timeouts(e):
    body = json.dumps(chat_body(content="steady")).encode()
    with Conn(e.addr, 10) as c:
        c.send(build_request("POST", "/v1/chat/completions", "x", AUTH)
               .replace(b"Content-Length: 1\r\n", b"Content-Length: %d\r\n" % len(body))[:-1])
        # 10 pieces 150 ms apart: 1.5 s in all, but never a 0.5 s gap
        step = (len(body) + 9) // 10
        for i in range(0, len(body), step):
            time.sleep(0.15)
            c.send(body[i:i + step])
        expect_status(c.read_response(), 200)
        # keep-alive: the header timer starts with the next request's first byte
        time.sleep(0.6)
        c.send(build_request("GET", "/healthz"))
        expect_status(c.read_response(), 200)


@test(env="client_timeouts")
def idle_keepalive_connection_closed(e):
    with Conn(e.addr, 5) as c:
        c.send(build_request("GET", "/healthz"))
        expect_status(c.read_response(), 200)
        t0 = time.monotonic()
        expect(c.wait_closed(4), "idle keep-alive connection still open 4s later (keepalive_ms is 700)")
        took = time.monotonic() - t0
        expect(0.5 <= took <= 2.5, f"idle connection closed after {took:.2f}s, keepalive_ms is 700")
        expect(c.buf == b"", f"unexpected bytes on an idle connection: {c.buf[:100]!r}")


# --- upstream failures ------------------------------------------------------

@test(env="slow_upstream", fresh=True)
def upstream_first_byte_timeout_504(e):
    t0 = time.monotonic()
    r = e.request("POST", "/v1/chat/completions", chat_body(), dict(AUTH, **{"x-mock-first-byte-delay-ms": 3000}))
    took = time.monotonic() - t0
    expect_error(r, 504, "upstream_timeout")
    expect(took < 2.9, f"504 after {took:.2f}s: the first-byte timeout (0.5s) was not applied")
    expect_status(e.request("POST", "/v1/chat/completions", chat_body(), dict(AUTH, **{"x-mock-first-byte-delay-ms": 100})), 200)


@test(env="slow_upstream", fresh=True)
def upstream_idle_timeout_cuts_stream(e):
    t0 = time.monotonic()
    r = e.stream("/v1/chat/completions", chat_body(stream=True),
                 dict(AUTH, **{"x-mock-tokens": 3, "x-mock-token-delay-ms": 2500}), timeout_s=10)
    took = time.monotonic() - t0
    expect_status(r, 200)
    expect("[DONE]" not in sse_data(r.events), "the stream completed: idle_ms (0.5s) not applied")
    expect(took < 2.4, f"the stream ended after {took:.2f}s; the upstream was idle for 2.5s, idle_ms is 0.5s")


@test(env="slow_reader", fresh=True, timeout=40)
def slow_reader_dropped_after_send_timeout(e):
    size = 64 << 20
    # control: a client that reads promptly gets the whole (big) response
    r = e.request("POST", "/v1/chat/completions", chat_body(), dict(AUTH, **{"x-mock-response-bytes": 16 << 20}),
                  timeout_s=20)
    expect_status(r, 200)
    expect(r.complete, f"a prompt reader got {len(r.body)} of {r.header('content-length')} bytes")
    with Conn(e.addr, 10) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.send(build_request("POST", "/v1/chat/completions", chat_body(),
                             dict(AUTH, **{"x-mock-response-bytes": size})))
        time.sleep(3)  # read nothing: the gateway cannot send for 3s (send_ms is 0.5s)
        r = c.read_head()
        expect_status(r, 200)
        length = int(r.header("content-length") or 0)
        expect(length >= size, f"Content-Length {length}: the response is not big enough for this test")
        got = len(c.buf)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            c.sock.settimeout(5)
            try:
                data = c.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            got += len(data)
        expect(got < length, f"read the whole {got}-byte response: the stalled client was not dropped")
    expect_status(e.request("GET", "/healthz"), 200)


@test(fresh=True)
def upstream_malformed_502(e):
    r = e.request("POST", "/v1/chat/completions", chat_body(), dict(AUTH, **{"x-mock-malformed": 1}))
    expect_error(r, 502, "upstream_error")
    r = e.request("POST", "/v1/messages", messages_body(), dict(XKEY, **{"x-mock-malformed": 1}))
    expect_error(r, 502, "upstream_error", shape="anthropic")


@test(env="unreachable", fresh=True)
def upstream_unreachable_502(e):
    r = e.request("POST", "/v1/chat/completions", chat_body(), AUTH, timeout_s=20)
    expect_error(r, 502, "connection_error")
    r = e.request("POST", "/v1/messages", messages_body(), XKEY, timeout_s=20)
    expect_error(r, 502, "connection_error", shape="anthropic")
    expect_status(e.request("GET", "/healthz"), 200)


@test(fresh=True)
def upstream_disconnect_mid_stream(e):
    t0 = time.monotonic()
    with Conn(e.addr, 10) as c:
        c.send(build_request("POST", "/v1/chat/completions", chat_body(stream=True),
                             dict(AUTH, **{"x-mock-disconnect-after": 3})))
        r = c.read_stream(timeout_s=8)
        expect_status(r, 200)
        datas = [d for d in sse_data(r.events) if d != "[DONE]"]
        content = [d for d in datas for ch in d.get("choices", []) if (ch.get("delta") or {}).get("content")]
        expect(len(content) == 3, f"{len(content)} content events relayed before the cut, expected 3")
        expect("[DONE]" not in sse_data(r.events), "a cut stream must not look complete ([DONE])")
        if r.complete:
            # the gateway may end the chunked body instead of closing; then
            # the connection must still be usable or closed, not hung
            pass
        else:
            expect(c.eof, "stream cut without a close")
    expect(time.monotonic() - t0 < 5, "the client waited too long for the end of a cut stream")
    expect_status(e.request("POST", "/v1/chat/completions", chat_body(), AUTH), 200)


@test(fresh=True)
def upstream_disconnect_mid_body(e):
    with Conn(e.addr, 10) as c:
        c.send(build_request("POST", "/v1/chat/completions", chat_body(),
                             dict(AUTH, **{"x-mock-disconnect-after": 1, "x-mock-response-bytes": 20000})))
        r = c.read_response(timeout_s=8)
        if r.status == 200:
            expect(not r.complete and c.wait_closed(3), "a truncated body must end with a close")
        else:
            expect_error(r, 502, "upstream_error")
    expect_status(e.request("POST", "/v1/chat/completions", chat_body(), AUTH), 200)


@test(fresh=True)
def client_abort_cancels_upstream(e):
    base = e.mock_stats()["connections_open"]
    c = Conn(e.addr, 10)
    c.send(build_request("POST", "/v1/chat/completions", chat_body(stream=True),
                         dict(AUTH, **{"x-mock-tokens": 200, "x-mock-token-delay-ms": 50})))
    r = c.read_head()
    expect_status(r, 200)
    c._until(b"\n\n", time.monotonic() + 5)  # the first event
    eventually(lambda: e.mock_stats()["connections_open"] >= base + 1, 3, what="upstream connection open")
    c.close()
    eventually(lambda: e.mock_stats()["connections_open"] <= base, 3,
               what="upstream connection closed after the client went away")
    expect_status(e.request("GET", "/healthz"), 200)


@test(fresh=True)
def client_abort_before_first_byte(e):
    base = e.mock_stats()["connections_open"]
    c = Conn(e.addr, 10)
    c.send(build_request("POST", "/v1/chat/completions", chat_body(stream=True),
                         dict(AUTH, **{"x-mock-first-byte-delay-ms": 4000})))
    eventually(lambda: e.mock_stats()["connections_open"] >= base + 1, 3, what="upstream connection open")
    c.close()
    eventually(lambda: e.mock_stats()["connections_open"] <= base, 2.5,
               what="upstream request cancelled before its first byte")
    expect_status(e.request("POST", "/v1/chat/completions", chat_body(), AUTH), 200)


if __name__ == "__main__":
    main()
