"""Operability: the HTTP endpoints of a running service, metrics that move with requests,
milestone log lines, and the optional tracing (with an in-memory exporter, in process)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from service.assistant.events import RunEventHandler, RunResult, ToolCall, ToolOutcome
from service.config import Settings
from service.errors import ServiceError
from service.logs import JsonFormatter, TextFormatter
from service.observability import Observability, RequestTelemetry, ServiceMetrics
from service.redaction import Redactor
from service.schemas import ErrorCode, Usage
from tests.conftest import Fakes, Stack, start_stack
from tests.fakes.hub import RecordingHub
from tests.fakes.script import Text
from tests.fakes.script import ToolCall as ScriptedToolCall
from tests.harness import ROOT, SECRET_KEY

pytestmark = pytest.mark.timeout(60)
COMPLETED = 'assistant_requests_total{code="completed"}'


@dataclass
class Ops:
    stack: Stack
    hub: RecordingHub
    url: str
    http: httpx2.AsyncClient

    async def get(self, path: str) -> httpx2.Response:
        return await self.http.get(self.url + path)

    async def metrics(self) -> dict[str, float]:
        response = await self.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return parse_metrics(response.text)

    async def metrics_when(
        self, predicate: Callable[[dict[str, float]], bool], timeout: float = 5
    ) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while not predicate(metrics := await self.metrics()):
            if time.monotonic() > deadline:
                raise TimeoutError("the metrics never got there")
            await asyncio.sleep(0.05)
        return metrics

    async def until(self, path: str, status: int, timeout: float = 10) -> httpx2.Response:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = await self.get(path)
                if response.status_code == status:
                    return response
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"GET {path} never answered {status}")
            await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` → value, labels sorted as Prometheus writes them."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def grew(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture(scope="module")
async def ops(fakes: Fakes, log_dir: Path) -> AsyncIterator[Ops]:
    """A service with its own hub (this module takes it down), JSON logs, a known HTTP port."""
    hub = RecordingHub()
    await fakes.on_loop(hub.start())
    port = free_port()
    env = {
        "WEBSOCKET_URI": hub.uri,
        "HTTP_PORT": str(port),
        "LOG_FORMAT": "json",
        "HUB_RECONNECT_MIN": "0.05",
        "HUB_RECONNECT_MAX": "0.2",
    }
    try:
        async with (
            start_stack(fakes, log_dir, "responses", **env) as stack,
            httpx2.AsyncClient(timeout=5) as http,
        ):
            ops = Ops(stack, hub, f"http://127.0.0.1:{port}", http)
            await ops.until("/readyz", 200)
            yield ops
    finally:
        await fakes.on_loop(hub.stop())


async def test_healthz_and_readyz_answer_on_a_running_service(ops: Ops) -> None:
    health = await ops.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = await ops.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"broker": True, "consuming": True, "hub": True},
    }


async def test_metrics_move_when_requests_run(ops: Ops, fakes: Fakes) -> None:
    before = await ops.metrics()
    t = uuid.uuid4().hex[:8]
    fakes.openai.script(
        f"ops-weather {t}",
        [
            [ScriptedToolCall("get_weather", json.dumps({"city": "Makati"}))],
            [Text("Warm ", "and sunny.")],
        ],
    )
    body = ops.stack.request(f"ops-weather {t}", message_id=f"ops-{t}")
    await ops.stack.broker.publish(body)
    await ops.stack.broker.publish({"message": "", "channel": body["channel"]})
    event = await ops.stack.broker.wait_event(body["message_id"])
    assert event["event"] == "completed"
    # Counted once the event is published: the scrape may come a moment before that.
    after = await ops.metrics_when(lambda m: grew(before, m, COMPLETED) > 0)

    assert grew(before, after, COMPLETED) == 1
    assert grew(before, after, 'assistant_requests_total{code="invalid_request"}') == 1
    tool = 'assistant_tool_call_duration_seconds_count{outcome="ok",tool="get_weather"}'
    assert grew(before, after, tool) == 1
    assert grew(before, after, "assistant_time_to_first_token_seconds_count") == 1
    assert grew(before, after, 'assistant_run_duration_seconds_count{outcome="completed"}') == 1
    assert grew(before, after, "assistant_tokens_streamed_total") >= 2
    assert grew(before, after, 'assistant_model_tokens_total{kind="output"}') > 0
    assert after["assistant_requests_in_flight"] == 0
    assert after["assistant_hub_connected"] == 1
    assert "assistant_hub_send_queue_depth" in after
    assert "assistant_hub_reconnects_total" in after
    received = [k for k in after if k.startswith("faststream_received_messages_total{")]
    assert received and sum(grew(before, after, k) for k in received) == 2
    published = [k for k in after if k.startswith("faststream_published_messages_total{")]
    assert sum(grew(before, after, k) for k in published) >= 2


async def test_milestones_are_json_lines_with_ids_durations_and_the_final_code(
    ops: Ops, fakes: Fakes
) -> None:
    t = uuid.uuid4().hex[:8]
    fakes.openai.script(
        f"ops-logs {t}",
        [[ScriptedToolCall("get_weather", json.dumps({"city": "Cebu"}))], [Text("Hot.")]],
    )
    body = ops.stack.request(f"ops-logs {t}", message_id=f"logs-{t}")
    await ops.stack.broker.publish(body)
    await ops.stack.broker.wait_event(body["message_id"])
    # The final milestone is logged around the event's publish: wait for its line, not a while.
    deadline = time.monotonic() + 10
    while True:
        text = ops.stack.service.log_text()
        lines = text.splitlines()
        if any(body["message_id"] in line and '"milestone": "final"' in line for line in lines):
            break
        assert time.monotonic() < deadline, "the final milestone was never logged"
        await asyncio.sleep(0.02)
    assert SECRET_KEY not in text and "hub-token-SECRET-77" not in text
    mine = [json.loads(line) for line in text.splitlines() if body["message_id"] in line]
    milestones = {entry["milestone"]: entry for entry in mine if "milestone" in entry}
    assert list(milestones) == ["accepted", "tool_call", "first_token", "final"]
    for entry in milestones.values():
        assert entry["message_id"] == body["message_id"]
        assert entry["thread_id"] == body["channel"]
        assert entry["logger"] == "service.milestones"
    tool = milestones["tool_call"]
    assert (tool["tool"], tool["ok"]) == ("get_weather", True)
    assert isinstance(tool["duration_ms"], int)
    final = milestones["final"]
    assert final["code"] == "completed" and final["tool_calls"] == 1
    assert final["duration_ms"] >= final["ttft_ms"] == milestones["first_token"]["ttft_ms"]
    assert final["output_tokens"] > 0


async def test_asyncapi_endpoint_serves_this_instances_document(ops: Ops) -> None:
    response = await ops.get("/docs/asyncapi")
    assert response.status_code == 200
    document = yaml.safe_load(response.text)
    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    key = ops.stack.names.routing_key
    # The shard queues of replica mode are documented too (README "Running replicas").
    shards = f"{ops.stack.names.queue}.shard.{{shard}}"
    # And the cancel channel of §8 (README "Stop and double texting").
    assert addresses == {key, f"{key}.completed", f"{key}.failed", shards, f"{key}.cancel"}
    as_json = await ops.get("/docs/asyncapi.json")
    assert as_json.json() == document


async def test_readyz_is_503_while_the_hub_is_unreachable(ops: Ops, fakes: Fakes) -> None:
    before = await ops.metrics()
    await fakes.on_loop(ops.hub.stop())
    try:
        down = await ops.until("/readyz", 503)
        assert down.json()["checks"] == {"broker": True, "consuming": True, "hub": False}
        assert (await ops.get("/healthz")).status_code == 200
        assert (await ops.metrics())["assistant_hub_connected"] == 0
    finally:
        await fakes.on_loop(ops.hub.start())
    await ops.until("/readyz", 200)
    assert grew(before, await ops.metrics(), "assistant_hub_reconnects_total") >= 1


# -- in process: log formats, tracing ---------------------------------------------------------


def _record(msg: str, **extra: Any) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "service.milestones", "msg": msg, "levelno": 20})
    record.levelname = "INFO"
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_text_and_json_lines_carry_the_fields_and_mask_secrets() -> None:
    redactor = Redactor(["sk-live-123456"])
    fields = {"milestone": "final", "message_id": "m 1", "code": "completed", "ok": True}
    text = TextFormatter(redactor).format(_record("final key=sk-live-123456", **fields))
    assert re.search(r' final key=\*\*\* message_id="m 1" code=completed ok=true$', text)
    line = JsonFormatter(redactor).format(_record("final", **fields, error="sk-live-123456"))
    entry = json.loads(line)
    assert entry["milestone"] == "final" and entry["code"] == "completed"
    assert entry["error"] == "***" and "sk-live" not in line


class _Recorder(RunEventHandler):
    def __init__(self) -> None:
        self.events: list[str] = []

    async def on_tool_call_started(self, call: ToolCall) -> None:
        self.events.append(f"start {call.name}")

    async def on_text_delta(self, delta: str) -> None:
        self.events.append(f"text {delta}")

    async def on_completed(self, result: RunResult) -> None:
        self.events.append("completed")


@pytest.fixture
def spans() -> Any:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from service.observability.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


async def test_tracing_makes_stream_and_tool_spans_under_the_consume_span(spans: Any) -> None:
    tracing, exporter = spans
    telemetry = RequestTelemetry(ServiceMetrics(), tracing)
    inner = _Recorder()
    tracer = tracing.provider.get_tracer("test")
    with tracer.start_as_current_span("requests process") as parent:
        handler = telemetry.observe(inner, message_id="m-1", thread_id="conv_1")
    await handler.on_run_started("resp_1")
    calls = [
        ToolCall("call_1", "get_weather", "{}"),
        ToolCall("call_2", "get_available_offices", "{}"),
    ]
    for call in calls:
        await handler.on_tool_call_started(call)
    await handler.on_tool_call_finished(ToolOutcome("call_1", "get_weather", True, 40))
    await handler.on_tool_call_finished(ToolOutcome("call_2", "get_available_offices", False, 15))
    await handler.on_run_started("resp_2")
    await handler.on_text_delta("Hi")
    await handler.on_completed(RunResult("resp_2", "Hi", Usage(input_tokens=5, output_tokens=1)))

    assert inner.events == [
        "start get_weather",
        "start get_available_offices",
        "text Hi",
        "completed",
    ]
    finished = {span.name: span for span in exporter.get_finished_spans()}
    streams = [s for s in exporter.get_finished_spans() if s.name == "openai.stream"]
    assert [s.attributes["gen_ai.response.id"] for s in streams] == ["resp_1", "resp_2"]
    assert streams[1].attributes["gen_ai.usage.output_tokens"] == 1
    weather, offices = finished["tool get_weather"], finished["tool get_available_offices"]
    assert weather.status.is_ok and not offices.status.is_ok
    assert (weather.end_time - weather.start_time) // 1_000_000 == 40
    trace_id = parent.get_span_context().trace_id
    for span in [*streams, weather, offices]:
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == trace_id
        assert span.attributes["assistant.message_id"] == "m-1"


async def test_a_failed_run_ends_its_open_spans_with_an_error(spans: Any) -> None:
    tracing, exporter = spans
    handler = RequestTelemetry(ServiceMetrics(), tracing).observe(
        _Recorder(), message_id="m-2", thread_id="conv_2"
    )
    await handler.on_failed(ServiceError(ErrorCode.TIMEOUT, "too slow", retryable=True))
    (stream,) = exporter.get_finished_spans()
    assert stream.name == "openai.stream" and not stream.status.is_ok
    assert stream.attributes["assistant.code"] == "timeout"


def test_tracing_setting_adds_faststreams_rabbit_middleware_first() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from faststream.rabbit.opentelemetry import RabbitTelemetryMiddleware
    from faststream.rabbit.prometheus import RabbitPrometheusMiddleware

    settings = Settings(tracing_enabled=True, tracing_exporter="none")
    first, second = Observability(settings).broker_middlewares()
    assert isinstance(first, RabbitTelemetryMiddleware)
    assert isinstance(second, RabbitPrometheusMiddleware)
    (only,) = Observability(Settings()).broker_middlewares()
    assert isinstance(only, RabbitPrometheusMiddleware)


def test_tracing_is_off_by_default_and_opentelemetry_is_not_loaded() -> None:
    # (FastStream itself probes for the `opentelemetry.semconv` namespace; nothing more loads.)
    code = (
        "import sys, service.app; "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'opentelemetry.trace', 'service.observability.tracing'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
