"""What the service's processes share: run records and conversation turns, behind one Protocol.

A **run record** per `message_id` says who runs it and what became of it:

    claim_run      take the request (or learn it runs on a live process, or that it finished)
    record_start   count a start, right before the request's first model turn (poison count)
    finish_run     it ended; keep the final event only if it could not be published
    final_published   a pending final event was published after all (by a redelivered copy)
    release_run    give it back without finishing (returned to the queue before it started)
    running        is a live process running it now?

A **conversation turn** lets one request at a time run per conversation, in the order the
requests joined the conversation's line:

    join_turn / wait_turn / leave_turn, busy

A **cancel tombstone** per `message_id` remembers, for CANCEL_TOMBSTONE_TTL seconds, that a
cancel by message_id arrived while no process held the request (it was still in flight between
the router and its shard, or waiting in a queue beyond the prefetch): the request ends
`cancelled` when it is delivered (`mark_cancelled` / `was_cancelled`).

Claims and places in a line belong to an *owner* (one per process). The owner keeps a lease
alive while it lives (`open()` starts it, every LEASE_TTL/3 s); a process that dies stops
renewing it, and its claims and places expire LEASE_TTL seconds later. A live owner's never do.

Two implementations pass the same test module (tests/test_coordination.py):
`local.LocalCoordinator` (the default: one process, backed by a small journal file so that
start counts and finished runs survive a crash) and `redis.RedisCoordinator` (REDIS_URL: every
replica with the same QUEUE_NAME shares it). `coordinator_for(settings)` chooses, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from service.config import Settings


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to `claim_run`.

    `claimed`: this owner now holds the run; `starts` is how many times it was started before
    without finishing (a redelivered poison message shows here). `running`: a live owner holds
    it. `finished`: it ended; `final` is the event still to publish (None when it was published).
    """

    status: Literal["claimed", "running", "finished"]
    starts: int = 0
    final: bytes | None = None


class Coordinator(Protocol):
    """State shared by the processes that consume one QUEUE_NAME; see the module docstring."""

    owner: str

    async def open(self) -> None:
        """Start keeping this owner's lease alive (before the first claim)."""

    async def close(self) -> None:
        """Stop the lease; claims and places left behind expire as if the process died."""

    async def claim_run(self, message_id: str, *, redelivered: bool) -> Claim:
        """Take the run of `message_id` unless a live owner holds it or it finished.

        A redelivered copy of a finished run gets `finished`; a fresh publish of a finished (or
        abandoned) message_id is a deliberate retry: claimed again, its start count reset.
        """

    async def record_start(self, message_id: str) -> int:
        """Count one start of a claimed run (durably); returns the count so far."""

    async def finish_run(self, message_id: str, final: bytes | None) -> None:
        """The run ended: its start count is cleared, `final` kept only while unpublished."""

    async def final_published(self, message_id: str) -> None:
        """The pending final event of a finished run was published: forget it."""

    async def release_run(self, message_id: str) -> None:
        """Give a claimed run back without finishing it; its start count stays."""

    async def running(self, message_id: str) -> bool:
        """True while a live owner holds the run of `message_id`."""

    async def join_turn(self, conversation_id: str, ticket: str) -> None:
        """Join the end of the conversation's line."""

    async def wait_turn(self, conversation_id: str, ticket: str) -> None:
        """Return once `ticket` heads the line (earlier places of dead owners are skipped)."""

    def heads_line(self, conversation_id: str, ticket: str) -> bool:
        """True when `ticket` is known, without waiting, to head the line already (a fast
        path: False means only "ask `wait_turn`")."""

    async def leave_turn(self, conversation_id: str, ticket: str) -> None:
        """Leave the line (idempotent); the next place may run."""

    async def busy(self, conversation_id: str) -> bool:
        """True while any live owner has a place in the conversation's line."""

    async def mark_cancelled(self, message_id: str) -> None:
        """Remember for CANCEL_TOMBSTONE_TTL s that `message_id` was cancelled."""

    async def was_cancelled(self, message_id: str) -> bool:
        """True while a cancel tombstone of `message_id` lives."""


CANCEL_TOMBSTONE_TTL = 900.0
"""Seconds a cancel tombstone lives: longer than a request normally spends in the queues."""


def coordinator_for(settings: Settings) -> Coordinator:
    """REDIS_URL set: shared through Redis; otherwise in-process with a local journal."""
    if settings.redis_url.get_secret_value():
        from service.coordination.redis import RedisCoordinator

        return RedisCoordinator.from_settings(settings)
    from service.coordination.local import LocalCoordinator

    return LocalCoordinator.from_settings(settings)


__all__ = ["CANCEL_TOMBSTONE_TTL", "Claim", "Coordinator", "coordinator_for"]
