"""Start pacing (service/pacing.py): a burst's starts wait for arrivals to pause; a lone one does not."""

from __future__ import annotations

import asyncio

from service.pacing import StartPacer


async def test_a_request_arriving_alone_starts_at_once() -> None:
    pacer = StartPacer(quiet=0.05, max_wait=1.0)
    pacer.arrived()
    started = asyncio.get_running_loop().time()
    await pacer.wait()
    assert asyncio.get_running_loop().time() - started < 0.01


async def test_a_burst_starts_only_after_every_arrival_of_it() -> None:
    pacer = StartPacer(quiet=0.05, max_wait=2.0, per_turn=2)
    loop = asyncio.get_running_loop()
    order: list[str] = []

    async def request(n: int) -> None:
        pacer.arrived()
        order.append(f"arrived {n}")
        await pacer.wait()
        order.append(f"start {n}")

    first = asyncio.create_task(request(0))  # alone so far: starts at once
    await asyncio.sleep(0)
    burst = [asyncio.create_task(request(n)) for n in range(1, 6)]
    await asyncio.sleep(0.01)
    late = asyncio.create_task(request(6))  # still within the quiet window: still a burst
    began = loop.time()
    await asyncio.gather(first, *burst, late)
    assert order[:2] == ["arrived 0", "start 0"]
    starts = [entry for entry in order if entry.startswith("start")]
    # Every request of the burst arrived before any of them started, and they start in order.
    assert order.index("arrived 6") < order.index("start 1")
    assert starts == [f"start {n}" for n in range(7)]
    assert loop.time() - began >= 0.04  # held until the arrivals paused


async def test_a_start_never_waits_longer_than_max_wait() -> None:
    pacer = StartPacer(quiet=10.0, max_wait=0.05)
    loop = asyncio.get_running_loop()
    pacer.arrived()
    pacer.arrived()  # a burst, and arrivals never pause for 10 s
    began = loop.time()
    await asyncio.wait_for(pacer.wait(), 2)
    assert 0.04 <= loop.time() - began < 1.0


async def test_a_cancelled_waiter_does_not_hold_up_the_next() -> None:
    pacer = StartPacer(quiet=0.02, max_wait=1.0, per_turn=1)
    pacer.arrived()
    pacer.arrived()
    cancelled = asyncio.create_task(pacer.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    pacer.arrived()
    await asyncio.wait_for(pacer.wait(), 1)
    assert cancelled.cancelled()
