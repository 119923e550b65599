"""Self-tests of the fakes against the real ``openai`` SDK, ``httpx2`` and ``websockets``.

What the SDK raises for each scripted failure (the service's error mapping relies on it):

* ``Drop()`` mid-stream: iterating ``responses.create(stream=True)`` raises
  ``openai.APIConnectionError`` whose ``__cause__`` is ``httpx2.RemoteProtocolError``
  ("incomplete chunked read"). The Assistants stream helpers unwrap that and raise the bare
  ``httpx2.RemoteProtocolError`` (``openai/lib/streaming/_assistants.py: _aiter_events``).
* ``Drop(before_response=True)``: ``APIConnectionError`` from the create call (after retries).
* ``Stall`` beyond the read timeout: ``openai.APITimeoutError`` (a subclass of
  ``APIConnectionError``) from the Responses stream; bare ``httpx2.ReadTimeout`` from the
  Assistants helpers, which call ``on_timeout()`` then ``on_exception()`` first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pydantic
import pytest
from openai.lib.streaming import AsyncAssistantEventHandler
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Text as ThreadText
from openai.types.beta.threads import TextDelta
from openai.types.beta.threads.runs import ToolCall as RunToolCall
from openai.types.responses import ResponseStreamEvent
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.fakes.__main__ import demo_city, install_demo_script
from tests.fakes.background import BackgroundLoop
from tests.fakes.hub import RecordingHub
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.script import (
    Drop,
    HttpError,
    Stall,
    StreamError,
    StreamErrorKind,
    Text,
    ToolCall,
    Usage,
    split_turn,
    tool_outputs,
    user_text,
)

assistants_api = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def hub() -> AsyncIterator[RecordingHub]:
    server = RecordingHub()
    await server.start()
    yield server
    await server.stop()


async def collect(stream: Any) -> list[Any]:
    return [event async for event in stream]


def deltas(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# ----- Responses API -----


async def test_text_turn_streams_typed_events_in_the_real_order(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("hello", [[Text("Hel", "lo ", "world", interval=0.01), Usage(7, 3)]])
    stream = await client.responses.create(
        model="gpt-4o-mini", input="hello there", conversation="conv_abc", stream=True
    )
    events = await collect(stream)

    assert [type(e).__name__ for e in events] == [
        "ResponseCreatedEvent",
        "ResponseInProgressEvent",
        "ResponseOutputItemAddedEvent",
        "ResponseContentPartAddedEvent",
        "ResponseTextDeltaEvent",
        "ResponseTextDeltaEvent",
        "ResponseTextDeltaEvent",
        "ResponseTextDoneEvent",
        "ResponseContentPartDoneEvent",
        "ResponseOutputItemDoneEvent",
        "ResponseCompletedEvent",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert deltas(events) == "Hello world"
    completed = events[-1].response
    assert completed.output_text == "Hello world"
    assert completed.status == "completed"
    assert completed.conversation.id == "conv_abc"
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (7, 3)
    assert stream.response.headers["x-request-id"].startswith("req_")
    fake.assert_complete()


async def test_unscripted_message_is_echoed_in_word_chunks(client: openai.AsyncOpenAI) -> None:
    events = await collect(
        await client.responses.create(model="m", input="What's up, doc?", stream=True)
    )
    chunks = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(chunks) == "Echo: What's up, doc?"
    assert len(chunks) == 4


async def test_stream_helper_accumulates_the_final_response(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("helper", [[Text("a", "b"), ToolCall("f", '{"x": 1}', call_id="call_1")]])
    async with client.responses.stream(model="m", input="helper") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "ab"
    call = final.output[1]
    assert (call.type, call.call_id, call.arguments) == ("function_call", "call_1", '{"x": 1}')


async def test_tool_call_turn_then_tool_output_turn(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script(
        "weather",
        [
            [ToolCall("get_weather", '{"city": "Makati"}'), ToolCall("get_time", "{}")],
            [Text("It is ", "31°C.")],
        ],
    )
    first = await collect(
        await client.responses.create(
            model="m", input="weather in Makati?", conversation="conv_t1", stream=True
        )
    )
    arguments = [e for e in first if e.type == "response.function_call_arguments.delta"]
    assert len([a for a in arguments if a.output_index == 0]) > 3  # split like the real API
    calls = first[-1].response.output
    assert [(c.name, c.arguments, c.status) for c in calls] == [
        ("get_weather", '{"city": "Makati"}', "completed"),
        ("get_time", "{}", "completed"),
    ]
    assert all(c.call_id.startswith("call_") and c.id.startswith("fc_") for c in calls)

    second = await collect(
        await client.responses.create(
            model="m",
            conversation={"id": "conv_t1"},
            input=[
                {"type": "function_call_output", "call_id": c.call_id, "output": f"out-{c.name}"}
                for c in calls
            ],
            stream=True,
        )
    )
    assert second[-1].response.output_text == "It is 31°C."
    fake.assert_complete()

    sent = fake.requests_to("POST", "/v1/responses")
    assert sent[0].headers["authorization"] == "Bearer sk-test"
    assert sent[0].body["conversation"] == "conv_t1"
    assert [o.output for o in tool_outputs(sent[1].body)] == ["out-get_weather", "out-get_time"]


async def test_tool_outputs_must_answer_every_pending_call(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("two", [[ToolCall("a", call_id="call_a"), ToolCall("b", call_id="call_b")], []])
    await collect(await client.responses.create(model="m", input="two", stream=True))
    only_a = [{"type": "function_call_output", "call_id": "call_a", "output": "1"}]
    with pytest.raises(openai.BadRequestError, match="No tool output found for function call"):
        await client.responses.create(model="m", input=only_a, stream=True)
    unknown = [{"type": "function_call_output", "call_id": "call_zzz", "output": "1"}]
    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        await client.responses.create(model="m", input=unknown, stream=True)


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (429, openai.RateLimitError, "requests"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
async def test_http_error_raises_the_sdk_exception_for_its_status(
    fake: FakeOpenAI,
    client: openai.AsyncOpenAI,
    status: int,
    exception: type[openai.APIStatusError],
    error_type: str,
) -> None:
    fake.script("fail", [[HttpError(status, headers={"retry-after": "3"})]])
    with pytest.raises(exception) as raised:
        await client.responses.create(model="m", input="fail", stream=True)
    assert raised.value.status_code == status
    assert raised.value.type == error_type
    assert raised.value.response.headers["retry-after"] == "3"
    assert raised.value.response.headers["x-request-id"].startswith("req_")


async def test_each_attempt_consumes_a_turn_so_the_sdk_retry_succeeds(fake: FakeOpenAI) -> None:
    fake.script(
        "flaky",
        [
            [HttpError(429, code="rate_limit_exceeded", headers={"retry-after-ms": "10"})],
            [HttpError(500, headers={"retry-after-ms": "10"})],
            [Text("ok")],
        ],
    )
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=2) as sdk:
        events = await collect(
            await sdk.responses.create(model="m", input="flaky", conversation="conv_r", stream=True)
        )
    assert deltas(events) == "ok"
    attempts = fake.requests_to("POST", "/v1/responses")
    assert [r.headers["x-stainless-retry-count"] for r in attempts] == ["0", "1", "2"]
    fake.assert_complete()


async def test_a_finished_script_starts_over_so_one_error_turn_fails_every_retry(
    fake: FakeOpenAI,
) -> None:
    fake.script("down", [[HttpError(503, headers={"retry-after-ms": "1"})]])
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=2) as sdk:
        with pytest.raises(openai.InternalServerError):
            await sdk.responses.create(model="m", input="down", stream=True)
    assert len(fake.requests_to("POST", "/v1/responses")) == 3
    fake.assert_complete()


async def test_missing_conversation_is_not_found(client: openai.AsyncOpenAI) -> None:
    created = await client.conversations.create()
    assert created.id.startswith("conv_") and created.object == "conversation"
    assert (await client.conversations.retrieve("conv_never_created")).id == "conv_never_created"
    with pytest.raises(openai.NotFoundError, match="conv_missing_1"):
        await client.conversations.retrieve("conv_missing_1")
    with pytest.raises(openai.NotFoundError) as raised:
        await client.responses.create(
            model="m", input="hi", conversation="conv_missing_2", stream=True
        )
    assert raised.value.body == {
        "message": "Conversation with id 'conv_missing_2' not found.",
        "type": "invalid_request_error",
        "param": "conversation",
        "code": None,
    }


async def test_drop_mid_stream_raises_api_connection_error(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("drop", [[Text("partial"), Drop()]])
    received: list[str] = []
    stream = await client.responses.create(model="m", input="drop", stream=True)
    with pytest.raises(openai.APIConnectionError) as raised:
        async for event in stream:
            if event.type == "response.output_text.delta":
                received.append(event.delta)
    assert received == ["partial"]
    assert isinstance(raised.value.__cause__, httpx2.RemoteProtocolError)


async def test_drop_before_response_fails_the_request_itself(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("drop", [[Drop(before_response=True)]])
    with pytest.raises(openai.APIConnectionError):
        await client.responses.create(model="m", input="drop", stream=True)


async def test_stall_beyond_the_read_timeout_raises_api_timeout_error(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("stall", [[Text("a"), Stall(5), Text("b")]])
    started = time.monotonic()
    stream = await client.responses.create(model="m", input="stall", stream=True, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        await collect(stream)
    assert time.monotonic() - started < 2


async def test_stream_error_emits_response_failed_or_an_error_event(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("failed", [[Text("a"), StreamError("model fell over")]])
    fake.script("bare", [[StreamError("nope", code="rate_limit_exceeded", kind="error")]])
    failed = await collect(await client.responses.create(model="m", input="failed", stream=True))
    assert type(failed[-1]).__name__ == "ResponseFailedEvent"
    assert failed[-1].response.status == "failed"
    assert failed[-1].response.error.message == "model fell over"
    bare = await collect(await client.responses.create(model="m", input="bare", stream=True))
    assert type(bare[-1]).__name__ == "ResponseErrorEvent"
    assert (bare[-1].code, bare[-1].message) == ("rate_limit_exceeded", "nope")


@pytest.mark.parametrize("kind", ["incomplete", "expired"])
async def test_stream_error_incomplete_or_expired_emits_response_incomplete(
    fake: FakeOpenAI, client: openai.AsyncOpenAI, kind: StreamErrorKind
) -> None:
    """The Responses API has no expiry: ``kind="expired"`` plays as ``"incomplete"``."""
    fake.script("cut", [[Text("par", "tial"), StreamError(kind=kind)]])
    events = await collect(await client.responses.create(model="m", input="cut", stream=True))
    assert [type(e).__name__ for e in events][-4:] == [
        "ResponseTextDoneEvent",
        "ResponseContentPartDoneEvent",
        "ResponseOutputItemDoneEvent",
        "ResponseIncompleteEvent",
    ]
    assert events[-2].item.status == "incomplete"
    response = events[-1].response
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.error is None
    assert response.output_text == "partial"
    assert response.usage is not None and response.usage.output_tokens > 0
    fake.assert_complete()


async def test_function_turn_sees_the_request_body(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    def shout(body: dict[str, Any]) -> list[Text]:
        return [Text(user_text(body).upper())]

    fake.script("shout", [shout])
    events = await collect(await client.responses.create(model="m", input="shout it", stream=True))
    assert deltas(events) == "SHOUT IT"


async def test_assert_complete_names_unused_scripts_and_unplayed_turns(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("never", [[Text("x")]])
    fake.script("half", [[HttpError(500)], [Text("retry")]])
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="m", input="half", stream=True)
    with pytest.raises(AssertionError) as raised:
        fake.assert_complete()
    assert "'never' was never matched" in str(raised.value)
    assert "'half'" in str(raised.value)
    fake.reset()
    fake.assert_complete()
    assert fake.requests == []


def test_misplaced_steps_are_rejected_when_scripted() -> None:
    with pytest.raises(ValueError, match="only step"):
        split_turn([Text("a"), HttpError(500)])
    with pytest.raises(ValueError, match="last step"):
        split_turn([Drop(), Text("a")])
    turn = split_turn([Stall(0.1, before_response=True), HttpError(429)])
    assert turn.early == HttpError(429) and turn.stream == ()
    with pytest.raises(ValueError, match="kind"):
        StreamError(kind="timeout")  # type: ignore[arg-type]


async def test_api_key_is_enforced_when_configured(fake: FakeOpenAI) -> None:
    fake.api_key = "sk-right"
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-wrong", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError):
            await c.conversations.create()


async def test_every_event_validates_strictly_against_the_sdk_models(fake: FakeOpenAI) -> None:
    """``construct`` in the SDK is lenient; strict validation catches a missing field."""
    fake.script("all", [[Text("x"), ToolCall("f", '{"a": 1}')], [Text("y")]])
    responses = pydantic.TypeAdapter(ResponseStreamEvent)
    runs = pydantic.TypeAdapter(AssistantStreamEvent)
    async with httpx2.AsyncClient(base_url=fake.base_url) as http:
        raw = await http.post("/responses", json={"model": "m", "input": "all", "stream": True})
        for name, data in parse_sse(raw.text):
            assert responses.validate_python(json.loads(data)).type == name
        thread = "thread_strict"
        await http.post(f"/threads/{thread}/messages", json={"role": "user", "content": "all"})
        raw = await http.post(f"/threads/{thread}/runs", json={"assistant_id": "a", "stream": True})
        events = [(n, d) for n, d in parse_sse(raw.text) if d != "[DONE]"]
        for name, data in events:
            assert runs.validate_python({"event": name, "data": json.loads(data)}).event == name
        run = json.loads(events[-1][1])
        outputs = [
            {"tool_call_id": c["id"], "output": "1"}
            for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]
        ]
        raw = await http.post(
            f"/threads/{thread}/runs/{run['id']}/submit_tool_outputs",
            json={"tool_outputs": outputs, "stream": True},
        )
        events = [(n, d) for n, d in parse_sse(raw.text) if d != "[DONE]"]
        for name, data in events:
            assert runs.validate_python({"event": name, "data": json.loads(data)}).event == name
        assert events[-1][0] == "thread.run.completed"


@pytest.mark.parametrize("kind", ["failed", "incomplete", "expired"])
async def test_run_endings_validate_strictly_against_the_sdk_models(
    fake: FakeOpenAI, kind: StreamErrorKind
) -> None:
    fake.script("end", [[Text("x"), StreamError(kind=kind)]])
    responses = pydantic.TypeAdapter(ResponseStreamEvent)
    runs = pydantic.TypeAdapter(AssistantStreamEvent)
    async with httpx2.AsyncClient(base_url=fake.base_url) as http:
        raw = await http.post("/responses", json={"model": "m", "input": "end", "stream": True})
        events = parse_sse(raw.text)
        for name, data in events:
            assert responses.validate_python(json.loads(data)).type == name
        assert events[-1][0] == ("response.failed" if kind == "failed" else "response.incomplete")
        thread = f"thread_strict_{kind}"
        await http.post(f"/threads/{thread}/messages", json={"role": "user", "content": "end"})
        raw = await http.post(f"/threads/{thread}/runs", json={"assistant_id": "a", "stream": True})
        events = parse_sse(raw.text)
        assert events[-1] == ("done", "[DONE]")
        for name, data in events[:-1]:
            assert runs.validate_python({"event": name, "data": json.loads(data)}).event == name
        assert events[-2][0] == f"thread.run.{kind}"


def parse_sse(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields:
            events.append((fields["event"], fields["data"]))
    return events


# ----- Assistants API -----


class RecordingHandler(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.tool_calls: list[RunToolCall] = []
        self.timed_out = False

    async def on_text_delta(self, delta: TextDelta, snapshot: ThreadText) -> None:
        self.text += delta.value or ""

    async def on_tool_call_done(self, tool_call: RunToolCall) -> None:
        self.tool_calls.append(tool_call)

    async def on_timeout(self) -> None:
        self.timed_out = True


@assistants_api
async def test_assistants_run_with_tool_outputs_through_the_event_handler(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script(
        "weather",
        [[Text("Checking. "), ToolCall("get_weather", '{"city": "Cebu"}')], [Text("Sunny", ".")]],
    )
    assistant = await client.beta.assistants.create(model="gpt-4o-mini", name="bot")
    thread = await client.beta.threads.create()
    assert assistant.id.startswith("asst_") and thread.id.startswith("thread_")
    await client.beta.threads.messages.create(thread.id, role="user", content="weather in Cebu")

    first = RecordingHandler()
    async with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=first
    ) as stream:
        await stream.until_done()
    run = first.current_run
    assert run is not None and run.status == "requires_action"
    assert run.required_action is not None
    required = run.required_action.submit_tool_outputs.tool_calls
    assert [(c.function.name, c.function.arguments) for c in required] == [
        ("get_weather", '{"city": "Cebu"}')
    ]
    assert first.text == "Checking. "
    assert [c.function.arguments for c in first.tool_calls] == ['{"city": "Cebu"}']
    listed = await client.beta.threads.runs.list(thread.id)
    assert [r.status for r in listed.data] == ["requires_action"]

    second = RecordingHandler()
    async with client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": required[0].id, "output": '{"temperature": 30}'}],
        event_handler=second,
    ) as stream:
        await stream.until_done()
    final = second.current_run
    assert final is not None and final.id == run.id and final.status == "completed"
    assert final.usage is not None and final.usage.total_tokens > 0
    assert second.text == "Sunny."
    fake.assert_complete()


@assistants_api
async def test_active_run_blocks_the_thread_until_cancelled(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    run_id = fake.set_active_run("thread_busy", cancel_delay=0.05)
    runs = await client.beta.threads.runs.list("thread_busy")
    assert [(r.id, r.status) for r in runs.data] == [(run_id, "in_progress")]
    with pytest.raises(openai.BadRequestError, match="while a run"):
        await client.beta.threads.messages.create("thread_busy", role="user", content="hi")
    with pytest.raises(openai.BadRequestError, match="already has an active run"):
        await client.beta.threads.runs.create(
            thread_id="thread_busy", assistant_id="a", stream=True
        )

    cancelling = await client.beta.threads.runs.cancel(run_id, thread_id="thread_busy")
    assert cancelling.status == "cancelling"
    await asyncio.sleep(0.1)
    assert (await client.beta.threads.runs.retrieve(run_id, thread_id="thread_busy")).status == (
        "cancelled"
    )
    await client.beta.threads.messages.create("thread_busy", role="user", content="hi")

    stale = fake.set_active_run("thread_old", "requires_action", created_ago=3600)
    [run] = (await client.beta.threads.runs.list("thread_old")).data
    assert (run.id, run.status) == (stale, "requires_action")
    assert time.time() - run.created_at >= 3600

    fake.set_active_run("thread_clears", clears_after=0.05)
    await asyncio.sleep(0.1)
    await client.beta.threads.messages.create("thread_clears", role="user", content="hi")


@assistants_api
async def test_cancelling_a_streaming_run_ends_its_stream(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("long", [[Text(*["word "] * 20, interval=0.02)]])
    await client.beta.threads.messages.create("thread_c", role="user", content="long")
    handler = RecordingHandler()
    async with client.beta.threads.runs.stream(
        thread_id="thread_c", assistant_id="a", event_handler=handler
    ) as stream:
        async for event in stream:
            if event.event == "thread.message.delta" and handler.text == "word ":
                run = handler.current_run
                assert run is not None
                await client.beta.threads.runs.cancel(run.id, thread_id="thread_c")
    assert handler.current_event is None
    final = handler.current_run
    assert final is not None and final.status == "cancelled"
    assert handler.text.count("word") < 20


@assistants_api
async def test_assistants_missing_thread_and_dropped_stream(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.retrieve("thread_missing_x")
    fake.script("drop", [[Text("par"), Drop()]])
    await client.beta.threads.messages.create("thread_d", role="user", content="drop")
    handler = RecordingHandler()
    with pytest.raises(httpx2.RemoteProtocolError):  # the helper unwraps APIConnectionError
        async with client.beta.threads.runs.stream(
            thread_id="thread_d", assistant_id="a", event_handler=handler
        ) as stream:
            await stream.until_done()
    assert handler.text == "par"
    assert [r["status"] for r in fake.thread_runs("thread_d")] == ["failed"]


@assistants_api
async def test_assistants_stall_times_out_with_bare_httpx2_error(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("slow", [[Text("a"), Stall(5)]])
    await client.beta.threads.messages.create("thread_s", role="user", content="slow")
    handler = RecordingHandler()
    with pytest.raises(httpx2.ReadTimeout):
        async with client.beta.threads.runs.stream(
            thread_id="thread_s", assistant_id="a", event_handler=handler, timeout=0.3
        ) as stream:
            await stream.until_done()
    assert handler.timed_out


@assistants_api
async def test_assistants_incomplete_run_keeps_its_partial_message(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("cut", [[Text("par", "tial"), StreamError(kind="incomplete")]])
    await client.beta.threads.messages.create("thread_i", role="user", content="cut")
    handler = RecordingHandler()
    async with client.beta.threads.runs.stream(
        thread_id="thread_i", assistant_id="a", event_handler=handler
    ) as stream:
        events = [event.event async for event in stream]
    assert events[-3:] == [
        "thread.message.incomplete",
        "thread.run.step.completed",
        "thread.run.incomplete",
    ]
    run = handler.current_run
    assert run is not None and run.status == "incomplete"
    assert run.incomplete_details is not None
    assert run.incomplete_details.reason == "max_completion_tokens"
    assert run.last_error is None and run.usage is not None
    assert handler.text == "partial"
    [message] = (await client.beta.threads.messages.list("thread_i", limit=1)).data
    assert (message.status, message.content[0].text.value) == ("incomplete", "partial")
    assert [r["status"] for r in fake.thread_runs("thread_i")] == ["incomplete"]
    await client.beta.threads.messages.create("thread_i", role="user", content="again")
    fake.assert_complete()


@assistants_api
async def test_assistants_expired_run_ends_with_thread_run_expired(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script("late", [[Text("a"), StreamError(kind="expired")]])
    await client.beta.threads.messages.create("thread_e", role="user", content="late")
    handler = RecordingHandler()
    async with client.beta.threads.runs.stream(
        thread_id="thread_e", assistant_id="a", event_handler=handler
    ) as stream:
        events = [event.event async for event in stream]
    assert events[-1] == "thread.run.expired"
    run = handler.current_run
    assert run is not None and run.status == "expired"
    assert (run.last_error, run.incomplete_details) == (None, None)
    assert handler.text == "a"
    assert [r["status"] for r in fake.thread_runs("thread_e")] == ["expired"]
    await client.beta.threads.messages.create("thread_e", role="user", content="again")
    fake.assert_complete()


# ----- the demo script and the background loop -----


async def test_demo_script_calls_get_weather_and_answers_from_its_output(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    install_demo_script(fake)
    assert demo_city("What's the weather in Cebu City?") == "Cebu City"
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    first = await collect(
        await client.responses.create(
            model="m", input="Weather in Davao?", conversation="conv_d", tools=tools, stream=True
        )
    )
    call = first[-1].response.output[0]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Davao"})
    output = {
        "temperature": 31.4,
        "feels_like": 36.0,
        "description": "scattered clouds",
        "location": {"name": "Davao City", "country": "PH"},
    }
    second = await collect(
        await client.responses.create(
            model="m",
            conversation="conv_d",
            input=[
                {
                    "type": "function_call_output",
                    "call_id": call.call_id,
                    "output": json.dumps(output),
                }
            ],
            stream=True,
        )
    )
    assert second[-1].response.output_text == (
        "It is 31°C in Davao City right now with scattered clouds, and it feels like 36°C."
    )


def test_background_loop_serves_a_blocking_client() -> None:
    with BackgroundLoop() as loop:
        server = FakeOpenAI()
        loop.run(server.start())
        try:
            tokens: list[str] = []
            server.on_token = lambda chunk, at: tokens.append(chunk)
            sdk = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
            with sdk.responses.create(model="m", input="sync", stream=True) as stream:
                text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            sdk.close()
            assert text == "Echo: sync" == "".join(tokens)
        finally:
            loop.run(server.stop())


# ----- the hub -----


async def test_hub_records_frames_and_broadcasts_to_other_subscribers(hub: RecordingHub) -> None:
    async with (
        connect(hub.uri, additional_headers={"Authorization": "Bearer t0k"}) as service,
        connect(hub.uri) as browser,
    ):
        await browser.send(subscribe("conv_1"))
        await service.send(subscribe("conv_1"))
        await hub.wait_for(lambda: hub.subscriber_count("conv_1") == 2, what="2 subscribers")
        await service.send(json.dumps({"channel": "conv_1", "payload": {"delta": "Hi"}}))
        await service.send(
            json.dumps({"channel": "conv_1", "payload": {"delta": "!", "final_message": True}})
        )
        payloads = await hub.wait_final("conv_1", timeout=2)
        seen = [json.loads(await browser.recv()) for _ in range(2)]
    assert payloads == [{"delta": "Hi"}, {"delta": "!", "final_message": True}]
    assert [frame["payload"] for frame in seen] == payloads
    assert hub.auth_headers == ["Bearer t0k", None]
    assert hub.connections_opened == 2
    assert [(s.action, s.channel) for s in hub.subscriptions] == [("subscribe", "conv_1")] * 2
    assert {f.connection_id for f in hub.frames if f.channel == "conv_1"} == {1}


async def test_hub_wait_final_timeout_says_what_arrived(hub: RecordingHub) -> None:
    async with connect(hub.uri) as service:
        await service.send(json.dumps({"channel": "c", "payload": {"seq": 0, "type": "status"}}))
        with pytest.raises(TimeoutError, match=r"1 payload\(s\) arrived there\n  seq=0"):
            await hub.wait_final("c", timeout=0.2)


@pytest.mark.parametrize("abort", [False, True])
async def test_hub_restarts_on_the_same_port(hub: RecordingHub, abort: bool) -> None:
    uri = hub.uri
    async with connect(uri) as client:
        await hub.stop(abort=abort)
        await asyncio.wait_for(client.wait_closed(), 2)
        assert client.close_code == (1006 if abort else 1001)  # 1006: no close frame
    with pytest.raises(OSError):
        await connect(uri, open_timeout=1)
    await hub.start()
    assert hub.uri == uri
    async with connect(uri) as client:
        await client.send(json.dumps({"channel": "x", "payload": {"final_message": True}}))
        await hub.wait_final("x", timeout=2)


async def test_hub_rejects_connections_without_the_token() -> None:
    hub = RecordingHub(require_token="s3cret")
    await hub.start()
    try:
        with pytest.raises(InvalidStatus) as raised:
            await connect(hub.uri, additional_headers={"Authorization": "Bearer wrong"})
        assert raised.value.response.status_code == 401
        async with connect(hub.uri, additional_headers={"Authorization": "Bearer s3cret"}):
            pass
        assert (hub.connections_rejected, hub.connections_opened) == (1, 1)
    finally:
        await hub.stop()


def subscribe(channel: str) -> str:
    return json.dumps(
        {"channel": "subscription", "payload": {"action": "subscribe", "channel": channel}}
    )
