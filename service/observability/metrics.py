"""Prometheus metrics: FastStream's RabbitMQ middleware metrics plus the service's own.

Each app gets its own `CollectorRegistry` (not the process-global one), so a test can build
several apps in one process. Values that the runtime already keeps (requests in flight, hub
connection state, reconnects, send queue depth) are read when Prometheus scrapes, not copied.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from faststream.prometheus.manager import MetricsManager
from faststream.prometheus.types import ProcessingStatus
from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as render_registry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
APP_NAME = "assistant-streaming-service"

# Seconds. A first token usually arrives within a second or two; a run with tool round trips
# takes several; RUN_TIMEOUT (300 s by default) bounds both.
_FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60)
_RUN_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)
_TOOL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 15, 30)


class InFlight(Protocol):
    """The request processor, as the metrics see it."""

    @property
    def in_flight(self) -> int: ...


class HubState(Protocol):
    """The hub client, as the metrics see it (`service.sinks.hub.WebSocketHub`)."""

    @property
    def connected(self) -> bool: ...

    @property
    def reconnects(self) -> int: ...

    @property
    def queue_depth(self) -> int: ...


class RuntimeView(Protocol):
    """What the metrics read from `service.runtime.Runtime` at scrape time."""

    @property
    def processor(self) -> InFlight | None: ...

    @property
    def hub(self) -> HubState | None: ...


class ServiceMetrics:
    """The service's own instruments, and the registry FastStream's middleware writes to."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "assistant_requests_total",
            "Requests that ended, by the code of their final event: `completed`, or the error "
            "code of the `failed` event (invalid requests included).",
            ["code"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "assistant_time_to_first_token_seconds",
            "From the start of a run to the first text delta from the model.",
            buckets=_FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "assistant_run_duration_seconds",
            "From the start of a run to its end, tool round trips included, by outcome "
            "(`completed` or `failed`).",
            ["outcome"],
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self.tool_call_duration = Histogram(
            "assistant_tool_call_duration_seconds",
            "Duration of one tool call, by tool and outcome (`ok` or `error`).",
            ["tool", "outcome"],
            buckets=_TOOL_BUCKETS,
            registry=self.registry,
        )
        self.tokens_streamed = Counter(
            "assistant_tokens_streamed_total",
            "Text deltas streamed from the model to the hub (the model streams about one token "
            "per delta).",
            registry=self.registry,
        )
        self.model_tokens = Counter(
            "assistant_model_tokens_total",
            "Tokens the model reported using for completed runs, by kind (`input`, `output`).",
            ["kind"],
            registry=self.registry,
        )

        self.cancels = Counter(
            "assistant_cancels_total",
            "Cancel messages received by this process, by outcome: `cancelled` (it ended at "
            "least one request held here), `unmatched` (none held here: with several replicas "
            "every other replica counts one) or `malformed` (dropped).",
            ["outcome"],
            registry=self.registry,
        )

    def watch_runtime(self, runtime: RuntimeView) -> None:
        """Export the runtime's own counters and gauges (read at scrape time)."""
        self.registry.register(RuntimeCollector(runtime))

    def broker_middleware(self) -> RabbitPrometheusMiddleware:
        """FastStream's RabbitMQ metrics (`faststream_*`), in this registry."""
        middleware = RabbitPrometheusMiddleware(registry=self.registry, app_name=APP_NAME)
        # The same instruments count the shard deliveries of replica mode (`consumed`).
        self._faststream: MetricsManager | None = middleware._metrics_manager
        return middleware

    async def consumed(
        self, exchange: str, routing_key: str, body: bytes, work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `work` (one delivery taken outside FastStream's subscribers: the shard queues of
        replica mode) and count it in FastStream's `faststream_received_*` metrics, labelled
        as FastStream's own middleware labels a delivery (`<exchange or default>.<key>`)."""
        manager = getattr(self, "_faststream", None)
        if manager is None:
            await work()
            return
        labels = {"broker": "rabbitmq", "handler": f"{exchange or 'default'}.{routing_key}"}
        manager.add_received_message(**labels)
        manager.observe_received_messages_size(size=len(body), **labels)
        manager.add_received_message_in_process(**labels)
        status = ProcessingStatus.acked
        started = time.perf_counter()
        try:
            await work()
        except Exception as exc:
            status = ProcessingStatus.error
            manager.add_received_processed_message_exception(
                exception_type=type(exc).__name__, **labels
            )
            raise
        finally:
            manager.observe_received_processed_message_duration(
                duration=time.perf_counter() - started, **labels
            )
            manager.remove_received_message_in_process(**labels)
            manager.add_received_processed_message(status=status, **labels)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric in the registry."""
        return render_registry(self.registry)


class RuntimeCollector(Collector):
    """Requests in flight and the hub client's state, read from the runtime on each scrape."""

    def __init__(self, runtime: RuntimeView) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        processor, hub = self._runtime.processor, self._runtime.hub
        yield GaugeMetricFamily(
            "assistant_requests_in_flight",
            "Runs in progress (a request waiting for its conversation's turn is not "
            "counted yet); at most MAX_CONCURRENCY.",
            value=processor.in_flight if processor is not None else 0,
        )
        yield GaugeMetricFamily(
            "assistant_hub_connected",
            "1 while the WebSocket hub connection is open, else 0.",
            value=1 if hub is not None and hub.connected else 0,
        )
        yield CounterMetricFamily(
            "assistant_hub_reconnects",
            "Times the hub connection was re-established after it was lost.",
            value=hub.reconnects if hub is not None else 0,
        )
        yield GaugeMetricFamily(
            "assistant_hub_send_queue_depth",
            "Frames waiting to be written to the hub (bounded by HUB_BUFFER_SIZE).",
            value=hub.queue_depth if hub is not None else 0,
        )
