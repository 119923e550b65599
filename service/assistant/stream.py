"""Reading a model stream with an idle limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

from service.errors import RunTimeout

T = TypeVar("T")


async def within_idle_limit(stream: AsyncIterable[T], idle: float) -> AsyncIterator[T]:
    """Yield the stream's events; raise `RunTimeout` when none comes for `idle` seconds."""
    iterator = aiter(stream)
    while True:
        try:
            async with asyncio.timeout(idle):
                event = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RunTimeout(f"No event from the model for {idle:g} s") from None
        yield event
