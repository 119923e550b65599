"""FIFO turns per conversation inside one process.

`reserve` is synchronous: called when a delivery arrives, before any await, it fixes the order
in which a conversation's requests run to the order the broker delivered them.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ConversationQueue:
    """FIFO turns per conversation: `reserve` is synchronous, so arrival order is kept."""

    def __init__(self) -> None:
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    def reserve(self, conversation_id: str) -> Turn:
        waiting = self._waiting.setdefault(conversation_id, deque())
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.append(future)
        if len(waiting) == 1:
            future.set_result(None)
        return Turn(self, conversation_id, future)

    def busy(self, conversation_id: str) -> bool:
        return conversation_id in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    def _release(self, conversation_id: str, future: asyncio.Future[None]) -> None:
        waiting = self._waiting.get(conversation_id)
        if waiting is None:
            return
        was_head = bool(waiting) and waiting[0] is future
        try:
            waiting.remove(future)
        except ValueError:
            return
        if not waiting:
            del self._waiting[conversation_id]
        elif was_head:
            head = waiting[0]
            if not head.done():
                head.set_result(None)


class Turn:
    """A place in a conversation's queue: `wait()` for it, `release()` it (idempotent)."""

    def __init__(
        self, queue: ConversationQueue, conversation_id: str, future: asyncio.Future[None]
    ) -> None:
        self._queue = queue
        self.conversation_id = conversation_id
        self._future = future

    @property
    def ready(self) -> bool:
        return self._future.done()

    async def wait(self) -> None:
        """Wait until every earlier request on the conversation has released its turn."""
        await asyncio.shield(self._future)

    def release(self) -> None:
        self._queue._release(self.conversation_id, self._future)
