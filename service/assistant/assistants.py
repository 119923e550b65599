"""Assistants API backend (legacy): a thread is `thread_…`, a request is one run on it.

The user message is added to the thread, then one run is streamed with the SDK's event-handler
helper. When the run stops at `requires_action`, the tool calls run here and the outputs go
back with `submit_tool_outputs_stream` on the same run, so a tool round trip stays one logical
run. A thread holds one active run at a time: a run still active when a request arrives
(another replica's, or one left by a crash) is waited for, or cancelled once it is stale.

The SDK marks every Assistants API method deprecated (the API shuts down on 2026-08-26);
`legacy_api()` silences exactly that warning, around each call that expects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import anyio
import httpx2
import openai
from openai import AsyncOpenAI, BaseModel
from openai.lib.streaming import AsyncAssistantEventHandler, AsyncAssistantStreamManager
from openai.types.beta import AssistantStreamEvent, AssistantToolParam
from openai.types.beta.threads import (
    Message,
    MessageDelta,
    RefusalDeltaBlock,
    Run,
    Text,
    TextDelta,
)
from openai.types.beta.threads.run_submit_tool_outputs_params import ToolOutput

from service.assistant.abandon import settle_assistants
from service.assistant.events import RunEventHandler, RunResult, ToolCall
from service.assistant.failures import (
    CONNECTION,
    classify,
    run_ended,
    stream_error,
    thread_missing,
)
from service.assistant.footprint import Footprint, note_message
from service.assistant.retry import RetryPolicy
from service.assistant.stream import within_idle_limit
from service.assistant.tooling import Toolbox, play_tool_rounds
from service.config import ConfigurationError
from service.errors import ServiceError, ThreadNotFound
from service.schemas import ErrorCode, ToolCallRecord, Usage

T = TypeVar("T")
log = logging.getLogger("service.assistant")

MAX_THREAD_RACES = 10
"""Times a request may find the thread busy again right after waiting for it to be free."""
ABANDON_WAIT = 3.0
"""Longest wait, seconds, for the cancel request of a run this request gives up on."""

ACTIVE_STATUSES = frozenset({"queued", "in_progress", "requires_action", "cancelling"})
_RUN_EVENT_PREFIX = "thread.run."
_FAILED_STATUSES = frozenset({"failed", "expired", "cancelled", "incomplete"})
_TERMINAL_STATUSES = _FAILED_STATUSES | {"completed"}
# What the SDK's Assistants helpers re-raise bare instead of `openai.APIConnectionError`
# (see `openai.lib.streaming._assistants._aiter_events`).
_RAW_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx2.RequestError,
    ssl.SSLError,
    anyio.EndOfStream,
)
_CANCEL_ERRORS: tuple[type[Exception], ...] = (openai.APIError, *_RAW_TRANSPORT_ERRORS)

MISSING_ASSISTANT_ID = (
    "OPENAI_ASSISTANT_ID is not set, and OPENAI_API=assistants needs it. Create the assistant "
    "with `make assistant-create` (or `python -m service assistant create`) and set "
    "OPENAI_ASSISTANT_ID to the id it prints, or use OPENAI_API=responses."
)


class AssistantNotConfigured(ConfigurationError):
    """The Assistants backend was selected without an assistant id: a start-up error."""


# The SDK's `@deprecated` messages on the Assistants API: most methods say the first, the
# `beta.assistants` ones just "deprecated".
_DEPRECATION_MESSAGES = r"(The Assistants API is deprecated|deprecated$)"


@contextlib.contextmanager
def legacy_api() -> Iterator[None]:
    """Silence the SDK's deprecation warning for the Assistants API call made inside.

    Wrap only the synchronous call that creates the request (never an `await`): the warning is
    raised when the method is called, and `catch_warnings` changes process-wide state, so no
    other task may run while it is active.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _DEPRECATION_MESSAGES, DeprecationWarning)
        yield


@dataclass(slots=True)
class _RunState:
    """What one request has gathered across its segments (streams) and retries."""

    handler: RunEventHandler
    text: list[str] = field(default_factory=list)
    records: list[ToolCallRecord] = field(default_factory=list)
    usage: Usage | None = None
    run_id: str | None = None
    status: str | None = None
    """The last status seen for `run_id`; `None` when unknown (the run may be active)."""

    @property
    def may_be_active(self) -> bool:
        return self.run_id is not None and self.status not in _TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class _Segment:
    """How one stream ended: the run completed, or it waits for these tool calls."""

    calls: list[ToolCall] | None


