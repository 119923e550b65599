"""Several replicas of the real service (`faststream run` processes) with the same settings.

Each replica takes a free HTTP port (HTTP_PORT=0) and logs where it listens; `start()` waits for
its GET /readyz to answer 200. A replica can be stopped gracefully (SIGTERM), killed (SIGKILL),
restarted, or cut off from the broker (its named AMQP connections closed broker-side).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from tests.conftest import Fakes
from tests.fakes.turns import TurnRecorder
from tests.harness import RABBITMQ_URL, Broker, ServiceNames, ServiceProcess, service_env

_LISTENING = re.compile(r"(?:http: listening on|Uvicorn running on) (http://[\w.:\[\]-]+)")
_ACCEPTED = re.compile(r"accepted\b.*?message_id=(?P<id>[^\s,]+)")


@dataclass
class Replica:
    """One service process of the group."""

    index: int
    process: ServiceProcess
    starts: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None

    def log_text(self) -> str:
        return self.process.log_text()

    def http_url(self) -> str | None:
        found = _LISTENING.findall(self.log_text())
        return found[-1] if found else None

    def accepted(self) -> list[str]:
        """message_ids whose run started on this replica (every start, over its restarts)."""
        return [m["id"] for m in _ACCEPTED.finditer(self.log_text())]


@dataclass
class ReplicaGroup:
    """N replicas of one service (same names and settings), each with its own log file."""

    names: ServiceNames
    env: dict[str, str]
    log_dir: Path
    count: int
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        for index in range(self.count):
            log_path = self.log_dir / f"{self.names.prefix}-r{index}.log"
            process = ServiceProcess(self.names, dict(self.env), log_path)
            self.replicas.append(Replica(index, process))

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    async def start_all(self, timeout: float = 60) -> None:
        for replica in self.replicas:
            self._launch(replica)
        await asyncio.gather(*(self.wait_ready(r, timeout) for r in self.replicas))

    def _launch(self, replica: Replica) -> None:
        # Marks where this start's log begins (the log file is appended to over restarts).
        with replica.process.log_path.open("a") as log:
            log.write(f"=== start {replica.starts} ===\n")
        replica.starts += 1
        replica.process.start()

    async def start(self, index: int, timeout: float = 60) -> None:
        replica = self.replicas[index]
        self._launch(replica)
        await self.wait_ready(replica, timeout)

    async def wait_ready(self, replica: Replica, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        marker = f"=== start {replica.starts - 1} ==="
        while time.monotonic() < deadline:
            if not replica.alive():
                raise AssertionError(
                    f"replica {replica.index} exited:\n{replica.log_text()[-4000:]}"
                )
            text = replica.log_text()
            current = text[text.rfind(marker) :]
            found = _LISTENING.findall(current)
            if found and await asyncio.to_thread(_ready, found[-1]):
                return
            await asyncio.sleep(0.2)
        replica.process.kill()
        raise AssertionError(f"replica {replica.index} not ready:\n{replica.log_text()[-4000:]}")

    def kill(self, index: int) -> None:
        self.replicas[index].process.kill()

    async def terminate(self, index: int, timeout: float = 30) -> int | None:
        """SIGTERM and wait for the exit."""
        process = self.replicas[index].process
        assert process.process is not None
        process.signal(signal.SIGTERM)
        return await asyncio.to_thread(process.wait, timeout)

    async def restart(self, index: int) -> None:
        await self.terminate(index)
        await self.start(index)

    def stop_all(self) -> None:
        for replica in self.replicas:
            replica.process.stop()

    def runs_of(self, message_id: str) -> list[int]:
        """Indexes of the replicas that started a run of `message_id`, once per start."""
        return [r.index for r in self.replicas for m in r.accepted() if m == message_id]

    def shares(self, message_ids: Sequence[str]) -> list[int]:
        """Per replica, how many of `message_ids` it started."""
        wanted = set(message_ids)
        return [len(wanted.intersection(r.accepted())) for r in self.replicas]

    def member_of(self, index: int) -> str:
        """The replica id (as in its connection names) of replica `index`'s current process."""
        pid = self.replicas[index].pid
        match = re.search(rf"replica (\S+-{pid}-\w+):", self.replicas[index].log_text())
        assert match, f"replica {index} logged no replica id"
        return match.group(1)


def _ready(base: str) -> bool:
    with (
        contextlib.suppress(urllib.error.URLError, OSError),
        urllib.request.urlopen(f"{base}/readyz", timeout=2) as response,
    ):
        return bool(response.status == 200)
    return False


def close_connections(
    matches: Callable[[str], bool], rabbitmqctl: Sequence[str] = ("rabbitmqctl",)
) -> int:
    """Close, broker-side, the AMQP connections whose client properties satisfy `matches`."""
    listing = subprocess.run(
        [*rabbitmqctl, "-q", "--no-table-headers", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    closed = 0
    for line in listing.stdout.splitlines():
        pid, _, properties = line.partition("\t")
        if matches(properties):
            subprocess.run(
                [*rabbitmqctl, "-q", "close_connection", pid, "fault test"],
                capture_output=True,
                check=False,
                timeout=60,
            )
            closed += 1
    return closed


async def delete_shard_queues(url: str, queue: str, shards: int = 12) -> None:
    """Remove the shard queues `<queue>.shard.<k>` a replica set declared (test clean-up)."""
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for shard in range(shards):
            try:
                await channel.queue_delete(f"{queue}.shard.{shard}")
            except Exception:
                channel = await connection.channel()
    finally:
        await connection.close()


async def delete_redis_keys(url: str, prefix: str) -> None:
    """Remove the keys a replica set wrote under its QUEUE_NAME prefix (never the database)."""
    client = aioredis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@dataclass
class RunningReplicas:
    """A started replica set in replica mode, its names, a test broker and the turn recorder."""

    names: ServiceNames
    broker: Broker
    group: ReplicaGroup
    recorder: TurnRecorder


@contextlib.asynccontextmanager
async def replica_set(
    fakes: Fakes,
    log_dir: Path,
    *,
    prefix: str,
    count: int,
    redis_url: str,
    shards: int,
    **env: Any,
) -> AsyncIterator[RunningReplicas]:
    """`count` replicas in replica mode (REDIS_URL) behind a turn-recording model proxy; on
    exit every process stops and the queues and Redis keys they made are removed."""
    recorder = TurnRecorder(fakes.openai.base_url)
    await fakes.on_loop(recorder.start())
    names = ServiceNames.fresh(prefix)
    broker = await Broker.open(names)
    settings = service_env(
        names,
        {**fakes.urls(), "OPENAI_BASE_URL": recorder.base_url},
        REDIS_URL=redis_url,
        REPLICA_SHARDS=shards,
        **env,
    )
    group = ReplicaGroup(names, settings, log_dir, count)
    try:
        await group.start_all()
        yield RunningReplicas(names, broker, group, recorder)
    finally:
        group.stop_all()
        await delete_shard_queues(RABBITMQ_URL, names.queue, shards)
        await broker.cleanup()
        await delete_redis_keys(redis_url, names.queue)
        await fakes.on_loop(recorder.stop())
