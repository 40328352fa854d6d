#!/usr/bin/env python3
"""bench/tls_idle.py - hold N idle keep-alive connections (TLS or plain) to a
server and report its memory while they are held (bench/tls_e2e).

    tls_idle.py --port P [--tls --ca CA.pem --sni localhost] [--conns 1000]
                --pids PID,PID [--hold 1.0]

Each connection is opened (at most --parallel at a time: TCP connect and, with
--tls, the full handshake, certificate and host name verified), sends one
`GET /healthz` (keep-alive) and reads the answer, then stays open and idle.
Once all are open, the client waits --hold seconds, sums VmRSS and Pss
(smaps_rollup) of --pids, closes everything and prints one line:

    IDLE {"held": N, "failed": N, "errors": {...}, "rss_kb": N, "pss_kb": N, "seconds": S}

stdlib only.
"""
import argparse
import asyncio
import json
import ssl
import sys
import time


def mem_kb(pids, field, path="status"):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/{path}") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


async def open_one(args, ctx, sem, held, errors):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", args.port, ssl=ctx,
                                        server_hostname=args.sni if ctx else None),
                timeout=args.timeout)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=args.timeout)
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), timeout=args.timeout)
            if status != b"200":
                raise RuntimeError(f"HTTP {status.decode()}")
            held.append((reader, writer))
        except Exception as e:  # noqa: BLE001 - counted and reported
            key = type(e).__name__ + (f": {e}" if isinstance(e, RuntimeError) else "")
            errors[key] = errors.get(key, 0) + 1


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--ca")
    ap.add_argument("--sni", default="localhost")
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--parallel", type=int, default=128)
    ap.add_argument("--pids", required=True)
    ap.add_argument("--hold", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    pids = [p for p in args.pids.replace(" ", ",").split(",") if p]
    ctx = None
    if args.tls:
        ctx = ssl.create_default_context(cafile=args.ca)
    sem = asyncio.Semaphore(args.parallel)
    held, errors = [], {}
    t0 = time.monotonic()
    await asyncio.gather(*(open_one(args, ctx, sem, held, errors) for _ in range(args.conns)))
    seconds = time.monotonic() - t0
    await asyncio.sleep(args.hold)
    rss = mem_kb(pids, "VmRSS")
    pss = mem_kb(pids, "Pss", "smaps_rollup")
    # Are they still open? A server that dropped them would have sent EOF.
    still = sum(1 for r, _ in held if not r.at_eof())
    for _, w in held:
        w.close()
    for _, w in held:
        try:
            await asyncio.wait_for(w.wait_closed(), timeout=2)
        except Exception:  # noqa: BLE001
            pass
    print("IDLE " + json.dumps({"held": still, "failed": args.conns - len(held), "errors": errors,
                                "rss_kb": rss, "pss_kb": pss, "seconds": round(seconds, 2)}))
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