class _RunBridge(AsyncAssistantEventHandler):
    """Translates one Assistants stream into `RunEventHandler` calls.

    Events are dispatched on their `event` name, never on their parsed class: the SDK parses an
    unknown `thread.*` event into whatever model fits first.
    """

    def __init__(self, state: _RunState) -> None:
        super().__init__()
        self._state = state
        self.calls: list[ToolCall] | None = None
        self.completed = False

    async def on_event(self, event: AssistantStreamEvent) -> None:
        name: object = getattr(event, "event", None)
        if not isinstance(name, str):
            _check_unnamed(event)
            return
        if name == "error":  # what the SDK would hand over if it kept the event's name
            raise stream_error(event.data)
        if not name.startswith(_RUN_EVENT_PREFIX) or name.startswith("thread.run.step."):
            return
        run = cast(Run, event.data)
        status = name.removeprefix(_RUN_EVENT_PREFIX)
        if status == "completed" and getattr(run, "status", None) in _FAILED_STATUSES:
            # Seen on the real API: `thread.run.completed` carrying a run whose status is
            # "incomplete". The run's own status is the truth.
            status = run.status
        if status == "created":
            self._state.run_id, self._state.status = run.id, "queued"
            await self._state.handler.on_run_started(run.id)
            return
        self._state.status = status
        if status == "requires_action":
            self.calls = _required_calls(run)
        elif status == "completed":
            self.completed = True
            self._state.usage = _usage(run) or self._state.usage
        elif status in _FAILED_STATUSES:
            raise run_ended(status, run)

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        if delta.value:
            await self._text(delta.value)

    async def on_message_delta(self, delta: MessageDelta, snapshot: Message) -> None:
        # A refusal is the answer the user sees when the model declines (README "Speaking
        # the real API"); the SDK hands only text parts to `on_text_delta`.
        for part in delta.content or ():
            if isinstance(part, RefusalDeltaBlock) and part.refusal:
                await self._text(part.refusal)

    async def _text(self, value: str) -> None:
        self._state.text.append(value)
        await self._state.handler.on_text_delta(value)

    def outcome(self) -> _Segment:
        if self.calls is not None:
            return _Segment(self.calls)
        if self.completed:
            return _Segment(None)
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR,
            "The run stream ended before the run finished",
            retryable=True,
        )


@dataclass(slots=True)
class _RunTurns:
    """One request's run, a turn per stream (the `ModelTurns` of the tool loop): the user
    message starts a run; tool outputs continue the same run."""

    backend: AssistantsBackend
    thread_id: str
    message: str
    state: _RunState
    text_started: Callable[[], bool]

    async def start(self) -> Sequence[ToolCall]:
        backend, thread_id = self.backend, self.thread_id
        await backend._retry.run(lambda: backend._check_thread(thread_id), may_retry=lambda: True)
        await backend._retry.run(
            lambda: backend._when_thread_idle(
                thread_id, lambda: backend._add_message(thread_id, self.message)
            ),
            may_retry=lambda: True,
        )
        return await self._segment(None)

    async def submit(self, outputs: Sequence[tuple[str, str]]) -> Sequence[ToolCall]:
        return await self._segment(
            [{"tool_call_id": call_id, "output": output} for call_id, output in outputs]
        )

    async def _segment(self, outputs: list[ToolOutput] | None) -> Sequence[ToolCall]:
        segment = await self.backend._segment_with_retries(
            self.thread_id, self.state, outputs, self.text_started
        )
        return segment.calls or []


