"""Reading the model stream: SSE decoding as the SDK does it, and the idle limit."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence

import httpx2
import openai
import pytest
from openai._streaming import SSEDecoder

from service.assistant.stream import _sse_data, sse_json, within_idle_limit
from service.errors import RunTimeout

LINES = [
    "data: x",
    "data:",
    "data:  two spaces",
    'data: {"type":"response.output_text.delta","delta":"é€"}',
    "event: response.created",
    "event:",
    "id: 7",
    "id:",
    "id: a\0b",
    "retry: 5",
    "retry: soon",
    ": keep-alive",
    "unknown: field",
    "nocolon",
    "",
]


async def _chunks(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _random_stream(rnd: random.Random) -> list[bytes]:
    text = "".join(
        rnd.choice(LINES) + rnd.choice(["\n", "\r\n", "\r"]) for _ in range(rnd.randint(0, 12))
    )
    raw = text.encode()
    cuts = sorted(rnd.sample(range(len(raw) + 1), min(len(raw) + 1, rnd.randint(0, 6))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


async def test_events_are_split_exactly_as_the_sdk_splits_them() -> None:
    rnd = random.Random(6)
    for _ in range(3000):
        chunks = _random_stream(rnd)
        ours = [data async for data in _sse_data(_chunks(chunks))]
        sdk = [sse.data async for sse in SSEDecoder().aiter_bytes(_chunks(chunks))]
        assert ours == sdk, chunks


def _response(body: bytes | Sequence[bytes]) -> httpx2.Response:
    chunks = [body] if isinstance(body, bytes) else list(body)

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return httpx2.Response(
        200, content=stream(), request=httpx2.Request("POST", "http://model/v1/responses")
    )


async def test_sse_json_yields_data_and_stops_at_done() -> None:
    body = b'event: a\ndata: {"type": "a"}\n\ndata: [1, 2]\n\ndata: [DONE]\n\ndata: {"late": 1}\n\n'
    assert [value async for value in sse_json(_response(body))] == [{"type": "a"}, [1, 2]]


async def test_an_error_event_raises_api_error_like_the_sdk() -> None:
    body = b'data: {"error": {"message": "overloaded", "code": "server_error"}}\n\n'
    with pytest.raises(openai.APIError) as raised:
        [value async for value in sse_json(_response(body))]
    assert raised.value.message == "overloaded"
    assert raised.value.body == {"message": "overloaded", "code": "server_error"}


async def test_a_broken_body_raises_api_connection_error() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b'data: {"type": "a"}\n\n'
        raise httpx2.RemoteProtocolError("incomplete chunked read")

    response = httpx2.Response(
        200, content=broken(), request=httpx2.Request("POST", "http://model/v1/responses")
    )
    seen = []
    with pytest.raises(openai.APIConnectionError):
        async for value in sse_json(response):
            seen.append(value)
    assert seen == [{"type": "a"}]


async def _paced(gaps: Sequence[float]) -> AsyncIterator[float]:
    for gap in gaps:
        await asyncio.sleep(gap)
        yield gap


async def test_a_quiet_stream_times_out() -> None:
    started = time.monotonic()
    with pytest.raises(RunTimeout, match=r"No event from the model for 0\.05 s"):
        async for _ in within_idle_limit(_paced([0.01, 0.5]), 0.05):
            pass
    assert time.monotonic() - started < 0.3


async def test_only_the_wait_for_an_event_counts_not_the_consumer() -> None:
    got = []
    async for gap in within_idle_limit(_paced([0.02] * 4), 0.05):
        got.append(gap)
        await asyncio.sleep(0.08)  # slower than the idle limit, between events
    assert got == [0.02] * 4


async def test_cancellation_from_outside_is_not_a_timeout() -> None:
    async def consume() -> None:
        async for _ in within_idle_limit(_paced([1.0]), 5):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    with pytest.raises(TimeoutError):  # an enclosing timeout stays a plain TimeoutError
        async with asyncio.timeout(0.05):
            await consume()
