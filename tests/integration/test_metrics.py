"""The admin listener (SPEC 5): GET /metrics in Prometheus text format,
summed exactly over every reactor - requests by model and status, tokens
and cost as billed, time-to-first-byte histograms, the gateway's own error
responses, connections - checked by Prometheus' own `promtool check
metrics`; /healthz; and nothing else there, nor /metrics on the public
listener."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (ANTHROPIC_VERSION, CLIENT_KEY, Conn, Gateway, build_request,  # noqa: E402
                     chat_body, closed_port, env, eventually, expect, expect_error, main,
                     messages_body, test)

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": ANTHROPIC_VERSION}
ADMIN = {"admin": {"address": "127.0.0.1:0"}}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')

env("metrics", gateway=False)


def scrape(addr):
    with Conn(addr) as c:
        c.send(build_request("GET", "/metrics"))
        r = c.read_response()
    expect(r.status == 200, f"/metrics: {r.status} {r.body[:200]}")
    ct = r.header("content-type")
    expect(ct == "text/plain; version=0.0.4; charset=utf-8", f"content-type {ct!r}")
    return r.body.decode()


def parse(text):
    """{(name, frozenset(labels.items())): float}; every sample line must parse."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        expect(m, f"not a sample line: {line!r}")
        labels = dict(LABEL.findall(m.group(2) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def val(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def pico(tokens, per_million_usd):
    return tokens * round(per_million_usd * 1_000_000)


@test(env="metrics", fresh=True, timeout=90)
def counts_every_request_exactly_across_reactors(e):
    g = Gateway(e, "metrics-count", ADMIN)
    try:
        admin = g.listener("(admin)")
        n_chat, n_msg = 60, 20

        def post_ok(path, body, headers):
            with Conn(g.addr) as c:
                c.send(build_request("POST", path, body, headers))
                r = c.read_response()
            expect(r.status == 200, f"{path}: {r.status}")
            return r.json()["usage"]

        # new connections from 8 threads: both reactors take some
        with ThreadPoolExecutor(8) as pool:
            chats = list(pool.map(lambda _: post_ok("/v1/chat/completions", chat_body(), AUTH),
                                  range(n_chat)))
            msgs = list(pool.map(lambda _: post_ok("/v1/messages", messages_body(), XKEY),
                                 range(n_msg)))
        # the gateway's own answers: 3 bad keys, 2 unknown routes, 1 unknown model
        for _ in range(3):
            expect_error(e_req(g, "/v1/chat/completions", chat_body(), {"Authorization": "Bearer nope"}),
                         401, "authentication_error")
        for _ in range(2):
            expect(e_req(g, "/v1/nothing", {}, AUTH).status == 404, "unknown route")
        expect(e_req(g, "/v1/chat/completions", chat_body(model="no-such-model"), AUTH).status == 404,
               "unknown model")
        text = scrape(admin)
        s = parse(text)
        # requests by model and status, exactly
        got = val(s, "sluice_requests_total", model="gpt-4o-mini", code="200")
        expect(got == n_chat, f"gpt-4o-mini 200s: {got}, sent {n_chat}")
        got = val(s, "sluice_requests_total", model="claude-sonnet-4-5", code="200")
        expect(got == n_msg, f"claude-sonnet-4-5 200s: {got}, sent {n_msg}")
        # tokens as billed: OpenAI's prompt_tokens include the cached ones
        cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in chats)
        inp = sum(u["prompt_tokens"] for u in chats) - cached
        out = sum(u["completion_tokens"] for u in chats)
        for kind, want in (("input", inp), ("output", out), ("cache_read", cached)):
            got = val(s, "sluice_tokens_total", model="gpt-4o-mini", kind=kind)
            expect(got == want, f"gpt-4o-mini {kind} tokens: {got}, responses say {want}")
        a_in = sum(u["input_tokens"] for u in msgs)
        a_out = sum(u["output_tokens"] for u in msgs)
        expect(val(s, "sluice_tokens_total", model="claude-sonnet-4-5", kind="input") == a_in and
               val(s, "sluice_tokens_total", model="claude-sonnet-4-5", kind="output") == a_out,
               f"claude tokens: metrics {val(s, 'sluice_tokens_total', model='claude-sonnet-4-5', kind='input')}/"
               f"{val(s, 'sluice_tokens_total', model='claude-sonnet-4-5', kind='output')}, "
               f"responses {a_in}/{a_out}")
        # cost to the pico-dollar, as text (a float would round)
        want = pico(inp, 0.15) + pico(out, 0.60) + pico(cached, 0.075)
        m = re.search(r'^sluice_cost_usd_total\{model="gpt-4o-mini"\} (\d+)\.(\d{12})$', text, re.M)
        expect(m, "no cost line for gpt-4o-mini")
        got = int(m.group(1)) * 10**12 + int(m.group(2))
        expect(got == want, f"gpt-4o-mini cost {got} pico-USD, expected {want}")
        # the histogram: cumulative, ending at the count
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in s.items()
                         if k[0] == "sluice_time_to_first_byte_seconds_bucket"
                         and dict(k[1]).get("model") == "gpt-4o-mini" and dict(k[1])["le"] != "+Inf")
        counts = [v for _, v in buckets]
        expect(counts == sorted(counts), f"buckets not cumulative: {counts}")
        inf = val(s, "sluice_time_to_first_byte_seconds_bucket", model="gpt-4o-mini", le="+Inf")
        cnt = val(s, "sluice_time_to_first_byte_seconds_count", model="gpt-4o-mini")
        expect(inf == cnt == n_chat and counts[-1] <= cnt, f"ttfb count {cnt}, +Inf {inf}")
        # the gateway's own responses, by status
        for code, want in (("401", 3), ("404", 3)):
            got = val(s, "sluice_local_responses_total", code=code)
            expect(got == want, f"local {code}s: {got}, wanted {want}")
        accepted = val(s, "sluice_connections_accepted_total")
        expect(accepted >= n_chat + n_msg + 6, f"accepted {accepted}")
        expect(val(s, "sluice_connections_open") >= 1, "the scrape's own connection is open")
        expect(val(s, "sluice_reactors") == 2, "two reactors")
    finally:
        g.stop(keep=True)
    # both reactors served (else "across reactors" proves nothing): their
    # exit lines count requests each
    per = [int(x) for x in re.findall(r"reactor \d+: \d+ connections, (\d+) requests", g.log())]
    shutil.rmtree(g.tmp, ignore_errors=True)
    expect(len(per) == 2 and min(per) > 0, f"requests per reactor: {per}")


def e_req(g, path, body, headers):
    with Conn(g.addr) as c:
        c.send(build_request("POST", path, body, headers))
        return c.read_response()


@test(env="metrics", fresh=True, timeout=60)
def admin_listener_serves_only_admin_routes(e):
    g = Gateway(e, "metrics-routes", ADMIN)
    try:
        admin = g.listener("(admin)")
        with Conn(admin) as c:
            c.send(build_request("GET", "/healthz"))
            r = c.read_response()
            expect(r.status == 200 and r.body == b"ok\n", f"admin /healthz: {r.status} {r.body!r}")
            # keep-alive, HEAD: the length of the GET, no body
            c.send(build_request("HEAD", "/metrics"))
            r = c.read_response(method="HEAD")
            expect(r.status == 200 and int(r.header("content-length")) > 1000 and not r.body,
                   f"HEAD /metrics: {r.status} {r.header('content-length')} {r.body[:40]!r}")
            c.send(build_request("POST", "/metrics", {}))
            r = c.read_response()
            expect(r.status == 405 and r.header("allow") == "GET, HEAD", f"POST /metrics: {r.status}")
        with Conn(admin) as c:
            c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
            r = c.read_response()
            expect(r.status == 404, f"chat on the admin listener: {r.status}")
        with Conn(admin) as c:
            c.send(build_request("GET", "/v1/models", None, AUTH))
            expect(c.read_response().status == 404, "models on the admin listener")
        # the public listener has no /metrics
        with Conn(g.addr) as c:
            c.send(build_request("GET", "/metrics", None, AUTH))
            expect(c.read_response().status == 404, "/metrics on the public listener")
        with Conn(admin) as c:
            c.send(build_request("GET", "/metrics?name[]=x"))
            expect(c.read_response().status == 200, "a query string is ignored")
    finally:
        g.stop()


@test(env="metrics", fresh=True, timeout=60)
def admin_key_guards_metrics_not_health(e):
    os.environ["SLUICE_TEST_ADMIN_KEY"] = "adm-0123456789abcdef"
    g = Gateway(e, "metrics-key", {"admin": {"address": "127.0.0.1:0",
                                             "key": "env:SLUICE_TEST_ADMIN_KEY"}})
    try:
        admin = g.listener("(admin)")
        for what, headers in (("no key", {}), ("a wrong key", {"Authorization": "Bearer adm-0123"}),
                              ("the client key", AUTH),
                              ("a longer key", {"Authorization": "Bearer adm-0123456789abcdefX"})):
            with Conn(admin) as c:
                c.send(build_request("GET", "/metrics", None, headers))
                r = c.read_response()
            expect(r.status == 401 and r.header("www-authenticate") == "Bearer",
                   f"/metrics with {what}: {r.status} {r.header('www-authenticate')}")
            expect(b"adm-0123456789abcdef" not in r.body, "the admin key echoed")
        for headers in ({"Authorization": "Bearer adm-0123456789abcdef"},
                        {"x-api-key": "adm-0123456789abcdef"}):
            with Conn(admin) as c:
                c.send(build_request("GET", "/metrics", None, headers))
                r = c.read_response()
            expect(r.status == 200 and b"sluice_info" in r.body, f"/metrics with the key: {r.status}")
        with Conn(admin) as c:
            c.send(build_request("GET", "/healthz"))
            expect(c.read_response().status == 200, "/healthz needs no key")
        expect("adm-0123456789abcdef" not in g.log(), "the admin key is in the gateway's log")
    finally:
        g.stop()


@test(env="metrics", fresh=True, timeout=90)
def prometheus_scrapes_it_with_the_admin_key(e):
    """Debian's Prometheus server scrapes the admin listener (bearer
    authorization) and its query API returns what the gateway counted."""
    prom = shutil.which("prometheus") or "/usr/bin/prometheus"
    expect(os.access(prom, os.X_OK), "prometheus is not installed (./configure --install-deps)")
    g = Gateway(e, "metrics-prometheus", {"admin": {"address": "127.0.0.1:0", "key": "adm-prom-key-1"}})
    tmp = tempfile.mkdtemp(prefix="sluice-prom-")
    p = None
    try:
        admin = g.listener("(admin)")
        for _ in range(7):
            with Conn(g.addr) as c:
                c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
                expect(c.read_response().status == 200, "chat")
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sluice
    authorization:
      credentials: adm-prom-key-1
    static_configs:
      - targets: ["127.0.0.1:{admin[1]}"]
""")
        port = closed_port()
        p = subprocess.Popen([prom, "--config.file=" + cfg, "--storage.tsdb.path=" + tmp + "/data",
                              "--web.listen-address=127.0.0.1:%d" % port],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        q = ('sluice_requests_total{job="sluice",model="gpt-4o-mini",code="200"}')

        def value():
            try:
                with Conn(("127.0.0.1", port)) as c:
                    c.send(build_request("GET", "/api/v1/query?query=" + urllib.parse.quote(q)))
                    r = c.read_response()
                res = r.json()["data"]["result"] if r.status == 200 else []
                return res[0]["value"][1] if res else None
            except Exception:  # noqa: BLE001 - not up yet
                return None
        got = eventually(value, 30, 0.25, what="Prometheus to scrape the gateway")
        expect(got == "7", f"Prometheus sees {got} requests, the gateway served 7")
        with Conn(("127.0.0.1", port)) as c:
            c.send(build_request("GET", "/api/v1/targets"))
            t = c.read_response().json()["data"]["activeTargets"][0]
        expect(t["health"] == "up" and not t["lastError"], f"scrape target: {t['health']} {t['lastError']}")
    finally:
        if p:
            p.terminate()
            p.wait(20)
        shutil.rmtree(tmp, ignore_errors=True)
        g.stop()


@test(env="metrics", fresh=True, timeout=60)
def promtool_accepts_the_exposition(e):
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    expect(os.access(promtool, os.X_OK), "promtool is not installed (./configure --install-deps)")
    # a model id that needs escaping in a label value
    g = Gateway(e, "metrics-promtool", dict(ADMIN, models={
        'odd "model"\\id': {"targets": [{"provider": "mock-openai", "model": "gpt-4o-mini"}]}}))
    try:
        with Conn(g.addr) as c:
            for model in ("gpt-4o-mini", 'odd "model"\\id'):
                c.send(build_request("POST", "/v1/chat/completions", chat_body(model=model), AUTH))
                expect(c.read_response().status == 200, f"chat with {model}")
        text = scrape(g.listener("(admin)"))
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
        expect(p.returncode == 0, f"promtool check metrics: {p.stdout} {p.stderr}")
        s = parse(text)
        got = val(s, "sluice_requests_total", model='odd \\"model\\"\\\\id', code="200")
        expect(got == 1, f"escaped model label: {got}; text: "
                         f"{[ln for ln in text.splitlines() if 'odd' in ln][:2]}")
    finally:
        g.stop()


@test(env="metrics", fresh=True, timeout=90)
def scrapes_under_load_are_monotonic_and_exit_is_clean(e):
    """Scrapes read every reactor's counters while those reactors write them;
    a counter never goes backwards, and stopping the gateway in the middle of
    scrapes is clean (a reactor never reads another's freed memory)."""
    g = Gateway(e, "metrics-soak", dict(ADMIN, access_log={"path": "access.log"}))
    admin = g.listener("(admin)")
    stop = threading.Event()
    errors = []

    def load():
        while not stop.is_set():
            try:
                with Conn(g.addr) as c:
                    for _ in range(20):
                        c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
                        st = c.read_response().status
                        if st != 200 and not stop.is_set():
                            errors.append(f"a chat got {st}")
            except Exception as exc:  # noqa: BLE001
                if not stop.is_set():
                    errors.append(f"load: {exc}")

    def counters():
        s = parse(scrape(admin))
        return (val(s, "sluice_requests_total", model="gpt-4o-mini", code="200"),
                val(s, "sluice_http_requests_total"), val(s, "sluice_connections_accepted_total"),
                val(s, "sluice_tokens_total", model="gpt-4o-mini", kind="output"))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        last = counters()
        for _ in range(60):
            now = counters()
            expect(all(b >= a for a, b in zip(last, now)), f"a counter went backwards: {last} -> {now}")
            last = now
        expect(last[0] > 0, "no request counted under load")
        # scrapes in flight while the gateway stops
        scrapers = [threading.Thread(target=lambda: [_try(lambda: scrape(admin)) for _ in range(50)])
                    for _ in range(2)]
        for t in scrapers:
            t.start()
        stop.set()
        g.stop()
        for t in scrapers:
            t.join(30)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    expect(not errors, f"load errors: {errors[:3]}")


def _try(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 - the gateway is going away
        pass


if __name__ == "__main__":
    main()
