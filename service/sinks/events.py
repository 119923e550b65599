"""RabbitMQ events sink: the one final `completed`/`failed` event of each request.

Events are persistent JSON on the events topic exchange; a request with AMQP `reply_to` also
gets a copy of its final event there, with its `correlation_id`. The copy is a separate call
(`publish_reply`), so a failed copy is retried on its own and never republishes the event.
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
        """The event on the events exchange (with the request's correlation_id, if any)."""
        await self._publish(self._completed, event, reply)

    async def publish_failed(self, event: FailedEvent, reply: ReplyTo | None = None) -> None:
        await self._publish(self._failed, event, reply)

    async def publish_reply(self, event: CompletedEvent | FailedEvent, reply: ReplyTo) -> None:
        """The copy of a final event for the request's `reply_to` queue."""
        await self._broker.publish(
            event.model_dump_json().encode(),
            routing_key=reply.queue,
            persist=True,
            mandatory=False,
            content_type="application/json",
            correlation_id=reply.correlation_id,
        )

    async def _publish(
        self, publisher: RabbitPublisher, event: BaseModel, reply: ReplyTo | None
    ) -> None:
        await publisher.publish(
            event.model_dump_json().encode(),
            content_type="application/json",
            message_id=getattr(event, "message_id", None),
            correlation_id=reply.correlation_id if reply and reply.correlation_id else None,
        )
