"""permessage-deflate from Python: `websockets` offers it by default and the hub agrees.

A compressing subscriber and publisher (the default) and a plain subscriber
(`compression=None`) share a channel: large order books and short prices arrive intact at
both, and a MessagePack subscriber with deflate gets the same data. Exits non-zero on any
mismatch. Run by scripts/python-client-test.sh.
    python hub_client_deflate.py ws://127.0.0.1:PORT
"""

import asyncio
import json
import sys

import msgpack
import websockets

URL = sys.argv[1]


async def next_of(ws, kind, packed=False):
    while True:
        frame = await asyncio.wait_for(ws.recv(), 10)
        message = msgpack.unpackb(frame) if packed else json.loads(frame)
        if message["type"] == kind:
            return message


def order_book(n):
    return {
        "symbol": "SOL-USDC",
        "seq": n,
        "bids": [[round(187.42 - i * 0.01, 2), 1.5 + (i * 7 + n) % 13 * 0.25] for i in range(50)],
        "asks": [[round(187.43 + i * 0.01, 2), 1.5 + (i * 5 + n) % 11 * 0.25] for i in range(50)],
    }


def agreed(ws):
    return ws.response.headers.get("Sec-WebSocket-Extensions", "")


async def main():
    compressing = await websockets.connect(URL)
    assert "permessage-deflate" in agreed(compressing), agreed(compressing)
    assert "server_no_context_takeover" in agreed(compressing), agreed(compressing)
    plain = await websockets.connect(URL, compression=None)
    assert agreed(plain) == "", agreed(plain)
    packed = await websockets.connect(URL, subprotocols=["ws-toolkit.msgpack"])
    assert "permessage-deflate" in agreed(packed), agreed(packed)
    publisher = await websockets.connect(URL)

    for ws in (compressing, plain, publisher):
        await next_of(ws, "Connected")
    await next_of(packed, "Connected", packed=True)
    subscribe = {"type": "Subscribe", "channels": ["book:SOL-USDC"]}
    for ws in (compressing, plain):
        await ws.send(json.dumps(subscribe))
        await next_of(ws, "Subscribed")
    await packed.send(msgpack.packb(subscribe))
    await next_of(packed, "Subscribed", packed=True)

    sent = [order_book(n) for n in range(5)] + [{"symbol": "SOL-USDC", "price": 187.42}]
    for data in sent:
        # Compressed by websockets, inflated by the hub.
        await publisher.send(json.dumps({"type": "Publish", "channel": "book:SOL-USDC", "data": data}))
    for ws, is_packed in ((compressing, False), (plain, False), (packed, True)):
        got = [(await next_of(ws, "Publication", is_packed))["data"] for _ in sent]
        assert got == sent, f"publications differ on {'msgpack' if is_packed else 'json'}"

    for ws in (compressing, plain, packed, publisher):
        await ws.close()
    print("python deflate client: ok")


asyncio.run(main())
