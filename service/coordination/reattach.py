"""What another replica needs to re-attach to a request's background responses (contract §12).

A request run with `OPENAI_BACKGROUND=true` keeps a `ReattachState` per `message_id`:

    hub_seq, text, responding,  where its hub sequence stands: the next `seq`, the text sent,
    snapshot_len                whether `responding` was sent, compact mode's last snapshot
    turns                       its model turns: response id, the last stream `sequence_number`
                                whose text reached the hub (`after`), and once a turn ended and
                                all its text was sent (`done`), the calls it ended with
    tools, announced            tool calls that returned (their outputs, reused on re-attach)
                                and those whose `processing` payload was sent
    final, error                the request's final payload was sent (and the error it
                                reported), so a redelivered copy only publishes its final event

`RunCheckpoint` holds the state of one running request and writes it *before* the hub payloads
it describes leave the service: payloads wait in the checkpoint while one write runs, and the
next write covers everything that queued meanwhile (group commit), so a write costs once per
batch, not per token; with the coalescing window of the streamer that is at most one per
window. A replica killed at any point leaves a state that says exactly which payloads left
(up to the one batch between a finished write and the socket; README "Answers that survive a
replica").

Two stores pass the same tests: `InProcessReattachStore` (one process; a restarted process
re-attaches only through Redis) and `RedisReattachStore` (REDIS_URL; keys
`<QUEUE_NAME>:reattach:<message_id>` with a TTL, the text kept in its own key and appended to,
so a write sends only the new text).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger("service.reattach")

DEFAULT_TTL = 600.0
"""Seconds a state outlives its last write: the real API keeps a background response ~10 min."""


@dataclass(slots=True)
class ToolRun:
    """A tool call that returned: what the model was given, and what the final event lists."""

    name: str
    output: str
    ok: bool
    duration_ms: int


@dataclass(slots=True)
class ReattachTurn:
    """One model turn (a background response) of the request."""

    response_id: str
    after: int = 0
    done: bool = False
    calls: list[tuple[str, str, str]] | None = None  # (call_id, name, arguments) when done
    usage: tuple[int, int] | None = None  # (input_tokens, output_tokens)


@dataclass(slots=True)
class ReattachState:
    """Everything a replica needs to continue a request another one started."""

    hub_seq: int = 0
    text: str = ""
    responding: bool = False
    snapshot_len: int = 0  # compact payloads: the answer's length at the last snapshot
    final: bool = False
    error: tuple[str, str, bool] | None = None  # (code, text, retryable) of a final error
    turns: list[ReattachTurn] = field(default_factory=list)
    tools: dict[str, ToolRun] = field(default_factory=dict)
    announced: list[str] = field(default_factory=list)

    def meta(self) -> str:
        """Everything but the text, as JSON (the text is stored beside it)."""
        # By hand: `dataclasses.asdict` deep-copies, and cost more than the rest of a write.
        data = {
            "hub_seq": self.hub_seq,
            "responding": self.responding,
            "snapshot_len": self.snapshot_len,
            "final": self.final,
            "error": self.error,
            "turns": [
                {
                    "response_id": t.response_id,
                    "after": t.after,
                    "done": t.done,
                    "calls": t.calls,
                    "usage": t.usage,
                }
                for t in self.turns
            ],
            "tools": {
                call_id: {
                    "name": run.name,
                    "output": run.output,
                    "ok": run.ok,
                    "duration_ms": run.duration_ms,
                }
                for call_id, run in self.tools.items()
            },
            "announced": self.announced,
            "text_len": len(self.text),
        }
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def parse(cls, meta: str | bytes, text: str) -> ReattachState | None:
        """The state from its stored parts; None when they do not fit together."""
        try:
            data: dict[str, Any] = json.loads(meta)
            if data.pop("text_len") != len(text):
                return None
            turns = [
                ReattachTurn(
                    response_id=t["response_id"],
                    after=t["after"],
                    done=t["done"],
                    calls=[(c[0], c[1], c[2]) for c in t["calls"]] if t["calls"] else t["calls"],
                    usage=(t["usage"][0], t["usage"][1]) if t["usage"] else None,
                )
                for t in data["turns"]
            ]
            return cls(
                hub_seq=data["hub_seq"],
                text=text,
                responding=data["responding"],
                snapshot_len=data["snapshot_len"],
                final=data["final"],
                error=(data["error"][0], data["error"][1], data["error"][2])
                if data["error"]
                else None,
                turns=turns,
                tools={k: ToolRun(**v) for k, v in data["tools"].items()},
                announced=list(data["announced"]),
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None


class ReattachStore(Protocol):
    """Where re-attach states live, keyed by `message_id`, each expiring `ttl` s after a write."""

    async def load(self, message_id: str) -> ReattachState | None:
        """The state last saved for `message_id`, or None (never saved, expired, dropped)."""

    async def save(self, message_id: str, state: ReattachState, stored_text: int) -> None:
        """Save `state`; the first `stored_text` characters of its text are stored already."""

    async def drop(self, message_id: str) -> None:
        """Forget the state (idempotent)."""

    async def close(self) -> None:
        """Release connections."""


class InProcessReattachStore:
    """The reference implementation: a dict in this process (nothing survives the process)."""

    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self._ttl = ttl
        self._states: dict[str, tuple[float, str, str]] = {}

    async def load(self, message_id: str) -> ReattachState | None:
        found = self._states.get(message_id)
        if found is None:
            return None
        expires, meta, text = found
        if time.monotonic() >= expires:
            del self._states[message_id]
            return None
        return ReattachState.parse(meta, text)

    async def save(self, message_id: str, state: ReattachState, stored_text: int) -> None:
        self._states[message_id] = (time.monotonic() + self._ttl, state.meta(), state.text)
        if len(self._states) > 10_000:  # a crashed run's state is never dropped: bound them
            now = time.monotonic()
            for key in [k for k, (exp, _, _) in self._states.items() if exp <= now]:
                del self._states[key]

    async def drop(self, message_id: str) -> None:
        self._states.pop(message_id, None)

    async def close(self) -> None:
        self._states.clear()


_SAVE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
if ARGV[4] == '0' then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('APPEND', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return 1
"""


