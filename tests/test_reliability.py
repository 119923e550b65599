"""Faults injected into the real environment: the broker drops the connection, the hub goes
away, the service is sent SIGTERM or SIGKILL, the model fails. What the user sees: every
accepted request ends with exactly one final payload and one final event, none is lost, none
loops."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests import rabbit_node
from tests.conftest import Fakes, Stack, start_stack
from tests.fakes.script import Drop, HttpError, Stall, Text
from tests.harness import ServiceProcess, close_service_connections

pytestmark = pytest.mark.asyncio(loop_scope="session")


def tag() -> str:
    return uuid.uuid4().hex[:12]


def finals(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in payloads if p["final_message"]]


def slow_text(words: int, interval: float) -> Text:
    return Text(*[f"w{i} " for i in range(words)], interval=interval)


@pytest.fixture(scope="module")
async def rstack(fakes: Fakes, log_dir: Path) -> AsyncIterator[Stack]:
    async with start_stack(fakes, log_dir, "responses") as stack:
        yield stack


async def restart(stack: Stack) -> ServiceProcess:
    """A new service process with the same names and settings (the old one has exited)."""
    old = stack.service
    service = ServiceProcess(old.names, old.env, old.log_path)
    service.start()
    stack.service = service
    await stack.broker.wait_consumer(timeout=30)
    return service


# -- the broker ----------------------------------------------------------------------------


async def test_consumer_resumes_after_the_broker_closes_the_connection(rstack: Stack) -> None:
    assert close_service_connections(rstack.names) >= 1
    await rstack.broker.wait_consumer(timeout=30)
    body = rstack.request(f"after outage {tag()}", message_id=f"m-{tag()}")
    await rstack.broker.publish(body)
    event = await rstack.broker.wait_event(body["message_id"], timeout=30)
    assert event["event"] == "completed"


async def test_request_in_flight_when_the_connection_drops_ends_exactly_once(
    rstack: Stack,
) -> None:
    t = tag()
    rstack.fakes.openai.script(t, [[slow_text(30, 0.05)]])
    body = rstack.request(f"long answer {t}", message_id=t)
    await rstack.broker.publish(body)
    await rstack.fakes.on_loop(
        rstack.fakes.hub.wait_for(lambda: len(rstack.fakes.hub.payloads(body["channel"])) >= 3, 10)
    )
    assert close_service_connections(rstack.names) >= 1

    payloads = await rstack.fakes.hub_final(body["channel"], timeout=30)
    event = await rstack.broker.wait_event(body["message_id"], timeout=30)
    # A wrong second run or duplicate event would come before this sentinel's, which waits
    # behind the redelivered copy on the same conversation.
    await sentinel(rstack, body["channel"])
    payloads = [p for p in rstack.fakes.hub.payloads(body["channel"]) if p["message_id"] == t]
    assert len(finals(payloads)) == 1
    assert [p["status"] for p in payloads].count("started") == 1
    assert len(rstack.broker.events_for(body["message_id"])) == 1
    assert event["event"] == "completed"
    assert len(rstack.fakes.openai.requests_to("POST", "/v1/responses$")) >= 1
    runs = [
        r
        for r in rstack.fakes.openai.requests_to("POST", "/v1/responses$")
        if isinstance(r.body, dict) and t in str(r.body.get("input"))
    ]
    assert len(runs) == 1
    ready, consumers = await rstack.broker.queue_state()
    assert ready == 0 and consumers == 1


async def test_shutdown_after_a_reconnect_returns_waiting_requests_without_bouncing(
    fakes: Fakes, log_dir: Path
) -> None:
    """After the broker dropped the service's connection, SIGTERM must cancel the consumer of
    the new connection: the returned requests wait in the queue, not bounce back to us."""
    async with start_stack(fakes, log_dir, "responses", SHUTDOWN_GRACE=3) as stack:
        assert close_service_connections(stack.names) >= 1
        await stack.broker.wait_consumer(timeout=30)
        t = tag()
        channel = stack.new_thread()
        fakes.openai.script(f"slow {t}", [[slow_text(40, 0.05)]])
        slow = stack.request(f"slow {t}", channel, message_id=f"s-{t}")
        waiting = [stack.request(f"wait {i} {t}", channel, message_id=f"w{i}-{t}") for i in (1, 2)]
        for body in (slow, *waiting):
            await stack.broker.publish(body, message_id=body["message_id"])
        await fakes.on_loop(fakes.hub.wait_for(lambda: len(fakes.hub.payloads(channel)) >= 3, 10))
        stack.service.signal(signal.SIGTERM)
        assert await asyncio.to_thread(stack.service.wait, 30) == 0
        assert (await stack.broker.wait_event(slow["message_id"]))["event"] == "completed"
        ready, _ = await stack.broker.queue_state()
        assert ready == 2
        log = stack.service.log_text()
        for body in waiting:
            received = [
                line
                for line in log.splitlines()
                if "Received" in line and f"message_id={body['message_id']}" in line
            ]
            assert len(received) == 1, received  # delivered once, returned once, no bounce
            assert not stack.broker.events_for(body["message_id"])


# -- the hub -------------------------------------------------------------------------------


async def test_hub_restart_mid_stream_delivers_everything_in_order(rstack: Stack) -> None:
    t = tag()
    hub = rstack.fakes.hub
    rstack.fakes.openai.script(t, [[slow_text(40, 0.05)]])
    body = rstack.request(f"hub blip {t}", message_id=f"m-{t}")
    await rstack.broker.publish(body)
    await rstack.fakes.on_loop(hub.wait_for(lambda: len(hub.payloads(body["channel"])) >= 3, 10))
    await rstack.fakes.on_loop(hub.stop(abort=True))
    await asyncio.sleep(0.7)
    await rstack.fakes.on_loop(hub.start())

    payloads = await rstack.fakes.hub_final(body["channel"], timeout=30)
    seqs = [p["seq"] for p in payloads]
    assert seqs == list(range(len(seqs))), seqs
    assert (
        "".join(p.get("delta") or "" for p in payloads if p["type"] == "response")
        == (payloads[-1]["message"])
    )
    event = await rstack.broker.wait_event(body["message_id"])
    assert event["event"] == "completed" and event["hub_delivered"] is True


async def test_hub_down_until_the_end_reports_websocket_unavailable_with_the_text(
    rstack: Stack,
) -> None:
    t = tag()
    hub = rstack.fakes.hub
    await rstack.fakes.on_loop(hub.stop(abort=True))
    try:
        rstack.fakes.openai.script(t, [[Text("still ", "answered")]])
        body = rstack.request(f"no hub {t}", message_id=f"m-{t}")
        await rstack.broker.publish(body)
        event = await rstack.broker.wait_event(body["message_id"], timeout=30)
    finally:
        await rstack.fakes.on_loop(hub.start())
    assert event["event"] == "completed"
    assert event["text"] == "still answered"
    assert event["hub_delivered"] is False
    assert event["hub_error"] == "websocket_unavailable"
    # Buffered payloads reach the hub once it is back.
    payloads = await rstack.fakes.hub_final(body["channel"], timeout=30)
    assert payloads[-1]["message"] == "still answered"


# -- the model -----------------------------------------------------------------------------


async def test_dropped_stream_before_text_is_retried(stack: Stack) -> None:
    t = tag()
    stack.fakes.openai.script(t, [[Drop()], [Text("second try")]])
    body = stack.request(f"drop early {t}", message_id=f"m-{t}")
    await stack.broker.publish(body)
    event = await stack.broker.wait_event(body["message_id"])
    assert event["event"] == "completed" and event["text"] == "second try"


async def test_dropped_stream_after_text_ends_with_one_error_and_no_duplicate_text(
    stack: Stack,
) -> None:
    t = tag()
    stack.fakes.openai.script(t, [[Text("half an ", "answer"), Drop()], [Text("again")]])
    body = stack.request(f"drop late {t}", message_id=f"m-{t}")
    await stack.broker.publish(body)
    payloads = await stack.fakes.hub_final(body["channel"])
    event = await stack.broker.wait_event(body["message_id"])
    assert event["event"] == "failed"
    assert event["code"] == "upstream_error" and event["retryable"] is True
    assert len(finals(payloads)) == 1 and payloads[-1]["type"] == "error"
    streamed = "".join(p.get("delta") or "" for p in payloads if p["type"] == "response")
    assert streamed == "half an answer"
    assert event["text"] == "half an answer"  # what the user saw, on the failed event (§6)


async def test_server_errors_exhaust_retries_with_upstream_error(stack: Stack) -> None:
    t = tag()
    stack.fakes.openai.script(t, [[HttpError(503)]])
    body = stack.request(f"down {t}", message_id=f"m-{t}")
    await stack.broker.publish(body)
    event = await stack.broker.wait_event(body["message_id"])
    assert event["code"] == "upstream_error" and event["retryable"] is True


# -- the process ---------------------------------------------------------------------------


async def test_sigterm_finishes_runs_in_grace_and_requeues_what_had_not_started(
    fakes: Fakes, log_dir: Path
) -> None:
    async with start_stack(fakes, log_dir, "responses", SHUTDOWN_GRACE=1) as stack:
        t = tag()
        channel = stack.new_thread()
        fakes.openai.script(f"quick {t}", [[Text("done ", "quickly")]])
        fakes.openai.script(f"slow {t}", [[slow_text(100, 0.05)]])
        fakes.openai.script(f"queued {t}", [[Text("queued answer")]])
        quick = stack.request(f"quick {t}", message_id=f"q-{t}")
        slow = stack.request(f"slow {t}", channel, message_id=f"s-{t}")
        queued = stack.request(f"queued {t}", channel, message_id=f"w-{t}")
        await stack.broker.publish(slow)
        await stack.broker.publish(queued)
        await fakes.on_loop(fakes.hub.wait_for(lambda: len(fakes.hub.payloads(channel)) >= 3, 10))
        stack.service.signal(signal.SIGTERM)
        code = await asyncio.to_thread(stack.service.wait, 30)
        assert code == 0, stack.service.log_text()[-3000:]

        payloads = fakes.hub.payloads(channel)
        assert len(finals(payloads)) == 1
        assert payloads[-1]["error"] == {"code": "cancelled", "retryable": True}
        event = await stack.broker.wait_event(slow["message_id"])
        assert event["code"] == "cancelled" and event["retryable"] is True
        assert not stack.broker.events_for(queued["message_id"])
        ready, _ = await stack.broker.queue_state()
        assert ready == 1  # the request that had not started is back, untouched

        await restart(stack)
        await stack.broker.publish(quick)
        assert (await stack.broker.wait_event(queued["message_id"]))["event"] == "completed"
        assert (await stack.broker.wait_event(quick["message_id"]))["event"] == "completed"


async def test_sigkill_mid_stream_then_restart_runs_the_request_to_one_final(
    fakes: Fakes, log_dir: Path
) -> None:
    async with start_stack(fakes, log_dir, "responses") as stack:
        t = tag()
        fakes.openai.script(t, [[slow_text(100, 0.05)], [Text("after restart")]])
        body = stack.request(f"killed {t}", message_id=f"k-{t}")
        await stack.broker.publish(body)
        await fakes.on_loop(
            fakes.hub.wait_for(lambda: len(fakes.hub.payloads(body["channel"])) >= 3, 10)
        )
        stack.service.kill()
        assert not stack.broker.events_for(body["message_id"])
        await restart(stack)
        event = await stack.broker.wait_event(body["message_id"], timeout=30)
        assert event["event"] == "completed" and event["text"] == "after restart"
        await sentinel(stack, body["channel"])
        assert len(stack.broker.events_for(body["message_id"])) == 1
        payloads = fakes.hub.payloads(body["channel"])
        assert len(finals([p for p in payloads if p["message_id"] == body["message_id"]])) == 1


async def test_a_request_that_keeps_crashing_the_service_is_dead_lettered(
    fakes: Fakes, log_dir: Path
) -> None:
    async with start_stack(fakes, log_dir, "responses", MAX_DELIVERIES=2) as stack:
        t = tag()
        fakes.openai.script(t, [[Stall(60)]])
        body = stack.request(f"poison {t}", message_id=f"p-{t}")
        await stack.broker.publish(body)
        for attempt in (1, 2):
            await stack.broker.wait_until(
                lambda a=attempt: len([r for r in fakes.openai.requests if t in str(r.body)]) >= a,
                20,
                f"run attempt {attempt}",
            )
            stack.service.kill()
            await restart(stack)
        event = await stack.broker.wait_event(body["message_id"], timeout=30)
        assert event["event"] == "failed" and event["retryable"] is False
        letters = await stack.broker.dead_letters(wait=0.5)
        assert any(body["message_id"].encode() in m.body for m in letters)
        runs = [r for r in fakes.openai.requests if t in str(r.body)]
        assert len(runs) == 2  # MAX_DELIVERIES runs, then no more


async def test_republishing_a_finished_message_id_runs_it_again(rstack: Stack) -> None:
    t = tag()
    rstack.fakes.openai.script(t, [[HttpError(400)], [Text("second time lucky")]])
    body = rstack.request(f"retry later {t}", message_id=f"m-{t}")
    await rstack.broker.publish(body)
    first = await rstack.broker.wait_event(body["message_id"])
    assert first["event"] == "failed"
    await rstack.broker.publish(body)
    await rstack.broker.wait_until(
        lambda: len(rstack.broker.events_for(body["message_id"])) == 2, 20, "second event"
    )
    assert rstack.broker.events_for(body["message_id"])[1]["text"] == "second time lucky"


@pytest.fixture(scope="module")
def own_node() -> Iterator[rabbit_node.RabbitNode]:
    """A RabbitMQ node of this module's own: restarting it disturbs nobody."""
    node = rabbit_node.start(f"test_rmq_{tag()[:8]}")
    try:
        yield node
    finally:
        node.remove()


