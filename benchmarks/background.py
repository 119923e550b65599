"""Background responses (contract §12): what a crash costs, and what recording state costs.

    python -m benchmarks.background [--crashes 4] [--tokens 2000] [--out PATH]

1. **Recording state, per token** (in-process, no service): one request's deltas go through the
   real `HubStreamer` at ~1,000 tokens/s into a hub that drops them, without a checkpoint
   (baseline), with the in-process store, and with Redis (REDIS_URL, default local). Reported:
   CPU µs per token above the baseline, state writes, writes per token, mean write latency.
   Also with `DELTA_FLUSH_MS=0` (a payload per delta: the group commit is all that batches).
2. **A crash** (two service processes on one queue, one SIGKILLed at a random point of a
   100-token answer): tokens the fake model generated for the request (goal: the answer's
   length), and the time from the kill to the next payload on the hub; with
   OPENAI_BACKGROUND=true and, for contrast, false (version 1: the other replica starts over).

Writes `benchmarks/results/background.json` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from service.coordination.reattach import (
    InProcessReattachStore,
    ReattachStore,
    RedisReattachStore,
    RunCheckpoint,
)
from service.sinks.checkpointed_hub import CheckpointedHub
from service.sinks.hub import Hub
from service.sinks.streamer import HubStreamer

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
LEASE_TTL = 2  # the cluster's takeover time after a SIGKILL (README "Running replicas")
RESULTS = Path(__file__).parent / "results" / "background.json"


class _NullHub:
    payload_mode: Literal["full", "compact"] = "full"

    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    def send(self, channel: str, payload: dict[str, Any]) -> None: ...

    async def drain(self, channel: str, timeout: float) -> bool:
        return True


async def _one_stream(
    tokens: int, store: ReattachStore | None, flush_ms: int
) -> tuple[float, RunCheckpoint | None]:
    """CPU seconds to stream `tokens` deltas (~1,000/s) through the streamer."""
    message_id = f"bench-{uuid.uuid4().hex[:8]}"
    checkpoint = RunCheckpoint(message_id, store) if store is not None else None
    hub: Hub = _NullHub() if checkpoint is None else CheckpointedHub(_NullHub(), checkpoint)
    streamer = HubStreamer(
        hub, channel="c", message_id=message_id, thread_id="c", flush_ms=flush_ms
    )
    if checkpoint is not None:
        checkpoint.bind(streamer)
    cpu = time.process_time()
    streamer.start()
    if checkpoint is not None:
        await checkpoint.begin_turn(0, "resp_bench")
    for i in range(tokens):
        if checkpoint is not None:
            checkpoint.text_delta(0, i + 5, "tok ")
        await streamer.on_text_delta("tok ")
        if i % 4 == 3:
            await asyncio.sleep(0.004)  # ~1,000 tokens/s, in reads of 4 like a real stream
    await streamer.delivered(5)
    used = time.process_time() - cpu
    if checkpoint is not None:
        await checkpoint.forget()
    return used, checkpoint


async def recording_cost(tokens: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for flush_ms in (30, 0):
        baseline = min([(await _one_stream(tokens, None, flush_ms))[0] for _ in range(3)])
        row: dict[str, Any] = {"baseline_cpu_us_per_token": baseline / tokens * 1e6}
        for name in ("in-process", "redis"):
            store: ReattachStore
            if name == "redis":
                store = RedisReattachStore.from_url(
                    REDIS_URL, prefix=f"bench_{uuid.uuid4().hex[:6]}"
                )
            else:
                store = InProcessReattachStore()
            runs = [await _one_stream(tokens, store, flush_ms) for _ in range(3)]
            await store.close()
            cpu, checkpoint = min(runs, key=lambda r: r[0])
            assert checkpoint is not None
            row[name] = {
                "extra_cpu_us_per_token": max(0.0, (cpu - baseline) / tokens * 1e6),
                "writes": checkpoint.writes,
                "writes_per_token": checkpoint.writes / tokens,
                "mean_write_ms": checkpoint.write_seconds / max(1, checkpoint.writes) * 1000,
            }
        results[f"flush_ms={flush_ms}"] = row
    return results


async def crashes(count: int, background: bool) -> list[dict[str, Any]]:
    from tests.fakes.background import BackgroundLoop
    from tests.fakes.hub import RecordingHub
    from tests.fakes.openai_server import FakeOpenAI
    from tests.fakes.script import Text
    from tests.harness import RABBITMQ_URL, Broker, ServiceNames, service_env
    from tests.replicas import ReplicaGroup, delete_shard_queues

    loop = BackgroundLoop()
    loop.start()
    openai, hub = FakeOpenAI(), RecordingHub()
    loop.run(openai.start())
    loop.run(hub.start())
    names = ServiceNames.fresh("bgbench")
    broker = await Broker.open(names)
    logs = Path(tempfile.mkdtemp(prefix="bg-bench-"))
    env = service_env(
        names,
        {"OPENAI_BASE_URL": openai.base_url, "WEBSOCKET_URI": hub.uri},
        OPENAI_BACKGROUND=str(background).lower(),
        REDIS_URL=REDIS_URL,
        REPLICA_SHARDS=4,
        LEASE_TTL=LEASE_TTL,
        LOG_LEVEL="INFO",
    )
    group = ReplicaGroup(names, env, logs, 2)
    rows: list[dict[str, Any]] = []

    async def on_loop(coro: Any) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop.loop))

    rng = random.Random(7)
    try:
        await group.start_all()
        for n in range(count):
            t = uuid.uuid4().hex[:8]
            channel, message_id = f"conv_bench_{t}", f"bench-{t}"
            answer = [f"t{i} " for i in range(100)]
            chunks: list[str] = []
            openai.on_token = lambda chunk, _at, seen=chunks: seen.append(chunk)
            openai.script(f"crash {t}", [[Text(*answer, interval=0.02)]])
            await broker.publish(
                {"message": f"crash {t}", "channel": channel, "message_id": message_id}
            )
            at = rng.randint(2, 40)

            def texts(ch: str = channel) -> int:
                return sum(p["type"] == "response" for p in hub.payloads(ch))

            await on_loop(hub.wait_for(lambda n=at: texts() >= n, timeout=30))
            (victim,) = group.runs_of(message_id)
            killed = time.time()
            group.kill(victim)
            await on_loop(hub.wait_final(channel, timeout=30))
            after = [
                f.received_at for f in hub.frames if f.channel == channel and f.received_at > killed
            ]
            resumed = min(after)
            (survivor,) = [i for i in group.runs_of(message_id) if i != victim]
            accepted = _accepted_at(group[survivor].log_text(), message_id)
            await asyncio.sleep(0.2)  # a generation still going on shows in the count
            generated = len(chunks)
            rows.append(
                {
                    "killed_after_text_payloads": at,
                    "answer_tokens": len(answer),
                    "generated_tokens": generated,
                    "crash_to_next_payload_ms": (resumed - killed) * 1000,
                    # The takeover (the dead replica's shard lease expiring) is the cluster's;
                    # from the other replica's start of the request on it is re-attach (or rerun).
                    "takeover_ms": (accepted - killed) * 1000,
                    "start_to_next_payload_ms": (resumed - accepted) * 1000,
                }
            )
            await group.start(victim)
            print(f"  crash {n + 1}/{count} (background={background}): {rows[-1]}")
    finally:
        group.stop_all()
        await delete_shard_queues(RABBITMQ_URL, names.queue, 4)
        await broker.cleanup()
        await asyncio.to_thread(loop.run, openai.stop())
        await asyncio.to_thread(loop.run, hub.stop())
        await asyncio.to_thread(loop.stop)
    return rows


def _accepted_at(log: str, message_id: str) -> float:
    """Wall time of the last `accepted` milestone of `message_id` in a service log."""
    stamp = [line[:23] for line in log.splitlines() if "accepted" in line and message_id in line][
        -1
    ]
    return time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:]) / 1000


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "crashes": len(rows),
        "generated_per_answer_token": statistics.mean(
            r["generated_tokens"] / r["answer_tokens"] for r in rows
        ),
        "crash_to_next_payload_ms_median": statistics.median(
            r["crash_to_next_payload_ms"] for r in rows
        ),
        "crash_to_next_payload_ms_max": max(r["crash_to_next_payload_ms"] for r in rows),
        "start_to_next_payload_ms_median": statistics.median(
            r["start_to_next_payload_ms"] for r in rows
        ),
        "runs": rows,
    }


async def main(args: argparse.Namespace) -> None:
    print("recording state, per token ...")
    cost = await recording_cost(args.tokens)
    print(json.dumps(cost, indent=2))
    print("crashes ...")
    results: dict[str, Any] = {"recording_cost": cost}
    results["crash_background"] = _summary(await crashes(args.crashes, background=True))
    results["crash_v1"] = _summary(await crashes(args.crashes, background=False))
    for key in ("crash_background", "crash_v1"):
        s = results[key]
        print(
            f"{key}: generated/answer tokens {s['generated_per_answer_token']:.2f}, "
            f"crash -> next hub payload median {s['crash_to_next_payload_ms_median']:.0f} ms "
            f"(max {s['crash_to_next_payload_ms_max']:.0f} ms; from the other replica's start: "
            f"{s['start_to_next_payload_ms_median']:.0f} ms)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crashes", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    asyncio.run(main(parser.parse_args()))
