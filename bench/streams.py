#!/usr/bin/env python3
"""bench/streams.py - hold N concurrent slow SSE streams through a proxy.

Opens N keep-alive connections, then sends on each one a streaming chat
request that the mock upstream answers slowly (x-mock-token-delay-ms), so that
all N streams are open at the same time for about --hold-ms. While they are
open it samples the memory of the processes given with --pids (VmRSS and Pss,
summed) and, with --mock-stats, the mock's connections_open. Prints one line:

    STREAMS {"streams": N, "ok": N, "max_open": N, "all_open_at_once": true, ...}

Exit status 0 when every stream completed with 200 and all were open at once.
stdlib only (asyncio); bench/run uses it for the RSS table.

    python3 bench/streams.py --url http://127.0.0.1:8080 --streams 1000 \
        --hold-ms 5000 --pids 1234,1235 --mock-stats http://127.0.0.1:9100/mock/stats
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time
import urllib.request
from urllib.parse import urlsplit

SHAPES = {
    "openai": ("/v1/chat/completions",
               '{"messages":[{"role":"user","content":"Tell me a story."}],'
               '"model":"gpt-4o-mini","max_tokens":256,"stream":true}',
               "Authorization: Bearer sk-bench-client\r\n"),
    "anthropic": ("/v1/messages",
                  '{"max_tokens":256,"messages":[{"role":"user","content":"Tell me a story."}],'
                  '"model":"claude-sonnet-4-5","stream":true}',
                  "x-api-key: sk-bench-client\r\nanthropic-version: 2023-06-01\r\n"),
}


def proc_mem_kb(pid):
    """(VmRSS, VmHWM, Pss) of one process in KiB; zeros if it is gone."""
    rss = hwm = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except OSError:
        pass
    return rss, hwm, pss


class Run:
    def __init__(self, args):
        self.args = args
        self.open = 0          # streams whose response head arrived and that have not ended
        self.max_open = 0
        self.done = 0
        self.ok = 0
        self.statuses = {}
        self.errors = {}
        self.events = []       # SSE events seen per completed stream
        self.all_open = asyncio.Event()
        self.sample = None     # memory + mock stats while all streams are open
        self.rss_max_kb = 0
        self.pss_max_kb = 0
        self.connect_attempts = 0  # connections that succeeded or failed

    def error(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1

    def mem(self):
        rss = pss = 0
        for pid in self.args.pids:
            r, _, p = proc_mem_kb(pid)
            rss += r
            pss += p
        self.rss_max_kb = max(self.rss_max_kb, rss)
        self.pss_max_kb = max(self.pss_max_kb, pss)
        return rss, pss


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def read_body(reader, headers):
    """Read the body (chunked, Content-Length or to EOF); count SSE events."""
    events = 0
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # trailers, if any, end with an empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return events, True
            data = await reader.readexactly(size + 2)
            events += data.count(b"\n\n")
    elif "content-length" in headers:
        data = await reader.readexactly(int(headers["content-length"]))
        return data.count(b"\n\n"), True
    else:
        data = await reader.read()
        return data.count(b"\n\n"), False


async def one_stream(run, i, conn_sem, go):
    a = run.args
    u = urlsplit(a.url)
    path, body, auth = SHAPES[a.shape]
    token_delay = max(1, a.hold_ms // a.tokens)
    req = (f"POST {path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
           f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
           f"x-mock-token-delay-ms: {token_delay}\r\nx-mock-tokens: {a.tokens}\r\n"
           f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
    writer = None
    opened = False
    try:
        async with conn_sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(u.hostname, u.port or 80), a.timeout_s)
            finally:
                run.connect_attempts += 1
        await go.wait()
        writer.write(req)
        await writer.drain()
        status, headers = await asyncio.wait_for(read_head(reader), a.timeout_s)
        run.statuses[status] = run.statuses.get(status, 0) + 1
        run.open += 1
        opened = True
        run.max_open = max(run.max_open, run.open)
        if run.open == a.streams:
            run.all_open.set()
        events, complete = await asyncio.wait_for(read_body(reader, headers), a.timeout_s)
        run.events.append(events)
        if status == 200 and complete:
            run.ok += 1
        elif not complete:
            run.error("body not complete")
    except asyncio.TimeoutError:
        run.error("timeout")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        run.error(type(e).__name__)
    finally:
        if opened:
            run.open -= 1
        run.done += 1
        if writer is not None:
            writer.close()


async def sampler(run):
    while True:
        run.mem()
        await asyncio.sleep(0.05)


def mock_open(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r).get("connections_open")
    except Exception:
        return None


async def main(a):
    run = Run(a)
    conn_sem = asyncio.Semaphore(a.connect_concurrency)
    go = asyncio.Event()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(one_stream(run, i, conn_sem, go)) for i in range(a.streams)]
    samp = asyncio.create_task(sampler(run))
    # Let every connection finish connecting before any request is sent, so
    # the streams overlap as much as possible.
    while run.connect_attempts < a.streams and time.monotonic() - t0 < a.timeout_s:
        await asyncio.sleep(0.01)
    t_connected = time.monotonic() - t0
    go.set()
    try:
        await asyncio.wait_for(run.all_open.wait(), a.hold_ms / 1000.0 + a.timeout_s)
        rss, pss = run.mem()
        loop = asyncio.get_running_loop()
        mock = await loop.run_in_executor(None, mock_open, a.mock_stats) if a.mock_stats else None
        run.sample = {"t_s": round(time.monotonic() - t0, 3), "open": run.open,
                      "rss_kb": rss, "pss_kb": pss, "mock_connections_open": mock}
    except asyncio.TimeoutError:
        pass
    await asyncio.gather(*tasks)
    samp.cancel()
    hwm = sum(proc_mem_kb(pid)[1] for pid in a.pids)
    out = {
        "streams": a.streams, "ok": run.ok, "max_open": run.max_open,
        "all_open_at_once": run.max_open == a.streams,
        "connect_s": round(t_connected, 3), "elapsed_s": round(time.monotonic() - t0, 3),
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "errors": run.errors,
        "events_min": min(run.events) if run.events else 0,
        "events_max": max(run.events) if run.events else 0,
        "sample": run.sample, "rss_max_kb": run.rss_max_kb, "pss_max_kb": run.pss_max_kb,
        "hwm_kb": hwm,
    }
    print("STREAMS " + json.dumps(out), flush=True)
    return 0 if run.ok == a.streams and out["all_open_at_once"] else 1


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="base URL of the target, e.g. http://127.0.0.1:8080")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--hold-ms", type=int, default=5000, help="how long each stream stays open")
    p.add_argument("--tokens", type=int, default=8, help="x-mock-tokens (events are hold-ms/tokens apart)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="openai")
    p.add_argument("--pids", default="", help="comma-separated pids whose memory to sample and sum")
    p.add_argument("--mock-stats", default="", help="URL of the mock's /mock/stats")
    p.add_argument("--connect-concurrency", type=int, default=128)
    p.add_argument("--timeout-s", type=float, default=30.0)
    a = p.parse_args()
    a.pids = [int(x) for x in a.pids.split(",") if x.strip()]
    return a


if __name__ == "__main__":
    args = parse()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.streams * 2 + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    sys.exit(asyncio.run(main(args)))
