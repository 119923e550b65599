"""Background responses (contract §12): model turns that outlive the replica running them.

With `OPENAI_BACKGROUND=true` the Responses backend hands each request to `BackgroundRun`:
every model turn is created with `background: true, stream: true`, so the API goes on
generating when the stream (or the whole process) goes away, and the request's `RunCheckpoint`
(service/coordination/reattach.py) records how far it got before anything reaches the hub.

A replica that receives the request again (the broker redelivers it when the first one dies)
opens the same checkpoint (`Reattacher.open`) and continues where the hub sequence stopped:

* a turn whose text all reached the hub (`done`) is never streamed or created again: the calls
  it ended with are in the state;
* the turn in progress is streamed again from `GET /v1/responses/{id}?stream=true&
  starting_after=<after>`, so each delta reaches the hub once;
* a tool call that returned is not run again: its output is in the state (a call still running
  at the crash runs again);
* the turns after it are created as usual.

A broken model stream (connection reset, idle proxy) is re-attached the same way within the
process, instead of failing the request. Where re-attaching is impossible (the state is gone,
the response expired, was cancelled, or never reached the API), `Reattacher.open` gives a fresh
checkpoint and the request runs again from the start, as in version 1.

Cancelling the request (§8: cancel, interrupt, shutdown past its grace, run timeout) cancels
the response in progress on the API side too (`POST /v1/responses/{id}/cancel`): closing a
background stream alone does not stop the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, cast

import openai
from openai import AsyncOpenAI
from openai.types.responses import ResponseFailedEvent, ResponseInputParam, ToolParam

from service.assistant.events import RunEventHandler, RunResult, ToolCall, ToolOutcome
from service.assistant.failures import classify, response_ended, stream_error, thread_missing
from service.assistant.retry import RetryPolicy
from service.assistant.stream import sse_json, within_idle_limit
from service.assistant.tooling import MAX_TOOL_ROUNDS, Toolbox
from service.coordination.reattach import (
    ReattachState,
    ReattachStore,
    RunCheckpoint,
    ToolRun,
    current_checkpoint,
)
from service.errors import ServiceError
from service.schemas import ErrorCode, ToolCallRecord, Usage

log = logging.getLogger("service.assistant")

# The answer's text, as in the streamed backend (responses.py): output text and refusals.
_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta"})
CANCEL_TIMEOUT = 5.0
# Response statuses a re-attach can follow to an answer.
_FOLLOWABLE = frozenset({"queued", "in_progress", "completed", "failed", "incomplete"})


class Reattacher:
    """Opens each request's checkpoint: the one another replica left, when it can be followed."""

    def __init__(self, store: ReattachStore, client: AsyncOpenAI) -> None:
        self._store = store
        self._client = client

    async def open(self, message_id: str, *, redelivered: bool) -> RunCheckpoint:
        """The request's checkpoint: resumed from the stored state when this is a redelivery
        that can re-attach; otherwise fresh (and any stored state is dropped)."""
        state: ReattachState | None = None
        try:
            state = await self._store.load(message_id)
        except Exception as exc:
            log.warning("re-attach state of message_id=%s unreadable (%r)", message_id, exc)
        if state is not None and redelivered and await self._followable(message_id, state):
            log.info(
                "message_id=%s re-attaches at hub seq %d (%d turn(s), %d tool output(s) kept)",
                message_id,
                state.hub_seq,
                len(state.turns),
                len(state.tools),
            )
            return RunCheckpoint(message_id, self._store, state)
        if state is not None:
            # A fresh publish of the same message_id is a deliberate retry: start clean.
            with contextlib.suppress(Exception):
                await self._store.drop(message_id)
        return RunCheckpoint(message_id, self._store)

    async def _followable(self, message_id: str, state: ReattachState) -> bool:
        if state.final:
            return True
        pending = next((t for t in state.turns if not t.done), None)
        if pending is None:
            return True
        try:
            # Raw: the SDK's `Response` model costs ~100 ms to build the first time in a process,
            # and only the status is needed.
            raw = await self._client.responses.with_raw_response.retrieve(pending.response_id)
            status = raw.http_response.json().get("status")
        except (openai.APIError, ValueError, AttributeError) as exc:
            log.info(
                "message_id=%s cannot re-attach to %s (%s): it runs again from the start",
                message_id,
                pending.response_id,
                type(exc).__name__,
            )
            return False
        if status in _FOLLOWABLE:
            return True
        log.info(
            "message_id=%s cannot re-attach: response %s is %s; it runs again from the start",
            message_id,
            pending.response_id,
            status,
        )
        return False

    async def close(self) -> None:
        await self._store.close()


