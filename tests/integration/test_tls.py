"""TLS (issue 6, SPEC 5): the gateway's TLS listeners - TLS 1.2 and 1.3 only,
ALPN http/1.1, certificates chosen by SNI, session resumption, garbage and
stalled handshakes, a thousand concurrent TLS streams, certificates reloaded
on SIGHUP - and https providers: a verified, pooled connection, and each
verification failure refused with a 502 naming the provider and recorded
in the usage log. Certificates are made at run time (tests/lib/tlsgen.py)."""

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (CLIENT_KEY, GATEWAY_BIN, MOCK_BIN, TIME_SCALE, Conn, Server,  # noqa: E402
                     base_config, build_request, chat_body, deep_merge, env, eventually, expect,
                     expect_error, main, messages_body, sse_data, test, tls_certs)
import harness  # noqa: E402
from usagelog_reader import read_log  # noqa: E402

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
XKEY = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
# made once, here in the parent: the forked tests share them
_CERTS = tls_certs()


def certs():
    return _CERTS


def client_ctx(version=None, alpn=("http/1.1",)):
    ctx = ssl.create_default_context(cafile=certs()["ca"]["cert"])
    if version:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TlsConn(Conn):
    """A harness Conn over TLS."""

    def __init__(self, addr, ctx=None, server_hostname="localhost", session=None, timeout_s=10):
        self.addr = addr
        self.timeout_s = timeout_s
        raw = socket.create_connection(addr, timeout=timeout_s)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = (ctx or client_ctx()).wrap_socket(raw, server_hostname=server_hostname,
                                                      session=session)
        self.buf = bytearray()
        self.eof = False


class Gateway(harness.Gateway):
    """A gateway with a plain and a TLS listener in front of the env's mock."""

    def __init__(self, e, name, tls=None, over=None, threads=2):
        c = certs()
        tls = tls or {"cert": c["localhost"]["cert"], "key": c["localhost"]["key"]}
        listen = {"listen": [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "tls": tls}]}
        super().__init__(e, name, deep_merge(listen, over or {}), threads)
        self.tls_addr = self.listener("(tls)")


def chat_over(conn, **kw):
    conn.send(build_request("POST", "/v1/chat/completions", chat_body(**kw), AUTH))
    return conn.read_response()


env("tls", gateway=False)


@test(env="tls", fresh=True, timeout=60)
def tls12_and_tls13_serve_chat(e):
    g = Gateway(e, "tls-versions")
    try:
        for v, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            with TlsConn(g.tls_addr, client_ctx(v, alpn=("h2", "http/1.1"))) as c:
                expect(c.sock.version() == name, f"negotiated {c.sock.version()}, wanted {name}")
                expect(c.sock.selected_alpn_protocol() == "http/1.1",
                       f"ALPN {c.sock.selected_alpn_protocol()!r}")
                for _ in range(3):  # keep-alive over TLS
                    r = chat_over(c)
                    expect(r.status == 200, f"{name}: {r.status} {r.body[:200]}")
                    expect(r.json()["choices"][0]["message"]["content"], "empty completion")
        # the plain listener is unaffected
        with Conn(g.addr) as c:
            expect(chat_over(c).status == 200, "plain listener")
    finally:
        g.stop()


@test(env="tls", fresh=True, timeout=60)
def close_notify_before_a_graceful_close(e):
    """A response that ends with the connection (HTTP/1.0, Connection: close)
    is followed by a TLS close_notify, so a client reading to EOF can tell it
    got the whole response: Python raises SSLEOFError without one."""
    g = Gateway(e, "tls-close-notify")
    try:
        cases = [("HTTP/1.0 stream", chat_body(stream=True), {}, "HTTP/1.0"),
                 ("HTTP/1.1 Connection: close", chat_body(), {"Connection": "close"}, "HTTP/1.1")]
        for what, body, extra, version in cases:
            raw = socket.create_connection(g.tls_addr, timeout=10)
            s = client_ctx().wrap_socket(raw, server_hostname="localhost",
                                         suppress_ragged_eofs=False)
            try:
                s.sendall(build_request("POST", "/v1/chat/completions", body, dict(AUTH, **extra),
                                        version=version))
                data = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ssl.SSLEOFError:
                        expect(False, f"{what}: the connection ended without close_notify")
                    if not chunk:
                        break
                    data += chunk
            finally:
                s.close()
            expect(data.startswith(b"HTTP/1.1 200"), f"{what}: {data[:80]!r}")
            if "stream" in what:
                expect(b"data: [DONE]" in data, f"{what}: the stream's end is missing")
    finally:
        g.stop()


