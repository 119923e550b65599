"""A little ASGI plumbing for the web chat's routes: one path, a handler per method."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faststream.asgi import AsgiResponse
from faststream.asgi.types import Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20
"""Large enough for any valid request (32,000 characters, escaped, plus metadata)."""

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BodyTooLarge(Exception):
    """The request body is over MAX_BODY_BYTES."""


class HttpRequest:
    """What a handler needs of a request: headers, and the body read once."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._scope = scope
        self._receive = receive
        self.headers: dict[str, str] = {
            key.decode("latin-1").lower(): value.decode("latin-1")
            for key, value in scope.get("headers", ())
        }

    async def body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


Handler = Callable[[HttpRequest], Awaitable[AsgiResponse]]


class Route:
    """An ASGI app for one path: dispatches on the method, 405 for the others."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = dict(handlers)
        if "GET" in self._handlers:
            self._handlers.setdefault("HEAD", self._handlers["GET"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handlers.get(scope.get("method", ""))
        if handler is None:
            allow = ", ".join(sorted(self._handlers))
            response = json_response({"detail": "method not allowed"}, 405, {"Allow": allow})
        else:
            response = await handler(HttpRequest(scope, receive))
        await response(scope, receive, send)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> AsgiResponse:
    body = json.dumps(data, ensure_ascii=False).encode()
    return AsgiResponse(
        body,
        status,
        {**SECURITY_HEADERS, "Content-Type": "application/json", **(headers or {})},
    )
