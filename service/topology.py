"""The RabbitMQ objects of contract §3, built from settings in one place."""

from __future__ import annotations

from dataclasses import dataclass

from faststream.rabbit import ExchangeType, RabbitExchange, RabbitQueue

from service.config import Settings

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

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            requests_exchange=RabbitExchange(
                settings.exchange_name, type=ExchangeType.DIRECT, durable=True
            ),
            requests_queue=RabbitQueue(
                settings.queue_name,
                durable=True,
                routing_key=settings.routing_key,
                arguments={
                    "x-dead-letter-exchange": settings.dead_letter_exchange,
                    "x-max-priority": MAX_PRIORITY,
                    "x-message-ttl": MESSAGE_TTL_MS,
                },
            ),
            dead_letter_exchange=RabbitExchange(
                settings.dead_letter_exchange, type=ExchangeType.DIRECT, durable=True
            ),
            failed_queue=RabbitQueue(
                settings.failed_queue, durable=True, routing_key=settings.routing_key
            ),
            events_exchange=RabbitExchange(
                settings.events_exchange_name, type=ExchangeType.TOPIC, durable=True
            ),
            completed_routing_key=f"{settings.routing_key}.completed",
            failed_routing_key=f"{settings.routing_key}.failed",
        )
