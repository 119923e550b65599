"""The one error mapper (service/assistant/failures.py): API codes, HTTP error bodies, stream
error events and failed/incomplete endings to contract codes, and what the retry policy does
with them. The SDK's exceptions are built from real responses through the SDK itself."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response

from service.assistant.failures import (
    classify,
    response_ended,
    run_ended,
    stream_error,
)
from service.assistant.retry import RetryPolicy
from service.errors import ServiceError
from service.schemas import ErrorCode

UPSTREAM, RATE, TIMEOUT = ErrorCode.UPSTREAM_ERROR, ErrorCode.RATE_LIMITED, ErrorCode.TIMEOUT


def sdk_error(
    status: int, error: dict[str, Any] | None, headers: dict[str, str] | None = None
) -> openai.APIStatusError:
    """The exception the SDK raises for this HTTP answer (its own status-to-class mapping)."""
    client = openai.AsyncOpenAI(api_key="k", base_url="http://model.invalid/v1")
    request = httpx2.Request("POST", "http://model.invalid/v1/responses")
    content = json.dumps({"error": error}).encode() if error is not None else b"upstream broke"
    response = httpx2.Response(status, content=content, request=request, headers=headers)
    return client._make_status_error_from_response(response)


def err(
    code: str | None, type_: str = "invalid_request_error", message: str = "x"
) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": None, "code": code}


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (429, err("rate_limit_exceeded", "requests"), (RATE, True)),
        (
            429,
            err("rate_limit_exceeded", "tokens", "Request too large for gpt-5.1 ..."),
            (RATE, False),
        ),
        (429, err("insufficient_quota", "insufficient_quota"), (UPSTREAM, False)),
        (400, err("context_length_exceeded"), (UPSTREAM, False)),
        (400, err("model_not_found"), (UPSTREAM, False)),
        (404, err("model_not_found"), (UPSTREAM, False)),
        (400, err("decimal_below_min_value"), (UPSTREAM, False)),
        (400, err(None), (UPSTREAM, False)),
        (401, err("invalid_api_key"), (UPSTREAM, False)),
        (403, err(None), (UPSTREAM, False)),
        (409, err(None), (UPSTREAM, True)),
        (500, err(None, "server_error"), (UPSTREAM, True)),
        (502, None, (UPSTREAM, True)),
        (503, err(None, "server_error"), (UPSTREAM, True)),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else None,
)
def test_http_error_bodies_map_to_contract_codes(
    status: int, error: dict[str, Any] | None, expected: tuple[ErrorCode, bool]
) -> None:
    mapped = classify(sdk_error(status, error))
    assert (mapped.code, mapped.retryable) == expected
    assert mapped.message and mapped.message != "x"


def test_messages_are_short_safe_reasons_not_the_apis_text() -> None:
    secret = "Incorrect API key provided: sk-live-SECRET. You can find your API key at ..."
    mapped = classify(sdk_error(401, err("invalid_api_key", message=secret)))
    assert "SECRET" not in mapped.message
    assert classify(sdk_error(400, err("context_length_exceeded"))).message == (
        "the conversation is too long for the model"
    )
    assert classify(sdk_error(429, err("insufficient_quota", "insufficient_quota"))).message == (
        "the API key has no quota left"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # The 2025+ wire format: the error object nested under "error".
        (
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "code": "context_length_exceeded"},
            },
            (UPSTREAM, False),
        ),
        (
            {
                "type": "error",
                "error": {"type": "insufficient_quota", "code": "insufficient_quota"},
            },
            (UPSTREAM, False),
        ),
        # The older flat format.
        ({"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}, (RATE, True)),
        ({"type": "error", "code": "server_error", "message": "boom"}, (UPSTREAM, True)),
        ({"type": "error", "code": None, "message": "boom"}, (UPSTREAM, True)),
        ({"type": "error", "code": "something_new", "message": "?"}, (UPSTREAM, False)),
    ],
)
def test_stream_error_events_map_by_their_code(
    data: dict[str, Any], expected: tuple[ErrorCode, bool]
) -> None:
    mapped = stream_error(data)
    assert (mapped.code, mapped.retryable) == expected


def test_an_error_event_raised_by_the_sse_reader_maps_by_its_body() -> None:
    request = httpx2.Request("POST", "http://model.invalid/v1/responses")
    body = {"type": "insufficient_quota", "code": "insufficient_quota", "message": "no"}
    mapped = classify(openai.APIError("no", request, body=body))
    assert (mapped.code, mapped.retryable, mapped.message) == (
        UPSTREAM,
        False,
        "the API key has no quota left",
    )


def response(status: str, **fields: Any) -> Response:
    return Response.construct(id="resp_1", object="response", status=status, **fields)


@pytest.mark.parametrize(
    ("ended", "expected"),
    [
        (response("failed", error={"code": "server_error", "message": "m"}), (UPSTREAM, True)),
        (response("failed", error={"code": "rate_limit_exceeded", "message": "m"}), (RATE, True)),
        (
            response("failed", error={"code": "context_length_exceeded", "message": "m"}),
            (UPSTREAM, False),
        ),
        (response("failed", error={"code": "invalid_prompt", "message": "m"}), (UPSTREAM, False)),
        (
            response("incomplete", incomplete_details={"reason": "max_output_tokens"}),
            (UPSTREAM, False),
        ),
        (
            response("incomplete", incomplete_details={"reason": "content_filter"}),
            (UPSTREAM, False),
        ),
    ],
)
def test_failed_and_incomplete_responses(ended: Response, expected: tuple[ErrorCode, bool]) -> None:
    mapped = response_ended(ended)
    assert (mapped.code, mapped.retryable) == expected


def test_failed_expired_cancelled_and_incomplete_runs() -> None:
    class Run:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

    assert run_ended("expired", Run()).code is TIMEOUT
    cancelled = run_ended("cancelled", Run())
    assert (cancelled.code, cancelled.retryable) == (UPSTREAM, False)
    limited = run_ended("failed", Run(last_error={"code": "rate_limit_exceeded", "message": "m"}))
    assert (limited.code, limited.retryable) == (RATE, True)
    cut = run_ended("incomplete", Run(incomplete_details={"reason": "max_prompt_tokens"}))
    assert (cut.code, cut.retryable, cut.message) == (
        UPSTREAM,
        False,
        "the answer was cut off at the token limit",
    )


def test_transport_failures_are_retryable() -> None:
    request = httpx2.Request("POST", "http://model.invalid/v1/responses")
    assert classify(openai.APITimeoutError(request)).code is TIMEOUT
    broken = classify(openai.APIConnectionError(request=request))
    assert (broken.code, broken.retryable) == (UPSTREAM, True)
    assert classify(RuntimeError("bug")).code is ErrorCode.INTERNAL


@pytest.mark.parametrize(
    ("error", "calls"),
    [
        (err("context_length_exceeded"), 1),
        (err("insufficient_quota", "insufficient_quota"), 1),
        (err("rate_limit_exceeded", "requests"), 3),
        (err(None, "server_error"), 3),
    ],
)
async def test_the_retry_policy_retries_only_what_a_retry_can_fix(
    error: dict[str, Any], calls: int
) -> None:
    status = 429 if error["code"] in ("rate_limit_exceeded", "insufficient_quota") else 500
    if error["code"] == "context_length_exceeded":
        status = 400
    made = 0

    async def call() -> None:
        nonlocal made
        made += 1
        raise sdk_error(status, error)

    with pytest.raises(ServiceError):
        await RetryPolicy(attempts=3, backoff=0.001).run(call, may_retry=lambda: True)
    assert made == calls


async def test_the_wait_the_api_asks_for_is_used_between_attempts() -> None:
    made: list[float] = []

    async def call() -> None:
        made.append(time.monotonic())
        raise sdk_error(429, err("rate_limit_exceeded", "requests"), {"retry-after-ms": "150"})

    with pytest.raises(ServiceError) as raised:
        await RetryPolicy(attempts=2, backoff=0.001).run(call, may_retry=lambda: True)
    assert raised.value.retry_after == pytest.approx(0.15)
    assert len(made) == 2 and made[1] - made[0] >= 0.14


async def test_a_wait_longer_than_the_backoff_cap_ends_the_request_at_once() -> None:
    made = 0

    async def call() -> None:
        nonlocal made
        made += 1
        raise sdk_error(429, err("rate_limit_exceeded", "requests"), {"retry-after": "30"})

    with pytest.raises(ServiceError) as raised:
        await RetryPolicy(attempts=3, backoff=0.001, max_backoff=8).run(
            call, may_retry=lambda: True
        )
    assert made == 1
    assert (raised.value.code, raised.value.retryable) == (RATE, True)


def test_the_apis_x_should_retry_header_decides_retryable() -> None:
    never = classify(sdk_error(500, err(None, "server_error"), {"x-should-retry": "false"}))
    assert (never.code, never.retryable) == (UPSTREAM, False)
    again = classify(sdk_error(400, err(None), {"x-should-retry": "true"}))
    assert (again.code, again.retryable) == (UPSTREAM, True)


def test_cancellation_is_its_own_code() -> None:
    assert classify(asyncio.CancelledError()).code is ErrorCode.CANCELLED
