#!/usr/bin/env python3
"""A minimal terminal client for wss-chat: prints the room, sends each line you type.

    pip install websockets
    python3 scripts/chat.py --token alice-demo-token-not-for-production --room lobby

Each line goes out with an id; the server's ack (with the text the others received, sanitised)
and any error are shown. When the connection drops it reconnects (1 s doubling to 30 s) and
resumes with the room's epoch and the last seq shown, so nothing said meanwhile is missed or
shown twice; lines not acked yet are sent again with the same id, which the server stores once.
The token travels in the subprotocol list (as a browser sends it), never in the URL. The demo's
development certificate is found beside this script (../certs/dev-cert.pem) whatever directory
you run it from. A moderator of the room can type /kick USER [REASON], /mute USER SECONDS and
/delete SEQ; a kicked client stops rather than reconnect into the ban.
"""
import argparse
import asyncio
import itertools
import json
import pathlib
import random
import secrets
import ssl
import sys
import threading
import urllib.parse

import websockets

DEV_CERT = pathlib.Path(__file__).resolve().parent.parent / "certs" / "dev-cert.pem"
REFUSALS = {401: "the token was refused", 403: "the Origin or the room is not allowed",
            429: "too many attempts; wait a minute"}


class Room:
    """What the view has shown, to resume exactly and to resend what was not acked."""

    def __init__(self) -> None:
        self.epoch = None
        self.last_seq = 0
        self.shown = set()
        # id -> text, in the order typed; ids unique across runs (the server remembers them).
        self.pending = {}
        self.ids = (f"{secrets.token_hex(4)}-{n}" for n in itertools.count(1))

    def url(self, base: str, room: str) -> str:
        url = f"{base}/rooms/{urllib.parse.quote(room)}"
        if self.epoch is not None:
            url += f"?since={self.last_seq}&epoch={urllib.parse.quote(self.epoch)}"
        return url

    def show(self, m: dict) -> None:
        kind = m.get("type")
        if kind == "message":
            if m["seq"] in self.shown:
                return
            self.shown.add(m["seq"])
            self.last_seq = max(self.last_seq, m["seq"])
            who = f"{m['from']} (via api)" if m.get("via") == "api" else m["from"]
            text = "(message deleted)" if m.get("deleted") else m["text"]
            print(f"[{m['room']} #{m['seq']}] {who}: {text}", flush=True)
        elif kind == "ack":
            if self.pending.pop(m["id"], None) is None:
                return  # a resend's ack: shown already
            self.shown.add(m["seq"])
            self.last_seq = max(self.last_seq, m["seq"])
            print(f"  (sent #{m['seq']}: {m['text']})", flush=True)
        elif kind == "error":
            self.pending.pop(m.get("id"), None)
            wait = f", retry in {m['retry_after_ms']} ms" if "retry_after_ms" in m else ""
            print(f"  ! {m['code']}: {m['message']}{wait}", flush=True)
        elif kind == "welcome":
            if m.get("recovered") is False or (self.epoch is not None and m["epoch"] != self.epoch):
                print("  (the room's history could not be resumed; showing it afresh)", flush=True)
                self.shown.clear()
                self.last_seq = 0
            self.epoch = m["epoch"]
            role = f" ({m['role']})" if m.get("role", "member") != "member" else ""
            print(f"connected as {m['user']} in {m['room']}{role}", flush=True)
            if "members" in m:
                more = " and more" if m.get("members_truncated") else ""
                print(f"  present: {', '.join(m['members'])}{more}", flush=True)
        elif kind == "resync":
            print("  (the room's history was reset by the server; showing it afresh)", flush=True)
            self.shown.clear()
            self.last_seq = 0
            self.epoch = None
        elif kind == "deleted":
            print(f"  * message #{m['seq']} was deleted by {m['by']}", flush=True)
        elif kind == "moderation":
            what = {"kick": f"removed {m.get('user')}", "mute": f"muted {m.get('user')} for {m.get('seconds')} s",
                    "delete": f"deleted message #{m.get('seq')}"}.get(m["action"], m["action"])
            reason = f": {m['reason']}" if m.get("reason") else ""
            print(f"  * {m['by']} {what}{reason}", flush=True)
        elif kind in ("join", "leave"):
            print(f"  * {m['user']} {'joined' if kind == 'join' else 'left'}", flush=True)
        else:
            print(f"<< {json.dumps(m)}", flush=True)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="wss://localhost:8443", help="server base URL")
    p.add_argument("--room", default="lobby")
    p.add_argument("--token", required=True)
    p.add_argument("--origin", default="https://localhost:8443", help="Origin header to send")
    p.add_argument("--ca", default=str(DEV_CERT), help="certificate to trust (default: the demo's dev certificate)")
    a = p.parse_args()

    if not pathlib.Path(a.ca).is_file():
        print(f"error: no certificate to trust at {a.ca}: start the server once (it creates the dev "
              "certificate), or pass --ca with your CA's PEM file", file=sys.stderr)
        return 2
    ctx = ssl.create_default_context(cafile=a.ca)
    room = Room()
    lines = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read_stdin() -> None:
        # A daemon thread: one blocked reading a terminal must not keep the client from exiting.
        while True:
            line = sys.stdin.readline()
            loop.call_soon_threadsafe(lines.put_nowait, line)
            if not line:
                return

    threading.Thread(target=read_stdin, daemon=True).start()
    typing_done = False
    attempt = 0
    while True:
        try:
            ws = await websockets.connect(
                room.url(a.url, a.room),
                ssl=ctx,
                origin=a.origin,
                subprotocols=["wss-chat.v1", f"bearer.{a.token}"],
            )
        except websockets.exceptions.InvalidStatus as e:
            code = e.response.status_code
            if code in (401, 403):
                print(f"refused: HTTP {code} {REFUSALS[code]}", file=sys.stderr)
                return 1
            ws, why = None, f"HTTP {code} {REFUSALS.get(code, '')}".strip()
        except (OSError, websockets.exceptions.WebSocketException) as e:
            ws, why = None, str(e) or type(e).__name__
        if ws is not None:
            why = await session(ws, room, lines, typing_done)
            if why is None:
                return 0
            if ws.close_code == 4003:
                print(f"removed from the room by a moderator: {ws.close_reason}", file=sys.stderr)
                return 1
            typing_done = why == "stdin closed"
            attempt = 0
        if typing_done and attempt >= 3:
            print(f"  ! gave up: {len(room.pending)} message(s) not acked", file=sys.stderr)
            return 1
        delay = min(30.0, 2.0 ** attempt) * random.uniform(0.5, 1.0)
        attempt += 1
        print(f"  (disconnected: {why}; reconnecting in {delay:.1f} s)", file=sys.stderr, flush=True)
        await asyncio.sleep(delay)


