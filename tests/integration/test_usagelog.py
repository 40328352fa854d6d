"""The usage log (SPEC 3, issue 5): one record per request that reached
routing, with the right fields, tokens and cost, for every way a request
ends; SIGTERM flushes; SIGKILL under load loses no record that was flushed,
duplicates none, and leaves a log that recovery makes clean; a torn tail is
cut on start and reported.

The segments are read here by an independent parser of the format documented
in include/sluice/usagelog.h (CRC-32C included), not by the gateway's own
reader, so a format bug on either side shows."""

import csv
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (ANTHROPIC_VERSION, CLIENT_KEY, GATEWAY_BIN, TEST_TIER,  # noqa: E402
                     Closed, Conn, Server, base_config, build_request, chat_body, deep_merge, env,
                     expect, import_key, main, messages_body, test)

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": ANTHROPIC_VERSION}

from usagelog_reader import FLAG_ESTIMATED, FLAG_REFUSED, FLAG_STREAM, read_log, read_segment  # noqa: E402


# --- the gateway, run by the tests themselves (they restart it) ------------------------

class Gateway:
    def __init__(self, e, name, over=None):
        self.e = e
        self.name = name
        self.tmp = tempfile.mkdtemp(prefix=f"sluice-{name}-")
        self.data_dir = os.path.join(self.tmp, "data")
        cfg = deep_merge(base_config(e.mock_addr[1], self.data_dir), over or {})
        self.cfg_path = os.path.join(self.tmp, "sluice.json")
        with open(self.cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.key_id = import_key(self.cfg_path, CLIENT_KEY)
        self.n = 0
        self.server = None

    def start(self):
        self.n += 1
        self.server = Server("sluice", [GATEWAY_BIN, "serve", "-c", self.cfg_path, "--threads", "2"],
                             "sluice", os.path.join(self.e.log_dir, f"{self.name}.gateway{self.n}.log"))
        self.server.start()
        return self.server

    def stop(self):
        problems = self.server.stop()
        expect(not problems, f"gateway stop: {problems}")

    def log_text(self):
        with open(self.server.log_path, errors="replace") as f:
            return f.read()

    def cleanup(self):
        if self.server and self.server.alive():
            self.server.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def pico(tokens, per_million_usd):
    """Cost in pico-dollars of tokens at a price in dollars per 1M: exact
    (micro-dollars per 1M tokens = pico-dollars per token)."""
    return tokens * round(per_million_usd * 1_000_000)


env("usage", gateway=False)


@test(env="usage", fresh=True, timeout=90)
def records_for_every_way_a_request_ends(e):
    g = Gateway(e, "usage-ends", {"tiers": {"tiny": {"requests_per_minute": 1}},
                                  "models": {"claude-sonnet-4-5": {"price": {"cache_write_1h": "6.00"}}}})
    try:
        g.start()
        ids = {}
        with Conn(g.server.addr) as c:
            # non-stream chat, with cached tokens (counted inside prompt_tokens)
            c.send(build_request("POST", "/v1/chat/completions", chat_body(),
                                 dict(AUTH, **{"x-mock-cache-read": "5"})))
            r = c.read_response()
            expect(r.status == 200, f"chat: {r.status}")
            ids["chat"] = (r.header("x-request-id"), r.json()["usage"])
            # Messages, non-stream, with cache reads and writes
            c.send(build_request("POST", "/v1/messages", messages_body(),
                                 dict(XKEY, **{"x-mock-cache-read": "7", "x-mock-cache-write": "3",
                                               "x-mock-cache-write-1h": "2"})))
            r = c.read_response()
            expect(r.status == 200, f"messages: {r.status}")
            ids["messages"] = (r.header("x-request-id"), r.json()["usage"])
            # Messages stream
            c.send(build_request("POST", "/v1/messages", messages_body(stream=True), XKEY))
            r = c.read_stream()
            expect(r.status == 200, f"messages stream: {r.status}")
            ids["messages_stream"] = (r.header("x-request-id"), None)
            # a stream the upstream cuts after 5 deltas: no final usage
            c.send(build_request("POST", "/v1/messages", messages_body(stream=True),
                                 dict(XKEY, **{"x-mock-disconnect-after": "5", "x-mock-tokens": "20"})))
            try:
                r = c.read_stream()
                ids["cut_stream"] = (r.header("x-request-id"), None)
            except Closed:
                raise AssertionError("the gateway closed the client on a cut upstream stream")
            # a converted request: Messages route, OpenAI-format model
            c.send(build_request("POST", "/v1/messages", messages_body(model="gpt-4o-mini"), XKEY))
            r = c.read_response()
            expect(r.status == 200, f"converted: {r.status}")
            ids["converted"] = (r.header("x-request-id"), r.json()["usage"])
            # the upstream answers 500: logged with its status
            c.send(build_request("POST", "/v1/chat/completions", chat_body(),
                                 dict(AUTH, **{"x-mock-status": "500"})))
            r = c.read_response()
            expect(r.status >= 500, f"upstream error: {r.status}")
            ids["upstream_error"] = (r.header("x-request-id"), None)
            # not routed: no record
            c.send(build_request("POST", "/v1/chat/completions", chat_body(model="no-such-model"), AUTH))
            r = c.read_response()
            expect(r.status == 404, f"unknown model: {r.status}")
            ids["unknown_model"] = (r.header("x-request-id"), None)
        # a client gone mid-stream
        c = Conn(g.server.addr)
        c.send(build_request("POST", "/v1/chat/completions", chat_body(stream=True),
                             dict(AUTH, **{"x-mock-token-delay-ms": "200", "x-mock-tokens": "50"})))
        head = c.read_head()
        ids["aborted"] = (head.header("x-request-id"), None)
        c.close()
        # refused by a limit: a second key on a 1-request-per-minute tier
        tiny_key = "sk-sluice-usage-tiny-0123456789abcdef"
        tiny_id = import_key(g.cfg_path, tiny_key, name="tiny", tier="tiny")
        os.kill(g.server.proc.pid, signal.SIGHUP)
        tiny = {"Authorization": f"Bearer {tiny_key}"}
        deadline = time.time() + 10
        while True:
            with Conn(g.server.addr) as c2:
                c2.send(build_request("POST", "/v1/chat/completions", chat_body(), tiny))
                resp = c2.read_response()
            if resp.status != 401 or time.time() > deadline:
                break
            time.sleep(0.05)
        expect(resp.status == 200, f"tiny key, first request: {resp.status}")
        with Conn(g.server.addr) as c2:
            c2.send(build_request("POST", "/v1/chat/completions", chat_body(), tiny))
            resp = c2.read_response()
        expect(resp.status == 429, f"tiny key, second request: {resp.status}")
        ids["refused"] = (resp.header("x-request-id"), None)
        g.stop()

        recs = read_log(g.data_dir)
        for what, (rid, _) in ids.items():
            expect(rid, f"{what}: no x-request-id")
        expect(ids["unknown_model"][0] not in recs, "a request for an unknown model was logged")

        r = recs[ids["chat"][0]]
        u = ids["chat"][1]
        cached = u["prompt_tokens_details"]["cached_tokens"]
        expect(cached == 5, f"mock cached_tokens {cached}")
        expect((r["status"], r["model"], r["provider"], r["key_id"]) ==
               (200, "gpt-4o-mini", "mock-openai", g.key_id), f"chat record: {r}")
        expect((r["input"], r["output"], r["cache_read"]) ==
               (u["prompt_tokens"] - cached, u["completion_tokens"], cached),
               f"chat tokens {r} vs usage {u}")
        want = pico(r["input"], 0.15) + pico(r["output"], 0.60) + pico(cached, 0.075)
        expect(r["cost"] == want, f"chat cost {r['cost']}, expected {want}")
        expect(r["flags"] == 0 and r["attempts"] == 1, f"chat flags/attempts: {r}")
        expect(r["ip_family"] == 4 and r["ip"][:4] == bytes([127, 0, 0, 1]), f"chat client ip: {r['ip']}")
        expect(0 < r["ttfb_ms"] <= r["total_ms"] + 1 or r["ttfb_ms"] <= r["total_ms"],
               f"chat times: ttfb {r['ttfb_ms']} total {r['total_ms']}")
        expect(abs(r["time_ms"] - time.time() * 1000) < 120_000, f"chat time {r['time_ms']}")

        r = recs[ids["messages"][0]]
        u = ids["messages"][1]
        expect((r["input"], r["output"], r["cache_read"], r["cache_write"], r["cache_write_1h"]) ==
               (u["input_tokens"], u["output_tokens"], 7, 3, 2), f"messages tokens {r} vs {u}")
        expect(u.get("cache_creation") == {"ephemeral_5m_input_tokens": 1,
                                           "ephemeral_1h_input_tokens": 2},
               f"the mock's cache_creation split: {u}")
        # 5-minute and 1-hour cache writes at their own prices
        want = (pico(r["input"], 3.00) + pico(r["output"], 15.00) + pico(7, 0.30) +
                pico(1, 3.75) + pico(2, 6.00))
        expect(r["cost"] == want, f"messages cost {r['cost']}, expected {want}")

        r = recs[ids["messages_stream"][0]]
        expect(r["flags"] & FLAG_STREAM and r["status"] == 200, f"stream record: {r}")
        expect(r["input"] > 0 and r["output"] > 0 and not r["flags"] & FLAG_ESTIMATED,
               f"stream tokens: {r}")

        r = recs[ids["cut_stream"][0]]
        expect(r["flags"] & FLAG_ESTIMATED and r["output"] == 5 and r["input"] > 0,
               f"cut stream: expected estimated usage with 5 output tokens (the deltas relayed): {r}")

        r = recs[ids["converted"][0]]
        u = ids["converted"][1]
        expect((r["model"], r["provider"], r["input"], r["output"]) ==
               ("gpt-4o-mini", "mock-openai", u["input_tokens"], u["output_tokens"]),
               f"converted record {r} vs usage {u}")

        r = recs[ids["upstream_error"][0]]
        expect(r["status"] >= 500 and r["cost"] == 0, f"upstream error record: {r}")

        r = recs[ids["aborted"][0]]
        expect(r["status"] == 499 and r["flags"] & FLAG_STREAM and r["flags"] & FLAG_ESTIMATED
               and r["input"] > 0, f"aborted stream record: {r}")

        r = recs[ids["refused"][0]]
        expect(r["status"] == 429 and r["flags"] & FLAG_REFUSED and r["key_id"] == tiny_id
               and r["provider"] == "" and r["cost"] == 0, f"refused record: {r}")
        expect(len(recs) == 9, f"{len(recs)} records, expected 9 (8 above + tiny's first)")

        # the bundled tool agrees with this reader, and its totals with its export
        def tool(*args):
            return subprocess.run([GATEWAY_BIN, "usage", *args, "-c", g.cfg_path],
                                  capture_output=True, text=True, timeout=30)
        v = tool("verify")
        expect(v.returncode == 0 and "records 9" in v.stdout, f"usage verify: {v.returncode} {v.stdout}")
        x = tool("export", "--format", "jsonl")
        expect(x.returncode == 0, f"usage export: {x.returncode} {x.stderr}")
        rows = [json.loads(line) for line in x.stdout.splitlines()]
        expect(sorted(row["request_id"] for row in rows) == sorted(recs),
               "export's request ids differ from the log's")
        for row in rows:
            mine = recs[row["request_id"]]
            expect((row["input_tokens"], row["output_tokens"], row["cache_read_tokens"],
                    row["cache_write_tokens"], row["cost_pico_usd"], row["status"],
                    row["usage"] == "estimated", row["refused"]) ==
                   (mine["input"], mine["output"], mine["cache_read"], mine["cache_write"],
                    mine["cost"], mine["status"], bool(mine["flags"] & FLAG_ESTIMATED),
                    bool(mine["flags"] & FLAG_REFUSED)), f"export row {row} vs record {mine}")
        t = tool("totals", "--by", "model", "--format", "csv")
        expect(t.returncode == 0, f"usage totals: {t.returncode} {t.stderr}")
        trows = list(csv.DictReader(io.StringIO(t.stdout)))
        total = [row for row in trows if row[next(iter(row))] == "TOTAL"]
        expect(len(total) == 1 and int(total[0]["requests"]) == 9 and
               round(float(total[0]["cost_usd"]) * 1e12) == sum(r["cost"] for r in recs.values()) and
               int(total[0]["output_tokens"]) == sum(r["output"] for r in recs.values()),
               f"totals TOTAL {total} vs the records")
        # a flipped byte in a record: verify says so and exits 1
        udir = os.path.join(g.data_dir, "usage")
        seg = max((os.path.join(udir, n) for n in os.listdir(udir)), key=os.path.getsize)
        with open(seg, "r+b") as f:
            f.seek(16 + 16 + 20)
            b = f.read(1)
            f.seek(16 + 16 + 20)
            f.write(bytes([b[0] ^ 0xFF]))
        v = tool("verify")
        expect(v.returncode == 1 and os.path.basename(seg) in v.stdout + v.stderr,
               f"usage verify on a corrupt segment: {v.returncode} {v.stdout} {v.stderr}")
    finally:
        g.cleanup()


def live_request_ids(data_dir):
    """The request ids in the log while the gateway runs (a write may be
    under way at the end of a segment: what precedes it counts)."""
    udir = os.path.join(data_dir, "usage")
    out = set()
    for n in os.listdir(udir):
        _, recs, _, _ = read_segment(os.path.join(udir, n))
        out.update(r["request_id"] for _, r in recs)
    return out


@test(env="usage", fresh=True, timeout=60)
def images_priced_per_image(e):
    g = Gateway(e, "usage-images", {"models": {"dall-e-3": {
        "targets": [{"provider": "mock-openai", "model": "dall-e-3"}],
        "price": {"image": "0.04"}}}})
    try:
        g.start()
        ids = {}
        with Conn(g.server.addr) as c:
            for name, body in (("urls", {"model": "dall-e-3", "prompt": "a cat", "n": 3}),
                               ("b64", {"model": "dall-e-3", "prompt": "a cat", "n": 2,
                                        "response_format": "b64_json"})):
                c.send(build_request("POST", "/v1/images/generations", json.dumps(body).encode(),
                                     dict(AUTH, **{"Content-Type": "application/json"})))
                r = c.read_response()
                expect(r.status == 200 and len(r.json()["data"]) == body["n"],
                       f"images {name}: {r.status} {r.body[:200]}")
                ids[name] = r.header("x-request-id")
        g.stop()
        recs = read_log(g.data_dir)
        # (the b64 answer's revised_prompt holds an escaped \"url\": not an image)
        for name, n in (("urls", 3), ("b64", 2)):
            r = recs[ids[name]]
            expect(r["images"] == n and r["cost"] == n * 40000 * 1_000_000,
                   f"images {name}: {r['images']} images, cost {r['cost']} (expected {n} at $0.04)")
    finally:
        g.cleanup()


@test(env="usage", fresh=True, timeout=240)
def sigkill_under_load_loses_nothing_written_and_duplicates_nothing(e):
    """Five rounds. Load on both reactors; a pause in which every answered
    request must reach the log files within 5 s (the group commit runs); more
    load; SIGKILL in the middle of it; restart. After each restart the log
    reads clean (recovery cut any torn tail), no request is logged twice,
    every request the log held before the kill is still there, and a logged
    request no client saw answered can only be one in flight at the kill (at
    most one per client per round)."""
    g = Gateway(e, "usage-kill", {"usage_log": {"flush_ms": 5}})
    rng = random.Random(7)
    done = []       # request ids of the responses the clients got
    durable = set()  # of those, the ones seen in the log files before a kill
    clients = 4
    lock = threading.Lock()

    def load(seconds):
        stop = threading.Event()

        def client():
            while not stop.is_set():
                try:
                    with Conn(g.server.addr, timeout_s=5) as c:
                        for _ in range(50):
                            if stop.is_set():
                                return
                            c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
                            r = c.read_response()
                            if r.status == 200:
                                with lock:
                                    done.append(r.header("x-request-id"))
                except (Closed, OSError, AssertionError):
                    if stop.is_set():
                        return
                    time.sleep(0.01)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        return stop, threads

    def halt(stop, threads):
        stop.set()
        for t in threads:
            t.join(10)

    try:
        for rnd in range(5):
            g.start()
            first = len(done)
            halt(*load(0.2 + rng.random() * 0.4))
            with lock:
                answered = set(done[first:])
            deadline = time.time() + 5
            while True:
                missing = answered - live_request_ids(g.data_dir)
                if not missing or time.time() > deadline:
                    break
                time.sleep(0.02)
            expect(not missing, f"round {rnd}: {len(missing)} of {len(answered)} answered requests "
                                f"not in the log files 5 s later, e.g. {sorted(missing)[:3]}")
            durable |= answered
            stop, threads = load(0.05 + rng.random() * 0.3)
            g.server.kill()
            halt(stop, threads)
            g.server.stop()  # reap; a killed gateway's status is expected
            g.start()        # recovery runs here
            g.stop()
            recs = read_log(g.data_dir)
            lost = durable - set(recs)
            expect(not lost, f"round {rnd}: {len(lost)} requests written before the kill are gone "
                             f"after recovery, e.g. {sorted(lost)[:3]}")
            with lock:
                seen = set(done)
            unknown = [rid for rid in recs if rid not in seen]
            expect(len(unknown) <= clients * (rnd + 1),
                   f"round {rnd}: {len(unknown)} logged requests no client saw answered "
                   f"(at most {clients} per round can be in flight at a kill)")
        expect(len(done) > 100, f"only {len(done)} requests answered over the rounds")
    finally:
        g.cleanup()


@test(env="usage", fresh=True, timeout=240)
def strict_mode_every_answered_request_survives_sigkill(e):
    """usage_log.mode strict: a response's last bytes go out only once its
    record is durable. Five rounds of load on both reactors (non-stream,
    streams, an upstream error) killed with SIGKILL at a random moment: after
    recovery, every request a client saw complete is in the log, exactly
    once. (In batched mode this fails: the last few ms of answered requests
    die with the process.)"""
    g = Gateway(e, "usage-strict", {"usage_log": {"mode": "strict"}})
    rng = random.Random(11)
    done = []
    lock = threading.Lock()
    kinds = [("POST", "/v1/chat/completions", chat_body(), AUTH, False),
             ("POST", "/v1/chat/completions", chat_body(stream=True), AUTH, True),
             ("POST", "/v1/messages", messages_body(stream=True), XKEY, True),
             ("POST", "/v1/chat/completions", chat_body(), dict(AUTH, **{"x-mock-status": "503"}), False)]
    try:
        for rnd in range(5):
            g.start()
            stop = threading.Event()

            def client(n):
                while not stop.is_set():
                    try:
                        with Conn(g.server.addr, timeout_s=5) as c:
                            for i in range(40):
                                if stop.is_set():
                                    return
                                method, path, body, hdrs, stream = kinds[(n + i) % len(kinds)]
                                c.send(build_request(method, path, body, hdrs))
                                r = c.read_stream() if stream else c.read_response()
                                if r.complete and r.status in (200, 503):
                                    with lock:
                                        done.append(r.header("x-request-id"))
                    except (Closed, OSError, AssertionError):
                        if stop.is_set():
                            return
                        time.sleep(0.01)

            threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.3 + rng.random() * 0.5)
            g.server.kill()
            stop.set()
            for t in threads:
                t.join(10)
            g.server.stop()
            g.start()
            g.stop()
            recs = read_log(g.data_dir)   # also: no request twice, seqs consecutive
            with lock:
                answered = list(done)
            missing = [rid for rid in answered if rid not in recs]
            expect(not missing, f"round {rnd}: {len(missing)} of {len(answered)} requests a client "
                                f"saw complete are not in the log, e.g. {missing[:3]}")
        expect(len(done) > 100, f"only {len(done)} requests answered over the rounds")
    finally:
        g.cleanup()


