"""An independent reader of the usage log's segment format (documented in
include/sluice/usagelog.h), CRC-32C included, for the integration tests: a
format bug on either side shows."""

import os
import struct

from harness import expect

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


FLAG_STREAM, FLAG_ESTIMATED, FLAG_REFUSED = 1, 2, 4


def parse_record(p):
    fixed = struct.unpack_from("<BBBBHBBQIIQQQQQq16sII", p, 0)
    (version, route, flags, attempts, status, ip_family, zero, t_ms, ttfb, total,
     inp, out, cread, cwrite, cwrite_1h, cost, ip, images, zero2) = fixed
    assert zero2 == 0, "record padding"
    assert version == 1 and zero == 0, f"record version {version}"
    off = 96
    strs = []
    for _ in range(5):
        n = p[off]
        strs.append(p[off + 1:off + 1 + n].decode())
        off += 1 + n
    assert off == len(p), "record length"
    return {"route": route, "flags": flags, "attempts": attempts, "status": status,
            "ip_family": ip_family, "time_ms": t_ms, "ttfb_ms": ttfb, "total_ms": total,
            "input": inp, "output": out, "cache_read": cread, "cache_write": cwrite,
            "cache_write_1h": cwrite_1h, "images": images,
            "cost": cost, "ip": ip, "request_id": strs[0], "key_id": strs[1], "model": strs[2],
            "provider": strs[3], "upstream_model": strs[4]}


def read_segment(path):
    """(core, [(seq, record)], damage or None, good_bytes)"""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 16 or data[:8] != b"SLULOG01":
        return None, [], "header", 0
    core = struct.unpack_from("<I", data, 8)[0]
    off, out = 16, []
    while off < len(data):
        if len(data) - off < 16:
            return core, out, "torn", off
        n, crc, seq = struct.unpack_from("<IIQ", data, off)
        if n == 0 or n > 2048:
            return core, out, "len", off
        if off + 16 + n > len(data):
            return core, out, "torn", off
        if crc32c(data[off + 8:off + 16 + n]) != crc:
            return core, out, "crc", off
        out.append((seq, parse_record(data[off + 16:off + 16 + n])))
        off += 16 + n
    return core, out, None, off


def read_log(data_dir):
    """All records, checking the log as `verify` would: every segment whole,
    each core's seqs consecutive across its segments. {request_id: record}."""
    udir = os.path.join(data_dir, "usage")
    names = sorted(n for n in os.listdir(udir) if n.startswith("usage-c") and n.endswith(".log"))
    by_core = {}
    for n in names:
        core, recs, damage, _ = read_segment(os.path.join(udir, n))
        expect(damage is None, f"{n}: damaged ({damage}) after a clean stop or a recovery")
        expect(n == f"usage-c{core:03d}-{recs[0][0] if recs else int(n[11:27], 16):016x}.log",
               f"{n}: name does not match its core and first seq")
        by_core.setdefault(core, []).extend(recs)
    records = {}
    for core, recs in by_core.items():
        seqs = [s for s, _ in recs]
        expect(seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True,
               f"core {core}: seqs not consecutive: {seqs[:5]}...")
        for _, r in recs:
            expect(r["request_id"] not in records, f"request {r['request_id']} logged twice")
            records[r["request_id"]] = r
    return records
