"""Summarise a py-spy `raw` (folded stacks) profile: where the samples go, by layer and function.

    python -m benchmarks.profile_summary /tmp/prof/service-burst-*.folded.txt [--top 30]

Layers are decided by the innermost frame that belongs to a known package or module (see
`LAYERS`), so "AMQP" is time spent inside aio-pika/aiormq/pamqp, whoever called it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (layer, pattern on "function (file:line)"); the first layer whose pattern matches the
# innermost-first frames wins.
LAYERS: list[tuple[str, re.Pattern[str]]] = [
    ("logging/metrics", re.compile(r"/logging/|service/logs\.py|redaction|prometheus|milestones")),
    ("AMQP (aio-pika, aiormq, pamqp)", re.compile(r"aio_pika|aiormq|pamqp")),
    ("FastStream dispatch/middleware", re.compile(r"faststream|fast_depends")),
    ("pydantic validation", re.compile(r"pydantic")),
    ("hub frames (websockets, hub.py)", re.compile(r"websockets|sinks/hub")),
    ("HTTP to the model (httpx2/httpcore/h11)", re.compile(r"httpx2|httpcore|h11")),
    ("SSE read (stream.py)", re.compile(r"assistant/stream\.py")),
    ("OpenAI SDK", re.compile(r"/openai/")),
    ("event handling (streamer, runner, backend)", re.compile(r"service/")),
    ("event loop (uvloop/asyncio)", re.compile(r"uvloop|asyncio")),
    ("json", re.compile(r"json")),
]


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        for name, pattern in LAYERS:
            if pattern.search(frame):
                return name
    return "other"


def summarise(path: Path, top: int) -> str:
    by_layer: Counter[str] = Counter()
    by_self: Counter[str] = Counter()
    by_total: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        by_layer[layer_of(frames)] += count
        by_self[frames[-1]] += count
        for frame in set(frames):
            by_total[frame] += count
    lines = [f"{total} samples", "", "by layer:"]
    for name, count in by_layer.most_common():
        lines.append(f"  {100 * count / total:5.1f} %  {name}")
    lines += ["", f"top {top} by self time:"]
    for name, count in by_self.most_common(top):
        lines.append(f"  {100 * count / total:5.1f} %  {name}")
    lines += ["", f"top {top} by total time:"]
    for name, count in by_total.most_common(top):
        lines.append(f"  {100 * count / total:5.1f} %  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(summarise(args.profile, args.top))


if __name__ == "__main__":
    main()
