"""PROXY protocol listeners (SPEC 5: a fleet behind an L4 load balancer):
versions 1 and 2 give the client's address to IP blocking and the usage
log; LOCAL / UNKNOWN keep the socket's; a connection without a valid
header, with one over the bound, or too slow to send it, is closed without
a word; TLS after the header; and Debian's HAProxy in front, sending both
versions."""

import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (CLIENT_KEY, Conn, Gateway, build_request, chat_body,  # noqa: E402
                     closed_port, env, eventually, expect, expect_error, main, test, tls_certs)
from usagelog_reader import read_log  # noqa: E402

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
BAD_AUTH = {"Authorization": "Bearer sk-unknown-key-00000000000000000000"}
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PP = "(proxy protocol)"

env("pp", gateway=False)


def v1(src, sport=40000, dport=443):
    fam, dst = ("TCP6", "2001:db8::2") if ":" in src else ("TCP4", "192.0.2.1")
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src=None, sport=40000, local=False, tlvs=b""):
    """A v2 header: PROXY TCP over IPv4/IPv6 from src, or LOCAL."""
    if local:
        return V2_SIG + bytes([0x20, 0x00]) + struct.pack(">H", len(tlvs)) + tlvs
    if ":" in src:
        addr = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
        addr += struct.pack(">HH", sport, 443)
        fam = 0x21
    else:
        addr = socket.inet_aton(src) + socket.inet_aton("192.0.2.1") + struct.pack(">HH", sport, 443)
        fam = 0x11
    body = addr + tlvs
    return V2_SIG + bytes([0x21, fam]) + struct.pack(">H", len(body)) + body


def pp_gateway(e, name, over=None, tls=False):
    """A gateway whose first listener is plain, the second requires the
    PROXY header (and the third, with tls=True, requires it before TLS)."""
    listen = [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "proxy_protocol": True}]
    if tls:
        c = tls_certs()
        listen.append({"address": "127.0.0.1:0", "proxy_protocol": True,
                       "tls": {"cert": c["localhost"]["cert"], "key": c["localhost"]["key"]}})
    g = Gateway(e, name, dict({"listen": listen}, **(over or {})))
    g.pp_addr = g.listener(PP)
    if tls:
        g.pp_tls_addr = g.listener("(tls) " + PP)
    return g


def chat(c, headers=AUTH):
    c.send(build_request("POST", "/v1/chat/completions", chat_body(), headers))
    return c.read_response()


def chat_as(addr, header, headers=AUTH):
    with Conn(addr) as c:
        c.send(header)
        return chat(c, headers)


def ip_of(rec):
    n = 4 if rec["ip_family"] == 4 else 16
    fam = socket.AF_INET if n == 4 else socket.AF_INET6
    return socket.inet_ntop(fam, rec["ip"][:n])


def bad_header_count(g):
    """The gateway's exit lines: bad PROXY headers summed over reactors."""
    total = 0
    for line in g.log().splitlines():
        if "bad PROXY headers" in line:
            total += int(line.rsplit(",", 1)[1].split()[0])
    return total


@test(env="pp", fresh=True, timeout=60)
def v1_and_v2_give_the_client_address(e):
    g = pp_gateway(e, "pp-addresses")
    ids = {}
    try:
        cases = [("v1 tcp4", v1("203.0.113.7"), "203.0.113.7"),
                 ("v1 tcp6", v1("2001:db8::7"), "2001:db8::7"),
                 ("v2 tcp4", v2("198.51.100.9", tlvs=b"\x02\x00\x05a.b.c"), "198.51.100.9"),
                 ("v2 tcp6", v2("2001:db8::5"), "2001:db8::5"),
                 ("v2 local", v2(local=True), "127.0.0.1"),
                 ("v1 unknown", b"PROXY UNKNOWN\r\n", "127.0.0.1")]
        for what, header, ip in cases:
            with Conn(g.pp_addr) as c:
                c.send(header)
                # keep-alive: the header comes once, then requests follow
                for i in range(2):
                    r = chat(c)
                    expect(r.status == 200, f"{what}, request {i}: {r.status} {r.body[:200]}")
                    ids[r.header("x-request-id")] = (what, ip)
            # header and request in one segment, too
            with Conn(g.pp_addr) as c:
                c.send(header + build_request("POST", "/v1/chat/completions", chat_body(), AUTH))
                r = c.read_response()
                expect(r.status == 200, f"{what}, one segment: {r.status}")
                ids[r.header("x-request-id")] = (what, ip)
        # the plain listener still sees the socket's address
        with Conn(g.addr) as c:
            r = chat(c)
            expect(r.status == 200, f"plain listener: {r.status}")
            ids[r.header("x-request-id")] = ("plain", "127.0.0.1")
    finally:
        g.stop(keep=True)
    recs = read_log(g.data_dir)
    shutil.rmtree(g.tmp, ignore_errors=True)
    for rid, (what, ip) in ids.items():
        expect(rid in recs, f"{what}: request {rid} not in the usage log")
        expect(ip_of(recs[rid]) == ip, f"{what}: logged client {ip_of(recs[rid])}, wanted {ip}")


