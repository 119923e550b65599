"""Real OpenAI API traffic replayed through the service: every recording of
``../shared/real_streams`` that the service can meet (Responses and Assistants streams, and the
API's error bodies), verbatim, through the real SDK, with one service process per backend.

For each one: the answer relayed (hub deltas, final payload, event ``text``) is exactly the
text the recording streamed, never its reasoning summaries, code-interpreter code or tool-call
arguments; an error ends with its contract code, ``retryable`` and short reason; only a
transient error is tried again; and the service is still healthy afterwards. A recording whose
model calls functions is followed by the recording that answers the calls, as INDEX.md pairs
them (same cassette, next interaction); one with no recorded follow-up gets a scripted answer.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from service.schemas import HubPayload
from tests.conftest import Fakes, Stack, start_stack
from tests.fakes.replay import Recording, all_recordings, recordings_dir
from tests.fakes.script import Replay, Text, Turn
from tests.fakes.script import ToolCall as ScriptedToolCall

pytestmark = pytest.mark.asyncio(loop_scope="session")

ATTEMPTS = 3
FOLLOW_UP = "Here is what the tools said."
"""The scripted answer after a function call whose follow-up turn was not recorded."""


@dataclass(frozen=True)
class Outcome:
    """How a request that meets a recording must end."""

    code: str | None  # None: completed
    retryable: bool = False
    message: str = ""


COMPLETED = Outcome(None)
TOO_LONG = Outcome("upstream_error", False, "the conversation is too long for the model")
NO_QUOTA = Outcome("upstream_error", False, "the API key has no quota left")
BAD_KEY = Outcome("upstream_error", False, "the model API rejected the API key")
NO_MODEL = Outcome(
    "upstream_error", False, "the configured model does not exist or the key cannot use it"
)
REJECTED = Outcome("upstream_error", False, "the model API rejected the request")
SERVER = Outcome("upstream_error", True, "the model API had a server error")
CUT_OFF = Outcome("upstream_error", False, "the answer was cut off at the token limit")

# Every recording that does not simply complete, with how it must end. Written out by hand (not
# derived from the service's mapper) so that a change to the mapping shows up here.
EXPECTED: dict[str, Outcome] = {
    "responses_failed_context_length_gpt54_llmgateway_2026-05": TOO_LONG,
    "responses_failed_insufficient_quota_gpt5_swiftagent_2025-10": NO_QUOTA,
    "responses_incomplete_max_output_tokens_gpt4o_ddtrace_2025-07": CUT_OFF,
    "responses_incomplete_max_output_tokens_gpt4o_mirascope": CUT_OFF,
    # The event says thread.run.completed, the run's status says incomplete.
    "assistants_run_stream_incomplete_gpt4_rubyopenai_2024-04": CUT_OFF,
    "error_500_server_error_rubyopenai_2024-10": SERVER,
    # 429, but "Request too large ... tokens per min": no wait makes it fit.
    "error_chat_429_request_too_large_llmgateway_2026-05": Outcome(
        "rate_limited", False, "the request is larger than the API key's per-minute token limit"
    ),
    "error_responses_400_context_length_rubyllm": TOO_LONG,
    "error_responses_400_decimal_below_min_pydanticai": REJECTED,
    "error_responses_400_model_not_found_ddtrace_2025-05": NO_MODEL,
    "error_responses_400_reasoning_item_without_following_pydanticai": REJECTED,
    "error_responses_401_invalid_api_key_ddtrace": BAD_KEY,
    "error_responses_stream_400_model_not_found_mirascope": NO_MODEL,
    "error_responses_stream_401_mirascope": BAD_KEY,
    "conversations_retrieve_401_invalid_key_rubyopenai_2025-08": BAD_KEY,
    "assistants_submit_tool_outputs_400_rubyopenai_2023-11": REJECTED,
}


def _streams(api: str) -> list[Recording]:
    streams = [r for r in all_recordings() if r.streamed and r.api == api]
    followed = {f.name for r in streams if (f := r.follow_up()) is not None}
    return [r for r in streams if r.name not in followed]  # follow-ups play as second turns


def _error_bodies() -> list[Recording]:
    return [
        r
        for r in all_recordings()
        if not r.streamed and r.status >= 400 and not r.name.startswith("assistants_")
    ]


try:
    RESPONSES_STREAMS = _streams("responses")
    ASSISTANTS_STREAMS = _streams("assistants")
    ERROR_BODIES = _error_bodies()
except FileNotFoundError:
    # Missing recordings fail `test_the_recordings_are_found_beside_the_repository` (loudly,
    # with where they were looked for) without stopping the collection of every other test.
    RESPONSES_STREAMS = ASSISTANTS_STREAMS = ERROR_BODIES = []


def _ids(recordings: list[Recording]) -> list[str]:
    return [r.name for r in recordings]


# --- fixtures -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Replayer:
    """A running service of one backend and its HTTP health endpoint."""

    stack: Stack
    health_url: str
    http: httpx2.AsyncClient

    @property
    def fakes(self) -> Fakes:
        return self.stack.fakes


async def _replayer(fakes: Fakes, log_dir: Path, backend: str) -> AsyncIterator[Replayer]:
    port = free_port()
    env = {"HTTP_PORT": str(port), "OPENAI_MAX_ATTEMPTS": str(ATTEMPTS)}
    async with (
        start_stack(fakes, log_dir, backend, **env) as stack,
        httpx2.AsyncClient(timeout=5) as http,
    ):
        yield Replayer(stack, f"http://127.0.0.1:{port}/healthz", http)


@pytest.fixture(scope="module")
async def responses(fakes: Fakes, log_dir: Path) -> AsyncIterator[Replayer]:
    async for replayer in _replayer(fakes, log_dir, "responses"):
        yield replayer


@pytest.fixture(scope="module")
async def assistants(fakes: Fakes, log_dir: Path) -> AsyncIterator[Replayer]:
    async for replayer in _replayer(fakes, log_dir, "assistants"):
        yield replayer


# --- one request against recorded turns -----------------------------------------------------


@dataclass
class Relayed:
    thread: str
    payloads: list[dict[str, Any]]
    event: dict[str, Any]
    model_calls: int


async def relay(replayer: Replayer, turns: list[Turn], *, calls_path: str) -> Relayed:
    """Publish one request whose model turns are `turns`; return what the service relayed and
    how many model calls it made on its thread (requests to `calls_path`, formatted with the
    thread; for the Responses API, the requests naming the conversation)."""
    tag = uuid.uuid4().hex[:12]
    fake = replayer.fakes.openai
    fake.script(tag, turns)
    stack = replayer.stack
    body = stack.request(f"replay {tag}", message_id=f"m-{tag}")
    await stack.broker.publish(body)
    event = await stack.broker.wait_event(body["message_id"])
    payloads = await stack.fakes.hub_final(body["channel"])
    thread = body["channel"]
    calls = len(
        [
            r
            for r in fake.requests_to("POST", calls_path.format(thread=thread))
            if "{thread}" in calls_path or _conversation(r.body) == thread
        ]
    )
    health = await replayer.http.get(replayer.health_url)
    assert health.status_code == 200, health.text
    return Relayed(thread, payloads, event, calls)


def assert_relayed(relayed: Relayed, answer: str, outcome: Outcome, hidden: list[str]) -> None:
    payloads, event = relayed.payloads, relayed.event
    for payload in payloads:
        HubPayload.model_validate(payload)
    assert [p["seq"] for p in payloads] == list(range(len(payloads)))
    assert [p for p in payloads if p["final_message"]] == [payloads[-1]]
    streamed = "".join(p["delta"] for p in payloads if p["type"] == "response" and p["delta"])
    final = payloads[-1]
    if outcome.code is None:
        assert (event["event"], final["status"]) == ("completed", "completed"), event
        assert final["message"] == answer
    else:
        assert event["event"] == "failed", event
        assert (event["code"], event["retryable"]) == (outcome.code, outcome.retryable)
        assert final["error"] == {"code": outcome.code, "retryable": outcome.retryable}
        assert event["message"] == outcome.message
        assert final["error_details"] == outcome.message
    assert streamed == answer
    # A failed event's `text` (contract v2 §6) is filled by the final-event assembly; until that
    # lands it is "" — never anything but the answer streamed.
    assert event["text"] in ((answer,) if outcome.code is None else (answer, ""))
    for text in hidden:
        if text not in answer:  # a tool's arguments may be quoted by the answer itself
            assert text not in streamed


# --- the tests ------------------------------------------------------------------------------


async def test_the_recordings_are_found_beside_the_repository() -> None:
    directory = recordings_dir()
    assert (directory / "INDEX.md").is_file()
    assert len(RESPONSES_STREAMS) >= 25 and len(ASSISTANTS_STREAMS) >= 3
    assert len(ERROR_BODIES) >= 10
    unknown = set(EXPECTED) - {r.name for r in all_recordings()}
    assert not unknown, f"expected outcomes for recordings that do not exist: {unknown}"


@pytest.mark.parametrize("recording", RESPONSES_STREAMS, ids=_ids(RESPONSES_STREAMS))
async def test_responses_recording_is_relayed_exactly(
    responses: Replayer, recording: Recording
) -> None:
    turns: list[Turn] = [[Replay(recording.name)]]
    answer, hidden = recording.answer(), recording.hidden_texts()
    if recording.function_calls():
        follow_up = recording.follow_up()
        if follow_up is not None:
            turns.append([Replay(follow_up.name)])
            answer += follow_up.answer()
            hidden += follow_up.hidden_texts()
        else:
            turns.append([Text(FOLLOW_UP)])
            answer += FOLLOW_UP
    outcome = EXPECTED.get(recording.name, COMPLETED)

    relayed = await relay(responses, turns, calls_path="/v1/responses")

    assert_relayed(relayed, answer, outcome, hidden)
    # One model call per turn: every turn was played, nothing was retried, the follow-up was
    # asked for once. (The session's fake is shared, so its `assert_complete` would also judge
    # scripts of other modules.)
    assert relayed.model_calls == len(turns)
    if len(turns) == 2:  # the service answered every call the recording made
        fake = responses.fakes.openai
        (*_, follow) = [
            r
            for r in fake.requests_to("POST", "/v1/responses")
            if _conversation(r.body) == relayed.thread
        ]
        answered = {item["call_id"] for item in follow.body["input"]}
        assert answered == {call["call_id"] for call in recording.function_calls()}


def _conversation(body: Any) -> Any:
    conversation = body.get("conversation") if isinstance(body, dict) else None
    return conversation.get("id") if isinstance(conversation, dict) else conversation


@pytest.mark.parametrize("recording", ERROR_BODIES, ids=_ids(ERROR_BODIES))
async def test_responses_error_body_ends_with_its_code(
    responses: Replayer, recording: Recording
) -> None:
    outcome = EXPECTED[recording.name]

    relayed = await relay(responses, [[Replay(recording.name)]], calls_path="/v1/responses")

    assert_relayed(relayed, "", outcome, [])
    assert relayed.model_calls == (ATTEMPTS if outcome.retryable else 1)


@pytest.mark.parametrize("recording", ASSISTANTS_STREAMS, ids=_ids(ASSISTANTS_STREAMS))
async def test_assistants_recording_is_relayed_exactly(
    assistants: Replayer, recording: Recording
) -> None:
    outcome = EXPECTED.get(recording.name, COMPLETED)

    relayed = await relay(
        assistants, [[Replay(recording.name)]], calls_path="/v1/threads/{thread}/runs"
    )

    assert_relayed(relayed, recording.answer(), outcome, [])
    assert relayed.model_calls == 1


@pytest.mark.parametrize("recording", ERROR_BODIES, ids=_ids(ERROR_BODIES))
async def test_assistants_error_body_ends_with_its_code(
    assistants: Replayer, recording: Recording
) -> None:
    outcome = EXPECTED[recording.name]

    relayed = await relay(
        assistants, [[Replay(recording.name)]], calls_path="/v1/threads/{thread}/runs"
    )

    assert_relayed(relayed, "", outcome, [])
    assert relayed.model_calls == (ATTEMPTS if outcome.retryable else 1)


async def test_assistants_refused_tool_outputs_end_the_request_without_a_retry(
    assistants: Replayer,
) -> None:
    name = "assistants_submit_tool_outputs_400_rubyopenai_2023-11"
    turns: list[Turn] = [[ScriptedToolCall("get_weather", '{"city": "Makati"}')], [Replay(name)]]

    relayed = await relay(
        assistants, turns, calls_path="/v1/threads/{thread}/runs/[^/]+/submit_tool_outputs"
    )

    assert_relayed(relayed, "", EXPECTED[name], [])
    assert relayed.model_calls == 1
    # The run left waiting for outputs was cancelled, so the thread takes the next request.
    runs = assistants.fakes.openai.thread_runs(relayed.thread)
    assert [run["status"] for run in runs] in (["cancelled"], ["cancelling"])


async def test_assistants_thread_check_rejected_key_ends_without_a_retry(
    assistants: Replayer,
) -> None:
    """A real 401 body on the first call the Assistants backend makes (reading the thread)."""
    stack, fake = assistants.stack, assistants.fakes.openai
    thread = stack.new_thread()
    fake.replay_route(
        "GET", f"/v1/threads/{thread}", "conversations_retrieve_401_invalid_key_rubyopenai_2025-08"
    )
    body = stack.request("replay the thread check", channel=thread, message_id=f"m-{thread}")
    await stack.broker.publish(body)
    event = await stack.broker.wait_event(body["message_id"])
    payloads = await stack.fakes.hub_final(thread)

    relayed = Relayed(thread, payloads, event, 0)
    assert_relayed(relayed, "", BAD_KEY, [])
    assert len(fake.requests_to("GET", f"/v1/threads/{thread}")) == 1
    assert not fake.requests_to("POST", f"/v1/threads/{thread}/.*")


async def test_the_fake_replays_status_headers_and_body_verbatim(fakes: Fakes) -> None:
    """What a client receives is the recording: the body byte for byte, the status, the
    headers a client reads, whatever chunks it arrived in."""
    fake = fakes.openai
    stream = Recording.load("responses_text_gpt54_llmgateway_2026-05")
    error = Recording.load("error_chat_429_request_too_large_llmgateway_2026-05")
    tag = uuid.uuid4().hex[:12]
    fake.script(f"stream {tag}", [[Replay(stream.name)]])
    fake.script(f"error {tag}", [[Replay(error.name)]])
    reads: dict[str, int] = {}
    async with httpx2.AsyncClient(base_url=fake.base_url, timeout=10) as http:
        for recording, text in ((stream, f"stream {tag}"), (error, f"error {tag}")):
            body = {"model": "m", "input": text, "stream": True}
            async with http.stream("POST", "/responses", json=body) as answer:
                chunks = [chunk async for chunk in answer.aiter_raw()]
            assert answer.status_code == recording.status
            assert b"".join(chunks) == recording.body
            for key, value in recording.headers().items():
                assert answer.headers[key] == value
            reads[recording.name] = len(chunks)
    assert reads[stream.name] > 1  # streamed in pieces, not in one write
    assert stream.headers()["x-ratelimit-limit-requests"]
    assert error.headers()["x-request-id"] == "req_eb04413fd442407bb9ae2706c06070d5"
