"""The long-lived clients of one service process, built from settings, started and stopped once.

Nothing here touches the network until `start()`: importing the app stays side-effect free.
What the clients are connected to (the delivery layer, the publishers) is wired in one place,
`service.app.create_app`.
"""

from __future__ import annotations

import gc
import itertools
import logging

import httpx2
from openai import AsyncOpenAI

from service.assistant.background import Reattacher
from service.assistant.responses import AssistantSpec, ResponsesBackend
from service.assistant.retry import RetryPolicy
from service.assistant.runner import Backend
from service.config import Settings
from service.coordination import Coordinator, coordinator_for
from service.coordination.reattach import reattach_store_for
from service.delivery import Deliveries
from service.model_http import AiohttpTransport
from service.sinks.hub import BufferedHub, hub_from_settings
from service.tools import ToolConfig, ToolRegistry

log = logging.getLogger("service")


def tool_config(settings: Settings) -> ToolConfig:
    return ToolConfig(
        openweather_api_key=settings.openweather_api_key.get_secret_value(),
        openweather_base_url=settings.openweather_base_url,
        kmc_api_url=settings.kmc_api_url,
        kmc_api_key=settings.kmc_api_key.get_secret_value(),
        timeout=settings.tool_timeout,
        max_output_chars=settings.tool_output_max_chars,
        enabled=settings.assistant_tools or None,
    )


def openai_client(settings: Settings, http: httpx2.AsyncClient | None = None) -> AsyncOpenAI:
    # Retries are ours (RetryPolicy): the SDK cannot retry a stream that failed midway.
    return AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value() or "missing-key",
        base_url=settings.openai_base_url or None,
        max_retries=0,
        http_client=http,
    )


# httpcore's pool scans every one of its connections whenever a request starts or a response
# is closed: with one pool, N concurrent streams cost O(N) per request, and at a few hundred
# streams that scan costs more than the streams. Pools of at most this many keep it flat.
STREAMS_PER_POOL = 64


def model_transport(max_concurrency: int, client: str = "httpx") -> httpx2.AsyncBaseTransport:
    """The transport of the model API client: aiohttp (OPENAI_HTTP_CLIENT, the default), or
    httpx2's with one connection pool, or several for many streams."""
    if client == "aiohttp":
        return AiohttpTransport()
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=max_concurrency * 2)
    pools = -(-max_concurrency // STREAMS_PER_POOL)
    if pools == 1:
        return httpx2.AsyncHTTPTransport(limits=limits)
    share = httpx2.Limits(max_connections=None, max_keepalive_connections=2 * STREAMS_PER_POOL)
    return PooledTransport([httpx2.AsyncHTTPTransport(limits=share) for _ in range(pools)])


class PooledTransport(httpx2.AsyncBaseTransport):
    """Spreads requests round-robin over several transports (each with its own pool)."""

    def __init__(self, transports: list[httpx2.AsyncHTTPTransport]) -> None:
        self._transports = transports
        self._next = itertools.cycle(transports)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._transports:
            await transport.aclose()


class Runtime:
    """Owns the HTTP client, the OpenAI client (the backend), the hub connection and the
    coordinator of one process; `processor` is the delivery layer the app wires to them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processor: Deliveries | None = None
        self.hub: BufferedHub | None = None
        self.coordinator: Coordinator | None = None
        self.backend: Backend | None = None
        self._http: httpx2.AsyncClient | None = None
        self._openai: AsyncOpenAI | None = None
        self.reattacher: Reattacher | None = None  # OPENAI_BACKGROUND (contract §12)

    async def start(self) -> None:
        s = self.settings
        self.coordinator = coordinator_for(s)
        await self.coordinator.open()
        limits = httpx2.Limits(
            max_connections=None, max_keepalive_connections=s.max_concurrency * 2
        )
        self._http = httpx2.AsyncClient(
            limits=limits, timeout=httpx2.Timeout(s.tool_timeout, connect=5.0)
        )
        self._openai = openai_client(
            s,
            httpx2.AsyncClient(
                transport=model_transport(s.max_concurrency, s.openai_http_client),
                timeout=httpx2.Timeout(s.run_timeout, connect=10.0, read=s.stream_idle_timeout),
            ),
        )
        toolbox = ToolRegistry.from_config(tool_config(s), self._http)
        self.backend = self._backend(toolbox)
        self.hub = hub_from_settings(s)
        await self.hub.start(connect_timeout=2.0)
        # Everything built so far lives as long as the process: keep it out of the collector's
        # sight, or full collections walking it cost 100-150 ms pauses under load (bench (a)).
        gc.freeze()
        if s.openai_background and s.openai_api == "responses":
            # Contract §12: each request's re-attach state, where every replica can read it.
            self.reattacher = Reattacher(reattach_store_for(s), self._openai)

    def _backend(self, toolbox: ToolRegistry) -> Backend:
        s = self.settings
        assert self._openai is not None
        retry = RetryPolicy(attempts=s.openai_max_attempts, backoff=s.openai_retry_backoff)
        spec = AssistantSpec(
            name=s.assistant_name, model=s.openai_model, instructions=s.assistant_instructions
        )
        if s.openai_api == "assistants":
            from service.assistant.assistants import AssistantsBackend

            return AssistantsBackend(
                self._openai,
                assistant_id=s.openai_assistant_id,
                toolbox=toolbox,
                retry=retry,
                idle_timeout=s.stream_idle_timeout,
                stale_after=s.run_timeout,
            )
        return ResponsesBackend(
            self._openai,
            spec,
            toolbox,
            retry=retry,
            idle_timeout=s.stream_idle_timeout,
            background=s.openai_background,
        )

    async def stop(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.close()
        if self.hub is not None:
            await self.hub.close(flush_timeout=self.settings.hub_send_timeout)
        if self.reattacher is not None:
            await self.reattacher.close()
        if self._openai is not None:
            await self._openai.close()
        if self._http is not None:
            await self._http.aclose()
