"""The service on a 3-node RabbitMQ cluster behind HAProxy, with QUEUE_TYPE=quorum: three
replicas while a node stops mid-run (nothing lost or doubled, order kept), and a single process
whose node stops (its FastStream consumer comes back). The cluster is this module's own
(tests/cluster.py); the machine's broker is not involved. Contract §3, §11."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.cluster import RabbitCluster
from tests.conftest import Fakes
from tests.fakes.turns import TurnRecorder
from tests.harness import Broker, ServiceNames, service_env
from tests.replicas import ReplicaGroup, delete_redis_keys
from tests.test_replicas import REDIS_URL, SHARDS, Cluster, slow, tag

pytestmark = pytest.mark.asyncio(loop_scope="session")


class QuorumBroker(Broker):
    """The test's client through HAProxy, its event tap a quorum queue: any node may stop."""

    @classmethod
    async def through(cls, rabbit: RabbitCluster, names: ServiceNames) -> QuorumBroker:
        connection = await aio_pika.connect_robust(rabbit.url, reconnect_interval=0.5)
        broker = cls(names, connection)
        await broker._listen_events()
        return broker

    async def _listen_events(self) -> None:
        channel = await self.connection.channel()
        exchange = await channel.declare_exchange(
            self.names.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            f"{self.names.prefix}_events_tap",
            durable=True,
            arguments={"x-queue-type": "quorum", "x-expires": 600_000},
        )
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_event, no_ack=True)


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitCluster]:
    with RabbitCluster.started() as cluster:
        yield cluster


async def _restore(rabbit: RabbitCluster) -> None:
    """Start the nodes a test stopped, so that the next test finds the whole cluster."""
    for index, node in enumerate(rabbit.nodes):
        if node.process is None or node.process.poll() is not None:
            await asyncio.to_thread(rabbit.start_node, index)


@pytest.fixture(scope="module")
async def quorum(
    fakes: Fakes, log_dir: Path, rabbit: RabbitCluster
) -> AsyncIterator[tuple[Cluster, RabbitCluster]]:
    recorder = TurnRecorder(fakes.openai.base_url)
    await fakes.on_loop(recorder.start())
    names = ServiceNames.fresh("qrm")
    broker = await QuorumBroker.through(rabbit, names)
    env = service_env(
        names,
        {**fakes.urls(), "OPENAI_BASE_URL": recorder.base_url},
        RABBITMQ_URL=rabbit.url,
        QUEUE_TYPE="quorum",
        REDIS_URL=REDIS_URL,
        REPLICA_SHARDS=SHARDS,
        LEASE_TTL=3,
    )
    group = ReplicaGroup(names, env, log_dir, 3)
    try:
        await group.start_all(timeout=90)
        yield Cluster(names, broker, group, fakes, recorder), rabbit
    finally:
        group.stop_all()
        await broker.connection.close()
        await delete_redis_keys(REDIS_URL, names.queue)
        await fakes.on_loop(recorder.stop())
        await _restore(rabbit)


async def test_request_queues_are_quorum_queues(quorum: tuple[Cluster, RabbitCluster]) -> None:
    cluster, rabbit = quorum
    listing = await asyncio.to_thread(
        rabbit.ctl, 0, "--no-table-headers", "list_queues", "name", "type"
    )
    types = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
    names = cluster.names
    wanted = [names.queue, names.failed_queue, *(f"{names.queue}.shard.{k}" for k in range(SHARDS))]
    assert {name: types.get(name) for name in wanted} == dict.fromkeys(wanted, "quorum")


async def test_a_node_stopped_mid_run_loses_and_doubles_nothing(
    quorum: tuple[Cluster, RabbitCluster],
) -> None:
    cluster, rabbit = quorum
    cluster.turns.reset()
    bodies: list[dict[str, Any]] = []
    for c in range(9):
        conversation = f"conv_node{c}_{tag()}"
        for n in range(2):
            body = cluster.body(conversation, f"node {conversation} n{n}")
            cluster.fakes.openai.script(body["message"], slow(30, 0.05))
            bodies.append(body)
    await cluster.publish_all(bodies)
    await cluster.broker.wait_until(
        lambda: sum(cluster.group.shares([b["message_id"] for b in bodies])) >= 3, 30, "runs"
    )
    # The node holding the most service connections.
    nodes = await asyncio.to_thread(
        rabbit.node_of_connection, f"assistant-service {cluster.names.queue}"
    )
    victim = max(set(nodes), key=nodes.count)
    await asyncio.to_thread(rabbit.stop_node, rabbit.index_of(victim))
    await cluster.finals(bodies, timeout=120)
    cluster.assert_each_once_completed(bodies)
    cluster.assert_order_and_no_overlap(bodies)
    after = cluster.body(f"conv_after_{tag()}", f"after {tag()}")
    await cluster.publish_all([after])
    await cluster.finals([after], timeout=60)


async def test_single_process_on_quorum_queues_comes_back_after_its_node_stops(
    fakes: Fakes, log_dir: Path, rabbit: RabbitCluster
) -> None:
    """No REDIS_URL: FastStream's own consumer must consume again through the same URL
    (faststream issue 2758: consumers not restored after a reconnect to a cluster)."""
    await _restore(rabbit)
    names = ServiceNames.fresh("qsp")
    broker = await QuorumBroker.through(rabbit, names)
    env = service_env(names, fakes.urls(), RABBITMQ_URL=rabbit.url, QUEUE_TYPE="quorum")
    group = ReplicaGroup(names, env, log_dir, 1)
    try:
        await group.start_all(timeout=90)
        t = tag()
        first = {"message": f"single {t} one", "channel": f"conv_sp_{t}", "message_id": f"a-{t}"}
        fakes.openai.script(first["message"], slow(40, 0.05))
        await broker.publish(first)
        await broker.wait_until(lambda: group.runs_of(first["message_id"]), 20, "the run")
        nodes = await asyncio.to_thread(
            rabbit.node_of_connection, f"assistant-service {names.queue}"
        )
        assert nodes, "the service's connection is on no node"
        await asyncio.to_thread(rabbit.stop_node, rabbit.index_of(nodes[0]))
        assert (await broker.wait_event(first["message_id"], timeout=60))["event"] == "completed"
        second = {"message": f"single {t} two", "channel": f"conv_sp_{t}", "message_id": f"b-{t}"}
        await broker.publish(second)
        assert (await broker.wait_event(second["message_id"], timeout=60))["event"] == "completed"
        assert len(broker.events_for(first["message_id"])) == 1
        assert len(group.runs_of(first["message_id"])) == 1
    finally:
        group.stop_all()
        await broker.connection.close()
        await _restore(rabbit)
