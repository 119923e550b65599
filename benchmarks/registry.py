"""Scenarios beyond the load shapes of `benchmarks.workload`, found by `benchmarks.run` itself.

Adding a scenario needs no edit to `run.py`: put a module in `benchmarks/` that registers an
async function with `@scenario(...)`. `benchmarks.run` imports every module of the package
(except its own machinery, `INTERNAL`) before it parses `--scenario`, so the decorator runs.

    # benchmarks/hub_modes.py
    from typing import Any

    from benchmarks.registry import Context, scenario

    @scenario("hub-modes", "compact vs full hub frames at 200 conversations")
    async def hub_modes(ctx: Context) -> dict[str, Any]:
        shape = ctx.shape("concurrent")              # scenario (a), small under --quick/--smoke
        full = await ctx.service_side(shape)                           # a SideResult
        compact = await ctx.service_side(shape, env={"HUB_MODE": "compact"})
        ctx.table({"full": full.as_dict(), "compact": compact.as_dict()})
        return {"full": full.as_dict(), "compact": compact.as_dict(),
                "targets": [ctx.target("compact CPU", "<= full", ...)]}

    python -m benchmarks.run --scenario hub-modes      # just this one
    python -m benchmarks.run --list                    # every scenario, built in or registered

The returned dict is written to `benchmarks/results/<name>.json` (a temp dir under
`--quick`/`--smoke`); its optional `targets` (see `Context.target`) join the run's verdict.
`ctx.smoke` is true inside `make test` (`--smoke`): keep that run to a few seconds, and never
turn a speed number into a failure there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import metrics, workload
from benchmarks.service import ServiceUnderTest, fresh_names, running_service, service_env

if TYPE_CHECKING:
    from benchmarks.run import Bench

# Modules of `benchmarks/` that are machinery, not scenario modules: never imported to discover.
INTERNAL = frozenset(
    {
        "run",
        "registry",
        "bare",
        "fakes",
        "metrics",
        "minimal",
        "plot",
        "procstat",
        "profile_summary",
        "service",
        "workload",
    }
)


class Context:
    """What a registered scenario gets: the run's fakes, sizes, and ways to run the service."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    @property
    def quick(self) -> bool:
        """`--quick` or `--smoke`: use small sizes."""
        return bool(self.bench.args.quick or self.bench.args.smoke)

    @property
    def smoke(self) -> bool:
        """`--smoke` (inside `make test`): a few seconds at most, no speed verdicts."""
        return bool(self.bench.args.smoke)

    @property
    def fakes(self) -> Any:
        """`benchmarks.fakes.Fakes`: `openai_base_url`, `hub_uri`, `reset()`, `collect()`."""
        return self.bench.fakes

    @property
    def log_dir(self) -> Path:
        return self.bench.log_dir

    def shape(self, name: str) -> workload.Scenario:
        """A built-in load shape (concurrent/throughput/slow/sequential) at this run's size."""
        return self.bench.table[workload.ALIASES.get(name, name)]

    async def service_side(
        self, shape: workload.Scenario, env: Mapping[str, str] | None = None
    ) -> metrics.SideResult:
        """Run `shape` against a fresh service (extra settings `env`); its numbers."""
        return await self.bench.service(shape, env=env)

    async def bare_side(self, shape: workload.Scenario) -> metrics.SideResult:
        """Run `shape` with the bare loop (`benchmarks/bare.py`); its numbers."""
        return await self.bench.bare(shape)

    @contextlib.asynccontextmanager
    async def service(
        self, env: Mapping[str, str] | None = None, *, max_concurrency: int = 200
    ) -> AsyncIterator[ServiceUnderTest]:
        """A fresh service process on fresh RabbitMQ names, for scenarios that drive it
        themselves (`publish`, `wait_finished`, `cpu_seconds`, `broker.events`, `names`)."""
        names = fresh_names()
        full_env = service_env(
            names,
            openai_base_url=self.fakes.openai_base_url,
            hub_uri=self.fakes.hub_uri,
            max_concurrency=max_concurrency,
            extra={**self.bench.extra_env, **(env or {})},
        )
        async with running_service(
            full_env, names, self.log_dir, self.bench.loop, self.bench.tree
        ) as running:
            yield running

    @staticmethod
    def target(name: str, wanted: str, measured: Any, ok: bool) -> dict[str, Any]:
        """One verdict line, in the shape `benchmarks.run` prints and collects."""
        return {"target": name, "wanted": wanted, "measured": measured, "ok": bool(ok)}

    @staticmethod
    def table(columns: Mapping[str, Mapping[str, Any]], keys: list[str] | None = None) -> None:
        """Print `{column: {key: value}}` as a table (keys: default every key of the first)."""
        from benchmarks.run import print_columns

        print_columns(columns, keys)


ScenarioFn = Callable[[Context], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Registered:
    name: str
    title: str
    run: ScenarioFn
    default: bool  # part of a plain `make bench`
    smoke: bool  # part of `--smoke` (inside `make test`)
    file: str  # results go to `<file>.json`


REGISTRY: dict[str, Registered] = {}


def scenario(
    name: str, title: str, *, default: bool = True, smoke: bool = False, file: str | None = None
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register `fn` as scenario `name` (`--scenario name`).

    `default`: run by a plain `make bench`; `smoke`: run by `--smoke` too (keep it seconds);
    `file`: the results file's name (default: `name`)."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        # (the same function again is fine: `run.py` runs as __main__ and may be imported too)
        if name in REGISTRY and REGISTRY[name].run.__qualname__ != fn.__qualname__:
            raise ValueError(f"benchmark scenario {name!r} registered twice")
        REGISTRY[name] = Registered(name, title, fn, default, smoke, file or name)
        return fn

    return register


def discover() -> dict[str, Registered]:
    """Import every scenario module of `benchmarks/`; the registry afterwards."""
    import importlib
    import pkgutil

    import benchmarks

    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name not in INTERNAL and not info.name.startswith("_"):
            importlib.import_module(f"benchmarks.{info.name}")
    return REGISTRY
