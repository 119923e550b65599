"""Validating a raw chat request, and what can still be read from an invalid one."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from service.errors import ServiceError
from service.schemas import CHANNEL_PATTERN, ChatRequest, ErrorCode

JSON_CONTENT_TYPES = re.compile(r"^(application/([\w.+-]+\+)?json|text/json)\s*(;.*)?$", re.I)
_CHANNEL = re.compile(CHANNEL_PATTERN)


def parse_request(body: bytes, content_type: str | None) -> ChatRequest:
    """Validate a raw body; raises `ServiceError(invalid_request)` with a readable reason."""
    if content_type and not JSON_CONTENT_TYPES.match(content_type):
        raise ServiceError(
            ErrorCode.INVALID_REQUEST, f"Unsupported content type {content_type[:60]!r}"
        )
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise ServiceError(ErrorCode.INVALID_REQUEST, _describe_validation(exc)) from None


def readable_fields(body: bytes) -> dict[str, str]:
    """`channel`, `message_id`, `thread_id` of an invalid body, where they are valid on their own."""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    fields: dict[str, str] = {}
    for name in ("channel", "thread_id"):
        value = data.get(name)
        if isinstance(value, str) and _CHANNEL.match(value):
            fields[name] = value
    message_id = data.get("message_id")
    if isinstance(message_id, str) and 0 < len(message_id) <= 200 and message_id.isprintable():
        fields["message_id"] = message_id
    return fields


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where[:80]}: {error['msg'][:200]}")
    text = "Invalid request: " + "; ".join(parts)
    # Field names can come from the input (metadata keys): keep the text printable and encodable.
    return text.encode("utf-8", "replace").decode("utf-8")
