"""How the fake OpenAI API's answers look on the wire, shared by the ``openai_*`` modules.

Ids (``resp_…``, ``run_…``), timestamps, compact JSON, the headers every answer carries, the
API's error body and list pages. Internal to the fake: tests use :mod:`tests.fakes.openai_server`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The request's JSON body, parsed once by FakeOpenAI's middleware (``{}`` when not an object).
_BODY = web.RequestKey("fake_openai_body", dict[str, Any])

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


def _page(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }
