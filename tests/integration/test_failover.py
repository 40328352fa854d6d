"""Retries and failover (issue 7, SPEC 4): several keys per provider and
targets per model, retries before the first byte on another key or target
(re-converted for a target of the other format), 429 cooldowns with
Retry-After, 503 overloaded when every route cools, circuits that open and
recover, timeouts, no retry after the first byte, and a soak with random
faults that leaks nothing. The mock's x-mock-fault header scripts faults per
API key or per attempt (tools/mock.md)."""

import json
import os
import random
import re
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (ANTHROPIC_VERSION, CLIENT_KEY, TIME_SCALE, Closed, Conn,  # noqa: E402
                     build_request, chat_body, closed_port, env, eventually, expect,
                     expect_error, main, messages_body, sse_data, sse_event_names, test)
from usagelog_reader import read_log  # noqa: E402

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": ANTHROPIC_VERSION}


def providers(port, dead_port):
    return {
        # two keys on one provider
        "two-keys": {"base_url": f"http://127.0.0.1:{port}/v1", "format": "openai",
                     "keys": [{"key": "sk-a", "weight": 1}, {"key": "sk-b", "weight": 1}]},
        "one-key": {"base_url": f"http://127.0.0.1:{port}/v1", "format": "openai",
                    "keys": ["sk-one"]},
        "down": {"base_url": f"http://127.0.0.1:{dead_port}/v1", "format": "openai",
                 "keys": ["sk-down"], "timeouts": {"connect_ms": 1000}},
        "anthropic-up": {"base_url": f"http://127.0.0.1:{port}", "format": "anthropic",
                         "keys": ["sk-ant"], "anthropic_version": ANTHROPIC_VERSION},
        "flaky": {"base_url": f"http://127.0.0.1:{port}/v1", "format": "openai",
                  "keys": ["sk-flaky"], "timeouts": {"first_byte_ms": int(600 * TIME_SCALE),
                                                     "idle_ms": int(800 * TIME_SCALE)}},
    }


def models():
    return {
        "m-two-keys": {"targets": [{"provider": "two-keys", "model": "gpt-4o-mini"}]},
        "m-one-key": {"targets": [{"provider": "one-key", "model": "gpt-4o-mini"}]},
        # the first target is down: the client must not notice
        "m-failover": {"targets": [
            {"provider": "down", "model": "gpt-4o-mini", "priority": 1},
            {"provider": "anthropic-up", "model": "claude-sonnet-4-5-20250929", "priority": 2}]},
        "m-flaky": {"targets": [{"provider": "flaky", "model": "gpt-4o-mini"}]},
    }


def overrides(port):
    return {"providers": providers(port, closed_port()), "models": models(),
            "routing": {"backoff_ms": 20, "backoff_max_ms": 100,
                        "circuit_failures": 1000, "circuit_window_ms": 10000,
                        "circuit_open_ms": 1000}}


env("fo", overrides)
env("fo_backoff", lambda port: dict(overrides(port), routing={
    "backoff_ms": 400, "backoff_max_ms": 400}))
env("fo_strict", lambda port: dict(overrides(port), routing={
    "backoff_ms": 10, "backoff_max_ms": 20, "retry_unconfirmed": False}))
env("fo_circuit", lambda port: dict(overrides(port), routing={
    "backoff_ms": 10, "backoff_max_ms": 20, "attempts_max": 1,
    "circuit_failures": 3, "circuit_window_ms": 5000, "circuit_open_ms": int(800 * TIME_SCALE)}))
# idle pooled upstream connections close after keepalive_ms: once the soak
# is over the gateway's fds and the mock's connections return to the start
# (a random 429 here is noise, not an exhausted key: it cools its key 1 ms)
env("fo_soak", lambda port: dict(overrides(port), routing={
    "backoff_ms": 5, "backoff_max_ms": 40, "attempts_max": 4, "circuit_failures": 1000000,
    "cooldown_ms": 1, "cooldown_max_ms": 1},
    timeouts={"keepalive_ms": 1000}), mock_threads=2)