@test(env="tls", fresh=True, timeout=60)
def old_protocols_and_foreign_alpn_refused(e):
    g = Gateway(e, "tls-refuse")
    try:
        for flag in ("-tls1", "-tls1_1"):
            p = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % g.tls_addr, flag,
                                "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"],
                               input=b"", capture_output=True, timeout=20)
            out = (p.stdout + p.stderr).decode(errors="replace")
            expect(p.returncode != 0 and re.search(r"alert protocol version|no protocols "
                                                   r"available|unsupported protocol", out),
                   f"openssl s_client {flag} was not refused: rc={p.returncode} {out[-300:]}")
        # a client that speaks only h2: no_application_protocol (RFC 7301)
        try:
            with TlsConn(g.tls_addr, client_ctx(alpn=("h2",))) as c:
                c.sock.version()
            expect(False, "an h2-only client completed a handshake")
        except ssl.SSLError as exc:
            expect("NO APPLICATION PROTOCOL" in str(exc).upper().replace("_", " "), f"h2-only: {exc}")
        # a client offering no ALPN at all is fine
        with TlsConn(g.tls_addr, client_ctx(alpn=())) as c:
            expect(chat_over(c).status == 200, "no ALPN")
        # a client that does not trust the certificate refuses it (and the
        # gateway survives the alert)
        other = ssl.create_default_context(cafile=certs()["other_ca"]["cert"])
        try:
            TlsConn(g.tls_addr, other).close()
            expect(False, "a certificate from an unknown CA was accepted")
        except ssl.SSLCertVerificationError:
            pass
        with TlsConn(g.tls_addr) as c:
            expect(chat_over(c).status == 200, "after the refusals")
    finally:
        g.stop()


@test(env="tls", fresh=True, timeout=60)
def sni_selects_the_certificate(e):
    c = certs()
    g = Gateway(e, "tls-sni", tls={"certificates": [
        {"cert": c["localhost"]["cert"], "key": c["localhost"]["key"]},
        {"cert": c["alt"]["cert"], "key": c["alt"]["key"]},
        {"cert": c["rsa"]["cert"], "key": c["rsa"]["key"]}]})
    try:
        for name in ("alt.test", "localhost"):
            with TlsConn(g.tls_addr, server_hostname=name) as conn:
                san = conn.sock.getpeercert().get("subjectAltName", ())
                expect(("DNS", name) in san, f"SNI {name}: got a certificate for {san}")
                expect(chat_over(conn).status == 200, f"SNI {name}")
        # an unknown name gets the default (first) certificate
        ctx = client_ctx()
        ctx.check_hostname = False
        with TlsConn(g.tls_addr, ctx, server_hostname="unknown.example") as conn:
            san = conn.sock.getpeercert().get("subjectAltName", ())
            expect(("DNS", "localhost") in san, f"default certificate: {san}")
    finally:
        g.stop()


@test(env="tls", fresh=True, timeout=60)
def sessions_resume(e):
    g = Gateway(e, "tls-resume")
    try:
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_ctx(v)
            with TlsConn(g.tls_addr, ctx) as c:
                expect(chat_over(c).status == 200, "first connection")
                session = c.sock.session  # TLS 1.3: the ticket came after the handshake
                expect(not c.sock.session_reused, "a first connection cannot resume")
            expect(session is not None and session.has_ticket, f"{v.name}: no session ticket")
            with TlsConn(g.tls_addr, ctx, session=session) as c:
                expect(c.sock.session_reused, f"{v.name}: the session was not resumed")
                expect(chat_over(c).status == 200, "resumed connection")
    finally:
        g.stop()


