"""The cancel subscriber: a cancel message → the held requests it matches end as cancelled.

Cancels are published by upstream to `EXCHANGE_NAME` with `<ROUTING_KEY>.cancel` and must reach
whichever replica holds the request, so every process consumes them from its own queue (see
`CancelFeed`). A malformed cancel (not UTF-8 JSON, not an object, wrong types, neither field,
a valid field beside an invalid one) is logged, counted and dropped; it never cancels anything.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from faststream.rabbit import RabbitBroker, RabbitExchange, RabbitQueue
from pydantic import ValidationError

from service.schemas import CancelRequest

log = logging.getLogger("service.cancel")


class Cancels(Protocol):
    """Where cancels go (`service.control.registry.CancelControl`)."""

    async def cancel(self, request: CancelRequest) -> Sequence[object]:
        """End the held requests the cancel matches; those it ended."""

    async def interrupt(self, conversation_id: str, *, by: str, erase: bool) -> None:
        """End the conversation's held requests but `by` (another replica's double texting)."""


class CancelOutcome(StrEnum):
    """The `outcome` label of `assistant_cancels_total`."""

    CANCELLED = "cancelled"
    UNMATCHED = "unmatched"
    MALFORMED = "malformed"


async def handle_cancel(body: bytes, control: Cancels) -> CancelOutcome:
    """Validate one cancel message and apply it to the requests this process holds."""
    try:
        request = CancelRequest.model_validate_json(body)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg'][:100]}"
            for e in exc.errors(include_url=False, include_input=False)[:3]
        )
        log.warning("malformed cancel dropped (%d bytes): %s", len(body), reasons)
        return CancelOutcome.MALFORMED
    if not await control.cancel(request):
        log.info("cancel matched no request here: message_id=%s channel=%s",
                 request.message_id, request.channel)  # fmt: skip
        return CancelOutcome.UNMATCHED
    return CancelOutcome.CANCELLED


def cancel_queue_name(queue_name: str) -> str:
    """This process's own cancel queue: unique, so every replica gets its own copy."""
    return f"{queue_name}.cancel.{uuid.uuid4().hex[:12]}"


INTERRUPT_HEADER = "x-service-interrupt"
"""Marks the service's own interrupt broadcast on the cancel routing key (not a §8 cancel)."""


class CancelFeed:
    """Consumes `<ROUTING_KEY>.cancel` from `EXCHANGE_NAME` through this process's own queue.

    The queue is exclusive and auto-delete (it lives as long as this process's connection; the
    robust connection declares and binds it again after a reconnect) and bound to the direct
    requests exchange with `<ROUTING_KEY>.cancel`: the exchange copies each cancel to every
    bound queue, so every replica sees every cancel. Consumed without acks: a cancel is only
    useful now. The same queues carry the service's own interrupt broadcasts (`interrupt`),
    so double texting ends a conversation's requests on every replica.
    """

    def __init__(
        self,
        broker: RabbitBroker,
        exchange: RabbitExchange,
        *,
        queue_name: str,
        routing_key: str,
        control: Callable[[], Cancels],
        count: Callable[[CancelOutcome], None],
    ) -> None:
        self._broker = broker
        self._exchange = exchange
        self._queue = RabbitQueue(
            cancel_queue_name(queue_name), exclusive=True, auto_delete=True, durable=False
        )
        self._routing_key = routing_key
        self._control = control
        self._count = count
        self._publisher: aio_pika.abc.AbstractExchange | None = None

    @property
    def queue_name(self) -> str:
        return self._queue.name

    async def start(self) -> None:
        exchange = await self._broker.declare_exchange(self._exchange)
        queue = await self._broker.declare_queue(self._queue)
        await queue.bind(exchange, routing_key=self._routing_key)
        await queue.consume(self._on_message, no_ack=True)
        self._publisher = exchange
        log.info("cancel queue %s bound with %s", self._queue.name, self._routing_key)

    async def interrupt(self, conversation_id: str, *, by: str, erase: bool) -> None:
        """Tell every replica to end the conversation's requests except `by` (on_busy)."""
        if self._publisher is None:
            return
        body = json.dumps(
            {
                "conversation_id": conversation_id,
                "by": by,
                "erase": erase,
                "origin": self.queue_name,
            }
        )
        await self._publisher.publish(
            aio_pika.Message(
                body.encode(), content_type="application/json", headers={INTERRUPT_HEADER: 1}
            ),
            routing_key=self._routing_key,
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if (message.headers or {}).get(INTERRUPT_HEADER):
            await self._on_interrupt(message.body)
            return
        try:
            outcome = await handle_cancel(message.body, self._control())
        except Exception:  # never let one message stop the consumer
            log.exception("cancel message could not be handled")
            outcome = CancelOutcome.MALFORMED
        self._count(outcome)

    async def _on_interrupt(self, body: bytes) -> None:
        try:
            data = json.loads(body)
            if data.get("origin") == self.queue_name:
                return  # this process interrupted its own requests already
            conversation_id, by = str(data["conversation_id"]), str(data["by"])
            await self._control().interrupt(conversation_id, by=by, erase=bool(data["erase"]))
        except Exception:
            log.exception("interrupt broadcast could not be handled")
