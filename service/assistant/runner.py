"""The run loop: one request on its conversation, in order, within its limits, ending once.

The runner owns what both backends share: the total run timeout, and turning whatever happened
into exactly one `on_completed` or `on_failed` call. (One run at a time per conversation, in
arrival order, is decided before a run starts: `service.delivery`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from service.assistant.events import RunEventHandler, RunResult
from service.assistant.failures import classify
from service.assistant.footprint import Footprint
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


@runtime_checkable
class Settles(Protocol):
    """A backend that can put a conversation in order after an abandoned run."""

    async def settle(
        self, thread_id: str, message: str, footprint: Footprint, *, erase: bool
    ) -> None: ...


class Runner:
    """Runs a message through a backend and reports the outcome to the handler exactly once."""

    def __init__(self, backend: Backend, *, run_timeout: float) -> None:
        self._backend = backend
        self._run_timeout = run_timeout

    async def settle(
        self, thread_id: str, message: str, footprint: Footprint, *, erase: bool
    ) -> None:
        """After a run abandoned by a cancel: complete (or, `erase`, remove) what it left in
        the conversation (`service.assistant.abandon`)."""
        backend: object = self._backend
        if isinstance(backend, Settles):
            await backend.settle(thread_id, message, footprint, erase=erase)

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
