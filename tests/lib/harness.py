"""harness.py - the integration-test harness of sluice (python3 stdlib only).

A test file is a list of short scenarios:

    from harness import test, env, expect_status

    env("tiny", {"limits": {"body_bytes_max": 1024}})   # a named config

    @test
    def healthz(e):                       # e: a running Env (mock + gateway)
        r = e.request("GET", "/healthz")
        expect_status(r, 200)

    @test(env="tiny", fresh=True, timeout=20)
    def body_over_limit(e): ...

    if __name__ == "__main__":
        main()

Each test runs in a forked child with a hard time limit, against the shared
Env of its config (started on first use, reused by the following tests of
the file) or, with fresh=True, against an Env of its own that is torn down
with it. It prints "PASS file.name", "FAIL file.name: why" or "SKIP
file.name: why" (raise Skip for a missing kernel feature). A failed
assertion or an exception is a FAIL with the reason. After each test the
harness checks that the servers still run and wrote no sanitizer report;
after the last one it stops each shared Env (SIGTERM) and reports
"file.<env>_clean_exit": the gateway must exit 0 without a sanitizer report.

Servers are started from build/ (SLUICE_BIN / SLUICE_MOCK_BIN override), with
stdout+stderr logged under SLUICE_TEST_LOGS (default build/test-logs/manual/).
SLUICE_TEST_FILTER (or -k PATTERN) selects tests by regex on their name.

env(..., mock_tls=True) also starts the mock with a TLS listener
(--tls-listen, certificate tlsgen's "localhost" chain): e.mock_tls_addr is its
(host, port), e.tls the tlsgen paths (e.tls["ca"]["cert"] verifies it).
"""

import copy
import ctypes
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build")
GATEWAY_BIN = os.environ.get("SLUICE_BIN") or os.path.join(BUILD, "sluice")
MOCK_BIN = os.environ.get("SLUICE_MOCK_BIN") or os.path.join(BUILD, "sluice-mock")
SANITIZER_MARKERS = (b"ERROR: AddressSanitizer", b"runtime error:", b"LeakSanitizer",
                     b"ERROR: ThreadSanitizer", b"WARNING: ThreadSanitizer")

# Client credentials the tests send; the gateway must never forward them.
CLIENT_KEY = "sk-client-test-0123456789"
OPENAI_KEY = "sk-mock-openai"
ANTHROPIC_KEY = "sk-mock-anthropic"
ANTHROPIC_VERSION = "2023-06-01"
OPENAI_UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"
ANTHROPIC_UPSTREAM_MODEL = "claude-sonnet-4-5-20250929"
TEST_TIER = "test"


def _sanitized_build():
    try:
        with open(os.path.join(BUILD, "config.h")) as f:
            return "#define SL_SANITIZE 1" in f.read()
    except OSError:
        return False


SANITIZED = _sanitized_build()
# Hard limits (not behaviour assertions) are stretched under ASan.
TIME_SCALE = float(os.environ.get("SLUICE_TIME_SCALE") or (3 if SANITIZED else 1))
READY_TIMEOUT_S = 10 * TIME_SCALE


def _raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


_raise_fd_limit()  # the servers inherit it; the load test needs thousands


class Skip(Exception):
    """Raise to mark a test skipped (a kernel feature is missing)."""


