"""tlsgen.py - test certificates, made with the openssl CLI at run time
(python3 stdlib only; nothing is committed).

    import tlsgen
    certs = tlsgen.generate(tmpdir)          # idempotent; cached per directory
    certs["ca"]["cert"]                      # PEM paths: {"cert": ..., "key": ...}
    certs["localhost"]["fullchain"]          # leaves also have leaf + CA in one file

Entries (every key is PEM; ECDSA keys are P-256):

    ca          test CA, ECDSA, self-signed
    other_ca    an unrelated CA, ECDSA, self-signed
    localhost   ECDSA leaf by ca, SAN DNS:localhost, IP:127.0.0.1
    rsa         RSA-2048 leaf by ca, SAN DNS:localhost, IP:127.0.0.1
    alt         ECDSA leaf by ca, SAN DNS:alt.test (SNI selection)
    wronghost   ECDSA leaf by ca, SAN DNS:wrong.example only (name mismatch)
    unknown_ca  ECDSA leaf by other_ca, SAN DNS:localhost, IP:127.0.0.1
    expired     ECDSA leaf by ca, SAN DNS:localhost, IP:127.0.0.1, valid
                2020-01-01..2020-02-01 only

Leaves carry basicConstraints CA:FALSE, keyUsage, extendedKeyUsage
serverAuth and key identifiers; CAs basicConstraints critical CA:TRUE and
keyUsage keyCertSign: they verify under strict X.509 checking too
(VERIFY_X509_STRICT, BoringSSL). The files of one directory are written once:
a later generate() of the same directory reuses them (a marker file is
written last, so an interrupted run starts over).
"""

import os
import subprocess
import threading

LEAVES = ("localhost", "rsa", "alt", "wronghost", "unknown_ca", "expired")
NAMES = ("ca", "other_ca") + LEAVES
_MARKER = ".tlsgen-complete"
_VERSION = "1"  # bump when what is generated changes: old directories are redone

_SAN_LOCAL = "DNS:localhost,IP:127.0.0.1"
# name -> (key type, issuer, subject CN, subjectAltName)
_LEAF_SPECS = {
    "localhost": ("ec", "ca", "localhost", _SAN_LOCAL),
    "rsa": ("rsa", "ca", "localhost", _SAN_LOCAL),
    "alt": ("ec", "ca", "alt.test", "DNS:alt.test"),
    "wronghost": ("ec", "ca", "wrong.example", "DNS:wrong.example"),
    "unknown_ca": ("ec", "other_ca", "localhost", _SAN_LOCAL),
    "expired": ("ec", "ca", "localhost", _SAN_LOCAL),
}
EXPIRED_START = "200101000000Z"  # UTCTime, as `openssl ca -startdate` takes it
EXPIRED_END = "200201000000Z"

_cache = {}
_lock = threading.Lock()

