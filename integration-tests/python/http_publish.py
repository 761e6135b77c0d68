"""The hub's HTTP publish API from Python's standard library (urllib): a single publication
and a batch are answered with their seqs and reach a WebSocket subscriber; a bad channel is
refused with 400 and the protocol's error code; on the public port, a publication with the
API key is taken and one without it refused with 401. Run by scripts/python-client-test.sh.
    python http_publish.py ws://127.0.0.1:PORT http://127.0.0.1:ADMIN_PORT API_KEY
"""

import asyncio
import json
import sys
import urllib.error
import urllib.request

import websockets

URL, ADMIN, API_KEY = sys.argv[1], sys.argv[2], sys.argv[3]
PUBLIC = "http://" + URL.removeprefix("ws://")


def post(path, body, base=ADMIN, headers=None):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def main():
    async with websockets.connect(URL) as ws:
        assert json.loads(await ws.recv())["type"] == "Connected"
        await ws.send(json.dumps({"type": "Subscribe", "channels": ["http:py"]}))
        assert json.loads(await ws.recv())["type"] == "Subscribed"

        loop = asyncio.get_running_loop()
        status, answer = await loop.run_in_executor(None, post, "/publish", {"channel": "http:py", "data": {"price": 187.42}})
        assert (status, answer) == (200, {"seq": 1}), (status, answer)
        batch = [{"channel": "http:py", "data": n} for n in range(3)]
        status, answer = await loop.run_in_executor(None, post, "/publish", batch)
        assert (status, answer) == (200, [{"seq": 2}, {"seq": 3}, {"seq": 4}]), (status, answer)
        status, answer = await loop.run_in_executor(None, post, "/publish", {"channel": "", "data": 1})
        assert status == 400 and answer["error"]["code"] == "invalid_channel", (status, answer)
        item = {"channel": "http:py", "data": "public"}
        status, answer = await loop.run_in_executor(None, post, "/publish", item, PUBLIC)
        assert status == 401 and answer["error"]["code"] == "unauthorized", (status, answer)
        key = {"Authorization": "apikey " + API_KEY}
        status, answer = await loop.run_in_executor(None, post, "/publish", item, PUBLIC, key)
        assert (status, answer) == (200, {"seq": 5}), (status, answer)

        got = []
        while len(got) < 5:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message["type"] == "Publication":
                got.append((message["seq"], message["data"]))
        assert got == [(1, {"price": 187.42}), (2, 0), (3, 1), (4, 2), (5, "public")], got
    print("python http publish: ok")


asyncio.run(main())
