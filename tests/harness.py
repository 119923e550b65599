"""The real service under test: a `faststream run` subprocess against the real RabbitMQ.

Each `ServiceNames` is unique per test run, so tests share the machine's broker without seeing
each other's messages; `Broker.cleanup()` deletes what a run declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

ROOT = Path(__file__).resolve().parent.parent
# The services' delivery journals (STATE_DIR): one file per queue name, removed by cleanup().
STATE_DIR = Path(tempfile.gettempdir()) / "assistant-service-test-state"
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
SECRET_KEY = "sk-test-SECRET-4f7c9e2a"


@dataclass(frozen=True)
class ServiceNames:
    """The RabbitMQ names of one service instance under test."""

    prefix: str

    @classmethod
    def fresh(cls, label: str = "t") -> ServiceNames:
        return cls(f"test_{label}_{uuid.uuid4().hex[:10]}")

    @property
    def exchange(self) -> str:
        return f"{self.prefix}_assistant"

    @property
    def queue(self) -> str:
        return f"{self.prefix}_requests"

    @property
    def routing_key(self) -> str:
        return f"{self.prefix}.request"

    @property
    def events_exchange(self) -> str:
        return f"{self.exchange}_events"

    @property
    def dlx(self) -> str:
        return f"{self.exchange}_dlx"

    @property
    def failed_queue(self) -> str:
        return f"{self.queue}_failed"

    def env(self) -> dict[str, str]:
        return {
            "EXCHANGE_NAME": self.exchange,
            "QUEUE_NAME": self.queue,
            "ROUTING_KEY": self.routing_key,
        }


@dataclass
class ServiceProcess:
    """A running `faststream run service.app:app`, its environment and its log."""

    names: ServiceNames
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faststream", "run", "service.app:app"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 20) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def service_env(names: ServiceNames, urls: Mapping[str, str], **overrides: Any) -> dict[str, str]:
    """The environment of a service under test: fakes' URLs, fast limits, a recognisable key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "KMC_"))}
    env.update(
        {
            "RABBITMQ_URL": RABBITMQ_URL,
            "OPENAI_API_KEY": SECRET_KEY,
            "OPENAI_API": "responses",
            "OPENAI_RETRY_BACKOFF": "0.05",
            "WEBSOCKET_TOKEN": "hub-token-SECRET-77",
            "OPENWEATHER_API_KEY": "ow-test-key",
            "KMC_API_KEY": "kmc-test-key",
            "RUN_TIMEOUT": "20",
            "STREAM_IDLE_TIMEOUT": "5",
            "TOOL_TIMEOUT": "3",
            "HUB_SEND_TIMEOUT": "3",
            "SHUTDOWN_GRACE": "5",
            "DELTA_FLUSH_MS": "20",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            # Several services run at once: each HTTP server takes a free port (see the log).
            "HTTP_PORT": "0",
            "STATE_DIR": str(STATE_DIR),
        }
    )
    env.update(urls)
    env.update(names.env())
    env.update({key: str(value) for key, value in overrides.items()})
    return env


