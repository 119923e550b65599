"""The Assistants API backend with the real SDK against the fake OpenAI server, and the CLI.

The backend is driven through the `Runner` (which owns `on_completed`/`on_failed`) with a
recording event handler and the real tool registry (against the fake OpenWeather/KMC APIs).
Every test (and every CLI run) turns DeprecationWarnings into errors: the SDK's warnings for
the Assistants API must be silenced at the call sites that expect them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from aiohttp import web

from service.assistant.assistants import (
    AssistantNotConfigured,
    AssistantsBackend,
    legacy_api,
)
from service.assistant.events import RunEventHandler, RunResult, ToolCall, ToolOutcome
from service.assistant.retry import RetryPolicy
from service.assistant.runner import Runner
from service.errors import ServiceError
from service.schemas import ErrorCode
from service.tools import ToolConfig, ToolRegistry
from tests.fakes.apis import FakeApis
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import Drop, HttpError, Stall, StreamError, Text, Usage, tool_outputs
from tests.fakes.script import ToolCall as ScriptedToolCall

pytestmark = pytest.mark.filterwarnings("error:The Assistants API is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
ASSISTANT_ID = "asst_test"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def fresh(fake: FakeOpenAI) -> None:
    fake.reset()


@pytest.fixture(scope="module")
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
async def registry() -> AsyncIterator[ToolRegistry]:
    apis = FakeApis()
    await apis.start()
    config = ToolConfig(
        openweather_api_key=apis.openweather_key,
        openweather_base_url=apis.base_url,
        kmc_api_url=apis.base_url,
        kmc_api_key=apis.kmc_key,
        timeout=3,
    )
    async with httpx2.AsyncClient() as http:
        yield ToolRegistry.from_config(config, http)
    await apis.stop()


def make_backend(
    client: openai.AsyncOpenAI,
    registry: ToolRegistry,
    *,
    attempts: int = 1,
    idle: float = 5.0,
    stale_after: float = 300.0,
) -> AssistantsBackend:
    return AssistantsBackend(
        client,
        assistant_id=ASSISTANT_ID,
        toolbox=registry,
        retry=RetryPolicy(attempts=attempts, backoff=0.01),
        idle_timeout=idle,
        stale_after=stale_after,
        poll_interval=0.05,
        max_poll_interval=0.2,
    )


class Recorder(RunEventHandler):
    """Every handler call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    async def on_run_started(self, run_id: str | None) -> None:
        self.events.append(("started", run_id))

    async def on_tool_call_started(self, call: ToolCall) -> None:
        self.events.append(("tool_started", call))

    async def on_tool_call_finished(self, outcome: ToolOutcome) -> None:
        self.events.append(("tool_finished", outcome))

    async def on_text_delta(self, delta: str) -> None:
        self.events.append(("delta", delta))

    async def on_completed(self, result: RunResult) -> None:
        self.events.append(("completed", result))

    async def on_failed(self, error: ServiceError) -> None:
        self.events.append(("failed", error))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def of(self, kind: str) -> list[Any]:
        return [value for k, value in self.events if k == kind]

    @property
    def text_started(self) -> bool:
        return bool(self.of("delta"))


async def run_request(
    backend: AssistantsBackend, thread_id: str, message: str, recorder: Recorder | None = None
) -> tuple[RunResult | ServiceError, Recorder]:
    recorder = recorder or Recorder()
    outcome = await Runner(backend, run_timeout=10).run(
        thread_id, message, recorder, text_started=lambda: recorder.text_started
    )
    finals = [kind for kind in recorder.kinds() if kind in ("completed", "failed")]
    assert len(finals) == 1 and recorder.kinds()[-1] == finals[0]
    return outcome, recorder


def failed(outcome: RunResult | ServiceError) -> ServiceError:
    assert isinstance(outcome, ServiceError), outcome
    return outcome


def completed(outcome: RunResult | ServiceError) -> RunResult:
    assert isinstance(outcome, RunResult), outcome
    return outcome


def thread_statuses(fake: FakeOpenAI, thread_id: str) -> list[str]:
    return [run["status"] for run in fake.thread_runs(thread_id)]


# --- streaming and tools --------------------------------------------------------------------


