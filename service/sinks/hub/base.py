"""What every hub client shares, whatever the wire protocol: the ordered, bounded buffer.

`send` never blocks the caller (the OpenAI stream): payloads are serialized once and queued
on a *lane* (one writer task with its own connection). The envelope protocol has one lane for
every channel; nchan has one lane per channel. A writer that loses its connection reconnects
with backoff and goes on with what is buffered, in order; any exception, expected or not, is
logged and followed by a reconnect, so no writer dies for good.

Memory is bounded in bytes: every queued frame counts its UTF-8 size, and while the buffer
holds more than `buffer_bytes` (or `buffer_size` frames) the oldest frames of the lane being
written to are dropped and their channels marked lossy: the request then reports
`websocket_unavailable` (contract §9). Per-channel bookkeeping lives only while a channel is
subscribed or has frames in the buffer; a finished channel that lost frames is remembered by
name (a bounded set) until its request asks `drain`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx2
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

log = logging.getLogger("service.hub")

PayloadMode = Literal["full", "compact"]

# Bytes counted per queued frame beyond its text (the deque slot, the tuple, the bytes header).
FRAME_OVERHEAD = 120
# Finished channels that lost frames, kept by name for a late `drain` (names only).
REMEMBER_LOSSY = 4096
# Connections in a row that a frame was sent on and died without it being taken.
POISON_STRIKES = 3
# A refused token is logged at most this often (seconds), not once per payload.
REFUSAL_LOG_EVERY = 10.0


class Hub(Protocol):
    """What the streamer needs from a hub; `hub_from_settings` builds one."""

    payload_mode: PayloadMode

    def subscribe(self, channel: str) -> None: ...

    def send(self, channel: str, payload: dict[str, Any]) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    async def drain(self, channel: str, timeout: float) -> bool: ...


class HubRefused(Exception):
    """The hub answered but refused us (bad or missing token): retrying the same frames
    cannot help, so they are dropped and their channels reported lossy."""


class HubUnavailable(Exception):
    """The hub answered with a server error: retry later."""


@dataclass(slots=True)
class _Channel:
    active: int = 0
    pending: int = 0
    lossy: bool = False
    drained: asyncio.Event | None = None


@dataclass(slots=True)
class Lane:
    """One writer task and the frames waiting for it, in order."""

    key: str | None
    frames: deque[tuple[str | None, bytes]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    connected: bool = False
    opened: bool = False
    opens: int = 0
    # Publishers with acknowledgements (nchan's WebSocket): the first `sent` frames were
    # written on the current connection and wait for their ack; `ghost_acks` acks are still
    # due for sent frames that the buffer dropped since.
    sent: int = 0
    ghost_acks: int = 0


def dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def refused(exc: InvalidStatus) -> HubRefused | None:
    """A handshake refused with 401/403 is a token problem, not an outage."""
    status = exc.response.status_code
    return HubRefused(f"HTTP {status}") if status in (401, 403) else None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class BufferedHub:
    """The buffer, the per-channel bookkeeping and the writers' supervision; subclasses say
    how frames look (`payload_frame`, `subscribe_frame`, …), which lane a channel uses
    (`lane_key`) and how a lane writes (`serve_lane`)."""

    def __init__(
        self,
        uri: str,
        *,
        token: str | None = None,
        buffer_size: int = 20_000,
        buffer_bytes: int = 64 * 2**20,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
        on_reconnect: Callable[[], None] | None = None,
        payload_mode: PayloadMode = "full",
    ) -> None:
        self._uri = uri.rstrip("/")
        self._token = token or None
        self._buffer_size = buffer_size
        self._buffer_bytes = buffer_bytes
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._on_reconnect = on_reconnect
        self.payload_mode: PayloadMode = payload_mode

        self._channels: dict[str, _Channel] = {}
        self._finished_lossy: OrderedDict[str, None] = OrderedDict()
        self._lanes: dict[str | None, Lane] = {}
        self._frames = 0
        self._bytes = 0
        self._emptied = asyncio.Event()
        self._reachable = asyncio.Event()
        self._started = False
        self._closing = False
        self._refusal_logged_at = -REFUSAL_LOG_EVERY
        self.reconnects = 0
        self.peak_bytes = 0
        self.dropped_frames = 0

    # -- what subclasses define ---------------------------------------------------------

    def lane_key(self, channel: str | None) -> str | None:
        """The lane a channel's frames go to (None: the shared lane)."""
        return None

    def subscribe_frame(self, channel: str) -> bytes | None:
        return None

    def unsubscribe_frame(self, channel: str) -> bytes | None:
        return None

    def payload_frame(self, channel: str, payload: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def write_now(self, lane: Lane, frame: bytes) -> bool:
        """Hand `frame` to the lane's connection at once, bypassing the buffer, when nothing of
        the lane is queued before it; False (the default): it is buffered."""
        return False

    async def serve_lane(self, lane: Lane) -> None:
        """Connect, write the lane's frames until it is finished (`lane_done`), then return;
        raise on a lost connection (the supervisor reconnects)."""
        raise NotImplementedError

    def lane_done(self, lane: Lane) -> bool:
        """True when a per-channel lane has nothing left to do and may close."""
        return lane.key is not None and not lane.frames and lane.key not in self._channels

    # -- the streamer's side: never blocks ----------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the hub is reachable (the last connection attempt succeeded)."""
        return self._reachable.is_set()

    @property
    def queue_depth(self) -> int:
        return self._frames

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def tracked_channels(self) -> int:
        """Channels with bookkeeping right now (subscribed or with frames buffered)."""
        return len(self._channels)

    def subscribe(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        state.active += 1
        self._finished_lossy.pop(channel, None)
        if state.active == 1:
            state.lossy = False
            frame = self.subscribe_frame(channel)
            if frame is not None:
                self._push(None, self.lane_key(channel), frame)

    def unsubscribe(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        state.active -= 1
        if state.active <= 0:
            state.active = 0
            frame = self.unsubscribe_frame(channel)
            if frame is not None:
                self._push(None, self.lane_key(channel), frame)
            self._forget_if_idle(channel, state)

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        state.pending += 1
        self._push(channel, self.lane_key(channel), self.payload_frame(channel, payload))

    async def drain(self, channel: str, timeout: float) -> bool:
        """Wait until every frame of `channel` reached the hub; False if some never will."""
        state = self._channels.get(channel)
        if state is not None and state.pending > 0:
            if state.drained is None:
                state.drained = asyncio.Event()
            event = state.drained
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                return False
            state = self._channels.get(channel)
        if state is None:
            lossy = channel in self._finished_lossy
            self._finished_lossy.pop(channel, None)
            return not lossy
        return not state.lossy and state.pending <= 0

    # -- the buffer ---------------------------------------------------------------------

    def _push(self, channel: str | None, key: str | None, frame: bytes) -> None:
        if len(frame) + FRAME_OVERHEAD > self._buffer_bytes:
            # Larger than the whole buffer: it alone is dropped, nothing else makes room.
            self.dropped_frames += 1
            if channel is not None:
                self._lost(channel)
            return
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = Lane(key)
            if self._started and not self._closing:
                self._start_lane(lane)
        if not lane.frames and self.write_now(lane, frame):
            if channel is not None:
                self.written(channel)
            return
        lane.frames.append((channel, frame))
        self._frames += 1
        self._bytes += len(frame) + FRAME_OVERHEAD
        while (
            self._bytes > self._buffer_bytes or self._frames > self._buffer_size
        ) and lane.frames:
            self._drop_oldest(lane)
        if self._bytes > self.peak_bytes:
            self.peak_bytes = self._bytes
        lane.wakeup.set()

    def _drop_oldest(self, lane: Lane) -> None:
        if lane.sent > 0:
            lane.sent -= 1
            lane.ghost_acks += 1
        owner, _ = self._take(lane)
        self.dropped_frames += 1
        if owner is not None:
            self._lost(owner)

    def _take(self, lane: Lane) -> tuple[str | None, bytes]:
        """Remove the lane's first frame from the buffer (written or dropped)."""
        owner, frame = lane.frames.popleft()
        self._frames -= 1
        self._bytes -= len(frame) + FRAME_OVERHEAD
        return owner, frame

    def _lost(self, channel: str) -> None:
        """A frame of `channel` will never reach the hub."""
        state = self._channels.get(channel)
        if state is not None:
            state.lossy = True
        self.written(channel)

    def written(self, channel: str) -> None:
        """A frame of `channel` reached the hub (or was given up: see `_lost`)."""
        state = self._channels.get(channel)
        if state is None:
            return
        state.pending -= 1
        if state.pending <= 0:
            state.pending = 0
            if state.drained is not None:
                state.drained.set()
                state.drained = None
            self._forget_if_idle(channel, state)

    def _forget_if_idle(self, channel: str, state: _Channel) -> None:
        if state.active > 0 or state.pending > 0:
            return
        del self._channels[channel]
        lane = self._lanes.get(self.lane_key(channel))
        if lane is not None:
            lane.wakeup.set()
        if state.lossy:
            self._finished_lossy[channel] = None
            while len(self._finished_lossy) > REMEMBER_LOSSY:
                self._finished_lossy.popitem(last=False)

    def drop_lane(self, lane: Lane) -> None:
        """Give up every frame of the lane (the hub refused us)."""
        while lane.frames:
            self._drop_oldest(lane)

    def acknowledged(self, lane: Lane) -> None:
        """The hub acknowledged the oldest frame sent on this lane's connection."""
        if lane.ghost_acks > 0:
            lane.ghost_acks -= 1
            return
        if lane.sent <= 0 or not lane.frames:
            return
        lane.sent -= 1
        owner, _ = self._take(lane)
        if owner is not None:
            self.written(owner)
        self.lane_emptied()

    def active_channels(self) -> list[str]:
        return [name for name, state in self._channels.items() if state.active > 0]

    def refused(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_EVERY:
            self._refusal_logged_at = now
            log.error(
                "hub %s refused the publisher (%s): check WEBSOCKET_TOKEN; payloads are "
                "dropped and requests end with hub_delivered=false",
                self._uri,
                exc,
            )

    # -- lifecycle and the writers ------------------------------------------------------

    async def start(self, connect_timeout: float = 0.0) -> None:
        """Start the writers; optionally wait up to `connect_timeout` for the hub."""
        if not self._started:
            self._started = True
            self._closing = False
            for lane in list(self._lanes.values()):
                self._start_lane(lane)
            self.on_start()
        if connect_timeout > 0:
            try:
                async with asyncio.timeout(connect_timeout):
                    await self.wait_reachable()
            except TimeoutError:
                log.warning("hub %s not reachable yet; buffering until it is", self._uri)

    def on_start(self) -> None:
        """Called once when started (the envelope client opens its lane here)."""

    async def wait_reachable(self) -> None:
        await self._reachable.wait()

    async def close(self, flush_timeout: float = 2.0) -> None:
        """Deliver what is buffered (up to `flush_timeout`), then close every connection."""
        if not self._started:
            return
        if self._frames and self._reachable.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    while self._frames and self._reachable.is_set():
                        self._emptied.clear()
                        await self._emptied.wait()
        self._closing = True
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for lane in self._lanes.values():
            lane.task = None
        await self.on_close()
        self._started = False

    async def on_close(self) -> None:
        """Release shared resources (the HTTP client's pool)."""

    def _start_lane(self, lane: Lane) -> None:
        name = "hub-writer" if lane.key is None else f"hub-writer:{lane.key}"
        lane.task = asyncio.create_task(self._supervise(lane), name=name)

    def lane_emptied(self) -> None:
        if not self._frames:
            self._emptied.set()

    async def _supervise(self, lane: Lane) -> None:
        delay = self._reconnect_min
        strikes = 0
        try:
            while not self._closing:
                head = lane.frames[0][1] if lane.frames else None
                opens = lane.opens
                try:
                    await self.serve_lane(lane)
                    if self.lane_done(lane):
                        return
                    delay = self._reconnect_min
                    continue
                except asyncio.CancelledError:
                    raise
                except HubRefused as exc:
                    self._reachable.set()
                    self.refused(exc)
                    self.drop_lane(lane)
                except Exception as exc:  # a writer must never die for good
                    self._reachable.clear()
                    if isinstance(exc, (OSError, TimeoutError)) or _is_expected(exc):
                        log.warning(
                            "hub connection to %s lost or refused: %s", self._uri, describe(exc)
                        )
                    else:
                        log.exception(
                            "hub writer for %s failed unexpectedly; reconnecting", self._uri
                        )
                finally:
                    lane.connected = False
                # A frame that the hub took down with it several connections in a row (e.g.
                # too large for it) is dropped, or the lane would retry it forever.
                stuck = lane.opens > opens and lane.frames and lane.frames[0][1] is head
                strikes = strikes + 1 if stuck else 0
                if strikes >= POISON_STRIKES:
                    owner = lane.frames[0][0]
                    log.warning(
                        "hub %s: dropping a payload of %s that it keeps refusing", self._uri, owner
                    )
                    self._drop_oldest(lane)
                    strikes = 0
                if self._closing or self.lane_done(lane):
                    return
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self._reconnect_max)
        finally:
            if self._lanes.get(lane.key) is lane and not lane.frames and lane.key is not None:
                del self._lanes[lane.key]
            self.lane_emptied()

    def connection_opened(self, lane: Lane) -> None:
        """A writer connected: count reconnects (not a lane's first connection)."""
        self._reachable.set()
        lane.connected = True
        lane.opens += 1
        first, lane.opened = not lane.opened, True
        if not first:
            self.reconnects += 1
            if self._on_reconnect is not None:
                self._on_reconnect()

    async def next_frame(self, lane: Lane) -> bool:
        """Wait until the lane has a frame (True) or is done (False)."""
        while not lane.frames:
            self.lane_emptied()
            if self.lane_done(lane):
                return False
            lane.wakeup.clear()
            await lane.wakeup.wait()
        return True


def _is_expected(exc: BaseException) -> bool:
    return isinstance(
        exc, (ConnectionClosed, InvalidHandshake, InvalidURI, httpx2.TransportError, HubUnavailable)
    )
