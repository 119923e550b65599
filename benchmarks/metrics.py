"""Turning what the fakes recorded into the numbers of one side (service or bare) of a scenario."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks import workload
from benchmarks.fakes import HubRecord, OpenAIRecords


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


@dataclass
class SideResult:
    """The numbers of one side of a scenario; times in ms, CPU in s, memory in MB."""

    completed: int
    failed: int
    requests_per_s: float
    tokens_delivered: int
    tokens_lost: int
    tokens_per_s: float
    hub_payloads: int
    token_latency_p50_ms: float | None
    token_latency_p99_ms: float | None
    token_latency_max_ms: float | None
    first_payload_p50_ms: float | None
    first_payload_p99_ms: float | None
    first_text_p50_ms: float | None
    first_text_p99_ms: float | None
    model_delay_p50_ms: float | None
    first_text_overhead_p50_ms: float | None
    first_text_overhead_p99_ms: float | None
    peak_concurrent: int
    intake_per_s: float | None  # requests / (last first payload - first publish)
    model_requests_per_s: float | None  # requests / (last model request - first publish)
    wall_s: float
    cpu_s: float
    cpu_s_per_1k_tokens: float | None
    peak_rss_mb: float
    fake_openai_cpu_s: float
    fake_hub_cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(
    scenario: workload.Scenario,
    *,
    starts: Mapping[str, float],
    conversations: Mapping[str, int],
    hub: Iterable[HubRecord],
    openai: OpenAIRecords,
    completed: int,
    failed: int,
    cpu_s: float,
    peak_rss_bytes: int,
    fake_cpu: tuple[float, float],
) -> SideResult:
    """`starts`: channel -> publish (service) or request start (bare) time;
    `conversations`: channel -> the conversation number its tokens carry."""
    first: dict[str, float] = {}
    first_text: dict[str, float] = {}
    final: dict[str, float] = {}
    latencies: list[float] = []
    delivered = 0
    payloads = 0
    emitted = openai.emitted
    for channel, at, _kind, _status, is_final, delta in hub:
        if channel not in starts:
            continue
        payloads += 1
        first.setdefault(channel, at)
        if is_final:
            final.setdefault(channel, at)
        if delta:
            first_text.setdefault(channel, at)
            for key in workload.tokens_in(delta):
                sent = emitted.get(key)
                if sent is not None:
                    delivered += 1
                    latencies.append(at - sent)

    model_delay: dict[str, float] = {}
    for channel, conv in conversations.items():
        asked = openai.requests.get(channel)
        answered = emitted.get(workload.token(conv, 0).strip())
        if asked is not None and answered is not None:
            model_delay[channel] = answered - asked

    began = min(starts.values(), default=0.0)
    ended = max(final.values(), default=began)
    wall = max(ended - began, 1e-9)
    ttfp = [first[c] - starts[c] for c in first]
    ttft = [first_text[c] - starts[c] for c in first_text]
    overhead = [first_text[c] - starts[c] - model_delay[c] for c in first_text if c in model_delay]
    return SideResult(
        completed=completed,
        failed=failed,
        requests_per_s=round(completed / wall, 2),
        tokens_delivered=delivered,
        tokens_lost=scenario.expected_tokens - delivered,
        tokens_per_s=round(delivered / wall, 1),
        hub_payloads=payloads,
        token_latency_p50_ms=_ms(percentile(latencies, 50)),
        token_latency_p99_ms=_ms(percentile(latencies, 99)),
        token_latency_max_ms=_ms(max(latencies, default=None)),
        first_payload_p50_ms=_ms(percentile(ttfp, 50)),
        first_payload_p99_ms=_ms(percentile(ttfp, 99)),
        first_text_p50_ms=_ms(percentile(ttft, 50)),
        first_text_p99_ms=_ms(percentile(ttft, 99)),
        model_delay_p50_ms=_ms(percentile(list(model_delay.values()), 50)),
        first_text_overhead_p50_ms=_ms(percentile(overhead, 50)),
        first_text_overhead_p99_ms=_ms(percentile(overhead, 99)),
        peak_concurrent=_peak_concurrent(first, final),
        intake_per_s=_rate(len(first), began, max(first.values(), default=None)),
        model_requests_per_s=_rate(
            len(asked := [openai.requests[c] for c in conversations if c in openai.requests]),
            began,
            max(asked, default=None),
        ),
        wall_s=round(wall, 3),
        cpu_s=round(cpu_s, 3),
        cpu_s_per_1k_tokens=round(cpu_s / delivered * 1000, 4) if delivered else None,
        peak_rss_mb=round(peak_rss_bytes / 2**20, 1),
        fake_openai_cpu_s=round(fake_cpu[0], 2),
        fake_hub_cpu_s=round(fake_cpu[1], 2),
    )


def _rate(count: int, began: float, last: float | None) -> float | None:
    if last is None or count < 2 or last <= began:
        return None
    return round(count / (last - began), 1)


def _peak_concurrent(first: Mapping[str, float], final: Mapping[str, float]) -> int:
    """Most conversations between their first and their final payload at the same time."""
    changes = [(at, 1) for at in first.values()] + [(at, -1) for at in final.values()]
    changes.sort(key=lambda change: (change[0], change[1]))
    running = peak = 0
    for _, step in changes:
        running += step
        peak = max(peak, running)
    return peak


def ratio(service: float | None, bare: float | None) -> float | None:
    if service is None or bare is None or bare == 0:
        return None
    return round(service / bare, 3)