def moderation(line: str, msg_id: str):
    """A moderator's command as its frame: /kick USER [REASON], /mute USER SECONDS, /delete SEQ."""
    words = line.split(maxsplit=2)
    try:
        if words[:1] == ["/kick"] and len(words) >= 2:
            return {"type": "kick", "user": words[1], "reason": " ".join(words[2:]), "id": msg_id}
        if words[:1] == ["/mute"] and len(words) == 3:
            return {"type": "mute", "user": words[1], "seconds": int(words[2]), "id": msg_id}
        if words[:1] == ["/delete"] and len(words) == 2:
            return {"type": "delete", "seq": int(words[1]), "id": msg_id}
    except ValueError:
        pass
    return None


async def session(ws, room: Room, lines: asyncio.Queue, typing_done: bool):
    """One connection: returns None when the user is done, else why the connection ended."""
    async with ws:
        async def receive() -> None:
            async for raw in ws:
                m = json.loads(raw)
                room.show(m)
                if m.get("type") == "welcome":
                    # Sent again with the same ids: the server acks one it already stored.
                    for msg_id, text in list(room.pending.items()):
                        await ws.send(json.dumps({"type": "message", "text": text, "id": msg_id}))

        reader = asyncio.create_task(receive())
        try:
            while not typing_done:
                getter = asyncio.create_task(lines.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    getter.cancel()
                    return f"connection closed ({ws.close_code or 1006})"
                line = getter.result()
                if not line:
                    typing_done = True
                    break
                command = moderation(line, next(room.ids))
                if command is not None:
                    await ws.send(json.dumps(command))
                elif line.strip():
                    msg_id = next(room.ids)
                    text = line.rstrip("\n")
                    room.pending[msg_id] = text
                    await ws.send(json.dumps({"type": "message", "text": text, "id": msg_id}))
            # Input is over: wait briefly for the last acks (sending again if the socket drops).
            for _ in range(20):
                if not room.pending:
                    return None
                if reader.done():
                    return "stdin closed"
                await asyncio.sleep(0.1)
            return None
        except websockets.exceptions.ConnectionClosed:
            return f"connection closed ({ws.close_code or 1006})"
        finally:
            reader.cancel()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