@test(env="usage", fresh=True, timeout=60)
def torn_tail_cut_and_reported_on_start(e):
    g = Gateway(e, "usage-torn")
    try:
        g.start()
        with Conn(g.server.addr) as c:
            for _ in range(3):
                c.send(build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
                expect(c.read_response().status == 200, "request")
        g.stop()
        udir = os.path.join(g.data_dir, "usage")
        segs = sorted(os.path.join(udir, n) for n in os.listdir(udir))
        written = [s for s in segs if read_segment(s)[1]]
        expect(written, "no segment holds records")
        seg = written[-1]
        core, recs, _, good = read_segment(seg)
        n_before = len(recs)
        # a crash mid-write: half a frame after the last good one
        with open(seg, "rb") as f:
            data = f.read()
        with open(seg, "ab") as f:
            f.write(data[16:16 + 20])
        g.start()
        g.stop()
        text = g.log_text()
        expect("cut" in text and os.path.basename(seg) in text,
               f"the gateway did not report cutting {os.path.basename(seg)}: {text[-800:]}")
        core2, recs2, damage, good2 = read_segment(seg)
        expect(damage is None and len(recs2) == n_before and good2 == good,
               f"after recovery: damage {damage}, {len(recs2)} records (had {n_before})")
        recs_all = read_log(g.data_dir)
        expect(len(recs_all) == 3, f"{len(recs_all)} records after recovery, expected 3")
    finally:
        g.cleanup()


if __name__ == "__main__":
    main()
