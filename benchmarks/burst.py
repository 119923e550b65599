"""Burst: N requests published at once; how soon does each one's first payload reach the hub?

Two sides, in the same run, against the same broker and hub:

- **minimal consumer** (`benchmarks/minimal.py`): aio-pika with the same prefetch, one hub frame
  per message, no model call: the lower bound for a broker hop plus a hub frame;
- **service**: `faststream run service.app:app`, answering a short scripted stream.

Measured from each request's publish: to its first payload (`started`) and, for the service, to
its first text payload. The target (issue 16): service `started` p99 <= 2 x the minimal
consumer's p99.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import aio_pika

from benchmarks import metrics, workload
from benchmarks.registry import Context, scenario
from benchmarks.service import fresh_names, publish_back_to_back
from tests.harness import RABBITMQ_URL, ROOT, Broker

CONVERSATIONS = {"full": 200, "quick": 50, "smoke": 8}
TOKENS, INTERVAL = 5, 0.02  # a short answer: the burst is about starting, not streaming


def _size(ctx: Context) -> int:
    return CONVERSATIONS["smoke" if ctx.smoke else "quick" if ctx.quick else "full"]


def shape(ctx: Context) -> workload.Scenario:
    n = _size(ctx)
    return workload.Scenario(
        "burst", "(burst)", n, TOKENS, INTERVAL, max_concurrency=n, at_once=True
    )


@scenario(
    "burst",
    "200 requests published at once: publish -> started / first text, vs a minimal consumer",
    smoke=True,
)
async def burst(ctx: Context) -> dict[str, Any]:
    load = shape(ctx)
    minimal = await minimal_side(ctx, load.conversations, load.prefetch)
    service = (await ctx.service_side(load)).as_dict()
    keys = [
        "completed",
        "first_payload_p50_ms",
        "first_payload_p99_ms",
        "first_text_p50_ms",
        "first_text_p99_ms",
        "cpu_s",
        "peak_rss_mb",
    ]
    ctx.table({"service": service, "minimal": minimal}, keys)
    ratio_p50 = metrics.ratio(service["first_payload_p50_ms"], minimal["first_payload_p50_ms"])
    ratio_p99 = metrics.ratio(service["first_payload_p99_ms"], minimal["first_payload_p99_ms"])
    print(f"  started p50 ratio {ratio_p50}, p99 ratio {ratio_p99} (service / minimal)")
    return {
        "scenario": {"conversations": load.conversations, "tokens": TOKENS, "interval": INTERVAL},
        "service": service,
        "minimal": minimal,
        "ratios": {"started_p50": ratio_p50, "started_p99": ratio_p99},
        "targets": [
            ctx.target(
                "all complete",
                f"{load.conversations} completed",
                service["completed"],
                service["completed"] == load.conversations
                and minimal["completed"] == load.conversations,
            ),
            ctx.target(
                "publish -> started p99",
                "<= 2 x the minimal consumer's",
                f"{ratio_p99} x",
                ratio_p99 is not None and ratio_p99 <= 2,
            ),
        ],
    }


async def minimal_side(ctx: Context, n: int, prefetch: int) -> dict[str, Any]:
    """Run the minimal consumer on fresh names; publish → its frame, p50/p99, and its CPU."""
    ctx.fakes.reset()
    names = fresh_names()
    broker = await Broker.open(names)
    process: asyncio.subprocess.Process | None = None
    try:
        channel = await broker.connection.channel(publisher_confirms=False)
        exchange = await channel.declare_exchange(
            names.exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        # The service's queue arguments: a priority queue costs the broker a little more.
        queue = await channel.declare_queue(
            names.queue,
            durable=True,
            arguments={"x-max-priority": 10, "x-message-ttl": 3_600_000},
        )
        await queue.bind(exchange, routing_key=names.routing_key)
        config = {
            "rabbitmq_url": RABBITMQ_URL,
            "queue": names.queue,
            "prefetch": prefetch,
            "hub_uri": ctx.fakes.hub_uri,
            "expected": n + 1,
            "timeout": 120,
            "loop": ctx.bench.loop,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.minimal",
            json.dumps(config),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if line.strip() != b"ready":
            err = await process.stderr.read() if process.stderr else b""
            raise RuntimeError(f"minimal consumer did not start: {line!r} {err[-2000:]!r}")
        prefix = f"conv_{names.prefix}"

        async def publish(channel_name: str) -> None:
            body = json.dumps(
                {"message": "hi", "channel": channel_name, "message_id": channel_name}
            )
            await exchange.publish(
                aio_pika.Message(body.encode(), content_type="application/json"),
                routing_key=names.routing_key,
            )

        await publish(f"{prefix}_warmup")
        await asyncio.to_thread(ctx.fakes.hub.call, ("collect", 1, 10.0), 70)
        published: dict[str, float] = {}
        await publish_back_to_back(
            exchange,
            names.routing_key,
            [
                (ch, json.dumps({"message": "hi", "channel": ch, "message_id": ch}).encode())
                for ch in (f"{prefix}_{conv}" for conv in range(n))
            ],
            published,
        )
        out, err = await asyncio.wait_for(process.communicate(), 150)
        if process.returncode != 0:
            raise RuntimeError(f"minimal consumer failed:\n{err.decode(errors='replace')[-3000:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        hub = await asyncio.to_thread(ctx.fakes.hub.call, ("collect", n + 1, 10.0), 70)
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await broker.cleanup()
    first: dict[str, float] = {}
    for channel_name, at, *_ in hub:
        if channel_name in published:
            first.setdefault(channel_name, at)
    waits = [first[c] - published[c] for c in first]
    return {
        "completed": len(first),
        "first_payload_p50_ms": _ms(metrics.percentile(waits, 50)),
        "first_payload_p99_ms": _ms(metrics.percentile(waits, 99)),
        "first_text_p50_ms": None,
        "first_text_p99_ms": None,
        "cpu_s": round(result["cpu_seconds"], 3),
        "peak_rss_mb": round(result["peak_rss_bytes"] / 2**20, 1),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)
