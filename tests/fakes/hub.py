"""A WebSocket hub on loopback that records everything the service sends (CONTRACT §5).

It also behaves like the real hub: a payload for channel X goes to every *other* connection
subscribed to X, so a browser or a terminal client can follow a channel. Run it alone as the
development hub for the demo::

    python -m tests.fakes.hub --port 4000 --print

Frames, both directions: ``{"channel": "subscription", "payload": {"action": "subscribe" |
"unsubscribe", "channel": X}}`` and ``{"channel": X, "payload": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TextIO

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = [
    "HubFrame",
    "PayloadPrinter",
    "RecordingHub",
    "SubscriptionEvent",
    "answer_of",
    "check_payload_sequence",
]

_POLL = 0.005  # seconds between checks in the wait helpers


@dataclass(frozen=True)
class HubFrame:
    """One decoded text frame from a client. ``channel`` is ``"subscription"`` for
    (un)subscribe requests; ``payload`` is whatever the frame carried there."""

    connection_id: int
    received_at: float
    channel: str
    payload: Any


@dataclass(frozen=True)
class SubscriptionEvent:
    """A client subscribed to or unsubscribed from ``channel``."""

    connection_id: int
    action: str
    channel: str
    at: float


class RecordingHub:
    """WebSocket hub that records every frame, for tests, the demo and the benchmark.

    Knobs: ``slow`` (seconds to wait after reading each frame: a slow hub that pushes back on
    the client through TCP), ``require_token`` (handshakes without ``Authorization: Bearer
    <token>`` get HTTP 401), ``printer`` (print payloads as they arrive).

    Inspection is thread-safe, and the ``wait_*`` helpers poll, so they work from any event
    loop, not only the one the hub runs on.
    """

    def __init__(
        self,
        *,
        slow: float = 0.0,
        require_token: str | None = None,
        printer: PayloadPrinter | None = None,
    ) -> None:
        self.slow = slow
        self.require_token = require_token
        self._printer = printer
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._ids = itertools.count(1)
        self._subscribers: dict[str, set[ServerConnection]] = {}
        self._reset_records()

    def _reset_records(self) -> None:
        self._frames: list[HubFrame] = []
        self._payloads: dict[str, list[dict[str, Any]]] = {}
        self._finals: dict[str, int] = {}
        self._subscriptions: list[SubscriptionEvent] = []
        self._auth_headers: list[str | None] = []
        self._invalid: list[str] = []
        self._opened = 0
        self._rejected = 0

    # ----- lifecycle -----

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Listen on ``host:port`` (default 127.0.0.1 and a free port; after :meth:`stop`, the
        same port again, so a test can take the hub down and bring it back)."""
        self._host = host or self._host
        self._port = self._port if port is None else port
        self._server = await serve(
            self._handle,
            self._host,
            self._port,
            process_request=self._check_token,
            compression=None,  # cheaper for the benchmark; the service must not rely on it
            close_timeout=1.0,  # bounds stop() when a client does not answer the close frame
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self, *, abort: bool = False) -> None:
        """Close every connection (code 1001, or ``abort=True``: drop TCP without a close
        frame, like a crash) and stop listening. Recorded data is kept."""
        server, self._server = self._server, None
        if server is None:
            return
        if abort:
            for connection in list(server.connections):
                connection.transport.abort()
        server.close()
        await server.wait_closed()
        with self._lock:
            self._subscribers.clear()

    @property
    def port(self) -> int:
        return self._port

    @property
    def uri(self) -> str:
        """``ws://host:port``, the service's ``WEBSOCKET_URI``."""
        return f"ws://{self._host}:{self._port}"

    def reset(self) -> None:
        """Forget what was recorded (connections and subscriptions stay)."""
        with self._lock:
            self._reset_records()

    # ----- recorded data (thread-safe copies) -----

    @property
    def frames(self) -> list[HubFrame]:
        """Every decoded frame, in arrival order."""
        with self._lock:
            return list(self._frames)

    def payloads(self, channel: str) -> list[dict[str, Any]]:
        """Payloads sent on ``channel``, in arrival order."""
        with self._lock:
            return list(self._payloads.get(channel, ()))

    @property
    def channels(self) -> list[str]:
        """Channels that received at least one payload, in order of first arrival."""
        with self._lock:
            return list(self._payloads)

    @property
    def subscriptions(self) -> list[SubscriptionEvent]:
        with self._lock:
            return list(self._subscriptions)

    @property
    def auth_headers(self) -> list[str | None]:
        """The ``Authorization`` header of each handshake (rejected ones included)."""
        with self._lock:
            return list(self._auth_headers)

    @property
    def connections_opened(self) -> int:
        """Accepted connections since the last reset."""
        with self._lock:
            return self._opened

    @property
    def connections_rejected(self) -> int:
        """Handshakes refused with 401 since the last reset."""
        with self._lock:
            return self._rejected

    @property
    def invalid_frames(self) -> list[str]:
        """Frames that were not JSON objects with a string ``channel`` (or were binary)."""
        with self._lock:
            return list(self._invalid)

    def subscriber_count(self, channel: str) -> int:
        """Connections currently subscribed to ``channel``."""
        with self._lock:
            return len(self._subscribers.get(channel, ()))

    # ----- waiting -----

    # A timeout parameter (not asyncio.timeout) so the error can say what was awaited.
    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,
        what: str = "condition",
    ) -> None:
        """Wait until ``predicate()`` is true; ``TimeoutError`` naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"hub: {what} not met within {timeout}s")
            await asyncio.sleep(_POLL)

    async def wait_final(
        self,
        channel: str,
        timeout: float = 10.0,
        *,
        count: int = 1,
    ) -> list[dict[str, Any]]:
        """Every payload of ``channel`` once ``count`` payloads with ``final_message: true``
        arrived there. The ``TimeoutError`` shows what did arrive."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._finals.get(channel, 0) >= count:
                    return list(self._payloads[channel])
            if time.monotonic() >= deadline:
                raise TimeoutError(self._describe_missing_final(channel, timeout, count))
            await asyncio.sleep(_POLL)

    def _describe_missing_final(self, channel: str, timeout: float, count: int) -> str:
        payloads = self.payloads(channel)
        lines = [
            f"hub: {count} final payload(s) expected on {channel!r} within {timeout}s; "
            f"{len(payloads)} payload(s) arrived there"
        ]
        lines += [f"  {_summary(p)}" for p in payloads[-15:]]
        others = [c for c in self.channels if c != channel]
        if others:
            lines.append(f"  payloads did arrive on other channels: {others[:10]}")
        if not self.connections_opened:
            lines.append("  no client ever connected")
        return "\n".join(lines)

    # ----- the server side -----

    def _check_token(self, connection: ServerConnection, request: Request) -> Response | None:
        authorization = request.headers.get("Authorization")
        with self._lock:
            self._auth_headers.append(authorization)
        if self.require_token is None or authorization == f"Bearer {self.require_token}":
            return None
        with self._lock:
            self._rejected += 1
        return connection.respond(HTTPStatus.UNAUTHORIZED, "Missing or invalid token.\n")

    async def _handle(self, connection: ServerConnection) -> None:
        connection_id = next(self._ids)
        with self._lock:
            self._opened += 1
        subscribed: set[str] = set()
        try:
            async for message in connection:
                if self.slow > 0:
                    await asyncio.sleep(self.slow)
                self._receive(connection, connection_id, subscribed, message)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                for channel in subscribed:
                    self._subscribers.get(channel, set()).discard(connection)

    def _receive(
        self,
        connection: ServerConnection,
        connection_id: int,
        subscribed: set[str],
        message: str | bytes,
    ) -> None:
        frame = _decode(message)
        if frame is None:
            with self._lock:
                self._invalid.append(message if isinstance(message, str) else repr(message))
            return
        channel, payload = frame
        now = time.time()
        with self._lock:
            self._frames.append(HubFrame(connection_id, now, channel, payload))
            if channel == "subscription":
                self._subscription_locked(connection, connection_id, subscribed, payload, now)
                return
            if isinstance(payload, dict):
                self._payloads.setdefault(channel, []).append(payload)
                if payload.get("final_message") is True:
                    self._finals[channel] = self._finals.get(channel, 0) + 1
            others = [c for c in self._subscribers.get(channel, ()) if c is not connection]
        if others:
            # broadcast() never waits: a slow follower cannot slow down the service.
            broadcast(others, message)
        if self._printer is not None and isinstance(payload, dict):
            self._printer.show(channel, payload)

    def _subscription_locked(
        self,
        connection: ServerConnection,
        connection_id: int,
        subscribed: set[str],
        payload: Any,
        now: float,
    ) -> None:
        action = payload.get("action") if isinstance(payload, dict) else None
        target = payload.get("channel") if isinstance(payload, dict) else None
        if not isinstance(action, str) or not isinstance(target, str):
            return
        if action == "subscribe":
            subscribed.add(target)
            self._subscribers.setdefault(target, set()).add(connection)
        elif action == "unsubscribe":
            subscribed.discard(target)
            self._subscribers.get(target, set()).discard(connection)
        self._subscriptions.append(SubscriptionEvent(connection_id, action, target, now))


