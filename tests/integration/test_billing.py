"""Balances and budgets (SPEC 3, issue 5): a prepaid key is held against at
admission and settled with the real cost; 402 insufficient_balance /
budget_exceeded in the route's error shape, before any upstream call; many
parallel requests on a nearly empty balance across both reactors never
overdraw it; balances are derived from the key store and the usage log, so
a restart gives exactly the balance from before the stop; a top-up applies on
SIGHUP."""

import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (ANTHROPIC_VERSION, CLIENT_KEY, GATEWAY_BIN, Closed, Conn, Server,  # noqa: E402
                     base_config, build_request, chat_body, deep_merge, env, expect, import_key,
                     keys_cli, main, messages_body, test)
from usagelog_reader import read_log  # noqa: E402

FLAG_PLAN = 8

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": ANTHROPIC_VERSION}
PREPAID = "prepaid"
PICO = 1_000_000  # pico-dollars per micro-dollar


class Gateway:
    """A gateway with CLIENT_KEY on tier `tier`, restartable on the same data."""

    def __init__(self, e, name, tiers, tier):
        self.e = e
        self.name = name
        self.tmp = tempfile.mkdtemp(prefix=f"sluice-{name}-")
        self.data_dir = os.path.join(self.tmp, "data")
        cfg = deep_merge(base_config(e.mock_addr[1], self.data_dir), {"tiers": tiers})
        self.cfg_path = os.path.join(self.tmp, "sluice.json")
        with open(self.cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
        self.key_id = import_key(self.cfg_path, CLIENT_KEY, tier=tier)
        self.n = 0
        self.server = None

    def start(self):
        self.n += 1
        self.server = Server("sluice", [GATEWAY_BIN, "serve", "-c", self.cfg_path, "--threads", "2"],
                             "sluice", os.path.join(self.e.log_dir, f"{self.name}.gateway{self.n}.log"))
        self.server.start()

    def stop(self):
        problems = self.server.stop()
        expect(not problems, f"gateway stop: {problems}")

    def log_text(self):
        with open(self.server.log_path, errors="replace") as f:
            return f.read()

    def topup(self, usd):
        r = keys_cli(self.cfg_path, "topup", self.key_id, usd)
        expect(r.returncode == 0, f"keys topup: {r.returncode} {r.stderr}")

    def chat(self, headers=None, max_tokens_override=16, **kw):
        with Conn(self.server.addr) as c:
            c.send(build_request("POST", "/v1/chat/completions",
                                 chat_body(max_tokens=max_tokens_override, **kw),
                                 dict(AUTH, **(headers or {}))))
            return c.read_response()

    def cleanup(self):
        if self.server and self.server.alive():
            self.server.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def costs(data_dir):
    return sum(r["cost"] for r in read_log(data_dir).values())


env("billing", gateway=False)


@test(env="billing", fresh=True, timeout=90)
def prepaid_balance_refused_at_zero_and_derived_across_restart(e):
    g = Gateway(e, "bill-prepaid", {PREPAID: {"prepaid": True}}, PREPAID)
    try:
        g.start()
        r = g.chat()
        expect(r.status == 402, f"no balance yet: {r.status}")
        err = r.json().get("error", {})
        expect(err.get("type") == "insufficient_balance", f"402 body: {r.json()}")
        with Conn(g.server.addr) as c:
            c.send(build_request("POST", "/v1/messages", messages_body(max_tokens=16), XKEY))
            r = c.read_response()
        expect(r.status == 402 and r.json().get("type") == "error" and
               r.json()["error"].get("type") == "insufficient_balance",
               f"Anthropic-shaped 402: {r.status} {r.body[:200]}")

        g.topup("0.0002")   # 200 micro-dollars: a handful of requests
        os.kill(g.server.proc.pid, signal.SIGHUP)
        deadline = time.time() + 10
        while g.chat().status == 402 and time.time() < deadline:
            time.sleep(0.05)
        admitted = 1
        while True:
            r = g.chat()
            if r.status != 200:
                break
            admitted += 1
            expect(admitted < 1000, "the balance never ran out")
        expect(r.status == 402 and r.json()["error"]["type"] == "insufficient_balance",
               f"after {admitted} requests: {r.status} {r.body[:200]}")
        g.stop()
        spent = costs(g.data_dir)
        expect(0 < spent <= 200 * PICO, f"{admitted} requests cost {spent} pico-dollars of a "
                                        f"200 micro-dollar balance")
        shown = json.loads(keys_cli(g.cfg_path, "show", g.key_id, "--json").stdout)
        expect((shown["balance_micro_usd"], shown["spent_pico_usd"], shown["available_pico_usd"])
               == (200, spent, 200 * PICO - spent), f"keys show: {shown}, log spent {spent}")

        # derived: the restarted gateway knows what is left, to the micro-dollar
        g.start()
        r = g.chat()
        expect(r.status == 402, f"after restart, the spent balance is still spent: {r.status}")
        g.topup("0.0001")
        os.kill(g.server.proc.pid, signal.SIGHUP)
        deadline = time.time() + 10
        while g.chat().status == 402 and time.time() < deadline:
            time.sleep(0.05)
        more = 1
        while g.chat().status == 200:
            more += 1
            expect(more < 1000, "the top-up never ran out")
        g.stop()
        spent2 = costs(g.data_dir)
        expect(spent < spent2 <= 300 * PICO, f"after the top-up: spent {spent2} of 300 micro-dollars")
    finally:
        g.cleanup()


@test(env="billing", fresh=True, timeout=90)
def credits_state_summarises_the_log(e):
    """A clean stop writes credits.state; the next start reads it and only
    the records after it: the operator may archive the old segments and the
    balance stays exact. A damaged credits.state is refused (reported) and
    the whole log replayed instead."""
    g = Gateway(e, "bill-state", {PREPAID: {"prepaid": True}}, PREPAID)
    try:
        g.topup("0.0001")
        g.start()
        n = 0
        while g.chat().status == 200:
            n += 1
            expect(n < 1000, "the balance never ran out")
        g.stop()
        state = os.path.join(g.data_dir, "credits.state")
        expect(os.path.exists(state), "no credits.state after a clean stop")
        spent = costs(g.data_dir)
        # damaged: refused, and the log (still there) replayed
        with open(state, "r+b") as f:
            f.seek(12)
            f.write(b"\xff")
        g.start()
        expect(g.chat().status == 402, "after a damaged credits.state: the balance came back")
        g.stop()
        expect("damaged" in g.log_text(), "a damaged credits.state was not reported")
        # archived segments: only credits.state (rewritten at that stop) knows
        udir = os.path.join(g.data_dir, "usage")
        archive = os.path.join(g.tmp, "archive")
        shutil.move(udir, archive)
        g.start()
        r = g.chat()
        expect(r.status == 402, f"after archiving the log, the spent balance came back: {r.status}")
        g.topup("0.0001")
        os.kill(g.server.proc.pid, signal.SIGHUP)
        deadline = time.time() + 10
        while g.chat().status == 402 and time.time() < deadline:
            time.sleep(0.05)
        more = 1
        while g.chat().status == 200:
            more += 1
            expect(more < 1000, "the top-up never ran out")
        g.stop()
        spent2 = spent + costs(g.data_dir)
        expect(spent2 <= 200 * PICO, f"spent {spent2} of 200 micro-dollars across the archive")
        expect(spent2 > spent, "the top-up was not spent")
    finally:
        g.cleanup()


def available_in_402(g, max_tokens=4096):
    """The balance the gateway holds for the key, as its 402 says it: a
    request whose hold (max_tokens at the output price) exceeds it."""
    r = g.chat(max_tokens_override=max_tokens)
    expect(r.status == 402, f"the probe was admitted: {r.status}")
    msg = r.json()["error"]["message"]
    m = re.search(r"available \$(-?[0-9]+)\.([0-9]+)\)", msg)
    expect(m, f"no available amount in {msg!r}")
    whole, frac = m.group(1), m.group(2)
    return int(whole) * 10**12 + int(frac.ljust(12, "0"))


@test(env="billing", fresh=True, timeout=180)
def balance_after_sigkills_equals_the_replayed_log(e):
    """Load on a prepaid key, SIGKILL at random moments, restart: the
    balance the gateway holds is the top-ups less the costs in the log, to
    the pico-dollar (a 402's "available" says it)."""
    g = Gateway(e, "bill-kill", {PREPAID: {"prepaid": True}}, PREPAID)
    rng = random.Random(5)
    try:
        g.topup("0.002")   # 2000 micro-dollars; a request holds ~13, costs ~8
        for rnd in range(3):
            g.start()
            stop = threading.Event()

            def client():
                while not stop.is_set():
                    try:
                        g.chat()
                    except (Closed, OSError, AssertionError):
                        pass

            threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.2 + rng.random() * 0.3)
            g.server.kill()
            stop.set()
            for t in threads:
                t.join(10)
            g.server.stop()
        g.start()
        available = available_in_402(g)
        g.stop()
        recs = read_log(g.data_dir).values()
        spent = sum(r["cost"] for r in recs if r["key_id"] == g.key_id)
        expect(spent > 0, "nothing was spent")
        expect(available == 2000 * PICO - spent,
               f"the gateway holds {available} pico-dollars; top-ups less the log: "
               f"{2000 * PICO - spent}")
    finally:
        g.cleanup()


