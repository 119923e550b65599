"""Stop and double texting (contract §8) in replica mode (§11): REDIS_URL set, the router and
the shard queues, two replicas of the real service on the machine's RabbitMQ and Redis.

Every model turn goes through the recording proxy (tests/fakes/turns.py), so the tests see that
no two turns of a conversation overlapped, and the fake OpenAI server shows what the model was
given on each turn. A request whose cancel arrives before it does (in flight between the router
and its shard, or waiting beyond the prefetch) ends cancelled on arrival: the cancel tombstone.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import redis.asyncio as aioredis
import yaml

from tests.cancel_helpers import LONG, assert_cancelled, final_payload, streamed_text
from tests.conftest import Fakes
from tests.fakes.script import Text
from tests.fakes.turns import Turn, TurnRecorder, overlaps
from tests.harness import Broker, ServiceNames
from tests.replicas import ReplicaGroup, replica_set

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

REDIS_URL = "redis://127.0.0.1:6379/0"
SHARDS = 4


def tag() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Replicas:
    names: ServiceNames
    broker: Broker
    group: ReplicaGroup
    fakes: Fakes
    turns: TurnRecorder

    def body(self, conversation: str, text: str, **fields: Any) -> dict[str, Any]:
        return {"message": text, "channel": conversation, "message_id": f"m-{tag()}", **fields}

    async def publish(self, *bodies: dict[str, Any]) -> None:
        for body in bodies:
            await self.broker.publish(body)

    async def cancel(self, body: dict[str, Any]) -> None:
        channel = await self.broker.connection.channel()
        try:
            exchange = await channel.get_exchange(self.names.exchange, ensure=False)
            await exchange.publish(
                aio_pika.Message(json.dumps(body).encode(), content_type="application/json"),
                routing_key=f"{self.names.routing_key}.cancel",
            )
        finally:
            await channel.close()

    async def streaming(self, channel: str, message_id: str) -> None:
        hub = self.fakes.hub

        def started() -> bool:
            return any(
                p["type"] == "response" and p["message_id"] == message_id
                for p in hub.payloads(channel)
            )

        await self.fakes.on_loop(hub.wait_for(started, 15, f"text of {message_id}"))

    async def logged(self, needle: str, timeout: float = 15) -> int:
        """The index of the replica whose log says `needle`."""
        found = await self.broker.wait_until(
            lambda: [i + 1 for i in range(2) if needle in self.group[i].log_text()],
            timeout,
            needle,
        )
        return int(found[0]) - 1

    def turns_of(self, conversation: str) -> list[Turn]:
        return sorted(
            (t for t in self.turns.turns if t.conversation == conversation),
            key=lambda t: t.started,
        )

    def seen(self, conversation: str) -> list[str]:
        """What the model was given on each turn, one string per turn."""
        turns = self.fakes.openai.conversation_items.seen(conversation)
        return [" | ".join(t.texts()) for t in turns]


@pytest.fixture(scope="module")
async def rs(fakes: Fakes, log_dir: Path) -> AsyncIterator[Replicas]:
    async with replica_set(
        fakes,
        log_dir,
        prefix="rcx",
        count=2,
        redis_url=REDIS_URL,
        shards=SHARDS,
        LEASE_TTL=3,
        SHUTDOWN_GRACE=5,
    ) as running:
        yield Replicas(running.names, running.broker, running.group, fakes, running.recorder)


async def test_cancel_by_message_id_ends_the_running_request_on_whichever_replica_holds_it(
    rs: Replicas,
) -> None:
    t = tag()
    conversation = f"conv_rc_{t}"
    running = rs.body(conversation, f"long {t}")
    rs.fakes.openai.script(running["message"], [[Text(*LONG, interval=0.02)]])
    await rs.publish(running)
    await rs.streaming(conversation, running["message_id"])
    await rs.cancel({"message_id": running["message_id"]})
    event = await rs.broker.wait_event(running["message_id"])
    payloads = await rs.fakes.hub_final(conversation)
    assert_cancelled(event, payloads)
    assert len(rs.broker.events_for(running["message_id"])) == 1
    assert len(streamed_text(payloads).split()) < len(LONG)


async def test_cancel_arriving_before_its_request_ends_the_request_cancelled_on_arrival(
    rs: Replicas,
) -> None:
    """The cancel tombstone: no replica holds the request yet (in flight to its shard, or
    waiting beyond the prefetch); it ends cancelled when it arrives, without the model."""
    t = tag()
    conversation = f"conv_tomb_{t}"
    early = rs.body(conversation, f"never runs {t}")
    await rs.cancel({"message_id": early["message_id"]})
    client = aioredis.from_url(REDIS_URL)
    try:
        key = f"{rs.names.queue}:cancelled:{early['message_id']}"
        deadline = time.monotonic() + 10
        while not await client.exists(key):
            assert time.monotonic() < deadline, "no tombstone written"
            await asyncio.sleep(0.02)
        ttl = await client.ttl(key)
        assert 0 < ttl <= 900
    finally:
        await client.aclose()
    after = rs.body(conversation, f"runs {t}")
    await rs.publish(early, after)
    event = await rs.broker.wait_event(early["message_id"])
    assert event["code"] == "cancelled" and event["text"] == ""
    assert (await rs.broker.wait_event(after["message_id"]))["event"] == "completed"
    assert len(rs.broker.events_for(early["message_id"])) == 1
    assert all(f"never runs {t}" not in seen for seen in rs.seen(conversation))


async def test_cancel_in_the_same_breath_as_its_request_still_ends_it(rs: Replicas) -> None:
    """Published right behind the request: it meets the request in the router, the shard
    queue or the replica; in every case the request ends cancelled, once."""
    t = tag()
    bodies = [rs.body(f"conv_breath{i}_{t}", f"breath {t} {i}") for i in range(6)]
    for body in bodies:
        rs.fakes.openai.script(body["message"], [[Text(*LONG[:200], interval=0.02)]])
        await rs.publish(body)
        await rs.cancel({"message_id": body["message_id"]})
    for body in bodies:
        event = await rs.broker.wait_event(body["message_id"])
        assert event["code"] == "cancelled", event
    sentinel = rs.body(f"conv_breath_s_{t}", f"sentinel {t}")
    await rs.publish(sentinel)
    await rs.broker.wait_event(sentinel["message_id"])
    for body in bodies:
        assert len(rs.broker.events_for(body["message_id"])) == 1


async def test_cancel_by_channel_ends_the_running_and_the_waiting_request(rs: Replicas) -> None:
    t = tag()
    conversation = f"conv_ch_{t}"
    running = rs.body(conversation, f"first {t}")
    waiting = rs.body(conversation, f"second {t}")
    rs.fakes.openai.script(running["message"], [[Text(*LONG, interval=0.02)]])
    await rs.publish(running, waiting)
    await rs.streaming(conversation, running["message_id"])
    await rs.logged(f"message_id={waiting['message_id']} waits")
    await rs.cancel({"channel": conversation})
    first = await rs.broker.wait_event(running["message_id"])
    second = await rs.broker.wait_event(waiting["message_id"])
    assert first["code"] == "cancelled" and second["code"] == "cancelled"
    assert second["text"] == ""
    assert len(rs.seen(conversation)) == 1, "the waiting one never reached the model"


async def test_reject_on_a_busy_conversation_leaves_the_running_answer_untouched(
    rs: Replicas,
) -> None:
    """Published back to back: the busy request may still be in the router or the shard
    queue when the second is published; the second is rejected either way."""
    t = tag()
    conversation = f"conv_rej_{t}"
    running = rs.body(conversation, f"busy {t}")
    rejected = rs.body(conversation, f"rejected {t}", on_busy="reject")
    rs.fakes.openai.script(running["message"], [[Text(*LONG[:60], interval=0.01)]])
    await rs.publish(running, rejected)
    event = await rs.broker.wait_event(rejected["message_id"])
    assert event["event"] == "failed"
    assert event["code"] == "conversation_busy" and event["retryable"] is True
    done = await rs.broker.wait_event(running["message_id"])
    assert done["event"] == "completed"
    assert done["text"].split() == "".join(LONG[:60]).split()
    assert all(f"rejected {t}" not in seen for seen in rs.seen(conversation))


@pytest.mark.parametrize("policy", ["interrupt", "rollback"])
async def test_interrupt_and_rollback_end_the_others_then_run_the_new_one_alone(
    rs: Replicas, policy: str
) -> None:
    t = tag()
    conversation = f"conv_{policy}_{t}"
    running = rs.body(conversation, f"old {t}")
    waiting = rs.body(conversation, f"queued {t}")
    new = rs.body(conversation, f"new {t}", on_busy=policy)
    rs.fakes.openai.script(running["message"], [[Text(*LONG, interval=0.02)]])
    await rs.publish(running, waiting)
    await rs.streaming(conversation, running["message_id"])
    await rs.logged(f"message_id={waiting['message_id']} waits")
    await rs.publish(new)
    ended = [await rs.broker.wait_event(b["message_id"]) for b in (running, waiting)]
    assert [e["code"] for e in ended] == ["cancelled", "cancelled"]
    assert (await rs.broker.wait_event(new["message_id"]))["event"] == "completed"

    turns = rs.turns_of(conversation)
    assert not overlaps(turns), overlaps(turns)
    assert [turn.text for turn in turns] == [f"old {t}", f"new {t}"]
    # What the model was given on the new turn: the interrupted message stays (interrupt) or
    # leaves (rollback); the waiting one never reached the model.
    seen = rs.seen(conversation)
    assert len(seen) == 2, seen
    expected = [f"user: new {t}"] if policy == "rollback" else [f"user: old {t}", f"user: new {t}"]
    assert seen[1] == " | ".join(expected), seen[1]


async def test_cancel_racing_the_natural_end_gives_exactly_one_final_event(
    rs: Replicas,
) -> None:
    t = tag()
    bodies = [rs.body(f"conv_race{i}_{t}", f"quick {t} {i}") for i in range(8)]
    for i, body in enumerate(bodies):
        await rs.publish(body)
        if i % 2:
            await rs.cancel({"message_id": body["message_id"]})
    for body in bodies:
        await rs.cancel({"message_id": body["message_id"]})
    for body in bodies:
        await rs.broker.wait_event(body["message_id"])
    sentinel = rs.body(f"conv_race_s_{t}", f"sentinel {t}")
    await rs.publish(sentinel)
    await rs.broker.wait_event(sentinel["message_id"])
    for body in bodies:
        (event,) = rs.broker.events_for(body["message_id"])
        final = final_payload(rs.fakes.hub.payloads(body["channel"]))
        if event["event"] == "completed":
            assert final["status"] == "completed" and final["message"] == event["text"]
        else:
            assert event["code"] == "cancelled"
            assert final["error"] == {"code": "cancelled", "retryable": False}


def _http(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_shard_deliveries_are_counted_in_the_received_and_processed_metrics(
    rs: Replicas,
) -> None:
    t = tag()
    bodies = [rs.body(f"conv_metrics{i}_{t}", f"count {t} {i}") for i in range(4)]
    await rs.publish(*bodies)
    for body in bodies:
        await rs.broker.wait_event(body["message_id"])
    shard_prefix = f'handler="default.{rs.names.queue}.shard.'
    received = processed = 0.0
    for i in range(2):
        url = rs.group[i].http_url()
        assert url is not None
        for line in _http(f"{url}/metrics").splitlines():
            if line.startswith("#") or shard_prefix not in line:
                continue
            if line.startswith("faststream_received_messages_total"):
                received += float(line.rsplit(" ", 1)[1])
            if line.startswith("faststream_received_processed_messages_total") and (
                'status="acked"' in line
            ):
                processed += float(line.rsplit(" ", 1)[1])
    assert received >= len(bodies) and processed >= len(bodies), (received, processed)


async def test_served_asyncapi_document_has_the_request_and_shard_channels(rs: Replicas) -> None:
    url = rs.group[0].http_url()
    assert url is not None
    document = yaml.safe_load(_http(f"{url}/docs/asyncapi"))
    channels = document["channels"]
    assert {"chat-requests", "chat-request-shards"} <= set(channels), sorted(channels)
    address = channels["chat-requests"]["bindings"]["amqp"]["queue"]["name"]
    assert address == rs.names.queue
