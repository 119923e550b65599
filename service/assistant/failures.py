"""The one error mapper: whatever goes wrong with the model API becomes one `ServiceError`.

Every place a failure can show up maps it here and nowhere else:

* an exception from the SDK or the transport (`classify`), HTTP error bodies included
  (`{"error": {"code", "type", "message", "param"}}`, read by the SDK into `exc.code`/`exc.type`);
* an `error` event inside a stream and a `response.failed` / `thread.run.failed` ending
  (`api_error`, `response_ended`, `run_ended`, `stream_error`).

The API's own `code` decides first (`API_CODES`), then its error `type`, then the HTTP status
(`_BY_STATUS`). `retryable` is true only for what trying again can fix (rate limits, server
errors, timeouts, broken connections); the retry policy (`retry.py`) retries exactly those.
The `message` is a short text that is safe to show a user: never the API's own message, which
may quote the API key, an organisation id or the prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from service.errors import RunTimeout, ServiceError, ThreadNotFound
from service.schemas import ErrorCode


@dataclass(frozen=True, slots=True)
class Failure:
    """What an API error means for the service: its contract code, retryability and text."""

    code: ErrorCode
    retryable: bool
    message: str

    def error(self) -> ServiceError:
        return ServiceError(self.code, self.message, retryable=self.retryable)


RATE_LIMITED = Failure(ErrorCode.RATE_LIMITED, True, "the model API is rate limiting requests")
TOO_LARGE_FOR_RATE_LIMIT = Failure(
    ErrorCode.RATE_LIMITED, False, "the request is larger than the API key's per-minute token limit"
)
NO_QUOTA = Failure(ErrorCode.UPSTREAM_ERROR, False, "the API key has no quota left")
TOO_LONG = Failure(ErrorCode.UPSTREAM_ERROR, False, "the conversation is too long for the model")
BAD_KEY = Failure(ErrorCode.UPSTREAM_ERROR, False, "the model API rejected the API key")
NOT_ALLOWED = Failure(
    ErrorCode.UPSTREAM_ERROR, False, "the API key is not allowed to use this model or endpoint"
)
NO_MODEL = Failure(
    ErrorCode.UPSTREAM_ERROR, False, "the configured model does not exist or the key cannot use it"
)
REJECTED = Failure(ErrorCode.UPSTREAM_ERROR, False, "the model API rejected the request")
NOT_FOUND = Failure(ErrorCode.UPSTREAM_ERROR, False, "the model API did not find what was asked")
POLICY = Failure(ErrorCode.UPSTREAM_ERROR, False, "the model API refused the prompt (usage policy)")
SERVER = Failure(ErrorCode.UPSTREAM_ERROR, True, "the model API had a server error")
OVERLOADED = Failure(ErrorCode.UPSTREAM_ERROR, True, "the model API is overloaded")
CONFLICT = Failure(ErrorCode.UPSTREAM_ERROR, True, "the model API asked to try again")
UNKNOWN = Failure(ErrorCode.UPSTREAM_ERROR, False, "the model API reported an error")
UNSPECIFIED = Failure(ErrorCode.UPSTREAM_ERROR, True, "the model API reported an error")
CONNECTION = Failure(ErrorCode.UPSTREAM_ERROR, True, "the connection to the model API failed")
TIMED_OUT = Failure(ErrorCode.TIMEOUT, True, "the model did not answer in time")
CUT_OFF = Failure(ErrorCode.UPSTREAM_ERROR, False, "the answer was cut off at the token limit")
FILTERED = Failure(ErrorCode.UPSTREAM_ERROR, False, "the answer was stopped by the content filter")
INCOMPLETE = Failure(ErrorCode.UPSTREAM_ERROR, False, "the model's answer was incomplete")
RUN_CANCELLED = Failure(ErrorCode.UPSTREAM_ERROR, False, "the run was cancelled on the API side")
RUN_EXPIRED = Failure(ErrorCode.TIMEOUT, True, "the run expired before it finished")

API_CODES: Mapping[str, Failure] = {
    "rate_limit_exceeded": RATE_LIMITED,
    "rate_limited": RATE_LIMITED,
    "insufficient_quota": NO_QUOTA,
    "billing_hard_limit_reached": NO_QUOTA,
    "context_length_exceeded": TOO_LONG,
    "string_above_max_length": TOO_LONG,
    "invalid_api_key": BAD_KEY,
    "incorrect_api_key": BAD_KEY,
    "unsupported_country_region_territory": NOT_ALLOWED,
    "model_not_found": NO_MODEL,
    "invalid_prompt": POLICY,
    "content_policy_violation": POLICY,
    "server_error": SERVER,
    "internal_error": SERVER,
    "vector_store_timeout": SERVER,
    "server_is_overloaded": OVERLOADED,
    "overloaded": OVERLOADED,
    "slow_down": OVERLOADED,
}
"""The API's error `code` (HTTP error bodies, stream `error` events, failed responses/runs)."""