@test(env="tls", fresh=True, timeout=60)
def garbage_and_stalled_handshakes_are_dropped(e):
    g = Gateway(e, "tls-garbage", over={"timeouts": {"header_ms": int(1500 * TIME_SCALE)}})
    try:
        # garbage instead of a ClientHello: an alert or a close, quickly
        s = socket.create_connection(g.tls_addr, timeout=5)
        s.sendall(os.urandom(3000))
        try:
            data = s.recv(100)
            expect(len(data) < 100, f"a reply of {len(data)} bytes to garbage")
        except ConnectionResetError:
            pass
        s.close()
        # a ClientHello that stops halfway, and a connection that says nothing
        half = socket.create_connection(g.tls_addr, timeout=10)
        hello = bytearray(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03") + os.urandom(32)
        half.sendall(bytes(hello))
        silent = socket.create_connection(g.tls_addr, timeout=10)
        t0 = time.monotonic()
        # meanwhile other clients are served
        with TlsConn(g.tls_addr) as c:
            expect(chat_over(c).status == 200, "served beside stalled handshakes")
        for s in (half, silent):
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            waited = time.monotonic() - t0
            expect(len(data) < 100 and waited < 6 * TIME_SCALE,
                   f"a stalled handshake held {waited:.1f}s (reply {len(data)} bytes)")
            s.close()
        expect(time.monotonic() - t0 >= 1.0 * TIME_SCALE,
               "stalled handshakes were dropped before the header timeout")
        with TlsConn(g.tls_addr) as c:
            expect(chat_over(c).status == 200, "after the garbage")
    finally:
        g.stop()


@test(env="tls", fresh=True, timeout=240)
def thousand_concurrent_tls_streams(e):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    n = 1000
    g = Gateway(e, "tls-thousand")
    body = json.dumps(chat_body(stream=True)).encode()
    head = build_request("POST", "/v1/chat/completions", body,
                         dict(AUTH, **{"x-mock-tokens": 20, "x-mock-token-delay-ms": 25}))
    ctx = client_ctx()

    async def one(i):
        for attempt in range(3):
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*g.tls_addr, ssl=ctx, server_hostname="localhost"),
                    60 * TIME_SCALE)
                break
            except (ConnectionError, OSError, asyncio.TimeoutError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05)
        writer.write(head)
        data = await asyncio.wait_for(_read_stream(reader), 120 * TIME_SCALE)
        writer.close()
        return data

    async def _read_stream(reader):
        out = bytearray()
        while not out.endswith(b"data: [DONE]\n\n") and b"0\r\n\r\n" not in out[-8:]:
            chunk = await reader.read(65536)
            if not chunk:
                break
            out += chunk
        return bytes(out)

    async def run():
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

    try:
        t0 = time.monotonic()
        results = asyncio.run(run())
        errors = [r for r in results if isinstance(r, BaseException)]
        expect(not errors, f"{len(errors)} of {n} TLS streams failed, e.g. {errors[:1]!r}")
        done = sum(1 for r in results if b"data: [DONE]" in r and b" 200 " in r[:20])
        expect(done == n, f"{done} of {n} TLS streams ended with [DONE]")
        print(f"# {n} TLS streams in {time.monotonic() - t0:.1f}s")
    finally:
        g.stop()


@test(env="tls", fresh=True, timeout=60)
def sighup_reloads_certificates_without_dropping(e):
    c = certs()
    d = tempfile.mkdtemp(prefix="sluice-tls-reload-")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    shutil.copy(c["localhost"]["cert"], cert)
    shutil.copy(c["localhost"]["key"], key)
    g = Gateway(e, "tls-reload", tls={"cert": cert, "key": key})
    try:
        old = TlsConn(g.tls_addr)
        expect(chat_over(old).status == 200, "before the reload")
        before = old.sock.getpeercert(binary_form=True)
        shutil.copy(c["rsa"]["cert"], cert)
        shutil.copy(c["rsa"]["key"], key)
        os.kill(g.server.proc.pid, signal.SIGHUP)
        eventually(lambda: "certificates reloaded" in g.log(), 10, what="the reload's log line")
        with TlsConn(g.tls_addr) as new:
            expect(new.sock.getpeercert(binary_form=True) != before,
                   "a new connection still gets the old certificate")
            expect(chat_over(new).status == 200, "after the reload")
        # the connection from before the reload still works
        expect(chat_over(old).status == 200, "an old connection after the reload")
        old.close()
        # a broken certificate file: the reload is refused, the old one stays
        with open(cert, "w") as f:
            f.write("not a certificate\n")
        os.kill(g.server.proc.pid, signal.SIGHUP)
        eventually(lambda: "certificate reload failed" in g.log(), 10,
                   what="the failed reload's log line")
        with TlsConn(g.tls_addr) as new:
            expect(chat_over(new).status == 200, "after a failed reload")
    finally:
        g.stop()
        shutil.rmtree(d, ignore_errors=True)


