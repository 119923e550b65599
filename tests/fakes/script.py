"""Scripted model turns for the fake OpenAI server.

A *script* is ``(match, turns)``: when a new run starts whose user message contains ``match``
(a substring, case-sensitive, or a compiled regular expression), the fake model plays
``turns[0]``; every later *attempt* on the same conversation plays the next turn.

An attempt is one HTTP request that asks the model for output:

* ``POST /v1/responses`` (Responses API), or
* ``POST /v1/threads/{id}/runs`` and ``POST /v1/threads/{id}/runs/{run}/submit_tool_outputs``
  (Assistants API).

So ``[[ToolCall(...)], [Text("done")]]`` is "call a tool, then answer once the tool output
arrives", and ``[[HttpError(500)], [Text("ok")]]`` is "the first attempt fails with 500, the
retry (the SDK's own or the service's) succeeds". Requests rejected before reaching the model
(unknown conversation, active run, bad tool outputs, wrong API key) consume nothing.

A turn is a list of steps, or a function ``(request_body) -> list of steps`` called when the
turn is played (the demo uses that to answer from the tool output it receives; see
:func:`user_text` and :func:`tool_outputs` for reading the body).

Which conversation an attempt belongs to: the Responses API ``conversation`` id; else the
conversation of ``previous_response_id``; else the conversation that issued the tool call whose
output the request carries; else the user message text itself. For the Assistants API it is
the thread. A conversation keeps its cursor while it has turns left: a request carrying tool
outputs, or one repeating the same user message (a retry), plays the next turn; a request with a
different user message starts matching afresh (the abandoned turns are reported by
:meth:`ScriptBook.assert_complete`). Once every turn was played the cursor is gone, so the
next attempt starts the script over: ``[[HttpError(500)]]`` fails every attempt, retries
included, and a script serves any number of conversations, each with its own cursor.

Within a turn: ``Text`` chunks and ``ToolCall`` items stream in the order given (consecutive
``Text`` steps share one message); ``Stall`` pauses; ``Usage`` sets the reported usage; a turn
with tool calls ends waiting for their outputs, otherwise the response/run completes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "Drop",
    "HttpError",
    "Replay",
    "ScriptBook",
    "Selection",
    "Stall",
    "Step",
    "StreamError",
    "StreamErrorKind",
    "Text",
    "ToolCall",
    "ToolOutput",
    "Turn",
    "TurnFunction",
    "Usage",
    "echo_chunks",
    "split_turn",
    "tool_outputs",
    "user_text",
]


@dataclass(frozen=True, init=False)
class Text:
    """Text from the model: each chunk is one delta event, ``interval`` seconds apart."""

    chunks: tuple[str, ...]
    interval: float

    def __init__(self, *chunks: str, interval: float = 0.0) -> None:
        object.__setattr__(self, "chunks", chunks)
        object.__setattr__(self, "interval", interval)


@dataclass(frozen=True)
class ToolCall:
    """A function call; several in one turn are parallel calls. ``arguments`` is JSON text,
    streamed split across several delta events like the real API does."""

    name: str
    arguments: str = "{}"
    call_id: str | None = None


@dataclass(frozen=True)
class HttpError:
    """Answer the attempt with this HTTP status and the API's error body instead of a stream.

    Must be the only step of its turn (after optional ``Stall(before_response=True)``).
    ``message``/``error_type`` default to what the real API says for that status; ``headers``
    are added to the response (``retry-after``, ``retry-after-ms``, ``x-should-retry``).
    """

    status: int
    message: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None
    error_type: str | None = None


@dataclass(frozen=True)
class Replay:
    """Answer the attempt with a real API recording, verbatim (see :mod:`tests.fakes.replay`):
    its HTTP status, the headers a client reads, and its body (a stream or an error body) in
    chunks of varying size. ``name`` is the recording's file name without ``.sse`` /
    ``.body.json``. Must be the only step of its turn (after optional
    ``Stall(before_response=True)``). The function calls it streams are pending like scripted
    ones: the next attempt must carry their outputs."""

    name: str
    interval: float = 0.0
    """Seconds between chunks."""


@dataclass(frozen=True)
class Drop:
    """Close the TCP connection abruptly, after the previous steps were sent.

    With ``before_response=True`` (first step only) the connection closes before any HTTP
    response: the SDK sees a connection error on the request itself and retries it if allowed.
    Otherwise the stream has started (``response.created`` / ``thread.run.created`` were sent)
    and the SDK raises mid-stream; it never retries a broken stream.
    """

    before_response: bool = False


@dataclass(frozen=True)
class Stall:
    """Send nothing for ``seconds`` while keeping the connection open.

    ``before_response=True`` stalls before the response headers (the SDK's whole-request
    timeout applies); otherwise mid-stream (the SDK's read timeout applies).
    """

    seconds: float
    before_response: bool = False


StreamErrorKind = Literal["failed", "error", "incomplete", "expired"]


@dataclass(frozen=True)
class StreamError:
    """The model's response/run ends mid-stream without completing; ends the turn.

    * ``kind="failed"``: ``response.failed`` (Responses) / ``thread.run.failed`` (Assistants)
      with ``error``/``last_error`` = ``{code, message}``.
    * ``kind="error"``: a bare ``error`` event with ``code`` and ``message``.
    * ``kind="incomplete"``: ``response.incomplete`` / ``thread.run.incomplete``, as when the
      model hits its output token limit: the text so far is kept, its message ending
      ``incomplete``; ``incomplete_details.reason`` is ``max_output_tokens`` (Responses) /
      ``max_completion_tokens`` (Assistants); usage is reported.
    * ``kind="expired"``: ``thread.run.expired`` (Assistants), as when a run outlives its
      ``expires_at``. The Responses API has no expiry: there it plays as ``"incomplete"``.

    ``message`` and ``code`` are used by ``"failed"`` and ``"error"`` only.
    """

    message: str = "The server had an error while processing your request. Sorry about that!"
    code: str = "server_error"
    kind: StreamErrorKind = "failed"

    def __post_init__(self) -> None:
        if self.kind not in get_args(StreamErrorKind):  # a typo would otherwise mean "failed"
            raise ValueError(f"StreamError kind is one of {get_args(StreamErrorKind)}: {self!r}")


@dataclass(frozen=True)
class Usage:
    """Token usage reported at completion (default: words in, words out)."""

    input_tokens: int
    output_tokens: int


Step = Text | ToolCall | HttpError | Replay | Drop | Stall | StreamError | Usage
TurnFunction = Callable[[dict[str, Any]], Sequence[Step]]
Turn = Sequence[Step] | TurnFunction


@dataclass(frozen=True)
class SplitTurn:
    """A validated turn: stalls before the response, an optional early ending (an HTTP error or
    a dropped connection instead of a response), then the steps played inside the stream."""

    before: tuple[Stall, ...]
    early: HttpError | Replay | Drop | None
    stream: tuple[Step, ...]


def split_turn(steps: Sequence[Step]) -> SplitTurn:
    """Validate a turn and split it; raises ``ValueError`` naming the misplaced step."""
    steps = tuple(steps)
    before: list[Stall] = []
    for step in steps:
        if not (isinstance(step, Stall) and step.before_response):
            break
        before.append(step)
    i = len(before)
    rest = steps[i:]
    first = rest[0] if rest else None
    if isinstance(first, HttpError | Replay) or (isinstance(first, Drop) and first.before_response):
        if len(rest) > 1:
            raise ValueError(f"{first!r} ends the attempt: nothing may follow it, got {rest[1:]!r}")
        return SplitTurn(tuple(before), first, ())
    for n, step in enumerate(rest):
        if isinstance(step, HttpError | Replay):
            raise ValueError(f"{step!r} must be the only step of its turn (the stream started)")
        if isinstance(step, Stall | Drop) and step.before_response:
            raise ValueError(f"{step!r} must come before every stream step")
        if isinstance(step, Drop | StreamError) and n != len(rest) - 1:
            raise ValueError(f"{step!r} ends the stream: it must be the last step")
        if not isinstance(step, Step):  # a typo'd step would otherwise be silently skipped
            raise ValueError(f"not a script step: {step!r}")
    return SplitTurn(tuple(before), None, rest)


@dataclass(frozen=True)
class ToolOutput:
    """One tool result carried by a request."""

    call_id: str
    output: str


def _content_text(content: Any) -> str:
    """Text of a message ``content``: a string or a list of ``input_text``/``text`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif isinstance(text, Mapping) and isinstance(text.get("value"), str):
                    parts.append(text["value"])
        return "".join(parts)
    return ""


def user_text(body: Mapping[str, Any]) -> str:
    """The last user message of a request body: Responses ``input`` (a string or input items),
    or the ``input`` the fake adds for Assistants runs (the thread's last user message)."""
    input_ = body.get("input")
    if isinstance(input_, str):
        return input_
    if isinstance(input_, list):
        for item in reversed(input_):
            if (
                isinstance(item, Mapping)
                and item.get("role") == "user"
                and item.get("type", "message") == "message"
            ):
                return _content_text(item.get("content"))
    return ""


def tool_outputs(body: Mapping[str, Any]) -> list[ToolOutput]:
    """Tool results in a request body: Responses ``function_call_output`` input items or
    Assistants ``tool_outputs``."""
    found: list[ToolOutput] = []
    input_ = body.get("input")
    if isinstance(input_, list):
        for item in input_:
            if isinstance(item, Mapping) and item.get("type") == "function_call_output":
                output = item.get("output")
                text = output if isinstance(output, str) else _content_text(output)
                found.append(ToolOutput(str(item.get("call_id")), text))
    for item in body.get("tool_outputs") or ():
        if isinstance(item, Mapping):
            found.append(ToolOutput(str(item.get("tool_call_id")), str(item.get("output", ""))))
    return found


_WORD = re.compile(r"\S+\s*|\s+")


def echo_chunks(message: str) -> tuple[str, ...]:
    """``"Echo: <message>"`` in word chunks whose concatenation is exactly that text."""
    return tuple(_WORD.findall(f"Echo: {message}"))


@dataclass
class _Script:
    match: str | re.Pattern[str]
    turns: tuple[Turn, ...]
    used: bool = False

    def matches(self, text: str) -> bool:
        if isinstance(self.match, str):
            return self.match in text
        return self.match.search(text) is not None

    def label(self) -> str:
        match = self.match if isinstance(self.match, str) else self.match.pattern
        return f"script {match!r}"


@dataclass
class _Cursor:
    script: _Script
    next_turn: int
    user_text: str


@dataclass(frozen=True)
class Selection:
    """The turn chosen for one attempt; ``turn`` is ``None`` when no script applies."""

    turn: Turn | None
    label: str = "default echo"


class ScriptBook:
    """Thread-safe registry of scripts and of each conversation's position in its script.

    The ``ScriptedModel`` pattern: :meth:`assert_complete` fails when a script was never used,
    when a conversation stopped before its last turn, or when a request found no turn left.
    """

    def __init__(self) -> None:
        # Plain data behind a threading lock: tests script the fake from their own thread
        # while the server reads the scripts on its event loop thread.
        self._lock = threading.Lock()
        self._scripts: list[_Script] = []
        self._cursors: dict[str, _Cursor] = {}
        self._problems: list[str] = []

    def add(self, match: str | re.Pattern[str], turns: Sequence[Turn]) -> None:
        """Register a script; list turns are validated now, function turns when played."""
        if not turns:
            raise ValueError("a script needs at least one turn")
        for turn in turns:
            if not callable(turn):
                split_turn(turn)
        with self._lock:
            self._scripts.append(_Script(match, tuple(turns)))

    def reset(self) -> None:
        """Forget every script, cursor and problem."""
        with self._lock:
            self._scripts.clear()
            self._cursors.clear()
            self._problems.clear()

    def report(self, problem: str) -> None:
        """Record a problem for :meth:`assert_complete` (e.g. a function turn that raised)."""
        with self._lock:
            self._problems.append(problem)

    def next_turn(self, key: str, text: str, *, continuation: bool) -> Selection:
        """Consume the turn for one attempt on conversation ``key``.

        ``continuation`` is true when the request carries tool outputs.
        """
        with self._lock:
            cursor = self._cursors.get(key)
            if cursor is not None and (continuation or cursor.user_text == text):
                return self._advance(key, cursor)
            if cursor is not None:
                del self._cursors[key]
                self._problems.append(
                    f"{cursor.script.label()}: turns from {cursor.next_turn} on were never played "
                    f"on {key!r}; a new message {text[:60]!r} arrived instead"
                )
            if continuation:
                self._problems.append(
                    f"{key!r}: a request carried tool outputs but no scripted turn was left; "
                    "answered with the default echo"
                )
                return Selection(None)
            for script in self._scripts:
                if script.matches(text):
                    script.used = True
                    return self._advance(key, _Cursor(script, 0, text))
            return Selection(None)

    def _advance(self, key: str, cursor: _Cursor) -> Selection:
        index = cursor.next_turn
        cursor.next_turn += 1
        if cursor.next_turn < len(cursor.script.turns):
            self._cursors[key] = cursor
        else:
            self._cursors.pop(key, None)
        return Selection(cursor.script.turns[index], f"{cursor.script.label()} turn {index}")

    def assert_complete(self) -> None:
        """Raise ``AssertionError`` listing unused scripts, unplayed turns and problems."""
        with self._lock:
            problems = [f"{s.label()} was never matched" for s in self._scripts if not s.used]
            problems += [
                f"{c.script.label()}: {key!r} stopped after turn {c.next_turn - 1} of "
                f"{len(c.script.turns)}"
                for key, c in self._cursors.items()
            ]
            problems += self._problems
        if problems:
            raise AssertionError("fake OpenAI script incomplete:\n  " + "\n  ".join(problems))
