"""Client-key authentication (SPEC 1, 2): keys on every route but /healthz,
401 without leaking the key or reaching the upstream, failed-auth IP blocking
counted across cores, per-tier and per-key model permissions, `auth.mode:
none`, key reloads on SIGHUP (new keys, revocation with a stream in flight),
and no client key text in the gateway's log."""

import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (ANTHROPIC_UPSTREAM_MODEL, ANTHROPIC_VERSION, CLIENT_KEY, TEST_TIER,  # noqa: E402
                     Conn, build_request, chat_body, env, eventually, expect, expect_error,
                     expect_status, import_key, keys_cli, main, messages_body,
                     sse_data, sse_event_names, test)

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": ANTHROPIC_VERSION}
UNKNOWN_KEY = "sk-unknown-key-00000000000000000000"

env("auth_none", {"auth": {"mode": "none"}})
env("ipblock", {"auth": {"ip_block_failures": 5, "ip_block_seconds": 2}})
env("tier_models", {"tiers": {TEST_TIER: {"models": ["gpt-4o-mini"]}}})

# Every authenticated route: (method, path, body, error shape).
ROUTES = [
    ("POST", "/v1/chat/completions", chat_body(), "openai"),
    ("POST", "/openai/v1/chat/completions", chat_body(), "openai"),
    ("POST", "/api/v1/chat/completions", chat_body(), "openai"),
    ("POST", "/v1/completions", {"model": "gpt-4o-mini", "prompt": "hi"}, "openai"),
    ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, "openai"),
    ("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, "openai"),
    ("POST", "/v1/images/generations", {"model": "gpt-4o-mini", "prompt": "a cat"}, "openai"),
    ("GET", "/v1/models", None, "openai"),
    ("GET", "/v1/models/gpt-4o-mini", None, "openai"),
    ("GET", "/api/v1/models", None, "openai"),
    ("POST", "/v1/messages", messages_body(), "anthropic"),
    ("POST", "/openai/v1/messages", messages_body(), "anthropic"),
    ("POST", "/api/v1/messages", messages_body(), "anthropic"),
    ("POST", "/v1/messages/count_tokens", messages_body(), "anthropic"),
]


# --- helpers -------------------------------------------------------------------

def mock_requests(e):
    """The mock's request counter (the stats request itself included)."""
    return e.mock_stats()["requests"]


class UpstreamCounter:
    """with UpstreamCounter(e) as u: ...; u.delta = requests the mock got."""

    def __init__(self, e):
        self.e = e

    def __enter__(self):
        self.before = mock_requests(self.e)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            # the second stats request counts itself
            self.delta = mock_requests(self.e) - self.before - 1


def expect_no_upstream(e, fn, what):
    with UpstreamCounter(e) as u:
        fn()
    expect(u.delta == 0, f"{what}: the mock received {u.delta} request(s) for refused requests")


def expect_key_not_echoed(r, *keys):
    for k in keys:
        expect(k.encode() not in r.body, f"{r.status} body echoes the key text: {r.body[:300]!r}")
        expect(k.encode() not in r.head, f"{r.status} head echoes the key text: {r.head[:400]!r}")


def ok_request(e, headers=AUTH):
    """A successful authenticated request (it also resets the failed-auth count)."""
    r = e.request("POST", "/v1/chat/completions", chat_body(), headers)
    expect_status(r, 200)
    return r


def log_text(server):
    with open(server.log_path, "rb") as f:
        return f.read()


def sighup(e):
    """Reloads the keys (SIGHUP) and waits until the gateway logs the swap.
    os.kill, not Popen.send_signal: the test runs in a forked child, where
    Popen cannot see the gateway (not its child) and would not send."""
    line = b"sluice: SIGHUP: keys reloaded"
    before = log_text(e.gateway).count(line)
    os.kill(e.gateway.proc.pid, signal.SIGHUP)
    eventually(lambda: log_text(e.gateway).count(line) > before, 5,
               what="'sluice: SIGHUP: keys reloaded' in the gateway log")


def expect_log_clean(e, keys):
    text = log_text(e.gateway)
    for k in keys:
        expect(k.encode() not in text, f"the gateway log contains a client key text ({k[:12]}...): "
                                       f"{e.gateway.log_path}")


