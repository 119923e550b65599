"""Three replicas with QUEUE_TYPE=quorum on a 3-node RabbitMQ cluster behind HAProxy: a node
stops mid-run and nothing is lost or doubled (contract §3, §11). The cluster is this test's own
(tests/cluster.py); the machine's broker is not involved."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.cluster import RabbitCluster
from tests.conftest import Fakes
from tests.fakes.turns import TurnRecorder
from tests.harness import Broker, ServiceNames, service_env
from tests.replicas import ReplicaGroup
from tests.test_replicas import REDIS_URL, SHARDS, Cluster, _delete_keys, slow, tag

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def quorum(fakes: Fakes, log_dir: Path) -> AsyncIterator[tuple[Cluster, RabbitCluster]]:
    with RabbitCluster.started() as rabbit:
        recorder = TurnRecorder(fakes.openai.base_url)
        await fakes.on_loop(recorder.start())
        names = ServiceNames.fresh("qrm")
        # The test's own client talks to node 1 directly: its tap queue lives there, and the
        # test stops another node.
        connection = await aio_pika.connect_robust(rabbit.node_url(0))
        broker = Broker(names, connection)
        await broker._listen_events()
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
            await connection.close()
            await _delete_keys(names.queue)
            await fakes.on_loop(recorder.stop())


async def test_request_queues_are_quorum_queues(quorum: tuple[Cluster, RabbitCluster]) -> None:
    _, rabbit = quorum
    listing = await asyncio.to_thread(
        rabbit.ctl, 0, "--no-table-headers", "list_queues", "name", "type"
    )
    types = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
    names = quorum[0].names
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
    # The node (not the test client's) holding the most service connections.
    nodes = await asyncio.to_thread(
        rabbit.node_of_connection, f"assistant-service {cluster.names.queue}"
    )
    candidates = [n for n in nodes if n != rabbit.nodes[0].node] or [rabbit.nodes[1].node]
    victim = max(set(candidates), key=candidates.count)
    await asyncio.to_thread(rabbit.stop_node, rabbit.index_of(victim))
    await cluster.finals(bodies, timeout=120)
    cluster.assert_each_once_completed(bodies)
    cluster.assert_order_and_no_overlap(bodies)
    after = cluster.body(f"conv_after_{tag()}", f"after {tag()}")
    await cluster.publish_all([after])
    await cluster.finals([after], timeout=60)