def io_uring_missing():
    """Why the kernel cannot give this process an io_uring (the gateway's
    only I/O path), or None when it can: io_uring_setup(2) is tried once."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            if f.read().strip() == "2":
                return "io_uring is disabled (kernel.io_uring_disabled=2)"
    except OSError:
        pass
    if os.uname().machine not in ("x86_64", "aarch64"):
        return None  # syscall number unknown here: let the gateway tell
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params
    fd = libc.syscall(425, 4, params)  # __NR_io_uring_setup on x86_64 and arm64
    if fd >= 0:
        os.close(fd)
        return None
    err = ctypes.get_errno()
    if err in (38, 1):  # ENOSYS, EPERM (seccomp, sysctl, containers)
        return f"io_uring_setup failed: {os.strerror(err)}"
    return None


class TestError(AssertionError):
    pass


# --------------------------------------------------------------------------
# Server processes


def _set_pdeathsig():
    # The servers die with the harness even if it is SIGKILLed.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_live_servers = []


class Server:
    """A child process that announces "<prefix>: ready on HOST:PORT" on stderr.

    Its stdout and stderr go through one pipe, drained by a thread into a log
    file, which also watches for the ready line and sanitizer reports.
    """

    def __init__(self, name, argv, prefix, log_path, ok_statuses=(0,)):
        self.name = name
        self.ok_statuses = ok_statuses
        self.argv = argv
        self.prefix = prefix.encode()
        self.log_path = log_path
        self.addr = None
        self.tls_addr = None    # "<prefix>: tls ready on HOST:PORT", before the ready line
        self.proc = None
        self.sanitizer_lines = []
        self._ready = threading.Event()
        self._tail = []

    def start(self, timeout_s=READY_TIMEOUT_S):
        if not os.access(self.argv[0], os.X_OK):
            raise TestError(f"{os.path.relpath(self.argv[0], ROOT)} does not exist "
                            f"(did it build?)")
        self._log = open(self.log_path, "wb")
        self._log.write(("$ " + " ".join(self.argv) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     preexec_fn=_set_pdeathsig)
        _live_servers.append(self)
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.addr is None:
            rc = self.proc.poll()
            why = (f"exited with status {rc}" if rc is not None
                   else f"no ready line within {timeout_s:.0f}s")
            self.kill()
            tail = b" | ".join(self._tail[-5:]).decode(errors="replace")
            raise TestError(f"{self.name} did not start: {why}; log: {tail}")
        return self.addr

    def _drain(self):
        pattern = re.compile(rb"^" + re.escape(self.prefix) +
                             rb": ready on (\[[^\]]*\]|[^\s:]+):(\d+)\s*$")
        tls_pattern = re.compile(rb"^" + re.escape(self.prefix) +
                                 rb": tls ready on (\[[^\]]*\]|[^\s:]+):(\d+)\s*$")
        for line in iter(self.proc.stdout.readline, b""):
            self._log.write(line)
            self._log.flush()
            self._tail = (self._tail + [line.rstrip()])[-20:]
            if any(m in line for m in SANITIZER_MARKERS):
                self.sanitizer_lines.append(line.rstrip().decode(errors="replace"))
            if self.tls_addr is None:
                m = tls_pattern.match(line)
                if m:
                    self.tls_addr = (m.group(1).decode().strip("[]"), int(m.group(2)))
            if self.addr is None:
                m = pattern.match(line)
                if m:
                    host = m.group(1).decode().strip("[]")
                    self.addr = (host, int(m.group(2)))
                    self._ready.set()
        self._ready.set()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def problems(self):
        """What is wrong with the process right now (it died, or reported a
        sanitizer error), as a list of strings."""
        out = []
        if self.proc is not None and self.proc.poll() is not None:
            out.append(f"{self.name} exited unexpectedly ({_status_text(self.proc.returncode)})")
        if self.sanitizer_lines:
            out.append(f"{self.name} sanitizer report: {self.sanitizer_lines[0]}"
                       f" (see {os.path.relpath(self.log_path, ROOT)})")
        return out

    def stop(self, timeout_s=10 * TIME_SCALE):
        """SIGTERM, wait, SIGKILL if stuck. Returns a list of problems: a
        non-zero exit, a hang, a sanitizer report."""
        if self.proc is None:
            return []
        out = []
        if self.proc.poll() is not None:
            out.append(f"{self.name} exited unexpectedly ({_status_text(self.proc.returncode)})")
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                out.append(f"{self.name} still running {timeout_s:.0f}s after SIGTERM")
                self.kill()
        rc = self.proc.wait()
        self._thread.join(5)
        if rc not in self.ok_statuses and not out:
            out.append(f"{self.name} exited with {_status_text(rc)}")
        if self.sanitizer_lines:
            out.append(f"{self.name} sanitizer report: {self.sanitizer_lines[0]}"
                       f" (see {os.path.relpath(self.log_path, ROOT)})")
        if self in _live_servers:
            _live_servers.remove(self)
        self._log.close()
        return out

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _status_text(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"status {rc}"


def _kill_all():
    for s in list(_live_servers):
        s.kill()


# --------------------------------------------------------------------------
# Configuration


def deep_merge(base, over):
    """A copy of base with over merged in: dicts recursively, other values
    replaced; a None value deletes the key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def base_config(mock_port, data_dir):
    """The gateway config every Env starts from: two providers on the mock
    (the contract's example), plus a model for embeddings."""
    return {
        "listen": [{"address": "127.0.0.1:0"}],
        "data_dir": data_dir,
        "threads": 2,
        "providers": {
            "mock-openai": {
                "base_url": f"http://127.0.0.1:{mock_port}/v1", "format": "openai",
                "keys": [OPENAI_KEY],
                "timeouts": {"connect_ms": 2000, "first_byte_ms": 20000, "idle_ms": 20000},
            },
            "mock-anthropic": {
                "base_url": f"http://127.0.0.1:{mock_port}", "format": "anthropic",
                "keys": [ANTHROPIC_KEY], "anthropic_version": ANTHROPIC_VERSION,
            },
        },
        "models": {
            "gpt-4o-mini": {
                "targets": [{"provider": "mock-openai", "model": OPENAI_UPSTREAM_MODEL}],
                "price": {"input": "0.15", "output": "0.60", "cached_input": "0.075"},
                "context_window": 128000,
            },
            "claude-sonnet-4-5": {
                "aliases": [ANTHROPIC_UPSTREAM_MODEL],
                "targets": [{"provider": "mock-anthropic", "model": ANTHROPIC_UPSTREAM_MODEL,
                             "priority": 1, "weight": 1}],
                "price": {"input": "3.00", "output": "15.00", "cache_write": "3.75",
                          "cached_input": "0.30"},
            },
            "text-embedding-3-small": {
                "targets": [{"provider": "mock-openai", "model": "text-embedding-3-small"}],
            },
        },
        # CLIENT_KEY is imported into the data directory with this tier
        # (generous: the suite's load tests must not meet it).
        "tiers": {
            TEST_TIER: {"requests_per_minute": 100000000, "concurrent": 1000000},
        },
    }