def chat(e, model, headers=None, stream=False, **kw):
    with Conn(e.addr) as c:
        c.send(build_request("POST", "/v1/chat/completions", chat_body(model=model, stream=stream,
                                                                        **kw),
                             dict(AUTH, **(headers or {}))))
        return c.read_stream() if stream else c.read_response()


def stats(e):
    return e.mock_stats()


def by_key(e):
    return stats(e).get("requests_by_key", {})


def attempts_header(r):
    v = r.header("x-sluice-attempts")
    return int(v) if v else 1


@test(env="fo", fresh=True)
def rate_limited_key_fails_over_to_the_other_key(e):
    e.mock_reset()
    r = chat(e, "m-two-keys", {"x-mock-fault": "key=sk-a;ra=30;429"})
    expect(r.status == 200, f"{r.status} {r.body[:200]}")
    keys = by_key(e)
    # whichever key came first, sk-b answered; sk-a at most once
    expect(keys.get("sk-b", 0) == 1 and keys.get("sk-a", 0) <= 1, f"requests by key: {keys}")
    expect(attempts_header(r) == 1 + keys.get("sk-a", 0), f"x-sluice-attempts {attempts_header(r)}")
    # sk-a cools down for 30 s: the next requests all go to sk-b, first time
    e.mock_reset()
    for _ in range(6):
        r = chat(e, "m-two-keys", {"x-mock-fault": "key=sk-a;ra=30;429"})
        expect(r.status == 200 and attempts_header(r) == 1, f"{r.status} attempts {attempts_header(r)}")
    expect(by_key(e) == {"sk-b": 6}, f"a cooling key was used: {by_key(e)}")


@test(env="fo", fresh=True)
def every_key_rate_limited_is_503_with_the_earliest_recovery(e):
    e.mock_reset()
    r = chat(e, "m-two-keys", {"x-mock-fault": "key=sk-a;ra=7;429, key=sk-b;ra=4;429"})
    expect_error(r, 503, "overloaded")
    ra = int(r.header("retry-after") or 0)
    expect(ra in (3, 4), f"Retry-After {ra}, expected the earlier recovery (4 s)")
    expect(sum(by_key(e).values()) == 2, f"attempts: {by_key(e)}")
    # now, without an upstream call
    before = stats(e)["requests"]
    t0 = time.monotonic()
    r = chat(e, "m-two-keys")
    expect_error(r, 503, "overloaded")
    expect(1 <= int(r.header("retry-after") or 0) <= 4, f"Retry-After {r.header('retry-after')}")
    expect(stats(e)["requests"] == before + 1, "the mock was called while every key cooled")
    expect(time.monotonic() - t0 < 1, "the 503 was not immediate")
    # Anthropic shape too
    with Conn(e.addr) as c:
        c.send(build_request("POST", "/v1/messages", messages_body(model="m-two-keys"), XKEY))
        r = c.read_response()
    expect_error(r, 503, "overloaded", shape="anthropic")


@test(env="fo", fresh=True)
def a_lone_keys_429_is_relayed(e):
    r = chat(e, "m-one-key", {"x-mock-fault": "ra=9;429"})
    expect(r.status == 429 and r.header("retry-after") == "9",
           f"{r.status} Retry-After {r.header('retry-after')}")


@test(env="fo", fresh=True)
def provider_down_fails_over_to_the_other_format(e):
    for stream in (False, True):
        r = chat(e, "m-failover", stream=stream)
        expect(r.status == 200, f"stream={stream}: {r.status} {r.body[:300] if not stream else ''}")
        if stream:
            datas = [d for d in sse_data(r.events) if d != "[DONE]"]
            expect(datas and all(d.get("object") == "chat.completion.chunk" for d in datas),
                   "the stream from the Anthropic target was not converted to chat chunks")
            expect("[DONE]" in sse_data(r.events), "no [DONE]")
        else:
            j = r.json()
            expect(j.get("object") == "chat.completion" and j["choices"][0]["message"]["content"],
                   f"not a chat completion: {r.body[:300]}")
        expect(attempts_header(r) == 2, f"x-sluice-attempts {attempts_header(r)}")
    last = e.last_request()
    expect(last.get("path") == "/v1/messages", f"the mock last saw {last.get('path')}")


