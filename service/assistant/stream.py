"""Reading a model stream: server-sent events, with an idle limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, TypeVar

import anyio
import httpx2
import openai

from service.errors import RunTimeout

T = TypeVar("T")


async def within_idle_limit(stream: AsyncIterable[T], idle: float) -> AsyncIterator[T]:
    """Yield the stream's events; raise `RunTimeout` when none comes for `idle` seconds.

    Only the wait for the next event counts, not the time the consumer spends on one. One timer
    per idle period instead of an `asyncio.timeout` per event: a token costs two clock reads.
    """
    iterator = aiter(stream)
    watchdog = _IdleWatchdog(idle)
    try:
        while True:
            watchdog.waiting()
            try:
                event = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if watchdog.fired():
                    raise RunTimeout(f"No event from the model for {idle:g} s") from None
                raise
            watchdog.done()
            yield event
    finally:
        watchdog.close()


class _IdleWatchdog:
    """Cancels the task (like `asyncio.timeout`) once one wait has lasted `idle` seconds."""

    def __init__(self, idle: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._idle = idle
        self._since: float | None = None  # start of the current wait, None between waits
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def waiting(self) -> None:
        self._since = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._idle, self._check)

    def done(self) -> None:
        self._since = None

    def fired(self) -> bool:
        """True if this watchdog's cancellation (and no other) is what interrupted the wait."""
        return self._expired and self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._since is None:
            return  # between waits: the next wait arms the timer again
        due = self._since + self._idle
        if self._loop.time() >= due:
            self._expired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(due, self._check)


async def sse_json(response: httpx2.Response) -> AsyncIterator[Any]:
    """The parsed `data` of each server-sent event of a streamed SDK response.

    Reads the body the way the SDK's `AsyncStream` does (same SSE rules, `[DONE]` ends the
    stream, an `{"error": ...}` event raises `openai.APIError`, transport failures raise
    `APITimeoutError`/`APIConnectionError`) but leaves the JSON as it is: the SDK builds a
    model for every event by validating it against the union of all ~50 stream event types,
    which cost more CPU than everything else the service does with a token.
    """
    try:
        async for data in _sse_data(response.aiter_bytes()):
            if data.startswith("[DONE]"):
                return
            value = json.loads(data)
            if isinstance(value, dict) and value.get("error"):
                error = value["error"]
                message = error.get("message") if isinstance(error, dict) else None
                if not message or not isinstance(message, str):
                    message = "An error occurred during streaming"
                raise openai.APIError(message=message, request=response.request, body=error)
            yield value
    except httpx2.TimeoutException as exc:
        raise openai.APITimeoutError(request=response.request) from exc
    except (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream) as exc:
        raise openai.APIConnectionError(request=response.request) from exc


async def _sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """The `data` of each event (https://html.spec.whatwg.org/#event-stream-interpretation).

    Lines end in LF, CRLF or CR; events are dispatched exactly as by the SDK's `SSEDecoder`.
    """
    parser = _SseParser()
    pending = b""
    async for chunk in chunks:
        pending += chunk
        if b"\r" in pending:
            # A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
            keep = pending.endswith(b"\r")
            body = pending[:-1] if keep else pending
            pending = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if keep else b"")
        *lines, pending = pending.split(b"\n")
        for data in parser.feed(lines):
            yield data
    if pending.endswith(b"\r"):  # it was a line end after all
        for data in parser.feed([pending[:-1]]):
            yield data
    # Anything else left is an unterminated line, which no empty line dispatches.


class _SseParser:
    """Fields to events. An empty line dispatches the event when it has data, a non-empty
    `event`, a valid `retry`, or (ever since one was seen) a non-empty `id`, as in the SDK."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._named = self._retry = self._last_id = False

    def feed(self, lines: list[bytes]) -> list[str]:
        events: list[str] = []
        for raw in lines:
            if not raw:
                if self._data or self._named or self._retry or self._last_id:
                    events.append("\n".join(self._data))
                self._data = []
                self._named = self._retry = False
                continue
            line = raw.decode("utf-8")
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._named = bool(value)
            elif name == "id":
                if "\0" not in value:
                    self._last_id = bool(value)
            elif name == "retry":
                with contextlib.suppress(ValueError):
                    int(value)
                    self._retry = True
        return events
