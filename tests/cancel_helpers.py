"""Shared by the cancel and double-texting tests: publishing cancels, waiting for streams,
reading metrics, and a service stack with a known HTTP port (for `/metrics`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx2
import pytest

from tests.conftest import BACKENDS, Fakes, Stack, start_stack

LONG = tuple(f"w{i} " for i in range(400))
"""A long answer: 400 chunks; with `interval=0.02` about 8 s, always cancelled early."""


def token() -> str:
    return uuid.uuid4().hex[:12]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class CancelStack:
    """A running service (one backend) plus its metrics URL."""

    stack: Stack
    metrics_url: str

    @property
    def fakes(self) -> Fakes:
        return self.stack.fakes

    async def publish_cancel(self, body: dict[str, Any] | bytes) -> float:
        """Publish a cancel (§8); returns the time it was published."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        broker = self.stack.broker
        channel = await broker.connection.channel()
        try:
            exchange = await channel.get_exchange(broker.names.exchange, ensure=False)
            published = time.time()
            await exchange.publish(
                aio_pika.Message(data, content_type="application/json"),
                routing_key=f"{broker.names.routing_key}.cancel",
            )
            return published
        finally:
            await channel.close()

    async def streaming(
        self, channel: str, timeout: float = 10, message_id: str | None = None
    ) -> None:
        """Wait until some answer text (of `message_id`, if given) reached the hub."""
        hub = self.fakes.hub

        def started() -> bool:
            return any(
                p["type"] == "response" and message_id in (None, p["message_id"])
                for p in hub.payloads(channel)
            )

        await self.fakes.on_loop(hub.wait_for(started, timeout, f"text on {channel}"))

    async def tool_called(self, channel: str, timeout: float = 10) -> None:
        hub = self.fakes.hub

        def called() -> bool:
            return any(p["type"] == "tool" for p in hub.payloads(channel))

        await self.fakes.on_loop(hub.wait_for(called, timeout, f"a tool call on {channel}"))

    async def held(self, message_id: str, timeout: float = 10) -> None:
        """Wait until the service holds `message_id` (its log says it is waiting its turn)."""
        deadline = time.monotonic() + timeout
        while f"message_id={message_id} waits" not in self.stack.service.log_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service never held {message_id}")
            await asyncio.sleep(0.02)

    async def metrics(self) -> dict[str, float]:
        async with httpx2.AsyncClient(timeout=5) as http:
            response = await http.get(self.metrics_url)
        values: dict[str, float] = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    async def metrics_when(
        self, predicate: Callable[[dict[str, float]], bool], timeout: float = 10
    ) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while not predicate(values := await self.metrics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"metrics never got there: {values}")
            await asyncio.sleep(0.05)
        return values


def cancels(values: dict[str, float], outcome: str) -> float:
    return values.get(f'assistant_cancels_total{{outcome="{outcome}"}}', 0.0)


@contextlib.asynccontextmanager
async def cancel_stack(
    fakes: Fakes, log_dir: Path, backend: str, **env: Any
) -> AsyncIterator[CancelStack]:
    port = free_port()
    async with start_stack(fakes, log_dir, backend, HTTP_PORT=str(port), **env) as stack:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 40
        async with httpx2.AsyncClient(timeout=2) as http:
            while True:
                try:
                    if (await http.get(url)).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("the service's /metrics never answered")
                await asyncio.sleep(0.1)
        yield CancelStack(stack, url)


def final_payload(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [p for p in payloads if p["final_message"]]
    assert len(finals) == 1, payloads
    assert finals[0] is payloads[-1]
    return finals[0]


def streamed_text(payloads: list[dict[str, Any]]) -> str:
    return "".join(p.get("delta") or "" for p in payloads if p["type"] == "response")


def assert_cancelled(event: dict[str, Any], payloads: list[dict[str, Any]]) -> None:
    """One `cancelled` final payload and a `failed` event carrying the partial answer."""
    final = final_payload(payloads)
    assert final["type"] == "error"
    assert final["error"] == {"code": "cancelled", "retryable": False}
    assert event["event"] == "failed"
    assert event["code"] == "cancelled" and event["retryable"] is False
    assert event["text"] == streamed_text(payloads)


@pytest.fixture(scope="module", params=BACKENDS)
async def cs(
    request: pytest.FixtureRequest, fakes: Fakes, log_dir: Path
) -> AsyncIterator[CancelStack]:
    """A service on each backend with its /metrics reachable (one per test module)."""
    async with cancel_stack(fakes, log_dir, request.param) as stack:
        yield stack
