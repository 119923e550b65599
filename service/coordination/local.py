"""The in-process coordinator (the default, and the reference for the shared one).

Everything lives in this process's memory, bounded by STATE_MAX_BYTES. What must survive a
crash of the process — how many times a request was started without finishing, and which
requests finished with their final event published — is appended to a journal file in
STATE_DIR (one JSON object per line, compacted when it outgrows twice the memory bound), and
read back at start. The journal is locked while a process uses it: a second process started
with the same QUEUE_NAME and no REDIS_URL takes the next free file (`<queue>-2.journal`, …)
instead of sharing one, and a process that crashed leaves its file free for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from service.config import ConfigurationError
from service.coordination import CANCEL_TOMBSTONE_TTL, Claim

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger("service.coordination")

# What one run record costs besides its message id and pending final event (dict entry,
# dataclass, strings), measured with tracemalloc on CPython 3.11, rounded up.
RECORD_OVERHEAD = 360


@dataclass(slots=True)
class _Run:
    owner: str = ""
    starts: int = 0
    finished: bool = False
    final: bytes | None = None

    def size(self, message_id: str) -> int:
        return RECORD_OVERHEAD + len(message_id) + len(self.final or b"")


class Journal:
    """Append-only record of start counts and finished runs, one JSON object per line."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle
        self.size = path.stat().st_size

    @classmethod
    def open(cls, directory: Path, name: str) -> Journal:
        directory.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "service"
        for index in range(1, 65):
            path = directory / (f"{safe}.journal" if index == 1 else f"{safe}-{index}.journal")
            handle = path.open("a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return cls(path, handle)
        raise RuntimeError(f"no free journal file for {name!r} in {directory}")

    def replay(self) -> OrderedDict[str, _Run]:
        runs: OrderedDict[str, _Run] = OrderedDict()
        self._handle.seek(0)
        for line in self._handle:
            try:
                entry = json.loads(line)
                message_id = entry["m"]
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write
            run = runs.pop(message_id, None) or _Run()
            if "s" in entry:
                run.starts, run.finished = int(entry["s"]), False
            if entry.get("f"):
                run.starts, run.finished = 0, True
            runs[message_id] = run
        return runs

    def append(self, entry: dict[str, object]) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        # Written through at once: a crash of the process loses nothing the OS has been given.
        self._handle.write(line)
        self._handle.flush()
        self.size += len(line.encode())

    def rewrite(self, runs: OrderedDict[str, _Run]) -> None:
        """Replace the file with one line per record still kept."""
        temporary = self.path.with_suffix(".journal.tmp")
        with temporary.open("w", encoding="utf-8") as out:
            for message_id, run in runs.items():
                if run.finished and run.final is None:
                    out.write(json.dumps({"m": message_id, "f": 1}, separators=(",", ":")) + "\n")
                elif run.starts:
                    out.write(
                        json.dumps({"m": message_id, "s": run.starts}, separators=(",", ":")) + "\n"
                    )
        os.replace(temporary, self.path)
        old = self._handle
        self._handle = self.path.open("a+", encoding="utf-8")
        fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        old.close()
        self.size = self.path.stat().st_size

    def close(self) -> None:
        self._handle.close()


@dataclass
class LocalStore:
    """The state one process's coordinators share (tests give two coordinators one store)."""

    max_bytes: int = 4_000_000
    journal: Journal | None = None
    runs: OrderedDict[str, _Run] = field(default_factory=OrderedDict)
    live: set[str] = field(default_factory=set)
    lines: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    changed: dict[str, asyncio.Event] = field(default_factory=dict)
    bytes_used: int = 0
    tombstones: dict[str, float] = field(default_factory=dict)
    """Cancel tombstones: message_id → monotonic expiry (not journalled: a restart forgets)."""

    def __post_init__(self) -> None:
        if self.journal is not None:
            self.runs = self.journal.replay()
            self.bytes_used = sum(run.size(mid) for mid, run in self.runs.items())
            self._evict()

    def put(self, message_id: str, run: _Run) -> None:
        old = self.runs.pop(message_id, None)
        if old is not None:
            self.bytes_used -= old.size(message_id)
        self.runs[message_id] = run
        self.bytes_used += run.size(message_id)
        self._evict()

    def _evict(self) -> None:
        # Oldest first, never a run a live owner holds.
        if self.bytes_used <= self.max_bytes:
            return  # the usual case: no copy of every record on each put (5,000 runs: quadratic)
        for message_id in list(self.runs):
            if self.bytes_used <= self.max_bytes:
                break
            run = self.runs[message_id]
            if run.owner in self.live and not run.finished:
                continue
            del self.runs[message_id]
            self.bytes_used -= run.size(message_id)

    def record(self, entry: dict[str, object]) -> None:
        if self.journal is None:
            return
        self.journal.append(entry)
        if self.journal.size > 2 * self.max_bytes:
            self.journal.rewrite(self.runs)

    def notify(self, conversation_id: str) -> None:
        event = self.changed.pop(conversation_id, None)
        if event is not None:
            event.set()

    def line(self, conversation_id: str) -> list[tuple[str, str]]:
        """The conversation's line with the places of dead owners removed."""
        line = self.lines.get(conversation_id, [])
        alive = [place for place in line if place[0] in self.live]
        if not alive:
            self.lines.pop(conversation_id, None)
        elif len(alive) != len(line):
            self.lines[conversation_id] = alive
        return alive


class LocalCoordinator:
    """In-process run records and conversation turns; see the module docstring."""

    def __init__(self, store: LocalStore | None = None, *, owner: str | None = None) -> None:
        self.store = store if store is not None else LocalStore()
        self.owner = owner or f"local-{uuid.uuid4().hex[:12]}"

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalCoordinator:
        journal = None
        if settings.state_dir:
            try:
                journal = Journal.open(Path(settings.state_dir), settings.queue_name)
            except OSError as exc:
                raise ConfigurationError(
                    f"STATE_DIR {settings.state_dir!r} is not writable ({exc.strerror}): set "
                    "STATE_DIR to a writable directory, or empty to keep delivery state in memory"
                ) from None
        return cls(LocalStore(max_bytes=settings.state_max_bytes, journal=journal))

    @property
    def journal_path(self) -> Path | None:
        return self.store.journal.path if self.store.journal is not None else None

    async def open(self) -> None:
        self.store.live.add(self.owner)

    async def close(self) -> None:
        self.store.live.discard(self.owner)
        for conversation_id in list(self.store.lines):
            self.store.notify(conversation_id)

    # -- run records -------------------------------------------------------------------------

    async def claim_run(self, message_id: str, *, redelivered: bool) -> Claim:
        store = self.store
        run = store.runs.get(message_id)
        if run is not None and run.finished and redelivered:
            return Claim("finished", final=run.final)
        if run is not None and not run.finished and run.owner in store.live:
            return Claim("running")
        starts = run.starts if run is not None and redelivered and not run.finished else 0
        if run is not None and run.starts and not starts:
            store.record({"m": message_id, "s": 0})
        store.put(message_id, _Run(owner=self.owner, starts=starts))
        return Claim("claimed", starts=starts)

    async def record_start(self, message_id: str) -> int:
        run = self._held(message_id)
        run.starts += 1
        self.store.record({"m": message_id, "s": run.starts})
        return run.starts

    async def finish_run(self, message_id: str, final: bytes | None) -> None:
        self.store.put(message_id, _Run(finished=True, final=final))
        if final is None:
            self.store.record({"m": message_id, "f": 1})

    async def final_published(self, message_id: str) -> None:
        run = self.store.runs.get(message_id)
        if run is not None and run.finished and run.final is not None:
            self.store.put(message_id, _Run(finished=True))
            self.store.record({"m": message_id, "f": 1})

    async def release_run(self, message_id: str) -> None:
        run = self.store.runs.get(message_id)
        if run is not None and run.owner == self.owner and not run.finished:
            run.owner = ""

    async def running(self, message_id: str) -> bool:
        run = self.store.runs.get(message_id)
        return run is not None and not run.finished and run.owner in self.store.live

    def _held(self, message_id: str) -> _Run:
        run = self.store.runs.get(message_id)
        if run is None or run.owner != self.owner or run.finished:
            # Evicted or taken over: keep counting on a record of our own.
            run = _Run(owner=self.owner, starts=run.starts if run and not run.finished else 0)
            self.store.put(message_id, run)
        return run

    # -- conversation turns ------------------------------------------------------------------

    async def join_turn(self, conversation_id: str, ticket: str) -> None:
        self.store.lines.setdefault(conversation_id, []).append((self.owner, ticket))

    async def wait_turn(self, conversation_id: str, ticket: str) -> None:
        while True:
            line = self.store.line(conversation_id)
            if not any(place == (self.owner, ticket) for place in line):
                raise LookupError(f"{ticket} is not in the line of {conversation_id}")
            if line[0] == (self.owner, ticket):
                return
            event = self.store.changed.setdefault(conversation_id, asyncio.Event())
            await event.wait()

    def heads_line(self, conversation_id: str, ticket: str) -> bool:
        line = self.store.line(conversation_id)
        return bool(line) and line[0] == (self.owner, ticket)

    async def leave_turn(self, conversation_id: str, ticket: str) -> None:
        line = self.store.lines.get(conversation_id)
        if line is None:
            return
        with contextlib.suppress(ValueError):
            line.remove((self.owner, ticket))
        if not line:
            del self.store.lines[conversation_id]
        self.store.notify(conversation_id)

    async def busy(self, conversation_id: str) -> bool:
        return bool(self.store.line(conversation_id))

    async def mark_cancelled(self, message_id: str) -> None:
        now, tombstones = time.monotonic(), self.store.tombstones
        for expired in [k for k, until in tombstones.items() if until <= now]:
            del tombstones[expired]
        tombstones[message_id] = now + CANCEL_TOMBSTONE_TTL

    async def was_cancelled(self, message_id: str) -> bool:
        return self.store.tombstones.get(message_id, 0.0) > time.monotonic()
