"""A fake OpenAI API on loopback, scripted by tests, that the real ``openai`` SDK cannot tell
from the real thing.

It serves the Responses + Conversations API (the service's default backend) and the legacy
Assistants API, both streamed as server-sent events shaped like the real ones (every event
parses into its typed SDK model). What the model says is scripted per test with the steps of
:mod:`tests.fakes.script`; unscripted messages get ``"Echo: <message>"`` in word chunks.

Endpoints (all under ``/v1``)::

    POST   /responses                       stream=true only; conversation, previous_response_id
    POST   /conversations                   GET/DELETE /conversations/{id}
    POST   /assistants   GET /assistants    GET/DELETE /assistants/{id}
    POST   /threads                         GET/DELETE /threads/{id}
    POST   /threads/{id}/messages           GET /threads/{id}/messages
    POST   /threads/{id}/runs               stream=true only; GET lists runs (newest first)
    GET    /threads/{id}/runs/{run}         POST .../cancel, POST .../submit_tool_outputs

Every conversation, thread and assistant id exists (nothing has to be created first) except
those starting with ``conv_missing``, ``thread_missing``, ``asst_missing`` (and response ids
starting with ``resp_missing``): those get the API's 404 error body.

Rules the real API enforces that the fake enforces too (400 with the real error body):
tool outputs must answer every pending function call and only known ones; a thread with an
active run (``queued``, ``in_progress``, ``requires_action``, ``cancelling``) accepts neither
messages nor a new run; only a ``requires_action`` run accepts tool outputs.

Run lifecycle (Assistants): a streamed run ends ``completed``, ``requires_action`` (until tool
outputs arrive or it is cancelled), ``failed`` (``StreamError``, ``Drop``) or ``expired`` (the
client went away mid-stream). ``cancel`` moves an active run to ``cancelling``; a stream
playing it ends with ``thread.run.cancelled``. :meth:`FakeOpenAI.set_active_run` leaves a run
active on a thread to exercise the service's wait/cancel logic.

What the SDK (openai 3.54, httpx2 transport) raises, checked by ``tests/test_fakes.py``:

* ``HttpError(429)`` -> ``openai.RateLimitError``; 5xx -> ``openai.InternalServerError``;
  missing conversation -> ``openai.NotFoundError`` (after the SDK's own retries for 429/5xx).
* ``Drop()`` mid-stream: ``responses.create(stream=True)`` iteration raises
  ``openai.APIConnectionError`` (``__cause__`` = ``httpx2.RemoteProtocolError``, "incomplete
  chunked read"); the Assistants stream helpers unwrap it and raise the bare
  ``httpx2.RemoteProtocolError``. ``Drop(before_response=True)`` -> ``APIConnectionError`` from
  the create call itself, after the SDK retried.
* ``Stall(s)`` longer than the client's read timeout: ``openai.APITimeoutError`` (Responses),
  bare ``httpx2.ReadTimeout`` from the Assistants helpers (which also call ``on_timeout``).
* ``StreamError(kind="failed")`` is an event, not an exception: ``response.failed`` /
  ``thread.run.failed``; ``kind="error"`` -> ``ResponseErrorEvent`` / ``ErrorEvent``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from tests.fakes.script import (
    Drop,
    HttpError,
    ScriptBook,
    Selection,
    SplitTurn,
    Stall,
    Step,
    StreamError,
    Text,
    ToolCall,
    ToolOutput,
    Turn,
    Usage,
    echo_chunks,
    split_turn,
    tool_outputs,
    user_text,
)

__all__ = ["FakeOpenAI", "RecordedRequest"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_BODY = web.RequestKey("fake_openai_body", dict[str, Any])
_ACTIVE = frozenset({"queued", "in_progress", "requires_action", "cancelling"})

# What the real API answers for a status when a script gives no message: (message, type, code).
_STATUS_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error",
          "model_not_found"),
    409: ("Another request is modifying this resource.", "invalid_request_error", None),
    429: ("Rate limit reached for requests. Please try again in 1s.", "requests",
          "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!",
          "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}  # fmt: skip


def _new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _now() -> int:
    return int(time.time())


_TOKEN = re.compile(r"\w+|\s+|[^\w\s]+")


def _split_arguments(arguments: str) -> list[str]:
    """Roughly one piece per token, like the real stream: ``{"`` ``city`` ``":"`` ..."""
    return _TOKEN.findall(arguments)


def _words(text: str) -> int:
    return len(text.split())


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The API's error answer: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(
        body, status=status, dumps=_dumps, headers={**_api_headers(), **(headers or {})}
    )


def _api_headers() -> dict[str, str]:
    return {
        "x-request-id": _new_id("req"),
        "openai-version": "2020-10-01",
        "openai-processing-ms": "7",
    }


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=_dumps, headers=_api_headers())


