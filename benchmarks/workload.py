"""What the benchmark asks of the model: scenarios, request messages, and the fake's script.

Every token the fake model streams is unique within a run (``"<conversation>.<index> "``), so
the hub side can attribute each token to the payload whose ``delta`` carried it, however the
service coalesced the deltas, and look up when the fake emitted it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tests.fakes.script import Stall, Step, Text, user_text

MARK = "bench-run"
_PARAMS = re.compile(
    MARK + r" conv=(?P<conv>\d+) tokens=(?P<tokens>\d+) interval=(?P<interval>[\d.e-]+)"
    r" delay=(?P<delay>[\d.e-]+)"
)


WARMUP_CONV = 999_999  # the conversation number of the one warm-up request of each side


def message(conv: int, tokens: int, interval: float, delay: float) -> str:
    """The user message that makes the fake model answer `tokens` tokens for `conv`."""
    return f"{MARK} conv={conv} tokens={tokens} interval={interval!r} delay={delay!r}"


WARMUP_MESSAGE = message(WARMUP_CONV, 3, 0.0, 0.0)


def token(conv: int, index: int) -> str:
    """The `index`-th token of conversation `conv`, as streamed (a word and a space)."""
    return f"{conv}.{index} "


def tokens_in(delta: str) -> list[str]:
    """The token keys a delta carries (whole tokens: deltas never split a chunk)."""
    return delta.split()


def model_turn(body: dict[str, Any]) -> Sequence[Step]:
    """The fake model's answer to a benchmark message (a function turn of the fake's script)."""
    found = _PARAMS.search(user_text(body))
    if found is None:
        return [Text("not a benchmark message")]
    conv, count = int(found["conv"]), int(found["tokens"])
    interval, delay = float(found["interval"]), float(found["delay"])
    steps: list[Step] = [Stall(delay)] if delay > 0 else []
    steps.append(Text(*(token(conv, i) for i in range(count)), interval=interval))
    return steps


@dataclass(frozen=True)
class Scenario:
    """One load shape: `conversations` requests of `tokens` tokens, `interval` s apart."""

    name: str
    label: str  # the letter for it, e.g. "(a)"
    conversations: int
    tokens: int
    interval: float  # seconds between two tokens of one answer; 0 = as fast as the fake can
    delay: float = 0.0  # the fake model's own delay before its first token
    sequential: bool = False  # one request after another instead of all at once
    at_once: bool = False  # every request handed to the client in one go (one publish time)
    max_concurrency: int | None = None  # the service's MAX_CONCURRENCY (default: enough)

    @property
    def title(self) -> str:
        n, tokens = f"{self.conversations:,}", f"{self.tokens:,} tokens"
        if self.sequential:
            delay = f"{self.delay * 1000:g} ms"
            return (
                f"{self.label} {n} short requests one after another, {tokens} (model delay {delay})"
            )
        rate = (
            f"at {1 / self.interval:g} tokens/s" if self.interval else "as fast as the fake sends"
        )
        return f"{self.label} {n} concurrent conversations, {tokens} each {rate}"

    @property
    def prefetch(self) -> int:
        return self.max_concurrency or max(32, self.conversations)

    @property
    def expected_tokens(self) -> int:
        return self.conversations * self.tokens

    def timeout(self) -> float:
        """Generous wall-clock limit for one side of the scenario."""
        one = self.delay + self.tokens * self.interval
        if self.sequential:
            return 60 + self.conversations * (one + 0.5)
        return 60 + 2 * one + self.expected_tokens / 2000

    def scaled(self, **changes: Any) -> Scenario:
        return replace(self, **changes)


FULL: dict[str, Scenario] = {
    "concurrent": Scenario("concurrent", "(a)", 200, 200, 0.02),
    "throughput": Scenario("throughput", "(b)", 50, 4000, 0.0),
    "slow": Scenario("slow", "(c)", 1000, 12, 1.0, max_concurrency=1000),
    "sequential": Scenario("sequential", "(d)", 500, 5, 0.01, delay=0.02, sequential=True),
}

QUICK: dict[str, Scenario] = {
    "concurrent": FULL["concurrent"].scaled(conversations=40, tokens=50),
    "throughput": FULL["throughput"].scaled(conversations=10, tokens=500),
    "slow": FULL["slow"].scaled(conversations=200, tokens=4, max_concurrency=200),
    "sequential": FULL["sequential"].scaled(conversations=40),
}

# Inside `make test` (`--smoke`): seconds, just enough to run every code path of the benchmark.
SMOKE: dict[str, Scenario] = {
    "concurrent": FULL["concurrent"].scaled(conversations=8, tokens=10, interval=0.005),
}

ALIASES = {"a": "concurrent", "b": "throughput", "c": "slow", "d": "sequential"}

# Scenario (a)'s shape at several concurrency levels, for the plot.
SWEEP_LEVELS = (25, 50, 100, 200)
QUICK_SWEEP_LEVELS = (10, 20, 40)


def sweep(base: Scenario, levels: Sequence[int]) -> list[Scenario]:
    return [base.scaled(name=f"sweep-{n}", conversations=n) for n in levels]
