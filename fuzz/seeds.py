#!/usr/bin/env python3
"""Write the seed corpus of every fuzz target from the test suite's payloads and the attack
catalogue (SECURITY.md). Run from anywhere; it rewrites fuzz/corpus/<target>/seed-* only, so
files the fuzzer added beside them stay."""
import hashlib, json, pathlib, re

root = pathlib.Path(__file__).resolve().parent
repo = root.parent
chat_rs = (repo / "tests/it/chat.rs").read_text()
# The XSS catalogue, as written in tests/it/chat.rs.
block = chat_rs[chat_rs.index("const XSS"):]
block = block[:block.index("];")]
xss = [json.loads('"' + m + '"') for m in re.findall(r'^\s*"((?:[^"\\]|\\.)*)",\s*$', block, re.M)]
assert len(xss) >= 30, len(xss)
tricky = ["pay\u202elanigiro\u202c \u2066x\u2069 ze\u200bro\u200dw\ufeffidth nul\x00l bell\x07",
          "1 < 2 && 3 > 2", "hi <b onmouseover=alert(1)>there</b>", "<b>bold</b> <i>it</i>",
          '<a href="https://e.com" onclick="x()">e</a>', "&amp;lt;", "x" * 4096, ""]

seeds = {}
seeds["sanitizer"] = [s.encode() for s in xss + tricky]
frames = [{"type": "message", "text": t} for t in xss[:8] + tricky] + [
    {"type": "message", "text": "hi", "id": "1"},
    {"type": "message", "text": "hi", "id": "x" * 65},
    {"type": "message", "text": "hi", "from": "admin", "room": "secret"},
    {"type": "join", "room": "x"},
    {"type": "message"},
    {"text": "no type"},
]
seeds["client_frame"] = [json.dumps(f).encode() for f in frames] + [
    b"not json", b"[1,2,3]", b"{" * 200, b'{"type":"message","text":"\\ud800"}', b'{"type":"message","text":1}']
origins = ["https://chat.example.com", "null", "https://chat.example.com.evil.net", "https://evil-chat.example.com",
           "https://chatexample.com", "https://corp.example.com", "http://chat.example.com",
           "https://chat.example.com:8443", "https://chat.example.com/", "https://CHAT.example.com:443",
           "https://a.corp.example.com", "HTTPS://CHAT.EXAMPLE.COM.EVIL.NET", "https://Chat.Example.Com:8443",
           "https://[::1]:8443", "https://user@chat.example.com", "https://*.corp.example.com", "https://chat.example.com:99999"]
rules = ["https://chat.example.com", "https://*.corp.example.com", "https://localhost:8443", "https://[::1]:8443"]
seeds["origin"] = [f"{r}\n{o}".encode() for r in rules for o in origins]
jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.c2ln"
seeds["token"] = [
    b"Bearer alice-token-1\n\n\n", b"\nwss-chat.v1, bearer.alice-token-1\n\n",
    b"\n\nother=1; wss_chat_token=alice-token-1\n", b"\n\n\ntoken=alice-token-1&x=1",
    f"Bearer {jwt}\n\n\n".encode(), f"bearer   {jwt}  \n\n\n".encode(), b"Basic YWxpY2U6eA==\n\n\n",
    b"Bearer \n bearer.\nwss_chat_token=\ntoken=", b"alice", b"a\x00b\n\xff\n\n",
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9.".encode()]
seeds["upgrade_path"] = [p.encode() for p in [
    "/rooms/lobby", "/rooms/lobby?token=alice-token-1", "/rooms/a.b-c_D9", "/rooms/" + "x" * 64, "/rooms/" + "x" * 65,
    "/rooms/", "/rooms/a/b", "/rooms/caf%C3%A9", "/rooms/a%20b", "/rooms/..", "/rooms/lobby?since=5&epoch=abc",
    "/healthz", "/", "/index.html", "/app.js", "/favicon.ico", "/nope", "https://host/rooms/lobby?x=1", "*",
    "/rooms/lobby#frag", "//rooms/lobby"]]
cfg = (repo / "config.toml").read_text()
seeds["config"] = [cfg.encode(), b"", b"[server]\nlisten = \"nowhere\"\n", b"[limits]\nburst = 0\nmax_message_bytes = \"x\"\n",
                   b"[server]\nlisten = 5\n[rooms]\nnames = [1]\n", b"[[auth.users]]\nname = \"a\\nb\"\ntoken_sha256 = \"zz\"\n",
                   b"[origins]\nallowed = [\"https://*.com\", \"javascript:x\"]\n", b"[server]\necho_mode = true\nlisten = \"0.0.0.0:1\"\n",
                   b"[auth]\njwt_secret_file = \"/dev/null\"\njwt_secret_env = \"X\"\n", b"[unknown]\nx = 1\n", b"a = [[[[[[[[[[1]]]]]]]]]]\n"]

for target, items in seeds.items():
    d = root / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for item in items:
        (d / f"seed-{hashlib.sha1(item).hexdigest()[:16]}").write_bytes(item)
    print(f"{target}: {len(items)} seeds")