_BY_TYPE: Mapping[str, Failure] = {
    "insufficient_quota": NO_QUOTA,
    "server_error": SERVER,
    "rate_limit_error": RATE_LIMITED,
}

_BY_STATUS: Mapping[int, Failure] = {
    400: REJECTED,
    401: BAD_KEY,
    403: NOT_ALLOWED,
    404: NOT_FOUND,
    408: CONFLICT,
    409: CONFLICT,
    422: REJECTED,
    429: RATE_LIMITED,
}


def api_error(
    code: object, *, type_: object = None, status: int | None = None, message: object = None
) -> ServiceError:
    """The `ServiceError` for an API error's `code`, `type`, HTTP `status` and raw `message`.

    The raw message is only read, never published: a 429 "Request too large" is a request that
    no wait makes fit, not a rate limit to wait out.
    """
    return _failure(code, type_=type_, status=status, message=message).error()


def _failure(code: object, *, type_: object, status: int | None, message: object) -> Failure:
    found = API_CODES.get(code) if isinstance(code, str) else None
    if found is None and isinstance(type_, str):
        found = _BY_TYPE.get(type_)
    if found is None and status is not None:
        found = _BY_STATUS.get(status) or (SERVER if status >= 500 else REJECTED)
    if found is None:
        # An in-stream error with no code at all is most often a transient server fault; an
        # unknown code is something new that a retry is not known to fix.
        found = UNSPECIFIED if code is None else UNKNOWN
    if (
        found is RATE_LIMITED
        and isinstance(message, str)
        and "request too large" in message.lower()
    ):
        return TOO_LARGE_FOR_RATE_LIMIT
    return found


def error_fields(data: object) -> tuple[object, object, object]:
    """`(code, type, message)` of an error object, a dict (nested `{"error": {...}}` or flat)."""
    if isinstance(data, Mapping):
        nested = data.get("error")
        fields: Mapping[str, Any] = nested if isinstance(nested, Mapping) else data
        return fields.get("code"), fields.get("type"), fields.get("message")
    return _field(data, "code"), _field(data, "type"), _field(data, "message")


def stream_error(data: object) -> ServiceError:
    """An `error` event inside a stream (its data, a model or a dict)."""
    code, type_, message = error_fields(data)
    return api_error(code, type_=type_, message=message)


def response_ended(response: Any) -> ServiceError:
    """A Responses stream that ended `response.failed` or `response.incomplete`."""
    if _field(response, "status") == "incomplete":
        return _incomplete(_field(_field(response, "incomplete_details"), "reason"))
    code, type_, message = error_fields(_field(response, "error"))
    return api_error(code, type_=type_, message=message)


def run_ended(status: str, run: Any) -> ServiceError:
    """An Assistants run that ended `failed`, `expired`, `cancelled` or `incomplete`."""
    if status == "expired":
        return RunTimeout(RUN_EXPIRED.message)
    if status == "cancelled":
        return RUN_CANCELLED.error()
    if status == "incomplete":
        return _incomplete(_field(_field(run, "incomplete_details"), "reason"))
    code, type_, message = error_fields(_field(run, "last_error"))
    return api_error(code, type_=type_, message=message)


def _field(value: object, name: str) -> object:
    """A field of an SDK model, or of the dict the SDK left unparsed."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _incomplete(reason: object) -> ServiceError:
    if reason in ("max_output_tokens", "max_completion_tokens", "max_prompt_tokens"):
        return CUT_OFF.error()
    if reason == "content_filter":
        return FILTERED.error()
    return INCOMPLETE.error()


def classify(exc: BaseException) -> ServiceError:
    """Map an exception from a backend, the SDK or the transport to a contract error."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return ServiceError(ErrorCode.CANCELLED, "The request was cancelled", retryable=True)
    if isinstance(exc, TimeoutError | openai.APITimeoutError | httpx2.TimeoutException):
        return TIMED_OUT.error()
    if isinstance(exc, openai.APIStatusError):
        _, _, message = error_fields(exc.body)
        error = api_error(exc.code, type_=exc.type, status=exc.status_code, message=message)
        should_retry = exc.response.headers.get("x-should-retry")
        if should_retry in ("true", "false"):  # the API's own word, as the SDK honours it
            error.retryable = should_retry == "true"
        error.retry_after = retry_after(exc.response.headers) if error.retryable else None
        return error
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return CONNECTION.error()
    if isinstance(exc, openai.APIError):
        # An `{"error": ...}` event inside the stream: the body is the API's error object.
        return stream_error(exc.body)
    return ServiceError(ErrorCode.INTERNAL, "Internal error", retryable=False)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait an error answer asks for: `retry-after-ms`, else `retry-after` in seconds (an
    HTTP date is not used: the API sends seconds)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0 and seconds == seconds:  # not NaN
            return seconds
    return None


def thread_missing(exc: openai.NotFoundError, thread_id: str) -> ServiceError:
    """A 404 on a call that names the thread: the thread/conversation is gone, unless the
    API's code names another cause (`model_not_found`)."""
    if exc.code in API_CODES:
        return classify(exc)
    return ThreadNotFound(thread_id)
