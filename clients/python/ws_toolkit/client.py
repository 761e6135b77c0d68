"""The client: one connection to the hub at a time, rebuilt after every loss."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union

import websockets

log = logging.getLogger("ws_toolkit")


@dataclass(frozen=True)
class Publication:
    """A publication of a subscribed channel, delivered once, in `seq` order."""

    channel: str
    seq: int
    data: Any


@dataclass(frozen=True)
class Connected:
    """A connection is up, every subscription in effect again."""

    connection_id: int
    reconnected: bool


@dataclass(frozen=True)
class Disconnected:
    """The connection was lost; the client reconnects (unless closed or out of attempts)."""

    reason: str


@dataclass(frozen=True)
class Unrecovered:
    """The hub could not replay what was missed on `channel` (its history no longer reaches
    back, or it restarted: a new `epoch`). Delivery goes on after `seq`; take a fresh
    snapshot."""

    channel: str
    epoch: str
    seq: int


@dataclass(frozen=True)
class Gap:
    """Publications `expected` to `received - 1` of `channel` did not arrive (the hub dropped
    them for a slow reader under its `drop_oldest` policy). Delivery goes on with `received`."""

    channel: str
    expected: int
    received: int


@dataclass(frozen=True)
class ServerError:
    """The hub answered a frame with an `Error` that belongs to no publication."""

    code: str
    message: str


Event = Union[Connected, Disconnected, Unrecovered, Gap, ServerError]


class HubError(Exception):
    """The hub refused a publication (`code` is one of docs/PROTOCOL.md's error codes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class _Position:
    """Where a channel's delivery stands: its epoch (once known) and the last `seq` given."""

    epoch: Optional[str] = None
    seq: int = 0
    rewind: Optional[int] = None


@dataclass
class _Pending:
    channel: str
    data: str
    key: str
    done: "asyncio.Future[int]" = field(repr=False)


_END = object()


class Client:
    """A resilient client of the hub. Use as `async with Client(url) as client:`.

    `queue_size` bounds each subscription's queue: when the application does not read, the
    client stops reading the socket and the hub's slow-consumer policy applies. The events
    queue keeps the latest `queue_size` events; older ones are dropped when nobody reads
    them (counted in `events_dropped`).
    """

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str] = None,
        queue_size: int = 10_000,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        connect_timeout: float = 10.0,
        max_attempts: Optional[int] = None,
        compression: bool = True,
    ) -> None:
        self.url = url
        self.state = "idle"
        self.events_dropped = 0
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._queue_size = queue_size
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._connect_timeout = connect_timeout
        self._max_attempts = max_attempts
        self._compression = "deflate" if compression else None
        self._positions: Dict[str, _Position] = {}
        self._queues: Dict[str, List["asyncio.Queue[Any]"]] = {}
        self._events: "asyncio.Queue[Event]" = asyncio.Queue(maxsize=queue_size)
        self._pending: Dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._key_prefix = uuid.uuid4().hex[:16]
        self._ws: Optional[Any] = None
        self._task: Optional["asyncio.Task[None]"] = None
        self._first: Optional["asyncio.Future[None]"] = None
        self._closed = False
        self._ever_connected = False

    async def __aenter__(self) -> "Client":
        await self.start()
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    async def start(self) -> None:
        """Connects; returns once the first connection is up. Raises `ConnectionError` if
        none could be made within `connect_timeout` (retrying with backoff meanwhile)."""
        self._first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run())
        await self._first

    async def close(self) -> None:
        """Closes the connection, fails unacknowledged publications with `ConnectionError`,
        and ends every subscription's iteration (after what it already holds, less one if
        its queue is full)."""
        if self._closed:
            return
        self._closed = True
        self.state = "closed"
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - ending anyway
                pass
        self._end("client closed")

    def subscribe(self, *channels: str, rewind: Optional[int] = None) -> AsyncIterator[Publication]:
        """The publications of `channels`, each once and in order, across reconnects.

        Registered at once (nothing published after this call is missed); the `Subscribe`
        is sent when the iteration starts. `rewind`: begin with the latest N publications the
        hub's history holds."""
        queue: "asyncio.Queue[Any]" = asyncio.Queue(maxsize=self._queue_size)
        new = []
        for channel in channels:
            self._queues.setdefault(channel, []).append(queue)
            if channel not in self._positions:
                self._positions[channel] = _Position(rewind=rewind)
                new.append(channel)

        async def publications() -> AsyncIterator[Publication]:
            if new and self._ws is not None:
                await self._send_subscribe(self._ws, new)
            while True:
                item = await queue.get()
                if item is _END:
                    return
                yield item

        return publications()

    async def publish(self, channel: str, data: Any, *, key: Optional[str] = None) -> int:
        """Publishes `data` (any JSON value) and returns its `seq` once the hub has it.

        Sent again after a reconnect until acknowledged, with an idempotency key (`key`, or
        one the client makes), so that it is published once. Raises `HubError` if refused."""
        if self._closed:
            raise ConnectionError("client closed")
        id_ = next(self._ids)
        pending = _Pending(
            channel=channel,
            data=json.dumps(data, separators=(",", ":")),
            key=key or f"{self._key_prefix}:{id_}",
            done=asyncio.get_running_loop().create_future(),
        )
        self._pending[id_] = pending
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(self._publish_frame(id_, pending))
            except websockets.ConnectionClosed:
                pass  # sent again after the reconnect
        return await pending.done

    async def events(self) -> AsyncIterator[Event]:
        """Connections, disconnections, unrecovered channels, gaps and server errors, in
        order."""
        while True:
            yield await self._events.get()

    # The connection loop.

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        first_deadline = loop.time() + self._connect_timeout
        while not self._closed:
            reason = "connection ended"
            try:
                async with websockets.connect(
                    self.url,
                    additional_headers=self._headers,
                    open_timeout=self._connect_timeout,
                    compression=self._compression,
                    max_size=16 * 1024 * 1024,
                ) as ws:
                    await self._serve(ws)
                    attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - every failure means reconnect
                reason = f"{type(error).__name__}: {error}"
            self._ws = None
            if self._closed:
                return
            if not self._ever_connected and loop.time() > first_deadline:
                # No first connection within connect_timeout: start() fails.
                self.state = "failed"
                if self._first is not None and not self._first.done():
                    self._first.set_exception(ConnectionError(reason))
                return
            self.state = "reconnecting"
            if self._ever_connected:
                self._emit(Disconnected(reason))
            attempt += 1
            if self._max_attempts is not None and attempt > self._max_attempts:
                self.state = "failed"
                if self._first is not None and not self._first.done():
                    self._first.set_exception(ConnectionError(reason))
                self._end(f"gave up: {reason}")
                return
            delay = min(self._max_backoff, self._min_backoff * 2 ** (attempt - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _serve(self, ws: Any) -> None:
        hello = json.loads(await asyncio.wait_for(ws.recv(), self._connect_timeout))
        if hello.get("type") != "Connected":
            raise ConnectionError(f"expected Connected first, got {hello.get('type')!r}")
        if self._positions:
            await self._send_subscribe(ws, list(self._positions))
        for id_, pending in sorted(self._pending.items()):
            await ws.send(self._publish_frame(id_, pending))
        self._ws = ws
        self.state = "connected"
        self._emit(Connected(int(hello.get("connection_id", 0)), self._ever_connected))
        self._ever_connected = True
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        async for raw in ws:
            await self._on_frame(ws, raw)

    async def _send_subscribe(self, ws: Any, channels: List[str]) -> None:
        frame: Dict[str, Any] = {"type": "Subscribe", "channels": channels}
        since = {
            c: {"epoch": p.epoch, "seq": p.seq}
            for c in channels
            if (p := self._positions[c]).epoch is not None
        }
        if since:
            frame["since"] = since
        rewinds = {p.rewind for c in channels if (p := self._positions[c]).epoch is None and p.rewind}
        if rewinds:
            frame["rewind"] = max(rewinds)
        await ws.send(json.dumps(frame))

    @staticmethod
    def _publish_frame(id_: int, pending: _Pending) -> str:
        return (
            '{"type":"Publish","channel":%s,"data":%s,"id":%d,"key":%s}'
            % (json.dumps(pending.channel), pending.data, id_, json.dumps(pending.key))
        )

    async def _on_frame(self, ws: Any, raw: Union[str, bytes]) -> None:
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "Publication":
            await self._on_publication(message["channel"], int(message["seq"]), message.get("data"))
        elif kind == "Subscribed":
            for channel, position in (message.get("positions") or {}).items():
                self._on_position(channel, position)
        elif kind == "Published":
            first, seq = int(message["id"]), int(message["seq"])
            for offset in range(int(message.get("count", 1))):
                pending = self._pending.pop(first + offset, None)
                if pending is not None and not pending.done.done():
                    pending.done.set_result(seq + offset)
        elif kind == "Error":
            id_ = message.get("id")
            pending = self._pending.pop(int(id_), None) if id_ is not None else None
            error = HubError(str(message.get("code")), str(message.get("message")))
            if pending is not None and not pending.done.done():
                pending.done.set_exception(error)
            else:
                self._emit(ServerError(error.code, error.message))
        elif kind == "Ping":
            await ws.send('{"type":"Pong"}')

    def _on_position(self, channel: str, position: Dict[str, Any]) -> None:
        mine = self._positions.get(channel)
        if mine is None:
            return
        epoch = str(position.get("epoch"))
        latest = int(position.get("seq", 0))
        replay_from = position.get("replay_from")
        after = int(replay_from) - 1 if replay_from is not None else latest
        if mine.epoch is None:
            mine.epoch, mine.seq = epoch, after
        elif position.get("recovered") is False:
            self._emit(Unrecovered(channel, epoch, after))
            mine.epoch, mine.seq = epoch, after

    async def _on_publication(self, channel: str, seq: int, data: Any) -> None:
        mine = self._positions.get(channel)
        if mine is None:
            return
        if seq <= mine.seq:
            return  # a copy of what was delivered (a replay overlapping live publications)
        if seq > mine.seq + 1 and mine.epoch is not None:
            self._emit(Gap(channel, mine.seq + 1, seq))
        mine.seq = seq
        publication = Publication(channel, seq, data)
        for queue in self._queues.get(channel, []):
            await queue.put(publication)

    def _emit(self, event: Event) -> None:
        if self._events.full():
            self._events.get_nowait()
            self.events_dropped += 1
        self._events.put_nowait(event)

    def _end(self, why: str) -> None:
        for pending in self._pending.values():
            if not pending.done.done():
                pending.done.set_exception(ConnectionError(why))
        self._pending.clear()
        for queues in self._queues.values():
            for queue in queues:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(_END)