@test(env="pp", fresh=True, timeout=60)
def header_split_across_reads(e):
    g = pp_gateway(e, "pp-split")
    try:
        for header in (v1("203.0.113.8"), v2("2001:db8::8", tlvs=b"\x04" + b"\x00\xc8" + b"x" * 200)):
            with Conn(g.pp_addr) as c:
                # separate segments (TCP_NODELAY); the gateway must wait for
                # the rest whether or not the kernel coalesces them
                for piece in (header[:1], header[1:7], header[7:14], header[14:-1], header[-1:]):
                    c.send(piece)
                    time.sleep(0.02)
                r = chat(c)
                expect(r.status == 200, f"split header: {r.status} {r.body[:200]}")
        # byte by byte, the request too
        with Conn(g.pp_addr) as c:
            for b in v1("203.0.113.9") + build_request("GET", "/v1/models", None, AUTH):
                c.send(bytes([b]))
            r = c.read_response()
            expect(r.status == 200, f"byte by byte: {r.status}")
    finally:
        g.stop()


@test(env="pp", fresh=True, timeout=60)
def ip_block_counts_the_proxied_address(e):
    g = pp_gateway(e, "pp-ipblock", {"auth": {"ip_block_failures": 3, "ip_block_seconds": 60}})
    try:
        for i in range(3):
            r = chat_as(g.pp_addr, v1("203.0.113.66"), BAD_AUTH)
            expect_error(r, 401, "authentication_error")
        # that address is blocked now, even with a valid key, in both versions
        expect_error(chat_as(g.pp_addr, v1("203.0.113.66")), 403, "ip_blocked")
        expect_error(chat_as(g.pp_addr, v2("203.0.113.66")), 403, "ip_blocked")
        # the balancer's own address, another client behind it, and the
        # plain listener are not
        expect(chat_as(g.pp_addr, v1("203.0.113.67")).status == 200, "another proxied client")
        expect(chat_as(g.pp_addr, v2(local=True)).status == 200, "LOCAL (the balancer)")
        with Conn(g.addr) as c:
            expect(chat(c).status == 200, "plain listener from 127.0.0.1")
    finally:
        g.stop()


