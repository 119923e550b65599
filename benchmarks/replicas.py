"""Replicas, measured (README "Running replicas"): `python -m benchmarks.replicas` (`make bench`).

1. spread: 3 replicas, 150 conversations published at once (and 30 = 10·N): each replica's
   share of the runs (goal 20-47 %; §11: 0.45/N..1.65/N);
2. takeover: 30 conversations with slow answers on 3 replicas, one replica SIGKILLed once it
   runs some: seconds from the kill until its first request runs again elsewhere, and until
   every request has its final event;
3. latency: requests one at a time, publish → `completed` event, one process (no REDIS_URL)
   against 3 replicas (router hop + Redis), median and p90.

Real processes on the machine's RabbitMQ and Redis, the fake OpenAI server and hub of the tests
on loopback. The machine is shared: its load average is written with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika

from tests.conftest import Fakes
from tests.fakes.apis import FakeApis
from tests.fakes.background import BackgroundLoop
from tests.fakes.hub import RecordingHub
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Text
from tests.harness import Broker, ServiceNames, service_env
from tests.replicas import ReplicaGroup, delete_redis_keys
from tests.test_replicas import REDIS_URL

RESULTS = Path(__file__).resolve().parent / "results"
SHARDS = 12


async def _group(
    fakes: Fakes, log_dir: Path, count: int, *, replicas: bool, label: str
) -> tuple[ReplicaGroup, Broker]:
    names = ServiceNames.fresh(label)
    broker = await Broker.open(names)
    extra: dict[str, Any] = {"LOG_LEVEL": "INFO", "MAX_CONCURRENCY": 64}
    if replicas:
        extra |= {"REDIS_URL": REDIS_URL, "REPLICA_SHARDS": SHARDS, "LEASE_TTL": 3}
    group = ReplicaGroup(names, service_env(names, fakes.urls(), **extra), log_dir, count)
    await group.start_all(timeout=90)
    return group, broker


async def _close(group: ReplicaGroup, broker: Broker) -> None:
    group.stop_all()
    channel = await broker.connection.channel()
    for shard in range(SHARDS):
        try:
            await channel.queue_delete(f"{group.names.queue}.shard.{shard}")
        except Exception:
            channel = await broker.connection.channel()
    await broker.cleanup()
    await delete_redis_keys(REDIS_URL, group.names.queue)


async def _publish(broker: Broker, bodies: list[dict[str, Any]]) -> dict[str, float]:
    """Publish in order, each confirmed; returns message_id → publish time."""
    channel = await broker.connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(broker.names.exchange, ensure=False)
    sent: dict[str, float] = {}
    for body in bodies:
        sent[body["message_id"]] = time.time()
        await exchange.publish(
            aio_pika.Message(json.dumps(body).encode(), content_type="application/json"),
            routing_key=broker.names.routing_key,
        )
    await channel.close()
    return sent


def _bodies(
    fakes: Fakes, count: int, label: str, words: int, interval: float
) -> list[dict[str, Any]]:
    bodies = []
    for n in range(count):
        t = uuid.uuid4().hex[:10]
        body = {
            "message": f"{label} {t}",
            "channel": f"conv_{label}{n}_{t}",
            "message_id": f"m-{t}",
        }
        fakes.openai.script(
            body["message"], [[Text(*[f"w{i} " for i in range(words)], interval=interval)]]
        )
        bodies.append(body)
    return bodies


async def spread(fakes: Fakes, log_dir: Path, conversations: int) -> dict[str, Any]:
    group, broker = await _group(fakes, log_dir, 3, replicas=True, label="bsp")
    try:
        bodies = _bodies(fakes, conversations, "spread", 8, 0.02)
        await _publish(broker, bodies)
        ids = [b["message_id"] for b in bodies]
        await broker.wait_until(lambda: all(broker.events_for(i) for i in ids), 180, "finals")
        shares = group.shares(ids)
        return {
            "conversations": conversations,
            "runs_per_replica": shares,
            "share_percent": [round(100 * s / conversations, 1) for s in shares],
        }
    finally:
        await _close(group, broker)


async def takeover(fakes: Fakes, log_dir: Path) -> dict[str, Any]:
    group, broker = await _group(fakes, log_dir, 3, replicas=True, label="bko")
    try:
        bodies = _bodies(fakes, 30, "kill", 80, 0.05)
        await _publish(broker, bodies)
        ids = [b["message_id"] for b in bodies]
        await broker.wait_until(lambda: len(group[0].accepted()) >= 2, 60, "runs on replica 0")
        victims = set(group[0].accepted()) & set(ids)
        killed = time.time()
        group.kill(0)

        def rerun_at() -> float | None:
            for replica in group.replicas[1:]:
                for line in replica.log_text().splitlines():
                    if "accepted" in line and any(v in line for v in victims):
                        return _log_time(line)
            return None

        again = await broker.wait_until(rerun_at, 60, "a re-run elsewhere")
        await broker.wait_until(lambda: all(broker.events_for(i) for i in ids), 180, "finals")
        done = time.time()
        once = all(len(broker.events_for(i)) == 1 for i in ids)
        return {
            "killed_runs": len(victims),
            "seconds_until_rerun_elsewhere": round(again - killed, 2),
            "seconds_until_all_final": round(done - killed, 2),
            "lease_ttl": 3,
            "each_final_once": once,
        }
    finally:
        await _close(group, broker)


def _log_time(line: str) -> float:
    stamp = line[:23]
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000


async def latency(fakes: Fakes, log_dir: Path, *, replicas: bool, n: int) -> dict[str, Any]:
    group, broker = await _group(
        fakes, log_dir, 3 if replicas else 1, replicas=replicas, label="blt"
    )
    try:
        samples = []
        for body in _bodies(fakes, n, "lat", 3, 0.0):
            sent = await _publish(broker, [body])
            event = await broker.wait_event(body["message_id"], timeout=30)
            assert event["event"] == "completed", event
            samples.append(time.time() - sent[body["message_id"]])
        samples.sort()
        return {
            "requests": n,
            "median_ms": round(1000 * statistics.median(samples), 1),
            "p90_ms": round(1000 * samples[int(0.9 * (len(samples) - 1))], 1),
        }
    finally:
        await _close(group, broker)


async def run(args: argparse.Namespace, fakes: Fakes) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    result: dict[str, Any] = {"load_average_at_start": os.getloadavg(), "cpus": os.cpu_count()}
    if True:
        result["spread_150"] = await spread(fakes, log_dir, 150)
        result["spread_30"] = await spread(fakes, log_dir, 30)
        result["takeover"] = await takeover(fakes, log_dir)
        one = await latency(fakes, log_dir, replicas=False, n=args.latency_requests)
        three = await latency(fakes, log_dir, replicas=True, n=args.latency_requests)
        result["latency"] = {
            "one_process": one,
            "three_replicas": three,
            "extra_median_ms": round(three["median_ms"] - one["median_ms"], 1),
        }
        result["load_average_at_end"] = os.getloadavg()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__)
    parser.add_argument("--latency-requests", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    loop = BackgroundLoop()
    loop.start()
    openai, hub, apis = FakeOpenAI(record_requests=False), RecordingHub(), FakeApis()
    for server in (openai, hub, apis):
        loop.run(server.start())
    try:
        result = asyncio.run(run(args, Fakes(loop, openai, hub, apis)))
    finally:
        for server in (openai, hub, apis):
            loop.run(server.stop())
        loop.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replicas.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
