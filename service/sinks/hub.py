"""WebSocket hub client: one long-lived connection shared by every request.

`send` never blocks the caller (the OpenAI stream): frames go into one bounded, ordered buffer
that a writer task drains. When the hub is unreachable the writer reconnects with backoff,
resubscribes the active channels, and delivers what was buffered, in order. If the buffer
overflows, the oldest frames are dropped and their channels are marked lossy, which the
request reports as `websocket_unavailable`.

The wire format is a seam (`HubProtocol`): this module speaks the channel-envelope protocol of
contract §5; another hub (nginx + nchan, one publisher socket per channel) is one new class.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

log = logging.getLogger("service.hub")


class Hub(Protocol):
    """What the streamer needs from a hub; `WebSocketHub` is the implementation."""

    def subscribe(self, channel: str) -> None: ...

    def send(self, channel: str, payload: dict[str, Any]) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    async def drain(self, channel: str, timeout: float) -> bool: ...


class HubProtocol(Protocol):
    """How subscriptions and payloads are written as frames for one kind of hub."""

    def subscribe_frame(self, channel: str) -> str | None: ...

    def unsubscribe_frame(self, channel: str) -> str | None: ...

    def payload_frame(self, channel: str, payload: dict[str, Any]) -> str: ...


class EnvelopeProtocol:
    """Contract §5: `{"channel": ..., "payload": ...}` frames; subscriptions on "subscription"."""

    def subscribe_frame(self, channel: str) -> str:
        return _dumps(
            {"channel": "subscription", "payload": {"action": "subscribe", "channel": channel}}
        )

    def unsubscribe_frame(self, channel: str) -> str:
        return _dumps(
            {"channel": "subscription", "payload": {"action": "unsubscribe", "channel": channel}}
        )

    def payload_frame(self, channel: str, payload: dict[str, Any]) -> str:
        return _dumps({"channel": channel, "payload": payload})


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class WebSocketHub:
    """Client of the hub at `uri`: ordered, buffered, reconnecting; see the module docstring."""

    def __init__(
        self,
        uri: str,
        *,
        token: str | None = None,
        buffer_size: int = 20_000,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
        protocol: HubProtocol | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._uri = uri
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._buffer_size = buffer_size
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._protocol: HubProtocol = protocol or EnvelopeProtocol()
        self._on_reconnect = on_reconnect

        self._frames: deque[tuple[str | None, str]] = deque()
        self._pending: Counter[str] = Counter()
        self._lossy: set[str] = set()
        self._active: Counter[str] = Counter()
        self._drained: dict[str, asyncio.Event] = {}
        self._wakeup = asyncio.Event()
        self._emptied = asyncio.Event()
        self._connected = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.reconnects = 0

    # -- the streamer's side: never blocks -------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def queue_depth(self) -> int:
        return len(self._frames)

    def subscribe(self, channel: str) -> None:
        self._active[channel] += 1
        self._lossy.discard(channel)
        if self._active[channel] == 1:
            frame = self._protocol.subscribe_frame(channel)
            if frame is not None:
                self._push(None, frame)

    def unsubscribe(self, channel: str) -> None:
        self._active[channel] -= 1
        if self._active[channel] <= 0:
            del self._active[channel]
            frame = self._protocol.unsubscribe_frame(channel)
            if frame is not None:
                self._push(None, frame)

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        self._pending[channel] += 1
        self._push(channel, self._protocol.payload_frame(channel, payload))

    async def drain(self, channel: str, timeout: float) -> bool:
        """Wait until every frame of `channel` was written to the hub; False if some never were."""
        if self._pending[channel] > 0:
            event = self._drained.setdefault(channel, asyncio.Event())
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                return False
        if self._pending[channel] <= 0:
            del self._pending[channel]
        return channel not in self._lossy and self._pending[channel] <= 0

    def _push(self, channel: str | None, frame: str) -> None:
        if len(self._frames) >= self._buffer_size:
            dropped_channel, _ = self._frames.popleft()
            if dropped_channel is not None:
                self._lossy.add(dropped_channel)
                self._written(dropped_channel)
        self._frames.append((channel, frame))
        self._wakeup.set()

    def _written(self, channel: str) -> None:
        self._pending[channel] -= 1
        if self._pending[channel] <= 0:
            event = self._drained.pop(channel, None)
            if event is not None:
                event.set()

    # -- lifecycle and the writer task -----------------------------------------------------

    async def start(self, connect_timeout: float = 0.0) -> None:
        """Start the writer; optionally wait up to `connect_timeout` for the first connection."""
        if self._writer is None:
            self._closing = False
            self._writer = asyncio.create_task(self._run(), name="hub-writer")
        if connect_timeout > 0:
            try:
                async with asyncio.timeout(connect_timeout):
                    await self._connected.wait()
            except TimeoutError:
                log.warning("hub %s not reachable yet; buffering until it is", self._uri)

    async def close(self, flush_timeout: float = 2.0) -> None:
        """Deliver what is buffered (up to `flush_timeout`), then close the connection."""
        if self._writer is None:
            return
        if self._frames and self.connected:
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    await self._emptied.wait()
        self._closing = True
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

    async def _run(self) -> None:
        delay = self._reconnect_min
        first = True
        while not self._closing:
            try:
                async with connect(
                    self._uri,
                    additional_headers=self._headers,
                    open_timeout=10,
                    ping_interval=20,
                    max_queue=64,
                    write_limit=2**16,
                ) as ws:
                    if not first:
                        self.reconnects += 1
                        if self._on_reconnect is not None:
                            self._on_reconnect()
                    first = False
                    delay = self._reconnect_min
                    log.info("hub connected: %s", self._uri)
                    self._connected.set()
                    await self._serve(ws)
            except asyncio.CancelledError:
                raise
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                log.warning("hub connection to %s lost or refused: %s", self._uri, _describe(exc))
            finally:
                self._connected.clear()
            if self._closing:
                break
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self._reconnect_max)

    async def _serve(self, ws: ClientConnection) -> None:
        # A fresh connection knows nothing: subscribe every active channel before any payload.
        for channel in list(self._active):
            frame = self._protocol.subscribe_frame(channel)
            if frame is not None:
                await ws.send(frame)
        reader = asyncio.create_task(self._discard_incoming(ws), name="hub-reader")
        try:
            while True:
                if not self._frames:
                    self._emptied.set()
                    self._wakeup.clear()
                    waiter = asyncio.ensure_future(self._wakeup.wait())
                    done, _ = await asyncio.wait(
                        {waiter, reader}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reader in done:
                        waiter.cancel()
                        reader.result()
                        raise ConnectionClosed(None, None)
                    continue
                owner, frame = self._frames[0]
                await ws.send(frame)
                # Only a frame that went out leaves the buffer: a failed send is retried first.
                self._frames.popleft()
                if owner is not None:
                    self._written(owner)
        finally:
            reader.cancel()

    @staticmethod
    async def _discard_incoming(ws: ClientConnection) -> None:
        # The hub echoes channel traffic to subscribers, us included; read it so it never backs up.
        async for _ in ws:
            pass


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
