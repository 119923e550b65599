"""Cancel under load (contract §8): cancel → final payload latency, tokens generated after it.

    python -m benchmarks.cancel                     # 250 streams, 50 of them cancelled
    python -m benchmarks.cancel --streams 60 --cancels 20 --out /tmp   # quick

`--streams` answers stream at once (10 tokens/s each, long enough never to end by themselves
during the run) through the real service (`faststream run`, MAX_CONCURRENCY = streams), on the
fake OpenAI server and the recording hub (one background thread of this process). Once every
answer streams, `--cancels` of them are cancelled by message_id, one every `--spacing` s, so
that at least `streams - cancels` streams keep running throughout (200 with the defaults).

Measured per cancel: publish of the cancel → the hub receiving the request's final payload
(p50/p99/max); tokens the fake generated after the cancel was published (those already in
flight before the service closed the stream) and after the fake saw the stream closed (goal:
none). Results: `benchmarks/results/cancel.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika

from benchmarks.metrics import percentile
from benchmarks.service import fresh_names, resolve_loop, running_service, service_env
from tests.fakes.background import BackgroundLoop
from tests.fakes.hub import RecordingHub
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Text

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = 2000
INTERVAL = 0.1


async def run(args: argparse.Namespace, openai: FakeOpenAI, hub: RecordingHub) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    openai.script(
        f"cancel-bench {tag}", [[Text(*(f"t{i} " for i in range(TOKENS)), interval=INTERVAL)]]
    )
    names = fresh_names()
    env = service_env(
        names,
        openai_base_url=openai.base_url,
        hub_uri=hub.uri,
        max_concurrency=args.streams + 10,
        extra={"LOG_LEVEL": "WARNING"},
    )
    log_dir = Path(tempfile.mkdtemp(prefix="cancel-bench-"))
    async with running_service(env, names, log_dir, resolve_loop("auto")) as service:
        channels = [f"conv_cb{tag}_{i}" for i in range(args.streams)]
        for channel in channels:
            await service.publish(channel, f"cancel-bench {tag} {channel}")
        await _until(lambda: all(_streaming(hub, c) for c in channels), 120, "every stream running")
        chosen = channels[:: max(1, args.streams // args.cancels)][: args.cancels]
        cancelled_at: dict[str, float] = {}
        channel = await service.broker.connection.channel(publisher_confirms=False)
        exchange = await channel.get_exchange(names.exchange, ensure=False)
        for target in chosen:
            cancelled_at[target] = time.time()
            await exchange.publish(
                aio_pika.Message(json.dumps({"message_id": target}).encode()),
                routing_key=f"{names.routing_key}.cancel",
            )
            await asyncio.sleep(args.spacing)
        await _until(lambda: all(_ended(hub, c) for c in chosen), 60, "every cancel's end")
        running_after = sum(1 for c in channels if c not in chosen and not _ended(hub, c))

    finals = _finals(hub)
    latencies = [finals[c] - cancelled_at[c] for c in chosen]
    emitted = [float(_final_payload(hub, c)["timestamp"]) - cancelled_at[c] for c in chosen]
    codes = {str(_final_payload(hub, c).get("error", {}).get("code")) for c in chosen}
    streams = {s.conversation_id: s for s in openai.generation.streams()}
    in_flight = [streams[c].tokens_after(cancelled_at[c]) for c in chosen]
    after_close = [streams[c].after_close for c in chosen]
    unclosed = [c for c in chosen if streams[c].closed_at is None]

    def ms(p: float, values: list[float] = latencies) -> float | None:
        value = percentile(values, p)
        return None if value is None else round(value * 1000, 1)

    return {
        "streams": args.streams,
        "cancels": args.cancels,
        "spacing_s": args.spacing,
        "tokens_per_second_per_stream": 1 / INTERVAL,
        "streams_still_running_at_the_end": running_after,
        "final_codes": sorted(codes),
        "cancel_to_final_payload_ms": {"p50": ms(50), "p99": ms(99), "max": ms(100)},
        "cancel_to_final_payload_sent_by_service_ms": {
            "p50": ms(50, emitted),
            "p99": ms(99, emitted),
            "max": ms(100, emitted),
        },
        "goal_p99_ms": 200,
        "tokens_after_cancel_published": {
            "total": sum(in_flight),
            "max_per_stream": max(in_flight, default=0),
            "note": "generated between the cancel's publish and the stream's close: in flight",
        },
        "tokens_after_stream_closed": {"total": sum(after_close), "goal": 0},
        "streams_never_closed": len(unclosed),
        "machine": f"{platform.machine()} {platform.python_version()}, shared with other work",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _final_payload(hub: RecordingHub, channel: str) -> dict[str, Any]:
    finals = [p for p in hub.payloads(channel) if p.get("final_message")]
    return finals[0] if finals else {}


def _finals(hub: RecordingHub) -> dict[str, float]:
    """When the hub received each channel's final payload."""
    found: dict[str, float] = {}
    for frame in hub.frames:
        if isinstance(frame.payload, dict) and frame.payload.get("final_message"):
            found.setdefault(frame.channel, frame.received_at)
    return found


def _ended(hub: RecordingHub, channel: str) -> bool:
    payloads = hub.payloads(channel)
    return bool(payloads) and bool(payloads[-1].get("final_message"))


def _streaming(hub: RecordingHub, channel: str) -> bool:
    return any(p["type"] == "response" for p in hub.payloads(channel))


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: {what} not reached within {timeout} s")
        await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=250)
    parser.add_argument("--cancels", type=int, default=50)
    parser.add_argument("--spacing", type=float, default=0.04)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    loop = BackgroundLoop()
    loop.start()
    openai, hub = FakeOpenAI(record_requests=False), RecordingHub()
    openai.generation.enabled = True
    loop.run(openai.start())
    loop.run(hub.start())
    try:
        result = asyncio.run(run(args, openai, hub))
    finally:
        loop.run(openai.stop())
        loop.run(hub.stop())
        loop.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cancel.json").write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
