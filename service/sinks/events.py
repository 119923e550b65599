"""RabbitMQ events sink: the one final `completed`/`failed` event of each request.

Events are persistent JSON on the events topic exchange; a request with AMQP `reply_to` also
gets a copy of its final event there, with its `correlation_id`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from faststream.rabbit import RabbitBroker
from faststream.rabbit.publisher import RabbitPublisher
from pydantic import BaseModel

from service.schemas import CompletedEvent, FailedEvent

log = logging.getLogger("service.events")


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where a copy of the final event goes, from the request's AMQP properties."""

    queue: str
    correlation_id: str | None


class EventPublisher:
    """Publishes final events; wired with the two documented FastStream publishers."""

    def __init__(
        self, completed: RabbitPublisher, failed: RabbitPublisher, broker: RabbitBroker
    ) -> None:
        self._completed = completed
        self._failed = failed
        self._broker = broker

    async def publish_completed(self, event: CompletedEvent, reply: ReplyTo | None = None) -> None:
        await self._publish(self._completed, event, reply)

    async def publish_failed(self, event: FailedEvent, reply: ReplyTo | None = None) -> None:
        await self._publish(self._failed, event, reply)

    async def _publish(
        self, publisher: RabbitPublisher, event: BaseModel, reply: ReplyTo | None
    ) -> None:
        body = event.model_dump_json().encode()
        await publisher.publish(
            body,
            content_type="application/json",
            message_id=getattr(event, "message_id", None),
            correlation_id=reply.correlation_id if reply and reply.correlation_id else None,
        )
        if reply is not None:
            await self._broker.publish(
                body,
                routing_key=reply.queue,
                persist=True,
                mandatory=False,
                content_type="application/json",
                correlation_id=reply.correlation_id,
            )
