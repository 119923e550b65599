"""Start pacing: while requests keep arriving, their costly start-up waits.

A run's start (building the model request in the SDK, opening a connection, reading the first
events) costs a few milliseconds of CPU, far more than receiving a request and sending its
`started` payload. When hundreds of requests arrive together, starting each one as soon as it
is delivered makes the event loop run those starts before it reads the next deliveries from
the broker socket, so the last request's `started` payload waits for every start before it
(bench `burst`: 200 requests at once, `started` p99 ~20 x a bare consumer's).

Paced, a start waits while deliveries are still coming in (one arrived in the last `quiet`
seconds), but never longer than `max_wait`; then starts go in arrival order, `per_turn` per
event-loop turn, so the loop keeps reading its sockets between them.
"""

from __future__ import annotations

import asyncio
from collections import deque


class StartPacer:
    """FIFO admission of run starts (see the module docstring)."""

    def __init__(self, *, quiet: float = 0.01, max_wait: float = 0.1, per_turn: int = 2) -> None:
        self._quiet = quiet
        self._max_wait = max_wait
        self._per_turn = max(1, per_turn)
        self._last_arrival = float("-inf")
        self._previous_arrival = float("-inf")
        self._used = 0
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._tick: asyncio.Handle | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def arrived(self) -> None:
        """A request was delivered (called before it is handled)."""
        self._previous_arrival = self._last_arrival
        self._last_arrival = asyncio.get_running_loop().time()

    async def wait(self) -> None:
        """Return when this start may begin: at once when nothing else is arriving or waiting."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if (
            not self._waiters
            and self._used < self._per_turn
            and now - self._previous_arrival >= self._quiet
        ):
            self._used += 1
            self._schedule(loop, 0.0)
            return
        waiter = loop.create_future()
        self._waiters.append((now, waiter))
        self._schedule(loop, 0.0)
        await waiter  # cancelled while waiting: `_release` skips it

    def _schedule(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._tick is None:
            self._tick = (
                loop.call_soon(self._release)
                if delay <= 0
                else loop.call_later(delay, self._release)
            )

    def _release(self) -> None:
        # Once per loop turn while starts are admitted or waiting: a new turn's allowance.
        self._tick = None
        self._used = 0
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiters and self._waiters[0][1].done():
            self._waiters.popleft()
        if not self._waiters:
            return
        quiet_in = self._last_arrival + self._quiet - now
        overdue = now - self._waiters[0][0] >= self._max_wait
        if quiet_in > 0 and not overdue:
            wait_more = min(quiet_in, self._waiters[0][0] + self._max_wait - now)
            self._schedule(loop, wait_more)
            return
        while self._waiters and self._used < self._per_turn:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._used += 1
        self._schedule(loop, 0.0)
