"""The FastStream application: broker, topology, subscriber, publishers and clients, wired once.

`faststream run service.app:app` runs it, with its HTTP endpoints (/healthz, /readyz, /metrics,
/docs/asyncapi) on HTTP_HOST:HTTP_PORT; `faststream docs gen service.app:app` documents it.
Importing this module reads settings but opens no connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from faststream.exceptions import StartupValidationError
from faststream.rabbit import Channel, RabbitBroker
from faststream.specification import AsyncAPI

from service.assistant.runner import Runner
from service.config import ConfigurationError, Settings, load_settings
from service.delivery import Deliveries
from service.handlers.answer import RequestAnswers, StreamingOptions
from service.handlers.chat import DeliveriesRef, chat_router
from service.logs import configure_logging
from service.observability import Observability
from service.observability.asyncapi import asyncapi_document
from service.observability.health import Readiness
from service.observability.http import http_routes
from service.observability.milestones import ObservedEventPublisher
from service.observability.server import HttpFastStream
from service.redaction import without_credentials
from service.runtime import Runtime
from service.schemas import CompletedEvent, FailedEvent
from service.topology import Topology

if TYPE_CHECKING:
    from faststream.rabbit.utils import RabbitClientProperties

log = logging.getLogger("service")

TITLE = "Assistant streaming service"
DESCRIPTION = """Takes chat requests from RabbitMQ, runs them through an OpenAI assistant with
tools, streams the answer token by token to a WebSocket hub channel, and publishes one
`completed` or `failed` event per request back onto RabbitMQ."""
SERVER_DESCRIPTION = "The RabbitMQ broker of RABBITMQ_URL (credentials not shown)."


def create_app(
    settings: Settings | None = None, observability: Observability | None = None
) -> HttpFastStream:
    """Build the application from settings (read from settings.toml/.env/environment if None)."""
    settings = settings or load_settings()
    observability = observability or Observability(settings)
    topology = Topology.from_settings(settings)
    broker = RabbitBroker(
        settings.rabbitmq_url.get_secret_value(),
        default_channel=Channel(prefetch_count=settings.max_concurrency),
        # Named, so operators (and the fault tests) can tell this connection apart.
        client_properties=cast(
            "RabbitClientProperties", {"name": f"assistant-service {settings.queue_name}"}
        ),
        # No wait inside FastStream's own stop: `drain_runs` (below) has ended every held
        # request by then, within SHUTDOWN_GRACE, and FastStream's wait would only hold up the
        # consumer's cancel (returned requests would bounce back to this process).
        graceful_timeout=None,
        middlewares=observability.broker_middlewares(),
        # A plain logger that propagates: FastStream's "Received"/"Processed" lines (with
        # exchange, queue and message_id as fields) go through the service's log handler.
        logger=logging.getLogger("faststream.access.rabbit"),
        description=SERVER_DESCRIPTION,
        specification_url=without_credentials(settings.rabbitmq_url.get_secret_value()),
    )
    ref = DeliveriesRef()
    router, requests_subscriber = chat_router(topology, ref)
    broker.include_router(router)
    completed = broker.publisher(
        exchange=topology.events_exchange,
        routing_key=topology.completed_routing_key,
        persist=True,
        mandatory=False,
        schema=CompletedEvent,
        title="chat-completed",
        description=CompletedEvent.__doc__,
    )
    failed = broker.publisher(
        exchange=topology.events_exchange,
        routing_key=topology.failed_routing_key,
        persist=True,
        mandatory=False,
        schema=FailedEvent,
        title="chat-failed",
        description=FailedEvent.__doc__,
    )
    runtime = Runtime(settings)
    observability.metrics.watch_runtime(runtime)
    readiness = Readiness(broker, runtime)

    async def declare_and_start() -> None:
        configure_logging(settings)
        log.info("starting with settings %s", settings.redacted())
        # Clients first: a setting that cannot work stops the service before it touches the
        # broker.
        try:
            await runtime.start()
        except ConfigurationError as exc:
            # A clear line instead of a traceback: the message names the command to run.
            log.error("%s", exc)
            raise StartupValidationError() from None
        await broker.connect()
        # Declared before consuming starts, so a dead-lettered request always has a home.
        await broker.declare_exchange(topology.dead_letter_exchange)
        failed_queue = await broker.declare_queue(topology.failed_queue)
        await failed_queue.bind(
            topology.dead_letter_exchange.name, routing_key=topology.failed_queue.routing()
        )
        await broker.declare_exchange(topology.events_exchange)
        assert runtime.backend is not None and runtime.hub is not None
        assert runtime.coordinator is not None
        answers = RequestAnswers(
            runner=Runner(runtime.backend, run_timeout=settings.run_timeout),
            hub=runtime.hub,
            observer=observability.telemetry,
            options=StreamingOptions(
                flush_ms=settings.delta_flush_ms,
                flush_chars=settings.delta_flush_chars,
                hub_send_timeout=settings.hub_send_timeout,
            ),
        )
        ref.deliveries = runtime.processor = Deliveries(
            answers=answers,
            events=ObservedEventPublisher(
                completed, failed, broker, telemetry=observability.telemetry
            ),
            coordinator=runtime.coordinator,
            max_deliveries=settings.max_deliveries,
            # Cancels the consumer on its current channel (also after a reconnect).
            stop_consuming=requests_subscriber.stop,
        )

    async def drain_runs() -> None:
        # Before FastStream stops the consumer: stop deliveries, requeue what has not
        # started, let runs finish within SHUTDOWN_GRACE, cancel the rest (each still gets
        # its final payload, final event and ack).
        if ref.deliveries is not None:
            await ref.deliveries.shutdown(settings.shutdown_grace)

    async def stop_clients() -> None:
        await runtime.stop()
        observability.shutdown()

    app = HttpFastStream(
        broker,
        http_host=settings.http_host,
        http_port=settings.http_port,
        on_startup=[declare_and_start],
        after_startup=[readiness.started],
        on_shutdown=[readiness.stopping, drain_runs],
        after_shutdown=[stop_clients],
        specification=AsyncAPI(
            title=TITLE, version="1.0.0", description=DESCRIPTION, schema_version="3.0.0"
        ),
    )
    routes = http_routes(
        readiness=readiness,
        metrics=observability.metrics,
        asyncapi=lambda: asyncapi_document(app),
    )
    for path, route in routes:
        app.mount(path, route)
    return app


app = create_app()