async def test_consumer_resumes_after_a_broker_restart(
    fakes: Fakes, log_dir: Path, own_node: rabbit_node.RabbitNode
) -> None:
    """The FastStream 0.7 failure mode (issue 2758): after a broker restart, the consumer must
    come back by itself and a request published afterwards must be processed."""
    async with start_stack(fakes, log_dir, "responses", RABBITMQ_URL=own_node.url) as stack:
        await asyncio.to_thread(own_node.stop)
        await asyncio.to_thread(own_node.start_again)
        await stack.broker.wait_consumer(timeout=60)
        body = stack.request(f"after restart {tag()}", message_id=f"m-{tag()}")
        await stack.broker.publish(body)
        event = await stack.broker.wait_event(body["message_id"], timeout=60)
        assert event["event"] == "completed"


async def sentinel(stack: Stack, channel: str) -> None:
    """A request on the same conversation, published now and waited for: whatever an earlier
    delivery of that conversation would still do (a second run, a duplicate event) is done
    before the sentinel's own final event."""
    body = stack.request(f"sentinel {tag()}", channel, message_id=f"sentinel-{tag()}")
    await stack.broker.publish(body)
    assert (await stack.broker.wait_event(body["message_id"], timeout=30))["event"] == "completed"


# -- deploys and bursts (issue 9) ----------------------------------------------------------


