"""Double texting (contract §8): each `on_busy` policy on both backends, with what the model was
given on the next turn checked on the fake; an invalid `on_busy` is an invalid request.
"""

from __future__ import annotations

import pytest

from tests.cancel_helpers import (
    LONG,
    CancelStack,
    cs,
    final_payload,
    streamed_text,
    token,
)
from tests.fakes.script import Text, ToolCall

__all__ = ["cs"]  # fixtures

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]


async def start_long_answer(cs: CancelStack, tag: str) -> dict[str, str]:
    cs.fakes.openai.script(f"first {tag}", [[Text(*LONG, interval=0.02)]])
    first = cs.stack.request(f"first {tag}", message_id=f"a-{tag}")
    await cs.stack.broker.publish(first)
    await cs.streaming(first["channel"])
    return first


async def test_enqueue_waits_its_turn_and_sees_the_whole_first_exchange(cs: CancelStack) -> None:
    tag = token()
    cs.fakes.openai.script(f"first {tag}", [[Text("one ", "two", interval=0.05)]])
    first = cs.stack.request(f"first {tag}", message_id=f"a-{tag}")
    second = cs.stack.request(
        f"second {tag}", channel=first["channel"], message_id=f"b-{tag}", on_busy="enqueue"
    )
    await cs.stack.broker.publish(first)
    await cs.stack.broker.publish(second)

    assert (await cs.stack.broker.wait_event(f"a-{tag}"))["event"] == "completed"
    assert (await cs.stack.broker.wait_event(f"b-{tag}"))["event"] == "completed"
    seen = cs.fakes.openai.conversation_items.seen(first["channel"])[-1].texts()
    assert seen == [f"user: first {tag}", "assistant: one two", f"user: second {tag}"]


async def test_reject_ends_the_new_request_busy_and_leaves_the_running_answer_alone(
    cs: CancelStack,
) -> None:
    tag = token()
    cs.fakes.openai.script(f"first {tag}", [[Text(*LONG[:60], interval=0.02)]])
    first = cs.stack.request(f"first {tag}", message_id=f"a-{tag}")
    await cs.stack.broker.publish(first)
    await cs.streaming(first["channel"])
    second = cs.stack.request(
        f"second {tag}", channel=first["channel"], message_id=f"b-{tag}", on_busy="reject"
    )
    await cs.stack.broker.publish(second)

    rejected = await cs.stack.broker.wait_event(f"b-{tag}")
    assert rejected["code"] == "conversation_busy" and rejected["retryable"] is True
    assert rejected["text"] == ""
    assert not cs.stack.broker.events_for(f"a-{tag}"), "rejected before the running one ended"
    done = await cs.stack.broker.wait_event(f"a-{tag}")
    assert done["event"] == "completed" and done["text"] == "".join(LONG[:60])
    payloads = await cs.fakes.on_loop(cs.fakes.hub.wait_final(first["channel"], count=2))
    mine = [p for p in payloads if p["message_id"] == f"b-{tag}"]
    assert mine[-1]["error"] == {"code": "conversation_busy", "retryable": True}
    assert [p["seq"] for p in mine] == list(range(len(mine)))
    assert len(cs.fakes.openai.conversation_items.seen(first["channel"])) == 1


async def test_interrupt_cancels_the_running_answer_within_a_second_and_keeps_its_message(
    cs: CancelStack,
) -> None:
    tag = token()
    first = await start_long_answer(cs, tag)
    second = cs.stack.request(
        f"second {tag}", channel=first["channel"], message_id=f"b-{tag}", on_busy="interrupt"
    )
    await cs.stack.broker.publish(second)
    interrupted = await cs.stack.broker.wait_event(f"a-{tag}")
    payloads = await cs.fakes.hub_final(first["channel"])

    assert interrupted["code"] == "cancelled" and interrupted["retryable"] is False
    mine = [p for p in payloads if p["message_id"] == f"a-{tag}"]
    assert final_payload(mine)["error"] == {"code": "cancelled", "retryable": False}
    assert interrupted["text"] == streamed_text(mine) != ""
    assert (await cs.stack.broker.wait_event(f"b-{tag}"))["event"] == "completed"
    seen = cs.fakes.openai.conversation_items.seen(first["channel"])[-1].texts()
    assert seen == [f"user: first {tag}", f"user: second {tag}"]