def import_key(config_path, key, name="test", tier=None, extra=()):
    """`sluice keys import` of key (stdin) into the config's data directory;
    returns the new key id."""
    r = subprocess.run([GATEWAY_BIN, "keys", "import", "-c", config_path, "--name", name,
                        "--tier", tier or TEST_TIER, "--json", *extra], input=key + "\n",
                       capture_output=True, text=True, timeout=30 * TIME_SCALE)
    if r.returncode != 0:
        raise AssertionError(f"sluice keys import failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout)["id"]


def keys_cli(config_path, *args, input_text=None):
    """Runs `sluice keys ARGS -c CONFIG`; the CompletedProcess."""
    return subprocess.run([GATEWAY_BIN, "keys", *args, "-c", config_path], input=input_text,
                          capture_output=True, text=True, timeout=30 * TIME_SCALE)


_tls_dir = None


def tls_certs():
    """The tlsgen certificates of this run (generated once per process, in a
    temporary directory removed at exit)."""
    global _tls_dir
    import tlsgen
    if _tls_dir is None:
        import atexit
        import shutil
        d = tempfile.mkdtemp(prefix="sluice-tls-")
        pid = os.getpid()
        atexit.register(lambda: os.getpid() == pid and shutil.rmtree(d, ignore_errors=True))
        _tls_dir = d
    return tlsgen.generate(_tls_dir)


def closed_port():
    """A local TCP port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------
# HTTP/1.1 client on raw sockets


class Response:
    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = []       # [(name, value)] as received
        self.head = b""         # raw head bytes
        self.body = b""         # decoded body
        self.chunks = []        # chunked: data of each chunk
        self.chunk_times = []   # arrival time of each chunk (time.monotonic)
        self.chunked = False
        self.complete = True    # False: the body ended early (peer closed)
        self.events = []        # read_stream: [(arrival time, raw event bytes)]
        self.t_head = 0.0

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise TestError(f"body is not JSON ({e}): {self.body[:300]!r}")

    def __repr__(self):
        body = self.body[:300]
        more = "..." if len(self.body) > 300 else ""
        return f"<{self.status} {self.reason} {body!r}{more}>"


class Closed(Exception):
    pass


class Conn:
    """One client connection. Every read takes a deadline (timeout_s from
    now); running out raises TestError, never hangs."""

    def __init__(self, addr, timeout_s=10, source=None):
        """source: the local address to connect from (any 127/8 address is
        this host's), else the kernel's choice."""
        self.addr = addr
        self.timeout_s = timeout_s
        self.sock = socket.create_connection(addr, timeout=timeout_s,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()  # received, not yet consumed
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def try_send(self, data):
        """send, but a reset/closed peer is not an error; returns success."""
        try:
            self.send(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _fill(self, deadline):
        """Receive more bytes into buf; False on EOF/reset."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestError(f"timed out waiting for data from {self.addr[1]} "
                            f"(have {bytes(self.buf[:200])!r})")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            raise TestError(f"timed out waiting for data from {self.addr[1]} "
                            f"(have {bytes(self.buf[:200])!r})")
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]  # O(1) at the front of a bytearray
        return out

    def _until(self, delim, deadline, limit=1 << 20):
        start = 0
        while True:
            i = self.buf.find(delim, start)
            if i >= 0:
                return self._take(i + len(delim))
            start = max(0, len(self.buf) - len(delim) + 1)
            if len(self.buf) > limit:
                raise TestError(f"no {delim!r} within {limit} bytes")
            if not self._fill(deadline):
                raise Closed(f"connection closed (partial: {bytes(self.buf[:200])!r})")

    def _exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise Closed(f"connection closed after {len(self.buf)} of {n} bytes")
        return self._take(n)

    def read_head(self, timeout_s=None):
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        r = Response()
        try:
            head = self._until(b"\r\n\r\n", deadline)
        except Closed:
            raise Closed(f"connection closed before a response head "
                         f"(got {bytes(self.buf[:200])!r})")
        r.t_head = time.monotonic()
        r.head = head
        lines = head[:-4].split(b"\r\n")
        m = re.match(rb"^(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise TestError(f"bad status line {lines[0][:200]!r}")
        r.version = m.group(1).decode()
        r.status = int(m.group(2))
        r.reason = (m.group(3) or b"").decode(errors="replace")
        for line in lines[1:]:
            if b":" not in line:
                raise TestError(f"bad header line {line[:200]!r}")
            k, v = line.split(b":", 1)
            r.headers.append((k.decode(errors="replace"), v.strip().decode(errors="replace")))
        return r

    def read_response(self, timeout_s=None, method="GET"):
        """Read one response (an interim 1xx is returned as such)."""
        timeout_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout_s
        r = self.read_head(timeout_s)
        if r.status < 200 or r.status in (204, 304) or method == "HEAD":
            return r
        te = (r.header("transfer-encoding") or "").lower()
        cl = r.header("content-length")
        if "chunked" in te:
            r.chunked = True
            self._read_chunks(r, deadline)
        elif cl is not None:
            if not cl.isdigit():
                raise TestError(f"bad Content-Length {cl!r}")
            try:
                r.body = self._exact(int(cl), deadline)
            except Closed:
                r.complete = False
                r.body = self._take(len(self.buf))
        else:
            while self._fill(deadline):
                pass
            r.body = self._take(len(self.buf))
        return r

    def _read_chunks(self, r, deadline, on_chunk=None):
        body = []
        try:
            while True:
                line = self._until(b"\r\n", deadline, 4096)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self._until(b"\r\n", deadline, 4096) != b"\r\n":
                        pass  # trailers
                    break
                data = self._exact(size, deadline)
                if self._exact(2, deadline) != b"\r\n":
                    raise TestError("chunk not followed by CRLF")
                now = time.monotonic()
                r.chunks.append(data)
                r.chunk_times.append(now)
                body.append(data)
                if on_chunk:
                    on_chunk(data, now)
        except Closed:
            r.complete = False
        except ValueError:
            raise TestError(f"bad chunk size line {line[:100]!r}")
        r.body = b"".join(body)

    def read_stream(self, timeout_s=None):
        """Read a streamed (SSE) response; r.events gets each event with the
        time its last byte arrived. Works for chunked and close-delimited
        bodies; an early close sets r.complete False."""
        timeout_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout_s
        r = self.read_head(timeout_s)
        pending = [b""]

        def feed(data, now):
            pending[0] += data
            while True:
                m = re.search(rb"\r?\n\r?\n", pending[0])
                if not m:
                    break
                ev, pending[0] = pending[0][:m.end()], pending[0][m.end():]
                r.events.append((now, ev))

        te = (r.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            r.chunked = True
            self._read_chunks(r, deadline, feed)
        else:
            cl = r.header("content-length")
            want = int(cl) if cl and cl.isdigit() else None
            got = []
            if self.buf:
                data = self._take(len(self.buf))
                got.append(data)
                feed(data, time.monotonic())
            while want is None or sum(map(len, got)) < want:
                if not self._fill(deadline):
                    r.complete = want is None
                    break
                data = self._take(len(self.buf))
                got.append(data)
                feed(data, time.monotonic())
            r.body = b"".join(got)
        if pending[0].strip():
            r.events.append((time.monotonic(), pending[0]))
        return r

    def wait_closed(self, timeout_s=5):
        """True when the peer closes (or resets) within timeout_s; any bytes
        received meanwhile are kept in buf."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if not self._fill(deadline):
                    return True
            except TestError:
                return False
        return False


def build_request(method, path, body=None, headers=None, host="sluice.test",
                  chunks=None, version="HTTP/1.1"):
    """Request bytes. body: bytes/str/dict (JSON). chunks: a list of pieces sent
    with Transfer-Encoding: chunked instead of a Content-Length body. headers:
    a dict or a list of pairs; a None value drops a default header."""
    hdrs = [("Host", host)]
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.append(("Content-Type", "application/json"))
    elif isinstance(body, str):
        body = body.encode()
    if chunks is not None:
        hdrs.append(("Transfer-Encoding", "chunked"))
        out = b""
        for c in chunks:
            c = c.encode() if isinstance(c, str) else c
            if c:
                out += b"%x\r\n%s\r\n" % (len(c), c)
        body = out + b"0\r\n\r\n"
    elif body is not None:
        hdrs.append(("Content-Length", str(len(body))))
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    for k, v in items:
        if any(h[0].lower() == k.lower() for h in hdrs):
            hdrs = [h for h in hdrs if h[0].lower() != k.lower()]
        if v is not None:
            hdrs.append((k, str(v)))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs)
    return head.encode() + b"\r\n" + (body or b"")


def chat_body(model="gpt-4o-mini", stream=False, content="Say hello.", **extra):
    b = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
    b.update(extra)
    return b


def messages_body(model="claude-sonnet-4-5", stream=False, content="Say hello.", **extra):
    b = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
    b.update(extra)
    return b


def sse_data(events):
    """The JSON payloads of `data:` lines ([DONE] as the string)."""
    out = []
    for _, ev in events:
        for line in ev.split(b"\n"):
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                out.append(payload.decode() if payload == b"[DONE]" else json.loads(payload))
    return out


def sse_event_names(events):
    out = []
    for _, ev in events:
        for line in ev.split(b"\n"):
            if line.startswith(b"event:"):
                out.append(line[6:].strip().decode())
    return out


# --------------------------------------------------------------------------
# Assertions


def expect(cond, message):
    if not cond:
        raise TestError(message)


def expect_status(r, status):
    statuses = status if isinstance(status, (tuple, list)) else (status,)
    if r.status not in statuses:
        raise TestError(f"status {r.status}, expected {'/'.join(map(str, statuses))}: {r!r}")


def expect_error(r, status, err_type, shape="openai"):
    """r is an error response in the contract's JSON shape with x-request-id."""
    expect_status(r, status)
    expect(r.header("x-request-id"), f"{status} response without x-request-id")
    j = r.json()
    types = err_type if isinstance(err_type, (tuple, list)) else (err_type,)
    if shape == "openai":
        e = j.get("error") if isinstance(j, dict) else None
        expect(isinstance(e, dict) and isinstance(e.get("message"), str),
               f"not an OpenAI error body: {r.body[:300]!r}")
        expect(e.get("type") in types, f"error type {e.get('type')!r}, expected {types}")
    else:
        expect(isinstance(j, dict) and j.get("type") == "error" and isinstance(j.get("error"), dict),
               f"not an Anthropic error body: {r.body[:300]!r}")
        e = j["error"]
        expect(isinstance(e.get("message"), str), f"no error.message: {r.body[:300]!r}")
        expect(e.get("type") in types, f"error type {e.get('type')!r}, expected {types}")
    return j


def eventually(fn, timeout_s=5, interval_s=0.05, what="condition"):
    """Poll fn() until it returns a truthy value (returned) or time runs out."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TestError(f"{what} not reached within {timeout_s}s (last: {last!r})")
        time.sleep(interval_s)


# --------------------------------------------------------------------------
# Environments: a mock upstream and (usually) a gateway in front of it


class Env:
    def __init__(self, name, overrides=None, gateway=True, mock_threads=1,
                 gateway_threads=2, log_dir=None, tag="", mock_tls=False):
        self.name = name
        self.mock_tls = mock_tls
        self.tls = None
        self.overrides = overrides
        self.with_gateway = gateway
        self.mock_threads = mock_threads
        self.gateway_threads = gateway_threads
        self.log_dir = log_dir
        self.tag = tag
        self.mock = None
        self.gateway = None
        self.config = None
        self.config_path = None
        self.key_id = None
        self.tmp = None

    @property
    def addr(self):
        return self.gateway.addr

    @property
    def mock_addr(self):
        return self.mock.addr

    @property
    def mock_tls_addr(self):
        return self.mock.tls_addr

    def start(self):
        os.makedirs(self.log_dir, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="sluice-test-")
        stem = os.path.join(self.log_dir, f"{self.name}{self.tag}")
        argv = [MOCK_BIN, "--listen", "127.0.0.1:0", "--threads", str(self.mock_threads)]
        if self.mock_tls:
            try:
                self.tls = tls_certs()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                raise TestError(f"tlsgen: {exc}")
            argv += ["--tls-listen", "127.0.0.1:0", "--tls-cert", self.tls["localhost"]["fullchain"],
                     "--tls-key", self.tls["localhost"]["key"]]
        self.mock = Server("sluice-mock", argv, "sluice-mock", stem + ".mock.log", ok_statuses=(0,))
        self.mock.start()
        if self.mock_tls and self.mock.tls_addr is None:
            self.mock.kill()
            raise TestError("sluice-mock printed no \"tls ready on\" line")
        if not self.with_gateway:
            return self
        port = self.mock.addr[1]
        over = self.overrides(port) if callable(self.overrides) else (self.overrides or {})
        self.config = deep_merge(base_config(port, os.path.join(self.tmp, "data")), over)
        cfg = os.path.join(self.tmp, "sluice.json")
        self.config_path = cfg
        with open(cfg, "w") as f:
            json.dump(self.config, f, indent=2)
        with open(stem + ".config.json", "w") as f:
            json.dump(self.config, f, indent=2)
        if (self.config.get("auth") or {}).get("mode", "keys") == "keys":
            self.key_id = import_key(cfg, CLIENT_KEY)
        self.gateway = Server("sluice", [GATEWAY_BIN, "serve", "-c", cfg, "--threads",
                                         str(self.gateway_threads)], "sluice", stem + ".gateway.log")
        self.gateway.start()
        return self

    def servers(self):
        return [s for s in (self.gateway, self.mock) if s is not None]

    def problems(self):
        return [p for s in self.servers() for p in s.problems()]

    def stop(self):
        """Stop both servers; the problems of the gateway (exit status, sanitizer)
        and of the mock."""
        out = []
        for s in self.servers():
            out += s.stop()
        if self.tmp:
            subprocess.run(["rm", "-rf", self.tmp])
            self.tmp = None
        return out

    # --- client helpers ---

    def connect(self, timeout_s=10, mock=False):
        return Conn(self.mock_addr if mock else self.addr, timeout_s)

    def request(self, method, path, body=None, headers=None, timeout_s=10, mock=False, **kw):
        """One request on a new connection; the response."""
        with self.connect(timeout_s, mock) as c:
            c.send(build_request(method, path, body, headers, **kw))
            return c.read_response(timeout_s, method)

    def stream(self, path, body, headers=None, timeout_s=20, mock=False):
        with self.connect(timeout_s, mock) as c:
            c.send(build_request("POST", path, body, headers))
            return c.read_stream(timeout_s)

    def mock_stats(self):
        r = self.request("GET", "/mock/stats", mock=True)
        expect_status(r, 200)
        return r.json()

    def mock_reset(self):
        r = self.request("POST", "/mock/reset", mock=True)
        expect_status(r, (200, 204))

    def last_request(self):
        return self.mock_stats().get("last_request") or {}


class Gateway:
    """A gateway of a test's own in front of an Env's mock (an env with
    gateway=False): base_config deep-merged with over, the client key
    imported, started. addr is the first listener; listener(tag) finds
    another by the tags of its "listening on" line, e.g. "(tls)"."""

    def __init__(self, e, name, over=None, threads=2):
        self.e = e
        self.name = name
        self.tmp = tempfile.mkdtemp(prefix=f"sluice-{name}-")
        self.data_dir = os.path.join(self.tmp, "data")
        self.cfg = deep_merge(base_config(e.mock_addr[1], self.data_dir), over or {})
        self.cfg_path = os.path.join(self.tmp, "sluice.json")
        with open(self.cfg_path, "w") as f:
            json.dump(self.cfg, f, indent=2)
        import_key(self.cfg_path, CLIENT_KEY)
        self.server = Server("sluice", [GATEWAY_BIN, "serve", "-c", self.cfg_path, "--threads",
                                        str(threads)],
                             "sluice", os.path.join(e.log_dir, f"{name}.gateway.log"))
        self.server.start()
        self.addr = self.server.addr

    def listener(self, tags):
        """(host, port) of the listener logged as "listening on HOST:PORT TAGS"."""
        m = re.search(r"listening on 127\.0\.0\.1:(\d+) " + re.escape(tags) + r"\n", self.log())
        expect(m, f"no listener line ending with {tags!r} in the gateway's log")
        return ("127.0.0.1", int(m.group(1)))

    def log(self):
        with open(self.server.log_path, errors="replace") as f:
            return f.read()

    def stop(self, keep=False):
        problems = self.server.stop()
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        expect(not problems, f"gateway stop: {problems}")

    def kill(self):
        self.server.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def header_map(pairs):
    """[[name, value], ...] (mock last_request) -> {lowercase name: [values]}."""
    out = {}
    for k, v in pairs:
        out.setdefault(k.lower(), []).append(v)
    return out


# --------------------------------------------------------------------------
# Registry and runner


class _Test:
    def __init__(self, fn, name, env, fresh, timeout_s):
        self.fn = fn
        self.name = name
        self.env = env
        self.fresh = fresh
        self.timeout_s = timeout_s


_tests = []
_env_specs = {"default": {"overrides": None, "gateway": True, "mock_threads": 1, "mock_tls": False}}


def env(name, overrides=None, gateway=True, mock_threads=1, mock_tls=False):
    """Define a named environment: overrides (a dict, or a function of the
    mock's port returning one) merged into base_config; gateway=False for
    mock-only tests; mock_tls=True: the mock also listens for TLS."""
    _env_specs[name] = {"overrides": overrides, "gateway": gateway, "mock_threads": mock_threads,
                        "mock_tls": mock_tls}


def test(fn=None, *, env="default", fresh=False, timeout=30, name=None):
    """Register a test: fn(e) gets a started Env."""
    def register(f):
        _tests.append(_Test(f, name or f.__name__, env, fresh, timeout))
        return f
    return register(fn) if fn is not None else register


def _failure_text(exc, tb):
    frames = traceback.extract_tb(tb)
    where = ""
    def in_test_file(fr):
        return os.path.basename(fr.filename).startswith("test_")
    for fr in reversed(frames):
        if in_test_file(fr):
            where = f" ({os.path.basename(fr.filename)}:{fr.lineno})"
            break
    if isinstance(exc, AssertionError):
        msg = str(exc)
        if not msg:
            fr = next((f for f in reversed(frames) if in_test_file(f)),
                      frames[-1] if frames else None)
            msg = f"assertion failed: {fr.line}" if fr else "assertion failed"
        return msg + where
    return f"{type(exc).__name__}: {exc}{where}"


def _run_child(t, e):
    """Run the test body in a forked child with a hard time limit. Returns
    (kind, reason)."""
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        result = ("FAIL", "the test raised BaseException")
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            t.fn(e)
            result = ("PASS", "")
        except Skip as exc:
            result = ("SKIP", str(exc))
        except BaseException as exc:  # noqa: B902 - everything is a failure here
            result = ("FAIL", _failure_text(exc, exc.__traceback__))
            sys.stderr.write(f"--- {t.name}\n")
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            try:
                os.write(wfd, json.dumps(result).encode())
            finally:
                os._exit(0)
    os.close(wfd)
    data = b""
    limit_s = t.timeout_s * TIME_SCALE
    deadline = time.monotonic() + limit_s
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if ready:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            data += chunk
    os.close(rfd)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return "FAIL", f"timed out after {limit_s:.0f}s"
    try:
        kind, reason = json.loads(data)
        return kind, reason
    except ValueError:
        return "FAIL", f"test process died ({_status_text(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))})"


def _emit(kind, name, reason=""):
    reason = " ".join(str(reason).split())
    if len(reason) > 600:
        reason = reason[:600] + "..."
    print(f"{kind} {name}" + (f": {reason}" if kind != "PASS" else ""), flush=True)


def main():
    module = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    short = module[5:] if module.startswith("test_") else module
    pattern = os.environ.get("SLUICE_TEST_FILTER") or ""
    args = sys.argv[1:]
    if "-k" in args:
        pattern = args[args.index("-k") + 1]
    log_dir = os.environ.get("SLUICE_TEST_LOGS") or os.path.join(BUILD, "test-logs", "manual", module)
    os.makedirs(log_dir, exist_ok=True)

    def on_term(signum, frame):
        _kill_all()
        sys.exit(1)
    signal.signal(signal.SIGTERM, on_term)

    selected = []
    for t in _tests:
        full = f"{short}.{t.name}"
        if pattern and not re.search(pattern, full) and not re.search(pattern, module):
            continue
        selected.append((full, t))

    no_uring = io_uring_missing()
    shared = {}   # env name -> Env
    shared_num = 0
    failed = 0
    try:
        for full, t in selected:
            spec = _env_specs[t.env]
            if spec["gateway"] and no_uring:
                _emit("SKIP", full, f"needs io_uring: {no_uring}")
                continue
            e = None
            try:
                if t.fresh:
                    e = Env(t.env, spec["overrides"], spec["gateway"], spec["mock_threads"],
                            log_dir=log_dir, tag=f".{t.name}", mock_tls=spec["mock_tls"])
                    e.start()
                else:
                    e = shared.get(t.env)
                    if e is None:
                        e = Env(t.env, spec["overrides"], spec["gateway"], spec["mock_threads"],
                                log_dir=log_dir, tag=f".shared{shared_num}", mock_tls=spec["mock_tls"])
                        shared_num += 1
                        shared[t.env] = e
                        e.start()
            except AssertionError as exc:
                _emit("FAIL", full, f"environment did not start: {exc}")
                failed += 1
                if e is not None:
                    e.stop()
                    shared.pop(t.env, None)
                continue
            kind, reason = _run_child(t, e)
            if t.fresh:
                problems = e.stop()
            else:
                problems = e.problems()
                if problems or reason.startswith("timed out"):
                    # The shared servers are unusable or suspect: report it
                    # on this test and start them again for the next ones.
                    problems += e.stop()
                    shared.pop(t.env, None)
            problems = list(dict.fromkeys(problems))
            if problems and kind != "FAIL":
                kind, reason = "FAIL", "; ".join(problems)
            elif problems:
                reason += "; " + "; ".join(problems)
            failed += kind == "FAIL"
            _emit(kind, full, reason)
        for name, e in shared.items():
            problems = e.stop()
            check = f"{short}.{name}_env_clean_exit"
            if problems:
                failed += 1
                _emit("FAIL", check, "; ".join(problems))
            else:
                _emit("PASS", check)
    finally:
        _kill_all()
    sys.exit(1 if failed else 0)
