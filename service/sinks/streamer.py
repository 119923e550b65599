"""The WebSocket streamer: the run event handler that turns run events into hub payloads.

It owns the per-request payload rules of contract §5: `seq` without gaps, `responding` once
before the first text, text deltas coalesced (by time and by size), exactly one final payload,
and the concatenated deltas equal to the final message.

Payload modes (contract §9, `HUB_PAYLOAD_MODE`, read from the hub): in `full` mode every
`in_progress` payload carries the whole answer so far in `message`; in `compact` mode it
carries `message: ""` and only its `delta`, except *snapshots* (`"snapshot": true`, `message` =
the whole answer so far): the payload that brings the answer past 1,000 code points, then each
one that brings it to at least twice the length of the previous snapshot. The bytes sent per
answer then grow linearly with its length instead of with its square. The final payload
carries the whole answer in both modes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from service.assistant.events import RunEventHandler, RunResult, ToolCall, ToolOutcome
from service.errors import ServiceError
from service.schemas import ErrorCode
from service.sinks.hub import Hub, PayloadMode

# Compact mode: the first snapshot goes with the payload that brings the answer past this
# many code points; each later one when the answer reaches twice the previous snapshot's.
FIRST_SNAPSHOT_AFTER = 1000


class HubStreamer(RunEventHandler):
    """Streams one request to its hub channel."""

    def __init__(
        self,
        hub: Hub,
        *,
        channel: str,
        message_id: str,
        thread_id: str,
        flush_ms: int = 30,
        flush_chars: int = 200,
        payload_mode: PayloadMode | None = None,
    ) -> None:
        self._hub = hub
        mode = payload_mode or getattr(hub, "payload_mode", "full")
        self._compact = mode == "compact"
        self._snapshot_len = 0
        self.channel = channel
        self._message_id = message_id
        self._thread_id = thread_id
        self._flush_after = flush_ms / 1000
        self._flush_chars = flush_chars
        self._seq = 0
        self._sent_text = ""
        self._unsent: list[str] = []
        self._unsent_chars = 0
        self._timer: asyncio.Handle | None = None
        self._ticker: _FlushTicker | None = None  # the shared flush timer it waits for
        self._responding = False
        self._finished = False
        self._subscribed = False
        self._resumed = False
        self.first_text_at: float | None = None

    @property
    def text_started(self) -> bool:
        """True once any answer text was produced (a restart would duplicate it)."""
        return self._responding

    @property
    def sent_text(self) -> str:
        """The answer text sent to the hub so far (the `text` of a `failed` event, §6)."""
        return self._sent_text

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def next_seq(self) -> int:
        """The `seq` of the next payload."""
        return self._seq

    @property
    def snapshot_len(self) -> int:
        """Compact mode: the answer's length at the last snapshot (0: none yet)."""
        return self._snapshot_len

    def start(self) -> None:
        """Subscribe to the channel and send `started`."""
        self._hub.subscribe(self.channel)
        self._subscribed = True
        self._emit("status", "started", "Request received")

    @classmethod
    def continuing(
        cls,
        hub: Hub,
        *,
        channel: str,
        message_id: str,
        thread_id: str,
        seq: int,
        text: str,
        responding: bool,
        finished: bool = False,
        snapshot_len: int = 0,
        flush_ms: int = 30,
        flush_chars: int = 200,
    ) -> HubStreamer:
        """A streamer that goes on with a sequence another process started (contract §12).

        Its first payload has `seq`; `text` is the answer sent so far (`message` goes on from
        it); `responding` says whether `responding` was sent. No second `started`: call
        `resume()` instead of `start()`. A `finished` sequence sends nothing more;
        `snapshot_len` keeps compact mode's snapshot schedule where it was.
        """
        streamer = cls(
            hub,
            channel=channel,
            message_id=message_id,
            thread_id=thread_id,
            flush_ms=flush_ms,
            flush_chars=flush_chars,
        )
        streamer._seq = seq
        streamer._sent_text = text
        streamer._responding = responding
        streamer._finished = finished
        streamer._snapshot_len = snapshot_len
        streamer._resumed = True
        return streamer

    def resume(self) -> None:
        """Subscribe to the channel, without `started` (see `continuing`)."""
        if self._finished:
            return
        self._hub.subscribe(self.channel)
        self._subscribed = True

    async def on_tool_call_started(self, call: ToolCall) -> None:
        self._flush()
        self._emit(
            "tool",
            "processing",
            f"Calling {call.name}",
            tool={"name": call.name, "call_id": call.call_id},
        )

    async def on_tool_call_finished(self, outcome: ToolOutcome) -> None:
        verb = "returned" if outcome.ok else "failed"
        self._emit(
            "tool",
            "processing",
            f"{outcome.name} {verb} in {outcome.duration_ms} ms",
            tool={"name": outcome.name, "call_id": outcome.call_id},
        )

    async def on_text_delta(self, delta: str) -> None:
        if not delta or self._finished:
            return
        if not self._responding:
            self._responding = True
            self.first_text_at = time.time()
            self._emit("status", "responding", "Responding")
        self._unsent.append(delta)
        self._unsent_chars += len(delta)
        if self._unsent_chars >= self._flush_chars or self._flush_after <= 0:
            self._flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            if self._sent_text and not self._resumed:
                if self._ticker is None:
                    self._ticker = _FlushTicker.of(loop, self._flush_after)
                    self._ticker.add(self)
            else:
                # The first words go out on the next loop turn (with whatever else arrived in
                # the same read): coalescing is for the stream that follows, not the first token
                # (nor the first one after a re-attach, which the user has been waiting for).
                self._resumed = False
                self._timer = loop.call_soon(self._flush)

    async def on_completed(self, result: RunResult) -> None:
        if self._finished:
            return
        delta = self._take_unsent()
        self._sent_text += delta
        self._emit("response", "completed", self._sent_text, delta=delta, final=True)
        self._finish()

    async def on_failed(self, error: ServiceError) -> None:
        if self._finished:
            return
        self._flush()
        kind = "timeout" if error.code is ErrorCode.TIMEOUT else "error"
        self._emit(
            kind,
            "error",
            error.message,
            final=True,
            error={"code": error.code.value, "retryable": error.retryable},
            error_details=error.message,
        )
        self._finish()

    async def delivered(self, timeout: float) -> bool:
        """Wait for this request's payloads to reach the hub; False if they could not."""
        return await self._hub.drain(self.channel, timeout)

    def _finish(self) -> None:
        self._finished = True
        if self._subscribed:
            self._subscribed = False
            self._hub.unsubscribe(self.channel)

    def _take_unsent(self) -> str:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ticker is not None:
            self._ticker.discard(self)
            self._ticker = None
        text = "".join(self._unsent)
        self._unsent.clear()
        self._unsent_chars = 0
        return text

    def _ticked(self) -> None:
        self._ticker = None  # already out of the ticker's list
        self._flush()

    def _flush(self) -> None:
        delta = self._take_unsent()
        if not delta or self._finished:
            return
        self._sent_text += delta
        if not self._compact:
            self._emit("response", "in_progress", self._sent_text, delta=delta)
            return
        length = len(self._sent_text)
        if self._snapshot_len == 0:
            snapshot = length > FIRST_SNAPSHOT_AFTER
        else:
            snapshot = length >= 2 * self._snapshot_len
        if snapshot:
            self._snapshot_len = length
            self._emit("response", "in_progress", self._sent_text, delta=delta, snapshot=True)
        else:
            self._emit("response", "in_progress", "", delta=delta)

    def _emit(
        self,
        kind: str,
        status: str,
        message: str,
        *,
        delta: str | None = None,
        final: bool = False,
        tool: dict[str, str] | None = None,
        error: dict[str, Any] | None = None,
        error_details: str | None = None,
        snapshot: bool = False,
    ) -> None:
        payload: dict[str, Any] = {
            "type": kind,
            "status": status,
            "message": message,
            "final_message": final,
            "timestamp": time.time(),
            "seq": self._seq,
            "message_id": self._message_id,
            "thread_id": self._thread_id,
        }
        if delta is not None:
            payload["delta"] = delta
        if snapshot:
            payload["snapshot"] = True
        if tool is not None:
            payload["tool"] = tool
        if error is not None:
            payload["error"] = error
            payload["error_details"] = error_details
        self._seq += 1
        self._hub.send(self.channel, payload)