def _usage_json(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _page(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received; ``headers`` keys are lower-case, ``body`` is parsed JSON
    (``None`` when empty, the raw text when not JSON)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float


@dataclass
class _Run:
    """An Assistants run; mutated only under ``FakeOpenAI._lock``."""

    id: str
    thread_id: str
    assistant_id: str
    model: str
    instructions: str
    tools: list[Any]
    status: str = "queued"
    created_at: int = field(default_factory=_now)
    started_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    last_error: dict[str, str] | None = None
    required_action: dict[str, Any] | None = None
    usage: dict[str, int] | None = None
    tool_step: dict[str, Any] | None = None  # the tool_calls step waiting for outputs
    clears_at: float | None = None  # set_active_run: becomes completed then
    cancel_delay: float = 0.0  # from a cancel request to cancelled
    cancel_at: float | None = None  # cancel: becomes cancelled then

    def refresh(self, now: float) -> None:
        """Apply the timed transitions of runs left active by ``set_active_run``/``cancel``."""
        if self.status == "cancelling" and self.cancel_at is not None and now >= self.cancel_at:
            self.status, self.cancelled_at, self.cancel_at = "cancelled", int(now), None
        elif self.status in _ACTIVE and self.clears_at is not None and now >= self.clears_at:
            self.status, self.completed_at, self.clears_at = "completed", int(now), None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread.run",
            "created_at": self.created_at,
            "assistant_id": self.assistant_id,
            "thread_id": self.thread_id,
            "status": self.status,
            "started_at": self.started_at,
            "expires_at": self.created_at + 600 if self.status in _ACTIVE else None,
            "cancelled_at": self.cancelled_at,
            "failed_at": self.failed_at,
            "completed_at": self.completed_at,
            "required_action": self.required_action if self.status == "requires_action" else None,
            "last_error": self.last_error,
            "model": self.model,
            "instructions": self.instructions,
            "tools": self.tools,
            "tool_resources": {},
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "max_completion_tokens": None,
            "max_prompt_tokens": None,
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "incomplete_details": None,
            "usage": self.usage,
            "response_format": "auto",
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        }


@dataclass
class _Thread:
    id: str
    created_at: int = field(default_factory=_now)
    metadata: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)

    def active_run(self, now: float) -> _Run | None:
        for run in self.runs:
            run.refresh(now)
            if run.status in _ACTIVE:
                return run
        return None

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message["role"] == "user":
                return "".join(part["text"]["value"] for part in message["content"])
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread",
            "created_at": self.created_at,
            "metadata": self.metadata,
            "tool_resources": {},
        }


def _message_json(
    thread_id: str,
    role: str,
    text: str,
    *,
    run_id: str | None = None,
    assistant_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": _new_id("msg"),
        "object": "thread.message",
        "created_at": _now(),
        "assistant_id": assistant_id,
        "thread_id": thread_id,
        "run_id": run_id,
        "role": role,
        "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
        "attachments": [],
        "metadata": {},
        "status": "completed",
        "completed_at": _now(),
        "incomplete_at": None,
        "incomplete_details": None,
    }


class _Stream(ABC):
    """Plays the stream steps of one turn as SSE; subclasses render one API's events.

    Each event goes out with a single ``resp.write``; text deltas use preformatted templates
    so that the benchmark's thousands of chunks per second cost little more than the write.
    """

    def __init__(self, fake: FakeOpenAI, request: web.Request, input_tokens: int) -> None:
        self._fake = fake
        self._request = request
        self._input_tokens = max(1, input_tokens)
        self._output_words = 0
        self._usage: Usage | None = None
        self._resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                **_api_headers(),
            }
        )

    async def play(self, steps: Sequence[Step]) -> web.StreamResponse:
        await self._resp.prepare(self._request)
        try:
            await self.begin()
            for step in steps:
                if await self.interrupted():
                    return self._resp
                if isinstance(step, Text):
                    await self._play_text(step)
                elif isinstance(step, ToolCall):
                    await self.tool_call(step)
                    self._output_words += len(_split_arguments(step.arguments))
                elif isinstance(step, Stall):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Usage):
                    self._usage = step
                elif isinstance(step, StreamError):
                    await self.fail(step)
                    return self._resp
                elif isinstance(step, Drop):
                    self.dropped()
                    # close(), not abort(): what was written still reaches the client, then EOF
                    # in the middle of the chunked body, like a proxy dying mid-stream.
                    if self._request.transport is not None:
                        self._request.transport.close()
                    return self._resp
            if not await self.interrupted():
                await self.finish()
        except ConnectionResetError:
            self.abandoned()  # the client went away: nobody to tell
        except asyncio.CancelledError:
            self.abandoned()
            raise
        return self._resp

    async def _play_text(self, step: Text) -> None:
        await self.open_text()
        for i, chunk in enumerate(step.chunks):
            if i and step.interval > 0:
                await asyncio.sleep(step.interval)
                if await self.interrupted():
                    return
            await self.text_delta(chunk)
            hook = self._fake.on_token
            if hook is not None:
                hook(chunk, time.time())
            self._output_words += _words(chunk)

    def usage(self) -> tuple[int, int]:
        if self._usage is not None:
            return self._usage.input_tokens, self._usage.output_tokens
        return self._input_tokens, max(1, self._output_words)

    async def send(self, data: str) -> None:
        await self._resp.write(data.encode())

    # Rendered by each API.
    @abstractmethod
    async def begin(self) -> None: ...

    @abstractmethod
    async def open_text(self) -> None: ...

    @abstractmethod
    async def text_delta(self, chunk: str) -> None: ...

    @abstractmethod
    async def tool_call(self, call: ToolCall) -> None: ...

    @abstractmethod
    async def finish(self) -> None: ...

    @abstractmethod
    async def fail(self, error: StreamError) -> None: ...

    async def interrupted(self) -> bool:
        """Whether the run was cancelled meanwhile (then the stream has been ended)."""
        return False

    # Optional hooks: only the Assistants stream has a run whose status must follow.
    def dropped(self) -> None:  # noqa: B027
        """The fake is about to cut the connection."""

    def abandoned(self) -> None:  # noqa: B027
        """The client went away mid-stream."""


