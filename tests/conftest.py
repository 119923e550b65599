"""Fixtures: the fakes (real servers on loopback, on a background loop) and the real service.

The fakes run on their own event loop in a thread so they keep serving while a test waits;
the service runs as a `faststream run` subprocess against the machine's RabbitMQ.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.fakes.apis import FakeApis
from tests.fakes.background import BackgroundLoop
from tests.fakes.hub import RecordingHub
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import tool_outputs
from tests.harness import (
    RABBITMQ_URL,
    Broker,
    ServiceNames,
    ServiceProcess,
    running_service,
    service_env,
)

T = TypeVar("T")

BACKENDS = ("responses", "assistants")


@dataclass
class Fakes:
    """The fake upstreams, all on one background loop."""

    loop: BackgroundLoop
    openai: FakeOpenAI
    hub: RecordingHub
    apis: FakeApis

    def urls(self) -> dict[str, str]:
        return {
            "OPENAI_BASE_URL": self.openai.base_url,
            "WEBSOCKET_URI": self.hub.uri,
            "OPENWEATHER_BASE_URL": self.apis.base_url,
            "KMC_API_URL": self.apis.base_url,
        }

    async def on_loop(self, coro: Awaitable[T], timeout: float = 30) -> T:
        """Await a coroutine on the fakes' loop from the test's loop."""
        future = asyncio.run_coroutine_threadsafe(_as_coro(coro), self.loop.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    async def hub_final(self, channel: str, timeout: float = 20) -> list[dict[str, Any]]:
        return await self.on_loop(self.hub.wait_final(channel, timeout=timeout), timeout + 5)


async def _as_coro(awaitable: Awaitable[T]) -> T:
    return await awaitable


@pytest.fixture(scope="session")
def fakes() -> Iterator[Fakes]:
    loop = BackgroundLoop()
    loop.start()
    openai, hub, apis = FakeOpenAI(), RecordingHub(), FakeApis()
    loop.run(openai.start())
    loop.run(hub.start())
    loop.run(apis.start())
    try:
        yield Fakes(loop, openai, hub, apis)
    finally:
        loop.run(openai.stop())
        loop.run(hub.stop())
        loop.run(apis.stop())
        loop.stop()


@dataclass
class Stack:
    """One running service with its own RabbitMQ names, plus the fakes and a test client."""

    backend: str
    names: ServiceNames
    broker: Broker
    service: ServiceProcess
    fakes: Fakes

    def request(self, message: str, channel: str | None = None, **fields: Any) -> dict[str, Any]:
        """A valid request body on a fresh channel (a conversation of this backend)."""
        channel = channel or self.new_thread()
        body: dict[str, Any] = {"message": message, "channel": channel}
        body.update(fields)
        return body

    def new_thread(self) -> str:
        prefix = "conv" if self.backend == "responses" else "thread"
        return f"{prefix}_{ServiceNames.fresh('c').prefix}"

    def tool_outputs(self, thread_id: str) -> list[str]:
        """The tool outputs the service handed to the model on `thread_id`, in order."""
        found: list[str] = []
        for recorded in self.fakes.openai.requests:
            body = recorded.body if isinstance(recorded.body, dict) else {}
            conversation = body.get("conversation")
            if isinstance(conversation, dict):
                conversation = conversation.get("id")
            if conversation == thread_id or f"/threads/{thread_id}/" in recorded.path:
                found += [out.output for out in tool_outputs(body)]
        return found

    def missing_thread(self) -> str:
        prefix = "conv_missing" if self.backend == "responses" else "thread_missing"
        return f"{prefix}_{ServiceNames.fresh('c').prefix}"


def backend_env(backend: str) -> dict[str, str]:
    if backend == "assistants":
        return {"OPENAI_API": "assistants", "OPENAI_ASSISTANT_ID": "asst_test"}
    return {"OPENAI_API": "responses"}


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="module", params=BACKENDS)
async def stack(
    request: pytest.FixtureRequest, fakes: Fakes, log_dir: Path
) -> AsyncIterator[Stack]:
    """A service per backend per test module (the same tests run on both backends)."""
    backend: str = request.param
    async with start_stack(fakes, log_dir, backend) as stack:
        yield stack


def start_stack(fakes: Fakes, log_dir: Path, backend: str = "responses", **env: Any) -> Any:
    """A service (and the test's client) on the machine's broker, or on `RABBITMQ_URL=...`."""
    import contextlib

    @contextlib.asynccontextmanager
    async def _stack() -> AsyncIterator[Stack]:
        names = ServiceNames.fresh(backend[:4])
        broker = await Broker.open(names, env.get("RABBITMQ_URL", RABBITMQ_URL))
        try:
            environment = service_env(names, fakes.urls(), **backend_env(backend), **env)
            async with running_service(names, environment, log_dir, broker) as service:
                stack = Stack(backend, names, broker, service, fakes)
                try:
                    yield stack
                finally:
                    # A test may have replaced the process (restart after a kill).
                    stack.service.stop()
        finally:
            await broker.cleanup()

    return _stack()
