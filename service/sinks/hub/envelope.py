"""The channel-envelope hub of contract §5: one WebSocket for every channel.

Frames are `{"channel": X, "payload": {...}}`; before a channel's first payload the client
subscribes to it (`{"channel": "subscription", "payload": {"action": "subscribe", ...}}`), and
after a fresh connection it subscribes again to every active channel before any payload.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from service.sinks.hub.base import BufferedHub, Lane, dumps, refused

log = logging.getLogger("service.hub")


class EnvelopeHub(BufferedHub):
    """Client of the §5 envelope hub at `uri`: one connection, one ordered lane."""

    # The connection while its writer waits on an empty lane: `write_now` may use it then.
    _idle_ws: ClientConnection | None = None
    _flush: asyncio.Handle | None = None

    def write_now(self, lane: Lane, frame: bytes) -> bool:
        """Frame `frame` on the idle connection at once; the frames of one loop turn leave in
        one socket write at the end of the turn.

        Through the buffer, a frame waits for the writer task to wake up: under a burst of new
        requests that held each `started` payload behind every other request's start-up work
        (bench burst), and it cost one system call per frame (8.7 % of the service's CPU in
        bench (a)). Same bytes, same order: `send_text` + `send_data` is what `ws.send` does."""
        ws = self._idle_ws  # the hub never sends fragmented messages: none can be in progress
        if ws is None or ws.paused or ws.protocol.state is not State.OPEN:
            return False
        try:
            ws.protocol.send_text(frame)
        except Exception:  # the writer's own send will find the connection broken
            return False
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._flush_now, ws)
        return True

    def _flush_now(self, ws: ClientConnection) -> None:
        self._flush = None
        try:
            ws.send_data()
        except Exception:  # the writer's next send (or the reader) sees the broken connection
            log.debug("hub: direct write failed", exc_info=True)

    def subscribe_frame(self, channel: str) -> bytes:
        return dumps(
            {"channel": "subscription", "payload": {"action": "subscribe", "channel": channel}}
        )

    def unsubscribe_frame(self, channel: str) -> bytes:
        return dumps(
            {"channel": "subscription", "payload": {"action": "unsubscribe", "channel": channel}}
        )

    def payload_frame(self, channel: str, payload: dict[str, Any]) -> bytes:
        return dumps({"channel": channel, "payload": payload})

    def on_start(self) -> None:
        # The shared lane connects at start, before any request needs it.
        if None not in self._lanes:
            self._lanes[None] = Lane(None)
            self._start_lane(self._lanes[None])

    async def serve_lane(self, lane: Lane) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            ws = await connect(
                self._uri,
                additional_headers=headers,
                open_timeout=10,
                ping_interval=20,
                max_queue=64,
                write_limit=2**16,
            )
        except InvalidStatus as exc:
            raise (refused(exc) or exc) from exc
        async with ws:
            self.connection_opened(lane)
            log.info("hub connected: %s", self._uri)
            # A fresh connection knows nothing: subscribe every active channel first.
            for channel in self.active_channels():
                await ws.send(self.subscribe_frame(channel), text=True)
            await self._write(ws, lane)

    async def _write(self, ws: ClientConnection, lane: Lane) -> None:
        reader = asyncio.create_task(_discard_incoming(ws, lane), name="hub-reader")
        try:
            while True:
                if not lane.frames:
                    self.lane_emptied()
                    if reader.done():  # the connection closed (the reader wakes us when it does)
                        reader.result()
                        raise ConnectionClosed(None, None)
                    self._idle_ws = ws
                    lane.wakeup.clear()
                    await lane.wakeup.wait()
                    continue
                self._idle_ws = None  # queued frames go first, in order
                owner, frame = lane.frames[0]
                await ws.send(frame, text=True)
                # Only a frame that went out leaves the buffer: a failed send is retried first.
                self._take(lane)
                if owner is not None:
                    self.written(owner)
        finally:
            self._idle_ws = None
            reader.cancel()


async def _discard_incoming(ws: ClientConnection, lane: Lane) -> None:
    # The hub echoes channel traffic to subscribers, us included; read it so it never backs up.
    try:
        async for _ in ws:
            pass
    finally:
        lane.wakeup.set()