async def test_text_streams_as_deltas_and_completes_with_the_runs_usage(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    fake.script("hello", [[Text("Hel", "lo ", "world"), Usage(7, 3)]])

    outcome, recorder = await run_request(make_backend(client, registry), "thread_t1", "hello")

    result = completed(outcome)
    assert recorder.kinds() == ["started", "delta", "delta", "delta", "completed"]
    assert recorder.of("delta") == ["Hel", "lo ", "world"]
    assert result.text == "Hello world"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (7, 3)
    assert result.run_id is not None and recorder.of("started") == [result.run_id]
    message = fake.requests_to("POST", "/v1/threads/thread_t1/messages")[0].body
    assert (message["role"], message["content"]) == ("user", "hello")
    run = fake.requests_to("POST", "/v1/threads/thread_t1/runs")[0].body
    assert run["assistant_id"] == ASSISTANT_ID and run["stream"] is True
    assert [tool["function"]["name"] for tool in run["tools"]] == list(registry.names)
    assert thread_statuses(fake, "thread_t1") == ["completed"]
    fake.assert_complete()


async def test_tool_round_trip_is_one_logical_run(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    def answer_from_tool(body: dict[str, Any]) -> list[Any]:
        (output,) = tool_outputs(body)
        weather = json.loads(output.output)
        return [Text("It is ", f"{weather['temperature']}°C.")]

    fake.script(
        "Makati",
        [
            [Text("Checking. "), ScriptedToolCall("get_weather", '{"city": "Makati"}')],
            answer_from_tool,
        ],
    )

    outcome, recorder = await run_request(
        make_backend(client, registry), "thread_t2", "weather in Makati?"
    )

    result = completed(outcome)
    assert recorder.kinds() == [
        "started",
        "delta",
        "tool_started",
        "tool_finished",
        "delta",
        "delta",
        "completed",
    ]
    (call,) = recorder.of("tool_started")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Makati"})
    (outcome_,) = recorder.of("tool_finished")
    assert outcome_.ok and outcome_.call_id == call.call_id
    assert result.text == "Checking. It is 31.2°C."
    assert [(r.name, r.call_id, r.ok) for r in result.tool_calls] == [
        ("get_weather", call.call_id, True)
    ]
    # One run on the thread, continued with the tool outputs, not a second run.
    assert len(fake.requests_to("POST", "/v1/threads/thread_t2/runs")) == 1
    (submit,) = fake.requests_to("POST", r"/v1/threads/thread_t2/runs/[^/]+/submit_tool_outputs")
    assert submit.path.split("/")[-2] == result.run_id
    assert thread_statuses(fake, "thread_t2") == ["completed"]
    fake.assert_complete()


async def test_retryable_failure_before_any_text_is_retried_on_a_new_run(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    fake.script("flaky", [[HttpError(500)], [StreamError()], [Drop()], [Text("ok")]])

    outcome, recorder = await run_request(
        make_backend(client, registry, attempts=4), "thread_t3", "flaky"
    )

    assert completed(outcome).text == "ok"
    # The 500 created no run; the failed and the dropped runs were replaced by new ones.
    assert len(recorder.of("started")) == 3
    assert len(fake.requests_to("POST", "/v1/threads/thread_t3/messages")) == 1
    assert thread_statuses(fake, "thread_t3") == ["completed", "failed", "failed"]
    fake.assert_complete()


async def test_stream_broken_after_text_is_not_retried(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    fake.script("break", [[Text("par"), Drop()]])

    outcome, recorder = await run_request(
        make_backend(client, registry, attempts=3), "thread_t4", "break"
    )

    error = failed(outcome)
    assert (error.code, error.retryable) == (ErrorCode.UPSTREAM_ERROR, True)
    assert recorder.of("delta") == ["par"]
    fake.assert_complete()


async def test_quiet_stream_ends_with_timeout_and_the_run_is_not_left_active(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    fake.script("slow", [[Text("a"), Stall(3)]])

    outcome, _ = await run_request(make_backend(client, registry, idle=0.3), "thread_t5", "slow")

    assert failed(outcome).code is ErrorCode.TIMEOUT
    assert all(s not in ("queued", "in_progress") for s in thread_statuses(fake, "thread_t5"))


# --- how runs end ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "code"),
    [
        (StreamError(), ErrorCode.UPSTREAM_ERROR),
        (StreamError(code="rate_limit_exceeded", message="slow down"), ErrorCode.RATE_LIMITED),
        (StreamError(kind="error"), ErrorCode.UPSTREAM_ERROR),
        (StreamError(kind="error", code="rate_limit_exceeded"), ErrorCode.RATE_LIMITED),
    ],
    ids=["failed", "failed-rate-limited", "error-event", "error-event-rate-limited"],
)
async def test_failed_run_or_error_event_ends_the_request_with_its_code(
    fake: FakeOpenAI,
    client: openai.AsyncOpenAI,
    registry: ToolRegistry,
    step: StreamError,
    code: ErrorCode,
) -> None:
    fake.script("doomed", [[Text("x"), step]])

    outcome, recorder = await run_request(make_backend(client, registry), "thread_t6", "doomed")

    assert failed(outcome).code is code
    assert recorder.kinds() == ["started", "delta", "failed"]
    fake.assert_complete()


async def test_run_cancelled_elsewhere_ends_the_request(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    fake.script("long", [[Text("a", "b", "c", "d", interval=0.1)]])

    class CancelOnFirstText(Recorder):
        async def on_text_delta(self, delta: str) -> None:
            await super().on_text_delta(delta)
            if len(self.of("delta")) == 1:
                with legacy_api():
                    cancel = client.beta.threads.runs.cancel(
                        self.of("started")[0], thread_id="thread_t7"
                    )
                await cancel

    outcome, _ = await run_request(
        make_backend(client, registry), "thread_t7", "long", CancelOnFirstText()
    )

    error = failed(outcome)
    assert (error.code, error.retryable) == (ErrorCode.UPSTREAM_ERROR, False)
    assert thread_statuses(fake, "thread_t7") == ["cancelled"]
    fake.assert_complete()


class RawRuns:
    """A bare Assistants endpoint answering every run with the same raw SSE events: run endings
    (and malformed events) the scripted fake does not produce."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/threads/{thread}", self._thread)
        app.router.add_post("/v1/threads/{thread}/messages", self._message)
        app.router.add_post("/v1/threads/{thread}/runs", self._run)
        app.router.add_post("/v1/threads/{thread}/runs/{run}/cancel", self._cancel)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _thread(self, request: web.Request) -> web.Response:
        thread = request.match_info["thread"]
        return web.json_response({"id": thread, "object": "thread", "created_at": 0})

    async def _message(self, request: web.Request) -> web.Response:
        return web.json_response({"id": "msg_raw", "object": "thread.message"})

    async def _cancel(self, request: web.Request) -> web.Response:
        error = {"message": "Cannot cancel run with status 'failed'.", "type": "invalid_request"}
        return web.json_response({"error": error}, status=400)

    async def _run(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for name, data in self.events:
            await response.write(f"event: {name}\ndata: {data}\n\n".encode())
        await response.write_eof()
        return response


def raw_run(status: str, **fields: Any) -> str:
    return json.dumps({"id": "run_raw", "object": "thread.run", "status": status, **fields})


@pytest.fixture(scope="module")
async def raw() -> AsyncIterator[RawRuns]:
    server = RawRuns()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize(
    ("ending", "code"),
    [
        (("thread.run.expired", raw_run("expired")), ErrorCode.TIMEOUT),
        (("thread.run.incomplete", raw_run("incomplete")), ErrorCode.UPSTREAM_ERROR),
        (("thread.run.cancelled", raw_run("cancelled")), ErrorCode.UPSTREAM_ERROR),
        (
            ("thread.run.failed", raw_run("failed", last_error={"code": "invalid_prompt"})),
            ErrorCode.UPSTREAM_ERROR,
        ),
        # The SDK raises `openai.APIError` for an `error` event whose data wraps an "error".
        (("error", '{"error": {"code": "rate_limit_exceeded"}}'), ErrorCode.RATE_LIMITED),
        (("error", '{"error": {"message": "boom"}}'), ErrorCode.UPSTREAM_ERROR),
        # ... and otherwise drops its name: the fields arrive as extras of a `ThreadCreated`.
        (
            ("error", '{"message": "Slow down", "code": "rate_limit_exceeded"}'),
            ErrorCode.RATE_LIMITED,
        ),
        (("error", '{"message": "Boom", "code": "server_error"}'), ErrorCode.UPSTREAM_ERROR),
        (("error", '"overloaded"'), ErrorCode.UPSTREAM_ERROR),
        # An unknown event parses as some other model; the stream then ends without an ending.
        (("thread.run.unheard_of", '{"id": "x"}'), ErrorCode.UPSTREAM_ERROR),
    ],
    ids=lambda value: value[0] if isinstance(value, tuple) else None,
)
async def test_every_run_ending_but_completed_fails_with_its_code(
    raw: RawRuns, registry: ToolRegistry, ending: tuple[str, str], code: ErrorCode
) -> None:
    raw.events = [("thread.run.created", raw_run("queued")), ending, ("done", "[DONE]")]
    async with openai.AsyncOpenAI(base_url=raw.base_url, api_key="k", max_retries=0) as sdk:
        outcome, recorder = await run_request(make_backend(sdk, registry), "thread_raw", "hi")

    assert failed(outcome).code is code
    assert recorder.kinds() == ["started", "failed"]


async def test_unnamed_event_without_error_fields_is_ignored(
    raw: RawRuns, registry: ToolRegistry
) -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    raw.events = [
        ("thread.run.created", raw_run("queued")),
        ("ping", "{}"),
        ("thread.run.completed", raw_run("completed", usage=usage)),
        ("done", "[DONE]"),
    ]
    async with openai.AsyncOpenAI(base_url=raw.base_url, api_key="k", max_retries=0) as sdk:
        outcome, _ = await run_request(make_backend(sdk, registry), "thread_raw", "hi")

    result = completed(outcome)
    assert result.usage is not None and result.usage.input_tokens == 4
    assert (result.run_id, result.text) == ("run_raw", "")


async def test_a_refusal_is_the_answer_text(raw: RawRuns, registry: ToolRegistry) -> None:
    """A refusal streams as `refusal` delta blocks: the user sees it, as the answer."""
    message = {
        "id": "msg_raw",
        "object": "thread.message",
        "created_at": 0,
        "thread_id": "thread_raw",
        "role": "assistant",
        "content": [],
        "status": "in_progress",
        "attachments": [],
        "metadata": {},
    }

    def refusal(index: int, text: str) -> tuple[str, str]:
        delta = {"content": [{"index": 0, "type": "refusal", "refusal": text}]}
        return "thread.message.delta", json.dumps(
            {"id": "msg_raw", "object": "thread.message.delta", "delta": delta}
        )

    raw.events = [
        ("thread.run.created", raw_run("queued")),
        ("thread.message.created", json.dumps(message)),
        refusal(0, "I'm sorry, "),
        refusal(0, "I can't help with that."),
        ("thread.run.completed", raw_run("completed")),
        ("done", "[DONE]"),
    ]
    async with openai.AsyncOpenAI(base_url=raw.base_url, api_key="k", max_retries=0) as sdk:
        outcome, recorder = await run_request(make_backend(sdk, registry), "thread_raw", "hi")

    assert completed(outcome).text == "I'm sorry, I can't help with that."
    assert recorder.of("delta") == ["I'm sorry, ", "I can't help with that."]


async def test_a_completed_event_for_an_incomplete_run_is_incomplete(
    raw: RawRuns, registry: ToolRegistry
) -> None:
    """Seen on the real API: `thread.run.completed` whose run has status `incomplete`."""
    details = {"reason": "max_prompt_tokens"}
    raw.events = [
        ("thread.run.created", raw_run("queued")),
        ("thread.run.completed", raw_run("incomplete", incomplete_details=details)),
        ("done", "[DONE]"),
    ]
    async with openai.AsyncOpenAI(base_url=raw.base_url, api_key="k", max_retries=0) as sdk:
        outcome, _ = await run_request(make_backend(sdk, registry), "thread_raw", "hi")

    error = failed(outcome)
    assert (error.code, error.retryable) == (ErrorCode.UPSTREAM_ERROR, False)
    assert error.message == "the answer was cut off at the token limit"


# --- the thread -----------------------------------------------------------------------------


async def test_missing_thread_is_thread_not_found_before_anything_is_written(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    outcome, recorder = await run_request(
        make_backend(client, registry), "thread_missing_abc", "hi"
    )

    error = failed(outcome)
    assert (error.code, error.retryable) == (ErrorCode.THREAD_NOT_FOUND, False)
    assert recorder.kinds() == ["failed"]
    assert not fake.requests_to("POST", "/v1/threads/thread_missing_abc/.*")


async def test_active_run_on_the_thread_is_waited_for(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    other = fake.set_active_run("thread_busy", clears_after=0.5)
    started = time.monotonic()

    outcome, _ = await run_request(make_backend(client, registry), "thread_busy", "after you")

    assert completed(outcome).text == "Echo: after you"
    assert time.monotonic() - started >= 0.4
    assert not fake.requests_to("POST", r"/v1/threads/thread_busy/runs/.*/cancel")
    runs = fake.thread_runs("thread_busy")
    assert [(r["id"] == other, r["status"]) for r in runs] == [
        (False, "completed"),
        (True, "completed"),
    ]


async def test_stale_active_run_left_by_a_crash_is_cancelled(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, registry: ToolRegistry
) -> None:
    stale = fake.set_active_run("thread_stale", "requires_action", cancel_delay=0.2)

    outcome, _ = await run_request(
        make_backend(client, registry, stale_after=0), "thread_stale", "go on"
    )

    assert completed(outcome).text == "Echo: go on"
    (cancel,) = fake.requests_to("POST", r"/v1/threads/thread_stale/runs/.*/cancel")
    assert stale in cancel.path
    assert thread_statuses(fake, "thread_stale") == ["completed", "cancelled"]


def test_missing_assistant_id_is_a_start_up_error_naming_the_command(
    registry: ToolRegistry,
) -> None:
    sdk = openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(AssistantNotConfigured, match="make assistant-create"):
        AssistantsBackend(
            sdk, assistant_id="", toolbox=registry, retry=RetryPolicy(), idle_timeout=1
        )


# --- the CLI --------------------------------------------------------------------------------


async def cli(fake: FakeOpenAI, tmp: Path, *args: str, api: str = "assistants") -> str:
    """Run `python -m service ARGS` against the fake; return its stdout (exit status 0)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "KMC_", "OPENWEATHER_", "ASSISTANT_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-test",
        OPENAI_API=api,
        OPENWEATHER_API_KEY="ow-test-key",
        KMC_API_URL="http://127.0.0.1:9",
        KMC_API_KEY="kmc-test-key",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error::DeprecationWarning",
        "-m",
        "service",
        *args,
        cwd=tmp,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_cli_creates_and_deletes_assistants_and_creates_threads(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    created, deleted, thread, conversation, local = await asyncio.gather(
        cli(fake, tmp_path, "assistant", "create"),
        cli(fake, tmp_path, "assistant", "delete", "asst_old"),
        cli(fake, tmp_path, "thread", "create"),
        cli(fake, tmp_path, "thread", "create", api="responses"),
        cli(fake, tmp_path, "assistant", "create", api="responses"),
    )

    header, assistant_id, footer = created.splitlines()
    assert (header, footer) == ("=== ASSISTANT ID ===", "=" * len(header))
    assert assistant_id.startswith("asst_")
    (request,) = fake.requests_to("POST", "/v1/assistants")
    assert request.body["model"] == "gpt-4o-mini"
    assert request.body["name"] == "KMC Assistant"
    assert request.body["instructions"].startswith("You are a helpful assistant for KMC")
    assert [tool["function"]["name"] for tool in request.body["tools"]] == [
        "get_weather",
        "get_active_clients_per_service",
        "get_available_offices",
    ]

    assert "asst_old" in deleted
    assert fake.requests_to("DELETE", "/v1/assistants/asst_old")

    lines = thread.splitlines()
    assert lines[0] == "=== TEST THREAD ID ===" and lines[2] == "====================="
    assert lines[1].startswith("thread_") and len(lines) == 3
    lines = conversation.splitlines()
    assert lines[0] == "=== TEST THREAD ID ===" and lines[2] == "====================="
    assert lines[1].startswith("conv_") and len(lines) == 3

    assert "nothing to create remotely" in local
    definition = json.loads(local[local.index("{") :])
    assert definition["model"] == "gpt-4o-mini"
    assert [tool["name"] for tool in definition["tools"]] == [
        "get_weather",
        "get_active_clients_per_service",
        "get_available_offices",
    ]
    assert len(fake.requests_to("POST", "/v1/assistants")) == 1  # responses: nothing remote


@pytest.mark.parametrize(
    ("recording", "conversation_id"),
    [
        ("conversations_create_rubyopenai_2025-03", "conv_67d4472a0be881909acc6775dded8b11"),
        (
            "conversations_create_pydanticai_2026-04",
            "conv_010000000000000000000000000000000000000000000000",
        ),
    ],
)
async def test_cli_thread_create_reads_a_real_conversation_answer(
    fake: FakeOpenAI, tmp_path: Path, recording: str, conversation_id: str
) -> None:
    fake.replay_route("POST", "/v1/conversations", recording)

    out = await cli(fake, tmp_path, "thread", "create", api="responses")

    assert out.splitlines()[1] == conversation_id
