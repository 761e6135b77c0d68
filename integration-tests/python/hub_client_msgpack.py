"""MessagePack from Python: `websockets` with the `ws-toolkit.msgpack` subprotocol and `msgpack`.

Connected comes first, subscribe, publish, the publication's data intact; a JSON subscriber
on the same channel gets the same publications; a value JSON cannot carry is refused with an
error and the connection goes on. Exits non-zero on any mismatch. Run by
scripts/python-client-test.sh.
    python hub_client_msgpack.py ws://127.0.0.1:PORT
"""

import asyncio
import json
import sys

import msgpack
import websockets

URL = sys.argv[1]


async def next_packed(ws, kind):
    while True:
        frame = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(frame, bytes), f"expected a binary frame, got {frame!r}"
        message = msgpack.unpackb(frame)
        if message["type"] == kind:
            return message


async def next_json(ws, kind):
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["type"] == kind:
            return message


async def main():
    packed = await websockets.connect(URL, subprotocols=["ws-toolkit.msgpack"])
    assert packed.subprotocol == "ws-toolkit.msgpack", packed.subprotocol
    first = msgpack.unpackb(await asyncio.wait_for(packed.recv(), 10))
    assert first["type"] == "Connected", first
    await packed.send(msgpack.packb({"type": "Subscribe", "channels": ["py:book"]}))
    await next_packed(packed, "Subscribed")

    plain = await websockets.connect(URL)
    await next_json(plain, "Connected")
    await plain.send(json.dumps({"type": "Subscribe", "channels": ["py:book"]}))
    await next_json(plain, "Subscribed")

    book = {"bids": [[187.02, 12.5], [187.01, 3]], "asks": [[187.05, 1]], "ts": 1796136376384,
            "venue": "ünïcode", "depth": -2, "ok": True, "none": None}
    await packed.send(msgpack.packb({"type": "Publish", "channel": "py:book", "data": book}))
    await plain.send(json.dumps({"type": "Publish", "channel": "py:book", "data": {"last": 187.03}}))
    for seq, data in [(1, book), (2, {"last": 187.03})]:
        got = await next_packed(packed, "Publication")
        assert (got["channel"], got["seq"], got["data"]) == ("py:book", seq, data), got
        got = await next_json(plain, "Publication")
        assert (got["seq"], got["data"]) == (seq, data), got

    # Bytes are not JSON: refused by name, and the connection goes on.
    await packed.send(msgpack.packb({"type": "Publish", "channel": "py:book", "data": b"\x00"}))
    error = await next_packed(packed, "Error")
    assert error["code"] == "bad_request" and "binary value" in error["message"], error
    await packed.send(msgpack.packb({"type": "Ping"}))
    await next_packed(packed, "Pong")

    await packed.close()
    await plain.close()
    print("python msgpack client: ok")


asyncio.run(main())
