"""The delivery layer alone, fast: each fate of a delivery, without a broker or a model.

`FakeDelivery` stands for an AMQP delivery (records its ack/nack/reject), `ScriptedAnswers`
for the run (each request blocks on its own gate until the test opens it), `RecordingEvents`
for the events sink (can fail). Several `Deliveries` over one `LocalStore` are several
processes; one "crashes" by closing its coordinator and being dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from service.coordination.local import Journal, LocalCoordinator, LocalStore
from service.delivery import Accepted, Copy, Deliveries, Held, HeldState, Returned
from service.errors import ServiceError
from service.schemas import ChatRequest, CompletedEvent, ErrorCode, FailedEvent
from service.sinks.events import ReplyTo

pytestmark = pytest.mark.asyncio(loop_scope="session")

Journal_ = list[tuple[str, str]]


@dataclass(eq=False)
class FakeDelivery:
    """The parts of an aio-pika incoming message the delivery layer uses."""

    body: dict[str, Any]
    journal: Journal_
    redelivered: bool = False
    message_id: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    settled: list[str] = field(default_factory=list)

    @property
    def mid(self) -> str:
        return str(self.body["message_id"])

    async def ack(self) -> None:
        self._settle("ack")

    async def nack(self, requeue: bool = True) -> None:
        self._settle("nack-requeue" if requeue else "nack")

    async def reject(self, requeue: bool = False) -> None:
        self._settle("reject-requeue" if requeue else "reject")

    def _settle(self, how: str) -> None:
        self.settled.append(how)
        self.journal.append((how, self.mid))

    def copy(self) -> FakeDelivery:
        """The broker's redelivery of this message."""
        return FakeDelivery(dict(self.body), self.journal, True, reply_to=self.reply_to)


class ScriptedAnswers:
    """Runs block until their gate opens; a run may be scripted to raise."""

    def __init__(self, journal: Journal_) -> None:
        self.journal = journal
        self.gates: dict[str, asyncio.Event] = {}
        self.raises: dict[str, BaseException] = {}
        self.refused: list[tuple[str, ErrorCode]] = []

    def gate(self, message_id: str) -> asyncio.Event:
        return self.gates.setdefault(message_id, asyncio.Event())

    async def answer(self, held: Held) -> CompletedEvent | FailedEvent:
        self.journal.append(("run", held.message_id))
        try:
            await self.gate(held.message_id).wait()
            if held.message_id in self.raises:
                raise self.raises[held.message_id]
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if held.stop is None or task is None:
                raise
            task.uncancel()
            return _failed(held.message_id, held.stop)
        return CompletedEvent(
            message_id=held.message_id,
            channel=held.channel,
            thread_id=held.conversation_id,
            run_id=None,
            text=f"answer to {held.message_id}",
            tool_calls=[],
            usage=None,
            started_at=time.time(),
            finished_at=time.time(),
            duration_ms=0,
        )

    async def refuse(
        self, *, message_id: str, channel: str | None, thread_id: str | None, error: ServiceError
    ) -> FailedEvent:
        self.refused.append((message_id, error.code))
        return _failed(message_id, error)


def _failed(message_id: str, error: ServiceError) -> FailedEvent:
    return FailedEvent(
        message_id=message_id,
        channel=None,
        thread_id=None,
        code=error.code,
        message=error.message,
        retryable=error.retryable,
        occurred_at=time.time(),
    )


