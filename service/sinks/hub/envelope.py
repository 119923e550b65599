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

from service.sinks.hub.base import BufferedHub, Lane, dumps, refused

log = logging.getLogger("service.hub")


class EnvelopeHub(BufferedHub):
    """Client of the §5 envelope hub at `uri`: one connection, one ordered lane."""

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
                    lane.wakeup.clear()
                    await lane.wakeup.wait()
                    continue
                owner, frame = lane.frames[0]
                await ws.send(frame, text=True)
                # Only a frame that went out leaves the buffer: a failed send is retried first.
                self._take(lane)
                if owner is not None:
                    self.written(owner)
        finally:
            reader.cancel()


async def _discard_incoming(ws: ClientConnection, lane: Lane) -> None:
    # The hub echoes channel traffic to subscribers, us included; read it so it never backs up.
    try:
        async for _ in ws:
            pass
    finally:
        lane.wakeup.set()
