"""`make bench`: the service against its bare loop, scenario by scenario.

    python -m benchmarks.run                       # every scenario + the concurrency sweep
    python -m benchmarks.run --scenario a          # one scenario (a/b/c/d, or its name)
    python -m benchmarks.run --quick               # small sizes, results in a temp dir
    python -m benchmarks.run --scenario b --profile /tmp/prof   # + py-spy of the service
    python -m benchmarks.run --smoke               # seconds, no verdicts (inside `make test`)
    python -m benchmarks.run --list                # every scenario, built in or registered

Scenario modules: any module in `benchmarks/` that registers a function with
`@benchmarks.registry.scenario(...)` is found without an edit here (see `registry.py`).

For each scenario the bare loop (`benchmarks/bare.py`) runs first, then the real service
(`faststream run service.app:app`, fresh RabbitMQ names, deleted afterwards), both against the
same fake OpenAI server and recording hub, each in a process of its own. Results go to
`benchmarks/results/<scenario>.json`, the sweep to `sweep.json` and `latency_cpu.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import metrics, procstat, registry, workload
from benchmarks.fakes import Fakes
from benchmarks.service import fresh_names, resolve_loop, running_service, service_env

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


class Bench:
    """One benchmark run: the fakes, where logs and results go, and how the service runs."""

    def __init__(self, args: argparse.Namespace, fakes: Fakes, log_dir: Path) -> None:
        self.args = args
        self.fakes = fakes
        self.log_dir = log_dir
        self.loop = resolve_loop(args.loop)
        self.extra_env = dict(item.split("=", 1) for item in args.env)
        self.table = (
            workload.SMOKE if args.smoke else workload.QUICK if args.quick else workload.FULL
        )
        self.tree = Path(args.service_dir) if args.service_dir else ROOT

    def _fake_cpu(self) -> tuple[float, float]:
        return procstat.cpu_seconds(self.fakes.openai.pid), procstat.cpu_seconds(self.fakes.hub.pid)

    def _fake_cpu_since(self, before: tuple[float, float]) -> tuple[float, float]:
        now = self._fake_cpu()
        return now[0] - before[0], now[1] - before[1]

    # -- the bare loop -----------------------------------------------------------------------

    async def bare(self, scenario: workload.Scenario) -> metrics.SideResult:
        self.fakes.reset()
        prefix = f"conv_bare_{uuid.uuid4().hex[:8]}"
        config = {
            "scenario": asdict(scenario),
            "prefix": prefix,
            "base_url": self.fakes.openai_base_url,
            "hub_uri": self.fakes.hub_uri,
            "loop": self.loop,
        }
        fake_before = self._fake_cpu()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.bare",
            json.dumps(config),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), scenario.timeout())
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(f"bare loop did not finish {scenario.name} in time") from None
        if process.returncode != 0:
            raise RuntimeError(f"bare loop failed:\n{err.decode(errors='replace')[-3000:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        fake_cpu = self._fake_cpu_since(fake_before)
        openai, hub = await asyncio.to_thread(self.fakes.collect, scenario.conversations + 1)
        errors = result["errors"]
        if errors:
            print(f"  bare loop: {len(errors)} errors, e.g. {errors[0]}", file=sys.stderr)
        starts: dict[str, float] = result["starts"]
        return metrics.summarise(
            scenario,
            starts=starts,
            conversations={f"{prefix}_{n}": n for n in range(scenario.conversations)},
            hub=hub,
            openai=openai,
            completed=scenario.conversations - len(errors),
            failed=len(errors),
            cpu_s=result["cpu_seconds"],
            peak_rss_bytes=result["peak_rss_bytes"],
            fake_cpu=fake_cpu,
        )

    # -- the service -------------------------------------------------------------------------

    async def service(
        self, scenario: workload.Scenario, env: Mapping[str, str] | None = None
    ) -> metrics.SideResult:
        """`scenario` against a fresh service process; `env`: settings on top of `--env`."""
        self.fakes.reset()
        names = fresh_names()
        prefix = f"conv_{names.prefix}"
        full_env = service_env(
            names,
            openai_base_url=self.fakes.openai_base_url,
            hub_uri=self.fakes.hub_uri,
            max_concurrency=scenario.prefetch,
            extra={**self.extra_env, **(env or {})},
        )
        n = scenario.conversations
        async with running_service(full_env, names, self.log_dir, self.loop, self.tree) as service:
            # Warm up (lazy imports, first connections), like the bare loop does.
            await service.publish(f"{prefix}_warmup", workload.WARMUP_MESSAGE)
            await service.wait_finished(1, timeout=60)
            service.published.clear()
            cpu_before, fake_before = service.cpu_seconds(), self._fake_cpu()
            with self._profiled(service.pid, scenario.name):
                if scenario.sequential:
                    for conv in range(n):
                        await service.publish(f"{prefix}_{conv}", _message(scenario, conv))
                        await service.wait_finished(conv + 2, timeout=60)
                elif scenario.at_once:
                    await service.publish_at_once(
                        [(f"{prefix}_{conv}", _message(scenario, conv)) for conv in range(n)]
                    )
                    await service.wait_finished(n + 1, timeout=scenario.timeout())
                else:
                    for conv in range(n):
                        await service.publish(f"{prefix}_{conv}", _message(scenario, conv))
                    await service.wait_finished(n + 1, timeout=scenario.timeout())
            cpu = service.cpu_seconds() - cpu_before
            fake_cpu = self._fake_cpu_since(fake_before)
            peak_rss = service.peak_rss_bytes()
            events = list(service.broker.events)
            published = dict(service.published)
        openai, hub = await asyncio.to_thread(self.fakes.collect, n + 1)
        events = [e for e in events if e.get("channel") != f"{prefix}_warmup"]
        completed = sum(1 for e in events if e.get("event") == "completed")
        failed = [e for e in events if e.get("event") == "failed"]
        if failed:
            print(f"  service: {len(failed)} failed, e.g. {failed[0]}", file=sys.stderr)
        return metrics.summarise(
            scenario,
            starts=published,
            conversations={f"{prefix}_{conv}": conv for conv in range(n)},
            hub=hub,
            openai=openai,
            completed=completed,
            failed=len(failed),
            cpu_s=cpu,
            peak_rss_bytes=peak_rss,
            fake_cpu=fake_cpu,
        )

    @contextlib.contextmanager
    def _profiled(self, pid: int, name: str) -> Iterator[None]:
        if not self.args.profile:
            yield
            return
        out = Path(self.args.profile) / f"service-{name}-{int(time.time())}.folded.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(self.args.profile_rate),
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
            print(f"  profile: {out}")

    # -- one scenario ------------------------------------------------------------------------

    async def scenario(self, scenario: workload.Scenario) -> dict[str, Any]:
        print(f"\n== {scenario.name}: {scenario.title}", flush=True)
        sides: dict[str, metrics.SideResult] = {}
        for side in self.args.sides:
            started = time.monotonic()
            runner = self.bare if side == "bare" else self.service
            sides[side] = await runner(scenario)
            print(f"  {side}: done in {time.monotonic() - started:.1f} s", flush=True)
        result: dict[str, Any] = {
            "scenario": asdict(scenario),
            "title": scenario.title,
            **{side: value.as_dict() for side, value in sides.items()},
        }
        if "service" in sides and "bare" in sides:
            result["ratios"] = _ratios(sides["service"], sides["bare"])
        if "service" in sides:
            result["targets"] = _targets(scenario, sides["service"], sides.get("bare"))
        result["environment"] = self.environment()
        _print_result(result)
        return result

    def environment(self) -> dict[str, Any]:
        return {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loop": self.loop,
            "service_env": self.extra_env,
            "service_dir": self.args.service_dir,
            "commit": _git("rev-parse", "--short", "HEAD"),
            "dirty": bool(_git("status", "--porcelain", "--", "service", "settings.toml")),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


@registry.scenario(
    "hub", "payload modes and hub protocols (issue 13, benchmarks/hub_modes.py)", file="hub_modes"
)
async def _hub_modes(ctx: registry.Context) -> dict[str, Any]:
    from benchmarks import hub_modes

    result: dict[str, Any] = await hub_modes.run(quick=ctx.quick)
    return result


def _message(scenario: workload.Scenario, conv: int) -> str:
    return workload.message(conv, scenario.tokens, scenario.interval, scenario.delay)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


RATIO_FIELDS = (
    "tokens_per_s",
    "cpu_s_per_1k_tokens",
    "token_latency_p50_ms",
    "token_latency_p99_ms",
    "first_text_p50_ms",
    "peak_rss_mb",
)


def _ratios(service: metrics.SideResult, bare: metrics.SideResult) -> dict[str, float | None]:
    s, b = service.as_dict(), bare.as_dict()
    return {name: metrics.ratio(s[name], b[name]) for name in RATIO_FIELDS}


def _targets(
    scenario: workload.Scenario, service: metrics.SideResult, bare: metrics.SideResult | None
) -> list[dict[str, Any]]:
    """The targets of issue 6 for this scenario, each with the measured value and a verdict."""
    found: list[dict[str, Any]] = []

    def target(name: str, wanted: str, value: Any, ok: bool) -> None:
        found.append({"target": name, "wanted": wanted, "measured": value, "ok": bool(ok)})

    all_done = (
        service.completed == scenario.conversations
        and service.failed == 0
        and service.tokens_lost == 0
    )
    target(
        "all complete",
        f"{scenario.conversations} completed, 0 failed, 0 tokens lost",
        f"{service.completed} completed, {service.failed} failed, "
        f"{service.tokens_lost} tokens lost",
        all_done,
    )
    base = scenario.name.split("-")[0]
    if base in ("concurrent", "sweep"):
        p99 = service.token_latency_p99_ms
        target("token-to-hub p99", "<= 100 ms", p99, p99 is not None and p99 <= 100)
        if bare is not None:
            s, b = service.cpu_s_per_1k_tokens, bare.cpu_s_per_1k_tokens
            target(
                "CPU per 1k tokens",
                f"<= bare loop's ({b} s)",
                s,
                s is not None and b is not None and s <= b,
            )
    elif base == "throughput" and bare is not None:
        wanted = round(0.8 * bare.tokens_per_s, 1)
        target(
            "tokens/s",
            f">= 0.8 x bare loop's = {wanted}",
            service.tokens_per_s,
            service.tokens_per_s >= wanted,
        )
    elif base == "slow":
        target(
            "all held",
            f"{scenario.conversations} conversations streaming at once",
            service.peak_concurrent,
            service.peak_concurrent >= scenario.conversations,
        )
        target("peak RSS", "<= 300 MB", service.peak_rss_mb, service.peak_rss_mb <= 300)
    elif base == "sequential":
        over = service.first_text_overhead_p50_ms
        target(
            "publish -> first text payload, beyond the model's own delay (p50)",
            "<= 10 ms",
            over,
            over is not None and over <= 10,
        )
    return found


SHOWN = (
    ("completed", "completed"),
    ("requests/s", "requests_per_s"),
    ("tokens/s to hub", "tokens_per_s"),
    ("hub payloads", "hub_payloads"),
    ("token->hub p50 ms", "token_latency_p50_ms"),
    ("token->hub p99 ms", "token_latency_p99_ms"),
    ("first payload p50 ms", "first_payload_p50_ms"),
    ("first text p50 ms", "first_text_p50_ms"),
    ("  beyond model p50 ms", "first_text_overhead_p50_ms"),
    ("CPU s / 1k tokens", "cpu_s_per_1k_tokens"),
    ("CPU s", "cpu_s"),
    ("peak RSS MB", "peak_rss_mb"),
    ("peak concurrent", "peak_concurrent"),
    ("fake OpenAI CPU s", "fake_openai_cpu_s"),
    ("fake hub CPU s", "fake_hub_cpu_s"),
)


def _print_result(result: dict[str, Any]) -> None:
    service, bare = result.get("service", {}), result.get("bare", {})
    print(f"  {'':24}{'service':>12}{'bare':>12}{'ratio':>8}")
    for label, key in SHOWN:
        s, b = service.get(key), bare.get(key)
        r = (
            metrics.ratio(s, b)
            if isinstance(s, int | float) and isinstance(b, int | float)
            else None
        )
        print(f"  {label:24}{_cell(s):>12}{_cell(b):>12}{_cell(r):>8}")
    for t in result.get("targets", []):
        verdict = "PASS" if t["ok"] else "MISS"
        print(f"  [{verdict}] {t['target']}: {t['measured']} (wanted {t['wanted']})")


def print_columns(columns: Mapping[str, Mapping[str, Any]], keys: list[str] | None = None) -> None:
    """`{column: {key: value}}` as a table, one row per key."""
    if not columns:
        return
    keys = keys or [k for k, v in next(iter(columns.values())).items() if not isinstance(v, dict)]
    print(f"  {'':28}" + "".join(f"{name:>14}" for name in columns))
    for key in keys:
        print(f"  {key:28}" + "".join(f"{_cell(col.get(key)):>14}" for col in columns.values()))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _write(out: Path, name: str, data: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    print(f"  -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


async def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("aio_pika", "aiormq"):  # consumer cancellations while a run is cleaned up
        logging.getLogger(noisy).setLevel(logging.ERROR)
    found = registry.discover()
    table = workload.SMOKE if args.smoke else workload.QUICK if args.quick else workload.FULL
    known = [*table, "sweep", *found]
    if args.list:
        for name, shape in table.items():
            print(f"{name:14} {shape.title}")
        print(
            f"{'sweep':14} scenario (a) at {', '.join(map(str, workload.SWEEP_LEVELS))} conversations"
        )
        for name, entry in found.items():
            print(f"{name:14} {entry.title}{'' if entry.default else '  (only when named)'}")
        return 0
    chosen = [workload.ALIASES.get(name, name) for name in args.scenario]
    if not chosen:
        if args.smoke:
            chosen = [*workload.SMOKE, *(n for n, e in found.items() if e.smoke)]
        else:
            chosen = [*table, "sweep", *(n for n, e in found.items() if e.default)]
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {unknown}; choose from {known}")
    temp = args.quick or args.smoke
    out = Path(args.out) if args.out else (RESULTS if not temp else Path(tempfile.mkdtemp()))
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    print(f"service logs: {log_dir}\nresults: {out}", flush=True)
    _raise_fd_limit()

    fakes = await asyncio.to_thread(Fakes)
    bench = Bench(args, fakes, log_dir)
    print(f"event loop: {bench.loop}; {os.cpu_count()} CPUs", flush=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in chosen:
            if name == "sweep":
                continue
            if name in table:
                results[name] = await bench.scenario(table[name])
            else:
                entry = found[name]
                print(f"\n== {name}: {entry.title}", flush=True)
                results[name] = {
                    **await entry.run(registry.Context(bench)),
                    "environment": bench.environment(),
                }
                for t in results[name].get("targets", []):
                    verdict = "PASS" if t["ok"] else "MISS"
                    print(f"  [{verdict}] {t['target']}: {t['measured']} (wanted {t['wanted']})")
            _write(out, found[name].file if name in found else name, results[name])
        if "sweep" in chosen:
            base = table["concurrent"]
            levels = workload.QUICK_SWEEP_LEVELS if temp else workload.SWEEP_LEVELS
            points = []
            for level_scenario in workload.sweep(base, levels):
                reuse = results.get("concurrent")
                if reuse is not None and level_scenario.conversations == base.conversations:
                    point = {**reuse, "scenario": asdict(level_scenario)}
                else:
                    point = await bench.scenario(level_scenario)
                points.append(point)
            _write(out, "sweep", {"points": points, "environment": bench.environment()})
            try:
                from benchmarks.plot import plot_sweep

                print(f"  -> {plot_sweep(points, out / 'latency_cpu.png')}")
            except ImportError as exc:
                print(f"  no plot ({exc}): pip install -e '.[bench]'", file=sys.stderr)
    finally:
        await asyncio.to_thread(fakes.stop)
    if args.smoke:
        print("\nsmoke run done (no verdicts)")
        return 0
    missed = [
        f"{name}: {t['target']}"
        for name, result in results.items()
        for t in result.get("targets", [])
        if not t["ok"]
    ]
    print("\nall targets met" if not missed else "\ntargets missed:\n  " + "\n  ".join(missed))
    return 0


def _raise_fd_limit() -> None:
    """Thousands of conversations need thousands of sockets in the service, the bare loop and
    the fakes (all children of this process): raise the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        help="a/concurrent, b/throughput, c/slow, d/sequential, sweep or a registered "
        "scenario (repeatable; default: all of them; --list shows them)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--quick", action="store_true", help="small sizes, results in a temp dir")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, a few seconds, no verdicts: checks the benchmark code still runs",
    )
    parser.add_argument("--out", help="results directory (default: benchmarks/results)")
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop of the service and the bare loop (auto: what `faststream run` "
        "picks, uvloop when installed)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for the service, e.g. DELTA_FLUSH_MS=50",
    )
    parser.add_argument(
        "--side",
        dest="sides",
        action="append",
        choices=["bare", "service"],
        help="run only this side (default: both)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the service into DIR (folded stacks: python -m benchmarks.profile_summary)",
    )
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument(
        "--service-dir",
        metavar="DIR",
        help="run the service from this tree (a copy or another checkout holding `service/` "
        "and `settings.toml`), to compare two versions on the same machine",
    )
    args = parser.parse_args(argv)
    args.sides = args.sides or ["bare", "service"]
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
