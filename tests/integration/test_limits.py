"""Rate limits (SPEC 1, 2): the x-ratelimit-* headers on every authenticated
response, 429 for requests / tokens / concurrency per key and per model,
exactness across the 2 reactors, the daily quota across a restart and its
rollover, and the upstream's own rate-limit headers kept from the client."""

import calendar
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (ANTHROPIC_VERSION, CLIENT_KEY, GATEWAY_BIN, TEST_TIER, TestError,  # noqa: E402
                     Closed, Conn, Server, base_config, build_request, chat_body, deep_merge, env,
                     eventually, expect, expect_error, import_key, main,
                     messages_body, sse_data, sse_event_names, test)

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": ANTHROPIC_VERSION}

HDR_LIMITS = {"requests_per_minute": 1000, "tokens_per_minute": 1000000, "concurrent": 50,
              "requests_per_day": 100000}
env("hdr", {"tiers": {TEST_TIER: HDR_LIMITS}})
env("rpm", {"tiers": {TEST_TIER: {"requests_per_minute": 5, "concurrent": None}},
            "rate_limits": {"window_ms": 2000}})
EXACT_RPM, EXACT_WINDOW_MS = 60, 3000
env("exact", {"tiers": {TEST_TIER: {"requests_per_minute": EXACT_RPM, "concurrent": None}},
              "rate_limits": {"window_ms": EXACT_WINDOW_MS}})
env("conc", {"tiers": {TEST_TIER: {"concurrent": 2}}})
env("tpm", {"tiers": {TEST_TIER: {"tokens_per_minute": 3000}}})
env("tpm_cap", {"tiers": {TEST_TIER: {"tokens_per_minute": 3000}},
                "rate_limits": {"max_tokens_estimate_max": 1000}})
env("model_limits", {"models": {"gpt-4o-mini": {"limits": {"requests_per_minute": 3}},
                                "claude-sonnet-4-5": {"limits": {"concurrent": 1}}}})
env("rpd", gateway=False)  # the test runs its own gateways (restarts)

RL_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
              "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
              "x-ratelimit-remaining-tokens", "x-concurrent-limit", "x-concurrent-remaining",
              "x-ratelimit-limit-requests-day", "x-ratelimit-remaining-requests-day",
              "x-ratelimit-reset-requests-day")
BY_LIMIT = {
    "requests_per_minute": ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                            "x-ratelimit-reset-requests"),
    "tokens_per_minute": ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens"),
    "concurrent": ("x-concurrent-limit", "x-concurrent-remaining"),
    "requests_per_day": ("x-ratelimit-limit-requests-day", "x-ratelimit-remaining-requests-day",
                         "x-ratelimit-reset-requests-day"),
}


# --- helpers -------------------------------------------------------------------

def now_ms():
    return time.time() * 1000


def parse_rfc3339(text):
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z", text or "")
    expect(m, f"not an RFC 3339 UTC time like 2026-11-22T10:31:00Z: {text!r}")
    return calendar.timegm(tuple(int(x) for x in m.groups())) * 1000


def rfc3339(unix_ms):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_ms / 1000))


def int_header(r, name):
    v = r.header(name)
    expect(v is not None and re.fullmatch(r"\d+", v), f"{r.status}: {name} is {v!r}, not an integer "
                                                      f"(headers {r.headers})")
    return int(v)


def check_rl_headers(r, limits, t0_ms, window_ms=60000, daily_hour=0, tier=TEST_TIER):
    """r carries x-request-id and the rate-limit headers of the tier's limits
    (exactly once each; none for an unlimited dimension), well-formed."""
    t1_ms = now_ms()
    what = f"{r.status} response"
    expect(len(r.header_all("x-request-id")) == 1, f"{what}: x-request-id {r.header_all('x-request-id')}")
    expect(r.header_all("x-ratelimit-tier") == [tier], f"{what}: x-ratelimit-tier {r.header_all('x-ratelimit-tier')}")
    for lim, names in BY_LIMIT.items():
        n = limits.get(lim) or 0
        for name in names:
            got = r.header_all(name)
            expect(len(got) == (1 if n else 0),
                   f"{what}: {name} {got} ({lim} is {n or 'unlimited'})")
        if not n:
            continue
        expect(int_header(r, names[0]) == n, f"{what}: {names[0]} {r.header(names[0])!r}, the limit is {n}")
        rem = int_header(r, names[1])
        expect(0 <= rem <= n, f"{what}: {names[1]} {rem} outside 0..{n}")
    if limits.get("requests_per_minute"):
        reset = parse_rfc3339(r.header("x-ratelimit-reset-requests"))
        expect(t0_ms - 50 <= reset <= t1_ms + window_ms + 1000,
               f"{what}: x-ratelimit-reset-requests {r.header('x-ratelimit-reset-requests')} is not "
               f"within one window ({window_ms} ms) from now ({rfc3339(t0_ms)})")
        if window_ms % 1000 == 0:
            expect(reset % window_ms == 0, f"{what}: reset {rfc3339(reset)} is not a window boundary "
                                           f"(windows are aligned to Unix time)")
    if limits.get("requests_per_day"):
        reset = parse_rfc3339(r.header("x-ratelimit-reset-requests-day"))
        expect(t0_ms - 50 <= reset <= t1_ms + 86400000 + 1000,
               f"{what}: x-ratelimit-reset-requests-day {rfc3339(reset)} not within a day")
        expect(reset % 3600000 == 0 and time.gmtime(reset / 1000).tm_hour == daily_hour,
               f"{what}: x-ratelimit-reset-requests-day {rfc3339(reset)} is not {daily_hour}:00 UTC")


