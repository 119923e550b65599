"""Cancel and double texting on top of the delivery layer (contract §8).

`CancelControl` finds the requests this process holds (`Deliveries.held`) that a cancel, or a
request arriving on a busy conversation, targets, and ends them through `Deliveries.end` (one
final payload and event, then the ack). It adds what the delivery layer does not know:

* the user's stop is shown at once: the running request's final payload goes out as soon as
  the cancel arrives (`announce`), before its task has unwound (closing the model stream,
  abandoning a tool call); later text is dropped, so the `failed` event's `text` is exactly
  what the hub was sent;
* a request whose final payload has gone out (it completed or failed by itself) is past
  cancelling: a cancel racing the natural end changes nothing;
* whether an interrupted request's items must leave the conversation (rollback).

The per-request part is a `RunEventHandler` (`handler`) wrapped around the request's own.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Protocol

from service.assistant.events import RunEventHandler, RunResult, ToolCall, ToolOutcome
from service.control.policies import POLICIES, on_arrival
from service.delivery import Deliveries, Held, HeldState
from service.errors import ServiceError
from service.schemas import CancelRequest, ErrorCode, OnBusy

log = logging.getLogger("service.control")


def cancelled_error(why: str = "The request was cancelled") -> ServiceError:
    return ServiceError(ErrorCode.CANCELLED, why, retryable=False)


def busy_error(conversation_id: str) -> ServiceError:
    return ServiceError(
        ErrorCode.CONVERSATION_BUSY,
        f"Conversation {conversation_id} is busy with another request",
        retryable=True,
    )


@dataclass(eq=False)
class _Mark:
    """What the control knows about one held request."""

    finished: bool = False
    """Its final payload has gone out: past cancelling."""
    by_user: bool = False
    """Ended by a cancel or by double texting (not by shutdown)."""
    erase: bool = False
    """Its items must leave the conversation (rollback)."""
    handler: _Cancellable | None = None


class Broadcast(Protocol):
    async def __call__(self, conversation_id: str, *, by: str, erase: bool) -> None: ...


class CancelControl:
    """Cancels and `on_busy` for the requests one process holds."""

    def __init__(
        self,
        deliveries: Deliveries,
        *,
        on_busy: OnBusy = OnBusy.ENQUEUE,
        broadcast: Broadcast | None = None,
    ) -> None:
        """`broadcast`: tells the other replicas to interrupt a conversation too."""
        self._deliveries = deliveries
        self._on_busy = on_busy
        self._broadcast = broadcast
        self._marks: weakref.WeakKeyDictionary[Held, _Mark] = weakref.WeakKeyDictionary()

    def _mark(self, held: Held) -> _Mark:
        mark = self._marks.get(held)
        if mark is None:
            mark = self._marks[held] = _Mark()
        return mark

    # -- cancel ------------------------------------------------------------------------------

    async def cancel(self, request: CancelRequest) -> list[Held]:
        """End every held request the cancel matches; those it ended."""
        targets = self._deliveries.held.matching(
            message_id=request.message_id, channel=request.channel
        )
        ended = [h for h in targets if self._end(h, cancelled_error(), erase=False)]
        for held in ended:
            log.info("cancelling message_id=%s (%s)", held.message_id, held.state.value)
            await self.announce(held)
        if request.message_id and not targets:
            # Not held here: it may be between the router and its shard, or waiting in a
            # queue beyond the prefetch. A tombstone ends it cancelled when it arrives.
            try:
                await self._deliveries.coordinator.mark_cancelled(request.message_id)
            except Exception as exc:
                log.warning("cancel tombstone of %s not written (%r)", request.message_id, exc)
            # Arrived here while the tombstone was being written (it may have missed it).
            late = self._deliveries.held.matching(message_id=request.message_id)
            for held in [h for h in late if self._end(h, cancelled_error(), erase=False)]:
                log.info("cancelling message_id=%s (%s)", held.message_id, held.state.value)
                await self.announce(held)
                ended.append(held)
        return ended

    def _end(self, held: Held, error: ServiceError, *, erase: bool) -> bool:
        mark = self._mark(held)
        if mark.finished or held.state is HeldState.ENDING:
            return False
        if not self._deliveries.end(held, error):
            return False
        mark.by_user, mark.erase = True, erase
        return True

    async def announce(self, held: Held) -> None:
        mark = self._marks.get(held)
        if mark is not None and mark.handler is not None:
            await mark.handler.announce()

    # -- double texting ----------------------------------------------------------------------

    async def arrived(self, raw: object) -> None:
        """Apply `on_busy` to a request that has just arrived (held, its turn reserved)."""
        held = self._deliveries.held_of(raw)  # not a scan of every held request (quadratic)
        if held is None or held.stop is not None:
            return
        if await self._tombstoned(held.message_id):
            log.info("message_id=%s was cancelled before it arrived", held.message_id)
            self._end(held, cancelled_error(), erase=False)
            return
        conversation_id = held.conversation_id
        others = [
            h
            for h in self._deliveries.held.in_conversation(conversation_id)
            if h is not held and h.stop is None
        ]
        requested = POLICIES[held.request.on_busy or self._on_busy]
        if requested.cancels_others:
            # Interrupt and rollback need no busy test: whatever any replica holds of the
            # conversation ends (nothing, when it is idle).
            await self._interrupt_everywhere(held, erase=requested.erases_others)
            return
        if not requested.rejects_itself:
            # Enqueue: its turn (reserved on arrival, shared through the coordinator) already
            # makes it wait; asking the store whether the conversation is busy would only
            # delay its `started` for a log line, written here when busy in this process.
            if others:
                log.info("message_id=%s waits its turn on conversation %s", held.message_id,
                         conversation_id)  # fmt: skip
            return
        busy = bool(others) or await self._busy_elsewhere(conversation_id)
        policy = on_arrival(held.request.on_busy, self._on_busy, busy=busy)
        if policy.rejects_itself:
            log.info("message_id=%s rejected: conversation %s is busy", held.message_id,
                     conversation_id)  # fmt: skip
            self._deliveries.end(held, busy_error(conversation_id))
            return
        if busy:
            log.info("message_id=%s waits its turn on conversation %s", held.message_id,
                     conversation_id)  # fmt: skip

    async def _interrupt_everywhere(self, held: Held, *, erase: bool) -> None:
        conversation_id = held.conversation_id
        await self.interrupt(conversation_id, by=held.message_id, erase=erase)
        if self._broadcast is not None:
            try:
                await self._broadcast(conversation_id, by=held.message_id, erase=erase)
            except Exception as exc:
                log.warning("interrupt of %s not broadcast (%r)", conversation_id, exc)

    async def interrupt(self, conversation_id: str, *, by: str, erase: bool) -> None:
        """End every held request of the conversation except `by` as cancelled."""
        reason = cancelled_error(f"Interrupted by request {by}"[:200])
        others = [
            h for h in self._deliveries.held.in_conversation(conversation_id) if h.message_id != by
        ]
        ended = [h for h in others if self._end(h, reason, erase=erase)]
        for other in ended:
            log.info("message_id=%s interrupted by %s", other.message_id, by)
            await self.announce(other)

    async def _tombstoned(self, message_id: str) -> bool:
        if not message_id:
            return False
        try:
            return await self._deliveries.coordinator.was_cancelled(message_id)
        except Exception as exc:  # the shared store is down: run it
            log.warning("could not read the cancel tombstone of %s (%r)", message_id, exc)
            return False

    async def _busy_elsewhere(self, conversation_id: str) -> bool:
        try:
            return await self._deliveries.coordinator.busy(conversation_id)
        except Exception as exc:  # the shared store is down: decide on what is known here
            log.warning("could not ask whether %s is busy (%r)", conversation_id, exc)
            return False

    # -- per request -------------------------------------------------------------------------

    def handler(self, held: Held, inner: RunEventHandler) -> RunEventHandler:
        """`inner` for the run of `held`: see the module docstring."""
        mark = self._mark(held)
        mark.handler = _Cancellable(held, mark, inner)
        return mark.handler

    def erases(self, held: Held) -> bool | None:
        """None: not ended by a user; else whether its items must leave the conversation."""
        mark = self._marks.get(held)
        if mark is None or not mark.by_user:
            return None
        return mark.erase


class _Cancellable(RunEventHandler):
    """Forwards events until the request's final payload; reports the reason it was ended
    with (a user's `cancelled`, not retryable) instead of the runner's generic cancellation."""

    def __init__(self, held: Held, mark: _Mark, inner: RunEventHandler) -> None:
        self._held = held
        self._mark = mark
        self._inner = inner

    async def announce(self) -> None:
        stop = self._held.stop
        if not self._mark.finished and stop is not None and self._held.run is not None:
            self._mark.finished = True
            await self._inner.on_failed(stop)

    async def on_run_started(self, run_id: str | None) -> None:
        await self._inner.on_run_started(run_id)

    async def on_tool_call_started(self, call: ToolCall) -> None:
        if not self._mark.finished:
            await self._inner.on_tool_call_started(call)

    async def on_tool_call_finished(self, outcome: ToolOutcome) -> None:
        if not self._mark.finished:
            await self._inner.on_tool_call_finished(outcome)

    async def on_text_delta(self, delta: str) -> None:
        if not self._mark.finished:
            await self._inner.on_text_delta(delta)

    async def on_completed(self, result: RunResult) -> None:
        if not self._mark.finished:
            self._mark.finished = True
            await self._inner.on_completed(result)

    async def on_failed(self, error: ServiceError) -> None:
        if self._mark.finished:
            return
        self._mark.finished = True
        stop = self._held.stop
        if stop is not None and error.code is ErrorCode.CANCELLED:
            error = stop
        await self._inner.on_failed(error)
