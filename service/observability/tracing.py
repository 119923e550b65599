"""Optional OpenTelemetry tracing (TRACING_ENABLED): imported only when it is switched on.

FastStream's `RabbitTelemetryMiddleware` makes the spans of consumed requests and published
events (and carries the trace context in AMQP headers); this module adds, under the consume
span of a request, one `openai.stream` span per model turn and one `tool <name>` span per tool
call. Needs the `tracing` extra (`pip install -e ".[tracing]"`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from service.assistant.events import ToolCall, ToolOutcome
from service.config import Settings
from service.schemas import Usage

INSTRUMENTATION_NAME = "service"


class Tracing:
    """The tracer provider of the process, the RabbitMQ middleware and the run spans."""

    def __init__(self, provider: trace.TracerProvider, *, owned: bool = False) -> None:
        self.provider = provider
        self._owned = owned
        self._tracer: Tracer = provider.get_tracer(INSTRUMENTATION_NAME)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing:
        """A provider exporting as TRACING_EXPORTER says; `none` uses the global provider
        (one installed by the platform, e.g. `opentelemetry-instrument`)."""
        if settings.tracing_exporter == "none":
            return cls(trace.get_tracer_provider())
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.tracing_service_name})
        )
        provider.add_span_processor(_span_processor(settings))
        return cls(provider, owned=True)

    def broker_middleware(self) -> RabbitTelemetryMiddleware:
        return RabbitTelemetryMiddleware(tracer_provider=self.provider)

    def start_run(self, *, message_id: str, thread_id: str) -> RunSpans:
        """The spans of one run, children of the span current now (the consume span)."""
        return RunSpans(self._tracer, otel_context.get_current(), message_id, thread_id)

    def shutdown(self) -> None:
        """Flush and stop exporting (only a provider made here)."""
        if self._owned and isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


def _span_processor(settings: Settings) -> SimpleSpanProcessor | BatchSpanProcessor:
    if settings.tracing_exporter == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # a misconfiguration: fail at start, not on the first request
        raise RuntimeError(
            "TRACING_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http: "
            'pip install -e ".[tracing]", or set TRACING_EXPORTER=console'
        ) from exc
    exporter: SpanExporter = OTLPSpanExporter(endpoint=settings.tracing_otlp_endpoint or None)
    return BatchSpanProcessor(exporter)


@dataclass
class RunSpans:
    """`openai.stream` spans (one per model turn) and `tool <name>` spans of one run.

    A turn's stream ends when the model asks for tools; the next turn starts when the last of
    those calls has returned.
    """

    tracer: Tracer
    parent: otel_context.Context
    message_id: str
    thread_id: str
    _stream: Span | None = None
    _turns: int = 0
    _tools: dict[str, Span] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._open_stream()

    def run_started(self, run_id: str | None) -> None:
        if self._stream is not None and run_id:
            self._stream.set_attribute("gen_ai.response.id", run_id)

    def tool_started(self, call: ToolCall) -> None:
        self._close_stream()
        self._tools[call.call_id] = self.tracer.start_span(
            f"tool {call.name}",
            context=self.parent,
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "gen_ai.tool.name": call.name,
                "gen_ai.tool.call.id": call.call_id,
                **self._ids(),
            },
        )

    def tool_finished(self, outcome: ToolOutcome) -> None:
        span = self._tools.pop(outcome.call_id, None)
        if span is None:
            return
        span.set_attribute("tool.ok", outcome.ok)
        if not outcome.ok:
            span.set_status(Status(StatusCode.ERROR, "the tool returned an error to the model"))
        # The calls of one turn run concurrently and report together: end each at its own time.
        start = getattr(span, "start_time", None)
        span.end(start + outcome.duration_ms * 1_000_000 if isinstance(start, int) else None)
        if not self._tools:
            self._open_stream()

    def completed(self, usage: Usage | None) -> None:
        if self._stream is not None and usage is not None:
            self._stream.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            self._stream.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        self._end("completed", None)

    def failed(self, code: str, message: str) -> None:
        self._end(code, message)

    def _end(self, code: str, error: str | None) -> None:
        now = time.time_ns()
        for span in [*self._tools.values(), *([self._stream] if self._stream else [])]:
            span.set_attribute("assistant.code", code)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, f"{code}: {error}"))
            span.end(now)
        self._tools.clear()
        self._stream = None

    def _open_stream(self) -> None:
        self._turns += 1
        self._stream = self.tracer.start_span(
            "openai.stream",
            context=self.parent,
            kind=trace.SpanKind.CLIENT,
            attributes={"gen_ai.system": "openai", "assistant.turn": self._turns, **self._ids()},
        )

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.end()
            self._stream = None

    def _ids(self) -> dict[str, str]:
        return {"assistant.message_id": self.message_id, "assistant.thread_id": self.thread_id}
