"""The bare loop: the limit the service is measured against.

The same parts as the service and nothing else: the `openai` SDK reading
`responses.create(stream=True)` and `websockets` sending each token to the hub as one frame,
over one shared connection. No broker, no validation, no coalescing, no events. It runs in its
own process so its CPU and memory are measured the way the service's are.

    python -m benchmarks.bare '<json config>'    # prints one JSON line of results
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

import httpx2
from openai import AsyncOpenAI
from openai.types.responses import ResponseTextDeltaEvent
from websockets.asyncio.client import connect

from benchmarks import procstat, workload

INSTRUCTIONS = "You are a helpful assistant."


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(config: dict[str, Any]) -> dict[str, Any]:
    scenario = workload.Scenario(**config["scenario"])
    prefix: str = config["prefix"]
    http = httpx2.AsyncClient(
        limits=httpx2.Limits(
            max_connections=None, max_keepalive_connections=2 * scenario.conversations
        ),
        timeout=httpx2.Timeout(300, connect=10.0, read=60),
    )
    client = AsyncOpenAI(
        api_key="sk-bench", base_url=config["base_url"], max_retries=0, http_client=http
    )
    starts: dict[str, float] = {}
    errors: list[str] = []

    async with connect(config["hub_uri"], max_queue=64, write_limit=2**16) as ws:

        async def one(conv: int, channel: str | None = None, text: str | None = None) -> None:
            channel = channel or f"{prefix}_{conv}"
            text = text or workload.message(
                conv, scenario.tokens, scenario.interval, scenario.delay
            )
            starts[channel] = time.time()
            seq = 0
            try:
                stream = await client.responses.create(
                    model="gpt-4o-mini",
                    instructions=INSTRUCTIONS,
                    conversation=channel,
                    input=[{"role": "user", "content": text}],
                    stream=True,
                )
                async for event in stream:
                    if isinstance(event, ResponseTextDeltaEvent):
                        payload = {"type": "response", "delta": event.delta, "seq": seq}
                        await ws.send(json.dumps({"channel": channel, "payload": payload}))
                        seq += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            final = {"type": "response", "final_message": True, "seq": seq}
            await ws.send(json.dumps({"channel": channel, "payload": final}))

        # Warm up first (lazy imports, first connection), like the service before it is measured.
        await one(workload.WARMUP_CONV, f"{prefix}_warmup", workload.WARMUP_MESSAGE)
        del starts[f"{prefix}_warmup"]
        cpu_before, began = _cpu(), time.time()
        if scenario.sequential:
            for conv in range(scenario.conversations):
                await one(conv)
        else:
            await asyncio.gather(*(one(conv) for conv in range(scenario.conversations)))
        ended, cpu_after = time.time(), _cpu()
    await client.close()
    return {
        "starts": starts,
        "errors": errors,
        "began": began,
        "ended": ended,
        "cpu_seconds": cpu_after - cpu_before,
        # VmHWM, as for the service (ru_maxrss would count the forking parent's memory too)
        "peak_rss_bytes": procstat.peak_rss_bytes(os.getpid()),
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    loop = config.get("loop", "asyncio")
    if loop == "uvloop":
        import uvloop

        result = uvloop.run(run(config))
    else:
        result = asyncio.run(run(config))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