@test(env="billing", fresh=True, timeout=120)
def parallel_requests_never_overdraw(e):
    """16 clients on both reactors race for a balance that covers ~20
    requests; the costs settled never exceed the balance (holds cover the
    real costs here: max_tokens is set and the input estimate is not short)."""
    g = Gateway(e, "bill-race", {PREPAID: {"prepaid": True}}, PREPAID)
    try:
        g.topup("0.0005")
        g.start()
        ok, refused = [0], [0]
        lock = threading.Lock()

        def client():
            for _ in range(30):
                r = g.chat()
                with lock:
                    if r.status == 200:
                        ok[0] += 1
                    elif r.status == 402:
                        refused[0] += 1
                    else:
                        raise AssertionError(f"unexpected {r.status}")

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        g.stop()
        spent = costs(g.data_dir)
        expect(ok[0] > 0 and refused[0] > 0, f"{ok[0]} admitted, {refused[0]} refused")
        expect(spent <= 500 * PICO, f"overdrawn: {ok[0]} requests cost {spent} of a 500 micro-dollar "
                                    f"balance")
        # and most of the balance was usable: holds are released at the end
        per = spent / ok[0]
        expect(spent >= 500 * PICO - 3 * per * 16, f"only {spent} of 500e6 spent ({ok[0]} requests)")
    finally:
        g.cleanup()


