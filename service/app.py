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
from pydantic import SecretStr

from service.assistant.runner import Runner
from service.config import ConfigurationError, Settings, load_settings
from service.control.registry import CancelControl
from service.delivery import Deliveries, HeldState
from service.errors import ServiceError
from service.handlers.answer import RequestAnswers, StreamingOptions
from service.handlers.cancel import CancelFeed
from service.handlers.chat import DeliveriesRef, chat_router
from service.handlers.validation import parse_request, readable_fields
from service.logs import configure_logging
from service.observability import Observability
from service.observability.asyncapi import asyncapi_document
from service.observability.health import Readiness
from service.observability.http import http_routes
from service.observability.milestones import ObservedEventPublisher
from service.observability.server import HttpFastStream
from service.redaction import without_credentials
from service.runtime import Runtime
from service.schemas import CompletedEvent, FailedEvent, OnBusy
from service.sharding.replicas import ReplicaSet, is_redelivered, mark_redelivered, replica_id
from service.topology import Topology
from service.web import check_web_chat, web_routes

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage
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
    member = replica_id() if settings.redis_url.get_secret_value() else None
    connection_name = f"assistant-service {settings.queue_name}" + (f" {member}" if member else "")
    broker = RabbitBroker(
        settings.rabbitmq_url.get_secret_value(),
        default_channel=Channel(prefetch_count=settings.max_concurrency),
        # Named, so operators (and the fault tests) can tell this connection apart.
        client_properties=cast("RabbitClientProperties", {"name": connection_name}),
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
    # Replicas (REDIS_URL): QUEUE_NAME is consumed by the replica set's router instead.
    replicas = replica_set(settings, ref, member, observability)
    if replicas is None:
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
    cancels = CancelFeed(
        broker,
        topology.requests_exchange,
        queue_name=settings.queue_name,
        routing_key=topology.cancel_routing_key,
        control=lambda: ref.control or _not_started(),
        count=lambda outcome: observability.metrics.cancels.labels(outcome.value).inc(),
    )
    observability.metrics.watch_runtime(runtime)
    readiness = Readiness(
        broker, runtime, consumers=replicas.converged if replicas is not None else None
    )

    async def declare_and_start() -> None:
        configure_logging(settings)
        log.info("starting with settings %s", settings.redacted())
        # Clients first: a setting that cannot work stops the service before it touches the
        # broker.
        try:
            check_web_chat(settings)  # WEB_CHAT off loopback needs WEB_CHAT_TOKEN
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
            reattacher=runtime.reattacher,
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
            stop_consuming=requests_subscriber.stop if replicas is None else replicas.stop_taking,
        )
        # Stop and double texting (§8): cancels from this process's own queue, on_busy.
        ref.control = answers.control = CancelControl(
            ref.deliveries, on_busy=OnBusy(settings.on_busy), broadcast=cancels.interrupt
        )
        await cancels.start()
        if replicas is not None:
            await replicas.start()

    async def drain_runs() -> None:
        # Before FastStream stops the consumer: stop deliveries, requeue what has not
        # started, let runs finish within SHUTDOWN_GRACE, cancel the rest (each still gets
        # its final payload, final event and ack).
        if ref.deliveries is not None:
            await ref.deliveries.shutdown(settings.shutdown_grace)
        if replicas is not None:
            await replicas.close()

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
    # Replica mode consumes QUEUE_NAME outside FastStream, so FastStream's document would lack
    # the request channel: serve the document of the same app without REDIS_URL (as `make
    # docs` generates it; the shard channel is added to both).
    documented = (
        app
        if replicas is None
        else create_app(
            settings.model_copy(update={"redis_url": SecretStr(""), "tracing_enabled": False})
        )
    )
    routes = http_routes(
        readiness=readiness,
        metrics=observability.metrics,
        asyncapi=lambda: asyncapi_document(documented),
    )
    for path, route in routes:
        app.mount(path, route)
    if settings.web_chat:  # contract §10: the chat page and its two POST routes
        for path, web_route in web_routes(settings, broker, topology):
            app.mount(path, web_route)
    return app


def replica_set(
    settings: Settings, ref: DeliveriesRef, member: str | None, observability: Observability
) -> ReplicaSet | None:
    """REDIS_URL set: the router and shard consumers of README "Running replicas"."""
    if not settings.redis_url.get_secret_value():
        return None

    async def reject(raw: AbstractIncomingMessage, error: ServiceError) -> None:
        fields = readable_fields(raw.body)
        await ref.get().reject_invalid(
            raw,
            error,
            message_id=fields.get("message_id"),
            channel=fields.get("channel"),
            thread_id=fields.get("thread_id") or fields.get("channel"),
        )

    async def validate(raw: AbstractIncomingMessage) -> tuple[str, str] | None:
        try:
            request = parse_request(raw.body, raw.content_type)
        except ServiceError as error:
            await reject(raw, error)
            return None
        return request.message_id or raw.message_id or "", request.conversation_id

    async def deliver(raw: AbstractIncomingMessage) -> None:
        # Counted like a FastStream delivery (received, processed, duration) in /metrics.
        await observability.metrics.consumed(
            raw.exchange or "", raw.routing_key or "", raw.body, lambda: take(raw)
        )

    async def take(raw: AbstractIncomingMessage) -> None:
        # Called in delivery order; `arrive` reserves the turn before the first await.
        if is_redelivered(raw):
            mark_redelivered(raw)
        try:
            request = parse_request(raw.body, raw.content_type)
        except ServiceError as error:
            await reject(raw, error)
            return
        deliveries = ref.get()
        deliveries.arrive(request, raw)
        if ref.control is not None:  # on_busy (§8), before the request waits or runs
            await ref.control.arrived(raw)
        await deliveries.settle(raw)

    def waiting() -> bool:
        deliveries = ref.deliveries
        return deliveries is not None and any(
            held.state is HeldState.WAITING for held in deliveries.held
        )

    return ReplicaSet(settings, deliver=deliver, validate=validate, member=member, waiting=waiting)


app = create_app()


def _not_started() -> CancelControl:
    raise RuntimeError("the service is not started")