_RESPONSE_DELTA = (
    'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    '"item_id":"%s","output_index":%d,"content_index":0,"delta":%s,"logprobs":[],'
    '"sequence_number":%d}\n\n'
)


class _ResponsesStream(_Stream):
    """Responses API events: ``response.created`` ... ``response.completed``."""

    def __init__(
        self,
        fake: FakeOpenAI,
        request: web.Request,
        body: dict[str, Any],
        *,
        response_id: str,
        conversation_id: str | None,
        input_tokens: int,
    ) -> None:
        super().__init__(fake, request, input_tokens)
        self._seq = 0
        self._output: list[dict[str, Any]] = []
        self._message_id: str | None = None
        self._message_index = 0
        self._message_text: list[str] = []
        self._response: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": _now(),
            "status": "in_progress",
            "background": False,
            "completed_at": None,
            "conversation": {"id": conversation_id} if conversation_id else None,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": body.get("model") or fake.model,
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": body.get("safety_identifier"),
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_logprobs": 0,
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": None,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }

    async def event(self, type_: str, **fields: Any) -> None:
        data = {"type": type_, **fields, "sequence_number": self._seq}
        self._seq += 1
        await self.send(f"event: {type_}\ndata: {_dumps(data)}\n\n")

    def snapshot(self, status: str, **changes: Any) -> dict[str, Any]:
        return {**self._response, "status": status, "output": list(self._output), **changes}

    async def begin(self) -> None:
        await self.event("response.created", response=self.snapshot("in_progress"))
        await self.event("response.in_progress", response=self.snapshot("in_progress"))

    async def open_text(self) -> None:
        if self._message_id is not None:
            return
        self._message_id = _new_id("msg")
        self._message_index = len(self._output)
        self._message_text = []
        item = {
            "id": self._message_id,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        await self.event("response.output_item.added", output_index=self._message_index, item=item)
        await self.event(
            "response.content_part.added",
            item_id=self._message_id,
            output_index=self._message_index,
            content_index=0,
            part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
        )

    async def text_delta(self, chunk: str) -> None:
        self._message_text.append(chunk)
        data = _RESPONSE_DELTA % (self._message_id, self._message_index, _dumps(chunk), self._seq)
        self._seq += 1
        await self.send(data)

    async def close_text(self) -> None:
        if self._message_id is None:
            return
        item_id, index, text = self._message_id, self._message_index, "".join(self._message_text)
        self._message_id = None
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        await self.event("response.output_text.done", **where, text=text, logprobs=[])
        await self.event("response.content_part.done", **where, part=part)
        item = {
            "id": item_id,
            "type": "message",
            "status": "completed",
            "content": [part],
            "role": "assistant",
        }
        self._output.append(item)
        await self.event("response.output_item.done", output_index=index, item=item)

    async def tool_call(self, call: ToolCall) -> None:
        await self.close_text()
        index = len(self._output)
        item = {
            "id": _new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call.call_id,
            "name": call.name,
        }
        await self.event("response.output_item.added", output_index=index, item=item)
        for piece in _split_arguments(call.arguments):
            await self.event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=piece,
            )
        await self.event(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            arguments=call.arguments,
        )
        item = {**item, "status": "completed", "arguments": call.arguments}
        self._output.append(item)
        await self.event("response.output_item.done", output_index=index, item=item)

    async def finish(self) -> None:
        await self.close_text()
        usage = _usage_json(*self.usage())
        response = self.snapshot("completed", completed_at=_now(), usage=usage)
        await self.event("response.completed", response=response)

    async def fail(self, error: StreamError) -> None:
        if error.kind == "error":
            await self.event("error", code=error.code, message=error.message, param=None)
            return
        failure = {"code": error.code, "message": error.message}
        await self.event("response.failed", response=self.snapshot("failed", error=failure))


_RUN_DELTA = (
    'event: thread.message.delta\ndata: {"id":"%s","object":"thread.message.delta",'
    '"delta":{"content":[{"index":0,"type":"text","text":{"value":%s,"annotations":[]}}]}}\n\n'
)


