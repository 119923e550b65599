"""Retries of one OpenAI call on transient failures, shared by both backends."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from service.assistant.failures import classify

T = TypeVar("T")
log = logging.getLogger("service.assistant")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to `attempts` tries, waiting `backoff`·2ⁿ (±50 %, capped) between them.

    Only a retryable error is tried again (see `failures.py`). When the API says how long to
    wait (`retry-after`), that wait is used; one longer than `max_backoff` ends the request at
    once (still `retryable`: the caller may try later) instead of holding it.
    """

    attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0

    async def run(self, call: Callable[[], Awaitable[T]], *, may_retry: Callable[[], bool]) -> T:
        """Run `call`; retry a retryable failure while `may_retry()` says nothing was streamed."""
        attempt = 1
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = classify(exc)
                if not error.retryable or attempt >= self.attempts or not may_retry():
                    raise error from exc
                if error.retry_after is not None:
                    if error.retry_after > self.max_backoff:
                        raise error from exc
                    delay = error.retry_after
                else:
                    delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
                    delay *= 0.5 + random.random()
                log.warning(
                    "attempt %d/%d failed (%s), retrying in %.2fs",
                    attempt,
                    self.attempts,
                    error.code.value,
                    delay,
                )
                await asyncio.sleep(delay)
                attempt += 1
