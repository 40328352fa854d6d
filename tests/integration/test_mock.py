"""The mock upstream alone: each endpoint's wire shape, non-stream and stream,
and every fault-injection header (docs/TEAM-CONTRACT.md, "Mock upstream")."""

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (MOCK_BIN, Conn, Server, build_request, chat_body, env, eventually,  # noqa: E402
                     expect, expect_status, main, messages_body, sse_data, sse_event_names, test)

env("mock", gateway=False)

def post(e, path, body, headers=None, timeout_s=10):
    return e.request("POST", path, body, headers, timeout_s=timeout_s, mock=True)


def stream(e, path, body, headers=None, timeout_s=20):
    return e.stream(path, body, headers, timeout_s=timeout_s, mock=True)


def expect_json_response(r):
    expect_status(r, 200)
    expect((r.header("content-type") or "").startswith("application/json"),
           f"content-type {r.header('content-type')!r}")
    expect(r.header("content-length") is not None and not r.chunked,
           "non-stream response must use Content-Length")
    return r.json()


def expect_sse_response(r):
    expect_status(r, 200)
    expect((r.header("content-type") or "").startswith("text/event-stream"),
           f"content-type {r.header('content-type')!r}")
    expect(r.chunked, "stream must use Transfer-Encoding: chunked")
    expect(r.complete, "stream did not end with the last chunk")
    # one chunk per SSE event
    for c in r.chunks:
        expect(c.endswith(b"\n\n") and c.count(b"\n\n") == 1, f"chunk is not one SSE event: {c!r}")
    return r


def openai_content_deltas(datas):
    out = []
    for d in datas:
        if d == "[DONE]":
            continue
        for ch in d.get("choices", []):
            c = (ch.get("delta") or {}).get("content")
            if c:
                out.append(c)
    return out


@test(env="mock")
def chat_completions_nonstream(e):
    j = expect_json_response(post(e, "/v1/chat/completions", chat_body("m-1")))
    expect(j.get("object") == "chat.completion", f"object {j.get('object')!r}")
    expect(j.get("model") == "m-1", f"model {j.get('model')!r} (should echo the request's)")
    expect(isinstance(j.get("id"), str) and j["id"], "no id")
    msg = j["choices"][0]["message"]
    expect(msg["role"] == "assistant" and isinstance(msg["content"], str) and msg["content"],
           f"message {msg!r}")
    expect(j["choices"][0].get("finish_reason") == "stop", "finish_reason")
    u = j.get("usage") or {}
    expect(all(isinstance(u.get(k), int) for k in ("prompt_tokens", "completion_tokens", "total_tokens")),
           f"usage {u!r}")


@test(env="mock")
def chat_completions_stream(e):
    r = expect_sse_response(stream(e, "/v1/chat/completions", chat_body("m-1", stream=True),
                                   {"x-mock-tokens": 5}))
    datas = sse_data(r.events)
    expect(datas and datas[-1] == "[DONE]", f"last event {datas[-1:]!r}, expected [DONE]")
    chunks = datas[:-1]
    expect(all(d.get("object") == "chat.completion.chunk" and d.get("model") == "m-1" for d in chunks),
           "every chunk is a chat.completion.chunk for m-1")
    expect(len(openai_content_deltas(chunks)) == 5, f"{len(openai_content_deltas(chunks))} content deltas, expected 5")
    expect(chunks[0]["choices"][0]["delta"].get("role") == "assistant", "first delta carries the role")
    finishes = [ch.get("finish_reason") for d in chunks for ch in d.get("choices", []) if ch.get("finish_reason")]
    expect(finishes == ["stop"], f"finish reasons {finishes!r}")


@test(env="mock")
def completions_nonstream_and_stream(e):
    body = {"model": "m-2", "prompt": "Say hello."}
    j = expect_json_response(post(e, "/v1/completions", body))
    expect(j.get("object") == "text_completion", f"object {j.get('object')!r}")
    expect(isinstance(j["choices"][0].get("text"), str), "choices[0].text")
    r = expect_sse_response(stream(e, "/v1/completions", dict(body, stream=True), {"x-mock-tokens": 3}))
    datas = sse_data(r.events)
    expect(datas[-1] == "[DONE]", "ends with [DONE]")
    texts = [ch.get("text") for d in datas[:-1] for ch in d.get("choices", []) if ch.get("text")]
    expect(len(texts) == 3, f"{len(texts)} text deltas, expected 3")


@test(env="mock")
def embeddings(e):
    j = expect_json_response(post(e, "/v1/embeddings", {"model": "emb", "input": "hello"}))
    expect(j.get("object") == "list", f"object {j.get('object')!r}")
    d = j["data"][0]
    expect(d.get("object") == "embedding" and isinstance(d.get("embedding"), list) and d["embedding"]
           and all(isinstance(x, (int, float)) for x in d["embedding"]), f"data[0] {str(d)[:200]}")
    expect(isinstance((j.get("usage") or {}).get("prompt_tokens"), int), "usage.prompt_tokens")


@test(env="mock")
def models_list(e):
    r = e.request("GET", "/v1/models", mock=True)
    j = expect_json_response(r)
    expect(j.get("object") == "list" and isinstance(j.get("data"), list), f"{j!r}"[:300])
    expect(all(m.get("object") == "model" and m.get("id") for m in j["data"]), "model entries")


@test(env="mock")
def messages_nonstream(e):
    j = expect_json_response(post(e, "/v1/messages", messages_body("claude-x"),
                                  {"x-api-key": "k", "anthropic-version": "2023-06-01"}))
    expect(j.get("type") == "message" and j.get("role") == "assistant", f"{str(j)[:200]}")
    expect(j.get("model") == "claude-x", f"model {j.get('model')!r}")
    expect(j["content"][0]["type"] == "text" and j["content"][0]["text"], "content[0] text")
    expect(j.get("stop_reason") == "end_turn", f"stop_reason {j.get('stop_reason')!r}")
    u = j.get("usage") or {}
    expect(isinstance(u.get("input_tokens"), int) and isinstance(u.get("output_tokens"), int), f"usage {u!r}")


@test(env="mock")
def messages_stream(e):
    r = expect_sse_response(stream(e, "/v1/messages", messages_body("claude-x", stream=True),
                                   {"x-mock-tokens": 4}))
    names = sse_event_names(r.events)
    datas = sse_data(r.events)
    expect(len(names) == len(datas) == len(r.events), "each event has one event: and one data: line")
    expect(all(d.get("type") == n for n, d in zip(names, datas)), "data.type equals the event name")
    core = [n for n in names if n != "ping"]
    expected = (["message_start", "content_block_start"] + ["content_block_delta"] * 4 +
                ["content_block_stop", "message_delta", "message_stop"])
    expect(core == expected, f"event sequence {core}")
    expect(datas[0]["message"]["model"] == "claude-x", "message_start echoes the model")
    deltas = [d for d in datas if d["type"] == "content_block_delta"]
    expect(all(d["delta"]["type"] == "text_delta" and d["delta"]["text"] for d in deltas), "text deltas")
    md = next(d for d in datas if d["type"] == "message_delta")
    expect(md["delta"].get("stop_reason") == "end_turn", "message_delta stop_reason")


@test(env="mock")
def count_tokens(e):
    j = expect_json_response(post(e, "/v1/messages/count_tokens", messages_body("claude-x")))
    expect(isinstance(j.get("input_tokens"), int) and j["input_tokens"] > 0, f"{j!r}")


@test(env="mock")
def fault_status_openai_with_retry_after(e):
    r = post(e, "/v1/chat/completions", chat_body("m"), {"x-mock-status": 429, "x-mock-retry-after": 7})
    expect_status(r, 429)
    expect(r.header("retry-after") == "7", f"Retry-After {r.header('retry-after')!r}")
    j = r.json()
    expect(isinstance(j.get("error"), dict) and j["error"].get("message"), f"OpenAI error shape: {j!r}")


@test(env="mock")
def fault_status_anthropic(e):
    r = post(e, "/v1/messages", messages_body("c"), {"x-mock-status": 529})
    expect_status(r, 529)
    expect(r.header("retry-after") is None, "no Retry-After unless asked")
    j = r.json()
    expect(j.get("type") == "error" and isinstance(j.get("error"), dict) and j["error"].get("type"),
           f"Anthropic error shape: {j!r}")


@test(env="mock")
def fault_first_byte_delay(e):
    t0 = time.monotonic()
    r = post(e, "/v1/chat/completions", chat_body("m"), {"x-mock-first-byte-delay-ms": 400})
    took = r.t_head - t0
    expect_status(r, 200)
    expect(0.38 <= took < 3, f"head after {took:.3f}s, expected ~0.4s")