class RedisReattachStore:
    """Shared by every replica of one QUEUE_NAME: two keys per request, written by one script."""

    def __init__(self, client: Any, *, prefix: str, ttl: float = DEFAULT_TTL) -> None:
        self._redis = client
        self._prefix = f"{prefix}:reattach:"
        self._ttl_ms = int(ttl * 1000)
        self._save = client.register_script(_SAVE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str, ttl: float = DEFAULT_TTL) -> RedisReattachStore:
        import redis.asyncio

        return cls(redis.asyncio.Redis.from_url(url), prefix=prefix, ttl=ttl)

    def _keys(self, message_id: str) -> tuple[str, str]:
        return f"{self._prefix}{message_id}", f"{self._prefix}{message_id}:text"

    async def load(self, message_id: str) -> ReattachState | None:
        meta, text = await self._redis.mget(self._keys(message_id))
        if meta is None:
            return None
        return ReattachState.parse(meta, (text or b"").decode("utf-8"))

    async def save(self, message_id: str, state: ReattachState, stored_text: int) -> None:
        # One script call: atomic like MULTI, and half its client CPU (benchmarks/background.py).
        await self._save(
            keys=self._keys(message_id),
            args=[
                state.meta(),
                state.text[stored_text:].encode("utf-8"),
                self._ttl_ms,
                1 if stored_text else 0,
            ],
        )

    async def drop(self, message_id: str) -> None:
        await self._redis.delete(*self._keys(message_id))

    async def close(self) -> None:
        await self._redis.aclose()


def reattach_store_for(settings: Settings) -> ReattachStore:
    """REDIS_URL set: shared through Redis (keys prefixed with QUEUE_NAME); else in-process."""
    url = settings.redis_url.get_secret_value()
    if url:
        return RedisReattachStore.from_url(url, prefix=settings.queue_name)
    return InProcessReattachStore()


class HubPosition(Protocol):
    """Where the request's hub sequence stands (the streamer)."""

    @property
    def next_seq(self) -> int: ...

    @property
    def sent_text(self) -> str: ...

    @property
    def text_started(self) -> bool: ...

    @property
    def snapshot_len(self) -> int: ...

    @property
    def finished(self) -> bool: ...


@dataclass(slots=True)
class _Delta:
    text_end: int  # length of the request's text once this delta is in it
    turn: int
    seq: int


