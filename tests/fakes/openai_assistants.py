"""The Assistants API endpoints of the fake OpenAI server (assistants, threads, messages, runs).

:class:`_AssistantsApi` holds the Assistants state of one ``FakeOpenAI`` and serves its
routes; it shares the fake's lock, script book and turn playing (``_resolve``, ``_play_early``).
Runs are streamed by :class:`~tests.fakes.openai_streams._RunStream`; the state objects are in
:mod:`tests.fakes.assistants_state`. Internal to the fake: tests use ``FakeOpenAI``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.fakes.assistants_state import _ACTIVE, _message_json, _Run, _Thread
from tests.fakes.openai_streams import _RunStream
from tests.fakes.openai_wire import _BODY, _error, _json, _new_id, _now, _page, _words
from tests.fakes.script import tool_outputs

if TYPE_CHECKING:
    from tests.fakes.openai_server import FakeOpenAI


class _AssistantsApi:
    """The Assistants endpoints of a :class:`FakeOpenAI`; state mutated under its lock."""

    def __init__(self, fake: FakeOpenAI) -> None:
        self._fake = fake
        self._lock = fake._lock
        self._book = fake._book
        self._assistants: dict[str, dict[str, Any]] = {}
        self._threads: dict[str, _Thread] = {}

    def add_routes(self, app: web.Application) -> None:
        add = app.router.add_route
        add("POST", "/v1/assistants", self._create_assistant)
        add("GET", "/v1/assistants", self._list_assistants)
        add("GET", "/v1/assistants/{id}", self._get_assistant)
        add("DELETE", "/v1/assistants/{id}", self._delete_assistant)
        add("POST", "/v1/threads", self._create_thread)
        add("GET", "/v1/threads/{thread_id}", self._get_thread)
        add("DELETE", "/v1/threads/{thread_id}", self._delete_thread)
        add("POST", "/v1/threads/{thread_id}/messages", self._create_message)
        add("GET", "/v1/threads/{thread_id}/messages", self._list_messages)
        add("DELETE", "/v1/threads/{thread_id}/messages/{message_id}", self._delete_message)
        add("GET", "/v1/threads/{thread_id}/runs", self._list_runs)
        add("POST", "/v1/threads/{thread_id}/runs", self._create_run)
        add("GET", "/v1/threads/{thread_id}/runs/{run_id}", self._get_run)
        add("POST", "/v1/threads/{thread_id}/runs/{run_id}/cancel", self._cancel_run)
        add("POST", "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", self._submit)

    def clear(self) -> None:
        """Forget assistants, threads and runs; the caller holds the fake's lock."""
        self._assistants.clear()
        self._threads.clear()

    def set_active_run(
        self,
        thread_id: str,
        status: str = "in_progress",
        *,
        clears_after: float | None = None,
        cancel_delay: float = 0.0,
        created_ago: float = 0.0,
    ) -> str:
        """See :meth:`FakeOpenAI.set_active_run`."""
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
                model=self._fake.model,
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
        """See :meth:`FakeOpenAI.thread_runs`."""
        with self._lock:
            thread = self._threads.get(thread_id)
            if thread is None:
                return []
            now = time.time()
            for run in thread.runs:
                run.refresh(now)
            return [run.to_json() for run in thread.runs]

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
        assistant = _assistant_json(_new_id("asst"), body, self._fake.model)
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
                assistant_id, {}, self._fake.model
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
        if "run_id" in request.query:
            messages = [m for m in messages if m.get("run_id") == request.query["run_id"]]
        if request.query.get("order", "desc") == "desc":
            messages.reverse()
        return _json(_page(messages[: int(request.query.get("limit", "20"))]))

    async def _delete_message(self, request: web.Request) -> web.Response:
        thread_id, message_id = request.match_info["thread_id"], request.match_info["message_id"]
        with self._lock:
            thread = self._thread_locked(thread_id)
            if thread is None:
                return _thread_not_found(thread_id)
            kept = [m for m in thread.messages if m["id"] != message_id]
            if len(kept) == len(thread.messages):
                return _error(404, f"No message found with id '{message_id}'.")
            thread.messages[:] = kept
        return _json({"id": message_id, "object": "thread.message.deleted", "deleted": True})

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
                assistant_id, {}, self._fake.model
            )
        selection = self._book.next_turn(f"thread:{thread_id}", text, continuation=False)
        turn = await self._fake._take_turn(request, selection, {**body, "input": text}, text)
        if isinstance(turn, web.StreamResponse):
            return turn
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
            seen = list(thread.messages)
        self._fake.conversation_items.run_turn(thread_id, run.id, seen)
        stream = _RunStream(
            self._fake, request, thread, run, resumed=False, input_tokens=_words(text)
        )
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
        turn = await self._fake._take_turn(request, selection, {**body, "input": text}, text)
        if isinstance(turn, web.StreamResponse):
            return turn
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
            seen = [
                *thread.messages,
                *({"type": "function_call_output", "call_id": o.call_id, "output": o.output}
                  for o in outputs),
            ]  # fmt: skip
        self._fake.conversation_items.run_turn(thread_id, run.id, seen)
        stream = _RunStream(
            self._fake,
            request,
            thread,
            run,
            resumed=True,
            input_tokens=sum(_words(o.output) for o in outputs),
        )
        return await stream.play(turn.stream)


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
