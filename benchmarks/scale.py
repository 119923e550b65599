"""Scale: 5,000 slow conversations (1 token/s) in one process, all streaming at the same moment.

The same answers at two sizes, one service process each: 200 conversations and 5,000. Issue 16
asks, at 5,000: every conversation open at once, peak RSS <= 1 GB, and CPU per 1,000 tokens
<= 1.1 x the 200-conversation run's (what each conversation costs must not grow with their
number). Also reported: how fast the service takes requests in (first payloads per second and
model requests per second, from the first publish).
"""

from __future__ import annotations

from typing import Any

from benchmarks import metrics, workload
from benchmarks.registry import Context, scenario

SIZES = {"full": (200, 5000), "quick": (50, 500), "smoke": (5, 20)}
# Long enough that the last request is taken in while the first still streams.
TOKENS = {"full": 60, "quick": 12, "smoke": 3}
INTERVAL = 1.0


def _mode(ctx: Context) -> str:
    return "smoke" if ctx.smoke else "quick" if ctx.quick else "full"


@scenario(
    "scale", "5,000 conversations at 1 token/s in one process, against 200 of them", smoke=True
)
async def scale(ctx: Context) -> dict[str, Any]:
    mode = _mode(ctx)
    small_n, large_n = SIZES[mode]
    tokens = TOKENS[mode]
    interval = INTERVAL if mode != "smoke" else 0.05
    shapes = {
        str(n): workload.Scenario(
            f"scale-{n}", "(scale)", n, tokens, interval, max_concurrency=n, at_once=True
        )
        for n in (small_n, large_n)
    }
    results: dict[str, dict[str, Any]] = {}
    for label, shape in shapes.items():
        print(f"  {label} conversations ...", flush=True)
        results[label] = (await ctx.service_side(shape)).as_dict()
    keys = [
        "completed",
        "failed",
        "tokens_lost",
        "peak_concurrent",
        "intake_per_s",
        "model_requests_per_s",
        "first_payload_p99_ms",
        "first_text_p50_ms",
        "first_text_p99_ms",
        "token_latency_p50_ms",
        "token_latency_p99_ms",
        "cpu_s",
        "cpu_s_per_1k_tokens",
        "peak_rss_mb",
        "fake_openai_cpu_s",
        "fake_hub_cpu_s",
    ]
    ctx.table(results, keys)
    small, large = results[str(small_n)], results[str(large_n)]
    cpu_ratio = metrics.ratio(large["cpu_s_per_1k_tokens"], small["cpu_s_per_1k_tokens"])
    print(f"  CPU per 1k tokens, {large_n} / {small_n}: {cpu_ratio}")
    return {
        "scenario": {"sizes": [small_n, large_n], "tokens": tokens, "interval": interval},
        **results,
        "ratios": {"cpu_s_per_1k_tokens": cpu_ratio},
        "targets": [
            ctx.target(
                "all complete",
                f"{large_n} completed, 0 failed, 0 tokens lost",
                f"{large['completed']} completed, {large['failed']} failed, "
                f"{large['tokens_lost']} lost",
                large["completed"] == large_n and not large["failed"] and not large["tokens_lost"],
            ),
            ctx.target(
                "all streaming at once",
                f"{large_n} conversations open together",
                large["peak_concurrent"],
                large["peak_concurrent"] >= large_n,
            ),
            ctx.target(
                "peak RSS", "<= 1024 MB", large["peak_rss_mb"], large["peak_rss_mb"] <= 1024
            ),
            ctx.target(
                "CPU per 1k tokens",
                f"<= 1.1 x that of {small_n} conversations",
                f"{cpu_ratio} x",
                cpu_ratio is not None and cpu_ratio <= 1.1,
            ),
        ],
    }