@test(env="mock")
def fault_token_delay(e):
    r = stream(e, "/v1/chat/completions", chat_body("m", stream=True),
               {"x-mock-token-delay-ms": 100, "x-mock-tokens": 5})
    expect_status(r, 200)
    times = [t for t, _ in r.events]
    expect(times[-1] - times[0] >= 0.4, f"stream spanned {times[-1] - times[0]:.3f}s, expected >= 0.4s")
    gaps = [b - a for a, b in zip(times, times[1:])]
    expect(sum(g >= 0.07 for g in gaps) >= 4, f"gaps {[round(g, 3) for g in gaps]}")


@test(env="mock")
def fault_tokens_count(e):
    r = stream(e, "/v1/chat/completions", chat_body("m", stream=True), {"x-mock-tokens": 17})
    n = len(openai_content_deltas(sse_data(r.events)[:-1]))
    expect(n == 17, f"{n} content deltas, expected 17")
    j = post(e, "/v1/chat/completions", chat_body("m"), {"x-mock-tokens": 17}).json()
    expect(j["usage"]["completion_tokens"] == 17, f"usage {j['usage']!r}")


@test(env="mock")
def fault_disconnect_after_stream(e):
    r = stream(e, "/v1/chat/completions", chat_body("m", stream=True),
               {"x-mock-disconnect-after": 2, "x-mock-tokens": 8}, timeout_s=5)
    expect_status(r, 200)
    expect(not r.complete, "stream must end without the last chunk")
    n = len(openai_content_deltas([d for d in sse_data(r.events) if d != "[DONE]"]))
    expect(n == 2, f"{n} content events before the disconnect, expected 2")


@test(env="mock")
def fault_disconnect_after_nonstream(e):
    r = post(e, "/v1/chat/completions", chat_body("m"), {"x-mock-disconnect-after": 1}, timeout_s=5)
    expect_status(r, 200)
    expect(not r.complete, "body must be cut short")
    expect(0 < len(r.body) < int(r.header("content-length")), f"{len(r.body)} body bytes")


@test(env="mock")
def fault_malformed(e):
    with Conn(e.mock_addr, 5) as c:
        c.send(build_request("POST", "/v1/chat/completions", chat_body("m"), {"x-mock-malformed": 1}))
        c.wait_closed(3)
        expect(c.buf.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"), f"got {c.buf[:100]!r}")


@test(env="mock")
def fault_response_bytes(e):
    r = post(e, "/v1/chat/completions", chat_body("m"), {"x-mock-response-bytes": 100000})
    expect_status(r, 200)
    expect(95000 <= len(r.body) <= 110000, f"body {len(r.body)} bytes, expected ~100000")
    r.json()


@test(env="mock")
def keepalive_and_stats(e):
    e.mock_reset()
    s0 = e.mock_stats()
    with Conn(e.mock_addr) as c:
        for i in range(5):
            c.send(build_request("POST", "/v1/chat/completions", chat_body("m", content="x" * i), {"x-test-seq": i}))
            expect_status(c.read_response(), 200)
    s = e.mock_stats()
    expect(s["connections_accepted"] - s0["connections_accepted"] == 2,
           f"accepted {s0['connections_accepted']} -> {s['connections_accepted']}: 5 requests on one connection + stats")
    expect(s["requests"] - s0["requests"] >= 6, f"requests {s0['requests']} -> {s['requests']}")
    lr = s["last_request"]
    expect(lr["method"] == "POST" and lr["path"] == "/v1/chat/completions", f"last_request {lr!r}"[:300])
    expect(["x-test-seq", "4"] in [[k.lower(), v] for k, v in lr["headers"]], "last_request headers")
    body = chat_body("m", content="xxxx")
    expect(lr["body_len"] == len(json.dumps(body)), f"body_len {lr['body_len']}")
    expect(json.loads(lr["body"]) == body, "last_request body")
    e.mock_reset()
    s = e.mock_stats()
    expect(s["requests"] <= 1 and s["connections_accepted"] <= 1, f"after reset: {s!r}"[:300])


@test(env="mock", timeout=60)
def ten_mib_request_body(e):
    r = post(e, "/v1/embeddings", {"model": "emb", "input": "a" * (10 << 20)}, timeout_s=30)
    expect_status(r, 200)
    lr = e.last_request()
    expect(lr["body_len"] >= 10 << 20, f"body_len {lr['body_len']}")
    expect(len(lr["body"]) == 65536, f"last_request.body holds the first 65536 bytes, not {len(lr['body'])}")
    expect(lr["body"].startswith('{"model": "emb", "input": "aaaa'), "last_request.body is the body's start")


@test(env="mock")
def pipelined_and_chunked_request(e):
    with Conn(e.mock_addr) as c:
        c.send(build_request("POST", "/v1/embeddings", chunks=['{"model":"e",', '"input":"hi"}']) +
               build_request("GET", "/v1/models"))
        r1, r2 = c.read_response(), c.read_response()
        expect_status(r1, 200)
        expect_status(r2, 200)
        expect(r1.json()["object"] == "list" and r1.json()["data"][0]["object"] == "embedding", "embedding first")


@test(env="mock")
def stats_record_60k_body(e):
    # a coding agent's request (~60 KB) is recorded whole
    body = chat_body("m", content="y" * 60000)
    expect_status(post(e, "/v1/chat/completions", body), 200)
    lr = e.last_request()
    expect(lr["body_len"] == len(json.dumps(body)) and json.loads(lr["body"]) == body,
           f"body_len {lr['body_len']}, recorded {len(lr['body'])} bytes")


# --- x-mock-fault: conditional faults (key, attempt of a request id, rate) ---

def key_headers(path, key):
    """The API key as each format sends it: OpenAI Bearer, Anthropic x-api-key."""
    if key is None:
        return {}
    if path.startswith("/v1/messages"):
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"Authorization": f"Bearer {key}"}


def fault_request(path, fault=None, key=None, rid=None, headers=None, body=None, stream=False):
    h = dict(key_headers(path, key))
    if fault is not None:
        h["x-mock-fault"] = fault
    if rid is not None:
        h["x-request-id"] = rid
    h.update(headers or {})
    if body is None:
        body = (messages_body("m-fault", stream=stream) if path.startswith("/v1/messages")
                else chat_body("m-fault", stream=stream))
    return build_request("POST", path, body, h)


def fault_post(c, path, fault=None, key=None, rid=None, headers=None, body=None):
    c.send(fault_request(path, fault, key, rid, headers, body))
    return c.read_response()


def new_rid():
    return "req-" + os.urandom(8).hex()


