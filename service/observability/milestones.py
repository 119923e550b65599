"""Request milestones: one log line each, the metrics they move, and the run's spans.

The processor hands each request's hub streamer to `RequestTelemetry.observe`, which returns a
run event handler that forwards every event to the streamer and then records it: a second sink
on the same seam. Milestones (logger `service.milestones`, field `milestone`):

    accepted      the run starts                     message_id, thread_id
    first_token   the first text delta               + ttft_ms
    tool_call     a tool call returned               + tool, call_id, ok, duration_ms
    final         the run ended / request rejected   + code, duration_ms, ttft_ms, tool_calls,
                                                       input_tokens, output_tokens, retryable

Final events are counted by code where they are published (`ObservedEventPublisher`), so
invalid requests, which never run, are counted too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from faststream.rabbit import RabbitBroker
from faststream.rabbit.publisher import RabbitPublisher

from service.assistant.events import RunEventHandler, RunResult, ToolCall, ToolOutcome
from service.errors import ServiceError
from service.observability.metrics import ServiceMetrics
from service.schemas import CompletedEvent, ErrorCode, FailedEvent
from service.sinks.events import EventPublisher, ReplyTo

if TYPE_CHECKING:
    from service.observability.tracing import RunSpans, Tracing

log = logging.getLogger("service.milestones")


class RunObserver(Protocol):
    """What the request processor calls: wrap a request's handler to observe its run."""

    def observe(
        self, handler: RunEventHandler, *, message_id: str, thread_id: str
    ) -> RunEventHandler: ...


