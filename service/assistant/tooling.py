"""The model's tool calls: the tool-round loop both backends share, and running one round's
calls (concurrently, reported to the event handler, never raising)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from service.assistant.events import RunEventHandler, ToolCall, ToolOutcome
from service.errors import ServiceError
from service.schemas import ErrorCode, ToolCallRecord

MAX_TOOL_ROUNDS = 8
"""Tool round trips one request may make; a model still calling tools after that fails it."""


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


class ModelTurns(Protocol):
    """What a backend supplies to the tool-round loop: one model turn at a time.

    Each method streams one turn (its text goes to the handler as it arrives, retries are the
    backend's) and returns the function calls the turn ended with; none means it answered.
    """

    async def start(self) -> Sequence[ToolCall]:
        """The first turn: the user's message."""
        ...

    async def submit(self, outputs: Sequence[tuple[str, str]]) -> Sequence[ToolCall]:
        """The next turn: the `(call_id, output)` pairs of the previous turn's calls."""
        ...


async def play_tool_rounds(
    turns: ModelTurns,
    toolbox: Toolbox,
    handler: RunEventHandler,
    records: list[ToolCallRecord],
    *,
    max_rounds: int = MAX_TOOL_ROUNDS,
) -> None:
    """Start the turn, then run its tool calls and submit their outputs until the model
    answers; at most `max_rounds` round trips."""
    calls = await turns.start()
    rounds = 0
    while calls:
        if rounds >= max_rounds:
            raise ServiceError(
                ErrorCode.UPSTREAM_ERROR, f"The model called tools more than {max_rounds} times"
            )
        rounds += 1
        outputs = await run_tool_calls(calls, toolbox, handler, records)
        calls = await turns.submit(outputs)
