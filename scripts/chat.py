#!/usr/bin/env python3
"""A minimal terminal client for wss-chat: prints the room, sends each line you type.

    pip install websockets
    python3 scripts/chat.py --token alice-demo-token-not-for-production --room lobby

Each line goes out with an id; the server's ack (with the text the others received, sanitised)
and any error are shown. The token travels in the subprotocol list (as a browser sends it),
never in the URL. The demo's development certificate is found beside this script
(../certs/dev-cert.pem) whatever directory you run it from.
"""
import argparse
import asyncio
import itertools
import json
import pathlib
import ssl
import sys

import websockets

DEV_CERT = pathlib.Path(__file__).resolve().parent.parent / "certs" / "dev-cert.pem"


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
    try:
        ws = await websockets.connect(
            f"{a.url}/rooms/{a.room}",
            ssl=ctx,
            origin=a.origin,
            subprotocols=["wss-chat.v1", f"bearer.{a.token}"],
        )
    except websockets.exceptions.InvalidStatus as e:
        why = {401: "the token was refused", 403: "the Origin or the room is not allowed",
               429: "too many attempts; wait a minute"}.get(e.response.status_code, "")
        print(f"refused: HTTP {e.response.status_code} {why}", file=sys.stderr)
        return 1
    pending = {}
    ids = itertools.count(1)

    async def show() -> None:
        async for raw in ws:
            m = json.loads(raw)
            kind = m.get("type")
            if kind == "message":
                print(f"[{m['room']} #{m['seq']}] {m['from']}: {m['text']}", flush=True)
            elif kind == "ack":
                pending.pop(m["id"], None)
                print(f"  (sent #{m['seq']}: {m['text']})", flush=True)
            elif kind == "error":
                pending.pop(m.get("id"), None)
                wait = f", retry in {m['retry_after_ms']} ms" if "retry_after_ms" in m else ""
                print(f"  ! {m['code']}: {m['message']}{wait}", flush=True)
            elif kind == "welcome":
                print(f"connected as {m['user']} in {m['room']}", flush=True)
            else:
                print(f"<< {raw}", flush=True)

    async with ws:
        reader = asyncio.create_task(show())
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if line.strip():
                msg_id = str(next(ids))
                pending[msg_id] = line
                await ws.send(json.dumps({"type": "message", "text": line.rstrip("\n"), "id": msg_id}))
        # Wait briefly for the last acks before leaving.
        for _ in range(20):
            if not pending or reader.done():
                break
            await asyncio.sleep(0.1)
        reader.cancel()
        if reader.done() and not reader.cancelled() and reader.exception():
            print(f"connection closed: {reader.exception()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