def client_key_absent_upstream(e, *keys):
    lr = e.last_request()
    expect(lr, "the mock saw no request")
    for k, v in lr.get("headers", []):
        for key in keys:
            expect(key not in v, f"client key forwarded upstream in {k}: {v}")
    for key in keys:
        expect(key not in (lr.get("body") or ""), "client key forwarded upstream in the body")


def content_tokens(datas):
    return sum(1 for d in datas if d != "[DONE]" for ch in d.get("choices", [])
               if (ch.get("delta") or {}).get("content"))


class SlowStream(threading.Thread):
    """A streamed request read in the background; .head is set once the
    response head arrived, .r is the whole response, .t_end its end."""

    def __init__(self, e, path, body, headers, timeout_s=20):
        super().__init__(daemon=True)
        self.e, self.path, self.body, self.headers, self.timeout_s = e, path, body, headers, timeout_s
        self.head = threading.Event()
        self.r = None
        self.error = None
        self.t_end = None

    def run(self):
        try:
            with Conn(self.e.addr, self.timeout_s) as c:
                c.send(build_request("POST", self.path, self.body, self.headers))
                # read_stream parses the head first; signal it from the
                # first event instead (the head alone may be buffered)
                r = c.read_head(self.timeout_s)
                self.status = r.status
                self.head.set()
                pending = [b""]

                def feed(data, now):
                    pending[0] += data
                    while b"\n\n" in pending[0]:
                        ev, pending[0] = pending[0].split(b"\n\n", 1)
                        r.events.append((now, ev + b"\n\n"))
                if "chunked" in (r.header("transfer-encoding") or "").lower():
                    c._read_chunks(r, time.monotonic() + self.timeout_s, feed)
                else:
                    while c._fill(time.monotonic() + self.timeout_s):
                        pass
                    r.body = c._take(len(c.buf))
                    feed(r.body, time.monotonic())
                self.r = r
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.t_end = time.monotonic()
            self.head.set()

    def result(self):
        self.join(self.timeout_s + 5)
        expect(not self.is_alive(), f"stream {self.path} still running")
        if self.error:
            raise self.error
        return self.r


# --- authentication ------------------------------------------------------------

@test
def healthz_and_unknown_route_need_no_key(e):
    r = e.request("GET", "/healthz")
    expect_status(r, 200)
    r = e.request("GET", "/v1/nope")
    expect_error(r, 404, "not_found")
    r = e.request("POST", "/nope", chat_body())
    expect_error(r, 404, "not_found")


@test
def missing_key_401_on_every_route(e):
    def run():
        for method, path, body, shape in ROUTES:
            r = e.request(method, path, body)
            j = expect_error(r, 401, "authentication_error", shape)
            if shape == "openai":
                expect("code" in j["error"], f"{path}: OpenAI error without 'code': {r.body[:200]!r}")
    expect_no_upstream(e, run, "missing key")
    ok_request(e)


