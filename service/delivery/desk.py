"""The fate of each delivery: run it, wait, return it, recognise it as a copy, or dead-letter it.

See the package docstring for the flow. Every path of a held request ends in `_lifecycle`'s
`finally`: its turn released, its record settled, the ack or nack sent exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aio_pika.abc import AbstractIncomingMessage
from pydantic import TypeAdapter

from service.coordination import Coordinator
from service.delivery.held import FinalEvent, Held, HeldRequests, HeldState
from service.delivery.turns import ConversationQueue
from service.errors import ServiceError
from service.schemas import ChatRequest, CompletedEvent, ErrorCode, FailedEvent
from service.sinks.events import ReplyTo

log = logging.getLogger("service.delivery")

_FINAL = TypeAdapter[FinalEvent](CompletedEvent | FailedEvent)


class Answers(Protocol):
    """Final-event assembly (service/handlers/answer.py): what a request says to the user."""

    async def answer(self, held: Held) -> FinalEvent:
        """Run the request, streaming to the hub; return its final event. When `held.stop`
        is set and the run is cancelled, the event is the `stop` error with the partial text."""

    async def refuse(
        self,
        *,
        message_id: str,
        channel: str | None,
        thread_id: str | None,
        error: ServiceError,
    ) -> FailedEvent:
        """A request that will not run: its hub error payload (when the channel is known) and
        the failed event to publish."""


class FinalEvents(Protocol):
    """The events sink (service/sinks/events.py)."""

    async def publish_completed(
        self, event: CompletedEvent, reply: ReplyTo | None = None
    ) -> None: ...

    async def publish_failed(self, event: FailedEvent, reply: ReplyTo | None = None) -> None: ...

    async def publish_reply(self, event: FinalEvent, reply: ReplyTo) -> None: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    held: Held


@dataclass(frozen=True, slots=True)
class Copy:
    """A second delivery of a message_id this process holds (the broker redelivered it)."""

    raw: AbstractIncomingMessage
    original: Held


@dataclass(frozen=True, slots=True)
class Returned:
    """Arrived while shutting down: back to the queue, untouched."""

    raw: AbstractIncomingMessage


Arrival = Accepted | Copy | Returned


class Deliveries:
    """Decides and carries out the fate of every valid delivered request of one process."""

    def __init__(
        self,
        *,
        answers: Answers,
        events: FinalEvents,
        coordinator: Coordinator,
        max_deliveries: int = 3,
        publish_patience: float = 60.0,
        copy_poll: float = 0.5,
        stop_consuming: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._answers = answers
        self._events = events
        self.coordinator = coordinator
        self._max_deliveries = max_deliveries
        self._publish_patience = publish_patience
        self._copy_poll = copy_poll
        self._stop_consuming = stop_consuming
        self._queue = ConversationQueue()
        self.held = HeldRequests()
        self._arrivals: dict[int, Arrival] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False

    @property
    def in_flight(self) -> int:
        """Requests running now (model turns started, final event not yet published)."""
        return len(self.held.in_state(HeldState.RUNNING))

    def busy(self, conversation_id: str) -> bool:
        """A request of this conversation is held here (waiting or running)."""
        return self._queue.busy(conversation_id)

    # -- arrival (synchronous: the order of arrivals is the order of turns) ------------------

    def arrive(self, request: ChatRequest, raw: AbstractIncomingMessage) -> Arrival:
        """Take a validated delivery: reserve its conversation turn now, before any await."""
        if self.closing:
            arrival: Arrival = Returned(raw)
        else:
            message_id = request.message_id or raw.message_id or f"msg_{uuid.uuid4().hex}"
            original = self.held.get(message_id)
            if original is not None and (raw.redelivered or original.final is None):
                # Redelivered, or published again while the first still runs: a copy.
                arrival = Copy(raw, original)
            else:
                held = Held(request, raw, message_id, self._queue.reserve(request.conversation_id))
                # Published again once the first had its final event: a deliberate retry.
                held.retry = original is not None
                self.held.add(held)
                arrival = Accepted(held)
        self._arrivals[id(raw)] = arrival
        return arrival

    def held_of(self, raw: object) -> Held | None:
        """The held request of a delivery between `arrive` and `settle` (None otherwise)."""
        arrival = self._arrivals.get(id(raw))
        if isinstance(arrival, Accepted) and arrival.held.raw is raw:
            return arrival.held
        return None

    async def settle(self, raw: AbstractIncomingMessage) -> None:
        """See the delivery through to its end: ack, nack or dead-letter, exactly once."""
        arrival = self._arrivals.pop(id(raw), None)
        if arrival is None:
            raise LookupError("settle() of a delivery that did not arrive()")
        # Its own task: aiormq cancels delivery tasks when the connection drops, and a request
        # in flight must still end once, with its final event published.
        task = asyncio.create_task(self._settle(arrival))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    def abandon(self, raw: AbstractIncomingMessage) -> None:
        """The delivery never reached `settle` (a failure between middleware and handler):
        end it in the background as an internal failure, so nothing hangs unacked."""
        arrival = self._arrivals.pop(id(raw), None)
        if arrival is None:
            return
        if isinstance(arrival, Accepted):
            self.end(arrival.held, ServiceError(ErrorCode.INTERNAL, "Internal error"))
        task = asyncio.create_task(self._settle(arrival))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, arrival: Arrival) -> None:
        if isinstance(arrival, Returned):
            await _settle(arrival.raw.nack(requeue=True))
        elif isinstance(arrival, Copy):
            await self._settle_copy(arrival)
        else:
            await self._lifecycle(arrival.held)

    async def reject_invalid(
        self,
        raw: AbstractIncomingMessage,
        error: ServiceError,
        *,
        message_id: str | None,
        channel: str | None,
        thread_id: str | None,
    ) -> None:
        """An invalid request: hub error payload (when its channel is known), failed event,
        then dead-lettered (rejected without requeue)."""
        message_id = message_id or raw.message_id or f"msg_{uuid.uuid4().hex}"
        log.info("rejected invalid request message_id=%s: %s", message_id, error.message)
        event = await self._answers.refuse(
            message_id=message_id, channel=channel, thread_id=thread_id, error=error
        )
        deadline = time.monotonic() + self._publish_patience
        reply = _reply_to(raw)
        if not await _retrying(lambda: self._publish_event(event, reply), deadline, "event"):
            return  # unacked: redelivered and rejected again
        if reply is not None:
            await _retrying(lambda: self._events.publish_reply(event, reply), deadline, "reply")
        await _settle(raw.reject(requeue=False))

    # -- the hooks for cancel and double texting ---------------------------------------------

    def end(self, held: Held, error: ServiceError) -> bool:
        """End a held request early with `error`: a waiting one without running, a running one
        by cancelling its run (the model stream closes). It still sends its one final payload
        and event, then is acked. False when it is already ending (its final event exists)."""
        if held.stop is not None or held.final is not None or held.state is HeldState.ENDING:
            return False
        held.stop = error
        held.stopping.set()
        if held.run is not None:
            held.run.cancel()
        return True

    # -- one held request --------------------------------------------------------------------

    async def _lifecycle(self, held: Held) -> None:
        ticket: str | None = None
        try:
            ticket = await self._run_or_settle(held)
        except Exception:
            # A bug (in a hook, the streamer, the store): still one final event, then the ack.
            log.exception("message_id=%s: unexpected error", held.message_id)
            await self._end_with_error(
                held, held.stop or ServiceError(ErrorCode.INTERNAL, "Internal error")
            )
        finally:
            held.turn.release()
            self.held.discard(held)
            held.done.set()
            if ticket is not None:
                with contextlib.suppress(Exception):
                    await self.coordinator.leave_turn(held.conversation_id, ticket)

    async def _run_or_settle(self, held: Held) -> str | None:
        """Everything one held request goes through; returns its shared ticket, if it took one."""
        raw = held.raw
        claim = await self.coordinator.claim_run(held.message_id, redelivered=bool(raw.redelivered))
        if claim.status == "running":
            # A copy of a request a live process is running (this one before a reconnect, or
            # another replica): never run twice; settle once that run has ended. Meanwhile
            # it does not hold up its conversation here.
            held.turn.release()
            while claim.status == "running":
                if await _wait(held.stopping, self._copy_poll):
                    if held.returning:
                        await self._nack(held)
                        return None
                    # Cancelled: the process running it is told the same (a cancel reaches
                    # every replica); this copy only waits for that run's end.
                    held.stopping.clear()
                    held.stop = None
                claim = await self.coordinator.claim_run(
                    held.message_id, redelivered=not held.retry
                )
            if claim.status == "claimed":
                # Its first run died with its process: this copy runs it, at the back of the line.
                held.turn = self._queue.reserve(held.conversation_id)
        if claim.status == "finished":
            held.state = HeldState.ENDING
            if claim.final is not None:
                event = _FINAL.validate_json(claim.final)
                if not await self._publish(held, event):
                    return None
                await self.coordinator.final_published(held.message_id)
            log.info("redelivered copy of message_id=%s settled without a run", held.message_id)
            await self._ack(held)
            return None
        if raw.redelivered and claim.starts >= self._max_deliveries:
            await self._dead_letter(held, claim.starts)
            return None
        ticket = uuid.uuid4().hex
        if not await self._wait_turn(held, ticket):
            return ticket
        held.state = HeldState.RUNNING
        await self.coordinator.record_start(held.message_id)
        if held.stop is not None:
            # Ended while its start was being recorded: it never reaches the model.
            await self._refuse(held, held.stop)
            return ticket
        held.run = asyncio.create_task(self._answers.answer(held))
        try:
            final = await held.run
        except asyncio.CancelledError:
            if not (held.run.cancelled() and held.stop is not None):
                raise
            # Ended before the run's first step: nothing of it reached the hub, so it ends
            # as a request that never ran (its error payload alone, then its failed event).
            await self._refuse(held, held.stop)
            return ticket
        held.final = final
        held.state = HeldState.ENDING
        await self._finish(held, final)
        return ticket

    async def _wait_turn(self, held: Held, ticket: str) -> bool:
        """Wait for the local turn, then the shared one; False if ended or returned meanwhile."""
        if held.turn.ready and not held.stopping.is_set():
            # The usual case, an idle conversation: no waiter tasks on the way to `started`.
            await self.coordinator.join_turn(held.conversation_id, ticket)
            if not held.stopping.is_set() and self.coordinator.heads_line(
                held.conversation_id, ticket
            ):
                return True
            return await self._wait_turn_slowly(held, ticket, joined=True)
        return await self._wait_turn_slowly(held, ticket, joined=False)

    async def _wait_turn_slowly(self, held: Held, ticket: str, *, joined: bool) -> bool:
        stopping = asyncio.ensure_future(held.stopping.wait())
        try:
            if not held.turn.ready:
                turn = asyncio.ensure_future(held.turn.wait())
                await asyncio.wait({turn, stopping}, return_when=asyncio.FIRST_COMPLETED)
                turn.cancel()
            while not held.stopping.is_set():
                if not joined:
                    await self.coordinator.join_turn(held.conversation_id, ticket)
                joined = False  # a lost place is joined again, at the back
                shared = asyncio.ensure_future(
                    self.coordinator.wait_turn(held.conversation_id, ticket)
                )
                await asyncio.wait({shared, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not shared.done():
                    shared.cancel()
                    break
                try:
                    shared.result()
                    break
                except LookupError:
                    # Our place was dropped (the lease lapsed while the store was away):
                    # join again, at the back.
                    log.warning("message_id=%s lost its place in line; rejoining", held.message_id)
                    await _wait(held.stopping, 0.5)  # the lease is renewed meanwhile
        finally:
            stopping.cancel()
        if not held.stopping.is_set():
            return True
        if held.returning:
            # Shutting down before it started: back to the queue, in its place, not counted.
            await self.coordinator.release_run(held.message_id)
            await self._nack(held)
        else:
            assert held.stop is not None
            await self._refuse(held, held.stop)
        return False

    async def _refuse(self, held: Held, error: ServiceError) -> None:
        """End a request that will not run: its error payload, its failed event, the ack."""
        held.state = HeldState.ENDING
        event = await self._answers.refuse(
            message_id=held.message_id,
            channel=held.channel,
            thread_id=held.conversation_id,
            error=error,
        )
        held.final = event
        await self._finish(held, event)

    async def _finish(self, held: Held, final: FinalEvent) -> None:
        """Publish the one final event, record the run finished, then ack."""
        published = await self._publish(held, final)
        try:
            await self.coordinator.finish_run(
                held.message_id, None if published else final.model_dump_json().encode()
            )
        except Exception as exc:
            # Only redelivered copies need the record; the ack must not wait for the store.
            log.warning("message_id=%s: run record not updated (%r)", held.message_id, exc)
        if published:
            await self._ack(held)
        # Not published within the patience: left unacked; the redelivered copy publishes it.

    async def _dead_letter(self, held: Held, starts: int) -> None:
        held.state = HeldState.ENDING
        error = ServiceError(
            ErrorCode.INTERNAL, f"Request was started {starts} times without finishing"
        )
        log.error("message_id=%s dead-lettered: %s", held.message_id, error.message)
        event = await self._answers.refuse(
            message_id=held.message_id,
            channel=held.channel,
            thread_id=held.conversation_id,
            error=error,
        )
        held.final = event
        published = await self._publish(held, event)
        await self.coordinator.finish_run(
            held.message_id, None if published else event.model_dump_json().encode()
        )
        if published:
            held.settled = True
            await _settle(held.raw.reject(requeue=False))

    async def _end_with_error(self, held: Held, error: ServiceError) -> None:
        """Last resort after an unexpected exception: one failed event, then the ack."""
        if held.settled:
            return
        event = held.final or self._failed(held, error)
        try:
            await self._finish(held, event)
        except Exception:
            log.exception("message_id=%s: could not end after an error", held.message_id)
            if not held.published:
                await self._nack(held)

    async def _ack(self, held: Held) -> None:
        held.settled = True
        await _settle(held.raw.ack())

    async def _nack(self, held: Held) -> None:
        held.settled = True
        await _settle(held.raw.nack(requeue=True))

    def _failed(self, held: Held, error: ServiceError) -> FailedEvent:
        return FailedEvent(
            message_id=held.message_id,
            channel=held.channel,
            thread_id=held.conversation_id,
            code=error.code,
            message=error.message,
            retryable=error.retryable,
            occurred_at=time.time(),
        )

    async def _publish(self, held: Held, event: FinalEvent) -> bool:
        """Publish the final event once, retrying while the broker is away; then the reply_to
        copy, whose failure never republishes the event. False if it could not be published."""
        async with held.publishing:
            return await self._publish_once(held, event)

    async def _publish_once(self, held: Held, event: FinalEvent) -> bool:
        deadline = time.monotonic() + self._publish_patience
        reply = _reply_to(held.raw)
        if not held.published:
            if not await _retrying(
                lambda: self._publish_event(event, reply), deadline, "final event"
            ):
                log.error("final event of message_id=%s not published", held.message_id)
                return False
            held.published = True
        if reply is not None and not held.replied:
            if await _retrying(
                lambda: self._events.publish_reply(event, reply), deadline, "reply_to copy"
            ):
                held.replied = True
            else:
                log.error("reply_to copy of message_id=%s not published", held.message_id)
        return True

    async def _publish_event(self, event: FinalEvent, reply: ReplyTo | None) -> None:
        if isinstance(event, CompletedEvent):
            await self._events.publish_completed(event, reply)
        else:
            await self._events.publish_failed(event, reply)

    async def _settle_copy(self, copy: Copy) -> None:
        original = copy.original
        await original.done.wait()
        if original.returning or (self.closing and not original.published):
            await _settle(copy.raw.nack(requeue=True))
            return
        if original.final is not None and not original.published:
            # The original could not publish its final event: this copy does, once.
            if await self._publish(original, original.final):
                await self.coordinator.final_published(original.message_id)
            else:
                return
        log.info(
            "redelivered copy of message_id=%s settled without a second run", original.message_id
        )
        await _settle(copy.raw.ack())

    # -- shutdown ----------------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Stop taking requests; return the waiting ones to the queue (not counted as
        deliveries); let runs finish for `grace` s, then end them `cancelled`."""
        self.closing = True
        if self._stop_consuming is not None:
            try:
                await self._stop_consuming()
            except Exception as exc:
                log.warning("shutdown: could not cancel the consumer (%s)", type(exc).__name__)
        for held in self.held:
            if held.state is HeldState.WAITING and held.stop is None:
                held.returning = True
                held.stopping.set()
        running = [h for h in self.held if h.state is HeldState.RUNNING]
        if running:
            log.info("shutdown: waiting up to %gs for %d run(s)", grace, len(running))
            waits = {asyncio.ensure_future(h.done.wait()) for h in running}
            _, pending = await asyncio.wait(waits, timeout=grace) if grace > 0 else (set(), waits)
            for wait in pending:
                wait.cancel()
            late = [h for h in running if not h.done.is_set()]
            cancelled = ServiceError(
                ErrorCode.CANCELLED, "The service is shutting down", retryable=True
            )
            for held in late:
                self.end(held, cancelled)
            if late:
                log.warning("shutdown: cancelled %d run(s) after the grace period", len(late))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._publish_patience + 5)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
            return True
    return False


async def _retrying(attempt: Callable[[], Awaitable[None]], deadline: float, what: str) -> bool:
    delay = 0.2
    while True:
        try:
            await attempt()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                log.warning("publishing the %s failed for good (%s)", what, type(exc).__name__)
                return False
            log.warning("publishing the %s failed (%s); retrying", what, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _settle(outcome: Awaitable[object]) -> None:
    """Ack/nack/reject; on a dead channel the broker redelivers, and the copy is recognised."""
    try:
        await outcome
    except Exception as exc:
        log.warning("could not settle a message (%s); it will be redelivered", type(exc).__name__)


def _reply_to(raw: AbstractIncomingMessage) -> ReplyTo | None:
    if raw.reply_to:
        return ReplyTo(queue=raw.reply_to, correlation_id=raw.correlation_id)
    return None