def model_turns(fakes: Fakes, marker: str) -> list[str]:
    """The user messages containing `marker` that reached the model, in order."""
    found = []
    for recorded in fakes.openai.requests_to("POST", "/v1/responses$"):
        text = str(recorded.body.get("input")) if isinstance(recorded.body, dict) else ""
        if marker in text:
            found.append(text)
    return found


async def test_repeated_graceful_restarts_while_requests_wait_lose_and_fail_nothing(
    fakes: Fakes, log_dir: Path
) -> None:
    """Four requests on one conversation, a SIGTERM/restart while each of the first three
    runs: every request completes once, in publish order, none `internal` (MAX_DELIVERIES=2)."""
    async with start_stack(
        fakes, log_dir, "responses", SHUTDOWN_GRACE=10, MAX_DELIVERIES=2
    ) as stack:
        t = tag()
        channel = stack.new_thread()
        bodies = [
            stack.request(f"deploy {i} {t}", channel, message_id=f"d{i}-{t}") for i in range(4)
        ]
        for i in range(4):
            fakes.openai.script(f"deploy {i} {t}", [[slow_text(10, 0.05)]])
        for body in bodies:
            await stack.broker.publish(body)
        for i in range(3):
            await stack.broker.wait_until(
                lambda i=i: len(model_turns(fakes, f"deploy {i} {t}")) == 1, 30, f"run {i}"
            )
            stack.service.signal(signal.SIGTERM)
            assert await asyncio.to_thread(stack.service.wait, 30) == 0
            await restart(stack)
        for body in bodies:
            event = await stack.broker.wait_event(body["message_id"], timeout=30)
            assert event["event"] == "completed", event
        await sentinel(stack, channel)
        assert [len(stack.broker.events_for(b["message_id"])) for b in bodies] == [1, 1, 1, 1]
        turns = model_turns(fakes, t)
        assert [next(i for i in range(4) if f"deploy {i} {t}" in x) for x in turns] == [0, 1, 2, 3]