class RequestTelemetry:
    """Observes every run of the process: milestone logs, metrics and (optionally) spans."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        tracing: Tracing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self._tracing = tracing
        self.clock = clock

    def observe(
        self, handler: RunEventHandler, *, message_id: str, thread_id: str
    ) -> RunEventHandler:
        spans = (
            self._tracing.start_run(message_id=message_id, thread_id=thread_id)
            if self._tracing is not None
            else None
        )
        return ObservedRun(self, handler, message_id, thread_id, spans)

    def final_published(self, event: CompletedEvent | FailedEvent) -> None:
        """Count a final event by code; a rejected request gets its `final` line here."""
        code = "completed" if isinstance(event, CompletedEvent) else event.code.value
        self.metrics.requests.labels(code=code).inc()
        if isinstance(event, FailedEvent) and event.code is ErrorCode.INVALID_REQUEST:
            milestone(
                logging.INFO,
                "final",
                message_id=event.message_id,
                thread_id=event.thread_id,
                code=code,
                retryable=event.retryable,
            )
        elif isinstance(event, CompletedEvent) and not event.hub_delivered:
            milestone(
                logging.WARNING,
                "hub_undelivered",
                message_id=event.message_id,
                thread_id=event.thread_id,
                code=(event.hub_error or ErrorCode.WEBSOCKET_UNAVAILABLE).value,
            )


class ObservedRun(RunEventHandler):
    """Forwards one run's events to the streamer, then logs and measures them."""

    def __init__(
        self,
        telemetry: RequestTelemetry,
        inner: RunEventHandler,
        message_id: str,
        thread_id: str,
        spans: RunSpans | None,
    ) -> None:
        self._telemetry = telemetry
        self._metrics = telemetry.metrics
        self._clock = telemetry.clock
        self._inner = inner
        self._ids = {"message_id": message_id, "thread_id": thread_id}
        self._spans = spans
        self._started = self._clock()
        self._first_token: float | None = None
        self._tool_calls = 0
        self._ended = False
        self._deltas = 0  # added to the counter once, at the end: the token path stays lock-free
        milestone(logging.INFO, "accepted", **self._ids)

    async def on_run_started(self, run_id: str | None) -> None:
        await self._inner.on_run_started(run_id)
        if self._spans is not None:
            self._spans.run_started(run_id)

    async def on_tool_call_started(self, call: ToolCall) -> None:
        await self._inner.on_tool_call_started(call)
        if self._spans is not None:
            self._spans.tool_started(call)

    async def on_tool_call_finished(self, outcome: ToolOutcome) -> None:
        await self._inner.on_tool_call_finished(outcome)
        self._tool_calls += 1
        result = "ok" if outcome.ok else "error"
        self._metrics.tool_call_duration.labels(tool=outcome.name, outcome=result).observe(
            outcome.duration_ms / 1000
        )
        milestone(
            logging.INFO,
            "tool_call",
            **self._ids,
            tool=outcome.name,
            call_id=outcome.call_id,
            ok=outcome.ok,
            duration_ms=outcome.duration_ms,
        )
        if self._spans is not None:
            self._spans.tool_finished(outcome)

    async def on_text_delta(self, delta: str) -> None:
        await self._inner.on_text_delta(delta)
        if not delta or self._ended:
            return
        self._deltas += 1
        if self._first_token is None:
            self._first_token = self._clock() - self._started
            self._metrics.time_to_first_token.observe(self._first_token)
            milestone(logging.INFO, "first_token", **self._ids, ttft_ms=_ms(self._first_token))

    async def on_completed(self, result: RunResult) -> None:
        try:
            await self._inner.on_completed(result)
        finally:
            if self._end("completed"):
                usage = result.usage
                if usage is not None:
                    self._metrics.model_tokens.labels(kind="input").inc(usage.input_tokens)
                    self._metrics.model_tokens.labels(kind="output").inc(usage.output_tokens)
                if self._spans is not None:
                    self._spans.completed(usage)
                self._log_final(
                    logging.INFO,
                    code="completed",
                    input_tokens=usage.input_tokens if usage else None,
                    output_tokens=usage.output_tokens if usage else None,
                )

    async def on_failed(self, error: ServiceError) -> None:
        try:
            await self._inner.on_failed(error)
        finally:
            if self._end("failed"):
                if self._spans is not None:
                    self._spans.failed(error.code.value, error.message)
                self._log_final(
                    logging.WARNING,
                    code=error.code.value,
                    retryable=error.retryable,
                    error=error.message,
                )

    def _end(self, outcome: str) -> bool:
        if self._ended:
            return False
        self._ended = True
        if self._deltas:
            self._metrics.tokens_streamed.inc(self._deltas)
        self._metrics.run_duration.labels(outcome=outcome).observe(self._elapsed())
        return True

    def _elapsed(self) -> float:
        return self._clock() - self._started

    def _log_final(self, level: int, **fields: Any) -> None:
        milestone(
            level,
            "final",
            **self._ids,
            duration_ms=_ms(self._elapsed()),
            ttft_ms=_ms(self._first_token) if self._first_token is not None else None,
            tool_calls=self._tool_calls,
            **fields,
        )


class ObservedEventPublisher(EventPublisher):
    """The events sink, reporting each final event it published to the telemetry."""

    def __init__(
        self,
        completed: RabbitPublisher,
        failed: RabbitPublisher,
        broker: RabbitBroker,
        *,
        telemetry: RequestTelemetry,
    ) -> None:
        super().__init__(completed, failed, broker)
        self._telemetry = telemetry

    async def publish_completed(self, event: CompletedEvent, reply: ReplyTo | None = None) -> None:
        await super().publish_completed(event, reply)
        self._telemetry.final_published(event)

    async def publish_failed(self, event: FailedEvent, reply: ReplyTo | None = None) -> None:
        await super().publish_failed(event, reply)
        self._telemetry.final_published(event)


def milestone(level: int, name: str, **fields: Any) -> None:
    """One structured log line: `name` is the message, the fields go in the record (see
    `service.logs`: `key=value` after the message in text, keys of the object in JSON)."""
    if log.isEnabledFor(level):
        values = {key: value for key, value in fields.items() if value is not None}
        log.log(level, name, extra={"milestone": name, **values})


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
