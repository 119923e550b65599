"""How many tokens the fake model generated per stream, and how many after the client left.

The real API stops generating a Responses stream when the client closes it. The fake does the
same (aiohttp cancels the handler when the connection goes away); this ledger makes it
measurable: every text chunk written is one token, stamped; a chunk generated while the
client's connection is already closing counts as generated after the close.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class StreamRecord:
    """One model stream: its conversation (or thread), when each token was generated, and
    when the fake saw the client go away (``None``: it did not)."""

    conversation_id: str | None
    started_at: float
    token_times: list[float] = field(default_factory=list)
    closed_at: float | None = None
    after_close: int = 0

    def tokens_after(self, moment: float) -> int:
        """Tokens generated after ``moment`` (e.g. when a cancel was published)."""
        return sum(1 for t in self.token_times if t > moment)


@dataclass
class GenerationLedger:
    """Thread-safe list of :class:`StreamRecord`, one per model stream the fake played."""

    enabled: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _records: list[StreamRecord] = field(default_factory=list)

    def open(self, conversation_id: str | None) -> StreamRecord:
        record = StreamRecord(conversation_id, time.time())
        if self.enabled:
            with self._lock:
                self._records.append(record)
        return record

    def streams(self, conversation_id: str | None = None) -> list[StreamRecord]:
        with self._lock:
            return [
                r
                for r in self._records
                if conversation_id is None or r.conversation_id == conversation_id
            ]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    @staticmethod
    def token(record: StreamRecord, *, closing: bool) -> None:
        record.token_times.append(time.time())
        if closing or record.closed_at is not None:
            record.after_close += 1

    @staticmethod
    def closed(record: StreamRecord) -> None:
        if record.closed_at is None:
            record.closed_at = time.time()
