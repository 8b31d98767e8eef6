"""A WebSocket backend on Python `websockets`: echoes every message, selects
the `chat` subprotocol when offered, and closes with 4003 "py done" when it
receives the text "close-me". Prints its port on stdout once listening."""
import asyncio
import sys

from websockets.asyncio.server import serve


async def handler(ws):
    async for message in ws:
        if message == "close-me":
            await ws.close(4003, "py done")
            return
        await ws.send(message)


async def main():
    async with serve(handler, "127.0.0.1", 0, subprotocols=["chat"], max_size=2**20) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


asyncio.run(main())