def read_until_closed(sock, timeout_s=5):
    """Every byte until the peer closes: (data, "eof" | "reset")."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            got = sock.recv(1 << 16)
        except ConnectionResetError:
            return data, "reset"
        except ssl.SSLEOFError:  # TLS: a FIN without close_notify
            return data, "eof"
        if not got:
            return data, "eof"
        data += got


def expect_error_shape(r, status, path):
    expect_status(r, status)
    j = r.json()
    if path.startswith("/v1/messages"):
        expect(j.get("type") == "error" and isinstance(j.get("error"), dict) and j["error"].get("type"),
               f"Anthropic error shape: {j!r}")
    else:
        expect(isinstance(j.get("error"), dict) and j["error"].get("message"), f"OpenAI error shape: {j!r}")
    return j


@test(env="mock")
def fault_key_conditional_both_formats(e):
    for path in ("/v1/chat/completions", "/v1/messages"):
        with Conn(e.mock_addr) as c:
            for _ in range(2):  # every request with sk-a fails, every one with sk-b does not
                j = expect_error_shape(fault_post(c, path, "key=sk-a;429", key="sk-a"), 429, path)
                if path == "/v1/messages":
                    expect(j["error"]["type"] == "rate_limit_error", f"{j!r}")
                else:
                    expect(j["error"].get("code") == "rate_limit_exceeded", f"{j!r}")
                expect_json_response(fault_post(c, path, "key=sk-a;429", key="sk-b"))
            # no key at all: key= never holds
            expect_json_response(fault_post(c, path, "key=sk-a;429"))
            # the first SPEC that holds applies
            expect_status(fault_post(c, path, "key=sk-a;500, key=sk-b;503", key="sk-b"), 503)
            expect_status(fault_post(c, path, "key=sk-a;500, key=sk-b;503", key="sk-a"), 500)
    # each route reads its own format's header first
    with Conn(e.mock_addr) as c:
        both = {"x-api-key": "sk-x", "Authorization": "Bearer sk-y"}
        expect_status(fault_post(c, "/v1/messages", "key=sk-x;502", headers=both), 502)
        expect_json_response(fault_post(c, "/v1/messages", "key=sk-y;502", headers=both))
        expect_status(fault_post(c, "/v1/chat/completions", "key=sk-y;502", headers=both), 502)
        expect_json_response(fault_post(c, "/v1/chat/completions", "key=sk-x;502", headers=both))


@test(env="mock")
def fault_times_per_request_id(e):
    path = "/v1/chat/completions"
    rid = new_rid()
    with Conn(e.mock_addr) as c:
        got = [fault_post(c, path, "times=2;503", key="sk-a", rid=rid).status for _ in range(4)]
        expect(got == [503, 503, 200, 200], f"attempts of one id: {got}, expected [503, 503, 200, 200]")
    # a different id starts over (new connections: the table is not per connection)
    other = new_rid()
    got = []
    for _ in range(3):
        with Conn(e.mock_addr) as c:
            got.append(fault_post(c, path, "times=2;503", key="sk-a", rid=other).status)
    expect(got == [503, 503, 200], f"another id: {got}")
    # attempts that matched no SPEC count too
    rid = new_rid()
    with Conn(e.mock_addr) as c:
        expect_json_response(fault_post(c, path, "key=sk-a;times=1;500", key="sk-b", rid=rid))
        expect_json_response(fault_post(c, path, "key=sk-a;times=1;500", key="sk-a", rid=rid))
    # times=2;503 before key=sk-b;500: attempts 1-2 get 503, then 500 for ever
    rid = new_rid()
    with Conn(e.mock_addr) as c:
        got = [fault_post(c, "/v1/messages", "times=2;503, key=sk-b;500", key="sk-b", rid=rid).status
               for _ in range(4)]
        expect(got == [503, 503, 500, 500], f"times then key: {got}")
        # times=0 never holds
        expect_json_response(fault_post(c, path, "times=0;503", key="sk-a", rid=new_rid()))
        # without an x-request-id every request is a first attempt
        got = [fault_post(c, path, "times=1;503", key="sk-a").status for _ in range(3)]
        expect(got == [503, 503, 503], f"no x-request-id: {got}")


@test(env="mock")
def fault_times_table_reset_and_bounded(e):
    path = "/v1/chat/completions"
    rid = new_rid()
    with Conn(e.mock_addr) as c:
        expect_status(fault_post(c, path, "times=1;503", rid=rid), 503)
        expect_status(fault_post(c, path, "times=1;503", rid=rid), 200)
        e.mock_reset()  # forgets the ids
        expect_status(fault_post(c, path, "times=1;503", rid=rid), 503)
        expect_status(fault_post(c, path, "times=1;503", rid=rid), 200)
        # 4096 newer ids push it out of the table: it starts over
        for i in range(4096):
            c.send(fault_request(path, "times=0;503", rid=f"{rid}-{i}"))
            if i % 64 == 63:
                for _ in range(64):
                    expect_status(c.read_response(), 200)
        expect_status(fault_post(c, path, "times=1;503", rid=rid), 503)


@test(env="mock")
def fault_retry_after(e):
    with Conn(e.mock_addr) as c:
        r = fault_post(c, "/v1/chat/completions", "key=sk-a;ra=3;429", key="sk-a")
        expect_status(r, 429)
        expect(r.header("retry-after") == "3", f"Retry-After {r.header('retry-after')!r}")
        r = fault_post(c, "/v1/chat/completions", "key=sk-a;429", key="sk-a")
        expect_status(r, 429)
        expect(r.header("retry-after") is None, f"Retry-After {r.header('retry-after')!r} without ra=")
        r = fault_post(c, "/v1/messages", "ra=1;529", key="sk-a")
        j = expect_error_shape(r, 529, "/v1/messages")
        expect(j["error"]["type"] == "overloaded_error", f"{j!r}")
        expect(r.header("retry-after") == "1", f"Retry-After {r.header('retry-after')!r}")
        # no SPEC holds: the other x-mock-* headers apply as usual
        r = fault_post(c, "/v1/chat/completions", "key=sk-z;ra=3;429", key="sk-a",
                       headers={"x-mock-status": 502, "x-mock-retry-after": 9})
        expect_status(r, 502)
        expect(r.header("retry-after") == "9", f"Retry-After {r.header('retry-after')!r}")


@test(env="mock")
def fault_reset_and_close(e):
    for path in ("/v1/chat/completions", "/v1/messages"):
        for stream in (False, True):
            with Conn(e.mock_addr) as c:
                c.send(fault_request(path, "key=sk-a;reset", key="sk-a", stream=stream))
                data, how = read_until_closed(c.sock)
                expect(data == b"" and how == "reset", f"reset: {how} after {data[:100]!r}")
            with Conn(e.mock_addr) as c:
                c.send(fault_request(path, "key=sk-a;close", key="sk-a", stream=stream))
                data, how = read_until_closed(c.sock)
                expect(data == b"" and how == "eof", f"close: {how} after {data[:100]!r}")
    # an earlier answer on the connection (pipelined) is delivered whole first
    for kind, want in (("reset", "reset"), ("close", "eof")):
        with Conn(e.mock_addr) as c:
            c.send(fault_request("/v1/chat/completions", key="sk-a") +
                   fault_request("/v1/chat/completions", f"key=sk-a;{kind}", key="sk-a"))
            data, how = read_until_closed(c.sock)
            expect(how == want, f"pipelined {kind}: {how}")
            head, _, body = data.partition(b"\r\n\r\n")
            expect(head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["object"] == "chat.completion",
                   f"pipelined {kind}: first answer {data[:300]!r}")
    # the mock closed those connections itself
    eventually(lambda: e.mock_stats()["connections_open"] == 1, what="connections closed")


@test(env="mock")
def fault_midstream(e):
    # stream: the head and 2 content events, then RST
    for path, delta in (("/v1/chat/completions", b'"delta":{"content":'),
                        ("/v1/messages", b'"type":"text_delta"')):
        with Conn(e.mock_addr) as c:
            c.send(fault_request(path, "midstream", key="sk-a", stream=True,
                                 headers={"x-mock-tokens": 8}))
            data, how = read_until_closed(c.sock)
        expect(how == "reset", f"{path}: {how}")
        expect(data.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in data, f"{path}: {data[:200]!r}")
        expect(data.count(delta) == 2, f"{path}: {data.count(delta)} content events, expected 2: {data!r}"[:600])
        expect(b"[DONE]" not in data and b"message_stop" not in data and not data.endswith(b"0\r\n\r\n"),
               f"{path}: the stream must not end: {data[-200:]!r}")
    # fewer than 2 content events: cut before the closing events
    with Conn(e.mock_addr) as c:
        c.send(fault_request("/v1/chat/completions", "midstream", stream=True, headers={"x-mock-tokens": 1}))
        data, how = read_until_closed(c.sock)
    expect(how == "reset" and data.count(b'"delta":{"content":') == 1 and b"[DONE]" not in data,
           f"1 token: {how} {data[-200:]!r}")
    # non-stream: the head and half the body, then RST (2 MB: more than the
    # socket takes at once, so the RST must wait until the half has left)
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/embeddings"):
        body = {"model": "emb", "input": "hi"} if path == "/v1/embeddings" else None
        with Conn(e.mock_addr) as c:
            c.send(fault_request(path, "key=sk-a;midstream", key="sk-a", body=body,
                                 headers={"x-mock-response-bytes": 2000000}))
            data, how = read_until_closed(c.sock)
        head, _, got = data.partition(b"\r\n\r\n")
        m = re.search(rb"\r\nContent-Length: (\d+)", head)
        expect(how == "reset" and head.startswith(b"HTTP/1.1 200 ") and m, f"{path}: {how} {head!r}")
        expect(len(got) == int(m.group(1)) // 2, f"{path}: {len(got)} of {m.group(1)} body bytes, expected half")


@test(env="mock")
def fault_delay(e):
    with Conn(e.mock_addr) as c:
        t0 = time.monotonic()
        r = fault_post(c, "/v1/chat/completions", "key=sk-a;delay:400", key="sk-a")
        took = r.t_head - t0
        expect_json_response(r)
        expect(0.38 <= took < 3, f"head after {took:.3f}s, expected ~0.4s")
        t0 = time.monotonic()
        r = fault_post(c, "/v1/chat/completions", "key=sk-a;delay:400", key="sk-b")
        expect_json_response(r)
        expect(r.t_head - t0 < 0.3, f"sk-b: head after {r.t_head - t0:.3f}s, expected no delay")
        # the delayed answer is whatever the other headers ask for
        t0 = time.monotonic()
        r = fault_post(c, "/v1/messages", "delay:300", headers={"x-mock-status": 529})
        expect_error_shape(r, 529, "/v1/messages")
        expect(r.t_head - t0 >= 0.28, f"head after {r.t_head - t0:.3f}s")


@test(env="mock")
def fault_client_gone_during_delay(e):
    # the gateway gives up on an attempt while the mock delays its first
    # byte: the mock closes that connection at once (connections_open)
    def open_conns():
        return e.mock_stats()["connections_open"]  # the stats connection included
    cases = [{"x-mock-fault": "delay:20000"}, {"x-mock-first-byte-delay-ms": 20000},
             {"x-mock-fault": "key=sk-a;delay:20000", "x-mock-tokens": 3}]
    for headers in cases:
        for how in ("close", "shutdown", "request_then_fin", "pipelined_then_close"):
            eventually(lambda: open_conns() == 1, what="no connection left over")
            c = Conn(e.mock_addr)
            try:
                req = fault_request("/v1/chat/completions", key="sk-a", headers=headers, stream=True)
                if how == "request_then_fin":  # the FIN right behind the request
                    c.sock.sendall(req)
                    c.sock.shutdown(socket.SHUT_WR)
                else:
                    if how == "pipelined_then_close":  # more than the input buffer holds behind it
                        req += build_request("POST", "/v1/embeddings", {"model": "e", "input": "x" * 100000})
                    c.send(req)
                    eventually(lambda: open_conns() == 2, what="the connection open")
                    if how == "shutdown":
                        c.sock.shutdown(socket.SHUT_WR)
                    else:
                        c.close()
                eventually(lambda: open_conns() == 1, what=f"{headers} {how}: the mock closed too")
            finally:
                c.close()


@test(env="mock")
def fault_rate(e):
    path = "/v1/chat/completions"
    with Conn(e.mock_addr) as c:
        for fault, want in (("rate=0;429", 200), ("rate=100;429", 429), ("rate=0.0;429", 200),
                            ("rate=100.0;429", 429)):
            for i in range(50):
                c.send(fault_request(path, fault, key="sk-a"))
            got = [c.read_response().status for _ in range(50)]
            expect(got == [want] * 50, f"{fault}: {got}")
        n = 400
        for i in range(n):
            c.send(fault_request(path, "rate=50;429, rate=2.5;503", key="sk-a"))
        got = [c.read_response().status for _ in range(n)]
    fails = got.count(429)
    # binomial(400, 0.5): sd 10; (400 - 429s) x 2.5%: ~5
    expect(120 <= fails <= 280, f"rate=50: {fails} of {n}")
    expect(set(got) <= {200, 429, 503} and got.count(503) <= 40, f"rate=2.5: {got.count(503)} 503s")


@test(env="mock")
def fault_model_condition(e):
    with Conn(e.mock_addr) as c:
        expect_status(fault_post(c, "/v1/chat/completions", "model=m-x;500", body=chat_body("m-x")), 500)
        expect_json_response(fault_post(c, "/v1/chat/completions", "model=m-x;500", body=chat_body("m-y")))
        expect_json_response(fault_post(c, "/v1/chat/completions", "model=mock-model;500",
                                        body={"messages": []}))
        expect_status(fault_post(c, "/v1/messages", "key=sk-a;model=m-x;500", key="sk-a",
                                 body=messages_body("m-x")), 500)
        expect_json_response(fault_post(c, "/v1/messages", "key=sk-a;model=m-x;500", key="sk-b",
                                        body=messages_body("m-x")))


@test(env="mock")
def fault_malformed_spec(e):
    bad = ["bogus", "key=sk-a", "429;key=sk-a", "key=sk-a;;429", "key=sk-a;429,", "times=x;503",
           "times=-1;503", "rate=101;429", "rate=abc;429", "rate=;429", "ra=3;reset", "ra=x;429",
           "200", "600", "delay:", "delay:abc", "colour=red;429", "key=;429", "key=sk-a;429, nope"]
    rid = new_rid()
    e.mock_reset()
    with Conn(e.mock_addr) as c:
        for path in ("/v1/chat/completions", "/v1/messages"):
            for spec in bad:
                r = fault_post(c, path, spec, key="sk-a", rid=rid)
                j = expect_error_shape(r, 400, path)
                msg = j["error"]["message"]
                expect("x-mock-fault" in msg, f"{spec!r}: message {msg!r}")
        # a malformed header is ignored whole: it did not count for times=
        expect_status(fault_post(c, "/v1/chat/completions", "times=1;503", key="sk-a", rid=rid), 503)
        # an empty value is no SPEC at all
        expect_json_response(fault_post(c, "/v1/chat/completions", "", key="sk-a"))
        # names and kinds are case-insensitive, spaces around tokens allowed
        expect_status(fault_post(c, "/v1/chat/completions", " KEY = sk-a ; RA=2 ; 429 ", key="sk-a"), 429)
    expect(e.mock_stats()["faults_injected"] == 2, f"faults_injected {e.mock_stats()['faults_injected']}")


@test(env="mock")
def fault_stats_requests_by_key(e):
    e.mock_reset()
    s = e.mock_stats()
    expect(s["requests_by_key"] == {} and s["faults_injected"] == 0, f"after reset: {s!r}"[:300])
    with Conn(e.mock_addr) as c:
        for _ in range(3):
            expect_json_response(fault_post(c, "/v1/chat/completions", key="sk-a"))
        expect_status(fault_post(c, "/v1/chat/completions", "key=sk-a;429", key="sk-a"), 429)
        expect_status(fault_post(c, "/v1/messages", "key=sk-b;529", key="sk-b"), 529)
        expect_json_response(fault_post(c, "/v1/messages", "key=sk-a;529", key="sk-b"))
        expect_json_response(fault_post(c, "/v1/embeddings", key="sk-a", body={"model": "e", "input": "x"}))
        expect_json_response(fault_post(c, "/v1/chat/completions"))  # no key: not counted
        c.send(build_request("GET", "/v1/models", headers=key_headers("/v1/models", "sk-a")))
        expect_status(c.read_response(), 200)  # not a generation: not counted
        c.send(fault_request("/v1/chat/completions", "key=sk-c;reset", key="sk-c"))
        expect(read_until_closed(c.sock)[1] == "reset", "reset")
    s = e.mock_stats()
    expect(s["requests_by_key"] == {"sk-a": 5, "sk-b": 2, "sk-c": 1},
           f"requests_by_key {s['requests_by_key']!r}")
    expect(s["faults_injected"] == 3, f"faults_injected {s['faults_injected']}")
    # bounded: 64 keys at most, later ones are not counted
    with Conn(e.mock_addr) as c:
        for i in range(70):
            c.send(fault_request("/v1/chat/completions", key=f"sk-many-{i}"))
        for _ in range(70):
            expect_status(c.read_response(), 200)
    byk = e.mock_stats()["requests_by_key"]
    expect(len(byk) == 64 and byk.get("sk-a") == 5 and byk.get("sk-many-60") == 1
           and "sk-many-61" not in byk, f"{len(byk)} keys: {sorted(byk)[-5:]}")
    e.mock_reset()
    s = e.mock_stats()
    expect(s["requests_by_key"] == {} and s["faults_injected"] == 0, f"after reset: {s!r}"[:300])


# --- thinking, parallel tool calls, cache tokens, stop sequences -------------

WORDS = ["Hello", " from", " the", " mock", " provider", ".", " The", " quick", " brown",
         " fox", " jumps", " over", " a", " lazy", " dog", "."]
THINKING = "Let me think about this."
OA_TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
            for n in ("get_weather", "get_time", "get_news")]
AN_TOOLS = [{"name": n, "input_schema": {"type": "object"}} for n in ("get_weather", "get_time", "get_news")]


def words(n, start=0):
    return "".join(" Hello" if i and i % 16 == 0 else WORDS[i % 16] for i in range(start, start + n))


def anthropic_blocks(datas):
    """Rebuilds the content blocks of an Anthropic stream, checking that
    blocks start at consecutive indexes, one at a time, each stopped before
    the next starts."""
    blocks, open_idx = [], None
    for d in datas:
        t = d["type"]
        if t == "content_block_start":
            expect(open_idx is None, f"block {d['index']} starts while {open_idx} is open")
            expect(d["index"] == len(blocks), f"block index {d['index']}, expected {len(blocks)}")
            blocks.append(dict(d["content_block"], _deltas=[]))
            open_idx = d["index"]
        elif t == "content_block_delta":
            expect(d["index"] == open_idx, f"delta for block {d['index']} while {open_idx} is open")
            b, dl = blocks[open_idx], d["delta"]
            b["_deltas"].append(dl["type"])
            if dl["type"] == "text_delta":
                b["text"] += dl["text"]
            elif dl["type"] == "thinking_delta":
                b["thinking"] += dl["thinking"]
            elif dl["type"] == "signature_delta":
                b["signature"] += dl["signature"]
            elif dl["type"] == "input_json_delta":
                b["_json"] = b.get("_json", "") + dl["partial_json"]
        elif t == "content_block_stop":
            expect(d["index"] == open_idx, f"stop of block {d['index']} while {open_idx} is open")
            open_idx = None
    expect(open_idx is None, f"block {open_idx} never stopped")
    return blocks


def openai_stream_message(datas):
    """Accumulates an OpenAI chat stream: (reasoning, content, tool calls by
    index, finish reasons, the ordered list of delta kinds)."""
    reasoning, content, calls, finishes, kinds = "", "", {}, [], []
    for d in datas:
        if d == "[DONE]":
            continue
        for ch in d.get("choices", []):
            dl = ch.get("delta") or {}
            if dl.get("reasoning_content"):
                reasoning += dl["reasoning_content"]
                kinds.append("reasoning")
            if dl.get("content"):
                content += dl["content"]
                kinds.append("content")
            for tc in dl.get("tool_calls") or []:
                kinds.append(("tool", tc["index"]))
                c = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": "", "first": tc})
                if "id" in tc:
                    expect(c["id"] is None, f"call {tc['index']}: a second id")
                    c["id"] = tc["id"]
                    c["name"] = tc["function"]["name"]
                c["arguments"] += tc["function"].get("arguments", "")
            if ch.get("finish_reason"):
                finishes.append(ch["finish_reason"])
    return reasoning, content, calls, finishes, kinds


@test(env="mock")
def thinking_anthropic(e):
    body = messages_body("c", thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2048)
    j = expect_json_response(post(e, "/v1/messages", body, {"x-mock-tokens": 4}))
    expect([b["type"] for b in j["content"]] == ["thinking", "text"], f"content {j['content']!r}")
    th = j["content"][0]
    expect(th["thinking"] == THINKING, f"thinking {th['thinking']!r}")
    expect(re.fullmatch(r"[A-Za-z0-9+/]{40,}={0,2}", th["signature"] or ""), f"signature {th['signature']!r}")
    expect(j["content"][1]["text"] == words(4), "text block")
    expect(j["usage"]["output_tokens"] == 5 + 4, f"usage {j['usage']!r} (thinking deltas count)")
    expect(j["stop_reason"] == "end_turn", "stop_reason")

    r = expect_sse_response(stream(e, "/v1/messages", dict(body, stream=True), {"x-mock-tokens": 4}))
    names = [n for n in sse_event_names(r.events) if n != "ping"]
    datas = [d for d in sse_data(r.events) if d["type"] != "ping"]
    expect(names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], f"events {names}")
    blocks = anthropic_blocks(datas)
    expect([b["type"] for b in blocks] == ["thinking", "text"], f"blocks {blocks!r}")
    start = next(d for d in datas if d["type"] == "content_block_start")
    expect(start["content_block"] == {"type": "thinking", "thinking": "", "signature": ""},
           f"thinking block start {start['content_block']!r}")
    expect(blocks[0]["_deltas"] == ["thinking_delta"] * 5 + ["signature_delta"],
           f"thinking deltas {blocks[0]['_deltas']}: thinking_delta x5, then the signature")
    expect(blocks[0]["thinking"] == THINKING and re.fullmatch(r"[A-Za-z0-9+/]{40,}={0,2}", blocks[0]["signature"]),
           f"thinking block {blocks[0]!r}")
    expect(blocks[1]["text"] == words(4) and blocks[1]["_deltas"] == ["text_delta"] * 4, "text block")
    md = datas[-2]
    expect(md["usage"]["output_tokens"] == 9 and md["delta"]["stop_reason"] == "end_turn", f"message_delta {md!r}")


@test(env="mock")
def thinking_by_header_and_off(e):
    # x-mock-thinking: 1 without a thinking request; x-mock-thinking: 0 overrides the body
    j = post(e, "/v1/messages", messages_body("c"), {"x-mock-thinking": "1"}).json()
    expect([b["type"] for b in j["content"]] == ["thinking", "text"], f"content {j['content']!r}")
    j = post(e, "/v1/messages", messages_body("c", thinking={"type": "enabled", "budget_tokens": 1024}),
             {"x-mock-thinking": "0"}).json()
    expect([b["type"] for b in j["content"]] == ["text"], f"content {j['content']!r}")
    j = post(e, "/v1/messages", messages_body("c", thinking={"type": "disabled"})).json()
    expect([b["type"] for b in j["content"]] == ["text"], f"thinking disabled: content {j['content']!r}")
    j = post(e, "/v1/chat/completions", chat_body("m"), {"x-mock-thinking": "true"}).json()
    expect(j["choices"][0]["message"].get("reasoning_content") == THINKING, f"{j['choices'][0]!r}")
    j = post(e, "/v1/chat/completions", chat_body("m", reasoning_effort=None)).json()
    expect("reasoning_content" not in j["choices"][0]["message"], "reasoning_effort null: no reasoning")


@test(env="mock")
def thinking_openai_reasoning_content(e):
    body = chat_body("m", reasoning_effort="low")
    j = expect_json_response(post(e, "/v1/chat/completions", body, {"x-mock-tokens": 3}))
    m = j["choices"][0]["message"]
    expect(m.get("reasoning_content") == THINKING and m["content"] == words(3), f"message {m!r}")
    u = j["usage"]
    expect(u["completion_tokens"] == 8 and u["completion_tokens_details"]["reasoning_tokens"] == 5
           and u["total_tokens"] == u["prompt_tokens"] + 8, f"usage {u!r}")
    r = expect_sse_response(stream(e, "/v1/chat/completions",
                                   dict(body, stream=True, stream_options={"include_usage": True}),
                                   {"x-mock-tokens": 3}))
    datas = sse_data(r.events)
    expect(datas[-1] == "[DONE]", "ends with [DONE]")
    reasoning, content, calls, finishes, kinds = openai_stream_message(datas)
    expect(reasoning == THINKING and content == words(3), f"reasoning {reasoning!r}, content {content!r}")
    expect(kinds == ["reasoning"] * 5 + ["content"] * 3, f"delta order {kinds}")
    expect(finishes == ["stop"] and not calls, f"finishes {finishes}")
    expect(datas[0]["choices"][0]["delta"].get("role") == "assistant", "role chunk first")
    expect(datas[-2]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5, f"usage {datas[-2]!r}")


@test(env="mock")
def thinking_stream_counts_for_faults(e):
    # thinking deltas are content events: x-mock-disconnect-after counts them
    r = stream(e, "/v1/messages", messages_body("c", stream=True), {"x-mock-thinking": "1", "x-mock-disconnect-after": 3},
               timeout_s=5)
    expect(not r.complete, "stream must be cut")
    deltas = [d["delta"]["type"] for d in sse_data(r.events) if d["type"] == "content_block_delta"]
    expect(deltas == ["thinking_delta"] * 3, f"deltas before the cut {deltas}")


@test(env="mock")
def parallel_tools_openai(e):
    h = {"x-mock-parallel-tools": 3, "x-mock-tokens": 4}
    j = expect_json_response(post(e, "/v1/chat/completions", chat_body("m", tools=OA_TOOLS), h))
    ch = j["choices"][0]
    calls = ch["message"]["tool_calls"]
    expect(ch["finish_reason"] == "tool_calls" and ch["message"]["content"] is None, f"choice {ch!r}"[:300])
    expect([c["function"]["name"] for c in calls] == ["get_weather", "get_time", "get_news"], f"calls {calls!r}")
    expect(len({c["id"] for c in calls}) == 3 and all(c["id"].startswith("call_") for c in calls), "distinct ids")
    expect([json.loads(c["function"]["arguments"]) for c in calls] == [{"text": words(4, k)} for k in range(3)],
           f"arguments {[c['function']['arguments'] for c in calls]}")
    expect(j["usage"]["completion_tokens"] == 12, f"usage {j['usage']!r}")

    for order in ("interleaved", "sequential"):
        r = expect_sse_response(stream(e, "/v1/chat/completions", chat_body("m", stream=True, tools=OA_TOOLS),
                                       dict(h, **{"x-mock-tool-order": order})))
        reasoning, content, scalls, finishes, kinds = openai_stream_message(sse_data(r.events))
        expect(finishes == ["tool_calls"] and not content, f"{order}: finishes {finishes}, content {content!r}")
        expect(sorted(scalls) == [0, 1, 2], f"{order}: call indexes {sorted(scalls)}")
        for k, c in scalls.items():
            expect(c["first"].get("id") and c["first"]["function"].get("name"),
                   f"{order}: call {k}'s first delta has no id+name: {c['first']!r}")
            expect(c["id"].startswith("call_"), f"{order}: call {k} id {c['id']!r}")
            expect(json.loads(c["arguments"]) == {"text": words(4, k)}, f"{order}: call {k} arguments {c['arguments']!r}")
        tools = [k[1] for k in kinds if k != "content"]
        want = [0, 1, 2] * 4 if order == "interleaved" else [0] * 4 + [1] * 4 + [2] * 4
        expect(tools == want, f"{order}: delta order by call index {tools}")
        expect(len({c["id"] for c in scalls.values()}) == 3, f"{order}: distinct ids")


@test(env="mock")
def parallel_tools_cycle_and_text_before(e):
    # more calls than tools: the tools are called in turn; text before the calls
    h = {"x-mock-parallel-tools": 3, "x-mock-tokens": 2, "x-mock-text-before-tools": 1}
    j = post(e, "/v1/chat/completions", chat_body("m", tools=OA_TOOLS[:1]), h).json()
    m = j["choices"][0]["message"]
    expect(m["content"] == words(2) and [c["function"]["name"] for c in m["tool_calls"]] == ["get_weather"] * 3,
           f"message {m!r}"[:400])
    r = stream(e, "/v1/chat/completions", chat_body("m", stream=True, tools=OA_TOOLS[:1]), h)
    _, content, calls, finishes, kinds = openai_stream_message(sse_data(r.events))
    expect(content == words(2) and kinds[:2] == ["content", "content"] and len(calls) == 3, f"kinds {kinds}")
    expect(finishes == ["tool_calls"], f"finishes {finishes}")
    # one call with text before it
    j = post(e, "/v1/messages", messages_body("c", tools=AN_TOOLS), {"x-mock-text-before-tools": 1, "x-mock-tokens": 2}).json()
    expect([b["type"] for b in j["content"]] == ["text", "tool_use"] and j["stop_reason"] == "tool_use",
           f"content {j['content']!r}")
    # no tools: the header is ignored
    j = post(e, "/v1/chat/completions", chat_body("m"), {"x-mock-parallel-tools": 3}).json()
    expect(j["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in j["choices"][0]["message"], "no tools")


@test(env="mock")
def parallel_tools_anthropic(e):
    h = {"x-mock-parallel-tools": 2, "x-mock-tokens": 3}
    j = expect_json_response(post(e, "/v1/messages", messages_body("c", tools=AN_TOOLS), h))
    uses = j["content"]
    expect([b["type"] for b in uses] == ["tool_use", "tool_use"] and j["stop_reason"] == "tool_use", f"{j!r}"[:300])
    expect([(b["name"], b["input"]) for b in uses] == [("get_weather", {"text": words(3)}), ("get_time", {"text": words(3, 1)})],
           f"tool_use blocks {uses!r}")
    expect(len({b["id"] for b in uses}) == 2 and all(re.fullmatch(r"toolu_[A-Za-z0-9_-]+", b["id"]) for b in uses),
           "distinct toolu_ ids")
    expect(j["usage"]["output_tokens"] == 6, f"usage {j['usage']!r}")

    body = messages_body("c", stream=True, tools=AN_TOOLS, thinking={"type": "enabled", "budget_tokens": 1024})
    r = expect_sse_response(stream(e, "/v1/messages", body, dict(h, **{"x-mock-text-before-tools": 1})))
    datas = [d for d in sse_data(r.events) if d["type"] != "ping"]
    blocks = anthropic_blocks(datas)
    expect([b["type"] for b in blocks] == ["thinking", "text", "tool_use", "tool_use"], f"blocks {[b['type'] for b in blocks]}")
    expect(blocks[1]["text"] == words(3), "text block")
    for k, b in enumerate(blocks[2:]):
        expect(b["name"] == AN_TOOLS[k]["name"] and json.loads(b["_json"]) == {"text": words(3, k)}, f"tool block {b!r}")
        expect(b["_deltas"] == ["input_json_delta"] * 3, f"tool deltas {b['_deltas']}")
    md = datas[-2]
    expect(md["delta"]["stop_reason"] == "tool_use" and md["usage"]["output_tokens"] == 5 + 9, f"message_delta {md!r}")


@test(env="mock")
def parallel_tools_zero_tokens(e):
    h = {"x-mock-parallel-tools": 2, "x-mock-tokens": 0}
    r = stream(e, "/v1/messages", messages_body("c", stream=True, tools=AN_TOOLS), h)
    blocks = anthropic_blocks([d for d in sse_data(r.events) if d["type"] != "ping"])
    expect([(b["type"], b["_deltas"]) for b in blocks] == [("tool_use", []), ("tool_use", [])], f"blocks {blocks!r}")
    r = stream(e, "/v1/chat/completions", chat_body("m", stream=True, tools=OA_TOOLS), h)
    _, _, calls, finishes, _ = openai_stream_message(sse_data(r.events))
    expect([json.loads(calls[k]["arguments"]) for k in (0, 1)] == [{}, {}] and finishes == ["tool_calls"], f"{calls!r}")


@test(env="mock")
def cache_tokens(e):
    h = {"x-mock-cache-read": 1000, "x-mock-cache-write": 200}
    j = post(e, "/v1/messages", messages_body("c"), h).json()
    u = j["usage"]
    expect(u["cache_read_input_tokens"] == 1000 and u["cache_creation_input_tokens"] == 200, f"usage {u!r}")
    expect(0 < u["input_tokens"] < 1000, f"input_tokens {u['input_tokens']} excludes the cached ones")
    r = stream(e, "/v1/messages", messages_body("c", stream=True), h)
    ms = sse_data(r.events)[0]["message"]["usage"]
    expect(ms["cache_read_input_tokens"] == 1000 and ms["cache_creation_input_tokens"] == 200, f"message_start usage {ms!r}")
    j = post(e, "/v1/chat/completions", chat_body("m"), h).json()
    u = j["usage"]
    base = max(len(json.dumps(chat_body("m"))) // 4, 1)
    expect(u["prompt_tokens_details"]["cached_tokens"] == 1000 and u["prompt_tokens"] == base + 1000
           and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], f"usage {u!r}")
    body = chat_body("m", stream=True, stream_options={"include_usage": True})
    r = stream(e, "/v1/chat/completions", body, h)
    u = sse_data(r.events)[-2]["usage"]
    expect(u["prompt_tokens_details"]["cached_tokens"] == 1000
           and u["prompt_tokens"] == len(json.dumps(body)) // 4 + 1000, f"stream usage {u!r}")


@test(env="mock")
def stop_sequences(e):
    # Anthropic: the text ends before the stop word, stop_reason stop_sequence
    j = post(e, "/v1/messages", messages_body("c", stop_sequences=["END", "mock"])).json()
    expect(j["content"][0]["text"] == words(3) and j["stop_reason"] == "stop_sequence" and j["stop_sequence"] == "mock",
           f"{j!r}"[:300])
    expect(j["usage"]["output_tokens"] == 3, f"usage {j['usage']!r}")
    r = stream(e, "/v1/messages", messages_body("c", stream=True, stop_sequences=[" provider "]))
    datas = sse_data(r.events)
    text = "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta")
    md = next(d for d in datas if d["type"] == "message_delta")
    expect(text == words(4) and md["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": " provider "},
           f"text {text!r}, message_delta {md!r}")
    # no match, and a match after the max_tokens cap
    j = post(e, "/v1/messages", messages_body("c", stop_sequences=["MOCK", "fox"])).json()
    expect(j["stop_reason"] == "end_turn" and j["stop_sequence"] is None and j["content"][0]["text"] == words(8), f"{j!r}"[:300])
    j = post(e, "/v1/messages", messages_body("c", max_tokens=2, stop_sequences=["the"])).json()
    expect(j["stop_reason"] == "max_tokens" and j["content"][0]["text"] == words(2), f"{j!r}"[:300])
    # OpenAI: stop as a string or a list, finish_reason stop
    for stop in ("quick", ["x", "quick"]):
        j = post(e, "/v1/chat/completions", chat_body("m", stop=stop)).json()
        ch = j["choices"][0]
        expect(ch["message"]["content"] == words(7) and ch["finish_reason"] == "stop", f"stop {stop!r}: {ch!r}")
        expect(j["usage"]["completion_tokens"] == 7, f"usage {j['usage']!r}")
    r = stream(e, "/v1/chat/completions", chat_body("m", stream=True, stop=["the"]), {"x-mock-tokens": 20})
    expect("".join(openai_content_deltas(sse_data(r.events)[:-1])) == words(2), "streamed content stops")
    j = post(e, "/v1/completions", {"model": "m", "prompt": "x", "stop": "."}).json()
    expect(j["choices"][0]["text"] == words(5) and j["choices"][0]["finish_reason"] == "stop", f"{j!r}"[:300])
    # text before tool calls that hits a stop sequence: no tool calls follow
    j = post(e, "/v1/messages", messages_body("c", tools=AN_TOOLS, stop_sequences=["the"]),
             {"x-mock-text-before-tools": 1}).json()
    expect([b["type"] for b in j["content"]] == ["text"] and j["stop_reason"] == "stop_sequence", f"{j!r}"[:300])


# --- TLS: --tls-listen, --tls-cert, --tls-key --------------------------------

# plain HTTP on --listen, TLS (tlsgen's "localhost" chain) on --tls-listen;
# two threads: one SSL_CTX and its session tickets shared by both
env("mock_tls", gateway=False, mock_threads=2, mock_tls=True)

TLS13 = ssl.TLSVersion.TLSv1_3
TLS12 = ssl.TLSVersion.TLSv1_2


def tls_context(e, version=None, cafile=None, check_hostname=True):
    ctx = ssl.create_default_context(cafile=cafile or e.tls["ca"]["cert"])
    ctx.check_hostname = check_hostname
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def tls_conn(e, ctx, hostname="localhost", session=None, addr=None, timeout_s=10, **kw):
    """A harness Conn whose socket is TLS (the handshake is done here)."""
    c = Conn(addr or e.mock_tls_addr, timeout_s)
    try:
        c.sock = ctx.wrap_socket(c.sock, server_hostname=hostname, session=session, **kw)
    except BaseException:
        c.close()
        raise
    return c


def tls_stats(e):
    s = e.mock_stats()
    return {k: s[k] for k in ("tls_handshakes", "tls_resumed", "tls_failed", "tls_last_sni")}


def expect_tls_stats(e, **want):
    got = tls_stats(e)
    expect(all(got[k] == v for k, v in want.items()), f"TLS stats {got}, expected {want}")
    return got


def chat_ok(c, model="m-tls", headers=None):
    c.send(build_request("POST", "/v1/chat/completions", chat_body(model), headers))
    j = expect_json_response(c.read_response())
    expect(j.get("object") == "chat.completion" and j.get("model") == model, f"{j!r}"[:300])
    return j


@test(env="mock_tls")
def tls_chat_tls13_and_tls12(e):
    e.mock_reset()
    for version, name in ((TLS13, "TLSv1.3"), (TLS12, "TLSv1.2")):
        with tls_conn(e, tls_context(e, version)) as c:
            expect(c.sock.version() == name, f"negotiated {c.sock.version()}, expected {name}")
            chat_ok(c)
            # keep-alive: a stream with token delays (timer-driven writes) on the same connection
            c.send(build_request("POST", "/v1/messages", messages_body("claude-tls", stream=True),
                                 {"x-mock-tokens": 4, "x-mock-token-delay-ms": 10}))
            r = expect_sse_response(c.read_stream())
            names = [n for n in sse_event_names(r.events) if n != "ping"]
            expect(names.count("content_block_delta") == 4 and names[-1] == "message_stop",
                   f"{name}: events {names}")
    s = e.mock_stats()
    expect(s["tls_handshakes"] == 2 and s["tls_resumed"] == 0 and s["tls_failed"] == 0,
           f"after two TLS connections: {s!r}"[:400])
    expect(s["tls_last_sni"] == "localhost", f"tls_last_sni {s['tls_last_sni']!r}")
    expect(s["last_request"]["path"] == "/v1/messages", "requests over TLS are recorded")
    e.mock_reset()
    expect_tls_stats(e, tls_handshakes=0, tls_resumed=0, tls_failed=0, tls_last_sni="")


@test(env="mock_tls")
def tls_sni_recorded(e):
    e.mock_reset()
    ctx = tls_context(e)
    with tls_conn(e, ctx, hostname="localhost") as c:
        chat_ok(c)
    expect_tls_stats(e, tls_last_sni="localhost")
    with tls_conn(e, ctx, hostname="127.0.0.1") as c:  # an IP address: no SNI is sent
        chat_ok(c)
    expect_tls_stats(e, tls_last_sni="", tls_handshakes=2)
    with tls_conn(e, tls_context(e, check_hostname=False), hostname="alt.test") as c:
        chat_ok(c)
    expect_tls_stats(e, tls_last_sni="alt.test", tls_handshakes=3)


@test(env="mock_tls")
def tls_session_resumption(e):
    for version in (TLS13, TLS12):
        e.mock_reset()
        ctx = tls_context(e, version)
        with tls_conn(e, ctx) as c:
            chat_ok(c)  # a TLS 1.3 ticket arrives after the handshake: read something first
            session = c.sock.session
            expect(not c.sock.session_reused, "the first connection cannot resume")
        expect(session is not None and (version == TLS12 or session.has_ticket),
               f"{version.name}: no session (ticket) from the mock")
        with tls_conn(e, ctx, session=session) as c:
            expect(c.sock.session_reused, f"{version.name}: the session was not resumed")
            chat_ok(c)
        expect_tls_stats(e, tls_handshakes=1, tls_resumed=1, tls_failed=0)


@test(env="mock_tls")
def tls_failed_handshakes(e):
    e.mock_reset()
    # connect and close without a byte: not a handshake, not counted
    socket.create_connection(e.mock_tls_addr, timeout=5).close()
    eventually(lambda: e.mock_stats()["connections_open"] == 1, what="the empty connection closed")
    expect_tls_stats(e, tls_failed=0)
    # garbage instead of a ClientHello: plain HTTP, then binary junk
    for n, junk in enumerate((build_request("GET", "/v1/models"), bytes(range(256)) * 4), 1):
        with Conn(e.mock_tls_addr, 5) as c:
            c.try_send(junk)
            expect(c.wait_closed(5), "the mock must close a connection that is not TLS")
            expect(b"HTTP/" not in bytes(c.buf), f"answered in plain HTTP: {bytes(c.buf[:100])!r}")
        eventually(lambda: tls_stats(e)["tls_failed"] == n, what=f"tls_failed == {n}")
    # the client rejects our certificate: unknown CA, then a name it does not cover
    rejects = ((tls_context(e, cafile=e.tls["other_ca"]["cert"]), "localhost"),
               (tls_context(e), "alt.test"))
    for n, (ctx, hostname) in enumerate(rejects, 3):
        try:
            tls_conn(e, ctx, hostname=hostname).close()
            raise AssertionError(f"the handshake with {hostname} should have failed")
        except ssl.SSLCertVerificationError:
            pass
        eventually(lambda: tls_stats(e)["tls_failed"] == n, what=f"tls_failed == {n}")
    # a ClientHello, then the client goes away without an alert
    out = ssl.MemoryBIO()
    client = tls_context(e).wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    with socket.create_connection(e.mock_tls_addr, timeout=5) as sock:
        sock.sendall(out.read())
        expect(sock.recv(1 << 16), "no ServerHello for the ClientHello")
    eventually(lambda: tls_stats(e)["tls_failed"] == 5, what="tls_failed == 5")
    expect_tls_stats(e, tls_handshakes=0, tls_resumed=0, tls_last_sni="")
    with tls_conn(e, tls_context(e)) as c:  # the mock still serves TLS
        chat_ok(c)
    expect_tls_stats(e, tls_handshakes=1, tls_failed=5)


class _BioSocket:
    """A socket-like TLS client on memory BIOs: send_records() puts several
    TLS records into one TCP write, so the mock receives them in one read."""

    def __init__(self, sock, ctx, hostname):
        self.raw = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=hostname)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.raw.sendall(self.out.read())
                data = self.raw.recv(65536)
                if not data:
                    raise AssertionError("EOF during the handshake")
                self.inc.write(data)
        # the client's last flight (Finished) stays queued: it goes out with
        # the first records of application data

    def send_records(self, pieces):
        for p in pieces:
            self.obj.write(p)
        self.raw.sendall(self.out.read())

    def sendall(self, data):
        self.send_records([data])

    def settimeout(self, t):
        self.raw.settimeout(t)

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                pending = self.out.read()  # e.g. a KeyUpdate answer
                if pending:
                    self.raw.sendall(pending)
                data = self.raw.recv(65536)
                if not data:
                    return b""
                self.inc.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def close(self):
        self.raw.close()


@test(env="mock_tls", timeout=60)
def tls_records_in_one_read(e):
    # The handshake's last flight and three requests, each its own TLS record,
    # in one TCP write: after one read the mock holds them all (in the socket
    # buffer or decrypted inside SSL, where epoll cannot see them), so it must
    # read on until SSL_ERROR_WANT_READ or the later requests would never be
    # answered.
    for version in (TLS13, TLS12):
        c = Conn(e.mock_tls_addr, 10)
        with c:
            c.sock = _BioSocket(c.sock, tls_context(e, version), "localhost")
            models = [f"m-rec-{i}" for i in range(3)]
            c.sock.send_records([build_request("POST", "/v1/chat/completions", chat_body(m))
                                 for m in models])
            got = [expect_json_response(c.read_response()).get("model") for _ in models]
            expect(got == models, f"{version.name}: answers for {got}, expected {models} in order")
    # large bodies both ways: many records, partial SSL_writes
    with tls_conn(e, tls_context(e)) as c:
        c.send(build_request("POST", "/v1/embeddings", {"model": "emb", "input": "a" * (3 << 20)}))
        r = c.read_response(30)
        expect_status(r, 200)
        expect(e.last_request()["body_len"] >= 3 << 20, "the whole 3 MiB body arrived")
        c.send(build_request("POST", "/v1/chat/completions", chat_body("m-big"),
                             {"x-mock-response-bytes": 4000000}))
        r = c.read_response(30)
        expect_status(r, 200)
        expect(3900000 <= len(r.body) <= 4100000, f"body {len(r.body)} bytes, expected ~4000000")
        r.json()
        chat_ok(c)  # and the connection is still good


@test(env="mock_tls")
def tls_close_notify_only_on_clean_close(e):
    ctx = tls_context(e)
    # Connection: close: the answer, then close_notify (a clean TLS EOF)
    with tls_conn(e, ctx, suppress_ragged_eofs=False) as c:
        c.send(build_request("POST", "/v1/chat/completions", chat_body("m"), {"Connection": "close"}))
        expect_json_response(c.read_response())
        try:
            expect(c.sock.recv(100) == b"", "nothing may follow the answer")
        except ssl.SSLEOFError:
            raise AssertionError("the mock closed without close_notify after a complete answer")
    # x-mock-disconnect-after cuts the stream: no close_notify, so the client
    # can tell truncation from a complete answer
    with tls_conn(e, ctx, suppress_ragged_eofs=False) as c:
        c.send(build_request("POST", "/v1/chat/completions", chat_body("m", stream=True),
                             {"x-mock-disconnect-after": 2}))
        try:
            c.read_stream(5)
            raise AssertionError("a cut stream must end in an unexpected EOF")
        except ssl.SSLEOFError:
            pass


@test(env="mock_tls")
def tls_client_gone_cancels(e):
    # a client that goes away during a delayed answer or a slow stream: the
    # mock closes its side too (connections_open drops back)
    ctx = tls_context(e)

    def open_conns():
        return e.mock_stats()["connections_open"]  # the stats connection included
    for headers in ({"x-mock-first-byte-delay-ms": 20000},
                    {"x-mock-token-delay-ms": 200, "x-mock-tokens": 100}):
        eventually(lambda: open_conns() == 1, what="no connection left over")
        with tls_conn(e, ctx) as c:
            c.send(build_request("POST", "/v1/chat/completions", chat_body("m", stream=True), headers))
            if "x-mock-tokens" in headers:
                expect_status(c.read_head(), 200)
            eventually(lambda: open_conns() == 2, what="the TLS connection open")
        eventually(lambda: open_conns() == 1, what=f"{headers}: the mock closed too")


@test(env="mock_tls")
def tls_plain_listener_unchanged(e):
    e.mock_reset()
    expect_json_response(post(e, "/v1/chat/completions", chat_body("m-plain")))
    r = stream(e, "/v1/chat/completions", chat_body("m-plain", stream=True), {"x-mock-tokens": 3})
    expect(len(openai_content_deltas(sse_data(r.events)[:-1])) == 3, "plain stream")
    # --listen stays plain HTTP: a TLS client gets no handshake there
    try:
        tls_conn(e, tls_context(e), addr=e.mock_addr, timeout_s=5).close()
        raise AssertionError("a TLS handshake succeeded on the plain listener")
    except (ssl.SSLError, ConnectionResetError):
        pass
    expect_tls_stats(e, tls_handshakes=0, tls_resumed=0, tls_failed=0)


@test(env="mock_tls", timeout=60)
def tls_only_listener_rsa_chain(e):
    # --tls-cert without --tls-listen: --listen itself is TLS (both ready lines
    # name it); an RSA certificate given as a chain file (leaf, then the CA)
    certs = e.tls
    srv = Server("sluice-mock", [MOCK_BIN, "--listen", "127.0.0.1:0", "--threads", "1",
                                 "--tls-cert", certs["rsa"]["fullchain"], "--tls-key", certs["rsa"]["key"]],
                 "sluice-mock", os.path.join(os.path.dirname(e.mock.log_path), "mock.tls_only.log"))
    try:
        addr = srv.start()
        expect(srv.tls_addr == addr, f"tls ready on {srv.tls_addr}, ready on {addr}")
        for version, kx in ((TLS12, "RSA"), (TLS13, "")):
            ctx = ssl.create_default_context(cafile=certs["ca"]["cert"])
            ctx.minimum_version = ctx.maximum_version = version
            with tls_conn(e, ctx, addr=addr) as c:
                expect(kx in c.sock.cipher()[0], f"{version.name}: cipher {c.sock.cipher()}")
                chat_ok(c)
                c.send(build_request("GET", "/mock/stats"))
                s = expect_json_response(c.read_response())
        expect(s["tls_handshakes"] == 2 and s["tls_failed"] == 0, f"stats {s!r}"[:300])
        with Conn(addr, 5) as c:  # plain HTTP here is garbage
            c.try_send(build_request("GET", "/v1/models"))
            expect(c.wait_closed(5), "plain HTTP on a TLS listener must be closed")
        expect(not srv.problems(), f"{srv.problems()}")
    finally:
        problems = srv.stop()
    expect(not problems, f"{problems}")


@test(env="mock_tls")
def tls_bad_options(e):
    certs = e.tls

    def run(*args):
        return subprocess.run([MOCK_BIN, "--listen", "127.0.0.1:0", *args], capture_output=True,
                              text=True, timeout=10, stdin=subprocess.DEVNULL)
    cases = [
        (("--tls-cert", certs["localhost"]["cert"]), "both --tls-cert and --tls-key"),
        (("--tls-listen", "127.0.0.1:0"), "both --tls-cert and --tls-key"),
        (("--tls-cert", certs["localhost"]["cert"], "--tls-key", certs["alt"]["key"]), "MISMATCH"),
        (("--tls-cert", certs["localhost"]["cert"], "--tls-key", certs["rsa"]["key"]), "MISMATCH"),
        (("--tls-cert", certs["localhost"]["cert"], "--tls-key", "/nonexistent.key"), "--tls-key"),
        (("--tls-cert", "/nonexistent.pem", "--tls-key", certs["localhost"]["key"]), "--tls-cert"),
        (("--tls-cert", certs["localhost"]["cert"], "--tls-key", certs["localhost"]["key"],
          "--tls-listen", "nohost"), "expected HOST:PORT"),
    ]
    for args, msg in cases:
        r = run(*args)
        expect(r.returncode == 2 and msg in r.stderr, f"{args}: status {r.returncode}, stderr {r.stderr!r}")
        expect("ready on" not in r.stderr, f"{args}: started anyway")


@test(env="mock_tls")
def tls_faults(e):
    e.mock_reset()
    ctx = tls_context(e)
    path = "/v1/chat/completions"
    with tls_conn(e, ctx) as c:
        expect_status(fault_post(c, path, "key=sk-a;ra=2;429", key="sk-a"), 429)
        expect_json_response(fault_post(c, path, "key=sk-a;ra=2;429", key="sk-b"))
    # TLS on memory BIOs: the raw socket tells an RST from a FIN
    for kind, want in (("reset", "reset"), ("close", "eof")):
        with Conn(e.mock_tls_addr) as c:
            c.sock = _BioSocket(c.sock, ctx, "localhost")
            c.send(fault_request(path, f"key=sk-a;{kind}", key="sk-a"))
            data, how = read_until_closed(c.sock)
            expect(data == b"" and how == want, f"TLS {kind}: {how} after {data[:100]!r}")
    with Conn(e.mock_tls_addr) as c:
        c.sock = _BioSocket(c.sock, ctx, "localhost")
        c.send(fault_request("/v1/messages", "midstream", key="sk-a", stream=True))
        data, how = read_until_closed(c.sock)
        expect(how == "reset" and data.startswith(b"HTTP/1.1 200 ") and
               data.count(b'"type":"text_delta"') == 2 and b"message_stop" not in data,
               f"TLS midstream: {how} {data[-200:]!r}")
    with tls_conn(e, ctx) as c:
        t0 = time.monotonic()
        r = fault_post(c, path, "key=sk-a;delay:300", key="sk-a")
        expect_json_response(r)
        expect(r.t_head - t0 >= 0.28, f"TLS delay: head after {r.t_head - t0:.3f}s")
    s = e.mock_stats()
    expect(s["faults_injected"] == 5 and s["requests_by_key"] == {"sk-a": 5, "sk-b": 1},
           f"faults_injected {s['faults_injected']}, requests_by_key {s['requests_by_key']!r}")


@test(env="mock_tls")
def faults_across_threads(e):
    # 2 mock threads: a request id's attempts and a key's requests are
    # counted together whichever thread a connection lands on
    e.mock_reset()
    rid = new_rid()
    got = []
    for i in range(8):
        if i % 2:
            with tls_conn(e, tls_context(e)) as c:
                got.append(fault_post(c, "/v1/messages", "times=5;503", key="sk-t", rid=rid).status)
        else:
            with Conn(e.mock_addr) as c:
                got.append(fault_post(c, "/v1/messages", "times=5;503", key="sk-t", rid=rid).status)
    expect(got == [503] * 5 + [200] * 3, f"attempts: {got}")
    s = e.mock_stats()
    expect(s["requests_by_key"] == {"sk-t": 8} and s["faults_injected"] == 5,
           f"requests_by_key {s['requests_by_key']!r}, faults_injected {s['faults_injected']}")


if __name__ == "__main__":
    main()
