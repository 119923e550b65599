"""The coordination seam: one suite, run against the in-process store and against Redis.

Two coordinators stand for two processes (in-process: two owners of one store, as tests of
the reference; Redis: two clients). A process dies by `close()` without releasing anything.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.coordination import Claim, Coordinator
from service.coordination.local import Journal, LocalCoordinator, LocalStore
from service.coordination.redis import RedisCoordinator

pytestmark = pytest.mark.asyncio(loop_scope="session")

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LEASE = 0.4

Factory = Callable[[], Awaitable[Coordinator]]


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Opens coordinators that share one state (a fresh prefix per test); removes its keys."""
    made: list[Coordinator] = []
    prefix = f"test_coord_{uuid.uuid4().hex[:10]}"
    store = LocalStore()

    async def factory() -> Coordinator:
        coordinator: Coordinator
        if request.param == "local":
            coordinator = LocalCoordinator(store)
        else:
            coordinator = RedisCoordinator(
                Redis.from_url(REDIS_URL), prefix=prefix, lease_ttl=LEASE, poll_interval=0.02
            )
        await coordinator.open()
        made.append(coordinator)
        return coordinator

    yield factory
    async with asyncio.timeout(20):
        for coordinator in made:
            await coordinator.close()
        if request.param == "redis":
            client = Redis.from_url(REDIS_URL)
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def mid() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


# -- run records ---------------------------------------------------------------------------


async def test_a_run_is_claimed_once_while_its_owner_lives(make: Factory) -> None:
    a, b = await make(), await make()
    m = mid()
    assert await a.claim_run(m, redelivered=False) == Claim("claimed", starts=0)
    assert (await b.claim_run(m, redelivered=True)).status == "running"
    assert (await b.claim_run(m, redelivered=False)).status == "running"
    assert await b.running(m)


async def test_a_redelivered_copy_of_a_finished_run_is_recognised(make: Factory) -> None:
    a, b = await make(), await make()
    m = mid()
    await a.claim_run(m, redelivered=False)
    await a.record_start(m)
    await a.finish_run(m, None)
    assert await b.claim_run(m, redelivered=True) == Claim("finished", final=None)
    assert not await b.running(m)


async def test_a_fresh_publish_of_a_finished_message_id_runs_again(make: Factory) -> None:
    a, b = await make(), await make()
    m = mid()
    await a.claim_run(m, redelivered=False)
    await a.finish_run(m, None)
    assert await b.claim_run(m, redelivered=False) == Claim("claimed", starts=0)


async def test_an_unpublished_final_event_is_kept_until_published(make: Factory) -> None:
    a, b = await make(), await make()
    m = mid()
    await a.claim_run(m, redelivered=False)
    await a.finish_run(m, b'{"event":"failed"}')
    assert await b.claim_run(m, redelivered=True) == Claim("finished", final=b'{"event":"failed"}')
    await b.final_published(m)
    assert await b.claim_run(m, redelivered=True) == Claim("finished", final=None)


async def test_starts_without_finish_are_counted_across_owners(make: Factory) -> None:
    a, b = await make(), await make()
    m = mid()
    await a.claim_run(m, redelivered=False)
    assert await a.record_start(m) == 1
    await a.release_run(m)
    claim = await b.claim_run(m, redelivered=True)
    assert claim == Claim("claimed", starts=1)
    assert await b.record_start(m) == 2


async def test_a_run_returned_before_it_started_counts_nothing(make: Factory) -> None:
    a, b = await make(), await make()
    m = mid()
    for _ in range(5):  # five graceful restarts while it waited
        await a.claim_run(m, redelivered=True)
        await a.release_run(m)
    assert await b.claim_run(m, redelivered=True) == Claim("claimed", starts=0)


async def test_a_dead_owners_claim_expires_and_keeps_its_start_count(make: Factory) -> None:
    a, b = await make(), await make()
    m = mid()
    await a.claim_run(m, redelivered=False)
    await a.record_start(m)
    await a.close()  # the process dies: nothing released
    waited = await eventually(lambda: _claimed(b, m), timeout=LEASE * 3 + 1)
    assert waited <= LEASE * 3 + 1
    assert await b.record_start(m) == 2


async def _claimed(coordinator: Coordinator, message_id: str) -> bool:
    return (await coordinator.claim_run(message_id, redelivered=True)).status == "claimed"


async def test_a_live_owners_claim_never_expires(make: Factory) -> None:
    a, b = await make(), await make()
    m = mid()
    await a.claim_run(m, redelivered=False)
    deadline = time.monotonic() + LEASE * 3
    while time.monotonic() < deadline:  # three lease periods: the holder keeps renewing
        assert (await b.claim_run(m, redelivered=True)).status == "running"
        await asyncio.sleep(LEASE / 4)


# -- conversation turns --------------------------------------------------------------------


