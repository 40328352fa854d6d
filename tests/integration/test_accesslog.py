"""The access log (SPEC 5): one JSON line per request whatever became of
it - routed, refused, unknown, malformed, left mid-stream - with the same
tokens and cost as the usage log, from every reactor into one file with no
line split or lost; rotation by rename + SIGHUP; a path that cannot be
opened stops the start."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (CLIENT_KEY, GATEWAY_BIN, Conn, Gateway, base_config, build_request,  # noqa: E402
                     chat_body, env, eventually, expect, main, test)
from usagelog_reader import read_log  # noqa: E402

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
ALOG = {"access_log": {"path": "access.log", "flush_ms": 50}}

env("alog", gateway=False)


def read_lines(path):
    with open(path, "rb") as f:
        data = f.read()
    expect(data == b"" or data.endswith(b"\n"), "the file ends mid-line")
    out = []
    for raw in data.split(b"\n")[:-1]:
        try:
            out.append(json.loads(raw))
        except ValueError:
            expect(False, f"not a JSON line: {raw[:200]!r}")
    return out


def post(g, body, headers=AUTH, path="/v1/chat/completions"):
    with Conn(g.addr) as c:
        c.send(build_request("POST", path, body, headers))
        return c.read_response()


@test(env="alog", fresh=True, timeout=90)
def one_line_per_request_whatever_became_of_it(e):
    g = Gateway(e, "alog-lines", dict(ALOG, admin={"address": "127.0.0.1:0"}))
    want = {}  # request id -> status
    try:
        # the line's time is when the request began, to the millisecond
        t0 = time.time()
        timed = post(g, chat_body())
        t1 = time.time()
        want[timed.header("x-request-id")] = 200
        with ThreadPoolExecutor(8) as pool:
            for r in pool.map(lambda _: post(g, chat_body()), range(40)):
                expect(r.status == 200, f"chat: {r.status}")
                want[r.header("x-request-id")] = 200
        with Conn(g.addr) as c:  # keep-alive: a stream, then a local 404
            c.send(build_request("POST", "/v1/chat/completions", chat_body(stream=True), AUTH))
            r = c.read_stream()
            want[r.header("x-request-id")] = 200
            c.send(build_request("GET", "/v1/nope?q=\"x\"", None, AUTH))
            r = c.read_response()
            want[r.header("x-request-id")] = 404
        r = post(g, chat_body(), {"Authorization": "Bearer sk-wrong"})
        want[r.header("x-request-id")] = 401
        r = post(g, chat_body(model="no-such-model"))
        want[r.header("x-request-id")] = 404
        # a client gone mid-stream: 499
        c = Conn(g.addr)
        c.send(build_request("POST", "/v1/chat/completions", chat_body(stream=True),
                             dict(AUTH, **{"x-mock-token-delay-ms": "200", "x-mock-tokens": "50"})))
        aborted = c.read_head().header("x-request-id")
        c.close()
        want[aborted] = 499
        # malformed HTTP: a 400 with an id, then the connection closes
        with Conn(g.addr) as c:
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                   b"Content-Length: 2\r\n\r\nab")
            r = c.read_response()
            expect(r.status == 400, f"two Content-Lengths: {r.status}")
            want[r.header("x-request-id")] = 400
        # /metrics counts the lines too (the scrape itself is one more)
        with Conn(g.listener("(admin)")) as c:
            c.send(build_request("GET", "/metrics"))
            text = c.read_response().body.decode()
        eventually(lambda: aborted in open(os.path.join(g.tmp, "access.log")).read(), 10,
                   what="the aborted stream's line")
    finally:
        g.stop(keep=True)
    lines = read_lines(os.path.join(g.tmp, "access.log"))
    recs = read_log(g.data_dir)
    shutil.rmtree(g.tmp, ignore_errors=True)
    by_id = {}
    for ln in lines:
        expect(ln["id"] not in by_id, f"two lines for {ln['id']}")
        by_id[ln["id"]] = ln
    for rid, status in want.items():
        expect(rid in by_id, f"no line for request {rid} ({status})")
        ln = by_id[rid]
        expect(ln["status"] == status, f"{rid}: line says {ln['status']}, client saw {status}")
        expect(ln["ip"] == "127.0.0.1" and ln["time"].endswith("Z") and ln["ms"] >= 0, f"line {ln}")
        if rid in recs:  # routed: the usage log's figures
            u = recs[rid]
            expect((ln["input_tokens"], ln["output_tokens"], ln["model"], ln["provider"]) ==
                   (u["input"], u["output"], u["model"], u["provider"]),
                   f"{rid}: line {ln} vs usage record {u}")
    t = datetime.strptime(by_id[timed.header("x-request-id")]["time"],
                          "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    expect(t0 - 0.002 <= t <= t1, f"line time {t:.3f} outside the request's [{t0:.3f}, {t1:.3f}]")
    expect(by_id[aborted].get("path") == "/v1/chat/completions" and by_id[aborted]["stream"],
           f"aborted line: {by_id[aborted]}")
    nope = [ln for ln in lines if ln.get("path", "").startswith("/v1/nope")]
    expect(nope and nope[0]["path"] == '/v1/nope?q="x"' and nope[0]["method"] == "GET",
           f"escaped path: {nope}")
    # every line is one request: 47 above plus the /metrics scrape
    expect(len(lines) == len(want) + 1, f"{len(lines)} lines for {len(want) + 1} requests")
    m = [ln for ln in text.splitlines() if ln.startswith("sluice_access_log_lines_total")]
    expect(any('result="dropped"} 0' in ln for ln in m), f"dropped lines: {m}")


@test(env="alog", fresh=True, timeout=60)
def rotation_by_rename_and_sighup(e):
    g = Gateway(e, "alog-rotate", ALOG)
    path = os.path.join(g.tmp, "access.log")
    try:
        first = [post(g, chat_body()).header("x-request-id") for _ in range(5)]
        eventually(lambda: all(i in open(path).read() for i in first), 10, what="the first lines")
        os.rename(path, path + ".1")
        os.kill(g.server.proc.pid, signal.SIGHUP)
        eventually(lambda: "access log reopened" in g.log(), 10, what="the reopen")
        second = [post(g, chat_body()).header("x-request-id") for _ in range(5)]
    finally:
        g.stop(keep=True)
    old = {ln["id"] for ln in read_lines(path + ".1")}
    new = {ln["id"] for ln in read_lines(path)}
    shutil.rmtree(g.tmp, ignore_errors=True)
    expect(set(first) <= old and not (set(second) & old), f"rotated file: {old}")
    expect(set(second) <= new and not (set(first) & new), f"new file: {new}")


@test(env="alog", fresh=True, timeout=30)
def unopenable_path_stops_the_start(e):
    d = tempfile.mkdtemp(prefix="sluice-alog-")
    cfg = base_config(e.mock_addr[1], os.path.join(d, "data"))
    cfg["access_log"] = {"path": os.path.join(d, "no-such-dir", "access.log")}
    path = os.path.join(d, "sluice.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    t0 = time.monotonic()
    p = subprocess.run([GATEWAY_BIN, "serve", "-c", path], capture_output=True, text=True,
                       timeout=20)
    subprocess.run(["rm", "-rf", d])
    expect(p.returncode == 1 and "access_log: cannot open" in p.stderr and
           "No such file or directory" in p.stderr,
           f"exit {p.returncode} after {time.monotonic() - t0:.1f}s: {p.stderr[-300:]}")


if __name__ == "__main__":
    main()
