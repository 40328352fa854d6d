"""The gateway as a proxy: routes answered from config, requests rewritten for
the provider (model, key, hop-by-hop headers, path), streams relayed as they
arrive, upstream statuses relayed."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (ANTHROPIC_KEY, ANTHROPIC_UPSTREAM_MODEL, ANTHROPIC_VERSION, CLIENT_KEY,  # noqa: E402
                     OPENAI_KEY, OPENAI_UPSTREAM_MODEL, Conn, build_request, chat_body, expect,
                     expect_error, expect_status, header_map, main, messages_body, sse_data,
                     sse_event_names, test)

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": ANTHROPIC_VERSION}


def client_key_absent(lr):
    for k, v in lr.get("headers", []):
        expect(CLIENT_KEY not in v, f"client key forwarded upstream in {k}: {v}")


@test
def healthz(e):
    r = e.request("GET", "/healthz")
    expect_status(r, 200)
    expect(r.body.strip() == b"ok", f"body {r.body!r}")
    expect(r.header("x-request-id"), "x-request-id")


@test
def models_list(e):
    r = e.request("GET", "/v1/models", headers=AUTH)
    expect_status(r, 200)
    j = r.json()
    expect(j.get("object") == "list", f"object {j.get('object')!r}")
    ids = [m.get("id") for m in j.get("data", [])]
    for want in ("gpt-4o-mini", "claude-sonnet-4-5", "text-embedding-3-small"):
        expect(want in ids, f"{want} missing from {ids}")
    expect(all(m.get("object") == "model" for m in j["data"]), "entries are model objects")
    # SPEC 1: each entry also carries pricing and the context window
    gpt = next(m for m in j["data"] if m.get("id") == "gpt-4o-mini")
    expect(gpt.get("context_window") == 128000, f"context_window: {gpt}")
    expect("0.15" in json.dumps(gpt) and "0.6" in json.dumps(gpt), f"pricing missing: {gpt}")


@test
def models_get_and_alias(e):
    r = e.request("GET", "/v1/models/gpt-4o-mini", headers=AUTH)
    expect_status(r, 200)
    j = r.json()
    expect(j.get("id") == "gpt-4o-mini" and j.get("object") == "model", f"{j!r}"[:300])
    r = e.request("GET", f"/v1/models/{ANTHROPIC_UPSTREAM_MODEL}", headers=AUTH)
    expect_status(r, 200)
    expect(r.json().get("id") == "claude-sonnet-4-5", f"alias resolves to {r.json().get('id')!r}")
    r = e.request("GET", "/openai/v1/models/claude-sonnet-4-5", headers=AUTH)
    expect_status(r, 200)
    expect_error(e.request("GET", "/v1/models/no-such-model", headers=AUTH), 404, "not_found")


@test
def chat_nonstream_rewrites_request(e):
    headers = dict(AUTH, **{
        "Connection": "keep-alive, X-Hop-Named",
        "X-Hop-Named": "must-go",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X-Foo",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "X-End-To-End": "kept",
    })
    r = e.request("POST", "/v1/chat/completions", chat_body(), headers)
    expect_status(r, 200)
    j = r.json()
    expect(j.get("object") == "chat.completion", f"{j!r}"[:300])
    expect(r.header("x-request-id"), "x-request-id")
    lr = e.last_request()
    expect(lr.get("method") == "POST" and lr.get("path") == "/v1/chat/completions", f"upstream {lr.get('method')} {lr.get('path')}")
    h = header_map(lr["headers"])
    expect(h.get("authorization") == [f"Bearer {OPENAI_KEY}"], f"upstream Authorization {h.get('authorization')}")
    client_key_absent(lr)
    for hop in ("keep-alive", "te", "trailer", "proxy-authorization", "x-hop-named"):
        expect(hop not in h, f"hop-by-hop header {hop} forwarded: {h.get(hop)}")
    expect(all("x-hop-named" not in v.lower() for v in h.get("connection", [])), "Connection names forwarded")
    expect(h.get("x-end-to-end") == ["kept"], "end-to-end header forwarded")
    body = json.loads(lr["body"])
    expect(body.get("model") == OPENAI_UPSTREAM_MODEL, f"upstream model {body.get('model')!r}")
    expect(body.get("messages") == chat_body()["messages"], "messages forwarded unchanged")


@test
def messages_nonstream_rewrites_request(e):
    r = e.request("POST", "/v1/messages", messages_body(), XKEY)
    expect_status(r, 200)
    expect(r.json().get("type") == "message", f"{r!r}")
    lr = e.last_request()
    expect(lr.get("path") == "/v1/messages", f"upstream path {lr.get('path')}")
    h = header_map(lr["headers"])
    expect(h.get("x-api-key") == [ANTHROPIC_KEY], f"upstream x-api-key {h.get('x-api-key')}")
    expect(h.get("anthropic-version") == [ANTHROPIC_VERSION], f"anthropic-version {h.get('anthropic-version')}")
    expect("authorization" not in h, f"Authorization sent to anthropic: {h.get('authorization')}")
    client_key_absent(lr)
    body = json.loads(lr["body"])
    expect(body.get("model") == ANTHROPIC_UPSTREAM_MODEL, f"upstream model {body.get('model')!r}")


@test
def messages_by_alias_with_bearer_auth(e):
    r = e.request("POST", "/v1/messages", messages_body(ANTHROPIC_UPSTREAM_MODEL), AUTH)
    expect_status(r, 200)
    lr = e.last_request()
    h = header_map(lr["headers"])
    expect(h.get("x-api-key") == [ANTHROPIC_KEY], "provider key")
    client_key_absent(lr)


@test
def route_prefixes(e):
    for prefix in ("/openai/v1", "/api/v1"):
        r = e.request("POST", f"{prefix}/chat/completions", chat_body(), AUTH)
        expect_status(r, 200)
        lr = e.last_request()
        expect(lr.get("path") == "/v1/chat/completions", f"{prefix}: upstream path {lr.get('path')}")
        r = e.request("POST", f"{prefix}/messages", messages_body(), XKEY)
        expect_status(r, 200)
        expect(e.last_request().get("path") == "/v1/messages", f"{prefix}/messages upstream path")
    r = e.request("POST", "/api/v1/messages/count_tokens", messages_body(), XKEY)
    expect_status(r, 200)
    expect(e.last_request().get("path") == "/v1/messages/count_tokens", "count_tokens path")
    expect(isinstance(r.json().get("input_tokens"), int), "count_tokens body")


@test
def embeddings_and_completions(e):
    r = e.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, AUTH)
    expect_status(r, 200)
    expect(r.json()["data"][0]["object"] == "embedding", "embedding")
    expect(e.last_request().get("path") == "/v1/embeddings", "upstream path")
    r = e.request("POST", "/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"}, AUTH)
    expect_status(r, 200)
    lr = e.last_request()
    expect(lr.get("path") == "/v1/completions", "upstream path")
    expect(json.loads(lr["body"])["model"] == OPENAI_UPSTREAM_MODEL, "model rewritten")


@test(timeout=60)
def large_response_relayed_whole(e):
    for size in (1 << 20, 8 << 20, 40 << 20):
        r = e.request("POST", "/v1/chat/completions", chat_body(),
                      dict(AUTH, **{"x-mock-response-bytes": size}), timeout_s=30)
        expect_status(r, 200)
        expect(r.complete, f"{size >> 20} MiB response cut after {len(r.body)} of "
                           f"{r.header('content-length')} bytes")
        expect(r.json()["object"] == "chat.completion", "body intact")


@test(timeout=60)
def long_stream_relayed_whole(e):
    tokens = 100000
    r = e.stream("/v1/chat/completions", chat_body(stream=True), dict(AUTH, **{"x-mock-tokens": tokens}),
                 timeout_s=30)
    expect_status(r, 200)
    datas = sse_data(r.events)
    n = sum(1 for d in datas if d != "[DONE]" for ch in d.get("choices", [])
            if (ch.get("delta") or {}).get("content"))
    expect(r.complete and datas[-1:] == ["[DONE]"],
           f"stream cut after {len(r.body)} bytes, {n} of {tokens} content events")
    expect(n == tokens, f"{n} content events, expected {tokens}")


def normalize(body):
    # Fields a mock may legitimately vary between two identical requests.
    body = re.sub(rb'"(id|created|created_at|system_fingerprint)":\s*("[^"]*"|\d+)', rb'"\1":X', body)
    return body


@test
def chat_stream_relayed_incrementally(e):
    hdrs = dict(AUTH, **{"x-mock-token-delay-ms": 100, "x-mock-tokens": 8})
    r = e.stream("/v1/chat/completions", chat_body(stream=True), hdrs)
    expect_status(r, 200)
    expect((r.header("content-type") or "").startswith("text/event-stream"), "content-type")
    expect(r.complete, "stream completed")
    times = [t for t, _ in r.events]
    expect(len(times) >= 10, f"{len(times)} events")
    span = times[-1] - times[0]
    expect(span >= 0.6, f"first event {span:.3f}s before the last: the stream was buffered")
    gaps = [b - a for a, b in zip(times, times[1:])]
    expect(sum(0.05 <= g <= 0.5 for g in gaps) >= 7, f"gap pattern lost: {[round(g, 3) for g in gaps]}")
    # byte for byte what the provider sent
    direct = e.stream("/v1/chat/completions", chat_body(OPENAI_UPSTREAM_MODEL, stream=True),
                      {"x-mock-tokens": 8}, mock=True)
    expect(normalize(r.body) == normalize(direct.body),
           f"relayed body differs from the mock's:\n{r.body[:400]!r}\nvs\n{direct.body[:400]!r}")


@test
def messages_stream_relayed(e):
    hdrs = dict(XKEY, **{"x-mock-token-delay-ms": 100, "x-mock-tokens": 5})
    r = e.stream("/v1/messages", messages_body(stream=True), hdrs)
    expect_status(r, 200)
    expect(r.complete, "stream completed")
    names = sse_event_names(r.events)
    expect(names.count("content_block_delta") == 5 and names[-1] == "message_stop", f"events {names}")
    times = [t for t, _ in r.events]
    expect(times[-1] - times[0] >= 0.4, "events arrived together: the stream was buffered")
    direct = e.stream("/v1/messages", messages_body(ANTHROPIC_UPSTREAM_MODEL, stream=True),
                      {"x-mock-tokens": 5}, mock=True)
    expect(normalize(r.body) == normalize(direct.body), "relayed body differs from the mock's")
    expect(sse_data(r.events)[0]["message"]["model"] == ANTHROPIC_UPSTREAM_MODEL, "model as the upstream sent it")


@test
def request_ids_unique(e):
    responses = []
    with Conn(e.addr) as c:
        for i in range(10):
            c.send(build_request("GET", "/healthz"))
            responses.append(c.read_response())
    for path in ("/v1/models", "/nope"):
        responses.append(e.request("GET", path))
    # the mock sends its own x-request-id: the client must see only the gateway's
    responses.append(e.request("POST", "/v1/chat/completions", chat_body(), AUTH))
    responses.append(e.stream("/v1/chat/completions", chat_body(stream=True), AUTH))
    responses.append(e.request("POST", "/v1/chat/completions", chat_body(), dict(AUTH, **{"x-mock-status": 500})))
    for r in responses:
        expect(len(r.header_all("x-request-id")) == 1,
               f"{r.status} response has x-request-id {r.header_all('x-request-id')}")
    ids = [r.header("x-request-id") for r in responses]
    expect(all(ids), f"missing x-request-id: {ids}")
    expect(len(set(ids)) == len(ids), f"duplicate x-request-id: {ids}")


@test(fresh=True)  # a 429 may cool the key down: keep it away from the shared env
def upstream_status_relayed(e):
    r = e.request("POST", "/v1/chat/completions", chat_body(),
                  dict(AUTH, **{"x-mock-status": 429, "x-mock-retry-after": 7}))
    expect_status(r, 429)
    expect(r.header("retry-after") == "7", f"Retry-After {r.header('retry-after')!r}")
    expect(r.header("x-request-id"), "x-request-id")
    j = r.json()
    expect(isinstance(j.get("error"), dict), f"provider error body relayed: {r!r}")


@test(fresh=True)
def upstream_anthropic_status_relayed(e):
    r = e.request("POST", "/v1/messages", messages_body(), dict(XKEY, **{"x-mock-status": 400}))
    expect_status(r, 400)
    j = r.json()
    expect(j.get("type") == "error", f"anthropic error body relayed: {r!r}")


@test
def cross_format_requests_are_converted(e):
    # An Anthropic client asking for an OpenAI-format model: the provider gets
    # a chat completion request, the client an Anthropic message.
    r = e.request("POST", "/v1/messages", messages_body("gpt-4o-mini"), XKEY)
    expect_status(r, 200)
    j = r.json()
    expect(j.get("type") == "message" and j.get("role") == "assistant", f"{j!r}"[:300])
    expect(j.get("model") == "gpt-4o-mini", f"model echoed as asked: {j.get('model')!r}")
    expect(j.get("stop_reason") == "end_turn", f"stop_reason {j.get('stop_reason')!r}")
    expect(j["usage"]["input_tokens"] > 0 and j["usage"]["output_tokens"] > 0, f"usage {j.get('usage')}")
    lr = e.last_request()
    expect(lr.get("path") == "/v1/chat/completions", f"upstream path {lr.get('path')}")
    h = header_map(lr["headers"])
    expect(h.get("authorization") == [f"Bearer {OPENAI_KEY}"], "provider key")
    expect("anthropic-version" not in h, "anthropic headers not sent to an OpenAI provider")
    up = json.loads(lr["body"])
    expect(up.get("model") == OPENAI_UPSTREAM_MODEL and "messages" in up, f"upstream body {up!r}"[:300])
    # And the other way round.
    r = e.request("POST", "/v1/chat/completions", chat_body("claude-sonnet-4-5"), AUTH)
    expect_status(r, 200)
    j = r.json()
    expect(j.get("object") == "chat.completion", f"{j!r}"[:300])
    expect(j["choices"][0]["finish_reason"] == "stop", f"finish_reason {j['choices'][0]}")
    lr = e.last_request()
    expect(lr.get("path") == "/v1/messages", f"upstream path {lr.get('path')}")
    up = json.loads(lr["body"])
    expect(up.get("model") == ANTHROPIC_UPSTREAM_MODEL and up.get("max_tokens", 0) > 0,
           f"upstream body needs model and max_tokens: {up!r}"[:300])


if __name__ == "__main__":
    main()
