"""Every exception a run can raise becomes one `ServiceError`, here and nowhere else."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import openai

from service.errors import ServiceError
from service.schemas import ErrorCode


def classify(exc: BaseException) -> ServiceError:
    """Map an exception from a backend, the SDK or the transport to a contract error."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return ServiceError(ErrorCode.CANCELLED, "The request was cancelled", retryable=True)
    if isinstance(exc, TimeoutError | openai.APITimeoutError | httpx2.TimeoutException):
        return ServiceError(ErrorCode.TIMEOUT, "The model did not answer in time", retryable=True)
    if isinstance(exc, openai.RateLimitError):
        return ServiceError(ErrorCode.RATE_LIMITED, "The model is rate limited", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status >= 500 or status in (408, 409)
        return ServiceError(
            ErrorCode.UPSTREAM_ERROR, f"The model API answered HTTP {status}", retryable=retryable
        )
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return ServiceError(
            ErrorCode.UPSTREAM_ERROR, "The connection to the model API failed", retryable=True
        )
    if isinstance(exc, openai.APIError):
        # An `error` event inside the stream: the body carries the API's own code.
        code = _body_code(exc.body)
        if code in {"rate_limit_exceeded", "rate_limited"}:
            return ServiceError(ErrorCode.RATE_LIMITED, "The model is rate limited", retryable=True)
        return ServiceError(
            ErrorCode.UPSTREAM_ERROR, "The model API reported an error", retryable=True
        )
    return ServiceError(ErrorCode.INTERNAL, "Internal error", retryable=False)


def _body_code(body: Any) -> str | None:
    if isinstance(body, dict):
        code = body.get("code")
        return code if isinstance(code, str) else None
    return None
