"""The sweep plot: token-to-hub latency and CPU per 1,000 tokens against concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_sweep(points: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [p["scenario"]["conversations"] for p in points]
    fig, (latency, cpu) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    styles = {"service": ("tab:blue", "service"), "bare": ("tab:gray", "bare loop")}
    for side, (color, label) in styles.items():
        if not all(side in p for p in points):
            continue
        latency.plot(
            levels, [p[side]["token_latency_p50_ms"] for p in points],
            "o--", color=color, label=f"{label} p50",
        )  # fmt: skip
        latency.plot(
            levels, [p[side]["token_latency_p99_ms"] for p in points],
            "o-", color=color, label=f"{label} p99",
        )  # fmt: skip
        cpu.plot(
            levels, [p[side]["cpu_s_per_1k_tokens"] for p in points],
            "o-", color=color, label=label,
        )  # fmt: skip
    latency.axhline(100, color="tab:red", linewidth=0.8, linestyle=":", label="p99 target")
    tokens, interval = points[0]["scenario"]["tokens"], points[0]["scenario"]["interval"]
    rate = f"{1 / interval:g} tokens/s" if interval else "max rate"
    latency.set_title(f"token-to-hub latency ({tokens} tokens each at {rate})")
    latency.set_xlabel("concurrent conversations")
    latency.set_ylabel("ms")
    latency.set_ylim(bottom=0)
    cpu.set_title("process CPU per 1,000 tokens delivered")
    cpu.set_xlabel("concurrent conversations")
    cpu.set_ylabel("CPU seconds")
    cpu.set_ylim(bottom=0)
    for axes in (latency, cpu):
        axes.set_xticks(levels)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
