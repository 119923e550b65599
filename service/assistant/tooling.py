"""Running the model's tool calls: concurrently, reported to the event handler, never raising."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from service.assistant.events import RunEventHandler, ToolCall, ToolOutcome
from service.schemas import ToolCallRecord


class ToolResultLike(Protocol):
    @property
    def call_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def output(self) -> str: ...
    @property
    def ok(self) -> bool: ...
    @property
    def duration_ms(self) -> int: ...


class Toolbox(Protocol):
    """The tool registry as the backends see it (`service.tools.ToolRegistry`)."""

    def responses_definitions(self) -> list[dict[str, Any]]: ...

    def assistants_definitions(self) -> list[dict[str, Any]]: ...

    async def call_many(
        self, calls: Sequence[tuple[str, str, str]]
    ) -> Sequence[ToolResultLike]: ...


async def run_tool_calls(
    calls: Sequence[ToolCall],
    toolbox: Toolbox,
    handler: RunEventHandler,
    records: list[ToolCallRecord],
) -> list[tuple[str, str]]:
    """Run one model turn's calls at once; return `(call_id, output)` pairs in call order."""
    for call in calls:
        await handler.on_tool_call_started(call)
    results = await toolbox.call_many([(c.call_id, c.name, c.arguments) for c in calls])
    for result in results:
        records.append(
            ToolCallRecord(
                name=result.name,
                call_id=result.call_id,
                ok=result.ok,
                duration_ms=result.duration_ms,
            )
        )
        await handler.on_tool_call_finished(
            ToolOutcome(result.call_id, result.name, result.ok, result.duration_ms)
        )
    return [(result.call_id, result.output) for result in results]
