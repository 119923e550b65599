"""A recording proxy in front of the fake OpenAI server: when did each model turn of each
conversation start and end, whichever replica ran it.

The replicas get the proxy's URL as OPENAI_BASE_URL; every request is forwarded to the fake
unchanged and its answer streamed back chunk by chunk. A *model turn* is one
``POST /v1/responses`` (Responses API) or ``POST /v1/threads/{id}/runs`` /
``.../submit_tool_outputs`` (Assistants API): it starts when the request arrives and ends when
the last byte of the streamed answer has been written back, or when the client went away.
Tests read :attr:`TurnRecorder.turns` to check that no two turns of one conversation overlapped
and that the conversation's requests started in publish order.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

_RUNS = re.compile(r"^/v1/threads/(?P<thread>[^/]+)/runs(/[^/]+/submit_tool_outputs)?$")
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "content-encoding"}


@dataclass
class Turn:
    """One model turn: its conversation, the user text it carried ('' for a tool round)."""

    conversation: str
    text: str
    started: float
    ended: float | None = None


class TurnRecorder:
    """The proxy; start it on the fakes' loop, after the fake OpenAI server."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._turns: list[Turn] = []
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def turns(self) -> list[Turn]:
        with self._lock:
            return list(self._turns)

    def reset(self) -> None:
        with self._lock:
            self._turns.clear()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        turn = self._turn_of(request, body)
        if turn is not None:
            with self._lock:
                self._turns.append(turn)
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in {"host", *_HOP_BY_HOP}
        }
        try:
            async with self._session.request(
                request.method,
                f"{self.upstream}{request.path_qs.removeprefix('/v1')}",
                data=body,
                headers=headers,
            ) as upstream:
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={
                        k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
                    },
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        finally:
            if turn is not None:
                turn.ended = time.time()

    def _turn_of(self, request: web.Request, body: bytes) -> Turn | None:
        if request.method != "POST":
            return None
        data: Any = _json(body)
        if request.path == "/v1/responses":
            conversation = data.get("conversation")
            if isinstance(conversation, dict):
                conversation = conversation.get("id")
            return Turn(str(conversation), _user_text(data), time.time())
        match = _RUNS.match(request.path)
        if match:
            messages = data.get("additional_messages") or []
            text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
            return Turn(match["thread"], text, time.time())
        return None


def overlaps(turns: list[Turn]) -> list[tuple[Turn, Turn]]:
    """Pairs of turns of one conversation that were in progress at the same time."""
    found: list[tuple[Turn, Turn]] = []
    by_conversation: dict[str, list[Turn]] = {}
    for turn in turns:
        by_conversation.setdefault(turn.conversation, []).append(turn)
    for line in by_conversation.values():
        line.sort(key=lambda t: t.started)
        for before, after in itertools.pairwise(line):
            if before.ended is None or after.started < before.ended:
                found.append((before, after))
    return found


def _json(body: bytes) -> Any:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _user_text(body: dict[str, Any]) -> str:
    items = body.get("input")
    if isinstance(items, str):
        return items
    texts: list[str] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts += [c.get("text", "") for c in content if isinstance(c, dict)]
    return " ".join(texts)