def rl_summary(r):
    """The rate-limit headers of r, for failure messages."""
    return ", ".join(f"{k}: {v}" for k, v in r.headers
                     if k.lower().startswith(("x-ratelimit", "x-concurrent", "retry-after")))


def expect_ok(r, what):
    if r.status != 200:
        raise TestError(f"{what}: status {r.status}, expected 200 [{rl_summary(r)}]: {r!r}")
    return r


def mock_requests(e):
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
            self.delta = mock_requests(self.e) - self.before - 1  # the stats request itself


def window_left_ms(window_ms):
    return window_ms - now_ms() % window_ms


def align_window(window_ms, need_ms):
    """If less than need_ms is left in the current window, wait for the next
    one (these tests are about windows). Returns the window index."""
    if window_left_ms(window_ms) < need_ms:
        time.sleep(window_left_ms(window_ms) / 1000 + 0.03)
    return int(now_ms() // window_ms)


def expect_429(r, err_type="rate_limit_error", shape="openai", max_ms=None, what=""):
    try:
        expect_error(r, 429, err_type, shape)
    except TestError as exc:
        raise TestError(f"{what + ': ' if what else ''}{exc} [{rl_summary(r)}]")
    ra = r.header("retry-after")
    expect(ra is not None and re.fullmatch(r"\d+", ra) and int(ra) >= 1,
           f"429 Retry-After {ra!r}: must be integer seconds >= 1")
    ms = r.header("retry-after-ms")
    expect(ms is not None and re.fullmatch(r"\d+", ms), f"429 retry-after-ms {ms!r}")
    ms = int(ms)
    expect(int(ra) == max(1, math.ceil(ms / 1000)),
           f"Retry-After {ra} does not match retry-after-ms {ms}")
    if max_ms is not None:
        expect(ms <= max_ms, f"retry-after-ms {ms} > {max_ms}")
    return ms


def log_text(server):
    with open(server.log_path, "rb") as f:
        return f.read()


def expect_log_clean(server, keys):
    text = log_text(server)
    for k in keys:
        expect(k.encode() not in text, f"the gateway log contains a client key text ({k[:12]}...): "
                                       f"{server.log_path}")


def sighup(e):
    """SIGHUP (os.kill: Popen cannot signal from the forked test process) and
    wait for the reload line in the gateway log."""
    line = b"sluice: SIGHUP: keys reloaded"
    before = log_text(e.gateway).count(line)
    os.kill(e.gateway.proc.pid, signal.SIGHUP)
    eventually(lambda: log_text(e.gateway).count(line) > before, 5,
               what="'sluice: SIGHUP: keys reloaded' in the gateway log")


class SlowStream(threading.Thread):
    """A streamed request read in the background: .head is set when the
    response head arrived (or the request failed); result() joins."""

    def __init__(self, addr, path, body, headers, timeout_s=20):
        super().__init__(daemon=True)
        self.addr, self.path, self.body, self.headers, self.timeout_s = addr, path, body, headers, timeout_s
        self.head = threading.Event()
        self.conn = None
        self.status = None
        self.r = None
        self.error = None
        self.t_end = None

    def run(self):
        try:
            with Conn(self.addr, self.timeout_s) as c:
                self.conn = c
                c.send(build_request("POST", self.path, self.body, self.headers))
                r = c.read_head(self.timeout_s)
                self.status = r.status
                self.head.set()
                if "chunked" in (r.header("transfer-encoding") or "").lower():
                    c._read_chunks(r, time.monotonic() + self.timeout_s)
                else:
                    cl = r.header("content-length")
                    r.body = c._exact(int(cl), time.monotonic() + self.timeout_s) if cl else b""
                r.events = [(0, ev + b"\n\n") for ev in r.body.split(b"\n\n") if ev.strip()]
                self.r = r
        except BaseException as exc:
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

    def abort(self):
        """The client goes away mid-stream."""
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.join(self.timeout_s + 5)


def request_to(addr, method, path, body=None, headers=None, timeout_s=10):
    """One request on a new connection to addr (a gateway other than e's)."""
    with Conn(addr, timeout_s) as c:
        c.send(build_request(method, path, body, headers))
        return c.read_response(timeout_s, method)


def expect_concurrent_settles(e, want, when, timeout_s=1.5):
    """Requests (new connections) until one is admitted with
    x-concurrent-remaining == want (it counts itself): the cores may lag a
    reconcile, a leaked slot never settles."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while True:
        r = e.request("POST", "/v1/chat/completions", chat_body(), AUTH)
        rem = r.header("x-concurrent-remaining")
        if r.status == 200 and rem == str(want):
            return
        seen.append(f"{r.status} remaining {rem}")
        expect(time.monotonic() < deadline,
               f"{when}: no request admitted with x-concurrent-remaining {want} within {timeout_s} s "
               f"(a leaked slot?): {seen}")
        time.sleep(0.1)


def slow_hdrs(headers, tokens, delay_ms=100):
    return dict(headers, **{"x-mock-tokens": tokens, "x-mock-token-delay-ms": delay_ms})


# --- headers -------------------------------------------------------------------

@test(env="hdr", fresh=True)
def ratelimit_headers_on_every_authenticated_response(e):
    cases = [
        ("chat", lambda: e.request("POST", "/v1/chat/completions", chat_body(), AUTH), 200),
        ("messages", lambda: e.request("POST", "/v1/messages", messages_body(), XKEY), 200),
        ("chat stream", lambda: e.stream("/v1/chat/completions", chat_body(stream=True), AUTH), 200),
        ("messages stream", lambda: e.stream("/v1/messages", messages_body(stream=True), XKEY), 200),
        ("converted stream", lambda: e.stream("/v1/messages", messages_body("gpt-4o-mini", stream=True), XKEY), 200),
        ("converted", lambda: e.request("POST", "/v1/chat/completions", chat_body("claude-sonnet-4-5"), AUTH), 200),
        ("count_tokens", lambda: e.request("POST", "/v1/messages/count_tokens", messages_body(), XKEY), 200),
        ("embeddings", lambda: e.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, AUTH), 200),
        ("models", lambda: e.request("GET", "/v1/models", headers=AUTH), 200),
        ("model", lambda: e.request("GET", "/v1/models/gpt-4o-mini", headers=XKEY), 200),
        ("unknown model", lambda: e.request("POST", "/v1/chat/completions", chat_body("no-such-model"), AUTH), 404),
        ("unknown model (anthropic)", lambda: e.request("POST", "/v1/messages", messages_body("no-such-model"), XKEY), 404),
        ("bad json", lambda: e.request("POST", "/v1/chat/completions", "{not json", AUTH), 400),
        ("upstream 400", lambda: e.request("POST", "/v1/chat/completions", chat_body(),
                                           dict(AUTH, **{"x-mock-status": 400})), 400),
        ("upstream 400 anthropic", lambda: e.request("POST", "/v1/messages", messages_body(),
                                                     dict(XKEY, **{"x-mock-status": 400})), 400),
    ]
    failures = []   # all of them, not just the first
    for what, fn, status in cases:
        t0 = now_ms()
        r = fn()
        if r.status != status:
            failures.append(f"{what}: status {r.status}, expected {status}: {r!r}")
            continue
        try:
            check_rl_headers(r, HDR_LIMITS, t0)
        except AssertionError as exc:
            failures.append(f"{what}: {exc}")
    expect(not failures, f"{len(failures)} of {len(cases)} responses: " + " | ".join(failures))
    # no concurrency slot leaked by any of the above (errors included): a
    # request sees only itself in flight (once the cores reconciled)
    expect_concurrent_settles(e, HDR_LIMITS["concurrent"] - 1, "with nothing else in flight")
    r = e.request("GET", "/v1/models", headers=AUTH)
    expect(int_header(r, "x-concurrent-remaining") >= HDR_LIMITS["concurrent"] - 1,
           f"x-concurrent-remaining {r.header('x-concurrent-remaining')} on GET /v1/models")
    expect_log_clean(e.gateway, [CLIENT_KEY])


@test(env="hdr", fresh=True)
def remaining_counts_down_on_one_connection(e):
    rows = []
    with Conn(e.addr) as c:
        for i in range(6):
            t0 = now_ms()
            if i % 2:
                c.send(build_request("POST", "/v1/messages", messages_body(), XKEY))
            else:
                c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
            r = c.read_response()
            expect_ok(r, f"request {i + 1}")
            check_rl_headers(r, HDR_LIMITS, t0)
            rows.append((int_header(r, "x-ratelimit-remaining-requests"), r.header("x-ratelimit-reset-requests"),
                         int_header(r, "x-ratelimit-remaining-requests-day"),
                         int_header(r, "x-ratelimit-remaining-tokens"),
                         int_header(r, "x-concurrent-remaining")))
    rpm, rpd, tpm = (HDR_LIMITS["requests_per_minute"], HDR_LIMITS["requests_per_day"],
                     HDR_LIMITS["tokens_per_minute"])
    expect(rows[0][2] == rpd - 1, f"first request: remaining-requests-day {rows[0][2]}, expected {rpd - 1}")
    expect(rows[0][3] < tpm, f"first request: remaining-tokens {rows[0][3]}: the request counted no tokens")
    for prev, cur in zip(rows, rows[1:]):
        if cur[1] == prev[1]:   # same window
            expect(cur[0] == prev[0] - 1, f"remaining-requests went {prev[0]} -> {cur[0]} on one connection "
                                          f"(rows: {rows})")
        else:                   # a new window began between the two
            expect(cur[0] == rpm - 1, f"new window: remaining-requests {cur[0]}, expected {rpm - 1}")
        expect(cur[2] == prev[2] - 1, f"remaining-requests-day went {prev[2]} -> {cur[2]} (rows: {rows})")
        expect(cur[4] == prev[4], f"x-concurrent-remaining drifts on sequential requests: {rows}")
    # remaining-tokens subtracts this request's estimate (chat: no max_tokens,
    # so the 4096 cap; messages: max_tokens 64): compare like with like
    for prev, cur in zip(rows, rows[2:]):
        if cur[1] == prev[1]:
            expect(cur[3] < prev[3], f"remaining-tokens went {prev[3]} -> {cur[3]} for the same request "
                                     f"two requests later (rows: {rows})")
    if rows[0][1] == rows[1][1]:
        expect(rows[0][0] == rpm - 1, f"first request: remaining-requests {rows[0][0]}, expected {rpm - 1}")


# A fake OpenAI-format upstream that sends its own rate-limit headers (the
# mock sends none). Its listening socket is made when the env starts (in the
# runner) and served by the test (in the forked child, which inherits it).
_fake = {}

UPSTREAM_RL = [("x-ratelimit-limit-requests", "77777"), ("x-ratelimit-remaining-requests", "77776"),
               ("x-ratelimit-reset-requests", "6m0s"), ("x-ratelimit-limit-tokens", "88888"),
               ("x-ratelimit-remaining-tokens", "88887"), ("x-ratelimit-reset-tokens", "1s"),
               ("x-ratelimit-tier", "upstream-tier")]


def _fake_overrides(mock_port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    _fake["sock"] = s
    return {"providers": {"fake": {"base_url": f"http://127.0.0.1:{s.getsockname()[1]}/v1",
                                   "format": "openai", "keys": ["sk-fake-upstream"]}},
            "models": {"fake-model": {"targets": [{"provider": "fake", "model": "fake-up"}]}}}


env("fake_upstream", _fake_overrides)


def _fake_serve_conn(conn):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = conn.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            n = int(m.group(1)) if m else 0
            while len(buf) < n:
                d = conn.recv(65536)
                if not d:
                    return
                buf += d
            body, buf = buf[:n], buf[n:]
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                req = {}
            extra = "".join(f"{k}: {v}\r\n" for k, v in UPSTREAM_RL)
            usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
            if req.get("stream"):
                events = []
                for word in ("Hi", " there"):
                    events.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                                   "model": "fake-up", "choices": [{"index": 0, "delta": {"content": word},
                                                                    "finish_reason": None}]})
                events.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                               "model": "fake-up", "choices": [{"index": 0, "delta": {},
                                                                "finish_reason": "stop"}]})
                events.append({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                               "model": "fake-up", "choices": [], "usage": usage})
                out = (f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{extra}"
                       f"Transfer-Encoding: chunked\r\n\r\n").encode()
                for ev in [json.dumps(x) for x in events] + ["[DONE]"]:
                    data = f"data: {ev}\n\n".encode()
                    out += b"%x\r\n%s\r\n" % (len(data), data)
                out += b"0\r\n\r\n"
            else:
                data = json.dumps({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1,
                                   "model": "fake-up", "choices": [{"index": 0, "message": {
                                       "role": "assistant", "content": "Hi there"},
                                       "finish_reason": "stop"}], "usage": usage}).encode()
                out = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
                       f"Content-Length: {len(data)}\r\n\r\n").encode() + data
            conn.sendall(out)
    except OSError:
        pass
    finally:
        conn.close()


def _fake_serve():
    s = _fake["sock"]
    while True:
        try:
            conn, _ = s.accept()
        except OSError:
            return
        threading.Thread(target=_fake_serve_conn, args=(conn,), daemon=True).start()


@test(env="fake_upstream", fresh=True)
def upstream_ratelimit_headers_not_relayed(e):
    threading.Thread(target=_fake_serve, daemon=True).start()
    base_limits = {"requests_per_minute": 100000000, "concurrent": 1000000}  # base_config's test tier
    for what, fn in (
            ("chat", lambda: e.request("POST", "/v1/chat/completions", chat_body("fake-model"), AUTH)),
            ("chat stream", lambda: e.stream("/v1/chat/completions", chat_body("fake-model", stream=True), AUTH)),
            ("converted", lambda: e.request("POST", "/v1/messages", messages_body("fake-model"), XKEY)),
            ("converted stream", lambda: e.stream("/v1/messages", messages_body("fake-model", stream=True), XKEY))):
        t0 = now_ms()
        r = fn()
        if r.status != 200:
            raise TestError(f"{what}: status {r.status}: {r!r}")
        for k, v in UPSTREAM_RL:
            expect(v not in r.header_all(k), f"{what}: the upstream's {k}: {v} reached the client")
        expect(not r.header("x-ratelimit-reset-tokens"), f"{what}: upstream x-ratelimit-reset-tokens relayed")
        try:
            # the tier sets no token limit: no x-ratelimit-*-tokens at all
            check_rl_headers(r, base_limits, t0)
        except AssertionError as exc:
            raise TestError(f"{what}: {exc}")


# --- requests per minute ----------------------------------------------------------

@test(env="rpm", fresh=True)
def rpm_exceeded_429_then_next_window(e):
    window = 2000
    with UpstreamCounter(e) as u:
        align_window(window, 900)
        with Conn(e.addr) as c:
            for i in range(5):
                t0 = now_ms()
                c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
                r = c.read_response()
                expect_ok(r, f"request {i + 1} of 5 (rpm 5) on one connection")
                check_rl_headers(r, {"requests_per_minute": 5}, t0, window)
                expect(int_header(r, "x-ratelimit-remaining-requests") == 4 - i,
                       f"request {i + 1}: remaining-requests {r.header('x-ratelimit-remaining-requests')}, "
                       f"expected {4 - i}")
            t0 = now_ms()
            c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
            r = c.read_response()
            ms = expect_429(r, max_ms=window)
            check_rl_headers(r, {"requests_per_minute": 5}, t0, window)
            expect(int_header(r, "x-ratelimit-remaining-requests") == 0, "429 with remaining-requests > 0")
            reset = parse_rfc3339(r.header("x-ratelimit-reset-requests"))
            expect(abs(reset - (t0 + ms)) <= 1100,
                   f"retry-after-ms {ms} does not point at the reset {rfc3339(reset)}")
            # the refusal is in the route's format, on the same connection
            c.send(build_request("POST", "/v1/messages", messages_body(), XKEY))
            expect_429(c.read_response(), shape="anthropic", max_ms=window)
            c.send(build_request("POST", "/v1/messages/count_tokens", messages_body(), XKEY))
            expect_429(c.read_response(), shape="anthropic", max_ms=window)
            # GET routes are authenticated, not counted nor refused
            c.send(build_request("GET", "/v1/models", headers=AUTH))
            r = c.read_response()
            expect_ok(r, "GET /v1/models")
            expect(int_header(r, "x-ratelimit-remaining-requests") == 0, "GET /v1/models remaining")
        # other connections (either core) are refused too
        for _ in range(4):
            expect_429(e.request("POST", "/v1/chat/completions", chat_body(), AUTH), max_ms=window)
    expect(u.delta == 5, f"the mock received {u.delta} requests; 5 were admitted")
    # the next window admits again
    time.sleep(window_left_ms(window) / 1000 + 0.05)
    r = eventually(lambda: (lambda r: r if r.status == 200 else None)(
        e.request("POST", "/v1/chat/completions", chat_body(), AUTH)), 1, what="admitted in the next window")
    expect(int_header(r, "x-ratelimit-remaining-requests") >= 3, f"new window: remaining "
                                                                f"{r.header('x-ratelimit-remaining-requests')}")


def hammer(addr, until_ms, nthreads=8, per_conn=25, pause_s=0.002):
    """Requests from nthreads threads over many connections until until_ms
    (unix), each thread pausing pause_s between requests (load pacing: the
    demand stays far above the limits tested, and the host keeps CPU for the
    gateway). Returns [(t_send_ms, t_recv_ms, status, reset_header, body)]
    and the errors."""
    results, errors = [], []
    req = build_request("POST", "/v1/chat/completions", chat_body(), AUTH)

    def worker():
        c, n = None, 0
        while now_ms() < until_ms:
            try:
                if c is None or n >= per_conn:
                    if c:
                        c.close()
                    c, n = Conn(addr, 10), 0
                t0 = now_ms()
                c.send(req)
                r = c.read_response()
                results.append((t0, now_ms(), r.status, r.header("x-ratelimit-reset-requests"),
                                r.body if r.status not in (200, 429) else b""))
                n += 1
                time.sleep(pause_s)
            except (Closed, TestError, OSError) as exc:
                errors.append(repr(exc))
                if c:
                    c.close()
                c = None
        if c:
            c.close()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


@test(env="exact", fresh=True, timeout=60)
def rpm_exact_across_cores(e):
    W, L = EXACT_WINDOW_MS, EXACT_RPM
    with UpstreamCounter(e) as u:
        # start at the beginning of a window, hammer for two whole windows
        time.sleep(window_left_ms(W) / 1000 + 0.02)
        w0 = int(now_ms() // W)
        results, errors = hammer(e.addr, (w0 + 2) * W + 100)
    expect(len(errors) <= 3, f"{len(errors)} transport errors: {errors[:3]}")
    other = [x for x in results if x[2] not in (200, 429)]
    expect(not other, f"{len(other)} responses neither 200 nor 429: {other[:2]}")
    ok = [x for x in results if x[2] == 200]
    expect(u.delta == len(ok), f"the mock received {u.delta} requests, the clients got {len(ok)} 200s")
    lat = sorted(x[1] - x[0] for x in results)
    report = [f"{len(results)} requests, latency p50 {lat[len(lat) // 2]:.1f} ms, max {lat[-1]:.0f} ms"
              if lat else "no requests"]
    # A request's window is certain when it was sent and answered inside it,
    # with a margin for the gateway's clock (its unix time is derived from
    # the monotonic clock at start, to the millisecond).
    m = 5

    def first(x):
        return (x[0] - m) // W

    def last(x):
        return (x[1] + m) // W
    for w in (w0, w0 + 1):
        sent = [x for x in results if first(x) <= w <= last(x)]
        certain = sum(1 for x in ok if first(x) == w == last(x))
        maybe = sum(1 for x in ok if first(x) != last(x) and first(x) <= w <= last(x))
        by_header = sum(1 for x in ok if x[3] == rfc3339((w + 1) * W))
        report.append(f"window {w - w0}: {len(sent)} sent, {certain} admitted (+{maybe} at a boundary), "
                      f"{by_header} by reset header")
        expect(len(sent) > 2 * L, f"demand too low to test the limit: {report}")
        expect(certain <= L and by_header <= L, f"more than {L} admitted in one window: {report}")
        expect(certain + maybe >= math.ceil(0.97 * L) and by_header >= math.ceil(0.97 * L),
               f"fewer than 97% of {L} admitted: {report}")
    sys.stderr.write("rpm_exact_across_cores: " + "; ".join(report) + "\n")


# --- concurrency -------------------------------------------------------------------

@test(env="conc", fresh=True, timeout=40)
def concurrency_limit(e):
    a = SlowStream(e.addr, "/v1/chat/completions", chat_body(stream=True), slow_hdrs(AUTH, 20))
    b = SlowStream(e.addr, "/v1/messages", messages_body(stream=True), slow_hdrs(XKEY, 50))
    for name, s in (("a", a), ("b", b)):
        s.start()
        expect(s.head.wait(10) and s.status == 200,
               f"stream {name} refused ({s.status} {s.error or ''}) with {'one' if s is b else 'no'} "
               f"other request in flight; concurrent is 2")
    # refused while both are in flight; x-concurrent-remaining may lag one
    # reconcile across cores, then says 0
    deadline = time.monotonic() + 0.5
    while True:
        t0 = now_ms()
        r = e.request("POST", "/v1/chat/completions", chat_body(), AUTH)
        expect_429(r, what="a third request while 2 streams are in flight (concurrent 2)")
        check_rl_headers(r, {"requests_per_minute": 100000000, "concurrent": 2}, t0)
        if int_header(r, "x-concurrent-remaining") == 0:
            break
        expect(time.monotonic() < deadline,
               f"429s for 0.5 s while 2 of 2 are in flight, but still [{rl_summary(r)}]")
        time.sleep(0.05)
    expect_429(e.request("POST", "/v1/messages", messages_body(), XKEY), shape="anthropic",
               what="a third request (messages) while 2 are in flight")
    expect_429(e.stream("/v1/chat/completions", chat_body(stream=True), AUTH),
               what="a third request (stream) while 2 are in flight")
    expect(a.is_alive() and b.is_alive(), "the streams ended before the refusals: the test proved nothing")
    ra = a.result()
    expect(sse_data(ra.events)[-1:] == ["[DONE]"], "stream a completed")
    # a finished: one slot is free while b still streams
    r = eventually(lambda: (lambda r: r if r.status == 200 else None)(
        e.request("POST", "/v1/chat/completions", chat_body(), AUTH)), 1.5, 0.05,
        what="a request admitted once a stream finished")
    c = SlowStream(e.addr, "/v1/chat/completions", chat_body(stream=True), slow_hdrs(AUTH, 10))
    c.start()
    expect(c.head.wait(10) and c.status == 200,
           f"stream c refused ({c.status} {c.error or ''}) with only stream b in flight; concurrent is 2")
    expect(b.is_alive(), "stream b ended too early for this test")
    expect_429(e.request("POST", "/v1/chat/completions", chat_body(), AUTH),
               what="a request while streams b and c are in flight")
    rb, rc = b.result(), c.result()
    expect(sse_event_names(rb.events)[-1:] == ["message_stop"], "stream b completed")
    expect(sse_data(rc.events)[-1:] == ["[DONE]"], "stream c completed")
    # everything finished: both slots are back (the header may lag a reconcile)
    expect_concurrent_settles(e, 1, "after every stream ended")


@test(env="conc", fresh=True, timeout=40)
def concurrency_burst_admits_exactly_limit(e):
    n = 10
    barrier = threading.Barrier(n)
    out = [None] * n

    def one(i):
        barrier.wait(5)
        t0 = time.monotonic()
        try:
            r = e.stream("/v1/chat/completions", chat_body(stream=True), slow_hdrs(AUTH, 10))
            out[i] = (r.status, t0, r.t_head, time.monotonic(), r)
        except Exception as exc:  # reported below
            out[i] = (repr(exc),)
    with UpstreamCounter(e) as u:
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    bad = [o for o in out if o is None or len(o) == 1]
    expect(not bad, f"requests failed: {bad[:3]}")
    admitted = [o for o in out if o[0] == 200]
    refused = [o for o in out if o[0] == 429]
    expect(len(admitted) + len(refused) == n, f"statuses {[o[0] for o in out]}")
    for o in refused:
        expect_429(o[4])
    expect(len(admitted) <= 2, f"{len(admitted)} streams admitted at once; concurrent is 2")
    expect(len(admitted) == 2, f"{len(admitted)} admitted of {n} simultaneous; concurrent is 2 (exact)")
    expect(u.delta == 2, f"the mock received {u.delta} requests")
    # the refusals came while the two admitted were in flight
    first_end = min(o[3] for o in admitted)
    expect(all(o[2] < first_end for o in refused), "a refusal came after an admitted stream ended")
    for o in admitted:
        expect(sse_data(o[4].events)[-1:] == ["[DONE]"], "admitted stream completed")


# --- tokens per minute ------------------------------------------------------------

@test(env="tpm", fresh=True)
def tpm_estimate_admits_until_exhausted(e):
    limits = {"requests_per_minute": 100000000, "tokens_per_minute": 3000, "concurrent": 1000000}
    align_window(60000, 5000)
    with UpstreamCounter(e) as u:
        # estimated above the whole limit (3500 output tokens asked): refused
        # however empty the window is
        t0 = now_ms()
        r = e.request("POST", "/v1/chat/completions", chat_body(max_tokens=3500), AUTH)
        expect_429(r)
        check_rl_headers(r, limits, t0)
        r = e.request("POST", "/v1/messages", messages_body(max_tokens=3500), XKEY)
        expect_429(r, shape="anthropic")
        # ~900 output + a few input tokens each: three fit in 3000, a fourth not
        hdrs = dict(AUTH, **{"x-mock-tokens": 900})
        remaining = []
        c = Conn(e.addr)  # one connection: remaining is exact
        for i in range(3):
            t0 = now_ms()
            c.send(build_request("POST", "/v1/chat/completions", chat_body(max_tokens=900), hdrs))
            r = c.read_response()
            expect_ok(r, f"request {i + 1} of 3 (~925 tokens each, tpm 3000) on one connection")
            check_rl_headers(r, limits, t0)
            expect(r.json()["usage"]["completion_tokens"] == 900, "the mock answered 900 tokens")
            remaining.append(int_header(r, "x-ratelimit-remaining-tokens"))
        expect(remaining == sorted(remaining, reverse=True) and len(set(remaining)) == 3,
               f"x-ratelimit-remaining-tokens does not count down: {remaining}")
        expect(remaining[-1] <= 3000 - 3 * 900, f"remaining-tokens {remaining} after 3 x 900 output tokens")
        c.send(build_request("POST", "/v1/chat/completions", chat_body(max_tokens=900), hdrs))
        r = c.read_response()
        expect_429(r)
        expect(int_header(r, "x-ratelimit-remaining-tokens") < 900, f"429 for 900 tokens, but [{rl_summary(r)}]")
        # a small request still fits in what is left
        c.send(build_request("POST", "/v1/chat/completions", chat_body(max_tokens=20), AUTH))
        r = c.read_response()
        c.close()
        expect_ok(r, "a small request after the 429")
    expect(u.delta == 4, f"the mock received {u.delta} requests; 4 were admitted")


@test(env="tpm_cap", fresh=True)
def tpm_estimate_caps_max_tokens(e):
    # max_tokens_estimate_max 1000: 3500 asked counts as 1000 at admission
    r = e.request("POST", "/v1/chat/completions", chat_body(max_tokens=3500), AUTH)
    expect_ok(r, "max_tokens 3500 with the estimate capped at 1000")
    r = e.request("POST", "/v1/messages", messages_body(max_tokens=3500), XKEY)
    expect_ok(r, "max_tokens 3500 with the estimate capped at 1000 (messages)")


# --- per-model limits (all keys) ----------------------------------------------------

@test(env="model_limits", fresh=True, timeout=40)
def model_limits_across_keys(e):
    key2 = "sk-second-key-model-limits-000000"
    import_key(e.config_path, key2, name="second")
    sighup(e)
    k2 = {"Authorization": f"Bearer {key2}"}
    align_window(60000, 5000)
    with UpstreamCounter(e) as u:
        expect_ok(e.request("POST", "/v1/chat/completions", chat_body(), AUTH), "model rpm 3: request 1 (key 1)")
        expect_ok(e.request("POST", "/v1/chat/completions", chat_body(), k2), "model rpm 3: request 2 (key 2)")
        expect_ok(e.request("POST", "/v1/messages", messages_body("gpt-4o-mini"), XKEY), "model rpm 3: request 3 (key 1, converted)")
        # gpt-4o-mini has had its 3 requests this minute, whoever asks
        expect_429(e.request("POST", "/v1/chat/completions", chat_body(), k2))
        expect_429(e.request("POST", "/v1/messages", messages_body("gpt-4o-mini"), XKEY), shape="anthropic")
        # other models are not affected
        expect_ok(e.request("POST", "/v1/messages", messages_body(), XKEY), "claude while gpt-4o-mini is limited")
        expect_ok(e.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, k2), "embeddings while gpt-4o-mini is limited")
    expect(u.delta == 5, f"the mock received {u.delta} requests; 5 were admitted")
    # claude-sonnet-4-5: concurrent 1 across keys (a 5 s stream, cut by the
    # client once the refusals are seen)
    s = SlowStream(e.addr, "/v1/messages", messages_body(stream=True), slow_hdrs(XKEY, 50))
    s.start()
    expect(s.head.wait(10) and s.status == 200, f"stream not admitted: {s.status} {s.error}")
    expect_429(e.request("POST", "/v1/messages", messages_body(), dict(k2, **{"anthropic-version": ANTHROPIC_VERSION})),
               shape="anthropic", what="claude (concurrent 1) for key 2 while key 1 streams from it")
    expect_429(e.request("POST", "/v1/chat/completions", chat_body("claude-sonnet-4-5"), AUTH),
               what="claude (concurrent 1) for key 1 while key 1 streams from it")
    expect(s.is_alive(), "the stream ended before the refusals: the test proved nothing")
    s.abort()
    eventually(lambda: e.request("POST", "/v1/messages", messages_body(), k2).status == 200, 2,
               what="claude admitted again after the client cut its stream")
    expect_log_clean(e.gateway, [CLIENT_KEY, key2])


# --- daily quota: persisted, rolled over ----------------------------------------------

@test(env="rpd", fresh=True, timeout=60)
def daily_quota_survives_restart_and_rolls_over(e):
    now = datetime.now(timezone.utc)
    reset_hour = (now.hour + 2) % 24         # the next reset is 1 to 2 hours away
    next_reset = now.replace(hour=reset_hour, minute=0, second=0, microsecond=0)
    if next_reset <= now:
        next_reset += timedelta(days=1)
    next_reset_ms = int(next_reset.timestamp() * 1000)
    limits = {"requests_per_minute": 100000000, "concurrent": 1000000, "requests_per_day": 3}

    tmp = tempfile.mkdtemp(prefix="sluice-rpd-")
    data_dir = os.path.join(tmp, "data")
    cfg = deep_merge(base_config(e.mock_addr[1], data_dir),
                     {"tiers": {TEST_TIER: {"requests_per_day": 3}},
                      "rate_limits": {"daily_reset_hour_utc": reset_hour}})
    cfg_path = os.path.join(tmp, "sluice.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    import_key(cfg_path, CLIENT_KEY)
    servers = []

    def start(n):
        s = Server("sluice", [GATEWAY_BIN, "serve", "-c", cfg_path, "--threads", "2"], "sluice",
                   os.path.join(e.log_dir, f"rpd.gateway{n}.log"))
        servers.append(s)
        s.start()
        return s

    def stop(s):
        problems = s.stop()
        expect(not problems, f"gateway stop: {problems}")
        expect(os.path.exists(os.path.join(data_dir, "limits.state")),
               "no limits.state in the data directory after SIGTERM")
        expect_log_clean(s, [CLIENT_KEY])

    try:
        g = start(1)
        with Conn(g.addr) as c:
            for i in range(3):
                t0 = now_ms()
                c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
                r = c.read_response()
                expect_ok(r, f"day 1: request {i + 1} of 3 (rpd 3) on one connection")
                check_rl_headers(r, limits, t0, daily_hour=reset_hour)
                expect(int_header(r, "x-ratelimit-remaining-requests-day") == 2 - i,
                       f"request {i + 1}: remaining-requests-day {r.header('x-ratelimit-remaining-requests-day')}")
                expect(r.header("x-ratelimit-reset-requests-day") == rfc3339(next_reset_ms),
                       f"reset-requests-day {r.header('x-ratelimit-reset-requests-day')}, expected "
                       f"{rfc3339(next_reset_ms)} (daily_reset_hour_utc {reset_hour})")
            t0 = now_ms()
            c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
            r = c.read_response()
        ms = expect_429(r, "quota_exceeded")
        check_rl_headers(r, limits, t0, daily_hour=reset_hour)
        expect(int_header(r, "x-ratelimit-remaining-requests-day") == 0, "quota_exceeded with remaining > 0")
        expect(abs(ms - (next_reset_ms - t0)) <= 5000,
               f"retry-after-ms {ms}: the quota resets in {next_reset_ms - t0:.0f} ms")
        for _ in range(3):   # new connections, either core
            expect_429(request_to(g.addr, "POST", "/v1/messages", messages_body(), XKEY),
                       "quota_exceeded", "anthropic")
        stop(g)

        # a restart keeps the day's count
        g = start(2)
        r = request_to(g.addr, "POST", "/v1/chat/completions", chat_body(), AUTH)
        expect_429(r, "quota_exceeded")
        expect(int_header(r, "x-ratelimit-remaining-requests-day") == 0, "after restart: remaining-requests-day")
        stop(g)

        # the clock past the reset hour: a new day
        offset = next_reset_ms - int(now_ms()) + 60000
        os.environ["SLUICE_TEST_CLOCK_OFFSET_MS"] = str(offset)
        try:
            g = start(3)
        finally:
            del os.environ["SLUICE_TEST_CLOCK_OFFSET_MS"]
        r = request_to(g.addr, "POST", "/v1/chat/completions", chat_body(), AUTH)
        expect_ok(r, "the first request of the next day (after restart with the clock past the reset)")
        expect(int_header(r, "x-ratelimit-remaining-requests-day") == 2,
               f"new day: remaining-requests-day {r.header('x-ratelimit-remaining-requests-day')}, expected 2")
        expect(r.header("x-ratelimit-reset-requests-day") == rfc3339(next_reset_ms + 86400000),
               f"new day: reset-requests-day {r.header('x-ratelimit-reset-requests-day')}, expected "
               f"{rfc3339(next_reset_ms + 86400000)}")
        stop(g)
    finally:
        for s in servers:
            s.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
