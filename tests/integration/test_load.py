"""Many concurrent streams from one client process (asyncio): every one
completes with every event."""

import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (CLIENT_KEY, build_request, chat_body, env, expect, expect_status, main,  # noqa: E402
                     test)

env("load", mock_threads=2)

STREAMS = 1000
TOKENS = 5
HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}", "x-mock-tokens": TOKENS, "x-mock-token-delay-ms": 200}


async def one_stream(addr, request, opened, results, i):
    for attempt in range(3):
        try:
            reader, writer = await asyncio.open_connection(*addr)
            break
        except OSError as e:
            if attempt == 2:
                results[i] = f"connect: {e}"
                return
            await asyncio.sleep(0.2)
    opened.append(time.monotonic())
    try:
        writer.write(request)
        await writer.drain()
        status = await reader.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            results[i] = f"status line {status[:60]!r}"
            return
        chunked = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        body = b""
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                body += await reader.readexactly(size + 2)
        else:
            body = await reader.read()
        results[i] = body.count(b"data:")
    except Exception as e:  # noqa: BLE001 - any failure is this stream's result
        results[i] = f"{type(e).__name__}: {e}"
    finally:
        writer.close()


async def many_streams(addr, request, n):
    results = [None] * n
    opened = []
    await asyncio.gather(*(one_stream(addr, request, opened, results, i) for i in range(n)))
    return results, opened


@test(env="load", timeout=120)
def thousand_concurrent_streams(e):
    direct = e.stream("/v1/chat/completions", chat_body("gpt-4o-mini-2024-07-18", stream=True),
                      {"x-mock-tokens": TOKENS}, mock=True)
    expect_status(direct, 200)
    want = direct.body.count(b"data:")
    expect(want >= TOKENS + 1, f"the mock's stream has {want} data events")
    request = build_request("POST", "/v1/chat/completions", chat_body(stream=True), HEADERS)
    t0 = time.monotonic()
    results, _ = asyncio.run(many_streams(e.addr, request, STREAMS))
    took = time.monotonic() - t0
    bad = [(i, r) for i, r in enumerate(results) if r != want]
    expect(not bad, f"{len(bad)} of {STREAMS} streams failed (expected {want} events each), "
                    f"e.g. {bad[:3]}")
    # 5 tokens 200 ms apart take ~1 s; serialised streams would take far longer
    expect(took < 30, f"{STREAMS} streams took {took:.1f}s")
    s = e.mock_stats()
    expect(s["requests"] >= STREAMS, f"mock saw {s['requests']} requests")


@test(env="load", timeout=60)
def still_serving_after_load(e):
    r = e.request("POST", "/v1/chat/completions", chat_body(), {"Authorization": f"Bearer {CLIENT_KEY}"})
    expect_status(r, 200)
    json.loads(r.body)


if __name__ == "__main__":
    main()
