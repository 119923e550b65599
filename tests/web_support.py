"""Shared by the web chat tests: services with WEB_CHAT=true, a tap on the requests exchange,
and headless Chromium (Debian's, through Playwright).

Fixtures are session-scoped so the HTTP tests and the browser tests share one service per
configuration; import them into a test module to use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx2
import pytest
from aio_pika.abc import AbstractIncomingMessage

from tests.conftest import Fakes, Stack, start_stack
from tests.fakes.hub import RecordingHub
from tests.harness import RABBITMQ_URL, ServiceNames

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WEB_TOKEN = "web-chat-TOKEN-5d1e8b0c7a"
NCHAN_TOKEN = "nchan-publisher-TOKEN-91c2"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def outside_address() -> tuple[str, str]:
    """(HTTP_HOST, host to connect to) for a service that is not on loopback: it listens on
    every interface (0.0.0.0 is not a loopback address, so the token is required) and the
    tests reach it through 127.0.0.1, so no test traffic ever leaves loopback."""
    return "0.0.0.0", "127.0.0.1"


@dataclass
class WebService:
    """A running service with the web chat, its base URL and its RabbitMQ names."""

    stack: Stack
    base_url: str

    @property
    def names(self) -> ServiceNames:
        return self.stack.names

    def client(self, token: str | None = None) -> httpx2.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx2.AsyncClient(base_url=self.base_url, headers=headers, timeout=10)


@contextlib.asynccontextmanager
async def web_service(fakes: Fakes, log_dir: Path, host: str = "127.0.0.1", **env: Any) -> Any:
    bind, connect = (host, host) if host != "outside" else outside_address()
    port = free_port(bind if bind != "0.0.0.0" else "127.0.0.1")
    async with start_stack(
        fakes, log_dir, "responses", WEB_CHAT="true", HTTP_HOST=bind, HTTP_PORT=port, **env
    ) as stack:
        service = WebService(stack, f"http://{connect}:{port}")
        await _wait_http(service)
        yield service


async def _wait_http(service: WebService, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with httpx2.AsyncClient(base_url=service.base_url, timeout=2) as client:
        while True:
            with contextlib.suppress(httpx2.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError("no HTTP server:\n" + service.stack.service.log_text()[-3000:])
            await asyncio.sleep(0.1)


@pytest.fixture(scope="session")
async def web(fakes: Fakes, log_dir: Path) -> AsyncIterator[WebService]:
    """WEB_CHAT=true on loopback, the development hub (envelope protocol)."""
    async with web_service(fakes, log_dir) as service:
        yield service


@pytest.fixture(scope="session")
async def guarded_web(fakes: Fakes, log_dir: Path) -> AsyncIterator[WebService]:
    """WEB_CHAT=true off loopback, with WEB_CHAT_TOKEN, and a hub on the same address: a
    browser does not let a page from a network address reach a loopback one (Chromium's
    Local Network Access checks), so a real deployment serves both on one address space."""
    _, address = outside_address()
    hub = RecordingHub()
    await fakes.on_loop(hub.start(address))
    try:
        async with web_service(
            fakes, log_dir, host="outside", WEB_CHAT_TOKEN=WEB_TOKEN, WEBSOCKET_URI=hub.uri
        ) as service:
            yield service
    finally:
        await fakes.on_loop(hub.stop())


@pytest.fixture(scope="session")
async def nchan_web(fakes: Fakes, log_dir: Path) -> AsyncIterator[WebService]:
    """WEB_CHAT=true on loopback with the nchan hub the project ships, compact payloads."""
    from tests.nchan import NchanHub

    hub = NchanHub.start(token=NCHAN_TOKEN)
    try:
        async with web_service(
            fakes,
            log_dir,
            HUB_PROTOCOL="nchan",
            HUB_PAYLOAD_MODE="compact",
            WEBSOCKET_URI=hub.publish_url,
            WEBSOCKET_TOKEN=NCHAN_TOKEN,
            HUB_PUBLIC_URL=hub.subscribe_url,
        ) as service:
            yield service
    finally:
        hub.stop()


@dataclass
class RequestTap:
    """A queue of our own on the requests exchange: a copy of every chat request and cancel
    published there, with its AMQP properties."""

    names: ServiceNames
    connection: aio_pika.abc.AbstractRobustConnection
    messages: list[AbstractIncomingMessage] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    @contextlib.asynccontextmanager
    async def on(cls, names: ServiceNames) -> AsyncIterator[RequestTap]:
        connection = await aio_pika.connect_robust(RABBITMQ_URL)
        tap = cls(names, connection)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            for key in (names.routing_key, f"{names.routing_key}.cancel"):
                await queue.bind(names.exchange, routing_key=key)
            await queue.consume(tap._on_message, no_ack=True)
            yield tap
        finally:
            await connection.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)
        self._arrived.set()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.messages]

    async def wait_for(self, predicate: Any, timeout: float = 10) -> AbstractIncomingMessage:
        """The first tapped message whose JSON body satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if predicate(json.loads(message.body)):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"nothing matching arrived; got {self.bodies()}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.2)):
                    await self._arrived.wait()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium, headless (`make test` installs it; Playwright's download is not used)."""
    from playwright.async_api import async_playwright

    assert shutil.which(CHROMIUM), (
        "Chromium is missing: `make test` installs it (apt-get install chromium)"
    )
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
