"""Bad input: a failed `invalid_request` event, a hub error when the channel can be read,
the message dead-lettered, and the service still consuming."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _channel() -> str:
    return f"conv_bad_{uuid.uuid4().hex[:10]}"


def _metadata(n: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(n)}


# (case id, body builder(channel, message_id) -> body, channel readable?)
SCHEMA_CASES: list[tuple[str, Any, bool]] = [
    ("missing message", lambda c, m: {"channel": c, "message_id": m}, True),
    ("blank message", lambda c, m: {"message": "   ", "channel": c, "message_id": m}, True),
    (
        "message too long",
        lambda c, m: {"message": "x" * 32_001, "channel": c, "message_id": m},
        True,
    ),
    ("message not a string", lambda c, m: {"message": 42, "channel": c, "message_id": m}, True),
    ("missing channel", lambda c, m: {"message": "hi", "message_id": m}, False),
    (
        "channel bad characters",
        lambda c, m: {"message": "hi", "channel": "a b/c", "message_id": m},
        False,
    ),
    (
        "channel too long",
        lambda c, m: {"message": "hi", "channel": "c" * 201, "message_id": m},
        False,
    ),
    (
        "thread_id bad",
        lambda c, m: {"message": "hi", "channel": c, "thread_id": "../x", "message_id": m},
        True,
    ),
    (
        "metadata 17 keys",
        lambda c, m: {"message": "hi", "channel": c, "message_id": m, "metadata": _metadata(17)},
        True,
    ),
    (
        "metadata key too long",
        lambda c, m: {"message": "hi", "channel": c, "message_id": m, "metadata": {"k" * 65: "v"}},
        True,
    ),
    (
        "metadata value too long",
        lambda c, m: {"message": "hi", "channel": c, "message_id": m, "metadata": {"k": "v" * 513}},
        True,
    ),
    (
        "metadata value not a string",
        lambda c, m: {"message": "hi", "channel": c, "message_id": m, "metadata": {"k": 1}},
        True,
    ),
    ("body is a list", lambda c, m: [{"message": "hi", "channel": c}], False),
]


@pytest.mark.parametrize(
    ("case", "build", "readable"), SCHEMA_CASES, ids=[c[0] for c in SCHEMA_CASES]
)
async def test_schema_violation_is_dead_lettered_with_failed_event(
    stack: Stack, case: str, build: Any, readable: bool
) -> None:
    channel, message_id = _channel(), f"bad-{uuid.uuid4().hex[:10]}"
    body = build(channel, message_id)
    await stack.broker.publish(body if isinstance(body, dict) else json.dumps(body))
    if isinstance(body, dict):
        event = await stack.broker.wait_event(message_id)
    else:
        event = await _any_new_invalid(stack)
    assert event["event"] == "failed"
    assert event["code"] == "invalid_request"
    assert event["retryable"] is False
    assert event["message"]
    if readable:
        payloads = await stack.fakes.hub_final(channel)
        assert payloads[-1]["type"] == "error"
        assert payloads[-1]["error"]["code"] == "invalid_request"
        assert payloads[-1]["final_message"] is True
    await _assert_dead_lettered(stack, message_id if isinstance(body, dict) else None)


async def _any_new_invalid(stack: Stack) -> dict[str, Any]:
    seen = len(stack.broker.events)
    found = await stack.broker.wait_until(
        lambda: [e for e in stack.broker.events[seen - 1 :] if e.get("code") == "invalid_request"]
    )
    return found[-1]


async def _assert_dead_lettered(stack: Stack, message_id: str | None) -> None:
    async def dead() -> list[Any]:
        return await stack.broker.dead_letters()

    letters: list[Any] = []
    for _ in range(50):
        letters += await dead()
        if letters and (message_id is None or any(message_id.encode() in m.body for m in letters)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{message_id} not dead-lettered")


@pytest.mark.parametrize(
    "raw",
    [b"not json at all", b'{"message": "hi", "channel": ', b"\xff\xfe\x00", b"", b"null"],
    ids=["text", "truncated", "binary", "empty", "null"],
)
async def test_bad_json_is_dead_lettered_and_the_service_keeps_consuming(
    stack: Stack, raw: bytes
) -> None:
    message_id = f"raw-{uuid.uuid4().hex[:10]}"
    await stack.broker.publish(raw, message_id=message_id)
    event = await stack.broker.wait_event(message_id)
    assert event["code"] == "invalid_request"
    assert event["channel"] is None
    await _assert_dead_lettered(stack, None)
    good = stack.request("still there?", message_id=f"ok-{uuid.uuid4().hex[:8]}")
    await stack.broker.publish(good)
    assert (await stack.broker.wait_event(good["message_id"]))["event"] == "completed"


async def test_lone_surrogate_makes_the_request_invalid(stack: Stack) -> None:
    channel, message_id = _channel(), f"sur-{uuid.uuid4().hex[:10]}"
    raw = '{"message": "bad \\ud800 text", "channel": "%s", "message_id": "%s"}' % (
        channel,
        message_id,
    )
    await stack.broker.publish(raw.encode())
    event = await stack.broker.wait_event(message_id)
    assert event["code"] == "invalid_request"
    payloads = await stack.fakes.hub_final(channel)
    assert payloads[-1]["error"]["code"] == "invalid_request"


async def test_wrong_content_type_is_invalid(stack: Stack) -> None:
    message_id = f"ct-{uuid.uuid4().hex[:10]}"
    body = stack.request("hello", message_id=message_id)
    await stack.broker.publish(json.dumps(body).encode(), content_type="application/xml")
    event = await stack.broker.wait_event(message_id)
    assert event["code"] == "invalid_request"


async def test_unknown_fields_are_ignored(stack: Stack) -> None:
    message_id = f"unk-{uuid.uuid4().hex[:10]}"
    body = stack.request("hello", message_id=message_id, priority_hint="high", extra={"a": 1})
    await stack.broker.publish(body)
    assert (await stack.broker.wait_event(message_id))["event"] == "completed"
