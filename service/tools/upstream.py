"""HTTP calls to the APIs behind the tools, with failures turned into safe `ToolError`s.

httpx error messages and log lines carry the full request URL, and the OpenWeather key travels
in the query string, so nothing here ever formats an httpx exception: error texts are built from
status codes and exception class names only, and `redact_http_logs` (service.redaction) strips query strings from
httpx's own "HTTP Request: GET ..." log line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx2
from pydantic import TypeAdapter, ValidationError

from service.tools.tool import ToolContext, ToolError

T = TypeVar("T")

QueryValue = str | int | float

MAX_BODY_BYTES = 2_000_000
"""Upstream bodies above this size are refused rather than parsed."""


async def fetch_json(
    ctx: ToolContext,
    service: str,
    url: str,
    *,
    params: Mapping[str, QueryValue] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """GET `url` and return the decoded JSON body.

    `service` names the upstream in error texts ("OpenWeather", "KMC API"). Query values go
    through httpx `params=` so they are percent-encoded, never concatenated into the URL.
    """
    try:
        async with ctx.http.stream(
            "GET",
            url,
            params=dict(params) if params is not None else None,
            headers=dict(headers) if headers is not None else None,
        ) as response:
            if not response.is_success:
                raise ToolError(_status_error(service, response.status_code))
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ToolError(f"{service} answered with an oversized body")
    except ToolError:
        raise
    # `from None` everywhere below: a chained httpx exception would put the URL into tracebacks.
    except httpx2.TimeoutException:
        raise ToolError(f"{service} did not answer in time") from None
    except httpx2.TransportError as exc:
        raise ToolError(f"could not reach {service} ({type(exc).__name__})") from None
    except (httpx2.HTTPError, httpx2.InvalidURL, httpx2.StreamError) as exc:
        raise ToolError(f"request to {service} failed ({type(exc).__name__})") from None
    try:
        return json.loads(body)
    except ValueError:  # json.JSONDecodeError and UnicodeDecodeError both derive from it
        raise ToolError(f"{service} returned a body that is not JSON") from None


def parse_upstream(adapter: TypeAdapter[T], data: Any, service: str) -> T:
    """Validate an upstream JSON body against the shape the tool relies on."""
    try:
        return adapter.validate_python(data)
    except ValidationError:
        raise ToolError(f"{service} returned an unexpected response") from None


def _status_error(service: str, status: int) -> str:
    if status in (401, 403):
        return f"{service} rejected the API key (HTTP {status})"
    if status == 429:
        return f"{service} is rate limiting requests (HTTP 429), try again later"
    if status >= 500:
        return f"{service} is unavailable (HTTP {status})"
    return f"{service} answered HTTP {status}"
