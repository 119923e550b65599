"""What a conversation holds, as the real Responses + Conversations API keeps it.

The real API stores a turn's input items (the user message, function call outputs) and its
output items (assistant messages, function calls) in the conversation only when the response
completes: a response whose stream the client closed adds nothing, not even the user's input
(openai-python issue 3561). A conversation whose function call has no output refuses the next
turn unless that turn's input carries the output (400, "No tool output found for function
call ..."). Items can be listed, read, added and deleted:

    GET    /v1/conversations/{id}/items            ?order=asc|desc (desc), limit (20), after
    POST   /v1/conversations/{id}/items            {"items": [...]} (up to 20)
    GET    /v1/conversations/{id}/items/{item_id}
    DELETE /v1/conversations/{id}/items/{item_id}  answers the conversation
    GET    /v1/responses/{id}/input_items          the input items of a response (its ids)

For the Assistants API the same record is kept per run: the thread's messages when the run
started (and the tool outputs of each resumption).

Tests read :meth:`ConversationItems.seen`: exactly which items the model was given for each
turn, in order; and :meth:`ConversationItems.items`: what the conversation holds now.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.openai_wire import _BODY, _error, _json, _new_id, _now


@dataclass(frozen=True)
class SeenTurn:
    """One model turn: its conversation (or thread), its response (or run) id, and the items
    the model was given, oldest first (conversation items, then the turn's input)."""

    conversation_id: str
    response_id: str
    items: tuple[dict[str, Any], ...]

    def texts(self) -> list[str]:
        """``"<role>: <text>"`` for messages, ``"call <name>"``/``"output <call_id>: <output>"``
        for function calls and outputs: a compact view for assertions."""
        return [describe(item) for item in self.items]


@dataclass
class _Pending:
    conversation_id: str
    inputs: list[dict[str, Any]]


@dataclass
class ConversationItems:
    """Items per conversation, the turns the model saw, and the pending (uncommitted) turns."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _seen: list[SeenTurn] = field(default_factory=list)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _inputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add_routes(self, app: web.Application) -> None:
        add = app.router.add_route
        add("GET", "/v1/conversations/{id}/items", self._list)
        add("POST", "/v1/conversations/{id}/items", self._create)
        add("GET", "/v1/conversations/{id}/items/{item_id}", self._get)
        add("DELETE", "/v1/conversations/{id}/items/{item_id}", self._delete)
        add("GET", "/v1/responses/{id}/input_items", self._input_items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._seen.clear()
            self._pending.clear()
            self._inputs.clear()

    # ----- inspection (tests) -----

    def seen(self, conversation_id: str) -> list[SeenTurn]:
        """Every turn the model played on this conversation or thread, in order."""
        with self._lock:
            return [t for t in self._seen if t.conversation_id == conversation_id]

    def items(self, conversation_id: str) -> list[dict[str, Any]]:
        """What the conversation holds now, oldest first."""
        with self._lock:
            return [dict(item) for item in self._items.get(conversation_id, ())]

    # ----- the Responses endpoint's hooks -----

    def open_turn(self, conversation_id: str, response_id: str, body_input: Any) -> str | None:
        """A response starts on a conversation: record what the model sees; the turn's input is
        kept aside until :meth:`commit`. Returns the API's 400 message when refused."""
        inputs = [_stored(item, conversation_id) for item in _input_items(body_input)]
        with self._lock:
            held = self._items.setdefault(conversation_id, [])
            answered = {
                i["call_id"] for i in [*held, *inputs] if i["type"] == "function_call_output"
            }
            for item in held:
                if item["type"] == "function_call" and item["call_id"] not in answered:
                    return f"No tool output found for function call {item['call_id']}."
            self._seen.append(SeenTurn(conversation_id, response_id, (*held, *inputs)))
            self._pending[response_id] = _Pending(conversation_id, inputs)
            self._inputs[response_id] = inputs
        return None

    def commit(self, response_id: str, outputs: list[dict[str, Any]]) -> None:
        """The response completed: its input, then its output, join the conversation."""
        with self._lock:
            pending = self._pending.pop(response_id, None)
            if pending is None:
                return
            held = self._items.setdefault(pending.conversation_id, [])
            held += pending.inputs
            held += [_stored(item, pending.conversation_id) for item in outputs]

    def abort(self, response_id: str) -> None:
        """The response ended without completing (failed, or the client went away): the
        conversation keeps nothing of it."""
        with self._lock:
            self._pending.pop(response_id, None)

    # ----- the Assistants endpoints' hook -----

    def run_turn(self, thread_id: str, run_id: str, messages: list[dict[str, Any]]) -> None:
        """An Assistants run (or its resumption) starts: record the items the model sees."""
        with self._lock:
            self._seen.append(SeenTurn(thread_id, run_id, tuple(dict(m) for m in messages)))

    # ----- endpoints -----

    async def _list(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["id"]
        if conversation_id.startswith("conv_missing"):
            return _not_found(conversation_id)
        with self._lock:
            items = [dict(i) for i in self._items.get(conversation_id, ())]
        if request.query.get("order", "desc") == "desc":
            items.reverse()
        after = request.query.get("after")
        if after:
            ids = [i["id"] for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        limit = max(1, min(100, int(request.query.get("limit", "20"))))
        return _json(_list_page(items[:limit], has_more=len(items) > limit))

    async def _create(self, request: web.Request) -> web.Response:
        conversation_id = request.match_info["id"]
        if conversation_id.startswith("conv_missing"):
            return _not_found(conversation_id)
        given = request[_BODY].get("items")
        if not isinstance(given, list) or not 1 <= len(given) <= 20:
            return _error(400, "'items' must be a list of 1 to 20 items.", param="items")
        items = [_stored(item, conversation_id) for item in _input_items(given)]
        with self._lock:
            self._items.setdefault(conversation_id, []).extend(items)
        return _json(_list_page(items, has_more=False))

    async def _get(self, request: web.Request) -> web.Response:
        conversation_id, item_id = request.match_info["id"], request.match_info["item_id"]
        with self._lock:
            found = [i for i in self._items.get(conversation_id, ()) if i["id"] == item_id]
        if not found:
            return _item_not_found(item_id)
        return _json(found[0])

    async def _delete(self, request: web.Request) -> web.Response:
        conversation_id, item_id = request.match_info["id"], request.match_info["item_id"]
        if conversation_id.startswith("conv_missing"):
            return _not_found(conversation_id)
        with self._lock:
            held = self._items.get(conversation_id, [])
            kept = [i for i in held if i["id"] != item_id]
            if len(kept) == len(held):
                return _item_not_found(item_id)
            self._items[conversation_id] = kept
        return _json(
            {"id": conversation_id, "object": "conversation", "created_at": _now(), "metadata": {}}
        )

    async def _input_items(self, request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        with self._lock:
            inputs = self._inputs.get(response_id)
        if inputs is None:
            return _error(404, f"Response with id '{response_id}' not found.")
        items = [dict(i) for i in inputs]
        if request.query.get("order", "desc") == "desc":
            items.reverse()
        return _json(_list_page(items, has_more=False))


def describe(item: Mapping[str, Any]) -> str:
    """A compact text for one conversation item or thread message (see `SeenTurn.texts`)."""
    kind = item.get("type", "message")
    if kind == "function_call":
        return f"call {item.get('name')}"
    if kind == "function_call_output":
        return f"output {item.get('call_id')}: {item.get('output')}"
    if kind == "message" or item.get("object") == "thread.message":
        return f"{item.get('role')}: {_text(item.get('content'))}"
    return str(kind)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content or ():
        if isinstance(part, Mapping):
            text = part.get("text")
            if isinstance(text, Mapping):
                text = text.get("value")
            if isinstance(text, str):
                parts.append(text)
    return "".join(parts)


def _input_items(body_input: Any) -> list[dict[str, Any]]:
    if isinstance(body_input, str):
        return [{"type": "message", "role": "user", "content": body_input}]
    if isinstance(body_input, list):
        return [dict(i) for i in body_input if isinstance(i, Mapping)]
    return []


def _stored(item: Mapping[str, Any], conversation_id: str) -> dict[str, Any]:
    """An input or output item as the conversation stores it (with an id)."""
    kind = item.get("type", "message")
    if kind == "function_call_output":
        return {
            "id": item.get("id") or _new_id("fco"),
            "type": "function_call_output",
            "call_id": item.get("call_id"),
            "output": item.get("output"),
            "status": "completed",
        }
    if kind == "function_call":
        return {
            "id": item.get("id") or _new_id("fc"),
            "type": "function_call",
            "call_id": item.get("call_id"),
            "name": item.get("name"),
            "arguments": item.get("arguments", "{}"),
            "status": "completed",
        }
    role = item.get("role", "user")
    content = item.get("content")
    part_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        parts: list[dict[str, Any]] = [{"type": part_type, "text": content}]
    else:
        parts = [{"type": part_type, "text": _text([p])} for p in content or ()]
    if role == "assistant":
        for part in parts:
            part.setdefault("annotations", [])
    return {
        "id": item.get("id") or _new_id("msg"),
        "type": "message",
        "role": role,
        "content": parts,
        "status": "completed",
    }


def _list_page(items: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def _not_found(conversation_id: str) -> web.Response:
    return _error(404, f"Conversation with id '{conversation_id}' not found.", param="conversation")


def _item_not_found(item_id: str) -> web.Response:
    return _error(404, f"Item with id '{item_id}' not found.")