@test(env="billing", fresh=True, timeout=90)
def daily_budget_refuses_once_spent(e):
    g = Gateway(e, "bill-budget", {"capped": {"budget_usd_per_day": "0.0001"}}, "capped")
    try:
        g.start()
        n = 0
        while True:
            r = g.chat()
            if r.status != 200:
                break
            n += 1
            expect(n < 1000, "the budget never ran out")
        expect(r.status == 402 and r.json()["error"]["type"] == "budget_exceeded",
               f"after {n} requests: {r.status} {r.body[:200]}")
        g.stop()
        spent = costs(g.data_dir)
        expect(spent >= 100 * PICO, f"refused at {spent} pico-dollars spent, budget 100 micro-dollars")
        # the budget holds across a restart (derived from the log)
        g.start()
        r = g.chat()
        expect(r.status == 402 and r.json()["error"]["type"] == "budget_exceeded",
               f"after restart: {r.status}")
        g.stop()
    finally:
        g.cleanup()


@test(env="billing", fresh=True, timeout=90)
def plan_credits_spent_first_then_balance(e):
    g = Gateway(e, "bill-plan", {"planned": {"prepaid": True, "plan_credits_usd": "0.0001",
                                             "plan_window_hours": 24}}, "planned")
    try:
        g.start()
        n = 0
        while True:
            r = g.chat()
            if r.status != 200:
                break
            n += 1
            expect(n < 1000, "the plan credits never ran out")
        expect(n > 0, "no request was paid by the plan credits")
        msg = r.json()["error"].get("message", "")
        expect(r.status == 402 and r.json()["error"]["type"] == "insufficient_balance" and
               "plan credits renew at" in msg, f"after {n} requests: {r.status} {msg}")
        # the balance pays once the plan is spent
        g.topup("0.0001")
        os.kill(g.server.proc.pid, signal.SIGHUP)
        deadline = time.time() + 10
        while g.chat().status == 402 and time.time() < deadline:
            time.sleep(0.05)
        g.stop()
        recs = list(read_log(g.data_dir).values())
        plan = [r for r in recs if r["flags"] & FLAG_PLAN]
        paid = [r for r in recs if not r["flags"] & FLAG_PLAN and r["cost"] > 0]
        expect(len(plan) == n and sum(r["cost"] for r in plan) <= 100 * PICO,
               f"{len(plan)} plan-paid records (expected {n}) costing {sum(r['cost'] for r in plan)}")
        expect(paid, "no record paid by the balance after the top-up")
        shown = json.loads(keys_cli(g.cfg_path, "show", g.key_id, "--json").stdout)
        expect(shown["spent_pico_usd"] == sum(r["cost"] for r in paid),
               f"keys show counts the balance's spending only: {shown}")
        # derived across a restart: the plan is still spent in this window
        g.start()
        left = 0
        while g.chat().status == 200:
            left += 1
            expect(left < 1000, "the balance never ran out")
        g.stop()
        recs2 = list(read_log(g.data_dir).values())
        expect(sum(r["cost"] for r in recs2 if r["flags"] & FLAG_PLAN) <= 100 * PICO,
               "the plan paid more than its credits across the restart")
    finally:
        g.cleanup()


if __name__ == "__main__":
    main()
