"""Stop (contract §8): cancels by message_id and by channel, running and waiting, during a tool
call, racing the natural end, malformed ones mixed with traffic; on both backends.

Real service process, real RabbitMQ, real SDK against the fake OpenAI server, which stops
generating when its stream is closed and records what the model was given on every turn.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.cancel_helpers import (
    LONG,
    CancelStack,
    assert_cancelled,
    cancel_stack,
    cancels,
    cs,
    final_payload,
    token,
)
from tests.conftest import Fakes
from tests.fakes.conversation_items import describe
from tests.fakes.script import Text, ToolCall
from tests.harness import ROOT, ServiceProcess

__all__ = ["cs"]  # fixtures

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]


async def test_cancel_by_message_id_stops_the_model_stream_within_a_second(
    cs: CancelStack,
) -> None:
    tag = token()
    cs.fakes.openai.script(tag, [[Text(*LONG, interval=0.02)]])
    body = cs.stack.request(f"tell a long story {tag}", message_id=f"m-{tag}")
    await cs.stack.broker.publish(body)
    await cs.streaming(body["channel"])

    cancelled_at = await cs.publish_cancel({"message_id": f"m-{tag}"})
    payloads = await cs.fakes.hub_final(body["channel"])
    event = await cs.stack.broker.wait_event(f"m-{tag}")

    assert_cancelled(event, payloads)
    assert event["text"], "some of the answer streamed before the cancel"
    assert payloads[-1]["timestamp"] - cancelled_at < 1.0
    (stream,) = cs.fakes.openai.generation.streams(body["channel"])
    assert stream.closed_at is not None and stream.closed_at - cancelled_at < 1.0
    assert stream.after_close == 0
    assert len(stream.token_times) < len(LONG)
    assert len(cs.stack.broker.events_for(f"m-{tag}")) == 1
    if cs.stack.backend == "assistants":
        assert cs.fakes.openai.thread_runs(body["channel"])[0]["status"] == "cancelled"


async def test_cancelled_request_keeps_its_user_message_and_the_next_turn_sees_it(
    cs: CancelStack,
) -> None:
    tag = token()
    cs.fakes.openai.script(f"first {tag}", [[Text(*LONG, interval=0.02)]])
    first = cs.stack.request(f"first {tag}", message_id=f"a-{tag}")
    await cs.stack.broker.publish(first)
    await cs.streaming(first["channel"])
    await cs.publish_cancel({"message_id": f"a-{tag}"})
    await cs.stack.broker.wait_event(f"a-{tag}")

    second = cs.stack.request(f"second {tag}", channel=first["channel"], message_id=f"b-{tag}")
    await cs.stack.broker.publish(second)
    event = await cs.stack.broker.wait_event(f"b-{tag}")

    assert event["event"] == "completed"
    seen = cs.fakes.openai.conversation_items.seen(first["channel"])
    assert seen[-1].texts() == [f"user: first {tag}", f"user: second {tag}"]


async def test_cancel_of_a_waiting_request_ends_it_without_reaching_the_model(
    cs: CancelStack,
) -> None:
    tag = token()
    cs.fakes.openai.script(f"busy {tag}", [[Text(*LONG[:40], interval=0.02)]])
    running = cs.stack.request(f"busy {tag}", message_id=f"r-{tag}")
    waiting = cs.stack.request(f"waits {tag}", channel=running["channel"], message_id=f"w-{tag}")
    await cs.stack.broker.publish(running)
    await cs.streaming(running["channel"])
    await cs.stack.broker.publish(waiting)
    await cs.held(f"w-{tag}")
    await cs.publish_cancel({"message_id": f"w-{tag}", "channel": running["channel"]})

    event = await cs.stack.broker.wait_event(f"w-{tag}")
    assert event["code"] == "cancelled" and event["retryable"] is False and event["text"] == ""
    done = await cs.stack.broker.wait_event(f"r-{tag}")
    assert done["event"] == "completed", "the running request goes on untouched"
    payloads = await cs.fakes.hub_final(running["channel"], timeout=20)
    mine = [p for p in payloads if p["message_id"] == f"w-{tag}"]
    assert [p["status"] for p in mine] in (["started", "error"], ["error"])
    assert mine[-1]["error"] == {"code": "cancelled", "retryable": False}
    seen = cs.fakes.openai.conversation_items.seen(running["channel"])
    assert all(f"waits {tag}" not in " ".join(t.texts()) for t in seen)


async def test_cancel_by_channel_ends_every_request_of_the_channel(cs: CancelStack) -> None:
    tag = token()
    cs.fakes.openai.script(f"{tag} number", [[Text(*LONG, interval=0.02)]])
    channel = cs.stack.new_thread()
    ids = [f"c{i}-{tag}" for i in range(3)]
    for i, message_id in enumerate(ids):
        await cs.stack.broker.publish(
            cs.stack.request(f"{tag} number {i}", channel=channel, message_id=message_id)
        )
    await cs.streaming(channel)
    other = cs.stack.request(f"other {tag}", message_id=f"o-{tag}")
    await cs.stack.broker.publish(other)

    await cs.publish_cancel({"channel": channel})
    events = [await cs.stack.broker.wait_event(message_id) for message_id in ids]

    assert [e["code"] for e in events] == ["cancelled"] * 3
    assert (await cs.stack.broker.wait_event(f"o-{tag}"))["event"] == "completed"
    # Only the first ever reached the model.
    assert len(cs.fakes.openai.conversation_items.seen(channel)) == 1


async def test_cancel_during_a_tool_call_never_sends_its_result_and_leaves_the_thread_usable(
    cs: CancelStack,
) -> None:
    tag = token()
    cs.fakes.apis.delay("/geo", 5)
    try:
        cs.fakes.openai.script(
            f"weather {tag}", [[ToolCall("get_weather", '{"city": "Makati"}')], [Text("never")]]
        )
        body = cs.stack.request(f"weather {tag}", message_id=f"t-{tag}")
        await cs.stack.broker.publish(body)
        await cs.tool_called(body["channel"])
        await cs.publish_cancel({"message_id": f"t-{tag}"})
        event = await cs.stack.broker.wait_event(f"t-{tag}")
    finally:
        cs.fakes.apis.delay("/geo", 0)
    payloads = await cs.fakes.hub_final(body["channel"])
    assert_cancelled(event, payloads)
    assert cs.stack.tool_outputs(body["channel"]) == [], "the tool's result never went out"

    after = cs.stack.request(f"after {tag}", channel=body["channel"], message_id=f"u-{tag}")
    await cs.stack.broker.publish(after)
    assert (await cs.stack.broker.wait_event(f"u-{tag}"))["event"] == "completed"
    seen = cs.fakes.openai.conversation_items.seen(body["channel"])[-1]
    if cs.stack.backend == "responses":
        # The call was completed with an output saying it was cancelled.
        assert [describe(i).split(":")[0] for i in seen.items] == [
            "user",
            "call get_weather",
            f"output {seen.items[1]['call_id']}",
            "user",
        ]
        assert "cancelled" in seen.items[2]["output"]
    else:
        assert seen.texts() == [f"user: weather {tag}", f"user: after {tag}"]
        assert cs.fakes.openai.thread_runs(body["channel"])[1]["status"] == "cancelled"


async def test_cancel_racing_the_natural_end_gives_exactly_one_final_event(
    cs: CancelStack,
) -> None:
    tag = token()
    bodies = [cs.stack.request(f"quick {tag} {i}", message_id=f"q{i}-{tag}") for i in range(8)]
    for i, body in enumerate(bodies):
        await cs.stack.broker.publish(body)
        if i % 2:
            await cs.publish_cancel({"message_id": body["message_id"]})
    for body in bodies:
        await cs.publish_cancel({"message_id": body["message_id"]})
    for body in bodies:
        await cs.stack.broker.wait_event(body["message_id"])
    sentinel = cs.stack.request(f"sentinel {tag}", message_id=f"s-{tag}")
    await cs.stack.broker.publish(sentinel)
    await cs.stack.broker.wait_event(f"s-{tag}")

    for body in bodies:
        (event,) = cs.stack.broker.events_for(body["message_id"])
        payloads = cs.fakes.hub.payloads(body["channel"])
        final = final_payload(payloads)
        if event["event"] == "completed":
            assert final["status"] == "completed" and final["message"] == event["text"]
        else:
            assert event["code"] == "cancelled"
            assert final["error"] == {"code": "cancelled", "retryable": False}


async def test_malformed_cancels_are_counted_and_dropped_amid_traffic(cs: CancelStack) -> None:
    tag = token()
    cs.fakes.openai.script(tag, [[Text(*LONG[:30], interval=0.02)]])
    body = cs.stack.request(f"keeps going {tag}", message_id=f"k-{tag}")
    before = cancels(await cs.metrics(), "malformed")
    await cs.stack.broker.publish(body)
    await cs.streaming(body["channel"])
    malformed: list[bytes] = [
        b"not json",
        b"[1, 2]",
        b'"m-1"',
        b"{}",
        b'{"message_id": null, "channel": null}',
        b'{"message_id": 42}',
        b'{"channel": "bad channel!"}',
        f'{{"message_id": "k-{tag}", "channel": "bad channel!"}}'.encode(),
        f'{{"message_id": "k-{tag}", "channel": 7}}'.encode(),
        b'{"message_id": "\xff\xfe"}',
        b'{"message_id": "\\ud800"}',
    ]
    for data in malformed:
        await cs.publish_cancel(data)

    event = await cs.stack.broker.wait_event(f"k-{tag}")
    assert event["event"] == "completed", "no malformed cancel cancelled anything"
    values = await cs.metrics_when(lambda m: cancels(m, "malformed") - before >= len(malformed))
    assert cancels(values, "malformed") - before == len(malformed)
    assert "malformed cancel dropped" in cs.stack.service.log_text()
    # Still serving.
    again = cs.stack.request(f"still there {tag}", message_id=f"k2-{tag}")
    await cs.stack.broker.publish(again)
    assert (await cs.stack.broker.wait_event(f"k2-{tag}"))["event"] == "completed"


async def test_cancel_that_matches_nothing_is_logged_and_counted_unmatched(cs: CancelStack) -> None:
    tag = token()
    before = cancels(await cs.metrics(), "unmatched")
    await cs.publish_cancel({"message_id": f"nobody-{tag}"})
    await cs.metrics_when(lambda m: cancels(m, "unmatched") > before)
    assert f"nobody-{tag}" in cs.stack.service.log_text()


async def test_cancel_reaches_the_replica_that_holds_the_request(
    fakes: Fakes, log_dir: Path
) -> None:
    """Two service processes on the same queue: each request is cancelled within a second by
    whichever holds it; the other counts the cancel as unmatched."""
    async with cancel_stack(fakes, log_dir, "responses") as cs:
        second = ServiceProcess(
            cs.stack.names,
            # Its own delivery journal: a journal belongs to one process.
            {**cs.stack.service.env, "HTTP_PORT": "0", "STATE_DIR": str(log_dir / "state-2")},
            log_dir / f"{cs.stack.names.prefix}-2.log",
        )
        second.start()
        try:
            await cs.stack.broker.wait_consumer(count=2)
            tag = token()
            fakes.openai.script(tag, [[Text(*LONG, interval=0.02)]])
            bodies = [cs.stack.request(f"{tag} {i}", message_id=f"x{i}-{tag}") for i in range(6)]
            for body in bodies:
                await cs.stack.broker.publish(body)
            for body in bodies:
                await cs.streaming(body["channel"])
            for body in bodies:
                cancelled_at = await cs.publish_cancel({"message_id": body["message_id"]})
                event = await cs.stack.broker.wait_event(body["message_id"])
                payloads = await cs.fakes.hub_final(body["channel"])
                assert_cancelled(event, payloads)
                assert payloads[-1]["timestamp"] - cancelled_at < 1.0
            holders = [
                log for log in (cs.stack.service.log_text(), second.log_text())
                if "cancelling message_id=x" in log
            ]  # fmt: skip
            assert len(holders) == 2, "both replicas held (and cancelled) some of the requests"
        finally:
            second.stop()


async def test_terminal_chat_stop_and_ctrl_c_cancel_the_streaming_answer(
    fakes: Fakes, log_dir: Path
) -> None:
    async with cancel_stack(fakes, log_dir, "responses") as cs:
        tag = token()
        fakes.openai.script(tag, [[Text(*LONG, interval=0.02)]])
        thread = cs.stack.new_thread()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "chat", "--thread", thread,
            cwd=ROOT, env=cs.stack.service.env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(f"first {tag}\n".encode())
            await process.stdin.drain()
            await cs.streaming(thread)
            process.stdin.write(b"/stop\n")
            await process.stdin.drain()
            await cs.fakes.on_loop(cs.fakes.hub.wait_final(thread, count=1))
            process.stdin.write(f"second {tag}\n".encode())
            await process.stdin.drain()
            await cs.fakes.on_loop(
                cs.fakes.hub.wait_for(
                    lambda: (
                        cs.fakes.hub.payloads(thread)[-1]["type"] == "response"
                        and len({p["message_id"] for p in cs.fakes.hub.payloads(thread)}) == 2
                    ),
                    10,
                    "the second answer streaming",
                )
            )
            process.send_signal(signal.SIGINT)
            await cs.fakes.on_loop(cs.fakes.hub.wait_final(thread, count=2))
            process.stdin.write(b"/quit\n")
            process.stdin.close()
            out = (await asyncio.wait_for(process.stdout.read(), 30)).decode()
            await asyncio.wait_for(process.wait(), 10)
        finally:
            if process.returncode is None:
                process.kill()
        assert process.returncode == 0, out
        assert out.count("  (stop sent)") == 2, out
        assert out.count("  ! cancelled: ") == 2, out
        assert out.count("(failed: cancelled") == 2, out


async def test_interrupt_ends_the_conversations_requests_on_another_replica(
    fakes: Fakes, log_dir: Path
) -> None:
    """Two service processes: a follow-up with `on_busy: interrupt` ends the first request
    within a second wherever either of them landed (the interrupt is broadcast)."""
    async with cancel_stack(fakes, log_dir, "responses") as cs:
        second = ServiceProcess(
            cs.stack.names,
            {**cs.stack.service.env, "HTTP_PORT": "0", "STATE_DIR": str(log_dir / "state-3")},
            log_dir / f"{cs.stack.names.prefix}-3.log",
        )
        second.start()
        try:
            await cs.stack.broker.wait_consumer(count=2)
            tag = token()
            fakes.openai.script(f"first {tag}", [[Text(*LONG, interval=0.02)]])
            firsts = [
                cs.stack.request(f"first {tag} {i}", message_id=f"a{i}-{tag}") for i in range(6)
            ]
            for body in firsts:
                await cs.stack.broker.publish(body)
            for body in firsts:
                await cs.streaming(body["channel"])
            # One more request shifts the broker's round robin: follow-ups land on the other
            # replica than their first request (at least some of them).
            await cs.stack.broker.publish(cs.stack.request(f"shift {tag}", message_id=f"s-{tag}"))
            await cs.stack.broker.wait_event(f"s-{tag}")
            for i, body in enumerate(firsts):
                follow = cs.stack.request(
                    f"then {tag} {i}", channel=body["channel"], message_id=f"b{i}-{tag}",
                    on_busy="interrupt",
                )  # fmt: skip
                published = time.time()
                await cs.stack.broker.publish(follow)
                ended = await cs.stack.broker.wait_event(f"a{i}-{tag}")
                assert ended["code"] == "cancelled"
                payloads = cs.fakes.hub.payloads(body["channel"])
                final = next(p for p in payloads if p["message_id"] == body["message_id"]
                             and p["final_message"])  # fmt: skip
                assert final["timestamp"] - published < 1.0
                assert (await cs.stack.broker.wait_event(f"b{i}-{tag}"))["event"] == "completed"
            logs = (cs.stack.service.log_text(), second.log_text())
            across = [
                i
                for i in range(len(firsts))
                for here, there in (logs, logs[::-1])
                if f"interrupted by b{i}-{tag}" in here and f"accepted message_id=b{i}-" in there
            ]
            assert across, "some follow-up interrupted a request held by the other replica"
        finally:
            second.stop()
