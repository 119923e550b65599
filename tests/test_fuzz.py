"""Bad input at volume: over a thousand malformed bodies mixed with valid requests."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import Fakes, start_stack
from tests.harness import rss_mb

pytestmark = pytest.mark.asyncio(loop_scope="session")

INVALID = 1000
VALID = 60


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def malformed(rng: random.Random) -> tuple[bytes, str | None]:
    """One definitely-invalid body and its content type."""
    channel = f"conv_fz_{rng.randrange(10**9)}"
    makers: list[Callable[[], tuple[bytes, str | None]]] = [
        lambda: (rng.randbytes(rng.randrange(1, 400)), "application/json"),
        lambda: (b"{" + rng.randbytes(20), None),
        lambda: (json.dumps({"message": rng.randrange(10**6), "channel": channel}).encode(), None),
        lambda: (json.dumps({"message": ["a"], "channel": channel}).encode(), "application/json"),
        lambda: (json.dumps({"message": None, "channel": channel}).encode(), "application/json"),
        lambda: (json.dumps({"message": "hi", "channel": rng.randrange(99)}).encode(), None),
        lambda: (json.dumps({"message": "hi"}).encode(), "application/json"),
        lambda: (json.dumps({"message": "x" * 32_001, "channel": channel}).encode(), None),
        lambda: (json.dumps({"message": "y" * 1_200_000, "channel": channel}).encode(), None),
        lambda: (_nested(rng.choice([50, 1_000, 100_000])), "application/json"),
        lambda: (b'{"message": "a\\udc00b", "channel": "%s"}' % channel.encode(), None),
        lambda: (json.dumps({"message": "hi", "channel": "conv\u200b" + channel}).encode(), None),
        lambda: (
            json.dumps({"message": "\u202e\u0000 ", "channel": "ch/" + channel}).encode(),
            None,
        ),
        lambda: (json.dumps({"message": "hi", "channel": channel, "metadata": [1]}).encode(), None),
        lambda: (
            json.dumps({"message": "hi", "channel": channel, "metadata": {"": "v"}}).encode(),
            None,
        ),
        lambda: (json.dumps({"message": "hi", "channel": channel}).encode(), "text/plain"),
        lambda: (json.dumps({"message": "hi", "channel": channel}).encode(), "application/xml"),
        lambda: (b"\xef\xbb\xbf" + rng.randbytes(10), None),
        lambda: (json.dumps("just a string").encode(), None),
        lambda: (b"", "application/json"),
    ]
    return rng.choice(makers)()


async def test_a_thousand_malformed_bodies_are_dead_lettered_and_valid_ones_complete(
    fakes: Fakes, log_dir: Path
) -> None:
    rng = random.Random(20261124)
    async with start_stack(fakes, log_dir, "responses", MAX_CONCURRENCY=64) as stack:
        channel = await stack.broker.connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(stack.names.exchange, ensure=False)
        valid_ids: list[str] = []
        invalid_ids: list[str] = []
        for i in range(INVALID + VALID):
            if i % ((INVALID + VALID) // VALID) == 0 and len(valid_ids) < VALID:
                mid = f"ok-{i}"
                body = json.dumps(
                    {"message": f"fuzz valid {i} ünïcødé ✓", "channel": stack.new_thread()}
                ).encode()
                valid_ids.append(mid)
                content_type: str | None = "application/json"
            else:
                mid = f"fz-{i}"
                body, content_type = malformed(rng)
                invalid_ids.append(mid)
            await exchange.publish(
                aio_pika.Message(body, content_type=content_type, message_id=mid),
                routing_key=stack.names.routing_key,
            )
        await channel.close()

        wanted = set(valid_ids) | set(invalid_ids)
        await stack.broker.wait_until(
            lambda: wanted <= {e.get("message_id") for e in stack.broker.events},
            timeout=120,
            what="an event for every message",
        )
        by_id = Counter(e["message_id"] for e in stack.broker.events)
        assert all(by_id[mid] == 1 for mid in wanted), "exactly one final event each"
        events = {e["message_id"]: e for e in stack.broker.events}
        assert {events[mid]["code"] for mid in invalid_ids} == {"invalid_request"}
        assert {events[mid]["event"] for mid in valid_ids} == {"completed"}

        for _ in range(300):
            dead, _ = await stack.broker.queue_state(stack.names.failed_queue)
            if dead >= len(invalid_ids):
                break
            await asyncio.sleep(0.1)
        assert dead == len(invalid_ids)
        assert rss_mb(stack.service.pid) < 300
        ready, consumers = await stack.broker.queue_state()
        assert ready == 0 and consumers == 1
