"""The mock upstream alone: each endpoint's wire shape, non-stream and stream,
and every fault-injection header (docs/TEAM-CONTRACT.md, "Mock upstream")."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (Conn, build_request, chat_body, env, expect, expect_status, main,  # noqa: E402
                     messages_body, sse_data, sse_event_names, test)

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
    expect(len(lr["body"]) == 4096, f"last_request.body holds the first 4096 bytes, not {len(lr['body'])}")


@test(env="mock")
def pipelined_and_chunked_request(e):
    with Conn(e.mock_addr) as c:
        c.send(build_request("POST", "/v1/embeddings", chunks=['{"model":"e",', '"input":"hi"}']) +
               build_request("GET", "/v1/models"))
        r1, r2 = c.read_response(), c.read_response()
        expect_status(r1, 200)
        expect_status(r2, 200)
        expect(r1.json()["object"] == "list" and r1.json()["data"][0]["object"] == "embedding", "embedding first")


if __name__ == "__main__":
    main()
