"""The RabbitMQ objects of contract §3, built from settings in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

from service.config import Settings

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs, QuorumQueueArgs

MAX_PRIORITY = 10
MESSAGE_TTL_MS = 3_600_000


@dataclass(frozen=True)
class Topology:
    """Exchanges and queues the service declares (idempotently) at start."""

    requests_exchange: RabbitExchange
    requests_queue: RabbitQueue
    dead_letter_exchange: RabbitExchange
    failed_queue: RabbitQueue
    events_exchange: RabbitExchange
    completed_routing_key: str
    failed_routing_key: str
    cancel_routing_key: str
    """Cancels (§8) on the requests exchange; each process binds its own queue with it."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        quorum = settings.queue_type == "quorum"
        return cls(
            requests_exchange=RabbitExchange(
                settings.exchange_name, type=ExchangeType.DIRECT, durable=True
            ),
            requests_queue=_queue(
                settings.queue_name,
                quorum=quorum,
                routing_key=settings.routing_key,
                arguments=request_queue_arguments(settings),
            ),
            dead_letter_exchange=RabbitExchange(
                settings.dead_letter_exchange, type=ExchangeType.DIRECT, durable=True
            ),
            failed_queue=_queue(
                settings.failed_queue, quorum=quorum, routing_key=settings.routing_key
            ),
            events_exchange=RabbitExchange(
                settings.events_exchange_name, type=ExchangeType.TOPIC, durable=True
            ),
            completed_routing_key=f"{settings.routing_key}.completed",
            failed_routing_key=f"{settings.routing_key}.failed",
            cancel_routing_key=f"{settings.routing_key}.cancel",
        )


QUORUM = {"x-queue-type": "quorum"}


def _queue(
    name: str, *, quorum: bool, routing_key: str, arguments: dict[str, Any] | None = None
) -> RabbitQueue:
    """A durable queue, quorum when QUEUE_TYPE=quorum (FastStream adds `x-queue-type`)."""
    extra = {k: v for k, v in (arguments or {}).items() if k != "x-queue-type"}
    if quorum:
        return RabbitQueue(
            name,
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key=routing_key,
            arguments=cast("QuorumQueueArgs", extra),
        )
    return RabbitQueue(
        name, durable=True, routing_key=routing_key, arguments=cast("ClassicQueueArgs", extra)
    )


def request_queue_arguments(settings: Settings) -> dict[str, Any]:
    """Arguments of QUEUE_NAME (§3); quorum queues have no priorities (QUEUE_TYPE=quorum)."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": settings.dead_letter_exchange,
        "x-max-priority": MAX_PRIORITY,
        "x-message-ttl": MESSAGE_TTL_MS,
    }
    if settings.queue_type == "quorum":
        del arguments["x-max-priority"]
        arguments |= QUORUM
    return arguments


def shard_queue_arguments(settings: Settings) -> dict[str, Any]:
    """Arguments of a shard queue `<QUEUE_NAME>.shard.<k>` (replicas, README "Running
    replicas"): those of QUEUE_NAME, one active consumer at a time, and dead letters routed
    with ROUTING_KEY so that they land in `<QUEUE_NAME>_failed` like the ingress's."""
    return request_queue_arguments(settings) | {
        "x-single-active-consumer": True,
        "x-dead-letter-routing-key": settings.routing_key,
    }
