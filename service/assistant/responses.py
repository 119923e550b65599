"""Responses API backend: a thread is a conversation (`conv_…`), each turn one streamed response.

A turn that ends with function calls is followed by another response on the same conversation
whose input is the tool outputs, until the model answers with text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai import AsyncOpenAI, BaseModel
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInputParam,
    ResponseOutputItemDoneEvent,
    ToolParam,
)

from service.assistant.abandon import settle_responses
from service.assistant.background import BackgroundRun
from service.assistant.events import RunEventHandler, RunResult, ToolCall
from service.assistant.failures import response_ended, stream_error, thread_missing
from service.assistant.footprint import Footprint
from service.assistant.retry import RetryPolicy
from service.assistant.stream import sse_json, within_idle_limit
from service.assistant.tooling import Toolbox, play_tool_rounds
from service.schemas import ToolCallRecord, Usage

# The answer's text: the message's output text, and a refusal's text, which is the answer the
# user sees when the model declines (README "Speaking the real API"). Reasoning summaries,
# code-interpreter code, tool-call arguments and every other delta are not the answer.
_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta"})

# The stream events the backend acts on besides text deltas, by their `type`; the SDK's
# lenient `construct` builds them (nested models included) the way its own stream does for a
# variant it recognises. Every other event type is skipped unparsed.
_TYPED_EVENTS: dict[str, type[BaseModel]] = {
    "response.created": ResponseCreatedEvent,
    "response.output_item.done": ResponseOutputItemDoneEvent,
    "response.completed": ResponseCompletedEvent,
    "response.failed": ResponseFailedEvent,
    "response.incomplete": ResponseIncompleteEvent,
    "error": ResponseErrorEvent,
}


@dataclass(frozen=True, slots=True)
class AssistantSpec:
    """The assistant as defined in settings.toml."""

    name: str
    model: str
    instructions: str


@dataclass(slots=True)
class _Turn:
    response_id: str | None = None
    calls: list[ToolCall] | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class _RequestTurns:
    """One request's model turns on its conversation (the `ModelTurns` of the tool loop)."""

    backend: ResponsesBackend
    thread_id: str
    message: str
    handler: RunEventHandler
    text_started: Callable[[], bool]
    text: list[str] = field(default_factory=list)
    usage: Usage | None = None
    response_id: str | None = None

    async def start(self) -> Sequence[ToolCall]:
        return await self._turn([{"role": "user", "content": self.message}])

    async def submit(self, outputs: Sequence[tuple[str, str]]) -> Sequence[ToolCall]:
        return await self._turn(
            [
                {"type": "function_call_output", "call_id": call_id, "output": output}
                for call_id, output in outputs
            ]
        )

    async def on_text(self, delta: str) -> None:
        self.text.append(delta)
        await self.handler.on_text_delta(delta)

    async def _turn(self, turn_input: list[dict[str, Any]]) -> Sequence[ToolCall]:
        turn = await self.backend._retry.run(
            functools.partial(
                self.backend._turn, self.thread_id, turn_input, self.handler, self.on_text
            ),
            may_retry=lambda: not self.text_started(),
        )
        self.response_id = turn.response_id or self.response_id
        self.usage = _add(self.usage, turn.usage)
        return turn.calls or []


class ResponsesBackend:
    """Runs requests with `client.responses.create(stream=True, conversation=...)`."""

    def __init__(
        self,
        client: AsyncOpenAI,
        spec: AssistantSpec,
        toolbox: Toolbox,
        *,
        retry: RetryPolicy,
        idle_timeout: float,
        background: bool = False,
    ) -> None:
        self._background = background  # OPENAI_BACKGROUND: service/assistant/background.py
        self._client = client
        self._spec = spec
        self._toolbox = toolbox
        self._tools = toolbox.responses_definitions()
        self._retry = retry
        self._idle = idle_timeout

    async def run(
        self,
        thread_id: str,
        message: str,
        handler: RunEventHandler,
        *,
        text_started: Callable[[], bool],
    ) -> RunResult:
        if self._background:
            return await BackgroundRun(
                self._client,
                model=self._spec.model,
                instructions=self._spec.instructions,
                tools=self._tools,
                toolbox=self._toolbox,
                retry=self._retry,
                idle_timeout=self._idle,
                thread_id=thread_id,
                handler=handler,
            ).run(message)
        turns = _RequestTurns(self, thread_id, message, handler, text_started)
        records: list[ToolCallRecord] = []
        await play_tool_rounds(turns, self._toolbox, handler, records)
        return RunResult(turns.response_id, "".join(turns.text), turns.usage, records)

    async def settle(
        self, thread_id: str, message: str, footprint: Footprint, *, erase: bool
    ) -> None:
        """After an abandoned run: see `service.assistant.abandon`."""
        await settle_responses(self._client, thread_id, message, footprint, erase=erase)

    async def _turn(
        self,
        thread_id: str,
        turn_input: list[dict[str, Any]],
        handler: RunEventHandler,
        on_text: Callable[[str], Any],
    ) -> _Turn:
        try:
            stream = await self._client.responses.create(
                model=self._spec.model,
                instructions=self._spec.instructions or openai.omit,
                conversation=thread_id,
                input=cast("ResponseInputParam", turn_input),
                tools=cast("list[ToolParam]", self._tools) or openai.omit,
                stream=True,
            )
        except openai.NotFoundError as exc:
            raise thread_missing(exc, thread_id) from exc

        turn = _Turn()
        calls: list[ToolCall] = []
        try:
            # The raw events: text deltas (nearly all of them) are read straight from the JSON;
            # only the few events used below become SDK models (see `sse_json`).
            async for data in within_idle_limit(sse_json(stream.response), self._idle):
                kind = data.get("type") if isinstance(data, dict) else None
                if kind in _TEXT_DELTAS:
                    delta = data.get("delta")
                    if isinstance(delta, str):
                        await on_text(delta)
                    continue
                model = _TYPED_EVENTS.get(kind) if isinstance(kind, str) else None
                if model is None:
                    continue
                event = model.construct(**data)
                if isinstance(event, ResponseOutputItemDoneEvent):
                    item = event.item
                    if isinstance(item, ResponseFunctionToolCall):
                        calls.append(ToolCall(item.call_id, item.name, item.arguments))
                elif isinstance(event, ResponseCreatedEvent):
                    turn.response_id = event.response.id
                    await handler.on_run_started(event.response.id)
                elif isinstance(event, ResponseCompletedEvent):
                    u = event.response.usage
                    if u is not None:
                        turn.usage = Usage(
                            input_tokens=u.input_tokens, output_tokens=u.output_tokens
                        )
                elif isinstance(event, ResponseFailedEvent | ResponseIncompleteEvent):
                    raise response_ended(event.response)
                elif isinstance(event, ResponseErrorEvent):
                    raise stream_error(event)
        finally:
            await stream.close()
        turn.calls = calls
        return turn


def _add(total: Usage | None, more: Usage | None) -> Usage | None:
    if more is None:
        return total
    if total is None:
        return more
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
    )