def ocsp_response(leaf, out_dir):
    """A DER OCSP response ("good") for leaf, signed by the test CA."""
    c = certs()
    serial = subprocess.run(["openssl", "x509", "-in", c[leaf]["cert"], "-noout", "-serial"],
                            capture_output=True, text=True, check=True).stdout.split("=")[1].strip()
    index = os.path.join(out_dir, "ocsp-index.txt")
    with open(index, "w") as f:
        f.write(f"V\t301231000000Z\t\t{serial}\tunknown\t/CN={leaf}\n")
    resp = os.path.join(out_dir, f"{leaf}.ocsp.der")
    subprocess.run(["openssl", "ocsp", "-index", index, "-rsigner", c["ca"]["cert"],
                    "-rkey", c["ca"]["key"], "-CA", c["ca"]["cert"], "-issuer", c["ca"]["cert"],
                    "-cert", c[leaf]["cert"], "-respout", resp, "-ndays", "1"],
                   capture_output=True, check=True)
    return resp


def s_client(addr, *args, input_bytes=b""):
    p = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % addr, "-CAfile",
                        certs()["ca"]["cert"], *args], input=input_bytes, capture_output=True,
                       timeout=20)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


@test(env="tls", fresh=True, timeout=60)
def curl_s_client_and_ocsp_stapling(e):
    c = certs()
    d = tempfile.mkdtemp(prefix="sluice-tls-ocsp-")
    try:
        resp = ocsp_response("localhost", d)
        g = Gateway(e, "tls-ocsp", tls={"cert": c["localhost"]["cert"],
                                        "key": c["localhost"]["key"], "ocsp": resp})
        try:
            rc, out = s_client(g.tls_addr, "-servername", "localhost", "-status")
            expect("OCSP Response Status: successful" in out or
                   "OCSP response:" in out and "successful" in out,
                   f"no stapled OCSP response: {out[-400:]}")
            rc, out = s_client(g.tls_addr, "-servername", "localhost", "-tls1_2", "-alpn",
                               "http/1.1")
            expect(re.search(r"Protocol *: TLSv1\.2", out) and "ALPN protocol: http/1.1" in out,
                   f"s_client TLS 1.2 + ALPN: {out[-400:]}")
            url = "https://localhost:%d/v1/chat/completions" % g.tls_addr[1]
            for extra in (["--tlsv1.3"], ["--tlsv1.2", "--tls-max", "1.2"], ["--http2"]):
                p = subprocess.run(["curl", "-sS", "--cacert", c["ca"]["cert"], *extra, url,
                                    "-H", f"Authorization: Bearer {CLIENT_KEY}",
                                    "-H", "Content-Type: application/json",
                                    "-d", json.dumps(chat_body()), "-w", "\n%{http_code} %{http_version}"],
                                   capture_output=True, text=True, timeout=20)
                last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
                expect(p.returncode == 0 and last == "200 1.1",
                       f"curl {extra}: rc={p.returncode} {last!r} {p.stderr[-300:]}")
        finally:
            g.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@test(env="tls", fresh=True, timeout=60)
