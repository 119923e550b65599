"""The long-lived clients of one service process, built from settings, started and stopped once.

Nothing here touches the network until `start()`: importing the app stays side-effect free.
"""

from __future__ import annotations

import gc
import itertools
import logging
from collections.abc import Awaitable, Callable

import httpx2
from openai import AsyncOpenAI

from service.assistant.responses import AssistantSpec, ResponsesBackend
from service.assistant.retry import RetryPolicy
from service.assistant.runner import Backend, Runner
from service.config import Settings
from service.coordination import Coordinator, coordinator_for
from service.delivery import Deliveries
from service.delivery.desk import FinalEvents
from service.handlers.answer import RequestAnswers, StreamingOptions
from service.observability.milestones import RunObserver
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


def model_transport(max_concurrency: int) -> httpx2.AsyncBaseTransport:
    """The transport of the model API client: one connection pool, or several for many streams."""
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
    """Owns the HTTP client, the OpenAI client, the hub connection, the coordinator and the
    delivery layer of one process."""

    def __init__(self, settings: Settings, observer: RunObserver | None = None) -> None:
        self.settings = settings
        self.observer = observer
        self.processor: Deliveries | None = None
        self.hub: BufferedHub | None = None
        self.coordinator: Coordinator | None = None
        self._http: httpx2.AsyncClient | None = None
        self._openai: AsyncOpenAI | None = None

    async def start(
        self, events: FinalEvents, stop_consuming: Callable[[], Awaitable[None]]
    ) -> Deliveries:
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
                transport=model_transport(s.max_concurrency),
                timeout=httpx2.Timeout(s.run_timeout, connect=10.0, read=s.stream_idle_timeout),
            ),
        )
        toolbox = ToolRegistry.from_config(tool_config(s), self._http)
        backend = self._backend(toolbox)
        self.hub = hub_from_settings(s)
        await self.hub.start(connect_timeout=2.0)
        # Everything built so far lives as long as the process: keep it out of the collector's
        # sight, or full collections walking it cost 100-150 ms pauses under load (bench (a)).
        gc.freeze()
        answers = RequestAnswers(
            runner=Runner(backend, run_timeout=s.run_timeout),
            hub=self.hub,
            observer=self.observer,
            options=StreamingOptions(
                flush_ms=s.delta_flush_ms,
                flush_chars=s.delta_flush_chars,
                hub_send_timeout=s.hub_send_timeout,
            ),
        )
        self.processor = Deliveries(
            answers=answers,
            events=events,
            coordinator=self.coordinator,
            max_deliveries=s.max_deliveries,
            stop_consuming=stop_consuming,
        )
        return self.processor

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
            self._openai, spec, toolbox, retry=retry, idle_timeout=s.stream_idle_timeout
        )

    async def stop(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.close()
        if self.hub is not None:
            await self.hub.close(flush_timeout=self.settings.hub_send_timeout)
        if self._openai is not None:
            await self._openai.close()
        if self._http is not None:
            await self._http.aclose()