async def test_turns_run_one_at_a_time_in_the_order_they_joined(make: Factory) -> None:
    a, b = await make(), await make()
    conversation = f"conv_{uuid.uuid4().hex[:8]}"
    await a.join_turn(conversation, "t1")
    await b.join_turn(conversation, "t2")
    await a.join_turn(conversation, "t3")
    order: list[str] = []

    async def take(coordinator: Coordinator, ticket: str) -> None:
        await coordinator.wait_turn(conversation, ticket)
        order.append(ticket)
        await asyncio.sleep(0.02)
        await coordinator.leave_turn(conversation, ticket)

    await asyncio.wait_for(asyncio.gather(take(a, "t3"), take(b, "t2"), take(a, "t1")), timeout=10)
    assert order == ["t1", "t2", "t3"]
    assert not await a.busy(conversation)


async def test_heads_line_never_claims_a_place_that_does_not_head_the_line(make: Factory) -> None:
    a, b = await make(), await make()
    conversation = f"conv_{uuid.uuid4().hex[:8]}"
    await a.join_turn(conversation, "t1")
    await b.join_turn(conversation, "t2")
    assert not b.heads_line(conversation, "t2") and not a.heads_line(conversation, "t2")
    # In one process the answer is known at once (the delivery fast path); a shared store
    # only answers through `wait_turn`.
    assert a.heads_line(conversation, "t1") == isinstance(a, LocalCoordinator)
    await a.leave_turn(conversation, "t1")
    assert not a.heads_line(conversation, "t1")
    assert b.heads_line(conversation, "t2") == isinstance(b, LocalCoordinator)


async def test_a_conversation_is_busy_while_any_live_owner_is_in_its_line(make: Factory) -> None:
    a, b = await make(), await make()
    conversation = f"conv_{uuid.uuid4().hex[:8]}"
    assert not await b.busy(conversation)
    await a.join_turn(conversation, "t1")
    assert await b.busy(conversation)
    await a.leave_turn(conversation, "t1")
    await a.leave_turn(conversation, "t1")  # idempotent
    assert not await b.busy(conversation)


async def test_a_cancel_tombstone_is_seen_by_every_owner(make: Factory) -> None:
    a, b = await make(), await make()
    message_id = mid()
    assert not await b.was_cancelled(message_id)
    await a.mark_cancelled(message_id)
    assert await b.was_cancelled(message_id)
    assert not await b.was_cancelled(mid())


async def test_a_dead_owners_place_in_line_is_skipped(make: Factory) -> None:
    a, b = await make(), await make()
    conversation = f"conv_{uuid.uuid4().hex[:8]}"
    await a.join_turn(conversation, "dead")
    await b.join_turn(conversation, "next")
    await a.close()
    await asyncio.wait_for(b.wait_turn(conversation, "next"), timeout=LEASE * 3 + 1)
    assert await b.busy(conversation)
    await b.leave_turn(conversation, "next")
    assert not await b.busy(conversation)


# -- the local journal ---------------------------------------------------------------------


async def test_the_local_journal_survives_a_crash_of_the_process(tmp_path: Path) -> None:
    first = LocalCoordinator(LocalStore(journal=Journal.open(tmp_path, "q")))
    await first.open()
    await first.claim_run("started", redelivered=False)
    await first.record_start("started")
    await first.claim_run("done", redelivered=False)
    await first.record_start("done")
    await first.finish_run("done", None)
    await first.claim_run("waiting", redelivered=False)  # never started
    assert first.store.journal is not None
    first.store.journal.close()  # the process is gone: its lock is released

    second = LocalCoordinator(LocalStore(journal=Journal.open(tmp_path, "q")))
    await second.open()
    assert await second.claim_run("started", redelivered=True) == Claim("claimed", starts=1)
    assert await second.claim_run("done", redelivered=True) == Claim("finished")
    assert await second.claim_run("waiting", redelivered=True) == Claim("claimed", starts=0)


async def test_a_second_process_on_one_state_dir_takes_its_own_journal(tmp_path: Path) -> None:
    first = Journal.open(tmp_path, "q")
    second = Journal.open(tmp_path, "q")
    assert first.path != second.path
    second.close()
    third = Journal.open(tmp_path, "q")  # the second's file is free again
    assert third.path == second.path
    first.close()
    third.close()


async def test_the_local_state_stays_within_its_byte_bound(tmp_path: Path) -> None:
    bound = 200_000
    store = LocalStore(max_bytes=bound, journal=Journal.open(tmp_path, "q"))
    coordinator = LocalCoordinator(store)
    await coordinator.open()
    for i in range(5_000):
        message_id = f"m-{i:06d}-{'x' * 40}"
        await coordinator.claim_run(message_id, redelivered=False)
        await coordinator.record_start(message_id)
        await coordinator.finish_run(message_id, None)
    assert store.bytes_used <= bound
    assert len(store.runs) < 5_000
    assert store.journal is not None and store.journal.path.stat().st_size <= 2 * bound
    # The newest records are the ones kept.
    assert await coordinator.claim_run(f"m-004999-{'x' * 40}", redelivered=True) == Claim(
        "finished"
    )
