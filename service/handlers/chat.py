"""The chat-request subscriber: validated message → the delivery layer → final event → ack."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from faststream import BaseMiddleware, ContextRepo
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy
from faststream.rabbit import RabbitMessage, RabbitRouter
from faststream.rabbit.subscriber import RabbitSubscriber

from service.control.registry import CancelControl
from service.delivery import Deliveries
from service.errors import ServiceError
from service.handlers.validation import parse_request, readable_fields
from service.schemas import ChatRequest
from service.topology import Topology


class DeliveriesRef:
    """The delivery layer, set at start-up (the router is declared before any client exists)."""

    def __init__(self) -> None:
        self.deliveries: Deliveries | None = None
        self.control: CancelControl | None = None

    def get(self) -> Deliveries:
        if self.deliveries is None:
            raise RuntimeError("the service is not started")
        return self.deliveries


def chat_router(topology: Topology, ref: DeliveriesRef) -> tuple[RabbitRouter, RabbitSubscriber]:
    """The router holding the one chat-request subscriber, with its delivery gate."""

    class DeliveryGate(BaseMiddleware):
        """Validates each delivery and hands it to the delivery layer in its constructor:
        FastStream builds every middleware of a message before its first await, so the
        conversation turn is reserved in the order the broker delivered the requests.
        Invalid requests never reach the handler: failed event, hub error, dead-letter."""

        def __init__(self, msg: Any, /, *, context: ContextRepo) -> None:
            super().__init__(msg, context=context)
            self.invalid: ServiceError | None = None
            if not isinstance(msg, AbstractIncomingMessage):
                return
            try:
                request = parse_request(msg.body, msg.content_type)
            except ServiceError as error:
                self.invalid = error
                return
            ref.get().arrive(request, msg)

        async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
            if self.invalid is not None:
                raw = msg.raw_message
                fields = readable_fields(raw.body)
                await ref.get().reject_invalid(
                    raw,
                    self.invalid,
                    message_id=fields.get("message_id"),
                    channel=fields.get("channel"),
                    thread_id=fields.get("thread_id") or fields.get("channel"),
                )
                return None
            # Settled here, not through `call_next`: the handler below would decode and
            # validate the body a second time, and FastStream resolves its `RabbitMessage`
            # parameter in a worker thread (a sync context lookup, `anyio.to_thread`) for every
            # message: 46 % of a request's intake (bench burst). The handler still declares the
            # subscriber and documents its payload (AsyncAPI).
            await _settle(ref, msg.raw_message)
            return None

        async def after_processed(
            self,
            exc_type: type[BaseException] | None = None,
            exc_val: BaseException | None = None,
            exc_tb: TracebackType | None = None,
        ) -> bool | None:
            # Whatever stopped the handler from being called, the delivery still ends once.
            if isinstance(self.msg, AbstractIncomingMessage):
                ref.get().abandon(self.msg)
            return False

    router = RabbitRouter(middlewares=(DeliveryGate,))

    subscriber = router.subscriber(
        topology.requests_queue,
        topology.requests_exchange,
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
        decoder=_decode_json,
        title="chat-requests",
        description="Chat requests from upstream services. Each one streams its answer to the "
        "WebSocket hub on its `channel` and ends with one `completed` or `failed` event.",
    )

    # Not `message: RabbitMessage`: FastStream leaves the names of context parameters out of
    # the documented payload, and `message` is also the request's main field.
    @subscriber
    async def handle_chat_request(request: ChatRequest, amqp_message: RabbitMessage) -> None:
        await _settle(ref, amqp_message.raw_message)  # the gate settles first (see above)

    return router, subscriber


async def _settle(ref: DeliveriesRef, raw: AbstractIncomingMessage) -> None:
    if ref.control is not None:  # on_busy (§8), before the request waits or runs
        await ref.control.arrived(raw)
    await ref.get().settle(raw)


async def _decode_json(msg: StreamMessage[Any]) -> Any:
    # The gate has validated the body already; decode it whatever its content type said.
    return json.loads(msg.body)