@test(env="pp", fresh=True, timeout=60)
def missing_bad_or_oversized_header_closes(e):
    g = pp_gateway(e, "pp-bad", {"limits": {"proxy_header_bytes_max": 300}})
    bad = [
        ("no header", build_request("POST", "/v1/chat/completions", chat_body(), AUTH)),
        ("TLS instead", b"\x16\x03\x01\x00\xa0\x01\x00\x00\x9c\x03\x03" + b"\x00" * 40),
        ("v1 lowercase", b"proxy TCP4 203.0.113.7 192.0.2.1 1 2\r\n"),
        ("v1 bad address", b"PROXY TCP4 203.0.113.700 192.0.2.1 1 2\r\n"),
        ("v1 bare LF", b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n"),
        ("v1 no CRLF in 107 bytes", b"PROXY UNKNOWN " + b"1" * 120),
        ("v2 version 1", V2_SIG + b"\x11\x11\x00\x0c" + b"\x00" * 12),
        ("v2 short IPv4 block", V2_SIG + b"\x21\x11\x00\x08" + b"\x00" * 8),
        ("v2 over the bound", V2_SIG + b"\x21\x11\x01\x1d" + b"\x00" * 285),
        ("v2 under the bound", None),
    ]
    try:
        for what, data in bad:
            if data is None:
                # 300 bytes exactly is within proxy_header_bytes_max
                tlv = b"\x04" + struct.pack(">H", 269) + b"x" * 269
                expect(len(v2("203.0.113.5", tlvs=tlv)) == 300, "test header size")
                r = chat_as(g.pp_addr, v2("203.0.113.5", tlvs=tlv))
                expect(r.status == 200, f"{what}: {r.status}")
                continue
            with Conn(g.pp_addr) as c:
                c.send(data)
                expect(c.wait_closed(5), f"{what}: connection not closed")
                expect(not c.buf, f"{what}: the gateway answered {bytes(c.buf[:80])!r}")
        # nothing else was hurt
        expect(chat_as(g.pp_addr, v1("203.0.113.5")).status == 200, "a good header afterwards")
    finally:
        g.stop()
    n = bad_header_count(g)
    expect(n == len(bad) - 1, f"exit lines count {n} bad PROXY headers, wanted {len(bad) - 1}")


@test(env="pp", fresh=True, timeout=60)
def stalled_header_times_out(e):
    g = pp_gateway(e, "pp-stall", {"timeouts": {"header_ms": 1000}})
    try:
        with Conn(g.pp_addr) as c1, Conn(g.pp_addr) as c2:
            t0 = time.monotonic()
            c1.send(b"PROXY TCP4 203.0.1")  # and nothing more
            c2.send(V2_SIG[:9])
            expect(c1.wait_closed(10) and c2.wait_closed(10), "stalled headers not closed")
            took = time.monotonic() - t0
            expect(0.8 <= took <= 6, f"closed after {took:.2f}s; header_ms is 1000")
            expect(not c1.buf and not c2.buf, "the gateway answered a stalled header")
        # a slow but complete header within the deadline is fine
        expect(chat_as(g.pp_addr, v1("203.0.113.10")).status == 200, "after the stalls")
    finally:
        g.stop()


@test(env="pp", fresh=True, timeout=60)
def tls_after_the_header(e):
    g = pp_gateway(e, "pp-tls", tls=True)
    ids = {}
    try:
        ctx = ssl.create_default_context(cafile=tls_certs()["ca"]["cert"])
        for header, ip in ((v1("203.0.113.20"), "203.0.113.20"), (v2("2001:db8::20"), "2001:db8::20")):
            raw = socket.create_connection(g.pp_tls_addr, timeout=10)
            raw.sendall(header)
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(build_request("POST", "/v1/chat/completions", chat_body(), AUTH,
                                        version="HTTP/1.0"))
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
            expect(head.startswith("HTTP/1.1 200"), f"over TLS: {head[:120]}")
            rid = [ln.split(":", 1)[1].strip() for ln in head.split("\r\n")
                   if ln.lower().startswith("x-request-id:")]
            expect(rid, "no x-request-id")
            ids[rid[0]] = ip
        # a TLS ClientHello where the header belongs is refused
        raw = socket.create_connection(g.pp_tls_addr, timeout=10)
        try:
            ctx.wrap_socket(raw, server_hostname="localhost").close()
            expect(False, "a TLS handshake without a PROXY header succeeded")
        except (ssl.SSLError, OSError):
            pass
        finally:
            raw.close()
    finally:
        g.stop(keep=True)
    recs = read_log(g.data_dir)
    shutil.rmtree(g.tmp, ignore_errors=True)
    for rid, ip in ids.items():
        expect(rid in recs and ip_of(recs[rid]) == ip, f"TLS request {rid}: wanted client {ip}")


def haproxy_conf(gw_port, ports):
    return f"""global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe_v2
    bind 127.0.0.1:{ports[0]}
    default_backend be_v2
frontend fe_v1
    bind 127.0.0.1:{ports[1]}
    default_backend be_v1
backend be_v2
    server gw 127.0.0.1:{gw_port} send-proxy-v2
backend be_v1
    server gw 127.0.0.1:{gw_port} send-proxy
"""


@test(env="pp", fresh=True, timeout=90)
def behind_haproxy(e):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    expect(os.access(haproxy, os.X_OK), "haproxy is not installed (./configure --install-deps)")
    g = pp_gateway(e, "pp-haproxy", {"auth": {"ip_block_failures": 2, "ip_block_seconds": 60}})
    tmp = tempfile.mkdtemp(prefix="sluice-haproxy-")
    ids = {}
    hp = None
    try:
        ports = [closed_port(), closed_port()]
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_conf(g.pp_addr[1], ports))
        check = subprocess.run([haproxy, "-c", "-f", cfg], capture_output=True, text=True)
        expect(check.returncode == 0, f"haproxy -c: {check.stdout} {check.stderr}")
        hp = subprocess.Popen([haproxy, "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

        def via(port, src_ip, headers=AUTH):
            with Conn(("127.0.0.1", port), source=src_ip) as c:
                return chat(c, headers)

        def up():
            try:
                return via(ports[0], "127.0.0.2").status == 200
            except Exception:
                return False
        eventually(up, 10, 0.1, what="haproxy forwarding to the gateway")
        for port, src in ((ports[0], "127.0.0.2"), (ports[1], "127.0.0.3")):
            for _ in range(3):
                r = via(port, src)
                expect(r.status == 200, f"through haproxy from {src}: {r.status}")
                ids[r.header("x-request-id")] = src
        # 127.0.0.4 fails twice and is blocked; 127.0.0.5 behind the same
        # haproxy is not
        for _ in range(2):
            expect_error(via(ports[1], "127.0.0.4", BAD_AUTH), 401, "authentication_error")
        expect_error(via(ports[0], "127.0.0.4"), 403, "ip_blocked")
        expect(via(ports[0], "127.0.0.5").status == 200, "another client behind haproxy")
    finally:
        if hp:
            hp.terminate()
            hp.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
        g.stop(keep=True)
    recs = read_log(g.data_dir)
    shutil.rmtree(g.tmp, ignore_errors=True)
    for rid, ip in ids.items():
        expect(rid in recs and ip_of(recs[rid]) == ip,
               f"via haproxy: request {rid} logged as {ip_of(recs[rid]) if rid in recs else None}")


if __name__ == "__main__":
    main()
