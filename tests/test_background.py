"""Contract §12: with OPENAI_BACKGROUND=true an answer outlives the replica that started it.

Two service processes share one queue and one Redis (REDIS_URL, replica mode); the one running a request is
SIGKILLed mid-answer, mid-tool-call or between two model turns, and the other one re-attaches:
one `started`, hub `seq` without gap or repeat, each delta once, exactly one final payload and
one final event, the answer generated once (the fake counts the responses it created).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fakes
from tests.fakes.script import Stall, Text, ToolCall
from tests.harness import RABBITMQ_URL, Broker, ServiceNames, ServiceProcess, service_env
from tests.replicas import ReplicaGroup, delete_shard_queues

SHARDS = 4
CLIENTS_PATH = "/clients/active-per-service"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Replicas:
    """Two service processes on one queue (replica mode: they share Redis), re-attaching."""

    names: ServiceNames
    broker: Broker
    fakes: Fakes
    group: ReplicaGroup

    def holding(self, message_id: str) -> ServiceProcess:
        """The replica that started `message_id`."""
        (index,) = self.group.runs_of(message_id)
        return self.group[index].process


@pytest.fixture(scope="module")
async def replicas(fakes: Fakes, log_dir: Path) -> AsyncIterator[Replicas]:
    names = ServiceNames.fresh("bg")
    broker = await Broker.open(names)
    env = service_env(
        names,
        fakes.urls(),
        OPENAI_BACKGROUND="true",
        REDIS_URL=REDIS_URL,
        REPLICA_SHARDS=SHARDS,
        LEASE_TTL=3,
        DELTA_FLUSH_MS="20",
        STREAM_IDLE_TIMEOUT="10",
    )
    group = ReplicaGroup(names, env, log_dir, 2)
    try:
        await group.start_all()
        yield Replicas(names, broker, fakes, group)
    finally:
        group.stop_all()
        await delete_shard_queues(RABBITMQ_URL, names.queue, SHARDS)
        await broker.cleanup()
        await _drop_redis_keys(names.queue)


async def _drop_redis_keys(prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def live(replicas: Replicas) -> Replicas:
    """Both replicas running: a process a previous test killed is started again first."""
    for replica in replicas.group.replicas:
        if not replica.alive():
            await replicas.group.start(replica.index)
    return replicas


def posts(fakes: Fakes, conversation: str) -> list[Any]:
    return [
        r
        for r in fakes.openai.requests_to("POST", "/v1/responses")
        if isinstance(r.body, dict) and r.body.get("conversation") == conversation
    ]


def words(n: int, tag: str) -> list[str]:
    return [f"{tag}{i} " for i in range(n)]


def assert_one_sequence(payloads: list[dict[str, Any]]) -> str:
    """§5 for one sequence across the crash; returns the final message."""
    seqs = [p["seq"] for p in payloads]
    assert seqs == list(range(len(payloads))), f"seq gap or repeat: {seqs}"
    assert [p["status"] for p in payloads].count("started") == 1
    assert [p["status"] for p in payloads].count("responding") == 1
    finals = [p for p in payloads if p["final_message"]]
    assert len(finals) == 1 and finals[0] is payloads[-1]
    final = finals[0]
    assert final["status"] == "completed", final
    deltas = "".join(p.get("delta", "") for p in payloads if p["type"] == "response")
    assert deltas == final["message"]
    return str(final["message"])


async def _crash_when(
    replicas: Replicas, message_id: str, channel: str, ready: Any, what: str
) -> tuple[ServiceProcess, float]:
    await replicas.fakes.on_loop(replicas.fakes.hub.wait_for(ready, timeout=20, what=what), 30)
    victim = replicas.holding(message_id)
    victim.kill()
    return victim, time.monotonic()


async def _next_payload_after(fakes: Fakes, channel: str, count: int) -> float:
    await fakes.on_loop(
        fakes.hub.wait_for(lambda: len(fakes.hub.payloads(channel)) > count, timeout=30), 40
    )
    return time.monotonic()


async def test_replica_killed_mid_answer_is_finished_by_the_other_with_one_generation(
    replicas: Replicas,
) -> None:
    fakes, t = (await live(replicas)).fakes, uuid.uuid4().hex[:8]
    conversation, message_id = f"conv_bg_{t}", f"bg-answer-{t}"
    chunks = words(80, "w")
    fakes.openai.script(f"long answer {t}", [[Text(*chunks, interval=0.03)]])
    await replicas.broker.publish(
        {"message": f"long answer {t}", "channel": conversation, "message_id": message_id}
    )
    hub = fakes.hub
    _, killed_at = await _crash_when(
        replicas,
        message_id,
        conversation,
        lambda: sum(p["type"] == "response" for p in hub.payloads(conversation)) >= 5,
        "5 text payloads",
    )
    sent_before = len(hub.payloads(conversation))
    next_at = await _next_payload_after(fakes, conversation, sent_before)
    payloads = await fakes.hub_final(conversation, timeout=30)
    answer = assert_one_sequence(payloads)
    assert answer == "".join(chunks)
    assert len(fakes.openai.background.created(conversation)) == 1
    assert fakes.openai.background.generated_text(conversation) == answer
    event = await replicas.broker.wait_event(message_id, timeout=20)
    assert event["text"] == answer
    assert len(replicas.broker.events_for(message_id)) == 1
    await asyncio.sleep(0)  # let a duplicate (there must be none) arrive with the next check
    assert len(replicas.broker.events_for(message_id)) == 1
    print(f"\ncrash -> next hub payload: {(next_at - killed_at) * 1000:.0f} ms")


async def test_replica_killed_mid_tool_call_reuses_the_turn_and_creates_the_next_once(
    replicas: Replicas,
) -> None:
    fakes, t = (await live(replicas)).fakes, uuid.uuid4().hex[:8]
    conversation, message_id = f"conv_bg_{t}", f"bg-tool-{t}"
    fakes.openai.script(
        f"offices {t}",
        [
            [Text("Let me look. "), ToolCall("get_active_clients_per_service", "{}")],
            [Text(*words(20, "o"), interval=0.01)],
        ],
    )
    await fakes.on_loop(_set_delay(fakes, "/clients", 1.5))
    try:
        await replicas.broker.publish(
            {"message": f"offices {t}", "channel": conversation, "message_id": message_id}
        )
        hub = fakes.hub
        await _crash_when(
            replicas,
            message_id,
            conversation,
            lambda: any(p["type"] == "tool" for p in hub.payloads(conversation)),
            "the tool call announced",
        )
        payloads = await fakes.hub_final(conversation, timeout=30)
    finally:
        await fakes.on_loop(_set_delay(fakes, "/clients", 0.0))
    answer = assert_one_sequence(payloads)
    assert answer == "Let me look. " + "".join(words(20, "o"))
    # One response per model turn: the finished first turn was not created again.
    assert len(fakes.openai.background.created(conversation)) == 2
    # Killed while the tool ran: it runs again, announced once, its output reported once.
    tools = [p["message"] for p in payloads if p["type"] == "tool"]
    assert len(tools) == 2 and tools[0].startswith("Calling") and "returned" in tools[1], tools
    event = await replicas.broker.wait_event(message_id, timeout=20)
    assert event["text"] == answer
    assert len(replicas.broker.events_for(message_id)) == 1


async def test_replica_killed_between_two_model_turns_runs_no_tool_and_no_turn_twice(
    replicas: Replicas,
) -> None:
    fakes, t = (await live(replicas)).fakes, uuid.uuid4().hex[:8]
    conversation, message_id = f"conv_bg_{t}", f"bg-between-{t}"
    fakes.openai.script(
        f"clients {t}",
        [
            [ToolCall("get_active_clients_per_service", "{}")],
            # The killed replica's request for the second turn never reaches the model.
            [Stall(5, before_response=True), Text("never")],
            [Text(*words(10, "c"), interval=0.01)],
        ],
    )
    await replicas.broker.publish(
        {"message": f"clients {t}", "channel": conversation, "message_id": message_id}
    )
    calls_before = len(fakes.apis.requests_to(CLIENTS_PATH))
    await _crash_when(
        replicas,
        message_id,
        conversation,
        # The second turn was asked for (and stalls before the model sees it).
        lambda: len(posts(fakes, conversation)) == 2,
        "the second model turn requested",
    )
    payloads = await fakes.hub_final(conversation, timeout=30)
    answer = assert_one_sequence(payloads)
    assert answer == "".join(words(10, "c"))
    assert len(fakes.openai.background.created(conversation)) == 2
    tools = [p for p in payloads if p["type"] == "tool"]
    assert len(tools) == 2, tools  # one call, announced and returned once: not run again
    assert len(fakes.apis.requests_to(CLIENTS_PATH)) == calls_before + 1
    event = await replicas.broker.wait_event(message_id, timeout=20)
    assert [c["name"] for c in event["tool_calls"]] == ["get_active_clients_per_service"]


async def _set_delay(fakes: Fakes, path: str, seconds: float) -> None:
    fakes.apis.delay(path, seconds)


async def test_when_the_response_is_gone_the_redelivered_request_runs_again_as_a_new_sequence(
    replicas: Replicas,
) -> None:
    fakes, t = (await live(replicas)).fakes, uuid.uuid4().hex[:8]
    conversation, message_id = f"conv_bg_{t}", f"bg-gone-{t}"
    chunks = words(40, "g")
    fakes.openai.script(f"gone {t}", [[Text(*chunks, interval=0.03)]])
    await replicas.broker.publish(
        {"message": f"gone {t}", "channel": conversation, "message_id": message_id}
    )
    hub = fakes.hub
    await fakes.on_loop(
        hub.wait_for(
            lambda: sum(p["type"] == "response" for p in hub.payloads(conversation)) >= 3,
            timeout=20,
        ),
        30,
    )
    (first,) = fakes.openai.background.created(conversation)
    fakes.openai.background.expire(first)  # past the API's retention: re-attach is impossible
    replicas.holding(message_id).kill()
    payloads = await fakes.hub_final(conversation, timeout=30)
    starts = [i for i, p in enumerate(payloads) if p["status"] == "started"]
    assert len(starts) == 2 and starts[0] == 0, [p["status"] for p in payloads]
    rerun = payloads[starts[1] :]
    assert assert_one_sequence(rerun) == "".join(chunks)  # §5 holds for the new sequence
    (second,) = fakes.openai.background.created(conversation)  # the expired one is forgotten
    assert second != first
    assert (
        len(await replicas.broker.wait_until(lambda: replicas.broker.events_for(message_id))) == 1
    )


async def test_a_cancel_stops_the_background_response_server_side(replicas: Replicas) -> None:
    fakes, t = (await live(replicas)).fakes, uuid.uuid4().hex[:8]
    conversation, message_id = f"conv_bg_{t}", f"bg-cancel-{t}"
    fakes.openai.script(f"stop {t}", [[Text(*words(300, "s"), interval=0.02)]])
    await replicas.broker.publish(
        {"message": f"stop {t}", "channel": conversation, "message_id": message_id}
    )
    hub = fakes.hub
    await fakes.on_loop(
        hub.wait_for(
            lambda: sum(p["type"] == "response" for p in hub.payloads(conversation)) >= 2,
            timeout=20,
        ),
        30,
    )
    await _publish_cancel(replicas.broker, {"message_id": message_id})
    payloads = await fakes.hub_final(conversation, timeout=20)
    assert payloads[-1]["error"] == {"code": "cancelled", "retryable": False}
    (response_id,) = fakes.openai.background.created(conversation)
    # Closing the stream alone would leave it generating: it was cancelled on the API side.
    await fakes.on_loop(
        hub.wait_for(
            lambda: fakes.openai.background.status(response_id) == "cancelled", timeout=10
        ),
        15,
    )
    assert fakes.openai.background.tokens(conversation) < 300


async def _publish_cancel(broker: Broker, body: dict[str, Any]) -> None:
    import json

    import aio_pika

    channel = await broker.connection.channel()
    try:
        exchange = await channel.get_exchange(broker.names.exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), content_type="application/json"),
            routing_key=f"{broker.names.routing_key}.cancel",
        )
    finally:
        await channel.close()
