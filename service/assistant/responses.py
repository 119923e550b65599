"""Responses API backend: a thread is a conversation (`conv_…`), each turn one streamed response.

A turn that ends with function calls is followed by another response on the same conversation
whose input is the tool outputs, until the model answers with text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
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

from service.assistant.events import RunEventHandler, RunResult, ToolCall
from service.assistant.retry import RetryPolicy
from service.assistant.stream import sse_json, within_idle_limit
from service.assistant.tooling import Toolbox, run_tool_calls
from service.errors import ServiceError, ThreadNotFound
from service.schemas import ErrorCode, ToolCallRecord, Usage

MAX_TOOL_ROUNDS = 8

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
    ) -> None:
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
        text: list[str] = []
        records: list[ToolCallRecord] = []
        usage: Usage | None = None
        turn_input: list[dict[str, Any]] = [{"role": "user", "content": message}]
        response_id: str | None = None

        async def on_text(delta: str) -> None:
            text.append(delta)
            await handler.on_text_delta(delta)

        for _ in range(MAX_TOOL_ROUNDS + 1):
            turn = await self._retry.run(
                functools.partial(self._turn, thread_id, turn_input, handler, on_text),
                may_retry=lambda: not text_started(),
            )
            response_id = turn.response_id or response_id
            usage = _add(usage, turn.usage)
            if not turn.calls:
                return RunResult(response_id, "".join(text), usage, records)
            outputs = await run_tool_calls(turn.calls, self._toolbox, handler, records)
            turn_input = [
                {"type": "function_call_output", "call_id": call_id, "output": output}
                for call_id, output in outputs
            ]
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR, f"The model called tools more than {MAX_TOOL_ROUNDS} times"
        )

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
            if _error_code(exc) == "model_not_found":
                raise
            raise ThreadNotFound(thread_id) from exc

        turn = _Turn()
        calls: list[ToolCall] = []
        try:
            # The raw events: text deltas (nearly all of them) are read straight from the JSON;
            # only the few events used below become SDK models (see `sse_json`).
            async for data in within_idle_limit(sse_json(stream.response), self._idle):
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "response.output_text.delta":
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
                    raise _response_error(event.response)
                elif isinstance(event, ResponseErrorEvent):
                    rate_limited = event.code == "rate_limit_exceeded"
                    raise ServiceError(
                        ErrorCode.RATE_LIMITED if rate_limited else ErrorCode.UPSTREAM_ERROR,
                        "The model stream reported an error",
                        retryable=True,
                    )
        finally:
            await stream.close()
        turn.calls = calls
        return turn


def _response_error(response: Any) -> ServiceError:
    error = getattr(response, "error", None)
    code = getattr(error, "code", None)
    if code == "rate_limit_exceeded":
        return ServiceError(ErrorCode.RATE_LIMITED, "The model is rate limited", retryable=True)
    if response.status == "incomplete":
        return ServiceError(ErrorCode.UPSTREAM_ERROR, "The model's answer was incomplete")
    return ServiceError(
        ErrorCode.UPSTREAM_ERROR,
        "The model failed to answer",
        retryable=code in (None, "server_error"),
    )


def _error_code(exc: openai.APIStatusError) -> str | None:
    body = exc.body
    if isinstance(body, dict):
        code = body.get("code")
        if isinstance(code, str):
            return code
    return None


def _add(total: Usage | None, more: Usage | None) -> Usage | None:
    if more is None:
        return total
    if total is None:
        return more
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
    )
