"""The minimal consumer: the lower bound for a broker hop plus a hub frame.

An aio-pika consumer with the service's prefetch that, for each request, decodes the JSON body,
sends one `started` frame to the hub (marked final, so the benchmark's hub knows the request is
done) over one shared `websockets` connection, and acks. No model call, no validation, no
events. It runs in its own process, measured the way the service is.

    python -m benchmarks.minimal '<json config>'   # prints "ready", then one JSON line at the end
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from websockets.asyncio.client import connect

from benchmarks import procstat


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(config: dict[str, Any]) -> dict[str, Any]:
    expected: int = config["expected"]
    done = asyncio.Event()
    handled = 0
    connection = await aio_pika.connect(config["rabbitmq_url"])
    async with connect(config["hub_uri"], max_queue=64, write_limit=2**16) as ws:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=config["prefetch"])
        queue = await channel.get_queue(config["queue"], ensure=False)

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal handled
            request = json.loads(message.body)
            payload = {
                "type": "status",
                "status": "started",
                "message": "Request received",
                "final_message": True,
                "timestamp": time.time(),
                "seq": 0,
                "message_id": request.get("message_id"),
            }
            await ws.send(json.dumps({"channel": request["channel"], "payload": payload}))
            await message.ack()
            handled += 1
            if handled >= expected:
                done.set()

        cpu_before = 0.0
        await queue.consume(on_message)
        print("ready", flush=True)
        cpu_before = _cpu()
        await asyncio.wait_for(done.wait(), config["timeout"])
        cpu = _cpu() - cpu_before
    await connection.close()
    return {
        "handled": handled,
        "cpu_seconds": cpu,
        "peak_rss_bytes": procstat.peak_rss_bytes(os.getpid()),
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    if config.get("loop") == "uvloop":
        import uvloop

        result = uvloop.run(run(config))
    else:
        result = asyncio.run(run(config))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
