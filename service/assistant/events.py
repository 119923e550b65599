"""The seam between the backends and the sinks: one handler class, one method per run event.

Both backends (Responses, Assistants) translate their stream into these calls; the WebSocket
streamer is one subclass. A third backend or a second sink is one new file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from service.errors import ServiceError
from service.schemas import ToolCallRecord, Usage


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool call gave back."""

    call_id: str
    name: str
    ok: bool
    duration_ms: int


@dataclass(slots=True)
class RunResult:
    """The outcome of a completed run."""

    run_id: str | None
    text: str
    usage: Usage | None
    tool_calls: list[ToolCallRecord] = field(default_factory=list)


class RunEventHandler:
    """Receives the events of one request's run. Override what you need; the defaults do nothing.

    Order: `on_run_started` once per backend call (a retry or a tool round trip may start
    another), `on_tool_call_started`/`on_tool_call_finished` around each tool call,
    `on_text_delta` for every piece of text, then exactly one of `on_completed`/`on_failed`.
    """

    async def on_run_started(self, run_id: str | None) -> None:
        """The backend accepted the run (a response or run id is known)."""

    async def on_tool_call_started(self, call: ToolCall) -> None:
        """The model called a tool; it is about to run."""

    async def on_tool_call_finished(self, outcome: ToolOutcome) -> None:
        """A tool call returned (successfully or with an error handed to the model)."""

    async def on_text_delta(self, delta: str) -> None:
        """The model produced more answer text."""

    async def on_completed(self, result: RunResult) -> None:
        """The run finished with an answer. Final."""

    async def on_failed(self, error: ServiceError) -> None:
        """The run ended with an error. Final."""