@dataclass
class Broker:
    """The test's own AMQP client: publishes requests, collects events and dead letters."""

    names: ServiceNames
    connection: AbstractRobustConnection
    events: list[dict[str, Any]] = field(default_factory=list)
    replies: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def open(cls, names: ServiceNames, url: str = RABBITMQ_URL) -> Broker:
        connection = await aio_pika.connect_robust(url)
        broker = cls(names, connection)
        await broker._listen_events()
        return broker

    async def _listen_events(self) -> None:
        channel = await self.connection.channel()
        exchange = await channel.declare_exchange(
            self.names.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        # Not exclusive: it must survive this client's own reconnects in the fault tests.
        queue = await channel.declare_queue(
            f"{self.names.prefix}_events_tap", arguments={"x-expires": 600_000}
        )
        await queue.bind(exchange, routing_key="#")
        await queue.consume(self._on_event, no_ack=True)
        replies = await channel.declare_queue(
            f"{self.names.prefix}_replies", arguments={"x-expires": 600_000}
        )
        await replies.consume(self._on_reply, no_ack=True)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        event["_routing_key"] = message.routing_key
        event["_delivery_mode"] = int(message.delivery_mode or 0)
        event["_correlation_id"] = message.correlation_id
        self.events.append(event)
        self._changed.set()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        self.replies.append((message.correlation_id, json.loads(message.body)))
        self._changed.set()

    @property
    def reply_queue(self) -> str:
        return f"{self.names.prefix}_replies"

    async def publish(
        self,
        body: dict[str, Any] | bytes | str,
        *,
        content_type: str | None = "application/json",
        **properties: Any,
    ) -> None:
        if isinstance(body, dict):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode("utf-8", "surrogatepass")
        else:
            data = body
        channel = await self.connection.channel()
        try:
            exchange = await channel.get_exchange(self.names.exchange, ensure=False)
            await exchange.publish(
                aio_pika.Message(data, content_type=content_type, **properties),
                routing_key=self.names.routing_key,
            )
        finally:
            await channel.close()

    def events_for(self, message_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("message_id") == message_id]

    async def wait_event(self, message_id: str, timeout: float = 20) -> dict[str, Any]:
        """The first final event of `message_id`."""
        found = await self.wait_until(lambda: self.events_for(message_id), timeout, message_id)
        return found[0]

    async def wait_until(self, predicate: Any, timeout: float = 20, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what or predicate}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.2)):
                    await self._changed.wait()

    async def dead_letters(self, wait: float = 0.0) -> list[AbstractIncomingMessage]:
        """Drain what was dead-lettered to `<QUEUE_NAME>_failed` so far (acked)."""
        if wait:
            await asyncio.sleep(wait)
        channel = await self.connection.channel()
        try:
            queue = await channel.get_queue(self.names.failed_queue, ensure=True)
            found: list[AbstractIncomingMessage] = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                found.append(message)
            return found
        finally:
            await channel.close()

    async def queue_state(self, name: str | None = None) -> tuple[int, int]:
        """(messages ready, consumers) of a queue."""
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(name or self.names.queue, passive=True)
            result = queue.declaration_result
            return result.message_count or 0, result.consumer_count or 0
        finally:
            await channel.close()

    async def wait_consumer(self, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # Not declared yet, or this client's own connection is reconnecting: ask again.
            with contextlib.suppress(aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError):
                if (await self.queue_state())[1] >= count:
                    return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"no consumer on {self.names.queue} after {timeout} s")

    async def cleanup(self) -> None:
        channel = await self.connection.channel()
        tap, replies = f"{self.names.prefix}_events_tap", f"{self.names.prefix}_replies"
        for queue in (self.names.queue, self.names.failed_queue, tap, replies):
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
            if channel.is_closed:
                channel = await self.connection.channel()
        for exchange in (self.names.exchange, self.names.dlx, self.names.events_exchange):
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
            if channel.is_closed:
                channel = await self.connection.channel()
        await self.connection.close()
        for journal in STATE_DIR.glob(f"{self.names.queue}*.journal"):
            journal.unlink(missing_ok=True)


def close_service_connections(names: ServiceNames) -> int:
    """Close the service's AMQP connection(s) from the broker side, as an outage would."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    closed = 0
    for line in listing.stdout.splitlines():
        pid, _, properties = line.partition("\t")
        if f"assistant-service {names.queue}" in properties:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "fault test"],
                capture_output=True,
                check=True,
                timeout=30,
            )
            closed += 1
    return closed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.asynccontextmanager
async def running_service(
    names: ServiceNames, env: dict[str, str], log_dir: Path, broker: Broker
) -> AsyncIterator[ServiceProcess]:
    """Start the service, wait for its consumer, stop it (SIGTERM) afterwards."""
    service = ServiceProcess(names, env, log_dir / f"{names.prefix}.log")
    service.start()
    try:
        await broker.wait_consumer(timeout=30)
    except TimeoutError:
        service.kill()
        raise AssertionError("service did not start:\n" + service.log_text()[-4000:]) from None
    try:
        yield service
    finally:
        service.stop()