class AssistantsBackend:
    """Runs requests as Assistants API runs of the assistant `OPENAI_ASSISTANT_ID`."""

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        assistant_id: str,
        toolbox: Toolbox,
        retry: RetryPolicy,
        idle_timeout: float,
        stale_after: float = 300.0,
        poll_interval: float = 0.5,
        max_poll_interval: float = 4.0,
    ) -> None:
        """Raises `AssistantNotConfigured` when `assistant_id` is empty.

        `stale_after` (RUN_TIMEOUT): an active run older than this is left over by a crash
        and is cancelled; a younger one is waited for, polling every `poll_interval` seconds,
        doubling up to `max_poll_interval`.
        """
        if not assistant_id.strip():
            raise AssistantNotConfigured(MISSING_ASSISTANT_ID)
        self._client = client
        self._assistant_id = assistant_id.strip()
        self._toolbox = toolbox
        # Offered with every run, so the tools are the ones configured here and now, whatever
        # the remote assistant was created with.
        self._tools = cast("list[AssistantToolParam]", toolbox.assistants_definitions())
        self._retry = retry
        self._idle = idle_timeout
        self._stale_after = stale_after
        self._poll_interval = poll_interval
        self._max_poll_interval = max_poll_interval
        self._cancelling: set[asyncio.Task[None]] = set()

    async def run(
        self,
        thread_id: str,
        message: str,
        handler: RunEventHandler,
        *,
        text_started: Callable[[], bool],
    ) -> RunResult:
        state = _RunState(handler)
        turns = _RunTurns(self, thread_id, message, state, text_started)
        try:
            await play_tool_rounds(turns, self._toolbox, handler, state.records)
            return RunResult(state.run_id, "".join(state.text), state.usage, state.records)
        except BaseException:
            # Never leave an active run behind: it would block the thread for its next request.
            if state.may_be_active and state.run_id is not None:
                await self._abandon(thread_id, state.run_id)
            raise

    async def settle(
        self, thread_id: str, message: str, footprint: Footprint, *, erase: bool
    ) -> None:
        """After an abandoned run: see `service.assistant.abandon`."""
        await settle_assistants(self._client, thread_id, footprint, erase=erase)

    # --- one stream of the run ----------------------------------------------------------

    async def _segment_with_retries(
        self,
        thread_id: str,
        state: _RunState,
        outputs: list[ToolOutput] | None,
        text_started: Callable[[], bool],
    ) -> _Segment:
        attempts = 0
        pending = outputs  # tool outputs still to hand to `state.run_id`

        async def attempt() -> _Segment:
            nonlocal attempts, pending
            attempts += 1
            if pending is not None and (
                attempts == 1 or await self._still_waiting(thread_id, state)
            ):
                assert state.run_id is not None
                return await self._submit(thread_id, state, state.run_id, pending)
            # A retry on a run that cannot be resumed: start a new run on the thread (after
            # cancelling ours if it may still be going; its stream is gone).
            pending = None
            if attempts > 1 and state.may_be_active and state.run_id is not None:
                await self._cancel_quietly(thread_id, state.run_id)
            return await self._when_thread_idle(thread_id, lambda: self._start(thread_id, state))

        return await self._retry.run(attempt, may_retry=lambda: not text_started())

    async def _still_waiting(self, thread_id: str, state: _RunState) -> bool:
        """After a failed submit: does the run still wait for the tool outputs?"""
        assert state.run_id is not None
        with legacy_api():
            call = self._client.beta.threads.runs.retrieve(state.run_id, thread_id=thread_id)
        run = await call
        state.status = run.status
        return run.status == "requires_action"

    async def _start(self, thread_id: str, state: _RunState) -> _Segment:
        bridge = _RunBridge(state)
        try:
            with legacy_api():
                manager = self._client.beta.threads.runs.stream(
                    thread_id=thread_id,
                    assistant_id=self._assistant_id,
                    tools=self._tools,
                    event_handler=bridge,
                )
            return await self._play(manager)
        except openai.NotFoundError as exc:
            raise await self._not_found(thread_id) from exc

    async def _submit(
        self, thread_id: str, state: _RunState, run_id: str, outputs: list[ToolOutput]
    ) -> _Segment:
        with legacy_api():
            manager = self._client.beta.threads.runs.submit_tool_outputs_stream(
                thread_id=thread_id,
                run_id=run_id,
                tool_outputs=outputs,
                event_handler=_RunBridge(state),
            )
        return await self._play(manager)

    async def _play(self, manager: AsyncAssistantStreamManager[_RunBridge]) -> _Segment:
        try:
            async with manager as bridge:
                async for _ in within_idle_limit(bridge, self._idle):
                    pass
                return bridge.outcome()
        except httpx2.TimeoutException as exc:
            raise classify(exc) from exc
        except _RAW_TRANSPORT_ERRORS as exc:
            raise CONNECTION.error() from exc

    # --- the thread ---------------------------------------------------------------------

    async def _check_thread(self, thread_id: str) -> None:
        with legacy_api():
            call = self._client.beta.threads.retrieve(thread_id)
        try:
            await call
        except openai.NotFoundError as exc:
            raise thread_missing(exc, thread_id) from exc

    async def _add_message(self, thread_id: str, message: str) -> None:
        with legacy_api():
            call = self._client.beta.threads.messages.create(
                thread_id, role="user", content=message
            )
        try:
            created = await call
        except openai.NotFoundError as exc:
            raise thread_missing(exc, thread_id) from exc
        note_message(created.id)

    async def _not_found(self, thread_id: str) -> ServiceError:
        """A 404 on run creation: the thread vanished, or the assistant does not exist."""
        try:
            await self._check_thread(thread_id)
        except ThreadNotFound as error:
            return error
        return ServiceError(
            ErrorCode.UPSTREAM_ERROR,
            f"Assistant {self._assistant_id} was not found: check OPENAI_ASSISTANT_ID",
        )

    async def _when_thread_idle(self, thread_id: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call`, which the API refuses (400) while the thread has an active run.

        Optimistic: the common case costs no extra request. On a 400, an active run on the
        thread means we raced with it: wait for it (or cancel it when stale), then try again.
        """
        for _ in range(MAX_THREAD_RACES):
            try:
                return await call()
            except openai.BadRequestError:
                if not await self._active_runs(thread_id):
                    raise
            await self._wait_until_idle(thread_id)
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR,
            f"Thread {thread_id} kept getting new runs from elsewhere",
            retryable=True,
        )

    async def _wait_until_idle(self, thread_id: str) -> None:
        """Poll (with backoff) until no run is active on the thread; cancel stale ones."""
        delay = self._poll_interval
        cancelled: set[str] = set()
        while active := await self._active_runs(thread_id):
            now = time.time()
            for run in active:
                age = now - run.created_at
                if run.status == "cancelling" or run.id in cancelled or age < self._stale_after:
                    continue
                log.warning(
                    "thread %s: cancelling stale run %s (%s for %.0f s)",
                    thread_id,
                    run.id,
                    run.status,
                    age,
                )
                await self._cancel_quietly(thread_id, run.id)
                cancelled.add(run.id)
            log.info(
                "thread %s has an active run (%s); waiting %.2f s",
                thread_id,
                ", ".join(f"{run.id} {run.status}" for run in active),
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_poll_interval)

    async def _active_runs(self, thread_id: str) -> list[Run]:
        with legacy_api():
            pages = self._client.beta.threads.runs.list(thread_id, limit=20, order="desc")
        try:
            page = await pages
        except openai.NotFoundError as exc:
            raise thread_missing(exc, thread_id) from exc
        return [run for run in page.data if run.status in ACTIVE_STATUSES]

    # --- giving up on a run ---------------------------------------------------------------

    async def _cancel_quietly(self, thread_id: str, run_id: str) -> None:
        """Ask the API to cancel a run; a run that already ended (400) is fine."""
        with legacy_api():
            call = self._client.beta.threads.runs.cancel(run_id, thread_id=thread_id)
        try:
            await call
        except _CANCEL_ERRORS as exc:
            log.info(
                "thread %s: cancelling run %s failed: %s", thread_id, run_id, type(exc).__name__
            )
        else:
            log.info("thread %s: run %s cancelled", thread_id, run_id)

    async def _abandon(self, thread_id: str, run_id: str) -> None:
        """Cancel the run this request gives up on, waiting at most `ABANDON_WAIT` for it.

        Runs in its own task, so that it completes even when this request is being cancelled.
        """
        task = asyncio.create_task(self._cancel_quietly(thread_id, run_id))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)
        await asyncio.wait({task}, timeout=ABANDON_WAIT)


def _required_calls(run: Run) -> list[ToolCall]:
    action = getattr(run, "required_action", None)
    submit = getattr(action, "submit_tool_outputs", None)
    calls = getattr(submit, "tool_calls", None)
    if not calls:
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR, "The run asked for tool outputs without naming tool calls"
        )
    return [ToolCall(call.id, call.function.name, call.function.arguments) for call in calls]


def _usage(run: Run) -> Usage | None:
    usage = getattr(run, "usage", None)
    if usage is None:
        return None
    return Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)


def _check_unnamed(event: object) -> None:
    """An event the SDK parsed without its name: raise if it is an `error` event.

    The run-stream helpers keep the name of `thread.*` events only. Any other SSE event, and
    so the API's `error` event, reaches the handler as its bare data parsed into whichever
    model of the union fits first: `ThreadCreated(event=None, data=None, message=..., code=...)`
    (the error's fields as extras), or a plain string or number. The SDK then fails on it with
    an AttributeError unless it is a model, so anything that is not is an unreadable stream.
    """
    if not isinstance(event, BaseModel):
        raise ServiceError(
            ErrorCode.UPSTREAM_ERROR, "The model stream sent an unreadable event", retryable=True
        )
    fields = event.model_extra or {}
    if fields.keys() & {"error", "code", "message"}:
        raise stream_error(fields)
    log.debug("ignoring an unnamed stream event with fields %s", sorted(fields))
