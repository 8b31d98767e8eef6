"""A WebSocket client on Python `websockets`, run by tests/websocket.rs.

usage: client.py URL SCENARIO
  tunnel: subprotocol chat; text, binary, a 180 KB compressible text and
          ping round-trips (permessage-deflate on by default); the backend
          closes with 4003 on "close-me"; prints one JSON line of results.
  message: sends three texts, prints the replies as JSON.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def tunnel(url):
    out = {}
    async with connect(url, subprotocols=["superchat", "chat"]) as ws:
        out["subprotocol"] = ws.subprotocol
        out["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        await ws.send("hello")
        out["text"] = await ws.recv()
        await ws.send(b"\x00\x01\x02")
        out["binary"] = list(await ws.recv())
        # Compressible: with permessage-deflate, a few hundred bytes on the wire.
        big = "tollgate " * 20000
        await ws.send(big)
        out["big_text_ok"] = (await ws.recv()) == big
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        out["pong"] = True
        await ws.send("close-me")
        try:
            await ws.recv()
        except ConnectionClosed as e:
            out["close_code"] = e.rcvd.code if e.rcvd else None
            out["close_reason"] = e.rcvd.reason if e.rcvd else None
    print(json.dumps(out), flush=True)


async def message(url):
    out = []
    async with connect(url) as ws:
        for text in ["one", "two", "three"]:
            await ws.send(text)
        for _ in range(3):
            out.append(await ws.recv())
        await ws.close(1000, "bye")
    print(json.dumps(out), flush=True)


url, scenario = sys.argv[1], sys.argv[2]
asyncio.run({"tunnel": tunnel, "message": message}[scenario](url))
