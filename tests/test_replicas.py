"""Three replicas of the real service on the machine's RabbitMQ, sharing one Redis (contract §11).

Every model turn goes through a recording proxy (tests/fakes/turns.py), so the tests see when
each conversation's turns started and ended whichever replica ran them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.sharding.placement import assign_shards, owned_by
from service.sharding.registry import ShardRegistry
from tests.conftest import Fakes
from tests.fakes.script import Text
from tests.fakes.turns import TurnRecorder, overlaps
from tests.harness import Broker, ServiceNames
from tests.replicas import ReplicaGroup, close_connections, delete_redis_keys, replica_set

pytestmark = pytest.mark.asyncio(loop_scope="session")

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SHARDS = 12


def tag() -> str:
    return uuid.uuid4().hex[:10]


def slow(words: int, interval: float) -> list[list[Text]]:
    return [[Text(*[f"w{i} " for i in range(words)], interval=interval)]]


@dataclass
class Cluster:
    """Replicas, the test's AMQP client, the fakes and the turn recorder."""

    names: ServiceNames
    broker: Broker
    group: ReplicaGroup
    fakes: Fakes
    turns: TurnRecorder

    def body(self, conversation: str, text: str, **fields: Any) -> dict[str, Any]:
        return {"message": text, "channel": conversation, "message_id": f"m-{tag()}", **fields}

    async def publish_all(self, bodies: list[dict[str, Any]]) -> None:
        """One channel, each publish confirmed before the next (§11's order premise)."""
        channel = await self.broker.connection.channel(publisher_confirms=True)
        try:
            import aio_pika

            exchange = await channel.get_exchange(self.names.exchange, ensure=False)
            for body in bodies:
                await exchange.publish(
                    aio_pika.Message(
                        __import__("json").dumps(body).encode(),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=self.names.routing_key,
                )
        finally:
            await channel.close()

    async def finals(self, bodies: list[dict[str, Any]], timeout: float = 60) -> None:
        ids = [b["message_id"] for b in bodies]
        await self.broker.wait_until(
            lambda: all(self.broker.events_for(i) for i in ids), timeout, f"{len(ids)} finals"
        )

    def assert_each_once_completed(self, bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            events = self.broker.events_for(body["message_id"])
            assert len(events) == 1, (body, events)
            assert events[0]["event"] == "completed", events[0]

    def assert_order_and_no_overlap(self, bodies: list[dict[str, Any]]) -> None:
        turns = self.turns.turns
        assert not overlaps(turns), overlaps(turns)[:3]
        by_conversation: dict[str, list[str]] = {}
        for body in bodies:
            by_conversation.setdefault(body["channel"], []).append(body["message"])
        for conversation, texts in by_conversation.items():
            started = [
                t.text
                for t in sorted(turns, key=lambda t: t.started)
                if t.conversation == conversation and t.text
            ]
            firsts = list(dict.fromkeys(started))
            assert firsts == texts, (conversation, firsts, texts)


@pytest.fixture(scope="module")
async def cluster(fakes: Fakes, log_dir: Path) -> AsyncIterator[Cluster]:
    async with replica_set(
        fakes,
        log_dir,
        prefix="rep",
        count=3,
        redis_url=REDIS_URL,
        shards=SHARDS,
        LEASE_TTL=3,
        SHUTDOWN_GRACE=10,
    ) as running:
        yield Cluster(running.names, running.broker, running.group, fakes, running.recorder)


# -- placement and leases (no service process) ------------------------------------------------


@pytest.mark.parametrize("replicas", range(1, 9))
async def test_shards_are_spread_evenly_over_any_number_of_replicas(replicas: int) -> None:
    members = [f"host-{n}-{1000 + n}-abc{n}" for n in range(replicas)]
    owners = assign_shards(members, SHARDS)
    assert sorted(owners) == list(range(SHARDS))
    loads = [list(owners.values()).count(m) for m in members]
    assert max(loads) - min(loads) <= 1, loads
    # Every replica computes the same answer, whatever order it sees the members in.
    assert assign_shards(list(reversed(members)), SHARDS) == owners


async def test_a_replica_joining_moves_only_the_shards_it_takes() -> None:
    before = assign_shards(["a", "b", "c"], SHARDS)
    after = assign_shards(["a", "b", "c", "d"], SHARDS)
    moved = [k for k in range(SHARDS) if before[k] != after[k]]
    assert len(owned_by("d", ["a", "b", "c", "d"], SHARDS)) == 3
    assert len(moved) <= 4, moved


async def test_a_shard_lease_is_taken_only_when_free_and_expires_when_not_renewed() -> None:
    client = aioredis.from_url(REDIS_URL)
    prefix = f"test_lease_{tag()}"
    registry = ShardRegistry(client, prefix, shards=2, ttl=0.5)
    try:
        assert await registry.hold("a", frozenset({0, 1}), route=True) == (frozenset({0, 1}), True)
        # Held by "a": "b" wants both and gets neither, until "a" stops renewing.
        assert await registry.hold("b", frozenset({0, 1}), route=True) == (frozenset(), False)
        await registry.release("a", 1)
        assert await registry.hold("b", frozenset({0, 1}), route=True) == (frozenset({1}), False)
        taken = await _eventually(lambda: registry.hold("b", frozenset({0, 1}), route=True))
        assert taken == (frozenset({0, 1}), True)
        assert sorted(await registry.heartbeat("b")) == ["b"]
        assert await registry.heartbeat("b", alive=False) == []
        # A conversation keeps its shard; a new one takes the proposed one.
        assert await registry.shard_of("conv_x", 1, 60) == (1, True)
        assert await registry.shard_of("conv_x", 0, 60) == (1, False)
    finally:
        await delete_redis_keys(REDIS_URL, prefix)
        await client.aclose()


async def _eventually(attempt: Any, timeout: float = 5) -> Any:
    """Retry `attempt()` until "b" holds everything (the other holder's lease expired)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await attempt()
        if result == (frozenset({0, 1}), True) or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.1)


# -- three replicas --------------------------------------------------------------------------


async def test_double_texting_across_three_replicas_keeps_order_without_overlapping_turns(
    cluster: Cluster,
) -> None:
    cluster.turns.reset()
    bodies: list[dict[str, Any]] = []
    for c in range(30):
        conversation = f"conv_dt{c}_{tag()}"
        for n in range(3):
            body = cluster.body(conversation, f"dt {conversation} n{n}")
            cluster.fakes.openai.script(body["message"], slow(6, 0.02))
            bodies.append(body)
    await cluster.publish_all(bodies)
    await cluster.finals(bodies, timeout=90)
    cluster.assert_each_once_completed(bodies)
    cluster.assert_order_and_no_overlap(bodies)
    shares = cluster.group.shares([b["message_id"] for b in bodies])
    assert sum(shares) == len(bodies)
    # §11 spread: 30 conversations = 10·N; each replica runs 0.45/N .. 1.65/N of them.
    for share in shares:
        assert 0.15 * len(bodies) <= share <= 0.55 * len(bodies), shares


async def test_connection_loss_mid_answer_runs_nothing_twice(cluster: Cluster) -> None:
    t = tag()
    conversation = f"conv_cl_{t}"
    first = cluster.body(conversation, f"cut {t} first")
    second = cluster.body(conversation, f"cut {t} second")
    cluster.fakes.openai.script(first["message"], slow(40, 0.05))
    await cluster.publish_all([first, second])
    replica = await cluster.broker.wait_until(
        lambda: (
            next(iter(cluster.group.runs_of(first["message_id"])), None) is not None
            and cluster.group.runs_of(first["message_id"])[0] + 1
        ),
        20,
        "the first run",
    )
    index = replica - 1
    member = cluster.group.member_of(index)
    closed = await asyncio.to_thread(close_connections, lambda props: member in props)
    assert closed >= 2
    await cluster.finals([first, second], timeout=60)
    cluster.assert_each_once_completed([first, second])
    assert cluster.group.runs_of(first["message_id"]) == [index]
    cluster.assert_order_and_no_overlap([first, second])


async def test_sigkilled_replica_mid_answer_its_requests_finish_once_elsewhere(
    cluster: Cluster,
) -> None:
    t = tag()
    conversation = f"conv_kill_{t}"
    first = cluster.body(conversation, f"kill {t} first")
    second = cluster.body(conversation, f"kill {t} second")
    cluster.fakes.openai.script(first["message"], slow(60, 0.05) + slow(5, 0.01))
    await cluster.publish_all([first, second])
    index = await cluster.broker.wait_until(
        lambda: [i + 1 for i in cluster.group.runs_of(first["message_id"])], 20, "first run"
    )
    victim = index[0] - 1
    cluster.group.kill(victim)
    await cluster.finals([first, second], timeout=60)
    cluster.assert_each_once_completed([first, second])
    runs = cluster.group.runs_of(first["message_id"])
    # Started on the victim, then once more (and only once) on another replica.
    assert sorted(runs) == sorted({victim, *runs}) and len(runs) == 2 and victim in runs, runs
    assert len(cluster.group.runs_of(second["message_id"])) == 1
    cluster.assert_order_and_no_overlap([first, second])
    await cluster.group.start(victim)


async def test_rolling_restart_of_every_replica_loses_nothing_and_keeps_order(
    cluster: Cluster,
) -> None:
    cluster.turns.reset()
    bodies: list[dict[str, Any]] = []
    for c in range(6):
        conversation = f"conv_roll{c}_{tag()}"
        for n in range(4):
            body = cluster.body(conversation, f"roll {conversation} n{n}")
            cluster.fakes.openai.script(body["message"], slow(10, 0.05))
            bodies.append(body)
    await cluster.publish_all(bodies)
    for index in range(3):
        await cluster.group.restart(index)
    await cluster.finals(bodies, timeout=120)
    cluster.assert_each_once_completed(bodies)
    cluster.assert_order_and_no_overlap(bodies)