class _FlushTicker:
    """One timer for every stream of a loop waiting to flush after the same window.

    A timer per stream and window costs a timer-heap insert and a cancel per flush: at 5,000
    slow streams (bench scale) that is 5,000 timers a second in a heap of 5,000. Streams that
    start waiting during one window are flushed together at its end, so a stream's text waits
    at most `period` (less when it joined late in the window), never longer."""

    _tickers: dict[tuple[asyncio.AbstractEventLoop, float], _FlushTicker] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float) -> None:
        self._loop = loop
        self._period = period
        self._due: dict[HubStreamer, None] = {}
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, period: float) -> _FlushTicker:
        key = (loop, period)
        ticker = cls._tickers.get(key)
        if ticker is None:
            for old in [k for k in cls._tickers if k[0].is_closed()]:
                del cls._tickers[old]
            ticker = cls._tickers[key] = cls(loop, period)
        return ticker

    def add(self, streamer: HubStreamer) -> None:
        self._due[streamer] = None
        if self._handle is None:
            self._handle = self._loop.call_later(self._period, self._tick)

    def discard(self, streamer: HubStreamer) -> None:
        self._due.pop(streamer, None)

    def _tick(self) -> None:
        self._handle = None
        due, self._due = self._due, {}
        for streamer in due:
            streamer._ticked()