def _decode(message: str | bytes) -> tuple[str, Any] | None:
    if not isinstance(message, str):
        return None
    try:
        frame = json.loads(message)
    except ValueError:
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("channel"), str):
        return None
    return frame["channel"], frame.get("payload")


def _summary(payload: dict[str, Any]) -> str:
    keys = ("seq", "type", "status", "final_message", "delta", "error")
    return " ".join(f"{k}={payload[k]!r}" for k in keys if k in payload)


class PayloadPrinter:
    """Prints payloads readably: text deltas appended on one line per answer, status, tool
    and error payloads on their own lines."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self._out = out
        self._inline: str | None = None  # channel whose answer is being printed inline

    def show(self, channel: str, payload: dict[str, Any]) -> None:
        kind, status, delta = payload.get("type"), payload.get("status"), payload.get("delta")
        if kind == "response" and isinstance(delta, str) and delta:
            if self._inline != channel:
                self._end_line()
                self._out.write(f"[{channel}] ")
                self._inline = channel
            self._out.write(delta)
        if kind != "response" or payload.get("final_message"):
            self._end_line()
            self._out.write(f"[{channel}] {self._describe(kind, status, payload)}\n")
        self._out.flush()

    def _end_line(self) -> None:
        if self._inline is not None:
            self._out.write("\n")
            self._inline = None

    @staticmethod
    def _describe(kind: Any, status: Any, payload: dict[str, Any]) -> str:
        message = payload.get("message", "")
        if kind == "tool":
            tool = payload.get("tool") or {}
            return f"tool {tool.get('name')} ({status}): {message}"
        if kind in ("error", "timeout"):
            error = payload.get("error") or {}
            details = payload.get("error_details", message)
            return f"{str(kind).upper()} {error.get('code')}: {details}"
        if kind == "response":
            return f"{status}: {len(str(message))} characters"
        return f"{kind} {status}: {message}"


async def _main(host: str, port: int, token: str | None, show: bool) -> None:
    hub = RecordingHub(require_token=token, printer=PayloadPrinter() if show else None)
    await hub.start(host, port)
    print(f"WEBSOCKET_URI={hub.uri}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await hub.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Development WebSocket hub that records.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4000)
    parser.add_argument("--token", help="require 'Authorization: Bearer <token>'")
    parser.add_argument("--print", action="store_true", help="print payloads as they arrive")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port, args.token, args.print))


def check_payload_sequence(payloads: list[dict[str, Any]], mode: str = "full") -> str:
    """Assert §5 (and, for ``mode="compact"``, §9) on one request's payloads, in seq order;
    return the answer. Raises AssertionError naming the first payload that breaks a rule."""
    assert [p["seq"] for p in payloads] == list(range(len(payloads))), "seq has gaps/repeats"
    finals = [p for p in payloads if p["final_message"] is True]
    assert len(finals) == 1 and finals[0] is payloads[-1], "exactly one final payload, last"
    text = ""
    snapshot_len = 0
    for payload in payloads:
        if payload["status"] != "in_progress":
            assert not payload.get("snapshot"), f"snapshot outside in_progress: {payload}"
            if payload["type"] == "response":
                text += payload.get("delta") or ""
            continue
        text += payload["delta"]
        if mode == "full":
            assert payload["message"] == text and "snapshot" not in payload, payload["seq"]
            continue
        due = len(text) > 1000 if snapshot_len == 0 else len(text) >= 2 * snapshot_len
        if due:
            assert payload.get("snapshot") is True, f"seq {payload['seq']}: snapshot expected"
            assert payload["message"] == text, f"seq {payload['seq']}: snapshot message"
            snapshot_len = len(text)
        else:
            assert not payload.get("snapshot"), f"seq {payload['seq']}: unexpected snapshot"
            assert payload["message"] == "", f"seq {payload['seq']}: compact message not empty"
    final = payloads[-1]
    if final["type"] == "response":
        assert final["message"] == text, "deltas do not add up to the final message"
    return text


def answer_of(payloads: list[dict[str, Any]]) -> str:
    """The answer a subscriber rebuilds from one request's payloads, in either payload mode."""
    from service.chat import AnswerText

    answer = AnswerText()
    for payload in payloads:
        answer.add(payload)
    return answer.text


if __name__ == "__main__":
    main()
