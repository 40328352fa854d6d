"""`sluice connect` (SPEC 5: a helper that points local tools at the
gateway): Claude Code's settings.json, Aider's .aider.conf.yml and a shell
env file are written keeping what was there, idempotently, 0600, with a
backup; what they say reaches a running gateway (curl with the variables
each tool reads); a dry run writes nothing; bad input is refused."""

import json
import os
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from harness import (ANTHROPIC_VERSION, CLIENT_KEY, GATEWAY_BIN, Gateway, chat_body,  # noqa: E402
                     closed_port, env, expect, main, messages_body, test, tls_certs)

env("default")


def connect(home, *args):
    return subprocess.run([GATEWAY_BIN, "connect", "--home", home, *args], capture_output=True,
                          text=True, timeout=20)


def read(path):
    with open(path) as f:
        return f.read()


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@test
def writes_each_tool_keeping_what_was_there(e):
    home = tempfile.mkdtemp(prefix="sluice-home-")
    os.makedirs(os.path.join(home, ".claude"))
    settings = os.path.join(home, ".claude", "settings.json")
    with open(settings, "w") as f:
        json.dump({"model": "opus", "env": {"FOO": "1", "ANTHROPIC_AUTH_TOKEN": "old"},
                   "permissions": {"allow": ["Bash(ls)"]}}, f)
    aider = os.path.join(home, ".aider.conf.yml")
    with open(aider, "w") as f:
        f.write("model: gpt-4o\nopenai-api-key: old-key\n# a comment\ndark-mode: true")
    for run in range(2):  # the second run changes nothing
        p = connect(home, "--url", "https://llm.example.com/", "--key", "sk-sluice-abc", "--write")
        expect(p.returncode == 0, f"run {run}: exit {p.returncode}: {p.stderr}")
        s = json.loads(read(settings))
        expect(s["model"] == "opus" and s["permissions"] == {"allow": ["Bash(ls)"]} and
               s["env"] == {"FOO": "1", "ANTHROPIC_AUTH_TOKEN": "sk-sluice-abc",
                            "ANTHROPIC_BASE_URL": "https://llm.example.com"},
               f"run {run}: settings.json {s}")
        lines = read(aider).splitlines()
        expect(lines.count('openai-api-key: "sk-sluice-abc"') == 1 and
               lines.count('openai-api-base: "https://llm.example.com/v1"') == 1 and
               "model: gpt-4o" in lines and "# a comment" in lines and "dark-mode: true" in lines and
               not any("old-key" in ln for ln in lines), f"run {run}: aider {lines}")
        envsh = os.path.join(home, ".config", "sluice", "env.sh")
        expect("export OPENAI_BASE_URL='https://llm.example.com/v1'" in read(envsh),
               f"env.sh: {read(envsh)}")
        for path in (settings, aider, envsh):
            expect(mode(path) == 0o600, f"{path} mode {oct(mode(path))}: it holds the key")
    # the first version of each existing file is kept
    expect(json.loads(read(settings + ".bak"))["env"]["ANTHROPIC_AUTH_TOKEN"] == "old",
           "settings.json.bak is not the original")
    expect("old-key" in read(aider + ".bak"), "aider .bak is not the original")
    subprocess.run(["rm", "-rf", home])


