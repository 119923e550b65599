"""The service under test: `faststream run service.app:app` with its own RabbitMQ names.

Reuses the test harness (`tests/harness.py`): a fresh `ServiceNames` per run, the `Broker`
client that taps the events exchange, and `Broker.cleanup()` to delete what the run declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from benchmarks import procstat
from tests.harness import RABBITMQ_URL, ROOT, Broker, ServiceNames

LOOPS = {
    "asyncio": "asyncio:new_event_loop",
    "uvloop": "uvloop:new_event_loop",
}


def resolve_loop(loop: str) -> str:
    """`auto` is what `faststream run` does by itself: uvloop when it is installed."""
    if loop != "auto":
        return loop
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def fresh_names() -> ServiceNames:
    return ServiceNames(f"bench_{uuid.uuid4().hex[:10]}")


def service_env(
    names: ServiceNames,
    *,
    openai_base_url: str,
    hub_uri: str,
    max_concurrency: int,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """settings.toml defaults, except what points the service at the fakes and the broker."""
    drop = ("OPENAI_", "KMC_", "OPENWEATHER_", "WEBSOCKET_", "DELTA_", "HUB_", "MAX_CONCURRENCY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        {
            "RABBITMQ_URL": RABBITMQ_URL,
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_API": "responses",
            "OPENAI_BASE_URL": openai_base_url,
            "WEBSOCKET_URI": hub_uri,
            "MAX_CONCURRENCY": str(max_concurrency),
            "HTTP_PORT": "0",  # the health/metrics endpoint, where the tree has one
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(names.env())
    env.update(extra or {})
    return env


@dataclass
class ServiceUnderTest:
    """A running service, its CPU meter and the time each request was published."""

    names: ServiceNames
    broker: Broker
    process: subprocess.Popen[bytes]
    log_path: Path
    published: dict[str, float] = field(default_factory=dict)
    _channel: aio_pika.abc.AbstractChannel | None = None
    _exchange: aio_pika.abc.AbstractExchange | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def peak_rss_bytes(self) -> int:
        return procstat.peak_rss_bytes(self.pid)

    async def publish(self, channel: str, message: str) -> None:
        if self._exchange is None:
            self._channel = await self.broker.connection.channel(publisher_confirms=False)
            self._exchange = await self._channel.get_exchange(self.names.exchange, ensure=False)
        body = json.dumps({"message": message, "channel": channel, "message_id": channel})
        self.published[channel] = time.time()
        await self._exchange.publish(
            aio_pika.Message(body.encode(), content_type="application/json"),
            routing_key=self.names.routing_key,
        )

    async def publish_at_once(self, requests: list[tuple[str, str]]) -> None:
        """Publish every (channel, message) back to back, bodies built beforehand; each is
        stamped just before it is handed to the client."""
        if self._exchange is None:
            self._channel = await self.broker.connection.channel(publisher_confirms=False)
            self._exchange = await self._channel.get_exchange(self.names.exchange, ensure=False)
        await publish_back_to_back(
            self._exchange,
            self.names.routing_key,
            [
                (ch, json.dumps({"message": text, "channel": ch, "message_id": ch}).encode())
                for ch, text in requests
            ],
            self.published,
        )

    def finished(self) -> int:
        return len(self.broker.events)

    async def wait_finished(self, count: int, timeout: float) -> None:
        await self.broker.wait_until(
            lambda: self.finished() >= count, timeout, f"{count} final events"
        )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


async def publish_back_to_back(
    exchange: aio_pika.abc.AbstractExchange,
    routing_key: str,
    bodies: list[tuple[str, bytes]],
    stamps: dict[str, float],
) -> None:
    """A burst: (channel, body) published one after another as fast as the client goes,
    `stamps[channel]` = the time just before its publish."""
    messages = [
        (ch, aio_pika.Message(body, content_type="application/json")) for ch, body in bodies
    ]
    for ch, message in messages:
        stamps[ch] = time.time()
        await exchange.publish(message, routing_key=routing_key)


def _spawn(
    command: list[str], env: dict[str, str], log_path: Path, tree: Path
) -> subprocess.Popen[bytes]:
    # The working directory comes first on sys.path: `tree`'s `service` package is the one run.
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def running_service(
    env: dict[str, str], names: ServiceNames, log_dir: Path, loop: str, tree: Path = ROOT
) -> AsyncIterator[ServiceUnderTest]:
    """Start the service, wait for its consumer; stop it and delete its RabbitMQ names after.

    `tree`: the directory holding the `service` package and `settings.toml` to run (another
    checkout or a copy, to compare two versions of the service in one run)."""
    broker = await Broker.open(names)
    log_path = log_dir / f"{names.prefix}.log"
    command = [sys.executable, "-m", "faststream", "run", "service.app:app"]
    if loop in LOOPS:
        command += ["--loop", LOOPS[loop]]
    process = _spawn(command, env, log_path, tree)
    service = ServiceUnderTest(names, broker, process, log_path)
    try:
        try:
            await broker.wait_consumer(timeout=30)
        except TimeoutError:
            raise RuntimeError("service did not start:\n" + service.log_tail()) from None
        yield service
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 5)
        await broker.cleanup()