class _RunStream(_Stream):
    """Assistants API events for one run: ``thread.run.created`` ... ``done``."""

    def __init__(
        self,
        fake: FakeOpenAI,
        request: web.Request,
        thread: _Thread,
        run: _Run,
        *,
        resumed: bool,
        input_tokens: int,
    ) -> None:
        super().__init__(fake, request, input_tokens)
        self._thread = thread
        self._run = run
        self._resumed = resumed
        self._message: dict[str, Any] | None = None
        self._message_step: dict[str, Any] | None = None
        self._message_text: list[str] = []
        self._tool_step: dict[str, Any] | None = None
        self._calls: list[ToolCall] = []
        self._cancelled = False

    async def event(self, name: str, data: dict[str, Any]) -> None:
        await self.send(f"event: {name}\ndata: {_dumps(data)}\n\n")

    def run_json(self, **changes: Any) -> dict[str, Any]:
        """Apply ``changes`` to the run (under the fake's lock) and return its JSON."""
        with self._fake._lock:
            for name, value in changes.items():
                setattr(self._run, name, value)
            return self._run.to_json()

    def step(self, type_: str, details: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": _new_id("step"),
            "object": "thread.run.step",
            "created_at": _now(),
            "run_id": self._run.id,
            "assistant_id": self._run.assistant_id,
            "thread_id": self._thread.id,
            "type": type_,
            "status": "in_progress",
            "cancelled_at": None,
            "completed_at": None,
            "expired_at": None,
            "failed_at": None,
            "last_error": None,
            "step_details": details,
            "usage": None,
            "metadata": {},
        }

    async def begin(self) -> None:
        if self._resumed:
            tool_step = self._run.tool_step
            if tool_step is not None:
                await self.event("thread.run.step.completed", tool_step)
            await self.event("thread.run.queued", self.run_json(status="queued", tool_step=None))
        else:
            await self.event("thread.run.created", self.run_json())
            await self.event("thread.run.queued", self.run_json())
        await self.event(
            "thread.run.in_progress", self.run_json(status="in_progress", started_at=_now())
        )

    async def open_text(self) -> None:
        if self._message is not None:
            return
        message = _message_json(
            self._thread.id,
            "assistant",
            "",
            run_id=self._run.id,
            assistant_id=self._run.assistant_id,
        )
        message.update(content=[], status="in_progress", completed_at=None)
        details = {"type": "message_creation", "message_creation": {"message_id": message["id"]}}
        step = self.step("message_creation", details)
        self._message, self._message_step, self._message_text = message, step, []
        await self.event("thread.run.step.created", step)
        await self.event("thread.run.step.in_progress", step)
        await self.event("thread.message.created", message)
        await self.event("thread.message.in_progress", message)

    async def text_delta(self, chunk: str) -> None:
        assert self._message is not None
        self._message_text.append(chunk)
        await self.send(_RUN_DELTA % (self._message["id"], _dumps(chunk)))

    async def close_text(self) -> None:
        if self._message is None or self._message_step is None:
            return
        text = "".join(self._message_text)
        message = {
            **self._message,
            "status": "completed",
            "completed_at": _now(),
            "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
        }
        step = {**self._message_step, "status": "completed", "completed_at": _now()}
        self._message = self._message_step = None
        with self._fake._lock:
            self._thread.messages.append(message)
        await self.event("thread.message.completed", message)
        await self.event("thread.run.step.completed", step)

    async def tool_call(self, call: ToolCall) -> None:
        await self.close_text()
        if self._tool_step is None:
            self._tool_step = self.step("tool_calls", {"type": "tool_calls", "tool_calls": []})
            await self.event("thread.run.step.created", self._tool_step)
            await self.event("thread.run.step.in_progress", self._tool_step)
        index = len(self._calls)
        self._calls.append(call)
        function = {"name": call.name, "arguments": "", "output": None}
        first = {"index": index, "id": call.call_id, "type": "function", "function": function}
        await self.step_delta(first)
        for piece in _split_arguments(call.arguments):
            await self.step_delta(
                {"index": index, "type": "function", "function": {"arguments": piece}}
            )

    async def step_delta(self, tool_call: dict[str, Any]) -> None:
        assert self._tool_step is not None
        delta = {"step_details": {"type": "tool_calls", "tool_calls": [tool_call]}}
        data = {"id": self._tool_step["id"], "object": "thread.run.step.delta", "delta": delta}
        await self.event("thread.run.step.delta", data)

    async def finish(self) -> None:
        await self.close_text()
        prompt, completion = self.usage()
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self._calls:
            calls: list[dict[str, Any]] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self._calls
            ]
            # The step completes (with the outputs) only when the outputs are submitted.
            assert self._tool_step is not None
            done = {
                **self._tool_step,
                "status": "completed",
                "completed_at": None,
                "step_details": {
                    "type": "tool_calls",
                    "tool_calls": [
                        {**c, "function": {**c["function"], "output": None}} for c in calls
                    ],
                },
            }
            action = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": calls}}
            run = self.run_json(status="requires_action", required_action=action, tool_step=done)
            await self.event("thread.run.requires_action", run)
        else:
            run = self.run_json(status="completed", completed_at=_now(), usage=usage)
            await self.event("thread.run.completed", run)
        await self.send("event: done\ndata: [DONE]\n\n")

    async def fail(self, error: StreamError) -> None:
        last_error = {"code": error.code, "message": error.message}
        run = self.run_json(status="failed", failed_at=_now(), last_error=last_error)
        if error.kind == "error":
            data = {"message": error.message, "type": "server_error", "code": error.code}
            await self.event("error", {**data, "param": None})
            return
        await self.event("thread.run.failed", run)
        await self.send("event: done\ndata: [DONE]\n\n")

    async def interrupted(self) -> bool:
        if self._cancelled:
            return True
        with self._fake._lock:
            self._run.refresh(time.time())
            self._cancelled = self._run.status in ("cancelling", "cancelled")
        if self._cancelled:
            run = self.run_json(status="cancelled", cancelled_at=_now(), cancel_at=None)
            await self.event("thread.run.cancelled", run)
            await self.send("event: done\ndata: [DONE]\n\n")
        return self._cancelled

    def dropped(self) -> None:
        error = {"code": "server_error", "message": "The connection was dropped by the fake."}
        self.run_json(status="failed", failed_at=_now(), last_error=error)

    def abandoned(self) -> None:
        with self._fake._lock:
            if self._run.status in _ACTIVE:
                self._run.status = "expired"


