"""The FastStream application: broker, topology, subscriber, publishers and clients, wired once.

`faststream run service.app:app` runs it; `faststream docs gen service.app:app` documents it.
Importing this module reads settings but opens no connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from faststream import FastStream
from faststream.exceptions import StartupValidationError
from faststream.rabbit import Channel, RabbitBroker
from faststream.specification import AsyncAPI

from service.config import ConfigurationError, Settings, load_settings, redact_url
from service.handlers.chat import ProcessorRef, chat_router
from service.logs import configure_logging
from service.runtime import Runtime
from service.schemas import CompletedEvent, FailedEvent
from service.sinks.events import EventPublisher
from service.sinks.requeue import Requeuer
from service.topology import Topology

if TYPE_CHECKING:
    from faststream.rabbit.utils import RabbitClientProperties

log = logging.getLogger("service")

TITLE = "Assistant streaming service"
DESCRIPTION = """Takes chat requests from RabbitMQ, runs them through an OpenAI assistant with
tools, streams the answer token by token to a WebSocket hub channel, and publishes one
`completed` or `failed` event per request back onto RabbitMQ."""


def create_app(settings: Settings | None = None) -> FastStream:
    """Build the application from settings (read from settings.toml/.env/environment if None)."""
    settings = settings or load_settings()
    topology = Topology.from_settings(settings)
    broker = RabbitBroker(
        settings.rabbitmq_url.get_secret_value(),
        default_channel=Channel(prefetch_count=settings.max_concurrency),
        # Named, so operators (and the fault tests) can tell this connection apart.
        client_properties=cast(
            "RabbitClientProperties", {"name": f"assistant-service {settings.queue_name}"}
        ),
        graceful_timeout=settings.shutdown_grace,
        description=DESCRIPTION,
        specification_url=redact_url(settings.rabbitmq_url.get_secret_value()),
    )
    ref = ProcessorRef()
    broker.include_router(chat_router(topology, ref))
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

    async def declare_and_start() -> None:
        configure_logging(settings)
        log.info("starting with settings %s", settings.redacted())
        await broker.connect()
        # Declared before consuming starts, so a dead-lettered request always has a home.
        await broker.declare_exchange(topology.dead_letter_exchange)
        failed_queue = await broker.declare_queue(topology.failed_queue)
        await failed_queue.bind(
            topology.dead_letter_exchange.name, routing_key=topology.failed_queue.routing()
        )
        await broker.declare_exchange(topology.events_exchange)
        try:
            ref.processor = await runtime.start(
                EventPublisher(completed, failed, broker),
                Requeuer(broker, topology.requests_exchange, settings.routing_key),
            )
        except ConfigurationError as exc:
            # A clear line instead of a traceback: the message names the command to run.
            log.error("%s", exc)
            raise StartupValidationError() from None

    async def drain_runs() -> None:
        # Before FastStream stops the consumer: stop deliveries, requeue what has not
        # started, let runs finish within SHUTDOWN_GRACE, cancel the rest (each still gets
        # its final payload, final event and ack).
        if ref.processor is not None:
            await ref.processor.shutdown(settings.shutdown_grace)

    async def stop_clients() -> None:
        await runtime.stop()

    return FastStream(
        broker,
        on_startup=[declare_and_start],
        on_shutdown=[drain_runs],
        after_shutdown=[stop_clients],
        specification=AsyncAPI(
            title=TITLE, version="1.0.0", description=DESCRIPTION, schema_version="3.0.0"
        ),
    )


app = create_app()