async def test_interrupt_also_ends_the_waiting_requests_of_the_conversation(
    cs: CancelStack,
) -> None:
    tag = token()
    first = await start_long_answer(cs, tag)
    waiting = cs.stack.request(f"queued {tag}", channel=first["channel"], message_id=f"w-{tag}")
    await cs.stack.broker.publish(waiting)
    await cs.held(f"w-{tag}")
    third = cs.stack.request(
        f"third {tag}", channel=first["channel"], message_id=f"c-{tag}", on_busy="interrupt"
    )
    await cs.stack.broker.publish(third)

    assert (await cs.stack.broker.wait_event(f"a-{tag}"))["code"] == "cancelled"
    assert (await cs.stack.broker.wait_event(f"w-{tag}"))["code"] == "cancelled"
    assert (await cs.stack.broker.wait_event(f"c-{tag}"))["event"] == "completed"
    seen = cs.fakes.openai.conversation_items.seen(first["channel"])
    assert len(seen) == 2, "the waiting request never reached the model"
    assert seen[-1].texts() == [f"user: first {tag}", f"user: third {tag}"]


async def test_rollback_removes_the_interrupted_exchange_so_the_model_never_sees_it(
    cs: CancelStack,
) -> None:
    tag = token()
    channel = cs.stack.new_thread()
    cs.fakes.openai.script(f"zero {tag}", [[Text("kept answer")]])
    zero = cs.stack.request(f"zero {tag}", channel=channel, message_id=f"z-{tag}")
    await cs.stack.broker.publish(zero)
    await cs.stack.broker.wait_event(f"z-{tag}")
    cs.fakes.openai.script(f"first {tag}", [[Text(*LONG, interval=0.02)]])
    first = cs.stack.request(f"first {tag}", channel=channel, message_id=f"a-{tag}")
    await cs.stack.broker.publish(first)
    await cs.streaming(channel, message_id=f"a-{tag}")
    second = cs.stack.request(
        f"second {tag}", channel=channel, message_id=f"b-{tag}", on_busy="rollback"
    )
    await cs.stack.broker.publish(second)

    assert (await cs.stack.broker.wait_event(f"a-{tag}"))["code"] == "cancelled"
    assert (await cs.stack.broker.wait_event(f"b-{tag}"))["event"] == "completed"
    seen = cs.fakes.openai.conversation_items.seen(channel)[-1].texts()
    assert seen == [f"user: zero {tag}", "assistant: kept answer", f"user: second {tag}"]


async def test_rollback_during_a_tool_call_removes_the_call_and_its_user_message(
    cs: CancelStack,
) -> None:
    tag = token()
    cs.fakes.apis.delay("/geo", 5)
    try:
        cs.fakes.openai.script(
            f"first {tag}", [[ToolCall("get_weather", '{"city": "Makati"}')], [Text("never")]]
        )
        first = cs.stack.request(f"first {tag}", message_id=f"a-{tag}")
        await cs.stack.broker.publish(first)
        await cs.tool_called(first["channel"])
        second = cs.stack.request(
            f"second {tag}", channel=first["channel"], message_id=f"b-{tag}", on_busy="rollback"
        )
        await cs.stack.broker.publish(second)
        assert (await cs.stack.broker.wait_event(f"a-{tag}"))["code"] == "cancelled"
    finally:
        cs.fakes.apis.delay("/geo", 0)
    assert (await cs.stack.broker.wait_event(f"b-{tag}"))["event"] == "completed"
    assert cs.stack.tool_outputs(first["channel"]) == []
    seen = cs.fakes.openai.conversation_items.seen(first["channel"])[-1].texts()
    assert seen == [f"user: second {tag}"]


async def test_invalid_on_busy_is_an_invalid_request(cs: CancelStack) -> None:
    tag = token()
    body = cs.stack.request(f"hello {tag}", message_id=f"i-{tag}", on_busy="shout")
    await cs.stack.broker.publish(body)
    event = await cs.stack.broker.wait_event(f"i-{tag}")
    assert event["code"] == "invalid_request" and "on_busy" in event["message"]
