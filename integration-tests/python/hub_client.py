"""A third-party client against the hub: Python's `websockets` library.

Subscribes, publishes, receives in `seq` order, recovers with `since`, and sees clear errors
for bad input; exits non-zero on any mismatch. Run by scripts/python-client-test.sh.
    python hub_client.py ws://127.0.0.1:PORT
"""

import asyncio
import json
import sys

import websockets

URL = sys.argv[1]


async def next_of(ws, kind):
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["type"] == kind:
            return message


async def main():
    subscriber = await websockets.connect(URL)
    hello = await next_of(subscriber, "Connected")
    assert isinstance(hello["connection_id"], int), hello
    await subscriber.send(json.dumps({"type": "Subscribe", "channels": ["py:ticks"]}))
    subscribed = await next_of(subscriber, "Subscribed")
    epoch = subscribed["positions"]["py:ticks"]["epoch"]

    publisher = await websockets.connect(URL)
    await next_of(publisher, "Connected")
    for n in range(1, 51):
        await publisher.send(json.dumps({"type": "Publish", "channel": "py:ticks", "data": {"n": n}}))
    for n in range(1, 51):
        publication = await next_of(subscriber, "Publication")
        assert (publication["seq"], publication["data"]["n"]) == (n, n), publication

    # A late client recovers what it missed after seq 40.
    late = await websockets.connect(URL)
    await next_of(late, "Connected")
    since = {"py:ticks": {"epoch": epoch, "seq": 40}}
    await late.send(json.dumps({"type": "Subscribe", "channels": ["py:ticks"], "since": since}))
    position = (await next_of(late, "Subscribed"))["positions"]["py:ticks"]
    assert position["recovered"] and position["seq"] == 50, position
    replayed = [(await next_of(late, "Publication"))["seq"] for _ in range(10)]
    assert replayed == list(range(41, 51)), replayed

    # Bad input gets an error naming the problem, and the connection goes on.
    await publisher.send("{not json")
    error = await next_of(publisher, "Error")
    assert error["code"] == "bad_request", error
    await publisher.send(json.dumps({"type": "Teleport"}))
    error = await next_of(publisher, "Error")
    assert error["code"] == "unknown_type" and "Teleport" in error["message"], error
    await publisher.send(json.dumps({"type": "Publish", "channel": "py:ticks", "data": {"n": 51}}))
    assert (await next_of(subscriber, "Publication"))["seq"] == 51

    # Acknowledged publishing: `Published` with the id; a repeated key is published once.
    await publisher.send(json.dumps(
        {"type": "Publish", "channel": "py:ticks", "data": {"n": 52}, "id": 1, "key": "py-52"}))
    published = await next_of(publisher, "Published")
    assert (published["id"], published["seq"], published["duplicate"]) == (1, 52, False), published
    await publisher.send(json.dumps(
        {"type": "Publish", "channel": "py:ticks", "data": {"n": 52}, "id": 2, "key": "py-52"}))
    published = await next_of(publisher, "Published")
    assert (published["id"], published["seq"], published["duplicate"]) == (2, 52, True), published
    await publisher.send(json.dumps({"type": "Publish", "channel": "", "data": 1, "id": 3}))
    error = await next_of(publisher, "Error")
    assert (error["code"], error["id"]) == ("invalid_channel", 3), error
    await publisher.send(json.dumps({"type": "Publish", "channel": "py:ticks", "data": {"n": 53}, "id": 4}))
    assert (await next_of(publisher, "Published"))["seq"] == 53
    # The subscriber got 52 once, then 53.
    assert [(await next_of(subscriber, "Publication"))["seq"] for _ in range(2)] == [52, 53]

    # Rewind: the last two publications at once, then live ones.
    fresh = await websockets.connect(URL)
    await next_of(fresh, "Connected")
    await fresh.send(json.dumps({"type": "Subscribe", "channels": ["py:ticks"], "rewind": 2}))
    position = (await next_of(fresh, "Subscribed"))["positions"]["py:ticks"]
    assert position["replay_from"] == 52, position
    await publisher.send(json.dumps({"type": "Publish", "channel": "py:ticks", "data": {"n": 54}}))
    rewound = [(await next_of(fresh, "Publication"))["seq"] for _ in range(3)]
    assert rewound == [52, 53, 54], rewound

    # The standalone hub has no application to answer requests.
    await publisher.send(json.dumps({"type": "Request", "id": 5, "method": "orders.place", "data": {}}))
    error = await next_of(publisher, "Error")
    assert (error["code"], error["id"]) == ("unsupported", 5), error

    # Acknowledgements in runs: every id answered once, at its own seq, whatever the counts.
    for n in range(20):
        await publisher.send(json.dumps({"type": "Publish", "channel": "py:ranged", "data": n,
                                         "id": 100 + n, "key": f"py-r{n}", "ack_range": True}))
    answered = []
    while len(answered) < 20:
        published = await next_of(publisher, "Published")
        count = published.get("count", 1)
        answered += [(published["id"] + i, published["seq"] + i) for i in range(count)]
    assert answered == [(100 + n, 1 + n) for n in range(20)], answered

    for ws in (subscriber, publisher, late, fresh):
        await ws.close()
    print("python websockets client: subscribe, publish, recovery, errors, acknowledgements, "
          "idempotency keys, acknowledgement runs, rewind and requests OK")


asyncio.run(main())