@test(env="fo", fresh=True)
def reset_or_5xx_before_headers_is_retried(e):
    for fault in ("times=1;reset", "times=1;close", "times=2;503", "times=1;529", "times=1;500"):
        e.mock_reset()
        r = chat(e, "m-one-key", {"x-mock-fault": fault})
        n = 2 if fault.startswith("times=1") else 3
        expect(r.status == 200, f"{fault}: {r.status} {r.body[:200]}")
        expect(attempts_header(r) == n, f"{fault}: x-sluice-attempts {attempts_header(r)}")
        expect(stats(e)["requests"] == n + 1, f"{fault}: the mock saw {stats(e)['requests']}")
    # the budget: attempts_max (3) then the last answer goes to the client
    e.mock_reset()
    r = chat(e, "m-one-key", {"x-mock-fault": "503"})
    expect(r.status == 503 and attempts_header(r) == 3, f"{r.status} attempts {attempts_header(r)}")


@test(env="fo", fresh=True)
def no_retry_after_the_first_byte(e):
    e.mock_reset()
    r = chat(e, "m-one-key", {"x-mock-fault": "times=1;midstream"}, stream=True)
    expect(r.status == 200, f"{r.status}")
    # the client saw a stream that ends in an error (or is cut), not a retry
    expect("[DONE]" not in sse_data(r.events), "a cut stream must not look complete")
    expect(stats(e)["requests"] == 2, f"retried after the first byte: {stats(e)['requests']}")
    # Anthropic client: a clean error event
    e.mock_reset()
    with Conn(e.addr) as c:
        c.send(build_request("POST", "/v1/messages", messages_body(model="m-one-key", stream=True),
                             dict(XKEY, **{"x-mock-fault": "times=1;midstream"})))
        r = c.read_stream()
    names = sse_event_names(r.events)
    expect(r.status == 200 and names and names[-1] == "error",
           f"an Anthropic stream cut upstream must end with an error event: {names}")


@test(env="fo", fresh=True)
def slow_first_byte_is_504_after_the_attempts(e):
    t0 = time.monotonic()
    r = chat(e, "m-flaky", {"x-mock-first-byte-delay-ms": int(3000 * TIME_SCALE)})
    took = time.monotonic() - t0
    expect_error(r, 504, "upstream_timeout")
    expect(attempts_header(r) == 3, f"x-sluice-attempts {attempts_header(r)}")
    expect(took < 3 * 0.6 * TIME_SCALE + 1.5, f"took {took:.1f}s")
    # a slow first attempt, a quick second: the client gets the second
    e.mock_reset()
    r = chat(e, "m-flaky", {"x-mock-fault": f"times=1;delay:{int(3000 * TIME_SCALE)}"})
    expect(r.status == 200 and attempts_header(r) == 2, f"{r.status} {attempts_header(r)}")


@test(env="fo", fresh=True)
def idle_stream_is_cut_not_retried(e):
    e.mock_reset()
    r = chat(e, "m-flaky", {"x-mock-tokens": 5, "x-mock-token-delay-ms": int(3000 * TIME_SCALE)},
             stream=True)
    expect(r.status == 200 and "[DONE]" not in sse_data(r.events), "an idle stream must be cut")
    expect(stats(e)["requests"] == 2, "an idle stream was retried")


