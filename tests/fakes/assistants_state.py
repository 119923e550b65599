"""The Assistants API objects of the fake OpenAI server: runs, threads and their messages.

A :class:`_Thread` holds its messages and runs (newest first); a :class:`_Run` knows its
status and the timed transitions of runs left active by ``FakeOpenAI.set_active_run`` or a
cancel request. Both are plain data, mutated only under ``FakeOpenAI._lock``, by the endpoints
(:mod:`tests.fakes.openai_assistants`) and the run stream (:mod:`tests.fakes.openai_streams`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fakes.openai_wire import _new_id, _now

# A run in one of these statuses blocks its thread (no new message, no new run).
_ACTIVE = frozenset({"queued", "in_progress", "requires_action", "cancelling"})


@dataclass
class _Run:
    """An Assistants run; mutated only under ``FakeOpenAI._lock``."""

    id: str
    thread_id: str
    assistant_id: str
    model: str
    instructions: str
    tools: list[Any]
    status: str = "queued"
    created_at: int = field(default_factory=_now)
    started_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    last_error: dict[str, str] | None = None
    incomplete_details: dict[str, str] | None = None
    required_action: dict[str, Any] | None = None
    usage: dict[str, int] | None = None
    tool_step: dict[str, Any] | None = None  # the tool_calls step waiting for outputs
    clears_at: float | None = None  # set_active_run: becomes completed then
    cancel_delay: float = 0.0  # from a cancel request to cancelled
    cancel_at: float | None = None  # cancel: becomes cancelled then

    def refresh(self, now: float) -> None:
        """Apply the timed transitions of runs left active by ``set_active_run``/``cancel``."""
        if self.status == "cancelling" and self.cancel_at is not None and now >= self.cancel_at:
            self.status, self.cancelled_at, self.cancel_at = "cancelled", int(now), None
        elif self.status in _ACTIVE and self.clears_at is not None and now >= self.clears_at:
            self.status, self.completed_at, self.clears_at = "completed", int(now), None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread.run",
            "created_at": self.created_at,
            "assistant_id": self.assistant_id,
            "thread_id": self.thread_id,
            "status": self.status,
            "started_at": self.started_at,
            "expires_at": self.created_at + 600 if self.status in _ACTIVE else None,
            "cancelled_at": self.cancelled_at,
            "failed_at": self.failed_at,
            "completed_at": self.completed_at,
            "required_action": self.required_action if self.status == "requires_action" else None,
            "last_error": self.last_error,
            "model": self.model,
            "instructions": self.instructions,
            "tools": self.tools,
            "tool_resources": {},
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "max_completion_tokens": None,
            "max_prompt_tokens": None,
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "incomplete_details": self.incomplete_details,
            "usage": self.usage,
            "response_format": "auto",
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        }


@dataclass
class _Thread:
    id: str
    created_at: int = field(default_factory=_now)
    metadata: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    runs: list[_Run] = field(default_factory=list)

    def active_run(self, now: float) -> _Run | None:
        for run in self.runs:
            run.refresh(now)
            if run.status in _ACTIVE:
                return run
        return None

    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message["role"] == "user":
                return "".join(part["text"]["value"] for part in message["content"])
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread",
            "created_at": self.created_at,
            "metadata": self.metadata,
            "tool_resources": {},
        }


def _message_json(
    thread_id: str,
    role: str,
    text: str,
    *,
    run_id: str | None = None,
    assistant_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": _new_id("msg"),
        "object": "thread.message",
        "created_at": _now(),
        "assistant_id": assistant_id,
        "thread_id": thread_id,
        "run_id": run_id,
        "role": role,
        "content": [{"type": "text", "text": {"value": text, "annotations": []}}],
        "attachments": [],
        "metadata": {},
        "status": "completed",
        "completed_at": _now(),
        "incomplete_at": None,
        "incomplete_details": None,
    }
