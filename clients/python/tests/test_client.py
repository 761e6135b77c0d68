"""The Python client against the hub binary: acknowledged publishing, subscriptions, a cut
connection recovered without loss or duplicates, and a hub restart reported as
`Unrecovered` with the new epoch delivered from its start."""

import asyncio

import pytest

from ws_toolkit import Client, Connected, Disconnected, HubError, Publication, Unrecovered

WAIT = 10


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def take(iterator, count):
    return [await asyncio.wait_for(iterator.__anext__(), WAIT) for _ in range(count)]


async def next_event(client, kind):
    async def find():
        async for event in client.events():
            if isinstance(event, kind):
                return event
    return await asyncio.wait_for(find(), WAIT)


class Relay:
    """A TCP relay whose connections can be cut, to lose a connection without a restart."""

    def __init__(self, port):
        self.port = port
        self.writers = []

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, client_reader, client_writer):
        hub_reader, hub_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [client_writer, hub_writer]

        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_reader, hub_writer), pipe(hub_reader, client_writer))

    def cut(self):
        for writer in self.writers:
            writer.transport.abort()
        self.writers = []


def test_publish_is_acknowledged_and_subscribers_get_it(hub):
    async def main():
        async with Client(hub.url) as reader, Client(hub.url) as writer:
            prices = reader.subscribe("prices:SOL-USDC")
            first = asyncio.ensure_future(take(prices, 2))
            await asyncio.sleep(0.2)  # the Subscribe goes out when the iteration starts
            assert await writer.publish("prices:SOL-USDC", {"price": 187.42}) == 1
            assert await writer.publish("prices:SOL-USDC", {"price": 187.43}) == 2
            assert await first == [
                Publication("prices:SOL-USDC", 1, {"price": 187.42}),
                Publication("prices:SOL-USDC", 2, {"price": 187.43}),
            ]
            with pytest.raises(HubError) as refused:
                await writer.publish("", {"bad": "channel"})
            assert refused.value.code == "invalid_channel"

    run(main())


def test_a_cut_connection_resumes_with_nothing_missed_or_repeated(hub):
    async def main():
        relay = Relay(hub.port)
        url = await relay.start()
        async with Client(url, min_backoff=0.05) as reader, Client(hub.url) as writer:
            book = reader.subscribe("book")
            got = asyncio.ensure_future(take(book, 200))
            await asyncio.sleep(0.2)
            for n in range(200):
                await writer.publish("book", {"n": n})
                if n == 80:
                    relay.cut()
            publications = await got
            assert [p.seq for p in publications] == list(range(1, 201))
            assert [p.data["n"] for p in publications] == list(range(200))
            assert isinstance(await next_event(reader, Disconnected), Disconnected)
            assert (await next_event(reader, Connected)).reconnected

    run(main())


def test_a_hub_restart_is_reported_and_the_new_epoch_delivered(hub):
    async def main():
        async with Client(hub.url, min_backoff=0.05) as reader:
            trades = reader.subscribe("trades")
            got = asyncio.ensure_future(take(trades, 3))
            await asyncio.sleep(0.2)
            async with Client(hub.url) as writer:
                for n in range(3):
                    await writer.publish("trades", {"n": n})
            assert [p.seq for p in await got] == [1, 2, 3]

            hub.stop()
            hub.start()
            unrecovered = await next_event(reader, Unrecovered)
            assert unrecovered.channel == "trades" and unrecovered.seq == 0
            async with Client(hub.url) as writer:
                await writer.publish("trades", {"n": 100})
            [after] = await take(trades, 1)
            assert (after.seq, after.data) == (1, {"n": 100})

    run(main())
