"""What happens to one delivered request, from validation to ack.

validate → (duplicate? bounded redelivery?) → wait for the conversation's turn → stream the run
to the hub → publish the one final event → ack. Invalid requests get a `failed` event, an
`error` payload when their channel can be read, and are dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from service.assistant.events import RunResult
from service.assistant.failures import classify
from service.assistant.runner import ConversationQueue, Runner, Turn
from service.errors import ServiceError
from service.observability.milestones import RunObserver
from service.schemas import (
    CHANNEL_PATTERN,
    ChatRequest,
    CompletedEvent,
    ErrorCode,
    FailedEvent,
)
from service.sinks.events import EventPublisher, ReplyTo
from service.sinks.hub import Hub
from service.sinks.streamer import HubStreamer

log = logging.getLogger("service.requests")

DELIVERIES_HEADER = "x-service-deliveries"
JSON_CONTENT_TYPES = re.compile(r"^(application/([\w.+-]+\+)?json|text/json)\s*(;.*)?$", re.I)
_CHANNEL = re.compile(CHANNEL_PATTERN)


@dataclass(frozen=True, slots=True)
class StreamingOptions:
    flush_ms: int
    flush_chars: int
    hub_send_timeout: float


@dataclass(slots=True)
class _Record:
    """What this process knows about a message_id it has seen (for redelivered copies)."""

    done: asyncio.Event
    final: CompletedEvent | FailedEvent | None = None
    published: bool = False


Republish = Callable[[AbstractIncomingMessage, dict[str, Any]], Awaitable[None]]


class RequestProcessor:
    """Processes delivered chat requests; one instance per service process."""

    def __init__(
        self,
        *,
        runner: Runner,
        hub: Hub,
        events: EventPublisher,
        options: StreamingOptions,
        republish: Republish | None = None,
        observer: RunObserver | None = None,
        max_deliveries: int = 3,
        publish_patience: float = 60.0,
        remember: int = 10_000,
    ) -> None:
        self._runner = runner
        self._hub = hub
        self._events = events
        self._options = options
        self._queue = ConversationQueue()
        self._seen: OrderedDict[str, _Record] = OrderedDict()
        self._remember = remember
        self._republish = republish
        self._observer = observer
        self._max_deliveries = max_deliveries
        self._publish_patience = publish_patience
        self._closing = False
        self._waiting: set[asyncio.Task[Any]] = set()
        self._running: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: tuple[Any, str | None] | None = None
        self.in_flight = 0

    # -- invalid input ---------------------------------------------------------------------

    def parse(self, body: bytes, content_type: str | None) -> ChatRequest:
        """Validate a raw body; raises `ServiceError(invalid_request)` with a readable reason."""
        if content_type and not JSON_CONTENT_TYPES.match(content_type):
            raise ServiceError(
                ErrorCode.INVALID_REQUEST, f"Unsupported content type {content_type[:60]!r}"
            )
        try:
            return ChatRequest.model_validate_json(body)
        except ValidationError as exc:
            raise ServiceError(ErrorCode.INVALID_REQUEST, _describe_validation(exc)) from None

    async def reject_invalid(self, raw: AbstractIncomingMessage, error: ServiceError) -> None:
        """Publish the failed event (and hub error payload), then dead-letter the message."""
        fields = _readable_fields(raw.body)
        channel = fields.get("channel")
        message_id = fields.get("message_id") or raw.message_id or _new_id()
        log.info("rejected invalid request message_id=%s: %s", message_id, error.message)
        await self._dead_letter(raw, error, message_id, channel, fields.get("thread_id") or channel)

    async def _dead_letter(
        self,
        raw: AbstractIncomingMessage,
        error: ServiceError,
        message_id: str,
        channel: str | None,
        thread_id: str | None,
    ) -> None:
        """A request that will not run: hub error payload (when the channel is known), the
        failed event, then reject without requeue so the queue dead-letters it."""
        if channel is not None:
            streamer = HubStreamer(
                self._hub, channel=channel, message_id=message_id, thread_id=thread_id or channel
            )
            streamer.start()
            await streamer.on_failed(error)
        await self._events.publish_failed(
            FailedEvent(
                message_id=message_id,
                channel=channel,
                thread_id=thread_id,
                code=error.code,
                message=error.message,
                retryable=False,
                occurred_at=time.time(),
            ),
            _reply_to(raw),
        )
        await _settle(raw.reject(requeue=False))

    # -- a valid request -------------------------------------------------------------------

    async def process(self, request: ChatRequest, raw: AbstractIncomingMessage) -> None:
        """Run one valid request; ack it once its final event is published."""
        self._consumer = (raw.channel, raw.consumer_tag)
        message_id = request.message_id or raw.message_id or _new_id()
        if self._closing:
            await _settle(raw.nack(requeue=True))
            return
        record = self._seen.get(message_id)
        # A copy of a request still running, or a redelivery of one that ran here, is not run
        # again. A fresh publish of a finished message_id is a deliberate retry: run it.
        if record is not None and (raw.redelivered or not record.done.is_set()):
            await self._settle_duplicate(record, raw)
            return
        if raw.redelivered and await self._redelivery_exhausted(request, raw, message_id):
            return
        thread_id = request.conversation_id
        turn = self._queue.reserve(thread_id)
        record = self._remember_id(message_id)
        # The run is its own task: aiormq cancels delivery tasks when the connection drops,
        # and a request in flight must still end once, with its final event published.
        task = asyncio.create_task(self._handle(request, raw, message_id, record, turn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _handle(
        self,
        request: ChatRequest,
        raw: AbstractIncomingMessage,
        message_id: str,
        record: _Record,
        turn: Turn,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            try:
                await turn.wait()
            except asyncio.CancelledError:
                if not self._closing:
                    raise
                # Shutting down before this request started: back to the queue, untouched.
                task.uncancel()
                self._forget(message_id, record)
                await _settle(raw.nack(requeue=True))
                return
            finally:
                self._waiting.discard(task)
            self._running.add(task)
            self.in_flight += 1
            try:
                record.final = await self._run(request, message_id, request.conversation_id)
            finally:
                self.in_flight -= 1
                self._running.discard(task)
                turn.release()
            await self._publish_final(record, raw)
            await _settle(raw.ack())
        finally:
            turn.release()
            record.done.set()

    async def shutdown(self, grace: float) -> None:
        """Stop taking requests; let runs finish for `grace` s, then cancel them."""
        self._closing = True
        if self._consumer is not None:
            channel, tag = self._consumer
            # Stop deliveries now, or requeued messages would bounce straight back to us.
            with contextlib.suppress(Exception):
                await channel.basic_cancel(tag)
        for task in list(self._waiting):
            task.cancel()
        if self._running:
            log.info("shutdown: waiting up to %gs for %d run(s)", grace, len(self._running))
            _, pending = await asyncio.wait(set(self._running), timeout=grace or None)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("shutdown: cancelled %d run(s) after the grace period", len(pending))
                await asyncio.wait(pending, timeout=10)
        else:
            await asyncio.sleep(0)

    async def _run(
        self, request: ChatRequest, message_id: str, thread_id: str
    ) -> CompletedEvent | FailedEvent:
        started_at = time.time()
        streamer = HubStreamer(
            self._hub,
            channel=request.channel,
            message_id=message_id,
            thread_id=thread_id,
            flush_ms=self._options.flush_ms,
            flush_chars=self._options.flush_chars,
        )
        streamer.start()
        # Milestone logs (accepted, first token, tools, final) come from the observer.
        handler = (
            self._observer.observe(streamer, message_id=message_id, thread_id=thread_id)
            if self._observer is not None
            else streamer
        )
        try:
            outcome = await self._runner.run(
                thread_id, request.message, handler, text_started=lambda: streamer.text_started
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._closing or task is None:
                raise
            # Cancelled by shutdown after the grace period: the streamer already sent the
            # `cancelled` payload; the request still gets its one final event and its ack.
            task.uncancel()
            outcome = classify(asyncio.CancelledError())
        delivered = await streamer.delivered(self._options.hub_send_timeout)
        finished_at = time.time()
        if isinstance(outcome, RunResult):
            return CompletedEvent(
                message_id=message_id,
                channel=request.channel,
                thread_id=thread_id,
                run_id=outcome.run_id,
                text=outcome.text,
                tool_calls=outcome.tool_calls,
                usage=outcome.usage,
                started_at=started_at,
                finished_at=finished_at,
                duration_ms=int((finished_at - started_at) * 1000),
                hub_delivered=delivered,
                hub_error=None if delivered else ErrorCode.WEBSOCKET_UNAVAILABLE,
            )
        return FailedEvent(
            message_id=message_id,
            channel=request.channel,
            thread_id=thread_id,
            code=outcome.code,
            message=outcome.message,
            retryable=outcome.retryable,
            occurred_at=finished_at,
        )

    async def _publish_final(self, record: _Record, raw: AbstractIncomingMessage) -> None:
        """Publish the final event once, retrying while the broker connection is down."""
        final = record.final
        if final is None or record.published:
            return
        reply = _reply_to(raw)
        delay = 0.2
        deadline = time.monotonic() + self._publish_patience
        while True:
            try:
                if isinstance(final, CompletedEvent):
                    await self._events.publish_completed(final, reply)
                else:
                    await self._events.publish_failed(final, reply)
                record.published = True
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    # Left unacked: the redelivered copy will publish it (see _settle_duplicate).
                    log.error(
                        "final event of message_id=%s not published: %r", final.message_id, exc
                    )
                    raise
                log.warning("publishing final event failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _settle_duplicate(self, record: _Record, raw: AbstractIncomingMessage) -> None:
        # A redelivered copy of a request this process ran or is running (the broker
        # connection dropped before its ack): never run it twice, publish its final event once.
        await record.done.wait()
        with contextlib.suppress(Exception):
            await self._publish_final(record, raw)
        log.info("redelivered copy of message_id=%s settled without a second run", raw.message_id)
        await _settle(raw.ack())

    async def _redelivery_exhausted(
        self, request: ChatRequest, raw: AbstractIncomingMessage, message_id: str
    ) -> bool:
        """Count a redelivery the broker reports; past the limit, dead-letter the request.

        Classic queues keep no delivery count, so the count travels in a header: the message
        is republished with the count raised and the delivered copy acked. A request that
        crashes the process therefore runs at most MAX_DELIVERIES times.
        """
        deliveries = _deliveries(raw) + 1
        if deliveries > self._max_deliveries:
            error = ServiceError(
                ErrorCode.INTERNAL,
                f"Request was delivered {deliveries - 1} times without completing",
            )
            log.error("message_id=%s dead-lettered: %s", message_id, error.message)
            await self._dead_letter(
                raw, error, message_id, request.channel, request.conversation_id
            )
            return True
        if self._republish is None:
            return False
        await self._republish(raw, {DELIVERIES_HEADER: deliveries})
        await _settle(raw.ack())
        return True

    def _forget(self, message_id: str, record: _Record) -> None:
        if self._seen.get(message_id) is record:
            del self._seen[message_id]

    def _remember_id(self, message_id: str) -> _Record:
        record = _Record(done=asyncio.Event())
        self._seen[message_id] = record
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return record


async def _settle(outcome: Awaitable[object]) -> None:
    """Ack/nack/reject; on a dead channel the broker redelivers, and the copy is recognised."""
    try:
        await outcome
    except Exception as exc:
        log.warning("could not settle a message (%s); it will be redelivered", type(exc).__name__)


def _deliveries(raw: AbstractIncomingMessage) -> int:
    value = (raw.headers or {}).get(DELIVERIES_HEADER)
    return value if isinstance(value, int) and value > 0 else 1


def _reply_to(raw: AbstractIncomingMessage) -> ReplyTo | None:
    if raw.reply_to:
        return ReplyTo(queue=raw.reply_to, correlation_id=raw.correlation_id)
    return None


def _new_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _readable_fields(body: bytes) -> dict[str, str]:
    """`channel`, `message_id`, `thread_id` of an invalid body, where they are valid on their own."""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    fields: dict[str, str] = {}
    for name in ("channel", "thread_id"):
        value = data.get(name)
        if isinstance(value, str) and _CHANNEL.match(value):
            fields[name] = value
    message_id = data.get("message_id")
    if isinstance(message_id, str) and 0 < len(message_id) <= 200 and message_id.isprintable():
        fields["message_id"] = message_id
    return fields


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where[:80]}: {error['msg'][:200]}")
    text = "Invalid request: " + "; ".join(parts)
    # Field names can come from the input (metadata keys): keep the text printable and encodable.
    return text.encode("utf-8", "replace").decode("utf-8")