@test(env="fo", fresh=True)
def client_abort_mid_stream_cancels_the_upstream_at_once(e):
    base = stats(e)["connections_open"]
    # mid-stream: the upstream connection closes within a fraction of a second
    c = Conn(e.addr, 10)
    c.send(build_request("POST", "/v1/chat/completions", chat_body(model="m-one-key", stream=True),
                         dict(AUTH, **{"x-mock-tokens": 500, "x-mock-token-delay-ms": 20})))
    r = c.read_head()
    expect(r.status == 200, f"{r.status}")
    eventually(lambda: stats(e)["connections_open"] >= base + 1, 3, what="the upstream stream")
    t0 = time.monotonic()
    c.close()
    eventually(lambda: stats(e)["connections_open"] <= base, 2, interval_s=0.01,
               what="the upstream connection closed after the client left")
    took = time.monotonic() - t0
    expect(took < 0.5 * TIME_SCALE, f"the upstream was cancelled {took * 1000:.0f} ms later")


@test(env="fo_backoff", fresh=True)
def a_client_gone_during_a_backoff_gets_no_more_attempts(e):
    e.mock_reset()
    c = Conn(e.addr, 10)
    c.send(build_request("POST", "/v1/chat/completions", chat_body(model="m-two-keys"),
                         dict(AUTH, **{"x-mock-fault": "times=1;503"})))
    # the first attempt's 503 is in; the backoff (200..400 ms here) runs
    eventually(lambda: sum(by_key(e).values()) >= 1, 3, interval_s=0.005,
               what="the first attempt")
    c.close()
    t0 = time.monotonic()
    # past any backoff of this env, a retry would have reached the mock
    while time.monotonic() - t0 < 0.6 * TIME_SCALE:
        expect(sum(by_key(e).values()) == 1,
               f"an attempt was made for a client that had left: {by_key(e)}")
        time.sleep(0.05)
    # and the gateway is fine
    r = chat(e, "m-two-keys")
    expect(r.status == 200, f"{r.status}")


@test(env="fo_strict", fresh=True)
def retry_unconfirmed_off_retries_only_proven_failures(e):
    """routing.retry_unconfirmed false: a failure after the whole request
    went out that does not prove the provider did not start (a reset, a
    500, a first-byte timeout) is answered, not retried; 429, 503, 529 and
    refused connections still are."""
    for fault, status in (("times=1;reset", 502), ("times=1;500", 500)):
        e.mock_reset()
        r = chat(e, "m-one-key", {"x-mock-fault": fault})
        expect(r.status == status and attempts_header(r) == 1,
               f"{fault}: {r.status} after {attempts_header(r)} attempts")
        expect(sum(by_key(e).values()) == 1, f"{fault}: retried: {by_key(e)}")
    r = chat(e, "m-flaky", {"x-mock-fault": f"times=1;delay:{int(3000 * TIME_SCALE)}"})
    expect_error(r, 504, "upstream_timeout")
    expect(attempts_header(r) == 1, f"a first-byte timeout was retried: {attempts_header(r)}")
    for fault in ("times=1;503", "times=1;529"):
        e.mock_reset()
        r = chat(e, "m-one-key", {"x-mock-fault": fault})
        expect(r.status == 200 and attempts_header(r) == 2,
               f"{fault}: {r.status} after {attempts_header(r)} attempts")
    r = chat(e, "m-failover")
    expect(r.status == 200 and attempts_header(r) == 2, f"refused connection: {r.status}")


@test(env="fo_circuit", fresh=True)
def circuit_opens_after_failures_and_recovers(e):
    e.mock_reset()
    for i in range(3):
        r = chat(e, "m-one-key", {"x-mock-fault": "500"})
        expect(r.status == 500, f"failure {i}: {r.status}")
    seen = stats(e)["requests"]
    r = chat(e, "m-one-key")
    expect_error(r, 503, "overloaded")
    expect(r.header("retry-after"), "no Retry-After on an open circuit")
    expect(stats(e)["requests"] == seen + 1, "the open circuit let a request through")
    # after circuit_open_ms one probe goes through; it succeeds: closed
    eventually(lambda: chat(e, "m-one-key").status == 200, 5 * TIME_SCALE, interval_s=0.1,
               what="the circuit half-opening")
    for _ in range(3):
        expect(chat(e, "m-one-key").status == 200, "the circuit did not close")