@test
def the_written_settings_reach_the_gateway(e):
    home = tempfile.mkdtemp(prefix="sluice-home-")
    url = "http://%s:%d" % e.addr
    p = connect(home, "--url", url, "--key", CLIENT_KEY, "--write", "shell", "claude-code")
    expect(p.returncode == 0, f"exit {p.returncode}: {p.stderr}")
    envsh = os.path.join(home, ".config", "sluice", "env.sh")
    chat = json.dumps(chat_body())
    msg = json.dumps(messages_body())
    script = f"""set -e
. {envsh}
curl -sS -o /dev/null -w '%{{http_code}} ' "$OPENAI_BASE_URL/chat/completions" \\
  -H "Authorization: Bearer $OPENAI_API_KEY" -H 'Content-Type: application/json' -d '{chat}'
curl -sS -o /dev/null -w '%{{http_code}}' "$ANTHROPIC_BASE_URL/v1/messages" \\
  -H "x-api-key: $ANTHROPIC_API_KEY" -H 'anthropic-version: {ANTHROPIC_VERSION}' \\
  -H 'Content-Type: application/json' -d '{msg}'
"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    expect(r.stdout == "200 200", f"curl through env.sh: {r.stdout!r} {r.stderr}")
    # Claude Code sends ANTHROPIC_AUTH_TOKEN as a bearer token to ANTHROPIC_BASE_URL
    cc = json.loads(read(os.path.join(home, ".claude", "settings.json")))["env"]
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                        cc["ANTHROPIC_BASE_URL"] + "/v1/messages",
                        "-H", "Authorization: Bearer " + cc["ANTHROPIC_AUTH_TOKEN"],
                        "-H", "anthropic-version: " + ANTHROPIC_VERSION,
                        "-H", "Content-Type: application/json", "-d", msg],
                       capture_output=True, text=True, timeout=30)
    expect(r.stdout == "200", f"curl as Claude Code would: {r.stdout!r} {r.stderr}")
    subprocess.run(["rm", "-rf", home])


@test
def check_asks_the_gateway_first(e):
    home = tempfile.mkdtemp(prefix="sluice-home-")
    url = "http://%s:%d" % e.addr
    p = connect(home, "--url", url, "--key", CLIENT_KEY, "--check", "shell")
    expect(p.returncode == 0 and f"check: {url} accepts the key: 3 models" in p.stdout,
           f"check with the key: {p.returncode} {p.stdout} {p.stderr}")
    p = connect(home, "--url", url, "--key", "sk-not-a-key", "--check", "--write", "shell")
    expect(p.returncode == 1 and "answered 401" in p.stderr and "authentication_error" in p.stderr,
           f"check with a wrong key: {p.returncode} {p.stderr}")
    expect(os.listdir(home) == [], "a failed check wrote files")
    p = connect(home, "--url", "http://127.0.0.1:%d" % closed_port(), "--key", "k", "--check")
    expect(p.returncode == 1 and "cannot connect" in p.stderr, f"nothing listening: {p.stderr}")
    subprocess.run(["rm", "-rf", home])


env("connect_tls", gateway=False)


@test(env="connect_tls", fresh=True, timeout=60)
def check_over_verified_https(e):
    certs = tls_certs()
    g = Gateway(e, "connect-tls", {"listen": [
        {"address": "127.0.0.1:0"},
        {"address": "127.0.0.1:0", "tls": {"cert": certs["localhost"]["cert"],
                                           "key": certs["localhost"]["key"]}}]})
    home = tempfile.mkdtemp(prefix="sluice-home-")
    try:
        url = "https://localhost:%d" % g.listener("(tls)")[1]
        trusted = dict(os.environ, SSL_CERT_FILE=certs["ca"]["cert"])
        p = subprocess.run([GATEWAY_BIN, "connect", "--home", home, "--url", url, "--key", CLIENT_KEY,
                            "--check", "shell"], capture_output=True, text=True, timeout=20, env=trusted)
        expect(p.returncode == 0 and "accepts the key: 3 models" in p.stdout,
               f"https check: {p.returncode} {p.stdout} {p.stderr}")
        # the certificate is not trusted without the test CA
        p = subprocess.run([GATEWAY_BIN, "connect", "--home", home, "--url", url, "--key", CLIENT_KEY,
                            "--check", "shell"], capture_output=True, text=True, timeout=20,
                           env=dict(os.environ, SSL_CERT_FILE="/dev/null"))
        expect(p.returncode == 1 and "TLS to localhost" in p.stderr, f"untrusted: {p.stderr}")
    finally:
        subprocess.run(["rm", "-rf", home])
        g.stop()


@test
def dry_run_writes_nothing_and_bad_input_is_refused(e):
    home = tempfile.mkdtemp(prefix="sluice-home-")
    p = connect(home, "--url", "http://x:1", "--key", "k", "shell", "claude-code", "aider")
    expect(p.returncode == 0 and "nothing written" in p.stdout, f"dry run: {p.stdout} {p.stderr}")
    expect(os.listdir(home) == [], f"a dry run wrote {os.listdir(home)}")
    for args, what in ((["--url", "ftp://x", "--key", "k"], "an ftp URL"),
                       (["--url", "http://x", "--key", "k'; rm -rf ~"], "a key with a quote"),
                       (["--url", "http://x y", "--key", "k"], "a URL with a space"),
                       (["--key", "k"], "no URL"),
                       (["--url", "http://x", "--key", "k", "vim"], "an unknown tool")):
        p = connect(home, *args, "--write")
        expect(p.returncode == 2, f"{what}: exit {p.returncode}")
    expect(os.listdir(home) == [], f"refused runs wrote {os.listdir(home)}")
    # a settings.json that is not JSON is left alone
    os.makedirs(os.path.join(home, ".claude"))
    settings = os.path.join(home, ".claude", "settings.json")
    with open(settings, "w") as f:
        f.write("{ not json")
    p = connect(home, "--url", "http://x", "--key", "k", "--write", "claude-code")
    expect(p.returncode == 1 and "left as it is" in p.stderr, f"bad settings: {p.returncode} {p.stderr}")
    expect(read(settings) == "{ not json", "the bad settings.json was changed")
    subprocess.run(["rm", "-rf", home])


if __name__ == "__main__":
    main()
