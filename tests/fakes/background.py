"""An asyncio event loop in a daemon thread, for fakes that must keep serving while a test
blocks (waiting on a subprocess, a broker, or a synchronous client)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["BackgroundLoop"]

T = TypeVar("T")


class BackgroundLoop:
    """Runs an event loop in a daemon thread.

    >>> loop = BackgroundLoop().start()
    >>> fake = FakeOpenAI()
    >>> loop.run(fake.start())
    >>> ...                                  # the fake serves while this thread blocks
    >>> loop.run(fake.stop()); loop.stop()

    Objects started here belong to this loop: call their coroutines through :meth:`run`
    (their thread-safe methods, such as ``FakeOpenAI.script``, can be called directly).
    """

    def __init__(self, name: str = "fakes-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("BackgroundLoop is not started")
        return self._loop

    def start(self) -> BackgroundLoop:
        """Start the thread; returns once its loop is running."""
        if self._thread is not None:
            raise RuntimeError("BackgroundLoop already started")
        loop = asyncio.new_event_loop()
        running = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(running.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
        self._thread.start()
        running.wait()
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``coro`` on the loop and wait for its result (its exception is re-raised)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is still running on the loop, stop it and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(_cancel_others(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> BackgroundLoop:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _cancel_others() -> None:
    """Cancel every other task and wait for them, so the loop closes without warnings."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