@test
def unknown_key_401_not_echoed(e):
    keys = [UNKNOWN_KEY, CLIENT_KEY + "x", CLIENT_KEY[:-1], CLIENT_KEY.upper()]

    def run():
        for key in keys:
            for hdrs, (method, path, body, shape) in (
                    ({"Authorization": f"Bearer {key}"}, ROUTES[0]),
                    ({"x-api-key": key}, ROUTES[0]),
                    ({"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}, ROUTES[10]),
                    ({"Authorization": f"Bearer {key}"}, ROUTES[13]),
                    ({"Authorization": f"Bearer {key}"}, ROUTES[7])):
                r = e.request(method, path, body, hdrs)
                expect_error(r, 401, "authentication_error", shape)
                expect_key_not_echoed(r, key)
    expect_no_upstream(e, run, "unknown key")  # 20 failures: under the default 50
    ok_request(e)  # keeps the failed-auth count of 127.0.0.1 low
    # not a credential: another scheme, an empty bearer
    for hdrs in ({"Authorization": f"Basic {CLIENT_KEY}"}, {"Authorization": "Bearer "},
                 {"Authorization": CLIENT_KEY}):
        r = e.request("POST", "/v1/chat/completions", chat_body(), hdrs)
        expect_error(r, 401, "authentication_error")
        expect_key_not_echoed(r, CLIENT_KEY)
    ok_request(e)


@test
def valid_key_either_header_not_forwarded(e):
    # Bearer and x-api-key each work on both formats' routes
    for path, body in (("/v1/chat/completions", chat_body()), ("/v1/messages", messages_body())):
        for hdrs in (AUTH, XKEY, {"authorization": f"bearer {CLIENT_KEY}"}):
            r = e.request("POST", path, body, hdrs)
            expect_status(r, 200)
            client_key_absent_upstream(e, CLIENT_KEY)
    for path in ("/v1/models", "/v1/models/gpt-4o-mini", "/openai/v1/models/claude-sonnet-4-5"):
        expect_status(e.request("GET", path, headers=XKEY), 200)
    r = e.request("POST", "/v1/messages/count_tokens", messages_body(), XKEY)
    expect_status(r, 200)
    client_key_absent_upstream(e, CLIENT_KEY)
    # a streamed request too
    r = e.stream("/v1/chat/completions", chat_body(stream=True), XKEY)
    expect_status(r, 200)
    expect(sse_data(r.events)[-1:] == ["[DONE]"], "stream completed")
    client_key_absent_upstream(e, CLIENT_KEY)


@test
def keep_alive_connection_authenticates_each_request(e):
    # a key on one request does not authenticate the next one on the connection
    with Conn(e.addr) as c:
        c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
        expect_status(c.read_response(), 200)
        c.send(build_request("GET", "/v1/models"))
        expect_error(c.read_response(), 401, "authentication_error")
    ok_request(e)


@test(env="auth_none")
def auth_mode_none_serves_without_keys(e):
    r = e.request("POST", "/v1/chat/completions", chat_body())
    expect_status(r, 200)
    r = e.request("POST", "/v1/messages", messages_body(), {"anthropic-version": ANTHROPIC_VERSION})
    expect_status(r, 200)
    expect_status(e.request("GET", "/v1/models"), 200)
    # whatever key a client sends is not checked, and still never goes upstream
    r = e.request("POST", "/v1/chat/completions", chat_body(), {"Authorization": f"Bearer {UNKNOWN_KEY}"})
    expect_status(r, 200)
    client_key_absent_upstream(e, UNKNOWN_KEY)
    r = e.request("POST", "/v1/messages", messages_body(), {"x-api-key": UNKNOWN_KEY})
    expect_status(r, 200)
    client_key_absent_upstream(e, UNKNOWN_KEY)


# --- IP blocking ---------------------------------------------------------------

def fail_auth(e, n, key=UNKNOWN_KEY):
    """n failed authentications, each on a new connection (so they land on
    both reactors), alternating the header and the route."""
    for i in range(n):
        if i % 2:
            r = e.request("POST", "/v1/messages", messages_body(), {"x-api-key": key})
            expect_error(r, 401, "authentication_error", "anthropic")
        else:
            r = e.request("POST", "/v1/chat/completions", chat_body(), {"Authorization": f"Bearer {key}"})
            expect_error(r, 401, "authentication_error")


def expect_blocked(r, shape="openai", block_s=2):
    expect_error(r, 403, "ip_blocked", shape)
    ra = r.header("retry-after")
    expect(ra is not None and ra.isdigit() and 1 <= int(ra) <= block_s,
           f"Retry-After {ra!r} on ip_blocked (block is {block_s}s)")


@test(env="ipblock", fresh=True)
def ip_blocked_after_failures_then_unblocked(e):
    with UpstreamCounter(e) as u:
        fail_auth(e, 5)
        t_blocked = time.monotonic()
        # now even a valid key is refused, on new connections (both cores),
        # on both formats, and without a key too
        for _ in range(3):
            expect_blocked(e.request("POST", "/v1/chat/completions", chat_body(), AUTH))
            expect_blocked(e.request("POST", "/v1/messages", messages_body(), XKEY), "anthropic")
        r = e.request("GET", "/v1/models", headers=AUTH)
        expect_blocked(r)
        expect_key_not_echoed(r, CLIENT_KEY)
        expect_status(e.request("GET", "/v1/models"), (401, 403))
    expect(u.delta == 0, f"the mock received {u.delta} request(s) from a blocked address")
    # the block ends after ip_block_seconds (2 s), and not much earlier
    r = eventually(lambda: (lambda r: r if r.status == 200 else None)(
        e.request("POST", "/v1/chat/completions", chat_body(), AUTH)), 5, 0.1,
        what="a valid key admitted again after the 2 s block")
    took = time.monotonic() - t_blocked
    expect(took >= 1.5, f"unblocked {took:.2f}s after the 5th failure; ip_block_seconds is 2")
    expect_log_clean(e, [CLIENT_KEY, UNKNOWN_KEY])


@test(env="ipblock", fresh=True)
def ip_block_count_reset_by_success(e):
    fail_auth(e, 4)
    ok_request(e)  # 4 < 5: not blocked, and the count starts again
    fail_auth(e, 4)
    ok_request(e, XKEY)
    fail_auth(e, 4)
    ok_request(e)
    # exactly 5 in a row blocks
    fail_auth(e, 5)
    expect_blocked(e.request("POST", "/v1/chat/completions", chat_body(), AUTH))


@test(env="ipblock", fresh=True)
def ip_block_counted_across_connections_and_cores(e):
    # 5 failures from 5 connections each on their own (the kernel spreads new
    # connections over the 2 reactors): a per-core count would not block
    fail_auth(e, 5)
    results = []

    def one():
        results.append(e.request("POST", "/v1/chat/completions", chat_body(), AUTH).status)
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    expect(results == [403] * 8, f"statuses after 5 failures from 5 connections: {results}")


# --- model permissions ---------------------------------------------------------

@test(env="tier_models")
def tier_model_not_allowed(e):
    def run():
        r = e.request("POST", "/v1/chat/completions", chat_body("claude-sonnet-4-5"), AUTH)
        expect_error(r, 403, "model_not_allowed")
        r = e.request("POST", "/v1/messages", messages_body(), XKEY)
        expect_error(r, 403, "model_not_allowed", "anthropic")
        r = e.request("POST", "/v1/messages", messages_body(ANTHROPIC_UPSTREAM_MODEL), XKEY)
        expect_error(r, 403, "model_not_allowed", "anthropic")
        r = e.stream("/v1/messages", messages_body(stream=True), XKEY)
        expect_error(r, 403, "model_not_allowed", "anthropic")
        r = e.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, AUTH)
        expect_error(r, 403, "model_not_allowed")
        expect(r.header("x-ratelimit-tier") == TEST_TIER,
               f"403 model_not_allowed without x-ratelimit-tier: {r.headers}")
    expect_no_upstream(e, run, "model_not_allowed")
    # the allowed model works from both formats (the other one converted)
    expect_status(e.request("POST", "/v1/chat/completions", chat_body(), AUTH), 200)
    r = e.request("POST", "/v1/messages", messages_body("gpt-4o-mini"), XKEY)
    expect_status(r, 200)
    expect(r.json().get("type") == "message", f"{r!r}")


@test
def key_model_list_restricts(e):
    key = "sk-models-only-claude-000000000000"
    kid = import_key(e.config_path, key, name="claude-only", extra=("--models", "claude-sonnet-4-5"))
    sighup(e)
    hdrs = {"Authorization": f"Bearer {key}"}

    def run():
        r = e.request("POST", "/v1/chat/completions", chat_body(), hdrs)
        expect_error(r, 403, "model_not_allowed")
        r = e.request("POST", "/v1/messages", messages_body("gpt-4o-mini"), hdrs)
        expect_error(r, 403, "model_not_allowed", "anthropic")
    expect_no_upstream(e, run, "key model list")
    expect_status(e.request("POST", "/v1/messages", messages_body(), hdrs), 200)
    expect_status(e.request("POST", "/v1/chat/completions", chat_body("claude-sonnet-4-5"), hdrs), 200)
    client_key_absent_upstream(e, key)
    expect(keys_cli(e.config_path, "revoke", kid).returncode == 0, "revoke")
    sighup(e)
    expect_log_clean(e, [key])


# --- SIGHUP reloads --------------------------------------------------------------

@test
def sighup_loads_created_key(e):
    p = keys_cli(e.config_path, "create", "--name", "hup-new", "--tier", TEST_TIER)
    expect(p.returncode == 0, f"keys create failed: {p.stderr}")
    key = p.stdout.strip()
    expect(20 <= len(key) <= 256 and " " not in key, f"keys create printed {p.stdout!r}")
    hdrs = {"Authorization": f"Bearer {key}"}
    # not yet loaded
    r = e.request("POST", "/v1/chat/completions", chat_body(), hdrs)
    expect_error(r, 401, "authentication_error")
    expect_key_not_echoed(r, key)
    ok_request(e)
    sighup(e)
    r = e.request("POST", "/v1/chat/completions", chat_body(), hdrs)
    expect_status(r, 200)
    client_key_absent_upstream(e, key)
    expect_status(e.request("POST", "/v1/messages", messages_body(), {"x-api-key": key}), 200)
    # the old keys still work after the swap
    ok_request(e)
    listed = json.loads(keys_cli(e.config_path, "list", "--json").stdout)
    expect(any(k.get("name") == "hup-new" and k.get("status") == "active" for k in listed),
           f"keys list: {listed}")
    expect_log_clean(e, [key, CLIENT_KEY])


@test(timeout=40)
def sighup_revoke_with_stream_in_flight(e):
    key = "sk-revoke-me-while-streaming-0000000"
    kid = import_key(e.config_path, key, name="revoke-me")
    sighup(e)
    hdrs = {"Authorization": f"Bearer {key}", "x-mock-tokens": 30, "x-mock-token-delay-ms": 100}
    s1 = SlowStream(e, "/v1/chat/completions", chat_body(stream=True), hdrs)
    s2 = SlowStream(e, "/v1/messages", messages_body(stream=True), dict(hdrs, **{"anthropic-version": ANTHROPIC_VERSION}))
    # a third one converted (Anthropic client, OpenAI model)
    s3 = SlowStream(e, "/v1/messages", messages_body("gpt-4o-mini", stream=True), hdrs)
    for s in (s1, s2, s3):
        s.start()
    for s in (s1, s2, s3):
        expect(s.head.wait(10), "stream head not received")
        expect(s.error is None and s.status == 200, f"stream: {s.error or s.status}")
    p = keys_cli(e.config_path, "revoke", kid)
    expect(p.returncode == 0, f"keys revoke failed: {p.stderr}")
    sighup(e)
    r = e.request("POST", "/v1/chat/completions", chat_body(), {"Authorization": f"Bearer {key}"})
    t_refused = time.monotonic()
    expect_error(r, 401, "authentication_error")
    r = e.request("POST", "/v1/messages", messages_body(), {"x-api-key": key})
    expect_error(r, 401, "authentication_error", "anthropic")
    expect_key_not_echoed(r, key)
    ok_request(e)
    r1, r2, r3 = s1.result(), s2.result(), s3.result()
    expect(all(s.t_end > t_refused for s in (s1, s2, s3)),
           "a stream ended before the revocation took effect: the test proved nothing")
    d1 = sse_data(r1.events)
    expect(d1[-1:] == ["[DONE]"] and content_tokens(d1) == 30,
           f"in-flight OpenAI stream cut by the revocation: {content_tokens(d1)} tokens, "
           f"ends {d1[-1:]}")
    for r in (r2, r3):
        names = sse_event_names(r.events)
        expect(names[-1:] == ["message_stop"] and names.count("content_block_delta") == 30,
               f"in-flight Anthropic stream cut by the revocation: {names[-3:]}, "
               f"{names.count('content_block_delta')} deltas")
    expect_log_clean(e, [key])


@test
def revoked_key_401_and_others_unaffected(e):
    key = "sk-revoked-before-use-00000000000"
    kid = import_key(e.config_path, key, name="revoked")
    sighup(e)
    expect_status(e.request("POST", "/v1/chat/completions", chat_body(), {"x-api-key": key}), 200)
    expect(keys_cli(e.config_path, "revoke", kid).returncode == 0, "revoke")
    # a revocation is seen only after SIGHUP
    sighup(e)
    with UpstreamCounter(e) as u:
        for hdrs in ({"x-api-key": key}, {"Authorization": f"Bearer {key}"}):
            r = e.request("POST", "/v1/chat/completions", chat_body(), hdrs)
            expect_error(r, 401, "authentication_error")
            expect_key_not_echoed(r, key)
            r = e.request("GET", "/v1/models", headers=hdrs)
            expect_error(r, 401, "authentication_error")
    expect(u.delta == 0, f"the mock received {u.delta} request(s) for a revoked key")
    ok_request(e)


@test
def default_env_log_has_no_client_keys(e):
    # after the tests above ran against this gateway
    ok_request(e)
    expect_log_clean(e, [CLIENT_KEY, UNKNOWN_KEY, CLIENT_KEY + "x", CLIENT_KEY[:-1],
                         "sk-models-only-claude-000000000000", "sk-revoke-me-while-streaming-0000000",
                         "sk-revoked-before-use-00000000000"])
    # the log is not just empty: it is this gateway's
    expect(b"sluice: ready on" in log_text(e.gateway), "gateway log has no ready line")


if __name__ == "__main__":
    main()
