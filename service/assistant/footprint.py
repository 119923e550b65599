"""What one request's run added to its conversation, recorded as it happens.

A `Footprint` is a `RunEventHandler` that passes every event on to the handler it wraps and
remembers what it needs to undo or complete the run later (`service.assistant.abandon`): the
response or run ids the backend started, the tool calls of each round, the answer text so far,
and (Assistants) the id of the user message the backend added to the thread.

The backend reports the last one through `note_message`, which finds the footprint of the
current task in a context variable: no backend signature changes.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from service.assistant.events import RunEventHandler, RunResult, ToolCall, ToolOutcome
from service.errors import ServiceError

_current: contextvars.ContextVar[Footprint | None] = contextvars.ContextVar(
    "service_footprint", default=None
)


def note_message(message_id: str) -> None:
    """The backend added a user message to the thread (Assistants): remember its id."""
    footprint = _current.get()
    if footprint is not None:
        footprint.message_ids.append(message_id)


@dataclass(eq=False)
class Footprint(RunEventHandler):
    """Records a run's ids, tool rounds and text while forwarding every event to `inner`."""

    inner: RunEventHandler
    run_ids: list[str] = field(default_factory=list)
    """Response ids (Responses) or run ids (Assistants), in the order they started."""
    tool_rounds: list[list[str]] = field(default_factory=list)
    """Call ids of each round of tool calls the model asked for."""
    message_ids: list[str] = field(default_factory=list)
    """User messages the backend added itself (Assistants)."""
    text_parts: list[str] = field(default_factory=list)
    _round_open: bool = False

    def activate(self) -> contextvars.Token[Footprint | None]:
        """Make this the current task's footprint (for `note_message`)."""
        return _current.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token[Footprint | None]) -> None:
        _current.reset(token)

    @property
    def text(self) -> str:
        """The answer text the model produced so far (what the hub was sent)."""
        return "".join(self.text_parts)

    @property
    def reached_model(self) -> bool:
        return bool(self.run_ids)

    async def on_run_started(self, run_id: str | None) -> None:
        if run_id is not None and run_id not in self.run_ids:
            self.run_ids.append(run_id)
        self._round_open = False
        await self.inner.on_run_started(run_id)

    async def on_tool_call_started(self, call: ToolCall) -> None:
        if not self._round_open:
            self.tool_rounds.append([])
            self._round_open = True
        self.tool_rounds[-1].append(call.call_id)
        await self.inner.on_tool_call_started(call)

    async def on_tool_call_finished(self, outcome: ToolOutcome) -> None:
        await self.inner.on_tool_call_finished(outcome)

    async def on_text_delta(self, delta: str) -> None:
        self._round_open = False
        self.text_parts.append(delta)
        await self.inner.on_text_delta(delta)

    async def on_completed(self, result: RunResult) -> None:
        await self.inner.on_completed(result)

    async def on_failed(self, error: ServiceError) -> None:
        await self.inner.on_failed(error)
