"""Fast checks without the broker: the policy table, the cancel parser and registry, and the
fake OpenAI server's new behaviour (conversation items, aborted turns, closed streams) through
the real SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import openai
import pytest

from service.control.policies import IDLE, POLICIES, on_arrival
from service.handlers.cancel import CancelOutcome, handle_cancel
from service.schemas import CancelRequest, OnBusy
from tests.conftest import Fakes
from tests.fakes.script import Text, ToolCall

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_policies_differ_only_in_the_table() -> None:
    assert on_arrival(OnBusy.REJECT, OnBusy.ENQUEUE, busy=False) is IDLE
    assert on_arrival(None, OnBusy.REJECT, busy=True).rejects_itself
    assert on_arrival(OnBusy.ENQUEUE, OnBusy.REJECT, busy=True) == POLICIES[OnBusy.ENQUEUE]
    rollback = on_arrival(OnBusy.ROLLBACK, OnBusy.ENQUEUE, busy=True)
    assert rollback.cancels_others and rollback.erases_others and not rollback.rejects_itself
    interrupt = POLICIES[OnBusy.INTERRUPT]
    assert interrupt.cancels_others and not interrupt.erases_others


class RecordingControl:
    """Stands in for `CancelControl`: records the cancels it is given."""

    def __init__(self, holds: set[str]) -> None:
        self.holds = holds
        self.given: list[CancelRequest] = []

    async def cancel(self, request: CancelRequest) -> list[str]:
        self.given.append(request)
        return [m for m in self.holds if request.matches(m, "chan-a")]


async def test_valid_cancels_reach_the_control_and_report_whether_they_matched() -> None:
    control = RecordingControl({"m1"})
    assert await handle_cancel(b'{"message_id": "m1"}', control) == CancelOutcome.CANCELLED
    assert await handle_cancel(b'{"channel": "chan-b"}', control) == CancelOutcome.UNMATCHED
    both = b'{"message_id": "m1", "channel": "chan-a", "extra": 1}'
    assert await handle_cancel(both, control) == CancelOutcome.CANCELLED
    assert [c.message_id for c in control.given] == ["m1", None, "m1"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"null",
        b"{}",
        b'{"message_id": null, "channel": null}',
        b'{"message_id": ""}',
        b'{"message_id": 1}',
        b'{"channel": "has space"}',
        b'{"message_id": "m1", "channel": "has space"}',
        b'{"message_id": "\xc3\x28"}',
        b'{"message_id": "\\udc00"}',
    ],
)
async def test_malformed_cancels_cancel_nothing(body: bytes) -> None:
    control = RecordingControl({"m1"})
    assert await handle_cancel(body, control) == CancelOutcome.MALFORMED
    assert control.given == []


@pytest.fixture
async def sdk(fakes: Fakes) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(api_key="k", base_url=fakes.openai.base_url, max_retries=0)
    yield client
    await client.close()


async def test_fake_keeps_completed_turns_and_drops_aborted_ones(
    fakes: Fakes, sdk: openai.AsyncOpenAI
) -> None:
    conv = "conv_units_items"
    fakes.openai.script("slow one", [[Text(*[f"t{i} " for i in range(200)], interval=0.01)]])
    stream = await sdk.responses.create(model="m", input="hello", conversation=conv, stream=True)
    async for _ in stream:
        pass
    stream = await sdk.responses.create(model="m", input="slow one", conversation=conv, stream=True)
    seen = 0
    async for event in stream:
        seen += event.type == "response.output_text.delta"
        if seen == 3:
            break
    await stream.close()

    async def closed() -> bool:
        streams = fakes.openai.generation.streams(conv)
        return streams[-1].closed_at is not None

    for _ in range(100):
        if await closed():
            break
        await asyncio.sleep(0.02)
    last = fakes.openai.generation.streams(conv)[-1]
    assert last.closed_at is not None and last.after_close == 0
    assert len(last.token_times) < 200, "generation stopped when the stream closed"

    items = [i async for i in sdk.conversations.items.list(conv, order="asc")]
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "assistant"),
    ], "the aborted turn added nothing, not even its input"
    await sdk.conversations.items.delete(items[1].id, conversation_id=conv)
    left = [i.id async for i in sdk.conversations.items.list(conv)]
    assert left == [items[0].id]
    turns = fakes.openai.conversation_items.seen(conv)
    assert turns[-1].texts() == ["user: hello", "assistant: Echo: hello", "user: slow one"]


async def test_fake_refuses_a_turn_after_a_function_call_without_output(
    fakes: Fakes, sdk: openai.AsyncOpenAI
) -> None:
    conv = "conv_units_dangling"
    fakes.openai.script("call it", [[ToolCall("get_weather", '{"city": "X"}', call_id="call_u1")]])
    stream = await sdk.responses.create(model="m", input="call it", conversation=conv, stream=True)
    async for _ in stream:
        pass
    with pytest.raises(openai.BadRequestError, match="No tool output found"):
        await sdk.responses.create(model="m", input="next", conversation=conv, stream=True)
    await sdk.conversations.items.create(
        conv,
        items=[{"type": "function_call_output", "call_id": "call_u1", "output": json.dumps({})}],
    )
    stream = await sdk.responses.create(model="m", input="next", conversation=conv, stream=True)
    async for _ in stream:
        pass
    inputs = [i.id async for i in sdk.responses.input_items.list(stream_id(fakes, conv))]
    assert len(inputs) == 1


def stream_id(fakes: Fakes, conv: str) -> str:
    return fakes.openai.conversation_items.seen(conv)[-1].response_id
