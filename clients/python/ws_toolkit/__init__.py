"""A resilient asyncio client for the ws-toolkit hub (the JSON protocol of docs/PROTOCOL.md).

    async with Client("ws://127.0.0.1:8080") as client:
        seq = await client.publish("prices:SOL-USDC", {"price": 187.42})
        async for publication in client.subscribe("prices:SOL-USDC"):
            print(publication.channel, publication.seq, publication.data)

The client reconnects with jittered exponential backoff, resubscribes every channel with
`since` (the last `seq` it delivered), so that nothing is missed or delivered twice while the
hub's history reaches back, and reports what it cannot recover (`Unrecovered`, `Gap`) and
its connection state as events (`client.events()`).
"""

from .client import (
    Client,
    Connected,
    Disconnected,
    Event,
    Gap,
    HubError,
    Publication,
    Unrecovered,
)

__all__ = [
    "Client",
    "Connected",
    "Disconnected",
    "Event",
    "Gap",
    "HubError",
    "Publication",
    "Unrecovered",
]
