#!/usr/bin/env python3
"""A minimal terminal client for wss-chat: prints the room, sends each line you type.

    pip install websockets
    python3 scripts/chat.py --token demo-token-not-for-production --room lobby

The token travels in the subprotocol list (as a browser sends it), never in the URL.
"""
import argparse
import asyncio
import json
import ssl
import sys

import websockets


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="wss://localhost:8443", help="server base URL")
    p.add_argument("--room", default="lobby")
    p.add_argument("--token", required=True)
    p.add_argument("--origin", default="https://localhost:8443", help="Origin header to send")
    p.add_argument("--ca", default="certs/dev-cert.pem", help="certificate to trust (the dev cert by default)")
    a = p.parse_args()

    ctx = ssl.create_default_context(cafile=a.ca)
    async with websockets.connect(
        f"{a.url}/rooms/{a.room}",
        ssl=ctx,
        origin=a.origin,
        subprotocols=["wss-chat.v1", f"bearer.{a.token}"],
    ) as ws:
        async def show() -> None:
            async for raw in ws:
                m = json.loads(raw)
                if m["type"] == "message":
                    print(f"[{m['room']} #{m['seq']}] {m['from']}: {m['text']}", flush=True)
                else:
                    print(f"<< {raw}", flush=True)

        reader = asyncio.create_task(show())
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if line.strip():
                await ws.send(json.dumps({"type": "message", "text": line.rstrip("\n")}))
        await asyncio.sleep(0.5)
        reader.cancel()


if __name__ == "__main__":
    asyncio.run(main())