class _StreamBroke(Exception):
    """The stream of a created response ended early: follow it again from where it stopped."""


class BackgroundRun:
    """One request's model turns as background responses, resumable from its checkpoint."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        model: str,
        instructions: str,
        tools: list[dict[str, Any]],
        toolbox: Toolbox,
        retry: RetryPolicy,
        idle_timeout: float,
        thread_id: str,
        handler: RunEventHandler,
    ) -> None:
        self._client = client
        self._model = model
        self._instructions = instructions
        self._tools = tools
        self._toolbox = toolbox
        self._retry = retry
        self._idle = idle_timeout
        self._thread_id = thread_id
        self._handler = handler
        self._checkpoint = current_checkpoint.get() or RunCheckpoint("", None)
        self._text: list[str] = [self._checkpoint.state.text]
        self._active: str | None = None  # the response generating now (cancelled with the run)
        self._last_seq = -1  # the last stream event read

    async def run(self, message: str) -> RunResult:
        checkpoint = self._checkpoint
        state = checkpoint.state
        if state.final:
            # The final payload went out before the crash: publish the final event only.
            if state.error is not None:
                code, text, retryable = state.error
                raise ServiceError(ErrorCode(code), text, retryable=retryable)
            return self._result()
        turn_input: list[dict[str, Any]] = [{"role": "user", "content": message}]
        try:
            for index in range(MAX_TOOL_ROUNDS + 1):
                calls = await self._turn(index, turn_input)
                if not calls:
                    return self._result()
                outputs = await self._run_tools(calls)
                turn_input = [
                    {"type": "function_call_output", "call_id": call_id, "output": output}
                    for call_id, output in outputs
                ]
        except asyncio.CancelledError:
            await self._cancel_active()
            raise
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR, f"The model called tools more than {MAX_TOOL_ROUNDS} times"
        )

    def _result(self) -> RunResult:
        state = self._checkpoint.state
        usage: Usage | None = None
        for turn in state.turns:
            if turn.usage is not None:
                before = usage or Usage(input_tokens=0, output_tokens=0)
                usage = Usage(
                    input_tokens=before.input_tokens + turn.usage[0],
                    output_tokens=before.output_tokens + turn.usage[1],
                )
        records = [
            ToolCallRecord(name=t.name, call_id=call_id, ok=t.ok, duration_ms=t.duration_ms)
            for call_id, t in state.tools.items()
        ]
        run_id = state.turns[-1].response_id if state.turns else None
        return RunResult(run_id, "".join(self._text), usage, records)

    # -- one model turn --------------------------------------------------------------------

    async def _turn(self, index: int, turn_input: list[dict[str, Any]]) -> list[ToolCall]:
        """Stream turn `index` to its end (creating it unless it exists); its function calls."""
        recorded = self._checkpoint.turn(index)
        if recorded is not None:
            # A turn another replica created: this run's handlers (the §8 footprint) learn it.
            await self._handler.on_run_started(recorded.response_id)
        if recorded is not None and recorded.done:
            return [ToolCall(*call) for call in recorded.calls or ()]
        if recorded is None:
            stream = await self._retry.run(lambda: self._create(turn_input), may_retry=lambda: True)
            response_id: str | None = None
            after = -1
        else:
            stream = None
            response_id, after = recorded.response_id, recorded.after
        attempt = 1
        while True:
            try:
                if stream is None:
                    assert response_id is not None
                    stream = await self._client.responses.retrieve(
                        response_id, stream=True, starting_after=after
                    )
                return await self._follow(index, stream, response_id)
            except (_StreamBroke, openai.APIConnectionError) as exc:
                response_id = self._active
                turn = self._checkpoint.turn(index)
                if response_id is None or turn is None or attempt >= self._retry.attempts:
                    raise classify(
                        exc if isinstance(exc, openai.APIError) else ConnectionError()
                    ) from exc
                after = max(self._last_seq, turn.after)
                log.warning(
                    "stream of %s broke at %d (%s); following it again",
                    response_id,
                    after,
                    type(exc).__name__,
                )
                await asyncio.sleep(self._retry.backoff * attempt)
                attempt += 1
                stream = None

    async def _create(self, turn_input: list[dict[str, Any]]) -> Any:
        try:
            return await self._client.responses.create(
                model=self._model,
                instructions=self._instructions or openai.omit,
                conversation=self._thread_id,
                input=cast("ResponseInputParam", turn_input),
                tools=cast("list[ToolParam]", self._tools) or openai.omit,
                background=True,
                stream=True,
            )
        except openai.NotFoundError as exc:
            raise thread_missing(exc, self._thread_id) from exc

    async def _follow(self, index: int, stream: Any, response_id: str | None) -> list[ToolCall]:
        """Read one response's stream (new, or followed again) until the response ends."""
        checkpoint = self._checkpoint
        handler = self._handler
        self._active = response_id
        self._last_seq = -1
        try:
            async for data in within_idle_limit(sse_json(stream.response), self._idle):
                if not isinstance(data, dict):
                    continue
                kind = data.get("type")
                seq = data.get("sequence_number")
                if isinstance(seq, int):
                    self._last_seq = seq
                if kind in _TEXT_DELTAS:
                    delta = data.get("delta")
                    if isinstance(delta, str) and delta and isinstance(seq, int):
                        checkpoint.text_delta(index, seq, delta)
                        self._text.append(delta)
                        await handler.on_text_delta(delta)
                elif kind == "response.created":
                    created = data["response"]["id"]
                    self._active = created
                    await checkpoint.begin_turn(index, created)
                    await handler.on_run_started(created)
                elif kind == "response.completed":
                    response = data["response"]
                    calls = _calls(response)
                    usage = response.get("usage") or None
                    checkpoint.turn_completed(
                        index,
                        [(c.call_id, c.name, c.arguments) for c in calls],
                        (usage["input_tokens"], usage["output_tokens"]) if usage else None,
                    )
                    self._active = None
                    return calls
                elif kind in ("response.failed", "response.incomplete"):
                    self._active = None
                    raise response_ended(ResponseFailedEvent.construct(**data).response)
                elif kind == "error":
                    raise stream_error(data)
        finally:
            await stream.close()
        raise _StreamBroke()

    async def _cancel_active(self) -> None:
        """The run was abandoned: stop the response generating, not only its stream."""
        response_id, self._active = self._active, None
        if response_id is None:
            return
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                await asyncio.shield(self._client.responses.cancel(response_id))
            log.info("background response %s cancelled", response_id)
        except (Exception, asyncio.CancelledError) as exc:
            log.warning("background response %s not cancelled (%r)", response_id, exc)

    # -- tools -----------------------------------------------------------------------------

    async def _run_tools(self, calls: Sequence[ToolCall]) -> list[tuple[str, str]]:
        """Run the calls that have not returned yet; reuse the outputs of those that have."""
        checkpoint = self._checkpoint
        state = checkpoint.state
        fresh = [c for c in calls if c.call_id not in state.tools]
        for call in fresh:
            if call.call_id not in state.announced:
                checkpoint.tool_announced(call.call_id)
                await self._handler.on_tool_call_started(call)
        if fresh:
            results = await self._toolbox.call_many(
                [(c.call_id, c.name, c.arguments) for c in fresh]
            )
            for result in results:
                checkpoint.tool_finished(
                    result.call_id,
                    ToolRun(result.name, result.output, result.ok, result.duration_ms),
                )
                await self._handler.on_tool_call_finished(
                    ToolOutcome(result.call_id, result.name, result.ok, result.duration_ms)
                )
        return [(c.call_id, state.tools[c.call_id].output) for c in calls]


def _calls(response: dict[str, Any]) -> list[ToolCall]:
    return [
        ToolCall(item["call_id"], item["name"], item.get("arguments") or "{}")
        for item in response.get("output") or ()
        if isinstance(item, dict) and item.get("type") == "function_call"
    ]
