"""The SSE renderers of the fake OpenAI server: one scripted turn played as a model stream.

:class:`_Stream` plays the stream steps of a turn (``Text``, ``ToolCall``, ``Stall``,
``Usage``, then the ending: completion, ``StreamError`` or ``Drop``) and leaves the events to
its subclasses:

* :class:`_ResponsesStream`: Responses API events, ``response.created`` …
  ``response.completed`` / ``.failed`` / ``.incomplete``;
* :class:`_RunStream`: Assistants API events for one run, ``thread.run.created`` …
  ``thread.run.completed`` / ``.requires_action`` / ``.failed`` / ``.incomplete`` /
  ``.expired`` / ``.cancelled``, then ``done``; it keeps the run's status (and the thread's
  messages) in step with what it sent.

Every event parses (strictly) into its typed ``openai`` SDK model; ``tests/test_fakes.py``
checks it.
"""

from __future__ import annotations

import asyncio
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.fakes.assistants_state import _ACTIVE, _message_json, _Run, _Thread
from tests.fakes.openai_wire import _api_headers, _dumps, _new_id, _now, _words
from tests.fakes.script import Drop, Stall, Step, StreamError, Text, ToolCall, Usage

if TYPE_CHECKING:
    from tests.fakes.openai_server import FakeOpenAI

ABANDONED_RUN_LASTS = 3.0
"""Seconds an Assistants run whose client went away goes on before it completes by itself."""
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]+")


def _split_arguments(arguments: str) -> list[str]:
    """Roughly one piece per token, like the real stream: ``{"`` ``city`` ``":"`` ..."""
    return _TOKEN.findall(arguments)


def _usage_json(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
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
        self._generated = fake.generation.open(self.conversation_id())
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
            self._fake.generation.closed(self._generated)
            self.abandoned()  # the client went away: nobody to tell
        except asyncio.CancelledError:
            self._fake.generation.closed(self._generated)
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
            transport = self._request.transport
            closing = transport is None or transport.is_closing()
            self._fake.generation.token(self._generated, closing=closing)
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

    def conversation_id(self) -> str | None:
        """The conversation (or thread) this stream belongs to, for the generation ledger."""
        return None

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
        self._conversation_id = conversation_id
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

    async def close_text(self, status: str = "completed") -> None:
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
            "status": status,
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

    def conversation_id(self) -> str | None:
        return self._conversation_id

    async def finish(self) -> None:
        await self.close_text()
        usage = _usage_json(*self.usage())
        response = self.snapshot("completed", completed_at=_now(), usage=usage)
        self._fake.conversation_items.commit(self._response["id"], self._output)
        await self.event("response.completed", response=response)

    async def fail(self, error: StreamError) -> None:
        if error.kind == "error":
            await self.event("error", code=error.code, message=error.message, param=None)
            return
        if error.kind in ("incomplete", "expired"):  # the Responses API has no expiry
            await self.close_text("incomplete")
            response = self.snapshot(
                "incomplete",
                incomplete_details={"reason": "max_output_tokens"},
                usage=_usage_json(*self.usage()),
            )
            await self.event("response.incomplete", response=response)
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
        self._thread = thread
        self._run = run
        super().__init__(fake, request, input_tokens)
        self._resumed = resumed
        self._message: dict[str, Any] | None = None
        self._message_step: dict[str, Any] | None = None
        self._message_text: list[str] = []
        self._tool_step: dict[str, Any] | None = None
        self._calls: list[ToolCall] = []
        self._cancelled = False

    async def event(self, name: str, data: dict[str, Any]) -> None:
        await self.send(f"event: {name}\ndata: {_dumps(data)}\n\n")

    def conversation_id(self) -> str | None:
        return self._thread.id

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

    async def close_text(self, *, incomplete: bool = False) -> None:
        """End the open message: ``completed``, or ``incomplete`` (the run hit a token limit)."""
        if self._message is None or self._message_step is None:
            return
        text = "".join(self._message_text)
        message = {
            **self._message,
            "status": "completed",
            "completed_at": _now(),
            "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
        }
        if incomplete:
            message.update(
                status="incomplete",
                completed_at=None,
                incomplete_at=_now(),
                incomplete_details={"reason": "max_tokens"},
            )
        step = {**self._message_step, "status": "completed", "completed_at": _now()}
        self._message = self._message_step = None
        with self._fake._lock:
            self._thread.messages.append(message)
        await self.event(f"thread.message.{message['status']}", message)
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

    def usage_json(self) -> dict[str, int]:
        prompt, completion = self.usage()
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def finish(self) -> None:
        await self.close_text()
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
            run = self.run_json(status="completed", completed_at=_now(), usage=self.usage_json())
            await self.event("thread.run.completed", run)
        await self.send("event: done\ndata: [DONE]\n\n")

    async def fail(self, error: StreamError) -> None:
        if error.kind == "incomplete":
            await self.close_text(incomplete=True)
            details = {"reason": "max_completion_tokens"}
            run = self.run_json(
                status="incomplete", incomplete_details=details, usage=self.usage_json()
            )
            await self.event("thread.run.incomplete", run)
            await self.send("event: done\ndata: [DONE]\n\n")
            return
        if error.kind == "expired":
            await self.event("thread.run.expired", self.run_json(status="expired"))
            await self.send("event: done\ndata: [DONE]\n\n")
            return
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
        # Like the real API, a run goes on when its client goes away: it keeps the thread
        # busy until it is cancelled, or finishes by itself (here: after ABANDONED_RUN_LASTS).
        with self._fake._lock:
            if self._run.status in _ACTIVE and self._run.status != "cancelling":
                self._run.clears_at = time.time() + ABANDONED_RUN_LASTS
