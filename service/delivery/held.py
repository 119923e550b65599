"""The requests this process holds: delivered, valid, not yet settled with the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

from aio_pika.abc import AbstractIncomingMessage

from service.delivery.turns import Turn
from service.errors import ServiceError
from service.schemas import ChatRequest, CompletedEvent, FailedEvent

FinalEvent: TypeAlias = CompletedEvent | FailedEvent


class HeldState(StrEnum):
    """`waiting`: for its conversation's turn (or for a copy elsewhere to end); `running`: its
    model turns have started; `ending`: its final event is being published and acked."""

    WAITING = "waiting"
    RUNNING = "running"
    ENDING = "ending"


@dataclass(eq=False)
class Held:
    """One valid request this process holds, from its delivery to its ack (or return)."""

    request: ChatRequest
    raw: AbstractIncomingMessage
    message_id: str
    turn: Turn
    state: HeldState = HeldState.WAITING
    stop: ServiceError | None = None
    """Why it is being ended early (cancel, interrupt, shutdown after the grace period)."""
    retry: bool = False
    """Published again (not redelivered) after the first run of its message_id had ended."""
    returning: bool = False
    """Shutdown: back to the queue untouched (only while waiting)."""
    run: asyncio.Task[FinalEvent] | None = None
    """The run (streaming the answer); cancelled to end a running request early."""
    final: FinalEvent | None = None
    published: bool = False
    replied: bool = False
    settled: bool = False
    """Acked, nacked or rejected (once)."""
    publishing: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while its final event is being published: racing copies publish it once."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def channel(self) -> str:
        return self.request.channel

    @property
    def conversation_id(self) -> str:
        return self.request.conversation_id


class HeldRequests:
    """The held requests by message_id, with look-ups by channel and conversation."""

    def __init__(self) -> None:
        self._by_id: dict[str, Held] = {}
        # By conversation too: every arrival asks for its conversation's others, and a scan
        # of all held requests per arrival is quadratic in a burst (5,000 held: seconds).
        self._by_conversation: dict[str, dict[str, Held]] = {}

    def add(self, held: Held) -> None:
        replaced = self._by_id.get(held.message_id)
        if replaced is not None and replaced.conversation_id != held.conversation_id:
            self._unindex(replaced)
        self._by_id[held.message_id] = held
        self._by_conversation.setdefault(held.conversation_id, {})[held.message_id] = held

    def discard(self, held: Held) -> None:
        if self._by_id.get(held.message_id) is held:
            del self._by_id[held.message_id]
            self._unindex(held)

    def _unindex(self, held: Held) -> None:
        conversation = self._by_conversation.get(held.conversation_id)
        if conversation is not None and conversation.get(held.message_id) is held:
            del conversation[held.message_id]
            if not conversation:
                del self._by_conversation[held.conversation_id]

    def get(self, message_id: str) -> Held | None:
        return self._by_id.get(message_id)

    def matching(self, *, message_id: str | None = None, channel: str | None = None) -> list[Held]:
        """Held requests matching every given field (§8 cancel rule), oldest first."""
        if message_id is None and channel is None:
            return []
        return [
            held
            for held in self._by_id.values()
            if (message_id is None or held.message_id == message_id)
            and (channel is None or held.channel == channel)
        ]

    def in_conversation(self, conversation_id: str) -> list[Held]:
        return list(self._by_conversation.get(conversation_id, {}).values())

    def in_state(self, state: HeldState) -> list[Held]:
        return [h for h in self._by_id.values() if h.state is state]

    def __iter__(self) -> Iterator[Held]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
