"""A fake OpenAI API on loopback, scripted by tests, that the real ``openai`` SDK cannot tell
from the real thing.

It serves the Responses + Conversations API (the service's default backend) and the legacy
Assistants API, both streamed as server-sent events shaped like the real ones (every event
parses into its typed SDK model). What the model says is scripted per test with the steps of
:mod:`tests.fakes.script`; unscripted messages get ``"Echo: <message>"`` in word chunks.

Endpoints (all under ``/v1``)::

    POST   /responses                       stream=true only; conversation, previous_response_id
                                            background=true (see tests.fakes.openai_background)
    GET    /responses/{id}                  background responses: status, or stream=true resume
    POST   /responses/{id}/cancel           background responses
    POST   /conversations                   GET/DELETE /conversations/{id}
    POST   /assistants   GET /assistants    GET/DELETE /assistants/{id}
    POST   /threads                         GET/DELETE /threads/{id}
    POST   /threads/{id}/messages           GET /threads/{id}/messages
    POST   /threads/{id}/runs               stream=true only; GET lists runs (newest first)
    GET    /threads/{id}/runs/{run}         POST .../cancel, POST .../submit_tool_outputs

Real recordings: a turn ``[Replay(name)]`` answers the attempt with a recording of
``../shared/real_streams`` verbatim (status, the headers a client reads, the body in chunks; see
:mod:`tests.fakes.replay`), on any endpoint that plays turns. The function calls a replayed
Responses stream makes are pending like scripted ones.

Every conversation, thread and assistant id exists (nothing has to be created first) except
those starting with ``conv_missing``, ``thread_missing``, ``asst_missing`` (and response ids
starting with ``resp_missing``): those get the API's 404 error body.

Rules the real API enforces that the fake enforces too (400 with the real error body):
tool outputs must answer every pending function call and only known ones; a thread with an
active run (``queued``, ``in_progress``, ``requires_action``, ``cancelling``) accepts neither
messages nor a new run; only a ``requires_action`` run accepts tool outputs.

Run lifecycle (Assistants): a streamed run ends ``completed``, ``requires_action`` (until tool
outputs arrive or it is cancelled), ``failed`` (``StreamError``, ``Drop``), ``incomplete``
(``StreamError(kind="incomplete")``) or ``expired`` (``StreamError(kind="expired")``). A run
whose client went away mid-stream goes on (the thread stays busy) until it is cancelled, or
completes by itself after ``ABANDONED_RUN_LASTS`` seconds. ``cancel`` moves an active run to ``cancelling``; a stream
playing it ends with ``thread.run.cancelled``. :meth:`FakeOpenAI.set_active_run` leaves a run
active on a thread to exercise the service's wait/cancel logic.

Layout: this module has the server (lifecycle, scripting, request plumbing, the Responses and
Conversations endpoints); :mod:`tests.fakes.openai_assistants` the Assistants endpoints,
:mod:`tests.fakes.assistants_state` their runs and threads, :mod:`tests.fakes.openai_streams`
the SSE renderers of both APIs, :mod:`tests.fakes.openai_wire` the shared wire helpers.

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
  ``thread.run.failed``; ``kind="error"`` -> ``ResponseErrorEvent`` / ``ErrorEvent``;
  ``kind="incomplete"`` -> ``response.incomplete`` / ``thread.run.incomplete``;
  ``kind="expired"`` -> ``thread.run.expired`` (the Responses API: ``response.incomplete``).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from tests.fakes.conversation_items import ConversationItems
from tests.fakes.generation import GenerationLedger
from tests.fakes.openai_assistants import _AssistantsApi
from tests.fakes.openai_background import BackgroundResponses
from tests.fakes.openai_streams import _ResponsesStream
from tests.fakes.openai_wire import (
    _BODY,
    _STATUS_DEFAULTS,
    Handler,
    _error,
    _json,
    _new_id,
    _now,
    _words,
)
from tests.fakes.replay import Recording
from tests.fakes.script import (
    Drop,
    HttpError,
    Replay,
    ScriptBook,
    Selection,
    SplitTurn,
    Step,
    StreamError,
    Text,
    ToolCall,
    ToolOutput,
    Turn,
    echo_chunks,
    split_turn,
    tool_outputs,
    user_text,
)

__all__ = ["FakeOpenAI", "RecordedRequest"]


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
        self.conversation_items = ConversationItems()
        """Conversation items, and what the model saw per turn (see its module)."""
        self.generation = GenerationLedger(enabled=record_requests)
        """Tokens generated per stream, and after the client closed it."""
        self._assistants_api = _AssistantsApi(self)  # assistants, threads, runs
        self.background = BackgroundResponses(self)
        """Background responses (``background: true``): see :mod:`tests.fakes.openai_background`."""
        self._response_keys: dict[str, str] = {}  # response id -> conversation key
        self._call_keys: dict[str, str] = {}  # call id -> conversation key
        self._pending_calls: dict[str, list[str]] = {}  # conversation key -> unanswered calls
        self._route_replays: list[tuple[str, re.Pattern[str], str]] = []  # see replay_route
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

    def replay_route(self, method: str, path: str, name: str) -> None:
        """Answer the next ``method`` request whose path matches ``path`` (a regex, anchored)
        with the recording ``name``, whatever the endpoint (conversations, threads, …); once."""
        with self._lock:
            self._route_replays.append((method.upper(), re.compile(path), name))

    def reset(self) -> None:
        """Forget scripts, recorded requests, conversations, threads and runs."""
        self._book.reset()
        with self._lock:
            self._route_replays.clear()
            self._requests.clear()
            self._conversations.clear()
            self._assistants_api.clear()
            self._response_keys.clear()
            self._call_keys.clear()
            self._pending_calls.clear()
        self.conversation_items.clear()
        self.generation.clear()
        self.background.clear()

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
        return self._assistants_api.set_active_run(
            thread_id,
            status,
            clears_after=clears_after,
            cancel_delay=cancel_delay,
            created_ago=created_ago,
        )

    def thread_runs(self, thread_id: str) -> list[dict[str, Any]]:
        """JSON snapshots of a thread's runs, newest first."""
        return self._assistants_api.thread_runs(thread_id)

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
            replay = self._take_route_replay(request.method, request.path)
            if replay is not None:
                return await self._replay(request, Recording.load(replay), 0.0)
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
        self.conversation_items.add_routes(app)
        self.background.add_routes(app)
        self._assistants_api.add_routes(app)
        add("*", "/{tail:.*}", self._invalid_url)  # last: everything not routed above
        return app

    def _take_route_replay(self, method: str, path: str) -> str | None:
        with self._lock:
            for i, (wanted, pattern, name) in enumerate(self._route_replays):
                if wanted == method and pattern.fullmatch(path):
                    del self._route_replays[i]
                    return name
        return None

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

    async def _take_turn(
        self, request: web.Request, selection: Selection, body: dict[str, Any], echo: str
    ) -> SplitTurn | web.StreamResponse:
        """The turn to stream, or the response that ends this attempt before any stream."""
        turn = self._resolve(selection, body, echo)
        if isinstance(turn, str):
            return _error(500, f"fake script error: {turn}", "server_error")
        early = await self._play_early(request, turn)
        return turn if early is None else early

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
        if isinstance(early, Replay):
            return await self._replay(request, Recording.load(early.name), early.interval)
        if isinstance(early, Drop):
            if request.transport is not None:
                request.transport.close()
            return web.StreamResponse()
        return None

    async def _replay(
        self, request: web.Request, recording: Recording, interval: float
    ) -> web.StreamResponse:
        """Send a recording as the API sent it: status, headers, body in chunks."""
        response = web.StreamResponse(status=recording.status, headers=recording.headers())
        if not recording.streamed:
            response.content_length = len(recording.body)
        await response.prepare(request)
        for chunk in recording.chunks():
            await response.write(chunk)
            if interval:
                await asyncio.sleep(interval)
        await response.write_eof()
        return response

    # ----- Responses + Conversations -----

    async def _create_response(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = request[_BODY]
        background = body.get("background") is True
        if body.get("stream") is not True and not background:
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
        response_id = _new_id("resp")
        if problem is None and isinstance(conversation_id, str):
            problem = self.conversation_items.open_turn(
                conversation_id, response_id, body.get("input")
            )
        if problem is not None:
            return _error(400, problem, param="input")
        selection = self._book.next_turn(key, text, continuation=bool(outputs))
        turn = await self._take_turn(
            request, selection, body, text or " ".join(o.output for o in outputs)
        )
        if isinstance(turn, web.StreamResponse):
            self.conversation_items.abort(response_id)
            replayed = _replayed_calls(selection)
            if replayed:  # the recording's calls wait for their outputs, as scripted ones do
                with self._lock:
                    self._call_keys.update(dict.fromkeys(replayed, key))
                    self._pending_calls[key] = replayed
            return turn
        calls = [s.call_id for s in turn.stream if isinstance(s, ToolCall) and s.call_id]
        with self._lock:
            self._response_keys[response_id] = key
            self._call_keys.update(dict.fromkeys(calls, key))
            if calls and not isinstance(turn.stream[-1], Drop | StreamError):
                self._pending_calls[key] = calls
        if background:
            return await self.background.create(
                request,
                body,
                turn.stream,
                response_id=response_id,
                conversation_id=conversation_id if isinstance(conversation_id, str) else None,
                input_tokens=_words(text) + sum(_words(o.output) for o in outputs),
            )
        stream = _ResponsesStream(
            self,
            request,
            body,
            response_id=response_id,
            conversation_id=conversation_id if isinstance(conversation_id, str) else None,
            input_tokens=_words(text) + sum(_words(o.output) for o in outputs),
        )
        try:
            return await stream.play(turn.stream)
        finally:
            # Committed by the stream's completion; anything else leaves no trace.
            self.conversation_items.abort(response_id)

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


def _replayed_calls(selection: Selection) -> list[str]:
    """The call ids of the function calls a replayed recording streams."""
    turn = selection.turn
    if callable(turn) or not turn or not isinstance(turn[-1], Replay):
        return []
    recording = Recording.load(turn[-1].name)
    if recording.status != 200:
        return []
    return [str(item.get("call_id")) for item in recording.function_calls()]


def _conversation_not_found(conversation_id: str) -> web.Response:
    return _error(404, f"Conversation with id '{conversation_id}' not found.", param="conversation")
