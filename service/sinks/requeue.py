"""Republishing a request with a raised delivery count (bounded redelivery, see processor)."""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from faststream.rabbit import RabbitBroker, RabbitExchange


class Requeuer:
    """Puts a copy of a delivered request back on the requests exchange, persistent."""

    def __init__(self, broker: RabbitBroker, exchange: RabbitExchange, routing_key: str) -> None:
        self._broker = broker
        self._exchange = exchange
        self._routing_key = routing_key

    async def __call__(self, raw: AbstractIncomingMessage, headers: dict[str, Any]) -> None:
        await self._broker.publish(
            raw.body,
            exchange=self._exchange,
            routing_key=self._routing_key,
            persist=True,
            headers={**(raw.headers or {}), **headers},
            content_type=raw.content_type,
            message_id=raw.message_id,
            correlation_id=raw.correlation_id,
            reply_to=raw.reply_to,
            priority=raw.priority,
        )
