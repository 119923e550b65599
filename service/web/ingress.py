"""The ingress routes: a chat request or a cancel, validated like the subscriber, published as
upstream would publish it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiormq.exceptions import AMQPError
from faststream.rabbit import RabbitBroker, RabbitExchange
from pydantic import ValidationError

from service.schemas import CancelRequest, ChatRequest

log = logging.getLogger("service")


PUBLISH_PATIENCE = 10.0
"""Seconds a publish waits for the broker connection to come back (it reconnects by itself)."""


class InvalidBody(ValueError):
    """The body is not a valid request; the message says why (safe to show)."""


class BrokerUnavailable(RuntimeError):
    """RabbitMQ could not take the message within PUBLISH_PATIENCE."""


@dataclass(frozen=True)
class Accepted:
    """A published chat request."""

    message_id: str
    channel: str


class Ingress:
    """Publishes to the requests exchange: chat requests with ROUTING_KEY, cancels with
    `<ROUTING_KEY>.cancel`. Persistent and JSON, like an upstream service's publish."""

    def __init__(self, broker: RabbitBroker, exchange: RabbitExchange, routing_key: str) -> None:
        self._broker = broker
        self._exchange = exchange
        self._routing_key = routing_key
        self._cancel_routing_key = f"{routing_key}.cancel"

    async def request(self, body: bytes) -> Accepted:
        """Validate with `ChatRequest` (as the subscriber does), set a message_id when it has
        none, publish; raises `InvalidBody` without publishing anything."""
        try:
            request = ChatRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidBody(describe(exc)) from None
        data: dict[str, Any] = json.loads(body)
        message_id = request.message_id or f"web-{uuid.uuid4().hex}"
        data["message_id"] = message_id
        await self._publish(data, self._routing_key, message_id)
        log.info("web chat: published request message_id=%s", message_id)
        return Accepted(message_id, request.channel)

    async def cancel(self, body: bytes) -> CancelRequest:
        """Validate with `CancelRequest`, publish; raises `InvalidBody` without publishing."""
        try:
            cancel = CancelRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidBody(describe(exc, "Invalid cancel")) from None
        await self._publish(json.loads(body), self._cancel_routing_key, None)
        log.info(
            "web chat: published cancel message_id=%s channel=%s", cancel.message_id, cancel.channel
        )
        return cancel

    async def _publish(
        self, data: dict[str, Any], routing_key: str, message_id: str | None
    ) -> None:
        body = json.dumps(data, ensure_ascii=False).encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PUBLISH_PATIENCE
        while True:
            try:
                await self._broker.publish(
                    body,
                    exchange=self._exchange,
                    routing_key=routing_key,
                    persist=True,
                    mandatory=False,
                    content_type="application/json",
                    message_id=message_id,
                )
                return
            # A closed channel (RuntimeError) or connection while the robust connection
            # comes back: try again until the deadline, as a patient upstream would.
            except (AMQPError, ConnectionError, RuntimeError) as exc:
                if loop.time() >= deadline:
                    log.warning("web chat: could not publish: %s", type(exc).__name__)
                    raise BrokerUnavailable() from exc
                await asyncio.sleep(0.25)


def describe(exc: ValidationError, what: str = "Invalid request") -> str:
    """`Invalid request: message: String should have at least 1 character`: what the
    subscriber's failed event would say, for the 422 body."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where[:80]}: {error['msg'][:200]}")
    text = f"{what}: " + "; ".join(parts)
    return text.encode("utf-8", "replace").decode("utf-8")