def a_fleet_shares_ticket_keys(e):
    """Two gateways reading one ticket_key_file resume each other's
    sessions; a third with its own random keys does not."""
    d = tempfile.mkdtemp(prefix="sluice-tls-tickets-")
    keyfile = os.path.join(d, "tickets.key")
    with open(keyfile, "wb") as f:
        f.write(os.urandom(48))
    c = certs()
    tls = {"cert": c["localhost"]["cert"], "key": c["localhost"]["key"],
           "ticket_key_file": keyfile}
    a = Gateway(e, "tls-fleet-a", tls=tls)
    b = Gateway(e, "tls-fleet-b", tls=tls)
    lone = Gateway(e, "tls-fleet-lone")
    try:
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_ctx(v)
            with TlsConn(a.tls_addr, ctx) as conn:
                expect(chat_over(conn).status == 200, "node a")
                session = conn.sock.session
            with TlsConn(b.tls_addr, ctx, session=session) as conn:
                expect(conn.sock.session_reused, f"{v.name}: node b did not resume a's session")
                expect(chat_over(conn).status == 200, "node b")
            with TlsConn(lone.tls_addr, ctx, session=session) as conn:
                expect(not conn.sock.session_reused,
                       f"{v.name}: a node with other ticket keys resumed the session")
                expect(chat_over(conn).status == 200, "the lone node")
    finally:
        for g in (a, b, lone):
            g.stop()
        shutil.rmtree(d, ignore_errors=True)


