"""Real OpenAI API recordings (``../shared/real_streams``), replayed by the fake server verbatim.

A recording is a response body exactly as the API sent it (``<name>.sse`` for a stream,
``<name>.body.json`` otherwise) with a ``<name>.json`` sidecar holding the HTTP status, the
response headers and where it came from (repository, cassette path, interaction index); the
directory's ``INDEX.md`` describes each one.

:func:`recordings_dir` finds the directory (``$REAL_STREAMS_DIR``, else ``../shared/real_streams``
beside the repository's root — for a git worktree, beside the main checkout too) and fails
loudly when it is missing. :class:`Recording` reads one: its status, the headers that matter to a
client, the body, the text it streams as the answer (output text and refusal deltas, never
reasoning summaries, code-interpreter code or tool-call arguments), its function calls, and the
follow-up recording that answers them (:meth:`Recording.follow_up`: the next interaction of the
same cassette, as INDEX.md pairs them).

The fake plays one with the script step :class:`tests.fakes.script.Replay`: the recorded status
and headers, then the body in chunks of varying size (cut anywhere, mid-line and mid-character
included), as a real connection delivers it.
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RELATIVE = Path("..") / "shared" / "real_streams"

# What a client reads from an answer's headers. Transport headers (length, encoding, cookies,
# CDN) describe the recorded connection, not this one, so they are not replayed.
_KEPT_HEADERS = ("content-type", "x-request-id", "retry-after", "x-should-retry")
_KEPT_PREFIXES = ("openai-", "x-ratelimit-", "retry-after")


def _roots() -> list[Path]:
    roots = [ROOT]
    try:
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return roots
    main = Path(common).parent  # a worktree's main checkout (the same root for a clone)
    if main != ROOT:
        roots.append(main)
    return roots


@functools.cache
def recordings_dir() -> Path:
    """The recordings directory; raises ``FileNotFoundError`` naming every place looked at."""
    override = os.environ.get("REAL_STREAMS_DIR")
    candidates = [Path(override)] if override else [root / RELATIVE for root in _roots()]
    for candidate in candidates:
        if (candidate / "INDEX.md").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        "The real API recordings are missing: looked for INDEX.md in "
        + ", ".join(str(c) for c in candidates)
        + ". Put shared/real_streams beside the repository (../shared/real_streams from its "
        "root) or set REAL_STREAMS_DIR."
    )


@dataclass(frozen=True)
class Recording:
    """One recorded API answer."""

    name: str
    """The file name without ``.sse`` / ``.body.json``."""
    sidecar: dict[str, Any]
    body: bytes

    @classmethod
    def load(cls, name: str) -> Recording:
        return _load(name)

    # --- what was recorded -------------------------------------------------------------

    @property
    def streamed(self) -> bool:
        return self.sidecar.get("response_body_file", "").endswith(".sse")

    @property
    def status(self) -> int:
        return int(self.sidecar.get("status") or 200)

    @property
    def method(self) -> str:
        return str(self.sidecar.get("method") or "POST")

    @property
    def uri(self) -> str:
        return str(self.sidecar.get("uri") or "")

    @property
    def category(self) -> str:
        return str(self.sidecar.get("category") or "")

    @property
    def api(self) -> str:
        """``responses``, ``assistants``, ``conversations`` or ``error``, from INDEX.md's category."""
        return self.category.split("/", 1)[0]

    def headers(self) -> dict[str, str]:
        """The recorded headers a client reads; a content type even when none was recorded."""
        kept: dict[str, str] = {}
        for key, values in (self.sidecar.get("headers") or {}).items():
            lower = key.lower()
            value = values[0] if isinstance(values, list) and values else values
            if isinstance(value, str) and (
                lower in _KEPT_HEADERS or lower.startswith(_KEPT_PREFIXES)
            ):
                kept[lower] = value
        kept.setdefault(
            "content-type", "text/event-stream" if self.streamed else "application/json"
        )
        return kept

    def chunks(self, seed: int = 0) -> Iterator[bytes]:
        """The body cut into pieces of 1 to 700 bytes (deterministic per recording)."""
        rnd = random.Random(f"{self.name}:{seed}")
        at = 0
        while at < len(self.body):
            size = rnd.choice((1, 2, 7, 64, 300, 700))
            yield self.body[at : at + size]
            at += size

    # --- what a client sees in it ---------------------------------------------------------

    def events(self) -> list[tuple[str | None, Any]]:
        """``(event name, parsed data)`` of each server-sent event (``[DONE]`` as a string)."""
        found: list[tuple[str | None, Any]] = []
        text = self.body.decode("utf-8").replace("\r\n", "\n")
        for block in text.split("\n\n"):
            name: str | None = None
            data: list[str] = []
            for line in block.split("\n"):
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
            if data:
                raw = "\n".join(data)
                found.append((name, raw if raw == "[DONE]" else json.loads(raw)))
        return found

    def answer(self) -> str:
        """The text a user should see: output text and refusal deltas (Responses), message
        text and refusal deltas (Assistants), in stream order."""
        parts: list[str] = []
        for name, data in self.events():
            if not isinstance(data, dict):
                continue
            kind = data.get("type") or name
            if kind in ("response.output_text.delta", "response.refusal.delta"):
                parts.append(data["delta"])
            elif name == "thread.message.delta":
                for part in data["delta"].get("content") or ():
                    if part.get("type") == "text":
                        parts.append(part["text"].get("value") or "")
                    elif part.get("type") == "refusal":
                        parts.append(part.get("refusal") or "")
        return "".join(parts)

    def hidden_texts(self) -> list[str]:
        """What streams but is not the answer: reasoning summaries, code-interpreter code,
        function and MCP call arguments (each item's full text)."""
        wanted = {
            "response.reasoning_summary_text.done": "text",
            "response.reasoning_text.done": "text",
            "response.code_interpreter_call_code.done": "code",
            "response.function_call_arguments.done": "arguments",
            "response.mcp_call_arguments.done": "arguments",
        }
        found: list[str] = []
        for _, data in self.events():
            if isinstance(data, dict) and data.get("type") in wanted:
                value = data.get(wanted[data["type"]])
                if isinstance(value, str) and value.strip():
                    found.append(value)
        return found

    def function_calls(self) -> list[dict[str, Any]]:
        """The ``function_call`` items the stream completed (Responses)."""
        return [
            data["item"]
            for _, data in self.events()
            if isinstance(data, dict)
            and data.get("type") == "response.output_item.done"
            and data["item"].get("type") == "function_call"
        ]

    def ending(self) -> str | None:
        """The last ``response.*``/``thread.run.*`` lifecycle event, or ``error`` when the
        stream carried an ``error`` event."""
        last: str | None = None
        for name, data in self.events():
            kind = data.get("type") if isinstance(data, dict) else None
            kind = kind or name
            if kind == "error":
                return "error"
            if kind in ("response.completed", "response.failed", "response.incomplete") or (
                isinstance(kind, str) and kind.startswith("thread.run.") and ".step." not in kind
            ):
                last = kind
        return last

    def follow_up(self) -> Recording | None:
        """The recording of the next turn of the same conversation (the function call outputs'
        turn), when the set has it: same cassette, next interaction."""
        repo, path = self.sidecar.get("repo"), self.sidecar.get("path")
        index = self.sidecar.get("interaction_index")
        if not isinstance(index, int):
            return None
        for other in all_recordings():
            s = other.sidecar
            if (s.get("repo"), s.get("path"), s.get("interaction_index")) == (
                repo,
                path,
                index + 1,
            ) and other.category.startswith("responses/function_call_output_turn"):
                return other
        return None


@functools.cache
def _load(name: str) -> Recording:
    directory = recordings_dir()
    sidecar = json.loads((directory / f"{name}.json").read_text())
    body = (directory / sidecar["response_body_file"]).read_bytes()
    return Recording(name, sidecar, body)


@functools.cache
def all_recordings() -> tuple[Recording, ...]:
    """Every recording of the directory, by name."""
    directory = recordings_dir()
    names = sorted(
        p.name.removesuffix(".json")
        for p in directory.glob("*.json")
        if not p.name.endswith(".body.json") and not p.name.startswith("_")
    )
    return tuple(_load(name) for name in names)
