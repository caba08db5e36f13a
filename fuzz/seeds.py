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

# tls_records (fuzz/src/tls_records.rs): a head byte (bit 0: TLS 1.2; bits 1-3: the handshake
# delivered in pieces of n^3 bytes), then operations of a code and two argument bytes. Each seed
# is one of the record layer's error paths after a real handshake, in both versions.
FORGED, FLIP, TRUNC, OVERSIZED, RAW, ZERO, INNER, CLOSE, CHUNK, PADDED, EOF = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
tls_ops = [
    [FORGED, 0, 48], [0, 0, 100, FORGED, 0, 200], [FLIP, 10, 12], [FLIP, 0, 12], [FLIP, 4, 12],
    [TRUNC, 8, 10, 0, 0, 8], [TRUNC, 8, 10, EOF, 0, 0], [OVERSIZED, 0, 255], [OVERSIZED, 255, 3],
    [RAW, 5, 0, 0x17, 3, 3, 0, 0], [RAW, 9, 0, 0x30, 3, 3, 0, 4, 1, 2, 3, 4], [ZERO, 32, 0], [ZERO, 0, 0],
    [INNER, 0x16, 30], [INNER, 0x14, 1], [INNER, 0x15, 2], [CLOSE, 0, 0, 0, 0, 10], [CHUNK, 1, 0, 0, 1, 44],
    [CHUNK, 7, 0, FORGED, 0, 40], [PADDED, 0x40, 0x00], [PADDED, 0x40, 0x01], [PADDED, 0x40, 0xf0], [EOF, 0, 0],
    [0, 0x40, 0x01], [0, 0, 5, EOF, 0, 0],
]
seeds["tls_records"] = [bytes([head] + ops) for ops in tls_ops for head in (0, 1)] + [
    bytes([3 << 1, FORGED, 0, 48]), bytes([(1 << 1) | 1, 0, 0, 30, FLIP, 20, 40])]

for target, items in seeds.items():
    d = root / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("seed-*"):
        old.unlink()
    for item in items:
        (d / f"seed-{hashlib.sha1(item).hexdigest()[:16]}").write_bytes(item)
    print(f"{target}: {len(items)} seeds")
