"""The nginx + nchan hub of contract §9: each payload object published to `<uri>/<channel>`.

No envelope and no subscription frames: the channel is in the URL. Every channel has its own
ordered lane, so seq order holds per channel while channels publish concurrently:

- `ws://…` (`NchanWebSocketHub`): one publisher WebSocket per active channel, opened at the
  channel's first payload and closed once the request finished and nchan acknowledged every
  message (nchan answers each published message on the socket). A message leaves the buffer
  on its acknowledgement; after a lost connection the unacknowledged ones are sent again.
- `http://…` (`NchanHttpHub`): `POST` with `Content-Type: application/json` over a shared
  keep-alive connection pool (`http1.Http1Pool`, a minimal HTTP/1.1 client: httpx2 cost ~8x
  the CPU per POST); a message leaves the buffer on nchan's 2xx answer.

401/403 (wrong or missing token) drops the channel's buffered payloads with one clear log line
(at most every few seconds); the request completes with `hub_delivered: false`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

import httpx2
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.sinks.hub.base import (
    BufferedHub,
    HubRefused,
    HubUnavailable,
    Lane,
    dumps,
    refused,
)
from service.sinks.hub.http1 import Http1Pool

log = logging.getLogger("service.hub")

# Concurrent POSTs (and keep-alive connections) of the HTTP publisher.
HTTP_POOL = 32
# POSTs of one channel written at once (pipelined) on one connection, answered in order.
HTTP_PIPELINE = 16
# Frames of one channel written at once on its publisher WebSocket.
WS_BATCH = 64


class _NchanHub(BufferedHub):
    """What both nchan publishers share: a lane per channel, the bare payload object."""

    def lane_key(self, channel: str | None) -> str | None:
        return channel

    def payload_frame(self, channel: str, payload: dict[str, Any]) -> bytes:
        return dumps(payload)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def wait_reachable(self) -> None:
        # No channel, no connection: a TCP connect to the publisher says nginx is there.
        url = httpx2.URL(self._uri)
        port = url.port or (443 if url.scheme in ("https", "wss") else 80)
        while True:
            try:
                _, writer = await asyncio.open_connection(url.host, port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            self._reachable.set()
            return


class _CoalescingConnection(ClientConnection):
    """Writes what the protocol has to send in one `transport.write`, not one per frame:
    a batch of small frames costs one syscall (websockets writes each frame on its own)."""

    def send_data(self) -> None:
        data = self.protocol.data_to_send()
        if len(data) > 1 and all(data):
            self.transport.write(b"".join(data))
            return
        for chunk in data:
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():  # half-close, as websockets does
                with contextlib.suppress(Exception):
                    self.transport.write_eof()
            else:
                self.transport.close()


class NchanWebSocketHub(_NchanHub):
    """nchan's WebSocket publisher: one socket per active channel."""

    async def serve_lane(self, lane: Lane) -> None:
        assert lane.key is not None
        try:
            ws = await connect(
                f"{self._uri}/{lane.key}",
                additional_headers=self._headers(),
                open_timeout=10,
                ping_interval=20,
                max_queue=None,
                write_limit=2**16,
                compression=None,
                create_connection=_CoalescingConnection,
            )
        except InvalidStatus as exc:
            raise (refused(exc) or exc) from exc
        async with ws:
            # What an earlier connection sent without an ack is sent again: nginx may have
            # died before publishing it (at least once; subscribers can tell repeats by seq).
            lane.sent = lane.ghost_acks = 0
            self.connection_opened(lane)
            acks = asyncio.create_task(self._acknowledged(ws, lane), name="hub-acks")
            try:
                await self._write(ws, lane, acks)
            finally:
                acks.cancel()

    async def _write(self, ws: ClientConnection, lane: Lane, acks: asyncio.Task[None]) -> None:
        while True:
            if lane.sent >= len(lane.frames):
                self.lane_emptied()
                if self.lane_done(lane):
                    return
                if acks.done():  # the connection closed (the reader wakes us when it does)
                    acks.result()
                    raise ConnectionClosed(None, None)
                lane.wakeup.clear()
                await lane.wakeup.wait()
                continue
            # Every queued frame at once: one write (one syscall) for all of them.
            batch = list(itertools.islice(lane.frames, lane.sent, lane.sent + WS_BATCH))
            async with ws.send_context():
                for _, frame in batch:
                    ws.protocol.send_text(frame)
            lane.sent += len(batch)

    async def _acknowledged(self, ws: ClientConnection, lane: Lane) -> None:
        assert lane.key is not None
        # nchan answers every published message with the channel's info, in order.
        try:
            while True:
                await ws.recv(decode=False)  # the ack's text is not needed: skip decoding it
                self.acknowledged(lane)
        finally:
            lane.wakeup.set()


class NchanHttpHub(_NchanHub):
    """nchan's HTTP publisher: `POST <uri>/<channel>` over a small keep-alive pool."""

    _pool: Http1Pool | None = None

    def _http(self) -> Http1Pool:
        if self._pool is None:
            headers = {**self._headers(), "Content-Type": "application/json"}
            self._pool = Http1Pool(
                self._uri, size=HTTP_POOL, timeout=10.0, connect_timeout=5.0, headers=headers
            )
        return self._pool

    async def serve_lane(self, lane: Lane) -> None:
        assert lane.key is not None
        pool = self._http()
        target = pool.path_for(lane.key)
        opened = False
        while await self.next_frame(lane):
            # What the lane has queued goes in one write, pipelined; the buffer may drop the
            # oldest frames meanwhile: `sent`/`ghost_acks` tell which answers are for them.
            bodies = [frame for _, frame in itertools.islice(lane.frames, HTTP_PIPELINE)]
            lane.sent, lane.ghost_acks = len(bodies), 0
            statuses = await pool.post_many(target, bodies)
            if not opened:  # nginx answered: it is there
                opened = True
                self.connection_opened(lane)
            for status in statuses:
                if lane.ghost_acks > 0:
                    lane.ghost_acks -= 1  # its frame left the buffer already
                    continue
                if status in (401, 403):
                    raise HubRefused(f"HTTP {status}")
                if status >= 500:
                    # Sent again, and the pipelined ones after it too (at least once).
                    raise HubUnavailable(f"HTTP {status}")
                lane.sent -= 1
                owner, _ = self._take(lane)
                if owner is None:
                    continue
                if status >= 400:
                    # Refused for this message alone (e.g. too large): retrying cannot help.
                    log.warning(
                        "hub %s refused a payload of channel %s: HTTP %d", self._uri, owner, status
                    )
                    self._lost(owner)
                else:
                    self.written(owner)
            lane.sent = lane.ghost_acks = 0

    async def on_close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