class RunCheckpoint:
    """The re-attach state of one running request, written before the payloads it describes.

    The backend reports model-side progress (`begin_turn`, `text_delta`, `turn_completed`,
    `tool_announced`, `tool_finished`); the hub side hands its payloads to `defer` instead of
    sending them. Each write snapshots the hub position and releases the payloads that queued
    before it. A failed write is logged and the payloads go out anyway: the answer matters more
    than the chance to re-attach it (the state is then dropped, so a re-run starts clean).
    """

    def __init__(
        self,
        message_id: str,
        store: ReattachStore | None,
        state: ReattachState | None = None,
    ) -> None:
        self.message_id = message_id
        self.resumed = state is not None
        self.state = state or ReattachState()
        self._store = store
        self._stored_text = len(self.state.text) if state is not None else 0
        self._deltas: deque[_Delta] = deque()
        self._text_end = len(self.state.text)
        self._completed: set[int] = {i for i, t in enumerate(self.state.turns) if t.done}
        self._hub: HubPosition | None = None
        self._queued: list[Callable[[], None]] = []
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self._begun = self._finished = 0
        self._written = asyncio.Event()
        self._broken = False
        self.writes = 0
        self.write_seconds = 0.0

    # -- the hub side ----------------------------------------------------------------------

    def bind(self, hub: HubPosition) -> None:
        """The streamer whose position each write records."""
        self._hub = hub

    def defer(self, send: Callable[[], None]) -> None:
        """Run `send` (a hub operation) once a write covering it has finished."""
        self._queued.append(send)
        self._kick()

    async def commit(self) -> None:
        """Write the state as it is now (and release what queued before); return when done."""
        self._dirty = True
        needed = self._begun + 1  # the next write to begin sees this state
        self._kick()
        while self._finished < needed:
            await self._written.wait()

    async def settled(self) -> None:
        """Return once every deferred operation went out."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    # -- the model side --------------------------------------------------------------------

    def turn(self, index: int) -> ReattachTurn | None:
        turns = self.state.turns
        return turns[index] if index < len(turns) else None

    async def begin_turn(self, index: int, response_id: str) -> None:
        """A model turn was created: written at once, so no replica ever creates it again."""
        turns = self.state.turns
        if index < len(turns):
            turns[index] = ReattachTurn(response_id)
        else:
            turns.append(ReattachTurn(response_id))
        await self.commit()

    def text_delta(self, index: int, seq: int, delta: str) -> None:
        """Text of turn `index` at stream position `seq` goes to the hub side next."""
        self._text_end += len(delta)
        self._deltas.append(_Delta(self._text_end, index, seq))

    def turn_completed(
        self, index: int, calls: list[tuple[str, str, str]], usage: tuple[int, int] | None
    ) -> None:
        turn = self.state.turns[index]
        turn.calls = calls
        turn.usage = usage
        self._completed.add(index)
        self._dirty = True

    def final_error(self, code: str, text: str, retryable: bool) -> None:
        """The final payload about to be sent reports this error."""
        self.state.error = (code, text, retryable)

    def tool_announced(self, call_id: str) -> None:
        self.state.announced.append(call_id)

    def tool_finished(self, call_id: str, run: ToolRun) -> None:
        self.state.tools[call_id] = run
        self._dirty = True

    async def forget(self) -> None:
        """The request is settled: its state is no longer needed."""
        await self.settled()
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._store.drop(self.message_id)

    # -- writing ---------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while self._queued or self._dirty:
            sends, self._queued = self._queued, []
            self._dirty = False
            self._begun += 1
            self._snapshot()
            await self._write()
            for send in sends:
                send()
            self._finished += 1
            self._written.set()
            self._written = asyncio.Event()

    def _snapshot(self) -> None:
        """Bring the state to what the hub side has sent once the queued payloads are out."""
        state = self.state
        hub = self._hub
        if hub is not None:
            state.hub_seq = hub.next_seq
            state.text = hub.sent_text
            state.responding = hub.text_started
            state.snapshot_len = hub.snapshot_len
            state.final = hub.finished
        sent = len(state.text)
        deltas = self._deltas
        while deltas and deltas[0].text_end <= sent:
            delta = deltas.popleft()
            state.turns[delta.turn].after = delta.seq
        waiting = deltas[0].turn if deltas else None
        for index in self._completed:
            if waiting is None or waiting > index:
                state.turns[index].done = True

    async def _write(self) -> None:
        if self._store is None or self._broken:
            return
        started = time.perf_counter()
        try:
            await self._store.save(self.message_id, self.state, self._stored_text)
            self._stored_text = len(self.state.text)
        except Exception as exc:
            self._broken = True
            log.warning(
                "re-attach state of message_id=%s not saved (%s): a crash now re-runs it",
                self.message_id,
                type(exc).__name__,
            )
            with contextlib.suppress(Exception):
                await self._store.drop(self.message_id)
        finally:
            self.writes += 1
            self.write_seconds += time.perf_counter() - started


current_checkpoint: ContextVar[RunCheckpoint | None] = ContextVar(
    "current_checkpoint", default=None
)
"""The checkpoint of the request the current task runs (set by the request processor)."""


__all__ = [
    "DEFAULT_TTL",
    "HubPosition",
    "InProcessReattachStore",
    "ReattachState",
    "ReattachStore",
    "ReattachTurn",
    "RedisReattachStore",
    "RunCheckpoint",
    "ToolRun",
    "current_checkpoint",
    "reattach_store_for",
]