@test(env="tls", fresh=True, timeout=30)
def check_config_loads_the_certificates(e):
    c = certs()
    d = tempfile.mkdtemp(prefix="sluice-tls-check-")
    try:
        def check(tls, provider_extra=None):
            cfg = deep_merge(base_config(e.mock_addr[1], os.path.join(d, "data")),
                             {"listen": [{"address": "127.0.0.1:0", "tls": tls}]})
            if provider_extra:
                cfg["providers"]["mock-openai"].update(provider_extra)
            path = os.path.join(d, "sluice.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            return subprocess.run([GATEWAY_BIN, "check-config", "-c", path],
                                  capture_output=True, text=True, timeout=20)
        ok = check({"cert": c["localhost"]["cert"], "key": c["localhost"]["key"]})
        expect(ok.returncode == 0, f"a good TLS config: {ok.stderr}")
        bad = check({"cert": c["localhost"]["cert"], "key": c["rsa"]["key"]})
        expect(bad.returncode != 0 and "key" in bad.stderr,
               f"a key that does not match its certificate: rc={bad.returncode} {bad.stderr}")
        missing = check({"cert": os.path.join(d, "nope.pem"), "key": c["rsa"]["key"]})
        expect(missing.returncode != 0 and "nope.pem" in missing.stderr,
               f"a missing certificate file: {missing.stderr}")
        ca = check({"cert": c["localhost"]["cert"], "key": c["localhost"]["key"]},
                   {"base_url": "https://127.0.0.1:1/v1", "ca_file": os.path.join(d, "no-ca.pem")})
        expect(ca.returncode != 0 and "no-ca.pem" in ca.stderr and "mock-openai" in ca.stderr,
               f"a missing CA file: {ca.stderr}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- https providers ---------------------------------------------------------

env("tls_up", gateway=False, mock_tls=True, mock_threads=2)


def tls_provider(port, host="localhost", fmt="openai", **extra):
    base = f"https://{host}:{port}" + ("/v1" if fmt == "openai" else "")
    p = {"base_url": base, "format": fmt, "keys": ["sk-upstream-tls"],
         "ca_file": certs()["ca"]["cert"],
         "timeouts": {"connect_ms": int(3000 * TIME_SCALE)}}
    if fmt == "anthropic":
        p["anthropic_version"] = "2023-06-01"
    p.update(extra)
    return p


def tls_models(names):
    return {m: {"targets": [{"provider": p, "model": "gpt-4o-mini"}]} for m, p in names.items()}


def mock_stats(e):
    with Conn(e.mock_addr) as c:
        c.send(build_request("GET", "/mock/stats"))
        return c.read_response().json()


def mock_reset(e):
    with Conn(e.mock_addr) as c:
        c.send(build_request("POST", "/mock/reset"))
        c.read_response()


@test(env="tls_up", fresh=True, timeout=90)
def https_provider_verified_pooled_and_resumed(e):
    port = e.mock_tls_addr[1]
    g = Gateway(e, "tls-up", threads=1, over={
        "admin": {"address": "127.0.0.1:0"},
        "providers": {"tls-openai": tls_provider(port),
                      "tls-ip": tls_provider(port, host="127.0.0.1"),
                      "tls-anthropic": tls_provider(port, fmt="anthropic")},
        "models": tls_models({"gpt-tls": "tls-openai", "gpt-tls-ip": "tls-ip",
                              "gpt-tls-anthropic": "tls-anthropic"})})
    try:
        mock_reset(e)
        with Conn(g.addr) as c:
            for i in range(10):
                stream = i % 2 == 1
                c.send(build_request("POST", "/v1/chat/completions",
                                     chat_body(model="gpt-tls", stream=stream), AUTH))
                if stream:
                    r = c.read_stream()
                    expect(r.status == 200 and "[DONE]" in sse_data(r.events),
                           f"stream {i}: {r.status}")
                else:
                    r = c.read_response()
                    expect(r.status == 200, f"request {i}: {r.status} {r.body[:200]}")
        st = mock_stats(e)
        expect(st["tls_handshakes"] + st["tls_resumed"] == 1,
               f"10 requests on one reactor cost {st['tls_handshakes']} full and "
               f"{st['tls_resumed']} resumed handshakes; the pool should make it one")
        expect(st["tls_last_sni"] == "localhost", f"SNI sent: {st['tls_last_sni']!r}")
        # two streams at once need a second connection, which resumes the
        # session of the first
        conns = [Conn(g.addr) for _ in range(2)]
        for c in conns:
            c.send(build_request("POST", "/v1/chat/completions", chat_body(model="gpt-tls",
                                 stream=True), dict(AUTH, **{"x-mock-tokens": 10,
                                                             "x-mock-token-delay-ms": 30})))
        for c in conns:
            r = c.read_stream()
            expect(r.status == 200 and "[DONE]" in sse_data(r.events), f"parallel: {r.status}")
            c.close()
        st = mock_stats(e)
        expect(st["tls_handshakes"] == 1 and st["tls_resumed"] >= 1,
               f"a second connection: {st['tls_handshakes']} full, {st['tls_resumed']} resumed")
        # the gateway's /metrics tells the same
        with Conn(g.listener("(admin)")) as c:
            c.send(build_request("GET", "/metrics"))
            text = c.read_response().body.decode()
        hs = dict(re.findall(r'^sluice_tls_handshakes_total\{side="upstream",result="(\w+)"\} (\d+)$',
                             text, re.M))
        expect(hs.get("full") == "1" and hs.get("resumed") == str(st["tls_resumed"]) and
               hs.get("failed") == "0", f"/metrics upstream handshakes {hs}, mock saw {st}")
        # an IP literal is verified against the certificate's IP SAN (no SNI)
        with Conn(g.addr) as c:
            r = chat_over(c, model="gpt-tls-ip")
            expect(r.status == 200, f"https://127.0.0.1: {r.status} {r.body[:200]}")
        # conversion over TLS: an OpenAI client, an Anthropic-format provider
        with Conn(g.addr) as c:
            r = chat_over(c, model="gpt-tls-anthropic")
            expect(r.status == 200 and r.json()["choices"][0]["message"]["content"],
                   f"converted over TLS: {r.status} {r.body[:200]}")
    finally:
        g.stop()


def start_mock(e, name, cert):
    c = certs()[cert]
    s = Server("sluice-mock", [MOCK_BIN, "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0",
                               "--tls-cert", c["cert"], "--tls-key", c["key"]],
               "sluice-mock", os.path.join(e.log_dir, f"{name}.mock.log"))
    s.start()
    expect(s.tls_addr, f"{name}: the mock has no TLS listener")
    return s


@test(env="tls_up", fresh=True, timeout=90)
def https_provider_refusals_are_502_and_logged(e):
    mocks = {name: start_mock(e, f"tls-refuse-{name}", name)
             for name in ("wronghost", "unknown_ca", "expired")}
    try:
        providers = {f"p-{n}": tls_provider(m.tls_addr[1]) for n, m in mocks.items()}
        providers["p-plain"] = tls_provider(e.mock_addr[1])  # not TLS at all
        providers["p-skip"] = dict(tls_provider(mocks["unknown_ca"].tls_addr[1]),
                                   tls_insecure_skip_verify=True)
        del providers["p-skip"]["ca_file"]
        models = {f"m-{n}": f"p-{n}" for n in ("wronghost", "unknown_ca", "expired", "plain",
                                                "skip")}
        # one attempt per request: each refusal is seen as it is (retries and
        # circuits are test_failover's)
        g = Gateway(e, "tls-refuse", over={"providers": providers, "models": tls_models(models),
                                           "routing": {"attempts_max": 1}})
        try:
            expect("WARNING: provider p-skip: tls_insecure_skip_verify" in g.log(),
                   "no loud warning for tls_insecure_skip_verify")
            why = {"wronghost": r"certificate verify failed: .*(hostname|host name|mismatch)",
                   "unknown_ca": r"certificate verify failed: unable to get local issuer",
                   "expired": r"certificate verify failed: certificate has expired",
                   "plain": r"TLS handshake failed"}
            for n, pattern in why.items():
                with Conn(g.addr) as c:
                    r = chat_over(c, model=f"m-{n}")
                    expect_error(r, 502, "connection_error")
                    msg = r.json()["error"]["message"]
                    expect(f"provider p-{n}" in msg and re.search(pattern, msg),
                           f"{n}: message {msg!r} should name the provider and match {pattern!r}")
                    # the client keeps its connection
                    expect(chat_over(c).status == 200, f"{n}: the next request")
            with Conn(g.addr) as c:
                c.send(build_request("POST", "/v1/messages",
                                     messages_body(model="m-expired"), XKEY))
                r = c.read_response()
                expect_error(r, 502, "connection_error", shape="anthropic")
            with Conn(g.addr) as c:
                r = chat_over(c, model="m-skip")
                expect(r.status == 200, f"skip verify: {r.status} {r.body[:200]}")
        finally:
            g.stop(keep=True)
        recs = list(read_log(g.data_dir).values())
        failed = [r for r in recs if r.get("status") == 502]
        expect(len(failed) == 5, f"{len(failed)} usage records with status 502, expected 5: "
                                 f"{[(r.get('model'), r.get('status')) for r in recs]}")
        shutil.rmtree(g.tmp, ignore_errors=True)
    finally:
        for m in mocks.values():
            m.stop()


@test(env="tls_up", fresh=True, timeout=120)
def tls_buffers_exhausted_then_recovered(e):
    """16 TLS buffers per reactor for 40 streams from a TLS provider to
    slow plain clients and to TLS clients: connections wait for buffers,
    none is lost."""
    port = e.mock_tls_addr[1]
    g = Gateway(e, "tls-starve", over={
        "limits": {"tls_buffers_per_core": 16},
        "providers": {"tls-openai": tls_provider(port)},
        "models": tls_models({"gpt-tls": "tls-openai"})})
    body = json.dumps(chat_body(model="gpt-tls", stream=True)).encode()
    head = build_request("POST", "/v1/chat/completions", body,
                         dict(AUTH, **{"x-mock-tokens": 300}))
    ctx = client_ctx()

    async def one(i):
        tls = i % 2 == 0
        addr = g.tls_addr if tls else g.addr
        reader, writer = await asyncio.open_connection(
            *addr, ssl=ctx if tls else None, server_hostname="localhost" if tls else None)
        writer.write(head)
        out = bytearray()
        while not out.endswith(b"0\r\n\r\n"):
            if i % 4 < 2:
                await asyncio.sleep(0.005)  # a slow reader
            chunk = await asyncio.wait_for(reader.read(2048), 30 * TIME_SCALE)
            if not chunk:
                break
            out += chunk
        writer.close()
        return b"data: [DONE]" in out

    async def run():
        return await asyncio.gather(*(one(i) for i in range(40)), return_exceptions=True)

    try:
        results = asyncio.run(run())
        bad = [r for r in results if r is not True]
        expect(not bad, f"{len(bad)} of 40 streams did not end well: {bad[:2]!r}")
    finally:
        g.stop()


if __name__ == "__main__":
    main()
