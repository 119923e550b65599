"""The chat-request subscriber: validated message → one call → final event published → ack."""

from __future__ import annotations

import json
from typing import Any

from faststream import BaseMiddleware
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy
from faststream.rabbit import RabbitMessage, RabbitRouter

from service.errors import ServiceError
from service.handlers.processor import RequestProcessor
from service.schemas import ChatRequest
from service.topology import Topology


class ProcessorRef:
    """The processor, set at start-up (the router is declared before any client exists)."""

    def __init__(self) -> None:
        self.processor: RequestProcessor | None = None

    def get(self) -> RequestProcessor:
        if self.processor is None:
            raise RuntimeError("the service is not started")
        return self.processor


def chat_router(topology: Topology, ref: ProcessorRef) -> RabbitRouter:
    """The router holding the one chat-request subscriber, with its validation gate."""

    class ValidationGate(BaseMiddleware):
        """Invalid requests never reach the handler: failed event, hub error, dead-letter."""

        async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
            processor = ref.get()
            raw = msg.raw_message
            try:
                processor.parse(raw.body, raw.content_type)
            except ServiceError as error:
                await processor.reject_invalid(raw, error)
                return None
            return await call_next(msg)

    router = RabbitRouter(middlewares=(ValidationGate,))

    @router.subscriber(
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
    async def handle_chat_request(request: ChatRequest, amqp_message: RabbitMessage) -> None:
        await ref.get().process(request, amqp_message.raw_message)

    return router


async def _decode_json(msg: StreamMessage[Any]) -> Any:
    # The gate has validated the body already; decode it whatever its content type said.
    return json.loads(msg.body)
