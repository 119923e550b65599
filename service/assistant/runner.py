"""The run loop: one request on its conversation, in order, within its limits, ending once.

The runner owns what both backends share: at most one run per conversation at a time (later
requests wait their turn, in arrival order), the total run timeout, and turning whatever
happened into exactly one `on_completed` or `on_failed` call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from service.assistant.events import RunEventHandler, RunResult
from service.assistant.failures import classify
from service.errors import RunTimeout, ServiceError


class Backend(Protocol):
    """One way of running a message on a thread (Responses, Assistants)."""

    async def run(
        self,
        thread_id: str,
        message: str,
        handler: RunEventHandler,
        *,
        text_started: Callable[[], bool],
    ) -> RunResult: ...


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
    ):
        self._queue = queue
        self._conversation_id = conversation_id
        self._future = future

    async def wait(self) -> None:
        """Wait until every earlier request on the conversation has released its turn."""
        try:
            await asyncio.shield(self._future)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self._queue._release(self._conversation_id, self._future)


class Runner:
    """Runs a message through a backend and reports the outcome to the handler exactly once."""

    def __init__(self, backend: Backend, *, run_timeout: float) -> None:
        self._backend = backend
        self._run_timeout = run_timeout

    async def run(
        self,
        thread_id: str,
        message: str,
        handler: RunEventHandler,
        *,
        text_started: Callable[[], bool],
    ) -> RunResult | ServiceError:
        """Return the result or the error; `CancelledError` is reported, then re-raised."""
        try:
            async with asyncio.timeout(self._run_timeout):
                result = await self._backend.run(
                    thread_id, message, handler, text_started=text_started
                )
        except asyncio.CancelledError:
            await handler.on_failed(classify(asyncio.CancelledError()))
            raise
        except TimeoutError:
            error: ServiceError = RunTimeout(f"The run took longer than {self._run_timeout:g} s")
        except Exception as exc:
            error = classify(exc)
        else:
            await handler.on_completed(result)
            return result
        await handler.on_failed(error)
        return error