class RecordingEvents:
    def __init__(self, journal: Journal_) -> None:
        self.journal = journal
        self.events: list[CompletedEvent | FailedEvent] = []
        self.replies: list[tuple[str, str]] = []
        self.fail_events = 0
        self.fail_replies = 0

    async def publish_completed(self, event: CompletedEvent, reply: ReplyTo | None = None) -> None:
        await self._publish(event)

    async def publish_failed(self, event: FailedEvent, reply: ReplyTo | None = None) -> None:
        await self._publish(event)

    async def _publish(self, event: CompletedEvent | FailedEvent) -> None:
        await asyncio.sleep(0)
        if self.fail_events:
            self.fail_events -= 1
            raise ConnectionError("broker away")
        self.events.append(event)
        self.journal.append(("event", event.message_id))

    async def publish_reply(self, event: CompletedEvent | FailedEvent, reply: ReplyTo) -> None:
        if self.fail_replies:
            self.fail_replies -= 1
            raise ConnectionError("reply queue away")
        self.replies.append((reply.queue, event.message_id))

    def for_id(self, message_id: str) -> list[CompletedEvent | FailedEvent]:
        return [e for e in self.events if e.message_id == message_id]


class Process:
    """One service process's delivery layer over a (possibly shared) local store."""

    def __init__(
        self,
        store: LocalStore,
        *,
        journal: Journal_ | None = None,
        max_deliveries: int = 3,
        patience: float = 5.0,
        coordinator: LocalCoordinator | None = None,
        stop_consuming: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.journal: Journal_ = journal if journal is not None else []
        self.answers = ScriptedAnswers(self.journal)
        self.events = RecordingEvents(self.journal)
        self.coordinator = coordinator or LocalCoordinator(store)
        self.deliveries = Deliveries(
            answers=self.answers,
            events=self.events,
            coordinator=self.coordinator,
            max_deliveries=max_deliveries,
            publish_patience=patience,
            copy_poll=0.02,
            stop_consuming=stop_consuming,
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> Process:
        await self.coordinator.open()
        return self

    def deliver(self, raw: FakeDelivery) -> Any:
        arrival = self.deliveries.arrive(ChatRequest.model_validate(raw.body), raw)  # type: ignore[arg-type]
        return arrival

    def settle(self, raw: FakeDelivery) -> asyncio.Task[None]:
        task = asyncio.create_task(self.deliveries.settle(raw))  # type: ignore[arg-type]
        self.tasks.append(task)
        return task

    def take(self, raw: FakeDelivery) -> asyncio.Task[None]:
        self.deliver(raw)
        return self.settle(raw)

    async def crash(self) -> None:
        """The process dies: its tasks stop where they are, its claims are no longer alive."""
        for task in self.tasks:
            task.cancel()
        for held in self.deliveries.held:
            if held.run is not None:
                held.run.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.coordinator.close()


def request(conversation: str, message_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "message": "hello",
        "channel": conversation,
        "message_id": message_id or f"m-{uuid.uuid4().hex[:8]}",
        **extra,
    }


def conv() -> str:
    return f"conv_{uuid.uuid4().hex[:8]}"


async def until(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def within(awaitable: Awaitable[Any], timeout: float = 5) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


def running(process: Process, message_id: str) -> Callable[[], bool]:
    return lambda: ("run", message_id) in process.journal


# -- issue 9 item 1: a graceful restart counts nothing and keeps the place -----------------


async def test_requests_returned_by_repeated_graceful_restarts_never_count(tmp_path: Path) -> None:
    store = LocalStore(journal=Journal.open(tmp_path, "q"))
    c = conv()
    first = FakeDelivery(request(c, "first"), [])
    waiting = [FakeDelivery(request(c, f"w{i}"), first.journal) for i in range(3)]
    for cycle in range(4):  # more restarts than MAX_DELIVERIES
        process = await Process(store, journal=first.journal, max_deliveries=2).open()
        process.take(first if cycle == 0 else first.copy())
        for raw in waiting:
            process.take(raw if cycle == 0 else raw.copy())
        if cycle == 0:
            await until(running(process, "first"))
            process.answers.gate("first").set()  # finishes within the grace period
        shutdown = asyncio.create_task(process.deliveries.shutdown(grace=5))
        await within(shutdown)
        await process.coordinator.close()
        if cycle == 0:
            assert first.settled == ["ack"]
        assert all(raw.settled[-1:] == ["nack-requeue"] for raw in waiting)
        assert [e.message_id for e in process.events.events] == (["first"] if cycle == 0 else [])

    last = await Process(store, journal=first.journal, max_deliveries=2).open()
    copies = [raw.copy() for raw in waiting]
    for raw in copies:
        last.take(raw)
    for raw in copies:
        last.answers.gate(raw.mid).set()
    await within(asyncio.gather(*last.tasks))
    assert [e.message_id for e in last.events.events] == ["w0", "w1", "w2"]
    assert all(isinstance(e, CompletedEvent) for e in last.events.events)
    assert [m for how, m in first.journal if how == "run"] == ["first", "w0", "w1", "w2"]


async def test_a_crash_mid_run_counts_and_the_limit_dead_letters_it_with_internal(
    tmp_path: Path,
) -> None:
    store = LocalStore(journal=Journal.open(tmp_path, "q"))
    raw = FakeDelivery(request(conv(), "poison"), [])
    for attempt in range(2):
        process = await Process(store, journal=raw.journal, max_deliveries=2).open()
        process.take(raw if attempt == 0 else raw.copy())
        await until(lambda p=process, n=attempt + 1: [h for h, _ in p.journal].count("run") == n)
        await process.crash()
    last = await Process(store, journal=raw.journal, max_deliveries=2).open()
    copy = raw.copy()
    await within(last.take(copy))
    assert copy.settled == ["reject"]  # dead-lettered
    (event,) = last.events.events
    assert isinstance(event, FailedEvent) and event.code is ErrorCode.INTERNAL
    assert not event.retryable
    assert last.answers.refused == [("poison", ErrorCode.INTERNAL)]
    assert [h for h, _ in raw.journal].count("run") == 2


async def test_start_counts_survive_a_crash_through_the_journal(tmp_path: Path) -> None:
    journal: Journal_ = []
    first_store = LocalStore(journal=Journal.open(tmp_path, "q"))
    raw = FakeDelivery(request(conv(), "p"), journal)
    for attempt in range(2):
        # Each process has a fresh store read from the journal, as after a real crash.
        store = first_store if attempt == 0 else LocalStore(journal=Journal.open(tmp_path, "q"))
        process = await Process(store, journal=journal, max_deliveries=2).open()
        process.take(raw if attempt == 0 else raw.copy())
        await until(lambda p=process, n=attempt + 1: [h for h, _ in p.journal].count("run") == n)
        await process.crash()
        assert store.journal is not None
        store.journal.close()
    last = await Process(
        LocalStore(journal=Journal.open(tmp_path, "q")), journal=journal, max_deliveries=2
    ).open()
    copy = raw.copy()
    await within(last.take(copy))
    assert copy.settled == ["reject"]


# -- item 2: exactly one final event, ack after it -----------------------------------------


async def test_the_ack_comes_after_the_final_event_even_when_publishing_is_retried() -> None:
    process = await Process(LocalStore()).open()
    process.events.fail_events = 2
    raw = FakeDelivery(request(conv()), process.journal)
    process.answers.gate(raw.mid).set()
    await within(process.take(raw))
    assert len(process.events.for_id(raw.mid)) == 1
    assert process.journal[-2:] == [("event", raw.mid), ("ack", raw.mid)]


async def test_a_failed_reply_to_copy_does_not_republish_the_event() -> None:
    process = await Process(LocalStore()).open()
    process.events.fail_replies = 2
    raw = FakeDelivery(request(conv()), process.journal, reply_to="replies")
    process.answers.gate(raw.mid).set()
    await within(process.take(raw))
    assert len(process.events.for_id(raw.mid)) == 1
    assert process.events.replies == [("replies", raw.mid)]
    assert raw.settled == ["ack"]


async def test_a_final_event_that_cannot_be_published_is_left_unacked_for_the_copy() -> None:
    process = await Process(LocalStore(), patience=0.3).open()
    process.events.fail_events = 1000
    raw = FakeDelivery(request(conv()), process.journal)
    process.answers.gate(raw.mid).set()
    await within(process.take(raw))
    assert raw.settled == [] and not process.events.events
    # The broker is back and redelivers: the copy publishes the same event, without a run.
    process.events.fail_events = 0
    copy = raw.copy()
    await within(process.take(copy))
    assert len(process.events.for_id(raw.mid)) == 1
    assert copy.settled == ["ack"]
    assert [h for h, _ in process.journal].count("run") == 1


async def test_racing_copies_publish_the_pending_final_event_once() -> None:
    process = await Process(LocalStore(), patience=0.3).open()
    raw = FakeDelivery(request(conv()), process.journal)
    process.take(raw)
    await until(running(process, raw.mid))
    copies = [raw.copy(), raw.copy()]
    for copy in copies:
        assert isinstance(process.deliver(copy), Copy)
        process.settle(copy)
    process.events.fail_events = 2  # the original gives up (patience), a copy gets through
    process.answers.gate(raw.mid).set()
    await within(asyncio.gather(*process.tasks))
    assert len(process.events.for_id(raw.mid)) == 1
    assert [c.settled for c in copies] == [["ack"], ["ack"]]
    assert [h for h, _ in process.journal].count("run") == 1


async def test_a_copy_delivered_while_the_request_runs_is_settled_without_a_second_run() -> None:
    process = await Process(LocalStore()).open()
    raw = FakeDelivery(request(conv()), process.journal)
    process.take(raw)
    await until(running(process, raw.mid))
    copy = raw.copy()
    assert isinstance(process.deliver(copy), Copy)
    process.settle(copy)
    process.answers.gate(raw.mid).set()
    await within(asyncio.gather(*process.tasks))
    assert [h for h, _ in process.journal].count("run") == 1
    assert len(process.events.events) == 1
    assert raw.settled == ["ack"] and copy.settled == ["ack"]


async def test_a_copy_on_another_process_waits_for_the_live_run_and_never_runs() -> None:
    store = LocalStore()
    a, b = await Process(store).open(), await Process(store).open()
    raw = FakeDelivery(request(conv()), a.journal)
    a.take(raw)
    await until(running(a, raw.mid))
    copy = raw.copy()
    b_task = b.take(copy)
    # A sentinel on b runs to its end while b's copy polls the run record: it must not run.
    sentinel = FakeDelivery(request(conv()), b.journal)
    b.answers.gate(sentinel.mid).set()
    await within(b.take(sentinel))
    await asyncio.sleep(0.05)  # a few more polls of the copy (poll interval 0.02 s)
    assert b.journal == [("run", sentinel.mid), ("event", sentinel.mid), ("ack", sentinel.mid)]
    assert not b_task.done()
    a.answers.gate(raw.mid).set()
    await within(b_task)
    assert copy.settled == ["ack"] and len(b.events.events) == 1  # the sentinel's
    assert len(a.events.events) == 1


async def test_a_copy_of_a_request_whose_process_died_runs_it_once_more() -> None:
    store = LocalStore()
    a, b = await Process(store).open(), await Process(store).open()
    raw = FakeDelivery(request(conv()), [])
    a.take(raw)
    await until(running(a, raw.mid))
    copy = raw.copy()
    b.take(copy)
    await a.crash()
    await until(running(b, raw.mid))
    b.answers.gate(raw.mid).set()
    await within(asyncio.gather(*b.tasks))
    assert copy.settled == ["ack"] and len(b.events.events) == 1


async def test_a_redelivered_copy_of_a_finished_request_is_acked_without_a_run() -> None:
    store = LocalStore()
    a = await Process(store).open()
    raw = FakeDelivery(request(conv()), a.journal)
    a.answers.gate(raw.mid).set()
    await within(a.take(raw))
    b = await Process(store).open()
    copy = raw.copy()
    await within(b.take(copy))
    assert copy.settled == ["ack"] and not b.events.events and not b.journal


async def test_a_fresh_publish_of_a_finished_message_id_runs_again() -> None:
    process = await Process(LocalStore()).open()
    raw = FakeDelivery(request(conv()), process.journal)
    process.answers.gate(raw.mid).set()
    await within(process.take(raw))
    again = FakeDelivery(dict(raw.body), process.journal)
    await within(process.take(again))
    assert len(process.events.for_id(raw.mid)) == 2


async def test_a_fresh_publish_arriving_while_the_first_one_is_being_acked_runs_again() -> None:
    process = await Process(LocalStore()).open()
    process.events.fail_events = 1  # holds the first one in its publishing step for a while
    raw = FakeDelivery(request(conv()), process.journal)
    process.answers.gate(raw.mid).set()
    first = process.take(raw)
    await until(lambda: process.deliveries.held.get(raw.mid) is not None)
    await until(lambda: process.deliveries.held.get(raw.mid).final is not None)  # type: ignore[union-attr]
    again = FakeDelivery(dict(raw.body), process.journal)
    assert isinstance(process.deliver(again), Accepted)
    process.settle(again)
    await within(asyncio.gather(first, *process.tasks))
    assert len(process.events.for_id(raw.mid)) == 2
    assert [h for h, _ in process.journal].count("run") == 2
    assert raw.settled == ["ack"] and again.settled == ["ack"]


# -- item 3: nothing hangs unacked ---------------------------------------------------------


async def test_a_bug_in_the_run_ends_with_one_internal_event_and_the_ack() -> None:
    process = await Process(LocalStore()).open()
    raw = FakeDelivery(request(conv()), process.journal)
    process.answers.raises[raw.mid] = RuntimeError("bug in a hook")
    process.answers.gate(raw.mid).set()
    await within(process.take(raw))
    (event,) = process.events.events
    assert isinstance(event, FailedEvent) and event.code is ErrorCode.INTERNAL
    assert raw.settled == ["ack"]


async def test_a_failing_store_still_ends_the_request_once() -> None:
    class BrokenStore(LocalCoordinator):
        async def record_start(self, message_id: str) -> int:
            raise ConnectionError("store away")

    store = LocalStore()
    process = await Process(store, coordinator=BrokenStore(store)).open()
    raw = FakeDelivery(request(conv()), process.journal)
    await within(process.take(raw))
    (event,) = process.events.events
    assert isinstance(event, FailedEvent) and event.code is ErrorCode.INTERNAL
    assert raw.settled == ["ack"]
    assert not process.deliveries.held and not process.deliveries.busy(raw.body["channel"])


async def test_a_delivery_that_never_reached_the_handler_still_ends() -> None:
    process = await Process(LocalStore()).open()
    raw = FakeDelivery(request(conv()), process.journal)
    process.deliver(raw)
    process.deliveries.abandon(raw)  # type: ignore[arg-type]
    await until(lambda: raw.settled == ["ack"])
    (event,) = process.events.events
    assert isinstance(event, FailedEvent) and event.code is ErrorCode.INTERNAL


# -- item 4: order under a burst -----------------------------------------------------------


async def test_turns_follow_arrival_order_whatever_order_the_tasks_run_in() -> None:
    process = await Process(LocalStore()).open()
    conversations = [conv() for _ in range(60)]
    deliveries = [
        FakeDelivery(request(c, f"{c}-{i}"), process.journal)
        for i in range(3)
        for c in conversations
    ]
    for raw in deliveries:  # arrivals in delivery order, synchronously
        process.deliver(raw)
        process.answers.gate(raw.mid).set()
    shuffled = deliveries[:]
    random.Random(7).shuffle(shuffled)
    for raw in shuffled:  # the tasks then race
        process.settle(raw)
        await asyncio.sleep(0)
    await within(asyncio.gather(*process.tasks), timeout=20)
    runs = [m for how, m in process.journal if how == "run"]
    for c in conversations:
        assert [m for m in runs if m.startswith(c)] == [f"{c}-0", f"{c}-1", f"{c}-2"]


async def test_one_run_at_a_time_per_conversation() -> None:
    process = await Process(LocalStore()).open()
    c = conv()
    first, second = (FakeDelivery(request(c), process.journal) for _ in range(2))
    process.take(first)
    process.take(second)
    await until(running(process, first.mid))
    # A sentinel on another conversation runs to its end: the second had every chance to start.
    sentinel = FakeDelivery(request(conv()), process.journal)
    process.answers.gate(sentinel.mid).set()
    await within(process.take(sentinel))
    assert not running(process, second.mid)()
    held = process.deliveries.held.get(second.mid)
    assert held is not None and held.state is HeldState.WAITING
    process.answers.gate(first.mid).set()
    await until(running(process, second.mid))
    process.answers.gate(second.mid).set()
    await within(asyncio.gather(*process.tasks))


# -- item 5: shutdown ----------------------------------------------------------------------


async def test_shutdown_grace_zero_ends_running_requests_at_once() -> None:
    process = await Process(LocalStore()).open()
    raw = FakeDelivery(request(conv()), process.journal)
    process.take(raw)
    await until(running(process, raw.mid))
    started = time.monotonic()
    await within(process.deliveries.shutdown(grace=0), timeout=3)
    assert time.monotonic() - started < 2
    (event,) = process.events.events
    assert isinstance(event, FailedEvent) and event.code is ErrorCode.CANCELLED
    assert event.retryable
    assert raw.settled == ["ack"]


async def test_a_request_arriving_during_shutdown_is_returned_untouched() -> None:
    stopped: list[bool] = []

    async def stop_consuming() -> None:
        stopped.append(True)

    process = await Process(LocalStore(), stop_consuming=stop_consuming).open()
    await process.deliveries.shutdown(grace=1)
    assert stopped == [True]
    raw = FakeDelivery(request(conv()), process.journal)
    assert isinstance(process.deliver(raw), Returned)
    await within(process.settle(raw))
    assert raw.settled == ["nack-requeue"] and not process.events.events


# -- the hooks for cancel ------------------------------------------------------------------


async def test_ending_a_waiting_request_sends_its_final_event_without_running_it() -> None:
    process = await Process(LocalStore()).open()
    c = conv()
    first, second = (FakeDelivery(request(c), process.journal) for _ in range(2))
    process.take(first)
    arrival = process.deliver(second)
    process.settle(second)
    assert isinstance(arrival, Accepted)
    await until(running(process, first.mid))
    assert [h.message_id for h in process.deliveries.held.matching(channel=c)] == [
        first.mid,
        second.mid,
    ]
    cancelled = ServiceError(ErrorCode.CANCELLED, "Cancelled", retryable=False)
    assert process.deliveries.end(arrival.held, cancelled)
    assert not process.deliveries.end(arrival.held, cancelled)  # once
    await until(lambda: second.settled == ["ack"])
    assert process.answers.refused == [(second.mid, ErrorCode.CANCELLED)]
    assert not running(process, second.mid)()
    process.answers.gate(first.mid).set()
    await within(asyncio.gather(*process.tasks))


async def test_ending_a_running_request_cancels_its_run_and_acks_after_one_event() -> None:
    process = await Process(LocalStore()).open()
    raw = FakeDelivery(request(conv()), process.journal)
    process.take(raw)
    await until(running(process, raw.mid))
    (held,) = process.deliveries.held.matching(message_id=raw.mid)
    assert held.state is HeldState.RUNNING
    cancelled = ServiceError(ErrorCode.CANCELLED, "Cancelled", retryable=False)
    assert process.deliveries.end(held, cancelled)
    await within(asyncio.gather(*process.tasks))
    (event,) = process.events.events
    assert isinstance(event, FailedEvent) and event.code is ErrorCode.CANCELLED
    assert not event.retryable
    assert raw.settled == ["ack"]


# -- the cancel path through the real final-event assembly ----------------------------------


class ListHub:
    """A hub that keeps the payloads it is given."""

    payload_mode = "full"

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def subscribe(self, channel: str) -> None:
        pass

    def send(self, channel: str, payload: dict[str, Any]) -> None:
        self.payloads.append(payload)

    def unsubscribe(self, channel: str) -> None:
        pass

    async def drain(self, channel: str, timeout: float) -> bool:
        return True


class HalfAnswer:
    """A backend that streams some text, then waits until it is cancelled."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def run(self, thread_id: str, message: str, handler: Any, *, text_started: Any) -> Any:
        await handler.on_text_delta("half an ")
        await handler.on_text_delta("answer")
        try:
            await asyncio.Event().wait()
        finally:
            self.closed.set()


async def test_a_cancelled_run_closes_its_stream_and_ends_with_the_cancel_and_its_text() -> None:
    from service.assistant.runner import Runner
    from service.handlers.answer import RequestAnswers, StreamingOptions

    hub, backend, journal = ListHub(), HalfAnswer(), []
    events = RecordingEvents(journal)
    coordinator = LocalCoordinator(LocalStore())
    await coordinator.open()
    deliveries = Deliveries(
        answers=RequestAnswers(
            runner=Runner(backend, run_timeout=30),
            hub=hub,
            options=StreamingOptions(flush_ms=0, flush_chars=1, hub_send_timeout=1),
        ),
        events=events,
        coordinator=coordinator,
    )
    raw = FakeDelivery(request(conv()), journal)
    deliveries.arrive(ChatRequest.model_validate(raw.body), raw)  # type: ignore[arg-type]
    task = asyncio.create_task(deliveries.settle(raw))  # type: ignore[arg-type]
    await until(lambda: any(p.get("delta") == "answer" for p in hub.payloads))
    (held,) = deliveries.held.matching(message_id=raw.mid)
    cancelled = ServiceError(ErrorCode.CANCELLED, "Cancelled by the user", retryable=False)
    assert deliveries.end(held, cancelled)
    await within(task)
    assert backend.closed.is_set()  # the model stream was closed
    final = hub.payloads[-1]
    assert final["final_message"] and final["error"] == {"code": "cancelled", "retryable": False}
    assert [p["final_message"] for p in hub.payloads].count(True) == 1
    (event,) = events.events
    assert isinstance(event, FailedEvent)
    assert (event.code, event.retryable, event.text) == (
        ErrorCode.CANCELLED,
        False,
        "half an answer",
    )
    assert raw.settled == ["ack"] and journal[-2:] == [("event", raw.mid), ("ack", raw.mid)]


class EndsAtItsStart(LocalCoordinator):
    """Ends the request as its start is recorded, so the end lands after its run task exists
    but before that task's first step (a cancel arriving in that instant)."""

    deliveries: Deliveries | None = None

    async def record_start(self, message_id: str) -> int:
        count = await super().record_start(message_id)
        cancelled = ServiceError(ErrorCode.CANCELLED, "Cancelled", retryable=False)

        def end() -> None:
            assert self.deliveries is not None
            (held,) = self.deliveries.held.matching(message_id=message_id)
            assert held.run is not None and self.deliveries.end(held, cancelled)

        asyncio.get_running_loop().call_soon(end)
        return count


async def test_a_request_ended_before_its_run_takes_a_step_still_sends_its_error_payload() -> None:
    store = LocalStore()
    coordinator = EndsAtItsStart(store)
    process = await Process(store, coordinator=coordinator).open()
    coordinator.deliveries = process.deliveries
    raw = FakeDelivery(request(conv()), process.journal)
    process.take(raw)
    await within(asyncio.gather(*process.tasks))
    # The run never started, so it ends as a request that never ran: its error payload alone
    # (not a failed event the hub never heard of), one failed event, then the ack.
    assert process.answers.refused == [(raw.mid, ErrorCode.CANCELLED)]
    (event,) = process.events.events
    assert isinstance(event, FailedEvent) and event.code is ErrorCode.CANCELLED
    assert raw.settled == ["ack"]