async def test_a_burst_runs_each_conversations_requests_in_publish_order(rstack: Stack) -> None:
    """60 conversations x 3 requests published back to back on one AMQP channel."""
    t = tag()
    conversations = [rstack.new_thread() for _ in range(60)]
    channel = await rstack.broker.connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(rstack.names.exchange, ensure=False)
        for i in range(3):
            for c in conversations:
                body = rstack.request(f"burst {c} {i} {t}", c, message_id=f"b-{c}-{i}")
                await exchange.publish(
                    aio_pika.Message(json.dumps(body).encode(), content_type="application/json"),
                    routing_key=rstack.names.routing_key,
                )
    finally:
        await channel.close()
    await rstack.broker.wait_until(
        lambda: all(rstack.broker.events_for(f"b-{c}-2") for c in conversations), 60, "burst"
    )
    for c in conversations:
        turns = model_turns(rstack.fakes, f"burst {c} ")
        assert [x.index(f"burst {c} ") for x in turns] and [
            next(i for i in range(3) if f"burst {c} {i} {t}" in x) for x in turns
        ] == [0, 1, 2], turns


async def test_with_redis_a_copy_on_a_second_process_never_runs_twice(
    fakes: Fakes, log_dir: Path
) -> None:
    """Two processes on one queue share run records through Redis: the broker connection of
    the one running a request drops, the copy lands anywhere, the request still runs once."""
    import redis.asyncio as aioredis

    from tests.harness import RABBITMQ_URL
    from tests.replicas import delete_shard_queues
    from tests.test_coordination import REDIS_URL

    async with start_stack(fakes, log_dir, "responses", REDIS_URL=REDIS_URL) as stack:
        second = ServiceProcess(stack.names, stack.service.env, log_dir / "second.log")
        second.start()
        try:
            # With REDIS_URL one replica (the router) consumes QUEUE_NAME; both consume
            # shards (README "Running replicas"): wait until the router is back each time.
            await stack.broker.wait_consumer(count=1, timeout=30)
            t = tag()
            fakes.openai.script(t, [[slow_text(30, 0.05)]])
            body = stack.request(f"shared {t}", message_id=t)
            await stack.broker.publish(body)
            await fakes.on_loop(
                fakes.hub.wait_for(lambda: len(fakes.hub.payloads(body["channel"])) >= 3, 10)
            )
            assert close_service_connections(stack.names) >= 2  # both processes' connections
            event = await stack.broker.wait_event(body["message_id"], timeout=30)
            assert event["event"] == "completed"
            await stack.broker.wait_consumer(count=1, timeout=30)
            await sentinel(stack, body["channel"])
            assert len(stack.broker.events_for(body["message_id"])) == 1
            assert len(model_turns(fakes, t)) == 1
        finally:
            second.stop()
    await delete_shard_queues(RABBITMQ_URL, stack.names.queue)
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{stack.names.queue}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
