"""The fakes of a benchmark run, each in a process of its own.

Under load the fake OpenAI server and the hub cost CPU too; in their own processes they keep
their own event loops free, so neither delays the other's timestamps, and the measuring
process stays idle. Both stamp with `time.time()`, one system clock for every process:
a token's latency is the hub's receive time minus the fake's emit time.

The benchmark process drives each fake over a pipe: `reset`, `collect`, `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from benchmarks import workload

# (channel, received_at, type, status, final_message, delta or None)
HubRecord = tuple[str, float, str, str, bool, "str | None"]


@dataclass
class OpenAIRecords:
    """What the fake model did: when each token left, when each conversation's request came."""

    emitted: dict[str, float]  # token key -> time.time() right after it was written
    requests: dict[str, float]  # conversation id -> arrival of its first request


def _run_loop(main: Callable[[], Any]) -> None:
    try:
        import uvloop  # the fakes are not what is measured: give them the fastest loop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


async def _commands(conn: Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


def _serve_openai(conn: Connection) -> None:
    from tests.fakes.openai_server import FakeOpenAI

    async def main() -> None:
        fake = FakeOpenAI(record_requests=True)
        emitted: dict[str, float] = {}

        def on_token(chunk: str, at: float) -> None:
            emitted[chunk.strip()] = at

        fake.on_token = on_token
        fake.script(workload.MARK, [workload.model_turn])
        await fake.start()
        conn.send(fake.base_url)
        while True:
            command = await _commands(conn)
            if command == "collect":
                requests: dict[str, float] = {}
                for request in fake.requests:
                    body = request.body if isinstance(request.body, dict) else {}
                    conversation = body.get("conversation")
                    if isinstance(conversation, str):
                        requests.setdefault(conversation, request.at)
                conn.send(OpenAIRecords(dict(emitted), requests))
            elif command == "reset":
                emitted.clear()
                fake.reset()  # forgets the script too
                fake.script(workload.MARK, [workload.model_turn])
                conn.send(True)
            elif command == "stop":
                await fake.stop()
                conn.send(True)
                return

    _run_loop(main)


def _serve_hub(conn: Connection) -> None:
    from tests.fakes.hub import RecordingHub

    async def main() -> None:
        hub = RecordingHub()
        await hub.start()
        conn.send(hub.uri)
        while True:
            command = await _commands(conn)
            if isinstance(command, tuple) and command[0] == "collect":
                _, finals, timeout = command
                conn.send(await _collect(hub, finals, timeout))
            elif command == "reset":
                hub.reset()
                conn.send(True)
            elif command == "stop":
                await hub.stop()
                conn.send(True)
                return

    _run_loop(main)


async def _collect(hub: Any, finals: int, timeout: float) -> list[HubRecord]:
    """Every payload received, once `finals` final payloads arrived (or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        frames = hub.frames
        records: list[HubRecord] = []
        done = 0
        for frame in frames:
            payload = frame.payload
            if frame.channel == "subscription" or not isinstance(payload, dict):
                continue
            final = payload.get("final_message") is True
            done += final
            delta = payload.get("delta")
            records.append(
                (
                    frame.channel,
                    frame.received_at,
                    str(payload.get("type")),
                    str(payload.get("status")),
                    final,
                    delta if isinstance(delta, str) else None,
                )
            )
        if done >= finals or time.monotonic() >= deadline:
            return records
        await asyncio.sleep(0.05)


class FakeProcess:
    """One fake in a child process, driven over a pipe."""

    def __init__(self, target: Callable[[Connection], None], name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=target, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()
        if not self._conn.poll(30):
            raise RuntimeError(f"{name} did not start")
        self.url: str = self._conn.recv()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def call(self, command: Any, timeout: float = 60) -> Any:
        self._conn.send(command)
        if not self._conn.poll(timeout):
            raise TimeoutError(f"{self.process.name} did not answer {command!r}")
        return self._conn.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.call("stop", timeout=10)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class Fakes:
    """The fake OpenAI server and the recording hub of a benchmark run."""

    def __init__(self) -> None:
        self.openai = FakeProcess(_serve_openai, "bench-fake-openai")
        try:
            self.hub = FakeProcess(_serve_hub, "bench-fake-hub")
        except BaseException:
            self.openai.stop()
            raise

    @property
    def openai_base_url(self) -> str:
        return self.openai.url

    @property
    def hub_uri(self) -> str:
        return self.hub.url

    def reset(self) -> None:
        self.openai.call("reset")
        self.hub.call("reset")

    def collect(self, finals: int, timeout: float = 10) -> tuple[OpenAIRecords, list[HubRecord]]:
        hub: list[HubRecord] = self.hub.call(("collect", finals, timeout), timeout=timeout + 60)
        openai: OpenAIRecords = self.openai.call("collect")
        return openai, hub

    def stop(self) -> None:
        self.hub.stop()
        self.openai.stop()