# A config of our own, so the system openssl.cnf (defaults, extensions) does
# not change what is generated.
_REQ_CNF = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXT = """[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, {key_usage}
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""

_CA_CNF = """[ca]
default_ca = mini
[mini]
dir = {dir}
database = $dir/index.txt
serial = $dir/serial
new_certs_dir = $dir
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
email_in_dn = no
[any]
commonName = supplied
"""


def _run(args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _serial():
    # positive, 16 bytes: distinct serials per certificate
    return "0x" + (bytes([os.urandom(1)[0] & 0x7f | 0x01]) + os.urandom(15)).hex()


def _genkey(kind, path, cwd):
    if kind == "rsa":
        _run(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path], cwd)
    else:
        _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-pkeyopt", "ec_param_enc:named_curve", "-out", path], cwd)
    os.chmod(os.path.join(cwd, path), 0o600)


def _paths(d):
    out = {}
    for n in NAMES:
        out[n] = {"cert": os.path.join(d, f"{n}.crt"), "key": os.path.join(d, f"{n}.key")}
        if n in LEAVES:
            out[n]["fullchain"] = os.path.join(d, f"{n}.fullchain.crt")
    return out


def _complete(d, paths):
    try:
        with open(os.path.join(d, _MARKER)) as f:
            if f.read().strip() != _VERSION:
                return False
    except OSError:
        return False
    return all(os.path.isfile(p) for e in paths.values() for p in e.values())


def _make_ca(d, name, cn):
    _genkey("ec", f"{name}.key", d)
    _run(["req", "-config", "req.cnf", "-new", "-x509", "-key", f"{name}.key", "-out", f"{name}.crt",
          "-subj", f"/CN={cn}", "-days", "3650", "-sha256", "-set_serial", _serial(),
          "-extensions", "ca_ext"], d)


def _make_leaf(d, name):
    kind, issuer, cn, san = _LEAF_SPECS[name]
    _genkey(kind, f"{name}.key", d)
    _run(["req", "-config", "req.cnf", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}",
          "-out", f"{name}.csr"], d)
    key_usage = "digitalSignature, keyEncipherment" if kind == "rsa" else "digitalSignature"
    _write(os.path.join(d, f"{name}.ext"), _LEAF_EXT.format(key_usage=key_usage, san=san))
    if name == "expired":
        # x509 -req of OpenSSL 3.0 cannot set a start date: `openssl ca` can
        cadir = os.path.join(d, "ca-db")
        os.makedirs(cadir, exist_ok=True)
        _write(os.path.join(cadir, "index.txt"), "")
        _write(os.path.join(cadir, "serial"), _serial()[2:].upper() + "\n")
        _write(os.path.join(d, "ca.cnf"), _CA_CNF.format(dir=cadir))
        _run(["ca", "-batch", "-config", "ca.cnf", "-notext", "-in", f"{name}.csr",
              "-out", f"{name}.crt", "-cert", f"{issuer}.crt", "-keyfile", f"{issuer}.key",
              "-startdate", EXPIRED_START, "-enddate", EXPIRED_END,
              "-extfile", f"{name}.ext", "-extensions", "leaf_ext"], d)
    else:
        _run(["x509", "-req", "-in", f"{name}.csr", "-out", f"{name}.crt", "-CA", f"{issuer}.crt",
              "-CAkey", f"{issuer}.key", "-set_serial", _serial(), "-days", "825", "-sha256",
              "-extfile", f"{name}.ext", "-extensions", "leaf_ext"], d)
    with open(os.path.join(d, f"{name}.crt")) as f:
        leaf = f.read()
    with open(os.path.join(d, f"{issuer}.crt")) as f:
        ca = f.read()
    _write(os.path.join(d, f"{name}.fullchain.crt"), leaf + ca)
    os.remove(os.path.join(d, f"{name}.csr"))
    os.remove(os.path.join(d, f"{name}.ext"))


def generate(directory):
    """Generate (or reuse) every certificate under directory; returns
    {name: {"cert": path, "key": path[, "fullchain": path]}} with absolute
    paths. Raises RuntimeError when openssl fails."""
    d = os.path.abspath(directory)
    with _lock:
        paths = _cache.get(d)
        if paths is not None and _complete(d, paths):
            return paths
        paths = _paths(d)
        if not _complete(d, paths):
            os.makedirs(d, exist_ok=True)
            try:
                os.remove(os.path.join(d, _MARKER))
            except FileNotFoundError:
                pass
            _write(os.path.join(d, "req.cnf"), _REQ_CNF)
            _make_ca(d, "ca", "sluice test CA")
            _make_ca(d, "other_ca", "sluice other test CA")
            for name in LEAVES:
                _make_leaf(d, name)
            _write(os.path.join(d, _MARKER), _VERSION + "\n")
        _cache[d] = paths
        return paths


if __name__ == "__main__":
    import json
    import sys
    import tempfile
    print(json.dumps(generate(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()), indent=2))