class FakeOpenAI:
    """Fake OpenAI API server (Responses, Conversations and Assistants) for tests, the demo and
    the benchmark.

    Scripting and inspection (:meth:`script`, :meth:`reset`, :attr:`requests`,
    :meth:`assert_complete`, :meth:`set_active_run`) are thread-safe: the server may run on
    another thread's event loop (see :class:`tests.fakes.background.BackgroundLoop`).

    ``api_key``: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
    ``echo_interval``: seconds between the words of the default echo answer.
    ``record_requests``: turn off for the benchmark to keep memory flat.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        echo_interval: float = 0.0,
        record_requests: bool = True,
        model: str = "gpt-4o-mini",
    ) -> None:
        self.api_key = api_key
        self.echo_interval = echo_interval
        self.record_requests = record_requests
        self.model = model
        self.on_token: Callable[[str, float], None] | None = None
        """Called with ``(chunk, time.time())`` right after each text chunk is written."""
        self._book = ScriptBook()
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._conversations: dict[str, dict[str, Any]] = {}
        self._assistants: dict[str, dict[str, Any]] = {}
        self._threads: dict[str, _Thread] = {}
        self._response_keys: dict[str, str] = {}  # response id -> conversation key
        self._call_keys: dict[str, str] = {}  # call id -> conversation key
        self._pending_calls: dict[str, list[str]] = {}  # conversation key -> unanswered calls
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._host = "127.0.0.1"
        self._port = 0

    # ----- lifecycle -----

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Listen on ``host:port`` (default 127.0.0.1 and a free port; after a :meth:`stop`, the
        previous port, so a test can simulate an outage)."""
        self._host = host or self._host
        self._port = self._port if port is None else port
        # handler_cancellation: a client that goes away ends its Stall at once.
        runner = web.AppRunner(
            self._make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening and cut every in-flight request (stalled streams included)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._tasks):
            task.cancel()
        await runner.cleanup()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` (no ``/v1``)."""
        return f"http://{self._host}:{self._port}"

    @property
    def base_url(self) -> str:
        """What to pass as ``OpenAI(base_url=...)`` / ``OPENAI_BASE_URL``."""
        return f"{self.url}/v1"

    # ----- scripting and inspection (thread-safe) -----

    def script(self, match: str | re.Pattern[str], turns: Sequence[Turn]) -> None:
        """Answer the runs whose user message contains ``match`` with ``turns`` (see
        :mod:`tests.fakes.script` for how turns are consumed)."""
        self._book.add(match, turns)

    def reset(self) -> None:
        """Forget scripts, recorded requests, conversations, threads and runs."""
        self._book.reset()
        with self._lock:
            self._requests.clear()
            self._conversations.clear()
            self._assistants.clear()
            self._threads.clear()
            self._response_keys.clear()
            self._call_keys.clear()
            self._pending_calls.clear()

    def assert_complete(self) -> None:
        """Raise ``AssertionError`` if a script was never used or not played to its end."""
        self._book.assert_complete()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received since the last :meth:`reset`, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests with that method whose path matches ``path`` (a regex, anchored)."""
        pattern = re.compile(path)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    def set_active_run(
        self,
        thread_id: str,
        status: str = "in_progress",
        *,
        clears_after: float | None = None,
        cancel_delay: float = 0.0,
        created_ago: float = 0.0,
    ) -> str:
        """Leave an active run on ``thread_id`` and return its id.

        It blocks new messages and runs on the thread until it ends: by itself after
        ``clears_after`` seconds (then ``completed``; ``None``: never by itself), or
        ``cancel_delay`` seconds after a cancel request (``cancelling`` meanwhile, then
        ``cancelled``). ``created_ago`` back-dates ``created_at``, to look like a stale run.
        """
        if status not in _ACTIVE:
            raise ValueError(f"an active run status is one of {sorted(_ACTIVE)}, not {status!r}")
        with self._lock:
            thread = self._thread_locked(thread_id)
            if thread is None:
                raise ValueError(f"{thread_id!r} is a missing thread by convention")
            run = _Run(
                id=_new_id("run"),
                thread_id=thread_id,
                assistant_id="asst_fake",
                model=self.model,
                instructions="",
                tools=[],
                status=status,
                created_at=int(time.time() - created_ago),
                started_at=int(time.time() - created_ago),
                clears_at=None if clears_after is None else time.time() + clears_after,
                cancel_delay=cancel_delay,
            )
            thread.runs.insert(0, run)
            return run.id

    def thread_runs(self, thread_id: str) -> list[dict[str, Any]]:
        """JSON snapshots of a thread's runs, newest first."""
        with self._lock:
            thread = self._threads.get(thread_id)
            if thread is None:
                return []
            now = time.time()
            for run in thread.runs:
                run.refresh(now)
            return [run.to_json() for run in thread.runs]

    # ----- HTTP plumbing -----

    def _make_app(self) -> web.Application:
        @web.middleware
        async def plumbing(request: web.Request, handler: Handler) -> web.StreamResponse:
            raw = await request.read()
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
            if self.record_requests:
                recorded = RecordedRequest(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                    at=time.time(),
                )
                with self._lock:
                    self._requests.append(recorded)
            if isinstance(body, str):
                return _error(400, "We could not parse the JSON body of your request.")
            authorization = request.headers.get("Authorization")
            if self.api_key is not None and authorization != f"Bearer {self.api_key}":
                return _error(
                    401,
                    "Incorrect API key provided. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                )
            request[_BODY] = body if isinstance(body, dict) else {}
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                return await handler(request)
            finally:
                if task is not None:
                    self._tasks.discard(task)

        app = web.Application(middlewares=[plumbing], client_max_size=16 * 1024 * 1024)
        add = app.router.add_route
        add("POST", "/v1/responses", self._create_response)
        add("POST", "/v1/conversations", self._create_conversation)
        add("GET", "/v1/conversations/{id}", self._get_conversation)
        add("DELETE", "/v1/conversations/{id}", self._delete_conversation)
        add("POST", "/v1/assistants", self._create_assistant)
        add("GET", "/v1/assistants", self._list_assistants)
        add("GET", "/v1/assistants/{id}", self._get_assistant)
        add("DELETE", "/v1/assistants/{id}", self._delete_assistant)
        add("POST", "/v1/threads", self._create_thread)
        add("GET", "/v1/threads/{thread_id}", self._get_thread)
        add("DELETE", "/v1/threads/{thread_id}", self._delete_thread)
        add("POST", "/v1/threads/{thread_id}/messages", self._create_message)
        add("GET", "/v1/threads/{thread_id}/messages", self._list_messages)
        add("GET", "/v1/threads/{thread_id}/runs", self._list_runs)
        add("POST", "/v1/threads/{thread_id}/runs", self._create_run)
        add("GET", "/v1/threads/{thread_id}/runs/{run_id}", self._get_run)
        add("POST", "/v1/threads/{thread_id}/runs/{run_id}/cancel", self._cancel_run)
        add("POST", "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", self._submit)
        add("*", "/{tail:.*}", self._invalid_url)
        return app

    async def _invalid_url(self, request: web.Request) -> web.Response:
        return _error(404, f"Invalid URL ({request.method} {request.path})")

    def _resolve(self, selection: Selection, body: dict[str, Any], echo: str) -> SplitTurn | str:
        """The validated steps of the selected turn, call ids filled in; or an error text."""
        turn = selection.turn
        try:
            if turn is None:
                steps: Sequence[Step] = [Text(*echo_chunks(echo), interval=self.echo_interval)]
            elif callable(turn):
                steps = turn(body)
            else:
                steps = turn
            split = split_turn(steps)
        except Exception as exc:  # a broken function turn must fail the test, not the server
            problem = f"{selection.label} could not be played: {exc!r}"
            self._book.report(problem)
            return problem
        stream = tuple(
            replace(s, call_id=_new_id("call"))
            if isinstance(s, ToolCall) and s.call_id is None
            else s
            for s in split.stream
        )
        return replace(split, stream=stream)

    async def _play_early(self, request: web.Request, turn: SplitTurn) -> web.StreamResponse | None:
        """Play what happens before a stream starts; a response ends the attempt there."""
        for stall in turn.before:
            await asyncio.sleep(stall.seconds)
        early = turn.early
        if isinstance(early, HttpError):
            message, type_, code = _STATUS_DEFAULTS.get(
                early.status,
                (
                    f"HTTP {early.status}",
                    "server_error" if early.status >= 500 else "invalid_request_error",
                    None,
                ),
            )
            return _error(
                early.status,
                early.message or message,
                early.error_type or type_,
                code=early.code or code,
                headers=early.headers,
            )
        if isinstance(early, Drop):
            if request.transport is not None:
                request.transport.close()
            return web.StreamResponse()
        return None

    # ----- Responses + Conversations -----

    async def _create_response(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = request[_BODY]
        if body.get("stream") is not True:
            return _error(400, "The fake OpenAI server only serves stream=true.", param="stream")
        conversation = body.get("conversation")
        conversation_id = conversation.get("id") if isinstance(conversation, dict) else conversation
        if isinstance(conversation_id, str) and conversation_id.startswith("conv_missing"):
            return _conversation_not_found(conversation_id)
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and previous.startswith("resp_missing"):
            return _error(
                404,
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
            )
        outputs = tool_outputs(body)
        text = user_text(body)
        with self._lock:
            key = self._conversation_key(conversation_id, previous, outputs, text)
            problem = self._take_tool_outputs(key, outputs)
        if problem is not None:
            return _error(400, problem, param="input")
        selection = self._book.next_turn(key, text, continuation=bool(outputs))
        turn = self._resolve(selection, body, text or " ".join(o.output for o in outputs))
        if isinstance(turn, str):
            return _error(500, f"fake script error: {turn}", "server_error")
        early = await self._play_early(request, turn)
        if early is not None:
            return early
        response_id = _new_id("resp")
        calls = [s.call_id for s in turn.stream if isinstance(s, ToolCall) and s.call_id]
        with self._lock:
            self._response_keys[response_id] = key
            self._call_keys.update(dict.fromkeys(calls, key))
            if calls and not isinstance(turn.stream[-1], Drop | StreamError):
                self._pending_calls[key] = calls
        stream = _ResponsesStream(
            self,
            request,
            body,
            response_id=response_id,
            conversation_id=conversation_id if isinstance(conversation_id, str) else None,
            input_tokens=_words(text) + sum(_words(o.output) for o in outputs),
        )
        return await stream.play(turn.stream)

    def _conversation_key(
        self, conversation_id: Any, previous: Any, outputs: list[ToolOutput], text: str
    ) -> str:
        if isinstance(conversation_id, str):
            return f"conversation:{conversation_id}"
        if isinstance(previous, str) and previous in self._response_keys:
            return self._response_keys[previous]
        for output in outputs:
            if output.call_id in self._call_keys:
                return self._call_keys[output.call_id]
        return f"input:{text}"

    def _take_tool_outputs(self, key: str, outputs: list[ToolOutput]) -> str | None:
        """Check tool outputs like the real API; on success the pending calls are answered."""
        if not outputs:
            return None
        for output in outputs:
            if output.call_id not in self._call_keys:
                return f"No tool call found for function call output with call_id {output.call_id}."
        given = {o.call_id for o in outputs}
        for call_id in self._pending_calls.get(key, ()):
            if call_id not in given:
                return f"No tool output found for function call {call_id}."
        self._pending_calls.pop(key, None)
        return None

    async def _create_conversation(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[_BODY]
        conversation: dict[str, Any] = {
            "id": _new_id("conv"),
            "object": "conversation",
            "created_at": _now(),
            "metadata": body.get("metadata") or {},
        }
        with self._lock:
            self._conversations[conversation["id"]] = conversation
        return _json(conversation)

    async def _get_conversation(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["id"]
        if conversation_id.startswith("conv_missing"):
            return _conversation_not_found(conversation_id)
        with self._lock:
            conversation = self._conversations.setdefault(
                conversation_id,
                {
                    "id": conversation_id,
                    "object": "conversation",
                    "created_at": _now(),
                    "metadata": {},
                },
            )
        return _json(conversation)

    async def _delete_conversation(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["id"]
        if conversation_id.startswith("conv_missing"):
            return _conversation_not_found(conversation_id)
        with self._lock:
            self._conversations.pop(conversation_id, None)
        return _json({"id": conversation_id, "object": "conversation.deleted", "deleted": True})

    # ----- Assistants -----

    def _thread_locked(self, thread_id: str) -> _Thread | None:
        """The thread, created on first use; ``None`` for the missing-by-convention ids."""
        if thread_id.startswith("thread_missing"):
            return None
        thread = self._threads.get(thread_id)
        if thread is None:
            thread = self._threads[thread_id] = _Thread(thread_id)
        return thread

    async def _create_assistant(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[_BODY]
        assistant = _assistant_json(_new_id("asst"), body, self.model)
        with self._lock:
            self._assistants[assistant["id"]] = assistant
        return _json(assistant)

    async def _list_assistants(self, request: web.Request) -> web.Response:
        with self._lock:
            assistants = list(reversed(self._assistants.values()))
        return _json(_page(assistants))

    async def _get_assistant(self, request: web.Request) -> web.Response:
        assistant_id = request.match_info["id"]
        if assistant_id.startswith("asst_missing"):
            return _error(404, f"No assistant found with id '{assistant_id}'.")
        with self._lock:
            assistant = self._assistants.get(assistant_id) or _assistant_json(
                assistant_id, {}, self.model
            )
        return _json(assistant)

    async def _delete_assistant(self, request: web.Request) -> web.Response:
        assistant_id = request.match_info["id"]
        if assistant_id.startswith("asst_missing"):
            return _error(404, f"No assistant found with id '{assistant_id}'.")
        with self._lock:
            self._assistants.pop(assistant_id, None)
        return _json({"id": assistant_id, "object": "assistant.deleted", "deleted": True})

    async def _create_thread(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[_BODY]
        thread = _Thread(_new_id("thread"), metadata=body.get("metadata") or {})
        for message in body.get("messages") or ():
            text = _message_text(message.get("content"))
            thread.messages.append(_message_json(thread.id, message.get("role", "user"), text))
        with self._lock:
            self._threads[thread.id] = thread
        return _json(thread.to_json())

    async def _get_thread(self, request: web.Request) -> web.Response:
        thread_id = request.match_info["thread_id"]
        with self._lock:
            thread = self._thread_locked(thread_id)
            data = thread.to_json() if thread else None
        return _json(data) if data else _thread_not_found(thread_id)

    async def _delete_thread(self, request: web.Request) -> web.Response:
        thread_id = request.match_info["thread_id"]
        if thread_id.startswith("thread_missing"):
            return _thread_not_found(thread_id)
        with self._lock:
            self._threads.pop(thread_id, None)
        return _json({"id": thread_id, "object": "thread.deleted", "deleted": True})

    async def _create_message(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = request[_BODY]
        thread_id = request.match_info["thread_id"]
        with self._lock:
            thread = self._thread_locked(thread_id)
            if thread is None:
                return _thread_not_found(thread_id)
            active = thread.active_run(time.time())
            if active is not None:
                return _error(
                    400,
                    f"Can't add messages to {thread_id} while a run {active.id} is active.",
                )
            text = _message_text(body.get("content"))
            message = _message_json(thread_id, body.get("role", "user"), text)
            thread.messages.append(message)
        return _json(message)

    async def _list_messages(self, request: web.Request) -> web.Response:
        thread_id = request.match_info["thread_id"]
        with self._lock:
            thread = self._thread_locked(thread_id)
            if thread is None:
                return _thread_not_found(thread_id)
            messages = list(thread.messages)
        if request.query.get("order", "desc") == "desc":
            messages.reverse()
        return _json(_page(messages[: int(request.query.get("limit", "20"))]))

    async def _list_runs(self, request: web.Request) -> web.Response:
        thread_id = request.match_info["thread_id"]
        with self._lock:
            thread = self._thread_locked(thread_id)
            if thread is None:
                return _thread_not_found(thread_id)
            now = time.time()
            for run in thread.runs:
                run.refresh(now)
            runs = [run.to_json() for run in thread.runs]  # newest first
        if request.query.get("order", "desc") == "asc":
            runs.reverse()
        return _json(_page(runs[: int(request.query.get("limit", "20"))]))

    async def _get_run(self, request: web.Request) -> web.Response:
        thread_id, run_id = request.match_info["thread_id"], request.match_info["run_id"]
        with self._lock:
            run = self._run_locked(thread_id, run_id)
            data = run.to_json() if run else None
        return _json(data) if data else _run_not_found(thread_id, run_id)

    def _run_locked(self, thread_id: str, run_id: str) -> _Run | None:
        thread = self._thread_locked(thread_id)
        for run in thread.runs if thread else ():
            if run.id == run_id:
                run.refresh(time.time())
                return run
        return None

    async def _cancel_run(self, request: web.Request) -> web.Response:
        thread_id, run_id = request.match_info["thread_id"], request.match_info["run_id"]
        with self._lock:
            run = self._run_locked(thread_id, run_id)
            if run is None:
                return _run_not_found(thread_id, run_id)
            if run.status not in _ACTIVE or run.status == "cancelling":
                return _error(400, f"Cannot cancel run with status '{run.status}'.")
            run.status, run.clears_at = "cancelling", None
            run.cancel_at = time.time() + run.cancel_delay
            data = run.to_json()
        return _json(data)

    async def _create_run(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = request[_BODY]
        thread_id = request.match_info["thread_id"]
        assistant_id = body.get("assistant_id")
        if not isinstance(assistant_id, str):
            return _error(400, "Missing required parameter: 'assistant_id'.", param="assistant_id")
        if assistant_id.startswith("asst_missing"):
            return _error(404, f"No assistant found with id '{assistant_id}'.")
        if body.get("stream") is not True:
            return _error(400, "The fake OpenAI server only serves stream=true.", param="stream")
        with self._lock:
            thread = self._thread_locked(thread_id)
            if thread is None:
                return _thread_not_found(thread_id)
            active = thread.active_run(time.time())
            if active is not None:
                return _error(400, f"Thread {thread_id} already has an active run {active.id}.")
            for message in body.get("additional_messages") or ():
                text = _message_text(message.get("content"))
                thread.messages.append(_message_json(thread_id, message.get("role", "user"), text))
            text = thread.last_user_text()
            assistant = self._assistants.get(assistant_id) or _assistant_json(
                assistant_id, {}, self.model
            )
        selection = self._book.next_turn(f"thread:{thread_id}", text, continuation=False)
        turn = self._resolve(selection, {**body, "input": text}, text)
        if isinstance(turn, str):
            return _error(500, f"fake script error: {turn}", "server_error")
        early = await self._play_early(request, turn)
        if early is not None:
            return early
        run = _Run(
            id=_new_id("run"),
            thread_id=thread_id,
            assistant_id=assistant_id,
            model=body.get("model") or assistant["model"],
            instructions=body.get("instructions") or assistant["instructions"] or "",
            tools=body.get("tools") or assistant["tools"],
        )
        with self._lock:
            thread.runs.insert(0, run)
        stream = _RunStream(self, request, thread, run, resumed=False, input_tokens=_words(text))
        return await stream.play(turn.stream)

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = request[_BODY]
        thread_id, run_id = request.match_info["thread_id"], request.match_info["run_id"]
        if body.get("stream") is not True:
            return _error(400, "The fake OpenAI server only serves stream=true.", param="stream")
        outputs = tool_outputs(body)
        with self._lock:
            thread = self._thread_locked(thread_id)
            run = self._run_locked(thread_id, run_id)
            if thread is None or run is None:
                return _run_not_found(thread_id, run_id)
            if run.status != "requires_action" or run.required_action is None:
                return _error(400, f'Runs in status "{run.status}" do not accept tool outputs.')
            expected = [c["id"] for c in run.required_action["submit_tool_outputs"]["tool_calls"]]
            got = [o.call_id for o in outputs]
            if sorted(expected) != sorted(got):
                return _error(
                    400,
                    f"Expected tool outputs for call_ids {expected}, got {got}",
                    param="tool_outputs",
                )
            text = thread.last_user_text()
        selection = self._book.next_turn(f"thread:{thread_id}", text, continuation=True)
        turn = self._resolve(selection, {**body, "input": text}, text)
        if isinstance(turn, str):
            return _error(500, f"fake script error: {turn}", "server_error")
        early = await self._play_early(request, turn)
        if early is not None:
            return early
        with self._lock:
            if run.tool_step is not None:  # the outputs complete the tool_calls step
                by_id = {o.call_id: o.output for o in outputs}
                details = run.tool_step["step_details"]
                details["tool_calls"] = [
                    {**c, "function": {**c["function"], "output": by_id.get(c["id"])}}
                    for c in details["tool_calls"]
                ]
                run.tool_step["completed_at"] = _now()
            run.status, run.required_action = "queued", None
        stream = _RunStream(
            self,
            request,
            thread,
            run,
            resumed=True,
            input_tokens=sum(_words(o.output) for o in outputs),
        )
        return await stream.play(turn.stream)


def _conversation_not_found(conversation_id: str) -> web.Response:
    return _error(404, f"Conversation with id '{conversation_id}' not found.", param="conversation")


def _thread_not_found(thread_id: str) -> web.Response:
    return _error(404, f"No thread found with id '{thread_id}'.")


def _run_not_found(thread_id: str, run_id: str) -> web.Response:
    return _error(404, f"No run found with id '{run_id}' on thread '{thread_id}'.")


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _assistant_json(assistant_id: str, body: dict[str, Any], model: str) -> dict[str, Any]:
    return {
        "id": assistant_id,
        "object": "assistant",
        "created_at": _now(),
        "name": body.get("name"),
        "description": body.get("description"),
        "model": body.get("model") or model,
        "instructions": body.get("instructions"),
        "tools": body.get("tools") or [],
        "tool_resources": {},
        "metadata": body.get("metadata") or {},
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "response_format": body.get("response_format", "auto"),
    }
