"""The four double-texting policies as data: one table, read by one function.

They differ in two choices only: what happens to the conversation's running and waiting
requests (left alone, or ended as cancelled) and whether what those requests added leaves the
conversation; `reject` also ends the new request itself when the conversation is busy.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.schemas import OnBusy


@dataclass(frozen=True, slots=True)
class BusyPolicy:
    """What a request's arrival on a busy conversation does."""

    rejects_itself: bool
    """The new request ends at once with `conversation_busy` (what runs goes on untouched)."""
    cancels_others: bool
    """Every running and waiting request of the conversation ends as cancelled first."""
    erases_others: bool
    """Those requests' user messages, tool calls and answers leave the conversation."""


POLICIES: dict[OnBusy, BusyPolicy] = {
    OnBusy.ENQUEUE: BusyPolicy(rejects_itself=False, cancels_others=False, erases_others=False),
    OnBusy.REJECT: BusyPolicy(rejects_itself=True, cancels_others=False, erases_others=False),
    OnBusy.INTERRUPT: BusyPolicy(rejects_itself=False, cancels_others=True, erases_others=False),
    OnBusy.ROLLBACK: BusyPolicy(rejects_itself=False, cancels_others=True, erases_others=True),
}
IDLE = BusyPolicy(rejects_itself=False, cancels_others=False, erases_others=False)


def on_arrival(requested: OnBusy | None, default: OnBusy, *, busy: bool) -> BusyPolicy:
    """What to do with a request that arrives now: its own `on_busy`, else the setting."""
    if not busy:
        return IDLE
    return POLICIES[requested or default]