@test(env="fo", fresh=True)
def usage_log_records_attempts_and_the_final_target(e):
    r = chat(e, "m-failover")
    expect(r.status == 200, f"{r.status}")
    rid = r.header("x-request-id")
    # the record lands within flush_ms; read until it is there
    data_dir = e.config["data_dir"]

    def rec():
        for x in read_log(data_dir).values():
            if x.get("request_id") == rid:
                return x
        return None
    x = eventually(rec, 5, what="the usage record")
    expect(x["attempts"] == 2 and x["provider"] == "anthropic-up" and
           x["upstream_model"] == "claude-sonnet-4-5-20250929",
           f"record: attempts {x['attempts']} provider {x['provider']} "
           f"upstream_model {x['upstream_model']}")


@test(env="fo_soak", fresh=True, timeout=300)
def soak_with_random_faults_leaks_nothing(e):
    """A bounded soak: a share of upstream attempts fail at random (429,
    5xx, resets, slow first bytes, mid-stream resets); every client request
    ends in a success or a well-formed error, and afterwards no upstream
    connection or gateway slot is left behind."""
    duration = float(os.environ.get("SLUICE_SOAK_S") or 20)
    fault = "rate=4;reset, rate=4;close, rate=4;429, rate=4;503, rate=3;529, " \
            "rate=3;500, rate=2;midstream, rate=2;delay:50"
    pid = e.gateway.proc.pid

    def fds():
        return len(os.listdir(f"/proc/{pid}/fd"))
    base_fds, base_conns = fds(), stats(e)["connections_open"]
    ok = [0]
    errors = [0]
    bad = []
    stop = time.monotonic() + duration
    lock = threading.Lock()

    def client(seed):
        rng = random.Random(seed)
        while time.monotonic() < stop:
            stream = rng.random() < 0.5
            model = rng.choice(["m-two-keys", "m-one-key", "m-failover"])
            try:
                with Conn(e.addr, 15) as c:
                    c.send(build_request("POST", "/v1/chat/completions",
                                         chat_body(model=model, stream=stream),
                                         dict(AUTH, **{"x-mock-fault": fault})))
                    r = c.read_stream(15) if stream else c.read_response(15)
                    if r.status == 200:
                        if stream and "[DONE]" not in sse_data(r.events):
                            # cut mid-stream (no retry after the first byte)
                            pass
                        with lock:
                            ok[0] += 1
                    elif r.status in (429, 500, 502, 503, 504, 529):
                        j = r.json() if not stream or r.body else {}
                        if r.body and not isinstance(j.get("error"), dict):
                            with lock:
                                bad.append(f"{r.status} body {r.body[:120]!r}")
                        with lock:
                            errors[0] += 1
                    else:
                        with lock:
                            bad.append(f"status {r.status}")
            except Closed:
                with lock:
                    bad.append("the gateway closed a connection without an answer")
            except Exception as exc:  # noqa: BLE001
                with lock:
                    bad.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 60)
    expect(not bad, f"{len(bad)} bad outcomes, e.g. {bad[:3]}")
    expect(ok[0] > 50, f"only {ok[0]} successes ({errors[0]} errors)")
    expect(ok[0] > errors[0] * 4, f"{ok[0]} successes vs {errors[0]} errors: retries do not help")
    # nothing left behind: once pooled connections idle out, the gateway has
    # the fds it started with and the mock no connection from it
    eventually(lambda: fds() <= base_fds and stats(e)["connections_open"] <= base_conns,
               10 * TIME_SCALE, interval_s=0.2,
               what=f"the gateway back to {base_fds} fds and the mock to {base_conns} connections")
    print(f"# soak: {ok[0]} ok, {errors[0]} errors in {duration:.0f}s")


if __name__ == "__main__":
    main()
